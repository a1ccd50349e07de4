//! Switchboard: the real-time edge of the support product: the ticket REST API, live chat, and the
//! one bridge to Django, in one supervision tree.
//!
//! ```text
//! run(listeners, settings, shutdown)                                          src/lib.rs
//!  │  owns both bound listeners and the shutdown signal; exits non-zero if the root escalates
//!  └─ root supervisor  one_for_one, supervisor.max_restarts in max_seconds  src/supervisor.rs
//!      ├─ store          SqliteStore: writer (group commit), syncer (fdatasync),       src/store/
//!      │                 folder (journal → tickets.db), checkpointer, readers;      [permanent]
//!      │                 or PgStore (storage.postgres_url): shared by every node,   src/store/pg_tickets.rs
//!      │                 group commit, outbox entries leased to one node's bridge
//!      ├─ bridge         Bridge: the sync lane, own arbiter: outbox → Django           src/bridge/actor.rs
//!      │                 (ticket sync batches, chat tickets)                          [permanent]
//!      ├─ django_calls   DjangoCalls: the request/response lane, bridge's arbiter:    src/bridge/calls.rs
//!      │                 FetchTicket, AiRespond, ManageService; own limit, breaker  [permanent]
//!      ├─ tickets        TicketRegistry, own arbiter: a keyed supervisor             src/ticket/registry.rs
//!      │    │            (KeyedChildren: route by id, start on demand, idle sweep,  src/supervisor/keyed.rs
//!      │    │            supervisor.ticket_max_restarts → escalate)                 [permanent]
//!      │    └─ ticket*   TicketActor per live ticket, transient; hibernates,          src/ticket/actor.rs
//!      │                 then passivates when idle
//!      ├─ chat           nested supervisor (one_for_one), escalates to the root       src/lib.rs chat_tree
//!      │    │            chat.threads arbiters (one per core): each holds one session  src/chat/shards.rs
//!      │    │            and one agent registry, with their parties' connections
//!      │    ├─ ai_port.N  one per chat thread: AiPort, its sessions' AI requests    src/bridge/port.rs
//!      │    │            to django_calls in one batch per loop turn, answers back   [permanent]
//!      │    ├─ sessions.N  one per chat thread:
//!      │    │            SessionRegistry: a keyed supervisor (start, resume, ticks,   src/chat/registry.rs
//!      │    │            sessions read back from the chat journal)
//!      │    │    └─ session*  Session per chat, transient; outlives its connection    src/chat/session.rs
//!      │    │                 for sessions.resume_grace_ms; owner ai/queued/agent   [permanent]
//!      │    ├─ queue     Queue: waiting chats → agents (order, capacity, presence),  src/chat/queue.rs
//!      │    │            on the first chat thread
//!      │    │                                                                       [permanent]
//!      │    ├─ agents.N  one per chat thread: AgentRegistry, a keyed supervisor       src/chat/agents.rs
//!      │    │            of agents (ticks)
//!      │    │    └─ agent*  Agent per signed-in agent, transient; outlives its       src/chat/agent.rs
//!      │    │               connection for agents.resume_grace_ms                   [permanent]
//!      │    └─ chat_listener  accept loop on chat.bind → the least busy chat thread,  src/http/chat.rs
//!      │                      lean WebSocket transport:
//!      │                      /ws/chat, /ws/agent, /healthz, and the browser side   [permanent]
//!      │                      (widget, JS client, console, demo: src/http/assets.rs)
//!      └─ api            actix-web on api.bind (REST, /metrics, probes)              src/http.rs [permanent]
//! ```
//! Children start top to bottom and stop bottom to top: on shutdown the listeners drain in-flight
//! requests, tickets passivate, the bridge flushes the outbox within `bridge.drain_timeout_ms`, and
//! the store commits what is queued. Actor children are restarted in place (same address, mailbox
//! kept), so dependents never hold a stale address and one_for_one is enough at the root; the
//! supervisor also implements one_for_all and rest_for_one. A nested supervisor (`chat`) escalates
//! to the root, which restarts it in place or gives up in turn.
//!
//! Layers read top-down: [`domain`] (ids, principals, the ticket model) below [`store`] and
//! [`bridge`], the actors ([`ticket`]) above them, the transport ([`http`]; [`transport`] for live chat's WebSocket connections) on top; [`supervisor`]
//! knows none of them.
//!
//! Seams for running past one machine: [`store::TicketStore`] and [`store::Outbox`] (storage),
//! [`store::chat_journal::ChatJournal`] (chat sessions' frames and state: every numbered frame is
//! committed before it is sent, and a restarted process carries every session on from it), the
//! session's [`chat::desk::TicketDesk`] (tickets from chat, one write), and the registry's `Route`
//! (routing) are the only ways actors reach data and each other.

