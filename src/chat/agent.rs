//! One signed-in agent as an actor, started by the agent registry on their first connection and
//! keyed by their token's `sub`. It owns the agent's [`state::AgentState`] (presence, capacity,
//! the chats held, their numbered stream) and, while connected, that connection.
//!
//! It outlives its connection for `agents.resume_grace_ms`: meanwhile it shows offline (no new
//! chats), keeps its chats and records every frame for them, and a reconnect with `agent.resume`
//! replays what was missed. Past the grace, or when the agent sets `offline`, its chats go back to
//! the queue. A token that expires during a connection ends it (4011) unless renewed with
//! `auth.refresh`.
//!
//! Takes: [`AttachAgent`], [`AgentTick`], [`EndAgent`], [`ToAgent`] (sessions and the queue), the
//! keyed supervisor's `Passivate` and `Hibernate`, and its connection's [`Inbound`] stream.

pub mod protocol;
pub mod state;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;

use self::protocol::{AgentFrame, AgentServerFrame, Presence};
use self::state::AgentState;
use super::attached::{Attached, Beat, FrameRate, Rate, Sent};
use super::auth::{self, AgentIdentity};
use super::handover::{HandOff, HandedOver, Party};
use super::history::ReplayError;
use super::link::{Connection, Inbound, Lane, Local};
use super::protocol::{close, ErrorCode};
use super::queue::{AgentUp, Join, JoinError};
use super::routing::ToQueue;
use super::routing::{AgentOp, RouteError, Router, SessionCommand, SessionHandle, ToAgent};
use super::session::check_message;
use super::session::owner::{AgentRef, Refused};
use crate::config::{AgentSettings, SessionSettings};
use crate::domain::ids::SessionId;
use crate::domain::ticket::Priority;
use crate::domain::validate::is_clean;
use crate::metrics as m;
use crate::supervisor::keyed::{Hibernate, Passivate};

/// What every agent uses.
pub struct AgentDeps {
    pub settings: AgentSettings,
    /// Message limits are the sessions'.
    pub sessions: SessionSettings,
    /// How the agent reaches sessions and the queue, by id.
    pub router: Router,
    pub max_subject_chars: usize,
    pub max_description_chars: usize,
}

/// How a connection begins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opening {
    Start {
        presence: Option<Presence>,
        capacity: Option<u32>,
        auto_assign: Option<bool>,
    },
    Resume {
        last_seq: u64,
    },
    /// Handed over by the process this one replaced: signed in as it was there, and told nothing.
    Adopted {
        last_seq: u64,
        presence: Presence,
        capacity: u32,
        auto_assign: bool,
    },
}

/// Registry → agent: attach this (authenticated) connection.
#[derive(Message)]
#[rtype(result = "()")]
pub struct AttachAgent {
    pub conn: Local,
    pub identity: AgentIdentity,
    pub opening: Opening,
}

/// Registry → every agent, like the sessions' tick: heartbeats, token expiry, the grace.
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "()")]
pub struct AgentTick;

/// Registry → agent on shutdown or upgrade: close (1012: resume) and stop, keeping their chats
/// (the sessions' journal has them in the agent's hands for the next process). In an upgrade
/// (`hand_to`) the connection goes to the next process instead, once the requests already sent
/// (a message waiting for its commit) are answered.
#[derive(Message, Debug, Clone, Default)]
#[rtype(result = "()")]
pub struct EndAgent {
    pub hand_to: Option<HandOff>,
}

/// Registry → agent as an upgrade begins: stop reading the connection (what the agent sends waits
/// in the kernel for the next process), and go on sending.
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "()")]
pub struct PauseAgent;

/// How long a handing-over agent waits for its requests in flight to be answered.
const HAND_OVER_WAIT: Duration = Duration::from_secs(2);

