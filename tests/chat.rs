//! Live chat over real WebSocket connections to the chat listener, with the fake Django answering
//! the AI, ticket and service-action endpoints: the customer flow, AI replies and actions, tickets
//! from chat visible over REST, gap-free resume, and every kind of bad input.

mod support;

use serde_json::{json, Value};
use support::fake_django::{Behavior, ChatEndpoint, FakeDjango};
use support::ws::{raw_frame, ChatClient, Ended, RawClient};
use support::*;

fn chat_app(django: &FakeDjango, sessions: &str) -> TestApp {
    spawn_app(&format!(
        "{}\n[sessions]\n{sessions}",
        django
            .config("flush_ms = 20\nretry_base_ms = 5\nretry_max_ms = 50\ndrain_timeout_ms = 200")
    ))
}

async fn say(c: &mut ChatClient, client_id: &str, text: &str) -> u64 {
    c.send(json!({"type": "message.send", "client_id": client_id, "text": text}))
        .await;
    let ack = c.expect("message.ack").await;
    assert_eq!(ack["client_id"], client_id);
    ack["seq"].as_u64().unwrap()
}

/// The next `message` frame from `from`.
async fn message_from(c: &mut ChatClient, from: &str) -> Value {
    loop {
        let m = c.expect("message").await;
        if m["from"] == from {
            return m;
        }
        c.seen.push(m);
    }
}

#[actix_rt::test]
async fn a_customer_message_gets_an_ack_and_an_ai_reply_in_order() {
    let django = FakeDjango::start();
    let app = chat_app(&django, "");
    let (mut c, started) = ChatClient::start(app.chat_addr).await;
    assert_eq!(started["seq"], 0);
    assert!(started["session_id"].is_string() && started["resume_token"].is_string());

    let seq = say(&mut c, "m-1", "Hello there").await;
    assert_eq!(seq, 1);
    let reply = message_from(&mut c, "ai").await;
    assert_eq!(reply["seq"], 2);
    assert_eq!(reply["text"], "You said: Hello there");

    let calls = django.chat_calls(ChatEndpoint::AiRespond);
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].body["session_id"], started["session_id"]);
    assert_eq!(calls[0].body["message"], "Hello there");
    // The message answered is the call's `message`, not repeated in its history.
    assert_eq!(calls[0].body["history"], json!([]));

    // The same client_id again: applied once, acked with the same seq, no second AI call.
    c.send(json!({"type": "message.send", "client_id": "m-1", "text": "Hello there"}))
        .await;
    let again = c.expect("message.ack").await;
    assert_eq!(again["seq"], 1);
    c.send(json!({"type": "ping"})).await;
    c.expect("pong").await;
    assert_eq!(django.chat_calls(ChatEndpoint::AiRespond).len(), 1);

    c.send(json!({"type": "session.close"})).await;
    let closed = c.expect("session.closed").await;
    assert_eq!(closed["reason"], "customer_closed");
    assert_eq!(c.until_closed().await, Ended::Closed(1000));
    app.stop().await.expect("clean stop");
}

#[actix_rt::test]
async fn messages_sent_while_the_ai_answers_go_into_its_next_call() {
    let django = FakeDjango::start();
    django.push_chat(ChatEndpoint::AiRespond, Behavior::Stall);
    let app = chat_app(&django, "");
    let (mut c, _) = ChatClient::start(app.chat_addr).await;
    say(&mut c, "a", "first").await;
    let d = &django;
    eventually("the first AI call is out", || async move {
        d.chat_calls(ChatEndpoint::AiRespond).len() == 1
    })
    .await;
    say(&mut c, "b", "second").await;
    say(&mut c, "c", "third").await;
    django.release();
    let r1 = message_from(&mut c, "ai").await;
    let r2 = message_from(&mut c, "ai").await;
    assert_eq!(r1["text"], "You said: first");
    assert_eq!(r2["text"], "You said: second\nthird");
    assert!(r1["seq"].as_u64() < r2["seq"].as_u64());
    assert_eq!(django.chat_calls(ChatEndpoint::AiRespond).len(), 2);
    app.stop().await.expect("clean stop");
}

