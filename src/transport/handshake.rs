//! The HTTP/1.1 upgrade request (RFC 6455 §4.2): parsed with `httparse`, checked, answered with
//! `101 Switching Protocols`, the `Sec-WebSocket-Accept` digest and the negotiated subprotocol.
//! Pure code over byte slices; `connection::accept` does the reading and writing.

use std::sync::OnceLock;

use base64::Engine as _;
use sha1::{Digest, Sha1};
use thiserror::Error;

/// The GUID of RFC 6455 §1.3, appended to the client's key before hashing.
const WS_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
/// Headers read from one request; more is refused.
const MAX_HEADERS: usize = 32;

/// Why an upgrade request was refused; `response()` gives the HTTP answer to send before closing.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum HandshakeError {
    #[error("malformed HTTP request")]
    Malformed,
    #[error("request head larger than {0} bytes")]
    TooLarge(usize),
    #[error("method is not GET")]
    NotGet,
    #[error("not a WebSocket upgrade (Upgrade/Connection headers)")]
    NotUpgrade,
    #[error("Sec-WebSocket-Version is not 13")]
    BadVersion,
    #[error("Sec-WebSocket-Key missing or not 16 bytes in base64")]
    BadKey,
    #[error("no offered subprotocol is served here")]
    NoProtocol,
}

impl HandshakeError {
    /// Every kind, in a fixed order (for the cached generic responses).
    const KINDS: [HandshakeError; 7] = [
        HandshakeError::Malformed,
        HandshakeError::TooLarge(0),
        HandshakeError::NotGet,
        HandshakeError::NotUpgrade,
        HandshakeError::BadVersion,
        HandshakeError::BadKey,
        HandshakeError::NoProtocol,
    ];

    fn kind(&self) -> usize {
        match self {
            HandshakeError::Malformed => 0,
            HandshakeError::TooLarge(_) => 1,
            HandshakeError::NotGet => 2,
            HandshakeError::NotUpgrade => 3,
            HandshakeError::BadVersion => 4,
            HandshakeError::BadKey => 5,
            HandshakeError::NoProtocol => 6,
        }
    }

    /// The error's machine-readable code, as in the response body.
    pub fn code(&self) -> &'static str {
        match self {
            HandshakeError::Malformed => "malformed_request",
            HandshakeError::TooLarge(_) => "headers_too_large",
            HandshakeError::NotGet => "method_not_allowed",
            HandshakeError::NotUpgrade => "upgrade_required",
            HandshakeError::BadVersion => "unsupported_version",
            HandshakeError::BadKey => "bad_key",
            HandshakeError::NoProtocol => "subprotocol_required",
        }
    }

    /// The HTTP response refusing the upgrade, whose JSON body (`{"error":{"code","message"}}`)
    /// says what to fix; `protocols` (the subprotocols served) are named in it when no offered one
    /// is served.
    pub fn response_for(&self, protocols: &[&str]) -> Vec<u8> {
        let (status, extra) = match self {
            HandshakeError::BadVersion => ("426 Upgrade Required", "Sec-WebSocket-Version: 13\r\n"),
            HandshakeError::TooLarge(_) => ("431 Request Header Fields Too Large", ""),
            HandshakeError::NotGet => ("405 Method Not Allowed", "Allow: GET\r\n"),
            _ => ("400 Bad Request", ""),
        };
        let message = match self {
            HandshakeError::Malformed => "send a well-formed HTTP/1.1 GET request".to_string(),
            HandshakeError::TooLarge(0) => "send a smaller request head".to_string(),
            HandshakeError::TooLarge(max) => format!("send a request head of at most {max} bytes"),
            HandshakeError::NotGet => "open the WebSocket with a GET request".to_string(),
            HandshakeError::NotUpgrade => {
                "send Upgrade: websocket and Connection: Upgrade".to_string()
            }
            HandshakeError::BadVersion => "send Sec-WebSocket-Version: 13".to_string(),
            HandshakeError::BadKey => {
                "send Sec-WebSocket-Key: 16 random bytes in base64".to_string()
            }
            HandshakeError::NoProtocol if protocols.is_empty() => {
                "offer a Sec-WebSocket-Protocol this server serves".to_string()
            }
            HandshakeError::NoProtocol => {
                format!("offer Sec-WebSocket-Protocol: {}", protocols.join(", "))
            }
        };
        let body =
            serde_json::json!({"error": {"code": self.code(), "message": message}}).to_string();
        format!(
            "HTTP/1.1 {status}\r\n{extra}Content-Type: application/json\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    }

    /// The same response without naming the subprotocols or the head limit (built once).
    pub fn response(&self) -> &'static [u8] {
        static GENERIC: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
        let all = GENERIC.get_or_init(|| {
            HandshakeError::KINDS
                .iter()
                .map(|e| e.response_for(&[]))
                .collect()
        });
        &all[self.kind()]
    }
}

