//! The listings and the lookup: keyset pages with opaque cursors and `Link` headers, the CSV
//! export, one user's redemption, and who may read them.

use std::time::Duration;

use reqwest::StatusCode;
use rstest::rstest;
use serde_json::{Value, json};
use voucher_gateway::domain::CampaignId;

use crate::helpers::{
    TestApp,
    Topology::{self, Cluster, Single},
    test_config_on,
};

async fn get(app: &TestApp, path: &str) -> reqwest::Response {
    app.client.get(app.url(path)).send().await.unwrap()
}

/// Follows `next` from `first` until `done` says stop; checks each page's `Link` header.
async fn walk(app: &TestApp, first: &str, mut done: impl FnMut(&[Value]) -> bool) -> Vec<Value> {
    let mut items = Vec::new();
    let mut path = first.to_owned();
    for _ in 0..100 {
        let response = get(app, &path).await;
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        let link = response
            .headers()
            .get("link")
            .map(|value| value.to_str().unwrap().to_owned());
        let page: Value = response.json().await.unwrap();
        items.extend(page["items"].as_array().unwrap().iter().cloned());
        let Some(next) = page["next"].as_str() else {
            assert_eq!(link, None, "the last page links nowhere");
            return items;
        };
        let base = first.split('?').next().unwrap();
        let limit = first.split("limit=").nth(1).unwrap_or("100");
        path = format!("{base}?limit={limit}&cursor={next}");
        assert_eq!(link, Some(format!("<{path}>; rel=\"next\"")));
        if done(&items) {
            return items;
        }
    }
    panic!("more than 100 pages");
}

#[rstest]
#[tokio::test]
async fn campaigns_are_listed_newest_first_page_by_page_with_redis_counters(
    #[values(Single, Cluster)] topology: Topology,
) {
    let app = TestApp::spawn_on(topology).await;
    let mut ours = Vec::new();
    for _ in 0..5 {
        ours.push(app.create_campaign(10).await.to_string());
    }
    let first: CampaignId = CampaignId::parse(&ours[0]).unwrap();
    assert_eq!(app.redeem(first, "alice", "k").await.outcome(), "REDEEMED");

    let listed = walk(&app, "/campaigns?limit=2", |items| {
        items.iter().any(|item| item["id"] == ours[0])
    })
    .await;
    let ids: Vec<&str> = listed
        .iter()
        .map(|item| item["id"].as_str().unwrap())
        .collect();
    let mut unique = ids.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), ids.len(), "a campaign on two pages");
    // Campaigns other tests create meanwhile may sit between ours, never out of order.
    let positions: Vec<usize> = ours
        .iter()
        .map(|id| ids.iter().position(|listed| listed == id).unwrap())
        .collect();
    assert!(
        positions.windows(2).all(|pair| pair[0] > pair[1]),
        "{positions:?}"
    );
    let alice = listed.iter().find(|item| item["id"] == ours[0]).unwrap();
    assert_eq!(alice, &app.summary(first).await, "counters from Redis");
    assert_eq!(alice["redeemed"], 1);
}

/// Parses RFC 4180 CSV: quoted fields may hold commas, quotes (doubled) and line breaks.
fn parse_csv(text: &str) -> Vec<Vec<String>> {
    let (mut rows, mut row, mut field) = (Vec::new(), Vec::new(), String::new());
    let (mut quoted, mut chars) = (false, text.chars().peekable());
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            (true, '"') => quoted = false,
            (true, c) => field.push(c),
            (false, '"') => quoted = true,
            (false, ',') => row.push(std::mem::take(&mut field)),
            (false, '\r') => {}
            (false, '\n') => {
                row.push(std::mem::take(&mut field));
                rows.push(std::mem::take(&mut row));
            }
            (false, c) => field.push(c),
        }
    }
    rows
}

