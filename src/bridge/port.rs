//! The AI lane's port on one chat thread: where that thread's sessions ask Django's AI.
//!
//! Each chat thread has one [`AiPort`], started beside its session registry. A session's
//! [`AiRespond`] goes to the port of its own thread, so asking costs no wake-up of another thread.
//! The port gathers the requests that arrive in one turn of the thread's event loop
//! ([`TurnBatch`]) and hands them to the calls lane as one [`AiBatch`]: N requests cost the
//! bridge's thread one message and at most one wake-up, not N. The lane answers the same way
//! (replies that complete in one turn of its loop come back as one [`AiReplies`]), and the port
//! answers each waiting session on its own thread.
//!
//! Owns the sessions' waiting replies, by token. They are bounded by the calls lane's limit
//! (`bridge.calls_max_in_flight`: a call past it is refused at once, so its token is answered in
//! the next batch back) plus the requests of batches on their way, which the port's mailbox
//! (`bridge.queue_depth`, a session waits for room) bounds. Every token is answered: the lane answers a call
//! it drops (a restart) with [`CallsError::Dropped`], and a port that stops drops its waiters,
//! which the sessions take as a failed call (the customer is told, as for any AI failure).

use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};

use actix::prelude::*;
use futures_channel::oneshot;

use super::turn::TurnBatch;
use super::wire::AiReply;
use super::{AiBatch, AiRespond, CallsError, Lane};
use crate::metrics as m;

/// Tokens are unique in the process, so a port restarted with calls in flight cannot take an
/// answer meant for a waiter it no longer has.
static NEXT_TOKEN: AtomicU64 = AtomicU64::new(1);

/// Calls lane → port: the answers that completed in one turn of the lane's loop, by token.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct AiReplies(pub Vec<(u64, Result<AiReply, CallsError>)>);

type Waiter = oneshot::Sender<Result<AiReply, CallsError>>;

pub struct AiPort {
    /// The chat thread's index (the metric label and the batch's return address).
    thread: usize,
    lane: Recipient<AiBatch>,
    waiting: HashMap<u64, Waiter>,
    out: Option<Rc<TurnBatch<(u64, AiRespond)>>>,
}

impl AiPort {
    pub fn new(thread: usize, lane: Recipient<AiBatch>) -> Self {
        Self {
            thread,
            lane,
            waiting: HashMap::new(),
            out: None,
        }
    }
}

impl Actor for AiPort {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let lane = self.lane.clone();
        let reply_to = ctx.address().recipient::<AiReplies>();
        let port = self.thread;
        self.out = Some(TurnBatch::new(move |calls: Vec<(u64, AiRespond)>| {
            let _span =
                tracing::debug_span!("ai_batch", thread = port, calls = calls.len()).entered();
            metrics::histogram!(m::BRIDGE_AI_BATCH_SIZE, "direction" => "requests")
                .record(calls.len() as f64);
            let tokens: Vec<u64> = calls.iter().map(|(t, _)| *t).collect();
            let batch = AiBatch {
                port,
                reply_to: reply_to.clone(),
                calls,
            };
            if lane.try_send(batch).is_err() {
                // The lane is gone (the system is stopping): these calls fail now, not never.
                let dropped = CallsError::Dropped { lane: Lane::Calls };
                reply_to.do_send(AiReplies(
                    tokens
                        .into_iter()
                        .map(|t| (t, Err(dropped.clone())))
                        .collect(),
                ));
            }
        }));
    }
}

impl actix::Supervised for AiPort {
    fn restarting(&mut self, _: &mut Context<Self>) {
        // Dropping the waiters answers their sessions with a failed call.
        tracing::warn!(
            thread = self.thread,
            waiting = self.waiting.len(),
            "AI port restarting"
        );
        self.waiting.clear();
    }
}

impl Handler<AiRespond> for AiPort {
    type Result = ResponseFuture<Result<AiReply, CallsError>>;

    fn handle(&mut self, msg: AiRespond, _: &mut Context<Self>) -> Self::Result {
        let token = NEXT_TOKEN.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.waiting.insert(token, tx);
        if let Some(out) = &self.out {
            out.push((token, msg));
        }
        Box::pin(async move {
            rx.await
                .unwrap_or(Err(CallsError::Dropped { lane: Lane::Calls }))
        })
    }
}

impl Handler<AiReplies> for AiPort {
    type Result = ();

