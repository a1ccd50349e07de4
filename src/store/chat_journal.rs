//! The chat journal: the seam through which a chat session's numbered frames and its state become
//! durable, beside [`TicketStore`](super::TicketStore). Every history frame (messages, proposed
//! actions, tickets, queue and agent events) is appended with its `seq`, and the session's state
//! (owner, customer, the hash of its resume token — never the token —, a pending AI turn, pending
//! confirmations, its queue entry) is kept as one record per session, written in the same
//! transaction as the frames it goes with. A restarted process reads the open sessions back and
//! replays a session's frames from any `seq`.
//!
//! [`SqliteChatJournal`] is the embedded implementation: its own database file (`chat.db` in
//! `storage.data_dir`), WAL mode, one thread that commits every append waiting for it in one
//! transaction (group commit) and answers reads in between. `synchronous` is the storage setting:
//! `normal` survives `kill -9`, `full` also survives power loss. Another engine (PostgreSQL, for a
//! cluster) implements the same trait.

use std::path::Path;
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_channel::oneshot;
use futures_util::future::{BoxFuture, FutureExt};
use rusqlite::{params, Connection, OptionalExtension};

use super::{StoreError, StoreResult};
use crate::config::Synchronous;
use crate::domain::ids::SessionId;

/// One numbered frame of a session, as its JSON text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalFrame {
    pub seq: u64,
    pub at: DateTime<Utc>,
    pub body: String,
}

/// A session's state as the journal keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord {
    pub session_id: SessionId,
    /// A hash of the resume token (the token itself is never stored).
    pub resume_token_hash: String,
    /// The session's state (owner, customer, pending AI turn, confirmations, queue entry) as JSON.
    pub state: String,
    /// The newest seq given out.
    pub last_seq: u64,
    pub last_activity_at: DateTime<Utc>,
    /// When its connection went away; `None` while one is attached.
    pub detached_at: Option<DateTime<Utc>>,
    pub closed: bool,
}

/// What the journal must keep for chat sessions.
pub trait ChatJournal: Send + Sync + 'static {
    /// Appends `frames` (in seq order) and, when given, replaces the session's record: one
    /// transaction. Answered once it is committed (and flushed, with `synchronous = full`).
    fn append(
        &self,
        session_id: SessionId,
        frames: Vec<JournalFrame>,
        record: Option<SessionRecord>,
    ) -> BoxFuture<'static, StoreResult<()>>;
    fn record(
        &self,
        session_id: SessionId,
    ) -> BoxFuture<'static, StoreResult<Option<SessionRecord>>>;
    /// Frames after `after_seq`, oldest first, at most `limit`.
    fn frames(
        &self,
        session_id: SessionId,
        after_seq: u64,
        limit: u32,
    ) -> BoxFuture<'static, StoreResult<Vec<JournalFrame>>>;
    /// A session's record and its newest `history` frames (oldest first), in one read: what a
    /// resume or a takeover loads a session from.
    fn session(
        &self,
        session_id: SessionId,
        history: u32,
    ) -> BoxFuture<'static, StoreResult<Option<LoadedSession>>>;
    /// Every session not closed, for a restarted process.
    fn open_sessions(&self) -> BoxFuture<'static, StoreResult<Vec<SessionRecord>>>;
    /// Forgets sessions last active before `before` (retention), with their frames. Reply: how many.
    fn prune(&self, before: DateTime<Utc>) -> BoxFuture<'static, StoreResult<u64>>;
    /// Open sessions with no connection recorded are marked detached at `at` (a restarted process:
    /// the connections the last one had are gone).
    fn mark_detached(&self, at: DateTime<Utc>) -> BoxFuture<'static, StoreResult<()>>;
    /// Open sessions detached before `detached_before` or last active before `idle_before`, at
    /// most `limit`.
    fn expired(
        &self,
        detached_before: DateTime<Utc>,
        idle_before: DateTime<Utc>,
        limit: u32,
    ) -> BoxFuture<'static, StoreResult<Vec<SessionId>>>;
    /// Marks these sessions closed.
    fn close(&self, ids: Vec<SessionId>) -> BoxFuture<'static, StoreResult<()>>;
    /// Answers once the journal can read (readiness).
    fn ping(&self) -> BoxFuture<'static, StoreResult<()>>;
    /// The node that owns open session `session_id`, in a cluster (`None`: one process owns
    /// them all, or the session is unknown or closed).
    fn owner(&self, session_id: SessionId) -> BoxFuture<'static, StoreResult<Option<String>>> {
        let _ = session_id;
        Box::pin(async { Ok(None) })
    }
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS chat_sessions (
    session_id TEXT PRIMARY KEY,
    resume_token_hash TEXT NOT NULL,
    state TEXT NOT NULL,
    last_seq INTEGER NOT NULL,
    last_activity_at TEXT NOT NULL,
    detached_at TEXT,
    closed INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS chat_sessions_open ON chat_sessions (closed, last_activity_at);
CREATE INDEX IF NOT EXISTS chat_sessions_detached ON chat_sessions (closed, detached_at);
CREATE TABLE IF NOT EXISTS chat_frames (
    session_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    at TEXT NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY (session_id, seq)
) WITHOUT ROWID;
";

/// Appends waiting for one commit at most.
const BATCH_MAX: usize = 512;

enum Op {
    Append {
        session_id: SessionId,
        frames: Vec<JournalFrame>,
        record: Option<SessionRecord>,
        reply: oneshot::Sender<StoreResult<()>>,
    },
    Read(Box<dyn FnOnce(&Connection) + Send>),
}

/// The embedded chat journal (see the module docs).
pub struct SqliteChatJournal {
    ops: mpsc::Sender<Op>,
}

fn ts(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn parse_ts(text: &str) -> rusqlite::Result<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e))
        })
}

