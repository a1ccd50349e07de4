//! One WebSocket connection over a tokio `TcpStream`, split in two halves that share the socket:
//! [`Inbound`], a `Stream` of messages that a session actor attaches with `ctx.add_stream`, and
//! [`Outbound`], which the same actor keeps to send.
//!
//! An idle connection holds no buffer. Reads wait for readability and go into a per-thread scratch
//! buffer; bytes are kept (in the shared [`Reader`]) only while a frame is incomplete, and dropped
//! as soon as it completes. Writes go straight to the socket; only what the kernel would not take
//! is queued, and the queue is freed once it drains. While the connection is open the inbound half
//! flushes that queue when the socket turns writable (it is the half the actor's context polls),
//! and answers pings (one pong at most waits in the queue: a newer ping replaces it).
//!
//! Closing is the transport's own job, whichever side starts it. A close from the peer, a protocol
//! error, the end of the input, or [`Outbound::close`] starts a *closing task* (spawned on the
//! connection's thread) that owns all socket I/O from then on: it writes everything queued and then
//! the close frame; if the server closed first, it reads on until the peer's close (handed to the
//! inbound half, which yields it) or the close timeout; then it shuts down the write side, reads
//! and throws away what the peer still sends for a moment (so the peer reads the close code
//! instead of meeting a TCP reset), and drops the socket. So a closed connection's socket is gone
//! within the close timeout plus that moment ([`DEFAULT_CLOSE_TIMEOUT`], [`LINGER_TIME`]), even if
//! the session keeps both halves for longer. Both halves are `!Send`: they live on the arbiter
//! thread of their actor, and closing must start there (it spawns with `spawn_local`).

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use futures_util::Stream;
use thiserror::Error;
use tokio::io::AsyncWrite;
use tokio::net::TcpStream;

use super::frame::{self, close_code, Message, Opcode, ProtocolError, Reader, Role};
use super::handshake::{self, HandshakeError, Head, Route, Upgrade};

/// Size of each thread's scratch read buffer: one read takes at most this much.
const SCRATCH_LEN: usize = 16 * 1024;

/// How long a closing handshake may take before the socket is dropped anyway: writing what is
/// queued and the close frame, and (when the server closed first) waiting for the peer's close.
/// Change it per connection with [`Outbound::set_close_timeout`].
pub const DEFAULT_CLOSE_TIMEOUT: Duration = Duration::from_secs(3);

/// After the write side is shut down, input is still read and thrown away for this long (or until
/// [`LINGER_BYTES`], or the peer's end of input): closing a socket with unread input sends a reset,
/// which can destroy the close frame before the peer reads it.
pub const LINGER_TIME: Duration = Duration::from_secs(1);
/// See [`LINGER_TIME`].
pub const LINGER_BYTES: usize = 64 * 1024;

/// Fairness: after this many messages, or [`POLL_BUDGET_BYTES`] read, without ever waiting, the
/// inbound half wakes itself and returns `Pending` once, so one busy connection cannot keep its
/// arbiter thread from the others.
const POLL_BUDGET_MESSAGES: u32 = 64;
const POLL_BUDGET_BYTES: usize = 256 * 1024;

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
    /// A close frame is always queued, past this limit.
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

/// Who drives the socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// The halves: the inbound half reads and flushes, the outbound half writes.
    Open,
    /// The closing task, alone.
    Closing,
    /// Nobody: the socket is dropped.
    Closed,
    /// Nobody here: the socket was taken out for another process ([`Outbound::detach`]).
    HandedOver,
}

/// What both halves (and the closing task) share.
struct Shared {
    /// `None` once the closing task has dropped the socket.
    stream: RefCell<Option<TcpStream>>,
    /// Bytes the kernel would not take yet; empty (no allocation) almost always.
    out: RefCell<Vec<u8>>,
    /// The latest ping's payload, to answer once `out` drains: pongs never pile up in the queue
    /// (RFC 6455 §5.5.3 allows answering only the most recent ping).
    pong: RefCell<Option<Vec<u8>>>,
    /// Decoding state: bytes of an incomplete frame, the fragmented message in progress.
    reader: RefCell<Reader>,
    /// A close frame was queued or sent: nothing more may be sent.
    close_sent: Cell<bool>,
    /// Reading stopped ([`Outbound::pause`]): input waits in the kernel for whoever reads next.
    paused: Cell<bool>,
    phase: Cell<Phase>,
    /// The peer's close, read by the closing task after the server's own, for the inbound half.
    peer_close: RefCell<Option<Option<(u16, String)>>>,
    /// The inbound half's waker: woken when `out` gains bytes (to wait for writability) and when
    /// the closing task has news.
    waker: RefCell<Option<Waker>>,
    max_queued: usize,
    close_timeout: Cell<Duration>,
}

