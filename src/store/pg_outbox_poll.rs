//! The outbox poll on PostgreSQL: entries written by other nodes (or left by one that died, their
//! lease run out) wake no bridge here, so each node looks every `storage.outbox_poll_ms` whether
//! any entry is free to lease, and wakes its bridge if so.

use std::sync::Weak;
use std::time::Duration;

use deadpool_postgres::Pool;

use super::outbox::OutboxSignal;
use super::pg_schema::pg;
use super::StoreError;

/// Wakes the bridge every `every` while some entry is free to lease: entries other nodes enqueued
/// (their signal is theirs) and entries whose node's lease expired. Ends with the store.
pub(super) async fn poll(pool: Pool, signal: Weak<OutboxSignal>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(signal) = signal.upgrade() else {
            return;
        };
        let found = async {
            let client = pool.get().await.map_err(pg)?;
            let row = client
                .query_one(
                    "SELECT EXISTS (SELECT 1 FROM outbox \
                     WHERE lease_until IS NULL OR lease_until < now())",
                    &[],
                )
                .await
                .map_err(pg)?;
            Ok::<bool, StoreError>(row.get(0))
        };
        match found.await {
            Ok(true) => signal.appended(1),
            Ok(false) => {}
            Err(e) => tracing::debug!(error = %e, "outbox poll failed"),
        }
    }
}