#![deny(unsafe_code)]

pub mod bridge;
pub mod chat;
pub mod cluster;
pub mod config;
pub mod domain;
pub mod http;
pub mod metrics;
pub mod store;
pub mod supervisor;
pub mod telemetry;
pub mod ticket;
pub mod transport;
pub mod upgrade;

use std::future::Future;
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use futures_util::future::{FutureExt, LocalBoxFuture};

use crate::bridge::actor::Bridge;
use crate::bridge::calls::DjangoCalls;
use crate::bridge::port::AiPort;
use crate::bridge::Drain;
use crate::chat::agent::AgentDeps;
use crate::chat::agents::{AgentRegistry, EndAllAgents, PauseAgents};
use crate::chat::handover::HandOff;
use crate::chat::queue::Queue;
use crate::chat::registry::{SessionRegistry, SuspendAll};
use crate::chat::session::SessionDeps;
use crate::chat::shards::{ChatShards, Shard};
use crate::config::Settings;
use crate::http::chat::{ChatListener, ChatRoutes};
use crate::http::listener::ListenerChild;
use crate::store::chat_journal::{ChatJournal, SqliteChatJournal};
use crate::store::pg_journal::PgChatJournal;
use crate::store::pg_tickets::{PgStore, PgStoreOptions};
use crate::store::sqlite::SqliteStore;
use crate::store::{Outbox, StoreError, TicketStore};
use crate::supervisor::supervised::{self, Restart};
use crate::supervisor::{
    ActorChild, Child, CloseDoors, ExitReport, Intensity, StartError, StopChildren, Strategy,
    Supervisor, SupervisorChild,
};
use crate::ticket::registry::{RegistryConfig, TicketRegistry};
pub use crate::upgrade::{Outcome, Upgrade};

/// Why the server stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("could not open the store")]
    Store(#[from] StoreError),
    #[error("cannot listen on {key} {addr}")]
    Bind {
        key: &'static str,
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the root supervisor gave up: {0}")]
    Escalated(String),
    #[error("could not join the cluster")]
    Cluster(#[from] cluster::ClusterError),
}

/// The store as the root's first child: opened before the tree starts, closed (after committing
/// everything queued) when the tree stops. It never exits: a panic on a store thread fails only the
/// writes in hand.
struct StoreChild {
    store: Arc<dyn TicketStore>,
}

impl Child for StoreChild {
    fn name(&self) -> &'static str {
        "store"
    }

    fn restart_type(&self) -> Restart {
        Restart::Permanent
    }

    fn start(&mut self, _: ExitReport) -> Result<(), StartError> {
        Ok(())
    }

    fn restart(&mut self, _: &'static str) -> Result<(), StartError> {
        // Nothing to redo: the store never exits, and its handle stays valid for every dependent.
        Ok(())
    }

    fn stop(&mut self) -> LocalBoxFuture<'static, ()> {
        self.store.close().boxed_local()
    }
}

/// The ticket store and the outbox, one object seen through both seams.
type Stores = (Arc<dyn TicketStore>, Arc<dyn Outbox>);

