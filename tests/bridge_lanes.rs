//! The Django bridge's two lanes against a fake Django on a real socket: a slow AI never holds back
//! ticket sync, a sync backlog never delays an AI reply, a breaker open on one lane leaves the other
//! closed, a full lane refuses at once, and every call carries the request id that caused it.

mod support;

use serde_json::{json, Value};
use support::fake_django::{Behavior, ChatEndpoint, FakeDjango};
use support::*;

fn ai_request(message: &str) -> Value {
    json!({
        "session_id": "8f14e45f-ceea-467f-a0e6-3b1c2d4e5f60",
        "message_id": uuid::Uuid::new_v4(),
        "customer": {"id": "c-42", "name": "Ada", "email": "ada@example.com"},
        "message": message,
        "history": [{"role": "customer", "text": "Hello", "at": "2026-11-27T05:40:00.000Z"}]
    })
}

async fn ask_ai(app: &TestApp, message: &str, request_id: &str) -> Resp {
    request(
        "POST",
        &app.url("/api/v1/debug/django/ai-respond"),
        Some(&ai_request(message)),
        &[("X-Request-Id", request_id)],
    )
    .await
}

#[actix_rt::test]
async fn a_stalled_ai_never_holds_back_ticket_sync() {
    let mut django = FakeDjango::start();
    django.set_chat_default(ChatEndpoint::AiRespond, Behavior::Stall);
    let app =
        spawn_app(&django.config(
            "batch_max = 2\nflush_ms = 20\ncalls_timeout_ms = 60000\ncalls_max_in_flight = 4",
        ));
    // Four AI calls stall in Django, filling the calls lane.
    let url = app.url("/api/v1/debug/django/ai-respond");
    let stalled: Vec<_> = (0..4)
        .map(|i| {
            let url = url.clone();
            actix_rt::spawn(async move {
                request("POST", &url, Some(&ai_request(&format!("m{i}"))), &[]).await
            })
        })
        .collect();
    let calls = app.url("/readyz");
    eventually("four AI calls in flight", || {
        let url = calls.clone();
        async move { get(&url).await.body["django"]["calls"]["in_flight"] == 4 }
    })
    .await;
    // Ticket sync goes on regardless.
    let a = id_of(&create_ticket(&app, "a").await);
    let b = id_of(&create_ticket(&app, "b").await);
    django.wait_delivered(&[(a, 1), (b, 1)]).await;
    assert_eq!(django.chat_calls(ChatEndpoint::AiRespond).len(), 4);
    // A fifth AI call is refused at once, not queued behind the stalled ones.
    let refused = ask_ai(&app, "m5", "r-5").await;
    assert_eq!(
        (refused.status, refused.error_code()),
        (503, "django_busy"),
        "{}",
        refused.text
    );
    wait_metric(
        &app,
        "switchboard_bridge_refusals_total",
        &[("lane", "calls"), ("reason", "busy")],
        1.0,
    )
    .await;
    django.release();
    for call in stalled {
        assert_eq!(call.await.unwrap().status, 200);
    }
}

#[actix_rt::test]
async fn a_sync_backlog_never_delays_an_ai_reply() {
    let mut django = FakeDjango::start();
    django.set_default(Behavior::Stall);
    let config = django
        .config("batch_max = 1\nflush_ms = 20")
        .replace("timeout_ms = 1000", "timeout_ms = 120000");
    let app = spawn_app(&config);
    create_ticket(&app, "stuck").await;
    let stalled = django.next_call().await;
    assert_eq!(stalled.status, 0, "the sync lane is stuck on Django");
    for i in 0..5 {
        create_ticket(&app, &format!("backlog {i}")).await;
    }
    let answered = ask_ai(&app, "My invoice is wrong", "req-ai-1").await;
    assert_eq!(answered.status, 200, "{}", answered.text);
    assert_eq!(answered.body["reply"], "You said: My invoice is wrong");
    assert_eq!(answered.body["handoff"], false);
    let seen = django.chat_calls(ChatEndpoint::AiRespond);
    assert_eq!(seen[0].request_id.as_deref(), Some("req-ai-1"));
    assert_eq!(seen[0].authorization.as_deref(), Some("Token test-token"));
    assert_eq!(seen[0].body["customer"]["email"], "ada@example.com");
    assert_eq!(seen[0].body["history"][0]["role"], "customer");
    let ready = get(&app.url("/readyz")).await;
    assert_eq!(ready.body["django"]["sync"]["in_flight"], 1);
    assert_eq!(ready.body["django"]["calls"]["in_flight"], 0);
    let text = scrape(&app).await;
    assert!(
        metric(
            &text,
            "switchboard_django_request_duration_seconds_count",
            &[("lane", "calls"), ("endpoint", "ai_respond")]
        )
        .unwrap_or(0.0)
            >= 1.0,
        "AI calls timed per lane and endpoint"
    );
    django.release();
}

