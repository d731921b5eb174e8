//! The OpenAPI 3.1 document, generated from the handlers and types (utoipa) and served at
//! `GET /openapi.json`. Each operation documents every problem it can answer.

use std::{collections::BTreeMap, sync::LazyLock};

use axum::{http::header, response::IntoResponse};
use utoipa::{
    IntoResponses, Modify, OpenApi, PartialSchema, ToSchema,
    openapi::{
        self, ContentBuilder, HeaderBuilder, RefOr, ResponseBuilder,
        security::{Http, HttpAuthScheme, SecurityScheme},
    },
};

use super::{campaigns, error::Problem, listings, ops};
use crate::domain::IdempotencyKey;

#[derive(OpenApi)]
#[openapi(
    paths(
        campaigns::create_campaign,
        campaigns::get_campaign,
        campaigns::close_campaign,
        campaigns::redeem_voucher,
        listings::list_campaigns,
        listings::list_redemptions,
        listings::get_redemption,
        ops::health,
        ops::ready,
        ops::metrics,
        openapi_json,
    ),
    components(schemas(Problem, HeaderKey)),
    modifiers(&BearerTokens),
    tags(
        (name = "campaigns", description = "Create campaigns, redeem their vouchers, read their counters"),
        (name = "operations", description = "Liveness, readiness, metrics and this document"),
    )
)]
struct ApiDoc;

static DOCUMENT: LazyLock<String> = LazyLock::new(|| {
    ApiDoc::openapi()
        .to_json()
        .expect("the document serializes")
});

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses(
        (status = 200, description = "The OpenAPI 3.1 document", content_type = "application/json", body = Object),
        (status = 503, description = "overloaded: 256 operator requests wait already", content_type = "application/problem+json", body = Problem),
    ))]
pub async fn openapi_json() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        DOCUMENT.as_str(),
    )
}

/// The two optional bearer tokens (`VG_ADMIN_TOKEN`, `VG_API_TOKEN`).
struct BearerTokens;

impl Modify for BearerTokens {
    fn modify(&self, document: &mut openapi::OpenApi) {
        let components = document.components.get_or_insert_with(Default::default);
        for name in ["admin_token", "api_token"] {
            components.add_security_scheme(
                name,
                SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
            );
        }
    }
}

/// The `Idempotency-Key` header: the key's rules, and no space at either end, since HTTP strips
/// it from header values (such a key could not arrive intact; send it in the body).
pub struct HeaderKey;

impl PartialSchema for HeaderKey {
    fn schema() -> RefOr<openapi::schema::Schema> {
        IdempotencyKey::header_schema()
    }
}

impl ToSchema for HeaderKey {}

/// Problems every campaign route can answer: overload, timeouts, a server down.
const UNAVAILABLE: u16 = 503;
/// A redeem before the campaign's window opens.
const NOT_STARTED: u16 = 409;

/// The problems of `POST /campaigns`.
pub struct CreateProblems;
/// The problems of `GET /campaigns/{id}`.
pub struct ReadProblems;
/// The problems of `POST /campaigns/{id}/redeem`.
pub struct RedeemProblems;
/// The problems of `POST /campaigns/{id}/close`.
pub struct CloseProblems;
/// The problems of the listings.
pub struct ListProblems;
/// The problems of `GET /campaigns/{id}/redemptions/{userId}`.
pub struct LookupProblems;

impl IntoResponses for CreateProblems {
    fn responses() -> BTreeMap<String, RefOr<openapi::Response>> {
        problems(&[400, 401, 408, 413, 415, 422, 501, UNAVAILABLE])
    }
}

impl IntoResponses for ReadProblems {
    fn responses() -> BTreeMap<String, RefOr<openapi::Response>> {
        problems(&[400, 404, 408, 413, 501, UNAVAILABLE])
    }
}

impl IntoResponses for RedeemProblems {
    fn responses() -> BTreeMap<String, RefOr<openapi::Response>> {
        problems(&[400, 401, 404, 408, 409, 413, 415, 422, 501, UNAVAILABLE])
    }
}

impl IntoResponses for ListProblems {
    fn responses() -> BTreeMap<String, RefOr<openapi::Response>> {
        problems(&[400, 401, 404, 422, 501, UNAVAILABLE])
    }
}

impl IntoResponses for LookupProblems {
    fn responses() -> BTreeMap<String, RefOr<openapi::Response>> {
        problems(&[400, 401, 404, 422, 501, UNAVAILABLE])
    }
}

impl IntoResponses for CloseProblems {
    fn responses() -> BTreeMap<String, RefOr<openapi::Response>> {
        problems(&[400, 401, 404, 408, 413, 501, UNAVAILABLE])
    }
}

fn problems(statuses: &[u16]) -> BTreeMap<String, RefOr<openapi::Response>> {
    statuses
        .iter()
        .map(|&status| {
            let content = ContentBuilder::new()
                .schema(Some(RefOr::Ref(openapi::Ref::from_schema_name(
                    Problem::name(),
                ))))
                .build();
            let mut response = ResponseBuilder::new()
                .description(problem_description(status))
                .content("application/problem+json", content);
            if status == UNAVAILABLE || status == NOT_STARTED {
                response = response.header(
                    "Retry-After",
                    HeaderBuilder::new()
                        .schema(openapi::ObjectBuilder::new().schema_type(openapi::Type::String))
                        .description(Some("Seconds to wait before retrying"))
                        .build(),
                );
            }
            if status == 401 {
                response = response.header(
                    "WWW-Authenticate",
                    HeaderBuilder::new()
                        .schema(openapi::ObjectBuilder::new().schema_type(openapi::Type::String))
                        .build(),
                );
            }
            (status.to_string(), RefOr::T(response.build()))
        })
        .collect()
}

fn problem_description(status: u16) -> &'static str {
    match status {
        400 => {
            "malformed_json or invalid_campaign_id: the body is not JSON, or the id is not a UUID"
        }
        401 => "unauthorized: the route's bearer token is configured and was not sent",
        404 => "campaign_not_found, or redemption_not_found: the user holds no voucher of it",
        408 => "body_timeout: the declared body did not arrive within VG_BODY_READ_TIMEOUT",
        NOT_STARTED => {
            "campaign_not_started: the campaign's window opens in Retry-After seconds (at least \
             1); nothing was recorded"
        }
        413 => "payload_too_large: the body exceeds 16 KiB",
        415 => "unsupported_media_type: the body must be sent as application/json",
        422 => {
            "invalid_field (naming the field, header or query parameter), invalid_body or \
             idempotency_key_mismatch"
        }
        501 => "transfer_coding_not_implemented: a Transfer-Encoding other than chunked",
        UNAVAILABLE => {
            "redis_unavailable, database_unavailable, overloaded, timeout or not_durable (the \
             redeem is decided, not yet as durable as VG_ACK promises): retry after Retry-After \
             seconds (a redeem with the same idempotency key)"
        }
        _ => "error",
    }
}
