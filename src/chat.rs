//! Live chat: customer sessions and human agents on the chat listener.
//!
//! - [`protocol`]: the `switchboard.v1` wire frames, parsed once at the edge.
//! - [`link`]: the seam between a session and the connection attached to it; [`attached`]: a
//!   connection as its actor holds it (writes, heartbeats, rate limit).
//! - [`auth`]: who the customer is (an optional token).
//! - [`desk`]: the port through which a session opens a ticket (the ticket and Django's chat record
//!   of it in one write).
//! - [`session`]: one session's actor, and its state with its pure rules (seq numbering, bounded
//!   history for resume, once-per-`client_id` messages, one AI call in flight, AI actions), and
//!   its owner (AI, queued, an agent, closed).
//! - [`history`]: the numbered, bounded frame stream both customers and agents resume from.
//! - [`routing`]: the messages sessions, agents and the queue exchange, and their handles.
//! - [`queue`]: the routing queue: waiting sessions, agents' presence and capacity, assignment.
//! - [`agent`]: one agent's actor (presence, capacity, the chats held, their own resumable
//!   stream) and the agents' wire frames; [`agents`]: their keyed supervisor.
//! - [`retention`]: the background prune of chats past `chat.retention_days`.
//! - [`placement`]: which chat thread each session and agent lives on; [`shards`]: every chat
//!   thread's registries.

pub mod agent;
pub mod agents;
pub mod attached;
pub mod auth;
pub mod desk;
pub mod handover;
pub mod history;
pub mod link;
pub mod placement;
pub mod protocol;
pub mod queue;
pub mod registry;
pub mod retention;
pub mod routing;
pub mod session;
pub mod shards;
