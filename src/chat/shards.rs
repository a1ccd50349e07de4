//! Live chat on every core: `chat.threads` arbiters, each with its own session registry and agent
//! registry. [`ChatShards`] is how the rest of the process reaches them: by a party's id (the rule
//! is [`super::placement`]'s), or all at once; [`LocalRouter`] is the [`ChatRouter`] over them, by
//! which sessions, agents and the queue of this process reach each other.

use actix::prelude::*;
use futures_util::future::{join_all, BoxFuture, FutureExt};

use super::agents::{AgentRegistry, CountAgents, TellAgent};
pub use super::placement::{of_agent, of_session, session_id_on, Shard};
use super::queue::Queue;
use super::registry::{
    AskSession, BroadcastToSessions, CountSessions, SessionRegistry, TellSession,
};
use super::routing::{
    AgentUp, ChatRouter, Join, JoinError, RouteError, SessionCommand, Snapshot, ToAgent, ToQueue,
};
use crate::domain::ids::{AgentId, SessionId};

/// Every chat thread's registries, reached by a party's id or all at once.
#[derive(Clone)]
pub struct ChatShards {
    sessions: Vec<Addr<SessionRegistry>>,
    agents: Vec<Addr<AgentRegistry>>,
}

impl ChatShards {
    /// One session registry and one agent registry per thread, in thread order.
    pub fn new(sessions: Vec<Addr<SessionRegistry>>, agents: Vec<Addr<AgentRegistry>>) -> Self {
        assert!(
            !sessions.is_empty() && sessions.len() == agents.len(),
            "one session and one agent registry per chat thread"
        );
        Self { sessions, agents }
    }

    pub fn count(&self) -> usize {
        self.sessions.len()
    }

    /// The registry of the thread `id` lives on.
    pub fn sessions_of(&self, id: SessionId) -> &Addr<SessionRegistry> {
        &self.sessions[of_session(id, self.count())]
    }

    /// The agent registry of the thread `id` lives on.
    pub fn agents_of(&self, id: &AgentId) -> &Addr<AgentRegistry> {
        &self.agents[of_agent(id, self.count())]
    }

    pub fn session_registries(&self) -> &[Addr<SessionRegistry>] {
        &self.sessions
    }

    pub fn agent_registries(&self) -> &[Addr<AgentRegistry>] {
        &self.agents
    }

    /// Sends `msg` to every session registry at once; the replies in thread order.
    pub async fn all_sessions<M>(&self, msg: M) -> Vec<Result<M::Result, MailboxError>>
    where
        M: Message + Send + Clone + 'static,
        M::Result: Send,
        SessionRegistry: Handler<M>,
    {
        join_all(self.sessions.iter().map(|a| a.send(msg.clone()))).await
    }

    /// Sends `msg` to every agent registry at once; the replies in thread order.
    pub async fn all_agents<M>(&self, msg: M) -> Vec<Result<M::Result, MailboxError>>
    where
        M: Message + Send + Clone + 'static,
        M::Result: Send,
        AgentRegistry: Handler<M>,
    {
        join_all(self.agents.iter().map(|a| a.send(msg.clone()))).await
    }

    /// Live sessions on every thread; `None` if a registry did not answer.
    pub async fn count_sessions(&self) -> Option<usize> {
        self.all_sessions(CountSessions)
            .await
            .into_iter()
            .map(Result::ok)
            .sum()
    }

    /// Agents signed in on every thread; `None` if a registry did not answer.
    pub async fn count_agents(&self) -> Option<usize> {
        self.all_agents(CountAgents)
            .await
            .into_iter()
            .map(Result::ok)
            .sum()
    }
}

/// The [`ChatRouter`] of one process: a party is reached through the registry of its chat thread,
/// which hands the message to it if it is live.
pub struct LocalRouter {
    shards: ChatShards,
    queue: Addr<Queue>,
}

impl LocalRouter {
    pub fn new(shards: ChatShards, queue: Addr<Queue>) -> Self {
        Self { shards, queue }
    }

    pub fn shards(&self) -> &ChatShards {
        &self.shards
    }
}

impl ChatRouter for LocalRouter {
    fn ask_session(
        &self,
        id: SessionId,
        command: SessionCommand,
    ) -> BoxFuture<'static, Result<Option<u64>, RouteError>> {
        let asked = self.shards.sessions_of(id).send(AskSession { id, command });
        async move { asked.await.unwrap_or(Err(RouteError::NotLive)) }.boxed()
    }

    fn tell_session(&self, id: SessionId, command: SessionCommand) {
        self.shards
            .sessions_of(id)
            .do_send(TellSession { id, command });
    }

    fn tell_all_sessions(&self, command: SessionCommand) {
        for registry in self.shards.session_registries() {
            registry.do_send(BroadcastToSessions(command.clone()));
        }
    }

    fn tell_agent(&self, id: &AgentId, message: ToAgent) {
        self.shards.agents_of(id).do_send(TellAgent {
            id: id.clone(),
            message,
        });
    }

    fn tell_queue(&self, message: ToQueue) {
        self.queue.do_send(message);
    }

    fn agent_up(&self, up: AgentUp) -> BoxFuture<'static, Result<Snapshot, RouteError>> {
        let asked = self.queue.send(up);
        async move { asked.await.map_err(|_| RouteError::NotLive) }.boxed()
    }

    fn join(&self, join: Join) -> BoxFuture<'static, Result<(), JoinError>> {
        let asked = self.queue.send(join);
        async move { asked.await.unwrap_or(Err(JoinError::Unreachable)) }.boxed()
    }
}
