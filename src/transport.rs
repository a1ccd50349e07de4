//! The live-chat WebSocket transport: a lean RFC 6455 server side over tokio's `TcpStream`, chosen
//! because an idle connection holds no read or write buffer (see BENCHMARKS.md, "Live chat
//! transport: memory per idle connection"). The chat listener accepts a socket, calls
//! [`connection::accept`] for the upgrade, and hands the two halves to a session actor: it attaches
//! [`connection::Inbound`] with `ctx.add_stream` and keeps [`connection::Outbound`] to send.
//!
//! - [`frame`]: the frame codec and message assembly (text checked as it arrives), pure and
//!   unit-tested; `tests/fuzz_parsers.rs` checks it on arbitrary input.
//! - [`handshake`]: the HTTP upgrade request and its response, pure and unit-tested.
//! - [`connection`]: the socket halves; reads into a per-thread scratch buffer, writes directly.
//!   Closing (from either side, or on a protocol error) is handed to a task of its own that
//!   delivers what is queued and the close frame, and drops the socket within a bounded time.
//!
//! Not here (yet): permessage-deflate (never offered back), client-side handshakes (the load tools
//! write their own), and the session's ping timer and idle timeout, which belong to the session actor.

pub mod connection;
pub mod frame;
pub mod handshake;

pub use connection::{
    accept, accept_routed, adopt, Detached, Inbound, Limits, NotDetachable, Outbound, SendError,
    TransportError, DEFAULT_CLOSE_TIMEOUT,
};
pub use frame::{close_code, Message, ProtocolError};
pub use handshake::{Head, Route};
