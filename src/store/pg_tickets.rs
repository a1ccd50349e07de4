//! Tickets on PostgreSQL (`storage.postgres_url`): [`PgStore`] implements [`TicketStore`] here and
//! [`super::Outbox`] in [`super::pg_outbox`], on one database that every node of a cluster shares.
//!
//! Opened by `switchboard::run` when `storage.postgres_url` is set; owns a pool and its runtime
//! thread (`store-pg`, see [`super::pg_pool`]) and one committer task. Writes (creates, updates,
//! imports, enqueues) go to the committer, which commits whatever has queued up while its last
//! commit ran in one transaction (group commit), each waiter answered once it committed. A ticket
//! write is its row, its history event, its comment and its outbox row in that transaction. An
//! update names the version it replaces (`UPDATE … WHERE version = $n`), so of two nodes patching
//! one ticket at once exactly one wins and the other gets [`StoreError::VersionConflict`]; a create
//! of an existing id is [`StoreError::AlreadyExists`]. Writes of a batch run in ticket-id order, so
//! two nodes' batches lock rows in the same order and never deadlock.
//!
//! Reads (load, list, history) query the database directly: what another node committed is seen at
//! once. The store says so ([`TicketStore::shared`]) so ticket actors do not trust their cache.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use deadpool_postgres::{Pool, Transaction};
use futures_util::future::{BoxFuture, FutureExt};
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

use super::journal::{EncodedRecord, SyncRecordRef};
use super::pg_pool::PgPool;
use super::pg_schema::pg;
use super::{
    OutboxRecord, OutboxSignal, StoreError, StoreResult, TicketFilter, TicketStore, TicketWrite,
};
use crate::domain::ids::{EventId, TicketId};
use crate::domain::principal::Principal;
use crate::domain::status::Status;
use crate::domain::ticket::{EventKind, Priority, Source, Ticket, TicketEvent};
use crate::metrics as m;

/// Most writes in one commit.
const BATCH_MAX: usize = 512;

/// How [`PgStore`] is opened.
#[derive(Debug, Clone)]
pub struct PgStoreOptions {
    pub url: String,
    pub pool_size: usize,
    pub connect_timeout: Duration,
    /// This node's name: what its bridge's outbox leases are held under. Unique per process.
    pub node: String,
    /// How long a leased outbox entry stays with this node's bridge before another node may take
    /// it (`storage.outbox_lease_ms`).
    pub lease: Duration,
    /// How often the bridge is woken to look for entries other nodes enqueued or left behind
    /// (`storage.outbox_poll_ms`).
    pub poll: Duration,
}

/// Tickets and the outbox on PostgreSQL.
pub struct PgStore {
    pub(super) db: PgPool,
    pub(super) writes: mpsc::UnboundedSender<Write>,
    pub(super) signal: Arc<OutboxSignal>,
    pub(super) node: Arc<str>,
    pub(super) lease: Duration,
}

/// What a ticket write does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Create,
    Update,
    /// A ticket fetched from Django: no outbox row, and an existing one wins.
    Import,
}

/// A ticket write with its JSON encoded on the caller's thread.
pub(super) struct EncodedTicketWrite {
    op: Op,
    write: TicketWrite,
    /// Its outbox record (none for an import).
    record: Option<String>,
    changes: String,
    /// One more record in the same transaction (a chat ticket's).
    also: Option<EncodedRecord>,
}

/// One job for the committer.
pub(super) enum Write {
    Ticket(Box<EncodedTicketWrite>, oneshot::Sender<StoreResult<()>>),
    Enqueue(EncodedRecord, oneshot::Sender<StoreResult<i64>>),
    /// Answered once everything queued before it is committed (or failed).
    Flush(oneshot::Sender<()>),
}

impl Write {
    /// Writes of a batch run in this order: a ticket's row lock is taken in id order on every node.
    fn lock_order(&self) -> Option<uuid::Uuid> {
        match self {
            Self::Ticket(w, _) => Some(w.write.ticket.id.0),
            Self::Enqueue(..) | Self::Flush(_) => None,
        }
    }
}