fn corrupt(what: impl std::fmt::Display) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(
        0,
        rusqlite::types::Type::Text,
        what.to_string().into(),
    )
}

/// A session as [`ChatJournal::session`] reads it.
pub type LoadedSession = (SessionRecord, Vec<JournalFrame>);

/// Frames after `after_seq`, oldest first, at most `limit`.
fn frames_of(
    c: &Connection,
    session_id: SessionId,
    after_seq: u64,
    limit: u32,
) -> rusqlite::Result<Vec<JournalFrame>> {
    let mut stmt = c.prepare_cached(
        "SELECT seq, at, body FROM chat_frames WHERE session_id = ?1 AND seq > ?2 \
         ORDER BY seq LIMIT ?3",
    )?;
    let rows = stmt.query_map(
        params![session_id.to_string(), after_seq as i64, limit],
        |row| {
            Ok(JournalFrame {
                seq: row.get::<_, i64>(0)?.max(0) as u64,
                at: parse_ts(&row.get::<_, String>(1)?)?,
                body: row.get(2)?,
            })
        },
    )?;
    rows.collect()
}

fn record_of(row: &rusqlite::Row<'_>) -> rusqlite::Result<SessionRecord> {
    let id: String = row.get(0)?;
    let detached: Option<String> = row.get(5)?;
    Ok(SessionRecord {
        session_id: id.parse().map_err(corrupt)?,
        resume_token_hash: row.get(1)?,
        state: row.get(2)?,
        last_seq: row.get::<_, i64>(3)?.max(0) as u64,
        last_activity_at: parse_ts(&row.get::<_, String>(4)?)?,
        detached_at: detached.as_deref().map(parse_ts).transpose()?,
        closed: row.get::<_, i64>(6)? != 0,
    })
}

const RECORD_COLUMNS: &str =
    "session_id, resume_token_hash, state, last_seq, last_activity_at, detached_at, closed";