#[actix_rt::test]
async fn an_open_breaker_on_the_calls_lane_leaves_ticket_sync_flowing() {
    let mut django = FakeDjango::start();
    django.set_chat_default(ChatEndpoint::AiRespond, Behavior::Status(503));
    let app = spawn_app(&django.config(
        "batch_max = 1\nflush_ms = 20\ncalls_breaker_threshold = 2\ncalls_breaker_cooldown_ms = 600000",
    ));
    for _ in 0..2 {
        let failed = ask_ai(&app, "hello", "r").await;
        assert_eq!(
            (failed.status, failed.error_code()),
            (503, "django_unavailable")
        );
    }
    let refused = ask_ai(&app, "hello", "r").await;
    assert_eq!(refused.error_code(), "django_circuit_open");
    assert_eq!(django.chat_calls(ChatEndpoint::AiRespond).len(), 2);
    let id = id_of(&create_ticket(&app, "still synced").await);
    django.wait_delivered(&[(id, 1)]).await;
    let ready = get(&app.url("/readyz")).await;
    assert_eq!(ready.status, 200);
    assert_eq!(ready.body["django"]["calls"]["breaker"], "open");
    assert_eq!(ready.body["django"]["sync"]["breaker"], "closed");
    assert!(ready.body["django"]["calls"]["last_error"]
        .as_str()
        .unwrap()
        .contains("503"));
    // The gauges are process-wide and other tests in this binary move them at the same time, so
    // only their presence per lane is checked here; /readyz above gave this server's own values.
    let text = scrape(&app).await;
    for lane in ["calls", "sync"] {
        assert!(
            metric(&text, "switchboard_bridge_breaker_state", &[("lane", lane)]).is_some(),
            "no breaker gauge for the {lane} lane"
        );
    }
}

#[actix_rt::test]
async fn an_open_breaker_on_the_sync_lane_leaves_ai_replies_flowing() {
    let mut django = FakeDjango::start();
    django.set_default(Behavior::Status(502));
    let app = spawn_app(&django.config(
        "batch_max = 1\nflush_ms = 20\nretry_base_ms = 5\nretry_max_ms = 20\nbreaker_threshold = 2\nbreaker_cooldown_ms = 600000",
    ));
    create_ticket(&app, "refused").await;
    assert_eq!(django.next_call().await.status, 502);
    assert_eq!(django.next_call().await.status, 502);
    let url = app.url("/readyz");
    eventually("sync breaker open", || {
        let url = url.clone();
        async move { get(&url).await.body["django"]["sync"]["breaker"] == "open" }
    })
    .await;
    let answered = ask_ai(&app, "still there?", "r-2").await;
    assert_eq!(answered.status, 200, "{}", answered.text);
    let ready = get(&url).await;
    assert_eq!(ready.body["django"]["calls"]["breaker"], "closed");
    assert!(ready.body["django"]["calls"]["last_success_at"].is_string());
}

