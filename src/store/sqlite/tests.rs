//! The store's own tests, through [`SqliteStore`] or the journal and folder it runs; `outbox` holds
//! those of records other than ticket syncs.

mod model;
mod outbox;

use std::path::Path;

use chrono::Duration as ChronoDuration;
use serde_json::json;

use super::{SqliteStore, Tuning};
use crate::config::{StorageSettings, Synchronous};
use crate::domain::ids::{EventId, TicketId};
use crate::domain::status::Status;
use crate::domain::ticket::{Comment, EventKind, Priority, Source, Ticket, TicketEvent};
use crate::store::{now, Outbox, StoreError, TicketFilter, TicketStore, TicketWrite};

/// A store that never folds on its own: only [`SqliteStore::fold`], `close` and a reopen fold.
pub(in crate::store) fn open(dir: &Path) -> SqliteStore {
    open_with(dir, Synchronous::Normal)
}

pub(in crate::store) fn open_with(dir: &Path, synchronous: Synchronous) -> SqliteStore {
    let settings = StorageSettings {
        data_dir: dir.to_path_buf(),
        synchronous,
        readers: 1,
        fold_max_rows: 1_000_000,
        postgres_url: String::new(),
        postgres_pool: 1,
        postgres_connect_timeout_ms: 1,
        outbox_lease_ms: 30_000,
        outbox_poll_ms: 1000,
    };
    let tuning = Tuning {
        commit_batch_max: 64,
        fold_interval: std::time::Duration::from_secs(3600),
        checkpoint_interval: std::time::Duration::from_millis(50),
        ..Tuning::default()
    };
    SqliteStore::open_tuned(&settings, tuning).unwrap()
}

pub(in crate::store) fn ticket(tags: &[&str]) -> Ticket {
    let at = now();
    Ticket {
        id: TicketId::new(),
        subject: "Printer on fire — ünïcode".into(),
        description: String::new(),
        status: Status::Open,
        priority: Priority::Normal,
        requester: "ann@example.com".into(),
        assignee: None,
        tags: tags.iter().map(|t| t.to_string()).collect(),
        source: Source::Api,
        chat_session_id: None,
        created_at: at,
        updated_at: at,
        version: 1,
    }
}

/// A store opened in `dir` holding one created ticket, and that ticket.
pub(in crate::store) async fn with_one_ticket(dir: &Path) -> (SqliteStore, Ticket) {
    let store = open(dir);
    let v1 = ticket(&[]);
    store
        .create(write(&v1, EventKind::Created, None))
        .await
        .unwrap();
    (store, v1)
}

/// A write of `ticket` as it stands, by actor "test" (the folder's tests use it too).
pub(in crate::store) fn write(
    ticket: &Ticket,
    kind: EventKind,
    comment: Option<Comment>,
) -> TicketWrite {
    TicketWrite {
        ticket: ticket.clone(),
        event: TicketEvent {
            event_id: EventId::new(),
            ticket_id: ticket.id,
            kind,
            actor: "test".into(),
            at: ticket.updated_at,
            version: ticket.version,
            changes: json!({"v": ticket.version}),
        },
        comment,
        request_id: None,
    }
}

/// The next version of `t` with `change` applied.
pub(in crate::store) fn next(t: &Ticket, change: impl FnOnce(&mut Ticket)) -> Ticket {
    let mut t = t.clone();
    change(&mut t);
    t.version += 1;
    t.updated_at += ChronoDuration::milliseconds(1);
    t
}

pub(in crate::store) fn filter() -> TicketFilter {
    TicketFilter {
        limit: 100,
        ..TicketFilter::default()
    }
}

/// Creates a ticket and changes it three times (fields, tags, a comment); returns its states.
async fn history(store: &SqliteStore) -> Vec<Ticket> {
    let v1 = ticket(&["printer", "fire"]);
    store
        .create(write(&v1, EventKind::Created, None))
        .await
        .unwrap();
    let v2 = next(&v1, |t| {
        t.status = Status::InProgress;
        t.assignee = Some("bob".into());
        t.priority = Priority::Urgent;
    });
    store
        .update(write(&v2, EventKind::StatusChanged, None))
        .await
        .unwrap();
    let v3 = next(&v2, |t| t.tags = vec!["fire".into(), "facilities".into()]);
    store
        .update(write(&v3, EventKind::Updated, None))
        .await
        .unwrap();
    let v4 = next(&v3, |_| {});
    let comment = Comment {
        id: uuid::Uuid::now_v7(),
        ticket_id: v4.id,
        author: "bob".into(),
        body: "Extinguished.".into(),
        created_at: v4.updated_at,
    };
    store
        .update(write(&v4, EventKind::Commented, Some(comment)))
        .await
        .unwrap();
    vec![v1, v2, v3, v4]
}

