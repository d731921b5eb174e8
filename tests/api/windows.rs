//! Sale windows: `startsAt` and `endsAt`, judged by Redis's clock inside `redeem.lua`, and
//! `POST /campaigns/{id}/close`. Every answer given stays the answer: a replay is REDEEMED after
//! the end, SOLD_OUT and ENDED are final, and "not started" records nothing.

use std::time::Duration;

use redis::AsyncCommands;
use reqwest::StatusCode;
use rstest::rstest;
use serde_json::{Value, json};
use time::{OffsetDateTime, format_description::well_known::Rfc3339};
use voucher_gateway::domain::CampaignId;

use crate::helpers::{
    TestApp,
    Topology::{self, Cluster, Single},
    test_config_on,
};

/// RFC 3339 of now plus `offset` seconds (negative: in the past).
fn from_now(offset: f64) -> String {
    (OffsetDateTime::now_utc() + time::Duration::seconds_f64(offset))
        .format(&Rfc3339)
        .unwrap()
}

async fn create(app: &TestApp, body: Value) -> Value {
    let response = app
        .client
        .post(app.url("/campaigns"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    response.json().await.unwrap()
}

fn id_of(summary: &Value) -> CampaignId {
    CampaignId::parse(summary["id"].as_str().unwrap()).unwrap()
}

async fn close(app: &TestApp, id: CampaignId) -> reqwest::Response {
    app.client
        .post(app.url(&format!("/campaigns/{id}/close")))
        .send()
        .await
        .unwrap()
}

#[rstest]
#[tokio::test]
async fn a_window_is_answered_in_utc_and_open_ends_are_null(
    #[values(Single, Cluster)] topology: Topology,
) {
    let app = TestApp::spawn_on(topology).await;
    let created = create(
        &app,
        json!({"name": "w", "total": 5, "startsAt": "2030-06-01T09:00:00+02:00", "endsAt": "2030-06-01T10:30:00.25+02:00"}),
    )
    .await;
    assert_eq!(created["startsAt"], "2030-06-01T07:00:00Z");
    assert_eq!(created["endsAt"], "2030-06-01T08:30:00.25Z");
    assert_eq!(app.summary(id_of(&created)).await, created);

    let open = create(&app, json!({"name": "w", "total": 5})).await;
    assert_eq!(
        (open["startsAt"].clone(), open["endsAt"].clone()),
        (Value::Null, Value::Null)
    );
}

#[rstest]
#[tokio::test]
async fn before_the_start_a_redeem_is_409_with_retry_after_and_records_nothing(
    #[values(Single, Cluster)] topology: Topology,
) {
    let app = TestApp::spawn_on(topology).await;
    let id = id_of(
        &create(
            &app,
            json!({"name": "w", "total": 5, "startsAt": from_now(2.5)}),
        )
        .await,
    );

    let early = app.post_redeem(id, "alice", "k").await;
    assert_eq!(early.status(), StatusCode::CONFLICT);
    assert_eq!(early.headers()["content-type"], "application/problem+json");
    let retry_after: u64 = early.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((2..=3).contains(&retry_after), "Retry-After {retry_after}");
    let problem: Value = early.json().await.unwrap();
    assert_eq!(problem["code"], "campaign_not_started", "{problem}");
    assert_eq!(app.summary(id).await["remaining"], 5);

    tokio::time::sleep(Duration::from_secs(retry_after)).await;
    let open = app.redeem(id, "alice", "k").await;
    assert_eq!(
        (open.outcome().as_str(), open.replayed),
        ("REDEEMED", false)
    );
}

#[rstest]
#[tokio::test]
async fn past_the_end_new_redeems_are_ended_and_every_earlier_answer_stands(
    #[values(Single, Cluster)] topology: Topology,
) {
    let app = TestApp::spawn_on(topology).await;
    let id = id_of(
        &create(
            &app,
            json!({"name": "w", "total": 2, "startsAt": from_now(-60.0), "endsAt": from_now(1.5)}),
        )
        .await,
    );
    assert_eq!(app.redeem(id, "alice", "k").await.outcome(), "REDEEMED");
    assert_eq!(app.redeem(id, "bob", "k").await.outcome(), "REDEEMED");
    assert_eq!(app.redeem(id, "carol", "k").await.outcome(), "SOLD_OUT");
    let sold_out_before = app.redeem(id, "dave", "k").await;

    tokio::time::sleep(Duration::from_millis(1_600)).await;
    let replay = app.redeem(id, "alice", "k").await;
    assert_eq!(
        (replay.body.as_str(), replay.replayed),
        (r#"{"status":"REDEEMED"}"#, true)
    );
    assert_eq!(
        app.redeem(id, "alice", "other").await.outcome(),
        "ALREADY_REDEEMED"
    );
    assert_eq!(app.redeem(id, "dave", "k").await.body, sold_out_before.body);

    // A campaign with vouchers left answers ENDED, and goes on answering it.
    let id = id_of(
        &create(
            &app,
            json!({"name": "w", "total": 5, "endsAt": from_now(1.0)}),
        )
        .await,
    );
    assert_eq!(app.redeem(id, "erin", "k").await.outcome(), "REDEEMED");
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    for _ in 0..2 {
        let ended = app.redeem(id, "frank", "k").await;
        assert_eq!(
            (ended.status, ended.body.as_str()),
            (StatusCode::OK, r#"{"status":"ENDED"}"#)
        );
    }
    assert_eq!(app.summary(id).await["remaining"], 4);
}

#[rstest]
#[tokio::test]
async fn closing_ends_the_sale_now_once_and_for_all(#[values(Single, Cluster)] topology: Topology) {
    let app = TestApp::spawn_on(topology).await;
    let id = app.create_campaign(5).await;
    assert_eq!(app.redeem(id, "alice", "k").await.outcome(), "REDEEMED");

    let before = OffsetDateTime::now_utc();
    let closed = close(&app, id).await;
    assert_eq!(closed.status(), StatusCode::OK);
    let closed: Value = closed.json().await.unwrap();
    let ends = OffsetDateTime::parse(closed["endsAt"].as_str().unwrap(), &Rfc3339).unwrap();
    assert!(
        (ends - before).abs() < time::Duration::seconds(2),
        "{closed}"
    );
    assert_eq!(closed["redeemed"], 1);

    let again: Value = close(&app, id).await.json().await.unwrap();
    assert_eq!(again, closed, "closing again changes nothing");
    assert_eq!(app.redeem(id, "bob", "k").await.outcome(), "ENDED");
    assert_eq!(app.redeem(id, "alice", "k").await.outcome(), "REDEEMED");
    let stored: Option<OffsetDateTime> =
        sqlx::query_scalar("select ends_at from campaigns where id = $1")
            .bind(id.as_uuid())
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert_eq!(
        stored.map(|at| at.unix_timestamp_nanos() / 1_000_000),
        Some(ends.unix_timestamp_nanos() / 1_000_000)
    );

    // Closed before it opened: the window is empty, and redeems answer ENDED.
    let later = id_of(
        &create(
            &app,
            json!({"name": "w", "total": 5, "startsAt": from_now(3600.0)}),
        )
        .await,
    );
    let closed: Value = close(&app, later).await.json().await.unwrap();
    assert_eq!(closed["startsAt"], closed["endsAt"], "{closed}");
    assert_eq!(app.redeem(later, "carol", "k").await.outcome(), "ENDED");
}

#[tokio::test]
async fn closing_needs_the_admin_token_when_one_is_set() {
    let mut config = test_config_on(Single);
    config.admin_token = Some("admin-secret".into());
    let app = TestApp::spawn_with(config).await;
    let created = app
        .client
        .post(app.url("/campaigns"))
        .bearer_auth("admin-secret")
        .json(&json!({"name": "w", "total": 5}))
        .send()
        .await
        .unwrap();
    let id = id_of(&created.json().await.unwrap());
    assert_eq!(close(&app, id).await.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(app.redeem(id, "alice", "k").await.outcome(), "REDEEMED");
    let closed = app
        .client
        .post(app.url(&format!("/campaigns/{id}/close")))
        .bearer_auth("admin-secret")
        .send()
        .await
        .unwrap();
    assert_eq!(closed.status(), StatusCode::OK);
}

#[rstest]
#[tokio::test]
async fn a_campaign_hydrated_from_postgresql_keeps_its_window(
    #[values(Single, Cluster)] topology: Topology,
) {
    let app = TestApp::spawn_on(topology).await;
    let windowed = create(
        &app,
        json!({"name": "w", "total": 5, "startsAt": from_now(3600.0), "endsAt": from_now(7200.0)}),
    )
    .await;
    let closed_id = app.create_campaign(5).await;
    let closed: Value = close(&app, closed_id).await.json().await.unwrap();

    // Redis loses both campaigns; the next touch loads them from PostgreSQL.
    let mut con = app.redis.clone();
    for id in [id_of(&windowed), closed_id] {
        let keys = app.keys(id);
        let _: () = con.del(&[&keys.campaign, &keys.users]).await.unwrap();
    }
    assert_eq!(app.summary(id_of(&windowed)).await, windowed);
    assert_eq!(
        app.post_redeem(id_of(&windowed), "alice", "k")
            .await
            .status(),
        StatusCode::CONFLICT
    );
    assert_eq!(app.redeem(closed_id, "bob", "k").await.outcome(), "ENDED");
    assert_eq!(app.summary(closed_id).await, closed);
}