#[actix_rt::test]
async fn django_down_stalled_or_garbage_never_leaves_the_customer_in_silence() {
    let django = FakeDjango::start();
    django.push_chat(ChatEndpoint::AiRespond, Behavior::Status(500));
    django.push_chat(ChatEndpoint::AiRespond, Behavior::Garbage200);
    django.push_chat(ChatEndpoint::AiRespond, Behavior::Stall);
    let app = spawn_app(&format!(
        "{}\n[sessions]\n",
        django.config("calls_timeout_ms = 300\ncalls_breaker_threshold = 50")
    ));
    let (mut c, _) = ChatClient::start(app.chat_addr).await;
    for (i, what) in ["down", "garbage", "stalled"].iter().enumerate() {
        say(&mut c, &format!("m{i}"), what).await;
        let m = message_from(&mut c, "system").await;
        assert!(m["text"].as_str().unwrap().contains("ticket"), "{m}");
    }
    django.release();
    // Django is back: replies come back by themselves.
    say(&mut c, "m9", "back?").await;
    assert_eq!(message_from(&mut c, "ai").await["text"], "You said: back?");
    app.stop().await.expect("clean stop");
}

#[actix_rt::test]
async fn a_resume_replays_every_missed_frame_in_order_including_ai_replies_while_away() {
    let django = FakeDjango::start();
    django.push_chat(ChatEndpoint::AiRespond, Behavior::Stall);
    let app = chat_app(&django, "");
    let (mut c, started) = ChatClient::start(app.chat_addr).await;
    say(&mut c, "m-1", "are you there?").await;
    let d = &django;
    eventually("the AI call is out", || async move {
        d.chat_calls(ChatEndpoint::AiRespond).len() == 1
    })
    .await;
    // The connection drops while the AI is answering; the reply lands while away.
    drop(c.into_inner());
    django.release();
    // The session is the only witness that the reply arrived (the metrics are shared with the other
    // tests of this binary): look, by resuming, until it says so.
    let addr = app.chat_addr;
    let started_ref = &started;
    eventually("the reply was stored while away", || async move {
        let mut peek = ChatClient::resume(addr, started_ref, 0).await;
        peek.expect("session.resumed").await["seq"] == 2
    })
    .await;

    let mut back = ChatClient::resume(app.chat_addr, &started, 0).await;
    let resumed = back.expect("session.resumed").await;
    assert_eq!(resumed["seq"], 2);
    let first = back.expect("message").await;
    assert_eq!(
        (first["seq"].as_u64(), first["from"].as_str()),
        (Some(1), Some("customer"))
    );
    assert_eq!(first["client_id"], "m-1");
    let second = back.expect("message").await;
    assert_eq!(
        (second["seq"].as_u64(), second["from"].as_str()),
        (Some(2), Some("ai"))
    );

    // Then the live stream goes on from there, with no gap.
    let seq = say(&mut back, "m-2", "thanks").await;
    assert_eq!(seq, 3);

    // A wrong token is refused.
    let mut thief = ChatClient::connect(app.chat_addr).await;
    thief
        .send(json!({"type": "session.resume", "session_id": started["session_id"], "resume_token": "nope", "last_seq": 0}))
        .await;
    assert_eq!(thief.expect("error").await["code"], "resume_refused");
    assert_eq!(thief.until_closed().await, Ended::Closed(4003));
    app.stop().await.expect("clean stop");
}

