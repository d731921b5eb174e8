//! Extractors that turn every malformed request into an `ApiError` before a handler runs, so a bad
//! request can never reach Redis or PostgreSQL.

use std::convert::Infallible;

use axum::{
    body::Bytes,
    extract::{FromRequest, FromRequestParts, Path, Request},
    http::{HeaderName, HeaderValue, header, request::Parts},
};
use serde::de::DeserializeOwned;

use super::error::ApiError;
use crate::domain::CampaignId;

/// A JSON body: `application/json` (or `+json`) content type, at most `BODY_LIMIT` bytes, parsed
/// with the path of the failing field so the error can name it.
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        if !is_json(req.headers().get(header::CONTENT_TYPE)) {
            return Err(ApiError::UnsupportedMediaType);
        }
        // Read already, and bounded, before the request was admitted (`guard::Limited`).
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|rejection| ApiError::MalformedJson(rejection.body_text()))?;
        // serde would take a JSON array for a struct, field by position: only objects are bodies.
        if bytes.trim_ascii_start().first() != Some(&b'{') {
            return Err(
                match serde_json::from_slice::<serde::de::IgnoredAny>(&bytes) {
                    Ok(_) => ApiError::InvalidBody("the body must be a JSON object".into()),
                    Err(error) => malformed(&error),
                },
            );
        }
        let mut deserializer = serde_json::Deserializer::from_slice(&bytes);
        let value = serde_path_to_error::deserialize(&mut deserializer).map_err(|error| {
            // A body that is not one JSON value is malformed, whatever its first value lacks.
            if let Err(syntax) = serde_json::from_slice::<serde::de::IgnoredAny>(&bytes) {
                return malformed(&syntax);
            }
            let field = error.path().to_string();
            let inner = error.into_inner();
            let detail = without_position(&inner.to_string()).to_owned();
            match inner.classify() {
                serde_json::error::Category::Data if field != "." => {
                    ApiError::InvalidField { field, detail }
                }
                serde_json::error::Category::Data => ApiError::InvalidBody(detail),
                _ => ApiError::MalformedJson(detail),
            }
        })?;
        // Only white space may follow the value.
        deserializer.end().map_err(|error| malformed(&error))?;
        Ok(ApiJson(value))
    }
}

fn malformed(error: &serde_json::Error) -> ApiError {
    ApiError::MalformedJson(without_position(&error.to_string()).to_owned())
}

fn is_json(content_type: Option<&header::HeaderValue>) -> bool {
    let Some(Ok(value)) = content_type.map(|v| v.to_str()) else {
        return false;
    };
    let essence = value
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// serde_json appends " at line L column C"; the position is noise in a one-line error.
fn without_position(message: &str) -> &str {
    match message.rfind(" at line ") {
        Some(at) => &message[..at],
        None => message,
    }
}

/// The `{id}` path segment, parsed as a campaign id (400 otherwise).
pub struct CampaignPath(pub CampaignId);

impl<S: Send + Sync> FromRequestParts<S> for CampaignPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Path(id) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|_| ApiError::InvalidCampaignId)?;
        CampaignId::parse(&id)
            .map(CampaignPath)
            .map_err(|_| ApiError::InvalidCampaignId)
    }
}

/// The `Idempotency-Key` header, unchecked: the handler checks it after the body, so a request
/// with both wrong is told about the body. Taken alone, not as a copy of every header.
pub struct KeyHeader(pub Option<HeaderValue>);

/// The IETF draft's request header for the idempotency key.
static IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

impl<S: Send + Sync> FromRequestParts<S> for KeyHeader {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(KeyHeader(parts.headers.get(&IDEMPOTENCY_KEY).cloned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_content_types_are_recognised() {
        let ok = [
            "application/json",
            "Application/JSON; charset=utf-8",
            "application/merge-patch+json",
        ];
        for value in ok {
            assert!(
                is_json(Some(&header::HeaderValue::from_static(value))),
                "{value}"
            );
        }
        let bad = ["text/plain", "application/x-www-form-urlencoded", "json"];
        for value in bad {
            assert!(
                !is_json(Some(&header::HeaderValue::from_static(value))),
                "{value}"
            );
        }
        assert!(!is_json(None));
    }

    #[test]
    fn the_position_suffix_is_dropped() {
        assert_eq!(
            without_position("missing field `x` at line 1 column 2"),
            "missing field `x`"
        );
        assert_eq!(without_position("plain"), "plain");
    }
}
