//! The load tool (`switchboard-load`) against the real server, briefly: its REST mode creates and
//! updates tickets, and its chat mode opens sessions over two worker processes, gets every message
//! acknowledged and answered through its own fake Django, survives a reconnect storm with nothing
//! lost, survives the server being killed or stopped and started again with every acknowledged
//! message still there, and writes a JSON report that says so; with agents, every chat is handed
//! off, taken by an agent, and every message answered by that agent.

use std::process::Command;

use serde_json::Value;

fn tool() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_switchboard-load"));
    cmd.env_remove("RUST_LOG");
    cmd
}

/// Runs `chat` with `args` against the server built beside the tool, a spawned fake Django and
/// `--check`, two workers, no settling; asserts it passed. Its report and its stdout.
fn chat_run(args: &[&str]) -> (Value, String) {
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("chat.json");
    let out = tool()
        .arg("chat")
        .args(args)
        .args([
            "--workers",
            "2",
            "--ramp-rate",
            "2000",
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
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    (r, stdout)
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
    let (r, _) = chat_run(&[
        "--sessions",
        "200",
        "--sources",
        "3",
        "--msg-rate",
        "1",
        "--duration",
        "3",
        "--storm",
    ]);
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
fn chat_run_with_agents_hands_every_chat_to_an_agent_who_answers_every_message() {
    let (r, stdout) = chat_run(&[
        "--sessions",
        "100",
        "--agents",
        "4",
        "--sources",
        "2",
        "--msg-rate",
        "1",
        "--duration",
        "2",
    ]);
    assert_eq!(r["config"]["agent_capacity"], 25);
    assert_eq!(r["ramp"]["handed_off"], 100);
    assert_eq!(r["ramp"]["assigned"], 100);
    assert_eq!(r["agents"]["connected"], 4);
    assert_eq!(r["agents"]["chats_assigned"], 100);
    assert_eq!(r["messages"]["sent"], 200);
    assert_eq!(r["messages"]["replies"]["agent"], 200);
    assert_eq!(r["messages"]["replies"]["ai"], 0);
    assert_eq!(r["messages"]["agent_chats"]["lost"], 0);
    assert_eq!(r["rtt_ms"]["reply_agent"]["count"], 200);
    assert_eq!(r["rtt_ms"]["agent_to_customer"]["count"], 200);
    assert!(stdout.contains("agent→customer"), "{stdout}");
    assert_eq!(r["server"]["exit"], "exit status: 0");
}

/// A chat run of `sessions` × 2 msg/s for 4 s, with `restarts` server restarts (`mode`).
fn restart_run(sessions: &str, mode: &str, restarts: &str) -> (Value, String) {
    chat_run(&[
        "--sessions",
        sessions,
        "--sources",
        "2",
        "--msg-rate",
        "2",
        "--duration",
        "4",
        "--restart",
        mode,
        "--restarts",
        restarts,
    ])
}

/// The report's restart figures say every session came back and no acknowledged message was lost.
fn assert_restarts_lost_nothing(r: &Value, mode: &str, count: u64, sessions: u64) {
    let rs = &r["restarts"];
    assert_eq!(rs["mode"], mode, "{rs}");
    assert_eq!(rs["count"], count, "{rs}");
    assert_eq!(rs["all_resumed"], true, "{rs}");
    assert_eq!(rs["acked_lost"], 0, "{rs}");
    for x in rs["per_restart"].as_array().unwrap() {
        assert_eq!(x["sessions"], sessions, "{x}");
        assert_eq!(x["resumed"], sessions, "{x}");
        assert_eq!(x["resume_ms"]["count"], sessions, "{x}");
        assert_eq!(x["refused"], 0, "{x}");
        assert_eq!(x["failed"], 0, "{x}");
        assert_eq!(x["acked_lost"], 0, "{x}");
        assert_eq!(x["replay_errors"], 0, "{x}");
        // Each resume asked for what it had acknowledged: the check was not empty.
        assert!(x["acked_checked"].as_u64().unwrap() >= sessions, "{x}");
    }
    assert_eq!(r["messages"]["sent"], r["messages"]["acked"]);
    assert_eq!(r["messages"]["sent"], r["messages"]["replies"]["ai"]);
    assert_eq!(r["messages"]["dropped_connections"], 0);
    assert_eq!(r["server"]["exit"], "exit status: 0");
}

#[test]
fn chat_run_loses_no_acknowledged_message_when_the_server_is_killed() {
    let (r, stdout) = restart_run("50", "kill", "1");
    assert_eq!(r["messages"]["sent"], 400);
    assert_restarts_lost_nothing(&r, "kill", 1, 50);
    let one = &r["restarts"]["per_restart"][0];
    assert_eq!(one["server"]["exit"], "signal: 9 (SIGKILL)");
    assert!(stdout.contains("restart 1 of 1 (kill"), "{stdout}");
    assert!(stdout.contains("50 of 50 resumed"), "{stdout}");
}

#[test]
fn chat_run_resumes_every_session_after_each_sigterm() {
    let (r, _) = restart_run("30", "term", "2");
    assert_eq!(r["messages"]["sent"], 240);
    assert_restarts_lost_nothing(&r, "term", 2, 30);
    for x in r["restarts"]["per_restart"].as_array().unwrap() {
        assert_eq!(x["server"]["exit"], "exit status: 0", "{x}");
        // Told to resume, not just dropped.
        assert_eq!(x["closed_1012"], 30, "{x}");
    }
}

#[test]
fn chat_run_through_an_upgrade_keeps_every_connection_and_every_rest_request() {
    let (r, stdout) = restart_run("40", "upgrade", "1");
    assert_eq!(r["messages"]["sent"], 320);
    assert_eq!(r["messages"]["sent"], r["messages"]["acked"]);
    assert_eq!(r["messages"]["sent"], r["messages"]["replies"]["ai"]);
    assert_eq!(r["messages"]["dropped_connections"], 0);
    let one = &r["restarts"]["per_restart"][0];
    assert_eq!(r["restarts"]["mode"], "upgrade");
    assert_eq!(one["connections_dropped"], 0, "{one}");
    assert_eq!(one["closed_1012"], 0, "{one}");
    assert!(one["rest"]["requests"].as_u64().unwrap() > 0, "{one}");
    assert_eq!(one["rest"]["failed"], 0, "{one}");
    // The old process exits 0 once the new one is ready; the new one serves to the end.
    assert_eq!(one["server"]["exit"], "exit status: 0", "{one}");
    assert_eq!(r["server"]["exit"], "exit status: 0");
    assert!(stdout.contains("restart 1 of 1 (upgrade"), "{stdout}");
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
