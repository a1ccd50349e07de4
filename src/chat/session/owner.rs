//! Who answers a session's customer, as one state machine:
//!
//! ```text
//!   ai ──handoff──▶ queued ──claim──▶ agent ──leave──▶ ai (or queued, per agents.on_leave)
//!    │                 ▲                │
//!    └────claim────────┼────────────────┤ (an agent may also take a chat the AI still answers)
//!                      └──agent lost────┘  (the agent dropped, went offline or timed out)
//!   any ──close──▶ closed (final)
//! ```
//!
//! Pure: the session actor applies an [`OwnerEvent`] and acts on the new owner. Because one actor
//! applies every event in turn, two agents claiming one session cannot both win: the first claim
//! moves the owner to that agent and the second is refused with who holds it.

use serde::{Deserialize, Serialize};

pub use crate::chat::routing::vocabulary::{AgentRef, Refused};
pub use crate::config::AfterLeave;
use crate::domain::ids::AgentId;

/// Who answers the customer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Owner {
    /// The AI assistant answers.
    Ai,
    /// Waiting for a human agent; nobody answers meanwhile.
    Queued {
        reason: String,
    },
    /// A human agent answers; the AI is silent.
    Agent(AgentRef),
    Closed,
}

/// Something that may change the owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OwnerEvent {
    /// The AI (or the customer, through an AI action) asked for a human.
    Handoff {
        reason: String,
    },
    /// An agent takes the session.
    Claim(AgentRef),
    /// The agent left the session (`session.leave`).
    Leave(AgentId),
    /// The agent is gone (disconnected past the grace, offline, token expired): the session waits
    /// for another.
    AgentLost(AgentId),
    Close,
}

impl Owner {
    /// The owner after `event`. Repeating a claim by the agent who holds the session, or a handoff
    /// of a queued one, changes nothing and is not refused.
    pub fn apply(&self, event: OwnerEvent, after_leave: AfterLeave) -> Result<Owner, Refused> {
        use OwnerEvent as E;
        match (self, event) {
            (Self::Closed, _) => Err(Refused::Closed),
            (_, E::Close) => Ok(Self::Closed),
            (Self::Ai, E::Handoff { reason }) => Ok(Self::Queued { reason }),
            (Self::Queued { .. } | Self::Agent(_), E::Handoff { .. }) => Ok(self.clone()),
            (Self::Ai | Self::Queued { .. }, E::Claim(agent)) => Ok(Self::Agent(agent)),
            (Self::Agent(holder), E::Claim(agent)) if holder.id == agent.id => Ok(self.clone()),
            (Self::Agent(holder), E::Claim(_)) => Err(Refused::AlreadyClaimed(holder.clone())),
            (Self::Agent(holder), E::Leave(id)) if holder.id == id => Ok(match after_leave {
                AfterLeave::Ai => Self::Ai,
                AfterLeave::Requeue => Self::Queued {
                    reason: "the agent left".into(),
                },
            }),
            (Self::Agent(holder), E::AgentLost(id)) if holder.id == id => Ok(Self::Queued {
                reason: "the agent was disconnected".into(),
            }),
            (_, E::Leave(_) | E::AgentLost(_)) => Err(Refused::NotOwner),
        }
    }

    /// The agent answering, if one is.
    pub fn agent(&self) -> Option<&AgentRef> {
        match self {
            Self::Agent(a) => Some(a),
            _ => None,
        }
    }

    pub fn is_ai(&self) -> bool {
        *self == Self::Ai
    }

    pub fn is_queued(&self) -> bool {
        matches!(self, Self::Queued { .. })
    }

    /// For logs and metrics labels.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Ai => "ai",
            Self::Queued { .. } => "queued",
            Self::Agent(_) => "agent",
            Self::Closed => "closed",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent(id: &str) -> AgentRef {
        AgentRef {
            id: AgentId::from(id),
            name: id.to_uppercase(),
        }
    }

    fn queued() -> Owner {
        Owner::Queued {
            reason: "asked".into(),
        }
    }

    #[test]
    fn the_happy_path_runs_ai_queued_agent_closed() {
        let o = Owner::Ai
            .apply(
                OwnerEvent::Handoff {
                    reason: "asked".into(),
                },
                AfterLeave::Ai,
            )
            .unwrap();
        assert_eq!(o, queued());
        let o = o
            .apply(OwnerEvent::Claim(agent("a")), AfterLeave::Ai)
            .unwrap();
        assert_eq!(o.agent(), Some(&agent("a")));
        let o = o.apply(OwnerEvent::Close, AfterLeave::Ai).unwrap();
        assert_eq!(o, Owner::Closed);
    }

    #[test]
    fn of_two_claims_only_the_first_wins_and_the_second_learns_who_holds_it() {
        let o = queued()
            .apply(OwnerEvent::Claim(agent("a")), AfterLeave::Ai)
            .unwrap();
        assert_eq!(
            o.apply(OwnerEvent::Claim(agent("b")), AfterLeave::Ai),
            Err(Refused::AlreadyClaimed(agent("a")))
        );
        assert_eq!(
            o.apply(OwnerEvent::Claim(agent("a")), AfterLeave::Ai),
            Ok(o.clone()),
            "the holder claiming again is not refused"
        );
    }

    #[test]
    fn leaving_hands_back_to_the_ai_or_the_queue_as_configured() {
        let held = Owner::Agent(agent("a"));
        assert_eq!(
            held.apply(OwnerEvent::Leave(AgentId::from("a")), AfterLeave::Ai),
            Ok(Owner::Ai)
        );
        assert!(held
            .apply(OwnerEvent::Leave(AgentId::from("a")), AfterLeave::Requeue)
            .unwrap()
            .is_queued());
        assert_eq!(
            held.apply(OwnerEvent::Leave(AgentId::from("b")), AfterLeave::Ai),
            Err(Refused::NotOwner),
            "only the holder can leave"
        );
    }

    #[test]
    fn a_lost_agent_requeues_whatever_the_leave_policy() {
        let held = Owner::Agent(agent("a"));
        assert!(held
            .apply(OwnerEvent::AgentLost(AgentId::from("a")), AfterLeave::Ai)
            .unwrap()
            .is_queued());
        assert_eq!(
            queued().apply(OwnerEvent::AgentLost(AgentId::from("a")), AfterLeave::Ai),
            Err(Refused::NotOwner)
        );
    }

    #[test]
    fn an_agent_may_take_a_chat_from_the_ai() {
        assert_eq!(
            Owner::Ai.apply(OwnerEvent::Claim(agent("a")), AfterLeave::Ai),
            Ok(Owner::Agent(agent("a")))
        );
    }

    #[test]
    fn closed_is_final() {
        for event in [
            OwnerEvent::Claim(agent("a")),
            OwnerEvent::Handoff {
                reason: String::new(),
            },
            OwnerEvent::Close,
            OwnerEvent::Leave(AgentId::from("a")),
        ] {
            assert_eq!(
                Owner::Closed.apply(event, AfterLeave::Ai),
                Err(Refused::Closed)
            );
        }
    }

    #[test]
    fn a_handoff_while_queued_or_with_an_agent_changes_nothing() {
        let handoff = || OwnerEvent::Handoff {
            reason: "again".into(),
        };
        assert_eq!(queued().apply(handoff(), AfterLeave::Ai), Ok(queued()));
        let held = Owner::Agent(agent("a"));
        assert_eq!(held.apply(handoff(), AfterLeave::Ai), Ok(held.clone()));
    }
}
