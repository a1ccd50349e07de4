//! The REST API over real sockets: the ticket lifecycle, every error class, optimistic concurrency,
//! listing, auth and the operator endpoints.

mod support;

use serde_json::{json, Value};
use support::*;

#[actix_rt::test]
async fn ticket_lifecycle_from_creation_to_close_is_recorded_in_history() {
    let app = spawn_app("");
    let created = post(
        &app.url("/api/v1/tickets"),
        &json!({"subject": "Cannot log in", "description": "since Monday", "requester": "alice@example.com",
                "priority": "high", "tags": ["login", "web"]}),
    )
    .await;
    assert_eq!(created.status, 201, "{}", created.text);
    let id = created.body["id"].as_str().unwrap().to_string();
    assert_eq!(
        created.header("location").unwrap(),
        format!("/api/v1/tickets/{id}")
    );
    assert_eq!(created.header("etag").unwrap(), "\"1\"");
    assert_eq!(created.body["status"], "open");
    assert_eq!(created.body["priority"], "high");
    assert_eq!(created.body["source"], "api");
    assert_eq!(created.body["version"], 1);
    assert_eq!(&id[14..15], "7", "ids are UUIDv7");

    let url = app.url(&format!("/api/v1/tickets/{id}"));
    let fetched = get(&url).await;
    assert_eq!(fetched.status, 200);
    assert_eq!(fetched.body, created.body);

    let mut version = 1;
    for (change, status) in [
        (
            json!({"status": "in_progress", "assignee": "bob"}),
            "in_progress",
        ),
        (json!({"status": "resolved"}), "resolved"),
        (json!({"status": "open"}), "open"),
        (json!({"status": "closed", "priority": "low"}), "closed"),
    ] {
        let etag = format!("\"{version}\"");
        let resp = patch(&url, &change, Some(&etag)).await;
        assert_eq!(resp.status, 200, "{}", resp.text);
        version += 1;
        assert_eq!(resp.body["status"], status);
        assert_eq!(resp.body["version"], version);
        assert_eq!(resp.header("etag").unwrap(), format!("\"{version}\""));
    }

    let comment = post(&format!("{url}/comments"), &json!({"body": "closing note"})).await;
    assert_eq!(comment.status, 201, "{}", comment.text);
    assert_eq!(comment.body["comment"]["body"], "closing note");
    assert_eq!(comment.body["ticket_version"], version + 1);

    let events = get(&format!("{url}/events")).await;
    assert_eq!(events.status, 200);
    let items = events.body["items"].as_array().unwrap();
    let kinds: Vec<_> = items.iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        [
            "ticket.created",
            "ticket.updated",
            "ticket.status_changed",
            "ticket.status_changed",
            "ticket.updated",
            "ticket.commented"
        ]
    );
    assert_eq!(
        items[1]["changes"]["assignee"],
        json!({"from": null, "to": "bob"})
    );
    assert_eq!(items[1]["actor"], "anonymous");
    assert!(items
        .iter()
        .all(|e| e["at"].is_string() && e["event_id"].is_string()));
    let versions: Vec<_> = items
        .iter()
        .map(|e| e["version"].as_u64().unwrap())
        .collect();
    assert_eq!(versions, [1, 2, 3, 4, 5, 6]);
}

#[actix_rt::test]
async fn invalid_transition_is_refused_with_409_naming_allowed_statuses() {
    let app = spawn_app("");
    let t = create_ticket(&app, "x").await;
    let url = app.url(&format!("/api/v1/tickets/{}", t["id"].as_str().unwrap()));
    assert_eq!(
        patch(&url, &json!({"status": "resolved"}), None)
            .await
            .status,
        200
    );
    let resp = patch(&url, &json!({"status": "pending"}), None).await;
    assert_eq!(resp.status, 409);
    assert_eq!(resp.error_code(), "invalid_transition");
    let msg = resp.body["error"]["message"].as_str().unwrap();
    assert!(msg.contains("allowed: open, closed"), "{msg}");
    // Refused changes leave no trace.
    let after = get(&url).await;
    assert_eq!(after.body["version"], 2);
}

