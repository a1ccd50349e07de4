//! The messages between sessions, agents and the routing queue, and the router they reach each
//! other through. Every message names its parties by id ([`SessionId`], [`AgentId`]), never by an
//! in-process address, and every send goes through a [`ChatRouter`]: the one seam between the
//! chat actors and where they run. [`crate::chat::shards::LocalRouter`] finds a party on its chat
//! thread; a router over a broker finds its node, and the actors do not change.
//!
//! - [`SessionCommand`] → a session: what agents do in it (claim, write, leave, …) and what the
//!   queue tells it (its position, whether agents are online).
//! - [`ToAgent`] → an agent: sessions handed over, their frames and typing, their release, and the
//!   queue's pushes (presence, the waiting list).
//! - [`ToQueue`] → the queue: sessions waiting, leaving the queue, leaving an agent's hands.
//! - [`vocabulary`]: what they share: [`AgentRef`], [`Refused`], [`Presence`], [`AgentView`],
//!   [`Waiting`], [`AssignedBy`], [`Released`].

use std::sync::Arc;

use actix::prelude::*;
use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};

pub mod vocabulary;

pub use self::vocabulary::{
    AgentRef, AgentView, AssignedBy, ClaimError, Presence, Refused, Released, Waiting,
};
use crate::chat::agent::protocol::AgentServerFrame;
use crate::chat::protocol::ServerFrame;
use crate::domain::ids::{AgentId, SessionId, TicketId};
use crate::domain::ticket::Priority;

/// Why a command did not reach a session, or what the session said.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum RouteError {
    /// No live session has this id (it ended, or sleeps in the journal).
    #[error("no live session has this id")]
    NotLive,
    #[error(transparent)]
    Refused(#[from] Refused),
}

/// Where sessions, agents and the queue are, reached by id. Sends never block; a party that is
/// not live drops what is told it (a session asked with [`ChatRouter::ask_session`] answers
/// [`RouteError::NotLive`]).
pub trait ChatRouter: Send + Sync + 'static {
    /// A command for session `id`, and its answer.
    fn ask_session(
        &self,
        id: SessionId,
        command: SessionCommand,
    ) -> BoxFuture<'static, Result<Option<u64>, RouteError>>;
    /// A command for session `id`, without waiting for its answer.
    fn tell_session(&self, id: SessionId, command: SessionCommand);
    /// A command for every live session.
    fn tell_all_sessions(&self, command: SessionCommand);
    /// A message for agent `id`.
    fn tell_agent(&self, id: &AgentId, message: ToAgent);
    /// The same message for each of `ids` (the queue's pushes to every agent): a router over a
    /// broker sends it once per node, not once per agent.
    fn tell_agents(&self, ids: &[AgentId], message: ToAgent) {
        for id in ids {
            self.tell_agent(id, message.clone());
        }
    }
    /// A message for the routing queue.
    fn tell_queue(&self, message: ToQueue);
    /// An agent (re)connected: the queue's present state for them, or why the queue could not
    /// be reached.
    fn agent_up(&self, up: AgentUp) -> BoxFuture<'static, Result<Snapshot, RouteError>>;
    /// An agent takes a waiting session through the queue.
    fn join(&self, join: Join) -> BoxFuture<'static, Result<(), JoinError>>;
    /// Session `id` was just loaded here from the journal: wherever else it still runs, it stops.
    fn taken_over(&self, id: SessionId) {
        let _ = id;
    }
}

/// Agent → queue: the agent is connected (again). Reply: the present state for `agent.ready`.
#[derive(Debug, Clone, Message, Serialize, Deserialize)]
#[rtype(result = "Snapshot")]
pub struct AgentUp {
    pub agent: AgentRef,
    pub presence: Presence,
    pub capacity: u32,
    pub auto_assign: bool,
    /// A new actor for this agent (a first connection, or one on another node or process): it
    /// holds no chat yet, so the chats the queue counts as theirs are handed to it.
    #[serde(default)]
    pub fresh: bool,
    /// The chats this actor holds now. A chat the queue counts as theirs that is not among them
    /// (their actor was replaced while the queue's lead moved, say) is handed to it.
    #[serde(default)]
    pub holds: Vec<SessionId>,
}

