//! Load tool: runs the real `switchboard` binary on a loopback ephemeral port with a fresh data dir and
//! drives it over many concurrent keep-alive HTTP/1.1 connections.
//!
//! ```text
//! cargo bench --bench ticket_load -- creates --conns 64 --secs 10
//! cargo bench --bench ticket_load -- updates --tickets 10000 --conns 64 --secs 10 [--sync normal]
//! cargo bench --bench ticket_load -- memory --tickets 100000 [--hibernate-after MS]
//! cargo bench --bench ticket_load -- flat --tickets 1000000 [--activate] [--scrape] [--sample-every N]
//! ```
//!
//! Common flags: `--sync full|normal` (storage.synchronous, default full), `--client-threads K`
//! (client event-loop threads, default 1), `--log FILTER` (server log filter; the default keeps the
//! per-request log off but still prints the "switchboard starting" line the tool reads the port from).
//!
//! Without a mode (as under `cargo test --benches` / `--all-targets`) or with `--test`, it runs a
//! smoke version that finishes in a few seconds. Every phase is bounded by time or count, a watchdog
//! kills the server and exits if anything hangs, and the server gets SIGTERM at the end.
//!
//! The client is a minimal HTTP/1.1 client (one request in flight per connection, Content-Length
//! framing) on current-thread tokio runtimes, to leave as much CPU as possible to the server: client
//! and server share the machine, so every figure is a lower bound for the server alone.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Server log filter: "switchboard starting" (INFO, target `switchboard`) stays on; the per-request
/// log (INFO, target `switchboard::http`) is off.
const QUIET_LOG: &str = "warn,switchboard=info,switchboard::http=warn";
/// Longest a single request may take before it counts as an error.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Clock ticks per second in /proc/<pid>/stat (USER_HZ; 100 on Linux).
const CLK_TCK: f64 = 100.0;

/// The server's pid, for the watchdog.
static SERVER_PID: AtomicU32 = AtomicU32::new(0);

// ---------------------------------------------------------------------------------------------
// Command line
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Smoke,
    Creates,
    Updates,
    Memory,
    Flat,
}

#[derive(Debug, Clone)]
struct Args {
    mode: Mode,
    conns: usize,
    secs: u64,
    tickets: Option<usize>,
    sync: String,
    client_threads: usize,
    log: String,
    activate: bool,
    scrape: bool,
    /// Offered load in requests/s (open loop, spread evenly over the connections); none: closed loop.
    rate: Option<u64>,
    sample_every: usize,
    /// `tickets.hibernate_after_ms` for the memory mode (0: off); none: the server's default.
    hibernate_after: Option<u64>,
    /// The arguments as given after `--`, for the report.
    line: String,
}

const USAGE: &str = "usage: cargo bench --bench ticket_load -- <creates|updates|memory|flat> \
[--conns N] [--secs S] [--tickets N] [--sync full|normal] [--client-threads K] [--log FILTER] \
[--rate R] [--activate] [--scrape] [--sample-every N] [--hibernate-after MS]";

fn parse_args() -> Result<Args, String> {
    let raw: Vec<String> = std::env::args().skip(1).collect();
    let mut args = Args {
        mode: Mode::Smoke,
        conns: 64,
        secs: 10,
        tickets: None,
        sync: "full".into(),
        client_threads: 1,
        log: QUIET_LOG.into(),
        activate: false,
        scrape: false,
        rate: None,
        sample_every: 100_000,
        hibernate_after: None,
        line: raw
            .iter()
            .filter(|a| *a != "--bench")
            .cloned()
            .collect::<Vec<_>>()
            .join(" "),
    };
    let mut mode = None;
    let mut it = raw.iter();
    let mut unknown = Vec::new();
    while let Some(a) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{name} needs a value\n{USAGE}"))
        };
        let number = |name: &str, v: String| {
            v.replace('_', "")
                .parse::<u64>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| format!("{name}: `{v}` is not a positive integer"))
        };
        match a.as_str() {
            "--bench" => {}
            "--test" => return Ok(args),
            "--conns" => args.conns = number(a, value(a)?)? as usize,
            "--secs" => args.secs = number(a, value(a)?)?,
            "--tickets" => args.tickets = Some(number(a, value(a)?)? as usize),
            "--client-threads" => args.client_threads = number(a, value(a)?)? as usize,
            "--sample-every" => args.sample_every = number(a, value(a)?)? as usize,
            "--log" => args.log = value(a)?,
            "--activate" => args.activate = true,
            "--scrape" => args.scrape = true,
            "--rate" => args.rate = Some(number(a, value(a)?)?),
            "--hibernate-after" => {
                let v = value(a)?;
                args.hibernate_after = Some(
                    v.parse()
                        .map_err(|_| format!("--hibernate-after: `{v}` is not a number"))?,
                );
            }
            "--sync" => {
                let v = value(a)?;
                if v != "full" && v != "normal" {
                    return Err(format!("--sync: `{v}` is not full or normal"));
                }
                args.sync = v;
            }
            "creates" if mode.is_none() => mode = Some(Mode::Creates),
            "updates" if mode.is_none() => mode = Some(Mode::Updates),
            "memory" if mode.is_none() => mode = Some(Mode::Memory),
            "flat" if mode.is_none() => mode = Some(Mode::Flat),
            other => unknown.push(other.to_string()),
        }
    }
    match mode {
        // No mode: a test harness (`cargo test --benches`, which may pass a test-name filter) ran us;
        // whatever else it passed is ignored.
        None => {
            if !unknown.is_empty() {
                eprintln!("ticket_load: no mode in {unknown:?}; running the smoke test\n{USAGE}");
            }
            Ok(args)
        }
        Some(m) if unknown.is_empty() => {
            args.mode = m;
            Ok(args)
        }
        Some(_) => Err(format!("unknown arguments {unknown:?}\n{USAGE}")),
    }
}

