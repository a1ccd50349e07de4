//! Live chat: customer sessions on the chat listener.
//!
//! - [`protocol`]: the `switchboard.v1` wire frames, parsed once at the edge.
//! - [`link`]: the seam between a session and the connection attached to it.
//! - [`auth`]: who the customer is (an optional token).
//! - [`session`]: one session's actor, and its state with its pure rules (seq numbering, bounded
//!   history for resume, once-per-`client_id` messages, one AI call in flight, AI actions).

pub mod auth;
pub mod link;
pub mod protocol;
pub mod registry;
pub mod session;
