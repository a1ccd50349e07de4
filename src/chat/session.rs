//! One live-chat session as an actor: started by the session registry when a customer sends
//! `session.start`, it owns the session's [`state::SessionState`] and, while a connection is
//! attached, that connection's [`Link`] and inbound stream. It outlives its connection for
//! `sessions.resume_grace_ms`: a resume attaches a new one and replays what was missed.
//!
//! It reads client frames, applies them through the state's pure rules, and carries out the
//! [`Effect`]s they return: frames to the client, AI calls through the bridge's request/response
//! lane (one in flight), tickets created in the ticket registry and announced to Django through the
//! outbox, and service actions. The registry's periodic [`Tick`] drives heartbeats and timeouts, so
//! an idle session holds no timer of its own.
//!
//! While an agent holds the session (see [`owner`]), the AI is silent and every numbered frame,
//! the customer's messages included, is forwarded to that agent; while it waits for one it is in
//! the routing queue (src/chat/queue.rs). Handoffs reach Django through the outbox.
//!
//! Takes: [`Attach`], [`Resume`], [`Tick`], [`EndSession`], [`SessionCommand`] (agents and the
//! queue; src/chat/session/agents.rs), the keyed supervisor's `Passivate` and `Hibernate`, and its
//! connection's [`Inbound`] stream.

mod agents;
mod durable;
pub mod owner;
pub mod state;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use uuid::Uuid;

use self::state::{
    Accepted, AfterLeave, AiCall, CustomerInfo, Effect, Limits, ReplayError, SessionState,
};
use super::attached::{Attached, Beat, FrameRate, Rate, Sent};
use super::desk::{ChatTicket, TicketDesk};
use super::handover::HandOff;
use super::link::{Connection, Inbound, Lane, Local};
use super::placement;
use super::protocol::{self, close, Author, ClientFrame, CloseReason, ErrorCode, ServerFrame};
use super::routing::{Router, ToAgent, ToQueue};
use crate::bridge::wire::{AiRespondRequest, Customer, ServiceActionRequest};
use crate::bridge::{AiRespond, ManageService};
use crate::config::SessionSettings;
use crate::domain::ids::{AgentId, RequestId, SessionId};
use crate::domain::principal::Principal;
use crate::domain::ticket::Priority;
use crate::domain::validate::is_clean as clean;
use crate::metrics as m;
use crate::store::chat_journal::ChatJournal;
use crate::store::Outbox;
use crate::supervisor::keyed::{Hibernate, Passivate};

/// What every session uses, shared by all of them.
pub struct SessionDeps {
    pub settings: SessionSettings,
    pub limits: Limits,
    /// Each chat thread's AI port, by thread: a session asks its own thread's.
    pub calls: Vec<Recipient<AiRespond>>,
    pub services: Recipient<ManageService>,
    /// Where tickets from this chat are opened.
    pub desk: Arc<dyn TicketDesk>,
    pub outbox: Arc<dyn Outbox>,
    /// Where every numbered frame and the session's record are written before they are sent.
    pub journal: Arc<dyn ChatJournal>,
    /// Ticket subjects and descriptions are checked against the ticket limits.
    pub max_subject_chars: usize,
    pub max_description_chars: usize,
    /// Customers' identities (from a token) are held to the ticket API's name limit.
    pub max_name_chars: usize,
    /// Every session's kept history in bytes, against `sessions.max_total_history_bytes`.
    pub history_bytes: Arc<AtomicUsize>,
    /// `agents.history_page_bytes`: how much of the chat an agent is sent at once.
    pub agent_page_bytes: usize,
    /// How the session reaches agents and the routing queue, by id.
    pub router: Router,
    /// Whether any agent is online (kept by the queue), for `session.started`.
    pub agents_online: Arc<AtomicBool>,
    /// `agents.on_leave`.
    pub after_leave: AfterLeave,
    /// `agents.resume_grace_ms`: how long a chat restored with its agent waits for them.
    pub agent_grace: Duration,
}

/// Registry → session: attach this connection (a new session's first, or a resume's after its
/// token was checked). With `last_seq`, every kept frame after it is replayed first.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Attach {
    pub conn: Local,
    pub resume_from: Option<u64>,
    pub started_at: Instant,
    /// A new session's resume token, sent once in `session.started` (only its hash is kept).
    pub resume_token: String,
}

/// Registry → session: a client asks to resume this session. The session checks the token; a wrong
/// one gets `error` resume_refused and close 4003.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Resume {
    pub conn: Local,
    pub resume_token: String,
    pub last_seq: u64,
    pub started_at: Instant,
    /// The connection was handed over by the process this one replaced: it is the session's
    /// already (no token to check), and its client is told nothing.
    pub adopted: bool,
}

/// Registry → every session, each `sessions.heartbeat_interval_ms`: ping the client, and end what
/// timed out (a silent connection, an idle session, a detached one past its grace).
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "()")]
pub struct Tick;

/// Registry → session when its registry restarts: tell the client and close (1001).
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "()")]
pub struct EndSession;