impl Shared {
    fn new(stream: TcpStream, reader: Reader, limits: &Limits) -> Self {
        Shared {
            stream: RefCell::new(Some(stream)),
            out: RefCell::new(Vec::new()),
            pong: RefCell::new(None),
            reader: RefCell::new(reader),
            close_sent: Cell::new(false),
            paused: Cell::new(false),
            phase: Cell::new(Phase::Open),
            peer_close: RefCell::new(None),
            waker: RefCell::new(None),
            max_queued: limits.max_queued,
            close_timeout: Cell::new(DEFAULT_CLOSE_TIMEOUT),
        }
    }

    fn with_stream<R>(&self, f: impl FnOnce(&TcpStream) -> io::Result<R>) -> io::Result<R> {
        match self.stream.borrow().as_ref() {
            Some(stream) => f(stream),
            None => Err(io::ErrorKind::NotConnected.into()),
        }
    }

    fn wake_inbound(&self) {
        if let Some(w) = self.waker.borrow_mut().take() {
            w.wake();
        }
    }

    /// Writes one frame: straight to the socket, queueing only what it would not take. `bounded`:
    /// refuse it if the queue is already past `max_queued` (a close frame is never refused).
    fn send(&self, opcode: Opcode, payload: &[u8], bounded: bool) -> Result<(), SendError> {
        if self.close_sent.get() || matches!(self.phase.get(), Phase::Closed | Phase::HandedOver) {
            return Err(SendError::Closed);
        }
        let mut header = [0u8; frame::MAX_HEADER_LEN];
        let n = frame::encode_header(&mut header, true, opcode, payload.len(), None);
        let header = &header[..n];
        let mut out = self.out.borrow_mut();
        let written = if out.is_empty() {
            let w = self.with_stream(|s| {
                s.try_write_vectored(&[IoSlice::new(header), IoSlice::new(payload)])
            });
            match w {
                Ok(w) => w,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
                Err(e) => return Err(SendError::Io(e)),
            }
        } else {
            if bounded && out.len() + header.len() + payload.len() > self.max_queued {
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
        self.wake_inbound();
        Ok(())
    }

    /// Answers a ping: at once if nothing is queued, else by replacing the pong waiting for the
    /// queue to drain.
    fn send_pong(&self, payload: &[u8]) {
        if self.close_sent.get() {
            return;
        }
        if self.out.borrow().is_empty() {
            // A pong that cannot be written fails the connection on the next read or flush.
            let _ = self.send(Opcode::Pong, payload, false);
        } else {
            *self.pong.borrow_mut() = Some(payload.to_vec());
        }
    }

    /// Moves a waiting pong into the queue (when it has drained, or before a close frame).
    fn queue_pong(&self) {
        if let Some(p) = self.pong.borrow_mut().take() {
            self.out
                .borrow_mut()
                .extend_from_slice(&frame::encode(true, Opcode::Pong, &p, None));
        }
    }

    /// Queues the close frame, past `max_queued` if need be; `false` if one was already sent.
    fn send_close(&self, code: u16, reason: &str) -> bool {
        if self.close_sent.get() {
            return false;
        }
        if !self.out.borrow().is_empty() {
            self.queue_pong();
        }
        // An i/o error here is met again by the closing task, which then drops the socket.
        let _ = self.send(Opcode::Close, &frame::close_payload(code, reason), false);
        self.close_sent.set(true);
        true
    }

    /// Writes queued bytes while the socket takes them; registers for writability otherwise.
    fn poll_flush(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            let mut out = self.out.borrow_mut();
            if out.is_empty() {
                if self.pong.borrow().is_none() {
                    return Poll::Ready(Ok(()));
                }
                drop(out);
                self.queue_pong();
                continue;
            }
            match self.with_stream(|s| s.try_write(&out)) {
                Ok(n) => {
                    out.drain(..n);
                    if out.is_empty() {
                        *out = Vec::new(); // free the queue: an idle connection holds nothing
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    drop(out);
                    match self.with_stream(|s| match s.poll_write_ready(cx) {
                        Poll::Ready(r) => r.map(|()| true),
                        Poll::Pending => Ok(false),
                    }) {
                        Ok(true) => continue,
                        Ok(false) => return Poll::Pending,
                        Err(e) => return Poll::Ready(Err(e)),
                    }
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    /// Reads once into the scratch buffer and hands the bytes to `f`: `Ready(Ok(None))` at the end
    /// of input.
    fn poll_read<R>(
        &self,
        cx: &mut Context<'_>,
        f: impl FnOnce(&[u8]) -> R,
    ) -> Poll<io::Result<Option<R>>> {
        let mut f = Some(f);
        loop {
            let ready = self.with_stream(|s| match s.poll_read_ready(cx) {
                Poll::Ready(r) => r.map(|()| true),
                Poll::Pending => Ok(false),
            });
            match ready {
                Ok(true) => {}
                Ok(false) => return Poll::Pending,
                Err(e) => return Poll::Ready(Err(e)),
            }
            let read = SCRATCH.with(|s| {
                let mut s = s.borrow_mut();
                let n = self.with_stream(|stream| stream.try_read(&mut s))?;
                let f = f.take().expect("called once");
                Ok::<_, io::Error>(if n == 0 { None } else { Some(f(&s[..n])) })
            });
            match read {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                other => return Poll::Ready(other),
            }
        }
    }

    /// Hands the socket to a closing task, once. `await_peer`: the server closed first, so the
    /// task reads on for the peer's close.
    fn begin_closing(self: &Rc<Self>, await_peer: bool) {
        if self.phase.get() != Phase::Open {
            return;
        }
        self.phase.set(Phase::Closing);
        tokio::task::spawn_local(close(self.clone(), await_peer));
        self.wake_inbound();
    }

    /// The closing task is done: drop the socket and everything held for it.
    fn finish(&self) {
        self.phase.set(Phase::Closed);
        drop(self.stream.borrow_mut().take());
        *self.out.borrow_mut() = Vec::new();
        *self.pong.borrow_mut() = None;
        self.reader.borrow_mut().clear();
        self.wake_inbound();
    }
}

/// The closing task: see the module's doc. Bounded by the close timeout, then by [`LINGER_TIME`].
async fn close(shared: Rc<Shared>, await_peer: bool) {
    let deadline = tokio::time::Instant::now() + shared.close_timeout.get();
    let _ = tokio::time::timeout_at(deadline, async {
        poll_fn(|cx| shared.poll_flush(cx)).await?;
        if await_peer {
            await_peer_close(&shared).await?;
        }
        Ok::<(), io::Error>(())
    })
    .await;
    let shut = poll_fn(|cx| match shared.stream.borrow_mut().as_mut() {
        Some(stream) => Pin::new(stream).poll_shutdown(cx),
        None => Poll::Ready(Ok(())),
    })
    .await;
    if shut.is_ok() {
        let mut left = LINGER_BYTES;
        let _ = tokio::time::timeout(
            LINGER_TIME,
            poll_fn(|cx| loop {
                match shared.poll_read(cx, |bytes| bytes.len()) {
                    Poll::Ready(Ok(Some(n))) if n < left => left -= n,
                    Poll::Ready(_) => return Poll::Ready(()),
                    Poll::Pending => return Poll::Pending,
                }
            }),
        )
        .await;
    }
    shared.finish();
}

/// After the server's close: reads frames until the peer's close (kept for the inbound half), the
/// end of input or an error. Other frames are dropped: the server is no longer listening.
async fn await_peer_close(shared: &Shared) -> io::Result<()> {
    let found = |shared: &Shared, msg: Result<Option<Message>, ProtocolError>| match msg {
        Ok(Some(Message::Close(c))) => {
            *shared.peer_close.borrow_mut() = Some(c);
            shared.wake_inbound();
            true
        }
        Ok(_) => false,
        Err(_) => true,
    };
    loop {
        let next = shared.reader.borrow_mut().next();
        match next {
            Ok(None) => break,
            msg => {
                if found(shared, msg) {
                    return Ok(());
                }
            }
        }
    }
    poll_fn(|cx| loop {
        let read = shared.poll_read(cx, |bytes| shared.reader.borrow_mut().feed(bytes));
        let mut msg = match read {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Ready(Ok(None)) => return Poll::Ready(Ok(())),
            Poll::Ready(Ok(Some(msg))) => msg,
        };
        loop {
            if matches!(msg, Ok(None)) {
                break;
            }
            if found(shared, msg) {
                return Poll::Ready(Ok(()));
            }
            msg = shared.reader.borrow_mut().next();
        }
    })
    .await
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
                    let _ = write_all(&stream, &e.response_for(protocols)).await;
                    return Err(e.into());
                }
            }
        }
        match handshake::parse_request(&head, protocols, limits.max_head) {
            Ok(None) => continue,
            Ok(Some((upgrade, used))) => {
                write_all(&stream, upgrade.response().as_bytes()).await?;
                // Frames sent right behind the request are decoded at the first poll.
                let (inbound, outbound) = halves(stream, &head[used..], limits);
                return Ok(Some((upgrade, inbound, outbound)));
            }
            Err(e) => {
                let _ = write_all(&stream, &e.response_for(protocols)).await;
                return Err(e.into());
            }
        }
    }
}

/// Takes over a connection another process upgraded and served (an upgrade's handover): `socket`
/// is its established socket, `raw` the bytes that process had read and not yet decoded. Must be
/// called inside a tokio runtime, on the thread that will serve the connection.
pub fn adopt(
    socket: std::net::TcpStream,
    raw: Vec<u8>,
    limits: &Limits,
) -> io::Result<(Inbound, Outbound)> {
    socket.set_nonblocking(true)?;
    let stream = TcpStream::from_std(socket)?;
    Ok(halves(stream, &raw, limits))
}

/// The two halves of an upgraded connection, with `read` (bytes read and not yet decoded) kept for
/// the first poll.
fn halves(stream: TcpStream, read: &[u8], limits: &Limits) -> (Inbound, Outbound) {
    let mut reader = Reader::new(Role::Server, limits.max_frame, limits.max_message);
    reader.keep(read);
    let inbound = Inbound {
        shared: Rc::new(Shared::new(stream, reader, limits)),
        state: State::Open,
        run_messages: 0,
        run_bytes: 0,
    };
    let outbound = Outbound {
        shared: inbound.shared.clone(),
    };
    (inbound, outbound)
}

/// A connection taken out of this process ([`Outbound::detach`]): its socket, and the bytes read
/// from it that no message has used yet.
#[derive(Debug)]
pub struct Detached {
    pub socket: std::net::TcpStream,
    pub raw: Vec<u8>,
}

/// Why a connection cannot be taken out as it is (it is then closed, and its client resumes).
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
pub enum NotDetachable {
    #[error("the connection is closing or closed")]
    Closed,
    #[error("bytes are queued for the peer")]
    Queued,
    #[error("a fragmented message is half read")]
    MidMessage,
    #[error("the socket could not be taken from the runtime")]
    Io,
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
    /// The last item (a close, an error) was yielded: the stream ends at the next poll.
    Ending,
    Done,
}

/// The receiving half: a stream of complete messages. Pings are answered here (and still yielded,
/// so the session can rate-limit them); a close is answered, yielded, and ends the stream; a
/// protocol error is answered with its close code, yielded as an error, and ends the stream; end
/// of input ends it. After [`Outbound::close`], the peer's answering close is yielded and ends the
/// stream (other messages are no longer delivered); the stream also ends if the peer does not
/// answer within the close timeout.
pub struct Inbound {
    shared: Rc<Shared>,
    state: State,
    /// Messages yielded and bytes read since this stream last returned `Pending`.
    run_messages: u32,
    run_bytes: usize,
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
        match this.state {
            State::Open => {}
            State::Ending | State::Done => {
                this.state = State::Done;
                return Poll::Ready(None);
            }
        }
        if this.shared.phase.get() != Phase::Open {
            // The closing task drives the socket; it hands over the peer's close if it reads one.
            if let Some(close) = this.shared.peer_close.borrow_mut().take() {
                this.state = State::Ending;
                return Poll::Ready(Some(Ok(Message::Close(close))));
            }
            if this.shared.phase.get() == Phase::Closed {
                this.state = State::Done;
                return Poll::Ready(None);
            }
            return Poll::Pending;
        }
        if this.shared.paused.get() {
            return Poll::Pending;
        }
        if this.run_messages >= POLL_BUDGET_MESSAGES || this.run_bytes >= POLL_BUDGET_BYTES {
            return this.yield_now(cx);
        }
        // Queued output first: a peer that reads slowly gets its bytes as the socket drains.
        if let Poll::Ready(Err(e)) = this.shared.poll_flush(cx) {
            return this.end_with(Err(e.into()));
        }
        let next = this.shared.reader.borrow_mut().next();
        match next {
            Ok(Some(msg)) => return this.deliver(msg),
            Ok(None) => {}
            Err(e) => return this.fail(e),
        }
        loop {
            if this.run_bytes >= POLL_BUDGET_BYTES {
                return this.yield_now(cx);
            }
            let shared = &this.shared;
            let read = shared.poll_read(cx, |bytes| {
                (bytes.len(), shared.reader.borrow_mut().feed(bytes))
            });
            match read {
                Poll::Pending => {
                    this.run_messages = 0;
                    this.run_bytes = 0;
                    return Poll::Pending;
                }
                Poll::Ready(Ok(None)) => {
                    // End of input without a close: nothing more will come; drop the socket once
                    // what is queued is written.
                    this.state = State::Done;
                    this.shared.begin_closing(false);
                    return Poll::Ready(None);
                }
                Poll::Ready(Ok(Some((n, decoded)))) => {
                    this.run_bytes += n;
                    match decoded {
                        Ok(Some(msg)) => return this.deliver(msg),
                        Ok(None) => {}
                        Err(e) => return this.fail(e),
                    }
                }
                Poll::Ready(Err(e)) => return this.end_with(Err(e.into())),
            }
        }
    }
}

impl Inbound {
    /// Reacts to a message, then yields it.
    fn deliver(&mut self, msg: Message) -> Poll<Option<Result<Message, TransportError>>> {
        self.run_messages += 1;
        match &msg {
            Message::Ping(p) => self.shared.send_pong(p),
            Message::Close(c) => {
                let code = c.as_ref().map_or(close_code::NORMAL, |(code, _)| *code);
                self.shared.send_close(code, "");
                self.state = State::Ending;
                self.shared.begin_closing(false);
            }
            _ => {}
        }
        Poll::Ready(Some(Ok(msg)))
    }

