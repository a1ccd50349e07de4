//! [`TicketStore`] on SQLite in WAL mode.
//!
//! One writer thread owns the only write connection. It blocks for the first queued write, then takes
//! whatever else is queued (up to `storage.commit_batch_max`) and runs them all in one transaction;
//! every check of a ticket write runs before its first insert, so a refused write leaves nothing behind.
//! With `synchronous = full` the writer commits without waiting for the disk and hands the batch to the
//! syncer thread (see [`super::syncer`]), which flushes the WAL once for every batch waiting and only then
//! replies, so an acknowledged write is on disk (group commit: one flush for many requests).
//! A ticket write is one outbox row, which is also its journal entry; between batches the writer hands
//! durable journal rows to the folder thread, which applies them to the ticket tables in their own
//! file, `tickets.db` (see [`super::journal`] and [`super::folder`]). A checkpointer thread copies the
//! WAL into the database file, so commits do not pay for it.
//! Reader threads each own a query-only connection to `switchboard.db` with `tickets.db` attached. A
//! panic on a store thread fails the jobs in hand and the thread carries on with a fresh transaction.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use rusqlite::{Connection, OpenFlags};
use tokio::sync::oneshot;

use super::folder::{FoldJob, FoldReport, FoldWaiter, Folder};
use super::journal::{EncodedRecord, EncodedWrite, Journal, JournalOp, PendingView};
use super::rows::Requeued;
use super::syncer::{Durable, SyncJob, Syncer, WalFile};
use super::{
    rows, schema, DeadLetter, Outbox, OutboxEntry, OutboxRecord, OutboxSignal, OutboxStats,
    Rejection, StoreError, StoreResult, TicketFilter, TicketStore, TicketWrite,
};
use crate::config::{StorageSettings, Synchronous};
use crate::domain::ids::TicketId;
use crate::domain::ticket::{Ticket, TicketEvent};
use crate::metrics as m;
use crate::telemetry::panic_message;

type Reply<T> = oneshot::Sender<StoreResult<T>>;

/// The typed writes the writer thread performs.
enum WriteOp {
    Create(Box<EncodedWrite>, Reply<()>),
    Update(Box<EncodedWrite>, Reply<()>),
    Import(Box<EncodedWrite>, Reply<()>),
    /// An outbox record that is no ticket change; replies with its `seq`.
    Enqueue(Box<EncodedRecord>, Reply<i64>),
    OutboxAck(Vec<i64>, Reply<()>),
    DeadLetter(Vec<Rejection>, Reply<()>),
    RetryDeadLetter(i64, Reply<bool>),
    Ping(Reply<()>),
    /// Fold the journal now, so the tables answer queries with every acknowledged write.
    Fold(Reply<()>),
    /// From the folder thread: a fold finished (or failed).
    Folded(Box<FoldReport>),
    /// Fold everything, then stop the store's threads.
    Close(oneshot::Sender<()>),
    /// Stop now, leaving the journal for the next start (the store was dropped without `close`).
    Stop,
}

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

