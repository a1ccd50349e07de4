//! Who is connecting. Customers: an optional HS256 token in `session.start` identifies a known
//! customer (`sessions.jwt_secret`); without one the visitor is anonymous. Agents: an HS256 token
//! with `role` = "agent" is required at the handshake (`agents.jwt_secret`).

use jsonwebtoken::{decode, Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use super::session::state::CustomerInfo;
use crate::domain::ids::SessionId;

/// Why a token was refused.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("customer tokens are not accepted here (no sessions.jwt_secret is configured)")]
    NotConfigured,
    #[error("the token is not yet valid (its `nbf` is in the future)")]
    NotYetValid,
    #[error("the token is not valid")]
    Invalid(#[source] jsonwebtoken::errors::Error),
    #[error("the token is for role `{0}`, not a customer")]
    WrongRole(String),
}

#[derive(Debug, Deserialize)]
struct Claims {
    sub: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    email: String,
    #[serde(default)]
    role: Option<String>,
}

/// The customer of a new session: the token's, or an anonymous visitor.
pub fn customer(
    token: Option<&str>,
    secret: &str,
    session: SessionId,
) -> Result<CustomerInfo, AuthError> {
    let Some(token) = token else {
        return Ok(CustomerInfo {
            id: format!("anonymous:{session}"),
            name: "Visitor".into(),
            email: String::new(),
            known: false,
        });
    };
    if secret.is_empty() {
        return Err(AuthError::NotConfigured);
    }
    let mut validation = Validation::new(Algorithm::HS256);
    validation.set_required_spec_claims(&["exp", "sub"]);
    // `nbf`, when present, is held to the same leeway as `exp` (the library's default, 60 s).
    validation.validate_nbf = true;
    let data = decode::<Claims>(
        token,
        &DecodingKey::from_secret(secret.as_bytes()),
        &validation,
    )
    .map_err(|e| match e.kind() {
        jsonwebtoken::errors::ErrorKind::ImmatureSignature => AuthError::NotYetValid,
        _ => AuthError::Invalid(e),
    })?;
    let claims = data.claims;
    if let Some(role) = claims.role.filter(|r| r != "customer") {
        return Err(AuthError::WrongRole(role));
    }
    Ok(CustomerInfo {
        name: if claims.name.is_empty() {
            claims.sub.clone()
        } else {
            claims.name
        },
        id: claims.sub,
        email: claims.email,
        known: true,
    })
}

/// A signed-in agent, from their token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentIdentity {
    pub id: crate::domain::ids::AgentId,
    pub name: String,
    /// Unix seconds.
    pub expires_at: u64,
}

/// Why an agent's token was refused; each maps to the handshake's status.
#[derive(Debug, thiserror::Error)]
pub enum AgentAuthError {
    #[error("an agent token is required (Authorization: Bearer, or ?access_token=)")]
    Missing,
    #[error("agents cannot sign in here (no agents.jwt_secret is configured)")]
    NotConfigured,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not yet valid (its `nbf` is in the future)")]
    NotYetValid,
    #[error("the token is not valid")]
    Invalid(#[source] jsonwebtoken::errors::Error),
    #[error("the token is for role `{0}`, not an agent")]
    WrongRole(String),
}

impl AgentAuthError {
    /// The HTTP status and error code that refuse the handshake.
    pub fn status(&self) -> (u16, &'static str) {
        match self {
            Self::WrongRole(_) => (403, "forbidden"),
            Self::Expired => (401, "token_expired"),
            _ => (401, "unauthorized"),
        }
    }
}

#[derive(Debug, Deserialize)]
struct AgentClaims {
    sub: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    role: String,
    exp: u64,
}

/// Checks an agent's token: signed with `secret`, unexpired, `role` = "agent".
pub fn agent(token: Option<&str>, secret: &str) -> Result<AgentIdentity, AgentAuthError> {
    let token = token
        .filter(|t| !t.is_empty())
        .ok_or(AgentAuthError::Missing)?;
    if secret.is_empty() {
        return Err(AgentAuthError::NotConfigured);
    }
    let mut validation = Validation::new(Algorithm::HS256);
    validation.set_required_spec_claims(&["exp", "sub"]);
    validation.leeway = 0;
    // `nbf`, when present, is checked with the same (zero) leeway as `exp`.
    validation.validate_nbf = true;
    let data = decode::<AgentClaims>(
        token,
        &DecodingKey::from_secret(secret.as_bytes()),
        &validation,
    )
    .map_err(|e| match e.kind() {
        jsonwebtoken::errors::ErrorKind::ExpiredSignature => AgentAuthError::Expired,
        jsonwebtoken::errors::ErrorKind::ImmatureSignature => AgentAuthError::NotYetValid,
        _ => AgentAuthError::Invalid(e),
    })?;
    let claims = data.claims;
    if claims.role != "agent" {
        return Err(AgentAuthError::WrongRole(claims.role));
    }
    if claims.sub.is_empty() || claims.sub.len() > 128 {
        return Err(AgentAuthError::Missing);
    }
    Ok(AgentIdentity {
        name: if claims.name.is_empty() {
            claims.sub.clone()
        } else {
            claims.name
        },
        id: crate::domain::ids::AgentId::from(claims.sub.as_str()),
        expires_at: claims.exp,
    })
}

#[cfg(test)]
mod tests {
    use jsonwebtoken::{encode, EncodingKey, Header};
    use serde_json::json;

