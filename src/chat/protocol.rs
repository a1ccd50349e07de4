//! The live-chat wire protocol, `switchboard.v1` (docs/protocol.md is its specification): JSON text
//! frames tagged by `type`, parsed once at the edge into a [`ClientFrame`] and written from a
//! [`ServerFrame`]. Pure data and parsing; no I/O.
//!
//! Every server frame that belongs to a session's history carries a `seq` (1, 2, 3, … per session):
//! a reconnecting client names the last one it saw and gets every later one again, in order.
//! Acknowledgements, typing, errors and pongs are about the connection, not the history, and carry
//! none (an acknowledgement names the `seq` its message got).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::domain::ids::{SessionId, TicketId};

/// The WebSocket subprotocol a client must offer (`Sec-WebSocket-Protocol`).
pub const SUBPROTOCOL: &str = "switchboard.v1";

/// A frame from a client, as parsed at the edge.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "type", deny_unknown_fields)]
pub enum ClientFrame {
    /// Opens a new session; `token` (a JWT) identifies a known customer, none is an anonymous
    /// visitor. Must be a connection's first frame, unless it resumes.
    #[serde(rename = "session.start")]
    Start {
        #[serde(default)]
        token: Option<String>,
    },
    /// Reattaches to a session after a disconnect; the server replays every frame after `last_seq`.
    #[serde(rename = "session.resume")]
    Resume {
        session_id: SessionId,
        resume_token: String,
        last_seq: u64,
    },
    /// A customer message. `client_id` makes it idempotent: the same id twice is applied once.
    #[serde(rename = "message.send")]
    Send { client_id: String, text: String },
    /// The customer started or stopped typing.
    #[serde(rename = "typing")]
    Typing { active: bool },
    /// The customer asks for a ticket.
    #[serde(rename = "ticket.create")]
    CreateTicket {
        subject: String,
        #[serde(default)]
        description: String,
    },
    /// The customer accepts or declines an action the AI proposed.
    #[serde(rename = "action.confirm")]
    ConfirmAction { action_id: Uuid, accept: bool },
    /// The customer ends the session.
    #[serde(rename = "session.close")]
    Close {},
    /// The customer asks for a human agent: the chat joins the routing queue, as when the AI hands
    /// it off. Asked again while queued or held by an agent, it changes nothing.
    #[serde(rename = "handoff.request")]
    HandoffRequest {
        #[serde(default)]
        reason: Option<String>,
    },
    /// Application-level keepalive for clients that cannot see WebSocket pings.
    #[serde(rename = "ping")]
    Ping {},
}

/// What a customer can do next when the AI or a service fails them, offered in the failure's
/// `message` as the frame `type` to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Offer {
    /// Ask for a human agent.
    #[serde(rename = "handoff.request")]
    Handoff,
    /// Open a ticket.
    #[serde(rename = "ticket.create")]
    Ticket,
}

/// Who wrote a chat message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Author {
    Customer,
    Ai,
    Agent,
    System,
}

/// An action the AI proposed that waits for the customer's word.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ProposedAction {
    CreateTicket { subject: String },
    ManageService { service: String, operation: String },
    Handoff { reason: String },
}

/// A frame to a client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum ServerFrame {
    #[serde(rename = "session.started")]
    Started {
        session_id: SessionId,
        resume_token: String,
        /// The session's newest seq (0 for a new session).
        seq: u64,
        /// The customer's display name when a token identified them.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        customer: Option<String>,
        /// Whether any human agent is online now (`presence` frames follow its changes).
        #[serde(default)]
        agents_online: bool,
    },
    /// A resume was accepted; replayed frames (seq after `last_seq`) follow, then the live stream.
    #[serde(rename = "session.resumed")]
    Resumed {
        session_id: SessionId,
        /// The session's newest seq: the client has everything once it has seen this one.
        seq: u64,
    },
    #[serde(rename = "message.ack")]
    Ack { client_id: String, seq: u64 },
    #[serde(rename = "message")]
    Message {
        seq: u64,
        from: Author,
        text: String,
        #[serde(serialize_with = "crate::domain::timestamp::serialize")]
        at: DateTime<Utc>,
        /// A customer message's own id, so a client on another device can match it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        client_id: Option<String>,
        /// An agent's display name.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
        /// On a system message telling of a failure: what the customer may do instead.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        offers: Vec<Offer>,
    },
    #[serde(rename = "typing")]
    Typing { from: Author, active: bool },
    /// The AI proposes an action that runs only once the customer accepts (`action.confirm`).
    #[serde(rename = "action.proposed")]
    ActionProposed {
        seq: u64,
        action_id: Uuid,
        action: ProposedAction,
        /// Shown to the customer: what will happen.
        summary: String,
    },
    #[serde(rename = "ticket.created")]
    TicketCreated { seq: u64, ticket_id: TicketId },
    /// The session waits for a human agent.
    #[serde(rename = "session.queued")]
    Queued { seq: u64, reason: String },
    /// A human agent took the chat; their messages follow as `message` from `agent`.
    #[serde(rename = "agent.joined")]
    AgentJoined { seq: u64, name: String },
    /// The agent left the chat (the AI answers again, or the session waits for another agent).
    #[serde(rename = "agent.left")]
    AgentLeft { seq: u64, name: String },
    /// While queued: the session's place in the queue (1 is next), sent whenever it changes.
    #[serde(rename = "queue.position")]
    QueuePosition {
        position: usize,
        agents_online: bool,
    },
    /// Whether any human agent is online, sent whenever that changes.
    #[serde(rename = "presence")]
    Presence { agents_online: bool },
    /// The session ended; the connection closes after this frame.
    #[serde(rename = "session.closed")]
    Closed { seq: u64, reason: CloseReason },
    #[serde(rename = "error")]
    Error {
        code: ErrorCode,
        message: String,
        /// The `client_id` of the `message.send` it answers, when it answers one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        client_id: Option<String>,
    },
    #[serde(rename = "pong")]
    Pong {},
}

