//! What a `chat` run found: the workers' events gathered (live progress on stderr while a phase
//! runs), merged into one JSON report, printed as a human summary, checked (`--check`), and two
//! reports compared (`compare`: switchboard ÷ baseline).

use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use hdrhistogram::Histogram;
use serde_json::{json, Value};

use super::events::{histogram, merge, AgentCounters, Counters, Event, StormTally, Tally};
use super::plan::Plan;
use super::{ChatArgs, Target};

/// Server memory and chat gauges at one moment of the run.
#[derive(Debug, Clone)]
pub struct Sample {
    pub label: String,
    pub at_secs: f64,
    pub rss_kb: Option<u64>,
    /// The server's open descriptors: what the open-files ceiling counts.
    pub fds: Option<usize>,
    pub sessions: Option<f64>,
    pub sockets: Option<f64>,
}

/// Waits for one event of a kind from every worker, showing the summed progress meanwhile.
pub struct Phases {
    workers: usize,
    progress: Vec<Counters>,
    shown: Instant,
}

impl Phases {
    pub fn new(workers: usize) -> Self {
        Phases {
            workers,
            progress: vec![Counters::default(); workers],
            shown: Instant::now(),
        }
    }

    pub fn wait(
        &mut self,
        rx: &mpsc::Receiver<(usize, Event)>,
        name: &str,
        target: &Target,
        t0: Instant,
        is_end: impl Fn(&Event) -> bool,
    ) -> anyhow::Result<Vec<Event>> {
        let mut ends: Vec<Option<Event>> = vec![None; self.workers];
        while ends.iter().any(Option::is_none) {
            let Some((w, ev)) = self.next(rx, name, target, t0, None)? else {
                continue;
            };
            if is_end(&ev) {
                ends[w] = Some(ev);
            }
        }
        self.show(name, target, t0);
        Ok(ends.into_iter().flatten().collect())
    }

    /// The next event other than progress, from whichever worker; `None` once `until` passed.
    /// Progress is shown every second meanwhile.
    pub fn next(
        &mut self,
        rx: &mpsc::Receiver<(usize, Event)>,
        name: &str,
        target: &Target,
        t0: Instant,
        until: Option<Instant>,
    ) -> anyhow::Result<Option<(usize, Event)>> {
        loop {
            let mut wait = Duration::from_secs(1);
            if let Some(u) = until {
                let left = u.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Ok(None);
                }
                wait = wait.min(left);
            }
            let got = match rx.recv_timeout(wait) {
                Ok(x) => Some(x),
                Err(mpsc::RecvTimeoutError::Timeout) => None,
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    bail!("every worker exited during the {name} phase")
                }
            };
            if let Some((w, ev)) = &got {
                match ev {
                    Event::Progress(c) | Event::Ready(c) | Event::Closed(c) => {
                        self.progress[*w] = c.clone()
                    }
                    Event::Done(t) => self.progress[*w] = t.counters.clone(),
                    Event::Storm(_) | Event::Armed { .. } | Event::Restarted(_) => {}
                }
            }
            if self.shown.elapsed() >= Duration::from_secs(1) {
                self.show(name, target, t0);
                self.shown = Instant::now();
            }
            match got {
                Some((_, Event::Progress(_))) | None => continue,
                Some(x) => return Ok(Some(x)),
            }
        }
    }

    fn show(&self, name: &str, target: &Target, t0: Instant) {
        let sum = |f: fn(&Counters) -> u64| self.progress.iter().map(f).sum::<u64>();
        let rss = target
            .pid()
            .map(|p| {
                format!(
                    " | server RSS {:.1} MiB",
                    crate::procs::rss_kb(p) as f64 / 1024.0
                )
            })
            .unwrap_or_default();
        let agents = if self
            .progress
            .iter()
            .any(|c| c.handed_off > 0 || c.agents.connected > 0)
        {
            format!(
                " | agents {} chats taken {}/{}",
                sum(|c| c.agents.connected),
                sum(|c| c.assigned),
                sum(|c| c.handed_off)
            )
        } else {
            String::new()
        };
        eprintln!(
            "[{:>6.1} s] {name:<8} open {} failed {} retried {}{agents} | sent {} acked {} answered {} | resumed {} closed {} dropped {}{rss}",
            t0.elapsed().as_secs_f64(),
            sum(|c| c.opened),
            sum(|c| c.failed),
            sum(|c| c.retries),
            sum(|c| c.sent),
            sum(|c| c.acked),
            sum(|c| c.replied),
            sum(|c| c.resumed),
            sum(|c| c.closed),
            sum(|c| c.dropped),
        );
    }
}

