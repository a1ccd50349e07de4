//! Micro-benchmarks of pure hot paths, through the public library API:
//!
//! * `apply_patch`: what a ticket actor does for every PATCH before it hands the write to the store.
//! * `coalesce`: what the bridge does with one outbox batch (100 entries over 20 tickets) before
//!   sending it to Django.
//! * `outbox_batch`: the whole assembly of that batch: split by kind (`bridge::dispatch::plan`,
//!   which coalesces) and the `POST /api/tickets/sync/` body written (`bridge::wire::SyncBatch`).
//!
//! Run with `cargo bench --bench pure`; `cargo test --benches` runs each benchmark once as a check.

use std::hint::black_box;
use std::time::Duration;

use chrono::Utc;
use criterion::{criterion_group, criterion_main, Criterion};
use switchboard::bridge::batch::coalesce;
use switchboard::bridge::dispatch::plan;
use switchboard::bridge::wire::SyncBatch;
use switchboard::domain::ids::{EventId, TicketId};
use switchboard::domain::patch::{apply_patch, TicketPatch};
use switchboard::domain::status::Status;
use switchboard::domain::ticket::{Comment, EventKind, Priority, Source, Ticket};
use switchboard::store::{now, OutboxEntry, OutboxRecord, SyncRecord};

/// A ticket as the API stores it: a realistic subject and description, a few tags, an assignee.
fn typical_ticket(id: TicketId, version: u64) -> Ticket {
    let at = now();
    Ticket {
        id,
        subject: "Cannot log in after password reset".into(),
        description: "After resetting my password through the emailed link, the login page \
                      keeps saying the credentials are invalid. Tried two browsers."
            .into(),
        status: Status::Open,
        priority: Priority::Normal,
        requester: "customer@example.com".into(),
        assignee: Some("agent.smith".into()),
        tags: vec!["login".into(), "password".into(), "web".into()],
        source: Source::Api,
        chat_session_id: None,
        created_at: at,
        updated_at: at,
        version,
    }
}

fn bench_apply_patch(c: &mut Criterion) {
    let ticket = typical_ticket(TicketId::new(), 7);
    // A typical agent update: take the ticket, raise the priority, retag it.
    let patch = TicketPatch {
        status: Some(Status::InProgress),
        priority: Some(Priority::High),
        assignee: Some(Some("agent.jones".into())),
        tags: Some(vec!["login".into(), "password".into(), "escalated".into()]),
        ..TicketPatch::default()
    };
    // The load tool's PATCH: one field.
    let subject_only = TicketPatch {
        subject: Some("Cannot log in after password reset (2FA)".into()),
        ..TicketPatch::default()
    };
    let at = Utc::now();
    let mut group = c.benchmark_group("apply_patch");
    group
        .sample_size(30)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    group.bench_function("status_priority_assignee_tags", |b| {
        b.iter(|| apply_patch(black_box(&ticket), black_box(&patch), at))
    });
    group.bench_function("subject_only", |b| {
        b.iter(|| apply_patch(black_box(&ticket), black_box(&subject_only), at))
    });
    group.finish();
}

/// 100 outbox entries over 20 tickets, interleaved as concurrent traffic produces them: each ticket
/// gets a `created`, then updates, with a comment on every fourth entry.
fn outbox(entries: usize, tickets: usize) -> Vec<OutboxEntry> {
    let ids: Vec<TicketId> = (0..tickets).map(|_| TicketId::new()).collect();
    let at = now();
    (0..entries)
        .map(|i| {
            let ticket_id = ids[i % tickets];
            let version = (i / tickets) as u64 + 1;
            let kind = match (version, i % 4) {
                (1, _) => EventKind::Created,
                (_, 3) => EventKind::Commented,
                _ => EventKind::Updated,
            };
            let comment = (kind == EventKind::Commented).then(|| Comment {
                id: uuid::Uuid::now_v7(),
                ticket_id,
                author: "agent.smith".into(),
                body: "We have reset your session; please try again.".into(),
                created_at: at,
            });
            OutboxEntry {
                seq: i as i64 + 1,
                enqueued_at: at,
                attempts: 0,
                isolated_failures: 0,
                record: OutboxRecord::TicketSync(SyncRecord {
                    event_id: EventId::new(),
                    ticket_id,
                    version,
                    kind,
                    occurred_at: at,
                    ticket: typical_ticket(ticket_id, version),
                    comment,
                    request_id: None,
                    status_changed: false,
                }),
            }
        })
        .collect()
}

fn bench_coalesce(c: &mut Criterion) {
    let entries = outbox(100, 20);
    assert_eq!(coalesce(&entries).len(), 20);
    let mut group = c.benchmark_group("coalesce");
    group
        .sample_size(30)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    group.bench_function("100_entries_20_tickets", |b| {
        b.iter(|| coalesce(black_box(&entries)))
    });
    group.finish();
}

fn bench_outbox_batch(c: &mut Criterion) {
    let entries = outbox(100, 20);
    let mut group = c.benchmark_group("outbox_batch");
    group
        .sample_size(30)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    group.bench_function("plan_and_body_100_entries_20_tickets", |b| {
        b.iter(|| {
            let work = plan(black_box(&entries));
            let body = SyncBatch {
                batch_id: uuid::Uuid::now_v7(),
                sent_at: Utc::now(),
                events: &work.syncs,
            };
            serde_json::to_vec(&body).map(|v| v.len())
        })
    });
    group.finish();
}

criterion_group!(
    benches,
    bench_apply_patch,
    bench_coalesce,
    bench_outbox_batch
);
criterion_main!(benches);
