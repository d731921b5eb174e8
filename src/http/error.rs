//! `ApiError`: every error the API returns, each with a stable `code`, written as an RFC 9457
//! `application/problem+json` body. Internal causes are logged here and never shown to clients.

use axum::{
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::Serialize;
use utoipa::ToSchema;

use super::observe::OutcomeLabel;
use crate::gateway::GatewayError;

/// Seconds a client should wait before retrying after a 503.
const RETRY_AFTER_SECONDS: &str = "1";

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("the body is not valid JSON: {0}")]
    MalformedJson(String),
    #[error("the campaign id in the path must be a UUID")]
    InvalidCampaignId,
    #[error("the body exceeds {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("the body did not arrive within {timeout:?}")]
    BodyTimeout { timeout: std::time::Duration },
    #[error("the body's transfer coding is not supported: send it as is, or chunked")]
    TransferCodingNotImplemented,
    #[error("the body must be JSON, sent with Content-Type: application/json")]
    UnsupportedMediaType,
    #[error("{field}: {detail}")]
    InvalidField { field: String, detail: String },
    #[error("{0}")]
    InvalidBody(String),
    #[error("the Idempotency-Key header and the body's idempotencyKey differ")]
    IdempotencyKeyMismatch,
    #[error("a valid bearer token is required: Authorization: Bearer <token>")]
    Unauthorized,
    #[error("no campaign has this id")]
    CampaignNotFound,
    #[error("this user holds no voucher of this campaign")]
    RedemptionNotFound,
    #[error("the campaign's sale has not started; retry after Retry-After seconds")]
    CampaignNotStarted { opens_in: std::time::Duration },
    #[error("no such resource")]
    NotFound,
    #[error("this method is not allowed on this resource")]
    MethodNotAllowed,
    #[error("the decision store is unavailable; retry with the same idempotency key")]
    RedisUnavailable,
    #[error("the database is unavailable; retry later")]
    DatabaseUnavailable,
    #[error("the gateway is at its concurrency limit; retry shortly")]
    Overloaded,
    #[error("the request did not finish in time; retry (a redeem with the same idempotency key)")]
    Timeout,
    #[error(
        "the decision is made but not yet durable; retry with the same idempotency key for the same decision"
    )]
    NotDurable,
    #[error("internal error")]
    Internal,
}

impl ApiError {
    fn status(&self) -> StatusCode {
        match self {
            ApiError::MalformedJson(_) | ApiError::InvalidCampaignId => StatusCode::BAD_REQUEST,
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::BodyTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            ApiError::TransferCodingNotImplemented => StatusCode::NOT_IMPLEMENTED,
            ApiError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::InvalidField { .. }
            | ApiError::InvalidBody(_)
            | ApiError::IdempotencyKeyMismatch => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::CampaignNotFound | ApiError::RedemptionNotFound | ApiError::NotFound => {
                StatusCode::NOT_FOUND
            }
            ApiError::CampaignNotStarted { .. } => StatusCode::CONFLICT,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::RedisUnavailable
            | ApiError::DatabaseUnavailable
            | ApiError::Overloaded
            | ApiError::Timeout
            | ApiError::NotDurable => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The stable, machine-readable name of the error.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::MalformedJson(_) => "malformed_json",
            ApiError::InvalidCampaignId => "invalid_campaign_id",
            ApiError::PayloadTooLarge { .. } => "payload_too_large",
            ApiError::BodyTimeout { .. } => "body_timeout",
            ApiError::TransferCodingNotImplemented => "transfer_coding_not_implemented",
            ApiError::UnsupportedMediaType => "unsupported_media_type",
            ApiError::InvalidField { .. } => "invalid_field",
            ApiError::InvalidBody(_) => "invalid_body",
            ApiError::IdempotencyKeyMismatch => "idempotency_key_mismatch",
            ApiError::Unauthorized => "unauthorized",
            ApiError::CampaignNotFound => "campaign_not_found",
            ApiError::RedemptionNotFound => "redemption_not_found",
            ApiError::CampaignNotStarted { .. } => "campaign_not_started",
            ApiError::NotFound => "not_found",
            ApiError::MethodNotAllowed => "method_not_allowed",
            ApiError::RedisUnavailable => "redis_unavailable",
            ApiError::DatabaseUnavailable => "database_unavailable",
            ApiError::Overloaded => "overloaded",
            ApiError::Timeout => "timeout",
            ApiError::NotDurable => "not_durable",
            ApiError::Internal => "internal",
        }
    }
}

