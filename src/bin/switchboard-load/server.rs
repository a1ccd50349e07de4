//! The server under load, as every mode sees it: starting the real `switchboard` binary on
//! loopback port 0 with a fresh data dir (or naming one already running), reading its two
//! addresses from its "switchboard starting" log line, tallying the warnings it logs, sampling its
//! memory from `/proc`, scraping its `/metrics`, restarting it (SIGKILL or SIGTERM, then the same
//! binary on the same data dir and the same addresses), and stopping it with SIGTERM.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::Value;

use crate::procs;

/// Finds the server binary: `explicit`, else `switchboard` beside this tool (both are built into
/// the same `target/<profile>/` by `cargo build`).
pub fn locate(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(p) = explicit {
        if !p.is_file() {
            bail!("--server-bin {}: no such file", p.display());
        }
        return Ok(p.to_path_buf());
    }
    let me = std::env::current_exe().context("locate this tool's executable")?;
    let beside = me.with_file_name("switchboard");
    if !beside.is_file() {
        bail!(
            "no server binary at {}: build both with `cargo build --release --bins`, or pass --server-bin",
            beside.display()
        );
    }
    Ok(beside)
}

/// Warnings and errors the server logged, reported beside the figures.
#[derive(Default)]
pub struct LogTally {
    pub warn: u64,
    pub error: u64,
    pub samples: Vec<String>,
}

/// How to start the server: its binary, log filter and extra environment.
pub struct Launch<'a> {
    pub bin: &'a Path,
    pub log: &'a str,
    pub env: Vec<(String, String)>,
    /// `_RJEM_MALLOC_CONF` (jemalloc options), if any.
    pub malloc_conf: Option<&'a str>,
    /// Run the server under `taskset -c CPUS`.
    pub cpus: Option<&'a str>,
}

/// A running `switchboard` process started by this tool.
pub struct Server {
    child: Child,
    pub api: SocketAddr,
    pub chat: SocketAddr,
    pub dir: PathBuf,
    log: Arc<Mutex<LogTally>>,
    /// What started it, kept so that [`Server::relaunch`] starts the same server again.
    recipe: Recipe,
    /// CPU seconds of the processes a restart replaced.
    retired_cpu_secs: f64,
}

/// An owned [`Launch`].
struct Recipe {
    bin: PathBuf,
    log: String,
    env: Vec<(String, String)>,
    malloc_conf: Option<String>,
    cpus: Option<String>,
}

/// How a restart takes the server down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Halt {
    /// SIGKILL: nothing is flushed, no client is told.
    Kill,
    /// SIGTERM, then wait for the exit: clients are told to resume (close 1012).
    Term,
    /// `switchboard --takeover`: a new process takes every socket over from the running one,
    /// which exits once the new one is ready; no client should notice.
    Upgrade,
}

impl Halt {
    pub fn name(self) -> &'static str {
        match self {
            Halt::Kill => "kill",
            Halt::Term => "term",
            Halt::Upgrade => "upgrade",
        }
    }
}

/// The server going down, on this tool's clocks.
pub struct Halted {
    /// When the signal was sent, in Unix nanoseconds: the workers' resume times count from it.
    pub signalled_unix_nanos: u128,
    /// From the signal to the exit.
    pub down: Duration,
    pub exit: String,
}

/// The server coming back.
pub struct Relaunched {
    /// From the call to the new process logging its addresses.
    pub took: Duration,
    /// Starts tried: a bind can fail while the old process's sockets linger.
    pub attempts: u32,
}

/// Starts tried before a restart gives up.
const RELAUNCH_ATTEMPTS: u32 = 10;

