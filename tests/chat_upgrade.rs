//! Replacing the running binary without disconnecting anyone: a second process started with
//! `--takeover` on the same data dir takes the listening sockets and every chat and agent
//! connection while customers, an agent and a REST client keep going; nobody is disconnected and
//! no frame is lost or repeated. And when the new process is not ready in time, the old one stops
//! it and serves on (rollback); a peer on the control socket that breaks the protocol is cut off
//! and the server serves on, still heard by a real successor.

mod support;

use std::cell::Cell;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use serde_json::{json, Value};
use support::binary::{agent_token, upgraded, Server};
use support::fake_django::FakeDjango;
use support::ws::ChatClient;
use tokio::sync::mpsc;

async fn agent_connect(chat: SocketAddr, sub: &str) -> ChatClient {
    let bearer = format!("Bearer {}", agent_token(sub));
    ChatClient::connect_to(chat, "/ws/agent", &[("Authorization", &bearer)])
        .await
        .expect("agent accepted")
}

/// What one client saw on its one connection: the seqs of its numbered frames in arrival order,
/// and the texts of the messages among them.
#[derive(Default, Debug)]
struct Stream {
    seqs: Vec<u64>,
    texts: Vec<String>,
    rounds: usize,
    /// A customer's acks number their own message in the same stream (an agent's, in the
    /// session's).
    acks_numbered: bool,
}

impl Stream {
    fn take(&mut self, f: &Value) {
        if f["type"] == "session.started" || (f["type"] == "message.ack" && !self.acks_numbered) {
            return;
        }
        if let Some(seq) = f["seq"].as_u64() {
            self.seqs.push(seq);
        }
        let text = f["text"].as_str().or_else(|| f["event"]["text"].as_str());
        if let Some(text) = text {
            self.texts.push(text.to_string());
        }
        // A chat handed to the agent again (by the new process's queue) brings what was said
        // meanwhile in its history.
        if f["type"] == "session.assigned" {
            let history = f["history"].as_array().into_iter().flatten();
            self.texts
                .extend(history.filter_map(|h| h["text"].as_str().map(str::to_string)));
        }
    }

    /// Every seq from the first seen on, once, in order.
    fn assert_gap_free(&self, who: &str) {
        let first = self.seqs.first().copied().unwrap_or(1);
        let expected: Vec<u64> = (first..first + self.seqs.len() as u64).collect();
        assert_eq!(self.seqs, expected, "{who}: every frame once, in order");
    }
}

/// One client's traffic: sends a message, reads until its ack (and the answer `until` names),
/// round after round, until told to stop. A dropped connection fails the test.
async fn traffic(
    mut c: ChatClient,
    who: &'static str,
    session_id: Option<Value>,
    stop: Rc<Cell<bool>>,
    progress: mpsc::UnboundedSender<&'static str>,
) -> (Stream, ChatClient) {
    let mut seen = Stream {
        acks_numbered: session_id.is_none(),
        ..Stream::default()
    };
    for f in c.seen.drain(..) {
        seen.take(&f);
    }
    // Paced within the frame rate (sessions.rate_per_sec), pings and acks included.
    let mut pace = tokio::time::interval(std::time::Duration::from_millis(100));
    let mut i = 0;
    while !stop.get() {
        pace.tick().await;
        i += 1;
        let client_id = format!("{who}-{i}");
        let mut frame = json!({"type": "message.send", "client_id": client_id, "text": client_id});
        if let Some(id) = &session_id {
            frame["session_id"] = id.clone();
        }
        c.send(frame).await;
        let mut acked = false;
        let mut answered = who != "a";
        while !(acked && answered) {
            let f = c
                .next()
                .await
                .unwrap_or_else(|e| panic!("{who}'s connection ended ({e:?}) in round {i}"));
            seen.take(&f);
            if f["type"] == "message.ack" && f["client_id"] == client_id.as_str() {
                acked = true;
            }
            if f["type"] == "message" && f["from"] == "ai" {
                answered = true;
            }
            assert_ne!(f["type"], "error", "{who}: {f}");
        }
        seen.rounds = i;
        let _ = progress.send(who);
    }
    (seen, c)
}

/// Once nobody sends any more: reads what is still on its way to `c` (the other side's last
/// messages were written before their senders had their acks), up to the answer to a ping.
async fn drain(seen: &mut Stream, c: &mut ChatClient) {
    c.send(json!({"type": "ping"})).await;
    loop {
        let f = c.next().await.expect("open to the end");
        if f["type"] == "pong" {
            return;
        }
        seen.take(&f);
    }
}

