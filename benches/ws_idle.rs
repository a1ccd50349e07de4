//! Memory per idle WebSocket connection, for each transport candidate of live chat.
//!
//! ```text
//! cargo bench --bench ws_idle -- run [--candidates actix-ws,tungstenite-4k,tungstenite-1k,lean]
//!                                    [--conns 10000] [--runs 3] [--clients 2]
//! ```
//!
//! For each run and each candidate in turn (runs interleave the candidates), the tool re-executes
//! itself as `serve <candidate>`: a server process on 127.0.0.1 port 0 with jemalloc, as in
//! production, holding one actix actor per connection that echoes text frames. It reads the server's
//! RSS, starts `--clients` client processes (`client …`) that open `--conns` connections between them
//! from several 127.0.0.x source addresses, each completing the upgrade with subprotocol
//! `switchboard.v1`, sending one small JSON text frame and reading its echo, then staying idle. Once
//! the server's RSS stops moving it prints (plateau − before) / connections, kills the children and
//! moves on. Without `run` (as under `cargo test --all-targets`) or with `--test`, it does a smoke run
//! of 200 connections per candidate. A watchdog kills every child and exits if a run hangs.
//!
//! The clients are lean: a tokio `TcpStream` each, a hand-written handshake and frame, no buffers
//! kept. Candidates:
//! - `actix-ws`: actix-web `HttpServer` (1 worker) + actix-ws; the actor owns the `Session` and the
//!   message stream.
//! - `tungstenite-4k` / `tungstenite-1k`: a tokio task per connection runs a tokio-tungstenite
//!   stream (read buffer 4096 / 1024 bytes, write buffer 0) and forwards frames to and from an actor.
//! - `lean`: `switchboard::transport`: the actor owns both halves of the connection; an idle
//!   connection holds no buffer.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use actix::{Actor, ActorContext, AsyncContext, Context, Handler, StreamHandler, WrapFuture};
use futures_util::{SinkExt, StreamExt};
use switchboard::transport::frame::{self, Opcode, Role};
use tokio::net::{TcpSocket, TcpStream};

// The load tool's raw client and process plumbing, shared rather than copied.
#[allow(dead_code)]
#[path = "../src/bin/switchboard-load/procs.rs"]
mod procs;
#[allow(dead_code)]
#[path = "../src/bin/switchboard-load/raw_ws.rs"]
mod raw_ws;
use raw_ws::{read_some, write_all, PROTOCOL};

#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

const CANDIDATES: [&str; 4] = ["actix-ws", "tungstenite-4k", "tungstenite-1k", "lean"];
/// Connections a client process opens at once.
const CLIENT_CONCURRENCY: usize = 256;

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    match args.first().map(String::as_str) {
        Some("serve") => serve(args.get(1).map(String::as_str).unwrap_or("")),
        Some("client") => client(&args[1..]),
        Some("run") => match Run::parse(&args[1..]) {
            Ok(run) => run_all(&run, false),
            Err(e) => {
                eprintln!("{e}\n{USAGE}");
                std::process::exit(2);
            }
        },
        _ => {
            // A test harness ran us (`cargo test --all-targets`), maybe with a filter: smoke only.
            let smoke = Run {
                candidates: CANDIDATES.iter().map(|c| c.to_string()).collect(),
                conns: 200,
                runs: 1,
                clients: 1,
            };
            run_all(&smoke, true);
        }
    }
}

const USAGE: &str = "usage: cargo bench --bench ws_idle -- run [--candidates a,b,…] [--conns N] \
[--runs R] [--clients K]";

struct Run {
    candidates: Vec<String>,
    conns: usize,
    runs: usize,
    clients: usize,
}

