//! RFC 6455 frames: decoding (header, lengths, masking, limits), message assembly (fragments, UTF-8,
//! close payloads) and encoding. Pure code over byte slices, no I/O: `connection` feeds it the bytes
//! it read and writes the bytes it builds.

use thiserror::Error;

/// Largest header: 2 bytes + 8 bytes of extended length + 4 bytes of mask.
pub const MAX_HEADER_LEN: usize = 14;

/// A frame's opcode (RFC 6455 §5.2). Reserved opcodes are refused at decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opcode {
    Continuation,
    Text,
    Binary,
    Close,
    Ping,
    Pong,
}

impl Opcode {
    fn from_bits(bits: u8) -> Option<Opcode> {
        Some(match bits {
            0x0 => Opcode::Continuation,
            0x1 => Opcode::Text,
            0x2 => Opcode::Binary,
            0x8 => Opcode::Close,
            0x9 => Opcode::Ping,
            0xA => Opcode::Pong,
            _ => return None,
        })
    }

    fn bits(self) -> u8 {
        match self {
            Opcode::Continuation => 0x0,
            Opcode::Text => 0x1,
            Opcode::Binary => 0x2,
            Opcode::Close => 0x8,
            Opcode::Ping => 0x9,
            Opcode::Pong => 0xA,
        }
    }

    /// Close, ping and pong: at most 125 bytes, never fragmented.
    pub fn is_control(self) -> bool {
        matches!(self, Opcode::Close | Opcode::Ping | Opcode::Pong)
    }
}

/// One decoded frame, payload already unmasked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub fin: bool,
    pub opcode: Opcode,
    pub payload: Vec<u8>,
}

/// Which side decodes: a server requires masked frames (RFC 6455 §5.1), a client refuses them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Server,
    Client,
}

/// Why a peer's bytes were refused; each maps to the close code sent back before closing.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ProtocolError {
    #[error("reserved bits set (no extension was negotiated)")]
    ReservedBits,
    #[error("reserved opcode {0:#x}")]
    ReservedOpcode(u8),
    #[error("unmasked frame from a client")]
    Unmasked,
    #[error("masked frame from a server")]
    Masked,
    #[error("control frame fragmented or longer than 125 bytes")]
    BadControlFrame,
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    FrameTooBig { len: u64, max: usize },
    #[error("message of more than {max} bytes")]
    MessageTooBig { max: usize },
    #[error("continuation frame without a message in progress")]
    UnexpectedContinuation,
    #[error("new data frame while a fragmented message is in progress")]
    ExpectedContinuation,
    #[error("text that is not UTF-8")]
    InvalidUtf8,
    #[error("close payload of one byte, or a close code that may not be sent ({0})")]
    BadClose(u16),
}

impl ProtocolError {
    /// The close code to send for this error (RFC 6455 §7.4.1).
    pub fn close_code(&self) -> u16 {
        match self {
            ProtocolError::InvalidUtf8 => close_code::INVALID_DATA,
            ProtocolError::FrameTooBig { .. } | ProtocolError::MessageTooBig { .. } => {
                close_code::TOO_BIG
            }
            _ => close_code::PROTOCOL_ERROR,
        }
    }
}

/// Close codes used here (RFC 6455 §7.4.1).
pub mod close_code {
    pub const NORMAL: u16 = 1000;
    pub const GOING_AWAY: u16 = 1001;
    pub const PROTOCOL_ERROR: u16 = 1002;
    pub const INVALID_DATA: u16 = 1007;
    pub const POLICY: u16 = 1008;
    pub const TOO_BIG: u16 = 1009;
    pub const INTERNAL: u16 = 1011;

    /// May this code appear in a close frame on the wire? 1005, 1006 and 1015 are reserved for
    /// local use; 1004 and 1012–2999 are unassigned; 3000–4999 belong to libraries and apps.
    pub fn is_sendable(code: u16) -> bool {
        matches!(code, 1000..=1003 | 1007..=1011 | 3000..=4999)
    }
}

