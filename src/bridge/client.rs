//! The HTTP client for Django's API (awc), behind the [`DjangoApi`] seam. Classifies every answer into
//! delivered / rejected (the batch names bad events, or must be bisected) / failed (retry later), and
//! records latency and failures per endpoint. The exact JSON is specified in docs/django-api.md.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures_util::future::{FutureExt, LocalBoxFuture};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::batch::SyncItem;
use crate::config::DjangoSettings;
use crate::domain::ids::{EventId, TicketId};
use crate::domain::status::Status;
use crate::domain::ticket::{Priority, Source, Ticket};
use crate::metrics as m;

/// The largest Django response body read.
const MAX_RESPONSE_BYTES: usize = 4 * 1024 * 1024;

/// Why a call to Django did not succeed (and should be retried).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    #[error("timed out")]
    Timeout,
    #[error("connection failed: {0}")]
    Connect(String),
    #[error("HTTP {0}")]
    Status(u16),
    #[error("unreadable response: {0}")]
    Garbage(String),
}

impl CallError {
    fn reason(&self) -> &'static str {
        match self {
            Self::Timeout => "timeout",
            Self::Connect(_) => "connect",
            Self::Status(s) if *s >= 500 => "5xx",
            Self::Status(_) => "4xx",
            Self::Garbage(_) => "garbage",
        }
    }
}

/// The outcome of one sync batch.
#[derive(Debug, Clone, PartialEq)]
pub enum SyncOutcome {
    Delivered,
    /// Django refused the batch as a client error (400, 409, 422). `named` lists the event ids its body
    /// blamed (possibly none, which means the batch must be bisected), with a message each.
    Rejected {
        status: u16,
        named: Vec<(EventId, String)>,
    },
    Failed(CallError),
}

#[derive(Debug, Serialize)]
pub struct SyncBatch<'a> {
    pub batch_id: Uuid,
    pub sent_at: DateTime<Utc>,
    pub events: &'a [SyncItem],
}

/// The Django API as the bridge sees it.
pub trait DjangoApi {
    fn sync(&self, items: &[SyncItem]) -> LocalBoxFuture<'static, SyncOutcome>;
    fn fetch_ticket(
        &self,
        id: TicketId,
    ) -> LocalBoxFuture<'static, Result<Option<Ticket>, CallError>>;
}

pub struct AwcDjango {
    client: awc::Client,
    base_url: String,
    token: String,
}

impl AwcDjango {
    /// Builds a client bound to the current arbiter (awc clients are not `Send`).
    pub fn new(settings: &DjangoSettings) -> Self {
        let client = awc::Client::builder()
            .timeout(Duration::from_millis(settings.timeout_ms))
            .disable_redirects()
            .finish();
        Self {
            client,
            base_url: settings.base_url.trim_end_matches('/').to_string(),
            token: settings.token.clone(),
        }
    }

    fn request(&self, method: awc::http::Method, path: &str) -> (awc::ClientRequest, String) {
        let request_id = Uuid::new_v4().to_string();
        let req = self
            .client
            .request(method, format!("{}{}", self.base_url, path))
            .insert_header(("Authorization", format!("Token {}", self.token)))
            .insert_header(("X-Request-Id", request_id.clone()))
            .insert_header(("Accept", "application/json"));
        (req, request_id)
    }
}

fn observe(endpoint: &'static str, started: Instant, error: Option<&CallError>) {
    metrics::histogram!(m::DJANGO_DURATION, "endpoint" => endpoint)
        .record(started.elapsed().as_secs_f64());
    if let Some(e) = error {
        metrics::counter!(m::DJANGO_FAILURES, "endpoint" => endpoint, "reason" => e.reason())
            .increment(1);
    }
}

fn send_error(e: awc::error::SendRequestError) -> CallError {
    match e {
        awc::error::SendRequestError::Timeout => CallError::Timeout,
        other => CallError::Connect(other.to_string()),
    }
}

#[derive(Deserialize)]
struct RejectedBody {
    #[serde(default)]
    rejected: Vec<RejectedEvent>,
}

#[derive(Deserialize)]
struct RejectedEvent {
    event_id: EventId,
    #[serde(default)]
    code: String,
    #[serde(default)]
    message: String,
}

