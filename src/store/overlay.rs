//! Lists and history that see every acknowledged write without waiting for a fold: what the tables
//! hold, with the [`super::pending::PendingView`]'s unfolded writes laid over it. Pure merge logic,
//! run on a reader thread; owns no thread and no connection.
//!
//! The reader takes the view's writes first, then reads the tables and their watermark in one
//! transaction. A write the view no longer shows was folded before that, so the tables have it; one
//! it shows is newer than the tables exactly when its journal `seq` is above the watermark (the
//! tables hold every row up to it and none after). So the view wins above the watermark and the
//! tables win at or below it, whichever of the two moved meanwhile.

use std::collections::HashMap;
use std::sync::Arc;

use super::TicketFilter;
use crate::domain::ids::TicketId;
use crate::domain::ticket::{Ticket, TicketEvent};

/// Whether `t` belongs in a list asked for with `f` (its limit aside), as the list's SQL decides.
pub fn matches(f: &TicketFilter, t: &Ticket) -> bool {
    f.after.map_or(true, |after| t.id > after)
        && f.status.map_or(true, |s| t.status == s)
        && f.priority.map_or(true, |p| t.priority == p)
        && f.assignee
            .as_ref()
            .map_or(true, |a| t.assignee.as_ref() == Some(a))
        && f.tag.as_ref().map_or(true, |tag| t.tags.contains(tag))
}

/// One page of a list, merged from the tables' rows (fed in id order) and the unfolded snapshots
/// newer than the tables.
pub struct ListMerge {
    /// Tickets whose table row is stale: `Some` when the newer snapshot belongs in the list.
    newer: HashMap<TicketId, bool>,
    /// The newer snapshots that belong in the list, in id order, not yet placed.
    additions: std::iter::Peekable<std::vec::IntoIter<Arc<Ticket>>>,
    /// Newer snapshots that leave the list: at most this many table rows are dropped.
    leaving: u32,
    page: Vec<Ticket>,
    limit: usize,
}

impl ListMerge {
    /// `unfolded` holds each unfolded ticket's snapshot with its journal `seq`; the tables hold every
    /// journal row up to `watermark`.
    pub fn new(f: &TicketFilter, watermark: i64, unfolded: Vec<(i64, Arc<Ticket>)>) -> Self {
        let mut newer = HashMap::new();
        let mut additions = Vec::new();
        let mut leaving = 0u32;
        for (seq, t) in unfolded {
            if seq <= watermark || f.after.is_some_and(|after| t.id <= after) {
                continue;
            }
            let belongs = matches(f, &t);
            newer.insert(t.id, belongs);
            if belongs {
                additions.push(t);
            } else {
                leaving += 1;
            }
        }
        additions.sort_unstable_by_key(|t| t.id);
        Self {
            newer,
            additions: additions.into_iter().peekable(),
            leaving,
            page: Vec::new(),
            limit: f.limit as usize,
        }
    }

    /// How many table rows to ask for: enough that dropping the stale rows that leave the list still
    /// fills the page.
    pub fn table_limit(&self) -> u32 {
        (self.limit as u32).saturating_add(self.leaving)
    }

    /// Whether the tables' row for `id` is current: stale rows are skipped, and the newer snapshot
    /// takes its place if it belongs in the list.
    pub fn keeps_table_row(&self, id: TicketId) -> bool {
        !self.newer.contains_key(&id)
    }

    /// Takes the next table row (in id order) after the additions before it; `false` once the page
    /// is full.
    pub fn push(&mut self, row: Ticket) -> bool {
        while self.page.len() < self.limit {
            match self.additions.next_if(|t| t.id < row.id) {
                Some(t) => self.page.push(Ticket::clone(&t)),
                None => break,
            }
        }
        if self.page.len() < self.limit {
            self.page.push(row);
        }
        self.page.len() < self.limit
    }

    /// The page: the table rows taken, with the remaining additions after them. Had the table query
    /// stopped at its limit, the page would already be full (see [`Self::table_limit`]).
    pub fn finish(mut self) -> Vec<Ticket> {
        while self.page.len() < self.limit {
            match self.additions.next() {
                Some(t) => self.page.push(Ticket::clone(&t)),
                None => break,
            }
        }
        self.page
    }
}