/// Decodes one frame from the front of `buf`.
///
/// `Ok(None)`: `buf` holds only part of a frame (read more and call again with the bytes appended).
/// `Ok(Some((frame, used)))`: the frame took `buf[..used]`. A frame longer than `max_frame` is
/// refused as soon as its header is complete, before its payload is buffered.
pub fn decode(
    buf: &[u8],
    role: Role,
    max_frame: usize,
) -> Result<Option<(Frame, usize)>, ProtocolError> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let (b0, b1) = (buf[0], buf[1]);
    if b0 & 0x70 != 0 {
        return Err(ProtocolError::ReservedBits);
    }
    let fin = b0 & 0x80 != 0;
    let opcode = Opcode::from_bits(b0 & 0x0F).ok_or(ProtocolError::ReservedOpcode(b0 & 0x0F))?;
    let masked = b1 & 0x80 != 0;
    match (role, masked) {
        (Role::Server, false) => return Err(ProtocolError::Unmasked),
        (Role::Client, true) => return Err(ProtocolError::Masked),
        _ => {}
    }
    let (len, mut at) = match b1 & 0x7F {
        126 => {
            if buf.len() < 4 {
                return Ok(None);
            }
            (u64::from(u16::from_be_bytes([buf[2], buf[3]])), 4)
        }
        127 => {
            if buf.len() < 10 {
                return Ok(None);
            }
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[2..10]);
            (u64::from_be_bytes(b), 10)
        }
        n => (u64::from(n), 2),
    };
    if opcode.is_control() && (!fin || len > 125) {
        return Err(ProtocolError::BadControlFrame);
    }
    if len > max_frame as u64 {
        return Err(ProtocolError::FrameTooBig {
            len,
            max: max_frame,
        });
    }
    let mask = if masked {
        if buf.len() < at + 4 {
            return Ok(None);
        }
        let m = [buf[at], buf[at + 1], buf[at + 2], buf[at + 3]];
        at += 4;
        Some(m)
    } else {
        None
    };
    let len = len as usize; // ≤ max_frame, so it fits
    if buf.len() < at + len {
        return Ok(None);
    }
    let mut payload = buf[at..at + len].to_vec();
    if let Some(m) = mask {
        apply_mask(&mut payload, m);
    }
    Ok(Some((
        Frame {
            fin,
            opcode,
            payload,
        },
        at + len,
    )))
}

/// XORs `data` with the 4-byte `mask` (its own inverse).
pub fn apply_mask(data: &mut [u8], mask: [u8; 4]) {
    for (i, b) in data.iter_mut().enumerate() {
        *b ^= mask[i & 3];
    }
}

