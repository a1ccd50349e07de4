//! The ticket registry: routes by id, activates ticket actors on demand, hibernates and passivates
//! idle ones, and supervises them (one_for_one, transient children, restart intensity from
//! `supervisor.ticket_max_restarts` / `ticket_max_seconds`; past it, the registry stops every ticket and
//! escalates to the root supervisor). Memory therefore follows active tickets, not stored ones.
//!
//! Tickets are dynamic children ([`crate::supervisor::dynamic`]): they all report exits through one
//! shared [`TicketExits`], and a parked (panicked) ticket hands the registry its control channel with
//! the report. Every message for a ticket is routed through `Lookup`, so the registry knows each
//! ticket's last message; its periodic sweep tells tickets idle for `tickets.hibernate_after_ms` to
//! [`Hibernate`] and stops those idle for `tickets.idle_timeout_ms`. One sweep replaces a timer per
//! actor, which would cost more memory than hibernation saves.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use actix::WeakAddr;
use serde_json::json;

use super::actor::{Hibernate, Passivate, TicketActor, TicketDeps};
use super::TicketError;
use crate::bridge::FetchTicket;
use crate::domain::ids::{EventId, RequestId, TicketId};
use crate::domain::principal::Principal;
use crate::domain::ticket::{EventKind, Ticket, TicketEvent};
use crate::metrics as m;
use crate::store::{TicketStore, TicketWrite};
use crate::supervisor::dynamic::{self, ChildExit, ExitSink, Parked};
use crate::supervisor::supervised::{Exit, ExitReport, Restart};
use crate::supervisor::Intensity;

/// HTTP → registry: the address of the ticket's actor, activating it if needed.
#[derive(Message, Debug)]
#[rtype(result = "Addr<TicketActor>")]
pub struct Lookup {
    pub id: TicketId,
}

/// HTTP → registry: store a new ticket (durably, with its `created` event and outbox entry).
/// Reply: the stored ticket. The actor is activated by the first request that needs it.
#[derive(Message, Debug)]
#[rtype(result = "Result<Ticket, TicketError>")]
pub struct CreateTicket {
    pub ticket: Ticket,
    pub actor: Principal,
    /// The REST request behind the creation; it travels with the outbox record to Django.
    pub request_id: Option<RequestId>,
}

/// A ticket actor's supervision wrapper (through [`TicketExits`]) → registry: the actor exited.
/// `parked` is how to restart it; dropping it stops the actor.
#[derive(Message)]
#[rtype(result = "()")]
pub struct TicketExited {
    pub id: TicketId,
    /// Which activation: compared with the registry's current one for `id`.
    pub child: WeakAddr<TicketActor>,
    pub exit: Exit,
    pub parked: Option<Parked>,
}

/// Where every ticket actor's supervision wrapper reports its exits: the registry's mailbox. One
/// instance is shared by all tickets.
pub struct TicketExits {
    registry: Addr<TicketRegistry>,
}

impl ExitSink<TicketActor> for TicketExits {
    type Key = TicketId;

    fn kind(&self) -> &'static str {
        "ticket"
    }

    fn restart_type(&self) -> Restart {
        Restart::Transient
    }

    fn exited(&self, exit: ChildExit<TicketActor, TicketId>) {
        // do_send ignores the mailbox's capacity: an exit report must never be refused.
        self.registry.do_send(TicketExited {
            id: exit.key,
            child: exit.child,
            exit: exit.exit,
            parked: exit.parked,
        });
    }
}

/// Anyone → registry: how many ticket actors are live. Reply: the count.
#[derive(Message, Debug)]
#[rtype(result = "usize")]
pub struct CountLive;

/// Operator/test → registry: passivate every live ticket now. Reply: how many were asked to stop.
#[derive(Message, Debug)]
#[rtype(result = "usize")]
pub struct PassivateAll;

/// One live ticket, kept small: the map holds one per live actor.
struct Entry {
    /// Routes messages. Weak: a strong address costs two allocations, and a ticket actor lives until
    /// it is told to stop (it does not stop when its last address goes), so the registry must send
    /// `Passivate` to every entry it forgets.
    child: WeakAddr<TicketActor>,
    /// The registry's clock (milliseconds, wrapping) at the last message routed to it.
    seen: u32,
    /// Told to hibernate since that message.
    hibernated: bool,
}

pub struct RegistryConfig {
    pub idle_timeout: Duration,
    /// `Duration::ZERO`: never hibernate.
    pub hibernate_after: Duration,
    pub sweep_interval: Duration,
    pub max_restarts: u32,
    pub max_window: Duration,
}

