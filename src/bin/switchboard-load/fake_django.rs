//! `fake-django` mode: a fast stand-in for Django (docs/django-api.md), so that a chat benchmark
//! measures Switchboard and not its AI backend. One current-thread tokio runtime (one core), a
//! hand-rolled HTTP/1.1 keep-alive responder over `httparse`, fixed answers:
//!
//! - `POST /api/livechat/ai/respond/`: 200 with a fixed reply, after `--delay-ms` if given; with
//!   `--handoff-rate F` a share `F` of sessions (picked by [`hands_off`] on the request's
//!   `session_id`, 1: all) is answered with `handoff: true`, so the chat is queued for an agent;
//! - `POST /api/tickets/sync/`: 200 `{}` (every event accepted);
//! - `POST /api/livechat/tickets/create/`: 201 naming the request's `ticket_id`;
//! - `POST /api/livechat/services/manage/`: 200 `{"ok": true, …}`;
//! - `POST /api/livechat/handoffs/`: 201 `{}` (the handoff step recorded);
//! - anything else (`GET /api/tickets/{id}/` included): 404 `{}`.
//!
//! It prints `listening <addr>` once bound, then serves until killed (or until its stdin closes,
//! with `--exit-on-stdin-eof`, which is how `chat --spawn-fake-django` ties it to its parent).

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::chat::plan::hands_off;

/// The AI's answer: fixed, so that answering costs no JSON work.
const AI_REPLY: &str = r#"{"reply":"Thanks, I am looking into it.","confidence":0.9,"handoff":false,"suggested_actions":[]}"#;
/// The AI's answer for a session handed to a human.
const AI_HANDOFF_REPLY: &str = r#"{"reply":"Let me find a person for you.","confidence":0.4,"handoff":true,"suggested_actions":[]}"#;
const SERVICE_REPLY: &str = r#"{"ok":true,"message":"Done.","data":{}}"#;
/// Largest request accepted (Switchboard's AI calls carry at most 50 history messages).
const MAX_REQUEST: usize = 1 << 20;

#[derive(Debug, Clone, clap::Args)]
pub struct FakeDjangoArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
    /// Wait this long before answering an AI call (a model's thinking time).
    #[arg(long, default_value_t = 0)]
    pub delay_ms: u64,
    /// Share of sessions (0 to 1) the AI hands to a human agent (`handoff: true`).
    #[arg(long, default_value_t = 0.0)]
    pub handoff_rate: f64,
    /// Exit when stdin reaches end of file (for a parent that owns this process).
    #[arg(long, hide = true)]
    pub exit_on_stdin_eof: bool,
}

pub fn run(args: FakeDjangoArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("runtime")?;
    rt.block_on(async move {
        let listener = TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("bind {}", args.listen))?;
        println!("listening {}", listener.local_addr()?);
        if args.exit_on_stdin_eof {
            std::thread::spawn(|| {
                let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
                std::process::exit(0);
            });
        }
        let delay = Duration::from_millis(args.delay_ms);
        let handoff_rate = args.handoff_rate;
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    tokio::spawn(connection(stream, delay, handoff_rate));
                }
                // Out of descriptors, say: wait rather than spin.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    })
}

/// One keep-alive connection: requests answered in order, one at a time.
async fn connection(mut stream: TcpStream, delay: Duration, handoff_rate: f64) {
    let _ = stream.set_nodelay(true);
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    let mut out: Vec<u8> = Vec::with_capacity(512);
    loop {
        // Answer every whole request already buffered, then write them in one go.
        let mut used = 0;
        out.clear();
        loop {
            match parse(&buf[used..]) {
                Ok(Some(req)) => {
                    if req.path == Route::Ai && !delay.is_zero() {
                        tokio::time::sleep(delay).await;
                    }
                    answer(
                        &req,
                        &buf[used + req.body.0..used + req.body.1],
                        handoff_rate,
                        &mut out,
                    );
                    used += req.len;
                }
                Ok(None) => break,
                Err(()) => {
                    let _ = stream
                        .write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                        .await;
                    return;
                }
            }
        }
        buf.drain(..used);
        if !out.is_empty() && stream.write_all(&out).await.is_err() {
            return;
        }
        if buf.len() > MAX_REQUEST {
            return;
        }
        if buf.capacity() - buf.len() < 2048 {
            buf.reserve(4096);
        }
        match stream.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Route {
    Ai,
    Sync,
    ChatTicket,
    Service,
    Handoff,
    Other,
}

struct Request {
    path: Route,
    /// The body's range in the parsed bytes.
    body: (usize, usize),
    /// Head and body.
    len: usize,
}

/// One whole request at the front of `buf`; `Ok(None)` while it is incomplete.
fn parse(buf: &[u8]) -> Result<Option<Request>, ()> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    let head = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(()),
    };
    let mut length = 0usize;
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            length = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse().ok())
                .ok_or(())?;
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            // Switchboard's client sends sized bodies; anything else is not worth supporting here.
            return Err(());
        }
    }
    if buf.len() < head + length {
        return Ok(None);
    }
    let path = match (req.method.unwrap_or(""), req.path.unwrap_or("")) {
        ("POST", "/api/livechat/ai/respond/") => Route::Ai,
        ("POST", "/api/tickets/sync/") => Route::Sync,
        ("POST", "/api/livechat/tickets/create/") => Route::ChatTicket,
        ("POST", "/api/livechat/services/manage/") => Route::Service,
        ("POST", "/api/livechat/handoffs/") => Route::Handoff,
        _ => Route::Other,
    };
    Ok(Some(Request {
        path,
        body: (head, head + length),
        len: head + length,
    }))
}

