//! The campaign resource: create, redeem, read.

use std::sync::Arc;

use axum::{
    Extension, Json,
    extract::State,
    http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::Deserialize;

use super::{
    error::ApiError,
    extract::{ApiJson, CampaignPath},
    observe::OutcomeLabel,
};
use crate::{
    domain::{CampaignName, IdempotencyKey, Outcome, Total, UserId},
    gateway::{Gateway, Summary},
};

/// The IETF draft's request header for the idempotency key.
static IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
/// Set on a REDEEMED answer that replays an earlier one.
static IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateCampaign {
    name: CampaignName,
    total: Total,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RedeemVoucher {
    user_id: UserId,
    idempotency_key: Option<IdempotencyKey>,
}

pub async fn create_campaign(
    State(gateway): State<Arc<Gateway>>,
    ApiJson(request): ApiJson<CreateCampaign>,
) -> Result<Response, ApiError> {
    let summary = gateway.create_campaign(request.name, request.total).await?;
    let location = format!("/campaigns/{}", summary.id);
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(summary),
    )
        .into_response())
}

pub async fn get_campaign(
    State(gateway): State<Arc<Gateway>>,
    CampaignPath(id): CampaignPath,
) -> Result<Json<Summary>, ApiError> {
    Ok(Json(gateway.summary(id).await?))
}

pub async fn redeem_voucher(
    State(gateway): State<Arc<Gateway>>,
    CampaignPath(id): CampaignPath,
    headers: HeaderMap,
    ApiJson(request): ApiJson<RedeemVoucher>,
) -> Result<Response, ApiError> {
    let key = idempotency_key(&headers, request.idempotency_key)?;
    let outcome = gateway.redeem(id, &request.user_id, &key).await?;
    let (body, label) = match outcome {
        Outcome::Redeemed { replayed: false } => (r#"{"status":"REDEEMED"}"#, "redeemed"),
        Outcome::Redeemed { replayed: true } => (r#"{"status":"REDEEMED"}"#, "replayed"),
        Outcome::AlreadyRedeemed => (r#"{"status":"ALREADY_REDEEMED"}"#, "already_redeemed"),
        Outcome::SoldOut => (r#"{"status":"SOLD_OUT"}"#, "sold_out"),
    };
    let mut response = (
        [(header::CONTENT_TYPE, "application/json")],
        Extension(OutcomeLabel(label)),
        body,
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
    headers: &HeaderMap,
    from_body: Option<IdempotencyKey>,
) -> Result<IdempotencyKey, ApiError> {
    let invalid = |detail: String| ApiError::InvalidField {
        field: "Idempotency-Key".into(),
        detail,
    };
    let from_header = headers
        .get(&IDEMPOTENCY_KEY)
        .map(|value| {
            let text = std::str::from_utf8(value.as_bytes())
                .map_err(|_| invalid("must be UTF-8".into()))?;
            IdempotencyKey::parse(unquoted(text)).map_err(|error| invalid(error.to_string()))
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
    fn a_quoted_header_key_is_unquoted() {
        assert_eq!(unquoted(r#""abc""#), "abc");
        assert_eq!(unquoted("abc"), "abc");
        assert_eq!(unquoted(r#"""#), r#"""#);
    }
}
