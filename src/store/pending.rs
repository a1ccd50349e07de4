//! What readers see of acknowledged writes that are not folded into the tables yet, readable from any
//! thread without waiting for the writer or the folder: each such ticket's latest snapshot and its
//! unfolded history events, each tagged with the journal `seq` that wrote it. A load is answered from
//! here until the tables have the write; lists and history merge it over the tables ([`super::overlay`]).
//! The writer (or the syncer, once durable) publishes into it; a fold report drops what the tables now
//! hold. Owns no thread.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::domain::ids::TicketId;
use crate::domain::ticket::{Ticket, TicketEvent};

/// One acknowledged ticket write, as readers see it until it is folded.
#[derive(Debug, Clone)]
pub struct Published {
    /// The journal row that holds it; once folded, also its history row's `seq`.
    pub seq: i64,
    pub ticket: Arc<Ticket>,
    pub event: Arc<TicketEvent>,
}

/// A ticket with writes not yet folded.
#[derive(Debug)]
struct Unfolded {
    latest: Arc<Ticket>,
    /// The journal row that wrote `latest`.
    seq: i64,
    /// Its history events not yet folded, oldest first.
    events: Vec<(i64, Arc<TicketEvent>)>,
}

/// Latest snapshots and history of journalled, not yet folded tickets, readable from any thread.
#[derive(Debug, Default)]
pub struct PendingView {
    tickets: Mutex<HashMap<TicketId, Unfolded>>,
    len: AtomicUsize,
}

impl PendingView {
    fn lock(&self) -> MutexGuard<'_, HashMap<TicketId, Unfolded>> {
        // Every update leaves each entry whole; a panic mid-update leaves the map usable.
        self.tickets.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn get(&self, id: TicketId) -> Option<Ticket> {
        if self.is_empty() {
            return None;
        }
        self.lock().get(&id).map(|u| Ticket::clone(&u.latest))
    }

    /// No acknowledged write is waiting for a fold: the tables are current.
    pub fn is_empty(&self) -> bool {
        self.len.load(Ordering::Acquire) == 0
    }

    /// Each unfolded ticket with an id above `after`, with the journal `seq` of its snapshot.
    pub fn snapshots_after(&self, after: Option<TicketId>) -> Vec<(i64, Arc<Ticket>)> {
        if self.is_empty() {
            return Vec::new();
        }
        self.lock()
            .iter()
            .filter(|(id, _)| after.map_or(true, |a| **id > a))
            .map(|(_, u)| (u.seq, u.latest.clone()))
            .collect()
    }

    /// `id`'s unfolded history events with a `seq` above `after_seq`, oldest first.
    pub fn events_after(&self, id: TicketId, after_seq: i64) -> Vec<(i64, Arc<TicketEvent>)> {
        if self.is_empty() {
            return Vec::new();
        }
        let map = self.lock();
        let Some(u) = map.get(&id) else {
            return Vec::new();
        };
        let from = u.events.partition_point(|(seq, _)| *seq <= after_seq);
        u.events[from..].to_vec()
    }

    /// Shows `writes`, in journal order. A write older than what is shown is skipped, so publishing
    /// the same rows twice (after the writer re-read its journal) changes nothing.
    pub(super) fn publish(&self, writes: impl IntoIterator<Item = Published>) {
        let mut map = self.lock();
        for w in writes {
            let id = w.ticket.id;
            match map.get_mut(&id) {
                Some(u) => {
                    if w.seq > u.seq {
                        u.latest = w.ticket;
                        u.seq = w.seq;
                    }
                    if u.events.last().map_or(true, |(seq, _)| w.seq > *seq) {
                        u.events.push((w.seq, w.event));
                    }
                }
                None => {
                    map.insert(
                        id,
                        Unfolded {
                            latest: w.ticket,
                            seq: w.seq,
                            events: vec![(w.seq, w.event)],
                        },
                    );
                }
            }
        }
        self.len.store(map.len(), Ordering::Release);
    }

    /// A fold put every journal row up to `watermark` into the tables, `tickets` among them: their
    /// snapshots and events up to it are read from the tables from now on.
    pub(super) fn folded(&self, watermark: i64, tickets: impl IntoIterator<Item = TicketId>) {
        let mut map = self.lock();
        for id in tickets {
            let Some(u) = map.get_mut(&id) else { continue };
            if u.seq <= watermark {
                map.remove(&id);
            } else {
                let folded = u.events.partition_point(|(seq, _)| *seq <= watermark);
                u.events.drain(..folded);
            }
        }
        self.len.store(map.len(), Ordering::Release);
    }

    /// Shows exactly `writes` (the journal re-read from disk), in journal order.
    pub(super) fn replace(&self, writes: impl IntoIterator<Item = Published>) {
        self.lock().clear();
        self.len.store(0, Ordering::Release);
        self.publish(writes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::ticket::EventKind;
    use crate::store::sqlite::tests::{next, ticket, write};

    fn published(seq: i64, t: &Ticket) -> Published {
        Published {
            seq,
            ticket: Arc::new(t.clone()),
            event: Arc::new(write(t, EventKind::Updated, None).event),
        }
    }

    #[test]
    fn a_fold_drops_what_it_covers_and_keeps_later_writes() {
        let view = PendingView::default();
        let a1 = ticket(&[]);
        let a2 = next(&a1, |_| {});
        let b1 = ticket(&[]);
        view.publish([published(1, &a1), published(2, &b1), published(3, &a2)]);
        let seqs = |id| -> Vec<i64> { view.events_after(id, 0).iter().map(|e| e.0).collect() };
        assert_eq!(seqs(a1.id), vec![1, 3]);
        assert_eq!(view.events_after(a1.id, 1).len(), 1);

        view.folded(2, [a1.id, b1.id]);
        assert_eq!(view.get(b1.id), None, "b is all in the tables");
        assert_eq!(view.get(a1.id), Some(a2.clone()), "a was written again");
        assert_eq!(
            seqs(a1.id),
            vec![3],
            "a's folded event is read from the tables"
        );
        view.folded(3, [a1.id]);
        assert!(view.is_empty());
    }

    #[test]
    fn publishing_a_write_again_or_out_of_date_changes_nothing() {
        let view = PendingView::default();
        let v1 = ticket(&[]);
        let v2 = next(&v1, |_| {});
        view.publish([published(1, &v1), published(2, &v2)]);
        view.publish([published(1, &v1)]);
        assert_eq!(view.get(v1.id), Some(v2));
        assert_eq!(view.events_after(v1.id, 0).len(), 2);
        let after: Vec<i64> = view.snapshots_after(None).iter().map(|s| s.0).collect();
        assert_eq!(after, vec![2]);
        assert!(view.snapshots_after(Some(v1.id)).is_empty());
    }
}