impl SqliteChatJournal {
    /// Opens (creating if needed) `chat.db` in `dir` and starts its thread.
    pub fn open(dir: &Path, sync: Synchronous) -> StoreResult<Self> {
        let path = dir.join("chat.db");
        let conn = Connection::open(&path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(
            None,
            "synchronous",
            match sync {
                Synchronous::Full => "FULL",
                Synchronous::Normal => "NORMAL",
            },
        )?;
        // A small page cache: SQLite walks it at the end of every commit (page-cache truncation
        // was 3 % of the server's CPU with 16 MiB), and pages it misses come from the kernel's
        // cache. 2 MiB cost 2-6 points of a core less than 16 MiB at 5,000 and at 15,000 sessions
        // (BENCHMARKS.md, "Live chat on every core").
        conn.pragma_update(None, "cache_size", -2048)?;
        conn.execute_batch(SCHEMA)?;
        let (tx, rx) = mpsc::channel();
        thread::Builder::new()
            .name("chat-journal".into())
            .spawn(move || run(conn, rx))
            .map_err(|e| StoreError::Io {
                path: path.display().to_string(),
                source: e,
            })?;
        Ok(Self { ops: tx })
    }

    fn read<T: Send + 'static>(
        &self,
        query: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> BoxFuture<'static, StoreResult<T>> {
        let (tx, rx) = oneshot::channel();
        let sent = self.ops.send(Op::Read(Box::new(move |c| {
            let _ = tx.send(query(c).map_err(StoreError::from));
        })));
        async move {
            sent.map_err(|_| StoreError::Closed)?;
            rx.await.map_err(|_| StoreError::Closed)?
        }
        .boxed()
    }
}

/// How long the journal thread gathers appends after the first before it commits them. A commit
/// writes every page it touched to the WAL once, whatever the number of appends in it: under load
/// most of the journal's cost is that write, so a commit a millisecond for everything that came
/// in it costs a fraction of a commit per append (BENCHMARKS.md, "Chat journal"), for at most this
/// much more wait before an ack.
const COMMIT_WINDOW: Duration = Duration::from_millis(1);

/// The journal's thread: every append waiting (gathered for up to [`COMMIT_WINDOW`]) is committed
/// in one transaction, then reads run.
fn run(mut conn: Connection, ops: mpsc::Receiver<Op>) {
    let take_waiting = |batch: &mut Vec<Op>| {
        while batch.len() < BATCH_MAX {
            match ops.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
    };
    while let Ok(first) = ops.recv() {
        let mut batch = vec![first];
        take_waiting(&mut batch);
        // The window is slept out rather than waited on the channel: what arrives meanwhile
        // wakes nobody, so the thread wakes once per commit, not once per append (each wake-up
        // was a context switch on a busy machine).
        if batch.len() < BATCH_MAX {
            thread::sleep(COMMIT_WINDOW);
            take_waiting(&mut batch);
        }
        let mut appends = Vec::new();
        let mut reads = Vec::new();
        for op in batch {
            match op {
                Op::Append {
                    session_id,
                    frames,
                    record,
                    reply,
                } => appends.push((session_id, frames, record, reply)),
                Op::Read(q) => reads.push(q),
            }
        }
        if !appends.is_empty() {
            let started = std::time::Instant::now();
            let size = appends.len();
            let outcome = commit(&mut conn, &appends);
            metrics::histogram!(crate::metrics::CHAT_JOURNAL_COMMIT)
                .record(started.elapsed().as_secs_f64());
            metrics::histogram!(crate::metrics::CHAT_JOURNAL_BATCH).record(size as f64);
            if let Err(e) = &outcome {
                metrics::counter!(crate::metrics::CHAT_JOURNAL_ERRORS).increment(1);
                tracing::error!(error = %e, "chat journal commit failed");
            }
            for (_, _, _, reply) in appends {
                let _ = reply.send(match &outcome {
                    Ok(()) => Ok(()),
                    Err(e) => Err(StoreError::Corrupt(format!(
                        "chat journal commit failed: {e}"
                    ))),
                });
            }
        }
        for q in reads {
            q(&conn);
        }
    }
}

type Append = (
    SessionId,
    Vec<JournalFrame>,
    Option<SessionRecord>,
    oneshot::Sender<StoreResult<()>>,
);

fn commit(conn: &mut Connection, appends: &[Append]) -> rusqlite::Result<()> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    {
        let mut frame = tx.prepare_cached(
            "INSERT OR REPLACE INTO chat_frames (session_id, seq, at, body) VALUES (?1, ?2, ?3, ?4)",
        )?;
        // An update in place: REPLACE would delete the row and insert it again, index entries
        // and all, on every append.
        let mut upsert = tx.prepare_cached(&format!(
            "INSERT INTO chat_sessions ({RECORD_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) \
             ON CONFLICT (session_id) DO UPDATE SET resume_token_hash = excluded.resume_token_hash, \
             state = excluded.state, last_seq = excluded.last_seq, \
             last_activity_at = excluded.last_activity_at, detached_at = excluded.detached_at, \
             closed = excluded.closed"
        ))?;
        for (session_id, frames, record, _) in appends {
            let id = session_id.to_string();
            for f in frames {
                frame.execute(params![id, f.seq as i64, ts(&f.at), f.body])?;
            }
            if let Some(r) = record {
                upsert.execute(params![
                    id,
                    r.resume_token_hash,
                    r.state,
                    r.last_seq as i64,
                    ts(&r.last_activity_at),
                    r.detached_at.as_ref().map(ts),
                    r.closed as i64,
                ])?;
            }
        }
    }
    tx.commit()
}

