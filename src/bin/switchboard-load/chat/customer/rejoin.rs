//! A customer's side of a server restart (`chat --restart`): the connection it loses is expected,
//! so it reconnects with backoff (20 ms doubling to 500 ms) until the server is back, resumes, and
//! checks the replay against what it knows before it carries on.
//!
//! The resume asks from just before the oldest message acknowledged since the last replay, so
//! that every acknowledgement is held against what the restarted server kept (at most
//! [`CHECK_MAX`] messages back, well inside the history a session keeps). The replay must hold
//! every numbered frame from there to the newest, once each and in order ([`Replay`]), and each
//! acknowledged message at its acknowledged seq as a customer `message` with its `client_id`.
//! Frames the customer had not seen yet are taken as if live: an answer, or one of its own
//! messages whose acknowledgement the restart swallowed. A message sent but neither acknowledged
//! nor replayed is sent again with the same `client_id` (the server drops a duplicate).
//!
//! A session the restarted server refuses (`resume_refused`, as a server without the chat journal
//! answers) ends there, its acknowledged messages counted lost; one that cannot get an answer
//! within [`REJOIN_DEADLINE`] ends there too, counted as failed.

use std::collections::VecDeque;
use std::net::Ipv4Addr;
use std::time::Duration;

use serde_json::Value;
use tokio::time::{sleep, timeout, timeout_at, Instant};

use super::{message_send, on_frame, Pending, Session, Shared};
use crate::chat::events::{buckets, histogram, RestartTally};
use crate::chat::reply::unix_nanos;
use crate::raw_ws::{close_code, upgrade, Conn, Incoming, UpgradeError};

/// Acknowledged messages a session keeps for the next replay to check.
pub const CHECK_MAX: usize = 64;
/// How long a session keeps trying to come back before it counts as failed.
pub const REJOIN_DEADLINE: Duration = Duration::from_secs(60);
const BACKOFF_FIRST: Duration = Duration::from_millis(20);
const BACKOFF_MAX: Duration = Duration::from_millis(500);
/// How long a replay may take once `session.resumed` arrived.
const REPLAY_DEADLINE: Duration = Duration::from_secs(10);

/// One restart as a worker's sessions live it.
#[derive(Default)]
pub struct RestartStats {
    /// Sessions open when it was announced.
    pub sessions: u64,
    pub resumed: u64,
    pub refused: u64,
    pub failed: u64,
    pub ended: u64,
    pub reconnects: u64,
    pub closed_1012: u64,
    /// Unix nanoseconds of each `session.resumed`.
    pub resumed_at: Vec<u128>,
    /// When the parent signalled the server, in Unix nanoseconds.
    pub killed_at: Option<u128>,
    pub acked_checked: u64,
    pub acked_lost: u64,
    pub unacked_in_replay: u64,
    pub resent: u64,
    pub replay_errors: u64,
    pub first_error: Option<String>,
    /// An upgrade: sessions are expected to keep their connections.
    pub upgrade: bool,
    /// Sessions on their way back just now.
    pub rejoining: u64,
}

impl RestartStats {
    /// Every session open at the restart is back or accounted for, and the signal's time is known;
    /// for an upgrade (no session should need to come back), the old process is gone and no
    /// session is on its way back.
    pub fn settled(&self) -> bool {
        if self.upgrade {
            return self.killed_at.is_some() && self.rejoining == 0;
        }
        self.killed_at.is_some()
            && self.resumed + self.refused + self.failed + self.ended >= self.sessions
    }

    pub fn tally(&self, restart: u32, timed_out: bool) -> RestartTally {
        let mut h = histogram();
        if let Some(killed) = self.killed_at {
            for at in &self.resumed_at {
                let us = (at.saturating_sub(killed) / 1000) as u64;
                h.saturating_record(us.max(1));
            }
        }
        RestartTally {
            restart,
            sessions: self.sessions,
            resumed: self.resumed,
            refused: self.refused,
            failed: self.failed,
            ended: self.ended,
            reconnects: self.reconnects,
            closed_1012: self.closed_1012,
            resume_us: buckets(&h),
            acked_checked: self.acked_checked,
            acked_lost: self.acked_lost,
            unacked_in_replay: self.unacked_in_replay,
            resent: self.resent,
            replay_errors: self.replay_errors,
            first_error: self.first_error.clone(),
            timed_out,
        }
    }

