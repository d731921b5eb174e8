//! A cold Redis under load: 10,000 campaigns that PostgreSQL holds and Redis does not, and 200
//! clients redeeming across all of them at once. Every request must be answered with a decision
//! (no 503: no pool timeout, no timeout), hydration must fold in a backlog queued in the outbox
//! without reading a shard's stream once per campaign, and the writers must keep up. It needs
//! both cores to itself, so it runs after the other tests (`scripts/test` does that); the figures
//! it prints (`scripts/test storm -- --ignored --nocapture`) are the ones README quotes.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use redis::AsyncCommands;
use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;
use voucher_gateway::{domain::CampaignId, redis::keys::Shards};

use crate::{
    helpers::{RedisServer, command_calls, queue_entries, reset_command_stats},
    process::{GatewayProcess, private_database},
};

const CAMPAIGNS: usize = 10_000;
const CLIENTS: usize = 200;
/// Holders each campaign has in PostgreSQL before the storm.
const STORED_HOLDERS: i64 = 3;
/// Requests each client sends after its first touches, to random campaigns.
const MORE_PER_CLIENT: usize = 25;
/// Grants of each campaign queued in the outbox besides the clients' own.
const QUEUED_MORE: usize = 5;

/// One redeem to send: the campaign, the user, the key, and the answer it must get.
#[derive(Debug, Clone)]
struct Redeem {
    campaign: Uuid,
    user: String,
    key: String,
    replay: bool,
}

/// What a storm saw.
struct Storm {
    latencies: Vec<Duration>,
    /// How long after the start every campaign had answered its first touch.
    all_live: Duration,
    took: Duration,
}

impl Storm {
    fn p(&self, quantile: f64) -> Duration {
        let mut sorted = self.latencies.clone();
        sorted.sort();
        sorted[((sorted.len() - 1) as f64 * quantile) as usize]
    }

    fn describe(&self) -> String {
        format!(
            "{} requests in {:.2?} ({:.0}/s), every campaign live {:.2?} after the start, p50 \
             {:.1?}, p99 {:.1?}, max {:.1?}",
            self.latencies.len(),
            self.took,
            self.latencies.len() as f64 / self.took.as_secs_f64(),
            self.all_live,
            self.p(0.5),
            self.p(0.99),
            self.p(1.0),
        )
    }
}

/// Sends each client's redeems in order, `CLIENTS` at once; every answer must be 200 with the
/// expected decision (REDEEMED, a replay where `replay`).
async fn storm(url: &str, plans: Vec<Vec<Redeem>>, first_touches: usize) -> Storm {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(CLIENTS)
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let url = Arc::new(url.to_owned());
    let started = Instant::now();
    let clients = plans.into_iter().map(|plan| {
        let (http, url) = (http.clone(), url.clone());
        tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(plan.len());
            let mut touched_all = Duration::ZERO;
            for (n, redeem) in plan.iter().enumerate() {
                let sent = Instant::now();
                let response = http
                    .post(format!("{url}/campaigns/{}/redeem", redeem.campaign))
                    .json(&json!({"userId": redeem.user, "idempotencyKey": redeem.key}))
                    .send()
                    .await
                    .unwrap();
                latencies.push(sent.elapsed());
                let status = response.status();
                let replayed = response.headers().contains_key("idempotent-replayed");
                let body: Value = response.json().await.unwrap();
                assert_eq!(status, StatusCode::OK, "{redeem:?}: {body}");
                assert_eq!(body["status"], "REDEEMED", "{redeem:?}");
                assert_eq!(replayed, redeem.replay, "{redeem:?}");
                if n + 1 == first_touches {
                    touched_all = started.elapsed();
                }
            }
            (latencies, touched_all)
        })
    });
    let mut result = Storm {
        latencies: Vec::new(),
        all_live: Duration::ZERO,
        took: Duration::ZERO,
    };
    for client in futures::future::join_all(clients).await {
        let (latencies, touched_all) = client.unwrap();
        result.latencies.extend(latencies);
        result.all_live = result.all_live.max(touched_all);
    }
    result.took = started.elapsed();
    result
}

/// Each client first touches its share of the campaigns (every campaign once in all), then
/// redeems on random ones; every redeem is a new user's.
fn new_users(campaigns: &[Uuid], round: &str) -> Vec<Vec<Redeem>> {
    (0..CLIENTS)
        .map(|client| {
            let own = campaigns.iter().skip(client).step_by(CLIENTS);
            let random = (0..MORE_PER_CLIENT).map(|_| &campaigns[rand::random_range(0..CAMPAIGNS)]);
            own.chain(random)
                .enumerate()
                .map(|(n, campaign)| Redeem {
                    campaign: *campaign,
                    user: format!("{round}-{client}-{n}"),
                    key: "k".into(),
                    replay: false,
                })
                .collect()
        })
        .collect()
}

