//! The session registry: the keyed supervisor of the chat sessions of one chat thread (one
//! registry per thread, [`super::placement`]); a session's connection is handed to it on the same
//! thread and never leaves it.
//!
//! Routing by session id, stale-exit checks, restart intensity (`sessions.max_restarts` in
//! `max_seconds`) and escalation to the chat supervisor are the generic
//! [`KeyedChildren`](crate::supervisor::keyed::KeyedChildren)'s. What is session-specific stays
//! here: who the customer is (a token, or anonymous), starting a session with its first connection,
//! routing a resume to the session it names, and one [`Tick`] for all sessions each heartbeat
//! interval (heartbeats and timeouts without a timer per session).
//!
//! The chat journal holds every session; memory holds only those with work under way or a
//! connection. At start the registry reads the open sessions back: those owed work (an AI answer,
//! a place in the queue, an agent) are started at once and queued again in their old order;
//! the others stay in the journal until a `session.resume` names them, and end there when their
//! grace or idle timeout passes (a sweep of the journal).
//!
//! Takes [`StartSession`], [`ResumeSession`], [`CountSessions`], [`EndAll`], [`SuspendAll`], and
//! from the router [`AskSession`], [`TellSession`] and [`BroadcastToSessions`]; sessions report
//! their exits as [`SessionExited`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use futures_channel::oneshot;

use super::auth;
use super::handover::HandOff;
use super::link::{Lane, Local};
use super::placement::{self, Shard};
use super::protocol::{close, ErrorCode, ServerFrame};
use super::routing::{RouteError, SessionCommand, ToQueue};
use super::session::state::{CustomerInfo, Owner, SessionState};
use super::session::{
    Attach, EndSession, InjectPanic, MovedAway, Reannounce, Resume, Session, SessionDeps, Suspend,
    Tick,
};
use crate::domain::ids::SessionId;
use crate::domain::validate::Checker;
use crate::metrics as m;
use crate::store::chat_journal::{JournalFrame, SessionRecord};
use crate::store::StoreResult;
use crate::supervisor::keyed::{ChildExited, ExitOutcome, KeyedChildren, KeyedConfig};
use crate::supervisor::supervised::{Exit, ExitReport, Restart};

/// Listener → registry: a connection sent `session.start`.
#[derive(Message)]
#[rtype(result = "()")]
pub struct StartSession {
    pub conn: Local,
    pub token: Option<String>,
    /// When its first frame arrived, for the routing histogram.
    pub started_at: Instant,
}

/// Listener → registry: a connection sent `session.resume`.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ResumeSession {
    pub conn: Local,
    pub session_id: SessionId,
    pub resume_token: String,
    pub last_seq: u64,
    pub started_at: Instant,
    /// Handed over by the process this one replaced (see [`Resume::adopted`]).
    pub adopted: bool,
}

/// Anyone → registry: live sessions. Reply: the count.
#[derive(Message, Debug, Clone)]
#[rtype(result = "usize")]
pub struct CountSessions;

/// Shutdown → registry: end every session (each tells its client, close 1001). Reply: how many.
#[derive(Message, Debug, Clone)]
#[rtype(result = "usize")]
pub struct EndAll;

/// Shutdown or upgrade → registry: every session commits, tells its client to resume (1012) and
/// stops, to go on in the next process. Answered once all have stopped (or after `deadline`), with
/// how many there were; new connections are refused meanwhile (1012).
#[derive(Message, Debug, Clone)]
#[rtype(result = "usize")]
pub struct SuspendAll {
    pub deadline: Duration,
    /// An upgrade: connections are handed over here instead of closed.
    pub hand_to: Option<HandOff>,
}

/// Test hook (fault injection) → registry: make session `id` panic. Reply: whether it was live.
#[derive(Message, Debug)]
#[rtype(result = "bool")]
pub struct PanicSession {
    pub id: SessionId,
}

/// The router → registry: a command for session `id` if it is live here, and its answer.
#[derive(Message, Debug)]
#[rtype(result = "Result<Option<u64>, RouteError>")]
pub struct AskSession {
    pub id: SessionId,
    pub command: SessionCommand,
}

