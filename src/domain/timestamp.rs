//! RFC 3339 timestamps written without `core::fmt`.
//!
//! Every durable write serializes four to six timestamps (the ticket's, the event's, the outbox
//! record's and the response's), and chrono's `Serialize` goes through its general formatter. This
//! writes the same text chrono's `Serialize` does (`SecondsFormat::AutoSi`, `Z` for UTC) into a
//! stack buffer. Anything it does not cover (leap seconds, years outside 0..=9999) falls back to
//! chrono, so the output is always exactly chrono's.

use chrono::{DateTime, Datelike, SecondsFormat, Timelike, Utc};
use serde::Serializer;

/// The longest text written here: `9999-12-31T23:59:59.999999999Z`.
const MAX_LEN: usize = 30;

/// Formats `at` as chrono's `Serialize` would, into `buf`; `None` for what only chrono covers.
fn format(at: &DateTime<Utc>, buf: &mut [u8; MAX_LEN]) -> Option<usize> {
    let year = at.year();
    let nanos = at.nanosecond();
    if !(0..=9999).contains(&year) || nanos >= 1_000_000_000 {
        return None;
    }
    fn put(buf: &mut [u8], at: usize, value: u32, digits: usize) {
        let mut v = value;
        for i in (0..digits).rev() {
            buf[at + i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
    }
    put(buf, 0, year as u32, 4);
    buf[4] = b'-';
    put(buf, 5, at.month(), 2);
    buf[7] = b'-';
    put(buf, 8, at.day(), 2);
    buf[10] = b'T';
    put(buf, 11, at.hour(), 2);
    buf[13] = b':';
    put(buf, 14, at.minute(), 2);
    buf[16] = b':';
    put(buf, 17, at.second(), 2);
    let mut len = 19;
    // AutoSi: as few of 0, 3, 6 or 9 fractional digits as show the value exactly.
    let (value, digits) = if nanos == 0 {
        (0, 0)
    } else if nanos % 1_000_000 == 0 {
        (nanos / 1_000_000, 3)
    } else if nanos % 1_000 == 0 {
        (nanos / 1_000, 6)
    } else {
        (nanos, 9)
    };
    if digits > 0 {
        buf[len] = b'.';
        put(buf, len + 1, value, digits);
        len += 1 + digits;
    }
    buf[len] = b'Z';
    Some(len + 1)
}

/// `serialize_with` for a `DateTime<Utc>`: chrono's text, faster.
pub fn serialize<S: Serializer>(at: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    let mut buf = [0u8; MAX_LEN];
    match format(at, &mut buf) {
        // Only ASCII digits and separators were written.
        Some(len) => s.serialize_str(std::str::from_utf8(&buf[..len]).unwrap_or_default()),
        None => s.serialize_str(&at.to_rfc3339_opts(SecondsFormat::AutoSi, true)),
    }
}

/// Serializes `at` with exactly three millisecond digits, even on a whole second (the form the
/// Django contract documents for every timestamp it receives).
pub fn serialize_millis<S: Serializer>(at: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&millis(at))
}

/// `at` with millisecond digits, as the store's columns keep it.
pub fn millis(at: &DateTime<Utc>) -> String {
    let mut buf = [0u8; MAX_LEN];
    match format(at, &mut buf) {
        Some(len) if at.nanosecond() % 1_000_000 == 0 => {
            let mut text = String::from_utf8_lossy(&buf[..len - 1]).into_owned();
            if at.nanosecond() == 0 {
                text.push_str(".000");
            }
            text.push('Z');
            text
        }
        _ => at.to_rfc3339_opts(SecondsFormat::Millis, true),
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    #[derive(serde::Serialize)]
    struct Fast(#[serde(serialize_with = "serialize")] DateTime<Utc>);

    fn cases() -> Vec<DateTime<Utc>> {
        let base = Utc.with_ymd_and_hms(2026, 11, 27, 9, 5, 7).unwrap();
        let mut v = vec![
            base,
            Utc.with_ymd_and_hms(1, 1, 1, 0, 0, 0).unwrap(),
            Utc.with_ymd_and_hms(9999, 12, 31, 23, 59, 59).unwrap(),
            Utc.with_ymd_and_hms(10000, 1, 1, 0, 0, 0).unwrap(),
            Utc.with_ymd_and_hms(-5, 6, 1, 0, 0, 0).unwrap(),
            crate::store::now(),
            Utc::now(),
        ];
        for nanos in [
            1,
            999,
            1_000,
            120_000,
            1_000_000,
            7_000_000,
            999_999_999,
            1_500_000_000,
        ] {
            v.push(base + chrono::Duration::nanoseconds(nanos));
            if let Some(leap) = base.with_nanosecond(nanos as u32) {
                v.push(leap);
            }
        }
        v
    }

    #[test]
    fn writes_exactly_what_chrono_writes() {
        for at in cases() {
            assert_eq!(
                serde_json::to_string(&Fast(at)).unwrap(),
                serde_json::to_string(&at).unwrap(),
                "{at:?}"
            );
        }
    }

    #[test]
    fn millis_matches_the_store_format() {
        for at in cases() {
            assert_eq!(
                millis(&at),
                at.to_rfc3339_opts(SecondsFormat::Millis, true),
                "{at:?}"
            );
        }
    }
}
