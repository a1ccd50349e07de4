//! The ticket data model: its enums, the ticket itself, its events and comments.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::ids::{EventId, TicketId};
use super::principal::Principal;
use super::status::Status;

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

/// One entry of a ticket's history: who changed what, when. Its JSON names the actor by
/// [`Principal::identity`] (an API key's name, whoever it acts for) and, apart, `on_behalf_of`: the
/// person a key said it acts for, so the audit trail never loses which key made a change.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(from = "EventRecord<String, String, serde_json::Value>")]
pub struct TicketEvent {
    pub event_id: EventId,
    pub ticket_id: TicketId,
    pub kind: EventKind,
    pub actor: Principal,
    pub at: DateTime<Utc>,
    /// The version the ticket reached with this change.
    pub version: u64,
    /// `{"field": {"from": .., "to": ..}}` for updates; the comment for comments.
    pub changes: serde_json::Value,
}

/// [`TicketEvent`] as its JSON has it (the API's history, the journal).
#[derive(Serialize, Deserialize)]
struct EventRecord<A, P, C> {
    event_id: EventId,
    ticket_id: TicketId,
    kind: EventKind,
    actor: A,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    on_behalf_of: Option<P>,
    #[serde(serialize_with = "super::timestamp::serialize")]
    at: DateTime<Utc>,
    version: u64,
    changes: C,
}

impl Serialize for TicketEvent {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        // Borrowed, not cloned: every ticket write encodes its event on the way to the journal.
        EventRecord {
            event_id: self.event_id,
            ticket_id: self.ticket_id,
            kind: self.kind,
            actor: self.actor.identity(),
            on_behalf_of: self.actor.acting_for(),
            at: self.at,
            version: self.version,
            changes: &self.changes,
        }
        .serialize(s)
    }
}

impl From<EventRecord<String, String, serde_json::Value>> for TicketEvent {
    fn from(r: EventRecord<String, String, serde_json::Value>) -> Self {
        Self {
            event_id: r.event_id,
            ticket_id: r.ticket_id,
            kind: r.kind,
            actor: Principal::from_record(&r.actor, r.on_behalf_of),
            at: r.at,
            version: r.version,
            changes: r.changes,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Comment {
    pub id: Uuid,
    pub ticket_id: TicketId,
    pub author: Principal,
    pub body: String,
    #[serde(serialize_with = "super::timestamp::serialize")]
    pub created_at: DateTime<Utc>,
}
