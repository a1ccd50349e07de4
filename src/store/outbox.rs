//! The outbox seam: every Django call that must not be lost waits here, durably, until the bridge
//! has delivered it or moved it to the dead letters.
//!
//! [`Outbox`] is what the bridge needs of storage, apart from [`super::TicketStore`]: ticket syncs
//! enter it in the same transaction as the ticket change they describe, and any other record (a
//! ticket created from a chat, say) through [`Outbox::enqueue`]. Records are typed
//! ([`OutboxRecord`]), so each reaches its own Django endpoint.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};

use super::StoreResult;
use crate::domain::chat::TranscriptLine;
use crate::domain::ids::{AgentId, EventId, RequestId, SessionId, TicketId};
use crate::domain::ticket::{Comment, EventKind, Priority, Ticket};

/// One change bound for Django, as stored in the outbox: the ticket's snapshot after the change and,
/// for comments, the comment itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SyncRecord {
    pub event_id: EventId,
    pub ticket_id: TicketId,
    pub version: u64,
    pub kind: EventKind,
    #[serde(serialize_with = "crate::domain::timestamp::serialize")]
    pub occurred_at: DateTime<Utc>,
    pub ticket: Ticket,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<Comment>,
    /// The request that caused the change, sent on as `X-Request-Id` context.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<RequestId>,
    /// The change moved the status along with other fields (its `kind` is then `updated`): Django
    /// is told `ticket.status_changed` too.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub status_changed: bool,
}

/// A chat escalated into a ticket, bound for `POST /api/livechat/tickets/create/` (docs/django-api.md
/// 3.2). The ticket itself is created locally first; `ticket_id` is Django's idempotency key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatTicketRecord {
    pub session_id: SessionId,
    pub ticket_id: TicketId,
    pub subject: String,
    pub description: String,
    pub priority: Priority,
    pub requester: String,
    pub transcript: Vec<TranscriptLine>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<RequestId>,
}

/// Which step of an AI-to-human handoff a [`HandoffRecord`] reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum HandoffEvent {
    /// The chat waits for a human (the AI handed off, or its agent left or dropped).
    #[serde(rename = "handoff_requested")]
    Requested,
    /// An agent took the chat.
    #[serde(rename = "handoff_accepted")]
    Accepted,
}

/// A handoff step, bound for `POST /api/livechat/handoffs/` (docs/django-api.md 3.4);
/// `handoff_id` is Django's idempotency key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HandoffRecord {
    pub handoff_id: EventId,
    pub session_id: SessionId,
    pub event: HandoffEvent,
    /// Why the chat waits (requested), or how the agent came to it (`queue` or `join`).
    pub reason: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<AgentId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_name: Option<String>,
    pub customer_id: String,
    pub customer_name: String,
    /// Milliseconds, as the Django contract has it (the record is the body sent).
    #[serde(serialize_with = "crate::domain::timestamp::serialize_millis")]
    pub at: DateTime<Utc>,
    pub transcript: Vec<TranscriptLine>,
}

/// A Django call that must not be lost, as the outbox keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
// Ticket syncs are nearly every record: boxing them would cost an allocation per entry read.
#[allow(clippy::large_enum_variant)]
pub enum OutboxRecord {
    /// A ticket change, written by [`super::TicketStore`] in the transaction of the change itself.
    TicketSync(SyncRecord),
    /// A ticket created from a chat, written through [`Outbox::enqueue`].
    ChatTicket(ChatTicketRecord),
    /// A step of a chat's handoff to a human, written through [`Outbox::enqueue`].
    Handoff(HandoffRecord),
}

impl OutboxRecord {
    /// The record's kind, for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::TicketSync(_) => "ticket_sync",
            Self::ChatTicket(_) => "chat_ticket",
            Self::Handoff(_) => "handoff",
        }
    }

    /// The ticket the record is about, if it is about one.
    pub fn ticket_id(&self) -> Option<TicketId> {
        match self {
            Self::TicketSync(r) => Some(r.ticket_id),
            Self::ChatTicket(r) => Some(r.ticket_id),
            Self::Handoff(_) => None,
        }
    }

    /// What the record is about, as the outbox row keeps it: its ticket, or its chat session.
    pub fn subject(&self) -> String {
        match self {
            Self::Handoff(r) => r.session_id.to_string(),
            other => other.ticket_id().map(|t| t.to_string()).unwrap_or_default(),
        }
    }

    /// The ticket change, for a ticket-sync record.
    pub fn as_sync(&self) -> Option<&SyncRecord> {
        match self {
            Self::TicketSync(r) => Some(r),
            _ => None,
        }
    }

    pub fn request_id(&self) -> Option<&RequestId> {
        match self {
            Self::TicketSync(r) => r.request_id.as_ref(),
            Self::ChatTicket(r) => r.request_id.as_ref(),
            Self::Handoff(_) => None,
        }
    }
}

/// An outbox row: a record and its position.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxEntry {
    pub seq: i64,
    pub record: OutboxRecord,
    pub enqueued_at: DateTime<Utc>,
    /// Delivery cycles that carried this entry and failed.
    pub attempts: u32,
    /// Times it failed sent alone while Django took other events: the count that ends in the dead
    /// letters (`bridge.poison_max_attempts`).
    pub isolated_failures: u32,
}

