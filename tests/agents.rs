//! Human agents over real WebSocket connections to `/ws/agent`, with customers on `/ws/chat` and the
//! fake Django answering the AI: sign-in refusals, join and leave, messages and typing both ways,
//! the AI silent while an agent holds a chat (a late AI reply included), racing claims, queue order,
//! capacity and positions, requeue when an agent drops or dies silently, presence, resume, token
//! expiry, and what reaches Django.

mod support;

use jsonwebtoken::{encode, EncodingKey, Header};
use serde_json::{json, Value};
use support::fake_django::{Behavior, ChatEndpoint, FakeDjango};
use support::ws::{expect_for, say, ChatClient, Ended};
use support::*;

const SECRET: &str = "agents-secret-agents-secret-0123";

fn token_with(claims: Value, secret: &str) -> String {
    encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

fn token(sub: &str, exp_in: i64) -> String {
    let exp = chrono::Utc::now().timestamp() + exp_in;
    token_with(
        json!({"sub": sub, "name": format!("Agent {sub}"), "role": "agent", "exp": exp}),
        SECRET,
    )
}

fn app_with(django: &FakeDjango, agents: &str, sessions: &str) -> TestApp {
    spawn_app(&format!(
        "{}\n[agents]\njwt_secret = \"{SECRET}\"\n{agents}\n[sessions]\n{sessions}",
        django
            .config("flush_ms = 20\nretry_base_ms = 5\nretry_max_ms = 50\ndrain_timeout_ms = 200")
    ))
}

/// Connects agent `sub` and sends `agent.start` with `start`'s fields; returns it after `agent.ready`.
async fn agent(app: &TestApp, sub: &str, start: Value) -> (ChatClient, Value) {
    let bearer = format!("Bearer {}", token(sub, 3600));
    let mut a = ChatClient::connect_to(app.chat_addr, "/ws/agent", &[("Authorization", &bearer)])
        .await
        .expect("agent accepted");
    let mut frame = json!({"type": "agent.start"});
    if let (Some(f), Some(extra)) = (frame.as_object_mut(), start.as_object()) {
        f.extend(extra.clone());
    }
    a.send(frame).await;
    let ready = a.expect("agent.ready").await;
    (a, ready)
}

/// A customer whose first message makes the AI hand off: returns them once `session.queued` came.
async fn queued_customer(app: &TestApp, django: &FakeDjango) -> (ChatClient, Value) {
    django.push_chat(
        ChatEndpoint::AiRespond,
        Behavior::Json(json!({
            "reply": "A colleague will take over.", "confidence": 0.5, "handoff": true,
            "suggested_actions": []
        })),
    );
    let (mut c, started) = ChatClient::start(app.chat_addr).await;
    say(&mut c, "q-1", "I want a human").await;
    c.expect("session.queued").await;
    (c, started)
}

/// The next `session.event` for `id` whose inner frame is of `inner` type.
async fn event(a: &mut ChatClient, id: &Value, inner: &str) -> Value {
    loop {
        let f = expect_for(a, "session.event", id).await;
        if f["event"]["type"] == inner {
            return f;
        }
    }
}

/// The next `agent.presence` about agent `sub`.
async fn presence_of(a: &mut ChatClient, sub: &str) -> Value {
    loop {
        let f = a.expect("agent.presence").await;
        if f["agent"]["agent_id"] == sub {
            return f["agent"].clone();
        }
    }
}

#[actix_rt::test]
async fn agent_sign_in_is_refused_with_a_documented_status_for_each_bad_token() {
    let django = FakeDjango::start();
    let app = app_with(&django, "", "");
    let path = "/ws/agent";
    let with = |t: String| format!("Bearer {t}");
    let exp = chrono::Utc::now().timestamp() + 600;
    let cases = [
        (None, 401),
        (Some(with("not-a-jwt".into())), 401),
        (
            Some(with(token_with(
                json!({"sub": "a", "role": "agent", "exp": exp}),
                "another-secret-another-secret-00",
            ))),
            401,
        ),
        (Some(with(token("a", -60))), 401),
        (
            Some(with(token_with(
                json!({"sub": "c", "role": "customer", "exp": exp}),
                SECRET,
            ))),
            403,
        ),
    ];
    for (auth, status) in cases {
        let headers: Vec<(&str, &str)> = auth
            .as_deref()
            .map(|a| vec![("Authorization", a)])
            .unwrap_or_default();
        let refused = ChatClient::connect_to(app.chat_addr, path, &headers).await;
        assert_eq!(refused.err(), Some(status), "{auth:?}");
    }
    // The body says why, in the documented shape.
    let raw = raw_get(
        app.chat_addr,
        &format!("/ws/agent?access_token={}", token("a", -60)),
    )
    .await;
    assert!(raw.starts_with("HTTP/1.1 401"), "{raw}");
    assert!(raw.contains(r#""code":"token_expired""#), "{raw}");

    // A valid token in the query string (browsers cannot set headers) signs in.
    let mut a = ChatClient::connect_to(
        app.chat_addr,
        &format!("/ws/agent?access_token={}", token("a", 600)),
        &[],
    )
    .await
    .expect("query token accepted");
    a.send(json!({"type": "agent.start"})).await;
    let ready = a.expect("agent.ready").await;
    assert_eq!(ready["agent_id"], "a");
    assert_eq!(ready["name"], "Agent a");
    assert_eq!(ready["presence"], "online");
    app.stop().await.unwrap();
}

/// A raw GET, to read a refusal's body.
async fn raw_get(addr: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Protocol: switchboard.v1\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    tokio::time::timeout(WAIT, s.read_to_string(&mut out))
        .await
        .expect("answer within the wait")
        .unwrap();
    out
}

#[actix_rt::test]
async fn an_agent_joins_talks_sees_typing_keeps_the_ai_silent_and_leaves() {
    let django = FakeDjango::start();
    let app = app_with(&django, "", "");
    let (mut a, ready) = agent(&app, "ann", json!({"auto_assign": false})).await;
    assert_eq!(ready["auto_assign"], false);
    let (mut c, started) = queued_customer(&app, &django).await;
    let id = started["session_id"].clone();

    // Manual pick: the agent sees the queue and claims from it.
    let listed = loop {
        let q = a.expect("queue.updated").await;
        if q["waiting"].as_array().is_some_and(|w| !w.is_empty()) {
            break q;
        }
    };
    assert_eq!(listed["waiting"][0]["session_id"], id);
    assert_eq!(listed["waiting"][0]["position"], 1);
    a.send(json!({"type": "session.join", "session_id": id}))
        .await;
    let assigned = expect_for(&mut a, "session.assigned", &id).await;
    assert_eq!(assigned["by"], "join");
    let history = assigned["history"].as_array().unwrap();
    assert!(
        history
            .iter()
            .any(|f| f["type"] == "message" && f["text"] == "I want a human"),
        "the agent sees the chat so far: {history:?}"
    );
    let joined = c.expect("agent.joined").await;
    assert_eq!(joined["name"], "Agent ann");
    assert!(joined["seq"].as_u64().is_some());

    // Agent → customer, with the agent's name; acked with the session seq.
    a.send(json!({"type": "message.send", "session_id": id, "client_id": "a-1", "text": "Hi, I'm Ann"}))
        .await;
    let ack = expect_for(&mut a, "message.ack", &id).await;
    let m = c.expect("message").await;
    assert_eq!(
        (&m["from"], &m["name"], &m["text"]),
        (&json!("agent"), &json!("Agent ann"), &json!("Hi, I'm Ann"))
    );
    assert_eq!(m["seq"], ack["seq"]);

    // Typing both ways.
    a.send(json!({"type": "typing", "session_id": id, "active": true}))
        .await;
    let t = c.expect("typing").await;
    assert_eq!((&t["from"], &t["active"]), (&json!("agent"), &json!(true)));
    c.send(json!({"type": "typing", "active": true})).await;
    let t = expect_for(&mut a, "session.typing", &id).await;
    assert_eq!(t["active"], true);

    // Customer → agent, and no AI call while the agent holds the chat.
    let ai_calls = django.chat_calls(ChatEndpoint::AiRespond).len();
    say(&mut c, "c-2", "Thanks Ann").await;
    let e = event(&mut a, &id, "message").await;
    assert_eq!(
        (&e["event"]["from"], &e["event"]["text"]),
        (&json!("customer"), &json!("Thanks Ann"))
    );
    assert_eq!(django.chat_calls(ChatEndpoint::AiRespond).len(), ai_calls);

    // Someone else cannot write into it.
    let (mut b, _) = agent(&app, "bob", json!({"auto_assign": false})).await;
    b.send(json!({"type": "message.send", "session_id": id, "client_id": "b-1", "text": "me too"}))
        .await;
    let err = b.expect("error").await;
    assert_eq!(err["code"], "not_joined");

    // Leave: the customer is told, and the AI answers again (agents.on_leave = "ai").
    a.send(json!({"type": "session.leave", "session_id": id}))
        .await;
    let released = expect_for(&mut a, "session.released", &id).await;
    assert_eq!(released["reason"], "left");
    c.expect("agent.left").await;
    say(&mut c, "c-3", "Still there?").await;
    loop {
        let m = c.expect("message").await;
        if m["from"] == "ai" {
            assert_eq!(m["text"], "You said: Still there?");
            break;
        }
    }
    app.stop().await.unwrap();
}

#[actix_rt::test]
async fn a_late_ai_reply_after_an_agent_took_the_chat_never_reaches_the_customer() {
    let django = FakeDjango::start();
    let app = app_with(&django, "", "");
    let (mut a, _) = agent(&app, "ann", json!({"auto_assign": false})).await;
    django.push_chat(ChatEndpoint::AiRespond, Behavior::Stall);
    let (mut c, started) = ChatClient::start(app.chat_addr).await;
    let id = started["session_id"].clone();
    say(&mut c, "c-1", "Hello?").await;
    eventually("the AI call is out", || async {
        django.chat_calls(ChatEndpoint::AiRespond).len() == 1
    })
    .await;

    // The agent takes the chat from the AI while its answer is still owed.
    a.send(json!({"type": "session.join", "session_id": id}))
        .await;
    expect_for(&mut a, "session.assigned", &id).await;
    c.expect("agent.joined").await;
    let discarded = |text: String| {
        metric(
            &text,
            "switchboard_chat_ai_calls_total",
            &[("outcome", "discarded")],
        )
        .unwrap_or(0.0)
    };
    let before = discarded(scrape(&app).await);
    django.release();
    eventually("the late AI answer reached the session", || async {
        discarded(scrape(&app).await) > before
    })
    .await;
    a.send(
        json!({"type": "message.send", "session_id": id, "client_id": "a-1", "text": "Ann here"}),
    )
    .await;
    let m = c.expect("message").await;
    assert_eq!(m["from"], "agent", "the late AI reply must not come first");
    assert!(
        !c.seen
            .iter()
            .any(|f| f["type"] == "message" && f["from"] == "ai"),
        "no AI message while an agent holds the chat: {:?}",
        c.seen
    );
    app.stop().await.unwrap();
}

#[actix_rt::test]
async fn of_two_agents_claiming_one_session_at_once_exactly_one_wins() {
    let django = FakeDjango::start();
    let app = app_with(&django, "", "");
    let (mut a, _) = agent(&app, "ann", json!({"auto_assign": false})).await;
    let (mut b, _) = agent(&app, "bob", json!({"auto_assign": false})).await;
    let (mut c, started) = queued_customer(&app, &django).await;
    let id = started["session_id"].clone();
    let join = json!({"type": "session.join", "session_id": id});
    tokio::join!(a.send(join.clone()), b.send(join));

    async fn outcome(x: &mut ChatClient) -> String {
        loop {
            let f = x.next().await.expect("open");
            match f["type"].as_str() {
                Some("session.assigned") => return "won".into(),
                Some("error") => return f["code"].as_str().unwrap().to_string(),
                _ => {}
            }
        }
    }
    let (ra, rb) = tokio::join!(outcome(&mut a), outcome(&mut b));
    let mut got = [ra, rb];
    got.sort();
    assert_eq!(got, ["already_claimed".to_string(), "won".to_string()]);
    let joined = c.expect("agent.joined").await;
    assert!(joined["name"] == "Agent ann" || joined["name"] == "Agent bob");
    app.stop().await.unwrap();
}

#[actix_rt::test]
async fn the_queue_assigns_in_arrival_order_within_capacity_and_tells_positions() {
    let django = FakeDjango::start();
    let app = app_with(&django, "", "");
    let (mut c1, s1) = queued_customer(&app, &django).await;
    let (mut c2, s2) = queued_customer(&app, &django).await;
    let (mut c3, s3) = queued_customer(&app, &django).await;
    // No agent yet: each is told its place, and that nobody is online.
    let p = c3.expect("queue.position").await;
    assert_eq!(
        (&p["position"], &p["agents_online"]),
        (&json!(3), &json!(false))
    );
    assert!(c3.seen.iter().any(|f| f["type"] == "message"
        && f["from"] == "system"
        && f["text"].as_str().unwrap().contains("No agent is online")));

    // An agent with room for two takes the two oldest. Both claims run at once, each on its
    // session's chat thread, so their `session.assigned` may reach the agent in either order.
    let (mut a, _) = agent(&app, "ann", json!({"capacity": 2})).await;
    let first = a.expect("session.assigned").await;
    let second = a.expect("session.assigned").await;
    let mut got = [first["session_id"].clone(), second["session_id"].clone()];
    got.sort_by_key(|v| v.to_string());
    let mut want = [s1["session_id"].clone(), s2["session_id"].clone()];
    want.sort_by_key(|v| v.to_string());
    assert_eq!(got, want);
    assert_eq!(
        (&first["by"], &second["by"]),
        (&json!("queue"), &json!("queue"))
    );
    c1.expect("agent.joined").await;
    c2.expect("agent.joined").await;
    // The third moved to the front and is told so; customers saw an agent come online.
    loop {
        let p = c3.expect("queue.position").await;
        if p["position"] == 1 {
            break;
        }
    }
    assert!(
        c3.seen
            .iter()
            .any(|f| f["type"] == "presence" && f["agents_online"] == true)
            || c3.expect("presence").await["agents_online"] == true
    );

    // Room again once the agent leaves one: the third is next.
    a.send(json!({"type": "session.leave", "session_id": s1["session_id"]}))
        .await;
    let third = a.expect("session.assigned").await;
    assert_eq!(third["session_id"], s3["session_id"]);
    c3.expect("agent.joined").await;
    app.stop().await.unwrap();
}

#[actix_rt::test]
async fn an_agent_who_drops_has_their_chats_requeued_and_another_takes_them() {
    let django = FakeDjango::start();
    let app = app_with(&django, "resume_grace_ms = 0", "");
    let (a, _) = agent(&app, "ann", json!({})).await;
    let (mut c, started) = queued_customer(&app, &django).await;
    c.expect("agent.joined").await;
    let mut a = a;
    a.expect("session.assigned").await;
    drop(a.into_inner()); // the socket closes with no WebSocket close
    let left = c.expect("agent.left").await;
    assert_eq!(left["name"], "Agent ann");
    c.expect("session.queued").await;

    let (mut b, _) = agent(&app, "bob", json!({})).await;
    let assigned = b.expect("session.assigned").await;
    assert_eq!(assigned["session_id"], started["session_id"]);
    let joined = c.expect("agent.joined").await;
    assert_eq!(joined["name"], "Agent bob");
    app.stop().await.unwrap();
}

#[actix_rt::test]
async fn an_agent_whose_socket_dies_silently_goes_offline_after_the_heartbeat_timeout() {
    let django = FakeDjango::start();
    let app = app_with(
        &django,
        "resume_grace_ms = 0\nheartbeat_interval_ms = 100\nheartbeat_timeout_ms = 400",
        "sweep_interval_ms = 100",
    );
    let (mut watcher, _) = agent(&app, "bob", json!({"auto_assign": false})).await;
    let (mut a, _) = agent(&app, "ann", json!({})).await;
    assert_eq!(presence_of(&mut watcher, "ann").await["presence"], "online");
    let (mut c, _) = queued_customer(&app, &django).await;
    a.expect("session.assigned").await;
    c.expect("agent.joined").await;
    // Stop reading: no pong ever answers the server's pings, and no close is sent.
    let silent = a.into_inner();
    loop {
        let p = presence_of(&mut watcher, "ann").await;
        if p["presence"] == "offline" {
            break;
        }
    }
    c.expect("agent.left").await;
    c.expect("session.queued").await;
    drop(silent);

    // The customer is kept company by the queue; the watcher can take the chat.
    let q = loop {
        let q = watcher.expect("queue.updated").await;
        if q["waiting"].as_array().is_some_and(|w| !w.is_empty()) {
            break q;
        }
    };
    assert_eq!(q["waiting"][0]["position"], 1);
    app.stop().await.unwrap();
}

#[actix_rt::test]
async fn a_reconnecting_agent_resumes_and_misses_nothing_in_order() {
    let django = FakeDjango::start();
    let app = app_with(&django, "resume_grace_ms = 60000", "");
    let (mut a, _) = agent(&app, "ann", json!({})).await;
    let (mut c, started) = queued_customer(&app, &django).await;
    let id = started["session_id"].clone();
    let assigned = a.expect("session.assigned").await;
    let last_seq = assigned["seq"].as_u64().unwrap();
    c.expect("agent.joined").await;
    a.close().await;

    say(&mut c, "c-2", "one").await;
    say(&mut c, "c-3", "two").await;
    let bearer = format!("Bearer {}", token("ann", 3600));
    let mut back =
        ChatClient::connect_to(app.chat_addr, "/ws/agent", &[("Authorization", &bearer)])
            .await
            .unwrap();
    back.send(json!({"type": "agent.resume", "last_seq": last_seq}))
        .await;
    let ready = back.expect("agent.ready").await;
    assert_eq!(ready["sessions"], json!([id]));
    assert_eq!(ready["presence"], "online");
    let one = event(&mut back, &id, "message").await;
    let two = event(&mut back, &id, "message").await;
    assert_eq!(
        (&one["event"]["text"], &two["event"]["text"]),
        (&json!("one"), &json!("two"))
    );
    assert_eq!(
        two["seq"].as_u64().unwrap(),
        one["seq"].as_u64().unwrap() + 1
    );
    assert!(
        !c.seen.iter().any(|f| f["type"] == "agent.left"),
        "within the grace the customer keeps their agent"
    );
    app.stop().await.unwrap();
}

#[actix_rt::test]
async fn an_agent_is_told_and_disconnected_when_their_token_expires() {
    let django = FakeDjango::start();
    let app = app_with(
        &django,
        "",
        "sweep_interval_ms = 100\nheartbeat_interval_ms = 100\nheartbeat_timeout_ms = 5000",
    );
    let bearer = format!("Bearer {}", token("ann", 2));
    let mut a = ChatClient::connect_to(app.chat_addr, "/ws/agent", &[("Authorization", &bearer)])
        .await
        .unwrap();
    a.send(json!({"type": "agent.start"})).await;
    a.expect("agent.ready").await;
    let err = a.expect("error").await;
    assert_eq!(err["code"], "token_expired");
    assert_eq!(a.until_closed().await, Ended::Closed(4011));
    app.stop().await.unwrap();
}

#[actix_rt::test]
async fn after_a_restart_no_agent_is_shown_online_until_they_reconnect() {
    let django = FakeDjango::start();
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "{}\n[agents]\njwt_secret = \"{SECRET}\"\nresume_grace_ms = 60000\n",
        django.config("flush_ms = 20")
    );
    let app = spawn_app_in(dir.path(), &config);
    let (_a, _) = agent(&app, "ann", json!({})).await;
    app.stop().await.unwrap();

    let app = spawn_app_in(dir.path(), &config);
    let (_b, ready) = agent(&app, "bob", json!({})).await;
    let names: Vec<_> = ready["agents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["agent_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["bob"], "no ghost of ann");
    let ready = get(&app.url("/readyz")).await;
    assert_eq!(ready.status, 200);
    assert_eq!(ready.body["chat"]["agents"], 1);
    assert_eq!(ready.body["chat"]["queue"], 0);
    let text = scrape(&app).await;
    assert!(metric(&text, "switchboard_agents", &[("presence", "online")]).is_some());
    assert!(text.contains("switchboard_chat_queue_length"));
    assert!(text.contains("switchboard_chat_handoffs_total"));
    app.stop().await.unwrap();
}

#[actix_rt::test]
async fn an_agent_can_open_a_ticket_from_the_chat_and_end_it() {
    let django = FakeDjango::start();
    let app = app_with(&django, "", "");
    let (mut a, _) = agent(&app, "ann", json!({})).await;
    let (mut c, started) = queued_customer(&app, &django).await;
    let id = started["session_id"].clone();
    a.expect("session.assigned").await;
    a.send(json!({"type": "ticket.create", "session_id": id, "subject": "Refund order 42", "priority": "high"}))
        .await;
    let created = expect_for(&mut a, "ticket.created", &id).await;
    let ticket_id = created["ticket_id"].as_str().unwrap().to_string();
    let t = c.expect("ticket.created").await;
    assert_eq!(t["ticket_id"], ticket_id);
    let rest = get(&app.url(&format!("/api/v1/tickets/{ticket_id}"))).await;
    assert_eq!(rest.status, 200);
    assert_eq!(rest.body["priority"], "high");
    assert_eq!(rest.body["chat_session_id"], id);

    a.send(json!({"type": "session.close", "session_id": id}))
        .await;
    let closed = c.expect("session.closed").await;
    assert_eq!(closed["reason"], "agent_closed");
    let released = expect_for(&mut a, "session.released", &id).await;
    assert_eq!(released["reason"], "closed");
    app.stop().await.unwrap();
}

#[actix_rt::test]
async fn handoffs_reach_django_through_the_outbox_requested_then_accepted() {
    let django = FakeDjango::start();
    let app = app_with(&django, "", "");
    let (_c, started) = queued_customer(&app, &django).await;
    let (mut a, _) = agent(&app, "ann", json!({})).await;
    a.expect("session.assigned").await;
    eventually("both handoff steps delivered", || async {
        django.chat_calls(ChatEndpoint::Handoff).len() >= 2
    })
    .await;
    let calls = django.chat_calls(ChatEndpoint::Handoff);
    let events: Vec<_> = calls.iter().map(|c| c.body["event"].clone()).collect();
    assert_eq!(
        events,
        [json!("handoff_requested"), json!("handoff_accepted")]
    );
    assert!(calls
        .iter()
        .all(|c| c.body["session_id"] == started["session_id"]));
    assert_eq!(calls[1].body["agent_id"], "ann");
    assert_eq!(calls[1].body["agent_name"], "Agent ann");
    assert!(calls[0].body["transcript"]
        .as_array()
        .is_some_and(|t| t.iter().any(|l| l["text"] == "I want a human")));
    assert!(calls.iter().all(|c| c.idempotency_key.is_some()));
    app.stop().await.unwrap();
}

#[actix_rt::test]
async fn bad_agent_frames_get_clear_errors_and_the_connection_goes_on() {
    let django = FakeDjango::start();
    let app = app_with(
        &django,
        "",
        "max_frame_bytes = 4096\nmax_message_chars = 320",
    );
    // Before agent.start: anything else is refused and the connection closed (1008).
    let bearer = format!("Bearer {}", token("ann", 3600));
    let mut early =
        ChatClient::connect_to(app.chat_addr, "/ws/agent", &[("Authorization", &bearer)])
            .await
            .unwrap();
    early
        .send(json!({"type": "session.join", "session_id": uuid::Uuid::new_v4()}))
        .await;
    assert_eq!(early.expect("error").await["code"], "no_session");
    assert_eq!(early.until_closed().await, Ended::Closed(1008));

    let (mut a, _) = agent(&app, "ann", json!({})).await;
    let unknown = uuid::Uuid::new_v4();
    let cases = [
        (json!("not json").to_string(), "malformed_frame"),
        (r#"{"type":"launch.rocket"}"#.to_string(), "unknown_type"),
        (
            json!({"type": "session.join", "session_id": "nope"}).to_string(),
            "invalid_frame",
        ),
        (
            json!({"type": "presence.set", "capacity": 0}).to_string(),
            "invalid_frame",
        ),
        (
            json!({"type": "message.send", "session_id": unknown, "client_id": "a-1", "text": "  "})
                .to_string(),
            "invalid_frame",
        ),
        (
            json!({"type": "message.send", "session_id": unknown, "client_id": "a-2", "text": "hi"})
                .to_string(),
            "not_joined",
        ),
        (
            json!({"type": "ticket.create", "session_id": unknown, "subject": "bad\u{0}"})
                .to_string(),
            "invalid_frame",
        ),
        (
            json!({"type": "session.join", "session_id": unknown}).to_string(),
            "unknown_session",
        ),
        (json!({"type": "agent.start"}).to_string(), "already_started"),
    ];
    for (frame, code) in cases {
        a.send_text(frame.clone()).await;
        assert_eq!(a.expect("error").await["code"], code, "{frame}");
    }
    // Still signed in and answering.
    a.send(json!({"type": "ping"})).await;
    a.expect("pong").await;
    // A frame over sessions.max_frame_bytes closes the connection (1009); the agent may resume.
    a.send_text(json!({"type": "ping", "pad": "x".repeat(8192)}).to_string())
        .await;
    assert_eq!(a.until_closed().await, Ended::Closed(1009));
    app.stop().await.unwrap();
}
