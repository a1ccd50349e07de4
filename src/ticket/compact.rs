//! A ticket packed into one allocation, for hibernated ticket actors.
//!
//! A live [`Ticket`] is a struct plus one heap allocation per string and tag (six or more in all).
//! An idle actor needs none of that shape, so after `tickets.hibernate_after_ms` without a message it
//! keeps its ticket as a [`CompactTicket`]: one byte buffer, about a third of the memory once the
//! allocator's overhead is counted. The next message expands it back. The encoding is exact (every field, `None` kept
//! apart from `Some("")`, timestamps to the nanosecond) and private to this process: it is never
//! stored or sent, so it has no version.
//!
//! Layout: the id (16 bytes); a byte of status, priority and source; a byte of flags (assignee and
//! chat session present, `updated_at == created_at`); then LEB128 varints — version, `created_at`
//! (zigzag seconds, nanoseconds), `updated_at` unless equal to it, the byte length of each string
//! present and the tag count with each tag's length — and last every string's UTF-8 bytes in the
//! same order.

use chrono::{DateTime, Utc};

use crate::domain::ids::TicketId;
use crate::domain::status::Status;
use crate::domain::ticket::{Priority, Source, Ticket};

const HAS_ASSIGNEE: u8 = 1;
const HAS_CHAT: u8 = 1 << 1;
const SAME_TIMES: u8 = 1 << 2;

/// A ticket in one allocation; see the module docs.
#[derive(Clone, PartialEq, Eq)]
pub struct CompactTicket(Box<[u8]>);

impl std::fmt::Debug for CompactTicket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompactTicket")
            .field("id", &self.id())
            .field("bytes", &self.0.len())
            .finish()
    }
}

impl CompactTicket {
    pub fn encode(t: &Ticket) -> Self {
        let strings = [
            Some(&t.subject),
            Some(&t.description),
            Some(&t.requester),
            t.assignee.as_ref(),
            t.chat_session_id.as_ref(),
        ];
        let text: usize = strings.iter().flatten().map(|s| s.len()).sum::<usize>()
            + t.tags.iter().map(String::len).sum::<usize>();
        let mut out = Vec::with_capacity(16 + 2 + 24 + 4 * (5 + t.tags.len()) + text);
        out.extend_from_slice(t.id.0.as_bytes());
        out.push(
            status_index(t.status) | priority_index(t.priority) << 3 | source_index(t.source) << 5,
        );
        let same_times = t.updated_at == t.created_at;
        out.push(
            if t.assignee.is_some() {
                HAS_ASSIGNEE
            } else {
                0
            } | if t.chat_session_id.is_some() {
                HAS_CHAT
            } else {
                0
            } | if same_times { SAME_TIMES } else { 0 },
        );
        put_varint(&mut out, t.version);
        put_time(&mut out, &t.created_at);
        if !same_times {
            put_time(&mut out, &t.updated_at);
        }
        for s in strings.iter().flatten() {
            put_varint(&mut out, s.len() as u64);
        }
        put_varint(&mut out, t.tags.len() as u64);
        for tag in &t.tags {
            put_varint(&mut out, tag.len() as u64);
        }
        for s in strings.iter().flatten() {
            out.extend_from_slice(s.as_bytes());
        }
        for tag in &t.tags {
            out.extend_from_slice(tag.as_bytes());
        }
        // `into_boxed_slice` drops spare capacity, so the buffer is exactly the encoding.
        Self(out.into_boxed_slice())
    }

    /// The ticket back, exactly as encoded. `None` only if the bytes were not made by `encode`.
    pub fn decode(&self) -> Option<Ticket> {
        let mut r = Reader(&self.0);
        let id = TicketId(uuid::Uuid::from_bytes(r.take(16)?.try_into().ok()?));
        let kinds = r.byte()?;
        let flags = r.byte()?;
        let status = *Status::ALL.get(usize::from(kinds & 0b111))?;
        let priority = *Priority::ALL.get(usize::from(kinds >> 3 & 0b11))?;
        let source = if kinds >> 5 & 1 == 0 {
            Source::Api
        } else {
            Source::Chat
        };
        let version = r.varint()?;
        let created_at = r.time()?;
        let updated_at = if flags & SAME_TIMES != 0 {
            created_at
        } else {
            r.time()?
        };
        let subject_len = r.len()?;
        let description_len = r.len()?;
        let requester_len = r.len()?;
        let assignee_len = if flags & HAS_ASSIGNEE != 0 {
            Some(r.len()?)
        } else {
            None
        };
        let chat_len = if flags & HAS_CHAT != 0 {
            Some(r.len()?)
        } else {
            None
        };
        let tag_count = r.len()?;
        let mut tag_lens = Vec::with_capacity(tag_count.min(r.0.len()));
        for _ in 0..tag_count {
            tag_lens.push(r.len()?);
        }
        let subject = r.string(subject_len)?;
        let description = r.string(description_len)?;
        let requester = r.string(requester_len)?;
        let assignee = match assignee_len {
            Some(len) => Some(r.string(len)?),
            None => None,
        };
        let chat_session_id = match chat_len {
            Some(len) => Some(r.string(len)?),
            None => None,
        };
        let mut tags = Vec::with_capacity(tag_lens.len());
        for len in tag_lens {
            tags.push(r.string(len)?);
        }
        if !r.0.is_empty() {
            return None;
        }
        Some(Ticket {
            id,
            subject,
            description,
            status,
            priority,
            requester,
            assignee,
            tags,
            source,
            chat_session_id,
            created_at,
            updated_at,
            version,
        })
    }