impl SqliteStore {
    /// Opens (creating if needed) `data_dir/switchboard.db` and `data_dir/tickets.db`, migrates them,
    /// folds what the last run left in the journal and starts the threads.
    pub fn open(settings: &StorageSettings) -> StoreResult<Self> {
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
            restart_pages: mib_pages(settings.wal_max_mib),
        };
        // The folder keeps the rows of one full fold's tickets for its diffs; the writer keeps only
        // versions, so it can afford twice as many. Both caches are emptied when full.
        let cache = settings.fold_max_rows;
        // The folder's commits are flushed (with `synchronous = full`) before the journal drops what
        // they cover.
        let tables_conn = open_connection(&tables_path, settings.synchronous, Role::Folder)?;
        tables_conn.pragma_update(None, "wal_autocheckpoint", 0)?;
        let mut folder = Folder::new(
            tables_conn,
            cache,
            Duration::from_millis(settings.fold_interval_ms),
            wal_limits.clone(),
            mib_pages(settings.tables_checkpoint_mib),
        )?;
        let mut journal = Journal::recover(
            &conn,
            open_connection(&tables_path, Synchronous::Normal, Role::Reader)?,
            pending.clone(),
        )?
        .with_folded_cache(cache.saturating_mul(2));
        if journal.len() > 0 {
            tracing::info!(
                rows = journal.len(),
                "folding the journal left by the previous run"
            );
            folder.take(journal.hand_over(i64::MAX));
            let report = folder.fold_pending();
            if let Some(e) = &report.error {
                return Err(StoreError::CommitFailed(format!(
                    "folding the journal left by the previous run: {e}"
                )));
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
            interval: Duration::from_millis(settings.checkpoint_interval_ms),
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
            batch_max: settings.commit_batch_max,
            fold_max_rows: settings.fold_max_rows,
            fold_interval: Duration::from_millis(settings.fold_interval_ms),
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

    /// A read of the ticket tables that must see every acknowledged write: folds the journal first
    /// when it holds any.
    fn read_folded<T: Send + 'static>(
        &self,
        job: impl FnOnce(&Connection) -> StoreResult<T> + Send + 'static,
    ) -> BoxFuture<'static, StoreResult<T>> {
        if self.pending.is_empty() {
            return self.read(job);
        }
        let fold = self.write(WriteOp::Fold);
        let readers = self.readers.clone();
        async move {
            fold.await?;
            read_on(&readers, job).await
        }
        .boxed()
    }
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

/// What a write did, to be replied once the transaction's fate is known.
pub(super) enum Done {
    Unit(Reply<()>, StoreResult<()>),
    Bool(Reply<bool>, StoreResult<bool>),
    Seq(Reply<i64>, StoreResult<i64>),
}

impl Done {
    /// A write that never ran because its transaction could not start.
    fn not_run(op: WriteOp) -> Option<Self> {
        let err = || {
            Err(StoreError::CommitFailed(
                "the transaction did not commit".into(),
            ))
        };
        Some(match op {
            WriteOp::Create(_, r)
            | WriteOp::Update(_, r)
            | WriteOp::Import(_, r)
            | WriteOp::OutboxAck(_, r)
            | WriteOp::DeadLetter(_, r)
            | WriteOp::Ping(r)
            | WriteOp::Fold(r) => Done::Unit(r, err()),
            WriteOp::RetryDeadLetter(_, r) => Done::Bool(r, err().map(|()| false)),
            WriteOp::Enqueue(_, r) => Done::Seq(r, err().map(|()| 0)),
            WriteOp::Close(_) | WriteOp::Stop | WriteOp::Folded(_) => return None,
        })
    }

