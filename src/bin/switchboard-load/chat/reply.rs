//! The text of an agent's reply in a load run: which customer message it answers and when the
//! agent wrote it (Unix nanoseconds). Written by [`super::agent`], read by [`super::customer`],
//! which matches the reply to its message and times the agent-to-customer leg on the wall clock
//! both processes share (one machine).

use std::time::{SystemTime, UNIX_EPOCH};

/// The agent's reply to the customer message `client_id`, sent at `sent_unix_nanos`.
pub fn reply_text(client_id: &str, sent_unix_nanos: u128) -> String {
    format!("re {client_id} at {sent_unix_nanos}")
}

/// The customer's side of [`reply_text`]: the `client_id` answered and when the reply was sent.
pub fn parse_reply(text: &str) -> Option<(&str, u128)> {
    let rest = text.strip_prefix("re ")?;
    let (client_id, at) = rest.split_once(" at ")?;
    Some((client_id, at.parse().ok()?))
}

pub fn unix_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reply_names_the_message_it_answers_and_its_send_time() {
        let text = reply_text("w0s12m3", 1_700_000_000_123_456_789);
        assert_eq!(
            parse_reply(&text),
            Some(("w0s12m3", 1_700_000_000_123_456_789))
        );
        assert_eq!(parse_reply("Thanks, I am looking into it."), None);
    }
}