#[actix_rt::test]
async fn stale_if_match_is_412_and_if_none_match_is_304() {
    let app = spawn_app("");
    let t = create_ticket(&app, "x").await;
    let url = app.url(&format!("/api/v1/tickets/{}", t["id"].as_str().unwrap()));
    assert_eq!(
        patch(&url, &json!({"subject": "y"}), Some("\"1\""))
            .await
            .status,
        200
    );
    let stale = patch(&url, &json!({"subject": "z"}), Some("\"1\"")).await;
    assert_eq!(stale.status, 412);
    assert_eq!(stale.error_code(), "stale_version");
    // RFC 9110: garbage is a bad request, not a failed precondition; a weak tag never matches; a
    // list matches when any of its tags does.
    let garbage = patch(&url, &json!({"subject": "z"}), Some("nonsense")).await;
    assert_eq!(
        (garbage.status, garbage.error_code()),
        (400, "invalid_header")
    );
    let weak = patch(&url, &json!({"subject": "z"}), Some("W/\"2\"")).await;
    assert_eq!(weak.status, 412);
    let listed = patch(
        &url,
        &json!({"subject": "y2"}),
        Some("\"1\", W/\"9\", \"2\""),
    )
    .await;
    assert_eq!(listed.status, 200, "{}", listed.text);
    assert_eq!(
        patch(&url, &json!({"subject": "y"}), Some("\"3\""))
            .await
            .status,
        200
    );
    let stale_comment = request(
        "POST",
        &format!("{url}/comments"),
        Some(&json!({"body": "late"})),
        &[("If-Match", "\"1\"")],
    )
    .await;
    assert_eq!(stale_comment.status, 412);
    let cached = request("GET", &url, None, &[("If-None-Match", "\"4\"")]).await;
    assert_eq!(cached.status, 304);
    let weakly = request("GET", &url, None, &[("If-None-Match", "\"1\", W/\"4\"")]).await;
    assert_eq!(weakly.status, 304);
    let bad = request("GET", &url, None, &[("If-None-Match", "four")]).await;
    assert_eq!(bad.status, 400);
    let changed = request("GET", &url, None, &[("If-None-Match", "\"1\"")]).await;
    assert_eq!(changed.status, 200);
    assert_eq!(changed.body["subject"], "y");
}

#[actix_rt::test]
async fn concurrent_patches_with_the_same_if_match_exactly_one_wins() {
    let app = spawn_app("");
    let t = create_ticket(&app, "race").await;
    let url = app.url(&format!("/api/v1/tickets/{}", t["id"].as_str().unwrap()));
    let attempts = (0..24).map(|i| {
        let url = url.clone();
        async move {
            patch(
                &url,
                &json!({"subject": format!("writer {i}")}),
                Some("\"1\""),
            )
            .await
        }
    });
    let results = futures_util::future::join_all(attempts).await;
    let won: Vec<_> = results.iter().filter(|r| r.status == 200).collect();
    let lost = results.iter().filter(|r| r.status == 412).count();
    assert_eq!(won.len(), 1, "exactly one writer wins");
    assert_eq!(lost, 23, "every other writer gets 412");
    let after = get(&url).await;
    assert_eq!(after.body["version"], 2);
    assert_eq!(after.body["subject"], won[0].body["subject"]);
}

