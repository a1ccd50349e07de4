//! SQL for each operation and the mapping between rows and model types. Runs on the store's threads.

use chrono::{DateTime, Utc};
use rusqlite::{params, Connection, OptionalExtension, Row};

use super::{
    DeadLetter, Failure, OutboxEntry, OutboxRecord, OutboxStats, PendingEntry, RecordSummary,
    Rejection, StoreError, TicketFilter,
};
use crate::domain::ids::TicketId;
use crate::domain::principal::Principal;
use crate::domain::status::Status;
use crate::domain::ticket::{Comment, EventKind, Priority, Source, Ticket, TicketEvent};

pub fn ts(at: &DateTime<Utc>) -> String {
    crate::domain::timestamp::millis(at)
}

fn parse_ts(s: &str) -> Result<DateTime<Utc>, StoreError> {
    DateTime::parse_from_rfc3339(s)
        .map(|d| d.with_timezone(&Utc))
        .map_err(|e| StoreError::Corrupt(format!("bad timestamp `{s}`: {e}")))
}

fn corrupt(what: &str, value: &str) -> StoreError {
    StoreError::Corrupt(format!("bad {what} `{value}`"))
}

const TICKET_COLUMNS: &str = "id, subject, description, status, priority, requester, assignee, \
     tags, source, chat_session_id, created_at, updated_at, version";

fn ticket_from_row(row: &Row<'_>) -> Result<Ticket, StoreError> {
    let id: String = row.get(0)?;
    let status: String = row.get(3)?;
    let priority: String = row.get(4)?;
    let tags: String = row.get(7)?;
    let source: String = row.get(8)?;
    let created: String = row.get(10)?;
    let updated: String = row.get(11)?;
    Ok(Ticket {
        id: id.parse().map_err(|_| corrupt("ticket id", &id))?,
        subject: row.get(1)?,
        description: row.get(2)?,
        status: Status::parse(&status).ok_or_else(|| corrupt("status", &status))?,
        priority: Priority::parse(&priority).ok_or_else(|| corrupt("priority", &priority))?,
        requester: row.get(5)?,
        assignee: row.get(6)?,
        tags: serde_json::from_str(&tags).map_err(|_| corrupt("tags", &tags))?,
        source: Source::parse(&source).ok_or_else(|| corrupt("source", &source))?,
        chat_session_id: row.get(9)?,
        created_at: parse_ts(&created)?,
        updated_at: parse_ts(&updated)?,
        version: row.get::<_, i64>(12)? as u64,
    })
}

pub fn insert_ticket(conn: &Connection, t: &Ticket) -> Result<(), StoreError> {
    let tags = serde_json::to_string(&t.tags).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    conn.prepare_cached(
        "INSERT INTO tickets (id, subject, description, status, priority, requester, assignee, tags, \
         source, chat_session_id, created_at, updated_at, version) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
    )?
    .execute(params![
        t.id.to_string(),
        t.subject,
        t.description,
        t.status.as_str(),
        t.priority.as_str(),
        t.requester,
        t.assignee,
        tags,
        t.source.as_str(),
        t.chat_session_id,
        ts(&t.created_at),
        ts(&t.updated_at),
        t.version as i64,
    ])?;
    let mut ins =
        conn.prepare_cached("INSERT OR IGNORE INTO ticket_tags (tag, ticket_id) VALUES (?1, ?2)")?;
    let id = t.id.to_string();
    for tag in &t.tags {
        ins.execute(params![tag, id])?;
    }
    Ok(())
}