    /// A protocol error: the close code is sent, the error yielded, and the stream ends.
    fn fail(&mut self, e: ProtocolError) -> Poll<Option<Result<Message, TransportError>>> {
        self.shared.send_close(e.close_code(), "");
        self.shared.reader.borrow_mut().clear();
        self.end_with(Err(TransportError::Protocol(e)))
    }

    /// Yields `item` as the last one and hands the socket to the closing task.
    fn end_with(
        &mut self,
        item: Result<Message, TransportError>,
    ) -> Poll<Option<Result<Message, TransportError>>> {
        self.state = State::Ending;
        self.shared.begin_closing(false);
        Poll::Ready(Some(item))
    }

    /// Gives the thread back for one turn (see [`POLL_BUDGET_MESSAGES`]).
    fn yield_now(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Message, TransportError>>> {
        self.run_messages = 0;
        self.run_bytes = 0;
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// The sending half, kept by the session actor. Each call writes one whole frame at once.
pub struct Outbound {
    shared: Rc<Shared>,
}

impl Outbound {
    pub fn send_text(&self, text: &str) -> Result<(), SendError> {
        self.shared.send(Opcode::Text, text.as_bytes(), true)
    }

    pub fn send_binary(&self, bytes: &[u8]) -> Result<(), SendError> {
        self.shared.send(Opcode::Binary, bytes, true)
    }

    /// A ping (payload at most 125 bytes, cut beyond), for the session's liveness timer.
    pub fn send_ping(&self, payload: &[u8]) -> Result<(), SendError> {
        self.shared
            .send(Opcode::Ping, &payload[..payload.len().min(125)], true)
    }

    /// Starts the closing handshake: the close frame is queued behind what is already queued
    /// (whatever the queue's size), and the closing task takes over the socket. The inbound half
    /// yields the peer's answering close, then ends; the socket is dropped once the peer has
    /// answered or the close timeout has passed. Nothing more can be sent. Must be called on the
    /// connection's thread (its arbiter).
    pub fn close(&self, code: u16, reason: &str) {
        if self.shared.send_close(code, reason) {
            self.shared.begin_closing(true);
        }
    }

    /// Stops reading: whatever the peer sends from now on waits in the kernel (for
    /// [`Outbound::detach`]). Sending still works.
    pub fn pause(&self) {
        self.shared.paused.set(true);
    }

    /// Reads again after [`Outbound::pause`].
    pub fn resume(&self) {
        self.shared.paused.set(false);
        self.shared.wake_inbound();
    }

    /// Takes the socket out, to hand to another process: only between whole messages, with nothing
    /// queued for the peer, and before any close. The halves are inert afterwards (sends fail, the
    /// inbound half yields nothing). Call [`Outbound::pause`] first and let held frames go.
    pub fn detach(&self) -> Result<Detached, NotDetachable> {
        let shared = &self.shared;
        if shared.phase.get() != Phase::Open || shared.close_sent.get() {
            return Err(NotDetachable::Closed);
        }
        if !shared.out.borrow().is_empty() || shared.pong.borrow().is_some() {
            return Err(NotDetachable::Queued);
        }
        let raw = shared
            .reader
            .borrow_mut()
            .take_raw()
            .ok_or(NotDetachable::MidMessage)?;
        let stream = shared
            .stream
            .borrow_mut()
            .take()
            .ok_or(NotDetachable::Closed)?;
        shared.phase.set(Phase::HandedOver);
        shared.wake_inbound();
        match stream.into_std() {
            Ok(socket) => Ok(Detached { socket, raw }),
            Err(_) => Err(NotDetachable::Io),
        }
    }

    /// Bytes waiting for the peer to read.
    pub fn queued(&self) -> usize {
        self.shared.out.borrow().len()
    }

    /// Has a close been sent or received, or the connection ended? Sends now fail.
    pub fn is_closed(&self) -> bool {
        self.shared.close_sent.get() || self.shared.phase.get() != Phase::Open
    }

    /// Bounds the closing handshake of this connection (default [`DEFAULT_CLOSE_TIMEOUT`]); set it
    /// before the close starts.
    pub fn set_close_timeout(&self, timeout: Duration) {
        self.shared.close_timeout.set(timeout);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

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
        assert_eq!(
            inbound.shared.reader.borrow().capacity(),
            0,
            "nothing held once idle"
        );
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
        assert_eq!(inbound.shared.reader.borrow().capacity(), 0);
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
    async fn a_detached_connection_is_served_on_where_it_stopped() {
        let two = frame::encode(true, Opcode::Text, b"two", Some(MASK));
        let three = frame::encode(true, Opcode::Text, b"three", Some(MASK));
        let mut first = upgrade_request("switchboard.v1");
        first.extend_from_slice(&frame::encode(true, Opcode::Text, b"one", Some(MASK)));
        first.extend_from_slice(&two[..3]);
        let (client, accepted) = connect(&first, &Limits::default()).await;
        let (_, mut inbound, outbound) = accepted.unwrap();
        let mut buf = Vec::new();
        read_head(&client, &mut buf).await;
        assert_eq!(
            inbound.next().await.unwrap().unwrap(),
            Message::Text("one".into())
        );
        outbound.pause();
        write_all(&client, &two[3..]).await.unwrap();
        write_all(&client, &three).await.unwrap();
        // Paused: the rest waits in the kernel; only the half frame read before is held.
        let detached = outbound.detach().unwrap();
        assert_eq!(detached.raw, two[..3]);
        assert!(outbound.send_text("gone").is_err());
        assert!(outbound.detach().is_err());

        let (mut adopted, out) = adopt(detached.socket, detached.raw, &Limits::default()).unwrap();
        assert_eq!(
            adopted.next().await.unwrap().unwrap(),
            Message::Text("two".into())
        );
        assert_eq!(
            adopted.next().await.unwrap().unwrap(),
            Message::Text("three".into())
        );
        out.send_text("after").unwrap();
        let frame = read_frame(&client, &mut buf).await;
        assert_eq!(frame.payload, b"after");
    }

    #[actix_rt::test]
    async fn a_half_read_fragmented_message_cannot_be_detached() {
        let mut first = upgrade_request("switchboard.v1");
        first.extend_from_slice(&frame::encode(false, Opcode::Text, b"half", Some(MASK)));
        let (client, accepted) = connect(&first, &Limits::default()).await;
        let (_, mut inbound, outbound) = accepted.unwrap();
        let mut buf = Vec::new();
        read_head(&client, &mut buf).await;
        let ping = frame::encode(true, Opcode::Ping, b"p", Some(MASK));
        write_all(&client, &ping).await.unwrap();
        // The ping is read after the open fragment: the message is half assembled.
        assert_eq!(
            inbound.next().await.unwrap().unwrap(),
            Message::Ping(b"p".to_vec())
        );
        outbound.pause();
        assert_eq!(outbound.detach().unwrap_err(), NotDetachable::MidMessage);
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
        let body = String::from_utf8(read_to_end(&client, buf).await).unwrap();
        assert_eq!(
            body,
            r#"{"error":{"code":"subprotocol_required","message":"offer Sec-WebSocket-Protocol: switchboard.v1"}}"#
        );
    }

    /// Client side: everything until the server's end of output (or a reset, which ends it too:
    /// what was read before it is returned, and `reset` tells).
    async fn read_until_eof(client: &TcpStream, mut buf: Vec<u8>) -> (Vec<u8>, bool) {
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            client.readable().await.unwrap();
            match client.try_read(&mut chunk) {
                Ok(0) => return (buf, false),
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => return (buf, true),
            }
        }
    }

    async fn read_to_end(client: &TcpStream, buf: Vec<u8>) -> Vec<u8> {
        let (bytes, reset) = read_until_eof(client, buf).await;
        assert!(!reset, "connection reset");
        bytes
    }

    /// All frames in `wire` (the server's output after its 101 head).
    fn server_frames(mut wire: &[u8]) -> Vec<frame::Frame> {
        let mut out = Vec::new();
        while let Some((f, used)) = frame::decode(wire, Role::Client, 1 << 24).unwrap() {
            out.push(f);
            wire = &wire[used..];
        }
        assert!(wire.is_empty(), "{} bytes of a cut frame", wire.len());
        out
    }

    /// Sends binary frames of `size` bytes until `total` bytes are sent or the queue refuses one.
    fn send_until(outbound: &Outbound, size: usize, total: usize) -> usize {
        let chunk = vec![0x5a; size];
        let mut sent = 0;
        while sent < total {
            match outbound.send_binary(&chunk) {
                Ok(()) => sent += size,
                Err(SendError::Backlog { .. }) => break,
                Err(e) => panic!("{e}"),
            }
        }
        sent
    }

    #[actix_rt::test]
    async fn queued_output_is_flushed_before_the_close_reply() {
        let limits = Limits {
            max_queued: 64 << 20,
            ..Limits::default()
        };
        let (client, accepted) = connect(&upgrade_request("switchboard.v1"), &limits).await;
        let (_, mut inbound, outbound) = accepted.unwrap();
        // The client does not read yet: most of 16 MiB waits in the queue.
        let sent = send_until(&outbound, 64 * 1024, 16 << 20);
        assert_eq!(sent, 16 << 20);
        assert!(outbound.queued() > 0, "the kernel took it all");
        write_all(
            &client,
            &client_frame(Opcode::Close, &frame::close_payload(1000, "")),
        )
        .await
        .unwrap();
        assert_eq!(
            inbound.next().await.unwrap().unwrap(),
            Message::Close(Some((1000, String::new())))
        );
        assert!(inbound.next().await.is_none());
        assert!(outbound.is_closed());
        // The session goes away at once; the transport still delivers what it had queued.
        drop((inbound, outbound));
        let mut buf = Vec::new();
        read_head(&client, &mut buf).await;
        let frames = server_frames(&read_to_end(&client, buf).await);
        let (close, data) = frames.split_last().unwrap();
        assert_eq!(data.iter().map(|f| f.payload.len()).sum::<usize>(), sent);
        assert_eq!(close.opcode, Opcode::Close);
        assert_eq!(close.payload, 1000u16.to_be_bytes());
    }

    #[actix_rt::test]
    async fn a_close_is_queued_even_when_the_queue_is_full() {
        let limits = Limits {
            max_queued: 100_000,
            ..Limits::default()
        };
        let (client, accepted) = connect(&upgrade_request("switchboard.v1"), &limits).await;
        let (_, _inbound, outbound) = accepted.unwrap();
        let sent = send_until(&outbound, 60_000, usize::MAX);
        assert!(outbound.queued() > 40_000, "the queue is (nearly) full");
        outbound.close(4000, "slow consumer");
        assert!(outbound.is_closed());
        assert!(matches!(outbound.send_text("late"), Err(SendError::Closed)));
        let mut buf = Vec::new();
        read_head(&client, &mut buf).await;
        // The client answers once it has read the close; the socket then ends.
        let mut got = 0;
        let close = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                let f = read_frame(&client, &mut buf).await;
                if f.opcode == Opcode::Close {
                    return f;
                }
                got += f.payload.len();
            }
        })
        .await
        .expect("a close frame after the data");
        assert_eq!(close.payload[..2], 4000u16.to_be_bytes());
        assert_eq!(&close.payload[2..], b"slow consumer");
        assert_eq!(got, sent);
        write_all(
            &client,
            &client_frame(Opcode::Close, &frame::close_payload(4000, "")),
        )
        .await
        .unwrap();
        assert!(read_to_end(&client, buf).await.is_empty());
    }