pub struct Agent {
    state: AgentState,
    deps: Arc<AgentDeps>,
    sessions: HashMap<SessionId, SessionHandle>,
    attached: Option<Attached>,
    detached_at: Option<Instant>,
    /// The presence to restore on a resume (shown offline while detached).
    presence_before: Presence,
    stale_reader: Option<SpawnHandle>,
    /// Stopped for the next process: the chats stay the agent's.
    keep_chats: bool,
    /// Requests to sessions and the queue not yet answered.
    in_flight: u32,
    /// This actor told the queue it is up at least once (a later connection is to the same actor,
    /// which still holds its chats).
    announced: bool,
    /// Handing the connection over once `in_flight` is zero.
    hand_to: Option<HandOff>,
    /// Adopted from the last process: chats the console already shows, which come back without a
    /// `session.assigned`.
    shown: Vec<SessionId>,
}

fn unix_now() -> u64 {
    chrono::Utc::now().timestamp().max(0) as u64
}

impl Agent {
    pub fn new(identity: &AgentIdentity, deps: Arc<AgentDeps>) -> Self {
        let me = AgentRef {
            id: identity.id.clone(),
            name: identity.name.clone(),
        };
        Self {
            state: AgentState::new(me, identity.expires_at, &deps.settings),
            deps,
            sessions: HashMap::new(),
            attached: None,
            detached_at: Some(Instant::now()),
            presence_before: Presence::Online,
            stale_reader: None,
            keep_chats: false,
            in_flight: 0,
            announced: false,
            hand_to: None,
            shown: Vec::new(),
        }
    }

    /// An agent whose connection the last process handed over: the stream goes on from
    /// `last_seq`, and the chats in `shown` come back silently (the console has them).
    pub fn adopted(
        identity: &AgentIdentity,
        deps: Arc<AgentDeps>,
        last_seq: u64,
        shown: Vec<SessionId>,
    ) -> Self {
        let mut agent = Self::continuing(identity, deps, last_seq);
        agent.shown = shown;
        agent
    }

    /// After an adoption: reads the connection again once every chat the console shows is back
    /// (or when waiting is over: one that did not come back was closed meanwhile).
    fn shown_back(&mut self, give_up: bool) {
        if give_up {
            self.shown.clear();
        }
        if self.shown.is_empty() && self.hand_to.is_none() {
            if let Some(att) = self.attached.as_mut() {
                att.link.resume();
            }
        }
    }

    /// Hands the connection over if nothing is in flight any more.
    fn settle(&mut self, ctx: &mut Context<Self>) {
        if self.hand_to.is_some() && self.in_flight == 0 {
            self.hand_over(ctx);
        }
    }

    /// Gives the connection to the next process (or closes it 1012 if it cannot go) and stops.
    fn hand_over(&mut self, ctx: &mut Context<Self>) {
        let Some(hand_to) = self.hand_to.take() else {
            return;
        };
        if let Some(mut att) = self.attached.take() {
            metrics::gauge!(m::AGENT_CONNECTIONS).decrement(1.0);
            match att.link.detach() {
                Some(socket) => hand_to.push(HandedOver {
                    party: Party::Agent {
                        agent_id: self.state.me.id.clone(),
                        name: self.state.me.name.clone(),
                        expires_at: self.state.expires_at,
                        last_seq: self.state.last_seq(),
                        presence: self.state.presence,
                        capacity: self.state.capacity,
                        auto_assign: self.state.auto_assign,
                        held: self.state.held(),
                    },
                    socket,
                }),
                None => {
                    metrics::counter!(m::UPGRADE_CLOSED, "party" => "agent").increment(1);
                    att.link
                        .close(close::SERVICE_RESTART, "server restarting: resume");
                }
            }
        }
        ctx.stop();
    }

    /// An agent resuming a stream the last process numbered up to `last_seq`: the numbering goes on
    /// from there, and their chats come back from the journal as `session.assigned`.
    pub fn continuing(identity: &AgentIdentity, deps: Arc<AgentDeps>, last_seq: u64) -> Self {
        let mut agent = Self::new(identity, deps);
        agent.state.continue_from(last_seq);
        agent
    }

    fn me(&self) -> AgentRef {
        self.state.me.clone()
    }