/// Registry → session on shutdown or upgrade: commit everything, close the connection with 1012
/// (resume) and stop without ending the session: the next process carries it on from the
/// journal. In an upgrade (`hand_to`) the connection is not closed but handed over: reading stops,
/// what is committed is sent, and the socket goes to the next process.
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub struct Suspend {
    pub hand_to: Option<HandOff>,
}

/// Registry → session: tell the routing queue where you stand (see `reannounce`). `grace`: how
/// long an agent holding it has to show up before it is requeued (default `agents.resume_grace_ms`).
#[derive(Message, Debug, Clone, Copy, Default)]
#[rtype(result = "()")]
pub struct Reannounce {
    pub grace: Option<Duration>,
}

/// Registry → session: another node of the cluster took the session over (its customer resumed
/// there). A connection still here is closed as replaced (4009), and the session stops without
/// writing: the journal is the other node's now.
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "()")]
pub struct MovedAway;

/// Test hook (routed only when `testing.fault_injection` is on): panic inside a handler.
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "()")]
pub struct InjectPanic;

/// The agent holding the session, as the actor reaches them (by id, through the router).
struct AgentLink {
    id: AgentId,
    /// The newest seq forwarded to them.
    forwarded: u64,
    claimed_at: Instant,
    replied: bool,
}

pub struct Session {
    state: SessionState,
    deps: Arc<SessionDeps>,
    agent: Option<AgentLink>,
    /// In the routing queue (told `Enqueue`, not yet claimed or dequeued).
    in_queue: bool,
    /// The queue position last told to the customer.
    position: Option<usize>,
    /// Ended by the server's shutdown: a queued customer did not abandon the chat.
    shutting_down: bool,
    /// The record changed beyond its frames: the next append carries it.
    dirty: bool,
    /// Ended without a frame (no resume within the grace): the record says closed.
    expired: bool,
    /// Stopped for the next process or for the journal (suspended, passivated): whoever routes
    /// to it is not told it ended, since it did not.
    quiet_stop: bool,
    /// The newest seq committed to the journal.
    committed: u64,
    /// Writes under way and what waits for them (see [`durable`]); `None` while nothing does.
    io: Option<Box<durable::Io>>,
    attached: Option<Attached>,
    last_customer: Instant,
    detached_at: Option<Instant>,
    /// When the AI call in flight went out, for its round-trip histogram.
    ai_started: Option<Instant>,
    /// The reader of a connection detached without its context at hand (see `detach`).
    stale_reader: Option<SpawnHandle>,
    /// This session's share of `SessionDeps::history_bytes`.
    accounted: usize,
    /// Tickets and service actions under way (a session with work under way stays in memory).
    tasks: u8,
}

/// Longest `reason` of a customer's `handoff.request`, in characters.
const MAX_HANDOFF_REASON_CHARS: usize = 500;

impl Session {
    /// A new session; its resume token is `resume_token` (given to the client once).
    pub fn new(
        id: SessionId,
        resume_token: &str,
        customer: CustomerInfo,
        deps: Arc<SessionDeps>,
    ) -> Self {
        let hash = state::hash_token(resume_token);
        Self::from_state(
            SessionState::new(id, hash, customer, chrono::Utc::now()),
            deps,
            Instant::now(),
            Instant::now(),
        )
    }

    /// A new resume token: 256 random bits.
    pub fn new_token() -> String {
        format!("{}{}", Uuid::new_v4().simple(), Uuid::new_v4().simple())
    }

    /// A session read back from the chat journal, last active and detached at those instants.
    pub fn restored(
        state: SessionState,
        deps: Arc<SessionDeps>,
        last_customer: Instant,
        detached_at: Instant,
    ) -> Self {
        let mut session = Self::from_state(state, deps, last_customer, detached_at);
        session.in_queue = matches!(session.state.owner, state::Owner::Queued { .. });
        session
    }

    fn from_state(
        state: SessionState,
        deps: Arc<SessionDeps>,
        last_customer: Instant,
        detached_at: Instant,
    ) -> Self {
        Self {
            committed: state.last_seq(),
            state,
            deps,
            agent: None,
            in_queue: false,
            position: None,
            shutting_down: false,
            dirty: false,
            expired: false,
            quiet_stop: false,
            io: None,
            attached: None,
            last_customer,
            detached_at: Some(detached_at),
            ai_started: None,
            stale_reader: None,
            accounted: 0,
            tasks: 0,
        }
    }

    /// Brings this session's share of the process-wide history bytes up to date.
    fn account(&mut self) {
        let now = self.state.history_bytes();
        let total = &self.deps.history_bytes;
        if now > self.accounted {
            total.fetch_add(now - self.accounted, Ordering::Relaxed);
        } else {
            total.fetch_sub(self.accounted - now, Ordering::Relaxed);
        }
        self.accounted = now;
    }

    /// Whether every session's history together is at `sessions.max_total_history_bytes`: new
    /// work is refused until sessions end or trim.
    fn over_budget(&self) -> bool {
        self.deps.history_bytes.load(Ordering::Relaxed)
            >= self.deps.settings.max_total_history_bytes
    }