    /// Sends the result, or `failed` for every write when the transaction did not commit.
    pub(super) fn reply(self, failed: Option<&str>) {
        let fail = |why: &str| StoreError::CommitFailed(why.to_string());
        match self {
            Done::Unit(tx, r) => {
                let _ = tx.send(failed.map_or(r, |why| Err(fail(why))));
            }
            Done::Bool(tx, r) => {
                let _ = tx.send(failed.map_or(r, |why| Err(fail(why))));
            }
            Done::Seq(tx, r) => {
                let _ = tx.send(failed.map_or(r, |why| Err(fail(why))));
            }
        }
    }
}

/// The checkpointer thread: copies committed WAL frames of `switchboard.db` into the database file.
/// (`tickets.db` has one writer, the folder, which checkpoints it itself once its WAL has grown.)
struct Checkpointer {
    conn: Connection,
    interval: Duration,
    wal: WalLimits,
}

/// How a database's write-ahead log is kept short.
#[derive(Clone, Debug)]
pub(super) struct WalLimits {
    /// Past this many pages left in the log after a passive checkpoint, run a restarting one.
    pub restart_pages: i64,
}

impl Checkpointer {
    /// Checkpoints after each wake-up from the writer, at most once per `interval`: wake-ups in the
    /// meantime fold into the next checkpoint. Ends when the writer is gone.
    fn run(self, wakeups: mpsc::Receiver<()>) {
        let mut due = false;
        loop {
            if !due && wakeups.recv().is_err() {
                return;
            }
            let started = Instant::now();
            checkpoint(&self.conn, "journal", &self.wal);
            due = false;
            loop {
                let rest = self.interval.saturating_sub(started.elapsed());
                if rest.is_zero() {
                    break;
                }
                match wakeups.recv_timeout(rest) {
                    Ok(()) => due = true,
                    Err(mpsc::RecvTimeoutError::Timeout) => break,
                    Err(mpsc::RecvTimeoutError::Disconnected) => return,
                }
            }
        }
    }
}

/// Checkpoints `conn`'s database (`db` names it in metrics). PASSIVE never waits for the writer. Under
/// constant writes it never sees the log fully copied at a moment the writer could start it over, so
/// past `wal.restart_pages` a RESTART (which waits for the writer's transaction to end, then holds the
/// next one back while it copies the few frames left) lets the log begin again from its start.
pub(super) fn checkpoint(conn: &Connection, db: &'static str, wal: &WalLimits) {
    let Some(pages) = run_checkpoint(conn, db, "passive") else {
        return;
    };
    let pages = if pages > wal.restart_pages {
        run_checkpoint(conn, db, "restart").unwrap_or(pages)
    } else {
        pages
    };
    metrics::gauge!(m::STORE_WAL_PAGES, "db" => db).set(pages as f64);
}

/// Runs one checkpoint; returns the pages in the log after it.
fn run_checkpoint(conn: &Connection, db: &'static str, mode: &'static str) -> Option<i64> {
    let started = Instant::now();
    let sql = if mode == "restart" {
        "PRAGMA wal_checkpoint(RESTART)"
    } else {
        "PRAGMA wal_checkpoint(PASSIVE)"
    };
    match conn.query_row(sql, [], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?))) {
        Ok((_busy, log_pages)) => {
            metrics::histogram!(m::STORE_CHECKPOINT_DURATION, "db" => db, "mode" => mode)
                .record(started.elapsed().as_secs_f64());
            Some(log_pages)
        }
        Err(e) => {
            tracing::warn!(error = %e, db, mode, "WAL checkpoint failed; the next one retries");
            None
        }
    }
}

/// WAL frames (4 KiB pages) in `mib` MiB.
fn mib_pages(mib: u64) -> i64 {
    (mib * 1024 * 1024 / 4096) as i64
}

/// The writer thread's settings.
struct Writer {
    batch_max: usize,
    fold_max_rows: usize,
    fold_interval: Duration,
    /// Where durable journal rows go to be folded.
    folder: mpsc::Sender<FoldJob>,
    signal: Arc<OutboxSignal>,
    checkpoint: mpsc::SyncSender<()>,
    /// How far the journal is durable; folds take only rows up to it.
    durable: Arc<Durable>,
    /// The syncer, with `synchronous = full`: committed batches wait there for their flush. Without
    /// it a commit counts as durable when it returns (`synchronous = normal`).
    syncer: Option<mpsc::Sender<SyncJob>>,
    /// Transactions committed so far.
    commits: u64,
}

/// What one batch leaves to do after its transaction.
#[derive(Default)]
struct Batch {
    done: Vec<Done>,
    fold_waiters: Vec<Reply<()>>,
    outbox_appended: u64,
    closing: Option<oneshot::Sender<()>>,
    stopping: bool,
}

