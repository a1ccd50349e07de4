//! The control socket between a running process and its successor: a Unix stream socket
//! (`upgrade.control_socket`, mode 0600, the peer's uid checked) carrying length-prefixed JSON
//! messages, with file descriptors passed alongside (SCM_RIGHTS) for the listening sockets and
//! every handed-over connection.
//!
//! The running process accepts on a thread of its own ([`listen`]) and hands successors to the
//! server as [`Successor`]s; the new process connects with [`take_over`]. Each message's
//! descriptors travel with its bytes and are taken in order, however the kernel splits the stream.

#![allow(unsafe_code)] // descriptors received over SCM_RIGHTS become owned here, and only here

use std::collections::VecDeque;
use std::io::{self, IoSlice, IoSliceMut, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use nix::sys::socket::{
    getsockopt, recvmsg, sendmsg, sockopt::PeerCredentials, ControlMessage, ControlMessageOwned,
    MsgFlags,
};
use serde::{Deserialize, Serialize};

use crate::chat::handover::{HandedOver, Party};
use crate::chat::link::Socket;
use crate::metrics as m;
use crate::Listeners;

/// Connections per message: well under the kernel's 253 descriptors per SCM_RIGHTS message.
const BATCH: usize = 128;

/// Longest message accepted (a batch of 128 connections with their unread bytes fits easily).
const MAX_MESSAGE: usize = 64 << 20;

/// How long an accepted peer may take to say hello.
const HELLO_WAIT: Duration = Duration::from_secs(5);

/// How long a stopped successor may take to let go of the control socket.
const STOP_WAIT: Duration = Duration::from_secs(5);

/// Why an upgrade did not happen.
#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    #[error("no running server answers on {path}: start it without --takeover")]
    NoServer {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("another process serves this data dir (its control socket {0} answers)")]
    AlreadyRunning(PathBuf),
    #[error("the control socket's peer is another user (uid {0})")]
    WrongUser(u32),
    #[error("the other process did not answer within the deadline")]
    Timeout,
    #[error("the other process went away mid-upgrade")]
    Gone,
    #[error("the new process failed: {0}")]
    Failed(String),
    #[error("bad control message: {0}")]
    Protocol(String),
    #[error("control socket i/o")]
    Io(#[from] io::Error),
}

/// What the two processes say.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Message {
    Hello {
        pid: u32,
        version: String,
    },
    /// Descriptors: the REST listener, then the chat listener.
    Listeners,
    /// One descriptor per party, in order; `raw` holds each one's unread bytes (base64).
    Connections {
        parties: Vec<Party>,
        raw: Vec<String>,
    },
    /// Everything is sent and the old process's stores are closed.
    Released {
        connections: usize,
    },
    Ready,
    Failed {
        error: String,
    },
}

/// One end of the control socket: framed messages, descriptors taken in order.
#[derive(Debug)]
struct Channel {
    stream: UnixStream,
    buf: Vec<u8>,
    fds: VecDeque<OwnedFd>,
}

impl Channel {
    fn new(stream: UnixStream) -> Self {
        Self {
            stream,
            buf: Vec::new(),
            fds: VecDeque::new(),
        }
    }

    fn send(&mut self, msg: &Message, fds: &[RawFd]) -> Result<(), UpgradeError> {
        let body = serde_json::to_vec(msg).map_err(|e| UpgradeError::Protocol(e.to_string()))?;
        let head = (body.len() as u32).to_be_bytes();
        let mut frame = Vec::with_capacity(4 + body.len());
        frame.extend_from_slice(&head);
        frame.extend_from_slice(&body);
        let rights = [ControlMessage::ScmRights(fds)];
        let cmsgs: &[ControlMessage] = if fds.is_empty() { &[] } else { &rights };
        // The descriptors go with the first bytes; the rest of a long frame follows as a stream.
        let sent = sendmsg::<()>(
            self.stream.as_raw_fd(),
            &[IoSlice::new(&frame)],
            cmsgs,
            MsgFlags::empty(),
            None,
        )
        .map_err(io::Error::from)?;
        self.stream.write_all(&frame[sent..])?;
        Ok(())
    }

