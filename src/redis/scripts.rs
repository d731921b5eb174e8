//! Typed wrappers of the Lua scripts in `lua/`: each script is built once, called by SHA and
//! reloaded on NOSCRIPT (after a Redis restart or failover), and its reply decoded into an enum.

use std::{sync::LazyLock, time::Duration};

use redis::{
    Cmd, ErrorKind, RedisError, RedisResult, Script, ServerErrorKind, Value, aio::ConnectionLike,
};
use uuid::fmt::Hyphenated;

use super::{
    keys::{CampaignKeys, ShardKeys, WRITER_GROUP},
    outbox::Malformed,
};
use crate::domain::{CampaignId, Holder, IdempotencyKey, Timestamp, UserId, Window};

static REDEEM: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("../../lua/redeem.lua")));
static HYDRATE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("../../lua/hydrate.lua")));
static REPAIR: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("../../lua/repair.lua")));
static RESERVE_SEQS: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("../../lua/reserve_seqs.lua")));
static PRUNE: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("../../lua/prune.lua")));
static CLOSE: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("../../lua/close.lua")));
static ACK: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("../../lua/ack.lua")));
static DEAD_LETTER: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("../../lua/dead_letter.lua")));
static OUTBOX_STATS: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("../../lua/outbox_stats.lua")));

/// The decision of `redeem.lua`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    NotLoaded,
    /// A new redemption, with its voucher number.
    Redeemed {
        seq: i64,
    },
    Replayed,
    AlreadyRedeemed,
    SoldOut,
    /// Past the window's end.
    Ended,
    /// Before the window's start, this long before it by Redis's clock.
    NotStarted {
        opens_in: Duration,
    },
}

/// Runs `redeem.lua`: one atomic decision, and on a new redemption one outbox entry.
pub async fn redeem(
    con: &mut impl ConnectionLike,
    keys: &CampaignKeys,
    campaign: CampaignId,
    user: &UserId,
    key: &IdempotencyKey,
) -> RedisResult<Decision> {
    let cmd = redeem_cmd(keys, campaign, user, key);
    let reply = match cmd.query_async(con).await {
        Err(error) if is_no_script(&error) => {
            REDEEM.prepare_invoke().load_async(con).await?;
            cmd.query_async(con).await?
        }
        reply => reply?,
    };
    decision(reply)
}

/// One redeem of a group (`redeem_replicated`).
pub struct Redeem<'a> {
    pub keys: &'a CampaignKeys,
    pub campaign: CampaignId,
    pub user: &'a UserId,
    pub key: &'a IdempotencyKey,
}

/// What a group of redeems decided, and how many replicas had received it when answered.
pub struct Replicated {
    pub decisions: Vec<RedisResult<Decision>>,
    pub replicas: u64,
}