    fn id(&self) -> SessionId {
        self.state.id
    }

    fn limits(&self) -> Limits {
        self.deps.limits
    }

    /// Sends one frame's text to the attached client, if any; a client that does not read is
    /// disconnected. Frames go through [`Self::deliver`], which holds them until the journal has
    /// what they show.
    fn send_now(&mut self, text: String, lane: Lane, kind: &'static str) {
        let Some(att) = self.attached.as_mut() else {
            return;
        };
        match att.send(text, lane) {
            Sent::Queued => {
                metrics::counter!(m::CHAT_FRAMES_OUT, "type" => kind).increment(1);
            }
            Sent::Dropped => {}
            Sent::SlowConsumer => {
                metrics::counter!(m::CHAT_SLOW_CONSUMERS).increment(1);
                tracing::info!(session_id = %self.state.id, "client does not read; disconnecting it");
                self.detach();
            }
            Sent::Closed => self.detach(),
        }
    }

    fn error(&mut self, code: ErrorCode, message: impl Into<String>, client_id: Option<String>) {
        metrics::counter!(m::CHAT_FRAME_ERRORS, "code" => code.label()).increment(1);
        let frame = ServerFrame::Error {
            code,
            message: message.into(),
            client_id,
        };
        self.deliver(&frame, Lane::Reliable);
    }

    fn detach(&mut self) {
        if let Some(att) = self.attached.take() {
            // Its reader may still deliver its end; it is cancelled when the next connection
            // attaches, so that end cannot detach the newer one. Dropping the link closes what is
            // left of the socket.
            self.stale_reader = Some(att.reader);
            drop(att.link);
            self.detached_at = Some(Instant::now());
        }
    }

    fn attach(&mut self, conn: Connection, ctx: &mut Context<Self>) {
        if let Some(stale) = self.stale_reader.take() {
            ctx.cancel_future(stale);
        }
        if let Some(old) = self.attached.take() {
            let mut old = old;
            ctx.cancel_future(old.reader);
            old.link
                .close(close::REPLACED, "resumed on another connection");
        }
        self.drop_held_frames();
        let reader = ctx.add_stream(conn.inbound);
        let s = &self.deps.settings;
        self.attached = Some(Attached::new(
            conn.link,
            reader,
            FrameRate::new(s.rate_per_sec, s.rate_burst, s.rate_close_after),
        ));
        self.detached_at = None;
    }

    /// Carries out what the state's rules asked for.
    fn run(&mut self, effects: Vec<Effect>, ctx: &mut Context<Self>) {
        for effect in effects {
            match effect {
                Effect::Send(frame) => self.deliver(&frame, Lane::Reliable),
                Effect::CallAi(call) => self.call_ai(call, ctx),
                Effect::CreateTicket {
                    subject,
                    description,
                    priority,
                } => self.create_ticket(subject, description, priority, "ai", ctx),
                Effect::RunService {
                    action_id,
                    service,
                    operation,
                    params,
                } => self.run_service(action_id, service, operation, params, ctx),
                Effect::Enqueue { reason } => self.enqueue(reason, ctx),
                Effect::Close(reason) => {
                    self.forward_to_agent();
                    self.end(reason, ctx);
                }
            }
        }
        self.forward_to_agent();
        self.account();
        self.persist(ctx);
    }

    fn end(&mut self, reason: CloseReason, ctx: &mut Context<Self>) {
        let label = match reason {
            CloseReason::CustomerClosed => "customer_closed",
            CloseReason::IdleTimeout => "idle_timeout",
            CloseReason::ServerShutdown => "server_shutdown",
            CloseReason::AgentClosed => "agent_closed",
        };
        metrics::counter!(m::CHAT_SESSIONS_CLOSED, "reason" => label).increment(1);
        tracing::info!(session_id = %self.id(), reason = label, "chat session ended");
        let code = if reason == CloseReason::ServerShutdown {
            close::GOING_AWAY
        } else {
            close::NORMAL
        };
        self.finish(durable::Ending::Close(code, label), ctx);
    }

    fn customer(&self) -> Customer {
        Customer {
            id: self.state.customer.id.clone(),
            name: self.state.customer.name.clone(),
            email: self.state.customer.email.clone(),
        }
    }

