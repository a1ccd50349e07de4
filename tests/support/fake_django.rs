//! A fake Django: a real HTTP server on an ephemeral port, in its own thread, that records every call
//! and answers as told: succeed, fail with a status (for every batch, or for batches holding a
//! marker), stall until released, return garbage, or refuse chosen tickets (naming their events, or
//! not). Ticket sync and fetch, and the three live-chat endpoints (AI respond, chat ticket create,
//! services manage), each scripted on its own.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use serde_json::{json, Value};
use tokio::sync::{mpsc, Notify};

use super::WAIT;

/// How the fake answers a sync batch.
#[derive(Debug, Clone)]
pub enum Behavior {
    Ok,
    Status(u16),
    /// Hold the request until [`FakeDjango::release`] (the bridge's timeout fires first).
    Stall,
    /// 500 with an HTML error page.
    Garbage,
    /// 200 with an HTML page (a proxy answering for Django).
    Garbage200,
    /// 422 naming the events of these tickets, if the batch holds any; otherwise 200.
    RejectNamed(HashSet<String>),
    /// 400 with an empty body if the batch holds any of these tickets; otherwise 200.
    RejectUnnamed(HashSet<String>),
    /// (Chat endpoints) 200 with this body.
    Json(Value),
    /// This status if the batch's body contains the marker (an event Django cannot store);
    /// otherwise 200.
    StatusIfContains(String, u16),
}

/// One sync call as the fake saw it.
#[derive(Debug, Clone)]
pub struct SyncCall {
    pub body: Value,
    /// The status answered; 0 for a call that stalled, 299 for a 200 with garbage.
    pub status: u16,
    pub authorization: Option<String>,
    pub request_id: Option<String>,
    pub idempotency_key: Option<String>,
}

impl SyncCall {
    pub fn events(&self) -> Vec<Value> {
        self.body["events"].as_array().cloned().unwrap_or_default()
    }
}

/// How the fake answers `GET /api/tickets/{id}/`.
#[derive(Debug, Clone)]
pub enum FetchReply {
    Ticket(Value),
    Garbage,
    Status(u16),
}

/// The live-chat endpoints, each scripted and recorded on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChatEndpoint {
    AiRespond,
    ChatTicket,
    ManageService,
    Handoff,
}

impl ChatEndpoint {
    pub fn path(self) -> &'static str {
        match self {
            Self::AiRespond => "/api/livechat/ai/respond/",
            Self::ChatTicket => "/api/livechat/tickets/create/",
            Self::ManageService => "/api/livechat/services/manage/",
            Self::Handoff => "/api/livechat/handoffs/",
        }
    }
}

/// One live-chat call as the fake saw it (recorded when it arrives, before any stall).
#[derive(Debug, Clone)]
pub struct ChatCall {
    pub endpoint: ChatEndpoint,
    pub body: Value,
    pub authorization: Option<String>,
    pub request_id: Option<String>,
    pub idempotency_key: Option<String>,
}

#[derive(Default)]
struct Inner {
    /// Per chat endpoint: scripted answers, then its default (`Ok` when unset).
    chat_script: HashMap<ChatEndpoint, VecDeque<Behavior>>,
    chat_default: HashMap<ChatEndpoint, Behavior>,
    chat_calls: Vec<ChatCall>,
    /// Ticket ids the chat ticket endpoint has created (a repeat answers 200).
    chat_tickets: HashSet<String>,
    script: VecDeque<Behavior>,
    default: Option<Behavior>,
    /// Events of every batch answered 2xx, in order.
    delivered: Vec<Value>,
    tickets: HashMap<String, FetchReply>,
    fetches: Vec<String>,
    /// `X-Request-Id` of each fetch, in order.
    fetch_request_ids: Vec<Option<String>>,
}

#[derive(Clone)]
struct Shared {
    inner: Arc<Mutex<Inner>>,
    calls: mpsc::UnboundedSender<SyncCall>,
    release: Arc<Notify>,
}

pub struct FakeDjango {
    pub base_url: String,
    shared: Shared,
    calls: mpsc::UnboundedReceiver<SyncCall>,
    server: actix_web::dev::ServerHandle,
}

