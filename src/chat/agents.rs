//! The agent registry: the keyed supervisor of agents on one chat thread, keyed by the agent's id
//! (their token's `sub`); an agent always lives on the same thread ([`super::placement`]), so a
//! second connection of one agent reaches the same actor (the older connection is closed 4009). Like the session registry it ticks every agent for heartbeats,
//! token expiry and the resume grace, and ends them all at shutdown.
//!
//! Takes [`AgentConnected`], [`CountAgents`], [`EndAllAgents`], [`PauseAgents`], and from the
//! router [`TellAgent`]; agents report exits as [`AgentExited`].

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use futures_channel::oneshot;

use super::agent::{Agent, AgentDeps, AgentTick, AttachAgent, EndAgent, Opening, PauseAgent};
use super::auth::AgentIdentity;
use super::handover::HandOff;
use super::link::{Lane, Local};
use super::protocol::{close, ErrorCode};
use super::routing::ToAgent;
use crate::domain::ids::{AgentId, SessionId};
use crate::metrics as m;
use crate::supervisor::keyed::{ChildExited, ExitOutcome, KeyedChildren, KeyedConfig};
use crate::supervisor::supervised::{Exit, ExitReport, Restart};

/// Listener → registry: an authenticated agent connection sent `agent.start` or `agent.resume`.
#[derive(Message)]
#[rtype(result = "()")]
pub struct AgentConnected {
    pub conn: Local,
    pub identity: AgentIdentity,
    pub opening: Opening,
    /// For an adopted connection: the chats its console shows.
    pub shown: Vec<SessionId>,
}

/// Anyone → registry: agents signed in (connected or within their grace).
#[derive(Message, Debug, Clone)]
#[rtype(result = "usize")]
pub struct CountAgents;

/// Shutdown or upgrade → registry: end every agent (each keeps their chats for the next process;
/// with `hand_to`, connections are handed over instead of closed). Answered once all have
/// stopped (or after `deadline`), with how many there were.
#[derive(Message, Debug, Default, Clone)]
#[rtype(result = "usize")]
pub struct EndAllAgents {
    pub hand_to: Option<HandOff>,
    pub deadline: Duration,
}

/// Upgrade → registry: every agent stops reading its connection (see [`PauseAgent`]).
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub struct PauseAgents;

/// The router → registry: a message for agent `id`, if they are live here.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct TellAgent {
    pub id: AgentId,
    pub message: ToAgent,
}

/// The cluster → registry: every agent tells the routing queue again that they are up (a new node
/// leads the queue).
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "()")]
pub struct ReannounceAgents;

/// The cluster → registry: agent `id` is connected to another node now; the actor left here ends
/// quietly, keeping their chats (they are theirs on the other node).
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub struct RetireAgent(pub AgentId);

pub type AgentExited = ChildExited<AgentId, Agent>;

/// Refuses an agent's connection: an `error` frame, then close with `close_code`.
fn refuse(conn: Local, code: ErrorCode, message: &str, close_code: u16, reason: &'static str) {
    let mut conn = conn.take();
    let frame = super::agent::protocol::AgentServerFrame::error(code, message, None);
    metrics::counter!(m::CHAT_FRAME_ERRORS, "code" => code.label()).increment(1);
    let _ = conn.link.send(frame.to_text(), Lane::Reliable);
    conn.link.close(close_code, reason);
}

pub struct AgentRegistry {
    deps: Arc<AgentDeps>,
    children: KeyedChildren<AgentId, Agent>,
    escalate: ExitReport,
    /// Agents signed in on every chat thread, read by the listener's admission check; this
    /// registry adds and takes away its own.
    live: Arc<AtomicUsize>,
    /// This registry's share of `live` as last added.
    published: usize,
    /// Agents this process has had: an unknown one resuming was signed in to the previous
    /// process (a restart or an upgrade), not past its grace here.
    seen: std::collections::HashSet<AgentId>,
    /// Ending every agent: answered once all have stopped.
    ending: Vec<oneshot::Sender<()>>,
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
            published: 0,
            seen: std::collections::HashSet::new(),
            ending: Vec::new(),
        }
    }

    fn publish_count(&mut self) {
        let now = self.children.len();
        if now >= self.published {
            self.live.fetch_add(now - self.published, Ordering::Relaxed);
        } else {
            self.live.fetch_sub(self.published - now, Ordering::Relaxed);
        }
        self.published = now;
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
        self.children.broadcast(EndAgent::default());
        self.children.stop_all();
        self.children.reset_intensity();
        self.publish_count();
    }
}

