//! The [`ChatRouter`] of a node in a cluster: a party on this node is reached as
//! [`LocalRouter`] reaches it; one elsewhere over the broker.
//!
//! - **Sessions** are found where they were last heard from (every message from another node
//!   says which node sent it), else here, else where the journal says their owner is. A node that
//!   no longer has a session passes a message on once to its owner.
//! - **Agents** are reached on their own subject, which the node they are connected to listens on.
//! - **The queue** runs on the node that leads it; the others send it their messages.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::{BoxFuture, FutureExt};

use super::bus::{Bus, RequestError};
use super::wire::{agent_subject, node_subject, Wire, QUEUE, QUEUE_ASK};
use crate::chat::routing::{
    AgentUp, ChatRouter, Join, JoinError, RouteError, SessionCommand, Snapshot, ToAgent, ToQueue,
};
use crate::chat::shards::LocalRouter;
use crate::domain::ids::{AgentId, SessionId};
use crate::store::chat_journal::ChatJournal;

/// The router of a node in a cluster (see the module docs). Cheap to clone.
#[derive(Clone)]
pub struct ClusterRouter(pub(super) Arc<Inner>);

pub(super) struct Inner {
    pub local: LocalRouter,
    pub bus: Bus,
    pub journal: Arc<dyn ChatJournal>,
    /// Where sessions of other nodes were last heard from.
    places: Mutex<HashMap<SessionId, String>>,
    /// Whether this node leads the queue.
    pub leading: AtomicBool,
    /// The agents connected here, each with the task listening on their subject.
    agents: Mutex<HashMap<AgentId, tokio::task::JoinHandle<()>>>,
    /// While leading: which node each agent is connected to.
    pub agent_nodes: Mutex<HashMap<AgentId, String>>,
    /// How often a request to the queue is tried while no node leads it.
    pub queue_patience: Duration,
    /// How long a node may be silent before it is dead.
    pub dead_after: Duration,
    pub agents_online: Arc<AtomicBool>,
}

/// How many sessions' places are remembered at most: a bound, not a cache policy (a forgotten
/// place is looked up again).
const PLACES_MAX: usize = 200_000;

impl ClusterRouter {
    pub fn new(
        local: LocalRouter,
        bus: Bus,
        journal: Arc<dyn ChatJournal>,
        queue_patience: Duration,
        dead_after: Duration,
        agents_online: Arc<AtomicBool>,
    ) -> Self {
        Self(Arc::new(Inner {
            local,
            bus,
            journal,
            places: Mutex::new(HashMap::new()),
            leading: AtomicBool::new(false),
            agents: Mutex::new(HashMap::new()),
            agent_nodes: Mutex::new(HashMap::new()),
            queue_patience,
            dead_after,
            agents_online,
        }))
    }
}

impl Inner {
    pub fn me(&self) -> &str {
        &self.bus.node
    }

    fn places(&self) -> std::sync::MutexGuard<'_, HashMap<SessionId, String>> {
        self.places.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Session `id` lives on `node` (as a message from it says).
    pub fn remember(&self, id: SessionId, node: &str) {
        let mut places = self.places();
        if node == self.me() {
            places.remove(&id);
            return;
        }
        if places.len() >= PLACES_MAX {
            places.clear();
        }
        if places.get(&id).map(String::as_str) != Some(node) {
            places.insert(id, node.to_string());
        }
    }

    pub fn forget(&self, id: SessionId) {
        self.places().remove(&id);
    }

    fn place_of(&self, id: SessionId) -> Option<String> {
        self.places().get(&id).cloned()
    }

    pub fn agent_is_here(&self, id: &AgentId) -> bool {
        self.agents
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(id)
    }

    pub fn leads(&self) -> bool {
        self.leading.load(Ordering::Relaxed)
    }

    async fn remote_ask(
        &self,
        node: &str,
        id: SessionId,
        command: SessionCommand,
        forwarded: bool,
    ) -> Result<Option<u64>, RouteError> {
        let wire = Wire::Session {
            id,
            command,
            ask: true,
            forwarded,
        };
        match self
            .bus
            .request::<Result<Option<u64>, RouteError>>(node_subject(node), wire)
            .await
        {
            Ok(answer) => answer,
            Err(e) => {
                tracing::debug!(session_id = %id, node, error = %e, "session's node did not answer");
                Err(RouteError::NotLive)
            }
        }
    }

