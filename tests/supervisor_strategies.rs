//! Black-box tests of the supervision library (`switchboard::supervisor`).
//!
//! They prove that, for actor children run on their own arbiters through `supervised::mailbox` +
//! `supervised::spawn_in` inside an `ActorChild`:
//! - one_for_one restarts only the child that panicked, in place: same `Addr`, queued mail kept;
//! - one_for_all restarts every child, rest_for_one the child and those started after it;
//! - exceeding the restart intensity stops every child and escalates with a reason;
//! - temporary children are never restarted, transient ones only after an abnormal exit;
//! - a nested supervisor escalates to its parent, which restarts it in place (all its children
//!   restarted, its intensity fresh), and past the parent's intensity the escalation goes up;
//! - `StopChildren` stops children newest first, each one finished before the previous is stopped;
//! - under one_for_all, a temporary child that has already exited does not break a sibling's restart.
//!
//! Nothing here sleeps: every wait is on an event (a `started()` report, a reply, an escalation, a
//! closed mailbox) bounded by [`WAIT`]. Negative claims ("X was not restarted") are checked after
//! [`Tree::settle`], a round trip through the supervisor that orders them after every restart it
//! issued.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::prelude::*;
use futures_util::future::{FutureExt, LocalBoxFuture};
use switchboard::supervisor::supervised::{self, Restart};
use switchboard::supervisor::{
    ActorChild, Child, ChildExited, Exit, ExitReport, Intensity, StartError, StopChildren,
    Strategy, Supervisor, SupervisorChild,
};
use tokio::sync::mpsc::error::TryRecvError;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};
use tokio::time::timeout;

/// Upper bound on every wait; only reached when the behaviour under test is broken.
const WAIT: Duration = Duration::from_secs(5);

/// A generous intensity for tests that are not about intensity.
fn lenient() -> Intensity {
    Intensity::new(10, Duration::from_secs(10))
}

// ---------------------------------------------------------------------------------------------
// The test actor
// ---------------------------------------------------------------------------------------------

/// One call of [`Worker`]'s `started()`: which worker, and how many times it has started so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Started {
    name: &'static str,
    starts: u32,
}

/// Reports each `started()`; panics on [`Boom`], stops itself on [`Stop`], answers [`Ping`].
/// Its state survives a restart in place, so `starts` counts restarts.
struct Worker {
    name: &'static str,
    starts: u32,
    events: UnboundedSender<Started>,
}

impl Actor for Worker {
    type Context = Context<Self>;

    fn started(&mut self, _: &mut Context<Self>) {
        self.starts += 1;
        let _ = self.events.send(Started {
            name: self.name,
            starts: self.starts,
        });
    }
}

impl actix::Supervised for Worker {}

#[derive(Message)]
#[rtype(result = "()")]
struct Boom;

impl Handler<Boom> for Worker {
    type Result = ();

    fn handle(&mut self, _: Boom, _: &mut Context<Self>) {
        panic!("boom in worker `{}` (expected by the test)", self.name);
    }
}

#[derive(Message)]
#[rtype(result = "()")]
struct Stop;

impl Handler<Stop> for Worker {
    type Result = ();

    fn handle(&mut self, _: Stop, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}

#[derive(Message)]
#[rtype(result = "Pong")]
struct Ping;

#[derive(Debug, PartialEq, Eq, MessageResponse)]
struct Pong {
    name: &'static str,
    starts: u32,
}

impl Handler<Ping> for Worker {
    type Result = Pong;