#[actix_rt::test]
async fn a_ticket_from_chat_is_visible_over_rest_at_once_and_reaches_django_with_the_transcript() {
    let django = FakeDjango::start();
    let app = chat_app(&django, "");
    let (mut c, started) = ChatClient::start(app.chat_addr).await;
    say(&mut c, "m-1", "My invoice is wrong").await;
    message_from(&mut c, "ai").await;
    c.send(json!({"type": "ticket.create", "subject": "Wrong invoice", "description": "INV-1009"}))
        .await;
    let created = c.expect("ticket.created").await;
    let id = created["ticket_id"].as_str().unwrap().to_string();

    let ticket = get(&app.url(&format!("/api/v1/tickets/{id}"))).await;
    assert_eq!(ticket.status, 200, "{}", ticket.text);
    assert_eq!(ticket.body["source"], "chat");
    assert_eq!(ticket.body["subject"], "Wrong invoice");
    assert_eq!(ticket.body["chat_session_id"], started["session_id"]);

    let d = &django;
    eventually("Django got the chat ticket", || async move {
        !d.chat_calls(ChatEndpoint::ChatTicket).is_empty()
    })
    .await;
    let call = &django.chat_calls(ChatEndpoint::ChatTicket)[0];
    assert_eq!(call.body["ticket_id"], id.as_str());
    assert_eq!(call.body["transcript"][0]["text"], "My invoice is wrong");
    assert_eq!(call.body["transcript"][1]["role"], "ai");

    c.send(json!({"type": "ticket.create", "subject": ""}))
        .await;
    assert_eq!(c.expect("error").await["code"], "invalid_frame");
    app.stop().await.expect("clean stop");
}

#[actix_rt::test]
async fn the_ai_acts_opening_tickets_running_confirmed_service_actions_and_handing_off() {
    let django = FakeDjango::start();
    django.push_chat(
        ChatEndpoint::AiRespond,
        Behavior::Json(json!({
            "reply": "Let me help.", "confidence": 0.9, "handoff": false, "suggested_actions": [],
            "actions": [
                {"type": "create_ticket", "subject": "Login broken", "priority": "high"},
                {"type": "manage_service", "service": "auth", "operation": "reset_password",
                 "params": {"to": "ada@example.com"}, "requires_confirmation": true},
                {"type": "teleport"}
            ]
        })),
    );
    django.push_chat(
        ChatEndpoint::AiRespond,
        Behavior::Json(json!({
            "reply": "A colleague will take over.", "confidence": 0.5, "handoff": false,
            "suggested_actions": [], "actions": [{"type": "handoff", "reason": "billing dispute"}]
        })),
    );
    let app = chat_app(&django, "");
    let (mut c, _) = ChatClient::start(app.chat_addr).await;
    say(&mut c, "m-1", "I cannot log in").await;
    assert_eq!(message_from(&mut c, "ai").await["text"], "Let me help.");
    let proposed = c.expect("action.proposed").await;
    assert_eq!(proposed["action"]["kind"], "manage_service");
    let created = c.expect("ticket.created").await;
    let ticket = get(&app.url(&format!(
        "/api/v1/tickets/{}",
        created["ticket_id"].as_str().unwrap()
    )))
    .await;
    assert_eq!(ticket.body["priority"], "high");
    assert!(
        django.chat_calls(ChatEndpoint::ManageService).is_empty(),
        "not before the customer's word"
    );

    c.send(json!({"type": "action.confirm", "action_id": proposed["action_id"], "accept": true}))
        .await;
    let result = message_from(&mut c, "system").await;
    assert_eq!(result["text"], "reset_password done for auth");
    let calls = django.chat_calls(ChatEndpoint::ManageService);
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].body["params"]["to"], "ada@example.com");
    c.send(json!({"type": "action.confirm", "action_id": proposed["action_id"], "accept": true}))
        .await;
    assert_eq!(c.expect("error").await["code"], "unknown_action");

    say(&mut c, "m-2", "I want a refund").await;
    message_from(&mut c, "ai").await;
    let queued = c.expect("session.queued").await;
    assert_eq!(queued["reason"], "billing dispute");
    // Queued: the AI answers no more.
    say(&mut c, "m-3", "hello?").await;
    c.send(json!({"type": "ping"})).await;
    c.expect("pong").await;
    assert_eq!(django.chat_calls(ChatEndpoint::AiRespond).len(), 2);
    app.stop().await.expect("clean stop");
}

