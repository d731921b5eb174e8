//! What every request leaves behind: an `x-request-id` (the client's, or a new UUID) echoed on
//! the response and carried by every log line of the request, and its count and latency in the
//! metrics, labelled with the route pattern (never the raw path: ids would explode the series).

use std::time::Instant;

use axum::{
    extract::{MatchedPath, Request},
    http::{HeaderName, HeaderValue, Method},
    middleware::Next,
    response::Response,
};
use metrics::{counter, histogram};
use tracing::Instrument;
use uuid::Uuid;

use crate::telemetry::metrics::{HTTP_DURATION, HTTP_REQUESTS};

static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// What a response decided, for the `outcome` label: the redeem decision or the problem code.
/// Handlers and `ApiError` put it in the response's extensions.
#[derive(Debug, Clone, Copy)]
pub struct OutcomeLabel(pub &'static str);

/// Middleware: gives the request its id (the client's, or a new UUID), runs it in a span that
/// carries the id, echoes the id on the response, and counts the request and its latency.
pub async fn observe(mut request: Request, next: Next) -> Response {
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
    // At error level, so that no log filter drops the span and with it the id of the request's
    // log lines. Recorded with Display: the id is visible ASCII, so Debug's escaping, char by
    // char on every request, would change nothing.
    let span = tracing::error_span!("request", id = %id.to_str().unwrap_or_default());
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |path| path.as_str().to_owned());
    let method = method_label(request.method());
    let mut response = next.run(request).instrument(span).await;
    response.headers_mut().insert(&REQUEST_ID, id);
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
