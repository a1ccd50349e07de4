//! Conversations outlive the process: the real binary is killed (`kill -9`) or stopped (SIGTERM)
//! under live chat and agent traffic and started again on the same data directory, and every
//! customer, agent and queued chat carries on from the chat journal.

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde_json::{json, Value};
use support::binary::{agent_token, Server};
use support::fake_django::{Behavior, ChatEndpoint, FakeDjango};
use support::ws::{ChatClient, Ended};

async fn agent_connect(chat: SocketAddr, sub: &str) -> ChatClient {
    let bearer = format!("Bearer {}", agent_token(sub));
    ChatClient::connect_to(chat, "/ws/agent", &[("Authorization", &bearer)])
        .await
        .expect("agent accepted")
}

/// What one customer saw: every numbered frame by seq, and the seq each of their messages was
/// acknowledged at.
#[derive(Default)]
struct Seen {
    numbered: BTreeMap<u64, Value>,
    acked: BTreeMap<String, u64>,
}

impl Seen {
    fn take(&mut self, f: &Value) {
        if f["type"] == "message.ack" {
            self.acked.insert(
                f["client_id"].as_str().unwrap().to_string(),
                f["seq"].as_u64().unwrap(),
            );
        } else if let Some(seq) = f["seq"].as_u64() {
            if f["type"] != "session.started" && f["type"] != "session.resumed" {
                self.numbered.insert(seq, f.clone());
            }
        }
    }

    fn newest(&self) -> u64 {
        let a = self.numbered.keys().next_back().copied().unwrap_or(0);
        let b = self.acked.values().max().copied().unwrap_or(0);
        a.max(b)
    }
}

/// Reads frames until one of `kind`, noting everything numbered on the way.
async fn until(c: &mut ChatClient, seen: &mut Seen, kind: &str) -> Value {
    loop {
        let f = c
            .next()
            .await
            .unwrap_or_else(|e| panic!("connection ended ({e:?}) while waiting for `{kind}`"));
        seen.take(&f);
        if f["type"] == kind {
            return f;
        }
    }
}

/// A customer message, its ack and the AI's answer.
async fn chat(c: &mut ChatClient, seen: &mut Seen, client_id: &str, text: &str) {
    c.send(json!({"type": "message.send", "client_id": client_id, "text": text}))
        .await;
    until(c, seen, "message.ack").await;
    loop {
        let f = until(c, seen, "message").await;
        if f["from"] == "ai" {
            return;
        }
    }
}

/// After a restart: resumes from seq 0 and checks the replay is exactly what was seen (every
/// numbered frame at its seq, every acknowledged message at its seq), with no gap and no
/// duplicate. Returns the connection and the newest seq.
async fn resume_and_check(chat: SocketAddr, started: &Value, before: &Seen) -> (ChatClient, u64) {
    let mut c = ChatClient::resume(chat, started, 0).await;
    let resumed = c.expect("session.resumed").await;
    let newest = resumed["seq"].as_u64().unwrap();
    assert!(
        newest >= before.newest(),
        "{resumed} after {}",
        before.newest()
    );
    let mut replay = BTreeMap::new();
    for expected_seq in 1..=newest {
        let f = loop {
            let f = c.next().await.expect("replayed frame");
            if f["seq"].is_u64() {
                break f;
            }
        };
        assert_eq!(f["seq"], expected_seq, "gap-free, in order: {f}");
        replay.insert(expected_seq, f);
    }
    for (seq, frame) in &before.numbered {
        assert_eq!(
            &replay[seq], frame,
            "frame {seq} exactly as before the restart"
        );
    }
    for (client_id, seq) in &before.acked {
        assert_eq!(
            replay[seq]["client_id"], *client_id,
            "acknowledged message {client_id} at seq {seq}: {}",
            replay[seq]
        );
    }
    (c, newest)
}

