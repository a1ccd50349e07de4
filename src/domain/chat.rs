//! Chat data every layer shares: who spoke in a transcript line, and the line itself.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Who wrote a chat message, as Django's chat endpoints name them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChatRole {
    Customer,
    Ai,
    Agent,
    System,
}

/// One message of a chat, as sent to Django (`history`, `transcript`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TranscriptLine {
    pub role: ChatRole,
    pub text: String,
    #[serde(serialize_with = "super::timestamp::serialize")]
    pub at: DateTime<Utc>,
}
