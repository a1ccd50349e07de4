//! Tickets and the Django outbox on a real PostgreSQL (`storage.postgres_url`), started for each
//! test by `scripts/postgres.sh`: the store's contract (create, conditional update, list, history,
//! import, outbox leases shared by several nodes), then real server processes sharing nothing but
//! the database: a ticket written on one node is read and patched on another, of two concurrent
//! patches naming the same version exactly one wins, both nodes' bridges deliver each event to
//! Django once, and a node that loses PostgreSQL under load is not ready meanwhile, recovers by
//! itself and loses no acknowledged write.

mod support;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use support::binary::Server;
use support::fake_django::FakeDjango;
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
    // At least its two entries (the poll may have woken it as well meanwhile).
    assert!(
        a.signal().total() >= before + 2,
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

/// Two server processes on one database, each with its own data dir and its bridge on `django`.
fn two_nodes(pg: &Postgres, django: &FakeDjango) -> (Server, Server, [tempfile::TempDir; 2]) {
    let env = [
        ("SWITCHBOARD__STORAGE__POSTGRES_URL", pg.url.as_str()),
        ("SWITCHBOARD__STORAGE__OUTBOX_POLL_MS", "100"),
        ("SWITCHBOARD__BRIDGE__FLUSH_MS", "50"),
    ];
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let a = Server::spawn(dirs[0].path(), &django.base_url, &[], &env);
    let b = Server::spawn(dirs[1].path(), &django.base_url, &[], &env);
    (a, b, dirs)
}

fn url(node: &Server, path: &str) -> String {
    format!("http://{}/api/v1{path}", node.api)
}

async fn create_on(node: &Server, subject: &str) -> Value {
    let resp = support::post(
        &url(node, "/tickets"),
        &json!({"subject": subject, "requester": "alice@example.com"}),
    )
    .await;
    assert_eq!(resp.status, 201, "create: {}", resp.text);
    resp.body
}

#[actix_rt::test]
async fn a_ticket_written_on_one_node_is_read_fresh_and_patched_once_on_another() {
    let pg = Postgres::start();
    let django = FakeDjango::start();
    let (a, b, _dirs) = two_nodes(&pg, &django);

    let created = create_on(&a, "Cannot log in").await;
    let id = support::id_of(&created);
    let path = format!("/tickets/{id}");
    let read = support::get(&url(&b, &path)).await;
    assert_eq!((read.status, &read.body), (200, &created), "read on node B");

    // Both nodes hold the ticket in memory; B changes it; A reads the change, not its copy.
    assert_eq!(support::get(&url(&a, &path)).await.status, 200);
    let patched = support::patch(&url(&b, &path), &json!({"assignee": "bob"}), Some("\"1\"")).await;
    assert_eq!(patched.status, 200, "{}", patched.text);
    let fresh = support::get(&url(&a, &path)).await;
    assert_eq!(
        (fresh.body["version"].as_u64(), &fresh.body["assignee"]),
        (Some(2), &json!("bob"))
    );
    assert_eq!(fresh.header("etag").as_deref(), Some("\"2\""));
    // A patch on A, whose copy in memory was version 1, applies to version 2.
    let on_a = support::patch(&url(&a, &path), &json!({"priority": "high"}), None).await;
    assert_eq!(on_a.status, 200, "{}", on_a.text);
    assert_eq!(on_a.body["version"], 3);
    assert_eq!(on_a.body["assignee"], "bob", "B's change kept");
    // If-Match naming the version B made, sent to A: judged against the stored version.
    let if_match = support::patch(
        &url(&b, &path),
        &json!({"status": "pending"}),
        Some("\"3\""),
    )
    .await;
    assert_eq!(if_match.status, 200, "{}", if_match.text);

    // Two patches naming the same version at once on A and B: exactly one wins.
    for round in 0..5 {
        let t = create_on(if round % 2 == 0 { &a } else { &b }, "race").await;
        let path = format!("/tickets/{}", support::id_of(&t));
        // Both nodes activate it first, so both hold it in memory.
        assert_eq!(support::get(&url(&a, &path)).await.status, 200);
        assert_eq!(support::get(&url(&b, &path)).await.status, 200);
        let (url_a, url_b) = (url(&a, &path), url(&b, &path));
        let (body_a, body_b) = (json!({"assignee": "from-a"}), json!({"assignee": "from-b"}));
        let (ra, rb) = futures_util::join!(
            support::patch(&url_a, &body_a, Some("\"1\"")),
            support::patch(&url_b, &body_b, Some("\"1\"")),
        );
        let mut statuses = vec![ra.status, rb.status];
        statuses.sort();
        assert_eq!(
            statuses,
            vec![200, 412],
            "round {round}: {} / {}",
            ra.text,
            rb.text
        );
        let winner = if ra.status == 200 { "from-a" } else { "from-b" };
        for node in [&a, &b] {
            let now = support::get(&url(node, &path)).await.body;
            assert_eq!(
                (now["version"].as_u64(), now["assignee"].as_str()),
                (Some(2), Some(winner))
            );
        }
        let events = support::get(&url(&b, &format!("{path}/events"))).await.body;
        assert_eq!(
            events["items"].as_array().map(Vec::len),
            Some(2),
            "{events}"
        );
    }
}

#[actix_rt::test]
async fn both_nodes_bridges_deliver_each_event_to_django_once() {
    let pg = Postgres::start();
    let mut django = FakeDjango::start();
    let (a, b, _dirs) = two_nodes(&pg, &django);

    // Writes on both nodes, several to the same tickets from both sides.
    let mut want: BTreeMap<String, u64> = BTreeMap::new();
    for i in 0..10 {
        let (first, second) = if i % 2 == 0 { (&a, &b) } else { (&b, &a) };
        let t = create_on(first, &format!("ticket {i}")).await;
        let id = support::id_of(&t);
        let path = format!("/tickets/{id}");
        for (n, node) in [second, first, second].into_iter().enumerate() {
            let resp = support::patch(
                &url(node, &path),
                &json!({"description": format!("edit {n}")}),
                None,
            )
            .await;
            assert_eq!(resp.status, 200, "{}", resp.text);
        }
        want.insert(id, 4);
    }
    let want: Vec<(String, u64)> = want.into_iter().collect();
    tokio::time::timeout(support::WAIT, django.wait_delivered(&want))
        .await
        .expect("every ticket delivered at its last version");

    // Every event of every ticket's history reached Django exactly once.
    let mut seen: HashMap<String, usize> = HashMap::new();
    for e in django.delivered() {
        for id in e["coalesced_event_ids"].as_array().unwrap() {
            *seen.entry(id.as_str().unwrap().to_string()).or_default() += 1;
        }
    }
    let mut expected = 0;
    for (id, _) in &want {
        let events = support::get(&url(&a, &format!("/tickets/{id}/events")))
            .await
            .body;
        for e in events["items"].as_array().unwrap() {
            let event_id = e["event_id"].as_str().unwrap();
            assert_eq!(
                seen.get(event_id),
                Some(&1),
                "event {event_id} of ticket {id}"
            );
            expected += 1;
        }
    }
    assert_eq!(expected, 40);
    assert_eq!(seen.len(), expected, "nothing else delivered");
    // And per ticket, in version order.
    let mut last: HashMap<String, u64> = HashMap::new();
    for e in django.delivered() {
        let id = e["ticket_id"].as_str().unwrap().to_string();
        let v = e["version"].as_u64().unwrap();
        let before = last.insert(id.clone(), v).unwrap_or(0);
        assert!(
            v > before,
            "ticket {id} delivered version {v} after {before}"
        );
    }
    // The bridges leased what they sent (which node took how many is the race of their wakes).
    let mut leased = 0.0;
    for node in [&a, &b] {
        let metrics = support::get(&format!("http://{}/metrics", node.api))
            .await
            .text;
        leased += support::metric(&metrics, "switchboard_outbox_leased_total", &[]).unwrap_or(0.0);
    }
    assert!(leased > 0.0, "{leased}");
    let depth =
        support::get(&format!("http://{}/readyz", b.api)).await.body["outbox"]["depth"].clone();
    assert_eq!(depth, 0);
}

async fn readyz(node: &Server) -> (u16, Value) {
    let resp = support::get(&format!("http://{}/readyz", node.api)).await;
    (resp.status, resp.body)
}

#[actix_rt::test]
async fn a_node_that_loses_postgres_under_load_recovers_by_itself_losing_no_acknowledged_write() {
    let pg = Postgres::start();
    let django = FakeDjango::start();
    let env = [("SWITCHBOARD__STORAGE__POSTGRES_URL", pg.url.as_str())];
    let dir = tempfile::tempdir().unwrap();
    let node = Server::spawn(dir.path(), &django.base_url, &[], &env);
    support::eventually("the node is ready", || async {
        let (status, body) = readyz(&node).await;
        status == 200 && body["store"] == "ok"
    })
    .await;

    // Load: creates and patches in a loop; what was acknowledged is remembered.
    let acked: Arc<Mutex<HashMap<String, u64>>> = Arc::default();
    let after_restart = Arc::new(AtomicBool::new(false));
    let acked_after = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (acked, stop) = (acked.clone(), stop.clone());
        let (after_restart, acked_after) = (after_restart.clone(), acked_after.clone());
        let base = url(&node, "/tickets");
        actix_rt::spawn(async move {
            let mut mine: Vec<String> = Vec::new();
            let mut i = 0u64;
            while !stop.load(Ordering::SeqCst) {
                i += 1;
                let resp = if i % 3 == 0 || mine.is_empty() {
                    support::post(
                        &base,
                        &json!({"subject": format!("load {i}"), "requester": "l@example.com"}),
                    )
                    .await
                } else {
                    let id = &mine[(i as usize) % mine.len()];
                    support::patch(
                        &format!("{base}/{id}"),
                        &json!({"description": format!("edit {i}")}),
                        None,
                    )
                    .await
                };
                if resp.status == 200 || resp.status == 201 {
                    let id = support::id_of(&resp.body);
                    let v = resp.body["version"].as_u64().unwrap();
                    if resp.status == 201 {
                        mine.push(id.clone());
                    }
                    let mut acked = acked.lock().unwrap();
                    let e = acked.entry(id).or_default();
                    *e = (*e).max(v);
                    if after_restart.load(Ordering::SeqCst) {
                        acked_after.store(true, Ordering::SeqCst);
                    }
                }
            }
        })
    };
    support::eventually("writes acknowledged", || async {
        acked.lock().unwrap().len() >= 5
    })
    .await;

    pg.stop();
    support::eventually("the node reports its store gone", || async {
        let (status, body) = readyz(&node).await;
        status == 503 && body["store"] == "unavailable"
    })
    .await;
    pg.start_again();
    after_restart.store(true, Ordering::SeqCst);
    support::eventually("the node is ready again by itself", || async {
        let (status, body) = readyz(&node).await;
        status == 200 && body["store"] == "ok"
    })
    .await;
    support::eventually("writes acknowledged again", || async {
        acked_after.load(Ordering::SeqCst)
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    load.await.unwrap();

    // Every acknowledged write is there, read back by a node that shares only the database.
    let dir2 = tempfile::tempdir().unwrap();
    let fresh = Server::spawn(dir2.path(), &django.base_url, &[], &env);
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= 5);
    for (id, version) in acked {
        let resp = support::get(&url(&fresh, &format!("/tickets/{id}"))).await;
        assert_eq!(resp.status, 200, "ticket {id}: {}", resp.text);
        let stored = resp.body["version"].as_u64().unwrap();
        assert!(
            stored >= version,
            "ticket {id} acknowledged at {version}, stored at {stored}"
        );
    }
}