impl ServerFrame {
    /// The frame's place in its session's history, if it has one.
    pub fn seq(&self) -> Option<u64> {
        match self {
            Self::Message { seq, .. }
            | Self::ActionProposed { seq, .. }
            | Self::TicketCreated { seq, .. }
            | Self::Queued { seq, .. }
            | Self::AgentJoined { seq, .. }
            | Self::AgentLeft { seq, .. }
            | Self::Closed { seq, .. } => Some(*seq),
            _ => None,
        }
    }

    /// About the bytes the frame holds in memory: its strings and a fixed part, for history budgets.
    pub fn weight(&self) -> usize {
        const FIXED: usize = 96;
        FIXED
            + match self {
                Self::Message {
                    text,
                    client_id,
                    name,
                    ..
                } => {
                    text.len()
                        + client_id.as_ref().map_or(0, String::len)
                        + name.as_ref().map_or(0, String::len)
                }
                Self::ActionProposed {
                    action, summary, ..
                } => {
                    summary.len()
                        + match action {
                            ProposedAction::CreateTicket { subject } => subject.len(),
                            ProposedAction::ManageService { service, operation } => {
                                service.len() + operation.len()
                            }
                            ProposedAction::Handoff { reason } => reason.len(),
                        }
                }
                Self::Queued { reason, .. } => reason.len(),
                Self::AgentJoined { name, .. } | Self::AgentLeft { name, .. } => name.len(),
                Self::Error { message, .. } => message.len(),
                _ => 0,
            }
    }

    /// The frame's `type`, for metrics labels.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Started { .. } => "session.started",
            Self::Resumed { .. } => "session.resumed",
            Self::Ack { .. } => "message.ack",
            Self::Message { .. } => "message",
            Self::Typing { .. } => "typing",
            Self::ActionProposed { .. } => "action.proposed",
            Self::TicketCreated { .. } => "ticket.created",
            Self::Queued { .. } => "session.queued",
            Self::AgentJoined { .. } => "agent.joined",
            Self::AgentLeft { .. } => "agent.left",
            Self::QueuePosition { .. } => "queue.position",
            Self::Presence { .. } => "presence",
            Self::Closed { .. } => "session.closed",
            Self::Error { .. } => "error",
            Self::Pong { .. } => "pong",
        }
    }

    /// The JSON text of the frame.
    pub fn to_text(&self) -> String {
        // A ServerFrame is plain data with string keys: serializing it cannot fail.
        serde_json::to_string(self).unwrap_or_else(|_| String::from("{}"))
    }

    pub fn error(code: ErrorCode, message: impl Into<String>) -> Self {
        Self::Error {
            code,
            message: message.into(),
            client_id: None,
        }
    }
}

impl ClientFrame {
    /// The frame's `type`, for metrics labels.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Start { .. } => "session.start",
            Self::Resume { .. } => "session.resume",
            Self::Send { .. } => "message.send",
            Self::Typing { .. } => "typing",
            Self::CreateTicket { .. } => "ticket.create",
            Self::ConfirmAction { .. } => "action.confirm",
            Self::Close { .. } => "session.close",
            Self::HandoffRequest { .. } => "handoff.request",
            Self::Ping { .. } => "ping",
        }
    }
}

/// Why a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CloseReason {
    /// The customer sent `session.close`.
    CustomerClosed,
    /// No message for `chat.session_idle_timeout_ms`.
    IdleTimeout,
    /// The server is shutting down.
    ServerShutdown,
    /// The agent holding the session ended it.
    AgentClosed,
}

