//! What every request leaves behind: an `x-request-id` (the client's, or a new UUID) echoed on
//! the response and carried by every log line of the request, and its count and latency in the
//! metrics, labelled with the route pattern (never the raw path: ids would explode the series).

use std::time::Instant;

use axum::{
    extract::{MatchedPath, Request},
    http::{HeaderName, Method},
    middleware::Next,
    response::Response,
};
use metrics::{counter, histogram};
use tower_http::trace::MakeSpan;

use crate::telemetry::metrics::{HTTP_DURATION, HTTP_REQUESTS};

pub static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// What a response decided, for the `outcome` label: the redeem decision or the problem code.
/// Handlers and `ApiError` put it in the response's extensions.
#[derive(Debug, Clone, Copy)]
pub struct OutcomeLabel(pub &'static str);

/// A span per request carrying its id, so every log line of the request names it.
#[derive(Debug, Clone, Copy)]
pub struct RequestSpan;

impl<B> MakeSpan<B> for RequestSpan {
    fn make_span(&mut self, request: &axum::http::Request<B>) -> tracing::Span {
        let id = request
            .headers()
            .get(&REQUEST_ID)
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default();
        // At error level, so that no log filter drops the span and with it the id of the
        // request's log lines.
        tracing::error_span!("request", id, method = %request.method(), path = %request.uri().path())
    }
}

/// Middleware: counts the request and records its latency.
pub async fn record(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |path| path.as_str().to_owned());
    let method = method_label(request.method());
    let response = next.run(request).await;
    let outcome = response
        .extensions()
        .get::<OutcomeLabel>()
        .map_or("", |label| label.0);
    counter!(
        HTTP_REQUESTS,
        "route" => route.clone(),
        "method" => method,
        "status" => response.status().as_str().to_owned(),
        "outcome" => outcome,
    )
    .increment(1);
    histogram!(HTTP_DURATION, "route" => route, "method" => method)
        .record(started.elapsed().as_secs_f64());
    response
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
