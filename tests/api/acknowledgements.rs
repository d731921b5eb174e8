//! `--ack replica` and `--ack postgres`: what a REDEEMED waits for, what a request gets when its
//! durability does not come in time, and that the retry with the same key answers the same
//! decision once it does. The contract and concurrency tests run in every mode too.

use std::{collections::HashSet, time::Duration};

use futures::future::join_all;
use redis::AsyncCommands;
use reqwest::StatusCode;
use rstest::rstest;
use serde_json::Value;
use voucher_gateway::redis::keys::Shards;

use crate::{
    faults::{
        CLIENTS, connect, sell_out_then_roll_back, stall_writers, wait_drained, wait_sold_out,
    },
    helpers::{
        Acked, PgServer, RedisCluster, RedisServer, TestApp,
        Topology::{self, Cluster, Single},
        private_redis_config, redis_cli, stored, test_config_on,
    },
    load::Load,
    process::private_database,
};

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

/// A Redis of `topology` of the test's own: no other test's writers read its outbox.
enum PrivateRedis {
    Server(RedisServer),
    Cluster(RedisCluster),
}

impl PrivateRedis {
    fn start(topology: Topology) -> Self {
        match topology {
            Single => Self::Server(RedisServer::start()),
            Cluster => Self::Cluster(RedisCluster::start()),
        }
    }

    /// Settings for a `--ack postgres` gateway on it, with or without writers.
    fn config(&self, writer: bool, ack_timeout: Duration) -> voucher_gateway::config::ServeConfig {
        let mut config = match self {
            Self::Server(redis) => private_redis_config(redis, writer),
            Self::Cluster(cluster) => cluster.config(writer),
        };
        config.ack.mode = Acked::Postgres;
        config.ack.timeout = ack_timeout;
        config
    }
}