/// The `code` of an `error` frame; docs/protocol.md lists when each is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Not JSON, or not a JSON object with a string `type`.
    MalformedFrame,
    /// A `type` this protocol version does not know.
    UnknownType,
    /// A known `type` with missing, extra or invalid fields.
    InvalidFrame,
    /// The frame needs a session and none is started on this connection (or it started one twice).
    NoSession,
    AlreadyStarted,
    /// The token in `session.start` is not valid.
    Unauthorized,
    /// `session.resume` named an unknown session or a wrong token.
    ResumeRefused,
    /// Too many frames: over `chat.rate_per_sec` with a burst of `chat.rate_burst`.
    RateLimited,
    /// A message arrived after the session closed.
    SessionClosed,
    /// `action.confirm` named no pending action.
    UnknownAction,
    /// The ticket could not be created now; the customer may try again.
    TicketFailed,
    /// Agents: another agent holds the session.
    AlreadyClaimed,
    /// Agents: the frame names a session this agent does not hold.
    NotJoined,
    /// Agents: joining would exceed the agent's capacity.
    AtCapacity,
    /// Agents: no live session has this id.
    UnknownSession,
    /// Agents: the token expired; the connection closes (4011). Reconnect with a fresh token.
    TokenExpired,
    /// The server is at a process-wide limit (`sessions.max_total_history_bytes`, or
    /// `sessions.max_sessions` for a new session): nothing was applied; try again later.
    ServerBusy,
    /// More tickets from this chat than `sessions.tickets_per_hour` allows.
    TicketLimit,
    /// `session.resume` named a `last_seq` the session never sent.
    InvalidSeq,
}

impl ErrorCode {
    /// The code as sent, for metrics labels.
    pub fn label(self) -> &'static str {
        match self {
            Self::MalformedFrame => "malformed_frame",
            Self::UnknownType => "unknown_type",
            Self::InvalidFrame => "invalid_frame",
            Self::NoSession => "no_session",
            Self::AlreadyStarted => "already_started",
            Self::Unauthorized => "unauthorized",
            Self::ResumeRefused => "resume_refused",
            Self::RateLimited => "rate_limited",
            Self::SessionClosed => "session_closed",
            Self::UnknownAction => "unknown_action",
            Self::TicketFailed => "ticket_failed",
            Self::AlreadyClaimed => "already_claimed",
            Self::NotJoined => "not_joined",
            Self::AtCapacity => "at_capacity",
            Self::UnknownSession => "unknown_session",
            Self::TokenExpired => "token_expired",
            Self::ServerBusy => "server_busy",
            Self::TicketLimit => "ticket_limit",
            Self::InvalidSeq => "invalid_seq",
        }
    }
}

/// Why a text frame could not be read as a [`ClientFrame`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct FrameError {
    pub code: ErrorCode,
    pub message: String,
}

impl FrameError {
    /// The `error` frame that answers it.
    pub fn to_frame(&self) -> ServerFrame {
        ServerFrame::error(self.code, self.message.clone())
    }
}

/// The `type` values clients may send.
const CLIENT_TYPES: [&str; 9] = [
    "session.start",
    "session.resume",
    "message.send",
    "typing",
    "ticket.create",
    "action.confirm",
    "session.close",
    "handoff.request",
    "ping",
];

/// Reads one text frame, classifying what is wrong with it when it is not a valid client frame.
pub fn parse(text: &str) -> Result<ClientFrame, FrameError> {
    match serde_json::from_str::<ClientFrame>(text) {
        Ok(frame) => Ok(frame),
        Err(e) => Err(classify(text, &e, &CLIENT_TYPES)),
    }
}

/// The `client_id` of a frame, read without parsing the rest (for an error that answers it).
pub fn client_id_of(text: &str) -> Option<String> {
    #[derive(Deserialize)]
    struct Id {
        client_id: Option<String>,
    }
    serde_json::from_str::<Id>(text)
        .ok()
        .and_then(|i| i.client_id)
        .filter(|c| c.len() <= 64)
}

/// Says precisely what is wrong with a frame that did not parse (only a bad frame pays for this
/// second parse); `known` are the `type`s the reader accepts.
pub(crate) fn classify(text: &str, e: &serde_json::Error, known: &[&str]) -> FrameError {
    let fail = |code, message: String| FrameError { code, message };
    let value: serde_json::Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(_) => return fail(ErrorCode::MalformedFrame, "the frame is not JSON".into()),
    };
    let Some(kind) = value.as_object().and_then(|o| o.get("type")) else {
        return fail(
            ErrorCode::MalformedFrame,
            "a frame is a JSON object with a string `type`".into(),
        );
    };
    let Some(kind) = kind.as_str() else {
        return fail(ErrorCode::MalformedFrame, "`type` must be a string".into());
    };
    if !known.contains(&kind) {
        return fail(
            ErrorCode::UnknownType,
            format!("unknown frame type `{kind}`"),
        );
    }
    fail(
        ErrorCode::InvalidFrame,
        format!("invalid `{kind}` frame: {e}"),
    )
}

