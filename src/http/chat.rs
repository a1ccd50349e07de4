//! The chat listener on `chat.bind`: an accept loop that hands each connection to the least busy
//! chat thread ([`crate::chat::shards`]), over the lean WebSocket transport ([`crate::transport`]),
//! because an idle connection must hold no buffer (BENCHMARKS.md, "Live chat transport").
//!
//! Each connection is routed by its request head before anything is upgraded: `/healthz` answers
//! 200, `/ws/chat` is upgraded once it passes the origin allow-list (403), admission control (a
//! token bucket, `sessions.admission_per_sec`, and `sessions.max_sessions`; 503 with
//! `Retry-After`), and every other path is a JSON 404. An upgraded connection's first frame must be
//! `session.start` or `session.resume` within `sessions.handshake_timeout_ms`; the connection then
//! goes to the session registry of its session's thread (moved there if it is another), which
//! attaches it to its session.
//!
//! `/ws/agent` signs the agent in at the handshake: a token (`Authorization: Bearer`, or
//! `?access_token=` for browsers) that is missing, invalid or signed with another secret is
//! answered 401 `unauthorized`, an expired one 401 `token_expired`, another role 403 `forbidden`,
//! and past `agents.max_agents` 503. The first frame must be `agent.start` or `agent.resume`; the
//! connection then goes to the agent registry of the agent's thread.
//!
//! [`ChatListener`] runs the loop as a supervised child: stopping it closes the listening socket
//! at once (new connections are refused), while sessions go on until the registry ends them.

use std::net::{SocketAddr, TcpListener};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use futures_channel::oneshot;
use futures_util::future::{FutureExt, LocalBoxFuture};
use futures_util::{Stream, StreamExt};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

use crate::chat::agent::protocol::{self as agent_protocol, AgentFrame};
use crate::chat::agent::Opening;
use crate::chat::agents::AgentConnected;
use crate::chat::attached::{nonzero, FrameRate, Rate};
use crate::chat::auth::{self, AgentIdentity};
use crate::chat::handover::{HandedOver, Party};
use crate::chat::link::{Connection, Inbound, Lane, Link, Local, SendError, Socket};
use crate::chat::protocol::{
    self, close, ClientFrame, ErrorCode, FrameError, ServerFrame, SUBPROTOCOL,
};
use crate::chat::registry::{ResumeSession, StartSession};
use crate::chat::shards::{self, ChatShards};
use crate::config::Settings;
use crate::http::assets::{AssetRequest, Assets};
use crate::metrics as m;
use crate::supervisor::supervised::Exit;
use crate::supervisor::{Child, ExitReport, Restart, StartError};
use crate::transport::{self, Head, Message, Route, TransportError};

/// Where the listener hands connections, and the counts its admission reads.
#[derive(Clone)]
pub struct ChatRoutes {
    /// Every chat thread's registries: a connection goes to its party's thread.
    pub shards: ChatShards,
    pub live_sessions: Arc<AtomicUsize>,
    pub live_agents: Arc<AtomicUsize>,
}

/// Who an upgraded connection is for, decided from its head.
enum Target {
    Customer,
    Agent(AgentIdentity),
}

/// What the accept loop and every chat thread's connections need; one per listener start.
struct Shared {
    routes: ChatRoutes,
    settings: Arc<Settings>,
    admission: DefaultDirectRateLimiter,
    limits: transport::Limits,
    /// The chat threads, in order (as [`ChatShards`] numbers them).
    threads: Vec<ArbiterHandle>,
    /// Connections accepted and not yet closed (gauge `switchboard_chat_sockets`).
    sockets: AtomicI64,
    /// The same, by chat thread (gauge `switchboard_chat_thread_sockets`).
    thread_sockets: Vec<AtomicI64>,
    /// Where the next accepted connection's search for the least busy thread starts.
    next_thread: AtomicUsize,
    /// The widget, JS client, console and demo page.
    assets: Arc<Assets>,
}