impl Server {
    pub fn start(launch: &Launch) -> anyhow::Result<Server> {
        let dir = fresh_dir("switchboard-load-data")?;
        let recipe = Recipe {
            bin: launch.bin.to_path_buf(),
            log: launch.log.to_string(),
            env: launch.env.clone(),
            malloc_conf: launch.malloc_conf.map(str::to_string),
            cpus: launch.cpus.map(str::to_string),
        };
        let log = Arc::new(Mutex::new(LogTally::default()));
        let (child, api, chat) = match spawn(&recipe, &dir, "127.0.0.1:0", "127.0.0.1:0", &[], &log)
        {
            Ok(x) => x,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(e);
            }
        };
        Ok(Server {
            child,
            api,
            chat,
            dir,
            log,
            recipe,
            retired_cpu_secs: 0.0,
        })
    }

    /// Takes the server down (`how`), waiting for the process to exit; SIGKILL after `patience`.
    pub fn halt(&mut self, how: Halt, patience: Duration) -> Halted {
        let pid = self.pid();
        self.retired_cpu_secs += procs::cpu_secs(pid);
        let signalled_unix_nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let sent = Instant::now();
        match how {
            Halt::Kill => {
                let _ = self.child.kill();
            }
            Halt::Term => procs::signal(pid, "TERM"),
            Halt::Upgrade => unreachable!("an upgrade is Server::take_over"),
        }
        let status = wait_exit(&mut self.child, patience);
        procs::untrack(pid);
        Halted {
            signalled_unix_nanos,
            down: sent.elapsed(),
            exit: status.map_or_else(|e| e.to_string(), |s| s.to_string()),
        }
    }

    /// Starts the server again after [`Server::halt`]: the same binary, environment and data dir,
    /// on the same two addresses, so that clients find it where it was.
    pub fn relaunch(&mut self) -> anyhow::Result<Relaunched> {
        let began = Instant::now();
        let (api, chat) = (self.api.to_string(), self.chat.to_string());
        let mut pause = Duration::from_millis(50);
        let mut attempts = 0;
        loop {
            attempts += 1;
            match spawn(&self.recipe, &self.dir, &api, &chat, &[], &self.log) {
                Ok((child, got_api, got_chat)) => {
                    self.child = child;
                    if (got_api, got_chat) != (self.api, self.chat) {
                        bail!(
                            "the restarted server listens on {got_api} and {got_chat}, not {} and {}",
                            self.api,
                            self.chat
                        );
                    }
                    return Ok(Relaunched {
                        took: began.elapsed(),
                        attempts,
                    });
                }
                Err(e) if attempts < RELAUNCH_ATTEMPTS => {
                    eprintln!("restart: start {attempts} failed ({e:#}); trying again");
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_secs(1));
                }
                Err(e) => {
                    return Err(e.context(format!("restart the server after {attempts} starts")))
                }
            }
        }
    }

    /// Replaces the server by upgrade: a second process with `--takeover` on the same data dir
    /// takes the sockets and connections over, and the old one exits by itself once the new one
    /// is ready (waited for, up to `patience`). `Halted::down` is from the start to the old
    /// process's exit; `Relaunched::took`, to the new one's start line.
    pub fn take_over(&mut self, patience: Duration) -> anyhow::Result<(Halted, Relaunched)> {
        let old_pid = self.pid();
        let signalled_unix_nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let began = Instant::now();
        let (api, chat) = (self.api.to_string(), self.chat.to_string());
        let (child, got_api, got_chat) = spawn(
            &self.recipe,
            &self.dir,
            &api,
            &chat,
            &["--takeover"],
            &self.log,
        )?;
        let took = began.elapsed();
        if (got_api, got_chat) != (self.api, self.chat) {
            let mut stray = child;
            let _ = stray.kill();
            let _ = stray.wait();
            bail!("the new server listens on {got_api} and {got_chat}, not {api} and {chat}");
        }
        let mut old = std::mem::replace(&mut self.child, child);
        self.retired_cpu_secs += procs::cpu_secs(old_pid);
        let status = wait_exit(&mut old, patience);
        procs::untrack(old_pid);
        Ok((
            Halted {
                signalled_unix_nanos,
                down: began.elapsed(),
                exit: status.map_or_else(|e| e.to_string(), |s| s.to_string()),
            },
            Relaunched { took, attempts: 1 },
        ))
    }

    /// CPU seconds used by this server, including the processes restarts replaced.
    pub fn cpu_secs(&self) -> f64 {
        self.retired_cpu_secs + procs::cpu_secs(self.pid())
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident set size in bytes.
    pub fn rss(&self) -> u64 {
        procs::rss_kb(self.pid()) * 1024
    }

    /// Sends SIGTERM and waits for the exit (SIGKILL after `patience`).
    pub fn stop(mut self, patience: Duration) -> ExitStatus {
        procs::signal(self.pid(), "TERM");
        let status = loop {
            match wait_exit(&mut self.child, patience) {
                Ok(s) => break s,
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        };
        procs::untrack(self.child.id());
        status
    }

    pub fn log_counts(&self) -> (u64, u64) {
        let t = self.log.lock().unwrap_or_else(|e| e.into_inner());
        (t.warn, t.error)
    }

    pub fn log_samples(&self) -> Vec<String> {
        let t = self.log.lock().unwrap_or_else(|e| e.into_inner());
        t.samples.clone()
    }

    pub fn log_summary(&self) -> String {
        let (warn, error) = self.log_counts();
        let mut s = format!("server log: {warn} warnings, {error} errors");
        for sample in self.log_samples() {
            s.push_str("\n    ");
            s.push_str(&sample);
        }
        s
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        procs::untrack(self.child.id());
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Starts the server binary on `api_bind` and `chat_bind` in `dir`; the process and the addresses
/// it logged. A process that exits before logging them (a bind refused) is an error.
fn spawn(
    recipe: &Recipe,
    dir: &Path,
    api_bind: &str,
    chat_bind: &str,
    args: &[&str],
    log: &Arc<Mutex<LogTally>>,
) -> anyhow::Result<(Child, SocketAddr, SocketAddr)> {
    let mut cmd = match &recipe.cpus {
        Some(cpus) => {
            let mut c = Command::new("taskset");
            c.args(["-c", cpus]).arg(&recipe.bin);
            c
        }
        None => Command::new(&recipe.bin),
    };
    cmd.args(args);
    cmd.env_remove("RUST_LOG")
        .env("SWITCHBOARD__LOG__FORMAT", "json")
        .env("SWITCHBOARD__LOG__LEVEL", &recipe.log)
        .env("SWITCHBOARD__API__BIND", api_bind)
        .env("SWITCHBOARD__CHAT__BIND", chat_bind)
        .env("SWITCHBOARD__STORAGE__DATA_DIR", dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    for (k, v) in &recipe.env {
        cmd.env(k, v);
    }
    if let Some(conf) = &recipe.malloc_conf {
        cmd.env("_RJEM_MALLOC_CONF", conf);
    }
    let mut child = cmd
        .spawn()
        .with_context(|| format!("start {}", recipe.bin.display()))?;
    procs::track(child.id());
    let stdout = child.stdout.take().context("the server's stdout")?;
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
                    let addr = |k: &str| v[k].as_str().unwrap_or_default().to_string();
                    let _ = tx.send((addr("api"), addr("chat")));
                }
            }
            let mut t = tally.lock().unwrap_or_else(|e| e.into_inner());
            match v["level"].as_str().unwrap_or("") {
                "WARN" => t.warn += 1,
                "ERROR" => t.error += 1,
                _ => continue,
            }
            if t.samples.len() < 5 {
                t.samples.push(line.chars().take(400).collect());
            }
        }
    });
    let addrs = rx.recv_timeout(Duration::from_secs(30));
    let parsed = addrs.as_ref().ok().and_then(|(api, chat)| {
        Some((
            api.parse::<SocketAddr>().ok()?,
            chat.parse::<SocketAddr>().ok()?,
        ))
    });
    match parsed {
        Some((api, chat)) => Ok((child, api, chat)),
        None => {
            let _ = child.kill();
            let status = child.wait();
            procs::untrack(child.id());
            match addrs {
                Ok((api, chat)) => bail!("the server logged addresses `{api}` and `{chat}`"),
                Err(_) => bail!(
                    "the server did not log its addresses within 30 s ({})",
                    status.map_or_else(|e| e.to_string(), |s| s.to_string())
                ),
            }
        }
    }
}