async fn campaigns_in_postgres(db: &PgPool) -> Vec<Uuid> {
    let ids: Vec<Uuid> = sqlx::query_scalar(
        "insert into campaigns (id, name, total, redeemed)
         select gen_random_uuid(), 'storm', 1000, $2 from generate_series(1, $1) returning id",
    )
    .bind(CAMPAIGNS as i32)
    .bind(STORED_HOLDERS as i32)
    .fetch_all(db)
    .await
    .unwrap();
    sqlx::query(
        "insert into redemptions (campaign_id, user_id, idempotency_key, seq, redeemed_at)
         select c.id, 'stored-' || s, 'k', s, now()
         from campaigns c, generate_series(1, $1) s where c.name = 'storm'",
    )
    .bind(STORED_HOLDERS as i32)
    .execute(db)
    .await
    .unwrap();
    ids
}

async fn rows(db: &PgPool) -> i64 {
    sqlx::query_scalar("select count(*) from redemptions")
        .fetch_one(db)
        .await
        .unwrap()
}

async fn wait_rows(db: &PgPool, expected: i64) -> Duration {
    let started = Instant::now();
    while rows(db).await != expected {
        assert!(started.elapsed() < Duration::from_secs(60), "never stored");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a load test: scripts/test runs it on its own, after the others"]
async fn a_cold_redis_under_load_answers_every_request_and_folds_in_the_backlog() {
    let redis = RedisServer::start();
    let database = private_database().await;
    let db = PgPool::connect(&database).await.unwrap();
    let campaigns = campaigns_in_postgres(&db).await;
    let touches = CAMPAIGNS / CLIENTS;
    let settings = [("VG_WORKER_THREADS", "2")];

    // Redis holds nothing (it came back empty), the writers run.
    let mut gateway = GatewayProcess::start(&database, &redis.url(), &settings).await;
    let empty = storm(&gateway.url, new_users(&campaigns, "empty"), touches).await;
    let granted = (CAMPAIGNS + CLIENTS * MORE_PER_CLIENT) as i64;
    let stored_after = wait_rows(&db, CAMPAIGNS as i64 * STORED_HOLDERS + granted).await;
    gateway.terminate(Duration::from_secs(20)).await;

    // The writers are off (as if PostgreSQL were down): what is granted stays in the outbox.
    // Then the campaigns' keys vanish from Redis and the backlog must be folded in.
    let no_writer = [("VG_WORKER_THREADS", "2"), ("VG_NO_WRITER", "true")];
    let mut gateway = GatewayProcess::start(&database, &redis.url(), &no_writer).await;
    let queued_plans = new_users(&campaigns, "queued");
    storm(&gateway.url, queued_plans.clone(), touches).await;
    let mut con = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    // And a deeper backlog: more grants of every campaign, queued as redeem.lua queues them.
    let shards = Shards::new(16);
    for chunk in campaigns.chunks(1_000) {
        let entries = chunk.iter().flat_map(|campaign| {
            (1..=QUEUED_MORE)
                .map(|n| (CampaignId::from(*campaign), format!("backlog-{n}"), 100 + n))
        });
        queue_entries(&mut con, entries).await;
    }
    let mut backlog = 0;
    for outbox in shards.outboxes() {
        backlog += con.xlen::<_, i64>(&outbox).await.unwrap();
    }
    let queued_more = (CAMPAIGNS * QUEUED_MORE) as i64;
    assert_eq!(backlog, granted + queued_more);
    for campaign in &campaigns {
        let keys = shards.campaign(CampaignId::from(*campaign));
        let _: () = con.del(&[&keys.campaign, &keys.users]).await.unwrap();
    }
    // Each client replays what it was granted: only the outbox holds those grants.
    let replays: Vec<Vec<Redeem>> = queued_plans
        .into_iter()
        .map(|plan| {
            plan.into_iter()
                .map(|redeem| Redeem {
                    replay: true,
                    ..redeem
                })
                .collect()
        })
        .collect();
    reset_command_stats(&mut con).await;
    let cold = storm(&gateway.url, replays, touches).await;
    gateway.terminate(Duration::from_secs(20)).await;
    // Each outbox page read is one XRANGE: a read of every shard's stream per campaign would be
    // this many. Campaigns cold at once share reads; at least two share each, on average.
    let pages_per_stream = backlog as usize / shards.count() as usize / 1_000 + 1;
    let unshared = CAMPAIGNS * pages_per_stream;
    let pages = command_calls(&mut con, "xrange").await as usize;
    assert!(pages * 2 < unshared, "{pages} outbox pages read");

    // With writers again, the backlog lands once.
    let _gateway = GatewayProcess::start(&database, &redis.url(), &settings).await;
    let drained = wait_rows(
        &db,
        CAMPAIGNS as i64 * STORED_HOLDERS + 2 * granted + queued_more,
    )
    .await;
    eprintln!(
        "cold Redis, {CAMPAIGNS} campaigns, {CLIENTS} clients, every answer a 200 decision:\n  \
         Redis empty, writers on: {}; every grant stored {stored_after:.2?} after the storm\n  \
         campaign keys gone with {backlog} entries queued: {}; {pages} outbox pages read \
         ({unshared} with one read per campaign); the backlog stored {drained:.2?} after the \
         writers started",
        empty.describe(),
        cold.describe(),
    );
}
