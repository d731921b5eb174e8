//! The failure model of DESIGN.md, one fault at a time, injected for real under client load:
//! processes killed with SIGKILL, servers stopped, Redis restarted with and without its data,
//! Redis rolled back. Each test records every request and answer, lets the system recover, and
//! holds the history against PostgreSQL and `voucher-gateway reconcile`. Every setting is the
//! default, and where nothing is lost, every acknowledged redemption must be in PostgreSQL within
//! `DURABLE_WITHIN` of the service's return. The figures they print
//! (`cargo test faults -- --nocapture`) are the ones the README quotes.

use std::{
    collections::HashSet,
    time::{Duration, Instant},
};

use redis::{AsyncCommands, streams::StreamPendingReply};
use serde_json::Value;
use sqlx::PgPool;
use voucher_gateway::{domain::CampaignId, redis::keys::Shards};

use crate::{
    helpers::{PgServer, RedisServer, TestApp, database_url, http, private_redis_config, stored},
    load::{Audit, Load},
    process::{GatewayProcess, create_campaign, private_database, reconcile},
};

pub const CLIENTS: usize = 16;

/// Plenty: these tests never sell out unless they mean to.
pub const LARGE: i64 = 1_000_000;

/// After any single fault, every acknowledged redemption is in PostgreSQL this soon after the
/// service is back.
const DURABLE_WITHIN: Duration = Duration::from_secs(10);