    fn deliver(&mut self, frame: &AgentServerFrame, lane: Lane) {
        let Some(att) = self.attached.as_mut() else {
            return;
        };
        match att.send(frame.to_text(), lane) {
            Sent::Queued => {
                metrics::counter!(m::AGENT_FRAMES_OUT, "type" => frame.kind()).increment(1);
            }
            Sent::Dropped => {}
            Sent::SlowConsumer => {
                metrics::counter!(m::CHAT_SLOW_CONSUMERS).increment(1);
                tracing::info!(agent_id = %self.state.me.id, "agent does not read; disconnecting");
                self.detach();
            }
            Sent::Closed => self.detach(),
        }
    }

    fn error(&mut self, code: ErrorCode, message: impl Into<String>, session: Option<SessionId>) {
        metrics::counter!(m::CHAT_FRAME_ERRORS, "code" => code.label()).increment(1);
        self.deliver(
            &AgentServerFrame::error(code, message, session),
            Lane::Reliable,
        );
    }

    fn status(&self) {
        self.deps.router.tell_queue(ToQueue::AgentStatus {
            agent: self.me(),
            presence: self.state.presence,
            capacity: self.state.capacity,
            auto_assign: self.state.auto_assign,
        });
    }

    /// The connection is gone: the agent shows offline and keeps their chats for the grace.
    fn detach(&mut self) {
        let Some(att) = self.attached.take() else {
            return;
        };
        self.stale_reader = Some(att.reader);
        drop(att.link);
        self.detached_at = Some(Instant::now());
        metrics::gauge!(m::AGENT_CONNECTIONS).decrement(1.0);
        if self.state.presence != Presence::Offline {
            self.presence_before = self.state.presence;
        }
        self.state.presence = Presence::Offline;
        self.status();
        tracing::info!(agent_id = %self.state.me.id, held = self.sessions.len(), "agent disconnected; chats kept for the grace");
    }

    /// Every chat held goes back to the queue (the agent is gone or offline).
    fn release_all(&mut self) {
        let me = self.me();
        for (_, session) in self.sessions.drain() {
            session.do_send(SessionCommand::ByAgent {
                agent: me.clone(),
                op: AgentOp::Lost,
            });
        }
    }

    fn attach(&mut self, conn: Connection, ctx: &mut Context<Self>) {
        if let Some(stale) = self.stale_reader.take() {
            ctx.cancel_future(stale);
        }
        if let Some(mut old) = self.attached.take() {
            ctx.cancel_future(old.reader);
            old.link
                .close(close::REPLACED, "signed in on another connection");
            metrics::gauge!(m::AGENT_CONNECTIONS).decrement(1.0);
        }
        let reader = ctx.add_stream(conn.inbound);
        let s = &self.deps.settings;
        self.attached = Some(Attached::new(
            conn.link,
            reader,
            FrameRate::new(
                s.rate_per_sec,
                s.rate_burst,
                self.deps.sessions.rate_close_after,
            ),
        ));
        self.detached_at = None;
        metrics::gauge!(m::AGENT_CONNECTIONS).increment(1.0);
    }

    fn replay(&mut self, last_seq: u64) {
        match self.state.replay_after(last_seq) {
            Ok(frames) => {
                for frame in &frames {
                    self.deliver(frame, Lane::Reliable);
                }
            }
            Err(ReplayError::Ahead { newest }) => {
                tracing::info!(agent_id = %self.state.me.id, last_seq, newest, "agent resumed from a seq never sent; refused");
                self.error(
                    ErrorCode::InvalidSeq,
                    format!("last_seq {last_seq} is past your stream's newest seq {newest}"),
                    None,
                );
                if let Some(att) = self.attached.as_mut() {
                    att.link.close(close::RESUME_REFUSED, "last_seq never sent");
                }
                self.detach();
            }
            Err(ReplayError::Lost { oldest_kept }) => {
                tracing::info!(agent_id = %self.state.me.id, last_seq, oldest_kept, "agent resumed too late: history lost");
                if let Some(att) = self.attached.as_mut() {
                    att.link
                        .close(close::HISTORY_LOST, "history lost: start again");
                }
                self.detach();
            }
        }
    }

