//! The campaign resource: create, redeem, read.

use std::sync::Arc;

use axum::{
    Extension, Json,
    extract::State,
    http::{HeaderName, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{
    error::ApiError,
    extract::{ApiJson, CampaignPath, KeyHeader},
    observe::OutcomeLabel,
    openapi::{CloseProblems, CreateProblems, HeaderKey, ReadProblems, RedeemProblems},
};
use crate::{
    domain::{CampaignName, IdempotencyKey, Outcome, Timestamp, Total, UserId, Window},
    gateway::{Gateway, Summary},
};

/// Set on a REDEEMED answer that replays an earlier one.
static IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CreateCampaign {
    /// Display name, trimmed.
    #[schema(example = "Black Friday")]
    name: CampaignName,
    /// How many vouchers the campaign holds.
    #[schema(example = 1000)]
    total: Total,
    /// When redeems open (before it they answer 409 `campaign_not_started`); from creation when
    /// omitted.
    #[schema(example = "2026-11-27T09:00:00+01:00")]
    starts_at: Option<Timestamp>,
    /// When redeems end (from it they answer ENDED); after `startsAt`; never when omitted.
    #[schema(example = "2026-11-27T21:00:00+01:00")]
    ends_at: Option<Timestamp>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RedeemVoucher {
    /// Who redeems, kept exactly as sent.
    #[schema(example = "user-42")]
    user_id: UserId,
    /// One key per redeem attempt and its retries; here or in the Idempotency-Key header.
    #[schema(example = "0b6c6f1e-6a3c-4c49-9a59-2f9d1c1b7e7a")]
    idempotency_key: Option<IdempotencyKey>,
}

/// The decision of a redeem.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RedeemStatus {
    /// The user holds a voucher of this campaign under this key (now, or since an earlier
    /// request with the same key: then `Idempotent-Replayed: true` is set).
    Redeemed,
    /// The user already holds a voucher of this campaign under another key.
    AlreadyRedeemed,
    /// No voucher is left.
    SoldOut,
    /// The campaign's sale window has ended (at `endsAt`, or when it was closed).
    Ended,
}

#[derive(Serialize, ToSchema)]
pub struct RedeemAnswer {
    status: RedeemStatus,
}

impl RedeemStatus {
    /// The answer's body, built once: the redeem path serializes nothing.
    fn body(self) -> &'static str {
        match self {
            RedeemStatus::Redeemed => r#"{"status":"REDEEMED"}"#,
            RedeemStatus::AlreadyRedeemed => r#"{"status":"ALREADY_REDEEMED"}"#,
            RedeemStatus::SoldOut => r#"{"status":"SOLD_OUT"}"#,
            RedeemStatus::Ended => r#"{"status":"ENDED"}"#,
        }
    }
}

/// Create a campaign.
#[utoipa::path(post, path = "/campaigns", tag = "campaigns",
    request_body = CreateCampaign,
    responses(
        (status = 201, description = "Created", body = Summary,
            headers(("Location" = String, description = "The campaign's URL"))),
        CreateProblems,
    ),
    security((), ("admin_token" = [])))]
pub async fn create_campaign(
    State(gateway): State<Arc<Gateway>>,
    ApiJson(request): ApiJson<CreateCampaign>,
) -> Result<Response, ApiError> {
    let window = Window::new(request.starts_at, request.ends_at).map_err(|error| {
        ApiError::InvalidField {
            field: "endsAt".into(),
            detail: error.to_string(),
        }
    })?;
    let summary = gateway
        .create_campaign(request.name, request.total, window)
        .await?;
    let location = format!("/campaigns/{}", summary.id);
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(summary),
    )
        .into_response())
}

/// Read a campaign's counters.
#[utoipa::path(get, path = "/campaigns/{id}", tag = "campaigns",
    params(("id" = uuid::Uuid, Path, description = "The campaign's id")),
    responses((status = 200, description = "The campaign", body = Summary), ReadProblems))]
pub async fn get_campaign(
    State(gateway): State<Arc<Gateway>>,
    CampaignPath(id): CampaignPath,
) -> Result<Json<Summary>, ApiError> {
    Ok(Json(gateway.summary(id).await?))
}

/// End a campaign's sale now (idempotent): redeems answer ENDED from then on.
#[utoipa::path(post, path = "/campaigns/{id}/close", tag = "campaigns",
    params(("id" = uuid::Uuid, Path, description = "The campaign's id")),
    responses((status = 200, description = "Closed; the campaign", body = Summary), CloseProblems),
    security((), ("admin_token" = [])))]
