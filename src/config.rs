//! Typed settings, loaded once at start and validated eagerly.
//!
//! Layers, lowest first: the embedded `config/default.toml`, an optional `--config FILE`, then
//! environment variables `SWITCHBOARD__SECTION__KEY`. Every error names the offending key.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The embedded defaults; also the documentation of every key.
pub const DEFAULT_TOML: &str = include_str!("../config/default.toml");

/// Why the settings could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration could not be read: {0}")]
    Load(#[from] config::ConfigError),
    #[error("invalid configuration key `{key}`: {message}")]
    Invalid { key: String, message: String },
}

/// Largest idle timeout or sweep interval: 2^31 - 1 ms, about 24.8 days.
const MAX_IDLE_MS: u64 = i32::MAX as u64;

fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        message: message.into(),
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// The REST listener (tickets, operators' endpoints).
    pub api: ListenerSettings,
    /// The live-chat listener.
    pub chat: ChatListenerSettings,
    pub tickets: TicketSettings,
    /// Live-chat sessions: protocol limits, resume, heartbeats, rates.
    pub sessions: SessionSettings,
    /// Human agents on `/ws/agent`: sign-in, capacity, the routing queue.
    pub agents: AgentSettings,
    pub storage: StorageSettings,
    pub django: DjangoSettings,
    pub bridge: BridgeSettings,
    pub supervisor: SupervisorSettings,
    pub auth: AuthSettings,
    pub metrics: MetricsSettings,
    pub log: LogSettings,
    pub shutdown: ShutdownSettings,
    /// Replacing the running binary without disconnecting anyone (`switchboard --takeover`).
    pub upgrade: UpgradeSettings,
    /// Several nodes as one Switchboard (`cluster.nats_url` with `storage.postgres_url`).
    pub cluster: ClusterSettings,
    pub testing: TestingSettings,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TicketSettings {
    pub idle_timeout_ms: u64,
    pub hibernate_after_ms: u64,
    pub sweep_interval_ms: u64,
    pub list_default_limit: u32,
    pub list_max_limit: u32,
    pub max_subject_chars: usize,
    pub max_description_chars: usize,
    pub max_comment_chars: usize,
    pub max_tags: usize,
    pub max_tag_chars: usize,
    pub max_name_chars: usize,
    pub actor_timeout_ms: u64,
    pub registry_queue_depth: usize,
}

/// Live-chat session settings (`[sessions]`); config/default.toml documents each key.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionSettings {
    pub history_max: usize,
    pub history_max_bytes: usize,
    pub max_total_history_bytes: usize,
    pub transcript_max_bytes: usize,
    pub tickets_per_hour: u32,
    pub rate_close_after: u32,
    pub dedupe_max: usize,
    pub ai_history: usize,
    pub resume_grace_ms: u64,
    pub idle_timeout_ms: u64,
    pub hibernate_after_ms: u64,
    /// A detached session with nothing in flight leaves memory after this long and lives only in
    /// the chat journal until it is resumed.
    pub passivate_after_ms: u64,
    pub sweep_interval_ms: u64,
    pub handshake_timeout_ms: u64,
    pub heartbeat_interval_ms: u64,
    pub heartbeat_timeout_ms: u64,
    pub max_frame_bytes: usize,
    pub max_message_chars: usize,
    pub allowed_origins: Vec<String>,
    pub max_sessions: usize,
    pub rate_per_sec: u32,
    pub rate_burst: u32,
    pub admission_per_sec: u32,
    pub admission_burst: u32,
    pub outbound_queue_bytes: usize,
    pub jwt_secret: String,
    pub max_restarts: u32,
    pub max_seconds: u64,
}

impl SessionSettings {
    fn validate(&self) -> Result<(), ConfigError> {
        for (key, value) in [
            ("sessions.history_max", self.history_max as u64),
            ("sessions.history_max_bytes", self.history_max_bytes as u64),
            (
                "sessions.max_total_history_bytes",
                self.max_total_history_bytes as u64,
            ),
            (
                "sessions.transcript_max_bytes",
                self.transcript_max_bytes as u64,
            ),
            ("sessions.tickets_per_hour", self.tickets_per_hour as u64),
            ("sessions.rate_close_after", self.rate_close_after as u64),
            ("sessions.dedupe_max", self.dedupe_max as u64),
            ("sessions.ai_history", self.ai_history as u64),
            ("sessions.resume_grace_ms", self.resume_grace_ms),
            ("sessions.idle_timeout_ms", self.idle_timeout_ms),
            ("sessions.sweep_interval_ms", self.sweep_interval_ms),
            ("sessions.passivate_after_ms", self.passivate_after_ms),
            ("sessions.handshake_timeout_ms", self.handshake_timeout_ms),
            ("sessions.heartbeat_interval_ms", self.heartbeat_interval_ms),
            ("sessions.max_frame_bytes", self.max_frame_bytes as u64),
            ("sessions.max_message_chars", self.max_message_chars as u64),
            ("sessions.max_sessions", self.max_sessions as u64),
            ("sessions.rate_per_sec", self.rate_per_sec as u64),
            ("sessions.rate_burst", self.rate_burst as u64),
            ("sessions.admission_per_sec", self.admission_per_sec as u64),
            ("sessions.admission_burst", self.admission_burst as u64),
            (
                "sessions.outbound_queue_bytes",
                self.outbound_queue_bytes as u64,
            ),
            ("sessions.max_seconds", self.max_seconds),
        ] {
            positive(key, value)?;
        }
        if self.ai_history > 50 {
            return Err(invalid(
                "sessions.ai_history",
                "must be at most 50 (Django's contract)",
            ));
        }
        // A message of max_message_chars must fit in a frame however its client escapes it: JSON
        // may spell one character as a surrogate pair of \uXXXX escapes (12 bytes).
        let needed = self
            .max_message_chars
            .saturating_mul(MAX_ESCAPED_CHAR_BYTES)
            .saturating_add(FRAME_ENVELOPE_BYTES);
        if self.max_frame_bytes < needed {
            return Err(invalid(
                "sessions.max_frame_bytes",
                format!(
                    "must be at least {needed}: sessions.max_message_chars ({}) characters JSON-escaped \
                     at up to {MAX_ESCAPED_CHAR_BYTES} bytes each, plus {FRAME_ENVELOPE_BYTES} for the \
                     frame's other fields",
                    self.max_message_chars
                ),
            ));
        }
        if self.transcript_max_bytes > 2 * 1024 * 1024 {
            return Err(invalid(
                "sessions.transcript_max_bytes",
                "must be at most 2097152 (Django's default upload limit is 2.5 MB)",
            ));
        }
        for (key, value) in [
            ("sessions.resume_grace_ms", self.resume_grace_ms),
            ("sessions.idle_timeout_ms", self.idle_timeout_ms),
        ] {
            if value > MAX_IDLE_MS {
                return Err(invalid(key, format!("must be at most {MAX_IDLE_MS}")));
            }
        }
        if self.heartbeat_timeout_ms <= self.heartbeat_interval_ms {
            return Err(invalid(
                "sessions.heartbeat_timeout_ms",
                "must be greater than sessions.heartbeat_interval_ms",
            ));
        }
        if self.hibernate_after_ms >= self.idle_timeout_ms {
            return Err(invalid(
                "sessions.hibernate_after_ms",
                "must be less than sessions.idle_timeout_ms (0 turns hibernation off)",
            ));
        }
        if !self.jwt_secret.is_empty() && self.jwt_secret.len() < 32 {
            return Err(invalid(
                "sessions.jwt_secret",
                "must be at least 32 bytes (or empty: anonymous visitors only)",
            ));
        }
        for origin in &self.allowed_origins {
            if !(origin.starts_with("http://") || origin.starts_with("https://"))
                || origin.ends_with('/')
            {
                return Err(invalid(
                    "sessions.allowed_origins",
                    format!("`{origin}` is not an origin like https://example.com"),
                ));
            }
        }
        Ok(())
    }

