//! A model-based test: random creates, updates, comments, folds, reads, outbox enqueues and acks, and
//! crashes (the store dropped without `close`, then reopened from the same folder), checked after every
//! reopen against a plain in-memory model of what was acknowledged. Reads between writes run while the
//! journal is partly folded (folds are due every 20 ms and may land mid-read), and page through lists
//! and history with small pages, so a wrong overlay of unfolded writes or a cursor that moves in a fold
//! shows up as a difference from the model.

use std::collections::BTreeMap;
use std::path::Path;

use proptest::prelude::*;
use proptest::sample::Index;

use super::super::{SqliteStore, Tuning};
use super::{next, ticket, write};
use crate::config::{StorageSettings, Synchronous};
use crate::domain::chat::{ChatRole, TranscriptLine};
use crate::domain::ids::{EventId, SessionId, TicketId};
use crate::domain::ticket::{Comment, EventKind, Priority, Ticket};
use crate::store::{
    now, ChatTicketRecord, Outbox, OutboxRecord, SyncRecord, TicketFilter, TicketStore, TicketWrite,
};

#[derive(Debug, Clone)]
enum Op {
    Create {
        tag: bool,
    },
    Update {
        which: Index,
        subject: u8,
        tag: bool,
    },
    Comment {
        which: Index,
    },
    /// Fold every acknowledged write now.
    Fold,
    /// Lists and one ticket's history, paged, with whatever is folded by then.
    Read {
        which: Index,
    },
    Enqueue {
        which: Index,
    },
    Ack {
        which: Index,
    },
    Crash,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => any::<bool>().prop_map(|tag| Op::Create { tag }),
        4 => (any::<Index>(), 0..4u8, any::<bool>())
            .prop_map(|(which, subject, tag)| Op::Update { which, subject, tag }),
        2 => any::<Index>().prop_map(|which| Op::Comment { which }),
        2 => Just(Op::Fold),
        4 => any::<Index>().prop_map(|which| Op::Read { which }),
        2 => any::<Index>().prop_map(|which| Op::Enqueue { which }),
        2 => any::<Index>().prop_map(|which| Op::Ack { which }),
        1 => Just(Op::Crash),
    ]
}

/// A ticket's history as (event id, kind, version).
type History = Vec<(EventId, EventKind, u64)>;

/// What the store must hold: every acknowledged write.
#[derive(Default)]
struct Model {
    /// Each ticket's latest state and its history as (event id, kind, version).
    tickets: BTreeMap<TicketId, (Ticket, History)>,
    /// Undelivered outbox records, in order.
    outbox: Vec<OutboxRecord>,
}

impl Model {
    fn pick(&self, which: &Index) -> Option<Ticket> {
        if self.tickets.is_empty() {
            return None;
        }
        let i = which.index(self.tickets.len());
        self.tickets.values().nth(i).map(|(t, _)| t.clone())
    }

    fn written(&mut self, w: &TicketWrite) {
        let entry = self
            .tickets
            .entry(w.ticket.id)
            .or_insert_with(|| (w.ticket.clone(), Vec::new()));
        entry.0 = w.ticket.clone();
        entry
            .1
            .push((w.event.event_id, w.event.kind, w.ticket.version));
        self.outbox.push(OutboxRecord::TicketSync(SyncRecord {
            event_id: w.event.event_id,
            ticket_id: w.ticket.id,
            version: w.ticket.version,
            kind: w.event.kind,
            occurred_at: w.event.at,
            ticket: w.ticket.clone(),
            comment: w.comment.clone(),
            request_id: None,
            status_changed: w.event.kind == EventKind::Updated
                && w.event.changes.get("status").is_some(),
        }));
    }
}

/// How the store folds on its own: `fold_max_rows` rows, or every `fold_interval`.
#[derive(Debug, Clone, Copy)]
struct Folds {
    max_rows: usize,
    interval: std::time::Duration,
}

