//! What stands between a client and the campaign API: bearer tokens, the body read before any
//! work, and overload protection. Overload is refused at once (503 + Retry-After) rather than
//! queued: under a flash sale a queue only turns into latency and then timeouts for everybody.

use std::{
    convert::Infallible,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
    time::Duration,
};

use axum::{
    body::Body,
    extract::{Request, State},
    http::{HeaderValue, header, request::Parts},
    middleware::Next,
    response::{IntoResponse, Response},
};
use http_body_util::{BodyExt, LengthLimitError, combinators::Collect};
use hyper::body::Body as _;
use pin_project_lite::pin_project;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::{
    sync::{OwnedSemaphorePermit, Semaphore},
    time::{Instant, Sleep},
};
use tower::{Layer, Service};

use super::{BODY_LIMIT, error::ApiError};

/// A bearer token that guards some routes, kept as its SHA-256 digest.
#[derive(Clone)]
pub struct Token(Arc<[Vec<u8>]>);

impl Token {
    /// `None` for an unset or empty setting: an empty token would guard nothing.
    pub fn from_setting(value: Option<&str>) -> Option<Self> {
        value
            .filter(|value| !value.is_empty())
            .map(|value| Self([Sha256::digest(value).to_vec()].into()))
    }

    /// A guard that admits this token or `other`.
    pub fn or(self, other: Option<Token>) -> Self {
        let digests = self
            .0
            .iter()
            .chain(other.iter().flat_map(|other| other.0.iter()));
        Self(digests.cloned().collect())
    }

    /// Whether an `Authorization` header value carries this token: the scheme `Bearer` in any
    /// case, one or more spaces, the token (RFC 9110). Digests of equal length are compared in
    /// constant time, so the time taken reveals neither how much of a guess was right nor the
    /// token's length.
    fn admits(&self, authorization: &[u8]) -> bool {
        credentials(authorization, b"bearer").is_some_and(|token| self.matches(token))
    }

    /// Whether an `Authorization` header value is HTTP Basic with this token as the password
    /// (any user name): what a browser sends once its user typed the token into its prompt.
    fn admits_password(&self, authorization: &[u8]) -> bool {
        use base64::Engine;
        let Some(encoded) = credentials(authorization, b"basic") else {
            return false;
        };
        let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(encoded) else {
            return false;
        };
        let password = decoded.splitn(2, |&byte| byte == b':').nth(1);
        password.is_some_and(|password| self.matches(password))
    }

    /// Every digest compared, so the time taken does not tell which one matched.
    fn matches(&self, presented: &[u8]) -> bool {
        let presented = Sha256::digest(presented);
        let matched = self
            .0
            .iter()
            .fold(subtle::Choice::from(0), |matched, digest| {
                matched | presented.ct_eq(digest.as_slice())
            });
        bool::from(matched)
    }
}

/// The credentials of an `Authorization` header value of `scheme` (lowercase; matched in any
/// case): the scheme, one or more spaces, the credentials (RFC 9110).
fn credentials<'a>(authorization: &'a [u8], scheme: &[u8]) -> Option<&'a [u8]> {
    let (given, rest) = authorization.split_at_checked(scheme.len())?;
    let presented = rest.trim_ascii_start();
    (given.eq_ignore_ascii_case(scheme) && presented.len() < rest.len()).then_some(presented)
}

/// Middleware for what a browser opens (the dashboard): the token as a bearer token, or as the
/// password of HTTP Basic authentication, which a browser asks its user for (the 401 says so)
/// and then sends with every request of the page.
pub async fn require_token_or_password(
    State(token): State<Token>,
    request: Request,
    next: Next,
) -> Response {
    let authorization = request.headers().get(header::AUTHORIZATION);
    if authorization.is_some_and(|value| {
        token.admits(value.as_bytes()) || token.admits_password(value.as_bytes())
    }) {
        return next.run(request).await;
    }
    let mut response = ApiError::Unauthorized.into_response();
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"voucher-gateway\", charset=\"UTF-8\""),
    );
    response
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

/// How a campaign API request is admitted: its body read first (within the body limit and a
/// body-read timeout of its own), then a concurrency permit taken, then the request timed. A
/// client that sends its body slowly holds a connection (bounded by the connection cap and the
/// edge's timeouts), never a permit meant for the Redis and PostgreSQL work. The layer of
/// [`Limited`].
#[derive(Clone)]
pub struct Limits {
    permits: Arc<Semaphore>,
    timeout: Duration,
    body_timeout: Duration,
}

impl Limits {
    pub fn new(concurrency: usize, timeout: Duration, body_timeout: Duration) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(concurrency)),
            timeout,
            body_timeout,
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

/// Reads the body, then refuses the request when the concurrency limit is reached, and answers
/// 503 when it runs past the timeout. A redeem cut short may still have been decided; the
/// client's retry with the same idempotency key gets the decision. A hand-written service, as it
/// wraps every campaign API request.
#[derive(Clone)]
pub struct Limited<S> {
    inner: S,
    limits: Limits,
}

