//! What an upgrade hands from one process to the next, in chat's words: each established
//! connection's socket with who is on it ([`Party`]). The old process collects them as its sessions
//! and agents suspend ([`HandOff`]); the new one attaches each to its session or agent again
//! without the client doing anything (the listener adopts them, the registries take
//! `adopted` resumes). The control socket that carries them between processes is
//! [`crate::upgrade`]'s.

use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use super::agent::protocol::Presence;
use super::link::Socket;
use crate::domain::ids::{AgentId, SessionId};

/// Who a handed-over connection belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Party {
    /// A customer's session; the client was sent every frame up to `sent_seq`.
    Customer {
        session_id: SessionId,
        sent_seq: u64,
    },
    /// A signed-in agent: their stream was numbered up to `last_seq`, and they held `held`.
    Agent {
        agent_id: AgentId,
        name: String,
        /// The token's expiry, unix seconds.
        expires_at: u64,
        last_seq: u64,
        presence: Presence,
        capacity: u32,
        auto_assign: bool,
        held: Vec<SessionId>,
    },
}

impl Party {
    pub fn label(&self) -> &'static str {
        match self {
            Party::Customer { .. } => "customer",
            Party::Agent { .. } => "agent",
        }
    }
}

/// One connection on its way to the next process.
#[derive(Debug)]
pub struct HandedOver {
    pub party: Party,
    pub socket: Socket,
}

/// Where suspending sessions and agents put the connections they handed over. Shared by the
/// actors of the chat arbiter and read once the tree has stopped.
#[derive(Debug, Clone, Default)]
pub struct HandOff(Arc<Mutex<Vec<HandedOver>>>);

impl HandOff {
    pub fn push(&self, handed: HandedOver) {
        metrics::counter!(crate::metrics::UPGRADE_HANDED_OVER, "party" => handed.party.label())
            .increment(1);
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push(handed);
    }

    /// Everything handed over so far.
    pub fn take(&self) -> Vec<HandedOver> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|p| p.into_inner()))
    }
}