#[actix_rt::test]
async fn bad_input_gets_a_json_error_of_the_right_class() {
    let app = spawn_app("[api]\nmax_body_bytes = 2048\n[tickets]\nmax_tags = 2");
    let url = app.url("/api/v1/tickets");
    let raw = |body: &'static str, ct: &'static str| {
        let url = url.clone();
        async move {
            let mut resp = client()
                .post(&url)
                .insert_header(("Content-Type", ct))
                .send_body(body)
                .await
                .unwrap();
            let bytes = resp.body().await.unwrap();
            (
                resp.status().as_u16(),
                serde_json::from_slice::<Value>(&bytes).unwrap(),
            )
        }
    };
    let (status, body) = raw("{\"subject\": ", "application/json").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("malformed_json"))
    );
    let (status, body) = raw("subject=x", "application/x-www-form-urlencoded").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (415, Some("unsupported_media_type"))
    );

    let big = json!({"subject": "x".repeat(4000), "requester": "a"});
    let resp = post(&url, &big).await;
    assert_eq!(resp.status, 413);
    assert_eq!(resp.error_code(), "payload_too_large");

    let resp = post(
        &url,
        &json!({"subject": " ", "requester": "a", "priority": "asap"}),
    )
    .await;
    assert_eq!(resp.status, 422);
    assert_eq!(resp.error_code(), "validation_failed");
    let fields: Vec<_> = resp.body["error"]["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["field"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(fields, ["priority"]);

    let resp = post(
        &url,
        &json!({"subject": " ", "requester": "", "tags": ["a", "b", "c"]}),
    )
    .await;
    assert_eq!(resp.status, 422);
    let fields: Vec<_> = resp.body["error"]["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["field"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(fields, ["subject", "requester", "tags"]);

    let resp = post(&url, &json!({"requester": "a"})).await;
    assert_eq!(resp.status, 422);
    assert_eq!(resp.body["error"]["fields"][0]["field"], "subject");

    let resp = post(
        &url,
        &json!({"subject": "s", "requester": "a", "version": 9}),
    )
    .await;
    assert_eq!(resp.status, 422);
    assert_eq!(resp.body["error"]["fields"][0]["field"], "version");

    let t = create_ticket(&app, "ok").await;
    let turl = app.url(&format!("/api/v1/tickets/{}", t["id"].as_str().unwrap()));
    let resp = patch(&turl, &json!({"status": "done"}), None).await;
    assert_eq!(resp.status, 422);
    assert_eq!(resp.body["error"]["fields"][0]["field"], "status");

    for missing in [
        "/api/v1/tickets/not-a-uuid",
        "/api/v1/tickets/01936f5e-8a4b-7c3d-9e2f-123456789abc",
        "/api/v1/tickets/01936f5e-8a4b-7c3d-9e2f-123456789abc/events",
        "/api/v1/nowhere",
    ] {
        let resp = get(&app.url(missing)).await;
        assert_eq!(resp.status, 404, "{missing}");
        assert_eq!(resp.error_code(), "not_found", "{missing}");
    }
    let resp = patch(
        &app.url("/api/v1/tickets/01936f5e-8a4b-7c3d-9e2f-123456789abc"),
        &json!({"subject": "x"}),
        None,
    )
    .await;
    assert_eq!(resp.status, 404);

    // The server is still healthy after all of that.
    assert_eq!(get(&app.url("/healthz")).await.status, 200);
}

#[actix_rt::test]
async fn listing_filters_and_pages_with_a_cursor() {
    let app = spawn_app("[tickets]\nlist_max_limit = 4\nlist_default_limit = 2");
    let url = app.url("/api/v1/tickets");
    let mut ids = Vec::new();
    for i in 0..7 {
        let body = json!({
            "subject": format!("t{i}"),
            "requester": "r",
            "priority": if i % 2 == 0 { "high" } else { "low" },
            "assignee": if i < 3 { "bob" } else { "carol" },
            "tags": if i % 3 == 0 { json!(["vip"]) } else { json!([]) },
        });
        let resp = post(&url, &body).await;
        assert_eq!(resp.status, 201);
        ids.push(resp.body["id"].as_str().unwrap().to_string());
    }
    patch(
        &format!("{url}/{}", ids[1]),
        &json!({"status": "pending"}),
        None,
    )
    .await;

    // Pages in creation order, no duplicates, capped limit.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let q = match &cursor {
            Some(c) => format!("{url}?limit=100&cursor={c}"),
            None => format!("{url}?limit=100"),
        };
        let page = get(&q).await;
        assert_eq!(page.status, 200);
        let items = page.body["items"].as_array().unwrap();
        assert!(items.len() <= 4, "limit is capped");
        seen.extend(items.iter().map(|t| t["id"].as_str().unwrap().to_string()));
        match page.body["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    assert_eq!(seen, ids);
    assert_eq!(get(&url).await.body["items"].as_array().unwrap().len(), 2);

    let count = |q: &'static str| {
        let url = url.clone();
        async move {
            get(&format!("{url}?limit=4&{q}")).await.body["items"]
                .as_array()
                .unwrap()
                .len()
        }
    };
    assert_eq!(count("status=pending").await, 1);
    assert_eq!(count("assignee=bob").await, 3);
    assert_eq!(count("priority=low").await, 3);
    assert_eq!(count("tag=vip").await, 3);
    assert_eq!(count("tag=vip&priority=high").await, 2);
    assert_eq!(count("tag=none").await, 0);

    let bad = get(&format!("{url}?status=weird")).await;
    assert_eq!((bad.status, bad.error_code()), (422, "validation_failed"));
    let bad = get(&format!("{url}?cursor=zzz")).await;
    assert_eq!(bad.body["error"]["fields"][0]["field"], "cursor");
    let bad = get(&format!("{url}?limit=0")).await;
    assert_eq!(bad.status, 422);
    let bad = get(&format!("{url}?colour=red")).await;
    assert_eq!(bad.body["error"]["fields"][0]["field"], "colour");
}

