//! The session's side of human agents and the routing queue: claims, an agent's messages, typing,
//! leaving, tickets and closing ([`SessionCommand`]), forwarding every numbered frame to the agent
//! holding the session, joining the queue, and telling the customer their place in it and whether
//! anyone is online.
//!
//! The owner's rules are pure ([`super::owner`], [`super::state`]); this file carries them out.

use std::sync::atomic::Ordering;
use std::time::Instant;

use actix::prelude::*;

use super::owner::{AgentRef, Refused};
use super::{AgentLink, Session};
use crate::chat::agent::protocol::{AssignedBy, Released};
use crate::chat::link::Lane;
use crate::chat::protocol::{CloseReason, ServerFrame};
use crate::chat::routing::{AgentOp, SessionCommand, ToAgent, ToQueue};
use crate::domain::ids::{AgentId, EventId};
use crate::metrics as m;
use crate::store::{HandoffEvent, HandoffRecord, OutboxRecord};

/// Told to a customer whose chat is queued while no agent is online.
const NOTE_NO_AGENT: &str = "No agent is online right now. Your chat stays in the queue and \
the first agent to come online will answer here.";

impl Session {
    /// Sends the agent holding the session every numbered frame they have not had yet (that the
    /// journal has: nobody is sent a frame a crash could take back).
    pub(super) fn forward_to_agent(&mut self) {
        let upto = self.committed.min(self.state.last_seq());
        let Some(link) = self.agent.as_mut() else {
            return;
        };
        if link.forwarded >= upto {
            return;
        }
        let mut frames = self.state.frames_after(link.forwarded);
        frames.retain(|f| f.seq().is_some_and(|s| s <= upto));
        link.forwarded = upto;
        self.deps.router.tell_agent(
            &link.id,
            ToAgent::Frames {
                session_id: self.state.id,
                frames,
            },
        );
    }

    /// Tells the queue where the session stands (it waits, or is an agent's), for a queue that
    /// does not know it: led anew by another node, or the session loaded here from the journal.
    pub(super) fn reannounce(&mut self, grace: std::time::Duration) {
        match &self.state.owner {
            super::state::Owner::Queued { reason } => {
                self.deps.router.tell_queue(ToQueue::Enqueue {
                    session_id: self.id(),
                    customer: self.state.customer.name.clone(),
                    reason: reason.clone(),
                    since: self.state.queued_since.unwrap_or_else(chrono::Utc::now),
                })
            }
            // Not linked to its agent yet (read back from the journal): it is handed to them again,
            // which links it up and brings them anything they have not seen.
            super::state::Owner::Agent(agent) if self.agent.is_none() => {
                self.deps.router.tell_queue(ToQueue::Held {
                    session_id: self.id(),
                    agent: agent.clone(),
                    grace,
                })
            }
            super::state::Owner::Agent(agent) => self.deps.router.tell_queue(ToQueue::Holding {
                session_id: self.id(),
                agent: agent.clone(),
                grace,
            }),
            _ => {}
        }
    }

    /// The session now waits for an agent: into the queue, and Django is told.
    pub(super) fn enqueue(&mut self, reason: String, ctx: &mut Context<Self>) {
        if !self.deps.agents_online.load(Ordering::Relaxed) {
            let limits = self.limits();
            let note = self
                .state
                .system(&limits, NOTE_NO_AGENT.into(), chrono::Utc::now());
            self.deliver(&note, Lane::Reliable);
            self.account();
        }
        self.in_queue = true;
        let since = chrono::Utc::now();
        self.state.queued_since = Some(since);
        self.dirty = true;
        self.deps.router.tell_queue(ToQueue::Enqueue {
            session_id: self.id(),
            customer: self.state.customer.name.clone(),
            reason: reason.clone(),
            since,
        });
        metrics::counter!(m::CHAT_HANDOFFS, "stage" => "requested").increment(1);
        tracing::info!(session_id = %self.id(), %reason, "chat waits for an agent");
        self.record_handoff(HandoffEvent::Requested, reason, None, ctx);
    }