    fn handle(&mut self, replies: AiReplies, _: &mut Context<Self>) {
        metrics::histogram!(m::BRIDGE_AI_BATCH_SIZE, "direction" => "replies")
            .record(replies.0.len() as f64);
        for (token, result) in replies.0 {
            if let Some(waiter) = self.waiting.remove(&token) {
                // A session that stopped meanwhile no longer waits; nothing to do.
                let _ = waiter.send(result);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use futures_util::future::{pending, ready, LocalBoxFuture};

    use super::*;
    use crate::bridge::batch::SyncItem;
    use crate::bridge::calls::DjangoCalls;
    use crate::bridge::client::{CallError, ChatTicketOutcome, Delivery, DjangoApi, SyncOutcome};
    use crate::bridge::wire::{
        AiRespondRequest, ChatTicketRequest, Customer, ServiceActionRequest, ServiceActionResult,
    };
    use crate::config::Settings;
    use crate::domain::ids::{MessageId, RequestId, SessionId, TicketId};
    use crate::domain::ticket::Ticket;
    use crate::store::HandoffRecord;

    /// A Django whose AI echoes each message, and never answers one that starts with "stall".
    struct EchoAi;

    impl DjangoApi for EchoAi {
        fn sync_tickets(
            &self,
            _: &[SyncItem],
            _: &RequestId,
        ) -> LocalBoxFuture<'static, SyncOutcome> {
            unreachable!("the calls lane syncs nothing")
        }

        fn fetch_ticket(
            &self,
            _: TicketId,
            _: &RequestId,
        ) -> LocalBoxFuture<'static, Result<Option<Ticket>, CallError>> {
            unreachable!("no ticket is fetched here")
        }

        fn ai_respond(
            &self,
            request: &AiRespondRequest,
            _: &RequestId,
        ) -> LocalBoxFuture<'static, Result<AiReply, CallError>> {
            if request.message.starts_with("stall") {
                return Box::pin(pending());
            }
            Box::pin(ready(Ok(AiReply {
                reply: format!("re: {}", request.message),
                confidence: 1.0,
                handoff: false,
                suggested_actions: Vec::new(),
                actions: Vec::new(),
            })))
        }

        fn create_chat_ticket(
            &self,
            _: &ChatTicketRequest<'_>,
            _: &RequestId,
        ) -> LocalBoxFuture<'static, ChatTicketOutcome> {
            unreachable!("the calls lane opens no ticket")
        }

        fn manage_service(
            &self,
            _: &ServiceActionRequest,
            _: &RequestId,
        ) -> LocalBoxFuture<'static, Result<ServiceActionResult, CallError>> {
            unreachable!("no action is run here")
        }

        fn record_handoff(
            &self,
            _: &HandoffRecord,
            _: &RequestId,
        ) -> LocalBoxFuture<'static, Delivery> {
            unreachable!("no handoff is recorded here")
        }
    }

    /// Stops the lane as a crash would, dropping the calls it has in flight.
    #[derive(Message)]
    #[rtype(result = "()")]
    struct Crash;

    impl Handler<Crash> for DjangoCalls {
        type Result = ();

        fn handle(&mut self, _: Crash, ctx: &mut Context<Self>) {
            ctx.stop();
        }
    }

    fn ask(text: &str) -> AiRespond {
        AiRespond {
            request: AiRespondRequest {
                session_id: SessionId::new(),
                message_id: MessageId::new(),
                customer: Customer {
                    id: "c".into(),
                    name: "Ada".into(),
                    email: String::new(),
                },
                message: text.into(),
                history: Vec::new(),
            },
            request_id: None,
        }
    }

    #[actix::test]
    async fn each_session_gets_its_own_answer_and_a_dropped_call_is_answered() {
        let settings = Settings::from_toml("").expect("defaults");
        let lane = DjangoCalls::with_api(Rc::new(EchoAi), &settings.bridge).start();
        let port = AiPort::new(0, lane.clone().recipient()).start();
        // Sent in one turn: they travel to the lane as one batch and come back as one.
        let (a, b, stalled) = (
            port.send(ask("one")),
            port.send(ask("two")),
            port.send(ask("stall")),
        );
        let (a, b) = futures_util::future::join(a, b).await;
        assert_eq!(
            a.expect("port answers").expect("AI answers").reply,
            "re: one"
        );
        assert_eq!(
            b.expect("port answers").expect("AI answers").reply,
            "re: two"
        );
        lane.do_send(Crash);
        let stalled = tokio::time::timeout(Duration::from_secs(5), stalled)
            .await
            .expect("a call the lane dropped is answered, not left waiting")
            .expect("port answers");
        assert!(
            matches!(stalled, Err(CallsError::Dropped { lane: Lane::Calls })),
            "{stalled:?}"
        );
        // With the lane gone, a new call fails at once instead of waiting for ever.
        let late = tokio::time::timeout(Duration::from_secs(5), port.send(ask("three")))
            .await
            .expect("answered")
            .expect("port answers");
        assert!(matches!(late, Err(CallsError::Dropped { .. })), "{late:?}");
    }
}
