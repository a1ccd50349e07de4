//! The REST listener's connection guard: every accepted connection's bytes pass through a
//! [`Guarded`] stream on their way to actix-http's HTTP/1 dispatcher.
//!
//! The dispatcher answers what it cannot parse (a bad request line or header, too many headers, a
//! head past its buffer, a head that never comes) itself, before any middleware runs: an empty
//! 400, 431 or 408, and an ERROR log line without the peer. Such requests are noise from the
//! internet, and every answer of the API has the JSON error shape. So the guard runs the same
//! parser (actix-http's own `h1::Codec`) over a copy of what it reads, one step ahead of the
//! dispatcher. When a request head would fail, the dispatcher is given the bytes before it and
//! then the end of the stream, as if the client had stopped there: it finishes the answers it
//! owes, and closes. The guard then writes the JSON answer before the connection closes, logs the
//! refusal at INFO with the peer's address and counts it. Errors inside a body are the handler's
//! to answer (it sees the body end early); those are only logged and counted.
//!
//! The guard also owns the head timeout (`api.request_timeout_ms`), for the same reason: the
//! dispatcher's own would answer an empty 408. It times every head, not only a connection's first.
//! And it closes a connection whose request body has not arrived a moment after
//! `api.body_timeout_ms`: a handler reading the body has answered 408 by then, but a body no
//! handler reads would otherwise be waited for without end.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use actix_codec::Decoder;
use actix_http::error::ParseError;
use actix_http::h1::{Codec, Message, MessageType};
use actix_http::ServiceConfig;
use actix_web::http::StatusCode;
use actix_web::web::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

use crate::metrics as m;

/// Why the guard closed a connection with its own answer.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error("malformed request head: {0}")]
    Malformed(#[source] ParseError),
    #[error("request head too large or with too many headers")]
    HeadTooLarge,
    #[error("no complete request head within {} ms", .0.as_millis())]
    HeadTimeout(Duration),
    #[error("malformed request body: {0}")]
    Body(#[source] ParseError),
    #[error("request body not complete within {} ms", .0.as_millis())]
    BodyTimeout(Duration),
}

impl Refusal {
    fn from_parse(error: ParseError, in_body: bool) -> Self {
        match error {
            _ if in_body => Self::Body(error),
            ParseError::TooLarge => Self::HeadTooLarge,
            other => Self::Malformed(other),
        }
    }

    /// The `reason` label of the protocol-error counter.
    fn reason(&self) -> &'static str {
        match self {
            Self::Malformed(_) => "malformed",
            Self::HeadTooLarge => "head_too_large",
            Self::HeadTimeout(_) => "head_timeout",
            Self::Body(_) => "body",
            Self::BodyTimeout(_) => "body_timeout",
        }
    }

    /// The answer's status and code, or `None` where the handler answers (a bad or late body).
    fn answer(&self) -> Option<(StatusCode, &'static str)> {
        match self {
            Self::Malformed(_) => Some((StatusCode::BAD_REQUEST, "malformed_request")),
            Self::HeadTooLarge => Some((
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "headers_too_large",
            )),
            Self::HeadTimeout(_) => Some((StatusCode::REQUEST_TIMEOUT, "request_timeout")),
            Self::Body(_) | Self::BodyTimeout(_) => None,
        }
    }
}

/// The answer to a refused request, whole: the dispatcher is not involved, so its head is written
/// here, with the same `X-Request-Id` every other answer carries.
fn answer_bytes(status: StatusCode, code: &str, message: &str, request_id: &str) -> Bytes {
    let body = serde_json::json!({"error": {"code": code, "message": message}}).to_string();
    let head = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         connection: close\r\nx-request-id: {request_id}\r\n\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        body.len(),
    );
    Bytes::from(head + &body)
}

/// What the parser run ahead of the dispatcher has seen.
struct Lookahead {
    codec: Codec,
    /// Bytes read but not yet parsed into a whole head or body chunk.
    buf: BytesMut,
    in_body: bool,
    heads: u64,
}

enum Seen {
    /// Everything so far parses (or may, once more arrives).
    Fine,
    /// The connection switched protocols: nothing more to parse.
    Upgraded,
    /// The parser failed; the last `withheld` of the bytes just fed are kept from the dispatcher.
    Failed { error: ParseError, withheld: usize },
}

impl Lookahead {
    fn new(config: &ServiceConfig) -> Self {
        Self {
            codec: Codec::new(config.clone()),
            buf: BytesMut::new(),
            in_body: false,
            heads: 0,
        }
    }

