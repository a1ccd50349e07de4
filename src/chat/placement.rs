//! Which chat thread each party lives on (see [`super::shards`] for the threads themselves).
//!
//! A session's thread follows from its id ([`of_session`]) and an agent's from theirs
//! ([`of_agent`]), so every party has one home for the life of the process without a directory to
//! consult or keep. A new session is minted on the thread its connection was accepted on
//! ([`session_id_on`]); a reconnect that lands elsewhere has its socket moved to its party's thread
//! before anything is attached, so a connection and its actor always share a thread and the
//! transport's `!Send` halves never cross one.

use crate::domain::ids::{AgentId, SessionId};

/// Which of `n` threads a session lives on. A session id's low 62 bits are random (UUIDv7).
pub fn of_session(id: SessionId, n: usize) -> usize {
    (id.0.as_u128() as u64 % n.max(1) as u64) as usize
}

/// Which of `n` threads an agent lives on (FNV-1a of their id: stable, and cheap for short ids).
pub fn of_agent(id: &AgentId, n: usize) -> usize {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in id.as_str().bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    (hash % n.max(1) as u64) as usize
}

/// A new session id whose thread is `shard` of `n` (about `n` draws on average).
pub fn session_id_on(shard: usize, n: usize) -> SessionId {
    loop {
        let id = SessionId::new();
        if of_session(id, n) == shard {
            return id;
        }
    }
}

/// Where a registry sits: its thread's index, and how many threads there are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl Shard {
    /// The one thread of a single-threaded chat.
    pub const ONLY: Shard = Shard { index: 0, count: 1 };

    /// Whether a session lives here.
    pub fn owns_session(&self, id: SessionId) -> bool {
        of_session(id, self.count) == self.index
    }

    /// A thread's label in metrics.
    pub fn label(&self) -> String {
        self.index.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_minted_session_lives_on_the_thread_asked_for() {
        for n in [1, 2, 3, 8] {
            for shard in 0..n {
                let id = session_id_on(shard, n);
                assert_eq!(of_session(id, n), shard);
                assert!(Shard {
                    index: shard,
                    count: n
                }
                .owns_session(id));
            }
        }
    }

    #[test]
    fn sessions_and_agents_spread_over_every_thread() {
        let n = 4;
        let mut sessions = [0usize; 4];
        let mut agents = [0usize; 4];
        for i in 0..4000 {
            sessions[of_session(SessionId::new(), n)] += 1;
            agents[of_agent(&AgentId::from(format!("agent-{i}")), n)] += 1;
        }
        for count in sessions.iter().chain(agents.iter()) {
            assert!((700..1300).contains(count), "{sessions:?} {agents:?}");
        }
    }

    #[test]
    fn one_thread_holds_everyone() {
        assert_eq!(of_session(SessionId::new(), 1), 0);
        assert_eq!(of_agent(&AgentId::from("a"), 1), 0);
        assert_eq!(of_agent(&AgentId::from("a"), 0), 0);
    }
}
