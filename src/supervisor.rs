//! Supervisors with OTP semantics on actix.
//!
//! A [`Supervisor`] is an actor owning an ordered list of [`Child`]ren. It starts them in order, and
//! stops them in reverse. When a child exits it applies its [`Strategy`] (one_for_one, one_for_all,
//! rest_for_one) within a restart [`Intensity`]; past that it stops every child and escalates to its
//! parent. Supervisors nest: a [`SupervisorChild`] is a supervisor run as another's child, escalating
//! to it and restarted in place by it. The root supervisor's parent is `run()`, which then exits the
//! process with an error.
//! Actor children run inside [`supervised::Supervised`], which turns a panic into an [`Exit`] report
//! and restarts the actor in place, keeping its address and mailbox. Dynamic children (one actor per
//! live ticket) use the lighter [`dynamic`] wrapper, reporting to a supervisor that is itself an actor.

pub mod dynamic;
pub mod intensity;
pub mod keyed;
pub mod supervised;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use actix::prelude::*;
use futures_util::future::{FutureExt, LocalBoxFuture};

pub use intensity::Intensity;
pub use supervised::{ChildHandle, Control, Exit, ExitReport, Restart};

use crate::metrics as m;

/// How a supervisor reacts to one child's exit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// Restart only the child that exited.
    OneForOne,
    /// Restart every child.
    OneForAll,
    /// Restart the child that exited and every child started after it (they depend on it).
    RestForOne,
}

/// A child could not be started.
#[derive(Debug, thiserror::Error)]
#[error("child `{child}` failed to start: {message}")]
pub struct StartError {
    pub child: &'static str,
    pub message: String,
}

/// What a supervisor needs of each child.
pub trait Child {
    fn name(&self) -> &'static str;
    fn restart_type(&self) -> Restart;
    /// First start. `report` is how the child tells this supervisor that it exited.
    fn start(&mut self, report: ExitReport) -> Result<(), StartError>;
    /// Restart in place, after it exited (`cause` is the exit's) or because a sibling's restart
    /// takes it along (`cause` is `sibling`).
    fn restart(&mut self, cause: &'static str) -> Result<(), StartError>;
    /// Stop for good; resolves once stopped.
    fn stop(&mut self) -> LocalBoxFuture<'static, ()>;
    /// Shutdown has begun: stop taking new work from outside at once (a listener closes its
    /// socket), before any child is stopped. Most children have nothing to close.
    fn close_doors(&mut self) {}
}

/// Sent by a child's exit report to its supervisor.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct ChildExited {
    pub index: usize,
    pub exit: Exit,
}

/// Sent by the owner of a supervisor to stop all its children in reverse order.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct StopChildren;

/// Sent by a parent supervisor to a nested one as shutdown begins: every child closes its doors.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct CloseDoors;

/// Sent by a parent supervisor to a nested one that escalated: start over, restarting every child
/// in place with a fresh restart intensity.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct RestartChildren {
    pub cause: &'static str,
}

/// Called each time a supervisor gives up; receives the reason. The root's goes to `run()`; a
/// nested supervisor's reports an [`Exit::Escalated`] to its parent.
pub type Escalate = Box<dyn FnMut(String)>;

/// What a supervisor does with its children when it gives up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OnGiveUp {
    /// Stop them all, then escalate: nobody above can restart this supervisor (the root).
    StopChildren,
    /// Escalate and leave them to the parent, which either restarts this supervisor in place
    /// ([`RestartChildren`]) or stops it with the rest of its own children.
    LeaveToParent,
}

pub struct Supervisor {
    name: &'static str,
    strategy: Strategy,
    intensity: Intensity,
    children: Vec<Box<dyn Child>>,
    escalate: Escalate,
    on_give_up: OnGiveUp,
    up: Arc<AtomicBool>,
    stopping: bool,
    /// Gave up and waits for its parent's word; child exits are ignored meanwhile.
    escalated: bool,
    /// Per child: it exited and was not restarted, so its actor is gone and later restarts of its
    /// siblings (one_for_all, rest_for_one) leave it out.
    gone: Vec<bool>,
}

impl Supervisor {
    pub fn new(
        name: &'static str,
        strategy: Strategy,
        intensity: Intensity,
        children: Vec<Box<dyn Child>>,
        escalate: Escalate,
    ) -> Self {
        Self {
            name,
            strategy,
            intensity,
            children,
            escalate,
            on_give_up: OnGiveUp::StopChildren,
            up: Arc::new(AtomicBool::new(false)),
            stopping: false,
            escalated: false,
            gone: Vec::new(),
        }
    }

    /// Sets the children (in start order) before the supervisor is started.
    pub fn with_children(mut self, children: Vec<Box<dyn Child>>) -> Self {
        self.children = children;
        self
    }