    /// `handoff_requested` / `handoff_accepted` reach Django's records through the outbox.
    fn record_handoff(
        &mut self,
        event: HandoffEvent,
        reason: String,
        agent: Option<&AgentRef>,
        ctx: &mut Context<Self>,
    ) {
        let record = HandoffRecord {
            handoff_id: EventId::new(),
            session_id: self.id(),
            event,
            reason,
            agent_id: agent.map(|a| a.id.clone()),
            agent_name: agent.map(|a| a.name.clone()),
            customer_id: self.state.customer.id.clone(),
            customer_name: self.state.customer.name.clone(),
            at: chrono::Utc::now(),
            transcript: self.state.transcript(&self.limits()),
        };
        let outbox = self.deps.outbox.clone();
        let session_id = self.id();
        ctx.spawn(
            async move {
                // Durable once enqueued; a store that refuses is an operator's problem, logged.
                if let Err(e) = outbox.enqueue(OutboxRecord::Handoff(record)).await {
                    tracing::error!(%session_id, error = %e, "handoff could not be recorded for Django");
                }
            }
            .into_actor(self),
        );
    }

    pub(super) fn tell_position(&mut self) {
        if let (true, Some(position)) = (self.in_queue, self.position) {
            let frame = ServerFrame::QueuePosition {
                position,
                agents_online: self.deps.agents_online.load(Ordering::Relaxed),
            };
            self.deliver(&frame, Lane::Reliable);
        }
    }

    fn claim(
        &mut self,
        agent: AgentRef,
        by: AssignedBy,
        ctx: &mut Context<Self>,
    ) -> Result<Option<u64>, Refused> {
        let limits = self.limits();
        let again = self.agent.as_ref().is_some_and(|a| a.id == agent.id);
        let returning =
            self.agent.is_none() && self.state.owner.agent().is_some_and(|a| a.id == agent.id);
        let effects = self.state.claim(&limits, agent.clone())?;
        if returning {
            // Restored from the journal in this agent's hands: they are back, and get the chat.
            self.send_assigned(&agent.id, by);
            self.agent = Some(AgentLink {
                id: agent.id.clone(),
                forwarded: self.committed.min(self.state.last_seq()),
                claimed_at: Instant::now(),
                replied: true,
            });
            tracing::info!(session_id = %self.id(), agent_id = %agent.id, "agent has the chat again after a restart");
            return Ok(None);
        }
        if again {
            // Joining a chat one holds shows it again (a console that lost its view, say).
            if let Some(link) = self.agent.as_mut() {
                link.forwarded = self.state.last_seq();
            }
            self.send_assigned(&agent.id, by);
            return Ok(None);
        }
        // Whatever the AI had under way is void: its call's answer is discarded by the state, and
        // its typing indicator goes now rather than when that answer comes.
        if self.ai_started.take().is_some() {
            self.deliver(
                &ServerFrame::Typing {
                    from: crate::chat::protocol::Author::Ai,
                    active: false,
                },
                Lane::Droppable,
            );
        }
        self.in_queue = false;
        self.position = None;
        self.send_assigned(&agent.id, by);
        self.agent = Some(AgentLink {
            id: agent.id.clone(),
            forwarded: self.state.last_seq(),
            claimed_at: Instant::now(),
            replied: false,
        });
        let by_label = match by {
            AssignedBy::Queue => "queue",
            AssignedBy::Join => "join",
        };
        metrics::counter!(m::CHAT_HANDOFFS, "stage" => "accepted").increment(1);
        tracing::info!(session_id = %self.id(), agent_id = %agent.id, by = by_label, "agent took the chat");
        self.record_handoff(HandoffEvent::Accepted, by_label.into(), Some(&agent), ctx);
        self.run(effects, ctx);
        Ok(None)
    }

    /// Tells an agent the session is theirs, with the newest page of the chat (older pages on
    /// request: an agent is never sent one frame larger than the page budget allows).
    fn send_assigned(&self, to: &AgentId, by: AssignedBy) {
        let (history, has_more) = self.state.page_before(None, self.deps.agent_page_bytes);
        self.deps.router.tell_agent(
            to,
            ToAgent::Assigned {
                session_id: self.id(),
                customer: self.state.customer.name.clone(),
                by,
                history,
                has_more,
            },
        );
    }

    /// The agent left or is gone: the customer is told, and the AI or the queue takes over.
    fn release(
        &mut self,
        agent: &AgentRef,
        lost: bool,
        ctx: &mut Context<Self>,
    ) -> Result<Option<u64>, Refused> {
        let limits = self.limits();
        let effects = self
            .state
            .release(&limits, &agent.id, lost, self.deps.after_leave)?;
        self.forward_to_agent();
        if let Some(link) = self.agent.take() {
            self.deps.router.tell_agent(
                &link.id,
                ToAgent::Released {
                    session_id: self.id(),
                    reason: if lost {
                        Released::Requeued
                    } else {
                        Released::Left
                    },
                },
            );
        }
        self.deps.router.tell_queue(ToQueue::Released {
            session_id: self.id(),
            agent: agent.id.clone(),
        });
        tracing::info!(session_id = %self.id(), agent_id = %agent.id, lost, "agent released the chat");
        self.run(effects, ctx);
        Ok(None)
    }