fn encode<T: serde::Serialize>(value: &T) -> StoreResult<String> {
    serde_json::to_string(value).map_err(|e| StoreError::Corrupt(e.to_string()))
}

impl EncodedTicketWrite {
    fn new(op: Op, write: TicketWrite, also: Option<&OutboxRecord>) -> StoreResult<Self> {
        let record = match op {
            Op::Import => None,
            Op::Create | Op::Update => Some(encode(&SyncRecordRef::from(&write))?),
        };
        Ok(Self {
            op,
            changes: encode(&write.event.changes)?,
            record,
            also: also.map(EncodedRecord::new).transpose()?,
            write,
        })
    }
}

impl PgStore {
    /// Connects, migrates the schema and starts the committer and the outbox poll.
    pub fn open(options: PgStoreOptions) -> StoreResult<Self> {
        let db = PgPool::open(
            &options.url,
            options.pool_size,
            options.connect_timeout,
            "store-pg",
        )?;
        let signal = Arc::new(OutboxSignal::default());
        let (writes, queued) = mpsc::unbounded_channel();
        db.runtime
            .spawn(committer(db.pool.clone(), queued, signal.clone()));
        let node: Arc<str> = options.node.into();
        db.runtime.spawn(super::pg_outbox_poll::poll(
            db.pool.clone(),
            Arc::downgrade(&signal),
            options.poll,
        ));
        tracing::info!(node = %node, lease_ms = options.lease.as_millis() as u64, "tickets and outbox on PostgreSQL");
        Ok(Self {
            db,
            writes,
            signal,
            node,
            lease: options.lease,
        })
    }

    fn write(
        &self,
        op: Op,
        write: TicketWrite,
        also: Option<&OutboxRecord>,
    ) -> BoxFuture<'static, StoreResult<()>> {
        let encoded = match EncodedTicketWrite::new(op, write, also) {
            Ok(w) => w,
            Err(e) => return futures_util::future::ready(Err(e)).boxed(),
        };
        let (done, committed) = oneshot::channel();
        let sent = self.writes.send(Write::Ticket(Box::new(encoded), done));
        async move {
            sent.map_err(|_| StoreError::Closed)?;
            committed.await.map_err(|_| StoreError::Closed)?
        }
        .boxed()
    }
}

/// Commits writes as they come: the first one at once, and whatever queued up meanwhile in the
/// next transaction; each waiter hears how its write went.
async fn committer(
    pool: Pool,
    mut queued: mpsc::UnboundedReceiver<Write>,
    signal: Arc<OutboxSignal>,
) {
    while let Some(first) = queued.recv().await {
        let mut batch = vec![first];
        while batch.len() < BATCH_MAX {
            match queued.try_recv() {
                Ok(w) => batch.push(w),
                Err(_) => break,
            }
        }
        // Stable: one ticket's writes keep their order.
        batch.sort_by_key(Write::lock_order);
        let size = batch.len();
        let started = Instant::now();
        let span = tracing::debug_span!("store_pg_commit", writes = size);
        let outcome = tracing::Instrument::instrument(commit(&pool, &batch), span).await;
        metrics::histogram!(m::STORE_COMMIT_DURATION).record(started.elapsed().as_secs_f64());
        metrics::histogram!(m::STORE_COMMIT_BATCH).record(size as f64);
        match outcome {
            Ok(results) => {
                // Counted before anyone is answered: a caller that saw its write committed finds
                // the bridge already woken for it.
                let appended: u64 = results
                    .iter()
                    .map(|r| match r {
                        Applied::Ticket(Ok(n)) => *n,
                        Applied::Enqueued(_) => 1,
                        Applied::Ticket(Err(_)) | Applied::Nothing => 0,
                    })
                    .sum();
                if appended > 0 {
                    signal.appended(appended);
                }
                for (write, result) in batch.into_iter().zip(results) {
                    match (write, result) {
                        (Write::Ticket(_, done), Applied::Ticket(r)) => {
                            if r.is_err() {
                                metrics::counter!(m::STORE_WRITE_ERRORS).increment(1);
                            }
                            let _ = done.send(r.map(|_| ()));
                        }
                        (Write::Enqueue(_, done), Applied::Enqueued(seq)) => {
                            let _ = done.send(Ok(seq));
                        }
                        (Write::Flush(done), _) => {
                            let _ = done.send(());
                        }
                        (write, _) => fail(write, "the commit answered out of order"),
                    }
                }
            }
            Err(e) => {
                let writes = batch
                    .iter()
                    .filter(|w| !matches!(w, Write::Flush(_)))
                    .count();
                metrics::counter!(m::STORE_WRITE_ERRORS).increment(writes as u64);
                tracing::error!(error = %e, writes, "store commit to PostgreSQL failed");
                let why = match e {
                    StoreError::Database(why) => why,
                    other => other.to_string(),
                };
                for write in batch {
                    fail(write, &why);
                }
            }
        }
    }
}

