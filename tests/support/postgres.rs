//! A throwaway PostgreSQL server for one test, started by `scripts/postgres.sh` from Debian's
//! `postgresql` package on an ephemeral port, and stopped when dropped.

use std::path::PathBuf;
use std::process::Command;

pub struct Postgres {
    dir: tempfile::TempDir,
    port: u16,
    pub url: String,
}

fn script_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/postgres.sh")
}

/// Runs `scripts/postgres.sh` with `args`; its output, or a failed test naming why.
fn script(args: &[&str]) -> String {
    let out = Command::new("bash")
        .arg(script_path())
        .args(args)
        .output()
        .expect("run scripts/postgres.sh");
    assert!(
        out.status.success(),
        "scripts/postgres.sh {args:?} failed (is the `postgresql` package installed?): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

impl Postgres {
    pub fn start() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("switchboard-pg")
            .tempdir_in("/tmp")
            .expect("temp dir");
        // The server runs as the `postgres` user when the tests run as root: it must reach its dir.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("temp dir readable");
        // A port the kernel just gave out and took back: free for the server to bind.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let data = dir.path().join("pg");
        let url = script(&["start", data.to_str().unwrap(), &port.to_string()]);
        Self { dir, port, url }
    }

    fn data(&self) -> String {
        self.dir.path().join("pg").to_str().unwrap().to_string()
    }

    /// Stops the server (fast shutdown: connections are cut).
    pub fn stop(&self) {
        script(&["stop", &self.data()]);
    }

    /// Starts the stopped server again, same data and port.
    pub fn start_again(&self) {
        script(&["start", &self.data(), &self.port.to_string()]);
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // Not `script`: a failing test must not panic again while it unwinds.
        let _ = Command::new("bash")
            .arg(script_path())
            .args(["stop", &self.data()])
            .status();
    }
}
