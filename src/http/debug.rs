//! `/api/v1/debug/…`: fault injection for tests, routed only when `testing.fault_injection` is on
//! (which config refuses on a non-loopback bind): make a ticket actor or the bridge panic inside a
//! handler, count live ticket actors, passivate them all, call Django's AI and service-action
//! endpoints through the request/response lane, and enqueue a chat-ticket outbox record (no chat
//! session makes these yet).

use std::time::Duration;

use actix::Addr;
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::json;

use super::errors::ApiError;
use crate::bridge::actor::Bridge;
use crate::bridge::calls::DjangoCalls;
use crate::bridge::wire::{AiRespondRequest, ServiceActionRequest};
use crate::bridge::{AiRespond, InjectPanic as BridgePanic, ManageService};
use crate::chat::registry::PanicSession;
use crate::store::{ChatTicketRecord, Outbox, OutboxRecord};
use crate::ticket::actor::InjectPanic;
use crate::ticket::registry::{CountLive, Lookup, PassivateAll, TicketRegistry};

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/debug/tickets/live", web::get().to(live_tickets))
        .route("/debug/tickets/passivate", web::post().to(passivate_all))
        .route("/debug/tickets/{id}/panic", web::post().to(panic_ticket))
        .route("/debug/bridge/panic", web::post().to(panic_bridge))
        .route("/debug/django/ai-respond", web::post().to(ai_respond))
        .route(
            "/debug/django/services-manage",
            web::post().to(manage_service),
        )
        .route(
            "/debug/outbox/chat-ticket",
            web::post().to(enqueue_chat_ticket),
        )
        .route("/debug/chat/{id}/panic", web::post().to(panic_session));
}

async fn panic_session(
    path: web::Path<String>,
    ops: web::Data<super::ops::Ops>,
) -> Result<HttpResponse, ApiError> {
    let id = path
        .parse()
        .map_err(|_| ApiError::not_found("not a session id"))?;
    let live = ops
        .chat
        .sessions_of(id)
        .send(PanicSession { id })
        .await
        .map_err(|e| ApiError::unavailable(e.to_string()))?;
    if !live {
        return Err(ApiError::not_found("no such live session"));
    }
    Ok(HttpResponse::Accepted().json(json!({"panicked": true})))
}

/// Puts a chat-ticket record in the durable outbox, as a chat session escalating will; answers once
/// it is on disk, with its outbox position.
async fn enqueue_chat_ticket(
    outbox: web::Data<std::sync::Arc<dyn Outbox>>,
    body: web::Json<ChatTicketRecord>,
) -> Result<HttpResponse, ApiError> {
    let seq = outbox
        .enqueue(OutboxRecord::ChatTicket(body.into_inner()))
        .await?;
    Ok(HttpResponse::Accepted().json(json!({"seq": seq})))
}

async fn panic_ticket(
    path: web::Path<String>,
    registry: web::Data<Addr<TicketRegistry>>,
) -> Result<HttpResponse, ApiError> {
    let id = path
        .parse()
        .map_err(|_| ApiError::not_found("not a ticket id"))?;
    let addr = registry
        .send(Lookup { id })
        .await
        .map_err(|e| ApiError::unavailable(e.to_string()))?;
    // The panic drops this message's reply channel, so the send fails by design.
    let outcome = addr.send(InjectPanic).timeout(Duration::from_secs(5)).await;
    Ok(HttpResponse::Accepted().json(json!({"panicked": outcome.is_err()})))
}

async fn panic_bridge(bridge: web::Data<Addr<Bridge>>) -> HttpResponse {
    let outcome = bridge
        .send(BridgePanic)
        .timeout(Duration::from_secs(5))
        .await;
    HttpResponse::Accepted().json(json!({"panicked": outcome.is_err()}))
}

async fn live_tickets(registry: web::Data<Addr<TicketRegistry>>) -> Result<HttpResponse, ApiError> {
    let live = registry
        .send(CountLive)
        .await
        .map_err(|e| ApiError::unavailable(e.to_string()))?;
    Ok(HttpResponse::Ok().json(json!({ "live": live })))
}

async fn passivate_all(
    registry: web::Data<Addr<TicketRegistry>>,
) -> Result<HttpResponse, ApiError> {
    let asked = registry
        .send(PassivateAll)
        .await
        .map_err(|e| ApiError::unavailable(e.to_string()))?;
    Ok(HttpResponse::Accepted().json(json!({ "passivating": asked })))
}

/// Asks the AI through the calls lane, as chat will, carrying this request's id.
async fn ai_respond(
    req: HttpRequest,
    body: web::Json<AiRespondRequest>,
    calls: web::Data<Addr<DjangoCalls>>,
) -> Result<HttpResponse, ApiError> {
    let reply = calls
        .send(AiRespond {
            request: body.into_inner(),
            request_id: super::request_id_of(&req),
        })
        .await
        .map_err(|e| ApiError::unavailable(e.to_string()))??;
    Ok(HttpResponse::Ok().json(reply))
}

/// Carries out a service action through the calls lane, carrying this request's id.
async fn manage_service(
    req: HttpRequest,
    body: web::Json<ServiceActionRequest>,
    calls: web::Data<Addr<DjangoCalls>>,
) -> Result<HttpResponse, ApiError> {
    let result = calls
        .send(ManageService {
            request: body.into_inner(),
            request_id: super::request_id_of(&req),
        })
        .await
        .map_err(|e| ApiError::unavailable(e.to_string()))??;
    Ok(HttpResponse::Ok().json(result))
}