/// Brings the stored row from `base` to `latest`, writing only the columns that differ: SQLite rewrites
/// an index entry for every indexed column named in SET, so naming unchanged ones costs index pages.
pub fn update_ticket(conn: &Connection, base: &Ticket, latest: &Ticket) -> Result<(), StoreError> {
    let mut sets: Vec<&str> = Vec::new();
    let mut args: Vec<Box<dyn rusqlite::ToSql>> = vec![
        Box::new(latest.id.to_string()),
        Box::new(base.version as i64),
    ];
    let mut set = |column: &'static str, value: Box<dyn rusqlite::ToSql>| {
        sets.push(column);
        args.push(value);
    };
    if base.subject != latest.subject {
        set("subject", Box::new(latest.subject.clone()));
    }
    if base.description != latest.description {
        set("description", Box::new(latest.description.clone()));
    }
    if base.status != latest.status {
        set("status", Box::new(latest.status.as_str()));
    }
    if base.priority != latest.priority {
        set("priority", Box::new(latest.priority.as_str()));
    }
    if base.requester != latest.requester {
        set("requester", Box::new(latest.requester.clone()));
    }
    if base.assignee != latest.assignee {
        set("assignee", Box::new(latest.assignee.clone()));
    }
    let tags_changed = base.tags != latest.tags;
    if tags_changed {
        let tags =
            serde_json::to_string(&latest.tags).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        set("tags", Box::new(tags));
    }
    if base.chat_session_id != latest.chat_session_id {
        set("chat_session_id", Box::new(latest.chat_session_id.clone()));
    }
    set("updated_at", Box::new(ts(&latest.updated_at)));
    set("version", Box::new(latest.version as i64));
    let assignments: Vec<String> = sets
        .iter()
        .enumerate()
        .map(|(i, column)| format!("{column} = ?{}", i + 3))
        .collect();
    let sql = format!(
        "UPDATE tickets SET {} WHERE id = ?1 AND version = ?2",
        assignments.join(", ")
    );
    let params: Vec<&dyn rusqlite::ToSql> = args.iter().map(|b| b.as_ref()).collect();
    if conn.prepare_cached(&sql)?.execute(params.as_slice())? == 0 {
        return Err(StoreError::Corrupt(format!(
            "ticket {} is not at version {} in the tickets table",
            latest.id, base.version
        )));
    }
    if tags_changed {
        let id = latest.id.to_string();
        let mut del =
            conn.prepare_cached("DELETE FROM ticket_tags WHERE tag = ?1 AND ticket_id = ?2")?;
        for tag in base.tags.iter().filter(|t| !latest.tags.contains(t)) {
            del.execute(params![tag, id])?;
        }
        let mut ins = conn
            .prepare_cached("INSERT OR IGNORE INTO ticket_tags (tag, ticket_id) VALUES (?1, ?2)")?;
        for tag in latest.tags.iter().filter(|t| !base.tags.contains(t)) {
            ins.execute(params![tag, id])?;
        }
    }
    Ok(())
}

/// `seq` is the event's journal row: the history's order and cursor are the journal's, so an event
/// read from memory before its fold has the same `seq` after it. Journal seqs only grow, and each is
/// above every history `seq` before it (each history row comes from a journal row, and the journal has
/// others besides). `changes` is `e.changes` already encoded.
pub fn insert_event(
    conn: &Connection,
    seq: i64,
    e: &TicketEvent,
    changes: &str,
) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO ticket_events (seq, event_id, ticket_id, kind, actor, at, version, changes, \
         on_behalf_of) VALUES (?9, ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?
    .execute(params![
        e.event_id.to_string(),
        e.ticket_id.to_string(),
        e.kind.as_str(),
        e.actor.identity(),
        ts(&e.at),
        e.version as i64,
        changes,
        e.actor.acting_for(),
        seq,
    ])?;
    Ok(())
}

pub fn insert_comment(conn: &Connection, c: &Comment) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO comments (id, ticket_id, author, body, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![
        c.id.to_string(),
        c.ticket_id.to_string(),
        c.author.to_string(),
        c.body,
        ts(&c.created_at)
    ])?;
    Ok(())
}

/// Appends a ticket write's outbox row and returns its `seq`. `payload` is its
/// [`OutboxRecord::TicketSync`] as JSON; `op` and `event` are what the journal fold needs (see
/// `store::journal`).
pub fn insert_outbox(
    conn: &Connection,
    op: &str,
    event: &TicketEvent,
    payload: &str,
    event_json: &str,
    delivered: bool,
) -> Result<i64, StoreError> {
    conn.prepare_cached(
        "INSERT INTO outbox (event_id, ticket_id, payload, enqueued_at, op, event, delivered) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(params![
        event.event_id.to_string(),
        event.ticket_id.to_string(),
        payload,
        ts(&super::now()),
        op,
        event_json,
        delivered,
    ])?;
    Ok(conn.last_insert_rowid())
}

/// Appends an outbox row that is no ticket change (no `op`: the fold skips it) and returns its `seq`.
/// `key` is the row's unique key in place of an event id; `subject` what it is about (its ticket, or
/// its chat session); `payload` is its [`OutboxRecord`] as JSON.
pub fn insert_record(
    conn: &Connection,
    key: &str,
    subject: &str,
    payload: &str,
) -> Result<i64, StoreError> {
    conn.prepare_cached(
        "INSERT INTO outbox (event_id, ticket_id, payload, enqueued_at) VALUES (?1, ?2, ?3, ?4)",
    )?
    .execute(params![key, subject, payload, ts(&super::now())])?;
    Ok(conn.last_insert_rowid())
}

