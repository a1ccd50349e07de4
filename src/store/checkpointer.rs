//! The checkpointer thread, started by [`super::sqlite::SqliteStore::open`]: copies committed WAL
//! frames of `switchboard.db` into the database file, off the writer's commit path. It owns one
//! connection, used only for checkpoints, and takes wake-ups from the writer after each commit; it
//! ends when the writer is gone.

use std::sync::mpsc;
use std::time::{Duration, Instant};

use rusqlite::Connection;

use super::wal::{checkpoint, WalLimits};

/// The checkpointer thread: copies committed WAL frames of `switchboard.db` into the database file.
/// (`tickets.db` has one writer, the folder, which checkpoints it itself once its WAL has grown.)
pub(super) struct Checkpointer {
    pub conn: Connection,
    pub interval: Duration,
    pub wal: WalLimits,
}

impl Checkpointer {
    /// Checkpoints after each wake-up from the writer, at most once per `interval`: wake-ups in the
    /// meantime fold into the next checkpoint. Ends when the writer is gone.
    pub fn run(self, wakeups: mpsc::Receiver<()>) {
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
