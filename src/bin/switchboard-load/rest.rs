//! `rest` mode: the ticket API under load. Runs the real `switchboard` binary on a loopback
//! ephemeral port with a fresh data dir and drives it over many concurrent keep-alive HTTP/1.1
//! connections: durable creates and updates per second, latency percentiles, memory per live
//! ticket actor, and memory while storing many tickets.
//!
//! ```text
//! switchboard-load rest creates --conns 64 --secs 10
//! switchboard-load rest updates --tickets 10000 --conns 64 --secs 10 [--sync normal]
//! switchboard-load rest memory --tickets 100000 [--hibernate-after MS]
//! switchboard-load rest flat --tickets 1000000 [--activate] [--scrape] [--sample-every N]
//! switchboard-load rest smoke
//! ```
//!
//! Common flags: `--sync full|normal` (storage.synchronous, default full), `--client-threads K`
//! (client event-loop threads, default 1), `--log FILTER` (server log filter; the default keeps the
//! per-request log off but still prints the "switchboard starting" line the tool reads the port from).
//!
//! `smoke` (what the test suite runs) finishes in a few seconds. Every phase is bounded by time or
//! count, a watchdog kills the server and exits if anything hangs, and the server gets SIGTERM at
//! the end.
//!
//! The client ([`client`]) is a minimal HTTP/1.1 client (one request in flight per connection,
//! Content-Length framing) on current-thread tokio runtimes, to leave as much CPU as possible to
//! the server: client and server share the machine, so every figure is a lower bound for the
//! server alone.

mod client;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use self::client::{drive, percentiles, Create, Get, Run, Stats, Update};
use crate::procs::{self, cpu_ticks};
use crate::server::{self, Launch, Server};

/// Server log filter: "switchboard starting" (INFO, target `switchboard`) stays on; the per-request
/// log (INFO, target `switchboard::http`) is off.
const QUIET_LOG: &str = "warn,switchboard=info,switchboard::http=warn";

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// Closed- or open-loop `POST /api/v1/tickets`.
    Creates,
    /// `PATCH` over pre-created, activated tickets.
    Updates,
    /// RSS per live (hibernated) ticket actor.
    Memory,
    /// RSS while storing many tickets.
    Flat,
    /// A few seconds of creates and updates: proves the tool and the server work together.
    Smoke,
}

#[derive(Debug, Clone, clap::Args)]
pub struct RestArgs {
    pub mode: Mode,
    /// Concurrent keep-alive connections.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..))]
    pub conns: u64,
    /// Length of a timed phase.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    pub secs: u64,
    /// Tickets to create (updates: 10,000; memory: 100,000; flat: 1,000,000).
    #[arg(long)]
    pub tickets: Option<usize>,
    /// `storage.synchronous`.
    #[arg(long, default_value = "full", value_parser = ["full", "normal"])]
    pub sync: String,
    /// Client event-loop threads.
    #[arg(long, default_value_t = 1)]
    pub client_threads: usize,
    /// Server log filter.
    #[arg(long, default_value = QUIET_LOG)]
    pub log: String,
    /// flat: GET each new ticket once (activating its actor).
    #[arg(long)]
    pub activate: bool,
    /// flat: GET /metrics at every sample, as Prometheus would.
    #[arg(long)]
    pub scrape: bool,
    /// Offered load in requests/s (open loop, spread evenly over the connections); none: closed loop.
    #[arg(long)]
    pub rate: Option<u64>,
    /// flat: a sample every N creates.
    #[arg(long, default_value_t = 100_000)]
    pub sample_every: usize,
    /// memory: `tickets.hibernate_after_ms` (0: off); none: the server's default.
    #[arg(long)]
    pub hibernate_after: Option<u64>,
    /// The `switchboard` binary (default: beside this tool).
    #[arg(long)]
    pub server_bin: Option<PathBuf>,
}

/// What every mode works with: the arguments and the server binary they resolved to.
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
    rate: Option<u64>,
    sample_every: usize,
    hibernate_after: Option<u64>,
    bin: PathBuf,
}

pub fn run(a: RestArgs) -> anyhow::Result<()> {
    let args = Args {
        bin: server::locate(a.server_bin.as_deref())?,
        mode: a.mode,
        conns: a.conns as usize,
        secs: a.secs,
        tickets: a.tickets,
        sync: a.sync,
        client_threads: a.client_threads.max(1),
        log: a.log,
        activate: a.activate,
        scrape: a.scrape,
        rate: a.rate,
        sample_every: a.sample_every.max(1),
        hibernate_after: a.hibernate_after,
    };
    let limit = match args.mode {
        Mode::Smoke => Duration::from_secs(120),
        Mode::Creates | Mode::Updates => Duration::from_secs(args.secs + 900),
        Mode::Memory | Mode::Flat => Duration::from_secs(4 * 3600),
    };
    procs::watchdog("switchboard-load rest", limit);
    match args.mode {
        Mode::Smoke => smoke(&args),
        Mode::Creates => creates(&args),
        Mode::Updates => updates(&args),
        Mode::Memory => memory(&args),
        Mode::Flat => flat(&args),
    }
}