    /// The session handle for a frame naming `session_id`, or the agent is told they do not hold it.
    fn held(&mut self, session_id: SessionId) -> Option<SessionHandle> {
        let handle = self.sessions.get(&session_id).cloned();
        if handle.is_none() {
            self.error(
                ErrorCode::NotJoined,
                "you do not hold this session",
                Some(session_id),
            );
        }
        handle
    }

    /// Puts `op` to a session held and reports a refusal to the agent.
    fn act(
        &mut self,
        session_id: SessionId,
        op: AgentOp,
        client_id: Option<String>,
        ctx: &mut Context<Self>,
    ) {
        let Some(session) = self.held(session_id) else {
            return;
        };
        let command = SessionCommand::ByAgent {
            agent: self.me(),
            op,
        };
        self.in_flight += 1;
        ctx.spawn(
            session
                .send(command)
                .into_actor(self)
                .map(move |result, act, ctx| {
                    act.in_flight -= 1;
                    act.answered(session_id, client_id, result);
                    act.settle(ctx);
                }),
        );
    }

    /// A session's answer to an agent's request.
    fn answered(
        &mut self,
        session_id: SessionId,
        client_id: Option<String>,
        result: Result<Option<u64>, RouteError>,
    ) {
        let act = self;
        match result {
            Ok(Some(seq)) => {
                if let Some(client_id) = client_id {
                    act.deliver(
                        &AgentServerFrame::Ack {
                            session_id,
                            client_id,
                            seq,
                        },
                        Lane::Reliable,
                    );
                }
            }
            Ok(None) => {}
            Err(RouteError::Refused(refused)) => {
                let code = match refused {
                    Refused::Closed => ErrorCode::SessionClosed,
                    Refused::AlreadyClaimed(_) => ErrorCode::AlreadyClaimed,
                    Refused::NotOwner => ErrorCode::NotJoined,
                };
                act.error_for(code, refused.to_string(), session_id, client_id);
            }
            Err(RouteError::NotLive) => act.error_for(
                ErrorCode::SessionClosed,
                "the session has ended".into(),
                session_id,
                client_id,
            ),
        }
    }

    fn error_for(
        &mut self,
        code: ErrorCode,
        message: String,
        session_id: SessionId,
        client_id: Option<String>,
    ) {
        metrics::counter!(m::CHAT_FRAME_ERRORS, "code" => code.label()).increment(1);
        self.deliver(
            &AgentServerFrame::Error {
                code,
                message,
                session_id: Some(session_id),
                client_id,
            },
            Lane::Reliable,
        );
    }

    fn join(&mut self, session_id: SessionId, ctx: &mut Context<Self>) {
        let join = Join {
            agent: self.me(),
            session_id,
        };
        self.in_flight += 1;
        ctx.spawn(
            self.deps
                .router
                .join(join)
                .into_actor(self)
                .map(move |result, act, ctx| {
                    act.in_flight -= 1;
                    act.settle(ctx);
                    let Err(e) = result else {
                        return;
                    };
                    let code = match &e {
                        JoinError::Queue(super::queue::state::ClaimError::AtCapacity(_)) => {
                            ErrorCode::AtCapacity
                        }
                        JoinError::Queue(super::queue::state::ClaimError::BeingClaimed)
                        | JoinError::Session(Refused::AlreadyClaimed(_)) => {
                            ErrorCode::AlreadyClaimed
                        }
                        JoinError::Session(Refused::Closed) => ErrorCode::SessionClosed,
                        JoinError::UnknownSession => ErrorCode::UnknownSession,
                        JoinError::Unreachable => ErrorCode::ServerBusy,
                        _ => ErrorCode::InvalidFrame,
                    };
                    act.error_for(code, e.to_string(), session_id, None);
                }),
        );
    }

