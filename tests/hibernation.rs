//! Hibernation: a ticket idle for `tickets.hibernate_after_ms` packs its state and wakes on the next
//! message with exactly the same state, takes writes, hibernates again, and is still restarted from
//! disk after a panic.
//!
//! Alone in its test binary on purpose: the metrics recorder is per process, so the hibernation
//! counter seen here moves only for this test's ticket.

mod support;

use serde_json::json;
use support::*;

async fn live(app: &TestApp) -> u64 {
    get(&app.url("/api/v1/debug/tickets/live")).await.body["live"]
        .as_u64()
        .unwrap()
}

#[actix_rt::test]
async fn idle_tickets_hibernate_and_wake_with_identical_state() {
    let app = spawn_app(
        "[tickets]\nidle_timeout_ms = 600000\nhibernate_after_ms = 30\nsweep_interval_ms = 10",
    );
    let hibernations = || async {
        metric(
            &scrape(&app).await,
            "switchboard_ticket_hibernations_total",
            &[],
        )
        .unwrap_or(0.0)
    };
    let t = create_ticket(&app, "Drucker brennt 🔥 — ça ne marche pas").await;
    let url = app.url(&format!("/api/v1/tickets/{}", id_of(&t)));
    // Each count is read before the message that wakes the ticket, so the wait after it can only
    // be satisfied by a hibernation that follows that message.
    let c0 = hibernations().await;
    let first = patch(
        &url,
        &json!({"status": "in_progress", "tags": ["ñ", "hardware"], "assignee": "zoë"}),
        None,
    )
    .await;
    assert_eq!(first.status, 200, "{}", first.text);
    let before = get(&url).await.body;
    eventually("idle ticket hibernated", || async {
        hibernations().await > c0
    })
    .await;

    let c1 = hibernations().await;
    assert_eq!(get(&url).await.body, before, "woke with the same state");
    assert_eq!(live(&app).await, 1, "hibernated, not passivated");
    // A woken ticket takes writes, and hibernates again once idle.
    let patched = patch(&url, &json!({"priority": "urgent"}), Some("\"2\"")).await;
    assert_eq!(patched.status, 200, "{}", patched.text);
    let after_write = get(&url).await.body;
    eventually("written ticket hibernated again", || async {
        hibernations().await > c1
    })
    .await;

    let c2 = hibernations().await;
    assert_eq!(get(&url).await.body, after_write);
    eventually("hibernated once more", || async {
        hibernations().await > c2
    })
    .await;
    // A panic while hibernated restarts the ticket from disk, as any panic does.
    let panicked = post(
        &app.url(&format!("/api/v1/debug/tickets/{}/panic", id_of(&t))),
        &json!({}),
    )
    .await;
    assert_eq!(panicked.body["panicked"], true);
    assert_eq!(get(&url).await.body, after_write);
    let text = scrape(&app).await;
    assert_eq!(
        metric(
            &text,
            "switchboard_actor_restarts_total",
            &[("kind", "ticket"), ("cause", "panic")]
        ),
        Some(1.0)
    );
}