/// A request authorised with the bearer `key`.
async fn with_key(method: &str, url: &str, body: Option<&Value>, key: &str) -> Resp {
    let auth = format!("Bearer {key}");
    request(method, url, body, &[("Authorization", &auth)]).await
}

const KEYS: &str = r#"
[metrics]
token = "metrics-secret"
[[auth.api_keys]]
name = "django"
key = "write-key-0123456789"
scopes = ["read", "write"]
[[auth.api_keys]]
name = "dashboard"
key = "read-key-0123456789"
scopes = ["read"]
[[auth.api_keys]]
name = "ops"
key = "admin-key-0123456789"
scopes = ["admin"]
"#;

#[actix_rt::test]
async fn api_keys_gate_reads_writes_and_admin() {
    let app = spawn_app(KEYS);
    let url = app.url("/api/v1/tickets");
    let body = json!({"subject": "s", "requester": "r"});

    let none = request("POST", &url, Some(&body), &[]).await;
    assert_eq!((none.status, none.error_code()), (401, "unauthorized"));
    assert_eq!(none.header("www-authenticate").as_deref(), Some("Bearer"));
    let wrong = with_key("POST", &url, Some(&body), "nope-nope-nope-nope").await;
    assert_eq!(wrong.status, 401);
    let read_only = with_key("POST", &url, Some(&body), "read-key-0123456789").await;
    assert_eq!(
        (read_only.status, read_only.error_code()),
        (403, "forbidden")
    );

    let created = request(
        "POST",
        &url,
        Some(&body),
        &[
            ("Authorization", "Bearer write-key-0123456789"),
            ("X-Actor", "agent-7"),
        ],
    )
    .await;
    assert_eq!(created.status, 201);
    let id = created.body["id"].as_str().unwrap();
    let read = with_key(
        "GET",
        &format!("{url}/{id}/events"),
        None,
        "read-key-0123456789",
    )
    .await;
    assert_eq!(read.status, 200);
    assert_eq!(read.body["items"][0]["actor"], "django");
    assert_eq!(read.body["items"][0]["on_behalf_of"], "agent-7");

    let admin = app.url("/api/v1/admin/dead-letters");
    let denied = with_key("GET", &admin, None, "write-key-0123456789").await;
    assert_eq!(denied.status, 403);
    let allowed = with_key("GET", &admin, None, "admin-key-0123456789").await;
    assert_eq!(allowed.status, 200);

    // Probes are open; metrics take their own token.
    assert_eq!(get(&app.url("/healthz")).await.status, 200);
    assert_eq!(get(&app.url("/readyz")).await.status, 200);
    assert_eq!(get(&app.url("/metrics")).await.status, 401);
    let metrics = with_key("GET", &app.url("/metrics"), None, "metrics-secret").await;
    assert_eq!(metrics.status, 200);
    assert!(metrics.text.contains("switchboard_http_requests_total"));
}