/// An accepted upgrade request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upgrade {
    /// The request target (`/ws/chat?…`), for routing by the caller.
    pub path: String,
    /// The subprotocol chosen: the first the client offered that the server serves.
    pub protocol: &'static str,
    /// `Sec-WebSocket-Accept`.
    pub accept: String,
}

impl Upgrade {
    /// The `101 Switching Protocols` response.
    pub fn response(&self) -> String {
        format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: {}\r\nSec-WebSocket-Protocol: {}\r\n\r\n",
            self.accept, self.protocol
        )
    }
}

/// What a caller sees of a request before anything is answered: enough to route it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub method: String,
    /// The request target, query included.
    pub path: String,
    pub origin: Option<String>,
    /// The `Authorization` header, for routes that sign in at the handshake.
    pub authorization: Option<String>,
    /// For plain GETs answered from the head (files served beside the WebSocket routes).
    pub accept_encoding: Option<String>,
    pub if_none_match: Option<String>,
}

/// A caller's decision on a request [`Head`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// Check it as a WebSocket upgrade and upgrade it.
    Upgrade,
    /// Answer with these bytes (a whole HTTP response) and close.
    Respond(Vec<u8>),
}

/// Parses just the head of a request at the front of `buf`, for routing. `Ok(None)`: incomplete.
pub fn parse_head(buf: &[u8], max_head: usize) -> Result<Option<Head>, HandshakeError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) if n > max_head => {
            Err(HandshakeError::TooLarge(max_head))
        }
        Ok(httparse::Status::Complete(_)) => {
            let header = |name: &str| {
                req.headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case(name))
                    .and_then(|h| std::str::from_utf8(h.value).ok())
                    .map(|v| v.trim().to_string())
            };
            Ok(Some(Head {
                method: req.method.unwrap_or("").to_string(),
                path: req.path.unwrap_or("/").to_string(),
                origin: header("origin"),
                authorization: header("authorization"),
                accept_encoding: header("accept-encoding"),
                if_none_match: header("if-none-match"),
            }))
        }
        Ok(httparse::Status::Partial) if buf.len() > max_head => {
            Err(HandshakeError::TooLarge(max_head))
        }
        Ok(httparse::Status::Partial) => Ok(None),
        Err(httparse::Error::TooManyHeaders) => Err(HandshakeError::TooLarge(max_head)),
        Err(_) => Err(HandshakeError::Malformed),
    }
}