// ---------------------------------------------------------------------------------------------
// What this mode asks of the server beyond starting and stopping it
// ---------------------------------------------------------------------------------------------

fn start(args: &Args, env: &[(&str, String)]) -> anyhow::Result<Server> {
    let mut all = vec![
        (
            "SWITCHBOARD__STORAGE__SYNCHRONOUS".to_string(),
            args.sync.clone(),
        ),
        // For the /api/v1/debug/tickets/* counters and controls.
        (
            "SWITCHBOARD__TESTING__FAULT_INJECTION".to_string(),
            "true".to_string(),
        ),
    ];
    all.extend(env.iter().map(|(k, v)| (k.to_string(), v.clone())));
    Server::start(&Launch {
        bin: &args.bin,
        log: &args.log,
        env: all,
        malloc_conf: None,
        cpus: None,
    })
}

/// One control request (`Connection: close`); a failure to get any answer ends the run.
fn request_once(addr: SocketAddr, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
    server::request(addr, method, path, body).unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

impl Server {
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
        dir_bytes(&self.dir)
    }

    fn live(&self) -> u64 {
        let (status, body) = request_once(self.api, "GET", "/api/v1/debug/tickets/live", None);
        assert_eq!(status, 200, "GET /api/v1/debug/tickets/live: {body}");
        serde_json::from_str::<Value>(&body).expect("json")["live"]
            .as_u64()
            .expect("live count")
    }

    fn passivate_all(&self) -> u64 {
        let (status, body) =
            request_once(self.api, "POST", "/api/v1/debug/tickets/passivate", None);
        assert_eq!(status, 202, "POST /api/v1/debug/tickets/passivate: {body}");
        serde_json::from_str::<Value>(&body).expect("json")["passivating"]
            .as_u64()
            .unwrap_or(0)
    }

    /// A counter's value, summed over its labels (0 when it has no sample yet).
    fn counter(&self, name: &str) -> f64 {
        let (status, body) = request_once(self.api, "GET", "/metrics", None);
        assert_eq!(status, 200, "GET /metrics");
        server::metric_sum(&body, name)
    }

    /// `(sum, count)` of a Prometheus histogram.
    fn histogram(&self, name: &str) -> (f64, f64) {
        let (_, body) = request_once(self.api, "GET", "/metrics", None);
        server::histogram(&body, name)
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
fn report_and_stop(server: Server, args: &Args) -> anyhow::Result<()> {
    println!("{}", server.log_summary());
    println!("database on disk: {}", mib(server.db_bytes()));
    println!("command: {}", command_line(args));
    let status = server.stop(Duration::from_secs(60));
    println!("server exit: {status}");
    Ok(())
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

fn command_line(args: &Args) -> String {
    let _ = args;
    std::env::args().collect::<Vec<_>>().join(" ")
}

fn print_header(args: &Args, what: &str) {
    println!(
        "\n## switchboard-load rest {what}\n\nserver: {} (storage.synchronous = {}, log filter `{}`)\n",
        args.bin.display(),
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

fn creates(args: &Args) -> anyhow::Result<()> {
    print_header(args, "creates");
    let server = start(args, &[])?;
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
    report_and_stop(server, args)
}

fn updates(args: &Args) -> anyhow::Result<()> {
    let tickets = args.tickets.unwrap_or(10_000);
    print_header(args, "updates");
    let server = start(args, &[])?;
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
    report_and_stop(server, args)
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
    let (status, _) = request_once(server.api, "GET", "/metrics", None);
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
        let addr = server.api;
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

fn memory(args: &Args) -> anyhow::Result<()> {
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
    let server = start(args, &env)?;
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
    report_and_stop(server, args)
}

fn flat(args: &Args) -> anyhow::Result<()> {
    let n = args.tickets.unwrap_or(1_000_000);
    print_header(args, "flat");
    let idle_ms = 2000u64;
    let sweep_ms = 500u64;
    let server = start(
        args,
        &[
            ("SWITCHBOARD__TICKETS__IDLE_TIMEOUT_MS", idle_ms.to_string()),
            (
                "SWITCHBOARD__TICKETS__SWEEP_INTERVAL_MS",
                sweep_ms.to_string(),
            ),
        ],
    )?;
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
            let (status, _) = request_once(server.api, "GET", "/metrics", None);
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
    let status = server.stop(Duration::from_secs(60));
    println!("server exit: {status}");
    Ok(())
}

/// A few seconds against whichever binary cargo built: proves the tool and the server work together.
fn smoke(args: &Args) -> anyhow::Result<()> {
    let server = start(args, &[])?;
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
    let status = server.stop(Duration::from_secs(60));
    assert!(status.success(), "server exit: {status}");
    println!("switchboard-load rest smoke run passed (run with another mode for real figures)");
    Ok(())
}
