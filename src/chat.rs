//! Live chat: customer sessions on the chat listener.
//!
//! - [`protocol`]: the `switchboard.v1` wire frames, parsed once at the edge.
//! - [`session`]: one session's state and its pure rules (seq numbering, bounded history for
//!   resume, once-per-`client_id` messages, one AI call in flight, AI actions).

pub mod protocol;
pub mod session;
