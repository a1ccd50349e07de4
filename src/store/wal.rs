//! Write-ahead logs: how each database's WAL is checkpointed and kept short, and the WAL file the
//! syncer flushes. Used by the checkpointer (`switchboard.db`), the folder (`tickets.db`) and the
//! syncer; owns no thread.

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::time::Instant;

use rusqlite::Connection;

use crate::metrics as m;

/// How a database's write-ahead log is kept short.
#[derive(Clone, Debug)]
pub(super) struct WalLimits {
    /// Past this many pages left in the log after a passive checkpoint, run a restarting one.
    pub restart_pages: i64,
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
pub(super) fn mib_pages(mib: u64) -> i64 {
    (mib * 1024 * 1024 / 4096) as i64
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

#[cfg(test)]
mod tests {
    use super::*;

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
