//! One worker process of `chat`: the tool re-executed as `switchboard-load worker …` by the
//! parent, so that the sessions of a run can outnumber one process's open files. It opens its
//! share of the sessions at its share of the ramp rate, one task each on a single-threaded
//! runtime, and moves them through the phases the parent names on stdin (`go`, `storm`,
//! `close`), reporting [`Event`]s on stdout. During the message phase the parent may announce a
//! server restart (`restart N`, then `killed N UNIX_NANOS` once it signalled the server): the
//! worker arms it before answering, so that its sessions take the lost connections for the
//! restart, and reports it once every session is back or given up. Its share of the agents signs
//! in first, one task each ([`agent`]), and stays until the worker ends. It exits when its stdin
//! closes.

use std::cell::RefCell;
use std::io::{BufRead, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::rc::Rc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::time::Instant;

use super::agent::{self, AgentConfig};
use super::customer::rejoin::REJOIN_DEADLINE;
use super::customer::{self, Config, Phase, Shared, Stats};
use super::events::{buckets, Event, StormTally, Tally};
use crate::procs;

/// Connects in flight per worker: enough to ramp fast, few enough not to overflow the listen
/// backlog (`net.core.somaxconn` is 4096 here).
const CONNECTS_IN_FLIGHT: usize = 256;

/// Time a restart may add to the message phase: every session's way back, and then some.
const RESTART_ALLOWANCE: Duration = Duration::from_secs(REJOIN_DEADLINE.as_secs() + 60);

/// The environment variable the parent passes the agents' token secret in (kept off the command
/// line, where `ps` would show it).
pub const AGENT_SECRET_ENV: &str = "SWITCHBOARD_LOAD_AGENT_SECRET";

#[derive(Debug, Clone, clap::Args)]
pub struct WorkerArgs {
    #[arg(long)]
    pub chat: SocketAddr,
    /// Where the agents connect (default: `--chat`).
    #[arg(long)]
    pub agent_chat: Option<SocketAddr>,
    #[arg(long, default_value = "/ws/chat")]
    pub path: String,
    /// This worker's number (in client ids, so they are unique across workers).
    #[arg(long)]
    pub worker: usize,
    #[arg(long)]
    pub sessions: usize,
    /// Comma-separated loopback source addresses.
    #[arg(long, value_delimiter = ',')]
    pub sources: Vec<Ipv4Addr>,
    /// This worker's share of the ramp, sessions per second.
    #[arg(long)]
    pub ramp_rate: f64,
    #[arg(long)]
    pub msg_rate: f64,
    #[arg(long)]
    pub duration_secs: f64,
    /// Agent connections this worker holds (token secret in [`AGENT_SECRET_ENV`]).
    #[arg(long, default_value_t = 0)]
    pub agents: usize,
    #[arg(long, default_value_t = 1)]
    pub agent_capacity: usize,
    #[arg(long, default_value = "/ws/agent")]
    pub agent_path: String,
    /// Share of sessions the AI hands to a human.
    #[arg(long, default_value_t = 0.0)]
    pub handoff_rate: f64,
    /// Server restarts the parent will make during the message phase.
    #[arg(long, default_value_t = 0)]
    pub restarts: u32,
}

pub fn run(args: WorkerArgs) -> anyhow::Result<()> {
    procs::raise_nofile();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("runtime")?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, work(args))
}

fn emit(event: &Event) {
    let mut out = std::io::stdout().lock();
    // The parent reads these; if it is gone, the next stdin read ends this worker anyway.
    let _ = serde_json::to_writer(&mut out, event);
    let _ = writeln!(out);
    let _ = out.flush();
}

