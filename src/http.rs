//! The REST transport on `tickets.bind`: routing, the request-id/metrics/tracing middleware, JSON
//! errors for unknown routes, and [`HttpChild`], which runs the server as a child of the root
//! supervisor. Handlers are thin: they talk to actors and the store, never to Django.

pub mod admin;
pub mod auth;
pub mod body;
pub mod debug;
pub mod errors;
pub mod ops;
pub mod tickets;

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::TcpListener;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::Addr;
use actix_web::dev::{ServerHandle, Service};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::http::Method;
use actix_web::{web, App, HttpMessage, HttpRequest, HttpResponse, HttpServer};
use futures_util::future::{FutureExt, LocalBoxFuture};
use tracing::Instrument;

use crate::bridge::actor::Bridge;
use crate::bridge::calls::DjangoCalls;
use crate::config::Settings;
use crate::domain::ids::RequestId;
use crate::metrics as m;
use crate::store::{Outbox, TicketStore};
use crate::supervisor::supervised::Exit;
use crate::supervisor::{Child, ExitReport, Restart, StartError};
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
    pub ops: ops::Ops,
}

/// The id of the request being served (from `X-Request-Id`, or generated), as the middleware put it
/// in the request's extensions; handlers pass it to the actors, which pass it on to Django.
pub fn request_id_of(req: &HttpRequest) -> Option<RequestId> {
    req.extensions().get::<RequestId>().cloned()
}

static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

