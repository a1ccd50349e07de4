//! The node's connection to NATS, on a small tokio runtime of its own (thread `cluster-nats`), as
//! the PostgreSQL journal has its own: publishing never blocks an actor, and what arrives is read
//! there and handed to the chat threads by message.

use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::future::{BoxFuture, FutureExt};
use serde::de::DeserializeOwned;

use super::wire::{Envelope, Wire};
use super::ClusterError;
use crate::config::ClusterSettings;
use crate::metrics as m;

/// Publishes and requests on the broker, as this node.
#[derive(Clone)]
pub struct Bus {
    pub client: async_nats::Client,
    pub runtime: tokio::runtime::Handle,
    pub node: String,
    timeout: Duration,
    /// Messages under way, and the most allowed (`cluster.max_in_flight`).
    in_flight: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    max_in_flight: usize,
}

/// One message under way; gives its place back when dropped.
struct Slot(std::sync::Arc<std::sync::atomic::AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Why a request to another node got no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("no node listens there")]
    NoResponders,
    #[error("no answer in time")]
    TimedOut,
    #[error("the broker is unreachable: {0}")]
    Broker(String),
    #[error("the answer could not be read: {0}")]
    Garbled(String),
    #[error("too many messages to other nodes under way")]
    Overloaded,
}

/// Who the node is to the broker and how it talks to it: an NKey, TLS with the broker's CA, and
/// the node's own certificate for mutual TLS (`cluster.nats_*`). A user and password or a token
/// travel in the URL.
fn credentials(
    options: async_nats::ConnectOptions,
    cluster: &ClusterSettings,
) -> Result<async_nats::ConnectOptions, ClusterError> {
    let mut options = options;
    if !cluster.nats_nkey_file.is_empty() {
        let seed = std::fs::read_to_string(&cluster.nats_nkey_file).map_err(|e| {
            ClusterError::Connect(format!(
                "cluster.nats_nkey_file {}: {e}",
                cluster.nats_nkey_file
            ))
        })?;
        options = options.nkey(seed.trim().to_string());
    }
    if !cluster.nats_tls_ca_file.is_empty() {
        options = options.add_root_certificates(cluster.nats_tls_ca_file.clone().into());
    }
    if !cluster.nats_tls_cert_file.is_empty() {
        options = options.add_client_certificate(
            cluster.nats_tls_cert_file.clone().into(),
            cluster.nats_tls_key_file.clone().into(),
        );
    }
    Ok(options.require_tls(cluster.nats_tls()))
}

