//! `voucher-gateway reconcile`: every kind of difference found and classified, repaired while the
//! gateway serves, the second repair a no-op, and the exit codes.

use redis::AsyncCommands;
use rstest::rstest;
use serde_json::Value;
use voucher_gateway::domain::CampaignId;

use crate::{
    helpers::{
        TestApp,
        Topology::{self, Cluster, Single},
        database_url, free_port, redis_url, stored,
    },
    process::{reconcile, reconcile_command},
};

async fn check(topology: Topology, id: CampaignId, repair: bool) -> crate::process::Reconciled {
    let id = id.to_string();
    let mut args = vec!["--campaign", id.as_str()];
    args.extend(topology.flags());
    if repair {
        args.push("--repair");
    }
    reconcile(&database_url(), &topology.redis_url(), &args).await
}

fn users(list: &Value) -> Vec<&str> {
    let mut users: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|entry| entry["user"].as_str().unwrap())
        .collect();
    users.sort();
    users
}

#[rstest]
#[tokio::test]
async fn a_campaign_in_sync_exits_0(#[values(Single, Cluster)] topology: Topology) {
    let app = TestApp::spawn_on(topology).await;
    let id = app.create_campaign(5).await;
    app.redeem(id, "a", "k").await;
    app.wait_persisted(id, 1).await;

    let found = check(topology, id, false).await;
    assert_eq!(found.code, 0, "{}", found.stderr);
    let campaign = found.campaign(id);
    assert_eq!(campaign["postgres"]["rows"], 1);
    assert_eq!(campaign["redis"]["holders"], 1);
    assert_eq!(campaign["redis"]["remaining"], 4);
    assert_eq!(found.report["in_sync"], 1);
}

#[rstest]
#[tokio::test]
async fn every_kind_of_difference_is_found_then_repaired_once(
    #[values(Single, Cluster)] topology: Topology,
) {
    let app = TestApp::spawn_on(topology).await;
    let id = app.create_campaign(10).await;
    for user in ["a", "b", "c"] {
        app.redeem(id, user, "k").await;
    }
    app.wait_persisted(id, 3).await;
    let keys = app.keys(id);
    let mut con = app.redis.clone();
    // Redis forgets b and holds c under another key; it holds "ghost", whose outbox entry is
    // gone; PostgreSQL's counter is off by two.
    let _: () = con.hdel(&keys.users, "b").await.unwrap();
    let _: () = con.hset(&keys.users, "c", "other").await.unwrap();
    let _: () = con.hset(&keys.users, "ghost", "g").await.unwrap();
    let _: () = con.hincr(&keys.campaign, "remaining", 5).await.unwrap();
    sqlx::query("update campaigns set redeemed = redeemed + 2 where id = $1")
        .bind(id.as_uuid())
        .execute(&app.db)
        .await
        .unwrap();

    let found = check(topology, id, false).await;
    assert_eq!(found.code, 1, "{}", found.stderr);
    let campaign = found.campaign(id);
    assert_eq!(users(&campaign["lost_from_outbox"]), ["ghost"]);
    assert_eq!(users(&campaign["missing_in_redis"]), ["b", "c"]);
    assert_eq!(campaign["missing_in_redis"][1]["redis_key"], "other");
    let drift: Vec<&str> = campaign["drift"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["kind"].as_str().unwrap())
        .collect();
    assert_eq!(drift, ["redeemed_counter", "redis_remaining"]);
    // Holders a, c and ghost: 10 - 3 expected, 7 + 5 held.
    assert_eq!(campaign["drift"][1]["remaining"], 12);
    assert_eq!(campaign["drift"][1]["expected"], 7);

    let repaired = check(topology, id, true).await;
    assert_eq!(repaired.code, 0, "{:#}", repaired.report);
    let campaign = repaired.campaign(id);
    assert_eq!(campaign["repaired"]["written_to_postgres"], 1);
    assert_eq!(campaign["repaired"]["set_in_redis"], 2);
    assert_eq!(campaign["repaired"]["redeemed_recounted"], true);
    let rows = stored(&app.db, id).await;
    assert_eq!(rows.len(), 4);
    assert_eq!(rows[3].0, "ghost");
    assert_eq!(rows[3].2, 4, "ghost gets the next voucher number");
    let summary = app.summary(id).await;
    assert_eq!(
        (summary["redeemed"].as_i64(), summary["remaining"].as_i64()),
        (Some(4), Some(6))
    );
    assert_eq!(app.redeem(id, "c", "k").await.outcome(), "REDEEMED");
    assert_eq!(
        app.redeem(id, "c", "other").await.outcome(),
        "ALREADY_REDEEMED"
    );
    assert_eq!(app.redeem(id, "b", "k").await.outcome(), "REDEEMED");

    let again = check(topology, id, true).await;
    assert_eq!(again.code, 0);
    assert!(
        again.campaign(id).get("repaired").is_none(),
        "nothing to repair twice"
    );
    assert_eq!(stored(&app.db, id).await, rows);
}

