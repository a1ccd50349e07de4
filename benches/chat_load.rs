//! Live chat against the real `switchboard` binary: memory per idle session, and message round trip
//! through the AI hop.
//!
//! ```text
//! cargo bench --bench chat_load -- memory [--conns 10000] [--runs 3] [--clients 2] [--grace-ms 2000]
//! cargo bench --bench chat_load -- rtt [--sessions 1000] [--secs 20] [--runs 3] [--clients 2]
//! ```
//!
//! Both modes start the `switchboard` binary (jemalloc, release) with a fresh data dir, both
//! listeners on 127.0.0.1 port 0 (the chat port is read from the "switchboard starting" log line),
//! admission control opened wide (`sessions.admission_per_sec` / `admission_burst` 100,000) and the
//! open-files soft limit raised to the machine's 20,000 (inherited). Client processes (the bench
//! re-executed as `client …`, at most 9,500 connections each, four 127.0.0.x source addresses each)
//! open the connections 256 at a time with a raw tokio `TcpStream`, the same lean client as
//! `benches/ws_idle.rs`: a hand-written upgrade to `/ws/chat` with subprotocol `switchboard.v1`,
//! `{"type":"session.start"}`, then `session.started` read back. Every connection answers the
//! server's pings with pongs and counts them.
//!
//! - `memory`: server VmRSS (and `/metrics`' `switchboard_chat_sessions` /
//!   `switchboard_chat_sockets`) before the ramp, at the plateau (two successive 500 ms samples
//!   within 64 kB) and after every client closed and the sessions' resume grace
//!   (`sessions.resume_grace_ms`, `--grace-ms`) ran out: bytes per session = (plateau − before) / N.
//! - `rtt`: a fake Django inside this process (plain tokio HTTP/1.1 on 127.0.0.1 port 0) answers
//!   `POST /api/livechat/ai/respond/` at once with `{"reply":"re: <message>","confidence":0.9,…}`
//!   (anything else: 200 `{}`). Each session sends one `message.send` per second (unique
//!   `client_id`s, phases spread over the second) for `--secs`; the client times send →
//!   `message.ack` and send → the next `message` from `ai` (which answers every message acked before
//!   it; `typing` frames are skipped), then waits up to 5 s for stragglers.
//!
//! Without a mode (as under `cargo test --all-targets`) it runs a smoke version of both (200 idle
//! sessions; 20 sessions for 3 s) that finishes in a few seconds. A watchdog kills every child and
//! exits if anything hangs.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::Value;
use switchboard::transport::frame::{self, Opcode, Role};
use tokio::net::TcpStream;

#[path = "common/raw_ws.rs"]
mod raw_ws;
use raw_ws::{raise_nofile, read_some, watchdog, write_all};

/// The machine's hard cap on open files per process (FINDINGS.md); the soft limit is raised to it.
const NOFILE: u64 = 20_000;
/// Connections a client process opens at once.
const CLIENT_CONCURRENCY: usize = 256;
/// Most connections per client process (each needs a descriptor).
const PER_CLIENT_MAX: usize = 9_500;
/// Server log filter: keeps the "switchboard starting" line, drops the per-session info lines.
const QUIET_LOG: &str = "warn,switchboard=info,switchboard::chat=warn,switchboard::http=warn";
/// Clock ticks per second in /proc/<pid>/stat.
const CLK_TCK: f64 = 100.0;

/// Children still running (server and clients), killed by the watchdog.
static CHILDREN: Mutex<Vec<u32>> = Mutex::new(Vec::new());

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    match args.first().map(String::as_str) {
        Some("client") => client(&args[1..]),
        Some(mode @ ("memory" | "rtt")) => match Opts::parse(mode, &args[1..]) {
            Ok(o) => {
                watchdog(
                    "chat_load",
                    Duration::from_secs(600 + 240 * o.runs as u64),
                    &CHILDREN,
                );
                raise_nofile("chat_load", NOFILE);
                println!("{}", machine());
                if mode == "memory" {
                    memory(&o, false);
                } else {
                    rtt(&o, false);
                }
            }
            Err(e) => {
                eprintln!("{e}\n{USAGE}");
                std::process::exit(2);
            }
        },
        _ => {
            // A test harness ran us (`cargo test --all-targets`): smoke only.
            watchdog("chat_load", Duration::from_secs(120), &CHILDREN);
            raise_nofile("chat_load", NOFILE);
            let o = Opts {
                conns: 200,
                runs: 1,
                clients: 1,
                grace_ms: 500,
                secs: 3,
                malloc_conf: None,
                settle_secs: 1,
            };
            memory(&o, true);
            rtt(&Opts { conns: 20, ..o }, true);
            println!("chat_load smoke run passed (see the file header for real runs)");
        }
    }
}

