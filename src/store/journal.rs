//! The write journal, and its fold into the ticket tables.
//!
//! A ticket write is acknowledged once its outbox row commits: one append at the end of one table,
//! whichever ticket it touches, so a group commit writes a few pages instead of a ticket row, its
//! indexes and a history index entry per write scattered across the file. The outbox row is the
//! journal entry: beside the snapshot the bridge sends to Django it carries the operation and the
//! history event. The tickets table, the tag index, the history and the comments catch up in *folds*:
//! each applies the oldest journalled writes (a chunk, or the whole backlog) in one transaction and
//! moves the `folded_seq` watermark past them in that same transaction. A fold writes each touched page
//! once, however many of its writes landed on it, and several updates of one ticket in it become one
//! row update. An outbox row goes once it is both delivered and folded.
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

use super::{rows, StoreError, StoreResult, SyncRecord, TicketWrite};
use crate::metrics as m;
use crate::ticket::model::{Comment, EventId, EventKind, Ticket, TicketEvent, TicketId};

fn encode<T: serde::Serialize>(value: &T) -> StoreResult<String> {
    serde_json::to_string(value).map_err(|e| StoreError::Corrupt(e.to_string()))
}

/// A ticket write with the JSON of its rows already encoded, so the encoding runs on the caller's
/// thread and not on the single writer thread every write waits for.
pub struct EncodedWrite {
    write: TicketWrite,
    /// The [`SyncRecord`]: the journal row's and the outbox row's payload.
    record: String,
    /// The [`TicketEvent`], for the history once folded.
    event: String,
    /// The event's `changes`, for its history row.
    changes: String,
}

/// A [`SyncRecord`] borrowing its parts, so encoding one copies no ticket. It serializes exactly as
/// `SyncRecord` does (a unit test holds them together).
#[derive(serde::Serialize)]
struct SyncRecordRef<'a> {
    event_id: EventId,
    ticket_id: TicketId,
    version: u64,
    kind: EventKind,
    #[serde(serialize_with = "crate::ticket::timestamp::serialize")]
    occurred_at: DateTime<Utc>,
    ticket: &'a Ticket,
    #[serde(skip_serializing_if = "Option::is_none")]
    comment: Option<&'a Comment>,
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
        let record: SyncRecord = serde_json::from_str(record)
            .map_err(|e| StoreError::Corrupt(format!("journal record: {e}")))?;
        let event: TicketEvent = serde_json::from_str(event)
            .map_err(|e| StoreError::Corrupt(format!("journal event: {e}")))?;
        let changes = encode(&event.changes)?;
        let write = TicketWrite {
            ticket: record.ticket,
            event,
            comment: record.comment,
        };
        Ok((write, changes))
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
    /// Whether the tickets table has a row for it (then the fold updates that row, else inserts).
    stored: bool,
    latest: Arc<Ticket>,
    /// The journal row that wrote `latest`.
    last_seq: i64,
}

/// One journalled write, as the fold needs it.
struct Entry {
    seq: i64,
    journalled_at: Instant,
    ticket: Arc<Ticket>,
    event: TicketEvent,
    /// `event.changes` as JSON, encoded off the writer thread.
    changes: String,
    comment: Option<Comment>,
}

/// A write checked against the journal and the tables, ready to be recorded once its rows are in.
pub struct Staged {
    write: TicketWrite,
    changes: String,
    stored: bool,
    seq: i64,
}

/// The writer thread's account of the journal: every row not yet folded, in order.
pub struct Journal {
    entries: VecDeque<Entry>,
    /// Outbox rows up to here are applied to the tables.
    folded_seq: i64,
    /// The newest journalled row.
    last_seq: i64,
    tickets: HashMap<TicketId, PendingTicket>,
    /// Snapshots written in the transaction under way, shown to readers once it commits.
    unpublished: Vec<Arc<Ticket>>,
    view: Arc<PendingView>,
    last_failed_fold: Option<Instant>,
    /// What the tickets table holds for recently folded tickets (the writer is its only writer), so
    /// that a write's version check and the fold's diff need not read the row back.
    folded: HashMap<TicketId, Arc<Ticket>>,
    /// At most this many tickets in `folded` (0: none); it is emptied when full.
    folded_cap: usize,
}

