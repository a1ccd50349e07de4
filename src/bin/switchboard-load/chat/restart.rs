//! `chat --restart kill|term`: the message phase with the server killed (SIGKILL) or stopped
//! (SIGTERM, then its exit) `--restarts` times and started again on the same data dir and the same
//! addresses ([`Server::relaunch`]). Restarts are spread evenly over the phase, and each waits until
//! the one before is over (every session back or given up), so that each one's figures are its own.
//!
//! For each, the parent announces it to the workers and waits until every one has armed it, so
//! that no session takes the lost connection for a failure; signals the server; tells the workers
//! when the signal went (their resume times count from it); starts the server again; and gathers
//! what the workers saw ([`Event::Restarted`]) beside the server's own timings.
//!
//! `--restart upgrade` replaces the server with `switchboard --takeover` instead
//! ([`Server::take_over`]): no connection should drop, so a session that loses its connection is
//! counted (and resumes, checked like after a restart), and a REST prober sends requests on fresh
//! connections throughout, every failure counted.

use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::bail;
use serde_json::{json, Value};

use super::events::{histogram, merge, Event, RestartTally};
use super::report::{first_error, percentiles, Phases};
use super::{Proc, Target};
use crate::server::{Halt, Halted, Relaunched};

/// How long the workers may take to arm a restart.
const ARM_DEADLINE: Duration = Duration::from_secs(30);
/// How long a SIGTERM'd server may take to exit before it is killed.
const TERM_PATIENCE: Duration = Duration::from_secs(30);

/// What the run asked for.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    pub halt: Halt,
    pub count: u32,
    /// The message phase's length, over which the restarts are spread.
    pub over: Duration,
}

impl Schedule {
    /// When restart `n` (1 for the first) is due, from the start of the message phase.
    pub fn due(&self, n: u32) -> Duration {
        self.over
            .mul_f64(f64::from(n) / f64::from(self.count.saturating_add(1)))
    }
}

/// One restart: when, how the server went and came back, and what each worker saw.
pub struct Record {
    pub restart: u32,
    /// From the start of the message phase to the signal.
    pub at: Duration,
    pub halted: Halted,
    pub relaunched: Relaunched,
    pub tallies: Vec<RestartTally>,
    /// An upgrade's REST probe.
    pub rest: Option<Value>,
}

/// A restart whose sessions are still coming back.
struct Underway {
    record: Record,
    tallies: Vec<Option<RestartTally>>,
}

/// The message phase with restarts, after `go` was said at `started`: the workers' `Done` events
/// and one record per restart.
#[allow(clippy::too_many_arguments)]
pub(super) fn messages(
    phases: &mut Phases,
    rx: &mpsc::Receiver<(usize, Event)>,
    target: &mut Target,
    workers: &mut [Proc],
    t0: Instant,
    started: Instant,
    schedule: Schedule,
) -> anyhow::Result<(Vec<Event>, Vec<Record>)> {
    let mut done: Vec<Option<Event>> = vec![None; workers.len()];
    let mut records = Vec::new();
    let mut underway: Option<Underway> = None;
    let mut next = 1;
    loop {
        if underway.is_none() && next > schedule.count && done.iter().all(Option::is_some) {
            break;
        }
        let due =
            (underway.is_none() && next <= schedule.count).then(|| started + schedule.due(next));
        if due.is_some_and(|d| Instant::now() >= d) {
            let record = restart(
                phases, rx, target, workers, t0, started, schedule, next, &mut done,
            )?;
            underway = Some(Underway {
                record,
                tallies: vec![None; workers.len()],
            });
            next += 1;
            continue;
        }
        let name = if underway.is_some() {
            "restart"
        } else {
            "messages"
        };
        let Some((w, ev)) = phases.next(rx, name, target, t0, due)? else {
            continue;
        };
        match ev {
            Event::Done(_) => done[w] = Some(ev),
            Event::Restarted(t) => {
                let Some(u) = underway.as_mut() else { continue };
                if t.restart != u.record.restart {
                    continue;
                }
                u.tallies[w] = Some(t);
                if u.tallies.iter().all(Option::is_some) {
                    let Some(mut u) = underway.take() else {
                        continue;
                    };
                    u.record.tallies = u.tallies.into_iter().flatten().collect();
                    records.push(u.record);
                }
            }
            _ => {}
        }
    }
    Ok((done.into_iter().flatten().collect(), records))
}