const USAGE: &str =
    "usage: cargo bench --bench chat_load -- memory|rtt [--conns N | --sessions N] \
[--runs R] [--clients K] [--grace-ms MS] [--secs S]";

#[derive(Clone)]
struct Opts {
    conns: usize,
    runs: usize,
    clients: usize,
    grace_ms: u64,
    secs: u64,
    /// `_RJEM_MALLOC_CONF` for the server (jemalloc options), if any.
    malloc_conf: Option<String>,
    /// How long after the sessions ended to read RSS once more.
    settle_secs: u64,
}

impl Opts {
    fn parse(mode: &str, raw: &[String]) -> Result<Opts, String> {
        let mut o = Opts {
            conns: if mode == "memory" { 10_000 } else { 1_000 },
            runs: 3,
            clients: 2,
            grace_ms: 2_000,
            secs: 20,
            malloc_conf: None,
            settle_secs: 15,
        };
        let mut it = raw.iter();
        while let Some(a) = it.next() {
            let v = it.next().ok_or_else(|| format!("{a} needs a value"))?;
            if a == "--malloc-conf" {
                o.malloc_conf = Some(v.clone());
                continue;
            }
            let n = v
                .replace('_', "")
                .parse::<u64>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| format!("{a}: `{v}` is not a positive integer"))?;
            match a.as_str() {
                "--conns" | "--sessions" => o.conns = n as usize,
                "--runs" => o.runs = n as usize,
                "--clients" => o.clients = n as usize,
                "--grace-ms" => o.grace_ms = n,
                "--secs" => o.secs = n,
                "--settle-secs" => o.settle_secs = n,
                _ => return Err(format!("unknown argument `{a}`")),
            }
        }
        if o.conns.div_ceil(o.clients) > PER_CLIENT_MAX {
            return Err(format!(
                "at most {PER_CLIENT_MAX} connections per client process: raise --clients"
            ));
        }
        Ok(o)
    }
}

fn machine() -> String {
    let mem = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    format!(
        "chat_load: nproc {}; {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        mem.lines().next().unwrap_or("")
    )
}

// ---------------------------------------------------------------------------------------------
// The server
// ---------------------------------------------------------------------------------------------

struct Server {
    child: Child,
    api: SocketAddr,
    chat: SocketAddr,
    warnings: Arc<Mutex<Vec<String>>>,
    _dir: tempfile::TempDir,
}