impl Handler<AgentConnected> for AgentRegistry {
    type Result = ();

    fn handle(&mut self, msg: AgentConnected, _: &mut Context<Self>) {
        let known = self.children.get(msg.identity.id.clone()).is_some();
        let mut continuing = None;
        if !known {
            // A resume of an agent whose grace ended has nothing to resume: saying so, rather than
            // quietly starting afresh, tells the console its chats are gone. An agent this
            // process never had was signed in to the one before it: their stream goes on.
            match msg.opening {
                Opening::Resume { last_seq } if !self.seen.contains(&msg.identity.id) => {
                    continuing = Some(last_seq);
                }
                Opening::Adopted { last_seq, .. } => continuing = Some(last_seq),
                _ => {}
            }
            if let (Opening::Resume { .. }, None) = (&msg.opening, continuing) {
                tracing::info!(agent_id = %msg.identity.id, "agent resume refused: no stream kept");
                return refuse(
                    msg.conn,
                    ErrorCode::ResumeRefused,
                    "nothing to resume (the grace ended): send agent.start",
                    close::RESUME_REFUSED,
                    "resume refused",
                );
            }
            // Capacity counts new agents only: one reconnecting is always let back in.
            if self.live.load(Ordering::Relaxed) >= self.deps.settings.max_agents {
                metrics::counter!(m::AGENT_REFUSED, "reason" => "capacity").increment(1);
                return refuse(
                    msg.conn,
                    ErrorCode::ServerBusy,
                    "too many agents signed in; try again later",
                    close::TRY_AGAIN_LATER,
                    "at capacity",
                );
            }
        }
        let deps = self.deps.clone();
        let identity = msg.identity.clone();
        self.seen.insert(msg.identity.id.clone());
        let (addr, _) = self.children.route(msg.identity.id.clone(), || {
            match (continuing, msg.opening) {
                (Some(last_seq), Opening::Adopted { .. }) => {
                    Agent::adopted(&identity, deps, last_seq, msg.shown)
                }
                (Some(last_seq), _) => Agent::continuing(&identity, deps, last_seq),
                (None, _) => Agent::new(&identity, deps),
            }
        });
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
        if self.children.is_empty() {
            for tx in self.ending.drain(..) {
                let _ = tx.send(());
            }
        }
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
    type Result = ResponseFuture<usize>;

    fn handle(&mut self, msg: EndAllAgents, _: &mut Context<Self>) -> Self::Result {
        let n = self.children.len();
        self.children.broadcast(EndAgent {
            hand_to: msg.hand_to,
        });
        let (tx, rx) = oneshot::channel();
        if n == 0 {
            let _ = tx.send(());
        } else {
            self.ending.push(tx);
        }
        Box::pin(async move {
            if tokio::time::timeout(msg.deadline, rx).await.is_err() {
                tracing::warn!("agents did not all stop in time");
            }
            n
        })
    }
}

impl Handler<TellAgent> for AgentRegistry {
    type Result = ();

    fn handle(&mut self, msg: TellAgent, _: &mut Context<Self>) {
        if let Some(addr) = self.children.get(msg.id) {
            addr.do_send(msg.message);
        }
    }
}

impl Handler<RetireAgent> for AgentRegistry {
    type Result = ();

    fn handle(&mut self, msg: RetireAgent, _: &mut Context<Self>) {
        if let Some(addr) = self.children.get(msg.0.clone()) {
            tracing::info!(agent_id = %msg.0, "agent connected to another node; ended here");
            addr.do_send(super::agent::EndAgent { hand_to: None });
        }
    }
}

impl Handler<ReannounceAgents> for AgentRegistry {
    type Result = ();

    fn handle(&mut self, _: ReannounceAgents, _: &mut Context<Self>) {
        self.children.broadcast(super::agent::Reannounce);
    }
}

impl Handler<PauseAgents> for AgentRegistry {
    type Result = ();

    fn handle(&mut self, _: PauseAgents, _: &mut Context<Self>) {
        self.children.broadcast(PauseAgent);
    }
}
