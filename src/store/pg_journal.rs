//! The chat journal in PostgreSQL (`storage.postgres_url`): the same [`ChatJournal`] as
//! `chat.db`, in a database every node of a cluster reaches, so a session can be loaded on any of
//! them with its history.
//!
//! Owns a small tokio runtime on its own thread (`chat-journal-pg`) that runs the connection pool
//! (`deadpool-postgres` over `tokio-postgres`): callers on any arbiter get a `Send` future back,
//! and a connection never belongs to an arbiter that may stop. Appends are group-committed like the
//! SQLite journal's: what arrives within a millisecond of the first goes in one transaction (one
//! statement for the frames, one for the records), answered once committed.
//!
//! The schema is created at open by the versioned migrations every PostgreSQL store shares
//! ([`super::pg_schema`]), under an advisory lock so that nodes starting together apply each one
//! once; the pool and its runtime are [`super::pg_pool`]'s.

use std::time::Duration;

use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use futures_util::future::{BoxFuture, FutureExt};
use tokio_postgres::Row;

use super::chat_journal::{ChatJournal, JournalFrame, LoadedSession, SessionRecord};
use super::pg_pool::PgPool;
use super::pg_schema::pg;
use super::{StoreError, StoreResult};
use crate::domain::ids::SessionId;

const RECORD_COLUMNS: &str =
    "session_id, resume_token_hash, state, last_seq, last_activity_at, detached_at, closed";

/// The chat journal on PostgreSQL.
pub struct PgChatJournal {
    db: PgPool,
    /// To the committer: appends waiting to be committed together.
    appends: tokio::sync::mpsc::UnboundedSender<Append>,
}

/// One session's append and who waits for its commit.
struct Append {
    session_id: SessionId,
    frames: Vec<JournalFrame>,
    record: Option<SessionRecord>,
    done: tokio::sync::oneshot::Sender<StoreResult<()>>,
}

/// How long the committer gathers appends after the first before it commits them all in one
/// transaction (as the SQLite journal does): one round of statements and one WAL flush for
/// everything that came in it.
const COMMIT_WINDOW: Duration = Duration::from_millis(1);

/// Most appends in one commit.
const BATCH_MAX: usize = 512;

impl PgChatJournal {
    /// Connects to `url` with up to `pool_size` connections, trying for up to `connect_timeout`,
    /// and brings the schema up to date.
    pub fn open(url: &str, pool_size: usize, connect_timeout: Duration) -> StoreResult<Self> {
        let db = PgPool::open(url, pool_size, connect_timeout, "chat-journal-pg")?;
        let (appends, queued) = tokio::sync::mpsc::unbounded_channel();
        db.runtime.spawn(committer(db.pool.clone(), queued));
        Ok(Self { db, appends })
    }

    /// Runs `work` with the pool on the journal's runtime.
    fn run<T, F, Fut>(&self, work: F) -> BoxFuture<'static, StoreResult<T>>
    where
        T: Send + 'static,
        F: FnOnce(Pool) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = StoreResult<T>> + Send + 'static,
    {
        self.db.run(work)
    }
}

fn record_of(row: &Row) -> SessionRecord {
    SessionRecord {
        session_id: SessionId(row.get(0)),
        resume_token_hash: row.get(1),
        state: row.get(2),
        last_seq: row.get::<_, i64>(3) as u64,
        last_activity_at: row.get(4),
        detached_at: row.get(5),
        closed: row.get(6),
    }
}

fn frame_of(row: &Row) -> JournalFrame {
    JournalFrame {
        seq: row.get::<_, i64>(0) as u64,
        at: row.get(1),
        body: row.get(2),
    }
}

async fn frames_of(
    client: &deadpool_postgres::Object,
    session_id: SessionId,
    after_seq: u64,
    limit: u32,
) -> StoreResult<Vec<JournalFrame>> {
    let rows = client
        .query(
            "SELECT seq, at, body FROM chat_frames WHERE session_id = $1 AND seq > $2 \
             ORDER BY seq LIMIT $3",
            &[&session_id.0, &(after_seq as i64), &i64::from(limit)],
        )
        .await
        .map_err(pg)?;
    Ok(rows.iter().map(frame_of).collect())
}

async fn record_by_id(
    client: &deadpool_postgres::Object,
    session_id: SessionId,
) -> StoreResult<Option<SessionRecord>> {
    let row = client
        .query_opt(
            &format!("SELECT {RECORD_COLUMNS} FROM chat_sessions WHERE session_id = $1"),
            &[&session_id.0],
        )
        .await
        .map_err(pg)?;
    Ok(row.as_ref().map(record_of))
}

