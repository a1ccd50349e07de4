//! One live ticket. Started by the [`super::registry::TicketRegistry`] on the first message for its id;
//! loads itself from the store (or imports from Django) before taking any message, then serves reads
//! from memory and serialises writes: each write is made durable by the store before the actor adopts
//! it and replies. Stopped by the registry when idle (passivation); restarted in place after a panic,
//! reloading its state from the store.
//!
//! Thousands of these are live at once, so each is kept small: the dependencies every ticket shares
//! sit behind one [`TicketDeps`] pointer, the id lives in the state rather than beside it, and a ticket
//! idle for `tickets.hibernate_after_ms` is told to [`Hibernate`]: it packs its ticket into one
//! [`CompactTicket`] allocation and expands it again on its next message (as OTP's
//! `hibernate_after`).
//!
//! On a store shared with other nodes ([`TicketStore::shared`], PostgreSQL) the ticket in memory
//! may be behind: reads load it from the store, and a write that meets a version conflict (or an
//! `If-Match` newer than the copy in memory) reloads it and plans the change again.

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use serde_json::json;
use uuid::Uuid;

use super::compact::CompactTicket;
use super::TicketError;
use crate::bridge::FetchTicket;
use crate::domain::ids::{EventId, RequestId, TicketId};
use crate::domain::patch::{apply_patch, TicketPatch};
use crate::domain::precondition::VersionMatch;
use crate::domain::principal::Principal;
use crate::domain::ticket::{Comment, EventKind, Ticket, TicketEvent};
use crate::metrics as m;
use crate::store::{now, StoreError, TicketStore, TicketWrite};
use crate::supervisor::keyed::{Hibernate, Passivate};

/// Registry → ticket (forwarded from HTTP): the current state. Reply: the ticket.
#[derive(Message, Debug, Clone)]
#[rtype(result = "Result<Ticket, TicketError>")]
pub struct GetTicket;

/// HTTP → ticket: a partial update, refused if `expected` does not admit the current version. Reply: the new state.
#[derive(Message, Debug, Clone)]
#[rtype(result = "Result<Ticket, TicketError>")]
pub struct UpdateTicket {
    pub patch: TicketPatch,
    /// What `If-Match` demanded of the current version.
    pub expected: VersionMatch,
    pub actor: Principal,
    /// The REST request behind the change; it travels with the change's outbox record to Django.
    pub request_id: Option<RequestId>,
}

/// HTTP → ticket: add a comment (bumps the version). Reply: the comment and the new state.
#[derive(Message, Debug, Clone)]
#[rtype(result = "Result<(Comment, Ticket), TicketError>")]
pub struct AddComment {
    pub author: Principal,
    pub body: String,
    /// What `If-Match` demanded of the current version.
    pub expected: VersionMatch,
    pub actor: Principal,
    /// The REST request behind the change; it travels with the change's outbox record to Django.
    pub request_id: Option<RequestId>,
}

/// HTTP → ticket: a page of the ticket's history after `after_seq`. Reply: `(seq, event)` pairs.
#[derive(Message, Debug, Clone)]
#[rtype(result = "Result<Vec<(i64, TicketEvent)>, TicketError>")]
pub struct GetEvents {
    pub after_seq: i64,
    pub limit: u32,
}

/// Test hook (only routed when `testing.fault_injection` is on): panic inside a handler.
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub struct InjectPanic;

/// How long an actor for an unknown or unloadable ticket keeps answering before it stops, so the
/// messages already queued behind its activation get that answer instead of a closed mailbox.
const LINGER: Duration = Duration::from_millis(500);

/// What every ticket actor uses, shared by all of them (one pointer per actor instead of a clone of
/// each handle; a `Recipient` clone alone is three allocations).
pub struct TicketDeps {
    pub store: Arc<dyn TicketStore>,
    pub django: Recipient<FetchTicket>,
}

/// Each variant carries the ticket's id (a live or hibernated ticket has it inside), so the actor
/// needs no separate field for it.
#[derive(Debug)]
enum State {
    /// Boxed: the activation's request id is needed only until the load starts, and every byte of
    /// this enum is paid by every live ticket.
    Loading(Box<Activation>),
    Live(Box<Ticket>),
    /// Idle: the same ticket in one allocation, expanded by the next message.
    Hibernated(CompactTicket),
    /// Not in the store nor in Django: answer NotFound, then stop.
    Missing(TicketId),
    /// Could not be loaded (Django down, store error): answer with this, then stop.
    Failed(Box<Failure>),
}

/// Why an actor is loading: which ticket, and the request that asked for it (carried to Django
/// when the ticket must be fetched from there).
#[derive(Debug)]
struct Activation {
    id: TicketId,
    request_id: Option<RequestId>,
}

#[derive(Debug)]
struct Failure {
    id: TicketId,
    error: Arc<TicketError>,
}