impl Shared {
    /// Decides what to do with a request from its head alone; an upgrade names its [`Target`].
    fn route(&self, head: &Head, target: &mut Option<Target>) -> Route {
        let path = head.path.split('?').next().unwrap_or("");
        if path == "/healthz" && head.method == "GET" {
            return Route::Respond(http_json(
                200,
                "OK",
                r#"{"status":"ok","listener":"chat"}"#,
                &[],
            ));
        }
        if path != "/ws/chat" && path != "/ws/agent" {
            let asset = self.assets.respond(AssetRequest {
                method: &head.method,
                path,
                origin: head.origin.as_deref(),
                accept_encoding: head.accept_encoding.as_deref(),
                if_none_match: head.if_none_match.as_deref(),
            });
            if let Some(bytes) = asset {
                metrics::counter!(m::CHAT_ASSET_REQUESTS).increment(1);
                return Route::Respond(bytes);
            }
            return Route::Respond(http_json(
                404,
                "Not Found",
                &error_body("not_found", &format!("no route for {} {path}", head.method)),
                &[],
            ));
        }
        let agent = path == "/ws/agent";
        let allowed_origins = if agent {
            &self.settings.agents.allowed_origins
        } else {
            &self.settings.sessions.allowed_origins
        };
        if !origin_allowed(head.origin.as_deref(), allowed_origins) {
            metrics::counter!(m::CHAT_ADMISSION_REFUSED, "reason" => "origin").increment(1);
            return Route::Respond(http_json(
                403,
                "Forbidden",
                &error_body("origin_not_allowed", "this origin may not open a chat"),
                &[],
            ));
        }
        // A hard bound on sockets (file descriptors), whoever they are for. Sessions and agents are
        // counted later, once the first frame tells a new one from a reconnect.
        let sockets = usize::try_from(self.sockets.load(Ordering::Relaxed)).unwrap_or(0);
        if sockets >= self.settings.chat.max_connections {
            return refused("capacity", "too many chat connections; retry later", "5");
        }
        if agent {
            return self.route_agent(head, target);
        }
        if self.admission.check().is_err() {
            return refused("rate", "too many new connections; retry in a moment", "1");
        }
        *target = Some(Target::Customer);
        Route::Upgrade
    }

    /// Signs an agent in from the head's token (see the module docs for each refusal).
    fn route_agent(&self, head: &Head, target: &mut Option<Target>) -> Route {
        let token = bearer(head);
        let identity = match auth::agent(token.as_deref(), &self.settings.agents.jwt_secret) {
            Ok(identity) => identity,
            Err(e) => {
                let (status, code) = e.status();
                metrics::counter!(m::AGENT_REFUSED, "reason" => code).increment(1);
                tracing::info!(error = %e, code, "agent handshake refused");
                let (reason, challenge) = if status == 403 {
                    ("Forbidden", None)
                } else {
                    ("Unauthorized", Some(("WWW-Authenticate", "Bearer")))
                };
                return Route::Respond(http_json(
                    status,
                    reason,
                    &error_body(code, &e.to_string()),
                    challenge.as_slice(),
                ));
            }
        };
        *target = Some(Target::Agent(identity));
        Route::Upgrade
    }
}

/// Whether a handshake's `Origin` may open a connection: any when `allowed` is empty; otherwise
/// one on the list, or none at all (only browser pages send one: mobile apps and services do not,
/// and the Origin check exists to stop other sites' pages).
fn origin_allowed(origin: Option<&str>, allowed: &[String]) -> bool {
    match origin {
        None => true,
        Some(o) => allowed.is_empty() || allowed.iter().any(|a| a == o),
    }
}

/// An agent's token: `Authorization: Bearer …`, else the `access_token` query parameter (browsers
/// cannot set headers on a WebSocket).
fn bearer(head: &Head) -> Option<String> {
    if let Some(value) = head.authorization.as_deref() {
        let (scheme, token) = value.split_once(' ').unwrap_or((value, ""));
        return scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| token.trim().to_string());
    }
    let query = head.path.split_once('?')?.1;
    serde_urlencoded::from_str::<Vec<(String, String)>>(query)
        .ok()?
        .into_iter()
        .find(|(k, _)| k == "access_token")
        .map(|(_, v)| v)
}

