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

use std::collections::HashMap;
use std::sync::Arc;
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
    /// In a cluster: this node's claim on the sessions it owns.
    fence: Option<Arc<Fence>>,
}

/// One owner per session across the cluster. A node takes a session by raising its epoch
/// (`claim`, on every load), and writes it only while the stored epoch is still the one it took:
/// a node that lost a session to another (its customer resumed there) is refused
/// ([`StoreError::Fenced`]) on its next write, however late it comes.
pub struct Fence {
    pub node: String,
    /// A node silent this long is dead: its sessions may be ended by the others' sweeps.
    pub dead_after: Duration,
    /// The epoch this node holds, by session.
    epochs: std::sync::Mutex<HashMap<SessionId, i64>>,
}

impl Fence {
    pub fn new(node: String, dead_after: Duration) -> Self {
        Self {
            node,
            dead_after,
            epochs: Default::default(),
        }
    }

    fn held(&self, id: SessionId) -> Option<i64> {
        self.epochs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&id)
            .copied()
    }

    fn hold(&self, id: SessionId, epoch: i64) {
        self.epochs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, epoch);
    }

    fn forget(&self, ids: &[SessionId]) {
        let mut epochs = self.epochs.lock().unwrap_or_else(|e| e.into_inner());
        for id in ids {
            epochs.remove(id);
        }
    }
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
    pub fn open(
        url: &str,
        pool_size: usize,
        connect_timeout: Duration,
        fence: Option<Fence>,
    ) -> StoreResult<Self> {
        let fence = fence.map(Arc::new);
        let db = PgPool::open(url, pool_size, connect_timeout, "chat-journal-pg")?;
        let (appends, queued) = tokio::sync::mpsc::unbounded_channel();
        db.runtime
            .spawn(committer(db.pool.clone(), queued, fence.clone()));
        Ok(Self { db, appends, fence })
    }

    /// The pool and the runtime it runs on, for the cluster's membership (heartbeats, the queue's
    /// lead), which lives in the same database.
    pub fn pool(&self) -> (Pool, tokio::runtime::Handle) {
        (self.db.pool.clone(), self.db.runtime.clone())
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
async fn committer(
    pool: Pool,
    mut queued: tokio::sync::mpsc::UnboundedReceiver<Append>,
    fence: Option<Arc<Fence>>,
) {
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
        let result =
            tracing::Instrument::instrument(commit(&pool, &batch, fence.as_deref()), span).await;
        metrics::histogram!(crate::metrics::CHAT_JOURNAL_COMMIT)
            .record(started.elapsed().as_secs_f64());
        metrics::histogram!(crate::metrics::CHAT_JOURNAL_BATCH).record(batch.len() as f64);
        if let Err(e) = &result {
            metrics::counter!(crate::metrics::CHAT_JOURNAL_ERRORS).increment(1);
            tracing::error!(error = %e, appends = batch.len(), "chat journal commit to PostgreSQL failed");
        }
        for append in batch {
            let _ = append.done.send(match &result {
                Ok(fenced) if fenced.contains(&append.session_id) => {
                    Err(StoreError::Fenced(append.session_id))
                }
                Ok(_) => Ok(()),
                Err(e) => Err(StoreError::Database(e.to_string())),
            });
        }
    }
}

/// Which appends of `batch` this node may no longer write, its rows locked until the commit: a
/// session whose stored epoch is not the one this node holds (or that another node owns).
async fn fenced_in(
    tx: &tokio_postgres::Transaction<'_>,
    batch: &[Append],
    fence: &Fence,
) -> StoreResult<(Vec<SessionId>, HashMap<uuid::Uuid, i64>)> {
    let ids: Vec<uuid::Uuid> = batch.iter().map(|a| a.session_id.0).collect();
    let rows = tx
        .query(
            "SELECT session_id, epoch, owner FROM chat_sessions WHERE session_id = ANY($1)              ORDER BY session_id FOR UPDATE",
            &[&ids],
        )
        .await
        .map_err(pg)?;
    let stored: HashMap<uuid::Uuid, (i64, Option<String>)> = rows
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2))))
        .collect();
    let mut fenced = Vec::new();
    for a in batch {
        let Some((epoch, owner)) = stored.get(&a.session_id.0) else {
            continue; // A new session: this node's first write makes it its owner.
        };
        let ours = owner.as_deref().map_or(true, |o| o == fence.node);
        if !ours || fence.held(a.session_id).is_some_and(|held| held != *epoch) {
            fenced.push(a.session_id);
        }
    }
    let epochs = stored
        .into_iter()
        .map(|(id, (epoch, _))| (id, epoch))
        .collect();
    Ok((fenced, epochs))
}

