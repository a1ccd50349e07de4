//! Replacing the running binary without disconnecting anyone.
//!
//! ```text
//!  new process (switchboard --takeover)          running process
//!  connect control.sock, hello  ───────────────▶ (accept thread) ends `run` with a handover:
//!                                                  chat doors closed, agents paused,
//!                                                  sessions commit and hand over (paused,
//!                                                  everything committed sent), agents hand over,
//!                                                  REST drains, the bridge, tickets and stores close
//!  ◀─────────── listeners (2 fds), connections (fds + who + unread bytes), released
//!  open stores, start the tree, take up every
//!  connection, bind control.sock  ── ready ────▶ exits (its copies of the sockets close)
//! ```
//!
//! A client notices nothing: frames it sends meanwhile wait in the kernel, and the new process
//! reads them. A connection that cannot travel as it is (bytes queued for a slow reader, a
//! fragmented message half read) is closed with 1012 and its client resumes with nothing lost.
//! If the new process is not ready within `upgrade.deadline_ms` of its hello (or fails, or
//! dies), the old one stops it (SIGKILL) and serves on: it runs its tree again on the sockets it
//! kept, taking up its own connections the way a new process would (rollback).
//!
//! [`control`] is the wire between the two processes; [`crate::chat::handover`] says what a
//! connection is in chat's terms.

pub mod control;

use crate::chat::handover::HandedOver;

pub use control::{listen, take_over, ReadySignal, Requests, Successor, Takeover, UpgradeError};

/// What [`crate::run_with`] does about upgrades.
#[derive(Default)]
pub struct Upgrade {
    /// Successors asking for a handover (the control socket's accept thread); the first one ends
    /// the run with [`Outcome::HandOver`].
    pub requests: Option<Requests>,
    /// Connections handed over by the process this one replaces, taken up as the tree starts.
    pub inherited: Vec<HandedOver>,
    /// Told once the tree is up and the connections are taken up (a takeover or a rollback).
    pub ready: Option<ReadySignal>,
    /// This run is a rollback: the last upgrade was abandoned.
    pub rollback: bool,
}

/// How a run ended.
#[derive(Debug)]
pub enum Outcome {
    /// Shut down (SIGTERM, SIGINT).
    Stopped,
    /// Stopped for a successor: everything is quiesced and closed; the connections (whose sockets
    /// this process still holds) go to it with the listeners.
    HandOver {
        successor: Successor,
        connections: Vec<HandedOver>,
    },
}

/// Tells systemd (when it started us with `Type=notify`: `$NOTIFY_SOCKET` is set) that this
/// process is ready and is the service's main process: after a takeover the unit follows the new
/// process (`NotifyAccess=all`). Without systemd it does nothing.
pub fn notify_systemd_ready() {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let message = format!("MAINPID={}\nREADY=1\n", std::process::id());
    let sent = (|| {
        let socket = std::os::unix::net::UnixDatagram::unbound()?;
        use std::os::unix::ffi::OsStrExt;
        let path = path.as_bytes();
        if let Some(name) = path.strip_prefix(b"@") {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            socket.send_to_addr(message.as_bytes(), &addr)?;
        } else {
            let path = std::path::Path::new(std::ffi::OsStr::from_bytes(path));
            socket.send_to(message.as_bytes(), path)?;
        }
        std::io::Result::Ok(())
    })();
    if let Err(e) = sent {
        tracing::warn!(error = %e, "could not notify systemd");
    }
}