impl DjangoApi for AwcDjango {
    fn sync(&self, items: &[SyncItem]) -> LocalBoxFuture<'static, SyncOutcome> {
        let batch = SyncBatch {
            batch_id: Uuid::now_v7(),
            sent_at: Utc::now(),
            events: items,
        };
        let body = serde_json::to_vec(&batch);
        let (req, request_id) = self.request(awc::http::Method::POST, "/api/tickets/sync/");
        let req = req
            .insert_header(("Idempotency-Key", batch.batch_id.to_string()))
            .content_type("application/json");
        let span = tracing::info_span!("django_sync", %request_id, batch_id = %batch.batch_id, items = items.len());
        async move {
            let started = Instant::now();
            let body = match body {
                Ok(b) => b,
                Err(e) => return SyncOutcome::Failed(CallError::Garbage(e.to_string())),
            };
            let outcome = match req.send_body(body).await {
                Err(e) => SyncOutcome::Failed(send_error(e)),
                Ok(mut resp) => {
                    let status = resp.status().as_u16();
                    if resp.status().is_success() {
                        // An HTML page behind a 200 (a proxy, a login wall) is not Django's answer.
                        match resp.body().limit(MAX_RESPONSE_BYTES).await {
                            Ok(bytes)
                                if bytes.iter().all(u8::is_ascii_whitespace)
                                    || serde_json::from_slice::<serde::de::IgnoredAny>(&bytes)
                                        .is_ok() =>
                            {
                                SyncOutcome::Delivered
                            }
                            Ok(_) => SyncOutcome::Failed(CallError::Garbage(
                                "2xx with a body that is not JSON".into(),
                            )),
                            Err(e) => SyncOutcome::Failed(CallError::Garbage(e.to_string())),
                        }
                    } else if matches!(status, 400 | 409 | 422) {
                        let named = match resp.body().limit(MAX_RESPONSE_BYTES).await {
                            Ok(bytes) => serde_json::from_slice::<RejectedBody>(&bytes)
                                .map(|b| {
                                    b.rejected
                                        .into_iter()
                                        .map(|r| (r.event_id, format!("{}: {}", r.code, r.message)))
                                        .collect()
                                })
                                .unwrap_or_default(),
                            Err(_) => Vec::new(),
                        };
                        SyncOutcome::Rejected { status, named }
                    } else {
                        SyncOutcome::Failed(CallError::Status(status))
                    }
                }
            };
            let error = match &outcome {
                SyncOutcome::Failed(e) => Some(e.clone()),
                SyncOutcome::Rejected { status, .. } => Some(CallError::Status(*status)),
                SyncOutcome::Delivered => None,
            };
            observe("sync", started, error.as_ref());
            tracing::debug!(?outcome, "sync batch answered");
            outcome
        }
        .instrument_local(span)
    }

    fn fetch_ticket(
        &self,
        id: TicketId,
    ) -> LocalBoxFuture<'static, Result<Option<Ticket>, CallError>> {
        let (req, request_id) =
            self.request(awc::http::Method::GET, &format!("/api/tickets/{id}/"));
        let span = tracing::info_span!("django_fetch_ticket", %request_id, ticket_id = %id);
        async move {
            let started = Instant::now();
            let result = async {
                let mut resp = req.send().await.map_err(send_error)?;
                match resp.status().as_u16() {
                    404 => Ok(None),
                    200 => {
                        let bytes = resp
                            .body()
                            .limit(MAX_RESPONSE_BYTES)
                            .await
                            .map_err(|e| CallError::Garbage(e.to_string()))?;
                        let t: DjangoTicket = serde_json::from_slice(&bytes)
                            .map_err(|e| CallError::Garbage(e.to_string()))?;
                        if t.id != id {
                            return Err(CallError::Garbage(format!(
                                "asked for ticket {id}, got {}",
                                t.id
                            )));
                        }
                        Ok(Some(t.into_ticket()))
                    }
                    other => Err(CallError::Status(other)),
                }
            }
            .await;
            observe("fetch_ticket", started, result.as_ref().err());
            result
        }
        .instrument_local(span)
    }
}

/// Django's view of a ticket; optional fields take their documented defaults.
#[derive(Deserialize)]
struct DjangoTicket {
    id: TicketId,
    subject: String,
    #[serde(default)]
    description: String,
    status: Status,
    priority: Priority,
    requester: String,
    #[serde(default)]
    assignee: Option<String>,
    #[serde(default)]
    tags: Vec<String>,
    #[serde(default = "default_source")]
    source: Source,
    #[serde(default)]
    chat_session_id: Option<String>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    #[serde(default = "one")]
    version: u64,
}

fn default_source() -> Source {
    Source::Api
}

fn one() -> u64 {
    1
}

impl DjangoTicket {
    fn into_ticket(self) -> Ticket {
        use chrono::SubsecRound;
        Ticket {
            id: self.id,
            subject: self.subject,
            description: self.description,
            status: self.status,
            priority: self.priority,
            requester: self.requester,
            assignee: self.assignee,
            tags: self.tags,
            source: self.source,
            chat_session_id: self.chat_session_id,
            created_at: self.created_at.trunc_subsecs(3),
            updated_at: self.updated_at.trunc_subsecs(3),
            version: self.version.max(1),
        }
    }
}

/// Attaches a span to a `!Send` future.
trait InstrumentLocal: std::future::Future + Sized + 'static {
    fn instrument_local(self, span: tracing::Span) -> LocalBoxFuture<'static, Self::Output> {
        use tracing::Instrument;
        self.instrument(span).boxed_local()
    }
}

impl<F: std::future::Future + 'static> InstrumentLocal for F {}