/// Every frame and record of `batch` in one transaction: one statement for the frames and one for
/// the records, each over arrays (a session has one append in flight, so no key repeats). With a
/// fence, appends of sessions another node took are left out: their ids are the answer.
async fn commit(
    pool: &Pool,
    batch: &[Append],
    fence: Option<&Fence>,
) -> StoreResult<Vec<SessionId>> {
    let mut client = pool.get().await.map_err(pg)?;
    let tx = client.transaction().await.map_err(pg)?;
    let (fenced, epochs) = match fence {
        Some(fence) => fenced_in(&tx, batch, fence).await?,
        None => Default::default(),
    };
    let batch: Vec<&Append> = batch
        .iter()
        .filter(|a| !fenced.contains(&a.session_id))
        .collect();
    let (mut f_ids, mut f_seqs, mut f_ats, mut f_bodies) = (vec![], vec![], vec![], vec![]);
    for a in &batch {
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
    let owner = fence.map(|f| f.node.as_str());
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
        // A new session's first record names its owner with epoch 1; later ones leave both.
        let upsert = tx
            .prepare_cached(&format!(
                "INSERT INTO chat_sessions ({RECORD_COLUMNS}, owner, epoch) \
                 SELECT *, $8::text, 1 FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::int8[], \
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
            &[
                &ids, &hashes, &states, &seqs, &active, &detached, &closed, &owner,
            ],
        )
        .await
        .map_err(pg)?;
    }
    tx.commit().await.map_err(pg)?;
    if let Some(fence) = fence {
        for a in &batch {
            if a.record.is_some() && fence.held(a.session_id).is_none() {
                let epoch = epochs.get(&a.session_id.0).copied().unwrap_or(1);
                fence.hold(a.session_id, epoch);
            }
        }
    }
    Ok(fenced)
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
        let fence = self.fence.clone();
        self.run(move |pool| async move {
            let client = pool.get().await.map_err(pg)?;
            if let Some(fence) = &fence {
                // Loading is taking: the epoch goes up, so whoever held it can no longer write.
                // Its last commit is either before this (and read below) or refused.
                let claimed = client
                    .query_opt(
                        "UPDATE chat_sessions SET owner = $2, epoch = epoch + 1 \
                         WHERE session_id = $1 AND NOT closed RETURNING epoch",
                        &[&session_id.0, &fence.node],
                    )
                    .await
                    .map_err(pg)?;
                if let Some(row) = claimed {
                    fence.hold(session_id, row.get(0));
                }
            }
            let Some(record) = record_by_id(&client, session_id).await? else {
                return Ok(None);
            };
            let from = record.last_seq.saturating_sub(u64::from(history));
            let frames = frames_of(&client, session_id, from, history).await?;
            Ok(Some((record, frames)))
        })
    }

    fn open_sessions(&self) -> BoxFuture<'static, StoreResult<Vec<SessionRecord>>> {
        let fence = self.fence.clone();
        self.run(|pool| async move {
            let client = pool.get().await.map_err(pg)?;
            // In a cluster a restarted node takes back only its own sessions, at the epoch it
            // had: any another node took meanwhile are that node's.
            let node = fence.as_ref().map(|f| f.node.clone());
            let rows = client
                .query(
                    &format!(
                        "SELECT {RECORD_COLUMNS}, epoch FROM chat_sessions WHERE NOT closed \
                         AND ($1::text IS NULL OR owner = $1 OR owner IS NULL) \
                         ORDER BY last_activity_at"
                    ),
                    &[&node],
                )
                .await
                .map_err(pg)?;
            if let Some(fence) = &fence {
                for row in &rows {
                    fence.hold(SessionId(row.get(0)), row.get(7));
                }
            }
            Ok(rows.iter().map(record_of).collect())
        })
    }

    fn owner(&self, session_id: SessionId) -> BoxFuture<'static, StoreResult<Option<String>>> {
        self.run(move |pool| async move {
            let client = pool.get().await.map_err(pg)?;
            let row = client
                .query_opt(
                    "SELECT owner FROM chat_sessions WHERE session_id = $1 AND NOT closed",
                    &[&session_id.0],
                )
                .await
                .map_err(pg)?;
            Ok(row.and_then(|r| r.get(0)))
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
        let node = self.fence.as_ref().map(|f| f.node.clone());
        self.run(move |pool| async move {
            let client = pool.get().await.map_err(pg)?;
            client
                .execute(
                    "UPDATE chat_sessions SET detached_at = $1 WHERE NOT closed AND detached_at IS NULL \
                     AND ($2::text IS NULL OR owner = $2 OR owner IS NULL)",
                    &[&at, &node],
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
        // In a cluster, a node ends its own sessions and those of nodes gone silent; a live
        // node's are its own to end.
        let node = self.fence.as_ref().map(|f| f.node.clone());
        let dead_after = self
            .fence
            .as_ref()
            .map_or(0.0, |f| f.dead_after.as_secs_f64());
        self.run(move |pool| async move {
            let client = pool.get().await.map_err(pg)?;
            let rows = client
                .query(
                    "SELECT session_id FROM chat_sessions WHERE NOT closed \
                     AND (detached_at < $1 OR last_activity_at < $2) \
                     AND ($4::text IS NULL OR owner IS NULL OR owner = $4 OR owner NOT IN ( \
                        SELECT node_id FROM switchboard_nodes \
                        WHERE last_seen > now() - make_interval(secs => $5))) \
                     LIMIT $3",
                    &[
                        &detached_before,
                        &idle_before,
                        &i64::from(limit),
                        &node,
                        &dead_after,
                    ],
                )
                .await
                .map_err(pg)?;
            Ok(rows.iter().map(|r| SessionId(r.get(0))).collect())
        })
    }

    fn close(&self, ids: Vec<SessionId>) -> BoxFuture<'static, StoreResult<()>> {
        if let Some(fence) = &self.fence {
            fence.forget(&ids);
        }
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
