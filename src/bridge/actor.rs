//! The sync lane's actor. One delivery cycle ([`super::dispatch::run_cycle`]) runs at a time: peek
//! the oldest `bridge.batch_max` outbox entries, send ticket syncs and chat tickets, then ack what Django
//! took and dead-letter what it refused — in the store — before the next cycle. A cycle starts when
//! `batch_max` new entries were appended, every `bridge.flush_ms`, or when a backoff delay ends.
//! Entries leave the outbox only after Django answered 2xx, so a crash or restart anywhere resends
//! them, with the same event ids. An event Django fails on (5xx) while it takes others is isolated and,
//! after `bridge.poison_max_attempts` such failures, dead-lettered ([`super::dispatch::Isolation`]).
//! Started by the root supervisor (child `bridge`); takes [`Drain`],
//! [`GetStatus`] and [`InjectPanic`]. Calls someone waits for go through the other lane
//! ([`super::calls`]).

use std::collections::BTreeSet;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use chrono::{DateTime, Utc};
use tokio::sync::oneshot;

use super::breaker::{backoff, Breaker};
use super::client::{chain, AwcDjango, DjangoApi};
use super::dispatch::{run_cycle, Isolation, Report};
use super::{Drain, GetStatus, InjectPanic, Lane, LaneStatus};
use crate::config::{BridgeSettings, DjangoSettings};
use crate::metrics as m;
use crate::store::{Outbox, StoreError};

struct Draining {
    deadline: Instant,
    waiters: Vec<oneshot::Sender<()>>,
}

pub struct Bridge {
    outbox: Arc<dyn Outbox>,
    django: DjangoSettings,
    settings: BridgeSettings,
    api: Option<Rc<dyn DjangoApi>>,
    breaker: Breaker,
    in_flight: bool,
    failures: u32,
    retry_at: Option<Instant>,
    /// Outbox append count when the outbox was last found drained; no cycle until it moves.
    idle_at: Option<u64>,
    /// Outbox append count when the current or last cycle started.
    cycle_mark: u64,
    last_error: Option<String>,
    last_success_at: Option<DateTime<Utc>>,
    draining: Option<Draining>,
    /// Outbox positions that failed sent alone; the next cycle sends them apart.
    suspects: BTreeSet<i64>,
}

impl Bridge {
    pub fn new(outbox: Arc<dyn Outbox>, django: DjangoSettings, settings: BridgeSettings) -> Self {
        let breaker = Breaker::new(
            settings.breaker_threshold,
            Duration::from_millis(settings.breaker_cooldown_ms),
        );
        Self {
            outbox,
            django,
            settings,
            api: None,
            breaker,
            in_flight: false,
            failures: 0,
            retry_at: None,
            idle_at: None,
            cycle_mark: 0,
            last_error: None,
            last_success_at: None,
            draining: None,
            suspects: BTreeSet::new(),
        }
    }

    fn publish(&self) {
        Lane::Sync.publish(
            self.breaker.state(Instant::now()),
            usize::from(self.in_flight),
        );
    }

    fn maybe_flush(&mut self, ctx: &mut Context<Self>) {
        if self.in_flight {
            return;
        }
        let Some(api) = self.api.clone() else {
            self.finish_drain();
            return;
        };
        let now = Instant::now();
        if self.retry_at.is_some_and(|at| now < at) {
            return;
        }
        let total = self.outbox.signal().total();
        if self.idle_at == Some(total) {
            self.finish_drain();
            return;
        }
        if !self.breaker.allow(now) {
            return;
        }
        self.in_flight = true;
        self.cycle_mark = total;
        let outbox = self.outbox.clone();
        let batch_max = self.settings.batch_max;
        let isolation = Isolation {
            max_attempts: self.settings.poison_max_attempts,
            suspects: self.suspects.clone(),
        };
        let cycle = async move { run_cycle(&*outbox, api, batch_max, isolation).await };
        self.publish();
        let span = tracing::info_span!("bridge_cycle");
        ctx.spawn(
            tracing::Instrument::instrument(cycle, span)
                .into_actor(self)
                .map(move |result, act, ctx| act.finish_cycle(result, total, ctx)),
        );
    }

