//! The outbox on PostgreSQL: [`Outbox`] for [`PgStore`], shared by every node's bridge, with each
//! entry delivered by one node at a time.
//!
//! [`Outbox::peek`] *leases* what it returns: the entries are marked `leased_by` this node until
//! `now() + storage.outbox_lease_ms`, and no other node's peek returns them meanwhile. A node that
//! dies leaves its leases to expire, and the entries go to whichever bridge peeks next. A peek also
//! renews this node's own leases on what it returns again (entries that failed and wait for the next
//! cycle). Per-ticket (per-subject) order holds across nodes: an entry is not leased while an older
//! entry of the same subject is leased by another node. Peeks take an advisory lock for their
//! transaction, so two nodes' peeks never decide on the same snapshot. [`Outbox::ack`] deletes only
//! entries this node still holds: one whose lease expired and was taken over is delivered (again) by
//! the node that took it; Django drops the repeat by its event id.
//!
//! A local enqueue wakes the local bridge through [`OutboxSignal`]; entries other nodes enqueued, or
//! left behind, are found by [`poll`], which wakes the bridge every `storage.outbox_poll_ms` while
//! any entry is free to lease.

use std::sync::Arc;
use std::time::{Duration, Instant};

use deadpool_postgres::Pool;
use futures_util::future::{BoxFuture, FutureExt};
use tokio::sync::oneshot;
use tokio_postgres::Row;

use super::journal::EncodedRecord;
use super::pg_schema::pg;
use super::pg_tickets::{PgStore, Write};
use super::{
    DeadLetter, Failure, Outbox, OutboxEntry, OutboxRecord, OutboxSignal, OutboxStats,
    PendingEntry, RecordSummary, Rejection, StoreError, StoreResult,
};
use crate::metrics as m;

/// Taken by each peek for its transaction: any number shared by every node (`'sb-lease'`).
const LEASE_LOCK: i64 = 0x7362_2d6c_6561_7365;

fn decode(payload: &str, what: &str) -> StoreResult<OutboxRecord> {
    serde_json::from_str(payload).map_err(|e| StoreError::Corrupt(format!("{what} payload: {e}")))
}

fn entry_of(row: &Row) -> StoreResult<OutboxEntry> {
    Ok(OutboxEntry {
        seq: row.get(0),
        record: decode(row.get(1), "outbox")?,
        enqueued_at: row.get(2),
        attempts: row.get::<_, i32>(3) as u32,
        isolated_failures: row.get::<_, i32>(4) as u32,
    })
}

/// Leases up to `limit` of the oldest entries free for `node` and returns them in outbox order,
/// with how many of them were taken over from another node's expired lease.
async fn lease(
    pool: Pool,
    node: Arc<str>,
    lease: Duration,
    limit: usize,
) -> StoreResult<(Vec<OutboxEntry>, u64)> {
    let mut client = pool.get().await.map_err(pg)?;
    let tx = client.transaction().await.map_err(pg)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LEASE_LOCK])
        .await
        .map_err(pg)?;
    let lease_ms = lease.as_millis() as i64;
    let rows = tx
        .query(
            "WITH free AS (
                SELECT o.seq, (o.leased_by IS NOT NULL AND o.leased_by <> $1) AS taken_over
                FROM outbox o
                WHERE (o.lease_until IS NULL OR o.lease_until < now() OR o.leased_by = $1)
                  AND NOT EXISTS (
                    SELECT 1 FROM outbox older
                    WHERE older.subject = o.subject AND older.seq < o.seq
                      AND older.leased_by <> $1 AND older.lease_until >= now())
                ORDER BY o.seq LIMIT $2)
             UPDATE outbox SET leased_by = $1, lease_until = now() + $3 * interval '1 millisecond'
             FROM free WHERE outbox.seq = free.seq
             RETURNING outbox.seq, outbox.payload, outbox.enqueued_at, outbox.attempts,
                       outbox.isolated_failures, free.taken_over",
            &[&&*node, &(limit as i64), &(lease_ms as f64)],
        )
        .await
        .map_err(pg)?;
    tx.commit().await.map_err(pg)?;
    let taken_over = rows.iter().filter(|r| r.get::<_, bool>(5)).count() as u64;
    let mut entries = rows.iter().map(entry_of).collect::<StoreResult<Vec<_>>>()?;
    entries.sort_by_key(|e| e.seq);
    Ok((entries, taken_over))
}

