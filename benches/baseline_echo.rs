//! The floor for live chat: a minimal WebSocket server in plain tokio, one task per connection,
//! speaking the same JSON frames as Switchboard's `/ws/chat` (`session.start` → `session.started`;
//! `message.send` → `message.ack` and an immediate `message` from `ai`; `session.resume` →
//! `session.resumed`; `session.close` → `session.closed`; pings → pongs) with the same frame
//! codec, handshake parser and protocol types (`switchboard::transport`, `switchboard::chat::protocol`)
//! but no actor, no registry, no history, no Django. `benches/run-chat-bench.sh` runs the same
//! `switchboard-load chat` workload against it and against switchboard in one run: the ratio
//! between the two is what the actors and the session state cost.
//!
//! ```text
//! cargo bench --bench baseline_echo -- serve [--listen 127.0.0.1:0]   # prints `listening <addr>`
//! ```
//!
//! Without `serve` (as under `cargo test --all-targets`) it runs a smoke test: one session, one
//! message, its ack and its answer.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::time::Duration;

use switchboard::chat::protocol::{self, Author, ClientFrame, CloseReason, ServerFrame};
use switchboard::domain::ids::SessionId;
use switchboard::transport::frame::{self, Opcode, Role};
use switchboard::transport::handshake;
use tokio::net::{TcpListener, TcpStream};

#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Largest frame accepted, as Switchboard's default `sessions.max_frame_bytes`.
const MAX_FRAME: usize = 16 * 1024;

thread_local! {
    /// Reads land here; a connection keeps only the bytes of an incomplete frame, as the lean
    /// transport does, so the floor holds no per-connection read buffer either.
    static SCRATCH: RefCell<Vec<u8>> = RefCell::new(vec![0; 16 * 1024]);
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    if args.first().map(String::as_str) == Some("serve") {
        let listen: SocketAddr = args
            .iter()
            .position(|a| a == "--listen")
            .and_then(|i| args.get(i + 1))
            .map_or("127.0.0.1:0", String::as_str)
            .parse()
            .expect("--listen ADDR");
        if let Err(e) = rlimit::increase_nofile_limit(u64::MAX) {
            eprintln!("baseline_echo: cannot raise the open-files limit: {e}");
        }
        rt.block_on(async {
            let listener = TcpListener::bind(listen).await.expect("bind");
            println!("listening {}", listener.local_addr().expect("address"));
            serve(listener).await
        });
    } else {
        rt.block_on(smoke());
        println!("baseline_echo smoke run passed (see the file header for real runs)");
    }
}

async fn serve(listener: TcpListener) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(connection(stream));
            }
            // Out of descriptors: wait for some to close rather than spin.
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