impl Server {
    fn start(env: &[(&str, String)], malloc_conf: Option<&str>) -> Server {
        let dir = tempfile::tempdir().expect("tempdir for the data dir");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_switchboard"));
        cmd.env_remove("RUST_LOG")
            .env("SWITCHBOARD__LOG__FORMAT", "json")
            .env("SWITCHBOARD__LOG__LEVEL", QUIET_LOG)
            .env("SWITCHBOARD__API__BIND", "127.0.0.1:0")
            .env("SWITCHBOARD__CHAT__BIND", "127.0.0.1:0")
            .env("SWITCHBOARD__STORAGE__DATA_DIR", dir.path())
            .env("SWITCHBOARD__SESSIONS__ADMISSION_PER_SEC", "100000")
            .env("SWITCHBOARD__SESSIONS__ADMISSION_BURST", "100000")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (k, v) in env {
            cmd.env(k, v);
        }
        if let Some(conf) = malloc_conf {
            cmd.env("_RJEM_MALLOC_CONF", conf);
        }
        let mut child = cmd.spawn().expect("spawn the switchboard binary");
        CHILDREN.lock().unwrap().push(child.id());
        let stdout = child.stdout.take().expect("piped stdout");
        let warnings = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let seen = warnings.clone();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let Ok(v) = serde_json::from_str::<Value>(&line) else {
                    continue;
                };
                if v["message"] == "switchboard starting" {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send((
                            v["api"].as_str().unwrap_or_default().to_string(),
                            v["chat"].as_str().unwrap_or_default().to_string(),
                        ));
                    }
                }
                if matches!(v["level"].as_str(), Some("WARN" | "ERROR")) {
                    seen.lock().unwrap().push(line.chars().take(300).collect());
                }
            }
        });
        let (api, chat) = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the server's \"switchboard starting\" line");
        Server {
            api: api.parse().expect("api address"),
            chat: chat.parse().expect("chat address"),
            child,
            warnings,
            _dir: dir,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, then the exit status (killed after 15 s).
    fn stop(mut self) -> String {
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(15);
        let status = loop {
            if let Ok(Some(s)) = self.child.try_wait() {
                break s.to_string();
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                break "killed after 15 s".into();
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        CHILDREN.lock().unwrap().retain(|p| *p != self.child.id());
        status
    }

    fn warnings(&self) -> Vec<String> {
        self.warnings.lock().unwrap().clone()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// User + system CPU seconds of a process so far.
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = after.split_whitespace().collect();
    let t = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // Fields 14 and 15 (utime, stime) are the 12th and 13th after the command name.
    (t(11) + t(12)) / CLK_TCK
}

/// Samples RSS every 500 ms until two successive samples differ by less than 64 kB (or `max`).
fn plateau(pid: u32, max: Duration) -> u64 {
    let deadline = Instant::now() + max;
    let mut last = rss_kb(pid);
    let mut still = 0;
    while Instant::now() < deadline && still < 2 {
        std::thread::sleep(Duration::from_millis(500));
        let now = rss_kb(pid);
        still = if now.abs_diff(last) < 64 {
            still + 1
        } else {
            0
        };
        last = now;
    }
    last
}

/// `switchboard_chat_sessions` and `switchboard_chat_sockets` from the API's `/metrics`.
fn chat_gauges(api: SocketAddr) -> (i64, i64) {
    let text = http_get(api, "/metrics").unwrap_or_default();
    if text.is_empty() {
        return (-1, -1);
    }
    let gauge = |name: &str| {
        text.lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            // Absent (never set yet, e.g. before the first session) reads as 0.
            .map_or(0, |v| v as i64)
    };
    (
        gauge("switchboard_chat_sessions"),
        gauge("switchboard_chat_sockets"),
    )
}

/// One blocking HTTP/1.1 GET; the body.
fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<String> {
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out
        .split_once("\r\n\r\n")
        .map_or(String::new(), |(_, b)| b.to_string()))
}

// ---------------------------------------------------------------------------------------------
// Client processes, as seen from the measuring process
// ---------------------------------------------------------------------------------------------

struct ClientProc {
    child: Child,
    stdin: Option<ChildStdin>,
    out: BufReader<ChildStdout>,
}

impl ClientProc {
    fn spawn(args: Vec<String>) -> ClientProc {
        let exe = std::env::current_exe().expect("current exe");
        let mut child = Command::new(exe)
            .arg("client")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn a client");
        CHILDREN.lock().unwrap().push(child.id());
        let stdin = child.stdin.take();
        let out = BufReader::new(child.stdout.take().expect("client stdout"));
        ClientProc { child, stdin, out }
    }

    fn line(&mut self) -> String {
        let mut line = String::new();
        self.out.read_line(&mut line).expect("read client stdout");
        line.trim().to_string()
    }

    fn say(&mut self, what: &str) {
        if let Some(s) = self.stdin.as_mut() {
            let _ = writeln!(s, "{what}");
            let _ = s.flush();
        }
    }
}

impl Drop for ClientProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        CHILDREN.lock().unwrap().retain(|p| *p != self.child.id());
    }
}

/// Starts `clients` processes sharing `conns` connections; `extra` follows the common arguments.
fn spawn_clients(
    chat: SocketAddr,
    conns: usize,
    clients: usize,
    extra: &[String],
) -> Vec<ClientProc> {
    (0..clients)
        .map(|j| {
            let n = conns / clients + usize::from(j < conns % clients);
            let mut args = vec![
                chat.to_string(),
                n.to_string(),
                // Four source addresses per client: 127.0.0.(2+4j) … (5+4j).
                (2 + 4 * j).to_string(),
                "4".into(),
            ];
            args.extend_from_slice(extra);
            ClientProc::spawn(args)
        })
        .collect()
}

/// Reads every client's `ready <ok> <failed> <first error>`; sums them.
fn await_ready(procs: &mut [ClientProc]) -> (usize, usize, String) {
    let (mut ok, mut failed, mut first) = (0, 0, String::new());
    for p in procs.iter_mut() {
        let line = p.line();
        let mut parts = line.splitn(4, ' ');
        assert_eq!(parts.next(), Some("ready"), "client said `{line}`");
        ok += parts.next().and_then(|v| v.parse().ok()).unwrap_or(0usize);
        failed += parts.next().and_then(|v| v.parse().ok()).unwrap_or(0usize);
        let e = parts.next().unwrap_or("");
        if first.is_empty() && !e.is_empty() {
            first = e.to_string();
        }
    }
    (ok, failed, first)
}

