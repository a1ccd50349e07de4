//! Cluster mode (`cluster.nats_url` with `storage.postgres_url`): several nodes behave as one
//! Switchboard. What each piece owns:
//!
//! - [`bus`]: the node's NATS connection, on its own thread.
//! - [`wire`]: what nodes say to each other, and on which subjects.
//! - [`router`]: the [`crate::chat::routing::ChatRouter`] that reaches sessions, agents and the
//!   queue on whichever node they are.
//! - This file: joining (membership in PostgreSQL: [`crate::store::pg_membership`]), serving what
//!   other nodes send, leading the routing queue when elected, and what a dead node leaves behind.
//!
//! Nothing the broker carries needs to outlive a node: what must not be lost is in PostgreSQL
//! (a session's frames and state, tickets, the outbox) or is acknowledged end to end (an agent's
//! message is acked with its seq by the session that committed it). So plain NATS subjects do,
//! and JetStream is not used.

pub mod bus;
pub mod router;
pub mod wire;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use futures_util::StreamExt;
use tokio::sync::watch;

use self::bus::Bus;
use self::router::{ClusterRouter, Inner};
use self::wire::{node_subject, Envelope, Wire, ALL, QUEUE, QUEUE_ASK};
use crate::chat::agents::ReannounceAgents;
use crate::chat::registry::{EvictSession, ReannounceSessions};
use crate::chat::routing::{ChatRouter, RouteError, SessionCommand, ToAgent, ToQueue};
use crate::domain::ids::{AgentId, SessionId};
use crate::metrics as m;
use crate::store::pg_membership::Membership;

/// Why the node could not join its cluster.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cannot start the cluster thread")]
    Runtime(#[source] std::io::Error),
    #[error("cannot reach NATS: {0}")]
    Connect(String),
}

/// Whether the node has joined its cluster, for `/readyz`.
#[derive(Clone)]
pub struct ClusterStatus {
    joined: watch::Receiver<bool>,
    leading: watch::Receiver<bool>,
    serving: Arc<std::sync::atomic::AtomicBool>,
    bus: Bus,
}

impl ClusterStatus {
    pub fn new(bus: &Bus, membership: &Membership) -> Self {
        Self {
            joined: membership.joined.clone(),
            leading: membership.leading.clone(),
            serving: Default::default(),
            bus: bus.clone(),
        }
    }

    /// Joined: connected to the broker, listening on its subjects and its heartbeat written in
    /// the database.
    pub fn joined(&self) -> bool {
        *self.joined.borrow() && self.bus.connected() && self.serving.load(Ordering::Relaxed)
    }

    pub fn leads_queue(&self) -> bool {
        *self.leading.borrow()
    }

    pub fn node(&self) -> &str {
        &self.bus.node
    }
}

/// Starts serving this node's subjects, the queue's lead when elected, and the handling of dead
/// nodes. The router is the one the chat actors use; `status` says when the node serves.
pub fn start(router: &ClusterRouter, membership: Membership, status: &ClusterStatus) {
    let inner = router.0.clone();
    let bus = inner.bus.clone();
    {
        let inner = inner.clone();
        let serving = status.serving.clone();
        bus.runtime.spawn(async move {
            let subscribe = async {
                let client = &inner.bus.client;
                let mine = client
                    .subscribe(node_subject(inner.me()))
                    .await
                    .map_err(|e| e.to_string())?;
                let all = client
                    .subscribe(ALL.to_string())
                    .await
                    .map_err(|e| e.to_string())?;
                client.flush().await.map_err(|e| e.to_string())?;
                Ok::<_, String>((mine, all))
            };
            match subscribe.await {
                Ok((mine, all)) => {
                    serving.store(true, Ordering::Relaxed);
                    tokio::spawn(serve(inner.clone(), mine));
                    serve(inner, all).await;
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot listen on NATS: this node does not join");
                }
            }
        });
    }
    let Membership {
        joined,
        leading,
        mut dead,
    } = membership;
    bus.runtime.spawn(lead(inner.clone(), leading));
    {
        let inner = inner.clone();
        bus.runtime.spawn(async move {
            while let Some(node) = dead.recv().await {
                bury(&inner, &node);
            }
        });
    }
    drop(joined);
    tracing::info!(node = %bus.node, "cluster node started");
}