/// Restart `n`: armed in every worker, the server signalled and started again.
#[allow(clippy::too_many_arguments)]
fn restart(
    phases: &mut Phases,
    rx: &mpsc::Receiver<(usize, Event)>,
    target: &mut Target,
    workers: &mut [Proc],
    t0: Instant,
    started: Instant,
    schedule: Schedule,
    n: u32,
    done: &mut [Option<Event>],
) -> anyhow::Result<Record> {
    let upgrade = schedule.halt == Halt::Upgrade;
    for w in workers.iter_mut() {
        w.say(&format!(
            "restart {n}{}",
            if upgrade { " upgrade" } else { "" }
        ));
    }
    let mut armed = vec![false; workers.len()];
    let deadline = Instant::now() + ARM_DEADLINE;
    while armed.iter().any(|a| !a) {
        match phases.next(rx, "restart", target, t0, Some(deadline))? {
            None => bail!("the workers did not arm restart {n} within {ARM_DEADLINE:?}"),
            Some((w, Event::Armed { restart })) if restart == n => armed[w] = true,
            Some((w, ev @ Event::Done(_))) => done[w] = Some(ev),
            Some(_) => {}
        }
    }
    let Target::Started(server) = target else {
        bail!("--restart needs a server this run started");
    };
    let at = started.elapsed();
    let old_pid = server.pid();
    let (halted, relaunched, rest) = if upgrade {
        let probe = RestProbe::start(server.api);
        let (halted, relaunched) = server.take_over(TERM_PATIENCE)?;
        let rest = probe.finish();
        for w in workers.iter_mut() {
            w.say(&format!("killed {n} {}", halted.signalled_unix_nanos));
        }
        (halted, relaunched, Some(rest))
    } else {
        let halted = server.halt(schedule.halt, TERM_PATIENCE);
        for w in workers.iter_mut() {
            w.say(&format!("killed {n} {}", halted.signalled_unix_nanos));
        }
        (halted, server.relaunch()?, None)
    };
    if upgrade {
        eprintln!(
            "restart {n} of {} (upgrade): pid {} started with --takeover in {:.1} ms; pid {old_pid} exited ({}) {:.1} ms after it was started",
            schedule.count,
            server.pid(),
            relaunched.took.as_secs_f64() * 1000.0,
            halted.exit,
            halted.down.as_secs_f64() * 1000.0,
        );
    } else {
        eprintln!(
            "restart {n} of {} ({}): pid {old_pid} gone in {:.1} ms ({}); pid {} listening {:.1} ms later",
            schedule.count,
            schedule.halt.name(),
            halted.down.as_secs_f64() * 1000.0,
            halted.exit,
            server.pid(),
            relaunched.took.as_secs_f64() * 1000.0,
        );
    }
    Ok(Record {
        restart: n,
        at,
        halted,
        relaunched,
        tallies: Vec::new(),
        rest,
    })
}

/// REST requests on fresh connections, one after another, for as long as an upgrade takes.
struct RestProbe {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<Value>,
}

impl RestProbe {
    fn start(api: std::net::SocketAddr) -> Self {
        use std::io::{Read, Write};
        use std::sync::atomic::Ordering;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let (mut requests, mut failures, mut slowest) = (0u64, 0u64, Duration::ZERO);
            let mut first_error: Option<String> = None;
            while !flag.load(Ordering::SeqCst) {
                requests += 1;
                let began = Instant::now();
                let got = (|| {
                    let mut s =
                        std::net::TcpStream::connect(api).map_err(|e| format!("connect: {e}"))?;
                    s.set_read_timeout(Some(Duration::from_secs(30)))
                        .map_err(|e| e.to_string())?;
                    s.write_all(
                        b"GET /api/v1/tickets?limit=1 HTTP/1.1\r\nHost: load\r\nConnection: close\r\n\r\n",
                    )
                    .map_err(|e| format!("write: {e}"))?;
                    let mut out = Vec::new();
                    s.read_to_end(&mut out).map_err(|e| format!("read: {e}"))?;
                    if out.starts_with(b"HTTP/1.1 200") {
                        Ok(())
                    } else {
                        Err(format!(
                            "answer: {}",
                            String::from_utf8_lossy(&out[..out.len().min(80)])
                        ))
                    }
                })();
                slowest = slowest.max(began.elapsed());
                if let Err(e) = got {
                    failures += 1;
                    first_error.get_or_insert(e);
                }
            }
            json!({
                "requests": requests,
                "failed": failures,
                "slowest_ms": slowest.as_secs_f64() * 1000.0,
                "first_error": first_error,
            })
        });
        Self { stop, thread }
    }

    fn finish(self) -> Value {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        self.thread.join().unwrap_or(Value::Null)
    }
}

