//! Every malformed request gets a 4xx problem+json with a stable code and changes nothing.

use reqwest::{Method, StatusCode};
use rstest::rstest;
use serde_json::{Value, json};

use crate::helpers::{
    TestApp,
    Topology::{self, Cluster, Single},
};

struct Case {
    what: &'static str,
    method: Method,
    /// `{id}` is replaced by the test campaign's id.
    path: &'static str,
    content_type: Option<&'static str>,
    idempotency_header: Option<String>,
    body: String,
    status: StatusCode,
    code: &'static str,
    field: Option<&'static str>,
}

fn redeem(
    what: &'static str,
    body: Value,
    status: u16,
    code: &'static str,
    field: Option<&'static str>,
) -> Case {
    Case {
        what,
        method: Method::POST,
        path: "/campaigns/{id}/redeem",
        content_type: Some("application/json"),
        idempotency_header: None,
        body: body.to_string(),
        status: StatusCode::from_u16(status).unwrap(),
        code,
        field,
    }
}

fn create(
    what: &'static str,
    body: Value,
    status: u16,
    code: &'static str,
    field: Option<&'static str>,
) -> Case {
    Case {
        path: "/campaigns",
        ..redeem(what, body, status, code, field)
    }
}

/// A listing with a bad query: 422 `invalid_field` naming the parameter.
fn list(what: &'static str, path: &'static str, field: &'static str) -> Case {
    Case {
        method: Method::GET,
        path,
        content_type: None,
        ..redeem(what, json!(null), 422, "invalid_field", Some(field))
    }
}

/// A redeem whose body is not one JSON value: 400 `malformed_json`.
fn malformed(what: &'static str, body: &str) -> Case {
    Case {
        body: body.into(),
        ..redeem(what, json!(null), 400, "malformed_json", None)
    }
}

