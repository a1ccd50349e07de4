//! The HTTP client for Django's API (awc), behind the [`DjangoApi`] seam: one typed method per
//! endpoint. Each call sends `X-Request-Id` (the caller's request id, or a fresh one), classifies the
//! answer (delivered / refused / failed), and records its latency and failures per lane and endpoint.
//! The exact JSON is specified in docs/django-api.md; the bodies are in [`super::wire`].

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::{FutureExt, LocalBoxFuture};
use serde::de::DeserializeOwned;
use serde::Serialize;
use uuid::Uuid;

use super::batch::SyncItem;
use super::wire::{
    AiReply, AiRespondRequest, ChatTicketCreated, ChatTicketRequest, DjangoTicket, RejectedBody,
    ServiceActionRequest, ServiceActionResult, SyncBatch,
};
use super::Lane;
use crate::config::DjangoSettings;
use crate::domain::ids::{EventId, RequestId, TicketId};
use crate::domain::ticket::Ticket;
use crate::metrics as m;
use crate::store::HandoffRecord;

/// The largest Django response body read.
const MAX_RESPONSE_BYTES: usize = 4 * 1024 * 1024;
/// Connections a client keeps open to Django at most, unless told otherwise (awc's own default).
const DEFAULT_CONNECTIONS: usize = 100;

/// Django's endpoints, as metrics and errors name them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Sync,
    FetchTicket,
    AiRespond,
    ChatTicket,
    ManageService,
    Handoff,
}

impl Endpoint {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sync => "sync",
            Self::FetchTicket => "fetch_ticket",
            Self::AiRespond => "ai_respond",
            Self::ChatTicket => "chat_ticket",
            Self::ManageService => "manage_service",
            Self::Handoff => "handoff",
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error from awc or the body reader, copied level by level so that it can cross threads (awc's
/// own errors are not `Send`) while keeping its chain of causes.
#[derive(Debug, Clone)]
pub struct Captured {
    message: String,
    source: Option<Box<Captured>>,
}

impl Captured {
    pub fn new(e: &dyn std::error::Error) -> Self {
        Self {
            message: e.to_string(),
            source: e.source().map(|s| Box::new(Self::new(s))),
        }
    }
}

impl fmt::Display for Captured {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Captured {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|s| s as &(dyn std::error::Error + 'static))
    }
}

/// Why a call to Django did not succeed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CallError {
    #[error("{endpoint}: no answer from Django within {timeout_ms} ms")]
    Timeout { endpoint: Endpoint, timeout_ms: u64 },
    #[error("{endpoint}: could not reach Django")]
    Connect {
        endpoint: Endpoint,
        #[source]
        source: Captured,
    },
    #[error("{endpoint}: Django answered HTTP {status}")]
    Status { endpoint: Endpoint, status: u16 },
    #[error("{endpoint}: could not read Django's answer")]
    Body {
        endpoint: Endpoint,
        #[source]
        source: Captured,
    },
    #[error("{endpoint}: Django's answer does not follow the contract")]
    Decode {
        endpoint: Endpoint,
        #[source]
        source: Arc<serde_json::Error>,
    },
    #[error("{endpoint}: {what}")]
    Unexpected { endpoint: Endpoint, what: String },
    #[error("{endpoint}: could not encode the request")]
    Encode {
        endpoint: Endpoint,
        #[source]
        source: Arc<serde_json::Error>,
    },
}

impl CallError {
    /// The `reason` label of `switchboard_django_failures_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Timeout { .. } => "timeout",
            Self::Connect { .. } => "connect",
            Self::Status { status, .. } if *status >= 500 => "5xx",
            Self::Status { .. } => "4xx",
            Self::Body { .. } | Self::Decode { .. } | Self::Unexpected { .. } => "garbage",
            Self::Encode { .. } => "encode",
        }
    }

    /// Does this say Django (or the way to it) is down, rather than that it refused this one call?
    /// Only these count towards a lane's circuit breaker.
    pub fn is_outage(&self) -> bool {
        match self {
            Self::Status { status, .. } => *status >= 500 || matches!(status, 408 | 429),
            Self::Encode { .. } => false,
            _ => true,
        }
    }
}

