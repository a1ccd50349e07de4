//! The agent registry: the keyed supervisor of agents on the chat arbiter, keyed by the agent's id
//! (their token's `sub`), so a second connection of one agent reaches the same actor (the older
//! connection is closed 4009). Like the session registry it ticks every agent for heartbeats,
//! token expiry and the resume grace, and ends them all at shutdown.
//!
//! Takes [`AgentConnected`], [`CountAgents`], [`EndAllAgents`]; agents report exits as
//! [`AgentExited`].

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;

use super::agent::{Agent, AgentDeps, AgentTick, AttachAgent, EndAgent, Opening};
use super::auth::AgentIdentity;
use super::link::Local;
use crate::domain::ids::AgentId;
use crate::supervisor::keyed::{ChildExited, ExitOutcome, KeyedChildren, KeyedConfig};
use crate::supervisor::supervised::{Exit, ExitReport, Restart};

/// Listener → registry: an authenticated agent connection sent `agent.start` or `agent.resume`.
#[derive(Message)]
#[rtype(result = "()")]
pub struct AgentConnected {
    pub conn: Local,
    pub identity: AgentIdentity,
    pub opening: Opening,
}

/// Anyone → registry: agents signed in (connected or within their grace).
#[derive(Message, Debug)]
#[rtype(result = "usize")]
pub struct CountAgents;

/// Shutdown → registry: end every agent. Reply: how many.
#[derive(Message, Debug)]
#[rtype(result = "usize")]
pub struct EndAllAgents;

pub type AgentExited = ChildExited<AgentId, Agent>;

pub struct AgentRegistry {
    deps: Arc<AgentDeps>,
    children: KeyedChildren<AgentId, Agent>,
    escalate: ExitReport,
    /// Agents signed in, read by the listener's admission check.
    live: Arc<AtomicUsize>,
}

impl AgentRegistry {
    pub fn new(deps: Arc<AgentDeps>, live: Arc<AtomicUsize>, escalate: ExitReport) -> Self {
        let s = &deps.sessions;
        let children = KeyedChildren::new(KeyedConfig {
            kind: "agent",
            supervisor: "agents",
            restart: Restart::Transient,
            idle_timeout: Duration::ZERO,
            hibernate_after: Duration::from_millis(s.hibernate_after_ms),
            max_restarts: s.max_restarts,
            max_window: Duration::from_secs(s.max_seconds),
        });
        Self {
            deps,
            children,
            escalate,
            live,
        }
    }

    fn publish_count(&self) {
        self.live.store(self.children.len(), Ordering::Relaxed);
    }
}

impl Actor for AgentRegistry {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.children.attach(ctx.address().recipient());
        let every = Duration::from_millis(self.deps.settings.heartbeat_interval_ms)
            .min(Duration::from_millis(self.deps.sessions.sweep_interval_ms));
        ctx.run_interval(every, |act, _| {
            act.children.broadcast(AgentTick);
            act.children.sweep();
        });
    }
}

impl actix::Supervised for AgentRegistry {
    fn restarting(&mut self, _: &mut Context<Self>) {
        tracing::warn!(
            live = self.children.len(),
            "agent registry restarting; ending every agent"
        );
        self.children.broadcast(EndAgent);
        self.children.stop_all();
        self.children.reset_intensity();
        self.publish_count();
    }
}

impl Handler<AgentConnected> for AgentRegistry {
    type Result = ();

    fn handle(&mut self, msg: AgentConnected, _: &mut Context<Self>) {
        let deps = self.deps.clone();
        let identity = msg.identity.clone();
        let (addr, _) = self
            .children
            .route(msg.identity.id.clone(), || Agent::new(&identity, deps));
        self.publish_count();
        addr.do_send(AttachAgent {
            conn: msg.conn,
            identity: msg.identity,
            opening: msg.opening,
        });
    }
}

impl Handler<AgentExited> for AgentRegistry {
    type Result = ();

    fn handle(&mut self, msg: AgentExited, _: &mut Context<Self>) {
        let outcome = self.children.exited(msg);
        self.publish_count();
        if let ExitOutcome::Escalate(reason) = outcome {
            (self.escalate)(Exit::Escalated(reason));
        }
    }
}

impl Handler<CountAgents> for AgentRegistry {
    type Result = usize;

    fn handle(&mut self, _: CountAgents, _: &mut Context<Self>) -> usize {
        self.children.len()
    }
}

impl Handler<EndAllAgents> for AgentRegistry {
    type Result = usize;

    fn handle(&mut self, _: EndAllAgents, _: &mut Context<Self>) -> usize {
        let n = self.children.len();
        self.children.broadcast(EndAgent);
        n
    }
}
