//! How far `switchboard.db`'s journal is on disk: the mark the syncer moves (or the writer, with
//! `synchronous = normal`), and below which readers, the bridge and the folder may see rows. Owns no
//! thread; shared by the writer, the syncer and the façade.

use std::sync::{Arc, Condvar, Mutex};

use super::CommitError;

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
    failed: Option<CommitError>,
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

    /// Syncing has stopped for good: every wait, now and later, fails with `why` (the first reason
    /// given wins).
    pub fn fail(&self, why: CommitError) {
        let mut state = self.lock();
        if state.failed.is_none() {
            state.failed = Some(why);
        }
        self.moved.notify_all();
    }

    /// Why nothing can be made durable any more, once syncing has failed.
    pub fn failure(&self) -> Option<CommitError> {
        self.lock().failed.clone()
    }

    /// Blocks until commits up to `commit` are durable and replied to; `Err` once syncing has failed.
    pub fn wait_for(&self, commit: u64) -> Result<(), CommitError> {
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

#[cfg(test)]
mod tests {
    use std::sync::mpsc;
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
        assert!(waiter.join().unwrap().is_ok());
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
        let disk_gone = Arc::new(std::io::Error::other("disk gone"));
        durable.fail(CommitError::Flush(disk_gone.clone()));
        let is_disk_gone = |r: Result<(), CommitError>| matches!(r, Err(CommitError::Flush(e)) if Arc::ptr_eq(&e, &disk_gone));
        assert!(is_disk_gone(waiter.join().unwrap()));
        durable.fail(CommitError::SyncerStopped);
        assert!(is_disk_gone(durable.wait_for(0)), "the first reason stays");
        assert!(is_disk_gone(durable.failure().map_or(Ok(()), Err)));
    }
}