pub async fn connect(redis_url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(redis_url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// Waits until every outbox stream is empty: each entry written to PostgreSQL and acknowledged.
/// Returns how long that took.
pub async fn wait_drained(redis_url: &str) -> Duration {
    wait_drained_on(&mut connect(redis_url).await).await
}

/// `wait_drained` on a connection of any topology.
pub async fn wait_drained_on(con: &mut impl AsyncCommands) -> Duration {
    let started = Instant::now();
    loop {
        let mut backlog = 0;
        for outbox in Shards::new(16).outboxes() {
            backlog += con.xlen::<_, u64>(&outbox).await.unwrap_or(0);
        }
        if backlog == 0 {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{backlog} entries never drained"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Entries pending with the writers of `instance`.
pub async fn pending_with_on(con: &mut impl AsyncCommands, instance: &str) -> u64 {
    let prefix = format!("{instance}/");
    let mut pending = 0;
    for outbox in Shards::new(16).outboxes() {
        let reply: redis::RedisResult<StreamPendingReply> = con.xpending(&outbox, "writers").await;
        if let Ok(StreamPendingReply::Data(data)) = reply {
            pending += data
                .consumers
                .iter()
                .filter(|consumer| consumer.name.starts_with(&prefix))
                .map(|consumer| consumer.pending as u64)
                .sum::<u64>();
        }
    }
    pending
}

/// Waits until the gateway answers that the campaign has no voucher left.
pub async fn wait_sold_out(app: &TestApp, id: CampaignId) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let response = app.get_campaign(id).await;
        if response.status() == reqwest::StatusCode::OK
            && response.json::<Value>().await.unwrap()["remaining"] == 0
        {
            return;
        }
        assert!(Instant::now() < deadline, "never sold out");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub async fn shared_db() -> PgPool {
    PgPool::connect(&database_url()).await.unwrap()
}

/// Holds the campaign's row lock, so that the writers storing its entries stall with them.
pub async fn stall_writers(
    db: &PgPool,
    id: CampaignId,
) -> sqlx::Transaction<'static, sqlx::Postgres> {
    let mut stall = db.begin().await.unwrap();
    sqlx::query("select 1 from campaigns where id = $1 for update")
        .bind(id.as_uuid())
        .execute(&mut *stall)
        .await
        .unwrap();
    stall
}

/// Waits until the writers of `instance` hold entries read and not yet stored, and a moment
/// more for each of them to take a batch; returns how many entries they hold.
async fn wait_held(redis_url: &str, instance: &str) -> u64 {
    wait_held_on(&mut connect(redis_url).await, instance).await
}

/// `wait_held` on a connection of any topology.
pub async fn wait_held_on(con: &mut impl AsyncCommands, instance: &str) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(20);
    while pending_with_on(con, instance).await == 0 {
        assert!(Instant::now() < deadline, "the writers never held entries");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    pending_with_on(con, instance).await
}

pub fn assert_durable_in_time(fault: &str, durable: Duration) {
    assert!(
        durable < DURABLE_WITHIN,
        "{fault}: the last acknowledged redemption reached PostgreSQL {durable:?} after the \
         service's return"
    );
}

async fn assert_reconciled(database: &str, redis: &str, id: CampaignId) {
    let found = reconcile(database, redis, &["--campaign", &id.to_string()]).await;
    assert_eq!(found.code, 0, "{:#} {}", found.report, found.stderr);
}

#[tokio::test]
async fn gateway_killed_under_load_loses_nothing_and_its_restart_stores_what_it_held_at_once() {
    let redis = RedisServer::start();
    let db = shared_db().await;
    let mut gateway = GatewayProcess::start(&database_url(), &redis.url(), &[]).await;
    let id = create_campaign(&gateway.url, LARGE).await;
    let load = Load::start(vec![gateway.url.clone()], id, CLIENTS);
    load.wait_acked(300).await;
    // The process dies holding entries it read and had not stored.
    let stall = stall_writers(&db, id).await;
    let held = wait_held(&redis.url(), &gateway.instance()).await;

    gateway.kill().await;
    let killed = Instant::now();
    stall.rollback().await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    gateway.start_again().await;
    let restarted = Instant::now();
    let durable = load.durable_after(&db, restarted).await;
    load.wait_acked(load.acked() + 300).await;
    let history = load.stop().await;
    let drained = wait_drained(&redis.url()).await;

    let audit = history.audit(&db, id, &HashSet::new()).await;
    assert!(audit.lost.is_empty(), "lost {:?}", audit.lost);
    assert_eq!(stored(&db, id).await.len(), audit.acked.len());
    assert_reconciled(&database_url(), &redis.url(), id).await;
    assert_durable_in_time("gateway SIGKILL", durable);
    // The new process found its old entries under its own names: nothing waited for a claim.
    assert_eq!(gateway.metric("vg_writer_claimed_total", &[]).await, 0.0);
    eprintln!(
        "gateway SIGKILL holding {held} read entries: {} acked, 0 lost, 0 doubled; answering \
         again {:?} after the kill; every acknowledged redemption in PostgreSQL {durable:?} after \
         the restart (its own entries re-read, none claimed); outbox drained {drained:?} after \
         the load",
        audit.acked.len(),
        history.first_decision_after(restarted) + (restarted - killed),
    );
}

#[tokio::test]
async fn postgres_stopped_under_load_redeems_go_on_and_the_backlog_drains() {
    let (redis, postgres) = (RedisServer::start(), PgServer::start());
    let mut config = private_redis_config(&redis, true);
    config.database.database_url = postgres.url().into();
    let app = TestApp::spawn_with(config).await;
    let id = app.create_campaign(LARGE).await;
    let load = Load::start(vec![app.address.clone()], id, CLIENTS);
    load.wait_acked(300).await;

    postgres.stop();
    load.next_phase();
    let before = load.acked();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let during = load.acked() - before;
    load.next_phase();
    postgres.start_again();
    let restarted = Instant::now();
    let durable = load.durable_after(&app.db, restarted).await;
    load.wait_acked(load.acked() + 300).await;
    let history = load.stop().await;
    wait_drained(&redis.url()).await;

    let outage: Vec<_> = history.records.iter().filter(|r| r.phase == 1).collect();
    assert!(during > 0, "no redeem answered while PostgreSQL was down");
    assert!(
        outage.iter().all(|r| r.decision.is_some()),
        "every redeem during the outage is decided from Redis"
    );
    let audit = history.audit(&app.db, id, &HashSet::new()).await;
    assert!(audit.lost.is_empty(), "lost {:?}", audit.lost);
    assert_eq!(stored(&app.db, id).await.len(), audit.acked.len());
    assert_reconciled(&postgres.url(), &redis.url(), id).await;
    assert_durable_in_time("PostgreSQL outage", durable);
    eprintln!(
        "PostgreSQL down 3 s: {during} new redemptions acked during the outage, {} answers, \
         0 undecided; all {} stored once; every acknowledged redemption in PostgreSQL \
         {durable:?} after PostgreSQL restarted",
        outage.len(),
        audit.acked.len(),
    );
}

#[tokio::test]
async fn redis_with_aof_always_killed_and_restarted_loses_nothing() {
    let mut redis = RedisServer::start_with_aof();
    let mut config = private_redis_config(&redis, true);
    config.instance_id = Some("aof".into());
    let app = TestApp::spawn_with(config).await;
    let id = app.create_campaign(LARGE).await;
    let load = Load::start(vec![app.address.clone()], id, CLIENTS);
    load.wait_acked(300).await;
    // Redis dies while the writers hold entries they read and have not stored.
    let stall = stall_writers(&app.db, id).await;
    let held = wait_held(&redis.url(), "aof").await;

    redis.kill();
    load.next_phase();
    stall.rollback().await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    redis.restart();
    let restarted = Instant::now();
    load.next_phase();
    let durable = load.durable_after(&app.db, restarted).await;
    load.wait_acked(load.acked() + 300).await;
    let history = load.stop().await;
    let drained = wait_drained(&redis.url()).await;

    let audit = history.audit(&app.db, id, &HashSet::new()).await;
    assert!(audit.lost.is_empty(), "lost {:?}", audit.lost);
    assert_eq!(stored(&app.db, id).await.len(), audit.acked.len());
    assert_reconciled(&database_url(), &redis.url(), id).await;
    assert_durable_in_time("Redis restart with AOF", durable);
    eprintln!(
        "Redis (AOF always) killed for 1 s while the writers held {held} read entries: {} acked, \
         0 lost; {} attempts answered 503 or nothing meanwhile; deciding again {:?} after the \
         restart; every acknowledged redemption in PostgreSQL {durable:?} after it; drained \
         {drained:?} after the load",
        audit.acked.len(),
        audit.undecided,
        history.first_decision_after(restarted),
    );
}

#[tokio::test]
async fn redis_restarted_empty_rehydrates_never_over_redeems_and_reconcile_counts_the_loss() {
    let mut redis = RedisServer::start();
    let database = private_database().await;
    let mut config = private_redis_config(&redis, true);
    config.database.database_url = database.clone().into();
    let app = TestApp::spawn_with(config).await;
    let total = 2_000;
    let id = app.create_campaign(total).await;
    let before_fault = Load::start(vec![app.address.clone()], id, CLIENTS);
    before_fault.wait_acked(300).await;

    // Hold the campaign's row lock so that the writers stall with the batch they hold: what is
    // acknowledged from then on stays unread in the outbox, and is lost with Redis.
    let stall = stall_writers(&app.db, id).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    before_fault.wait_acked(before_fault.acked() + 100).await;
    redis.kill();
    let first = before_fault.stop().await;
    stall.rollback().await.unwrap();
    // The writers store the batches they hold; what was still unread is gone with Redis.
    tokio::time::sleep(Duration::from_secs(1)).await;
    redis.restart();
    let restarted = Instant::now();
    let after_fault = Load::start(vec![app.address.clone()], id, CLIENTS);
    wait_sold_out(&app, id).await;
    let history = first.merge(after_fault.stop().await);
    wait_drained(&redis.url()).await;

    let audit = history.audit(&app.db, id, &HashSet::new()).await;
    let lost = audit.lost.len();
    assert!(lost > 0, "the fault lost nothing: the test proves nothing");
    // No over-redemption anywhere: every voucher granted once in PostgreSQL and in Redis.
    assert_eq!(stored(&app.db, id).await.len() as i64, total);
    let summary = app.summary(id).await;
    assert_eq!(
        (summary["redeemed"].as_i64(), summary["remaining"].as_i64()),
        (Some(total), Some(0))
    );
    assert_eq!(
        audit.acked.len() as i64,
        total + lost as i64,
        "clients saw the lost grants too"
    );
    assert_eq!(
        history
            .records
            .iter()
            .filter(
                |r| r.decision.as_deref() == Some("REDEEMED") && r.kind == crate::load::Kind::New
            )
            .count(),
        audit.acked.len()
    );

    let found = reconcile(&database, &redis.url(), &[]).await;
    assert_eq!(found.code, 1, "{}", found.stderr);
    assert!(
        found.report["redis_data_lost_at"].is_string(),
        "{:#}",
        found.report
    );
    let campaign = found.campaign(id);
    assert_eq!(
        campaign["lost_acks"]["new"].as_array().unwrap().len(),
        lost,
        "{campaign:#}"
    );
    let repaired = reconcile(&database, &redis.url(), &["--repair"]).await;
    assert_eq!(repaired.code, 0, "{:#}", repaired.report);
    let again = reconcile(&database, &redis.url(), &[]).await;
    assert_eq!(again.code, 0);
    assert_eq!(again.campaign(id)["lost_acks"]["recorded"], lost);
    eprintln!(
        "Redis restarted empty: {lost} of {} acknowledged redemptions lost (clients' record), \
         reconcile counted {lost}; deciding again {:?} after the restart; sold out at exactly \
         {total} in PostgreSQL and Redis",
        audit.acked.len(),
        history.first_decision_after(restarted),
    );
}

#[tokio::test]
async fn redis_rolled_back_postgres_refuses_every_excess_grant_and_repair_closes_it() {
    let redis = RedisServer::start();
    let app = TestApp::spawn_with(private_redis_config(&redis, true)).await;
    let total = 400;
    let id = app.create_campaign(total).await;
    let (first, holders_then) = sell_out_then_roll_back(&app, &redis.url(), id, total).await;
    let regranting = Load::start(vec![app.address.clone()], id, 8);
    wait_sold_out(&app, id).await;
    let history = first.merge(regranting.stop().await);
    wait_drained(&redis.url()).await;

    let excess = (total - holders_then) as usize;
    assert_eq!(
        stored(&app.db, id).await.len() as i64,
        total,
        "PostgreSQL never over-redeems"
    );
    let audit = history.audit(&app.db, id, &HashSet::new()).await;
    let rejected: Vec<(String, String)> = sqlx::query_as(
        "select user_id, reason from rejected_redemptions where campaign_id = $1 order by user_id",
    )
    .bind(id.as_uuid())
    .fetch_all(&app.db)
    .await
    .unwrap();
    let refused: Vec<String> = rejected.iter().map(|(user, _)| user.clone()).collect();
    assert_eq!(
        audit.lost, refused,
        "every excess grant, and only those, refused"
    );
    assert_eq!(refused.len(), excess);

    let found = reconcile(
        &database_url(),
        &redis.url(),
        &["--campaign", &id.to_string()],
    )
    .await;
    assert_eq!(found.code, 1);
    let campaign = found.campaign(id);
    assert_eq!(campaign["rejected"].as_array().unwrap().len(), excess);
    assert_eq!(
        campaign["missing_in_redis"].as_array().unwrap().len(),
        excess
    );

    let repaired = reconcile(
        &database_url(),
        &redis.url(),
        &["--repair", "--campaign", &id.to_string()],
    )
    .await;
    assert_eq!(repaired.code, 0, "{:#}", repaired.report);
    let summary = app.summary(id).await;
    assert_eq!(
        (summary["redeemed"].as_i64(), summary["remaining"].as_i64()),
        (Some(total), Some(0))
    );

    // Afterwards nobody new gets a voucher, and every holder still replays.
    let late = Load::start(vec![app.address.clone()], id, 4);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let late = late.stop().await;
    assert!(
        late.decided()
            .filter(|r| r.kind == crate::load::Kind::New)
            .all(|r| r.decision.as_deref() == Some("SOLD_OUT"))
    );
    wait_drained(&redis.url()).await;
    assert_eq!(stored(&app.db, id).await.len() as i64, total);
    assert_reconciled(&database_url(), &redis.url(), id).await;
    eprintln!(
        "Redis rolled back {} grants: {excess} excess grants made, {excess} refused by PostgreSQL \
         ({}), reconcile listed {excess} and repaired; 0 over-redeemed",
        total - holders_then,
        rejected.first().map_or("", |(_, reason)| reason.as_str()),
    );
}

/// Load on campaign `id` over the gateways at `urls`; `doomed` (one of them) SIGKILLed for good
/// while its writers hold entries they read (stalled on the campaign's row lock). Waits until
/// every acknowledged redemption is stored and the outboxes drained, checks that nothing stays
/// pending with the dead writers and nothing acknowledged is lost, and returns how many entries
/// they held, how long after the kill everything was durable, and the audit.
pub async fn kill_one_for_good(
    doomed: &mut GatewayProcess,
    urls: Vec<String>,
    con: &mut impl AsyncCommands,
    db: &PgPool,
    id: CampaignId,
) -> (u64, Duration, Audit) {
    let load = Load::start(urls, id, CLIENTS);
    load.wait_acked(300).await;
    let stall = stall_writers(db, id).await;
    let instance = doomed.instance();
    let held = wait_held_on(con, &instance).await;

    doomed.kill().await;
    let killed = Instant::now();
    stall.rollback().await.unwrap();
    let durable = load.durable_after(db, killed).await;
    load.wait_acked(load.acked() + 300).await;
    let history = load.stop().await;
    wait_drained_on(con).await;

    assert_eq!(pending_with_on(con, &instance).await, 0);
    let audit = history.audit(db, id, &HashSet::new()).await;
    assert!(audit.lost.is_empty(), "lost {:?}", audit.lost);
    assert_eq!(stored(db, id).await.len(), audit.acked.len());
    (held, durable, audit)
}

#[tokio::test]
async fn two_gateways_one_killed_for_good_the_survivor_claims_its_pending_entries() {
    let redis = RedisServer::start();
    let db = shared_db().await;
    let mut doomed = GatewayProcess::start(&database_url(), &redis.url(), &[]).await;
    // The survivor runs on several threads (the default is one), so that runtime serves load too.
    let survivor =
        GatewayProcess::start(&database_url(), &redis.url(), &[("VG_WORKER_THREADS", "2")]).await;
    let id = create_campaign(&survivor.url, LARGE).await;
    let urls = vec![doomed.url.clone(), survivor.url.clone()];
    let mut con = connect(&redis.url()).await;
    let (held, durable, audit) = kill_one_for_good(&mut doomed, urls, &mut con, &db, id).await;
    assert_reconciled(&database_url(), &redis.url(), id).await;
    assert_durable_in_time("one of two gateways killed for good", durable);
    assert!(survivor.metric("vg_writer_claimed_total", &[]).await > 0.0);
    eprintln!(
        "two gateways, one SIGKILLed for good holding {held} pending entries: all claimed and \
         stored once by the survivor; every acknowledged redemption in PostgreSQL {durable:?} \
         after the kill (VG_CLAIM_IDLE_TIMEOUT 5 s); {} acked, 0 lost",
        audit.acked.len()
    );
}

#[tokio::test]
async fn poison_entries_go_to_the_dead_letter_streams_and_the_rest_drains() {
    let redis = RedisServer::start();
    let db = shared_db().await;
    let gateway = GatewayProcess::start(
        &database_url(),
        &redis.url(),
        &[("VG_READY_MAX_OUTBOX_LAG", "2s")],
    )
    .await;
    let id = create_campaign(&gateway.url, LARGE).await;
    let load = Load::start(vec![gateway.url.clone()], id, CLIENTS);
    load.wait_acked(200).await;

    // Entries the writers cannot decode, and entries PostgreSQL refuses for good, appended to
    // the live outbox of the campaign's shard (and to another shard) among the traffic's.
    let shards = Shards::new(16);
    let outbox = shards.campaign(id).outbox;
    let other = shards.shard((shards.of(id) + 1) % 16).outbox;
    let poison: [(&str, &[(&str, String)]); 7] = [
        (&outbox, &[("garbage", "x".into())]),
        (&outbox, &[("r", "not four parts".into())]),
        (&outbox, &[("r", format!("{id}\nnul\u{0}user\nk\n5"))]),
        (&outbox, &[("r", format!("{id}\nbig-seq\nk\n99999999999"))]),
        (&outbox, &[("r", format!("{id}\nzero-seq\nk\n0"))]),
        (&outbox, &[("r", format!("{id}\nnegative-seq\nk\n-3"))]),
        (&other, &[("r", format!("{id}\nelsewhere\nk\n0"))]),
    ];
    let mut con = connect(&redis.url()).await;
    let mut injected = Vec::new();
    for (stream, fields) in poison {
        let entry: String = con.xadd(stream, "*", fields).await.unwrap();
        injected.push(entry);
        load.wait_acked(load.acked() + 20).await;
    }
    let injected_at = Instant::now();
    load.wait_acked(load.acked() + 200).await;
    let durable = load.durable_after(&db, injected_at).await;
    let history = load.stop().await;
    let drained = wait_drained(&redis.url()).await;

    let audit = history.audit(&db, id, &HashSet::new()).await;
    assert!(audit.lost.is_empty(), "lost {:?}", audit.lost);
    assert_eq!(stored(&db, id).await.len(), audit.acked.len());
    assert_durable_in_time("poison entries", durable);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let ready = http()
        .get(format!("{}/ready", gateway.url))
        .send()
        .await
        .unwrap();
    assert_eq!(
        ready.status(),
        reqwest::StatusCode::OK,
        "{}",
        ready.text().await.unwrap()
    );

    let mut letters = Vec::new();
    for shard in shards.all() {
        for letter in voucher_gateway::redis::outbox::dead_letters(&mut con, &shard)
            .await
            .unwrap()
        {
            assert!(!letter.reason.is_empty());
            letters.push((letter.entry_id, letter.reason));
        }
    }
    letters.sort();
    let mut expected = injected.clone();
    expected.sort();
    let ids: Vec<&String> = letters.iter().map(|(id, _)| id).collect();
    assert_eq!(ids, expected.iter().collect::<Vec<_>>(), "{letters:#?}");
    let metric = "vg_writer_dead_lettered_total";
    let malformed = gateway.metric(metric, &[("kind", "malformed")]).await;
    let refused = gateway.metric(metric, &[("kind", "refused")]).await;
    assert_eq!((malformed, refused), (4.0, 3.0));
    let refused: Vec<&str> = letters
        .iter()
        .filter(|(_, reason)| reason.starts_with("PostgreSQL"))
        .map(|(_, reason)| reason.as_str())
        .collect();
    assert!(
        refused
            .iter()
            .all(|reason| reason.contains("redemptions_seq_positive")),
        "{refused:?}"
    );

    let found = reconcile(
        &database_url(),
        &redis.url(),
        &["--campaign", &id.to_string()],
    )
    .await;
    assert_eq!(
        found.code, 1,
        "dead letters need a person: {:#}",
        found.report
    );
    let listed = found.report["dead_letters"].as_array().unwrap();
    assert_eq!(listed.len(), injected.len());
    assert_eq!(
        found.campaign(id)["lost_from_outbox"]
            .as_array()
            .unwrap()
            .len(),
        0
    );
    eprintln!(
        "poison: {} entries PostgreSQL cannot take (4 undecodable, 3 refused by its constraints) \
         appended to live outboxes: all {} moved to the dead-letter streams, listed by \
         reconcile; {} acked redemptions around them all stored, the last {durable:?} after the \
         injection; outbox drained {drained:?} after the load, /ready 200",
        injected.len(),
        letters.len(),
        audit.acked.len(),
    );
}

/// Sells campaign `id` (of `total`) out under load on `app`, whose Redis is at `redis_url`,
/// then rolls Redis back to a snapshot of the campaign taken after 150 grants, as from a
/// lagging replica. Returns the load's history and how many holders the snapshot has.
pub async fn sell_out_then_roll_back(
    app: &TestApp,
    redis_url: &str,
    id: CampaignId,
    total: i64,
) -> (crate::load::History, i64) {
    let keys = app.keys(id);
    let mut con = connect(redis_url).await;
    let selling = Load::start(vec![app.address.clone()], id, 8);
    selling.wait_acked(150).await;
    // One consistent snapshot of both keys, as a replica would hold them.
    let (campaign_then, users_then): (Vec<u8>, Vec<u8>) = redis::pipe()
        .atomic()
        .cmd("DUMP")
        .arg(&keys.campaign)
        .cmd("DUMP")
        .arg(&keys.users)
        .query_async(&mut con)
        .await
        .unwrap();
    selling.wait_acked(total as usize).await;
    let first = selling.stop().await;
    wait_drained(redis_url).await;
    assert_eq!(stored(&app.db, id).await.len() as i64, total);

    for (key, dump) in [(&keys.campaign, &campaign_then), (&keys.users, &users_then)] {
        let _: () = redis::cmd("RESTORE")
            .arg(key)
            .arg(0)
            .arg(dump)
            .arg("REPLACE")
            .query_async(&mut con)
            .await
            .unwrap();
    }
    let holders_then: i64 = con.hlen(&keys.users).await.unwrap();
    (first, holders_then)
}
