//! How a run's sessions are shared out: how many worker processes (no more sessions in one than
//! its open-files limit allows), how many sessions each, and which loopback source addresses they
//! connect from (each source address has its own ~28,000 ephemeral ports towards the server).
//! Pure, so the sharing is unit-tested; agents will get their share here too.

use std::net::Ipv4Addr;

/// Descriptors a worker needs besides its sessions' sockets (stdio, the runtime's epoll and
/// eventfd, a few in flight while connecting).
const RESERVED_FDS: u64 = 100;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub workers: Vec<WorkerPlan>,
    /// The most sessions one worker may hold.
    pub per_worker: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerPlan {
    pub index: usize,
    pub sessions: usize,
    pub sources: Vec<Ipv4Addr>,
}

/// `sessions` over at least `min_workers` workers, at most `per_worker` each (default: the
/// open-files limit `nofile` less a reserve), from `sources` addresses 127.0.0.2 onwards.
pub fn plan(
    sessions: usize,
    min_workers: usize,
    per_worker: Option<usize>,
    nofile: u64,
    sources: u8,
) -> Plan {
    let per_worker = per_worker
        .unwrap_or(nofile.saturating_sub(RESERVED_FDS) as usize)
        .max(1);
    let count = sessions.div_ceil(per_worker).max(min_workers).max(1);
    let all: Vec<Ipv4Addr> = (0..sources.max(1))
        .map(|i| Ipv4Addr::new(127, 0, 0, 2 + i))
        .collect();
    let workers = (0..count)
        .map(|j| {
            // Each worker starts at another address, so small runs still use several.
            let mut mine = all.clone();
            mine.rotate_left(j % all.len());
            WorkerPlan {
                index: j,
                sessions: sessions / count + usize::from(j < sessions % count),
                sources: mine,
            }
        })
        .collect();
    Plan {
        workers,
        per_worker,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_past_one_process_limit_get_more_workers() {
        let p = plan(50_000, 1, None, 20_000, 8);
        assert_eq!(p.per_worker, 19_900);
        assert_eq!(p.workers.len(), 3);
        assert_eq!(p.workers.iter().map(|w| w.sessions).sum::<usize>(), 50_000);
        assert!(p.workers.iter().all(|w| w.sessions <= p.per_worker));
    }

    #[test]
    fn asked_for_workers_share_evenly() {
        let p = plan(10, 3, None, 20_000, 2);
        let counts: Vec<usize> = p.workers.iter().map(|w| w.sessions).collect();
        assert_eq!(counts, vec![4, 3, 3]);
        assert_eq!(p.workers[1].sources[0], Ipv4Addr::new(127, 0, 0, 3));
    }

    #[test]
    fn an_explicit_cap_wins_over_the_limit() {
        let p = plan(1000, 1, Some(300), 20_000, 1);
        assert_eq!(p.workers.len(), 4);
        assert_eq!(p.workers[0].sources, vec![Ipv4Addr::new(127, 0, 0, 2)]);
    }
}
