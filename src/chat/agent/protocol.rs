//! The agents' side of `switchboard.v1` on `/ws/agent` (docs/protocol.md, "Agents"): JSON text
//! frames tagged by `type`, like the customers'. An agent's connection carries many sessions, so
//! frames about one name its `session_id`.
//!
//! Frames that belong to the agent's stream carry a `seq` of that stream (1, 2, 3, … per agent),
//! kept for resume: a session handed to the agent (`session.assigned`, with the chat so far), every
//! numbered frame of that session while the agent holds it (`session.event`), and its release
//! (`session.released`). Presence, queue snapshots, typing, acknowledgements and errors describe
//! the present and carry none; a (re)connecting agent gets them afresh in `agent.ready`.

use serde::{Deserialize, Serialize};

use crate::chat::history::Numbered;
use crate::chat::protocol::{ErrorCode, FrameError, ServerFrame};
pub use crate::chat::routing::vocabulary::{AgentView, AssignedBy, Presence, Released, Waiting};
use crate::domain::ids::{AgentId, SessionId, TicketId};
use crate::domain::ticket::Priority;

/// A frame from an agent.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "type", deny_unknown_fields)]
pub enum AgentFrame {
    /// The connection's first frame (or `agent.resume`): sets presence and capacity, defaults
    /// `online` and `agents.default_capacity`.
    #[serde(rename = "agent.start")]
    Start {
        #[serde(default)]
        presence: Option<Presence>,
        #[serde(default)]
        capacity: Option<u32>,
        #[serde(default)]
        auto_assign: Option<bool>,
    },
    /// Reattaches after a disconnect: every frame of the agent's stream after `last_seq` is
    /// replayed, and the chats held are kept.
    #[serde(rename = "agent.resume")]
    Resume { last_seq: u64 },
    #[serde(rename = "presence.set")]
    SetPresence {
        #[serde(default)]
        presence: Option<Presence>,
        #[serde(default)]
        capacity: Option<u32>,
        #[serde(default)]
        auto_assign: Option<bool>,
    },
    /// Take a waiting session (or one the AI still answers).
    #[serde(rename = "session.join")]
    Join { session_id: SessionId },
    /// Give a session back (to the AI, or to the queue: `agents.on_leave`).
    #[serde(rename = "session.leave")]
    Leave { session_id: SessionId },
    #[serde(rename = "message.send")]
    Send {
        session_id: SessionId,
        client_id: String,
        text: String,
    },
    #[serde(rename = "typing")]
    Typing { session_id: SessionId, active: bool },
    #[serde(rename = "ticket.create")]
    CreateTicket {
        session_id: SessionId,
        subject: String,
        #[serde(default)]
        description: String,
        #[serde(default)]
        priority: Option<Priority>,
    },
    /// End a session held (the customer sees `session.closed`, reason `agent_closed`).
    #[serde(rename = "session.close")]
    Close { session_id: SessionId },
    /// A fresh token for the same agent, before the current one expires.
    #[serde(rename = "auth.refresh")]
    Refresh { token: String },
    /// Older frames of a session held, before `before_seq` (a page within
    /// `agents.history_page_bytes`); answered with `session.history`.
    #[serde(rename = "history.fetch")]
    FetchHistory {
        session_id: SessionId,
        before_seq: u64,
    },
    #[serde(rename = "ping")]
    Ping {},
}

impl AgentFrame {
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Start { .. } => "agent.start",
            Self::Resume { .. } => "agent.resume",
            Self::SetPresence { .. } => "presence.set",
            Self::Join { .. } => "session.join",
            Self::Leave { .. } => "session.leave",
            Self::Send { .. } => "message.send",
            Self::Typing { .. } => "typing",
            Self::CreateTicket { .. } => "ticket.create",
            Self::Close { .. } => "session.close",
            Self::Refresh { .. } => "auth.refresh",
            Self::FetchHistory { .. } => "history.fetch",
            Self::Ping { .. } => "ping",
        }
    }
}

