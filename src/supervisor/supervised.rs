//! Running an actix actor under supervision.
//!
//! actix 0.13 drops an actor whose handler panics and has no restart limits or parent links, so each
//! supervised actor runs inside [`Supervised`], a future that polls the actor's `ContextFut` under
//! `catch_unwind`. When the actor panics or stops, the wrapper reports the [`Exit`] to its supervisor and
//! parks, keeping the actor's address and queued mail, until the supervisor answers with a [`Control`]:
//! restart in place (`Supervised::restarting`, then `started` again) or stop for good.

use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};

use actix::dev::channel;
use actix::dev::{AsyncContextParts, ContextFut};
use actix::prelude::*;
use futures_channel::{mpsc, oneshot};
use futures_util::future::{BoxFuture, FutureExt};
use futures_util::StreamExt;

use crate::metrics as m;
use crate::telemetry::panic_message;

/// Why a supervised actor stopped running.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    /// It stopped itself (`ctx.stop()`).
    Normal,
    /// A handler panicked; the message is the panic's.
    Panicked(String),
    /// It gave up on purpose (a supervisor whose restart intensity was exceeded).
    Escalated(String),
}

impl Exit {
    pub fn is_abnormal(&self) -> bool {
        !matches!(self, Exit::Normal)
    }

    pub fn cause(&self) -> &'static str {
        match self {
            Exit::Normal => "normal",
            Exit::Panicked(_) => "panic",
            Exit::Escalated(_) => "escalation",
        }
    }
}

/// OTP restart types: which exits a supervisor answers with a restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restart {
    /// Always restarted.
    Permanent,
    /// Restarted only after an abnormal exit.
    Transient,
    /// Never restarted.
    Temporary,
}

impl Restart {
    pub fn wants_restart(self, exit: &Exit) -> bool {
        match self {
            Restart::Permanent => true,
            Restart::Transient => exit.is_abnormal(),
            Restart::Temporary => false,
        }
    }
}

/// A supervisor's answer to a parked child.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// Restart in place; the cause is recorded in the restart metric and log.
    Restart {
        cause: &'static str,
    },
    Stop,
}

/// Called on the child's thread with each exit; usually forwards a message to the supervisor.
pub type ExitReport = std::sync::Arc<dyn Fn(Exit) + Send + Sync>;

/// The supervisor's hold on one running child.
#[derive(Debug)]
pub struct ChildHandle {
    control: mpsc::UnboundedSender<Control>,
    finished: Option<oneshot::Receiver<()>>,
}

impl ChildHandle {
    /// Restarts the child in place (whether it is parked after an exit or running). `cause` is why:
    /// its own exit (`panic`, `escalation`, `normal`) or a sibling's (`sibling`).
    pub fn restart(&self, cause: &'static str) -> bool {
        self.control
            .unbounded_send(Control::Restart { cause })
            .is_ok()
    }

    /// Stops the child for good and resolves once its actor is dropped.
    pub fn stop(&mut self) -> BoxFuture<'static, ()> {
        let _ = self.control.unbounded_send(Control::Stop);
        let finished = self.finished.take();
        async move {
            if let Some(f) = finished {
                let _ = f.await;
            }
        }
        .boxed()
    }
}

/// A mailbox made before its actor: the address works at once (messages queue) and the actor is
/// spawned later with [`spawn_in`]. Lets a supervisor wire children together before starting them.
pub struct Mailbox<A: Actor<Context = Context<A>>> {
    rx: channel::AddressReceiver<A>,
}

/// Creates an address and the mailbox behind it.
pub fn mailbox<A: Actor<Context = Context<A>>>(capacity: usize) -> (Addr<A>, Mailbox<A>) {
    let (tx, rx) = channel::channel(capacity);
    (Addr::new(tx), Mailbox { rx })
}

