//! Both listeners start from `run` on already-bound sockets, each with its own server settings: the
//! chat listener answers its own probe and JSON errors, and each listener enforces its own header
//! and body limits.

mod support;

use serde_json::json;
use support::*;

#[actix_rt::test]
async fn the_chat_listener_starts_beside_the_api_and_answers_in_json() {
    let app = spawn_app("");
    assert_ne!(app.addr, app.chat_addr);

    let health = get(&app.chat_url("/healthz")).await;
    assert_eq!(health.status, 200);
    assert_eq!(health.body["listener"], "chat");

    let missing = get(&app.chat_url("/api/v1/tickets")).await;
    assert_eq!(
        missing.status, 404,
        "the chat listener serves no REST routes"
    );
    assert_eq!(missing.error_code(), "not_found");
    app.stop().await.expect("clean stop");
}

#[actix_rt::test]
async fn each_listener_enforces_its_own_header_and_body_limits() {
    let app = spawn_app(
        "[api]\nmax_header_bytes = 2048\nmax_body_bytes = 512\n[chat]\nmax_header_bytes = 8192",
    );
    let big = "x".repeat(4096);

    let api = request("GET", &app.url("/healthz"), None, &[("X-Padding", &big)]).await;
    assert_eq!(api.status, 431);
    assert_eq!(api.error_code(), "headers_too_large");

    let chat = request(
        "GET",
        &app.chat_url("/healthz"),
        None,
        &[("X-Padding", &big)],
    )
    .await;
    assert_eq!(chat.status, 200, "the chat listener's own limit is higher");

    let body =
        json!({"subject": "s", "requester": "a@example.com", "description": "d".repeat(1024)});
    let too_long = post(&app.url("/api/v1/tickets"), &body).await;
    assert_eq!(too_long.status, 413);
    assert_eq!(too_long.error_code(), "payload_too_large");
    app.stop().await.expect("clean stop");
}

#[actix_rt::test]
async fn listener_settings_are_validated_naming_the_key() {
    for (toml, key) in [
        ("[api]\nworkers = 0", "api.workers"),
        ("[chat]\nmax_connections = 0", "chat.max_connections"),
        ("[chat]\nbind = \"nowhere\"", "chat.bind"),
        ("[chat]\nbind = \"127.0.0.1:4000\"", "chat.bind"),
    ] {
        let err = switchboard::config::Settings::from_toml(toml).unwrap_err();
        assert!(err.to_string().contains(key), "{toml}: {err}");
    }
}

#[actix_rt::test]
async fn counters_that_alerts_watch_are_exported_at_zero_from_the_start() {
    let app = spawn_app("");
    let text = scrape(&app).await;
    for (name, labels) in [
        ("switchboard_dead_letters_total", &[][..]),
        (
            "switchboard_supervisor_escalations_total",
            &[("supervisor", "root")][..],
        ),
        (
            "switchboard_actor_restarts_total",
            &[("kind", "session"), ("cause", "panic")][..],
        ),
        (
            "switchboard_django_failures_total",
            &[
                ("lane", "calls"),
                ("endpoint", "ai_respond"),
                ("reason", "timeout"),
            ][..],
        ),
    ] {
        assert_eq!(metric(&text, name, labels), Some(0.0), "{name} {labels:?}");
    }
    app.stop().await.expect("clean stop");
}
