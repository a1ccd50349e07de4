//! What the writer and the folder thread pass each other: journal rows to fold ([`FoldJob`] of
//! [`Entry`]) and what a fold did ([`FoldReport`]), and where `tickets.db` keeps its watermark. Owns
//! no thread; the lowest layer of the journal's two sides.

use std::sync::{mpsc, Arc};
use std::time::Instant;

use rusqlite::Connection;
use tokio::sync::oneshot;

use super::{CommitError, StoreResult};
use crate::domain::ticket::{Comment, Ticket, TicketEvent};

/// One journal row, as the fold needs it.
pub(super) struct Entry {
    pub seq: i64,
    pub journalled_at: Instant,
    /// The ticket change to apply; `None` for an outbox row that is no ticket change (a record
    /// enqueued beside the journal, a re-queued dead letter): the fold only moves its watermark past
    /// it, so the row can go once delivered.
    pub change: Option<Change>,
}

/// A journalled ticket write.
pub(super) struct Change {
    pub ticket: Arc<Ticket>,
    /// Shared with the [`super::pending::PendingView`], which shows it until it is folded.
    pub event: Arc<TicketEvent>,
    /// `event.changes` as JSON, encoded off the writer thread.
    pub changes: String,
    pub comment: Option<Comment>,
}

pub(super) type FoldWaiter = oneshot::Sender<StoreResult<()>>;

/// Writer → folder: durable journal rows, oldest first, continuing the previous job's.
#[derive(Default)]
pub(super) struct FoldJob {
    pub entries: Vec<Entry>,
    /// Queries waiting until every acknowledged write is in the tables; answered through the writer
    /// once these rows are folded.
    pub waiters: Vec<FoldWaiter>,
    /// The store is closing: fold, checkpoint, then signal here and stop.
    pub close: Option<mpsc::SyncSender<()>>,
}

/// Folder → writer: what one fold did.
pub(super) struct FoldReport {
    /// Journal rows up to here are in the tables (on disk). Unchanged when the fold failed.
    pub watermark: i64,
    /// Rows folded.
    pub rows: usize,
    /// Each folded ticket's newest snapshot.
    pub tickets: Vec<Arc<Ticket>>,
    pub waiters: Vec<FoldWaiter>,
    /// Why the fold failed ([`CommitError::Fold`] or [`CommitError::FoldPanicked`]); its rows are
    /// kept and folded again later.
    pub error: Option<CommitError>,
}

/// `tickets.db`'s watermark: journal rows up to it are in the tables.
pub(super) fn folded_seq(conn: &Connection) -> StoreResult<i64> {
    Ok(conn.query_row(
        "SELECT value FROM store_meta WHERE key = 'folded_seq'",
        [],
        |r| r.get(0),
    )?)
}
