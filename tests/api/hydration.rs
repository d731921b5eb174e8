//! A campaign whose Redis state is gone comes back from PostgreSQL and the outbox, exactly.

use futures::future::join_all;
use redis::AsyncCommands;

use crate::helpers::{RedisServer, TestApp, private_redis_config, stored};

async fn forget(app: &TestApp, id: voucher_gateway::domain::CampaignId) {
    let keys = app.keys(id);
    let mut con = app.redis.clone();
    let _: () = con.del(&[&keys.campaign, &keys.users]).await.unwrap();
}

#[tokio::test]
async fn a_campaign_deleted_from_redis_answers_as_before() {
    let app = TestApp::spawn().await;
    let id = app.create_campaign(10).await;
    for n in 0..4 {
        app.redeem(id, format!("user-{n}"), "k").await;
    }
    app.wait_persisted(id, 4).await;

    forget(&app, id).await;

    let summary = app.summary(id).await;
    assert_eq!(
        (summary["redeemed"].as_i64(), summary["remaining"].as_i64()),
        (Some(4), Some(6))
    );
    forget(&app, id).await;
    let replay = app.redeem(id, "user-0", "k").await;
    assert!(replay.replayed && replay.outcome() == "REDEEMED");
    assert_eq!(
        app.redeem(id, "user-1", "other").await.outcome(),
        "ALREADY_REDEEMED"
    );
    assert_eq!(app.redeem(id, "newcomer", "k").await.outcome(), "REDEEMED");
    app.wait_persisted(id, 5).await;
    assert_eq!(
        stored(&app.db, id).await.last().unwrap(),
        &("newcomer".into(), "k".into(), 5)
    );
}

#[tokio::test]
async fn entries_still_in_the_outbox_count_when_hydrating() {
    // No writer: every redemption stays in the outbox, none reaches PostgreSQL.
    let redis = RedisServer::start();
    let app = TestApp::spawn_with(private_redis_config(&redis, false)).await;
    let id = app.create_campaign(10).await;
    for n in 0..3 {
        app.redeem(id, format!("user-{n}"), "k").await;
    }

    forget(&app, id).await;

    assert!(app.redeem(id, "user-2", "k").await.replayed);
    assert_eq!(
        app.redeem(id, "user-0", "k2").await.outcome(),
        "ALREADY_REDEEMED"
    );
    assert_eq!(app.summary(id).await["remaining"], 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_first_touches_on_two_gateways_hydrate_once_correctly() {
    let (first, second) = (TestApp::spawn().await, TestApp::spawn().await);
    let id = first.create_campaign(100).await;
    for n in 0..20 {
        first.redeem(id, format!("old-{n}"), "k").await;
    }
    first.wait_persisted(id, 20).await;
    forget(&first, id).await;

    let answers = join_all((0..50).map(|n| {
        let app = if n % 2 == 0 { &first } else { &second };
        async move {
            if n < 20 {
                app.redeem(id, format!("old-{n}"), "k").await
            } else {
                app.redeem(id, format!("new-{n}"), "k").await
            }
        }
    }))
    .await;

    assert!(
        answers[..20].iter().all(|a| a.replayed),
        "every old holder replays"
    );
    assert!(
        answers[20..]
            .iter()
            .all(|a| a.outcome() == "REDEEMED" && !a.replayed)
    );
    let summary = second.summary(id).await;
    assert_eq!(
        (summary["redeemed"].as_i64(), summary["remaining"].as_i64()),
        (Some(50), Some(50))
    );
    first.wait_persisted(id, 50).await;
    let seqs: Vec<i32> = stored(&first.db, id)
        .await
        .iter()
        .map(|(_, _, seq)| *seq)
        .collect();
    assert_eq!(
        seqs,
        (1..=50).collect::<Vec<_>>(),
        "one hydration: numbering continues without gaps"
    );
}
