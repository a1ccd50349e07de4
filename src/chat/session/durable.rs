//! Write-before-send for one session: every numbered frame the state records is appended to the
//! chat journal, with the session's record, before anyone is sent it; `message.ack` (to the
//! customer, or to an agent) waits for the commit of the message it acknowledges. Frames that must
//! wait are held in order and released as commits come back, so the client sees exactly the
//! order the state produced. One append is in flight per session; whatever the state records
//! meanwhile goes in the next.
//!
//! While nothing waits, a session holds only the newest committed seq: the rest ([`Io`]) is
//! allocated for the few milliseconds a write is under way.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use actix::prelude::*;
use futures_channel::oneshot;

use super::Session;
use crate::chat::handover::{HandOff, HandedOver, Party};
use crate::chat::link::Lane;
use crate::chat::protocol::{close, ServerFrame};
use crate::metrics as m;
use crate::store::chat_journal::{JournalFrame, SessionRecord};
use crate::store::StoreError;

/// What a held item waits for before it goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Need {
    /// The frame with this seq is committed.
    Seq(u64),
    /// Everything recorded so far, and the session's record, are committed.
    Write,
}

/// How a session stops once its last write is committed.
#[derive(Debug, Clone)]
pub(super) enum Ending {
    /// The session ended (closed by someone, or timed out): close the connection with this code.
    Close(u16, &'static str),
    /// Detached past its grace: it ends without a word.
    Expire,
    /// Detached and idle: it leaves memory and lives in the journal until resumed.
    Passivate,
    /// The server is stopping (or upgrading): the client is told to resume (close 1012) and the
    /// session carries on in the next process.
    Suspend,
    /// An upgrade: like `Suspend`, but the connection (paused, everything committed sent) goes
    /// to the next process instead of being closed.
    HandOver(HandOff),
}

enum Item {
    Frame {
        text: String,
        lane: Lane,
        kind: &'static str,
    },
    End(Ending),
}

/// A session's writes under way and what waits for them.
#[derive(Default)]
pub(super) struct Io {
    in_flight: bool,
    held: VecDeque<(Need, Item)>,
    /// Agents' acks waiting for their message's commit.
    waiters: Vec<(u64, oneshot::Sender<()>)>,
    /// Appends failed in a row (the journal is unwell); new messages are refused meanwhile.
    failures: u32,
}

/// The backoff after a failed append.
fn backoff(failures: u32) -> Duration {
    Duration::from_millis((50u64 << failures.min(7)).min(5_000))
}

impl Session {
    fn io(&mut self) -> &mut Io {
        self.io.get_or_insert_with(Box::default)
    }

    /// Whether the journal refuses writes just now (new messages are answered `server_busy`).
    pub(super) fn journal_failing(&self) -> bool {
        self.io.as_ref().is_some_and(|io| io.failures > 0)
    }

    /// The seq a frame must see committed before it may go: its own, or for an ack the message's.
    fn need_of(frame: &ServerFrame) -> Option<u64> {
        match frame {
            ServerFrame::Ack { seq, .. } => Some(*seq),
            other => other.seq(),
        }
    }

    /// Sends `frame` now, or holds it until what it depends on is committed (and behind anything
    /// already held, so order is kept).
    pub(super) fn deliver(&mut self, frame: &ServerFrame, lane: Lane) {
        if self.attached.is_none() {
            return;
        }
        // A frame that shows nothing the journal must have (an error, typing, a position) goes
        // at once: only numbered frames and acks keep their order behind a write.
        let Some(need) = Self::need_of(frame) else {
            return self.send_now(frame.to_text(), lane, frame.kind());
        };
        let holding = self.io.as_ref().is_some_and(|io| !io.held.is_empty());
        if !holding && need <= self.committed {
            return self.send_now(frame.to_text(), lane, frame.kind());
        }
        let item = Item::Frame {
            text: frame.to_text(),
            lane,
            kind: frame.kind(),
        };
        self.io().held.push_back((Need::Seq(need), item));
    }

    /// Stops the session the way `ending` says, once its last write is committed.
    pub(super) fn finish(&mut self, ending: Ending, ctx: &mut Context<Self>) {
        // A handover changes nothing the record says (the session stays attached, in the next
        // process): only what is not yet committed is written.
        if !matches!(ending, Ending::HandOver(_)) {
            self.dirty = true;
        }
        if matches!(ending, Ending::Expire) {
            self.expired = true;
        }
        self.io().held.push_back((Need::Write, Item::End(ending)));
        self.persist(ctx);
    }

    /// A new connection attached: what was held for the old one is not sent to it (its resume
    /// replays the numbered frames; acks it missed are answered again when it resends).
    pub(super) fn drop_held_frames(&mut self) {
        if let Some(io) = self.io.as_mut() {
            io.held.retain(|(_, item)| matches!(item, Item::End(_)));
        }
    }

    /// Resolves when the message with `seq` is committed (an agent's ack waits for it).
    pub(super) fn committed_at(&mut self, seq: u64) -> Option<oneshot::Receiver<()>> {
        if seq <= self.committed {
            return None;
        }
        let (tx, rx) = oneshot::channel();
        self.io().waiters.push((seq, tx));
        Some(rx)
    }

    fn record_now(&self) -> SessionRecord {
        let wall = |at: Instant| chrono::Utc::now() - at.elapsed();
        SessionRecord {
            session_id: self.state.id,
            resume_token_hash: self.state.resume_token_hash.to_hex(),
            state: self.state.to_record(),
            last_seq: self.state.last_seq(),
            last_activity_at: wall(self.last_customer),
            detached_at: self.detached_at.map(wall),
            closed: self.state.is_closed() || self.expired,
        }
    }

