//! The ticket data model: ids, enums, the ticket itself, its events and comments.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::state::Status;

/// A ticket's id: a UUIDv7, so ids sort by creation time (cursor pagination relies on it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TicketId(pub Uuid);

impl TicketId {
    pub fn new() -> Self {
        Self(Uuid::now_v7())
    }
}

impl Default for TicketId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for TicketId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for TicketId {
    type Err = uuid::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s).map(Self)
    }
}

/// Id of one change to a ticket; the idempotency key Django deduplicates on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct EventId(pub Uuid);

impl EventId {
    pub fn new() -> Self {
        Self(Uuid::now_v7())
    }
}

impl Default for EventId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Priority {
    Low,
    Normal,
    High,
    Urgent,
}

impl Priority {
    pub const ALL: [Priority; 4] = [Self::Low, Self::Normal, Self::High, Self::Urgent];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Low => "low",
            Self::Normal => "normal",
            Self::High => "high",
            Self::Urgent => "urgent",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.as_str() == s)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    Api,
    Chat,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Api => "api",
            Self::Chat => "chat",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "api" => Some(Self::Api),
            "chat" => Some(Self::Chat),
            _ => None,
        }
    }
}

/// The full state of one ticket; also the snapshot synced to Django.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ticket {
    pub id: TicketId,
    pub subject: String,
    pub description: String,
    pub status: Status,
    pub priority: Priority,
    pub requester: String,
    pub assignee: Option<String>,
    pub tags: Vec<String>,
    pub source: Source,
    pub chat_session_id: Option<String>,
    #[serde(serialize_with = "super::timestamp::serialize")]
    pub created_at: DateTime<Utc>,
    #[serde(serialize_with = "super::timestamp::serialize")]
    pub updated_at: DateTime<Utc>,
    pub version: u64,
}

/// What kind of change an event records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventKind {
    #[serde(rename = "ticket.created")]
    Created,
    #[serde(rename = "ticket.updated")]
    Updated,
    #[serde(rename = "ticket.status_changed")]
    StatusChanged,
    #[serde(rename = "ticket.commented")]
    Commented,
    #[serde(rename = "ticket.imported")]
    Imported,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Created => "ticket.created",
            Self::Updated => "ticket.updated",
            Self::StatusChanged => "ticket.status_changed",
            Self::Commented => "ticket.commented",
            Self::Imported => "ticket.imported",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            Self::Created,
            Self::Updated,
            Self::StatusChanged,
            Self::Commented,
            Self::Imported,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }
}

/// One entry of a ticket's history: who changed what, when.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TicketEvent {
    pub event_id: EventId,
    pub ticket_id: TicketId,
    pub kind: EventKind,
    pub actor: String,
    #[serde(serialize_with = "super::timestamp::serialize")]
    pub at: DateTime<Utc>,
    /// The version the ticket reached with this change.
    pub version: u64,
    /// `{"field": {"from": .., "to": ..}}` for updates; the comment for comments.
    pub changes: serde_json::Value,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Comment {
    pub id: Uuid,
    pub ticket_id: TicketId,
    pub author: String,
    pub body: String,
    #[serde(serialize_with = "super::timestamp::serialize")]
    pub created_at: DateTime<Utc>,
}
