//! [`SqliteStore`], the façade: [`TicketStore`] and [`Outbox`] on SQLite in WAL mode.
//!
//! `open` migrates both files, folds what the last run left in the journal and starts the threads,
//! each in its own module and owning its own connection: the writer ([`super::writer`], the only
//! writer of `switchboard.db`, group commit), the syncer ([`super::syncer`], flushes the WAL with
//! `synchronous = full`), the folder ([`super::folder`], the only writer of `tickets.db`) and the
//! checkpointer ([`super::checkpointer`]). This module turns calls into the writer's messages, serves
//! loads of unfolded tickets from the [`PendingView`], and runs the reader threads: each owns a
//! query-only connection to `switchboard.db` with `tickets.db` attached. Lists and history never wait
//! for a fold: a reader lays the view's unfolded writes over the tables ([`super::overlay`]). A panic on a store thread
//! fails the jobs in hand and the thread carries on. Dropping the store without `close` stops the
//! threads and leaves the journal for the next start, as a crash would.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use rusqlite::{Connection, OpenFlags};
use tokio::sync::oneshot;

use super::checkpointer::Checkpointer;
use super::durable::Durable;
use super::folded::FoldedTickets;
use super::folder::Folder;
use super::journal::{EncodedRecord, EncodedWrite, Journal};
use super::overlay::{self, ListMerge};
use super::pending::PendingView;
use super::reply::Reply;
use super::syncer::Syncer;
use super::wal::{mib_pages, WalFile, WalLimits};
use super::writer::{WriteOp, Writer};
use super::{
    rows, schema, DeadLetter, Failure, Outbox, OutboxEntry, OutboxRecord, OutboxSignal,
    OutboxStats, PendingEntry, Rejection, StoreError, StoreResult, TicketFilter, TicketStore,
    TicketWrite,
};
use crate::config::{StorageSettings, Synchronous};
use crate::domain::ids::TicketId;
use crate::domain::ticket::{Ticket, TicketEvent};
use crate::telemetry::panic_message;

type ReadJob = Box<dyn FnOnce(&Connection) + Send>;

pub struct SqliteStore {
    writer: mpsc::Sender<WriteOp>,
    readers: mpsc::Sender<ReadJob>,
    pending: Arc<PendingView>,
    signal: Arc<OutboxSignal>,
    /// Outbox rows up to here are durable: the only ones offered to the bridge.
    durable: Arc<Durable>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

/// Most writes in one group commit. Bigger batches share one commit and one flush among more writes;
/// past about a thousand the commit itself (and the replies it holds back) grows for nothing more.
pub const COMMIT_BATCH_MAX: usize = 1024;
/// Age at which journal rows are handed to the folder, and the delay before a failed fold is retried.
/// A second keeps the journal (and the unfolded tickets held in memory) to about a second of writes,
/// while a fold still takes enough rows to write each hot page once for many of them.
pub const FOLD_INTERVAL: Duration = Duration::from_secs(1);
/// Most frequent checkpoint of `switchboard.db`. Its WAL grows only by appends, so a checkpoint a
/// few times a second keeps it a few MiB long without competing with the writer for the disk.
pub const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(200);
/// `switchboard.db`'s WAL size past which a checkpoint holds writes back for a moment to restart the
/// log: bounds the file under constant writes, and is rarely reached at any real write rate.
pub const WAL_MAX_MIB: u64 = 64;
/// `tickets.db`'s WAL size at which the folder checkpoints it: folds rewrite the same pages (busy
/// tickets' rows, the history index), and between checkpoints each is copied into the file, and the
/// file flushed, once. Measured: a checkpoint after every fold cost 3-12% of update throughput.
pub const TABLES_CHECKPOINT_MIB: u64 = 64;

/// How the store paces its threads: the constants above, except in tests that need a store which
/// never folds on its own.
#[derive(Debug, Clone)]
pub struct Tuning {
    pub commit_batch_max: usize,
    pub fold_interval: Duration,
    pub checkpoint_interval: Duration,
    pub wal_max_mib: u64,
    pub tables_checkpoint_mib: u64,
}

impl Default for Tuning {
    fn default() -> Self {
        Self {
            commit_batch_max: COMMIT_BATCH_MAX,
            fold_interval: FOLD_INTERVAL,
            checkpoint_interval: CHECKPOINT_INTERVAL,
            wal_max_mib: WAL_MAX_MIB,
            tables_checkpoint_mib: TABLES_CHECKPOINT_MIB,
        }
    }
}

impl SqliteStore {
    /// Opens the store paced by the constants above; see [`Self::open_tuned`].
    pub fn open(settings: &StorageSettings) -> StoreResult<Self> {
        Self::open_tuned(settings, Tuning::default())
    }

