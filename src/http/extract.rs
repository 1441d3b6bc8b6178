//! Our own JSON extractor, so every rejection (wrong content type, too large, malformed, wrong shape,
//! unknown field) answers with the same `{"code", "message"}` body and a stable code.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{StatusCode, header};
use serde::de::DeserializeOwned;

use crate::error::ApiError;

pub struct Json<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Json<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
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
            return Err(ApiError::UnsupportedMediaType);
        }
        let bytes = Bytes::from_request(request, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge
            } else {
                ApiError::InvalidBody("could not read the body".into())
            }
        })?;
        parse(&bytes).map(Json)
    }
}

/// Parses a JSON body, sorting serde's errors into our codes.
pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
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
    }
}