pub async fn close_campaign(
    State(gateway): State<Arc<Gateway>>,
    CampaignPath(id): CampaignPath,
) -> Result<Json<Summary>, ApiError> {
    Ok(Json(gateway.close(id).await?))
}

/// Redeem one voucher for a user: decided atomically, idempotent per key.
#[utoipa::path(post, path = "/campaigns/{id}/redeem", tag = "campaigns",
    params(
        ("id" = uuid::Uuid, Path, description = "The campaign's id"),
        ("Idempotency-Key" = Option<HeaderKey>, Header,
            description = "The idempotency key, bare or as a quoted string; must equal the body's if both are sent"),
    ),
    request_body = RedeemVoucher,
    responses(
        (status = 200, description = "Decided", body = RedeemAnswer,
            headers(("Idempotent-Replayed" = String, description = "`true` when this answer replays an earlier REDEEMED"))),
        RedeemProblems,
    ),
    security((), ("api_token" = [])))]
pub async fn redeem_voucher(
    State(gateway): State<Arc<Gateway>>,
    CampaignPath(id): CampaignPath,
    KeyHeader(header): KeyHeader,
    ApiJson(request): ApiJson<RedeemVoucher>,
) -> Result<Response, ApiError> {
    let key = idempotency_key(header.as_ref(), request.idempotency_key)?;
    let outcome = gateway.redeem(id, &request.user_id, &key).await?;
    let (status, label) = match outcome {
        Outcome::Redeemed { replayed: false } => (RedeemStatus::Redeemed, "redeemed"),
        Outcome::Redeemed { replayed: true } => (RedeemStatus::Redeemed, "replayed"),
        Outcome::AlreadyRedeemed => (RedeemStatus::AlreadyRedeemed, "already_redeemed"),
        Outcome::SoldOut => (RedeemStatus::SoldOut, "sold_out"),
        Outcome::Ended => (RedeemStatus::Ended, "ended"),
        Outcome::NotStarted { opens_in } => return Err(ApiError::CampaignNotStarted { opens_in }),
    };
    let mut response = (
        [(header::CONTENT_TYPE, "application/json")],
        Extension(OutcomeLabel(label)),
        status.body(),
    )
        .into_response();
    if outcome == (Outcome::Redeemed { replayed: true }) {
        response.headers_mut().insert(
            IDEMPOTENT_REPLAYED.clone(),
            HeaderValue::from_static("true"),
        );
    }
    Ok(response)
}

/// The key from the body or the `Idempotency-Key` header (a bare value or a quoted structured
/// field string); both present must agree.
fn idempotency_key(
    from_header: Option<&HeaderValue>,
    from_body: Option<IdempotencyKey>,
) -> Result<IdempotencyKey, ApiError> {
    let invalid = |detail: String| ApiError::InvalidField {
        field: "Idempotency-Key".into(),
        detail,
    };
    let from_header = from_header
        .map(|value| {
            // UTF-8, or else ISO-8859-1, as HTTP once defined header bytes and many clients
            // still send them (RFC 9110's obs-text): either way the key the client meant.
            let bytes = value.as_bytes();
            let text = match std::str::from_utf8(bytes) {
                Ok(text) => std::borrow::Cow::Borrowed(text),
                Err(_) => bytes.iter().map(|&byte| char::from(byte)).collect(),
            };
            IdempotencyKey::parse(unquoted(&text)).map_err(|error| invalid(error.to_string()))
        })
        .transpose()?;
    match (from_header, from_body) {
        (Some(header), Some(body)) if header != body => Err(ApiError::IdempotencyKeyMismatch),
        (Some(key), _) | (None, Some(key)) => Ok(key),
        (None, None) => Err(ApiError::InvalidField {
            field: "idempotencyKey".into(),
            detail: "is required, in the body or the Idempotency-Key header".into(),
        }),
    }
}

/// `"abc"` -> `abc` (a structured field string, RFC 8941); anything else as it is.
fn unquoted(value: &str) -> &str {
    value
        .strip_prefix('"')
        .and_then(|rest| rest.strip_suffix('"'))
        .unwrap_or(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_redeem_body_is_its_answer_serialized() {
        for status in [
            RedeemStatus::Redeemed,
            RedeemStatus::AlreadyRedeemed,
            RedeemStatus::SoldOut,
            RedeemStatus::Ended,
        ] {
            let serialized = serde_json::to_string(&RedeemAnswer { status }).unwrap();
            assert_eq!(status.body(), serialized);
        }
    }

    #[test]
    fn a_quoted_header_key_is_unquoted() {
        assert_eq!(unquoted(r#""abc""#), "abc");
        assert_eq!(unquoted("abc"), "abc");
        assert_eq!(unquoted(r#"""#), r#"""#);
    }
}
