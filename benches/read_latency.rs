//! Read latency while writes flow: list and history reads against the store while ticket updates run
//! at a set rate or as fast as the store takes them.
//!
//! ```text
//! cargo bench --bench read_latency -- --rate 5000 --secs 10
//! cargo bench --bench read_latency -- --rate 0 --secs 10      # updates at full speed
//! ```
//!
//! It drives [`SqliteStore`] directly (no HTTP), opened as the server opens it (default tuning,
//! `storage.synchronous = full`, 2 readers, folds of up to 32,768 rows), in a fresh temporary folder.
//! It creates `--tickets` tickets, then one thread updates them (open loop at `--rate` updates/s, or
//! `--conns` updates in flight at all times with `--rate 0`) while another reads, one read at a time
//! every `--read-every-ms`, in turn a list (`status=open`, `--list-limit`, first page or a page after
//! a random ticket), a ticket's history (first `--list-limit` events) and a read of the empty dead
//! letters (a baseline: the round trip through a reader thread with next to no work); `--read-every-ms 0`
//! leaves reads out, to compare update throughput alone. Each thread has its own
//! current-thread runtime, as the server's ticket arbiter and HTTP workers are separate threads.
//! Without arguments (as under `cargo test --all-targets`) it runs a one-second smoke version.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use serde_json::json;
use switchboard::config::{StorageSettings, Synchronous};
use switchboard::domain::ids::{EventId, TicketId};
use switchboard::domain::status::Status;
use switchboard::domain::ticket::{EventKind, Priority, Source, Ticket, TicketEvent};
use switchboard::store::sqlite::{SqliteStore, Tuning};
use switchboard::store::{now, Outbox, TicketFilter, TicketStore, TicketWrite};

#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser, Debug, Clone)]
struct Args {
    /// Updates per second; 0 runs them as fast as the store takes them (`--conns` in flight).
    #[arg(long, default_value_t = 5000)]
    rate: u64,
    /// Updates in flight with `--rate 0`.
    #[arg(long, default_value_t = 256)]
    conns: usize,
    #[arg(long, default_value_t = 10_000)]
    tickets: usize,
    /// Measured seconds, after `--warmup`.
    #[arg(long, default_value_t = 10)]
    secs: u64,
    #[arg(long, default_value_t = 3)]
    warmup: u64,
    /// Pause between two reads; 0: no reads (update throughput alone).
    #[arg(long, default_value_t = 5)]
    read_every_ms: u64,
    #[arg(long, default_value_t = 50)]
    list_limit: u32,
    /// `storage.synchronous`: full or normal.
    #[arg(long, default_value = "full")]
    sync: String,
    /// Short smoke run (also what runs without arguments).
    #[arg(long)]
    test: bool,
    /// Ignored: `cargo bench` passes it.
    #[arg(long, hide = true)]
    bench: bool,
}

fn ticket(i: usize) -> Ticket {
    let at = now();
    Ticket {
        id: TicketId::new(),
        subject: format!("Ticket {i}"),
        description: "Something is broken and needs looking at.".into(),
        status: Status::Open,
        priority: Priority::Normal,
        requester: "ann@example.com".into(),
        assignee: None,
        tags: vec!["printer".into()],
        source: Source::Api,
        chat_session_id: None,
        created_at: at,
        updated_at: at,
        version: 1,
    }
}

fn write(t: &Ticket, kind: EventKind, changes: serde_json::Value) -> TicketWrite {
    TicketWrite {
        ticket: t.clone(),
        event: TicketEvent {
            event_id: EventId::new(),
            ticket_id: t.id,
            kind,
            actor: "load".into(),
            at: t.updated_at,
            version: t.version,
            changes,
        },
        comment: None,
        request_id: None,
    }
}

/// The next version of `t`: its status and priority move on, so lists by status see tickets come
/// and go while the journal holds them.
fn updated(t: &Ticket) -> (Ticket, serde_json::Value) {
    let mut next = t.clone();
    next.version += 1;
    next.updated_at = now();
    next.status = match t.version % 3 {
        0 => Status::Open,
        1 => Status::InProgress,
        _ => Status::Pending,
    };
    next.priority = if t.version % 2 == 0 {
        Priority::High
    } else {
        Priority::Normal
    };
    let changes = json!({"status": {"from": t.status.as_str(), "to": next.status.as_str()}});
    (next, changes)
}