#[actix_rt::test]
async fn kill_9_keeps_every_conversation_queue_agent_and_pending_ai_answer() {
    let dir = tempfile::tempdir().unwrap();
    let django = FakeDjango::start();
    let server = Server::start(dir.path(), &django);

    // A chats with the AI.
    let (mut a, a_started) = ChatClient::start(server.chat).await;
    let mut a_seen = Seen::default();
    chat(&mut a, &mut a_seen, "a-1", "hello").await;
    chat(&mut a, &mut a_seen, "a-2", "my order is late").await;

    // Ann holds B's chat; C then D wait in the queue behind her capacity of one.
    let mut ann = agent_connect(server.chat, "ann").await;
    ann.send(json!({"type": "agent.start", "capacity": 1}))
        .await;
    ann.expect("agent.ready").await;
    let mut queued = Vec::new();
    for name in ["b", "c", "d"] {
        let (mut c, started) = ChatClient::start(server.chat).await;
        c.send(json!({"type": "handoff.request", "reason": name}))
            .await;
        c.expect("session.queued").await;
        queued.push((c, started));
    }
    let assigned = ann.expect("session.assigned").await;
    assert_eq!(assigned["session_id"], queued[0].1["session_id"]);
    let mut ann_seq = 0;
    for f in ann.seen.iter().chain(std::iter::once(&assigned)) {
        ann_seq = ann_seq.max(f["seq"].as_u64().unwrap_or(0));
    }

    // E's message is acknowledged and its AI answer is still under way.
    django.push_chat(ChatEndpoint::AiRespond, Behavior::Stall);
    let (mut e, e_started) = ChatClient::start(server.chat).await;
    let mut e_seen = Seen::default();
    e.send(json!({"type": "message.send", "client_id": "e-1", "text": "are you there"}))
        .await;
    until(&mut e, &mut e_seen, "message.ack").await;
    support::eventually("the AI call is under way", || async {
        django.chat_calls(ChatEndpoint::AiRespond).len() == 3
    })
    .await;
    let asked = django.chat_calls(ChatEndpoint::AiRespond)[2].body["message_id"].clone();

    let mut server = server;
    server.signal("-KILL");
    server.wait_exit();
    assert_eq!(a.until_closed().await, Ended::Dropped);
    let server = Server::start(dir.path(), &django);

    // A: everything, exactly; a new message takes the next seq.
    let (mut a, newest) = resume_and_check(server.chat, &a_started, &a_seen).await;
    a.send(json!({"type": "message.send", "client_id": "a-3", "text": "still there?"}))
        .await;
    let ack = a.expect("message.ack").await;
    assert_eq!(ack["seq"], newest + 1);

    // E: the AI is asked again with the same message id, and the answer arrives.
    let mut e = ChatClient::resume(server.chat, &e_started, e_seen.newest()).await;
    let reply = loop {
        let f = until(&mut e, &mut e_seen, "message").await;
        if f["from"] == "ai" {
            break f;
        }
    };
    assert!(reply["text"].as_str().unwrap().contains("are you there"));
    let asked_twice = django
        .chat_calls(ChatEndpoint::AiRespond)
        .iter()
        .filter(|c| c.body["message_id"] == asked)
        .count();
    assert_eq!(asked_twice, 2, "asked again with the same idempotency key");

    // C and D are still queued, in their old order: Bob, the first agent
    // back, gets C first.
    let mut bob = agent_connect(server.chat, "bob").await;
    bob.send(json!({"type": "agent.start", "capacity": 1}))
        .await;
    let got = bob.expect("session.assigned").await;
    assert_eq!(got["session_id"], queued[1].1["session_id"]);
    let (mut c, c_started) = queued.remove(1);
    drop(c);
    c = ChatClient::resume(server.chat, &c_started, 0).await;
    c.expect("agent.joined").await;
    // Ann resumes her stream and has B's chat again (and, with room, D's from the queue).
    let mut ann = agent_connect(server.chat, "ann").await;
    ann.send(json!({"type": "agent.resume", "last_seq": ann_seq}))
        .await;
    let ready = ann.expect("agent.ready").await;
    assert_eq!(ready["seq"], ann_seq, "her stream's numbering goes on");
    let b_id = &queued[0].1["session_id"];
    let mut again = ann.expect("session.assigned").await;
    if again["session_id"] != *b_id {
        again = ann.expect("session.assigned").await;
    }
    assert_eq!(again["session_id"], *b_id);
    assert!(again["seq"].as_u64().unwrap() > ann_seq);
}

