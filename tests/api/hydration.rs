//! A campaign whose Redis state is gone comes back from PostgreSQL and the outbox, exactly.

use std::time::{Duration, Instant};

use futures::future::join_all;
use redis::AsyncCommands;
use reqwest::StatusCode;
use rstest::rstest;
use voucher_gateway::{domain::CampaignId, redis::keys::Shards};

use crate::helpers::{
    RedisServer, TestApp,
    Topology::{self, Cluster, Single},
    command_calls, private_redis_config, queue_entries, reset_command_stats, stored,
};

async fn forget(app: &TestApp, id: voucher_gateway::domain::CampaignId) {
    let keys = app.keys(id);
    let mut con = app.redis.clone();
    let _: () = con.del(&[&keys.campaign, &keys.users]).await.unwrap();
}

#[rstest]
#[tokio::test]
async fn a_campaign_deleted_from_redis_answers_as_before(
    #[values(Single, Cluster)] topology: Topology,
) {
    let app = TestApp::spawn_on(topology).await;
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

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_first_touches_on_two_gateways_hydrate_once_correctly(
    #[values(Single, Cluster)] topology: Topology,
) {
    let (first, second) = (
        TestApp::spawn_on(topology).await,
        TestApp::spawn_on(topology).await,
    );
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

#[tokio::test]
async fn an_unknown_id_costs_no_outbox_read_however_long_its_shards_backlog() {
    // No writer: the backlog stays queued, as while PostgreSQL is slow or down.
    let redis = RedisServer::start();
    let app = TestApp::spawn_with(private_redis_config(&redis, false)).await;
    let shards = Shards::new(16);
    let id = app.create_campaign(10).await;
    let loaded = shards.of(id);
    let mut con = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    for chunk in 0..50 {
        let entries =
            (0..1_000).map(|n| (id, format!("queued-{chunk}-{n}"), chunk * 1_000 + n + 1));
        queue_entries(&mut con, entries).await;
    }
    let unknown_on = |shard: u16| loop {
        let candidate = CampaignId::new_random();
        if shards.of(candidate) == shard {
            break candidate;
        }
    };
    reset_command_stats(&mut con).await;

    // Alternating, so that the machine's drift weighs on both alike; medians, so that one stall
    // does not decide.
    let (mut on_backlog, mut elsewhere) = (Vec::new(), Vec::new());
    for _ in 0..100 {
        for (shard, latencies) in [
            (loaded, &mut on_backlog),
            ((loaded + 1) % 16, &mut elsewhere),
        ] {
            let started = Instant::now();
            let response = app.post_redeem(unknown_on(shard), "u", "k").await;
            latencies.push(started.elapsed());
            assert_eq!(response.status(), StatusCode::NOT_FOUND);
        }
    }
    let median = |latencies: &mut Vec<Duration>| {
        latencies.sort();
        latencies[latencies.len() / 2]
    };
    let (on_backlog, elsewhere) = (median(&mut on_backlog), median(&mut elsewhere));
    let pages = command_calls(&mut con, "xrange").await;
    assert_eq!(pages, 0, "an outbox was read");
    let ratio = on_backlog.as_secs_f64() / elsewhere.as_secs_f64();
    assert!(ratio < 2.0, "{ratio:.2}x");
    eprintln!(
        "unknown ids: {on_backlog:.2?} each (median) on the shard with 50,000 entries queued, \
         {elsewhere:.2?} on an empty one ({ratio:.2}x); no outbox read"
    );
}