#[rstest]
#[tokio::test]
async fn in_postgres_mode_a_grant_nobody_stores_is_not_durable_until_another_gateway_stores_it(
    #[values(Single, Cluster)] topology: Topology,
) {
    let redis = PrivateRedis::start(topology);
    let waiting = TestApp::spawn_with(redis.config(false, Duration::from_millis(300))).await;
    let id = waiting.create_campaign(10).await;
    assert_not_durable(waiting.post_redeem(id, "alice", "k1").await).await;
    assert!(stored(&waiting.db, id).await.is_empty());

    // Another gateway's writer stores it, and its message answers a redeem waiting on the first
    // gateway; the retry finds the row.
    let waiting_long = TestApp::spawn_with(redis.config(false, Duration::from_secs(3))).await;
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
    let _storing = TestApp::spawn_with(redis.config(true, Duration::from_secs(3))).await;
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

/// Postgres-mode settings on a private Redis.
fn private_postgres_config(redis: &RedisServer) -> voucher_gateway::config::ServeConfig {
    let mut config = private_redis_config(redis, true);
    config.ack.mode = Acked::Postgres;
    config
}

#[tokio::test]
async fn in_postgres_mode_redis_restarted_empty_under_load_loses_no_acknowledged_redemption() {
    let mut redis = RedisServer::start();
    let database = private_database().await;
    let mut config = private_postgres_config(&redis);
    config.database.database_url = database.into();
    let app = TestApp::spawn_with(config).await;
    let total = 2_000;
    let id = app.create_campaign(total).await;
    let before_fault = Load::start(vec![app.address.clone()], id, CLIENTS);
    before_fault.wait_acked(300).await;

    // Stall the writers on the campaign's row lock: grants made from now on wait in the outbox,
    // unstored and so unanswered, and are lost with Redis.
    let stall = stall_writers(&app.db, id).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut con = connect(&redis.url()).await;
    let mut unstored = 0;
    for outbox in Shards::new(16).outboxes() {
        unstored += con.xlen::<_, u64>(&outbox).await.unwrap();
    }
    redis.kill();
    let first = before_fault.stop().await;
    stall.rollback().await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    redis.restart();
    let after_fault = Load::start(vec![app.address.clone()], id, CLIENTS);
    wait_sold_out(&app, id).await;
    let history = first.merge(after_fault.stop().await);
    wait_drained(&redis.url()).await;

    assert!(
        unstored > 0,
        "nothing was lost with Redis: the test proves nothing"
    );
    let audit = history.audit(&app.db, id, &HashSet::new()).await;
    assert_eq!(audit.lost, Vec::<String>::new(), "acknowledged and lost");
    assert_eq!(stored(&app.db, id).await.len() as i64, total);
    let (undecided, without_retry_after) = history.undecided_and_without_retry_after();
    assert_eq!(without_retry_after, 0, "a 503 without Retry-After");
    eprintln!(
        "--ack postgres, Redis restarted empty under load: {unstored} grants unstored in the \
         outbox were lost with Redis, none of them acknowledged; 0 of {} acknowledged \
         redemptions lost (clients' record); {undecided} attempts answered 503 and retried; \
         sold out at exactly {total} in PostgreSQL",
        audit.acked.len(),
    );
}

#[tokio::test]
async fn in_postgres_mode_redis_rolled_back_never_answers_redeemed_for_a_grant_postgres_refused() {
    let redis = RedisServer::start();
    let app = TestApp::spawn_with(private_postgres_config(&redis)).await;
    let total = 400;
    let id = app.create_campaign(total).await;
    let (first, holders_then) = sell_out_then_roll_back(&app, &redis.url(), id, total).await;
    let regranting = Load::start(vec![app.address.clone()], id, 8);
    wait_sold_out(&app, id).await;
    let second = regranting.stop().await;
    wait_drained(&redis.url()).await;

    let excess = (total - holders_then) as usize;
    let refused: i64 =
        sqlx::query_scalar("select count(*) from rejected_redemptions where campaign_id = $1")
            .bind(id.as_uuid())
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert_eq!(
        refused as usize, excess,
        "Redis granted again what it had given"
    );
    assert!(
        second
            .decided()
            .all(|r| r.decision.as_deref() == Some("SOLD_OUT")),
        "a grant PostgreSQL refused was answered other than SOLD_OUT"
    );
    let history = first.merge(second);
    let audit = history.audit(&app.db, id, &HashSet::new()).await;
    assert_eq!(audit.lost, Vec::<String>::new(), "REDEEMED without a row");
    assert_eq!(stored(&app.db, id).await.len() as i64, total);
    eprintln!(
        "--ack postgres, Redis rolled back {excess} grants: {excess} grants made again, all \
         refused by PostgreSQL and answered SOLD_OUT; 0 REDEEMED answers without a row ({} \
         acknowledged, all stored)",
        audit.acked.len(),
    );
}

#[tokio::test]
async fn in_postgres_mode_postgresql_down_makes_new_grants_not_durable_until_it_is_back() {
    let (redis, postgres) = (RedisServer::start(), PgServer::start());
    let mut config = private_postgres_config(&redis);
    config.database.database_url = postgres.url().into();
    config.ack.timeout = Duration::from_millis(300);
    let app = TestApp::spawn_with(config).await;
    let id = app.create_campaign(10).await;
    assert_eq!(app.redeem(id, "ann", "k").await.outcome(), "REDEEMED");

    postgres.stop();
    let during = app.post_redeem(id, "bob", "k").await;
    // Redis's own answers go on.
    let second_key = app.redeem(id, "ann", "other").await;
    postgres.start_again();
    assert_not_durable(during).await;
    assert_eq!(second_key.outcome(), "ALREADY_REDEEMED");

    // Once the writers store the entry that waited in the outbox, the retry answers it.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let retry = loop {
        let retry = app.redeem(id, "bob", "k").await;
        if retry.status == StatusCode::OK || std::time::Instant::now() > deadline {
            break retry;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        (retry.body.as_str(), retry.replayed),
        (r#"{"status":"REDEEMED"}"#, true)
    );
    assert_eq!(stored(&app.db, id).await.len(), 2);
}
