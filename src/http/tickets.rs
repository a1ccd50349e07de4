//! `/api/v1/tickets…`: thin handlers. Each authorises, extracts and validates, sends one typed message
//! to the registry or a ticket actor (reads of many tickets go to the store), and maps the reply.

use std::sync::Arc;
use std::time::Duration;

use actix::Addr;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{web, HttpRequest, HttpResponse};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::json;

use super::auth::Auth;
use super::body::{parse_query, read_json};
use super::errors::ApiError;
use super::{body_limit, request_id_of};
use crate::config::{Scope, TicketSettings};
use crate::domain::ids::{SessionId, TicketId};
use crate::domain::patch::TicketPatch;
use crate::domain::precondition::{self, VersionMatch};
use crate::domain::status::Status;
use crate::domain::ticket::{Priority, Source, Ticket};
use crate::domain::validate::Checker;
use crate::store::{now, TicketFilter, TicketStore};
use crate::ticket::actor::{AddComment, GetEvents, GetTicket, UpdateTicket};
use crate::ticket::registry::{self, CreateTicket, TicketRegistry};

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/tickets")
            .route(web::post().to(create))
            .route(web::get().to(list)),
    )
    .service(
        web::resource("/tickets/{id}")
            .route(web::get().to(get))
            .route(web::patch().to(update)),
    )
    .service(web::resource("/tickets/{id}/comments").route(web::post().to(comment)))
    .service(web::resource("/tickets/{id}/events").route(web::get().to(events)));
}

type Registry = web::Data<Addr<TicketRegistry>>;
type Store = web::Data<Arc<dyn TicketStore>>;
type Limits = web::Data<TicketSettings>;

/// A ticket URL names its ticket in one form only, the lower-case hyphenated UUID: any other
/// spelling of the same id is another URL, and no ticket lives there.
fn ticket_id(raw: &str) -> Result<TicketId, ApiError> {
    raw.parse::<TicketId>()
        .ok()
        .filter(|id| id.to_string() == raw)
        .ok_or_else(|| ApiError::not_found(format!("ticket {raw} not found (not a ticket id)")))
}

fn etag(version: u64) -> String {
    format!("\"{version}\"")
}

fn with_etag(mut resp: HttpResponse, version: u64) -> HttpResponse {
    if let Ok(v) = HeaderValue::from_str(&etag(version)) {
        resp.headers_mut().insert(header::ETAG, v);
    }
    resp
}

fn timeout(limits: &TicketSettings) -> Duration {
    Duration::from_millis(limits.actor_timeout_ms)
}