/// The ticket store and the outbox: SQLite in `storage.data_dir`, or PostgreSQL shared with the
/// other nodes when `storage.postgres_url` is set.
fn open_store(settings: &Settings) -> Result<Stores, RunError> {
    let storage = &settings.storage;
    if storage.postgres_url.is_empty() {
        let sqlite = Arc::new(SqliteStore::open(storage)?);
        return Ok((sqlite.clone(), sqlite));
    }
    // This process's name for its outbox leases: the node's, and unique per process, so two
    // processes of one node (an upgrade under way) never take each other's leases for their own.
    let node = format!("{}-{}", settings.cluster.node_name(), std::process::id());
    let pg = Arc::new(PgStore::open(PgStoreOptions {
        url: storage.postgres_url.clone(),
        pool_size: storage.postgres_pool,
        connect_timeout: Duration::from_millis(storage.postgres_connect_timeout_ms),
        node,
        lease: Duration::from_millis(storage.outbox_lease_ms),
        poll: Duration::from_millis(storage.outbox_poll_ms),
    })?);
    Ok((pg.clone(), pg))
}

/// The server's already-bound sockets: `run` serves on them, so a caller (a test binding port 0,
/// say) knows the addresses before the tree starts.
#[derive(Debug)]
pub struct Listeners {
    /// The REST API (`api.bind`).
    pub api: TcpListener,
    /// Live chat (`chat.bind`).
    pub chat: TcpListener,
}

impl Listeners {
    /// Binds both listeners at their configured addresses; errors name the key.
    pub fn bind(settings: &Settings) -> Result<Self, RunError> {
        let bind = |key: &'static str, addr: &str| {
            TcpListener::bind(addr).map_err(|source| RunError::Bind {
                key,
                addr: addr.to_string(),
                source,
            })
        };
        Ok(Self {
            api: bind("api.bind", &settings.api.bind)?,
            chat: bind("chat.bind", &settings.chat.bind)?,
        })
    }

    /// Second descriptors for the same sockets (kept across an upgrade, for a rollback).
    pub fn try_clone(&self) -> std::io::Result<Self> {
        Ok(Self {
            api: self.api.try_clone()?,
            chat: self.chat.try_clone()?,
        })
    }
}

