//! The listings and the lookup: `GET /campaigns`, `GET /campaigns/{id}/redemptions` (pages, or
//! the whole list as CSV), `GET /campaigns/{id}/redemptions/{userId}`. A page is
//! `{"items": [...], "next": <cursor or null>}` with a `Link: <...>; rel="next"` header; a cursor
//! is opaque to clients.

use std::sync::Arc;

use axum::{
    Json,
    body::{Body, Bytes},
    extract::{FromRequestParts, Path, State},
    http::{HeaderMap, HeaderValue, header, request::Parts},
    response::{IntoResponse, Response},
};
use futures_util::{StreamExt, stream};
use serde::Serialize;
use time::OffsetDateTime;
use utoipa::ToSchema;

use super::{
    error::ApiError,
    extract::CampaignPath,
    openapi::{ListProblems, LookupProblems},
};
use crate::{
    domain::{CampaignId, Timestamp, UserId},
    gateway::{CampaignsAfter, Gateway, Summary},
    store::listings::StoredRedemption,
};

/// Items per page unless `limit` says otherwise, and the most a page may hold.
const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 1_000;

/// Rows per PostgreSQL read while a CSV export streams.
const EXPORT_PAGE: usize = 10_000;

/// A page's query: `limit` and `cursor`, nothing else.
pub struct Paging {
    limit: usize,
    cursor: Option<String>,
}

impl<S: Send + Sync> FromRequestParts<S> for Paging {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let invalid = |field: &str, detail: &str| ApiError::InvalidField {
            field: field.into(),
            detail: detail.into(),
        };
        let mut paging = Paging {
            limit: DEFAULT_LIMIT,
            cursor: None,
        };
        let mut seen = Vec::new();
        let query = parts.uri.query().unwrap_or("");
        for (name, value) in url::form_urlencoded::parse(query.as_bytes()) {
            if seen.contains(&name) {
                return Err(invalid(&name, "is given twice"));
            }
            match name.as_ref() {
                "limit" => {
                    paging.limit = value
                        .parse()
                        .ok()
                        .filter(|limit| (1..=MAX_LIMIT).contains(limit))
                        .ok_or_else(|| invalid("limit", "must be an integer from 1 to 1000"))?;
                }
                "cursor" => paging.cursor = Some(value.clone().into_owned()),
                _ => return Err(invalid(&name, "is not a parameter of this route")),
            }
            seen.push(name);
        }
        Ok(paging)
    }
}

/// A page of items.
#[derive(Serialize, ToSchema)]
pub struct Page<T> {
    items: Vec<T>,
    /// The cursor of the next page; `null` on the last.
    next: Option<String>,
}

impl<T: Serialize> Page<T> {
    /// The page as JSON, with a `Link` to the next one at `path`.
    fn respond(items: Vec<T>, next: Option<String>, path: &str, limit: usize) -> Response {
        let link = next
            .as_ref()
            .map(|cursor| format!("<{path}?limit={limit}&cursor={cursor}>; rel=\"next\""));
        let mut response = Json(Page { items, next }).into_response();
        if let Some(link) = link.and_then(|link| HeaderValue::from_str(&link).ok()) {
            response.headers_mut().insert(header::LINK, link);
        }
        response
    }
}

/// The cursors: a kind letter and the position, hex-encoded. One of another kind, or of another
/// shape, is refused.
mod cursor {
    use super::*;

    pub fn campaigns((at, id): CampaignsAfter) -> String {
        let micros = (at.unix_timestamp_nanos() / 1_000) as i64;
        encode(b'c', &[&micros.to_be_bytes()[..], id.as_bytes()].concat())
    }

    pub fn parse_campaigns(cursor: &str) -> Result<CampaignsAfter, ApiError> {
        let bytes = decode(b'c', cursor, 24)?;
        let micros = i64::from_be_bytes(bytes[..8].try_into().expect("8 bytes"));
        // Any position is a position: one before every campaign lists nothing, one after them
        // all lists from the newest (PostgreSQL's own range is narrower than an i64's).
        let (first, last) = (
            OffsetDateTime::UNIX_EPOCH.replace_year(1).expect("year 1"),
            OffsetDateTime::UNIX_EPOCH
                .replace_year(9999)
                .expect("year 9999"),
        );
        let nanos = i128::from(micros) * 1_000;
        let at = OffsetDateTime::from_unix_timestamp_nanos(nanos)
            .unwrap_or(if micros < 0 { first } else { last })
            .clamp(first, last);
        let id = uuid::Uuid::from_slice(&bytes[8..]).map_err(|_| invalid())?;
        Ok((at, id))
    }

    pub fn redemptions(seq: i32) -> String {
        encode(b'r', &seq.to_be_bytes())
    }

    pub fn parse_redemptions(cursor: &str) -> Result<i32, ApiError> {
        let bytes = decode(b'r', cursor, 4)?;
        Ok(i32::from_be_bytes(bytes.try_into().expect("4 bytes")))
    }