/// The queue's present state, as an agent is first shown it.
#[derive(Debug, Clone, Default, MessageResponse, Serialize, Deserialize)]
pub struct Snapshot {
    pub agents: Vec<AgentView>,
    pub queue: Vec<Waiting>,
}

/// Agent → queue: the agent takes this session.
#[derive(Debug, Clone, Message, Serialize, Deserialize)]
#[rtype(result = "Result<(), JoinError>")]
pub struct Join {
    pub agent: AgentRef,
    pub session_id: SessionId,
}

/// Why a claim failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum JoinError {
    #[error(transparent)]
    Queue(#[from] ClaimError),
    #[error(transparent)]
    Session(#[from] Refused),
    #[error("no live session has this id")]
    UnknownSession,
    /// The queue could not be reached (in a cluster: no node leads it just now).
    #[error("the routing queue cannot be reached just now")]
    Unreachable,
}

/// The router as actors hold it.
pub type Router = Arc<dyn ChatRouter>;

/// A session as an agent or the queue holds it: its id, reached through the router.
#[derive(Clone)]
pub struct SessionHandle {
    pub id: SessionId,
    router: Router,
}

impl SessionHandle {
    pub fn new(id: SessionId, router: Router) -> Self {
        Self { id, router }
    }

    /// Tells the session `command` without waiting for its answer.
    pub fn do_send(&self, command: SessionCommand) {
        self.router.tell_session(self.id, command);
    }

    /// Puts `command` to the session; resolves with its answer.
    pub fn send(
        &self,
        command: SessionCommand,
    ) -> BoxFuture<'static, Result<Option<u64>, RouteError>> {
        self.router.ask_session(self.id, command)
    }
}

impl std::fmt::Debug for SessionHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SessionHandle({})", self.id)
    }
}

/// What an agent does in a session.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum AgentOp {
    /// Take the session; on success the session sends [`ToAgent::Assigned`] to the agent.
    Claim {
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
    /// Older frames of the chat, before `before_seq`: the session answers the agent with
    /// [`ToAgent::History`].
    History {
        before_seq: u64,
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
#[derive(Debug, Clone, Message, Serialize, Deserialize)]
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
#[derive(Debug, Clone, Message, Serialize, Deserialize)]
#[rtype(result = "()")]
pub enum ToAgent {
    /// A session is now the agent's (or is again: a repeated join), with the newest page of the
    /// chat so far (`has_more`: older frames can be fetched).
    Assigned {
        session_id: SessionId,
        customer: String,
        by: AssignedBy,
        history: Vec<ServerFrame>,
        has_more: bool,
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
#[derive(Debug, Clone, Message, Serialize, Deserialize)]
#[rtype(result = "()")]
pub enum ToQueue {
    /// The session waits for an agent.
    Enqueue {
        session_id: SessionId,
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
        agent: AgentRef,
        grace: std::time::Duration,
    },
    /// A live session in `agent`'s hands, told to a queue that does not know it (led anew, or the
    /// session moved to another node): the agent's actor still holds it, so nothing is handed to
    /// them again. If they are not connected within `grace`, it is requeued.
    Holding {
        session_id: SessionId,
        agent: AgentRef,
        grace: std::time::Duration,
    },
    /// An agent's presence, capacity or auto-assign changed.
    AgentStatus {
        agent: AgentRef,
        presence: Presence,
        capacity: u32,
        auto_assign: bool,
    },
    /// The agent is gone for good (their chats were requeued by their sessions).
    AgentGone { agent: AgentId },
    /// The agent vanished with their node: their chats go back to the queue, and they offline.
    AgentLost { agent: AgentId },
    /// Tell every agent who is online, in full (`agent.roster`): the queue was rebuilt, and a
    /// console may still show agents who went with the last leader's node.
    PushRoster,
    /// Forget every waiting session and agent: another node leads the queue now, or this node
    /// starts leading it and the others tell it again what waits and who is online.
    Reset,
}