    fn call_ai(&mut self, call: AiCall, ctx: &mut Context<Self>) {
        self.deliver(
            &ServerFrame::Typing {
                from: Author::Ai,
                active: true,
            },
            Lane::Droppable,
        );
        let message_id = call.message_id;
        let request = AiRespond {
            request: AiRespondRequest {
                session_id: self.id(),
                message_id,
                customer: self.customer(),
                message: call.text,
                history: call.history,
            },
            request_id: Some(RequestId::from(message_id.to_string())),
        };
        self.ai_started = Some(Instant::now());
        let span = tracing::info_span!("chat_ai_call", session_id = %self.id(), %message_id);
        let port = placement::of_session(self.id(), self.deps.calls.len());
        let sent = self.deps.calls[port].send(request);
        ctx.spawn(
            tracing::Instrument::instrument(sent, span)
                .into_actor(self)
                .map(move |result, act, ctx| {
                    if let Some(started) = act.ai_started.take() {
                        metrics::histogram!(m::CHAT_AI_DURATION)
                            .record(started.elapsed().as_secs_f64());
                    }
                    let now = chrono::Utc::now();
                    let limits = act.limits();
                    // An agent who took the chat meanwhile already cleared the AI's typing.
                    let ai_answering = act.state.owner.is_ai();
                    let effects = match result {
                        Ok(Ok(reply)) => {
                            let effects = act.state.ai_replied(
                                &limits,
                                message_id,
                                reply.reply,
                                reply.actions,
                                reply.handoff,
                                now,
                            );
                            let outcome = if effects.is_empty() { "discarded" } else { "replied" };
                            metrics::counter!(m::CHAT_AI_CALLS, "outcome" => outcome).increment(1);
                            effects
                        }
                        Ok(Err(e)) => {
                            let outcome = match e {
                                crate::bridge::CallsError::Busy { .. }
                                | crate::bridge::CallsError::CircuitOpen { .. } => "refused",
                                _ => "failed",
                            };
                            metrics::counter!(m::CHAT_AI_CALLS, "outcome" => outcome).increment(1);
                            tracing::warn!(session_id = %act.id(), error = %crate::bridge::client::chain(&e), "AI call failed; the customer is told");
                            act.state.ai_failed(&limits, message_id, now)
                        }
                        Err(e) => {
                            metrics::counter!(m::CHAT_AI_CALLS, "outcome" => "failed").increment(1);
                            tracing::warn!(session_id = %act.id(), error = %e, "the calls lane did not answer");
                            act.state.ai_failed(&limits, message_id, now)
                        }
                    };
                    if ai_answering {
                        act.deliver(
                            &ServerFrame::Typing {
                                from: Author::Ai,
                                active: false,
                            },
                            Lane::Droppable,
                        );
                    }
                    act.run(effects, ctx);
                }),
        );
    }

    fn create_ticket(
        &mut self,
        subject: String,
        description: String,
        priority: Priority,
        asked_by: &'static str,
        ctx: &mut Context<Self>,
    ) {
        let agent = (asked_by == "agent")
            .then(|| self.agent.as_ref().map(|a| a.id.clone()))
            .flatten();
        if !self
            .state
            .take_ticket(self.deps.settings.tickets_per_hour, chrono::Utc::now())
        {
            metrics::counter!(m::CHAT_TICKETS_REFUSED, "reason" => "per_hour").increment(1);
            tracing::info!(session_id = %self.id(), asked_by, "ticket from chat refused: tickets_per_hour reached");
            let message = format!(
                "this chat has opened {} tickets in the last hour; no more for now",
                self.deps.settings.tickets_per_hour
            );
            match agent {
                Some(agent) => self.deps.router.tell_agent(
                    &agent,
                    ToAgent::Ticket {
                        session_id: self.id(),
                        ticket_id: None,
                    },
                ),
                None => self.error(ErrorCode::TicketLimit, message, None),
            }
            return;
        }
        let session_id = self.id();
        let customer = &self.state.customer;
        let ticket = ChatTicket {
            session_id,
            subject,
            description,
            priority,
            requester: if customer.email.is_empty() {
                customer.id.clone()
            } else {
                customer.email.clone()
            },
            transcript: self.state.transcript(&self.limits()),
            actor: Principal::Customer(session_id),
        };
        let span = tracing::info_span!("chat_ticket", %session_id, asked_by);
        let fut = tracing::Instrument::instrument(self.deps.desk.open(ticket), span);
        self.tasks += 1;
        ctx.spawn(fut.into_actor(self).map(move |result, act, ctx| {
            act.tasks -= 1;
            match result {
                Ok(ticket_id) => {
                    metrics::counter!(m::CHAT_TICKETS, "asked_by" => asked_by).increment(1);
                    tracing::info!(session_id = %act.id(), %ticket_id, "ticket created from chat");
                    let limits = act.limits();
                    let frame = act.state.ticket_created(&limits, ticket_id);
                    act.deliver(&frame, Lane::Reliable);
                    act.forward_to_agent();
                    act.account();
                    act.persist(ctx);
                    if let Some(agent) = agent {
                        act.deps.router.tell_agent(
                            &agent,
                            ToAgent::Ticket {
                                session_id: act.id(),
                                ticket_id: Some(ticket_id),
                            },
                        );
                    }
                }
                Err(why) => {
                    tracing::warn!(session_id = %act.id(), error = %why, "ticket from chat failed");
                    match agent {
                        Some(agent) => act.deps.router.tell_agent(
                            &agent,
                            ToAgent::Ticket {
                                session_id: act.id(),
                                ticket_id: None,
                            },
                        ),
                        None => act.error(
                            ErrorCode::TicketFailed,
                            "the ticket could not be created; please try again",
                            None,
                        ),
                    }
                }
            }
        }));
    }