/// Runs `redeem.lua` for each redeem in order, then increments `wait_key` and sends `WAIT
/// replicas timeout`, all in one round trip on one connection to the master of the redeems'
/// slot. WAIT waits for the replicas to reach the connection's last write: the increment makes
/// that the group's own last command, so WAIT also covers the earlier writes, of any connection,
/// that a replay or a refusal read.
pub async fn redeem_replicated(
    con: &mut impl ConnectionLike,
    redeems: &[Redeem<'_>],
    wait_key: &str,
    replicas: u16,
    timeout: Duration,
) -> RedisResult<Replicated> {
    let all: Vec<usize> = (0..redeems.len()).collect();
    let (mut replies, mut replicated) =
        redeem_then_wait(con, redeems, &all, wait_key, replicas, timeout).await?;
    // The script was not loaded (a restarted or promoted master): send again the redeems that
    // did not run, and only those; one that ran, had another client loaded it meanwhile, stands.
    let missing: Vec<usize> = all
        .into_iter()
        .filter(|&i| replies[i].as_ref().is_err_and(is_no_script))
        .collect();
    if !missing.is_empty() {
        REDEEM.prepare_invoke().load_async(&mut *con).await?;
        let (again, replicas) =
            redeem_then_wait(con, redeems, &missing, wait_key, replicas, timeout).await?;
        for (i, reply) in missing.into_iter().zip(again) {
            replies[i] = reply;
        }
        // The second WAIT covers the first round trip's writes too: they came before it.
        replicated = replicas;
    }
    let decisions = replies
        .into_iter()
        .map(|reply| decision(redis::from_redis_value(reply?)?))
        .collect();
    Ok(Replicated {
        decisions,
        replicas: replicated,
    })
}

/// One round trip of `redeem_replicated` for the redeems at `which`: their replies, and how many
/// replicas the WAIT found.
async fn redeem_then_wait(
    con: &mut impl ConnectionLike,
    redeems: &[Redeem<'_>],
    which: &[usize],
    wait_key: &str,
    replicas: u16,
    timeout: Duration,
) -> RedisResult<(Vec<RedisResult<Value>>, u64)> {
    let mut pipe = redis::pipe();
    for &i in which {
        let redeem = &redeems[i];
        pipe.add_command(redeem_cmd(
            redeem.keys,
            redeem.campaign,
            redeem.user,
            redeem.key,
        ));
    }
    pipe.cmd("INCR").arg(wait_key);
    pipe.cmd("WAIT")
        .arg(replicas)
        .arg(timeout.as_millis() as u64);
    pipe.ignore_errors();
    let mut replies: Vec<RedisResult<Value>> = pipe.query_async(con).await?;
    let acknowledged: u64 = match replies.pop() {
        Some(reply) => redis::from_redis_value(reply?)?,
        None => return Err(super::unexpected_reply("WAIT", "nothing")),
    };
    replies.pop().transpose()?;
    Ok((replies, acknowledged))
}

/// `EVALSHA` of `redeem.lua` for one redeem.
fn redeem_cmd(
    keys: &CampaignKeys,
    campaign: CampaignId,
    user: &UserId,
    key: &IdempotencyKey,
) -> Cmd {
    let mut id = [0; Hyphenated::LENGTH];
    let mut cmd = redis::cmd("EVALSHA");
    cmd.arg(REDEEM.get_hash())
        .arg(3)
        .arg(&keys.campaign)
        .arg(&keys.users)
        .arg(&keys.outbox)
        .arg(campaign.encode(&mut id))
        .arg(user.as_str())
        .arg(key.as_str());
    cmd
}

fn is_no_script(error: &RedisError) -> bool {
    error.kind() == ErrorKind::Server(ServerErrorKind::NoScript)
}

fn decision(reply: i64) -> RedisResult<Decision> {
    match reply {
        seq @ 1.. => Ok(Decision::Redeemed { seq }),
        0 => Ok(Decision::NotLoaded),
        -1 => Ok(Decision::Replayed),
        -2 => Ok(Decision::AlreadyRedeemed),
        -3 => Ok(Decision::SoldOut),
        -4 => Ok(Decision::Ended),
        ..=-1000 => Ok(Decision::NotStarted {
            opens_in: Duration::from_millis((-1000 - reply) as u64),
        }),
        _ => Err(super::unexpected_reply("redeem.lua", reply.to_string())),
    }
}

/// What a hydration step did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hydration {
    /// This call wrote its part.
    Written,
    /// The campaign was already loaded; nothing was written.
    AlreadyLoaded,
    /// Redis holds fewer holders than were loaded (it lost data meanwhile): start over.
    HoldersLost,
}

/// Adds holders to a campaign that is not loaded yet (`hydrate.lua` phase `users`).
pub async fn hydrate_users(
    con: &mut impl ConnectionLike,
    keys: &CampaignKeys,
    holders: &[Holder],
) -> RedisResult<Hydration> {
    let mut invocation = HYDRATE.key(&keys.campaign);
    invocation.key(&keys.users).arg("users");
    for holder in holders {
        invocation
            .arg(holder.user.as_str())
            .arg(holder.key.as_str());
    }
    hydration(invocation.invoke_async(con).await?)
}

/// Makes a campaign visible to redeems (`hydrate.lua` phase `commit`): remaining = total - holders,
/// and the next voucher number above `last_seq`.
pub async fn hydrate_commit(
    con: &mut impl ConnectionLike,
    keys: &CampaignKeys,
    total: i32,
    name: &str,
    holders_loaded: usize,
    last_seq: i64,
    window: Window,
) -> RedisResult<Hydration> {
    let code = HYDRATE
        .key(&keys.campaign)
        .key(&keys.users)
        .arg("commit")
        .arg(total)
        .arg(name)
        .arg(holders_loaded)
        .arg(last_seq)
        .arg(millis(window.starts_at))
        .arg(millis(window.ends_at))
        .invoke_async(con)
        .await?;
    hydration(code)
}

/// A window's end as the scripts take it: milliseconds, or '' where open.
fn millis(at: Option<Timestamp>) -> String {
    at.map_or(String::new(), |at| at.millis().to_string())
}

/// Ends a loaded campaign's window now, by Redis's clock, unless it ended before
/// (`close.lua`); returns when it ends, or `None` when Redis does not hold the campaign.
pub async fn close(con: &mut impl ConnectionLike, keys: &CampaignKeys) -> RedisResult<Option<i64>> {
    CLOSE.key(&keys.campaign).invoke_async(con).await
}

fn hydration(code: i64) -> RedisResult<Hydration> {
    match code {
        1 => Ok(Hydration::Written),
        0 => Ok(Hydration::AlreadyLoaded),
        -1 => Ok(Hydration::HoldersLost),
        other => Err(super::unexpected_reply("hydrate.lua", other)),
    }
}

/// Acknowledges and deletes committed outbox entries (`ack.lua`); returns how many were pending.
/// `ids` in stream order, as read: the script trims up to the last one.
pub async fn ack(con: &mut impl ConnectionLike, outbox: &str, ids: &[&str]) -> RedisResult<u64> {
    let mut invocation = ACK.key(outbox);
    invocation.arg(WRITER_GROUP).arg(ids);
    invocation.invoke_async(con).await
}

/// Moves entries that can never be stored to the shard's dead-letter stream, with why
/// (`dead_letter.lua`); returns how many were still in the outbox.
pub async fn dead_letter(
    con: &mut impl ConnectionLike,
    shard: &ShardKeys,
    entries: &[Malformed],
) -> RedisResult<u64> {
    let mut invocation = DEAD_LETTER.key(&shard.outbox);
    invocation.key(&shard.dead_letters).arg(WRITER_GROUP);
    for entry in entries {
        invocation.arg(&entry.id).arg(&entry.reason);
    }
    invocation.invoke_async(con).await
}

/// What `repair.lua` is asked to change in one campaign.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RedisRepair {
    /// PostgreSQL's total.
    pub total: i32,
    /// The highest voucher number PostgreSQL knows given.
    pub last_seq: i64,
    /// The sale window both sides agree on.
    pub window: Window,
    /// Holders PostgreSQL has that Redis lacks or holds under another key.
    pub set: Vec<Holder>,
    /// Holders PostgreSQL refused and holds nothing for.
    pub remove: Vec<Holder>,
}