/// Parses an upgrade request from the front of `buf`.
///
/// `Ok(None)`: the head is not complete yet. `Ok(Some((upgrade, used)))`: the head took
/// `buf[..used]`; bytes after it are already WebSocket frames. A client must offer one of
/// `protocols` (the wire protocol is versioned by its subprotocol name).
pub fn parse_request(
    buf: &[u8],
    protocols: &[&'static str],
    max_head: usize,
) -> Result<Option<(Upgrade, usize)>, HandshakeError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let used = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() > max_head => {
            return Err(HandshakeError::TooLarge(max_head))
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(HandshakeError::TooLarge(max_head)),
        Err(_) => return Err(HandshakeError::Malformed),
    };
    if used > max_head {
        return Err(HandshakeError::TooLarge(max_head));
    }
    if req.method != Some("GET") {
        return Err(HandshakeError::NotGet);
    }
    if req.version != Some(1) {
        return Err(HandshakeError::Malformed);
    }
    let header = |name: &'static str| {
        req.headers
            .iter()
            .filter(move |h| h.name.eq_ignore_ascii_case(name))
            .filter_map(|h| std::str::from_utf8(h.value).ok())
    };
    let has_token = |name: &'static str, token: &str| {
        header(name).any(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    };
    if !has_token("upgrade", "websocket") || !has_token("connection", "upgrade") {
        return Err(HandshakeError::NotUpgrade);
    }
    if !header("sec-websocket-version").any(|v| v.trim() == "13") {
        return Err(HandshakeError::BadVersion);
    }
    let key = header("sec-websocket-key")
        .next()
        .map(str::trim)
        .filter(|k| {
            base64::engine::general_purpose::STANDARD
                .decode(k)
                .is_ok_and(|raw| raw.len() == 16)
        })
        .ok_or(HandshakeError::BadKey)?;
    let protocol = header("sec-websocket-protocol")
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .find_map(|offered| protocols.iter().copied().find(|p| *p == offered))
        .ok_or(HandshakeError::NoProtocol)?;
    Ok(Some((
        Upgrade {
            path: req.path.unwrap_or("/").to_string(),
            protocol,
            accept: accept_key(key),
        },
        used,
    )))
}