/// The router → registry: a command for session `id` if it is live here; no answer.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct TellSession {
    pub id: SessionId,
    pub command: SessionCommand,
}

/// The queue → registry: a command for every live session (whether agents are online).
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub struct BroadcastToSessions(pub SessionCommand);

/// The cluster → registry: session `id` runs on another node now; stop it here, quietly (its
/// connection, if any, is closed to resume there; nothing more is written from here).
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "()")]
pub struct EvictSession(pub SessionId);

/// The cluster → registry: every live session tells the routing queue where it stands (a new
/// node leads the queue). `grace`: how long the agents holding them have to show up (every live
/// agent tells the new leader within a heartbeat).
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "()")]
pub struct ReannounceSessions {
    pub grace: Duration,
}

/// A session's exit, as its supervision wrapper reports it.
pub type SessionExited = ChildExited<SessionId, Session>;

pub struct SessionRegistry {
    deps: Arc<SessionDeps>,
    children: KeyedChildren<SessionId, Session>,
    escalate: ExitReport,
    /// Live sessions on every chat thread, read by the listener's admission check without a
    /// message; this registry adds and takes away its own.
    live: Arc<AtomicUsize>,
    /// This registry's share of `live` as last added.
    published: usize,
    /// The chat thread this registry and its sessions live on.
    shard: Shard,
    /// Resumes waiting for their session to be read from the journal.
    loading: HashMap<SessionId, Vec<ResumeSession>>,
    /// Suspending: answered once every session stopped.
    suspended: Option<Vec<oneshot::Sender<()>>>,
}

/// How often sessions that live only in the journal are checked for their grace and idle timeout.
const JOURNAL_SWEEP: Duration = Duration::from_secs(5);

/// Most sessions ended in the journal per sweep.
const JOURNAL_SWEEP_MAX: u32 = 10_000;

impl SessionRegistry {
    pub fn new(
        deps: Arc<SessionDeps>,
        live: Arc<AtomicUsize>,
        escalate: ExitReport,
        shard: Shard,
    ) -> Self {
        let s = &deps.settings;
        let children = KeyedChildren::new(KeyedConfig {
            kind: "session",
            supervisor: "sessions",
            restart: Restart::Transient,
            // Sessions time themselves out (idle, detached past the grace) on the registry's Tick.
            idle_timeout: Duration::ZERO,
            hibernate_after: Duration::from_millis(s.hibernate_after_ms),
            max_restarts: s.max_restarts,
            max_window: Duration::from_secs(s.max_seconds),
        });
        Self {
            deps,
            children,
            escalate,
            live,
            published: 0,
            shard,
            loading: HashMap::new(),
            suspended: None,
        }
    }

    /// Starts the session a journal record holds (detached); `None` if it cannot be read.
    fn restore(
        &mut self,
        record: &SessionRecord,
        frames: Vec<JournalFrame>,
        how: &'static str,
    ) -> Option<Addr<Session>> {
        let frames = frames
            .into_iter()
            .filter_map(|f| serde_json::from_str(&f.body).ok())
            .collect();
        let state = match SessionState::restore(
            &self.deps.limits,
            &record.state,
            record.last_seq,
            frames,
        ) {
            Ok(state) => state,
            Err(e) => {
                tracing::error!(session_id = %record.session_id, error = %e, "chat session in the journal cannot be read; left there");
                return None;
            }
        };
        let ago = |at: chrono::DateTime<chrono::Utc>| {
            let age = (chrono::Utc::now() - at).to_std().unwrap_or_default();
            Instant::now().checked_sub(age).unwrap_or_else(Instant::now)
        };
        let last_customer = ago(record.last_activity_at);
        let detached_at = record.detached_at.map(ago).unwrap_or_else(Instant::now);
        let deps = self.deps.clone();
        let (addr, _) = self.children.route(record.session_id, || {
            Session::restored(state, deps, last_customer, detached_at)
        });
        metrics::counter!(m::CHAT_RESTORED, "from" => how).increment(1);
        self.publish_count();
        Some(addr)
    }

