//! On a Redis Cluster: campaigns spread over every master, and faults under client load (every
//! request and answer recorded and checked afterwards, as in `faults`): a coordinated failover, a
//! master killed and its replica promoted, and one of three gateways killed. TLS with a password
//! and a private CA, on a cluster and on one server. The figures they print
//! (`cargo test cluster -- --nocapture`) are the ones the README quotes.

use std::{
    collections::{HashMap, HashSet},
    time::{Duration, Instant},
};

use redis::Value;
use rstest::rstest;
use voucher_gateway::{app::App, redis::keys};

use crate::{
    faults::{
        CLIENTS, LARGE, assert_durable_in_time, kill_one_for_good, shared_db, wait_drained_on,
    },
    helpers::{
        Acked, Certificates, RedisCluster, RedisServer, TestApp,
        Topology::{self, Cluster, Single},
        database_url, http, redis_cli, stored, test_config_on,
    },
    load::{History, Load},
    process::{GatewayProcess, Reconciled, create_campaign, reconcile},
};

/// One master's slots.
struct SlotRange {
    first: u16,
    last: u16,
    master: u16,
}

impl SlotRange {
    /// The port of the master's replica, as the master sees it.
    fn replica(&self) -> u16 {
        let info = redis_cli(self.master, &["INFO", "replication"]);
        let line = info
            .lines()
            .find(|line| line.starts_with("slave0:"))
            .unwrap();
        let port = line.split(',').find_map(|part| part.strip_prefix("port="));
        port.unwrap().parse().unwrap()
    }
}

async fn slot_ranges(con: &mut impl redis::aio::ConnectionLike) -> Vec<SlotRange> {
    let ranges: Vec<Vec<Value>> = redis::cmd("CLUSTER")
        .arg("SLOTS")
        .query_async(con)
        .await
        .unwrap();
    let port = |node: &Value| {
        let node: Vec<Value> = redis::from_redis_value_ref(node).unwrap();
        redis::from_redis_value_ref(&node[1]).unwrap()
    };
    ranges
        .iter()
        .map(|range| SlotRange {
            first: redis::from_redis_value_ref(&range[0]).unwrap(),
            last: redis::from_redis_value_ref(&range[1]).unwrap(),
            master: port(&range[2]),
        })
        .collect()
}

/// The slot range holding `key`.
async fn range_of(con: &mut impl redis::aio::ConnectionLike, key: &str) -> SlotRange {
    let slot = keys::slot(key.split(['{', '}']).nth(1).unwrap());
    slot_ranges(con)
        .await
        .into_iter()
        .find(|range| (range.first..=range.last).contains(&slot))
        .unwrap()
}

