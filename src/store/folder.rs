//! The folder thread: applies journalled writes to the ticket tables.
//!
//! The tables live in their own file, `tickets.db`, with this thread's connection its only writer. A
//! fold therefore never holds the journal's write lock: the writer keeps committing (and
//! acknowledging) new writes while a fold of thousands of rows runs here, on the other core.
//!
//! The writer hands over durable journal rows in order ([`FoldJob`]); every job waiting is folded in
//! one transaction, which also moves `tickets.db`'s `folded_seq` watermark past them. That commit is
//! flushed to disk before the writer hears of it ([`FoldReport`]), because only then may the journal
//! drop the rows it covers. A failed fold keeps its rows and is tried again after
//! `sqlite::FOLD_INTERVAL`; the queries waiting on it are told.
//!
//! This thread also checkpoints `tickets.db`, once its WAL holds `sqlite::TABLES_CHECKPOINT_MIB`
//! rather than after every fold: consecutive folds rewrite the same pages (busy tickets' rows, the
//! history index), and between checkpoints each such page is copied into the file, and the file
//! flushed, once. Those scattered writes were a fold's most expensive disk work, and they delayed the
//! journal's own flushes behind them.

use std::cell::Cell;
use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use rusqlite::hooks::Wal;
use rusqlite::Connection;

use super::fold::{folded_seq, Entry, FoldJob, FoldReport};
use super::folded::FoldedTickets;
use super::wal::{checkpoint, WalLimits};
use super::{rows, CommitError, ErrorChain, StoreError, StoreResult};
use crate::domain::ids::TicketId;
use crate::domain::ticket::{EventKind, Ticket};
use crate::metrics as m;
use crate::telemetry::panic_message;

thread_local! {
    /// Frames in the WAL of the connection that last committed on this thread, as SQLite's WAL hook
    /// reports them (the hook takes no state of its own). Only the folder's connection has the hook,
    /// and it is read on the thread that committed, right after the commit.
    static WAL_FRAMES: Cell<i64> = const { Cell::new(0) };
}

fn note_wal_frames(_: &Wal, frames: std::ffi::c_int) -> rusqlite::Result<()> {
    WAL_FRAMES.with(|f| f.set(i64::from(frames)));
    Ok(())
}

pub(super) struct Folder {
    conn: Connection,
    /// Rows handed over and not yet folded, oldest first.
    pending: Vec<Entry>,
    /// The newest row handed over: a row at or below it that comes again (the writer re-read its
    /// journal after a failed commit) is already here.
    received_seq: i64,
    folded_seq: i64,
    /// What the tickets table holds for recently folded tickets (this thread is its only writer), so
    /// a fold's diff need not read the row back.
    cache: Arc<FoldedTickets>,
    retry_after: Duration,
    wal: WalLimits,
    /// Checkpoint once the WAL holds this many frames (pages).
    checkpoint_pages: i64,
}

impl Folder {
    /// `conn` is the read-write connection to `tickets.db`, with automatic checkpoints already off:
    /// setting `wal_autocheckpoint` afterwards would replace the WAL hook installed here.
    pub fn new(
        conn: Connection,
        cache: Arc<FoldedTickets>,
        retry_after: Duration,
        wal: WalLimits,
        checkpoint_pages: i64,
    ) -> StoreResult<Self> {
        let folded_seq = folded_seq(&conn)?;
        conn.wal_hook(Some(note_wal_frames));
        Ok(Self {
            conn,
            pending: Vec::new(),
            received_seq: folded_seq,
            folded_seq,
            cache,
            retry_after,
            wal,
            checkpoint_pages,
        })
    }