    fn run_service(
        &mut self,
        action_id: Uuid,
        service: String,
        operation: String,
        params: serde_json::Value,
        ctx: &mut Context<Self>,
    ) {
        let request = ManageService {
            request: ServiceActionRequest {
                action_id,
                session_id: self.id(),
                customer: self.customer(),
                service: service.clone(),
                operation: operation.clone(),
                params,
                request_id: None,
            },
            request_id: Some(RequestId::from(action_id.to_string())),
        };
        let sent = self.deps.services.send(request);
        self.tasks += 1;
        ctx.spawn(sent.into_actor(self).map(move |result, act, ctx| {
            act.tasks -= 1;
            let (outcome, text) = match result {
                Ok(Ok(r)) if r.ok => ("ok", r.customer_text(&service, &operation)),
                Ok(Ok(r)) => ("refused", r.customer_text(&service, &operation)),
                _ => (
                    "failed",
                    format!("We could not run `{operation}` on your {service} service just now."),
                ),
            };
            metrics::counter!(m::CHAT_ACTIONS, "kind" => "manage_service", "outcome" => outcome)
                .increment(1);
            let limits = act.limits();
            let now = chrono::Utc::now();
            // A failure offers the customer a person or a ticket instead.
            let frame = if outcome == "ok" {
                act.state.system(&limits, text, now)
            } else {
                act.state.fallback(&limits, text, now)
            };
            act.deliver(&frame, Lane::Reliable);
            act.forward_to_agent();
            act.account();
            act.persist(ctx);
        }));
    }

    /// One client frame.
    fn on_frame(&mut self, frame: ClientFrame, received: Instant, ctx: &mut Context<Self>) {
        let limits = self.limits();
        let now = chrono::Utc::now();
        match frame {
            ClientFrame::Start { .. } | ClientFrame::Resume { .. } => self.error(
                ErrorCode::AlreadyStarted,
                "this connection already carries a session",
                None,
            ),
            ClientFrame::Send { client_id, text } => {
                if let Err(why) =
                    check_message(&client_id, &text, self.deps.settings.max_message_chars)
                {
                    return self.error(ErrorCode::InvalidFrame, why, Some(client_id));
                }
                self.last_customer = Instant::now();
                if self.journal_failing() {
                    metrics::counter!(m::CHAT_BUSY, "what" => "message", "why" => "journal")
                        .increment(1);
                    return self.error(
                        ErrorCode::ServerBusy,
                        "the server cannot store messages just now; the message was not taken: send it again shortly",
                        Some(client_id),
                    );
                }
                if self.over_budget() {
                    metrics::counter!(m::CHAT_BUSY, "what" => "message", "why" => "memory")
                        .increment(1);
                    return self.error(
                        ErrorCode::ServerBusy,
                        "the server is at its memory limit; the message was not taken: send it again shortly",
                        Some(client_id),
                    );
                }
                match self
                    .state
                    .customer_message(&limits, client_id.clone(), text, now)
                {
                    Accepted::New { seq, effects } => {
                        self.deliver(&ServerFrame::Ack { client_id, seq }, Lane::Reliable);
                        metrics::histogram!(m::CHAT_ROUTING)
                            .record(received.elapsed().as_secs_f64());
                        self.run(effects, ctx);
                    }
                    Accepted::Duplicate { seq } => {
                        self.deliver(&ServerFrame::Ack { client_id, seq }, Lane::Reliable)
                    }
                    Accepted::Closed => self.error(
                        ErrorCode::SessionClosed,
                        "the session has ended",
                        Some(client_id),
                    ),
                }
            }
            ClientFrame::Typing { active } => {
                self.last_customer = Instant::now();
                // Only a human watches typing; the AI does not.
                if let Some(agent) = &self.agent {
                    self.deps.router.tell_agent(
                        &agent.id,
                        ToAgent::Typing {
                            session_id: self.state.id,
                            active,
                        },
                    );
                }
            }
            ClientFrame::CreateTicket {
                subject,
                description,
            } => {
                self.last_customer = Instant::now();
                let subject_ok = !subject.trim().is_empty()
                    && subject.chars().count() <= self.deps.max_subject_chars
                    && clean(&subject);
                let description_ok = description.chars().count() <= self.deps.max_description_chars
                    && clean(&description);
                if !subject_ok || !description_ok {
                    let field = if subject_ok { "description" } else { "subject" };
                    return self.error(
                        ErrorCode::InvalidFrame,
                        format!("`{field}` is empty, too long or holds control characters"),
                        None,
                    );
                }
                self.create_ticket(subject, description, Priority::Normal, "customer", ctx);
            }
            ClientFrame::ConfirmAction { action_id, accept } => {
                self.last_customer = Instant::now();
                match self.state.confirm(&limits, action_id, accept, now) {
                    Some(effects) => self.run(effects, ctx),
                    None => self.error(
                        ErrorCode::UnknownAction,
                        format!("no action {action_id} waits for an answer"),
                        None,
                    ),
                }
            }
            ClientFrame::Close {} => {
                let effects = self.state.close(&limits, CloseReason::CustomerClosed);
                self.run(effects, ctx);
            }
            ClientFrame::HandoffRequest { reason } => {
                self.last_customer = Instant::now();
                let reason = reason.unwrap_or_default();
                if reason.chars().count() > MAX_HANDOFF_REASON_CHARS || !clean(&reason) {
                    return self.error(
                        ErrorCode::InvalidFrame,
                        format!(
                            "`reason` must be at most {MAX_HANDOFF_REASON_CHARS} characters without control characters"
                        ),
                        None,
                    );
                }
                let reason = match reason.trim() {
                    "" => "the customer asked for a person".to_string(),
                    r => r.to_string(),
                };
                match self.state.customer_handoff(&limits, reason) {
                    Ok(effects) => {
                        if !effects.is_empty() {
                            metrics::counter!(m::CHAT_HANDOFFS, "stage" => "customer_requested")
                                .increment(1);
                        }
                        self.run(effects, ctx);
                    }
                    Err(state::HandoffRefused::Closed) => {
                        self.error(ErrorCode::SessionClosed, "the session has ended", None)
                    }
                }
            }
            ClientFrame::Ping {} => {
                // A customer frame like any other: the customer is still there.
                self.last_customer = Instant::now();
                self.deliver(&ServerFrame::Pong {}, Lane::Reliable);
            }
        }
    }
}