/// Writes a frame header into `out` and returns its length. `mask`: `Some` for client frames.
pub fn encode_header(
    out: &mut [u8; MAX_HEADER_LEN],
    fin: bool,
    opcode: Opcode,
    len: usize,
    mask: Option<[u8; 4]>,
) -> usize {
    out[0] = if fin { 0x80 } else { 0 } | opcode.bits();
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    let mut at = if len < 126 {
        out[1] = mask_bit | len as u8;
        2
    } else if len <= usize::from(u16::MAX) {
        out[1] = mask_bit | 126;
        out[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        4
    } else {
        out[1] = mask_bit | 127;
        out[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        10
    };
    if let Some(m) = mask {
        out[at..at + 4].copy_from_slice(&m);
        at += 4;
    }
    at
}

/// A whole frame in one buffer (header + payload, masked if `mask` is given).
pub fn encode(fin: bool, opcode: Opcode, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut header = [0u8; MAX_HEADER_LEN];
    let n = encode_header(&mut header, fin, opcode, payload.len(), mask);
    let mut out = Vec::with_capacity(n + payload.len());
    out.extend_from_slice(&header[..n]);
    let start = out.len();
    out.extend_from_slice(payload);
    if let Some(m) = mask {
        apply_mask(&mut out[start..], m);
    }
    out
}

/// The payload of a close frame: the code, then a UTF-8 reason (at most 123 bytes, cut at a char
/// boundary).
pub fn close_payload(code: u16, reason: &str) -> Vec<u8> {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut p = Vec::with_capacity(2 + end);
    p.extend_from_slice(&code.to_be_bytes());
    p.extend_from_slice(&reason.as_bytes()[..end]);
    p
}

/// A complete message, as the connection hands it to its session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Text(String),
    Binary(Vec<u8>),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    /// The peer's close: its code and reason, if it gave one.
    Close(Option<(u16, String)>),
}

/// Joins fragmented data frames into messages and checks text and close payloads.
/// Holds nothing between messages: its buffer exists only while a fragmented message is open.
#[derive(Debug, Default)]
pub struct Assembler {
    /// The open fragmented message: its opcode (text or binary) and the bytes so far.
    open: Option<(Opcode, Vec<u8>)>,
}

impl Assembler {
    /// Takes the next frame; returns a message once one is complete (control frames at once, even
    /// between the fragments of a data message).
    pub fn push(
        &mut self,
        frame: Frame,
        max_message: usize,
    ) -> Result<Option<Message>, ProtocolError> {
        match frame.opcode {
            Opcode::Ping => Ok(Some(Message::Ping(frame.payload))),
            Opcode::Pong => Ok(Some(Message::Pong(frame.payload))),
            Opcode::Close => parse_close(&frame.payload).map(|c| Some(Message::Close(c))),
            Opcode::Text | Opcode::Binary => {
                if self.open.is_some() {
                    return Err(ProtocolError::ExpectedContinuation);
                }
                if frame.payload.len() > max_message {
                    return Err(ProtocolError::MessageTooBig { max: max_message });
                }
                if frame.fin {
                    data_message(frame.opcode, frame.payload).map(Some)
                } else {
                    self.open = Some((frame.opcode, frame.payload));
                    Ok(None)
                }
            }
            Opcode::Continuation => {
                let Some((opcode, mut bytes)) = self.open.take() else {
                    return Err(ProtocolError::UnexpectedContinuation);
                };
                if bytes.len() + frame.payload.len() > max_message {
                    return Err(ProtocolError::MessageTooBig { max: max_message });
                }
                bytes.extend_from_slice(&frame.payload);
                if frame.fin {
                    data_message(opcode, bytes).map(Some)
                } else {
                    self.open = Some((opcode, bytes));
                    Ok(None)
                }
            }
        }
    }
}

fn data_message(opcode: Opcode, bytes: Vec<u8>) -> Result<Message, ProtocolError> {
    if opcode == Opcode::Text {
        String::from_utf8(bytes)
            .map(Message::Text)
            .map_err(|_| ProtocolError::InvalidUtf8)
    } else {
        Ok(Message::Binary(bytes))
    }
}

fn parse_close(payload: &[u8]) -> Result<Option<(u16, String)>, ProtocolError> {
    match payload {
        [] => Ok(None),
        [_] => Err(ProtocolError::BadClose(0)),
        [hi, lo, reason @ ..] => {
            let code = u16::from_be_bytes([*hi, *lo]);
            if !close_code::is_sendable(code) {
                return Err(ProtocolError::BadClose(code));
            }
            let reason = std::str::from_utf8(reason).map_err(|_| ProtocolError::InvalidUtf8)?;
            Ok(Some((code, reason.to_string())))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];
    const MAX: usize = 64 * 1024;

    fn client_frame(fin: bool, opcode: Opcode, payload: &[u8]) -> Vec<u8> {
        encode(fin, opcode, payload, Some(MASK))
    }

    #[test]
    fn decodes_the_rfc_masked_hello_example() {
        // RFC 6455 §5.7: a single-frame masked text message "Hello".
        let wire = [
            0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
        ];
        let (frame, used) = decode(&wire, Role::Server, MAX).unwrap().unwrap();
        assert_eq!(used, wire.len());
        assert!(frame.fin);
        assert_eq!(frame.opcode, Opcode::Text);
        assert_eq!(frame.payload, b"Hello");
    }

    #[test]
    fn encodes_the_rfc_unmasked_hello_example() {
        assert_eq!(
            encode(true, Opcode::Text, b"Hello", None),
            [0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f]
        );
        assert_eq!(
            client_frame(true, Opcode::Text, b"Hello")[..6],
            [0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d]
        );
    }

    #[test]
    fn masking_is_its_own_inverse() {
        let mut data = b"switchboard.v1 payload".to_vec();
        apply_mask(&mut data, MASK);
        assert_ne!(&data[..], b"switchboard.v1 payload");
        apply_mask(&mut data, MASK);
        assert_eq!(&data[..], b"switchboard.v1 payload");
    }

    #[test]
    fn round_trips_every_length_form() {
        for len in [0usize, 1, 125, 126, 127, 65_535, 65_536, 70_000] {
            let payload: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let wire = client_frame(true, Opcode::Binary, &payload);
            let expected_header = match len {
                0..=125 => 6,
                126..=65_535 => 8,
                _ => 14,
            };
            assert_eq!(wire.len(), expected_header + len, "len {len}");
            let (frame, used) = decode(&wire, Role::Server, 100_000).unwrap().unwrap();
            assert_eq!(used, wire.len());
            assert_eq!(frame.payload, payload, "len {len}");
            // The server's own frames decode on the client side.
            let wire = encode(true, Opcode::Binary, &payload, None);
            let (frame, _) = decode(&wire, Role::Client, 100_000).unwrap().unwrap();
            assert_eq!(frame.payload, payload);
        }
    }

    #[test]
    fn partial_frames_ask_for_more_bytes_at_every_cut() {
        let wire = client_frame(true, Opcode::Text, &[b'x'; 300]);
        for cut in 0..wire.len() {
            assert_eq!(
                decode(&wire[..cut], Role::Server, MAX),
                Ok(None),
                "cut {cut}"
            );
        }
        // Two frames back to back: the first is decoded, the rest is left.
        let mut two = wire.clone();
        two.extend_from_slice(&client_frame(true, Opcode::Ping, b"p"));
        let (_, used) = decode(&two, Role::Server, MAX).unwrap().unwrap();
        assert_eq!(used, wire.len());
        let (ping, _) = decode(&two[used..], Role::Server, MAX).unwrap().unwrap();
        assert_eq!(ping.opcode, Opcode::Ping);
    }

    #[test]
    fn refuses_malformed_frames() {
        let unmasked = encode(true, Opcode::Text, b"hi", None);
        assert_eq!(
            decode(&unmasked, Role::Server, MAX),
            Err(ProtocolError::Unmasked)
        );
        let masked = client_frame(true, Opcode::Text, b"hi");
        assert_eq!(
            decode(&masked, Role::Client, MAX),
            Err(ProtocolError::Masked)
        );

        let mut rsv = masked.clone();
        rsv[0] |= 0x40;
        assert_eq!(
            decode(&rsv, Role::Server, MAX),
            Err(ProtocolError::ReservedBits)
        );

        let mut reserved = masked.clone();
        reserved[0] = 0x83;
        assert_eq!(
            decode(&reserved, Role::Server, MAX),
            Err(ProtocolError::ReservedOpcode(3))
        );
        reserved[0] = 0x8B;
        assert_eq!(
            decode(&reserved, Role::Server, MAX),
            Err(ProtocolError::ReservedOpcode(0xB))
        );

        let fragmented_ping = client_frame(false, Opcode::Ping, b"p");
        assert_eq!(
            decode(&fragmented_ping, Role::Server, MAX),
            Err(ProtocolError::BadControlFrame)
        );
        let long_ping = client_frame(true, Opcode::Ping, &[0; 126]);
        assert_eq!(
            decode(&long_ping, Role::Server, MAX),
            Err(ProtocolError::BadControlFrame)
        );
    }

    #[test]
    fn refuses_an_oversized_frame_from_its_header_alone() {
        // Only the header of a 1 MiB frame has arrived: it is refused without waiting for the payload.
        let mut header = [0u8; MAX_HEADER_LEN];
        let n = encode_header(&mut header, true, Opcode::Binary, 1 << 20, Some(MASK));
        let err = decode(&header[..n], Role::Server, MAX).unwrap_err();
        assert_eq!(
            err,
            ProtocolError::FrameTooBig {
                len: 1 << 20,
                max: MAX
            }
        );
        assert_eq!(err.close_code(), close_code::TOO_BIG);
        // A 64-bit length with the top bit set is refused the same way.
        let mut huge = vec![0x82, 0xFF];
        huge.extend_from_slice(&u64::MAX.to_be_bytes());
        huge.extend_from_slice(&MASK);
        assert!(matches!(
            decode(&huge, Role::Server, MAX),
            Err(ProtocolError::FrameTooBig { .. })
        ));
    }

    fn frames(wire: &[u8]) -> Vec<Frame> {
        let mut out = Vec::new();
        let mut at = 0;
        while let Some((f, used)) = decode(&wire[at..], Role::Server, MAX).unwrap() {
            out.push(f);
            at += used;
        }
        assert_eq!(at, wire.len());
        out
    }

    #[test]
    fn joins_fragmented_messages_with_control_frames_between() {
        let mut wire = client_frame(false, Opcode::Text, "héll".as_bytes());
        wire.extend(client_frame(true, Opcode::Ping, b"p"));
        wire.extend(client_frame(false, Opcode::Continuation, b"o, "));
        wire.extend(client_frame(true, Opcode::Continuation, b"world"));
        let mut asm = Assembler::default();
        let got: Vec<Message> = frames(&wire)
            .into_iter()
            .filter_map(|f| asm.push(f, MAX).unwrap())
            .collect();
        assert_eq!(
            got,
            [
                Message::Ping(b"p".to_vec()),
                Message::Text("héllo, world".into())
            ]
        );
        assert!(
            asm.open.is_none(),
            "nothing held once the message is complete"
        );
    }

    #[test]
    fn a_utf8_character_may_be_split_across_fragments() {
        let bytes = "é".as_bytes();
        let mut asm = Assembler::default();
        let first = Frame {
            fin: false,
            opcode: Opcode::Text,
            payload: bytes[..1].to_vec(),
        };
        let last = Frame {
            fin: true,
            opcode: Opcode::Continuation,
            payload: bytes[1..].to_vec(),
        };
        assert_eq!(asm.push(first, MAX), Ok(None));
        assert_eq!(asm.push(last, MAX), Ok(Some(Message::Text("é".into()))));
    }

    #[test]
    fn refuses_bad_fragment_sequences() {
        let cont = Frame {
            fin: true,
            opcode: Opcode::Continuation,
            payload: vec![],
        };
        assert_eq!(
            Assembler::default().push(cont, MAX),
            Err(ProtocolError::UnexpectedContinuation)
        );
        let mut asm = Assembler::default();
        let open = Frame {
            fin: false,
            opcode: Opcode::Binary,
            payload: vec![1],
        };
        asm.push(open.clone(), MAX).unwrap();
        assert_eq!(
            asm.push(open, MAX),
            Err(ProtocolError::ExpectedContinuation)
        );
    }

    #[test]
    fn refuses_messages_over_the_limit_even_in_small_fragments() {
        let mut asm = Assembler::default();
        let part = |fin, opcode| Frame {
            fin,
            opcode,
            payload: vec![b'a'; 600],
        };
        assert_eq!(asm.push(part(false, Opcode::Text), 1000), Ok(None));
        let err = asm
            .push(part(true, Opcode::Continuation), 1000)
            .unwrap_err();
        assert_eq!(err, ProtocolError::MessageTooBig { max: 1000 });
        assert_eq!(err.close_code(), close_code::TOO_BIG);
    }

    #[test]
    fn refuses_text_that_is_not_utf8() {
        let bad = Frame {
            fin: true,
            opcode: Opcode::Text,
            payload: vec![0xff, 0xfe],
        };
        let err = Assembler::default().push(bad, MAX).unwrap_err();
        assert_eq!(err, ProtocolError::InvalidUtf8);
        assert_eq!(err.close_code(), close_code::INVALID_DATA);
    }

    #[test]
    fn close_frames_carry_valid_codes_only() {
        let close = |payload: Vec<u8>| {
            Assembler::default().push(
                Frame {
                    fin: true,
                    opcode: Opcode::Close,
                    payload,
                },
                MAX,
            )
        };
        assert_eq!(close(vec![]), Ok(Some(Message::Close(None))));
        assert_eq!(
            close(close_payload(close_code::NORMAL, "bye")),
            Ok(Some(Message::Close(Some((1000, "bye".into())))))
        );
        assert_eq!(
            close(close_payload(4000, "")),
            Ok(Some(Message::Close(Some((4000, String::new())))))
        );
        assert_eq!(close(vec![0x03]), Err(ProtocolError::BadClose(0)));
        for code in [0u16, 999, 1004, 1005, 1006, 1015, 2999, 5000] {
            assert_eq!(
                close(close_payload(code, "")),
                Err(ProtocolError::BadClose(code)),
                "{code}"
            );
        }
        let mut bad_reason = close_payload(1000, "");
        bad_reason.push(0xff);
        assert_eq!(close(bad_reason), Err(ProtocolError::InvalidUtf8));
    }

    #[test]
    fn close_reasons_are_cut_at_a_char_boundary() {
        let reason = "é".repeat(100); // 200 bytes
        let p = close_payload(1000, &reason);
        assert!(p.len() <= 125);
        assert!(std::str::from_utf8(&p[2..]).is_ok());
    }
}
