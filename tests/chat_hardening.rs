//! Live chat against what an anonymous or hostile client can do, over real sockets: floods before
//! and after `session.start`, memory and disk budgets, capacity that lets reconnects in, a customer
//! asking for a human, Django's contract kept, origins, resume edge cases, and agents' pages of
//! history.

mod support;

use std::time::Duration;

use jsonwebtoken::{encode, EncodingKey, Header};
use serde_json::{json, Value};
use support::fake_django::{Behavior, ChatEndpoint, FakeDjango};
use support::ws::{raw_frame, ChatClient, Ended, RawClient};
use support::*;

const AGENT_SECRET: &str = "agents-secret-agents-secret-0123";
const CUSTOMER_SECRET: &str = "customer-secret-customer-secret-0";

fn app(django: &FakeDjango, sessions: &str, agents: &str) -> TestApp {
    spawn_app(&format!(
        "{}\n[sessions]\njwt_secret = \"{CUSTOMER_SECRET}\"\n{sessions}\n[agents]\njwt_secret = \"{AGENT_SECRET}\"\n{agents}",
        django
            .config("flush_ms = 20\nretry_base_ms = 5\nretry_max_ms = 50\ndrain_timeout_ms = 200")
    ))
}

fn jwt(claims: Value, secret: &str) -> String {
    encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

fn agent_token(sub: &str) -> String {
    let exp = chrono::Utc::now().timestamp() + 3600;
    jwt(
        json!({"sub": sub, "name": format!("Agent {sub}"), "role": "agent", "exp": exp}),
        AGENT_SECRET,
    )
}

async fn agent_connect(app: &TestApp, sub: &str) -> Result<ChatClient, u16> {
    let bearer = format!("Bearer {}", agent_token(sub));
    ChatClient::connect_to(app.chat_addr, "/ws/agent", &[("Authorization", &bearer)]).await
}

async fn agent(app: &TestApp, sub: &str) -> ChatClient {
    let mut a = agent_connect(app, sub).await.expect("agent accepted");
    a.send(json!({"type": "agent.start"})).await;
    a.expect("agent.ready").await;
    a
}

async fn say(c: &mut ChatClient, client_id: &str, text: &str) -> u64 {
    c.send(json!({"type": "message.send", "client_id": client_id, "text": text}))
        .await;
    let ack = c.expect("message.ack").await;
    assert_eq!(ack["client_id"], client_id);
    ack["seq"].as_u64().unwrap()
}

/// The next `error` frame, skipping everything else.
async fn error_frame(c: &mut ChatClient) -> Value {
    c.expect("error").await
}

#[actix_rt::test]
async fn a_ping_flood_before_session_start_is_rate_limited_and_closed_while_others_chat_on() {
    let django = FakeDjango::start();
    let app = app(&django, "rate_per_sec = 20\nrate_burst = 40", "");
    let (mut probe, _) = ChatClient::start(app.chat_addr).await;

    // WebSocket pings: 2,000 in one write, no session.
    let mut flood = RawClient::connect(app.chat_addr).await;
    let pings: Vec<u8> = (0..2000).flat_map(|_| raw_frame(9, b"")).collect();
    flood.write(&pings).await;
    let (code, _) = flood.until_close().await;
    assert_eq!(code, 1008, "closed for staying over the rate");

    // Application pings: answered within the burst, then refused, then closed.
    let mut app_pings = RawClient::connect(app.chat_addr).await;
    let frames: Vec<u8> = (0..2000)
        .flat_map(|_| raw_frame(1, br#"{"type":"ping"}"#))
        .collect();
    app_pings.write(&frames).await;
    let (code, texts) = app_pings.until_close().await;
    assert_eq!(code, 1008);
    let pongs = texts.iter().filter(|t| t.contains(r#""pong""#)).count();
    assert!(
        (40..=60).contains(&pongs),
        "the burst is answered, the rest is not: {pongs} pongs"
    );
    assert!(texts.iter().any(|t| t.contains("rate_limited")));

    // The probe's session was never held up.
    say(&mut probe, "p-1", "still here").await;
    let text = scrape(&app).await;
    assert!(
        metric(
            &text,
            "switchboard_chat_rate_limit_closes_total",
            &[("stage", "pre_session")]
        )
        .unwrap_or(0.0)
            >= 2.0
    );
    app.stop().await.expect("clean stop");
}

#[actix_rt::test]
async fn control_frames_count_against_the_rate_once_a_session_runs_and_errors_name_the_client_id() {
    let django = FakeDjango::start();
    let app = app(&django, "rate_per_sec = 5\nrate_burst = 5", "");
    let mut raw = RawClient::connect(app.chat_addr).await;
    raw.write(&raw_frame(1, br#"{"type":"session.start"}"#))
        .await;
    let mut burst = Vec::new();
    for i in 0..10 {
        burst.extend(raw_frame(
            1,
            format!(r#"{{"type":"message.send","client_id":"m-{i}","text":"hi"}}"#).as_bytes(),
        ));
    }
    raw.write(&burst).await;
    let pings: Vec<u8> = (0..500).flat_map(|_| raw_frame(9, b"")).collect();
    raw.write(&pings).await;
    let (code, texts) = raw.until_close().await;
    assert_eq!(code, 1008, "pings kept it over the rate: closed");
    let limited: Vec<Value> = texts
        .iter()
        .map(|t| serde_json::from_str::<Value>(t).unwrap())
        .filter(|v| v["code"] == "rate_limited")
        .collect();
    assert!(!limited.is_empty());
    assert!(
        limited.iter().all(|v| v["client_id"].is_string()),
        "each refused message is named: {limited:?}"
    );
    app.stop().await.expect("clean stop");
}

#[actix_rt::test]
async fn a_sessions_history_is_bounded_in_bytes_and_the_process_refuses_new_work_at_its_budget() {
    let django = FakeDjango::start();
    django.set_chat_default(ChatEndpoint::AiRespond, Behavior::Status(500));
    let app = app(
        &django,
        "history_max_bytes = 8192\nmax_total_history_bytes = 24576\nrate_per_sec = 1000\nrate_burst = 1000",
        "",
    );
    let (mut c, started) = ChatClient::start(app.chat_addr).await;
    let big = "x".repeat(3000);
    let mut last = 0;
    for i in 0..12 {
        last = say(&mut c, &format!("b-{i}"), &big).await;
    }
    // Only the newest fit in 8 KiB: an early resume point is gone, a recent one replays.
    let mut early = ChatClient::resume(app.chat_addr, &started, 1).await;
    assert_eq!(early.until_closed().await, Ended::Closed(4010));
    let mut recent = ChatClient::resume(app.chat_addr, &started, last - 1).await;
    recent.expect("session.resumed").await;

    // More sessions until the process-wide budget is reached: new messages and sessions are
    // refused with server_busy instead of growing the process.
    let mut busy = None;
    'fill: for s in 0..10 {
        let (mut other, _) = ChatClient::start(app.chat_addr).await;
        for i in 0..4 {
            other
                .send(
                    json!({"type": "message.send", "client_id": format!("o-{s}-{i}"), "text": big}),
                )
                .await;
            loop {
                let f = other.next().await.expect("open");
                if f["type"] == "message.ack" {
                    break;
                }
                if f["type"] == "error" {
                    assert_eq!(f["code"], "server_busy");
                    assert_eq!(f["client_id"], format!("o-{s}-{i}"));
                    busy = Some(other);
                    break 'fill;
                }
            }
        }
    }
    assert!(busy.is_some(), "the budget was reached");
    let mut refused = ChatClient::connect(app.chat_addr).await;
    refused.send(json!({"type": "session.start"})).await;
    assert_eq!(error_frame(&mut refused).await["code"], "server_busy");
    assert_eq!(refused.until_closed().await, Ended::Closed(1013));
    let text = scrape(&app).await;
    let bytes = metric(&text, "switchboard_chat_history_bytes", &[]).unwrap_or(0.0);
    assert!(bytes <= 24576.0 + 8192.0, "history bytes {bytes}");
    app.stop().await.expect("clean stop");
}

#[actix_rt::test]
async fn ticket_transcripts_are_capped_and_tickets_per_hour_are_limited() {
    let django = FakeDjango::start();
    // The AI fails: every answer is a system fallback, which the transcript must leave out, and the
    // customer's own messages are the newest lines (an AI answer joining several could be newer).
    django.set_chat_default(ChatEndpoint::AiRespond, Behavior::Status(500));
    let app = app(
        &django,
        "transcript_max_bytes = 2000\ntickets_per_hour = 2\nrate_per_sec = 1000\nrate_burst = 1000",
        "",
    );
    let (mut c, _) = ChatClient::start(app.chat_addr).await;
    for i in 0..10 {
        say(&mut c, &format!("t-{i}"), &format!("{i}").repeat(500)).await;
    }
    for _ in 0..2 {
        c.send(json!({"type": "ticket.create", "subject": "Please help"}))
            .await;
        c.expect("ticket.created").await;
    }
    c.send(json!({"type": "ticket.create", "subject": "Again"}))
        .await;
    assert_eq!(error_frame(&mut c).await["code"], "ticket_limit");

    // The outbox delivers on its own schedule: no event to wait on but Django's record.
    eventually("two chat tickets reach Django", || async {
        django.chat_calls(ChatEndpoint::ChatTicket).len() >= 2
    })
    .await;
    let calls = django.chat_calls(ChatEndpoint::ChatTicket);
    assert_eq!(calls.len(), 2, "two tickets reached Django");
    for call in &calls {
        let lines = call.body["transcript"].as_array().unwrap();
        let bytes: usize = lines
            .iter()
            .map(|l| l["text"].as_str().unwrap().len() + 64)
            .sum();
        assert!(bytes <= 2000, "transcript of {bytes} bytes");
        assert!(
            lines.iter().all(|l| l["role"] != "system"),
            "Django's contract has no system role"
        );
        assert!(
            lines.last().unwrap()["text"]
                .as_str()
                .unwrap()
                .starts_with("999"),
            "the newest message is kept: {lines:?}"
        );
    }
    app.stop().await.expect("clean stop");
}

#[actix_rt::test]
async fn the_ai_history_has_no_system_lines_and_does_not_repeat_the_message_answered() {
    let django = FakeDjango::start();
    let app = app(&django, "", "");
    django.push_chat(ChatEndpoint::AiRespond, Behavior::Status(500));
    let (mut c, _) = ChatClient::start(app.chat_addr).await;
    say(&mut c, "h-1", "first").await;
    let fallback = c.expect("message").await;
    assert_eq!(fallback["from"], "system");
    assert_eq!(
        fallback["offers"],
        json!(["handoff.request", "ticket.create"]),
        "a failure offers a human and a ticket"
    );
    say(&mut c, "h-2", "second").await;
    let reply = loop {
        let m = c.expect("message").await;
        if m["from"] == "ai" {
            break m;
        }
    };
    assert_eq!(reply["text"], "You said: second");
    let calls = django.chat_calls(ChatEndpoint::AiRespond);
    let last = &calls.last().unwrap().body;
    assert_eq!(last["message"], "second");
    let history: Vec<&str> = last["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["text"].as_str().unwrap())
        .collect();
    assert_eq!(history, ["first"]);
    app.stop().await.expect("clean stop");
}

#[actix_rt::test]
async fn a_customer_can_ask_for_a_human_and_an_agent_gets_the_chat() {
    let django = FakeDjango::start();
    let app = app(&django, "", "");
    let mut a = agent(&app, "ann").await;
    let (mut c, started) = ChatClient::start(app.chat_addr).await;
    c.send(json!({"type": "handoff.request", "reason": "I want a person"}))
        .await;
    let queued = c.expect("session.queued").await;
    assert_eq!(queued["reason"], "I want a person");
    let assigned = loop {
        let f = a.expect("session.assigned").await;
        if f["session_id"] == started["session_id"] {
            break f;
        }
    };
    assert_eq!(assigned["by"], "queue");
    c.expect("agent.joined").await;
    // Asking again while an agent holds the chat changes nothing.
    c.send(json!({"type": "handoff.request"})).await;
    c.send(json!({"type": "ping"})).await;
    c.expect("pong").await;
    assert!(!c.seen.iter().any(|f| f["type"] == "error"), "{:?}", c.seen);
    app.stop().await.expect("clean stop");
}

#[actix_rt::test]
async fn capacity_counts_new_sessions_and_agents_only_reconnects_get_in() {
    let django = FakeDjango::start();
    let app = app(&django, "max_sessions = 1", "max_agents = 1");
    let (mut first, started) = ChatClient::start(app.chat_addr).await;
    let seq = say(&mut first, "c-1", "hello").await;
    let mut second = ChatClient::connect(app.chat_addr).await;
    second.send(json!({"type": "session.start"})).await;
    assert_eq!(error_frame(&mut second).await["code"], "server_busy");
    assert_eq!(second.until_closed().await, Ended::Closed(1013));
    // The first customer's reconnect at capacity is let in.
    let mut back = ChatClient::resume(app.chat_addr, &started, seq).await;
    back.expect("session.resumed").await;

    let mut ann = agent(&app, "ann").await;
    let mut bob = agent_connect(&app, "bob").await.expect("upgraded");
    bob.send(json!({"type": "agent.start"})).await;
    assert_eq!(error_frame(&mut bob).await["code"], "server_busy");
    assert_eq!(bob.until_closed().await, Ended::Closed(1013));
    // Ann reconnecting is let in and resumes.
    let mut again = agent_connect(&app, "ann").await.expect("upgraded");
    again
        .send(json!({"type": "agent.resume", "last_seq": 0}))
        .await;
    again.expect("agent.ready").await;
    assert_eq!(ann.until_closed().await, Ended::Closed(4009));
    app.stop().await.expect("clean stop");
}

#[actix_rt::test]
async fn resumes_past_the_newest_seq_and_agent_resumes_after_the_grace_are_refused() {
    let django = FakeDjango::start();
    let app = app(&django, "", "resume_grace_ms = 0");
    let (mut c, started) = ChatClient::start(app.chat_addr).await;
    let seq = say(&mut c, "r-1", "hi").await;
    let mut ahead = ChatClient::resume(app.chat_addr, &started, seq + 100).await;
    ahead.expect("session.resumed").await;
    assert_eq!(error_frame(&mut ahead).await["code"], "invalid_seq");
    assert_eq!(ahead.until_closed().await, Ended::Closed(4003));
    assert!(
        !ahead.seen.iter().any(|f| f["type"] == "message"),
        "nothing replayed: {:?}",
        ahead.seen
    );

    // An agent resuming after their grace ended in this process is told nothing is kept. (One
    // this process never had was signed in to the one before it: their stream goes on.)
    let zed = agent(&app, "zed").await;
    drop(zed);
    let refused = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let mut late = agent_connect(&app, "zed").await.expect("upgraded");
            late.send(json!({"type": "agent.resume", "last_seq": 1}))
                .await;
            match late.next().await {
                Ok(f) if f["type"] == "error" => {
                    assert_eq!(f["code"], "resume_refused");
                    return late.until_closed().await;
                }
                // Still within its grace (the sweep has not come yet): it resumed; let go again.
                _ => drop(late),
            }
        }
    })
    .await
    .expect("the grace ends");
    assert_eq!(refused, Ended::Closed(4003));
    app.stop().await.expect("clean stop");
}

#[actix_rt::test]
async fn origins_admit_clients_without_one_and_agents_have_their_own_list() {
    let django = FakeDjango::start();
    let app = app(
        &django,
        "allowed_origins = [\"https://shop.example.com\"]",
        "allowed_origins = [\"https://console.example.com\"]",
    );
    // No Origin: a mobile app or a service.
    ChatClient::start(app.chat_addr).await;
    assert_eq!(
        ChatClient::connect_with(app.chat_addr, &[("Origin", "https://console.example.com")])
            .await
            .err(),
        Some(403)
    );
    let bearer = format!("Bearer {}", agent_token("ann"));
    let console = [
        ("Authorization", bearer.as_str()),
        ("Origin", "https://console.example.com"),
    ];
    assert!(ChatClient::connect_to(app.chat_addr, "/ws/agent", &console)
        .await
        .is_ok());
    let shop = [
        ("Authorization", bearer.as_str()),
        ("Origin", "https://shop.example.com"),
    ];
    assert_eq!(
        ChatClient::connect_to(app.chat_addr, "/ws/agent", &shop)
            .await
            .err(),
        Some(403)
    );
    app.stop().await.expect("clean stop");
}

#[actix_rt::test]
async fn agents_get_the_chat_in_bounded_pages_and_a_rejoin_shows_it_again() {
    let django = FakeDjango::start();
    django.set_chat_default(ChatEndpoint::AiRespond, Behavior::Status(500));
    let app = app(
        &django,
        "rate_per_sec = 1000\nrate_burst = 1000",
        "history_page_bytes = 4096\nauto_assign = false",
    );
    let (mut c, started) = ChatClient::start(app.chat_addr).await;
    for i in 0..10 {
        say(&mut c, &format!("g-{i}"), &"y".repeat(1000)).await;
    }
    let id = started["session_id"].clone();
    let mut a = agent(&app, "ann").await;
    a.send(json!({"type": "session.join", "session_id": id}))
        .await;
    let assigned = a.expect("session.assigned").await;
    assert_eq!(assigned["has_more"], true);
    let page = assigned["history"].as_array().unwrap();
    assert!(
        !page.is_empty() && page.len() < 20,
        "a page, not the whole chat"
    );
    assert!(assigned.to_string().len() < 4096 + 2048);
    let first = page[0]["seq"].as_u64().unwrap();
    a.send(json!({"type": "history.fetch", "session_id": id, "before_seq": first}))
        .await;
    let older = a.expect("session.history").await;
    let frames = older["frames"].as_array().unwrap();
    assert!(!frames.is_empty());
    assert!(frames.last().unwrap()["seq"].as_u64().unwrap() < first);

    // Joining again shows the chat again instead of nothing.
    a.send(json!({"type": "session.join", "session_id": id}))
        .await;
    let again = a.expect("session.assigned").await;
    assert_eq!(again["session_id"], id);
    app.stop().await.expect("clean stop");
}

#[actix_rt::test]
async fn a_long_message_escaped_in_json_still_fits_a_frame() {
    let django = FakeDjango::start();
    let app = app(&django, "", "");
    let (mut c, _) = ChatClient::start(app.chat_addr).await;
    // 4,000 characters, each written as a surrogate pair of \u escapes (12 bytes): 48 KB.
    let escaped = "\\ud83d\\ude00".repeat(4000);
    c.send_text(format!(
        r#"{{"type":"message.send","client_id":"e-1","text":"{escaped}"}}"#
    ))
    .await;
    assert_eq!(c.expect("message.ack").await["client_id"], "e-1");
    app.stop().await.expect("clean stop");
}

#[actix_rt::test]
async fn token_claims_are_held_to_the_ticket_apis_limits() {
    let django = FakeDjango::start();
    let app = app(&django, "", "");
    let exp = chrono::Utc::now().timestamp() + 600;
    for claims in [
        json!({"sub": "a".repeat(5000), "exp": exp}),
        json!({"sub": "nul\u{0}byte", "exp": exp}),
    ] {
        let mut c = ChatClient::connect(app.chat_addr).await;
        c.send(json!({"type": "session.start", "token": jwt(claims, CUSTOMER_SECRET)}))
            .await;
        assert_eq!(error_frame(&mut c).await["code"], "unauthorized");
        assert_eq!(c.until_closed().await, Ended::Closed(1008));
    }
    // First-frame refusals are counted like every other error frame.
    let mut early = ChatClient::connect(app.chat_addr).await;
    early.send(json!({"type": "typing", "active": true})).await;
    assert_eq!(error_frame(&mut early).await["code"], "no_session");
    let text = scrape(&app).await;
    assert!(
        metric(
            &text,
            "switchboard_chat_frame_errors_total",
            &[("code", "no_session")]
        )
        .unwrap_or(0.0)
            >= 1.0
    );
    app.stop().await.expect("clean stop");
}

#[actix_rt::test]
async fn an_app_ping_keeps_an_idle_session_alive() {
    let django = FakeDjango::start();
    let app = app(
        &django,
        "idle_timeout_ms = 1500\nhibernate_after_ms = 0\nsweep_interval_ms = 50",
        "",
    );
    let (mut c, _) = ChatClient::start(app.chat_addr).await;
    // Pings paced well inside the idle timeout, for longer than it.
    for _ in 0..10 {
        c.send(json!({"type": "ping"})).await;
        c.expect("pong").await;
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    }
    say(&mut c, "i-1", "still open").await;
    assert!(
        !c.seen.iter().any(|f| f["type"] == "session.closed"),
        "{:?}",
        c.seen
    );
    app.stop().await.expect("clean stop");
}

#[actix_rt::test]
async fn a_socket_the_server_closed_is_gone_soon_and_no_longer_counted() {
    let django = FakeDjango::start();
    let app = app(&django, "", "");
    let mut first = RawClient::connect(app.chat_addr).await;
    first
        .write(&raw_frame(1, br#"{"type":"session.start"}"#))
        .await;
    // Resuming the session from a second connection closes the first with 4009.
    let started: Value = serde_json::from_str(&first.next_text().await).unwrap();
    let mut second = ChatClient::resume(app.chat_addr, &started, 0).await;
    second.expect("session.resumed").await;
    // The first client never answers the close: the server still lets its socket go.
    let (code, _) = first.until_close().await;
    assert_eq!(code, 4009);
    let (after, _) = first.until_close().await;
    assert_eq!(
        after, 1006,
        "the server dropped the socket without waiting for our close"
    );
    wait_metric_at_most(&app, "switchboard_chat_sockets", 1.0).await;
    app.stop().await.expect("clean stop");
}

/// Waits until the gauge is at most `max` (a socket count has no event to wait on).
async fn wait_metric_at_most(app: &TestApp, name: &str, max: f64) {
    let url = app.url("/metrics");
    eventually(&format!("{name} <= {max}"), || {
        let url = url.clone();
        async move { metric(&get(&url).await.text, name, &[]).unwrap_or(f64::MAX) <= max }
    })
    .await;
}

#[actix_rt::test]
async fn an_agent_resume_after_many_joins_of_a_big_chat_completes() {
    let django = FakeDjango::start();
    django.set_chat_default(ChatEndpoint::AiRespond, Behavior::Status(500));
    let app = app(
        &django,
        "rate_per_sec = 1000\nrate_burst = 1000",
        "auto_assign = false\non_leave = \"ai\"",
    );
    let (mut c, started) = ChatClient::start(app.chat_addr).await;
    for i in 0..60 {
        say(&mut c, &format!("big-{i}"), &"z".repeat(3900)).await;
    }
    let id = started["session_id"].clone();
    let mut a = agent(&app, "ann").await;
    let mut last_seq = 0;
    for _ in 0..15 {
        a.send(json!({"type": "session.join", "session_id": id}))
            .await;
        let assigned = a.expect("session.assigned").await;
        // A page of the chat, never the whole of it (60 messages of 3,900 characters).
        assert!(assigned.to_string().len() < 32768 + 4096, "a bounded page");
        assert_eq!(assigned["has_more"], true);
        last_seq = assigned["seq"].as_u64().unwrap();
        a.send(json!({"type": "session.leave", "session_id": id}))
            .await;
        last_seq = a.expect("session.released").await["seq"]
            .as_u64()
            .unwrap()
            .max(last_seq);
    }
    drop(a);
    // Reconnect from an early point of the stream: either everything kept is replayed, or the
    // server says at once that it is lost (4010); never a stall or a slow-consumer close.
    let bearer = format!("Bearer {}", agent_token("ann"));
    let mut back =
        ChatClient::connect_to(app.chat_addr, "/ws/agent", &[("Authorization", &bearer)])
            .await
            .unwrap();
    back.send(json!({"type": "agent.resume", "last_seq": 1}))
        .await;
    back.expect("agent.ready").await;
    loop {
        match back.next().await {
            Ok(f) if f["type"] == "session.released" && f["seq"].as_u64() == Some(last_seq) => {
                break
            }
            Ok(_) => {}
            Err(ended) => {
                assert_eq!(ended, Ended::Closed(4010), "only a lost history may end it");
                return app.stop().await.expect("clean stop");
            }
        }
    }
    // Resumed from a recent point, the replay is short and the connection lives on.
    let mut again =
        ChatClient::connect_to(app.chat_addr, "/ws/agent", &[("Authorization", &bearer)])
            .await
            .unwrap();
    again
        .send(json!({"type": "agent.resume", "last_seq": last_seq - 2}))
        .await;
    again.expect("agent.ready").await;
    again.send(json!({"type": "ping"})).await;
    again.expect("pong").await;
    app.stop().await.expect("clean stop");
}

#[actix_rt::test]
async fn bad_handoff_requests_and_history_fetches_get_clear_errors_and_change_nothing() {
    let django = FakeDjango::start();
    let app = app(&django, "", "auto_assign = false");
    let (mut c, started) = ChatClient::start(app.chat_addr).await;
    for (frame, code) in [
        (
            json!({"type": "handoff.request", "reason": "r".repeat(501)}),
            "invalid_frame",
        ),
        (
            json!({"type": "handoff.request", "reason": "nul\u{0}"}),
            "invalid_frame",
        ),
        (
            json!({"type": "handoff.request", "reason": 7}),
            "invalid_frame",
        ),
        (
            json!({"type": "handoff.request", "extra": true}),
            "invalid_frame",
        ),
    ] {
        c.send(frame.clone()).await;
        assert_eq!(error_frame(&mut c).await["code"], code, "{frame}");
    }
    // None of them queued the chat: the AI still answers.
    say(&mut c, "h-1", "still the AI?").await;
    let reply = c.expect("message").await;
    assert_eq!(reply["from"], "ai", "{reply}");
    assert!(!c.seen.iter().any(|f| f["type"] == "session.queued"));

    let id = started["session_id"].clone();
    let mut a = agent(&app, "ann").await;
    for (frame, code) in [
        (
            json!({"type": "history.fetch", "session_id": id, "before_seq": 5}),
            "not_joined",
        ),
        (
            json!({"type": "history.fetch", "session_id": id, "before_seq": -1}),
            "invalid_frame",
        ),
        (
            json!({"type": "history.fetch", "session_id": "nope", "before_seq": 1}),
            "invalid_frame",
        ),
        (
            json!({"type": "history.fetch", "session_id": id}),
            "invalid_frame",
        ),
    ] {
        a.send(frame.clone()).await;
        assert_eq!(a.expect("error").await["code"], code, "{frame}");
    }
    assert!(!a.seen.iter().any(|f| f["type"] == "session.history"));
    app.stop().await.expect("clean stop");
}
