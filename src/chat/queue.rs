//! The routing queue: one actor (on the first chat thread) that hands sessions waiting for a human to
//! agents. Sessions join it ([`ToQueue::Enqueue`]) when the AI hands off or their agent is gone;
//! agents sign on and off ([`AgentUp`], [`ToQueue::AgentStatus`], [`ToQueue::AgentGone`]) and
//! claim ([`Join`]). In a cluster one node leads the queue and the others' routers bring it their
//! sessions' and agents' messages; [`ToQueue::Reset`] empties it when the lead moves.
//!
//! With auto-assign (`agents.auto_assign`, per agent) the oldest waiting session goes to the
//! online agent with the fewest chats, within their capacity. Every claim, automatic or by hand,
//! reserves the agent's slot here and is then put to the session itself, which alone decides the
//! owner: of two agents racing for one session exactly one wins. The queue pushes what changes:
//! each waiting customer's position, the waiting list and every agent's presence and load to
//! agents, and to every customer whether any agent is online.
//!
//! Its state and rules are pure ([`state`]); it names sessions and agents only by id, and reaches
//! them through the router ([`crate::chat::routing`]).

pub mod state;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;

use self::state::{Entry, QueueState};
use crate::chat::agent::protocol::{AgentServerFrame, AssignedBy, Presence};
use crate::chat::routing::{AgentOp, RouteError, Router, SessionCommand, ToAgent, ToQueue};
pub use crate::chat::routing::{AgentUp, Join, JoinError, Snapshot};
use crate::chat::session::owner::{AgentRef, Refused};
use crate::domain::ids::{AgentId, SessionId};
use crate::metrics as m;

/// Anyone → queue: how many chats wait. Reply: the count (the queue answering is its health).
#[derive(Message, Debug)]
#[rtype(result = "usize")]
pub struct CountWaiting;

/// How often, at most, waiting customers' positions and agents' view of the queue are pushed: each
/// change of a long queue moves everyone behind it, and pushing every one would cost the square of
/// its length.
const PUSH_EVERY: Duration = Duration::from_millis(100);

/// The longest waiting list pushed to agents (the oldest first; `total` says how many wait).
const VIEW_MAX: usize = 50;

pub struct Queue {
    state: QueueState,
    /// Positions or the list changed since the last push; a push is scheduled.
    dirty: bool,
    push_scheduled: bool,
    /// How the queue reaches sessions and agents, by id.
    router: Router,
    /// The waiting sessions.
    sessions: HashSet<SessionId>,
    /// Agents connected (their presence and load are in `state`).
    agents: HashSet<AgentId>,
    agents_online: Arc<AtomicBool>,
    /// Sessions restored in the hands of an agent not connected yet, by agent.
    returning: HashMap<AgentId, Vec<SessionId>>,
    /// Live sessions said to be in the hands of an agent this queue does not know yet, by agent.
    awaiting: HashMap<AgentId, Vec<SessionId>>,
    /// The chats each connected agent's actor said it holds when it last announced itself.
    reported: HashMap<AgentId, HashSet<SessionId>>,
}

impl Queue {
    pub fn new(router: Router, agents_online: Arc<AtomicBool>) -> Self {
        Self {
            state: QueueState::default(),
            dirty: false,
            push_scheduled: false,
            router,
            sessions: HashSet::new(),
            agents: HashSet::new(),
            agents_online,
            returning: HashMap::new(),
            awaiting: HashMap::new(),
            reported: HashMap::new(),
        }
    }

    fn push_all(&self, frame: AgentServerFrame) {
        if self.agents.is_empty() {
            return;
        }
        let agents: Vec<AgentId> = self.agents.iter().cloned().collect();
        self.router.tell_agents(&agents, ToAgent::Push(frame));
    }

    fn push_presence(&self, id: &AgentId) {
        let view = match self.state.agent(id) {
            Some(a) => a.view(id),
            None => return,
        };
        self.push_all(AgentServerFrame::Presence { agent: view });
    }

    fn set_agent(&mut self, agent: AgentRef, presence: Presence, capacity: u32, auto: bool) {
        let id = agent.id.clone();
        self.state
            .set_agent(id.clone(), agent.name, presence, capacity, auto);
        self.push_presence(&id);
    }