/// Waits until every one of `who` made `n` more rounds.
async fn rounds(progress: &mut mpsc::UnboundedReceiver<&'static str>, who: &[&str], n: usize) {
    let mut counts = vec![0; who.len()];
    while counts.iter().any(|c| *c < n) {
        let next = tokio::time::timeout(support::WAIT, progress.recv())
            .await
            .expect("traffic goes on")
            .expect("traffic tasks alive");
        if let Some(i) = who.iter().position(|w| *w == next) {
            counts[i] += 1;
        }
    }
}

/// GET /healthz on a fresh connection each time, until told to stop: (requests, failures).
fn rest_client(api: SocketAddr, stop: Arc<AtomicBool>, failures: Arc<AtomicUsize>) -> usize {
    let mut requests = 0;
    while !stop.load(Ordering::SeqCst) {
        requests += 1;
        let ok = (|| {
            let mut s = TcpStream::connect(api).map_err(|e| format!("connect: {e}"))?;
            s.set_read_timeout(Some(support::WAIT))
                .map_err(|e| e.to_string())?;
            s.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
                .map_err(|e| format!("write: {e}"))?;
            let mut out = String::new();
            s.read_to_string(&mut out)
                .map_err(|e| format!("read: {e}"))?;
            if out.starts_with("HTTP/1.1 200") {
                Ok(())
            } else {
                Err(format!("answer: {out:?}"))
            }
        })();
        if let Err(e) = ok {
            eprintln!("REST request {requests} failed: {e}");
            failures.fetch_add(1, Ordering::SeqCst);
        }
    }
    requests
}

#[actix_rt::test]
async fn an_upgrade_under_live_traffic_drops_no_connection_and_loses_no_frame() {
    let dir = tempfile::tempdir().unwrap();
    let django = FakeDjango::start();
    let old = Server::start(dir.path(), &django);

    // Ann holds B's chat; A talks to the AI.
    let mut ann = agent_connect(old.chat, "ann").await;
    ann.send(json!({"type": "agent.start", "capacity": 2}))
        .await;
    ann.expect("agent.ready").await;
    let (mut b, b_started) = ChatClient::start(old.chat).await;
    b.send(json!({"type": "handoff.request", "reason": "a human please"}))
        .await;
    let assigned = ann.expect("session.assigned").await;
    assert_eq!(assigned["session_id"], b_started["session_id"]);
    ann.seen.push(assigned);
    let joined = b.expect("agent.joined").await;
    b.seen.push(joined);
    let (a, _) = ChatClient::start(old.chat).await;

    let stop = Rc::new(Cell::new(false));
    let (tx, mut progress) = mpsc::unbounded_channel();
    let a_task = actix_rt::spawn(traffic(a, "a", None, stop.clone(), tx.clone()));
    let b_task = actix_rt::spawn(traffic(b, "b", None, stop.clone(), tx.clone()));
    let ann_task = actix_rt::spawn(traffic(
        ann,
        "ann",
        Some(b_started["session_id"].clone()),
        stop.clone(),
        tx,
    ));
    let rest_stop = Arc::new(AtomicBool::new(false));
    let rest_failures = Arc::new(AtomicUsize::new(0));
    let rest = {
        let (stop, failures, api) = (rest_stop.clone(), rest_failures.clone(), old.api);
        std::thread::spawn(move || rest_client(api, stop, failures))
    };
    let who = ["a", "b", "ann"];
    rounds(&mut progress, &who, 3).await;

    // The upgrade, mid-traffic.
    let path = dir.path().to_path_buf();
    let django_url = django.base_url.clone();
    let new = upgraded(old, move || Server::take_over(&path, &django_url)).await;
    rounds(&mut progress, &who, 3).await;
    stop.set(true);
    rest_stop.store(true, Ordering::SeqCst);
    let (mut a, mut a_conn) = a_task.await.unwrap();
    let (mut b, mut b_conn) = b_task.await.unwrap();
    let (mut ann, mut ann_conn) = ann_task.await.unwrap();
    drain(&mut a, &mut a_conn).await;
    drain(&mut b, &mut b_conn).await;
    drain(&mut ann, &mut ann_conn).await;
    let requests = rest.join().unwrap();

    a.assert_gap_free("a");
    b.assert_gap_free("b");
    ann.assert_gap_free("ann");
    // Everyone's words reached the other side.
    for i in 1..=ann.rounds {
        let text = format!("ann-{i}");
        assert!(b.texts.contains(&text), "b got {text}: {:?}", b.texts);
    }
    for i in 1..=b.rounds {
        let text = format!("b-{i}");
        assert!(ann.texts.contains(&text), "ann got {text}: {:?}", ann.texts);
    }
    assert_eq!(
        rest_failures.load(Ordering::SeqCst),
        0,
        "of {requests} requests"
    );

    let metrics = support::get(&format!("http://{}/metrics", new.api))
        .await
        .text;
    let adopted = |party| {
        support::metric(
            &metrics,
            "switchboard_upgrade_adopted_total",
            &[("party", party), ("outcome", "attached")],
        )
    };
    assert_eq!(adopted("customer"), Some(2.0));
    assert_eq!(adopted("agent"), Some(1.0));
}

