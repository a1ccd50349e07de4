//! A model-based test: random creates, updates, comments, folds, outbox enqueues and acks, and crashes
//! (the store dropped without `close`, then reopened from the same folder), checked after every reopen
//! against a plain in-memory model of what was acknowledged.

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
    /// A list: every acknowledged write is folded first.
    Fold,
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
        1 => Just(Op::Fold),
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

fn open(dir: &Path, synchronous: Synchronous, fold_max_rows: usize) -> SqliteStore {
    let settings = StorageSettings {
        data_dir: dir.to_path_buf(),
        synchronous,
        readers: 1,
        fold_max_rows,
    };
    let tuning = Tuning {
        fold_interval: std::time::Duration::from_millis(20),
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

async fn run(ops: Vec<Op>, synchronous: Synchronous, fold_max_rows: usize) {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(dir.path(), synchronous, fold_max_rows);
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
                store.list(all()).await.unwrap();
            }
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
                store = open(dir.path(), synchronous, fold_max_rows);
                check(&store, &model).await;
            }
        }
    }
    check(&store, &model).await;
    drop(store);
    let store = open(dir.path(), synchronous, fold_max_rows);
    check(&store, &model).await;
    store.close().await;
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn the_store_holds_every_acknowledged_write_across_crashes(
        ops in proptest::collection::vec(op(), 1..40),
        full in any::<bool>(),
        fold_max_rows in 1..6usize,
    ) {
        let synchronous = if full { Synchronous::Full } else { Synchronous::Normal };
        actix_rt::System::new().block_on(run(ops, synchronous, fold_max_rows));
    }
}
