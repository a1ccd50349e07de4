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
//! Until folded, a ticket's latest snapshot is served from memory ([`PendingView`]); queries that read
//! the tables (lists, history) ask for a fold first. After a crash, [`Journal::recover`] rebuilds the
//! same state from the rows above the watermark, and the store folds them before serving.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use rusqlite::Connection;

use super::folder::{self, FoldReport};
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
struct SyncRecordRef<'a> {
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
    pub ticket_id: TicketId,
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
            ticket_id: record.ticket_id(),
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

/// Latest snapshots of journalled, not yet folded tickets, readable from any thread.
#[derive(Debug, Default)]
pub struct PendingView {
    tickets: Mutex<HashMap<TicketId, Arc<Ticket>>>,
    len: AtomicUsize,
}

impl PendingView {
    fn lock(&self) -> MutexGuard<'_, HashMap<TicketId, Arc<Ticket>>> {
        // The map is only ever replaced whole or extended; a panic mid-update leaves it usable.
        self.tickets.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn get(&self, id: TicketId) -> Option<Ticket> {
        if self.is_empty() {
            return None;
        }
        self.lock().get(&id).map(|t| Ticket::clone(t))
    }

    /// No acknowledged write is waiting for a fold: the tables are current.
    pub fn is_empty(&self) -> bool {
        self.len.load(Ordering::Acquire) == 0
    }

    pub(super) fn publish(&self, tickets: impl IntoIterator<Item = Arc<Ticket>>) {
        let mut map = self.lock();
        map.extend(tickets.into_iter().map(|t| (t.id, t)));
        self.len.store(map.len(), Ordering::Release);
    }

    fn remove(&self, ids: &[TicketId]) {
        if ids.is_empty() {
            return;
        }
        let mut map = self.lock();
        for id in ids {
            map.remove(id);
        }
        self.len.store(map.len(), Ordering::Release);
    }

    fn replace(&self, tickets: HashMap<TicketId, Arc<Ticket>>) {
        let mut map = self.lock();
        *map = tickets;
        self.len.store(map.len(), Ordering::Release);
    }
}

struct PendingTicket {
    latest: Arc<Ticket>,
    /// The journal row that wrote `latest`.
    last_seq: i64,
}

/// One journal row, as the fold needs it.
pub(super) struct Entry {
    pub seq: i64,
    pub journalled_at: Instant,
    /// The ticket change to apply; `None` for an outbox row that is no ticket change (a record
    /// enqueued beside the journal, a re-queued dead letter): the fold only moves its watermark past
    /// it, so the row can go once delivered.
    pub change: Option<Change>,
}

/// A journalled ticket write.
pub(super) struct Change {
    pub ticket: Arc<Ticket>,
    pub event: TicketEvent,
    /// `event.changes` as JSON, encoded off the writer thread.
    pub changes: String,
    pub comment: Option<Comment>,
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
    /// Snapshots written in the transaction under way, shown to readers once it commits.
    unpublished: Vec<Arc<Ticket>>,
    view: Arc<PendingView>,
    /// The version the tickets table holds for recently folded tickets, so that a write's version
    /// check need not read the row back.
    folded: HashMap<TicketId, u64>,
    /// At most this many tickets in `folded` (0: none); it is emptied when full.
    folded_cap: usize,
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
            folded: HashMap::new(),
            folded_cap: 0,
            tables,
        };
        journal.reload(conn)?;
        Ok(journal)
    }

    /// Re-reads every row not yet folded from disk, keeping out of `entries` those the folder has.
    fn reload(&mut self, conn: &Connection) -> StoreResult<()> {
        let folded_seq = folder::folded_seq(&self.tables)?;
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
        let snapshots = self
            .tickets
            .iter()
            .map(|(id, p)| (*id, p.latest.clone()))
            .collect();
        self.unpublished.clear();
        self.view.replace(snapshots);
        self.publish_depth();
        Ok(())
    }

    /// Keeps the table's version of up to `cap` recently folded tickets in memory.
    pub fn with_folded_cache(mut self, cap: usize) -> Self {
        self.folded_cap = cap;
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
        match self.folded.get(&id) {
            Some(v) => Ok(Some(*v)),
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
        self.unpublished.push(latest.clone());
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
                event: write.event,
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
    /// snapshots for the syncer to publish once it is.
    pub fn committed_unpublished(&mut self) -> Vec<Arc<Ticket>> {
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
            if self.folded.len() + report.tickets.len() > self.folded_cap {
                self.folded.clear();
            }
            let mut gone = Vec::new();
            for t in &report.tickets {
                if self.folded_cap > 0 {
                    self.folded.insert(t.id, t.version);
                }
                if self
                    .tickets
                    .get(&t.id)
                    .is_some_and(|p| p.last_seq <= report.watermark)
                {
                    self.tickets.remove(&t.id);
                    gone.push(t.id);
                }
            }
            self.view.remove(&gone);
        }
        self.publish_depth();
    }
}

