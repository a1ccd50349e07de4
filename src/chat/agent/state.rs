//! An agent's state and its pure rules: presence, capacity and auto-assign as the agent set them
//! (within `[agents]` limits), the sessions they hold, and their own numbered stream of frames kept
//! for resume. The agent actor does the I/O.

use std::collections::BTreeSet;

use crate::chat::agent::protocol::{AgentServerFrame, AssignedBy, Presence, Released};
use crate::chat::history::{History, ReplayError};
use crate::chat::protocol::ServerFrame;
use crate::chat::session::owner::AgentRef;
use crate::config::AgentSettings;
use crate::domain::ids::SessionId;

#[derive(Debug, Clone)]
pub struct AgentState {
    pub me: AgentRef,
    pub presence: Presence,
    pub capacity: u32,
    pub auto_assign: bool,
    /// Unix seconds.
    pub expires_at: u64,
    held: BTreeSet<SessionId>,
    history: History<AgentServerFrame>,
    history_max: usize,
    history_max_bytes: usize,
}

/// A presence or capacity the agent may not set.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`capacity` must be 1 to {max}")]
pub struct BadCapacity {
    pub max: u32,
}

impl AgentState {
    pub fn new(me: AgentRef, expires_at: u64, settings: &AgentSettings) -> Self {
        Self {
            me,
            presence: Presence::Offline,
            capacity: settings.default_capacity,
            auto_assign: settings.auto_assign,
            expires_at,
            held: BTreeSet::new(),
            history: History::default(),
            history_max: settings.history_max,
            history_max_bytes: settings.history_max_bytes,
        }
    }

    /// Numbers this agent's stream on from `last_seq`: an agent resuming after the server
    /// restarted keeps its numbering (what it missed is gone with the old process; its chats come
    /// again as `session.assigned`).
    pub fn continue_from(&mut self, last_seq: u64) {
        self.history = History::restore(
            last_seq,
            Vec::new(),
            self.history_max,
            self.history_max_bytes,
        );
    }

    /// Applies what the agent set; a part left out keeps its value.
    pub fn set(
        &mut self,
        presence: Option<Presence>,
        capacity: Option<u32>,
        auto_assign: Option<bool>,
        max_capacity: u32,
    ) -> Result<(), BadCapacity> {
        if let Some(c) = capacity {
            if c == 0 || c > max_capacity {
                return Err(BadCapacity { max: max_capacity });
            }
            self.capacity = c;
        }
        if let Some(p) = presence {
            self.presence = p;
        }
        if let Some(a) = auto_assign {
            self.auto_assign = a;
        }
        Ok(())
    }

    pub fn last_seq(&self) -> u64 {
        self.history.last_seq()
    }

    pub fn holds(&self, session_id: SessionId) -> bool {
        self.held.contains(&session_id)
    }

    /// Holds a session without a frame (the console shows it already).
    pub fn hold(&mut self, session_id: SessionId) {
        self.held.insert(session_id);
    }

    pub fn held(&self) -> Vec<SessionId> {
        self.held.iter().copied().collect()
    }

    pub fn replay_after(&self, last_seq: u64) -> Result<Vec<AgentServerFrame>, ReplayError> {
        self.history.replay_after(last_seq)
    }

    pub fn shrink(&mut self) {
        self.history.shrink();
    }

    /// A session is now the agent's, with the newest page of its chat.
    pub fn assigned(
        &mut self,
        session_id: SessionId,
        customer: String,
        by: AssignedBy,
        history: Vec<ServerFrame>,
        has_more: bool,
    ) -> AgentServerFrame {
        self.held.insert(session_id);
        self.history
            .record(self.history_max, self.history_max_bytes, |seq| {
                AgentServerFrame::Assigned {
                    seq,
                    session_id,
                    customer,
                    by,
                    history,
                    has_more,
                }
            })
    }

    /// Frames of a session held, numbered in the agent's stream; none for a session not held.
    pub fn events(
        &mut self,
        session_id: SessionId,
        frames: Vec<ServerFrame>,
    ) -> Vec<AgentServerFrame> {
        if !self.holds(session_id) {
            return Vec::new();
        }
        frames
            .into_iter()
            .map(|event| {
                self.history
                    .record(self.history_max, self.history_max_bytes, |seq| {
                        AgentServerFrame::Event {
                            seq,
                            session_id,
                            event,
                        }
                    })
            })
            .collect()
    }

    /// The session left the agent's hands; `None` if it was not held.
    pub fn released(
        &mut self,
        session_id: SessionId,
        reason: Released,
    ) -> Option<AgentServerFrame> {
        if !self.held.remove(&session_id) {
            return None;
        }
        Some(
            self.history
                .record(self.history_max, self.history_max_bytes, |seq| {
                    AgentServerFrame::Released {
                        seq,
                        session_id,
                        reason,
                    }
                }),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Settings;
    use crate::domain::ids::AgentId;

    fn state() -> AgentState {
        let settings = Settings::from_toml("").unwrap().agents;
        AgentState::new(
            AgentRef {
                id: AgentId::from("a"),
                name: "A".into(),
            },
            0,
            &settings,
        )
    }

    #[test]
    fn frames_of_held_sessions_are_numbered_and_replayable_in_order() {
        let mut s = state();
        let id = SessionId::new();
        assert!(
            s.events(id, vec![ServerFrame::Pong {}]).is_empty(),
            "not held"
        );
        s.assigned(id, "Ada".into(), AssignedBy::Join, vec![], false);
        let events = s.events(id, vec![ServerFrame::Pong {}, ServerFrame::Pong {}]);
        assert_eq!(events.len(), 2);
        s.released(id, Released::Left).unwrap();
        assert!(s.released(id, Released::Left).is_none(), "only once");
        let seqs: Vec<_> = s
            .replay_after(1)
            .unwrap()
            .iter()
            .filter_map(crate::chat::history::Numbered::seq)
            .collect();
        assert_eq!(seqs, [2, 3, 4]);
        assert!(s.held().is_empty());
    }

    #[test]
    fn capacity_is_bounded() {
        let mut s = state();
        assert_eq!(s.set(None, Some(0), None, 5), Err(BadCapacity { max: 5 }));
        assert_eq!(s.set(None, Some(6), None, 5), Err(BadCapacity { max: 5 }));
        s.set(Some(Presence::Away), Some(5), Some(false), 5)
            .unwrap();
        assert_eq!(
            (s.presence, s.capacity, s.auto_assign),
            (Presence::Away, 5, false)
        );
    }
}
