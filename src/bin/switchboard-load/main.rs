//! `switchboard-load`: the load tool shipped with Switchboard, one binary for every load figure in
//! BENCHMARKS.md.
//!
//! - `rest` ([`rest`]): the ticket API under durable creates and updates, and ticket-actor memory.
//! - `chat` ([`chat`]): customer sessions over the real `switchboard.v1` protocol, spread over
//!   loopback source addresses and worker processes; round trips, losses and server memory.
//! - `fake-django` ([`fake_django`]): a fast stand-in for Django's AI and sync endpoints, so the
//!   AI hop is measured without Django being the bottleneck.
//!
//! Every mode starts what it needs itself (the `switchboard` binary beside this one, by default),
//! is bounded in time, and stops by itself.

mod chat;
mod fake_django;
mod procs;
mod raw_ws;
mod rest;
mod server;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "switchboard-load",
    version,
    about = "Load generator for Switchboard"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The ticket REST API: creates, updates, actor memory, flat memory over many tickets.
    Rest(rest::RestArgs),
    /// Live chat: N customer sessions, messages at a rate, round trips and server memory.
    Chat(Box<chat::ChatArgs>),
    /// A fast fake Django answering the AI and sync endpoints.
    FakeDjango(fake_django::FakeDjangoArgs),
    /// Compares two `chat` reports: switchboard ÷ baseline.
    Compare(chat::report::CompareArgs),
    /// One worker process of `chat` (started by it; speaks line-delimited JSON on stdin/stdout).
    #[command(hide = true)]
    Worker(chat::worker::WorkerArgs),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Rest(a) => rest::run(a),
        Command::Chat(a) => chat::run(*a),
        Command::FakeDjango(a) => fake_django::run(a),
        Command::Compare(a) => chat::report::compare(a),
        Command::Worker(a) => chat::worker::run(a),
    }
}
