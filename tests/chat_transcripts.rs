//! A chat session read back over REST (`/api/v1/chats/{id}` and its `/messages`): the summary and
//! the transcript a customer's chat left in the journal, page by page, against what the customer was
//! sent over the WebSocket; the answers to bad ids, bad pages and keys without the `read` scope.

mod support;

use serde_json::{json, Value};
use support::fake_django::FakeDjango;
use support::ws::{ChatClient, Ended};
use support::*;

async fn say(c: &mut ChatClient, client_id: &str, text: &str) -> u64 {
    c.send(json!({"type": "message.send", "client_id": client_id, "text": text}))
        .await;
    let ack = c.expect("message.ack").await;
    assert_eq!(ack["client_id"], client_id);
    ack["seq"].as_u64().unwrap()
}

/// The next `message` frame from the AI.
async fn ai_reply(c: &mut ChatClient) -> Value {
    loop {
        let m = c.expect("message").await;
        if m["from"] == "ai" {
            return m;
        }
        c.seen.push(m);
    }
}

/// Every frame of the transcript, walked one page of `limit` at a time; checks each page's cursor.
async fn walk(app: &TestApp, id: &str, limit: u32, headers: &[(&str, &str)]) -> Vec<Value> {
    let mut all = Vec::new();
    let mut after = 0;
    loop {
        let url = app.url(&format!(
            "/api/v1/chats/{id}/messages?after_seq={after}&limit={limit}"
        ));
        let page = request("GET", &url, None, headers).await;
        assert_eq!(page.status, 200, "{}", page.text);
        assert_eq!(page.body["session_id"], id);
        let messages = page.body["messages"].as_array().unwrap().clone();
        assert!(messages.len() <= limit as usize, "{}", page.text);
        all.extend(messages.iter().cloned());
        match page.body["next_after_seq"].as_u64() {
            Some(next) => {
                assert_eq!(messages.len(), limit as usize, "{}", page.text);
                assert_eq!(Some(next), messages.last().unwrap()["seq"].as_u64());
                after = next;
            }
            None => {
                assert!(page.body["next_after_seq"].is_null(), "{}", page.text);
                return all;
            }
        }
    }
}