/// The error and its causes on one line, for logs and `/readyz`.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut next = e.source();
    while let Some(s) = next {
        text.push_str(": ");
        text.push_str(&s.to_string());
        next = s.source();
    }
    text
}

/// The outcome of one sync batch.
#[derive(Debug, Clone)]
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

/// The outcome of one chat ticket.
#[derive(Debug, Clone)]
pub enum ChatTicketOutcome {
    /// 201 (created) or 200 (Django already had it).
    Created(ChatTicketCreated),
    /// 400, 409 or 422: Django will never take this record.
    Rejected {
        status: u16,
        message: String,
    },
    Failed(CallError),
}

/// The Django API as the bridge sees it: one method per endpoint. `request_id` becomes the call's
/// `X-Request-Id`.
pub trait DjangoApi {
    /// `POST /api/tickets/sync/`.
    fn sync_tickets(
        &self,
        items: &[SyncItem],
        request_id: &RequestId,
    ) -> LocalBoxFuture<'static, SyncOutcome>;
    /// `GET /api/tickets/{id}/`: `None` when Django does not know the ticket (404).
    fn fetch_ticket(
        &self,
        id: TicketId,
        request_id: &RequestId,
    ) -> LocalBoxFuture<'static, Result<Option<Ticket>, CallError>>;
    /// `POST /api/livechat/ai/respond/`.
    fn ai_respond(
        &self,
        request: &AiRespondRequest,
        request_id: &RequestId,
    ) -> LocalBoxFuture<'static, Result<AiReply, CallError>>;
    /// `POST /api/livechat/tickets/create/`.
    fn create_chat_ticket(
        &self,
        request: &ChatTicketRequest<'_>,
        request_id: &RequestId,
    ) -> LocalBoxFuture<'static, ChatTicketOutcome>;
    /// `POST /api/livechat/services/manage/`.
    fn manage_service(
        &self,
        request: &ServiceActionRequest,
        request_id: &RequestId,
    ) -> LocalBoxFuture<'static, Result<ServiceActionResult, CallError>>;
    /// `POST /api/livechat/handoffs/`.
    fn record_handoff(
        &self,
        record: &HandoffRecord,
        request_id: &RequestId,
    ) -> LocalBoxFuture<'static, Delivery>;
}

/// The outcome of a record Django only acknowledges.
#[derive(Debug, Clone)]
pub enum Delivery {
    /// 2xx.
    Delivered,
    /// 400, 409 or 422: Django will never take this record.
    Rejected {
        status: u16,
        message: String,
    },
    Failed(CallError),
}

impl From<ChatTicketOutcome> for Delivery {
    fn from(o: ChatTicketOutcome) -> Self {
        match o {
            ChatTicketOutcome::Created(_) => Self::Delivered,
            ChatTicketOutcome::Rejected { status, message } => Self::Rejected { status, message },
            ChatTicketOutcome::Failed(e) => Self::Failed(e),
        }
    }
}

/// [`DjangoApi`] over HTTP. One per lane: each has its own timeout and labels its metrics with it.
pub struct AwcDjango {
    client: awc::Client,
    base_url: String,
    token: String,
    lane: Lane,
    timeout_ms: u64,
}

impl AwcDjango {
    /// Builds a client bound to the current arbiter (awc clients are not `Send`).
    pub fn new(settings: &DjangoSettings, lane: Lane, timeout: Duration) -> Self {
        Self::with_connections(settings, lane, timeout, DEFAULT_CONNECTIONS)
    }

    /// Like [`Self::new`], with up to `connections` open to Django at once (a lane that allows that
    /// many calls in flight must not queue them behind the connection pool's own limit).
    pub fn with_connections(
        settings: &DjangoSettings,
        lane: Lane,
        timeout: Duration,
        connections: usize,
    ) -> Self {
        let client = awc::Client::builder()
            .connector(awc::Connector::new().limit(connections))
            .timeout(timeout)
            .disable_redirects()
            .finish();
        Self {
            client,
            base_url: settings.base_url.trim_end_matches('/').to_string(),
            token: settings.token.clone(),
            lane,
            timeout_ms: timeout.as_millis() as u64,
        }
    }