/// Commits appends as they come: everything that arrives within [`COMMIT_WINDOW`] of the first
/// goes in one transaction; each waiter hears how it went.
async fn committer(pool: Pool, mut queued: tokio::sync::mpsc::UnboundedReceiver<Append>) {
    while let Some(first) = queued.recv().await {
        let mut batch = vec![first];
        tokio::time::sleep(COMMIT_WINDOW).await;
        while batch.len() < BATCH_MAX {
            match queued.try_recv() {
                Ok(append) => batch.push(append),
                Err(_) => break,
            }
        }
        let started = std::time::Instant::now();
        let span = tracing::debug_span!("chat_journal_pg_commit", appends = batch.len());
        let result = tracing::Instrument::instrument(commit(&pool, &batch), span).await;
        metrics::histogram!(crate::metrics::CHAT_JOURNAL_COMMIT)
            .record(started.elapsed().as_secs_f64());
        metrics::histogram!(crate::metrics::CHAT_JOURNAL_BATCH).record(batch.len() as f64);
        if let Err(e) = &result {
            metrics::counter!(crate::metrics::CHAT_JOURNAL_ERRORS).increment(1);
            tracing::error!(error = %e, appends = batch.len(), "chat journal commit to PostgreSQL failed");
        }
        for append in batch {
            let _ = append.done.send(match &result {
                Ok(()) => Ok(()),
                Err(e) => Err(StoreError::Database(e.to_string())),
            });
        }
    }
}

/// Every frame and record of `batch` in one transaction: one statement for the frames and one for
/// the records, each over arrays (a session has one append in flight, so no key repeats).
async fn commit(pool: &Pool, batch: &[Append]) -> StoreResult<()> {
    let mut client = pool.get().await.map_err(pg)?;
    let tx = client.transaction().await.map_err(pg)?;
    let (mut f_ids, mut f_seqs, mut f_ats, mut f_bodies) = (vec![], vec![], vec![], vec![]);
    for a in batch {
        for f in &a.frames {
            f_ids.push(a.session_id.0);
            f_seqs.push(f.seq as i64);
            f_ats.push(f.at);
            f_bodies.push(f.body.as_str());
        }
    }
    if !f_ids.is_empty() {
        let insert = tx
            .prepare_cached(
                "INSERT INTO chat_frames (session_id, seq, at, body) \
                 SELECT * FROM UNNEST($1::uuid[], $2::int8[], $3::timestamptz[], $4::text[]) \
                 ON CONFLICT (session_id, seq) DO UPDATE SET at = excluded.at, body = excluded.body",
            )
            .await
            .map_err(pg)?;
        tx.execute(&insert, &[&f_ids, &f_seqs, &f_ats, &f_bodies])
            .await
            .map_err(pg)?;
    }
    let records: Vec<&SessionRecord> = batch.iter().filter_map(|a| a.record.as_ref()).collect();
    if !records.is_empty() {
        let ids: Vec<uuid::Uuid> = records.iter().map(|r| r.session_id.0).collect();
        let hashes: Vec<&str> = records
            .iter()
            .map(|r| r.resume_token_hash.as_str())
            .collect();
        let states: Vec<&str> = records.iter().map(|r| r.state.as_str()).collect();
        let seqs: Vec<i64> = records.iter().map(|r| r.last_seq as i64).collect();
        let active: Vec<DateTime<Utc>> = records.iter().map(|r| r.last_activity_at).collect();
        let detached: Vec<Option<DateTime<Utc>>> = records.iter().map(|r| r.detached_at).collect();
        let closed: Vec<bool> = records.iter().map(|r| r.closed).collect();
        let upsert = tx
            .prepare_cached(&format!(
                "INSERT INTO chat_sessions ({RECORD_COLUMNS}) \
                 SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::int8[], \
                 $5::timestamptz[], $6::timestamptz[], $7::bool[]) \
                 ON CONFLICT (session_id) DO UPDATE SET resume_token_hash = excluded.resume_token_hash, \
                 state = excluded.state, last_seq = excluded.last_seq, \
                 last_activity_at = excluded.last_activity_at, detached_at = excluded.detached_at, \
                 closed = excluded.closed"
            ))
            .await
            .map_err(pg)?;
        tx.execute(
            &upsert,
            &[&ids, &hashes, &states, &seqs, &active, &detached, &closed],
        )
        .await
        .map_err(pg)?;
    }
    tx.commit().await.map_err(pg)
}

