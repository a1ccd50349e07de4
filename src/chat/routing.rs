//! The messages between sessions, agents and the routing queue, and the handles they reach each
//! other by. Each side holds the others only as [`Recipient`]s of these messages, so a session
//! knows no agent type and the queue neither: the seam a broker-backed router can take over when
//! sessions and agents live in different processes.
//!
//! - [`SessionCommand`] → a session: what agents do in it (claim, write, leave, …) and what the
//!   queue tells it (its position, whether agents are online).
//! - [`ToAgent`] → an agent: sessions handed over, their frames and typing, their release, and the
//!   queue's pushes (presence, the waiting list).
//! - [`ToQueue`] → the queue: sessions waiting, leaving the queue, leaving an agent's hands.

use actix::prelude::*;

use crate::chat::agent::protocol::{AgentServerFrame, AssignedBy, Released};
use crate::chat::protocol::ServerFrame;
use crate::chat::session::owner::{AgentRef, Refused};
use crate::domain::ids::{AgentId, SessionId, TicketId};
use crate::domain::ticket::Priority;

/// A session, as agents and the queue reach it.
pub type SessionHandle = Recipient<SessionCommand>;
/// An agent, as sessions and the queue reach them.
pub type AgentHandle = Recipient<ToAgent>;

/// What an agent does in a session.
#[derive(Debug, Clone)]
pub enum AgentOp {
    /// Take the session; on success the session sends [`ToAgent::Assigned`] to `to`.
    Claim {
        to: AgentHandle,
        by: AssignedBy,
    },
    /// A message to the customer. Reply: its seq in the session.
    Send {
        client_id: String,
        text: String,
    },
    Typing {
        active: bool,
    },
    /// Give the session back (`agents.on_leave`).
    Leave,
    /// The agent is gone (offline, or disconnected past the grace): requeue the session.
    Lost,
    CreateTicket {
        subject: String,
        description: String,
        priority: Priority,
    },
    /// End the session.
    Close,
    /// Older frames of the chat, before `before_seq`: the session answers `to` with
    /// [`ToAgent::History`].
    History {
        before_seq: u64,
        to: AgentHandle,
    },
}

impl AgentOp {
    pub fn label(&self) -> &'static str {
        match self {
            Self::Claim { .. } => "claim",
            Self::Send { .. } => "send",
            Self::Typing { .. } => "typing",
            Self::Leave => "leave",
            Self::Lost => "lost",
            Self::CreateTicket { .. } => "ticket",
            Self::Close => "close",
            Self::History { .. } => "history",
        }
    }
}

/// To a session. Reply: for an agent's message its seq, otherwise `None`; or why it was refused.
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<Option<u64>, Refused>")]
pub enum SessionCommand {
    ByAgent {
        agent: AgentRef,
        op: AgentOp,
    },
    /// While queued: the customer's place (1 is next).
    QueuePosition {
        position: usize,
        agents_online: bool,
    },
    /// Whether any agent is online changed.
    AgentsOnline(bool),
}

/// To an agent.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub enum ToAgent {
    /// A session is now the agent's (or is again: a repeated join), with the newest page of the
    /// chat so far (`has_more`: older frames can be fetched); `session` is how to act in it.
    Assigned {
        session_id: SessionId,
        customer: String,
        by: AssignedBy,
        history: Vec<ServerFrame>,
        has_more: bool,
        session: SessionHandle,
    },
    /// A page of older frames the agent asked for.
    History {
        session_id: SessionId,
        frames: Vec<ServerFrame>,
        has_more: bool,
    },
    /// Numbered frames of a session the agent holds, in order.
    Frames {
        session_id: SessionId,
        frames: Vec<ServerFrame>,
    },
    /// The customer is typing.
    Typing { session_id: SessionId, active: bool },
    /// The session left the agent's hands.
    Released {
        session_id: SessionId,
        reason: Released,
    },
    /// A ticket the agent asked for was created, or could not be (`None`).
    Ticket {
        session_id: SessionId,
        ticket_id: Option<TicketId>,
    },
    /// Something for the agent's connection only (presence, the queue).
    Push(AgentServerFrame),
}

/// To the routing queue.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub enum ToQueue {
    /// The session waits for an agent.
    Enqueue {
        session_id: SessionId,
        session: SessionHandle,
        customer: String,
        reason: String,
        /// When it started waiting: the queue is in this order, whichever chat thread (or, after
        /// a restart, whichever registry) told it first.
        since: chrono::DateTime<chrono::Utc>,
    },
    /// The session stopped waiting without an agent (`abandoned`: the customer left or it timed out).
    Dequeue {
        session_id: SessionId,
        abandoned: bool,
    },
    /// The agent no longer holds the session.
    Released {
        session_id: SessionId,
        agent: AgentId,
    },
    /// A session read back from the journal in `agent`'s hands: it is theirs again when they
    /// reconnect within `grace`; otherwise it is requeued.
    Held {
        session_id: SessionId,
        session: SessionHandle,
        agent: AgentRef,
        grace: std::time::Duration,
    },
}
