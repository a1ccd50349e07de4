//! The words sessions, agents and the queue share, whichever side of a router they are on: plain
//! data, serializable, naming parties by id.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::domain::ids::{AgentId, SessionId};

/// An agent as a session knows them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentRef {
    pub id: AgentId,
    pub name: String,
}

/// Why a session refused what was asked of it; its owner is unchanged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum Refused {
    #[error("the session is already with agent {}", .0.name)]
    AlreadyClaimed(AgentRef),
    #[error("the session is not with this agent")]
    NotOwner,
    #[error("the session has ended")]
    Closed,
}

/// An agent's availability.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Presence {
    /// Takes new chats (automatically, unless the agent picks by hand).
    Online,
    /// Keeps the chats held, takes no new one.
    Away,
    /// Gone: the chats held go back to the queue.
    Offline,
}

impl Presence {
    pub fn label(self) -> &'static str {
        match self {
            Self::Online => "online",
            Self::Away => "away",
            Self::Offline => "offline",
        }
    }
}

/// An agent as other agents see them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentView {
    pub agent_id: AgentId,
    pub name: String,
    pub presence: Presence,
    /// Chats held now.
    pub load: u32,
    pub capacity: u32,
}

/// A waiting session as agents see it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Waiting {
    pub session_id: SessionId,
    pub customer: String,
    pub reason: String,
    #[serde(serialize_with = "crate::domain::timestamp::serialize")]
    pub waiting_since: DateTime<Utc>,
    /// 1 is next.
    pub position: usize,
}

/// Why a session left an agent's hands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Released {
    /// The agent left it.
    Left,
    /// It ended (the customer or the agent closed it, or it timed out).
    Closed,
    /// The agent went offline or was disconnected too long: it went back to the queue.
    Requeued,
}

/// How a session came to an agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AssignedBy {
    /// The queue routed it to this agent.
    Queue,
    /// The agent joined it.
    Join,
}

/// Why an agent cannot take a session (the queue's side of a claim).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum ClaimError {
    #[error("the agent is not signed in")]
    UnknownAgent,
    #[error("the agent is offline")]
    Offline,
    #[error("the agent already holds {0} chats, their capacity")]
    AtCapacity(u32),
    #[error("another agent is taking this session")]
    BeingClaimed,
}