impl ChatJournal for SqliteChatJournal {
    fn append(
        &self,
        session_id: SessionId,
        frames: Vec<JournalFrame>,
        record: Option<SessionRecord>,
    ) -> BoxFuture<'static, StoreResult<()>> {
        let (reply, rx) = oneshot::channel();
        let sent = self.ops.send(Op::Append {
            session_id,
            frames,
            record,
            reply,
        });
        async move {
            sent.map_err(|_| StoreError::Closed)?;
            rx.await.map_err(|_| StoreError::Closed)?
        }
        .boxed()
    }

    fn record(
        &self,
        session_id: SessionId,
    ) -> BoxFuture<'static, StoreResult<Option<SessionRecord>>> {
        self.read(move |c| {
            c.prepare_cached(&format!(
                "SELECT {RECORD_COLUMNS} FROM chat_sessions WHERE session_id = ?1"
            ))?
            .query_row(params![session_id.to_string()], record_of)
            .optional()
        })
    }

    fn frames(
        &self,
        session_id: SessionId,
        after_seq: u64,
        limit: u32,
    ) -> BoxFuture<'static, StoreResult<Vec<JournalFrame>>> {
        self.read(move |c| frames_of(c, session_id, after_seq, limit))
    }

    fn session(
        &self,
        session_id: SessionId,
        history: u32,
    ) -> BoxFuture<'static, StoreResult<Option<LoadedSession>>> {
        self.read(move |c| {
            let record = c
                .prepare_cached(&format!(
                    "SELECT {RECORD_COLUMNS} FROM chat_sessions WHERE session_id = ?1"
                ))?
                .query_row(params![session_id.to_string()], record_of)
                .optional()?;
            let Some(record) = record else {
                return Ok(None);
            };
            let from = record.last_seq.saturating_sub(u64::from(history));
            let frames = frames_of(c, session_id, from, history)?;
            Ok(Some((record, frames)))
        })
    }

    fn open_sessions(&self) -> BoxFuture<'static, StoreResult<Vec<SessionRecord>>> {
        self.read(|c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {RECORD_COLUMNS} FROM chat_sessions WHERE closed = 0 ORDER BY last_activity_at"
            ))?;
            let rows = stmt.query_map([], record_of)?;
            rows.collect()
        })
    }

    fn mark_detached(&self, at: DateTime<Utc>) -> BoxFuture<'static, StoreResult<()>> {
        self.maintain(move |c| {
            c.execute(
                "UPDATE chat_sessions SET detached_at = ?1 WHERE closed = 0 AND detached_at IS NULL",
                params![ts(&at)],
            )
            .map(|_| ())
        })
    }

    fn expired(
        &self,
        detached_before: DateTime<Utc>,
        idle_before: DateTime<Utc>,
        limit: u32,
    ) -> BoxFuture<'static, StoreResult<Vec<SessionId>>> {
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT session_id FROM chat_sessions WHERE closed = 0 AND detached_at < ?1 \
                 UNION SELECT session_id FROM chat_sessions WHERE closed = 0 AND last_activity_at < ?2 \
                 LIMIT ?3",
            )?;
            let rows = stmt.query_map(
                params![ts(&detached_before), ts(&idle_before), limit],
                |row| row.get::<_, String>(0)?.parse().map_err(corrupt),
            )?;
            rows.collect()
        })
    }

    fn close(&self, ids: Vec<SessionId>) -> BoxFuture<'static, StoreResult<()>> {
        self.maintain(move |c| {
            let tx = c.unchecked_transaction()?;
            {
                let mut stmt =
                    tx.prepare_cached("UPDATE chat_sessions SET closed = 1 WHERE session_id = ?1")?;
                for id in ids {
                    stmt.execute(params![id.to_string()])?;
                }
            }
            tx.commit()
        })
    }

    fn ping(&self) -> BoxFuture<'static, StoreResult<()>> {
        self.read(|c| c.query_row("SELECT 1", [], |_| Ok(())))
    }

    /// One transaction per chunk of sessions, each its own turn on the journal's thread: the
    /// appends waiting meanwhile commit between chunks, so a first prune over months of chats
    /// never holds acks back for longer than one chunk takes.
    fn prune(&self, before: DateTime<Utc>) -> BoxFuture<'static, StoreResult<u64>> {
        const PRUNE_CHUNK: u32 = 2_000;
        let journal = Self {
            ops: self.ops.clone(),
        };
        let cutoff = ts(&before);
        async move {
            let mut total = 0;
            loop {
                let cutoff = cutoff.clone();
                let removed = journal
                    .maintain(move |c| {
                        let tx = c.unchecked_transaction()?;
                        let ids: Vec<String> = {
                            // `closed IN (0, 1)` lets the (closed, last_activity_at) index find the
                            // chunk instead of a scan of every session for each one.
                            let mut stmt = tx.prepare_cached(
                                "SELECT session_id FROM chat_sessions \
                                 WHERE closed IN (0, 1) AND last_activity_at < ?1 LIMIT ?2",
                            )?;
                            let rows =
                                stmt.query_map(params![cutoff, PRUNE_CHUNK], |row| row.get(0))?;
                            rows.collect::<rusqlite::Result<_>>()?
                        };
                        {
                            let mut frames =
                                tx.prepare_cached("DELETE FROM chat_frames WHERE session_id = ?1")?;
                            let mut session = tx.prepare_cached(
                                "DELETE FROM chat_sessions WHERE session_id = ?1",
                            )?;
                            for id in &ids {
                                frames.execute(params![id])?;
                                session.execute(params![id])?;
                            }
                        }
                        tx.commit()?;
                        Ok(ids.len() as u64)
                    })
                    .await?;
                total += removed;
                if removed < PRUNE_CHUNK as u64 {
                    return Ok(total);
                }
            }
        }
        .boxed()
    }
}