// ---------------------------------------------------------------------------------------------
// memory
// ---------------------------------------------------------------------------------------------

struct MemRun {
    run: usize,
    sessions: usize,
    failed: usize,
    first_error: String,
    before_kb: u64,
    plateau_kb: u64,
    after_kb: u64,
    settled_kb: u64,
    gauges: [(i64, i64); 3],
    setup: Duration,
    drained: Duration,
    pings: u64,
    held: Duration,
    warnings: usize,
    exit: String,
}

fn memory(o: &Opts, smoke: bool) {
    let mut results = Vec::new();
    for run in 1..=o.runs {
        let server = Server::start(
            &[(
                "SWITCHBOARD__SESSIONS__RESUME_GRACE_MS",
                o.grace_ms.to_string(),
            )],
            o.malloc_conf.as_deref(),
        );
        let pid = server.pid();
        std::thread::sleep(Duration::from_millis(if smoke { 300 } else { 2000 }));
        let g0 = chat_gauges(server.api);
        let before_kb = rss_kb(pid);
        let started = Instant::now();
        let mut procs = spawn_clients(server.chat, o.conns, o.clients, &["idle".into()]);
        let (ok, failed, first_error) = await_ready(&mut procs);
        let setup = started.elapsed();
        let ready_at = Instant::now();
        let plateau_kb = plateau(pid, Duration::from_secs(if smoke { 3 } else { 30 }));
        let g1 = chat_gauges(server.api);
        // Close every connection: each client reports the pings it saw, then exits.
        let held = ready_at.elapsed();
        let mut pings = 0u64;
        for p in &mut procs {
            p.stdin = None;
        }
        for p in &mut procs {
            // "done <pings> <held ms>"
            let line = p.line();
            let mut parts = line.split(' ');
            assert_eq!(parts.next(), Some("done"), "client said `{line}`");
            pings += parts.next().and_then(|v| v.parse().ok()).unwrap_or(0u64);
        }
        drop(procs);
        let closed_at = Instant::now();
        // Wait for every session to outlive its grace and end (the registry checks each second).
        let deadline = closed_at + Duration::from_millis(o.grace_ms) + Duration::from_secs(30);
        let mut g2 = chat_gauges(server.api);
        while (g2.0 != 0 || g2.1 != 0) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(250));
            g2 = chat_gauges(server.api);
        }
        let drained = closed_at.elapsed();
        let after_kb = plateau(pid, Duration::from_secs(if smoke { 3 } else { 15 }));
        std::thread::sleep(Duration::from_secs(o.settle_secs));
        let settled_kb = rss_kb(pid);
        let warnings = server.warnings();
        let exit = server.stop();
        let r = MemRun {
            run,
            sessions: ok,
            failed,
            first_error,
            before_kb,
            plateau_kb,
            after_kb,
            settled_kb,
            gauges: [g0, g1, g2],
            setup,
            drained,
            pings,
            held,
            warnings: warnings.len(),
            exit,
        };
        println!(
            "memory run {run}: {} sessions, {} failed; RSS {} → {} → {} kB ({} kB {} s later); {:.0} B/session; \
             after/before {:.2}; sessions/sockets {:?} → {:?} → {:?}; connected in {:.1} s, \
             drained in {:.1} s; {} pings seen, {:.0} s held after ready ({:.2} per session per s); \
             server warnings {}; exit {}",
            r.sessions,
            r.failed,
            r.before_kb,
            r.plateau_kb,
            r.after_kb,
            r.settled_kb,
            o.settle_secs,
            per_session(&r),
            r.after_kb as f64 / r.before_kb.max(1) as f64,
            g0,
            g1,
            g2,
            r.setup.as_secs_f64(),
            r.drained.as_secs_f64(),
            r.pings,
            r.held.as_secs_f64(),
            r.pings as f64 / r.sessions.max(1) as f64 / r.held.as_secs_f64().max(0.001),
            r.warnings,
            r.exit
        );
        if !r.first_error.is_empty() {
            println!("  first error: {}", r.first_error);
        }
        for w in warnings.iter().take(3) {
            println!("  server: {w}");
        }
        results.push(r);
    }
    if smoke {
        for r in &results {
            assert!(
                r.sessions == o.conns && r.failed == 0,
                "{} of {} sessions started; first error: {}",
                r.sessions,
                o.conns,
                r.first_error
            );
            assert_eq!(
                r.gauges[1],
                (o.conns as i64, o.conns as i64),
                "gauges at the plateau"
            );
            assert_eq!(r.gauges[2], (0, 0), "every session ended after its grace");
        }
        return;
    }
    println!("\n| run | sessions | failed | RSS before | at plateau | after grace | settled | bytes per session | after ÷ before | sessions/sockets before → plateau → after |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for r in &results {
        println!(
            "| {} | {} | {} | {:.1} MiB | {:.1} MiB | {:.1} MiB | {:.1} MiB | {:.0} B | {:.2} | {}/{} → {}/{} → {}/{} |",
            r.run,
            r.sessions,
            r.failed,
            r.before_kb as f64 / 1024.0,
            r.plateau_kb as f64 / 1024.0,
            r.after_kb as f64 / 1024.0,
            r.settled_kb as f64 / 1024.0,
            per_session(r),
            r.after_kb as f64 / r.before_kb.max(1) as f64,
            r.gauges[0].0,
            r.gauges[0].1,
            r.gauges[1].0,
            r.gauges[1].1,
            r.gauges[2].0,
            r.gauges[2].1
        );
    }
}

