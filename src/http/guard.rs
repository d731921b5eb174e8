//! What stands between a client and the campaign API: bearer tokens, and overload protection.
//! Overload is refused at once (503 + Retry-After) rather than queued: under a flash sale a
//! queue only turns into latency and then timeouts for everybody.

use std::{
    convert::Infallible,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
    time::Duration,
};

use axum::{
    extract::{Request, State},
    http::header,
    middleware::Next,
    response::{IntoResponse, Response},
};
use pin_project_lite::pin_project;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::{
    sync::{OwnedSemaphorePermit, Semaphore},
    time::Timeout,
};
use tower::{Layer, Service};

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

/// How many requests may be in flight at once, and how long each may take: the layer of
/// [`Limited`].
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

impl<S> Layer<S> for Limits {
    type Service = Limited<S>;

    fn layer(&self, inner: S) -> Limited<S> {
        Limited {
            inner,
            limits: self.clone(),
        }
    }
}

/// Refuses a request when the limit is reached, and answers 503 when one runs past the timeout.
/// A redeem cut short may still have been decided; the client's retry with the same idempotency
/// key gets the decision. A hand-written service, as it wraps every campaign API request.
#[derive(Clone)]
pub struct Limited<S> {
    inner: S,
    limits: Limits,
}

impl<S> Service<Request> for Limited<S>
where
    S: Service<Request, Response = Response, Error = Infallible>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = LimitedFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        match self.limits.permits.clone().try_acquire_owned() {
            Ok(permit) => LimitedFuture::Admitted {
                inner: tokio::time::timeout(self.limits.timeout, self.inner.call(request)),
                permit,
            },
            Err(_) => LimitedFuture::Refused,
        }
    }
}

pin_project! {
    /// The response of a limited request; the permit is returned when it is dropped.
    #[project = LimitedProjection]
    pub enum LimitedFuture<F> {
        Admitted {
            #[pin]
            inner: Timeout<F>,
            permit: OwnedSemaphorePermit,
        },
        Refused,
    }
}

impl<F> Future for LimitedFuture<F>
where
    F: Future<Output = Result<Response, Infallible>>,
{
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let response = match self.project() {
            LimitedProjection::Admitted { inner, .. } => match ready!(inner.poll(cx)) {
                Ok(result) => return Poll::Ready(result),
                Err(_) => ApiError::Timeout.into_response(),
            },
            LimitedProjection::Refused => ApiError::Overloaded.into_response(),
        };
        Poll::Ready(Ok(response))
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