    /// The next message and the descriptors that came with it (`want` of them).
    fn recv(&mut self, deadline: Option<Instant>) -> Result<(Message, Vec<OwnedFd>), UpgradeError> {
        loop {
            if self.buf.len() >= 4 {
                let len = u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]])
                    as usize;
                if len > MAX_MESSAGE {
                    return Err(UpgradeError::Protocol(format!("message of {len} bytes")));
                }
                if self.buf.len() >= 4 + len {
                    let msg: Message = serde_json::from_slice(&self.buf[4..4 + len])
                        .map_err(|e| UpgradeError::Protocol(e.to_string()))?;
                    self.buf.drain(..4 + len);
                    let want = match &msg {
                        Message::Listeners => 2,
                        Message::Connections { parties, .. } => parties.len(),
                        _ => 0,
                    };
                    if self.fds.len() < want {
                        return Err(UpgradeError::Protocol(format!(
                            "{want} descriptors expected, {} came",
                            self.fds.len()
                        )));
                    }
                    let fds = self.fds.drain(..want).collect();
                    return Ok((msg, fds));
                }
            }
            if let Some(deadline) = deadline {
                let left = deadline
                    .checked_duration_since(Instant::now())
                    .filter(|d| !d.is_zero())
                    .ok_or(UpgradeError::Timeout)?;
                self.stream.set_read_timeout(Some(left))?;
            } else {
                self.stream.set_read_timeout(None)?;
            }
            self.read_some()?;
        }
    }

    fn read_some(&mut self) -> Result<(), UpgradeError> {
        let mut chunk = vec![0u8; 64 * 1024];
        let mut space = nix::cmsg_space!([RawFd; 253]);
        let (n, received) = {
            let mut iov = [IoSliceMut::new(&mut chunk)];
            let msg = recvmsg::<()>(
                self.stream.as_raw_fd(),
                &mut iov,
                Some(&mut space),
                MsgFlags::MSG_CMSG_CLOEXEC,
            );
            let msg = match msg {
                Ok(msg) => msg,
                Err(nix::errno::Errno::EAGAIN) => return Err(UpgradeError::Timeout),
                Err(nix::errno::Errno::EINTR) => return Ok(()),
                Err(e) => return Err(io::Error::from(e).into()),
            };
            let mut received = Vec::new();
            for cmsg in msg.cmsgs().map_err(io::Error::from)? {
                if let ControlMessageOwned::ScmRights(fds) = cmsg {
                    received.extend(fds);
                }
            }
            (msg.bytes, received)
        };
        for fd in received {
            // SAFETY: the kernel has just installed this descriptor in our table for this
            // message, and nothing else in the process knows its number: it is ours to own.
            self.fds.push_back(unsafe { OwnedFd::from_raw_fd(fd) });
        }
        if n == 0 {
            return Err(UpgradeError::Gone);
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }

    /// The peer's uid and pid, refusing another user.
    fn peer(&self) -> Result<i32, UpgradeError> {
        let creds = getsockopt(&self.stream, PeerCredentials).map_err(io::Error::from)?;
        if creds.uid() != nix::unistd::Uid::current().as_raw() {
            return Err(UpgradeError::WrongUser(creds.uid()));
        }
        Ok(creds.pid())
    }
}

/// Successors asking the running process for a handover.
pub type Requests = tokio::sync::mpsc::UnboundedReceiver<Successor>;

/// Listens on the control socket at `path` (mode 0600) on a thread of its own. `replace`: take
/// the path over from the process this one replaces; otherwise a socket there that answers
/// means another process serves this data dir, and is an error.
pub fn listen(path: &Path, replace: bool) -> Result<Requests, UpgradeError> {
    if path.exists() {
        if !replace && UnixStream::connect(path).is_ok() {
            return Err(UpgradeError::AlreadyRunning(path.to_path_buf()));
        }
        std::fs::remove_file(path)?;
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    std::thread::Builder::new()
        .name("upgrade-control".into())
        .spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                match greet(stream) {
                    Ok(successor) => {
                        tracing::info!(pid = successor.pid, version = %successor.version, "a new process asks to take over");
                        if tx.send(successor).is_err() {
                            return;
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "control socket: peer refused"),
                }
            }
        })?;
    Ok(rx)
}