#[cfg(test)]
pub(super) mod tests {
    use std::path::Path;

    use chrono::Duration as ChronoDuration;
    use serde_json::json;

    use super::super::sqlite::SqliteStore;
    use super::super::{
        now, ChatTicketRecord, Outbox, OutboxEntry, OutboxRecord, StoreError, TicketFilter,
        TicketStore, TicketWrite,
    };
    use crate::config::{StorageSettings, Synchronous};
    use crate::domain::chat::{ChatRole, TranscriptLine};
    use crate::domain::ids::SessionId;
    use crate::domain::ids::{EventId, TicketId};
    use crate::domain::status::Status;
    use crate::domain::ticket::{Comment, EventKind, Priority, Source, Ticket, TicketEvent};

    /// A store that never folds on its own: only queries, `close` and a reopen fold.
    fn open(dir: &Path) -> SqliteStore {
        open_with(dir, Synchronous::Normal)
    }

    fn open_with(dir: &Path, synchronous: Synchronous) -> SqliteStore {
        SqliteStore::open(&StorageSettings {
            data_dir: dir.to_path_buf(),
            synchronous,
            commit_batch_max: 64,
            readers: 1,
            fold_max_rows: 1_000_000,
            fold_interval_ms: 3_600_000,
            checkpoint_interval_ms: 50,
            wal_max_mib: 64,
            tables_checkpoint_mib: 64,
        })
        .unwrap()
    }

    fn ticket(tags: &[&str]) -> Ticket {
        let at = now();
        Ticket {
            id: TicketId::new(),
            subject: "Printer on fire — ünïcode".into(),
            description: String::new(),
            status: Status::Open,
            priority: Priority::Normal,
            requester: "ann@example.com".into(),
            assignee: None,
            tags: tags.iter().map(|t| t.to_string()).collect(),
            source: Source::Api,
            chat_session_id: None,
            created_at: at,
            updated_at: at,
            version: 1,
        }
    }

    /// A store opened in `dir` holding one created ticket, and that ticket.
    async fn with_one_ticket(dir: &Path) -> (SqliteStore, Ticket) {
        let store = open(dir);
        let v1 = ticket(&[]);
        store
            .create(write(&v1, EventKind::Created, None))
            .await
            .unwrap();
        (store, v1)
    }

    /// A write of `ticket` as it stands, by actor "test" (the folder's tests use it too).
    pub(in crate::store) fn write(
        ticket: &Ticket,
        kind: EventKind,
        comment: Option<Comment>,
    ) -> TicketWrite {
        TicketWrite {
            ticket: ticket.clone(),
            event: TicketEvent {
                event_id: EventId::new(),
                ticket_id: ticket.id,
                kind,
                actor: "test".into(),
                at: ticket.updated_at,
                version: ticket.version,
                changes: json!({"v": ticket.version}),
            },
            comment,
            request_id: None,
        }
    }