    pub fn limits(&self) -> SessionLimits {
        SessionLimits {
            history_max: self.history_max,
            history_max_bytes: self.history_max_bytes,
            transcript_max_bytes: self.transcript_max_bytes,
            dedupe_max: self.dedupe_max,
            ai_history: self.ai_history,
        }
    }
}

/// The most bytes one character of a message can take in a JSON frame (`\ud83d\ude00`).
pub const MAX_ESCAPED_CHAR_BYTES: usize = 12;
/// Room in a frame for everything but a message's text (`type`, `client_id`, quotes, braces).
pub const FRAME_ENVELOPE_BYTES: usize = 256;

/// What happens to a chat after its agent leaves it of their own accord (`agents.on_leave`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum AfterLeave {
    /// The AI answers again.
    #[default]
    Ai,
    /// The chat waits for another agent.
    Requeue,
}

/// Human agents (`[agents]`); config/default.toml documents each key.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentSettings {
    pub jwt_secret: String,
    pub default_capacity: u32,
    pub max_capacity: u32,
    pub auto_assign: bool,
    pub on_leave: AfterLeave,
    pub resume_grace_ms: u64,
    pub history_max: usize,
    pub history_max_bytes: usize,
    pub history_page_bytes: usize,
    pub allowed_origins: Vec<String>,
    pub max_agents: usize,
    pub heartbeat_interval_ms: u64,
    pub heartbeat_timeout_ms: u64,
    pub rate_per_sec: u32,
    pub rate_burst: u32,
}

impl AgentSettings {
    fn validate(&self) -> Result<(), ConfigError> {
        if !self.jwt_secret.is_empty() && self.jwt_secret.len() < 32 {
            return Err(invalid(
                "agents.jwt_secret",
                "must be at least 32 bytes (or empty: no agent may sign in)",
            ));
        }
        positive("agents.default_capacity", self.default_capacity.into())?;
        positive("agents.history_max", self.history_max as u64)?;
        positive("agents.history_max_bytes", self.history_max_bytes as u64)?;
        positive("agents.history_page_bytes", self.history_page_bytes as u64)?;
        positive("agents.max_agents", self.max_agents as u64)?;
        positive("agents.heartbeat_interval_ms", self.heartbeat_interval_ms)?;
        positive("agents.rate_per_sec", self.rate_per_sec.into())?;
        positive("agents.rate_burst", self.rate_burst.into())?;
        if self.heartbeat_timeout_ms <= self.heartbeat_interval_ms {
            return Err(invalid(
                "agents.heartbeat_timeout_ms",
                "must be greater than agents.heartbeat_interval_ms",
            ));
        }
        if self.default_capacity > self.max_capacity {
            return Err(invalid(
                "agents.default_capacity",
                "must be at most agents.max_capacity",
            ));
        }
        if self.resume_grace_ms > MAX_IDLE_MS {
            return Err(invalid(
                "agents.resume_grace_ms",
                format!("must be at most {MAX_IDLE_MS}"),
            ));
        }
        Ok(())
    }
}

/// The per-session limits the session's pure rules need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionLimits {
    pub history_max: usize,
    pub history_max_bytes: usize,
    pub transcript_max_bytes: usize,
    pub dedupe_max: usize,
    pub ai_history: usize,
}

/// The chat listener's server settings (`[chat]`): its own accept loop over the lean WebSocket
/// transport, so only what applies to it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChatListenerSettings {
    pub bind: String,
    pub max_connections: usize,
    pub max_header_bytes: usize,
    pub request_timeout_ms: u64,
    /// The chat journal's `synchronous`: `normal` (an ack survives `kill -9`) or `full` (it also
    /// survives power loss).
    pub journal_synchronous: Synchronous,
    /// Days a chat's transcript is kept after its last activity; 0 keeps them forever.
    pub retention_days: u32,
    /// How often the retention prune runs.
    pub retention_sweep_ms: u64,
    /// Chat threads (arbiters) connections and sessions are spread over; 0: one per core this
    /// process may use.
    pub threads: usize,
}

/// Most chat threads; a session's thread is chosen by its id, so more would only add idle ones.
pub const MAX_CHAT_THREADS: usize = 256;