fn open(dir: &Path, synchronous: Synchronous, folds: Folds) -> SqliteStore {
    let settings = StorageSettings {
        data_dir: dir.to_path_buf(),
        synchronous,
        readers: 1,
        fold_max_rows: folds.max_rows,
        postgres_url: String::new(),
        postgres_pool: 1,
        postgres_connect_timeout_ms: 1,
        outbox_lease_ms: 30_000,
        outbox_poll_ms: 1000,
    };
    let tuning = Tuning {
        fold_interval: folds.interval,
        ..Tuning::default()
    };
    SqliteStore::open_tuned(&settings, tuning).unwrap()
}

fn all() -> TicketFilter {
    TicketFilter {
        limit: 1000,
        ..TicketFilter::default()
    }
}

/// Every ticket `f` selects, read a page of `f.limit` at a time through the cursor.
async fn list_paged(store: &SqliteStore, f: TicketFilter) -> Vec<Ticket> {
    let mut out: Vec<Ticket> = Vec::new();
    loop {
        let page = store
            .list(TicketFilter {
                after: out.last().map(|t| t.id),
                ..f.clone()
            })
            .await
            .unwrap();
        let full = page.len() == f.limit as usize;
        out.extend(page);
        if !full {
            return out;
        }
    }
}

/// `id`'s whole history, read `limit` events at a time through the cursor.
async fn history_paged(store: &SqliteStore, id: TicketId, limit: u32) -> History {
    let mut out = Vec::new();
    let mut cursor = 0;
    loop {
        let page = store.events(id, cursor, limit).await.unwrap();
        let full = page.len() == limit as usize;
        if let Some((seq, _)) = page.last() {
            assert!(*seq > cursor, "the cursor moves forward");
            cursor = *seq;
        }
        out.extend(
            page.into_iter()
                .map(|(_, e)| (e.event_id, e.kind, e.version)),
        );
        if !full {
            return out;
        }
    }
}

/// Lists (whole, by tag, by priority) and one ticket's history, in small pages, against the model.
/// Pages of one make a page that a ticket leaving the list would shorten end the paging early.
async fn check_reads(store: &SqliteStore, model: &Model, which: &Index) {
    let pages = TicketFilter { limit: 1, ..all() };
    let expected: Vec<Ticket> = model.tickets.values().map(|(t, _)| t.clone()).collect();
    assert_eq!(list_paged(store, pages.clone()).await, expected, "the list");
    for (tag, priority) in [(Some("hot"), None), (None, Some(Priority::High))] {
        let f = TicketFilter {
            tag: tag.map(String::from),
            priority,
            ..pages.clone()
        };
        let want: Vec<Ticket> = expected
            .iter()
            .filter(|t| tag.map_or(true, |g| t.tags.iter().any(|x| x == g)))
            .filter(|t| priority.map_or(true, |p| t.priority == p))
            .cloned()
            .collect();
        assert_eq!(list_paged(store, f).await, want, "{tag:?} {priority:?}");
    }
    if let Some(t) = model.pick(which) {
        let history = &model.tickets[&t.id].1;
        assert_eq!(&history_paged(store, t.id, 2).await, history, "history");
    }
}

async fn check(store: &SqliteStore, model: &Model) {
    for (id, (latest, history)) in &model.tickets {
        assert_eq!(store.load(*id).await.unwrap().as_ref(), Some(latest));
        let events: History = store
            .events(*id, 0, 1000)
            .await
            .unwrap()
            .into_iter()
            .map(|(_, e)| (e.event_id, e.kind, e.version))
            .collect();
        assert_eq!(&events, history, "history of {id}");
    }
    let listed = store.list(all()).await.unwrap();
    let expected: Vec<Ticket> = model.tickets.values().map(|(t, _)| t.clone()).collect();
    assert_eq!(listed, expected);
    let tagged = store
        .list(TicketFilter {
            tag: Some("hot".into()),
            ..all()
        })
        .await
        .unwrap();
    let expected: Vec<Ticket> = expected
        .into_iter()
        .filter(|t| t.tags.iter().any(|g| g == "hot"))
        .collect();
    assert_eq!(tagged, expected, "the tag index");
    let outbox: Vec<OutboxRecord> = store
        .peek(10_000)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.record)
        .collect();
    assert_eq!(outbox, model.outbox, "undelivered records, in order");
}

