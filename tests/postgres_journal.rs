//! The chat journal on a real PostgreSQL (`storage.postgres_url`), started for each test by
//! `scripts/postgres.sh` from Debian's `postgresql` package: the journal's contract against the
//! database, its schema migrated once however many processes open it at once, a chat carried
//! from one process to another that shares nothing with it but the database (its own data dir), with
//! every frame at its seq, and a node that loses PostgreSQL: not ready meanwhile, ready again by
//! itself once it is back, with the message sent during the outage acknowledged then and kept.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{json, Value};
use support::binary::Server;
use support::fake_django::FakeDjango;
use support::postgres::Postgres;
use support::ws::ChatClient;
use switchboard::domain::ids::SessionId;
use switchboard::store::chat_journal::{ChatJournal, JournalFrame, SessionRecord};
use switchboard::store::pg_journal::PgChatJournal;

fn open(pg: &Postgres) -> PgChatJournal {
    PgChatJournal::open(&pg.url, 4, Duration::from_secs(10), None).expect("journal on PostgreSQL")
}

fn frame(seq: u64) -> JournalFrame {
    JournalFrame {
        seq,
        at: chrono::Utc::now(),
        body: format!(r#"{{"type":"message","seq":{seq},"text":"héllo {seq}"}}"#),
    }
}

fn record(id: SessionId, last_seq: u64) -> SessionRecord {
    SessionRecord {
        session_id: id,
        resume_token_hash: "hash".into(),
        state: r#"{"owner":"ai"}"#.into(),
        last_seq,
        last_activity_at: chrono::Utc::now(),
        detached_at: None,
        closed: false,
    }
}

#[actix_rt::test]
async fn the_journal_on_postgres_keeps_frames_records_and_their_life_cycle() {
    let pg = Postgres::start();
    // Three processes opening one new database at once: the schema is made once.
    let opened: Vec<PgChatJournal> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..3).map(|_| s.spawn(|| open(&pg))).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let journal = &opened[0];

    let a = SessionId::new();
    let b = SessionId::new();
    journal
        .append(a, (1..=3).map(frame).collect(), Some(record(a, 3)))
        .await
        .unwrap();
    journal
        .append(a, vec![frame(4)], Some(record(a, 4)))
        .await
        .unwrap();
    journal
        .append(b, vec![frame(1)], Some(record(b, 1)))
        .await
        .unwrap();

    // Read back from another process's pool.
    let other = &opened[2];
    let got = other.record(a).await.unwrap().expect("record");
    assert_eq!((got.last_seq, got.state.as_str()), (4, r#"{"owner":"ai"}"#));
    let frames = other.frames(a, 1, 10).await.unwrap();
    assert_eq!(
        frames.iter().map(|f| f.seq).collect::<Vec<_>>(),
        vec![2, 3, 4]
    );
    assert_eq!(
        frames[2].body,
        frame(4).body,
        "bodies exactly, UTF-8 included"
    );
    let (rec, newest) = other.session(a, 2).await.unwrap().expect("session");
    assert_eq!(rec.session_id, a);
    assert_eq!(newest.iter().map(|f| f.seq).collect::<Vec<_>>(), vec![3, 4]);
    assert!(other.session(SessionId::new(), 2).await.unwrap().is_none());

    // An append repeated after a failure it did not see (the same seq) changes nothing twice.
    journal
        .append(a, vec![frame(4)], Some(record(a, 4)))
        .await
        .unwrap();
    assert_eq!(journal.frames(a, 0, 10).await.unwrap().len(), 4);

    // Life cycle: open sessions, detached at a restart, expired, closed, pruned.
    let open_ids: Vec<_> = journal
        .open_sessions()
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.session_id)
        .collect();
    assert!(open_ids.contains(&a) && open_ids.contains(&b));
    let restart = chrono::Utc::now();
    journal.mark_detached(restart).await.unwrap();
    let detached = journal.record(b).await.unwrap().unwrap().detached_at;
    assert!(detached.is_some_and(|at| (at - restart).num_milliseconds().abs() < 1));
    let later = restart + chrono::Duration::seconds(1);
    let mut expired = journal
        .expired(later, restart - chrono::Duration::hours(1), 100)
        .await
        .unwrap();
    expired.sort();
    let mut both = vec![a, b];
    both.sort();
    assert_eq!(expired, both, "detached before the cutoff");
    journal.close(vec![b]).await.unwrap();
    assert!(journal.record(b).await.unwrap().unwrap().closed);
    assert!(!journal
        .open_sessions()
        .await
        .unwrap()
        .iter()
        .any(|r| r.session_id == b));
    let pruned = journal
        .prune(chrono::Utc::now() + chrono::Duration::seconds(1))
        .await
        .unwrap();
    assert_eq!(pruned, 2);
    assert!(journal.record(a).await.unwrap().is_none());
    assert!(journal.frames(a, 0, 10).await.unwrap().is_empty());
}

#[actix_rt::test]
async fn a_journal_that_cannot_reach_postgres_fails_to_open_with_the_reason() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("postgres://switchboard@127.0.0.1:{port}/postgres");
    let err = PgChatJournal::open(&url, 1, Duration::from_millis(300), None)
        .err()
        .expect("no server there");
    assert!(err.to_string().contains("PostgreSQL"), "{err}");
}