    fn finish_cycle(
        &mut self,
        result: Result<Report, StoreError>,
        mark: u64,
        ctx: &mut Context<Self>,
    ) {
        self.in_flight = false;
        let now = Instant::now();
        let mut report = match result {
            Ok(r) => r,
            Err(e) => {
                let why = chain(&e);
                tracing::error!(error = %why, "bridge could not read or update the outbox");
                self.schedule_retry(why, now, ctx);
                return;
            }
        };
        if report.calls == 0 {
            self.breaker.cancel_probe();
        }
        self.suspects = std::mem::take(&mut report.suspects);
        metrics::counter!(m::BRIDGE_EVENTS_DELIVERED).increment(report.delivered.len() as u64);
        if !report.rejected.is_empty() {
            metrics::counter!(m::DEAD_LETTERS).increment(report.rejected.len() as u64);
            for r in &report.rejected {
                tracing::warn!(seq = r.seq, status = ?r.status_code, error = %r.error, "event dead-lettered");
            }
        }
        if let Some(e) = report.failed {
            self.breaker.on_failure(now);
            self.schedule_retry(chain(&e), now, ctx);
        } else {
            if report.calls > 0 {
                self.breaker.on_success();
                self.failures = 0;
                self.retry_at = None;
                self.last_success_at = Some(Utc::now());
            }
            let appended = self.outbox.signal().total().saturating_sub(mark);
            if report.entries >= self.settings.batch_max {
                // A backlog: go again at once.
                ctx.run_later(Duration::ZERO, |act, ctx| act.maybe_flush(ctx));
            } else if !report.failures.is_empty() {
                // Django took the rest but failed on some events: they wait, so the outbox is not
                // drained, and the flush_ms timer sends them again.
            } else {
                self.idle_at = Some(mark);
                let full_batch_waiting = appended >= self.settings.batch_max as u64;
                if full_batch_waiting || (self.draining.is_some() && appended > 0) {
                    ctx.run_later(Duration::ZERO, |act, ctx| act.maybe_flush(ctx));
                } else {
                    // Fewer than batch_max new events: the flush_ms timer sends them.
                    self.finish_drain();
                }
            }
        }
        self.publish();
        if self.draining.as_ref().is_some_and(|d| now >= d.deadline) {
            self.finish_drain_now();
        }
    }

    fn schedule_retry(&mut self, error: String, now: Instant, ctx: &mut Context<Self>) {
        let unit: f64 = rand::random();
        let mut delay = backoff(
            self.failures,
            Duration::from_millis(self.settings.retry_base_ms),
            Duration::from_millis(self.settings.retry_max_ms),
            unit,
        );
        self.failures = self.failures.saturating_add(1);
        if let Some(open) = self.breaker.remaining(now) {
            delay = delay.max(open);
        }
        tracing::warn!(%error, retry_in_ms = delay.as_millis() as u64, failures = self.failures, breaker = self.breaker.state(now).as_str(), "sync to Django failed; will retry");
        self.last_error = Some(error);
        self.retry_at = Some(now + delay);
        ctx.run_later(delay, |act, ctx| act.maybe_flush(ctx));
    }

    /// The outbox is drained (or no Django is configured): release shutdown waiters.
    fn finish_drain(&mut self) {
        if self.draining.is_some() {
            self.finish_drain_now();
        }
    }

    fn finish_drain_now(&mut self) {
        if let Some(d) = self.draining.take() {
            for w in d.waiters {
                let _ = w.send(());
            }
        }
    }

