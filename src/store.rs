//! Durable storage behind a narrow seam.
//!
//! [`TicketStore`] is everything the actors need from storage; [`sqlite::SqliteStore`] implements it
//! with one writer thread doing group commit and a few reader threads. A change to a ticket, its
//! history event and its outbox entry are written in one transaction, and a write is acknowledged only
//! after that transaction commits. Another backend (PostgreSQL, say) implements the same trait.

mod folder;
mod journal;
mod rows;
pub mod schema;
pub mod sqlite;
mod syncer;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};

use crate::domain::ids::{EventId, TicketId};
use crate::domain::status::Status;
use crate::domain::ticket::{Comment, EventKind, Priority, Ticket, TicketEvent};

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("ticket {id} changed concurrently: expected version {expected}")]
    VersionConflict { id: TicketId, expected: u64 },
    #[error("ticket {0} already exists")]
    AlreadyExists(TicketId),
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("cannot open the data directory {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the store is shut down")]
    Closed,
    #[error("the write was not committed: {0}")]
    CommitFailed(String),
    #[error("store worker panicked: {0}")]
    Panicked(String),
}

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
}

/// An outbox row: a record and its position.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxEntry {
    pub seq: i64,
    pub record: SyncRecord,
    pub enqueued_at: DateTime<Utc>,
}

/// A record Django refused, kept for an operator.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeadLetter {
    pub id: i64,
    pub event_id: EventId,
    pub ticket_id: TicketId,
    pub version: u64,
    pub kind: EventKind,
    pub status_code: Option<u16>,
    pub error: String,
    pub failed_at: DateTime<Utc>,
    pub enqueued_at: DateTime<Utc>,
}

/// An event the bridge gives up on, with Django's reason.
#[derive(Debug, Clone)]
pub struct Rejection {
    pub seq: i64,
    pub status_code: Option<u16>,
    pub error: String,
}

/// Filters for listing tickets; every field narrows the result.
#[derive(Debug, Clone, Default)]
pub struct TicketFilter {
    pub status: Option<Status>,
    pub assignee: Option<String>,
    pub priority: Option<Priority>,
    pub tag: Option<String>,
    /// Only tickets with an id greater than this (cursor pagination in id order).
    pub after: Option<TicketId>,
    pub limit: u32,
}

/// Outbox depth and the enqueue time of its oldest entry.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OutboxStats {
    pub depth: u64,
    pub oldest: Option<DateTime<Utc>>,
    pub dead_letters: u64,
}

/// A write to a ticket: its new state, the event that explains it, and an optional comment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TicketWrite {
    pub ticket: Ticket,
    pub event: TicketEvent,
    pub comment: Option<Comment>,
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

pub type StoreResult<T> = Result<T, StoreError>;

/// The storage seam the actors and the bridge use.
pub trait TicketStore: Send + Sync + 'static {
    /// Writes a new ticket, its `created` event and the outbox entry. Fails if the id exists.
    fn create(&self, write: TicketWrite) -> BoxFuture<'static, StoreResult<()>>;
    /// Replaces a ticket whose stored version is `write.ticket.version - 1`; appends event and outbox.
    fn update(&self, write: TicketWrite) -> BoxFuture<'static, StoreResult<()>>;
    /// Stores a ticket fetched from Django (no outbox entry: Django already has it).
    fn import(&self, ticket: Ticket, event: TicketEvent) -> BoxFuture<'static, StoreResult<()>>;
    fn load(&self, id: TicketId) -> BoxFuture<'static, StoreResult<Option<Ticket>>>;
    fn list(&self, filter: TicketFilter) -> BoxFuture<'static, StoreResult<Vec<Ticket>>>;
    fn events(
        &self,
        id: TicketId,
        after_seq: i64,
        limit: u32,
    ) -> BoxFuture<'static, StoreResult<Vec<(i64, TicketEvent)>>>;
    /// The oldest `limit` outbox entries, in order.
    fn outbox_peek(&self, limit: usize) -> BoxFuture<'static, StoreResult<Vec<OutboxEntry>>>;
    /// Removes delivered entries.
    fn outbox_ack(&self, seqs: Vec<i64>) -> BoxFuture<'static, StoreResult<()>>;
    /// Moves refused entries to the dead-letter table.
    fn outbox_dead_letter(&self, rejected: Vec<Rejection>) -> BoxFuture<'static, StoreResult<()>>;
    fn outbox_stats(&self) -> BoxFuture<'static, StoreResult<OutboxStats>>;
    fn dead_letters(&self, limit: u32) -> BoxFuture<'static, StoreResult<Vec<DeadLetter>>>;
    /// Puts a dead letter back in the outbox with its original event id. `false` if unknown.
    fn retry_dead_letter(&self, id: i64) -> BoxFuture<'static, StoreResult<bool>>;
    /// A cheap round trip through a reader and the writer, for readiness.
    fn ping(&self) -> BoxFuture<'static, StoreResult<()>>;
    /// Where the bridge learns about new outbox entries.
    fn outbox_signal(&self) -> Arc<OutboxSignal>;
    /// Stops the writer after it has committed everything queued so far.
    fn close(&self) -> BoxFuture<'static, ()>;
}

/// Timestamps are kept to the millisecond so a ticket reloaded from disk equals the one in memory.
pub fn now() -> DateTime<Utc> {
    use chrono::SubsecRound;
    Utc::now().trunc_subsecs(3)
}