    /// True while every child is started and the supervisor has not given up.
    pub fn up_flag(&self) -> Arc<AtomicBool> {
        self.up.clone()
    }

    fn give_up(&mut self, reason: String, ctx: &mut Context<Self>) {
        metrics::counter!(m::SUPERVISOR_ESCALATIONS, "supervisor" => self.name).increment(1);
        tracing::error!(supervisor = self.name, %reason, "supervisor gives up and escalates");
        self.up.store(false, Ordering::SeqCst);
        if self.on_give_up == OnGiveUp::LeaveToParent {
            self.escalated = true;
            (self.escalate)(reason);
            return;
        }
        self.stopping = true;
        let stops = self.stop_all();
        ctx.wait(
            async move {
                stops.await;
                reason
            }
            .into_actor(self)
            .map(|reason, act, _| (act.escalate)(reason)),
        );
    }

    /// Restarts every child still present in place, in start order.
    fn restart_all(&mut self, cause: &'static str, ctx: &mut Context<Self>) {
        for i in (0..self.children.len()).filter(|&i| !self.gone[i]) {
            if let Err(e) = self.children[i].restart(cause) {
                self.give_up(e.to_string(), ctx);
                return;
            }
        }
        self.up.store(true, Ordering::SeqCst);
    }

    /// Stops every child, newest first, one at a time: a child's `stop` may act as soon as it is
    /// called (the store's `close` does), so it is called only once the children started after it
    /// have finished stopping. The children are taken out; later exit reports find none.
    fn stop_all(&mut self) -> LocalBoxFuture<'static, ()> {
        // Every listener of the tree refuses new connections now, not when its turn to stop comes
        // after the drains of those stopped before it.
        for child in &mut self.children {
            child.close_doors();
        }
        let mut children = std::mem::take(&mut self.children);
        async move {
            while let Some(mut child) = children.pop() {
                child.stop().await;
            }
        }
        .boxed_local()
    }
}

impl Actor for Supervisor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.gone = vec![false; self.children.len()];
        let me = ctx.address();
        for index in 0..self.children.len() {
            let me = me.clone();
            let report: ExitReport = Arc::new(move |exit| me.do_send(ChildExited { index, exit }));
            let child = &mut self.children[index];
            tracing::info!(
                supervisor = self.name,
                child = child.name(),
                "starting child"
            );
            if let Err(e) = child.start(report) {
                // Stop what did start, newest first, then give up.
                self.children.truncate(index);
                self.give_up(e.to_string(), ctx);
                return;
            }
        }
        self.up.store(true, Ordering::SeqCst);
    }
}

impl Handler<ChildExited> for Supervisor {
    type Result = ();

    fn handle(&mut self, msg: ChildExited, ctx: &mut Context<Self>) {
        if self.stopping || self.escalated || msg.index >= self.children.len() {
            return;
        }
        let name = self.children[msg.index].name();
        if !self.children[msg.index]
            .restart_type()
            .wants_restart(&msg.exit)
        {
            tracing::info!(supervisor = self.name, child = name, exit = ?msg.exit, "child exited; not restarted");
            self.gone[msg.index] = true;
            return;
        }
        tracing::warn!(supervisor = self.name, child = name, exit = ?msg.exit, strategy = ?self.strategy, "child exited; restarting");
        if !self.intensity.record(Instant::now()) {
            let reason = format!("restart intensity exceeded (last: `{name}` {:?})", msg.exit);
            self.give_up(reason, ctx);
            return;
        }
        let range = match self.strategy {
            Strategy::OneForOne => msg.index..msg.index + 1,
            Strategy::OneForAll => 0..self.children.len(),
            Strategy::RestForOne => msg.index..self.children.len(),
        };
        for i in range.filter(|&i| !self.gone[i]) {
            let cause = if i == msg.index {
                msg.exit.cause()
            } else {
                "sibling"
            };
            if let Err(e) = self.children[i].restart(cause) {
                self.give_up(e.to_string(), ctx);
                return;
            }
        }
    }
}

impl Handler<RestartChildren> for Supervisor {
    type Result = ();

    fn handle(&mut self, msg: RestartChildren, ctx: &mut Context<Self>) {
        if self.stopping {
            return;
        }
        tracing::warn!(
            supervisor = self.name,
            cause = msg.cause,
            "supervisor restarting its children"
        );
        self.escalated = false;
        self.intensity.reset();
        self.restart_all(msg.cause, ctx);
    }
}

impl Handler<CloseDoors> for Supervisor {
    type Result = ();

    fn handle(&mut self, _: CloseDoors, _: &mut Context<Self>) {
        for child in &mut self.children {
            child.close_doors();
        }
    }
}