    /// The ticket's id, read without decoding the rest.
    pub fn id(&self) -> TicketId {
        let mut bytes = [0u8; 16];
        bytes.copy_from_slice(&self.0[..16]);
        TicketId(uuid::Uuid::from_bytes(bytes))
    }

    /// Size of the encoding in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

fn status_index(s: Status) -> u8 {
    Status::ALL.iter().position(|x| *x == s).unwrap_or(0) as u8
}

fn priority_index(p: Priority) -> u8 {
    Priority::ALL.iter().position(|x| *x == p).unwrap_or(0) as u8
}

fn source_index(s: Source) -> u8 {
    match s {
        Source::Api => 0,
        Source::Chat => 1,
    }
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_time(out: &mut Vec<u8>, t: &DateTime<Utc>) {
    let secs = t.timestamp();
    put_varint(out, ((secs << 1) ^ (secs >> 63)) as u64);
    put_varint(out, u64::from(t.timestamp_subsec_nanos()));
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if n > self.0.len() {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    fn byte(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }

    fn varint(&mut self) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    }

    fn len(&mut self) -> Option<usize> {
        usize::try_from(self.varint()?).ok()
    }

    fn time(&mut self) -> Option<DateTime<Utc>> {
        let zigzag = self.varint()?;
        let secs = (zigzag >> 1) as i64 ^ -((zigzag & 1) as i64);
        let nanos = u32::try_from(self.varint()?).ok()?;
        DateTime::from_timestamp(secs, nanos)
    }

    fn string(&mut self, len: usize) -> Option<String> {
        std::str::from_utf8(self.take(len)?).ok().map(str::to_owned)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn typical() -> Ticket {
        let at = Utc.with_ymd_and_hms(2026, 11, 27, 8, 30, 0).unwrap()
            + chrono::Duration::nanoseconds(123_456_789);
        Ticket {
            id: TicketId::new(),
            subject: "Printer on fire".into(),
            description: "It was fine yesterday.".into(),
            status: Status::InProgress,
            priority: Priority::High,
            requester: "alice@example.com".into(),
            assignee: Some("bob".into()),
            tags: vec!["hardware".into(), "urgent".into()],
            source: Source::Chat,
            chat_session_id: Some("chat-42".into()),
            created_at: at,
            updated_at: at + chrono::Duration::milliseconds(1500),
            version: 7,
        }
    }

    fn round_trip(t: &Ticket) {
        let c = CompactTicket::encode(t);
        assert_eq!(c.id(), t.id);
        assert_eq!(c.decode().as_ref(), Some(t), "{c:?}");
    }

    #[test]
    fn a_typical_ticket_round_trips() {
        round_trip(&typical());
    }

    #[test]
    fn none_fields_empty_strings_and_no_tags_round_trip() {
        let mut t = typical();
        t.assignee = None;
        t.chat_session_id = None;
        t.tags.clear();
        t.description.clear();
        t.updated_at = t.created_at;
        round_trip(&t);
        // Some("") is not None.
        t.assignee = Some(String::new());
        t.chat_session_id = Some(String::new());
        t.tags = vec![String::new(), String::new()];
        round_trip(&t);
    }

    #[test]
    fn unicode_round_trips() {
        let mut t = typical();
        t.subject = "Drucker brennt 🔥 — ça ne marche pas".into();
        t.description = "日本語のテキスト\n\u{0}\u{10FFFF} ünïcödé".into();
        t.requester = "zoë@example.com".into();
        t.tags = vec!["ñ".into(), "😀😀".into()];
        round_trip(&t);
    }

    #[test]
    fn every_enum_value_and_extreme_numbers_round_trip() {
        let mut t = typical();
        for status in Status::ALL {
            for priority in Priority::ALL {
                for source in [Source::Api, Source::Chat] {
                    t.status = status;
                    t.priority = priority;
                    t.source = source;
                    round_trip(&t);
                }
            }
        }
        t.version = u64::MAX;
        t.created_at = DateTime::from_timestamp(-62_000_000_000, 999_999_999).unwrap();
        t.updated_at = DateTime::from_timestamp(0, 0).unwrap();
        round_trip(&t);
        t.tags = (0..300).map(|i| "x".repeat(i)).collect();
        t.description = "long ".repeat(10_000);
        round_trip(&t);
    }

    #[test]
    fn a_leap_second_round_trips() {
        let mut t = typical();
        t.updated_at = DateTime::from_timestamp(1_483_228_799, 1_500_000_000).unwrap();
        round_trip(&t);
    }

    #[test]
    fn it_is_one_buffer_of_exactly_the_encoding() {
        let t = typical();
        let c = CompactTicket::encode(&t);
        let text = t.subject.len()
            + t.description.len()
            + t.requester.len()
            + 3 // bob
            + 7 // chat-42
            + t.tags.iter().map(String::len).sum::<usize>();
        // id + two bytes + varints: well under the live ticket's struct alone.
        assert!(c.len() < text + 16 + 2 + 30, "{}", c.len());
        assert!(c.len() < std::mem::size_of::<Ticket>() + text);
    }

    #[test]
    fn truncated_or_padded_bytes_do_not_decode() {
        let c = CompactTicket::encode(&typical());
        for n in 0..c.0.len() {
            assert!(CompactTicket(c.0[..n].into()).decode().is_none(), "{n}");
        }
        let mut padded = c.0.to_vec();
        padded.push(0);
        assert!(CompactTicket(padded.into()).decode().is_none());
    }
}