impl Bus {
    /// Connects to `url` as `node`, trying for up to `connect_timeout`; reconnects by itself
    /// afterwards, for as long as the process runs.
    pub fn connect(
        cluster: &ClusterSettings,
        node: &str,
        connect_timeout: Duration,
    ) -> Result<Self, ClusterError> {
        let request_timeout = Duration::from_millis(cluster.request_timeout_ms);
        let max_in_flight = cluster.max_in_flight;
        let url = cluster.nats_url.as_str();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(ClusterError::Runtime)?;
        let handle = runtime.handle().clone();
        thread::Builder::new()
            .name("cluster-nats".into())
            .spawn(move || runtime.block_on(std::future::pending::<()>()))
            .map_err(ClusterError::Runtime)?;
        // The broker's last refusal, so a node that cannot join says why (a wrong key, a
        // certificate the broker does not trust) rather than only that it timed out.
        let refused: Arc<Mutex<Option<String>>> = Arc::default();
        let last = refused.clone();
        let options = credentials(async_nats::ConnectOptions::new(), cluster)?
            .name(format!("switchboard {node}"))
            .request_timeout(Some(request_timeout))
            .retry_on_initial_connect()
            // Back soon after the broker is: a node away from it cannot reach its peers.
            .reconnect_delay_callback(|attempts| {
                Duration::from_millis((attempts as u64 * 100).min(1_000))
            })
            .event_callback(move |event| {
                let last = last.clone();
                async move {
                    match event {
                        async_nats::Event::Connected => tracing::info!("connected to NATS"),
                        async_nats::Event::Disconnected => {
                            metrics::counter!(m::CLUSTER_ERRORS, "kind" => "broker", "reason" => "disconnected").increment(1);
                            tracing::warn!("disconnected from NATS; reconnecting")
                        }
                        async_nats::Event::ClientError(e) => {
                            let error = e.to_string();
                            metrics::counter!(m::CLUSTER_ERRORS, "kind" => "broker", "reason" => "connect").increment(1);
                            tracing::warn!(%error, "NATS connection failed");
                            *last.lock().unwrap_or_else(|p| p.into_inner()) = Some(error);
                        }
                        async_nats::Event::ServerError(e) => {
                            let error = e.to_string();
                            tracing::warn!(%error, "NATS connection failed");
                            *last.lock().unwrap_or_else(|p| p.into_inner()) = Some(error);
                        }
                        other => tracing::info!(event = %other, "NATS"),
                    }
                }
            });
        let url = url.to_string();
        let connecting = handle.spawn(async move {
            tokio::time::timeout(connect_timeout, options.connect(url)).await
        });
        let (done, connected) = std::sync::mpsc::channel();
        handle.spawn(async move {
            let _ = done.send(connecting.await);
        });
        let client = match connected.recv() {
            Ok(Ok(Ok(Ok(client)))) => client,
            Ok(Ok(Ok(Err(e)))) => return Err(ClusterError::Connect(e.to_string())),
            Ok(Ok(Err(_))) => {
                return Err(ClusterError::Connect(format!(
                    "no answer within {} ms",
                    connect_timeout.as_millis()
                )))
            }
            _ => return Err(ClusterError::Connect("the connecting task failed".into())),
        };
        // `retry_on_initial_connect` returns before the first connection: wait for it.
        let probe = client.clone();
        let deadline = Instant::now() + connect_timeout;
        let (done, flushed) = std::sync::mpsc::channel();
        handle.spawn(async move {
            loop {
                if probe.connection_state() == async_nats::connection::State::Connected {
                    break;
                }
                if Instant::now() >= deadline {
                    let _ = done.send(false);
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let _ = done.send(probe.flush().await.is_ok());
        });
        if !flushed.recv().unwrap_or(false) {
            let why = refused
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take()
                .map_or(String::new(), |e| format!("; last: {e}"));
            return Err(ClusterError::Connect(format!(
                "not connected within {} ms{why}",
                connect_timeout.as_millis()
            )));
        }
        Ok(Self {
            client,
            runtime: handle,
            node: node.to_string(),
            timeout: request_timeout,
            in_flight: Default::default(),
            max_in_flight,
        })
    }

    pub fn connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    fn encode(&self, wire: Wire) -> (Bytes, &'static str) {
        let kind = wire.kind();
        let envelope = Envelope {
            from: self.node.clone(),
            wire,
        };
        let bytes = serde_json::to_vec(&envelope).expect("wire messages serialize");
        (Bytes::from(bytes), kind)
    }

    /// A place for one more message under way, unless `cluster.max_in_flight` are.
    fn slot(&self, kind: &'static str) -> Option<Slot> {
        use std::sync::atomic::Ordering;
        if self.in_flight.fetch_add(1, Ordering::Relaxed) >= self.max_in_flight {
            self.in_flight.fetch_sub(1, Ordering::Relaxed);
            metrics::counter!(m::CLUSTER_ERRORS, "kind" => kind, "reason" => "overloaded")
                .increment(1);
            return None;
        }
        Some(Slot(self.in_flight.clone()))
    }

    /// Sends `wire` to `subject`; a broker that is down loses it (what must not be lost is
    /// acknowledged end to end, or kept in PostgreSQL), and so does one past
    /// `cluster.max_in_flight`.
    pub fn publish(&self, subject: String, wire: Wire) {
        let kind = wire.kind();
        let Some(slot) = self.slot(kind) else {
            return;
        };
        let (payload, kind) = self.encode(wire);
        let client = self.client.clone();
        metrics::counter!(m::CLUSTER_SENT, "kind" => kind).increment(1);
        self.runtime.spawn(async move {
            let _slot = slot;
            if let Err(e) = client.publish(subject, payload).await {
                metrics::counter!(m::CLUSTER_ERRORS, "kind" => kind, "reason" => "publish")
                    .increment(1);
                tracing::warn!(error = %e, kind, "message to another node not sent");
            }
        });
    }

    /// Puts `wire` to whoever answers on `subject`, and reads the answer.
    pub fn request<T: DeserializeOwned + Send + 'static>(
        &self,
        subject: String,
        wire: Wire,
    ) -> BoxFuture<'static, Result<T, RequestError>> {
        let Some(slot) = self.slot(wire.kind()) else {
            return Box::pin(async { Err(RequestError::Overloaded) });
        };
        let (payload, kind) = self.encode(wire);
        let client = self.client.clone();
        let timeout = self.timeout;
        metrics::counter!(m::CLUSTER_SENT, "kind" => kind).increment(1);
        let task = self.runtime.spawn(async move {
            let _slot = slot;
            let started = Instant::now();
            let answer = tokio::time::timeout(timeout, client.request(subject, payload)).await;
            metrics::histogram!(m::CLUSTER_REQUEST, "kind" => kind)
                .record(started.elapsed().as_secs_f64());
            let message = match answer {
                Err(_) => Err(RequestError::TimedOut),
                Ok(Err(e)) => Err(match e.kind() {
                    async_nats::RequestErrorKind::NoResponders => RequestError::NoResponders,
                    async_nats::RequestErrorKind::TimedOut => RequestError::TimedOut,
                    async_nats::RequestErrorKind::Other => RequestError::Broker(e.to_string()),
                }),
                Ok(Ok(message)) => Ok(message),
            }?;
            serde_json::from_slice(&message.payload)
                .map_err(|e| RequestError::Garbled(e.to_string()))
        });
        async move {
            let result = task
                .await
                .unwrap_or_else(|e| Err(RequestError::Broker(e.to_string())));
            if let Err(e) = &result {
                let reason = match e {
                    RequestError::NoResponders => "no_responders",
                    RequestError::TimedOut => "timed_out",
                    RequestError::Broker(_) => "broker",
                    RequestError::Garbled(_) => "garbled",
                    RequestError::Overloaded => "overloaded",
                };
                metrics::counter!(m::CLUSTER_ERRORS, "kind" => kind, "reason" => reason)
                    .increment(1);
            }
            result
        }
        .boxed()
    }

    /// Answers a request with `answer`.
    pub fn reply<T: serde::Serialize>(&self, to: async_nats::Subject, answer: &T) {
        let payload = Bytes::from(serde_json::to_vec(answer).expect("answers serialize"));
        let client = self.client.clone();
        self.runtime.spawn(async move {
            if let Err(e) = client.publish(to, payload).await {
                tracing::warn!(error = %e, "answer to another node not sent");
            }
        });
    }
}