    /// Takes `jobs` until the writer stops or a job closes the store, reporting each fold to `report`.
    pub fn run(mut self, jobs: mpsc::Receiver<FoldJob>, report: impl Fn(FoldReport)) {
        loop {
            // Rows kept by a failed fold are tried again after `retry_after`, or with the next job.
            let first = if self.pending.is_empty() {
                match jobs.recv() {
                    Ok(job) => Some(job),
                    Err(_) => return,
                }
            } else {
                match jobs.recv_timeout(self.retry_after) {
                    Ok(job) => Some(job),
                    Err(mpsc::RecvTimeoutError::Timeout) => None,
                    Err(mpsc::RecvTimeoutError::Disconnected) => return,
                }
            };
            let mut waiters = Vec::new();
            let mut close = None;
            for job in first
                .into_iter()
                .chain(std::iter::from_fn(|| jobs.try_recv().ok()))
            {
                self.take(job.entries);
                waiters.extend(job.waiters);
                close = close.or(job.close);
            }
            let mut done = self.fold_pending();
            done.waiters = waiters;
            report(done);
            if let Some(close) = close {
                if let Err(e) = self.conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)") {
                    tracing::warn!(error = %e, "final checkpoint of tickets.db failed");
                }
                let _ = close.send(());
                return;
            }
        }
    }

    /// Queues `entries`, skipping any already handed over.
    pub fn take(&mut self, entries: Vec<Entry>) {
        for e in entries {
            if e.seq > self.received_seq {
                self.received_seq = e.seq;
                self.pending.push(e);
            }
        }
    }

    /// Folds every queued row in one transaction. A panic fails the fold like an error.
    pub fn fold_pending(&mut self) -> FoldReport {
        let mut report = FoldReport {
            watermark: self.folded_seq,
            rows: 0,
            tickets: Vec::new(),
            waiters: Vec::new(),
            error: None,
        };
        if self.pending.is_empty() {
            return report;
        }
        let started = Instant::now();
        let rows = self.pending.len();
        let watermark = self.pending[rows - 1].seq;
        // Each ticket's newest snapshot, and whether the fold creates its row.
        let mut snapshots: HashMap<TicketId, (&Arc<Ticket>, bool)> = HashMap::new();
        for c in self.pending.iter().filter_map(|e| e.change.as_ref()) {
            let creates = matches!(c.event.kind, EventKind::Created | EventKind::Imported);
            snapshots
                .entry(c.ticket.id)
                .and_modify(|s| s.0 = &c.ticket)
                .or_insert((&c.ticket, creates));
        }
        let span =
            tracing::info_span!("store_fold", rows, tickets = snapshots.len(), watermark).entered();
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            apply(
                &mut self.conn,
                &self.pending,
                &snapshots,
                &self.cache,
                watermark,
            )
        }));
        let folded: Vec<Arc<Ticket>> = snapshots.into_values().map(|(t, _)| t.clone()).collect();
        let error = match outcome {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(CommitError::Fold(Arc::new(e))),
            Err(panic) => {
                metrics::counter!(m::ACTOR_RESTARTS, "kind" => "store_folder", "cause" => "panic")
                    .increment(1);
                if !self.conn.is_autocommit() {
                    let _ = self.conn.execute_batch("ROLLBACK");
                }
                Some(CommitError::FoldPanicked(panic_message(panic.as_ref())))
            }
        };
        if let Some(error) = error {
            metrics::counter!(m::STORE_FOLD_ERRORS).increment(1);
            tracing::error!(error = %ErrorChain(&error), rows, "journal fold failed; its rows stay journalled and are folded again");
            report.error = Some(error);
            return report;
        }
        self.cache.folded(&folded);
        self.pending.clear();
        self.folded_seq = watermark;
        let elapsed = started.elapsed();
        metrics::histogram!(m::STORE_FOLD_ROWS).record(rows as f64);
        metrics::histogram!(m::STORE_FOLD_DURATION).record(elapsed.as_secs_f64());
        tracing::debug!(
            rows,
            elapsed_ms = elapsed.as_millis() as u64,
            "folded journal"
        );
        drop(span);
        let frames = WAL_FRAMES.with(Cell::get);
        metrics::gauge!(m::STORE_WAL_PAGES, "db" => "tickets").set(frames as f64);
        if frames >= self.checkpoint_pages {
            self.checkpoint();
        }
        report.watermark = watermark;
        report.rows = rows;
        report.tickets = folded;
        report
    }

    /// Copies the WAL into `tickets.db`. The fold before it stands whatever happens here, and a panic
    /// must not end the thread that folds: the next due fold checkpoints again.
    fn checkpoint(&self) {
        let checkpointed = catch_unwind(AssertUnwindSafe(|| {
            checkpoint(&self.conn, "tickets", &self.wal)
        }));
        if let Err(panic) = checkpointed {
            metrics::counter!(m::ACTOR_RESTARTS, "kind" => "store_folder", "cause" => "panic")
                .increment(1);
            tracing::error!(panic = %panic_message(panic.as_ref()), "checkpoint of tickets.db panicked; the next fold checkpoints again");
        }
    }
}