/// Runs the whole tree on already-bound listeners until `shutdown` resolves, then stops it in order.
/// Must be called inside an actix `System`.
pub async fn run(
    listeners: Listeners,
    settings: Settings,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RunError> {
    run_with(listeners, settings, shutdown, Upgrade::default())
        .await
        .map(|_| ())
}

/// [`run`], taking part in upgrades ([`upgrade`]): it may take up connections a replaced process
/// handed over and say when it is ready, and it ends with [`Outcome::HandOver`] when a successor
/// asks for everything on the control socket.
pub async fn run_with(
    listeners: Listeners,
    settings: Settings,
    shutdown: impl Future<Output = ()>,
    mut upgrade: Upgrade,
) -> Result<Outcome, RunError> {
    let settings = Arc::new(settings);
    let prometheus = metrics::install();
    if upgrade.rollback {
        ::metrics::counter!(metrics::UPGRADE_ROLLBACKS).increment(1);
    }
    // Histograms buffer samples until upkeep folds them in; without a scrape they would grow forever.
    let upkeep = prometheus.clone();
    actix_rt::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            upkeep.run_upkeep();
        }
    });
    let (store, outbox) = open_store(&settings)?;
    let node = settings.cluster.node_name();
    let heartbeat_timeout = Duration::from_millis(settings.cluster.heartbeat_timeout_ms);
    let mut cluster_parts = None;
    let journal: Arc<dyn ChatJournal> = if settings.storage.postgres_url.is_empty() {
        Arc::new(SqliteChatJournal::open(
            &settings.storage.data_dir,
            settings.chat.journal_synchronous,
        )?)
    } else {
        tracing::info!("chat journal on PostgreSQL");
        let fence = settings
            .cluster
            .enabled()
            .then(|| store::pg_journal::Fence::new(node.clone(), heartbeat_timeout));
        let pg = Arc::new(PgChatJournal::open(
            &settings.storage.postgres_url,
            settings.storage.postgres_pool,
            Duration::from_millis(settings.storage.postgres_connect_timeout_ms),
            fence,
        )?);
        if settings.cluster.enabled() {
            let bus = cluster::bus::Bus::connect(
                &settings.cluster,
                &node,
                Duration::from_millis(settings.storage.postgres_connect_timeout_ms),
            )?;
            let (pool, runtime) = pg.pool();
            let membership = store::pg_membership::start(
                pool,
                &runtime,
                node.clone(),
                Duration::from_millis(settings.cluster.heartbeat_ms),
                heartbeat_timeout,
            );
            tracing::info!(node = %node, "joining the cluster");
            cluster_parts = Some((bus, membership));
        }
        pg
    };
    let cluster_status = cluster_parts
        .as_ref()
        .map(|(bus, membership)| cluster::ClusterStatus::new(bus, membership));
    chat::retention::spawn(
        journal.clone(),
        settings.chat.retention_days,
        Duration::from_millis(settings.chat.retention_sweep_ms),
    );
    tracing::info!(
        api = %listeners.api.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        chat = %listeners.chat.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        data_dir = %settings.storage.data_dir.display(),
        "switchboard starting"
    );

    let bridge_arbiter = Arbiter::new();
    let tickets_arbiter = Arbiter::new();
    let chat_threads = settings.chat.thread_count();
    let chat_arbiters: Vec<Arbiter> = (0..chat_threads).map(|_| Arbiter::new()).collect();
    ::metrics::gauge!(crate::metrics::CHAT_THREADS).set(chat_threads as f64);
    let (bridge_addr, bridge_mailbox) = supervised::mailbox::<Bridge>(settings.bridge.queue_depth);
    let (registry_addr, registry_mailbox) =
        supervised::mailbox::<TicketRegistry>(settings.tickets.registry_queue_depth);

    // Set when a successor takes over: the outbox stays on disk for it instead of being drained.
    let handing_over = Arc::new(AtomicBool::new(false));
    let bridge_child = {
        let handing_over = handing_over.clone();
        let outbox = outbox.clone();
        let django = settings.django.clone();
        let bridge_settings = settings.bridge.clone();
        let arbiter = bridge_arbiter.handle();
        let drain_addr = bridge_addr.clone();
        let deadline = Duration::from_millis(settings.bridge.drain_timeout_ms);
        ActorChild::new("bridge", Restart::Permanent, move |report| {
            supervised::spawn_in(
                &arbiter,
                "bridge",
                Restart::Permanent,
                bridge_mailbox,
                move |_| Bridge::new(outbox, django, bridge_settings),
                report,
            )
        })
        .before_stop(move || {
            let handing_over = handing_over.load(Ordering::SeqCst);
            async move {
                if handing_over {
                    tracing::info!("outbox left on disk for the process taking over");
                    return;
                }
                // Bounded: a bridge that is down (parked after a panic) cannot answer at all.
                let drained = drain_addr.send(Drain { deadline });
                match tokio::time::timeout(deadline + Duration::from_secs(1), drained).await {
                    Ok(Ok(0)) => tracing::info!("outbox drained"),
                    Ok(Ok(left)) => tracing::warn!(
                        left,
                        "outbox not empty at shutdown; kept on disk for the next start"
                    ),
                    Ok(Err(e)) => tracing::warn!(error = %e, "bridge did not answer the drain"),
                    Err(_) => tracing::warn!("bridge did not answer the drain in time"),
                }
            }
            .boxed_local()
        })
    };

    // The request/response lane: calls someone waits for, apart from the sync lane's backlog.
    let (calls_addr, calls_mailbox) =
        supervised::mailbox::<DjangoCalls>(settings.bridge.queue_depth);
    let calls_child = {
        let django = settings.django.clone();
        let bridge_settings = settings.bridge.clone();
        let arbiter = bridge_arbiter.handle();
        ActorChild::new("django_calls", Restart::Permanent, move |report| {
            supervised::spawn_in(
                &arbiter,
                "django_calls",
                Restart::Permanent,
                calls_mailbox,
                move |_| DjangoCalls::new(django, &bridge_settings),
                report,
            )
        })
    };

    let tickets_child = {
        let store = store.clone();
        let django = calls_addr.clone().recipient();
        let arbiter = tickets_arbiter.handle();
        let config = RegistryConfig {
            idle_timeout: settings.idle_timeout(),
            hibernate_after: Duration::from_millis(settings.tickets.hibernate_after_ms),
            sweep_interval: Duration::from_millis(settings.tickets.sweep_interval_ms),
            max_restarts: settings.supervisor.ticket_max_restarts,
            max_window: Duration::from_secs(settings.supervisor.ticket_max_seconds),
        };
        ActorChild::new("tickets", Restart::Permanent, move |report| {
            let escalate = report.clone();
            supervised::spawn_in(
                &arbiter,
                "ticket_registry",
                Restart::Permanent,
                registry_mailbox,
                move |_| TicketRegistry::new(store, django, config, escalate),
                report,
            )
        })
    };

    let (escalate_tx, escalate_rx) = futures_channel::oneshot::channel::<String>();
    let root = Supervisor::new(
        "root",
        Strategy::OneForOne,
        Intensity::new(
            settings.supervisor.max_restarts,
            Duration::from_secs(settings.supervisor.max_seconds),
        ),
        Vec::new(),
        {
            let mut escalate_tx = Some(escalate_tx);
            Box::new(move |reason| {
                if let Some(tx) = escalate_tx.take() {
                    let _ = tx.send(reason);
                }
            })
        },
    );
    let tree_up = root.up_flag();
    let (sessions_addrs, sessions_mailboxes): (Vec<_>, Vec<_>) = (0..chat_threads)
        .map(|_| supervised::mailbox::<SessionRegistry>(4096))
        .unzip();
    let (queue_addr, queue_mailbox) = supervised::mailbox::<Queue>(4096);
    let (agents_addrs, agents_mailboxes): (Vec<_>, Vec<_>) = (0..chat_threads)
        .map(|_| supervised::mailbox::<AgentRegistry>(4096))
        .unzip();
    let shards = ChatShards::new(sessions_addrs, agents_addrs);
    let chat_listening = Arc::new(AtomicBool::new(false));
    let deps = http::HttpDeps {
        settings: settings.clone(),
        registry: registry_addr.clone(),
        bridge: bridge_addr.clone(),
        calls: calls_addr.clone(),
        store: store.clone(),
        outbox: outbox.clone(),
        chats: journal.clone(),
        ops: http::ops::Ops {
            metrics: prometheus,
            metrics_token: settings.metrics.token.clone(),
            tree_up: tree_up.clone(),
            chat_listening: chat_listening.clone(),
            chat: shards.clone(),
            chat_queue: queue_addr.clone(),
            chat_journal: journal.clone(),
            cluster: cluster_status.clone(),
        },
    };
    let children: Vec<Box<dyn Child>> = vec![
        Box::new(StoreChild {
            store: store.clone(),
        }),
        Box::new(bridge_child),
        Box::new(calls_child),
        Box::new(tickets_child),
        Box::new(chat_tree(
            ChatParts {
                listener: listeners.chat,
                shards: shards.clone(),
                registries: sessions_mailboxes,
                queue: (queue_addr, queue_mailbox),
                agent_registries: agents_mailboxes,
                listening: chat_listening.clone(),
                adopted: std::mem::take(&mut upgrade.inherited),
                arbiters: chat_arbiters.iter().map(Arbiter::handle).collect(),
                calls: calls_addr.clone(),
                tickets: registry_addr.clone(),
                outbox: outbox.clone(),
                journal,
                cluster: cluster_parts.map(|(bus, membership)| ClusterParts {
                    bus,
                    membership,
                    status: cluster_status.clone().expect("a cluster has a status"),
                }),
            },
            &settings,
        )),
        Box::new(
            ListenerChild::new(
                "api",
                listeners.api,
                Box::new(move |l| http::start_api_server(l, deps.clone())),
            )
            .pausing_for_successor(handing_over.clone()),
        ),
    ];
    let root = root.with_children(children).start();
    {
        let ready = upgrade.ready.take();
        let deadline = settings.upgrade.deadline();
        actix_rt::spawn(async move {
            // Ready once the tree is up and the chat listener has taken up the connections.
            let up = async {
                while !(tree_up.load(Ordering::SeqCst) && chat_listening.load(Ordering::SeqCst)) {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            };
            match (tokio::time::timeout(deadline, up).await, ready) {
                (Ok(()), ready) => {
                    if let Some(ready) = ready {
                        ready.ready();
                    }
                    upgrade::notify_systemd_ready();
                }
                (Err(_), Some(ready)) => {
                    ready.failed(&"the tree did not come up within upgrade.deadline_ms")
                }
                (Err(_), None) => {}
            }
        });
    }
    let successor = async {
        match upgrade.requests.as_mut() {
            Some(requests) => match requests.recv().await {
                Some(successor) => successor,
                None => std::future::pending().await,
            },
            None => std::future::pending().await,
        }
    };

    let outcome = futures_util::select! {
        _ = shutdown.fuse() => {
            tracing::info!("shutdown requested; stopping in reverse start order");
            Ok(Outcome::Stopped)
        }
        successor = successor.fuse() => Ok(Outcome::HandOver { successor, connections: Vec::new() }),
        reason = escalate_rx.fuse() => match reason {
            Ok(reason) => Err(RunError::Escalated(reason)),
            Err(_) => Ok(Outcome::Stopped),
        },
    };
    let outcome = match outcome {
        Ok(Outcome::HandOver { successor, .. }) => {
            handing_over.store(true, Ordering::SeqCst);
            let connections = hand_over_chat(&root, &shards).await;
            let _ = root.send(StopChildren).await;
            Ok(Outcome::HandOver {
                successor,
                connections,
            })
        }
        Ok(stopped) => {
            let _ = root.send(StopChildren).await;
            Ok(stopped)
        }
        Err(e) => Err(e),
    };
    bridge_arbiter.stop();
    tickets_arbiter.stop();
    for arbiter in &chat_arbiters {
        arbiter.stop();
    }
    tracing::info!(ok = outcome.is_ok(), "switchboard stopped");
    outcome
}

