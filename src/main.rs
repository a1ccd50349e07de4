//! The `switchboard` binary: parse the command line, load config, start logging, run the tree until
//! SIGTERM or SIGINT.

use std::path::PathBuf;

use clap::Parser;

// jemalloc: the request path allocates on one thread and frees on another (HTTP worker, ticket
// arbiter, store threads); see README, "Crates and why".
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Real-time edge of the support product: ticket REST API, live chat, Django bridge, supervision tree.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// A TOML file layered over the embedded defaults (env SWITCHBOARD__* overrides both).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let settings = switchboard::config::Settings::load(cli.config.as_deref())?;
    switchboard::telemetry::init(&settings.log);
    let listeners = switchboard::Listeners::bind(&settings)?;
    actix::System::new()
        .block_on(async move { switchboard::run(listeners, settings, shutdown_signal()).await })?;
    Ok(())
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM; only Ctrl-C will stop the server");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
    }
}
