//! Property tests over every parser that reads bytes from the network: the WebSocket frame codec
//! and message assembly, the upgrade request parser, and the chat and agent frame parsers. Each
//! must never panic, whatever it is given; the codec must also round-trip and must not depend on
//! how its input is split into reads.
//!
//! Inputs are arbitrary bytes and strings, and structured near-valid ones (encoded frames, upgrade
//! requests with mutated headers, JSON objects built from the protocols' own keys and values).
//! Cases per property: `PROPTEST_CASES` (default 256, a few seconds in all); `scripts/fuzz-long.sh`
//! runs many more.
//!
//! Not covered: the REST listener's head parser (`http::guard`) is private to its module.

use proptest::prelude::*;
use proptest::test_runner::Config;

use switchboard::chat::agent::protocol as agent_protocol;
use switchboard::chat::protocol as chat_protocol;
use switchboard::transport::frame::{
    close_payload, decode, decode_header, encode, Message, Opcode, ProtocolError, Reader, Role,
};
use switchboard::transport::handshake::{self, HandshakeError};

fn config() -> Config {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(256);
    Config {
        cases,
        // Shrinking a failure is worth a moment; a failure is printed with its input either way.
        max_shrink_iters: 2048,
        ..Config::default()
    }
}

const MAX: usize = 1 << 16;

fn opcode() -> impl Strategy<Value = Opcode> {
    prop_oneof![
        Just(Opcode::Continuation),
        Just(Opcode::Text),
        Just(Opcode::Binary),
        Just(Opcode::Close),
        Just(Opcode::Ping),
        Just(Opcode::Pong),
    ]
}

/// Feeds `pieces` to a reader the way the connection does, collecting messages until the end of
/// input or the first error.
fn read_all(pieces: &[&[u8]], max_frame: usize, max_message: usize) -> (Vec<Message>, bool) {
    let mut reader = Reader::new(Role::Server, max_frame, max_message);
    let mut got = Vec::new();
    for piece in pieces {
        let mut next = reader.feed(piece);
        loop {
            match next {
                Ok(Some(msg)) => got.push(msg),
                Ok(None) => break,
                Err(_) => return (got, true),
            }
            next = reader.next();
        }
    }
    (got, false)
}

/// Cuts `wire` at the given points (taken modulo its length, sorted).
fn split_at<'a>(wire: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
    let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (wire.len() + 1)).collect();
    cuts.sort_unstable();
    let mut pieces = Vec::new();
    let mut at = 0;
    for c in cuts {
        pieces.push(&wire[at..c]);
        at = c;
    }
    pieces.push(&wire[at..]);
    pieces
}

/// One message as a client sends it: fragments (with pings between) and the expected messages.
#[derive(Debug, Clone)]
enum Sent {
    Text(String, Vec<usize>),
    Binary(Vec<u8>, Vec<usize>),
    Ping(Vec<u8>),
    Close(u16, String),
}

fn sent() -> impl Strategy<Value = Sent> {
    prop_oneof![
        4 => (".{0,40}", prop::collection::vec(0usize..64, 0..4))
            .prop_map(|(t, cuts)| Sent::Text(t, cuts)),
        2 => (prop::collection::vec(any::<u8>(), 0..300), prop::collection::vec(0usize..400, 0..4))
            .prop_map(|(b, cuts)| Sent::Binary(b, cuts)),
        2 => prop::collection::vec(any::<u8>(), 0..=125).prop_map(Sent::Ping),
        1 => (prop_oneof![1000u16..=1003, 1007u16..=1014, 3000u16..=4999], ".{0,20}")
            .prop_map(|(c, r)| Sent::Close(c, r)),
    ]
}