    #[actix_rt::test]
    async fn after_a_protocol_error_the_peer_reads_the_close_code_not_a_reset() {
        let (client, accepted) =
            connect(&upgrade_request("switchboard.v1"), &Limits::default()).await;
        let (_, mut inbound, outbound) = accepted.unwrap();
        // A reserved opcode, then more than a read's worth of input the server never reads.
        let mut wire = client_frame(Opcode::Text, b"ok");
        wire.push(0x83);
        wire.extend(std::iter::repeat_n(0u8, 48 * 1024));
        write_all(&client, &wire).await.unwrap();
        assert_eq!(
            inbound.next().await.unwrap().unwrap(),
            Message::Text("ok".into())
        );
        let err = inbound.next().await.unwrap().unwrap_err();
        assert!(matches!(
            err,
            TransportError::Protocol(ProtocolError::ReservedOpcode(3))
        ));
        assert!(inbound.next().await.is_none(), "the stream ends");
        drop((inbound, outbound));
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut buf = Vec::new();
        read_head(&client, &mut buf).await;
        let (rest, reset) = read_until_eof(&client, buf).await;
        assert!(!reset, "the peer met a reset");
        let frames = server_frames(&rest);
        assert_eq!(frames.len(), 1);
        assert_eq!(frames[0].opcode, Opcode::Close);
        assert_eq!(frames[0].payload, close_code::PROTOCOL_ERROR.to_be_bytes());
    }