#[actix_rt::test]
async fn the_history_names_the_key_of_every_change_and_the_person_it_acted_for() {
    let app = spawn_app(KEYS);
    let url = app.url("/api/v1/tickets");
    let write = ("Authorization", "Bearer write-key-0123456789");
    let created = request(
        "POST",
        &url,
        Some(&json!({"subject": "s", "requester": "r"})),
        &[write],
    )
    .await;
    assert_eq!(created.status, 201, "{}", created.text);
    let ticket = format!("{url}/{}", created.body["id"].as_str().unwrap());
    // A person named by X-Actor is recorded beside the key, never instead of it, even when the
    // name is another key's.
    for actor in ["ada@example.com", "ops"] {
        let changed = request(
            "PATCH",
            &ticket,
            Some(&json!({"subject": format!("by {actor}")})),
            &[write, ("X-Actor", actor)],
        )
        .await;
        assert_eq!(changed.status, 200, "{}", changed.text);
    }
    let commented = request(
        "POST",
        &format!("{ticket}/comments"),
        Some(&json!({"body": "looking", "author": "bob"})),
        &[write],
    )
    .await;
    assert_eq!(commented.status, 201, "{}", commented.text);

    let history = with_key(
        "GET",
        &format!("{ticket}/events"),
        None,
        "read-key-0123456789",
    )
    .await;
    let items = history.body["items"].as_array().unwrap().clone();
    let who: Vec<_> = items
        .iter()
        .map(|e| (e["actor"].clone(), e.get("on_behalf_of").cloned()))
        .collect();
    assert_eq!(
        who,
        [
            (json!("django"), None),
            (json!("django"), Some(json!("ada@example.com"))),
            (json!("django"), Some(json!("ops"))),
            (json!("django"), None),
        ],
        "{}",
        history.text
    );
    assert!(!history.text.contains("write-key"), "never the secret");
}

#[actix_rt::test]
async fn probes_metrics_and_request_ids_serve_operators() {
    let app = spawn_app("");
    let health = get(&app.url("/healthz")).await;
    assert_eq!(
        (health.status, health.body["status"].as_str()),
        (200, Some("ok"))
    );
    let ready = get(&app.url("/readyz")).await;
    assert_eq!(ready.status, 200, "{}", ready.text);
    assert_eq!(ready.body["store"], "ok");
    assert_eq!(ready.body["supervisor"], "up");
    assert_eq!(ready.body["django"]["configured"], false);

    let traced = request(
        "GET",
        &app.url("/healthz"),
        None,
        &[("X-Request-Id", "req-abc-123")],
    )
    .await;
    assert_eq!(
        traced.header("x-request-id").as_deref(),
        Some("req-abc-123")
    );
    let generated = get(&app.url("/healthz")).await;
    assert_eq!(generated.header("x-request-id").unwrap().len(), 36);

    let t = create_ticket(&app, "metrics").await;
    get(&app.url(&format!("/api/v1/tickets/{}", t["id"].as_str().unwrap()))).await;
    let text = scrape(&app).await;
    assert!(
        metric(
            &text,
            "switchboard_http_requests_total",
            &[
                ("route", "/api/v1/tickets"),
                ("method", "POST"),
                ("status", "201")
            ]
        )
        .unwrap_or(0.0)
            >= 1.0
    );
    assert!(text.contains(
        "switchboard_http_request_duration_seconds_bucket{listener=\"api\",route=\"/api/v1/tickets/{id}\""
    ));
    assert!(
        metric(
            &text,
            "switchboard_ticket_activations_total",
            &[("source", "store")]
        )
        .unwrap_or(0.0)
            >= 1.0
    );
    assert!(metric(&text, "switchboard_store_commit_batch_size_count", &[]).unwrap_or(0.0) >= 1.0);
    assert!(text.contains("switchboard_ticket_actors"));
}