/// Answers `write`'s waiter with a database failure (a flush is simply answered).
fn fail(write: Write, why: &str) {
    let failed = || StoreError::Database(why.to_string());
    match write {
        Write::Ticket(_, done) => {
            let _ = done.send(Err(failed()));
        }
        Write::Enqueue(_, done) => {
            let _ = done.send(Err(failed()));
        }
        Write::Flush(done) => {
            let _ = done.send(());
        }
    }
}

/// What one write of a committed batch did.
enum Applied {
    /// Outbox rows written, or why the write was refused (its rows were not written).
    Ticket(StoreResult<u64>),
    Enqueued(i64),
    Nothing,
}

/// Every write of `batch` (in lock order) in one transaction. A refusal (conflict, duplicate) is
/// that write's answer and leaves the others be; any other error fails the whole batch.
///
/// The writes go in rounds, each holding at most one write per ticket, and a round's statements
/// are pipelined on the connection (sent together, run in the order sent) instead of one round trip
/// each: a ticket's second write in a batch waits for its first, writes of different tickets do
/// not wait for each other. Every row lock is first taken in round 0, in ticket-id order.
async fn commit(pool: &Pool, batch: &[Write]) -> StoreResult<Vec<Applied>> {
    let mut client = pool.get().await.map_err(pg)?;
    let tx = client.transaction().await.map_err(pg)?;
    let rounds = rounds(batch);
    let mut results: Vec<Option<Applied>> = batch.iter().map(|_| None).collect();
    for round in rounds {
        let applied =
            futures_util::future::join_all(round.iter().map(|&i| apply_write(&tx, &batch[i])))
                .await;
        for (i, applied) in round.into_iter().zip(applied) {
            results[i] = Some(applied?);
        }
    }
    tx.commit().await.map_err(pg)?;
    Ok(results
        .into_iter()
        .map(|r| r.unwrap_or(Applied::Nothing))
        .collect())
}

/// The positions of `batch` in rounds: a write goes one round after its ticket's previous write.
fn rounds(batch: &[Write]) -> Vec<Vec<usize>> {
    let mut rounds: Vec<Vec<usize>> = Vec::new();
    let mut writes_of: std::collections::HashMap<uuid::Uuid, usize> = Default::default();
    for (i, write) in batch.iter().enumerate() {
        let round = match write.lock_order() {
            Some(id) => {
                let n = writes_of.entry(id).or_default();
                *n += 1;
                *n - 1
            }
            None => 0,
        };
        if rounds.len() <= round {
            rounds.resize_with(round + 1, Vec::new);
        }
        rounds[round].push(i);
    }
    rounds
}

async fn apply_write(tx: &Transaction<'_>, write: &Write) -> StoreResult<Applied> {
    Ok(match write {
        Write::Ticket(w, _) => Applied::Ticket(apply(tx, w).await.map_err(pg)?),
        Write::Enqueue(record, _) => {
            Applied::Enqueued(insert_record(tx, record).await.map_err(pg)?)
        }
        Write::Flush(_) => Applied::Nothing,
    })
}

const TICKET_COLUMNS: &str = "id, subject, description, status, priority, requester, assignee, \
     tags, source, chat_session_id, created_at, updated_at, version";

