//! Every metric name the server exports, registered once, and the Prometheus recorder. The process's
//! own metrics (`process_open_fds`, `process_max_fds`, `process_resident_memory_bytes`,
//! `process_cpu_seconds_total`, `process_start_time_seconds`, …) come from `metrics-process`, under
//! the names every Prometheus exporter gives them, read afresh at each scrape ([`collect_process`]).
//!
//! The recorder is process-global (the `metrics` facade has one); several servers started in one test
//! process share it, so tests compare counters before and after rather than absolute values.

use std::sync::{LazyLock, OnceLock};

use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub const HTTP_REQUESTS: &str = "switchboard_http_requests_total";
pub const HTTP_DURATION: &str = "switchboard_http_request_duration_seconds";
pub const HTTP_PROTOCOL_ERRORS: &str = "switchboard_http_protocol_errors_total";
pub const TICKET_ACTORS: &str = "switchboard_ticket_actors";
pub const TICKET_ACTIVATIONS: &str = "switchboard_ticket_activations_total";
pub const TICKET_PASSIVATIONS: &str = "switchboard_ticket_passivations_total";
pub const TICKET_HIBERNATIONS: &str = "switchboard_ticket_hibernations_total";
pub const TICKET_RELOADS: &str = "switchboard_ticket_reloads_total";
pub const ACTOR_RESTARTS: &str = "switchboard_actor_restarts_total";
pub const SUPERVISOR_ESCALATIONS: &str = "switchboard_supervisor_escalations_total";
pub const OUTBOX_DEPTH: &str = "switchboard_outbox_depth";
pub const OUTBOX_OLDEST_AGE: &str = "switchboard_outbox_oldest_age_seconds";
pub const OUTBOX_LEASED: &str = "switchboard_outbox_leased_total";
pub const OUTBOX_LEASES_TAKEN_OVER: &str = "switchboard_outbox_leases_taken_over_total";
pub const OUTBOX_LEASE_DURATION: &str = "switchboard_outbox_lease_duration_seconds";
pub const BRIDGE_BATCH_SIZE: &str = "switchboard_bridge_batch_size";
pub const BRIDGE_AI_BATCH_SIZE: &str = "switchboard_bridge_ai_batch_size";
pub const BRIDGE_EVENTS_DELIVERED: &str = "switchboard_bridge_events_delivered_total";
pub const BRIDGE_BREAKER_STATE: &str = "switchboard_bridge_breaker_state";
pub const BRIDGE_IN_FLIGHT: &str = "switchboard_bridge_in_flight";
pub const BRIDGE_REFUSALS: &str = "switchboard_bridge_refusals_total";
pub const BRIDGE_ISOLATED: &str = "switchboard_bridge_isolated_events_total";
pub const BRIDGE_POISONED: &str = "switchboard_bridge_poisoned_events_total";
pub const DJANGO_DURATION: &str = "switchboard_django_request_duration_seconds";
pub const DJANGO_FAILURES: &str = "switchboard_django_failures_total";
pub const DEAD_LETTERS: &str = "switchboard_dead_letters_total";
pub const DEAD_LETTERS_PENDING: &str = "switchboard_dead_letters";
pub const STORE_COMMIT_BATCH: &str = "switchboard_store_commit_batch_size";
pub const STORE_COMMIT_DURATION: &str = "switchboard_store_commit_duration_seconds";
pub const STORE_WRITE_ERRORS: &str = "switchboard_store_write_errors_total";
pub const STORE_JOURNAL_DEPTH: &str = "switchboard_store_journal_depth";
pub const STORE_FOLD_ROWS: &str = "switchboard_store_fold_batch_size";
pub const STORE_FOLD_DURATION: &str = "switchboard_store_fold_duration_seconds";
pub const STORE_FOLD_ERRORS: &str = "switchboard_store_fold_errors_total";
pub const STORE_CHECKPOINT_DURATION: &str = "switchboard_store_checkpoint_duration_seconds";
pub const STORE_WAL_PAGES: &str = "switchboard_store_wal_pages";
pub const STORE_SYNC_DURATION: &str = "switchboard_store_sync_duration_seconds";
pub const STORE_SYNC_BATCH: &str = "switchboard_store_sync_batch_size";
pub const STORE_SYNC_ERRORS: &str = "switchboard_store_sync_errors_total";
pub const CHAT_SOCKETS: &str = "switchboard_chat_sockets";
pub const CHAT_SESSIONS: &str = "switchboard_chat_sessions";
pub const CHAT_THREADS: &str = "switchboard_chat_threads";
pub const CHAT_THREAD_SESSIONS: &str = "switchboard_chat_thread_sessions";
pub const CHAT_THREAD_SOCKETS: &str = "switchboard_chat_thread_sockets";
pub const CHAT_MOVED: &str = "switchboard_chat_connections_moved_total";
pub const CHAT_SESSIONS_STARTED: &str = "switchboard_chat_sessions_started_total";
pub const CHAT_SESSIONS_CLOSED: &str = "switchboard_chat_sessions_closed_total";
pub const CHAT_FRAMES_IN: &str = "switchboard_chat_frames_in_total";
pub const CHAT_FRAMES_OUT: &str = "switchboard_chat_frames_out_total";
pub const CHAT_FRAME_ERRORS: &str = "switchboard_chat_frame_errors_total";
pub const CHAT_ROUTING: &str = "switchboard_chat_routing_seconds";
pub const CHAT_AI_DURATION: &str = "switchboard_chat_ai_duration_seconds";
pub const CHAT_AI_CALLS: &str = "switchboard_chat_ai_calls_total";
pub const CHAT_ACTIONS: &str = "switchboard_chat_actions_total";
pub const CHAT_TICKETS: &str = "switchboard_chat_tickets_total";
pub const CHAT_RATE_LIMITED: &str = "switchboard_chat_rate_limited_total";
pub const CHAT_RATE_CLOSED: &str = "switchboard_chat_rate_limit_closes_total";
pub const CHAT_TICKETS_REFUSED: &str = "switchboard_chat_tickets_refused_total";
pub const CHAT_HISTORY_BYTES: &str = "switchboard_chat_history_bytes";
pub const CHAT_BUSY: &str = "switchboard_chat_busy_refusals_total";
pub const CHAT_ASSET_REQUESTS: &str = "switchboard_chat_asset_requests_total";
pub const CHAT_JOURNAL_COMMIT: &str = "switchboard_chat_journal_commit_seconds";
pub const CHAT_JOURNAL_BATCH: &str = "switchboard_chat_journal_batch_size";
pub const CHAT_JOURNAL_ERRORS: &str = "switchboard_chat_journal_errors_total";
pub const CHAT_JOURNAL_WAIT: &str = "switchboard_chat_journal_wait_seconds";
pub const CHAT_FENCED: &str = "switchboard_chat_sessions_fenced_total";
pub const CLUSTER_JOINED: &str = "switchboard_cluster_joined";
pub const CLUSTER_LEADER: &str = "switchboard_cluster_queue_leader";
pub const CLUSTER_NODES: &str = "switchboard_cluster_nodes";
pub const CLUSTER_SENT: &str = "switchboard_cluster_messages_sent_total";
pub const CLUSTER_RECEIVED: &str = "switchboard_cluster_messages_received_total";
pub const CLUSTER_REQUEST: &str = "switchboard_cluster_request_seconds";
pub const CLUSTER_ERRORS: &str = "switchboard_cluster_errors_total";
pub const CLUSTER_NODES_DEAD: &str = "switchboard_cluster_nodes_dead_total";
pub const CHAT_PASSIVATED: &str = "switchboard_chat_sessions_passivated_total";
pub const CHAT_RESTORED: &str = "switchboard_chat_sessions_restored_total";
pub const CHAT_JOURNAL_EXPIRED: &str = "switchboard_chat_journal_expired_total";
pub const CHAT_PRUNED: &str = "switchboard_chat_pruned_total";
pub const UPGRADE_HANDED_OVER: &str = "switchboard_upgrade_handed_over_total";
pub const UPGRADE_CLOSED: &str = "switchboard_upgrade_closed_total";
pub const UPGRADE_ADOPTED: &str = "switchboard_upgrade_adopted_total";
pub const UPGRADE_SECONDS: &str = "switchboard_upgrade_seconds";
pub const UPGRADE_ADOPT: &str = "switchboard_upgrade_adopt_seconds";
pub const UPGRADE_ROLLBACKS: &str = "switchboard_upgrade_rollbacks_total";
pub const CHAT_ADMISSION_REFUSED: &str = "switchboard_chat_admission_refusals_total";
pub const CHAT_SLOW_CONSUMERS: &str = "switchboard_chat_slow_consumer_disconnects_total";
pub const CHAT_RESUMES: &str = "switchboard_chat_resumes_total";
pub const CHAT_QUEUE_LENGTH: &str = "switchboard_chat_queue_length";
pub const CHAT_QUEUE_WAIT: &str = "switchboard_chat_queue_wait_seconds";
pub const CHAT_FIRST_AGENT_REPLY: &str = "switchboard_chat_first_agent_reply_seconds";
pub const CHAT_HANDOFFS: &str = "switchboard_chat_handoffs_total";
pub const CHAT_ABANDONED: &str = "switchboard_chat_abandoned_total";
pub const AGENTS: &str = "switchboard_agents";
pub const AGENTS_LOAD: &str = "switchboard_agents_load";
pub const AGENTS_CAPACITY: &str = "switchboard_agents_capacity";
pub const AGENT_CONNECTIONS: &str = "switchboard_agent_connections";
pub const AGENT_FRAMES_IN: &str = "switchboard_agent_frames_in_total";
pub const AGENT_FRAMES_OUT: &str = "switchboard_agent_frames_out_total";
pub const AGENT_REFUSED: &str = "switchboard_agent_refusals_total";

