//! Keyed dynamic supervision: many actors of one kind, one per key (a ticket, a chat session),
//! started on demand, routed by key, stopped when idle and restarted when they fail, as OTP's
//! `simple_one_for_one` with a registry beside it.
//!
//! [`KeyedChildren`] is the generic part, embedded in a registry actor that adds only what its kind
//! needs (how a child is made, which messages route to it). It owns:
//! - the live map, key → weak address, with each child's last-routed time on a 32-bit millisecond
//!   clock (a few bytes per child: memory follows live children);
//! - the idle sweep: a child idle for `hibernate_after` is told to [`Hibernate`] (once per idle
//!   spell), one idle for `idle_timeout` is told to [`Passivate`] and forgotten. One sweep replaces
//!   a timer per child, which would cost more memory than hibernation saves;
//! - exit handling: a report from an activation that was already replaced or forgotten is stale and
//!   ignored; an abnormal exit is restarted in place within the restart intensity; past it every
//!   child is stopped and [`ExitOutcome::Escalate`] tells the owner to escalate to its parent.
//!
//! Children run under [`super::dynamic`]: they all report through one shared [`ExitsTo`], which
//! forwards a [`ChildExited`] to the owner's mailbox.

use std::collections::HashMap;
use std::fmt;
use std::hash::Hash;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use actix::WeakAddr;

use super::dynamic::{self, ChildExit, ExitSink, Parked};
use super::supervised::{Exit, Restart};
use super::Intensity;
use crate::metrics as m;

/// Keyed supervisor → child: stop now (the child's state is safe elsewhere). Sent through the
/// child's mailbox, so messages already queued are served first.
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub struct Passivate;

/// Keyed supervisor → child: no message for `hibernate_after`; shrink to the least memory that
/// still serves the next message.
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub struct Hibernate;

/// A child's supervision wrapper (through [`ExitsTo`]) → the registry that owns it: the child
/// exited. `parked` is how to restart it; dropping it stops the child.
pub struct ChildExited<K, A: Actor> {
    pub key: K,
    /// Which activation: compared with the registry's current one for `key`.
    pub child: WeakAddr<A>,
    pub exit: Exit,
    pub parked: Option<Parked>,
}

impl<K: 'static, A: Actor> Message for ChildExited<K, A> {
    type Result = ();
}

/// Where every child of one registry reports its exits: the registry's mailbox. One instance is
/// shared by all its children.
pub struct ExitsTo<K: Send + 'static, A: Actor> {
    kind: &'static str,
    restart: Restart,
    to: Recipient<ChildExited<K, A>>,
}

impl<K, A> ExitSink<A> for ExitsTo<K, A>
where
    K: Clone + Send + Unpin + 'static,
    A: Actor,
{
    type Key = K;

    fn kind(&self) -> &'static str {
        self.kind
    }

    fn restart_type(&self) -> Restart {
        self.restart
    }

    fn exited(&self, exit: ChildExit<A, K>) {
        // do_send ignores the mailbox's capacity: an exit report must never be refused.
        self.to.do_send(ChildExited {
            key: exit.key,
            child: exit.child,
            exit: exit.exit,
            parked: exit.parked,
        });
    }
}

/// How one registry supervises its children.
#[derive(Debug, Clone)]
pub struct KeyedConfig {
    /// The children's kind, for logs and `switchboard_actor_restarts_total{kind}`.
    pub kind: &'static str,
    /// The registry's name, for `switchboard_supervisor_escalations_total{supervisor}`.
    pub supervisor: &'static str,
    pub restart: Restart,
    /// Idle time (no message routed to it) before a child is passivated, at most 2^31 ms (the
    /// clock wraps at 2^32); `Duration::ZERO`: never (children that time themselves out).
    pub idle_timeout: Duration,
    /// Idle time before a child is told to hibernate; `Duration::ZERO`: never.
    pub hibernate_after: Duration,
    pub max_restarts: u32,
    pub max_window: Duration,
}

