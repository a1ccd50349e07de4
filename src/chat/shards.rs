//! Live chat on every core: `chat.threads` arbiters, each with its own session registry and agent
//! registry. [`ChatShards`] is how the rest of the process reaches them: by a party's id (the rule
//! is [`super::placement`]'s), or all at once.

use actix::prelude::*;
use futures_util::future::join_all;

use super::agents::{AgentRegistry, CountAgents};
pub use super::placement::{of_agent, of_session, session_id_on, Shard};
use super::registry::{CountSessions, SessionRegistry};
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