    /// Whether a journal record's session is past its grace or idle timeout.
    fn expired(&self, record: &SessionRecord) -> bool {
        let s = &self.deps.settings;
        let now = chrono::Utc::now();
        let past =
            |at: chrono::DateTime<chrono::Utc>, ms: u64| (now - at).num_milliseconds() >= ms as i64;
        record.closed
            || record
                .detached_at
                .is_some_and(|at| past(at, s.resume_grace_ms))
            || past(record.last_activity_at, s.idle_timeout_ms)
    }

    /// Reads the open sessions back after a start: those owed work come up now (the queued ones
    /// in their old order), the rest stay in the journal until resumed.
    fn recover(&mut self, ctx: &mut Context<Self>) {
        let began = Instant::now();
        let journal = self.deps.journal.clone();
        let history_max = self.deps.limits.history_max as u32;
        let shard = self.shard;
        let load = async move {
            // Connections the last process had are gone: their grace starts now (once, by the
            // first thread's registry).
            if shard.index == 0 {
                journal.mark_detached(chrono::Utc::now()).await?;
            }
            let mut owed = Vec::new();
            for record in journal.open_sessions().await? {
                if !shard.owns_session(record.session_id) {
                    continue;
                }
                let needs = serde_json::from_str::<SessionState>(&record.state)
                    .map(|s| s.needs_actor())
                    .unwrap_or(false);
                if needs {
                    let from = record.last_seq.saturating_sub(u64::from(history_max));
                    let frames = journal.frames(record.session_id, from, history_max).await?;
                    owed.push((record, frames));
                }
            }
            StoreResult::Ok(owed)
        };
        // Nothing is served before the sessions owed work are in place (the queue's order).
        ctx.wait(load.into_actor(self).map(move |result, act, _| {
            let owed = match result {
                Ok(owed) => owed,
                Err(e) => {
                    tracing::error!(error = %e, "chat journal could not be read at start; sessions resume on demand");
                    return;
                }
            };
            let mut queued = Vec::new();
            for (record, frames) in owed {
                if act.restore(&record, frames, "startup").is_none() {
                    continue;
                }
                let state: Option<SessionState> = serde_json::from_str(&record.state).ok();
                match state.as_ref().map(|s| &s.owner) {
                    Some(Owner::Queued { reason }) => queued.push((
                        state.as_ref().and_then(|s| s.queued_since),
                        record.session_id,
                        state.as_ref().map(|s| s.customer.name.clone()).unwrap_or_default(),
                        reason.clone(),
                    )),
                    Some(Owner::Agent(agent)) => act.deps.router.tell_queue(ToQueue::Held {
                        session_id: record.session_id,
                        agent: agent.clone(),
                        grace: act.deps.agent_grace,
                    }),
                    _ => {}
                }
            }
            queued.sort_by_key(|(since, ..)| *since);
            let n = queued.len();
            for (since, session_id, customer, reason) in queued {
                act.deps.router.tell_queue(ToQueue::Enqueue {
                    session_id,
                    customer,
                    reason,
                    since: since.unwrap_or_else(chrono::Utc::now),
                });
            }
            tracing::info!(live = act.children.len(), queued = n, took_ms = began.elapsed().as_millis() as u64, "chat sessions owed work are back from the journal");
        }));
    }

    /// Ends, in the journal, the sessions that live only there and are past their grace or idle
    /// timeout (a live session times itself out).
    fn sweep_journal(&mut self, ctx: &mut Context<Self>) {
        let s = &self.deps.settings;
        let now = chrono::Utc::now();
        let detached_before = now - chrono::Duration::milliseconds(s.resume_grace_ms as i64);
        let idle_before = now - chrono::Duration::milliseconds(s.idle_timeout_ms as i64);
        let journal = self.deps.journal.clone();
        let find = journal.expired(detached_before, idle_before, JOURNAL_SWEEP_MAX);
        ctx.spawn(find.into_actor(self).map(move |found, act, ctx| {
            let ids: Vec<SessionId> = match found {
                Ok(ids) => ids
                    .into_iter()
                    .filter(|id| act.children.get(*id).is_none() && !act.loading.contains_key(id))
                    .collect(),
                Err(e) => {
                    tracing::warn!(error = %e, "chat journal sweep failed");
                    return;
                }
            };
            if ids.is_empty() {
                return;
            }
            let n = ids.len() as u64;
            ctx.spawn(
                journal
                    .close(ids)
                    .into_actor(act)
                    .map(move |done, _, _| match done {
                        Ok(()) => metrics::counter!(m::CHAT_JOURNAL_EXPIRED).increment(n),
                        Err(e) => {
                            tracing::warn!(error = %e, "chat journal sweep could not end sessions")
                        }
                    }),
            );
        }));
    }