fn greet(stream: UnixStream) -> Result<Successor, UpgradeError> {
    let mut channel = Channel::new(stream);
    let pid = channel.peer()?;
    match channel.recv(Some(Instant::now() + HELLO_WAIT))? {
        (Message::Hello { version, .. }, _) => Ok(Successor {
            channel,
            pid,
            version,
            asked_at: Instant::now(),
        }),
        (other, _) => Err(UpgradeError::Protocol(format!(
            "expected hello, got {other:?}"
        ))),
    }
}

/// A new process that asked to take over, as the running one sees it.
#[derive(Debug)]
pub struct Successor {
    channel: Channel,
    pid: i32,
    version: String,
    asked_at: Instant,
}

impl Successor {
    /// Sends the listeners and every connection, says the stores are released, and waits until
    /// the successor is ready (`deadline` after it asked). On any failure the successor is
    /// stopped (SIGKILL) before this returns, so the caller may serve on (rollback).
    pub fn hand_over(
        mut self,
        listeners: &Listeners,
        connections: &[HandedOver],
        deadline: Duration,
    ) -> Result<(), UpgradeError> {
        let span = tracing::info_span!(
            "upgrade_hand_over",
            pid = self.pid,
            connections = connections.len()
        );
        let _guard = span.enter();
        let until = self.asked_at + deadline;
        let result = self.send_all(listeners, connections, until);
        if let Err(e) = &result {
            tracing::error!(error = %e, "upgrade abandoned: stopping the new process and serving on");
            self.stop();
        }
        result
    }

    fn send_all(
        &mut self,
        listeners: &Listeners,
        connections: &[HandedOver],
        until: Instant,
    ) -> Result<(), UpgradeError> {
        self.channel.send(
            &Message::Listeners,
            &[listeners.api.as_raw_fd(), listeners.chat.as_raw_fd()],
        )?;
        for batch in connections.chunks(BATCH) {
            let parties = batch.iter().map(|h| h.party.clone()).collect();
            let b64 = base64::engine::general_purpose::STANDARD;
            let raw = batch.iter().map(|h| b64.encode(&h.socket.raw)).collect();
            let fds: Vec<RawFd> = batch.iter().map(|h| h.socket.socket.as_raw_fd()).collect();
            self.channel
                .send(&Message::Connections { parties, raw }, &fds)?;
        }
        self.channel.send(
            &Message::Released {
                connections: connections.len(),
            },
            &[],
        )?;
        tracing::info!(
            connections = connections.len(),
            quiesced_ms = self.asked_at.elapsed().as_millis() as u64,
            "everything handed over; waiting for the new process"
        );
        match self.channel.recv(Some(until))? {
            (Message::Ready, _) => {
                tracing::info!(
                    took_ms = self.asked_at.elapsed().as_millis() as u64,
                    "the new process is ready; this one exits"
                );
                Ok(())
            }
            (Message::Failed { error }, _) => Err(UpgradeError::Failed(error)),
            (other, _) => Err(UpgradeError::Protocol(format!(
                "expected ready, got {other:?}"
            ))),
        }
    }

    /// Kills the successor and waits (bounded) until its end of the socket is gone, i.e. it can
    /// no longer write anything.
    fn stop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.pid);
        if let Err(e) = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL) {
            tracing::warn!(pid = self.pid, error = %e, "could not stop the new process");
        }
        let until = Instant::now() + STOP_WAIT;
        loop {
            match self.channel.recv(Some(until)) {
                Ok(_) => continue,
                Err(UpgradeError::Gone) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "the stopped new process did not let go of the control socket");
                    return;
                }
            }
        }
    }
}