    pub fn open_tuned(settings: &StorageSettings, tuning: Tuning) -> StoreResult<Self> {
        let dir = &settings.data_dir;
        std::fs::create_dir_all(dir).map_err(|source| StoreError::Io {
            path: dir.display().to_string(),
            source,
        })?;
        let path = dir.join("switchboard.db");
        // With `synchronous = full` the syncer thread flushes the WAL after the writer's commits, so
        // the writer's own connection commits without waiting for the disk (see `store::syncer`).
        let mut conn = open_connection(&path, Synchronous::Normal, Role::Writer)?;
        let tables_path = dir.join("tickets.db");
        schema::migrate(&mut conn, &tables_path)?;
        // Whatever the last run left in the WAL is made durable before anything is built on it.
        let wal_path = dir.join("switchboard.db-wal");
        let mut wal = WalFile::open(wal_path.clone()).map_err(|source| StoreError::Io {
            path: wal_path.display().to_string(),
            source,
        })?;
        wal.sync().map_err(|source| StoreError::Io {
            path: wal_path.display().to_string(),
            source,
        })?;
        let pending = Arc::new(PendingView::default());
        let wal_limits = WalLimits {
            restart_pages: mib_pages(tuning.wal_max_mib),
        };
        // What the tickets table holds for recently folded tickets: the folder's diffs and the
        // writer's version checks read it instead of the table.
        let folded = FoldedTickets::new(settings.fold_max_rows);
        // The folder's commits are flushed (with `synchronous = full`) before the journal drops what
        // they cover.
        let tables_conn = open_connection(&tables_path, settings.synchronous, Role::Folder)?;
        tables_conn.pragma_update(None, "wal_autocheckpoint", 0)?;
        let mut folder = Folder::new(
            tables_conn,
            folded.clone(),
            tuning.fold_interval,
            wal_limits.clone(),
            mib_pages(tuning.tables_checkpoint_mib),
        )?;
        let mut journal = Journal::recover(
            &conn,
            open_connection(&tables_path, Synchronous::Normal, Role::Reader)?,
            pending.clone(),
        )?
        .with_folded_cache(folded);
        if journal.len() > 0 {
            tracing::info!(
                rows = journal.len(),
                "folding the journal left by the previous run"
            );
            folder.take(journal.hand_over(i64::MAX));
            let report = folder.fold_pending();
            if let Some(why) = report.error {
                return Err(StoreError::CommitFailed(why));
            }
            journal.folded(&report);
        }
        // The last run may have stopped between a fold and dropping the rows it delivered.
        rows::fold_done(&conn, journal.folded_seq())?;
        let durable = Durable::new(journal.last_seq());

        // Checkpoints run on their own thread and connection, not inside the writer's commits.
        conn.pragma_update(None, "wal_autocheckpoint", 0)?;
        let (checkpoint_tx, checkpoint_rx) = mpsc::sync_channel(1);
        let checkpointer = Checkpointer {
            conn: open_connection(&path, settings.synchronous, Role::Checkpointer)?,
            interval: tuning.checkpoint_interval,
            wal: wal_limits,
        };

        let signal = Arc::new(OutboxSignal::default());
        let (sync_tx, sync_rx) = mpsc::channel();
        let syncer = Syncer {
            wal,
            durable: durable.clone(),
            view: pending.clone(),
            signal: signal.clone(),
        };
        let (wtx, wrx) = mpsc::channel();
        let (fold_tx, fold_rx) = mpsc::channel();
        let mut writer = Writer {
            batch_max: tuning.commit_batch_max,
            fold_max_rows: settings.fold_max_rows,
            fold_interval: tuning.fold_interval,
            folder: fold_tx,
            signal: signal.clone(),
            checkpoint: checkpoint_tx,
            durable: durable.clone(),
            syncer: None,
            commits: 0,
        };
        let spawn = |name: &str, f: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new()
                .name(name.into())
                .spawn(f)
                .map_err(|source| StoreError::Io {
                    path: format!("{name} thread"),
                    source,
                })
        };
        let mut threads = Vec::new();
        if settings.synchronous == Synchronous::Full {
            writer.syncer = Some(sync_tx);
            threads.push(spawn("store-sync", Box::new(move || syncer.run(sync_rx)))?);
        }
        let reports = wtx.clone();
        threads.push(spawn(
            "store-folder",
            Box::new(move || {
                folder.run(fold_rx, move |report| {
                    let _ = reports.send(WriteOp::Folded(Box::new(report)));
                })
            }),
        )?);
        threads.push(spawn(
            "store-writer",
            Box::new(move || writer.run(conn, journal, wrx)),
        )?);
        threads.push(spawn(
            "store-checkpoint",
            Box::new(move || checkpointer.run(checkpoint_rx)),
        )?);

