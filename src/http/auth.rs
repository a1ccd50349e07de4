//! API-key authentication with scopes. Keys come from `auth.api_keys`; with none configured every
//! request is allowed (the server then listens on loopback only, enforced at config load).

use actix_web::http::StatusCode;
use actix_web::HttpRequest;

use super::errors::ApiError;
use crate::config::{ApiKey, Scope};
use crate::domain::principal::Principal;

#[derive(Debug, Clone)]
pub struct Auth {
    keys: Vec<ApiKey>,
    max_name_chars: usize,
}

/// Who is calling: the key (by name), and the person it acts for when `X-Actor` names one.
#[derive(Debug, Clone)]
pub struct Caller {
    pub actor: Principal,
}

impl Auth {
    pub fn new(keys: Vec<ApiKey>, max_name_chars: usize) -> Self {
        Self {
            keys,
            max_name_chars,
        }
    }

    /// Checks the bearer key and that it grants `scope`.
    pub fn authorize(&self, req: &HttpRequest, scope: Scope) -> Result<Caller, ApiError> {
        let key_name = if self.keys.is_empty() {
            None
        } else {
            let presented = bearer(req).ok_or_else(|| {
                ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "unauthorized",
                    "missing `Authorization: Bearer <key>` header",
                )
            })?;
            let key = self
                .keys
                .iter()
                .find(|k| constant_time_eq(k.key.as_bytes(), presented.as_bytes()))
                .ok_or_else(|| {
                    ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "unknown API key")
                })?;
            if !key.scopes.contains(&scope) {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "forbidden",
                    format!("API key `{}` lacks the `{scope:?}` scope", key.name).to_lowercase(),
                ));
            }
            Some(key.name.clone())
        };
        let on_behalf_of = match req.headers().get("X-Actor").map(|v| v.to_str()) {
            None => None,
            Some(Ok(v)) if !v.trim().is_empty() && v.chars().count() <= self.max_name_chars => {
                Some(v.trim().to_string())
            }
            Some(_) => {
                return Err(ApiError::field(
                    "X-Actor",
                    format!("must be 1 to {} visible characters", self.max_name_chars),
                ))
            }
        };
        let actor = match (key_name, on_behalf_of) {
            (Some(key), on_behalf_of) => Principal::ApiKey { key, on_behalf_of },
            // No keys configured: a named person is recorded by name, as a keyless caller.
            (None, Some(person)) => Principal::Anonymous.on_behalf_of(person),
            (None, None) => Principal::Anonymous,
        };
        Ok(Caller { actor })
    }
}

/// The token of an `Authorization: Bearer <token>` header.
pub fn bearer(req: &HttpRequest) -> Option<&str> {
    let value = req.headers().get("Authorization")?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

pub use crate::domain::secret::constant_time_eq;