    /// A resume of a session not in memory: read it from the journal, then route the resume.
    fn load(&mut self, msg: ResumeSession, ctx: &mut Context<Self>) {
        let id = msg.session_id;
        if let Some(waiting) = self.loading.get_mut(&id) {
            waiting.push(msg);
            return;
        }
        self.loading.insert(id, vec![msg]);
        let history_max = self.deps.limits.history_max as u32;
        let read = self.deps.journal.session(id, history_max);
        ctx.spawn(read.into_actor(self).map(move |result, act, _| {
            let waiting = act.loading.remove(&id).unwrap_or_default();
            let addr = match result {
                Ok(Some((record, frames))) if !act.expired(&record) => {
                    let addr = act.restore(&record, frames, "resume");
                    if let Some(addr) = &addr {
                        // In a cluster it may have run on another node until now: it stops
                        // there, and the queue learns where it stands from here.
                        act.deps.router.taken_over(id);
                        addr.do_send(Reannounce::default());
                    }
                    addr
                }
                Ok(_) => None,
                Err(e) => {
                    tracing::warn!(session_id = %id, error = %e, "chat journal read failed on resume");
                    for msg in waiting {
                        refuse(
                            msg.conn,
                            ErrorCode::ServerBusy,
                            "the session could not be read just now; resume again shortly",
                            close::TRY_AGAIN_LATER,
                            "journal unavailable",
                        );
                    }
                    return;
                }
            };
            for msg in waiting {
                match &addr {
                    Some(addr) => addr.do_send(Resume {
                        conn: msg.conn,
                        resume_token: msg.resume_token,
                        last_seq: msg.last_seq,
                        started_at: msg.started_at,
                        adopted: msg.adopted,
                    }),
                    None => {
                        metrics::counter!(m::CHAT_RESUMES, "outcome" => "unknown").increment(1);
                        refuse(
                            msg.conn,
                            ErrorCode::ResumeRefused,
                            "unknown session or wrong token",
                            close::RESUME_REFUSED,
                            "resume refused",
                        );
                    }
                }
            }
        }));
    }

    /// Refuses a connection while the registry is suspending: the client resumes on the next
    /// process.
    fn refuse_suspending(conn: Local) {
        refuse(
            conn,
            ErrorCode::ServerBusy,
            "the server is restarting; resume in a moment",
            close::SERVICE_RESTART,
            "server restarting: resume",
        );
    }

    fn answer_suspended(&mut self) {
        if self.children.is_empty() {
            if let Some(waiters) = self.suspended.as_mut() {
                for tx in waiters.drain(..) {
                    let _ = tx.send(());
                }
            }
        }
    }

    fn publish_count(&mut self) {
        let now = self.children.len();
        let total = if now >= self.published {
            self.live.fetch_add(now - self.published, Ordering::Relaxed) + (now - self.published)
        } else {
            self.live.fetch_sub(self.published - now, Ordering::Relaxed) - (self.published - now)
        };
        self.published = now;
        metrics::gauge!(m::CHAT_SESSIONS).set(total as f64);
        metrics::gauge!(m::CHAT_THREAD_SESSIONS, "thread" => self.shard.label()).set(now as f64);
    }
}