impl FakeDjango {
    pub fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind fake django");
        let base_url = format!("http://{}", listener.local_addr().unwrap());
        let (tx, rx) = mpsc::unbounded_channel();
        let shared = Shared {
            inner: Arc::new(Mutex::new(Inner::default())),
            calls: tx,
            release: Arc::new(Notify::new()),
        };
        let (handle_tx, handle_rx) = std::sync::mpsc::channel();
        let s = shared.clone();
        std::thread::spawn(move || {
            actix::System::new().block_on(async move {
                let server = HttpServer::new(move || {
                    App::new()
                        .app_data(web::Data::new(s.clone()))
                        .route("/api/tickets/sync/", web::post().to(sync))
                        .route("/api/tickets/{id}/", web::get().to(fetch))
                        .route(
                            ChatEndpoint::AiRespond.path(),
                            web::post().to(|r, b, s| chat(ChatEndpoint::AiRespond, r, b, s)),
                        )
                        .route(
                            ChatEndpoint::ChatTicket.path(),
                            web::post().to(|r, b, s| chat(ChatEndpoint::ChatTicket, r, b, s)),
                        )
                        .route(
                            ChatEndpoint::ManageService.path(),
                            web::post().to(|r, b, s| chat(ChatEndpoint::ManageService, r, b, s)),
                        )
                        .route(
                            ChatEndpoint::Handoff.path(),
                            web::post().to(|r, b, s| chat(ChatEndpoint::Handoff, r, b, s)),
                        )
                })
                .workers(1)
                .disable_signals()
                .shutdown_timeout(1)
                .listen(listener)
                .expect("listen")
                .run();
                handle_tx.send(server.handle()).unwrap();
                let _ = server.await;
            })
        });
        let server = handle_rx.recv().expect("fake django started");
        Self {
            base_url,
            shared,
            calls: rx,
            server,
        }
    }

    /// The settings overrides pointing Switchboard at this fake.
    pub fn config(&self, bridge: &str) -> String {
        format!(
            "[django]\nbase_url = \"{}\"\ntoken = \"test-token\"\ntimeout_ms = 1000\n[bridge]\n{bridge}\n",
            self.base_url
        )
    }

    /// Answers every call not otherwise scripted with `b` (initially `Ok`).
    pub fn set_default(&self, b: Behavior) {
        self.shared.inner.lock().unwrap().default = Some(b);
    }

    /// The next call gets `b` (a queue: several calls in order).
    pub fn push(&self, b: Behavior) {
        self.shared.inner.lock().unwrap().script.push_back(b);
    }

    pub fn set_ticket(&self, id: &str, reply: FetchReply) {
        self.shared
            .inner
            .lock()
            .unwrap()
            .tickets
            .insert(id.to_string(), reply);
    }

    /// Answers every call to `endpoint` not otherwise scripted with `b` (`Status`, `Stall`, `Garbage`,
    /// `Garbage200` or `Ok`).
    pub fn set_chat_default(&self, endpoint: ChatEndpoint, b: Behavior) {
        self.shared
            .inner
            .lock()
            .unwrap()
            .chat_default
            .insert(endpoint, b);
    }

    /// The next call to `endpoint` gets `b`.
    pub fn push_chat(&self, endpoint: ChatEndpoint, b: Behavior) {
        let mut inner = self.shared.inner.lock().unwrap();
        inner.chat_script.entry(endpoint).or_default().push_back(b);
    }

    /// Calls to `endpoint` so far, in order.
    pub fn chat_calls(&self, endpoint: ChatEndpoint) -> Vec<ChatCall> {
        let inner = self.shared.inner.lock().unwrap();
        inner
            .chat_calls
            .iter()
            .filter(|c| c.endpoint == endpoint)
            .cloned()
            .collect()
    }

    pub fn fetches(&self) -> Vec<String> {
        self.shared.inner.lock().unwrap().fetches.clone()
    }

    /// The `X-Request-Id` each ticket fetch carried, in order.
    pub fn fetch_request_ids(&self) -> Vec<Option<String>> {
        self.shared.inner.lock().unwrap().fetch_request_ids.clone()
    }

    /// Lets stalled calls answer (200).
    pub fn release(&self) {
        self.shared.release.notify_waiters();
    }

    /// Events of all batches answered 2xx so far.
    pub fn delivered(&self) -> Vec<Value> {
        self.shared.inner.lock().unwrap().delivered.clone()
    }

    /// The next sync call, waiting at most [`WAIT`].
    pub async fn next_call(&mut self) -> SyncCall {
        tokio::time::timeout(WAIT, self.calls.recv())
            .await
            .expect("a sync call in time")
            .expect("fake django running")
    }

    /// Waits until every `ticket_id` has been delivered at least at `version`.
    pub async fn wait_delivered(&mut self, want: &[(String, u64)]) {
        loop {
            let delivered = self.delivered();
            let missing: Vec<_> = want
                .iter()
                .filter(|(id, v)| {
                    !delivered.iter().any(|e| {
                        e["ticket_id"] == json!(id) && e["version"].as_u64().unwrap_or(0) >= *v
                    })
                })
                .collect();
            if missing.is_empty() {
                return;
            }
            let _ = self.next_call().await;
        }
    }
}

