//! The REST load client: keep-alive HTTP/1.1 connections, one request in flight on each, spread
//! over current-thread tokio runtimes, taking numbered jobs from a shared counter until a phase's
//! count or deadline is reached. Optional open loop: each connection sends on a fixed schedule and
//! latency counts from the scheduled time, so a server that falls behind is charged for the wait.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::procs::{cpu_ticks, CLK_TCK};
use crate::server::Server;

/// Longest a single request may take before it counts as an error.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// What one phase sends. Job `i` is one request (plus an optional follow-up on the same connection).
pub(super) trait Work: Send + Sync + 'static {
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
pub(super) struct Create {
    pub(super) ids: Option<Mutex<Vec<String>>>,
    pub(super) activate: bool,
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
pub(super) struct Update {
    pub(super) ids: Arc<Vec<String>>,
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
pub(super) struct Get {
    pub(super) ids: Arc<Vec<String>>,
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
pub(super) struct Stats {
    pub(super) ok: u64,
    pub(super) failed: u64,
    pub(super) io_errors: u64,
    pub(super) statuses: BTreeMap<u16, u64>,
    pub(super) latencies_us: Vec<u32>,
    pub(super) first_error: Option<String>,
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

    pub(super) fn errors(&self) -> u64 {
        self.failed + self.io_errors
    }
}

/// A phase's result: the client's view plus CPU used by each side.
pub(super) struct Run {
    pub(super) stats: Stats,
    pub(super) elapsed: Duration,
    /// Bytes the server wrote to storage during the phase.
    pub(super) disk_written: u64,
    pub(super) server_cpu: f64,
    pub(super) client_cpu: f64,
    /// Server CPU by thread name, in cores.
    pub(super) threads: Vec<(String, f64)>,
}

impl Run {
    pub(super) fn rate(&self) -> f64 {
        self.stats.ok as f64 / self.elapsed.as_secs_f64()
    }
}

pub(super) struct Percentiles {
    pub(super) p50: u32,
    pub(super) p90: u32,
    pub(super) p95: u32,
    pub(super) p99: u32,
    pub(super) max: u32,
}

pub(super) fn percentiles(lat: &mut [u32]) -> Percentiles {
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
pub(super) fn drive(
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
            let addr = server.api;
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