    /// A command for session `id`, wherever it is (see the module docs); `forwarded`: passed on
    /// by another node already, so not passed on again.
    pub async fn ask(
        self: Arc<Self>,
        id: SessionId,
        command: SessionCommand,
        forwarded: bool,
    ) -> Result<Option<u64>, RouteError> {
        let place = self.place_of(id);
        let tried = match &place {
            Some(node) if !forwarded => {
                match self.remote_ask(node, id, command.clone(), false).await {
                    Err(RouteError::NotLive) => self.forget(id),
                    answer => return answer,
                }
                Some(node.clone())
            }
            _ => {
                match self.local.ask_session(id, command.clone()).await {
                    Err(RouteError::NotLive) => {}
                    answer => return answer,
                }
                None
            }
        };
        if forwarded {
            return Err(RouteError::NotLive);
        }
        // Not where it was thought to be: its owner, as the journal has it.
        match self.journal.owner(id).await {
            Ok(Some(owner)) if owner != self.me() && Some(&owner) != tried.as_ref() => {
                self.remember(id, &owner);
                self.remote_ask(&owner, id, command, true).await
            }
            Ok(Some(owner)) if owner == self.me() && tried.is_some() => {
                self.local.ask_session(id, command).await
            }
            _ => Err(RouteError::NotLive),
        }
    }

    /// Starts listening on agent `id`'s subject (they are connected here).
    fn listen_for(self: &Arc<Self>, id: &AgentId) {
        let mut agents = self.agents.lock().unwrap_or_else(|e| e.into_inner());
        if agents.contains_key(id) {
            return;
        }
        let inner = self.clone();
        let subject = agent_subject(id);
        let task = self.bus.runtime.spawn(async move {
            match inner.bus.client.subscribe(subject).await {
                Ok(sub) => super::serve(inner, sub).await,
                Err(e) => tracing::error!(error = %e, "could not listen for an agent's messages"),
            }
        });
        agents.insert(id.clone(), task);
    }

    pub fn agent_nodes(&self) -> std::sync::MutexGuard<'_, HashMap<AgentId, String>> {
        self.agent_nodes.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn stop_listening_for(&self, id: &AgentId) {
        if let Some(task) = self
            .agents
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id)
        {
            task.abort();
        }
    }

    /// While leading: agent `id` is connected to `node` now; the node they were on stops
    /// listening for them.
    pub fn moved_to(&self, id: &AgentId, node: &str) {
        let old = self.agent_nodes().insert(id.clone(), node.to_string());
        let Some(old) = old.filter(|old| old != node) else {
            return;
        };
        tracing::info!(agent_id = %id, from = %old, to = node, "agent moved to another node");
        if old == self.me() {
            self.retire_here(id);
        } else {
            let id = id.clone();
            self.bus
                .publish(node_subject(&old), Wire::AgentMoved { id });
        }
    }

    /// Agent `id` is another node's now: this node stops listening for them, and the actor left
    /// here ends without giving their chats back.
    pub fn retire_here(&self, id: &AgentId) {
        self.stop_listening_for(id);
        self.local
            .shards()
            .agents_of(id)
            .do_send(crate::chat::agents::RetireAgent(id.clone()));
    }

    /// Asks the queue's leader; while no node leads it, tries again until `queue_patience`.
    async fn ask_queue<T>(&self, wire: Wire) -> Result<T, RequestError>
    where
        T: serde::de::DeserializeOwned + Send + 'static,
    {
        let deadline = tokio::time::Instant::now() + self.queue_patience;
        loop {
            match self
                .bus
                .request::<T>(QUEUE_ASK.to_string(), wire.clone())
                .await
            {
                Err(RequestError::NoResponders) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                answer => return answer,
            }
        }
    }
}