impl Drop for FakeDjango {
    fn drop(&mut self) {
        self.shared.release.notify_waiters();
        drop(self.server.stop(false));
    }
}

fn header(req: &HttpRequest, name: &str) -> Option<String> {
    req.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

fn holds_ticket(body: &Value, tickets: &HashSet<String>) -> Vec<Value> {
    body["events"]
        .as_array()
        .map(|events| {
            events
                .iter()
                .filter(|e| e["ticket_id"].as_str().is_some_and(|t| tickets.contains(t)))
                .cloned()
                .collect()
        })
        .unwrap_or_default()
}

async fn sync(req: HttpRequest, body: web::Bytes, s: web::Data<Shared>) -> HttpResponse {
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let behavior = {
        let mut inner = s.inner.lock().unwrap();
        inner
            .script
            .pop_front()
            .or_else(|| inner.default.clone())
            .unwrap_or(Behavior::Ok)
    };
    let mut call = SyncCall {
        body: body.clone(),
        status: 0,
        authorization: header(&req, "Authorization"),
        request_id: header(&req, "X-Request-Id"),
        idempotency_key: header(&req, "Idempotency-Key"),
    };
    let ok = |s: &Shared, call: &mut SyncCall| {
        call.status = 200;
        s.inner.lock().unwrap().delivered.extend(call.events());
        let _ = s.calls.send(call.clone());
        HttpResponse::Ok().json(json!({"results": []}))
    };
    match behavior {
        Behavior::Ok => ok(&s, &mut call),
        Behavior::Status(code) => {
            call.status = code;
            let _ = s.calls.send(call);
            HttpResponse::build(awc::http::StatusCode::from_u16(code).unwrap())
                .json(json!({"detail": "scripted failure"}))
        }
        Behavior::Garbage => {
            call.status = 500;
            let _ = s.calls.send(call);
            HttpResponse::InternalServerError()
                .content_type("text/html")
                .body("<html><body>Server Error (500)</body></html>\u{0}\u{1}")
        }
        Behavior::Garbage200 => {
            call.status = 299;
            let _ = s.calls.send(call);
            HttpResponse::Ok()
                .content_type("text/html")
                .body("<html><body>Please log in</body></html>")
        }
        Behavior::Stall => {
            let notified = s.release.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let _ = s.calls.send(call.clone());
            notified.await;
            HttpResponse::Ok().json(json!({"results": []}))
        }
        Behavior::RejectNamed(tickets) => {
            let bad = holds_ticket(&body, &tickets);
            if bad.is_empty() {
                return ok(&s, &mut call);
            }
            call.status = 422;
            let _ = s.calls.send(call);
            let rejected: Vec<_> = bad
                .iter()
                .map(|e| json!({"event_id": e["event_id"], "code": "validation", "message": "requester unknown"}))
                .collect();
            HttpResponse::UnprocessableEntity().json(json!({ "rejected": rejected }))
        }
        Behavior::RejectUnnamed(tickets) => {
            if holds_ticket(&body, &tickets).is_empty() {
                return ok(&s, &mut call);
            }
            call.status = 400;
            let _ = s.calls.send(call);
            HttpResponse::BadRequest().finish()
        }
        Behavior::StatusIfContains(marker, code) => {
            if !body.to_string().contains(&marker) {
                return ok(&s, &mut call);
            }
            call.status = code;
            let _ = s.calls.send(call);
            HttpResponse::build(awc::http::StatusCode::from_u16(code).unwrap())
                .json(json!({"detail": "scripted failure"}))
        }
        // Chat-only behaviours answer a sync batch as a healthy Django would.
        Behavior::Json(_) => ok(&s, &mut call),
    }
}

async fn fetch(
    req: actix_web::HttpRequest,
    path: web::Path<String>,
    s: web::Data<Shared>,
) -> HttpResponse {
    let request_id = req
        .headers()
        .get("X-Request-Id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let reply = {
        let mut inner = s.inner.lock().unwrap();
        inner.fetches.push(path.clone());
        inner.fetch_request_ids.push(request_id);
        inner.tickets.get(path.as_str()).cloned()
    };
    match reply {
        None => HttpResponse::NotFound().json(json!({"detail": "Not found."})),
        Some(FetchReply::Ticket(t)) => HttpResponse::Ok().json(t),
        Some(FetchReply::Garbage) => HttpResponse::Ok()
            .content_type("application/json")
            .body("{\"id\": [garbage"),
        Some(FetchReply::Status(code)) => {
            HttpResponse::build(awc::http::StatusCode::from_u16(code).unwrap()).finish()
        }
    }
}

/// The answer a healthy Django gives each chat endpoint; the chat ticket endpoint answers 201 the first
/// time it sees a ticket id and 200 after.
fn chat_ok(endpoint: ChatEndpoint, body: &Value, s: &Shared) -> HttpResponse {
    match endpoint {
        ChatEndpoint::AiRespond => HttpResponse::Ok().json(json!({
            "reply": format!("You said: {}", body["message"].as_str().unwrap_or("")),
            "confidence": 0.9, "handoff": false, "suggested_actions": []
        })),
        ChatEndpoint::ChatTicket => {
            let id = body["ticket_id"].as_str().unwrap_or_default().to_string();
            let created = s.inner.lock().unwrap().chat_tickets.insert(id.clone());
            let answer = json!({"ticket_id": id, "url": format!("https://support.example.com/tickets/{id}")});
            if created {
                HttpResponse::Created().json(answer)
            } else {
                HttpResponse::Ok().json(answer)
            }
        }
        ChatEndpoint::Handoff => HttpResponse::Ok().json(json!({"ok": true})),
        ChatEndpoint::ManageService => HttpResponse::Ok().json(json!({
            "ok": true,
            "message": format!("{} done for {}", body["operation"].as_str().unwrap_or("?"), body["service"].as_str().unwrap_or("?")),
            "data": {"action_id": body["action_id"]}
        })),
    }
}

async fn chat(
    endpoint: ChatEndpoint,
    req: HttpRequest,
    body: web::Bytes,
    s: web::Data<Shared>,
) -> HttpResponse {
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let behavior = {
        let mut inner = s.inner.lock().unwrap();
        inner.chat_calls.push(ChatCall {
            endpoint,
            body: body.clone(),
            authorization: header(&req, "Authorization"),
            request_id: header(&req, "X-Request-Id"),
            idempotency_key: header(&req, "Idempotency-Key"),
        });
        let scripted = inner
            .chat_script
            .get_mut(&endpoint)
            .and_then(VecDeque::pop_front);
        scripted
            .or_else(|| inner.chat_default.get(&endpoint).cloned())
            .unwrap_or(Behavior::Ok)
    };
    match behavior {
        Behavior::Status(code) => {
            HttpResponse::build(awc::http::StatusCode::from_u16(code).unwrap())
                .json(json!({"detail": "scripted failure"}))
        }
        Behavior::Garbage => HttpResponse::InternalServerError()
            .content_type("text/html")
            .body("<html><body>Server Error (500)</body></html>"),
        Behavior::Garbage200 => HttpResponse::Ok()
            .content_type("text/html")
            .body("<html><body>Please log in</body></html>"),
        Behavior::Stall => {
            let notified = s.release.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            notified.await;
            chat_ok(endpoint, &body, &s)
        }
        Behavior::Json(answer) => HttpResponse::Ok().json(answer),
        _ => chat_ok(endpoint, &body, &s),
    }
}