/// A frame to an agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum AgentServerFrame {
    /// Answers `agent.start` / `agent.resume`: who the agent is and the present state. On a resume
    /// the missed frames follow.
    #[serde(rename = "agent.ready")]
    Ready {
        agent_id: AgentId,
        name: String,
        /// The newest seq of this agent's stream.
        seq: u64,
        presence: Presence,
        capacity: u32,
        auto_assign: bool,
        /// Unix seconds at which the token expires (renew with `auth.refresh`).
        token_expires_at: u64,
        agents: Vec<AgentView>,
        queue: Vec<Waiting>,
        sessions: Vec<SessionId>,
    },
    /// Another agent's (or this agent's) presence or load changed.
    #[serde(rename = "agent.presence")]
    Presence { agent: AgentView },
    /// Every agent online, in full: replaces the list a console holds. Sent when the routing queue
    /// was rebuilt (in a cluster: by a new leader, once the nodes told it who is online), so agents
    /// who went with the last leader's node stop showing as online.
    #[serde(rename = "agent.roster")]
    Roster { agents: Vec<AgentView> },
    /// The oldest waiting sessions (at most 50), in order, and how many wait in all; pushed at most
    /// ten times a second while the queue changes.
    #[serde(rename = "queue.updated")]
    Queue { waiting: Vec<Waiting>, total: usize },
    /// A session is now this agent's: the newest part of the chat so far (the customer's frames
    /// with their seqs) within `agents.history_page_bytes`; `has_more` says older frames can be
    /// fetched (`history.fetch`).
    #[serde(rename = "session.assigned")]
    Assigned {
        seq: u64,
        session_id: SessionId,
        customer: String,
        by: AssignedBy,
        history: Vec<ServerFrame>,
        #[serde(default)]
        has_more: bool,
    },
    /// Answers `history.fetch`: the frames before its `before_seq`, oldest first.
    #[serde(rename = "session.history")]
    History {
        session_id: SessionId,
        frames: Vec<ServerFrame>,
        has_more: bool,
    },
    /// One numbered frame of a session held (as the customer sees it, the customer's own messages
    /// included).
    #[serde(rename = "session.event")]
    Event {
        seq: u64,
        session_id: SessionId,
        event: ServerFrame,
    },
    /// The session left this agent's hands.
    #[serde(rename = "session.released")]
    Released {
        seq: u64,
        session_id: SessionId,
        reason: Released,
    },
    /// The customer of a session held is typing.
    #[serde(rename = "session.typing")]
    Typing { session_id: SessionId, active: bool },
    /// An agent message was taken: its seq in the session.
    #[serde(rename = "message.ack")]
    Ack {
        session_id: SessionId,
        client_id: String,
        seq: u64,
    },
    #[serde(rename = "ticket.created")]
    TicketCreated {
        session_id: SessionId,
        ticket_id: TicketId,
    },
    #[serde(rename = "error")]
    Error {
        code: ErrorCode,
        message: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        session_id: Option<SessionId>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        client_id: Option<String>,
    },
    #[serde(rename = "pong")]
    Pong {},
}

impl Numbered for AgentServerFrame {
    fn seq(&self) -> Option<u64> {
        match self {
            Self::Assigned { seq, .. } | Self::Event { seq, .. } | Self::Released { seq, .. } => {
                Some(*seq)
            }
            _ => None,
        }
    }

    fn weight(&self) -> usize {
        match self {
            Self::Assigned {
                history, customer, ..
            } => 96 + customer.len() + history.iter().map(ServerFrame::weight).sum::<usize>(),
            Self::Event { event, .. } => 32 + event.weight(),
            _ => 96,
        }
    }
}

impl AgentServerFrame {
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Ready { .. } => "agent.ready",
            Self::Presence { .. } => "agent.presence",
            Self::Roster { .. } => "agent.roster",
            Self::Queue { .. } => "queue.updated",
            Self::Assigned { .. } => "session.assigned",
            Self::History { .. } => "session.history",
            Self::Event { .. } => "session.event",
            Self::Released { .. } => "session.released",
            Self::Typing { .. } => "session.typing",
            Self::Ack { .. } => "message.ack",
            Self::TicketCreated { .. } => "ticket.created",
            Self::Error { .. } => "error",
            Self::Pong { .. } => "pong",
        }
    }

    pub fn to_text(&self) -> String {
        // Plain data with string keys: serializing cannot fail.
        serde_json::to_string(self).unwrap_or_else(|_| String::from("{}"))
    }

    pub fn error(
        code: ErrorCode,
        message: impl Into<String>,
        session_id: Option<SessionId>,
    ) -> Self {
        Self::Error {
            code,
            message: message.into(),
            session_id,
            client_id: None,
        }
    }
}

const AGENT_TYPES: [&str; 12] = [
    "agent.start",
    "agent.resume",
    "presence.set",
    "session.join",
    "session.leave",
    "message.send",
    "typing",
    "ticket.create",
    "session.close",
    "auth.refresh",
    "history.fetch",
    "ping",
];

/// Reads one text frame from an agent.
pub fn parse(text: &str) -> Result<AgentFrame, FrameError> {
    serde_json::from_str::<AgentFrame>(text)
        .map_err(|e| crate::chat::protocol::classify(text, &e, &AGENT_TYPES))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_frames_parse_by_type_and_bad_ones_are_classified() {
        let id = SessionId::new();
        assert_eq!(
            parse(&format!(r#"{{"type":"session.join","session_id":"{id}"}}"#)).unwrap(),
            AgentFrame::Join { session_id: id }
        );
        assert_eq!(
            parse(r#"{"type":"presence.set","presence":"away"}"#).unwrap(),
            AgentFrame::SetPresence {
                presence: Some(Presence::Away),
                capacity: None,
                auto_assign: None
            }
        );
        let code = |t: &str| parse(t).unwrap_err().code;
        assert_eq!(code("nope"), ErrorCode::MalformedFrame);
        assert_eq!(code(r#"{"type":"session.start"}"#), ErrorCode::UnknownType);
        assert_eq!(
            code(r#"{"type":"session.join","session_id":"x"}"#),
            ErrorCode::InvalidFrame
        );
    }

    #[test]
    fn only_stream_frames_are_numbered() {
        let id = SessionId::new();
        let released = AgentServerFrame::Released {
            seq: 3,
            session_id: id,
            reason: Released::Left,
        };
        assert_eq!(released.seq(), Some(3));
        assert_eq!(
            AgentServerFrame::Typing {
                session_id: id,
                active: true
            }
            .seq(),
            None
        );
        let v: serde_json::Value = serde_json::from_str(&released.to_text()).unwrap();
        assert_eq!(v["type"], "session.released");
        assert_eq!(v["reason"], "left");
    }
}
