//! Tickets and the Django outbox on a real PostgreSQL (`storage.postgres_url`), started for each
//! test by `scripts/postgres.sh`: the store's contract (create, conditional update, list, history,
//! import, outbox leases shared by several nodes).

mod support;

use std::time::Duration;

use serde_json::json;
use support::postgres::Postgres;
use switchboard::domain::chat::{ChatRole, TranscriptLine};
use switchboard::domain::ids::{EventId, SessionId, TicketId};
use switchboard::domain::principal::Principal;
use switchboard::domain::status::Status;
use switchboard::domain::ticket::{Comment, EventKind, Priority, Source, Ticket, TicketEvent};
use switchboard::store::pg_tickets::{PgStore, PgStoreOptions};
use switchboard::store::{
    now, ChatTicketRecord, Failure, Outbox, OutboxRecord, Rejection, StoreError, TicketFilter,
    TicketStore, TicketWrite,
};

fn open(pg: &Postgres, node: &str, lease: Duration) -> PgStore {
    PgStore::open(PgStoreOptions {
        url: pg.url.clone(),
        pool_size: 4,
        connect_timeout: Duration::from_secs(10),
        node: node.into(),
        lease,
        poll: Duration::from_millis(100),
    })
    .expect("store on PostgreSQL")
}

fn ticket(tags: &[&str]) -> Ticket {
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

fn write(t: &Ticket, kind: EventKind, comment: Option<Comment>) -> TicketWrite {
    TicketWrite {
        ticket: t.clone(),
        event: TicketEvent {
            event_id: EventId::new(),
            ticket_id: t.id,
            kind,
            actor: Principal::ApiKey {
                key: "helpdesk".into(),
                on_behalf_of: Some("ada".into()),
            },
            at: t.updated_at,
            version: t.version,
            changes: json!({"v": t.version}),
        },
        comment,
        request_id: None,
    }
}

fn next(t: &Ticket, change: impl FnOnce(&mut Ticket)) -> Ticket {
    let mut t = t.clone();
    change(&mut t);
    t.version += 1;
    t.updated_at += chrono::Duration::milliseconds(1);
    t
}

fn filter() -> TicketFilter {
    TicketFilter {
        limit: 100,
        ..TicketFilter::default()
    }
}

fn chat_record(ticket: &Ticket) -> OutboxRecord {
    OutboxRecord::ChatTicket(ChatTicketRecord {
        session_id: SessionId::new(),
        ticket_id: ticket.id,
        subject: ticket.subject.clone(),
        description: String::new(),
        priority: ticket.priority,
        requester: ticket.requester.clone(),
        transcript: vec![TranscriptLine {
            role: ChatRole::Customer,
            text: "help".into(),
            at: now(),
        }],
        request_id: None,
    })
}

#[actix_rt::test]
async fn the_ticket_store_on_postgres_keeps_tickets_history_and_refuses_stale_writes() {
    let pg = Postgres::start();
    // Two nodes opening one new database at once: the schema is made once.
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| open(&pg, "node-a", Duration::from_secs(30)));
        let b = s.spawn(|| open(&pg, "node-b", Duration::from_secs(30)));
        (a.join().unwrap(), b.join().unwrap())
    });

    let v1 = ticket(&["printer", "fire"]);
    a.create(write(&v1, EventKind::Created, None))
        .await
        .unwrap();
    assert!(matches!(
        b.create(write(&v1, EventKind::Created, None)).await,
        Err(StoreError::AlreadyExists(id)) if id == v1.id
    ));
    assert_eq!(
        b.load(v1.id).await.unwrap().as_ref(),
        Some(&v1),
        "read on the other node"
    );

    let v2 = next(&v1, |t| {
        t.status = Status::InProgress;
        t.assignee = Some("bob".into());
        t.tags = vec!["printer".into()];
    });
    b.update(write(&v2, EventKind::Updated, None))
        .await
        .unwrap();
    // Node A still thinks the ticket is at version 1: its write of version 2 is refused.
    let stale = next(&v1, |t| t.subject = "stale".into());
    assert!(matches!(
        a.update(write(&stale, EventKind::Updated, None)).await,
        Err(StoreError::VersionConflict { expected: 1, .. })
    ));
    let comment = Comment {
        id: uuid::Uuid::now_v7(),
        ticket_id: v1.id,
        author: Principal::Anonymous,
        body: "on it".into(),
        created_at: now(),
    };
    let v3 = next(&v2, |_| {});
    a.update(write(&v3, EventKind::Commented, Some(comment)))
        .await
        .unwrap();
    assert_eq!(a.load(v1.id).await.unwrap(), Some(v3.clone()));

    // Lists: every filter, and the cursor.
    let other = ticket(&["fire"]);
    b.create(write(&other, EventKind::Created, None))
        .await
        .unwrap();
    let ids = |ts: Vec<Ticket>| ts.into_iter().map(|t| t.id).collect::<Vec<_>>();
    let mut both = vec![v1.id, other.id];
    both.sort();
    assert_eq!(ids(a.list(filter()).await.unwrap()), both);
    let by = |f: TicketFilter| async { ids(b.list(f).await.unwrap()) };
    assert_eq!(
        by(TicketFilter {
            status: Some(Status::InProgress),
            ..filter()
        })
        .await,
        vec![v1.id]
    );
    assert_eq!(
        by(TicketFilter {
            assignee: Some("bob".into()),
            ..filter()
        })
        .await,
        vec![v1.id]
    );
    assert_eq!(
        by(TicketFilter {
            tag: Some("fire".into()),
            ..filter()
        })
        .await,
        vec![other.id],
        "tags follow the ticket's changes"
    );
    assert_eq!(
        by(TicketFilter {
            priority: Some(Priority::Urgent),
            ..filter()
        })
        .await,
        Vec::<TicketId>::new()
    );
    assert_eq!(
        by(TicketFilter {
            after: Some(both[0]),
            limit: 1,
            ..filter()
        })
        .await,
        vec![both[1]]
    );

    // History: every accepted write, in order, with its actor; the cursor pages on.
    let events = b.events(v1.id, 0, 10).await.unwrap();
    let kinds: Vec<_> = events.iter().map(|(_, e)| (e.kind, e.version)).collect();
    assert_eq!(
        kinds,
        vec![
            (EventKind::Created, 1),
            (EventKind::Updated, 2),
            (EventKind::Commented, 3)
        ]
    );
    assert_eq!(events[0].1.actor.acting_for(), Some("ada"));
    let rest = a.events(v1.id, events[0].0, 10).await.unwrap();
    assert_eq!(rest.len(), 2);

    // An import is stored once, with no outbox entry; a second import leaves the first.
    let imported = ticket(&[]);
    let import = |t: &Ticket| {
        let w = write(t, EventKind::Imported, None);
        (w.ticket, w.event)
    };
    let (t, e) = import(&imported);
    a.import(t, e).await.unwrap();
    let changed = next(&imported, |t| t.subject = "second import".into());
    let (t, e) = import(&changed);
    b.import(t, e).await.unwrap();
    assert_eq!(a.load(imported.id).await.unwrap(), Some(imported.clone()));

    // The outbox holds the four syncs (two creates, an update, a comment) and nothing else.
    let pending = b.pending(100).await.unwrap();
    assert_eq!(pending.len(), 4, "{pending:?}");
    assert!(pending
        .iter()
        .all(|p| p.record.ticket_id != Some(imported.id)));
    a.close().await;
    b.close().await;
}