impl SqliteChatJournal {
    /// Runs a write outside the group commit (rare maintenance: marks, sweeps, prunes), in order
    /// with the appends.
    fn maintain<T: Send + 'static>(
        &self,
        write: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> BoxFuture<'static, StoreResult<T>> {
        self.read(write)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(seq: u64) -> JournalFrame {
        JournalFrame {
            seq,
            at: crate::store::now(),
            body: format!(r#"{{"type":"message","seq":{seq}}}"#),
        }
    }

    fn record(id: SessionId, last_seq: u64, closed: bool) -> SessionRecord {
        SessionRecord {
            session_id: id,
            resume_token_hash: "h".into(),
            state: r#"{"owner":"ai"}"#.into(),
            last_seq,
            last_activity_at: crate::store::now(),
            detached_at: None,
            closed,
        }
    }

    #[actix_rt::test]
    async fn frames_and_state_survive_a_reopen_and_replay_from_any_seq() {
        let dir = tempfile::tempdir().unwrap();
        let id = SessionId::new();
        {
            let j = SqliteChatJournal::open(dir.path(), Synchronous::Normal).unwrap();
            j.append(id, vec![frame(1), frame(2)], Some(record(id, 2, false)))
                .await
                .unwrap();
            j.append(id, vec![frame(3)], Some(record(id, 3, false)))
                .await
                .unwrap();
        }
        let j = SqliteChatJournal::open(dir.path(), Synchronous::Normal).unwrap();
        let seqs: Vec<u64> = j
            .frames(id, 1, 10)
            .await
            .unwrap()
            .iter()
            .map(|f| f.seq)
            .collect();
        assert_eq!(seqs, [2, 3], "gap-free from any seq");
        assert_eq!(j.record(id).await.unwrap().unwrap().last_seq, 3);
        assert_eq!(j.open_sessions().await.unwrap().len(), 1);
    }

    #[actix_rt::test]
    async fn many_appends_commit_together_and_closed_sessions_are_pruned() {
        let dir = tempfile::tempdir().unwrap();
        let j = SqliteChatJournal::open(dir.path(), Synchronous::Normal).unwrap();
        let ids: Vec<SessionId> = (0..50).map(|_| SessionId::new()).collect();
        let appends = ids
            .iter()
            .map(|id| j.append(*id, vec![frame(1)], Some(record(*id, 1, false))));
        for r in futures_util::future::join_all(appends).await {
            r.unwrap();
        }
        assert_eq!(j.open_sessions().await.unwrap().len(), 50);
        j.append(ids[0], vec![], Some(record(ids[0], 1, true)))
            .await
            .unwrap();
        assert_eq!(j.open_sessions().await.unwrap().len(), 49);
        let future = crate::store::now() + chrono::Duration::seconds(1);
        assert_eq!(j.prune(future).await.unwrap(), 50);
        assert!(j.frames(ids[1], 0, 10).await.unwrap().is_empty());
    }

    #[actix_rt::test]
    async fn a_big_prune_goes_in_chunks_that_let_appends_commit_between_them() {
        let dir = tempfile::tempdir().unwrap();
        let j = SqliteChatJournal::open(dir.path(), Synchronous::Normal).unwrap();
        let now = crate::store::now();
        let old = now - chrono::Duration::days(40);
        let stale: Vec<SessionId> = (0..5_000).map(|_| SessionId::new()).collect();
        let appends = stale.iter().map(|id| {
            let mut r = record(*id, 2, true);
            r.last_activity_at = old;
            j.append(*id, vec![frame(1), frame(2)], Some(r))
        });
        for r in futures_util::future::join_all(appends).await {
            r.unwrap();
        }
        let kept = SessionId::new();
        j.append(kept, vec![frame(1)], Some(record(kept, 1, false)))
            .await
            .unwrap();

        // The append is sent right after the prune's first chunk and is committed before the
        // second: a prune in one turn of the journal's thread could hold it until the very end.
        let cutoff = now - chrono::Duration::days(30);
        let late = SessionId::new();
        let prune = j.prune(cutoff);
        let append = j.append(late, vec![frame(1)], Some(record(late, 1, false)));
        let prune = match futures_util::future::select(prune, append).await {
            futures_util::future::Either::Right((appended, prune)) => {
                appended.unwrap();
                prune
            }
            futures_util::future::Either::Left(_) => panic!("the prune finished before the append"),
        };
        assert_eq!(prune.await.unwrap(), 5_000, "every chunk counted");

        for id in [stale[0], stale[2_500], stale[4_999]] {
            assert!(j.record(id).await.unwrap().is_none());
            assert!(j.frames(id, 0, 10).await.unwrap().is_empty());
        }
        for id in [kept, late] {
            assert!(j.record(id).await.unwrap().is_some());
            assert_eq!(j.frames(id, 0, 10).await.unwrap().len(), 1);
        }
        assert_eq!(j.prune(cutoff).await.unwrap(), 0, "nothing left to prune");
    }
}
