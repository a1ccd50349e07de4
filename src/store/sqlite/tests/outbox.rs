//! Outbox records that are no ticket change: enqueued, peeked, acknowledged, dead-lettered, retried,
//! and kept across a crash.

use serde_json::json;

use super::{filter, next, open, open_with, ticket, with_one_ticket, write};
use crate::config::Synchronous;
use crate::domain::chat::{ChatRole, TranscriptLine};
use crate::domain::ids::{SessionId, TicketId};
use crate::domain::ticket::{EventKind, Priority};
use crate::store::{
    now, ChatTicketRecord, Outbox, OutboxEntry, OutboxRecord, StoreError, TicketStore,
};

fn chat_record(ticket_id: TicketId) -> OutboxRecord {
    OutboxRecord::ChatTicket(ChatTicketRecord {
        session_id: SessionId::new(),
        ticket_id,
        subject: "Refund".into(),
        description: "Wants a refund".into(),
        priority: Priority::High,
        requester: "ann@example.com".into(),
        transcript: vec![TranscriptLine {
            role: ChatRole::Customer,
            text: "Refund please".into(),
            at: now(),
        }],
        request_id: None,
    })
}

fn records(entries: &[OutboxEntry]) -> Vec<&OutboxRecord> {
    entries.iter().map(|e| &e.record).collect()
}

#[actix_rt::test]
async fn an_enqueued_record_is_peeked_in_order_acked_and_then_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let (store, v1) = with_one_ticket(dir.path()).await;
    let chat = chat_record(v1.id);
    let seq = store.enqueue(chat.clone()).await.unwrap();
    let v2 = next(&v1, |t| t.subject = "Still on fire".into());
    store
        .update(write(&v2, EventKind::Updated, None))
        .await
        .unwrap();
    let outbox = store.peek(10).await.unwrap();
    assert_eq!(outbox[1].seq, seq);
    let versions: Vec<Option<u64>> = outbox
        .iter()
        .map(|e| e.record.as_sync().map(|r| r.version))
        .collect();
    assert_eq!(versions, vec![Some(1), None, Some(2)]);
    assert_eq!(records(&outbox)[1], &chat, "the typed record comes back");
    // The record folds nothing: lists and history hold the ticket writes only.
    store.fold().await.unwrap();
    assert_eq!(store.list(filter()).await.unwrap(), vec![v2.clone()]);
    assert_eq!(store.events(v1.id, 0, 10).await.unwrap().len(), 2);
    assert_eq!(store.load(v1.id).await.unwrap(), Some(v2));
    store.ack(vec![seq]).await.unwrap();
    let left: Vec<i64> = store
        .peek(10)
        .await
        .unwrap()
        .iter()
        .map(|e| e.seq)
        .collect();
    assert_eq!(left, vec![outbox[0].seq, outbox[2].seq]);
    assert_eq!(store.stats().await.unwrap().depth, 2);
    store.close().await;
    let raw = rusqlite::Connection::open(dir.path().join("switchboard.db")).unwrap();
    let gone: i64 = raw
        .query_row("SELECT COUNT(*) FROM outbox WHERE seq = ?1", [seq], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(gone, 0, "delivered and passed by the fold: the row is gone");
}

#[actix_rt::test]
async fn a_ticket_sync_is_not_enqueued() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let w = write(&ticket(&[]), EventKind::Created, None);
    let sync = OutboxRecord::TicketSync(crate::store::SyncRecord {
        event_id: w.event.event_id,
        ticket_id: w.ticket.id,
        version: 1,
        kind: EventKind::Created,
        occurred_at: w.event.at,
        ticket: w.ticket,
        comment: None,
        request_id: None,
        status_changed: false,
    });
    let refused = store.enqueue(sync).await;
    assert!(
        matches!(refused, Err(StoreError::NotEnqueueable("ticket_sync"))),
        "{refused:?}"
    );
    assert!(store.peek(10).await.unwrap().is_empty());
    store.close().await;
}