/// One live child, kept small: the map holds one per live child.
struct Entry<A: Actor> {
    /// Weak: a strong address costs two allocations, and a child lives until it is told to stop (it
    /// does not stop when its last address goes), so every forgotten entry is sent `Passivate`.
    child: WeakAddr<A>,
    /// The registry's clock (milliseconds, wrapping) at the last message routed to it.
    seen: u32,
    /// Told to hibernate since that message.
    hibernated: bool,
}

impl<A: Actor<Context = Context<A>>> Entry<A> {
    /// The child's address while it is still running.
    fn addr(&self) -> Option<Addr<A>> {
        self.child.upgrade().filter(|a| a.connected())
    }

    /// Sends without waiting; a child already gone needs nothing.
    fn send<M>(&self, msg: M)
    where
        M: Message + Send + 'static,
        M::Result: Send,
        A: Handler<M>,
    {
        if let Some(addr) = self.addr() {
            addr.do_send(msg);
        }
    }
}

/// What one sweep did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Swept {
    pub passivated: usize,
    pub hibernated: usize,
}

/// What the owner must do after a child's exit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitOutcome {
    /// The report was stale, or the child ended for good and was forgotten.
    Forgotten,
    /// The child was restarted in place.
    Restarted,
    /// Restart intensity exceeded: every child was told to stop; escalate with this reason.
    Escalate(String),
}

/// The generic part of a keyed registry; see the module docs.
pub struct KeyedChildren<K: Send + 'static, A: Actor> {
    config: KeyedConfig,
    /// Made when the owner starts (it needs the owner's address).
    exits: Option<Arc<ExitsTo<K, A>>>,
    live: HashMap<K, Entry<A>>,
    /// Origin of the entries' `seen` clock.
    epoch: Instant,
    intensity: Intensity,
}

/// Milliseconds as the 32-bit clock counts them.
fn millis(d: Duration) -> u32 {
    u32::try_from(d.as_millis()).unwrap_or(u32::MAX)
}

