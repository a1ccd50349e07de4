//! Tickets as actors.
//!
//! The [`registry::TicketRegistry`] is a dynamic supervisor: it routes by [`TicketId`](crate::domain::ids::TicketId), activates a
//! [`actor::TicketActor`] on the first message for a ticket (from the store, or from Django when the
//! ticket is not known locally), passivates it after `tickets.idle_timeout_ms` without traffic, and
//! restarts it in place (reloaded from the store) when one of its handlers panics. The status state
//! machine and patch logic live in [`crate::domain`], pure and unit-tested.

pub mod actor;
pub mod compact;
pub mod registry;

use std::sync::Arc;

use actix::MailboxError;

use crate::bridge::CallsError;
use crate::store::StoreError;

/// Why a ticket operation failed; mapped to HTTP statuses at the edge.
#[derive(Debug, thiserror::Error)]
pub enum TicketError {
    #[error("ticket {0} not found")]
    NotFound(crate::domain::ids::TicketId),
    #[error("ticket is at version {current}, which If-Match does not name")]
    StaleVersion { current: u64 },
    #[error(transparent)]
    Transition(#[from] crate::domain::patch::TransitionError),
    #[error(transparent)]
    Validation(#[from] crate::domain::validate::ValidationError),
    #[error("storage failed")]
    Store(#[from] StoreError),
    #[error("Django is unavailable")]
    DjangoUnavailable(#[source] CallsError),
    /// An actor (the ticket's, the registry, the calls lane) did not take or answer a message.
    #[error("{what} did not answer")]
    Unavailable {
        what: &'static str,
        #[source]
        source: MailboxError,
    },
    #[error("the ticket is still loading")]
    Loading,
    /// The activation failed; every message queued behind it gets this answer, then the actor stops
    /// so the next message tries again.
    #[error("the ticket could not be loaded")]
    LoadFailed(#[source] Arc<TicketError>),
}