    #[actix_rt::test]
    async fn an_unanswered_server_close_drops_the_socket_after_the_timeout() {
        let (client, accepted) =
            connect(&upgrade_request("switchboard.v1"), &Limits::default()).await;
        let (_, mut inbound, outbound) = accepted.unwrap();
        outbound.set_close_timeout(Duration::from_millis(200));
        let started = tokio::time::Instant::now();
        outbound.close(close_code::GOING_AWAY, "restart");
        // The session keeps both halves (as during a resume grace); the client never answers.
        let mut buf = Vec::new();
        read_head(&client, &mut buf).await;
        let close = read_frame(&client, &mut buf).await;
        assert_eq!(close.opcode, Opcode::Close);
        let rest = tokio::time::timeout(Duration::from_secs(2), read_to_end(&client, buf))
            .await
            .expect("the server's side ends");
        assert!(rest.is_empty());
        let elapsed = started.elapsed();
        assert!(elapsed >= Duration::from_millis(190), "{elapsed:?}");
        let end = tokio::time::timeout(Duration::from_secs(3), inbound.next())
            .await
            .expect("the inbound half ends");
        assert!(end.is_none());
        assert_eq!(inbound.shared.phase.get(), Phase::Closed);
        assert!(inbound.shared.stream.borrow().is_none(), "socket dropped");
        assert!(outbound.is_closed());
    }