fn decode_record(payload: &str, what: &str) -> Result<OutboxRecord, StoreError> {
    serde_json::from_str(payload).map_err(|e| StoreError::Corrupt(format!("{what} payload: {e}")))
}

/// The version of `id` in the tickets table (folded writes only; see `store::journal`).
pub fn stored_version(conn: &Connection, id: TicketId) -> Result<Option<u64>, StoreError> {
    Ok(conn
        .prepare_cached("SELECT version FROM tickets WHERE id = ?1")?
        .query_row([id.to_string()], |r| r.get::<_, i64>(0))
        .optional()?
        .map(|v| v as u64))
}

pub fn load(conn: &Connection, id: TicketId) -> Result<Option<Ticket>, StoreError> {
    let sql = format!("SELECT {TICKET_COLUMNS} FROM tickets WHERE id = ?1");
    let mut stmt = conn.prepare_cached(&sql)?;
    let mut rows = stmt.query([id.to_string()])?;
    match rows.next()? {
        Some(row) => Ok(Some(ticket_from_row(row)?)),
        None => Ok(None),
    }
}

/// `tickets.db`'s watermark read through a reader's connection (where it is attached as `tables`, and
/// `switchboard.db`'s mirror of it would shadow the unqualified name).
pub fn tables_folded_seq(conn: &Connection) -> Result<i64, StoreError> {
    Ok(conn
        .prepare_cached("SELECT value FROM tables.store_meta WHERE key = 'folded_seq'")?
        .query_row([], |r| r.get(0))?)
}

pub fn list(conn: &Connection, f: &TicketFilter) -> Result<Vec<Ticket>, StoreError> {
    let mut out = Vec::new();
    list_scan(
        conn,
        f,
        |_| true,
        |t| {
            out.push(t);
            true
        },
    )?;
    Ok(out)
}

/// The tickets matching `f` (its limit included) in id order, handed to `visit` until it returns
/// `false`. `keep` sees each id first: a row it refuses is not decoded.
pub fn list_scan(
    conn: &Connection,
    f: &TicketFilter,
    keep: impl Fn(TicketId) -> bool,
    mut visit: impl FnMut(Ticket) -> bool,
) -> Result<(), StoreError> {
    let mut sql = format!("SELECT {TICKET_COLUMNS} FROM tickets t WHERE 1 = 1");
    let mut args: Vec<Box<dyn rusqlite::ToSql>> = Vec::new();
    if let Some(s) = f.status {
        args.push(Box::new(s.as_str()));
        sql.push_str(&format!(" AND t.status = ?{}", args.len()));
    }
    if let Some(a) = &f.assignee {
        args.push(Box::new(a.clone()));
        sql.push_str(&format!(" AND t.assignee = ?{}", args.len()));
    }
    if let Some(p) = f.priority {
        args.push(Box::new(p.as_str()));
        sql.push_str(&format!(" AND t.priority = ?{}", args.len()));
    }
    if let Some(tag) = &f.tag {
        args.push(Box::new(tag.clone()));
        sql.push_str(&format!(
            " AND t.id IN (SELECT ticket_id FROM ticket_tags WHERE tag = ?{})",
            args.len()
        ));
    }
    if let Some(after) = f.after {
        args.push(Box::new(after.to_string()));
        sql.push_str(&format!(" AND t.id > ?{}", args.len()));
    }
    args.push(Box::new(f.limit as i64));
    sql.push_str(&format!(" ORDER BY t.id LIMIT ?{}", args.len()));
    let mut stmt = conn.prepare_cached(&sql)?;
    let params: Vec<&dyn rusqlite::ToSql> = args.iter().map(|b| b.as_ref()).collect();
    let mut rows = stmt.query(params.as_slice())?;
    while let Some(row) = rows.next()? {
        let id: String = row.get(0)?;
        let id = id.parse().map_err(|_| corrupt("ticket id", &id))?;
        if keep(id) && !visit(ticket_from_row(row)?) {
            break;
        }
    }
    Ok(())
}

