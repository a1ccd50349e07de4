//! Running one HTTP listener as a supervised child (the REST listener; its server is built by
//! [`crate::http::start_api_server`] from `[api]`).

use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use actix_web::dev::{Server, ServerHandle};
use futures_util::future::{FutureExt, LocalBoxFuture};

use crate::metrics as m;
use crate::supervisor::supervised::Exit;
use crate::supervisor::{Child, ExitReport, Restart, StartError};

/// Starts a server on an already-bound listener; called again on each restart.
pub type Serve = Box<dyn Fn(TcpListener) -> std::io::Result<Server>>;

/// One listener as a supervised child: permanent; restarted on a clone of the same socket if its
/// server ever stops on its own; stopped gracefully (in-flight requests drain within
/// `shutdown.grace_ms`). Whatever app it serves is `serve`'s.
///
/// It keeps the bound socket for restarts, and lets go of it when stopped: a socket stays open, and
/// the kernel keeps completing handshakes nobody will serve, while any copy of it is.
pub struct ListenerChild {
    name: &'static str,
    /// The bound socket; `None` once stopped.
    listener: Option<TcpListener>,
    serve: Serve,
    handle: Option<ServerHandle>,
    report: Option<ExitReport>,
    /// Set when a successor takes over: closing the doors pauses accepting, so that connections
    /// wait in the kernel for it, and none is accepted here only to be dropped by the stop.
    handing_over: Option<Arc<AtomicBool>>,
}

impl ListenerChild {
    pub fn new(name: &'static str, listener: TcpListener, serve: Serve) -> Self {
        Self {
            name,
            listener: Some(listener),
            serve,
            handle: None,
            report: None,
            handing_over: None,
        }
    }

    /// See `handing_over`.
    pub fn pausing_for_successor(mut self, flag: Arc<AtomicBool>) -> Self {
        self.handing_over = Some(flag);
        self
    }

    fn launch(&mut self) -> Result<(), StartError> {
        let child = self.name;
        let fail = |e: std::io::Error| StartError {
            child,
            message: e.to_string(),
        };
        let listener = self
            .listener
            .as_ref()
            .ok_or_else(|| std::io::Error::other("the listener was stopped"))
            .and_then(TcpListener::try_clone)
            .map_err(fail)?;
        let server = (self.serve)(listener).map_err(fail)?;
        self.handle = Some(server.handle());
        let report = self.report.clone();
        actix_rt::spawn(async move {
            let result = server.await;
            if let Some(report) = report {
                match result {
                    Ok(()) => report(Exit::Normal),
                    Err(e) => report(Exit::Panicked(e.to_string())),
                }
            }
        });
        Ok(())
    }
}

impl Child for ListenerChild {
    fn name(&self) -> &'static str {
        self.name
    }

    fn restart_type(&self) -> Restart {
        Restart::Permanent
    }

    fn start(&mut self, report: ExitReport) -> Result<(), StartError> {
        self.report = Some(report);
        self.launch()
    }

    fn restart(&mut self, cause: &'static str) -> Result<(), StartError> {
        metrics::counter!(m::ACTOR_RESTARTS, "kind" => self.name, "cause" => cause).increment(1);
        if let Some(old) = self.handle.take() {
            actix_rt::spawn(old.stop(true));
        }
        self.launch()
    }

    fn close_doors(&mut self) {
        let handing_over = self
            .handing_over
            .as_ref()
            .is_some_and(|f| f.load(Ordering::SeqCst));
        if let (true, Some(h)) = (handing_over, self.handle.as_ref()) {
            actix_rt::spawn(h.pause());
        }
    }

    fn stop(&mut self) -> LocalBoxFuture<'static, ()> {
        // Stopping is not an exit to report.
        self.report = None;
        // New connections are refused from now on (once the server's accept thread, told to stop
        // below, drops its copy), not queued for the length of the drain.
        self.listener = None;
        let handle = self.handle.take();
        async move {
            if let Some(h) = handle {
                h.stop(true).await;
            }
        }
        .boxed_local()
    }
}
