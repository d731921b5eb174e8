//! The HTTP API: the router, the error type and the extractors. Handlers parse, call the
//! `Gateway`, and shape the answer; they hold no business logic and no SQL.

mod campaigns;
pub mod error;
mod extract;

use std::sync::Arc;

use axum::{
    Router,
    extract::DefaultBodyLimit,
    routing::{get, post},
};

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
        .with_state(gateway)
}