#[actix_rt::test]
async fn sigterm_tells_clients_to_resume_and_the_next_process_carries_on() {
    let dir = tempfile::tempdir().unwrap();
    let django = FakeDjango::start();
    let mut server = Server::start(dir.path(), &django);
    let (mut a, a_started) = ChatClient::start(server.chat).await;
    let mut a_seen = Seen::default();
    chat(&mut a, &mut a_seen, "a-1", "hello").await;
    let mut ann = agent_connect(server.chat, "ann").await;
    ann.send(json!({"type": "agent.start"})).await;
    ann.expect("agent.ready").await;

    server.signal("-TERM");
    assert_eq!(
        a.until_closed().await,
        Ended::Closed(1012),
        "resume, not ended"
    );
    assert_eq!(ann.until_closed().await, Ended::Closed(1012));
    assert!(server.wait_exit().success(), "SIGTERM exits 0");

    let server = Server::start(dir.path(), &django);
    let (mut a, newest) = resume_and_check(server.chat, &a_started, &a_seen).await;
    a.send(json!({"type": "message.send", "client_id": "a-2", "text": "and now?"}))
        .await;
    assert_eq!(a.expect("message.ack").await["seq"], newest + 1);
    // Nothing told the customer the chat ended.
    assert!(!a.seen.iter().any(|f| f["type"] == "session.closed"));
}

#[actix_rt::test]
async fn an_idle_detached_session_leaves_memory_and_a_resume_loads_it_from_the_journal() {
    let django = FakeDjango::start();
    let app = support::spawn_app(&format!(
        "{}\n[sessions]\npassivate_after_ms = 50\nsweep_interval_ms = 20\nhibernate_after_ms = 10\nresume_grace_ms = 2000",
        django.config("")
    ));
    let (mut a, started) = ChatClient::start(app.chat_addr).await;
    let mut seen = Seen::default();
    chat(&mut a, &mut seen, "a-1", "hello").await;
    chat(&mut a, &mut seen, "a-2", "and again").await;
    a.close().await;
    support::wait_metric(&app, "switchboard_chat_sessions_passivated_total", &[], 1.0).await;
    support::eventually("no session in memory", || async {
        let text = support::scrape(&app).await;
        support::metric(&text, "switchboard_chat_sessions", &[]) == Some(0.0)
    })
    .await;

    // A wrong token is refused against the journal's hash.
    let mut wrong = started.clone();
    wrong["resume_token"] = json!("0".repeat(64));
    let mut refused = ChatClient::resume(app.chat_addr, &wrong, 0).await;
    assert_eq!(refused.expect("error").await["code"], "resume_refused");
    assert_eq!(refused.until_closed().await, Ended::Closed(4003));

    let (mut a, newest) = resume_and_check(app.chat_addr, &started, &seen).await;
    let text = support::scrape(&app).await;
    assert!(
        support::metric(
            &text,
            "switchboard_chat_sessions_restored_total",
            &[("from", "resume")]
        )
        .unwrap_or(0.0)
            >= 1.0
    );
    a.send(json!({"type": "message.send", "client_id": "a-3", "text": "back"}))
        .await;
    assert_eq!(a.expect("message.ack").await["seq"], newest + 1);

    // Past its grace, a session that lives only in the journal ends there.
    a.close().await;
    support::wait_metric(&app, "switchboard_chat_journal_expired_total", &[], 1.0).await;
    let mut late = ChatClient::resume(app.chat_addr, &started, 0).await;
    assert_eq!(late.expect("error").await["code"], "resume_refused");
    app.stop().await.expect("clean stop");
}