/// Encodes `messages` as masked client frames (fragmenting data at the given byte offsets) and
/// returns the wire bytes and the messages a reader must give back.
fn client_wire(messages: &[Sent], mask: [u8; 4]) -> (Vec<u8>, Vec<Message>) {
    let mut wire = Vec::new();
    let mut expected = Vec::new();
    for m in messages {
        let (opcode, bytes, cuts) = match m {
            Sent::Text(t, cuts) => (Opcode::Text, t.as_bytes().to_vec(), cuts),
            Sent::Binary(b, cuts) => (Opcode::Binary, b.clone(), cuts),
            Sent::Ping(p) => {
                wire.extend(encode(true, Opcode::Ping, p, Some(mask)));
                expected.push(Message::Ping(p.clone()));
                continue;
            }
            Sent::Close(code, reason) => {
                let payload = close_payload(*code, reason);
                wire.extend(encode(true, Opcode::Close, &payload, Some(mask)));
                let cut = String::from_utf8(payload[2..].to_vec()).unwrap();
                expected.push(Message::Close(Some((*code, cut))));
                continue;
            }
        };
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
        cuts.sort_unstable();
        cuts.dedup();
        let mut at = 0;
        let mut first = true;
        for c in cuts.into_iter().chain(std::iter::once(bytes.len())) {
            let fin = c == bytes.len();
            if c < at || (!fin && c == at && !first) {
                continue;
            }
            let op = if first { opcode } else { Opcode::Continuation };
            wire.extend(encode(fin, op, &bytes[at..c], Some(mask)));
            if !fin {
                // A ping between fragments is delivered at once, before the message.
                wire.extend(encode(true, Opcode::Ping, b"mid", Some(mask)));
                expected.push(Message::Ping(b"mid".to_vec()));
            }
            first = false;
            at = c;
            if fin {
                break;
            }
        }
        expected.push(match opcode {
            Opcode::Text => Message::Text(String::from_utf8(bytes).unwrap()),
            _ => Message::Binary(bytes),
        });
    }
    (wire, expected)
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn frame_decode_never_panics_and_round_trips(
        bytes in prop::collection::vec(any::<u8>(), 0..512),
        max_frame in prop_oneof![Just(0usize), Just(125), Just(126), Just(MAX)],
        server in any::<bool>(),
    ) {
        let role = if server { Role::Server } else { Role::Client };
        let header = decode_header(&bytes, role, max_frame);
        match decode(&bytes, role, max_frame) {
            Ok(Some((f, used))) => {
                prop_assert!(used <= bytes.len());
                prop_assert!(f.payload.len() <= max_frame);
                let h = header.unwrap().unwrap();
                prop_assert_eq!(h.len + h.payload_len, used);
                let again = encode(f.fin, f.opcode, &f.payload, h.mask);
                // Same bytes whenever the length had its shortest form (RFC 6455 §5.2).
                if again.len() == used {
                    prop_assert_eq!(&again[..], &bytes[..used]);
                }
                let (f2, used2) = decode(&again, role, max_frame).unwrap().unwrap();
                prop_assert_eq!(used2, again.len());
                prop_assert_eq!(f2, f);
            }
            Ok(None) => prop_assert!(header.is_ok()),
            Err(e) => {
                prop_assert!(e.close_code() >= 1000);
                prop_assert_eq!(header.err(), Some(e));
            }
        }
    }

    #[test]
    fn encoded_frames_decode_to_themselves(
        fin in any::<bool>(),
        op in opcode(),
        payload in prop::collection::vec(any::<u8>(), 0..70_000),
        mask in any::<[u8; 4]>(),
    ) {
        let control = op.is_control();
        let payload = if control { &payload[..payload.len().min(125)] } else { &payload[..] };
        let fin = fin || control;
        let wire = encode(fin, op, payload, Some(mask));
        let (f, used) = decode(&wire, Role::Server, 1 << 20).unwrap().unwrap();
        prop_assert_eq!(used, wire.len());
        prop_assert_eq!((f.fin, f.opcode), (fin, op));
        prop_assert_eq!(&f.payload[..], payload);
        prop_assert_eq!(&encode(f.fin, f.opcode, &f.payload, Some(mask)), &wire);
        // Every strict prefix asks for more.
        for cut in [0, 1, 2, used / 2, used - 1] {
            prop_assert_eq!(decode(&wire[..cut.min(used - 1)], Role::Server, 1 << 20), Ok(None));
        }
    }

    #[test]
    fn reader_never_panics_and_ignores_how_bytes_are_split(
        bytes in prop::collection::vec(any::<u8>(), 0..1024),
        cuts in prop::collection::vec(any::<usize>(), 0..8),
        max_frame in prop_oneof![Just(16usize), Just(MAX)],
        max_message in prop_oneof![Just(32usize), Just(MAX)],
    ) {
        let whole = read_all(&[&bytes], max_frame, max_message);
        let split = read_all(&split_at(&bytes, &cuts), max_frame, max_message);
        prop_assert_eq!(split, whole);
    }

    #[test]
    fn reader_rebuilds_fragmented_messages_from_any_split(
        messages in prop::collection::vec(sent(), 1..8),
        cuts in prop::collection::vec(any::<usize>(), 0..12),
        mask in any::<[u8; 4]>(),
    ) {
        let (wire, expected) = client_wire(&messages, mask);
        let (got, failed) = read_all(&split_at(&wire, &cuts), MAX, MAX);
        prop_assert!(!failed);
        prop_assert_eq!(got, expected);
    }

    #[test]
    fn invalid_utf8_in_any_fragment_fails_the_message(
        text in ".{1,30}",
        bad in prop_oneof![
            Just(vec![0xffu8]),
            Just(vec![0xc0, 0xaf]),
            Just(vec![0xed, 0xa0, 0x80]),
            Just(vec![0xf4, 0x90, 0x80, 0x80]),
            Just(vec![0x80]),
        ],
        at in any::<usize>(),
        cut in any::<usize>(),
        split in prop::collection::vec(any::<usize>(), 0..6),
        mask in any::<[u8; 4]>(),
    ) {
        // Insert the bad sequence at a character boundary, then fragment anywhere.
        let bounds: Vec<usize> = text.char_indices().map(|(i, _)| i).chain([text.len()]).collect();
        let at = bounds[at % bounds.len()];
        let mut bytes = text.as_bytes()[..at].to_vec();
        bytes.extend_from_slice(&bad);
        bytes.extend_from_slice(&text.as_bytes()[at..]);
        let cut = cut % (bytes.len() + 1);
        let mut wire = encode(false, Opcode::Text, &bytes[..cut], Some(mask));
        wire.extend(encode(true, Opcode::Continuation, &bytes[cut..], Some(mask)));
        let (got, failed) = read_all(&split_at(&wire, &split), MAX, MAX);
        prop_assert!(failed);
        prop_assert!(got.is_empty());
        // A single frame too.
        let wire = encode(true, Opcode::Text, &bytes, Some(mask));
        let mut reader = Reader::new(Role::Server, MAX, MAX);
        prop_assert_eq!(reader.feed(&wire), Err(ProtocolError::InvalidUtf8));
    }

    #[test]
    fn handshake_parsers_never_panic_on_bytes(
        bytes in prop::collection::vec(any::<u8>(), 0..600),
        max_head in prop_oneof![Just(64usize), Just(8192)],
    ) {
        let _ = handshake::parse_head(&bytes, max_head);
        match handshake::parse_request(&bytes, &["switchboard.v1"], max_head) {
            Ok(Some((up, used))) => {
                prop_assert!(used <= bytes.len().min(max_head));
                prop_assert_eq!(up.protocol, "switchboard.v1");
            }
            Ok(None) => {}
            Err(e) => check_response(&e)?,
        }
    }

    #[test]
    fn handshake_parsers_never_panic_on_near_valid_requests(
        method in prop_oneof![
            Just("GET".to_string()),
            Just("POST".to_string()),
            Just("get".to_string()),
            "[A-Z]{1,7}",
        ],
        path in "/[ -~]{0,30}",
        version in prop_oneof![
            Just("HTTP/1.1".to_string()),
            Just("HTTP/1.0".to_string()),
            Just("HTTP/2".to_string()),
            "[ -~]{0,10}",
        ],
        headers in prop::collection::vec((header_name(), header_value()), 0..12),
        tail in prop::collection::vec(any::<u8>(), 0..20),
        cut in any::<usize>(),
    ) {
        let mut req = format!("{method} {path} {version}\r\n").into_bytes();
        for (name, value) in &headers {
            req.extend_from_slice(name.as_bytes());
            req.extend_from_slice(b": ");
            req.extend_from_slice(value);
            req.extend_from_slice(b"\r\n");
        }
        req.extend_from_slice(b"\r\n");
        req.extend_from_slice(&tail);
        for bytes in [&req[..], &req[..cut % (req.len() + 1)]] {
            let head = handshake::parse_head(bytes, 8192);
            match handshake::parse_request(bytes, &["switchboard.v1", "other.v2"], 8192) {
                Ok(Some((up, used))) => {
                    prop_assert!(used <= bytes.len());
                    prop_assert!(up.response().starts_with("HTTP/1.1 101 "));
                    prop_assert!(matches!(head, Ok(Some(_))));
                }
                Ok(None) => {}
                Err(e) => check_response(&e)?,
            }
        }
    }

    #[test]
    fn chat_frame_parser_never_panics_on_strings(text in "\\PC{0,200}") {
        let _ = chat_protocol::parse(&text);
        let _ = agent_protocol::parse(&text);
    }

    #[test]
    fn chat_frame_parsers_never_panic_on_json_frames(text in json_frame()) {
        let _ = chat_protocol::parse(&text);
        let _ = agent_protocol::parse(&text);
        // Cut anywhere (at a char boundary): half a frame is malformed, not a panic.
        for end in [text.len() / 2, text.len().saturating_sub(1)] {
            if text.is_char_boundary(end) {
                let _ = chat_protocol::parse(&text[..end]);
                let _ = agent_protocol::parse(&text[..end]);
            }
        }
    }
}

