//! Restart intensity, as in OTP: more than `max` restarts within `window` means the failure is not
//! transient and the supervisor must give up and escalate.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct Intensity {
    max: u32,
    window: Duration,
    restarts: VecDeque<Instant>,
}

impl Intensity {
    pub fn new(max: u32, window: Duration) -> Self {
        Self {
            max,
            window,
            restarts: VecDeque::new(),
        }
    }

    /// Records a restart at `now`; `false` when this one exceeds the intensity.
    pub fn record(&mut self, now: Instant) -> bool {
        while let Some(first) = self.restarts.front() {
            if now.duration_since(*first) > self.window {
                self.restarts.pop_front();
            } else {
                break;
            }
        }
        self.restarts.push_back(now);
        self.restarts.len() as u32 <= self.max
    }

    pub fn reset(&mut self) {
        self.restarts.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allows_max_restarts_in_window_then_refuses() {
        let mut i = Intensity::new(3, Duration::from_secs(10));
        let t = Instant::now();
        assert!(i.record(t));
        assert!(i.record(t + Duration::from_secs(1)));
        assert!(i.record(t + Duration::from_secs(2)));
        assert!(!i.record(t + Duration::from_secs(3)));
    }

    #[test]
    fn old_restarts_leave_the_window() {
        let mut i = Intensity::new(1, Duration::from_secs(5));
        let t = Instant::now();
        assert!(i.record(t));
        assert!(i.record(t + Duration::from_secs(6)));
        assert!(!i.record(t + Duration::from_secs(7)));
    }

    #[test]
    fn zero_means_never_restart() {
        let mut i = Intensity::new(0, Duration::from_secs(5));
        assert!(!i.record(Instant::now()));
    }
}
