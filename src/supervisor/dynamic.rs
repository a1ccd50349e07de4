//! Supervision for dynamic children: many short-lived actors of one kind (one per live ticket), as
//! OTP's `simple_one_for_one`.
//!
//! A static child ([`super::supervised::spawn_in`]) gets its own control channel, done signal and
//! exit closure, which is fine for a handful of children but costs a dozen allocations per child.
//! Here the per-child cost is what matters, so a child carries only its actor, one pointer to an
//! [`ExitSink`] shared by every child of its supervisor, and its key. Everything else is made only
//! when needed:
//! - the child's kind and restart type are the sink's, the same for every child;
//! - the control channel is created when the child exits and parks; it travels with the exit report
//!   as a [`Parked`], and the supervisor answers through it (restart or stop) or drops it (stop);
//! - a running child is stopped through its own mailbox (a message whose handler calls
//!   `ctx.stop()`), so no per-child stop channel exists;
//! - while parked, the wrapper holds the child's address itself, so a supervisor may keep only weak
//!   addresses (a strong actix address costs two allocations per holder).
//!
//! The wrapper is polled inside one tokio task per child. tokio sizes a task's allocation in
//! multiples of 128 bytes, so a few bytes more in the wrapper can cost 128 per child;
//! `ticket::actor` has a test that keeps the ticket's wrapper within its size class.

use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};

use actix::dev::{AsyncContextParts, ContextFut};
use actix::prelude::*;
use actix::WeakAddr;
use futures_channel::oneshot;
use futures_util::FutureExt;

use super::supervised::{Control, Exit, Restart};
use crate::metrics as m;
use crate::telemetry::panic_message;

/// One per dynamic supervisor, shared by all its children: what they are and where their exits go.
pub trait ExitSink<A: Actor>: Send + Sync + 'static {
    /// Names one child to its supervisor (a ticket's id).
    type Key: Clone + Send + Unpin + 'static;

    /// The children's kind, for logs and `switchboard_actor_restarts_total{kind}`.
    fn kind(&self) -> &'static str;

    fn restart_type(&self) -> Restart;

    /// Called on the child's thread each time it exits; usually forwards a message to the supervisor.
    fn exited(&self, exit: ChildExit<A, Self::Key>);
}

/// A dynamic child's exit, as reported to its supervisor.
pub struct ChildExit<A: Actor, K> {
    pub key: K,
    /// Which activation exited: a supervisor that has already replaced the child under `key` uses
    /// it to ignore the old one's report.
    pub child: WeakAddr<A>,
    pub exit: Exit,
    /// Present when the restart type allows a restart for this exit: the child is parked, its
    /// address and queued mail kept, until this is answered or dropped (which stops it).
    pub parked: Option<Parked>,
}

/// The supervisor's hold on one parked child.
#[derive(Debug)]
pub struct Parked {
    control: oneshot::Sender<Control>,
}

impl Parked {
    /// Restarts the child in place; `cause` labels the restart metric. False if it is already gone.
    pub fn restart(self, cause: &'static str) -> bool {
        self.control.send(Control::Restart { cause }).is_ok()
    }

    /// Stops the child for good (dropping the `Parked` does the same).
    pub fn stop(self) {
        let _ = self.control.send(Control::Stop);
    }
}

/// Starts `make`'s actor on the current arbiter as a dynamic child reporting to `sink` under `key`.
pub fn spawn<A, S, F>(sink: Arc<S>, key: S::Key, make: F) -> Addr<A>
where
    A: Actor<Context = Context<A>> + actix::Supervised,
    S: ExitSink<A>,
    F: FnOnce(&mut Context<A>) -> A,
{
    let mut ctx = Context::new();
    let act = make(&mut ctx);
    spawn_context(sink, key, ctx.into_future(act))
}

/// Starts an actor of any context type, already built into its context's future
/// (`ctx.into_future(act)`), as a dynamic child: for actors whose context is not actix's plain
/// `Context`, or that need streams attached before they start.
pub fn spawn_context<A, C, S>(sink: Arc<S>, key: S::Key, fut: ContextFut<A, C>) -> Addr<A>
where
    C: AsyncContextParts<A> + Unpin + 'static,
    A: Actor<Context = C> + actix::Supervised,
    S: ExitSink<A>,
{
    let addr = fut.address();
    actix_rt::spawn(DynamicSupervised {
        fut,
        sink,
        key,
        parked: None,
    });
    addr
}

/// The supervising future around one dynamic child; see the module docs.
pub struct DynamicSupervised<A, S, C = Context<A>>
where
    C: AsyncContextParts<A> + Unpin,
    A: Actor<Context = C>,
    S: ExitSink<A>,
{
    fut: ContextFut<A, C>,
    sink: Arc<S>,
    key: S::Key,
    /// Set while the actor is parked after an exit, waiting for its supervisor's answer. Boxed: it is
    /// rare, and every byte of this struct is paid by every live child.
    parked: Option<Box<Parking<A>>>,
}

struct Parking<A: Actor> {
    control: oneshot::Receiver<Control>,
    /// Keeps the mailbox open while parked, so queued messages wait for the restart (actix restarts
    /// only an actor that still has an address, and a supervisor may hold only weak ones).
    _mailbox: Addr<A>,
}

impl<A, S, C> Future for DynamicSupervised<A, S, C>
where
    C: AsyncContextParts<A> + Unpin,
    A: Actor<Context = C> + actix::Supervised,
    S: ExitSink<A>,
{
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<()> {
        let this = self.get_mut();
        loop {
            if let Some(parking) = this.parked.as_mut() {
                match parking.control.poll_unpin(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Ok(Control::Restart { cause })) => {
                        let kind = this.sink.kind();
                        metrics::counter!(m::ACTOR_RESTARTS, "kind" => kind, "cause" => cause)
                            .increment(1);
                        tracing::info!(kind, cause, "restarting supervised actor");
                        let restarted = this.fut.restart();
                        this.parked = None;
                        if !restarted {
                            return Poll::Ready(());
                        }
                    }
                    // Told to stop, or the supervisor let go of it: either way it is done.
                    Poll::Ready(Ok(Control::Stop)) | Poll::Ready(Err(_)) => return Poll::Ready(()),
                }
            }
            let exit = match catch_unwind(AssertUnwindSafe(|| Pin::new(&mut this.fut).poll(cx))) {
                Ok(Poll::Pending) => return Poll::Pending,
                Ok(Poll::Ready(())) => Exit::Normal,
                Err(panic) => Exit::Panicked(panic_message(panic.as_ref())),
            };
            if exit.is_abnormal() {
                tracing::warn!(kind = this.sink.kind(), cause = ?exit, "supervised actor failed");
            }
            let wants_restart = this.sink.restart_type().wants_restart(&exit);
            let parked = wants_restart.then(|| {
                let (tx, rx) = oneshot::channel();
                this.parked = Some(Box::new(Parking {
                    control: rx,
                    _mailbox: this.fut.address(),
                }));
                Parked { control: tx }
            });
            this.sink.exited(ChildExit {
                key: this.key.clone(),
                child: this.fut.address().downgrade(),
                exit,
                parked,
            });
            if !wants_restart {
                return Poll::Ready(());
            }
        }
    }
}
