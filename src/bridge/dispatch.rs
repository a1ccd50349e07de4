//! One delivery cycle of the sync lane, as plain async logic over the [`Outbox`] and [`DjangoApi`]
//! seams (the [`super::actor::Bridge`] only decides when a cycle runs).
//!
//! A cycle peeks the oldest `batch_max` entries and splits them by kind: ticket syncs are coalesced
//! into one batch for `POST /api/tickets/sync/` (bisected when Django refuses it without naming
//! events), chat tickets become one `POST /api/livechat/tickets/create/` call each, in outbox order.
//! The two kinds are sent side by side, and a failure stops only its own kind: a broken chat endpoint
//! does not hold ticket syncs back, nor the reverse. What Django took is acked and what it refused
//! (400, 409, 422) dead-lettered, in the store, before the cycle ends; the rest stays in the outbox for
//! the next cycle, at its place, with its failed attempt and last error recorded on its row.
//!
//! One event can make Django fail a whole batch with a 5xx (a value its database cannot store), so a
//! 5xx batch is bisected too. Whether an event that fails alone is to blame is for the cycle to say:
//! if Django had already taken (or refused) other events of the cycle when it failed, the failure
//! counts against the event ([`Isolation`], `bridge.poison_max_attempts`, then the dead letters);
//! if not, Django may have been down at that moment (or come back just after), and the breaker,
//! not the event, answers for it. Suspects are sent last, after the rest, so a poisonous event is
//! judged once Django has shown it is up.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::rc::Rc;

use futures_util::future::{FutureExt, LocalBoxFuture};

use super::batch::{coalesce, SyncItem};
use super::client::{Delivery, DjangoApi, SyncOutcome};
use super::wire::ChatTicketRequest;
use crate::bridge::client::{chain, CallError};
use crate::domain::ids::RequestId;
use crate::metrics as m;
use crate::store::{
    ChatTicketRecord, Failure, HandoffRecord, Outbox, OutboxEntry, OutboxRecord, Rejection,
    StoreError,
};

/// What one delivery cycle did.
#[derive(Debug, Default)]
pub struct Report {
    /// Entries peeked.
    pub entries: usize,
    /// Outbox positions Django took (acked).
    pub delivered: Vec<i64>,
    /// Entries Django refused, or failed on too often alone (dead-lettered).
    pub rejected: Vec<Rejection>,
    /// The first failure, if any kind stopped on one or Django answered none of its calls (retry
    /// later; it counts against the breaker).
    pub failed: Option<CallError>,
    /// Calls made.
    pub calls: u32,
    /// Failed deliveries of entries that stay in the outbox, recorded on their rows.
    pub failures: Vec<Failure>,
    /// Ticket syncs that failed sent alone while Django took other events.
    pub isolated: usize,
    /// Of those, the ones dead-lettered for reaching `bridge.poison_max_attempts`.
    pub poisoned: usize,
    /// Positions to send apart next cycle ([`Isolation::suspects`]).
    pub suspects: BTreeSet<i64>,
}