pub fn events(
    conn: &Connection,
    id: TicketId,
    after_seq: i64,
    limit: u32,
) -> Result<Vec<(i64, TicketEvent)>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT seq, event_id, kind, actor, at, version, changes, on_behalf_of FROM ticket_events \
         WHERE ticket_id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
    )?;
    let mut rows = stmt.query(params![id.to_string(), after_seq, limit as i64])?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        let event_id: String = row.get(1)?;
        let kind: String = row.get(2)?;
        let at: String = row.get(4)?;
        let changes: String = row.get(6)?;
        out.push((
            row.get(0)?,
            TicketEvent {
                event_id: crate::domain::ids::EventId(
                    event_id
                        .parse()
                        .map_err(|_| corrupt("event id", &event_id))?,
                ),
                ticket_id: id,
                kind: EventKind::parse(&kind).ok_or_else(|| corrupt("event kind", &kind))?,
                actor: Principal::from_record(&row.get::<_, String>(3)?, row.get(7)?),
                at: parse_ts(&at)?,
                version: row.get::<_, i64>(5)? as u64,
                changes: serde_json::from_str(&changes)
                    .map_err(|_| corrupt("changes", &changes))?,
            },
        ));
    }
    Ok(out)
}

/// The oldest undelivered outbox rows, up to `durable` (rows above it are not on disk yet).
pub fn outbox_peek(
    conn: &Connection,
    limit: usize,
    durable: i64,
) -> Result<Vec<OutboxEntry>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT seq, payload, enqueued_at, attempts, isolated_failures FROM outbox \
         WHERE delivered = 0 AND seq <= ?2 ORDER BY seq LIMIT ?1",
    )?;
    let mut rows = stmt.query([limit as i64, durable])?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        let payload: String = row.get(1)?;
        let at: String = row.get(2)?;
        out.push(OutboxEntry {
            seq: row.get(0)?,
            record: decode_record(&payload, "outbox")?,
            enqueued_at: parse_ts(&at)?,
            attempts: row.get(3)?,
            isolated_failures: row.get(4)?,
        });
    }
    Ok(out)
}

/// The oldest `limit` rows still waiting for Django, for operators.
pub fn outbox_pending(conn: &Connection, limit: u32) -> Result<Vec<PendingEntry>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT seq, payload, enqueued_at, attempts, isolated_failures, last_error FROM outbox \
         WHERE delivered = 0 ORDER BY seq LIMIT ?1",
    )?;
    let mut rows = stmt.query([limit as i64])?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        let payload: String = row.get(1)?;
        let record = decode_record(&payload, "outbox")?;
        let at: String = row.get(2)?;
        out.push(PendingEntry {
            id: row.get(0)?,
            record: RecordSummary::from(&record),
            attempts: row.get(3)?,
            isolated_failures: row.get(4)?,
            last_error: row.get(5)?,
            enqueued_at: parse_ts(&at)?,
        });
    }
    Ok(out)
}

/// Counts failed deliveries on rows still waiting (a row delivered or moved meanwhile is left alone).
pub fn outbox_record_failures(conn: &Connection, failures: &[Failure]) -> Result<(), StoreError> {
    let mut stmt = conn.prepare_cached(
        "UPDATE outbox SET attempts = attempts + 1, last_error = ?2, \
         isolated_failures = isolated_failures + ?3 WHERE seq = ?1 AND delivered = 0",
    )?;
    for f in failures {
        stmt.execute(params![f.seq, f.error, i64::from(f.isolated)])?;
    }
    Ok(())
}

/// Journal rows up to `watermark` are folded into `tickets.db`: records that in `switchboard.db` and
/// drops the rows among them already delivered (kept until now for the fold).
pub fn fold_done(conn: &Connection, watermark: i64) -> Result<(), StoreError> {
    conn.prepare_cached(
        "DELETE FROM outbox WHERE seq > (SELECT value FROM store_meta WHERE key = 'folded_seq') \
         AND seq <= ?1 AND delivered = 1",
    )?
    .execute([watermark])?;
    conn.prepare_cached(
        "UPDATE store_meta SET value = ?1 WHERE key = 'folded_seq' AND value < ?1",
    )?
    .execute([watermark])?;
    Ok(())
}

/// Retires a delivered (or dead-lettered) row: gone if already folded, else kept for the fold.
fn retire(conn: &Connection, seq: i64, folded_seq: i64) -> Result<(), StoreError> {
    let sql = if seq <= folded_seq {
        "DELETE FROM outbox WHERE seq = ?1"
    } else {
        "UPDATE outbox SET delivered = 1 WHERE seq = ?1"
    };
    conn.prepare_cached(sql)?.execute([seq])?;
    Ok(())
}