/// Checks a chat message's `client_id` and text (customers' and agents' alike).
pub(crate) fn check_message(client_id: &str, text: &str, max_chars: usize) -> Result<(), String> {
    if client_id.is_empty()
        || client_id.len() > 64
        || !client_id.chars().all(|c| c.is_ascii_graphic())
    {
        return Err("`client_id` must be 1 to 64 visible ASCII characters".into());
    }
    if text.trim().is_empty() {
        return Err("`text` must not be empty".into());
    }
    if text.chars().count() > max_chars {
        return Err(format!("`text` must be at most {max_chars} characters"));
    }
    if !clean(text) {
        return Err("`text` must not hold control characters (newline and tab are fine)".into());
    }
    Ok(())
}

impl Actor for Session {
    type Context = Context<Self>;

    fn stopped(&mut self, _: &mut Context<Self>) {
        self.deps
            .history_bytes
            .fetch_sub(self.accounted, Ordering::Relaxed);
        self.accounted = 0;
        if self.quiet_stop {
            // Suspended or passivated: the session goes on (in the journal, or in the next
            // process); its queue place and its agent are the journal's to restore.
            return;
        }
        // Whoever routes to this session must not wait for it any longer: a session that stops
        // while waiting was abandoned (closed, timed out or never resumed); one an agent held is
        // released from their hands.
        if self.in_queue {
            self.in_queue = false;
            self.deps.router.tell_queue(ToQueue::Dequeue {
                session_id: self.id(),
                abandoned: !self.shutting_down,
            });
        }
        if let Some(link) = self.agent.take() {
            let frames = self.state.frames_after(link.forwarded);
            if !frames.is_empty() {
                self.deps.router.tell_agent(
                    &link.id,
                    ToAgent::Frames {
                        session_id: self.id(),
                        frames,
                    },
                );
            }
            self.deps.router.tell_agent(
                &link.id,
                ToAgent::Released {
                    session_id: self.id(),
                    reason: crate::chat::agent::protocol::Released::Closed,
                },
            );
            self.deps.router.tell_queue(ToQueue::Released {
                session_id: self.id(),
                agent: link.id,
            });
        }
    }

    fn started(&mut self, ctx: &mut Context<Self>) {
        metrics::counter!(m::CHAT_SESSIONS_STARTED).increment(1);
        // A session lives until it ends or its grace runs out, not until its last address goes
        // (the registry holds only a weak one, and a detached session has no stream). actix keeps
        // an actor with a pending future running; this one is zero-sized.
        ctx.spawn(actix::fut::wrap_future(std::future::pending::<()>()));
        if self.dirty {
            self.persist(ctx);
        }
        // Restored from the journal (or restarted after a panic) with an AI answer owed: ask again,
        // with the same message id.
        if self.ai_started.is_none() {
            if let Some(call) = self.state.pending_ai_call(&self.limits()) {
                tracing::info!(session_id = %self.id(), message_id = %call.message_id, "asking the AI again for an answer owed");
                self.call_ai(call, ctx);
            }
        }
    }
}

impl actix::Supervised for Session {
    fn restarting(&mut self, _: &mut Context<Self>) {
        // The restart dropped every future of the old context, the readers among them.
        self.stale_reader = None;
        // The panic took the connection's reader with it; the state is kept, so the client resumes
        // and is replayed what it missed.
        tracing::warn!(session_id = %self.id(), "chat session restarting from its kept state");
        if let Some(mut att) = self.attached.take() {
            att.link
                .close(close::INTERNAL_ERROR, "session restarted: resume");
        }
        self.detached_at = Some(Instant::now());
        self.ai_started = None;
        // The append under way went with the old context: whether it committed or not, the next
        // one writes the same frames again (by seq, so nothing is doubled).
        self.io = None;
        self.dirty = true;
        self.tasks = 0;
    }
}