// ---------------------------------------------------------------------------------------------
// The server process
// ---------------------------------------------------------------------------------------------

/// Warnings and errors the server logged, to report alongside the figures.
#[derive(Default)]
struct LogTally {
    warn: u64,
    error: u64,
    info: u64,
    samples: Vec<String>,
}

struct Server {
    child: Child,
    addr: SocketAddr,
    dir: tempfile::TempDir,
    log: Arc<Mutex<LogTally>>,
}

impl Server {
    fn start(args: &Args, env: &[(&str, String)]) -> Server {
        let dir = tempfile::tempdir().expect("tempdir for the data dir");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_switchboard"));
        cmd.env_remove("RUST_LOG")
            .env("SWITCHBOARD__LOG__FORMAT", "json")
            .env("SWITCHBOARD__LOG__LEVEL", &args.log)
            .env("SWITCHBOARD__API__BIND", "127.0.0.1:0")
            .env("SWITCHBOARD__CHAT__BIND", "127.0.0.1:0")
            .env("SWITCHBOARD__STORAGE__DATA_DIR", dir.path())
            .env("SWITCHBOARD__STORAGE__SYNCHRONOUS", &args.sync)
            .env("SWITCHBOARD__TESTING__FAULT_INJECTION", "true")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn the switchboard binary");
        SERVER_PID.store(child.id(), Ordering::SeqCst);
        let stdout = child.stdout.take().expect("piped stdout");
        let log = Arc::new(Mutex::new(LogTally::default()));
        let (tx, rx) = std::sync::mpsc::channel();
        let tally = log.clone();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let Ok(v) = serde_json::from_str::<Value>(&line) else {
                    continue;
                };
                if v["message"] == "switchboard starting" {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(v["api"].as_str().unwrap_or_default().to_string());
                    }
                }
                let mut t = tally.lock().unwrap();
                match v["level"].as_str().unwrap_or("") {
                    "WARN" => t.warn += 1,
                    "ERROR" => t.error += 1,
                    _ => {
                        t.info += 1;
                        continue;
                    }
                }
                if t.samples.len() < 5 {
                    t.samples.push(line.chars().take(400).collect());
                }
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(a) => a,
            Err(_) => {
                let _ = child.kill();
                panic!("the server did not log its address within 30 s");
            }
        };
        let addr: SocketAddr = addr.parse().expect("a socket address in the log");
        Server {
            child,
            addr,
            dir,
            log,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident set size in bytes (VmRSS).
    fn rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("read /proc/<pid>/status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kib| kib * 1024)
            .expect("VmRSS in /proc/<pid>/status")
    }

    fn cpu_ticks(&self) -> u64 {
        cpu_ticks(&format!("/proc/{}/stat", self.pid()))
    }

    /// Bytes the server caused to be written to storage (`write_bytes` in /proc/<pid>/io).
    fn disk_written(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/io", self.pid()))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("write_bytes:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    }

    /// CPU ticks per server thread, keyed `name/tid` (names are truncated to 15 bytes by Linux).
    fn thread_ticks(&self) -> BTreeMap<String, u64> {
        let mut out = BTreeMap::new();
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{}/task", self.pid())) else {
            return out;
        };
        for task in tasks.filter_map(Result::ok) {
            let path = task.path();
            let name = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
            let ticks = cpu_ticks(&path.join("stat").to_string_lossy());
            let tid = task.file_name().to_string_lossy().into_owned();
            out.insert(format!("{}/{tid}", name.trim()), ticks);
        }
        out
    }

    /// Bytes on disk of everything in the data dir (database, WAL, shared memory).
    fn db_bytes(&self) -> u64 {
        dir_bytes(self.dir.path())
    }

    /// Sends SIGTERM and waits (up to 60 s, then SIGKILL).
    fn stop(mut self) -> ExitStatus {
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                SERVER_PID.store(0, Ordering::SeqCst);
                return status;
            }
            if Instant::now() > deadline {
                eprintln!("server ignored SIGTERM for 60 s; killing it");
                let _ = self.child.kill();
                let status = self.child.wait().expect("wait for the killed server");
                SERVER_PID.store(0, Ordering::SeqCst);
                return status;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log_summary(&self) -> String {
        let t = self.log.lock().unwrap();
        let mut s = format!("server log: {} warnings, {} errors", t.warn, t.error);
        for sample in &t.samples {
            s.push_str("\n    ");
            s.push_str(sample);
        }
        s
    }

    fn live(&self) -> u64 {
        let (status, body) = request_once(self.addr, "GET", "/api/v1/debug/tickets/live", None);
        assert_eq!(status, 200, "GET /api/v1/debug/tickets/live: {body}");
        serde_json::from_str::<Value>(&body).expect("json")["live"]
            .as_u64()
            .expect("live count")
    }

    fn passivate_all(&self) -> u64 {
        let (status, body) =
            request_once(self.addr, "POST", "/api/v1/debug/tickets/passivate", None);
        assert_eq!(status, 202, "POST /api/v1/debug/tickets/passivate: {body}");
        serde_json::from_str::<Value>(&body).expect("json")["passivating"]
            .as_u64()
            .unwrap_or(0)
    }

    /// A counter's value, summed over its labels (0 when it has no sample yet).
    fn counter(&self, name: &str) -> f64 {
        let (status, body) = request_once(self.addr, "GET", "/metrics", None);
        assert_eq!(status, 200, "GET /metrics");
        body.lines()
            .filter(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// The server's `tickets.hibernate_after_ms` as the memory mode runs it.
    fn hibernate_after_ms(args: &Args) -> u64 {
        args.hibernate_after.unwrap_or_else(|| {
            switchboard::config::Settings::from_toml("")
                .expect("embedded defaults")
                .tickets
                .hibernate_after_ms
        })
    }

    /// `(sum, count)` of a Prometheus histogram.
    fn histogram(&self, name: &str) -> (f64, f64) {
        let (_, body) = request_once(self.addr, "GET", "/metrics", None);
        let value = |suffix: &str| {
            body.lines()
                .filter(|l| l.starts_with(&format!("{name}{suffix}")))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum::<f64>()
        };
        (value("_sum"), value("_count"))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        SERVER_PID.store(0, Ordering::SeqCst);
    }
}

fn cpu_ticks(stat_path: &str) -> u64 {
    let stat = std::fs::read_to_string(stat_path).unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let get = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    get(11) + get(12)
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .filter_map(|e| e.metadata().ok())
                .filter(|m| m.is_file())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// One blocking request on its own connection (`Connection: close`), for control calls.
fn request_once(addr: SocketAddr, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .expect("connect to the server");
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let body = body.unwrap_or("");
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).expect("send a control request");
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .get(9..12)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("{method} {path}: no HTTP response: {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

// ---------------------------------------------------------------------------------------------
// The load client
// ---------------------------------------------------------------------------------------------

/// What one phase sends. Job `i` is one request (plus an optional follow-up on the same connection).
trait Work: Send + Sync + 'static {
    fn request(&self, i: u64, out: &mut Vec<u8>);
    /// Handles a response; returns whether it is a success. May write a follow-up request into
    /// `follow_up`, sent next on the same connection as part of the same job.
    fn response(&self, i: u64, status: u16, body: &[u8], follow_up: &mut Vec<u8>) -> bool;
}

fn push_request(out: &mut Vec<u8>, method: &str, path: &str, body: Option<&[u8]>) {
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(path.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\nHost: switchboard\r\n");
    if let Some(body) = body {
        out.extend_from_slice(b"Content-Type: application/json\r\nContent-Length: ");
        out.extend_from_slice(body.len().to_string().as_bytes());
        out.extend_from_slice(b"\r\n\r\n");
        out.extend_from_slice(body);
    } else {
        out.extend_from_slice(b"\r\n");
    }
}

/// POST /api/v1/tickets; optionally keeps the new ids, optionally GETs each new ticket once.
struct Create {
    ids: Option<Mutex<Vec<String>>>,
    activate: bool,
}

fn ticket_id(body: &[u8]) -> Option<String> {
    serde_json::from_slice::<Value>(body).ok()?["id"]
        .as_str()
        .map(str::to_string)
}

impl Work for Create {
    fn request(&self, i: u64, out: &mut Vec<u8>) {
        let body = format!(
            r#"{{"subject":"Load test ticket {i}","requester":"load@example.com","description":"Created by the ticket_load benchmark.","tags":["load"]}}"#
        );
        push_request(out, "POST", "/api/v1/tickets", Some(body.as_bytes()));
    }

    fn response(&self, _: u64, status: u16, body: &[u8], follow_up: &mut Vec<u8>) -> bool {
        match status {
            201 => {
                if self.ids.is_some() || self.activate {
                    let Some(id) = ticket_id(body) else {
                        return false;
                    };
                    if self.activate {
                        push_request(follow_up, "GET", &format!("/api/v1/tickets/{id}"), None);
                    }
                    if let Some(ids) = &self.ids {
                        ids.lock().unwrap().push(id);
                    }
                }
                true
            }
            // The follow-up GET.
            200 => true,
            _ => false,
        }
    }
}

/// PATCH /api/v1/tickets/{id} without If-Match, spread pseudo-randomly over `ids`. Every PATCH sets a
/// new subject and the next priority, so each one changes the ticket and is a durable write.
struct Update {
    ids: Arc<Vec<String>>,
}

const PRIORITIES: [&str; 4] = ["low", "normal", "high", "urgent"];

fn scramble(i: u64) -> u64 {
    // splitmix64 finaliser: consecutive jobs land on unrelated tickets.
    let mut z = i.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Work for Update {
    fn request(&self, i: u64, out: &mut Vec<u8>) {
        let id = &self.ids[(scramble(i) % self.ids.len() as u64) as usize];
        let body = format!(
            r#"{{"subject":"Load test update {i}","priority":"{}"}}"#,
            PRIORITIES[(i % 4) as usize]
        );
        push_request(
            out,
            "PATCH",
            &format!("/api/v1/tickets/{id}"),
            Some(body.as_bytes()),
        );
    }

    fn response(&self, _: u64, status: u16, _: &[u8], _: &mut Vec<u8>) -> bool {
        status == 200
    }
}

/// GET /api/v1/tickets/{id} for each id in order (job i reads ticket i).
struct Get {
    ids: Arc<Vec<String>>,
}

impl Work for Get {
    fn request(&self, i: u64, out: &mut Vec<u8>) {
        let id = &self.ids[i as usize % self.ids.len()];
        push_request(out, "GET", &format!("/api/v1/tickets/{id}"), None);
    }

    fn response(&self, _: u64, status: u16, _: &[u8], _: &mut Vec<u8>) -> bool {
        status == 200
    }
}

/// When a phase stops: after `limit` jobs, or at `deadline`, whichever comes first. With `rate`,
/// connection `slot` sends its k-th request at `start + (slot + k * conns) / rate` and latency counts
/// from that scheduled time (so a server that falls behind is charged for the wait).
struct Control {
    next: AtomicU64,
    limit: u64,
    deadline: Instant,
    start: Instant,
    rate: Option<u64>,
    conns: usize,
}

impl Control {
    fn take(&self) -> Option<u64> {
        if Instant::now() >= self.deadline {
            return None;
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        (i < self.limit).then_some(i)
    }

    fn expired(&self) -> bool {
        Instant::now() >= self.deadline
    }
}

#[derive(Default)]
struct Stats {
    ok: u64,
    failed: u64,
    io_errors: u64,
    statuses: BTreeMap<u16, u64>,
    latencies_us: Vec<u32>,
    first_error: Option<String>,
}

impl Stats {
    fn merge(&mut self, other: Stats) {
        self.ok += other.ok;
        self.failed += other.failed;
        self.io_errors += other.io_errors;
        for (k, v) in other.statuses {
            *self.statuses.entry(k).or_default() += v;
        }
        self.latencies_us.extend(other.latencies_us);
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }

    fn io_error(&mut self, e: impl std::fmt::Display) {
        self.io_errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(e.to_string());
        }
    }

    fn errors(&self) -> u64 {
        self.failed + self.io_errors
    }
}

/// A phase's result: the client's view plus CPU used by each side.
struct Run {
    stats: Stats,
    elapsed: Duration,
    /// Bytes the server wrote to storage during the phase.
    disk_written: u64,
    server_cpu: f64,
    client_cpu: f64,
    /// Server CPU by thread name, in cores.
    threads: Vec<(String, f64)>,
}

impl Run {
    fn rate(&self) -> f64 {
        self.stats.ok as f64 / self.elapsed.as_secs_f64()
    }
}

struct Percentiles {
    p50: u32,
    p90: u32,
    p95: u32,
    p99: u32,
    max: u32,
}

fn percentiles(lat: &mut [u32]) -> Percentiles {
    lat.sort_unstable();
    let at = |q: f64| {
        if lat.is_empty() {
            0
        } else {
            lat[((lat.len() - 1) as f64 * q).round() as usize]
        }
    };
    Percentiles {
        p50: at(0.50),
        p90: at(0.90),
        p95: at(0.95),
        p99: at(0.99),
        max: lat.last().copied().unwrap_or(0),
    }
}

/// A response read into the caller's buffer.
struct Response {
    status: u16,
    body_start: usize,
    keep_alive: bool,
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Writes `req` and reads one response into `buf` (cleared first).
async fn roundtrip(
    stream: &mut TcpStream,
    req: &[u8],
    buf: &mut Vec<u8>,
) -> std::io::Result<Response> {
    use std::io::{Error, ErrorKind};
    stream.write_all(req).await?;
    buf.clear();
    let mut chunk = [0u8; 16 * 1024];
    let header_end = loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(Error::new(
                ErrorKind::UnexpectedEof,
                "connection closed before a response",
            ));
        }
        let searched_from = buf.len().saturating_sub(3);
        buf.extend_from_slice(&chunk[..n]);
        if let Some(p) = find(&buf[searched_from..], b"\r\n\r\n") {
            break searched_from + p + 4;
        }
        if buf.len() > 64 * 1024 {
            return Err(Error::new(
                ErrorKind::InvalidData,
                "response head too large",
            ));
        }
    };
    let head = std::str::from_utf8(&buf[..header_end])
        .map_err(|_| Error::new(ErrorKind::InvalidData, "response head is not UTF-8"))?;
    let status: u16 = head
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| Error::new(ErrorKind::InvalidData, "no status line"))?;
    let mut length = 0usize;
    let mut keep_alive = true;
    for line in head.split("\r\n").skip(1) {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            length = value
                .parse()
                .map_err(|_| Error::new(ErrorKind::InvalidData, "bad content-length"))?;
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(Error::new(
                ErrorKind::InvalidData,
                format!("unsupported transfer-encoding {value}"),
            ));
        } else if name.eq_ignore_ascii_case("connection") && value.eq_ignore_ascii_case("close") {
            keep_alive = false;
        }
    }
    while buf.len() < header_end + length {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(Error::new(ErrorKind::UnexpectedEof, "truncated body"));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Ok(Response {
        status,
        body_start: header_end,
        keep_alive,
    })
}

/// One client connection: takes jobs until the phase ends. An I/O error reconnects; a job is tried at
/// most three times.
async fn connection(
    addr: SocketAddr,
    work: Arc<dyn Work>,
    ctl: Arc<Control>,
    slot: usize,
) -> Stats {
    let mut stats = Stats::default();
    let mut sent = 0u64;
    let mut stream: Option<TcpStream> = None;
    let mut req = Vec::with_capacity(512);
    let mut follow_up = Vec::new();
    let mut buf = Vec::with_capacity(4096);
    while let Some(i) = ctl.take() {
        let mut scheduled = ctl.rate.map(|rate| {
            let at = (slot as f64 + sent as f64 * ctl.conns as f64) / rate as f64;
            ctl.start + Duration::from_secs_f64(at)
        });
        sent += 1;
        if let Some(at) = scheduled {
            tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await;
            if ctl.expired() {
                break;
            }
        }
        req.clear();
        work.request(i, &mut req);
        let mut attempts = 0;
        while attempts < 3 {
            attempts += 1;
            if stream.is_none() {
                match tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr)).await {
                    Ok(Ok(s)) => {
                        let _ = s.set_nodelay(true);
                        stream = Some(s);
                    }
                    Ok(Err(e)) => {
                        stats.io_error(format!("connect: {e}"));
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                    Err(_) => {
                        stats.io_error("connect: timed out");
                        continue;
                    }
                }
            }
            let s = stream.as_mut().expect("connected");
            let started = scheduled.take().unwrap_or_else(Instant::now);
            let outcome = tokio::time::timeout(REQUEST_TIMEOUT, roundtrip(s, &req, &mut buf)).await;
            let us = started.elapsed().as_micros().min(u32::MAX as u128) as u32;
            match outcome {
                Ok(Ok(Response {
                    status,
                    body_start,
                    keep_alive,
                })) => {
                    stats.latencies_us.push(us);
                    *stats.statuses.entry(status).or_default() += 1;
                    follow_up.clear();
                    if work.response(i, status, &buf[body_start..], &mut follow_up) {
                        stats.ok += 1;
                    } else {
                        stats.failed += 1;
                        if stats.first_error.is_none() {
                            let body = String::from_utf8_lossy(&buf[body_start..]);
                            stats.first_error = Some(format!(
                                "HTTP {status}: {}",
                                body.chars().take(300).collect::<String>()
                            ));
                        }
                    }
                    if !keep_alive {
                        stream = None;
                    }
                    if follow_up.is_empty() {
                        break;
                    }
                    std::mem::swap(&mut req, &mut follow_up);
                    attempts = 0;
                }
                Ok(Err(e)) => {
                    stats.io_error(e);
                    stream = None;
                }
                Err(_) => {
                    stats.io_error(format!("no response within {REQUEST_TIMEOUT:?}"));
                    stream = None;
                }
            }
            if ctl.expired() {
                break;
            }
        }
    }
    stats
}

/// Runs `work` over `conns` connections spread across `threads` client threads until `limit` jobs
/// are done or `max` has passed.
fn drive(
    server: &Server,
    work: Arc<dyn Work>,
    conns: usize,
    threads: usize,
    limit: Option<u64>,
    max: Duration,
    rate: Option<u64>,
) -> Run {
    let threads = threads.clamp(1, conns);
    let start = Instant::now();
    let ctl = Arc::new(Control {
        next: AtomicU64::new(0),
        limit: limit.unwrap_or(u64::MAX),
        deadline: start + max,
        start,
        rate,
        conns,
    });
    let server_cpu0 = server.cpu_ticks();
    let threads0 = server.thread_ticks();
    let disk0 = server.disk_written();
    let client_cpu0 = cpu_ticks("/proc/self/stat");
    let started = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let n = conns / threads + usize::from(t < conns % threads);
            let first_slot = t * (conns / threads) + t.min(conns % threads);
            let work = work.clone();
            let ctl = ctl.clone();
            let addr = server.addr;
            std::thread::Builder::new()
                .name(format!("load-client-{t}"))
                .spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .expect("client runtime");
                    rt.block_on(async move {
                        let tasks: Vec<_> = (first_slot..first_slot + n)
                            .map(|slot| {
                                tokio::spawn(connection(addr, work.clone(), ctl.clone(), slot))
                            })
                            .collect();
                        let mut stats = Stats::default();
                        for t in tasks {
                            if let Ok(s) = t.await {
                                stats.merge(s);
                            }
                        }
                        stats
                    })
                })
                .expect("spawn a client thread")
        })
        .collect();
    let mut stats = Stats::default();
    for h in handles {
        stats.merge(h.join().expect("client thread"));
    }
    let elapsed = started.elapsed();
    let secs = elapsed.as_secs_f64();
    let mut threads: Vec<(String, f64)> = server
        .thread_ticks()
        .into_iter()
        .map(|(name, t)| {
            let before = threads0.get(&name).copied().unwrap_or(0);
            (name, t.saturating_sub(before) as f64 / CLK_TCK / secs)
        })
        .filter(|(_, cores)| *cores >= 0.01)
        .collect();
    threads.sort_by(|a, b| b.1.total_cmp(&a.1));
    Run {
        stats,
        elapsed,
        disk_written: server.disk_written().saturating_sub(disk0),
        server_cpu: (server.cpu_ticks() - server_cpu0) as f64 / CLK_TCK / secs,
        client_cpu: (cpu_ticks("/proc/self/stat") - client_cpu0) as f64 / CLK_TCK / secs,
        threads,
    }
}