/// A 503 with `Retry-After` (seconds), counted under `reason`.
fn refused(reason: &'static str, message: &str, retry_after: &str) -> Route {
    metrics::counter!(m::CHAT_ADMISSION_REFUSED, "reason" => reason).increment(1);
    Route::Respond(http_json(
        503,
        "Service Unavailable",
        &error_body("unavailable", message),
        &[("Retry-After", retry_after)],
    ))
}

fn error_body(code: &str, message: &str) -> String {
    serde_json::json!({"error": {"code": code, "message": message}}).to_string()
}

/// A whole HTTP/1.1 response that closes the connection.
fn http_json(status: u16, reason: &str, body: &str, headers: &[(&str, &str)]) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n",
        body.len()
    );
    for (k, v) in headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str("\r\n");
    out.push_str(body);
    out.into_bytes()
}

/// Counts one open socket (gauge `switchboard_chat_sockets`, and `chat.max_connections`) until
/// both halves of its connection are gone, i.e. until the socket is really closed: a link dropped
/// while its reader still drains a closing handshake still holds a descriptor.
struct SocketCount {
    shared: Arc<Shared>,
    thread: usize,
}

impl SocketCount {
    fn new(shared: Arc<Shared>, thread: usize) -> Rc<Self> {
        let count = Self { shared, thread };
        count.add(1);
        Rc::new(count)
    }

    fn add(&self, n: i64) {
        let total = self.shared.sockets.fetch_add(n, Ordering::Relaxed) + n;
        let here = self.shared.thread_sockets[self.thread].fetch_add(n, Ordering::Relaxed) + n;
        metrics::gauge!(m::CHAT_SOCKETS).set(total as f64);
        metrics::gauge!(m::CHAT_THREAD_SOCKETS, "thread" => self.thread.to_string())
            .set(here as f64);
    }
}

impl Drop for SocketCount {
    fn drop(&mut self) {
        self.add(-1);
    }
}

/// The session's side of a socket: frames go straight to the socket, and only what the kernel
/// will not take waits, up to `sessions.outbound_queue_bytes`.
struct SocketLink {
    out: transport::Outbound,
    _count: Rc<SocketCount>,
}

impl Link for SocketLink {
    fn send(&mut self, text: String, lane: Lane) -> Result<(), SendError> {
        // A client that has bytes waiting is slow: typing is the first thing it does without.
        if lane == Lane::Droppable && self.out.queued() > 0 {
            return Err(SendError::Full);
        }
        match self.out.send_text(&text) {
            Ok(()) => Ok(()),
            Err(transport::SendError::Backlog { .. }) => Err(SendError::Full),
            Err(_) => Err(SendError::Closed),
        }
    }

    fn ping(&mut self) {
        let _ = self.out.send_ping(b"");
    }

    fn close(&mut self, code: u16, reason: &'static str) {
        self.out.close(code, reason);
    }

    fn pause(&mut self) {
        self.out.pause();
    }

    fn resume(&mut self) {
        self.out.resume();
    }

    fn detach(&mut self) -> Option<Socket> {
        match self.out.detach() {
            Ok(d) => Some(Socket {
                socket: d.socket,
                raw: d.raw,
            }),
            Err(e) => {
                tracing::debug!(error = %e, "connection not handed over; it is closed to resume");
                None
            }
        }
    }
}