impl Run {
    fn parse(raw: &[String]) -> Result<Run, String> {
        let mut run = Run {
            candidates: CANDIDATES.iter().map(|c| c.to_string()).collect(),
            conns: 10_000,
            runs: 3,
            clients: 2,
        };
        let mut it = raw.iter();
        while let Some(a) = it.next() {
            let v = it.next().ok_or_else(|| format!("{a} needs a value"))?;
            let num = || {
                v.replace('_', "")
                    .parse::<usize>()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| format!("{a}: `{v}` is not a positive integer"))
            };
            match a.as_str() {
                "--conns" => run.conns = num()?,
                "--runs" => run.runs = num()?,
                "--clients" => run.clients = num()?,
                "--candidates" => {
                    run.candidates = v.split(',').map(str::to_string).collect();
                    if let Some(bad) = run
                        .candidates
                        .iter()
                        .find(|c| !CANDIDATES.contains(&c.as_str()))
                    {
                        return Err(format!("unknown candidate `{bad}` (known: {CANDIDATES:?})"));
                    }
                }
                _ => return Err(format!("unknown argument `{a}`")),
            }
        }
        Ok(run)
    }
}

// ---------------------------------------------------------------------------------------------
// The measuring process
// ---------------------------------------------------------------------------------------------

struct Measured {
    candidate: String,
    run: usize,
    conns: usize,
    errors: usize,
    first_error: String,
    before: Rss,
    plateau: Rss,
    fds: usize,
    setup: Duration,
}

#[derive(Clone, Copy, Default)]
struct Rss {
    total_kb: u64,
    anon_kb: u64,
}

fn rss(pid: u32) -> Rss {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    Rss {
        total_kb: field("VmRSS:"),
        anon_kb: field("RssAnon:"),
    }
}

fn run_all(run: &Run, smoke: bool) {
    procs::watchdog(
        "ws_idle",
        if smoke {
            Duration::from_secs(120)
        } else {
            Duration::from_secs(1800 + 120 * (run.runs * run.candidates.len()) as u64)
        },
    );
    procs::raise_nofile();
    if !smoke {
        let mem = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        println!(
            "ws_idle: {} connections per measurement over {} client process(es), {} run(s); nproc {}; {}",
            run.conns,
            run.clients,
            run.runs,
            std::thread::available_parallelism().map_or(0, |n| n.get()),
            mem.lines().next().unwrap_or("")
        );
    }
    let mut results = Vec::new();
    for r in 1..=run.runs {
        for c in &run.candidates {
            let m = measure(c, r, run, smoke);
            println!(
                "run {r} {c:>14}: {} ok, {} errors; RSS {} → {} kB (anon {} → {} kB); {:.0} B/conn; \
                 server fds {}; connected in {:.1} s",
                m.conns,
                m.errors,
                m.before.total_kb,
                m.plateau.total_kb,
                m.before.anon_kb,
                m.plateau.anon_kb,
                per_conn(&m),
                m.fds,
                m.setup.as_secs_f64()
            );
            if m.errors > 0 {
                println!("  first error: {}", m.first_error);
            }
            results.push(m);
        }
    }
    if smoke {
        for m in &results {
            assert!(
                m.conns == run.conns && m.errors == 0,
                "{}: {} of {} connections echoed; first error: {}",
                m.candidate,
                m.conns,
                run.conns,
                m.first_error
            );
        }
        println!("ws_idle smoke run passed (run with `run` for real figures; see the file header)");
        return;
    }
    println!("\n| candidate | run | connections | RSS before | RSS at plateau | bytes per connection (RSS) | (anon) |");
    println!("|---|---|---|---|---|---|---|");
    for c in &run.candidates {
        for m in results.iter().filter(|m| &m.candidate == c) {
            println!(
                "| {} | {} | {} | {:.1} MiB | {:.1} MiB | {:.0} | {:.0} |",
                m.candidate,
                m.run,
                m.conns,
                m.before.total_kb as f64 / 1024.0,
                m.plateau.total_kb as f64 / 1024.0,
                per_conn(m),
                (m.plateau.anon_kb as f64 - m.before.anon_kb as f64) * 1024.0
                    / m.conns.max(1) as f64
            );
        }
    }
}

fn per_conn(m: &Measured) -> f64 {
    (m.plateau.total_kb as f64 - m.before.total_kb as f64) * 1024.0 / m.conns.max(1) as f64
}

struct Proc {
    child: Child,
    out: BufReader<ChildStdout>,
}

impl Proc {
    fn spawn(args: &[String]) -> Proc {
        let exe = std::env::current_exe().expect("current exe");
        let mut child = Command::new(exe)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn child");
        procs::track(child.id());
        let out = BufReader::new(child.stdout.take().expect("child stdout"));
        Proc { child, out }
    }