pub struct TicketActor {
    state: State,
    deps: Arc<TicketDeps>,
}

impl TicketActor {
    /// An actor that loads ticket `id` when it starts; `request_id` is the request that activated it.
    pub fn new(id: TicketId, deps: Arc<TicketDeps>, request_id: Option<RequestId>) -> Self {
        Self {
            state: State::Loading(Box::new(Activation { id, request_id })),
            deps,
        }
    }

    fn id(&self) -> TicketId {
        match &self.state {
            State::Loading(a) => a.id,
            State::Missing(id) => *id,
            State::Live(t) => t.id,
            State::Hibernated(c) => c.id(),
            State::Failed(f) => f.id,
        }
    }

    /// The ticket, expanded first if the actor hibernated.
    fn live(&mut self) -> Result<&Ticket, TicketError> {
        if let State::Hibernated(c) = &self.state {
            let Some(ticket) = c.decode() else {
                // The bytes were made by `CompactTicket::encode` in this process, so this is a bug.
                // Crashing hands the actor to its supervisor, which restarts it from disk.
                panic!("hibernated ticket {} does not decode", c.id());
            };
            tracing::debug!(ticket_id = %ticket.id, "ticket woke from hibernation");
            self.state = State::Live(Box::new(ticket));
        }
        match &self.state {
            State::Live(t) => Ok(t),
            State::Missing(id) => Err(TicketError::NotFound(*id)),
            State::Failed(f) => Err(TicketError::LoadFailed(f.error.clone())),
            State::Loading(_) | State::Hibernated(_) => Err(TicketError::Loading),
        }
    }

    /// Plans `change` against the ticket, persists it and adopts the result; atomic, so the
    /// actor's writes stay serialised. See [`apply_change`] for what a version conflict does.
    fn write<C: Change>(
        &mut self,
        change: C,
    ) -> AtomicResponse<Self, Result<C::Reply, TicketError>> {
        let current = match self.live() {
            Ok(t) => t.clone(),
            Err(e) => return AtomicResponse::new(Box::pin(fut::ready(Err(e)))),
        };
        let store = self.deps.store.clone();
        let fut = apply_change(store, current, change);
        AtomicResponse::new(Box::pin(fut.into_actor(self).map(|outcome, act, ctx| {
            match outcome.latest {
                Some(t) => act.state = State::Live(Box::new(t)),
                // The copy in memory is stale: the next message reloads from the store.
                None => ctx.stop(),
            }
            outcome.result
        })))
    }
}

/// What a write message asks of its ticket, planned against the ticket as it stands (in memory,
/// or reloaded from a shared store).
trait Change: 'static {
    type Reply: 'static;
    fn plan(&self, current: &Ticket) -> Result<Planned<Self::Reply>, TicketError>;
}

enum Planned<R> {
    /// Persist this write, then answer with the reply (boxed, so an unchanged plan stays small).
    Write(Box<TicketWrite>, R),
    /// Nothing changes; answer at once.
    Unchanged(R),
}

/// How a write ended: the ticket the actor holds now (`None`: its copy is stale, so it stops and
/// the next message reloads it), and the answer.
struct Outcome<R> {
    latest: Option<Ticket>,
    result: Result<R, TicketError>,
}

/// Reloads of one write from a shared store before its conflicts are given up as stale.
const MAX_RELOADS: u32 = 3;

/// Plans and persists `change`. On a store only this process writes, a version conflict means
/// another activation of the ticket wrote first: the answer is a stale version and the actor stops.
/// On a shared store (PostgreSQL, several nodes) the copy in memory may be behind another node's
/// write: a conflict, or an `If-Match` naming a version newer than the one in memory, reloads the
/// ticket and plans again, so the change applies to the current version or its precondition is
/// judged against it.
async fn apply_change<C: Change>(
    store: Arc<dyn TicketStore>,
    mut current: Ticket,
    change: C,
) -> Outcome<C::Reply> {
    let shared = store.shared();
    let id = current.id;
    let mut reloads = 0;
    loop {
        let reason = match change.plan(&current) {
            Err(TicketError::StaleVersion { .. }) if shared && reloads == 0 => "precondition",
            Err(e) => {
                return Outcome {
                    latest: Some(current),
                    result: Err(e),
                }
            }
            Ok(Planned::Unchanged(reply)) => {
                return Outcome {
                    latest: Some(current),
                    result: Ok(reply),
                }
            }
            Ok(Planned::Write(write, reply)) => {
                let ticket = write.ticket.clone();
                match store.update(*write).await {
                    Ok(()) => {
                        return Outcome {
                            latest: Some(ticket),
                            result: Ok(reply),
                        }
                    }
                    Err(StoreError::VersionConflict { .. }) if shared && reloads < MAX_RELOADS => {
                        "conflict"
                    }
                    Err(StoreError::VersionConflict { expected, .. }) => {
                        return Outcome {
                            latest: None,
                            result: Err(TicketError::StaleVersion {
                                current: expected + 1,
                            }),
                        }
                    }
                    Err(e) => {
                        return Outcome {
                            latest: Some(current),
                            result: Err(e.into()),
                        }
                    }
                }
            }
        };
        reloads += 1;
        metrics::counter!(m::TICKET_RELOADS, "reason" => reason).increment(1);
        tracing::debug!(ticket_id = %id, reason, "reloading the ticket from the shared store");
        current = match store.load(id).await {
            Ok(Some(t)) => t,
            Ok(None) => {
                return Outcome {
                    latest: None,
                    result: Err(TicketError::NotFound(id)),
                }
            }
            Err(e) => {
                return Outcome {
                    latest: None,
                    result: Err(e.into()),
                }
            }
        };
    }
}

