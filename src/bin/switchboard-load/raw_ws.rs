//! A lean raw-socket WebSocket client, the smallest a load generator can hold per connection:
//! connect from a chosen loopback source address, upgrade offering `switchboard.v1`, then frames
//! through `switchboard::transport::frame` with no buffer kept between reads but the bytes of an
//! incomplete frame. Also included by `benches/ws_idle.rs`.

use std::net::{Ipv4Addr, SocketAddr};

use switchboard::transport::frame::{self, Opcode, Role};
use tokio::net::{TcpSocket, TcpStream};

/// The subprotocol every client offers and the server must name back.
pub const PROTOCOL: &str = "switchboard.v1";

/// Why an upgrade failed.
#[derive(Debug)]
pub enum UpgradeError {
    Io(&'static str, std::io::Error),
    /// The server answered with something other than `101` naming [`PROTOCOL`].
    Refused {
        status: u16,
        line: String,
        /// `Retry-After` in seconds, when the server sent one (admission control's 503).
        retry_after: Option<u64>,
    },
}

impl std::fmt::Display for UpgradeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UpgradeError::Io(what, e) => write!(f, "{what}: {e}"),
            UpgradeError::Refused { line, .. } => write!(f, "upgrade refused: {line}"),
        }
    }
}

impl From<UpgradeError> for String {
    fn from(e: UpgradeError) -> String {
        e.to_string()
    }
}

/// Connects from `src` to `addr`, upgrades `path` offering [`PROTOCOL`], and checks the answer
/// names it. Returns the stream and whatever bytes came after the response head.
pub async fn upgrade(
    addr: SocketAddr,
    src: Ipv4Addr,
    path: &str,
) -> Result<(TcpStream, Vec<u8>), UpgradeError> {
    let io = |what: &'static str| move |e: std::io::Error| UpgradeError::Io(what, e);
    let socket = TcpSocket::new_v4().map_err(io("socket"))?;
    socket
        .bind(SocketAddr::new(src.into(), 0))
        .map_err(io("bind"))?;
    let stream = socket.connect(addr).await.map_err(io("connect"))?;
    let _ = stream.set_nodelay(true);
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Protocol: {PROTOCOL}\r\n\r\n"
    );
    write_all(&stream, request.as_bytes())
        .await
        .map_err(io("send upgrade"))?;
    let mut buf = Vec::new();
    let head_len = loop {
        read_some(&stream, &mut buf)
            .await
            .map_err(io("read upgrade"))?;
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_len]).to_ascii_lowercase();
    if !head.starts_with("http/1.1 101")
        || !head.contains(&format!("sec-websocket-protocol: {PROTOCOL}"))
    {
        let line = head.lines().next().unwrap_or("").to_string();
        return Err(UpgradeError::Refused {
            status: line.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0),
            retry_after: head
                .lines()
                .find_map(|l| l.strip_prefix("retry-after:"))
                .and_then(|v| v.trim().parse().ok()),
            line,
        });
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

/// The error [`Conn::next`] gives when the server closed the connection with `code`.
pub fn closed_by_server(code: u16) -> String {
    format!("closed by the server ({code})")
}

/// The close code in an error of [`Conn::next`], if the server closed the connection.
pub fn close_code(err: &str) -> Option<u16> {
    err.strip_prefix("closed by the server (")?
        .strip_suffix(')')?
        .parse()
        .ok()
}

/// An open WebSocket connection, client side.
pub struct Conn {
    pub stream: TcpStream,
    /// Bytes read past the last whole frame.
    pub buf: Vec<u8>,
}

/// What [`Conn::next`] hands back.
pub enum Incoming {
    /// A text frame's payload.
    Text(Vec<u8>),
    /// A ping, already answered with a pong.
    Ping,
}

impl Conn {
    /// Sends one masked text frame.
    pub async fn send_text(&self, text: &str) -> std::io::Result<()> {
        let bytes = frame::encode(true, Opcode::Text, text.as_bytes(), Some(rand::random()));
        write_all(&self.stream, &bytes).await
    }

    /// The next text frame or ping (pings are answered; pongs and binary frames skipped); `Err`
    /// when the connection ends, breaks or is closed by the server (naming the close code).
    pub async fn next(&mut self) -> Result<Incoming, String> {
        loop {
            if let Some((f, used)) = frame::decode(&self.buf, Role::Client, 1 << 20)
                .map_err(|e| format!("frame: {e}"))?
            {
                self.buf.drain(..used);
                match f.opcode {
                    Opcode::Text => return Ok(Incoming::Text(f.payload)),
                    Opcode::Ping => {
                        let pong =
                            frame::encode(true, Opcode::Pong, &f.payload, Some(rand::random()));
                        write_all(&self.stream, &pong)
                            .await
                            .map_err(|e| format!("pong: {e}"))?;
                        return Ok(Incoming::Ping);
                    }
                    Opcode::Close => {
                        let code = f
                            .payload
                            .get(..2)
                            .map_or(1005, |c| u16::from_be_bytes([c[0], c[1]]));
                        return Err(closed_by_server(code));
                    }
                    _ => {}
                }
                continue;
            }
            if self.buf.is_empty() && self.buf.capacity() > 0 {
                // An idle connection keeps no buffer.
                self.buf = Vec::new();
            }
            read_some(&self.stream, &mut self.buf)
                .await
                .map_err(|e| format!("read: {e}"))?;
        }
    }
}