/// Follows the election: the elected node empties its queue, listens on the queue's subjects and
/// asks every node to tell it what waits and who is online; a node that lost the lead stops
/// listening and empties its queue.
async fn lead(inner: Arc<Inner>, mut leading: watch::Receiver<bool>) {
    let mut serving: Vec<tokio::task::JoinHandle<()>> = Vec::new();
    loop {
        let now_leading = *leading.borrow_and_update();
        if now_leading != inner.leads() {
            inner.local.tell_queue(ToQueue::Reset);
            inner.agent_nodes().clear();
            for task in serving.drain(..) {
                task.abort();
            }
            if now_leading {
                let subscribed = async {
                    let queue = inner.bus.client.subscribe(QUEUE.to_string()).await.ok()?;
                    let ask = inner
                        .bus
                        .client
                        .subscribe(QUEUE_ASK.to_string())
                        .await
                        .ok()?;
                    inner.bus.client.flush().await.ok()?;
                    Some((queue, ask))
                };
                match subscribed.await {
                    Some((queue, ask)) => {
                        serving.push(tokio::spawn(serve_queue(inner.clone(), queue)));
                        serving.push(tokio::spawn(serve_queue(inner.clone(), ask)));
                        inner.leading.store(true, Ordering::Relaxed);
                        tracing::info!(node = %inner.me(), "this node leads the routing queue");
                        inner.bus.publish(ALL.to_string(), Wire::Rebuild);
                        reannounce(&inner);
                        serving.push(tokio::spawn(push_roster(inner.clone())));
                    }
                    None => tracing::error!("could not listen on the queue's subjects"),
                }
            } else {
                inner.leading.store(false, Ordering::Relaxed);
                tracing::info!(node = %inner.me(), "this node no longer leads the routing queue");
            }
        }
        if leading.changed().await.is_err() {
            return;
        }
    }
}

/// Once the nodes had the time to re-announce (the heartbeat timeout: a node that has not by then
/// is dead), the new leader tells every agent who is online, in full: the last leader's agents
/// were known only to it, and consoles would otherwise keep showing them online.
async fn push_roster(inner: Arc<Inner>) {
    tokio::time::sleep(inner.dead_after).await;
    inner.local.tell_queue(ToQueue::PushRoster);
}

/// This node's sessions and agents tell the queue (its new leader) where they stand.
fn reannounce(inner: &Inner) {
    let shards = inner.local.shards();
    for registry in shards.session_registries() {
        registry.do_send(ReannounceSessions {
            grace: inner.dead_after,
        });
    }
    for registry in shards.agent_registries() {
        registry.do_send(ReannounceAgents);
    }
}

/// A dead node's agents go offline and their chats back to the queue.
fn bury(inner: &Inner, node: &str) {
    let gone: Vec<AgentId> = {
        let mut nodes = inner.agent_nodes();
        let gone = nodes
            .iter()
            .filter(|(_, n)| n.as_str() == node)
            .map(|(id, _)| id.clone())
            .collect::<Vec<_>>();
        for id in &gone {
            nodes.remove(id);
        }
        gone
    };
    tracing::warn!(
        node,
        agents = gone.len(),
        "node dead: its agents go offline, their chats are requeued"
    );
    for agent in gone {
        inner.local.tell_queue(ToQueue::AgentLost { agent });
    }
}

fn open(message: &async_nats::Message) -> Option<Envelope> {
    match serde_json::from_slice::<Envelope>(&message.payload) {
        Ok(envelope) => {
            metrics::counter!(m::CLUSTER_RECEIVED, "kind" => envelope.wire.kind()).increment(1);
            Some(envelope)
        }
        Err(e) => {
            metrics::counter!(m::CLUSTER_ERRORS, "kind" => "unknown", "reason" => "garbled")
                .increment(1);
            tracing::warn!(error = %e, subject = %message.subject, "unreadable message from the broker dropped");
            None
        }
    }
}