    #[test]
    fn the_bridge_is_offered_only_rows_up_to_the_durable_mark() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = rusqlite::Connection::open(dir.path().join("switchboard.db")).unwrap();
        crate::store::schema::migrate(&mut conn, &dir.path().join("tickets.db")).unwrap();
        let t = ticket(&[]);
        let mut seqs = Vec::new();
        for _ in 0..3 {
            let w = super::EncodedWrite::new(write(&t, EventKind::Updated, None)).unwrap();
            let seq = super::rows::insert_outbox(
                &conn,
                "update",
                &w.write.event,
                &w.record,
                &w.event,
                false,
            )
            .unwrap();
            seqs.push(seq);
        }
        let offered = |durable| -> Vec<i64> {
            let rows = super::rows::outbox_peek(&conn, 10, durable).unwrap();
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
            let owned = super::OutboxRecord::TicketSync(crate::store::SyncRecord {
                event_id: w.event.event_id,
                ticket_id: w.ticket.id,
                version: w.ticket.version,
                kind: w.event.kind,
                occurred_at: w.event.at,
                ticket: w.ticket.clone(),
                comment: w.comment.clone(),
                request_id: w.request_id.clone(),
            });
            assert_eq!(
                serde_json::to_string(&super::SyncRecordRef::from(&w)).unwrap(),
                serde_json::to_string(&owned).unwrap()
            );
        }
    }

    /// The next version of `t` with `change` applied.
    fn next(t: &Ticket, change: impl FnOnce(&mut Ticket)) -> Ticket {
        let mut t = t.clone();
        change(&mut t);
        t.version += 1;
        t.updated_at += ChronoDuration::milliseconds(1);
        t
    }

    fn filter() -> TicketFilter {
        TicketFilter {
            limit: 100,
            ..TicketFilter::default()
        }
    }

    /// Creates a ticket and changes it three times (fields, tags, a comment); returns its states.
    async fn history(store: &SqliteStore) -> Vec<Ticket> {
        let v1 = ticket(&["printer", "fire"]);
        store
            .create(write(&v1, EventKind::Created, None))
            .await
            .unwrap();
        let v2 = next(&v1, |t| {
            t.status = Status::InProgress;
            t.assignee = Some("bob".into());
            t.priority = Priority::Urgent;
        });
        store
            .update(write(&v2, EventKind::StatusChanged, None))
            .await
            .unwrap();
        let v3 = next(&v2, |t| t.tags = vec!["fire".into(), "facilities".into()]);
        store
            .update(write(&v3, EventKind::Updated, None))
            .await
            .unwrap();
        let v4 = next(&v3, |_| {});
        let comment = Comment {
            id: uuid::Uuid::now_v7(),
            ticket_id: v4.id,
            author: "bob".into(),
            body: "Extinguished.".into(),
            created_at: v4.updated_at,
        };
        store
            .update(write(&v4, EventKind::Commented, Some(comment)))
            .await
            .unwrap();
        vec![v1, v2, v3, v4]
    }

    async fn assert_tables_hold(store: &SqliteStore, states: &[Ticket]) {
        let last = states.last().unwrap();
        assert_eq!(store.load(last.id).await.unwrap().as_ref(), Some(last));
        let listed = store.list(filter()).await.unwrap();
        assert_eq!(listed, vec![last.clone()]);
        let by = |f: TicketFilter| async { store.list(f).await.unwrap().len() };
        let tag = |t: &str| TicketFilter {
            tag: Some(t.into()),
            ..filter()
        };
        assert_eq!(
            by(tag("printer")).await,
            0,
            "a removed tag leaves the index"
        );
        assert_eq!(by(tag("facilities")).await, 1);
        assert_eq!(by(tag("fire")).await, 1);
        let status = |s| TicketFilter {
            status: Some(s),
            ..filter()
        };
        assert_eq!(by(status(Status::Open)).await, 0);
        assert_eq!(by(status(Status::InProgress)).await, 1);
        let assignee = TicketFilter {
            assignee: Some("bob".into()),
            ..filter()
        };
        assert_eq!(by(assignee).await, 1);
        let events = store.events(last.id, 0, 100).await.unwrap();
        let versions: Vec<u64> = events.iter().map(|(_, e)| e.version).collect();
        assert_eq!(versions, vec![1, 2, 3, 4]);
        assert!(
            events.windows(2).all(|w| w[0].0 < w[1].0),
            "history in order"
        );
        assert_eq!(events[3].1.kind, EventKind::Commented);
        let outbox = Outbox::peek(store, 100).await.unwrap();
        let synced: Vec<u64> = outbox
            .iter()
            .map(|e| e.record.as_sync().unwrap().version)
            .collect();
        assert_eq!(synced, vec![1, 2, 3, 4], "every write is in the outbox");
        assert_eq!(
            outbox[3]
                .record
                .as_sync()
                .unwrap()
                .comment
                .as_ref()
                .unwrap()
                .body,
            "Extinguished."
        );
    }

    #[actix_rt::test]
    async fn journalled_writes_are_read_back_before_and_after_the_fold() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let states = history(&store).await;
        // Not folded yet: the snapshot comes from memory.
        assert_eq!(
            store.load(states[0].id).await.unwrap().as_ref(),
            states.last()
        );
        // A list folds first, so every query below reads the tables.
        assert_tables_hold(&store, &states).await;
        store.close().await;
    }

    #[actix_rt::test]
    async fn writes_are_acknowledged_while_a_fold_waits_for_the_tables() {
        let dir = tempfile::tempdir().unwrap();
        let (store, v1) = with_one_ticket(dir.path()).await;
        // Another connection holds tickets.db's write lock, so the fold this list asks for waits.
        let blocker = rusqlite::Connection::open(dir.path().join("tickets.db")).unwrap();
        blocker.execute_batch("BEGIN IMMEDIATE").unwrap();
        let listed = store.list(filter());
        let v2 = next(&v1, |t| t.subject = "Still on fire".into());
        // Well inside the folder's 5 s busy timeout: the write does not queue behind the fold.
        tokio::time::timeout(
            std::time::Duration::from_secs(2),
            store.update(write(&v2, EventKind::Updated, None)),
        )
        .await
        .expect("the write is acknowledged while the fold waits")
        .unwrap();
        assert_eq!(store.load(v1.id).await.unwrap().as_ref(), Some(&v2));
        blocker.execute_batch("COMMIT").unwrap();
        // The list sees at least what was acknowledged when it was asked (the update too, when both
        // reached the writer in one batch); the next one sees the update.
        let first = listed.await.unwrap();
        assert!(
            first == vec![v1.clone()] || first == vec![v2.clone()],
            "{first:?}"
        );
        assert_eq!(store.list(filter()).await.unwrap(), vec![v2]);
        store.close().await;
    }

    #[actix_rt::test]
    async fn a_journal_left_by_a_crash_is_folded_on_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let states = {
            let store = open(dir.path());
            let states = history(&store).await;
            // Dropped without `close`: the writer stops without folding, as after kill -9.
            drop(store);
            states
        };
        let raw = rusqlite::Connection::open(dir.path().join("switchboard.db")).unwrap();
        let tables = rusqlite::Connection::open(dir.path().join("tickets.db")).unwrap();
        let folded = super::folder::folded_seq(&tables).unwrap();
        let journalled: i64 = raw
            .query_row(
                "SELECT COUNT(*) FROM outbox WHERE seq > ?1",
                [folded],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(journalled, 4, "the writes were left in the journal");
        drop(raw);
        let store = open(dir.path());
        assert_tables_hold(&store, &states).await;
        store.close().await;
    }

    #[actix_rt::test]
    async fn conflicts_and_duplicates_are_refused_against_journal_and_tables() {
        let dir = tempfile::tempdir().unwrap();
        let (store, v1) = with_one_ticket(dir.path()).await;
        for round in ["journalled", "folded"] {
            let again = store.create(write(&v1, EventKind::Created, None)).await;
            assert!(
                matches!(again, Err(StoreError::AlreadyExists(_))),
                "{round}"
            );
            let stale = next(&next(&v1, |_| {}), |_| {});
            let conflict = store.update(write(&stale, EventKind::Updated, None)).await;
            assert!(
                matches!(
                    conflict,
                    Err(StoreError::VersionConflict { expected: 2, .. })
                ),
                "{round}: {conflict:?}"
            );
            store.list(filter()).await.unwrap();
        }
        let unknown = next(&ticket(&[]), |_| {});
        let missing = store
            .update(write(&unknown, EventKind::Updated, None))
            .await;
        assert!(matches!(missing, Err(StoreError::VersionConflict { .. })));
        // A refused write leaves nothing behind, and its neighbours commit.
        let v2 = next(&v1, |t| t.subject = "Still on fire".into());
        store
            .update(write(&v2, EventKind::Updated, None))
            .await
            .unwrap();
        assert_eq!(store.peek(10).await.unwrap().len(), 2);
        assert_eq!(store.events(v1.id, 0, 10).await.unwrap().len(), 2);
        assert_eq!(store.load(v1.id).await.unwrap(), Some(v2));
        store.close().await;
    }

    #[actix_rt::test]
    async fn rows_delivered_or_dead_lettered_before_their_fold_are_folded_then_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let states = history(&store).await;
        let outbox = store.peek(10).await.unwrap();
        let seqs: Vec<i64> = outbox.iter().map(|e| e.seq).collect();
        // Django takes the first two and refuses the third before any fold.
        store.ack(seqs[..2].to_vec()).await.unwrap();
        store
            .dead_letter(vec![super::super::Rejection {
                seq: seqs[2],
                status_code: Some(422),
                error: "no".into(),
            }])
            .await
            .unwrap();
        let waiting = store.peek(10).await.unwrap();
        assert_eq!(waiting.len(), 1, "only the fourth is still to send");
        assert_eq!(store.stats().await.unwrap().depth, 1);
        // An operator re-queues the dead letter while its row still waits for the fold.
        let dead = store.dead_letters(10).await.unwrap();
        assert!(store.retry_dead_letter(dead[0].id).await.unwrap());
        let again: Vec<i64> = store
            .peek(10)
            .await
            .unwrap()
            .iter()
            .map(|e| e.seq)
            .collect();
        assert_eq!(again, vec![seqs[2], seqs[3]], "re-sent from its own row");
        // The fold applies all four, and drops the delivered ones.
        assert_tables_hold_after_delivery(&store, &states).await;
        let stats = store.stats().await.unwrap();
        assert_eq!((stats.depth, stats.dead_letters), (2, 0));
        store.ack(vec![seqs[2], seqs[3]]).await.unwrap();
        assert_eq!(store.stats().await.unwrap().depth, 0);
        drop(store);
        let raw = rusqlite::Connection::open(dir.path().join("switchboard.db")).unwrap();
        let rows: i64 = raw
            .query_row("SELECT COUNT(*) FROM outbox", [], |r| r.get(0))
            .unwrap();
        assert_eq!(rows, 0, "delivered and folded rows are gone");
    }

    async fn assert_tables_hold_after_delivery(store: &SqliteStore, states: &[Ticket]) {
        let last = states.last().unwrap();
        assert_eq!(store.list(filter()).await.unwrap(), vec![last.clone()]);
        let events = store.events(last.id, 0, 100).await.unwrap();
        assert_eq!(events.len(), 4);
    }

    #[test]
    fn folds_in_parts_keep_later_writes_served_from_memory_until_folded() {
        use super::super::folder::Folder;
        use super::super::sqlite::WalLimits;
        use super::super::{rows, schema};
        use super::{EncodedWrite, Journal, JournalOp, PendingView};

        let dir = tempfile::tempdir().unwrap();
        let tables_path = dir.path().join("tickets.db");
        let mut conn = rusqlite::Connection::open(dir.path().join("switchboard.db")).unwrap();
        schema::migrate(&mut conn, &tables_path).unwrap();
        let tables = rusqlite::Connection::open(&tables_path).unwrap();
        let wal = WalLimits {
            restart_pages: 1000,
        };
        let mut folder = Folder::new(
            rusqlite::Connection::open(&tables_path).unwrap(),
            16,
            std::time::Duration::from_secs(1),
            wal,
            1,
        )
        .unwrap();
        let view = std::sync::Arc::new(PendingView::default());
        let reader = rusqlite::Connection::open(&tables_path).unwrap();
        let mut journal = Journal::recover(&conn, reader, view.clone())
            .unwrap()
            .with_folded_cache(16);
        let v1 = ticket(&["printer"]);
        let other = ticket(&[]);
        let v2 = next(&v1, |t| {
            t.priority = Priority::High;
            t.tags = vec!["fire".into()];
        });
        let v3 = next(&v2, |t| t.subject = "Out".into());
        let writes = [
            (JournalOp::Create, &v1, EventKind::Created),
            (JournalOp::Create, &other, EventKind::Created),
            (JournalOp::Update, &v2, EventKind::Updated),
            (JournalOp::Update, &v3, EventKind::Updated),
        ];
        let mut seqs = Vec::new();
        for (op, t, kind) in writes {
            let tx = conn.transaction().unwrap();
            let encoded = EncodedWrite::new(write(t, kind, None)).unwrap();
            let staged = journal.append(&tx, op, encoded).unwrap().unwrap();
            journal.record(staged);
            tx.commit().unwrap();
            journal.committed();
            seqs.push(journal.last_seq());
        }
        let stored = |id| rows::load(&tables, id).unwrap();
        let count = |sql: &str| -> i64 { tables.query_row(sql, [], |r| r.get(0)).unwrap() };
        let mut fold_up_to = |journal: &mut Journal, seq: i64| {
            folder.take(journal.hand_over(seq));
            let report = folder.fold_pending();
            assert!(report.error.is_none(), "{:?}", report.error);
            journal.folded(&report);
            report.rows
        };

        // The first fold creates both rows; v1's ticket has later writes, still served from memory.
        assert_eq!(fold_up_to(&mut journal, seqs[1]), 2);
        assert_eq!(stored(v1.id).as_ref(), Some(&v1));
        assert_eq!(stored(other.id).as_ref(), Some(&other));
        assert_eq!(view.get(v1.id).as_ref(), Some(&v3));
        assert_eq!(view.get(other.id), None);
        // The next one updates the row the first created.
        assert_eq!(fold_up_to(&mut journal, seqs[2]), 1);
        assert_eq!(stored(v1.id).as_ref(), Some(&v2));
        assert_eq!(view.get(v1.id).as_ref(), Some(&v3));
        // Rows handed over again (the writer re-read its journal after a failed commit) are skipped.
        journal.rolled_back(&conn).unwrap();
        assert_eq!(fold_up_to(&mut journal, i64::MAX), 1);
        assert_eq!(stored(v1.id).as_ref(), Some(&v3));
        assert!(view.is_empty() && journal.len() == 0);
        assert_eq!(fold_up_to(&mut journal, i64::MAX), 0);

        assert_eq!(count("SELECT COUNT(*) FROM ticket_events"), 4);
        assert_eq!(
            count("SELECT COUNT(*) FROM ticket_tags WHERE tag = 'printer'"),
            0
        );
        assert_eq!(
            count("SELECT COUNT(*) FROM ticket_tags WHERE tag = 'fire'"),
            1
        );
        assert_eq!(
            count("SELECT value FROM store_meta WHERE key = 'folded_seq'"),
            seqs[3]
        );
    }

    #[actix_rt::test]
    async fn an_import_is_stored_once_without_an_outbox_entry() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let t = ticket(&["django"]);
        let event = write(&t, EventKind::Imported, None).event;
        store.import(t.clone(), event.clone()).await.unwrap();
        // The second activation's import is a no-op, journalled or folded.
        store.import(t.clone(), event.clone()).await.unwrap();
        assert_eq!(store.load(t.id).await.unwrap().as_ref(), Some(&t));
        assert_eq!(store.list(filter()).await.unwrap(), vec![t.clone()]);
        store.import(t.clone(), event).await.unwrap();
        assert!(store.peek(10).await.unwrap().is_empty());
        assert_eq!(store.events(t.id, 0, 10).await.unwrap().len(), 1);
        store.close().await;
    }

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
        assert_eq!(super::super::folder::folded_seq(&tables).unwrap(), seq);
    }

    #[actix_rt::test]
    async fn a_dead_lettered_record_keeps_its_type_and_is_retried_whole() {
        let dir = tempfile::tempdir().unwrap();
        let (store, v1) = with_one_ticket(dir.path()).await;
        let chat = chat_record(v1.id);
        let seq = store.enqueue(chat.clone()).await.unwrap();
        let refuse = |seq| {
            vec![super::super::Rejection {
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
        store.list(filter()).await.unwrap();
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
}
