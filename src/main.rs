//! The `switchboard` binary: parse the command line, load config, start logging, run the tree until
//! SIGTERM or SIGINT, or until a new process takes over (`--takeover`, README "Upgrading").

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Parser;
use switchboard::upgrade::{self, Outcome, Upgrade};

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
    /// Take over from the process serving this data dir (its control socket): its listening
    /// sockets and every chat and agent connection, without disconnecting anyone. It exits once
    /// this one is ready; if this one is not ready within upgrade.deadline_ms, it serves on.
    #[arg(long)]
    takeover: bool,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let settings = switchboard::config::Settings::load(cli.config.as_deref())?;
    switchboard::telemetry::init(&settings.log);
    let control = settings.upgrade.control_path(&settings.storage.data_dir);
    let (mut listeners, mut inherited, ready) = if cli.takeover {
        let takeover = upgrade::take_over(&control, settings.upgrade.deadline())
            .context("taking over from the running process")?;
        (
            takeover.listeners,
            takeover.connections,
            Some(takeover.ready),
        )
    } else {
        (switchboard::Listeners::bind(&settings)?, Vec::new(), None)
    };
    let mut replace = cli.takeover;
    let mut rollback = false;
    loop {
        let requests = match upgrade::listen(&control, replace) {
            Ok(requests) => requests,
            Err(e) => {
                if let Some(ready) = &ready {
                    ready.failed(&e);
                }
                return Err(e).context("control socket");
            }
        };
        // Kept for a rollback: the sockets stay open in the kernel while this process holds them.
        let kept = listeners
            .try_clone()
            .context("keeping the listening sockets")?;
        let run = Upgrade {
            requests: Some(requests),
            inherited: std::mem::take(&mut inherited),
            ready: ready.clone(),
            rollback,
        };
        let outcome = actix::System::new().block_on(switchboard::run_with(
            listeners,
            settings.clone(),
            shutdown_signal(),
            run,
        ));
        match outcome {
            Err(e) => {
                if let Some(ready) = &ready {
                    ready.failed(&e);
                }
                return Err(e.into());
            }
            Ok(Outcome::Stopped) => return Ok(()),
            Ok(Outcome::HandOver {
                successor,
                connections,
            }) => match successor.hand_over(&kept, &connections, settings.upgrade.deadline()) {
                Ok(()) => return Ok(()),
                Err(e) => {
                    tracing::error!(error = %e, connections = connections.len(), "upgrade rolled back: serving on");
                    listeners = kept;
                    inherited = connections;
                    replace = true;
                    rollback = true;
                }
            },
        }
    }
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
