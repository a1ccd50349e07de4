//! The request/response lane's actor: Django calls someone is waiting for, made once each.
//!
//! Started by the root supervisor (child `django_calls`), on the bridge's arbiter beside the sync lane
//! but sharing none of its state: its own awc client and timeout (`bridge.calls_timeout_ms`), its own
//! concurrency limit (`bridge.calls_max_in_flight`) and its own circuit breaker
//! (`bridge.calls_breaker_threshold`, `bridge.calls_breaker_cooldown_ms`). Takes [`FetchTicket`] (ticket
//! actors), [`AiRespond`] and [`ManageService`] (chat), and [`GetStatus`] (`/readyz`). A call beyond the
//! limit or behind an open breaker is refused at once with a typed error, never queued: its caller has
//! a fallback (503 for a ticket, a human agent for a chat), and waiting would only make it late.
//! Each call runs as a future of its own, so a slow one never holds the mailbox.

use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use chrono::{DateTime, Utc};
use futures_util::future::LocalBoxFuture;

use super::breaker::Breaker;
use super::client::{chain, AwcDjango, CallError, DjangoApi};
use super::port::AiReplies;
use super::turn::TurnBatch;
use super::wire::{AiReply, ServiceActionResult};
use super::{
    AiBatch, AiRespond, CallsError, FetchTicket, GetStatus, Lane, LaneStatus, ManageService,
};
use crate::config::{BridgeSettings, DjangoSettings};
use crate::domain::ids::RequestId;
use crate::domain::ticket::Ticket;

pub struct DjangoCalls {
    django: DjangoSettings,
    max_in_flight: usize,
    timeout: Duration,
    api: Option<Rc<dyn DjangoApi>>,
    breaker: Breaker,
    in_flight: usize,
    failures: u32,
    last_error: Option<String>,
    last_success_at: Option<DateTime<Utc>>,
    /// Answers on their way back to each chat thread's port, gathered per turn of this loop.
    replies: HashMap<usize, Rc<ReplySink>>,
}

type ReplySink = TurnBatch<(u64, Result<AiReply, CallsError>)>;

fn reply_sink(to: Recipient<AiReplies>) -> Rc<ReplySink> {
    TurnBatch::new(move |replies| to.do_send(AiReplies(replies)))
}

/// One AI call of a batch, owed to its port: answered once, and if the call is dropped unanswered
/// (the lane restarting drops its futures), answered [`CallsError::Dropped`] so no session waits
/// for ever.
struct Owed {
    token: u64,
    sink: Rc<ReplySink>,
    answered: bool,
}

impl Owed {
    fn answer(mut self, result: Result<AiReply, CallsError>) {
        self.answered = true;
        self.sink.push((self.token, result));
    }
}

impl Drop for Owed {
    fn drop(&mut self) {
        if !self.answered {
            let dropped = CallsError::Dropped { lane: Lane::Calls };
            self.sink.push((self.token, Err(dropped)));
        }
    }
}

impl DjangoCalls {
    pub fn new(django: DjangoSettings, settings: &BridgeSettings) -> Self {
        Self {
            django,
            max_in_flight: settings.calls_max_in_flight,
            timeout: Duration::from_millis(settings.calls_timeout_ms),
            api: None,
            breaker: Breaker::new(
                settings.calls_breaker_threshold,
                Duration::from_millis(settings.calls_breaker_cooldown_ms),
            ),
            in_flight: 0,
            failures: 0,
            last_error: None,
            last_success_at: None,
            replies: HashMap::new(),
        }
    }

    /// A lane over `api` (tests: a scripted Django).
    pub fn with_api(api: Rc<dyn DjangoApi>, settings: &BridgeSettings) -> Self {
        let mut lane = Self::new(
            DjangoSettings {
                base_url: String::new(),
                token: String::new(),
                timeout_ms: settings.calls_timeout_ms,
            },
            settings,
        );
        lane.api = Some(api);
        lane
    }

    fn publish(&self) {
        Lane::Calls.publish(self.breaker.state(Instant::now()), self.in_flight);
    }

    /// Takes a slot for one call, or says why not.
    fn admit(&mut self) -> Result<Rc<dyn DjangoApi>, CallsError> {
        let api = self.api.clone().ok_or(CallsError::NotConfigured)?;
        if self.in_flight >= self.max_in_flight {
            Lane::Calls.refused("busy");
            return Err(CallsError::Busy {
                lane: Lane::Calls,
                limit: self.max_in_flight,
            });
        }
        if !self.breaker.allow(Instant::now()) {
            Lane::Calls.refused("breaker");
            return Err(CallsError::CircuitOpen { lane: Lane::Calls });
        }
        self.in_flight += 1;
        self.publish();
        Ok(api)
    }

