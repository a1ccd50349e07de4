//! One customer session, as a browser widget would drive it over `switchboard.v1`
//! (docs/protocol.md): open (`session.start`), idle answering pings, send messages on a schedule
//! and time their acknowledgement and their answer, drop and come back with `session.resume` +
//! `last_seq` in a storm, and close (`session.close`). One task per session, inside a worker; the
//! worker's phase (a `watch` channel) tells every task what to do next. A connection lost while
//! the worker has a server restart announced is that restart: the session comes back through
//! [`rejoin`] and carries on with its messages.
//!
//! A session the AI hands to a human ([`hands_off`], `--handoff-rate`) asks for one as soon as it
//! opens and counts as open only once an agent took it (`agent.joined`), so that every message of
//! the message phase is routed customer → agent → customer with no Django in the path. The agent's
//! reply names the message it answers and when it was written ([`reply::parse_reply`]): the
//! round trip is timed on the customer's clock, the agent-to-customer leg on the wall clock both
//! share.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::net::{Ipv4Addr, SocketAddr};
use std::rc::Rc;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde_json::Value;
use tokio::sync::{watch, Semaphore};
use tokio::time::{sleep, sleep_until, timeout, Instant};

use super::events::{histogram, Counters, Outcome};
use super::plan::hands_off;
use super::reply;
use crate::raw_ws::{upgrade, Conn, Incoming, UpgradeError};

pub mod rejoin;

use self::rejoin::{rejoin, RestartStats, CHECK_MAX};

/// How long a session keeps trying to open (or resume) through 503s before it counts as failed.
const OPEN_DEADLINE: Duration = Duration::from_secs(60);
/// How long a handed-off session waits for an agent before it counts as unassigned.
const ASSIGN_DEADLINE: Duration = Duration::from_secs(60);
/// How long answers may trail the last message before the missing ones count as lost.
const STRAGGLERS: Duration = Duration::from_secs(5);

/// What every session of a worker does next; set by the worker on the parent's word.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Idle,
    /// Send messages from `start` on.
    Go {
        start: Instant,
    },
    /// Drop the connection now and resume.
    Storm {
        at: Instant,
    },
    Close,
}

/// The workload, the same for every session of a worker.
pub struct Config {
    pub chat: SocketAddr,
    /// Where agents connect (another node of a cluster, say); the customers' address otherwise.
    pub agent_chat: SocketAddr,
    pub path: String,
    pub worker: usize,
    /// Loopback source addresses, used round-robin by session index.
    pub sources: Vec<Ipv4Addr>,
    /// Messages per second per session (0: none).
    pub msg_rate: f64,
    pub duration: Duration,
    /// Sessions of this worker, to spread send times evenly.
    pub count: usize,
    /// Share of sessions the AI hands to a human ([`hands_off`]).
    pub handoff_rate: f64,
    /// Server restarts the message phase will see: a session's messages are over only once it
    /// is back from every one.
    pub restarts: u32,
}

/// What the worker's sessions have done so far; one per worker, shared by its tasks.
pub struct Stats {
    pub counters: Counters,
    pub outcome: Outcome,
    pub ack: Histogram<u64>,
    pub reply_ai: Histogram<u64>,
    pub reply_agent: Histogram<u64>,
    pub agent_to_customer: Histogram<u64>,
    pub storm: StormStats,
    /// Sessions that are through each phase (0 open, 1 messages, 2 storm, 3 close), including those that failed
    /// or dropped before it: a phase is over when this reaches the worker's session count.
    pub completed: [u64; 4],
    /// Agents signed in or given up on: the worker is ready when all are.
    pub agents_done: u64,
    /// Sessions between their open and their end: the ones a restart must bring back.
    pub live: u64,
    /// The last server restart announced (0: none yet); a connection lost since belongs to it.
    pub armed: u32,
    /// One per restart announced, the first at index 0.
    pub restarts: Vec<RestartStats>,
    /// Upgrades over (the old process gone): a session that kept its connection through them
    /// has nothing to come back from.
    pub upgrades_over: u32,
}

#[derive(Default)]
pub struct StormStats {
    pub dropped: u64,
    pub resumed: u64,
    pub refused: u64,
    pub failed: u64,
    pub retries: u64,
    pub sent: u64,
    pub delivered: u64,
    pub replied: u64,
    /// Of those, answered by a `system` message (the AI could not answer).
    pub replied_system: u64,
    pub resume: Option<Histogram<u64>>,
    pub first_error: Option<String>,
}