impl Journal {
    /// Reads the journal (left by a previous run, or after a failed commit) into memory.
    pub fn recover(conn: &Connection, view: Arc<PendingView>) -> StoreResult<Self> {
        let folded_seq: i64 = conn.query_row(
            "SELECT value FROM store_meta WHERE key = 'folded_seq'",
            [],
            |r| r.get(0),
        )?;
        let mut journal = Self {
            entries: VecDeque::new(),
            folded_seq,
            last_seq: folded_seq,
            tickets: HashMap::new(),
            unpublished: Vec::new(),
            view,
            last_failed_fold: None,
            folded: HashMap::new(),
            folded_cap: 0,
        };
        // Rows without an op are dead letters sent again: their change was journalled already.
        let mut stmt = conn.prepare(
            "SELECT seq, op, payload, event FROM outbox WHERE seq > ?1 AND op IS NOT NULL \
             ORDER BY seq",
        )?;
        let mut rows = stmt.query([folded_seq])?;
        while let Some(row) = rows.next()? {
            let seq: i64 = row.get(0)?;
            let op: String = row.get(1)?;
            let op = JournalOp::parse(&op)
                .ok_or_else(|| StoreError::Corrupt(format!("bad journal op `{op}`")))?;
            let (write, changes) =
                EncodedWrite::decode(&row.get::<_, String>(2)?, &row.get::<_, String>(3)?)?;
            // Rows below the watermark are folded, so an update's ticket has its row; a create's or
            // import's does not. A ticket seen earlier in the journal keeps what its first row said.
            let stored = op == JournalOp::Update;
            journal.record(Staged {
                write,
                changes,
                stored,
                seq,
            });
        }
        let snapshots = journal
            .tickets
            .iter()
            .map(|(id, p)| (*id, p.latest.clone()))
            .collect();
        journal.unpublished.clear();
        journal.view.replace(snapshots);
        metrics::gauge!(m::STORE_JOURNAL_DEPTH).set(journal.entries.len() as f64);
        Ok(journal)
    }