const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Waiting for a human: seconds to an hour.
const QUEUE_BUCKETS: &[f64] = &[
    1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
];
/// Django calls: from a fast lookup to a slow AI reply, past the longest sensible timeout.
const DJANGO_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 4.0, 5.0, 7.5, 10.0, 30.0,
];
/// In-process routing: a frame's way from the socket to each recipient's queue, microseconds apart.
const ROUTING_BUCKETS: &[f64] = &[
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05,
];
const SIZE_BUCKETS: &[f64] = &[
    1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

static PROCESS: LazyLock<metrics_process::Collector> =
    LazyLock::new(metrics_process::Collector::default);

/// Reads the process's open files and their limit, memory, CPU time, threads and start time into
/// their gauges; called before each render of `/metrics`, so a scrape sees them as they are.
pub fn collect_process() {
    PROCESS.collect();
}

/// Installs the recorder on first call and returns the handle that renders `/metrics`.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            // A full-name matcher wins over a suffix one.
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Full(DJANGO_DURATION.into()), DJANGO_BUCKETS)
                .and_then(|b| {
                    b.set_buckets_for_metric(Matcher::Full(CHAT_AI_DURATION.into()), DJANGO_BUCKETS)
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(Matcher::Full(CHAT_ROUTING.into()), ROUTING_BUCKETS)
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(Matcher::Full(CHAT_QUEUE_WAIT.into()), QUEUE_BUCKETS)
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full(CHAT_FIRST_AGENT_REPLY.into()),
                        QUEUE_BUCKETS,
                    )
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(Matcher::Suffix("_size".into()), SIZE_BUCKETS)
                })
                .expect("static bucket lists are non-empty")
                .build_recorder();
            let handle = recorder.handle();
            // Another recorder may already be global (an embedding program's); then ours only renders.
            let _ = metrics::set_global_recorder(recorder);
            describe();
            PROCESS.describe();
            collect_process();
            zero_alerting_counters();
            handle
        })
        .clone()
}

