//! One delivery cycle of the sync lane, as plain async logic over the [`Outbox`] and [`DjangoApi`]
//! seams (the [`super::actor::Bridge`] only decides when a cycle runs).
//!
//! A cycle peeks the oldest `batch_max` entries and splits them by kind: ticket syncs are coalesced
//! into one batch for `POST /api/tickets/sync/` (bisected when Django refuses it without naming
//! events), chat tickets become one `POST /api/livechat/tickets/create/` call each, in outbox order.
//! The two kinds are sent side by side, and a failure stops only its own kind: a broken chat endpoint
//! does not hold ticket syncs back, nor the reverse. What Django took is acked and what it refused
//! (400, 409, 422) dead-lettered, in the store, before the cycle ends; the rest stays in the outbox for
//! the next cycle, at its place.

use std::collections::VecDeque;
use std::rc::Rc;

use futures_util::future::{FutureExt, LocalBoxFuture};

use super::batch::{coalesce, SyncItem};
use super::client::{Delivery, DjangoApi, SyncOutcome};
use super::wire::ChatTicketRequest;
use crate::bridge::client::CallError;
use crate::domain::ids::RequestId;
use crate::metrics as m;
use crate::store::{
    ChatTicketRecord, HandoffRecord, Outbox, OutboxEntry, OutboxRecord, Rejection, StoreError,
};

/// What one delivery cycle did.
#[derive(Debug, Default)]
pub struct Report {
    /// Entries peeked.
    pub entries: usize,
    /// Outbox positions Django took (acked).
    pub delivered: Vec<i64>,
    /// Entries Django refused (dead-lettered).
    pub rejected: Vec<Rejection>,
    /// The first failure, if any kind stopped on one (retry later).
    pub failed: Option<CallError>,
    /// Calls made.
    pub calls: u32,
}

impl Report {
    fn merge(&mut self, other: Report) {
        self.delivered.extend(other.delivered);
        self.rejected.extend(other.rejected);
        self.calls += other.calls;
        if self.failed.is_none() {
            self.failed = other.failed;
        }
    }
}

/// The work in a window of outbox entries, by kind.
#[derive(Debug, Default)]
pub struct Plan {
    /// One item per ticket, ordered by each ticket's first entry.
    pub syncs: Vec<SyncItem>,
    /// Chat tickets with their outbox positions, in outbox order.
    pub chats: Vec<(i64, ChatTicketRecord)>,
    /// Handoff steps with their outbox positions, in outbox order.
    pub handoffs: Vec<(i64, HandoffRecord)>,
}

/// Splits entries (in outbox order) by kind.
pub fn plan(entries: &[OutboxEntry]) -> Plan {
    Plan {
        syncs: coalesce(entries),
        chats: entries
            .iter()
            .filter_map(|e| match &e.record {
                OutboxRecord::ChatTicket(r) => Some((e.seq, r.clone())),
                _ => None,
            })
            .collect(),
        handoffs: entries
            .iter()
            .filter_map(|e| match &e.record {
                OutboxRecord::Handoff(r) => Some((e.seq, r.clone())),
                _ => None,
            })
            .collect(),
    }
}

/// Runs one cycle: peek, send, then ack and dead-letter in the store.
pub async fn run_cycle(
    outbox: &dyn Outbox,
    api: Rc<dyn DjangoApi>,
    batch_max: usize,
) -> Result<Report, StoreError> {
    let entries = outbox.peek(batch_max).await?;
    let mut report = Report {
        entries: entries.len(),
        ..Report::default()
    };
    if entries.is_empty() {
        return Ok(report);
    }
    metrics::histogram!(m::BRIDGE_BATCH_SIZE).record(entries.len() as f64);
    let plan = plan(&entries);
    let (syncs, chats, handoffs) = futures_util::future::join3(
        deliver_syncs(api.clone(), plan.syncs),
        deliver_chats(api.clone(), plan.chats),
        deliver_handoffs(api, plan.handoffs),
    )
    .await;
    report.merge(syncs);
    report.merge(chats);
    report.merge(handoffs);
    if !report.delivered.is_empty() {
        outbox.ack(report.delivered.clone()).await?;
    }
    if !report.rejected.is_empty() {
        outbox.dead_letter(report.rejected.clone()).await?;
    }
    Ok(report)
}