/// Appends one read to `pending`; false at end of stream or on an error.
async fn read_into(stream: &TcpStream, pending: &mut Vec<u8>) -> bool {
    loop {
        if stream.readable().await.is_err() {
            return false;
        }
        let got = SCRATCH.with(|s| {
            let mut s = s.borrow_mut();
            match stream.try_read(&mut s) {
                Ok(0) => Some(false),
                Ok(n) => {
                    pending.extend_from_slice(&s[..n]);
                    Some(true)
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => None,
                Err(_) => Some(false),
            }
        });
        if let Some(ok) = got {
            return ok;
        }
    }
}

async fn write_all(stream: &TcpStream, mut bytes: &[u8]) -> bool {
    while !bytes.is_empty() {
        if stream.writable().await.is_err() {
            return false;
        }
        match stream.try_write(bytes) {
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => return false,
        }
    }
    true
}

async fn send(stream: &TcpStream, f: &ServerFrame) -> bool {
    write_all(
        stream,
        &frame::encode(true, Opcode::Text, f.to_text().as_bytes(), None),
    )
    .await
}

/// One connection: the upgrade, then frames until the peer goes away.
async fn connection(stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let mut pending = Vec::new();
    let used = loop {
        if !read_into(&stream, &mut pending).await {
            return;
        }
        match handshake::parse_request(&pending, &[protocol::SUBPROTOCOL], 16 * 1024) {
            Ok(Some((upgrade, used))) => {
                if !write_all(&stream, upgrade.response().as_bytes()).await {
                    return;
                }
                break used;
            }
            Ok(None) => {}
            Err(e) => {
                let _ = write_all(&stream, e.response()).await;
                return;
            }
        }
    };
    pending.drain(..used);
    pending.shrink_to_fit();
    let mut seq = 0u64;
    loop {
        while let Ok(Some((f, used))) = frame::decode(&pending, Role::Server, MAX_FRAME) {
            pending.drain(..used);
            match f.opcode {
                Opcode::Ping => {
                    let pong = frame::encode(true, Opcode::Pong, &f.payload, None);
                    if !write_all(&stream, &pong).await {
                        return;
                    }
                }
                Opcode::Close => return,
                Opcode::Text => {
                    let text = String::from_utf8_lossy(&f.payload);
                    if !answer(&stream, &text, &mut seq).await {
                        return;
                    }
                }
                _ => {}
            }
        }
        if pending.is_empty() {
            // An idle connection keeps no buffer.
            pending = Vec::new();
        }
        if !read_into(&stream, &mut pending).await {
            return;
        }
    }
}

/// Answers one client frame as Switchboard would, minus everything but the frames; false to close.
async fn answer(stream: &TcpStream, text: &str, seq: &mut u64) -> bool {
    let frame = match protocol::parse(text) {
        Ok(f) => f,
        Err(e) => return send(stream, &e.to_frame()).await,
    };
    match frame {
        ClientFrame::Start { .. } => {
            send(
                stream,
                &ServerFrame::Started {
                    session_id: SessionId::new(),
                    resume_token: "baseline".into(),
                    seq: *seq,
                    customer: None,
                    agents_online: false,
                },
            )
            .await
        }
        ClientFrame::Resume { session_id, .. } => {
            send(
                stream,
                &ServerFrame::Resumed {
                    session_id,
                    seq: *seq,
                },
            )
            .await
        }
        ClientFrame::Send { client_id, text } => {
            *seq += 1;
            let ack = ServerFrame::Ack {
                client_id,
                seq: *seq,
            };
            *seq += 1;
            let reply = ServerFrame::Message {
                seq: *seq,
                from: Author::Ai,
                text: format!("re: {text}"),
                at: chrono::Utc::now(),
                client_id: None,
                name: None,
                offers: Vec::new(),
            };
            send(stream, &ack).await && send(stream, &reply).await
        }
        ClientFrame::Close {} => {
            *seq += 1;
            let closed = ServerFrame::Closed {
                seq: *seq,
                reason: CloseReason::CustomerClosed,
            };
            send(stream, &closed).await;
            let close = frame::close_payload(frame::close_code::NORMAL, "");
            let _ = write_all(stream, &frame::encode(true, Opcode::Close, &close, None)).await;
            false
        }
        ClientFrame::Ping {} => send(stream, &ServerFrame::Pong {}).await,
        ClientFrame::Typing { .. }
        | ClientFrame::CreateTicket { .. }
        | ClientFrame::ConfirmAction { .. }
        | ClientFrame::HandoffRequest { .. } => true,
    }
}

/// One session over loopback: start, a message, its ack and its answer.
async fn smoke() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    tokio::spawn(serve(listener));
    let stream = TcpStream::connect(addr).await.expect("connect");
    let request = format!(
        "GET /ws/chat HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Protocol: {}\r\n\r\n",
        protocol::SUBPROTOCOL
    );
    assert!(write_all(&stream, request.as_bytes()).await);
    let mut buf = Vec::new();
    let head = loop {
        assert!(read_into(&stream, &mut buf).await, "upgrade answer");
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
    };
    assert!(buf.starts_with(b"HTTP/1.1 101"));
    buf.drain(..head);
    let mut texts = Vec::new();
    for out in [
        r#"{"type":"session.start"}"#,
        r#"{"type":"message.send","client_id":"m-1","text":"hello"}"#,
    ] {
        let masked = frame::encode(true, Opcode::Text, out.as_bytes(), Some([1, 2, 3, 4]));
        assert!(write_all(&stream, &masked).await);
    }
    while texts.len() < 3 {
        match frame::decode(&buf, Role::Client, MAX_FRAME).expect("frame") {
            Some((f, used)) => {
                buf.drain(..used);
                texts.push(String::from_utf8(f.payload).expect("utf-8"));
            }
            None => assert!(read_into(&stream, &mut buf).await, "frames after {texts:?}"),
        }
    }
    assert!(
        texts[0].contains(r#""type":"session.started""#),
        "{texts:?}"
    );
    assert!(texts[1].contains(r#""type":"message.ack""#), "{texts:?}");
    assert!(texts[2].contains(r#""from":"ai""#), "{texts:?}");
}