fn describe() {
    describe_chat();
    describe_counter!(HTTP_REQUESTS, "HTTP requests by route, method and status.");
    describe_histogram!(
        HTTP_DURATION,
        Unit::Seconds,
        "HTTP request latency by route."
    );
    describe_counter!(
        HTTP_PROTOCOL_ERRORS,
        "REST connections closed for a request that does not parse, by reason."
    );
    describe_gauge!(TICKET_ACTORS, "Live (activated) ticket actors.");
    describe_counter!(TICKET_ACTIVATIONS, "Ticket actor activations by source.");
    describe_counter!(
        TICKET_PASSIVATIONS,
        "Ticket actors passivated after idling."
    );
    describe_counter!(
        TICKET_HIBERNATIONS,
        "Idle ticket actors that packed their ticket into one allocation."
    );
    describe_counter!(
        TICKET_RELOADS,
        "Ticket actors that reloaded their ticket from a shared store (PostgreSQL) before a write, \
         by reason: `conflict` (another node wrote first) or `precondition` (If-Match named a newer \
         version than the one in memory)."
    );
    describe_counter!(ACTOR_RESTARTS, "Actor restarts by actor kind and cause.");
    describe_counter!(
        SUPERVISOR_ESCALATIONS,
        "Restart intensity exceeded, by supervisor."
    );
    describe_gauge!(OUTBOX_DEPTH, "Events waiting in the Django outbox.");
    describe_gauge!(
        OUTBOX_OLDEST_AGE,
        Unit::Seconds,
        "Age of the oldest outbox event."
    );
    describe_counter!(
        OUTBOX_LEASED,
        "Outbox entries leased by this node's bridge (PostgreSQL outbox shared by several nodes)."
    );
    describe_counter!(
        OUTBOX_LEASES_TAKEN_OVER,
        "Outbox entries leased after another node's lease on them expired (a node died or stalled)."
    );
    describe_histogram!(
        OUTBOX_LEASE_DURATION,
        Unit::Seconds,
        "Time to lease a batch of outbox entries on PostgreSQL."
    );
    describe_histogram!(BRIDGE_BATCH_SIZE, "Events per sync batch sent to Django.");
    describe_histogram!(
        BRIDGE_AI_BATCH_SIZE,
        "AI requests per batch from a chat thread to the calls lane (direction=requests), and answers per batch back (direction=replies)."
    );
    describe_counter!(
        BRIDGE_EVENTS_DELIVERED,
        "Outbox events acknowledged by Django."
    );
    describe_gauge!(
        BRIDGE_BREAKER_STATE,
        "Circuit breaker by lane (sync, calls): 0 closed, 1 half-open, 2 open."
    );
    describe_gauge!(BRIDGE_IN_FLIGHT, "Django calls in flight by lane.");
    describe_counter!(
        BRIDGE_REFUSALS,
        "Django calls a lane refused without making them, by lane and reason (busy, breaker)."
    );
    describe_counter!(
        BRIDGE_ISOLATED,
        "Ticket syncs that failed with a 5xx sent alone while Django took other events."
    );
    describe_counter!(
        BRIDGE_POISONED,
        "Ticket syncs dead-lettered after bridge.poison_max_attempts isolated failures."
    );
    describe_histogram!(
        DJANGO_DURATION,
        Unit::Seconds,
        "Django call latency by lane and endpoint."
    );
    describe_counter!(
        DJANGO_FAILURES,
        "Failed Django calls by lane, endpoint and reason."
    );
    describe_counter!(DEAD_LETTERS, "Events moved to the dead-letter table.");
    describe_gauge!(
        DEAD_LETTERS_PENDING,
        "Events currently in the dead-letter table."
    );
    describe_histogram!(
        STORE_COMMIT_BATCH,
        "Writes folded into one store transaction."
    );
    describe_histogram!(
        STORE_COMMIT_DURATION,
        Unit::Seconds,
        "Store commit latency."
    );
    describe_counter!(STORE_WRITE_ERRORS, "Store writes that failed.");
    describe_gauge!(
        STORE_JOURNAL_DEPTH,
        "Journalled writes not yet folded into the ticket tables."
    );
    describe_histogram!(STORE_FOLD_ROWS, "Journal rows applied by one fold.");
    describe_histogram!(
        STORE_FOLD_DURATION,
        Unit::Seconds,
        "Time to fold the journal into the ticket tables."
    );
    describe_counter!(STORE_FOLD_ERRORS, "Folds that failed and will be retried.");
    describe_histogram!(
        STORE_CHECKPOINT_DURATION,
        Unit::Seconds,
        "WAL checkpoints by database (journal, tickets) and mode (passive, restart)."
    );
    describe_gauge!(
        STORE_WAL_PAGES,
        "Pages in a database's write-ahead log: after its last checkpoint (journal), after the last fold (tickets)."
    );
    describe_histogram!(
        STORE_SYNC_DURATION,
        Unit::Seconds,
        "Time for one fdatasync of the write-ahead log (synchronous = full)."
    );
    describe_histogram!(
        STORE_SYNC_BATCH,
        "Committed transactions made durable by one fdatasync."
    );
    describe_counter!(
        STORE_SYNC_ERRORS,
        "Failed fdatasync calls; the store then refuses writes until restarted."
    );
}