async fn assert_tables_hold(store: &SqliteStore, states: &[Ticket]) {
    let last = states.last().unwrap();
    assert_eq!(store.load(last.id).await.unwrap().as_ref(), Some(last));
    let listed = store.list(filter()).await.unwrap();
    assert_eq!(listed, vec![last.clone()]);
    let by = |f: TicketFilter| async { store.list(f).await.unwrap().len() };
    let tag = |t: &str| TicketFilter {
        tag: Some(t.into()),
        ..filter()
    };
    assert_eq!(
        by(tag("printer")).await,
        0,
        "a removed tag leaves the index"
    );
    assert_eq!(by(tag("facilities")).await, 1);
    assert_eq!(by(tag("fire")).await, 1);
    let status = |s| TicketFilter {
        status: Some(s),
        ..filter()
    };
    assert_eq!(by(status(Status::Open)).await, 0);
    assert_eq!(by(status(Status::InProgress)).await, 1);
    let assignee = TicketFilter {
        assignee: Some("bob".into()),
        ..filter()
    };
    assert_eq!(by(assignee).await, 1);
    let events = store.events(last.id, 0, 100).await.unwrap();
    let versions: Vec<u64> = events.iter().map(|(_, e)| e.version).collect();
    assert_eq!(versions, vec![1, 2, 3, 4]);
    assert!(
        events.windows(2).all(|w| w[0].0 < w[1].0),
        "history in order"
    );
    assert_eq!(events[3].1.kind, EventKind::Commented);
    let outbox = Outbox::peek(store, 100).await.unwrap();
    let synced: Vec<u64> = outbox
        .iter()
        .map(|e| e.record.as_sync().unwrap().version)
        .collect();
    assert_eq!(synced, vec![1, 2, 3, 4], "every write is in the outbox");
    assert_eq!(
        outbox[3]
            .record
            .as_sync()
            .unwrap()
            .comment
            .as_ref()
            .unwrap()
            .body,
        "Extinguished."
    );
}

#[actix_rt::test]
async fn journalled_writes_are_read_back_before_and_after_the_fold() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let states = history(&store).await;
    // Not folded yet: the snapshot comes from memory, and lists and history lay the journalled
    // writes over the tables.
    assert_eq!(
        store.load(states[0].id).await.unwrap().as_ref(),
        states.last()
    );
    assert_tables_hold(&store, &states).await;
    // Folded: every query below reads the tables.
    store.fold().await.unwrap();
    assert_tables_hold(&store, &states).await;
    store.close().await;
}

#[actix_rt::test]
async fn writes_are_acknowledged_while_a_fold_waits_for_the_tables() {
    let dir = tempfile::tempdir().unwrap();
    let (store, v1) = with_one_ticket(dir.path()).await;
    // Another connection holds tickets.db's write lock, so the fold asked for here waits.
    let blocker = rusqlite::Connection::open(dir.path().join("tickets.db")).unwrap();
    blocker.execute_batch("BEGIN IMMEDIATE").unwrap();
    let folded = store.fold();
    let v2 = next(&v1, |t| t.subject = "Still on fire".into());
    // Well inside the folder's 5 s busy timeout: the write does not queue behind the fold.
    tokio::time::timeout(
        std::time::Duration::from_secs(2),
        store.update(write(&v2, EventKind::Updated, None)),
    )
    .await
    .expect("the write is acknowledged while the fold waits")
    .unwrap();
    assert_eq!(store.load(v1.id).await.unwrap().as_ref(), Some(&v2));
    blocker.execute_batch("COMMIT").unwrap();
    folded.await.unwrap();
    assert_eq!(store.list(filter()).await.unwrap(), vec![v2]);
    store.close().await;
}

#[actix_rt::test]
async fn a_journal_left_by_a_crash_is_folded_on_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let states = {
        let store = open(dir.path());
        let states = history(&store).await;
        // Dropped without `close`: the writer stops without folding, as after kill -9.
        drop(store);
        states
    };
    let raw = rusqlite::Connection::open(dir.path().join("switchboard.db")).unwrap();
    let tables = rusqlite::Connection::open(dir.path().join("tickets.db")).unwrap();
    let folded = crate::store::fold::folded_seq(&tables).unwrap();
    let journalled: i64 = raw
        .query_row(
            "SELECT COUNT(*) FROM outbox WHERE seq > ?1",
            [folded],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(journalled, 4, "the writes were left in the journal");
    drop(raw);
    let store = open(dir.path());
    assert_tables_hold(&store, &states).await;
    store.close().await;
}

