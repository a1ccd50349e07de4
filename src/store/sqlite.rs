//! [`TicketStore`] on SQLite in WAL mode.
//!
//! One writer thread owns the only write connection. It blocks for the first queued write, then takes
//! whatever else is queued (up to `storage.commit_batch_max`) and runs them all in one transaction, each
//! inside its own savepoint so one failed write does not fail its neighbours. Replies go out only after
//! COMMIT returns, so an acknowledged write is on disk (group commit: one fsync for many requests).
//! Reader threads each own a query-only connection. A panic on a store thread fails the jobs in hand and
//! the thread carries on with a fresh transaction.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use rusqlite::{Connection, OpenFlags};
use tokio::sync::oneshot;

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
    Create(Box<TicketWrite>, Reply<()>),
    Update(Box<TicketWrite>, bool, Reply<()>),
    Import(Box<(Ticket, TicketEvent)>, Reply<()>),
    OutboxAck(Vec<i64>, Reply<()>),
    DeadLetter(Vec<Rejection>, Reply<()>),
    RetryDeadLetter(i64, Reply<bool>),
    Ping(Reply<()>),
    Close(oneshot::Sender<()>),
}

type ReadJob = Box<dyn FnOnce(&Connection) + Send>;

pub struct SqliteStore {
    writer: mpsc::Sender<WriteOp>,
    readers: mpsc::Sender<ReadJob>,
    signal: Arc<OutboxSignal>,
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
        let mut conn = open_connection(&path, settings.synchronous, false)?;
        schema::migrate(&mut conn)?;

        let signal = Arc::new(OutboxSignal::default());
        let (wtx, wrx) = mpsc::channel();
        let batch_max = settings.commit_batch_max;
        let writer_signal = signal.clone();
        let mut threads = vec![std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || writer_loop(conn, wrx, batch_max, writer_signal))
            .map_err(|source| StoreError::Io {
                path: "store-writer thread".into(),
                source,
            })?];

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
            signal,
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
        let (tx, rx) = oneshot::channel();
        let sent = self.readers.send(Box::new(move |conn: &Connection| {
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
}

fn open_connection(path: &Path, sync: Synchronous, query_only: bool) -> StoreResult<Connection> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(
        None,
        "synchronous",
        match sync {
            Synchronous::Full => "FULL",
            Synchronous::Normal => "NORMAL",
        },
    )?;
    conn.pragma_update(None, "busy_timeout", 5000)?;
    // Statement journals of the per-write savepoints stay in memory instead of a temp file a commit.
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    // 64 MiB of page cache: fewer re-reads of index pages under update load.
    conn.pragma_update(None, "cache_size", -65536)?;
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
enum Done {
    Unit(Reply<()>, StoreResult<()>),
    Bool(Reply<bool>, StoreResult<bool>),
}

impl Done {
    /// A write that never ran because its transaction could not start.
    fn not_run(op: WriteOp) -> Option<Self> {
        let err = || {
            Err(StoreError::CommitFailed(
                "transaction could not start".into(),
            ))
        };
        Some(match op {
            WriteOp::Create(_, r)
            | WriteOp::Update(_, _, r)
            | WriteOp::Import(_, r)
            | WriteOp::OutboxAck(_, r)
            | WriteOp::DeadLetter(_, r)
            | WriteOp::Ping(r) => Done::Unit(r, err()),
            WriteOp::RetryDeadLetter(_, r) => Done::Bool(r, err().map(|()| false)),
            WriteOp::Close(_) => return None,
        })
    }

    /// Sends the result, or `failed` for every write when the transaction did not commit.
    fn reply(self, failed: Option<&str>) {
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

fn writer_loop(
    mut conn: Connection,
    jobs: mpsc::Receiver<WriteOp>,
    batch_max: usize,
    signal: Arc<OutboxSignal>,
) {
    let mut closing: Option<oneshot::Sender<()>> = None;
    while closing.is_none() {
        let Ok(first) = jobs.recv() else { break };
        let mut batch = vec![first];
        while batch.len() < batch_max {
            match jobs.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        let started = Instant::now();
        let size = batch.len();
        let mut outbox_appended = 0u64;
        let mut done = Vec::with_capacity(size);
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            run_batch(
                &mut conn,
                batch,
                &mut closing,
                &mut outbox_appended,
                &mut done,
            )
        }));
        match outcome {
            Ok(Ok(())) => {
                metrics::histogram!(m::STORE_COMMIT_BATCH).record(size as f64);
                metrics::histogram!(m::STORE_COMMIT_DURATION)
                    .record(started.elapsed().as_secs_f64());
                for d in done {
                    d.reply(None);
                }
                if outbox_appended > 0 {
                    signal.appended(outbox_appended);
                }
            }
            Ok(Err(e)) => {
                // BEGIN or COMMIT failed: nothing in the batch is durable, and every caller is told.
                metrics::counter!(m::STORE_WRITE_ERRORS).increment(size as u64);
                tracing::error!(error = %e, batch = size, "store commit failed");
                let why = e.to_string();
                for d in done {
                    d.reply(Some(&why));
                }
            }
            Err(panic) => {
                let why = panic_message(panic.as_ref());
                metrics::counter!(m::ACTOR_RESTARTS, "kind" => "store_writer", "cause" => "panic")
                    .increment(1);
                tracing::error!(panic = %why, batch = size, "store writer panicked; batch failed, writer continues");
                if !conn.is_autocommit() {
                    let _ = conn.execute_batch("ROLLBACK");
                }
                for d in done {
                    d.reply(Some(&why));
                }
            }
        }
    }
    // Queued work behind a Close is still committed: drain what is left without blocking.
    if let Some(done) = closing {
        let _ = conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)");
        drop(conn);
        let _ = done.send(());
    }
}

fn run_batch(
    conn: &mut Connection,
    batch: Vec<WriteOp>,
    closing: &mut Option<oneshot::Sender<()>>,
    outbox_appended: &mut u64,
    done: &mut Vec<Done>,
) -> StoreResult<()> {
    let tx = match conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate) {
        Ok(tx) => tx,
        Err(e) => {
            for op in batch {
                match op {
                    WriteOp::Close(reply) => *closing = Some(reply),
                    op => done.extend(Done::not_run(op)),
                }
            }
            return Err(e.into());
        }
    };
    for op in batch {
        match op {
            WriteOp::Create(w, reply) => {
                let r = in_savepoint(&tx, |c| rows::create(c, &w));
                *outbox_appended += r.is_ok() as u64;
                done.push(Done::Unit(reply, r));
            }
            WriteOp::Update(w, tags_changed, reply) => {
                let r = in_savepoint(&tx, |c| rows::update(c, &w, tags_changed));
                *outbox_appended += r.is_ok() as u64;
                done.push(Done::Unit(reply, r));
            }
            WriteOp::Import(te, reply) => {
                let r = in_savepoint(&tx, |c| rows::import(c, &te.0, &te.1));
                done.push(Done::Unit(reply, r));
            }
            WriteOp::OutboxAck(seqs, reply) => {
                let r = in_savepoint(&tx, |c| rows::outbox_ack(c, &seqs));
                done.push(Done::Unit(reply, r));
            }
            WriteOp::DeadLetter(rejected, reply) => {
                let r = in_savepoint(&tx, |c| rows::outbox_dead_letter(c, &rejected));
                done.push(Done::Unit(reply, r));
            }
            WriteOp::RetryDeadLetter(id, reply) => {
                let r = in_savepoint(&tx, |c| rows::retry_dead_letter(c, id));
                *outbox_appended += matches!(r, Ok(true)) as u64;
                done.push(Done::Bool(reply, r));
            }
            WriteOp::Ping(reply) => done.push(Done::Unit(reply, Ok(()))),
            WriteOp::Close(reply) => *closing = Some(reply),
        }
    }
    tx.commit()?;
    Ok(())
}

