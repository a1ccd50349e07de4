//! The seam between a session and the connection it is attached to. A transport (the chat
//! listener's WebSocket code) turns each accepted connection into a [`Connection`]: a [`Link`] the
//! session writes frames through and a stream of [`Inbound`] events it reads. A session outlives its
//! connection: when the stream ends it detaches and waits for a resume, which attaches a new one.

use std::pin::Pin;

use futures_util::Stream;

/// What a connection delivers to its session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inbound {
    /// A complete text frame (valid UTF-8, within `sessions.max_frame_bytes`).
    Text(String),
    /// The peer showed it is alive (a pong, or any control frame).
    Alive,
    /// The connection broke the protocol or a limit: the session closes it with `code` (a
    /// [`crate::chat::protocol::close`] code; the transport may have sent that close already) and
    /// waits for a resume.
    Broken { code: u16, reason: &'static str },
}

/// A connection's inbound events; it ends when the connection closes. Not `Send`: a connection
/// lives on the arbiter thread of the sessions (see [`Connection`]).
pub type InboundStream = Pin<Box<dyn Stream<Item = Inbound>>>;

/// Which outbound lane a frame takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    /// Chat messages and state changes: never dropped. A client that lets them pile up to
    /// `sessions.outbound_queue` is disconnected (its session survives for a resume).
    Reliable,
    /// Typing updates: coalesced or dropped first when the client is slow.
    Droppable,
}

/// Why a frame could not be queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    #[error("the client's outbound queue is full")]
    Full,
    #[error("the connection is closed")]
    Closed,
}

/// The session's handle on its connection's writing side. Implementations never block: a frame is
/// written at once or queued within the bound.
pub trait Link: 'static {
    /// Queues one text frame.
    fn send(&mut self, text: String, lane: Lane) -> Result<(), SendError>;
    /// Sends a WebSocket ping (the heartbeat).
    fn ping(&mut self);
    /// Sends a close frame with `code` and `reason` after what is queued, then closes.
    fn close(&mut self, code: u16, reason: &'static str);
    /// Stops reading (an upgrade is handing the connection over): the client's frames wait in
    /// the kernel for the next process. Sending still works.
    fn pause(&mut self) {}
    /// Reads again after [`Link::pause`].
    fn resume(&mut self) {}
    /// Takes the socket out for the next process, or `None` if this connection cannot go as it
    /// is (bytes queued, a message half read, another transport): then it is closed instead.
    fn detach(&mut self) -> Option<Socket> {
        None
    }
}

/// A connection's socket taken out of this process, and the bytes read from it that no frame has
/// used yet.
#[derive(Debug)]
pub struct Socket {
    pub socket: std::net::TcpStream,
    pub raw: Vec<u8>,
}

/// An accepted connection, ready to attach to a session. It is accepted on the sessions' arbiter
/// thread and never leaves it; messages carrying it between actors of that thread wrap it in
/// [`Local`].
pub struct Connection {
    pub link: Box<dyn Link>,
    pub inbound: InboundStream,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Connection")
    }
}

/// A [`Connection`] in a message between actors of the sessions' arbiter: actix messages must be
/// `Send`, and this one never leaves its thread (using or dropping it elsewhere panics).
pub type Local = send_wrapper::SendWrapper<Connection>;
