//! `/api/v1/admin/…`: operator endpoints (scope `admin`) over the Django outbox: what still waits
//! for Django (oldest first, with its failed attempts and last error), moving a waiting entry to the
//! dead letters, the dead-letter table itself and re-queueing from it. Everything goes through the
//! [`Outbox`] seam; nothing here talks to the bridge, which finds the outbox changed on its next cycle.

use std::sync::Arc;

use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::json;

use super::auth::Auth;
use super::body::parse_query;
use super::errors::ApiError;
use crate::config::{Scope, TicketSettings};
use crate::store::Outbox;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(web::resource("/admin/outbox").route(web::get().to(pending)))
        .service(web::resource("/admin/outbox/{id}/dead-letter").route(web::post().to(dead_letter)))
        .service(web::resource("/admin/dead-letters").route(web::get().to(list)))
        .service(web::resource("/admin/dead-letters/{id}/retry").route(web::post().to(retry)));
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    limit: Option<String>,
}

/// Authorizes an admin list and reads its `limit` as the ticket lists read theirs.
fn list_limit(req: &HttpRequest, auth: &Auth, limits: &TicketSettings) -> Result<u32, ApiError> {
    auth.authorize(req, Scope::Admin)?;
    let q: ListQuery = parse_query(req)?;
    super::tickets::page_limit(q.limit.as_deref(), limits)
}

fn items(items: impl serde::Serialize) -> HttpResponse {
    HttpResponse::Ok().json(json!({ "items": items }))
}

/// An id in a path: anything but a number names nothing, so it is a 404 like an unknown number.
fn path_id(path: &str, what: &str) -> Result<i64, ApiError> {
    path.parse()
        .map_err(|_| ApiError::not_found(format!("{what} {path} not found")))
}

async fn pending(
    req: HttpRequest,
    auth: web::Data<Auth>,
    outbox: web::Data<Arc<dyn Outbox>>,
    limits: web::Data<TicketSettings>,
) -> Result<HttpResponse, ApiError> {
    let limit = list_limit(&req, &auth, &limits)?;
    Ok(items(outbox.pending(limit).await?))
}

async fn dead_letter(
    req: HttpRequest,
    path: web::Path<String>,
    auth: web::Data<Auth>,
    outbox: web::Data<Arc<dyn Outbox>>,
) -> Result<HttpResponse, ApiError> {
    let caller = auth.authorize(&req, Scope::Admin)?;
    let id = path_id(&path, "outbox entry")?;
    let error = format!("moved to the dead letters by {}", caller.actor.audit_name());
    if !outbox.dead_letter_entry(id, error).await? {
        return Err(ApiError::not_found(format!(
            "outbox entry {id} not found (delivered, already dead-lettered, or never there)"
        )));
    }
    tracing::info!(outbox_entry = id, by = %caller.actor.audit_name(), "outbox entry dead-lettered by an operator");
    Ok(HttpResponse::Ok().json(json!({ "dead_lettered": id })))
}

async fn list(
    req: HttpRequest,
    auth: web::Data<Auth>,
    outbox: web::Data<Arc<dyn Outbox>>,
    limits: web::Data<TicketSettings>,
) -> Result<HttpResponse, ApiError> {
    let limit = list_limit(&req, &auth, &limits)?;
    Ok(items(outbox.dead_letters(limit).await?))
}

async fn retry(
    req: HttpRequest,
    path: web::Path<String>,
    auth: web::Data<Auth>,
    outbox: web::Data<Arc<dyn Outbox>>,
) -> Result<HttpResponse, ApiError> {
    auth.authorize(&req, Scope::Admin)?;
    let id = path_id(&path, "dead letter")?;
    if !outbox.retry_dead_letter(id).await? {
        return Err(ApiError::not_found(format!("dead letter {id} not found")));
    }
    tracing::info!(dead_letter = id, "dead letter re-queued");
    Ok(HttpResponse::Accepted().json(json!({"requeued": id})))
}