impl ChatRouter for ClusterRouter {
    fn ask_session(
        &self,
        id: SessionId,
        command: SessionCommand,
    ) -> BoxFuture<'static, Result<Option<u64>, RouteError>> {
        let task = self
            .0
            .bus
            .runtime
            .spawn(self.0.clone().ask(id, command, false));
        async move { task.await.unwrap_or(Err(RouteError::NotLive)) }.boxed()
    }

    fn tell_session(&self, id: SessionId, command: SessionCommand) {
        let inner = self.0.clone();
        self.0.bus.runtime.spawn(async move {
            let _ = inner.ask(id, command, false).await;
        });
    }

    fn tell_all_sessions(&self, command: SessionCommand) {
        self.0.local.tell_all_sessions(command.clone());
        self.0
            .bus
            .publish(super::wire::ALL.to_string(), Wire::AllSessions { command });
    }

    fn tell_agent(&self, id: &AgentId, message: ToAgent) {
        if self.0.agent_is_here(id) {
            return self.0.local.tell_agent(id, message);
        }
        self.0.bus.publish(
            agent_subject(id),
            Wire::Agent {
                id: id.clone(),
                message,
            },
        );
    }

    fn tell_agents(&self, ids: &[AgentId], message: ToAgent) {
        // The leader knows which node each agent is on: one message per node. An agent it does
        // not place is told on their own subject.
        let mut by_node: HashMap<String, Vec<AgentId>> = HashMap::new();
        {
            let nodes = self.0.agent_nodes();
            for id in ids {
                match nodes.get(id) {
                    Some(node) => by_node.entry(node.clone()).or_default().push(id.clone()),
                    None => by_node.entry(String::new()).or_default().push(id.clone()),
                }
            }
        }
        for (node, ids) in by_node {
            if node == self.0.me() {
                self.0.local.tell_agents(&ids, message.clone());
            } else if node.is_empty() {
                for id in &ids {
                    self.tell_agent(id, message.clone());
                }
            } else {
                let message = message.clone();
                self.0
                    .bus
                    .publish(node_subject(&node), Wire::Agents { ids, message });
            }
        }
    }

    fn tell_queue(&self, message: ToQueue) {
        if let ToQueue::AgentGone { agent } = &message {
            self.0.stop_listening_for(agent);
        }
        if self.0.leads() {
            if let ToQueue::AgentGone { agent } = &message {
                let mut nodes = self.0.agent_nodes();
                // An agent who moved on to another node is not gone.
                if nodes.get(agent).is_some_and(|n| n != self.0.me()) {
                    return;
                }
                nodes.remove(agent);
            }
            return self.0.local.tell_queue(message);
        }
        self.0
            .bus
            .publish(QUEUE.to_string(), Wire::Queue { message });
    }

    fn agent_up(&self, up: AgentUp) -> BoxFuture<'static, Result<Snapshot, RouteError>> {
        self.0.listen_for(&up.agent.id);
        if self.0.leads() {
            self.0.moved_to(&up.agent.id, &self.0.bus.node.clone());
            return self.0.local.agent_up(up);
        }
        let inner = self.0.clone();
        let task = self.0.bus.runtime.spawn(async move {
            inner
                .ask_queue::<Snapshot>(Wire::AgentUp { up })
                .await
                .map_err(|e| {
                    tracing::warn!(error = %e, "the routing queue did not answer an agent's start");
                    RouteError::NotLive
                })
        });
        async move { task.await.unwrap_or(Err(RouteError::NotLive)) }.boxed()
    }

    fn join(&self, join: Join) -> BoxFuture<'static, Result<(), JoinError>> {
        if self.0.leads() {
            return self.0.local.join(join);
        }
        let inner = self.0.clone();
        let task = self.0.bus.runtime.spawn(async move {
            inner
                .ask_queue::<Result<(), JoinError>>(Wire::Join { join })
                .await
                .unwrap_or(Err(JoinError::Unreachable))
        });
        async move { task.await.unwrap_or(Err(JoinError::Unreachable)) }.boxed()
    }

    fn taken_over(&self, id: SessionId) {
        self.0.forget(id);
        self.0
            .bus
            .publish(super::wire::ALL.to_string(), Wire::TakenOver { id });
    }
}
