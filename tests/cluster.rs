//! Several nodes on a real NATS and a real PostgreSQL (started by scripts/nats.sh and
//! scripts/postgres.sh from Debian's packages), each the real binary on its own ports and data dir:
//! customers and agents on different nodes talk as if on one, a customer's resume on another node
//! moves the session there gap-free and fences the old node, and a node killed with `kill -9` has
//! its agents shown offline and their chats requeued within the heartbeat timeout.

mod support;

use std::collections::BTreeMap;

use serde_json::{json, Value};
use support::binary::{agent_token, upgraded, Server};
use support::fake_django::{Behavior, ChatEndpoint, FakeDjango};
use support::nats::Nats;
use support::postgres::Postgres;
use support::ws::{expect_for, say, ChatClient};

/// Publishes raw payloads on NATS subjects as any client of the broker could; returns how many the
/// broker took (it answers the closing PING once every publish before it is processed).
async fn publish_raw(port: u16, messages: &[(&str, &[u8])]) -> usize {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("NATS answers");
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    let info = lines.next_line().await.unwrap().unwrap();
    assert!(info.starts_with("INFO"), "{info}");
    let mut out = b"CONNECT {\"verbose\":false,\"pedantic\":false}\r\n".to_vec();
    for (subject, payload) in messages {
        out.extend_from_slice(format!("PUB {subject} {}\r\n", payload.len()).as_bytes());
        out.extend_from_slice(payload);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"PING\r\n");
    write.write_all(&out).await.unwrap();
    let pong = tokio::time::timeout(support::WAIT, lines.next_line())
        .await
        .expect("an answer within the wait")
        .unwrap()
        .unwrap();
    assert_eq!(pong, "PONG");
    messages.len()
}

/// A node of the cluster on `nats` and `pg`, named `node`.
fn node(name: &str, dir: &std::path::Path, django: &FakeDjango, pg: &str, nats: &str) -> Server {
    node_with_args(name, dir, &django.base_url, pg, nats, &[])
}

/// The same, with command-line arguments (`--takeover`).
fn node_with_args(
    name: &str,
    dir: &std::path::Path,
    django_url: &str,
    pg: &str,
    nats: &str,
    args: &[&str],
) -> Server {
    Server::spawn(dir, django_url, args, &node_env(name, pg, nats))
}

/// What every node of a test is started with: its name, the shared services, quick heartbeats.
fn node_env<'a>(name: &'a str, pg: &'a str, nats: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("SWITCHBOARD__STORAGE__POSTGRES_URL", pg),
        ("SWITCHBOARD__CLUSTER__NATS_URL", nats),
        ("SWITCHBOARD__CLUSTER__NODE_ID", name),
        ("SWITCHBOARD__CLUSTER__HEARTBEAT_MS", "200"),
        ("SWITCHBOARD__CLUSTER__HEARTBEAT_TIMEOUT_MS", "1500"),
    ]
}

/// Starts node `name` with further settings (credentials, TLS for the broker), without waiting
/// for it: one the broker refuses never gets as far as its start line.
fn launch_node(
    name: &str,
    dir: &std::path::Path,
    services: (&FakeDjango, &Postgres, &Nats),
    extra: &[(&str, &str)],
) -> Server {
    let (django, pg, nats) = services;
    let url = nats.url();
    let mut env = node_env(name, &pg.url, &url);
    // A node the broker refuses gives up within this.
    env.push(("SWITCHBOARD__STORAGE__POSTGRES_CONNECT_TIMEOUT_MS", "3000"));
    env.extend_from_slice(extra);
    Server::launch(dir, &django.base_url, &[], &env)
}

/// Starts a node the broker admits; returns it once it has joined.
async fn admitted(
    name: &str,
    dir: &std::path::Path,
    services: (&FakeDjango, &Postgres, &Nats),
    extra: &[(&str, &str)],
) -> Server {
    let mut server = launch_node(name, dir, services, extra);
    server.read_start();
    joined(&server).await;
    server
}

