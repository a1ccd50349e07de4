//! The writer thread, started by [`super::sqlite::SqliteStore::open`]: owns the only write connection
//! to `switchboard.db` and the [`Journal`]. It takes every [`WriteOp`] queued (up to
//! `sqlite::COMMIT_BATCH_MAX`) into one transaction; every check of a ticket write runs before its
//! first insert, so a refused write leaves nothing behind. With `synchronous = full` it commits without
//! waiting for the disk and hands the batch's replies to the syncer ([`super::syncer`]); otherwise it
//! replies itself. Between batches it hands durable journal rows to the folder ([`super::folder`]) and
//! takes its reports back as [`WriteOp::Folded`], and it wakes the checkpointer after each commit. A
//! panic fails the batch in hand and the thread carries on with a fresh transaction.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use rusqlite::Connection;
use tokio::sync::oneshot;

use super::durable::Durable;
use super::fold::{FoldJob, FoldReport, FoldWaiter};
use super::journal::{EncodedRecord, EncodedWrite, Journal, JournalOp};
use super::reply::{Done, Reply};
use super::rows::{self, Requeued};
use super::syncer::SyncJob;
use super::{CommitError, ErrorChain, Failure, OutboxSignal, Rejection, StoreError, StoreResult};
use crate::metrics as m;
use crate::telemetry::panic_message;

/// The typed writes the writer thread performs.
pub(super) enum WriteOp {
    Create(Box<EncodedWrite>, Reply<()>),
    /// A new ticket and one more outbox record about it (a ticket from chat and Django's chat
    /// record), in one transaction: both are written or neither.
    CreateWith(Box<EncodedWrite>, Box<EncodedRecord>, Reply<()>),
    Update(Box<EncodedWrite>, Reply<()>),
    Import(Box<EncodedWrite>, Reply<()>),
    /// An outbox record that is no ticket change; replies with its `seq`.
    Enqueue(Box<EncodedRecord>, Reply<i64>),
    OutboxAck(Vec<i64>, Reply<()>),
    DeadLetter(Vec<Rejection>, Reply<()>),
    /// An operator's move of one waiting entry to the dead letters; replies whether it waited.
    DeadLetterEntry(Rejection, Reply<bool>),
    RecordFailures(Vec<Failure>, Reply<()>),
    RetryDeadLetter(i64, Reply<bool>),
    Ping(Reply<()>),
    /// Fold the journal now, so the tables themselves hold every acknowledged write
    /// ([`super::sqlite::SqliteStore::fold`]).
    Fold(Reply<()>),
    /// From the folder thread: a fold finished (or failed).
    Folded(Box<FoldReport>),
    /// Fold everything, then stop the store's threads.
    Close(oneshot::Sender<()>),
    /// Stop now, leaving the journal for the next start (the store was dropped without `close`).
    Stop,
}

/// A write that never ran because its transaction could not start (or was refused), failed with `why`.
fn not_run(op: WriteOp, why: &CommitError) -> Option<Done> {
    let err = || Err(StoreError::CommitFailed(why.clone()));
    Some(match op {
        WriteOp::Create(_, r)
        | WriteOp::CreateWith(_, _, r)
        | WriteOp::Update(_, r)
        | WriteOp::Import(_, r)
        | WriteOp::OutboxAck(_, r)
        | WriteOp::DeadLetter(_, r)
        | WriteOp::RecordFailures(_, r)
        | WriteOp::Ping(r)
        | WriteOp::Fold(r) => Done::Unit(r, err()),
        WriteOp::RetryDeadLetter(_, r) | WriteOp::DeadLetterEntry(_, r) => {
            Done::Bool(r, err().map(|()| false))
        }
        WriteOp::Enqueue(_, r) => Done::Seq(r, err().map(|()| 0)),
        WriteOp::Close(_) | WriteOp::Stop | WriteOp::Folded(_) => return None,
    })
}

