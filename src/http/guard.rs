//! What stands between a client and the campaign API: bearer tokens, and overload protection.
//! Overload is refused at once (503 + Retry-After) rather than queued: under a flash sale a
//! queue only turns into latency and then timeouts for everybody.

use std::{sync::Arc, time::Duration};

use axum::{
    extract::{Request, State},
    http::header,
    middleware::Next,
    response::{IntoResponse, Response},
};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::sync::Semaphore;

use super::error::ApiError;

/// A bearer token that guards some routes, kept as its SHA-256 digest.
#[derive(Clone)]
pub struct Token(Arc<[u8]>);

impl Token {
    /// `None` for an unset or empty setting: an empty token would guard nothing.
    pub fn from_setting(value: Option<&str>) -> Option<Self> {
        value
            .filter(|value| !value.is_empty())
            .map(|value| Self(Sha256::digest(value).to_vec().into()))
    }

    /// Whether an `Authorization` header value carries this token (the scheme name is
    /// case-insensitive, RFC 9110). Digests of equal length are compared in constant time, so
    /// the time taken reveals neither how much of a guess was right nor the token's length.
    fn admits(&self, authorization: &[u8]) -> bool {
        let Some((scheme, presented)) = authorization.split_at_checked(7) else {
            return false;
        };
        let presented = Sha256::digest(presented);
        scheme.eq_ignore_ascii_case(b"bearer ") && bool::from(presented.ct_eq(&self.0))
    }
}

/// Middleware: only requests with `Authorization: Bearer <token>` pass.
pub async fn require_token(State(token): State<Token>, request: Request, next: Next) -> Response {
    let authorization = request.headers().get(header::AUTHORIZATION);
    if authorization.is_some_and(|value| token.admits(value.as_bytes())) {
        next.run(request).await
    } else {
        ApiError::Unauthorized.into_response()
    }
}

/// How many requests may be in flight at once, and how long each may take.
#[derive(Clone)]
pub struct Limits {
    permits: Arc<Semaphore>,
    timeout: Duration,
}

impl Limits {
    pub fn new(concurrency: usize, timeout: Duration) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(concurrency)),
            timeout,
        }
    }
}

/// Middleware: refuses a request when the limit is reached, and answers 503 when one runs past
/// the timeout. A redeem cut short may still have been decided; the client's retry with the same
/// idempotency key gets the decision.
pub async fn limit(State(limits): State<Limits>, request: Request, next: Next) -> Response {
    let Ok(_permit) = limits.permits.try_acquire() else {
        return ApiError::Overloaded.into_response();
    };
    match tokio::time::timeout(limits.timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::Timeout.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_exact_bearer_token_is_admitted() {
        let token = Token::from_setting(Some("s3cret")).unwrap();
        assert!(token.admits(b"Bearer s3cret"));
        assert!(!token.admits(b"Bearer s3cre"));
        assert!(!token.admits(b"Bearer s3cret "));
        assert!(token.admits(b"bearer s3cret"));
        assert!(!token.admits(b"Basic s3cret"));
        assert!(!token.admits(b"s3cret"));
        assert!(!token.admits(b""));
    }

    #[test]
    fn an_empty_token_guards_nothing() {
        assert!(Token::from_setting(Some("")).is_none());
        assert!(Token::from_setting(None).is_none());
    }
}
