//! Versioned schema migrations, tracked in SQLite's `user_version` of each database file. Each step
//! runs once, in order; a database newer than this binary is refused rather than misread.
//!
//! The store has two files: `switchboard.db` (the journal, which doubles as the Django outbox, and the
//! dead letters) and `tickets.db` (the ticket tables the journal is folded into, with their own
//! watermark). Version 3 of the first moved the ticket tables out into the second.

use std::path::Path;

use rusqlite::{Connection, OpenFlags};

use super::StoreError;

/// The ticket tables as migration 1 created them. `tickets.db`'s first migration creates the very same
/// ones, which migration 3's column-for-column copy (`SELECT *`) relies on.
macro_rules! ticket_tables {
    () => {
        r#"    CREATE TABLE tickets (
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
"#
    };
}

/// Migration `i` brings the schema from version `i` to `i + 1`. Append only; never edit a shipped one.
pub const MIGRATIONS: &[&str] = &[
    // 1: tickets, their history, comments, the Django outbox and its dead letters.
    concat!(
        "\n",
        ticket_tables!(),
        r#"    CREATE TABLE outbox (
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
    "#
    ),
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

/// `switchboard.db`'s version once the ticket tables live in `tickets.db` (the step after
/// [`MIGRATIONS`], done by [`move_ticket_tables`]).
pub const VERSION: u32 = MIGRATIONS.len() as u32 + 1;

/// `tickets.db`'s migrations, as [`MIGRATIONS`]. Its first is migration 1's ticket tables, as they were,
/// and the fold's watermark.
pub const TABLES_MIGRATIONS: &[&str] = &[concat!(
    "\n",
    ticket_tables!(),
    r#"    -- Journal rows up to `folded_seq` are applied to the tables above.
    CREATE TABLE store_meta (
        key   TEXT PRIMARY KEY,
        value INTEGER NOT NULL
    ) WITHOUT ROWID;
    INSERT INTO store_meta (key, value) VALUES ('folded_seq', 0);
    "#
)];

/// The ticket tables moved from `switchboard.db` to `tickets.db` by [`move_ticket_tables`].
const MOVED_TABLES: &[&str] = &["tickets", "ticket_tags", "ticket_events", "comments"];

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
        tracing::info!(
            database = what,
            version = index + 1,
            "applied schema migration"
        );
    }
    Ok(target)
}

/// Brings `switchboard.db` (`conn`) and `tickets.db` (at `tables`) to the newest schema. Refuses to
/// start when `switchboard.db` says the tables moved but `tickets.db` is gone: recreating it empty
/// would lose every folded ticket.
pub fn migrate(conn: &mut Connection, tables: &Path) -> Result<u32, StoreError> {
    let current = user_version(conn)?;
    if current > VERSION {
        return Err(StoreError::Corrupt(format!(
            "database schema version {current} is newer than this binary's {VERSION}"
        )));
    }
    if current == VERSION && !tables.exists() {
        return Err(StoreError::Corrupt(format!(
            "{} is missing: it holds the folded ticket tables (restore it from the same backup as \
             switchboard.db)",
            tables.display()
        )));
    }
    if current < VERSION {
        apply(conn, MIGRATIONS, "switchboard.db")?;
        move_ticket_tables(conn, tables)?;
    }
    let mut tables_conn = Connection::open(tables)?;
    apply(&mut tables_conn, TABLES_MIGRATIONS, "tickets.db")?;
    Ok(VERSION)
}

