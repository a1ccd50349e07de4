//! Operator endpoints outside `/api`: `/healthz` (the process answers), `/readyz` (store open,
//! supervision tree up, the chat listener accepting and its session registry answering; each Django
//! lane's state, the AI's among them, is reported but does not fail readiness) and `/metrics` (the
//! process's own metrics read afresh for each scrape).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::Addr;
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::json;

use super::auth::{bearer, constant_time_eq};
use super::errors::ApiError;
use crate::bridge::actor::Bridge;
use crate::bridge::calls::DjangoCalls;
use crate::bridge::GetStatus;
use crate::chat::queue::{CountWaiting, Queue};
use crate::chat::shards::ChatShards;
use crate::store::chat_journal::ChatJournal;
use crate::store::{Outbox, TicketStore};

/// What the operator endpoints read.
#[derive(Clone)]
pub struct Ops {
    pub metrics: PrometheusHandle,
    pub metrics_token: String,
    pub tree_up: Arc<AtomicBool>,
    /// True while the chat listener accepts connections.
    pub chat_listening: Arc<AtomicBool>,
    /// Every chat thread's session and agent registries.
    pub chat: ChatShards,
    pub chat_queue: Addr<Queue>,
    /// The chat journal (SQLite, or PostgreSQL with `storage.postgres_url`).
    pub chat_journal: Arc<dyn ChatJournal>,
    /// In a cluster: whether the node has joined it.
    pub cluster: Option<crate::cluster::ClusterStatus>,
}

pub fn routes(cfg: &mut web::ServiceConfig) {
    // Resources, not bare routes: another method on these paths is a 405 naming GET, not a 404.
    cfg.service(web::resource("/healthz").route(web::get().to(healthz)))
        .service(web::resource("/readyz").route(web::get().to(readyz)))
        .service(web::resource("/metrics").route(web::get().to(metrics)));
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

async fn readyz(
    ops: web::Data<Ops>,
    store: web::Data<Arc<dyn TicketStore>>,
    outbox: web::Data<Arc<dyn Outbox>>,
    bridge: web::Data<Addr<Bridge>>,
    calls: web::Data<Addr<DjangoCalls>>,
) -> HttpResponse {
    let store_ok = matches!(
        tokio::time::timeout(Duration::from_secs(2), store.ping()).await,
        Ok(Ok(()))
    );
    let tree_up = ops.tree_up.load(Ordering::SeqCst);
    let wait = Duration::from_secs(1);
    let listening = ops.chat_listening.load(Ordering::SeqCst);
    let (sessions, agents, waiting, journal) = futures_util::future::join4(
        tokio::time::timeout(wait, ops.chat.count_sessions()),
        tokio::time::timeout(wait, ops.chat.count_agents()),
        tokio::time::timeout(wait, ops.chat_queue.send(CountWaiting)),
        tokio::time::timeout(wait, ops.chat_journal.ping()),
    )
    .await;
    // Without its journal a session can acknowledge nothing: the node is not ready for chats.
    let journal_ok = matches!(journal, Ok(Ok(())));
    let (sessions, agents, waiting) = (
        sessions.ok().flatten(),
        agents.ok().flatten(),
        waiting.ok().and_then(Result::ok),
    );
    let chat_ok =
        listening && sessions.is_some() && agents.is_some() && waiting.is_some() && journal_ok;
    let chat = json!({
        "listener": if listening { "up" } else { "down" },
        "journal": if journal_ok { "up" } else { "unavailable" },
        "sessions": sessions,
        "agents": agents,
        "queue": waiting,
    });
    let (sync, calls) = futures_util::future::join(
        tokio::time::timeout(wait, bridge.send(GetStatus)),
        tokio::time::timeout(wait, calls.send(GetStatus)),
    )
    .await;
    let configured = matches!(&sync, Ok(Ok(s)) if s.configured);
    let lane = |status: Result<Result<_, _>, _>| match status {
        Ok(Ok(status)) => json!(status),
        _ => json!({"error": "lane did not answer"}),
    };
    let django = json!({"configured": configured, "sync": lane(sync), "calls": lane(calls)});
    let outbox = match tokio::time::timeout(Duration::from_secs(2), outbox.stats()).await {
        Ok(Ok(s)) => json!({"depth": s.depth, "oldest": s.oldest, "dead_letters": s.dead_letters}),
        _ => json!(null),
    };
    // In a cluster a node serves only once it has joined: its broker connection up and its
    // heartbeat in the database (otherwise the others would count it dead).
    let cluster = ops
        .cluster
        .as_ref()
        .map(|c| json!({"node": c.node(), "joined": c.joined(), "leads_queue": c.leads_queue()}));
    let joined = ops.cluster.as_ref().map_or(true, |c| c.joined());
    let ready = store_ok && tree_up && chat_ok && joined;
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    HttpResponse::build(status).json(json!({
        "status": if ready { "ready" } else { "not_ready" },
        "store": if store_ok { "ok" } else { "unavailable" },
        "supervisor": if tree_up { "up" } else { "down" },
        "django": django,
        "chat": chat,
        "outbox": outbox,
        "cluster": cluster,
    }))
}

async fn metrics(req: HttpRequest, ops: web::Data<Ops>) -> Result<HttpResponse, ApiError> {
    if !ops.metrics_token.is_empty() {
        let ok = bearer(&req)
            .is_some_and(|t| constant_time_eq(t.as_bytes(), ops.metrics_token.as_bytes()));
        if !ok {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "metrics need `Authorization: Bearer <metrics.token>`",
            ));
        }
    }
    crate::metrics::collect_process();
    ops.metrics.run_upkeep();
    Ok(HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(ops.metrics.render()))
}