#[actix_rt::test]
async fn a_service_action_django_answers_ok_without_a_message_tells_the_customer_it_was_done() {
    let django = FakeDjango::start();
    django.push_chat(
        ChatEndpoint::AiRespond,
        Behavior::Json(json!({
            "reply": "Restarting it.", "confidence": 0.9, "handoff": false,
            "actions": [{"type": "manage_service", "service": "vpn", "operation": "restart"}]
        })),
    );
    django.push_chat(
        ChatEndpoint::ManageService,
        Behavior::Json(json!({"ok": true})),
    );
    let app = chat_app(&django, "");
    let (mut c, _) = ChatClient::start(app.chat_addr).await;
    say(&mut c, "m-1", "My VPN is stuck").await;
    assert_eq!(message_from(&mut c, "ai").await["text"], "Restarting it.");
    let result = message_from(&mut c, "system").await;
    assert_eq!(result["text"], "Done: `restart` on your vpn service.");
    let calls = django.chat_calls(ChatEndpoint::ManageService);
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].body["params"], json!({}), "an object, never null");
    app.stop().await.expect("clean stop");
}

#[actix_rt::test]
async fn bad_frames_get_error_frames_and_the_session_goes_on() {
    let django = FakeDjango::start();
    let app = chat_app(&django, "max_message_chars = 10");
    let (mut c, _) = ChatClient::start(app.chat_addr).await;
    for (frame, code) in [
        ("not json", "malformed_frame"),
        (r#"{"no":"type"}"#, "malformed_frame"),
        (r#"{"type":"launch.rocket"}"#, "unknown_type"),
        (r#"{"type":"message.send","text":"x"}"#, "invalid_frame"),
        (
            r#"{"type":"message.send","client_id":"a","text":"far too long a text"}"#,
            "invalid_frame",
        ),
        (
            r#"{"type":"message.send","client_id":"a","text":"nul\u0000"}"#,
            "invalid_frame",
        ),
        (r#"{"type":"session.start"}"#, "already_started"),
    ] {
        c.send_text(frame.to_string()).await;
        assert_eq!(c.expect("error").await["code"], code, "{frame}");
    }
    assert_eq!(say(&mut c, "ok", "still here").await, 1);
    app.stop().await.expect("clean stop");
}

#[actix_rt::test]
async fn protocol_violations_close_with_the_documented_codes() {
    let django = FakeDjango::start();
    let app = chat_app(
        &django,
        "max_frame_bytes = 1024\nmax_message_chars = 64\nhandshake_timeout_ms = 300",
    );

    // A frame before any session.
    let mut early = ChatClient::connect(app.chat_addr).await;
    early
        .send(json!({"type": "message.send", "client_id": "x", "text": "hi"}))
        .await;
    assert_eq!(early.expect("error").await["code"], "no_session");
    assert_eq!(early.until_closed().await, Ended::Closed(1008));

    // Silence after the upgrade.
    let mut silent = ChatClient::connect(app.chat_addr).await;
    assert_eq!(silent.until_closed().await, Ended::Closed(1008));

    // Oversized frame, invalid UTF-8, binary.
    for (frame, code) in [
        (raw_frame(1, &vec![b'a'; 4096]), 1009u16),
        (raw_frame(1, &[0xff, 0xfe, 0xfd]), 1007),
        (raw_frame(2, b"\x00\x01"), 1003),
    ] {
        let mut raw = RawClient::connect(app.chat_addr).await;
        raw.write(&raw_frame(1, br#"{"type":"session.start"}"#))
            .await;
        raw.write(&frame).await;
        let (closed, texts) = raw.until_close().await;
        assert_eq!(closed, code, "frames before the close: {texts:?}");
    }
    app.stop().await.expect("clean stop");
}

#[actix_rt::test]
async fn the_heartbeat_pings_once_per_interval_however_often_the_registry_sweeps() {
    let django = FakeDjango::start();
    // Ticks come every 20 ms (the sweep); pings must come every 400 ms (the heartbeat).
    let app = chat_app(
        &django,
        "heartbeat_interval_ms = 400\nheartbeat_timeout_ms = 5000\nsweep_interval_ms = 20",
    );
    let mut raw = RawClient::connect(app.chat_addr).await;
    raw.write(&raw_frame(1, br#"{"type":"session.start"}"#))
        .await;
    // A lower bound only: a slow machine can space pings further apart, never closer.
    let first = raw.next_ping().await;
    let second = raw.next_ping().await;
    let gap = second.duration_since(first);
    assert!(
        gap >= std::time::Duration::from_millis(350),
        "pings {gap:?} apart at a 400 ms heartbeat"
    );
    app.stop().await.expect("clean stop");
}

#[actix_rt::test]
async fn over_the_rate_limit_a_frame_is_refused_and_nothing_else_breaks() {
    let django = FakeDjango::start();
    let app = chat_app(&django, "rate_per_sec = 1\nrate_burst = 3");
    let (mut c, _) = ChatClient::start(app.chat_addr).await;
    for i in 0..6 {
        c.send(json!({"type": "typing", "active": i % 2 == 0}))
            .await;
    }
    assert_eq!(c.expect("error").await["code"], "rate_limited");
    let text = scrape(&app).await;
    assert!(metric(&text, "switchboard_chat_rate_limited_total", &[]).unwrap_or(0.0) >= 1.0);
    app.stop().await.expect("clean stop");
}

#[actix_rt::test]
async fn admission_control_answers_503_with_retry_after_and_origins_are_checked() {
    let django = FakeDjango::start();
    let app = chat_app(
        &django,
        "admission_per_sec = 1\nadmission_burst = 2\nallowed_origins = [\"https://support.example.com\"]",
    );
    let origin = [("Origin", "https://support.example.com")];
    assert_eq!(
        ChatClient::connect_with(app.chat_addr, &[("Origin", "https://evil.example.com")])
            .await
            .err(),
        Some(403)
    );
    let _a = ChatClient::connect_with(app.chat_addr, &origin)
        .await
        .unwrap();
    let _b = ChatClient::connect_with(app.chat_addr, &origin)
        .await
        .unwrap();
    let refused = ChatClient::connect_with(app.chat_addr, &origin).await.err();
    assert_eq!(refused, Some(503));
    let health = get(&app.chat_url("/healthz")).await;
    assert_eq!(health.status, 200);
    let other = get(&app.chat_url("/nope")).await;
    assert_eq!((other.status, other.error_code()), (404, "not_found"));
    let text = scrape(&app).await;
    assert!(
        metric(
            &text,
            "switchboard_chat_admission_refusals_total",
            &[("reason", "rate")]
        )
        .unwrap_or(0.0)
            >= 1.0
    );
    app.stop().await.expect("clean stop");
}

#[actix_rt::test]
async fn a_client_that_does_not_read_is_disconnected_and_its_session_survives() {
    let django = FakeDjango::start();
    // Replies big enough to fill the socket buffers after a few.
    // (200 KiB: each AI call carries the last reply as history, and the fake takes 256 KiB.)
    let big = "x".repeat(200 << 10);
    django.set_chat_default(
        ChatEndpoint::AiRespond,
        Behavior::Json(
            json!({"reply": big, "confidence": 1.0, "handoff": false, "suggested_actions": []}),
        ),
    );
    let app = chat_app(
        &django,
        "outbound_queue_bytes = 65536\nhistory_max_bytes = 65536\nhistory_max = 1000\nai_history = 1\n[agents]\nhistory_max_bytes = 65536\nhistory_page_bytes = 32768",
    );
    let (mut c, started) = ChatClient::start(app.chat_addr).await;
    let u = app.url("/metrics");
    let slow = || {
        let u = u.clone();
        async move {
            metric(
                &get(&u).await.text,
                "switchboard_chat_slow_consumer_disconnects_total",
                &[],
            )
            .unwrap_or(0.0)
                >= 1.0
        }
    };
    // One message per AI reply, reading nothing back, until the server gives up on the client.
    let mut disconnected = false;
    for i in 0..160 {
        c.send(json!({"type": "message.send", "client_id": format!("m{i}"), "text": "more"}))
            .await;
        let d = &django;
        // Once the server has given up on the client, a message sent after is never read.
        eventually("the AI was asked, or the client dropped", || async move {
            d.chat_calls(ChatEndpoint::AiRespond).len() > i || slow().await
        })
        .await;
        if slow().await {
            disconnected = true;
            break;
        }
    }
    assert!(disconnected, "32 MiB unread and still connected");
    drop(c.into_inner());
    // The session survived: it resumes.
    let mut back = ChatClient::resume(app.chat_addr, &started, 1).await;
    back.expect("session.resumed").await;
    app.stop().await.expect("clean stop");
}

#[actix_rt::test]
async fn a_customer_token_names_the_customer_and_a_bad_one_is_refused() {
    let django = FakeDjango::start();
    let secret = "0123456789abcdef0123456789abcdef";
    let app = chat_app(&django, &format!("jwt_secret = \"{secret}\""));
    let exp = chrono::Utc::now().timestamp() + 600;
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({"sub": "c-42", "name": "Ada", "email": "ada@example.com", "exp": exp}),
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap();
    let mut c = ChatClient::connect(app.chat_addr).await;
    c.send(json!({"type": "session.start", "token": token}))
        .await;
    let started = c.expect("session.started").await;
    assert_eq!(started["customer"], "Ada");
    say(&mut c, "m-1", "hi").await;
    message_from(&mut c, "ai").await;
    let call = &django.chat_calls(ChatEndpoint::AiRespond)[0];
    assert_eq!(call.body["customer"]["id"], "c-42");
    assert_eq!(call.body["customer"]["email"], "ada@example.com");

    let mut bad = ChatClient::connect(app.chat_addr).await;
    bad.send(json!({"type": "session.start", "token": "not.a.token"}))
        .await;
    assert_eq!(bad.expect("error").await["code"], "unauthorized");
    assert_eq!(bad.until_closed().await, Ended::Closed(1008));
    app.stop().await.expect("clean stop");
}

#[actix_rt::test]
async fn a_silent_connection_is_closed_after_the_heartbeat_timeout_and_idle_sessions_end() {
    let django = FakeDjango::start();
    // Pings every 50 ms; a client that answers none is closed after 200 ms.
    let app = chat_app(
        &django,
        "heartbeat_interval_ms = 50\nheartbeat_timeout_ms = 200\nsweep_interval_ms = 50",
    );
    let mut raw = RawClient::connect(app.chat_addr).await;
    raw.write(&raw_frame(1, br#"{"type":"session.start"}"#))
        .await;
    // RawClient never answers pings.
    let (code, texts) = raw.until_close().await;
    assert_eq!(code, 4000, "frames before: {texts:?}");
    app.stop().await.expect("clean stop");

    // A session without a customer frame for idle_timeout_ms is closed with its reason.
    let app = chat_app(
        &django,
        "idle_timeout_ms = 300\nhibernate_after_ms = 100\nheartbeat_interval_ms = 50\nheartbeat_timeout_ms = 60000\nsweep_interval_ms = 50",
    );
    let (mut c, _) = ChatClient::start(app.chat_addr).await;
    let closed = c.expect("session.closed").await;
    assert_eq!(closed["reason"], "idle_timeout");
    assert_eq!(c.until_closed().await, Ended::Closed(1000));
    app.stop().await.expect("clean stop");
}

#[actix_rt::test]
async fn a_panicking_session_restarts_from_its_kept_state_and_no_other_session_notices() {
    let django = FakeDjango::start();
    let app = chat_app(&django, "");
    let (mut a, started) = ChatClient::start(app.chat_addr).await;
    let (mut b, _) = ChatClient::start(app.chat_addr).await;
    say(&mut a, "a-1", "before the crash").await;
    message_from(&mut a, "ai").await;

    let id = started["session_id"].as_str().unwrap();
    let hit = post(
        &app.url(&format!("/api/v1/debug/chat/{id}/panic")),
        &json!({}),
    )
    .await;
    assert_eq!(hit.status, 202, "{}", hit.text);
    assert_eq!(a.until_closed().await, Ended::Closed(1011));

    // The other session never noticed.
    assert_eq!(say(&mut b, "b-1", "still fine?").await, 1);
    assert_eq!(
        message_from(&mut b, "ai").await["text"],
        "You said: still fine?"
    );

    // The restarted session kept its history: a resume replays it, and numbering goes on.
    let mut back = ChatClient::resume(app.chat_addr, &started, 0).await;
    assert_eq!(back.expect("session.resumed").await["seq"], 2);
    assert_eq!(back.expect("message").await["text"], "before the crash");
    assert_eq!(say(&mut back, "a-2", "after").await, 3);
    let text = scrape(&app).await;
    assert!(
        metric(
            &text,
            "switchboard_actor_restarts_total",
            &[("kind", "session"), ("cause", "panic")]
        )
        .unwrap_or(0.0)
            >= 1.0
    );
    app.stop().await.expect("clean stop");
}

#[actix_rt::test]
async fn readiness_covers_the_chat_listener_and_typing_is_shown_while_the_ai_answers() {
    let django = FakeDjango::start();
    let app = chat_app(&django, "");
    let ready = get(&app.url("/readyz")).await;
    assert_eq!(ready.status, 200, "{}", ready.text);
    assert_eq!(ready.body["chat"]["listener"], "up");
    assert!(
        ready.body["django"]["calls"]["breaker"].is_string(),
        "the AI's lane is reported"
    );

    let (mut c, _) = ChatClient::start(app.chat_addr).await;
    c.send(json!({"type": "typing", "active": true})).await;
    say(&mut c, "m-1", "hello").await;
    message_from(&mut c, "ai").await;
    let typing: Vec<_> = c.seen.iter().filter(|f| f["type"] == "typing").collect();
    assert_eq!(
        typing.first().map(|t| t["active"].clone()),
        Some(json!(true))
    );
    assert_eq!(typing[0]["from"], "ai");
    let ready = get(&app.url("/readyz")).await;
    assert_eq!(ready.body["chat"]["sessions"], 1);
    app.stop().await.expect("clean stop");
}

#[actix_rt::test]
async fn resuming_on_a_second_connection_takes_the_session_from_the_first() {
    let django = FakeDjango::start();
    let app = chat_app(&django, "");
    let (mut first, started) = ChatClient::start(app.chat_addr).await;
    say(&mut first, "m-1", "from the laptop").await;
    message_from(&mut first, "ai").await;

    let mut second = ChatClient::resume(app.chat_addr, &started, 2).await;
    assert_eq!(second.expect("session.resumed").await["seq"], 2);
    assert_eq!(first.until_closed().await, Ended::Closed(4009));
    // The first connection's end does not detach the second.
    assert_eq!(say(&mut second, "m-2", "from the phone").await, 3);
    assert_eq!(message_from(&mut second, "ai").await["seq"], 4);
    app.stop().await.expect("clean stop");
}