    use super::*;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn token(claims: serde_json::Value, secret: &str) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    }

    fn exp(offset: i64) -> i64 {
        chrono::Utc::now().timestamp() + offset
    }

    #[test]
    fn a_valid_token_names_the_customer_and_none_is_anonymous() {
        let t = token(
            json!({"sub": "c-42", "name": "Ada", "email": "ada@example.com", "exp": exp(60)}),
            SECRET,
        );
        let c = customer(Some(&t), SECRET, SessionId::new()).unwrap();
        assert_eq!(
            (c.id.as_str(), c.name.as_str(), c.known),
            ("c-42", "Ada", true)
        );
        let anon = customer(None, SECRET, SessionId::new()).unwrap();
        assert!(!anon.known && anon.id.starts_with("anonymous:"));
    }

    #[test]
    fn bad_tokens_are_refused() {
        let wrong = token(
            json!({"sub": "c", "exp": exp(60)}),
            "another-secret-another-secret-xx",
        );
        assert!(matches!(
            customer(Some(&wrong), SECRET, SessionId::new()),
            Err(AuthError::Invalid(_))
        ));
        let expired = token(json!({"sub": "c", "exp": exp(-3600)}), SECRET);
        assert!(matches!(
            customer(Some(&expired), SECRET, SessionId::new()),
            Err(AuthError::Invalid(_))
        ));
        let agent = token(json!({"sub": "a", "role": "agent", "exp": exp(60)}), SECRET);
        assert!(matches!(
            customer(Some(&agent), SECRET, SessionId::new()),
            Err(AuthError::WrongRole(_))
        ));
        assert!(matches!(
            customer(Some("x.y.z"), "", SessionId::new()),
            Err(AuthError::NotConfigured)
        ));
    }

    #[test]
    fn a_token_whose_nbf_is_in_the_future_is_refused_as_not_yet_valid() {
        // Customers: past the 60 s leeway is refused, within it and in the past is accepted.
        let later = token(
            json!({"sub": "c-42", "nbf": exp(600), "exp": exp(3600)}),
            SECRET,
        );
        let err = customer(Some(&later), SECRET, SessionId::new()).unwrap_err();
        assert!(matches!(err, AuthError::NotYetValid), "{err:?}");
        assert!(err.to_string().contains("not yet valid"), "{err}");
        for nbf in [exp(-60), exp(30)] {
            let now = token(json!({"sub": "c-42", "nbf": nbf, "exp": exp(3600)}), SECRET);
            assert!(customer(Some(&now), SECRET, SessionId::new()).is_ok());
        }

        // Agents: no leeway, a 401 `unauthorized` that says why.
        let later = token(
            json!({"sub": "a-1", "role": "agent", "nbf": exp(120), "exp": exp(3600)}),
            SECRET,
        );
        let err = agent(Some(&later), SECRET).unwrap_err();
        assert_eq!(err.status(), (401, "unauthorized"));
        assert!(err.to_string().contains("not yet valid"), "{err}");
        let now = token(
            json!({"sub": "a-1", "role": "agent", "nbf": exp(-5), "exp": exp(3600)}),
            SECRET,
        );
        assert!(agent(Some(&now), SECRET).is_ok());
    }

    #[test]
    fn agents_need_a_valid_unexpired_agent_token() {
        let ok = token(
            json!({"sub": "a-1", "name": "Grace", "role": "agent", "exp": exp(60)}),
            SECRET,
        );
        let a = agent(Some(&ok), SECRET).unwrap();
        assert_eq!((a.id.as_str(), a.name.as_str()), ("a-1", "Grace"));
        let status = |t: Option<&str>, secret: &str| agent(t, secret).unwrap_err().status();
        assert_eq!(status(None, SECRET), (401, "unauthorized"));
        assert_eq!(status(Some(&ok), ""), (401, "unauthorized"));
        let wrong = "another-secret-another-secret-xx";
        assert_eq!(status(Some(&ok), wrong), (401, "unauthorized"));
        let expired = token(
            json!({"sub": "a", "role": "agent", "exp": exp(-10)}),
            SECRET,
        );
        assert_eq!(status(Some(&expired), SECRET), (401, "token_expired"));
        let customer = token(
            json!({"sub": "c", "role": "customer", "exp": exp(60)}),
            SECRET,
        );
        assert_eq!(status(Some(&customer), SECRET), (403, "forbidden"));
        let no_role = token(json!({"sub": "c", "exp": exp(60)}), SECRET);
        assert_eq!(status(Some(&no_role), SECRET), (403, "forbidden"));
    }
}