    fn request(
        &self,
        method: awc::http::Method,
        path: &str,
        request_id: &RequestId,
    ) -> awc::ClientRequest {
        self.client
            .request(method, format!("{}{}", self.base_url, path))
            .insert_header(("Authorization", format!("Token {}", self.token)))
            .insert_header(("X-Request-Id", request_id.as_str()))
            .insert_header(("Accept", "application/json"))
    }

    /// Sends `body` as JSON and reads the answer whole: its status and bytes.
    fn exchange(
        &self,
        endpoint: Endpoint,
        req: awc::ClientRequest,
        body: Option<Result<Vec<u8>, serde_json::Error>>,
    ) -> LocalBoxFuture<'static, Result<(u16, actix_web::web::Bytes), CallError>> {
        let timeout_ms = self.timeout_ms;
        async move {
            let sent = match body {
                None => req.send().await,
                Some(Ok(b)) => req.content_type("application/json").send_body(b).await,
                Some(Err(e)) => {
                    return Err(CallError::Encode {
                        endpoint,
                        source: Arc::new(e),
                    })
                }
            };
            let mut resp = sent.map_err(|e| match e {
                awc::error::SendRequestError::Timeout => CallError::Timeout {
                    endpoint,
                    timeout_ms,
                },
                other => CallError::Connect {
                    endpoint,
                    source: Captured::new(&other),
                },
            })?;
            let status = resp.status().as_u16();
            let bytes =
                resp.body()
                    .limit(MAX_RESPONSE_BYTES)
                    .await
                    .map_err(|e| CallError::Body {
                        endpoint,
                        source: Captured::new(&e),
                    })?;
            Ok((status, bytes))
        }
        .boxed_local()
    }

    /// Times `fut` and counts its failure, labelled with this lane and `endpoint`.
    fn observed<T: 'static>(
        &self,
        endpoint: Endpoint,
        span: tracing::Span,
        fut: impl std::future::Future<Output = T> + 'static,
        error_of: impl Fn(&T) -> Option<&CallError> + 'static,
    ) -> LocalBoxFuture<'static, T> {
        let lane = self.lane.as_str();
        async move {
            let started = Instant::now();
            let out = fut.await;
            metrics::histogram!(m::DJANGO_DURATION, "lane" => lane, "endpoint" => endpoint.as_str())
                .record(started.elapsed().as_secs_f64());
            if let Some(e) = error_of(&out) {
                metrics::counter!(m::DJANGO_FAILURES, "lane" => lane, "endpoint" => endpoint.as_str(), "reason" => e.reason())
                    .increment(1);
                tracing::debug!(error = %chain(e), "Django call failed");
            }
            out
        }
        .instrument_local(span)
    }
}

/// A 2xx body is Django's answer only if it is JSON (or empty where the contract allows): an HTML
/// page behind a 200 (a proxy, a login wall) is not.
fn is_json_or_empty(bytes: &[u8]) -> bool {
    bytes.iter().all(u8::is_ascii_whitespace)
        || serde_json::from_slice::<serde::de::IgnoredAny>(bytes).is_ok()
}

fn decode<T: DeserializeOwned>(endpoint: Endpoint, bytes: &[u8]) -> Result<T, CallError> {
    serde_json::from_slice(bytes).map_err(|e| CallError::Decode {
        endpoint,
        source: Arc::new(e),
    })
}

fn encode<T: Serialize>(body: &T) -> Option<Result<Vec<u8>, serde_json::Error>> {
    Some(serde_json::to_vec(body))
}

fn is_refusal(status: u16) -> bool {
    matches!(status, 400 | 409 | 422)
}