/// The transport's messages as a session's inbound events; `count` goes with the stream.
fn events(inbound: transport::Inbound, count: Rc<SocketCount>) -> impl Stream<Item = Inbound> {
    inbound
        .inspect(move |_| {
            let _ = &count;
        })
        .take_while(|item| futures_util::future::ready(!matches!(item, Ok(Message::Close(_)))))
        .filter_map(|item| {
            futures_util::future::ready(match item {
                Ok(Message::Text(text)) => Some(Inbound::Text(text)),
                Ok(Message::Binary(_)) => Some(Inbound::Broken {
                    code: close::UNSUPPORTED_DATA,
                    reason: "binary frames are not accepted",
                }),
                Ok(Message::Ping(_) | Message::Pong(_)) => Some(Inbound::Alive),
                Ok(Message::Close(_)) => None,
                Err(TransportError::Protocol(e)) => Some(Inbound::Broken {
                    code: e.close_code(),
                    reason: "protocol error",
                }),
                Err(TransportError::Io(_)) => None,
            })
        })
}

/// The transport's halves as a session's or agent's connection, counted as an open socket of
/// chat thread `thread` (the one this runs on).
fn connection(
    inbound: transport::Inbound,
    outbound: transport::Outbound,
    shared: &Arc<Shared>,
    thread: usize,
) -> Connection {
    let count = SocketCount::new(shared.clone(), thread);
    Connection {
        link: Box::new(SocketLink {
            out: outbound,
            _count: count.clone(),
        }),
        inbound: Box::pin(events(inbound, count)),
    }
}

/// What to do with a connection once it is on its party's thread; runs there.
type Deliver = Box<dyn FnOnce(Connection, &Arc<Shared>) + Send>;

/// Takes a socket up as a connection on chat thread `thread` (this one) and delivers it; `false`
/// if it could not be (it is dropped, and its client resumes).
fn take_up(socket: Socket, shared: &Arc<Shared>, thread: usize, deliver: Deliver) -> bool {
    match transport::adopt(socket.socket, socket.raw, &shared.limits) {
        Ok((inbound, outbound)) => {
            deliver(connection(inbound, outbound, shared, thread), shared);
            true
        }
        Err(e) => {
            tracing::warn!(error = %e, "a connection could not be taken up on its chat thread");
            false
        }
    }
}

/// Sends a connection whose first frame named its party to that party's chat thread `owner`
/// (from `here`, the thread it was accepted on) and delivers it there. Its socket is taken out
/// with the bytes read and not used; one that cannot be (output still queued) is closed 1012, and
/// its client resumes.
fn to_owner(
    mut conn: Connection,
    shared: &Arc<Shared>,
    (here, owner): (usize, usize),
    party: &'static str,
    deliver: Deliver,
) {
    if here == owner {
        return deliver(conn, shared);
    }
    let span = tracing::debug_span!("chat_move", party, from = here, to = owner);
    let _guard = span.enter();
    let Some(socket) = conn.link.detach() else {
        metrics::counter!(m::CHAT_MOVED, "party" => party, "outcome" => "closed").increment(1);
        reject_with(
            &mut conn,
            ErrorCode::ServerBusy,
            "the connection could not be moved to its session; resume again",
            close::SERVICE_RESTART,
        );
        return;
    };
    drop(conn);
    let target = shared.clone();
    let sent = shared.threads[owner].spawn_fn(move || {
        if take_up(socket, &target, owner, deliver) {
            metrics::counter!(m::CHAT_MOVED, "party" => party, "outcome" => "moved").increment(1);
        } else {
            metrics::counter!(m::CHAT_MOVED, "party" => party, "outcome" => "closed").increment(1);
        }
    });
    if !sent {
        tracing::warn!(thread = owner, "a chat thread is gone; connection dropped");
    }
}

