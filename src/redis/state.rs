//! Reading one campaign's state as the scripts keep it: the counters of its campaign hash and the
//! holders of its users hash. Writes go through the scripts only.

use redis::{RedisResult, aio::ConnectionLike};

use super::keys::CampaignKeys;
use crate::domain::{Holder, IdempotencyKey, Timestamp, UserId, Window};

/// What `GET /campaigns/{id}` shows of a loaded campaign.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Counters {
    pub name: String,
    pub total: i64,
    pub remaining: i64,
    pub window: Window,
}

/// The campaign's counters; `None` when Redis does not hold it (it must hydrate first).
pub async fn counters(
    con: &mut impl ConnectionLike,
    keys: &CampaignKeys,
) -> RedisResult<Option<Counters>> {
    type Fields = (
        Option<i64>,
        Option<i64>,
        Option<String>,
        Option<i64>,
        Option<i64>,
    );
    let (total, remaining, name, starts, ends): Fields = redis::cmd("HMGET")
        .arg(&keys.campaign)
        .arg(&["total", "remaining", "name", "starts", "ends"])
        .query_async(con)
        .await?;
    Ok(match (total, remaining, name) {
        (Some(total), Some(remaining), Some(name)) => Some(Counters {
            name,
            total,
            remaining,
            window: Window {
                starts_at: starts.and_then(Timestamp::from_millis),
                ends_at: ends.and_then(Timestamp::from_millis),
            },
        }),
        _ => None,
    })
}

/// What reconcile compares of a loaded campaign, read in one transaction.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CampaignState {
    pub total: i64,
    pub remaining: i64,
    pub holders: i64,
    /// The last voucher number given.
    pub last_seq: i64,
    pub starts_at: Option<Timestamp>,
    pub ends_at: Option<Timestamp>,
}

impl CampaignState {
    pub fn window(&self) -> Window {
        Window {
            starts_at: self.starts_at,
            ends_at: self.ends_at,
        }
    }
}

/// The campaign's counters and holder count; `None` when Redis does not hold it.
pub async fn campaign_state(
    con: &mut impl ConnectionLike,
    keys: &CampaignKeys,
) -> RedisResult<Option<CampaignState>> {
    type Counters = (
        Option<i64>,
        Option<i64>,
        Option<i64>,
        Option<i64>,
        Option<i64>,
    );
    let ((total, remaining, last_seq, starts, ends), holders): (Counters, i64) = redis::pipe()
        .atomic()
        .cmd("HMGET")
        .arg(&keys.campaign)
        .arg(&["total", "remaining", "seq", "starts", "ends"])
        .cmd("HLEN")
        .arg(&keys.users)
        .query_async(con)
        .await?;
    Ok(match (total, remaining) {
        (Some(total), Some(remaining)) => Some(CampaignState {
            total,
            remaining,
            holders,
            last_seq: last_seq.unwrap_or(0),
            starts_at: starts.and_then(Timestamp::from_millis),
            ends_at: ends.and_then(Timestamp::from_millis),
        }),
        _ => None,
    })
}

/// One step of a scan over the campaign's holders, from `cursor` (0 to start): the next cursor
/// (0 when done) and up to about `count` holders. A holder may come twice in one scan.
pub async fn scan_holders(
    con: &mut impl ConnectionLike,
    keys: &CampaignKeys,
    cursor: u64,
    count: usize,
) -> RedisResult<(u64, Vec<Holder>)> {
    let (next, fields): (u64, Vec<(String, String)>) = redis::cmd("HSCAN")
        .arg(&keys.users)
        .arg(cursor)
        .arg("COUNT")
        .arg(count)
        .query_async(con)
        .await?;
    let holders = fields
        .into_iter()
        .map(|(user, key)| parsed("holder", Holder::parse(&user, &key)))
        .collect::<RedisResult<_>>()?;
    Ok((next, holders))
}

/// The key Redis holds for each of `users`, in their order (`None` for a user who holds none).
pub async fn keys_of(
    con: &mut impl ConnectionLike,
    keys: &CampaignKeys,
    users: &[&UserId],
) -> RedisResult<Vec<Option<IdempotencyKey>>> {
    if users.is_empty() {
        return Ok(Vec::new());
    }
    let held: Vec<Option<String>> = redis::cmd("HMGET")
        .arg(&keys.users)
        .arg(users.iter().map(|user| user.as_str()).collect::<Vec<_>>())
        .query_async(con)
        .await?;
    held.into_iter()
        .map(|key| key.map(|key| parsed("idempotency key", IdempotencyKey::parse(&key))))
        .map(Option::transpose)
        .collect()
}

/// A value the scripts wrote, parsed: one that does not parse was written by someone else.
fn parsed<T>(what: &str, value: Result<T, crate::domain::DomainError>) -> RedisResult<T> {
    value.map_err(|error| super::unexpected_reply("a users hash", format!("a {what} that {error}")))
}

/// A user's idempotency key as the campaign's users hash holds it: `None` when Redis does not
/// hold the campaign (it must hydrate first), `Some(None)` when the user holds nothing.
pub async fn holder(
    con: &mut impl ConnectionLike,
    keys: &CampaignKeys,
    user: &UserId,
) -> RedisResult<Option<Option<String>>> {
    let (loaded, key): (bool, Option<String>) = redis::pipe()
        .atomic()
        .cmd("EXISTS")
        .arg(&keys.campaign)
        .cmd("HGET")
        .arg(&keys.users)
        .arg(user.as_str())
        .query_async(con)
        .await?;
    Ok(loaded.then_some(key))
}