fn per_session(r: &MemRun) -> f64 {
    (r.plateau_kb as f64 - r.before_kb as f64) * 1024.0 / r.sessions.max(1) as f64
}

// ---------------------------------------------------------------------------------------------
// rtt, and the fake Django it needs
// ---------------------------------------------------------------------------------------------

/// Starts the fake Django on its own thread; its address.
fn fake_django() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the fake Django");
    let addr = listener.local_addr().expect("fake Django address");
    listener.set_nonblocking(true).expect("nonblocking");
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
            loop {
                if let Ok((s, _)) = listener.accept().await {
                    tokio::spawn(django_conn(s));
                }
            }
        });
    });
    addr
}

/// One keep-alive connection of the fake Django: Content-Length framing, answers at once.
async fn django_conn(stream: TcpStream) {
    let mut buf = Vec::new();
    loop {
        let head_len = loop {
            if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break p + 4;
            }
            if read_some(&stream, &mut buf).await.is_err() {
                return;
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_len]).to_string();
        let len = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse::<usize>().ok())
                    .flatten()
            })
            .unwrap_or(0);
        while buf.len() < head_len + len {
            if read_some(&stream, &mut buf).await.is_err() {
                return;
            }
        }
        let body: Vec<u8> = buf.drain(..head_len + len).skip(head_len).collect();
        let path = head.split_whitespace().nth(1).unwrap_or("");
        let reply = if path == "/api/livechat/ai/respond/" {
            let message = serde_json::from_slice::<Value>(&body)
                .ok()
                .and_then(|v| v["message"].as_str().map(str::to_string))
                .unwrap_or_default();
            serde_json::json!({
                "reply": format!("re: {message}"),
                "confidence": 0.9,
                "handoff": false,
                "suggested_actions": []
            })
            .to_string()
        } else {
            "{}".to_string()
        };
        let resp = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{reply}",
            reply.len()
        );
        if write_all(&stream, resp.as_bytes()).await.is_err() {
            return;
        }
    }
}

#[derive(Default)]
struct RttTotals {
    sent: u64,
    acked: u64,
    answered: u64,
    fallback: u64,
    errors: u64,
    dropped: u64,
    pings: u64,
    ack_us: Vec<u64>,
    ai_us: Vec<u64>,
}

