//! Micro-benchmarks of live chat's per-message paths, through the public library API:
//!
//! * `protocol`: a `message.send` frame parsed at the edge (`chat::protocol::parse`), and the
//!   two frames that answer it written (`ServerFrame::to_text`: the ack and an AI message), plus
//!   the WebSocket framing around them (`transport::frame` decode of a masked client frame,
//!   encode of a server frame).
//! * `registry`: routing by key in a keyed supervisor holding 10,000 live children
//!   (`supervisor::keyed::KeyedChildren::get`, what a resume or any message routed to a session
//!   by id pays), and the same key's `route` when the child is live.
//! * `actor_hop`: one request–reply to an actix actor on the same arbiter (`Addr::send` + await),
//!   the cost of every hop between a connection, its session, the registry and the bridge.
//!
//! Run with `cargo bench --bench chat_paths`; `cargo test --benches` runs each once as a check.

use std::hint::black_box;
use std::time::{Duration, Instant};

use actix::prelude::*;
use criterion::{criterion_group, criterion_main, Criterion};
use switchboard::chat::protocol::{self, Author, ServerFrame};
use switchboard::supervisor::keyed::{
    ChildExited, Hibernate, KeyedChildren, KeyedConfig, Passivate,
};
use switchboard::supervisor::supervised::Restart;
use switchboard::transport::frame::{self, Opcode, Role};

const SEND: &str =
    r#"{"type":"message.send","client_id":"m-1042","text":"My invoice shows the wrong amount."}"#;

fn bench_protocol(c: &mut Criterion) {
    let mut group = c.benchmark_group("protocol");
    group
        .sample_size(30)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    group.bench_function("parse_message_send", |b| {
        b.iter(|| protocol::parse(black_box(SEND)))
    });
    let ack = ServerFrame::Ack {
        client_id: "m-1042".into(),
        seq: 17,
    };
    let reply = ServerFrame::Message {
        seq: 18,
        from: Author::Ai,
        text: "I can help with that. Which invoice number is it?".into(),
        at: chrono::Utc::now(),
        client_id: None,
        name: None,
        offers: Vec::new(),
    };
    group.bench_function("to_text_ack", |b| b.iter(|| black_box(&ack).to_text()));
    group.bench_function("to_text_ai_message", |b| {
        b.iter(|| black_box(&reply).to_text())
    });
    let masked = frame::encode(true, Opcode::Text, SEND.as_bytes(), Some([7, 1, 9, 3]));
    group.bench_function("frame_decode_masked", |b| {
        b.iter(|| frame::decode(black_box(&masked), Role::Server, 16 * 1024))
    });
    let text = reply.to_text();
    group.bench_function("frame_encode", |b| {
        b.iter(|| frame::encode(true, Opcode::Text, black_box(text.as_bytes()), None))
    });
    group.finish();
}

/// A child that does nothing: what the registry's map costs is under test, not the child.
struct Child;

impl Actor for Child {
    type Context = Context<Self>;
}

impl actix::Supervised for Child {}

impl Handler<Passivate> for Child {
    type Result = ();
    fn handle(&mut self, _: Passivate, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}

impl Handler<Hibernate> for Child {
    type Result = ();
    fn handle(&mut self, _: Hibernate, _: &mut Context<Self>) {}
}

/// Owns the keyed children, as a registry does.
struct Owner;

impl Actor for Owner {
    type Context = Context<Self>;
}

impl Handler<ChildExited<u64, Child>> for Owner {
    type Result = ();
    fn handle(&mut self, _: ChildExited<u64, Child>, _: &mut Context<Self>) {}
}

#[derive(Message)]
#[rtype(result = "u64")]
struct Echo(u64);

impl Handler<Echo> for Owner {
    type Result = u64;
    fn handle(&mut self, msg: Echo, _: &mut Context<Self>) -> u64 {
        msg.0
    }
}

fn bench_registry_and_hop(c: &mut Criterion) {
    let system = System::new();
    let (mut children, owner) = system.block_on(async {
        let owner = Owner.start();
        let mut children: KeyedChildren<u64, Child> = KeyedChildren::new(KeyedConfig {
            kind: "bench",
            supervisor: "bench",
            restart: Restart::Transient,
            idle_timeout: Duration::ZERO,
            hibernate_after: Duration::ZERO,
            max_restarts: 100,
            max_window: Duration::from_secs(10),
        });
        children.attach(owner.clone().recipient());
        for k in 0..10_000u64 {
            children.route(k, || Child);
        }
        (children, owner)
    });
    let mut group = c.benchmark_group("registry");
    group
        .sample_size(30)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    let mut k = 0u64;
    group.bench_function("get_of_10000", |b| {
        b.iter(|| {
            k = (k + 7919) % 10_000;
            children.get(black_box(k))
        })
    });
    group.bench_function("route_live_of_10000", |b| {
        b.iter(|| {
            k = (k + 7919) % 10_000;
            children.route(black_box(k), || Child).0
        })
    });
    group.finish();

    let mut group = c.benchmark_group("actor_hop");
    group
        .sample_size(30)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    group.bench_function("send_and_reply", |b| {
        b.iter_custom(|iters| {
            let owner = owner.clone();
            system.block_on(async move {
                let start = Instant::now();
                for i in 0..iters {
                    black_box(owner.send(Echo(i)).await.ok());
                }
                start.elapsed()
            })
        })
    });
    group.finish();
    children.stop_all();
}

criterion_group!(benches, bench_protocol, bench_registry_and_hop);
criterion_main!(benches);
