//! Logging: a `tracing` subscriber writing JSON (or text) lines to stdout, and a panic hook that turns
//! panics into structured error events so a crashed actor's cause lands in the same log stream.

use tracing_subscriber::{fmt, EnvFilter};

use crate::config::{canonical_log_filter, LogFormat, LogSettings};

/// Installs the global subscriber and the panic hook. `RUST_LOG`, when set, overrides `log.level`;
/// in both, a level alias (`warning`) reads as the level it names.
pub fn init(settings: &LogSettings) {
    init_subscriber(settings);
    install_panic_hook();
}

/// Installs only the subscriber (test harnesses keep their own panic reporting).
pub fn init_subscriber(settings: &LogSettings) {
    let filter = std::env::var(EnvFilter::DEFAULT_ENV)
        .ok()
        .and_then(|env| EnvFilter::try_new(canonical_log_filter(&env)).ok())
        .or_else(|| EnvFilter::try_new(settings.filter()).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    let builder = fmt().with_env_filter(filter).with_target(true);
    let result = match settings.format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
        LogFormat::Text => builder.try_init(),
    };
    // A second init (tests starting several servers in one process) keeps the first subscriber.
    let _ = result;
}

/// Routes panic messages through `tracing`; supervisors log the restart that follows.
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let location = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        tracing::error!(panic = %panic_message(info.payload()), %location, "panic");
    }));
}

/// The text of a panic payload (`&str` or `String`), or a placeholder.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_string()
    }
}