    fn publish_agents(&self) {
        let mut by_presence = [0u32; 3];
        let (mut load, mut capacity) = (0u64, 0u64);
        for (_, a) in self.state.agents() {
            by_presence[a.presence as usize] += 1;
            load += a.held.len() as u64;
            if a.presence == Presence::Online {
                capacity += u64::from(a.capacity);
            }
        }
        for p in [Presence::Online, Presence::Away, Presence::Offline] {
            metrics::gauge!(m::AGENTS, "presence" => p.label()).set(by_presence[p as usize] as f64);
        }
        metrics::gauge!(m::AGENTS_LOAD).set(load as f64);
        metrics::gauge!(m::AGENTS_CAPACITY).set(capacity as f64);
        let online = self.state.any_online();
        if self.agents_online.swap(online, Ordering::Relaxed) != online {
            tracing::info!(online, "agents online changed; customers are told");
            self.router
                .tell_all_sessions(SessionCommand::AgentsOnline(online));
        }
    }

    /// After any change: hand out what can be, tell customers who moved, show agents the list.
    fn settle(&mut self, ctx: &mut Context<Self>, queue_changed: bool) {
        let mut changed = queue_changed;
        while let Some((session_id, agent)) = self.state.next_assignment() {
            if !self.agents.contains(&agent) {
                self.state.remove_agent(&agent);
                continue;
            }
            let name = self
                .state
                .agent(&agent)
                .map(|a| a.name.clone())
                .unwrap_or_default();
            let agent = AgentRef { id: agent, name };
            changed = true;
            let fut = self.claim(agent, session_id, AssignedBy::Queue);
            ctx.spawn(fut.map(|_, _, _| ()));
        }
        if changed {
            metrics::gauge!(m::CHAT_QUEUE_LENGTH).set(self.state.len() as f64);
            self.dirty = true;
        }
        if self.dirty && !self.push_scheduled {
            self.push_scheduled = true;
            ctx.run_later(PUSH_EVERY, |act, _| {
                act.push_scheduled = false;
                act.push_queue();
            });
        }
        self.publish_agents();
    }

    /// Tells each customer who moved their place, and agents the list, as it is now.
    fn push_queue(&mut self) {
        if !std::mem::take(&mut self.dirty) {
            return;
        }
        let online = self.state.any_online();
        for (session_id, position) in self.state.moved() {
            if self.sessions.contains(&session_id) {
                self.router.tell_session(
                    session_id,
                    SessionCommand::QueuePosition {
                        position,
                        agents_online: online,
                    },
                );
            }
        }
        self.push_all(AgentServerFrame::Queue {
            waiting: self.state.snapshot(VIEW_MAX),
            total: self.state.len(),
        });
    }

    /// Reserves the agent's slot and puts the claim to the session.
    fn claim(
        &mut self,
        agent: AgentRef,
        session_id: SessionId,
        by: AssignedBy,
    ) -> ResponseActFuture<Self, Result<(), JoinError>> {
        if let Err(e) = self.state.reserve(&agent.id, session_id) {
            return Box::pin(actix::fut::ready(Err(e.into())));
        }
        let id = agent.id.clone();
        let command = SessionCommand::ByAgent {
            agent,
            op: AgentOp::Claim { by },
        };
        let fut = self.router.ask_session(session_id, command);
        let fut = async move {
            match fut.await {
                Ok(_) => Ok(()),
                Err(RouteError::Refused(refused)) => Err(JoinError::Session(refused)),
                Err(RouteError::NotLive) => Err(JoinError::UnknownSession),
            }
        };
        Box::pin(fut.into_actor(self).map(move |result, act, ctx| {
            match &result {
                Ok(()) => {
                    if let Some(entry) = act.state.claimed(&id, session_id) {
                        metrics::histogram!(m::CHAT_QUEUE_WAIT)
                            .record(entry.enqueued.elapsed().as_secs_f64());
                    }
                    act.sessions.remove(&session_id);
                    act.push_presence(&id);
                }
                Err(e) => {
                    tracing::info!(%session_id, agent_id = %id, error = %e, "claim refused");
                    act.state.claim_failed(&id, session_id);
                    if matches!(
                        e,
                        JoinError::UnknownSession | JoinError::Session(Refused::Closed)
                    ) && act.state.remove(session_id).is_some()
                    {
                        act.sessions.remove(&session_id);
                    }
                }
            }
            act.settle(ctx, true);
            result
        }))
    }
}

impl Actor for Queue {
    type Context = Context<Self>;
}

impl actix::Supervised for Queue {
    fn restarting(&mut self, _: &mut Context<Self>) {
        // The state is kept: waiting chats and agents stay where they were.
        tracing::warn!(waiting = self.state.len(), "routing queue restarting");
    }
}