impl Stats {
    pub fn new() -> Self {
        Stats {
            counters: Counters::default(),
            outcome: Outcome::default(),
            ack: histogram(),
            reply_ai: histogram(),
            reply_agent: histogram(),
            agent_to_customer: histogram(),
            storm: StormStats {
                resume: Some(histogram()),
                ..StormStats::default()
            },
            completed: [0; 4],
            agents_done: 0,
            live: 0,
            armed: 0,
            restarts: Vec::new(),
            upgrades_over: 0,
        }
    }

    /// Restart `n` is coming: every session open now must come back from it.
    pub fn arm(&mut self, n: u32, upgrade: bool) {
        self.armed = n;
        self.restarts.push(RestartStats {
            sessions: self.live,
            upgrade,
            ..RestartStats::default()
        });
    }

    /// Restart `n` (1 for the first), once armed.
    pub fn restart(&mut self, n: u32) -> Option<&mut RestartStats> {
        self.restarts.get_mut((n as usize).checked_sub(1)?)
    }

    fn error(&mut self, e: String) {
        if self.counters.first_error.is_none() {
            self.counters.first_error = Some(e);
        }
    }

    /// A session lost before its first phase ended is out of every phase.
    fn give_up(&mut self, e: String) {
        self.error(e);
        for c in self.completed.iter_mut() {
            *c += 1;
        }
    }
}

/// What a session task shares with its worker.
pub struct Shared {
    pub config: Config,
    pub stats: RefCell<Stats>,
    /// Bounds connects in flight, so a storm's reconnects queue here and not in the kernel.
    pub connect_gate: Semaphore,
}

/// A message waiting for its acknowledgement or its answer.
struct Pending {
    client_id: String,
    /// Its number in the session, for its text if it must be sent again.
    k: usize,
    sent_at: Instant,
    acked: bool,
    /// Caught in a restart: its round trips measure the restart, so they stay out of the figures.
    interrupted: bool,
}

struct Session {
    id: String,
    resume_token: String,
    /// The highest history `seq` seen, for a resume.
    last_seq: u64,
    /// An agent holds this chat: its messages are answered by the agent, not the AI.
    agent_chat: bool,
    /// The last server restart this session is back from (or was given up in).
    epoch: u32,
    /// `(seq, client_id)` of messages acknowledged since the last replay, at most [`CHECK_MAX`]:
    /// the next restart's replay must hold each at its seq. Kept only in runs with restarts.
    unverified: VecDeque<(u64, String)>,
}

/// The `message.send` frame of message `k` of session `index`.
fn message_send(client_id: &str, k: usize, index: usize) -> String {
    format!(
        r#"{{"type":"message.send","client_id":"{client_id}","text":"question {k} from session {index}"}}"#
    )
}

/// One customer session from its first connect to its close. `index` is its number in the
/// worker; it connects at `open_at`.
pub async fn run(
    shared: Rc<Shared>,
    index: usize,
    open_at: Instant,
    mut phase: watch::Receiver<Phase>,
) {
    sleep_until(open_at).await;
    let src = shared.config.sources[index % shared.config.sources.len()];
    let (conn, session) = match open(&shared, src).await {
        Ok(x) => x,
        Err(e) => {
            let mut s = shared.stats.borrow_mut();
            s.counters.failed += 1;
            s.give_up(e);
            return;
        }
    };
    let mut session = session;
    let mut conn = conn;
    shared.stats.borrow_mut().counters.opened += 1;
    if hands_off(&session.id, shared.config.handoff_rate) {
        shared.stats.borrow_mut().counters.handed_off += 1;
        match wait_for_agent(&mut conn, &mut session).await {
            Ok(true) => {
                session.agent_chat = true;
                shared.stats.borrow_mut().counters.assigned += 1;
            }
            Ok(false) => shared
                .stats
                .borrow_mut()
                .error("no agent took the chat within 60 s".into()),
            Err(e) => {
                let mut s = shared.stats.borrow_mut();
                s.counters.dropped += 1;
                s.give_up(e);
                return;
            }
        }
    }
    {
        let mut s = shared.stats.borrow_mut();
        s.completed[0] += 1;
        s.live += 1;
        session.epoch = s.armed;
    }
    let mut done_through = 0;
    let outcome = drive(
        &shared,
        index,
        src,
        conn,
        &mut session,
        &mut phase,
        &mut done_through,
    )
    .await;
    let mut s = shared.stats.borrow_mut();
    if let Err(e) = outcome {
        s.counters.dropped += 1;
        s.error(e);
    }
    s.live -= 1;
    let armed = s.armed;
    if session.epoch < armed {
        // Gone before the restart under way could bring it back.
        if let Some(r) = s.restart(armed) {
            r.ended += 1;
        }
    }
    for c in s.completed.iter_mut().skip(done_through + 1) {
        *c += 1;
    }
}