/// Waits for `child` to exit, killing it after `patience`.
fn wait_exit(child: &mut Child, patience: Duration) -> std::io::Result<ExitStatus> {
    let deadline = Instant::now() + patience;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if Instant::now() > deadline {
            eprintln!("server ignored SIGTERM for {patience:?}; killing it");
            let _ = child.kill();
            return child.wait();
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A new, empty directory under the system's temp dir.
pub fn fresh_dir(prefix: &str) -> anyhow::Result<PathBuf> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let dir = std::env::temp_dir().join(format!("{prefix}-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    Ok(dir)
}

/// One blocking request on its own connection (`Connection: close`): status and body.
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> std::io::Result<(u16, String)> {
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    let body = body.unwrap_or("");
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut out = Vec::new();
    s.read_to_end(&mut out)?;
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .get(9..12)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{method} {path}: no HTTP response: {text:?}"),
            )
        })?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// The body of `GET /metrics` (Prometheus text), or an empty string if it cannot be read.
pub fn scrape(api: SocketAddr) -> String {
    match request(api, "GET", "/metrics", None) {
        Ok((200, body)) => body,
        _ => String::new(),
    }
}

/// A metric's value summed over its label sets (0 when it has no sample yet).
pub fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        // An empty sum of floats is -0.0.
        .fold(0.0, |a, b| a + b)
}

/// `(sum, count)` of a Prometheus histogram.
pub fn histogram(text: &str, name: &str) -> (f64, f64) {
    (
        metric_sum(text, &format!("{name}_sum")),
        metric_sum(text, &format!("{name}_count")),
    )
}