impl Writer {
    fn run(mut self, mut conn: Connection, mut journal: Journal, jobs: mpsc::Receiver<WriteOp>) {
        let mut closing: Option<oneshot::Sender<()>> = None;
        while closing.is_none() {
            let first = match self.fold_due_in(&journal) {
                None => match jobs.recv() {
                    Ok(op) => op,
                    Err(_) => break,
                },
                Some(due) => match jobs.recv_timeout(due) {
                    Ok(op) => op,
                    Err(mpsc::RecvTimeoutError::Timeout) => {
                        self.hand_over(&mut journal, Vec::new(), None);
                        continue;
                    }
                    Err(mpsc::RecvTimeoutError::Disconnected) => break,
                },
            };
            let mut ops = vec![first];
            while ops.len() < self.batch_max {
                match jobs.try_recv() {
                    Ok(op) => ops.push(op),
                    Err(_) => break,
                }
            }
            let batch = self.commit(&mut conn, &mut journal, ops);
            if batch.stopping {
                return;
            }
            closing = batch.closing;
            if !batch.fold_waiters.is_empty() || closing.is_some() {
                // Everything acknowledged must be in the tables, so wait for the last flush first.
                let close = closing.as_ref().map(|_| mpsc::sync_channel(1));
                let (close_tx, close_rx) = close.unzip();
                match self.durable.wait_for(self.commits) {
                    Ok(()) => self.hand_over(&mut journal, batch.fold_waiters, close_tx),
                    Err(why) => {
                        for tx in batch.fold_waiters {
                            let _ = tx.send(Err(StoreError::CommitFailed(why.clone())));
                        }
                        // Nothing more can be folded; the folder still has to stop.
                        let job = FoldJob {
                            close: close_tx,
                            ..FoldJob::default()
                        };
                        let _ = self.folder.send(job);
                    }
                }
                if let Some(rx) = close_rx {
                    // Until the folder has folded and checkpointed `tickets.db` (or is gone).
                    let _ = rx.recv();
                }
            } else if self.fold_due_in(&journal).is_some_and(|d| d.is_zero()) {
                self.hand_over(&mut journal, Vec::new(), None);
            }
        }
        if let Some(done) = closing {
            let _ = conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)");
            drop(conn);
            let _ = done.send(());
        }
    }

    /// Hands the durable journal rows to the folder, with the queries to answer once they are folded
    /// (and, when closing, where to say the folder is done).
    fn hand_over(
        &self,
        journal: &mut Journal,
        waiters: Vec<FoldWaiter>,
        close: Option<mpsc::SyncSender<()>>,
    ) {
        let entries = journal.hand_over(self.durable.seq());
        if entries.is_empty() && waiters.is_empty() && close.is_none() {
            return;
        }
        let job = FoldJob {
            entries,
            waiters,
            close,
        };
        if let Err(mpsc::SendError(job)) = self.folder.send(job) {
            // The folder stops only on close; the rows stay journalled on disk for the next start.
            tracing::error!("the store's folder has stopped; journal rows are not folded");
            for tx in job.waiters {
                let _ = tx.send(Err(StoreError::CommitFailed(
                    "the store's folder has stopped".into(),
                )));
            }
        }
    }

    /// How long until a hand-over to the folder is due, as [`Journal::fold_due_in`], except that one
    /// due while none of its rows is durable yet waits a millisecond for the syncer rather than spinning.
    fn fold_due_in(&self, journal: &Journal) -> Option<Duration> {
        let due = journal.fold_due_in(self.fold_max_rows, self.fold_interval)?;
        if due.is_zero() && journal.rows_up_to(self.durable.seq()) == 0 {
            return Some(Duration::from_millis(1));
        }
        Some(due)
    }

    /// Runs `ops` in one transaction and replies to each once its fate is known.
    fn commit(&mut self, conn: &mut Connection, journal: &mut Journal, ops: Vec<WriteOp>) -> Batch {
        let started = Instant::now();
        let size = ops.len();
        let mut batch = Batch::default();
        if let Some(why) = self.durable.failure() {
            // Nothing can be made durable any more: refuse rather than commit into the WAL.
            for op in ops {
                match op {
                    WriteOp::Close(reply) => batch.closing = Some(reply),
                    WriteOp::Stop => batch.stopping = true,
                    WriteOp::Folded(report) => not_run_report(journal, *report),
                    WriteOp::Fold(reply) => {
                        let _ = reply.send(Err(StoreError::CommitFailed(why.clone())));
                    }
                    op => {
                        if let Some(d) = Done::not_run(op) {
                            d.reply(Some(&why));
                        }
                    }
                }
            }
            return batch;
        }
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            run_batch(conn, journal, ops, &mut batch)
        }));
        let failure = match outcome {
            Ok(Ok(())) => {
                metrics::histogram!(m::STORE_COMMIT_BATCH).record(size as f64);
                metrics::histogram!(m::STORE_COMMIT_DURATION)
                    .record(started.elapsed().as_secs_f64());
                self.commits += 1;
                match &self.syncer {
                    Some(syncer) => {
                        let job = SyncJob {
                            done: std::mem::take(&mut batch.done),
                            publish: journal.committed_unpublished(),
                            outbox_appended: batch.outbox_appended,
                            seq: journal.last_seq(),
                            commit: self.commits,
                        };
                        if let Err(mpsc::SendError(job)) = syncer.send(job) {
                            // Only when the syncer thread died: nothing can be acknowledged.
                            for d in job.done {
                                d.reply(Some("the store's syncer has stopped"));
                            }
                        }
                    }
                    None => {
                        journal.committed();
                        self.durable.advance(self.commits, journal.last_seq());
                        for d in batch.done.drain(..) {
                            d.reply(None);
                        }
                        if batch.outbox_appended > 0 {
                            self.signal.appended(batch.outbox_appended);
                        }
                    }
                }
                let _ = self.checkpoint.try_send(());
                return batch;
            }
            Ok(Err(e)) => {
                // BEGIN or COMMIT failed: nothing in the batch is durable, and every caller is told.
                metrics::counter!(m::STORE_WRITE_ERRORS).increment(size as u64);
                tracing::error!(error = %e, batch = size, "store commit failed");
                e.to_string()
            }
            Err(panic) => {
                let why = panic_message(panic.as_ref());
                metrics::counter!(m::ACTOR_RESTARTS, "kind" => "store_writer", "cause" => "panic")
                    .increment(1);
                tracing::error!(panic = %why, batch = size, "store writer panicked; batch failed, writer continues");
                if !conn.is_autocommit() {
                    let _ = conn.execute_batch("ROLLBACK");
                }
                why
            }
        };
        if let Err(e) = journal.rolled_back(conn) {
            tracing::error!(error = %e, "could not re-read the journal after a failed commit");
        }
        for d in batch.done.drain(..) {
            d.reply(Some(&failure));
        }
        batch
    }
}