pub fn outbox_ack(conn: &Connection, seqs: &[i64], folded_seq: i64) -> Result<(), StoreError> {
    for &seq in seqs {
        retire(conn, seq, folded_seq)?;
    }
    Ok(())
}

/// Moves waiting rows to the dead letters; returns how many were still waiting.
pub fn outbox_dead_letter(
    conn: &Connection,
    rejected: &[Rejection],
    folded_seq: i64,
) -> Result<usize, StoreError> {
    let now = ts(&super::now());
    let mut total = 0;
    for r in rejected {
        let moved = conn
            .prepare_cached(
                "INSERT INTO dead_letters (event_id, ticket_id, payload, enqueued_at, failed_at, \
                 status_code, error) SELECT event_id, ticket_id, payload, enqueued_at, ?2, ?3, ?4 \
                 FROM outbox WHERE seq = ?1 AND delivered = 0",
            )?
            .execute(params![r.seq, now, r.status_code, r.error])?;
        if moved > 0 {
            retire(conn, r.seq, folded_seq)?;
        }
        total += moved;
    }
    Ok(total)
}

pub fn outbox_stats(conn: &Connection) -> Result<OutboxStats, StoreError> {
    let (depth, oldest): (i64, Option<String>) = conn
        .prepare_cached(
            // Delivered rows only wait above the fold watermark: count them in that range instead
            // of reading every row's `delivered` (the whole table, when Django has been down).
            "SELECT (SELECT COUNT(*) FROM outbox) - (SELECT COUNT(*) FROM outbox WHERE seq > \
             (SELECT value FROM store_meta WHERE key = 'folded_seq') AND delivered = 1), \
             (SELECT enqueued_at FROM outbox WHERE delivered = 0 ORDER BY seq LIMIT 1)",
        )?
        .query_row([], |r| Ok((r.get(0)?, r.get(1)?)))?;
    let dead: i64 = conn
        .prepare_cached("SELECT COUNT(*) FROM dead_letters")?
        .query_row([], |r| r.get(0))?;
    Ok(OutboxStats {
        depth: depth as u64,
        oldest: oldest.as_deref().map(parse_ts).transpose()?,
        dead_letters: dead as u64,
    })
}

pub fn dead_letters(conn: &Connection, limit: u32) -> Result<Vec<DeadLetter>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, payload, status_code, error, failed_at, enqueued_at FROM dead_letters \
         ORDER BY id LIMIT ?1",
    )?;
    let mut rows = stmt.query([limit as i64])?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        let payload: String = row.get(1)?;
        let record = decode_record(&payload, "dead letter")?;
        let failed: String = row.get(4)?;
        let enqueued: String = row.get(5)?;
        out.push(DeadLetter {
            id: row.get(0)?,
            summary: RecordSummary::from(&record),
            status_code: row.get::<_, Option<i64>>(2)?.map(|c| c as u16),
            error: row.get(3)?,
            failed_at: parse_ts(&failed)?,
            enqueued_at: parse_ts(&enqueued)?,
            record,
        });
    }
    Ok(out)
}

/// What re-queueing a dead letter did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Requeued {
    /// No such dead letter.
    Unknown,
    /// Its outbox row was still there (waiting for a fold) and is offered again.
    Revived,
    /// Its record was appended again as a new outbox row, at this `seq`, with nothing to fold.
    Appended(i64),
}

/// Puts dead letter `id` back in the outbox with its whole record.
pub fn retry_dead_letter(conn: &Connection, id: i64) -> Result<Requeued, StoreError> {
    let key: Option<String> = conn
        .prepare_cached("SELECT event_id FROM dead_letters WHERE id = ?1")?
        .query_row([id], |r| r.get(0))
        .optional()?;
    let Some(key) = key else {
        return Ok(Requeued::Unknown);
    };
    // The original row is still there when it waits for a fold: send it again from where it is.
    let revived = conn
        .prepare_cached("UPDATE outbox SET delivered = 0 WHERE event_id = ?1")?
        .execute([&key])?;
    let requeued = if revived > 0 {
        Requeued::Revived
    } else {
        conn.prepare_cached(
            "INSERT INTO outbox (event_id, ticket_id, payload, enqueued_at) \
             SELECT event_id, ticket_id, payload, enqueued_at FROM dead_letters WHERE id = ?1",
        )?
        .execute([id])?;
        Requeued::Appended(conn.last_insert_rowid())
    };
    conn.prepare_cached("DELETE FROM dead_letters WHERE id = ?1")?
        .execute([id])?;
    Ok(requeued)
}