    fn encode(kind: u8, position: &[u8]) -> String {
        std::iter::once(kind)
            .chain(position.iter().copied())
            .map(|byte| format!("{byte:02x}"))
            .collect()
    }

    fn decode(kind: u8, cursor: &str, length: usize) -> Result<Vec<u8>, ApiError> {
        if cursor.len() != 2 * (length + 1) || !cursor.is_ascii() {
            return Err(invalid());
        }
        let bytes = (0..cursor.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&cursor[i..i + 2], 16))
            .collect::<Result<Vec<u8>, _>>()
            .map_err(|_| invalid())?;
        match bytes.split_first() {
            Some((&found, position)) if found == kind => Ok(position.to_vec()),
            _ => Err(invalid()),
        }
    }

    fn invalid() -> ApiError {
        ApiError::InvalidField {
            field: "cursor".into(),
            detail: "is not a cursor of this list: pass a page's `next` as it came".into(),
        }
    }
}

/// List campaigns, newest first.
#[utoipa::path(get, path = "/campaigns", tag = "campaigns",
    params(
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 1000, description = "Items per page, 1 to 1,000 (default 100)"),
        ("cursor" = Option<String>, Query, pattern = "^63[0-9a-f]{48}$", description = "Where the page starts: the `next` of the page before, as it came"),
    ),
    responses(
        (status = 200, description = "A page of campaigns", body = Page<Summary>,
            headers(("Link" = String, description = "`<...>; rel=\"next\"`, unless this is the last page"))),
        ListProblems,
    ),
    security((), ("admin_token" = [])))]
pub async fn list_campaigns(
    State(gateway): State<Arc<Gateway>>,
    paging: Paging,
) -> Result<Response, ApiError> {
    let after = paging
        .cursor
        .as_deref()
        .map(cursor::parse_campaigns)
        .transpose()?;
    let (items, next) = gateway.campaigns(after, paging.limit).await?;
    let next = next.map(cursor::campaigns);
    Ok(Page::respond(items, next, "/campaigns", paging.limit))
}

/// A stored redemption, as listed.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Redemption {
    user_id: String,
    idempotency_key: String,
    /// The voucher number.
    seq: i32,
    /// When Redis granted it.
    redeemed_at: Timestamp,
}

impl From<StoredRedemption> for Redemption {
    fn from(row: StoredRedemption) -> Self {
        Self {
            user_id: row.user_id,
            idempotency_key: row.idempotency_key,
            seq: row.seq,
            redeemed_at: row.redeemed_at.into(),
        }
    }
}

/// List a campaign's stored redemptions in voucher-number order; with `Accept: text/csv`, the
/// whole list as CSV (`userId,idempotencyKey,seq,redeemedAt`), streamed.
#[utoipa::path(get, path = "/campaigns/{id}/redemptions", tag = "campaigns",
    params(
        ("id" = uuid::Uuid, Path, description = "The campaign's id"),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 1000, description = "Items per page, 1 to 1,000 (default 100)"),
        ("cursor" = Option<String>, Query, pattern = "^72[0-9a-f]{8}$", description = "Where the page starts: the `next` of the page before, as it came"),
    ),
    responses(
        (status = 200, description = "A page of redemptions, or with `Accept: text/csv` all of them",
            content(
                (Page<Redemption> = "application/json"),
                (String = "text/csv"),
            ),
            headers(("Link" = String, description = "`<...>; rel=\"next\"`, unless this is the last page"))),
        ListProblems,
    ),
    security((), ("admin_token" = [])))]
pub async fn list_redemptions(
    State(gateway): State<Arc<Gateway>>,
    CampaignPath(id): CampaignPath,
    headers: HeaderMap,
    paging: Paging,
) -> Result<Response, ApiError> {
    if wants_csv(&headers) {
        return export(gateway, id).await;
    }
    let after = paging
        .cursor
        .as_deref()
        .map(cursor::parse_redemptions)
        .transpose()?
        .unwrap_or(0);
    let (rows, next) = gateway.redemptions(id, after, paging.limit).await?;
    let items: Vec<Redemption> = rows.into_iter().map(Redemption::from).collect();
    let path = format!("/campaigns/{id}/redemptions");
    Ok(Page::respond(
        items,
        next.map(cursor::redemptions),
        &path,
        paging.limit,
    ))
}

/// Whether the client asks for CSV.
fn wants_csv(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|range| {
            let media = range.split(';').next().unwrap_or("").trim();
            media.eq_ignore_ascii_case("text/csv")
        })
}

