//! The write journal, and its fold into the ticket tables.
//!
//! A ticket write is acknowledged once its outbox row commits: one append at the end of one table,
//! whichever ticket it touches, so a group commit writes a few pages instead of a ticket row, its
//! indexes and a history index entry per write scattered across the file. The outbox row is the
//! journal entry: beside the snapshot the bridge sends to Django it carries the operation and the
//! history event. The tickets table, the tag index, the history and the comments (in `tickets.db`)
//! catch up in *folds* on their own thread ([`super::folder`]): the writer hands it durable journal
//! rows, and each fold applies them in one transaction that moves `tickets.db`'s `folded_seq` watermark
//! past them. A fold writes each touched page once, however many of its writes landed on it, and
//! several updates of one ticket in it become one row update. An outbox row goes once it is both
//! delivered and folded.
//!
//! Until folded, a ticket's latest snapshot and its history events are served from memory
//! ([`PendingView`]): loads read them alone, lists and history merge them over the tables without
//! waiting for a fold. A folded history row keeps its journal row's `seq`, so a history cursor given
//! out before a fold still points at the same place after it. After a crash, [`Journal::recover`] rebuilds the
//! same state from the rows above the watermark, and the store folds them before serving.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use rusqlite::Connection;

use super::fold::{folded_seq, Change, Entry, FoldReport};
use super::folded::FoldedTickets;
use super::pending::{PendingView, Published};
use super::{rows, OutboxRecord, StoreError, StoreResult, TicketWrite};
use crate::domain::ids::{EventId, RequestId, TicketId};
use crate::domain::ticket::{Comment, EventKind, Ticket, TicketEvent};
use crate::metrics as m;

fn encode<T: serde::Serialize>(value: &T) -> StoreResult<String> {
    serde_json::to_string(value).map_err(|e| StoreError::Corrupt(e.to_string()))
}

/// A ticket write with the JSON of its rows already encoded, so the encoding runs on the caller's
/// thread and not on the single writer thread every write waits for.
pub struct EncodedWrite {
    write: TicketWrite,
    /// The [`OutboxRecord::TicketSync`]: the journal row's and the outbox row's payload.
    record: String,
    /// The [`TicketEvent`], for the history once folded.
    event: String,
    /// The event's `changes`, for its history row.
    changes: String,
}

/// An [`OutboxRecord::TicketSync`] borrowing its parts, so encoding one copies no ticket. It
/// serializes exactly as that record does, type tag included (a unit test holds them together).
#[derive(serde::Serialize)]
#[serde(tag = "type", rename = "ticket_sync")]
pub(super) struct SyncRecordRef<'a> {
    event_id: EventId,
    ticket_id: TicketId,
    version: u64,
    kind: EventKind,
    #[serde(serialize_with = "crate::domain::timestamp::serialize")]
    occurred_at: DateTime<Utc>,
    ticket: &'a Ticket,
    #[serde(skip_serializing_if = "Option::is_none")]
    comment: Option<&'a Comment>,
    #[serde(skip_serializing_if = "Option::is_none")]
    request_id: Option<&'a RequestId>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    status_changed: bool,
}

impl<'a> From<&'a TicketWrite> for SyncRecordRef<'a> {
    fn from(write: &'a TicketWrite) -> Self {
        Self {
            event_id: write.event.event_id,
            ticket_id: write.ticket.id,
            version: write.ticket.version,
            kind: write.event.kind,
            occurred_at: write.event.at,
            ticket: &write.ticket,
            comment: write.comment.as_ref(),
            request_id: write.request_id.as_ref(),
            status_changed: write.event.kind == EventKind::Updated
                && write.event.changes.get("status").is_some(),
        }
    }
}

impl EncodedWrite {
    pub fn new(write: TicketWrite) -> StoreResult<Self> {
        let record = encode(&SyncRecordRef::from(&write))?;
        let event = encode(&write.event)?;
        let changes = encode(&write.event.changes)?;
        Ok(Self {
            write,
            record,
            event,
            changes,
        })
    }

    fn decode(record: &str, event: &str) -> StoreResult<(TicketWrite, String)> {
        let record = match serde_json::from_str(record) {
            Ok(OutboxRecord::TicketSync(r)) => r,
            Ok(other) => {
                return Err(StoreError::Corrupt(format!(
                    "journal row holds a `{}` record",
                    other.kind()
                )))
            }
            Err(e) => return Err(StoreError::Corrupt(format!("journal record: {e}"))),
        };
        let event: TicketEvent = serde_json::from_str(event)
            .map_err(|e| StoreError::Corrupt(format!("journal event: {e}")))?;
        let changes = encode(&event.changes)?;
        let write = TicketWrite {
            ticket: record.ticket,
            event,
            comment: record.comment,
            request_id: record.request_id,
        };
        Ok((write, changes))
    }
}