    fn on_frame(&mut self, frame: AgentFrame, ctx: &mut Context<Self>) {
        match frame {
            AgentFrame::Start { .. } | AgentFrame::Resume { .. } => self.error(
                ErrorCode::AlreadyStarted,
                "this connection is already signed in",
                None,
            ),
            AgentFrame::SetPresence {
                presence,
                capacity,
                auto_assign,
            } => {
                let max = self.deps.settings.max_capacity;
                if let Err(e) = self.state.set(presence, capacity, auto_assign, max) {
                    return self.error(ErrorCode::InvalidFrame, e.to_string(), None);
                }
                tracing::info!(agent_id = %self.state.me.id, presence = self.state.presence.label(), capacity = self.state.capacity, "agent presence set");
                if self.state.presence == Presence::Offline {
                    self.release_all();
                }
                self.status();
            }
            AgentFrame::Join { session_id } => self.join(session_id, ctx),
            AgentFrame::Leave { session_id } => self.act(session_id, AgentOp::Leave, None, ctx),
            AgentFrame::Send {
                session_id,
                client_id,
                text,
            } => {
                if let Err(why) =
                    check_message(&client_id, &text, self.deps.sessions.max_message_chars)
                {
                    return self.error_for(
                        ErrorCode::InvalidFrame,
                        why,
                        session_id,
                        Some(client_id),
                    );
                }
                let op = AgentOp::Send {
                    client_id: client_id.clone(),
                    text,
                };
                self.act(session_id, op, Some(client_id), ctx);
            }
            AgentFrame::Typing { session_id, active } => {
                if let Some(session) = self.held(session_id) {
                    session.do_send(SessionCommand::ByAgent {
                        agent: self.me(),
                        op: AgentOp::Typing { active },
                    });
                }
            }
            AgentFrame::CreateTicket {
                session_id,
                subject,
                description,
                priority,
            } => {
                let subject_ok = !subject.trim().is_empty()
                    && subject.chars().count() <= self.deps.max_subject_chars
                    && is_clean(&subject);
                let description_ok = description.chars().count() <= self.deps.max_description_chars
                    && is_clean(&description);
                if !subject_ok || !description_ok {
                    let field = if subject_ok { "description" } else { "subject" };
                    return self.error_for(
                        ErrorCode::InvalidFrame,
                        format!("`{field}` is empty, too long or holds control characters"),
                        session_id,
                        None,
                    );
                }
                let op = AgentOp::CreateTicket {
                    subject,
                    description,
                    priority: priority.unwrap_or(Priority::Normal),
                };
                self.act(session_id, op, None, ctx);
            }
            AgentFrame::Close { session_id } => self.act(session_id, AgentOp::Close, None, ctx),
            AgentFrame::Refresh { token } => {
                match auth::agent(Some(&token), &self.deps.settings.jwt_secret) {
                    Ok(identity) if identity.id == self.state.me.id => {
                        self.state.expires_at = identity.expires_at;
                        tracing::info!(agent_id = %self.state.me.id, expires_at = identity.expires_at, "agent token renewed");
                    }
                    Ok(_) => self.error(
                        ErrorCode::Unauthorized,
                        "the token is for another agent",
                        None,
                    ),
                    Err(e) => self.error(ErrorCode::Unauthorized, e.to_string(), None),
                }
            }
            AgentFrame::FetchHistory {
                session_id,
                before_seq,
            } => {
                self.act(session_id, AgentOp::History { before_seq }, None, ctx);
            }
            AgentFrame::Ping {} => self.deliver(&AgentServerFrame::Pong {}, Lane::Reliable),
        }
    }
}

impl Actor for Agent {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        // Lives until it stops itself (grace, shutdown), like a session.
        ctx.spawn(actix::fut::wrap_future(std::future::pending::<()>()));
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        // No ghosts: the queue forgets the agent and their chats are requeued (unless the server
        // is only restarting: then they stay the agent's, in the journal).
        if !self.keep_chats {
            self.release_all();
        }
        if self.attached.take().is_some() {
            metrics::gauge!(m::AGENT_CONNECTIONS).decrement(1.0);
        }
        self.deps.router.tell_queue(ToQueue::AgentGone {
            agent: self.state.me.id.clone(),
        });
        tracing::info!(agent_id = %self.state.me.id, "agent signed off");
    }
}

