//! `--ack replica` and `--ack postgres`: what a REDEEMED waits for, what a request gets when its
//! durability does not come in time, and that the retry with the same key answers the same
//! decision once it does. The contract and concurrency tests run in every mode too.

use std::time::Duration;

use futures::future::join_all;
use reqwest::StatusCode;
use rstest::rstest;
use serde_json::Value;

use crate::helpers::{
    Acked, RedisServer, TestApp,
    Topology::{self, Cluster, Single},
    redis_cli, stored, test_config_on,
};

/// An app on `topology` acknowledging as `ack`, with a short acknowledgement timeout; `writer`
/// off leaves every redemption in the outbox.
async fn spawn(topology: Topology, ack: Acked, writer: bool) -> TestApp {
    let mut config = test_config_on(topology);
    config.ack.mode = ack;
    config.ack.timeout = Duration::from_millis(300);
    config.writer.no_writer = !writer;
    TestApp::spawn_with(config).await
}

/// Asserts a 503 `not_durable` problem with Retry-After.
async fn assert_not_durable(response: reqwest::Response) {
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(response.headers()["retry-after"], "1");
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    let problem: Value = response.json().await.unwrap();
    assert_eq!(problem["code"], "not_durable", "{problem}");
}

#[rstest]
#[tokio::test]
async fn in_postgres_mode_every_redeemed_answer_finds_its_row_stored(
    #[values(Single, Cluster)] topology: Topology,
) {
    let app = TestApp::spawn_acked(topology, Acked::Postgres).await;
    let id = app.create_campaign(60).await;
    let checks = (0..60).map(|n| {
        let app = &app;
        async move {
            let answer = app.redeem(id, format!("user-{n}"), "k").await;
            assert_eq!(answer.outcome(), "REDEEMED", "{answer:?}");
            // Read at once, after the answer: it must already be there.
            let row: Option<String> = sqlx::query_scalar(
                "select idempotency_key from redemptions where campaign_id = $1 and user_id = $2",
            )
            .bind(id.as_uuid())
            .bind(format!("user-{n}"))
            .fetch_optional(&app.db)
            .await
            .unwrap();
            assert_eq!(row.as_deref(), Some("k"), "user-{n} answered before stored");
        }
    });
    join_all(checks).await;
    assert_eq!(app.redeem(id, "late", "k").await.outcome(), "SOLD_OUT");
}

#[rstest]
#[tokio::test]
async fn in_postgres_mode_a_grant_nobody_stores_is_not_durable_until_another_gateway_stores_it(
    #[values(Single, Cluster)] topology: Topology,
) {
    let waiting = spawn(topology, Acked::Postgres, false).await;
    let id = waiting.create_campaign(10).await;
    assert_not_durable(waiting.post_redeem(id, "alice", "k1").await).await;
    assert!(stored(&waiting.db, id).await.is_empty());

    // Another gateway's writer stores it, and its message answers a redeem waiting on the first
    // gateway; the retry finds the row.
    let mut config = test_config_on(topology);
    config.ack.mode = Acked::Postgres;
    config.ack.timeout = Duration::from_secs(3);
    let waiting_long = TestApp::spawn_with(config.clone()).await;
    config.writer.no_writer = false;
    let bob = tokio::spawn({
        let client = waiting_long.client.clone();
        let url = waiting_long.url(&format!("/campaigns/{id}/redeem"));
        async move {
            client
                .post(url)
                .json(&serde_json::json!({"userId": "bob", "idempotencyKey": "k2"}))
                .send()
                .await
                .unwrap()
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _storing = TestApp::spawn_with(config).await;
    let bob = bob.await.unwrap();
    assert_eq!(bob.status(), StatusCode::OK);
    assert_eq!(bob.text().await.unwrap(), r#"{"status":"REDEEMED"}"#);

    let retry = waiting.redeem(id, "alice", "k1").await;
    assert_eq!(
        (retry.status, retry.body.as_str(), retry.replayed),
        (StatusCode::OK, r#"{"status":"REDEEMED"}"#, true)
    );
    let users: Vec<String> = stored(&waiting.db, id)
        .await
        .into_iter()
        .map(|r| r.0)
        .collect();
    assert_eq!(users.len(), 2, "{users:?}");
}

#[tokio::test]
async fn in_postgres_mode_a_waiter_that_misses_the_message_finds_its_row_in_postgres() {
    // The storing gateway runs in redis mode: its writers publish nothing.
    let mut config = test_config_on(Single);
    config.ack.mode = Acked::Postgres;
    config.ack.timeout = Duration::from_secs(3);
    config.writer.no_writer = true;
    let waiting = TestApp::spawn_with(config).await;
    let id = waiting.create_campaign(10).await;
    let answer = tokio::spawn({
        let client = waiting.client.clone();
        let url = waiting.url(&format!("/campaigns/{id}/redeem"));
        async move {
            client
                .post(url)
                .json(&serde_json::json!({"userId": "carol", "idempotencyKey": "k"}))
                .send()
                .await
                .unwrap()
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _storing = TestApp::spawn_acked(Single, Acked::Redis).await;
    let answer = answer.await.unwrap();
    assert_eq!(answer.status(), StatusCode::OK);
    assert_eq!(answer.text().await.unwrap(), r#"{"status":"REDEEMED"}"#);
}

#[tokio::test]
async fn in_replica_mode_a_lost_replica_makes_redeems_not_durable_and_its_return_answers_them() {
    let primary = RedisServer::start();
    let mut replica = RedisServer::start_replica_of(&primary);
    let mut config = test_config_on(Single);
    config.redis.redis_url = primary.url().into();
    config.ack.mode = Acked::Replica;
    config.ack.timeout = Duration::from_millis(300);
    let app = TestApp::spawn_with(config).await;
    let id = app.create_campaign(10).await;
    assert_eq!(app.redeem(id, "ann", "k").await.outcome(), "REDEEMED");
    // Read at once, after the answer: the replica holds the decision already.
    let users = app.keys(id).users;
    assert_eq!(
        redis_cli(replica.port, &["hget", &users, "ann"]).trim(),
        "k"
    );

    replica.kill();
    assert_not_durable(app.post_redeem(id, "bob", "k").await).await;
    // A replay and a refusal wait for the replicas too: they read state the replica may lack.
    assert_not_durable(app.post_redeem(id, "ann", "k").await).await;
    assert_not_durable(app.post_redeem(id, "ann", "other").await).await;

    replica.restart();
    crate::helpers::wait_until(|| {
        redis_cli(replica.port, &["info", "replication"]).contains("master_link_status:up")
    });
    let retry = app.redeem(id, "bob", "k").await;
    assert_eq!(
        (retry.body.as_str(), retry.replayed),
        (r#"{"status":"REDEEMED"}"#, true)
    );
    assert_eq!(
        app.redeem(id, "ann", "other").await.outcome(),
        "ALREADY_REDEEMED"
    );
}
