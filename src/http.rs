//! The transport edge: the REST app on `api.bind` ([`start_api_server`], with the middleware it runs:
//! [`observe`] for request ids, the header limit, HEAD, 405s, metrics and tracing, and the
//! [`guard`] every connection passes through, which answers requests that do not parse), JSON
//! errors for unknown routes, [`listener::ListenerChild`], which runs the REST server as a
//! supervised child, and the chat listener on `chat.bind` ([`chat`]: its own accept loop over the
//! lean WebSocket transport). Handlers are thin: they talk to actors and the store, never to Django.

pub mod admin;
pub mod assets;
pub mod auth;
pub mod body;
pub mod chat;
pub mod chats;
pub mod debug;
pub mod errors;
pub mod guard;
pub mod listener;
pub mod ops;
pub mod tickets;

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::TcpListener;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::Addr;
use actix_http::{HttpService, KeepAlive};
use actix_service::{fn_service, map_config, IntoServiceFactory, ServiceFactoryExt};
use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::AppConfig;
use actix_web::dev::{Service, ServiceRequest, ServiceResponse};
use actix_web::http::header::{self, HeaderName, HeaderValue};
use actix_web::http::{Method, StatusCode};
use actix_web::{web, App, HttpMessage, HttpRequest, HttpResponse, ResponseError};
use futures_util::future::{FutureExt, LocalBoxFuture};
use tracing::Instrument;

use crate::bridge::actor::Bridge;
use crate::bridge::calls::DjangoCalls;
use crate::config::Settings;
use crate::domain::ids::RequestId;
use crate::metrics as m;
use crate::store::{Outbox, TicketStore};
use crate::ticket::registry::TicketRegistry;
use errors::ApiError;

/// Everything the handlers are given, each as its own `web::Data`.
#[derive(Clone)]
pub struct HttpDeps {
    pub settings: Arc<Settings>,
    pub registry: Addr<TicketRegistry>,
    pub bridge: Addr<Bridge>,
    /// The Django request/response lane (`/readyz`, and the debug routes' AI and service calls).
    pub calls: Addr<DjangoCalls>,
    pub store: Arc<dyn TicketStore>,
    pub outbox: Arc<dyn Outbox>,
    /// The chat journal (transcripts for `/api/v1/chats`).
    pub chats: Arc<dyn crate::store::chat_journal::ChatJournal>,
    pub ops: ops::Ops,
}

/// The id of the request being served (from `X-Request-Id`, or generated), as the middleware put it
/// in the request's extensions; handlers pass it to the actors, which pass it on to Django.
pub fn request_id_of(req: &HttpRequest) -> Option<RequestId> {
    req.extensions().get::<RequestId>().cloned()
}

static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

fn request_id(req: &ServiceRequest) -> String {
    req.headers()
        .get(&REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_string)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string())
}

/// The `method` label: standard methods by name, anything else as `other`, so that a client cannot
/// mint label values.
fn method_label(method: &Method) -> &'static str {
    [
        Method::GET,
        Method::POST,
        Method::PUT,
        Method::PATCH,
        Method::DELETE,
        Method::HEAD,
        Method::OPTIONS,
        Method::CONNECT,
        Method::TRACE,
    ]
    .iter()
    .find(|m| *m == method)
    .map_or("other", |m| m.as_str())
}

type RequestMetrics = (metrics::Counter, metrics::Histogram);
type MetricsKey = (&'static str, String, &'static str, u16);

/// At most this many (route, method, status) handles cached per worker thread; past it (only with
/// odd statuses on many routes) handles are looked up per request.
const METRICS_CACHE_MAX: usize = 256;

thread_local! {
    /// Each worker's handles to the request counter and histogram by (route, method, status): a
    /// labelled handle lookup hashes and allocates its labels, which a hit here does not.
    static REQUEST_METRICS: RefCell<HashMap<MetricsKey, RequestMetrics>> =
        RefCell::new(HashMap::new());
}

fn request_metrics(
    listener: &'static str,
    route: String,
    method: &'static str,
    status: u16,
) -> RequestMetrics {
    REQUEST_METRICS.with(|cache| {
        let mut cache = cache.borrow_mut();
        let key = (listener, route, method, status);
        if let Some(handles) = cache.get(&key) {
            return handles.clone();
        }
        let (listener, route, method, status) = &key;
        let handles = (
            metrics::counter!(m::HTTP_REQUESTS, "listener" => *listener, "route" => route.clone(), "method" => *method, "status" => status.to_string()),
            metrics::histogram!(m::HTTP_DURATION, "listener" => *listener, "route" => route.clone(), "method" => *method),
        );
        if cache.len() < METRICS_CACHE_MAX {
            cache.insert(key, handles.clone());
        }
        handles
    })
}