#[actix_rt::test]
async fn control_characters_are_refused_naming_the_field_but_newline_and_tab_pass() {
    let app = spawn_app("");
    let url = app.url("/api/v1/tickets");
    for (body, field) in [
        (
            json!({"subject": "NUL\u{0}here", "requester": "a@example.com"}),
            "subject",
        ),
        (
            json!({"subject": "ok", "requester": "a@example.com", "description": "bell\u{7}"}),
            "description",
        ),
        (
            json!({"subject": "ok", "requester": "a@example.com", "tags": ["esc\u{1b}"]}),
            "tags[0]",
        ),
    ] {
        let resp = post(&url, &body).await;
        assert_eq!(resp.status, 422, "{}", resp.text);
        assert_eq!(
            resp.body["error"]["fields"][0]["field"], field,
            "{}",
            resp.text
        );
    }
    let fine = post(
        &url,
        &json!({"subject": "ok", "requester": "a@example.com", "description": "line 1\nline 2\tend"}),
    )
    .await;
    assert_eq!(fine.status, 201, "{}", fine.text);
    let id = id_of(&fine.body);
    let comment = post(
        &app.url(&format!("/api/v1/tickets/{id}/comments")),
        &json!({"body": "nul \u{0}"}),
    )
    .await;
    assert_eq!(
        (
            comment.status,
            comment.body["error"]["fields"][0]["field"].as_str()
        ),
        (422, Some("body"))
    );
}

#[actix_rt::test]
async fn bodies_must_be_objects_without_repeated_keys_and_ids_have_one_spelling() {
    let app = spawn_app("");
    let url = app.url("/api/v1/tickets");
    let raw = |body: &'static str| {
        let url = url.clone();
        async move {
            let mut resp = client()
                .post(&url)
                .insert_header(("Content-Type", "application/json"))
                .send_body(body)
                .await
                .unwrap();
            let bytes = resp.body().await.unwrap();
            let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
            (resp.status().as_u16(), v)
        }
    };
    // An array would be read by position, past the unknown-field check.
    let (status, body) = raw(r#"["s", "d", null, null, "a@example.com"]"#).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["fields"][0]["field"], "body");
    let (status, body) = raw("42").await;
    assert_eq!(
        (status, body["error"]["fields"][0]["field"].as_str()),
        (422, Some("body"))
    );
    let (status, body) =
        raw(r#"{"subject": "one", "subject": "two", "requester": "a@example.com"}"#).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["fields"][0]["field"], "subject");

    let bad_session = post(
        &url,
        &json!({"subject": "s", "requester": "a@example.com", "chat_session_id": "not-a-uuid"}),
    )
    .await;
    assert_eq!(bad_session.status, 422);
    assert_eq!(
        bad_session.body["error"]["fields"][0]["field"],
        "chat_session_id"
    );

    let t = create_ticket(&app, "one spelling").await;
    let id = id_of(&t);
    assert_eq!(
        get(&app.url(&format!("/api/v1/tickets/{id}"))).await.status,
        200
    );
    for other in [id.to_uppercase(), id.replace('-', "")] {
        let resp = get(&app.url(&format!("/api/v1/tickets/{other}"))).await;
        assert_eq!(
            (resp.status, resp.error_code()),
            (404, "not_found"),
            "{other}"
        );
    }
}

#[actix_rt::test]
async fn a_bad_limit_gets_the_same_answer_naming_limit_on_every_list_route() {
    let app = spawn_app("");
    let t = create_ticket(&app, "lists").await;
    let id = id_of(&t);
    let mut answers = Vec::new();
    for route in [
        "/api/v1/tickets".to_string(),
        format!("/api/v1/tickets/{id}/events"),
        "/api/v1/admin/dead-letters".to_string(),
    ] {
        for bad in ["abc", "0", "-1"] {
            let resp = get(&app.url(&format!("{route}?limit={bad}"))).await;
            assert_eq!(resp.status, 422, "{route}?limit={bad}: {}", resp.text);
            assert_eq!(resp.body["error"]["fields"][0]["field"], "limit");
            answers.push(resp.body["error"]["fields"][0]["message"].clone());
        }
    }
    assert!(answers.windows(2).all(|w| w[0] == w[1]), "{answers:?}");
}
