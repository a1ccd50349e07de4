//! Reading request bodies and query strings at the edge: size limit (413), media type, charset and
//! content coding (415: JSON in UTF-8, uncompressed), a body that does not arrive in time (408), JSON syntax (400) and shape (422, naming the field), so
//! handlers only see typed values.

use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest};
use futures_util::StreamExt;
use serde::de::DeserializeOwned;

use super::errors::ApiError;

pub async fn read_json<T: DeserializeOwned>(
    req: &HttpRequest,
    mut payload: web::Payload,
    limit: usize,
) -> Result<T, ApiError> {
    let content_type = req
        .headers()
        .get("Content-Type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mut parts = content_type.split(';');
    let mime = parts.next().unwrap_or("").trim();
    if !(mime.eq_ignore_ascii_case("application/json") || mime.ends_with("+json")) {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send the body as `Content-Type: application/json`",
        ));
    }
    if let Some(charset) = charset(parts) {
        if !charset.eq_ignore_ascii_case("utf-8") {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_charset",
                format!("charset `{charset}` is not accepted: send the body as UTF-8"),
            ));
        }
    }
    // No decoder is configured for any coding: a compressed body would only be misread as JSON.
    for coding in req.headers().get_all(header::CONTENT_ENCODING) {
        let coding = coding.to_str().unwrap_or("?");
        if coding
            .split(',')
            .any(|c| !c.trim().eq_ignore_ascii_case("identity"))
        {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_encoding",
                format!("Content-Encoding `{coding}` is not accepted: send the body uncompressed"),
            ));
        }
    }
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("request body exceeds {limit} bytes"),
        )
    };
    let declared = req
        .headers()
        .get("Content-Length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large());
    }
    let timeout = super::body_timeout(req);
    // One deadline for the whole body, not one per chunk: a client dripping a byte at a time must
    // not hold the connection any longer than one that stalls.
    let deadline = tokio::time::Instant::now() + timeout;
    let mut body = web::BytesMut::with_capacity(declared.unwrap_or(1024).min(limit));
    loop {
        let Ok(next) = tokio::time::timeout_at(deadline, payload.next()).await else {
            return Err(ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "body_timeout",
                format!(
                    "request body not received within {} ms",
                    timeout.as_millis()
                ),
            ));
        };
        let Some(chunk) = next else { break };
        let chunk =
            chunk.map_err(|e| ApiError::bad_request(format!("could not read body: {e}")))?;
        if body.len() + chunk.len() > limit {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    parse_json(&body)
}

/// The `charset` parameter among a media type's parameters, unquoted.
fn charset<'a>(params: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    params
        .filter_map(|p| p.split_once('='))
        .find_map(|(name, value)| {
            name.trim()
                .eq_ignore_ascii_case("charset")
                .then(|| value.trim().trim_matches('"'))
        })
}

/// Syntax errors are 400; well-formed JSON of the wrong shape is 422 naming the field.
pub fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    // Every body is an object: serde would read an array into a struct by position, past the
    // unknown-field check.
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    if first.is_some_and(|b| *b != b'{') {
        if serde_json::from_slice::<serde_json::Value>(body).is_err() {
            return Err(ApiError::bad_request("request body is not valid JSON"));
        }
        return Err(ApiError::field("body", "must be a JSON object"));
    }
    // A good body is parsed once, straight into `T`; only a bad one is parsed again to say which
    // class of error it is and where.
    let first = match serde_json::from_slice(body) {
        Ok(value) => return Ok(value),
        Err(e) => e,
    };
    let value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("request body is not valid JSON: {e}")))?;
    match serde_path_to_error::deserialize::<_, T>(value) {
        // Only what a JSON value forgets made the body fail: a key given twice (a value keeps the
        // last). That is refused, not silently resolved.
        Ok(_) => {
            let message = first.to_string();
            Err(ApiError::field(&field_name(".", &message), message))
        }
        Err(e) => {
            let path = e.path().to_string();
            let message = e.inner().to_string();
            Err(ApiError::field(&field_name(&path, &message), message))
        }
    }
}

/// Parses the query string into `T` (422 naming the parameter on failure).
pub fn parse_query<T: DeserializeOwned>(req: &HttpRequest) -> Result<T, ApiError> {
    serde_urlencoded::from_str(req.query_string()).map_err(|e| {
        let message = e.to_string();
        ApiError::field(&field_name(".", &message), message)
    })
}

/// serde reports a missing or unknown field at the parent path; the name is in the message.
fn field_name(path: &str, message: &str) -> String {
    if path != "." && !path.is_empty() {
        return path.to_string();
    }
    message
        .split('`')
        .nth(1)
        .map(str::to_string)
        .unwrap_or_else(|| "body".to_string())
}
