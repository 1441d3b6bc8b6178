//! Our own JSON extractor, so every rejection (wrong content type, too large, malformed, wrong shape,
//! unknown field) answers with the same `{"code", "message"}` body and a stable code.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use serde::de::DeserializeOwned;

use super::App;
use crate::error::ApiError;

pub struct Json<T>(pub T);

impl<T: DeserializeOwned> FromRequest<Arc<App>> for Json<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, app: &Arc<App>) -> Result<Self, ApiError> {
        let is_json = request
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|v| {
                let v = v.trim();
                v.eq_ignore_ascii_case("application/json") || (v.starts_with("application/") && v.ends_with("+json"))
            });
        if !is_json {
            return Err(ApiError::UnsupportedMediaType("application/json"));
        }
        // A body that trickles in (or never completes) holds a connection and a task: it gets a deadline.
        let deadline = Duration::from_secs(app.config.body_read_timeout_seconds);
        let bytes = tokio::time::timeout(deadline, Bytes::from_request(request, app))
            .await
            .map_err(|_| ApiError::RequestTimeout)?
            .map_err(|rejection| {
                if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::PayloadTooLarge
                } else {
                    ApiError::InvalidBody("could not read the body".into())
                }
            })?;
        parse(&bytes).map(Json)
    }
}

/// A binary body of the given content type, at most `limit` bytes, within the body deadline (for the
/// few endpoints that take bytes rather than JSON; they set their own size limit).
pub async fn binary_body(
    request: Request,
    content_type: &'static str,
    limit: usize,
    deadline: Duration,
) -> Result<Bytes, ApiError> {
    let declared =
        request.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).and_then(|v| v.split(';').next());
    if !declared.is_some_and(|v| v.trim().eq_ignore_ascii_case(content_type)) {
        return Err(ApiError::UnsupportedMediaType(content_type));
    }
    let read = axum::body::to_bytes(request.into_body(), limit);
    match tokio::time::timeout(deadline, read).await {
        Err(_) => Err(ApiError::RequestTimeout),
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(err)) => {
            if err.into_inner().is::<http_body_util::LengthLimitError>() {
                Err(ApiError::PayloadTooLarge)
            } else {
                Err(ApiError::InvalidBody("could not read the body".into()))
            }
        }
    }
}

/// Path parameters; a parameter that does not decode (say, invalid UTF-8) is our `invalid_path` error.
pub struct Path<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for Path<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(value)) => Ok(Path(value)),
            Err(_) => Err(ApiError::InvalidPath),
        }
    }
}

/// The query string; one that does not decode (a field twice, a wrong type) is our `invalid_query` error.
pub struct Query<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(value)) => Ok(Query(value)),
            Err(_) => Err(ApiError::InvalidQuery),
        }
    }
}

/// Parses a JSON body, which must be an object, sorting serde's errors into our codes.
pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    // serde's derived structs also accept a JSON array of the fields in order; a body must be an object.
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(match serde_json::from_slice::<serde::de::IgnoredAny>(bytes) {
            Ok(_) => ApiError::InvalidBody("the body must be a JSON object".into()),
            Err(err) => ApiError::MalformedJson(err.to_string()),
        });
    }
    serde_json::from_slice(bytes).map_err(|err| {
        use serde_json::error::Category;
        let text = err.to_string();
        match err.classify() {
            Category::Syntax | Category::Eof | Category::Io => ApiError::MalformedJson(text),
            Category::Data if text.starts_with("unknown field") => ApiError::UnknownField(text),
            Category::Data => ApiError::InvalidBody(text),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Sample {
        a: u32,
    }

    #[test]
    fn serde_errors_map_to_codes() {
        assert_eq!(parse::<Sample>(b"{").unwrap_err().code(), "malformed_json");
        assert_eq!(parse::<Sample>(b"{\"a\": 1, \"phone\": \"x\"}").unwrap_err().code(), "unknown_field");
        assert_eq!(parse::<Sample>(b"{\"a\": \"x\"}").unwrap_err().code(), "invalid_body");
        assert_eq!(parse::<Sample>(b"{}").unwrap_err().code(), "invalid_body");
        assert!(parse::<Sample>(b"{\"a\": 1}").is_ok());
        assert_eq!(parse::<Sample>(b" [1]").unwrap_err().code(), "invalid_body", "an array is not an object");
        assert_eq!(parse::<Sample>(b"7").unwrap_err().code(), "invalid_body");
        assert_eq!(parse::<Sample>(b"").unwrap_err().code(), "malformed_json");
        assert_eq!(parse::<Sample>(b"[1,").unwrap_err().code(), "malformed_json");
    }
}