    fn line(&mut self) -> String {
        let mut line = String::new();
        self.out.read_line(&mut line).expect("read child stdout");
        line.trim().to_string()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        procs::untrack(self.child.id());
    }
}

fn measure(candidate: &str, run_no: usize, run: &Run, smoke: bool) -> Measured {
    let mut server = Proc::spawn(&["serve".into(), candidate.into()]);
    let line = server.line();
    let port: u16 = line
        .strip_prefix("listening ")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("server said `{line}`"));
    let pid = server.child.id();
    std::thread::sleep(Duration::from_millis(if smoke { 200 } else { 1000 }));
    let before = rss(pid);
    let started = Instant::now();
    let clients = run.clients.max(1);
    let mut procs: Vec<Proc> = (0..clients)
        .map(|j| {
            let n = run.conns / clients + usize::from(j < run.conns % clients);
            // Four source addresses per client: 127.0.0.(2+4j) … (5+4j).
            Proc::spawn(&[
                "client".into(),
                format!("127.0.0.1:{port}"),
                n.to_string(),
                (2 + 4 * j).to_string(),
                "4".into(),
            ])
        })
        .collect();
    let (mut ok, mut errors, mut first_error) = (0, 0, String::new());
    for p in &mut procs {
        // "ready <ok> <errors> <first error>"
        let line = p.line();
        let mut parts = line.splitn(4, ' ');
        assert_eq!(parts.next(), Some("ready"), "client said `{line}`");
        ok += parts
            .next()
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or(0);
        errors += parts
            .next()
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or(0);
        let e = parts.next().unwrap_or("");
        if first_error.is_empty() && !e.is_empty() {
            first_error = e.to_string();
        }
    }
    let setup = started.elapsed();
    let plateau = plateau(pid, if smoke { 3 } else { 30 });
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count());
    drop(procs);
    drop(server);
    Measured {
        candidate: candidate.to_string(),
        run: run_no,
        conns: ok,
        errors,
        first_error,
        before,
        plateau,
        fds,
        setup,
    }
}

/// Samples RSS every 500 ms until two successive samples differ by less than 64 kB (or `max_secs`).
fn plateau(pid: u32, max_secs: u64) -> Rss {
    let deadline = Instant::now() + Duration::from_secs(max_secs);
    let mut last = rss(pid);
    let mut still = 0;
    while Instant::now() < deadline && still < 2 {
        std::thread::sleep(Duration::from_millis(500));
        let now = rss(pid);
        still = if now.total_kb.abs_diff(last.total_kb) < 64 {
            still + 1
        } else {
            0
        };
        last = now;
    }
    last
}

/// Children exit when the parent closes their stdin (or dies).
fn exit_on_stdin_eof() {
    std::thread::spawn(|| {
        let _ = std::io::stdin().read_to_end(&mut Vec::new());
        std::process::exit(0);
    });
}

// ---------------------------------------------------------------------------------------------
// Servers
// ---------------------------------------------------------------------------------------------

fn serve(candidate: &str) {
    procs::raise_nofile();
    exit_on_stdin_eof();
    let candidate = candidate.to_string();
    actix::System::new().block_on(async move {
        // Listen with somaxconn's 4096 (std's listener would use 128).
        let socket = TcpSocket::new_v4().expect("socket");
        socket.set_reuseaddr(true).expect("reuseaddr");
        socket
            .bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
            .expect("bind");
        let listener = socket.listen(4096).expect("listen");
        let port = listener.local_addr().expect("local addr").port();
        println!("listening {port}");
        std::io::stdout().flush().expect("stdout");
        match candidate.as_str() {
            "actix-ws" => actix_ws_server::run(listener.into_std().expect("std listener")).await,
            "tungstenite-4k" => tungstenite_server::run(listener, 4096).await,
            "tungstenite-1k" => tungstenite_server::run(listener, 1024).await,
            "lean" => lean_server::run(listener).await,
            other => panic!("unknown candidate `{other}`"),
        }
    });
}

/// Logs the first accept error and every 1000th after it (at the open-files cap each retry fails
/// again), then backs off briefly.
async fn accept_failed(e: std::io::Error) {
    static FAILED: AtomicU64 = AtomicU64::new(0);
    let n = FAILED.fetch_add(1, Ordering::Relaxed);
    if n % 1000 == 0 {
        eprintln!("accept failed ({} so far): {e}", n + 1);
    }
    tokio::time::sleep(Duration::from_millis(10)).await;
}