impl ChatJournal for PgChatJournal {
    fn append(
        &self,
        session_id: SessionId,
        frames: Vec<JournalFrame>,
        record: Option<SessionRecord>,
    ) -> BoxFuture<'static, StoreResult<()>> {
        let (done, committed) = tokio::sync::oneshot::channel();
        let sent = self.appends.send(Append {
            session_id,
            frames,
            record,
            done,
        });
        async move {
            sent.map_err(|_| StoreError::Closed)?;
            committed.await.map_err(|_| StoreError::Closed)?
        }
        .boxed()
    }

    fn record(
        &self,
        session_id: SessionId,
    ) -> BoxFuture<'static, StoreResult<Option<SessionRecord>>> {
        self.run(move |pool| async move {
            let client = pool.get().await.map_err(pg)?;
            record_by_id(&client, session_id).await
        })
    }

    fn frames(
        &self,
        session_id: SessionId,
        after_seq: u64,
        limit: u32,
    ) -> BoxFuture<'static, StoreResult<Vec<JournalFrame>>> {
        self.run(move |pool| async move {
            let client = pool.get().await.map_err(pg)?;
            frames_of(&client, session_id, after_seq, limit).await
        })
    }

    fn session(
        &self,
        session_id: SessionId,
        history: u32,
    ) -> BoxFuture<'static, StoreResult<Option<LoadedSession>>> {
        self.run(move |pool| async move {
            let client = pool.get().await.map_err(pg)?;
            let Some(record) = record_by_id(&client, session_id).await? else {
                return Ok(None);
            };
            let from = record.last_seq.saturating_sub(u64::from(history));
            let frames = frames_of(&client, session_id, from, history).await?;
            Ok(Some((record, frames)))
        })
    }

    fn open_sessions(&self) -> BoxFuture<'static, StoreResult<Vec<SessionRecord>>> {
        self.run(|pool| async move {
            let client = pool.get().await.map_err(pg)?;
            let rows = client
                .query(
                    &format!(
                        "SELECT {RECORD_COLUMNS} FROM chat_sessions WHERE NOT closed \
                         ORDER BY last_activity_at"
                    ),
                    &[],
                )
                .await
                .map_err(pg)?;
            Ok(rows.iter().map(record_of).collect())
        })
    }

    fn prune(&self, before: DateTime<Utc>) -> BoxFuture<'static, StoreResult<u64>> {
        const PRUNE_CHUNK: i64 = 2_000;
        self.run(move |pool| async move {
            let client = pool.get().await.map_err(pg)?;
            let mut total = 0;
            // One chunk per statement, so a first prune over months of chats holds no lock long.
            loop {
                let removed: i64 = client
                    .query_one(
                        "WITH gone AS (
                            DELETE FROM chat_sessions WHERE session_id IN (
                                SELECT session_id FROM chat_sessions
                                WHERE last_activity_at < $1 LIMIT $2)
                            RETURNING session_id),
                         frames AS (
                            DELETE FROM chat_frames WHERE session_id IN (SELECT session_id FROM gone))
                         SELECT count(*) FROM gone",
                        &[&before, &PRUNE_CHUNK],
                    )
                    .await
                    .map_err(pg)?
                    .get(0);
                total += removed as u64;
                if removed < PRUNE_CHUNK {
                    return Ok(total);
                }
            }
        })
    }

    fn mark_detached(&self, at: DateTime<Utc>) -> BoxFuture<'static, StoreResult<()>> {
        self.run(move |pool| async move {
            let client = pool.get().await.map_err(pg)?;
            client
                .execute(
                    "UPDATE chat_sessions SET detached_at = $1 WHERE NOT closed AND detached_at IS NULL",
                    &[&at],
                )
                .await
                .map_err(pg)?;
            Ok(())
        })
    }

    fn expired(
        &self,
        detached_before: DateTime<Utc>,
        idle_before: DateTime<Utc>,
        limit: u32,
    ) -> BoxFuture<'static, StoreResult<Vec<SessionId>>> {
        self.run(move |pool| async move {
            let client = pool.get().await.map_err(pg)?;
            let rows = client
                .query(
                    "SELECT session_id FROM chat_sessions WHERE NOT closed \
                     AND (detached_at < $1 OR last_activity_at < $2) LIMIT $3",
                    &[&detached_before, &idle_before, &i64::from(limit)],
                )
                .await
                .map_err(pg)?;
            Ok(rows.iter().map(|r| SessionId(r.get(0))).collect())
        })
    }

    fn close(&self, ids: Vec<SessionId>) -> BoxFuture<'static, StoreResult<()>> {
        self.run(move |pool| async move {
            let client = pool.get().await.map_err(pg)?;
            let ids: Vec<uuid::Uuid> = ids.into_iter().map(|id| id.0).collect();
            client
                .execute(
                    "UPDATE chat_sessions SET closed = true WHERE session_id = ANY($1)",
                    &[&ids],
                )
                .await
                .map_err(pg)?;
            Ok(())
        })
    }

    fn ping(&self) -> BoxFuture<'static, StoreResult<()>> {
        self.run(|pool| async move {
            let client = pool.get().await.map_err(pg)?;
            client.simple_query("SELECT 1").await.map_err(pg)?;
            Ok(())
        })
    }
}