/// Every numbered frame of a customer's session, by seq.
async fn numbered_until(c: &mut ChatClient, seen: &mut BTreeMap<u64, Value>, kind: &str) -> Value {
    loop {
        let f = c.next().await.expect("open");
        if let Some(seq) = f["seq"].as_u64() {
            if f["type"] != "message.ack" {
                seen.insert(seq, f.clone());
            }
        }
        if f["type"] == kind {
            return f;
        }
    }
}

#[actix_rt::test]
async fn a_chat_goes_on_in_another_process_that_shares_only_the_database() {
    let pg = Postgres::start();
    let django = FakeDjango::start();
    let env = [("SWITCHBOARD__STORAGE__POSTGRES_URL", pg.url.as_str())];
    let first_dir = tempfile::tempdir().unwrap();
    let mut first = Server::spawn(first_dir.path(), &django.base_url, &[], &env);

    let (mut c, started) = ChatClient::start(first.chat).await;
    let mut seen = BTreeMap::new();
    for i in 0..3 {
        c.send(json!({"type": "message.send", "client_id": format!("m{i}"), "text": format!("question {i}")}))
            .await;
        numbered_until(&mut c, &mut seen, "message.ack").await;
        loop {
            let f = numbered_until(&mut c, &mut seen, "message").await;
            if f["from"] == "ai" {
                break;
            }
        }
    }
    first.signal("-KILL");
    first.wait_exit();

    // Another data dir: nothing of the first process but the database.
    let second_dir = tempfile::tempdir().unwrap();
    let second = Server::spawn(second_dir.path(), &django.base_url, &[], &env);
    let mut back = ChatClient::resume(second.chat, &started, 0).await;
    let resumed = back.expect("session.resumed").await;
    let newest = resumed["seq"].as_u64().unwrap();
    assert!(newest >= *seen.keys().max().unwrap());
    for seq in 1..=newest {
        let f = loop {
            let f = back.next().await.expect("replayed frame");
            if f["seq"].is_u64() {
                break f;
            }
        };
        assert_eq!(f["seq"], seq, "gap-free, in order");
        if let Some(before) = seen.get(&seq) {
            assert_eq!(
                &f, before,
                "frame {seq} exactly as the first process sent it"
            );
        }
    }
    back.send(json!({"type": "message.send", "client_id": "after", "text": "still me"}))
        .await;
    let ack = back.expect("message.ack").await;
    assert_eq!(ack["seq"], newest + 1, "numbering goes on");
}

async fn ready(server: &Server) -> (u16, Value) {
    let resp = support::get(&format!("http://{}/readyz", server.api)).await;
    (
        resp.status,
        serde_json::from_str(&resp.text).unwrap_or(Value::Null),
    )
}

#[actix_rt::test]
async fn a_node_without_postgres_is_not_ready_and_recovers_by_itself_losing_nothing() {
    let pg = Postgres::start();
    let django = FakeDjango::start();
    let env = [("SWITCHBOARD__STORAGE__POSTGRES_URL", pg.url.as_str())];
    let dir = tempfile::tempdir().unwrap();
    let server = Server::spawn(dir.path(), &django.base_url, &[], &env);
    support::eventually("the node is ready", || async {
        let (status, body) = ready(&server).await;
        status == 200 && body["chat"]["journal"] == "up"
    })
    .await;
    let (mut c, started) = ChatClient::start(server.chat).await;
    let mut seen = BTreeMap::new();
    c.send(json!({"type": "message.send", "client_id": "before", "text": "one"}))
        .await;
    let first = numbered_until(&mut c, &mut seen, "message.ack").await;

    pg.stop();
    support::eventually("the node reports its journal gone", || async {
        let (status, body) = ready(&server).await;
        status == 503 && body["chat"]["journal"] == "unavailable"
    })
    .await;
    // Sent while the journal is gone: it cannot be acknowledged yet, and is not lost.
    c.send(json!({"type": "message.send", "client_id": "during", "text": "two"}))
        .await;

    pg.start_again();
    support::eventually("the node is ready again by itself", || async {
        let (status, body) = ready(&server).await;
        status == 200 && body["chat"]["journal"] == "up"
    })
    .await;
    let ack = loop {
        let f = numbered_until(&mut c, &mut seen, "message.ack").await;
        if f["client_id"] == "during" {
            break f;
        }
    };
    let seq = ack["seq"].as_u64().unwrap();
    assert!(seq > first["seq"].as_u64().unwrap());

    // In the journal: a fresh connection replays it at its seq.
    let mut back = ChatClient::resume(server.chat, &started, 0).await;
    back.expect("session.resumed").await;
    let replayed = loop {
        let f = back.next().await.expect("replayed frame");
        if f["seq"] == seq {
            break f;
        }
    };
    assert_eq!(
        (&replayed["from"], &replayed["text"]),
        (&json!("customer"), &json!("two"))
    );
}
