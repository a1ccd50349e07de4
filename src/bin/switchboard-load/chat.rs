//! `chat` mode: live chat under load over the real `switchboard.v1` protocol.
//!
//! ```text
//! switchboard-load chat --sessions 10000 --ramp-rate 1000 --msg-rate 1 --duration 60 --spawn-fake-django
//! switchboard-load chat --sessions 19000 --msg-rate 0 --duration 10          # idle: memory per session
//! switchboard-load chat --sessions 2000 --storm --spawn-fake-django          # + a reconnect storm
//! switchboard-load chat --sessions 2000 --msg-rate 2 --duration 30 --restart kill --spawn-fake-django
//!                              # kill -9 mid-run, start again: nothing acked lost (--restart term: SIGTERM;
//!                              # --restarts N: N times)
//! switchboard-load chat --chat-addr 127.0.0.1:4001 --server-pid 1234 …       # a server already running
//! switchboard-load chat --sessions 2000 --agents 20 --msg-rate 1 --duration 10 --spawn-fake-django
//!                                                   # every chat handed to an agent: agent routing
//! switchboard-load chat --sessions 2000 --agents 10 --handoff-rate 0.5 --spawn-fake-django …
//!                                                   # half to agents, half to the AI, side by side
//! ```
//!
//! The parent starts the server (the `switchboard` binary beside this tool, fresh data dir, port
//! 0) unless `--chat-addr` names one, optionally a fake Django (`--spawn-fake-django`), and then
//! worker processes (this tool re-executed as the hidden `worker` subcommand, [`worker`]): as
//! many as the open-files limit needs, each with its share of the sessions, of the ramp rate and
//! of the loopback source addresses (127.0.0.2, .3, …). Phases, each reported live on stderr:
//!
//! 1. **before**: server RSS and `/metrics` before any session;
//! 2. **ramp**: sessions open at `--ramp-rate` (503s from admission control are retried after
//!    their `Retry-After`); **plateau**: RSS once it stops moving;
//! 3. **messages**: each session sends `--msg-rate` messages a second for `--duration`; every
//!    `message.send` is timed to its `message.ack` and to the answer that covers it; with
//!    `--restart kill|term`, the server is killed (SIGKILL) or stopped (SIGTERM) `--restarts`
//!    times (default 1) in this phase and started again on the same data dir and addresses
//!    ([`restart`]): every session reconnects with backoff, resumes, checks that the replay holds
//!    each message it had acknowledged at its seq with no gap or duplicate, sends again what was
//!    neither acknowledged nor replayed, and carries on ([`customer::rejoin`]); per restart, the
//!    time from the signal to each session's resume, acknowledged messages lost, messages sent
//!    again, resumes refused and sessions that never got back (round trips of messages caught in
//!    a restart are left out of the latency figures); with `--restart upgrade` the server is
//!    replaced by `switchboard --takeover` instead, and no session should lose its connection
//!    (a session that does is counted, and resumes as after a restart);
//! 4. **storm** (`--storm`): every connection dropped at once just after one more message, each
//!    resumed with `session.resume` + `last_seq`; time until all are back, and whether that
//!    message and its answer came back in the replay;
//! 5. **close**: `session.close` on every session; **after**: RSS once the sessions are gone.
//!
//! Then a JSON report (`--report`) and a human summary; the server is stopped with SIGTERM.
//!
//! **Agents.** `--agents N` adds N agent connections (`/ws/agent`, [`agent`]), shared over the
//! workers by [`plan`] like the sessions. They sign in with tokens the tool mints (HS256) for the
//! secret it gives the server it starts (`SWITCHBOARD__AGENTS__JWT_SECRET`, random each run;
//! `--agent-secret` for a server already running), each with `--agent-capacity` chats (default:
//! enough for every handed-off session; the started server's `agents.max_capacity` is raised to
//! it) and auto-assignment on. The fake Django's AI answers `handoff: true` for a
//! `--handoff-rate` share of sessions (default 1 with agents: all), picked by a hash of the
//! session id ([`plan::hands_off`]) so each customer knows its fate: a handed-off session asks
//! for a person as soon as it opens, and counts as open (ramp) only once an agent took it
//! (`agent.joined`). In the message phase the agent answers each customer message at once, its
//! reply naming the message and the wall-clock time it was written ([`reply`]). Two figures:
//! `reply_agent`, the customer's round trip (its `message.send` → server → agent → its reply →
//! server → customer, on the customer's monotonic clock), and `agent_to_customer`, one way from
//! the agent's write to the customer's read (wall clock: both run on one machine). Neither has
//! Django in the path. Messages in agent chats never answered are counted lost
//! (`messages.agent_chats`); `--check` also wants every handed-off chat taken and every message in
//! it answered by its agent.