impl Change for UpdateTicket {
    type Reply = Ticket;

    fn plan(&self, current: &Ticket) -> Result<Planned<Ticket>, TicketError> {
        if !self.expected.admits(current.version) {
            return Err(TicketError::StaleVersion {
                current: current.version,
            });
        }
        let at = now();
        Ok(match apply_patch(current, &self.patch, at)? {
            None => Planned::Unchanged(current.clone()),
            Some(applied) => {
                let ticket = applied.ticket;
                let write = TicketWrite {
                    event: TicketEvent {
                        event_id: EventId::new(),
                        ticket_id: current.id,
                        kind: applied.kind,
                        actor: self.actor.clone(),
                        at,
                        version: ticket.version,
                        changes: applied.changes,
                    },
                    ticket: ticket.clone(),
                    comment: None,
                    request_id: self.request_id.clone(),
                };
                Planned::Write(Box::new(write), ticket)
            }
        })
    }
}

impl Change for AddComment {
    type Reply = (Comment, Ticket);

    fn plan(&self, current: &Ticket) -> Result<Planned<(Comment, Ticket)>, TicketError> {
        if !self.expected.admits(current.version) {
            return Err(TicketError::StaleVersion {
                current: current.version,
            });
        }
        let at = now();
        let comment = Comment {
            id: Uuid::now_v7(),
            ticket_id: current.id,
            author: self.author.clone(),
            body: self.body.clone(),
            created_at: at,
        };
        let mut ticket = current.clone();
        ticket.version += 1;
        ticket.updated_at = at;
        let write = TicketWrite {
            event: TicketEvent {
                event_id: EventId::new(),
                ticket_id: ticket.id,
                kind: EventKind::Commented,
                actor: self.actor.clone(),
                at,
                version: ticket.version,
                changes: json!({"comment": {"id": comment.id, "author": comment.author, "body": comment.body}}),
            },
            ticket: ticket.clone(),
            comment: Some(comment.clone()),
            request_id: self.request_id.clone(),
        };
        Ok(Planned::Write(Box::new(write), (comment, ticket)))
    }
}

impl Actor for TicketActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let id = self.id();
        let request_id = match &mut self.state {
            State::Loading(a) => a.request_id.take(),
            _ => None,
        };
        let deps = self.deps.clone();
        let load = async move {
            let TicketDeps { store, django } = &*deps;
            if let Some(t) = store.load(id).await? {
                return Ok((Some(t), "store"));
            }
            let fetched = django
                .send(FetchTicket { id, request_id })
                .await
                .map_err(|source| TicketError::Unavailable {
                    what: "the Django calls lane",
                    source,
                })?
                .map_err(TicketError::DjangoUnavailable)?;
            match fetched {
                Some(t) => {
                    let event = TicketEvent {
                        event_id: EventId::new(),
                        ticket_id: id,
                        kind: EventKind::Imported,
                        actor: Principal::Django,
                        at: now(),
                        version: t.version,
                        changes: json!({}),
                    };
                    store.import(t, event).await?;
                    // Read back: a concurrent import may have won; the stored copy is the truth.
                    Ok((store.load(id).await?, "django"))
                }
                None => Ok((None, "none")),
            }
        };
        let load = tracing::Instrument::instrument(
            load,
            tracing::info_span!("ticket_activation", ticket_id = %id),
        );
        // A ticket actor lives until it is told to stop (`Passivate`), not until its last address is
        // dropped: the registry holds only a weak address. actix keeps an actor with a pending
        // future running, and this one is zero-sized, so it costs no allocation.
        ctx.spawn(fut::wrap_future(std::future::pending::<()>()));
        ctx.wait(
            load.into_actor(self).map(
                move |result: Result<_, TicketError>, act, ctx| match result {
                    Ok((Some(t), source)) => {
                        metrics::counter!(m::TICKET_ACTIVATIONS, "source" => source).increment(1);
                        act.state = State::Live(Box::new(t));
                    }
                    Ok((None, _)) => {
                        act.state = State::Missing(id);
                        ctx.run_later(LINGER, |_, ctx| ctx.stop());
                    }
                    Err(e) => {
                        tracing::warn!(ticket_id = %id, error = %crate::bridge::client::chain(&e), "ticket activation failed");
                        act.state = State::Failed(Box::new(Failure {
                            id,
                            error: Arc::new(e),
                        }));
                        ctx.run_later(LINGER, |_, ctx| ctx.stop());
                    }
                },
            ),
        );
    }
}

