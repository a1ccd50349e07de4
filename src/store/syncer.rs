//! The syncer thread: makes committed transactions durable, so the writer need not wait for the disk.
//!
//! With `storage.synchronous = "full"` the writer commits with SQLite's `synchronous = NORMAL` (the
//! transaction is in the WAL, in the OS's cache) and hands the batch's replies here. The syncer calls
//! `fdatasync` on the WAL once for every batch waiting, then replies: a write is still acknowledged
//! only once it is on disk, but the writer runs the next transaction while the disk works, and one
//! flush covers as many commits as arrived during the last one.
//!
//! Nothing not yet durable is shown outside the writer: journalled snapshots are published to readers,
//! the outbox rows offered to the bridge and journal rows folded into the tables only up to the
//! [`Durable`] mark this thread moves. The WAL is append-only between checkpoints and a checkpoint syncs
//! it first, so flushing the file covers every frame committed before the flush began.
//!
//! A failed `fdatasync` is not retried: Linux may already have dropped the unwritten pages, so a later
//! success would prove nothing. The batches waiting fail, and so does every later write, until restart.

use std::sync::{mpsc, Arc};
use std::time::Instant;

use super::durable::Durable;
use super::pending::{PendingView, Published};
use super::reply::Done;
use super::wal::WalFile;
use super::{CommitError, ErrorChain, OutboxSignal};
use crate::metrics as m;

/// One committed transaction waiting for its flush.
pub struct SyncJob {
    pub done: Vec<Done>,
    /// Journalled writes of the transaction, shown to readers once durable.
    pub publish: Vec<Published>,
    pub outbox_appended: u64,
    /// The journal's newest row when the transaction committed.
    pub seq: i64,
    /// The writer's count of commits, this one included.
    pub commit: u64,
}

pub struct Syncer {
    pub wal: WalFile,
    pub durable: Arc<Durable>,
    pub view: Arc<PendingView>,
    pub signal: Arc<OutboxSignal>,
}

impl Syncer {
    /// Flushes and replies until the writer is gone.
    pub fn run(mut self, jobs: mpsc::Receiver<SyncJob>) {
        /// Should this thread end for any reason, whoever waits for a flush is told.
        struct Stopped(Arc<Durable>);
        impl Drop for Stopped {
            fn drop(&mut self) {
                self.0.fail(CommitError::SyncerStopped);
            }
        }
        let _stopped = Stopped(self.durable.clone());
        let mut failed: Option<CommitError> = None;
        while let Ok(first) = jobs.recv() {
            let mut batch = vec![first];
            batch.extend(jobs.try_iter());
            let outcome = match &failed {
                Some(why) => Err(why.clone()),
                None => {
                    let started = Instant::now();
                    let _span = tracing::debug_span!("store_sync", commits = batch.len()).entered();
                    let r = self.wal.sync();
                    metrics::histogram!(m::STORE_SYNC_DURATION)
                        .record(started.elapsed().as_secs_f64());
                    metrics::histogram!(m::STORE_SYNC_BATCH).record(batch.len() as f64);
                    r.map_err(|e| {
                        metrics::counter!(m::STORE_SYNC_ERRORS).increment(1);
                        let why = CommitError::Flush(Arc::new(e));
                        tracing::error!(error = %ErrorChain(&why), "fdatasync of the WAL failed; the store refuses writes until restarted");
                        self.durable.fail(why.clone());
                        failed = Some(why.clone());
                        why
                    })
                }
            };
            match outcome {
                Ok(()) => {
                    let seq = batch.iter().map(|j| j.seq).max().unwrap_or(0);
                    let commit = batch.iter().map(|j| j.commit).max().unwrap_or(0);
                    let appended: u64 = batch.iter().map(|j| j.outbox_appended).sum();
                    self.view
                        .publish(batch.iter_mut().flat_map(|j| j.publish.drain(..)));
                    // Before the replies: an acknowledged outbox row must already be offered.
                    self.durable.advance(commit, seq);
                    for done in batch.into_iter().flat_map(|j| j.done) {
                        done.reply(None);
                    }
                    if appended > 0 {
                        self.signal.appended(appended);
                    }
                }
                Err(why) => {
                    let writes: usize = batch.iter().map(|j| j.done.len()).sum();
                    metrics::counter!(m::STORE_WRITE_ERRORS).increment(writes as u64);
                    for done in batch.into_iter().flat_map(|j| j.done) {
                        done.reply(Some(&why));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use tokio::sync::oneshot;

    use super::*;
    use crate::store::StoreError;

    #[test]
    fn a_failed_flush_fails_its_writes_with_the_io_error_as_their_source() {
        // `fdatasync` of /dev/null fails (EINVAL): a flush that fails as a disk would.
        let durable = Durable::new(0);
        let syncer = Syncer {
            wal: WalFile::open("/dev/null".into()).unwrap(),
            durable: durable.clone(),
            view: Arc::default(),
            signal: Arc::default(),
        };
        let (jobs, rx) = mpsc::channel();
        let (reply, answer) = oneshot::channel();
        let job = |done| SyncJob {
            done,
            publish: Vec::new(),
            outbox_appended: 0,
            seq: 1,
            commit: 1,
        };
        jobs.send(job(vec![Done::Unit(reply, Ok(()))])).unwrap();
        drop(jobs);
        syncer.run(rx);

        let err = answer.blocking_recv().unwrap().unwrap_err();
        assert!(
            matches!(err, StoreError::CommitFailed(CommitError::Flush(_))),
            "{err:?}"
        );
        let cause = err.source().expect("the commit error");
        let io = cause.source().expect("the flush's error");
        assert_eq!(
            io.downcast_ref::<std::io::Error>()
                .map(|e| e.raw_os_error()),
            Some(Some(22)),
            "{}",
            ErrorChain(&err)
        );
        assert_eq!(
            ErrorChain(&err).to_string(),
            format!(
                "the write was not committed: could not flush the write-ahead log: {}",
                std::io::Error::from_raw_os_error(22)
            )
        );
        // Nothing later can be made durable; the mark keeps the flush's own error, not the stop.
        assert!(matches!(durable.failure(), Some(CommitError::Flush(_))));
    }
}
