//! Supervision of the real tree: a panicking ticket actor is restarted from disk while others serve,
//! idle tickets passivate and come back identical, and restart intensity escalates up the tree.

mod support;

use serde_json::json;
use support::*;

async fn live(app: &TestApp) -> u64 {
    get(&app.url("/api/v1/debug/tickets/live")).await.body["live"]
        .as_u64()
        .unwrap()
}

#[actix_rt::test]
async fn a_panicking_ticket_actor_restarts_from_disk_while_others_keep_serving() {
    let app = spawn_app("");
    let a = create_ticket(&app, "ticket A").await;
    let b = create_ticket(&app, "ticket B").await;
    let a_url = app.url(&format!("/api/v1/tickets/{}", id_of(&a)));
    let b_url = app.url(&format!("/api/v1/tickets/{}", id_of(&b)));
    let a_before = patch(&a_url, &json!({"assignee": "bob"}), None).await.body;
    assert_eq!(get(&b_url).await.status, 200);

    let panicked = post(
        &app.url(&format!("/api/v1/debug/tickets/{}/panic", id_of(&a))),
        &json!({}),
    )
    .await;
    assert_eq!(panicked.body["panicked"], true);

    // The neighbour never noticed.
    let b_after = patch(&b_url, &json!({"priority": "urgent"}), Some("\"1\"")).await;
    assert_eq!(b_after.status, 200);
    // The panicked ticket is back, reloaded from disk (the panic scribbled on its memory first).
    let a_after = get(&a_url).await;
    assert_eq!(a_after.status, 200);
    assert_eq!(a_after.body, a_before);
    assert_ne!(a_after.body["subject"], "corrupted by injected panic");
    // ...and takes writes again.
    assert_eq!(
        patch(&a_url, &json!({"status": "pending"}), Some("\"2\""))
            .await
            .status,
        200
    );

    let text = scrape(&app).await;
    assert!(
        metric(
            &text,
            "switchboard_actor_restarts_total",
            &[("kind", "ticket"), ("cause", "panic")]
        )
        .unwrap_or(0.0)
            >= 1.0
    );
    assert_eq!(get(&app.url("/readyz")).await.status, 200);
}

#[actix_rt::test]
async fn idle_tickets_passivate_and_reactivate_with_identical_state() {
    let app = spawn_app(
        "[tickets]\nidle_timeout_ms = 100\nhibernate_after_ms = 40\nsweep_interval_ms = 20",
    );
    let t = create_ticket(&app, "sleepy").await;
    let url = app.url(&format!("/api/v1/tickets/{}", id_of(&t)));
    patch(
        &url,
        &json!({"status": "in_progress", "tags": ["a", "b"], "assignee": "bob"}),
        None,
    )
    .await;
    post(&format!("{url}/comments"), &json!({"body": "note"})).await;
    let before = get(&url).await.body;
    let history_before = get(&format!("{url}/events")).await.body;
    assert!(live(&app).await >= 1);

    eventually("idle ticket passivated", || async { live(&app).await == 0 }).await;
    let text = scrape(&app).await;
    assert!(metric(&text, "switchboard_ticket_passivations_total", &[]).unwrap_or(0.0) >= 1.0);

    let after = get(&url).await.body;
    assert_eq!(after, before);
    assert_eq!(get(&format!("{url}/events")).await.body, history_before);
    assert_eq!(live(&app).await, 1, "reactivated on demand");
}

#[actix_rt::test]
async fn too_many_ticket_restarts_escalate_to_the_root_which_restarts_the_registry() {
    let app = spawn_app("[supervisor]\nticket_max_restarts = 1\nticket_max_seconds = 60");
    let tickets = [
        create_ticket(&app, "a").await,
        create_ticket(&app, "b").await,
        create_ticket(&app, "c").await,
    ];
    for t in &tickets {
        assert_eq!(
            get(&app.url(&format!("/api/v1/tickets/{}", id_of(t))))
                .await
                .status,
            200
        );
    }
    assert_eq!(live(&app).await, 3);
    post(
        &app.url(&format!(
            "/api/v1/debug/tickets/{}/panic",
            id_of(&tickets[0])
        )),
        &json!({}),
    )
    .await;
    post(
        &app.url(&format!(
            "/api/v1/debug/tickets/{}/panic",
            id_of(&tickets[1])
        )),
        &json!({}),
    )
    .await;

    wait_metric(
        &app,
        "switchboard_supervisor_escalations_total",
        &[("supervisor", "tickets")],
        1.0,
    )
    .await;
    wait_metric(
        &app,
        "switchboard_actor_restarts_total",
        &[("kind", "ticket_registry"), ("cause", "escalation")],
        1.0,
    )
    .await;
    // Every ticket serves again, from disk.
    for t in &tickets {
        let resp = get(&app.url(&format!("/api/v1/tickets/{}", id_of(t)))).await;
        assert_eq!(resp.status, 200);
        assert_eq!(resp.body["subject"], t["subject"]);
    }
    assert_eq!(get(&app.url("/readyz")).await.status, 200);
}

#[actix_rt::test]
async fn the_root_gives_up_past_its_restart_intensity_and_run_fails() {
    let mut app = spawn_app("[supervisor]\nmax_restarts = 1\nmax_seconds = 60");
    create_ticket(&app, "before").await;
    post(&app.url("/api/v1/debug/bridge/panic"), &json!({})).await;
    // Restarted once: still serving.
    assert_eq!(get(&app.url("/readyz")).await.status, 200);
    post(&app.url("/api/v1/debug/bridge/panic"), &json!({})).await;
    let result = app.wait_exit().await;
    let err = result.expect_err("run must fail once the root escalates");
    assert!(
        err.to_string().contains("restart intensity exceeded"),
        "{err}"
    );
}
