//! The JSON Django's endpoints take and give, one typed struct per body (docs/django-api.md is the
//! contract). Pure data: the client serializes requests and parses answers with these, nothing else.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use super::batch::SyncItem;
use crate::domain::chat::{AiAction, TranscriptLine};
use crate::domain::ids::{EventId, MessageId, RequestId, SessionId, TicketId};
use crate::domain::status::Status;
use crate::domain::ticket::{Priority, Source, Ticket};
use crate::store::ChatTicketRecord;

/// `POST /api/tickets/sync/`: one batch of coalesced ticket changes.
#[derive(Debug, Serialize)]
pub struct SyncBatch<'a> {
    pub batch_id: Uuid,
    #[serde(serialize_with = "crate::domain::timestamp::serialize_millis")]
    pub sent_at: DateTime<Utc>,
    pub events: &'a [SyncItem],
}

/// A 400/409/422 answer to a sync batch naming the events Django can never apply.
#[derive(Debug, Default, Deserialize)]
pub struct RejectedBody {
    #[serde(default)]
    pub rejected: Vec<RejectedEvent>,
}

#[derive(Debug, Deserialize)]
pub struct RejectedEvent {
    pub event_id: EventId,
    #[serde(default)]
    pub code: String,
    #[serde(default)]
    pub message: String,
}

/// The customer a chat call is about.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Customer {
    pub id: String,
    pub name: String,
    pub email: String,
}

/// `POST /api/livechat/ai/respond/`: ask for an AI reply to one customer message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AiRespondRequest {
    pub session_id: SessionId,
    pub message_id: MessageId,
    pub customer: Customer,
    pub message: String,
    /// The session's last messages, oldest first, at most 50.
    pub history: Vec<TranscriptLine>,
}

/// Django's AI reply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AiReply {
    pub reply: String,
    pub confidence: f64,
    pub handoff: bool,
    #[serde(default)]
    pub suggested_actions: Vec<String>,
    /// What the AI asks the session to do (docs/django-api.md 3.1); may be absent.
    #[serde(default)]
    pub actions: Vec<AiAction>,
}

/// `POST /api/livechat/tickets/create/`: a chat escalated into a ticket, built from its outbox record.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChatTicketRequest<'a> {
    pub session_id: SessionId,
    pub ticket_id: TicketId,
    pub subject: &'a str,
    pub description: &'a str,
    pub priority: Priority,
    pub requester: &'a str,
    pub transcript: &'a [TranscriptLine],
}

impl<'a> From<&'a ChatTicketRecord> for ChatTicketRequest<'a> {
    fn from(r: &'a ChatTicketRecord) -> Self {
        Self {
            session_id: r.session_id,
            ticket_id: r.ticket_id,
            subject: &r.subject,
            description: &r.description,
            priority: r.priority,
            requester: &r.requester,
            transcript: &r.transcript,
        }
    }
}

/// Django's answer to a chat ticket (201 created, 200 already known: the same body).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ChatTicketCreated {
    pub ticket_id: TicketId,
    #[serde(default)]
    pub url: String,
}

/// `POST /api/livechat/services/manage/`: carry out one service action the AI chose for a customer
/// (reset a password, restart a service).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceActionRequest {
    /// Minted by Switchboard once per action: Django carries out an `action_id` at most once.
    pub action_id: Uuid,
    pub session_id: SessionId,
    pub customer: Customer,
    /// The service acted on, e.g. `email`, `vpn`.
    pub service: String,
    /// What to do to it, e.g. `reset_password`, `restart`.
    pub operation: String,
    /// Operation-specific arguments (may be `{}`). The contract wants an object: none (an AI action
    /// that gave no `params`, or `null`) is sent as `{}`.
    #[serde(default, serialize_with = "params_object")]
    pub params: Value,
    /// The request that caused the action, also sent as `X-Request-Id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<RequestId>,
}

/// `params` as the contract has it: an object, `{}` for none.
fn params_object<S: serde::Serializer>(params: &Value, s: S) -> Result<S::Ok, S::Error> {
    match params {
        Value::Null => serde_json::Map::new().serialize(s),
        other => other.serialize(s),
    }
}

/// What came of a service action; `message`, when Django gives one, is shown to the customer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceActionResult {
    pub ok: bool,
    /// Optional: `{"ok": true}` alone is a success, told in Switchboard's words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default)]
    pub data: Value,
}