/// Takes over the connections the process this one replaced handed over: each goes back to its
/// session or agent as it was, without a word to its client, on that party's chat thread. One
/// that cannot be taken up is dropped (its client resumes).
fn adopt(handed: Vec<HandedOver>, shared: &Arc<Shared>) {
    let n = handed.len();
    let threads = shared.threads.len();
    for HandedOver { party, socket } in handed {
        let label = party.label();
        let (owner, deliver): (usize, Deliver) = match party {
            Party::Customer {
                session_id,
                sent_seq,
            } => {
                let owner = shards::of_session(session_id, threads);
                (
                    owner,
                    Box::new(move |conn, shared| {
                        shared.routes.shards.session_registries()[owner].do_send(ResumeSession {
                            conn: Local::new(conn),
                            session_id,
                            resume_token: String::new(),
                            last_seq: sent_seq,
                            started_at: Instant::now(),
                            adopted: true,
                        })
                    }),
                )
            }
            Party::Agent {
                agent_id,
                name,
                expires_at,
                last_seq,
                presence,
                capacity,
                auto_assign,
                held,
            } => {
                let owner = shards::of_agent(&agent_id, threads);
                (
                    owner,
                    Box::new(move |conn, shared| {
                        shared.routes.shards.agent_registries()[owner].do_send(AgentConnected {
                            conn: Local::new(conn),
                            identity: AgentIdentity {
                                id: agent_id,
                                name,
                                expires_at,
                            },
                            opening: Opening::Adopted {
                                last_seq,
                                presence,
                                capacity,
                                auto_assign,
                            },
                            shown: held,
                        })
                    }),
                )
            }
        };
        let target = shared.clone();
        let sent = shared.threads[owner].spawn_fn(move || {
            if !take_up(socket, &target, owner, deliver) {
                metrics::counter!(m::UPGRADE_ADOPTED, "party" => label, "outcome" => "failed")
                    .increment(1);
            }
        });
        if !sent {
            metrics::counter!(m::UPGRADE_ADOPTED, "party" => label, "outcome" => "failed")
                .increment(1);
        }
    }
    if n > 0 {
        tracing::info!(
            connections = n,
            "connections handed over by the last process taken up"
        );
    }
}

/// One accepted socket, on chat thread `thread`: route, upgrade, wait for the first frame, hand
/// over to its party's thread.
async fn serve_connection(
    stream: std::net::TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    thread: usize,
) {
    let Ok(stream) = tokio::net::TcpStream::from_std(stream) else {
        return;
    };
    let _ = stream.set_nodelay(true);
    let head_wait = Duration::from_millis(shared.settings.chat.request_timeout_ms);
    let mut target = None;
    let accepted = tokio::time::timeout(
        head_wait,
        transport::accept_routed(stream, &[SUBPROTOCOL], &shared.limits, |head| {
            shared.route(head, &mut target)
        }),
    )
    .await;
    let (inbound, outbound) = match accepted {
        Ok(Ok(Some((_, inbound, outbound)))) => (inbound, outbound),
        Ok(Ok(None)) => return,
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "chat handshake refused");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "chat handshake timed out");
            return;
        }
    };
    let conn = connection(inbound, outbound, &shared, thread);
    match target {
        Some(Target::Agent(identity)) => agent_first_frame(conn, identity, &shared, thread).await,
        _ => customer_first_frame(conn, &shared, thread).await,
    }
}

