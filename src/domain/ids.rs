//! Typed ids, each made one way: a UUID id is minted with `new()` (UUIDv7, so ids sort by creation
//! time) or parsed from its canonical text; a name-like id is built from text that was validated where
//! it entered the process. No id is a bare `String` or `Uuid` past the edge.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub Uuid);

        impl $name {
            /// A new, time-ordered id (UUIDv7).
            pub fn new() -> Self {
                Self(Uuid::now_v7())
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl FromStr for $name {
            type Err = uuid::Error;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Uuid::parse_str(s).map(Self)
            }
        }
    };
}

uuid_id! {
    /// A ticket's id: a UUIDv7, so ids sort by creation time (cursor pagination relies on it).
    TicketId
}

uuid_id! {
    /// Id of one change to a ticket; the idempotency key Django deduplicates on.
    EventId
}

uuid_id! {
    /// A live-chat session's id.
    SessionId
}

uuid_id! {
    /// One chat message's id.
    MessageId
}

macro_rules! name_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(Arc<str>);

        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                Self(Arc::from(s))
            }
        }

        impl From<String> for $name {
            fn from(s: String) -> Self {
                Self(Arc::from(s))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

name_id! {
    /// A support agent, as named by the `sub` claim of their token.
    AgentId
}

name_id! {
    /// The id of the request that caused some work: echoed from a caller's `X-Request-Id` or minted
    /// here, and carried to every Django call the work makes, so both sides' logs can be joined.
    RequestId
}

impl RequestId {
    /// A fresh id for work no caller asked for by id (a UUIDv4, as Django's logs expect).
    pub fn generate() -> Self {
        Self::from(Uuid::new_v4().to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_ids_roundtrip_their_text() {
        let id = TicketId::new();
        assert_eq!(id.to_string().parse::<TicketId>().unwrap(), id);
        assert_eq!(
            serde_json::to_string(&id).unwrap(),
            format!("\"{id}\""),
            "serialized as the bare UUID"
        );
    }

    #[test]
    fn uuid_ids_sort_by_creation() {
        let a = SessionId::new();
        let b = SessionId::new();
        assert!(a < b);
    }

    #[test]
    fn name_ids_serialize_as_text() {
        let agent = AgentId::from("agent-7");
        assert_eq!(serde_json::to_string(&agent).unwrap(), "\"agent-7\"");
        assert_eq!(agent.as_str(), "agent-7");
    }
}