    fn error(&mut self, e: String) {
        if self.first_error.is_none() {
            self.first_error = Some(e);
        }
    }
}

/// What one resume attempt came to.
enum Attempt {
    /// `session.resumed`, with the newest seq it named.
    Back(Conn, u64),
    /// The server is not there (yet) or not answering: try again, after at least this long.
    Retry(String, Duration),
    /// The server answered and will not resume this session.
    Refused(String),
}

/// Counts a session on its way back for as long as it is (every way out of [`rejoin`]).
struct Rejoining<'a> {
    shared: &'a Shared,
    epoch: u32,
}

impl Drop for Rejoining<'_> {
    fn drop(&mut self) {
        with(self.shared, self.epoch, |r| r.rejoining -= 1);
    }
}

/// Brings the session back after its connection was lost (`why`) in the restart under way: a
/// resumed connection with the replay checked and the missing messages sent again, or `None` once
/// the session is given up (counted in the restart's figures).
pub(super) async fn rejoin(
    shared: &Shared,
    index: usize,
    src: Ipv4Addr,
    session: &mut Session,
    pending: &mut VecDeque<Pending>,
    why: &str,
) -> Option<Conn> {
    let epoch = shared.stats.borrow().armed;
    with(shared, epoch, |r| r.rejoining += 1);
    let _rejoining = Rejoining { shared, epoch };
    with(shared, epoch, |r| {
        if close_code(why) == Some(1012) {
            r.closed_1012 += 1;
        }
    });
    for p in pending.iter_mut() {
        p.interrupted = true;
    }
    let deadline = Instant::now() + REJOIN_DEADLINE;
    let mut pause = BACKOFF_FIRST;
    let mut last_error = why.to_string();
    let mut back_at = None;
    loop {
        if Instant::now() >= deadline {
            with(shared, epoch, |r| {
                r.failed += 1;
                r.error(format!(
                    "no resume within {REJOIN_DEADLINE:?}; last: {last_error}"
                ));
            });
            session.epoch = epoch;
            return None;
        }
        let from = resume_point(session);
        let (mut conn, newest) = match resume(shared, src, session, from).await {
            Attempt::Back(conn, newest) => (conn, newest),
            Attempt::Retry(e, at_least) => {
                with(shared, epoch, |r| r.reconnects += 1);
                last_error = e;
                sleep(pause.max(at_least)).await;
                pause = (pause * 2).min(BACKOFF_MAX);
                continue;
            }
            Attempt::Refused(e) => {
                // The server says the chat is gone: what it acknowledged is gone with it.
                let gone = session.unverified.len() as u64;
                with(shared, epoch, |r| {
                    r.refused += 1;
                    r.acked_checked += gone;
                    r.acked_lost += gone;
                    r.error(e);
                });
                session.epoch = epoch;
                return None;
            }
        };
        back_at.get_or_insert_with(unix_nanos);
        // A connection lost in the middle is retried like any other; what was taken stays taken.
        let caught_up = match replay(shared, epoch, &mut conn, session, pending, from, newest).await
        {
            Ok(()) => resend(shared, epoch, index, &conn, pending).await,
            Err(e) => Err(e),
        };
        if let Err(e) = caught_up {
            with(shared, epoch, |r| r.reconnects += 1);
            last_error = e;
            sleep(pause).await;
            pause = (pause * 2).min(BACKOFF_MAX);
            continue;
        }
        let mut s = shared.stats.borrow_mut();
        s.counters.resumed += 1;
        if let Some(r) = s.restart(epoch) {
            r.resumed += 1;
            r.resumed_at.extend(back_at);
        }
        session.epoch = epoch;
        return Some(conn);
    }
}

fn with(shared: &Shared, epoch: u32, f: impl FnOnce(&mut RestartStats)) {
    if let Some(r) = shared.stats.borrow_mut().restart(epoch) {
        f(r);
    }
}