/// Everything a run gathered, merged over workers.
pub struct Collected {
    config: Value,
    pub samples: Vec<Sample>,
    ramp: Value,
    opened: u64,
    messages: Value,
    ack: Histogram<u64>,
    reply_ai: Histogram<u64>,
    reply_agent: Histogram<u64>,
    agent_to_customer: Histogram<u64>,
    agents: Value,
    storm: Value,
    /// What the restarts of the message phase did ([`super::restart::report`]).
    pub restarts: Value,
    closed: Value,
    pub server_cpu_percent: Option<f64>,
    pub client_cpu_percent: Option<f64>,
    pub server_log: Option<(u64, u64, Vec<String>)>,
    pub server_exit: Option<String>,
}

pub(super) fn first_error<'a>(errors: impl Iterator<Item = &'a Option<String>>) -> Value {
    errors.flatten().next().map_or(Value::Null, |e| json!(e))
}

impl Collected {
    pub fn new(args: &ChatArgs, plan: &Plan, nofile: u64) -> Self {
        let mem_total_kb = std::fs::read_to_string("/proc/meminfo")
            .unwrap_or_default()
            .lines()
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok());
        let config = json!({
            "label": args.label,
            "command": std::env::args().collect::<Vec<_>>().join(" "),
            "started_unix": std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            "machine": {
                "nproc": std::thread::available_parallelism().map_or(0, |n| n.get()),
                "mem_total_kb": mem_total_kb,
                "open_files_limit": nofile,
            },
            "sessions": args.sessions,
            "ramp_rate": args.ramp_rate,
            "msg_rate": args.msg_rate,
            "duration_secs": args.duration,
            "storm": args.storm,
            "restart": args.restart.map(|h| h.name()),
            "restarts": if args.restart.is_some() { args.restarts } else { 0 },
            "workers": plan.workers.len(),
            "per_worker_max": plan.per_worker,
            "sources": args.sources,
            "target": match args.chat_addr {
                Some(a) => format!("attached {a}"),
                None => "started".to_string(),
            },
            "fake_django": args.spawn_fake_django,
            "agents": args.agents,
            "agent_capacity": args.agent_capacity(),
            "handoff_rate": args.handoff_rate(),
        });
        Collected {
            config,
            samples: Vec::new(),
            ramp: Value::Null,
            opened: 0,
            messages: Value::Null,
            ack: histogram(),
            reply_ai: histogram(),
            reply_agent: histogram(),
            agent_to_customer: histogram(),
            agents: Value::Null,
            storm: Value::Null,
            restarts: Value::Null,
            closed: Value::Null,
            server_cpu_percent: None,
            client_cpu_percent: None,
            server_log: None,
            server_exit: None,
        }
    }

    pub fn ramp(&mut self, events: Vec<Event>, took: Duration) {
        let c: Vec<Counters> = events
            .into_iter()
            .filter_map(|e| match e {
                Event::Ready(c) => Some(c),
                _ => None,
            })
            .collect();
        self.opened = c.iter().map(|c| c.opened).sum();
        self.ramp = json!({
            "opened": self.opened,
            "failed": c.iter().map(|c| c.failed).sum::<u64>(),
            "retries_503": c.iter().map(|c| c.retries).sum::<u64>(),
            "handed_off": c.iter().map(|c| c.handed_off).sum::<u64>(),
            "assigned": c.iter().map(|c| c.assigned).sum::<u64>(),
            "agents_connected": c.iter().map(|c| c.agents.connected).sum::<u64>(),
            "agents_failed": c.iter().map(|c| c.agents.failed).sum::<u64>(),
            "seconds": took.as_secs_f64(),
            "first_error": first_error(c.iter().map(|c| &c.first_error)),
        });
    }

    pub fn messages(&mut self, events: Vec<Event>, wall: f64) {
        let t: Vec<Tally> = events
            .into_iter()
            .filter_map(|e| match e {
                Event::Done(t) => Some(t),
                _ => None,
            })
            .collect();
        for x in &t {
            merge(&mut self.ack, &x.ack_us);
            merge(&mut self.reply_ai, &x.reply_ai_us);
            merge(&mut self.reply_agent, &x.reply_agent_us);
            merge(&mut self.agent_to_customer, &x.agent_to_customer_us);
        }
        let agents: Vec<&AgentCounters> = t.iter().map(|x| &x.counters.agents).collect();
        let asum = |f: fn(&AgentCounters) -> u64| agents.iter().map(|a| f(a)).sum::<u64>();
        if asum(|a| a.connected + a.failed) > 0 {
            self.agents = json!({
                "connected": asum(|a| a.connected),
                "failed": asum(|a| a.failed),
                "chats_assigned": asum(|a| a.assigned),
                "chats_released": asum(|a| a.released),
                "customer_messages": asum(|a| a.events),
                "replies_sent": asum(|a| a.replied),
                "replies_acked": asum(|a| a.acked),
                "stray_messages": asum(|a| a.stray),
                "queue_and_presence_frames": asum(|a| a.broadcasts),
                "error_frames": asum(|a| a.error_frames),
                "dropped_connections": asum(|a| a.dropped),
                "first_error": first_error(agents.iter().map(|a| &a.first_error)),
            });
        }
        let sum = |f: fn(&Tally) -> u64| t.iter().map(f).sum::<u64>();
        let sent = sum(|x| x.counters.sent);
        let answered =
            sum(|x| x.outcome.replies_ai + x.outcome.replies_agent + x.outcome.replies_system);
        self.messages = json!({
            "seconds": wall,
            "sent": sent,
            "acked": sum(|x| x.counters.acked),
            "replies": {
                "ai": sum(|x| x.outcome.replies_ai),
                "agent": sum(|x| x.outcome.replies_agent),
                "system": sum(|x| x.outcome.replies_system),
            },
            "unacked": sum(|x| x.outcome.unacked),
            "unanswered": sum(|x| x.outcome.unanswered),
            "lost": sent.saturating_sub(answered),
            "agent_chats": {
                "sent": sum(|x| x.outcome.agent_chat_sent),
                "answered": sum(|x| x.outcome.replies_agent),
                "lost": sum(|x| x.outcome.agent_chat_lost),
            },
            "error_frames": sum(|x| x.outcome.error_frames),
            "dropped_connections": sum(|x| x.counters.dropped),
            "pings": sum(|x| x.outcome.pings),
            "timed_out": t.iter().any(|x| x.timed_out),
            "first_error": first_error(t.iter().map(|x| &x.counters.first_error)),
        });
    }

    pub fn storm(&mut self, events: Vec<Event>, took: Duration) {
        let t: Vec<StormTally> = events
            .into_iter()
            .filter_map(|e| match e {
                Event::Storm(t) => Some(t),
                _ => None,
            })
            .collect();
        let mut resume = histogram();
        for x in &t {
            merge(&mut resume, &x.resume_us);
        }
        let sum = |f: fn(&StormTally) -> u64| t.iter().map(f).sum::<u64>();
        let sent = sum(|x| x.sent);
        self.storm = json!({
            "dropped": sum(|x| x.dropped),
            "resumed": sum(|x| x.resumed),
            "refused": sum(|x| x.refused),
            "failed": sum(|x| x.failed),
            "retries_503": sum(|x| x.retries),
            "all_back_ms": resume.max() as f64 / 1000.0,
            "phase_seconds": took.as_secs_f64(),
            "resume_ms": percentiles(&resume),
            "messages_sent_before_drop": sent,
            "delivered": sum(|x| x.delivered),
            "answered": sum(|x| x.replied),
            "answered_by_system": sum(|x| x.replied_system),
            "lost": sent.saturating_sub(sum(|x| x.delivered)),
            "timed_out": t.iter().any(|x| x.timed_out),
            "first_error": first_error(t.iter().map(|x| &x.first_error)),
        });
    }

    pub fn closed(&mut self, events: Vec<Event>) {
        let c: Vec<Counters> = events
            .into_iter()
            .filter_map(|e| match e {
                Event::Closed(c) => Some(c),
                _ => None,
            })
            .collect();
        self.closed = json!({ "closed": c.iter().map(|c| c.closed).sum::<u64>() });
    }

    pub fn to_json(&self) -> Value {
        let find = |label: &str| self.samples.iter().find(|s| s.label == label);
        let rss = |label: &str| find(label).and_then(|s| s.rss_kb);
        let per_session = match (rss("before"), rss("plateau")) {
            (Some(b), Some(p)) if self.opened > 0 => {
                json!((p as f64 - b as f64) * 1024.0 / self.opened as f64)
            }
            _ => Value::Null,
        };
        let after_over_before = match (rss("before"), rss("after close")) {
            (Some(b), Some(a)) if b > 0 => json!(a as f64 / b as f64),
            _ => Value::Null,
        };
        let samples: Vec<Value> = self
            .samples
            .iter()
            .map(|s| {
                json!({
                    "label": s.label,
                    "at_secs": s.at_secs,
                    "rss_kb": s.rss_kb,
                    "server_fds": s.fds,
                    "chat_sessions": s.sessions,
                    "chat_sockets": s.sockets,
                })
            })
            .collect();
        let mut rtt = json!({
            "ack": percentiles(&self.ack),
            "reply_ai": percentiles(&self.reply_ai),
        });
        if !self.reply_agent.is_empty() {
            rtt["reply_agent"] = percentiles(&self.reply_agent);
            rtt["agent_to_customer"] = percentiles(&self.agent_to_customer);
        }
        json!({
            "tool": "switchboard-load chat",
            "config": self.config,
            "ramp": self.ramp,
            "messages": self.messages,
            "rtt_ms": rtt,
            "agents": self.agents,
            "storm": self.storm,
            "restarts": self.restarts,
            "close": self.closed,
            "memory": {
                "samples": samples,
                "bytes_per_session": per_session,
                "after_close_over_before": after_over_before,
            },
            "cpu_percent": {
                "server_during_messages": self.server_cpu_percent,
                "load_tool": self.client_cpu_percent,
            },
            "server": {
                "exit": self.server_exit,
                "log_warnings": self.server_log.as_ref().map(|l| l.0),
                "log_errors": self.server_log.as_ref().map(|l| l.1),
                "log_samples": self.server_log.as_ref().map(|l| l.2.clone()),
            },
        })
    }
}