#[actix_rt::test]
async fn a_chats_summary_and_transcript_match_what_the_customer_was_sent() {
    let django = FakeDjango::start();
    let app = spawn_app(&django.config("flush_ms = 20"));
    let (mut c, started) = ChatClient::start(app.chat_addr).await;
    let id = started["session_id"].as_str().unwrap().to_string();

    let first = say(&mut c, "m-1", "Hello there").await;
    let reply_1 = ai_reply(&mut c).await;
    let second = say(&mut c, "m-2", "And again").await;
    let reply_2 = ai_reply(&mut c).await;
    assert_eq!(reply_2["text"], "You said: And again");
    let newest = reply_2["seq"].as_u64().unwrap();

    // A frame is committed before it is sent: everything the customer has is readable now.
    let chat = get(&app.url(&format!("/api/v1/chats/{id}"))).await;
    assert_eq!(chat.status, 200, "{}", chat.text);
    assert_eq!(chat.body["session_id"], id.as_str());
    assert_eq!(chat.body["state"], "open");
    assert_eq!(chat.body["owner"], json!({"kind": "ai"}));
    assert_eq!(chat.body["customer"]["id"], format!("anonymous:{id}"));
    assert_eq!(chat.body["customer"]["known"], false);
    assert!(chat.body["started_at"].is_string(), "{}", chat.text);
    assert!(chat.body["last_activity_at"].is_string(), "{}", chat.text);
    assert!(
        chat.body["detached_at"].is_null(),
        "attached: {}",
        chat.text
    );
    assert_eq!(chat.body["last_seq"], newest);
    assert!(!chat.text.contains("resume_token"), "{}", chat.text);
    assert!(
        !chat
            .text
            .contains(started["resume_token"].as_str().unwrap()),
        "{}",
        chat.text
    );

    // One frame a page: consecutive seqs from 1, the last page saying there is no next one.
    let paged = walk(&app, &id, 1, &[]).await;
    let seqs: Vec<u64> = paged.iter().map(|m| m["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=newest).collect::<Vec<_>>(), "{paged:?}");
    // Bigger pages, and the default one, give the same transcript.
    assert_eq!(walk(&app, &id, 3, &[]).await, paged);
    let whole = get(&app.url(&format!("/api/v1/chats/{id}/messages"))).await;
    assert_eq!(whole.body["messages"], json!(paged));
    assert!(whole.body["next_after_seq"].is_null());

    // The customer's messages at the seqs they were acknowledged with, the AI's replies exactly as
    // the customer received them.
    let at = |seq: u64| paged[seq as usize - 1].clone();
    for (seq, client_id, text) in [(first, "m-1", "Hello there"), (second, "m-2", "And again")] {
        let m = at(seq);
        assert_eq!(
            (&m["type"], &m["from"], &m["client_id"], &m["text"]),
            (
                &json!("message"),
                &json!("customer"),
                &json!(client_id),
                &json!(text)
            ),
            "{m}"
        );
    }
    for reply in [&reply_1, &reply_2] {
        assert_eq!(&at(reply["seq"].as_u64().unwrap()), reply);
    }

    // Past the newest seq: an empty page with no next one.
    let past = get(&app.url(&format!("/api/v1/chats/{id}/messages?after_seq={newest}"))).await;
    assert_eq!(past.status, 200);
    assert_eq!(past.body["messages"], json!([]));
    assert!(past.body["next_after_seq"].is_null());

    // A closed chat reads as closed, its closing frame the transcript's last.
    c.send(json!({"type": "session.close"})).await;
    let closed = c.expect("session.closed").await;
    assert_eq!(c.until_closed().await, Ended::Closed(1000));
    let chat = get(&app.url(&format!("/api/v1/chats/{id}"))).await;
    assert_eq!(chat.body["state"], "closed", "{}", chat.text);
    assert_eq!(chat.body["owner"], json!({"kind": "closed"}));
    assert_eq!(chat.body["last_seq"], closed["seq"]);
    let tail = walk(&app, &id, 1000, &[]).await;
    assert_eq!(tail.last(), Some(&closed));

    // Each route is counted under its pattern, never under the id it was called with.
    let metrics = scrape(&app).await;
    for route in [
        "/api/v1/chats/{session_id}",
        "/api/v1/chats/{session_id}/messages",
    ] {
        let served = metric(
            &metrics,
            "switchboard_http_requests_total",
            &[("route", route), ("status", "200")],
        );
        assert!(served.unwrap_or(0.0) >= 1.0, "{route}");
    }
    assert!(!metrics.contains(&id), "a session id became a label");
    app.stop().await.expect("clean stop");
}

#[actix_rt::test]
async fn unknown_chats_bad_ids_and_bad_pages_are_refused_with_their_reasons() {
    let app = spawn_app("");
    let (mut c, started) = ChatClient::start(app.chat_addr).await;
    let id = started["session_id"].as_str().unwrap();
    let known = |path: &str| app.url(&format!("/api/v1/chats/{id}{path}"));

    // A chat is in the journal from its first frame: before it, it is not known here.
    let before = get(&known("")).await;
    assert_eq!((before.status, before.error_code()), (404, "not_found"));
    let first = say(&mut c, "m-1", "hello").await;
    let fresh = get(&known("")).await;
    assert_eq!(fresh.status, 200, "{}", fresh.text);
    assert!(fresh.body["last_seq"].as_u64().unwrap() >= first);
    let page = get(&known("/messages")).await;
    assert_eq!(
        page.body["messages"][0]["client_id"], "m-1",
        "{}",
        page.text
    );

    let unknown = "0190f5a8-1c2d-7e3f-8a4b-5c6d7e8f9a0b";
    for path in [
        format!("/api/v1/chats/{unknown}"),
        format!("/api/v1/chats/{unknown}/messages"),
    ] {
        let r = get(&app.url(&path)).await;
        assert_eq!((r.status, r.error_code()), (404, "not_found"), "{path}");
    }

    for bad in ["not-a-uuid", &id.to_uppercase(), &id.replace('-', "")] {
        for path in [
            format!("/api/v1/chats/{bad}"),
            format!("/api/v1/chats/{bad}/messages"),
        ] {
            let r = get(&app.url(&path)).await;
            assert_eq!((r.status, r.error_code()), (400, "invalid_id"), "{path}");
        }
    }

    for (query, names) in [
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("limit=ten", "limit"),
        ("after_seq=-1", "after_seq"),
        ("after_seq=x", "after_seq"),
        ("colour=red", "colour"),
    ] {
        let r = get(&known(&format!("/messages?{query}"))).await;
        assert_eq!(
            (r.status, r.error_code()),
            (400, "invalid_query"),
            "{query}"
        );
        let message = r.body["error"]["message"].as_str().unwrap();
        assert!(message.contains(names), "{query}: {message}");
    }
    let widest = get(&known("/messages?limit=1000")).await;
    assert_eq!(widest.status, 200, "{}", widest.text);
    app.stop().await.expect("clean stop");
}

const KEYS: &str = r#"
[[auth.api_keys]]
name = "dashboard"
key = "read-key-0123456789"
scopes = ["read"]
[[auth.api_keys]]
name = "writer"
key = "write-key-0123456789"
scopes = ["write", "admin"]
"#;

#[actix_rt::test]
async fn reading_a_chat_takes_a_key_with_the_read_scope() {
    let app = spawn_app(KEYS);
    let (mut c, started) = ChatClient::start(app.chat_addr).await;
    let id = started["session_id"].as_str().unwrap();
    say(&mut c, "m-1", "hello").await;
    let read = [("Authorization", "Bearer read-key-0123456789")];
    let write = [("Authorization", "Bearer write-key-0123456789")];
    for path in [
        format!("/api/v1/chats/{id}"),
        format!("/api/v1/chats/{id}/messages"),
    ] {
        let url = app.url(&path);
        let none = get(&url).await;
        assert_eq!((none.status, none.error_code()), (401, "unauthorized"));
        let wrong = request("GET", &url, None, &write).await;
        assert_eq!((wrong.status, wrong.error_code()), (403, "forbidden"));
        let allowed = request("GET", &url, None, &read).await;
        assert_eq!(allowed.status, 200, "{}", allowed.text);
    }
    assert_eq!(walk(&app, id, 10, &read).await[0]["client_id"], "m-1");
    app.stop().await.expect("clean stop");
}