/// An outbox record that is no ticket change, encoded on the caller's thread.
pub struct EncodedRecord {
    /// The row's unique key, in the column ticket syncs fill with their event id.
    pub key: String,
    /// What the record is about (a ticket id, or a chat session's), in the row's `ticket_id`.
    pub subject: String,
    /// The tagged [`OutboxRecord`].
    pub payload: String,
}

impl EncodedRecord {
    /// Refuses a ticket sync: those are written by the ticket write they describe, in its transaction.
    pub fn new(record: &OutboxRecord) -> StoreResult<Self> {
        if record.as_sync().is_some() {
            return Err(StoreError::NotEnqueueable(record.kind()));
        }
        Ok(Self {
            key: EventId::new().to_string(),
            subject: record.subject(),
            payload: encode(record)?,
        })
    }
}

/// What a journal row does when folded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JournalOp {
    /// A new ticket (its `created` event; an outbox row was written beside it).
    Create,
    /// A change to a ticket already stored or journalled.
    Update,
    /// A ticket fetched from Django (no outbox row: Django has it).
    Import,
}

impl JournalOp {
    fn as_str(self) -> &'static str {
        match self {
            Self::Create => "create",
            Self::Update => "update",
            Self::Import => "import",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        [Self::Create, Self::Update, Self::Import]
            .into_iter()
            .find(|op| op.as_str() == s)
    }
}

struct PendingTicket {
    latest: Arc<Ticket>,
    /// The journal row that wrote `latest`.
    last_seq: i64,
}

/// A write checked against the journal and the tables, ready to be recorded once its rows are in.
pub struct Staged {
    write: TicketWrite,
    changes: String,
    seq: i64,
}

/// The writer thread's account of the journal: every row not yet folded, in order.
pub struct Journal {
    /// Rows not yet handed to the folder, oldest first.
    entries: VecDeque<Entry>,
    /// The newest row handed to the folder.
    handed_seq: i64,
    /// Rows handed to the folder and not yet reported folded.
    in_flight: usize,
    /// Outbox rows up to here are applied to the tables.
    folded_seq: i64,
    /// The newest journalled row.
    last_seq: i64,
    /// Every ticket with a row not yet folded (handed over or not).
    tickets: HashMap<TicketId, PendingTicket>,
    /// Writes in the transaction under way, shown to readers once it commits.
    unpublished: Vec<Published>,
    view: Arc<PendingView>,
    /// What the tickets table holds for recently folded tickets (filled by the folder), so that a
    /// write's version check need not read the row back.
    folded: Arc<FoldedTickets>,
    /// A read-only connection to `tickets.db`, for versions not in `folded`.
    tables: Connection,
}

impl Journal {
    /// Reads the journal (left by a previous run) into memory: the `switchboard.db` outbox rows above
    /// `tickets.db`'s watermark (`tables` is a read connection to it, kept for version checks).
    pub fn recover(
        conn: &Connection,
        tables: Connection,
        view: Arc<PendingView>,
    ) -> StoreResult<Self> {
        let mut journal = Self {
            entries: VecDeque::new(),
            handed_seq: 0,
            in_flight: 0,
            folded_seq: 0,
            last_seq: 0,
            tickets: HashMap::new(),
            unpublished: Vec::new(),
            view,
            folded: FoldedTickets::new(0),
            tables,
        };
        journal.reload(conn)?;
        Ok(journal)
    }

    /// Re-reads every row not yet folded from disk, keeping out of `entries` those the folder has.
    fn reload(&mut self, conn: &Connection) -> StoreResult<()> {
        let folded_seq = folded_seq(&self.tables)?;
        self.folded_seq = self.folded_seq.max(folded_seq);
        self.last_seq = self.folded_seq;
        self.entries.clear();
        self.tickets.clear();
        // Rows without an op (records enqueued beside the journal, dead letters sent again) have
        // nothing to fold, but the watermark must still pass them.
        let mut stmt =
            conn.prepare("SELECT seq, op, payload, event FROM outbox WHERE seq > ?1 ORDER BY seq")?;
        let mut rows = stmt.query([self.folded_seq])?;
        while let Some(row) = rows.next()? {
            let seq: i64 = row.get(0)?;
            let Some(op) = row.get::<_, Option<String>>(1)? else {
                self.record_unfolded(seq);
                continue;
            };
            JournalOp::parse(&op)
                .ok_or_else(|| StoreError::Corrupt(format!("bad journal op `{op}`")))?;
            let (write, changes) =
                EncodedWrite::decode(&row.get::<_, String>(2)?, &row.get::<_, String>(3)?)?;
            self.record(Staged {
                write,
                changes,
                seq,
            });
        }
        // Every row above the watermark was just recorded, in order: exactly what readers may see.
        self.view.replace(self.unpublished.drain(..));
        self.publish_depth();
        Ok(())
    }