mod actix_ws_server {
    use super::*;
    use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};

    /// One actor per connection, owning the actix-ws session and its message stream.
    struct Session {
        session: actix_ws::Session,
    }

    impl Actor for Session {
        type Context = Context<Self>;
    }

    impl StreamHandler<Result<actix_ws::Message, actix_ws::ProtocolError>> for Session {
        fn handle(
            &mut self,
            msg: Result<actix_ws::Message, actix_ws::ProtocolError>,
            ctx: &mut Context<Self>,
        ) {
            let mut session = self.session.clone();
            match msg {
                Ok(actix_ws::Message::Text(text)) => {
                    ctx.spawn(
                        async move {
                            let _ = session.text(text).await;
                        }
                        .into_actor(self),
                    );
                }
                Ok(actix_ws::Message::Ping(p)) => {
                    ctx.spawn(
                        async move {
                            let _ = session.pong(&p).await;
                        }
                        .into_actor(self),
                    );
                }
                Ok(actix_ws::Message::Close(_)) | Err(_) => ctx.stop(),
                Ok(_) => {}
            }
        }
    }

    async fn ws(req: HttpRequest, body: web::Payload) -> Result<HttpResponse, actix_web::Error> {
        let (response, session, stream) = actix_ws::handle_with_protocols(&req, body, &[PROTOCOL])?;
        Session::create(|ctx| {
            ctx.add_stream(stream);
            Session { session }
        });
        Ok(response)
    }

    pub async fn run(listener: std::net::TcpListener) {
        HttpServer::new(|| App::new().route("/ws", web::get().to(ws)))
            .workers(1)
            .max_connections(25_000)
            .backlog(4096)
            .listen(listener)
            .expect("listen")
            .run()
            .await
            .expect("server");
    }
}

mod tungstenite_server {
    use super::*;
    use futures_channel::mpsc;
    use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
    use tokio_tungstenite::tungstenite::http::HeaderValue;
    use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
    use tokio_tungstenite::tungstenite::Message;

    /// The session actor: receives each text frame from the connection's task and sends the echo
    /// back to it.
    struct Session {
        out: mpsc::UnboundedSender<String>,
    }

    impl Actor for Session {
        type Context = Context<Self>;
    }

    /// Sent by the connection task to its session: one text frame arrived.
    #[derive(actix::Message)]
    #[rtype(result = "()")]
    struct TextReceived {
        text: String,
    }

    impl Handler<TextReceived> for Session {
        type Result = ();
        fn handle(&mut self, msg: TextReceived, ctx: &mut Context<Self>) {
            if self.out.unbounded_send(msg.text).is_err() {
                ctx.stop();
            }
        }
    }

    // The callback's error type is tungstenite's `ErrorResponse`, large by its own design.
    #[allow(clippy::result_large_err)]
    async fn connection(stream: TcpStream, read_buffer: usize) {
        let config = WebSocketConfig::default()
            .read_buffer_size(read_buffer)
            .write_buffer_size(0);
        let negotiate = |req: &Request, mut resp: Response| {
            let offered = req
                .headers()
                .get_all("sec-websocket-protocol")
                .iter()
                .filter_map(|v| v.to_str().ok())
                .any(|v| v.split(',').any(|p| p.trim() == PROTOCOL));
            if offered {
                resp.headers_mut()
                    .insert("sec-websocket-protocol", HeaderValue::from_static(PROTOCOL));
            }
            Ok(resp)
        };
        let Ok(mut ws) =
            tokio_tungstenite::accept_hdr_async_with_config(stream, negotiate, Some(config)).await
        else {
            return;
        };
        let (tx, mut rx) = mpsc::unbounded();
        let session = Session::create(|_| Session { out: tx });
        loop {
            tokio::select! {
                msg = ws.next() => match msg {
                    Some(Ok(Message::Text(text))) => session.do_send(TextReceived { text: text.to_string() }),
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return,
                    Some(Ok(_)) => {}
                },
                out = rx.next() => match out {
                    Some(text) => {
                        if ws.send(Message::text(text)).await.is_err() {
                            return;
                        }
                    }
                    None => return,
                },
            }
        }
    }

