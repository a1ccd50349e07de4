//! Typed settings, loaded once at start and validated eagerly.
//!
//! Layers, lowest first: the embedded `config/default.toml`, an optional `--config FILE`, then
//! environment variables `SWITCHBOARD__SECTION__KEY`. Every error names the offending key.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// The embedded defaults; also the documentation of every key.
pub const DEFAULT_TOML: &str = include_str!("../config/default.toml");

/// Why the settings could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration could not be read: {0}")]
    Load(#[from] config::ConfigError),
    #[error("invalid configuration key `{key}`: {message}")]
    Invalid { key: &'static str, message: String },
}

/// Largest idle timeout or sweep interval: 2^31 - 1 ms, about 24.8 days.
const MAX_IDLE_MS: u64 = i32::MAX as u64;

fn invalid(key: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        message: message.into(),
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub tickets: TicketSettings,
    pub chat: ChatSettings,
    pub storage: StorageSettings,
    pub django: DjangoSettings,
    pub bridge: BridgeSettings,
    pub supervisor: SupervisorSettings,
    pub auth: AuthSettings,
    pub metrics: MetricsSettings,
    pub log: LogSettings,
    pub shutdown: ShutdownSettings,
    pub testing: TestingSettings,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TicketSettings {
    pub bind: String,
    pub http_workers: usize,
    pub max_connections: usize,
    pub idle_timeout_ms: u64,
    pub hibernate_after_ms: u64,
    pub sweep_interval_ms: u64,
    pub max_body_bytes: usize,
    pub list_default_limit: u32,
    pub list_max_limit: u32,
    pub max_subject_chars: usize,
    pub max_description_chars: usize,
    pub max_comment_chars: usize,
    pub max_tags: usize,
    pub max_tag_chars: usize,
    pub max_name_chars: usize,
    pub request_timeout_ms: u64,
    pub registry_queue_depth: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChatSettings {
    pub bind: String,
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
    pub drain_timeout_ms: u64,
    pub queue_depth: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SupervisorSettings {
    pub max_restarts: u32,
    pub max_seconds: u64,
    pub ticket_max_restarts: u32,
    pub ticket_max_seconds: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    Read,
    Write,
    Admin,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKey {
    pub name: String,
    pub key: String,
    pub scopes: Vec<Scope>,
}

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

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShutdownSettings {
    pub grace_ms: u64,
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
        let settings: Settings = builder.build()?.try_deserialize()?;
        settings.validate()?;
        Ok(settings)
    }

    /// The embedded defaults alone, with overrides from a TOML string (tests and tools).
    pub fn from_toml(overrides: &str) -> Result<Self, ConfigError> {
        let settings: Settings = config::Config::builder()
            .add_source(config::File::from_str(
                DEFAULT_TOML,
                config::FileFormat::Toml,
            ))
            .add_source(config::File::from_str(overrides, config::FileFormat::Toml))
            .build()?
            .try_deserialize()?;
        settings.validate()?;
        Ok(settings)
    }

    /// Checks what serde cannot: addresses, ranges, and the secure-by-default rule.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let tickets_bind = parse_bind("tickets.bind", &self.tickets.bind)?;
        let chat_bind = parse_bind("chat.bind", &self.chat.bind)?;
        positive("tickets.http_workers", self.tickets.http_workers as u64)?;
        positive(
            "tickets.max_connections",
            self.tickets.max_connections as u64,
        )?;
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
        positive("tickets.max_body_bytes", self.tickets.max_body_bytes as u64)?;
        positive("tickets.list_max_limit", self.tickets.list_max_limit as u64)?;
        positive(
            "tickets.request_timeout_ms",
            self.tickets.request_timeout_ms,
        )?;
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
        positive("supervisor.max_seconds", self.supervisor.max_seconds)?;
        positive(
            "supervisor.ticket_max_seconds",
            self.supervisor.ticket_max_seconds,
        )?;
        for key in &self.auth.api_keys {
            if key.name.trim().is_empty() {
                return Err(invalid("auth.api_keys", "every key needs a `name`"));
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
        if self.auth.api_keys.is_empty() {
            for (key, addr) in [("tickets.bind", tickets_bind), ("chat.bind", chat_bind)] {
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
        if self.testing.fault_injection && !tickets_bind.ip().is_loopback() {
            return Err(invalid(
                "testing.fault_injection",
                "fault injection is only allowed on a loopback bind",
            ));
        }
        Ok(())
    }

    pub fn tickets_bind(&self) -> SocketAddr {
        // validate() has proven it parses.
        parse_bind("tickets.bind", &self.tickets.bind).expect("validated tickets.bind")
    }

    pub fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.tickets.idle_timeout_ms)
    }
}

fn parse_bind(key: &'static str, value: &str) -> Result<SocketAddr, ConfigError> {
    value
        .parse::<SocketAddr>()
        .map_err(|e| invalid(key, format!("`{value}` is not a socket address ({e})")))
}

fn positive(key: &'static str, value: u64) -> Result<(), ConfigError> {
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
        assert_eq!(s.tickets.bind, "127.0.0.1:4000");
        assert_eq!(s.chat.bind, "127.0.0.1:4001");
        assert_eq!(s.bridge.batch_max, 100);
    }

    #[test]
    fn non_loopback_without_keys_is_refused_naming_the_key() {
        let err = Settings::from_toml("[tickets]\nbind = \"0.0.0.0:4000\"").unwrap_err();
        let text = err.to_string();
        assert!(text.contains("tickets.bind"), "{text}");
        assert!(text.contains("API keys"), "{text}");
    }

    #[test]
    fn non_loopback_with_keys_is_accepted() {
        let s = Settings::from_toml(
            "[tickets]\nbind = \"0.0.0.0:4000\"\n[chat]\nbind = \"0.0.0.0:4001\"\n\
             [[auth.api_keys]]\nname = \"django\"\nkey = \"0123456789abcdef\"\nscopes = [\"read\"]",
        )
        .unwrap();
        assert_eq!(s.auth.api_keys.len(), 1);
    }

    #[test]
    fn bad_values_name_their_key() {
        let err = Settings::from_toml("[bridge]\nbatch_max = 0").unwrap_err();
        assert!(err.to_string().contains("bridge.batch_max"), "{err}");
        let err = Settings::from_toml("[django]\nbase_url = \"ftp://x\"").unwrap_err();
        assert!(err.to_string().contains("django.base_url"), "{err}");
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