/// Builds and starts the REST server on `listener` (not awaited: the caller owns the future).
///
/// actix-web's `HttpServer`, taken apart: the same server (workers, connection cap, graceful stop)
/// and HTTP/1 service, with every connection passed through [`guard::Guarded`] on its way in.
pub fn start_api_server(
    listener: TcpListener,
    deps: HttpDeps,
) -> std::io::Result<actix_web::dev::Server> {
    let settings = deps.settings.clone();
    let api = settings.api.clone();
    let grace = Duration::from_millis(settings.shutdown.grace_ms);
    let local_addr = listener.local_addr()?;
    let keep_alive = match api.keep_alive_ms {
        0 => KeepAlive::Disabled,
        _ => KeepAlive::Timeout(api.keep_alive()),
    };
    let timeouts = guard::Timeouts {
        head: api.request_timeout(),
        body: api.body_timeout(),
    };
    let app = move || {
        let d = deps.clone();
        let fault_injection = d.settings.testing.fault_injection;
        let max_header_bytes = d.settings.api.max_header_bytes;
        App::new()
            .app_data(web::Data::new(d.registry.clone()))
            .app_data(web::Data::new(d.bridge.clone()))
            .app_data(web::Data::new(d.calls.clone()))
            .app_data(web::Data::new(d.store.clone()))
            .app_data(web::Data::new(d.outbox.clone()))
            .app_data(web::Data::new(d.settings.tickets.clone()))
            .app_data(web::Data::new(BodyLimit(d.settings.api.max_body_bytes)))
            .app_data(web::Data::new(BodyTimeout(d.settings.api.body_timeout())))
            .app_data(web::Data::new(auth::Auth::new(
                d.settings.auth.api_keys.clone(),
                d.settings.tickets.max_name_chars,
            )))
            .app_data(web::Data::new(d.ops.clone()))
            .wrap_fn(move |req, srv| observe(req, srv, "api", max_header_bytes))
            .configure(ops::routes)
            .service(
                web::scope("/api/v1")
                    .app_data(web::Data::new(d.chats.clone()))
                    .configure(tickets::routes)
                    .configure(chats::routes)
                    .configure(admin::routes)
                    .configure(|cfg| {
                        if fault_injection {
                            debug::routes(cfg)
                        }
                    }),
            )
            .default_service(web::to(no_route))
    };
    let builder = actix_server::Server::build()
        .workers(api.workers)
        .max_concurrent_connections(api.max_connections)
        // Signals are the process's, not the server's.
        .disable_signals()
        .shutdown_timeout(grace.as_secs().max(1));
    let draining = builder.graceful_shutdown_signal();
    Ok(builder
        .listen("api", listener, move || {
            let draining = draining.clone();
            let http = HttpService::build()
                .keep_alive(keep_alive)
                // The guard times request heads (with a JSON 408); the dispatcher's own is off.
                .client_request_timeout(Duration::ZERO)
                .client_disconnect_timeout(Duration::from_secs(1))
                .local_addr(local_addr)
                // On a graceful stop idle keep-alive connections close instead of holding the drain
                // until they time out; after a moment, so that a connection accepted just before
                // the stop is not taken for idle before its request is read.
                .graceful_shutdown_signal(move || {
                    let draining = draining.clone();
                    async move {
                        draining.notified().await;
                        tokio::time::sleep(FRESH_CONNECTION_GRACE).await;
                    }
                })
                .h1(map_config(
                    app()
                        .into_factory()
                        .map_err(|e: actix_web::Error| e.error_response()),
                    // Only URL generation and `ConnectionInfo` read it; neither is used.
                    |_| AppConfig::default(),
                ));
            // Per worker thread: the guard's parser shares its clock.
            let parser = actix_http::ServiceConfig::default();
            fn_service(move |io: actix_rt::net::TcpStream| {
                let peer = io.peer_addr().ok();
                let guarded = guard::Guarded::new(io, peer, timeouts, &parser);
                std::future::ready(Ok((guarded, peer)))
            })
            .and_then(http)
        })?
        .run())
}

/// How long a graceful stop leaves an idle connection open for a request already on its way.
const FRESH_CONNECTION_GRACE: Duration = Duration::from_millis(50);

/// The answer for a path no route matches: a JSON 404 like every other error.
pub async fn no_route(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    Err(ApiError::not_found(format!(
        "no route for {} {}",
        req.method(),
        req.path()
    )))
}

/// The largest request body this listener accepts (`<listener>.max_body_bytes`).
#[derive(Debug, Clone, Copy)]
pub struct BodyLimit(pub usize);