impl ChatListenerSettings {
    /// The chat threads to run: `threads`, or one per core the process may use (its CPU affinity
    /// and cgroup quota included).
    pub fn thread_count(&self) -> usize {
        match self.threads {
            0 => std::thread::available_parallelism()
                .map(usize::from)
                .unwrap_or(1)
                .min(MAX_CHAT_THREADS),
            n => n,
        }
    }

    fn validate(&self) -> Result<SocketAddr, ConfigError> {
        let addr = parse_bind("chat.bind", &self.bind)?;
        if self.threads > MAX_CHAT_THREADS {
            return Err(invalid(
                "chat.threads",
                format!("must be at most {MAX_CHAT_THREADS} (0: one per core)"),
            ));
        }
        positive("chat.max_connections", self.max_connections as u64)?;
        positive("chat.max_header_bytes", self.max_header_bytes as u64)?;
        positive("chat.request_timeout_ms", self.request_timeout_ms)?;
        positive("chat.retention_sweep_ms", self.retention_sweep_ms)?;
        if self.retention_sweep_ms > MAX_IDLE_MS {
            return Err(invalid(
                "chat.retention_sweep_ms",
                format!("must be at most {MAX_IDLE_MS}"),
            ));
        }
        if self.retention_days > 36_500 {
            return Err(invalid(
                "chat.retention_days",
                "must be at most 36500 (0 keeps transcripts forever)",
            ));
        }
        Ok(addr)
    }
}

/// The REST listener's server settings (`[api]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerSettings {
    pub bind: String,
    pub workers: usize,
    pub max_connections: usize,
    pub keep_alive_ms: u64,
    pub max_body_bytes: usize,
    pub max_header_bytes: usize,
    pub request_timeout_ms: u64,
    pub body_timeout_ms: u64,
}

impl ListenerSettings {
    /// Checks one listener's keys; `section` (`api`, `chat`) prefixes them in errors.
    fn validate(&self, section: &str) -> Result<SocketAddr, ConfigError> {
        let key = |k: &str| format!("{section}.{k}");
        let addr = parse_bind(&key("bind"), &self.bind)?;
        positive(&key("workers"), self.workers as u64)?;
        positive(&key("max_connections"), self.max_connections as u64)?;
        positive(&key("max_body_bytes"), self.max_body_bytes as u64)?;
        positive(&key("max_header_bytes"), self.max_header_bytes as u64)?;
        positive(&key("request_timeout_ms"), self.request_timeout_ms)?;
        positive(&key("body_timeout_ms"), self.body_timeout_ms)?;
        Ok(addr)
    }

    /// The address to bind (valid once the settings are).
    pub fn bind_addr(&self) -> Result<SocketAddr, ConfigError> {
        parse_bind("bind", &self.bind)
    }

