//! Durable storage behind a narrow seam.
//!
//! [`TicketStore`] is everything the ticket actors need from storage, and [`Outbox`] everything the
//! bridge needs: two seams, so chat can enqueue Django calls without touching tickets.
//! [`sqlite::SqliteStore`] implements both
//! with one writer thread doing group commit and a few reader threads. A change to a ticket, its
//! history event and its outbox entry are written in one transaction, and a write is acknowledged only
//! after that transaction commits. Another backend (PostgreSQL, say) implements the same trait.
//!
//! Files, lowest layer first (each imports only from those above it): `rows` and `schema` (SQL),
//! `outbox` (the outbox seam and its records), `reply`, `durable`, `pending`, `folded`, `wal` and `fold`
//! (what the threads share), `journal` (the writer's account of unfolded rows), then one file per thread:
//! `syncer`, `checkpointer`, `folder`, `writer`; `sqlite` is the façade that starts them.

mod checkpointer;
mod durable;
mod fold;
mod folded;
mod folder;
mod journal;
pub mod outbox;
mod pending;
mod reply;
mod rows;
pub mod schema;
pub mod sqlite;
mod syncer;
mod wal;
mod writer;

use chrono::{DateTime, Utc};
use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};

use crate::domain::ids::{RequestId, TicketId};
use crate::domain::status::Status;
use crate::domain::ticket::{Comment, Priority, Ticket, TicketEvent};

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
    #[error("outbox records of type `{0}` are written by ticket writes only, not enqueued")]
    NotEnqueueable(&'static str),
    #[error("store worker panicked: {0}")]
    Panicked(String),
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

/// A write to a ticket: its new state, the event that explains it, and an optional comment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TicketWrite {
    pub ticket: Ticket,
    pub event: TicketEvent,
    pub comment: Option<Comment>,
    /// The request that caused the write; travels with its outbox record to Django.
    pub request_id: Option<RequestId>,
}

pub use outbox::{
    ChatTicketRecord, DeadLetter, Outbox, OutboxEntry, OutboxRecord, OutboxSignal, OutboxStats,
    Rejection, SyncRecord,
};

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
    /// A cheap round trip through a reader and the writer, for readiness.
    fn ping(&self) -> BoxFuture<'static, StoreResult<()>>;
    /// Stops the writer after it has committed everything queued so far.
    fn close(&self) -> BoxFuture<'static, ()>;
}

/// Timestamps are kept to the millisecond so a ticket reloaded from disk equals the one in memory.
pub fn now() -> DateTime<Utc> {
    use chrono::SubsecRound;
    Utc::now().trunc_subsecs(3)
}
