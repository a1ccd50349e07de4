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
            let Some(presented) = bearer(req) else {
                refused(req, 401, None, scope, "no API key");
                return Err(ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "unauthorized",
                    "missing `Authorization: Bearer <key>` header",
                ));
            };
            let Some(key) = self
                .keys
                .iter()
                .find(|k| constant_time_eq(k.key.as_bytes(), presented.as_bytes()))
            else {
                // The presented secret is never logged: it may be a real key sent to the wrong place.
                refused(req, 401, None, scope, "unknown API key");
                return Err(ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "unauthorized",
                    "unknown API key",
                ));
            };
            if !key.scopes.contains(&scope) {
                refused(req, 403, Some(&key.name), scope, "API key lacks the scope");
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "forbidden",
                    format!(
                        "API key `{}` lacks the `{}` scope",
                        key.name,
                        scope.as_str()
                    ),
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

/// Logs a refused request at INFO: an operator looking into a 401 or 403 needs the key's name
/// (when one matched) and what was asked, and a probe from outside is not a server error.
fn refused(req: &HttpRequest, status: u16, key: Option<&str>, scope: Scope, why: &str) {
    tracing::info!(
        status,
        key = key.unwrap_or(""),
        scope = scope.as_str(),
        method = %req.method(),
        path = req.path(),
        peer = req.peer_addr().map(|a| a.to_string()).unwrap_or_default(),
        "request refused: {why}"
    );
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

#[cfg(test)]
mod tests {
    use std::io;
    use std::sync::{Arc, Mutex};

    use actix_web::test::TestRequest;

    use super::*;

    /// Log lines written while a test's subscriber is the default.
    #[derive(Clone, Default)]
    struct Logs(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Logs {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Logs {
        type Writer = Logs;

        fn make_writer(&'a self) -> Logs {
            self.clone()
        }
    }

    fn request(key: Option<&str>) -> HttpRequest {
        let req = TestRequest::default().uri("/api/v1/tickets");
        match key {
            Some(k) => req.insert_header(("Authorization", format!("Bearer {k}"))),
            None => req,
        }
        .to_http_request()
    }

    /// The tests here log through the same callsites; run one at a time, a test that logs with no
    /// subscriber could otherwise have tracing cache those callsites as never enabled just as the
    /// logging test looks at them.
    static LOGGING: std::sync::Mutex<()> = std::sync::Mutex::new(());

    /// One key, `dashboard`, that may read.
    fn dashboard() -> Auth {
        Auth::new(
            vec![ApiKey {
                name: "dashboard".into(),
                key: "read-key-0123456789".into(),
                key_env: None,
                scopes: vec![Scope::Read],
            }],
            254,
        )
    }

    #[test]
    fn only_the_exact_key_is_accepted() {
        let _one_at_a_time = LOGGING.lock().unwrap_or_else(|e| e.into_inner());
        let auth = dashboard();
        let caller = auth
            .authorize(&request(Some("read-key-0123456789")), Scope::Read)
            .unwrap();
        assert_eq!(caller.actor.identity(), "dashboard");
        for near_miss in [
            "read-key-0123456788",
            "read-key-012345678",
            "read-key-01234567890",
            "READ-KEY-0123456789",
        ] {
            let refused = auth.authorize(&request(Some(near_miss)), Scope::Read);
            assert_eq!(
                refused.unwrap_err().status,
                StatusCode::UNAUTHORIZED,
                "{near_miss}"
            );
        }
    }

    #[test]
    fn refusals_are_logged_at_info_with_the_key_name_and_never_a_secret() {
        let _one_at_a_time = LOGGING.lock().unwrap_or_else(|e| e.into_inner());
        let auth = dashboard();
        let logs = Logs::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(logs.clone())
            .with_max_level(tracing::Level::INFO)
            .with_ansi(false)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            // Interest cached while no subscriber listened must not hide these events.
            tracing::callsite::rebuild_interest_cache();
            let forbidden = auth.authorize(&request(Some("read-key-0123456789")), Scope::Write);
            assert_eq!(forbidden.unwrap_err().status, StatusCode::FORBIDDEN);
            let unknown = auth.authorize(&request(Some("guessed-secret-0000")), Scope::Read);
            assert_eq!(unknown.unwrap_err().status, StatusCode::UNAUTHORIZED);
            let missing = auth.authorize(&request(None), Scope::Read);
            assert_eq!(missing.unwrap_err().status, StatusCode::UNAUTHORIZED);
        });
        let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<_> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(lines.iter().all(|l| l.contains(" INFO ")), "{text}");
        assert!(
            lines[0].contains("key=\"dashboard\"") || lines[0].contains("key=dashboard"),
            "{text}"
        );
        assert!(lines[0].contains("status=403"), "{text}");
        assert!(lines[1].contains("unknown API key"), "{text}");
        assert!(lines[2].contains("no API key"), "{text}");
        assert!(
            !text.contains("read-key") && !text.contains("guessed-secret"),
            "{text}"
        );
    }
}