/// A page of `limit` history events: the tables' (all at or below `watermark`, in `seq` order) then
/// the unfolded ones above it.
pub fn merge_events(
    mut tables: Vec<(i64, TicketEvent)>,
    unfolded: Vec<(i64, Arc<TicketEvent>)>,
    watermark: i64,
    limit: u32,
) -> Vec<(i64, TicketEvent)> {
    let limit = limit as usize;
    let room = limit.saturating_sub(tables.len());
    tables.extend(
        unfolded
            .into_iter()
            .filter(|(seq, _)| *seq > watermark)
            .take(room)
            .map(|(seq, e)| (seq, TicketEvent::clone(&e))),
    );
    tables.truncate(limit);
    tables
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::status::Status;
    use crate::domain::ticket::EventKind;
    use crate::store::sqlite::tests::{next, ticket, write};

    fn filter(limit: u32) -> TicketFilter {
        TicketFilter {
            limit,
            ..TicketFilter::default()
        }
    }

    /// Three tickets in id order.
    fn three() -> Vec<Ticket> {
        let mut ts: Vec<Ticket> = (0..3).map(|_| ticket(&["a"])).collect();
        ts.sort_by_key(|t| t.id);
        ts
    }

    fn merged(
        f: &TicketFilter,
        watermark: i64,
        unfolded: Vec<(i64, Arc<Ticket>)>,
        table: &[Ticket],
    ) -> Vec<Ticket> {
        let mut m = ListMerge::new(f, watermark, unfolded);
        let take = m.table_limit() as usize;
        for t in table.iter().filter(|t| matches(f, t)).take(take) {
            if m.keeps_table_row(t.id) && !m.push(t.clone()) {
                break;
            }
        }
        m.finish()
    }

    #[test]
    fn newer_snapshots_replace_leave_or_join_the_list_in_id_order() {
        let ts = three();
        let open = TicketFilter {
            status: Some(Status::Open),
            ..filter(10)
        };
        let closed = |t: &Ticket| next(t, |t| t.status = Status::Closed);
        let renamed = next(&ts[2], |t| t.subject = "renamed".into());
        // The first left the list, the last changed; both newer than the tables (watermark 5).
        let unfolded = vec![
            (6, Arc::new(closed(&ts[0]))),
            (7, Arc::new(renamed.clone())),
        ];
        let page = merged(&open, 5, unfolded.clone(), &ts);
        assert_eq!(page, vec![ts[1].clone(), renamed.clone()]);
        // At or below the watermark the tables already have them (or newer): they are ignored.
        assert_eq!(merged(&open, 7, unfolded, &ts), ts);
        // A ticket the tables list as closed joins once its newer snapshot is open again.
        let table: Vec<Ticket> = vec![closed(&ts[0]), ts[1].clone(), ts[2].clone()];
        let reopened = next(&table[0], |t| t.status = Status::Open);
        let page = merged(&open, 1, vec![(2, Arc::new(reopened.clone()))], &table);
        assert_eq!(page, vec![reopened, ts[1].clone(), ts[2].clone()]);
    }

    #[test]
    fn rows_leaving_the_list_do_not_shorten_a_page_and_the_cursor_holds() {
        let ts = three();
        let f = TicketFilter {
            tag: Some("a".into()),
            ..filter(2)
        };
        let untagged = next(&ts[0], |t| t.tags.clear());
        let page = merged(&f, 0, vec![(1, Arc::new(untagged))], &ts);
        assert_eq!(page, ts[1..].to_vec(), "the page is still full");
        // A new ticket past the cursor joins; one before it does not.
        let after = TicketFilter {
            after: Some(ts[1].id),
            ..f
        };
        let newcomer = ticket(&["a"]);
        let page = merged(&after, 0, vec![(1, Arc::new(newcomer.clone()))], &ts);
        let mut want = vec![ts[2].clone(), newcomer];
        want.sort_by_key(|t| t.id);
        want.retain(|t| t.id > ts[1].id);
        assert_eq!(page, want);
    }

    #[test]
    fn history_takes_the_unfolded_events_above_the_watermark_after_the_tables() {
        let t = ticket(&[]);
        let e = |v: u64| {
            let mut t = t.clone();
            t.version = v;
            write(&t, EventKind::Updated, None).event
        };
        let tables = vec![(3, e(1)), (5, e(2))];
        let unfolded = vec![(5, Arc::new(e(2))), (9, Arc::new(e(3)))];
        let versions = |page: Vec<(i64, TicketEvent)>| -> Vec<(i64, u64)> {
            page.into_iter().map(|(s, e)| (s, e.version)).collect()
        };
        let all = merge_events(tables.clone(), unfolded.clone(), 5, 10);
        assert_eq!(versions(all), vec![(3, 1), (5, 2), (9, 3)]);
        let first = merge_events(tables, unfolded, 5, 2);
        assert_eq!(versions(first), vec![(3, 1), (5, 2)]);
    }
}
