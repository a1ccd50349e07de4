//! A throwaway NATS server (JetStream on) for one test, started by `scripts/nats.sh` from Debian's
//! `nats-server` package on an ephemeral port, and stopped when dropped. [`Nats::stop`] and
//! [`Nats::start_again`] (same port, same JetStream store) make "NATS restarted" faults.

use std::path::PathBuf;

use super::run_script;

pub struct Nats {
    dir: tempfile::TempDir,
    port: u16,
    /// Further nats-server options (auth, TLS), kept for a start again.
    options: Vec<String>,
}

impl Nats {
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Starts with further nats-server options (`-c FILE`, `--tls ...`).
    pub fn start_with(options: &[&str]) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("switchboard-nats")
            .tempdir_in("/tmp")
            .expect("temp dir");
        // A port the kernel just gave out and took back: free for the server to bind.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let options = options.iter().map(|o| o.to_string()).collect();
        let nats = Self { dir, port, options };
        nats.start_again();
        nats
    }

    /// `nats://127.0.0.1:<port>`: the same across a stop and start.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Where the server keeps its pid, log and JetStream store (`js/`).
    pub fn dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    /// Stops the server (SIGTERM: clients see their connection end).
    pub fn stop(&self) {
        run_script("nats.sh", &["stop", &self.dir_str()], "nats-server");
    }

    /// Starts the stopped server again on the same port with the same JetStream store; returns once
    /// it answers.
    pub fn start_again(&self) {
        let dir = self.dir_str();
        let port = self.port.to_string();
        let mut args = vec!["start", &dir, &port];
        args.extend(self.options.iter().map(String::as_str));
        run_script("nats.sh", &args, "nats-server");
    }

    fn dir_str(&self) -> String {
        self.dir.path().to_str().unwrap().to_string()
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        // Not `run_script`: a failing test must not panic again while it unwinds.
        let _ = std::process::Command::new("bash")
            .arg(super::script_path("nats.sh"))
            .args(["stop", &self.dir_str()])
            .status();
    }
}