fn apply(
    conn: &mut Connection,
    chunk: &[Entry],
    snapshots: &HashMap<TicketId, (&Arc<Ticket>, bool)>,
    cache: &FoldedTickets,
    watermark: i64,
) -> StoreResult<()> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    // Rows with no ticket change (other outbox records) fold nothing; the watermark passes them.
    for (seq, c) in chunk
        .iter()
        .filter_map(|e| e.change.as_ref().map(|c| (e.seq, c)))
    {
        rows::insert_event(&tx, seq, &c.event, &c.changes)?;
        if let Some(comment) = &c.comment {
            rows::insert_comment(&tx, comment)?;
        }
    }
    // In key order, so neighbouring rows and index entries are written while their pages are hot.
    let mut tickets: Vec<&(&Arc<Ticket>, bool)> = snapshots.values().collect();
    tickets.sort_unstable_by_key(|(t, _)| t.id);
    for (t, creates) in tickets {
        if *creates {
            rows::insert_ticket(&tx, t)?;
            continue;
        }
        match cache.get(t.id) {
            Some(base) => rows::update_ticket(&tx, &base, t)?,
            None => {
                let base = rows::load(&tx, t.id)?.ok_or_else(|| {
                    StoreError::Corrupt(format!("journalled ticket {} has no row", t.id))
                })?;
                rows::update_ticket(&tx, &base, t)?;
            }
        }
    }
    tx.execute(
        "UPDATE store_meta SET value = ?1 WHERE key = 'folded_seq'",
        [watermark],
    )?;
    tx.commit()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::status::Status;
    use crate::domain::ticket::{Priority, Source};
    use crate::store::schema;

    fn ticket(version: u64) -> Ticket {
        // One fixed instant: two versions made a millisecond apart must not differ in `created_at`.
        let at =
            chrono::DateTime::from_timestamp_millis(1_764_000_000_000).expect("a valid instant");
        Ticket {
            id: TicketId(uuid::Uuid::from_u128(7)),
            subject: "Printer on fire".into(),
            description: String::new(),
            status: Status::Open,
            priority: Priority::Normal,
            requester: "ann@example.com".into(),
            assignee: None,
            tags: vec!["printer".into()],
            source: Source::Api,
            chat_session_id: None,
            created_at: at,
            updated_at: at,
            version,
        }
    }

    fn entry(seq: i64, ticket: &Ticket, kind: EventKind) -> Entry {
        let w = crate::store::sqlite::tests::write(ticket, kind, None);
        Entry {
            seq,
            journalled_at: Instant::now(),
            change: Some(crate::store::fold::Change {
                ticket: Arc::new(w.ticket),
                changes: w.event.changes.to_string(),
                event: Arc::new(w.event),
                comment: None,
            }),
        }
    }

    /// A migrated store in a temporary directory, and the path of its `tickets.db`.
    fn migrated() -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let tables = dir.path().join("tickets.db");
        let mut main = Connection::open(dir.path().join("switchboard.db")).unwrap();
        schema::migrate(&mut main, &tables).unwrap();
        (dir, tables)
    }

    #[test]
    fn a_failed_fold_keeps_its_rows_and_folds_them_on_the_next_try() {
        let (_dir, tables) = migrated();
        let other = Connection::open(&tables).unwrap();
        let wal = WalLimits {
            restart_pages: 1000,
        };
        let mut folder = Folder::new(
            Connection::open(&tables).unwrap(),
            FoldedTickets::new(16),
            Duration::from_secs(1),
            wal,
            1,
        )
        .unwrap();
        let events = || -> i64 {
            other
                .query_row("SELECT COUNT(*) FROM ticket_events", [], |r| r.get(0))
                .unwrap()
        };

        // An update of a ticket the tables lack: the fold fails, changes nothing, and keeps the row.
        let (v1, v2) = (ticket(1), ticket(2));
        folder.take(vec![entry(5, &v2, EventKind::Updated)]);
        let failed = folder.fold_pending();
        let why = failed.error.expect("the fold failed");
        assert!(
            matches!(&why, CommitError::Fold(e) if matches!(**e, StoreError::Corrupt(_))),
            "{why:?}"
        );
        assert_eq!((failed.watermark, failed.rows), (0, 0));
        assert_eq!(folded_seq(&other).unwrap(), 0);
        assert_eq!(events(), 0, "the failed fold was rolled back");

        // The same row handed over again is not taken twice; once the ticket exists it folds.
        folder.take(vec![entry(5, &v2, EventKind::Updated)]);
        rows::insert_ticket(&other, &v1).unwrap();
        let done = folder.fold_pending();
        assert!(done.error.is_none(), "{:?}", done.error);
        assert_eq!((done.watermark, done.rows), (5, 1));
        assert_eq!(folded_seq(&other).unwrap(), 5);
        assert_eq!(rows::load(&other, v1.id).unwrap(), Some(v2));
        assert_eq!(events(), 1);
        assert_eq!(folder.fold_pending().rows, 0, "nothing left to fold");
    }

    #[test]
    fn tickets_db_is_checkpointed_only_once_its_log_holds_enough() {
        let (_dir, tables) = migrated();
        let wal = WalLimits {
            restart_pages: 1000,
        };
        let conn = Connection::open(&tables).unwrap();
        conn.execute_batch("PRAGMA journal_mode = WAL; PRAGMA wal_autocheckpoint = 0")
            .unwrap();
        let mut folder = Folder::new(
            conn,
            FoldedTickets::new(16),
            Duration::from_secs(1),
            wal,
            64,
        )
        .unwrap();
        // Pages reach the database file only through a checkpoint.
        let file_len = || std::fs::metadata(&tables).unwrap().len();
        let before = file_len();

        // A fold of one ticket leaves a few pages in the log: no checkpoint yet.
        let mut t = ticket(1);
        folder.take(vec![entry(1, &t, EventKind::Created)]);
        assert!(folder.fold_pending().error.is_none());
        let frames = WAL_FRAMES.with(Cell::get);
        assert!(
            frames > 0 && frames < 64,
            "{frames} frames after one small fold"
        );
        assert_eq!(
            file_len(),
            before,
            "checkpointed before the log held 64 pages"
        );

        // Folds that bring the log past 64 pages are followed by a checkpoint.
        let mut seq = 1;
        let mut long = ticket(1);
        long.description = "x".repeat(3000);
        // Each round adds several pages, so 64 are reached well within the bound.
        for round in 0.. {
            if WAL_FRAMES.with(Cell::get) >= 64 {
                break;
            }
            assert!(round < 100, "the log never reached 64 pages");
            let mut batch = Vec::new();
            for _ in 0..8 {
                seq += 1;
                t.version += 1;
                long.version = t.version;
                batch.push(entry(seq, &long, EventKind::Updated));
            }
            folder.take(batch);
            assert!(folder.fold_pending().error.is_none());
        }
        assert!(
            file_len() > before,
            "no checkpoint once the log held 64 pages"
        );
    }
}
