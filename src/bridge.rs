//! The DjangoBridge: the one component that talks to Django, in two lanes that share nothing but
//! the settings, so a slow AI never holds back ticket sync and a sync backlog never delays an AI reply.
//!
//! - **The sync lane**, [`actor::Bridge`]: durable, at-least-once delivery of what the outbox holds.
//!   Ticket changes go to `POST /api/tickets/sync/` in batches ([`batch::coalesce`]: one item per
//!   ticket, latest snapshot) and chat tickets to `POST /api/livechat/tickets/create/`, one call each
//!   ([`dispatch`]); failures are retried with jittered exponential backoff behind its own
//!   [`breaker::Breaker`], and records Django refuses are dead-lettered. Takes [`Drain`], [`GetStatus`]
//!   and [`InjectPanic`].
//! - **The request/response lane**, [`calls::DjangoCalls`]: calls someone is waiting for, each made
//!   once: [`FetchTicket`] (from the ticket actors), [`AiRespond`] and [`ManageService`] (from chat).
//!   AI requests reach it through each chat thread's [`port::AiPort`], batched per turn of that
//!   thread's loop ([`AiBatch`]), and go back the same way.
//!   It has its own timeout, concurrency limit and breaker, and refuses a call at once
//!   ([`CallsError::Busy`], [`CallsError::CircuitOpen`]) rather than queue it. Takes [`GetStatus`] too.
//!
//! Both are permanent children of the root supervisor, on the bridge's arbiter; both are restarted in
//! place. The sync lane resumes from the outbox, so nothing acknowledged is lost; the calls lane has
//! nothing to resume (a call cut short by a panic answers its caller with a mailbox error, or [`CallsError::Dropped`]).
//! [`client::DjangoApi`] is the seam to Django: one typed method per endpoint ([`wire`] holds the
//! bodies), each sending `X-Request-Id`.

pub mod actor;
pub mod batch;
pub mod breaker;
pub mod calls;
pub mod client;
pub mod dispatch;
pub mod port;
pub mod turn;
pub mod wire;

use std::fmt;

use actix::prelude::*;
use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::domain::ids::{RequestId, TicketId};
use crate::domain::ticket::Ticket;
use crate::metrics as m;
use breaker::BreakerState;
use wire::{AiReply, AiRespondRequest, ServiceActionRequest, ServiceActionResult};

/// Which lane a call, a metric or a status belongs to (the `lane` metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Lane {
    /// Outbox → Django, batched and retried.
    Sync,
    /// Request/response calls someone waits for.
    Calls,
}

impl Lane {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sync => "sync",
            Self::Calls => "calls",
        }
    }

    /// Publishes the lane's breaker state and in-flight calls as gauges.
    pub fn publish(self, breaker: BreakerState, in_flight: usize) {
        metrics::gauge!(m::BRIDGE_BREAKER_STATE, "lane" => self.as_str()).set(breaker.gauge());
        metrics::gauge!(m::BRIDGE_IN_FLIGHT, "lane" => self.as_str()).set(in_flight as f64);
    }

    /// Counts a call the lane refused without making it (`reason`: `busy`, `breaker`).
    pub fn refused(self, reason: &'static str) {
        metrics::counter!(m::BRIDGE_REFUSALS, "lane" => self.as_str(), "reason" => reason)
            .increment(1);
    }
}

impl fmt::Display for Lane {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why the calls lane could not answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CallsError {
    #[error("the Django call failed")]
    Call(#[from] client::CallError),
    #[error("the {lane} lane's circuit breaker is open; Django is considered down")]
    CircuitOpen { lane: Lane },
    #[error("the {lane} lane already has {limit} calls in flight; call refused")]
    Busy { lane: Lane, limit: usize },
    #[error("no django.base_url is configured")]
    NotConfigured,
    #[error("the {lane} lane could not take or finish the call (full, restarting or stopping)")]
    Dropped { lane: Lane },
}

/// Ticket actor → calls lane: fetch a ticket this node does not know. Reply: it, or `None` if Django
/// does not know it either (or no Django is configured).
#[derive(Message, Debug)]
#[rtype(result = "Result<Option<Ticket>, CallsError>")]
pub struct FetchTicket {
    pub id: TicketId,
    /// The request that needs the ticket, sent as `X-Request-Id`; `None` mints a fresh one.
    pub request_id: Option<RequestId>,
}

/// Chat → calls lane: ask Django's AI to answer a customer message. Reply: the AI's answer; on any
/// error the chat falls back (docs/django-api.md 3.1). Never retried.
#[derive(Message, Debug)]
#[rtype(result = "Result<AiReply, CallsError>")]
pub struct AiRespond {
    pub request: AiRespondRequest,
    pub request_id: Option<RequestId>,
}

/// A chat thread's AI port → calls lane: the AI requests its sessions made in one turn of that
/// thread's loop, each with the port's token. The lane answers every token, in batches, with
/// [`port::AiReplies`] to `reply_to`.
#[derive(Message)]
#[rtype(result = "()")]
pub struct AiBatch {
    /// The port's chat thread: replies to one port are gathered together.
    pub port: usize,
    pub reply_to: Recipient<port::AiReplies>,
    pub calls: Vec<(u64, AiRespond)>,
}

/// Chat → calls lane: carry out a service action the AI chose for a customer. Reply: the result the
/// customer is shown. Never retried (docs/django-api.md 3.3).
#[derive(Message, Debug)]
#[rtype(result = "Result<ServiceActionResult, CallsError>")]
pub struct ManageService {
    pub request: ServiceActionRequest,
    pub request_id: Option<RequestId>,
}

/// Shutdown → sync lane: deliver what the outbox holds, for at most `deadline`. Reply: entries still
/// left.
#[derive(Message, Debug)]
#[rtype(result = "u64")]
pub struct Drain {
    pub deadline: std::time::Duration,
}

/// HTTP (/readyz) → either lane: how Django looks from it.
#[derive(Message, Debug)]
#[rtype(result = "LaneStatus")]
pub struct GetStatus;

/// One lane's view of Django, as `/readyz` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct LaneStatus {
    pub lane: Lane,
    pub configured: bool,
    pub breaker: &'static str,
    pub consecutive_failures: u32,
    pub in_flight: usize,
    pub last_error: Option<String>,
    pub last_success_at: Option<DateTime<Utc>>,
}

/// Test hook (only routed when `testing.fault_injection` is on): panic inside the sync lane.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct InjectPanic;