/// Migration 3: copies the ticket tables and the fold watermark into a new `tickets.db`, makes that
/// durable, and only then drops them from `switchboard.db`. The two files do not commit atomically
/// together, so a crash in between leaves `switchboard.db` at version 2 and the copy is made again
/// from scratch at the next start.
fn move_ticket_tables(conn: &mut Connection, tables: &Path) -> Result<(), StoreError> {
    let main_path = conn
        .path()
        .map(str::to_string)
        .filter(|p| !p.is_empty())
        .ok_or_else(|| StoreError::Corrupt("switchboard.db has no path".into()))?;
    for suffix in ["", "-wal", "-shm"] {
        let path = format!("{}{suffix}", tables.display());
        match std::fs::remove_file(&path) {
            Ok(()) => tracing::warn!(%path, "removed a partial copy of the ticket tables"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(StoreError::Io { path, source }),
        }
    }
    let mut copy = Connection::open_with_flags(
        tables,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE,
    )?;
    copy.pragma_update(None, "journal_mode", "WAL")?;
    copy.pragma_update(None, "synchronous", "FULL")?;
    apply(&mut copy, TABLES_MIGRATIONS, "tickets.db")?;
    copy.execute("ATTACH DATABASE ?1 AS old", [&main_path])?;
    let tx = copy.transaction()?;
    for table in MOVED_TABLES {
        tx.execute_batch(&format!(
            "INSERT INTO main.{table} SELECT * FROM old.{table}"
        ))?;
    }
    tx.execute_batch(
        "UPDATE main.store_meta SET value = \
         (SELECT value FROM old.store_meta WHERE key = 'folded_seq') WHERE key = 'folded_seq'",
    )?;
    tx.commit()?;
    copy.execute_batch("DETACH DATABASE old")?;
    drop(copy);
    let tx = conn.transaction()?;
    for table in MOVED_TABLES {
        tx.execute_batch(&format!("DROP TABLE {table}"))?;
    }
    tx.pragma_update(None, "user_version", VERSION)?;
    tx.commit()?;
    tracing::info!(
        version = VERSION,
        "applied schema migration: ticket tables moved to tickets.db"
    );
    Ok(())
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
    fn version_2_moves_its_ticket_tables_into_tickets_db_even_after_a_half_done_attempt() {
        let dir = tempfile::tempdir().unwrap();
        let tables = dir.path().join("tickets.db");
        let mut conn = Connection::open(dir.path().join("switchboard.db")).unwrap();
        apply(&mut conn, MIGRATIONS, "switchboard.db").unwrap();
        conn.execute_batch(
            "INSERT INTO tickets VALUES ('t1', 's', 'd', 'open', 'low', 'r', NULL, '[\"a\"]', 'api', \
             NULL, '2026-01-01T00:00:00.000Z', '2026-01-01T00:00:00.000Z', 3);
             INSERT INTO ticket_tags VALUES ('a', 't1');
             INSERT INTO ticket_events VALUES (7, 'e1', 't1', 'created', 'x', '2026-01-01T00:00:00.000Z', 1, '{}');
             INSERT INTO comments VALUES ('c1', 't1', 'x', 'hello', '2026-01-01T00:00:00.000Z');
             UPDATE store_meta SET value = 42 WHERE key = 'folded_seq';",
        )
        .unwrap();
        // A copy left by a run that crashed mid-migration is discarded, not merged.
        std::fs::write(&tables, b"not a database").unwrap();
        assert_eq!(migrate(&mut conn, &tables).unwrap(), VERSION);

        let moved = Connection::open(&tables).unwrap();
        let count = |sql: &str| moved.query_row(sql, [], |r| r.get::<_, i64>(0)).unwrap();
        assert_eq!(count("SELECT version FROM tickets WHERE id = 't1'"), 3);
        assert_eq!(count("SELECT COUNT(*) FROM ticket_tags"), 1);
        assert_eq!(
            count("SELECT seq FROM ticket_events WHERE event_id = 'e1'"),
            7
        );
        assert_eq!(count("SELECT COUNT(*) FROM comments"), 1);
        assert_eq!(
            count("SELECT value FROM store_meta WHERE key = 'folded_seq'"),
            42
        );
        // New history rows continue after the copied ones.
        moved
            .execute_batch(
                "INSERT INTO ticket_events (event_id, ticket_id, kind, actor, at, version, changes) \
                 VALUES ('e2', 't1', 'updated', 'x', 'now', 2, '{}')",
            )
            .unwrap();
        assert_eq!(
            count("SELECT seq FROM ticket_events WHERE event_id = 'e2'"),
            8
        );
        let left: i64 = conn
            .query_row(
                "SELECT COUNT(*) FROM sqlite_master WHERE name = 'tickets'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(left, 0, "switchboard.db no longer has the ticket tables");
    }

    #[test]
    fn a_missing_tickets_db_is_refused_once_the_tables_moved() {
        let dir = tempfile::tempdir().unwrap();
        let tables = dir.path().join("tickets.db");
        let mut conn = Connection::open(dir.path().join("switchboard.db")).unwrap();
        migrate(&mut conn, &tables).unwrap();
        std::fs::remove_file(&tables).unwrap();
        let err = migrate(&mut conn, &tables).unwrap_err().to_string();
        assert!(err.contains("tickets.db is missing"), "{err}");
    }
}
