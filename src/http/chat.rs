//! The chat listener's HTTP app on `chat.bind`: its own `/healthz`, and JSON errors for every path it
//! does not serve. Live-chat WebSocket sessions (`/ws/chat`, `/ws/agent`) are upgraded here.

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use actix_web::{web, App, HttpResponse, HttpServer};

use crate::config::Settings;

/// Builds and starts the chat server on `listener` (not awaited: the caller owns the future).
pub fn start_chat_server(
    listener: TcpListener,
    settings: Arc<Settings>,
) -> std::io::Result<actix_web::dev::Server> {
    let server = settings.chat.clone();
    let grace = Duration::from_millis(settings.shutdown.grace_ms);
    let max_header_bytes = server.max_header_bytes;
    let http = HttpServer::new(move || {
        App::new()
            .wrap_fn(move |req, srv| super::observe(req, srv, "chat", max_header_bytes))
            .route("/healthz", web::get().to(healthz))
            .default_service(web::to(super::no_route))
    });
    Ok(crate::apply_listener_settings!(http, &server, grace)
        .listen(listener)?
        .run())
}

/// The chat listener answers: the process is alive and this listener accepts connections.
async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({"status": "ok", "listener": "chat"}))
}
