//! The REST listener against slow, abusive and unusual clients, over raw sockets where the point is
//! what goes over the wire: a stalled body is answered 408 and closed, a stopping server refuses new
//! connections at once, and every answer (protocol errors, 405, 415, HEAD) keeps the documented
//! shape.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::json;
use support::fake_django::{Behavior, ChatEndpoint, FakeDjango};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A raw answer: the status line's code, the head and the body as text, and whether the server
/// closed the connection (read to its end within the wait).
struct Raw {
    status: u16,
    head: String,
    body: String,
    closed: bool,
}

impl Raw {
    fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", self.body))
    }
}

/// Sends `request` as raw bytes and reads one answer (see [`read_answer`]).
async fn exchange(addr: SocketAddr, request: &[u8], until_close: bool) -> Raw {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(request).await.expect("send");
    read_answer(&mut stream, until_close).await
}

/// Reads until the server closes the connection, or (unless `until_close`) until one whole answer
/// has arrived. Every read is bounded by [`WAIT`], far longer than any timeout the tests configure.
async fn read_answer(stream: &mut TcpStream, until_close: bool) -> Raw {
    let mut bytes = Vec::new();
    let mut buf = [0u8; 4096];
    let mut closed = false;
    loop {
        match tokio::time::timeout(WAIT, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                closed = true;
                break;
            }
            Ok(Ok(n)) => {
                bytes.extend_from_slice(&buf[..n]);
                if !until_close && complete(&bytes) {
                    break;
                }
            }
            Err(_) => panic!(
                "no answer within {WAIT:?}: {:?}",
                String::from_utf8_lossy(&bytes)
            ),
        }
    }
    let text = String::from_utf8_lossy(&bytes).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Raw {
        status,
        head: head.to_string(),
        body: body.to_string(),
        closed,
    }
}

/// True once `bytes` hold a head and as much body as its `Content-Length` says.
fn complete(bytes: &[u8]) -> bool {
    let text = String::from_utf8_lossy(bytes);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return false;
    };
    let length = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse::<usize>().ok())?
        })
        .unwrap_or(0);
    body.len() >= length
}

#[actix_rt::test]
async fn a_stalled_body_is_answered_408_in_json_and_closed() {
    let app = spawn_app("[api]\nbody_timeout_ms = 300");
    let request = b"POST /api/v1/tickets HTTP/1.1\r\nHost: test\r\n\
        Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"subject\"";
    // Read until the server closes: only its own body timer can end the wait before WAIT does.
    let answer = exchange(app.addr, request, true).await;
    assert_eq!(answer.status, 408, "{}", answer.head);
    assert_eq!(answer.json()["error"]["code"], "body_timeout");
    assert!(
        answer.closed,
        "the connection is closed after a body timeout"
    );

    // The listener itself is unharmed.
    assert_eq!(get(&app.url("/healthz")).await.status, 200);
    app.stop().await.expect("clean stop");
}

#[actix_rt::test]
async fn a_stalled_body_no_handler_reads_is_closed_after_the_body_timeout() {
    let app = spawn_app("[api]\nbody_timeout_ms = 300");
    // The retry route answers without reading a body; a chunked one is then read to its end
    // before the connection can take another request, and this one never ends.
    let request = b"POST /api/v1/admin/dead-letters/999/retry HTTP/1.1\r\nHost: test\r\n\
        Transfer-Encoding: chunked\r\n\r\n10\r\n0123";
    let answer = exchange(app.addr, request, true).await;
    assert_eq!(answer.status, 404, "{}", answer.head);
    assert!(answer.closed);
    app.stop().await.expect("clean stop");
}

#[actix_rt::test]
async fn the_body_timeout_is_validated_naming_the_key() {
    let err = switchboard::config::Settings::from_toml("[api]\nbody_timeout_ms = 0").unwrap_err();
    assert!(err.to_string().contains("api.body_timeout_ms"), "{err}");
}