/// Latencies in microseconds.
#[derive(Default)]
struct Samples(Vec<u64>);

impl Samples {
    fn add(&mut self, d: Duration) {
        self.0.push(d.as_micros() as u64);
    }

    fn summary(&mut self) -> String {
        if self.0.is_empty() {
            return "no samples".into();
        }
        self.0.sort_unstable();
        let at = |q: f64| {
            let i = ((self.0.len() as f64 * q).ceil() as usize).clamp(1, self.0.len()) - 1;
            self.0[i] as f64 / 1000.0
        };
        format!(
            "n={} p50={:.2}ms p99={:.2}ms max={:.2}ms",
            self.0.len(),
            at(0.50),
            at(0.99),
            at(1.0)
        )
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// What the update and read threads share.
#[derive(Clone)]
struct Run {
    store: Arc<SqliteStore>,
    args: Args,
    /// Samples count only while set (after the warm-up).
    measuring: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    /// Updates done while measuring.
    done: Arc<AtomicU64>,
}

/// Updates until `stop`, counting those done while `measuring`; returns their latencies.
async fn update_loop(run: Run, pool: Arc<Mutex<VecDeque<Ticket>>>) -> anyhow::Result<Samples> {
    let samples = Arc::new(Mutex::new(Samples::default()));
    let one = {
        let (run, samples) = (run.clone(), samples.clone());
        move || {
            let (run, pool, samples) = (run.clone(), pool.clone(), samples.clone());
            async move {
                let Some(t) = pool.lock().expect("pool").pop_front() else {
                    anyhow::bail!("every ticket has an update in flight");
                };
                let (next, changes) = updated(&t);
                let started = Instant::now();
                let r = run
                    .store
                    .update(write(&next, EventKind::Updated, changes))
                    .await;
                let took = started.elapsed();
                r?;
                if run.measuring.load(Ordering::Relaxed) {
                    samples.lock().expect("samples").add(took);
                    run.done.fetch_add(1, Ordering::Relaxed);
                }
                pool.lock().expect("pool").push_back(next);
                anyhow::Ok(())
            }
        }
    };
    let (args, stop) = (&run.args, &run.stop);
    let mut tasks = tokio::task::JoinSet::new();
    if args.rate == 0 {
        for _ in 0..args.conns {
            let (one, stop) = (one.clone(), run.stop.clone());
            tasks.spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    one().await?;
                }
                anyhow::Ok(())
            });
        }
    } else {
        // Open loop: every millisecond, as many updates as the rate owes by then.
        let started = Instant::now();
        let mut sent = 0u64;
        let mut tick = tokio::time::interval(Duration::from_millis(1));
        while !stop.load(Ordering::Relaxed) {
            tick.tick().await;
            let owed = (started.elapsed().as_secs_f64() * args.rate as f64) as u64;
            while sent < owed {
                sent += 1;
                tasks.spawn(one());
            }
            while let Some(r) = tasks.try_join_next() {
                r??;
            }
        }
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    let samples = std::mem::take(&mut *samples.lock().expect("samples"));
    Ok(samples)
}

/// Latencies of each kind of read.
#[derive(Default)]
struct Reads {
    lists: Samples,
    histories: Samples,
    /// Reads of the (empty) dead letters: the round trip through a reader thread with next to no
    /// work, to tell waiting for a core from a read's own work.
    baseline: Samples,
}

/// Reads one at a time until `stop`, in turn a list, a history and a load; returns the latencies
/// taken while `measuring`.
async fn read_loop(run: Run, ids: Vec<TicketId>) -> anyhow::Result<Reads> {
    let (store, args, measuring, stop) = (&run.store, &run.args, &run.measuring, &run.stop);
    let mut reads = Reads::default();
    if args.read_every_ms == 0 {
        return Ok(reads);
    }
    let mut n = 0usize;
    let mut tick = tokio::time::interval(Duration::from_millis(args.read_every_ms));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        n += 1;
        // A cheap spread over the tickets, without a random number generator.
        let id = ids[n.wrapping_mul(7919) % ids.len()];
        let started = Instant::now();
        let samples = match n % 3 {
            0 => {
                let filter = TicketFilter {
                    status: Some(Status::Open),
                    after: (n % 2 == 0).then_some(id),
                    limit: args.list_limit,
                    ..TicketFilter::default()
                };
                store.list(filter).await?;
                &mut reads.lists
            }
            1 => {
                store.events(id, 0, args.list_limit).await?;
                &mut reads.histories
            }
            _ => {
                store.dead_letters(1).await?;
                &mut reads.baseline
            }
        };
        if measuring.load(Ordering::Relaxed) {
            samples.add(started.elapsed());
        }
    }
    Ok(reads)
}