/// What an `If-Match` header demands (RFC 9110: strong comparison, any tag of a list); a header
/// that is not `*` or a list of entity tags is a 400.
fn if_match(req: &HttpRequest) -> Result<VersionMatch, ApiError> {
    let raw = req
        .headers()
        .get(header::IF_MATCH)
        .map(|v| v.to_str().unwrap_or("\u{0}"));
    precondition::if_match(raw).map_err(|e| {
        ApiError::new(
            actix_web::http::StatusCode::BAD_REQUEST,
            "invalid_header",
            format!("If-Match: {e}"),
        )
    })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewTicket {
    subject: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    priority: Option<Priority>,
    requester: String,
    #[serde(default)]
    assignee: Option<String>,
    #[serde(default)]
    tags: Vec<String>,
    #[serde(default)]
    source: Option<Source>,
    #[serde(default)]
    chat_session_id: Option<String>,
}

async fn create(
    req: HttpRequest,
    payload: web::Payload,
    auth: web::Data<Auth>,
    registry: Registry,
    limits: Limits,
) -> Result<HttpResponse, ApiError> {
    let caller = auth.authorize(&req, Scope::Write)?;
    let body: NewTicket = read_json(&req, payload, body_limit(&req)).await?;
    let mut check = Checker::default();
    check.text("subject", &body.subject, limits.max_subject_chars, true);
    check.text(
        "description",
        &body.description,
        limits.max_description_chars,
        false,
    );
    check.text("requester", &body.requester, limits.max_name_chars, true);
    if let Some(a) = &body.assignee {
        check.text("assignee", a, limits.max_name_chars, true);
    }
    if let Some(c) = &body.chat_session_id {
        if c.parse::<SessionId>().map(|id| id.to_string()).as_deref() != Ok(c.as_str()) {
            check.fail(
                "chat_session_id",
                "must be a chat session id (a lower-case hyphenated UUID)",
            );
        }
    }
    check.tags(&body.tags, &limits);
    check.finish()?;

    let at = now();
    let ticket = Ticket {
        id: TicketId::new(),
        subject: body.subject.trim().to_string(),
        description: body.description,
        status: Status::Open,
        priority: body.priority.unwrap_or(Priority::Normal),
        requester: body.requester.trim().to_string(),
        assignee: body.assignee.map(|a| a.trim().to_string()),
        tags: body.tags,
        source: body.source.unwrap_or(Source::Api),
        chat_session_id: body.chat_session_id,
        created_at: at,
        updated_at: at,
        version: 1,
    };
    let ticket = registry
        .send(CreateTicket {
            ticket,
            actor: caller.actor,
            request_id: request_id_of(&req),
            also: None,
        })
        .await
        .map_err(|e| ApiError::unavailable(format!("ticket registry: {e}")))??;
    tracing::info!(ticket_id = %ticket.id, "ticket created");
    let resp = HttpResponse::Created()
        .insert_header((header::LOCATION, format!("/api/v1/tickets/{}", ticket.id)))
        .json(&ticket);
    Ok(with_etag(resp, ticket.version))
}

async fn get(
    req: HttpRequest,
    path: web::Path<String>,
    auth: web::Data<Auth>,
    registry: Registry,
    limits: Limits,
) -> Result<HttpResponse, ApiError> {
    auth.authorize(&req, Scope::Read)?;
    let id = ticket_id(&path)?;
    let ticket = registry::call(
        &registry,
        id,
        GetTicket,
        timeout(&limits),
        request_id_of(&req),
    )
    .await?;
    let not_modified = match req.headers().get(header::IF_NONE_MATCH) {
        None => false,
        Some(v) => precondition::none_match_names(v.to_str().unwrap_or("\u{0}"), ticket.version)
            .map_err(|e| {
                ApiError::new(
                    actix_web::http::StatusCode::BAD_REQUEST,
                    "invalid_header",
                    format!("If-None-Match: {e}"),
                )
            })?,
    };
    if not_modified {
        return Ok(with_etag(
            HttpResponse::NotModified().finish(),
            ticket.version,
        ));
    }
    Ok(with_etag(HttpResponse::Ok().json(&ticket), ticket.version))
}

/// Distinguishes an absent field from an explicit `null` (which unassigns).
fn double_option<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(d).map(Some)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Patch {
    #[serde(default)]
    subject: Option<String>,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    status: Option<Status>,
    #[serde(default)]
    priority: Option<Priority>,
    #[serde(default, deserialize_with = "double_option")]
    assignee: Option<Option<String>>,
    #[serde(default)]
    tags: Option<Vec<String>>,
}

async fn update(
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
    auth: web::Data<Auth>,
    registry: Registry,
    limits: Limits,
) -> Result<HttpResponse, ApiError> {
    let caller = auth.authorize(&req, Scope::Write)?;
    let id = ticket_id(&path)?;
    let expected_version = if_match(&req)?;
    let body: Patch = read_json(&req, payload, body_limit(&req)).await?;
    let mut check = Checker::default();
    if let Some(s) = &body.subject {
        check.text("subject", s, limits.max_subject_chars, true);
    }
    if let Some(d) = &body.description {
        check.text("description", d, limits.max_description_chars, false);
    }
    if let Some(Some(a)) = &body.assignee {
        check.text("assignee", a, limits.max_name_chars, true);
    }
    if let Some(tags) = &body.tags {
        check.tags(tags, &limits);
    }
    check.finish()?;
    let patch = TicketPatch {
        subject: body.subject.map(|s| s.trim().to_string()),
        description: body.description,
        status: body.status,
        priority: body.priority,
        assignee: body.assignee.map(|a| a.map(|a| a.trim().to_string())),
        tags: body.tags,
    };
    let msg = UpdateTicket {
        patch,
        expected: expected_version,
        actor: caller.actor,
        request_id: request_id_of(&req),
    };
    let ticket = registry::call(&registry, id, msg, timeout(&limits), request_id_of(&req)).await?;
    Ok(with_etag(HttpResponse::Ok().json(&ticket), ticket.version))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewComment {
    body: String,
    #[serde(default)]
    author: Option<String>,
}

async fn comment(
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
    auth: web::Data<Auth>,
    registry: Registry,
    limits: Limits,
) -> Result<HttpResponse, ApiError> {
    let caller = auth.authorize(&req, Scope::Write)?;
    let id = ticket_id(&path)?;
    let expected_version = if_match(&req)?;
    let body: NewComment = read_json(&req, payload, body_limit(&req)).await?;
    let mut check = Checker::default();
    check.text("body", &body.body, limits.max_comment_chars, true);
    if let Some(a) = &body.author {
        check.text("author", a, limits.max_name_chars, true);
    }
    check.finish()?;
    let msg = AddComment {
        author: match body.author {
            Some(person) => caller.actor.clone().on_behalf_of(person),
            None => caller.actor.clone(),
        },
        body: body.body,
        expected: expected_version,
        actor: caller.actor,
        request_id: request_id_of(&req),
    };
    let (comment, ticket) =
        registry::call(&registry, id, msg, timeout(&limits), request_id_of(&req)).await?;
    let resp = HttpResponse::Created()
        .insert_header((
            header::LOCATION,
            format!("/api/v1/tickets/{}/events", ticket.id),
        ))
        .json(json!({"comment": comment, "ticket_version": ticket.version}));
    Ok(with_etag(resp, ticket.version))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    status: Option<String>,
    assignee: Option<String>,
    priority: Option<String>,
    tag: Option<String>,
    limit: Option<String>,
    cursor: Option<String>,
}

#[derive(Serialize)]
struct Page<T> {
    items: Vec<T>,
    next_cursor: Option<String>,
}

/// A list route's `limit`: the same rule, and the same answer to a bad one, on every list route.
pub(super) fn page_limit(raw: Option<&str>, limits: &TicketSettings) -> Result<u32, ApiError> {
    match raw {
        None => Ok(limits.list_default_limit),
        Some(raw) => match raw.parse::<u32>() {
            Ok(n) if n >= 1 => Ok(n.min(limits.list_max_limit)),
            _ => Err(ApiError::field(
                "limit",
                format!(
                    "must be an integer from 1 (values above {} are capped)",
                    limits.list_max_limit
                ),
            )),
        },
    }
}

async fn list(
    req: HttpRequest,
    auth: web::Data<Auth>,
    store: Store,
    limits: Limits,
) -> Result<HttpResponse, ApiError> {
    auth.authorize(&req, Scope::Read)?;
    let q: ListQuery = parse_query(&req)?;
    let mut filter = TicketFilter {
        limit: page_limit(q.limit.as_deref(), &limits)?,
        assignee: q.assignee,
        tag: q.tag,
        ..TicketFilter::default()
    };
    if let Some(s) = q.status.as_deref() {
        filter.status = Some(Status::parse(s).ok_or_else(|| {
            ApiError::field(
                "status",
                format!(
                    "unknown status `{s}`; one of open, in_progress, pending, resolved, closed"
                ),
            )
        })?);
    }
    if let Some(p) = q.priority.as_deref() {
        filter.priority = Some(Priority::parse(p).ok_or_else(|| {
            ApiError::field(
                "priority",
                format!("unknown priority `{p}`; one of low, normal, high, urgent"),
            )
        })?);
    }
    if let Some(c) = q.cursor.as_deref() {
        filter.after = Some(
            c.parse()
                .map_err(|_| ApiError::field("cursor", "not a cursor returned by this API"))?,
        );
    }
    let limit = filter.limit as usize;
    let items = store.list(filter).await?;
    let next_cursor = (items.len() == limit)
        .then(|| items.last().map(|t| t.id.to_string()))
        .flatten();
    Ok(HttpResponse::Ok().json(Page { items, next_cursor }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EventsQuery {
    limit: Option<String>,
    cursor: Option<String>,
}

async fn events(
    req: HttpRequest,
    path: web::Path<String>,
    auth: web::Data<Auth>,
    registry: Registry,
    limits: Limits,
) -> Result<HttpResponse, ApiError> {
    auth.authorize(&req, Scope::Read)?;
    let id = ticket_id(&path)?;
    let q: EventsQuery = parse_query(&req)?;
    let limit = page_limit(q.limit.as_deref(), &limits)?;
    let after_seq = match q.cursor.as_deref() {
        None => 0,
        Some(c) => c
            .parse::<i64>()
            .map_err(|_| ApiError::field("cursor", "not a cursor returned by this API"))?,
    };
    let page = registry::call(
        &registry,
        id,
        GetEvents { after_seq, limit },
        timeout(&limits),
        request_id_of(&req),
    )
    .await?;
    let next_cursor = (page.len() == limit as usize)
        .then(|| page.last().map(|(seq, _)| seq.to_string()))
        .flatten();
    let items = page.into_iter().map(|(_, e)| e).collect();
    Ok(HttpResponse::Ok().json(Page { items, next_cursor }))
}