#[actix_rt::test]
async fn a_new_process_not_ready_in_time_is_stopped_and_the_old_one_serves_on() {
    let dir = tempfile::tempdir().unwrap();
    let django = FakeDjango::start();
    // Nothing can be ready within a millisecond: every upgrade of this server rolls back.
    let mut old = Server::spawn(
        dir.path(),
        &django.base_url,
        &[],
        &[("SWITCHBOARD__UPGRADE__DEADLINE_MS", "1")],
    );
    let (mut a, _) = ChatClient::start(old.chat).await;
    a.send(json!({"type": "message.send", "client_id": "a-1", "text": "hello"}))
        .await;
    let first = a.expect("message.ack").await["seq"].as_u64().unwrap();
    a.expect("message").await;

    let path = dir.path().to_path_buf();
    let django_url = django.base_url.clone();
    let (mut new, old_back) = tokio::task::spawn_blocking(move || {
        let new = Server::launch(&path, &django_url, &["--takeover"], &[]);
        old.log_line("upgrade rolled back: serving on");
        (new, old)
    })
    .await
    .unwrap();
    old = old_back;
    let status = tokio::task::spawn_blocking(move || {
        let status = new.wait_exit();
        (new, status)
    })
    .await
    .unwrap()
    .1;
    assert!(!status.success(), "the new process was stopped: {status:?}");
    assert!(old.is_running());

    // The same connection goes on with the old process, numbering included.
    a.send(json!({"type": "message.send", "client_id": "a-2", "text": "still here?"}))
        .await;
    let ack = a.expect("message.ack").await;
    assert!(ack["seq"].as_u64().unwrap() > first);
    let metrics = support::get(&format!("http://{}/metrics", old.api))
        .await
        .text;
    assert_eq!(
        support::metric(&metrics, "switchboard_upgrade_rollbacks_total", &[]),
        Some(1.0)
    );
}

/// Writes `bytes` to the control socket and reads until the server closes it: `true` if it did at
/// once, for what it read (well within the 5 s it gives a silent peer to say hello).
fn refused(control: &std::path::Path, bytes: &[u8]) -> bool {
    let mut peer = std::os::unix::net::UnixStream::connect(control).expect("control socket");
    peer.set_read_timeout(Some(std::time::Duration::from_secs(2)))
        .unwrap();
    let _ = peer.write_all(bytes);
    // Nothing more is coming: a server waiting for the rest would see the end at once.
    let _ = peer.shutdown(std::net::Shutdown::Write);
    let mut rest = Vec::new();
    peer.read_to_end(&mut rest).is_ok() && rest.is_empty()
}

#[actix_rt::test]
async fn a_broken_peer_on_the_control_socket_is_refused_and_a_real_takeover_still_works() {
    let dir = tempfile::tempdir().unwrap();
    let django = FakeDjango::start();
    let old = Server::start(dir.path(), &django);
    let control = dir.path().join("control.sock");
    let (mut c, _) = ChatClient::start(old.chat).await;

    let probe = control.clone();
    let cases = tokio::task::spawn_blocking(move || {
        [
            // A length past the largest message.
            refused(&probe, &u32::MAX.to_be_bytes()),
            // A message that is not JSON.
            refused(&probe, &[&5u32.to_be_bytes()[..], b"junk!"].concat()),
            // JSON that is no message of the protocol.
            refused(&probe, &[&2u32.to_be_bytes()[..], b"{}"].concat()),
            // Gone before a word.
            refused(&probe, b""),
        ]
    })
    .await
    .unwrap();
    assert_eq!(cases, [true; 4], "each broken peer is cut off");
    // Each is logged as refused.
    let old = tokio::task::spawn_blocking(move || {
        for _ in 0..4 {
            old.log_line("control socket: peer refused");
        }
        old
    })
    .await
    .unwrap();

    // The server served on, chat included.
    c.send(json!({"type": "message.send", "client_id": "c-1", "text": "still there?"}))
        .await;
    c.expect("message.ack").await;

    // And a real successor is still heard: it takes over, and the connection goes on with it.
    let path = dir.path().to_path_buf();
    let django_url = django.base_url.clone();
    let (mut old, new) = tokio::task::spawn_blocking(move || {
        let mut old = old;
        let new = Server::take_over(&path, &django_url);
        new.log_line("took over: ready");
        old.wait_exit();
        (old, new)
    })
    .await
    .unwrap();
    assert!(!old.is_running());
    c.send(json!({"type": "message.send", "client_id": "c-2", "text": "and now?"}))
        .await;
    c.expect("message.ack").await;
    drop(new);
}
