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
    pub const SERVICE_RESTART: u16 = 1012;
    pub const TRY_AGAIN_LATER: u16 = 1013;
    pub const BAD_GATEWAY: u16 = 1014;

    /// May this code appear in a close frame on the wire? RFC 6455 §7.4 and the IANA "WebSocket
    /// Close Code Number Registry": 1000–1003 and 1007–1014 are assigned; 1004 is reserved; 1005,
    /// 1006 and 1015 are for local use only (never sent); the rest of 0–2999 is unassigned;
    /// 3000–4999 belong to libraries, frameworks and applications.
    pub fn is_sendable(code: u16) -> bool {
        matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
    }
}

/// A frame's header, parsed before its payload has arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub fin: bool,
    pub opcode: Opcode,
    pub mask: Option<[u8; 4]>,
    /// Bytes of the header itself (2 to 14).
    pub len: usize,
    /// Payload bytes that follow it (at most the `max_frame` it was parsed with).
    pub payload_len: usize,
}

/// Parses the header at the front of `buf`: `Ok(None)` while it is incomplete. Every check that
/// needs only the header is made here, so a bad frame is refused before its payload is read.
pub fn decode_header(
    buf: &[u8],
    role: Role,
    max_frame: usize,
) -> Result<Option<Header>, ProtocolError> {
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
    Ok(Some(Header {
        fin,
        opcode,
        mask,
        len: at,
        payload_len: len as usize, // ≤ max_frame, so it fits
    }))
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
    let Some(h) = decode_header(buf, role, max_frame)? else {
        return Ok(None);
    };
    let end = h.len + h.payload_len;
    if buf.len() < end {
        return Ok(None);
    }
    let mut payload = buf[h.len..end].to_vec();
    if let Some(m) = h.mask {
        apply_mask(&mut payload, m);
    }
    Ok(Some((
        Frame {
            fin: h.fin,
            opcode: h.opcode,
            payload,
        },
        end,
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

/// Incremental UTF-8 validation: text is checked as each piece arrives, so an invalid sequence is
/// refused at once rather than when its message completes (Autobahn 6.4.x, "fail fast"). Holds the
/// bytes of a character cut at the end of the last piece (at most 3).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Utf8 {
    pending: [u8; 4],
    pending_len: u8,
}

impl Utf8 {
    /// Checks the next piece of text. `Err` as soon as a sequence can no longer become valid.
    pub fn feed(&mut self, mut data: &[u8]) -> Result<(), ProtocolError> {
        let p = usize::from(self.pending_len);
        if p > 0 {
            // Finish the character cut at the end of the last piece: it needs at most 3 more bytes.
            let mut joined = [0u8; 8];
            let take = data.len().min(4);
            joined[..p].copy_from_slice(&self.pending[..p]);
            joined[p..p + take].copy_from_slice(&data[..take]);
            match std::str::from_utf8(&joined[..p + take]) {
                Ok(_) => data = &data[take..],
                Err(e) if e.valid_up_to() >= p => data = &data[e.valid_up_to() - p..],
                Err(e) if e.error_len().is_some() => return Err(ProtocolError::InvalidUtf8),
                Err(_) => {
                    // Still cut: all of `joined` is the start of one character (so ≤ 3 bytes).
                    self.pending[..p + take].copy_from_slice(&joined[..p + take]);
                    self.pending_len = (p + take) as u8;
                    return Ok(());
                }
            }
            self.pending_len = 0;
        }
        match std::str::from_utf8(data) {
            Ok(_) => Ok(()),
            Err(e) if e.error_len().is_some() => Err(ProtocolError::InvalidUtf8),
            Err(e) => {
                let rest = &data[e.valid_up_to()..];
                self.pending[..rest.len()].copy_from_slice(rest);
                self.pending_len = rest.len() as u8;
                Ok(())
            }
        }
    }

    /// Is the text so far whole (no character cut at its end)?
    pub fn is_complete(&self) -> bool {
        self.pending_len == 0
    }
}

/// The fragmented message in progress.
#[derive(Debug)]
struct Open {
    opcode: Opcode,
    bytes: Vec<u8>,
    /// For text: the validation state after the last fragment.
    utf8: Utf8,
}

/// Joins fragmented data frames into messages and checks text and close payloads. Text is
/// validated fragment by fragment: invalid UTF-8 fails at the fragment that holds it.
/// Holds nothing between messages: its buffer exists only while a fragmented message is open.
#[derive(Debug, Default)]
pub struct Assembler {
    open: Option<Open>,
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
                    return data_message(frame.opcode, frame.payload).map(Some);
                }
                let mut utf8 = Utf8::default();
                if frame.opcode == Opcode::Text {
                    utf8.feed(&frame.payload)?;
                }
                self.open = Some(Open {
                    opcode: frame.opcode,
                    bytes: frame.payload,
                    utf8,
                });
                Ok(None)
            }
            Opcode::Continuation => {
                let Some(mut open) = self.open.take() else {
                    return Err(ProtocolError::UnexpectedContinuation);
                };
                if open.bytes.len() + frame.payload.len() > max_message {
                    return Err(ProtocolError::MessageTooBig { max: max_message });
                }
                if open.opcode == Opcode::Text {
                    open.utf8.feed(&frame.payload)?;
                    if frame.fin && !open.utf8.is_complete() {
                        return Err(ProtocolError::InvalidUtf8);
                    }
                }
                open.bytes.extend_from_slice(&frame.payload);
                if frame.fin {
                    data_message(open.opcode, open.bytes).map(Some)
                } else {
                    self.open = Some(open);
                    Ok(None)
                }
            }
        }
    }

    /// The UTF-8 state a continuation frame's text would be checked from, if a text message is
    /// open.
    fn open_text(&self) -> Option<Utf8> {
        self.open
            .as_ref()
            .filter(|o| o.opcode == Opcode::Text)
            .map(|o| o.utf8)
    }

    /// Bytes held for the open message.
    pub fn buffered(&self) -> usize {
        self.open.as_ref().map_or(0, |o| o.bytes.len())
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

/// Bytes read from a peer in, messages out: frame decoding and message assembly over whatever
/// pieces the socket returns. Holds bytes only while a frame is incomplete. The text of an
/// incomplete frame is checked as it arrives, so invalid UTF-8 fails before the frame completes
/// (Autobahn 6.4.3–6.4.4: one frame whose bytes arrive in several TCP segments).
#[derive(Debug)]
pub struct Reader {
    role: Role,
    max_frame: usize,
    max_message: usize,
    /// Bytes of an incomplete frame (or of frames after the message last returned).
    partial: Vec<u8>,
    assembler: Assembler,
    /// For an incomplete text frame at the front of `partial`: its UTF-8 state and how many of its
    /// payload bytes were checked.
    ahead: Option<(Utf8, usize)>,
}

impl Reader {
    pub fn new(role: Role, max_frame: usize, max_message: usize) -> Self {
        Reader {
            role,
            max_frame,
            max_message,
            partial: Vec::new(),
            assembler: Assembler::default(),
            ahead: None,
        }
    }

    /// Keeps bytes for [`Reader::next`] without decoding them yet (frames that arrived with the
    /// upgrade request).
    pub fn keep(&mut self, bytes: &[u8]) {
        self.partial.extend_from_slice(bytes);
    }

    /// Takes bytes just read and returns the first message they complete; the bytes after it are
    /// kept for [`Reader::next`]. Nothing is copied unless a frame stays incomplete.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<Option<Message>, ProtocolError> {
        if !self.partial.is_empty() {
            self.partial.extend_from_slice(bytes);
            return self.next();
        }
        let mut rest = bytes;
        while let Some((frame, used)) = decode(rest, self.role, self.max_frame)? {
            rest = &rest[used..];
            if let Some(msg) = self.assembler.push(frame, self.max_message)? {
                self.partial.extend_from_slice(rest);
                return Ok(Some(msg));
            }
        }
        self.partial.extend_from_slice(rest);
        self.check_ahead()?;
        Ok(None)
    }

    /// The next message from the bytes held; `Ok(None)` if they hold no complete one.
    #[allow(clippy::should_implement_trait)] // fallible and never-ending: not an `Iterator`
    pub fn next(&mut self) -> Result<Option<Message>, ProtocolError> {
        loop {
            let Some((frame, used)) = decode(&self.partial, self.role, self.max_frame)? else {
                self.check_ahead()?;
                return Ok(None);
            };
            self.ahead = None;
            if used == self.partial.len() {
                self.partial = Vec::new(); // free it: an idle connection holds nothing
            } else {
                self.partial.drain(..used);
            }
            if let Some(msg) = self.assembler.push(frame, self.max_message)? {
                return Ok(Some(msg));
            }
        }
    }

    /// Bytes held: of incomplete frames, and of an open fragmented message.
    pub fn buffered(&self) -> usize {
        self.partial.len() + self.assembler.buffered()
    }

    /// Capacity of the raw byte buffer (zero when idle).
    pub fn capacity(&self) -> usize {
        self.partial.capacity()
    }

    /// Takes the raw bytes held, for another process to decode from (an upgrade's handover):
    /// `None` while a fragmented message is open, whose assembled part cannot travel as bytes.
    pub fn take_raw(&mut self) -> Option<Vec<u8>> {
        if self.assembler.open.is_some() {
            return None;
        }
        self.ahead = None;
        Some(std::mem::take(&mut self.partial))
    }

    /// Forgets everything held (after an error: nothing more will be read as frames).
    pub fn clear(&mut self) {
        self.partial = Vec::new();
        self.assembler = Assembler::default();
        self.ahead = None;
    }

    /// Checks the text that has arrived of an incomplete frame at the front of `partial`.
    fn check_ahead(&mut self) -> Result<(), ProtocolError> {
        let Some(h) = decode_header(&self.partial, self.role, self.max_frame)? else {
            return Ok(());
        };
        let start = match (h.opcode, self.assembler.open_text()) {
            (Opcode::Text, _) => Utf8::default(),
            (Opcode::Continuation, Some(utf8)) => utf8,
            _ => return Ok(()),
        };
        let avail = (self.partial.len() - h.len).min(h.payload_len);
        let (utf8, checked) = self.ahead.get_or_insert((start, 0));
        let mut chunk = [0u8; 512];
        while *checked < avail {
            let n = (avail - *checked).min(chunk.len());
            let from = h.len + *checked;
            chunk[..n].copy_from_slice(&self.partial[from..from + n]);
            if let Some(m) = h.mask {
                for (i, b) in chunk[..n].iter_mut().enumerate() {
                    *b ^= m[(*checked + i) & 3];
                }
            }
            utf8.feed(&chunk[..n])?;
            *checked += n;
        }
        Ok(())
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
    fn close_codes_1012_to_1014_are_accepted_and_1015_is_not() {
        let close = |code: u16| {
            Assembler::default().push(
                Frame {
                    fin: true,
                    opcode: Opcode::Close,
                    payload: close_payload(code, ""),
                },
                MAX,
            )
        };
        for code in [
            1000u16, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014,
        ] {
            assert_eq!(
                close(code),
                Ok(Some(Message::Close(Some((code, String::new()))))),
                "{code}"
            );
        }
        for code in [1004u16, 1005, 1006, 1015, 1016, 2000] {
            assert_eq!(close(code), Err(ProtocolError::BadClose(code)), "{code}");
        }
        for code in 0..=u16::MAX {
            let valid = matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999);
            assert_eq!(close_code::is_sendable(code), valid, "{code}");
        }
    }

    fn text_fragment(fin: bool, first: bool, payload: &[u8]) -> Frame {
        Frame {
            fin,
            opcode: if first {
                Opcode::Text
            } else {
                Opcode::Continuation
            },
            payload: payload.to_vec(),
        }
    }

    #[test]
    fn invalid_utf8_fails_at_the_fragment_that_holds_it() {
        // Autobahn 6.4.1: a valid first fragment, then one with an invalid sequence; the message is
        // refused when the second arrives, not when (or if) the last one does.
        let mut asm = Assembler::default();
        assert_eq!(
            asm.push(text_fragment(false, true, "κόσμε".as_bytes()), MAX),
            Ok(None)
        );
        assert_eq!(
            asm.push(text_fragment(false, false, &[0xce, 0xbc, 0xf4, 0x90]), MAX),
            Err(ProtocolError::InvalidUtf8)
        );
        // Invalid at once in a first, unfinished fragment too.
        assert_eq!(
            Assembler::default().push(text_fragment(false, true, &[b'a', 0xff]), MAX),
            Err(ProtocolError::InvalidUtf8)
        );
        // A lone continuation byte after a character completed in the previous fragment.
        let mut asm = Assembler::default();
        asm.push(text_fragment(false, true, &[0xe2, 0x82]), MAX)
            .unwrap();
        assert_eq!(
            asm.push(text_fragment(false, false, &[0xac, 0x80]), MAX),
            Err(ProtocolError::InvalidUtf8)
        );
    }

    #[test]
    fn a_message_ending_inside_a_character_is_refused() {
        let mut asm = Assembler::default();
        asm.push(text_fragment(false, true, b"ab\xe2"), MAX)
            .unwrap();
        assert_eq!(
            asm.push(text_fragment(true, false, &[0x82]), MAX),
            Err(ProtocolError::InvalidUtf8)
        );
    }

    #[test]
    fn incremental_utf8_agrees_with_std_at_every_split() {
        let samples: [&[u8]; 6] = [
            "héllo €uro 𝄞 κόσμε".as_bytes(),
            &[0xf0, 0x9f, 0x98, 0x80, 0xe2, 0x82, 0xac],
            &[0xed, 0xa0, 0x80],       // a surrogate: invalid
            &[0xf4, 0x90, 0x80, 0x80], // past U+10FFFF: invalid
            &[0xc0, 0xaf],             // overlong: invalid
            &[0xe2, 0x82],             // cut
        ];
        for bytes in samples {
            let whole_valid = std::str::from_utf8(bytes).is_ok();
            for a in 0..=bytes.len() {
                for b in a..=bytes.len() {
                    let mut v = Utf8::default();
                    let ok = v.feed(&bytes[..a]).is_ok()
                        && v.feed(&bytes[a..b]).is_ok()
                        && v.feed(&bytes[b..]).is_ok()
                        && v.is_complete();
                    assert_eq!(ok, whole_valid, "{bytes:x?} split at {a}, {b}");
                }
            }
        }
    }

    #[test]
    fn invalid_text_fails_before_its_frame_is_complete() {
        // Autobahn 6.4.3: one text frame whose bytes arrive in pieces; the piece with the invalid
        // sequence fails the connection without waiting for the rest of the frame.
        let mut payload = "κόσμε".as_bytes().to_vec();
        payload.extend_from_slice(&[0xce, 0xbc, 0xf4, 0x90, 0x80, 0x80]);
        payload.extend_from_slice(b"-edited");
        let wire = client_frame(true, Opcode::Text, &payload);
        let mut reader = Reader::new(Role::Server, MAX, MAX);
        let cut = 6 + "κόσμε".len();
        assert_eq!(reader.feed(&wire[..cut]), Ok(None));
        assert_eq!(
            reader.feed(&wire[cut..cut + 4]),
            Err(ProtocolError::InvalidUtf8)
        );
        // Same within a continuation frame of a fragmented message.
        let mut wire = client_frame(false, Opcode::Text, "é".as_bytes());
        let second = client_frame(true, Opcode::Continuation, &[b'x', 0xff, b'y', b'z']);
        wire.extend_from_slice(&second[..8]);
        let mut reader = Reader::new(Role::Server, MAX, MAX);
        assert_eq!(reader.feed(&wire), Err(ProtocolError::InvalidUtf8));
        // A character cut by a read is not an error.
        let wire = client_frame(true, Opcode::Text, "aé".as_bytes());
        let mut reader = Reader::new(Role::Server, MAX, MAX);
        assert_eq!(reader.feed(&wire[..8]), Ok(None));
        assert_eq!(
            reader.feed(&wire[8..]),
            Ok(Some(Message::Text("aé".into())))
        );
        assert_eq!(reader.capacity(), 0, "nothing held once the frame is read");
    }

    #[test]
    fn a_reader_gives_the_same_messages_for_any_split_of_its_input() {
        let mut wire = client_frame(false, Opcode::Text, "hé".as_bytes());
        wire.extend(client_frame(true, Opcode::Ping, b"p"));
        wire.extend(client_frame(true, Opcode::Continuation, "llo".as_bytes()));
        wire.extend(client_frame(true, Opcode::Binary, &[9; 200]));
        wire.extend(client_frame(true, Opcode::Close, &close_payload(1000, "")));
        let all = |pieces: &[&[u8]]| {
            let mut reader = Reader::new(Role::Server, MAX, MAX);
            let mut got = Vec::new();
            for piece in pieces {
                let mut next = reader.feed(piece).unwrap();
                while let Some(msg) = next {
                    got.push(msg);
                    next = reader.next().unwrap();
                }
            }
            got
        };
        let whole = all(&[&wire]);
        assert_eq!(whole.len(), 4);
        for cut in 0..=wire.len() {
            assert_eq!(all(&[&wire[..cut], &wire[cut..]]), whole, "cut {cut}");
        }
    }

    #[test]
    fn close_reasons_are_cut_at_a_char_boundary() {
        let reason = "é".repeat(100); // 200 bytes
        let p = close_payload(1000, &reason);
        assert!(p.len() <= 125);
        assert!(std::str::from_utf8(&p[2..]).is_ok());
    }
}
