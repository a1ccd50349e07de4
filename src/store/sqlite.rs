//! [`TicketStore`] on SQLite in WAL mode.
//!
//! One writer thread owns the only write connection. It blocks for the first queued write, then takes
//! whatever else is queued (up to `storage.commit_batch_max`) and runs them all in one transaction;
//! every check of a ticket write runs before its first insert, so a refused write leaves nothing behind.
//! With `synchronous = full` the writer commits without waiting for the disk and hands the batch to the
//! syncer thread (see [`super::syncer`]), which flushes the WAL once for every batch waiting and only then
//! replies, so an acknowledged write is on disk (group commit: one flush for many requests).
//! A ticket write is one outbox row, which is also its journal entry; between batches the writer folds
//! durable journal rows into the ticket tables (see [`super::journal`]). A checkpointer thread copies
//! the WAL into the database file, so commits do not pay for it.
//! Reader threads each own a query-only connection. A panic on a store thread fails the jobs in hand and
//! the thread carries on with a fresh transaction.

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

use super::journal::{EncodedWrite, Journal, JournalOp, PendingView};
use super::syncer::{Durable, SyncJob, Syncer, WalFile};
use super::{
    rows, schema, DeadLetter, OutboxEntry, OutboxSignal, OutboxStats, Rejection, StoreError,
    StoreResult, TicketFilter, TicketStore, TicketWrite,
};
use crate::config::{StorageSettings, Synchronous};
use crate::metrics as m;
use crate::telemetry::panic_message;
use crate::ticket::model::{Ticket, TicketEvent, TicketId};

type Reply<T> = oneshot::Sender<StoreResult<T>>;

