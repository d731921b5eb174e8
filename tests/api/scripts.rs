//! The Lua scripts on their own, against a real Redis: every row of the decision table, and a long
//! random sequence compared with a plain in-memory model.

use std::collections::HashMap;

use rand::{Rng, SeedableRng, rngs::StdRng};
use redis::{AsyncCommands, aio::MultiplexedConnection};
use voucher_gateway::{
    domain::{CampaignId, Holder, IdempotencyKey, UserId, Window},
    redis::{
        keys::{self, CampaignKeys, Shards},
        outbox,
        scripts::{self, Decision, Hydration},
    },
};

use crate::helpers::RedisServer;

/// A private Redis, so that no app's writer drains the outbox these tests inspect.
async fn connection() -> (RedisServer, MultiplexedConnection) {
    let server = RedisServer::start();
    let con = redis::Client::open(server.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    (server, con)
}

async fn redeem(
    con: &mut MultiplexedConnection,
    keys: &CampaignKeys,
    id: CampaignId,
    user: &str,
    key: &str,
) -> Decision {
    let (user, key) = (
        UserId::parse(user).unwrap(),
        IdempotencyKey::parse(key).unwrap(),
    );
    scripts::redeem(con, keys, id, &user, &key).await.unwrap()
}

/// A new campaign loaded with `total` vouchers and no holders.
async fn loaded(con: &mut MultiplexedConnection, total: i32) -> (CampaignId, CampaignKeys) {
    let id = CampaignId::new_random();
    let keys = Shards::new(16).campaign(id);
    let written = scripts::hydrate_commit(con, &keys, total, "lua test", 0, 0, Window::default())
        .await
        .unwrap();
    assert_eq!(written, Hydration::Written);
    (id, keys)
}

/// The outbox entries of one campaign: (user, key, seq).
async fn outbox_entries(
    con: &mut MultiplexedConnection,
    keys: &CampaignKeys,
    id: CampaignId,
) -> Vec<(String, String, i64)> {
    outbox::queued_entries_of(con, &keys.outbox, id)
        .await
        .unwrap()
        .into_iter()
        .map(|entry| {
            let holder = entry.holder;
            (
                holder.user.as_str().to_owned(),
                holder.key.as_str().to_owned(),
                i64::from(entry.seq),
            )
        })
        .collect()
}

#[tokio::test]
async fn a_campaign_missing_from_redis_is_not_loaded_and_nothing_is_written() {
    let (_server, mut con) = connection().await;
    let id = CampaignId::new_random();
    let keys = Shards::new(16).campaign(id);

    assert_eq!(
        redeem(&mut con, &keys, id, "u", "k").await,
        Decision::NotLoaded
    );

    let users_exist: bool = con.exists(&keys.users).await.unwrap();
    assert!(!users_exist);
    assert!(outbox_entries(&mut con, &keys, id).await.is_empty());
}

#[tokio::test]
async fn each_row_of_the_decision_table() {
    let (_server, mut con) = connection().await;
    let (id, keys) = loaded(&mut con, 1).await;

    assert_eq!(
        redeem(&mut con, &keys, id, "alice", "k1").await,
        Decision::Redeemed { seq: 1 }
    );
    assert_eq!(
        redeem(&mut con, &keys, id, "alice", "k1").await,
        Decision::Replayed
    );
    assert_eq!(
        redeem(&mut con, &keys, id, "alice", "k2").await,
        Decision::AlreadyRedeemed
    );
    assert_eq!(
        redeem(&mut con, &keys, id, "bob", "k1").await,
        Decision::SoldOut
    );

    let remaining: i64 = con.hget(&keys.campaign, "remaining").await.unwrap();
    assert_eq!(remaining, 0);
    let holders: HashMap<String, String> = con.hgetall(&keys.users).await.unwrap();
    assert_eq!(holders, HashMap::from([("alice".into(), "k1".into())]));
    assert_eq!(
        outbox_entries(&mut con, &keys, id).await,
        [("alice".into(), "k1".into(), 1)]
    );
}

#[tokio::test]
async fn hydration_commits_once_and_counts_holders() {
    let (_server, mut con) = connection().await;
    let id = CampaignId::new_random();
    let keys = Shards::new(16).campaign(id);
    let holder = |user: &str, key: &str| Holder {
        user: UserId::parse(user).unwrap(),
        key: IdempotencyKey::parse(key).unwrap(),
    };
    let holders = [holder("a", "1"), holder("b", "2")];

    assert_eq!(
        scripts::hydrate_users(&mut con, &keys, &holders)
            .await
            .unwrap(),
        Hydration::Written
    );
    // A commit that expects more holders than Redis has refuses (Redis lost some meanwhile).
    assert_eq!(
        scripts::hydrate_commit(&mut con, &keys, 5, "n", 3, 7, Window::default())
            .await
            .unwrap(),
        Hydration::HoldersLost
    );
    assert_eq!(
        scripts::hydrate_commit(&mut con, &keys, 5, "n", 2, 7, Window::default())
            .await
            .unwrap(),
        Hydration::Written
    );
    assert_eq!(
        scripts::hydrate_commit(&mut con, &keys, 5, "n", 2, 7, Window::default())
            .await
            .unwrap(),
        Hydration::AlreadyLoaded
    );
    assert_eq!(
        scripts::hydrate_users(&mut con, &keys, &holders)
            .await
            .unwrap(),
        Hydration::AlreadyLoaded
    );

    let remaining: i64 = con.hget(&keys.campaign, "remaining").await.unwrap();
    assert_eq!(remaining, 3);
    assert_eq!(
        redeem(&mut con, &keys, id, "a", "1").await,
        Decision::Replayed
    );
    assert_eq!(
        redeem(&mut con, &keys, id, "c", "3").await,
        Decision::Redeemed { seq: 8 }
    );
    // Numbering continues above the highest number known given, never reusing one.
    assert_eq!(
        outbox_entries(&mut con, &keys, id).await,
        [("c".into(), "3".into(), 8)]
    );
}

#[tokio::test]
async fn a_random_sequence_matches_the_model() {
    let (_server, mut con) = connection().await;
    let seed: u64 = rand::random();
    let mut rng = StdRng::seed_from_u64(seed);
    let total = 7;
    let (id, keys) = loaded(&mut con, total).await;
    // The model: the holders in grant order; remaining follows from it.
    let mut holders: Vec<(String, String)> = Vec::new();

    for step in 0..2_000 {
        let user = format!("user-{}", rng.random_range(0..12));
        let key = format!("key-{}", rng.random_range(0..3));
        let expected = match holders.iter().find(|(u, _)| *u == user) {
            Some((_, held)) if *held == key => Decision::Replayed,
            Some(_) => Decision::AlreadyRedeemed,
            None if holders.len() == total as usize => Decision::SoldOut,
            None => {
                holders.push((user.clone(), key.clone()));
                Decision::Redeemed {
                    seq: holders.len() as i64,
                }
            }
        };
        let actual = redeem(&mut con, &keys, id, &user, &key).await;
        assert_eq!(actual, expected, "step {step} ({user}, {key}), seed {seed}");
    }

    let remaining: i64 = con.hget(&keys.campaign, "remaining").await.unwrap();
    assert_eq!(
        remaining,
        total as i64 - holders.len() as i64,
        "seed {seed}"
    );
    let expected_outbox: Vec<(String, String, i64)> = holders
        .into_iter()
        .zip(1..)
        .map(|((user, key), seq)| (user, key, seq))
        .collect();
    assert_eq!(
        outbox_entries(&mut con, &keys, id).await,
        expected_outbox,
        "seed {seed}"
    );
}

/// The ids of the next (up to) three entries a consumer of the writer group reads.
async fn read_ids(con: &mut MultiplexedConnection, stream: &str, consumer: &str) -> Vec<String> {
    let options = redis::streams::StreamReadOptions::default()
        .group(keys::WRITER_GROUP, consumer)
        .count(3);
    let reply: redis::streams::StreamReadReply = con
        .xread_options(&[stream], &[">"], &options)
        .await
        .unwrap();
    reply.keys[0]
        .ids
        .iter()
        .map(|entry| entry.id.clone())
        .collect()
}

fn strs(ids: &[String]) -> Vec<&str> {
    ids.iter().map(String::as_str).collect()
}

async fn stream_ids(con: &mut MultiplexedConnection, stream: &str) -> Vec<String> {
    let reply: redis::streams::StreamRangeReply = con.xrange_all(stream).await.unwrap();
    reply.ids.into_iter().map(|entry| entry.id).collect()
}

/// A private outbox with its writers' group and nine entries: (stream, their ids).
async fn nine_entries(con: &mut MultiplexedConnection) -> (String, Vec<String>) {
    let stream = Shards::new(16).shard(0).outbox;
    let () = con
        .xgroup_create_mkstream(&stream, keys::WRITER_GROUP, "0")
        .await
        .unwrap();
    let mut all = Vec::new();
    for n in 0..9 {
        let id: String = con.xadd(&stream, "*", &[("r", n)]).await.unwrap();
        all.push(id);
    }
    (stream, all)
}

#[tokio::test]
async fn acknowledged_entries_leave_the_outbox_in_any_order_and_no_other_does() {
    let (_server, mut con) = connection().await;
    let (stream, all) = nine_entries(&mut con).await;
    let first = read_ids(&mut con, &stream, "a").await;
    let second = read_ids(&mut con, &stream, "b").await;
    assert_eq!([&first[..], &second[..]].concat(), all[..6]);

    // The newer batch commits first: only its entries go; the older one's stay pending.
    assert_eq!(
        scripts::ack(&mut con, &stream, &strs(&second))
            .await
            .unwrap(),
        3
    );
    let expected = [&all[..3], &all[6..]].concat();
    assert_eq!(stream_ids(&mut con, &stream).await, expected);

    // Then the older batch: the entries never read stay.
    assert_eq!(
        scripts::ack(&mut con, &stream, &strs(&first))
            .await
            .unwrap(),
        3
    );
    assert_eq!(stream_ids(&mut con, &stream).await, all[6..]);

    // A batch acknowledged again (claimed and written twice) changes nothing.
    assert_eq!(
        scripts::ack(&mut con, &stream, &strs(&first))
            .await
            .unwrap(),
        0
    );
    let last = read_ids(&mut con, &stream, "a").await;
    assert_eq!(
        scripts::ack(&mut con, &stream, &strs(&last)).await.unwrap(),
        3
    );
    assert!(stream_ids(&mut con, &stream).await.is_empty());
}

#[tokio::test]
async fn entries_the_group_delivered_before_a_rollback_are_not_trimmed_by_another_batch() {
    let (_server, mut con) = connection().await;
    let (stream, all) = nine_entries(&mut con).await;
    let early = read_ids(&mut con, &stream, "a").await;
    read_ids(&mut con, &stream, "b").await;
    let late = read_ids(&mut con, &stream, "a").await;

    // A rollback (Redis restarted from an older AOF, or a lagging replica promoted): the group
    // is back at the third entry, and every delivery after it is forgotten. Writer a still holds
    // its six entries in hand; b's reply was lost with the old Redis.
    let _: () = redis::cmd("XGROUP")
        .arg("SETID")
        .arg(&stream)
        .arg(keys::WRITER_GROUP)
        .arg(&all[2])
        .query_async(&mut con)
        .await
        .unwrap();
    let _: u64 = con
        .xack(&stream, keys::WRITER_GROUP, &all[3..])
        .await
        .unwrap();

    let held = [&early[..], &late[..]].concat();
    assert_eq!(
        scripts::ack(&mut con, &stream, &strs(&held)).await.unwrap(),
        3
    );
    // b's three entries were stored by nobody: they stay, to be delivered again.
    assert_eq!(stream_ids(&mut con, &stream).await, all[3..6]);
    assert_eq!(read_ids(&mut con, &stream, "b").await, all[3..6]);
}