impl<S> Service<Request> for Limited<S>
where
    S: Service<Request, Response = Response, Error = Infallible> + Clone,
{
    type Response = Response;
    type Error = Infallible;
    type Future = LimitedFuture<S>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        // One timer per request: the body's deadline first, then the request's.
        let timer = tokio::time::sleep(self.limits.body_timeout);
        // hyper decodes `chunked` only; a body in another coding would be read as what it is not.
        if has_unknown_transfer_coding(request.headers()) {
            let unknown = ApiError::TransferCodingNotImplemented;
            return LimitedFuture::answered(timer, &self.limits, unknown);
        }
        // A body that cannot be taken is refused before it is waited for (or invited with
        // `100 Continue`): hyper knows its declared length.
        if request.body().size_hint().lower() > BODY_LIMIT as u64 {
            let too_large = ApiError::PayloadTooLarge { limit: BODY_LIMIT };
            return LimitedFuture::answered(timer, &self.limits, too_large);
        }
        let (parts, body) = request.into_parts();
        // The clone is the one left for the next call: `inner` is the one made ready.
        let clone = self.inner.clone();
        let ready = std::mem::replace(&mut self.inner, clone);
        LimitedFuture {
            timer,
            stage: Stage::Reading {
                body: http_body_util::Limited::new(body, BODY_LIMIT).collect(),
                parts: Some(parts),
                inner: Some(ready),
            },
            limits: self.limits.clone(),
        }
    }
}

pin_project! {
    /// The response of a limited request; the permit is returned when it is dropped.
    pub struct LimitedFuture<S>
    where
        S: Service<Request>,
    {
        #[pin]
        timer: Sleep,
        #[pin]
        stage: Stage<S>,
        limits: Limits,
    }
}

pin_project! {
    #[project = StageProjection]
    enum Stage<S>
    where
        S: Service<Request>,
    {
        Reading {
            #[pin]
            body: Collect<http_body_util::Limited<Body>>,
            parts: Option<Parts>,
            inner: Option<S>,
        },
        Admitted {
            #[pin]
            inner: S::Future,
            permit: OwnedSemaphorePermit,
        },
        Answered {
            response: Option<Response>,
        },
    }
}

impl<S: Service<Request>> LimitedFuture<S> {
    fn answered(timer: Sleep, limits: &Limits, error: ApiError) -> Self {
        Self {
            timer,
            stage: Stage::Answered {
                response: Some(error.into_response()),
            },
            limits: limits.clone(),
        }
    }
}

impl<S> Future for LimitedFuture<S>
where
    S: Service<Request, Response = Response, Error = Infallible>,
{
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            let next = match this.stage.as_mut().project() {
                StageProjection::Reading { body, parts, inner } => {
                    let body = match body.poll(cx) {
                        Poll::Ready(Ok(collected)) => collected.to_bytes(),
                        Poll::Ready(Err(error)) => return Poll::Ready(Ok(body_error(&*error))),
                        Poll::Pending => {
                            ready!(this.timer.as_mut().poll(cx));
                            let timeout = this.limits.body_timeout;
                            let timed_out = ApiError::BodyTimeout { timeout };
                            return Poll::Ready(Ok(timed_out.into_response()));
                        }
                    };
                    let parts = parts.take().expect("a body is read once");
                    let mut inner = inner.take().expect("a body is read once");
                    let Ok(permit) = this.limits.permits.clone().try_acquire_owned() else {
                        return Poll::Ready(Ok(ApiError::Overloaded.into_response()));
                    };
                    let deadline = Instant::now() + this.limits.timeout;
                    this.timer.as_mut().reset(deadline);
                    let request = Request::from_parts(parts, Body::from(body));
                    Stage::Admitted {
                        inner: inner.call(request),
                        permit,
                    }
                }
                StageProjection::Admitted { inner, .. } => {
                    if let Poll::Ready(Ok(response)) = inner.poll(cx) {
                        return Poll::Ready(Ok(response));
                    }
                    ready!(this.timer.as_mut().poll(cx));
                    return Poll::Ready(Ok(ApiError::Timeout.into_response()));
                }
                StageProjection::Answered { response } => {
                    return Poll::Ready(Ok(response.take().expect("answered once")));
                }
            };
            this.stage.set(next);
        }
    }
}

/// Whether the request's body comes in a transfer coding other than `chunked` (RFC 9112 wants
/// 501 for a coding the server does not understand).
fn has_unknown_transfer_coding(headers: &axum::http::HeaderMap) -> bool {
    headers
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .any(|value| {
            value.to_str().map_or(true, |codings| {
                codings
                    .split(',')
                    .any(|coding| !coding.trim().eq_ignore_ascii_case("chunked"))
            })
        })
}

/// The answer for a body that could not be read: too large, or cut off.
fn body_error(error: &(dyn std::error::Error + Send + Sync + 'static)) -> Response {
    if error.is::<LengthLimitError>() {
        ApiError::PayloadTooLarge { limit: BODY_LIMIT }.into_response()
    } else {
        ApiError::MalformedJson(format!("the body could not be read: {error}")).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_exact_bearer_token_is_admitted() {
        let token = Token::from_setting(Some("s3cret")).unwrap();
        assert!(token.admits(b"Bearer s3cret"));
        assert!(token.admits(b"Bearer   s3cret"));
        assert!(!token.admits(b"Bearers3cret"));
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