/// The chat side of a handover, before the tree stops: no new connections, agents stop reading,
/// then every session commits, sends what it committed and hands its connection over (its frames
/// for agents reach them first), then every agent, once its requests are answered.
async fn hand_over_chat(
    root: &Addr<Supervisor>,
    shards: &ChatShards,
) -> Vec<chat::handover::HandedOver> {
    let span = tracing::info_span!("upgrade_quiesce");
    let _guard = span.enter();
    let started = std::time::Instant::now();
    let hand_to = HandOff::default();
    // As at shutdown: bounded, whatever the upgrade's own deadline (a rollback takes up what was
    // handed over, so nothing may be left half done). Every chat thread at once.
    let deadline = Duration::from_secs(5);
    let bounded = deadline + Duration::from_secs(1);
    let _ = root.send(CloseDoors).await;
    let _ = shards.all_agents(PauseAgents).await;
    let suspended = shards.all_sessions(SuspendAll {
        deadline,
        hand_to: Some(hand_to.clone()),
    });
    let n_sessions: usize = tokio::time::timeout(bounded, suspended)
        .await
        .map(|replies| replies.into_iter().filter_map(Result::ok).sum())
        .unwrap_or(0);
    let ended = shards.all_agents(EndAllAgents {
        hand_to: Some(hand_to.clone()),
        deadline,
    });
    let n_agents: usize = tokio::time::timeout(bounded, ended)
        .await
        .map(|replies| replies.into_iter().filter_map(Result::ok).sum())
        .unwrap_or(0);
    let handed = hand_to.take();
    tracing::info!(
        sessions = n_sessions,
        agents = n_agents,
        handed_over = handed.len(),
        took_ms = started.elapsed().as_millis() as u64,
        "chat quiesced for the process taking over"
    );
    handed
}