/// Starts `make`'s actor on `arbiter` under supervision, serving `mailbox`.
pub fn spawn_in<A, F>(
    arbiter: &ArbiterHandle,
    kind: &'static str,
    restart: Restart,
    mailbox: Mailbox<A>,
    make: F,
    report: ExitReport,
) -> ChildHandle
where
    A: Actor<Context = Context<A>> + actix::Supervised,
    F: FnOnce(&mut Context<A>) -> A + Send + 'static,
{
    let rx = mailbox.rx;
    spawn_context_in(
        arbiter,
        kind,
        restart,
        move || {
            let mut ctx = Context::with_receiver(rx);
            let act = make(&mut ctx);
            ctx.into_future(act)
        },
        report,
    )
}

/// Starts an actor of any context type on `arbiter` under supervision. `make` builds the actor in
/// its context and returns the context's future (`ctx.into_future(act)`), so an actor that needs a
/// context of its own kind, or streams attached before it starts (a WebSocket connection's frames,
/// say), is supervised the same way.
pub fn spawn_context_in<A, C, F>(
    arbiter: &ArbiterHandle,
    kind: &'static str,
    restart: Restart,
    make: F,
    report: ExitReport,
) -> ChildHandle
where
    C: AsyncContextParts<A> + Unpin + 'static,
    A: Actor<Context = C> + actix::Supervised,
    F: FnOnce() -> ContextFut<A, C> + Send + 'static,
{
    let (ctl_tx, ctl_rx) = mpsc::unbounded();
    let (done_tx, done_rx) = oneshot::channel();
    arbiter.spawn_fn(move || {
        actix_rt::spawn(Supervised {
            fut: make(),
            kind,
            restart,
            report,
            control: ctl_rx,
            control_open: true,
            parked: false,
            done: Some(done_tx),
        });
    });
    ChildHandle {
        control: ctl_tx,
        finished: Some(done_rx),
    }
}

/// The supervising future around one actor; see the module docs.
pub struct Supervised<A, C = Context<A>>
where
    C: AsyncContextParts<A> + Unpin,
    A: Actor<Context = C>,
{
    fut: ContextFut<A, C>,
    kind: &'static str,
    restart: Restart,
    report: ExitReport,
    control: mpsc::UnboundedReceiver<Control>,
    control_open: bool,
    parked: bool,
    done: Option<oneshot::Sender<()>>,
}

impl<A, C> Supervised<A, C>
where
    C: AsyncContextParts<A> + Unpin,
    A: Actor<Context = C> + actix::Supervised,
{
    fn finish(&mut self) -> Poll<()> {
        if let Some(done) = self.done.take() {
            let _ = done.send(());
        }
        Poll::Ready(())
    }
}

impl<A, C> Future for Supervised<A, C>
where
    C: AsyncContextParts<A> + Unpin,
    A: Actor<Context = C> + actix::Supervised,
{
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<()> {
        let this = self.get_mut();
        loop {
            while this.control_open {
                match this.control.poll_next_unpin(cx) {
                    Poll::Ready(Some(Control::Restart { cause })) => {
                        metrics::counter!(m::ACTOR_RESTARTS, "kind" => this.kind, "cause" => cause)
                            .increment(1);
                        tracing::info!(kind = this.kind, cause, "restarting supervised actor");
                        if !this.fut.restart() {
                            return this.finish();
                        }
                        this.parked = false;
                    }
                    Poll::Ready(Some(Control::Stop)) => return this.finish(),
                    Poll::Ready(None) => {
                        // The supervisor is gone: keep running, but nobody can restart us any more.
                        this.control_open = false;
                    }
                    Poll::Pending => break,
                }
            }
            if this.parked {
                if !this.control_open {
                    return this.finish();
                }
                return Poll::Pending;
            }
            let exit = match catch_unwind(AssertUnwindSafe(|| Pin::new(&mut this.fut).poll(cx))) {
                Ok(Poll::Pending) => return Poll::Pending,
                Ok(Poll::Ready(())) => Exit::Normal,
                Err(panic) => Exit::Panicked(panic_message(panic.as_ref())),
            };
            if exit.is_abnormal() {
                tracing::warn!(kind = this.kind, cause = ?exit, "supervised actor failed");
            }
            let wants_restart = this.restart.wants_restart(&exit);
            (this.report)(exit);
            if !wants_restart {
                return this.finish();
            }
            this.parked = true;
        }
    }
}
