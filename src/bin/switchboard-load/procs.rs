//! Process plumbing every mode needs: the children this tool started (so a watchdog can kill
//! them if a run hangs), signals, the open-files limit, and what `/proc` says about a process
//! (RSS, CPU time, descriptors).

use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

/// Clock ticks per second in /proc/<pid>/stat (USER_HZ; 100 on Linux).
pub const CLK_TCK: f64 = 100.0;

/// Children still running (servers, workers, the fake Django), killed by the watchdog.
static CHILDREN: Mutex<Vec<u32>> = Mutex::new(Vec::new());

pub fn track(pid: u32) {
    CHILDREN.lock().unwrap_or_else(|e| e.into_inner()).push(pid);
}

pub fn untrack(pid: u32) {
    CHILDREN
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .retain(|p| *p != pid);
}

/// Sends `SIG<name>` to `pid` through kill(1), which keeps this tool free of `unsafe`.
pub fn signal(pid: u32, name: &str) {
    let _ = Command::new("kill")
        .args([format!("-{name}"), pid.to_string()])
        .status();
}

/// Kills every tracked child and exits if the tool is still running after `limit`: a load run
/// must stop by itself whatever happens to the server.
pub fn watchdog(tool: &'static str, limit: Duration) {
    std::thread::spawn(move || {
        std::thread::sleep(limit);
        eprintln!("{tool}: still running after {limit:?}; killing the children and exiting");
        for pid in CHILDREN.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            signal(*pid, "KILL");
        }
        std::process::exit(3);
    });
}

/// Raises this process's soft open-files limit as far as the hard limit allows; the limit in force.
pub fn raise_nofile() -> u64 {
    let (_, hard) = rlimit::getrlimit(rlimit::Resource::NOFILE).unwrap_or((1024, 1024));
    match rlimit::increase_nofile_limit(hard) {
        Ok(n) => n,
        Err(e) => {
            eprintln!("cannot raise the open-files limit: {e}");
            rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(1024, |(soft, _)| soft)
        }
    }
}

/// VmRSS of `pid` in kB (0 when it is gone).
pub fn rss_kb(pid: u32) -> u64 {
    status_field(pid, "VmRSS:")
}

/// A `kB` field of /proc/<pid>/status.
pub fn status_field(pid: u32, name: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// utime + stime in clock ticks, from a /proc/<pid>/stat or /proc/<pid>/task/<tid>/stat file.
pub fn cpu_ticks(stat_path: &str) -> u64 {
    let stat = std::fs::read_to_string(stat_path).unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let get = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    get(11) + get(12)
}

/// CPU seconds `pid` has used.
pub fn cpu_secs(pid: u32) -> f64 {
    cpu_ticks(&format!("/proc/{pid}/stat")) as f64 / CLK_TCK
}

/// Open descriptors of `pid`.
pub fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// Samples RSS every 500 ms until two successive samples differ by less than 64 kB (or `max`
/// passes); the last sample, in kB.
pub fn plateau_kb(pid: u32, max: Duration) -> u64 {
    let deadline = std::time::Instant::now() + max;
    let mut last = rss_kb(pid);
    let mut still = 0;
    while std::time::Instant::now() < deadline && still < 2 {
        std::thread::sleep(Duration::from_millis(500));
        let now = rss_kb(pid);
        still = if now.abs_diff(last) < 64 {
            still + 1
        } else {
            0
        };
        last = now;
    }
    last
}