/// Writes one ticket change. The outer error is the database's; the inner one a refusal, decided
/// before anything of the write was inserted.
async fn apply(
    tx: &Transaction<'_>,
    w: &EncodedTicketWrite,
) -> Result<StoreResult<u64>, tokio_postgres::Error> {
    let t = &w.write.ticket;
    let status = t.status.as_str();
    let priority = t.priority.as_str();
    let source = t.source.as_str();
    let version = t.version as i64;
    match w.op {
        Op::Create | Op::Import => {
            let insert = tx
                .prepare_cached(&format!(
                    "INSERT INTO tickets ({TICKET_COLUMNS}) VALUES \
                     ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) \
                     ON CONFLICT (id) DO NOTHING"
                ))
                .await?;
            let inserted = tx
                .execute(
                    &insert,
                    &[
                        &t.id.0,
                        &t.subject,
                        &t.description,
                        &status,
                        &priority,
                        &t.requester,
                        &t.assignee,
                        &t.tags,
                        &source,
                        &t.chat_session_id,
                        &t.created_at,
                        &t.updated_at,
                        &version,
                    ],
                )
                .await?;
            match (inserted, w.op) {
                (0, Op::Import) => return Ok(Ok(0)), // a concurrent activation imported it first
                (0, _) => return Ok(Err(StoreError::AlreadyExists(t.id))),
                _ => {}
            }
        }
        Op::Update => {
            let expected = t.version.saturating_sub(1);
            let update = tx
                .prepare_cached(
                    "UPDATE tickets SET subject = $2, description = $3, status = $4, \
                     priority = $5, requester = $6, assignee = $7, tags = $8, source = $9, \
                     chat_session_id = $10, updated_at = $11, version = $12 \
                     WHERE id = $1 AND version = $13",
                )
                .await?;
            let updated = tx
                .execute(
                    &update,
                    &[
                        &t.id.0,
                        &t.subject,
                        &t.description,
                        &status,
                        &priority,
                        &t.requester,
                        &t.assignee,
                        &t.tags,
                        &source,
                        &t.chat_session_id,
                        &t.updated_at,
                        &version,
                        &(expected as i64),
                    ],
                )
                .await?;
            if updated == 0 {
                return Ok(Err(StoreError::VersionConflict { id: t.id, expected }));
            }
        }
    }
    insert_event(tx, &w.write.event, &w.changes).await?;
    if let Some(c) = &w.write.comment {
        let insert = tx
            .prepare_cached(
                "INSERT INTO ticket_comments (id, ticket_id, author, body, created_at) \
                 VALUES ($1, $2, $3, $4, $5)",
            )
            .await?;
        tx.execute(
            &insert,
            &[
                &c.id,
                &c.ticket_id.0,
                &c.author.to_string(),
                &c.body,
                &c.created_at,
            ],
        )
        .await?;
    }
    let mut appended = 0;
    if let Some(record) = &w.record {
        let key = w.write.event.event_id.to_string();
        insert_outbox(tx, &key, &t.id.to_string(), record).await?;
        appended += 1;
    }
    if let Some(also) = &w.also {
        insert_record(tx, also).await?;
        appended += 1;
    }
    Ok(Ok(appended))
}

