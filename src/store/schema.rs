//! Versioned schema migrations, tracked in SQLite's `user_version` of each database file. Each step
//! runs once, in order; a database newer than this binary is refused rather than misread.
//!
//! The store has two files, each with its own list: `switchboard.db` (the journal, which doubles as
//! the Django outbox, and the dead letters) and `tickets.db` (the ticket tables the journal is folded
//! into, with their watermark). Each list starts with one initial schema; append a step for any later
//! change, and never edit one that has shipped.

use std::path::Path;

use rusqlite::Connection;

use super::StoreError;

/// `switchboard.db`'s migrations: migration `i` brings it from version `i` to `i + 1`.
pub const MIGRATIONS: &[&str] = &[
    // 1: the outbox, which doubles as the write journal (see `store::journal`). A ticket write commits
    // as one row carrying its `OutboxRecord` (`payload`), and for the fold its operation (`op`) and
    // history event; other records have no `op`, and `event_id` holds a key of their own. A row goes
    // once delivered (or needing no delivery: `delivered` starts at 1 for imports) and folded (`seq`
    // at or below `tickets.db`'s watermark, mirrored here as `folded_seq`). Dead letters keep the
    // refused record whole.
    r#"
    CREATE TABLE outbox (
        seq         INTEGER PRIMARY KEY AUTOINCREMENT,
        event_id    TEXT NOT NULL UNIQUE,
        ticket_id   TEXT NOT NULL,
        payload     TEXT NOT NULL,
        enqueued_at TEXT NOT NULL,
        op          TEXT,
        event       TEXT,
        delivered   INTEGER NOT NULL DEFAULT 0
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
    CREATE TABLE store_meta (
        key   TEXT PRIMARY KEY,
        value INTEGER NOT NULL
    ) WITHOUT ROWID;
    INSERT INTO store_meta (key, value) VALUES ('folded_seq', 0);
    "#,
    // 2: what the bridge learnt delivering each row, for operators and to isolate an event Django
    // keeps failing on: failed delivery cycles that carried it, the last error, and how often it
    // failed alone while Django took other events (a bounded number of those dead-letters it).
    r#"
    ALTER TABLE outbox ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE outbox ADD COLUMN isolated_failures INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE outbox ADD COLUMN last_error TEXT;
    "#,
];

/// `switchboard.db`'s newest version.
pub const VERSION: u32 = MIGRATIONS.len() as u32;

/// `tickets.db`'s migrations, as [`MIGRATIONS`].
pub const TABLES_MIGRATIONS: &[&str] = &[
    // 1: tickets, their tag index, history and comments, and the fold's watermark: journal rows up to
    // `folded_seq` are applied to the tables.
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
    CREATE TABLE store_meta (
        key   TEXT PRIMARY KEY,
        value INTEGER NOT NULL
    ) WITHOUT ROWID;
    INSERT INTO store_meta (key, value) VALUES ('folded_seq', 0);
    "#,
    // 2: the person an API key said it acted for (`X-Actor`), apart from `actor`, which now always
    // names the key.
    r#"
    ALTER TABLE ticket_events ADD COLUMN on_behalf_of TEXT;
    "#,
];

fn user_version(conn: &Connection) -> Result<u32, StoreError> {
    Ok(conn.pragma_query_value(None, "user_version", |r| r.get(0))?)
}

/// Runs the steps of `steps` that `conn` has not had yet.
fn apply(conn: &mut Connection, steps: &[&str], what: &str) -> Result<u32, StoreError> {
    let current = user_version(conn)?;
    let target = steps.len() as u32;
    if current > target {
        return Err(StoreError::Corrupt(format!(
            "{what} schema version {current} is newer than this binary's {target}"
        )));
    }
    for (index, sql) in steps.iter().enumerate().skip(current as usize) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", index as u32 + 1)?;
        tx.commit()?;
    }
    if let Some(note) = outcome(current, target) {
        tracing::info!(database = what, from = current, version = target, "{note}");
    }
    Ok(target)
}