fn request_id(req: &actix_web::dev::ServiceRequest) -> String {
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

/// At most this many (route, method, status) handles cached per worker thread; past it (only with
/// odd statuses on many routes) handles are looked up per request.
const METRICS_CACHE_MAX: usize = 256;

thread_local! {
    /// Each worker's handles to the request counter and histogram by (route, method, status): a
    /// labelled handle lookup hashes and allocates its labels, which a hit here does not.
    static REQUEST_METRICS: RefCell<HashMap<(String, &'static str, u16), RequestMetrics>> =
        RefCell::new(HashMap::new());
}

fn request_metrics(route: String, method: &'static str, status: u16) -> RequestMetrics {
    REQUEST_METRICS.with(|cache| {
        let mut cache = cache.borrow_mut();
        let key = (route, method, status);
        if let Some(handles) = cache.get(&key) {
            return handles.clone();
        }
        let (route, method, status) = &key;
        let handles = (
            metrics::counter!(m::HTTP_REQUESTS, "route" => route.clone(), "method" => *method, "status" => status.to_string()),
            metrics::histogram!(m::HTTP_DURATION, "route" => route.clone(), "method" => *method),
        );
        if cache.len() < METRICS_CACHE_MAX {
            cache.insert(key, handles.clone());
        }
        handles
    })
}

/// Builds and starts the server on `listener` (not awaited: the caller owns the future).
pub fn start_server(
    listener: TcpListener,
    deps: HttpDeps,
) -> std::io::Result<actix_web::dev::Server> {
    let settings = deps.settings.clone();
    let workers = settings.tickets.http_workers;
    let grace = Duration::from_millis(settings.shutdown.grace_ms);
    let server = HttpServer::new(move || {
        let d = deps.clone();
        let fault_injection = d.settings.testing.fault_injection;
        App::new()
            .app_data(web::Data::new(d.registry.clone()))
            .app_data(web::Data::new(d.bridge.clone()))
            .app_data(web::Data::new(d.calls.clone()))
            .app_data(web::Data::new(d.store.clone()))
            .app_data(web::Data::new(d.outbox.clone()))
            .app_data(web::Data::new(d.settings.tickets.clone()))
            .app_data(web::Data::new(auth::Auth::new(
                d.settings.auth.api_keys.clone(),
                d.settings.tickets.max_name_chars,
            )))
            .app_data(web::Data::new(d.ops.clone()))
            .wrap_fn(|req, srv| {
                let started = Instant::now();
                let id = request_id(&req);
                req.extensions_mut().insert(RequestId::from(id.clone()));
                let method = method_label(req.method());
                let span = tracing::info_span!("http_request", request_id = %id, method, path = %req.path());
                let fut = srv.call(req);
                async move {
                    let mut res = fut.await?;
                    let route = res
                        .request()
                        .match_pattern()
                        .unwrap_or_else(|| "unmatched".to_string());
                    let status = res.status().as_u16();
                    let elapsed = started.elapsed();
                    // Access lines at debug: at tens of thousands of requests a second an info line
                    // each would cost more than the request. Server errors are always logged.
                    if status >= 500 {
                        tracing::warn!(%route, status, latency_us = elapsed.as_micros() as u64, "request failed");
                    } else {
                        tracing::debug!(%route, status, latency_us = elapsed.as_micros() as u64, "request served");
                    }
                    let (count, latency) = request_metrics(route, method, status);
                    count.increment(1);
                    latency.record(elapsed.as_secs_f64());
                    if let Ok(v) = HeaderValue::from_str(&id) {
                        res.headers_mut().insert(REQUEST_ID.clone(), v);
                    }
                    Ok(res)
                }
                .instrument(span)
            })
            .configure(ops::routes)
            .service(
                web::scope("/api/v1")
                    .configure(tickets::routes)
                    .configure(admin::routes)
                    .configure(|cfg| {
                        if fault_injection {
                            debug::routes(cfg)
                        }
                    }),
            )
            .default_service(web::to(|req: actix_web::HttpRequest| async move {
                Err::<HttpResponse, _>(ApiError::not_found(format!(
                    "no route for {} {}",
                    req.method(),
                    req.path()
                )))
            }))
    })
    .workers(workers)
    .max_connections(settings.tickets.max_connections)
    .disable_signals()
    .shutdown_timeout(grace.as_secs().max(1))
    .listen(listener)?
    .run();
    Ok(server)
}

/// The REST listener as a supervised child: permanent; restarted on a clone of the same socket if the
/// server ever stops on its own; stopped gracefully (in-flight requests drain within
/// `shutdown.grace_ms`).
pub struct HttpChild {
    listener: TcpListener,
    deps: HttpDeps,
    handle: Option<ServerHandle>,
    report: Option<ExitReport>,
}

impl HttpChild {
    pub fn new(listener: TcpListener, deps: HttpDeps) -> Self {
        Self {
            listener,
            deps,
            handle: None,
            report: None,
        }
    }

    fn launch(&mut self) -> Result<(), StartError> {
        let fail = |e: std::io::Error| StartError {
            child: "http",
            message: e.to_string(),
        };
        let listener = self.listener.try_clone().map_err(fail)?;
        let server = start_server(listener, self.deps.clone()).map_err(fail)?;
        self.handle = Some(server.handle());
        let report = self.report.clone();
        actix_rt::spawn(async move {
            let result = server.await;
            if let Some(report) = report {
                match result {
                    Ok(()) => report(Exit::Normal),
                    Err(e) => report(Exit::Panicked(e.to_string())),
                }
            }
        });
        Ok(())
    }
}

impl Child for HttpChild {
    fn name(&self) -> &'static str {
        "http"
    }

    fn restart_type(&self) -> Restart {
        Restart::Permanent
    }

    fn start(&mut self, report: ExitReport) -> Result<(), StartError> {
        self.report = Some(report);
        self.launch()
    }

    fn restart(&mut self, cause: &'static str) -> Result<(), StartError> {
        metrics::counter!(m::ACTOR_RESTARTS, "kind" => "http", "cause" => cause).increment(1);
        if let Some(old) = self.handle.take() {
            actix_rt::spawn(old.stop(true));
        }
        self.launch()
    }

    fn stop(&mut self) -> LocalBoxFuture<'static, ()> {
        // Stopping is not an exit to report.
        self.report = None;
        let handle = self.handle.take();
        async move {
            if let Some(h) = handle {
                h.stop(true).await;
            }
        }
        .boxed_local()
    }
}