    pub async fn run(listener: tokio::net::TcpListener, read_buffer: usize) {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    actix::spawn(connection(stream, read_buffer));
                }
                Err(e) => accept_failed(e).await,
            }
        }
    }
}

mod lean_server {
    use super::*;
    use switchboard::transport::{self, Inbound, Limits, Message, Outbound, TransportError};

    /// The session actor owns the connection: its stream of inbound messages and the sending half.
    struct Session {
        out: Outbound,
    }

    impl Actor for Session {
        type Context = Context<Self>;
    }

    impl StreamHandler<Result<Message, TransportError>> for Session {
        fn handle(&mut self, msg: Result<Message, TransportError>, ctx: &mut Context<Self>) {
            match msg {
                Ok(Message::Text(text)) => {
                    if self.out.send_text(&text).is_err() {
                        ctx.stop();
                    }
                }
                Ok(_) => {}
                Err(_) => ctx.stop(),
            }
        }
    }

    async fn connection(stream: TcpStream) {
        let limits = Limits::default();
        let accepted = tokio::time::timeout(
            Duration::from_secs(10),
            transport::accept(stream, &[PROTOCOL], &limits),
        )
        .await;
        if let Ok(Ok((_upgrade, inbound, out))) = accepted {
            let inbound: Inbound = inbound;
            Session::create(|ctx| {
                ctx.add_stream(inbound);
                Session { out }
            });
        }
    }

    pub async fn run(listener: tokio::net::TcpListener) {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    actix::spawn(connection(stream));
                }
                Err(e) => accept_failed(e).await,
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Clients
// ---------------------------------------------------------------------------------------------

/// `client <addr> <count> <first source octet> <source addresses>`: opens `count` connections,
/// reports `ready <ok> <errors> <first error>`, and holds them until stdin closes.
fn client(args: &[String]) {
    procs::raise_nofile();
    let addr: SocketAddr = args[0].parse().expect("server address");
    let count: usize = args[1].parse().expect("count");
    let first: u8 = args[2].parse().expect("first source octet");
    let sources: u8 = args[3].parse().expect("source addresses");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let results: Vec<Result<TcpStream, String>> = rt.block_on(async {
        futures_util::stream::iter(0..count)
            .map(|i| {
                let src = Ipv4Addr::new(127, 0, 0, first + (i % sources as usize) as u8);
                async move {
                    tokio::time::timeout(Duration::from_secs(30), client_connection(addr, src, i))
                        .await
                        .map_err(|_| "timed out".to_string())
                        .and_then(|r| r)
                }
            })
            .buffer_unordered(CLIENT_CONCURRENCY)
            .collect()
            .await
    });
    let ok = results.iter().filter(|r| r.is_ok()).count();
    let first_error = results
        .iter()
        .find_map(|r| r.as_ref().err().cloned())
        .unwrap_or_default();
    println!("ready {ok} {} {first_error}", count - ok);
    std::io::stdout().flush().expect("stdout");
    // Hold every connection open, idle, until the parent closes stdin.
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
    drop(results);
}

async fn client_connection(addr: SocketAddr, src: Ipv4Addr, i: usize) -> Result<TcpStream, String> {
    let err = |what: &'static str| move |e: std::io::Error| format!("{what}: {e}");
    let (stream, mut buf) = raw_ws::upgrade(addr, src, "/ws").await?;
    let text = format!(r#"{{"type":"hello","seq":{i}}}"#);
    let mask = (i as u32).wrapping_mul(2_654_435_761).to_be_bytes();
    write_all(
        &stream,
        &frame::encode(true, Opcode::Text, text.as_bytes(), Some(mask)),
    )
    .await
    .map_err(err("send frame"))?;
    loop {
        if let Some((f, _)) =
            frame::decode(&buf, Role::Client, 1024).map_err(|e| format!("echo: {e}"))?
        {
            if f.opcode != Opcode::Text || f.payload != text.as_bytes() {
                return Err(format!("unexpected echo {f:?}"));
            }
            return Ok(stream);
        }
        read_some(&stream, &mut buf)
            .await
            .map_err(err("read echo"))?;
    }
}
