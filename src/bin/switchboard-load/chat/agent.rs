//! One human agent, as an agent console would drive it over `switchboard.v1` (docs/protocol.md,
//! "Agents"): sign in at the handshake with a token this tool mints (HS256, the secret the server
//! was given), `agent.start` with a capacity and auto-assignment on, then take every chat the
//! queue hands it (`session.assigned`) and answer each customer message (`session.event`) at once
//! with a `message.send` whose text carries the customer's `client_id` and the wall-clock time
//! of the send ([`super::reply`]), so the customer can time the routing and tell which message it
//! answers. One task per agent, inside a worker, beside the customers; it ignores the phases and
//! lives until the worker ends, so no chat is requeued while customers are still closing.

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;

use super::customer::{connect, Shared};
use super::reply::{reply_text, unix_nanos};

/// What every agent of a worker shares.
pub struct AgentConfig {
    /// The chat listener's agent path, without the token.
    pub path: String,
    /// Chats each agent takes at once (`agent.start {capacity}`).
    pub capacity: usize,
    pub secret: String,
    /// How long tokens stay valid: the whole run, so none expires under load.
    pub token_ttl: Duration,
}

#[derive(serde::Serialize)]
struct Claims<'a> {
    sub: &'a str,
    name: &'a str,
    role: &'a str,
    exp: u64,
}

/// A token for agent `sub`, as the identity provider would issue it.
pub fn token(secret: &str, sub: &str, ttl: Duration) -> Result<String, String> {
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|e| e.to_string())?
        .as_secs()
        + ttl.as_secs().max(60);
    let claims = Claims {
        sub,
        name: sub,
        role: "agent",
        exp,
    };
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .map_err(|e| format!("mint an agent token: {e}"))
}

/// One agent from sign-in until the worker ends (or its connection is lost).
pub async fn run(shared: &Shared, cfg: &AgentConfig, index: usize) {
    let src = shared.config.sources[index % shared.config.sources.len()];
    let outcome = drive(shared, cfg, index, src).await;
    let mut s = shared.stats.borrow_mut();
    if let Err((signed_in, e)) = outcome {
        let a = &mut s.counters.agents;
        if signed_in {
            a.dropped += 1;
        } else {
            a.failed += 1;
            s.agents_done += 1;
        }
        if s.counters.agents.first_error.is_none() {
            s.counters.agents.first_error = Some(e);
        }
    }
}

/// `Err((signed in, why))` when the agent could not sign in or lost its connection.
async fn drive(
    shared: &Shared,
    cfg: &AgentConfig,
    index: usize,
    src: Ipv4Addr,
) -> Result<(), (bool, String)> {
    let sub = format!("load-w{}a{index}", shared.config.worker);
    let token = token(&cfg.secret, &sub, cfg.token_ttl).map_err(|e| (false, e))?;
    let path = format!("{}?access_token={token}", cfg.path);
    let hello = format!(
        r#"{{"type":"agent.start","capacity":{},"auto_assign":true}}"#,
        cfg.capacity
    );
    let (mut conn, ready) = connect(shared, shared.config.agent_chat, src, &path, &hello, |_| {})
        .await
        .map_err(|e| (false, e))?;
    if ready["type"] != "agent.ready" {
        return Err((false, format!("expected agent.ready, got {ready}")));
    }
    {
        let mut s = shared.stats.borrow_mut();
        s.counters.agents.connected += 1;
        s.agents_done += 1;
    }
    let mut held: HashSet<String> = HashSet::new();
    let mut k = 0u64;
    loop {
        let t = match conn.next().await.map_err(|e| (true, e))? {
            crate::raw_ws::Incoming::Ping => continue,
            crate::raw_ws::Incoming::Text(t) => t,
        };
        // The queue and presence broadcasts list every waiting chat and every agent: with
        // thousands queued, parsing them would starve the agents of this worker.
        if t.starts_with(br#"{"type":"queue.updated""#)
            || t.starts_with(br#"{"type":"agent.presence""#)
        {
            shared.stats.borrow_mut().counters.agents.broadcasts += 1;
            continue;
        }
        let v: Value = serde_json::from_slice(&t).map_err(|e| (true, format!("not JSON: {e}")))?;
        let session = || v["session_id"].as_str().unwrap_or_default().to_string();
        match v["type"].as_str().unwrap_or("") {
            "session.assigned" => {
                held.insert(session());
                shared.stats.borrow_mut().counters.agents.assigned += 1;
            }
            "session.released" => {
                held.remove(&session());
                shared.stats.borrow_mut().counters.agents.released += 1;
            }
            "session.event" => {
                let ev = &v["event"];
                if ev["type"] != "message" || ev["from"] != "customer" {
                    continue;
                }
                let session_id = session();
                if !held.contains(&session_id) {
                    shared.stats.borrow_mut().counters.agents.stray += 1;
                    continue;
                }
                shared.stats.borrow_mut().counters.agents.events += 1;
                let asked = ev["client_id"].as_str().unwrap_or_default();
                let reply = serde_json::json!({
                    "type": "message.send",
                    "session_id": session_id,
                    "client_id": format!("w{}a{index}r{k}", shared.config.worker),
                    "text": reply_text(asked, unix_nanos()),
                })
                .to_string();
                k += 1;
                conn.send_text(&reply)
                    .await
                    .map_err(|e| (true, format!("send: {e}")))?;
                shared.stats.borrow_mut().counters.agents.replied += 1;
            }
            "message.ack" => shared.stats.borrow_mut().counters.agents.acked += 1,
            "error" => {
                let mut s = shared.stats.borrow_mut();
                s.counters.agents.error_frames += 1;
                if s.counters.agents.first_error.is_none() {
                    s.counters.agents.first_error = Some(format!("error frame: {v}"));
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_minted_token_carries_the_agent_role() {
        let t = token(
            "0123456789abcdef0123456789abcdef",
            "a-1",
            Duration::from_secs(60),
        )
        .unwrap();
        let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
        v.set_required_spec_claims(&["exp"]);
        let data = jsonwebtoken::decode::<Value>(
            &t,
            &jsonwebtoken::DecodingKey::from_secret(b"0123456789abcdef0123456789abcdef"),
            &v,
        )
        .unwrap();
        assert_eq!(data.claims["role"], "agent");
        assert_eq!(data.claims["sub"], "a-1");
    }
}
