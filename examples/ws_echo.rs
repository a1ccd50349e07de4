//! An echo server on `switchboard::transport`, for conformance runs (`scripts/autobahn.sh` points
//! the Autobahn TestSuite's fuzzing client at it) and for poking at the transport by hand.
//!
//! Each connection is a small actor, as in the chat listener: it attaches the inbound half with
//! `ctx.add_stream` and echoes every text and binary message through the outbound half. Pings,
//! pongs and the closing handshake are the transport's own. Limits are lifted so the suite's
//! largest cases fit: 16 MiB frames and messages, a 256 MiB queue.
//!
//! ```text
//! cargo run --release --example ws_echo -- [ADDR]    # default 127.0.0.1:9001; port 0 picks one
//! ```
//! It prints `listening on ADDR` once bound, and serves the subprotocol `switchboard.v1`.

use std::time::Duration;

use actix::prelude::*;
use switchboard::transport::{self, close_code, Limits, Message, Outbound, TransportError};

const PROTOCOL: &str = "switchboard.v1";

/// One connection: echoes what arrives, stops when the inbound half ends.
struct Echo {
    out: Outbound,
}

impl Actor for Echo {
    type Context = Context<Self>;
}

impl StreamHandler<Result<Message, TransportError>> for Echo {
    fn handle(&mut self, msg: Result<Message, TransportError>, ctx: &mut Context<Self>) {
        let sent = match msg {
            Ok(Message::Text(text)) => self.out.send_text(&text),
            Ok(Message::Binary(bytes)) => self.out.send_binary(&bytes),
            Ok(_) => Ok(()),
            Err(_) => return ctx.stop(),
        };
        if let Err(e) = sent {
            eprintln!("echo refused: {e}");
            self.out.close(close_code::POLICY, "echo queue full");
        }
    }
}

fn limits() -> Limits {
    Limits {
        max_frame: 16 << 20,
        max_message: 16 << 20,
        max_queued: 256 << 20,
        max_head: 8 * 1024,
    }
}

async fn serve(stream: tokio::net::TcpStream) {
    let _ = stream.set_nodelay(true);
    let accepted = tokio::time::timeout(
        Duration::from_secs(10),
        transport::accept(stream, &[PROTOCOL], &limits()),
    )
    .await;
    match accepted {
        Ok(Ok((_, inbound, out))) => {
            Echo::create(|ctx| {
                ctx.add_stream(inbound);
                Echo { out }
            });
        }
        Ok(Err(e)) => eprintln!("handshake refused: {e}"),
        Err(_) => eprintln!("handshake timed out"),
    }
}

fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9001".to_string());
    System::new().block_on(async move {
        let listener = tokio::net::TcpListener::bind(&addr).await?;
        println!("listening on {}", listener.local_addr()?);
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    actix_rt::spawn(serve(stream));
                }
                Err(e) => {
                    eprintln!("accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    })
}