/// Serves what arrives on a node's own subjects (its node subject, `sb.all`, its agents').
async fn serve(inner: Arc<Inner>, mut sub: async_nats::Subscriber) {
    while let Some(message) = sub.next().await {
        let Some(Envelope { from, wire }) = open(&message) else {
            continue;
        };
        match wire {
            Wire::Session {
                id,
                command,
                ask,
                forwarded,
            } => {
                let inner = inner.clone();
                tokio::spawn(async move {
                    let answer = serve_session(&inner, id, command, forwarded, &from).await;
                    if let (true, Some(reply)) = (ask, message.reply) {
                        inner.bus.reply(reply, &answer);
                    }
                });
            }
            Wire::AllSessions { command } if from != inner.me() => {
                if let SessionCommand::AgentsOnline(online) = &command {
                    inner.agents_online.store(*online, Ordering::Relaxed);
                }
                inner.local.tell_all_sessions(command);
            }
            Wire::Agent { id, message } => {
                if let Some(session_id) = session_of(&message) {
                    inner.remember(session_id, &from);
                }
                inner.local.tell_agent(&id, message);
            }
            Wire::Agents { ids, message } => inner.local.tell_agents(&ids, message),
            Wire::TakenOver { id } if from != inner.me() => {
                inner.remember(id, &from);
                inner
                    .local
                    .shards()
                    .sessions_of(id)
                    .do_send(EvictSession(id));
            }
            Wire::AgentMoved { id } => inner.retire_here(&id),
            Wire::Rebuild if from != inner.me() => reannounce(&inner),
            _ => {}
        }
    }
}

/// A command from another node for a session that should be here: delivered if it is; passed on
/// once to its owner if it moved.
async fn serve_session(
    inner: &Arc<Inner>,
    id: SessionId,
    command: SessionCommand,
    forwarded: bool,
    from: &str,
) -> Result<Option<u64>, RouteError> {
    match inner.local.ask_session(id, command.clone()).await {
        Err(RouteError::NotLive) if !forwarded => {}
        answer => return answer,
    }
    match inner.journal.owner(id).await {
        Ok(Some(owner)) if owner != inner.me() && owner != from => {
            inner.remember(id, &owner);
            let wire = Wire::Session {
                id,
                command,
                ask: true,
                forwarded: true,
            };
            inner
                .bus
                .request::<Result<Option<u64>, RouteError>>(node_subject(&owner), wire)
                .await
                .unwrap_or(Err(RouteError::NotLive))
        }
        _ => Err(RouteError::NotLive),
    }
}

/// Serves the queue's subjects while this node leads it.
async fn serve_queue(inner: Arc<Inner>, mut sub: async_nats::Subscriber) {
    while let Some(message) = sub.next().await {
        let Some(Envelope { from, wire }) = open(&message) else {
            continue;
        };
        match wire {
            Wire::Queue { message: to_queue } => {
                match &to_queue {
                    ToQueue::Enqueue { session_id, .. }
                    | ToQueue::Held { session_id, .. }
                    | ToQueue::Holding { session_id, .. }
                    | ToQueue::Dequeue { session_id, .. }
                    | ToQueue::Released { session_id, .. } => inner.remember(*session_id, &from),
                    ToQueue::AgentGone { agent } => {
                        let mut nodes = inner.agent_nodes();
                        // An agent who moved on to another node is not gone.
                        if nodes.get(agent).is_some_and(|n| *n != from) {
                            continue;
                        }
                        nodes.remove(agent);
                    }
                    _ => {}
                }
                inner.local.tell_queue(to_queue);
            }
            Wire::AgentUp { up } => {
                inner.moved_to(&up.agent.id, &from);
                let inner = inner.clone();
                tokio::spawn(async move {
                    let snapshot = inner.local.agent_up(up).await.unwrap_or_default();
                    if let Some(reply) = message.reply {
                        inner.bus.reply(reply, &snapshot);
                    }
                });
            }
            Wire::Join { join } => {
                let inner = inner.clone();
                tokio::spawn(async move {
                    let answer = inner.local.join(join).await;
                    if let Some(reply) = message.reply {
                        inner.bus.reply(reply, &answer);
                    }
                });
            }
            _ => {}
        }
    }
}

/// The session a message to an agent is about, if any.
fn session_of(message: &ToAgent) -> Option<SessionId> {
    match message {
        ToAgent::Assigned { session_id, .. }
        | ToAgent::History { session_id, .. }
        | ToAgent::Frames { session_id, .. }
        | ToAgent::Typing { session_id, .. }
        | ToAgent::Released { session_id, .. }
        | ToAgent::Ticket { session_id, .. } => Some(*session_id),
        ToAgent::Push(_) => None,
    }
}