    /// Keeps the table's state of up to `cap` recently folded tickets in memory.
    pub fn with_folded_cache(mut self, cap: usize) -> Self {
        self.folded_cap = cap;
        self
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// The version the tickets table holds for `id`, if it has a row.
    fn table_version(&self, conn: &Connection, id: TicketId) -> StoreResult<Option<u64>> {
        match self.folded.get(&id) {
            Some(t) => Ok(Some(t.version)),
            None => rows::stored_version(conn, id),
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
        let stored = match op {
            JournalOp::Create | JournalOp::Import => {
                if pending.is_some() || self.table_version(conn, id)?.is_some() {
                    if op == JournalOp::Import {
                        // A concurrent activation imported it first; the first one wins.
                        return Ok(None);
                    }
                    return Err(StoreError::AlreadyExists(id));
                }
                false
            }
            JournalOp::Update => {
                let expected = write.ticket.version.saturating_sub(1);
                let current = match pending {
                    Some(p) => Some(p.latest.version),
                    None => self.table_version(conn, id)?,
                };
                if current != Some(expected) {
                    return Err(StoreError::VersionConflict { id, expected });
                }
                true
            }
        };
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
            stored,
            seq,
        }))
    }

    /// Takes in a write whose rows are in the current transaction.
    pub fn record(&mut self, staged: Staged) {
        let Staged {
            write,
            changes,
            stored,
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
                stored,
                latest: latest.clone(),
                last_seq: seq,
            });
        self.entries.push_back(Entry {
            seq,
            journalled_at: Instant::now(),
            ticket: latest,
            event: write.event,
            changes,
            comment: write.comment,
        });
    }

    /// The transaction holding the recorded writes committed: readers may see them.
    pub fn committed(&mut self) {
        if !self.unpublished.is_empty() {
            self.view.publish(self.unpublished.drain(..));
        }
        metrics::gauge!(m::STORE_JOURNAL_DEPTH).set(self.entries.len() as f64);
    }

    /// The transaction holding the recorded writes committed, but is not durable yet: returns its
    /// snapshots for the syncer to publish once it is.
    pub fn committed_unpublished(&mut self) -> Vec<Arc<Ticket>> {
        metrics::gauge!(m::STORE_JOURNAL_DEPTH).set(self.entries.len() as f64);
        std::mem::take(&mut self.unpublished)
    }

    /// The newest journalled row (or outbox row written beside the journal, such as a re-queued dead
    /// letter's).
    pub fn last_seq(&self) -> i64 {
        self.last_seq
    }

    /// An outbox row outside the journal was written in the current transaction.
    pub fn note_outbox_seq(&mut self, seq: i64) {
        self.last_seq = self.last_seq.max(seq);
    }

    /// How many of the oldest journalled rows are at or below `seq` (durable, so foldable).
    pub fn rows_up_to(&self, seq: i64) -> usize {
        self.entries.partition_point(|e| e.seq <= seq)
    }

    /// The transaction did not commit: forget what it recorded by reading back what is durable.
    pub fn rolled_back(&mut self, conn: &Connection) -> StoreResult<()> {
        let view = self.view.clone();
        *self = Self::recover(conn, view)?.with_folded_cache(self.folded_cap);
        Ok(())
    }

    /// How long until a fold is due (zero: now), or `None` when the journal is empty: when
    /// `max_rows` wait, or the oldest has waited `interval`.
    pub fn fold_due_in(&self, max_rows: usize, interval: Duration) -> Option<Duration> {
        let oldest = self.entries.front()?.journalled_at;
        if let Some(failed) = self.last_failed_fold {
            // After a failed fold wait a whole interval, not a commit, before trying again.
            return Some(interval.saturating_sub(failed.elapsed()));
        }
        if self.entries.len() >= max_rows {
            return Some(Duration::ZERO);
        }
        Some(interval.saturating_sub(oldest.elapsed()))
    }

    /// Applies the oldest `max_rows` journalled writes to the tables and moves the watermark past
    /// them, in one transaction. The writer folds in chunks so that no commit waits long behind a
    /// fold; queries that need every write folded pass `usize::MAX`. Returns the rows folded.
    pub fn fold(&mut self, conn: &mut Connection, max_rows: usize) -> StoreResult<usize> {
        let rows = max_rows.min(self.entries.len());
        if rows == 0 {
            return Ok(0);
        }
        let started = Instant::now();
        let chunk = self.entries.range(..rows);
        // Each ticket's newest snapshot within the chunk: several updates become one row write.
        let mut snapshots: HashMap<TicketId, &Arc<Ticket>> = HashMap::new();
        for e in chunk.clone() {
            snapshots.insert(e.ticket.id, &e.ticket);
        }
        let watermark = self.entries[rows - 1].seq;
        let _span = tracing::debug_span!("store_fold", rows, tickets = snapshots.len()).entered();
        // The writer's connection commits without waiting for the disk (`synchronous = NORMAL`), and a
        // fold need not: the rows it applies are durable already, so a fold lost to a power cut is
        // folded again at start, and the next flush of the WAL covers its frames anyway.
        let applied = self.apply(conn, chunk, &snapshots, watermark);
        let folded_now: Vec<Arc<Ticket>> = snapshots.into_values().cloned().collect();
        match applied {
            Ok(()) => {
                if self.folded.len() + folded_now.len() > self.folded_cap {
                    self.folded.clear();
                }
                if self.folded_cap > 0 {
                    self.folded
                        .extend(folded_now.iter().map(|t| (t.id, Arc::clone(t))));
                }
                self.entries.drain(..rows);
                self.folded_seq = watermark;
                self.last_failed_fold = None;
                let mut folded = Vec::new();
                for id in folded_now.iter().map(|t| t.id) {
                    if let Some(p) = self.tickets.get_mut(&id) {
                        p.stored = true;
                        if p.last_seq <= watermark {
                            self.tickets.remove(&id);
                            folded.push(id);
                        }
                    }
                }
                // Tickets written again after the chunk stay served from memory.
                self.view.remove(&folded);
                metrics::histogram!(m::STORE_FOLD_ROWS).record(rows as f64);
                metrics::histogram!(m::STORE_FOLD_DURATION).record(started.elapsed().as_secs_f64());
                metrics::gauge!(m::STORE_JOURNAL_DEPTH).set(self.entries.len() as f64);
                tracing::debug!(
                    rows,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "folded journal"
                );
                Ok(rows)
            }
            Err(e) => {
                self.last_failed_fold = Some(Instant::now());
                metrics::counter!(m::STORE_FOLD_ERRORS).increment(1);
                tracing::error!(error = %e, rows, "journal fold failed; writes stay journalled and are retried");
                Err(e)
            }
        }
    }

    fn apply<'a>(
        &self,
        conn: &mut Connection,
        chunk: impl Iterator<Item = &'a Entry>,
        snapshots: &HashMap<TicketId, &Arc<Ticket>>,
        watermark: i64,
    ) -> StoreResult<()> {
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        for e in chunk {
            rows::insert_event(&tx, &e.event, &e.changes)?;
            if let Some(comment) = &e.comment {
                rows::insert_comment(&tx, comment)?;
            }
        }
        // In key order, so neighbouring rows and index entries are written while their pages are hot.
        let mut tickets: Vec<&Arc<Ticket>> = snapshots.values().copied().collect();
        tickets.sort_unstable_by_key(|t| t.id);
        for t in tickets {
            let stored = self.tickets.get(&t.id).is_some_and(|p| p.stored);
            if !stored {
                rows::insert_ticket(&tx, t)?;
                continue;
            }
            match self.folded.get(&t.id) {
                Some(base) => rows::update_ticket(&tx, base, t)?,
                None => {
                    let base = rows::load(&tx, t.id)?.ok_or_else(|| {
                        StoreError::Corrupt(format!("journalled ticket {} has no row", t.id))
                    })?;
                    rows::update_ticket(&tx, &base, t)?;
                }
            }
        }
        tx.execute(
            "UPDATE store_meta SET value = ?1 WHERE key = 'folded_seq'",
            [watermark],
        )?;
        // Rows delivered before their fold were kept for it; delivered rows exist only in this range.
        tx.execute(
            "DELETE FROM outbox WHERE seq > ?1 AND seq <= ?2 AND delivered = 1",
            [self.folded_seq, watermark],
        )?;
        tx.commit()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use chrono::Duration as ChronoDuration;
    use serde_json::json;

    use super::super::sqlite::SqliteStore;
    use super::super::{now, StoreError, TicketFilter, TicketStore, TicketWrite};
    use crate::config::{StorageSettings, Synchronous};
    use crate::ticket::model::{
        Comment, EventId, EventKind, Priority, Source, Ticket, TicketEvent, TicketId,
    };
    use crate::ticket::state::Status;

    /// A store that never folds on its own: only queries, `close` and a reopen fold.
    fn open(dir: &Path) -> SqliteStore {
        SqliteStore::open(&StorageSettings {
            data_dir: dir.to_path_buf(),
            synchronous: Synchronous::Normal,
            commit_batch_max: 64,
            readers: 1,
            fold_max_rows: 1_000_000,
            fold_chunk_rows: 2,
            fold_interval_ms: 3_600_000,
            checkpoint_interval_ms: 50,
            wal_max_mib: 64,
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

    fn write(ticket: &Ticket, kind: EventKind, comment: Option<Comment>) -> TicketWrite {
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
        }
    }

    #[test]
    fn the_bridge_is_offered_only_rows_up_to_the_durable_mark() {
        let mut conn = rusqlite::Connection::open_in_memory().unwrap();
        crate::store::schema::migrate(&mut conn).unwrap();
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
            let owned = super::SyncRecord {
                event_id: w.event.event_id,
                ticket_id: w.ticket.id,
                version: w.ticket.version,
                kind: w.event.kind,
                occurred_at: w.event.at,
                ticket: w.ticket.clone(),
                comment: w.comment.clone(),
            };
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
        let outbox = store.outbox_peek(100).await.unwrap();
        let synced: Vec<u64> = outbox.iter().map(|e| e.record.version).collect();
        assert_eq!(synced, vec![1, 2, 3, 4], "every write is in the outbox");
        assert_eq!(
            outbox[3].record.comment.as_ref().unwrap().body,
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
        let journalled: i64 = raw
            .query_row(
                "SELECT COUNT(*) FROM outbox WHERE seq > \
                 (SELECT value FROM store_meta WHERE key = 'folded_seq')",
                [],
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
        let store = open(dir.path());
        let v1 = ticket(&[]);
        store
            .create(write(&v1, EventKind::Created, None))
            .await
            .unwrap();
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
        assert_eq!(store.outbox_peek(10).await.unwrap().len(), 2);
        assert_eq!(store.events(v1.id, 0, 10).await.unwrap().len(), 2);
        assert_eq!(store.load(v1.id).await.unwrap(), Some(v2));
        store.close().await;
    }

    #[actix_rt::test]
    async fn rows_delivered_or_dead_lettered_before_their_fold_are_folded_then_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let states = history(&store).await;
        let outbox = store.outbox_peek(10).await.unwrap();
        let seqs: Vec<i64> = outbox.iter().map(|e| e.seq).collect();
        // Django takes the first two and refuses the third before any fold.
        store.outbox_ack(seqs[..2].to_vec()).await.unwrap();
        store
            .outbox_dead_letter(vec![super::super::Rejection {
                seq: seqs[2],
                status_code: Some(422),
                error: "no".into(),
            }])
            .await
            .unwrap();
        let waiting = store.outbox_peek(10).await.unwrap();
        assert_eq!(waiting.len(), 1, "only the fourth is still to send");
        assert_eq!(store.outbox_stats().await.unwrap().depth, 1);
        // An operator re-queues the dead letter while its row still waits for the fold.
        let dead = store.dead_letters(10).await.unwrap();
        assert!(store.retry_dead_letter(dead[0].id).await.unwrap());
        let again: Vec<i64> = store
            .outbox_peek(10)
            .await
            .unwrap()
            .iter()
            .map(|e| e.seq)
            .collect();
        assert_eq!(again, vec![seqs[2], seqs[3]], "re-sent from its own row");
        // The fold applies all four, and drops the delivered ones.
        assert_tables_hold_after_delivery(&store, &states).await;
        let stats = store.outbox_stats().await.unwrap();
        assert_eq!((stats.depth, stats.dead_letters), (2, 0));
        store.outbox_ack(vec![seqs[2], seqs[3]]).await.unwrap();
        assert_eq!(store.outbox_stats().await.unwrap().depth, 0);
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
    fn chunked_folds_keep_later_writes_served_from_memory_until_folded() {
        use super::super::{rows, schema};
        use super::{EncodedWrite, Journal, JournalOp, PendingView};

        let mut conn = rusqlite::Connection::open_in_memory().unwrap();
        schema::migrate(&mut conn).unwrap();
        let view = std::sync::Arc::new(PendingView::default());
        let mut journal = Journal::recover(&conn, view.clone()).unwrap();
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
        for (op, t, kind) in writes {
            let tx = conn.transaction().unwrap();
            let encoded = EncodedWrite::new(write(t, kind, None)).unwrap();
            let staged = journal.append(&tx, op, encoded).unwrap().unwrap();
            journal.record(staged);
            tx.commit().unwrap();
            journal.committed();
        }
        let stored = |conn: &rusqlite::Connection, id| rows::load(conn, id).unwrap();
        let count = |conn: &rusqlite::Connection, sql: &str| -> i64 {
            conn.query_row(sql, [], |r| r.get(0)).unwrap()
        };

        // The first chunk creates both rows; v1's ticket has later writes, still served from memory.
        assert_eq!(journal.fold(&mut conn, 2).unwrap(), 2);
        assert_eq!(stored(&conn, v1.id).as_ref(), Some(&v1));
        assert_eq!(stored(&conn, other.id).as_ref(), Some(&other));
        assert_eq!(view.get(v1.id).as_ref(), Some(&v3));
        assert_eq!(view.get(other.id), None);
        // The next chunk updates the row it created.
        assert_eq!(journal.fold(&mut conn, 1).unwrap(), 1);
        assert_eq!(stored(&conn, v1.id).as_ref(), Some(&v2));
        assert_eq!(view.get(v1.id).as_ref(), Some(&v3));
        assert_eq!(journal.fold(&mut conn, 100).unwrap(), 1);
        assert_eq!(stored(&conn, v1.id).as_ref(), Some(&v3));
        assert!(view.is_empty() && journal.len() == 0);
        assert_eq!(journal.fold(&mut conn, 100).unwrap(), 0);

        assert_eq!(count(&conn, "SELECT COUNT(*) FROM ticket_events"), 4);
        assert_eq!(
            count(
                &conn,
                "SELECT COUNT(*) FROM ticket_tags WHERE tag = 'printer'"
            ),
            0
        );
        assert_eq!(
            count(&conn, "SELECT COUNT(*) FROM ticket_tags WHERE tag = 'fire'"),
            1
        );
        assert_eq!(
            count(
                &conn,
                "SELECT value FROM store_meta WHERE key = 'folded_seq'"
            ),
            count(&conn, "SELECT MAX(seq) FROM outbox")
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
        assert!(store.outbox_peek(10).await.unwrap().is_empty());
        assert_eq!(store.events(t.id, 0, 10).await.unwrap().len(), 1);
        store.close().await;
    }
}