impl actix::Supervised for TicketActor {
    fn restarting(&mut self, _: &mut Context<Self>) {
        // Whatever the panic left half-done in memory is dropped; started() reloads from disk.
        let id = self.id();
        tracing::warn!(ticket_id = %id, "ticket actor restarting from durable state");
        self.state = State::Loading(Box::new(Activation {
            id,
            request_id: None,
        }));
    }
}

impl Handler<GetTicket> for TicketActor {
    type Result = Response<Result<Ticket, TicketError>>;

    fn handle(&mut self, _: GetTicket, _: &mut Context<Self>) -> Self::Result {
        // Another node may have changed a ticket in a shared store: read it there, never stale.
        let known = matches!(self.state, State::Live(_) | State::Hibernated(_));
        if !(known && self.deps.store.shared()) {
            return Response::reply(self.live().cloned());
        }
        let id = self.id();
        let load = self.deps.store.load(id);
        Response::fut(async move {
            match load.await {
                Ok(Some(t)) => Ok(t),
                Ok(None) => Err(TicketError::NotFound(id)),
                Err(e) => Err(e.into()),
            }
        })
    }
}

impl Handler<UpdateTicket> for TicketActor {
    type Result = AtomicResponse<Self, Result<Ticket, TicketError>>;

    fn handle(&mut self, msg: UpdateTicket, _: &mut Context<Self>) -> Self::Result {
        self.write(msg)
    }
}

impl Handler<AddComment> for TicketActor {
    type Result = AtomicResponse<Self, Result<(Comment, Ticket), TicketError>>;

    fn handle(&mut self, msg: AddComment, _: &mut Context<Self>) -> Self::Result {
        self.write(msg)
    }
}

impl Handler<GetEvents> for TicketActor {
    type Result = ResponseFuture<Result<Vec<(i64, TicketEvent)>, TicketError>>;

    fn handle(&mut self, msg: GetEvents, _: &mut Context<Self>) -> Self::Result {
        if let Err(e) = self.live() {
            return Box::pin(async move { Err(e) });
        }
        let fut = self.deps.store.events(self.id(), msg.after_seq, msg.limit);
        Box::pin(async move { Ok(fut.await?) })
    }
}

impl Handler<Passivate> for TicketActor {
    type Result = ();

    fn handle(&mut self, _: Passivate, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}

impl Handler<Hibernate> for TicketActor {
    type Result = ();

    fn handle(&mut self, _: Hibernate, _: &mut Context<Self>) {
        // Only a live ticket packs; one still loading, missing or failed has nothing to pack.
        let State::Live(ticket) = &self.state else {
            return;
        };
        let _span = tracing::debug_span!("ticket_hibernation", ticket_id = %ticket.id).entered();
        let compact = CompactTicket::encode(ticket);
        tracing::debug!(bytes = compact.len(), "ticket hibernated");
        self.state = State::Hibernated(compact);
        metrics::counter!(m::TICKET_HIBERNATIONS).increment(1);
    }
}

impl Handler<InjectPanic> for TicketActor {
    type Result = ();

    fn handle(&mut self, _: InjectPanic, _: &mut Context<Self>) {
        // Corrupt memory first, so the test can prove the restart reloads from disk.
        let _ = self.live();
        if let State::Live(t) = &mut self.state {
            t.subject = "corrupted by injected panic".into();
        }
        panic!("injected panic in ticket actor {}", self.id());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::supervisor::dynamic::DynamicSupervised;
    use crate::ticket::registry::TicketExits;

    /// Each live ticket is one tokio task holding this wrapper. tokio rounds a task's allocation up to
    /// a multiple of 128 bytes and adds 104 bytes of its own (actix 0.13.5, tokio 1.54 on x86_64), so
    /// a wrapper of up to 408 bytes fits a 512-byte task; at 409 every live ticket costs 128 bytes
    /// more. If this fails after a dependency upgrade, re-measure (see BENCHMARKS.md) before
    /// raising it.
    #[test]
    fn a_ticket_task_fits_its_size_class() {
        let size = std::mem::size_of::<DynamicSupervised<TicketActor, TicketExits>>();
        assert!(
            size <= 408,
            "DynamicSupervised<TicketActor> is {size} bytes"
        );
    }
}
