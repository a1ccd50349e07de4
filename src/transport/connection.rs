//! One WebSocket connection over a tokio `TcpStream`, split in two halves that share the socket:
//! [`Inbound`], a `Stream` of messages that a session actor attaches with `ctx.add_stream`, and
//! [`Outbound`], which the same actor keeps to send.
//!
//! An idle connection holds no buffer. Reads wait for readability and go into a per-thread scratch
//! buffer; bytes are kept (in `partial`) only while a frame is incomplete, and dropped as soon as it
//! completes. Writes go straight to the socket; only what the kernel would not take is queued, and
//! the queue is freed once it drains. The inbound half flushes that queue when the socket turns
//! writable (it is the half the actor's context polls), answers pings, and answers and ends on a
//! close or a protocol error. Both halves are `!Send`: they live on the arbiter thread of their actor.

use std::cell::{Cell, RefCell};
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
#[cfg(test)]
use std::time::Duration;

use futures_util::Stream;
use thiserror::Error;
use tokio::net::TcpStream;

use super::frame::{self, close_code, Assembler, Message, Opcode, ProtocolError, Role};
use super::handshake::{self, HandshakeError, Head, Route, Upgrade};

/// Size of each thread's scratch read buffer: one read takes at most this much.
const SCRATCH_LEN: usize = 16 * 1024;

thread_local! {
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0; SCRATCH_LEN].into_boxed_slice());
}

/// Limits of one connection.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest frame payload accepted; a larger frame closes the connection with 1009.
    pub max_frame: usize,
    /// Largest message (fragments joined) accepted; larger closes with 1009.
    pub max_message: usize,
    /// Bytes queued for a peer that does not read before `send` refuses (`SendError::Backlog`).
    pub max_queued: usize,
    /// Largest upgrade request head.
    pub max_head: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_frame: 64 * 1024,
            max_message: 64 * 1024,
            max_queued: 256 * 1024,
            max_head: 8 * 1024,
        }
    }
}