/// p50, p95, p99, p99.9 and max in milliseconds.
pub(super) fn percentiles(h: &Histogram<u64>) -> Value {
    let ms = |us: u64| us as f64 / 1000.0;
    json!({
        "count": h.len(),
        "p50": ms(h.value_at_quantile(0.50)),
        "p95": ms(h.value_at_quantile(0.95)),
        "p99": ms(h.value_at_quantile(0.99)),
        "p99_9": ms(h.value_at_quantile(0.999)),
        "max": ms(h.max()),
        "mean": h.mean() / 1000.0,
    })
}

fn line(name: &str, p: &Value) -> String {
    format!(
        "{name:<14} n {:>9}  p50 {:>8.3}  p95 {:>8.3}  p99 {:>8.3}  p99.9 {:>8.3}  max {:>8.3} ms",
        p["count"].as_u64().unwrap_or(0),
        p["p50"].as_f64().unwrap_or(0.0),
        p["p95"].as_f64().unwrap_or(0.0),
        p["p99"].as_f64().unwrap_or(0.0),
        p["p99_9"].as_f64().unwrap_or(0.0),
        p["max"].as_f64().unwrap_or(0.0),
    )
}

/// The report in a few lines, for a person.
pub fn summary(r: &Value) -> String {
    let mut out = Vec::new();
    let c = &r["config"];
    out.push(format!(
        "\n## switchboard-load chat ({}): {} sessions, {} msg/s each for {} s, ramp {}/s, {} worker(s)",
        c["label"].as_str().unwrap_or(""),
        c["sessions"],
        c["msg_rate"],
        c["duration_secs"],
        c["ramp_rate"],
        c["workers"]
    ));
    let ramp = &r["ramp"];
    out.push(format!(
        "ramp: {} opened, {} failed, {} handshakes retried after 503, {:.1} s{}",
        ramp["opened"],
        ramp["failed"],
        ramp["retries_503"],
        ramp["seconds"].as_f64().unwrap_or(0.0),
        ramp["first_error"]
            .as_str()
            .map(|e| format!("; first error: {e}"))
            .unwrap_or_default()
    ));
    let m = &r["messages"];
    out.push(format!(
        "messages: sent {} acked {} answered by ai {} agent {} system {}; lost {} (unacked {}, unanswered {}); \
         error frames {}; connections dropped {}",
        m["sent"],
        m["acked"],
        m["replies"]["ai"],
        m["replies"]["agent"],
        m["replies"]["system"],
        m["lost"],
        m["unacked"],
        m["unanswered"],
        m["error_frames"],
        m["dropped_connections"]
    ));
    out.push(line("ack", &r["rtt_ms"]["ack"]));
    out.push(line("reply (ai)", &r["rtt_ms"]["reply_ai"]));
    if !r["rtt_ms"]["reply_agent"].is_null() {
        // Customer → server → agent → server → customer, on the customer's clock.
        out.push(line("reply (agent)", &r["rtt_ms"]["reply_agent"]));
        // Agent's send → customer's receipt, on the wall clock both processes share.
        out.push(line("agent→customer", &r["rtt_ms"]["agent_to_customer"]));
    }
    let a = &r["agents"];
    if !a.is_null() {
        out.push(format!(
            "agents: {} signed in ({} failed), {} of {} handed-off chats taken; {} customer messages, \
             {} replies ({} acked), {} messages in agent chats lost, {} stray, {} error frames, {} dropped{}",
            a["connected"],
            a["failed"],
            r["ramp"]["assigned"],
            r["ramp"]["handed_off"],
            a["customer_messages"],
            a["replies_sent"],
            a["replies_acked"],
            m["agent_chats"]["lost"],
            a["stray_messages"],
            a["error_frames"],
            a["dropped_connections"],
            a["first_error"]
                .as_str()
                .map(|e| format!("; first error: {e}"))
                .unwrap_or_default()
        ));
    }
    let s = &r["storm"];
    if !s.is_null() {
        out.push(format!(
            "storm: {} dropped, {} resumed ({} refused, {} failed, {} retried after 503), all back in {:.1} ms; \
             {} sent before the drop, {} in the replay, {} answered ({} by system), {} lost",
            s["dropped"],
            s["resumed"],
            s["refused"],
            s["failed"],
            s["retries_503"],
            s["all_back_ms"].as_f64().unwrap_or(0.0),
            s["messages_sent_before_drop"],
            s["delivered"],
            s["answered"],
            s["answered_by_system"],
            s["lost"]
        ));
    }
    for x in r["restarts"]["per_restart"]
        .as_array()
        .into_iter()
        .flatten()
    {
        out.extend(restart_lines(x, &r["restarts"]));
    }
    let mem = &r["memory"];
    let samples: Vec<String> = mem["samples"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|s| {
                    let rss = s["rss_kb"]
                        .as_f64()
                        .map_or("-".into(), |kb| format!("{:.1} MiB", kb / 1024.0));
                    let gauges = match (s["chat_sessions"].as_f64(), s["chat_sockets"].as_f64()) {
                        (Some(a), Some(b)) => format!(" ({a}/{b})"),
                        _ => String::new(),
                    };
                    format!("{} {rss}{gauges}", s["label"].as_str().unwrap_or(""))
                })
                .collect()
        })
        .unwrap_or_default();
    out.push(format!(
        "server RSS (sessions/sockets): {}",
        samples.join(" → ")
    ));
    out.push(format!(
        "memory per session: {}; after close ÷ before: {}",
        mem["bytes_per_session"]
            .as_f64()
            .map_or("-".into(), |b| format!("{b:.0} B")),
        mem["after_close_over_before"]
            .as_f64()
            .map_or("-".into(), |x| format!("{x:.2}"))
    ));
    let cpu = &r["cpu_percent"];
    out.push(format!(
        "CPU during messages: server {}, load tool {} (100 % = one core); server log: {} warnings, {} errors; server {}",
        cpu["server_during_messages"]
            .as_f64()
            .map_or("-".into(), |x| format!("{x:.0} %")),
        cpu["load_tool"]
            .as_f64()
            .map_or("-".into(), |x| format!("{x:.0} %")),
        r["server"]["log_warnings"],
        r["server"]["log_errors"],
        r["server"]["exit"].as_str().unwrap_or("-")
    ));
    out.join("\n")
}