/// The typed writes the writer thread performs.
enum WriteOp {
    Create(Box<EncodedWrite>, Reply<()>),
    Update(Box<EncodedWrite>, Reply<()>),
    Import(Box<EncodedWrite>, Reply<()>),
    OutboxAck(Vec<i64>, Reply<()>),
    DeadLetter(Vec<Rejection>, Reply<()>),
    RetryDeadLetter(i64, Reply<bool>),
    Ping(Reply<()>),
    /// Fold the journal now, so the tables answer queries with every acknowledged write.
    Fold(Reply<()>),
    Close(oneshot::Sender<()>),
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
    /// Opens (creating if needed) `data_dir/switchboard.db`, migrates it and starts the threads.
    pub fn open(settings: &StorageSettings) -> StoreResult<Self> {
        let dir = &settings.data_dir;
        std::fs::create_dir_all(dir).map_err(|source| StoreError::Io {
            path: dir.display().to_string(),
            source,
        })?;
        let path = dir.join("switchboard.db");
        // With `synchronous = full` the syncer thread flushes the WAL after the writer's commits, so
        // the writer's own connection commits without waiting for the disk (see `store::syncer`).
        let mut conn = open_connection(&path, Synchronous::Normal, false)?;
        schema::migrate(&mut conn)?;
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
        // The folded-ticket cache holds what two backlog folds touch, as it is emptied when full.
        let mut journal = Journal::recover(&conn, pending.clone())?
            .with_folded_cache(settings.fold_max_rows.saturating_mul(2));
        if journal.len() > 0 {
            tracing::info!(
                rows = journal.len(),
                "folding the journal left by the previous run"
            );
            journal.fold(&mut conn, usize::MAX)?;
        }
        let durable = Durable::new(journal.last_seq());

        // Checkpoints run on their own thread and connection, not inside the writer's commits.
        conn.pragma_update(None, "wal_autocheckpoint", 0)?;
        let (checkpoint_tx, checkpoint_rx) = mpsc::sync_channel(1);
        let checkpointer = Checkpointer {
            conn: open_connection(&path, settings.synchronous, false)?,
            interval: Duration::from_millis(settings.checkpoint_interval_ms),
            // WAL frames are one page each (4 KiB by default).
            restart_pages: (settings.wal_max_mib * 1024 * 1024 / 4096) as i64,
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
        let mut writer = Writer {
            batch_max: settings.commit_batch_max,
            fold_max_rows: settings.fold_max_rows,
            fold_chunk_rows: settings.fold_chunk_rows,
            fold_interval: Duration::from_millis(settings.fold_interval_ms),
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
            let conn = open_connection(&path, settings.synchronous, true)?;
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

fn open_connection(path: &Path, sync: Synchronous, query_only: bool) -> StoreResult<Connection> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", sync_pragma(sync))?;
    conn.pragma_update(None, "busy_timeout", 5000)?;
    // Statement journals of the per-write savepoints stay in memory instead of a temp file a commit.
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    // The writer's cache holds the pages a fold rewrites; readers lean on the OS page cache, so
    // memory follows live actors rather than the size of the database. (A bigger writer cache also
    // costs: SQLite scans its hash table at the end of every transaction.)
    conn.pragma_update(None, "cache_size", if query_only { -4096 } else { -16384 })?;
    conn.set_prepared_statement_cache_capacity(64);
    if query_only {
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
            WriteOp::Close(_) => return None,
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
        }
    }
}

/// The checkpointer thread: copies committed WAL frames into the database file.
struct Checkpointer {
    conn: Connection,
    interval: Duration,
    restart_pages: i64,
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
            self.checkpoint();
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

    fn checkpoint(&self) {
        // PASSIVE never waits for the writer. Under constant writes it never sees the log fully
        // copied at a moment the writer could start it over, so past `restart_pages` a RESTART
        // (which waits for the writer's transaction to end, then holds the next one back while it
        // copies the few frames left) lets the log begin again from its start.
        let Some(pages) = self.run_mode("passive") else {
            return;
        };
        let pages = if pages > self.restart_pages {
            self.run_mode("restart").unwrap_or(pages)
        } else {
            pages
        };
        metrics::gauge!(m::STORE_WAL_PAGES).set(pages as f64);
    }

    /// Runs one checkpoint; returns the pages in the log after it.
    fn run_mode(&self, mode: &'static str) -> Option<i64> {
        let started = Instant::now();
        let sql = if mode == "restart" {
            "PRAGMA wal_checkpoint(RESTART)"
        } else {
            "PRAGMA wal_checkpoint(PASSIVE)"
        };
        match self
            .conn
            .query_row(sql, [], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)))
        {
            Ok((_busy, log_pages)) => {
                metrics::histogram!(m::STORE_CHECKPOINT_DURATION, "mode" => mode)
                    .record(started.elapsed().as_secs_f64());
                Some(log_pages)
            }
            Err(e) => {
                tracing::warn!(error = %e, mode, "WAL checkpoint failed; the next one retries");
                None
            }
        }
    }
}