async fn run(ops: Vec<Op>, synchronous: Synchronous, folds: Folds) {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(dir.path(), synchronous, folds);
    let mut model = Model::default();
    for op in ops {
        match op {
            Op::Create { tag } => {
                let t = ticket(if tag { &["hot"] } else { &[] });
                let w = write(&t, EventKind::Created, None);
                store.create(w.clone()).await.unwrap();
                model.written(&w);
            }
            Op::Update {
                which,
                subject,
                tag,
            } => {
                let Some(t) = model.pick(&which) else {
                    continue;
                };
                let v = next(&t, |t| {
                    t.subject = format!("subject {subject}");
                    t.priority = if subject % 2 == 0 {
                        Priority::Low
                    } else {
                        Priority::High
                    };
                    t.tags = if tag { vec!["hot".into()] } else { vec![] };
                });
                let w = write(&v, EventKind::Updated, None);
                store.update(w.clone()).await.unwrap();
                model.written(&w);
            }
            Op::Comment { which } => {
                let Some(t) = model.pick(&which) else {
                    continue;
                };
                let v = next(&t, |_| {});
                let comment = Comment {
                    id: uuid::Uuid::now_v7(),
                    ticket_id: v.id,
                    author: "bob".into(),
                    body: "noted".into(),
                    created_at: v.updated_at,
                };
                let w = write(&v, EventKind::Commented, Some(comment));
                store.update(w.clone()).await.unwrap();
                model.written(&w);
            }
            Op::Fold => {
                store.fold().await.unwrap();
            }
            Op::Read { which } => check_reads(&store, &model, &which).await,
            Op::Enqueue { which } => {
                let Some(t) = model.pick(&which) else {
                    continue;
                };
                let record = OutboxRecord::ChatTicket(ChatTicketRecord {
                    session_id: SessionId::new(),
                    ticket_id: t.id,
                    subject: t.subject.clone(),
                    description: String::new(),
                    priority: t.priority,
                    requester: t.requester.clone(),
                    transcript: vec![TranscriptLine {
                        role: ChatRole::Customer,
                        text: "help".into(),
                        at: now(),
                    }],
                    request_id: None,
                });
                store.enqueue(record.clone()).await.unwrap();
                model.outbox.push(record);
            }
            Op::Ack { which } => {
                if model.outbox.is_empty() {
                    continue;
                }
                let i = which.index(model.outbox.len());
                let entries = store.peek(10_000).await.unwrap();
                assert_eq!(entries[i].record, model.outbox[i]);
                store.ack(vec![entries[i].seq]).await.unwrap();
                model.outbox.remove(i);
            }
            Op::Crash => {
                drop(store);
                store = open(dir.path(), synchronous, folds);
                check(&store, &model).await;
            }
        }
    }
    check(&store, &model).await;
    drop(store);
    let store = open(dir.path(), synchronous, folds);
    check(&store, &model).await;
    store.close().await;
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn the_store_holds_every_acknowledged_write_across_crashes(
        ops in proptest::collection::vec(op(), 1..40),
        full in any::<bool>(),
        fold_max_rows in 1..6usize,
        lazy in any::<bool>(),
    ) {
        let synchronous = if full { Synchronous::Full } else { Synchronous::Normal };
        // Lazy: only `Fold`, a crash's reopen and the end fold, so reads see long unfolded runs.
        let folds = if lazy {
            Folds { max_rows: usize::MAX, interval: std::time::Duration::from_secs(3600) }
        } else {
            Folds { max_rows: fold_max_rows, interval: std::time::Duration::from_millis(20) }
        };
        actix_rt::System::new().block_on(run(ops, synchronous, folds));
    }
}
