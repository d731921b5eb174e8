//! What Redis granted ends up in PostgreSQL exactly once, whatever happens to the writer or to
//! PostgreSQL on the way.

use std::{collections::HashSet, time::Duration};

use futures::future::join_all;
use redis::{AsyncCommands, streams::StreamInfoConsumersReply};
use reqwest::StatusCode;
use rstest::rstest;
use serde_json::json;
use tokio_util::sync::CancellationToken;
use voucher_gateway::{
    app,
    domain::{CampaignId, Holder, IdempotencyKey, OutboxEntry, UserId},
    redis::keys::{ShardKeys, Shards},
    store,
    writer::{Writer, WriterSettings},
};

use crate::helpers::{
    PgServer, RedisServer, TestApp,
    Topology::{self, Cluster, Single},
    private_redis_config, stored, test_config, wait_persisted,
};

#[rstest]
#[tokio::test]
async fn postgres_holds_exactly_the_redeemed_set_after_the_writer_drains(
    #[values(Single, Cluster)] topology: Topology,
) {
    let app = TestApp::spawn_on(topology).await;
    let id = app.create_campaign(1_000).await;

    let mut expected = HashSet::new();
    for n in 0..300 {
        let (user, key) = (format!("user-{}", n % 250), format!("key-{n}"));
        let answer = app.redeem(id, &user, &key).await;
        if answer.outcome() == "REDEEMED" {
            expected.insert((user, key));
        }
    }

    assert_eq!(expected.len(), 250);
    app.wait_persisted(id, 250).await;
    let rows = stored(&app.db, id).await;
    let users: HashSet<(String, String)> = rows
        .iter()
        .map(|(u, k, _)| (u.clone(), k.clone()))
        .collect();
    assert_eq!(users, expected);
    let seqs: Vec<i32> = rows.iter().map(|(_, _, seq)| *seq).collect();
    assert_eq!(
        seqs,
        (1..=250).collect::<Vec<_>>(),
        "voucher numbers without gaps or repeats"
    );
    app.stop().await.expect("a graceful stop");
}

/// A gateway without writers on a Redis of its own, with a campaign of 100, and what a test needs
/// to run writers by hand on the campaign's outbox.
struct Manual {
    _redis: RedisServer,
    app: TestApp,
    id: CampaignId,
    shard: ShardKeys,
    stream: String,
    redis: voucher_gateway::redis::Redis,
    settings: WriterSettings,
}

impl Manual {
    /// A writer of the campaign's shard reading as `consumer`.
    async fn writer(&self, consumer: &str, settings: WriterSettings) -> Writer {
        let con = self.redis.connect_blocking(settings.block).await.unwrap();
        let db = self.app.db.clone();
        Writer::new(con, db, self.shard.clone(), consumer.into(), settings)
    }

    async fn start() -> Self {
        let redis = RedisServer::start();
        let config = private_redis_config(&redis, false);
        let app = TestApp::spawn_with(config.clone()).await;
        let id = app.create_campaign(100).await;
        let shards = Shards::new(16);
        let shard = shards.shard(shards.of(id));
        let stream = shard.outbox.clone();
        Self {
            _redis: redis,
            app,
            id,
            shard,
            stream,
            redis: app::open_redis(&config.redis).unwrap(),
            settings: app::writer_settings(&config),
        }
    }
}