    fn handle(&mut self, _: Ping, _: &mut Context<Self>) -> Pong {
        Pong {
            name: self.name,
            starts: self.starts,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// A supervision tree of workers, each on its own arbiter
// ---------------------------------------------------------------------------------------------

struct Tree {
    supervisor: Addr<Supervisor>,
    up: Arc<AtomicBool>,
    /// Worker names and addresses, in start order.
    workers: Vec<(&'static str, Addr<Worker>)>,
    /// Every worker's `started()` reports. Yields `None` once every worker has been dropped.
    started: UnboundedReceiver<Started>,
    /// The supervisor's escalation reason.
    escalated: UnboundedReceiver<String>,
    arbiters: Vec<Arbiter>,
}

impl Drop for Tree {
    fn drop(&mut self) {
        for arbiter in &self.arbiters {
            arbiter.stop();
        }
    }
}

impl Tree {
    /// Starts a supervisor over one worker per `(name, restart)`, in order, and waits until every
    /// worker has started once.
    async fn start(
        strategy: Strategy,
        intensity: Intensity,
        children: &[(&'static str, Restart)],
    ) -> Tree {
        Self::start_tree(strategy, intensity, children, None).await
    }

    /// Like [`Tree::start`], with the workers under a nested supervisor `inner` (one_for_one, with
    /// `inner_intensity`), itself the only (permanent) child of the root under test.
    async fn start_nested(
        root_intensity: Intensity,
        inner_intensity: Intensity,
        children: &[(&'static str, Restart)],
    ) -> Tree {
        Self::start_tree(
            Strategy::OneForOne,
            root_intensity,
            children,
            Some(inner_intensity),
        )
        .await
    }

    async fn start_tree(
        strategy: Strategy,
        intensity: Intensity,
        children: &[(&'static str, Restart)],
        nest: Option<Intensity>,
    ) -> Tree {
        let (events, started) = unbounded_channel();
        let (escalate_tx, escalated) = unbounded_channel();
        let mut workers = Vec::new();
        let mut arbiters = Vec::new();
        let mut boxed: Vec<Box<dyn Child>> = Vec::new();
        for &(name, restart) in children {
            let arbiter = Arbiter::new();
            let handle = arbiter.handle();
            let (addr, mailbox) = supervised::mailbox::<Worker>(16);
            let events = events.clone();
            boxed.push(Box::new(ActorChild::new(name, restart, move |report| {
                supervised::spawn_in(
                    &handle,
                    name,
                    restart,
                    mailbox,
                    move |_| Worker {
                        name,
                        starts: 0,
                        events,
                    },
                    report,
                )
            })));
            workers.push((name, addr));
            arbiters.push(arbiter);
        }
        // Only the workers hold senders now, so `started` closes once they are all dropped.
        drop(events);
        if let Some(inner_intensity) = nest {
            let inner = Supervisor::new(
                "inner",
                Strategy::OneForOne,
                inner_intensity,
                boxed,
                Box::new(|reason| {
                    panic!("a nested supervisor's escalation is its parent's: {reason}")
                }),
            );
            boxed = vec![Box::new(SupervisorChild::new(inner, Restart::Permanent))];
        }

        let supervisor = Supervisor::new(
            "test",
            strategy,
            intensity,
            boxed,
            Box::new(move |reason| {
                let _ = escalate_tx.send(reason);
            }),
        );
        let up = supervisor.up_flag();
        let mut tree = Tree {
            supervisor: supervisor.start(),
            up,
            workers,
            started,
            escalated,
            arbiters,
        };
        let first: Vec<_> = children.iter().map(|&(name, _)| (name, 1)).collect();
        tree.expect_starts(&first).await;
        assert!(tree.up.load(Ordering::SeqCst), "tree not up after start");
        tree
    }

    fn worker(&self, name: &str) -> &Addr<Worker> {
        self.workers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, addr)| addr)
            .unwrap_or_else(|| panic!("no worker `{name}`"))
    }

    /// Waits for exactly these `started()` reports, in any order (workers run on different threads).
    async fn expect_starts(&mut self, expected: &[(&'static str, u32)]) {
        let mut got = Vec::new();
        while got.len() < expected.len() {
            match timeout(WAIT, self.started.recv()).await {
                Ok(Some(s)) => got.push(s),
                Ok(None) => panic!("every worker is gone; got only {got:?}, wanted {expected:?}"),
                Err(_) => panic!("timed out waiting for starts {expected:?}; got only {got:?}"),
            }
        }
        got.sort();
        let mut want: Vec<_> = expected
            .iter()
            .map(|&(name, starts)| Started { name, starts })
            .collect();
        want.sort();
        assert_eq!(got, want, "unexpected started() reports");
    }

    /// No `started()` report is pending. Meaningful after [`Tree::settle`] and a reply from each
    /// worker that could have restarted: a restart's `started()` runs before any later message.
    fn expect_no_more_starts(&mut self) {
        match self.started.try_recv() {
            Err(TryRecvError::Empty) => {}
            Ok(s) => panic!("unexpected restart: {s:?}"),
            Err(TryRecvError::Disconnected) => panic!("every worker is gone"),
        }
    }

    /// Returns once the supervisor has handled every exit report sent before: it handles one
    /// message at a time and ignores a report for an index it does not have. Restart orders it sent
    /// reach a worker's control channel before anything the test sends the worker afterwards, and
    /// a parked or running worker applies its control orders before reading its mailbox.
    async fn settle(&self) {
        timeout(
            WAIT,
            self.supervisor.send(ChildExited {
                index: usize::MAX,
                exit: Exit::Normal,
            }),
        )
        .await
        .expect("supervisor did not answer within the timeout")
        .expect("supervisor is gone");
    }

    async fn ping(&self, name: &str) -> Pong {
        timeout(WAIT, self.worker(name).send(Ping))
            .await
            .unwrap_or_else(|_| panic!("worker `{name}` did not answer Ping"))
            .unwrap_or_else(|e| panic!("worker `{name}` unreachable: {e}"))
    }

    /// The worker's mailbox is closed: its actor has been dropped for good.
    async fn expect_gone(&self, name: &str) {
        match timeout(WAIT, self.worker(name).send(Ping)).await {
            Ok(Err(MailboxError::Closed)) => {}
            Ok(other) => panic!("worker `{name}` should be gone, but Ping gave {other:?}"),
            Err(_) => panic!("worker `{name}` neither answered nor closed its mailbox"),
        }
        assert!(!self.worker(name).connected(), "`{name}` still connected");
    }

    fn expect_not_escalated(&mut self) {
        match self.escalated.try_recv() {
            Err(TryRecvError::Empty) => {}
            Ok(reason) => panic!("supervisor escalated: {reason}"),
            Err(TryRecvError::Disconnected) => panic!("supervisor dropped its escalation"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Nested supervisors
// ---------------------------------------------------------------------------------------------

#[actix_rt::test]
async fn a_nested_supervisor_escalates_to_its_parent_which_restarts_it_in_place() {
    let mut tree = Tree::start_nested(
        lenient(),
        Intensity::new(1, Duration::from_secs(60)),
        &[("a", Restart::Permanent), ("b", Restart::Permanent)],
    )
    .await;

    // Within the inner supervisor's intensity: only `a` restarts.
    tree.worker("a").do_send(Boom);
    tree.expect_starts(&[("a", 2)]).await;

    // Past it: the inner supervisor escalates, the root restarts it in place, and it restarts every
    // child in place, on the same addresses, with a fresh intensity.
    tree.worker("a").do_send(Boom);
    tree.expect_starts(&[("a", 3), ("b", 2)]).await;
    assert_eq!(tree.ping("a").await.starts, 3);
    assert_eq!(tree.ping("b").await.starts, 2);
    tree.settle().await;
    tree.expect_no_more_starts();
    tree.expect_not_escalated();

    // The fresh intensity allows one restart again without escalating.
    tree.worker("b").do_send(Boom);
    tree.expect_starts(&[("b", 3)]).await;
    tree.settle().await;
    tree.expect_not_escalated();
}

#[actix_rt::test]
async fn an_escalation_past_the_parents_intensity_goes_up_the_tree_and_stops_everything() {
    let mut tree = Tree::start_nested(
        Intensity::new(0, Duration::from_secs(60)),
        Intensity::new(0, Duration::from_secs(60)),
        &[("a", Restart::Permanent), ("b", Restart::Permanent)],
    )
    .await;

    tree.worker("b").do_send(Boom);
    let reason = timeout(WAIT, tree.escalated.recv())
        .await
        .expect("the root did not escalate")
        .expect("escalation callback dropped without being called");
    assert!(reason.contains("inner"), "{reason}");
    tree.expect_gone("a").await;
    tree.expect_gone("b").await;
    assert!(!tree.up.load(Ordering::SeqCst));
}

// ---------------------------------------------------------------------------------------------
// Restart strategies
// ---------------------------------------------------------------------------------------------

const ABC: [(&str, Restart); 3] = [
    ("a", Restart::Permanent),
    ("b", Restart::Permanent),
    ("c", Restart::Permanent),
];

#[actix_rt::test]
async fn one_for_one_restarts_only_the_panicked_child_in_place() {
    let mut tree = Tree::start(Strategy::OneForOne, lenient(), &ABC).await;

    // Ping is queued behind Boom on the same address: it must survive the panic and be served by
    // the restarted actor (`starts == 2`), through the address taken before the restart.
    tree.worker("b").do_send(Boom);
    assert_eq!(
        tree.ping("b").await,
        Pong {
            name: "b",
            starts: 2
        }
    );
    tree.expect_starts(&[("b", 2)]).await;

    tree.settle().await;
    assert_eq!(tree.ping("a").await.starts, 1, "a was restarted");
    assert_eq!(tree.ping("c").await.starts, 1, "c was restarted");
    tree.expect_no_more_starts();
    tree.expect_not_escalated();
    assert!(tree.up.load(Ordering::SeqCst));
}

#[actix_rt::test]
async fn one_for_all_restarts_every_child() {
    let mut tree = Tree::start(Strategy::OneForAll, lenient(), &ABC).await;

    tree.worker("b").do_send(Boom);
    tree.expect_starts(&[("a", 2), ("b", 2), ("c", 2)]).await;

    tree.settle().await;
    for name in ["a", "b", "c"] {
        assert_eq!(tree.ping(name).await, Pong { name, starts: 2 });
    }
    tree.expect_no_more_starts();
    tree.expect_not_escalated();
}

#[actix_rt::test]
async fn rest_for_one_restarts_the_child_and_those_after_it() {
    let mut tree = Tree::start(Strategy::RestForOne, lenient(), &ABC).await;

    tree.worker("b").do_send(Boom);
    tree.expect_starts(&[("b", 2), ("c", 2)]).await;

    tree.settle().await;
    assert_eq!(tree.ping("a").await.starts, 1, "a was restarted");
    assert_eq!(tree.ping("b").await.starts, 2);
    assert_eq!(tree.ping("c").await.starts, 2);
    tree.expect_no_more_starts();
    tree.expect_not_escalated();
}

// ---------------------------------------------------------------------------------------------
// Intensity and escalation
// ---------------------------------------------------------------------------------------------

#[actix_rt::test]
async fn exceeding_restart_intensity_escalates_and_stops_children() {
    let intensity = Intensity::new(1, Duration::from_secs(10));
    let mut tree = Tree::start(Strategy::OneForOne, intensity, &ABC).await;

    // The first restart is within the intensity.
    tree.worker("b").do_send(Boom);
    tree.expect_starts(&[("b", 2)]).await;
    tree.expect_not_escalated();

    // The second, within the window, exceeds it.
    tree.worker("b").do_send(Boom);
    let reason = timeout(WAIT, tree.escalated.recv())
        .await
        .expect("supervisor did not escalate")
        .expect("escalation callback dropped without being called");
    assert!(
        reason.contains("intensity"),
        "reason does not mention intensity: {reason}"
    );
    assert!(!tree.up.load(Ordering::SeqCst), "tree still reported up");

    // Every worker has been dropped (all their event senders are gone), without restarting.
    match timeout(WAIT, tree.started.recv()).await {
        Ok(None) => {}
        Ok(Some(s)) => panic!("a worker started while the supervisor gave up: {s:?}"),
        Err(_) => panic!("not every worker was dropped after the escalation"),
    }
    for name in ["a", "b", "c"] {
        tree.expect_gone(name).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Restart types
// ---------------------------------------------------------------------------------------------

#[actix_rt::test]
async fn temporary_child_is_not_restarted_and_transient_child_is_not_restarted_after_normal_stop() {
    let children = [
        ("temporary", Restart::Temporary),
        ("transient", Restart::Transient),
        ("permanent", Restart::Permanent),
    ];
    let mut tree = Tree::start(Strategy::OneForOne, lenient(), &children).await;

    // A temporary child is not restarted even after a panic.
    tree.worker("temporary").do_send(Boom);
    tree.expect_gone("temporary").await;

    // A transient child is restarted after a panic...
    tree.worker("transient").do_send(Boom);
    assert_eq!(tree.ping("transient").await.starts, 2);
    tree.expect_starts(&[("transient", 2)]).await;

    // ...but not after stopping normally.
    tree.worker("transient").do_send(Stop);
    tree.expect_gone("transient").await;

    tree.settle().await;
    assert_eq!(tree.ping("permanent").await.starts, 1);
    tree.expect_no_more_starts();
    tree.expect_not_escalated();
}

/// Regression guard: a sibling's restart under one_for_all must leave out a temporary child that
/// has already exited for good, rather than fail to restart it and give the whole tree up.
#[actix_rt::test]
async fn one_for_all_leaves_out_a_temporary_child_that_already_exited() {
    let children = [
        ("temporary", Restart::Temporary),
        ("permanent", Restart::Permanent),
    ];
    let mut tree = Tree::start(Strategy::OneForAll, lenient(), &children).await;

    tree.worker("temporary").do_send(Boom);
    tree.expect_gone("temporary").await;

    tree.worker("permanent").do_send(Boom);
    match timeout(WAIT, tree.started.recv()).await {
        Ok(Some(s)) => assert_eq!(
            s,
            Started {
                name: "permanent",
                starts: 2
            }
        ),
        other => {
            let escalation = timeout(WAIT, tree.escalated.recv()).await;
            panic!("permanent child not restarted ({other:?}); escalation: {escalation:?}");
        }
    }
    tree.settle().await;
    tree.expect_not_escalated();
    assert!(tree.up.load(Ordering::SeqCst));
}

// ---------------------------------------------------------------------------------------------
// Ordered stop
// ---------------------------------------------------------------------------------------------

type Log = Arc<Mutex<Vec<String>>>;

/// A child that only records what the supervisor asks of it. Its stop takes a turn of the executor
/// to finish, like a real one.
struct Recorder {
    name: &'static str,
    log: Log,
}

impl Recorder {
    fn boxed(name: &'static str, log: &Log) -> Box<dyn Child> {
        Box::new(Recorder {
            name,
            log: log.clone(),
        })
    }
}

impl Child for Recorder {
    fn name(&self) -> &'static str {
        self.name
    }

    fn restart_type(&self) -> Restart {
        Restart::Permanent
    }

    fn start(&mut self, _: ExitReport) -> Result<(), StartError> {
        self.log
            .lock()
            .unwrap()
            .push(format!("start {}", self.name));
        Ok(())
    }

    fn restart(&mut self, _: &'static str) -> Result<(), StartError> {
        self.log
            .lock()
            .unwrap()
            .push(format!("restart {}", self.name));
        Ok(())
    }

    fn stop(&mut self) -> LocalBoxFuture<'static, ()> {
        self.log.lock().unwrap().push(format!("stop {}", self.name));
        let (name, log) = (self.name, self.log.clone());
        async move {
            tokio::task::yield_now().await;
            log.lock().unwrap().push(format!("stopped {name}"));
        }
        .boxed_local()
    }
}

/// Starts a supervisor over recorders `a`, `b`, `c` and returns once `StopChildren` has resolved.
async fn start_and_stop_recorders() -> Vec<String> {
    let log = Log::default();
    let supervisor = Supervisor::new(
        "test",
        Strategy::OneForOne,
        lenient(),
        vec![
            Recorder::boxed("a", &log),
            Recorder::boxed("b", &log),
            Recorder::boxed("c", &log),
        ],
        Box::new(|reason| panic!("unexpected escalation: {reason}")),
    );
    let up = supervisor.up_flag();
    let supervisor = supervisor.start();
    timeout(WAIT, supervisor.send(StopChildren))
        .await
        .expect("StopChildren did not resolve")
        .expect("supervisor is gone");
    assert!(!up.load(Ordering::SeqCst), "tree still reported up");
    let log = log.lock().unwrap().clone();
    log
}

fn entries<'a>(log: &'a [String], prefix: &str) -> Vec<&'a str> {
    log.iter().filter_map(|e| e.strip_prefix(prefix)).collect()
}

#[actix_rt::test]
async fn stop_children_stops_in_reverse_start_order() {
    let log = start_and_stop_recorders().await;
    assert_eq!(entries(&log, "start "), ["a", "b", "c"], "log: {log:?}");
    assert_eq!(entries(&log, "stop "), ["c", "b", "a"], "log: {log:?}");
    // StopChildren resolves only once every child has finished stopping.
    assert_eq!(entries(&log, "stopped "), ["c", "b", "a"], "log: {log:?}");
    assert!(entries(&log, "restart ").is_empty(), "log: {log:?}");
}

/// A child is only asked to stop once every child started after it has finished stopping (the
/// listener drains before the bridge flushes, the bridge before the store closes).
#[actix_rt::test]
async fn stop_children_finishes_each_stop_before_stopping_the_previous_child() {
    let log = start_and_stop_recorders().await;
    assert_eq!(
        log[3..],
        [
            "stop c",
            "stopped c",
            "stop b",
            "stopped b",
            "stop a",
            "stopped a"
        ],
        "log: {log:?}"
    );
}