fn cases() -> Vec<Case> {
    let long = |n: usize| "x".repeat(n);
    vec![
        Case {
            content_type: None,
            ..redeem(
                "no content type",
                json!({"userId": "u", "idempotencyKey": "k"}),
                415,
                "unsupported_media_type",
                None,
            )
        },
        Case {
            content_type: Some("text/plain"),
            ..redeem(
                "text content type",
                json!({"userId": "u", "idempotencyKey": "k"}),
                415,
                "unsupported_media_type",
                None,
            )
        },
        redeem(
            "body over 16 KiB",
            json!({"userId": long(17 * 1024), "idempotencyKey": "k"}),
            413,
            "payload_too_large",
            None,
        ),
        malformed("truncated JSON", "{\"userId\": "),
        malformed("empty body", ""),
        malformed("form body sent as JSON", "userId=u"),
        malformed(
            "text after the JSON",
            r#"{"userId": "u", "idempotencyKey": "k"} trailing"#,
        ),
        malformed("two objects", "{}{}"),
        malformed(
            "a second object after a valid one",
            r#"{"userId": "u", "idempotencyKey": "k"} {"userId": "v"}"#,
        ),
        malformed(
            "trailing comma",
            r#"{"userId": "u", "idempotencyKey": "k",}"#,
        ),
        redeem("JSON array", json!(["u", "k"]), 422, "invalid_body", None),
        redeem(
            "missing userId",
            json!({"idempotencyKey": "k"}),
            422,
            "invalid_body",
            None,
        ),
        redeem(
            "unknown field",
            json!({"userId": "u", "idempotencyKey": "k", "admin": true}),
            422,
            "invalid_field",
            Some("admin"),
        ),
        redeem(
            "userId a number",
            json!({"userId": 7, "idempotencyKey": "k"}),
            422,
            "invalid_field",
            Some("userId"),
        ),
        redeem(
            "userId empty",
            json!({"userId": "", "idempotencyKey": "k"}),
            422,
            "invalid_field",
            Some("userId"),
        ),
        redeem(
            "userId over 128 characters",
            json!({"userId": long(129), "idempotencyKey": "k"}),
            422,
            "invalid_field",
            Some("userId"),
        ),
        redeem(
            "userId with a control character",
            json!({"userId": "a\u{1}b", "idempotencyKey": "k"}),
            422,
            "invalid_field",
            Some("userId"),
        ),
        redeem(
            "key missing everywhere",
            json!({"userId": "u"}),
            422,
            "invalid_field",
            Some("idempotencyKey"),
        ),
        redeem(
            "key empty",
            json!({"userId": "u", "idempotencyKey": ""}),
            422,
            "invalid_field",
            Some("idempotencyKey"),
        ),
        redeem(
            "key over 255 characters",
            json!({"userId": "u", "idempotencyKey": long(256)}),
            422,
            "invalid_field",
            Some("idempotencyKey"),
        ),
        redeem(
            "key with a newline",
            json!({"userId": "u", "idempotencyKey": "a\nb"}),
            422,
            "invalid_field",
            Some("idempotencyKey"),
        ),
        redeem(
            "key an object",
            json!({"userId": "u", "idempotencyKey": {"k": 1}}),
            422,
            "invalid_field",
            Some("idempotencyKey"),
        ),
        Case {
            idempotency_header: Some(long(256)),
            ..redeem(
                "header key over 255 characters",
                json!({"userId": "u"}),
                422,
                "invalid_field",
                Some("Idempotency-Key"),
            )
        },
        Case {
            idempotency_header: Some("h".into()),
            ..redeem(
                "header and body keys differ",
                json!({"userId": "u", "idempotencyKey": "b"}),
                422,
                "idempotency_key_mismatch",
                None,
            )
        },
        Case {
            path: "/campaigns/not-a-uuid/redeem",
            ..redeem(
                "path id not a UUID",
                json!({"userId": "u", "idempotencyKey": "k"}),
                400,
                "invalid_campaign_id",
                None,
            )
        },
        Case {
            method: Method::GET,
            path: "/campaigns/42",
            ..redeem(
                "summary of a non-UUID id",
                json!(null),
                400,
                "invalid_campaign_id",
                None,
            )
        },
        Case {
            method: Method::GET,
            ..redeem(
                "GET on redeem",
                json!(null),
                405,
                "method_not_allowed",
                None,
            )
        },
        Case {
            path: "/nowhere",
            ..redeem("unknown route", json!(null), 404, "not_found", None)
        },
        create(
            "name empty after trimming",
            json!({"name": "   ", "total": 5}),
            422,
            "invalid_field",
            Some("name"),
        ),
        create(
            "name over 200 characters",
            json!({"name": long(201), "total": 5}),
            422,
            "invalid_field",
            Some("name"),
        ),
        create(
            "name with a control character",
            json!({"name": "a\u{7f}", "total": 5}),
            422,
            "invalid_field",
            Some("name"),
        ),
        create(
            "name ending in a newline",
            json!({"name": "Spring sale\n", "total": 5}),
            422,
            "invalid_field",
            Some("name"),
        ),
        Case {
            path: "/campaigns",
            ..malformed(
                "text after the JSON",
                r#"{"name": "n", "total": 5} trailing"#,
            )
        },
        Case {
            path: "/campaigns",
            ..malformed("two objects", r#"{"name": "n", "total": 5}{}"#)
        },
        Case {
            path: "/campaigns",
            ..malformed("trailing comma", r#"{"name": "n", "total": 5,}"#)
        },
        create(
            "name missing",
            json!({"total": 5}),
            422,
            "invalid_body",
            None,
        ),
        create(
            "total zero",
            json!({"name": "n", "total": 0}),
            422,
            "invalid_field",
            Some("total"),
        ),
        create(
            "total negative",
            json!({"name": "n", "total": -3}),
            422,
            "invalid_field",
            Some("total"),
        ),
        create(
            "total over a billion",
            json!({"name": "n", "total": 1_000_000_001_i64}),
            422,
            "invalid_field",
            Some("total"),
        ),
        create(
            "total a string",
            json!({"name": "n", "total": "5"}),
            422,
            "invalid_field",
            Some("total"),
        ),
        create(
            "total a fraction",
            json!({"name": "n", "total": 1.5}),
            422,
            "invalid_field",
            Some("total"),
        ),
        create(
            "total huge",
            json!({"name": "n", "total": 1e30}),
            422,
            "invalid_field",
            Some("total"),
        ),
        create(
            "unknown field",
            json!({"name": "n", "total": 5, "remaining": 9}),
            422,
            "invalid_field",
            Some("remaining"),
        ),
        create(
            "startsAt without an offset",
            json!({"name": "n", "total": 5, "startsAt": "2030-01-01T09:00:00"}),
            422,
            "invalid_field",
            Some("startsAt"),
        ),
        create(
            "startsAt a date only",
            json!({"name": "n", "total": 5, "startsAt": "2030-01-01"}),
            422,
            "invalid_field",
            Some("startsAt"),
        ),
        create(
            "endsAt a number",
            json!({"name": "n", "total": 5, "endsAt": 1_900_000_000}),
            422,
            "invalid_field",
            Some("endsAt"),
        ),
        create(
            "endsAt in the year 2100",
            json!({"name": "n", "total": 5, "endsAt": "2100-01-01T00:00:00Z"}),
            422,
            "invalid_field",
            Some("endsAt"),
        ),
        create(
            "startsAt in 1999",
            json!({"name": "n", "total": 5, "startsAt": "1999-12-31T23:59:59Z"}),
            422,
            "invalid_field",
            Some("startsAt"),
        ),
        create(
            "endsAt before startsAt",
            json!({"name": "n", "total": 5, "startsAt": "2030-01-02T00:00:00Z", "endsAt": "2030-01-01T00:00:00+01:00"}),
            422,
            "invalid_field",
            Some("endsAt"),
        ),
        create(
            "endsAt equal to startsAt, in another offset",
            json!({"name": "n", "total": 5, "startsAt": "2030-01-01T00:00:00Z", "endsAt": "2030-01-01T01:00:00+01:00"}),
            422,
            "invalid_field",
            Some("endsAt"),
        ),
        Case {
            method: Method::GET,
            path: "/campaigns/{id}/close",
            ..create("GET on close", json!(null), 405, "method_not_allowed", None)
        },
        Case {
            path: "/campaigns/not-a-uuid/close",
            ..create(
                "close of an id that is not a UUID",
                json!(null),
                400,
                "invalid_campaign_id",
                None,
            )
        },
        Case {
            path: "/campaigns/6f1c1e0e-0000-4000-8000-000000000000/close",
            ..create(
                "close of an unknown campaign",
                json!(null),
                404,
                "campaign_not_found",
                None,
            )
        },
        list("limit 0", "/campaigns?limit=0", "limit"),
        list("limit 1001", "/campaigns?limit=1001", "limit"),
        list("limit not a number", "/campaigns?limit=ten", "limit"),
        list(
            "limit negative",
            "/campaigns/{id}/redemptions?limit=-1",
            "limit",
        ),
        list("limit given twice", "/campaigns?limit=5&limit=6", "limit"),
        list(
            "a cursor not one of ours",
            "/campaigns?cursor=abc",
            "cursor",
        ),
        list(
            "a redemptions cursor on the campaigns",
            "/campaigns?cursor=7200000001",
            "cursor",
        ),
        list(
            "a cursor of the right kind and the wrong length",
            "/campaigns/{id}/redemptions?cursor=72000001",
            "cursor",
        ),
        list(
            "an unknown parameter",
            "/campaigns/{id}/redemptions?offset=10",
            "offset",
        ),
        Case {
            method: Method::GET,
            path: "/campaigns/{id}/redemptions/%01",
            ..create(
                "a user id with a control character",
                json!(null),
                422,
                "invalid_field",
                Some("userId"),
            )
        },
        Case {
            content_type: Some("text/csv"),
            ..create(
                "wrong content type",
                json!({"name": "n", "total": 5}),
                415,
                "unsupported_media_type",
                None,
            )
        },
    ]
}

#[rstest]
#[tokio::test]
async fn every_malformed_request_is_a_4xx_problem_and_changes_nothing(
    #[values(Single, Cluster)] topology: Topology,
) {
    let app = TestApp::spawn_on(topology).await;
    let id = app.create_campaign(50).await;
    assert_eq!(app.redeem(id, "before", "k").await.outcome(), "REDEEMED");
    let before = app.summary(id).await;
    let campaigns_before: i64 =
        sqlx::query_scalar("select count(*) from campaigns where name = 'n'")
            .fetch_one(&app.db)
            .await
            .unwrap();
    let document: Value = app.get_json("/openapi.json").await;

    for case in cases() {
        // The OpenAPI document lists this answer for the operation (when it is one).
        let operation = &document["paths"][case.path][case.method.as_str().to_lowercase()];
        if !operation.is_null() {
            let documented = &operation["responses"][case.status.as_str()];
            assert!(
                documented["content"]["application/problem+json"].is_object(),
                "{}: {} {} is not documented",
                case.what,
                case.status,
                case.path
            );
        }
        let mut request = app
            .client
            .request(
                case.method.clone(),
                app.url(&case.path.replace("{id}", &id.to_string())),
            )
            .body(case.body.clone());
        if let Some(content_type) = case.content_type {
            request = request.header("content-type", content_type);
        }
        if let Some(key) = &case.idempotency_header {
            request = request.header("idempotency-key", key);
        }
        let response = request.send().await.unwrap();

        assert_eq!(response.status(), case.status, "{}", case.what);
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json",
            "{}",
            case.what
        );
        let problem: Value = response.json().await.unwrap();
        assert_eq!(problem["code"], case.code, "{}: {problem}", case.what);
        assert_eq!(problem["status"], case.status.as_u16(), "{}", case.what);
        assert!(
            !problem["detail"].as_str().unwrap().is_empty(),
            "{}",
            case.what
        );
        assert_eq!(
            problem["field"].as_str(),
            case.field,
            "{}: {problem}",
            case.what
        );

        assert_eq!(
            app.summary(id).await,
            before,
            "{} changed the campaign",
            case.what
        );
        // The next normal request still works.
        let fine = app.redeem(id, "before", "k").await;
        assert!(
            fine.replayed && fine.outcome() == "REDEEMED",
            "after {}: {fine:?}",
            case.what
        );
    }
    let campaigns_after: i64 =
        sqlx::query_scalar("select count(*) from campaigns where name = 'n'")
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert_eq!(
        campaigns_after, campaigns_before,
        "a bad create made a campaign"
    );
    assert_eq!(app.redeem(id, "after", "k").await.outcome(), "REDEEMED");
}