// ---------------------------------------------------------------------------------------------
// Reports
// ---------------------------------------------------------------------------------------------

const THROUGHPUT_HEADER: &str = "| mode | sync | conns | client threads | tickets | secs | ok | ok/s | \
p50 µs | p90 µs | p95 µs | p99 µs | max µs | errors | server CPU | client CPU | avg commit batch |\n\
|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|";

fn throughput_row(
    mode: &str,
    args: &Args,
    conns: usize,
    tickets: &str,
    run: &mut Run,
    commit_batch: Option<f64>,
) -> String {
    let p = percentiles(&mut run.stats.latencies_us);
    let mode = match args.rate {
        Some(r) if !mode.starts_with("smoke") => format!("{mode} (offered {r}/s)"),
        _ => mode.to_string(),
    };
    format!(
        "| {mode} | {} | {} | {} | {tickets} | {:.1} | {} | {:.0} | {} | {} | {} | {} | {} | {} | {:.0}% | {:.0}% | {} |",
        args.sync,
        conns,
        args.client_threads,
        run.elapsed.as_secs_f64(),
        run.stats.ok,
        run.rate(),
        p.p50,
        p.p90,
        p.p95,
        p.p99,
        p.max,
        run.stats.errors(),
        run.server_cpu * 100.0,
        run.client_cpu * 100.0,
        commit_batch.map(|b| format!("{b:.1}")).unwrap_or_else(|| "-".into()),
    )
}