#[tokio::test]
async fn entries_of_a_consumer_killed_between_read_and_ack_are_claimed_and_stored_once() {
    let m = Manual::start().await;
    let mut settings = m.settings.clone();
    for n in 0..40 {
        assert_eq!(
            m.app.redeem(m.id, format!("user-{n}"), "k").await.outcome(),
            "REDEEMED"
        );
    }
    let claim_idle = Duration::from_millis(200);
    settings.claim_idle = claim_idle;

    // A consumer reads the entries, then dies before it stores or acknowledges them.
    let doomed = m.writer("doomed", settings.clone()).await;
    doomed.ensure_group().await.unwrap();
    assert_eq!(doomed.read().await.unwrap().entries.len(), 40);
    drop(doomed);
    let survivor = m.writer("survivor", settings).await;
    assert!(
        survivor.read().await.unwrap().entries.is_empty(),
        "nothing new to read: all pending"
    );

    let cancel = CancellationToken::new();
    let mut handled = 0;
    while handled < 40 {
        handled += survivor.step(&cancel).await.unwrap();
    }

    m.app.wait_persisted(m.id, 40).await;
    let mut con = m.app.redis.clone();
    let left: usize = con.xlen(&m.stream).await.unwrap();
    assert_eq!(left, 0, "acknowledged entries are deleted");
    // Stepping again finds nothing: each entry was stored exactly once.
    assert_eq!(survivor.step(&cancel).await.unwrap(), 0);
    assert_eq!(stored(&m.app.db, m.id).await.len(), 40);

    // The dead consumer, holding nothing now, is removed once silent for ten claim timeouts.
    let consumers = async |con: &mut voucher_gateway::redis::Connection| {
        let reply: StreamInfoConsumersReply =
            con.xinfo_consumers(&m.stream, "writers").await.unwrap();
        reply.consumers.len()
    };
    assert_eq!(consumers(&mut con).await, 2);
    tokio::time::sleep(claim_idle * 10).await;
    survivor.claim().await.unwrap();
    assert_eq!(consumers(&mut con).await, 1);
}

#[tokio::test]
async fn a_consumer_that_lost_what_it_read_stores_it_at_once_when_it_reads_again() {
    let m = Manual::start().await;
    for n in 0..40 {
        let answer = m.app.redeem(m.id, format!("user-{n}"), "k").await;
        assert_eq!(answer.outcome(), "REDEEMED");
    }
    // No claim can help within this test: only the consumer's own name finds the entries.
    let mut settings = m.settings.clone();
    settings.claim_idle = Duration::from_secs(600);

    // Its process dies, or its connection drops, after Redis delivered the entries.
    let before = m.writer("instance-a/0", settings.clone()).await;
    before.ensure_group().await.unwrap();
    assert_eq!(before.read().await.unwrap().entries.len(), 40);
    drop(before);
    let other = m.writer("instance-b/0", settings.clone()).await;
    assert!(other.read().await.unwrap().entries.is_empty());

    let again = m.writer("instance-a/0", settings).await;
    let cancel = CancellationToken::new();
    assert_eq!(again.step(&cancel).await.unwrap(), 40, "the first step");
    m.app.wait_persisted(m.id, 40).await;
    let mut con = m.app.redis.clone();
    let left: usize = con.xlen(&m.stream).await.unwrap();
    assert_eq!(left, 0);
}

#[rstest]
#[tokio::test]
async fn writers_storing_overlapping_batches_at_once_never_deadlock(
    #[values(Single, Cluster)] topology: Topology,
) {
    let app = TestApp::spawn_on(topology).await;
    for round in 0..20 {
        let id = app.create_campaign(1_000).await;
        let batch: Vec<OutboxEntry> = (0..200)
            .map(|n| outbox_entry(id, &format!("user-{n}"), n + 1))
            .collect();
        // The same entries redelivered to a second writer, with one of a campaign PostgreSQL
        // does not know: that batch is classified entry by entry while the first goes in whole.
        let mut redelivered = batch.clone();
        redelivered.push(outbox_entry(CampaignId::new_random(), "stray", 1));
        let (first, second) = tokio::join!(
            store::store_batch(&app.db, &batch),
            store::store_batch(&app.db, &redelivered)
        );
        let (first, second) = (first.unwrap(), second.unwrap());
        assert_eq!(first.inserted + second.inserted, 200, "round {round}");
        assert_eq!(second.rejected.len(), 1);
        wait_persisted(&app.db, id, 200).await;
    }
}