impl ServiceActionResult {
    /// What the customer reads: Django's message, or, when it gave none (or only blanks), a
    /// sentence saying whether `operation` on `service` was carried out.
    pub fn customer_text(&self, service: &str, operation: &str) -> String {
        match self.message.as_deref().map(str::trim) {
            Some(message) if !message.is_empty() => message.to_string(),
            _ if self.ok => format!("Done: `{operation}` on your {service} service."),
            _ => format!("We could not run `{operation}` on your {service} service."),
        }
    }
}

/// `GET /api/tickets/{id}/`: Django's view of a ticket; optional fields take their documented
/// defaults.
#[derive(Debug, Deserialize)]
pub struct DjangoTicket {
    pub id: TicketId,
    pub subject: String,
    #[serde(default)]
    pub description: String,
    pub status: Status,
    pub priority: Priority,
    pub requester: String,
    #[serde(default)]
    pub assignee: Option<String>,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default = "default_source")]
    pub source: Source,
    #[serde(default)]
    pub chat_session_id: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    #[serde(default = "one")]
    pub version: u64,
}

fn default_source() -> Source {
    Source::Api
}

fn one() -> u64 {
    1
}

impl DjangoTicket {
    pub fn into_ticket(self) -> Ticket {
        use chrono::SubsecRound;
        Ticket {
            id: self.id,
            subject: self.subject,
            description: self.description,
            status: self.status,
            priority: self.priority,
            requester: self.requester,
            assignee: self.assignee,
            tags: self.tags,
            source: self.source,
            chat_session_id: self.chat_session_id,
            created_at: self.created_at.trunc_subsecs(3),
            updated_at: self.updated_at.trunc_subsecs(3),
            version: self.version.max(1),
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::SubsecRound;
    use serde_json::json;

    use super::*;

    #[test]
    fn service_action_request_omits_an_unknown_request_id() {
        let req = service_request(json!({}));
        let v = serde_json::to_value(&req).unwrap();
        assert!(v.get("request_id").is_none());
        assert_eq!(v["operation"], "reset_password");
    }

    fn service_request(params: Value) -> ServiceActionRequest {
        ServiceActionRequest {
            action_id: Uuid::now_v7(),
            session_id: SessionId::new(),
            customer: Customer {
                id: "c-42".into(),
                name: "Ada".into(),
                email: "ada@example.com".into(),
            },
            service: "email".into(),
            operation: "reset_password".into(),
            params,
            request_id: None,
        }
    }

    #[test]
    fn service_action_params_are_always_an_object() {
        let none = serde_json::to_value(service_request(Value::Null)).unwrap();
        assert_eq!(none["params"], json!({}));
        let absent: ServiceActionRequest = serde_json::from_value(json!({
            "action_id": Uuid::now_v7(),
            "session_id": SessionId::new(),
            "customer": {"id": "c-42", "name": "Ada", "email": "ada@example.com"},
            "service": "email",
            "operation": "reset_password"
        }))
        .unwrap();
        let text = serde_json::to_string(&absent).unwrap();
        assert!(text.contains(r#""params":{}"#), "{text}");
        let given = serde_json::to_value(service_request(json!({"to": "ada@example.com"})));
        assert_eq!(given.unwrap()["params"], json!({"to": "ada@example.com"}));
    }

    #[test]
    fn a_service_result_without_a_message_is_still_a_success() {
        let bare: ServiceActionResult = serde_json::from_value(json!({"ok": true})).unwrap();
        assert!(bare.ok);
        assert_eq!(
            bare.customer_text("email", "reset_password"),
            "Done: `reset_password` on your email service."
        );
        let blank: ServiceActionResult =
            serde_json::from_value(json!({"ok": true, "message": "  "})).unwrap();
        assert_eq!(
            blank.customer_text("email", "reset_password"),
            "Done: `reset_password` on your email service."
        );
        let refused: ServiceActionResult = serde_json::from_value(json!({"ok": false})).unwrap();
        assert_eq!(
            refused.customer_text("vpn", "restart"),
            "We could not run `restart` on your vpn service."
        );
        let told: ServiceActionResult = serde_json::from_value(
            json!({"ok": false, "message": "Not on your plan.", "data": {}}),
        )
        .unwrap();
        assert_eq!(told.customer_text("vpn", "restart"), "Not on your plan.");
    }

    /// Every RFC 3339 timestamp in a JSON body.
    fn timestamps(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::String(s) if s.len() >= 20 && s.as_bytes()[10] == b'T' && s.ends_with('Z') => {
                out.push(s.clone())
            }
            Value::Array(items) => items.iter().for_each(|i| timestamps(i, out)),
            Value::Object(fields) => fields.values().for_each(|f| timestamps(f, out)),
            _ => {}
        }
    }

    /// Checks that every timestamp of `body` has exactly three fractional digits, and returns them.
    fn all_in_millis(body: &impl Serialize) -> Vec<String> {
        let mut found = Vec::new();
        timestamps(&serde_json::to_value(body).unwrap(), &mut found);
        for at in &found {
            let fraction = at.split_once('.').map(|(_, f)| f.trim_end_matches('Z'));
            assert_eq!(fraction.map(str::len), Some(3), "{at}");
        }
        found
    }

    #[test]
    fn every_timestamp_sent_to_django_has_milliseconds() {
        use chrono::TimeZone;

        use crate::domain::chat::ChatRole;
        use crate::domain::ticket::EventKind;
        use crate::store::{HandoffEvent, HandoffRecord};

        let base = Utc.with_ymd_and_hms(2026, 11, 27, 5, 40, 1).unwrap();
        let precise = base + chrono::Duration::nanoseconds(250_123_456);
        let whole = Utc.with_ymd_and_hms(2026, 11, 27, 5, 40, 0).unwrap();
        let transcript = vec![
            TranscriptLine {
                role: ChatRole::Customer,
                text: "Hello".into(),
                at: whole,
            },
            TranscriptLine {
                role: ChatRole::Ai,
                text: "Hi Ada".into(),
                at: precise,
            },
        ];
        let lines = [
            "2026-11-27T05:40:00.000Z".to_string(),
            "2026-11-27T05:40:01.250Z".to_string(),
        ];

        let ai = AiRespondRequest {
            session_id: SessionId::new(),
            message_id: MessageId::new(),
            customer: Customer {
                id: "c-42".into(),
                name: "Ada".into(),
                email: "ada@example.com".into(),
            },
            message: "Hello".into(),
            history: transcript.clone(),
        };
        assert_eq!(all_in_millis(&ai), lines);
        let text = serde_json::to_string(&ai).unwrap();
        assert!(
            text.contains(r#""at":"2026-11-27T05:40:01.250Z""#),
            "{text}"
        );

        let record = ChatTicketRecord {
            session_id: SessionId::new(),
            ticket_id: TicketId::new(),
            subject: "Refund".into(),
            description: String::new(),
            priority: Priority::Normal,
            requester: "ada@example.com".into(),
            transcript: transcript.clone(),
            request_id: None,
        };
        assert_eq!(all_in_millis(&ChatTicketRequest::from(&record)), lines);

        let handoff = HandoffRecord {
            handoff_id: EventId::new(),
            session_id: SessionId::new(),
            event: HandoffEvent::Requested,
            reason: "billing dispute".into(),
            agent_id: None,
            agent_name: None,
            customer_id: "c-42".into(),
            customer_name: "Ada".into(),
            at: precise,
            transcript,
        };
        let mut expected = vec!["2026-11-27T05:40:01.250Z".to_string()];
        expected.extend(lines.iter().cloned());
        let mut sent = all_in_millis(&handoff);
        sent.sort();
        expected.sort();
        assert_eq!(sent, expected);

        // The ticket's own times are the store's, already in milliseconds.
        let stored = precise.trunc_subsecs(3);
        let ticket = Ticket {
            id: TicketId::new(),
            subject: "Refund".into(),
            description: String::new(),
            status: Status::Open,
            priority: Priority::Normal,
            requester: "ada@example.com".into(),
            assignee: None,
            tags: vec![],
            source: Source::Api,
            chat_session_id: None,
            created_at: stored,
            updated_at: stored,
            version: 1,
        };
        let item = SyncItem {
            event_id: EventId::new(),
            ticket_id: ticket.id,
            version: 1,
            kinds: vec![EventKind::Created],
            occurred_at: precise,
            coalesced_event_ids: vec![],
            ticket,
            comments: vec![],
            request_id: None,
            seqs: vec![],
        };
        let batch = SyncBatch {
            batch_id: Uuid::now_v7(),
            sent_at: whole,
            events: std::slice::from_ref(&item),
        };
        let text = serde_json::to_string(&batch).unwrap();
        assert!(
            text.contains(r#""occurred_at":"2026-11-27T05:40:01.250Z""#),
            "{text}"
        );
        assert_eq!(all_in_millis(&batch).len(), 4);
    }

    #[test]
    fn ai_reply_tolerates_missing_suggestions_and_unknown_fields() {
        let r: AiReply = serde_json::from_value(
            json!({"reply": "hi", "confidence": 0.5, "handoff": false, "x": 1}),
        )
        .unwrap();
        assert!(r.suggested_actions.is_empty());
    }
}