#[rstest]
#[tokio::test]
async fn a_refused_grant_is_listed_and_removed_from_redis_by_repair(
    #[values(Single, Cluster)] topology: Topology,
) {
    let app = TestApp::spawn_on(topology).await;
    let id = app.create_campaign(1).await;
    app.redeem(id, "first", "k").await;
    app.wait_persisted(id, 1).await;
    // Redis rolled back: the voucher is free again and goes to someone else.
    let keys = app.keys(id);
    let mut con = app.redis.clone();
    let _: () = con.hdel(&keys.users, "first").await.unwrap();
    let _: () = con.hset(&keys.campaign, "remaining", 1).await.unwrap();
    assert_eq!(app.redeem(id, "second", "k").await.outcome(), "REDEEMED");
    wait_rejected(&app, id, 1).await;

    let found = check(topology, id, false).await;
    assert_eq!(found.code, 1);
    let campaign = found.campaign(id);
    assert_eq!(campaign["rejected"][0]["user"], "second");
    assert_eq!(campaign["rejected"][0]["reason"], "sold_out");
    assert_eq!(campaign["rejected"][0]["still_in_redis"], true);
    assert_eq!(users(&campaign["missing_in_redis"]), ["first"]);

    let repaired = check(topology, id, true).await;
    assert_eq!(repaired.code, 0, "{:#}", repaired.report);
    let campaign = repaired.campaign(id);
    assert_eq!(campaign["repaired"]["removed_from_redis"], 1);
    assert_eq!(
        campaign["rejected"][0]["still_in_redis"], false,
        "history now"
    );
    assert_eq!(app.redeem(id, "second", "k").await.outcome(), "SOLD_OUT");
    assert!(app.redeem(id, "first", "k").await.replayed);
}

async fn wait_rejected(app: &TestApp, id: CampaignId, count: i64) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let rejected: i64 =
            sqlx::query_scalar("select count(*) from rejected_redemptions where campaign_id = $1")
                .bind(id.as_uuid())
                .fetch_one(&app.db)
                .await
                .unwrap();
        if rejected == count {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "{rejected} rejected");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[rstest]
#[tokio::test]
async fn the_table_names_each_difference(#[values(Single, Cluster)] topology: Topology) {
    let app = TestApp::spawn_on(topology).await;
    let id = app.create_campaign(3).await;
    app.redeem(id, "a", "k").await;
    app.wait_persisted(id, 1).await;
    let mut con = app.redis.clone();
    let _: () = con.hdel(&app.keys(id).users, "a").await.unwrap();

    let id = id.to_string();
    let mut args = vec!["--campaign", id.as_str()];
    args.extend(topology.flags());
    let output = reconcile_command(&database_url(), &topology.redis_url(), &args)
        .output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let table = String::from_utf8(output.stdout).unwrap();
    assert!(table.contains(&id.to_string()), "{table}");
    assert!(
        table.contains("missing in Redis (PostgreSQL holds them): 1: a"),
        "{table}"
    );
    assert!(
        table.contains("1 campaigns checked: 0 in sync, 1 with differences"),
        "{table}"
    );
}