fn describe_chat() {
    describe_gauge!(CHAT_SOCKETS, "Open chat WebSocket connections.");
    describe_gauge!(
        CHAT_SESSIONS,
        "Live chat sessions (attached or waiting for a resume)."
    );
    describe_gauge!(
        CHAT_THREADS,
        "Threads live chat runs on (chat.threads, or one per core)."
    );
    describe_gauge!(
        CHAT_THREAD_SESSIONS,
        "Live chat sessions on each chat thread, by thread."
    );
    describe_gauge!(
        CHAT_THREAD_SOCKETS,
        "Open chat connections on each chat thread, by thread."
    );
    describe_counter!(
        CHAT_MOVED,
        "Chat connections moved to the thread of the session or agent they resume, by party and \
         outcome (moved, or closed 1012 when the socket could not be taken out)."
    );
    describe_counter!(CHAT_SESSIONS_STARTED, "Chat sessions started.");
    describe_counter!(CHAT_SESSIONS_CLOSED, "Chat sessions ended, by reason.");
    describe_counter!(CHAT_FRAMES_IN, "Chat frames received, by type.");
    describe_counter!(CHAT_FRAMES_OUT, "Chat frames sent, by type.");
    describe_counter!(
        CHAT_FRAME_ERRORS,
        "Chat frames answered with an error frame, by error code."
    );
    describe_histogram!(
        CHAT_ROUTING,
        Unit::Seconds,
        "In-process routing latency: frame received to queued for each recipient."
    );
    describe_histogram!(
        CHAT_AI_DURATION,
        Unit::Seconds,
        "AI reply round trip, from the call to the reply (or failure) reaching the session."
    );
    describe_counter!(
        CHAT_AI_CALLS,
        "AI calls by outcome (replied, failed, refused, discarded)."
    );
    describe_counter!(CHAT_ACTIONS, "AI actions by kind and outcome.");
    describe_counter!(
        CHAT_TICKETS,
        "Tickets created from chats, by who asked (customer, ai)."
    );
    describe_counter!(
        CHAT_RATE_LIMITED,
        "Chat frames refused by the per-connection rate limit."
    );
    describe_histogram!(
        CHAT_JOURNAL_COMMIT,
        Unit::Seconds,
        "Chat journal transactions: time to commit one batch of appends."
    );
    describe_histogram!(
        CHAT_JOURNAL_BATCH,
        "Appends (one session's frames and state each) per chat journal transaction."
    );
    describe_counter!(
        CHAT_JOURNAL_ERRORS,
        "Chat journal transactions that failed."
    );
    describe_counter!(
        CHAT_FENCED,
        "Chat sessions stopped on this node because another node took them over (a higher fencing epoch)."
    );
    describe_gauge!(
        CLUSTER_JOINED,
        "1 while the node is in its cluster: the broker connected and its heartbeat in the database."
    );
    describe_gauge!(
        CLUSTER_LEADER,
        "1 while this node leads the cluster-wide routing queue."
    );
    describe_gauge!(
        CLUSTER_NODES,
        "Nodes alive in the cluster, as the queue's leader sees them."
    );
    describe_counter!(
        CLUSTER_SENT,
        "Messages sent to other nodes over the broker, by kind."
    );
    describe_counter!(
        CLUSTER_RECEIVED,
        "Messages received from other nodes over the broker, by kind."
    );
    describe_histogram!(
        CLUSTER_REQUEST,
        Unit::Seconds,
        "Requests to other nodes (a session's answer, the queue's), by kind: time to the answer."
    );
    describe_counter!(
        CLUSTER_ERRORS,
        "Messages to or from other nodes that failed, by kind and reason."
    );
    describe_counter!(
        CLUSTER_NODES_DEAD,
        "Nodes declared dead by the queue's leader (not heard from within cluster.heartbeat_timeout_ms)."
    );
    describe_histogram!(
        CHAT_JOURNAL_WAIT,
        Unit::Seconds,
        "A session's append to the chat journal, from submission to commit: what frames and acks wait before they are sent."
    );
    describe_counter!(
        CHAT_PASSIVATED,
        "Detached, idle chat sessions that left memory and live only in the chat journal until resumed."
    );
    describe_counter!(
        CHAT_RESTORED,
        "Chat sessions loaded from the chat journal, by when (startup: work owed after a restart; resume: a client came back)."
    );
    describe_counter!(
        CHAT_JOURNAL_EXPIRED,
        "Chat sessions that lived only in the journal and ended there (no resume within the grace, or idle)."
    );
    describe_counter!(
        CHAT_PRUNED,
        "Chat sessions (with their transcripts) removed by the retention prune (chat.retention_days)."
    );
    describe_counter!(
        UPGRADE_HANDED_OVER,
        "Chat connections handed to the next process by an upgrade, by party (customer, agent)."
    );
    describe_counter!(
        UPGRADE_CLOSED,
        "Chat connections an upgrade could not hand over and closed with 1012 (resume), by reason."
    );
    describe_counter!(
        UPGRADE_ADOPTED,
        "Chat connections this process took over from the one it replaced, by party and outcome."
    );
    describe_gauge!(
        UPGRADE_SECONDS,
        Unit::Seconds,
        "The takeover that started this process: from asking the old process to hand over to ready."
    );
    describe_histogram!(
        UPGRADE_ADOPT,
        Unit::Seconds,
        "After a takeover: from taking up a customer's connection to its session attached (read back from the chat journal if need be); its waiting frames are read from then on."
    );
    describe_counter!(
        UPGRADE_ROLLBACKS,
        "Upgrades abandoned because the new process was not ready in time; this process kept serving."
    );
    describe_counter!(
        CHAT_ASSET_REQUESTS,
        "Requests for the browser assets (widget, JS client, console, demo page) on the chat listener."
    );
    describe_counter!(
        CHAT_RATE_CLOSED,
        "Chat and agent connections closed (1008) for staying over the frame rate, by stage \
         (pre_session, session, agent)."
    );
    describe_counter!(
        CHAT_TICKETS_REFUSED,
        "Tickets from chat refused, by reason (per_hour: sessions.tickets_per_hour)."
    );
    describe_gauge!(
        CHAT_HISTORY_BYTES,
        "Bytes of history kept by all chat sessions (bounded by sessions.max_total_history_bytes)."
    );
    describe_counter!(
        CHAT_BUSY,
        "New sessions and messages refused at a process-wide limit, by what (session, message) \
         and why (sessions, memory)."
    );
    describe_counter!(
        CHAT_ADMISSION_REFUSED,
        "Chat connections refused at the handshake, by reason (rate, capacity, origin)."
    );
    describe_counter!(
        CHAT_SLOW_CONSUMERS,
        "Chat connections closed because the client did not read its frames."
    );
    describe_counter!(CHAT_RESUMES, "Session resumes, by outcome.");
    describe_gauge!(
        CHAT_QUEUE_LENGTH,
        "Chat sessions waiting for a human agent."
    );
    describe_histogram!(
        CHAT_QUEUE_WAIT,
        Unit::Seconds,
        "Time a chat waited in the queue before an agent took it."
    );
    describe_histogram!(
        CHAT_FIRST_AGENT_REPLY,
        Unit::Seconds,
        "Time from an agent taking a chat to their first message in it."
    );
    describe_counter!(
        CHAT_HANDOFFS,
        "Handoffs from the AI to a human, by stage (requested, accepted)."
    );
    describe_counter!(
        CHAT_ABANDONED,
        "Chats whose customer left (or timed out) while waiting for an agent."
    );
    describe_gauge!(
        AGENTS,
        "Signed-in agents by presence (online, away, offline)."
    );
    describe_gauge!(AGENTS_LOAD, "Chats held by agents.");
    describe_gauge!(AGENTS_CAPACITY, "Chats online agents can hold at once.");
    describe_gauge!(AGENT_CONNECTIONS, "Open agent WebSocket connections.");
    describe_counter!(AGENT_FRAMES_IN, "Agent frames received, by type.");
    describe_counter!(AGENT_FRAMES_OUT, "Agent frames sent, by type.");
    describe_counter!(
        AGENT_REFUSED,
        "Agent handshakes refused, by reason (unauthorized, forbidden, expired, capacity)."
    );
}