impl Report {
    fn merge(&mut self, other: Report) {
        self.delivered.extend(other.delivered);
        self.rejected.extend(other.rejected);
        self.failures.extend(other.failures);
        self.suspects.extend(other.suspects);
        self.calls += other.calls;
        self.isolated += other.isolated;
        self.poisoned += other.poisoned;
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

/// What the sync lane carries from one cycle to the next to get past events Django fails on.
#[derive(Debug, Clone, Default)]
pub struct Isolation {
    /// `bridge.poison_max_attempts`: isolated failures that dead-letter an event.
    pub max_attempts: u32,
    /// Outbox positions that already failed sent alone. They go in a batch of their own, after the
    /// rest: otherwise a run of bad events at the head of the outbox, bisected first, would use up a
    /// cycle's failure budget before any good event showed that Django is up.
    pub suspects: BTreeSet<i64>,
}

/// Runs one cycle: peek, send, then ack, dead-letter and record failures in the store.
pub async fn run_cycle(
    outbox: &dyn Outbox,
    api: Rc<dyn DjangoApi>,
    batch_max: usize,
    isolation: Isolation,
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
        deliver_syncs(api.clone(), plan.syncs, isolation.suspects.clone()),
        deliver_chats(api.clone(), plan.chats),
        deliver_handoffs(api, plan.handoffs),
    )
    .await;
    let syncs = judge(syncs, &entries, &isolation);
    report.merge(syncs);
    report.merge(chats);
    report.merge(handoffs);
    if report.isolated > 0 {
        metrics::counter!(m::BRIDGE_ISOLATED).increment(report.isolated as u64);
    }
    if report.poisoned > 0 {
        metrics::counter!(m::BRIDGE_POISONED).increment(report.poisoned as u64);
    }
    if !report.delivered.is_empty() {
        outbox.ack(report.delivered.clone()).await?;
    }
    if !report.rejected.is_empty() {
        outbox.dead_letter(report.rejected.clone()).await?;
    }
    if !report.failures.is_empty() {
        outbox.record_failures(report.failures.clone()).await?;
    }
    Ok(report)
}

/// What sending the ticket syncs of one cycle showed, before [`judge`] weighs it.
#[derive(Default)]
struct SyncRun {
    report: Report,
    /// Django took or refused at least one call: it is up, so an event failing alone is the event's
    /// fault rather than Django's.
    answered: bool,
    /// Per outbox position, the last error of a failed call that carried it.
    failed: BTreeMap<i64, String>,
    /// Items that failed sent alone, with the 5xx status of their last failure and whether Django
    /// had already answered a call of this cycle when they failed: only then is the failure the
    /// event's (a Django that comes back mid-cycle must not blame what failed while it was down).
    alone: Vec<(SyncItem, u16, bool)>,
}

/// The failed calls one cycle may make in a row, without an answer in between, for a window of `n`
/// items: enough to bisect down to one item and try its neighbour, few enough that a Django which
/// answers 5xx to everything gets a handful of calls per cycle rather than one per event.
fn failure_budget(n: usize) -> u32 {
    (usize::BITS - n.leading_zeros()) + 2
}

/// Sends `items`, isolating what Django does not take. Refusals (400, 409, 422): events Django
/// names are dead-lettered and the rest resent; a refusal naming none is bisected until single
/// tickets remain. A 5xx is bisected the same way, because one event can make Django fail a whole
/// batch; the cycle gives up after [`failure_budget`] failures in a row. Any other failure (timeout,
/// no connection) stops at once: the answer says nothing about the events. Suspects go last, in a
/// batch of their own. Each batch has its own `X-Request-Id`; its items carry the ids of the
/// requests behind them.
fn deliver_syncs(
    api: Rc<dyn DjangoApi>,
    items: Vec<SyncItem>,
    suspects: BTreeSet<i64>,
) -> LocalBoxFuture<'static, SyncRun> {
    async move {
        let mut run = SyncRun::default();
        if items.is_empty() {
            return run;
        }
        let budget = failure_budget(items.len());
        let (apart, rest): (Vec<_>, Vec<_>) = items
            .into_iter()
            .partition(|i| i.seqs.iter().any(|s| suspects.contains(s)));
        let mut queue: VecDeque<Vec<SyncItem>> = [rest, apart]
            .into_iter()
            .filter(|c| !c.is_empty())
            .collect();
        let mut failures_in_a_row = 0;
        let mut last_failure = None;
        while let Some(chunk) = queue.pop_front() {
            run.report.calls += 1;
            match api.sync_tickets(&chunk, &RequestId::generate()).await {
                SyncOutcome::Delivered => {
                    run.answered = true;
                    failures_in_a_row = 0;
                    run.report
                        .delivered
                        .extend(chunk.iter().flat_map(|i| i.seqs.iter().copied()));
                }
                SyncOutcome::Rejected { status, named } => {
                    run.answered = true;
                    failures_in_a_row = 0;
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
                            reject_item(&mut run.report, item, status, &why);
                        }
                        if !good.is_empty() {
                            queue.push_front(good);
                        }
                    } else if good.len() == 1 {
                        reject_item(&mut run.report, &good[0], status, "refused by Django");
                    } else {
                        let (left, right) = halves(good);
                        queue.push_front(right);
                        queue.push_front(left);
                    }
                }
                SyncOutcome::Failed(e) => {
                    let error = chain(&e);
                    for seq in chunk.iter().flat_map(|i| i.seqs.iter()) {
                        run.failed.insert(*seq, error.clone());
                    }
                    let status = match &e {
                        CallError::Status { status, .. } => *status,
                        _ => 0,
                    };
                    if status < 500 {
                        run.report.failed = Some(e);
                        break;
                    }
                    failures_in_a_row += 1;
                    if failures_in_a_row > budget {
                        run.report.failed = Some(e);
                        break;
                    }
                    last_failure = Some(e);
                    if chunk.len() == 1 {
                        let answered = run.answered;
                        run.alone
                            .extend(chunk.into_iter().map(|i| (i, status, answered)));
                    } else {
                        let (left, right) = halves(chunk);
                        queue.push_front(right);
                        queue.push_front(left);
                    }
                }
            }
        }
        if !run.answered && run.report.failed.is_none() {
            // Every call failed: as far as anyone can tell Django is down, which is the breaker's
            // business, not the events'.
            run.report.failed = last_failure;
        }
        run
    }
    .boxed_local()
}

