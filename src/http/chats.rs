//! `/api/v1/chats/{session_id}…`: a chat session as the chat journal keeps it, for dashboards and
//! for Django: its summary (who answers, the customer, when it was active) and its transcript, the
//! numbered frames exactly as the customer was sent them, page by page. Reads only; the `read`
//! scope. The resume token's hash never leaves the journal.

use std::sync::Arc;

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::auth::Auth;
use super::errors::ApiError;
use crate::bridge::client::chain;
use crate::config::Scope;
use crate::domain::ids::SessionId;
use crate::store::chat_journal::{ChatJournal, SessionRecord};
use crate::store::StoreError;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(web::resource("/chats/{session_id}").route(web::get().to(get)))
        .service(web::resource("/chats/{session_id}/messages").route(web::get().to(messages)));
}

type Journal = web::Data<Arc<dyn ChatJournal>>;

/// A page's size when `limit` is not given.
const DEFAULT_LIMIT: u32 = 100;
/// The largest page: one answer stays a bounded read on the journal's thread.
const MAX_LIMIT: u32 = 1000;

fn invalid(code: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, code, message)
}

/// A session is named in one spelling only, the lower-case hyphenated UUID its frames carry, so a
/// caller learns of a mangled id at once rather than from a 404 that looks like a missing chat.
fn session_id(raw: &str) -> Result<SessionId, ApiError> {
    raw.parse::<SessionId>()
        .ok()
        .filter(|id| id.to_string() == raw)
        .ok_or_else(|| {
            invalid(
                "invalid_id",
                format!("`{raw}` is not a chat session id (a lower-case hyphenated UUID)"),
            )
        })
}

/// A journal failure: logged with its cause, answered without it.
fn journal_failed(e: StoreError) -> ApiError {
    tracing::error!(error = %chain(&e), "chat journal read failed");
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "storage_error",
        "the chat journal could not be read",
    )
}

async fn record(journal: &Journal, id: SessionId) -> Result<SessionRecord, ApiError> {
    journal
        .record(id)
        .await
        .map_err(journal_failed)?
        .ok_or_else(|| ApiError::not_found(format!("chat session {id} not found")))
}

/// The part of a session's stored state this API shows. Unknown fields are ignored and the owner is
/// read loosely, so a record written by a newer release still reads.
#[derive(Debug, Deserialize)]
struct StoredState {
    customer: Customer,
    started_at: DateTime<Utc>,
    owner: StoredOwner,
}

#[derive(Debug, Serialize, Deserialize)]
struct Customer {
    id: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    email: String,
    #[serde(default)]
    known: bool,
}

/// The owner as stored: `{"kind": …}` with a queued session's `reason`, or an agent's `id` and
/// `name` beside the kind.
#[derive(Debug, Deserialize)]
struct StoredOwner {
    kind: String,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    name: Option<String>,
}

#[derive(Debug, PartialEq, Serialize)]
struct Agent {
    id: String,
    name: String,
}

#[derive(Debug, PartialEq, Serialize)]
struct OwnerView {
    kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    agent: Option<Agent>,
}

impl From<StoredOwner> for OwnerView {
    fn from(o: StoredOwner) -> Self {
        let agent = match (o.kind.as_str(), o.id, o.name) {
            ("agent", Some(id), Some(name)) => Some(Agent { id, name }),
            _ => None,
        };
        Self {
            kind: o.kind,
            reason: o.reason,
            agent,
        }
    }
}

#[derive(Debug, Serialize)]
struct ChatView {
    session_id: SessionId,
    state: &'static str,
    owner: OwnerView,
    customer: Customer,
    started_at: DateTime<Utc>,
    last_activity_at: DateTime<Utc>,
    detached_at: Option<DateTime<Utc>>,
    last_seq: u64,
}

fn view(record: SessionRecord) -> Result<ChatView, ApiError> {
    let stored: StoredState = serde_json::from_str(&record.state).map_err(|e| {
        tracing::error!(session_id = %record.session_id, error = %e, "chat session record is not readable");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "storage_error",
            "the chat session's stored state could not be read",
        )
    })?;
    Ok(ChatView {
        session_id: record.session_id,
        state: if record.closed { "closed" } else { "open" },
        owner: stored.owner.into(),
        customer: stored.customer,
        started_at: stored.started_at,
        last_activity_at: record.last_activity_at,
        detached_at: record.detached_at,
        last_seq: record.last_seq,
    })
}

async fn get(
    req: HttpRequest,
    path: web::Path<String>,
    auth: web::Data<Auth>,
    journal: Journal,
) -> Result<HttpResponse, ApiError> {
    auth.authorize(&req, Scope::Read)?;
    let id = session_id(&path)?;
    let record = record(&journal, id).await?;
    Ok(HttpResponse::Ok().json(view(record)?))
}

/// Taken as text so that every bad value gets this API's own answer, naming the parameter.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MessagesQuery {
    after_seq: Option<String>,
    limit: Option<String>,
}

/// `after_seq` and `limit`, checked.
fn page(req: &HttpRequest) -> Result<(u64, u32), ApiError> {
    let q: MessagesQuery = serde_urlencoded::from_str(req.query_string())
        .map_err(|e| invalid("invalid_query", format!("query string: {e}")))?;
    let after_seq = match q.after_seq.as_deref() {
        None => 0,
        Some(raw) => raw.parse::<u64>().map_err(|_| {
            invalid(
                "invalid_query",
                format!("after_seq: `{raw}` is not a seq (an integer from 0)"),
            )
        })?,
    };
    let limit = match q.limit.as_deref() {
        None => DEFAULT_LIMIT,
        Some(raw) => raw
            .parse::<u32>()
            .ok()
            .filter(|n| (1..=MAX_LIMIT).contains(n))
            .ok_or_else(|| {
                invalid(
                    "invalid_query",
                    format!("limit: `{raw}` is not an integer from 1 to {MAX_LIMIT}"),
                )
            })?,
    };
    Ok((after_seq, limit))
}