/// Every stored redemption as CSV, read page by page while it streams: memory stays flat however
/// long the list. The first page is read before answering, so an unknown campaign is a 404.
async fn export(gateway: Arc<Gateway>, id: CampaignId) -> Result<Response, ApiError> {
    let (first, next) = gateway.redemptions(id, 0, EXPORT_PAGE).await?;
    let mut head = String::from("userId,idempotencyKey,seq,redeemedAt\r\n");
    head.push_str(&csv_rows(&first));
    let state = (gateway, next);
    let rest = stream::unfold(state, move |(gateway, after)| async move {
        let after = after?;
        match gateway.redemptions(id, after, EXPORT_PAGE).await {
            Ok((rows, next)) => Some((Ok(Bytes::from(csv_rows(&rows))), (gateway, next))),
            Err(error) => {
                tracing::warn!(campaign = %id, %error, "a CSV export failed midway");
                Some((
                    Err(std::io::Error::other(error.to_string())),
                    (gateway, None),
                ))
            }
        }
    });
    let body = stream::iter([Ok::<_, std::io::Error>(Bytes::from(head))]).chain(rest);
    Ok((
        [(header::CONTENT_TYPE, "text/csv; charset=utf-8")],
        Body::from_stream(body),
    )
        .into_response())
}

/// Rows in RFC 4180 form, each ended by CRLF.
fn csv_rows(rows: &[StoredRedemption]) -> String {
    let mut out = String::with_capacity(rows.len() * 80);
    for row in rows {
        out.push_str(&csv_field(&row.user_id));
        out.push(',');
        out.push_str(&csv_field(&row.idempotency_key));
        out.push(',');
        out.push_str(&row.seq.to_string());
        out.push(',');
        out.push_str(&Timestamp::from(row.redeemed_at).rfc3339());
        out.push_str("\r\n");
    }
    out
}

/// A field quoted when it holds a comma, a quote or a line break, its quotes doubled.
fn csv_field(value: &str) -> std::borrow::Cow<'_, str> {
    if value.contains([',', '"', '\r', '\n']) {
        format!("\"{}\"", value.replace('"', "\"\"")).into()
    } else {
        value.into()
    }
}

/// The `{id}` and `{userId}` path segments.
pub struct RedemptionPath(CampaignId, UserId);

impl<S: Send + Sync> FromRequestParts<S> for RedemptionPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Path((id, user)) = Path::<(String, String)>::from_request_parts(parts, state)
            .await
            .map_err(|_| ApiError::InvalidCampaignId)?;
        let id = CampaignId::parse(&id).map_err(|_| ApiError::InvalidCampaignId)?;
        let user = UserId::parse(&user).map_err(|error| ApiError::InvalidField {
            field: "userId".into(),
            detail: error.to_string(),
        })?;
        Ok(Self(id, user))
    }
}

/// One user's redemption of a campaign.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UserRedemption {
    user_id: String,
    idempotency_key: String,
    /// The voucher number; `null` for a holder reconcile restored whose number PostgreSQL has
    /// not given yet.
    seq: Option<i64>,
    /// Whether PostgreSQL holds it yet (it follows Redis's decision within the outbox's lag).
    stored: bool,
}

/// Read one user's redemption: what the redeem decided (Redis), and whether it is stored.
#[utoipa::path(get, path = "/campaigns/{id}/redemptions/{userId}", tag = "campaigns",
    params(
        ("id" = uuid::Uuid, Path, description = "The campaign's id"),
        ("userId" = UserId, Path, description = "The user id, percent-encoded"),
    ),
    responses((status = 200, description = "The user's redemption", body = UserRedemption), LookupProblems),
    security((), ("api_token" = []), ("admin_token" = [])))]
pub async fn get_redemption(
    State(gateway): State<Arc<Gateway>>,
    RedemptionPath(id, user): RedemptionPath,
) -> Result<Json<UserRedemption>, ApiError> {
    let found = gateway
        .redemption_of(id, &user)
        .await?
        .ok_or(ApiError::RedemptionNotFound)?;
    Ok(Json(UserRedemption {
        user_id: found.user,
        idempotency_key: found.key,
        seq: found.seq,
        stored: found.stored,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_fields_with_commas_or_quotes_are_quoted() {
        assert_eq!(csv_field("alice"), "alice");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
    }

    #[test]
    fn a_cursor_reads_back_only_as_its_own_kind() {
        let seq = cursor::redemptions(41);
        assert_eq!(cursor::parse_redemptions(&seq).unwrap(), 41);
        assert!(cursor::parse_campaigns(&seq).is_err());
        let at = OffsetDateTime::from_unix_timestamp_nanos(1_795_766_400_123_456_000).unwrap();
        let id = uuid::Uuid::new_v4();
        let campaigns = cursor::campaigns((at, id));
        assert_eq!(cursor::parse_campaigns(&campaigns).unwrap(), (at, id));
        for bad in ["", "zz", "7201", "r00000029ff", "c", "é0000000"] {
            assert!(cursor::parse_redemptions(bad).is_err(), "{bad}");
        }
        // A position far outside PostgreSQL's range is clamped to it, not refused.
        let far = format!("63{}{}", "7f".repeat(8), "00".repeat(16));
        assert_eq!(cursor::parse_campaigns(&far).unwrap().0.year(), 9999);
    }
}