impl StreamHandler<Inbound> for Session {
    fn handle(&mut self, item: Inbound, ctx: &mut Context<Self>) {
        let received = Instant::now();
        let Some(att) = self.attached.as_mut() else {
            return;
        };
        att.last_heard = received;
        if let Inbound::Broken { code, reason } = item {
            att.link.close(code, reason);
            tracing::info!(session_id = %self.state.id, code, reason, "connection broke the protocol");
            self.detach();
            return;
        }
        // Every frame counts against the rate, pings and pongs included: a flood of control frames
        // costs the thread as much as text.
        match att.admit() {
            Rate::Within => {}
            Rate::Over => {
                if let Inbound::Text(text) = item {
                    let client_id = protocol::client_id_of(&text);
                    self.error(
                        ErrorCode::RateLimited,
                        "too many frames; slow down",
                        client_id,
                    );
                }
                return;
            }
            Rate::Close => {
                metrics::counter!(m::CHAT_RATE_CLOSED, "stage" => "session").increment(1);
                tracing::info!(session_id = %self.state.id, "connection stayed over the frame rate; closed");
                self.detach();
                return;
            }
        }
        let text = match item {
            Inbound::Text(text) => text,
            Inbound::Alive | Inbound::Broken { .. } => return,
        };
        match protocol::parse(&text) {
            Ok(frame) => {
                metrics::counter!(m::CHAT_FRAMES_IN, "type" => frame.kind()).increment(1);
                self.on_frame(frame, received, ctx);
            }
            Err(e) => {
                metrics::counter!(m::CHAT_FRAMES_IN, "type" => "invalid").increment(1);
                self.error(e.code, e.message, None);
            }
        }
    }

    fn finished(&mut self, _: &mut Context<Self>) {
        // The connection closed: the session waits for a resume.
        if self.attached.take().is_some() {
            self.detached_at = Some(Instant::now());
        }
    }
}

impl Handler<Attach> for Session {
    type Result = ();

    fn handle(&mut self, msg: Attach, ctx: &mut Context<Self>) {
        self.attach(msg.conn.take(), ctx);
        let started = ServerFrame::Started {
            session_id: self.id(),
            resume_token: msg.resume_token,
            seq: self.state.last_seq(),
            customer: self
                .state
                .customer
                .known
                .then(|| self.state.customer.name.clone()),
            agents_online: self.deps.agents_online.load(Ordering::Relaxed),
        };
        // A new session goes into the journal with its first frame (or when its connection goes):
        // an idle one costs no write, and one lost before anything was said loses nothing (its
        // resume is refused and the client starts afresh).
        self.deliver(&started, Lane::Reliable);
        metrics::histogram!(m::CHAT_ROUTING).record(msg.started_at.elapsed().as_secs_f64());
        if let Some(last_seq) = msg.resume_from {
            self.replay(last_seq);
        }
        self.persist(ctx);
    }
}

impl Session {
    fn replay(&mut self, last_seq: u64) {
        match self.state.replay_after(last_seq) {
            Ok(frames) => {
                for frame in &frames {
                    self.deliver(frame, Lane::Reliable);
                }
            }
            Err(ReplayError::Ahead { newest }) => {
                // The client claims frames never sent: its state is not this session's. Nothing is
                // replayed; it may resume again from a seq it has (or start afresh).
                tracing::info!(session_id = %self.id(), last_seq, newest, "resume from a seq never sent; refused");
                metrics::counter!(m::CHAT_RESUMES, "outcome" => "invalid_seq").increment(1);
                self.error(
                    ErrorCode::InvalidSeq,
                    format!("last_seq {last_seq} is past this session's newest seq {newest}"),
                    None,
                );
                if let Some(att) = self.attached.as_mut() {
                    att.link.close(close::RESUME_REFUSED, "last_seq never sent");
                }
                self.detach();
            }
            Err(ReplayError::Lost { oldest_kept }) => {
                tracing::info!(session_id = %self.id(), last_seq, oldest_kept, "resume too late: history lost");
                if let Some(att) = self.attached.as_mut() {
                    att.link
                        .close(close::HISTORY_LOST, "history lost: start a new session");
                }
                self.detach();
            }
        }
    }
}

impl Handler<Resume> for Session {
    type Result = ();