impl<K, A> KeyedChildren<K, A>
where
    K: Clone + Eq + Hash + fmt::Display + Send + Unpin + 'static,
    A: Actor<Context = Context<A>> + actix::Supervised + Handler<Passivate> + Handler<Hibernate>,
{
    pub fn new(config: KeyedConfig) -> Self {
        let intensity = Intensity::new(config.max_restarts, config.max_window);
        Self {
            config,
            exits: None,
            live: HashMap::new(),
            epoch: Instant::now(),
            intensity,
        }
    }

    /// Connects the children's exit reports to the owner; call from the owner's `started`.
    pub fn attach(&mut self, owner: Recipient<ChildExited<K, A>>) {
        self.exits = Some(Arc::new(ExitsTo {
            kind: self.config.kind,
            restart: self.config.restart,
            to: owner,
        }));
    }

    pub fn len(&self) -> usize {
        self.live.len()
    }

    pub fn is_empty(&self) -> bool {
        self.live.is_empty()
    }

    fn now(&self) -> u32 {
        // Truncation is the wrap-around of the clock.
        self.epoch.elapsed().as_millis() as u32
    }

    /// The running child for `key`, if any, marked as just used.
    pub fn get(&mut self, key: K) -> Option<Addr<A>> {
        let now = self.now();
        let e = self.live.get_mut(&key)?;
        let addr = e.addr()?;
        e.seen = now;
        e.hibernated = false;
        Some(addr)
    }

    /// The running child for `key`, starting one with `make` (on the current arbiter) if needed.
    /// The second value is true when a child was started.
    ///
    /// # Panics
    /// If the owner never called [`Self::attach`].
    pub fn route(&mut self, key: K, make: impl FnOnce() -> A) -> (Addr<A>, bool) {
        if let Some(addr) = self.get(key.clone()) {
            return (addr, false);
        }
        let exits = self
            .exits
            .clone()
            .expect("keyed children routed before their owner attached");
        let act = make();
        let addr = dynamic::spawn(exits, key.clone(), move |_| act);
        let seen = self.now();
        self.live.insert(
            key,
            Entry {
                child: addr.downgrade(),
                seen,
                hibernated: false,
            },
        );
        (addr, true)
    }

    /// Hibernates and passivates idle children.
    pub fn sweep(&mut self) -> Swept {
        let now = self.now();
        let idle = millis(self.config.idle_timeout);
        let hibernate_after = millis(self.config.hibernate_after);
        let before = self.live.len();
        let mut hibernated = 0;
        self.live.retain(|_, e| {
            let age = now.wrapping_sub(e.seen);
            if idle > 0 && age >= idle {
                e.send(Passivate);
                return false;
            }
            if hibernate_after > 0 && age >= hibernate_after && !e.hibernated {
                e.send(Hibernate);
                e.hibernated = true;
                hibernated += 1;
            }
            true
        });
        self.shrink_if_sparse();
        Swept {
            passivated: before - self.live.len(),
            hibernated,
        }
    }

    /// Sends `msg` to every running child, without waiting.
    pub fn broadcast<M>(&self, msg: M)
    where
        M: Message + Clone + Send + 'static,
        M::Result: Send,
        A: Handler<M>,
    {
        for e in self.live.values() {
            e.send(msg.clone());
        }
    }

    /// Forgets `key`'s child without stopping it (it stopped itself, or is stopping).
    pub fn forget(&mut self, key: K) {
        self.live.remove(&key);
    }

    /// Tells every child to stop (after the messages already queued) and forgets them all; a
    /// parked one stops when its `Parked` is dropped. Returns how many there were.
    pub fn stop_all(&mut self) -> usize {
        let n = self.live.len();
        for (_, e) in self.live.drain() {
            e.send(Passivate);
        }
        n
    }

    /// Forgets the restart history (the owner itself was restarted).
    pub fn reset_intensity(&mut self) {
        self.intensity.reset();
    }

    /// Gives back the table's memory once most of its children are gone: after a peak (a reconnect
    /// storm, a busy hour) it would otherwise keep the peak's capacity for good.
    fn shrink_if_sparse(&mut self) {
        let capacity = self.live.capacity();
        if capacity > 1024 && self.live.len() < capacity / 4 {
            self.live.shrink_to_fit();
        }
    }

    /// Handles a child's exit report; see [`ExitOutcome`].
    pub fn exited(&mut self, msg: ChildExited<K, A>) -> ExitOutcome {
        let outcome = self.exit_outcome(msg);
        self.shrink_if_sparse();
        outcome
    }

    fn exit_outcome(&mut self, msg: ChildExited<K, A>) -> ExitOutcome {
        let current = self
            .live
            .get(&msg.key)
            .is_some_and(|e| e.child == msg.child);
        if !current {
            // Already forgotten (passivated, or replaced by a newer activation); dropping `parked`
            // lets its wrapper finish.
            return ExitOutcome::Forgotten;
        }
        let Some(parked) = msg.parked.filter(|_| msg.exit.is_abnormal()) else {
            self.live.remove(&msg.key);
            return ExitOutcome::Forgotten;
        };
        let kind = self.config.kind;
        tracing::warn!(kind, key = %msg.key, exit = ?msg.exit, "supervised child failed; restarting");
        if self.intensity.record(Instant::now()) {
            if parked.restart(msg.exit.cause()) {
                return ExitOutcome::Restarted;
            }
            self.live.remove(&msg.key);
            return ExitOutcome::Forgotten;
        }
        drop(parked);
        let reason = format!(
            "more than {} {kind} restarts in {:?}",
            self.config.max_restarts, self.config.max_window
        );
        metrics::counter!(m::SUPERVISOR_ESCALATIONS, "supervisor" => self.config.supervisor)
            .increment(1);
        tracing::error!(supervisor = self.config.supervisor, %reason, "keyed supervisor escalates");
        self.stop_all();
        ExitOutcome::Escalate(reason)
    }
}