/// A token's claims become a ticket's requester and Django's customer: held to the limits the
/// ticket API applies (`tickets.max_name_chars`, no control characters).
fn check_customer(c: &CustomerInfo, max_chars: usize) -> Result<(), String> {
    let mut check = Checker::default();
    check.text("sub", &c.id, max_chars, true);
    check.text("name", &c.name, max_chars, false);
    check.text("email", &c.email, max_chars, false);
    check
        .finish()
        .map_err(|e| format!("the token's claims are not acceptable: {e}"))
}

/// Refuses a connection before any session: an `error` frame, then close with `code`.
fn refuse(conn: Local, code: ErrorCode, message: &str, close_code: u16, reason: &'static str) {
    let mut conn = conn.take();
    let _ = conn
        .link
        .send(ServerFrame::error(code, message).to_text(), Lane::Reliable);
    conn.link.close(close_code, reason);
}

impl Actor for SessionRegistry {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.children.attach(ctx.address().recipient());
        self.recover(ctx);
        ctx.run_interval(JOURNAL_SWEEP, |act, ctx| act.sweep_journal(ctx));
        let every = Duration::from_millis(self.deps.settings.heartbeat_interval_ms)
            .min(Duration::from_millis(self.deps.settings.sweep_interval_ms));
        ctx.run_interval(every, |act, _| {
            act.children.broadcast(Tick);
            act.children.sweep();
            metrics::gauge!(m::CHAT_HISTORY_BYTES)
                .set(act.deps.history_bytes.load(Ordering::Relaxed) as f64);
        });
    }
}

impl actix::Supervised for SessionRegistry {
    fn restarting(&mut self, _: &mut Context<Self>) {
        tracing::warn!(
            live = self.children.len(),
            "session registry restarting; ending every session"
        );
        self.children.broadcast(EndSession);
        self.children.stop_all();
        self.children.reset_intensity();
        self.publish_count();
    }
}

impl Handler<StartSession> for SessionRegistry {
    type Result = ();

    fn handle(&mut self, msg: StartSession, _: &mut Context<Self>) {
        if self.suspended.is_some() {
            return Self::refuse_suspending(msg.conn);
        }
        // Capacity counts new work only: this is a new session (resumes never come here).
        let s = &self.deps.settings;
        let why = if self.live.load(Ordering::Relaxed) >= s.max_sessions {
            Some("sessions")
        } else if self.deps.history_bytes.load(Ordering::Relaxed) >= s.max_total_history_bytes {
            Some("memory")
        } else {
            None
        };
        if let Some(why) = why {
            metrics::counter!(m::CHAT_BUSY, "what" => "session", "why" => why).increment(1);
            tracing::info!(why, "new chat session refused at capacity");
            return refuse(
                msg.conn,
                ErrorCode::ServerBusy,
                "the server is at capacity; try again in a moment",
                close::TRY_AGAIN_LATER,
                "at capacity",
            );
        }
        // Minted for this thread: the session lives where its connection was accepted.
        let id = placement::session_id_on(self.shard.index, self.shard.count);
        let customer = match auth::customer(msg.token.as_deref(), &s.jwt_secret, id)
            .map_err(|e| e.to_string())
            .and_then(|c| check_customer(&c, self.deps.max_name_chars).map(|()| c))
        {
            Ok(c) => c,
            Err(e) => {
                tracing::info!(error = %e, "chat session refused: bad customer token");
                return refuse(
                    msg.conn,
                    ErrorCode::Unauthorized,
                    &e.to_string(),
                    close::POLICY_VIOLATION,
                    "unauthorized",
                );
            }
        };
        let deps = self.deps.clone();
        let token = Session::new_token();
        let (addr, _) = self
            .children
            .route(id, || Session::new(id, &token, customer, deps));
        self.publish_count();
        tracing::info!(session_id = %id, "chat session started");
        addr.do_send(Attach {
            conn: msg.conn,
            resume_from: None,
            started_at: msg.started_at,
            resume_token: token,
        });
    }
}

impl Handler<ResumeSession> for SessionRegistry {
    type Result = ();

