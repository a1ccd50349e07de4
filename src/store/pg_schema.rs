//! The PostgreSQL schema every store on `storage.postgres_url` shares: one list of versioned
//! migrations, recorded in `switchboard_migrations`, and the runner that applies them.
//!
//! Each store that opens the database runs [`migrate`] first, under an advisory lock, so that
//! nodes (and the stores of one node) starting together apply each version once. Every version is
//! applied by whichever store opens first: the list is the database's, not one store's. A version
//! once released is never edited: a change is a new entry.

use std::collections::HashSet;

use super::{StoreError, StoreResult};

/// The schema, one entry per version, applied in order.
pub const MIGRATIONS: &[(i32, &str)] = &[
    // 1: the chat journal (src/store/pg_journal.rs).
    (
        1,
        "CREATE TABLE chat_sessions (
        session_id UUID PRIMARY KEY,
        resume_token_hash TEXT NOT NULL,
        state TEXT NOT NULL,
        last_seq BIGINT NOT NULL,
        last_activity_at TIMESTAMPTZ NOT NULL,
        detached_at TIMESTAMPTZ,
        closed BOOLEAN NOT NULL DEFAULT false
    );
    CREATE INDEX chat_sessions_open ON chat_sessions (closed, last_activity_at);
    CREATE INDEX chat_sessions_detached ON chat_sessions (closed, detached_at);
    CREATE TABLE chat_frames (
        session_id UUID NOT NULL,
        seq BIGINT NOT NULL,
        at TIMESTAMPTZ NOT NULL,
        body TEXT NOT NULL,
        PRIMARY KEY (session_id, seq)
    );",
    ),
    // 2: tickets, their history and comments, and the Django outbox with its dead letters
    // (src/store/pg_tickets.rs, src/store/pg_outbox.rs). An outbox row is leased by one node's
    // bridge at a time (`leased_by` until `lease_until`); `subject` is what keeps order (a ticket's
    // id, or a chat session's), indexed with `seq` for the check that an older row of the same
    // subject is not held by another node.
    (
        2,
        "CREATE TABLE tickets (
        id UUID PRIMARY KEY,
        subject TEXT NOT NULL,
        description TEXT NOT NULL,
        status TEXT NOT NULL,
        priority TEXT NOT NULL,
        requester TEXT NOT NULL,
        assignee TEXT,
        tags TEXT[] NOT NULL,
        source TEXT NOT NULL,
        chat_session_id TEXT,
        created_at TIMESTAMPTZ NOT NULL,
        updated_at TIMESTAMPTZ NOT NULL,
        version BIGINT NOT NULL
    );
    CREATE INDEX tickets_by_status ON tickets (status, id);
    CREATE INDEX tickets_by_assignee ON tickets (assignee, id);
    CREATE INDEX tickets_by_priority ON tickets (priority, id);
    CREATE INDEX tickets_by_tag ON tickets USING GIN (tags);
    CREATE TABLE ticket_events (
        seq BIGSERIAL PRIMARY KEY,
        event_id UUID NOT NULL UNIQUE,
        ticket_id UUID NOT NULL,
        kind TEXT NOT NULL,
        actor TEXT NOT NULL,
        on_behalf_of TEXT,
        at TIMESTAMPTZ NOT NULL,
        version BIGINT NOT NULL,
        changes TEXT NOT NULL
    );
    CREATE INDEX ticket_events_by_ticket ON ticket_events (ticket_id, seq);
    CREATE TABLE ticket_comments (
        id UUID PRIMARY KEY,
        ticket_id UUID NOT NULL,
        author TEXT NOT NULL,
        body TEXT NOT NULL,
        created_at TIMESTAMPTZ NOT NULL
    );
    CREATE INDEX ticket_comments_by_ticket ON ticket_comments (ticket_id, created_at);
    CREATE TABLE outbox (
        seq BIGSERIAL PRIMARY KEY,
        key TEXT NOT NULL UNIQUE,
        subject TEXT NOT NULL,
        payload TEXT NOT NULL,
        enqueued_at TIMESTAMPTZ NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        isolated_failures INTEGER NOT NULL DEFAULT 0,
        last_error TEXT,
        leased_by TEXT,
        lease_until TIMESTAMPTZ
    );
    CREATE INDEX outbox_by_subject ON outbox (subject, seq);
    CREATE TABLE outbox_dead_letters (
        id BIGSERIAL PRIMARY KEY,
        key TEXT NOT NULL,
        subject TEXT NOT NULL,
        payload TEXT NOT NULL,
        enqueued_at TIMESTAMPTZ NOT NULL,
        failed_at TIMESTAMPTZ NOT NULL,
        status_code INTEGER,
        error TEXT NOT NULL
    );",
    ),
    // 3: cluster mode (src/store/pg_journal.rs, src/store/pg_membership.rs): each chat session's
    // owner node and fencing epoch, and the nodes' heartbeats.
    (
        3,
        "ALTER TABLE chat_sessions ADD COLUMN owner TEXT, ADD COLUMN epoch BIGINT NOT NULL DEFAULT 0;
        CREATE INDEX chat_sessions_owner ON chat_sessions (owner) WHERE NOT closed;
        CREATE TABLE switchboard_nodes (
            node_id TEXT PRIMARY KEY,
            started_at TIMESTAMPTZ NOT NULL,
            last_seen TIMESTAMPTZ NOT NULL
        );",
    ),
];

/// Taken while migrating: any number shared by every node (`'switchboard'` as bytes).
const MIGRATION_LOCK: i64 = 0x7377_6974_6368_6264;

pub(crate) fn pg(e: impl std::fmt::Display) -> StoreError {
    StoreError::Database(e.to_string())
}

/// Applies every migration not yet recorded, in one transaction under the migration lock. Versions
/// are checked one by one rather than against the highest applied, so a database migrated by an
/// older binary that knew fewer versions gains exactly the missing ones.
pub async fn migrate(client: &mut deadpool_postgres::Object) -> StoreResult<()> {
    let tx = client.transaction().await.map_err(pg)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(pg)?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS switchboard_migrations (
            version INTEGER PRIMARY KEY,
            applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
        )",
    )
    .await
    .map_err(pg)?;
    let applied: HashSet<i32> = tx
        .query("SELECT version FROM switchboard_migrations", &[])
        .await
        .map_err(pg)?
        .iter()
        .map(|r| r.get(0))
        .collect();
    for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| !applied.contains(v)) {
        tx.batch_execute(sql).await.map_err(pg)?;
        tx.execute(
            "INSERT INTO switchboard_migrations (version) VALUES ($1)",
            &[version],
        )
        .await
        .map_err(pg)?;
        tracing::info!(version, "PostgreSQL schema migrated");
    }
    tx.commit().await.map_err(pg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_unique_and_in_order() {
        let versions: Vec<i32> = MIGRATIONS.iter().map(|(v, _)| *v).collect();
        let mut sorted = versions.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(versions, sorted);
        assert_eq!(versions[0], 1, "the chat journal's first version is kept");
    }
}