#[actix_rt::test]
async fn outbox_entries_are_leased_to_one_node_at_a_time_in_each_tickets_order() {
    let pg = Postgres::start();
    let a = open(&pg, "node-a", Duration::from_secs(30));
    let b = open(&pg, "node-b", Duration::from_secs(30));

    // Ticket one: created with its chat record in one transaction; ticket two: created.
    let one = ticket(&[]);
    let before = a.signal().total();
    a.create_with(write(&one, EventKind::Created, None), chat_record(&one))
        .await
        .unwrap();
    assert_eq!(
        a.signal().total(),
        before + 2,
        "a local write wakes the local bridge"
    );
    let two = ticket(&[]);
    b.create(write(&two, EventKind::Created, None))
        .await
        .unwrap();
    assert_eq!(a.stats().await.unwrap().depth, 3);

    // A leases the oldest two (ticket one's); B gets only what A does not hold.
    let leased_a = a.peek(2).await.unwrap();
    assert_eq!(leased_a.len(), 2);
    assert!(leased_a
        .iter()
        .all(|e| e.record.ticket_id() == Some(one.id)));
    assert!(leased_a[0].seq < leased_a[1].seq, "in outbox order");
    // A newer entry of ticket one, while A still holds the older ones: B must not take it.
    let one_v2 = next(&one, |t| t.subject = "changed".into());
    b.update(write(&one_v2, EventKind::Updated, None))
        .await
        .unwrap();
    let leased_b = b.peek(10).await.unwrap();
    assert_eq!(
        leased_b
            .iter()
            .map(|e| e.record.ticket_id())
            .collect::<Vec<_>>(),
        vec![Some(two.id)],
        "ticket one stays with the node holding its older entries"
    );
    // A's next peek renews what it holds and takes the newer entry of its ticket.
    let again = a.peek(10).await.unwrap();
    assert_eq!(again.len(), 3, "{again:?}");

    // B cannot ack what A holds; A can.
    let seqs_a: Vec<i64> = again.iter().map(|e| e.seq).collect();
    b.ack(seqs_a.clone()).await.unwrap();
    assert_eq!(b.stats().await.unwrap().depth, 4);
    a.record_failures(vec![Failure {
        seq: seqs_a[0],
        error: "boom".into(),
        isolated: true,
    }])
    .await
    .unwrap();
    let failed = a.pending(10).await.unwrap();
    assert_eq!(
        (
            failed[0].attempts,
            failed[0].isolated_failures,
            failed[0].last_error.as_deref()
        ),
        (1, 1, Some("boom"))
    );
    a.dead_letter(vec![Rejection {
        seq: seqs_a[0],
        status_code: Some(422),
        error: "refused".into(),
    }])
    .await
    .unwrap();
    a.ack(seqs_a[1..].to_vec()).await.unwrap();
    b.ack(leased_b.iter().map(|e| e.seq).collect())
        .await
        .unwrap();
    let stats = a.stats().await.unwrap();
    assert_eq!((stats.depth, stats.dead_letters), (0, 1));

    // A dead letter re-queued is offered again.
    let dead = b.dead_letters(10).await.unwrap();
    assert_eq!(dead[0].status_code, Some(422));
    assert!(b.retry_dead_letter(dead[0].id).await.unwrap());
    assert!(!b.retry_dead_letter(dead[0].id).await.unwrap());
    let retried = b.peek(10).await.unwrap();
    assert_eq!(retried.len(), 1);
    assert_eq!(retried[0].record, dead[0].record);
    // An operator moves it to the dead letters, whoever holds it.
    assert!(a
        .dead_letter_entry(retried[0].seq, "operator".into())
        .await
        .unwrap());
    assert!(!a
        .dead_letter_entry(retried[0].seq, "again".into())
        .await
        .unwrap());
    a.close().await;
    b.close().await;
}

