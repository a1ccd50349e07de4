//! The throwaway NATS server the cluster tests lean on (`scripts/nats.sh`, `support::nats`): it
//! answers as a NATS server with JetStream on, stops, and comes back on the same port.

mod support;

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::time::Duration;

use support::nats::Nats;

/// Connects to `port` and returns the server's first protocol line (`INFO {...}`).
fn info_line(port: u16) -> std::io::Result<String> {
    let stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(support::WAIT))?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line)?;
    Ok(line)
}

/// The JSON of an `INFO` line.
fn info(line: &str) -> serde_json::Value {
    let json = line
        .strip_prefix("INFO ")
        .unwrap_or_else(|| panic!("not an INFO line: {line:?}"));
    serde_json::from_str(json.trim()).expect("INFO carries JSON")
}

#[test]
fn nats_script_starts_jetstream_stops_and_restarts_on_the_same_port() {
    let nats = Nats::start();
    assert_eq!(nats.url(), format!("nats://127.0.0.1:{}", nats.port()));

    let first = info(&info_line(nats.port()).expect("the server answers"));
    assert_eq!(first["jetstream"], true, "JetStream on: {first}");
    assert_eq!(first["port"], u64::from(nats.port()));
    assert!(
        nats.dir().join("js/jetstream").is_dir(),
        "store under DIR/js"
    );

    nats.stop();
    // Stopped means gone: the script returns once the process has exited.
    let refused = TcpStream::connect_timeout(
        &format!("127.0.0.1:{}", nats.port()).parse().unwrap(),
        Duration::from_secs(2),
    );
    assert!(refused.is_err(), "nothing listens once stopped");

    nats.start_again();
    let again = info(&info_line(nats.port()).expect("the server answers again"));
    assert_eq!(again["jetstream"], true);
    assert_ne!(
        again["server_id"], first["server_id"],
        "a new server process, same port"
    );
}