pub mod agent;
pub mod customer;
pub mod events;
pub mod plan;
pub mod reply;
pub mod report;
pub mod restart;
pub mod worker;

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use self::events::Event;
use self::report::{Collected, Sample};
use crate::procs;
use crate::server::{self, Halt, Launch, Server};

/// Keeps the "switchboard starting" line, drops per-session info lines.
const QUIET_LOG: &str = "warn,switchboard=info,switchboard::chat=warn,switchboard::http=warn";

#[derive(Debug, Clone, clap::Args)]
pub struct ChatArgs {
    /// Customer sessions to open.
    #[arg(long, default_value_t = 1000)]
    pub sessions: usize,
    /// Sessions opened per second, over all workers.
    #[arg(long, default_value_t = 1000.0)]
    pub ramp_rate: f64,
    /// Messages per second per session (0: the sessions stay idle).
    #[arg(long, default_value_t = 1.0)]
    pub msg_rate: f64,
    /// Seconds of messages (or of idling, with --msg-rate 0).
    #[arg(long, default_value_t = 20.0)]
    pub duration: f64,
    /// After the messages, drop every connection at once and resume each session.
    #[arg(long)]
    pub storm: bool,
    /// During the messages, take the started server down (`kill`: SIGKILL; `term`: SIGTERM, then
    /// wait for its exit) and start it again on the same data dir and addresses; every session
    /// resumes and checks that nothing acknowledged was lost. `upgrade`: replace it with
    /// `switchboard --takeover` instead; no connection should drop, and a REST prober counts
    /// failed requests.
    #[arg(long, value_enum)]
    pub restart: Option<Halt>,
    /// How many restarts, spread evenly over the message phase.
    #[arg(long, default_value_t = 1, requires = "restart",
          value_parser = clap::value_parser!(u32).range(1..))]
    pub restarts: u32,
    /// Worker processes (at least as many as the open-files limit needs).
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
    /// Most sessions per worker (default: this process's open-files limit less a reserve).
    #[arg(long)]
    pub per_worker: Option<usize>,
    /// Loopback source addresses to spread connections over (127.0.0.2 onwards).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u8).range(1..=250))]
    pub sources: u8,
    /// Start a fake Django (this tool's `fake-django` mode) and point the server at it.
    #[arg(long)]
    pub spawn_fake_django: bool,
    /// Point the server at this Django instead (e.g. a fake Django started by a script).
    #[arg(long)]
    pub django_url: Option<String>,
    /// The fake Django's delay before an AI answer, in ms.
    #[arg(long, default_value_t = 0)]
    pub django_delay_ms: u64,
    /// Drive a server already running at this chat address instead of starting one.
    #[arg(long)]
    pub chat_addr: Option<SocketAddr>,
    /// With --chat-addr and --agents: the agents connect here instead (another node of a
    /// cluster), so every agent→customer message crosses between nodes.
    #[arg(long)]
    pub agent_chat_addr: Option<SocketAddr>,
    /// With --chat-addr: its REST address, for /metrics.
    #[arg(long)]
    pub api_addr: Option<SocketAddr>,
    /// With --chat-addr: its pid, for RSS.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// WebSocket path.
    #[arg(long, default_value = "/ws/chat")]
    pub path: String,
    /// The `switchboard` binary (default: beside this tool).
    #[arg(long)]
    pub server_bin: Option<PathBuf>,
    /// Pin the started server to these CPUs (taskset list, e.g. `0`).
    #[arg(long)]
    pub server_cpus: Option<String>,
    /// Pin the started fake Django to these CPUs.
    #[arg(long)]
    pub django_cpus: Option<String>,
    /// The started server's `sessions.admission_per_sec` and `admission_burst` (default: its own).
    #[arg(long)]
    pub admission_per_sec: Option<u64>,
    /// The started server's `sessions.resume_grace_ms` (default: its own).
    #[arg(long)]
    pub grace_ms: Option<u64>,
    /// `_RJEM_MALLOC_CONF` for the started server.
    #[arg(long)]
    pub malloc_conf: Option<String>,
    /// Server log filter.
    #[arg(long, default_value = QUIET_LOG)]
    pub log: String,
    /// Seconds to wait after the sessions closed before the last RSS sample.
    #[arg(long, default_value_t = 5)]
    pub settle_secs: u64,
    /// Where to write the JSON report (default: a file in the temp dir, named on stdout).
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// A name for this run in the report (e.g. `switchboard`, `baseline`).
    #[arg(long, default_value = "switchboard")]
    pub label: String,
    /// Human agents (`/ws/agent`), spread over the workers like the sessions; each takes the
    /// chats the queue hands it and answers every customer message at once.
    #[arg(long, default_value_t = 0)]
    pub agents: usize,
    /// Chats each agent takes at once (default: enough for every handed-off session). The
    /// started server's `agents.max_capacity` is raised to it.
    #[arg(long)]
    pub agent_capacity: Option<usize>,
    /// Share of sessions (0 to 1) the fake Django's AI hands to a human (default: 1 with --agents,
    /// else 0). Against another Django, the share it hands off by the same rule.
    #[arg(long)]
    pub handoff_rate: Option<f64>,
    /// The agents' token secret (`agents.jwt_secret`) of a server already running; the started
    /// server gets a fresh random one.
    #[arg(long)]
    pub agent_secret: Option<String>,
    /// Exit non-zero unless every session opened, every message was answered (by its agent in
    /// a chat handed off, else by the AI), every handed-off chat was taken by an agent, (with
    /// --storm) every session came back with nothing lost, and (with --restart) every session
    /// resumed after each restart with every acknowledged message in its replay.
    #[arg(long)]
    pub check: bool,
}