    fn feed(&mut self, bytes: &[u8]) -> Seen {
        self.buf.extend_from_slice(bytes);
        // What followed the last head completed in these bytes.
        let mut after_head = None;
        let seen = loop {
            match self.codec.decode(&mut self.buf) {
                Ok(Some(Message::Item(_))) => {
                    self.heads += 1;
                    after_head = Some(self.buf.len());
                    match self.codec.message_type() {
                        MessageType::None => self.in_body = false,
                        MessageType::Payload => self.in_body = true,
                        MessageType::Stream => break Seen::Upgraded,
                    }
                }
                Ok(Some(Message::Chunk(None))) => self.in_body = false,
                Ok(Some(Message::Chunk(Some(_)))) => {}
                Ok(None) => break Seen::Fine,
                // A head fails before the parser consumes any of it, so what is left is exactly
                // the failing head. A body's parser consumes as it goes, the bad byte included:
                // the body is cut where these bytes begin, or right after its head if that is
                // among them, and the handler sees a body that ended early.
                Err(error) => {
                    let withheld = match self.in_body {
                        false => self.buf.len(),
                        true => after_head.unwrap_or(bytes.len()),
                    };
                    break Seen::Failed { error, withheld };
                }
            }
        };
        // An idle keep-alive connection keeps no buffer.
        if self.buf.is_empty() {
            self.buf = BytesMut::new();
        }
        seen
    }
}

/// How long a request's head, and then its body, may take to arrive.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// `api.request_timeout_ms`
    pub head: Duration,
    /// `api.body_timeout_ms`
    pub body: Duration,
}

/// How much later than a handler's body timeout the guard closes a connection whose body has not
/// arrived: enough for the handler's 408 to go out first.
const BODY_BACKSTOP_MARGIN: Duration = Duration::from_secs(1);

/// A REST connection's stream, as the dispatcher reads and writes it (see the module docs).
pub struct Guarded<T> {
    io: T,
    peer: Option<SocketAddr>,
    /// `None` once the connection is upgraded or refused: nothing more to parse.
    lookahead: Option<Lookahead>,
    /// While a request head is awaited (see `poll_read`).
    head_deadline: Option<Pin<Box<Sleep>>>,
    head_timeout: Duration,
    /// While a request body is awaited: a backstop for a body no handler reads, which actix-http
    /// would otherwise wait for (a chunked one) before the connection can go on.
    body_deadline: Option<Pin<Box<Sleep>>>,
    body_timeout: Duration,
    /// The end of the stream is all the dispatcher reads from now on.
    refused: bool,
    /// The answer still to write before the connection closes.
    answer: Option<Bytes>,
}

impl<T> Guarded<T> {
    /// `config` is only the parser's (its clock, shared: one per worker thread, not per
    /// connection, as each new one starts a timer task).
    pub fn new(
        io: T,
        peer: Option<SocketAddr>,
        timeouts: Timeouts,
        config: &ServiceConfig,
    ) -> Self {
        Self {
            io,
            peer,
            lookahead: Some(Lookahead::new(config)),
            head_deadline: Some(Box::pin(tokio::time::sleep(timeouts.head))),
            head_timeout: timeouts.head,
            body_deadline: None,
            // Later than the handler's own (which answers 408): this one only ends what no
            // handler waits for.
            body_timeout: timeouts.body + BODY_BACKSTOP_MARGIN,
            refused: false,
            answer: None,
        }
    }

