//! Chat data every layer shares: who spoke in a transcript line, the line itself, and the actions
//! Django's AI may ask a session to carry out.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::ticket::Priority;

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
    /// Milliseconds, as the Django contract has every timestamp (a message's own `at` has
    /// nanoseconds).
    #[serde(serialize_with = "super::timestamp::serialize_millis")]
    pub at: DateTime<Utc>,
}

/// An action the AI asked for (docs/django-api.md, `actions` in the AI answer).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum AiAction {
    CreateTicket {
        subject: String,
        #[serde(default)]
        description: String,
        #[serde(default = "normal")]
        priority: Priority,
        #[serde(default)]
        requires_confirmation: bool,
    },
    ManageService {
        service: String,
        operation: String,
        #[serde(default)]
        params: serde_json::Value,
        #[serde(default)]
        requires_confirmation: bool,
    },
    Handoff {
        #[serde(default)]
        reason: String,
    },
    /// A type this release does not know: ignored, so Django can add actions first.
    #[serde(other)]
    Unknown,
}

fn normal() -> Priority {
    Priority::Normal
}