/// A failed delivery of one outbox entry, recorded on its row.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    pub seq: i64,
    pub error: String,
    /// It failed sent alone while Django took other events in the same cycle.
    pub isolated: bool,
}

/// What the admin API shows of a record: its type, its ticket and, for a ticket sync, its event.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RecordSummary {
    /// The record's type, as tagged in [`OutboxRecord`] (`ticket_sync`, `chat_ticket`, `handoff`).
    #[serde(rename = "type")]
    pub record_type: &'static str,
    /// The ticket it is about (none for a handoff).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ticket_id: Option<TicketId>,
    /// The chat it is about, for a handoff.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_id: Option<SessionId>,
    /// For a ticket sync: its event, the version it produced and what kind of change it was.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_id: Option<EventId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<EventKind>,
}

impl From<&OutboxRecord> for RecordSummary {
    fn from(record: &OutboxRecord) -> Self {
        let sync = record.as_sync();
        Self {
            record_type: record.kind(),
            ticket_id: record.ticket_id(),
            session_id: match record {
                OutboxRecord::Handoff(h) => Some(h.session_id),
                _ => None,
            },
            event_id: sync.map(|r| r.event_id),
            version: sync.map(|r| r.version),
            kind: sync.map(|r| r.kind),
        }
    }
}

/// An entry still waiting for Django, as the admin API lists it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PendingEntry {
    /// The outbox position: the id an operator moves it to the dead letters by.
    pub id: i64,
    #[serde(flatten)]
    pub record: RecordSummary,
    pub attempts: u32,
    pub isolated_failures: u32,
    pub last_error: Option<String>,
    #[serde(serialize_with = "crate::domain::timestamp::serialize")]
    pub enqueued_at: DateTime<Utc>,
}

/// A record Django refused, kept for an operator. The admin API shows this summary; `record` is what
/// a retry puts back in the outbox.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeadLetter {
    pub id: i64,
    #[serde(flatten)]
    pub summary: RecordSummary,
    pub status_code: Option<u16>,
    pub error: String,
    pub failed_at: DateTime<Utc>,
    pub enqueued_at: DateTime<Utc>,
    #[serde(skip)]
    pub record: OutboxRecord,
}

/// An event the bridge gives up on, with Django's reason.
#[derive(Debug, Clone)]
pub struct Rejection {
    pub seq: i64,
    pub status_code: Option<u16>,
    pub error: String,
}

/// Counts outbox appends so the bridge can wake up without polling the database.
#[derive(Debug, Default)]
pub struct OutboxSignal {
    appended: AtomicU64,
    notify: tokio::sync::Notify,
}

impl OutboxSignal {
    pub fn appended(&self, n: u64) {
        self.appended.fetch_add(n, Ordering::Relaxed);
        self.notify.notify_one();
    }

    /// Total appends since start.
    pub fn total(&self) -> u64 {
        self.appended.load(Ordering::Relaxed)
    }

    pub async fn wait(&self) {
        self.notify.notified().await
    }
}

/// Outbox depth and the enqueue time of its oldest entry.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OutboxStats {
    pub depth: u64,
    pub oldest: Option<DateTime<Utc>>,
    pub dead_letters: u64,
}

/// The outbox seam the bridge uses. Every future resolves on the caller's side of the store's
/// threads; none blocks an actor.
pub trait Outbox: Send + Sync + 'static {
    /// Appends a record that is not part of a ticket write, durably: it resolves once the record is
    /// on disk, with its position.
    fn enqueue(&self, record: OutboxRecord) -> BoxFuture<'static, StoreResult<i64>>;
    /// The oldest `limit` durable entries, in order.
    fn peek(&self, limit: usize) -> BoxFuture<'static, StoreResult<Vec<OutboxEntry>>>;
    /// Removes delivered entries.
    fn ack(&self, seqs: Vec<i64>) -> BoxFuture<'static, StoreResult<()>>;
    /// Moves refused entries to the dead-letter table.
    fn dead_letter(&self, rejected: Vec<Rejection>) -> BoxFuture<'static, StoreResult<()>>;
    /// Records failed deliveries on the entries' rows (attempts, last error, isolated failures).
    fn record_failures(&self, failures: Vec<Failure>) -> BoxFuture<'static, StoreResult<()>>;
    /// The oldest `limit` entries still waiting for Django, in outbox order.
    fn pending(&self, limit: u32) -> BoxFuture<'static, StoreResult<Vec<PendingEntry>>>;
    /// Moves waiting entry `seq` to the dead letters with `error` (an operator's decision). `false` if
    /// no such entry waits.
    fn dead_letter_entry(&self, seq: i64, error: String) -> BoxFuture<'static, StoreResult<bool>>;
    fn stats(&self) -> BoxFuture<'static, StoreResult<OutboxStats>>;
    fn dead_letters(&self, limit: u32) -> BoxFuture<'static, StoreResult<Vec<DeadLetter>>>;
    /// Puts a dead letter back in the outbox with its original record. `false` if unknown.
    fn retry_dead_letter(&self, id: i64) -> BoxFuture<'static, StoreResult<bool>>;
    /// Where the bridge learns about new entries without polling.
    fn signal(&self) -> Arc<OutboxSignal>;
}