/// Why an upgrade did not complete.
#[derive(Debug, Error)]
pub enum AcceptError {
    #[error("upgrade refused: {0}")]
    Refused(#[from] HandshakeError),
    #[error("peer closed before the upgrade completed")]
    Eof,
    #[error("i/o during the upgrade")]
    Io(#[from] io::Error),
}

/// Why the inbound half ended with an error (it ends after yielding one).
#[derive(Debug, Error)]
pub enum TransportError {
    #[error("protocol error: {0}")]
    Protocol(#[from] ProtocolError),
    #[error("socket error")]
    Io(#[from] io::Error),
}

/// Why `Outbound::send_*` refused a message.
#[derive(Debug, Error)]
pub enum SendError {
    #[error("connection closing or closed")]
    Closed,
    #[error("peer not reading: {queued} bytes already queued (limit {max})")]
    Backlog { queued: usize, max: usize },
    #[error("socket error")]
    Io(#[from] io::Error),
}

/// What both halves share.
struct Shared {
    stream: TcpStream,
    /// Bytes the kernel would not take yet; empty (no allocation) almost always.
    out: RefCell<Vec<u8>>,
    /// A close frame was queued or sent: nothing more may be sent.
    close_sent: Cell<bool>,
    /// The inbound half's waker, woken when `out` gains bytes so it waits for writability.
    waker: RefCell<Option<Waker>>,
    max_queued: usize,
}

impl Shared {
    /// Writes one frame: straight to the socket, queueing only what it would not take.
    fn send(&self, opcode: Opcode, payload: &[u8]) -> Result<(), SendError> {
        if self.close_sent.get() {
            return Err(SendError::Closed);
        }
        let mut header = [0u8; frame::MAX_HEADER_LEN];
        let n = frame::encode_header(&mut header, true, opcode, payload.len(), None);
        let header = &header[..n];
        let mut out = self.out.borrow_mut();
        let written = if out.is_empty() {
            match self
                .stream
                .try_write_vectored(&[IoSlice::new(header), IoSlice::new(payload)])
            {
                Ok(w) => w,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
                Err(e) => return Err(SendError::Io(e)),
            }
        } else {
            if out.len() + header.len() + payload.len() > self.max_queued {
                return Err(SendError::Backlog {
                    queued: out.len(),
                    max: self.max_queued,
                });
            }
            0
        };
        if written == header.len() + payload.len() {
            return Ok(());
        }
        if written < header.len() {
            out.extend_from_slice(&header[written..]);
            out.extend_from_slice(payload);
        } else {
            out.extend_from_slice(&payload[written - header.len()..]);
        }
        drop(out);
        if let Some(w) = self.waker.borrow_mut().take() {
            w.wake();
        }
        Ok(())
    }

    fn send_close(&self, code: u16, reason: &str) {
        if !self.close_sent.get() {
            // A close that does not fit is dropped with the connection: the peer sees 1006.
            let _ = self.send(Opcode::Close, &frame::close_payload(code, reason));
            self.close_sent.set(true);
        }
    }

    /// Writes queued bytes while the socket takes them; registers for writability otherwise.
    fn poll_flush(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            let mut out = self.out.borrow_mut();
            if out.is_empty() {
                return Poll::Ready(Ok(()));
            }
            match self.stream.try_write(&out) {
                Ok(n) => {
                    out.drain(..n);
                    if out.is_empty() {
                        *out = Vec::new(); // free the queue: an idle connection holds nothing
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    drop(out);
                    match self.stream.poll_write_ready(cx) {
                        Poll::Ready(Ok(())) => continue,
                        Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                        Poll::Pending => return Poll::Pending,
                    }
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

/// Reads the upgrade request on `stream`, answers it, and returns the two halves of the connection.
/// A refused request gets its HTTP error response before the error is returned. The caller bounds
/// the time this may take (`tokio::time::timeout`).
pub async fn accept(
    stream: TcpStream,
    protocols: &[&'static str],
    limits: &Limits,
) -> Result<(Upgrade, Inbound, Outbound), AcceptError> {
    accept_routed(stream, protocols, limits, |_| Route::Upgrade)
        .await?
        .ok_or(AcceptError::Eof)
}

/// Like [`accept`], with the caller routing the request by its head first: `route` may answer it
/// itself ([`Route::Respond`]: the bytes are written, the connection closed, `Ok(None)` returned)
/// or have it upgraded.
pub async fn accept_routed(
    stream: TcpStream,
    protocols: &[&'static str],
    limits: &Limits,
    route: impl FnOnce(&Head) -> Route,
) -> Result<Option<(Upgrade, Inbound, Outbound)>, AcceptError> {
    let mut head = Vec::new();
    let mut route = Some(route);
    loop {
        stream.readable().await?;
        let read = SCRATCH.with(|s| {
            let mut s = s.borrow_mut();
            let n = stream.try_read(&mut s)?;
            head.extend_from_slice(&s[..n]);
            Ok::<usize, io::Error>(n)
        });
        match read {
            Ok(0) => return Err(AcceptError::Eof),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e.into()),
        }
        if route.is_some() {
            match handshake::parse_head(&head, limits.max_head) {
                Ok(None) => continue,
                Ok(Some(h)) => {
                    if let Route::Respond(bytes) = (route.take().expect("routed once"))(&h) {
                        let _ = write_all(&stream, &bytes).await;
                        return Ok(None);
                    }
                }
                Err(e) => {
                    let _ = write_all(&stream, e.response()).await;
                    return Err(e.into());
                }
            }
        }
        match handshake::parse_request(&head, protocols, limits.max_head) {
            Ok(None) => continue,
            Ok(Some((upgrade, used))) => {
                write_all(&stream, upgrade.response().as_bytes()).await?;
                head.drain(..used);
                let partial = if head.is_empty() { Vec::new() } else { head };
                let shared = Rc::new(Shared {
                    stream,
                    out: RefCell::new(Vec::new()),
                    close_sent: Cell::new(false),
                    waker: RefCell::new(None),
                    max_queued: limits.max_queued,
                });
                let inbound = Inbound {
                    shared: shared.clone(),
                    partial,
                    assembler: Assembler::default(),
                    max_frame: limits.max_frame,
                    max_message: limits.max_message,
                    state: State::Open,
                };
                return Ok(Some((upgrade, inbound, Outbound { shared })));
            }
            Err(e) => {
                let _ = write_all(&stream, e.response()).await;
                return Err(e.into());
            }
        }
    }
}

async fn write_all(stream: &TcpStream, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        stream.writable().await?;
        match stream.try_write(bytes) {
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Open,
    /// A close was received or an error yielded: flush what is queued, then end.
    Closing,
    Done,
}

/// The receiving half: a stream of complete messages. Pings are answered here (and still yielded);
/// a close is answered, yielded, and ends the stream; a protocol error is answered with its close
/// code, yielded as an error, and ends the stream; end of file ends it.
pub struct Inbound {
    shared: Rc<Shared>,
    /// Bytes of an incomplete frame (or frames read past the one just yielded); usually empty.
    partial: Vec<u8>,
    assembler: Assembler,
    max_frame: usize,
    max_message: usize,
    state: State,
}

impl Inbound {
    /// Decodes one frame from `partial`; `Ok(None)` if it holds no complete frame.
    fn next_from_partial(&mut self) -> Result<Option<Message>, ProtocolError> {
        loop {
            let Some((frame, used)) = frame::decode(&self.partial, Role::Server, self.max_frame)?
            else {
                return Ok(None);
            };
            if used == self.partial.len() {
                self.partial = Vec::new();
            } else {
                self.partial.drain(..used);
            }
            if let Some(msg) = self.assembler.push(frame, self.max_message)? {
                return Ok(Some(msg));
            }
            if self.partial.is_empty() {
                return Ok(None);
            }
        }
    }

    /// Reacts to a message before yielding it.
    fn on_message(&mut self, msg: &Message) {
        match msg {
            Message::Ping(p) => {
                // A pong that does not fit is dropped: the peer's timeout will notice.
                let _ = self.shared.send(Opcode::Pong, p);
            }
            Message::Close(c) => {
                let code = c.as_ref().map_or(close_code::NORMAL, |(code, _)| *code);
                self.shared.send_close(code, "");
                self.state = State::Closing;
            }
            _ => {}
        }
    }
}

impl Stream for Inbound {
    type Item = Result<Message, TransportError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        {
            let mut w = this.shared.waker.borrow_mut();
            if !w.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                *w = Some(cx.waker().clone());
            }
        }
        // Queued output first: a peer that reads slowly gets its bytes as the socket drains.
        let flushed = this.shared.poll_flush(cx);
        match this.state {
            State::Done => return Poll::Ready(None),
            State::Closing => {
                // Best effort: if the close cannot be written now, it is dropped with the socket.
                this.state = State::Done;
                return Poll::Ready(None);
            }
            State::Open => {}
        }
        if let Poll::Ready(Err(e)) = flushed {
            this.state = State::Done;
            return Poll::Ready(Some(Err(e.into())));
        }
        loop {
            if !this.partial.is_empty() {
                match this.next_from_partial() {
                    Ok(Some(msg)) => {
                        this.on_message(&msg);
                        return Poll::Ready(Some(Ok(msg)));
                    }
                    Ok(None) => {}
                    Err(e) => return Poll::Ready(Some(Err(this.fail(e)))),
                }
            }
            match this.shared.stream.poll_read_ready(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => {
                    this.state = State::Done;
                    return Poll::Ready(Some(Err(e.into())));
                }
                Poll::Ready(Ok(())) => {}
            }
            let read: io::Result<Option<Result<Option<Message>, ProtocolError>>> =
                SCRATCH.with(|s| {
                    let mut s = s.borrow_mut();
                    let n = this.shared.stream.try_read(&mut s)?;
                    if n > 0 {
                        if this.partial.is_empty() {
                            // The common case: decode straight from the scratch buffer and keep only
                            // what follows the first complete message, if anything.
                            return Ok(Some(this.decode_scratch(&s[..n])));
                        }
                        this.partial.extend_from_slice(&s[..n]);
                    }
                    Ok(if n == 0 { None } else { Some(Ok(None)) })
                });
            match read {
                Ok(None) => {
                    this.state = State::Done;
                    return Poll::Ready(None);
                }
                Ok(Some(Ok(Some(msg)))) => {
                    this.on_message(&msg);
                    return Poll::Ready(Some(Ok(msg)));
                }
                Ok(Some(Ok(None))) => {}
                Ok(Some(Err(e))) => return Poll::Ready(Some(Err(this.fail(e)))),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => {
                    this.state = State::Done;
                    return Poll::Ready(Some(Err(e.into())));
                }
            }
        }
    }
}

impl Inbound {
    /// Decodes from freshly read bytes without copying them unless a frame stays incomplete.
    fn decode_scratch(&mut self, mut bytes: &[u8]) -> Result<Option<Message>, ProtocolError> {
        while let Some((frame, used)) = frame::decode(bytes, Role::Server, self.max_frame)? {
            bytes = &bytes[used..];
            if let Some(msg) = self.assembler.push(frame, self.max_message)? {
                self.partial.extend_from_slice(bytes);
                return Ok(Some(msg));
            }
        }
        self.partial.extend_from_slice(bytes);
        Ok(None)
    }

    fn fail(&mut self, e: ProtocolError) -> TransportError {
        self.shared.send_close(e.close_code(), "");
        self.partial = Vec::new();
        self.state = State::Closing;
        TransportError::Protocol(e)
    }
}

/// The sending half, kept by the session actor. Each call writes one whole frame at once.
pub struct Outbound {
    shared: Rc<Shared>,
}

impl Outbound {
    pub fn send_text(&self, text: &str) -> Result<(), SendError> {
        self.shared.send(Opcode::Text, text.as_bytes())
    }

    pub fn send_binary(&self, bytes: &[u8]) -> Result<(), SendError> {
        self.shared.send(Opcode::Binary, bytes)
    }

    /// A ping (payload at most 125 bytes, cut beyond), for the session's liveness timer.
    pub fn send_ping(&self, payload: &[u8]) -> Result<(), SendError> {
        self.shared
            .send(Opcode::Ping, &payload[..payload.len().min(125)])
    }

    /// Starts the closing handshake; the inbound half ends when the peer's close arrives.
    pub fn close(&self, code: u16, reason: &str) {
        self.shared.send_close(code, reason);
    }

    /// Bytes waiting for the peer to read.
    pub fn queued(&self) -> usize {
        self.shared.out.borrow().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    const PROTOCOLS: &[&str] = &["switchboard.v1"];
    const MASK: [u8; 4] = [1, 2, 3, 4];

    fn upgrade_request(protocol: &str) -> Vec<u8> {
        format!(
            "GET /ws HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
             Sec-WebSocket-Protocol: {protocol}\r\n\r\n"
        )
        .into_bytes()
    }

    /// A connected pair: the client socket and the server's accept result, with `first` written by
    /// the client in one go (the upgrade request and any frames behind it).
    async fn connect(
        first: &[u8],
        limits: &Limits,
    ) -> (TcpStream, Result<(Upgrade, Inbound, Outbound), AcceptError>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        write_all(&client, first).await.unwrap();
        (client, accept(server, PROTOCOLS, limits).await)
    }

    /// Client side: reads until `buf` holds a whole HTTP head, returns it and leaves the rest.
    async fn read_head(client: &TcpStream, buf: &mut Vec<u8>) -> String {
        loop {
            if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8(buf.drain(..p + 4).collect()).unwrap();
                return head;
            }
            read_more(client, buf).await;
        }
    }

    async fn read_frame(client: &TcpStream, buf: &mut Vec<u8>) -> frame::Frame {
        loop {
            if let Some((f, used)) = frame::decode(buf, Role::Client, 1 << 20).unwrap() {
                buf.drain(..used);
                return f;
            }
            read_more(client, buf).await;
        }
    }

    async fn read_more(client: &TcpStream, buf: &mut Vec<u8>) {
        let mut chunk = [0u8; 4096];
        loop {
            client.readable().await.unwrap();
            match client.try_read(&mut chunk) {
                Ok(0) => panic!("server closed"),
                Ok(n) => return buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("{e}"),
            }
        }
    }

    fn client_frame(opcode: Opcode, payload: &[u8]) -> Vec<u8> {
        frame::encode(true, opcode, payload, Some(MASK))
    }

    #[actix_rt::test]
    async fn delivers_frames_sent_with_the_upgrade_and_answers_pings() {
        let mut first = upgrade_request("chat.v0, switchboard.v1");
        first.extend(client_frame(Opcode::Text, br#"{"type":"hello"}"#));
        first.extend(client_frame(Opcode::Ping, b"p"));
        first.extend(client_frame(Opcode::Text, b"second"));
        let (client, accepted) = connect(&first, &Limits::default()).await;
        let (upgrade, mut inbound, outbound) = accepted.unwrap();
        assert_eq!(upgrade.protocol, "switchboard.v1");
        assert_eq!(
            inbound.next().await.unwrap().unwrap(),
            Message::Text(r#"{"type":"hello"}"#.into())
        );
        assert_eq!(
            inbound.next().await.unwrap().unwrap(),
            Message::Ping(b"p".to_vec())
        );
        assert_eq!(
            inbound.next().await.unwrap().unwrap(),
            Message::Text("second".into())
        );
        assert!(inbound.partial.capacity() == 0, "nothing held once idle");
        outbound.send_text("echo").unwrap();

        let mut buf = Vec::new();
        let head = read_head(&client, &mut buf).await;
        assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
        assert!(head.contains("Sec-WebSocket-Protocol: switchboard.v1\r\n"));
        let pong = read_frame(&client, &mut buf).await;
        assert_eq!((pong.opcode, &pong.payload[..]), (Opcode::Pong, &b"p"[..]));
        let echo = read_frame(&client, &mut buf).await;
        assert_eq!(
            (echo.opcode, &echo.payload[..]),
            (Opcode::Text, &b"echo"[..])
        );
    }

    #[actix_rt::test]
    async fn a_frame_split_across_reads_is_joined() {
        let (client, accepted) =
            connect(&upgrade_request("switchboard.v1"), &Limits::default()).await;
        let (_, mut inbound, _outbound) = accepted.unwrap();
        let wire = client_frame(Opcode::Binary, &[7u8; 300]);
        let next = tokio::task::spawn_local(async move {
            let msg = inbound.next().await;
            (msg, inbound)
        });
        write_all(&client, &wire[..3]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        write_all(&client, &wire[3..]).await.unwrap();
        let (msg, inbound) = next.await.unwrap();
        assert_eq!(msg.unwrap().unwrap(), Message::Binary(vec![7u8; 300]));
        assert_eq!(inbound.partial.capacity(), 0);
    }

    #[actix_rt::test]
    async fn an_oversized_frame_closes_with_1009() {
        let limits = Limits {
            max_frame: 16,
            ..Limits::default()
        };
        let mut first = upgrade_request("switchboard.v1");
        first.extend(client_frame(Opcode::Binary, &[0u8; 100]));
        let (client, accepted) = connect(&first, &limits).await;
        let (_, mut inbound, outbound) = accepted.unwrap();
        let err = inbound.next().await.unwrap().unwrap_err();
        assert!(matches!(
            err,
            TransportError::Protocol(ProtocolError::FrameTooBig { len: 100, max: 16 })
        ));
        assert!(
            inbound.next().await.is_none(),
            "the stream ends after an error"
        );
        assert!(matches!(outbound.send_text("late"), Err(SendError::Closed)));
        let mut buf = Vec::new();
        read_head(&client, &mut buf).await;
        let close = read_frame(&client, &mut buf).await;
        assert_eq!(close.opcode, Opcode::Close);
        assert_eq!(close.payload[..2], close_code::TOO_BIG.to_be_bytes());
    }

    #[actix_rt::test]
    async fn a_close_is_answered_with_its_code_and_ends_the_stream() {
        let mut first = upgrade_request("switchboard.v1");
        first.extend(client_frame(
            Opcode::Close,
            &frame::close_payload(4001, "bye"),
        ));
        let (client, accepted) = connect(&first, &Limits::default()).await;
        let (_, mut inbound, _outbound) = accepted.unwrap();
        assert_eq!(
            inbound.next().await.unwrap().unwrap(),
            Message::Close(Some((4001, "bye".into())))
        );
        assert!(inbound.next().await.is_none());
        let mut buf = Vec::new();
        read_head(&client, &mut buf).await;
        let close = read_frame(&client, &mut buf).await;
        assert_eq!(close.opcode, Opcode::Close);
        assert_eq!(close.payload, 4001u16.to_be_bytes());
    }

    #[actix_rt::test]
    async fn an_upgrade_without_the_protocol_is_refused_with_400() {
        let (client, accepted) = connect(&upgrade_request("chat.v0"), &Limits::default()).await;
        assert!(matches!(
            accepted,
            Err(AcceptError::Refused(HandshakeError::NoProtocol))
        ));
        let mut buf = Vec::new();
        assert!(read_head(&client, &mut buf)
            .await
            .starts_with("HTTP/1.1 400 "));
    }
}