/// The writer thread's settings.
pub(super) struct Writer {
    pub batch_max: usize,
    pub fold_max_rows: usize,
    pub fold_interval: Duration,
    /// Where durable journal rows go to be folded.
    pub folder: mpsc::Sender<FoldJob>,
    pub signal: Arc<OutboxSignal>,
    pub checkpoint: mpsc::SyncSender<()>,
    /// How far the journal is durable; folds take only rows up to it.
    pub durable: Arc<Durable>,
    /// The syncer, with `synchronous = full`: committed batches wait there for their flush. Without
    /// it a commit counts as durable when it returns (`synchronous = normal`).
    pub syncer: Option<mpsc::Sender<SyncJob>>,
    /// Transactions committed so far.
    pub commits: u64,
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
    pub fn run(
        mut self,
        mut conn: Connection,
        mut journal: Journal,
        jobs: mpsc::Receiver<WriteOp>,
    ) {
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
                let _ = tx.send(Err(StoreError::CommitFailed(CommitError::FolderStopped)));
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
                        if let Some(d) = not_run(op, &why) {
                            d.reply(None);
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
                                d.reply(Some(&CommitError::SyncerStopped));
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
            Ok(Err(why)) => {
                // BEGIN or COMMIT failed: nothing in the batch is durable, and every caller is told.
                metrics::counter!(m::STORE_WRITE_ERRORS).increment(size as u64);
                tracing::error!(error = %ErrorChain(&why), batch = size, "store commit failed");
                why
            }
            Err(panic) => {
                let why = panic_message(panic.as_ref());
                metrics::counter!(m::ACTOR_RESTARTS, "kind" => "store_writer", "cause" => "panic")
                    .increment(1);
                tracing::error!(panic = %why, batch = size, "store writer panicked; batch failed, writer continues");
                if !conn.is_autocommit() {
                    let _ = conn.execute_batch("ROLLBACK");
                }
                CommitError::WriterPanicked(why)
            }
        };
        if let Err(e) = journal.rolled_back(conn) {
            tracing::error!(error = %ErrorChain(&e), "could not re-read the journal after a failed commit");
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
) -> Result<(), CommitError> {
    let failed = |e: StoreError| CommitError::Transaction(Arc::new(e));
    let tx = match conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate) {
        Ok(tx) => tx,
        Err(e) => {
            let why = failed(e.into());
            for op in ops {
                match op {
                    WriteOp::Close(reply) => batch.closing = Some(reply),
                    WriteOp::Stop => batch.stopping = true,
                    WriteOp::Folded(report) => not_run_report(journal, *report),
                    op => batch.done.extend(not_run(op, &why)),
                }
            }
            return Err(why);
        }
    };
    let mut ops = ops.into_iter();
    while let Some(op) = ops.next() {
        let folded = journal.folded_seq();
        let (jop, write, reply, also) = match op {
            WriteOp::Create(w, reply) => (JournalOp::Create, *w, reply, None),
            WriteOp::CreateWith(w, record, reply) => (JournalOp::Create, *w, reply, Some(record)),
            WriteOp::Update(w, reply) => (JournalOp::Update, *w, reply, None),
            WriteOp::Import(w, reply) => (JournalOp::Import, *w, reply, None),
            WriteOp::OutboxAck(seqs, reply) => {
                let r = in_savepoint(&tx, |c| rows::outbox_ack(c, &seqs, folded));
                batch.done.push(Done::Unit(reply, r));
                continue;
            }
            WriteOp::DeadLetter(rejected, reply) => {
                let r = in_savepoint(&tx, |c| rows::outbox_dead_letter(c, &rejected, folded));
                batch.done.push(Done::Unit(reply, r.map(|_| ())));
                continue;
            }
            WriteOp::DeadLetterEntry(rejection, reply) => {
                let r = in_savepoint(&tx, |c| {
                    rows::outbox_dead_letter(c, std::slice::from_ref(&rejection), folded)
                });
                batch.done.push(Done::Bool(reply, r.map(|moved| moved > 0)));
                continue;
            }
            WriteOp::RecordFailures(failures, reply) => {
                let r = in_savepoint(&tx, |c| rows::outbox_record_failures(c, &failures));
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
                    rows::insert_record(c, &record.key, &record.subject, &record.payload)
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
                    tracing::warn!(error = %ErrorChain(&e), "could not drop delivered rows after a fold");
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
        let appended = journal.append(&tx, jop, write).and_then(|staged| {
            // The record goes in after the ticket's own rows: refused or failed, neither stays.
            let extra = match (&staged, &also) {
                (Some(_), Some(record)) => Some(rows::insert_record(
                    &tx,
                    &record.key,
                    &record.subject,
                    &record.payload,
                )?),
                _ => None,
            };
            Ok((staged, extra))
        });
        let r = match appended {
            Ok((Some(staged), extra)) => {
                batch.outbox_appended += (jop != JournalOp::Import) as u64;
                journal.record(staged);
                if let Some(seq) = extra {
                    journal.record_unfolded(seq);
                    batch.outbox_appended += 1;
                }
                Ok(())
            }
            Ok((None, _)) => Ok(()),
            Err(e @ (StoreError::AlreadyExists(_) | StoreError::VersionConflict { .. })) => {
                metrics::counter!(m::STORE_WRITE_ERRORS).increment(1);
                Err(e)
            }
            Err(e) => {
                let why = failed(e);
                batch.done.push(Done::Unit(
                    reply,
                    Err(StoreError::CommitFailed(why.clone())),
                ));
                for op in ops {
                    match op {
                        WriteOp::Close(reply) => batch.closing = Some(reply),
                        WriteOp::Fold(reply) => batch.fold_waiters.push(reply),
                        WriteOp::Stop => batch.stopping = true,
                        WriteOp::Folded(report) => not_run_report(journal, *report),
                        op => batch.done.extend(not_run(op, &why)),
                    }
                }
                return Err(why);
            }
        };
        batch.done.push(Done::Unit(reply, r));
    }
    tx.commit().map_err(|e| failed(e.into()))
}

/// A fold report that arrived in a batch whose transaction could not run: the fold itself stands, so
/// the journal still learns of it and its waiters get its outcome.
fn not_run_report(journal: &mut Journal, report: FoldReport) {
    journal.folded(&report);
    for tx in report.waiters {
        let _ = tx.send(fold_outcome(&report.error));
    }
}

fn fold_outcome(error: &Option<CommitError>) -> StoreResult<()> {
    match error {
        None => Ok(()),
        Some(why) => Err(StoreError::CommitFailed(why.clone())),
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