fn run_batch(
    conn: &mut Connection,
    journal: &mut Journal,
    ops: Vec<WriteOp>,
    batch: &mut Batch,
) -> StoreResult<()> {
    let tx = match conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate) {
        Ok(tx) => tx,
        Err(e) => {
            for op in ops {
                match op {
                    WriteOp::Close(reply) => batch.closing = Some(reply),
                    WriteOp::Stop => batch.stopping = true,
                    WriteOp::Folded(report) => not_run_report(journal, *report),
                    op => batch.done.extend(Done::not_run(op)),
                }
            }
            return Err(e.into());
        }
    };
    let mut ops = ops.into_iter();
    while let Some(op) = ops.next() {
        let folded = journal.folded_seq();
        let (jop, write, reply) = match op {
            WriteOp::Create(w, reply) => (JournalOp::Create, *w, reply),
            WriteOp::Update(w, reply) => (JournalOp::Update, *w, reply),
            WriteOp::Import(w, reply) => (JournalOp::Import, *w, reply),
            WriteOp::OutboxAck(seqs, reply) => {
                let r = in_savepoint(&tx, |c| rows::outbox_ack(c, &seqs, folded));
                batch.done.push(Done::Unit(reply, r));
                continue;
            }
            WriteOp::DeadLetter(rejected, reply) => {
                let r = in_savepoint(&tx, |c| rows::outbox_dead_letter(c, &rejected, folded));
                batch.done.push(Done::Unit(reply, r));
                continue;
            }
            WriteOp::RetryDeadLetter(id, reply) => {
                let r = in_savepoint(&tx, |c| rows::retry_dead_letter(c, id));
                if let Ok(Requeued::Appended(seq)) = r {
                    // A new row: the flush that acknowledges it makes it offerable, and a fold's
                    // watermark must pass it before it can go.
                    journal.record_unfolded(seq);
                }
                if matches!(r, Ok(Requeued::Revived | Requeued::Appended(_))) {
                    batch.outbox_appended += 1;
                }
                let r = r.map(|q| q != Requeued::Unknown);
                batch.done.push(Done::Bool(reply, r));
                continue;
            }
            WriteOp::Enqueue(record, reply) => {
                let r = in_savepoint(&tx, |c| {
                    rows::insert_record(c, &record.key, record.ticket_id, &record.payload)
                });
                if let Ok(seq) = r {
                    journal.record_unfolded(seq);
                    batch.outbox_appended += 1;
                }
                batch.done.push(Done::Seq(reply, r));
                continue;
            }
            WriteOp::Ping(reply) => {
                batch.done.push(Done::Unit(reply, Ok(())));
                continue;
            }
            WriteOp::Fold(reply) => {
                batch.fold_waiters.push(reply);
                continue;
            }
            WriteOp::Folded(report) => {
                // The tables have the rows whatever this transaction's fate; the journal's own record
                // of it is tidied again by the next report if this one rolls back.
                journal.folded(&report);
                let cleaned = match &report.error {
                    None => in_savepoint(&tx, |c| rows::fold_done(c, report.watermark)),
                    Some(_) => Ok(()),
                };
                if let Err(e) = cleaned {
                    tracing::warn!(error = %e, "could not drop delivered rows after a fold");
                }
                for tx in report.waiters {
                    batch.done.push(Done::Unit(tx, fold_outcome(&report.error)));
                }
                continue;
            }
            WriteOp::Close(reply) => {
                batch.closing = Some(reply);
                continue;
            }
            WriteOp::Stop => {
                batch.stopping = true;
                continue;
            }
        };
        // No savepoint: `append` refuses a write (conflict, duplicate) before it inserts anything,
        // and an insert that fails after that fails the whole transaction, every caller told.
        let r = match journal.append(&tx, jop, write) {
            Ok(Some(staged)) => {
                batch.outbox_appended += (jop != JournalOp::Import) as u64;
                journal.record(staged);
                Ok(())
            }
            Ok(None) => Ok(()),
            Err(e @ (StoreError::AlreadyExists(_) | StoreError::VersionConflict { .. })) => {
                metrics::counter!(m::STORE_WRITE_ERRORS).increment(1);
                Err(e)
            }
            Err(e) => {
                batch.done.push(Done::Unit(
                    reply,
                    Err(StoreError::CommitFailed(e.to_string())),
                ));
                for op in ops {
                    match op {
                        WriteOp::Close(reply) => batch.closing = Some(reply),
                        WriteOp::Fold(reply) => batch.fold_waiters.push(reply),
                        WriteOp::Stop => batch.stopping = true,
                        WriteOp::Folded(report) => not_run_report(journal, *report),
                        op => batch.done.extend(Done::not_run(op)),
                    }
                }
                return Err(e);
            }
        };
        batch.done.push(Done::Unit(reply, r));
    }
    tx.commit()?;
    Ok(())
}