impl actix::Supervised for Agent {
    fn restarting(&mut self, _: &mut Context<Self>) {
        self.stale_reader = None;
        tracing::warn!(agent_id = %self.state.me.id, "agent actor restarting from its kept state");
        if let Some(mut att) = self.attached.take() {
            att.link
                .close(close::INTERNAL_ERROR, "agent restarted: resume");
            metrics::gauge!(m::AGENT_CONNECTIONS).decrement(1.0);
        }
        self.detached_at = Some(Instant::now());
    }
}

impl StreamHandler<Inbound> for Agent {
    fn handle(&mut self, item: Inbound, ctx: &mut Context<Self>) {
        let Some(att) = self.attached.as_mut() else {
            return;
        };
        att.last_heard = Instant::now();
        if let Inbound::Broken { code, reason } = item {
            att.link.close(code, reason);
            self.detach();
            return;
        }
        // Pings and pongs count against the rate too.
        match att.admit() {
            Rate::Within => {}
            Rate::Close => {
                metrics::counter!(m::CHAT_RATE_CLOSED, "stage" => "agent").increment(1);
                tracing::info!(agent_id = %self.state.me.id, "agent connection stayed over the frame rate; closed");
                self.detach();
                return;
            }
            Rate::Over => {
                if let Inbound::Text(text) = item {
                    let frame = AgentServerFrame::Error {
                        code: ErrorCode::RateLimited,
                        message: "too many frames; slow down".into(),
                        session_id: None,
                        client_id: super::protocol::client_id_of(&text),
                    };
                    metrics::counter!(m::CHAT_FRAME_ERRORS, "code" => ErrorCode::RateLimited.label())
                        .increment(1);
                    self.deliver(&frame, Lane::Reliable);
                }
                return;
            }
        }
        let text = match item {
            Inbound::Text(text) => text,
            Inbound::Alive | Inbound::Broken { .. } => return,
        };
        match protocol::parse(&text) {
            Ok(frame) => {
                metrics::counter!(m::AGENT_FRAMES_IN, "type" => frame.kind()).increment(1);
                let span = tracing::debug_span!("agent_frame", agent_id = %self.state.me.id, kind = frame.kind());
                let _guard = span.enter();
                self.on_frame(frame, ctx);
            }
            Err(e) => {
                metrics::counter!(m::AGENT_FRAMES_IN, "type" => "invalid").increment(1);
                self.error(e.code, e.message, None);
            }
        }
    }

    fn finished(&mut self, _: &mut Context<Self>) {
        self.detach();
    }
}

impl Handler<AttachAgent> for Agent {
    type Result = ();

