//! The routing queue's state and its pure rules: sessions waiting for a human in arrival order,
//! the agents with their presence, capacity and the chats they hold, which waiting session goes to
//! which agent next, and each waiting session's position. The queue actor around it does the
//! messaging; this part is unit-tested alone.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Instant;

use chrono::{DateTime, Utc};

use crate::chat::agent::protocol::{AgentView, Presence, Waiting};
use crate::domain::ids::{AgentId, SessionId};

/// A session waiting for an agent.
#[derive(Debug, Clone)]
pub struct Entry {
    pub session_id: SessionId,
    pub customer: String,
    pub reason: String,
    pub since: DateTime<Utc>,
    pub enqueued: Instant,
    /// A claim is on its way to the session; no one else is offered it meanwhile.
    pub claiming: Option<AgentId>,
    /// The position the customer was last told (0: none yet).
    pub told: usize,
}

/// An agent as the queue routes to them.
#[derive(Debug, Clone)]
pub struct Rostered {
    pub name: String,
    pub presence: Presence,
    pub capacity: u32,
    pub auto_assign: bool,
    /// Sessions held.
    pub held: BTreeSet<SessionId>,
    /// Claims on their way for this agent.
    pub reserved: u32,
    /// When the queue last gave them a chat (a counter), so equal loads take turns.
    pub last_assigned: u64,
}

impl Rostered {
    pub fn load(&self) -> u32 {
        self.held.len() as u32 + self.reserved
    }

    fn has_room(&self) -> bool {
        self.load() < self.capacity
    }

    pub fn view(&self, id: &AgentId) -> AgentView {
        AgentView {
            agent_id: id.clone(),
            name: self.name.clone(),
            presence: self.presence,
            load: self.held.len() as u32,
            capacity: self.capacity,
        }
    }
}

pub use crate::chat::routing::vocabulary::ClaimError;

#[derive(Debug, Default)]
pub struct QueueState {
    waiting: VecDeque<Entry>,
    agents: BTreeMap<AgentId, Rostered>,
    assignments: u64,
}

