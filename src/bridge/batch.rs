//! Pure batching logic: ticket-sync outbox entries become one sync item per ticket, coalesced to the latest
//! snapshot while keeping every comment and every folded event id.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::domain::ids::{EventId, RequestId, TicketId};
use crate::domain::ticket::{Comment, EventKind, Ticket};
use crate::store::{OutboxEntry, OutboxRecord};

/// One element of `events` in `POST /api/tickets/sync/` (see docs/django-api.md).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SyncItem {
    pub event_id: EventId,
    pub ticket_id: TicketId,
    pub version: u64,
    pub kinds: Vec<EventKind>,
    /// Milliseconds, as the Django contract has every timestamp.
    #[serde(serialize_with = "crate::domain::timestamp::serialize_millis")]
    pub occurred_at: DateTime<Utc>,
    pub coalesced_event_ids: Vec<EventId>,
    pub ticket: Ticket,
    pub comments: Vec<Comment>,
    /// The request behind the newest folded change that has one (docs/django-api.md, "Request ids").
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<RequestId>,
    /// Outbox positions folded into this item; not sent.
    #[serde(skip)]
    pub seqs: Vec<i64>,
}

/// Folds entries (in outbox order) into one item per ticket, ordered by each ticket's first entry.
pub fn coalesce(entries: &[OutboxEntry]) -> Vec<SyncItem> {
    let mut order: Vec<TicketId> = Vec::new();
    let mut items: HashMap<TicketId, SyncItem> = HashMap::new();
    for entry in entries {
        // Other records go to their own endpoints, one call each.
        let OutboxRecord::TicketSync(r) = &entry.record else {
            continue;
        };
        let item = items.entry(r.ticket_id).or_insert_with(|| {
            order.push(r.ticket_id);
            SyncItem {
                event_id: r.event_id,
                ticket_id: r.ticket_id,
                version: r.version,
                kinds: Vec::new(),
                occurred_at: r.occurred_at,
                coalesced_event_ids: Vec::new(),
                ticket: r.ticket.clone(),
                comments: Vec::new(),
                request_id: None,
                seqs: Vec::new(),
            }
        });
        if r.version >= item.version {
            item.event_id = r.event_id;
            item.version = r.version;
            item.occurred_at = r.occurred_at;
            item.ticket = r.ticket.clone();
            if r.request_id.is_some() {
                item.request_id = r.request_id.clone();
            }
        }
        if !item.kinds.contains(&r.kind) {
            item.kinds.push(r.kind);
        }
        if r.status_changed && !item.kinds.contains(&EventKind::StatusChanged) {
            item.kinds.push(EventKind::StatusChanged);
        }
        item.coalesced_event_ids.push(r.event_id);
        if let Some(c) = &r.comment {
            item.comments.push(c.clone());
        }
        item.seqs.push(entry.seq);
    }
    order
        .into_iter()
        .filter_map(|id| items.remove(&id))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::status::Status;
    use crate::domain::ticket::Priority;
    use crate::store::SyncRecord;

    fn entry(
        seq: i64,
        ticket: TicketId,
        version: u64,
        kind: EventKind,
        comment: bool,
    ) -> OutboxEntry {
        let now = crate::store::now();
        let t = Ticket {
            id: ticket,
            subject: format!("v{version}"),
            description: String::new(),
            status: Status::Open,
            priority: Priority::Normal,
            requester: "r".into(),
            assignee: None,
            tags: vec![],
            source: crate::domain::ticket::Source::Api,
            chat_session_id: None,
            created_at: now,
            updated_at: now,
            version,
        };
        OutboxEntry {
            seq,
            enqueued_at: now,
            attempts: 0,
            isolated_failures: 0,
            record: OutboxRecord::TicketSync(SyncRecord {
                event_id: EventId::new(),
                ticket_id: ticket,
                version,
                kind,
                occurred_at: now,
                ticket: t,
                comment: comment.then(|| Comment {
                    id: uuid::Uuid::now_v7(),
                    ticket_id: ticket,
                    author: "a".into(),
                    body: format!("c{seq}"),
                    created_at: now,
                }),
                request_id: None,
                status_changed: false,
            }),
        }
    }

    #[test]
    fn updates_of_one_ticket_coalesce_to_latest_snapshot() {
        let a = TicketId::new();
        let b = TicketId::new();
        let entries = vec![
            entry(1, a, 1, EventKind::Created, false),
            entry(2, b, 1, EventKind::Created, false),
            entry(3, a, 2, EventKind::Updated, false),
            entry(4, a, 3, EventKind::Commented, true),
        ];
        let items = coalesce(&entries);
        assert_eq!(items.len(), 2);
        assert_eq!(items[0].ticket_id, a);
        assert_eq!(items[0].version, 3);
        assert_eq!(items[0].ticket.subject, "v3");
        assert_eq!(
            items[0].event_id,
            entries[3].record.as_sync().unwrap().event_id
        );
        assert_eq!(items[0].coalesced_event_ids.len(), 3);
        assert_eq!(items[0].comments.len(), 1);
        assert_eq!(items[0].seqs, vec![1, 3, 4]);
        assert_eq!(
            items[0].kinds,
            vec![EventKind::Created, EventKind::Updated, EventKind::Commented]
        );
        assert_eq!(items[1].ticket_id, b);
        assert_eq!(items[1].seqs, vec![2]);
    }

    #[test]
    fn an_item_carries_the_request_id_of_its_newest_change_that_has_one() {
        let a = TicketId::new();
        let mut entries = vec![
            entry(1, a, 1, EventKind::Created, false),
            entry(2, a, 2, EventKind::Updated, false),
            entry(3, a, 3, EventKind::Updated, false),
        ];
        for (i, id) in [(0, Some("first")), (1, Some("second")), (2, None)] {
            if let OutboxRecord::TicketSync(r) = &mut entries[i].record {
                r.request_id = id.map(RequestId::from);
            }
        }
        let items = coalesce(&entries);
        assert_eq!(items[0].request_id, Some(RequestId::from("second")));
        let v = serde_json::to_value(&items[0]).unwrap();
        assert_eq!(v["request_id"], "second");
        let alone = coalesce(&entries[2..]);
        assert!(serde_json::to_value(&alone[0])
            .unwrap()
            .get("request_id")
            .is_none());
    }

    #[test]
    fn comments_are_never_dropped_by_coalescing() {
        let a = TicketId::new();
        let entries: Vec<_> = (1..=5)
            .map(|i| entry(i, a, i as u64, EventKind::Commented, true))
            .collect();
        let items = coalesce(&entries);
        assert_eq!(items.len(), 1);
        assert_eq!(items[0].comments.len(), 5);
    }
}
