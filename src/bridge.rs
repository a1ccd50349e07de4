//! The DjangoBridge: the one component that talks to Django.
//!
//! Ticket changes reach it through the durable outbox the store fills in the same transaction as the
//! ticket write. The [`actor::Bridge`] sends them to `POST /api/tickets/sync/` in batches
//! ([`batch::coalesce`]: one item per ticket, latest snapshot), retries failures with jittered
//! exponential backoff behind a [`breaker::Breaker`], dead-letters events Django refuses, and fetches
//! tickets Django knows but this node does not. It is a permanent child of the root supervisor;
//! restarted in place after a panic it resumes from the outbox, so nothing acknowledged is lost.

pub mod actor;
pub mod batch;
pub mod breaker;
pub mod client;

use actix::prelude::*;
use serde::Serialize;

use crate::domain::ids::TicketId;
use crate::domain::ticket::Ticket;

/// Why the bridge could not answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BridgeError {
    #[error("Django call failed: {0}")]
    Call(#[from] client::CallError),
    #[error("circuit breaker is open; Django is considered down")]
    CircuitOpen,
}

/// Ticket actor → bridge: fetch a ticket this node does not know. Reply: it, or `None` if Django does
/// not know it either (or no Django is configured).
#[derive(Message, Debug)]
#[rtype(result = "Result<Option<Ticket>, BridgeError>")]
pub struct FetchTicket {
    pub id: TicketId,
}

/// Shutdown → bridge: deliver what the outbox holds, for at most `deadline`. Reply: events still left.
#[derive(Message, Debug)]
#[rtype(result = "u64")]
pub struct Drain {
    pub deadline: std::time::Duration,
}

/// HTTP (/readyz) → bridge: how Django looks from here.
#[derive(Message, Debug)]
#[rtype(result = "BridgeStatus")]
pub struct GetStatus;

#[derive(Debug, Clone, Serialize)]
pub struct BridgeStatus {
    pub configured: bool,
    pub breaker: &'static str,
    pub consecutive_failures: u32,
    pub last_error: Option<String>,
    pub last_success_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// Test hook (only routed when `testing.fault_injection` is on): panic inside the bridge.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct InjectPanic;