#[actix_rt::test]
async fn a_service_action_is_carried_out_once_with_its_request_id() {
    let django = FakeDjango::start();
    let app = spawn_app(&django.config("flush_ms = 3600000"));
    let action_id = uuid::Uuid::now_v7().to_string();
    let body = json!({
        "action_id": action_id,
        "session_id": "8f14e45f-ceea-467f-a0e6-3b1c2d4e5f60",
        "customer": {"id": "c-42", "name": "Ada", "email": "ada@example.com"},
        "service": "email",
        "operation": "reset_password",
        "params": {"send_link_to": "ada@example.com"}
    });
    let done = request(
        "POST",
        &app.url("/api/v1/debug/django/services-manage"),
        Some(&body),
        &[("X-Request-Id", "act-1")],
    )
    .await;
    assert_eq!(done.status, 200, "{}", done.text);
    assert_eq!(done.body["ok"], true);
    assert_eq!(done.body["message"], "reset_password done for email");
    let calls = django.chat_calls(ChatEndpoint::ManageService);
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].request_id.as_deref(), Some("act-1"));
    assert_eq!(calls[0].body["request_id"], "act-1");
    assert_eq!(
        calls[0].idempotency_key.as_deref(),
        Some(action_id.as_str())
    );

    django.push_chat(ChatEndpoint::ManageService, Behavior::Garbage200);
    let garbage = request(
        "POST",
        &app.url("/api/v1/debug/django/services-manage"),
        Some(&body),
        &[],
    )
    .await;
    assert_eq!(garbage.error_code(), "django_unavailable");
    let fresh = django.chat_calls(ChatEndpoint::ManageService)[1]
        .request_id
        .clone()
        .unwrap();
    assert_eq!(fresh.len(), 36, "a fresh id when the caller had none");
}

#[actix_rt::test]
async fn a_service_action_answered_ok_without_a_message_is_a_success_and_params_is_an_object() {
    let django = FakeDjango::start();
    django.push_chat(
        ChatEndpoint::ManageService,
        Behavior::Json(json!({"ok": true})),
    );
    let app = spawn_app(&django.config("flush_ms = 3600000"));
    let body = json!({
        "action_id": uuid::Uuid::now_v7().to_string(),
        "session_id": "8f14e45f-ceea-467f-a0e6-3b1c2d4e5f60",
        "customer": {"id": "c-42", "name": "Ada", "email": "ada@example.com"},
        "service": "vpn",
        "operation": "restart",
        "params": null
    });
    let done = request(
        "POST",
        &app.url("/api/v1/debug/django/services-manage"),
        Some(&body),
        &[],
    )
    .await;
    assert_eq!(done.status, 200, "{}", done.text);
    assert_eq!(done.body["ok"], true);
    let calls = django.chat_calls(ChatEndpoint::ManageService);
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].body["params"], json!({}));
}

#[actix_rt::test]
async fn a_ticket_write_reaches_django_with_the_request_id_that_caused_it() {
    let mut django = FakeDjango::start();
    let app = spawn_app(&django.config("batch_max = 1\nflush_ms = 3600000"));
    let created = request(
        "POST",
        &app.url("/api/v1/tickets"),
        Some(&json!({"subject": "traced", "requester": "alice@example.com"})),
        &[("X-Request-Id", "abc")],
    )
    .await;
    assert_eq!(created.status, 201);
    let call = django.next_call().await;
    let events = call.events();
    assert_eq!(events[0]["request_id"], "abc");
    assert_ne!(
        call.request_id.as_deref(),
        Some("abc"),
        "the batch has its own X-Request-Id"
    );
}

