//! What every request leaves behind: an `x-request-id` (the client's, or a new UUID) echoed on
//! the response and carried by every log line of the request, and its count and latency in the
//! metrics, labelled with the route pattern (never the raw path: ids would explode the series).

use std::{
    convert::Infallible,
    future::Future,
    pin::Pin,
    task::{Context, Poll, ready},
    time::Instant,
};

use axum::{
    extract::{MatchedPath, Request},
    http::{HeaderName, HeaderValue, Method},
    response::Response,
};
use metrics::{counter, histogram};
use pin_project_lite::pin_project;
use tower::{Layer, Service};
use tracing::{Instrument, instrument::Instrumented};
use uuid::Uuid;

use crate::telemetry::metrics::{HTTP_DURATION, HTTP_REQUESTS};

static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// What a response decided, for the `outcome` label: the redeem decision or the problem code.
/// Handlers and `ApiError` put it in the response's extensions.
#[derive(Debug, Clone, Copy)]
pub struct OutcomeLabel(pub &'static str);

/// Gives each request its id (the client's, or a new UUID), runs it in a span that carries the
/// id, echoes the id on the response, and counts the request and its latency. A hand-written
/// service rather than `middleware::from_fn`, which clones and boxes the inner service on every
/// request: this wraps every request.
#[derive(Debug, Clone, Copy)]
pub struct ObserveLayer;

impl<S> Layer<S> for ObserveLayer {
    type Service = Observe<S>;

    fn layer(&self, inner: S) -> Observe<S> {
        Observe { inner }
    }
}

#[derive(Debug, Clone)]
pub struct Observe<S> {
    inner: S,
}

impl<S, B> Service<Request> for Observe<S>
where
    S: Service<Request, Response = Response<B>, Error = Infallible>,
{
    type Response = Response<B>;
    type Error = Infallible;
    type Future = Observed<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request) -> Self::Future {
        let started = Instant::now();
        let id = match request.headers().get(&REQUEST_ID) {
            Some(id) if is_fit_id(id) => id.clone(),
            _ => {
                let mut text = [0; uuid::fmt::Hyphenated::LENGTH];
                let new = Uuid::new_v4().hyphenated().encode_lower(&mut text);
                let id = HeaderValue::from_str(new).expect("a UUID is a valid header value");
                request.headers_mut().insert(&REQUEST_ID, id.clone());
                id
            }
        };
        // At error level, so that no log filter drops the span and with it the id of the
        // request's log lines. Recorded with Display: the id is visible ASCII, so Debug's
        // escaping, char by char on every request, would change nothing.
        let span = tracing::error_span!("request", id = %id.to_str().unwrap_or_default());
        let route = request
            .extensions()
            .get::<MatchedPath>()
            .map_or_else(|| "unmatched".to_owned(), |path| path.as_str().to_owned());
        let method = method_label(request.method());
        let inner = span.in_scope(|| self.inner.call(request));
        Observed {
            inner: inner.instrument(span),
            id: Some(id),
            route,
            method,
            started,
        }
    }
}

pin_project! {
    /// The response of an observed request, with its id echoed and its figures recorded.
    pub struct Observed<F> {
        #[pin]
        inner: Instrumented<F>,
        id: Option<HeaderValue>,
        route: String,
        method: &'static str,
        started: Instant,
    }
}

impl<F, B> Future for Observed<F>
where
    F: Future<Output = Result<Response<B>, Infallible>>,
{
    type Output = Result<Response<B>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let Ok(mut response) = ready!(this.inner.poll(cx));
        if let Some(id) = this.id.take() {
            response.headers_mut().insert(&REQUEST_ID, id);
        }
        let outcome = response
            .extensions()
            .get::<OutcomeLabel>()
            .map_or("", |label| label.0);
        counter!(
            HTTP_REQUESTS,
            "route" => this.route.clone(),
            "method" => *this.method,
            "status" => response.status().as_str().to_owned(),
            "outcome" => outcome,
        )
        .increment(1);
        histogram!(HTTP_DURATION, "route" => std::mem::take(this.route), "method" => *this.method)
            .record(this.started.elapsed().as_secs_f64());
        Poll::Ready(Ok(response))
    }
}

/// A client's request id is kept when it is 1 to 128 visible ASCII characters; anything else
/// would bloat or garble every log line of the request, so it is replaced.
fn is_fit_id(id: &HeaderValue) -> bool {
    let bytes = id.as_bytes();
    (1..=128).contains(&bytes.len()) && bytes.iter().all(u8::is_ascii_graphic)
}

/// The method as a label; any method the API does not know is "other", so a client cannot make
/// new series by inventing methods.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}