    /// Appends what the state recorded since the last append (and the record), unless an append
    /// is under way: its completion comes back here.
    pub(super) fn persist(&mut self, ctx: &mut Context<Self>) {
        let last = self.state.last_seq();
        if self.io.as_ref().is_some_and(|io| io.in_flight) {
            return;
        }
        if last <= self.committed && !self.dirty {
            return self.release_held(ctx);
        }
        let frames: Vec<JournalFrame> = self
            .state
            .frames_after(self.committed)
            .into_iter()
            .filter_map(|f| {
                let seq = f.seq()?;
                let at = match &f {
                    ServerFrame::Message { at, .. } => *at,
                    _ => chrono::Utc::now(),
                };
                Some(JournalFrame {
                    seq,
                    at,
                    body: f.to_text(),
                })
            })
            .collect();
        if frames.first().is_some_and(|f| f.seq != self.committed + 1)
            || (frames.is_empty() && last > self.committed)
        {
            // The history dropped frames before they were written (far over its byte budget
            // within one write): the journal has a gap a resume will report as lost history.
            metrics::counter!(m::CHAT_JOURNAL_ERRORS).increment(1);
            tracing::error!(session_id = %self.state.id, committed = self.committed, "frames left the history before the journal had them");
        }
        let record = self.record_now();
        self.dirty = false;
        self.io().in_flight = true;
        let started = Instant::now();
        let write = self
            .deps
            .journal
            .append(self.state.id, frames, Some(record));
        ctx.spawn(write.into_actor(self).map(move |result, act, ctx| {
            metrics::histogram!(m::CHAT_JOURNAL_WAIT).record(started.elapsed().as_secs_f64());
            let io = act.io();
            io.in_flight = false;
            match result {
                Ok(()) => {
                    io.failures = 0;
                    act.committed = act.committed.max(last);
                    act.forward_to_agent();
                    act.persist(ctx);
                }
                Err(StoreError::Fenced(_)) => {
                    // Another node took the session over (its customer resumed there): nothing
                    // more may be written from here, and the connection, if any, resumes there.
                    metrics::counter!(m::CHAT_FENCED).increment(1);
                    tracing::info!(session_id = %act.state.id, "chat session taken over by another node; stopping here");
                    if let Some(mut att) = act.attached.take() {
                        att.link
                            .close(close::REPLACED, "session resumed on another node");
                    }
                    ctx.stop();
                }
                Err(e) => {
                    io.failures += 1;
                    let wait = backoff(io.failures);
                    tracing::warn!(session_id = %act.state.id, error = %e, retry_in_ms = wait.as_millis() as u64, "chat journal append failed; retrying");
                    // Nothing was committed: the same frames and a fresh record go again.
                    act.dirty = true;
                    ctx.run_later(wait, |act, ctx| act.persist(ctx));
                }
            }
        }));
    }

    /// Sends what was held and is now committed, in order; carries out an ending whose turn came.
    fn release_held(&mut self, ctx: &mut Context<Self>) {
        let settled = self.state.last_seq() <= self.committed && !self.dirty;
        let Some(mut io) = self.io.take() else {
            return;
        };
        let committed = self.committed;
        let (done, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut io.waiters)
            .into_iter()
            .partition(|(seq, _)| *seq <= committed);
        io.waiters = waiting;
        for (_, tx) in done {
            let _ = tx.send(());
        }
        let mut ended = None;
        while let Some((need, _)) = io.held.front() {
            let ready = match *need {
                Need::Seq(seq) => seq <= committed,
                Need::Write => settled && !io.in_flight,
            };
            if !ready {
                break;
            }
            let Some((_, item)) = io.held.pop_front() else {
                break;
            };
            match item {
                Item::Frame { text, lane, kind } => self.send_now(text, lane, kind),
                Item::End(ending) => {
                    ended = Some(ending);
                    break;
                }
            }
        }
        let idle = !io.in_flight && io.held.is_empty() && io.waiters.is_empty() && io.failures == 0;
        if !idle {
            self.io = Some(io);
        }
        if let Some(ending) = ended {
            self.carry_out(ending, ctx);
        }
    }

    fn carry_out(&mut self, ending: Ending, ctx: &mut Context<Self>) {
        if matches!(ending, Ending::Passivate | Ending::Expire) && self.attached.is_some() {
            // A resume came in while the last write was under way: the client is back, so the
            // session stays, and its record says so again.
            self.expired = false;
            self.dirty = true;
            return self.persist(ctx);
        }
        match ending {
            Ending::Close(code, reason) => {
                if let Some(mut att) = self.attached.take() {
                    att.link.close(code, reason);
                }
            }
            Ending::Suspend => {
                self.quiet_stop = true;
                if let Some(mut att) = self.attached.take() {
                    att.link
                        .close(close::SERVICE_RESTART, "server restarting: resume");
                }
            }
            Ending::HandOver(hand_to) => {
                self.quiet_stop = true;
                if let Some(mut att) = self.attached.take() {
                    match att.link.detach() {
                        Some(socket) => hand_to.push(HandedOver {
                            party: Party::Customer {
                                session_id: self.state.id,
                                sent_seq: self.committed,
                            },
                            socket,
                        }),
                        None => {
                            metrics::counter!(m::UPGRADE_CLOSED, "party" => "customer")
                                .increment(1);
                            att.link
                                .close(close::SERVICE_RESTART, "server restarting: resume");
                        }
                    }
                }
            }
            Ending::Passivate => {
                self.quiet_stop = true;
                metrics::counter!(m::CHAT_PASSIVATED).increment(1);
            }
            Ending::Expire => {}
        }
        ctx.stop();
    }
}
