//! The cluster's load balancer: a real HAProxy (Debian's `haproxy`, started by `scripts/haproxy.sh`)
//! on the project's own `deploy/haproxy.cfg` (rewritten only for ports, addresses and check
//! intervals: `support::haproxy`) in front of two real Switchboard processes, each in single-node
//! mode with its own data dir. Chats and REST go through it, spread over both nodes, and when one
//! node is killed its health checks take it out and everything new goes to the survivor.

mod support;

use serde_json::{json, Value};
use support::binary::Server;
use support::fake_django::FakeDjango;
use support::haproxy::{config_for, deployed_config, Frontends, Haproxy, Node};
use support::ws::{say, ChatClient};

fn node(server: &Server) -> Node {
    Node {
        chat: server.chat,
        api: server.api,
    }
}

/// Open chat connections on `server`, from its own metrics.
async fn chat_sockets(server: &Server) -> f64 {
    let text = support::get(&format!("http://{}/metrics", server.api))
        .await
        .text;
    support::metric(&text, "switchboard_chat_sockets", &[]).expect("switchboard_chat_sockets")
}

/// The ids of every ticket `server` holds, asked of it directly.
async fn tickets_on(server: &Server) -> Vec<String> {
    let resp = support::get(&format!("http://{}/api/v1/tickets?limit=100", server.api)).await;
    assert_eq!(resp.status, 200, "list: {}", resp.text);
    resp.body["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(support::id_of)
        .collect()
}

/// Creates a ticket through the proxy; its id.
async fn create_through(proxy: &Haproxy, subject: &str) -> String {
    let resp = support::post(
        &format!("http://{}/api/v1/tickets", proxy.frontends.api),
        &json!({"subject": subject, "requester": "alice@example.com"}),
    )
    .await;
    assert_eq!(resp.status, 201, "create through HAProxy: {}", resp.text);
    support::id_of(&resp.body)
}

/// A customer chat through the proxy: a session started and one message acknowledged.
async fn chat_through(proxy: &Haproxy, client_id: &str) -> (ChatClient, Value) {
    let (mut c, started) = ChatClient::start(proxy.frontends.chat).await;
    assert!(started["session_id"].is_string(), "{started}");
    let seq = say(&mut c, client_id, "hello through the proxy").await;
    assert!(seq >= 1);
    (c, started)
}

#[test]
fn the_test_configuration_is_the_deployed_one_with_ports_and_addresses_only() {
    let nodes = [
        Node {
            chat: "127.0.0.1:5001".parse().unwrap(),
            api: "127.0.0.1:5000".parse().unwrap(),
        },
        Node {
            chat: "127.0.0.1:6001".parse().unwrap(),
            api: "127.0.0.1:6000".parse().unwrap(),
        },
    ];
    let frontends = Frontends {
        chat: "127.0.0.1:7001".parse().unwrap(),
        api: "127.0.0.1:7000".parse().unwrap(),
        stats: "127.0.0.1:7404".parse().unwrap(),
    };
    let cfg = config_for(
        &deployed_config(),
        &nodes,
        &frontends,
        "/tmp/x/admin.sock".as_ref(),
    );
    let lines: Vec<&str> = cfg.lines().map(str::trim).collect();
    for expected in [
        "bind 127.0.0.1:7001",
        "bind 127.0.0.1:7000",
        "bind 127.0.0.1:7404",
        "server node1 127.0.0.1:5001 check",
        "server node2 127.0.0.1:6001 check",
        "server node1 127.0.0.1:5000 check",
        "server node2 127.0.0.1:6000 check",
        "stats socket /tmp/x/admin.sock mode 600 level admin",
        // What the test exercises as deployed.
        "balance leastconn",
        "balance roundrobin",
        "http-check send meth GET uri /healthz ver HTTP/1.1 hdr Host switchboard",
        "http-check send meth GET uri /readyz ver HTTP/1.1 hdr Host switchboard",
        "http-check expect status 200",
        "timeout tunnel 1h",
        "option http-server-close",
    ] {
        assert!(
            lines.contains(&expected),
            "`{expected}` missing from:\n{cfg}"
        );
    }
    assert!(
        !lines.iter().any(|l| l.starts_with("server node3")),
        "only the test's nodes: {cfg}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("default-server inter 100ms fastinter 100ms downinter 100ms")),
        "{cfg}"
    );
}

#[actix_rt::test]
async fn haproxy_spreads_chats_and_rest_over_the_nodes_and_routes_around_a_killed_one() {
    let django = FakeDjango::start();
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut a = Server::spawn(dir_a.path(), &django.base_url, &[], &[]);
    let b = Server::spawn(dir_b.path(), &django.base_url, &[], &[]);
    let proxy = Haproxy::start(&[node(&a), node(&b)]);
    proxy.wait_status("node1", "UP").await;
    proxy.wait_status("node2", "UP").await;

    // A customer chat and a REST call through the proxy.
    let (first, _) = chat_through(&proxy, "first").await;
    let health = support::get(&format!("http://{}/readyz", proxy.frontends.api)).await;
    assert_eq!(health.status, 200, "{}", health.text);

    // Chats stay open: least connections puts each new one on the node with fewer.
    let mut chats = vec![first];
    for i in 0..5 {
        chats.push(chat_through(&proxy, &format!("spread-{i}")).await.0);
    }
    let (on_a, on_b) = (chat_sockets(&a).await, chat_sockets(&b).await);
    assert_eq!(on_a + on_b, 6.0, "every chat on one node: {on_a} + {on_b}");
    assert_eq!((on_a, on_b), (3.0, 3.0), "three chats on each node");

    // Each node keeps its own tickets (single-node mode): where a ticket is says who served it.
    let mut created = Vec::new();
    for i in 0..6 {
        created.push(create_through(&proxy, &format!("spread {i}")).await);
    }
    let (tickets_a, tickets_b) = (tickets_on(&a).await, tickets_on(&b).await);
    assert_eq!(tickets_a.len() + tickets_b.len(), 6);
    assert!(
        !tickets_a.is_empty() && !tickets_b.is_empty(),
        "round robin uses both nodes: {} and {}",
        tickets_a.len(),
        tickets_b.len()
    );

    // Node 1 dies without a word; its health checks fail and HAProxy takes it out.
    // The chats on the survivor stay open, so its count of open chats moves only with new ones.
    a.signal("-KILL");
    a.wait_exit();
    proxy.wait_status("node1", "DOWN").await;
    proxy.wait_status("node2", "UP").await;

    // Every new chat and every REST call now lands on the survivor, and none fails.
    let survivor_before = chat_sockets(&b).await;
    assert_eq!(survivor_before, on_b, "the survivor's chats are still open");
    let tickets_before = tickets_on(&b).await.len();
    let mut after = Vec::new();
    for i in 0..4 {
        after.push(chat_through(&proxy, &format!("after-{i}")).await.0);
    }
    assert_eq!(
        chat_sockets(&b).await,
        survivor_before + 4.0,
        "the four new chats are on the survivor"
    );
    let mut created_after = Vec::new();
    for i in 0..4 {
        created_after.push(create_through(&proxy, &format!("after {i}")).await);
    }
    let on_survivor = tickets_on(&b).await;
    assert_eq!(on_survivor.len(), tickets_before + 4);
    for id in &created_after {
        assert!(on_survivor.contains(id), "ticket {id} on the survivor");
    }
    let dead = proxy.server("chat_nodes", "node1");
    assert!(dead.status.starts_with("DOWN"), "{dead:?}");
    assert_eq!(dead.current, 0, "no connection on the dead node: {dead:?}");
    drop((chats, after));
}