    pub fn keep_alive(&self) -> Duration {
        Duration::from_millis(self.keep_alive_ms)
    }

    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }

    pub fn body_timeout(&self) -> Duration {
        Duration::from_millis(self.body_timeout_ms)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Synchronous {
    Full,
    Normal,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageSettings {
    pub data_dir: PathBuf,
    pub synchronous: Synchronous,
    pub readers: usize,
    pub fold_max_rows: usize,
    /// A PostgreSQL URL: the chat journal lives there instead of `chat.db`. Empty: SQLite.
    pub postgres_url: String,
    /// Most connections to PostgreSQL.
    pub postgres_pool: usize,
    /// How long a starting process waits for PostgreSQL to answer before it gives up.
    pub postgres_connect_timeout_ms: u64,
    /// With PostgreSQL: how long outbox entries leased by this node's bridge stay its own before
    /// another node may deliver them (a node that died gives its entries up this late).
    pub outbox_lease_ms: u64,
    /// With PostgreSQL: how often the bridge looks for entries other nodes enqueued or left behind.
    pub outbox_poll_ms: u64,
}

/// Cluster mode: the node's name and the broker that links it to the others.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSettings {
    /// This node's name, unique in the cluster. Empty: the host's name.
    pub node_id: String,
    /// A NATS URL (`nats://host:4222`). Set, with `storage.postgres_url`, the node joins a cluster.
    /// Empty: a single node.
    pub nats_url: String,
    /// How often the node says it is alive.
    pub heartbeat_ms: u64,
    /// A node not heard from for this long is dead: its agents go offline, their chats are requeued.
    pub heartbeat_timeout_ms: u64,
    /// How long a request to another node (a session's answer, the queue's) may take.
    pub request_timeout_ms: u64,
    /// Most messages to other nodes under way at once (sent to the broker or awaiting an answer);
    /// past it a message is dropped and counted (`switchboard_cluster_errors_total{reason="overloaded"}`)
    /// instead of queueing in memory while the broker is slow or away.
    pub max_in_flight: usize,
    /// A file holding this node's NKey seed (`SU…`), for a broker that admits users by NKey.
    /// Empty: none (a user and password, or a token, can be in `nats_url`).
    pub nats_nkey_file: String,
    /// PEM file of the CA(s) that signed the broker's certificate. Set, the node talks to the
    /// broker only over TLS and checks its certificate against these.
    pub nats_tls_ca_file: String,
    /// This node's certificate and key (PEM), for a broker that verifies its clients (mutual
    /// TLS). Both or neither.
    pub nats_tls_cert_file: String,
    pub nats_tls_key_file: String,
    /// Talk to the broker only over TLS (implied by a `tls://` URL or any TLS file).
    pub nats_require_tls: bool,
}

impl ClusterSettings {
    /// Whether the node must talk to the broker over TLS.
    pub fn nats_tls(&self) -> bool {
        self.nats_require_tls
            || self.nats_url.starts_with("tls://")
            || !self.nats_tls_ca_file.is_empty()
            || !self.nats_tls_cert_file.is_empty()
    }

    pub fn enabled(&self) -> bool {
        !self.nats_url.is_empty()
    }

    /// The node's name: as configured, or the host's.
    pub fn node_name(&self) -> String {
        if !self.node_id.is_empty() {
            return self.node_id.clone();
        }
        nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "switchboard".to_string())
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DjangoSettings {
    pub base_url: String,
    pub token: String,
    pub timeout_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BridgeSettings {
    pub batch_max: usize,
    pub flush_ms: u64,
    pub retry_base_ms: u64,
    pub retry_max_ms: u64,
    pub breaker_threshold: u32,
    pub breaker_cooldown_ms: u64,
    /// Failures of one event sent alone, while Django takes other events, before it is dead-lettered.
    pub poison_max_attempts: u32,
    pub drain_timeout_ms: u64,
    pub queue_depth: usize,
    pub calls_timeout_ms: u64,
    pub calls_max_in_flight: usize,
    pub calls_breaker_threshold: u32,
    pub calls_breaker_cooldown_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SupervisorSettings {
    pub max_restarts: u32,
    pub max_seconds: u64,
    pub ticket_max_restarts: u32,
    pub ticket_max_seconds: u64,
}

/// What an API key may do. Scopes are not hierarchical: `admin` does not imply `write`, nor `write`
/// `read`; a key lists each scope it needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    Read,
    Write,
    Admin,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Write => "write",
            Self::Admin => "admin",
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKey {
    pub name: String,
    /// The secret, written in the file; or empty, with `key_env` naming the environment variable
    /// that holds it (how a container is given a secret). Filled from there at load.
    #[serde(default)]
    pub key: String,
    #[serde(default)]
    pub key_env: Option<String>,
    pub scopes: Vec<Scope>,
}

/// The marker of every placeholder secret shipped in config/production.example.toml and the docs:
/// a secret containing it is public, so the server refuses it rather than run with it.
const EXAMPLE_SECRET_MARKER: &str = "change-me";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSettings {
    pub api_keys: Vec<ApiKey>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsSettings {
    pub token: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Json,
    Text,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    pub level: String,
    pub format: LogFormat,
}

/// The level names `tracing` knows, most verbose last.
const LOG_LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];

/// Level names people write for one `tracing` spells differently.
const LOG_LEVEL_ALIASES: [(&str, &str); 1] = [("warning", "warn")];

impl LogSettings {
    /// The `tracing` filter `log.level` stands for, its level aliases (`warning`) read as the level
    /// they name.
    pub fn filter(&self) -> String {
        canonical_log_filter(&self.level)
    }
}

impl Settings {
    fn validate_cluster(&self) -> Result<(), ConfigError> {
        let cluster = &self.cluster;
        positive("cluster.heartbeat_ms", cluster.heartbeat_ms)?;
        positive("cluster.request_timeout_ms", cluster.request_timeout_ms)?;
        positive("cluster.max_in_flight", cluster.max_in_flight as u64)?;
        if cluster.heartbeat_timeout_ms < 2 * cluster.heartbeat_ms {
            return Err(invalid(
                "cluster.heartbeat_timeout_ms",
                "must be at least twice cluster.heartbeat_ms (one lost heartbeat is not a death)",
            ));
        }
        // The node's name is a NATS subject token: no dots, spaces or wildcards.
        let name_ok = cluster
            .node_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !name_ok || cluster.node_id.len() > 64 {
            return Err(invalid(
                "cluster.node_id",
                "must be at most 64 letters, digits, '-' or '_' (empty: the host's name)",
            ));
        }
        if !cluster.enabled() {
            return Ok(());
        }
        if !(cluster.nats_url.starts_with("nats://") || cluster.nats_url.starts_with("tls://")) {
            return Err(invalid(
                "cluster.nats_url",
                "must be a nats:// or tls:// URL, or empty for a single node",
            ));
        }
        if self.storage.postgres_url.is_empty() {
            return Err(invalid(
                "storage.postgres_url",
                "must be set when cluster.nats_url is: the nodes of a cluster share one database",
            ));
        }
        if cluster.nats_tls_cert_file.is_empty() != cluster.nats_tls_key_file.is_empty() {
            return Err(invalid(
                "cluster.nats_tls_cert_file",
                "and cluster.nats_tls_key_file go together: set both (mutual TLS) or neither",
            ));
        }
        for (key, path) in [
            ("cluster.nats_nkey_file", &cluster.nats_nkey_file),
            ("cluster.nats_tls_ca_file", &cluster.nats_tls_ca_file),
            ("cluster.nats_tls_cert_file", &cluster.nats_tls_cert_file),
            ("cluster.nats_tls_key_file", &cluster.nats_tls_key_file),
        ] {
            if !path.is_empty() && !std::path::Path::new(path).is_file() {
                return Err(invalid(key, format!("{path} is not a readable file")));
            }
        }
        Ok(())
    }
}

/// A log filter with every level alias replaced by the level it names, bare (`warning`) or after a
/// target (`actix_web=warning`); everything else is kept as written. Without this, `tracing` reads a
/// bare `warning` as a target's name and every other log goes quiet.
pub fn canonical_log_filter(spec: &str) -> String {
    spec.split(',')
        .map(|directive| {
            let (target, level) = match directive.rsplit_once('=') {
                Some((target, level)) => (Some(target), level),
                None => (None, directive),
            };
            let level = level.trim();
            match LOG_LEVEL_ALIASES
                .iter()
                .find(|(alias, _)| alias.eq_ignore_ascii_case(level))
            {
                Some((_, canonical)) => match target {
                    Some(target) => format!("{target}={canonical}"),
                    None => (*canonical).to_string(),
                },
                None => directive.to_string(),
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Checks a log filter (aliases already replaced): a bare word is a level (`tracing` also takes 0
/// to 5), or the filter is refused. `tracing` would take any other bare word as a target to log at
/// every level while silencing everything else, which a misspelt level (`warnn`) never means; a
/// target is written `target=level`.
fn check_log_filter(spec: &str) -> Result<(), String> {
    let bare_words = spec.split(',').map(str::trim).filter(|d| {
        !d.is_empty()
            && d.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':' || c == '-')
    });
    for word in bare_words {
        let is_level = LOG_LEVELS.iter().any(|l| l.eq_ignore_ascii_case(word))
            || matches!(word, "0" | "1" | "2" | "3" | "4" | "5");
        if !is_level {
            let hint = match nearest_level(word) {
                Some(level) => format!("did you mean `{level}`?"),
                None => format!("the levels are {}", LOG_LEVELS.join(", ")),
            };
            return Err(format!(
                "`{word}` is not a log level ({hint}); name a target's level as `{word}=debug`"
            ));
        }
    }
    Ok(())
}

/// The level (or alias' level) spelt closest to `word`, if any is close enough to be a typo of it.
fn nearest_level(word: &str) -> Option<&'static str> {
    let word = word.to_ascii_lowercase();
    LOG_LEVELS
        .iter()
        .map(|l| (*l, *l))
        .chain(LOG_LEVEL_ALIASES.iter().copied())
        .map(|(name, level)| (edit_distance(&word, name), level))
        .filter(|(distance, _)| *distance <= 2)
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, level)| level)
}

/// Levenshtein distance between two short ASCII words.
fn edit_distance(a: &str, b: &str) -> usize {
    let b = b.as_bytes();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.bytes().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (diagonal + usize::from(ca != *cb))
                .min(row[j] + 1)
                .min(above + 1);
            diagonal = above;
        }
    }
    row[b.len()]
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShutdownSettings {
    pub grace_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpgradeSettings {
    /// The local control socket a new process asks the running one to hand over on; empty:
    /// `control.sock` in `storage.data_dir`.
    pub control_socket: String,
    /// How long the running process waits, from the new one's request, for it to be ready; past
    /// it the new process is stopped and the old one serves on (rollback).
    pub deadline_ms: u64,
}

impl UpgradeSettings {
    /// The control socket's path for a data dir.
    pub fn control_path(&self, data_dir: &std::path::Path) -> PathBuf {
        if self.control_socket.is_empty() {
            data_dir.join("control.sock")
        } else {
            PathBuf::from(&self.control_socket)
        }
    }

    pub fn deadline(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.deadline_ms)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestingSettings {
    pub fault_injection: bool,
}

impl Settings {
    /// Embedded defaults, then `file`, then `SWITCHBOARD__…` environment variables.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        let mut builder = config::Config::builder().add_source(config::File::from_str(
            DEFAULT_TOML,
            config::FileFormat::Toml,
        ));
        if let Some(path) = file {
            builder = builder.add_source(config::File::from(path).required(true));
        }
        builder = builder.add_source(
            config::Environment::with_prefix("SWITCHBOARD")
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true),
        );
        let mut settings: Settings = builder.build()?.try_deserialize()?;
        settings.resolve_secrets(|name| std::env::var(name).ok())?;
        settings.validate()?;
        Ok(settings)
    }

    /// The embedded defaults alone, with overrides from a TOML string (tests and tools).
    pub fn from_toml(overrides: &str) -> Result<Self, ConfigError> {
        let mut settings = Self::parse_toml(overrides)?;
        settings.resolve_secrets(|name| std::env::var(name).ok())?;
        settings.validate()?;
        Ok(settings)
    }

    fn parse_toml(overrides: &str) -> Result<Self, ConfigError> {
        Ok(config::Config::builder()
            .add_source(config::File::from_str(
                DEFAULT_TOML,
                config::FileFormat::Toml,
            ))
            .add_source(config::File::from_str(overrides, config::FileFormat::Toml))
            .build()?
            .try_deserialize()?)
    }

    /// Fills each API key given as `key_env` from that environment variable (`env` looks one up).
    fn resolve_secrets(&mut self, env: impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        for key in &mut self.auth.api_keys {
            let Some(var) = &key.key_env else { continue };
            if !key.key.is_empty() {
                return Err(invalid(
                    "auth.api_keys",
                    format!("key `{}` sets both `key` and `key_env`; keep one", key.name),
                ));
            }
            key.key = env(var).filter(|v| !v.is_empty()).ok_or_else(|| {
                invalid(
                    "auth.api_keys",
                    format!(
                        "key `{}` reads its secret from the environment variable {var}, which is \
                         not set",
                        key.name
                    ),
                )
            })?;
        }
        Ok(())
    }

    /// Checks what serde cannot: addresses, ranges, and the secure-by-default rule.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let api_bind = self.api.validate("api")?;
        let log_filter = self.log.filter();
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&log_filter) {
            return Err(invalid(
                "log.level",
                format!("`{}` is not a log filter ({e})", self.log.level),
            ));
        }
        check_log_filter(&log_filter).map_err(|why| invalid("log.level", why))?;
        self.sessions.validate()?;
        self.agents.validate()?;
        // A resume replays the whole kept history at once; it must fit in what may wait for the
        // client, or every resume of a full history would end in 4008 instead of completing.
        let queue = self.sessions.outbound_queue_bytes;
        for (key, value) in [
            (
                "sessions.history_max_bytes",
                self.sessions.history_max_bytes,
            ),
            ("agents.history_max_bytes", self.agents.history_max_bytes),
            ("agents.history_page_bytes", self.agents.history_page_bytes),
        ] {
            if value > queue {
                return Err(invalid(
                    key,
                    format!(
                        "must be at most sessions.outbound_queue_bytes ({queue}): a resume replays it at once"
                    ),
                ));
            }
        }
        let chat_bind = self.chat.validate()?;
        if api_bind == chat_bind && api_bind.port() != 0 {
            return Err(invalid(
                "chat.bind",
                format!("must differ from api.bind ({api_bind})"),
            ));
        }
        positive("tickets.idle_timeout_ms", self.tickets.idle_timeout_ms)?;
        positive("tickets.sweep_interval_ms", self.tickets.sweep_interval_ms)?;
        // The registry tracks idleness on a 32-bit millisecond clock that wraps; ages stay exact while
        // every ticket is swept before it is 2^32 ms idle.
        for (key, value) in [
            ("tickets.idle_timeout_ms", self.tickets.idle_timeout_ms),
            ("tickets.sweep_interval_ms", self.tickets.sweep_interval_ms),
        ] {
            if value > MAX_IDLE_MS {
                return Err(invalid(key, format!("must be at most {MAX_IDLE_MS}")));
            }
        }
        if self.tickets.hibernate_after_ms >= self.tickets.idle_timeout_ms {
            return Err(invalid(
                "tickets.hibernate_after_ms",
                "must be less than tickets.idle_timeout_ms (0 turns hibernation off)",
            ));
        }
        positive("tickets.list_max_limit", self.tickets.list_max_limit as u64)?;
        positive("tickets.actor_timeout_ms", self.tickets.actor_timeout_ms)?;
        positive(
            "tickets.registry_queue_depth",
            self.tickets.registry_queue_depth as u64,
        )?;
        positive("bridge.queue_depth", self.bridge.queue_depth as u64)?;
        if self.tickets.list_default_limit == 0
            || self.tickets.list_default_limit > self.tickets.list_max_limit
        {
            return Err(invalid(
                "tickets.list_default_limit",
                "must be between 1 and tickets.list_max_limit",
            ));
        }
        positive("storage.readers", self.storage.readers as u64)?;
        positive("storage.fold_max_rows", self.storage.fold_max_rows as u64)?;
        positive("storage.postgres_pool", self.storage.postgres_pool as u64)?;
        positive(
            "storage.postgres_connect_timeout_ms",
            self.storage.postgres_connect_timeout_ms,
        )?;
        positive("storage.outbox_poll_ms", self.storage.outbox_poll_ms)?;
        // A lease must outlast a delivery cycle's call to Django, or another node sends the same
        // entries while this one still waits for the answer. Only PostgreSQL's outbox has leases:
        // on SQLite the setting means nothing and refuses nothing.
        let leased = !self.storage.postgres_url.is_empty();
        if leased && self.storage.outbox_lease_ms <= self.django.timeout_ms.max(1000) {
            return Err(invalid(
                "storage.outbox_lease_ms",
                "must be more than django.timeout_ms and more than 1000",
            ));
        }
        let url = &self.storage.postgres_url;
        let postgres = url.starts_with("postgres://") || url.starts_with("postgresql://");
        if !url.is_empty() && !postgres {
            return Err(invalid(
                "storage.postgres_url",
                "must be a postgres:// URL, or empty for SQLite",
            ));
        }
        if self.upgrade.deadline_ms == 0 {
            return Err(invalid("upgrade.deadline_ms", "must be at least 1"));
        }
        self.validate_cluster()?;
        if self.storage.data_dir.as_os_str().is_empty() {
            return Err(invalid("storage.data_dir", "must not be empty"));
        }
        if !self.django.base_url.is_empty() {
            let url = &self.django.base_url;
            if !(url.starts_with("http://") || url.starts_with("https://"))
                || url.parse::<awc::http::Uri>().is_err()
            {
                return Err(invalid(
                    "django.base_url",
                    format!("`{url}` is not an http(s) URL"),
                ));
            }
        }
        positive("django.timeout_ms", self.django.timeout_ms)?;
        positive("bridge.batch_max", self.bridge.batch_max as u64)?;
        positive("bridge.flush_ms", self.bridge.flush_ms)?;
        positive("bridge.retry_base_ms", self.bridge.retry_base_ms)?;
        if self.bridge.retry_max_ms < self.bridge.retry_base_ms {
            return Err(invalid(
                "bridge.retry_max_ms",
                "must be at least bridge.retry_base_ms",
            ));
        }
        positive(
            "bridge.breaker_threshold",
            self.bridge.breaker_threshold as u64,
        )?;
        positive(
            "bridge.poison_max_attempts",
            self.bridge.poison_max_attempts as u64,
        )?;
        positive("bridge.calls_timeout_ms", self.bridge.calls_timeout_ms)?;
        positive(
            "bridge.calls_max_in_flight",
            self.bridge.calls_max_in_flight as u64,
        )?;
        positive(
            "bridge.calls_breaker_threshold",
            self.bridge.calls_breaker_threshold as u64,
        )?;
        positive(
            "bridge.calls_breaker_cooldown_ms",
            self.bridge.calls_breaker_cooldown_ms,
        )?;
        positive("supervisor.max_seconds", self.supervisor.max_seconds)?;
        positive(
            "supervisor.ticket_max_seconds",
            self.supervisor.ticket_max_seconds,
        )?;
        for (i, key) in self.auth.api_keys.iter().enumerate() {
            if self.auth.api_keys[..i].iter().any(|k| k.key == key.key) {
                return Err(invalid(
                    "auth.api_keys",
                    format!("key `{}` repeats another key's secret", key.name),
                ));
            }
            if key.name.trim().is_empty() {
                return Err(invalid("auth.api_keys", "every key needs a `name`"));
            }
            if key.key.contains(EXAMPLE_SECRET_MARKER) {
                return Err(invalid(
                    "auth.api_keys",
                    format!(
                        "key `{}` is the published example key; set a secret of your own \
                         (e.g. `openssl rand -hex 32`)",
                        key.name
                    ),
                ));
            }
            if key.key.len() < 16 {
                return Err(invalid(
                    "auth.api_keys",
                    format!("key `{}` is shorter than 16 characters", key.name),
                ));
            }
            if key.scopes.is_empty() {
                return Err(invalid(
                    "auth.api_keys",
                    format!("key `{}` has no scopes", key.name),
                ));
            }
        }
        if self.metrics.token.contains(EXAMPLE_SECRET_MARKER) {
            return Err(invalid(
                "metrics.token",
                "is the published example token; set a token of your own or leave it empty",
            ));
        }
        if self.auth.api_keys.is_empty() {
            for (key, addr) in [("api.bind", api_bind), ("chat.bind", chat_bind)] {
                if !addr.ip().is_loopback() {
                    return Err(invalid(
                        key,
                        format!(
                            "refusing to listen on non-loopback address {addr} without API keys; \
                             configure auth.api_keys or bind 127.0.0.1"
                        ),
                    ));
                }
            }
        }
        if self.testing.fault_injection && !api_bind.ip().is_loopback() {
            return Err(invalid(
                "testing.fault_injection",
                "fault injection is only allowed on a loopback bind",
            ));
        }
        Ok(())
    }

    pub fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.tickets.idle_timeout_ms)
    }
}

