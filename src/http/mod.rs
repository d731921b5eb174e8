//! The HTTP API: the router, the error type and the extractors. Handlers parse, call the
//! `Gateway`, and shape the answer; they hold no business logic and no SQL.

mod campaigns;
pub mod error;
mod extract;

use std::sync::Arc;

use axum::{
    Router,
    extract::DefaultBodyLimit,
    response::{IntoResponse, Response},
    routing::{get, post},
};
use tower_http::catch_panic::CatchPanicLayer;

use crate::gateway::Gateway;
use error::ApiError;

/// The largest request body accepted, in bytes.
pub const BODY_LIMIT: usize = 16 * 1024;

pub fn router(gateway: Arc<Gateway>) -> Router {
    Router::new()
        .route("/campaigns", post(campaigns::create_campaign))
        .route("/campaigns/{id}", get(campaigns::get_campaign))
        .route("/campaigns/{id}/redeem", post(campaigns::redeem_voucher))
        .fallback(async || ApiError::NotFound)
        .method_not_allowed_fallback(async || ApiError::MethodNotAllowed)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(CatchPanicLayer::custom(panic_response))
        .with_state(gateway)
}

/// A bug must cost one request a 500 problem, not the connection.
fn panic_response(_: Box<dyn std::any::Any + Send>) -> Response {
    tracing::error!("a request handler panicked");
    ApiError::Internal.into_response()
}