/// `Sec-WebSocket-Accept` for a client's `Sec-WebSocket-Key`: base64(SHA-1(key + GUID)).
pub fn accept_key(key: &str) -> String {
    let mut sha = Sha1::new();
    sha.update(key.as_bytes());
    sha.update(WS_GUID.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(sha.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROTOCOLS: &[&str] = &["switchboard.v1"];

    fn request(extra: &str) -> String {
        format!(
            "GET /ws/chat HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
        )
    }

    #[test]
    fn accept_key_matches_the_rfc_example() {
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn accepts_an_upgrade_and_picks_the_offered_protocol() {
        let req = request("Sec-WebSocket-Protocol: other.v9, switchboard.v1\r\n");
        let mut wire = req.clone().into_bytes();
        wire.extend_from_slice(&[0x81, 0x80]); // a frame already behind the head
        let (up, used) = parse_request(&wire, PROTOCOLS, 8192).unwrap().unwrap();
        assert_eq!(used, req.len());
        assert_eq!(up.path, "/ws/chat");
        assert_eq!(up.protocol, "switchboard.v1");
        let resp = up.response();
        assert!(resp.starts_with("HTTP/1.1 101 Switching Protocols\r\n"));
        assert!(resp.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
        assert!(resp.contains("Sec-WebSocket-Protocol: switchboard.v1\r\n"));
        assert!(resp.ends_with("\r\n\r\n"));
    }

    #[test]
    fn waits_for_the_whole_head() {
        let req = request("Sec-WebSocket-Protocol: switchboard.v1\r\n");
        for cut in [0, 10, req.len() - 1] {
            assert_eq!(
                parse_request(&req.as_bytes()[..cut], PROTOCOLS, 8192),
                Ok(None)
            );
        }
    }

    #[test]
    fn refuses_what_is_not_a_valid_upgrade() {
        let p = "Sec-WebSocket-Protocol: switchboard.v1\r\n";
        let check = |wire: String, err: HandshakeError| {
            assert_eq!(
                parse_request(wire.as_bytes(), PROTOCOLS, 8192),
                Err(err),
                "{wire}"
            );
        };
        check(
            request("Sec-WebSocket-Protocol: other.v1\r\n"),
            HandshakeError::NoProtocol,
        );
        check(request(""), HandshakeError::NoProtocol);
        check(
            request(p).replacen("GET", "POST", 1),
            HandshakeError::NotGet,
        );
        check(
            request(p).replace("Upgrade: websocket", "Upgrade: h2c"),
            HandshakeError::NotUpgrade,
        );
        check(
            request(p).replace("keep-alive, Upgrade", "keep-alive"),
            HandshakeError::NotUpgrade,
        );
        check(
            request(p).replace("Version: 13", "Version: 8"),
            HandshakeError::BadVersion,
        );
        check(
            request(p).replace("dGhlIHNhbXBsZSBub25jZQ==", "c2hvcnQ="),
            HandshakeError::BadKey,
        );
        check("GARBAGE\x01\r\n\r\n".into(), HandshakeError::Malformed);
        assert!(HandshakeError::BadVersion
            .response()
            .starts_with(b"HTTP/1.1 426"));
    }

    /// Splits a response into its head and its JSON body, checking Content-Length.
    fn split(response: &[u8]) -> (String, serde_json::Value) {
        let text = std::str::from_utf8(response).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let length = head
            .lines()
            .find_map(|l| l.strip_prefix("Content-Length: "))
            .unwrap();
        assert_eq!(length.parse::<usize>().unwrap(), body.len(), "{text}");
        assert!(
            head.contains("\r\nContent-Type: application/json\r\n"),
            "{head}"
        );
        (head.to_string(), serde_json::from_str(body).unwrap())
    }

    #[test]
    fn refusals_say_what_to_fix_in_a_json_body() {
        let (head, body) = split(&HandshakeError::NoProtocol.response_for(PROTOCOLS));
        assert!(head.starts_with("HTTP/1.1 400 Bad Request\r\n"));
        assert_eq!(body["error"]["code"], "subprotocol_required");
        assert_eq!(
            body["error"]["message"],
            "offer Sec-WebSocket-Protocol: switchboard.v1"
        );
        let (head, body) = split(&HandshakeError::BadVersion.response_for(PROTOCOLS));
        assert!(head.starts_with("HTTP/1.1 426 Upgrade Required\r\n"));
        assert!(head.contains("\r\nSec-WebSocket-Version: 13\r\n"));
        assert_eq!(body["error"]["code"], "unsupported_version");
        assert_eq!(body["error"]["message"], "send Sec-WebSocket-Version: 13");
        let (head, body) = split(HandshakeError::NotGet.response());
        assert!(head.contains("\r\nAllow: GET\r\n"));
        assert_eq!(body["error"]["code"], "method_not_allowed");
        let (_, body) = split(&HandshakeError::TooLarge(8192).response_for(PROTOCOLS));
        assert_eq!(
            body["error"]["message"],
            "send a request head of at most 8192 bytes"
        );
        for e in HandshakeError::KINDS {
            for response in [e.response().to_vec(), e.response_for(PROTOCOLS)] {
                let (_, body) = split(&response);
                assert_eq!(body["error"]["code"], e.code());
                assert!(!body["error"]["message"].as_str().unwrap().is_empty());
            }
        }
        assert_eq!(
            split(HandshakeError::BadKey.response()).1["error"]["message"],
            "send Sec-WebSocket-Key: 16 random bytes in base64"
        );
        assert_eq!(
            split(HandshakeError::NotUpgrade.response()).1["error"]["code"],
            "upgrade_required"
        );
    }

    #[test]
    fn refuses_an_oversized_head() {
        let big = request(&format!("X-Pad: {}\r\n", "a".repeat(10_000)));
        assert_eq!(
            parse_request(&big.as_bytes()[..9000], PROTOCOLS, 8192),
            Err(HandshakeError::TooLarge(8192))
        );
        assert_eq!(
            parse_request(big.as_bytes(), PROTOCOLS, 8192),
            Err(HandshakeError::TooLarge(8192))
        );
    }
}