fn main() -> anyhow::Result<()> {
    let mut args = Args::parse();
    // `cargo bench` passes `--bench`; nothing else given means a smoke run.
    args.test |= std::env::args().skip(1).all(|a| a == "--bench");
    if args.test {
        args.tickets = args.tickets.min(500);
        args.secs = 1;
        args.warmup = 0;
        args.rate = args.rate.min(1000);
    }
    let synchronous = match args.sync.as_str() {
        "full" => Synchronous::Full,
        "normal" => Synchronous::Normal,
        other => anyhow::bail!("--sync {other}: expected full or normal"),
    };
    let dir = tempfile::tempdir()?;
    let settings = StorageSettings {
        data_dir: dir.path().to_path_buf(),
        synchronous,
        readers: 2,
        fold_max_rows: 32_768,
        postgres_url: String::new(),
        postgres_pool: 1,
        postgres_connect_timeout_ms: 1,
        outbox_lease_ms: 30_000,
        outbox_poll_ms: 1000,
    };
    let store = Arc::new(SqliteStore::open_tuned(&settings, Tuning::default())?);

    let created = Instant::now();
    let tickets: Vec<Ticket> = (0..args.tickets).map(ticket).collect();
    runtime().block_on(async {
        for chunk in tickets.chunks(256) {
            let writes = chunk
                .iter()
                .map(|t| store.create(write(t, EventKind::Created, json!({"created": true}))));
            for r in futures_util::future::join_all(writes).await {
                r?;
            }
        }
        anyhow::Ok(())
    })?;
    eprintln!(
        "created {} tickets in {:.1}s",
        args.tickets,
        created.elapsed().as_secs_f64()
    );

    let ids: Vec<TicketId> = tickets.iter().map(|t| t.id).collect();
    let pool = Arc::new(Mutex::new(tickets.into_iter().collect::<VecDeque<_>>()));
    let run = Run {
        store: store.clone(),
        args: args.clone(),
        measuring: Arc::new(AtomicBool::new(false)),
        stop: Arc::new(AtomicBool::new(false)),
        done: Arc::new(AtomicU64::new(0)),
    };
    let updater = {
        let run = run.clone();
        std::thread::Builder::new()
            .name("load-updates".into())
            .spawn(move || runtime().block_on(update_loop(run, pool)))?
    };
    let reader = {
        let run = run.clone();
        std::thread::Builder::new()
            .name("load-reads".into())
            .spawn(move || runtime().block_on(read_loop(run, ids)))?
    };
    let (measuring, stop, done) = (&run.measuring, &run.stop, &run.done);
    std::thread::sleep(Duration::from_secs(args.warmup));
    measuring.store(true, Ordering::Relaxed);
    let started = Instant::now();
    std::thread::sleep(Duration::from_secs(args.secs));
    measuring.store(false, Ordering::Relaxed);
    let elapsed = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let mut updates = updater
        .join()
        .map_err(|_| anyhow::anyhow!("the update thread panicked"))??;
    let mut reads = reader
        .join()
        .map_err(|_| anyhow::anyhow!("the read thread panicked"))??;
    let rate = done.load(Ordering::Relaxed) as f64 / elapsed;
    let target = match args.rate {
        0 => format!("full speed, {} in flight", args.conns),
        r => format!("{r}/s"),
    };
    println!("updates ({target}): {rate:.0}/s, {}", updates.summary());
    println!(
        "list status=open limit={}: {}",
        args.list_limit,
        reads.lists.summary()
    );
    println!(
        "history limit={}: {}",
        args.list_limit,
        reads.histories.summary()
    );
    println!("baseline (dead letters): {}", reads.baseline.summary());
    runtime().block_on(store.close());
    Ok(())
}