fn answer(req: &Request, body: &[u8], handoff_rate: f64, out: &mut Vec<u8>) {
    let ticket;
    let (status, reply) = match req.path {
        Route::Ai if ai_hands_off(body, handoff_rate) => ("200 OK", AI_HANDOFF_REPLY),
        Route::Ai => ("200 OK", AI_REPLY),
        Route::Handoff => ("201 Created", "{}"),
        Route::Sync => ("200 OK", "{}"),
        Route::Service => ("200 OK", SERVICE_REPLY),
        Route::ChatTicket => {
            let id = serde_json::from_slice::<serde_json::Value>(body)
                .ok()
                .and_then(|v| v["ticket_id"].as_str().map(str::to_string))
                .unwrap_or_default();
            ticket = serde_json::json!({
                "ticket_id": id,
                "url": format!("http://fake-django.invalid/tickets/{id}"),
            })
            .to_string();
            ("201 Created", ticket.as_str())
        }
        Route::Other => ("404 Not Found", "{}"),
    };
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_bytes());
    out.extend_from_slice(b"\r\nContent-Type: application/json\r\nContent-Length: ");
    out.extend_from_slice(reply.len().to_string().as_bytes());
    out.extend_from_slice(b"\r\n\r\n");
    out.extend_from_slice(reply.as_bytes());
}

/// Whether this AI call's session is handed off; the body is read only for a share strictly
/// between none and all, so the usual answer costs no JSON work.
fn ai_hands_off(body: &[u8], rate: f64) -> bool {
    if rate <= 0.0 || rate >= 1.0 {
        return rate >= 1.0;
    }
    #[derive(serde::Deserialize)]
    struct Call<'a> {
        #[serde(borrow)]
        session_id: &'a str,
    }
    serde_json::from_slice::<Call>(body).is_ok_and(|c| hands_off(c.session_id, rate))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ai_call_is_answered_with_the_fixed_reply() {
        let body = r#"{"message":"hi"}"#;
        let raw = format!(
            "POST /api/livechat/ai/respond/ HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let req = parse(raw.as_bytes()).unwrap().unwrap();
        assert_eq!(req.path, Route::Ai);
        assert_eq!(req.len, raw.len());
        let mut out = Vec::new();
        answer(&req, &raw.as_bytes()[req.body.0..req.body.1], 0.0, &mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(text.ends_with(AI_REPLY));
    }

    #[test]
    fn a_partial_request_waits_for_its_body() {
        let raw = b"POST /api/tickets/sync/ HTTP/1.1\r\nContent-Length: 10\r\n\r\n{}";
        assert!(parse(raw).unwrap().is_none());
    }

    #[test]
    fn chat_ticket_answer_names_the_ticket() {
        let body = r#"{"ticket_id":"t-1"}"#;
        let req = Request {
            path: Route::ChatTicket,
            body: (0, body.len()),
            len: body.len(),
        };
        let mut out = Vec::new();
        answer(&req, body.as_bytes(), 0.0, &mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("HTTP/1.1 201 Created"));
        assert!(text.contains(r#""ticket_id":"t-1""#));
    }

    #[test]
    fn handoff_rate_answers_the_chosen_sessions_with_handoff() {
        let req = Request {
            path: Route::Ai,
            body: (0, 0),
            len: 0,
        };
        let ai = |session: &str, rate: f64| {
            let body = format!(r#"{{"session_id":"{session}","message":"hi"}}"#);
            let mut out = Vec::new();
            answer(&req, body.as_bytes(), rate, &mut out);
            String::from_utf8(out).unwrap().ends_with(AI_HANDOFF_REPLY)
        };
        assert!(ai("s-1", 1.0));
        assert!(!ai("s-1", 0.0));
        let picked = (0..1000).filter(|i| ai(&format!("s-{i}"), 0.5)).count();
        assert!((400..600).contains(&picked), "{picked}");
        assert_eq!(
            (0..1000).filter(|i| ai(&format!("s-{i}"), 0.5)).count(),
            (0..1000)
                .filter(|i| hands_off(&format!("s-{i}"), 0.5))
                .count()
        );
    }
}
