//! The ticket registry: routes by id, activates ticket actors on demand, passivates idle ones, and
//! supervises them (one_for_one, transient children, restart intensity from
//! `supervisor.ticket_max_restarts` / `ticket_max_seconds`; past it, the registry stops every ticket and
//! escalates to the root supervisor). Memory therefore follows active tickets, not stored ones.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use serde_json::json;

use super::actor::TicketActor;
use super::model::{EventId, EventKind, Ticket, TicketEvent, TicketId};
use super::TicketError;
use crate::bridge::FetchTicket;
use crate::metrics as m;
use crate::store::{TicketStore, TicketWrite};
use crate::supervisor::supervised::{self, ChildHandle, Exit, ExitReport, Restart};
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
    pub actor: String,
}

/// A ticket actor's supervision wrapper → registry: the actor exited.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct TicketExited {
    pub id: TicketId,
    pub generation: u64,
    pub exit: Exit,
}

/// Anyone → registry: how many ticket actors are live. Reply: the count.
#[derive(Message, Debug)]
#[rtype(result = "usize")]
pub struct CountLive;

/// Operator/test → registry: passivate every live ticket now. Reply: how many were asked to stop.
#[derive(Message, Debug)]
#[rtype(result = "usize")]
pub struct PassivateAll;

struct Entry {
    addr: Addr<TicketActor>,
    handle: ChildHandle,
    generation: u64,
    last_seen: Instant,
}

pub struct RegistryConfig {
    pub idle_timeout: Duration,
    pub sweep_interval: Duration,
    pub max_restarts: u32,
    pub max_window: Duration,
}

pub struct TicketRegistry {
    store: Arc<dyn TicketStore>,
    django: Recipient<FetchTicket>,
    config: RegistryConfig,
    live: HashMap<TicketId, Entry>,
    generation: u64,
    intensity: Intensity,
    escalate: ExitReport,
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
            store,
            django,
            config,
            live: HashMap::new(),
            generation: 0,
            intensity,
            escalate,
        }
    }

    fn publish_count(&self) {
        metrics::gauge!(m::TICKET_ACTORS).set(self.live.len() as f64);
    }

    fn activate(&mut self, id: TicketId, ctx: &mut Context<Self>) -> Addr<TicketActor> {
        self.generation += 1;
        let generation = self.generation;
        let me = ctx.address();
        let report: ExitReport = Arc::new(move |exit| {
            me.do_send(TicketExited {
                id,
                generation,
                exit,
            })
        });
        let store = self.store.clone();
        let django = self.django.clone();
        let (addr, handle) = supervised::spawn(
            "ticket",
            Restart::Transient,
            move |_| TicketActor::new(id, store, django),
            report,
        );
        self.live.insert(
            id,
            Entry {
                addr: addr.clone(),
                handle,
                generation,
                last_seen: Instant::now(),
            },
        );
        self.publish_count();
        addr
    }

    fn sweep(&mut self) {
        let now = Instant::now();
        let idle = self.config.idle_timeout;
        let before = self.live.len();
        self.live.retain(|_, e| {
            if now.duration_since(e.last_seen) < idle {
                return true;
            }
            // Through the mailbox, so messages already queued are served before it stops.
            e.addr.do_send(super::actor::Passivate);
            false
        });
        let passivated = before - self.live.len();
        if passivated > 0 {
            metrics::counter!(m::TICKET_PASSIVATIONS).increment(passivated as u64);
            tracing::debug!(
                passivated,
                live = self.live.len(),
                "passivated idle tickets"
            );
            self.publish_count();
        }
    }

    fn stop_all_tickets(&mut self) {
        for (_, mut e) in self.live.drain() {
            // Not awaited: the actors stop on their own arbiter; nothing waits on their state.
            drop(e.handle.stop());
        }
        self.publish_count();
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

impl Handler<Lookup> for TicketRegistry {
    type Result = MessageResult<Lookup>;

    fn handle(&mut self, msg: Lookup, ctx: &mut Context<Self>) -> Self::Result {
        if let Some(e) = self.live.get_mut(&msg.id) {
            if e.addr.connected() {
                e.last_seen = Instant::now();
                return MessageResult(e.addr.clone());
            }
        }
        MessageResult(self.activate(msg.id, ctx))
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
        };
        let fut = self.store.create(write);
        Box::pin(async move {
            fut.await?;
            Ok(ticket)
        })
    }
}

impl Handler<TicketExited> for TicketRegistry {
    type Result = ();

    fn handle(&mut self, msg: TicketExited, ctx: &mut Context<Self>) {
        let current = self
            .live
            .get(&msg.id)
            .is_some_and(|e| e.generation == msg.generation);
        if !msg.exit.is_abnormal() {
            if current {
                self.live.remove(&msg.id);
                self.publish_count();
            }
            return;
        }
        if !current {
            // Already forgotten (passivated); its wrapper finishes once it sees no supervisor.
            return;
        }
        tracing::warn!(ticket_id = %msg.id, exit = ?msg.exit, "ticket actor failed; restarting");
        if self.intensity.record(Instant::now()) {
            if let Some(e) = self.live.get(&msg.id) {
                e.handle.restart(msg.exit.cause());
            }
            return;
        }
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
            e.addr.do_send(super::actor::Passivate);
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
        let addr = registry
            .send(Lookup { id })
            .await
            .map_err(|e| TicketError::Unavailable(format!("ticket registry: {e}")))?;
        match addr.send(msg.clone()).timeout(timeout).await {
            Ok(result) => return result,
            Err(MailboxError::Closed) => last = MailboxError::Closed,
            Err(e) => return Err(TicketError::Unavailable(format!("ticket {id}: {e}"))),
        }
    }
    Err(TicketError::Unavailable(format!("ticket {id}: {last}")))
}