/// An RFC 9457 problem, with a stable machine-readable `code`.
#[derive(Serialize, ToSchema)]
pub struct Problem<'a> {
    /// Always `about:blank`: the `code` names the problem.
    #[serde(rename = "type")]
    kind: &'static str,
    /// The HTTP status's reason phrase.
    title: &'static str,
    status: u16,
    /// What went wrong, for a person.
    detail: String,
    /// What went wrong, for a program: malformed_json, invalid_campaign_id, payload_too_large,
    /// body_timeout, transfer_coding_not_implemented, unsupported_media_type, invalid_field, invalid_body, idempotency_key_mismatch,
    /// unauthorized, campaign_not_found, campaign_not_started, redemption_not_found, not_found,
    /// method_not_allowed,
    /// redis_unavailable,
    /// database_unavailable, overloaded, timeout, not_durable, internal.
    code: &'static str,
    /// The offending field or header, for invalid_field.
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<&'a str>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let field = match &self {
            ApiError::InvalidField { field, .. } => Some(field.as_str()),
            _ => None,
        };
        let problem = Problem {
            kind: "about:blank",
            title: status.canonical_reason().unwrap_or("Error"),
            status: status.as_u16(),
            detail: self.to_string(),
            code: self.code(),
            field,
        };
        let body = serde_json::to_vec(&problem).expect("a problem always serializes");
        let mut response = (status, body).into_response();
        response.extensions_mut().insert(OutcomeLabel(self.code()));
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if status == StatusCode::SERVICE_UNAVAILABLE {
            headers.insert(
                header::RETRY_AFTER,
                HeaderValue::from_static(RETRY_AFTER_SECONDS),
            );
        }
        if let ApiError::CampaignNotStarted { opens_in } = self {
            // Whole seconds, rounded up, at least 1: a retry before the start is wasted.
            let seconds = opens_in.as_millis().div_ceil(1000).max(1);
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds as u64));
        }
        if status == StatusCode::UNAUTHORIZED {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

impl From<GatewayError> for ApiError {
    fn from(error: GatewayError) -> Self {
        let api_error = answer_for(&error);
        match &api_error {
            ApiError::RedisUnavailable => tracing::warn!(%error, "Redis unavailable"),
            ApiError::DatabaseUnavailable => tracing::warn!(%error, "PostgreSQL unavailable"),
            ApiError::Internal => tracing::error!(%error, "request failed"),
            _ => {}
        }
        api_error
    }
}

/// The answer for a gateway error, seen through any sharing.
fn answer_for(error: &GatewayError) -> ApiError {
    match error {
        GatewayError::Shared(shared) => answer_for(shared),
        GatewayError::NotFound => ApiError::CampaignNotFound,
        GatewayError::NotDurable => ApiError::NotDurable,
        GatewayError::Redis(_) | GatewayError::Unstable(_) => ApiError::RedisUnavailable,
        GatewayError::Database(db) if is_unavailable(db) => ApiError::DatabaseUnavailable,
        GatewayError::Database(_) => ApiError::Internal,
    }
}

/// Whether a database error means "not reachable now" rather than "this request is wrong".
fn is_unavailable(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        // Class 08: connection exception; 57P0x: the server is shutting down or starting up;
        // 57014: statement timeout.
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|code| code.starts_with("08") || code.starts_with("57")),
        _ => false,
    }
}
