//! A throwaway PostgreSQL server for one test, started by `scripts/postgres.sh` from Debian's
//! `postgresql` package on an ephemeral port, and stopped when dropped.

use std::path::PathBuf;
use std::process::Command;

pub struct Postgres {
    dir: tempfile::TempDir,
    port: u16,
    pub url: String,
}

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/postgres.sh")
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
        let out = Command::new("bash")
            .arg(script())
            .args([
                "start",
                dir.path().join("pg").to_str().unwrap(),
                &port.to_string(),
            ])
            .output()
            .expect("run scripts/postgres.sh");
        assert!(
            out.status.success(),
            "PostgreSQL did not start (is the `postgresql` package installed?): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let url = String::from_utf8(out.stdout).unwrap().trim().to_string();
        Self { dir, port, url }
    }

    /// Stops the server (fast shutdown: connections are cut).
    pub fn stop(&self) {
        let status = Command::new("bash")
            .arg(script())
            .args(["stop", self.dir.path().join("pg").to_str().unwrap()])
            .status()
            .expect("run scripts/postgres.sh");
        assert!(status.success());
    }

    /// Starts the stopped server again, same data and port.
    pub fn start_again(&self) {
        let out = Command::new("bash")
            .arg(script())
            .args([
                "start",
                self.dir.path().join("pg").to_str().unwrap(),
                &self.port.to_string(),
            ])
            .output()
            .expect("run scripts/postgres.sh");
        assert!(
            out.status.success(),
            "PostgreSQL did not start again: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(script())
            .args(["stop", self.dir.path().join("pg").to_str().unwrap()])
            .status();
    }
}