/// A refusal's response is whole: its Content-Length is its body's, and the body is JSON naming
/// the error's code.
fn check_response(e: &HandshakeError) -> Result<(), TestCaseError> {
    for response in [e.response().to_vec(), e.response_for(&["switchboard.v1"])] {
        let text = String::from_utf8(response).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("Content-Length: "))
            .unwrap()
            .parse()
            .unwrap();
        prop_assert_eq!(length, body.len());
        let json: serde_json::Value = serde_json::from_str(body).unwrap();
        prop_assert_eq!(json["error"]["code"].as_str(), Some(e.code()));
    }
    Ok(())
}

fn header_name() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("Host".to_string()),
        Just("Upgrade".to_string()),
        Just("Connection".to_string()),
        Just("Sec-WebSocket-Key".to_string()),
        Just("Sec-WebSocket-Version".to_string()),
        Just("Sec-WebSocket-Protocol".to_string()),
        Just("Origin".to_string()),
        Just("Authorization".to_string()),
        "[A-Za-z-]{1,20}",
        "[ -~]{0,8}",
    ]
}

fn header_value() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        Just(b"websocket".to_vec()),
        Just(b"Upgrade".to_vec()),
        Just(b"keep-alive, Upgrade".to_vec()),
        Just(b"dGhlIHNhbXBsZSBub25jZQ==".to_vec()),
        Just(b"13".to_vec()),
        Just(b"switchboard.v1".to_vec()),
        Just(b"chat.v0, switchboard.v1".to_vec()),
        Just(b" , ,, ".to_vec()),
        "[ -~]{0,40}".prop_map(String::into_bytes),
        prop::collection::vec(any::<u8>(), 0..24),
    ]
}