/// Moves entries to the dead letters; returns how many were still in the outbox.
async fn dead_letter(pool: Pool, rejected: Vec<Rejection>) -> StoreResult<u64> {
    let mut client = pool.get().await.map_err(pg)?;
    let tx = client.transaction().await.map_err(pg)?;
    let mut moved = 0;
    for r in &rejected {
        let status = r.status_code.map(i32::from);
        moved += tx
            .execute(
                "WITH gone AS (DELETE FROM outbox WHERE seq = $1
                    RETURNING key, subject, payload, enqueued_at)
                 INSERT INTO outbox_dead_letters (key, subject, payload, enqueued_at, failed_at,
                    status_code, error)
                 SELECT key, subject, payload, enqueued_at, now(), $2, $3 FROM gone",
                &[&r.seq, &status, &r.error],
            )
            .await
            .map_err(pg)?;
    }
    tx.commit().await.map_err(pg)?;
    Ok(moved)
}

impl PgStore {
    /// Gives back every lease this node holds, so other nodes need not wait for them to expire.
    pub(super) fn release_leases(&self) -> BoxFuture<'static, StoreResult<u64>> {
        let node = self.node.clone();
        self.db.run(move |pool| async move {
            let client = pool.get().await.map_err(pg)?;
            client
                .execute(
                    "UPDATE outbox SET leased_by = NULL, lease_until = NULL WHERE leased_by = $1",
                    &[&&*node],
                )
                .await
                .map_err(pg)
        })
    }
}

