//! The load tool (`switchboard-load`) against the real server, briefly: its REST mode creates and
//! updates tickets, and its chat mode opens sessions over two worker processes, gets every message
//! acknowledged and answered through its own fake Django, survives a reconnect storm with nothing
//! lost, and writes a JSON report that says so.

use std::process::Command;

use serde_json::Value;

fn tool() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_switchboard-load"));
    cmd.env_remove("RUST_LOG");
    cmd
}

#[test]
fn rest_smoke_run_creates_and_updates_tickets() {
    let out = tool()
        .args([
            "rest",
            "smoke",
            "--server-bin",
            env!("CARGO_BIN_EXE_switchboard"),
        ])
        .output()
        .expect("run switchboard-load");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("smoke run passed"), "{stdout}");
}

#[test]
fn chat_run_answers_every_message_and_loses_nothing_in_a_storm() {
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("chat.json");
    let out = tool()
        .args([
            "chat",
            "--sessions",
            "200",
            "--workers",
            "2",
            "--sources",
            "3",
            "--ramp-rate",
            "2000",
            "--msg-rate",
            "1",
            "--duration",
            "3",
            "--storm",
            "--spawn-fake-django",
            "--settle-secs",
            "0",
            "--check",
            "--server-bin",
            env!("CARGO_BIN_EXE_switchboard"),
            "--report",
        ])
        .arg(&report)
        .output()
        .expect("run switchboard-load");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(r["config"]["workers"], 2);
    assert_eq!(r["ramp"]["opened"], 200);
    assert_eq!(r["messages"]["sent"], 600);
    assert_eq!(r["messages"]["replies"]["ai"], 600);
    assert_eq!(r["rtt_ms"]["ack"]["count"], 600);
    assert_eq!(r["storm"]["resumed"], 200);
    assert_eq!(r["storm"]["lost"], 0);
    assert_eq!(r["close"]["closed"], 200);
    let samples = r["memory"]["samples"].as_array().unwrap();
    let labels: Vec<&str> = samples
        .iter()
        .map(|s| s["label"].as_str().unwrap())
        .collect();
    assert_eq!(
        labels,
        [
            "before",
            "plateau",
            "after messages",
            "after storm",
            "after close",
            "settled"
        ]
    );
    assert_eq!(samples[1]["chat_sessions"], 200.0);
    assert_eq!(samples[4]["chat_sessions"], 0.0);
    assert!(samples.iter().all(|s| s["rss_kb"].as_u64().unwrap() > 0));
    assert_eq!(r["server"]["exit"], "exit status: 0");
}

#[test]
fn fake_django_answers_the_ai_endpoint_on_a_kept_alive_connection() {
    use std::io::{BufRead, BufReader, Read, Write};
    let mut child = tool()
        .args(["fake-django", "--exit-on-stdin-eof"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line.trim().strip_prefix("listening ").unwrap().to_string();
    let mut s = std::net::TcpStream::connect(&addr).unwrap();
    let body = r#"{"session_id":"s","message_id":"m","customer":{"id":"c","name":"n","email":"e"},"message":"hi","history":[]}"#;
    let req = format!(
        "POST /api/livechat/ai/respond/ HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    // Twice on one connection: keep-alive.
    s.write_all(format!("{req}{req}").as_bytes()).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let mut got = String::new();
    let mut buf = [0u8; 4096];
    while got.matches("\"reply\"").count() < 2 {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "connection closed after {got:?}");
        got.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert_eq!(got.matches("HTTP/1.1 200 OK").count(), 2, "{got}");
    drop(child.stdin.take());
    assert!(child.wait().unwrap().success());
}
