//! A throwaway HAProxy for one test, run by `scripts/haproxy.sh` from Debian's `haproxy` package on
//! the project's own `deploy/haproxy.cfg`, rewritten for the test by [`config_for`]: ephemeral ports
//! on loopback for its frontends, the test's nodes as its servers, its stats socket in its temp dir
//! and fast health checks. Everything else (balancing, checks, timeouts) is the deployed file's.
//! Stopped when dropped.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use super::run_script;

/// One Switchboard node behind the proxy: where its listeners are.
#[derive(Debug, Clone, Copy)]
pub struct Node {
    pub chat: SocketAddr,
    pub api: SocketAddr,
}

/// Where the proxy's frontends listen.
#[derive(Debug, Clone, Copy)]
pub struct Frontends {
    pub chat: SocketAddr,
    pub api: SocketAddr,
    pub stats: SocketAddr,
}

/// The deployed configuration, as operators get it.
pub fn deployed_config() -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("deploy/haproxy.cfg");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// `template` (deploy/haproxy.cfg) for a test: each frontend's `bind` on its address in
/// `frontends`, the servers `node1..` pointed at `nodes` (the chat port 4001 and REST port 4000 of
/// the template mapped to each node's own, `port 4000` of a check too; servers past the last node
/// left out), the stats socket at `socket` and health checks every 100 ms. Panics on a line it cannot map, so a change to the deployed file
/// that the test would silently stop covering fails here.
pub fn config_for(template: &str, nodes: &[Node], frontends: &Frontends, socket: &Path) -> String {
    let mut out = String::new();
    let mut section = String::new();
    for line in template.lines() {
        let trimmed = line.trim_start();
        let indent = &line[..line.len() - trimmed.len()];
        let words: Vec<&str> = trimmed.split_whitespace().collect();
        if !line.starts_with(char::is_whitespace) && !words.is_empty() && !trimmed.starts_with('#')
        {
            section = words[..words.len().min(2)].join(" ");
        }
        let rewritten = match words.first().copied() {
            Some("bind") => {
                let addr = match section.as_str() {
                    "frontend chat" => frontends.chat,
                    "frontend api" => frontends.api,
                    "frontend stats" => frontends.stats,
                    other => panic!("a bind in `{other}`, which the test does not know"),
                };
                Some(format!("{indent}bind {addr}"))
            }
            Some("stats") if words.get(1) == Some(&"socket") => Some(format!(
                "{indent}stats socket {} {}",
                socket.display(),
                words[3..].join(" ")
            )),
            Some("default-server") => {
                let mut words = words.clone();
                for i in 1..words.len() {
                    if matches!(words[i - 1], "inter" | "fastinter" | "downinter") {
                        words[i] = "100ms";
                    }
                }
                Some(format!("{indent}{}", words.join(" ")))
            }
            Some("server") => Some(server_line(indent, &words, nodes)),
            _ => None,
        };
        match rewritten {
            Some(l) if l.is_empty() => {}
            Some(l) => {
                out.push_str(&l);
                out.push('\n');
            }
            None => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}

/// A `server nodeN HOST:PORT options…` line for the test's node N, or nothing past the last node.
fn server_line(indent: &str, words: &[&str], nodes: &[Node]) -> String {
    let name = words[1];
    let index: usize = name
        .strip_prefix("node")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("server `{name}` is not nodeN"));
    let Some(node) = nodes.get(index - 1) else {
        return String::new();
    };
    let map = |port: &str| match port {
        "4001" => node.chat.port(),
        "4000" => node.api.port(),
        other => panic!("server `{name}`: port {other} is neither chat (4001) nor REST (4000)"),
    };
    let (_, port) = words[2]
        .rsplit_once(':')
        .unwrap_or_else(|| panic!("server `{name}` has no port"));
    let mut line = format!("{indent}server {name} 127.0.0.1:{}", map(port));
    let mut options = words[3..].iter();
    while let Some(word) = options.next() {
        line.push(' ');
        line.push_str(word);
        if *word == "port" {
            let port = options.next().expect("`port` takes a port");
            line.push_str(&format!(" {}", map(port)));
        }
    }
    line
}

/// One server's row of `show stat`.
#[derive(Debug, Clone)]
pub struct ServerStat {
    pub backend: String,
    pub server: String,
    /// `UP`, `DOWN`, `UP 1/2` (going down), `DOWN 1/2` (coming up), `MAINT`, `no check`.
    pub status: String,
    /// The last check's result: `L7OK`, `L4CON` (refused), `L7STS` (a status but not 200)…
    pub check_status: String,
    /// Connections it has now.
    pub current: u64,
    /// Connections it was given since the start.
    pub total: u64,
}

pub struct Haproxy {
    dir: tempfile::TempDir,
    pub frontends: Frontends,
}

/// A loopback address whose port the kernel just gave out and took back: free for HAProxy to bind.
fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
}