/// A restart in three lines: the server, the sessions, the messages.
fn restart_lines(x: &Value, all: &Value) -> Vec<String> {
    let ms = |v: &Value| v.as_f64().map_or("-".into(), |v| format!("{v:.1} ms"));
    let srv = &x["server"];
    let resume = &x["resume_ms"];
    let head = if all["mode"] == "upgrade" {
        format!(
            "restart {} of {} (upgrade, {:.1} s into the messages): new process started with --takeover in {}; old one exited ({}) {} after the new one was started",
            x["restart"],
            all["count"],
            x["at_secs"].as_f64().unwrap_or(0.0),
            ms(&srv["relaunch_ms"]),
            srv["exit"].as_str().unwrap_or("-"),
            ms(&srv["signal_to_exit_ms"]),
        )
    } else {
        format!(
            "restart {} of {} ({}, {:.1} s into the messages): server gone in {} ({}), listening again {} later ({} start{})",
            x["restart"],
            all["count"],
            all["mode"].as_str().unwrap_or(""),
            x["at_secs"].as_f64().unwrap_or(0.0),
            ms(&srv["signal_to_exit_ms"]),
            srv["exit"].as_str().unwrap_or("-"),
            ms(&srv["relaunch_ms"]),
            srv["starts"],
            if srv["starts"] == 1 { "" } else { "s" },
        )
    };
    let mut lines = vec![
        head,
        format!(
            "  sessions: {} of {} resumed ({} refused, {} failed, {} ended otherwise){}; {} reconnects tried, {} closed 1012",
            x["resumed"],
            x["sessions"],
            x["refused"],
            x["failed"],
            x["ended"],
            if resume["count"].as_u64().unwrap_or(0) > 0 {
                format!(
                    ", after the signal: p50 {}, p99 {}, all back at {}",
                    ms(&resume["p50"]),
                    ms(&resume["p99"]),
                    ms(&x["all_back_ms"]),
                )
            } else {
                String::new()
            },
            x["reconnect_attempts"],
            x["closed_1012"],
        ),
        format!(
            "  messages: acknowledged lost {} of {} checked; {} unacknowledged found in the replay, {} sent again; replay errors {}{}",
            x["acked_lost"],
            x["acked_checked"],
            x["unacked_in_replay"],
            x["resent"],
            x["replay_errors"],
            if x["timed_out"] == true { "; TIMED OUT" } else { "" },
        ),
    ];
    if x["refused"].as_u64().unwrap_or(0) > 0 {
        lines.push(
            "  resumes refused: the restarted server did not know these sessions (a build without the chat journal?); \
             their acknowledged messages count as lost"
                .into(),
        );
    }
    if !x["rest"].is_null() {
        lines.push(format!(
            "  upgrade: connections dropped {}; REST requests on fresh connections {}, failed {}, slowest {} ms",
            x["connections_dropped"], x["rest"]["requests"], x["rest"]["failed"], x["rest"]["slowest_ms"],
        ));
    }
    if let Some(e) = x["first_error"].as_str() {
        lines.push(format!("  first error: {e}"));
    }
    lines
}