    /// Runs an admitted call as its own future; its outcome feeds the breaker and frees the slot.
    fn call<T: 'static>(
        &mut self,
        fut: LocalBoxFuture<'static, Result<T, CallError>>,
    ) -> ResponseActFuture<Self, Result<T, CallsError>> {
        Box::pin(fut.into_actor(self).map(|result, act, _| {
            act.in_flight -= 1;
            match &result {
                Err(e) if e.is_outage() => {
                    act.breaker.on_failure(Instant::now());
                    act.failures = act.failures.saturating_add(1);
                    act.last_error = Some(chain(e));
                    tracing::warn!(error = %chain(e), failures = act.failures, "Django call failed");
                }
                Err(e) => {
                    // Django answered: it is up, it just refused this call.
                    act.breaker.on_success();
                    act.failures = 0;
                    act.last_error = Some(chain(e));
                }
                Ok(_) => {
                    act.breaker.on_success();
                    act.failures = 0;
                    act.last_success_at = Some(Utc::now());
                }
            }
            act.publish();
            result.map_err(CallsError::Call)
        }))
    }
}

fn refuse<T: 'static>(e: CallsError) -> ResponseActFuture<DjangoCalls, Result<T, CallsError>> {
    Box::pin(fut::ready(Err(e)))
}

fn request_id(id: Option<RequestId>) -> RequestId {
    id.unwrap_or_else(RequestId::generate)
}

impl Actor for DjangoCalls {
    type Context = Context<Self>;

    fn started(&mut self, _: &mut Context<Self>) {
        if self.api.is_none() && !self.django.base_url.is_empty() {
            self.api = Some(Rc::new(AwcDjango::with_connections(
                &self.django,
                Lane::Calls,
                self.timeout,
                self.max_in_flight,
            )));
        }
        self.publish();
    }
}

impl actix::Supervised for DjangoCalls {
    fn restarting(&mut self, _: &mut Context<Self>) {
        // The calls in flight were dropped with the context: a single call's caller got a mailbox
        // error, and each batched AI call was answered `Dropped` to its port.
        tracing::warn!(in_flight = self.in_flight, "Django calls lane restarting");
        self.in_flight = 0;
        self.breaker.cancel_probe();
    }
}

impl Handler<FetchTicket> for DjangoCalls {
    type Result = ResponseActFuture<Self, Result<Option<Ticket>, CallsError>>;

    fn handle(&mut self, msg: FetchTicket, _: &mut Context<Self>) -> Self::Result {
        if self.api.is_none() {
            // No Django: nobody else knows the ticket either.
            return Box::pin(fut::ready(Ok(None)));
        }
        match self.admit() {
            Ok(api) => {
                let fut = api.fetch_ticket(msg.id, &request_id(msg.request_id));
                self.call(fut)
            }
            Err(e) => refuse(e),
        }
    }
}

impl Handler<AiRespond> for DjangoCalls {
    type Result = ResponseActFuture<Self, Result<AiReply, CallsError>>;

    fn handle(&mut self, msg: AiRespond, _: &mut Context<Self>) -> Self::Result {
        match self.admit() {
            Ok(api) => {
                let fut = api.ai_respond(&msg.request, &request_id(msg.request_id));
                self.call(fut)
            }
            Err(e) => refuse(e),
        }
    }
}

impl Handler<AiBatch> for DjangoCalls {
    type Result = ();

    fn handle(&mut self, batch: AiBatch, ctx: &mut Context<Self>) {
        let sink = self
            .replies
            .entry(batch.port)
            .or_insert_with(|| reply_sink(batch.reply_to))
            .clone();
        for (token, msg) in batch.calls {
            let owed = Owed {
                token,
                sink: sink.clone(),
                answered: false,
            };
            match self.admit() {
                Ok(api) => {
                    let fut = api.ai_respond(&msg.request, &request_id(msg.request_id));
                    ctx.spawn(self.call(fut).map(move |result, _, _| owed.answer(result)));
                }
                Err(e) => owed.answer(Err(e)),
            }
        }
    }
}

impl Handler<ManageService> for DjangoCalls {
    type Result = ResponseActFuture<Self, Result<ServiceActionResult, CallsError>>;

    fn handle(&mut self, msg: ManageService, _: &mut Context<Self>) -> Self::Result {
        match self.admit() {
            Ok(api) => {
                // The body names the request too, so Django can log it with the action.
                let id = request_id(msg.request_id.or_else(|| msg.request.request_id.clone()));
                let mut request = msg.request;
                request.request_id = Some(id.clone());
                let fut = api.manage_service(&request, &id);
                self.call(fut)
            }
            Err(e) => refuse(e),
        }
    }
}

impl Handler<GetStatus> for DjangoCalls {
    type Result = MessageResult<GetStatus>;

    fn handle(&mut self, _: GetStatus, _: &mut Context<Self>) -> Self::Result {
        MessageResult(LaneStatus {
            lane: Lane::Calls,
            configured: self.api.is_some(),
            breaker: self.breaker.state(Instant::now()).as_str(),
            consecutive_failures: self.failures,
            in_flight: self.in_flight,
            last_error: self.last_error.clone(),
            last_success_at: self.last_success_at,
        })
    }
}