/// Waits until the node on `port` is a master; returns how long that took.
async fn wait_master(port: u16) -> Duration {
    let started = Instant::now();
    while !redis_cli(port, &["INFO", "replication"]).contains("role:master") {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{port} was never promoted"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    started.elapsed()
}

async fn reconcile_on(cluster: &RedisCluster, args: &[&str]) -> Reconciled {
    let mut args = args.to_vec();
    args.extend(Topology::Cluster.flags());
    reconcile(&database_url(), &cluster.url, &args).await
}

#[tokio::test]
async fn campaigns_land_on_every_master_of_a_new_three_master_cluster() {
    let app = TestApp::spawn_on(Topology::Cluster).await;
    let mut con = app.redis.clone();
    let masters: HashSet<u16> = slot_ranges(&mut con)
        .await
        .iter()
        .map(|r| r.master)
        .collect();
    assert_eq!(masters.len(), 3);
    let mut holding = HashSet::new();
    for _ in 0..48 {
        let id = app.create_campaign(1).await;
        let key = app.keys(id).campaign;
        holding.insert(range_of(&mut con, &key).await.master);
        let loaded: bool = redis::cmd("EXISTS")
            .arg(&key)
            .query_async(&mut con)
            .await
            .unwrap();
        assert!(loaded);
    }
    assert_eq!(holding, masters, "every master holds campaigns");
}

#[tokio::test]
async fn a_coordinated_failover_under_load_loses_nothing_and_every_503_says_when_to_retry() {
    let cluster = RedisCluster::start();
    let app = TestApp::spawn_with(cluster.config(true)).await;
    let id = app.create_campaign(LARGE).await;
    let mut con = cluster.connect().await;
    let range = range_of(&mut con, &app.keys(id).campaign).await;
    let load = Load::start(vec![app.address.clone()], id, CLIENTS);
    load.wait_acked(300).await;

    let switched = Instant::now();
    let replica = range.replica();
    assert_eq!(redis_cli(replica, &["CLUSTER", "FAILOVER"]).trim(), "OK");
    let promoted = wait_master(replica).await;
    load.wait_acked(load.acked() + 300).await;
    let history = load.stop().await;
    let drained = wait_drained_on(&mut con).await;

    let audit = history.audit(&app.db, id, &HashSet::new()).await;
    assert!(audit.lost.is_empty(), "lost {:?}", audit.lost);
    assert_eq!(stored(&app.db, id).await.len(), audit.acked.len());
    let (undecided, without_retry_after) = history.undecided_and_without_retry_after();
    assert_eq!(without_retry_after, 0, "a 503 without Retry-After");
    let found = reconcile_on(&cluster, &["--campaign", &id.to_string()]).await;
    assert_eq!(found.code, 0, "{:#} {}", found.report, found.stderr);
    eprintln!(
        "CLUSTER FAILOVER of the campaign's master under load: the replica a master {promoted:?} \
         after the command; the longest time without a decision {:?}; {undecided} attempts \
         without a decision (each retried); {} acked, 0 lost, 0 doubled; outbox drained \
         {drained:?} after the load",
        history.longest_silence_after(switched),
        audit.acked.len(),
    );
}

/// The users told REDEEMED in `history` whom PostgreSQL does not hold under that key: the
/// grants a failover lost, which the failure model allows to be granted again.
async fn lost_grants(
    history: &History,
    db: &sqlx::PgPool,
    id: voucher_gateway::domain::CampaignId,
) -> HashSet<String> {
    let holders: HashMap<String, String> = stored(db, id)
        .await
        .into_iter()
        .map(|(user, key, _)| (user, key))
        .collect();
    history
        .decided()
        .filter(|r| r.decision.as_deref() == Some("REDEEMED"))
        .filter(|r| holders.get(&r.user) != Some(&r.key))
        .map(|r| r.user.clone())
        .collect()
}

#[rstest]
#[tokio::test]
async fn a_master_killed_under_load_never_over_redeems_and_reconcile_closes_what_it_cost(
    #[values(Acked::Redis, Acked::Replica)] ack: Acked,
) {
    let cluster = RedisCluster::start();
    let mut config = cluster.config(true);
    config.ack.mode = ack;
    let app = TestApp::spawn_with(config).await;
    let total = 3_000;
    let id = app.create_campaign(total).await;
    let mut con = cluster.connect().await;
    let range = range_of(&mut con, &app.keys(id).campaign).await;
    let load = Load::start(vec![app.address.clone()], id, CLIENTS);
    load.wait_acked(500).await;

    let replica = range.replica();
    cluster.kill(range.master);
    let killed = Instant::now();
    let promoted = wait_master(replica).await;
    // The operator brings the node back: it rejoins as the new master's replica. Until then
    // the shard has no replica, and `--ack replica` answers its redeems 503.
    cluster.restart(range.master);
    crate::faults::wait_sold_out(&app, id).await;
    let history = load.stop().await;
    wait_drained_on(&mut con).await;

    // Grants acknowledged by the old master that never reached its replica are gone from Redis;
    // each may be granted again, and PostgreSQL keeps at most one voucher per user.
    let lost = lost_grants(&history, &app.db, id).await;
    let audit = history.audit(&app.db, id, &lost).await;
    let rows = stored(&app.db, id).await;
    assert!(rows.len() as i64 <= total, "PostgreSQL over-redeemed");
    let found = reconcile_on(&cluster, &["--campaign", &id.to_string()]).await;
    assert!(found.code <= 1, "{:#} {}", found.report, found.stderr);
    let campaign = found.campaign(id).clone();
    let repaired = reconcile_on(&cluster, &["--campaign", &id.to_string(), "--repair"]).await;
    assert_eq!(
        repaired.code, 0,
        "{:#} {}",
        repaired.report, repaired.stderr
    );
    let again = reconcile_on(&cluster, &["--campaign", &id.to_string()]).await;
    assert_eq!(again.code, 0, "{:#}", again.report);
    let summary = app.summary(id).await;
    assert_eq!(summary["redeemed"].as_i64(), Some(rows.len() as i64));
    let (undecided, without_retry_after) = history.undecided_and_without_retry_after();
    assert_eq!(without_retry_after, 0, "a 503 without Retry-After");
    if ack == Acked::Replica {
        // Each master has one replica: the one promoted had received every answered decision.
        assert_eq!(lost, HashSet::new(), "acknowledged by a replica, and lost");
    }
    eprintln!(
        "--ack {}: a master SIGKILLed under load: its replica a master {promoted:?} after the kill \
         (cluster-node-timeout 2 s); the longest time without a decision {:?}; {undecided} \
         attempts without a decision (each retried); {} acked, {} of them lost by the clients' \
         record ({} not in PostgreSQL); PostgreSQL holds {} of {total}; reconcile before \
         repair: {}",
        ack.as_str(),
        history.longest_silence_after(killed),
        audit.acked.len(),
        lost.len(),
        audit.lost.len(),
        rows.len(),
        campaign,
    );
}

#[tokio::test]
async fn one_of_three_gateways_killed_under_load_its_pending_entries_are_stored_by_the_others() {
    let cluster = RedisCluster::start();
    let db = shared_db().await;
    let on_cluster = [("VG_REDIS_CLUSTER", "true")];
    let mut doomed = GatewayProcess::start(&database_url(), &cluster.url, &on_cluster).await;
    let mut survivors = Vec::new();
    for _ in 0..2 {
        survivors.push(GatewayProcess::start(&database_url(), &cluster.url, &on_cluster).await);
    }
    let id = create_campaign(&survivors[0].url, LARGE).await;
    let urls = [&doomed, &survivors[0], &survivors[1]].map(|g| g.url.clone());
    let mut con = cluster.connect().await;
    let (held, durable, audit) =
        kill_one_for_good(&mut doomed, urls.to_vec(), &mut con, &db, id).await;
    let found = reconcile_on(&cluster, &["--campaign", &id.to_string()]).await;
    assert_eq!(found.code, 0, "{:#} {}", found.report, found.stderr);
    assert_durable_in_time("one of three gateways killed on a cluster", durable);
    let mut claimed = 0.0;
    for survivor in &survivors {
        claimed += survivor.metric("vg_writer_claimed_total", &[]).await;
    }
    assert!(claimed > 0.0);
    eprintln!(
        "three gateways on a cluster, one SIGKILLed holding {held} pending entries: all claimed \
         and stored once by the others; every acknowledged redemption in PostgreSQL \
         {durable:?} after the kill; {} acked, 0 lost",
        audit.acked.len()
    );
}

#[rstest]
#[tokio::test]
async fn tls_with_a_password_and_a_private_ca_serves_and_stores(
    #[values(Single, Cluster)] topology: Topology,
) {
    let certs = Certificates::generate();
    let (_server, _cluster, url) = match topology {
        Single => {
            let server = RedisServer::start_with_tls("tls-s3cret", &certs);
            let url = server.url();
            (Some(server), None, url)
        }
        Cluster => {
            let cluster = RedisCluster::start_with_tls("tls-s3cret", &certs);
            let url = cluster.url.clone();
            (None, Some(cluster), url)
        }
    };
    assert!(url.starts_with("rediss://:tls-s3cret@"), "{url}");
    let mut config = test_config_on(topology);
    config.redis.redis_url = url.into();
    config.redis.redis_ca_file = Some(certs.ca());
    let app = TestApp::spawn_with(config.clone()).await;
    let id = app.create_campaign(2).await;
    for user in ["a", "b", "c"] {
        app.redeem(id, user, "k").await;
    }
    assert_eq!(app.summary(id).await["remaining"], 0);
    // The writers' own blocking connections speak TLS too.
    app.wait_persisted(id, 2).await;
    let ready = app.get_json("/ready").await;
    assert_eq!(ready["status"], "ready", "{ready:#}");

    // Without the CA, the server's certificate is not trusted: the gateway does not start.
    config.redis.redis_ca_file = None;
    assert!(App::build(config).await.is_err());
}

#[tokio::test]
async fn a_gateway_on_a_cluster_stops_gracefully_with_everything_it_acknowledged_stored() {
    let redis = Topology::Cluster.redis_url();
    // Writers that wait long for a batch to fill: only the shutdown's drain stores it in time.
    let settings = [
        ("VG_REDIS_CLUSTER", "true"),
        ("VG_WRITER_FLUSH_INTERVAL", "2s"),
    ];
    let mut gateway = GatewayProcess::start(&database_url(), &redis, &settings).await;
    let id = create_campaign(&gateway.url, 100).await;
    let client = http();
    for n in 0..40 {
        let answer = client
            .post(format!("{}/campaigns/{id}/redeem", gateway.url))
            .json(&serde_json::json!({"userId": format!("user-{n}"), "idempotencyKey": "k"}))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), reqwest::StatusCode::OK);
    }
    let status = gateway.terminate(Duration::from_secs(15)).await;
    assert!(status.success(), "{status}");
    let db = shared_db().await;
    assert_eq!(
        stored(&db, id).await.len(),
        40,
        "stored before the process exited"
    );
}