        let (rtx, rrx) = mpsc::channel::<ReadJob>();
        let rrx = Arc::new(Mutex::new(rrx));
        for i in 0..settings.readers {
            let conn = open_reader(&path, &tables_path)?;
            let rrx = rrx.clone();
            threads.push(
                std::thread::Builder::new()
                    .name(format!("store-reader-{i}"))
                    .spawn(move || reader_loop(conn, rrx))
                    .map_err(|source| StoreError::Io {
                        path: "store-reader thread".into(),
                        source,
                    })?,
            );
        }
        Ok(Self {
            writer: wtx,
            readers: rtx,
            pending,
            signal,
            durable,
            threads: Mutex::new(threads),
        })
    }

    fn write<T: Send + 'static>(
        &self,
        op: impl FnOnce(Reply<T>) -> WriteOp,
    ) -> BoxFuture<'static, StoreResult<T>> {
        let (tx, rx) = oneshot::channel();
        let sent = self.writer.send(op(tx));
        async move {
            sent.map_err(|_| StoreError::Closed)?;
            rx.await.map_err(|_| StoreError::Closed)?
        }
        .boxed()
    }

    fn read<T: Send + 'static>(
        &self,
        job: impl FnOnce(&Connection) -> StoreResult<T> + Send + 'static,
    ) -> BoxFuture<'static, StoreResult<T>> {
        read_on(&self.readers, job)
    }

    /// Folds every acknowledged write into the tables now. No read needs it; it is there for an
    /// operator or a test that wants the tables themselves current.
    pub fn fold(&self) -> BoxFuture<'static, StoreResult<()>> {
        self.write(WriteOp::Fold)
    }
}

/// A page of tickets as of every write acknowledged before it was asked for (see [`super::overlay`]).
fn list_merged(
    conn: &Connection,
    view: &PendingView,
    filter: &TicketFilter,
) -> StoreResult<Vec<Ticket>> {
    // The view first: a write gone from it by now is in the tables read below.
    let unfolded = view.snapshots_after(filter.after);
    if unfolded.is_empty() {
        return rows::list(conn, filter);
    }
    // One transaction, so the watermark and the rows are of the same state of `tickets.db`.
    let tx = conn.unchecked_transaction()?;
    let watermark = rows::tables_folded_seq(&tx)?;
    let merge = ListMerge::new(filter, watermark, unfolded);
    let query = TicketFilter {
        limit: merge.table_limit(),
        ..filter.clone()
    };
    // Two closures take turns with the merge, one asking, one feeding; never at once.
    let merge = std::cell::RefCell::new(merge);
    rows::list_scan(
        &tx,
        &query,
        |id| merge.borrow().keeps_table_row(id),
        |t| merge.borrow_mut().push(t),
    )?;
    Ok(merge.into_inner().finish())
}

/// A page of `id`'s history as of every write acknowledged before it was asked for.
fn events_merged(
    conn: &Connection,
    view: &PendingView,
    id: TicketId,
    after_seq: i64,
    limit: u32,
) -> StoreResult<Vec<(i64, TicketEvent)>> {
    let unfolded = view.events_after(id, after_seq);
    if unfolded.is_empty() {
        return rows::events(conn, id, after_seq, limit);
    }
    let tx = conn.unchecked_transaction()?;
    let watermark = rows::tables_folded_seq(&tx)?;
    let tables = rows::events(&tx, id, after_seq, limit)?;
    Ok(overlay::merge_events(tables, unfolded, watermark, limit))
}