    /// Reads table versions from `cache`, the one the folder fills.
    pub fn with_folded_cache(mut self, cache: Arc<FoldedTickets>) -> Self {
        self.folded = cache;
        self
    }

    /// Rows not yet handed to the folder.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    fn publish_depth(&self) {
        metrics::gauge!(m::STORE_JOURNAL_DEPTH).set((self.entries.len() + self.in_flight) as f64);
    }

    /// The version the tickets table holds for `id`, if it has a row.
    fn table_version(&self, id: TicketId) -> StoreResult<Option<u64>> {
        match self.folded.version(id) {
            Some(v) => Ok(Some(v)),
            None => rows::stored_version(&self.tables, id),
        }
    }

    /// Outbox rows up to here are folded; see [`super::rows::outbox_ack`].
    pub fn folded_seq(&self) -> i64 {
        self.folded_seq
    }

    /// Checks `write` against the journal and the tables, then appends its outbox row (already
    /// delivered for an import: Django has it). `Ok(None)`: an import of a ticket already here.
    pub fn append(
        &self,
        conn: &Connection,
        op: JournalOp,
        encoded: EncodedWrite,
    ) -> StoreResult<Option<Staged>> {
        let EncodedWrite {
            write,
            record,
            event,
            changes,
        } = encoded;
        let id = write.ticket.id;
        let pending = self.tickets.get(&id);
        // Every check comes before the first insert, so a refused write leaves nothing behind.
        match op {
            JournalOp::Create | JournalOp::Import => {
                if pending.is_some() || self.table_version(id)?.is_some() {
                    if op == JournalOp::Import {
                        // A concurrent activation imported it first; the first one wins.
                        return Ok(None);
                    }
                    return Err(StoreError::AlreadyExists(id));
                }
            }
            JournalOp::Update => {
                let expected = write.ticket.version.saturating_sub(1);
                let current = match pending {
                    Some(p) => Some(p.latest.version),
                    None => self.table_version(id)?,
                };
                if current != Some(expected) {
                    return Err(StoreError::VersionConflict { id, expected });
                }
            }
        }
        let seq = rows::insert_outbox(
            conn,
            op.as_str(),
            &write.event,
            &record,
            &event,
            op == JournalOp::Import,
        )?;
        Ok(Some(Staged {
            write,
            changes,
            seq,
        }))
    }

    /// Takes in a write whose rows are in the current transaction.
    pub fn record(&mut self, staged: Staged) {
        let Staged {
            write,
            changes,
            seq,
        } = staged;
        self.last_seq = self.last_seq.max(seq);
        let latest = Arc::new(write.ticket);
        let event = Arc::new(write.event);
        self.unpublished.push(Published {
            seq,
            ticket: latest.clone(),
            event: event.clone(),
        });
        self.tickets
            .entry(latest.id)
            .and_modify(|p| {
                p.latest = latest.clone();
                p.last_seq = seq;
            })
            .or_insert(PendingTicket {
                latest: latest.clone(),
                last_seq: seq,
            });
        if seq <= self.handed_seq {
            // Re-read after a failed commit; the folder has it already.
            return;
        }
        self.entries.push_back(Entry {
            seq,
            journalled_at: Instant::now(),
            change: Some(Change {
                ticket: latest,
                event,
                changes,
                comment: write.comment,
            }),
        });
    }

    /// Takes in an outbox row with nothing to fold, written in the current transaction: it waits in
    /// the journal only so that a fold's watermark passes it.
    pub fn record_unfolded(&mut self, seq: i64) {
        self.last_seq = self.last_seq.max(seq);
        if seq <= self.handed_seq {
            return;
        }
        self.entries.push_back(Entry {
            seq,
            journalled_at: Instant::now(),
            change: None,
        });
    }

    /// The transaction holding the recorded writes committed: readers may see them.
    pub fn committed(&mut self) {
        if !self.unpublished.is_empty() {
            self.view.publish(self.unpublished.drain(..));
        }
        self.publish_depth();
    }

    /// The transaction holding the recorded writes committed, but is not durable yet: returns its
    /// writes for the syncer to publish once it is.
    pub fn committed_unpublished(&mut self) -> Vec<Published> {
        self.publish_depth();
        std::mem::take(&mut self.unpublished)
    }

    /// The newest journalled row.
    pub fn last_seq(&self) -> i64 {
        self.last_seq
    }

    /// How many of the oldest journalled rows are at or below `seq` (durable, so foldable).
    pub fn rows_up_to(&self, seq: i64) -> usize {
        self.entries.partition_point(|e| e.seq <= seq)
    }

    /// The transaction did not commit: forget what it recorded by reading back what is durable.
    pub fn rolled_back(&mut self, conn: &Connection) -> StoreResult<()> {
        self.unpublished.clear();
        self.reload(conn)
    }

    /// How long until the rows not yet handed over are due for a fold (zero: now), or `None` when
    /// there are none: when `max_rows` wait, or the oldest has waited `interval`.
    pub fn fold_due_in(&self, max_rows: usize, interval: Duration) -> Option<Duration> {
        let oldest = self.entries.front()?.journalled_at;
        if self.entries.len() >= max_rows {
            return Some(Duration::ZERO);
        }
        Some(interval.saturating_sub(oldest.elapsed()))
    }

    /// Takes the rows up to `durable` (the only ones a fold may show) for the folder.
    pub(super) fn hand_over(&mut self, durable: i64) -> Vec<Entry> {
        let rows = self.rows_up_to(durable);
        let taken: Vec<Entry> = self.entries.drain(..rows).collect();
        if let Some(last) = taken.last() {
            self.handed_seq = last.seq;
        }
        self.in_flight += taken.len();
        taken
    }

    /// The folder reports a fold: its tickets are read from the tables from now on, except those
    /// written again since.
    pub(super) fn folded(&mut self, report: &FoldReport) {
        self.in_flight = self.in_flight.saturating_sub(report.rows);
        if report.error.is_none() {
            self.folded_seq = self.folded_seq.max(report.watermark);
            for t in &report.tickets {
                if self
                    .tickets
                    .get(&t.id)
                    .is_some_and(|p| p.last_seq <= report.watermark)
                {
                    self.tickets.remove(&t.id);
                }
            }
            self.view
                .folded(report.watermark, report.tickets.iter().map(|t| t.id));
        }
        self.publish_depth();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::ticket::EventKind;
    use crate::store::sqlite::tests::{ticket, write};

    #[test]
    fn the_bridge_is_offered_only_rows_up_to_the_durable_mark() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = rusqlite::Connection::open(dir.path().join("switchboard.db")).unwrap();
        crate::store::schema::migrate(&mut conn, &dir.path().join("tickets.db")).unwrap();
        let t = ticket(&[]);
        let mut seqs = Vec::new();
        for _ in 0..3 {
            let w = super::EncodedWrite::new(write(&t, EventKind::Updated, None)).unwrap();
            let seq =
                rows::insert_outbox(&conn, "update", &w.write.event, &w.record, &w.event, false)
                    .unwrap();
            seqs.push(seq);
        }
        let offered = |durable| -> Vec<i64> {
            let rows = rows::outbox_peek(&conn, 10, durable).unwrap();
            rows.iter().map(|e| e.seq).collect()
        };
        assert_eq!(offered(0), Vec::<i64>::new());
        assert_eq!(offered(seqs[1]), seqs[..2].to_vec());
        assert_eq!(offered(seqs[2]), seqs);
    }

    #[test]
    fn a_borrowed_record_encodes_exactly_as_the_record() {
        let t = ticket(&["a", "b"]);
        let comment = Comment {
            id: uuid::Uuid::now_v7(),
            ticket_id: t.id,
            author: "bob".into(),
            body: "Extinguished.".into(),
            created_at: t.updated_at,
        };
        for (kind, comment) in [
            (EventKind::Updated, None),
            (EventKind::Commented, Some(comment)),
        ] {
            let w = write(&t, kind, comment);
            let owned = OutboxRecord::TicketSync(crate::store::SyncRecord {
                event_id: w.event.event_id,
                ticket_id: w.ticket.id,
                version: w.ticket.version,
                kind: w.event.kind,
                occurred_at: w.event.at,
                ticket: w.ticket.clone(),
                comment: w.comment.clone(),
                request_id: w.request_id.clone(),
                status_changed: false,
            });
            assert_eq!(
                serde_json::to_string(&super::SyncRecordRef::from(&w)).unwrap(),
                serde_json::to_string(&owned).unwrap()
            );
        }
    }
}
