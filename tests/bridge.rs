//! The DjangoBridge against a fake Django on a real socket: batching, coalescing, retries, the
//! circuit breaker, dead letters, fetching unknown tickets, and delivery across crashes and restarts.

mod support;

use std::collections::HashSet;

use serde_json::json;
use support::fake_django::{Behavior, FakeDjango, FetchReply};
use support::*;

#[actix_rt::test]
async fn bridge_flushes_when_the_batch_is_full_with_token_and_request_id() {
    let mut django = FakeDjango::start();
    let app = spawn_app(&django.config("batch_max = 3\nflush_ms = 3600000"));
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(id_of(&create_ticket(&app, &format!("t{i}")).await));
    }
    let call = django.next_call().await;
    assert_eq!(call.status, 200);
    let events = call.events();
    assert_eq!(events.len(), 3, "one full batch: {:?}", call.body);
    let sent: Vec<_> = events
        .iter()
        .map(|e| e["ticket_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(sent, ids);
    assert_eq!(call.authorization.as_deref(), Some("Token test-token"));
    assert!(call.request_id.is_some_and(|r| r.len() == 36));
    assert_eq!(
        call.idempotency_key.as_deref(),
        call.body["batch_id"].as_str()
    );
    // Milliseconds, as every timestamp in the contract: `2026-11-27T05:30:00.123Z`.
    let sent_at = call.body["sent_at"].as_str().unwrap();
    assert_eq!(sent_at.len(), 24, "{sent_at}");
    assert!(
        sent_at.ends_with('Z') && sent_at.as_bytes()[19] == b'.',
        "{sent_at}"
    );
    let e = &events[0];
    assert_eq!(e["kinds"], json!(["ticket.created"]));
    assert_eq!(e["version"], 1);
    assert_eq!(e["ticket"]["subject"], "t0");
    assert_eq!(e["coalesced_event_ids"], json!([e["event_id"]]));
}

#[actix_rt::test]
async fn bridge_flushes_on_the_timer_below_batch_max() {
    let mut django = FakeDjango::start();
    let app = spawn_app(&django.config("batch_max = 100\nflush_ms = 50"));
    let a = id_of(&create_ticket(&app, "a").await);
    let b = id_of(&create_ticket(&app, "b").await);
    django.wait_delivered(&[(a, 1), (b, 1)]).await;
    let ready = get(&app.url("/readyz")).await;
    assert_eq!(ready.body["django"]["configured"], true);
}

#[actix_rt::test]
async fn updates_of_one_ticket_in_a_batch_coalesce_to_its_latest_snapshot() {
    let mut django = FakeDjango::start();
    let app = spawn_app(&django.config("batch_max = 5\nflush_ms = 3600000"));
    let t = create_ticket(&app, "v1").await;
    let url = app.url(&format!("/api/v1/tickets/{}", id_of(&t)));
    patch(&url, &json!({"subject": "v2"}), None).await;
    patch(&url, &json!({"status": "in_progress"}), None).await;
    post(&format!("{url}/comments"), &json!({"body": "on it"})).await;
    patch(&url, &json!({"subject": "v5"}), None).await;
    let call = django.next_call().await;
    let events = call.events();
    assert_eq!(events.len(), 1, "five changes, one ticket, one item");
    let e = &events[0];
    assert_eq!(e["version"], 5);
    assert_eq!(e["ticket"]["subject"], "v5");
    assert_eq!(e["ticket"]["status"], "in_progress");
    assert_eq!(e["coalesced_event_ids"].as_array().unwrap().len(), 5);
    assert_eq!(e["event_id"], e["coalesced_event_ids"][4]);
    assert_eq!(e["comments"][0]["body"], "on it");
    assert_eq!(
        e["kinds"],
        json!([
            "ticket.created",
            "ticket.updated",
            "ticket.status_changed",
            "ticket.commented"
        ])
    );
}

#[actix_rt::test]
async fn failed_syncs_are_retried_with_the_same_event_id_until_delivered() {
    let mut django = FakeDjango::start();
    django.push(Behavior::Status(503));
    django.push(Behavior::Garbage);
    django.push(Behavior::Garbage200);
    django.push(Behavior::Stall);
    django.push(Behavior::Status(429));
    let app = spawn_app(&django.config(
        "batch_max = 10\nflush_ms = 20\nretry_base_ms = 5\nretry_max_ms = 50\nbreaker_threshold = 10",
    ));
    let id = id_of(&create_ticket(&app, "retry me").await);
    let mut seen = Vec::new();
    for expected in [503, 500, 299, 0, 429, 200] {
        let call = django.next_call().await;
        assert_eq!(call.status, expected);
        seen.push(call.events()[0]["event_id"].clone());
    }
    assert!(
        seen.windows(2).all(|w| w[0] == w[1]),
        "same idempotency key on every attempt"
    );
    assert_eq!(django.delivered()[0]["ticket_id"], json!(id));
    let url = app.url("/metrics");
    eventually("failures and the delivery counted", || {
        let url = url.clone();
        async move {
            let text = get(&url).await.text;
            ["5xx", "garbage", "timeout", "4xx"].iter().all(|reason| {
                metric(
                    &text,
                    "switchboard_django_failures_total",
                    &[("endpoint", "sync"), ("reason", reason)],
                )
                .unwrap_or(0.0)
                    >= 1.0
            }) && metric(&text, "switchboard_bridge_events_delivered_total", &[]).unwrap_or(0.0)
                >= 1.0
        }
    })
    .await;
}

#[actix_rt::test]
async fn circuit_breaker_opens_on_a_dead_django_then_a_probe_closes_it() {
    let mut django = FakeDjango::start();
    django.set_default(Behavior::Status(502));
    let app = spawn_app(&django.config(
        "batch_max = 10\nflush_ms = 20\nretry_base_ms = 5\nretry_max_ms = 20\nbreaker_threshold = 2\nbreaker_cooldown_ms = 500",
    ));
    let id = id_of(&create_ticket(&app, "breaker").await);
    assert_eq!(django.next_call().await.status, 502);
    assert_eq!(django.next_call().await.status, 502);
    let url = app.url("/readyz");
    eventually("breaker open", || {
        let url = url.clone();
        async move { get(&url).await.body["django"]["sync"]["breaker"] == "open" }
    })
    .await;
    let ready = get(&url).await;
    assert_eq!(
        ready.status, 200,
        "Django being down does not fail readiness"
    );
    assert_eq!(ready.body["outbox"]["depth"], 1);
    django.set_default(Behavior::Ok);
    let probe = django.next_call().await;
    assert_eq!(probe.status, 200);
    django.wait_delivered(&[(id, 1)]).await;
    eventually("breaker closed", || {
        let url = url.clone();
        async move { get(&url).await.body["django"]["sync"]["breaker"] == "closed" }
    })
    .await;
}

#[actix_rt::test]
async fn refused_events_are_dead_lettered_the_rest_delivered_and_retry_requeues() {
    let mut django = FakeDjango::start();
    let app = spawn_app(&django.config("batch_max = 3\nflush_ms = 3600000"));
    // Learn the ids first: the refusal names tickets.
    let t1 = id_of(&create_ticket(&app, "good 1").await);
    let bad_ticket = create_ticket(&app, "bad").await;
    let t2 = id_of(&bad_ticket);
    django.set_default(Behavior::RejectNamed(HashSet::from([t2.clone()])));
    let t3 = id_of(&create_ticket(&app, "good 2").await);

    let refused = django.next_call().await;
    assert_eq!(refused.status, 422);
    assert_eq!(refused.events().len(), 3);
    let resent = django.next_call().await;
    assert_eq!(resent.status, 200);
    let ids: Vec<_> = resent
        .events()
        .iter()
        .map(|e| e["ticket_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids, [t1, t3]);

    let dead = wait_dead_letters(&app, 1).await[0].clone();
    assert_eq!(dead["ticket_id"], json!(t2));
    assert_eq!(dead["status_code"], 422);
    assert!(dead["error"]
        .as_str()
        .unwrap()
        .contains("requester unknown"));
    wait_metric(&app, "switchboard_dead_letters_total", &[], 1.0).await;

    django.set_default(Behavior::Ok);
    let retry = post(
        &app.url(&format!("/api/v1/admin/dead-letters/{}/retry", dead["id"])),
        &json!({}),
    )
    .await;
    assert_eq!(retry.status, 202, "{}", retry.text);
    let missing = post(
        &app.url("/api/v1/admin/dead-letters/999999/retry"),
        &json!({}),
    )
    .await;
    assert_eq!(missing.status, 404);
    // Requeued entries go out on the next full batch or shutdown drain; stopping drains.
    app.stop().await.unwrap();
    let delivered = django.delivered();
    let again = delivered
        .iter()
        .find(|e| e["ticket_id"] == json!(t2))
        .expect("re-queued event delivered");
    assert_eq!(
        again["event_id"], dead["event_id"],
        "re-queued with its original event id"
    );
}

#[actix_rt::test]
async fn a_refusal_naming_no_event_is_bisected_down_to_the_bad_ticket() {
    let mut django = FakeDjango::start();
    let app = spawn_app(&django.config("batch_max = 4\nflush_ms = 3600000"));
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(id_of(&create_ticket(&app, &format!("t{i}")).await));
    }
    django.set_default(Behavior::RejectUnnamed(HashSet::from([ids[2].clone()])));
    ids.push(id_of(&create_ticket(&app, "t3").await));
    let want: Vec<_> = [0, 1, 3].iter().map(|i| (ids[*i].clone(), 1)).collect();
    django.wait_delivered(&want).await;
    let dead = wait_dead_letters(&app, 1).await;
    assert_eq!(dead[0]["ticket_id"], json!(ids[2]));
    assert!(!django
        .delivered()
        .iter()
        .any(|e| e["ticket_id"] == json!(ids[2])));
}

#[actix_rt::test]
async fn bridge_killed_mid_batch_restarts_and_every_event_reaches_django() {
    let mut django = FakeDjango::start();
    django.push(Behavior::Stall);
    // A long Django timeout: only the restart can resend the stalled batch in time.
    let config = django
        .config("batch_max = 2\nflush_ms = 3600000")
        .replace("timeout_ms = 1000", "timeout_ms = 120000");
    let app = spawn_app(&config);
    let a = id_of(&create_ticket(&app, "a").await);
    let b = id_of(&create_ticket(&app, "b").await);
    let stalled = django.next_call().await;
    assert_eq!(stalled.status, 0);
    let panicked = post(&app.url("/api/v1/debug/bridge/panic"), &json!({})).await;
    assert_eq!(panicked.status, 202);
    django
        .wait_delivered(&[(a.clone(), 1), (b.clone(), 1)])
        .await;
    let delivered = django.delivered();
    for e in stalled.events() {
        assert!(
            delivered.iter().any(|d| d["event_id"] == e["event_id"]),
            "resent with the same event id"
        );
    }
    let text = scrape(&app).await;
    assert!(
        metric(
            &text,
            "switchboard_actor_restarts_total",
            &[("kind", "bridge"), ("cause", "panic")]
        )
        .unwrap_or(0.0)
            >= 1.0
    );
    // The bridge still works after its restart. A full batch may not have formed (a cycle can start
    // between the two creates), so the shutdown drain sends whatever is left.
    let c = id_of(&create_ticket(&app, "c").await);
    let d = id_of(&create_ticket(&app, "d").await);
    app.stop().await.unwrap();
    let delivered = django.delivered();
    for id in [c, d] {
        assert!(
            delivered.iter().any(|e| e["ticket_id"] == json!(id)),
            "{id} delivered"
        );
    }
}

#[actix_rt::test]
async fn a_restarted_process_drains_the_outbox_it_left() {
    let mut django = FakeDjango::start();
    django.set_default(Behavior::Status(503));
    let config = django.config("batch_max = 10\nflush_ms = 20\nretry_base_ms = 5\nretry_max_ms = 20\ndrain_timeout_ms = 100");
    let mut first = spawn_app(&config);
    let dir = first.take_tempdir().unwrap();
    let ids: Vec<_> = {
        let mut ids = Vec::new();
        for i in 0..3 {
            ids.push(id_of(&create_ticket(&first, &format!("t{i}")).await));
        }
        ids
    };
    assert_eq!(django.next_call().await.status, 503);
    first.stop().await.unwrap();
    assert!(django.delivered().is_empty());

    django.set_default(Behavior::Ok);
    let second = spawn_app_in(dir.path(), &config);
    let want: Vec<_> = ids.iter().map(|i| (i.clone(), 1)).collect();
    django.wait_delivered(&want).await;
    let url = second.url("/readyz");
    eventually("outbox empty", || {
        let url = url.clone();
        async move { get(&url).await.body["outbox"]["depth"] == 0 }
    })
    .await;
}

#[actix_rt::test]
async fn graceful_shutdown_flushes_the_outbox() {
    let django = FakeDjango::start();
    let app = spawn_app(&django.config("batch_max = 100\nflush_ms = 3600000"));
    let a = id_of(&create_ticket(&app, "a").await);
    app.stop().await.unwrap();
    assert!(django
        .delivered()
        .iter()
        .any(|e| e["ticket_id"] == json!(a)));
}

#[actix_rt::test]
async fn unknown_tickets_are_fetched_from_django_and_imported_once() {
    let django = FakeDjango::start();
    let app = spawn_app(&django.config("batch_max = 100\nflush_ms = 3600000"));
    let id = "01936f5e-8a4b-7c3d-9e2f-123456789abc";
    django.set_ticket(
        id,
        FetchReply::Ticket(json!({
            "id": id, "subject": "From Django", "status": "pending", "priority": "urgent",
            "requester": "dora@example.com", "created_at": "2026-01-02T03:04:05.678Z",
            "updated_at": "2026-01-02T03:04:05.678Z", "version": 7, "unknown_field": true
        })),
    );
    let url = app.url(&format!("/api/v1/tickets/{id}"));
    let first = request("GET", &url, None, &[("X-Request-Id", "fetch-req-1")]).await;
    assert_eq!(first.status, 200, "{}", first.text);
    assert_eq!(
        django.fetch_request_ids(),
        [Some("fetch-req-1".to_string())],
        "the request that activated the ticket is named in Django's logs"
    );
    assert_eq!(first.body["subject"], "From Django");
    assert_eq!(first.body["version"], 7);
    assert_eq!(first.body["tags"], json!([]));
    assert_eq!(first.header("etag").as_deref(), Some("\"7\""));
    // Imported: it survives passivation without asking Django again.
    post(&app.url("/api/v1/debug/tickets/passivate"), &json!({})).await;
    let live = app.url("/api/v1/debug/tickets/live");
    eventually("passivated", || {
        let u = live.clone();
        async move { get(&u).await.body["live"] == 0 }
    })
    .await;
    assert_eq!(get(&url).await.body, first.body);
    assert_eq!(django.fetches(), [id]);
    let listed = get(&app.url("/api/v1/tickets?status=pending")).await;
    assert_eq!(listed.body["items"][0]["id"], id);

    let garbage = "01936f5e-8a4b-7c3d-9e2f-000000000001";
    django.set_ticket(garbage, FetchReply::Garbage);
    let resp = get(&app.url(&format!("/api/v1/tickets/{garbage}"))).await;
    assert_eq!(
        (resp.status, resp.error_code()),
        (503, "django_unavailable")
    );
    let down = "01936f5e-8a4b-7c3d-9e2f-000000000002";
    django.set_ticket(down, FetchReply::Status(500));
    assert_eq!(
        get(&app.url(&format!("/api/v1/tickets/{down}")))
            .await
            .status,
        503
    );
    let unknown = get(&app.url("/api/v1/tickets/01936f5e-8a4b-7c3d-9e2f-000000000003")).await;
    assert_eq!(unknown.status, 404);
}

#[actix_rt::test]
async fn a_status_change_with_other_fields_still_reaches_django_as_a_status_change() {
    let mut django = FakeDjango::start();
    let app = spawn_app(&django.config("batch_max = 2\nflush_ms = 3600000"));
    let t = create_ticket(&app, "both").await;
    let url = app.url(&format!("/api/v1/tickets/{}", id_of(&t)));
    let changed = patch(
        &url,
        &json!({"status": "in_progress", "priority": "high"}),
        None,
    )
    .await;
    assert_eq!(changed.status, 200, "{}", changed.text);
    let call = django.next_call().await;
    let kinds = &call.events()[0]["kinds"];
    assert_eq!(
        kinds,
        &json!(["ticket.created", "ticket.updated", "ticket.status_changed"])
    );
}

#[actix_rt::test]
async fn an_event_django_fails_on_is_isolated_then_dead_lettered_and_the_rest_flows() {
    let mut django = FakeDjango::start();
    django.set_default(Behavior::StatusIfContains("POISON-9".into(), 500));
    let app = spawn_app(&django.config(
        "batch_max = 10\nflush_ms = 20\nretry_base_ms = 5\nretry_max_ms = 20\npoison_max_attempts = 3",
    ));
    let before = id_of(&create_ticket(&app, "before").await);
    let bad = id_of(&create_ticket(&app, "POISON-9 cannot be stored").await);
    let mut good = vec![(before, 1)];
    for i in 0..3 {
        good.push((id_of(&create_ticket(&app, &format!("after {i}")).await), 1));
    }
    django.wait_delivered(&good).await;

    // Django keeps taking other tickets while the bad one keeps failing alone.
    let url = app.url("/api/v1/admin/dead-letters");
    eventually("the bad event dead-lettered", || {
        let (app, url) = (&app, url.clone());
        async move {
            create_ticket(app, "meanwhile").await;
            get(&url).await.body["items"]
                .as_array()
                .is_some_and(|i| !i.is_empty())
        }
    })
    .await;
    let dead = wait_dead_letters(&app, 1).await;
    assert_eq!(dead[0]["ticket_id"], json!(bad));
    assert_eq!(dead[0]["status_code"], 500);
    let error = dead[0]["error"].as_str().unwrap();
    assert!(error.contains("HTTP 500"), "{error}");
    assert!(error.contains("3 times"), "{error}");
    assert!(!django
        .delivered()
        .iter()
        .any(|e| e["ticket_id"] == json!(bad)));

    // Whatever is created now still reaches Django.
    let later = id_of(&create_ticket(&app, "later").await);
    django.wait_delivered(&[(later, 1)]).await;
    let text = scrape(&app).await;
    for name in [
        "switchboard_bridge_isolated_events_total",
        "switchboard_bridge_poisoned_events_total",
    ] {
        assert!(metric(&text, name, &[]).unwrap_or(0.0) >= 1.0, "{name}");
    }
}

#[actix_rt::test]
async fn a_django_down_for_every_event_dead_letters_nothing() {
    let mut django = FakeDjango::start();
    django.set_default(Behavior::Status(500));
    let app = spawn_app(&django.config(
        "batch_max = 10\nflush_ms = 20\nretry_base_ms = 1\nretry_max_ms = 5\n\
         breaker_threshold = 1000\npoison_max_attempts = 1",
    ));
    let mut ids = Vec::new();
    for i in 0..4 {
        ids.push(id_of(&create_ticket(&app, &format!("t{i}")).await));
    }
    // Enough failed calls for each event to have been sent alone more than once.
    for _ in 0..40 {
        assert_eq!(django.next_call().await.status, 500);
    }
    let dead = get(&app.url("/api/v1/admin/dead-letters")).await;
    assert_eq!(dead.body["items"], json!([]), "{}", dead.text);
    let pending = get(&app.url("/api/v1/admin/outbox")).await;
    let items = pending.body["items"].as_array().unwrap();
    assert_eq!(items.len(), 4, "{}", pending.text);
    assert!(items.iter().all(|i| i["isolated_failures"] == 0));

    django.set_default(Behavior::Ok);
    let want: Vec<_> = ids.iter().map(|i| (i.clone(), 1)).collect();
    django.wait_delivered(&want).await;
}

const OPS_KEYS: &str = "[[auth.api_keys]]\nname = \"ops\"\nkey = \"ops-key-0123456789abcdef\"\n\
    scopes = [\"read\", \"write\", \"admin\"]\n\
    [[auth.api_keys]]\nname = \"viewer\"\nkey = \"viewer-key-0123456789abcdef\"\nscopes = [\"read\"]\n";
const OPS: (&str, &str) = ("Authorization", "Bearer ops-key-0123456789abcdef");

#[actix_rt::test]
async fn operators_list_the_pending_outbox_and_move_an_entry_to_the_dead_letters() {
    let django = FakeDjango::start();
    django.set_default(Behavior::Status(503));
    let config = format!(
        "{}{OPS_KEYS}",
        django.config("batch_max = 10\nflush_ms = 20\nretry_base_ms = 5\nretry_max_ms = 20")
    );
    let app = spawn_app(&config);
    let mut ids = Vec::new();
    for subject in ["first", "second"] {
        let created = request(
            "POST",
            &app.url("/api/v1/tickets"),
            Some(&json!({"subject": subject, "requester": "alice@example.com"})),
            &[OPS],
        )
        .await;
        assert_eq!(created.status, 201, "{}", created.text);
        ids.push(id_of(&created.body));
    }
    let url = app.url("/api/v1/admin/outbox");
    eventually("both entries tried and failed", || {
        let url = url.clone();
        async move {
            let items = request("GET", &url, None, &[OPS]).await.body["items"].clone();
            items.as_array().is_some_and(|i| {
                i.len() == 2 && i.iter().all(|e| e["attempts"].as_u64().unwrap_or(0) >= 1)
            })
        }
    })
    .await;
    let listed = request("GET", &url, None, &[OPS]).await;
    let items = listed.body["items"].as_array().unwrap().clone();
    assert_eq!(items[0]["ticket_id"], json!(ids[0]), "oldest first");
    assert_eq!(items[1]["ticket_id"], json!(ids[1]));
    assert!(items[0]["id"].as_i64().unwrap() < items[1]["id"].as_i64().unwrap());
    assert_eq!(items[0]["type"], "ticket_sync");
    assert_eq!(items[0]["kind"], "ticket.created");
    let last_error = items[0]["last_error"].as_str().unwrap();
    assert!(last_error.contains("503"), "{last_error}");
    let one = request("GET", &format!("{url}?limit=1"), None, &[OPS]).await;
    assert_eq!(one.body["items"].as_array().unwrap().len(), 1);
    let bad_limit = request("GET", &format!("{url}?limit=x"), None, &[OPS]).await;
    assert_eq!(
        (bad_limit.status, bad_limit.error_code()),
        (422, "validation_failed")
    );

    let viewer = ("Authorization", "Bearer viewer-key-0123456789abcdef");
    let move_url = |id: &str| app.url(&format!("/api/v1/admin/outbox/{id}/dead-letter"));
    let first = items[0]["id"].to_string();
    for (method, target) in [("GET", url.clone()), ("POST", move_url(&first))] {
        let refused = request(method, &target, None, &[viewer]).await;
        assert_eq!((refused.status, refused.error_code()), (403, "forbidden"));
        let anonymous = request(method, &target, None, &[]).await;
        assert_eq!(anonymous.status, 401);
    }

    let moved = request("POST", &move_url(&first), None, &[OPS]).await;
    assert_eq!(moved.status, 200, "{}", moved.text);
    assert_eq!(moved.body["dead_lettered"], items[0]["id"]);
    let again = request("POST", &move_url(&first), None, &[OPS]).await;
    assert_eq!((again.status, again.error_code()), (404, "not_found"));
    for unknown in ["999999", "abc"] {
        let missing = request("POST", &move_url(unknown), None, &[OPS]).await;
        assert_eq!((missing.status, missing.error_code()), (404, "not_found"));
    }

    let left = request("GET", &url, None, &[OPS]).await.body["items"].clone();
    assert_eq!(left.as_array().unwrap().len(), 1);
    assert_eq!(left[0]["ticket_id"], json!(ids[1]));
    let dead = request("GET", &app.url("/api/v1/admin/dead-letters"), None, &[OPS]).await;
    let dead = dead.body["items"].as_array().unwrap().clone();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0]["ticket_id"], json!(ids[0]));
    let error = dead[0]["error"].as_str().unwrap();
    assert!(error.contains("API key `ops`"), "{error}");
}