fn rtt(o: &Opts, smoke: bool) {
    let django = fake_django();
    let mut rows = Vec::new();
    for run in 1..=o.runs {
        let server = Server::start(
            &[("SWITCHBOARD__DJANGO__BASE_URL", format!("http://{django}"))],
            o.malloc_conf.as_deref(),
        );
        let pid = server.pid();
        std::thread::sleep(Duration::from_millis(if smoke { 300 } else { 1000 }));
        let mut procs = spawn_clients(
            server.chat,
            o.conns,
            o.clients,
            &["chat".into(), o.secs.to_string()],
        );
        let (ok, failed, first_error) = await_ready(&mut procs);
        let cpu0 = cpu_secs(pid);
        let t0 = Instant::now();
        for p in &mut procs {
            p.say("go");
        }
        let mut t = RttTotals::default();
        for p in &mut procs {
            // "result sent acked answered fallback errors dropped pings", then "ack …", "ai …"
            let line = p.line();
            let f: Vec<u64> = line
                .split(' ')
                .skip(1)
                .map(|v| v.parse().unwrap_or(0))
                .collect();
            assert!(
                line.starts_with("result ") && f.len() == 7,
                "client said `{line}`"
            );
            t.sent += f[0];
            t.acked += f[1];
            t.answered += f[2];
            t.fallback += f[3];
            t.errors += f[4];
            t.dropped += f[5];
            t.pings += f[6];
            for into in [&mut t.ack_us, &mut t.ai_us] {
                let line = p.line();
                into.extend(
                    line.split(' ')
                        .skip(1)
                        .filter_map(|v| v.parse::<u64>().ok()),
                );
            }
        }
        let wall = t0.elapsed().as_secs_f64();
        let cpu = (cpu_secs(pid) - cpu0) / wall * 100.0;
        let peak_kb = rss_kb(pid);
        drop(procs);
        let warnings = server.warnings();
        let exit = server.stop();
        t.ack_us.sort_unstable();
        t.ai_us.sort_unstable();
        let lost = t.sent - t.answered - t.fallback;
        println!(
            "rtt run {run}: {ok} sessions ({failed} failed to start), {} s; sent {} acked {} \
             answered by ai {} by system {} lost {}; error frames {}; connections dropped {}; \
             pings {}; server CPU {cpu:.0} % over {wall:.1} s; server RSS {} kB; warnings {}; exit {exit}",
            o.secs,
            t.sent,
            t.acked,
            t.answered,
            t.fallback,
            lost,
            t.errors,
            t.dropped,
            t.pings,
            peak_kb,
            warnings.len()
        );
        println!("  ack: {}", summary(&t.ack_us));
        println!("  ai:  {}", summary(&t.ai_us));
        if !first_error.is_empty() {
            println!("  first connection error: {first_error}");
        }
        for w in warnings.iter().take(3) {
            println!("  server: {w}");
        }
        if smoke {
            assert!(
                ok == o.conns && failed == 0,
                "sessions: {ok} of {}; {first_error}",
                o.conns
            );
            assert!(
                t.sent > 0 && t.acked == t.sent,
                "every message acked: {} of {}",
                t.acked,
                t.sent
            );
            assert_eq!(t.answered, t.sent, "every message answered by the AI");
        }
        rows.push((run, ok, failed, t, lost, cpu));
    }
    if smoke {
        return;
    }
    println!("\n| run | sessions | sent | acked | AI answered | system | lost | conn. failures | ack p50 | p95 | p99 | p99.9 | max | AI reply p50 | p95 | p99 | p99.9 | max | server CPU |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for (run, ok, failed, t, lost, cpu) in &rows {
        let a = pcts(&t.ack_us);
        let b = pcts(&t.ai_us);
        println!(
            "| {run} | {ok} | {} | {} | {} | {} | {lost} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {cpu:.0} % |",
            t.sent,
            t.acked,
            t.answered,
            t.fallback,
            failed + t.dropped as usize,
            ms(a[0]),
            ms(a[1]),
            ms(a[2]),
            ms(a[3]),
            ms(a[4]),
            ms(b[0]),
            ms(b[1]),
            ms(b[2]),
            ms(b[3]),
            ms(b[4])
        );
    }
}