fn halves(mut chunk: Vec<SyncItem>) -> (Vec<SyncItem>, Vec<SyncItem>) {
    let right = chunk.split_off(chunk.len() / 2);
    (chunk, right)
}

/// Weighs a cycle's sync failures. Each event that failed alone after Django had taken (or refused)
/// others in the cycle counts one isolated failure, and one that reaches `max_attempts` goes to the
/// dead letters with its last error; an event that failed before Django answered anything is not
/// blamed. Every failed delivery is recorded
/// on its rows, and whatever failed alone is sent apart next time.
fn judge(run: SyncRun, entries: &[OutboxEntry], isolation: &Isolation) -> Report {
    let SyncRun {
        mut report,
        answered: _,
        mut failed,
        alone,
    } = run;
    let window: BTreeSet<i64> = entries.iter().map(|e| e.seq).collect();
    let gone: BTreeSet<i64> = (report.delivered.iter().copied())
        .chain(report.rejected.iter().map(|r| r.seq))
        .collect();
    report.suspects = isolation
        .suspects
        .intersection(&window)
        .copied()
        .filter(|s| !gone.contains(s))
        .collect();
    let mut isolated = BTreeSet::new();
    for (item, status, answered_before) in alone {
        report.suspects.extend(item.seqs.iter().copied());
        if !answered_before {
            continue;
        }
        report.isolated += 1;
        let before = entries
            .iter()
            .filter(|e| item.seqs.contains(&e.seq))
            .map(|e| e.isolated_failures)
            .max()
            .unwrap_or(0);
        let strikes = before + 1;
        if strikes < isolation.max_attempts {
            isolated.extend(item.seqs.iter().copied());
            continue;
        }
        report.poisoned += 1;
        for seq in &item.seqs {
            let last = failed.remove(seq).unwrap_or_default();
            report.rejected.push(Rejection {
                seq: *seq,
                status_code: Some(status),
                error: format!(
                    "{last} (failed {strikes} times sent alone while Django took other events)"
                ),
            });
            report.suspects.remove(seq);
        }
    }
    report.failures = failed
        .into_iter()
        .map(|(seq, error)| Failure {
            seq,
            error,
            isolated: isolated.contains(&seq),
        })
        .collect();
    report
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
                    report.failures.push(Failure {
                        seq,
                        error: chain(&e),
                        isolated: false,
                    });
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
    use crate::store::{
        DeadLetter, OutboxSignal, OutboxStats, PendingEntry, StoreResult, SyncRecord,
    };

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
                    attempts: 0,
                    isolated_failures: 0,
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
                attempts: 0,
                isolated_failures: 0,
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

        fn record_failures(&self, failures: Vec<Failure>) -> BoxFuture<'static, StoreResult<()>> {
            let mut entries = self.entries.lock().unwrap();
            for f in failures {
                if let Some(e) = entries.iter_mut().find(|e| e.seq == f.seq) {
                    e.attempts += 1;
                    e.isolated_failures += u32::from(f.isolated);
                }
            }
            ready(Ok(()))
        }

        fn pending(&self, _: u32) -> BoxFuture<'static, StoreResult<Vec<PendingEntry>>> {
            ready(Ok(Vec::new()))
        }

        fn dead_letter_entry(&self, _: i64, _: String) -> BoxFuture<'static, StoreResult<bool>> {
            ready(Ok(false))
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
        /// Statuses for the next sync calls, in order, before `sync_status` applies.
        sync_script: RefCell<VecDeque<u16>>,
        /// Tickets whose presence in a sync batch makes Django answer 500 (a value it cannot store).
        poison: RefCell<Vec<TicketId>>,
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
            let poisoned = items
                .iter()
                .any(|i| self.poison.borrow().contains(&i.ticket_id));
            let scripted = self.sync_script.borrow_mut().pop_front();
            let status = match scripted {
                Some(status) => status,
                None if poisoned => 500,
                None => *self.sync_status.borrow(),
            };
            let outcome = match status {
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
        run_isolating(outbox, django, batch_max, &mut isolation(3))
    }

    fn isolation(max_attempts: u32) -> Isolation {
        Isolation {
            max_attempts,
            suspects: BTreeSet::new(),
        }
    }

    /// One cycle, carrying the suspects over to the next as the actor does.
    fn run_isolating(
        outbox: &MemoryOutbox,
        django: &Rc<ScriptedDjango>,
        batch_max: usize,
        isolation: &mut Isolation,
    ) -> Report {
        let api: Rc<dyn DjangoApi> = django.clone();
        let mut report = block_on(run_cycle(outbox, api, batch_max, isolation.clone())).unwrap();
        isolation.suspects = std::mem::take(&mut report.suspects);
        report
    }

    fn isolated_failures(outbox: &MemoryOutbox, seq: i64) -> u32 {
        let entries = outbox.entries.lock().unwrap();
        entries
            .iter()
            .find(|e| e.seq == seq)
            .map_or(0, |e| e.isolated_failures)
    }

    #[test]
    fn a_5xx_batch_is_bisected_the_rest_delivered_and_the_culprit_counted() {
        let (a, p, b, c) = (
            TicketId::new(),
            TicketId::new(),
            TicketId::new(),
            TicketId::new(),
        );
        let outbox = MemoryOutbox::with(vec![sync(a, 1), sync(p, 1), sync(b, 1), sync(c, 1)]);
        let django = Rc::new(ScriptedDjango::default());
        *django.sync_status.borrow_mut() = 200;
        django.poison.borrow_mut().push(p);
        let report = run(&outbox, &django, 10);
        assert!(report.failed.is_none(), "Django took the others: no outage");
        assert_eq!(
            django.calls.borrow().clone(),
            ["sync:4", "sync:2", "sync:1", "sync:1", "sync:2"]
        );
        assert_eq!(outbox.seqs(), [2], "only the culprit waits");
        assert_eq!(report.isolated, 1);
        assert_eq!(isolated_failures(&outbox, 2), 1);
        assert!(outbox.dead_seqs().is_empty(), "not on the first failure");
    }

    #[test]
    fn an_event_failing_alone_while_others_flow_is_dead_lettered_after_max_attempts() {
        let p = TicketId::new();
        let outbox = MemoryOutbox::with(vec![sync(p, 1)]);
        let django = Rc::new(ScriptedDjango::default());
        *django.sync_status.borrow_mut() = 200;
        django.poison.borrow_mut().push(p);
        let mut iso = isolation(3);
        // The first cycle fails it before Django took anything (it only becomes a suspect); the
        // next three, sent after the rest went through, are its three strikes.
        for cycle in 1..=4 {
            block_on(outbox.enqueue(sync(TicketId::new(), 1))).unwrap();
            django.calls.borrow_mut().clear();
            let report = run_isolating(&outbox, &django, 10, &mut iso);
            assert!(report.failed.is_none());
            if cycle > 1 {
                assert_eq!(
                    django.calls.borrow().clone(),
                    ["sync:1", "sync:1"],
                    "the suspect goes apart, after the rest: no bisecting"
                );
            }
        }
        assert_eq!(outbox.seqs(), Vec::<i64>::new());
        assert_eq!(outbox.dead_seqs(), [(1, Some(500))]);
        let dead = outbox.dead.lock().unwrap();
        assert!(dead[0].error.contains("HTTP 500"), "{}", dead[0].error);
        assert!(iso.suspects.is_empty());
    }

    #[test]
    fn a_django_coming_back_mid_cycle_blames_nothing_that_failed_before_it_answered() {
        let (a, b) = (TicketId::new(), TicketId::new());
        let outbox = MemoryOutbox::with(vec![sync(a, 1), sync(b, 1)]);
        let django = Rc::new(ScriptedDjango::default());
        *django.sync_status.borrow_mut() = 200;
        // The batch fails, `a` alone fails, then Django is back and takes `b`.
        django.sync_script.borrow_mut().extend([500, 500]);
        let mut iso = isolation(1);
        let report = run_isolating(&outbox, &django, 10, &mut iso);
        assert_eq!(
            report.isolated, 0,
            "a failed before Django answered anything"
        );
        assert!(outbox.dead_seqs().is_empty());
        assert_eq!(
            outbox.seqs(),
            [1],
            "a waits for the next cycle, b went through"
        );
        // Next cycle `a` goes on its own, after the rest, and Django takes it.
        run_isolating(&outbox, &django, 10, &mut iso);
        assert!(outbox.seqs().is_empty() && outbox.dead_seqs().is_empty());
    }

    #[test]
    fn a_django_failing_every_call_blames_no_event() {
        let outbox = MemoryOutbox::with((0..100).map(|_| sync(TicketId::new(), 1)).collect());
        let django = Rc::new(ScriptedDjango::default());
        *django.sync_status.borrow_mut() = 500;
        let mut iso = isolation(1);
        for _ in 0..20 {
            django.calls.borrow_mut().clear();
            let report = run_isolating(&outbox, &django, 100, &mut iso);
            assert!(report.failed.is_some(), "an outage, for the breaker");
            assert_eq!(report.isolated, 0);
            assert!(
                django.calls.borrow().len() as u32 <= failure_budget(100) + 1,
                "a few calls a cycle, not one per event: {:?}",
                django.calls.borrow()
            );
        }
        assert_eq!(outbox.seqs().len(), 100);
        assert!(outbox.dead_seqs().is_empty());
        let entries = outbox.entries.lock().unwrap();
        assert!(entries.iter().all(|e| e.isolated_failures == 0));
        assert!(
            entries.iter().all(|e| e.attempts >= 1),
            "failed attempts are recorded"
        );
        assert_eq!(
            entries[99].attempts, 20,
            "one per failed cycle that carried it"
        );
    }

    #[test]
    fn a_run_of_bad_events_at_the_head_does_not_hide_the_good_ones() {
        let bad: Vec<_> = (0..6).map(|_| TicketId::new()).collect();
        let mut records: Vec<_> = bad.iter().map(|t| sync(*t, 1)).collect();
        records.extend((0..10).map(|_| sync(TicketId::new(), 1)));
        let outbox = MemoryOutbox::with(records);
        let django = Rc::new(ScriptedDjango::default());
        *django.sync_status.borrow_mut() = 200;
        django.poison.borrow_mut().extend(bad.iter().copied());
        let mut iso = isolation(5);
        for _ in 0..4 {
            run_isolating(&outbox, &django, 100, &mut iso);
            if outbox.seqs().len() == bad.len() {
                break;
            }
        }
        assert_eq!(outbox.seqs(), [1, 2, 3, 4, 5, 6], "every good event went");
        assert!(outbox.dead_seqs().is_empty());
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