#[actix_rt::test]
async fn chat_tickets_are_created_idempotently_on_their_ticket_id() {
    use std::time::Duration;
    use switchboard::bridge::client::{AwcDjango, ChatTicketOutcome, DjangoApi};
    use switchboard::bridge::Lane;
    use switchboard::config::Settings;
    use switchboard::domain::ids::RequestId;
    use switchboard::store::ChatTicketRecord;

    let django = FakeDjango::start();
    let settings = Settings::from_toml(&django.config("")).unwrap();
    let api = AwcDjango::new(&settings.django, Lane::Sync, Duration::from_secs(5));
    let record: ChatTicketRecord = serde_json::from_value(json!({
        "session_id": "8f14e45f-ceea-467f-a0e6-3b1c2d4e5f60",
        "ticket_id": "01936f70-1d2e-7f30-8a41-6b7c8d9e0f12",
        "subject": "Wrong invoice amount",
        "description": "INV-1009 shows 120 EUR",
        "priority": "normal",
        "requester": "ada@example.com",
        "transcript": [{"role": "customer", "text": "Wrong amount", "at": "2026-11-27T05:40:10.000Z"}]
    }))
    .unwrap();
    let request = (&record).into();
    for _ in 0..2 {
        let outcome = api
            .create_chat_ticket(&request, &RequestId::from("esc-1"))
            .await;
        assert!(
            matches!(&outcome, ChatTicketOutcome::Created(c) if c.ticket_id == record.ticket_id),
            "201 then 200 are both success: {outcome:?}"
        );
    }
    django.push_chat(ChatEndpoint::ChatTicket, Behavior::Status(409));
    let refused = api
        .create_chat_ticket(&request, &RequestId::from("esc-2"))
        .await;
    assert!(matches!(
        refused,
        ChatTicketOutcome::Rejected { status: 409, .. }
    ));
    django.push_chat(ChatEndpoint::ChatTicket, Behavior::Status(503));
    let failed = api
        .create_chat_ticket(&request, &RequestId::from("esc-3"))
        .await;
    assert!(matches!(failed, ChatTicketOutcome::Failed(_)));
    let calls = django.chat_calls(ChatEndpoint::ChatTicket);
    assert_eq!(calls.len(), 4);
    assert_eq!(calls[0].request_id.as_deref(), Some("esc-1"));
    assert_eq!(
        calls[0].idempotency_key.as_deref(),
        Some("01936f70-1d2e-7f30-8a41-6b7c8d9e0f12")
    );
    assert_eq!(calls[0].body["transcript"][0]["role"], "customer");
    assert_eq!(calls[0].body["priority"], "normal");
}

#[actix_rt::test]
async fn a_chat_ticket_in_the_outbox_reaches_django_once_even_across_a_restart() {
    let django = FakeDjango::start();
    // Django is down while the record is enqueued: it must wait on disk.
    django.set_chat_default(ChatEndpoint::ChatTicket, Behavior::Status(503));
    let mut app = spawn_app(
        &django
            .config("flush_ms = 10\nretry_base_ms = 5\nretry_max_ms = 20\ndrain_timeout_ms = 100"),
    );
    let record = json!({
        "session_id": "8f14e45f-ceea-467f-a0e6-3b1c2d4e5f60",
        "ticket_id": "01936f70-1d2e-7f30-8a41-6b7c8d9e0f99",
        "subject": "Wrong invoice amount",
        "description": "INV-1009 shows 120 EUR",
        "priority": "high",
        "requester": "ada@example.com",
        "transcript": [{"role": "customer", "text": "My invoice is wrong", "at": "2026-11-27T05:40:10.000Z"}],
        "request_id": "chat-req-9"
    });
    let queued = post(&app.url("/api/v1/debug/outbox/chat-ticket"), &record).await;
    assert_eq!(queued.status, 202, "{}", queued.text);
    let d = &django;
    eventually("Django was tried", || async move {
        !d.chat_calls(ChatEndpoint::ChatTicket).is_empty()
    })
    .await;

    // A restart on the same disk, Django back: the record is delivered from the outbox.
    let dir = app.take_tempdir().expect("tempdir");
    app.stop().await.expect("clean stop");
    django.set_chat_default(ChatEndpoint::ChatTicket, Behavior::Ok);
    let app = spawn_app_in(dir.path(), &django.config("flush_ms = 10"));
    let outbox = app.url("/readyz");
    eventually("chat ticket delivered", || {
        let u = outbox.clone();
        async move { get(&u).await.body["outbox"]["depth"] == 0 }
    })
    .await;
    let calls = django.chat_calls(ChatEndpoint::ChatTicket);
    let last = calls.last().expect("a call");
    assert_eq!(last.body["ticket_id"], record["ticket_id"]);
    assert_eq!(last.body["transcript"][0]["text"], "My invoice is wrong");
    assert_eq!(last.request_id.as_deref(), Some("chat-req-9"));
    app.stop().await.expect("clean stop");
}