/// The report's `restarts`: each restart merged over the workers, and the totals.
pub fn report(halt: Halt, records: &[Record]) -> Value {
    let per: Vec<Value> = records.iter().map(Record::to_json).collect();
    let total = |k: &str| per.iter().map(|p| p[k].as_u64().unwrap_or(0)).sum::<u64>();
    let all_resumed = per
        .iter()
        .all(|p| p["resumed"] == p["sessions"] && p["timed_out"] == false);
    json!({
        "mode": halt.name(),
        "count": per.len(),
        "sessions": total("sessions"),
        "resumed": total("resumed"),
        "all_resumed": all_resumed,
        "refused": total("refused"),
        "failed": total("failed"),
        "acked_checked": total("acked_checked"),
        "acked_lost": total("acked_lost"),
        "resent": total("resent"),
        "replay_errors": total("replay_errors"),
        "per_restart": per,
    })
}

impl Record {
    fn to_json(&self) -> Value {
        let mut resume = histogram();
        for t in &self.tallies {
            merge(&mut resume, &t.resume_us);
        }
        let sum = |f: fn(&RestartTally) -> u64| self.tallies.iter().map(f).sum::<u64>();
        json!({
            "restart": self.restart,
            "at_secs": self.at.as_secs_f64(),
            "server": {
                "signal_to_exit_ms": self.halted.down.as_secs_f64() * 1000.0,
                "exit": self.halted.exit,
                "relaunch_ms": self.relaunched.took.as_secs_f64() * 1000.0,
                "starts": self.relaunched.attempts,
            },
            "sessions": sum(|t| t.sessions),
            "resumed": sum(|t| t.resumed),
            "refused": sum(|t| t.refused),
            "failed": sum(|t| t.failed),
            "ended": sum(|t| t.ended),
            "resume_ms": percentiles(&resume),
            "all_back_ms": (!resume.is_empty()).then(|| resume.max() as f64 / 1000.0),
            "reconnect_attempts": sum(|t| t.reconnects),
            "closed_1012": sum(|t| t.closed_1012),
            "acked_checked": sum(|t| t.acked_checked),
            "acked_lost": sum(|t| t.acked_lost),
            "unacked_in_replay": sum(|t| t.unacked_in_replay),
            "resent": sum(|t| t.resent),
            "replay_errors": sum(|t| t.replay_errors),
            "timed_out": self.tallies.iter().any(|t| t.timed_out),
            "connections_dropped": sum(|t| t.resumed + t.refused + t.failed),
            "rest": self.rest,
            "first_error": first_error(self.tallies.iter().map(|t| &t.first_error)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restarts_are_spread_evenly_over_the_message_phase() {
        let s = Schedule {
            halt: Halt::Kill,
            count: 3,
            over: Duration::from_secs(8),
        };
        assert_eq!(s.due(1), Duration::from_secs(2));
        assert_eq!(s.due(3), Duration::from_secs(6));
        let one = Schedule { count: 1, ..s };
        assert_eq!(one.due(1), Duration::from_secs(4));
    }

    #[test]
    fn a_restart_is_reported_over_every_worker_and_a_session_short_is_not_all_resumed() {
        let worker = |sessions, resumed, resume_ms: u64| RestartTally {
            restart: 1,
            sessions,
            resumed,
            acked_checked: 10,
            resume_us: vec![(resume_ms * 1000, resumed)],
            ..RestartTally::default()
        };
        let record = Record {
            restart: 1,
            at: Duration::from_secs(2),
            halted: Halted {
                signalled_unix_nanos: 0,
                down: Duration::from_millis(3),
                exit: "signal: 9 (SIGKILL)".into(),
            },
            relaunched: Relaunched {
                took: Duration::from_millis(40),
                attempts: 1,
            },
            tallies: vec![worker(5, 5, 100), worker(5, 4, 300)],
            rest: None,
        };
        let r = report(Halt::Kill, &[record]);
        let one = &r["per_restart"][0];
        assert_eq!(one["sessions"], 10);
        assert_eq!(one["resumed"], 9);
        assert_eq!(one["acked_checked"], 20);
        assert_eq!(one["resume_ms"]["count"], 9);
        assert!((one["all_back_ms"].as_f64().unwrap() - 300.0).abs() < 1.0);
        assert_eq!(r["mode"], "kill");
        assert_eq!(r["resumed"], 9);
        assert_eq!(r["all_resumed"], false);
    }
}