#[derive(Debug, Serialize)]
struct Transcript {
    session_id: SessionId,
    messages: Vec<serde_json::Value>,
    next_after_seq: Option<u64>,
}

async fn messages(
    req: HttpRequest,
    path: web::Path<String>,
    auth: web::Data<Auth>,
    journal: Journal,
) -> Result<HttpResponse, ApiError> {
    auth.authorize(&req, Scope::Read)?;
    let id = session_id(&path)?;
    let (after_seq, limit) = page(&req)?;
    // The record tells an unknown session from one with no frames after `after_seq`.
    record(&journal, id).await?;
    // One frame past the page says whether another page follows, without a second read.
    let mut frames = journal
        .frames(id, after_seq, limit + 1)
        .await
        .map_err(journal_failed)?;
    let more = frames.len() > limit as usize;
    frames.truncate(limit as usize);
    let next_after_seq = more.then(|| frames.last().map(|f| f.seq)).flatten();
    let messages = frames
        .iter()
        .map(|f| serde_json::from_str(&f.body))
        .collect::<Result<Vec<serde_json::Value>, _>>()
        .map_err(|e| {
            tracing::error!(session_id = %id, error = %e, "chat journal frame is not JSON");
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "storage_error",
                "a stored frame of this chat could not be read",
            )
        })?;
    Ok(HttpResponse::Ok().json(Transcript {
        session_id: id,
        messages,
        next_after_seq,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chat::session::state::{hash_token, AgentRef, CustomerInfo, Owner, SessionState};
    use crate::domain::ids::AgentId;

    fn record_of(state: &SessionState, closed: bool) -> SessionRecord {
        SessionRecord {
            session_id: state.id,
            resume_token_hash: stored_hash(state),
            state: state.to_record(),
            last_seq: 7,
            last_activity_at: crate::store::now(),
            detached_at: None,
            closed,
        }
    }

    /// The hash as the stored state spells it.
    fn stored_hash(state: &SessionState) -> String {
        let json: serde_json::Value = serde_json::from_str(&state.to_record()).unwrap();
        json["resume_token_hash"].as_str().unwrap().to_string()
    }

    fn session() -> SessionState {
        SessionState::new(
            SessionId::new(),
            hash_token("a resume token"),
            CustomerInfo {
                id: "cust-1".into(),
                name: "Ada".into(),
                email: "ada@example.com".into(),
                known: true,
            },
            crate::store::now(),
        )
    }

    /// The view reads what the session writes: a change to the stored state's shape fails here,
    /// not in front of a caller.
    #[test]
    fn every_owner_the_session_stores_reads_back() {
        let mut state = session();
        let agent = AgentRef {
            id: AgentId::from("agent-9"),
            name: "Grace".into(),
        };
        for (owner, expected) in [
            (
                Owner::Ai,
                OwnerView {
                    kind: "ai".into(),
                    reason: None,
                    agent: None,
                },
            ),
            (
                Owner::Queued {
                    reason: "asked for a person".into(),
                },
                OwnerView {
                    kind: "queued".into(),
                    reason: Some("asked for a person".into()),
                    agent: None,
                },
            ),
            (
                Owner::Agent(agent),
                OwnerView {
                    kind: "agent".into(),
                    reason: None,
                    agent: Some(Agent {
                        id: "agent-9".into(),
                        name: "Grace".into(),
                    }),
                },
            ),
            (
                Owner::Closed,
                OwnerView {
                    kind: "closed".into(),
                    reason: None,
                    agent: None,
                },
            ),
        ] {
            state.owner = owner;
            let v = view(record_of(&state, false)).unwrap();
            assert_eq!(v.owner, expected);
            assert_eq!(v.customer.name, "Ada");
            assert!(v.customer.known);
            assert_eq!(v.started_at, state.started_at);
        }
    }

    #[test]
    fn the_view_never_carries_the_resume_token_hash_and_tolerates_new_fields() {
        let state = session();
        let mut record = record_of(&state, true);
        let mut json: serde_json::Value = serde_json::from_str(&record.state).unwrap();
        json["added_later"] = serde_json::json!({"x": 1});
        record.state = json.to_string();
        let text = serde_json::to_string(&view(record).unwrap()).unwrap();
        assert!(!text.contains(&stored_hash(&state)), "{text}");
        assert!(!text.contains("resume_token"), "{text}");
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["state"], "closed");
        assert_eq!(v["owner"], serde_json::json!({"kind": "ai"}));
        assert_eq!(v["last_seq"], 7);
        assert!(v["detached_at"].is_null());
    }

    #[test]
    fn ids_have_one_spelling() {
        let id: SessionId = "0190f5a8-1c2d-7e3f-8a4b-5c6d7e8f9a0b".parse().unwrap();
        assert_eq!(session_id(&id.to_string()).unwrap(), id);
        for bad in [
            id.to_string().to_uppercase(),
            id.to_string().replace('-', ""),
            "nope".into(),
        ] {
            let e = session_id(&bad).unwrap_err();
            assert_eq!((e.status, e.code), (StatusCode::BAD_REQUEST, "invalid_id"));
        }
    }
}