/// The writer thread's settings.
struct Writer {
    batch_max: usize,
    fold_max_rows: usize,
    fold_chunk_rows: usize,
    fold_interval: Duration,
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
                        let rows = self.fold_rows(&journal);
                        let _ = self.fold(&mut conn, &mut journal, rows);
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
            closing = batch.closing;
            let fold_due = self.fold_due_in(&journal).is_some_and(|d| d.is_zero());
            if !batch.fold_waiters.is_empty() || closing.is_some() {
                // Everything acknowledged must be in the tables, so wait for the last flush first.
                let folded = self
                    .durable
                    .wait_for(self.commits)
                    .and_then(|()| self.fold(&mut conn, &mut journal, usize::MAX));
                for tx in batch.fold_waiters {
                    let _ = tx.send(folded.clone().map_err(StoreError::CommitFailed));
                }
            } else if fold_due {
                // One chunk, then back to the queue: writes waiting meanwhile go first.
                let rows = self.fold_rows(&journal);
                let _ = self.fold(&mut conn, &mut journal, rows);
            }
        }
        if let Some(done) = closing {
            let _ = conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)");
            drop(conn);
            let _ = done.send(());
        }
    }

    /// Folds up to `rows` journal rows. A panic in the fold fails it like an error: the transaction is
    /// rolled back, the journal re-read from what is durable, and the writer carries on.
    fn fold(
        &self,
        conn: &mut Connection,
        journal: &mut Journal,
        rows: usize,
    ) -> Result<(), String> {
        // Only durable rows: a fold shows its rows to every reader of the tables.
        let rows = rows.min(journal.rows_up_to(self.durable.seq()));
        if rows == 0 {
            return Ok(());
        }
        let outcome = catch_unwind(AssertUnwindSafe(|| journal.fold(conn, rows)));
        let _ = self.checkpoint.try_send(());
        match outcome {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(panic) => {
                let why = panic_message(panic.as_ref());
                metrics::counter!(m::ACTOR_RESTARTS, "kind" => "store_writer", "cause" => "panic")
                    .increment(1);
                metrics::counter!(m::STORE_FOLD_ERRORS).increment(1);
                tracing::error!(panic = %why, "journal fold panicked; rows stay journalled, writer continues");
                if !conn.is_autocommit() {
                    let _ = conn.execute_batch("ROLLBACK");
                }
                if let Err(e) = journal.rolled_back(conn) {
                    tracing::error!(error = %e, "could not re-read the journal after a failed fold");
                }
                Err(why)
            }
        }
    }

    /// How long until a fold is due, as [`Journal::fold_due_in`], except that a fold due while none of
    /// its rows is durable yet waits a millisecond for the syncer rather than spinning.
    fn fold_due_in(&self, journal: &Journal) -> Option<Duration> {
        let due = journal.fold_due_in(self.fold_max_rows, self.fold_interval)?;
        if due.is_zero() && journal.rows_up_to(self.durable.seq()) == 0 {
            return Some(Duration::from_millis(1));
        }
        Some(due)
    }

    /// How many rows the next fold takes. Small chunks while the journal keeps up, so a write never
    /// waits long behind a fold; the whole backlog once `fold_max_rows` wait, because under that
    /// load a big fold writes each hot page once for many rows, and throughput is what is short.
    fn fold_rows(&self, journal: &Journal) -> usize {
        if journal.len() >= self.fold_max_rows {
            usize::MAX
        } else {
            self.fold_chunk_rows
        }
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
                if matches!(r, Ok(true)) {
                    batch.outbox_appended += 1;
                    // The row may be new: the flush that acknowledges it must make it offerable.
                    let newest: Option<i64> =
                        tx.query_row("SELECT MAX(seq) FROM outbox", [], |r| r.get(0))?;
                    journal.note_outbox_seq(newest.unwrap_or(0));
                }
                batch.done.push(Done::Bool(reply, r));
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
            WriteOp::Close(reply) => {
                batch.closing = Some(reply);
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

    fn outbox_peek(&self, limit: usize) -> BoxFuture<'static, StoreResult<Vec<OutboxEntry>>> {
        // Rows committed but not yet flushed are not offered: Django must never hold an event that a
        // crash could take back.
        let durable = self.durable.seq();
        self.read(move |c| rows::outbox_peek(c, limit, durable))
    }

    fn outbox_ack(&self, seqs: Vec<i64>) -> BoxFuture<'static, StoreResult<()>> {
        self.write(|r| WriteOp::OutboxAck(seqs, r))
    }

    fn outbox_dead_letter(&self, rejected: Vec<Rejection>) -> BoxFuture<'static, StoreResult<()>> {
        self.write(|r| WriteOp::DeadLetter(rejected, r))
    }

    fn outbox_stats(&self) -> BoxFuture<'static, StoreResult<OutboxStats>> {
        self.read(rows::outbox_stats)
    }

    fn dead_letters(&self, limit: u32) -> BoxFuture<'static, StoreResult<Vec<DeadLetter>>> {
        self.read(move |c| rows::dead_letters(c, limit))
    }

    fn retry_dead_letter(&self, id: i64) -> BoxFuture<'static, StoreResult<bool>> {
        self.write(|r| WriteOp::RetryDeadLetter(id, r))
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

    fn outbox_signal(&self) -> Arc<OutboxSignal> {
        self.signal.clone()
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

impl Drop for SqliteStore {
    fn drop(&mut self) {
        // Closing the channels ends the threads; joining keeps the database closed cleanly on exit.
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