#[actix_rt::test]
async fn an_entry_leased_by_a_node_that_died_goes_to_another_once_the_lease_expires() {
    let pg = Postgres::start();
    let dying = open(&pg, "node-dying", Duration::from_millis(300));
    let other = open(&pg, "node-other", Duration::from_secs(30));
    let t = ticket(&[]);
    dying
        .create(write(&t, EventKind::Created, None))
        .await
        .unwrap();
    assert_eq!(dying.peek(10).await.unwrap().len(), 1);
    // The node stops answering without giving its lease back (dropped, never closed).
    drop(dying);
    assert!(other.peek(10).await.unwrap().is_empty(), "still leased");
    let deadline = tokio::time::Instant::now() + support::WAIT;
    let taken = loop {
        // Waiting on the lease's clock in the database: a peek after it expired takes the entry.
        let got = other.peek(10).await.unwrap();
        if !got.is_empty() {
            break got;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "lease never expired"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(taken[0].record.ticket_id(), Some(t.id));
    other.ack(vec![taken[0].seq]).await.unwrap();
    assert_eq!(other.stats().await.unwrap().depth, 0);

    // Closing gives leases back at once.
    let t2 = ticket(&[]);
    other
        .create(write(&t2, EventKind::Created, None))
        .await
        .unwrap();
    assert_eq!(other.peek(10).await.unwrap().len(), 1);
    other.close().await;
    let third = open(&pg, "node-third", Duration::from_secs(30));
    assert_eq!(third.peek(10).await.unwrap().len(), 1, "released on close");
}