impl Handler<ToQueue> for Queue {
    type Result = ();

    fn handle(&mut self, msg: ToQueue, ctx: &mut Context<Self>) {
        match msg {
            ToQueue::Enqueue {
                session_id,
                customer,
                reason,
                since,
            } => {
                let added = self.state.enqueue(Entry {
                    session_id,
                    customer,
                    reason,
                    since,
                    enqueued: Instant::now(),
                    claiming: None,
                    told: 0,
                });
                self.sessions.insert(session_id);
                self.settle(ctx, added);
            }
            ToQueue::Dequeue {
                session_id,
                abandoned,
            } => {
                self.sessions.remove(&session_id);
                if self.state.remove(session_id).is_some() {
                    if abandoned {
                        metrics::counter!(m::CHAT_ABANDONED).increment(1);
                    }
                    self.settle(ctx, true);
                }
            }
            ToQueue::Released { session_id, agent } => {
                if self.state.released(&agent, session_id) {
                    self.push_presence(&agent);
                    self.settle(ctx, false);
                }
            }
            ToQueue::Held {
                session_id,
                agent,
                grace,
            } => {
                if self.agents.contains(&agent.id) {
                    return self.give_back(agent.clone(), vec![session_id], ctx);
                }
                self.returning
                    .entry(agent.id.clone())
                    .or_default()
                    .push(session_id);
                // Not back within the grace: their chats wait for someone else.
                ctx.run_later(grace, move |act, _| {
                    let Some(list) = act.returning.get_mut(&agent.id) else {
                        return;
                    };
                    let Some(at) = list.iter().position(|id| *id == session_id) else {
                        return;
                    };
                    list.remove(at);
                    if list.is_empty() {
                        act.returning.remove(&agent.id);
                    }
                    tracing::info!(%session_id, agent_id = %agent.id, "agent did not come back after the restart; chat requeued");
                    act.router.tell_session(
                        session_id,
                        SessionCommand::ByAgent {
                            agent,
                            op: AgentOp::Lost,
                        },
                    );
                });
            }
            ToQueue::Holding {
                session_id,
                agent,
                grace,
            } => {
                if self.agents.contains(&agent.id) {
                    let lacks = self
                        .reported
                        .get(&agent.id)
                        .is_some_and(|held| !held.contains(&session_id));
                    if lacks {
                        // Their actor does not have it (it was replaced meanwhile): it is handed
                        // to them, with what they missed.
                        self.give_back(agent.clone(), vec![session_id], ctx);
                    } else {
                        self.state.hold(&agent.id, session_id);
                    }
                    self.push_presence(&agent.id);
                    return self.settle(ctx, false);
                }
                self.awaiting
                    .entry(agent.id.clone())
                    .or_default()
                    .push(session_id);
                ctx.run_later(grace, move |act, _| {
                    let Some(list) = act.awaiting.get_mut(&agent.id) else {
                        return;
                    };
                    let Some(at) = list.iter().position(|id| *id == session_id) else {
                        return;
                    };
                    list.remove(at);
                    if list.is_empty() {
                        act.awaiting.remove(&agent.id);
                        // Gone with their node (the queue's last leader, say): whoever still
                        // shows them online is told.
                        if !act.agents.contains(&agent.id) {
                            act.push_all(AgentServerFrame::Presence {
                                agent: crate::chat::routing::AgentView {
                                    agent_id: agent.id.clone(),
                                    name: agent.name.clone(),
                                    presence: Presence::Offline,
                                    load: 0,
                                    capacity: 0,
                                },
                            });
                        }
                    }
                    tracing::info!(%session_id, agent_id = %agent.id, "agent holding a chat never showed up; chat requeued");
                    act.router.tell_session(
                        session_id,
                        SessionCommand::ByAgent {
                            agent,
                            op: AgentOp::Lost,
                        },
                    );
                });
            }
            ToQueue::AgentStatus {
                agent,
                presence,
                capacity,
                auto_assign,
            } => {
                self.set_agent(agent, presence, capacity, auto_assign);
                self.settle(ctx, false);
            }
            ToQueue::AgentLost { agent } => {
                if let Some(rostered) = self.state.agent(&agent) {
                    let who = AgentRef {
                        id: agent.clone(),
                        name: rostered.name.clone(),
                    };
                    for session_id in rostered.held.clone() {
                        self.router.tell_session(
                            session_id,
                            SessionCommand::ByAgent {
                                agent: who.clone(),
                                op: AgentOp::Lost,
                            },
                        );
                    }
                }
                self.handle(ToQueue::AgentGone { agent }, ctx);
            }
            ToQueue::AgentGone { agent } => {
                if let Some(mut gone) = self.state.remove_agent(&agent) {
                    gone.presence = Presence::Offline;
                    gone.held.clear();
                    self.push_all(AgentServerFrame::Presence {
                        agent: gone.view(&agent),
                    });
                }
                self.agents.remove(&agent);
                self.reported.remove(&agent);
                self.settle(ctx, false);
            }
            ToQueue::PushRoster => {
                let agents: Vec<_> = self.state.agents().map(|(id, a)| a.view(id)).collect();
                tracing::info!(
                    agents = agents.len(),
                    "routing queue rebuilt; roster pushed"
                );
                self.push_all(AgentServerFrame::Roster { agents });
            }
            ToQueue::Reset => {
                tracing::info!(
                    waiting = self.state.len(),
                    agents = self.agents.len(),
                    "routing queue reset"
                );
                self.state = QueueState::default();
                self.sessions.clear();
                self.agents.clear();
                self.returning.clear();
                self.awaiting.clear();
                self.reported.clear();
                self.dirty = false;
                metrics::gauge!(m::CHAT_QUEUE_LENGTH).set(0.0);
            }
        }
    }
}