pub struct TicketRegistry {
    deps: Arc<TicketDeps>,
    /// Made with the first activation (it needs the registry's own address).
    exits: Option<Arc<TicketExits>>,
    config: RegistryConfig,
    live: HashMap<TicketId, Entry>,
    /// Origin of the entries' `seen` clock.
    epoch: Instant,
    intensity: Intensity,
    escalate: ExitReport,
}

/// Milliseconds as the registry's 32-bit clock counts them (ages compare with `wrapping_sub`, which
/// config validation keeps correct by bounding the idle timeout well below 2^32 ms).
fn millis(d: Duration) -> u32 {
    u32::try_from(d.as_millis()).unwrap_or(u32::MAX)
}

impl TicketRegistry {
    pub fn new(
        store: Arc<dyn TicketStore>,
        django: Recipient<FetchTicket>,
        config: RegistryConfig,
        escalate: ExitReport,
    ) -> Self {
        let intensity = Intensity::new(config.max_restarts, config.max_window);
        Self {
            deps: Arc::new(TicketDeps { store, django }),
            exits: None,
            config,
            live: HashMap::new(),
            epoch: Instant::now(),
            intensity,
            escalate,
        }
    }

    fn now(&self) -> u32 {
        // Truncation is the wrap-around of the clock.
        self.epoch.elapsed().as_millis() as u32
    }

    fn publish_count(&self) {
        metrics::gauge!(m::TICKET_ACTORS).set(self.live.len() as f64);
    }

    fn activate(&mut self, id: TicketId, ctx: &mut Context<Self>) -> Addr<TicketActor> {
        let exits = self
            .exits
            .get_or_insert_with(|| {
                Arc::new(TicketExits {
                    registry: ctx.address(),
                })
            })
            .clone();
        let deps = self.deps.clone();
        let addr = dynamic::spawn(exits, id, move |_| TicketActor::new(id, deps));
        let seen = self.now();
        self.live.insert(
            id,
            Entry {
                child: addr.downgrade(),
                seen,
                hibernated: false,
            },
        );
        self.publish_count();
        addr
    }