impl Handler<StopChildren> for Supervisor {
    type Result = ResponseActFuture<Self, ()>;

    fn handle(&mut self, _: StopChildren, _: &mut Context<Self>) -> Self::Result {
        self.stopping = true;
        self.up.store(false, Ordering::SeqCst);
        let stops = self.stop_all();
        Box::pin(stops.into_actor(self))
    }
}

/// A [`Child`] that is an actix actor run under [`supervised::Supervised`].
pub struct ActorChild {
    name: &'static str,
    restart: Restart,
    spawn: Option<Box<dyn FnOnce(ExitReport) -> ChildHandle>>,
    handle: Option<ChildHandle>,
    before_stop: Option<Box<dyn FnOnce() -> LocalBoxFuture<'static, ()>>>,
}

impl ActorChild {
    /// `spawn` starts the actor (see [`supervised::spawn_in`]) and hands back its handle.
    pub fn new(
        name: &'static str,
        restart: Restart,
        spawn: impl FnOnce(ExitReport) -> ChildHandle + 'static,
    ) -> Self {
        Self {
            name,
            restart,
            spawn: Some(Box::new(spawn)),
            handle: None,
            before_stop: None,
        }
    }

    /// Work to finish before the actor is stopped (e.g. flushing), awaited by `stop`.
    pub fn before_stop(
        mut self,
        f: impl FnOnce() -> LocalBoxFuture<'static, ()> + 'static,
    ) -> Self {
        self.before_stop = Some(Box::new(f));
        self
    }
}

impl Child for ActorChild {
    fn name(&self) -> &'static str {
        self.name
    }

    fn restart_type(&self) -> Restart {
        self.restart
    }

    fn start(&mut self, report: ExitReport) -> Result<(), StartError> {
        let spawn = self.spawn.take().ok_or_else(|| StartError {
            child: self.name,
            message: "already started".into(),
        })?;
        self.handle = Some(spawn(report));
        Ok(())
    }

    fn restart(&mut self, cause: &'static str) -> Result<(), StartError> {
        match &self.handle {
            Some(h) if h.restart(cause) => Ok(()),
            _ => Err(StartError {
                child: self.name,
                message: "actor is gone and cannot be restarted in place".into(),
            }),
        }
    }

    fn stop(&mut self) -> LocalBoxFuture<'static, ()> {
        let before = self.before_stop.take().map(|f| f());
        let mut handle = self.handle.take();
        async move {
            if let Some(before) = before {
                before.await;
            }
            if let Some(h) = handle.as_mut() {
                h.stop().await;
            }
        }
        .boxed_local()
    }
}

/// A nested [`Supervisor`] as a [`Child`] of another: it starts on the parent's arbiter when the
/// parent starts it, escalates to the parent as an [`Exit::Escalated`] exit, is restarted in place
/// (every child of it restarted, its intensity reset) when the parent's strategy says so, and stops
/// its own children, newest first, when the parent stops it.
pub struct SupervisorChild {
    name: &'static str,
    restart: Restart,
    pending: Option<Supervisor>,
    addr: Option<Addr<Supervisor>>,
}

impl SupervisorChild {
    pub fn new(supervisor: Supervisor, restart: Restart) -> Self {
        Self {
            name: supervisor.name,
            restart,
            pending: Some(supervisor),
            addr: None,
        }
    }
}

impl Child for SupervisorChild {
    fn name(&self) -> &'static str {
        self.name
    }

    fn restart_type(&self) -> Restart {
        self.restart
    }

    fn start(&mut self, report: ExitReport) -> Result<(), StartError> {
        let mut sup = self.pending.take().ok_or_else(|| StartError {
            child: self.name,
            message: "already started".into(),
        })?;
        sup.on_give_up = OnGiveUp::LeaveToParent;
        sup.escalate = Box::new(move |reason| report(Exit::Escalated(reason)));
        self.addr = Some(sup.start());
        Ok(())
    }

    fn restart(&mut self, cause: &'static str) -> Result<(), StartError> {
        match &self.addr {
            Some(addr) if addr.connected() => {
                addr.do_send(RestartChildren { cause });
                Ok(())
            }
            _ => Err(StartError {
                child: self.name,
                message: "supervisor is gone and cannot be restarted in place".into(),
            }),
        }
    }

    fn close_doors(&mut self) {
        if let Some(addr) = &self.addr {
            addr.do_send(CloseDoors);
        }
    }

    fn stop(&mut self) -> LocalBoxFuture<'static, ()> {
        let addr = self.addr.take();
        async move {
            if let Some(addr) = addr {
                let _ = addr.send(StopChildren).await;
            }
        }
        .boxed_local()
    }
}