impl Queue {
    /// Hands an agent back the chats they held before a restart.
    fn give_back(&mut self, agent: AgentRef, sessions: Vec<SessionId>, ctx: &mut Context<Self>) {
        for session_id in sessions {
            self.state.hold(&agent.id, session_id);
            self.reported
                .entry(agent.id.clone())
                .or_default()
                .insert(session_id);
            let command = SessionCommand::ByAgent {
                agent: agent.clone(),
                op: AgentOp::Claim {
                    by: AssignedBy::Queue,
                },
            };
            let id = agent.id.clone();
            ctx.spawn(
                self.router
                    .ask_session(session_id, command)
                    .into_actor(self)
                    .map(move |result, act, ctx| {
                        if result.is_err() {
                            act.state.released(&id, session_id);
                        }
                        act.push_presence(&id);
                        act.settle(ctx, false);
                    }),
            );
        }
    }
}

impl Handler<AgentUp> for Queue {
    type Result = Snapshot;

    fn handle(&mut self, msg: AgentUp, ctx: &mut Context<Self>) -> Snapshot {
        let id = msg.agent.id.clone();
        self.agents.insert(id.clone());
        self.set_agent(
            msg.agent.clone(),
            msg.presence,
            msg.capacity,
            msg.auto_assign,
        );
        let mut handing: std::collections::BTreeSet<SessionId> = self
            .returning
            .remove(&id)
            .unwrap_or_default()
            .into_iter()
            .collect();
        let awaiting = self.awaiting.remove(&id).unwrap_or_default();
        if msg.fresh {
            // A new actor (on another node, say) holds nothing yet: every chat that is theirs is
            // handed to it, with its history.
            handing.extend(awaiting);
            if let Some(rostered) = self.state.agent(&id) {
                handing.extend(rostered.held.iter().copied());
            }
        } else {
            // What their actor still holds counts, and is not handed over again; what it lacks
            // (it was replaced while the queue was being rebuilt) is handed to it.
            for session_id in awaiting {
                if msg.holds.contains(&session_id) {
                    self.state.hold(&id, session_id);
                } else {
                    handing.insert(session_id);
                }
            }
        }
        self.reported
            .insert(id.clone(), msg.holds.iter().copied().collect());
        if !handing.is_empty() {
            self.give_back(msg.agent.clone(), handing.into_iter().collect(), ctx);
        }
        let snapshot = Snapshot {
            agents: self.state.agents().map(|(id, a)| a.view(id)).collect(),
            queue: self.state.snapshot(VIEW_MAX),
        };
        self.settle(ctx, false);
        snapshot
    }
}

impl Handler<CountWaiting> for Queue {
    type Result = usize;

    fn handle(&mut self, _: CountWaiting, _: &mut Context<Self>) -> usize {
        self.state.len()
    }
}

impl Handler<Join> for Queue {
    type Result = ResponseActFuture<Self, Result<(), JoinError>>;

    fn handle(&mut self, msg: Join, _: &mut Context<Self>) -> Self::Result {
        self.claim(msg.agent, msg.session_id, AssignedBy::Join)
    }
}
