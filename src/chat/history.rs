//! A numbered, bounded stream of frames kept for resume: each recorded frame gets the next seq
//! (1, 2, 3, …), the newest are kept within a count (`max`) and a byte budget (`max_bytes`, so a
//! stream of large frames cannot grow memory without bound), and a reconnecting client that names
//! the last seq it saw is given every later one, in order, or told why it cannot be. Customers'
//! sessions and agents' connections each keep one.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

/// A frame that may carry a place in a [`History`].
pub trait Numbered: Clone {
    fn seq(&self) -> Option<u64>;
    /// About the bytes the frame holds in memory, for the byte budget.
    fn weight(&self) -> usize;
}

/// Why a resume cannot replay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayError {
    /// The client claims frames that were never sent.
    Ahead { newest: u64 },
    /// Frames after the client's seq are no longer kept.
    Lost { oldest_kept: u64 },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(bound(
    serialize = "F: Serialize",
    deserialize = "F: serde::de::DeserializeOwned"
))]
pub struct History<F> {
    last_seq: u64,
    /// Oldest first.
    frames: VecDeque<F>,
    /// The kept frames' weight.
    #[serde(default)]
    bytes: usize,
}

impl<F> Default for History<F> {
    fn default() -> Self {
        Self {
            last_seq: 0,
            frames: VecDeque::new(),
            bytes: 0,
        }
    }
}

impl<F: Numbered> History<F> {
    /// The newest seq given out (0 before the first).
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// Numbers `make`'s frame with the next seq, keeps it (dropping the oldest beyond `max` frames
    /// or `max_bytes`; the newest frame is always kept), and returns it.
    pub fn record(&mut self, max: usize, max_bytes: usize, make: impl FnOnce(u64) -> F) -> F {
        self.last_seq += 1;
        let frame = make(self.last_seq);
        self.bytes += frame.weight();
        self.frames.push_back(frame.clone());
        while self.frames.len() > max.max(1) || (self.bytes > max_bytes && self.frames.len() > 1) {
            if let Some(old) = self.frames.pop_front() {
                self.bytes = self.bytes.saturating_sub(old.weight());
            }
        }
        frame
    }

    /// A history read back from a journal: `last_seq` given out, and its newest frames (oldest
    /// first), kept within `max` frames and `max_bytes` as [`Self::record`] would have.
    pub fn restore(last_seq: u64, frames: Vec<F>, max: usize, max_bytes: usize) -> Self {
        let mut h = Self {
            last_seq,
            frames: VecDeque::new(),
            bytes: 0,
        };
        for frame in frames.into_iter().rev() {
            let w = frame.weight();
            if !h.frames.is_empty() && (h.frames.len() >= max.max(1) || h.bytes + w > max_bytes) {
                break;
            }
            h.bytes += w;
            h.frames.push_front(frame);
        }
        h
    }

    /// The kept frames' weight (see [`Numbered::weight`]).
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The newest kept frames before `before` (all kept frames when `None`) within `max_bytes`
    /// (at least one), oldest first, and whether older ones are kept too.
    pub fn page_before(&self, before: Option<u64>, max_bytes: usize) -> (Vec<F>, bool) {
        let mut older = self
            .frames
            .iter()
            .rev()
            .filter(|f| match before {
                Some(b) => f.seq().is_some_and(|s| s < b),
                None => true,
            })
            .peekable();
        let (mut page, mut used) = (Vec::new(), 0usize);
        while let Some(f) = older.peek() {
            let w = f.weight();
            if !page.is_empty() && used + w > max_bytes {
                break;
            }
            used += w;
            page.push((*f).clone());
            older.next();
        }
        let more = older.peek().is_some();
        page.reverse();
        (page, more)
    }

    /// Every kept frame after `last_seq`, oldest first, or why they cannot all be given.
    pub fn replay_after(&self, last_seq: u64) -> Result<Vec<F>, ReplayError> {
        if last_seq > self.last_seq {
            return Err(ReplayError::Ahead {
                newest: self.last_seq,
            });
        }
        let oldest_kept = self
            .frames
            .front()
            .and_then(Numbered::seq)
            .unwrap_or(self.last_seq + 1);
        if last_seq + 1 < oldest_kept {
            return Err(ReplayError::Lost { oldest_kept });
        }
        Ok(self.after(last_seq).cloned().collect())
    }

    /// The kept frames after `last_seq`.
    pub fn after(&self, last_seq: u64) -> impl Iterator<Item = &F> {
        self.frames
            .iter()
            .filter(move |f| f.seq().is_some_and(|s| s > last_seq))
    }

    /// Every kept frame, oldest first.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = &F> {
        self.frames.iter()
    }

    pub fn shrink(&mut self) {
        self.frames.shrink_to_fit();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct F(u64);

    impl Numbered for F {
        fn seq(&self) -> Option<u64> {
            Some(self.0)
        }

        fn weight(&self) -> usize {
            10
        }
    }

    #[test]
    fn replay_gives_every_frame_after_last_seq_or_says_why_not() {
        let mut h = History::default();
        for _ in 0..5 {
            h.record(8, usize::MAX, F);
        }
        let seqs = |v: Vec<F>| v.into_iter().map(|f| f.0).collect::<Vec<_>>();
        assert_eq!(seqs(h.replay_after(2).unwrap()), [3, 4, 5]);
        assert!(h.replay_after(5).unwrap().is_empty());
        assert_eq!(h.replay_after(9), Err(ReplayError::Ahead { newest: 5 }));
        for _ in 0..10 {
            h.record(8, usize::MAX, F);
        }
        assert_eq!(h.replay_after(3), Err(ReplayError::Lost { oldest_kept: 8 }));
        assert_eq!(
            seqs(h.replay_after(7).unwrap()),
            (8..=15).collect::<Vec<_>>()
        );
    }

    #[test]
    fn the_byte_budget_drops_the_oldest_frames_but_never_the_newest() {
        let mut h = History::default();
        for _ in 0..10 {
            h.record(100, 35, F);
        }
        assert_eq!(h.bytes(), 30, "three frames of ten fit in 35 bytes");
        assert_eq!(h.replay_after(6), Err(ReplayError::Lost { oldest_kept: 8 }));
        let mut one = History::default();
        one.record(100, 1, F);
        assert_eq!(
            one.bytes(),
            10,
            "a frame over the budget on its own is still kept"
        );
    }

    #[test]
    fn pages_walk_back_within_their_byte_budget() {
        let mut h = History::default();
        for _ in 0..10 {
            h.record(100, usize::MAX, F);
        }
        let seqs = |v: &[F]| v.iter().map(|f| f.0).collect::<Vec<_>>();
        let (page, more) = h.page_before(None, 30);
        assert_eq!((seqs(&page), more), (vec![8, 9, 10], true));
        let (page, more) = h.page_before(Some(8), 30);
        assert_eq!((seqs(&page), more), (vec![5, 6, 7], true));
        let (page, more) = h.page_before(Some(3), 30);
        assert_eq!((seqs(&page), more), (vec![1, 2], false));
        let (page, _) = h.page_before(None, 1);
        assert_eq!(seqs(&page), vec![10], "at least one frame");
    }
}