/// What a new process received from the one it replaces.
#[derive(Debug)]
pub struct Takeover {
    pub listeners: Listeners,
    pub connections: Vec<HandedOver>,
    pub ready: ReadySignal,
}

/// Asks the process serving on the control socket at `path` to hand over, and receives
/// everything (within `deadline`).
pub fn take_over(path: &Path, deadline: Duration) -> Result<Takeover, UpgradeError> {
    let span = tracing::info_span!("upgrade_take_over", path = %path.display());
    let _guard = span.enter();
    let started = Instant::now();
    let until = started + deadline;
    let stream = UnixStream::connect(path).map_err(|source| UpgradeError::NoServer {
        path: path.to_path_buf(),
        source,
    })?;
    let mut channel = Channel::new(stream);
    channel.peer()?;
    channel.send(
        &Message::Hello {
            pid: std::process::id(),
            version: env!("CARGO_PKG_VERSION").to_string(),
        },
        &[],
    )?;
    let (api, chat) = match channel.recv(Some(until))? {
        (Message::Listeners, fds) => {
            let mut fds = fds.into_iter();
            let (Some(api), Some(chat)) = (fds.next(), fds.next()) else {
                return Err(UpgradeError::Protocol("two listeners expected".into()));
            };
            (TcpListener::from(api), TcpListener::from(chat))
        }
        (other, _) => {
            return Err(UpgradeError::Protocol(format!(
                "expected listeners, got {other:?}"
            )))
        }
    };
    let mut connections = Vec::new();
    loop {
        match channel.recv(Some(until))? {
            (Message::Connections { parties, raw }, fds) => {
                if raw.len() != parties.len() {
                    return Err(UpgradeError::Protocol(
                        "connections and bytes differ".into(),
                    ));
                }
                let b64 = base64::engine::general_purpose::STANDARD;
                for ((party, raw), fd) in parties.into_iter().zip(raw).zip(fds) {
                    let raw = b64
                        .decode(raw)
                        .map_err(|e| UpgradeError::Protocol(e.to_string()))?;
                    connections.push(HandedOver {
                        party,
                        socket: Socket {
                            socket: TcpStream::from(fd),
                            raw,
                        },
                    });
                }
            }
            (Message::Released { connections: n }, _) => {
                if n != connections.len() {
                    return Err(UpgradeError::Protocol(format!(
                        "{n} connections announced, {} received",
                        connections.len()
                    )));
                }
                break;
            }
            (other, _) => {
                return Err(UpgradeError::Protocol(format!("unexpected {other:?}")));
            }
        }
    }
    tracing::info!(
        connections = connections.len(),
        waited_ms = started.elapsed().as_millis() as u64,
        "the running process handed over everything"
    );
    Ok(Takeover {
        listeners: Listeners { api, chat },
        connections,
        ready: ReadySignal(Arc::new(Mutex::new(Some((channel, started))))),
    })
}

/// The new process's word to the old one, said once: ready (it exits), or failed (it serves on).
#[derive(Debug, Clone)]
pub struct ReadySignal(Arc<Mutex<Option<(Channel, Instant)>>>);

impl ReadySignal {
    pub fn ready(&self) {
        if let Some((mut channel, started)) = self.take() {
            let took = started.elapsed();
            metrics::gauge!(m::UPGRADE_SECONDS).set(took.as_secs_f64());
            match channel.send(&Message::Ready, &[]) {
                Ok(()) => tracing::info!(took_ms = took.as_millis() as u64, "took over: ready"),
                Err(e) => {
                    tracing::error!(error = %e, "could not tell the old process we are ready")
                }
            }
        }
    }

    pub fn failed(&self, error: &dyn std::fmt::Display) {
        if let Some((mut channel, _)) = self.take() {
            let _ = channel.send(
                &Message::Failed {
                    error: error.to_string(),
                },
                &[],
            );
        }
    }

    fn take(&self) -> Option<(Channel, Instant)> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}
