//! What the WebSocket bench tools share: lean raw-socket client pieces (connect from a chosen
//! loopback source address and upgrade with `switchboard.v1`, write whole, read some), and the
//! process plumbing every tool needs (a watchdog that kills the children, a raised open-files
//! limit). Included by each tool with `#[path]`; not a bench of its own.

use std::net::{Ipv4Addr, SocketAddr};
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use tokio::net::{TcpSocket, TcpStream};

/// The subprotocol every client offers and the server must name back.
pub const PROTOCOL: &str = "switchboard.v1";

/// Kills `children` and exits if the tool is still running after `limit`.
pub fn watchdog(tool: &'static str, limit: Duration, children: &'static Mutex<Vec<u32>>) {
    std::thread::spawn(move || {
        std::thread::sleep(limit);
        eprintln!("{tool}: still running after {limit:?}; killing the children and exiting");
        for pid in children.lock().unwrap().iter() {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
        std::process::exit(3);
    });
}

/// Raises this process's soft open-files limit to `n` (within the hard limit).
pub fn raise_nofile(tool: &str, n: u64) {
    if let Err(e) = rlimit::increase_nofile_limit(n) {
        eprintln!("{tool}: cannot raise the open-files limit: {e}");
    }
}

/// Connects from `src` to `addr`, upgrades `path` offering [`PROTOCOL`], and checks the answer
/// names it. Returns the stream and whatever bytes came after the response head.
pub async fn upgrade(
    addr: SocketAddr,
    src: Ipv4Addr,
    path: &str,
) -> Result<(TcpStream, Vec<u8>), String> {
    let err = |what: &'static str| move |e: std::io::Error| format!("{what}: {e}");
    let socket = TcpSocket::new_v4().map_err(err("socket"))?;
    socket
        .bind(SocketAddr::new(src.into(), 0))
        .map_err(err("bind"))?;
    let stream = socket.connect(addr).await.map_err(err("connect"))?;
    let _ = stream.set_nodelay(true);
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Protocol: {PROTOCOL}\r\n\r\n"
    );
    write_all(&stream, request.as_bytes())
        .await
        .map_err(err("send upgrade"))?;
    let mut buf = Vec::new();
    let head_len = loop {
        read_some(&stream, &mut buf)
            .await
            .map_err(err("read upgrade"))?;
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_len]).to_ascii_lowercase();
    if !head.starts_with("http/1.1 101")
        || !head.contains(&format!("sec-websocket-protocol: {PROTOCOL}"))
    {
        return Err(format!(
            "upgrade refused: {}",
            head.lines().next().unwrap_or("")
        ));
    }
    buf.drain(..head_len);
    Ok((stream, buf))
}

/// Writes all of `bytes`, waiting for writability as needed.
pub async fn write_all(stream: &TcpStream, mut bytes: &[u8]) -> std::io::Result<()> {
    while !bytes.is_empty() {
        stream.writable().await?;
        match stream.try_write(bytes) {
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Appends what one read gives to `buf`; end of file is an error.
pub async fn read_some(stream: &TcpStream, buf: &mut Vec<u8>) -> std::io::Result<()> {
    let mut chunk = [0u8; 2048];
    loop {
        stream.readable().await?;
        match stream.try_read(&mut chunk) {
            Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                return Ok(());
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
}