fn read_on<T: Send + 'static>(
    readers: &mpsc::Sender<ReadJob>,
    job: impl FnOnce(&Connection) -> StoreResult<T> + Send + 'static,
) -> BoxFuture<'static, StoreResult<T>> {
    let (tx, rx) = oneshot::channel();
    let sent = readers.send(Box::new(move |conn: &Connection| {
        let result = catch_unwind(AssertUnwindSafe(|| job(conn)))
            .unwrap_or_else(|p| Err(StoreError::Panicked(panic_message(p.as_ref()))));
        let _ = tx.send(result);
    }));
    async move {
        sent.map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }
    .boxed()
}

fn sync_pragma(sync: Synchronous) -> &'static str {
    match sync {
        Synchronous::Full => "FULL",
        Synchronous::Normal => "NORMAL",
    }
}

/// A query-only connection to `switchboard.db` with `tickets.db` attached: the ticket tables' names
/// are not in the first, so queries name them unqualified.
fn open_reader(path: &Path, tables: &Path) -> StoreResult<Connection> {
    let conn = open_connection(path, Synchronous::Normal, Role::Reader)?;
    let tables = tables
        .to_str()
        .ok_or_else(|| StoreError::Corrupt(format!("{} is not UTF-8", tables.display())))?;
    conn.execute("ATTACH DATABASE ?1 AS tables", [tables])?;
    conn.pragma_update(Some("tables"), "cache_size", -4096)?;
    Ok(conn)
}

/// What a connection is for, which sets its page cache and whether it may write.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    /// Appends to the journal: a small cache holds the pages at its end.
    Writer,
    /// Rewrites the ticket tables' hot pages, many per fold: the one big cache.
    Folder,
    /// Queries; they lean on the OS page cache, so memory follows live actors rather than the size of
    /// the database.
    Reader,
    /// Only checkpoints.
    Checkpointer,
}

fn open_connection(path: &Path, sync: Synchronous, role: Role) -> StoreResult<Connection> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", sync_pragma(sync))?;
    conn.pragma_update(None, "busy_timeout", 5000)?;
    // Statement journals of the per-write savepoints stay in memory instead of a temp file a commit.
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    // In KiB. A bigger cache also costs: SQLite scans its hash table at the end of every transaction.
    let cache_kib = match role {
        Role::Folder => 16384,
        Role::Writer | Role::Reader => 4096,
        Role::Checkpointer => 2048,
    };
    conn.pragma_update(None, "cache_size", -cache_kib)?;
    conn.set_prepared_statement_cache_capacity(64);
    if role == Role::Reader {
        conn.pragma_update(None, "query_only", true)?;
    }
    Ok(conn)
}

fn reader_loop(conn: Connection, jobs: Arc<Mutex<mpsc::Receiver<ReadJob>>>) {
    loop {
        let job = {
            let Ok(rx) = jobs.lock() else { return };
            match rx.recv() {
                Ok(job) => job,
                Err(_) => return,
            }
        };
        job(&conn);
    }
}

impl TicketStore for SqliteStore {
    fn create(&self, write: TicketWrite) -> BoxFuture<'static, StoreResult<()>> {
        match EncodedWrite::new(write) {
            Ok(w) => self.write(|r| WriteOp::Create(Box::new(w), r)),
            Err(e) => futures_util::future::ready(Err(e)).boxed(),
        }
    }

    fn create_with(
        &self,
        write: TicketWrite,
        record: OutboxRecord,
    ) -> BoxFuture<'static, StoreResult<()>> {
        match EncodedWrite::new(write).and_then(|w| Ok((w, EncodedRecord::new(&record)?))) {
            Ok((w, r)) => self.write(|reply| WriteOp::CreateWith(Box::new(w), Box::new(r), reply)),
            Err(e) => futures_util::future::ready(Err(e)).boxed(),
        }
    }

    fn update(&self, write: TicketWrite) -> BoxFuture<'static, StoreResult<()>> {
        match EncodedWrite::new(write) {
            Ok(w) => self.write(|r| WriteOp::Update(Box::new(w), r)),
            Err(e) => futures_util::future::ready(Err(e)).boxed(),
        }
    }

    fn import(&self, ticket: Ticket, event: TicketEvent) -> BoxFuture<'static, StoreResult<()>> {
        let write = TicketWrite {
            ticket,
            event,
            comment: None,
            request_id: None,
        };
        match EncodedWrite::new(write) {
            Ok(w) => self.write(|r| WriteOp::Import(Box::new(w), r)),
            Err(e) => futures_util::future::ready(Err(e)).boxed(),
        }
    }

    fn load(&self, id: TicketId) -> BoxFuture<'static, StoreResult<Option<Ticket>>> {
        if let Some(ticket) = self.pending.get(id) {
            return futures_util::future::ready(Ok(Some(ticket))).boxed();
        }
        self.read(move |c| rows::load(c, id))
    }

    fn list(&self, filter: TicketFilter) -> BoxFuture<'static, StoreResult<Vec<Ticket>>> {
        let view = self.pending.clone();
        self.read(move |c| list_merged(c, &view, &filter))
    }

    fn events(
        &self,
        id: TicketId,
        after_seq: i64,
        limit: u32,
    ) -> BoxFuture<'static, StoreResult<Vec<(i64, TicketEvent)>>> {
        let view = self.pending.clone();
        self.read(move |c| events_merged(c, &view, id, after_seq, limit))
    }

    fn ping(&self) -> BoxFuture<'static, StoreResult<()>> {
        let read = self.read(|c| {
            c.query_row("SELECT 1", [], |_| Ok(()))?;
            Ok(())
        });
        let write = self.write(WriteOp::Ping);
        async move {
            read.await?;
            write.await
        }
        .boxed()
    }

    fn close(&self) -> BoxFuture<'static, ()> {
        let (tx, rx) = oneshot::channel();
        let sent = self.writer.send(WriteOp::Close(tx)).is_ok();
        async move {
            if sent {
                let _ = rx.await;
            }
        }
        .boxed()
    }
}