#[rstest]
#[tokio::test]
async fn an_entry_refused_for_its_voucher_number_leaves_its_room_to_the_next(
    #[values(Single, Cluster)] topology: Topology,
) {
    let app = TestApp::spawn_on(topology).await;
    let id = app.create_campaign(2).await;
    let held = outbox_entry(id, "holder", 1);
    assert_eq!(
        store::store_batch(&app.db, &[held]).await.unwrap().inserted,
        1
    );

    // After a Redis rollback: number 1 is given again, then two more grants; one voucher is left.
    let batch = [
        outbox_entry(id, "same-number", 1),
        outbox_entry(id, "next", 2),
        outbox_entry(id, "too-many", 3),
    ];
    let summary = store::store_batch(&app.db, &batch).await.unwrap();
    assert_eq!((summary.inserted, summary.rejected.len()), (1, 2));
    let rows = stored(&app.db, id).await;
    let users: Vec<&str> = rows.iter().map(|(user, _, _)| user.as_str()).collect();
    assert_eq!(users, ["holder", "next"]);
    let reasons: Vec<(String, String)> = sqlx::query_as(
        "select user_id, reason from rejected_redemptions where campaign_id = $1 order by user_id",
    )
    .bind(id.as_uuid())
    .fetch_all(&app.db)
    .await
    .unwrap();
    assert_eq!(
        reasons,
        [
            ("same-number".to_owned(), "seq_taken".to_owned()),
            ("too-many".to_owned(), "sold_out".to_owned())
        ]
    );
}

fn outbox_entry(campaign: CampaignId, user: &str, seq: i32) -> OutboxEntry {
    OutboxEntry {
        id: format!("{seq}-0"),
        campaign,
        holder: Holder {
            user: UserId::parse(user).unwrap(),
            key: IdempotencyKey::parse("k").unwrap(),
        },
        seq,
        at: time::OffsetDateTime::now_utc(),
    }
}

#[tokio::test]
async fn writers_of_one_outbox_take_turns_so_one_flush_interval_makes_one_batch() {
    let m = Manual::start().await;
    let mut settings = m.settings.clone();
    settings.flush_interval = Duration::from_millis(500);
    let first = m.writer("first", settings.clone()).await;
    let second = m.writer("second", settings).await.taking_turns_with(&first);
    first.ensure_group().await.unwrap();
    assert_eq!(
        m.app.redeem(m.id, "user-0", "k").await.outcome(),
        "REDEEMED"
    );

    // The first writer reads the entry and waits out the flush interval for more; entries that
    // arrive meanwhile are its to top up with, while the second waits for its turn.
    let (first_batch, second_batch) = tokio::join!(first.read(), async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        for n in 1..5 {
            let user = format!("user-{n}");
            assert_eq!(m.app.redeem(m.id, user, "k").await.outcome(), "REDEEMED");
        }
        second.read().await
    });
    assert_eq!(
        first_batch.unwrap().entries.len(),
        5,
        "one batch of all five"
    );
    assert!(second_batch.unwrap().entries.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redeems_continue_while_postgres_is_down_and_everything_lands_once() {
    let (redis, postgres) = (RedisServer::start(), PgServer::start());
    let mut config = test_config();
    config.redis.redis_url = redis.url().into();
    config.database.database_url = postgres.url().into();
    config.database.db_timeout = Duration::from_secs(1);
    let app = TestApp::spawn_with(config).await;
    let id = app.create_campaign(500).await;
    let batch = |range: std::ops::Range<usize>| {
        join_all(range.map(|n| app.redeem(id, format!("user-{n}"), "k")))
    };
    assert!(
        batch(0..100)
            .await
            .iter()
            .all(|a| a.outcome() == "REDEEMED")
    );

    postgres.stop();
    let during = batch(100..250).await;
    let create = app
        .client
        .post(app.url("/campaigns"))
        .json(&json!({"name": "during the outage", "total": 5}))
        .send()
        .await
        .unwrap();
    let replays = batch(0..50).await;
    postgres.start_again();

    assert!(
        during.iter().all(|a| a.outcome() == "REDEEMED"),
        "redeems are answered from Redis"
    );
    assert!(replays.iter().all(|a| a.replayed));
    assert_eq!(create.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(create.headers().contains_key("retry-after"));
    assert_eq!(
        create.json::<serde_json::Value>().await.unwrap()["code"],
        "database_unavailable"
    );
    let db = sqlx::PgPool::connect(&postgres.url()).await.unwrap();
    wait_persisted(&db, id, 250).await;
    let seqs: Vec<i32> = stored(&db, id)
        .await
        .iter()
        .map(|(_, _, seq)| *seq)
        .collect();
    assert_eq!(seqs, (1..=250).collect::<Vec<_>>());
}