/// The body limit of the listener serving `req`.
pub fn body_limit(req: &HttpRequest) -> usize {
    req.app_data::<web::Data<BodyLimit>>().map_or(0, |l| l.0)
}

/// How long a request's body may take to arrive once its head has (`<listener>.body_timeout_ms`).
#[derive(Debug, Clone, Copy)]
pub struct BodyTimeout(pub Duration);

/// Used only by an app that registers no [`BodyTimeout`]: a body is never awaited without a bound.
const FALLBACK_BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// The body timeout of the listener serving `req`.
pub fn body_timeout(req: &HttpRequest) -> Duration {
    req.app_data::<web::Data<BodyTimeout>>()
        .map_or(FALLBACK_BODY_TIMEOUT, |t| t.0)
}

/// The size of a request's headers as they came: names, values and the `: ` and CRLF around each.
fn header_bytes(req: &ServiceRequest) -> usize {
    req.headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum()
}

/// actix-web answers a method a resource has no route for with an empty 405 and its `Allow`: the
/// same answer in the JSON shape of every other error, HEAD listed wherever GET is.
fn method_not_allowed(res: ServiceResponse<BoxBody>, method: &str) -> ServiceResponse<BoxBody> {
    let mut allowed: Vec<String> = res
        .headers()
        .get(header::ALLOW)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .split(',')
        .map(|m| m.trim().to_string())
        .filter(|m| !m.is_empty())
        .collect();
    if allowed.iter().any(|m| m == "GET") && !allowed.iter().any(|m| m == "HEAD") {
        allowed.push("HEAD".to_string());
    }
    let allow = allowed.join(", ");
    let mut response = ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{method} is not allowed here; allowed: {allow}"),
    )
    .error_response();
    if let Ok(v) = HeaderValue::from_str(&allow) {
        response.headers_mut().insert(header::ALLOW, v);
    }
    res.into_response(response)
}

/// The middleware every listener runs: a request id (echoed or minted) in the request's extensions,
/// its tracing span and `X-Request-Id` response header; the header-size limit (431); HEAD served by
/// GET routes; 405 in JSON; and the request counter and latency histogram, labelled by listener,
/// route, method and status.
pub fn observe<S, B>(
    mut req: ServiceRequest,
    srv: &S,
    listener: &'static str,
    max_header_bytes: usize,
) -> LocalBoxFuture<'static, Result<ServiceResponse<BoxBody>, actix_web::Error>>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error>,
    S::Future: 'static,
    B: MessageBody + 'static,
{
    let started = Instant::now();
    let id = request_id(&req);
    req.extensions_mut().insert(RequestId::from(id.clone()));
    let method = method_label(req.method());
    let span =
        tracing::info_span!("http_request", listener, request_id = %id, method, path = %req.path());
    // HEAD is GET without the body (RFC 9110): served by the GET route, and the HTTP/1 codec, which
    // saw the request's own method, sends the head alone (its Content-Length included).
    let head = req.method() == Method::HEAD;
    if head {
        req.head_mut().method = Method::GET;
    }
    let too_big = header_bytes(&req) > max_header_bytes;
    let fut: LocalBoxFuture<'static, Result<ServiceResponse<BoxBody>, actix_web::Error>> =
        if too_big {
            let err = ApiError::new(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "headers_too_large",
                format!("request headers exceed {max_header_bytes} bytes"),
            );
            Box::pin(async move { Ok(req.error_response(err)) })
        } else {
            let call = srv.call(req);
            Box::pin(async move { call.await.map(|res| res.map_into_boxed_body()) })
        };
    async move {
        let mut res = fut.await?;
        if res.status() == StatusCode::METHOD_NOT_ALLOWED {
            res = method_not_allowed(res, if head { "HEAD" } else { method });
        }
        let route = res
            .request()
            .match_pattern()
            .unwrap_or_else(|| "unmatched".to_string());
        let status = res.status().as_u16();
        let elapsed = started.elapsed();
        // Access lines at debug: at tens of thousands of requests a second an info line each would
        // cost more than the request. Server errors are always logged.
        if status >= 500 {
            tracing::warn!(%route, status, latency_us = elapsed.as_micros() as u64, "request failed");
        } else {
            tracing::debug!(%route, status, latency_us = elapsed.as_micros() as u64, "request served");
        }
        let (count, latency) = request_metrics(listener, route, method, status);
        count.increment(1);
        latency.record(elapsed.as_secs_f64());
        if let Ok(v) = HeaderValue::from_str(&id) {
            res.headers_mut().insert(REQUEST_ID.clone(), v);
        }
        Ok(res)
    }
    .instrument(span)
    .boxed_local()
}