#[actix_rt::test]
async fn a_stopping_server_refuses_new_connections_at_once() {
    let django = FakeDjango::start();
    django.set_chat_default(ChatEndpoint::AiRespond, Behavior::Stall);
    let mut app = spawn_app(&format!(
        "{}[shutdown]\ngrace_ms = 600000",
        django.config("calls_timeout_ms = 600000")
    ));
    // A request in flight until Django answers, which it will not: the drain could last the whole
    // grace.
    let body = json!({
        "session_id": "8f14e45f-ceea-467f-a0e6-3b1c2d4e5f60",
        "message_id": uuid::Uuid::new_v4(),
        "customer": {"id": "c-42", "name": "Ada", "email": "ada@example.com"},
        "message": "hello",
        "history": []
    })
    .to_string();
    let mut in_flight = TcpStream::connect(app.addr).await.expect("connect");
    in_flight
        .write_all(
            format!(
                "POST /api/v1/debug/django/ai-respond HTTP/1.1\r\nHost: test\r\n\
                 Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        )
        .await
        .expect("send");
    let readyz = app.url("/readyz");
    eventually("the AI call in flight", || {
        let url = readyz.clone();
        async move { get(&url).await.body["django"]["calls"]["in_flight"] == 1 }
    })
    .await;

    app.begin_stop();
    // Polled (nothing reports the socket's closing): far sooner than the grace, a connection
    // attempt is refused rather than accepted and left waiting.
    let addr = app.addr;
    eventually("new connections refused", || async move {
        // Bounded: a socket nobody accepts on completes handshakes until its backlog is full, and
        // then leaves new ones pending.
        let attempt = tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(addr)).await;
        matches!(attempt, Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused)
    })
    .await;
    // The chat port too, while the REST drain still waits for the call in flight.
    let chat = app.chat_addr;
    eventually("new chat connections refused", || async move {
        let attempt = tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(chat)).await;
        matches!(attempt, Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused)
    })
    .await;

    // The drain ends with the request in flight.
    django.release();
    let answer = read_answer(&mut in_flight, false).await;
    assert_eq!(answer.status, 200, "{}", answer.head);
    app.wait_exit().await.expect("clean stop");
}

#[actix_rt::test]
async fn metrics_export_the_process_open_files_memory_and_cpu() {
    let app = spawn_app("");
    let text = scrape(&app).await;
    for name in [
        "process_open_fds",
        "process_max_fds",
        "process_resident_memory_bytes",
        "process_virtual_memory_bytes",
        "process_cpu_seconds_total",
        "process_start_time_seconds",
        "process_threads",
    ] {
        let value = metric(&text, name, &[]).unwrap_or_else(|| panic!("{name} missing"));
        assert!(value > 0.0, "{name} = {value}");
    }
    // Read at each scrape, not once: sockets held open show in the next scrape's count. Other tests
    // of this process open and close descriptors meanwhile, far fewer than the margin left here.
    let before = metric(&text, "process_open_fds", &[]).unwrap();
    let held: Vec<_> = (0..500)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind"))
        .collect();
    let after = metric(&scrape(&app).await, "process_open_fds", &[]).unwrap();
    assert!(after >= before + 250.0, "{before} → {after}");
    drop(held);
    app.stop().await.expect("clean stop");
}

#[actix_rt::test]
async fn a_method_a_route_lacks_is_405_in_json_with_allow() {
    let app = spawn_app("");
    let id = id_of(&create_ticket(&app, "405").await);
    for (method, path, allow) in [
        (
            "DELETE",
            format!("/api/v1/tickets/{id}"),
            "GET, PATCH, HEAD",
        ),
        ("PUT", "/api/v1/tickets".to_string(), "POST, GET, HEAD"),
        ("POST", "/healthz".to_string(), "GET, HEAD"),
    ] {
        let resp = request(method, &app.url(&path), None, &[]).await;
        assert_eq!(resp.status, 405, "{method} {path}");
        assert_eq!(resp.error_code(), "method_not_allowed", "{}", resp.text);
        let mut listed: Vec<String> = resp
            .header("Allow")
            .unwrap_or_default()
            .split(',')
            .map(|m| m.trim().to_string())
            .collect();
        let mut expected: Vec<String> = allow.split(", ").map(str::to_string).collect();
        listed.sort();
        expected.sort();
        assert_eq!(listed, expected, "{method} {path}");
    }
    app.stop().await.expect("clean stop");
}

#[actix_rt::test]
async fn head_answers_every_get_route_with_its_head_and_no_body() {
    let app = spawn_app("");
    let id = id_of(&create_ticket(&app, "head").await);
    for path in [
        "/healthz".to_string(),
        "/readyz".to_string(),
        "/metrics".to_string(),
        "/api/v1/tickets".to_string(),
        format!("/api/v1/tickets/{id}"),
        format!("/api/v1/tickets/{id}/events"),
        "/api/v1/admin/dead-letters".to_string(),
    ] {
        let got = get(&app.url(&path)).await;
        // `Connection: close`: whatever the server sends for the HEAD arrives before it closes.
        let raw = exchange(
            app.addr,
            format!("HEAD {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n").as_bytes(),
            true,
        )
        .await;
        assert_eq!(raw.status, got.status, "HEAD {path}: {}", raw.head);
        assert!(
            raw.body.is_empty(),
            "HEAD {path} sent a body: {:?}",
            raw.body
        );
        assert_eq!(
            raw.header("Content-Type"),
            got.header("Content-Type"),
            "{path}"
        );
        if path.contains("/tickets/") || path == "/healthz" {
            assert_eq!(raw.header("ETag"), got.header("ETag"), "{path}");
            assert_eq!(
                raw.header("Content-Length"),
                Some(got.text.len().to_string()),
                "{path}"
            );
        }
    }
    app.stop().await.expect("clean stop");
}

