//! The ticket registry: the keyed supervisor of ticket actors. Routing by id, on-demand starts, the
//! idle sweep (hibernate after `tickets.hibernate_after_ms`, passivate after
//! `tickets.idle_timeout_ms`), stale-exit checks, restart intensity (`supervisor.ticket_max_restarts`
//! in `ticket_max_seconds`) and escalation to the root are the generic
//! [`KeyedChildren`](crate::supervisor::keyed::KeyedChildren)'s. What is ticket-specific stays
//! here: how a ticket actor is made (it activates itself from the store, or from Django when the
//! store does not know it), and creating a ticket durably before any actor exists. Memory therefore
//! follows active tickets, not stored ones.

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use serde_json::json;

use super::actor::{TicketActor, TicketDeps};
use super::TicketError;
use crate::bridge::FetchTicket;
use crate::domain::ids::{EventId, RequestId, TicketId};
use crate::domain::principal::Principal;
use crate::domain::ticket::{EventKind, Ticket, TicketEvent};
use crate::metrics as m;
use crate::store::{OutboxRecord, TicketStore, TicketWrite};
use crate::supervisor::keyed::{ChildExited, ExitOutcome, ExitsTo, KeyedChildren, KeyedConfig};
use crate::supervisor::supervised::{Exit, ExitReport, Restart};

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
    /// One more outbox record written in the same transaction (a chat ticket's record for Django).
    pub also: Option<OutboxRecord>,
}

/// Anyone → registry: how many ticket actors are live. Reply: the count.
#[derive(Message, Debug)]
#[rtype(result = "usize")]
pub struct CountLive;

/// Operator/test → registry: passivate every live ticket now. Reply: how many were asked to stop.
#[derive(Message, Debug)]
#[rtype(result = "usize")]
pub struct PassivateAll;

pub struct RegistryConfig {
    pub idle_timeout: Duration,
    /// `Duration::ZERO`: never hibernate.
    pub hibernate_after: Duration,
    pub sweep_interval: Duration,
    pub max_restarts: u32,
    pub max_window: Duration,
}

/// A ticket actor's exit, as its supervision wrapper reports it to the registry.
pub type TicketExited = ChildExited<TicketId, TicketActor>;

/// Where every ticket actor reports its exits (shared by all of them).
pub type TicketExits = ExitsTo<TicketId, TicketActor>;

pub struct TicketRegistry {
    deps: Arc<TicketDeps>,
    sweep_interval: Duration,
    children: KeyedChildren<TicketId, TicketActor>,
    escalate: ExitReport,
}

impl TicketRegistry {
    pub fn new(
        store: Arc<dyn TicketStore>,
        django: Recipient<FetchTicket>,
        config: RegistryConfig,
        escalate: ExitReport,
    ) -> Self {
        let children = KeyedChildren::new(KeyedConfig {
            kind: "ticket",
            supervisor: "tickets",
            restart: Restart::Transient,
            idle_timeout: config.idle_timeout,
            hibernate_after: config.hibernate_after,
            max_restarts: config.max_restarts,
            max_window: config.max_window,
        });
        Self {
            deps: Arc::new(TicketDeps { store, django }),
            sweep_interval: config.sweep_interval,
            children,
            escalate,
        }
    }

    fn publish_count(&self) {
        metrics::gauge!(m::TICKET_ACTORS).set(self.children.len() as f64);
    }

    fn sweep(&mut self) {
        let swept = self.children.sweep();
        if swept.passivated > 0 {
            metrics::counter!(m::TICKET_PASSIVATIONS).increment(swept.passivated as u64);
            self.publish_count();
        }
        if swept.passivated > 0 || swept.hibernated > 0 {
            tracing::debug!(
                passivated = swept.passivated,
                hibernated = swept.hibernated,
                live = self.children.len(),
                "swept idle tickets"
            );
        }
    }

    /// The live actor for `id`, activating one if needed (it loads itself from the store, or from
    /// Django when the store does not know it).
    fn route(&mut self, id: TicketId, request_id: Option<RequestId>) -> Addr<TicketActor> {
        let deps = &self.deps;
        let (addr, started) = self
            .children
            .route(id, || TicketActor::new(id, deps.clone(), request_id));
        if started {
            self.publish_count();
        }
        addr
    }
}

impl Actor for TicketRegistry {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.children.attach(ctx.address().recipient());
        ctx.run_interval(self.sweep_interval, |act, _| act.sweep());
    }
}

impl actix::Supervised for TicketRegistry {
    fn restarting(&mut self, _: &mut Context<Self>) {
        tracing::warn!(
            live = self.children.len(),
            "ticket registry restarting; stopping all tickets"
        );
        self.children.stop_all();
        self.publish_count();
        self.children.reset_intensity();
    }
}

impl Handler<Lookup> for TicketRegistry {
    type Result = MessageResult<Lookup>;

    fn handle(&mut self, msg: Lookup, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.route(msg.id, None))
    }
}

/// HTTP → registry → ticket: deliver `msg` to ticket `id`'s actor (activating it if needed) and
/// relay its reply. One message from the HTTP worker's thread instead of a lookup and a send: the
/// registry and its tickets share an arbiter, so the forward costs no thread switch.
pub struct Route<M> {
    pub id: TicketId,
    pub msg: M,
    /// The request behind the message; an actor it activates passes it on to Django.
    pub request_id: Option<RequestId>,
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

    fn handle(&mut self, route: Route<M>, _: &mut Context<Self>) -> Self::Result {
        let addr = self.route(route.id, route.request_id);
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
        let fut = match msg.also {
            Some(record) => self.deps.store.create_with(write, record),
            None => self.deps.store.create(write),
        };
        Box::pin(async move {
            fut.await?;
            Ok(ticket)
        })
    }
}

impl Handler<TicketExited> for TicketRegistry {
    type Result = ();

    fn handle(&mut self, msg: TicketExited, _: &mut Context<Self>) {
        let outcome = self.children.exited(msg);
        self.publish_count();
        if let ExitOutcome::Escalate(reason) = outcome {
            (self.escalate)(Exit::Escalated(reason));
        }
    }
}

impl Handler<CountLive> for TicketRegistry {
    type Result = usize;

    fn handle(&mut self, _: CountLive, _: &mut Context<Self>) -> usize {
        self.children.len()
    }
}

impl Handler<PassivateAll> for TicketRegistry {
    type Result = usize;

    fn handle(&mut self, _: PassivateAll, _: &mut Context<Self>) -> usize {
        let n = self.children.stop_all();
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
    request_id: Option<RequestId>,
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
            request_id: request_id.clone(),
            timeout,
        };
        match registry.send(route).await {
            Ok(Ok(result)) => return result,
            Ok(Err(MailboxError::Closed)) => last = MailboxError::Closed,
            Ok(Err(source)) => {
                return Err(TicketError::Unavailable {
                    what: "the ticket's actor",
                    source,
                })
            }
            Err(source) => {
                return Err(TicketError::Unavailable {
                    what: "the ticket registry",
                    source,
                })
            }
        }
    }
    Err(TicketError::Unavailable {
        what: "the ticket's actor",
        source: last,
    })
}