    #[actix_rt::test]
    async fn an_answered_server_close_yields_the_peer_close_and_ends() {
        let (client, accepted) =
            connect(&upgrade_request("switchboard.v1"), &Limits::default()).await;
        let (_, mut inbound, outbound) = accepted.unwrap();
        outbound.send_text("last words").unwrap();
        outbound.close(close_code::NORMAL, "done");
        // Data the client sent meanwhile is not delivered; its close is.
        let mut wire = client_frame(Opcode::Text, b"crossing");
        wire.extend(client_frame(
            Opcode::Close,
            &frame::close_payload(close_code::NORMAL, "ok"),
        ));
        write_all(&client, &wire).await.unwrap();
        assert_eq!(
            inbound.next().await.unwrap().unwrap(),
            Message::Close(Some((close_code::NORMAL, "ok".into())))
        );
        assert!(inbound.next().await.is_none());
        let mut buf = Vec::new();
        read_head(&client, &mut buf).await;
        let frames = server_frames(&read_to_end(&client, buf).await);
        assert_eq!(frames.len(), 2);
        assert_eq!(frames[0].payload, b"last words");
        assert_eq!(frames[1].opcode, Opcode::Close);
        assert_eq!(&frames[1].payload[2..], b"done");
    }

    #[actix_rt::test]
    async fn pongs_do_not_pile_up_behind_a_full_queue() {
        let limits = Limits {
            max_queued: 64 << 20,
            ..Limits::default()
        };
        let (client, accepted) = connect(&upgrade_request("switchboard.v1"), &limits).await;
        let (_, mut inbound, outbound) = accepted.unwrap();
        let sent = send_until(&outbound, 64 * 1024, 16 << 20);
        let queued = outbound.queued();
        assert!(queued > 0);
        let mut wire = Vec::new();
        for i in 0..100u8 {
            wire.extend(client_frame(Opcode::Ping, &[i]));
        }
        write_all(&client, &wire).await.unwrap();
        for i in 0..100u8 {
            // Every ping is still yielded, for the session's rate limit.
            assert_eq!(
                inbound.next().await.unwrap().unwrap(),
                Message::Ping(vec![i])
            );
        }
        assert!(
            outbound.queued() <= queued,
            "no pong queued behind the data"
        );
        // Once the client reads, it gets one pong, for the latest ping.
        let reading = tokio::task::spawn_local(async move {
            let mut buf = Vec::new();
            read_head(&client, &mut buf).await;
            let mut got = 0;
            loop {
                let f = read_frame(&client, &mut buf).await;
                match f.opcode {
                    Opcode::Binary => got += f.payload.len(),
                    Opcode::Pong => return (got, f.payload),
                    other => panic!("{other:?}"),
                }
            }
        });
        let (got, pong) = tokio::select! {
            biased;
            r = reading => r.unwrap(),
            m = inbound.next() => panic!("nothing more arrives: {m:?}"),
        };
        assert_eq!((got, pong), (sent, vec![99]));
    }

