//! Who the customer is: an optional HS256 token in `session.start` identifies a known customer
//! (`sessions.jwt_secret`); without one the visitor is anonymous.

use jsonwebtoken::{decode, Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use super::session::state::CustomerInfo;
use crate::domain::ids::SessionId;

/// Why a token was refused.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("customer tokens are not accepted here (no sessions.jwt_secret is configured)")]
    NotConfigured,
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
    let data = decode::<Claims>(
        token,
        &DecodingKey::from_secret(secret.as_bytes()),
        &validation,
    )
    .map_err(AuthError::Invalid)?;
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
}