/// What the chat subtree is built from.
struct ChatParts {
    listener: TcpListener,
    /// Every chat thread's registries, by address.
    shards: ChatShards,
    /// The session registries' mailboxes, one per chat thread.
    registries: Vec<supervised::Mailbox<SessionRegistry>>,
    queue: (Addr<Queue>, supervised::Mailbox<Queue>),
    /// The agent registries' mailboxes, one per chat thread.
    agent_registries: Vec<supervised::Mailbox<AgentRegistry>>,
    listening: Arc<AtomicBool>,
    /// Connections handed over by the process this one replaces.
    adopted: Vec<chat::handover::HandedOver>,
    /// The chat threads, in order.
    arbiters: Vec<ArbiterHandle>,
    calls: Addr<DjangoCalls>,
    tickets: Addr<TicketRegistry>,
    outbox: Arc<dyn Outbox>,
    journal: Arc<dyn ChatJournal>,
    /// In a cluster: the broker and the membership the router is built on.
    cluster: Option<ClusterParts>,
}

struct ClusterParts {
    bus: cluster::bus::Bus,
    membership: store::pg_membership::Membership,
    status: cluster::ClusterStatus,
}

/// A child's name for one chat thread (`sessions.1`): built once per tree, so leaking is bounded.
fn thread_child_name(base: &str, shard: Shard) -> &'static str {
    if shard.count == 1 {
        return Box::leak(base.to_owned().into_boxed_str());
    }
    Box::leak(format!("{base}.{}", shard.index).into_boxed_str())
}