    fn holder(&self, agent: &AgentRef) -> Result<(), Refused> {
        match self.state.owner.agent() {
            Some(a) if a.id == agent.id => Ok(()),
            _ if self.state.is_closed() => Err(Refused::Closed),
            _ => Err(Refused::NotOwner),
        }
    }

    fn by_agent(
        &mut self,
        agent: AgentRef,
        op: AgentOp,
        ctx: &mut Context<Self>,
    ) -> Result<Option<u64>, Refused> {
        let limits = self.limits();
        match op {
            AgentOp::Claim { by } => self.claim(agent, by, ctx),
            AgentOp::Send { client_id, text } => {
                let now = chrono::Utc::now();
                let accepted = self
                    .state
                    .agent_message(&limits, &agent.id, client_id, text, now)?;
                match accepted {
                    super::state::Accepted::New { seq, effects } => {
                        if let Some(link) = self.agent.as_mut().filter(|l| !l.replied) {
                            link.replied = true;
                            metrics::histogram!(m::CHAT_FIRST_AGENT_REPLY)
                                .record(link.claimed_at.elapsed().as_secs_f64());
                        }
                        self.run(effects, ctx);
                        Ok(Some(seq))
                    }
                    super::state::Accepted::Duplicate { seq } => Ok(Some(seq)),
                    super::state::Accepted::Closed => Err(Refused::Closed),
                }
            }
            AgentOp::Typing { active } => {
                self.holder(&agent)?;
                self.deliver(
                    &ServerFrame::Typing {
                        from: crate::chat::protocol::Author::Agent,
                        active,
                    },
                    Lane::Droppable,
                );
                Ok(None)
            }
            AgentOp::Leave => self.release(&agent, false, ctx),
            AgentOp::Lost => self.release(&agent, true, ctx),
            AgentOp::CreateTicket {
                subject,
                description,
                priority,
            } => {
                self.holder(&agent)?;
                self.create_ticket(subject, description, priority, "agent", ctx);
                Ok(None)
            }
            AgentOp::Close => {
                self.holder(&agent)?;
                let effects = self.state.close(&limits, CloseReason::AgentClosed);
                self.run(effects, ctx);
                Ok(None)
            }
            AgentOp::History { before_seq } => {
                self.holder(&agent)?;
                let (frames, has_more) = self
                    .state
                    .page_before(Some(before_seq), self.deps.agent_page_bytes);
                self.deps.router.tell_agent(
                    &agent.id,
                    ToAgent::History {
                        session_id: self.id(),
                        frames,
                        has_more,
                    },
                );
                Ok(None)
            }
        }
    }
}

impl Handler<SessionCommand> for Session {
    type Result = ResponseFuture<Result<Option<u64>, Refused>>;

    fn handle(&mut self, msg: SessionCommand, ctx: &mut Context<Self>) -> Self::Result {
        Box::pin(futures_util::future::ready(match msg {
            SessionCommand::ByAgent { agent, op } => {
                let span = tracing::info_span!("chat_agent_op", session_id = %self.id(), agent_id = %agent.id, op = op.label());
                let _guard = span.enter();
                let outcome = self.by_agent(agent, op, ctx);
                self.persist(ctx);
                // An agent's message is acknowledged once the journal has it.
                if let Ok(Some(seq)) = outcome {
                    if let Some(committed) = self.committed_at(seq) {
                        return Box::pin(async move {
                            committed.await.map_err(|_| Refused::Closed)?;
                            Ok(Some(seq))
                        });
                    }
                }
                outcome
            }
            SessionCommand::QueuePosition { position, .. } => {
                if self.in_queue && self.position != Some(position) {
                    self.position = Some(position);
                    self.tell_position();
                }
                Ok(None)
            }
            SessionCommand::AgentsOnline(online) => {
                self.deliver(
                    &ServerFrame::Presence {
                        agents_online: online,
                    },
                    Lane::Reliable,
                );
                Ok(None)
            }
        }))
    }
}
