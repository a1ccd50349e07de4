//! A connection as the actor it is attached to holds it (a customer's session or an agent): the
//! [`Link`] frames go out through, the handle of its inbound stream, when it last showed life and
//! was pinged, and its frame-rate limiter. Both kinds of actor write, ping, time out and rate-limit
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
    limiter: DefaultDirectRateLimiter,
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
    pub fn new(link: Box<dyn Link>, reader: SpawnHandle, rate_per_sec: u32, burst: u32) -> Self {
        let quota = Quota::per_second(nonzero(rate_per_sec)).allow_burst(nonzero(burst));
        Self {
            link,
            reader,
            last_heard: Instant::now(),
            last_ping: Instant::now(),
            limiter: RateLimiter::direct(quota),
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

    /// One inbound frame against the rate limit; `false`: over it.
    pub fn admit(&mut self) -> bool {
        self.limiter.check().is_ok()
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