#[rstest]
#[tokio::test]
async fn redemptions_are_listed_in_voucher_order_and_export_as_csv(
    #[values(Single, Cluster)] topology: Topology,
) {
    let app = TestApp::spawn_on(topology).await;
    let id = app.create_campaign(10).await;
    let users = [
        "ann",
        "bob, the second",
        "\"quoted\" carl",
        "dé, \"x\"",
        "eve",
        "fay",
        "gus",
    ];
    for (n, user) in users.iter().enumerate() {
        assert_eq!(
            app.redeem(id, *user, format!("key,{n}")).await.outcome(),
            "REDEEMED"
        );
    }
    crate::faults::wait_drained_on(&mut app.redis.clone()).await;

    let listed = walk(
        &app,
        &format!("/campaigns/{id}/redemptions?limit=3"),
        |_| false,
    )
    .await;
    let seqs: Vec<i64> = listed
        .iter()
        .map(|item| item["seq"].as_i64().unwrap())
        .collect();
    assert_eq!(seqs, (1..=7).collect::<Vec<_>>());
    assert_eq!(listed[1]["userId"], "bob, the second");
    assert_eq!(listed[1]["idempotencyKey"], "key,1");
    assert!(listed[1]["redeemedAt"].as_str().unwrap().ends_with('Z'));

    let csv = app
        .client
        .get(app.url(&format!("/campaigns/{id}/redemptions")))
        .header("accept", "text/csv")
        .send()
        .await
        .unwrap();
    assert_eq!(csv.status(), StatusCode::OK);
    assert_eq!(csv.headers()["content-type"], "text/csv; charset=utf-8");
    let rows = parse_csv(&csv.text().await.unwrap());
    assert_eq!(rows[0], ["userId", "idempotencyKey", "seq", "redeemedAt"]);
    let exported: Vec<(String, String, i64)> = rows[1..]
        .iter()
        .map(|row| (row[0].clone(), row[1].clone(), row[2].parse().unwrap()))
        .collect();
    let expected: Vec<(String, String, i64)> = listed
        .iter()
        .map(|item| {
            let text = |name: &str| item[name].as_str().unwrap().to_owned();
            (
                text("userId"),
                text("idempotencyKey"),
                item["seq"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(exported, expected, "every user id survives the round trip");
    assert_eq!(rows[1][3], listed[0]["redeemedAt"].as_str().unwrap());

    assert_eq!(
        get(
            &app,
            "/campaigns/6f1c1e0e-0000-4000-8000-000000000000/redemptions"
        )
        .await
        .status(),
        StatusCode::NOT_FOUND
    );
}

#[rstest]
#[tokio::test]
async fn a_user_looks_up_their_redemption_as_the_redeem_decided_it(
    #[values(Single, Cluster)] topology: Topology,
) {
    let mut config = test_config_on(topology);
    // Stored late: the lookup answers from Redis first.
    config.writer.writer_flush_interval = Some(Duration::from_millis(1_500));
    let app = TestApp::spawn_with(config).await;
    let id = app.create_campaign(10).await;
    let user = "a/b c é?#";
    assert_eq!(app.redeem(id, user, "k-1").await.outcome(), "REDEEMED");
    let path = format!(
        "/campaigns/{id}/redemptions/{}",
        url::form_urlencoded::byte_serialize(user.as_bytes())
            .collect::<String>()
            .replace('+', "%20")
    );
    let found: Value = get(&app, &path).await.json().await.unwrap();
    assert_eq!(
        found,
        json!({"userId": user, "idempotencyKey": "k-1", "seq": 1, "stored": false})
    );
    crate::faults::wait_drained_on(&mut app.redis.clone()).await;
    let found: Value = get(&app, &path).await.json().await.unwrap();
    assert_eq!(found["stored"], true);
    assert_eq!(found["seq"], 1);

    let nobody = get(&app, &format!("/campaigns/{id}/redemptions/nobody")).await;
    assert_eq!(nobody.status(), StatusCode::NOT_FOUND);
    let problem: Value = nobody.json().await.unwrap();
    assert_eq!(problem["code"], "redemption_not_found");
    let unknown = get(
        &app,
        "/campaigns/6f1c1e0e-0000-4000-8000-000000000000/redemptions/alice",
    )
    .await;
    let problem: Value = unknown.json().await.unwrap();
    assert_eq!(problem["code"], "campaign_not_found");
}

#[tokio::test]
async fn listings_need_the_admin_token_and_a_lookup_either_token() {
    let mut config = test_config_on(Single);
    config.admin_token = Some("admin-secret".into());
    config.api_token = Some("api-secret".into());
    let app = TestApp::spawn_with(config).await;
    let created = app
        .client
        .post(app.url("/campaigns"))
        .bearer_auth("admin-secret")
        .json(&json!({"name": "l", "total": 5}))
        .send()
        .await
        .unwrap();
    let id = created.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let status = |path: String, token: Option<&'static str>| {
        let request = app.client.get(app.url(&path));
        let request = match token {
            Some(token) => request.bearer_auth(token),
            None => request,
        };
        async move { request.send().await.unwrap().status() }
    };
    for path in [
        "/campaigns".to_owned(),
        format!("/campaigns/{id}/redemptions"),
    ] {
        assert_eq!(status(path.clone(), None).await, StatusCode::UNAUTHORIZED);
        assert_eq!(
            status(path.clone(), Some("api-secret")).await,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(status(path, Some("admin-secret")).await, StatusCode::OK);
    }
    let lookup = format!("/campaigns/{id}/redemptions/alice");
    assert_eq!(status(lookup.clone(), None).await, StatusCode::UNAUTHORIZED);
    for token in ["api-secret", "admin-secret"] {
        assert_eq!(
            status(lookup.clone(), Some(token)).await,
            StatusCode::NOT_FOUND
        );
    }
}