impl ChatArgs {
    pub fn handoff_rate(&self) -> f64 {
        self.handoff_rate
            .unwrap_or(if self.agents > 0 { 1.0 } else { 0.0 })
            .clamp(0.0, 1.0)
    }

    pub fn agent_capacity(&self) -> usize {
        self.agent_capacity.unwrap_or_else(|| {
            plan::agent_capacity(self.sessions, self.agents, self.handoff_rate())
        })
    }
}

/// Where the load goes: a server this run started, or one named on the command line.
pub enum Target {
    Started(Server),
    Attached {
        chat: SocketAddr,
        api: Option<SocketAddr>,
        pid: Option<u32>,
    },
}

impl Target {
    fn chat(&self) -> SocketAddr {
        match self {
            Target::Started(s) => s.chat,
            Target::Attached { chat, .. } => *chat,
        }
    }
    fn api(&self) -> Option<SocketAddr> {
        match self {
            Target::Started(s) => Some(s.api),
            Target::Attached { api, .. } => *api,
        }
    }
    fn pid(&self) -> Option<u32> {
        match self {
            Target::Started(s) => Some(s.pid()),
            Target::Attached { pid, .. } => *pid,
        }
    }

    /// CPU seconds the server used, across restarts.
    fn cpu_secs(&self) -> Option<f64> {
        match self {
            Target::Started(s) => Some(s.cpu_secs()),
            Target::Attached { pid, .. } => pid.map(procs::cpu_secs),
        }
    }

    /// Server memory and the chat gauges now.
    fn sample(&self, label: &str, t0: Instant) -> Sample {
        let metrics = self.api().map(server::scrape).filter(|m| !m.is_empty());
        Sample {
            label: label.to_string(),
            at_secs: t0.elapsed().as_secs_f64(),
            rss_kb: self.pid().map(procs::rss_kb),
            fds: self.pid().map(procs::fds),
            sessions: metrics
                .as_deref()
                .map(|m| server::metric_sum(m, "switchboard_chat_sessions")),
            sockets: metrics
                .as_deref()
                .map(|m| server::metric_sum(m, "switchboard_chat_sockets")),
        }
    }