async fn insert_event(
    tx: &Transaction<'_>,
    e: &TicketEvent,
    changes: &str,
) -> Result<(), tokio_postgres::Error> {
    let insert = tx
        .prepare_cached(
            "INSERT INTO ticket_events (event_id, ticket_id, kind, actor, on_behalf_of, at, \
             version, changes) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .await?;
    tx.execute(
        &insert,
        &[
            &e.event_id.0,
            &e.ticket_id.0,
            &e.kind.as_str(),
            &e.actor.identity().as_ref(),
            &e.actor.acting_for(),
            &e.at,
            &(e.version as i64),
            &changes,
        ],
    )
    .await?;
    Ok(())
}

async fn insert_outbox(
    tx: &Transaction<'_>,
    key: &str,
    subject: &str,
    payload: &str,
) -> Result<i64, tokio_postgres::Error> {
    let insert = tx
        .prepare_cached(
            "INSERT INTO outbox (key, subject, payload, enqueued_at) VALUES ($1, $2, $3, $4) \
             RETURNING seq",
        )
        .await?;
    let row = tx
        .query_one(&insert, &[&key, &subject, &payload, &super::now()])
        .await?;
    Ok(row.get(0))
}

async fn insert_record(
    tx: &Transaction<'_>,
    r: &EncodedRecord,
) -> Result<i64, tokio_postgres::Error> {
    insert_outbox(tx, &r.key, &r.subject, &r.payload).await
}

fn corrupt(what: &str, value: &str) -> StoreError {
    StoreError::Corrupt(format!("bad {what} `{value}`"))
}

fn ticket_of(row: &Row) -> StoreResult<Ticket> {
    let status: &str = row.get(3);
    let priority: &str = row.get(4);
    let source: &str = row.get(8);
    Ok(Ticket {
        id: TicketId(row.get(0)),
        subject: row.get(1),
        description: row.get(2),
        status: Status::parse(status).ok_or_else(|| corrupt("status", status))?,
        priority: Priority::parse(priority).ok_or_else(|| corrupt("priority", priority))?,
        requester: row.get(5),
        assignee: row.get(6),
        tags: row.get(7),
        source: Source::parse(source).ok_or_else(|| corrupt("source", source))?,
        chat_session_id: row.get(9),
        created_at: row.get(10),
        updated_at: row.get(11),
        version: row.get::<_, i64>(12) as u64,
    })
}

fn event_of(id: TicketId, row: &Row) -> StoreResult<(i64, TicketEvent)> {
    let kind: &str = row.get(2);
    let changes: &str = row.get(6);
    let at: DateTime<Utc> = row.get(4);
    Ok((
        row.get(0),
        TicketEvent {
            event_id: EventId(row.get(1)),
            ticket_id: id,
            kind: EventKind::parse(kind).ok_or_else(|| corrupt("event kind", kind))?,
            actor: Principal::from_record(row.get(3), row.get(7)),
            at,
            version: row.get::<_, i64>(5) as u64,
            changes: serde_json::from_str(changes).map_err(|_| corrupt("changes", changes))?,
        },
    ))
}

/// The tickets matching `f` in id order, as one statement built from the filters given.
async fn list(pool: Pool, f: TicketFilter) -> StoreResult<Vec<Ticket>> {
    let mut sql = format!("SELECT {TICKET_COLUMNS} FROM tickets WHERE true");
    let mut args: Vec<Box<dyn ToSql + Sync + Send>> = Vec::new();
    let mut and = |clause: &str, value: Box<dyn ToSql + Sync + Send>| {
        args.push(value);
        sql.push_str(&clause.replace('?', &format!("${}", args.len())));
    };
    if let Some(s) = f.status {
        and(" AND status = ?", Box::new(s.as_str()));
    }
    if let Some(a) = f.assignee {
        and(" AND assignee = ?", Box::new(a));
    }
    if let Some(p) = f.priority {
        and(" AND priority = ?", Box::new(p.as_str()));
    }
    if let Some(tag) = f.tag {
        and(" AND tags @> ARRAY[?::text]", Box::new(tag));
    }
    if let Some(after) = f.after {
        and(" AND id > ?", Box::new(after.0));
    }
    and(" ORDER BY id LIMIT ?", Box::new(i64::from(f.limit)));
    let client = pool.get().await.map_err(pg)?;
    let params: Vec<&(dyn ToSql + Sync)> = args
        .iter()
        .map(|b| b.as_ref() as &(dyn ToSql + Sync))
        .collect();
    let rows = client.query(&sql, &params).await.map_err(pg)?;
    rows.iter().map(ticket_of).collect()
}

impl TicketStore for PgStore {
    fn create(&self, write: TicketWrite) -> BoxFuture<'static, StoreResult<()>> {
        self.write(Op::Create, write, None)
    }

    fn create_with(
        &self,
        write: TicketWrite,
        record: OutboxRecord,
    ) -> BoxFuture<'static, StoreResult<()>> {
        self.write(Op::Create, write, Some(&record))
    }

    fn update(&self, write: TicketWrite) -> BoxFuture<'static, StoreResult<()>> {
        self.write(Op::Update, write, None)
    }

    fn import(&self, ticket: Ticket, event: TicketEvent) -> BoxFuture<'static, StoreResult<()>> {
        let write = TicketWrite {
            ticket,
            event,
            comment: None,
            request_id: None,
        };
        self.write(Op::Import, write, None)
    }

    fn load(&self, id: TicketId) -> BoxFuture<'static, StoreResult<Option<Ticket>>> {
        self.db.run(move |pool| async move {
            let client = pool.get().await.map_err(pg)?;
            let load = client
                .prepare_cached(&format!(
                    "SELECT {TICKET_COLUMNS} FROM tickets WHERE id = $1"
                ))
                .await
                .map_err(pg)?;
            let row = client.query_opt(&load, &[&id.0]).await.map_err(pg)?;
            row.as_ref().map(ticket_of).transpose()
        })
    }

    fn list(&self, filter: TicketFilter) -> BoxFuture<'static, StoreResult<Vec<Ticket>>> {
        self.db.run(move |pool| list(pool, filter))
    }

    fn events(
        &self,
        id: TicketId,
        after_seq: i64,
        limit: u32,
    ) -> BoxFuture<'static, StoreResult<Vec<(i64, TicketEvent)>>> {
        self.db.run(move |pool| async move {
            let client = pool.get().await.map_err(pg)?;
            let rows = client
                .query(
                    "SELECT seq, event_id, kind, actor, at, version, changes, on_behalf_of \
                     FROM ticket_events WHERE ticket_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
                    &[&id.0, &after_seq, &i64::from(limit)],
                )
                .await
                .map_err(pg)?;
            rows.iter().map(|r| event_of(id, r)).collect()
        })
    }

    fn ping(&self) -> BoxFuture<'static, StoreResult<()>> {
        self.db.run(|pool| async move {
            let client = pool.get().await.map_err(pg)?;
            client.simple_query("SELECT 1").await.map_err(pg)?;
            Ok(())
        })
    }

    fn close(&self) -> BoxFuture<'static, ()> {
        let (done, flushed) = oneshot::channel();
        let sent = self.writes.send(Write::Flush(done)).is_ok();
        let release = self.release_leases();
        async move {
            if sent {
                let _ = flushed.await;
            }
            // Bounded: a database that is gone cannot hold up the shutdown; the leases then expire.
            match tokio::time::timeout(Duration::from_secs(2), release).await {
                Ok(Ok(n)) if n > 0 => tracing::info!(entries = n, "outbox leases released"),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "could not release outbox leases; they expire")
                }
                Err(_) => tracing::warn!("releasing outbox leases timed out; they expire"),
            }
        }
        .boxed()
    }

    fn shared(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn update_of(id: TicketId) -> Write {
        let at = super::super::now();
        let ticket = Ticket {
            id,
            subject: "s".into(),
            description: String::new(),
            status: Status::Open,
            priority: Priority::Normal,
            requester: "r".into(),
            assignee: None,
            tags: vec![],
            source: Source::Api,
            chat_session_id: None,
            created_at: at,
            updated_at: at,
            version: 2,
        };
        let write = TicketWrite {
            event: TicketEvent {
                event_id: EventId::new(),
                ticket_id: id,
                kind: EventKind::Updated,
                actor: Principal::System,
                at,
                version: 2,
                changes: json!({}),
            },
            ticket,
            comment: None,
            request_id: None,
        };
        let encoded = EncodedTicketWrite::new(Op::Update, write, None).unwrap();
        Write::Ticket(Box::new(encoded), oneshot::channel().0)
    }

    #[test]
    fn a_tickets_next_write_goes_one_round_after_its_previous_one() {
        let (a, b) = (TicketId::new(), TicketId::new());
        let flush = Write::Flush(oneshot::channel().0);
        let batch = vec![
            flush,
            update_of(a),
            update_of(a),
            update_of(b),
            update_of(a),
        ];
        assert_eq!(rounds(&batch), vec![vec![0, 1, 3], vec![2], vec![4]]);
        assert!(rounds(&[]).is_empty());
    }
}
