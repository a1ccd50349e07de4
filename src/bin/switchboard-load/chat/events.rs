//! What a worker process tells the `chat` parent: one JSON object a line on its stdout. The parent
//! answers with one line on the worker's stdin: a word (`go`, `storm`, `close`), or for a restart
//! `restart N` (answered [`Event::Armed`]) and then `killed N UNIX_NANOS`; end of file ends the
//! worker.

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Latencies are recorded in microseconds, up to 10 minutes, with 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds")
}

/// A histogram as `(value, count)` pairs: compact, and mergeable by the parent.
pub type Buckets = Vec<(u64, u64)>;

pub fn buckets(h: &Histogram<u64>) -> Buckets {
    h.iter_recorded()
        .map(|v| (v.value_iterated_to(), v.count_at_value()))
        .collect()
}

pub fn merge(into: &mut Histogram<u64>, buckets: &Buckets) {
    for (value, count) in buckets {
        // Values are within the bounds they were recorded with; saturate rather than fail.
        into.saturating_record_n(*value, *count);
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "ev", rename_all = "snake_case")]
pub enum Event {
    /// Live counters, every half second.
    Progress(Counters),
    /// Every session of the worker is open or has failed to open.
    Ready(Counters),
    /// The message phase is over (every message answered, or given up on).
    Done(Tally),
    /// Every session dropped by the storm is back, or has given up.
    Storm(StormTally),
    /// Every session has been closed.
    Closed(Counters),
    /// Restart N is announced: a connection lost from now on is that restart, not a failure.
    Armed { restart: u32 },
    /// Every session that was open at a restart is back, or has given up.
    Restarted(RestartTally),
}

/// Counters the parent shows while a phase runs.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Counters {
    pub opened: u64,
    pub failed: u64,
    /// Handshakes answered 503 (admission control) and tried again later.
    pub retries: u64,
    pub sent: u64,
    pub acked: u64,
    pub replied: u64,
    pub resumed: u64,
    pub closed: u64,
    /// Connections the server ended or broke outside a close or a storm.
    pub dropped: u64,
    pub first_error: Option<String>,
    /// Customer sessions handed to a human (the AI answered `handoff: true`), and of those, the
    /// ones an agent took (`agent.joined`) before the messages started.
    pub handed_off: u64,
    pub assigned: u64,
    pub agents: AgentCounters,
}

/// What the agent connections of a worker have done.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AgentCounters {
    /// Signed in (`agent.ready`), or not (refused, or no answer).
    pub connected: u64,
    pub failed: u64,
    /// `session.assigned` and `session.released` received.
    pub assigned: u64,
    pub released: u64,
    /// Customer messages received as `session.event`, and `message.send` written back.
    pub events: u64,
    pub replied: u64,
    pub acked: u64,
    /// Customer messages for a session this agent was never given (a routing mistake).
    pub stray: u64,
    /// `queue.updated` and `agent.presence` frames received (read, not parsed).
    pub broadcasts: u64,
    pub error_frames: u64,
    /// Agent connections lost before the worker ended.
    pub dropped: u64,
    pub first_error: Option<String>,
}

/// How the messages of the message phase fared.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Outcome {
    /// Answers by author: who replied to a customer message.
    pub replies_ai: u64,
    pub replies_agent: u64,
    pub replies_system: u64,
    /// Messages sent in chats an agent holds, and of those, never answered by the agent.
    pub agent_chat_sent: u64,
    pub agent_chat_lost: u64,
    /// Messages never acknowledged, and messages acknowledged but never answered.
    pub unacked: u64,
    pub unanswered: u64,
    pub error_frames: u64,
    pub pings: u64,
}

/// The message phase's outcome.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Tally {
    pub counters: Counters,
    pub outcome: Outcome,
    pub ack_us: Buckets,
    pub reply_ai_us: Buckets,
    pub reply_agent_us: Buckets,
    /// From the agent writing its reply to the customer reading it (wall clocks of one machine).
    pub agent_to_customer_us: Buckets,
    pub timed_out: bool,
}

/// The reconnect storm's outcome.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StormTally {
    pub dropped: u64,
    pub resumed: u64,
    /// `resume_refused` or a close before `session.resumed`.
    pub refused: u64,
    pub failed: u64,
    pub retries: u64,
    /// The message each session sent just before its connection dropped.
    pub sent: u64,
    /// ... seen again in the replay after the resume.
    pub delivered: u64,
    /// ... answered (in the replay or live).
    pub replied: u64,
    /// ... of which by a `system` message (the AI could not answer).
    pub replied_system: u64,
    /// From the drop to `session.resumed`.
    pub resume_us: Buckets,
    pub first_error: Option<String>,
    pub timed_out: bool,
}

/// One restart of the server, as one worker's sessions lived it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RestartTally {
    /// 1 for the first restart.
    pub restart: u32,
    /// Sessions open when it was announced: the ones that must come back.
    pub sessions: u64,
    pub resumed: u64,
    /// Answered `resume_refused` (or another refusal) by the restarted server.
    pub refused: u64,
    /// Never got an answer to `session.resume` before giving up.
    pub failed: u64,
    /// Ended for another reason before coming back (counted with the messages).
    pub ended: u64,
    /// Connection attempts that failed while the server was down or starting.
    pub reconnects: u64,
    /// Connections the server closed with 1012 (going away, resume) rather than just dropped.
    pub closed_1012: u64,
    /// From the signal to each session's `session.resumed`.
    pub resume_us: Buckets,
    /// Acknowledged messages looked for in the replays, and those not found at their seq.
    pub acked_checked: u64,
    pub acked_lost: u64,
    /// Messages sent but not acknowledged before the drop that the replay held.
    pub unacked_in_replay: u64,
    /// ... that it did not hold, so they were sent again (same `client_id`).
    pub resent: u64,
    /// Replays with a gap, a duplicate or a seq out of order, or that stopped short.
    pub replay_errors: u64,
    pub first_error: Option<String>,
    pub timed_out: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A variant serde cannot write under the `ev` tag (a bare number, say) would reach the parent
    /// as an empty line.
    #[test]
    fn every_restart_event_crosses_the_pipe() {
        for ev in [
            Event::Armed { restart: 2 },
            Event::Restarted(RestartTally {
                restart: 2,
                resume_us: vec![(1500, 3)],
                ..RestartTally::default()
            }),
        ] {
            let line = serde_json::to_string(&ev).unwrap();
            let back: Event = serde_json::from_str(&line).unwrap();
            assert_eq!(serde_json::to_string(&back).unwrap(), line);
        }
    }
}