/// Connects and starts a session, through admission control's 503s.
async fn open(shared: &Shared, src: Ipv4Addr) -> Result<(Conn, Session), String> {
    let (conn, started) = connect(
        shared,
        shared.config.chat,
        src,
        &shared.config.path,
        r#"{"type":"session.start"}"#,
        |_| {},
    )
    .await?;
    if started["type"] != "session.started" {
        return Err(format!("expected session.started, got {started}"));
    }
    let text = |k: &str| started[k].as_str().unwrap_or_default().to_string();
    Ok((
        conn,
        Session {
            id: text("session_id"),
            resume_token: text("resume_token"),
            last_seq: started["seq"].as_u64().unwrap_or(0),
            agent_chat: false,
            epoch: 0,
            unverified: VecDeque::new(),
        },
    ))
}

/// Asks for a person (the AI hands the chat off) and waits until an agent joins: `Ok(false)` if
/// none did within [`ASSIGN_DEADLINE`].
async fn wait_for_agent(conn: &mut Conn, session: &mut Session) -> Result<bool, String> {
    conn.send_text(r#"{"type":"message.send","client_id":"handoff","text":"a person, please"}"#)
        .await
        .map_err(|e| format!("send: {e}"))?;
    let deadline = Instant::now() + ASSIGN_DEADLINE;
    loop {
        let incoming = match timeout(deadline - Instant::now(), conn.next()).await {
            Ok(x) => x?,
            Err(_) => return Ok(false),
        };
        let Incoming::Text(t) = incoming else {
            continue;
        };
        // Every queued customer hears of every move of the queue; with thousands waiting, parsing
        // each would starve this worker's sessions of their pings.
        if t.starts_with(br#"{"type":"queue.position""#) {
            continue;
        }
        let v: Value = serde_json::from_slice(&t).map_err(|e| format!("not JSON: {e}"))?;
        if let Some(seq) = v["seq"].as_u64() {
            session.last_seq = session.last_seq.max(seq);
        }
        if v["type"] == "agent.joined" {
            return Ok(true);
        }
    }
}

/// Upgrades `path`, sends `hello`, and returns the first text frame answered. A 503 is tried again
/// after its `Retry-After` (with jitter, as docs/protocol.md asks) until [`OPEN_DEADLINE`];
/// `on_retry` counts each.
pub(super) async fn connect(
    shared: &Shared,
    addr: SocketAddr,
    src: Ipv4Addr,
    path: &str,
    hello: &str,
    mut on_retry: impl FnMut(&Shared),
) -> Result<(Conn, Value), String> {
    let deadline = Instant::now() + OPEN_DEADLINE;
    loop {
        let attempt = async {
            let _permit = shared.connect_gate.acquire().await;
            let (stream, buf) = upgrade(addr, src, path).await?;
            Ok::<_, UpgradeError>(Conn { stream, buf })
        };
        match timeout(Duration::from_secs(30), attempt).await {
            Ok(Ok(mut conn)) => {
                conn.send_text(hello)
                    .await
                    .map_err(|e| format!("send first frame: {e}"))?;
                let first = loop {
                    match timeout(Duration::from_secs(30), conn.next()).await {
                        Ok(Ok(Incoming::Text(t))) => {
                            let v: Value =
                                serde_json::from_slice(&t).map_err(|e| format!("not JSON: {e}"))?;
                            // Agents coming online are announced to every session at once,
                            // which can be before a new session's `session.started` is out.
                            if v["type"] != "presence" {
                                break v;
                            }
                        }
                        Ok(Ok(Incoming::Ping)) => {}
                        Ok(Err(e)) => return Err(e),
                        Err(_) => return Err("no answer to the first frame in 30 s".into()),
                    }
                };
                return Ok((conn, first));
            }
            Ok(Err(UpgradeError::Refused {
                status: 503,
                retry_after,
                ..
            })) if Instant::now() < deadline => {
                on_retry(shared);
                let base = retry_after.unwrap_or(1).max(1) as f64;
                sleep(Duration::from_secs_f64(
                    base * (0.5 + rand::random::<f64>()),
                ))
                .await;
            }
            Ok(Err(e)) => return Err(e.to_string()),
            Err(_) => return Err("connect timed out after 30 s".into()),
        }
    }
}

/// The session's life after it opened; `Err` when its connection is lost outside a storm or a
/// restart.
async fn drive(
    shared: &Shared,
    index: usize,
    src: Ipv4Addr,
    mut conn: Conn,
    session: &mut Session,
    phase: &mut watch::Receiver<Phase>,
    done_through: &mut usize,
) -> Result<(), String> {
    let cfg = &shared.config;
    let mut pending: VecDeque<Pending> = VecDeque::new();
    let mut next_send: Option<Instant> = None;
    let mut to_send = 0usize;
    let mut k = 0usize;
    let mut straggler_deadline: Option<Instant> = None;
    // Sent and answered (or given up on); the phase is over once every restart is behind too.
    let mut messages_over = false;
    let interval = if cfg.msg_rate > 0.0 {
        Duration::from_secs_f64(1.0 / cfg.msg_rate)
    } else {
        Duration::ZERO
    };
    let far = Instant::now() + Duration::from_secs(365 * 24 * 3600);
    loop {
        let restarts_behind =
            session.epoch >= cfg.restarts || shared.stats.borrow().upgrades_over >= cfg.restarts;
        if messages_over && restarts_behind {
            finish(shared, 1, done_through);
        }
        let wake = next_send.or(straggler_deadline).unwrap_or(far);
        let lost = tokio::select! {
            changed = phase.changed() => {
                if changed.is_err() {
                    return Ok(());
                }
                let now_phase = *phase.borrow_and_update();
                match now_phase {
                    Phase::Idle => {}
                    Phase::Go { start } => {
                        to_send = (cfg.duration.as_secs_f64() * cfg.msg_rate).floor() as usize;
                        if to_send == 0 {
                            // Idle sessions: the phase lasts its duration all the same.
                            straggler_deadline = Some(start + cfg.duration);
                        } else {
                            // Send times spread evenly over one interval across the sessions.
                            let offset = interval.mul_f64(index as f64 / cfg.count.max(1) as f64);
                            next_send = Some(start + offset);
                        }
                    }
                    Phase::Storm { at } => {
                        settle_messages(shared, session, &mut pending);
                        next_send = None;
                        straggler_deadline = None;
                        let back = storm(shared, src, conn, session, at, index).await;
                        finish(shared, 2, done_through);
                        match back {
                            Some(c) => conn = c,
                            // Counted by the storm; the session is gone.
                            None => return Ok(()),
                        }
                    }
                    Phase::Close => {
                        settle_messages(shared, session, &mut pending);
                        close(shared, &mut conn).await;
                        finish(shared, 3, done_through);
                        return Ok(());
                    }
                }
                continue;
            }
            _ = sleep_until(wake), if next_send.is_some() || straggler_deadline.is_some() => {
                if next_send.is_none() {
                    // Stragglers' time is up: what is still pending is lost.
                    settle_messages(shared, session, &mut pending);
                    straggler_deadline = None;
                    messages_over = true;
                    continue;
                }
                let client_id = format!("w{}s{index}m{k}", cfg.worker);
                let text = message_send(&client_id, k, index);
                pending.push_back(Pending {
                    client_id,
                    k,
                    sent_at: Instant::now(),
                    acked: false,
                    interrupted: false,
                });
                {
                    let mut s = shared.stats.borrow_mut();
                    s.counters.sent += 1;
                    if session.agent_chat {
                        s.outcome.agent_chat_sent += 1;
                    }
                }
                k += 1;
                if k == to_send {
                    next_send = None;
                    straggler_deadline = Some(Instant::now() + STRAGGLERS);
                } else {
                    next_send = next_send.map(|t| t + interval);
                }
                // A message the connection did not take stays pending: a restart's resume
                // sends it again.
                match conn.send_text(&text).await {
                    Ok(()) => continue,
                    Err(e) => format!("send: {e}"),
                }
            }
            incoming = conn.next() => {
                match incoming {
                    Ok(Incoming::Ping) => {
                        shared.stats.borrow_mut().outcome.pings += 1;
                        continue;
                    }
                    Ok(Incoming::Text(t)) => {
                        let v: Value = serde_json::from_slice(&t).map_err(|e| format!("not JSON: {e}"))?;
                        on_frame(shared, session, &mut pending, &v);
                        if k == to_send && to_send > 0 && pending.is_empty() && straggler_deadline.is_some() {
                            straggler_deadline = None;
                            messages_over = true;
                        }
                        continue;
                    }
                    Err(e) => e,
                }
            }
        };
        if shared.stats.borrow().armed <= session.epoch {
            return Err(lost);
        }
        match rejoin(shared, index, src, session, &mut pending, &lost).await {
            Some(c) => conn = c,
            None => {
                // Counted by the restart; the session is gone, and so are its messages in flight.
                settle_messages(shared, session, &mut pending);
                return Ok(());
            }
        }
        if straggler_deadline.is_some() && to_send > 0 {
            if pending.is_empty() {
                straggler_deadline = None;
                messages_over = true;
            } else {
                // The restart ate into the stragglers' time.
                straggler_deadline = Some(Instant::now() + STRAGGLERS);
            }
        }
    }
}

/// Marks this session through `phase` (once).
fn finish(shared: &Shared, phase: usize, done_through: &mut usize) {
    if *done_through < phase {
        let mut s = shared.stats.borrow_mut();
        for c in &mut s.completed[*done_through + 1..=phase] {
            *c += 1;
        }
        *done_through = phase;
    }
}

/// Counts what is still pending as lost.
fn settle_messages(shared: &Shared, session: &Session, pending: &mut VecDeque<Pending>) {
    if !pending.is_empty() {
        let mut s = shared.stats.borrow_mut();
        if session.agent_chat {
            s.outcome.agent_chat_lost += pending.len() as u64;
        }
        s.outcome.unacked += pending.iter().filter(|p| !p.acked).count() as u64;
        s.outcome.unanswered += pending.iter().filter(|p| p.acked).count() as u64;
        pending.clear();
    }
}

fn on_frame(shared: &Shared, session: &mut Session, pending: &mut VecDeque<Pending>, v: &Value) {
    let now = Instant::now();
    if let Some(seq) = v["seq"].as_u64() {
        session.last_seq = session.last_seq.max(seq);
    }
    let mut s = shared.stats.borrow_mut();
    match v["type"].as_str().unwrap_or("") {
        "message.ack" => {
            let id = v["client_id"].as_str().unwrap_or("");
            if let Some(p) = pending.iter_mut().find(|p| p.client_id == id && !p.acked) {
                p.acked = true;
                s.counters.acked += 1;
                if !p.interrupted {
                    let us = now.duration_since(p.sent_at).as_micros() as u64;
                    s.ack.saturating_record(us.max(1));
                }
                let seq = v["seq"].as_u64();
                if let Some(seq) = seq.filter(|_| shared.config.restarts > 0) {
                    session.unverified.push_back((seq, p.client_id.clone()));
                    if session.unverified.len() > CHECK_MAX {
                        session.unverified.pop_front();
                    }
                }
            }
        }
        "message" => {
            // An answer covers every message acknowledged before it: the AI joins messages sent
            // while it was answering into its next answer.
            let from = v["from"].as_str().unwrap_or("");
            if from == "customer" {
                return;
            }
            if from == "agent" {
                on_agent_reply(&mut s, pending, v, now);
                return;
            }
            while pending.front().is_some_and(|p| p.acked) {
                let Some(p) = pending.pop_front() else { break };
                let us = (now.duration_since(p.sent_at).as_micros() as u64).max(1);
                s.counters.replied += 1;
                match from {
                    "ai" => {
                        s.outcome.replies_ai += 1;
                        if !p.interrupted {
                            s.reply_ai.saturating_record(us);
                        }
                    }
                    "agent" => {
                        s.outcome.replies_agent += 1;
                        if !p.interrupted {
                            s.reply_agent.saturating_record(us);
                        }
                    }
                    _ => s.outcome.replies_system += 1,
                }
            }
        }
        "error" => {
            s.outcome.error_frames += 1;
            // A refused message will get neither an ack nor an answer.
            if let Some(id) = v["client_id"].as_str() {
                if let Some(i) = pending.iter().position(|p| p.client_id == id) {
                    pending.remove(i);
                    s.outcome.unacked += 1;
                }
            }
            if s.counters.first_error.is_none() {
                s.counters.first_error = Some(format!("error frame: {v}"));
            }
        }
        _ => {}
    }
}

/// An agent's reply answers the one message it names (agents answer each message on its own).
fn on_agent_reply(s: &mut Stats, pending: &mut VecDeque<Pending>, v: &Value, now: Instant) {
    let received_unix_nanos = reply::unix_nanos();
    let Some((asked, sent_unix_nanos)) = v["text"].as_str().and_then(reply::parse_reply) else {
        return;
    };
    let Some(i) = pending.iter().position(|p| p.client_id == asked) else {
        return;
    };
    let Some(p) = pending.remove(i) else { return };
    if !p.acked {
        // The reply overtook the ack; the ack will find nothing pending.
        s.counters.acked += 1;
    }
    s.counters.replied += 1;
    s.outcome.replies_agent += 1;
    let us = (now.duration_since(p.sent_at).as_micros() as u64).max(1);
    s.reply_agent.saturating_record(us);
    let one_way = received_unix_nanos.saturating_sub(sent_unix_nanos) / 1000;
    s.agent_to_customer
        .saturating_record((one_way as u64).max(1));
}

/// The storm, for one session: send one message, drop the connection at once (the server reads
/// the message, then the end of the stream), reconnect with `session.resume` and `last_seq`, and
/// look for that message and its answer in the replay.
async fn storm(
    shared: &Shared,
    src: Ipv4Addr,
    conn: Conn,
    session: &mut Session,
    at: Instant,
    index: usize,
) -> Option<Conn> {
    let client_id = format!("w{}s{index}storm", shared.config.worker);
    let text = format!(
        r#"{{"type":"message.send","client_id":"{client_id}","text":"still there? (session {index})"}}"#
    );
    let sent = conn.send_text(&text).await.is_ok();
    // Dropping the stream closes it (FIN after the message): the session waits for a resume.
    drop(conn);
    {
        let mut s = shared.stats.borrow_mut();
        s.storm.dropped += 1;
        if sent {
            s.storm.sent += 1;
        }
    }
    let hello = format!(
        r#"{{"type":"session.resume","session_id":"{}","resume_token":"{}","last_seq":{}}}"#,
        session.id, session.resume_token, session.last_seq
    );
    let resumed = connect(
        shared,
        shared.config.chat,
        src,
        &shared.config.path,
        &hello,
        |sh| sh.stats.borrow_mut().storm.retries += 1,
    )
    .await;
    let (mut conn, first) = match resumed {
        Ok(x) => x,
        Err(e) => {
            let mut s = shared.stats.borrow_mut();
            s.storm.failed += 1;
            if s.storm.first_error.is_none() {
                s.storm.first_error = Some(e);
            }
            return None;
        }
    };
    if first["type"] != "session.resumed" {
        let mut s = shared.stats.borrow_mut();
        s.storm.refused += 1;
        if s.storm.first_error.is_none() {
            s.storm.first_error = Some(format!("resume answered {first}"));
        }
        return None;
    }
    {
        let mut s = shared.stats.borrow_mut();
        s.storm.resumed += 1;
        s.counters.resumed += 1;
        let us = (Instant::now().duration_since(at).as_micros() as u64).max(1);
        if let Some(h) = s.storm.resume.as_mut() {
            h.saturating_record(us);
        }
    }
    if !sent {
        return Some(conn);
    }
    // The replay, then the live stream: the message (as `from: customer`), then its answer.
    let mut delivered = false;
    let deadline = Instant::now() + Duration::from_secs(10);
    while let Ok(Ok(incoming)) = timeout(deadline - Instant::now(), conn.next()).await {
        let Incoming::Text(t) = incoming else {
            continue;
        };
        let Ok(v) = serde_json::from_slice::<Value>(&t) else {
            continue;
        };
        if let Some(seq) = v["seq"].as_u64() {
            session.last_seq = session.last_seq.max(seq);
        }
        if v["type"] != "message" {
            continue;
        }
        if v["from"] == "customer" && v["client_id"] == client_id.as_str() {
            delivered = true;
            shared.stats.borrow_mut().storm.delivered += 1;
        } else if delivered && v["from"] != "customer" {
            let mut s = shared.stats.borrow_mut();
            s.storm.replied += 1;
            if v["from"] == "system" {
                s.storm.replied_system += 1;
            }
            break;
        }
    }
    Some(conn)
}

/// Ends the session: `session.close`, then `session.closed` (or the close frame) within 5 s.
async fn close(shared: &Shared, conn: &mut Conn) {
    if conn.send_text(r#"{"type":"session.close"}"#).await.is_err() {
        return;
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while let Ok(Ok(incoming)) = timeout(deadline - Instant::now(), conn.next()).await {
        if let Incoming::Text(t) = incoming {
            if serde_json::from_slice::<Value>(&t).is_ok_and(|v| v["type"] == "session.closed") {
                break;
            }
        }
    }
    shared.stats.borrow_mut().counters.closed += 1;
}