fn error_detail(stats: &Stats) -> String {
    if stats.errors() == 0 {
        return "errors: none".into();
    }
    format!(
        "errors: {} non-success responses, {} I/O errors; statuses {:?}; first: {}",
        stats.failed,
        stats.io_errors,
        stats.statuses,
        stats.first_error.as_deref().unwrap_or("-")
    )
}

fn thread_detail(run: &Run) -> String {
    let parts: Vec<String> = run
        .threads
        .iter()
        .map(|(name, cores)| format!("{name} {:.0}%", cores * 100.0))
        .collect();
    format!(
        "server CPU by thread (100% = one core): {}\nserver wrote {} to storage ({:.1} KiB per acknowledged request, {:.0} MiB/s)",
        parts.join(", "),
        mib(run.disk_written),
        run.disk_written as f64 / 1024.0 / run.stats.ok.max(1) as f64,
        run.disk_written as f64 / (1024.0 * 1024.0) / run.elapsed.as_secs_f64()
    )
}

/// The closing lines every mode prints: server log summary, database size, command, exit status.
fn report_and_stop(server: Server, args: &Args) {
    println!("{}", server.log_summary());
    println!("database on disk: {}", mib(server.db_bytes()));
    println!("command: {}", command_line(args));
    let status = server.stop();
    println!("server exit: {status}");
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

fn command_line(args: &Args) -> String {
    format!("cargo bench --bench ticket_load -- {}", args.line)
}

fn print_header(args: &Args, what: &str) {
    println!(
        "\n## ticket_load {what}\n\nserver: {} (storage.synchronous = {}, log filter `{}`)\n",
        env!("CARGO_BIN_EXE_switchboard"),
        args.sync,
        args.log
    );
}

/// Average group-commit batch size (writes per transaction) between two histogram readings.
fn commit_batch(before: (f64, f64), after: (f64, f64)) -> Option<f64> {
    let writes = after.0 - before.0;
    let commits = after.1 - before.1;
    (commits > 0.0).then(|| writes / commits)
}

// ---------------------------------------------------------------------------------------------
// Modes
// ---------------------------------------------------------------------------------------------

/// Creates `n` tickets as fast as `conns` connections allow and returns their ids.
fn create_tickets(server: &Server, n: usize, conns: usize, threads: usize) -> (Vec<String>, Run) {
    let work = Arc::new(Create {
        ids: Some(Mutex::new(Vec::with_capacity(n))),
        activate: false,
    });
    let run = drive(
        server,
        work.clone(),
        conns,
        threads,
        Some(n as u64),
        Duration::from_secs(3600),
        None,
    );
    let ids = std::mem::take(&mut *work.ids.as_ref().unwrap().lock().unwrap());
    (ids, run)
}

fn creates(args: &Args) {
    print_header(args, "creates");
    let server = Server::start(args, &[]);
    let batch0 = server.histogram("switchboard_store_commit_batch_size");
    let work = Arc::new(Create {
        ids: None,
        activate: false,
    });
    let mut run = drive(
        &server,
        work,
        args.conns,
        args.client_threads,
        None,
        Duration::from_secs(args.secs),
        args.rate,
    );
    let batch = commit_batch(
        batch0,
        server.histogram("switchboard_store_commit_batch_size"),
    );
    println!("{THROUGHPUT_HEADER}");
    println!(
        "{}",
        throughput_row("creates", args, args.conns, "-", &mut run, batch)
    );
    println!("\n{}", error_detail(&run.stats));
    println!("{}", thread_detail(&run));
    println!("Every 201 was sent after the ticket's transaction committed (durable).");
    report_and_stop(server, args);
}

fn updates(args: &Args) {
    let tickets = args.tickets.unwrap_or(10_000);
    print_header(args, "updates");
    let server = Server::start(args, &[]);
    let (ids, created) = create_tickets(&server, tickets, args.conns.min(64), args.client_threads);
    assert!(
        ids.len() == tickets,
        "pre-created {} of {tickets} tickets; {}",
        ids.len(),
        error_detail(&created.stats)
    );
    println!(
        "pre-created {tickets} tickets in {:.1} s; activating them (one GET each) before measuring",
        created.elapsed.as_secs_f64()
    );
    let ids = Arc::new(ids);
    // Warm: every ticket actor live, so the measured PATCHes measure writes, not first loads.
    let warm = drive(
        &server,
        Arc::new(Get { ids: ids.clone() }),
        args.conns.min(64),
        args.client_threads,
        Some(tickets as u64),
        Duration::from_secs(600),
        None,
    );
    assert_eq!(warm.stats.errors(), 0, "{}", error_detail(&warm.stats));
    let batch0 = server.histogram("switchboard_store_commit_batch_size");
    let commit0 = server.histogram("switchboard_store_commit_duration_seconds");
    let fold0 = server.histogram("switchboard_store_fold_duration_seconds");
    let fold_rows0 = server.histogram("switchboard_store_fold_batch_size");
    let mut run = drive(
        &server,
        Arc::new(Update { ids }),
        args.conns,
        args.client_threads,
        None,
        Duration::from_secs(args.secs),
        args.rate,
    );
    let batch = commit_batch(
        batch0,
        server.histogram("switchboard_store_commit_batch_size"),
    );
    let commit1 = server.histogram("switchboard_store_commit_duration_seconds");
    println!("{THROUGHPUT_HEADER}");
    println!(
        "{}",
        throughput_row(
            "updates",
            args,
            args.conns,
            &tickets.to_string(),
            &mut run,
            batch
        )
    );
    println!("\n{}", error_detail(&run.stats));
    println!("{}", thread_detail(&run));
    if commit1.1 > commit0.1 {
        println!(
            "commits: {:.0} transactions, mean {:.2} ms each, {:.0}% of the wall clock inside a transaction",
            commit1.1 - commit0.1,
            (commit1.0 - commit0.0) / (commit1.1 - commit0.1) * 1000.0,
            (commit1.0 - commit0.0) / run.elapsed.as_secs_f64() * 100.0
        );
    }
    let fold1 = server.histogram("switchboard_store_fold_duration_seconds");
    let fold_rows1 = server.histogram("switchboard_store_fold_batch_size");
    if fold1.1 > fold0.1 {
        println!(
            "journal folds: {:.0}, mean {:.0} rows and {:.1} ms each, the folder busy {:.0}% of the wall clock",
            fold1.1 - fold0.1,
            (fold_rows1.0 - fold_rows0.0) / (fold1.1 - fold0.1),
            (fold1.0 - fold0.0) / (fold1.1 - fold0.1) * 1000.0,
            (fold1.0 - fold0.0) / run.elapsed.as_secs_f64() * 100.0
        );
    }
    println!(
        "Every 200 was sent only after the PATCH's transaction committed: each acknowledged update is durable \
         (synchronous = {}).",
        args.sync
    );
    report_and_stop(server, args);
}

/// Polls until the registry reports `want` live actors (or `max` passes); returns the last count.
fn wait_live(server: &Server, want: u64, max: Duration) -> u64 {
    let deadline = Instant::now() + max;
    loop {
        let live = server.live();
        if live == want || Instant::now() > deadline {
            return live;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// RSS after letting the server settle (actors stopping, allocator quiet). Scrapes /metrics first:
/// the metrics recorder keeps every histogram sample until a scrape drains it, which would otherwise
/// count here as memory of the phase just run.
fn settled_rss(server: &Server) -> u64 {
    let (status, _) = request_once(server.addr, "GET", "/metrics", None);
    assert_eq!(status, 200, "GET /metrics");
    std::thread::sleep(Duration::from_secs(2));
    server.rss()
}

/// Waits until `want` hibernations have been counted, at most `max`; returns the count.
fn wait_hibernated(server: &Server, want: u64, max: Duration) -> u64 {
    let deadline = Instant::now() + max;
    loop {
        let n = server.counter("switchboard_ticket_hibernations_total") as u64;
        if n >= want || Instant::now() > deadline {
            return n;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Reads every ticket through the store (paging `GET /api/v1/tickets`, which activates no actor) from
/// two clients at once, so that both store readers' SQLite page caches (64 MiB each) hold the
/// tickets table before the baseline is taken. Otherwise the cache growth caused by the activations'
/// loads would be counted as actor memory. Repeats until RSS grows by less than 1 MiB in a pass.
fn warm_store(server: &Server) -> u64 {
    let page_all = |addr: SocketAddr| {
        let mut cursor: Option<String> = None;
        loop {
            let path = match &cursor {
                None => "/api/v1/tickets?limit=200".to_string(),
                Some(c) => format!("/api/v1/tickets?limit=200&cursor={}", url_escape(c)),
            };
            let (status, body) = request_once(addr, "GET", &path, None);
            assert_eq!(status, 200, "GET {path}: {body}");
            let page: Value = serde_json::from_str(&body).expect("json page");
            match page["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_string()),
                None => return,
            }
        }
    };
    let mut rss = settled_rss(server);
    for _ in 0..10 {
        let addr = server.addr;
        let a = std::thread::spawn(move || page_all(addr));
        page_all(addr);
        a.join().expect("warm-up client");
        let now = settled_rss(server);
        let grew = now.saturating_sub(rss);
        rss = now;
        if grew < 1 << 20 {
            break;
        }
    }
    rss
}

fn url_escape(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn memory(args: &Args) {
    let n = args.tickets.unwrap_or(100_000);
    print_header(args, "memory");
    let hibernate_after = Server::hibernate_after_ms(args);
    let mut env = vec![(
        "SWITCHBOARD__TICKETS__IDLE_TIMEOUT_MS",
        "86400000".to_string(),
    )];
    if let Some(ms) = args.hibernate_after {
        env.push(("SWITCHBOARD__TICKETS__HIBERNATE_AFTER_MS", ms.to_string()));
    }
    let server = Server::start(args, &env);
    println!(
        "idle timeout 1 day (nothing passivates by itself); hibernate_after {hibernate_after} ms{}",
        if hibernate_after == 0 { " (off)" } else { "" }
    );
    let rss_start = settled_rss(&server);
    let (ids, created) = create_tickets(&server, n, args.conns, args.client_threads);
    assert_eq!(ids.len(), n, "{}", error_detail(&created.stats));
    println!(
        "created {n} tickets in {:.1} s ({:.0}/s)",
        created.elapsed.as_secs_f64(),
        created.rate()
    );
    server.passivate_all();
    let live0 = wait_live(&server, 0, Duration::from_secs(30));
    let rss_created = settled_rss(&server);
    let rss0 = warm_store(&server);
    println!(
        "RSS after creates {}; after warming the store's page caches {}",
        mib(rss_created),
        mib(rss0)
    );

    let ids = Arc::new(ids);
    let mut rounds = Vec::new();
    for round in 1..=2u64 {
        let get = drive(
            &server,
            Arc::new(Get { ids: ids.clone() }),
            args.conns,
            args.client_threads,
            Some(n as u64),
            Duration::from_secs(1800),
            None,
        );
        let live = wait_live(&server, n as u64, Duration::from_secs(30));
        let hibernated = if hibernate_after > 0 {
            // Sample only once every ticket has been idle past hibernate_after and hibernated.
            let got = wait_hibernated(
                &server,
                round * n as u64,
                Duration::from_millis(hibernate_after) + Duration::from_secs(60),
            );
            format!("; hibernations counted {got} of {}", round * n as u64)
        } else {
            String::new()
        };
        let rss_live = settled_rss(&server);
        server.passivate_all();
        let after = wait_live(&server, 0, Duration::from_secs(30));
        let rss_after = settled_rss(&server);
        println!(
            "round {round}: GET {n} tickets in {:.1} s ({:.0}/s, {} errors); live actors {live}{hibernated}; \
             RSS {}; after passivating all: live {after}, RSS {}",
            get.elapsed.as_secs_f64(),
            get.rate(),
            get.stats.errors(),
            mib(rss_live),
            mib(rss_after)
        );
        if get.stats.errors() > 0 {
            println!("  {}", error_detail(&get.stats));
        }
        rounds.push((live, rss_live, rss_after));
    }

    let (live1, rss1, rss1_after) = rounds[0];
    let (live2, rss2, _) = rounds[1];
    let per_actor = |rss: u64, base: u64| (rss as f64 - base as f64) / n as f64;
    println!(
        "\n| tickets | RSS at start | RSS, 0 live (after creates, store warm) | RSS, {n} live | Δ per actor | \
         RSS after passivating | RSS, {n} live again | Δ per actor, 2nd activation |\n\
         |---|---|---|---|---|---|---|---|"
    );
    println!(
        "| {n} | {} | {} (live {live0}) | {} (live {live1}) | {:.0} B | {} | {} (live {live2}) | {:.0} B |",
        mib(rss_start),
        mib(rss0),
        mib(rss1),
        per_actor(rss1, rss0),
        mib(rss1_after),
        mib(rss2),
        per_actor(rss2, rss1_after),
    );
    if live1 != n as u64 {
        println!("WARNING: expected {n} live actors after the GETs, the registry reported {live1}");
    }
    println!();
    report_and_stop(server, args);
}

fn flat(args: &Args) {
    let n = args.tickets.unwrap_or(1_000_000);
    print_header(args, "flat");
    let idle_ms = 2000u64;
    let sweep_ms = 500u64;
    let server = Server::start(
        args,
        &[
            ("SWITCHBOARD__TICKETS__IDLE_TIMEOUT_MS", idle_ms.to_string()),
            (
                "SWITCHBOARD__TICKETS__SWEEP_INTERVAL_MS",
                sweep_ms.to_string(),
            ),
        ],
    );
    println!(
        "{n} creates{}, idle timeout {idle_ms} ms, sweep {sweep_ms} ms; a sample every {} creates{}\n",
        if args.activate {
            ", each followed by one GET of the new ticket (activating its actor)"
        } else {
            " (creation does not activate an actor)"
        },
        args.sample_every,
        if args.scrape {
            "; GET /metrics at every sample"
        } else {
            "; /metrics is never scraped"
        }
    );
    println!(
        "| stored tickets | elapsed s | creates/s (this step) | p99 µs (this step) | RSS | live actors | DB on disk | errors |\n\
         |---|---|---|---|---|---|---|---|"
    );
    println!(
        "| 0 | 0 | - | - | {} | {} | {} | 0 |",
        mib(settled_rss(&server)),
        server.live(),
        mib(server.db_bytes())
    );
    let started = Instant::now();
    let mut done = 0usize;
    let mut errors = 0u64;
    let mut series = Vec::new();
    while done < n {
        let step = args.sample_every.min(n - done);
        let mut run = drive(
            &server,
            Arc::new(Create {
                ids: None,
                activate: args.activate,
            }),
            args.conns,
            args.client_threads,
            Some(step as u64),
            Duration::from_secs(3600),
            None,
        );
        done += step;
        errors += run.stats.errors();
        if args.scrape {
            // As Prometheus would: GET /metrics (which also drains the recorder's histogram samples).
            let (status, _) = request_once(server.addr, "GET", "/metrics", None);
            assert_eq!(status, 200, "GET /metrics");
        }
        let p = percentiles(&mut run.stats.latencies_us);
        let rss = server.rss();
        series.push(rss);
        println!(
            "| {done} | {:.0} | {:.0} | {} | {} | {} | {} | {} |",
            started.elapsed().as_secs_f64(),
            step as f64 / run.elapsed.as_secs_f64(),
            p.p99,
            mib(rss),
            server.live(),
            mib(server.db_bytes()),
            run.stats.errors()
        );
        if run.stats.errors() > 0 {
            println!("  {}", error_detail(&run.stats));
        }
    }
    let total = started.elapsed();
    std::thread::sleep(Duration::from_millis(idle_ms + 2 * sweep_ms + 500));
    println!(
        "| {done} (idle {:.1} s later) | {:.0} | - | - | {} | {} | {} | - |",
        (idle_ms + 2 * sweep_ms + 500) as f64 / 1000.0,
        started.elapsed().as_secs_f64(),
        mib(server.rss()),
        server.live(),
        mib(server.db_bytes())
    );
    let (lo, hi) = (
        series.iter().min().copied().unwrap_or(0),
        series.iter().max().copied().unwrap_or(0),
    );
    println!(
        "\nRSS over the run: min {}, max {}; {errors} errors; {done} creates in {:.0} s ({:.0} creates/s)",
        mib(lo),
        mib(hi),
        total.as_secs_f64(),
        done as f64 / total.as_secs_f64()
    );
    println!("{}", server.log_summary());
    println!("command: {}", command_line(args));
    let status = server.stop();
    println!("server exit: {status}");
}

/// A few seconds against whichever binary cargo built: proves the tool and the server work together.
fn smoke(args: &Args) {
    let server = Server::start(args, &[]);
    let mut run = drive(
        &server,
        Arc::new(Create {
            ids: None,
            activate: true,
        }),
        4,
        1,
        None,
        Duration::from_millis(500),
        None,
    );
    println!("{THROUGHPUT_HEADER}");
    println!(
        "{}",
        throughput_row("smoke creates", args, 4, "-", &mut run, None)
    );
    assert!(run.stats.ok > 0, "{}", error_detail(&run.stats));
    let (ids, _) = create_tickets(&server, 20, 4, 1);
    assert_eq!(ids.len(), 20);
    let mut run = drive(
        &server,
        Arc::new(Update { ids: Arc::new(ids) }),
        4,
        1,
        None,
        Duration::from_millis(500),
        None,
    );
    println!(
        "{}",
        throughput_row("smoke updates", args, 4, "20", &mut run, None)
    );
    assert!(run.stats.ok > 0, "{}", error_detail(&run.stats));
    assert_eq!(run.stats.errors(), 0, "{}", error_detail(&run.stats));
    let status = server.stop();
    assert!(status.success(), "server exit: {status}");
    println!(
        "ticket_load smoke run passed (run with a mode for real figures; see the file header)"
    );
}

/// Kills the server and exits if the run is still going after `limit`.
fn watchdog(limit: Duration) {
    std::thread::spawn(move || {
        std::thread::sleep(limit);
        let pid = SERVER_PID.load(Ordering::SeqCst);
        eprintln!("ticket_load: still running after {limit:?}; killing the server and exiting");
        if pid != 0 {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
        std::process::exit(3);
    });
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let limit = match args.mode {
        Mode::Smoke => Duration::from_secs(120),
        Mode::Creates | Mode::Updates => Duration::from_secs(args.secs + 900),
        Mode::Memory | Mode::Flat => Duration::from_secs(4 * 3600),
    };
    watchdog(limit);
    match args.mode {
        Mode::Smoke => smoke(&args),
        Mode::Creates => creates(&args),
        Mode::Updates => updates(&args),
        Mode::Memory => memory(&args),
        Mode::Flat => flat(&args),
    }
}