/// A node the broker refuses: it says why in its log, then gives up and exits with an error.
fn refused(mut server: Server) -> String {
    let failed = server.log_line("NATS connection failed");
    let status = server.wait_exit();
    assert!(
        !status.success(),
        "a node the broker refuses does not run on"
    );
    failed["error"].as_str().unwrap_or_default().to_string()
}

#[actix_rt::test]
async fn a_broker_that_admits_nodes_by_nkey_takes_only_the_keys_it_knows() {
    let keys = tempfile::tempdir().unwrap();
    let known = nkeys::KeyPair::new_user();
    let stranger = nkeys::KeyPair::new_user();
    let conf = keys.path().join("users.conf");
    std::fs::write(
        &conf,
        format!(
            "authorization {{ users = [ {{ nkey: \"{}\" }} ] }}\n",
            known.public_key()
        ),
    )
    .unwrap();
    let seed_file = |name: &str, key: &nkeys::KeyPair| {
        let path = keys.path().join(name);
        std::fs::write(&path, key.seed().unwrap()).unwrap();
        path.to_str().unwrap().to_string()
    };
    let (known_seed, stranger_seed) = (seed_file("a.nk", &known), seed_file("b.nk", &stranger));
    let (pg, django) = (Postgres::start(), FakeDjango::start());
    let nats = Nats::start_with(&["-c", conf.to_str().unwrap()]);
    let services = (&django, &pg, &nats);
    let (da, db, dc) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );

    let key = "SWITCHBOARD__CLUSTER__NATS_NKEY_FILE";
    let _a = admitted("node-a", da.path(), services, &[(key, known_seed.as_str())]).await;
    let why = refused(launch_node(
        "node-b",
        db.path(),
        services,
        &[(key, stranger_seed.as_str())],
    ));
    assert!(why.contains("authorization"), "{why}");
    let why = refused(launch_node("node-c", dc.path(), services, &[]));
    assert!(why.contains("authorization"), "{why}");
}

