//! Without Redis there is no decision: redeems answer 503 with Retry-After, then recover.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::{RedisServer, TestApp, private_redis_config};

#[tokio::test]
async fn redis_down_is_a_503_with_retry_after_and_redis_back_empty_recovers() {
    let mut redis = RedisServer::start();
    let app = TestApp::spawn_with(private_redis_config(&redis, true)).await;
    let id = app.create_campaign(10).await;
    assert_eq!(app.redeem(id, "early", "k").await.outcome(), "REDEEMED");
    app.wait_persisted(id, 1).await;

    redis.kill();
    let redeem = app.post_redeem(id, "during", "k").await;
    let summary = app.get_campaign(id).await;

    for response in [redeem, summary] {
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()["retry-after"], "1");
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json"
        );
        assert_eq!(
            response.json::<Value>().await.unwrap()["code"],
            "redis_unavailable"
        );
    }

    // Back, but empty: the campaign re-hydrates from PostgreSQL on first touch.
    redis.restart();
    let deadline = Instant::now() + Duration::from_secs(15);
    let answer = loop {
        let answer = app.redeem(id, "early", "k").await;
        if answer.status == StatusCode::OK || Instant::now() > deadline {
            break answer;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(answer.replayed, "{answer:?}");
    assert_eq!(app.redeem(id, "during", "k").await.outcome(), "REDEEMED");
    app.wait_persisted(id, 2).await;
}