/// A connection's first frame other than a ping (answered), within the handshake timeout; `None`
/// when the connection ended or was refused for it.
///
/// Before a session exists the connection is held to the same frame rate as after (every frame,
/// control frames included; `rate_close_after` frames over it in a row close it with 1008), and it
/// yields the thread after each frame, so an anonymous socket flooding pings cannot stall the
/// sessions sharing its thread.
async fn first_frame<F>(
    conn: &mut Connection,
    shared: &Shared,
    (rate_per_sec, rate_burst): (u32, u32),
    parse: impl Fn(&str) -> Result<F, FrameError>,
    is_ping: impl Fn(&F) -> bool,
) -> Option<(F, Instant)> {
    let wait = Duration::from_millis(shared.settings.sessions.handshake_timeout_ms);
    let deadline = tokio::time::Instant::now() + wait;
    let mut rate = FrameRate::new(
        rate_per_sec,
        rate_burst,
        shared.settings.sessions.rate_close_after,
    );
    loop {
        tokio::task::yield_now().await;
        let first = tokio::time::timeout_at(deadline, conn.inbound.next()).await;
        let started_at = Instant::now();
        let item = match first {
            Ok(Some(Inbound::Broken { code, reason })) => {
                conn.link.close(code, reason);
                return None;
            }
            Ok(Some(item)) => item,
            Ok(None) => return None,
            Err(_) => {
                reject(
                    conn,
                    ErrorCode::NoSession,
                    "no start or resume frame in time",
                );
                return None;
            }
        };
        match rate.check() {
            Rate::Within => {}
            Rate::Close => {
                metrics::counter!(m::CHAT_RATE_CLOSED, "stage" => "pre_session").increment(1);
                reject_with(
                    conn,
                    ErrorCode::RateLimited,
                    "over the frame rate before a session started",
                    close::POLICY_VIOLATION,
                );
                return None;
            }
            Rate::Over => {
                if let Inbound::Text(text) = item {
                    metrics::counter!(m::CHAT_FRAME_ERRORS, "code" => ErrorCode::RateLimited.label())
                        .increment(1);
                    let frame = ServerFrame::Error {
                        code: ErrorCode::RateLimited,
                        message: "too many frames; slow down".into(),
                        client_id: protocol::client_id_of(&text),
                    };
                    let _ = conn.link.send(frame.to_text(), Lane::Reliable);
                }
                continue;
            }
        }
        let Inbound::Text(text) = item else {
            continue;
        };
        match parse(&text) {
            Ok(frame) if is_ping(&frame) => {
                let _ = conn
                    .link
                    .send(ServerFrame::Pong {}.to_text(), Lane::Reliable);
            }
            Ok(frame) => return Some((frame, started_at)),
            Err(e) => {
                reject(conn, e.code, &e.message);
                return None;
            }
        }
    }
}

async fn customer_first_frame(mut conn: Connection, shared: &Arc<Shared>, thread: usize) {
    let s = &shared.settings.sessions;
    let rate = (s.rate_per_sec, s.rate_burst);
    let first = first_frame(&mut conn, shared, rate, protocol::parse, |f| {
        matches!(f, ClientFrame::Ping {})
    })
    .await;
    let Some((frame, started_at)) = first else {
        return;
    };
    let shards = &shared.routes.shards;
    match frame {
        ClientFrame::Start { token } => {
            metrics::counter!(m::CHAT_FRAMES_IN, "type" => "session.start").increment(1);
            // A new session is minted for this thread, so its connection stays here.
            shards.session_registries()[thread].do_send(StartSession {
                conn: Local::new(conn),
                token,
                started_at,
            });
        }
        ClientFrame::Resume {
            session_id,
            resume_token,
            last_seq,
        } => {
            metrics::counter!(m::CHAT_FRAMES_IN, "type" => "session.resume").increment(1);
            let owner = shards::of_session(session_id, shards.count());
            let deliver: Deliver = Box::new(move |conn, shared| {
                shared.routes.shards.session_registries()[owner].do_send(ResumeSession {
                    conn: Local::new(conn),
                    session_id,
                    resume_token,
                    last_seq,
                    started_at,
                    adopted: false,
                })
            });
            to_owner(conn, shared, (thread, owner), "customer", deliver);
        }
        other => reject(
            &mut conn,
            ErrorCode::NoSession,
            &format!("`{}` before session.start or session.resume", other.kind()),
        ),
    }
}