#[tokio::test]
async fn an_unknown_campaign_exits_1_and_an_unreachable_server_exits_2() {
    let unknown = CampaignId::new_random().to_string();
    let found = reconcile(&database_url(), &redis_url(), &["--campaign", &unknown]).await;
    assert_eq!(found.code, 1);
    assert_eq!(found.report["unknown"][0], unknown.as_str());

    let nowhere = format!("redis://127.0.0.1:{}", free_port());
    let failed = reconcile(&database_url(), &nowhere, &[]).await;
    assert_eq!(failed.code, 2);
    assert!(
        failed
            .stderr
            .starts_with("reconcile failed: cannot connect to Redis"),
        "{}",
        failed.stderr
    );
    assert!(!failed.stderr.contains("panicked"), "{}", failed.stderr);
}

#[rstest]
#[tokio::test]
async fn a_refused_pair_granted_again_and_stored_is_a_holder_not_an_open_refusal(
    #[values(Single, Cluster)] topology: Topology,
) {
    let app = TestApp::spawn_on(topology).await;
    let id = app.create_campaign(5).await;
    app.redeem(id, "again", "k").await;
    app.wait_persisted(id, 1).await;
    // Refused once (Redis had lost state), granted again and stored since.
    sqlx::query(
        "insert into rejected_redemptions (campaign_id, user_id, idempotency_key, seq, redeemed_at, reason)
         values ($1, 'again', 'k', 1, now(), 'sold_out')",
    )
    .bind(id.as_uuid())
    .execute(&app.db)
    .await
    .unwrap();

    let repaired = check(topology, id, true).await;
    assert_eq!(repaired.code, 0, "{:#}", repaired.report);
    let campaign = repaired.campaign(id);
    assert_eq!(campaign["rejected"][0]["still_in_redis"], false);
    assert!(campaign.get("repaired").is_none(), "nothing to repair");
    assert!(app.redeem(id, "again", "k").await.replayed);
}

#[rstest]
#[tokio::test]
async fn a_window_redis_and_postgresql_disagree_on_is_repaired_to_the_earlier_end(
    #[values(Single, Cluster)] topology: Topology,
) {
    let app = TestApp::spawn_on(topology).await;
    let id = app.create_campaign(5).await;
    // A close cut short after Redis and before PostgreSQL: Redis has ended, PostgreSQL has not.
    let ended_ms = time::OffsetDateTime::now_utc().unix_timestamp() * 1000 - 1000;
    let mut con = app.redis.clone();
    let _: () = con
        .hset(&app.keys(id).campaign, "ends", ended_ms)
        .await
        .unwrap();
    assert_eq!(app.redeem(id, "a", "k").await.outcome(), "ENDED");

    let found = check(topology, id, false).await;
    assert_eq!(found.code, 1, "{}", found.stderr);
    let drift = &found.campaign(id)["drift"][0];
    assert_eq!(drift["kind"], "window", "{drift}");
    assert_eq!(drift["postgres_ends_at"], Value::Null);

    let repaired = check(topology, id, true).await;
    assert_eq!(repaired.code, 0, "{:#}", repaired.report);
    let stored_ms: i64 = sqlx::query_scalar(
        "select (extract(epoch from ends_at) * 1000)::bigint from campaigns where id = $1",
    )
    .bind(id.as_uuid())
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert_eq!(stored_ms, ended_ms, "PostgreSQL took Redis's earlier end");
    assert_eq!(app.redeem(id, "a", "k").await.outcome(), "ENDED");
    assert_eq!(check(topology, id, false).await.code, 0);
}