/// Sends `items`, isolating refused ones: events Django names are dead-lettered and the rest resent;
/// a refusal naming none is bisected until single tickets remain. Stops at the first failure. Each
/// batch has its own `X-Request-Id`; its items carry the ids of the requests behind them.
fn deliver_syncs(api: Rc<dyn DjangoApi>, items: Vec<SyncItem>) -> LocalBoxFuture<'static, Report> {
    async move {
        let mut report = Report::default();
        if items.is_empty() {
            return report;
        }
        let mut queue: VecDeque<Vec<SyncItem>> = VecDeque::from([items]);
        while let Some(chunk) = queue.pop_front() {
            report.calls += 1;
            match api.sync_tickets(&chunk, &RequestId::generate()).await {
                SyncOutcome::Delivered => {
                    report
                        .delivered
                        .extend(chunk.iter().flat_map(|i| i.seqs.iter().copied()));
                }
                SyncOutcome::Rejected { status, named } => {
                    let blamed = |item: &SyncItem| {
                        named.iter().find(|(id, _)| {
                            *id == item.event_id || item.coalesced_event_ids.contains(id)
                        })
                    };
                    let (bad, good): (Vec<_>, Vec<_>) =
                        chunk.into_iter().partition(|i| blamed(i).is_some());
                    if !bad.is_empty() {
                        for item in &bad {
                            let why = blamed(item).map(|(_, m)| m.clone()).unwrap_or_default();
                            reject_item(&mut report, item, status, &why);
                        }
                        if !good.is_empty() {
                            queue.push_front(good);
                        }
                    } else if good.len() == 1 {
                        reject_item(&mut report, &good[0], status, "refused by Django");
                    } else {
                        let mut left = good;
                        let right = left.split_off(left.len() / 2);
                        queue.push_front(right);
                        queue.push_front(left);
                    }
                }
                SyncOutcome::Failed(e) => {
                    report.failed = Some(e);
                    break;
                }
            }
        }
        report
    }
    .boxed_local()
}

fn reject_item(report: &mut Report, item: &SyncItem, status: u16, why: &str) {
    for seq in &item.seqs {
        report.rejected.push(Rejection {
            seq: *seq,
            status_code: Some(status),
            error: format!("HTTP {status}: {why}"),
        });
    }
}

/// Sends chat tickets one by one, in outbox order; stops at the first failure.
fn deliver_chats(
    api: Rc<dyn DjangoApi>,
    chats: Vec<(i64, ChatTicketRecord)>,
) -> LocalBoxFuture<'static, Report> {
    deliver_each(chats, move |record| {
        let request_id = record
            .request_id
            .clone()
            .unwrap_or_else(RequestId::generate);
        let sent = api.create_chat_ticket(&ChatTicketRequest::from(record), &request_id);
        async move { Delivery::from(sent.await) }.boxed_local()
    })
}

/// Sends handoff steps one by one, in outbox order (Django sees a chat's requested before its
/// accepted); stops at the first failure.
fn deliver_handoffs(
    api: Rc<dyn DjangoApi>,
    handoffs: Vec<(i64, HandoffRecord)>,
) -> LocalBoxFuture<'static, Report> {
    deliver_each(handoffs, move |record| {
        api.record_handoff(record, &RequestId::generate())
    })
}