    /// A waker that counts its wakes.
    struct CountingWaker(AtomicUsize);

    impl std::task::Wake for CountingWaker {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
        fn wake_by_ref(self: &Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[actix_rt::test]
    async fn a_busy_connection_gives_the_thread_back_after_its_budget() {
        let mut first = upgrade_request("switchboard.v1");
        for i in 0..200u32 {
            first.extend(client_frame(Opcode::Text, i.to_string().as_bytes()));
        }
        let (_client, accepted) = connect(&first, &Limits::default()).await;
        let (_, mut inbound, _outbound) = accepted.unwrap();
        let wakes = Arc::new(CountingWaker(AtomicUsize::new(0)));
        let waker = Waker::from(wakes.clone());
        let mut cx = Context::from_waker(&waker);
        let mut got = Vec::new();
        let mut runs = Vec::new();
        while got.len() < 200 {
            let mut run = 0;
            while let Poll::Ready(item) = Pin::new(&mut inbound).poll_next(&mut cx) {
                got.push(item.unwrap().unwrap());
                run += 1;
            }
            runs.push(run);
            assert!(runs.len() < 10, "no progress: {runs:?}");
        }
        assert_eq!(runs[..3], [64, 64, 64], "{runs:?}");
        assert!(wakes.0.load(Ordering::SeqCst) >= 3, "woken to go on");
        let expected: Vec<Message> = (0..200u32).map(|i| Message::Text(i.to_string())).collect();
        assert_eq!(got, expected);
    }

    #[actix_rt::test]
    async fn an_actor_receives_every_message_of_a_long_burst() {
        use actix::{Actor, ActorContext, AsyncContext, StreamHandler};

        struct Sink {
            got: usize,
            done: Option<futures_channel::oneshot::Sender<usize>>,
        }
        impl Actor for Sink {
            type Context = actix::Context<Self>;
        }
        impl StreamHandler<Result<Message, TransportError>> for Sink {
            fn handle(&mut self, msg: Result<Message, TransportError>, _: &mut Self::Context) {
                if let Ok(Message::Text(_)) = msg {
                    self.got += 1;
                }
            }
            fn finished(&mut self, ctx: &mut Self::Context) {
                if let Some(done) = self.done.take() {
                    let _ = done.send(self.got);
                }
                ctx.stop();
            }
        }

        let mut first = upgrade_request("switchboard.v1");
        for _ in 0..1000 {
            first.extend(client_frame(Opcode::Text, b"x"));
        }
        first.extend(client_frame(Opcode::Close, &frame::close_payload(1000, "")));
        let (_client, accepted) = connect(&first, &Limits::default()).await;
        let (_, inbound, _outbound) = accepted.unwrap();
        let (tx, rx) = futures_channel::oneshot::channel();
        Sink::create(|ctx| {
            ctx.add_stream(inbound);
            Sink {
                got: 0,
                done: Some(tx),
            }
        });
        let got = tokio::time::timeout(Duration::from_secs(5), rx)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got, 1000);
    }
}
