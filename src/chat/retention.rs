//! Chat retention (`chat.retention_days`): a background loop that removes from the chat journal
//! every session, with its transcript, last active longer ago than the retention, once every
//! `chat.retention_sweep_ms`. With a retention of 0 chats are kept forever and nothing runs.

use std::sync::Arc;
use std::time::Duration;

use crate::bridge::client::chain;
use crate::metrics as m;
use crate::store::chat_journal::ChatJournal;

/// Starts the prune loop on the current runtime, unless `days` is 0. The handle is for a caller that
/// wants to stop it; dropping it leaves the loop running.
pub fn spawn(
    journal: Arc<dyn ChatJournal>,
    days: u32,
    every: Duration,
) -> Option<actix_rt::task::JoinHandle<()>> {
    if days == 0 {
        return None;
    }
    let keep = chrono::Duration::days(i64::from(days));
    Some(actix_rt::spawn(async move {
        // The first tick is at once: a process restarted more often than `every` would otherwise
        // never prune.
        let mut tick = tokio::time::interval(every);
        // A prune that overran its period is not made up for with a burst of prunes.
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let before = crate::store::now() - keep;
            match journal.prune(before).await {
                Ok(0) => tracing::debug!(retention_days = days, "chat retention: nothing to prune"),
                Ok(n) => {
                    metrics::counter!(m::CHAT_PRUNED).increment(n);
                    tracing::info!(
                        sessions = n,
                        retention_days = days,
                        "chat retention: pruned chats past the retention"
                    );
                }
                Err(e) => tracing::warn!(
                    error = %chain(&e),
                    "chat retention prune failed; retrying at the next sweep"
                ),
            }
        }
    }))
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use chrono::{DateTime, Utc};
    use futures_channel::mpsc;
    use futures_util::future::{BoxFuture, FutureExt};
    use futures_util::StreamExt;

    use super::*;
    use crate::domain::ids::SessionId;
    use crate::store::chat_journal::{JournalFrame, SessionRecord};
    use crate::store::{StoreError, StoreResult};

    /// A journal that reports each prune's cutoff and answers with the next scripted result.
    struct Prunes {
        cutoffs: mpsc::UnboundedSender<DateTime<Utc>>,
        results: Mutex<Vec<StoreResult<u64>>>,
    }

    impl ChatJournal for Prunes {
        fn append(
            &self,
            _: SessionId,
            _: Vec<JournalFrame>,
            _: Option<SessionRecord>,
        ) -> BoxFuture<'static, StoreResult<()>> {
            async { Ok(()) }.boxed()
        }
        fn record(&self, _: SessionId) -> BoxFuture<'static, StoreResult<Option<SessionRecord>>> {
            async { Ok(None) }.boxed()
        }
        fn frames(
            &self,
            _: SessionId,
            _: u64,
            _: u32,
        ) -> BoxFuture<'static, StoreResult<Vec<JournalFrame>>> {
            async { Ok(Vec::new()) }.boxed()
        }
        fn session(
            &self,
            _: SessionId,
            _: u32,
        ) -> BoxFuture<'static, StoreResult<Option<crate::store::chat_journal::LoadedSession>>>
        {
            async { Ok(None) }.boxed()
        }
        fn open_sessions(&self) -> BoxFuture<'static, StoreResult<Vec<SessionRecord>>> {
            async { Ok(Vec::new()) }.boxed()
        }
        fn prune(&self, before: DateTime<Utc>) -> BoxFuture<'static, StoreResult<u64>> {
            let _ = self.cutoffs.unbounded_send(before);
            let mut results = self.results.lock().unwrap();
            let result = if results.is_empty() {
                Ok(0)
            } else {
                results.remove(0)
            };
            async move { result }.boxed()
        }
        fn mark_detached(&self, _: DateTime<Utc>) -> BoxFuture<'static, StoreResult<()>> {
            async { Ok(()) }.boxed()
        }
        fn expired(
            &self,
            _: DateTime<Utc>,
            _: DateTime<Utc>,
            _: u32,
        ) -> BoxFuture<'static, StoreResult<Vec<SessionId>>> {
            async { Ok(Vec::new()) }.boxed()
        }
        fn close(&self, _: Vec<SessionId>) -> BoxFuture<'static, StoreResult<()>> {
            async { Ok(()) }.boxed()
        }
        fn ping(&self) -> BoxFuture<'static, StoreResult<()>> {
            async { Ok(()) }.boxed()
        }
    }

    fn journal(
        results: Vec<StoreResult<u64>>,
    ) -> (Arc<Prunes>, mpsc::UnboundedReceiver<DateTime<Utc>>) {
        let (cutoffs, rx) = mpsc::unbounded();
        let journal = Arc::new(Prunes {
            cutoffs,
            results: Mutex::new(results),
        });
        (journal, rx)
    }

    async fn next_cutoff(rx: &mut mpsc::UnboundedReceiver<DateTime<Utc>>) -> DateTime<Utc> {
        tokio::time::timeout(Duration::from_secs(10), rx.next())
            .await
            .expect("a prune within the wait")
            .expect("the loop is running")
    }

    #[actix_rt::test]
    async fn a_retention_of_zero_keeps_chats_forever() {
        let (j, _rx) = journal(Vec::new());
        assert!(spawn(j, 0, Duration::from_millis(1)).is_none());
    }

    #[actix_rt::test]
    async fn the_first_prune_runs_at_start_with_the_retention_as_its_cutoff() {
        let (j, mut rx) = journal(Vec::new());
        let handle = spawn(j, 30, Duration::from_secs(3600)).expect("a loop");
        let expected = crate::store::now() - chrono::Duration::days(30);
        let cutoff = next_cutoff(&mut rx).await;
        assert!(
            (cutoff - expected).num_seconds().abs() < 5,
            "cutoff {cutoff}, expected about {expected}"
        );
        handle.abort();
    }

    #[actix_rt::test]
    async fn a_failed_prune_is_followed_by_the_next_ones() {
        let (j, mut rx) = journal(vec![Err(StoreError::Closed), Ok(3)]);
        let handle = spawn(j, 1, Duration::from_millis(5)).expect("a loop");
        let first = next_cutoff(&mut rx).await;
        next_cutoff(&mut rx).await;
        let third = next_cutoff(&mut rx).await;
        assert!(third >= first, "each cutoff moves with the clock");
        handle.abort();
    }
}
