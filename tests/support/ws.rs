//! A WebSocket client for the chat listener: the real protocol over a real socket, waits bounded by
//! [`super::WAIT`]. [`ChatClient`] speaks `switchboard.v1` through tokio-tungstenite; [`raw_frame`]
//! builds frames by hand for what a well-behaved client library refuses to send (invalid UTF-8,
//! oversized frames).

use std::net::SocketAddr;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use super::WAIT;

pub const SUBPROTOCOL: &str = "switchboard.v1";

/// What the server did with the connection instead of sending a frame.
#[derive(Debug, Clone, PartialEq)]
pub enum Ended {
    /// A close frame with this code.
    Closed(u16),
    /// The socket ended without a close frame.
    Dropped,
}

pub struct ChatClient {
    ws: WebSocketStream<TcpStream>,
    /// Frames read past the one a wait was for, in order.
    pub seen: Vec<Value>,
}

impl ChatClient {
    /// Connects to `/ws/chat` offering `switchboard.v1`, with extra headers (e.g. `Origin`).
    pub async fn connect_with(addr: SocketAddr, headers: &[(&str, &str)]) -> Result<Self, u16> {
        Self::connect_to(addr, "/ws/chat", headers).await
    }

    /// Connects to `path` (with its query) offering `switchboard.v1`; `Err`: the refusal's status.
    pub async fn connect_to(
        addr: SocketAddr,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<Self, u16> {
        let mut req = format!("ws://{addr}{path}").into_client_request().unwrap();
        req.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            HeaderValue::from_static(SUBPROTOCOL),
        );
        for (k, v) in headers {
            req.headers_mut().insert(
                tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        let connected = tokio::time::timeout(WAIT, async {
            let stream = TcpStream::connect(addr).await.expect("connect");
            tokio_tungstenite::client_async(req, stream).await
        })
        .await
        .expect("handshake within the wait");
        match connected {
            Ok((ws, resp)) => {
                assert_eq!(
                    resp.headers()
                        .get("Sec-WebSocket-Protocol")
                        .and_then(|v| v.to_str().ok()),
                    Some(SUBPROTOCOL)
                );
                Ok(Self {
                    ws,
                    seen: Vec::new(),
                })
            }
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => Err(resp.status().as_u16()),
            Err(e) => panic!("handshake failed: {e}"),
        }
    }

    pub async fn connect(addr: SocketAddr) -> Self {
        Self::connect_with(addr, &[])
            .await
            .expect("upgrade accepted")
    }

    /// Connects and starts a session; returns the client and the `session.started` frame.
    pub async fn start(addr: SocketAddr) -> (Self, Value) {
        let mut c = Self::connect(addr).await;
        c.send(json!({"type": "session.start"})).await;
        let started = c.expect("session.started").await;
        (c, started)
    }

    /// Connects and resumes `session_id` after `last_seq`.
    pub async fn resume(addr: SocketAddr, started: &Value, last_seq: u64) -> Self {
        let mut c = Self::connect(addr).await;
        c.send(json!({
            "type": "session.resume",
            "session_id": started["session_id"],
            "resume_token": started["resume_token"],
            "last_seq": last_seq,
        }))
        .await;
        c
    }

    pub async fn send(&mut self, frame: Value) {
        self.send_text(frame.to_string()).await;
    }

    pub async fn send_text(&mut self, text: String) {
        self.ws
            .send(Message::Text(text.into()))
            .await
            .expect("frame sent");
    }

    /// The next text frame, skipping pings; `Err` when the connection ends first.
    pub async fn next(&mut self) -> Result<Value, Ended> {
        // One deadline for the call: the server's pings, answered here, do not extend the wait.
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let msg = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .expect("a frame within the wait");
            match msg {
                Some(Ok(Message::Text(t))) => {
                    return Ok(serde_json::from_str(&t).expect("server frames are JSON"))
                }
                Some(Ok(Message::Close(frame))) => {
                    return Err(Ended::Closed(frame.map_or(1005, |f| u16::from(f.code))))
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                Some(Ok(other)) => panic!("unexpected frame {other:?}"),
                Some(Err(_)) | None => return Err(Ended::Dropped),
            }
        }
    }

    /// Reads frames until one of type `kind` (typing frames in between are kept in `seen`).
    pub async fn expect(&mut self, kind: &str) -> Value {
        loop {
            match self.next().await {
                Ok(v) if v["type"] == kind => return v,
                Ok(v) => self.seen.push(v),
                Err(e) => panic!(
                    "connection ended ({e:?}) while waiting for `{kind}`; seen {:?}",
                    self.seen
                ),
            }
        }
    }

    /// Reads until the connection ends; returns how, with the frames read before.
    pub async fn until_closed(&mut self) -> Ended {
        loop {
            match self.next().await {
                Ok(v) => self.seen.push(v),
                Err(e) => return e,
            }
        }
    }

    /// Sends a close and waits for the server's.
    pub async fn close(mut self) {
        let _ = self
            .ws
            .close(Some(tokio_tungstenite::tungstenite::protocol::CloseFrame {
                code: CloseCode::Normal,
                reason: "bye".into(),
            }))
            .await;
        let _ = tokio::time::timeout(WAIT, async { while self.ws.next().await.is_some() {} }).await;
    }

    /// Stops reading without closing: the socket stays open but unread.
    pub fn into_inner(self) -> WebSocketStream<TcpStream> {
        self.ws
    }
}

/// One client frame built by hand (masked, as clients must): `opcode` 1 text, 2 binary.
pub fn raw_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![0x80 | opcode];
    let mask = [0x12u8, 0x34, 0x56, 0x78];
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n if n <= u16::MAX as usize => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

/// A raw connection: upgraded by hand, then bytes in and out, for frames no library would send.
pub struct RawClient {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl RawClient {
    pub async fn connect(addr: SocketAddr) -> Self {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        let req = format!(
            "GET /ws/chat HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
             Sec-WebSocket-Protocol: {SUBPROTOCOL}\r\n\r\n"
        );
        stream.write_all(req.as_bytes()).await.unwrap();
        let mut c = Self {
            stream,
            buf: Vec::new(),
        };
        let head = c.read_until(b"\r\n\r\n").await;
        assert!(
            head.starts_with(b"HTTP/1.1 101"),
            "{}",
            String::from_utf8_lossy(&head)
        );
        c
    }

    async fn read_until(&mut self, end: &[u8]) -> Vec<u8> {
        loop {
            if let Some(i) = self.buf.windows(end.len()).position(|w| w == end) {
                return self.buf.drain(..i + end.len()).collect();
            }
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout(WAIT, self.stream.read(&mut chunk))
                .await
                .expect("bytes within the wait")
                .expect("read");
            assert!(n > 0, "connection closed");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    pub async fn write(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("write");
    }

    /// The next server frame as `(opcode, payload)`; `None` when the socket ends first.
    async fn next_frame(&mut self) -> Option<(u8, Vec<u8>)> {
        loop {
            if self.buf.len() >= 2 {
                let (len, start) = match self.buf[1] & 0x7f {
                    126 if self.buf.len() >= 4 => {
                        (u16::from_be_bytes([self.buf[2], self.buf[3]]) as usize, 4)
                    }
                    127 if self.buf.len() >= 10 => {
                        let mut n = [0u8; 8];
                        n.copy_from_slice(&self.buf[2..10]);
                        (u64::from_be_bytes(n) as usize, 10)
                    }
                    126 | 127 => (usize::MAX, 0),
                    n => (n as usize, 2),
                };
                if len != usize::MAX && self.buf.len() >= start + len {
                    let opcode = self.buf[0] & 0x0f;
                    let payload = self.buf.drain(..start + len).skip(start).collect();
                    return Some((opcode, payload));
                }
            }
            if !self.fill().await {
                return None;
            }
        }
    }

    /// Reads server frames until a close frame; returns its code (or 1005 when it has none, or
    /// 1006 when the socket ends without one) and the text frames before it.
    pub async fn until_close(&mut self) -> (u16, Vec<String>) {
        let mut texts = Vec::new();
        loop {
            match self.next_frame().await {
                None => return (1006, texts),
                Some((1, payload)) => texts.push(String::from_utf8_lossy(&payload).into_owned()),
                Some((8, payload)) if payload.len() >= 2 => {
                    return (u16::from_be_bytes([payload[0], payload[1]]), texts)
                }
                Some((8, _)) => return (1005, texts),
                Some(_) => {}
            }
        }
    }

    /// The next text frame (control frames skipped); panics if the connection closes first.
    pub async fn next_text(&mut self) -> String {
        loop {
            match self.next_frame().await {
                Some((1, payload)) => return String::from_utf8_lossy(&payload).into_owned(),
                Some((8, _)) | None => panic!("connection closed before a text frame"),
                Some(_) => {}
            }
        }
    }

    /// Waits (within the wait) for the next server ping, skipping other frames; returns when it
    /// arrived.
    pub async fn next_ping(&mut self) -> std::time::Instant {
        loop {
            while self.buf.len() >= 4 || (self.buf.len() >= 2 && self.buf[1] & 0x7f < 126) {
                let (len, start) = match self.buf[1] & 0x7f {
                    126 => (u16::from_be_bytes([self.buf[2], self.buf[3]]) as usize, 4),
                    127 => panic!("a frame over 64 KiB"),
                    n => (n as usize, 2),
                };
                if self.buf.len() < start + len {
                    break;
                }
                let opcode = self.buf[0] & 0x0f;
                self.buf.drain(..start + len);
                if opcode == 9 {
                    return std::time::Instant::now();
                }
            }
            assert!(self.fill().await, "connection closed before a ping");
        }
    }

    async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 4096];
        match tokio::time::timeout(WAIT, self.stream.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
            Ok(_) => false,
            Err(_) => panic!("no bytes within the wait"),
        }
    }
}

/// Sends a customer message and waits for its `message.ack`; returns its seq.
pub async fn say(c: &mut ChatClient, client_id: &str, text: &str) -> u64 {
    c.send(json!({"type": "message.send", "client_id": client_id, "text": text}))
        .await;
    c.expect("message.ack").await["seq"].as_u64().unwrap()
}

/// The next frame of `kind` for session `id` on an agent's connection (other frames are kept in
/// `seen`).
pub async fn expect_for(a: &mut ChatClient, kind: &str, id: &Value) -> Value {
    loop {
        let f = a.expect(kind).await;
        if f["session_id"] == *id {
            return f;
        }
        a.seen.push(f);
    }
}