impl Haproxy {
    /// Starts HAProxy on the deployed configuration in front of `nodes` (at most three, as the
    /// deployed file has), and returns once its frontends answer.
    pub fn start(nodes: &[Node]) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("switchboard-haproxy")
            .tempdir_in("/tmp")
            .expect("temp dir");
        let frontends = Frontends {
            chat: free_addr(),
            api: free_addr(),
            stats: free_addr(),
        };
        let cfg = config_for(
            &deployed_config(),
            nodes,
            &frontends,
            &dir.path().join("admin.sock"),
        );
        let servers = cfg
            .lines()
            .filter(|l| l.trim_start().starts_with("server "))
            .count();
        assert_eq!(
            servers,
            2 * nodes.len(),
            "every node in both backends:\n{cfg}"
        );
        let cfg_path = dir.path().join("haproxy.cfg");
        std::fs::write(&cfg_path, cfg).expect("write haproxy.cfg");
        let proxy = Self { dir, frontends };
        run_script(
            "haproxy.sh",
            &["start", cfg_path.to_str().unwrap(), &proxy.dir_str()],
            "haproxy",
        );
        proxy
    }

    /// The configuration HAProxy runs on.
    pub fn config(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("haproxy.cfg")).expect("haproxy.cfg")
    }

    /// What HAProxy logged (`log stdout`: one line per request and per server state change).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("haproxy.log")).unwrap_or_default()
    }

    /// Sends `command` to the stats socket; its whole answer.
    pub fn command(&self, command: &str) -> String {
        let mut socket =
            UnixStream::connect(self.dir.path().join("admin.sock")).expect("stats socket");
        socket.set_read_timeout(Some(super::WAIT)).unwrap();
        socket
            .write_all(format!("{command}\n").as_bytes())
            .expect("command sent");
        let mut answer = String::new();
        socket.read_to_string(&mut answer).expect("answer read");
        answer
    }

    /// Every server's row of `show stat` (frontend and backend rows left out).
    pub fn servers(&self) -> Vec<ServerStat> {
        let csv = self.command("show stat");
        let mut lines = csv.lines();
        let header: Vec<&str> = lines
            .next()
            .and_then(|h| h.strip_prefix("# "))
            .expect("show stat header")
            .split(',')
            .collect();
        let column: HashMap<&str, usize> =
            header.iter().enumerate().map(|(i, n)| (*n, i)).collect();
        lines
            .filter(|l| !l.is_empty())
            .map(|l| l.split(',').collect::<Vec<_>>())
            .filter(|f| !matches!(f[column["svname"]], "FRONTEND" | "BACKEND"))
            .map(|f| ServerStat {
                backend: f[column["pxname"]].to_string(),
                server: f[column["svname"]].to_string(),
                status: f[column["status"]].to_string(),
                check_status: f[column["check_status"]].to_string(),
                current: f[column["scur"]].parse().unwrap_or(0),
                total: f[column["stot"]].parse().unwrap_or(0),
            })
            .collect()
    }

    /// `server`'s row in `backend`.
    pub fn server(&self, backend: &str, server: &str) -> ServerStat {
        self.servers()
            .into_iter()
            .find(|s| s.backend == backend && s.server == server)
            .unwrap_or_else(|| panic!("no server {backend}/{server}"))
    }

    /// Waits until HAProxy's health checks have `server` in both backends in `status` (`UP` or
    /// `DOWN`), with its last check agreeing. HAProxy tells no one when a server changes state, so
    /// this polls its stats socket ([`super::eventually`]).
    pub async fn wait_status(&self, server: &str, status: &str) {
        let check_ok = status == "UP";
        super::eventually(&format!("HAProxy sees {server} {status}"), || async {
            ["chat_nodes", "api_nodes"].iter().all(|backend| {
                let s = self.server(backend, server);
                s.status == status && (s.check_status == "L7OK") == check_ok
            })
        })
        .await;
    }

    fn dir_str(&self) -> String {
        self.dir.path().to_str().unwrap().to_string()
    }

    pub fn stop(&self) {
        run_script("haproxy.sh", &["stop", &self.dir_str()], "haproxy");
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "HAProxy's configuration:\n{}\nHAProxy's log:\n{}",
                self.config(),
                self.log()
            );
        }
        // Not `run_script`: a failing test must not panic again while it unwinds.
        let _ = std::process::Command::new("bash")
            .arg(super::script_path("haproxy.sh"))
            .args(["stop", &self.dir_str()])
            .status();
    }
}
