//! The real `switchboard` binary as a child process on ephemeral ports and its own data dir, with
//! its JSON log lines readable by the test (addresses, upgrade progress).

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::fake_django::FakeDjango;
use super::WAIT;

/// Agents sign in with tokens signed with this.
pub const AGENT_SECRET: &str = "agents-secret-agents-secret-0123";

pub struct Server {
    pub child: Child,
    pub api: SocketAddr,
    pub chat: SocketAddr,
    log: Receiver<Value>,
}

impl Server {
    /// Starts on ephemeral ports (its addresses read from its start line).
    pub fn start(dir: &Path, django: &FakeDjango) -> Self {
        Self::spawn(dir, &django.base_url, &[], &[])
    }

    /// Starts `--takeover` of the server running on `dir`: it takes that one's sockets, so its
    /// start line names the same addresses.
    pub fn take_over(dir: &Path, django_url: &str) -> Self {
        Self::spawn(dir, django_url, &["--takeover"], &[])
    }

    /// Starts and waits for the start line.
    pub fn spawn(dir: &Path, django_url: &str, args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut server = Self::launch(dir, django_url, args, env);
        server.read_start();
        server
    }

    /// Waits for the start line of a launched server and takes its addresses from it.
    pub fn read_start(&mut self) {
        let start = self.log_line("switchboard starting");
        self.api = start["api"].as_str().unwrap().parse().expect("api address");
        self.chat = start["chat"]
            .as_str()
            .unwrap()
            .parse()
            .expect("chat address");
    }

    /// Starts without waiting for anything (its addresses stay unknown).
    pub fn launch(dir: &Path, django_url: &str, args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_switchboard"));
        cmd.args(args)
            .env_remove("RUST_LOG")
            .env("SWITCHBOARD__LOG__FORMAT", "json")
            .env("SWITCHBOARD__LOG__LEVEL", "info")
            .env("SWITCHBOARD__API__BIND", "127.0.0.1:0")
            .env("SWITCHBOARD__CHAT__BIND", "127.0.0.1:0")
            .env("SWITCHBOARD__STORAGE__DATA_DIR", dir)
            .env("SWITCHBOARD__DJANGO__BASE_URL", django_url)
            .env("SWITCHBOARD__DJANGO__TOKEN", "test-token")
            // An AI call may be under way for as long as the test needs to stop the process.
            .env("SWITCHBOARD__BRIDGE__CALLS_TIMEOUT_MS", "60000")
            .env("SWITCHBOARD__AGENTS__JWT_SECRET", AGENT_SECRET);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn switchboard");
        let stdout = child.stdout.take().unwrap();
        let (tx, log) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let echo = std::env::var_os("TEST_SERVER_LOG").is_some();
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if echo {
                    eprintln!("{line}");
                }
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    if tx.send(v).is_err() {
                        return;
                    }
                }
            }
        });
        Self {
            child,
            api: "0.0.0.0:0".parse().unwrap(),
            chat: "0.0.0.0:0".parse().unwrap(),
            log,
        }
    }

    /// Waits for a log line whose message is `message` (lines before it are passed over).
    pub fn log_line(&self, message: &str) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.log.recv_timeout(left) {
                Ok(v) if v["message"] == message => return v,
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) => panic!("no `{message}` in the log in time"),
                Err(RecvTimeoutError::Disconnected) => {
                    panic!("the process ended without logging `{message}`")
                }
            }
        }
    }

    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits (bounded) for the process to exit.
    pub fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "process did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Replaces `old` with the process `start` launches (a `--takeover` of it), off the async runtime:
/// returns the new process once it took over and the old one once it exited 0, on the same sockets.
pub async fn upgraded(old: Server, start: impl FnOnce() -> Server + Send + 'static) -> Server {
    let (new, old) = tokio::task::spawn_blocking(move || {
        let new = start();
        new.log_line("took over: ready");
        let mut old = old;
        assert!(old.wait_exit().success(), "the old process exits 0");
        (new, old)
    })
    .await
    .unwrap();
    assert_eq!((new.api, new.chat), (old.api, old.chat), "the same sockets");
    new
}

/// A signed agent token for `sub`, valid for an hour.
pub fn agent_token(sub: &str) -> String {
    use jsonwebtoken::{encode, EncodingKey, Header};
    let exp = chrono::Utc::now().timestamp() + 3600;
    let claims = serde_json::json!({"sub": sub, "name": format!("Agent {sub}"), "role": "agent", "exp": exp});
    encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(AGENT_SECRET.as_bytes()),
    )
    .unwrap()
}