    fn handle(&mut self, msg: Resume, ctx: &mut Context<Self>) {
        if msg.adopted {
            metrics::counter!(m::UPGRADE_ADOPTED, "party" => "customer", "outcome" => "attached")
                .increment(1);
            metrics::histogram!(m::UPGRADE_ADOPT).record(msg.started_at.elapsed().as_secs_f64());
            self.attach(msg.conn.take(), ctx);
            self.replay(msg.last_seq);
            self.dirty = true;
            self.persist(ctx);
            return;
        }
        let token_ok = self.state.token_matches(&msg.resume_token);
        if !token_ok || self.state.is_closed() {
            metrics::counter!(m::CHAT_RESUMES, "outcome" => "refused").increment(1);
            let mut conn = msg.conn.take();
            let _ = conn.link.send(
                ServerFrame::error(ErrorCode::ResumeRefused, "unknown session or wrong token")
                    .to_text(),
                Lane::Reliable,
            );
            conn.link.close(close::RESUME_REFUSED, "resume refused");
            return;
        }
        metrics::counter!(m::CHAT_RESUMES, "outcome" => "resumed").increment(1);
        self.attach(msg.conn.take(), ctx);
        let resumed = ServerFrame::Resumed {
            session_id: self.id(),
            seq: self.state.last_seq(),
        };
        self.deliver(&resumed, Lane::Reliable);
        self.replay(msg.last_seq);
        self.tell_position();
        metrics::histogram!(m::CHAT_ROUTING).record(msg.started_at.elapsed().as_secs_f64());
        // The record says attached again.
        self.dirty = true;
        self.persist(ctx);
    }
}

impl Handler<Tick> for Session {
    type Result = ();

    fn handle(&mut self, _: Tick, ctx: &mut Context<Self>) {
        let s = &self.deps.settings;
        let now = Instant::now();
        if let Some(since) = self.detached_at {
            if now.duration_since(since) >= Duration::from_millis(s.resume_grace_ms) {
                tracing::debug!(session_id = %self.id(), "no resume within the grace period; session ends");
                metrics::counter!(m::CHAT_SESSIONS_CLOSED, "reason" => "not_resumed").increment(1);
                self.finish(durable::Ending::Expire, ctx);
                return;
            }
            let passivate_after = Duration::from_millis(s.passivate_after_ms);
            if now.duration_since(since) >= passivate_after
                && !self.state.needs_actor()
                && self.ai_started.is_none()
                && self.tasks == 0
                && self.io.is_none()
                && self.agent.is_none()
                && !self.in_queue
            {
                tracing::debug!(session_id = %self.id(), "detached and idle; the session lives in the journal until resumed");
                self.finish(durable::Ending::Passivate, ctx);
                return;
            }
        }
        if now.duration_since(self.last_customer) >= Duration::from_millis(s.idle_timeout_ms) {
            let limits = self.limits();
            let effects = self.state.close(&limits, CloseReason::IdleTimeout);
            self.run(effects, ctx);
            return;
        }
        // The registry's `Tick` comes every `min(heartbeat_interval_ms, sweep_interval_ms)`.
        let (interval, timeout) = (
            Duration::from_millis(s.heartbeat_interval_ms),
            Duration::from_millis(s.heartbeat_timeout_ms),
        );
        if let Some(att) = self.attached.as_mut() {
            if att.heartbeat(now, interval, timeout) == Beat::TimedOut {
                tracing::info!(session_id = %self.state.id, "no sign of life from the client; disconnecting it");
                let reader = att.reader;
                ctx.cancel_future(reader);
                self.detach();
            }
        }
    }
}

impl Handler<Suspend> for Session {
    type Result = ();

    fn handle(&mut self, msg: Suspend, ctx: &mut Context<Self>) {
        match (msg.hand_to, self.attached.as_mut()) {
            (Some(hand_to), Some(att)) => {
                att.link.pause();
                self.finish(durable::Ending::HandOver(hand_to), ctx);
            }
            _ => self.finish(durable::Ending::Suspend, ctx),
        }
    }
}

impl Handler<Reannounce> for Session {
    type Result = ();

    fn handle(&mut self, msg: Reannounce, _: &mut Context<Self>) {
        self.reannounce(msg.grace.unwrap_or(self.deps.agent_grace));
    }
}

impl Handler<EndSession> for Session {
    type Result = ();

    fn handle(&mut self, _: EndSession, ctx: &mut Context<Self>) {
        self.shutting_down = true;
        self.end(CloseReason::ServerShutdown, ctx);
    }
}

impl Handler<MovedAway> for Session {
    type Result = ();

    fn handle(&mut self, _: MovedAway, ctx: &mut Context<Self>) {
        if let Some(mut att) = self.attached.take() {
            att.link
                .close(close::REPLACED, "session resumed on another node");
        }
        ctx.stop();
    }
}

impl Handler<Passivate> for Session {
    type Result = ();

    fn handle(&mut self, _: Passivate, ctx: &mut Context<Self>) {
        if let Some(mut att) = self.attached.take() {
            att.link.close(close::GOING_AWAY, "session stopped");
        }
        ctx.stop();
    }
}

impl Handler<Hibernate> for Session {
    type Result = ();

    fn handle(&mut self, _: Hibernate, _: &mut Context<Self>) {
        self.state.shrink();
    }
}

impl Handler<InjectPanic> for Session {
    type Result = ();

    fn handle(&mut self, _: InjectPanic, _: &mut Context<Self>) {
        panic!("injected panic in chat session {}", self.id());
    }
}