#[actix_rt::test]
async fn conflicts_and_duplicates_are_refused_against_journal_and_tables() {
    let dir = tempfile::tempdir().unwrap();
    let (store, v1) = with_one_ticket(dir.path()).await;
    for round in ["journalled", "folded"] {
        let again = store.create(write(&v1, EventKind::Created, None)).await;
        assert!(
            matches!(again, Err(StoreError::AlreadyExists(_))),
            "{round}"
        );
        let stale = next(&next(&v1, |_| {}), |_| {});
        let conflict = store.update(write(&stale, EventKind::Updated, None)).await;
        assert!(
            matches!(
                conflict,
                Err(StoreError::VersionConflict { expected: 2, .. })
            ),
            "{round}: {conflict:?}"
        );
        store.fold().await.unwrap();
    }
    let unknown = next(&ticket(&[]), |_| {});
    let missing = store
        .update(write(&unknown, EventKind::Updated, None))
        .await;
    assert!(matches!(missing, Err(StoreError::VersionConflict { .. })));
    // A refused write leaves nothing behind, and its neighbours commit.
    let v2 = next(&v1, |t| t.subject = "Still on fire".into());
    store
        .update(write(&v2, EventKind::Updated, None))
        .await
        .unwrap();
    assert_eq!(store.peek(10).await.unwrap().len(), 2);
    assert_eq!(store.events(v1.id, 0, 10).await.unwrap().len(), 2);
    assert_eq!(store.load(v1.id).await.unwrap(), Some(v2));
    store.close().await;
}

#[actix_rt::test]
async fn rows_delivered_or_dead_lettered_before_their_fold_are_folded_then_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let states = history(&store).await;
    let outbox = store.peek(10).await.unwrap();
    let seqs: Vec<i64> = outbox.iter().map(|e| e.seq).collect();
    // Django takes the first two and refuses the third before any fold.
    store.ack(seqs[..2].to_vec()).await.unwrap();
    store
        .dead_letter(vec![crate::store::Rejection {
            seq: seqs[2],
            status_code: Some(422),
            error: "no".into(),
        }])
        .await
        .unwrap();
    let waiting = store.peek(10).await.unwrap();
    assert_eq!(waiting.len(), 1, "only the fourth is still to send");
    assert_eq!(store.stats().await.unwrap().depth, 1);
    // An operator re-queues the dead letter while its row still waits for the fold.
    let dead = store.dead_letters(10).await.unwrap();
    assert!(store.retry_dead_letter(dead[0].id).await.unwrap());
    let again: Vec<i64> = store
        .peek(10)
        .await
        .unwrap()
        .iter()
        .map(|e| e.seq)
        .collect();
    assert_eq!(again, vec![seqs[2], seqs[3]], "re-sent from its own row");
    // The fold applies all four, and drops the delivered ones.
    store.fold().await.unwrap();
    assert_tables_hold_after_delivery(&store, &states).await;
    let stats = store.stats().await.unwrap();
    assert_eq!((stats.depth, stats.dead_letters), (2, 0));
    store.ack(vec![seqs[2], seqs[3]]).await.unwrap();
    assert_eq!(store.stats().await.unwrap().depth, 0);
    drop(store);
    let raw = rusqlite::Connection::open(dir.path().join("switchboard.db")).unwrap();
    let rows: i64 = raw
        .query_row("SELECT COUNT(*) FROM outbox", [], |r| r.get(0))
        .unwrap();
    assert_eq!(rows, 0, "delivered and folded rows are gone");
}

async fn assert_tables_hold_after_delivery(store: &SqliteStore, states: &[Ticket]) {
    let last = states.last().unwrap();
    assert_eq!(store.list(filter()).await.unwrap(), vec![last.clone()]);
    let events = store.events(last.id, 0, 100).await.unwrap();
    assert_eq!(events.len(), 4);
}