    fn refuse(&mut self, refusal: Refusal) {
        self.refused = true;
        self.lookahead = None;
        self.head_deadline = None;
        self.body_deadline = None;
        let peer = self.peer.map(|p| p.to_string()).unwrap_or_default();
        let request_id = uuid::Uuid::new_v4().to_string();
        metrics::counter!(m::HTTP_PROTOCOL_ERRORS, "reason" => refusal.reason()).increment(1);
        // Anyone on the internet can send these: INFO, never ERROR, and with who sent it.
        tracing::info!(
            %peer,
            reason = refusal.reason(),
            request_id,
            error = %refusal,
            "protocol error; closing the connection"
        );
        if let Some((status, code)) = refusal.answer() {
            self.answer = Some(answer_bytes(
                status,
                code,
                &refusal.to_string(),
                &request_id,
            ));
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Guarded<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.refused {
            return Poll::Ready(Ok(()));
        }
        if let Some(deadline) = this.head_deadline.as_mut() {
            if deadline.as_mut().poll(cx).is_ready() {
                this.refuse(Refusal::HeadTimeout(this.head_timeout));
                return Poll::Ready(Ok(()));
            }
        }
        if let Some(deadline) = this.body_deadline.as_mut() {
            if deadline.as_mut().poll(cx).is_ready() {
                this.refuse(Refusal::BodyTimeout(this.body_timeout));
                return Poll::Ready(Ok(()));
            }
        }
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.io).poll_read(cx, buf))?;
        let Some(lookahead) = this.lookahead.as_mut() else {
            return Poll::Ready(Ok(()));
        };
        let read = buf.filled().len() - before;
        if read == 0 {
            return Poll::Ready(Ok(()));
        }
        match lookahead.feed(&buf.filled()[before..]) {
            // The first head is timed from the connection's start (as actix-http does); a later
            // one from its first byte, so that an idle keep-alive connection is the keep-alive
            // timer's to close, but a head sent a byte at a time is not let off.
            Seen::Fine if lookahead.heads > 0 => {
                let head_pending = !lookahead.in_body && !lookahead.buf.is_empty();
                if !head_pending {
                    this.head_deadline = None;
                } else if this.head_deadline.is_none() {
                    this.head_deadline = Some(Box::pin(tokio::time::sleep(this.head_timeout)));
                }
                if !lookahead.in_body {
                    this.body_deadline = None;
                } else if this.body_deadline.is_none() {
                    this.body_deadline = Some(Box::pin(tokio::time::sleep(this.body_timeout)));
                }
            }
            Seen::Fine => {}
            Seen::Upgraded => {
                this.lookahead = None;
                this.head_deadline = None;
                this.body_deadline = None;
            }
            Seen::Failed { error, withheld } => {
                let in_body = lookahead.in_body;
                // Of what was just read, the dispatcher gets only what precedes the failure (a
                // part of a failing head read earlier is already there: incomplete, harmless).
                buf.set_filled(before + read.saturating_sub(withheld));
                this.refuse(Refusal::from_parse(error, in_body));
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Guarded<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        // The dispatcher closes once it has written every answer it owed: ours comes last.
        while let Some(answer) = this.answer.as_mut() {
            if answer.is_empty() {
                this.answer = None;
                break;
            }
            let n = ready!(Pin::new(&mut this.io).poll_write(cx, answer))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            *answer = answer.slice(n..);
        }
        ready!(Pin::new(&mut this.io).poll_flush(cx))?;
        Pin::new(&mut this.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    const TIMEOUTS: Timeouts = Timeouts {
        head: Duration::from_secs(30),
        body: Duration::from_secs(30),
    };

    /// Log lines written by the subscriber of one test.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().expect("log buffer").extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
        type Writer = Captured;

        fn make_writer(&'a self) -> Self::Writer {
            self.clone()
        }
    }

    impl Captured {
        fn text(&self) -> String {
            String::from_utf8_lossy(&self.0.lock().expect("log buffer")).to_string()
        }
    }

    /// Sends `request` from a client to a guarded stream read as the dispatcher would (to its end),
    /// then closes as the dispatcher would: what the dispatcher read, what the client got, and the
    /// log lines.
    async fn through_guard(request: &[u8]) -> (Vec<u8>, String, String) {
        let logs = Captured::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(logs.clone())
            .with_max_level(tracing::Level::TRACE)
            .json()
            .finish();
        let _default = tracing::subscriber::set_default(subscriber);
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let peer: SocketAddr = "203.0.113.7:5555".parse().expect("address");
        let config = ServiceConfig::default();
        let mut guarded = Guarded::new(server, Some(peer), TIMEOUTS, &config);
        client.write_all(request).await.expect("client writes");
        let mut dispatched = Vec::new();
        guarded
            .read_to_end(&mut dispatched)
            .await
            .expect("guard reads");
        guarded.shutdown().await.expect("guard closes");
        let mut answer = String::new();
        client
            .read_to_string(&mut answer)
            .await
            .expect("client reads");
        (dispatched, answer, logs.text())
    }

    #[actix_rt::test]
    async fn a_bad_head_is_kept_from_the_dispatcher_answered_in_json_and_logged_at_info_with_the_peer(
    ) {
        let good = b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n";
        let (dispatched, answer, logs) =
            through_guard(&[&good[..], b"NOT HTTP\r\n\r\n"].concat()).await;
        assert_eq!(dispatched, good, "only the request before the bad one");
        assert!(
            answer.starts_with("HTTP/1.1 400 Bad Request\r\n"),
            "{answer}"
        );
        assert!(
            answer.contains("\"code\":\"malformed_request\""),
            "{answer}"
        );
        assert!(logs.contains("\"level\":\"INFO\""), "{logs}");
        assert!(logs.contains("203.0.113.7:5555"), "{logs}");
        assert!(!logs.contains("\"level\":\"ERROR\""), "{logs}");
    }

    #[actix_rt::test]
    async fn a_bad_body_is_left_to_its_handler_to_answer() {
        let head =
            b"POST /api/v1/tickets HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n";
        let (dispatched, answer, logs) =
            through_guard(&[&head[..], b"zz\r\n{}\r\n"].concat()).await;
        assert_eq!(dispatched, head, "the body ends where it went bad");
        assert_eq!(answer, "", "the handler answers the request, not the guard");
        assert!(logs.contains("\"reason\":\"body\""), "{logs}");
        assert!(!logs.contains("\"level\":\"ERROR\""), "{logs}");
    }

    #[actix_rt::test]
    async fn good_requests_pass_through_unchanged() {
        let requests = b"POST /a HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\n{}\
            GET /b HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n";
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let config = ServiceConfig::default();
        let mut guarded = Guarded::new(server, None, TIMEOUTS, &config);
        client.write_all(requests).await.expect("client writes");
        drop(client);
        let mut dispatched = Vec::new();
        guarded
            .read_to_end(&mut dispatched)
            .await
            .expect("guard reads");
        assert_eq!(dispatched, requests);
        assert!(!guarded.refused);
    }
}