/// WebSocket close codes this server sends (RFC 6455 section 7.4, and 4000–4999 for its own).
pub mod close {
    /// The session ended (`session.close`, idle timeout).
    pub const NORMAL: u16 = 1000;
    /// The server is shutting down; resume on another connection.
    pub const GOING_AWAY: u16 = 1001;
    /// A frame broke the WebSocket protocol (bad masking, a reserved opcode, …).
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// A binary frame: this protocol is text only.
    pub const UNSUPPORTED_DATA: u16 = 1003;
    /// A text frame that is not UTF-8.
    pub const INVALID_PAYLOAD: u16 = 1007;
    /// A policy was broken: no session started within the handshake timeout, or too many protocol
    /// errors.
    pub const POLICY_VIOLATION: u16 = 1008;
    /// A frame over `chat.max_frame_bytes`.
    pub const MESSAGE_TOO_BIG: u16 = 1009;
    /// A new session at capacity (`sessions.max_sessions`, or the process-wide history budget):
    /// try again later. Resumes are admitted at capacity.
    pub const TRY_AGAIN_LATER: u16 = 1013;
    /// The server failed; resume.
    pub const INTERNAL_ERROR: u16 = 1011;
    /// The server is restarting or being upgraded: resume (at once, then with backoff); the
    /// session and everything acknowledged in it are kept.
    pub const SERVICE_RESTART: u16 = 1012;
    /// No pong within `chat.heartbeat_timeout_ms`.
    pub const HEARTBEAT_TIMEOUT: u16 = 4000;
    /// The client did not read its frames fast enough (its outbound queue reached
    /// `chat.outbound_queue`); the session survives: resume.
    pub const SLOW_CONSUMER: u16 = 4008;
    /// The session was resumed on another connection; this one is no longer attached.
    pub const REPLACED: u16 = 4009;
    /// `session.resume` was refused (unknown session or wrong token).
    pub const RESUME_REFUSED: u16 = 4003;
    /// The client resumed from a seq older than the session's kept history: frames would be
    /// missing. Start a new session.
    pub const HISTORY_LOST: u16 = 4010;
    /// An agent's token expired; reconnect with a fresh one (and resume).
    pub const TOKEN_EXPIRED: u16 = 4011;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_frames_parse_by_type() {
        assert_eq!(
            parse(r#"{"type":"message.send","client_id":"c1","text":"hi"}"#).unwrap(),
            ClientFrame::Send {
                client_id: "c1".into(),
                text: "hi".into()
            }
        );
        assert_eq!(
            parse(r#"{"type":"session.start"}"#).unwrap(),
            ClientFrame::Start { token: None }
        );
        assert_eq!(
            parse(r#"{"type":"session.close"}"#).unwrap(),
            ClientFrame::Close {}
        );
    }

    #[test]
    fn bad_frames_are_classified() {
        let code = |t: &str| parse(t).unwrap_err().code;
        assert_eq!(code("not json"), ErrorCode::MalformedFrame);
        assert_eq!(code("[1,2]"), ErrorCode::MalformedFrame);
        assert_eq!(code(r#"{"type":7}"#), ErrorCode::MalformedFrame);
        assert_eq!(code(r#"{"type":"launch.rocket"}"#), ErrorCode::UnknownType);
        assert_eq!(code(r#"{"type":"message.send"}"#), ErrorCode::InvalidFrame);
        assert_eq!(
            code(r#"{"type":"typing","active":true,"extra":1}"#),
            ErrorCode::InvalidFrame
        );
        let e = parse(r#"{"type":"message.send","text":"x"}"#).unwrap_err();
        assert!(e.message.contains("client_id"), "{}", e.message);
    }

    #[test]
    fn server_frames_carry_their_type_and_seq() {
        let f = ServerFrame::Ack {
            client_id: "c1".into(),
            seq: 3,
        };
        let v: serde_json::Value = serde_json::from_str(&f.to_text()).unwrap();
        assert_eq!(v["type"], "message.ack");
        assert_eq!(v["seq"], 3);
        assert_eq!(f.seq(), None, "an ack is not part of the history");
        let m = ServerFrame::Message {
            seq: 4,
            from: Author::Ai,
            text: "hello".into(),
            at: Utc::now(),
            client_id: None,
            name: None,
            offers: Vec::new(),
        };
        assert_eq!(m.seq(), Some(4));
        let v: serde_json::Value = serde_json::from_str(&m.to_text()).unwrap();
        assert_eq!(v["from"], "ai");
        assert!(v.get("client_id").is_none());
        let back: ServerFrame = serde_json::from_str(&m.to_text()).unwrap();
        assert_eq!(back.seq(), Some(4));
    }
}