    fn refresh_gauges(&mut self, ctx: &mut Context<Self>) {
        self.publish();
        let stats = self.outbox.stats();
        ctx.spawn(
            async move {
                match stats.await {
                    Ok(s) => {
                        metrics::gauge!(m::OUTBOX_DEPTH).set(s.depth as f64);
                        let age = s
                            .oldest
                            .map(|t| (Utc::now() - t).num_milliseconds().max(0) as f64 / 1000.0)
                            .unwrap_or(0.0);
                        metrics::gauge!(m::OUTBOX_OLDEST_AGE).set(age);
                        metrics::gauge!(m::DEAD_LETTERS_PENDING).set(s.dead_letters as f64);
                    }
                    Err(e) => tracing::warn!(error = %chain(&e), "outbox stats unavailable"),
                }
            }
            .into_actor(self),
        );
    }
}

impl Actor for Bridge {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        if !self.django.base_url.is_empty() {
            self.api = Some(Rc::new(AwcDjango::new(
                &self.django,
                Lane::Sync,
                Duration::from_millis(self.django.timeout_ms),
            )));
        } else {
            tracing::info!("no django.base_url configured; changes stay in the outbox");
        }
        let signal = self.outbox.signal();
        ctx.add_stream(futures_util::stream::unfold(signal, |s| async move {
            s.wait().await;
            Some(((), s))
        }));
        ctx.run_interval(Duration::from_millis(self.settings.flush_ms), |act, ctx| {
            act.maybe_flush(ctx)
        });
        ctx.run_interval(Duration::from_secs(1), |act, ctx| act.refresh_gauges(ctx));
        self.refresh_gauges(ctx);
        // Whatever a previous run left in the outbox goes out now.
        self.maybe_flush(ctx);
    }
}

impl actix::Supervised for Bridge {
    fn restarting(&mut self, _: &mut Context<Self>) {
        // The in-flight cycle was cancelled with the context; its entries are still in the outbox.
        tracing::warn!("bridge restarting; resuming from the outbox");
        self.in_flight = false;
        self.idle_at = None;
        self.retry_at = None;
    }
}

impl StreamHandler<()> for Bridge {
    fn handle(&mut self, _: (), ctx: &mut Context<Self>) {
        let total = self.outbox.signal().total();
        if total.saturating_sub(self.cycle_mark) >= self.settings.batch_max as u64 {
            self.maybe_flush(ctx);
        }
    }
}

impl Handler<Drain> for Bridge {
    type Result = ResponseFuture<u64>;

    fn handle(&mut self, msg: Drain, ctx: &mut Context<Self>) -> Self::Result {
        let (tx, rx) = oneshot::channel();
        let deadline = Instant::now() + msg.deadline;
        match &mut self.draining {
            Some(d) => d.waiters.push(tx),
            None => {
                self.draining = Some(Draining {
                    deadline,
                    waiters: vec![tx],
                })
            }
        }
        self.idle_at = None;
        self.retry_at = None;
        self.maybe_flush(ctx);
        let outbox = self.outbox.clone();
        Box::pin(async move {
            let _ = tokio::time::timeout(msg.deadline, rx).await;
            outbox.stats().await.map(|s| s.depth).unwrap_or(0)
        })
    }
}

impl Handler<GetStatus> for Bridge {
    type Result = MessageResult<GetStatus>;

    fn handle(&mut self, _: GetStatus, _: &mut Context<Self>) -> Self::Result {
        MessageResult(LaneStatus {
            lane: Lane::Sync,
            configured: self.api.is_some(),
            breaker: self.breaker.state(Instant::now()).as_str(),
            consecutive_failures: self.failures,
            in_flight: usize::from(self.in_flight),
            last_error: self.last_error.clone(),
            last_success_at: self.last_success_at,
        })
    }
}

impl Handler<InjectPanic> for Bridge {
    type Result = ();

    fn handle(&mut self, _: InjectPanic, _: &mut Context<Self>) {
        panic!("injected panic in the Django bridge's sync lane");
    }
}