/// JSON objects from the protocols' own keys and values, and some that are not quite objects.
fn json_frame() -> impl Strategy<Value = String> {
    let types = prop_oneof![
        Just("session.start"),
        Just("session.resume"),
        Just("message.send"),
        Just("typing"),
        Just("ticket.create"),
        Just("action.confirm"),
        Just("session.close"),
        Just("ping"),
        Just("agent.start"),
        Just("agent.resume"),
        Just("presence.set"),
        Just("session.join"),
        Just("session.leave"),
        Just("auth.refresh"),
        Just("nope"),
    ];
    let keys = prop_oneof![
        Just("token"),
        Just("session_id"),
        Just("resume_token"),
        Just("last_seq"),
        Just("client_id"),
        Just("text"),
        Just("active"),
        Just("subject"),
        Just("description"),
        Just("action_id"),
        Just("accept"),
        Just("presence"),
        Just("capacity"),
        Just("auto_assign"),
        Just("priority"),
        Just("type"),
        Just("extra"),
    ];
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<u64>().prop_map(serde_json::Value::from),
        any::<f64>().prop_map(|f| serde_json::Number::from_f64(f)
            .map_or(serde_json::Value::Null, serde_json::Value::Number)),
        "\\PC{0,30}".prop_map(serde_json::Value::from),
        Just(serde_json::Value::from(
            "0190a5f0-3c1e-7b1a-9c2d-1234567890ab"
        )),
        Just(serde_json::Value::from("online")),
        Just(serde_json::Value::from("urgent")),
        Just(serde_json::Value::from(u64::MAX)),
        Just(serde_json::Value::from(-1)),
    ];
    let value = leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::Array),
            prop::collection::btree_map("[a-z_]{1,8}", inner, 0..4)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    });
    let object = (
        prop::option::of(types),
        prop::collection::vec((keys, value.clone()), 0..6),
    )
        .prop_map(|(kind, fields)| {
            let mut o = serde_json::Map::new();
            if let Some(kind) = kind {
                o.insert("type".into(), kind.into());
            }
            for (k, v) in fields {
                o.insert(k.to_string(), v);
            }
            serde_json::Value::Object(o).to_string()
        });
    prop_oneof![
        6 => object,
        1 => value.prop_map(|v| v.to_string()),
        1 => Just("{\"type\":\"message.send\",\"client_id\":\"a\",\"text\":\"\\ud800\"}".to_string()),
        1 => Just("{\"type\":\"session.resume\",\"session_id\":\"x\",\"resume_token\":\"y\",\"last_seq\":1e400}".to_string()),
        1 => "[\\[\\]{}\":,a-z0-9 ]{0,60}",
    ]
}

/// The close codes accepted from a client are exactly RFC 6455's and IANA's sendable ones.
#[test]
fn close_codes_accepted_match_the_registry() {
    for code in 0..=u16::MAX {
        let wire = encode(
            true,
            Opcode::Close,
            &close_payload(code, ""),
            Some([1, 2, 3, 4]),
        );
        let got = Reader::new(Role::Server, MAX, MAX).feed(&wire);
        if matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999) {
            assert_eq!(
                got,
                Ok(Some(Message::Close(Some((code, String::new()))))),
                "{code}"
            );
        } else {
            assert_eq!(got, Err(ProtocolError::BadClose(code)), "{code}");
        }
    }
}
