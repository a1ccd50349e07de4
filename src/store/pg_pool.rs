//! What each PostgreSQL store owns to reach the database: a `deadpool-postgres` pool driven by a
//! small tokio runtime on a thread of its own, so callers on any arbiter get a `Send` future back
//! and a connection never belongs to an arbiter that may stop. Opening waits for the database (up
//! to `storage.postgres_connect_timeout_ms`) and brings the schema up to date ([`super::pg_schema`]).
//! A connection the database dropped (a restart) is replaced when next taken from the pool, so a
//! store recovers by itself once PostgreSQL is back.

use std::future::Future;
use std::thread;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use futures_util::future::{BoxFuture, FutureExt};
use tokio_postgres::NoTls;

use super::pg_schema::{migrate, pg};
use super::{StoreError, StoreResult};

/// A pool and the runtime that drives it.
#[derive(Clone)]
pub(crate) struct PgPool {
    pub pool: Pool,
    pub runtime: tokio::runtime::Handle,
}

impl PgPool {
    /// Connects to `url` with up to `pool_size` connections (the runtime's thread is named
    /// `thread`), trying for up to `connect_timeout`, and migrates the schema.
    pub fn open(
        url: &str,
        pool_size: usize,
        connect_timeout: Duration,
        thread: &str,
    ) -> StoreResult<Self> {
        let mut config: tokio_postgres::Config = url.parse().map_err(pg)?;
        // Each connection attempt is bounded too (unless the URL says otherwise): a database host
        // that stopped answering must not hold a store's committer for the kernel's TCP timeout.
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(connect_timeout);
        }
        let manager = Manager::from_config(
            config,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(pool_size.max(1))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .build()
            .map_err(pg)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| StoreError::Io {
                path: format!("{thread} runtime"),
                source: e,
            })?;
        let handle = runtime.handle().clone();
        // The runtime lives as long as the process: this thread drives every call of its store.
        thread::Builder::new()
            .name(thread.into())
            .spawn(move || runtime.block_on(std::future::pending::<()>()))
            .map_err(|e| StoreError::Io {
                path: format!("{thread} thread"),
                source: e,
            })?;
        let pg_pool = Self {
            pool,
            runtime: handle,
        };
        pg_pool.block_on(move |pool| async move {
            let deadline = tokio::time::Instant::now() + connect_timeout;
            let mut client = loop {
                match pool.get().await {
                    Ok(client) => break client,
                    Err(e) if tokio::time::Instant::now() < deadline => {
                        tracing::warn!(error = %e, "PostgreSQL not reachable yet; retrying");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    Err(e) => return Err(pg(e)),
                }
            };
            migrate(&mut client).await
        })?;
        Ok(pg_pool)
    }

    /// Runs `work` with the pool on the store's runtime.
    pub fn run<T, F, Fut>(&self, work: F) -> BoxFuture<'static, StoreResult<T>>
    where
        T: Send + 'static,
        F: FnOnce(Pool) -> Fut + Send + 'static,
        Fut: Future<Output = StoreResult<T>> + Send + 'static,
    {
        let pool = self.pool.clone();
        let task = self.runtime.spawn(async move { work(pool).await });
        async move {
            task.await
                .map_err(|e| StoreError::Panicked(e.to_string()))?
        }
        .boxed()
    }

    /// Runs `work` and waits for it on the calling thread, which may be inside another runtime
    /// (opening is synchronous: the process does not serve before its stores are up).
    pub fn block_on<T, F, Fut>(&self, work: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(Pool) -> Fut + Send + 'static,
        Fut: Future<Output = StoreResult<T>> + Send + 'static,
    {
        let task = self.run(work);
        let (done, finished) = std::sync::mpsc::channel();
        self.runtime.spawn(async move {
            let _ = done.send(task.await);
        });
        finished.recv().map_err(|_| StoreError::Closed)?
    }
}