/// The live-chat subtree: its own supervisor (one_for_one, the root's intensity), escalating to the
/// root. One session registry per chat thread, the routing queue (first thread), one agent
/// registry per chat thread and the chat listener start in that order; every connection, session
/// and agent lives on one chat thread with its registry. On stop the listener closes first (no
/// new connections), then agents and sessions are suspended: each commits to the chat journal and
/// tells its client to resume (close 1012), and the next process carries every session on, its
/// agent and queue place included.
fn chat_tree(parts: ChatParts, settings: &Arc<Settings>) -> SupervisorChild {
    let s = &settings.sessions;
    let threads = parts.arbiters.len();
    let agents_online = Arc::new(AtomicBool::new(false));
    let (queue_addr, queue_mailbox) = parts.queue;
    let shards = parts.shards;
    // Sessions, agents and the queue reach each other by id, through the registries of their
    // chat threads, and in a cluster over the broker.
    let local = chat::shards::LocalRouter::new(shards.clone(), queue_addr.clone());
    let router: chat::routing::Router = match parts.cluster {
        None => Arc::new(local),
        Some(c) => {
            let router = cluster::router::ClusterRouter::new(
                local,
                c.bus,
                parts.journal.clone(),
                Duration::from_millis(settings.cluster.request_timeout_ms),
                Duration::from_millis(settings.cluster.heartbeat_timeout_ms),
                agents_online.clone(),
            );
            cluster::start(&router, c.membership, &c.status);
            Arc::new(router)
        }
    };
    // One AI port per chat thread: its sessions' AI requests leave the thread in one batch per
    // turn of its loop, and their answers come back the same way.
    let mut ai_ports = Vec::with_capacity(threads);
    let mut children: Vec<Box<dyn Child>> = Vec::new();
    for (index, arbiter) in parts.arbiters.iter().enumerate() {
        let (port, port_mailbox) = supervised::mailbox::<AiPort>(settings.bridge.queue_depth);
        ai_ports.push(port.recipient());
        let arbiter = arbiter.clone();
        let lane = parts.calls.clone().recipient();
        let shard = Shard {
            index,
            count: threads,
        };
        children.push(Box::new(ActorChild::new(
            thread_child_name("ai_port", shard),
            Restart::Permanent,
            move |report| {
                supervised::spawn_in(
                    &arbiter,
                    "ai_port",
                    Restart::Permanent,
                    port_mailbox,
                    move |_| AiPort::new(index, lane),
                    report,
                )
            },
        )));
    }
    let deps = Arc::new(SessionDeps {
        settings: s.clone(),
        limits: s.limits(),
        calls: ai_ports,
        services: parts.calls.recipient(),
        desk: chat::desk::RegistryDesk::shared(parts.tickets),
        outbox: parts.outbox,
        journal: parts.journal,
        max_subject_chars: settings.tickets.max_subject_chars,
        max_description_chars: settings.tickets.max_description_chars,
        max_name_chars: settings.tickets.max_name_chars,
        history_bytes: Arc::new(AtomicUsize::new(0)),
        agent_page_bytes: settings.agents.history_page_bytes,
        router: router.clone(),
        agents_online: agents_online.clone(),
        after_leave: settings.agents.on_leave,
        agent_grace: Duration::from_millis(settings.agents.resume_grace_ms),
    });
    let agent_deps = Arc::new(AgentDeps {
        settings: settings.agents.clone(),
        sessions: s.clone(),
        router: router.clone(),
        max_subject_chars: settings.tickets.max_subject_chars,
        max_description_chars: settings.tickets.max_description_chars,
    });
    let live = Arc::new(AtomicUsize::new(0));
    let live_agents = Arc::new(AtomicUsize::new(0));
    for (index, registry_mailbox) in parts.registries.into_iter().enumerate() {
        let shard = Shard {
            index,
            count: threads,
        };
        let arbiter = parts.arbiters[index].clone();
        let live = live.clone();
        let deps = deps.clone();
        let end_addr = shards.session_registries()[index].clone();
        let child = ActorChild::new(
            thread_child_name("sessions", shard),
            Restart::Permanent,
            move |report| {
                let escalate = report.clone();
                supervised::spawn_in(
                    &arbiter,
                    "session_registry",
                    Restart::Permanent,
                    registry_mailbox,
                    move |_| SessionRegistry::new(deps, live, escalate, shard),
                    report,
                )
            },
        )
        .before_stop(move || {
            async move {
                let deadline = Duration::from_secs(5);
                let suspended = end_addr.send(SuspendAll {
                    deadline,
                    hand_to: None,
                });
                match tokio::time::timeout(deadline + Duration::from_secs(1), suspended).await {
                    Ok(Ok(n)) => {
                        tracing::info!(
                            sessions = n,
                            thread = index,
                            "chat sessions suspended for the next process"
                        )
                    }
                    _ => tracing::warn!(
                        thread = index,
                        "session registry did not answer at shutdown"
                    ),
                }
            }
            .boxed_local()
        });
        children.push(Box::new(child));
    }
    let queue_child = {
        let arbiter = parts.arbiters[0].clone();
        let registry = router.clone();
        ActorChild::new("queue", Restart::Permanent, move |report| {
            supervised::spawn_in(
                &arbiter,
                "queue",
                Restart::Permanent,
                queue_mailbox,
                move |_| Queue::new(registry, agents_online),
                report,
            )
        })
    };
    children.push(Box::new(queue_child));
    for (index, agents_mailbox) in parts.agent_registries.into_iter().enumerate() {
        let shard = Shard {
            index,
            count: threads,
        };
        let arbiter = parts.arbiters[index].clone();
        let live_agents = live_agents.clone();
        let agent_deps = agent_deps.clone();
        let end_addr = shards.agent_registries()[index].clone();
        let child = ActorChild::new(
            thread_child_name("agents", shard),
            Restart::Permanent,
            move |report| {
                let escalate = report.clone();
                supervised::spawn_in(
                    &arbiter,
                    "agent_registry",
                    Restart::Permanent,
                    agents_mailbox,
                    move |_| AgentRegistry::new(agent_deps, live_agents, escalate),
                    report,
                )
            },
        )
        .before_stop(move || {
            async move {
                match tokio::time::timeout(
                    Duration::from_secs(5),
                    end_addr.send(EndAllAgents {
                        hand_to: None,
                        deadline: Duration::from_secs(4),
                    }),
                )
                .await
                {
                    Ok(Ok(n)) => {
                        tracing::info!(
                            agents = n,
                            thread = index,
                            "agents told to resume on the next process"
                        )
                    }
                    _ => {
                        tracing::warn!(thread = index, "agent registry did not answer at shutdown")
                    }
                }
            }
            .boxed_local()
        });
        children.push(Box::new(child));
    }
    children.push(Box::new(
        ChatListener::new(
            parts.listener,
            parts.arbiters,
            ChatRoutes {
                shards,
                live_sessions: live,
                live_agents,
            },
            settings.clone(),
            parts.listening,
        )
        .adopting(parts.adopted),
    ));
    let chat = Supervisor::new(
        "chat",
        Strategy::OneForOne,
        Intensity::new(
            settings.supervisor.max_restarts,
            Duration::from_secs(settings.supervisor.max_seconds),
        ),
        children,
        Box::new(|_| {}),
    );
    SupervisorChild::new(chat, Restart::Permanent)
}