/// A fold report that arrived in a batch whose transaction could not run: the fold itself stands, so
/// the journal still learns of it and its waiters get its outcome.
fn not_run_report(journal: &mut Journal, report: FoldReport) {
    journal.folded(&report);
    for tx in report.waiters {
        let _ = tx.send(fold_outcome(&report.error));
    }
}

fn fold_outcome(error: &Option<String>) -> StoreResult<()> {
    match error {
        None => Ok(()),
        Some(why) => Err(StoreError::CommitFailed(format!("fold failed: {why}"))),
    }
}

fn in_savepoint<T>(
    tx: &rusqlite::Transaction<'_>,
    f: impl FnOnce(&Connection) -> StoreResult<T>,
) -> StoreResult<T> {
    tx.prepare_cached("SAVEPOINT op")?.execute([])?;
    match f(tx) {
        Ok(v) => {
            tx.prepare_cached("RELEASE op")?.execute([])?;
            Ok(v)
        }
        Err(e) => {
            tx.prepare_cached("ROLLBACK TO op")?.execute([])?;
            tx.prepare_cached("RELEASE op")?.execute([])?;
            metrics::counter!(m::STORE_WRITE_ERRORS).increment(1);
            Err(e)
        }
    }
}

impl TicketStore for SqliteStore {
    fn create(&self, write: TicketWrite) -> BoxFuture<'static, StoreResult<()>> {
        match EncodedWrite::new(write) {
            Ok(w) => self.write(|r| WriteOp::Create(Box::new(w), r)),
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
        self.read_folded(move |c| rows::list(c, &filter))
    }

    fn events(
        &self,
        id: TicketId,
        after_seq: i64,
        limit: u32,
    ) -> BoxFuture<'static, StoreResult<Vec<(i64, TicketEvent)>>> {
        self.read_folded(move |c| rows::events(c, id, after_seq, limit))
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