impl DjangoApi for AwcDjango {
    fn sync_tickets(
        &self,
        items: &[SyncItem],
        request_id: &RequestId,
    ) -> LocalBoxFuture<'static, SyncOutcome> {
        let endpoint = Endpoint::Sync;
        let batch = SyncBatch {
            batch_id: Uuid::now_v7(),
            // To the millisecond, as every timestamp Django gets (docs/django-api.md).
            sent_at: crate::store::now(),
            events: items,
        };
        let req = self
            .request(awc::http::Method::POST, "/api/tickets/sync/", request_id)
            .insert_header(("Idempotency-Key", batch.batch_id.to_string()));
        let span = tracing::info_span!("django_sync", lane = self.lane.as_str(), %request_id, batch_id = %batch.batch_id, items = items.len());
        let call = self.exchange(endpoint, req, encode(&batch));
        let fut = async move {
            let outcome = match call.await {
                Err(e) => SyncOutcome::Failed(e),
                Ok((status, bytes)) if (200..300).contains(&status) => {
                    if is_json_or_empty(&bytes) {
                        SyncOutcome::Delivered
                    } else {
                        SyncOutcome::Failed(CallError::Unexpected {
                            endpoint,
                            what: "2xx with a body that is not JSON".into(),
                        })
                    }
                }
                Ok((status, bytes)) if is_refusal(status) => {
                    let named = serde_json::from_slice::<RejectedBody>(&bytes)
                        .unwrap_or_default()
                        .rejected
                        .into_iter()
                        .map(|r| (r.event_id, format!("{}: {}", r.code, r.message)))
                        .collect();
                    SyncOutcome::Rejected { status, named }
                }
                Ok((status, _)) => SyncOutcome::Failed(CallError::Status { endpoint, status }),
            };
            tracing::debug!(?outcome, "sync batch answered");
            outcome
        };
        // A refusal counts as a failure of the call (its status is the reason), not of Django.
        self.observed(endpoint, span, fut, |o| match o {
            SyncOutcome::Failed(e) => Some(e),
            _ => None,
        })
    }

    fn fetch_ticket(
        &self,
        id: TicketId,
        request_id: &RequestId,
    ) -> LocalBoxFuture<'static, Result<Option<Ticket>, CallError>> {
        let endpoint = Endpoint::FetchTicket;
        let req = self.request(
            awc::http::Method::GET,
            &format!("/api/tickets/{id}/"),
            request_id,
        );
        let span = tracing::info_span!("django_fetch_ticket", lane = self.lane.as_str(), %request_id, ticket_id = %id);
        let call = self.exchange(endpoint, req, None);
        let fut = async move {
            match call.await? {
                (404, _) => Ok(None),
                (200, bytes) => {
                    let t: DjangoTicket = decode(endpoint, &bytes)?;
                    if t.id != id {
                        return Err(CallError::Unexpected {
                            endpoint,
                            what: format!("asked for ticket {id}, got {}", t.id),
                        });
                    }
                    Ok(Some(t.into_ticket()))
                }
                (status, _) => Err(CallError::Status { endpoint, status }),
            }
        };
        self.observed(endpoint, span, fut, |r| r.as_ref().err())
    }

    fn ai_respond(
        &self,
        request: &AiRespondRequest,
        request_id: &RequestId,
    ) -> LocalBoxFuture<'static, Result<AiReply, CallError>> {
        let endpoint = Endpoint::AiRespond;
        let req = self.request(
            awc::http::Method::POST,
            "/api/livechat/ai/respond/",
            request_id,
        );
        let span = tracing::info_span!("django_ai_respond", lane = self.lane.as_str(), %request_id, session_id = %request.session_id, message_id = %request.message_id);
        let call = self.exchange(endpoint, req, encode(request));
        let fut = async move {
            match call.await? {
                (200..=299, bytes) => decode(endpoint, &bytes),
                (status, _) => Err(CallError::Status { endpoint, status }),
            }
        };
        self.observed(endpoint, span, fut, |r| r.as_ref().err())
    }

    fn create_chat_ticket(
        &self,
        request: &ChatTicketRequest<'_>,
        request_id: &RequestId,
    ) -> LocalBoxFuture<'static, ChatTicketOutcome> {
        let endpoint = Endpoint::ChatTicket;
        let req = self
            .request(
                awc::http::Method::POST,
                "/api/livechat/tickets/create/",
                request_id,
            )
            .insert_header(("Idempotency-Key", request.ticket_id.to_string()));
        let span = tracing::info_span!("django_chat_ticket", lane = self.lane.as_str(), %request_id, ticket_id = %request.ticket_id, session_id = %request.session_id);
        let call = self.exchange(endpoint, req, encode(request));
        let fut = async move {
            match call.await {
                Err(e) => ChatTicketOutcome::Failed(e),
                Ok((200 | 201, bytes)) => match decode(endpoint, &bytes) {
                    Ok(created) => ChatTicketOutcome::Created(created),
                    Err(e) => ChatTicketOutcome::Failed(e),
                },
                Ok((status, bytes)) if is_refusal(status) => ChatTicketOutcome::Rejected {
                    status,
                    message: String::from_utf8_lossy(&bytes[..bytes.len().min(512)]).into_owned(),
                },
                Ok((status, _)) => {
                    ChatTicketOutcome::Failed(CallError::Status { endpoint, status })
                }
            }
        };
        self.observed(endpoint, span, fut, |o| match o {
            ChatTicketOutcome::Failed(e) => Some(e),
            _ => None,
        })
    }

    fn record_handoff(
        &self,
        record: &HandoffRecord,
        request_id: &RequestId,
    ) -> LocalBoxFuture<'static, Delivery> {
        let endpoint = Endpoint::Handoff;
        let req = self
            .request(
                awc::http::Method::POST,
                "/api/livechat/handoffs/",
                request_id,
            )
            .insert_header(("Idempotency-Key", record.handoff_id.to_string()));
        let span = tracing::info_span!("django_handoff", lane = self.lane.as_str(), %request_id, session_id = %record.session_id);
        let call = self.exchange(endpoint, req, encode(record));
        let fut = async move {
            match call.await {
                Err(e) => Delivery::Failed(e),
                Ok((200..=299, _)) => Delivery::Delivered,
                Ok((status, bytes)) if is_refusal(status) => Delivery::Rejected {
                    status,
                    message: String::from_utf8_lossy(&bytes[..bytes.len().min(512)]).into_owned(),
                },
                Ok((status, _)) => Delivery::Failed(CallError::Status { endpoint, status }),
            }
        };
        self.observed(endpoint, span, fut, |o| match o {
            Delivery::Failed(e) => Some(e),
            _ => None,
        })
    }

    fn manage_service(
        &self,
        request: &ServiceActionRequest,
        request_id: &RequestId,
    ) -> LocalBoxFuture<'static, Result<ServiceActionResult, CallError>> {
        let endpoint = Endpoint::ManageService;
        let req = self
            .request(
                awc::http::Method::POST,
                "/api/livechat/services/manage/",
                request_id,
            )
            .insert_header(("Idempotency-Key", request.action_id.to_string()));
        let span = tracing::info_span!("django_manage_service", lane = self.lane.as_str(), %request_id, session_id = %request.session_id, service = %request.service, operation = %request.operation);
        let call = self.exchange(endpoint, req, encode(request));
        let fut = async move {
            match call.await? {
                (200..=299, bytes) => decode(endpoint, &bytes),
                (status, _) => Err(CallError::Status { endpoint, status }),
            }
        };
        self.observed(endpoint, span, fut, |r| r.as_ref().err())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_outages_count_towards_the_breaker() {
        let e = |status| CallError::Status {
            endpoint: Endpoint::AiRespond,
            status,
        };
        assert!(e(503).is_outage());
        assert!(e(429).is_outage());
        assert!(!e(422).is_outage());
        assert!(!e(404).is_outage());
        assert!(CallError::Timeout {
            endpoint: Endpoint::Sync,
            timeout_ms: 1
        }
        .is_outage());
    }

    #[test]
    fn chains_keep_every_cause() {
        let io = std::io::Error::other("refused");
        let e = CallError::Connect {
            endpoint: Endpoint::Sync,
            source: Captured::new(&io),
        };
        assert_eq!(chain(&e), "sync: could not reach Django: refused");
    }
}
