//! What the tickets table holds for recently folded tickets: one cache, shared by the folder and the
//! writer. The folder is the table's only writer, so it fills the cache after each fold it commits
//! and reads it for the next fold's diffs (no row read back); the writer's version checks read it
//! instead of the table for a ticket with nothing left in the journal. Owns no thread.
//!
//! It keeps two generations of up to `cap` tickets each: when the newer fills, it becomes the older
//! and the oldest is dropped, so the `cap` most recently folded tickets are always held.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::domain::ids::TicketId;
use crate::domain::ticket::Ticket;

/// Tickets inserted per lock, so a big fold's insert never holds a write's version check back long.
const INSERT_CHUNK: usize = 1024;

#[derive(Debug, Default)]
struct Generations {
    newer: HashMap<TicketId, Arc<Ticket>>,
    older: HashMap<TicketId, Arc<Ticket>>,
}

#[derive(Debug)]
pub struct FoldedTickets {
    generations: Mutex<Generations>,
    /// Tickets per generation (0: keep none).
    cap: usize,
}

impl FoldedTickets {
    pub fn new(cap: usize) -> Arc<Self> {
        Arc::new(Self {
            generations: Mutex::new(Generations::default()),
            cap,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Generations> {
        // Only ever extended or rotated whole; a panic mid-update leaves it usable.
        self.generations.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The row the tickets table holds for `id`, if it was folded recently.
    pub fn get(&self, id: TicketId) -> Option<Arc<Ticket>> {
        let g = self.lock();
        g.newer.get(&id).or_else(|| g.older.get(&id)).cloned()
    }

    /// The version the tickets table holds for `id`, if it was folded recently.
    pub fn version(&self, id: TicketId) -> Option<u64> {
        let g = self.lock();
        g.newer
            .get(&id)
            .or_else(|| g.older.get(&id))
            .map(|t| t.version)
    }

    /// A fold committed these tickets' rows (the folder calls this before reporting the fold).
    pub fn folded(&self, tickets: &[Arc<Ticket>]) {
        if self.cap == 0 {
            return;
        }
        for chunk in tickets.chunks(INSERT_CHUNK) {
            let mut dropped = None;
            {
                let mut g = self.lock();
                for t in chunk {
                    if g.newer.len() >= self.cap && !g.newer.contains_key(&t.id) {
                        let newer = std::mem::take(&mut g.newer);
                        dropped = Some(std::mem::replace(&mut g.older, newer));
                    }
                    g.newer.insert(t.id, Arc::clone(t));
                }
            }
            // Freed outside the lock.
            drop(dropped);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ticket(n: u128, version: u64) -> Arc<Ticket> {
        let mut t = crate::store::sqlite::tests::ticket(&[]);
        t.id = TicketId(uuid::Uuid::from_u128(n));
        t.version = version;
        Arc::new(t)
    }

    #[test]
    fn the_most_recently_folded_tickets_are_always_held() {
        let cache = FoldedTickets::new(2);
        cache.folded(&[ticket(1, 1), ticket(2, 1)]);
        cache.folded(&[ticket(3, 1)]);
        // 1 and 2 moved to the older generation; 3 started the newer one.
        assert_eq!(cache.version(TicketId(uuid::Uuid::from_u128(1))), Some(1));
        cache.folded(&[ticket(1, 2)]);
        assert_eq!(cache.version(TicketId(uuid::Uuid::from_u128(1))), Some(2));
        cache.folded(&[ticket(4, 1)]);
        // The two most recent (1 at version 2, then 4) are held; 2 went with the oldest generation.
        assert_eq!(cache.version(TicketId(uuid::Uuid::from_u128(2))), None);
        assert_eq!(cache.version(TicketId(uuid::Uuid::from_u128(1))), Some(2));
        assert!(cache.get(TicketId(uuid::Uuid::from_u128(4))).is_some());
        let none = FoldedTickets::new(0);
        none.folded(&[ticket(1, 1)]);
        assert_eq!(none.version(TicketId(uuid::Uuid::from_u128(1))), None);
    }
}
