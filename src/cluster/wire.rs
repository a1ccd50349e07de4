//! What nodes say to each other over the broker, and where: one [`Wire`] message per NATS
//! message, as JSON (readable with `nats sub 'sb.>'`), on a subject that names its addressee.
//!
//! - `sb.node.<node>`: to one node: a command for a session it owns, a node's agent moved away.
//! - `sb.agent.<hex of the agent id>`: to an agent, wherever they are connected.
//! - `sb.queue` and `sb.queue.ask`: to the node leading the routing queue.
//! - `sb.all`: to every node: a command for every session, a session taken over, a new leader.

use serde::{Deserialize, Serialize};

use crate::chat::routing::{AgentUp, Join, SessionCommand, ToAgent, ToQueue};
use crate::domain::ids::{AgentId, SessionId};

/// One message between nodes; `from` is the sending node.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Envelope {
    pub from: String,
    pub wire: Wire,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Wire {
    /// To the node owning session `id`; `ask`: a request, answered with a [`crate::chat::routing::RouteError`]
    /// result. `forwarded`: already passed on once by a node that no longer owned it.
    Session {
        id: SessionId,
        command: SessionCommand,
        ask: bool,
        forwarded: bool,
    },
    /// To every node: a command for every live session.
    AllSessions { command: SessionCommand },
    /// To an agent.
    Agent { id: AgentId, message: ToAgent },
    /// To the node some agents are connected to: the same message for each of them.
    Agents { ids: Vec<AgentId>, message: ToAgent },
    /// To the queue's leader.
    Queue { message: ToQueue },
    /// To the queue's leader, a request: an agent is up (answered with a snapshot).
    AgentUp { up: AgentUp },
    /// To the queue's leader, a request: an agent takes a session.
    Join { join: Join },
    /// To every node: session `id` is now `from`'s; a node still running it stops it quietly.
    TakenOver { id: SessionId },
    /// To the node an agent was connected to: they are connected to `from` now; the actor left
    /// behind stops without giving their chats back.
    AgentMoved { id: AgentId },
    /// To every node: `from` leads the queue now; tell it what waits and who is online.
    Rebuild,
}

impl Wire {
    /// A label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Session { ask: true, .. } => "ask_session",
            Self::Session { .. } => "session",
            Self::AllSessions { .. } => "all_sessions",
            Self::Agent { .. } => "agent",
            Self::Agents { .. } => "agents",
            Self::Queue { .. } => "queue",
            Self::AgentUp { .. } => "agent_up",
            Self::Join { .. } => "join",
            Self::TakenOver { .. } => "taken_over",
            Self::AgentMoved { .. } => "agent_moved",
            Self::Rebuild => "rebuild",
        }
    }
}

pub const ALL: &str = "sb.all";
pub const QUEUE: &str = "sb.queue";
pub const QUEUE_ASK: &str = "sb.queue.ask";

pub fn node_subject(node: &str) -> String {
    format!("sb.node.{node}")
}

/// An agent's subject: their id in hex, as ids may hold characters a subject cannot.
pub fn agent_subject(id: &AgentId) -> String {
    use std::fmt::Write;
    let mut subject = String::with_capacity(9 + 2 * id.as_str().len());
    subject.push_str("sb.agent.");
    for b in id.as_str().bytes() {
        let _ = write!(subject, "{b:02x}");
    }
    subject
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_agent_subject_is_one_token_whatever_the_id() {
        let id = AgentId::from("ann.b *>x");
        let subject = agent_subject(&id);
        let token = subject.strip_prefix("sb.agent.").expect("prefix");
        assert!(token.chars().all(|c| c.is_ascii_hexdigit()), "{subject}");
    }

    #[test]
    fn an_envelope_reads_back_as_written() {
        let env = Envelope {
            from: "node-1".into(),
            wire: Wire::Session {
                id: SessionId(uuid::Uuid::nil()),
                command: SessionCommand::AgentsOnline(true),
                ask: true,
                forwarded: false,
            },
        };
        let text = serde_json::to_vec(&env).expect("serializes");
        let back: Envelope = serde_json::from_slice(&text).expect("reads back");
        assert_eq!(back.from, "node-1");
        assert_eq!(back.wire.kind(), "ask_session");
    }
}