async fn work(args: WorkerArgs) -> anyhow::Result<()> {
    let shared = Rc::new(Shared {
        config: Config {
            chat: args.chat,
            agent_chat: args.agent_chat.unwrap_or(args.chat),
            path: args.path.clone(),
            worker: args.worker,
            sources: if args.sources.is_empty() {
                vec![Ipv4Addr::new(127, 0, 0, 1)]
            } else {
                args.sources.clone()
            },
            msg_rate: args.msg_rate,
            duration: Duration::from_secs_f64(args.duration_secs.max(0.0)),
            count: args.sessions,
            handoff_rate: args.handoff_rate,
            restarts: args.restarts,
        },
        stats: RefCell::new(Stats::new()),
        connect_gate: Semaphore::new(CONNECTS_IN_FLIGHT),
    });
    if args.agents > 0 {
        let cfg = Rc::new(AgentConfig {
            path: args.agent_path.clone(),
            capacity: args.agent_capacity,
            secret: std::env::var(AGENT_SECRET_ENV)
                .with_context(|| format!("{AGENT_SECRET_ENV} (the agents' token secret)"))?,
            token_ttl: Duration::from_secs_f64(args.duration_secs.max(0.0))
                + Duration::from_secs(24 * 3600),
        });
        for i in 0..args.agents {
            let (shared, cfg) = (shared.clone(), cfg.clone());
            tokio::task::spawn_local(async move { agent::run(&shared, &cfg, i).await });
        }
    }
    let (phase_tx, phase_rx) = watch::channel(Phase::Idle);
    let t0 = Instant::now();
    let rate = args.ramp_rate.max(0.001);
    for i in 0..args.sessions {
        let open_at = t0 + Duration::from_secs_f64(i as f64 / rate);
        tokio::task::spawn_local(customer::run(shared.clone(), i, open_at, phase_rx.clone()));
    }
    drop(phase_rx);

    // Stdin, line by line, from a thread.
    let (tx, mut commands) = mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines().map_while(Result::ok) {
            if tx.send(line.trim().to_string()).is_err() {
                return;
            }
        }
    });

    wait_phase(&shared, 0, Duration::from_secs(3600), args.agents as u64).await;
    emit(&Event::Ready(shared.stats.borrow().counters.clone()));
    while let Some(cmd) = commands.recv().await {
        let mut words = cmd.split_whitespace();
        match words.next().unwrap_or_default() {
            "go" => {
                let start = Instant::now() + Duration::from_millis(100);
                let _ = phase_tx.send(Phase::Go { start });
                let limit = Duration::from_secs_f64(args.duration_secs.max(0.0))
                    + Duration::from_secs(30)
                    + RESTART_ALLOWANCE * args.restarts;
                // In its own task: restarts are announced while the messages go on.
                let shared = shared.clone();
                tokio::task::spawn_local(async move {
                    let timed_out = !wait_phase(&shared, 1, limit, 0).await;
                    emit(&Event::Done(tally(&shared.stats.borrow(), timed_out)));
                });
            }
            "restart" => {
                let Some(n) = words.next().and_then(|w| w.parse::<u32>().ok()) else {
                    continue;
                };
                let upgrade = words.next() == Some("upgrade");
                shared.stats.borrow_mut().arm(n, upgrade);
                emit(&Event::Armed { restart: n });
                tokio::task::spawn_local(report_restart(shared.clone(), n));
            }
            "killed" => {
                let n = words.next().and_then(|w| w.parse::<u32>().ok());
                let at = words.next().and_then(|w| w.parse::<u128>().ok());
                if let (Some(n), Some(at)) = (n, at) {
                    let mut stats = shared.stats.borrow_mut();
                    if let Some(r) = stats.restart(n) {
                        r.killed_at = Some(at);
                        if r.upgrade {
                            stats.upgrades_over = stats.upgrades_over.max(n);
                        }
                    }
                }
            }
            "storm" => {
                let _ = phase_tx.send(Phase::Storm { at: Instant::now() });
                let timed_out = !wait_phase(&shared, 2, Duration::from_secs(120), 0).await;
                emit(&Event::Storm(storm_tally(
                    &shared.stats.borrow(),
                    timed_out,
                )));
            }
            "close" => {
                let _ = phase_tx.send(Phase::Close);
                wait_phase(&shared, 3, Duration::from_secs(30), 0).await;
                emit(&Event::Closed(shared.stats.borrow().counters.clone()));
            }
            _ => {}
        }
    }
    Ok(())
}

/// Emits [`Event::Restarted`] for restart `n` once every session open at it is back or given up
/// (or after [`RESTART_ALLOWANCE`]).
async fn report_restart(shared: Rc<Shared>, n: u32) {
    let deadline = Instant::now() + RESTART_ALLOWANCE;
    loop {
        let settled = shared
            .stats
            .borrow_mut()
            .restart(n)
            .is_some_and(|r| r.settled());
        let timed_out = Instant::now() >= deadline;
        if settled || timed_out {
            let tally = shared
                .stats
                .borrow_mut()
                .restart(n)
                .map(|r| r.tally(n, timed_out))
                .unwrap_or_default();
            emit(&Event::Restarted(tally));
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Reports progress every half second until every session is through `phase` and `agents` agents
/// are signed in or given up; false if `limit` passed first.
async fn wait_phase(shared: &Shared, phase: usize, limit: Duration, agents: u64) -> bool {
    let deadline = Instant::now() + limit;
    let total = shared.config.count as u64;
    loop {
        let through = {
            let s = shared.stats.borrow();
            s.completed[phase] >= total && s.agents_done >= agents
        };
        if through {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        emit(&Event::Progress(shared.stats.borrow().counters.clone()));
    }
}

fn tally(s: &Stats, timed_out: bool) -> Tally {
    Tally {
        counters: s.counters.clone(),
        outcome: s.outcome.clone(),
        ack_us: buckets(&s.ack),
        reply_ai_us: buckets(&s.reply_ai),
        reply_agent_us: buckets(&s.reply_agent),
        agent_to_customer_us: buckets(&s.agent_to_customer),
        timed_out,
    }
}

fn storm_tally(s: &Stats, timed_out: bool) -> StormTally {
    let st = &s.storm;
    StormTally {
        dropped: st.dropped,
        resumed: st.resumed,
        refused: st.refused,
        failed: st.failed,
        retries: st.retries,
        sent: st.sent,
        delivered: st.delivered,
        replied: st.replied,
        replied_system: st.replied_system,
        resume_us: st.resume.as_ref().map(buckets).unwrap_or_default(),
        first_error: st.first_error.clone(),
        timed_out,
    }
}