    fn handle(&mut self, msg: ResumeSession, ctx: &mut Context<Self>) {
        if self.suspended.is_some() {
            return Self::refuse_suspending(msg.conn);
        }
        let Some(addr) = self.children.get(msg.session_id) else {
            return self.load(msg, ctx);
        };
        addr.do_send(Resume {
            conn: msg.conn,
            resume_token: msg.resume_token,
            last_seq: msg.last_seq,
            started_at: msg.started_at,
            adopted: msg.adopted,
        });
    }
}

impl Handler<SessionExited> for SessionRegistry {
    type Result = ();

    fn handle(&mut self, msg: SessionExited, _: &mut Context<Self>) {
        let outcome = self.children.exited(msg);
        self.publish_count();
        self.answer_suspended();
        if let ExitOutcome::Escalate(reason) = outcome {
            (self.escalate)(Exit::Escalated(reason));
        }
    }
}

impl Handler<CountSessions> for SessionRegistry {
    type Result = usize;

    fn handle(&mut self, _: CountSessions, _: &mut Context<Self>) -> usize {
        self.children.len()
    }
}

impl Handler<EndAll> for SessionRegistry {
    type Result = usize;

    fn handle(&mut self, _: EndAll, _: &mut Context<Self>) -> usize {
        let n = self.children.len();
        self.children.broadcast(EndSession);
        n
    }
}

impl Handler<SuspendAll> for SessionRegistry {
    type Result = ResponseFuture<usize>;

    fn handle(&mut self, msg: SuspendAll, _: &mut Context<Self>) -> Self::Result {
        let n = self.children.len();
        let (tx, rx) = oneshot::channel();
        self.suspended.get_or_insert_with(Vec::new).push(tx);
        self.children.broadcast(Suspend {
            hand_to: msg.hand_to.clone(),
        });
        self.answer_suspended();
        tracing::info!(
            sessions = n,
            "suspending chat sessions: they go on in the next process"
        );
        Box::pin(async move {
            if tokio::time::timeout(msg.deadline, rx).await.is_err() {
                tracing::warn!(
                    "chat sessions did not all stop in time; the journal has what they committed"
                );
            }
            n
        })
    }
}

impl Handler<PanicSession> for SessionRegistry {
    type Result = bool;

    fn handle(&mut self, msg: PanicSession, _: &mut Context<Self>) -> bool {
        match self.children.get(msg.id) {
            Some(addr) => {
                addr.do_send(InjectPanic);
                true
            }
            None => false,
        }
    }
}

impl Handler<AskSession> for SessionRegistry {
    type Result = ResponseFuture<Result<Option<u64>, RouteError>>;

    fn handle(&mut self, msg: AskSession, _: &mut Context<Self>) -> Self::Result {
        let Some(addr) = self.children.get(msg.id) else {
            return Box::pin(async { Err(RouteError::NotLive) });
        };
        let answer = addr.send(msg.command);
        Box::pin(async move {
            match answer.await {
                Ok(result) => result.map_err(RouteError::from),
                Err(_) => Err(RouteError::NotLive),
            }
        })
    }
}

impl Handler<TellSession> for SessionRegistry {
    type Result = ();

    fn handle(&mut self, msg: TellSession, _: &mut Context<Self>) {
        if let Some(addr) = self.children.get(msg.id) {
            addr.do_send(msg.command);
        }
    }
}

impl Handler<EvictSession> for SessionRegistry {
    type Result = ();

    fn handle(&mut self, msg: EvictSession, _: &mut Context<Self>) {
        if let Some(addr) = self.children.get(msg.0) {
            tracing::info!(session_id = %msg.0, "chat session taken over by another node; stopped here");
            addr.do_send(MovedAway);
        }
    }
}

impl Handler<ReannounceSessions> for SessionRegistry {
    type Result = ();

    fn handle(&mut self, msg: ReannounceSessions, _: &mut Context<Self>) {
        self.children.broadcast(Reannounce {
            grace: Some(msg.grace),
        });
    }
}

impl Handler<BroadcastToSessions> for SessionRegistry {
    type Result = ();

    fn handle(&mut self, msg: BroadcastToSessions, _: &mut Context<Self>) {
        self.children.broadcast(msg.0);
    }
}