/// A CA, the broker's certificate for 127.0.0.1 and a node's client certificate, made with
/// openssl in `dir`: `ca.pem`, `server.{pem,key}`, `node.{pem,key}`.
fn certificates(dir: &std::path::Path) {
    let script = r#"
set -euo pipefail
openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 2 -subj /CN=switchboard-test-ca
issue() {
    openssl req -newkey rsa:2048 -nodes -keyout "$1.key" -out "$1.csr" -subj "/CN=$1"
    printf '%s
' "$2" >"$1.ext"
    openssl x509 -req -in "$1.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -out "$1.pem" -days 2 -extfile "$1.ext"
}
issue server "subjectAltName=IP:127.0.0.1
extendedKeyUsage=serverAuth"
issue node "extendedKeyUsage=clientAuth"
"#;
    let out = std::process::Command::new("bash")
        .args(["-c", script])
        .current_dir(dir)
        .output()
        .expect("openssl runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[actix_rt::test]
async fn nodes_talk_to_a_broker_over_mutual_tls_and_one_without_its_certificate_is_refused() {
    let certs = tempfile::tempdir().unwrap();
    certificates(certs.path());
    let file = |name: &str| certs.path().join(name).to_str().unwrap().to_string();
    let (ca, server_pem, server_key) = (file("ca.pem"), file("server.pem"), file("server.key"));
    let (node_pem, node_key) = (file("node.pem"), file("node.key"));
    let (pg, django) = (Postgres::start(), FakeDjango::start());
    let nats = Nats::start_with(&[
        "--tls",
        "--tlscert",
        &server_pem,
        "--tlskey",
        &server_key,
        "--tlsverify",
        "--tlscacert",
        &ca,
    ]);
    let services = (&django, &pg, &nats);
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let tls = [
        ("SWITCHBOARD__CLUSTER__NATS_TLS_CA_FILE", ca.as_str()),
        (
            "SWITCHBOARD__CLUSTER__NATS_TLS_CERT_FILE",
            node_pem.as_str(),
        ),
        ("SWITCHBOARD__CLUSTER__NATS_TLS_KEY_FILE", node_key.as_str()),
    ];
    let a = admitted("node-a", dirs[0].path(), services, &tls).await;
    let b = admitted("node-b", dirs[1].path(), services, &tls).await;
    // Over TLS the nodes are one cluster: an agent on one sees an agent who signs on at the other.
    let mut ann = agent(&a, "ann").await;
    let _bob = agent(&b, "bob").await;
    assert_eq!(presence_of(&mut ann, "bob").await["presence"], "online");
    // Trusting the broker is not enough: it wants the node's own certificate.
    let why = refused(launch_node("node-c", dirs[2].path(), services, &tls[..1]));
    assert!(!why.is_empty());
}

/// What the nodes of a test share (PostgreSQL, NATS, a fake Django), and their data dirs.
struct Services {
    pg: Postgres,
    nats: Nats,
    django: FakeDjango,
    dirs: Vec<tempfile::TempDir>,
}

impl Services {
    fn start() -> Self {
        Self {
            pg: Postgres::start(),
            nats: Nats::start(),
            django: FakeDjango::start(),
            dirs: Vec::new(),
        }
    }

    /// Starts node `name` on a data dir of its own; returns it once it has joined.
    async fn join(&mut self, name: &str) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let server = node(
            name,
            dir.path(),
            &self.django,
            &self.pg.url,
            &self.nats.url(),
        );
        self.dirs.push(dir);
        joined(&server).await;
        server
    }
}

async fn readyz(server: &Server) -> Value {
    let resp = support::get(&format!("http://{}/readyz", server.api)).await;
    let body: Value = serde_json::from_str(&resp.text).unwrap_or(Value::Null);
    json!({"status": resp.status, "body": body})
}

/// Waits until `server` has joined; returns whether it leads the queue.
async fn joined(server: &Server) {
    support::eventually("the node joined its cluster", || async {
        let r = readyz(server).await;
        r["status"] == 200 && r["body"]["cluster"]["joined"] == true
    })
    .await;
}

async fn leads(server: &Server) -> bool {
    readyz(server).await["body"]["cluster"]["leads_queue"] == true
}

async fn agent(server: &Server, sub: &str) -> ChatClient {
    let bearer = format!("Bearer {}", agent_token(sub));
    let mut a = ChatClient::connect_to(server.chat, "/ws/agent", &[("Authorization", &bearer)])
        .await
        .expect("agent accepted");
    a.send(json!({"type": "agent.start", "auto_assign": false, "capacity": 10}))
        .await;
    a.expect("agent.ready").await;
    a
}

/// A customer on `server` whose first message makes the AI hand off, once queued.
async fn queued_customer(server: &Server, django: &FakeDjango) -> (ChatClient, Value) {
    django.push_chat(
        ChatEndpoint::AiRespond,
        Behavior::Json(json!({
            "reply": "A colleague will take over.", "confidence": 0.5, "handoff": true,
            "suggested_actions": []
        })),
    );
    let (mut c, started) = ChatClient::start(server.chat).await;
    say(&mut c, "q-1", "I want a human").await;
    c.expect("session.queued").await;
    (c, started)
}

/// `fut`, which reads frames until the one it looks for, within the wait: a stream of other frames
/// does not keep a test waiting forever.
async fn bounded<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(support::WAIT, fut)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

/// Waits until the agent's view of the queue lists session `id`.
async fn listed(a: &mut ChatClient, id: &Value) {
    let mut last = Value::Null;
    let found = tokio::time::timeout(support::WAIT, async {
        loop {
            let q = a.expect("queue.updated").await;
            let waiting = q["waiting"].as_array().cloned().unwrap_or_default();
            if waiting.iter().any(|w| w["session_id"] == *id) {
                return;
            }
            last = q;
        }
    })
    .await;
    assert!(found.is_ok(), "{id} never listed; last: {last}");
}

/// The next `agent.presence` about agent `sub`.
async fn presence_of(a: &mut ChatClient, sub: &str) -> Value {
    bounded("a presence", async {
        loop {
            let f = a.expect("agent.presence").await;
            if f["agent"]["agent_id"] == sub {
                return f["agent"].clone();
            }
        }
    })
    .await
}

/// The next `session.event` for `id` whose inner frame is of `inner` type.
async fn event(a: &mut ChatClient, id: &Value, inner: &str) -> Value {
    let found = tokio::time::timeout(support::WAIT, async {
        loop {
            let f = expect_for(a, "session.event", id).await;
            if f["event"]["type"] == inner {
                return f;
            }
        }
    })
    .await;
    found.unwrap_or_else(|_| panic!("no {inner} event for {id}; other frames: {:?}", a.seen))
}

/// Every numbered frame the customer receives until one of `kind`, by seq.
async fn numbered_until(c: &mut ChatClient, seen: &mut BTreeMap<u64, Value>, kind: &str) -> Value {
    bounded(kind, async {
        loop {
            let f = c.next().await.expect("open");
            if let (Some(seq), false) = (f["seq"].as_u64(), f["type"] == "message.ack") {
                seen.insert(seq, f.clone());
            }
            if f["type"] == kind {
                return f;
            }
        }
    })
    .await
}

#[actix_rt::test]
async fn customers_and_agents_on_different_nodes_talk_as_one_and_a_resume_moves_the_session() {
    let mut services = Services::start();
    let a = services.join("node-a").await;
    let b = services.join("node-b").await;
    let (django, nats) = (&services.django, &services.nats);
    support::eventually("exactly one node leads the queue", || async {
        leads(&a).await != leads(&b).await
    })
    .await;

    // The agent on node B, the customer on node A.
    let mut ann = agent(&b, "ann").await;
    let (mut c, started) = queued_customer(&a, django).await;
    let id = started["session_id"].clone();
    listed(&mut ann, &id).await;
    ann.send(json!({"type": "session.join", "session_id": id}))
        .await;
    let assigned = expect_for(&mut ann, "session.assigned", &id).await;
    assert!(
        assigned["history"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["text"] == "I want a human"),
        "the agent on another node sees the chat so far: {assigned}"
    );
    let mut seen = BTreeMap::new();
    numbered_until(&mut c, &mut seen, "agent.joined").await;

    ann.send(json!({"type": "message.send", "session_id": id, "client_id": "a-1", "text": "Hi, Ann here"}))
        .await;
    let ack = expect_for(&mut ann, "message.ack", &id).await;
    let m = numbered_until(&mut c, &mut seen, "message").await;
    assert_eq!(
        (&m["from"], &m["text"]),
        (&json!("agent"), &json!("Hi, Ann here"))
    );
    assert_eq!(m["seq"], ack["seq"]);
    say(&mut c, "c-2", "Thanks Ann").await;
    let e = event(&mut ann, &id, "message").await;
    assert_eq!(e["event"]["text"], "Thanks Ann");

    // The customer comes back through node B: the session moves there with its history.
    drop(c);
    let mut back = ChatClient::resume(b.chat, &started, 0).await;
    let resumed = back.expect("session.resumed").await;
    let newest = resumed["seq"].as_u64().unwrap();
    for seq in 1..=newest {
        let f = loop {
            let f = back.next().await.expect("replayed frame");
            if f["seq"].is_u64() {
                break f;
            }
        };
        assert_eq!(f["seq"], seq, "gap-free, in order");
        if let Some(before) = seen.get(&seq) {
            assert_eq!(&f, before, "frame {seq} as node A sent it");
        }
    }
    a.log_line("chat session taken over by another node; stopped here");

    // Both ways still, now from node B.
    let seq = say(&mut back, "c-3", "Moved over").await;
    assert_eq!(seq, newest + 1, "numbering goes on");
    let e = event(&mut ann, &id, "message").await;
    assert_eq!(e["event"]["text"], "Moved over");
    // Garbage and forgeries on the nodes' subjects: dropped and counted, and both nodes serve on.
    let sent = publish_raw(
        nats.port(),
        &[
            ("sb.all", b"not json".as_slice()),
            (
                "sb.node.node-a",
                br#"{"from":"x","wire":{"kind":"nonsense"}}"#.as_slice(),
            ),
            ("sb.queue", &[0xff, 0xfe, 0x00]),
        ],
    )
    .await;
    assert_eq!(sent, 3);
    support::eventually("the garbage is counted as dropped", || async {
        let mut dropped = 0.0;
        for node in [&a, &b] {
            let text = support::get(&format!("http://{}/metrics", node.api))
                .await
                .text;
            dropped += support::metric(
                &text,
                "switchboard_cluster_errors_total",
                &[("kind", "unknown"), ("reason", "garbled")],
            )
            .unwrap_or(0.0);
        }
        dropped >= 3.0
    })
    .await;
    ann.send(
        json!({"type": "message.send", "session_id": id, "client_id": "a-2", "text": "Still here"}),
    )
    .await;
    let ack = expect_for(&mut ann, "message.ack", &id).await;
    let m = back.expect("message").await;
    assert_eq!((&m["text"], &m["seq"]), (&json!("Still here"), &ack["seq"]));
}

#[actix_rt::test]
async fn a_killed_nodes_agents_go_offline_and_their_chats_are_requeued() {
    let mut services = Services::start();
    // Node B first: it leads the queue, and survives.
    let b = services.join("node-b").await;
    support::eventually("node B leads the queue", || leads(&b)).await;
    let mut a = services.join("node-a").await;
    let django = &services.django;

    let mut bob = agent(&b, "bob").await;
    let mut ann = agent(&a, "ann").await;
    let online = presence_of(&mut bob, "ann").await;
    assert_eq!(online["presence"], "online");
    let (mut c, started) = queued_customer(&b, django).await;
    let id = started["session_id"].clone();
    listed(&mut ann, &id).await;
    ann.send(json!({"type": "session.join", "session_id": id}))
        .await;
    expect_for(&mut ann, "session.assigned", &id).await;
    c.expect("agent.joined").await;

    a.signal("-KILL");
    a.wait_exit();
    // Within the heartbeat timeout: Ann shows offline (after the pushes of her load before),
    // and her chat waits again.
    bounded("Ann offline", async {
        while presence_of(&mut bob, "ann").await["presence"] != "offline" {}
    })
    .await;
    c.expect("session.queued").await;
    listed(&mut bob, &id).await;
    bob.send(json!({"type": "session.join", "session_id": id}))
        .await;
    expect_for(&mut bob, "session.assigned", &id).await;
    bob.send(
        json!({"type": "message.send", "session_id": id, "client_id": "b-1", "text": "Bob here"}),
    )
    .await;
    expect_for(&mut bob, "message.ack", &id).await;
    bounded("Bob's message", async {
        while c.expect("message").await["text"] != "Bob here" {}
    })
    .await;
}

/// A customer on node A and an agent on node B, the agent holding the chat; returns them with the
/// session id.
async fn chat_across(
    a: &Server,
    b: &Server,
    django: &FakeDjango,
    agent_id: &str,
) -> (ChatClient, ChatClient, Value) {
    let mut agent = agent(b, agent_id).await;
    let (mut c, started) = queued_customer(a, django).await;
    let id = started["session_id"].clone();
    listed(&mut agent, &id).await;
    agent
        .send(json!({"type": "session.join", "session_id": id}))
        .await;
    expect_for(&mut agent, "session.assigned", &id).await;
    c.expect("agent.joined").await;
    (c, agent, id)
}

/// Agent → customer across nodes, acked; customer → agent.
async fn both_ways(c: &mut ChatClient, agent: &mut ChatClient, id: &Value, tag: &str) {
    let text = format!("agent says {tag}");
    agent
        .send(json!({"type": "message.send", "session_id": id, "client_id": tag, "text": text}))
        .await;
    expect_for(agent, "message.ack", id).await;
    bounded("the agent's message", async {
        while c.expect("message").await["text"] != text {}
    })
    .await;
    let text = format!("customer says {tag}");
    say(c, tag, &text).await;
    agent_sees(agent, id, &text).await;
}

/// A new customer on `node` is listed to `agent` (on another node), who takes the chat.
async fn taken_across(node: &Server, agent: &mut ChatClient, django: &FakeDjango) {
    let (mut c, started) = queued_customer(node, django).await;
    let id = started["session_id"].clone();
    listed(agent, &id).await;
    agent
        .send(json!({"type": "session.join", "session_id": id}))
        .await;
    expect_for(agent, "session.assigned", &id).await;
    c.expect("agent.joined").await;
}

#[actix_rt::test]
async fn a_node_upgraded_in_place_keeps_its_connections_and_the_cluster_loses_nothing() {
    let mut services = Services::start();
    let a = services.join("node-a").await;
    let b = services.join("node-b").await;
    let django = &services.django;
    // Both ways across the node to upgrade: A's customer with B's agent, B's customer with A's.
    let (mut c1, mut bob, id1) = chat_across(&a, &b, django, "bob").await;
    let (mut c2, mut ann, id2) = chat_across(&b, &a, django, "ann").await;
    both_ways(&mut c1, &mut bob, &id1, "before-1").await;
    both_ways(&mut c2, &mut ann, &id2, "before-2").await;

    // A new process of node A takes A's sockets over (`--takeover`), under the same node id.
    let dir = services.dirs[0].path().to_path_buf();
    let (pg, nats, url) = (
        services.pg.url.clone(),
        services.nats.url(),
        django.base_url.clone(),
    );
    let new = upgraded(a, move || {
        node_with_args("node-a", &dir, &url, &pg, &nats, &["--takeover"])
    })
    .await;
    joined(&new).await;

    // No connection dropped; both chats go on both ways, across the new process.
    both_ways(&mut c1, &mut bob, &id1, "after-1").await;
    both_ways(&mut c2, &mut ann, &id2, "after-2").await;
    // And the new process serves the cluster as the old did: a new chat across it is taken.
    taken_across(&new, &mut bob, django).await;
}

#[actix_rt::test]
async fn nodes_leave_while_nats_is_down_and_come_back_by_themselves() {
    let mut services = Services::start();
    let a = services.join("node-a").await;
    let b = services.join("node-b").await;
    let (nats, django) = (&services.nats, &services.django);
    let (mut c, mut ann, id) = chat_across(&a, &b, django, "ann").await;
    both_ways(&mut c, &mut ann, &id, "before").await;

    nats.stop();
    support::eventually("both nodes say they left", || async {
        readyz(&a).await["status"] == 503 && readyz(&b).await["status"] == 503
    })
    .await;
    nats.start_again();
    joined(&a).await;
    joined(&b).await;
    both_ways(&mut c, &mut ann, &id, "after").await;

    // The queue works across nodes again: a new customer on A is seen and taken by Ann on B.
    taken_across(&a, &mut ann, django).await;
}

#[actix_rt::test]
async fn nodes_answer_503_while_postgres_is_down_and_the_cluster_recovers_by_itself() {
    let mut services = Services::start();
    let a = services.join("node-a").await;
    let b = services.join("node-b").await;
    let (pg, django) = (&services.pg, &services.django);
    let (mut c, mut ann, id) = chat_across(&a, &b, django, "ann").await;
    both_ways(&mut c, &mut ann, &id, "before").await;

    pg.stop();
    support::eventually("both nodes are not ready", || async {
        readyz(&a).await["status"] == 503 && readyz(&b).await["status"] == 503
    })
    .await;
    // Said while the database is away: acknowledged once it is back, not lost.
    c.send(json!({"type": "message.send", "client_id": "during", "text": "still there?"}))
        .await;
    pg.start_again();
    joined(&a).await;
    joined(&b).await;
    c.expect("message.ack").await;
    agent_sees(&mut ann, &id, "still there?").await;
    both_ways(&mut c, &mut ann, &id, "after").await;
    // The queue's lead was taken again and the queue rebuilt: a new customer is seen and taken.
    taken_across(&a, &mut ann, django).await;
}

#[actix_rt::test]
async fn an_agent_who_reconnects_to_another_node_gets_their_chats_there_and_none_is_requeued() {
    let mut services = Services::start();
    let a = services.join("node-a").await;
    let b = services.join("node-b").await;
    let django = &services.django;
    // The customer on B, Ann on A.
    let (mut c, mut ann, id) = chat_across(&b, &a, django, "ann").await;
    both_ways(&mut c, &mut ann, &id, "on-a").await;

    // Ann's console comes back through node B (her old connection left behind on A).
    let mut ann_b = agent(&b, "ann").await;
    let again = expect_for(&mut ann_b, "session.assigned", &id).await;
    assert!(
        again["history"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["text"] == "customer says on-a"),
        "the chat comes with its history: {again}"
    );
    // The connection left on A is closed (resume elsewhere), her chat stays hers.
    ann.until_closed().await;
    both_ways(&mut c, &mut ann_b, &id, "on-b").await;
    let mut frames = Vec::new();
    while let Ok(Ok(f)) = tokio::time::timeout(std::time::Duration::from_millis(1), c.next()).await
    {
        frames.push(f);
    }
    assert!(
        frames
            .iter()
            .all(|f| f["type"] != "session.queued" && f["type"] != "agent.left"),
        "the customer never saw the chat leave Ann: {frames:?}"
    );
}

/// Replays the whole chat from a fresh connection to `server`: gap-free, and every frame the
/// customer saw before exactly as it was. Returns the connection and the newest seq.
async fn replay_all(
    server: &Server,
    started: &Value,
    seen: &BTreeMap<u64, Value>,
) -> (ChatClient, u64) {
    let mut back = ChatClient::resume(server.chat, started, 0).await;
    let newest = back.expect("session.resumed").await["seq"]
        .as_u64()
        .unwrap();
    for seq in 1..=newest {
        let f = loop {
            let f = back.next().await.expect("replayed frame");
            if f["seq"].is_u64() {
                break f;
            }
        };
        assert_eq!(f["seq"], seq, "gap-free, in order");
        if let Some(before) = seen.get(&seq) {
            assert_eq!(&f, before, "frame {seq} as it was first sent");
        }
    }
    assert!(newest >= seen.keys().max().copied().unwrap_or(0));
    (back, newest)
}

/// Agent → customer and back, keeping every numbered frame the customer sees in `seen`.
async fn exchange(
    c: &mut ChatClient,
    agent: &mut ChatClient,
    id: &Value,
    tag: &str,
    seen: &mut BTreeMap<u64, Value>,
) {
    let text = format!("agent says {tag}");
    agent
        .send(json!({"type": "message.send", "session_id": id, "client_id": tag, "text": text}))
        .await;
    expect_for(agent, "message.ack", id).await;
    bounded("the agent's message", async {
        while numbered_until(c, seen, "message").await["text"] != text {}
    })
    .await;
    let text = format!("customer says {tag}");
    c.send(json!({"type": "message.send", "client_id": tag, "text": text}))
        .await;
    numbered_until(c, seen, "message.ack").await;
    agent_sees(agent, id, &text).await;
}

/// Waits until the agent has seen customer text `text` in session `id`: as an event, or in the
/// history of the chat handed to them again (the queue's lead moved while the session did).
async fn agent_sees(agent: &mut ChatClient, id: &Value, text: &str) {
    bounded(text, async {
        loop {
            let f = agent.next().await.expect("agent connected");
            if f["session_id"] != *id {
                continue;
            }
            let in_event = f["type"] == "session.event" && f["event"]["text"] == text;
            let in_history = f["type"] == "session.assigned"
                && f["history"]
                    .as_array()
                    .is_some_and(|h| h.iter().any(|e| e["text"] == text));
            if in_event || in_history {
                return;
            }
        }
    })
    .await
}

#[actix_rt::test]
async fn a_rolling_restart_one_node_at_a_time_loses_nothing() {
    let mut services = Services::start();
    let mut a = services.join("node-a").await;
    let mut b = services.join("node-b").await;
    let mut ann = agent(&b, "ann").await;
    let (mut c, started) = queued_customer(&a, &services.django).await;
    let id = started["session_id"].clone();
    listed(&mut ann, &id).await;
    ann.send(json!({"type": "session.join", "session_id": id}))
        .await;
    expect_for(&mut ann, "session.assigned", &id).await;
    let mut seen = BTreeMap::new();
    numbered_until(&mut c, &mut seen, "agent.joined").await;
    exchange(&mut c, &mut ann, &id, "one", &mut seen).await;

    // Node A goes down for its upgrade: its customer is told to resume, and does so on node B.
    a.signal("-TERM");
    assert!(matches!(
        c.until_closed().await,
        support::ws::Ended::Closed(1012)
    ));
    a.wait_exit();
    let (mut c, _) = replay_all(&b, &started, &seen).await;
    exchange(&mut c, &mut ann, &id, "two", &mut seen).await;

    // Node A is back (the new version); then node B goes down: Ann and the customer both come
    // back on node A, and the chat goes on with everything said before.
    let a2 = services.join("node-a").await;
    b.signal("-TERM");
    assert!(matches!(
        c.until_closed().await,
        support::ws::Ended::Closed(1012)
    ));
    ann.until_closed().await;
    b.wait_exit();
    let mut ann = agent(&a2, "ann").await;
    let (mut c, _) = replay_all(&a2, &started, &seen).await;
    expect_for(&mut ann, "session.assigned", &id).await;
    exchange(&mut c, &mut ann, &id, "three", &mut seen).await;
    drop(a);
}

#[actix_rt::test]
async fn when_the_queues_leader_dies_its_agents_chats_are_requeued_and_all_its_agents_show_offline()
{
    let mut services = Services::start();
    // Node A first: it leads the queue, and dies.
    let mut a = services.join("node-a").await;
    support::eventually("node A leads the queue", || leads(&a)).await;
    let b = services.join("node-b").await;
    let django = &services.django;

    let mut bob = agent(&b, "bob").await;
    let (mut c, mut ann, id) = chat_across(&b, &a, django, "ann").await;
    both_ways(&mut c, &mut ann, &id, "before").await;
    // Cid holds no chat: only the leader knew of him.
    let _cid = agent(&a, "cid").await;
    assert_eq!(presence_of(&mut bob, "cid").await["presence"], "online");

    a.signal("-KILL");
    a.wait_exit();
    support::eventually("node B leads the queue", || leads(&b)).await;
    // Bob's console is told of both: Ann shows offline once her chat is requeued, and the new
    // leader's roster, once the nodes told it who is online, no longer lists Cid.
    let (mut ann_offline, mut roster, mut already_listed) = (false, None::<Value>, false);
    bounded("Ann offline and a roster", async {
        while !(ann_offline && roster.is_some()) {
            let f = bob.next().await.expect("Bob stays connected");
            match f["type"].as_str() {
                Some("agent.presence") if f["agent"]["agent_id"] == "ann" => {
                    ann_offline |= f["agent"]["presence"] == "offline";
                }
                Some("agent.roster") => roster = Some(f),
                Some("queue.updated") => {
                    let waiting = f["waiting"].as_array().cloned().unwrap_or_default();
                    already_listed |= waiting.iter().any(|w| w["session_id"] == id);
                }
                _ => {}
            }
        }
    })
    .await;
    let roster = roster.expect("a roster");
    let online: Vec<&str> = roster["agents"]
        .as_array()
        .expect("agents")
        .iter()
        .filter(|v| v["presence"] != "offline")
        .filter_map(|v| v["agent_id"].as_str())
        .collect();
    assert_eq!(online, ["bob"], "{roster}");
    c.expect("session.queued").await;
    if !already_listed {
        listed(&mut bob, &id).await;
    }
    bob.send(json!({"type": "session.join", "session_id": id}))
        .await;
    expect_for(&mut bob, "session.assigned", &id).await;
    both_ways(&mut c, &mut bob, &id, "after").await;
}