    /// RSS once two half-second samples agree within 64 kB (at most `max`), then a sample.
    fn settled(&self, label: &str, t0: Instant, max: Duration) -> Sample {
        if let Some(pid) = self.pid() {
            procs::plateau_kb(pid, max);
        }
        self.sample(label, t0)
    }
}

/// A child process of this run that speaks lines on stdin/stdout (a worker, the fake Django).
struct Proc {
    child: Child,
    stdin: Option<ChildStdin>,
}

impl Proc {
    fn say(&mut self, word: &str) {
        if let Some(s) = self.stdin.as_mut() {
            // A worker that is gone is noticed by its missing event.
            let _ = writeln!(s, "{word}");
            let _ = s.flush();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stdin = None;
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        procs::untrack(self.child.id());
    }
}

fn spawn_self(
    args: &[String],
    env: &[(&str, &str)],
    cpus: Option<&str>,
) -> anyhow::Result<(Proc, BufReader<std::process::ChildStdout>)> {
    let exe = std::env::current_exe().context("this tool's executable")?;
    let mut cmd = match cpus {
        Some(c) => {
            let mut cmd = Command::new("taskset");
            cmd.args(["-c", c]).arg(exe);
            cmd
        }
        None => Command::new(exe),
    };
    let mut child = cmd
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("start a child of this tool")?;
    procs::track(child.id());
    let out = BufReader::new(child.stdout.take().context("child stdout")?);
    let stdin = child.stdin.take();
    Ok((Proc { child, stdin }, out))
}

/// Starts the fake Django; its base URL.
fn spawn_fake_django(args: &ChatArgs) -> anyhow::Result<(Proc, String)> {
    let (proc, mut out) = spawn_self(
        &[
            "fake-django".into(),
            "--exit-on-stdin-eof".into(),
            "--delay-ms".into(),
            args.django_delay_ms.to_string(),
            "--handoff-rate".into(),
            args.handoff_rate().to_string(),
        ],
        &[],
        args.django_cpus.as_deref(),
    )?;
    let mut line = String::new();
    out.read_line(&mut line)
        .context("the fake Django's address")?;
    let Some(addr) = line.trim().strip_prefix("listening ") else {
        bail!("the fake Django said `{}`", line.trim());
    };
    Ok((proc, format!("http://{addr}")))
}

pub fn run(args: ChatArgs) -> anyhow::Result<()> {
    if args.sessions == 0 {
        bail!("--sessions must be at least 1");
    }
    let handoff_rate = args.handoff_rate();
    let capacity = args.agent_capacity();
    if handoff_rate > 0.0 && args.agents == 0 {
        bail!("--handoff-rate needs --agents: a chat handed off waits for a human");
    }
    if args.restart.is_some() {
        if args.chat_addr.is_some() {
            bail!("--restart restarts the server this run starts: not with --chat-addr");
        }
        if args.agents > 0 {
            bail!("--restart drives customers only: agents would have to resume too");
        }
        if args.duration <= 0.0 {
            bail!("--restart happens during the messages: --duration must be above 0");
        }
    }
    if args.agents > 0 && handoff_rate >= 1.0 && args.agents * capacity < args.sessions {
        bail!(
            "{} agents × capacity {capacity} cannot hold the {} sessions handed off",
            args.agents,
            args.sessions
        );
    }
    let agent_secret = match (&args.agent_secret, args.chat_addr) {
        (Some(s), _) => s.clone(),
        (None, None) => {
            use rand::Rng;
            rand::rng()
                .sample_iter(rand::distr::Alphanumeric)
                .take(48)
                .map(char::from)
                .collect()
        }
        (None, Some(_)) if args.agents > 0 => {
            bail!("--agents against a server already running needs its --agent-secret")
        }
        (None, Some(_)) => String::new(),
    };
    let restarts = if args.restart.is_some() {
        args.restarts
    } else {
        0
    };
    let nofile = procs::raise_nofile();
    let plan = plan::plan(
        args.sessions,
        args.agents,
        args.workers,
        args.per_worker,
        nofile,
        args.sources,
    );
    let budget = Duration::from_secs_f64(
        args.sessions as f64 / args.ramp_rate.max(0.001)
            + args.duration
            + 600.0
            + 180.0 * f64::from(restarts),
    );
    procs::watchdog("switchboard-load chat", budget);

    let mut django = None;
    let django_url = if args.spawn_fake_django {
        let (p, url) = spawn_fake_django(&args)?;
        django = Some(p);
        Some(url)
    } else {
        args.django_url.clone()
    };
    let mut target = match args.chat_addr {
        Some(chat) => Target::Attached {
            chat,
            api: args.api_addr,
            pid: args.server_pid,
        },
        None => {
            let bin = server::locate(args.server_bin.as_deref())?;
            let mut env = Vec::new();
            if let Some(url) = &django_url {
                env.push(("SWITCHBOARD__DJANGO__BASE_URL".to_string(), url.clone()));
            }
            if let Some(n) = args.admission_per_sec {
                env.push((
                    "SWITCHBOARD__SESSIONS__ADMISSION_PER_SEC".into(),
                    n.to_string(),
                ));
                env.push((
                    "SWITCHBOARD__SESSIONS__ADMISSION_BURST".into(),
                    n.to_string(),
                ));
            }
            if args.agents > 0 {
                env.push((
                    "SWITCHBOARD__AGENTS__JWT_SECRET".into(),
                    agent_secret.clone(),
                ));
                // The server refuses an `agent.start` capacity above its ceiling.
                env.push((
                    "SWITCHBOARD__AGENTS__MAX_CAPACITY".into(),
                    capacity.max(20).to_string(),
                ));
            }
            if let Some(ms) = args.grace_ms {
                env.push((
                    "SWITCHBOARD__SESSIONS__RESUME_GRACE_MS".into(),
                    ms.to_string(),
                ));
            }
            Target::Started(Server::start(&Launch {
                bin: &bin,
                log: &args.log,
                env,
                malloc_conf: args.malloc_conf.as_deref(),
                cpus: args.server_cpus.as_deref(),
            })?)
        }
    };
    eprintln!(
        "chat: {} sessions over {} worker(s) (≤ {} each, open-files limit {nofile}), {} source addresses; \
         target {}{}{}",
        args.sessions,
        plan.workers.len(),
        plan.per_worker,
        args.sources,
        target.chat(),
        django_url.as_deref().map(|u| format!(", Django {u}")).unwrap_or_default(),
        if args.agents > 0 {
            format!(
                "; {} agents × capacity {capacity}, handoff rate {handoff_rate}",
                args.agents
            )
        } else {
            String::new()
        }
    );

    let t0 = Instant::now();
    std::thread::sleep(Duration::from_millis(500));
    let mut collected = Collected::new(&args, &plan, nofile);
    collected
        .samples
        .push(target.settled("before", t0, Duration::from_secs(5)));

    // Workers and their event streams.
    let (tx, rx) = mpsc::channel::<(usize, Event)>();
    let mut workers = Vec::new();
    for w in &plan.workers {
        let ramp = args.ramp_rate * w.sessions as f64 / args.sessions as f64;
        let sources: Vec<String> = w.sources.iter().map(|a| a.to_string()).collect();
        let (proc, out) = spawn_self(
            &[
                "worker".into(),
                "--chat".into(),
                target.chat().to_string(),
                "--path".into(),
                args.path.clone(),
                "--worker".into(),
                w.index.to_string(),
                "--sessions".into(),
                w.sessions.to_string(),
                "--sources".into(),
                sources.join(","),
                "--ramp-rate".into(),
                ramp.to_string(),
                "--msg-rate".into(),
                args.msg_rate.to_string(),
                "--duration-secs".into(),
                args.duration.to_string(),
                "--agents".into(),
                w.agents.to_string(),
                "--agent-capacity".into(),
                capacity.to_string(),
                "--handoff-rate".into(),
                handoff_rate.to_string(),
                "--restarts".into(),
                restarts.to_string(),
            ]
            .into_iter()
            .chain(
                args.agent_chat_addr
                    .map(|a| vec!["--agent-chat".into(), a.to_string()])
                    .unwrap_or_default(),
            )
            .collect::<Vec<String>>(),
            &[(worker::AGENT_SECRET_ENV, agent_secret.as_str())],
            None,
        )?;
        let tx = tx.clone();
        let index = w.index;
        std::thread::spawn(move || {
            for line in out.lines().map_while(Result::ok) {
                match serde_json::from_str::<Event>(&line) {
                    Ok(ev) => {
                        if tx.send((index, ev)).is_err() {
                            return;
                        }
                    }
                    Err(_) => eprintln!("worker {index}: {line}"),
                }
            }
        });
        workers.push(proc);
    }
    drop(tx);
    let mut phases = report::Phases::new(workers.len());

    // Ramp.
    let ramp_started = Instant::now();
    let ready = phases.wait(&rx, "ready", &target, t0, |e| matches!(e, Event::Ready(_)))?;
    collected.ramp(ready, ramp_started.elapsed());
    collected
        .samples
        .push(target.settled("plateau", t0, Duration::from_secs(30)));

    // Messages.
    let cpu0 = target.cpu_secs();
    let me0 = procs::cpu_secs(std::process::id());
    let msg_started = Instant::now();
    for w in &mut workers {
        w.say("go");
    }
    let done = match args.restart {
        Some(halt) => {
            let schedule = restart::Schedule {
                halt,
                count: restarts,
                over: Duration::from_secs_f64(args.duration),
            };
            let (done, records) = restart::messages(
                &mut phases,
                &rx,
                &mut target,
                &mut workers,
                t0,
                msg_started,
                schedule,
            )?;
            collected.restarts = restart::report(halt, &records);
            done
        }
        None => phases.wait(&rx, "messages", &target, t0, |e| {
            matches!(e, Event::Done(_))
        })?,
    };
    let wall = msg_started.elapsed().as_secs_f64();
    collected.messages(done, wall);
    collected.server_cpu_percent = match (cpu0, target.cpu_secs()) {
        (Some(c0), Some(c1)) => Some((c1 - c0) / wall * 100.0),
        _ => None,
    };
    collected.samples.push(target.sample("after messages", t0));

    // Storm.
    if args.storm {
        let storm_started = Instant::now();
        for w in &mut workers {
            w.say("storm");
        }
        let storm = phases.wait(&rx, "storm", &target, t0, |e| matches!(e, Event::Storm(_)))?;
        collected.storm(storm, storm_started.elapsed());
        collected.samples.push(target.sample("after storm", t0));
    }

    // Close.
    for w in &mut workers {
        w.say("close");
    }
    let closed = phases.wait(&rx, "close", &target, t0, |e| matches!(e, Event::Closed(_)))?;
    collected.closed(closed);
    collected.client_cpu_percent = {
        // Workers are this tool too; their CPU is theirs, read before they exit.
        let workers_cpu: f64 = workers.iter().map(|w| procs::cpu_secs(w.child.id())).sum();
        Some((procs::cpu_secs(std::process::id()) - me0 + workers_cpu) / wall * 100.0)
    };
    drop(workers);
    // Sessions gone (the gauge reads 0), then memory settled.
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let s = target.sample("", t0);
        if s.sessions.map_or(true, |n| n <= 0.0) {
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    collected
        .samples
        .push(target.settled("after close", t0, Duration::from_secs(15)));
    std::thread::sleep(Duration::from_secs(args.settle_secs));
    collected.samples.push(target.sample("settled", t0));

    if let Target::Started(server) = target {
        let (warn, error) = server.log_counts();
        collected.server_log = Some((warn, error, server.log_samples()));
        let status = server.stop(Duration::from_secs(30));
        collected.server_exit = Some(status.to_string());
    }
    drop(django);

    let report = collected.to_json();
    let path = match &args.report {
        Some(p) => p.clone(),
        None => std::env::temp_dir().join(format!(
            "switchboard-load-chat-{}-{}.json",
            args.label,
            std::process::id()
        )),
    };
    std::fs::write(&path, serde_json::to_string_pretty(&report)?)
        .with_context(|| format!("write {}", path.display()))?;
    println!("{}", report::summary(&report));
    println!("report: {}", path.display());
    if args.check {
        report::check(&report, args.storm)?;
    }
    Ok(())
}
