//! Live chat on several threads (`chat.threads = 4`), over real sockets: new sessions spread over
//! the threads, a resume that lands on another thread is moved to its session's and loses nothing,
//! an agent on one thread serves customers on others, and of two agents on two threads claiming
//! one chat exactly one wins.

mod support;

use jsonwebtoken::{encode, EncodingKey, Header};
use serde_json::json;
use support::fake_django::{Behavior, ChatEndpoint, FakeDjango};
use support::ws::{expect_for, say, ChatClient};
use support::*;
use switchboard::chat::placement;
use switchboard::domain::ids::AgentId;

const SECRET: &str = "threads-secret-threads-secret-012";
const THREADS: usize = 4;

fn app_with(django: &FakeDjango) -> TestApp {
    spawn_app(&format!(
        "{}\n[chat]\nthreads = {THREADS}\n[agents]\njwt_secret = \"{SECRET}\"\n",
        django.config("flush_ms = 20\nretry_base_ms = 5\nretry_max_ms = 50")
    ))
}

fn token(sub: &str) -> String {
    let exp = chrono::Utc::now().timestamp() + 3600;
    encode(
        &Header::default(),
        &json!({"sub": sub, "name": format!("Agent {sub}"), "role": "agent", "exp": exp}),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

/// Agent ids that live on two different chat threads.
fn agents_on_two_threads() -> (String, String) {
    let first = "agent-0".to_string();
    let home = placement::of_agent(&AgentId::from(first.as_str()), THREADS);
    let other = (1..)
        .map(|i| format!("agent-{i}"))
        .find(|id| placement::of_agent(&AgentId::from(id.as_str()), THREADS) != home)
        .unwrap();
    (first, other)
}

async fn agent(app: &TestApp, sub: &str) -> ChatClient {
    let bearer = format!("Bearer {}", token(sub));
    let mut a = ChatClient::connect_to(app.chat_addr, "/ws/agent", &[("Authorization", &bearer)])
        .await
        .expect("agent accepted");
    a.send(json!({"type": "agent.start", "auto_assign": false, "capacity": 20}))
        .await;
    a.expect("agent.ready").await;
    a
}

fn moved(text: &str) -> f64 {
    metric(
        text,
        "switchboard_chat_connections_moved_total",
        &[("party", "customer"), ("outcome", "moved")],
    )
    .unwrap_or(0.0)
}

/// One server for the whole test: the metrics it reads are the process's, shared by every server
/// a test binary starts.
#[actix_rt::test]
async fn sessions_spread_over_the_threads_a_resume_elsewhere_is_moved_and_agents_serve_across() {
    let django = FakeDjango::start();
    let app = app_with(&django);
    let mut customers = Vec::new();
    for i in 0..(THREADS * 3) {
        let (mut c, started) = ChatClient::start(app.chat_addr).await;
        let seq = say(&mut c, &format!("c{i}-1"), "hello").await;
        customers.push((c, started, seq));
    }
    let text = scrape(&app).await;
    assert_eq!(
        metric(&text, "switchboard_chat_threads", &[]),
        Some(THREADS as f64)
    );
    let per_thread: Vec<f64> = (0..THREADS)
        .map(|t| {
            metric(
                &text,
                "switchboard_chat_thread_sessions",
                &[("thread", &t.to_string())],
            )
            .unwrap_or(0.0)
        })
        .collect();
    assert_eq!(per_thread.iter().sum::<f64>(), (THREADS * 3) as f64);
    assert!(
        per_thread.iter().all(|&n| n > 0.0),
        "every thread has sessions: {per_thread:?}"
    );

    // Each customer reconnects (its AI answer and its ack were numbered before it went) until
    // some resume has landed on another thread than its session's; every one gets all it missed.
    let before = moved(&scrape(&app).await);
    // An open connection with no session yet tips the balance, so new connections do not land on
    // the threads in the order the sessions were made on them.
    let _idle = ChatClient::connect(app.chat_addr).await;
    let mut rounds = 0;
    loop {
        rounds += 1;
        for (c, started, seq) in customers.iter_mut() {
            let reply = loop {
                let f = c.expect("message").await;
                if f["from"] == "ai" {
                    break f;
                }
            };
            let newest = reply["seq"].as_u64().unwrap();
            assert!(newest > *seq);
            let old = std::mem::replace(c, ChatClient::resume(app.chat_addr, started, *seq).await);
            drop(old);
            // Sent right behind the resume, before any answer: it may arrive in the same read,
            // and must go with the socket if the socket is moved.
            let client_id = format!("again-{rounds}");
            c.send(json!({"type": "message.send", "client_id": client_id, "text": "still here"}))
                .await;
            let resumed = c.expect("session.resumed").await;
            assert_eq!(resumed["session_id"], started["session_id"]);
            let replayed = c.expect("message").await;
            assert_eq!(
                replayed["seq"], reply["seq"],
                "the missed answer is replayed"
            );
            let ack = c.expect("message.ack").await;
            assert_eq!(ack["client_id"], client_id.as_str());
            *seq = ack["seq"].as_u64().unwrap();
            assert!(*seq > newest);
        }
        if moved(&scrape(&app).await) > before || rounds >= 10 {
            break;
        }
    }
    assert!(
        moved(&scrape(&app).await) > before,
        "a resume was moved to its session's thread"
    );
    agents_on_two_threads_serve_customers_on_others_and_exactly_one_claim_wins(&app, &django).await;
    app.stop().await.unwrap();
}

/// Run by the test above, in the same server: the metrics it reads are the process's.
async fn agents_on_two_threads_serve_customers_on_others_and_exactly_one_claim_wins(
    app: &TestApp,
    django: &FakeDjango,
) {
    let (ann_id, bob_id) = agents_on_two_threads();
    let mut ann = agent(app, &ann_id).await;
    let mut bob = agent(app, &bob_id).await;
    let handoff = || {
        Behavior::Json(json!({
            "reply": "A colleague will take over.", "confidence": 0.5, "handoff": true,
            "suggested_actions": []
        }))
    };
    let mut customers = Vec::new();
    for i in 0..(THREADS * 2) {
        django.push_chat(ChatEndpoint::AiRespond, handoff());
        let (mut c, started) = ChatClient::start(app.chat_addr).await;
        say(&mut c, &format!("q{i}"), "I want a human").await;
        c.expect("session.queued").await;
        customers.push((c, started));
    }
    for (i, (c, started)) in customers.iter_mut().enumerate() {
        let id = started["session_id"].clone();
        let join = json!({"type": "session.join", "session_id": id});
        tokio::join!(ann.send(join.clone()), bob.send(join));
        // Both ask; one is assigned and the other refused, whichever threads they are on.
        let mut outcomes = Vec::new();
        for a in [&mut ann, &mut bob] {
            loop {
                let f = a.next().await.expect("open");
                match f["type"].as_str() {
                    Some("session.assigned") if f["session_id"] == id => {
                        outcomes.push("won");
                        break;
                    }
                    Some("error") => {
                        assert_eq!(f["code"], "already_claimed");
                        outcomes.push("refused");
                        break;
                    }
                    _ => {}
                }
            }
        }
        outcomes.sort();
        assert_eq!(outcomes, ["refused", "won"], "chat {i}");
        let joined = c.expect("agent.joined").await;
        let winner = if joined["name"] == format!("Agent {ann_id}") {
            &mut ann
        } else {
            &mut bob
        };
        // Both ways across threads.
        winner
            .send(json!({"type": "message.send", "session_id": id, "client_id": format!("a{i}"), "text": "Hello"}))
            .await;
        let ack = expect_for(winner, "message.ack", &id).await;
        let m = c.expect("message").await;
        assert_eq!((&m["from"], &m["seq"]), (&json!("agent"), &ack["seq"]));
        say(c, &format!("c{i}"), "Thanks").await;
        loop {
            let e = expect_for(winner, "session.event", &id).await;
            if e["event"]["type"] == "message" {
                assert_eq!(e["event"]["text"], "Thanks");
                break;
            }
        }
    }
}