impl Outbox for SqliteStore {
    fn enqueue(&self, record: OutboxRecord) -> BoxFuture<'static, StoreResult<i64>> {
        match EncodedRecord::new(&record) {
            Ok(r) => self.write(|reply| WriteOp::Enqueue(Box::new(r), reply)),
            Err(e) => futures_util::future::ready(Err(e)).boxed(),
        }
    }

    fn peek(&self, limit: usize) -> BoxFuture<'static, StoreResult<Vec<OutboxEntry>>> {
        // Rows committed but not yet flushed are not offered: Django must never hold an event that a
        // crash could take back.
        let durable = self.durable.seq();
        self.read(move |c| rows::outbox_peek(c, limit, durable))
    }

    fn ack(&self, seqs: Vec<i64>) -> BoxFuture<'static, StoreResult<()>> {
        self.write(|r| WriteOp::OutboxAck(seqs, r))
    }

    fn dead_letter(&self, rejected: Vec<Rejection>) -> BoxFuture<'static, StoreResult<()>> {
        self.write(|r| WriteOp::DeadLetter(rejected, r))
    }

    fn record_failures(&self, failures: Vec<Failure>) -> BoxFuture<'static, StoreResult<()>> {
        self.write(|r| WriteOp::RecordFailures(failures, r))
    }

    fn pending(&self, limit: u32) -> BoxFuture<'static, StoreResult<Vec<PendingEntry>>> {
        self.read(move |c| rows::outbox_pending(c, limit))
    }

    fn dead_letter_entry(&self, seq: i64, error: String) -> BoxFuture<'static, StoreResult<bool>> {
        let rejection = Rejection {
            seq,
            status_code: None,
            error,
        };
        self.write(|r| WriteOp::DeadLetterEntry(rejection, r))
    }

    fn stats(&self) -> BoxFuture<'static, StoreResult<OutboxStats>> {
        self.read(rows::outbox_stats)
    }

    fn dead_letters(&self, limit: u32) -> BoxFuture<'static, StoreResult<Vec<DeadLetter>>> {
        self.read(move |c| rows::dead_letters(c, limit))
    }

    fn retry_dead_letter(&self, id: i64) -> BoxFuture<'static, StoreResult<bool>> {
        self.write(|r| WriteOp::RetryDeadLetter(id, r))
    }

    fn signal(&self) -> Arc<OutboxSignal> {
        self.signal.clone()
    }
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        // Stopping the writer (the folder holds a sender to its channel) and closing the channels ends
        // the threads; joining keeps the database closed cleanly on exit.
        let _ = self.writer.send(WriteOp::Stop);
        let (dead, _) = mpsc::channel();
        self.writer = dead;
        let (dead, _) = mpsc::channel();
        self.readers = dead;
        if let Ok(mut threads) = self.threads.lock() {
            for t in threads.drain(..) {
                let _ = t.join();
            }
        }
    }
}

#[cfg(test)]
pub(super) mod tests;