async fn agent_first_frame(
    mut conn: Connection,
    identity: AgentIdentity,
    shared: &Arc<Shared>,
    thread: usize,
) {
    let a = &shared.settings.agents;
    let rate = (a.rate_per_sec, a.rate_burst);
    let first = first_frame(&mut conn, shared, rate, agent_protocol::parse, |f| {
        matches!(f, AgentFrame::Ping {})
    })
    .await;
    let Some((frame, _)) = first else {
        return;
    };
    metrics::counter!(m::AGENT_FRAMES_IN, "type" => frame.kind()).increment(1);
    let opening = match frame {
        AgentFrame::Start {
            presence,
            capacity,
            auto_assign,
        } => Opening::Start {
            presence,
            capacity,
            auto_assign,
        },
        AgentFrame::Resume { last_seq } => Opening::Resume { last_seq },
        other => {
            return reject(
                &mut conn,
                ErrorCode::NoSession,
                &format!("`{}` before agent.start or agent.resume", other.kind()),
            )
        }
    };
    let owner = shards::of_agent(&identity.id, shared.routes.shards.count());
    let deliver: Deliver = Box::new(move |conn, shared| {
        shared.routes.shards.agent_registries()[owner].do_send(AgentConnected {
            conn: Local::new(conn),
            identity,
            opening,
            shown: Vec::new(),
        })
    });
    to_owner(conn, shared, (thread, owner), "agent", deliver);
}

/// Refuses a connection that has no session (or agent): an `error` frame, then close 1008.
fn reject(conn: &mut Connection, code: ErrorCode, message: &str) {
    reject_with(conn, code, message, close::POLICY_VIOLATION);
}

fn reject_with(conn: &mut Connection, code: ErrorCode, message: &str, close_code: u16) {
    metrics::counter!(m::CHAT_FRAME_ERRORS, "code" => code.label()).increment(1);
    let _ = conn
        .link
        .send(ServerFrame::error(code, message).to_text(), Lane::Reliable);
    conn.link.close(close_code, "no session");
}

/// The chat thread for a new connection: the one with the fewest open sockets, searched from a
/// rotating start so that ties spread.
fn least_busy(shared: &Shared) -> usize {
    let n = shared.threads.len();
    let start = shared.next_thread.fetch_add(1, Ordering::Relaxed) % n;
    (0..n)
        .map(|i| (start + i) % n)
        .min_by_key(|&t| shared.thread_sockets[t].load(Ordering::Relaxed))
        .unwrap_or(0)
}

