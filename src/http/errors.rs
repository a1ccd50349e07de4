//! The one error type of the HTTP edge: a status, a stable machine-readable code and a message,
//! rendered as `{"error": {"code", "message", "fields"?}}`.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde_json::json;

use crate::bridge::client::chain;
use crate::bridge::CallsError;
use crate::domain::validate::{FieldError, ValidationError};
use crate::store::StoreError;
use crate::ticket::TicketError;

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub fields: Vec<FieldError>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            fields: Vec::new(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "malformed_json", message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn validation(fields: Vec<FieldError>) -> Self {
        ValidationError { fields }.into()
    }

    pub fn field(field: &str, message: impl Into<String>) -> Self {
        Self::validation(vec![FieldError {
            field: field.into(),
            message: message.into(),
        }])
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status.as_u16(),
            self.code,
            self.message
        )
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        let mut error = json!({"code": self.code, "message": self.message});
        if !self.fields.is_empty() {
            error["fields"] = json!(self.fields);
        }
        let mut resp = HttpResponse::build(self.status);
        if self.status == StatusCode::UNAUTHORIZED {
            resp.insert_header(("WWW-Authenticate", "Bearer"));
        }
        // RFC 9110 §12.5.3: a body refused for its coding says which codings are accepted.
        if self.code == "unsupported_encoding" {
            resp.insert_header(("Accept-Encoding", "identity"));
        }
        // What is left of a body that timed out may never come: the connection cannot carry
        // another request.
        if self.status == StatusCode::REQUEST_TIMEOUT {
            resp.force_close();
        }
        resp.json(json!({ "error": error }))
    }
}

impl From<ValidationError> for ApiError {
    fn from(e: ValidationError) -> Self {
        Self {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            code: "validation_failed",
            message: e.to_string(),
            fields: e.fields,
        }
    }
}

impl From<TicketError> for ApiError {
    fn from(e: TicketError) -> Self {
        match e {
            TicketError::NotFound(_) => Self::not_found(e.to_string()),
            TicketError::StaleVersion { .. } => Self::new(
                StatusCode::PRECONDITION_FAILED,
                "stale_version",
                e.to_string(),
            ),
            TicketError::Transition(_) => {
                Self::new(StatusCode::CONFLICT, "invalid_transition", e.to_string())
            }
            TicketError::Validation(v) => v.into(),
            TicketError::Store(StoreError::AlreadyExists(_)) => {
                Self::new(StatusCode::CONFLICT, "already_exists", e.to_string())
            }
            TicketError::Store(StoreError::VersionConflict { .. }) => Self::new(
                StatusCode::PRECONDITION_FAILED,
                "stale_version",
                e.to_string(),
            ),
            TicketError::Store(inner) => inner.into(),
            TicketError::DjangoUnavailable(_) => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "django_unavailable",
                chain(&e),
            ),
            TicketError::LoadFailed(inner) => match &*inner {
                TicketError::DjangoUnavailable(_) => Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "django_unavailable",
                    chain(&*inner),
                ),
                _ => Self::unavailable(chain(&*inner)),
            },
            TicketError::Unavailable { .. } | TicketError::Loading => Self::unavailable(chain(&e)),
        }
    }
}

/// A Django call someone waited for: 503 in every case, the code saying why (the lane refused it at
/// once, or Django failed it).
impl From<CallsError> for ApiError {
    fn from(e: CallsError) -> Self {
        let code = match &e {
            CallsError::Busy { .. } => "django_busy",
            CallsError::CircuitOpen { .. } => "django_circuit_open",
            CallsError::NotConfigured => "django_not_configured",
            CallsError::Call(_) | CallsError::Dropped { .. } => "django_unavailable",
        };
        Self::new(StatusCode::SERVICE_UNAVAILABLE, code, chain(&e))
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        tracing::error!(error = %chain(&e), "storage error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "storage_error",
            "the ticket store failed; the change was not applied",
        )
    }
}