/// Applies a repair atomically (`repair.lua`); returns the campaign's (remaining, holders)
/// afterwards, or `None` when Redis does not hold the campaign.
pub async fn repair(
    con: &mut impl ConnectionLike,
    keys: &CampaignKeys,
    repair: &RedisRepair,
) -> RedisResult<Option<(i64, i64)>> {
    let mut invocation = REPAIR.key(&keys.campaign);
    invocation
        .key(&keys.users)
        .arg(repair.total)
        .arg(repair.last_seq)
        .arg(millis(repair.window.starts_at))
        .arg(millis(repair.window.ends_at))
        .arg(repair.set.len());
    for holder in repair.set.iter().chain(&repair.remove) {
        invocation
            .arg(holder.user.as_str())
            .arg(holder.key.as_str());
    }
    let reply: Vec<i64> = invocation.invoke_async(con).await?;
    match reply[..] {
        [] => Ok(None),
        [remaining, holders] => Ok(Some((remaining, holders))),
        _ => Err(super::unexpected_reply("repair.lua", format!("{reply:?}"))),
    }
}

/// Reserves `count` voucher numbers of a loaded campaign (`reserve_seqs.lua`); returns the last
/// one, or `None` when Redis does not hold the campaign.
pub async fn reserve_seqs(
    con: &mut impl ConnectionLike,
    keys: &CampaignKeys,
    count: usize,
) -> RedisResult<Option<i64>> {
    RESERVE_SEQS
        .key(&keys.campaign)
        .arg(count)
        .invoke_async(con)
        .await
}

/// Removes the other consumers of the writer group idle for `idle` with nothing pending
/// (`prune.lua`); returns how many.
pub async fn prune_consumers(
    con: &mut impl ConnectionLike,
    outbox: &str,
    idle: Duration,
    own_name: &str,
) -> RedisResult<u64> {
    PRUNE
        .key(outbox)
        .arg(WRITER_GROUP)
        .arg(idle.as_millis() as u64)
        .arg(own_name)
        .invoke_async(con)
        .await
}

/// How far one outbox shard's writers are behind (`outbox_stats.lua`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutboxStats {
    /// Entries in the stream: not yet written to PostgreSQL.
    pub length: u64,
    /// Entries a writer has read and not yet acknowledged.
    pub pending: u64,
    /// Age of the oldest pending entry.
    pub oldest_pending_age: Option<Duration>,
    /// Age of the oldest entry: how far PostgreSQL lags behind the answers given.
    pub lag: Option<Duration>,
    /// Entries that have left the stream since it was created: stored (or dead-lettered).
    pub written: u64,
}

pub async fn outbox_stats(con: &mut impl ConnectionLike, outbox: &str) -> RedisResult<OutboxStats> {
    let reply: Vec<i64> = OUTBOX_STATS
        .key(outbox)
        .arg(WRITER_GROUP)
        .invoke_async(con)
        .await?;
    let [now_ms, length, pending, oldest_pending_ms, oldest_ms, added] = reply[..] else {
        return Err(super::unexpected_reply(
            "outbox_stats.lua",
            format!("{reply:?}"),
        ));
    };
    // A negative time means "none"; ids stamped after `now` (a clock step back) count as fresh.
    let age = |at_ms: i64| {
        (at_ms >= 0).then(|| Duration::from_millis(u64::try_from(now_ms - at_ms).unwrap_or(0)))
    };
    Ok(OutboxStats {
        length: length.max(0) as u64,
        pending: pending.max(0) as u64,
        oldest_pending_age: age(oldest_pending_ms),
        lag: age(oldest_ms),
        written: u64::try_from(added - length).unwrap_or(0),
    })
}