#[actix_rt::test]
async fn an_enqueued_record_survives_a_crash_and_the_fold_passes_it() {
    let dir = tempfile::tempdir().unwrap();
    let v1 = ticket(&[]);
    let chat = chat_record(v1.id);
    let seq = {
        let store = open_with(dir.path(), Synchronous::Full);
        store
            .create(write(&v1, EventKind::Created, None))
            .await
            .unwrap();
        let seq = store.enqueue(chat.clone()).await.unwrap();
        // Delivered before any fold: kept until a fold's watermark passes it.
        store.ack(vec![seq - 1]).await.unwrap();
        drop(store);
        seq
    };
    let store = open_with(dir.path(), Synchronous::Full);
    let outbox = store.peek(10).await.unwrap();
    assert_eq!(records(&outbox), vec![&chat]);
    assert_eq!(outbox[0].seq, seq);
    assert_eq!(store.list(filter()).await.unwrap(), vec![v1.clone()]);
    store.ack(vec![seq]).await.unwrap();
    assert_eq!(store.stats().await.unwrap().depth, 0);
    drop(store);
    let raw = rusqlite::Connection::open(dir.path().join("switchboard.db")).unwrap();
    let rows: i64 = raw
        .query_row("SELECT COUNT(*) FROM outbox", [], |r| r.get(0))
        .unwrap();
    assert_eq!(rows, 0, "every row delivered and folded is gone");
    let tables = rusqlite::Connection::open(dir.path().join("tickets.db")).unwrap();
    assert_eq!(crate::store::fold::folded_seq(&tables).unwrap(), seq);
}

#[actix_rt::test]
async fn a_dead_lettered_record_keeps_its_type_and_is_retried_whole() {
    let dir = tempfile::tempdir().unwrap();
    let (store, v1) = with_one_ticket(dir.path()).await;
    let chat = chat_record(v1.id);
    let seq = store.enqueue(chat.clone()).await.unwrap();
    let refuse = |seq| {
        vec![crate::store::Rejection {
            seq,
            status_code: Some(422),
            error: "no".into(),
        }]
    };
    store.dead_letter(refuse(seq)).await.unwrap();
    store.dead_letter(refuse(seq - 1)).await.unwrap();
    let dead = store.dead_letters(10).await.unwrap();
    assert_eq!(dead.len(), 2);
    let (chat_dead, sync_dead) = (&dead[0], &dead[1]);
    assert_eq!(chat_dead.record, chat);
    let shown = serde_json::to_value(chat_dead).unwrap();
    assert_eq!(shown["type"], "chat_ticket");
    assert_eq!(shown["ticket_id"], json!(v1.id));
    assert!(shown.get("event_id").is_none() && shown.get("record").is_none());
    let shown = serde_json::to_value(sync_dead).unwrap();
    assert_eq!(shown["type"], "ticket_sync");
    assert_eq!(shown["version"], 1);
    assert_eq!(shown["kind"], "ticket.created");
    assert!(shown["event_id"].is_string());
    assert!(store.peek(10).await.unwrap().is_empty());
    // Retried once its row has been folded away, then again while it still waits for a fold.
    store.fold().await.unwrap();
    assert!(store.retry_dead_letter(chat_dead.id).await.unwrap());
    assert!(!store.retry_dead_letter(chat_dead.id).await.unwrap());
    let again = store.peek(10).await.unwrap();
    assert_eq!(records(&again), vec![&chat]);
    assert!(again[0].seq > seq, "appended again as a new row");
    store.dead_letter(refuse(again[0].seq)).await.unwrap();
    let dead = store.dead_letters(10).await.unwrap();
    let id = dead.iter().find(|d| d.record == chat).unwrap().id;
    assert!(store.retry_dead_letter(id).await.unwrap());
    let revived = store.peek(10).await.unwrap();
    assert_eq!(revived[0].seq, again[0].seq, "revived in place");
    assert_eq!(records(&revived), vec![&chat]);
    store.close().await;
}

#[actix_rt::test]
async fn a_ticket_and_its_chat_record_are_written_together_or_not_at_all() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let t = ticket(&["chat"]);
    let chat = chat_record(t.id);
    store
        .create_with(write(&t, EventKind::Created, None), chat.clone())
        .await
        .unwrap();
    let outbox = store.peek(10).await.unwrap();
    assert_eq!(outbox.len(), 2, "the ticket's sync and the chat record");
    assert_eq!(outbox[0].record.as_sync().map(|r| r.ticket_id), Some(t.id));
    assert_eq!(records(&outbox)[1], &chat);
    assert_eq!(store.load(t.id).await.unwrap(), Some(t.clone()));

    // The same ticket again is refused, and its record is not written either.
    let again = store
        .create_with(write(&t, EventKind::Created, None), chat_record(t.id))
        .await;
    assert!(
        matches!(again, Err(StoreError::AlreadyExists(_))),
        "{again:?}"
    );
    assert_eq!(
        store.peek(10).await.unwrap().len(),
        2,
        "nothing half-written"
    );
    store.close().await;
}