impl QueueState {
    pub fn len(&self) -> usize {
        self.waiting.len()
    }

    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }

    pub fn agent(&self, id: &AgentId) -> Option<&Rostered> {
        self.agents.get(id)
    }

    pub fn agents(&self) -> impl Iterator<Item = (&AgentId, &Rostered)> {
        self.agents.iter()
    }

    /// Whether any agent is online (what customers are shown).
    pub fn any_online(&self) -> bool {
        self.agents.values().any(|a| a.presence == Presence::Online)
    }

    /// Adds a session in the order sessions started waiting: at the back, unless it started
    /// before some already here (sessions restored after a restart, or told from another chat
    /// thread a moment later). A session already waiting keeps its place. Returns whether it was
    /// added.
    pub fn enqueue(&mut self, entry: Entry) -> bool {
        if self.position(entry.session_id).is_some() {
            return false;
        }
        let at = self
            .waiting
            .iter()
            .rposition(|e| e.since <= entry.since)
            .map_or(0, |i| i + 1);
        self.waiting.insert(at, entry);
        true
    }

    /// Takes a session out (claimed, closed or abandoned).
    pub fn remove(&mut self, session_id: SessionId) -> Option<Entry> {
        let at = self
            .waiting
            .iter()
            .position(|e| e.session_id == session_id)?;
        self.waiting.remove(at)
    }

    pub fn entry(&self, session_id: SessionId) -> Option<&Entry> {
        self.waiting.iter().find(|e| e.session_id == session_id)
    }

    /// 1 is next.
    pub fn position(&self, session_id: SessionId) -> Option<usize> {
        self.waiting
            .iter()
            .position(|e| e.session_id == session_id)
            .map(|p| p + 1)
    }

    /// Sessions whose position differs from the one their customer was last told; marks them told.
    pub fn moved(&mut self) -> Vec<(SessionId, usize)> {
        let mut moved = Vec::new();
        for (i, e) in self.waiting.iter_mut().enumerate() {
            if e.told != i + 1 {
                e.told = i + 1;
                moved.push((e.session_id, i + 1));
            }
        }
        moved
    }

    /// The `max` oldest waiting sessions as agents see them.
    pub fn snapshot(&self, max: usize) -> Vec<Waiting> {
        self.waiting
            .iter()
            .take(max)
            .enumerate()
            .map(|(i, e)| Waiting {
                session_id: e.session_id,
                customer: e.customer.clone(),
                reason: e.reason.clone(),
                waiting_since: e.since,
                position: i + 1,
            })
            .collect()
    }

    /// Adds an agent or updates their presence and capacity; their held chats stay.
    pub fn set_agent(
        &mut self,
        id: AgentId,
        name: String,
        presence: Presence,
        capacity: u32,
        auto_assign: bool,
    ) {
        let a = self.agents.entry(id).or_insert_with(|| Rostered {
            name: name.clone(),
            presence,
            capacity,
            auto_assign,
            held: BTreeSet::new(),
            reserved: 0,
            last_assigned: 0,
        });
        a.name = name;
        a.presence = presence;
        a.capacity = capacity;
        a.auto_assign = auto_assign;
    }

    /// The agent is gone; returns the sessions they still held (their sessions requeue them).
    pub fn remove_agent(&mut self, id: &AgentId) -> Option<Rostered> {
        self.agents.remove(id)
    }

    /// Reserves a slot for `agent` to claim `session_id` (which may be waiting or not: an agent
    /// may take a chat the AI still answers).
    pub fn reserve(&mut self, agent: &AgentId, session_id: SessionId) -> Result<(), ClaimError> {
        let a = self.agents.get(agent).ok_or(ClaimError::UnknownAgent)?;
        if a.presence == Presence::Offline {
            return Err(ClaimError::Offline);
        }
        if !a.has_room() {
            return Err(ClaimError::AtCapacity(a.capacity));
        }
        if let Some(e) = self.waiting.iter_mut().find(|e| e.session_id == session_id) {
            if e.claiming.is_some() {
                return Err(ClaimError::BeingClaimed);
            }
            e.claiming = Some(agent.clone());
        }
        if let Some(a) = self.agents.get_mut(agent) {
            a.reserved += 1;
        }
        Ok(())
    }

    /// The session took the claim: the agent holds it, and it leaves the queue. Returns its entry
    /// if it was waiting.
    pub fn claimed(&mut self, agent: &AgentId, session_id: SessionId) -> Option<Entry> {
        self.assignments += 1;
        if let Some(a) = self.agents.get_mut(agent) {
            a.reserved = a.reserved.saturating_sub(1);
            a.held.insert(session_id);
            a.last_assigned = self.assignments;
        }
        self.remove(session_id)
    }

    /// The session refused the claim (another agent holds it, or it ended).
    pub fn claim_failed(&mut self, agent: &AgentId, session_id: SessionId) {
        if let Some(a) = self.agents.get_mut(agent) {
            a.reserved = a.reserved.saturating_sub(1);
        }
        if let Some(e) = self.waiting.iter_mut().find(|e| e.session_id == session_id) {
            if e.claiming.as_ref() == Some(agent) {
                e.claiming = None;
            }
        }
    }

    /// The agent holds the session again (restored from the journal in their hands), whatever
    /// their capacity: it was theirs before.
    pub fn hold(&mut self, agent: &AgentId, session_id: SessionId) {
        if let Some(a) = self.agents.get_mut(agent) {
            a.held.insert(session_id);
        }
    }

    /// The agent no longer holds the session.
    pub fn released(&mut self, agent: &AgentId, session_id: SessionId) -> bool {
        self.agents
            .get_mut(agent)
            .is_some_and(|a| a.held.remove(&session_id))
    }

    /// The next waiting session to hand out and the agent to take it: the oldest session nobody is
    /// claiming, to the online auto-assigning agent with the fewest chats (the one who waited
    /// longest since their last, on a tie).
    pub fn next_assignment(&self) -> Option<(SessionId, AgentId)> {
        let session = self.waiting.iter().find(|e| e.claiming.is_none())?;
        let agent = self
            .agents
            .iter()
            .filter(|(_, a)| a.presence == Presence::Online && a.auto_assign && a.has_room())
            .min_by_key(|(_, a)| (a.load(), a.last_assigned))?;
        Some((session.session_id, agent.0.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: SessionId) -> Entry {
        Entry {
            session_id: id,
            customer: "Visitor".into(),
            reason: "asked".into(),
            since: Utc::now(),
            enqueued: Instant::now(),
            claiming: None,
            told: 0,
        }
    }

    fn agent(q: &mut QueueState, id: &str, capacity: u32) -> AgentId {
        let id = AgentId::from(id);
        q.set_agent(id.clone(), id.to_string(), Presence::Online, capacity, true);
        id
    }

    /// Runs auto-assignment to the end, as the actor does when every claim succeeds.
    fn assign_all(q: &mut QueueState) -> Vec<(SessionId, AgentId)> {
        let mut out = Vec::new();
        while let Some((s, a)) = q.next_assignment() {
            q.reserve(&a, s).unwrap();
            q.claimed(&a, s);
            out.push((s, a));
        }
        out
    }

    #[test]
    fn sessions_go_out_in_arrival_order_within_capacity_and_loads_take_turns() {
        let mut q = QueueState::default();
        let ids: Vec<_> = (0..5).map(|_| SessionId::new()).collect();
        for id in &ids {
            q.enqueue(entry(*id));
        }
        let a = agent(&mut q, "a", 2);
        let b = agent(&mut q, "b", 1);
        let got = assign_all(&mut q);
        assert_eq!(
            got.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
            ids[..3].to_vec(),
            "the three oldest, in order"
        );
        assert_eq!(q.agent(&a).unwrap().held.len(), 2);
        assert_eq!(q.agent(&b).unwrap().held.len(), 1);
        assert_eq!(q.position(ids[3]), Some(1));
        assert_eq!(q.position(ids[4]), Some(2));

        q.released(&b, got.iter().find(|(_, x)| *x == b).unwrap().0);
        let next = assign_all(&mut q);
        assert_eq!(
            next,
            vec![(ids[3], b.clone())],
            "room again: the oldest waiting"
        );
    }

    #[test]
    fn away_and_manual_agents_get_nothing_automatically_but_may_claim() {
        let mut q = QueueState::default();
        let s = SessionId::new();
        q.enqueue(entry(s));
        let a = AgentId::from("a");
        q.set_agent(a.clone(), "A".into(), Presence::Away, 3, true);
        let m = AgentId::from("m");
        q.set_agent(m.clone(), "M".into(), Presence::Online, 3, false);
        assert_eq!(q.next_assignment(), None);
        q.reserve(&m, s).unwrap();
        assert_eq!(
            q.reserve(&a, s),
            Err(ClaimError::BeingClaimed),
            "one claim at a time"
        );
        q.claimed(&m, s);
        assert!(q.is_empty());
    }

    #[test]
    fn a_claim_beyond_capacity_or_while_offline_is_refused() {
        let mut q = QueueState::default();
        let a = agent(&mut q, "a", 1);
        q.reserve(&a, SessionId::new()).unwrap();
        assert_eq!(
            q.reserve(&a, SessionId::new()),
            Err(ClaimError::AtCapacity(1))
        );
        q.set_agent(a.clone(), "a".into(), Presence::Offline, 1, true);
        assert_eq!(q.reserve(&a, SessionId::new()), Err(ClaimError::Offline));
        assert_eq!(
            q.reserve(&AgentId::from("ghost"), SessionId::new()),
            Err(ClaimError::UnknownAgent)
        );
    }

    #[test]
    fn a_failed_claim_frees_the_session_and_the_slot() {
        let mut q = QueueState::default();
        let s = SessionId::new();
        q.enqueue(entry(s));
        let a = agent(&mut q, "a", 1);
        q.reserve(&a, s).unwrap();
        assert_eq!(q.next_assignment(), None);
        q.claim_failed(&a, s);
        assert_eq!(q.next_assignment(), Some((s, a)));
    }

    #[test]
    fn a_session_told_late_still_takes_its_place_by_when_it_started_waiting() {
        let mut q = QueueState::default();
        let t0 = chrono::Utc::now();
        let at = |id: SessionId, secs: i64| Entry {
            since: t0 + chrono::Duration::seconds(secs),
            ..entry(id)
        };
        let ids: Vec<_> = (0..4).map(|_| SessionId::new()).collect();
        // From two chat threads, each in its own order: 0 and 2 from one, 1 and 3 from the other.
        q.enqueue(at(ids[0], 0));
        q.enqueue(at(ids[2], 2));
        q.enqueue(at(ids[1], 1));
        q.enqueue(at(ids[3], 3));
        let order: Vec<_> = (0..4).map(|i| q.waiting[i].session_id).collect();
        assert_eq!(order, ids);
        // Equal times keep the order they were told in.
        let late = SessionId::new();
        q.enqueue(at(late, 3));
        assert_eq!(q.position(late), Some(5));
    }

    #[test]
    fn customers_are_told_only_when_their_position_changes() {
        let mut q = QueueState::default();
        let (s1, s2) = (SessionId::new(), SessionId::new());
        q.enqueue(entry(s1));
        q.enqueue(entry(s2));
        assert_eq!(q.moved(), vec![(s1, 1), (s2, 2)]);
        assert!(q.moved().is_empty());
        q.remove(s1);
        assert_eq!(q.moved(), vec![(s2, 1)]);
    }

    #[test]
    fn online_means_presence_online() {
        let mut q = QueueState::default();
        assert!(!q.any_online());
        let a = AgentId::from("a");
        q.set_agent(a.clone(), "A".into(), Presence::Away, 1, true);
        assert!(!q.any_online());
        q.set_agent(a.clone(), "A".into(), Presence::Online, 1, true);
        assert!(q.any_online());
        q.remove_agent(&a);
        assert!(!q.any_online());
    }
}