    fn handle(&mut self, msg: AttachAgent, ctx: &mut Context<Self>) {
        self.attach(msg.conn.take(), ctx);
        self.state.me.name = msg.identity.name.clone();
        self.state.expires_at = msg.identity.expires_at;
        let max = self.deps.settings.max_capacity;
        let resume_from = match msg.opening {
            Opening::Start {
                presence,
                capacity,
                auto_assign,
            } => {
                let presence = presence.or(Some(Presence::Online));
                if let Err(e) = self.state.set(presence, capacity, auto_assign, max) {
                    self.error(ErrorCode::InvalidFrame, e.to_string(), None);
                    let _ = self.state.set(presence, None, auto_assign, max);
                }
                None
            }
            Opening::Resume { last_seq } => {
                self.state.presence = self.presence_before;
                Some(last_seq)
            }
            Opening::Adopted {
                presence,
                capacity,
                auto_assign,
                ..
            } => {
                metrics::counter!(m::UPGRADE_ADOPTED, "party" => "agent", "outcome" => "attached")
                    .increment(1);
                self.state.presence = presence;
                self.state.capacity = capacity;
                self.state.auto_assign = auto_assign;
                if !self.shown.is_empty() {
                    // What the console sends about its chats waits until they are back here.
                    if let Some(att) = self.attached.as_mut() {
                        att.link.pause();
                    }
                    ctx.run_later(HAND_OVER_WAIT, |act, _| act.shown_back(true));
                }
                None
            }
        };
        let adopted = matches!(msg.opening, Opening::Adopted { .. });
        if self.state.presence == Presence::Offline {
            self.release_all();
        }
        tracing::info!(agent_id = %self.state.me.id, resume = resume_from.is_some(), presence = self.state.presence.label(), "agent connected");
        let up = AgentUp {
            agent: self.me(),
            presence: self.state.presence,
            capacity: self.state.capacity,
            auto_assign: self.state.auto_assign,
            fresh: !std::mem::replace(&mut self.announced, true),
            holds: self.sessions.keys().copied().collect(),
        };
        // Nothing reaches the agent before `agent.ready`: the mailbox waits for the queue's answer.
        ctx.wait(
            self.deps
                .router
                .agent_up(up)
                .into_actor(self)
                .map(move |snapshot, act, _| {
                    if adopted {
                        // The console has its `agent.ready` from the last process.
                        return;
                    }
                    let snapshot = snapshot.unwrap_or_default();
                    let ready = AgentServerFrame::Ready {
                        agent_id: act.state.me.id.clone(),
                        name: act.state.me.name.clone(),
                        seq: act.state.last_seq(),
                        presence: act.state.presence,
                        capacity: act.state.capacity,
                        auto_assign: act.state.auto_assign,
                        token_expires_at: act.state.expires_at,
                        agents: snapshot.agents,
                        queue: snapshot.queue,
                        sessions: act.state.held(),
                    };
                    act.deliver(&ready, Lane::Reliable);
                    if let Some(last_seq) = resume_from {
                        act.replay(last_seq);
                    }
                }),
        );
    }
}

/// Registry → agent: tell the routing queue again that you are up (a new node leads it).
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "()")]
pub struct Reannounce;

impl Handler<Reannounce> for Agent {
    type Result = ();

    fn handle(&mut self, _: Reannounce, ctx: &mut Context<Self>) {
        let up = AgentUp {
            agent: self.me(),
            presence: self.state.presence,
            capacity: self.state.capacity,
            auto_assign: self.state.auto_assign,
            fresh: false,
            holds: self.sessions.keys().copied().collect(),
        };
        ctx.spawn(
            self.deps
                .router
                .agent_up(up)
                .into_actor(self)
                .map(|_, _, _| ()),
        );
    }
}

impl Handler<ToAgent> for Agent {
    type Result = ();

    fn handle(&mut self, msg: ToAgent, _: &mut Context<Self>) {
        match msg {
            ToAgent::Assigned {
                session_id,
                customer,
                by,
                history,
                has_more,
            } => {
                let session = SessionHandle::new(session_id, self.deps.router.clone());
                if self.state.presence == Presence::Offline && self.detached_at.is_some() {
                    // Assigned as the connection dropped: give it straight back.
                    session.do_send(SessionCommand::ByAgent {
                        agent: self.me(),
                        op: AgentOp::Lost,
                    });
                }
                self.sessions.insert(session_id, session);
                if let Some(i) = self.shown.iter().position(|s| *s == session_id) {
                    // Back after an upgrade: the console shows it already.
                    self.shown.swap_remove(i);
                    self.state.hold(session_id);
                    self.shown_back(false);
                    return;
                }
                let frame = self
                    .state
                    .assigned(session_id, customer, by, history, has_more);
                self.deliver(&frame, Lane::Reliable);
            }
            ToAgent::History {
                session_id,
                frames,
                has_more,
            } => {
                if self.state.holds(session_id) {
                    self.deliver(
                        &AgentServerFrame::History {
                            session_id,
                            frames,
                            has_more,
                        },
                        Lane::Reliable,
                    );
                }
            }
            ToAgent::Frames { session_id, frames } => {
                for frame in self.state.events(session_id, frames) {
                    self.deliver(&frame, Lane::Reliable);
                }
            }
            ToAgent::Typing { session_id, active } => {
                if self.state.holds(session_id) {
                    self.deliver(
                        &AgentServerFrame::Typing { session_id, active },
                        Lane::Droppable,
                    );
                }
            }
            ToAgent::Released { session_id, reason } => {
                self.sessions.remove(&session_id);
                if let Some(frame) = self.state.released(session_id, reason) {
                    self.deliver(&frame, Lane::Reliable);
                }
            }
            ToAgent::Ticket {
                session_id,
                ticket_id,
            } => match ticket_id {
                Some(ticket_id) => self.deliver(
                    &AgentServerFrame::TicketCreated {
                        session_id,
                        ticket_id,
                    },
                    Lane::Reliable,
                ),
                None => self.error_for(
                    ErrorCode::TicketFailed,
                    "the ticket could not be created; try again".into(),
                    session_id,
                    None,
                ),
            },
            ToAgent::Push(frame) => self.deliver(&frame, Lane::Reliable),
        }
    }
}

