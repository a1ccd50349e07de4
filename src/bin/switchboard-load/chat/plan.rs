//! How a run's sessions are shared out: how many worker processes (no more sessions in one than
//! its open-files limit allows), how many sessions each, and which loopback source addresses they
//! connect from (each source address has its own ~28,000 ephemeral ports towards the server).
//! Agent connections are shared out the same way, and [`hands_off`] says which sessions the fake
//! Django hands to a human, so the customer driver and the fake Django agree without talking.
//! Pure, so the sharing is unit-tested.

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
    /// Agent connections (`/ws/agent`) this worker holds besides its customers.
    pub agents: usize,
    pub sources: Vec<Ipv4Addr>,
}

/// `sessions` over at least `min_workers` workers, at most `per_worker` each (default: the
/// open-files limit `nofile` less a reserve), from `sources` addresses 127.0.0.2 onwards; `agents`
/// spread over the same workers.
pub fn plan(
    sessions: usize,
    agents: usize,
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
                agents: agents / count + usize::from(j < agents % count),
                sources: mine,
            }
        })
        .collect();
    Plan {
        workers,
        per_worker,
    }
}

/// Whether the AI hands `session_id` to a human when a `rate` share of sessions is handed off: a
/// hash of the id, so the fake Django (which answers) and the customer (which then waits for its
/// agent) decide alike.
pub fn hands_off(session_id: &str, rate: f64) -> bool {
    if rate >= 1.0 {
        return true;
    }
    if rate <= 0.0 {
        return false;
    }
    // FNV-1a, stable across processes and builds unlike the std hasher, then murmur3's finaliser:
    // FNV alone leaves the high bits of short, similar ids poorly mixed.
    let mut h = session_id.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    ((h >> 11) as f64 / (1u64 << 53) as f64) < rate
}

/// Chats each agent takes when none is asked for: the sessions expected to be handed off, shared
/// over the agents with room for all (at least 1).
pub fn agent_capacity(sessions: usize, agents: usize, handoff_rate: f64) -> usize {
    if agents == 0 {
        return 1;
    }
    let handed = (sessions as f64 * handoff_rate.clamp(0.0, 1.0)).ceil() as usize;
    // A fraction of sessions is a hash, not an exact count: leave room for the spread.
    let handed = if handoff_rate < 1.0 {
        handed + handed / 10 + 8
    } else {
        handed
    };
    handed.div_ceil(agents).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_past_one_process_limit_get_more_workers() {
        let p = plan(50_000, 0, 1, None, 20_000, 8);
        assert_eq!(p.per_worker, 19_900);
        assert_eq!(p.workers.len(), 3);
        assert_eq!(p.workers.iter().map(|w| w.sessions).sum::<usize>(), 50_000);
        assert!(p.workers.iter().all(|w| w.sessions <= p.per_worker));
    }

    #[test]
    fn asked_for_workers_share_evenly() {
        let p = plan(10, 5, 3, None, 20_000, 2);
        let counts: Vec<usize> = p.workers.iter().map(|w| w.sessions).collect();
        assert_eq!(counts, vec![4, 3, 3]);
        let agents: Vec<usize> = p.workers.iter().map(|w| w.agents).collect();
        assert_eq!(agents, vec![2, 2, 1]);
        assert_eq!(p.workers[1].sources[0], Ipv4Addr::new(127, 0, 0, 3));
    }

    #[test]
    fn an_explicit_cap_wins_over_the_limit() {
        let p = plan(1000, 0, 1, Some(300), 20_000, 1);
        assert_eq!(p.workers.len(), 4);
        assert_eq!(p.workers[0].sources, vec![Ipv4Addr::new(127, 0, 0, 2)]);
    }

    #[test]
    fn handoff_rate_picks_about_that_share_of_sessions() {
        let ids: Vec<String> = (0..10_000).map(|i| format!("session-{i}")).collect();
        let picked = ids.iter().filter(|id| hands_off(id, 0.25)).count();
        assert!((2_200..2_800).contains(&picked), "{picked}");
        assert!(ids.iter().all(|id| hands_off(id, 1.0)));
        assert!(!ids.iter().any(|id| hands_off(id, 0.0)));
    }

    #[test]
    fn default_capacity_gives_every_handed_off_session_an_agent() {
        assert_eq!(agent_capacity(100, 4, 1.0), 25);
        assert_eq!(agent_capacity(101, 4, 1.0), 26);
        assert!(agent_capacity(1000, 10, 0.5) * 10 >= 550);
        assert_eq!(agent_capacity(10, 0, 1.0), 1);
    }
}
