//! Latest snapshots of acknowledged tickets whose journal rows are not folded yet, readable from any
//! thread: a load is answered from here until the tables have the write. The writer (or the syncer,
//! once durable) publishes into it; a fold report removes what the tables now hold. Owns no thread.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::domain::ids::TicketId;
use crate::domain::ticket::Ticket;

/// Latest snapshots of journalled, not yet folded tickets, readable from any thread.
#[derive(Debug, Default)]
pub struct PendingView {
    tickets: Mutex<HashMap<TicketId, Arc<Ticket>>>,
    len: AtomicUsize,
}

impl PendingView {
    fn lock(&self) -> MutexGuard<'_, HashMap<TicketId, Arc<Ticket>>> {
        // The map is only ever replaced whole or extended; a panic mid-update leaves it usable.
        self.tickets.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn get(&self, id: TicketId) -> Option<Ticket> {
        if self.is_empty() {
            return None;
        }
        self.lock().get(&id).map(|t| Ticket::clone(t))
    }

    /// No acknowledged write is waiting for a fold: the tables are current.
    pub fn is_empty(&self) -> bool {
        self.len.load(Ordering::Acquire) == 0
    }

    pub(super) fn publish(&self, tickets: impl IntoIterator<Item = Arc<Ticket>>) {
        let mut map = self.lock();
        map.extend(tickets.into_iter().map(|t| (t.id, t)));
        self.len.store(map.len(), Ordering::Release);
    }

    pub(super) fn remove(&self, ids: &[TicketId]) {
        if ids.is_empty() {
            return;
        }
        let mut map = self.lock();
        for id in ids {
            map.remove(id);
        }
        self.len.store(map.len(), Ordering::Release);
    }

    pub(super) fn replace(&self, tickets: HashMap<TicketId, Arc<Ticket>>) {
        let mut map = self.lock();
        *map = tickets;
        self.len.store(map.len(), Ordering::Release);
    }
}