fn parse_bind(key: &str, value: &str) -> Result<SocketAddr, ConfigError> {
    value
        .parse::<SocketAddr>()
        .map_err(|e| invalid(key, format!("`{value}` is not a socket address ({e})")))
}

fn positive(key: &str, value: u64) -> Result<(), ConfigError> {
    if value == 0 {
        Err(invalid(key, "must be greater than zero"))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_defaults_are_valid() {
        let s = Settings::from_toml("").unwrap();
        assert_eq!(s.api.bind, "127.0.0.1:4000");
        assert_eq!(s.chat.bind, "127.0.0.1:4001");
        assert_eq!(s.bridge.batch_max, 100);
    }

    #[test]
    fn non_loopback_without_keys_is_refused_naming_the_key() {
        let err = Settings::from_toml("[api]\nbind = \"0.0.0.0:4000\"").unwrap_err();
        let text = err.to_string();
        assert!(text.contains("api.bind"), "{text}");
        assert!(text.contains("API keys"), "{text}");
    }

    #[test]
    fn non_loopback_with_keys_is_accepted() {
        let s = Settings::from_toml(
            "[api]\nbind = \"0.0.0.0:4000\"\n[chat]\nbind = \"0.0.0.0:4001\"\n\
             [[auth.api_keys]]\nname = \"django\"\nkey = \"0123456789abcdef\"\nscopes = [\"read\"]",
        )
        .unwrap();
        assert_eq!(s.auth.api_keys.len(), 1);
    }

    #[test]
    fn histories_must_fit_in_the_outbound_queue_and_frames_must_hold_escaped_messages() {
        let err = Settings::from_toml(
            "[sessions]\noutbound_queue_bytes = 65536\nhistory_max_bytes = 65537",
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("sessions.history_max_bytes"),
            "{err}"
        );
        let err = Settings::from_toml("[agents]\nhistory_max_bytes = 1048576").unwrap_err();
        assert!(
            err.to_string().contains("agents.history_max_bytes"),
            "{err}"
        );
        let err = Settings::from_toml("[sessions]\nmax_frame_bytes = 16384").unwrap_err();
        assert!(
            err.to_string().contains("sessions.max_frame_bytes"),
            "{err}"
        );
        assert!(Settings::from_toml(
            "[sessions]\nmax_frame_bytes = 16384\nmax_message_chars = 1000"
        )
        .is_ok());
    }

    #[test]
    fn cluster_settings_need_the_database_and_a_sound_node_name() {
        let err = Settings::from_toml("[cluster]\nnats_url = \"nats://n:4222\"").unwrap_err();
        assert!(err.to_string().contains("storage.postgres_url"), "{err}");
        let pg = "[storage]\npostgres_url = \"postgres://u@db/sb\"\n";
        let err =
            Settings::from_toml(&format!("{pg}[cluster]\nnats_url = \"http://n\"")).unwrap_err();
        assert!(err.to_string().contains("cluster.nats_url"), "{err}");
        let err = Settings::from_toml(&format!(
            "{pg}[cluster]\nnats_url = \"nats://n:4222\"\nnode_id = \"a.b\""
        ))
        .unwrap_err();
        assert!(err.to_string().contains("cluster.node_id"), "{err}");
        let err = Settings::from_toml(&format!(
            "{pg}[cluster]\nnats_url = \"nats://n:4222\"\nheartbeat_timeout_ms = 500"
        ))
        .unwrap_err();
        assert!(
            err.to_string().contains("cluster.heartbeat_timeout_ms"),
            "{err}"
        );
        let err = Settings::from_toml(&format!(
            "{pg}[cluster]\nnats_url = \"nats://n:4222\"\nnats_tls_cert_file = \"Cargo.toml\""
        ))
        .unwrap_err();
        assert!(
            err.to_string().contains("cluster.nats_tls_cert_file"),
            "{err}"
        );
        let err = Settings::from_toml(&format!(
            "{pg}[cluster]\nnats_url = \"nats://n:4222\"\nnats_nkey_file = \"/no/such/seed\""
        ))
        .unwrap_err();
        assert!(err.to_string().contains("cluster.nats_nkey_file"), "{err}");
        let ok = Settings::from_toml(&format!(
            "{pg}[cluster]\nnats_url = \"nats://n:4222\"\nnode_id = \"node-1\""
        ))
        .unwrap();
        assert!(ok.cluster.enabled());
        assert_eq!(ok.cluster.node_name(), "node-1");
    }

    #[test]
    fn chat_threads_and_postgres_settings_are_checked_naming_the_key() {
        let err = Settings::from_toml("[chat]\nthreads = 257").unwrap_err();
        assert!(err.to_string().contains("chat.threads"), "{err}");
        let s = Settings::from_toml("[chat]\nthreads = 0").unwrap();
        assert!(s.chat.thread_count() >= 1);
        assert_eq!(
            Settings::from_toml("[chat]\nthreads = 3")
                .unwrap()
                .chat
                .thread_count(),
            3
        );
        let err = Settings::from_toml("[storage]\npostgres_url = \"mysql://x\"").unwrap_err();
        assert!(err.to_string().contains("storage.postgres_url"), "{err}");
        assert!(
            Settings::from_toml("[storage]\npostgres_url = \"postgres://u@db:5432/sb\"").is_ok()
        );
    }

    #[test]
    fn an_outbox_lease_shorter_than_a_django_call_is_refused_naming_the_key() {
        let pg = "[storage]\npostgres_url = \"postgres://u@db/sb\"\n";
        let err = Settings::from_toml(&format!("{pg}outbox_lease_ms = 5000")).unwrap_err();
        assert!(err.to_string().contains("storage.outbox_lease_ms"), "{err}");
        assert!(Settings::from_toml(&format!("{pg}outbox_lease_ms = 5001")).is_ok());
        assert!(
            Settings::from_toml("[storage]\noutbox_lease_ms = 5000").is_ok(),
            "no lease on SQLite"
        );
        let err = Settings::from_toml("[storage]\noutbox_poll_ms = 0").unwrap_err();
        assert!(err.to_string().contains("storage.outbox_poll_ms"), "{err}");
    }

    #[test]
    fn an_invalid_log_level_is_refused_naming_the_key() {
        let err = Settings::from_toml("[log]\nlevel = \"verbose[\"").unwrap_err();
        assert!(err.to_string().contains("log.level"), "{err}");
        assert!(Settings::from_toml("[log]\nlevel = \"warn,switchboard=debug\"").is_ok());
    }

    #[test]
    fn warning_is_read_as_warn_and_other_unknown_level_names_are_refused() {
        let level = |l: &str| Settings::from_toml(&format!("[log]\nlevel = \"{l}\""));
        for (written, filter) in [
            ("warning", "warn"),
            ("WARNING", "warn"),
            ("info,actix_web=warning", "info,actix_web=warn"),
            ("warn,switchboard=debug", "warn,switchboard=debug"),
            ("DEBUG", "DEBUG"),
            ("2", "2"),
        ] {
            let s = level(written).unwrap_or_else(|e| panic!("{written}: {e}"));
            assert_eq!(s.log.filter(), filter);
        }
        // As `tracing` would read it, `warning` is a target: every other log would go quiet.
        let quiet = tracing_subscriber::EnvFilter::try_new("warning").unwrap();
        assert_eq!(
            quiet.max_level_hint(),
            Some(tracing::level_filters::LevelFilter::TRACE)
        );
        let warn = tracing_subscriber::EnvFilter::try_new(level("warning").unwrap().log.filter());
        assert_eq!(
            warn.unwrap().max_level_hint(),
            Some(tracing::level_filters::LevelFilter::WARN)
        );

        for (written, hint) in [
            ("warnn", "did you mean `warn`?"),
            ("warnings", "did you mean `warn`?"),
            (
                "information",
                "the levels are off, error, warn, info, debug, trace",
            ),
            ("info,verbose", "the levels are"),
        ] {
            let err = level(written).unwrap_err().to_string();
            assert!(err.contains("log.level"), "{written}: {err}");
            assert!(err.contains(hint), "{written}: {err}");
        }
    }

    #[test]
    fn the_same_key_secret_twice_is_refused() {
        let err = Settings::from_toml(
            "[[auth.api_keys]]\nname = \"a\"\nkey = \"0123456789abcdef\"\nscopes = [\"read\"]\n\
             [[auth.api_keys]]\nname = \"b\"\nkey = \"0123456789abcdef\"\nscopes = [\"write\"]",
        )
        .unwrap_err();
        assert!(err.to_string().contains("auth.api_keys"), "{err}");
        assert!(err.to_string().contains("`b`"), "{err}");
    }

    /// The shipped example, as an operator copies it.
    const EXAMPLE: &str = include_str!("../config/production.example.toml");

    #[test]
    fn the_published_example_keys_are_refused() {
        for (what, toml) in [
            (
                "auth.api_keys",
                "[[auth.api_keys]]\nname = \"django\"\n\
                 key = \"change-me-django-key-0000000000000000\"\nscopes = [\"read\"]",
            ),
            (
                "metrics.token",
                "[metrics]\ntoken = \"change-me-metrics-token\"",
            ),
        ] {
            let err = Settings::from_toml(toml).unwrap_err().to_string();
            assert!(err.contains(what), "{err}");
            assert!(err.contains("example"), "{err}");
        }
    }

    #[test]
    fn the_example_config_takes_its_key_from_the_environment_and_names_it_when_missing() {
        let mut s = Settings::parse_toml(EXAMPLE).unwrap();
        let err = s.resolve_secrets(|_| None).unwrap_err().to_string();
        assert!(err.contains("SWITCHBOARD_API_KEY"), "{err}");
        let secret = "0123456789abcdef0123456789abcdef";
        s.resolve_secrets(|name| (name == "SWITCHBOARD_API_KEY").then(|| secret.to_string()))
            .unwrap();
        s.validate().unwrap();
        assert_eq!(s.auth.api_keys[0].key, secret);
    }

    #[test]
    fn a_key_given_twice_over_is_refused() {
        let mut s = Settings::parse_toml(
            "[[auth.api_keys]]\nname = \"a\"\nkey = \"0123456789abcdef\"\nkey_env = \"K\"\n\
             scopes = [\"read\"]",
        )
        .unwrap();
        let err = s.resolve_secrets(|_| Some("x".into())).unwrap_err();
        assert!(err.to_string().contains("key_env"), "{err}");
    }

    #[test]
    fn bad_values_name_their_key() {
        let err = Settings::from_toml("[bridge]\nbatch_max = 0").unwrap_err();
        assert!(err.to_string().contains("bridge.batch_max"), "{err}");
        let err = Settings::from_toml("[django]\nbase_url = \"ftp://x\"").unwrap_err();
        assert!(err.to_string().contains("django.base_url"), "{err}");
        for key in [
            "poison_max_attempts",
            "calls_timeout_ms",
            "calls_max_in_flight",
            "calls_breaker_threshold",
            "calls_breaker_cooldown_ms",
        ] {
            let err = Settings::from_toml(&format!("[bridge]\n{key} = 0")).unwrap_err();
            assert!(err.to_string().contains(&format!("bridge.{key}")), "{err}");
        }
        let err = Settings::from_toml("[bridge]\nflush_ms = \"soon\"").unwrap_err();
        assert!(err.to_string().contains("flush_ms"), "{err}");
        let err = Settings::from_toml("[storage]\nsynchronous = \"sometimes\"").unwrap_err();
        assert!(err.to_string().contains("synchronous"), "{err}");
    }

    #[test]
    fn hibernation_must_come_before_passivation_or_be_off() {
        let err =
            Settings::from_toml("[tickets]\nidle_timeout_ms = 1000\nhibernate_after_ms = 1000")
                .unwrap_err();
        assert!(
            err.to_string().contains("tickets.hibernate_after_ms"),
            "{err}"
        );
        let s = Settings::from_toml("[tickets]\nhibernate_after_ms = 0").unwrap();
        assert_eq!(s.tickets.hibernate_after_ms, 0);
        let err = Settings::from_toml("[tickets]\nidle_timeout_ms = 4000000000").unwrap_err();
        assert!(err.to_string().contains("tickets.idle_timeout_ms"), "{err}");
    }
}
