//! Versioned schema migrations, tracked in SQLite's `user_version`. Each entry runs once, in order, in
//! its own transaction; a database newer than this binary is refused rather than misread.

use rusqlite::Connection;

use super::StoreError;

/// Migration `i` brings the schema from version `i` to `i + 1`. Append only; never edit a shipped one.
pub const MIGRATIONS: &[&str] = &[
    // 1: tickets, their history, comments, the Django outbox and its dead letters.
    r#"
    CREATE TABLE tickets (
        id              TEXT PRIMARY KEY,
        subject         TEXT NOT NULL,
        description     TEXT NOT NULL,
        status          TEXT NOT NULL,
        priority        TEXT NOT NULL,
        requester       TEXT NOT NULL,
        assignee        TEXT,
        tags            TEXT NOT NULL,
        source          TEXT NOT NULL,
        chat_session_id TEXT,
        created_at      TEXT NOT NULL,
        updated_at      TEXT NOT NULL,
        version         INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX tickets_by_status   ON tickets (status, id);
    CREATE INDEX tickets_by_assignee ON tickets (assignee, id);
    CREATE INDEX tickets_by_priority ON tickets (priority, id);
    CREATE TABLE ticket_tags (
        tag       TEXT NOT NULL,
        ticket_id TEXT NOT NULL,
        PRIMARY KEY (tag, ticket_id)
    ) WITHOUT ROWID;
    CREATE TABLE ticket_events (
        seq       INTEGER PRIMARY KEY AUTOINCREMENT,
        event_id  TEXT NOT NULL UNIQUE,
        ticket_id TEXT NOT NULL,
        kind      TEXT NOT NULL,
        actor     TEXT NOT NULL,
        at        TEXT NOT NULL,
        version   INTEGER NOT NULL,
        changes   TEXT NOT NULL
    );
    CREATE INDEX ticket_events_by_ticket ON ticket_events (ticket_id, seq);
    CREATE TABLE comments (
        id         TEXT PRIMARY KEY,
        ticket_id  TEXT NOT NULL,
        author     TEXT NOT NULL,
        body       TEXT NOT NULL,
        created_at TEXT NOT NULL
    );
    CREATE INDEX comments_by_ticket ON comments (ticket_id, created_at);
    CREATE TABLE outbox (
        seq         INTEGER PRIMARY KEY AUTOINCREMENT,
        event_id    TEXT NOT NULL UNIQUE,
        ticket_id   TEXT NOT NULL,
        payload     TEXT NOT NULL,
        enqueued_at TEXT NOT NULL
    );
    CREATE TABLE dead_letters (
        id          INTEGER PRIMARY KEY AUTOINCREMENT,
        event_id    TEXT NOT NULL,
        ticket_id   TEXT NOT NULL,
        payload     TEXT NOT NULL,
        enqueued_at TEXT NOT NULL,
        failed_at   TEXT NOT NULL,
        status_code INTEGER,
        error       TEXT NOT NULL
    );
    "#,
    // 2: the outbox doubles as the write journal (see `store::journal`). A ticket write commits as one
    // outbox row that also carries what the fold needs; a row goes once it is delivered (or needs no
    // delivery: `delivered` starts at 1 for imports) and folded (`seq` <= `folded_seq`).
    r#"
    ALTER TABLE outbox ADD COLUMN op TEXT;
    ALTER TABLE outbox ADD COLUMN event TEXT;
    ALTER TABLE outbox ADD COLUMN delivered INTEGER NOT NULL DEFAULT 0;
    CREATE TABLE store_meta (
        key   TEXT PRIMARY KEY,
        value INTEGER NOT NULL
    ) WITHOUT ROWID;
    INSERT INTO store_meta (key, value) SELECT 'folded_seq', COALESCE(MAX(seq), 0) FROM outbox;
    "#,
];

/// Brings `conn` to the newest schema.
pub fn migrate(conn: &mut Connection) -> Result<u32, StoreError> {
    let current: u32 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    let target = MIGRATIONS.len() as u32;
    if current > target {
        return Err(StoreError::Corrupt(format!(
            "database schema version {current} is newer than this binary's {target}"
        )));
    }
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", index as u32 + 1)?;
        tx.commit()?;
        tracing::info!(version = index + 1, "applied schema migration");
    }
    Ok(target)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_apply_once_and_refuse_a_newer_database() {
        let mut conn = Connection::open_in_memory().unwrap();
        assert_eq!(migrate(&mut conn).unwrap(), MIGRATIONS.len() as u32);
        // Running again is a no-op.
        assert_eq!(migrate(&mut conn).unwrap(), MIGRATIONS.len() as u32);
        conn.pragma_update(None, "user_version", 99).unwrap();
        assert!(matches!(migrate(&mut conn), Err(StoreError::Corrupt(_))));
    }
}