#[actix_rt::test]
async fn a_body_in_another_charset_or_coding_is_415() {
    let app = spawn_app("");
    let url = app.url("/api/v1/tickets");
    let ticket = json!({"subject": "charset", "requester": "alice@example.com"});

    let latin1 = request(
        "POST",
        &url,
        Some(&ticket),
        &[("Content-Type", "application/json; charset=ISO-8859-1")],
    )
    .await;
    assert_eq!(latin1.status, 415, "{}", latin1.text);
    assert_eq!(latin1.error_code(), "unsupported_charset");

    let gzip = request("POST", &url, Some(&ticket), &[("Content-Encoding", "gzip")]).await;
    assert_eq!(gzip.status, 415, "{}", gzip.text);
    assert_eq!(gzip.error_code(), "unsupported_encoding");
    assert_eq!(gzip.header("Accept-Encoding").as_deref(), Some("identity"));

    // UTF-8 said outright, in any spelling, and the identity coding are what a body is anyway.
    let utf8 = request(
        "POST",
        &url,
        Some(&ticket),
        &[
            ("Content-Type", "application/json; charset=\"utf-8\""),
            ("Content-Encoding", "identity"),
        ],
    )
    .await;
    assert_eq!(utf8.status, 201, "{}", utf8.text);
    app.stop().await.expect("clean stop");
}

/// Asserts a protocol-level refusal: the status, the JSON error code, a request id, and a closed
/// connection.
fn assert_refused(answer: &Raw, status: u16, code: &str) {
    assert_eq!(answer.status, status, "{}\n{}", answer.head, answer.body);
    assert_eq!(answer.json()["error"]["code"], code);
    assert!(answer.header("X-Request-Id").is_some(), "{}", answer.head);
    assert_eq!(
        answer.header("Content-Type").as_deref(),
        Some("application/json")
    );
    assert!(answer.closed);
}

#[actix_rt::test]
async fn requests_that_do_not_parse_are_answered_in_json_and_the_server_keeps_serving() {
    let app = spawn_app("");
    for request in [
        &b"THIS IS NOT HTTP\r\n\r\n"[..],
        b"GET /healthz HTTP/9.9\r\nHost: test\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: test\r\nBad Header: x\r\n\r\n",
        b"GET /he\x01lthz HTTP/1.1\r\nHost: test\r\n\r\n",
    ] {
        let answer = exchange(app.addr, request, true).await;
        assert_refused(&answer, 400, "malformed_request");
    }

    // Too many headers, and a head beyond any buffer: 431, like a head over api.max_header_bytes.
    let many: String = (0..120).map(|i| format!("X-H{i}: v\r\n")).collect();
    let huge = format!("X-Big: {}\r\n", "x".repeat(200 * 1024));
    for headers in [many, huge] {
        let request = format!("GET /healthz HTTP/1.1\r\nHost: test\r\n{headers}\r\n");
        let answer = exchange(app.addr, request.as_bytes(), true).await;
        assert_refused(&answer, 431, "headers_too_large");
    }

    // A good request ahead of a bad one on the same connection is answered first.
    let answer = exchange(
        app.addr,
        b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\nNOT HTTP\r\n\r\n",
        true,
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.head);
    assert!(
        answer.body.contains("\"malformed_request\""),
        "{}",
        answer.body
    );

    // A body that stops being HTTP is its handler's to answer, in JSON like any bad body.
    let answer = exchange(
        app.addr,
        b"POST /api/v1/tickets HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n\
          Transfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n",
        true,
    )
    .await;
    assert_eq!(answer.status, 400, "{}", answer.head);
    assert_eq!(answer.json()["error"]["code"], "malformed_json");

    assert_eq!(get(&app.url("/healthz")).await.status, 200);
    let text = scrape(&app).await;
    assert!(
        metric(
            &text,
            "switchboard_http_protocol_errors_total",
            &[("reason", "malformed")]
        )
        .unwrap_or(0.0)
            >= 4.0
    );
    app.stop().await.expect("clean stop");
}

#[actix_rt::test]
async fn a_request_head_that_never_completes_is_answered_408_in_json_and_closed() {
    let app = spawn_app("[api]\nrequest_timeout_ms = 300");
    // Read until the server closes: only its own head timer can end the wait before WAIT does.
    let answer = exchange(app.addr, b"GET /healthz HTTP/1.1\r\nHost: te", true).await;
    assert_refused(&answer, 408, "request_timeout");

    // Later heads on a kept-alive connection too, once they have begun.
    let mut stream = TcpStream::connect(app.addr).await.expect("connect");
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n")
        .await
        .expect("send");
    assert_eq!(read_answer(&mut stream, false).await.status, 200);
    stream.write_all(b"GET /hea").await.expect("send");
    assert_refused(
        &read_answer(&mut stream, true).await,
        408,
        "request_timeout",
    );
    app.stop().await.expect("clean stop");
}
