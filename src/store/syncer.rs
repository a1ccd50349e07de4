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

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::{mpsc, Arc, Condvar, Mutex};
use std::time::Instant;

use super::journal::PendingView;
use super::sqlite::Done;
use super::OutboxSignal;
use crate::domain::ticket::Ticket;
use crate::metrics as m;

/// How far the journal is durable, shared by the writer, the syncer and the readers.
#[derive(Debug)]
pub struct Durable {
    state: Mutex<DurableState>,
    moved: Condvar,
}

#[derive(Debug)]
struct DurableState {
    /// Outbox rows up to here are on disk.
    seq: i64,
    /// Commits up to this number (counted by the writer from 1) are on disk.
    commit: u64,
    /// Why syncing stopped, if it did.
    failed: Option<String>,
}

impl Durable {
    pub fn new(seq: i64) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(DurableState {
                seq,
                commit: 0,
                failed: None,
            }),
            moved: Condvar::new(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, DurableState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Outbox rows up to this sequence number are durable.
    pub fn seq(&self) -> i64 {
        self.lock().seq
    }

    /// Marks commits up to `commit`, holding rows up to `seq`, durable (commits without a syncer are
    /// durable when they return).
    pub fn advance(&self, commit: u64, seq: i64) {
        let mut state = self.lock();
        state.seq = state.seq.max(seq);
        state.commit = state.commit.max(commit);
        self.moved.notify_all();
    }

    fn fail(&self, why: String) {
        let mut state = self.lock();
        if state.failed.is_none() {
            state.failed = Some(why);
        }
        self.moved.notify_all();
    }

    /// Why nothing can be made durable any more, once syncing has failed.
    pub fn failure(&self) -> Option<String> {
        self.lock().failed.clone()
    }

    /// Blocks until commits up to `commit` are durable and replied to; `Err` once syncing has failed.
    pub fn wait_for(&self, commit: u64) -> Result<(), String> {
        let mut state = self.lock();
        loop {
            if let Some(why) = &state.failed {
                return Err(why.clone());
            }
            if state.commit >= commit {
                return Ok(());
            }
            state = self.moved.wait(state).unwrap_or_else(|p| p.into_inner());
        }
    }
}

/// One committed transaction waiting for its flush.
pub struct SyncJob {
    pub done: Vec<Done>,
    /// Journalled snapshots the transaction wrote, shown to readers once durable.
    pub publish: Vec<Arc<Ticket>>,
    pub outbox_appended: u64,
    /// The journal's newest row when the transaction committed.
    pub seq: i64,
    /// The writer's count of commits, this one included.
    pub commit: u64,
}

/// The WAL file, opened beside SQLite's own handle to flush it.
pub struct WalFile {
    path: PathBuf,
    file: File,
}

impl WalFile {
    pub fn open(path: PathBuf) -> std::io::Result<Self> {
        let file = File::options().read(true).write(true).open(&path)?;
        Ok(Self { path, file })
    }

    /// Flushes the WAL's data to disk. SQLite keeps the file while its connections are open, but
    /// should it have been replaced, the new file is opened and flushed too. A WAL SQLite removed
    /// (which it does only after checkpointing all of it into the database file and syncing that)
    /// leaves nothing to flush.
    pub fn sync(&mut self) -> std::io::Result<()> {
        self.file.sync_data()?;
        if self.file.metadata()?.nlink() == 0 {
            match File::options().read(true).write(true).open(&self.path) {
                Ok(file) => {
                    self.file = file;
                    self.file.sync_data()?;
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
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
                self.0.fail("the store's syncer has stopped".into());
            }
        }
        let _stopped = Stopped(self.durable.clone());
        let mut failed: Option<String> = None;
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
                        let why = format!("could not flush the write-ahead log: {e}");
                        tracing::error!(error = %e, "fdatasync of the WAL failed; the store refuses writes until restarted");
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
                    for done in batch.into_iter().flat_map(|j| j.done) {
                        done.reply(None);
                    }
                    self.durable.advance(commit, seq);
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
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_waiter_is_released_by_the_flush_that_covers_its_commit() {
        let durable = Durable::new(10);
        let (tx, rx) = mpsc::channel();
        let waiter = {
            let durable = durable.clone();
            std::thread::spawn(move || {
                let r = durable.wait_for(2);
                let _ = tx.send(());
                r
            })
        };
        durable.advance(1, 12);
        assert_eq!(
            rx.recv_timeout(Duration::from_millis(50)),
            Err(mpsc::RecvTimeoutError::Timeout),
            "commit 1's flush does not cover commit 2"
        );
        durable.advance(2, 15);
        assert_eq!(waiter.join().unwrap(), Ok(()));
        assert_eq!(durable.seq(), 15);
        // The mark never moves back.
        durable.advance(1, 11);
        assert_eq!(durable.seq(), 15);
    }

    #[test]
    fn a_failed_flush_fails_every_waiter_and_every_later_wait() {
        let durable = Durable::new(0);
        let waiter = {
            let durable = durable.clone();
            std::thread::spawn(move || durable.wait_for(1))
        };
        durable.fail("disk gone".into());
        assert_eq!(waiter.join().unwrap(), Err("disk gone".to_string()));
        durable.fail("second reason".into());
        assert_eq!(durable.wait_for(0), Err("disk gone".to_string()));
        assert_eq!(durable.failure().as_deref(), Some("disk gone"));
    }

    #[test]
    fn a_removed_wal_leaves_nothing_to_flush_and_a_replaced_one_is_reopened() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db-wal");
        std::fs::write(&path, b"frames").unwrap();
        let mut wal = WalFile::open(path.clone()).unwrap();
        wal.sync().unwrap();
        std::fs::remove_file(&path).unwrap();
        wal.sync().unwrap();
        std::fs::write(&path, b"new frames").unwrap();
        wal.sync().unwrap();
        assert_eq!(wal.file.metadata().unwrap().nlink(), 1);
    }
}
