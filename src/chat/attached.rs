//! A connection as the actor it is attached to holds it (a customer's session or an agent): the
//! [`Link`] frames go out through, the handle of its inbound stream, when it last showed life and
//! was pinged, and its frame rate ([`FrameRate`], also used before a session starts). Both kinds of actor write, ping, time out and rate-limit
//! their connection the same way, here.

use std::time::{Duration, Instant};

use actix::SpawnHandle;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

use super::link::{Lane, Link, SendError};
use super::protocol::close;

pub struct Attached {
    pub link: Box<dyn Link>,
    /// The actor's handle on the connection's inbound stream.
    pub reader: SpawnHandle,
    pub last_heard: Instant,
    /// When the connection was last pinged (or attached).
    pub last_ping: Instant,
    rate: FrameRate,
}

/// A connection's inbound frame rate: a token bucket over every frame (control frames and frames
/// before a session included), and how many frames in a row went over it.
pub struct FrameRate {
    limiter: DefaultDirectRateLimiter,
    over: u32,
    close_after: u32,
}

/// What the rate says of one inbound frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rate {
    Within,
    /// Over the rate: refuse the frame (`error` rate_limited for a text frame).
    Over,
    /// Over it for more than `close_after` frames in a row: close the connection (1008).
    Close,
}

impl FrameRate {
    pub fn new(per_sec: u32, burst: u32, close_after: u32) -> Self {
        let quota = Quota::per_second(nonzero(per_sec)).allow_burst(nonzero(burst));
        Self {
            limiter: RateLimiter::direct(quota),
            over: 0,
            close_after,
        }
    }

    /// Counts one inbound frame.
    pub fn check(&mut self) -> Rate {
        if self.limiter.check().is_ok() {
            self.over = 0;
            return Rate::Within;
        }
        metrics::counter!(crate::metrics::CHAT_RATE_LIMITED).increment(1);
        self.over += 1;
        if self.over > self.close_after {
            Rate::Close
        } else {
            Rate::Over
        }
    }
}

/// What became of a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    Queued,
    /// A droppable frame the slow client goes without.
    Dropped,
    /// The client does not read: the connection was closed (4008); the actor detaches it.
    SlowConsumer,
    /// The connection is gone; the actor detaches it.
    Closed,
}

/// What a heartbeat check did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Beat {
    Quiet,
    Pinged,
    /// Silent past the timeout: closed (4000); the actor cancels its reader and detaches it.
    TimedOut,
}

impl Attached {
    pub fn new(link: Box<dyn Link>, reader: SpawnHandle, rate: FrameRate) -> Self {
        Self {
            link,
            reader,
            last_heard: Instant::now(),
            last_ping: Instant::now(),
            rate,
        }
    }

    pub fn send(&mut self, text: String, lane: Lane) -> Sent {
        match self.link.send(text, lane) {
            Ok(()) => Sent::Queued,
            Err(SendError::Full) if lane == Lane::Droppable => Sent::Dropped,
            Err(SendError::Full) => {
                self.link
                    .close(close::SLOW_CONSUMER, "slow consumer: resume");
                Sent::SlowConsumer
            }
            Err(SendError::Closed) => Sent::Closed,
        }
    }

    /// One inbound frame against the rate limit. On [`Rate::Close`] the connection is already
    /// closed (1008); the actor detaches it.
    pub fn admit(&mut self) -> Rate {
        let rate = self.rate.check();
        if rate == Rate::Close {
            self.link
                .close(close::POLICY_VIOLATION, "over the frame rate: resume");
        }
        rate
    }

    /// Pings every `interval`, and closes a connection silent for `timeout`.
    pub fn heartbeat(&mut self, now: Instant, interval: Duration, timeout: Duration) -> Beat {
        if now.duration_since(self.last_heard) >= timeout {
            self.link
                .close(close::HEARTBEAT_TIMEOUT, "heartbeat timeout");
            return Beat::TimedOut;
        }
        if now.duration_since(self.last_ping) >= interval {
            self.last_ping = now;
            self.link.ping();
            return Beat::Pinged;
        }
        Beat::Quiet
    }
}

pub fn nonzero(n: u32) -> std::num::NonZeroU32 {
    std::num::NonZeroU32::new(n.max(1)).unwrap_or(std::num::NonZeroU32::MIN)
}