impl Outbox for PgStore {
    fn enqueue(&self, record: OutboxRecord) -> BoxFuture<'static, StoreResult<i64>> {
        let record = match EncodedRecord::new(&record) {
            Ok(r) => r,
            Err(e) => return futures_util::future::ready(Err(e)).boxed(),
        };
        let (done, committed) = oneshot::channel();
        let sent = self.writes.send(Write::Enqueue(record, done));
        async move {
            sent.map_err(|_| StoreError::Closed)?;
            committed.await.map_err(|_| StoreError::Closed)?
        }
        .boxed()
    }

    fn peek(&self, limit: usize) -> BoxFuture<'static, StoreResult<Vec<OutboxEntry>>> {
        let node = self.node.clone();
        let lease_for = self.lease;
        self.db.run(move |pool| {
            let span = tracing::debug_span!("outbox_lease", node = %node, limit);
            tracing::Instrument::instrument(
                async move {
                    let started = Instant::now();
                    let (entries, taken_over) = lease(pool, node, lease_for, limit).await?;
                    metrics::histogram!(m::OUTBOX_LEASE_DURATION)
                        .record(started.elapsed().as_secs_f64());
                    metrics::counter!(m::OUTBOX_LEASED).increment(entries.len() as u64);
                    if taken_over > 0 {
                        metrics::counter!(m::OUTBOX_LEASES_TAKEN_OVER).increment(taken_over);
                        tracing::info!(
                            entries = taken_over,
                            "took over outbox entries whose node's lease expired"
                        );
                    }
                    Ok(entries)
                },
                span,
            )
        })
    }

    fn ack(&self, seqs: Vec<i64>) -> BoxFuture<'static, StoreResult<()>> {
        let node = self.node.clone();
        self.db.run(move |pool| async move {
            let client = pool.get().await.map_err(pg)?;
            let gone = client
                .execute(
                    "DELETE FROM outbox WHERE seq = ANY($1) AND leased_by = $2",
                    &[&seqs, &&*node],
                )
                .await
                .map_err(pg)?;
            if gone < seqs.len() as u64 {
                // Its lease expired and another node took it: that node delivers it again.
                tracing::warn!(
                    acked = seqs.len(),
                    held = gone,
                    "delivered outbox entries another node had taken over"
                );
            }
            Ok(())
        })
    }

    fn dead_letter(&self, rejected: Vec<Rejection>) -> BoxFuture<'static, StoreResult<()>> {
        self.db
            .run(move |pool| async move { dead_letter(pool, rejected).await.map(|_| ()) })
    }

    fn record_failures(&self, failures: Vec<Failure>) -> BoxFuture<'static, StoreResult<()>> {
        self.db.run(move |pool| async move {
            let client = pool.get().await.map_err(pg)?;
            let seqs: Vec<i64> = failures.iter().map(|f| f.seq).collect();
            let errors: Vec<&str> = failures.iter().map(|f| f.error.as_str()).collect();
            let isolated: Vec<i32> = failures.iter().map(|f| i32::from(f.isolated)).collect();
            client
                .execute(
                    "UPDATE outbox SET attempts = attempts + 1, last_error = f.error, \
                     isolated_failures = isolated_failures + f.isolated \
                     FROM UNNEST($1::int8[], $2::text[], $3::int4[]) AS f(seq, error, isolated) \
                     WHERE outbox.seq = f.seq",
                    &[&seqs, &errors, &isolated],
                )
                .await
                .map_err(pg)?;
            Ok(())
        })
    }

    fn pending(&self, limit: u32) -> BoxFuture<'static, StoreResult<Vec<PendingEntry>>> {
        self.db.run(move |pool| async move {
            let client = pool.get().await.map_err(pg)?;
            let rows = client
                .query(
                    "SELECT seq, payload, enqueued_at, attempts, isolated_failures, last_error \
                     FROM outbox ORDER BY seq LIMIT $1",
                    &[&i64::from(limit)],
                )
                .await
                .map_err(pg)?;
            rows.iter()
                .map(|row| {
                    let record = decode(row.get(1), "outbox")?;
                    Ok(PendingEntry {
                        id: row.get(0),
                        record: RecordSummary::from(&record),
                        attempts: row.get::<_, i32>(3) as u32,
                        isolated_failures: row.get::<_, i32>(4) as u32,
                        last_error: row.get(5),
                        enqueued_at: row.get(2),
                    })
                })
                .collect()
        })
    }

    fn dead_letter_entry(&self, seq: i64, error: String) -> BoxFuture<'static, StoreResult<bool>> {
        let rejection = Rejection {
            seq,
            status_code: None,
            error,
        };
        self.db
            .run(move |pool| async move { Ok(dead_letter(pool, vec![rejection]).await? > 0) })
    }

    fn stats(&self) -> BoxFuture<'static, StoreResult<OutboxStats>> {
        self.db.run(|pool| async move {
            let client = pool.get().await.map_err(pg)?;
            let row = client
                .query_one(
                    "SELECT (SELECT count(*) FROM outbox), \
                     (SELECT enqueued_at FROM outbox ORDER BY seq LIMIT 1), \
                     (SELECT count(*) FROM outbox_dead_letters)",
                    &[],
                )
                .await
                .map_err(pg)?;
            Ok(OutboxStats {
                depth: row.get::<_, i64>(0) as u64,
                oldest: row.get(1),
                dead_letters: row.get::<_, i64>(2) as u64,
            })
        })
    }

    fn dead_letters(&self, limit: u32) -> BoxFuture<'static, StoreResult<Vec<DeadLetter>>> {
        self.db.run(move |pool| async move {
            let client = pool.get().await.map_err(pg)?;
            let rows = client
                .query(
                    "SELECT id, payload, status_code, error, failed_at, enqueued_at \
                     FROM outbox_dead_letters ORDER BY id LIMIT $1",
                    &[&i64::from(limit)],
                )
                .await
                .map_err(pg)?;
            rows.iter()
                .map(|row| {
                    let record = decode(row.get(1), "dead letter")?;
                    Ok(DeadLetter {
                        id: row.get(0),
                        summary: RecordSummary::from(&record),
                        status_code: row.get::<_, Option<i32>>(2).map(|c| c as u16),
                        error: row.get(3),
                        failed_at: row.get(4),
                        enqueued_at: row.get(5),
                        record,
                    })
                })
                .collect()
        })
    }

    fn retry_dead_letter(&self, id: i64) -> BoxFuture<'static, StoreResult<bool>> {
        let signal = self.signal.clone();
        self.db.run(move |pool| async move {
            let client = pool.get().await.map_err(pg)?;
            let requeued = client
                .execute(
                    "WITH gone AS (DELETE FROM outbox_dead_letters WHERE id = $1
                        RETURNING key, subject, payload, enqueued_at)
                     INSERT INTO outbox (key, subject, payload, enqueued_at)
                     SELECT key, subject, payload, enqueued_at FROM gone",
                    &[&id],
                )
                .await
                .map_err(pg)?;
            if requeued > 0 {
                signal.appended(1);
            }
            Ok(requeued > 0)
        })
    }

    fn signal(&self) -> Arc<OutboxSignal> {
        self.signal.clone()
    }
}