/// Sends records one at a time: a refused one goes to the dead letters, a failure stops the run
/// (the rest wait for the next cycle, in order).
fn deliver_each<R: 'static>(
    records: Vec<(i64, R)>,
    send: impl Fn(&R) -> LocalBoxFuture<'static, Delivery> + 'static,
) -> LocalBoxFuture<'static, Report> {
    async move {
        let mut report = Report::default();
        for (seq, record) in records {
            report.calls += 1;
            match send(&record).await {
                Delivery::Delivered => report.delivered.push(seq),
                Delivery::Rejected { status, message } => report.rejected.push(Rejection {
                    seq,
                    status_code: Some(status),
                    error: format!("HTTP {status}: {message}"),
                }),
                Delivery::Failed(e) => {
                    report.failed = Some(e);
                    break;
                }
            }
        }
        report
    }
    .boxed_local()
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::sync::{Arc, Mutex};

    use futures_util::future::BoxFuture;

    use super::*;
    use crate::bridge::client::{ChatTicketOutcome, Endpoint};
    use crate::bridge::wire::{
        AiReply, AiRespondRequest, ChatTicketCreated, ServiceActionRequest, ServiceActionResult,
    };
    use crate::domain::ids::{EventId, SessionId, TicketId};
    use crate::domain::status::Status;
    use crate::domain::ticket::{EventKind, Priority, Source, Ticket};
    use crate::store::{DeadLetter, OutboxSignal, OutboxStats, StoreResult, SyncRecord};

    /// An outbox in memory: entries in order, acked ones removed, refused ones moved aside.
    #[derive(Default)]
    struct MemoryOutbox {
        entries: Mutex<Vec<OutboxEntry>>,
        dead: Mutex<Vec<Rejection>>,
        signal: Arc<OutboxSignal>,
    }

    impl MemoryOutbox {
        fn with(records: Vec<OutboxRecord>) -> Self {
            let outbox = Self::default();
            *outbox.entries.lock().unwrap() = records
                .into_iter()
                .enumerate()
                .map(|(i, record)| OutboxEntry {
                    seq: i as i64 + 1,
                    record,
                    enqueued_at: crate::store::now(),
                })
                .collect();
            outbox
        }

        fn seqs(&self) -> Vec<i64> {
            self.entries.lock().unwrap().iter().map(|e| e.seq).collect()
        }

        fn dead_seqs(&self) -> Vec<(i64, Option<u16>)> {
            let dead = self.dead.lock().unwrap();
            dead.iter().map(|r| (r.seq, r.status_code)).collect()
        }
    }

    fn ready<T: Send + 'static>(v: T) -> BoxFuture<'static, T> {
        Box::pin(futures_util::future::ready(v))
    }

    impl Outbox for MemoryOutbox {
        fn enqueue(&self, record: OutboxRecord) -> BoxFuture<'static, StoreResult<i64>> {
            let mut entries = self.entries.lock().unwrap();
            let seq = entries.last().map_or(1, |e| e.seq + 1);
            entries.push(OutboxEntry {
                seq,
                record,
                enqueued_at: crate::store::now(),
            });
            self.signal.appended(1);
            ready(Ok(seq))
        }

        fn peek(&self, limit: usize) -> BoxFuture<'static, StoreResult<Vec<OutboxEntry>>> {
            let entries = self.entries.lock().unwrap();
            ready(Ok(entries.iter().take(limit).cloned().collect()))
        }

        fn ack(&self, seqs: Vec<i64>) -> BoxFuture<'static, StoreResult<()>> {
            self.entries
                .lock()
                .unwrap()
                .retain(|e| !seqs.contains(&e.seq));
            ready(Ok(()))
        }

        fn dead_letter(&self, rejected: Vec<Rejection>) -> BoxFuture<'static, StoreResult<()>> {
            let seqs: Vec<_> = rejected.iter().map(|r| r.seq).collect();
            self.entries
                .lock()
                .unwrap()
                .retain(|e| !seqs.contains(&e.seq));
            self.dead.lock().unwrap().extend(rejected);
            ready(Ok(()))
        }

        fn stats(&self) -> BoxFuture<'static, StoreResult<OutboxStats>> {
            let depth = self.entries.lock().unwrap().len() as u64;
            let dead_letters = self.dead.lock().unwrap().len() as u64;
            ready(Ok(OutboxStats {
                depth,
                oldest: None,
                dead_letters,
            }))
        }

        fn dead_letters(&self, _: u32) -> BoxFuture<'static, StoreResult<Vec<DeadLetter>>> {
            ready(Ok(Vec::new()))
        }

        fn retry_dead_letter(&self, _: i64) -> BoxFuture<'static, StoreResult<bool>> {
            ready(Ok(false))
        }

        fn signal(&self) -> Arc<OutboxSignal> {
            self.signal.clone()
        }
    }

    /// A Django that answers each chat ticket by its status table (default 201) and each sync batch
    /// with `sync_status` (200), recording every call in order.
    #[derive(Default)]
    struct ScriptedDjango {
        sync_status: RefCell<u16>,
        chat_status: RefCell<Vec<(TicketId, u16)>>,
        calls: RefCell<Vec<String>>,
        chat_request_ids: RefCell<Vec<RequestId>>,
    }

    fn failed(endpoint: Endpoint, status: u16) -> CallError {
        CallError::Status { endpoint, status }
    }

    impl DjangoApi for ScriptedDjango {
        fn sync_tickets(
            &self,
            items: &[SyncItem],
            _: &RequestId,
        ) -> LocalBoxFuture<'static, SyncOutcome> {
            self.calls
                .borrow_mut()
                .push(format!("sync:{}", items.len()));
            let outcome = match *self.sync_status.borrow() {
                200 => SyncOutcome::Delivered,
                s @ (400 | 409 | 422) => SyncOutcome::Rejected {
                    status: s,
                    named: Vec::new(),
                },
                s => SyncOutcome::Failed(failed(Endpoint::Sync, s)),
            };
            futures_util::future::ready(outcome).boxed_local()
        }

        fn fetch_ticket(
            &self,
            _: TicketId,
            _: &RequestId,
        ) -> LocalBoxFuture<'static, Result<Option<Ticket>, CallError>> {
            unreachable!("the sync lane fetches nothing")
        }

        fn ai_respond(
            &self,
            _: &AiRespondRequest,
            _: &RequestId,
        ) -> LocalBoxFuture<'static, Result<AiReply, CallError>> {
            unreachable!("the sync lane asks no AI")
        }

        fn create_chat_ticket(
            &self,
            request: &ChatTicketRequest<'_>,
            request_id: &RequestId,
        ) -> LocalBoxFuture<'static, ChatTicketOutcome> {
            self.calls
                .borrow_mut()
                .push(format!("chat:{}", request.ticket_id));
            self.chat_request_ids.borrow_mut().push(request_id.clone());
            let status = self
                .chat_status
                .borrow()
                .iter()
                .find(|(t, _)| *t == request.ticket_id)
                .map_or(201, |(_, s)| *s);
            let outcome = match status {
                200 | 201 => ChatTicketOutcome::Created(ChatTicketCreated {
                    ticket_id: request.ticket_id,
                    url: String::new(),
                }),
                s @ (400 | 409 | 422) => ChatTicketOutcome::Rejected {
                    status: s,
                    message: "refused".into(),
                },
                s => ChatTicketOutcome::Failed(failed(Endpoint::ChatTicket, s)),
            };
            futures_util::future::ready(outcome).boxed_local()
        }

        fn manage_service(
            &self,
            _: &ServiceActionRequest,
            _: &RequestId,
        ) -> LocalBoxFuture<'static, Result<ServiceActionResult, CallError>> {
            unreachable!("the sync lane carries out no action")
        }

        fn record_handoff(
            &self,
            _: &HandoffRecord,
            _: &RequestId,
        ) -> LocalBoxFuture<'static, Delivery> {
            async { Delivery::Delivered }.boxed_local()
        }
    }

    fn sync(ticket: TicketId, version: u64) -> OutboxRecord {
        let now = crate::store::now();
        OutboxRecord::TicketSync(SyncRecord {
            event_id: EventId::new(),
            ticket_id: ticket,
            version,
            kind: EventKind::Updated,
            occurred_at: now,
            ticket: Ticket {
                id: ticket,
                subject: "s".into(),
                description: String::new(),
                status: Status::Open,
                priority: Priority::Normal,
                requester: "r".into(),
                assignee: None,
                tags: vec![],
                source: Source::Api,
                chat_session_id: None,
                created_at: now,
                updated_at: now,
                version,
            },
            comment: None,
            request_id: None,
            status_changed: false,
        })
    }

    fn chat(ticket: TicketId, request_id: Option<&str>) -> OutboxRecord {
        OutboxRecord::ChatTicket(ChatTicketRecord {
            session_id: SessionId::new(),
            ticket_id: ticket,
            subject: "Wrong invoice".into(),
            description: "INV-1009".into(),
            priority: Priority::Normal,
            requester: "ada@example.com".into(),
            transcript: Vec::new(),
            request_id: request_id.map(RequestId::from),
        })
    }

    fn run(outbox: &MemoryOutbox, django: &Rc<ScriptedDjango>, batch_max: usize) -> Report {
        let api: Rc<dyn DjangoApi> = django.clone();
        block_on(run_cycle(outbox, api, batch_max)).unwrap()
    }

    /// The futures here never wait on I/O: poll them to completion on this thread.
    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(f)
    }

    #[test]
    fn ticket_syncs_go_in_one_batch_and_chat_tickets_one_call_each() {
        let (a, b, c1, c2) = (
            TicketId::new(),
            TicketId::new(),
            TicketId::new(),
            TicketId::new(),
        );
        let outbox = MemoryOutbox::with(vec![
            sync(a, 1),
            chat(c1, None),
            sync(b, 1),
            sync(a, 2),
            chat(c2, None),
        ]);
        let django = Rc::new(ScriptedDjango::default());
        *django.sync_status.borrow_mut() = 200;
        django.chat_status.borrow_mut().push((c2, 200));
        let report = run(&outbox, &django, 10);
        assert_eq!(report.calls, 3);
        assert!(report.failed.is_none());
        let calls = django.calls.borrow().clone();
        assert_eq!(
            calls,
            [
                "sync:2".to_string(),
                format!("chat:{c1}"),
                format!("chat:{c2}")
            ]
        );
        assert!(outbox.seqs().is_empty(), "201 and 200 are both delivered");
    }

    #[test]
    fn refused_chat_tickets_are_dead_lettered_and_the_rest_delivered() {
        let (a, c1, c2, c3) = (
            TicketId::new(),
            TicketId::new(),
            TicketId::new(),
            TicketId::new(),
        );
        let outbox = MemoryOutbox::with(vec![
            chat(c1, None),
            chat(c2, None),
            chat(c3, None),
            sync(a, 1),
        ]);
        let django = Rc::new(ScriptedDjango::default());
        *django.sync_status.borrow_mut() = 200;
        django
            .chat_status
            .borrow_mut()
            .extend([(c1, 400), (c2, 409), (c3, 422)]);
        let report = run(&outbox, &django, 10);
        assert!(report.failed.is_none());
        assert_eq!(
            outbox.dead_seqs(),
            [(1, Some(400)), (2, Some(409)), (3, Some(422))]
        );
        assert!(outbox.seqs().is_empty());
    }

    #[test]
    fn a_failing_chat_endpoint_does_not_hold_ticket_syncs_back() {
        let (a, b, c1, c2) = (
            TicketId::new(),
            TicketId::new(),
            TicketId::new(),
            TicketId::new(),
        );
        let outbox =
            MemoryOutbox::with(vec![chat(c1, None), chat(c2, None), sync(a, 1), sync(b, 1)]);
        let django = Rc::new(ScriptedDjango::default());
        *django.sync_status.borrow_mut() = 200;
        django.chat_status.borrow_mut().push((c1, 503));
        let report = run(&outbox, &django, 10);
        assert!(report.failed.is_some(), "the cycle reports the failure");
        assert_eq!(
            django.calls.borrow().clone(),
            ["sync:2".to_string(), format!("chat:{c1}")],
            "the later chat ticket does not overtake the failed one"
        );
        assert_eq!(outbox.seqs(), [1, 2], "both chat tickets wait, in order");

        // Once the endpoint is back, they go in order.
        django.chat_status.borrow_mut().clear();
        django.calls.borrow_mut().clear();
        run(&outbox, &django, 10);
        assert_eq!(
            django.calls.borrow().clone(),
            [format!("chat:{c1}"), format!("chat:{c2}")]
        );
        assert!(outbox.seqs().is_empty());
    }

    #[test]
    fn a_failing_sync_endpoint_does_not_hold_chat_tickets_back() {
        let (a, c) = (TicketId::new(), TicketId::new());
        let outbox = MemoryOutbox::with(vec![sync(a, 1), chat(c, None), sync(a, 2)]);
        let django = Rc::new(ScriptedDjango::default());
        *django.sync_status.borrow_mut() = 502;
        let report = run(&outbox, &django, 10);
        assert!(report.failed.is_some());
        assert_eq!(outbox.seqs(), [1, 3], "the chat ticket was delivered");
        assert!(outbox.dead_seqs().is_empty());
    }

    #[test]
    fn a_chat_ticket_carries_its_request_id_or_a_fresh_one() {
        let (c1, c2) = (TicketId::new(), TicketId::new());
        let outbox = MemoryOutbox::with(vec![chat(c1, Some("abc")), chat(c2, None)]);
        let django = Rc::new(ScriptedDjango::default());
        run(&outbox, &django, 10);
        let ids = django.chat_request_ids.borrow().clone();
        assert_eq!(ids[0], RequestId::from("abc"));
        assert_eq!(ids[1].as_str().len(), 36, "a fresh UUID");
    }

    #[test]
    fn a_window_holds_at_most_batch_max_entries_of_either_kind() {
        let outbox = MemoryOutbox::with(
            (0..5)
                .map(|i| {
                    if i % 2 == 0 {
                        chat(TicketId::new(), None)
                    } else {
                        sync(TicketId::new(), 1)
                    }
                })
                .collect(),
        );
        let django = Rc::new(ScriptedDjango::default());
        *django.sync_status.borrow_mut() = 200;
        let report = run(&outbox, &django, 3);
        assert_eq!(report.entries, 3);
        assert_eq!(outbox.seqs(), [4, 5]);
        let report = run(&outbox, &django, 3);
        assert_eq!(report.entries, 2);
        assert!(outbox.seqs().is_empty());
    }
}
