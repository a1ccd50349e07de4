//! The JS client's own unit tests (`assets/test/*.test.mjs`, run by Node's built-in test runner), so
//! that the README's one test command covers the browser side's logic too: reconnects, the outbox,
//! close codes, pings and typing, against a fake WebSocket and fake timers.

use std::process::Command;

#[test]
fn the_js_client_passes_its_node_tests() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/assets/test");
    let out = Command::new("node")
        .args(["--test", dir])
        .output()
        .expect("Node.js (node) must be installed to test the JS client: apt-get install nodejs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "node --test failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("# fail 0"), "{stdout}");
}