/// What bringing a database from schema version `from` to `to` did, as the log says it. A fresh
/// data folder is created, not migrated: an operator reading "migrated" would look for what moved.
fn outcome(from: u32, to: u32) -> Option<String> {
    match from {
        _ if from == to => None,
        0 => Some(format!("created a new database (schema version {to})")),
        _ => Some(format!("migrated the schema from version {from} to {to}")),
    }
}

/// Brings `switchboard.db` (`conn`) and `tickets.db` (at `tables`) to the newest schema. Refuses to
/// start when `switchboard.db` exists but `tickets.db` is gone: recreating it empty would lose every
/// folded ticket.
pub fn migrate(conn: &mut Connection, tables: &Path) -> Result<u32, StoreError> {
    if user_version(conn)? > 0 && !tables.exists() {
        return Err(StoreError::Corrupt(format!(
            "{} is missing: it holds the folded ticket tables (restore it from the same backup as \
             switchboard.db)",
            tables.display()
        )));
    }
    // `tickets.db` first: a crash between the two never leaves a `switchboard.db` without it.
    let mut tables_conn = Connection::open(tables)?;
    apply(&mut tables_conn, TABLES_MIGRATIONS, "tickets.db")?;
    apply(conn, MIGRATIONS, "switchboard.db")?;
    Ok(VERSION)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_apply_once_and_refuse_a_newer_database() {
        let dir = tempfile::tempdir().unwrap();
        let tables = dir.path().join("tickets.db");
        let mut conn = Connection::open(dir.path().join("switchboard.db")).unwrap();
        assert_eq!(migrate(&mut conn, &tables).unwrap(), VERSION);
        // Running again is a no-op.
        assert_eq!(migrate(&mut conn, &tables).unwrap(), VERSION);
        conn.pragma_update(None, "user_version", 99).unwrap();
        assert!(matches!(
            migrate(&mut conn, &tables),
            Err(StoreError::Corrupt(_))
        ));
    }

    #[test]
    fn a_fresh_database_is_reported_created_and_an_old_one_migrated() {
        assert_eq!(
            outcome(0, VERSION).as_deref(),
            Some(format!("created a new database (schema version {VERSION})").as_str())
        );
        assert!(outcome(1, 2).is_some_and(|n| n.contains("from version 1 to 2")));
        assert_eq!(outcome(VERSION, VERSION), None, "nothing to say");
    }

    #[test]
    fn a_database_of_the_first_version_gains_the_later_steps() {
        let dir = tempfile::tempdir().unwrap();
        let tables = dir.path().join("tickets.db");
        apply(
            &mut Connection::open(&tables).unwrap(),
            &TABLES_MIGRATIONS[..1],
            "tickets.db",
        )
        .unwrap();
        let mut conn = Connection::open(dir.path().join("switchboard.db")).unwrap();
        apply(&mut conn, &MIGRATIONS[..1], "switchboard.db").unwrap();
        conn.execute(
            "INSERT INTO outbox (event_id, ticket_id, payload, enqueued_at) VALUES ('e', 't', '{}', 'now')",
            [],
        )
        .unwrap();
        migrate(&mut conn, &tables).unwrap();
        let (attempts, last_error): (i64, Option<String>) = conn
            .query_row("SELECT attempts, last_error FROM outbox", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .unwrap();
        assert_eq!((attempts, last_error), (0, None));
    }

    #[test]
    fn a_missing_tickets_db_is_refused_once_the_journal_exists() {
        let dir = tempfile::tempdir().unwrap();
        let tables = dir.path().join("tickets.db");
        let mut conn = Connection::open(dir.path().join("switchboard.db")).unwrap();
        migrate(&mut conn, &tables).unwrap();
        std::fs::remove_file(&tables).unwrap();
        let err = migrate(&mut conn, &tables).unwrap_err().to_string();
        assert!(err.contains("tickets.db is missing"), "{err}");
    }
}