/// The `last_seq` to resume from: just before the oldest acknowledgement not yet checked.
fn resume_point(session: &Session) -> u64 {
    session
        .unverified
        .front()
        .map_or(session.last_seq, |(seq, _)| {
            session.last_seq.min(seq.saturating_sub(1))
        })
}

/// Connects and sends `session.resume` from `from`; the server's first answer, classified.
async fn resume(shared: &Shared, src: Ipv4Addr, session: &Session, from: u64) -> Attempt {
    let upgraded = timeout(Duration::from_secs(5), async {
        let _permit = shared.connect_gate.acquire().await;
        upgrade(shared.config.chat, src, &shared.config.path).await
    })
    .await;
    let (stream, buf) = match upgraded {
        Ok(Ok(x)) => x,
        Ok(Err(UpgradeError::Refused {
            status: 503,
            retry_after,
            line,
        })) => {
            // Admission control smoothing the reconnects: wait as asked, with jitter.
            let base = retry_after.unwrap_or(1).max(1) as f64;
            let wait = Duration::from_secs_f64(base * (0.5 + rand::random::<f64>()));
            return Attempt::Retry(format!("upgrade refused: {line}"), wait);
        }
        Ok(Err(e)) => return Attempt::Retry(e.to_string(), Duration::ZERO),
        Err(_) => return Attempt::Retry("connect timed out".into(), Duration::ZERO),
    };
    let mut conn = Conn { stream, buf };
    let hello = format!(
        r#"{{"type":"session.resume","session_id":"{}","resume_token":"{}","last_seq":{from}}}"#,
        session.id, session.resume_token
    );
    if let Err(e) = conn.send_text(&hello).await {
        return Attempt::Retry(format!("send session.resume: {e}"), Duration::ZERO);
    }
    let first = loop {
        match timeout(Duration::from_secs(10), conn.next()).await {
            Ok(Ok(Incoming::Text(t))) if !t.starts_with(br#"{"type":"presence""#) => break t,
            Ok(Ok(Incoming::Text(_))) => {}
            Ok(Ok(Incoming::Ping)) => {}
            Ok(Err(e)) => {
                return match close_code(&e) {
                    // Going away or busy: a server on its way down or up.
                    None | Some(1012 | 1013) => Attempt::Retry(e, Duration::ZERO),
                    Some(_) => Attempt::Refused(format!("session.resume: {e}")),
                };
            }
            Err(_) => {
                return Attempt::Retry("no answer to session.resume in 10 s".into(), Duration::ZERO)
            }
        }
    };
    match serde_json::from_slice::<Value>(&first) {
        Ok(v) if v["type"] == "session.resumed" => {
            Attempt::Back(conn, v["seq"].as_u64().unwrap_or(0))
        }
        Ok(v) => Attempt::Refused(format!("session.resume answered {v}")),
        Err(e) => Attempt::Refused(format!("session.resume answered something not JSON: {e}")),
    }
}

/// Reads the replay after `session.resumed` and checks it; frames the customer had not seen are
/// taken as live ones. `Err` if the connection is lost on the way.
async fn replay(
    shared: &Shared,
    epoch: u32,
    conn: &mut Conn,
    session: &mut Session,
    pending: &mut VecDeque<Pending>,
    from: u64,
    newest: u64,
) -> Result<(), String> {
    let seen = session.last_seq;
    let mut check = Replay::new(from, newest, session.unverified.iter().cloned());
    if newest < seen {
        check.problem(format!(
            "the restarted server's newest seq is {newest}, but {seen} was seen before"
        ));
    }
    let deadline = Instant::now() + REPLAY_DEADLINE;
    while !check.done() {
        let t = match timeout_at(deadline, conn.next()).await {
            Ok(Ok(Incoming::Text(t))) => t,
            Ok(Ok(Incoming::Ping)) => continue,
            Ok(Err(e)) => return Err(e),
            Err(_) => break,
        };
        let Ok(v) = serde_json::from_slice::<Value>(&t) else {
            continue;
        };
        let Some(seq) = v["seq"].as_u64() else {
            continue;
        };
        if v["type"] == "error" {
            continue;
        }
        check.take(seq, &v);
        if seq <= seen {
            continue;
        }
        if v["type"] == "message" && v["from"] == "customer" {
            let id = v["client_id"].as_str().unwrap_or_default();
            if let Some(p) = pending.iter_mut().find(|p| !p.acked && p.client_id == id) {
                p.acked = true;
                let mut s = shared.stats.borrow_mut();
                s.counters.acked += 1;
                if let Some(r) = s.restart(epoch) {
                    r.unacked_in_replay += 1;
                }
            }
        }
        on_frame(shared, session, pending, &v);
    }
    let checked = check.finish();
    session.unverified.clear();
    with(shared, epoch, |r| {
        r.acked_checked += checked.found + checked.lost;
        r.acked_lost += checked.lost;
        r.replay_errors += checked.errors;
        if let Some(p) = checked.problem {
            r.error(format!("session {}: {p}", session.id));
        }
    });
    Ok(())
}

/// Sends again, in order and with the same `client_id`, every message neither acknowledged nor
/// replayed.
async fn resend(
    shared: &Shared,
    epoch: u32,
    index: usize,
    conn: &Conn,
    pending: &VecDeque<Pending>,
) -> Result<(), String> {
    for p in pending.iter().filter(|p| !p.acked) {
        conn.send_text(&message_send(&p.client_id, p.k, index))
            .await
            .map_err(|e| format!("send again: {e}"))?;
        with(shared, epoch, |r| r.resent += 1);
    }
    Ok(())
}

/// One replay, checked as it comes: the numbered frames after `from` up to `newest`, each once and
/// in order, and every acknowledged message at its seq.
pub struct Replay {
    next: u64,
    newest: u64,
    /// `(seq, client_id)` still to be seen, by seq.
    acked: VecDeque<(u64, String)>,
    found: u64,
    lost: u64,
    errors: u64,
    first_problem: Option<String>,
}

/// What a replay showed.
#[derive(Debug, PartialEq, Eq)]
pub struct Checked {
    /// Acknowledged messages at their seq, and not.
    pub found: u64,
    pub lost: u64,
    /// Gaps, duplicates, frames out of order, a replay that stopped short.
    pub errors: u64,
    pub problem: Option<String>,
}

impl Replay {
    /// A resume from `from` answered with `newest`; `acked` are the acknowledgements to look for
    /// (those at or before `from` cannot be in the replay and are left out).
    pub fn new(from: u64, newest: u64, acked: impl IntoIterator<Item = (u64, String)>) -> Self {
        let mut acked: Vec<(u64, String)> = acked.into_iter().filter(|(s, _)| *s > from).collect();
        acked.sort_by_key(|(s, _)| *s);
        Replay {
            next: from + 1,
            newest,
            acked: acked.into(),
            found: 0,
            lost: 0,
            errors: 0,
            first_problem: None,
        }
    }

    /// Every frame up to the newest has come.
    pub fn done(&self) -> bool {
        self.next > self.newest
    }

    /// A numbered frame of the replay.
    pub fn take(&mut self, seq: u64, frame: &Value) {
        if seq < self.next {
            self.problem(format!(
                "seq {seq} again, or out of order, after {}",
                self.next - 1
            ));
            return;
        }
        if seq > self.next {
            self.problem(format!("seqs {} to {} missing", self.next, seq - 1));
        }
        while let Some((at, id)) = self.acked.front() {
            if *at > seq {
                break;
            }
            let there = *at == seq
                && frame["type"] == "message"
                && frame["from"] == "customer"
                && frame["client_id"] == id.as_str();
            if there {
                self.found += 1;
            } else {
                self.lost += 1;
                let msg = format!("acknowledged message {id} is not at seq {at}");
                self.note(msg);
            }
            self.acked.pop_front();
        }
        self.next = seq + 1;
    }

    /// A problem with the replay as a whole.
    pub fn problem(&mut self, what: String) {
        self.errors += 1;
        self.note(what);
    }

    fn note(&mut self, what: String) {
        if self.first_problem.is_none() {
            self.first_problem = Some(what);
        }
    }

    /// After the replay, or once it stopped coming: acknowledged messages it never reached are lost.
    pub fn finish(mut self) -> Checked {
        if !self.done() {
            let what = format!(
                "the replay stopped before seq {} (newest {})",
                self.next, self.newest
            );
            self.problem(what);
        }
        for (at, id) in std::mem::take(&mut self.acked) {
            self.lost += 1;
            self.note(format!(
                "acknowledged message {id} (seq {at}) was not replayed"
            ));
        }
        Checked {
            found: self.found,
            lost: self.lost,
            errors: self.errors,
            problem: self.first_problem,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raw_ws::closed_by_server;
    use serde_json::json;

    fn mine(id: &str) -> Value {
        json!({"type": "message", "from": "customer", "client_id": id, "text": "q"})
    }

    fn ai() -> Value {
        json!({"type": "message", "from": "ai", "text": "a"})
    }

    fn acked(list: &[(u64, &str)]) -> Vec<(u64, String)> {
        list.iter().map(|(s, id)| (*s, id.to_string())).collect()
    }

    #[test]
    fn a_full_replay_finds_every_acknowledged_message_at_its_seq() {
        let mut r = Replay::new(4, 8, acked(&[(5, "m1"), (7, "m2")]));
        r.take(5, &mine("m1"));
        r.take(6, &ai());
        assert!(!r.done());
        r.take(7, &mine("m2"));
        r.take(8, &ai());
        assert!(r.done());
        assert_eq!(
            r.finish(),
            Checked {
                found: 2,
                lost: 0,
                errors: 0,
                problem: None
            }
        );
    }

    #[test]
    fn a_gap_is_an_error_and_loses_the_acknowledged_message_in_it() {
        let mut r = Replay::new(0, 4, acked(&[(2, "m1")]));
        r.take(1, &ai());
        r.take(3, &ai());
        r.take(4, &ai());
        let c = r.finish();
        assert_eq!((c.found, c.lost, c.errors), (0, 1, 1));
        assert_eq!(c.problem.as_deref(), Some("seqs 2 to 2 missing"));
    }

    #[test]
    fn a_duplicate_or_a_step_back_is_an_error() {
        let mut r = Replay::new(0, 3, []);
        r.take(1, &ai());
        r.take(2, &ai());
        r.take(2, &ai());
        r.take(1, &ai());
        r.take(3, &ai());
        let c = r.finish();
        assert_eq!((c.found, c.lost, c.errors), (0, 0, 2));
    }

    #[test]
    fn another_frame_at_an_acknowledged_seq_is_a_loss() {
        let mut r = Replay::new(0, 2, acked(&[(1, "m1"), (2, "m2")]));
        r.take(1, &ai());
        r.take(2, &mine("m9"));
        let c = r.finish();
        assert_eq!((c.found, c.lost, c.errors), (0, 2, 0));
        assert_eq!(
            c.problem.as_deref(),
            Some("acknowledged message m1 is not at seq 1")
        );
    }

    #[test]
    fn acknowledgements_past_the_newest_seq_or_a_short_replay_are_losses() {
        // The restarted server knows less than it acknowledged.
        let r = Replay::new(3, 3, acked(&[(4, "m1")]));
        assert!(r.done());
        let c = r.finish();
        assert_eq!((c.found, c.lost, c.errors), (0, 1, 0));
        // The replay stopped coming before the newest seq.
        let mut r = Replay::new(0, 3, acked(&[(3, "m1")]));
        r.take(1, &ai());
        let c = r.finish();
        assert_eq!((c.found, c.lost, c.errors), (0, 1, 1));
    }

    #[test]
    fn acknowledgements_before_the_resume_point_are_not_looked_for() {
        let mut r = Replay::new(5, 6, acked(&[(3, "old"), (6, "m1")]));
        r.take(6, &mine("m1"));
        assert_eq!(r.finish().found, 1);
    }

    #[test]
    fn the_close_code_of_a_lost_connection_is_read_back() {
        assert_eq!(close_code(&closed_by_server(1012)), Some(1012));
        assert_eq!(close_code("read: unexpected end of file"), None);
    }
}