/// p50, p95, p99, p99.9, max of sorted microseconds.
fn pcts(sorted: &[u64]) -> [u64; 5] {
    if sorted.is_empty() {
        return [0; 5];
    }
    let at =
        |q: f64| sorted[((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1];
    [
        at(0.50),
        at(0.95),
        at(0.99),
        at(0.999),
        *sorted.last().unwrap(),
    ]
}

fn ms(us: u64) -> String {
    format!("{:.2} ms", us as f64 / 1000.0)
}

fn summary(sorted: &[u64]) -> String {
    let p = pcts(sorted);
    format!(
        "n {} p50 {} p95 {} p99 {} p99.9 {} max {}",
        sorted.len(),
        ms(p[0]),
        ms(p[1]),
        ms(p[2]),
        ms(p[3]),
        ms(p[4])
    )
}

// ---------------------------------------------------------------------------------------------
// Clients
// ---------------------------------------------------------------------------------------------

/// `client <addr> <count> <first source octet> <source addresses> idle|chat [secs]`.
///
/// Opens `count` sessions and reports `ready <ok> <failed> <first error>`. `idle`: holds them,
/// answering pings, until stdin closes, then reports `done <pings>`. `chat`: waits for `go` on
/// stdin, has every session send one message a second for `secs`, and reports `result …`, then the
/// ack and AI-reply latencies in microseconds (`ack …`, `ai …`).
fn client(args: &[String]) {
    raise_nofile("chat_load", NOFILE);
    let addr: SocketAddr = args[0].parse().expect("server address");
    let count: usize = args[1].parse().expect("count");
    let first: u8 = args[2].parse().expect("first source octet");
    let sources: u8 = args[3].parse().expect("source addresses");
    let mode = args[4].clone();
    let secs: u64 = args.get(5).and_then(|v| v.parse().ok()).unwrap_or(0);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let results: Vec<Result<Conn, String>> = futures_util::stream::iter(0..count)
            .map(|i| {
                let src = Ipv4Addr::new(127, 0, 0, first + (i % sources as usize) as u8);
                async move {
                    tokio::time::timeout(Duration::from_secs(30), open_session(addr, src))
                        .await
                        .map_err(|_| "timed out".to_string())
                        .and_then(|r| r)
                }
            })
            .buffer_unordered(CLIENT_CONCURRENCY)
            .collect()
            .await;
        let ok = results.iter().filter(|r| r.is_ok()).count();
        let first_error = results
            .iter()
            .find_map(|r| r.as_ref().err().cloned())
            .unwrap_or_default();
        println!("ready {ok} {} {first_error}", count - ok);
        std::io::stdout().flush().expect("stdout");
        let conns: Vec<Conn> = results.into_iter().filter_map(Result::ok).collect();
        // Stdin, line by line, from a thread: "go", then end of file.
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
        std::thread::spawn(move || {
            for line in std::io::stdin().lock().lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        if mode == "idle" {
            let stats = Arc::new(Mutex::new(ConnStats::default()));
            let tasks: Vec<_> = conns
                .into_iter()
                .map(|c| tokio::spawn(idle(c, stats.clone())))
                .collect();
            while rx.recv().await.is_some() {}
            for t in &tasks {
                t.abort();
            }
            let pings = stats.lock().unwrap().pings;
            println!("done {pings}");
        } else {
            while let Some(line) = rx.recv().await {
                if line == "go" {
                    break;
                }
            }
            let stats = Arc::new(Mutex::new(ConnStats::default()));
            let n = conns.len().max(1);
            let start = tokio::time::Instant::now() + Duration::from_millis(100);
            let tasks: Vec<_> = conns
                .into_iter()
                .enumerate()
                .map(|(i, c)| {
                    // Phases spread over the second, so the load is smooth.
                    let phase = Duration::from_micros((i as u64 * 1_000_000) / n as u64);
                    tokio::spawn(chat(c, i, start + phase, secs, stats.clone()))
                })
                .collect();
            let mut kept = Vec::new();
            for t in tasks {
                if let Ok(c) = t.await {
                    kept.push(c);
                }
            }
            {
                let s = stats.lock().unwrap();
                println!(
                    "result {} {} {} {} {} {} {}",
                    s.sent, s.acked, s.answered, s.fallback, s.errors, s.dropped, s.pings
                );
                let join = |v: &[u64]| v.iter().map(u64::to_string).collect::<Vec<_>>().join(" ");
                println!("ack {}", join(&s.ack_us));
                println!("ai {}", join(&s.ai_us));
                std::io::stdout().flush().expect("stdout");
            }
            // Hold the connections until the parent is done with us.
            while rx.recv().await.is_some() {}
        }
    });
}

#[derive(Default)]
struct ConnStats {
    pings: u64,
    sent: u64,
    acked: u64,
    answered: u64,
    fallback: u64,
    errors: u64,
    dropped: u64,
    ack_us: Vec<u64>,
    ai_us: Vec<u64>,
}

/// An open session: the socket and any bytes read past `session.started`.
struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

async fn open_session(addr: SocketAddr, src: Ipv4Addr) -> Result<Conn, String> {
    let err = |what: &'static str| move |e: std::io::Error| format!("{what}: {e}");
    let (stream, buf) = raw_ws::upgrade(addr, src, "/ws/chat").await?;
    let mut conn = Conn { stream, buf };
    send_text(&conn.stream, r#"{"type":"session.start"}"#)
        .await
        .map_err(err("send session.start"))?;
    loop {
        match next_frame(&mut conn).await? {
            Frame::Text(v) if v["type"] == "session.started" => return Ok(conn),
            Frame::Text(v) => return Err(format!("expected session.started, got {v}")),
            Frame::Ping => {}
        }
    }
}

enum Frame {
    Text(Value),
    Ping,
}

/// The next text frame (pings are answered and reported; pongs skipped); `Err` when the
/// connection ends or breaks.
async fn next_frame(conn: &mut Conn) -> Result<Frame, String> {
    loop {
        if let Some((f, used)) =
            frame::decode(&conn.buf, Role::Client, 1 << 20).map_err(|e| format!("frame: {e}"))?
        {
            conn.buf.drain(..used);
            match f.opcode {
                Opcode::Text => {
                    return serde_json::from_slice(&f.payload)
                        .map(Frame::Text)
                        .map_err(|e| format!("not JSON: {e}"))
                }
                Opcode::Ping => {
                    write_all(
                        &conn.stream,
                        &frame::encode(true, Opcode::Pong, &f.payload, Some(mask())),
                    )
                    .await
                    .map_err(|e| format!("pong: {e}"))?;
                    return Ok(Frame::Ping);
                }
                Opcode::Close => {
                    let code = f
                        .payload
                        .get(..2)
                        .map_or(1005, |c| u16::from_be_bytes([c[0], c[1]]));
                    return Err(format!("closed by the server ({code})"));
                }
                _ => {}
            }
            continue;
        }
        read_some(&conn.stream, &mut conn.buf)
            .await
            .map_err(|e| format!("read: {e}"))?;
    }
}

fn mask() -> [u8; 4] {
    rand::random()
}

async fn send_text(stream: &TcpStream, text: &str) -> std::io::Result<()> {
    write_all(
        stream,
        &frame::encode(true, Opcode::Text, text.as_bytes(), Some(mask())),
    )
    .await
}

/// An idle session: answers pings until aborted.
async fn idle(mut conn: Conn, stats: Arc<Mutex<ConnStats>>) {
    while let Ok(f) = next_frame(&mut conn).await {
        if let Frame::Ping = f {
            stats.lock().unwrap().pings += 1;
        }
    }
}

/// A chatting session: one message a second from `start` for `secs`, then up to 5 s for the last
/// answers.
async fn chat(
    mut conn: Conn,
    i: usize,
    start: tokio::time::Instant,
    secs: u64,
    stats: Arc<Mutex<ConnStats>>,
) -> Conn {
    let mut s = ConnStats::default();
    // Sent messages: index k → when; acks and answers mark them.
    let mut sent_at: Vec<Instant> = Vec::new();
    let mut acked: Vec<bool> = Vec::new();
    let mut unanswered: VecDeque<usize> = VecDeque::new();
    let total = secs as usize;
    let mut next = start;
    let end = start + Duration::from_secs(secs) + Duration::from_secs(5);
    loop {
        let all_sent = sent_at.len() == total;
        if all_sent && unanswered.is_empty() && acked.iter().all(|a| *a) {
            break;
        }
        let wake = if all_sent { end } else { next };
        tokio::select! {
            _ = tokio::time::sleep_until(wake) => {
                if all_sent {
                    break;
                }
                let k = sent_at.len();
                let text = format!(
                    r#"{{"type":"message.send","client_id":"c{i}-{k}","text":"question {k} from {i}"}}"#
                );
                sent_at.push(Instant::now());
                acked.push(false);
                unanswered.push_back(k);
                if send_text(&conn.stream, &text).await.is_err() {
                    s.dropped += 1;
                    break;
                }
                s.sent += 1;
                next += Duration::from_secs(1);
            }
            f = next_frame(&mut conn) => match f {
                Ok(Frame::Ping) => s.pings += 1,
                Ok(Frame::Text(v)) => {
                    let now = Instant::now();
                    match v["type"].as_str().unwrap_or("") {
                        "message.ack" => {
                            let k = v["client_id"]
                                .as_str()
                                .and_then(|c| c.rsplit_once('-'))
                                .and_then(|(_, k)| k.parse::<usize>().ok());
                            if let Some(k) = k.filter(|k| *k < acked.len() && !acked[*k]) {
                                acked[k] = true;
                                s.acked += 1;
                                s.ack_us.push(now.duration_since(sent_at[k]).as_micros() as u64);
                            }
                        }
                        "message" => {
                            // An answer covers every message acked before it.
                            let from_ai = v["from"] == "ai";
                            while let Some(&k) = unanswered.front() {
                                if !acked[k] {
                                    break;
                                }
                                unanswered.pop_front();
                                if from_ai {
                                    s.answered += 1;
                                    s.ai_us.push(now.duration_since(sent_at[k]).as_micros() as u64);
                                } else {
                                    s.fallback += 1;
                                }
                            }
                        }
                        "error" => s.errors += 1,
                        _ => {}
                    }
                }
                Err(_) => {
                    s.dropped += 1;
                    break;
                }
            },
        }
    }
    let mut t = stats.lock().unwrap();
    t.pings += s.pings;
    t.sent += s.sent;
    t.acked += s.acked;
    t.answered += s.answered;
    t.fallback += s.fallback;
    t.errors += s.errors;
    t.dropped += s.dropped;
    t.ack_us.extend(s.ack_us);
    t.ai_us.extend(s.ai_us);
    drop(t);
    // The caller keeps the socket open (idle) until the process exits.
    conn
}
