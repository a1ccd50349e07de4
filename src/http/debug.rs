//! `/api/v1/debug/…`: fault injection for tests, routed only when `testing.fault_injection` is on
//! (which config refuses on a non-loopback bind): make a ticket actor or the bridge panic inside a
//! handler, count live ticket actors, passivate them all.

use std::time::Duration;

use actix::Addr;
use actix_web::{web, HttpResponse};
use serde_json::json;

use super::errors::ApiError;
use crate::bridge::actor::Bridge;
use crate::bridge::InjectPanic as BridgePanic;
use crate::ticket::actor::InjectPanic;
use crate::ticket::registry::{CountLive, Lookup, PassivateAll, TicketRegistry};

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/debug/tickets/live", web::get().to(live_tickets))
        .route("/debug/tickets/passivate", web::post().to(passivate_all))
        .route("/debug/tickets/{id}/panic", web::post().to(panic_ticket))
        .route("/debug/bridge/panic", web::post().to(panic_bridge));
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
