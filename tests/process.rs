//! The real binary as an operator runs it: config errors stop it at start naming the key, SIGTERM
//! exits 0, and `kill -9` in the middle of a write storm loses no acknowledged write.

mod support;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use support::*;

fn binary() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_switchboard"));
    cmd.env_remove("RUST_LOG")
        .env("SWITCHBOARD__LOG__FORMAT", "json")
        .env("SWITCHBOARD__LOG__LEVEL", "info");
    cmd
}

/// Starts the binary on an ephemeral port in `dir` and returns it with its base URL, read from its
/// "switchboard starting" log line.
fn start(dir: &Path) -> (Child, String) {
    let mut child = binary()
        .env("SWITCHBOARD__API__BIND", "127.0.0.1:0")
        .env("SWITCHBOARD__CHAT__BIND", "127.0.0.1:0")
        .env("SWITCHBOARD__STORAGE__DATA_DIR", dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn switchboard");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut sent = false;
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if !sent {
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    if v["message"] == "switchboard starting" {
                        let _ = tx.send(v["api"].as_str().unwrap_or_default().to_string());
                        sent = true;
                    }
                }
            }
        }
    });
    let addr = rx.recv_timeout(WAIT).expect("server announced its address");
    (child, format!("http://{addr}"))
}

fn wait_exit(child: &mut Child) -> std::process::ExitStatus {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(std::time::Instant::now() < deadline, "process did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn invalid_config_fails_at_start_naming_the_key() {
    let out = binary()
        .env("SWITCHBOARD__BRIDGE__BATCH_MAX", "0")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("bridge.batch_max"), "{stderr}");

    let out = binary()
        .env("SWITCHBOARD__API__BIND", "0.0.0.0:0")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("api.bind") && stderr.contains("API keys"),
        "{stderr}"
    );

    let out = binary()
        .args(["--config", "/nonexistent/switchboard.toml"])
        .output()
        .unwrap();
    assert!(!out.status.success());
}

#[test]
fn sigterm_drains_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, base) = start(dir.path());
    let sys = actix::System::new();
    sys.block_on(async {
        let resp = post(
            &format!("{base}/api/v1/tickets"),
            &json!({"subject": "s", "requester": "r"}),
        )
        .await;
        assert_eq!(resp.status, 201);
    });
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    assert!(wait_exit(&mut child).success(), "SIGTERM exits 0");
}

#[test]
fn kill_9_during_writes_loses_no_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, base) = start(dir.path());
    // ticket id -> highest acknowledged version
    let acked: Arc<Mutex<HashMap<String, u64>>> = Arc::default();
    let sys = actix::System::new();
    sys.block_on(async {
        let (enough_tx, enough_rx) = tokio::sync::oneshot::channel::<()>();
        let enough_tx = Arc::new(Mutex::new(Some(enough_tx)));
        let writers = (0..16).map(|w| {
            let base = base.clone();
            let acked = acked.clone();
            let enough_tx = enough_tx.clone();
            async move {
                let c = client();
                for i in 0.. {
                    let created = c
                        .post(format!("{base}/api/v1/tickets"))
                        .send_json(&json!({"subject": format!("w{w}-{i}"), "requester": "r"}))
                        .await;
                    let Ok(mut created) = created else { return };
                    if created.status() != 201 {
                        return;
                    }
                    let Ok(t) = created.json::<Value>().await else {
                        return;
                    };
                    let id = t["id"].as_str().unwrap().to_string();
                    acked.lock().unwrap().insert(id.clone(), 1);
                    for v in 1..4u64 {
                        let resp = c
                            .patch(format!("{base}/api/v1/tickets/{id}"))
                            .insert_header(("If-Match", format!("\"{v}\"")))
                            .send_json(&json!({"subject": format!("w{w}-{i} v{}", v + 1)}))
                            .await;
                        match resp {
                            Ok(r) if r.status() == 200 => {
                                acked.lock().unwrap().insert(id.clone(), v + 1);
                            }
                            _ => return,
                        }
                    }
                    if acked.lock().unwrap().len() >= 400 {
                        if let Some(tx) = enough_tx.lock().unwrap().take() {
                            let _ = tx.send(());
                        }
                    }
                }
            }
        });
        let handles: Vec<_> = writers.map(actix_rt::spawn).collect();
        let _ = tokio::time::timeout(WAIT, enough_rx).await;
        // SIGKILL while the writers are still mid-flight.
        child.kill().unwrap();
        let _ = tokio::time::timeout(WAIT, futures_util::future::join_all(handles)).await;
    });
    wait_exit(&mut child);
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() >= 400,
        "the storm acknowledged {} creates",
        acked.len()
    );

    let (mut again, base) = start(dir.path());
    let sys = actix::System::new();
    sys.block_on(async {
        for (id, version) in &acked {
            let resp = get(&format!("{base}/api/v1/tickets/{id}")).await;
            assert_eq!(
                resp.status, 200,
                "acknowledged ticket {id} survives kill -9"
            );
            let stored = resp.body["version"].as_u64().unwrap();
            assert!(
                stored >= *version,
                "ticket {id}: acknowledged v{version}, found v{stored}"
            );
        }
    });
    again.kill().unwrap();
    wait_exit(&mut again);
}