/// Creates, at zero, the counters that alerts watch, so `rate()` and absent-series alerts work from
/// the first scrape rather than from the first failure.
fn zero_alerting_counters() {
    for kind in [
        "ticket",
        "session",
        "bridge",
        "django_calls",
        "ticket_registry",
        "session_registry",
        "api",
        "chat_listener",
        "agent",
        "agent_registry",
        "queue",
    ] {
        metrics::counter!(ACTOR_RESTARTS, "kind" => kind, "cause" => "panic").absolute(0);
    }
    metrics::counter!(UPGRADE_ROLLBACKS).absolute(0);
    for supervisor in ["root", "chat", "tickets", "sessions", "agents"] {
        metrics::counter!(SUPERVISOR_ESCALATIONS, "supervisor" => supervisor).absolute(0);
    }
    for (lane, endpoints) in [
        ("sync", &["sync", "chat_ticket", "handoff"][..]),
        (
            "calls",
            &["fetch_ticket", "ai_respond", "manage_service"][..],
        ),
    ] {
        for endpoint in endpoints {
            for reason in ["timeout", "connect", "5xx", "4xx", "garbage"] {
                metrics::counter!(DJANGO_FAILURES, "lane" => lane, "endpoint" => *endpoint, "reason" => reason)
                    .absolute(0);
            }
        }
    }
    metrics::counter!(DEAD_LETTERS).absolute(0);
    metrics::counter!(BRIDGE_ISOLATED).absolute(0);
    metrics::counter!(BRIDGE_POISONED).absolute(0);
    metrics::counter!(CHAT_SLOW_CONSUMERS).absolute(0);
    metrics::counter!(CHAT_RATE_LIMITED).absolute(0);
    for stage in ["pre_session", "session", "agent"] {
        metrics::counter!(CHAT_RATE_CLOSED, "stage" => stage).absolute(0);
    }
    metrics::gauge!(CHAT_HISTORY_BYTES).set(0.0);
    metrics::counter!(CHAT_ABANDONED).absolute(0);
    for stage in ["requested", "accepted"] {
        metrics::counter!(CHAT_HANDOFFS, "stage" => stage).absolute(0);
    }
    metrics::gauge!(CHAT_QUEUE_LENGTH).set(0.0);
    for presence in ["online", "away", "offline"] {
        metrics::gauge!(AGENTS, "presence" => presence).set(0.0);
    }
}