impl Handler<AgentTick> for Agent {
    type Result = ();

    fn handle(&mut self, _: AgentTick, ctx: &mut Context<Self>) {
        let now = Instant::now();
        if let Some(since) = self.detached_at {
            let grace = Duration::from_millis(self.deps.settings.resume_grace_ms);
            if now.duration_since(since) >= grace {
                tracing::info!(agent_id = %self.state.me.id, "agent did not come back within the grace; chats requeued");
                ctx.stop();
            }
            return;
        }
        if unix_now() >= self.state.expires_at {
            tracing::info!(agent_id = %self.state.me.id, "agent token expired; disconnecting");
            self.error(
                ErrorCode::TokenExpired,
                "your token expired: reconnect with a fresh one and resume",
                None,
            );
            if let Some(att) = self.attached.as_mut() {
                att.link.close(close::TOKEN_EXPIRED, "token expired");
            }
            self.detach();
            return;
        }
        let s = &self.deps.settings;
        let (interval, timeout) = (
            Duration::from_millis(s.heartbeat_interval_ms),
            Duration::from_millis(s.heartbeat_timeout_ms),
        );
        if let Some(att) = self.attached.as_mut() {
            if att.heartbeat(now, interval, timeout) == Beat::TimedOut {
                tracing::info!(agent_id = %self.state.me.id, "no sign of life from the agent; disconnecting");
                let reader = att.reader;
                ctx.cancel_future(reader);
                self.detach();
            }
        }
    }
}

impl Agent {
    /// Closes the connection (1001: reconnect elsewhere) and stops; the agent's chats are requeued.
    fn end(&mut self, reason: &'static str, ctx: &mut Context<Self>) {
        if let Some(mut att) = self.attached.take() {
            att.link.close(close::GOING_AWAY, reason);
            metrics::gauge!(m::AGENT_CONNECTIONS).decrement(1.0);
        }
        ctx.stop();
    }
}

impl Handler<EndAgent> for Agent {
    type Result = ();

    fn handle(&mut self, msg: EndAgent, ctx: &mut Context<Self>) {
        self.keep_chats = true;
        if let (Some(hand_to), Some(att)) = (msg.hand_to, self.attached.as_mut()) {
            att.link.pause();
            self.hand_to = Some(hand_to);
            // Bounded: a session that never answers does not hold the upgrade.
            ctx.run_later(HAND_OVER_WAIT, |act, ctx| act.hand_over(ctx));
            return self.settle(ctx);
        }
        if let Some(mut att) = self.attached.take() {
            att.link
                .close(close::SERVICE_RESTART, "server restarting: resume");
            metrics::gauge!(m::AGENT_CONNECTIONS).decrement(1.0);
        }
        ctx.stop();
    }
}

impl Handler<PauseAgent> for Agent {
    type Result = ();

    fn handle(&mut self, _: PauseAgent, _: &mut Context<Self>) {
        if let Some(att) = self.attached.as_mut() {
            att.link.pause();
        }
    }
}

impl Handler<Passivate> for Agent {
    type Result = ();

    fn handle(&mut self, _: Passivate, ctx: &mut Context<Self>) {
        self.end("agent stopped", ctx);
    }
}

impl Handler<Hibernate> for Agent {
    type Result = ();

    fn handle(&mut self, _: Hibernate, _: &mut Context<Self>) {
        self.state.shrink();
    }
}
