//! Who acted: every change in a ticket's history and every message in a chat names a [`Principal`],
//! never a free string.

use std::borrow::Cow;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::ids::{AgentId, SessionId};

/// The author of a change.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Principal {
    /// A REST caller when no API keys are configured (loopback only).
    Anonymous,
    /// A REST caller holding the API key named `key`; `on_behalf_of` is the person it acts for
    /// (`X-Actor`), when it says.
    ApiKey {
        key: String,
        on_behalf_of: Option<String>,
    },
    /// Django itself (a ticket imported from it).
    Django,
    /// The customer of a live-chat session.
    Customer(SessionId),
    /// A support agent.
    Agent(AgentId),
    /// The AI answering a chat.
    Ai,
    /// Switchboard acting on its own (timeouts, fallbacks).
    System,
}

impl Principal {
    /// The name shown as a comment's author: the person a key acts for when it says, else the
    /// key's name; `customer:<session>` and `agent:<id>` for chat principals. The history records
    /// more: [`Self::identity`] and [`Self::acting_for`].
    pub fn display_name(&self) -> String {
        self.to_string()
    }

    /// Who authenticated, for the audit trail: a key's name, never replaced by the person it acts
    /// for; the principal's own name otherwise.
    pub fn identity(&self) -> Cow<'_, str> {
        match self {
            Self::ApiKey { key, .. } => Cow::Borrowed(key),
            other => Cow::Owned(other.to_string()),
        }
    }

    /// The person a key acts for (`X-Actor`), when it says.
    pub fn acting_for(&self) -> Option<&str> {
        match self {
            Self::ApiKey { on_behalf_of, .. } => on_behalf_of.as_deref(),
            _ => None,
        }
    }

    /// Rebuilds a principal from what the history keeps: [`Self::identity`] and
    /// [`Self::acting_for`].
    pub fn from_record(identity: &str, on_behalf_of: Option<String>) -> Self {
        let principal = Self::parse(identity);
        match on_behalf_of {
            Some(person) => principal.on_behalf_of(person),
            None => principal,
        }
    }

    /// For logs and operators' notes: "API key `helpdesk` on behalf of ada".
    pub fn audit_name(&self) -> String {
        match self {
            Self::ApiKey { key, on_behalf_of } => match on_behalf_of {
                Some(person) => format!("API key `{key}` on behalf of {person}"),
                None => format!("API key `{key}`"),
            },
            other => other.to_string(),
        }
    }

    /// The same caller, acting for `person` (a REST key's `X-Actor`, or a comment's named author).
    pub fn on_behalf_of(self, person: String) -> Self {
        let key = match self {
            Self::ApiKey { key, .. } => key,
            other => other.to_string(),
        };
        Self::ApiKey {
            key,
            on_behalf_of: Some(person),
        }
    }

    fn parse(s: &str) -> Self {
        match s {
            "anonymous" => Self::Anonymous,
            "django" => Self::Django,
            "ai" => Self::Ai,
            "system" => Self::System,
            _ => {
                if let Some(session) = s.strip_prefix("customer:").and_then(|v| v.parse().ok()) {
                    return Self::Customer(session);
                }
                if let Some(agent) = s.strip_prefix("agent:") {
                    return Self::Agent(AgentId::from(agent));
                }
                // A comment's author keeps the shown name only: a key acting for someone reads
                // back as that person's name (the history keeps both, see `from_record`).
                Self::ApiKey {
                    key: s.to_string(),
                    on_behalf_of: None,
                }
            }
        }
    }
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Anonymous => f.write_str("anonymous"),
            Self::ApiKey {
                on_behalf_of: Some(person),
                ..
            } => f.write_str(person),
            Self::ApiKey { key, .. } => f.write_str(key),
            Self::Django => f.write_str("django"),
            Self::Customer(session) => write!(f, "customer:{session}"),
            Self::Agent(agent) => write!(f, "agent:{agent}"),
            Self::Ai => f.write_str("ai"),
            Self::System => f.write_str("system"),
        }
    }
}

impl Serialize for Principal {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Principal {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Ok(Self::parse(&s))
    }
}

impl From<&str> for Principal {
    fn from(s: &str) -> Self {
        Self::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shown_name_prefers_the_person_a_key_acts_for() {
        let p = Principal::ApiKey {
            key: "helpdesk".into(),
            on_behalf_of: Some("agent-7".into()),
        };
        assert_eq!(p.display_name(), "agent-7");
        let p = Principal::ApiKey {
            key: "helpdesk".into(),
            on_behalf_of: None,
        };
        assert_eq!(serde_json::to_string(&p).unwrap(), "\"helpdesk\"");
    }

    #[test]
    fn the_audit_record_keeps_the_key_and_the_person_apart() {
        let p = Principal::ApiKey {
            key: "helpdesk".into(),
            on_behalf_of: Some("agent-7".into()),
        };
        assert_eq!(p.identity(), "helpdesk");
        assert_eq!(p.acting_for(), Some("agent-7"));
        assert_eq!(p.audit_name(), "API key `helpdesk` on behalf of agent-7");
        assert_eq!(
            Principal::from_record(&p.identity(), p.acting_for().map(str::to_string)),
            p
        );
        let keyless = Principal::Anonymous.on_behalf_of("ada".into());
        assert_eq!(keyless.identity(), "anonymous");
        assert_eq!(keyless.acting_for(), Some("ada"));
        assert_eq!(Principal::from_record("system", None), Principal::System);
    }

    #[test]
    fn chat_principals_roundtrip() {
        for p in [
            Principal::Anonymous,
            Principal::Django,
            Principal::Ai,
            Principal::System,
            Principal::Customer(SessionId::new()),
            Principal::Agent(AgentId::from("a-1")),
        ] {
            let text = serde_json::to_string(&p).unwrap();
            assert_eq!(serde_json::from_str::<Principal>(&text).unwrap(), p);
        }
    }
}