    fn sweep(&mut self) {
        let now = self.now();
        let idle = millis(self.config.idle_timeout);
        let hibernate_after = millis(self.config.hibernate_after);
        let before = self.live.len();
        let mut hibernated = 0u64;
        self.live.retain(|_, e| {
            let age = now.wrapping_sub(e.seen);
            if age >= idle {
                // Through the mailbox, so messages already queued are served before it stops.
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
        let passivated = before - self.live.len();
        if passivated > 0 {
            metrics::counter!(m::TICKET_PASSIVATIONS).increment(passivated as u64);
            self.publish_count();
        }
        if passivated > 0 || hibernated > 0 {
            tracing::debug!(
                passivated,
                hibernated,
                live = self.live.len(),
                "swept idle tickets"
            );
        }
    }

    /// Stops every ticket through its mailbox (after the messages already queued); a parked one
    /// stops when the registry drops its `Parked`.
    fn stop_all_tickets(&mut self) {
        for (_, e) in self.live.drain() {
            e.send(Passivate);
        }
        self.publish_count();
    }
}

impl Entry {
    /// The actor's address while it is still running.
    fn addr(&self) -> Option<Addr<TicketActor>> {
        self.child.upgrade().filter(|a| a.connected())
    }

    /// Sends without waiting; an actor already gone needs nothing.
    fn send<M>(&self, msg: M)
    where
        M: Message + Send + 'static,
        M::Result: Send,
        TicketActor: Handler<M>,
    {
        if let Some(addr) = self.addr() {
            addr.do_send(msg);
        }
    }
}

impl Actor for TicketRegistry {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.run_interval(self.config.sweep_interval, |act, _| act.sweep());
    }
}

impl actix::Supervised for TicketRegistry {
    fn restarting(&mut self, _: &mut Context<Self>) {
        tracing::warn!(
            live = self.live.len(),
            "ticket registry restarting; stopping all tickets"
        );
        self.stop_all_tickets();
        self.intensity.reset();
    }
}

impl TicketRegistry {
    /// The live actor for `id`, activating one if needed.
    fn route(&mut self, id: TicketId, ctx: &mut Context<Self>) -> Addr<TicketActor> {
        let now = self.now();
        if let Some(e) = self.live.get_mut(&id) {
            if let Some(addr) = e.addr() {
                e.seen = now;
                e.hibernated = false;
                return addr;
            }
        }
        self.activate(id, ctx)
    }
}

impl Handler<Lookup> for TicketRegistry {
    type Result = MessageResult<Lookup>;

    fn handle(&mut self, msg: Lookup, ctx: &mut Context<Self>) -> Self::Result {
        MessageResult(self.route(msg.id, ctx))
    }
}

/// HTTP → registry → ticket: deliver `msg` to ticket `id`'s actor (activating it if needed) and
/// relay its reply. One message from the HTTP worker's thread instead of a lookup and a send: the
/// registry and its tickets share an arbiter, so the forward costs no thread switch.
pub struct Route<M> {
    pub id: TicketId,
    pub msg: M,
    /// How long the ticket may take to answer.
    pub timeout: Duration,
}

impl<M> Message for Route<M>
where
    M: Message + Send + 'static,
    M::Result: Send,
{
    type Result = Result<M::Result, MailboxError>;
}

impl<M> Handler<Route<M>> for TicketRegistry
where
    M: Message + Send + 'static,
    M::Result: Send,
    TicketActor: Handler<M>,
{
    type Result = ResponseFuture<Result<M::Result, MailboxError>>;

    fn handle(&mut self, route: Route<M>, ctx: &mut Context<Self>) -> Self::Result {
        let addr = self.route(route.id, ctx);
        Box::pin(addr.send(route.msg).timeout(route.timeout))
    }
}

impl Handler<CreateTicket> for TicketRegistry {
    type Result = ResponseFuture<Result<Ticket, TicketError>>;

    fn handle(&mut self, msg: CreateTicket, _: &mut Context<Self>) -> Self::Result {
        let ticket = msg.ticket;
        let write = TicketWrite {
            event: TicketEvent {
                event_id: EventId::new(),
                ticket_id: ticket.id,
                kind: EventKind::Created,
                actor: msg.actor,
                at: ticket.created_at,
                version: ticket.version,
                changes: json!({}),
            },
            ticket: ticket.clone(),
            comment: None,
            request_id: msg.request_id,
        };
        let fut = self.deps.store.create(write);
        Box::pin(async move {
            fut.await?;
            Ok(ticket)
        })
    }
}

impl Handler<TicketExited> for TicketRegistry {
    type Result = ();

    fn handle(&mut self, msg: TicketExited, ctx: &mut Context<Self>) {
        let current = self.live.get(&msg.id).is_some_and(|e| e.child == msg.child);
        if !current {
            // Already forgotten (passivated, or replaced by a newer activation); dropping `parked`
            // lets its wrapper finish.
            return;
        }
        let Some(parked) = msg.parked.filter(|_| msg.exit.is_abnormal()) else {
            self.live.remove(&msg.id);
            self.publish_count();
            return;
        };
        tracing::warn!(ticket_id = %msg.id, exit = ?msg.exit, "ticket actor failed; restarting");
        if self.intensity.record(Instant::now()) {
            if !parked.restart(msg.exit.cause()) {
                self.live.remove(&msg.id);
                self.publish_count();
            }
            return;
        }
        drop(parked);
        let reason = format!(
            "more than {} ticket restarts in {:?}",
            self.config.max_restarts, self.config.max_window
        );
        metrics::counter!(m::SUPERVISOR_ESCALATIONS, "supervisor" => "tickets").increment(1);
        tracing::error!(%reason, "ticket registry escalates");
        self.stop_all_tickets();
        (self.escalate)(Exit::Escalated(reason));
        let _ = ctx;
    }
}

impl Handler<CountLive> for TicketRegistry {
    type Result = usize;

    fn handle(&mut self, _: CountLive, _: &mut Context<Self>) -> usize {
        self.live.len()
    }
}

impl Handler<PassivateAll> for TicketRegistry {
    type Result = usize;

    fn handle(&mut self, _: PassivateAll, _: &mut Context<Self>) -> usize {
        let n = self.live.len();
        for (_, e) in self.live.drain() {
            e.send(Passivate);
        }
        metrics::counter!(m::TICKET_PASSIVATIONS).increment(n as u64);
        self.publish_count();
        n
    }
}

/// Sends `msg` to ticket `id`'s actor through the registry. If the actor stopped between lookup and
/// delivery (passivated, or restarted after a panic that took the message with it), routes once more.
pub async fn call<M, T>(
    registry: &Addr<TicketRegistry>,
    id: TicketId,
    msg: M,
    timeout: Duration,
) -> Result<T, TicketError>
where
    M: Message<Result = Result<T, TicketError>> + Clone + Send + 'static,
    T: Send + 'static,
    TicketActor: Handler<M>,
{
    let mut last = MailboxError::Closed;
    for _ in 0..3 {
        let route = Route {
            id,
            msg: msg.clone(),
            timeout,
        };
        match registry.send(route).await {
            Ok(Ok(result)) => return result,
            Ok(Err(MailboxError::Closed)) => last = MailboxError::Closed,
            Ok(Err(e)) => return Err(TicketError::Unavailable(format!("ticket {id}: {e}"))),
            Err(e) => return Err(TicketError::Unavailable(format!("ticket registry: {e}"))),
        }
    }
    Err(TicketError::Unavailable(format!("ticket {id}: {last}")))
}
