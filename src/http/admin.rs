//! `/api/v1/admin/…`: operator endpoints (scope `admin`): the dead-letter table and re-queueing.

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
    cfg.service(web::resource("/admin/dead-letters").route(web::get().to(list)))
        .service(web::resource("/admin/dead-letters/{id}/retry").route(web::post().to(retry)));
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    limit: Option<String>,
}

async fn list(
    req: HttpRequest,
    auth: web::Data<Auth>,
    outbox: web::Data<Arc<dyn Outbox>>,
    limits: web::Data<TicketSettings>,
) -> Result<HttpResponse, ApiError> {
    auth.authorize(&req, Scope::Admin)?;
    let q: ListQuery = parse_query(&req)?;
    let limit = super::tickets::page_limit(q.limit.as_deref(), &limits)?;
    let items = outbox.dead_letters(limit).await?;
    Ok(HttpResponse::Ok().json(json!({ "items": items })))
}

async fn retry(
    req: HttpRequest,
    path: web::Path<String>,
    auth: web::Data<Auth>,
    outbox: web::Data<Arc<dyn Outbox>>,
) -> Result<HttpResponse, ApiError> {
    auth.authorize(&req, Scope::Admin)?;
    let id: i64 = path
        .parse()
        .map_err(|_| ApiError::not_found(format!("dead letter {path} not found")))?;
    if !outbox.retry_dead_letter(id).await? {
        return Err(ApiError::not_found(format!("dead letter {id} not found")));
    }
    tracing::info!(dead_letter = id, "dead letter re-queued");
    Ok(HttpResponse::Accepted().json(json!({"requeued": id})))
}