#[test]
fn folds_in_parts_keep_later_writes_served_from_memory_until_folded() {
    use crate::store::folded::FoldedTickets;
    use crate::store::folder::Folder;
    use crate::store::journal::{EncodedWrite, Journal, JournalOp};
    use crate::store::pending::PendingView;
    use crate::store::wal::WalLimits;
    use crate::store::{rows, schema};

    let dir = tempfile::tempdir().unwrap();
    let tables_path = dir.path().join("tickets.db");
    let mut conn = rusqlite::Connection::open(dir.path().join("switchboard.db")).unwrap();
    schema::migrate(&mut conn, &tables_path).unwrap();
    let tables = rusqlite::Connection::open(&tables_path).unwrap();
    let wal = WalLimits {
        restart_pages: 1000,
    };
    let folded = FoldedTickets::new(16);
    let mut folder = Folder::new(
        rusqlite::Connection::open(&tables_path).unwrap(),
        folded.clone(),
        std::time::Duration::from_secs(1),
        wal,
        1,
    )
    .unwrap();
    let view = std::sync::Arc::new(PendingView::default());
    let reader = rusqlite::Connection::open(&tables_path).unwrap();
    let mut journal = Journal::recover(&conn, reader, view.clone())
        .unwrap()
        .with_folded_cache(folded);
    let v1 = ticket(&["printer"]);
    let other = ticket(&[]);
    let v2 = next(&v1, |t| {
        t.priority = Priority::High;
        t.tags = vec!["fire".into()];
    });
    let v3 = next(&v2, |t| t.subject = "Out".into());
    let writes = [
        (JournalOp::Create, &v1, EventKind::Created),
        (JournalOp::Create, &other, EventKind::Created),
        (JournalOp::Update, &v2, EventKind::Updated),
        (JournalOp::Update, &v3, EventKind::Updated),
    ];
    let mut seqs = Vec::new();
    for (op, t, kind) in writes {
        let tx = conn.transaction().unwrap();
        let encoded = EncodedWrite::new(write(t, kind, None)).unwrap();
        let staged = journal.append(&tx, op, encoded).unwrap().unwrap();
        journal.record(staged);
        tx.commit().unwrap();
        journal.committed();
        seqs.push(journal.last_seq());
    }
    let stored = |id| rows::load(&tables, id).unwrap();
    let count = |sql: &str| -> i64 { tables.query_row(sql, [], |r| r.get(0)).unwrap() };
    let mut fold_up_to = |journal: &mut Journal, seq: i64| {
        folder.take(journal.hand_over(seq));
        let report = folder.fold_pending();
        assert!(report.error.is_none(), "{:?}", report.error);
        journal.folded(&report);
        report.rows
    };

    // The first fold creates both rows; v1's ticket has later writes, still served from memory.
    assert_eq!(fold_up_to(&mut journal, seqs[1]), 2);
    assert_eq!(stored(v1.id).as_ref(), Some(&v1));
    assert_eq!(stored(other.id).as_ref(), Some(&other));
    assert_eq!(view.get(v1.id).as_ref(), Some(&v3));
    assert_eq!(view.get(other.id), None);
    // The next one updates the row the first created.
    assert_eq!(fold_up_to(&mut journal, seqs[2]), 1);
    assert_eq!(stored(v1.id).as_ref(), Some(&v2));
    assert_eq!(view.get(v1.id).as_ref(), Some(&v3));
    // Rows handed over again (the writer re-read its journal after a failed commit) are skipped.
    journal.rolled_back(&conn).unwrap();
    assert_eq!(fold_up_to(&mut journal, i64::MAX), 1);
    assert_eq!(stored(v1.id).as_ref(), Some(&v3));
    assert!(view.is_empty() && journal.len() == 0);
    assert_eq!(fold_up_to(&mut journal, i64::MAX), 0);

    assert_eq!(count("SELECT COUNT(*) FROM ticket_events"), 4);
    assert_eq!(
        count("SELECT COUNT(*) FROM ticket_tags WHERE tag = 'printer'"),
        0
    );
    assert_eq!(
        count("SELECT COUNT(*) FROM ticket_tags WHERE tag = 'fire'"),
        1
    );
    assert_eq!(
        count("SELECT value FROM store_meta WHERE key = 'folded_seq'"),
        seqs[3]
    );
}

#[actix_rt::test]
async fn an_import_is_stored_once_without_an_outbox_entry() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let t = ticket(&["django"]);
    let event = write(&t, EventKind::Imported, None).event;
    store.import(t.clone(), event.clone()).await.unwrap();
    // The second activation's import is a no-op, journalled or folded.
    store.import(t.clone(), event.clone()).await.unwrap();
    assert_eq!(store.load(t.id).await.unwrap().as_ref(), Some(&t));
    assert_eq!(store.list(filter()).await.unwrap(), vec![t.clone()]);
    store.fold().await.unwrap();
    store.import(t.clone(), event).await.unwrap();
    assert!(store.peek(10).await.unwrap().is_empty());
    assert_eq!(store.events(t.id, 0, 10).await.unwrap().len(), 1);
    store.close().await;
}

