//! Durable storage behind a narrow seam.
//!
//! [`TicketStore`] is everything the ticket actors need from storage, and [`Outbox`] everything the
//! bridge needs: two seams, so chat can enqueue Django calls without touching tickets.
//! [`sqlite::SqliteStore`] implements both
//! with one writer thread doing group commit and a few reader threads. A change to a ticket, its
//! history event and its outbox entry are written in one transaction, and a write is acknowledged only
//! after that transaction commits. [`pg_tickets::PgStore`] implements both on PostgreSQL
//! (`storage.postgres_url`), shared by every node of a cluster ([`pg_outbox`] leases outbox entries
//! to one node's bridge at a time).
//! A write that did not commit fails with [`StoreError::CommitFailed`], whose [`CommitError`] says why
//! and keeps the original I/O or SQLite error as its source.
//!
//! Files, lowest layer first (each imports only from those above it): `rows` and `schema` (SQL),
//! `outbox` (the outbox seam and its records), `reply`, `durable`, `pending`, `folded`, `wal` and `fold`
//! (what the threads share), `overlay` (how reads lay unfolded writes over the tables), `journal` (the
//! writer's account of unfolded rows), then one file per thread: `syncer`, `checkpointer`, `folder`,
//! `writer`; `sqlite` is the façade that starts them and serves reads.

pub mod chat_journal;
mod checkpointer;
mod durable;
mod fold;
mod folded;
mod folder;
mod journal;
pub mod outbox;
mod overlay;
mod pending;
pub mod pg_journal;
pub mod pg_membership;
pub mod pg_outbox;
mod pg_outbox_poll;
mod pg_pool;
pub mod pg_schema;
pub mod pg_tickets;
mod reply;
mod rows;
pub mod schema;
pub mod sqlite;
mod syncer;
mod wal;
mod writer;

use std::sync::Arc;

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
    #[error("database error")]
    Sqlite(#[from] rusqlite::Error),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("I/O error on {path}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the store is shut down")]
    Closed,
    #[error("the write was not committed")]
    CommitFailed(#[source] CommitError),
    #[error("outbox records of type `{0}` are written by ticket writes only, not enqueued")]
    NotEnqueueable(&'static str),
    #[error("store worker panicked: {0}")]
    Panicked(String),
    /// PostgreSQL refused or failed a statement, or could not be reached.
    #[error("PostgreSQL: {0}")]
    Database(String),
    /// Another node owns this chat session now (a higher fencing epoch): this node may no longer
    /// write it.
    #[error("chat session {0} is owned by another node")]
    Fenced(crate::domain::ids::SessionId),
}

/// Why a write, or a fold of the journal, did not complete. One failure answers every write of its
/// batch (and, once the WAL could not be flushed, every later one), so it is cloned to each waiter:
/// the original error is shared behind an `Arc`, and allocated only when something fails.
#[derive(Debug, Clone)]
pub enum CommitError {
    /// `fdatasync` of the write-ahead log failed; nothing can be made durable until restart.
    Flush(Arc<std::io::Error>),
    /// BEGIN, a write or COMMIT of the writer's transaction failed; the batch was rolled back.
    Transaction(Arc<StoreError>),
    /// The writer panicked with the batch in hand; the batch was rolled back.
    WriterPanicked(String),
    /// The folder's transaction failed; its rows stay journalled and are folded again.
    Fold(Arc<StoreError>),
    /// The folder panicked mid-fold; its rows stay journalled and are folded again.
    FoldPanicked(String),
    SyncerStopped,
    FolderStopped,
}

impl std::fmt::Display for CommitError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Flush(_) => f.write_str("could not flush the write-ahead log"),
            Self::Transaction(_) => f.write_str("the transaction did not commit"),
            Self::WriterPanicked(why) => write!(f, "the store writer panicked: {why}"),
            Self::Fold(_) => f.write_str("the journal fold did not commit"),
            Self::FoldPanicked(why) => write!(f, "the journal fold panicked: {why}"),
            Self::SyncerStopped => f.write_str("the store's syncer has stopped"),
            Self::FolderStopped => f.write_str("the store's folder has stopped"),
        }
    }
}

/// Written out rather than derived: `#[source]` on an `Arc<E>` would make the `Arc` itself the
/// source, and a caller downcasting to `std::io::Error` or [`StoreError`] would not find it.
impl std::error::Error for CommitError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Flush(e) => Some(&**e),
            Self::Transaction(e) | Self::Fold(e) => Some(&**e),
            Self::WriterPanicked(_)
            | Self::FoldPanicked(_)
            | Self::SyncerStopped
            | Self::FolderStopped => None,
        }
    }
}

/// Shows an error followed by each of its sources, `outer: inner: root`, for the store's own logs
/// (the layers above have their own helper; the store imports none of them).
pub(crate) struct ErrorChain<'a>(pub &'a dyn std::error::Error);

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut next = self.0.source();
        while let Some(e) = next {
            write!(f, ": {e}")?;
            next = e.source();
        }
        Ok(())
    }
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
    ChatTicketRecord, DeadLetter, Failure, HandoffEvent, HandoffRecord, Outbox, OutboxEntry,
    OutboxRecord, OutboxSignal, OutboxStats, PendingEntry, RecordSummary, Rejection, SyncRecord,
};

pub type StoreResult<T> = Result<T, StoreError>;

/// The storage seam the actors and the bridge use.
pub trait TicketStore: Send + Sync + 'static {
    /// Writes a new ticket, its `created` event and the outbox entry. Fails if the id exists.
    fn create(&self, write: TicketWrite) -> BoxFuture<'static, StoreResult<()>>;
    /// Like [`create`](Self::create), with one more outbox record written in the same transaction
    /// (a ticket from chat and Django's chat record of it): both are stored, or neither.
    fn create_with(
        &self,
        write: TicketWrite,
        record: OutboxRecord,
    ) -> BoxFuture<'static, StoreResult<()>>;
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
    /// Whether other processes write to the same tickets (PostgreSQL shared by several nodes): a
    /// ticket held in memory may then be stale, so readers load it afresh and a writer that meets
    /// a version conflict reloads and tries again.
    fn shared(&self) -> bool {
        false
    }
}

/// Timestamps are kept to the millisecond so a ticket reloaded from disk equals the one in memory.
pub fn now() -> DateTime<Utc> {
    use chrono::SubsecRound;
    Utc::now().trunc_subsecs(3)
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use super::*;

    #[test]
    fn a_failed_transaction_walks_to_the_sqlite_error() {
        // As SQLite reports a full disk: its message, then the code as the source.
        let sqlite = rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_FULL),
            Some("database or disk is full".into()),
        );
        let why = CommitError::Transaction(Arc::new(StoreError::Sqlite(sqlite)));
        let err = StoreError::CommitFailed(why);
        let cause = err.source().expect("the commit error");
        let store = cause.source().and_then(|e| e.downcast_ref::<StoreError>());
        assert!(matches!(store, Some(StoreError::Sqlite(_))), "{store:?}");
        let root = store.and_then(|e| e.source()).expect("the sqlite error");
        assert!(root.downcast_ref::<rusqlite::Error>().is_some());
        assert!(
            ErrorChain(&err).to_string().starts_with(
                "the write was not committed: the transaction did not commit: database error: \
                 database or disk is full: "
            ),
            "{}",
            ErrorChain(&err)
        );
    }
}