/// `--check`: every session opened, every handed-off chat taken by an agent, every message
/// acknowledged and answered (by the agent in an agent's chat, else by the AI), nothing dropped,
/// after a storm every session back with its last message, and after each restart every session
/// resumed with every acknowledged message in its replay.
pub fn check(r: &Value, storm: bool) -> anyhow::Result<()> {
    let n = |v: &Value| v.as_u64().unwrap_or(u64::MAX);
    let mut problems = Vec::new();
    if n(&r["ramp"]["failed"]) != 0 || n(&r["ramp"]["opened"]) != n(&r["config"]["sessions"]) {
        problems.push(format!("sessions: {}", r["ramp"]));
    }
    if n(&r["ramp"]["assigned"]) != n(&r["ramp"]["handed_off"]) {
        problems.push(format!("chats handed off but not taken: {}", r["ramp"]));
    }
    let m = &r["messages"];
    let agent_sent = n(&m["agent_chats"]["sent"]);
    if n(&m["acked"]) != n(&m["sent"])
        || n(&m["replies"]["agent"]) != agent_sent
        || n(&m["replies"]["ai"]) != n(&m["sent"]).saturating_sub(agent_sent)
    {
        problems.push(format!("messages: {m}"));
    }
    let a = &r["agents"];
    if !a.is_null()
        && (n(&a["failed"]) != 0
            || n(&a["dropped_connections"]) != 0
            || n(&a["stray_messages"]) != 0)
    {
        problems.push(format!("agents: {a}"));
    }
    if n(&m["dropped_connections"]) != 0 {
        problems.push(format!("connections dropped: {}", m["dropped_connections"]));
    }
    if storm {
        let s = &r["storm"];
        if n(&s["resumed"]) != n(&s["dropped"]) || n(&s["lost"]) != 0 {
            problems.push(format!("storm: {s}"));
        }
    }
    for x in r["restarts"]["per_restart"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let upgrade = r["restarts"]["mode"] == "upgrade";
        if upgrade
            && (n(&x["connections_dropped"]) != 0
                || n(&x["rest"]["failed"]) != 0
                || x["timed_out"] != false)
        {
            problems.push(format!("upgrade {}: {x}", x["restart"]));
            continue;
        }
        if upgrade {
            continue;
        }
        if n(&x["acked_lost"]) != 0
            || n(&x["resumed"]) != n(&x["sessions"])
            || n(&x["refused"]) != 0
            || n(&x["failed"]) != 0
            || n(&x["replay_errors"]) != 0
            || x["timed_out"] != false
        {
            problems.push(format!("restart {}: {x}", x["restart"]));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        bail!("check failed:\n  {}", problems.join("\n  "))
    }
}

#[derive(Debug, Clone, clap::Args)]
pub struct CompareArgs {
    /// The report of the run against switchboard.
    pub subject: std::path::PathBuf,
    /// The report of the same workload against the baseline.
    pub baseline: std::path::PathBuf,
}

/// Prints switchboard ÷ baseline for memory per session and the round-trip percentiles.
pub fn compare(args: CompareArgs) -> anyhow::Result<()> {
    let read = |p: &std::path::Path| -> anyhow::Result<Value> {
        let text = std::fs::read_to_string(p).with_context(|| format!("read {}", p.display()))?;
        serde_json::from_str(&text).with_context(|| format!("parse {}", p.display()))
    };
    let (a, b) = (read(&args.subject)?, read(&args.baseline)?);
    let ratio = |path: &[&str]| {
        let get = |v: &Value| path.iter().fold(v, |v, k| &v[*k]).as_f64();
        match (get(&a), get(&b)) {
            (Some(x), Some(y)) if y > 0.0 => format!("{x:.3} / {y:.3} = {:.2}×", x / y),
            (x, y) => format!("{x:?} / {y:?}: -"),
        }
    };
    println!(
        "\n## {} ÷ {} (same workload, same run)",
        a["config"]["label"].as_str().unwrap_or("subject"),
        b["config"]["label"].as_str().unwrap_or("baseline")
    );
    println!(
        "memory per session (B):   {}",
        ratio(&["memory", "bytes_per_session"])
    );
    println!(
        "ack p50 (ms):             {}",
        ratio(&["rtt_ms", "ack", "p50"])
    );
    println!(
        "ack p99 (ms):             {}",
        ratio(&["rtt_ms", "ack", "p99"])
    );
    println!(
        "reply p50 (ms):           {}",
        ratio(&["rtt_ms", "reply_ai", "p50"])
    );
    println!(
        "reply p99 (ms):           {}",
        ratio(&["rtt_ms", "reply_ai", "p99"])
    );
    Ok(())
}