/// Holds `tickets.db`'s write lock from another connection while alive, so a fold cannot commit.
struct FoldBlocker(rusqlite::Connection);

impl FoldBlocker {
    fn hold(dir: &Path) -> Self {
        let conn = rusqlite::Connection::open(dir.join("tickets.db")).unwrap();
        conn.execute_batch("BEGIN IMMEDIATE").unwrap();
        Self(conn)
    }

    fn release(self) {
        self.0.execute_batch("COMMIT").unwrap();
    }
}

/// Well inside the folder's 5 s busy timeout, so a read that waited for the fold would miss it.
const NO_FOLD: std::time::Duration = std::time::Duration::from_secs(2);

#[actix_rt::test]
async fn lists_and_history_answer_while_a_fold_is_held_up_and_show_the_latest_write() {
    let dir = tempfile::tempdir().unwrap();
    let (store, v1) = with_one_ticket(dir.path()).await;
    let other = ticket(&["fire"]);
    store
        .create(write(&other, EventKind::Created, None))
        .await
        .unwrap();
    store.fold().await.unwrap();
    let blocker = FoldBlocker::hold(dir.path());
    // A fold is under way and cannot commit until the blocker lets go.
    let folded = store.fold();
    let v2 = next(&v1, |t| {
        t.status = Status::Pending;
        t.tags = vec!["fire".into()];
    });
    store
        .update(write(&v2, EventKind::Updated, None))
        .await
        .unwrap();
    let read = async {
        let open = TicketFilter {
            status: Some(Status::Open),
            ..filter()
        };
        let fire = TicketFilter {
            tag: Some("fire".into()),
            ..filter()
        };
        (
            store.list(open).await.unwrap(),
            store.list(fire).await.unwrap(),
            store.events(v1.id, 0, 10).await.unwrap(),
        )
    };
    let (open, fire, history) = tokio::time::timeout(NO_FOLD, read)
        .await
        .expect("lists and history do not wait for the fold");
    assert_eq!(open, vec![other.clone()], "v1 left the open tickets");
    let mut both = vec![v2.clone(), other.clone()];
    both.sort_by_key(|t| t.id);
    assert_eq!(fire, both, "v2 joined the tagged tickets");
    let versions: Vec<u64> = history.iter().map(|(_, e)| e.version).collect();
    assert_eq!(versions, vec![1, 2]);
    blocker.release();
    folded.await.unwrap();
    // Folded, the tables give the same answers and the same history cursors.
    assert_eq!(store.events(v1.id, 0, 10).await.unwrap(), history);
    store.close().await;
}

#[actix_rt::test]
async fn a_history_cursor_given_before_a_fold_holds_after_it() {
    use crate::domain::chat::{ChatRole, TranscriptLine};
    use crate::domain::ids::SessionId;
    use crate::store::{ChatTicketRecord, OutboxRecord};

    let dir = tempfile::tempdir().unwrap();
    let (store, v1) = with_one_ticket(dir.path()).await;
    // A journal row with no history event, so journal and history positions differ from here on.
    let record = OutboxRecord::ChatTicket(ChatTicketRecord {
        session_id: SessionId::new(),
        ticket_id: v1.id,
        subject: "Refund".into(),
        description: String::new(),
        priority: Priority::Normal,
        requester: "ann@example.com".into(),
        transcript: vec![TranscriptLine {
            role: ChatRole::Customer,
            text: "help".into(),
            at: now(),
        }],
        request_id: None,
    });
    store.enqueue(record).await.unwrap();
    let mut t = v1.clone();
    for _ in 0..3 {
        t = next(&t, |_| {});
        store
            .update(write(&t, EventKind::Updated, None))
            .await
            .unwrap();
    }
    let first = store.events(v1.id, 0, 2).await.unwrap();
    let cursor = first.last().unwrap().0;
    store.fold().await.unwrap();
    let rest = store.events(v1.id, cursor, 10).await.unwrap();
    let versions: Vec<u64> = first.iter().chain(&rest).map(|(_, e)| e.version).collect();
    assert_eq!(versions, vec![1, 2, 3, 4], "no event lost or repeated");
    store.close().await;
}
