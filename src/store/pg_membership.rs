//! Who is in the cluster, kept in PostgreSQL beside the chat journal: every node writes its
//! heartbeat into `switchboard_nodes`, one node at a time leads the routing queue (it holds an
//! advisory lock on a connection of its own), and the leader declares dead the nodes whose
//! heartbeat stopped.
//!
//! Death is judged by the leader's own clock: a node is dead once its `last_seen` has not moved
//! for `dead_after` of the leader's time while the leader's own heartbeats went through. So a
//! database outage (no one's heartbeat moves) and clocks that disagree declare no one dead.

use std::collections::HashMap;
use std::time::Duration;

use deadpool_postgres::Pool;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

/// Held by the node that leads the queue: any number shared by every node (`'sb-queue'`).
const LEADER_LOCK: i64 = 0x7362_2d71_7565_7565;

/// What membership tells the node.
pub struct Membership {
    /// Whether this node's heartbeat is in the database (it has joined).
    pub joined: watch::Receiver<bool>,
    /// Whether this node leads the routing queue.
    pub leading: watch::Receiver<bool>,
    /// Nodes the leader declared dead, each once.
    pub dead: mpsc::UnboundedReceiver<String>,
}

/// Starts the heartbeat, the election and (while leading) the watch on the others, on `runtime`.
pub fn start(
    pool: Pool,
    runtime: &tokio::runtime::Handle,
    node: String,
    every: Duration,
    dead_after: Duration,
) -> Membership {
    let (joined_tx, joined) = watch::channel(false);
    let (leading_tx, leading) = watch::channel(false);
    let (dead_tx, dead) = mpsc::unbounded_channel();
    runtime.spawn(run(
        pool, node, every, dead_after, joined_tx, leading_tx, dead_tx,
    ));
    Membership {
        joined,
        leading,
        dead,
    }
}

/// A node as the leader last saw it: its `last_seen` and when (by the leader's clock) that changed.
struct Seen {
    last_seen: chrono::DateTime<chrono::Utc>,
    moved_at: Instant,
}

async fn run(
    pool: Pool,
    node: String,
    every: Duration,
    dead_after: Duration,
    joined: watch::Sender<bool>,
    leading: watch::Sender<bool>,
    dead: mpsc::UnboundedSender<String>,
) {
    let mut lock: Option<deadpool_postgres::Object> = None;
    let mut seen: HashMap<String, Seen> = HashMap::new();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let beat = heartbeat(&pool, &node).await;
        if let Err(e) = &beat {
            tracing::warn!(error = %e, "cluster heartbeat not written");
        }
        joined.send_if_modified(|j| std::mem::replace(j, beat.is_ok()) != beat.is_ok());
        metrics::gauge!(crate::metrics::CLUSTER_JOINED).set(f64::from(u8::from(beat.is_ok())));

        // The lock lives as long as its connection: a broken one means the lead is lost.
        if let Some(conn) = &lock {
            if conn.simple_query("SELECT 1").await.is_err() {
                tracing::warn!("lost the connection holding the queue's lead");
                lock = None;
            }
        }
        if lock.is_none() && beat.is_ok() {
            lock = try_lead(&pool).await;
        }
        let is_leader = lock.is_some();
        if *leading.borrow() != is_leader {
            tracing::info!(node = %node, leading = is_leader, "routing queue lead changed");
            seen.clear();
            let _ = leading.send(is_leader);
        }
        metrics::gauge!(crate::metrics::CLUSTER_LEADER).set(f64::from(u8::from(is_leader)));
        if let (Some(conn), Ok(())) = (&lock, &beat) {
            if let Err(e) = watch_others(conn, &node, dead_after, &mut seen, &dead).await {
                tracing::warn!(error = %e, "cluster members could not be read");
            }
        }
    }
}

async fn heartbeat(pool: &Pool, node: &str) -> Result<(), String> {
    let client = pool.get().await.map_err(|e| e.to_string())?;
    client
        .execute(
            "INSERT INTO switchboard_nodes (node_id, started_at, last_seen) VALUES ($1, now(), now()) \
             ON CONFLICT (node_id) DO UPDATE SET last_seen = now()",
            &[&node],
        )
        .await
        .map_err(|e| e.to_string())?;
    Ok(())
}

/// The lead, if no one holds it: the connection holding the lock, kept out of the pool.
async fn try_lead(pool: &Pool) -> Option<deadpool_postgres::Object> {
    let conn = pool.get().await.ok()?;
    let row = conn
        .query_one("SELECT pg_try_advisory_lock($1)", &[&LEADER_LOCK])
        .await
        .ok()?;
    row.get::<_, bool>(0).then_some(conn)
}

/// Reads every node's heartbeat; declares dead (once, and forgets) those silent past `dead_after`.
async fn watch_others(
    conn: &deadpool_postgres::Object,
    me: &str,
    dead_after: Duration,
    seen: &mut HashMap<String, Seen>,
    dead: &mpsc::UnboundedSender<String>,
) -> Result<(), tokio_postgres::Error> {
    let rows = conn
        .query("SELECT node_id, last_seen FROM switchboard_nodes", &[])
        .await?;
    let now = Instant::now();
    let mut alive = 0;
    for row in rows {
        let id: String = row.get(0);
        let last_seen: chrono::DateTime<chrono::Utc> = row.get(1);
        let entry = seen.entry(id.clone()).or_insert(Seen {
            last_seen,
            moved_at: now,
        });
        if entry.last_seen != last_seen {
            entry.last_seen = last_seen;
            entry.moved_at = now;
        }
        if id == me || now.duration_since(entry.moved_at) < dead_after {
            alive += 1;
            continue;
        }
        tracing::warn!(node = %id, silent_ms = now.duration_since(entry.moved_at).as_millis() as u64, "cluster node declared dead");
        metrics::counter!(crate::metrics::CLUSTER_NODES_DEAD).increment(1);
        conn.execute(
            "DELETE FROM switchboard_nodes WHERE node_id = $1 AND last_seen = $2",
            &[&id, &last_seen],
        )
        .await?;
        seen.remove(&id);
        let _ = dead.send(id);
    }
    metrics::gauge!(crate::metrics::CLUSTER_NODES).set(f64::from(alive));
    Ok(())
}