fn in_savepoint<T>(
    tx: &rusqlite::Transaction<'_>,
    f: impl FnOnce(&Connection) -> StoreResult<T>,
) -> StoreResult<T> {
    tx.execute_batch("SAVEPOINT op")?;
    match f(tx) {
        Ok(v) => {
            tx.execute_batch("RELEASE op")?;
            Ok(v)
        }
        Err(e) => {
            tx.execute_batch("ROLLBACK TO op; RELEASE op")?;
            metrics::counter!(m::STORE_WRITE_ERRORS).increment(1);
            Err(e)
        }
    }
}

impl TicketStore for SqliteStore {
    fn create(&self, write: TicketWrite) -> BoxFuture<'static, StoreResult<()>> {
        self.write(|r| WriteOp::Create(Box::new(write), r))
    }

    fn update(&self, write: TicketWrite) -> BoxFuture<'static, StoreResult<()>> {
        let tags_changed = write
            .event
            .changes
            .as_object()
            .is_some_and(|c| c.contains_key("tags"));
        self.write(|r| WriteOp::Update(Box::new(write), tags_changed, r))
    }

    fn import(&self, ticket: Ticket, event: TicketEvent) -> BoxFuture<'static, StoreResult<()>> {
        self.write(|r| WriteOp::Import(Box::new((ticket, event)), r))
    }

    fn load(&self, id: TicketId) -> BoxFuture<'static, StoreResult<Option<Ticket>>> {
        self.read(move |c| rows::load(c, id))
    }

    fn list(&self, filter: TicketFilter) -> BoxFuture<'static, StoreResult<Vec<Ticket>>> {
        self.read(move |c| rows::list(c, &filter))
    }

    fn events(
        &self,
        id: TicketId,
        after_seq: i64,
        limit: u32,
    ) -> BoxFuture<'static, StoreResult<Vec<(i64, TicketEvent)>>> {
        self.read(move |c| rows::events(c, id, after_seq, limit))
    }

    fn outbox_peek(&self, limit: usize) -> BoxFuture<'static, StoreResult<Vec<OutboxEntry>>> {
        self.read(move |c| rows::outbox_peek(c, limit))
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