/// The accept loop; ends when `stop` fires (or its sender is dropped). Each connection is served
/// on the least busy chat thread from the start.
async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut stop: oneshot::Receiver<()>,
) -> std::io::Result<()> {
    listener.set_nonblocking(true)?;
    let listener = tokio::net::TcpListener::from_std(listener)?;
    loop {
        futures_util::select! {
            _ = (&mut stop).fuse() => return Ok(()),
            accepted = listener.accept().fuse() => match accepted {
                Ok((stream, peer)) => {
                    // Out of this thread's reactor, into the chosen thread's.
                    let Ok(stream) = stream.into_std() else { continue };
                    let thread = least_busy(&shared);
                    let on = shared.clone();
                    let sent = shared.threads[thread].spawn_fn(move || {
                        actix_rt::spawn(serve_connection(stream, peer, on, thread));
                    });
                    if !sent {
                        tracing::warn!(thread, "a chat thread is gone; connection dropped");
                    }
                }
                Err(e) => {
                    // Out of file descriptors, say: the listener itself is fine, so wait a moment
                    // rather than spin (closing connections free descriptors).
                    tracing::warn!(error = %e, "chat listener could not accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
}

/// The chat listener as a supervised child, its accept loop on the first chat thread.
pub struct ChatListener {
    /// The bound socket, kept for restarts; `None` once stopped, so that the port refuses new
    /// connections instead of queueing them for a loop that has ended.
    listener: Option<TcpListener>,
    /// The chat threads, in order.
    threads: Vec<ArbiterHandle>,
    routes: ChatRoutes,
    settings: Arc<Settings>,
    listening: Arc<AtomicBool>,
    stop: Option<oneshot::Sender<()>>,
    finished: Option<oneshot::Receiver<()>>,
    report: Option<ExitReport>,
    /// Read and compressed once, kept across restarts of the loop.
    assets: Arc<Assets>,
    /// Connections handed over by the process this one replaced, taken up at the first start.
    adopted: Vec<HandedOver>,
}

impl ChatListener {
    pub fn new(
        listener: TcpListener,
        threads: Vec<ArbiterHandle>,
        routes: ChatRoutes,
        settings: Arc<Settings>,
        listening: Arc<AtomicBool>,
    ) -> Self {
        let assets = Arc::new(Assets::load(settings.sessions.allowed_origins.clone()));
        tracing::info!(version = assets.version(), "browser assets loaded");
        Self {
            listener: Some(listener),
            threads,
            routes,
            settings,
            listening,
            stop: None,
            finished: None,
            report: None,
            assets,
            adopted: Vec::new(),
        }
    }

    /// Connections handed over by the process this one replaced, to take up before accepting.
    pub fn adopting(mut self, handed: Vec<HandedOver>) -> Self {
        self.adopted = handed;
        self
    }

    fn launch(&mut self) -> Result<(), StartError> {
        let listener = self
            .listener
            .as_ref()
            .ok_or_else(|| std::io::Error::other("the listener was stopped"))
            .and_then(TcpListener::try_clone)
            .map_err(|e| StartError {
                child: "chat_listener",
                message: e.to_string(),
            })?;
        let (stop_tx, stop_rx) = oneshot::channel();
        let (done_tx, done_rx) = oneshot::channel();
        let routes = self.routes.clone();
        let settings = self.settings.clone();
        let listening = self.listening.clone();
        let report = self.report.clone();
        let assets = self.assets.clone();
        let adopted = std::mem::take(&mut self.adopted);
        let threads = self.threads.clone();
        let spawned = self.threads[0].spawn_fn(move || {
            actix_rt::spawn(async move {
                let s = &settings.sessions;
                let quota = Quota::per_second(nonzero(s.admission_per_sec))
                    .allow_burst(nonzero(s.admission_burst));
                let shared = Arc::new(Shared {
                    routes,
                    limits: transport::Limits {
                        max_frame: s.max_frame_bytes,
                        max_message: s.max_frame_bytes,
                        max_queued: s.outbound_queue_bytes,
                        max_head: settings.chat.max_header_bytes,
                    },
                    settings: settings.clone(),
                    admission: RateLimiter::direct(quota),
                    sockets: AtomicI64::new(0),
                    thread_sockets: threads.iter().map(|_| AtomicI64::new(0)).collect(),
                    next_thread: AtomicUsize::new(0),
                    threads,
                    assets,
                });
                adopt(adopted, &shared);
                listening.store(true, Ordering::SeqCst);
                let result = accept_loop(listener, shared, stop_rx).await;
                listening.store(false, Ordering::SeqCst);
                let _ = done_tx.send(());
                if let Some(report) = report {
                    match result {
                        Ok(()) => {}
                        Err(e) => report(Exit::Panicked(e.to_string())),
                    }
                }
            });
        });
        if !spawned {
            return Err(StartError {
                child: "chat_listener",
                message: "the first chat thread is gone".into(),
            });
        }
        self.stop = Some(stop_tx);
        self.finished = Some(done_rx);
        Ok(())
    }
}

impl Child for ChatListener {
    fn name(&self) -> &'static str {
        "chat_listener"
    }

    fn restart_type(&self) -> Restart {
        Restart::Permanent
    }

    fn start(&mut self, report: ExitReport) -> Result<(), StartError> {
        self.report = Some(report);
        self.launch()
    }

    fn restart(&mut self, cause: &'static str) -> Result<(), StartError> {
        metrics::counter!(m::ACTOR_RESTARTS, "kind" => "chat_listener", "cause" => cause)
            .increment(1);
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.launch()
    }

    fn close_doors(&mut self) {
        // The accept loop ends and drops its socket; ours goes too, so connecting is refused.
        self.report = None;
        self.listener = None;
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    fn stop(&mut self) -> LocalBoxFuture<'static, ()> {
        self.close_doors();
        let finished = self.finished.take();
        async move {
            if let Some(f) = finished {
                let _ = f.await;
            }
        }
        .boxed_local()
    }
}
