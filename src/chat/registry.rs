//! The session registry: the keyed supervisor of chat sessions, on the chat arbiter, where the chat
//! listener accepts connections too (a connection never leaves that thread).
//!
//! Routing by session id, stale-exit checks, restart intensity (`sessions.max_restarts` in
//! `max_seconds`) and escalation to the chat supervisor are the generic
//! [`KeyedChildren`](crate::supervisor::keyed::KeyedChildren)'s. What is session-specific stays
//! here: who the customer is (a token, or anonymous), starting a session with its first connection,
//! routing a resume to the session it names, and one [`Tick`] for all sessions each heartbeat
//! interval (heartbeats and timeouts without a timer per session).
//!
//! Takes [`StartSession`], [`ResumeSession`], [`CountSessions`], [`EndAll`], and from the routing
//! queue [`LookupSession`] and [`BroadcastToSessions`]; sessions report their exits as
//! [`SessionExited`].

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;

use super::auth;
use super::link::{Lane, Local};
use super::protocol::{close, ErrorCode, ServerFrame};
use super::routing::{SessionCommand, SessionHandle};
use super::session::state::CustomerInfo;
use super::session::{Attach, EndSession, InjectPanic, Resume, Session, SessionDeps, Tick};
use crate::domain::ids::SessionId;
use crate::domain::validate::Checker;
use crate::metrics as m;
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
}

/// Anyone → registry: live sessions. Reply: the count.
#[derive(Message, Debug)]
#[rtype(result = "usize")]
pub struct CountSessions;

/// Shutdown → registry: end every session (each tells its client, close 1001). Reply: how many.
#[derive(Message, Debug)]
#[rtype(result = "usize")]
pub struct EndAll;

/// Test hook (fault injection) → registry: make session `id` panic. Reply: whether it was live.
#[derive(Message, Debug)]
#[rtype(result = "bool")]
pub struct PanicSession {
    pub id: SessionId,
}

/// The queue → registry: the handle of a live session, if there is one (an agent may take a chat
/// that is not waiting).
#[derive(Message, Debug)]
#[rtype(result = "Option<SessionHandle>")]
pub struct LookupSession {
    pub id: SessionId,
}

/// The queue → registry: a command for every live session (whether agents are online).
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct BroadcastToSessions(pub SessionCommand);

/// A session's exit, as its supervision wrapper reports it.
pub type SessionExited = ChildExited<SessionId, Session>;

pub struct SessionRegistry {
    deps: Arc<SessionDeps>,
    children: KeyedChildren<SessionId, Session>,
    escalate: ExitReport,
    /// Live sessions, read by the listener's admission check without a message.
    live: Arc<AtomicUsize>,
}

impl SessionRegistry {
    pub fn new(deps: Arc<SessionDeps>, live: Arc<AtomicUsize>, escalate: ExitReport) -> Self {
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
        }
    }

    fn publish_count(&self) {
        self.live.store(self.children.len(), Ordering::Relaxed);
        metrics::gauge!(m::CHAT_SESSIONS).set(self.children.len() as f64);
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
        // Capacity counts new work only: this is a new session (resumes never come here).
        let s = &self.deps.settings;
        let why = if self.children.len() >= s.max_sessions {
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
        let id = SessionId::new();
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
        let (addr, _) = self.children.route(id, || Session::new(id, customer, deps));
        self.publish_count();
        tracing::info!(session_id = %id, "chat session started");
        addr.do_send(Attach {
            conn: msg.conn,
            resume_from: None,
            started_at: msg.started_at,
        });
    }
}

impl Handler<ResumeSession> for SessionRegistry {
    type Result = ();

    fn handle(&mut self, msg: ResumeSession, _: &mut Context<Self>) {
        let Some(addr) = self.children.get(msg.session_id) else {
            metrics::counter!(m::CHAT_RESUMES, "outcome" => "unknown").increment(1);
            return refuse(
                msg.conn,
                ErrorCode::ResumeRefused,
                "unknown session or wrong token",
                close::RESUME_REFUSED,
                "resume refused",
            );
        };
        addr.do_send(Resume {
            conn: msg.conn,
            resume_token: msg.resume_token,
            last_seq: msg.last_seq,
            started_at: msg.started_at,
        });
    }
}

impl Handler<SessionExited> for SessionRegistry {
    type Result = ();

    fn handle(&mut self, msg: SessionExited, _: &mut Context<Self>) {
        let outcome = self.children.exited(msg);
        self.publish_count();
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

impl Handler<LookupSession> for SessionRegistry {
    type Result = Option<SessionHandle>;

    fn handle(&mut self, msg: LookupSession, _: &mut Context<Self>) -> Self::Result {
        self.children.get(msg.id).map(|a| a.recipient())
    }
}

impl Handler<BroadcastToSessions> for SessionRegistry {
    type Result = ();

    fn handle(&mut self, msg: BroadcastToSessions, _: &mut Context<Self>) {
        self.children.broadcast(msg.0);
    }
}
