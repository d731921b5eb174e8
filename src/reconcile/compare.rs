//! Comparing one campaign's Redis state with PostgreSQL and its queued outbox entries.
//!
//! Reads run in an order that makes the comparison exact while redeems and writers keep running:
//! Redis first, then the outbox, then PostgreSQL. A holder Redis has is either still queued when
//! the outbox is read, or was committed before its entry was deleted, and so is seen by the
//! PostgreSQL read that follows. Every side is read in bounded chunks: memory grows with the
//! differences found, not with the number of redemptions.

use std::collections::HashSet;

use redis::aio::ConnectionManager;
use serde::Serialize;
use sqlx::PgPool;

use crate::{
    domain::CampaignId,
    redis::{
        keys::{CampaignKeys, Shards},
        outbox,
    },
    store::{self, HOLDERS_CHUNK, reconcile as stored},
};

/// One campaign: what each side holds and every difference found.
#[derive(Debug, Clone, Serialize)]
pub struct CampaignReport {
    pub id: CampaignId,
    pub name: String,
    pub total: i32,
    pub postgres: PostgresState,
    /// `None` when Redis does not hold the campaign: it loads from PostgreSQL on first use.
    pub redis: Option<RedisState>,
    /// Outbox entries not yet written: on their way, not a difference.
    pub queued: usize,
    /// Holders Redis granted that are neither in PostgreSQL nor queued.
    pub lost_from_outbox: Vec<Holder>,
    /// Holders PostgreSQL has that Redis lacks or holds under another key.
    pub missing_in_redis: Vec<MissingInRedis>,
    /// Entries PostgreSQL refused: these users were told REDEEMED and hold nothing.
    pub rejected: Vec<RejectedEntry>,
    /// Voucher numbers given (the client was told REDEEMED) that reached no side.
    pub lost_acks: LostAcks,
    pub drift: Vec<Drift>,
    /// What `--repair` changed, when it ran.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repaired: Option<RepairSummary>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PostgresState {
    /// `campaigns.redeemed`.
    pub redeemed: i32,
    /// Rows in `redemptions`.
    pub rows: i64,
    pub last_seq: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct RedisState {
    pub total: i64,
    pub remaining: i64,
    pub holders: i64,
    pub last_seq: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Holder {
    pub user: String,
    pub key: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct MissingInRedis {
    pub user: String,
    /// The key PostgreSQL holds.
    pub key: String,
    /// The key Redis holds instead, if any.
    pub redis_key: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RejectedEntry {
    pub user: String,
    pub key: String,
    pub seq: i32,
    pub reason: String,
    /// Redis still grants this key: a difference until repaired. Otherwise history.
    pub still_in_redis: bool,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct LostAcks {
    /// Numbers not accounted for anywhere and not yet recorded.
    pub new: Vec<i32>,
    /// Numbers recorded as lost by an earlier repair.
    pub recorded: i64,
}

/// A counter that disagrees with the holders it counts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Drift {
    /// `campaigns.redeemed` differs from the rows of `redemptions`.
    RedeemedCounter { counter: i32, rows: i64 },
    /// Redis `remaining` differs from total minus the holders.
    RedisRemaining { remaining: i64, expected: i64 },
    /// Redis's total differs from PostgreSQL's.
    RedisTotal { redis: i64, postgres: i32 },
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct RepairSummary {
    /// Holders only Redis had, written through the outbox writer's transaction.
    pub written_to_postgres: u64,
    /// Of those, refused by PostgreSQL (then removed from Redis).
    pub refused_by_postgres: u64,
    pub set_in_redis: usize,
    pub removed_from_redis: usize,
    pub redeemed_recounted: bool,
    pub lost_recorded: usize,
}

impl CampaignReport {
    /// How many differences remain; 0 means in sync.
    pub fn differences(&self) -> usize {
        self.lost_from_outbox.len()
            + self.missing_in_redis.len()
            + self.rejected.iter().filter(|r| r.still_in_redis).count()
            + self.lost_acks.new.len()
            + self.drift.len()
    }
}

/// The two sides reconcile reads.
pub struct Sides {
    pub redis: ConnectionManager,
    pub db: PgPool,
    pub shards: Shards,
}

impl Sides {
    /// Compares one campaign; `None` if PostgreSQL does not know it.
    pub async fn compare(&self, id: CampaignId) -> anyhow::Result<Option<CampaignReport>> {
        let keys = self.shards.campaign(id);
        let mut con = self.redis.clone();
        let Some(counts) = stored::stored_counts(&self.db, id).await? else {
            return Ok(None);
        };
        let redis = redis_state(&mut con, &keys).await?;

        // Holders only Redis has, so far; some are merely on their way.
        let mut candidates = Vec::new();
        let mut seen = HashSet::new();
        if redis.is_some() {
            let mut cursor = 0_u64;
            loop {
                let (next, chunk): (u64, Vec<(String, String)>) = redis::cmd("HSCAN")
                    .arg(&keys.users)
                    .arg(cursor)
                    .arg("COUNT")
                    .arg(HOLDERS_CHUNK)
                    .query_async(&mut con)
                    .await?;
                let users: Vec<&str> = chunk.iter().map(|(user, _)| user.as_str()).collect();
                let known = stored::holders_among(&self.db, id, &users).await?;
                // HSCAN may return a field twice: each candidate is kept once.
                candidates.extend(
                    chunk
                        .into_iter()
                        .filter(|(user, _)| !known.contains(user) && seen.insert(user.clone()))
                        .map(|(user, key)| Holder { user, key }),
                );
                cursor = next;
                if cursor == 0 {
                    break;
                }
            }
        }

        let queued = outbox::queued_entries(&mut con, &keys.outbox, id).await?;
        let queued_holders: HashSet<(&str, &str)> = queued
            .iter()
            .map(|entry| (entry.user.as_str(), entry.key.as_str()))
            .collect();
        let rejected_rows = stored::rejected(&self.db, id).await?;
        let refused: HashSet<(&str, &str)> = rejected_rows
            .iter()
            .map(|r| (r.user_id.as_str(), r.idempotency_key.as_str()))
            .collect();
        let mut lost_from_outbox = Vec::new();
        for chunk in candidates.chunks(HOLDERS_CHUNK as usize) {
            let users: Vec<&str> = chunk.iter().map(|h| h.user.as_str()).collect();
            let stored_now = stored::holders_among(&self.db, id, &users).await?;
            lost_from_outbox.extend(
                chunk
                    .iter()
                    .filter(|holder| {
                        let pair = (holder.user.as_str(), holder.key.as_str());
                        !stored_now.contains(&holder.user)
                            && !queued_holders.contains(&pair)
                            && !refused.contains(&pair)
                    })
                    .cloned(),
            );
        }

        let mut rejected = Vec::with_capacity(rejected_rows.len());
        for chunk in rejected_rows.chunks(HOLDERS_CHUNK as usize) {
            let users: Vec<&str> = chunk.iter().map(|r| r.user_id.as_str()).collect();
            let held = redis_keys_of(&mut con, &keys, redis.is_some(), &users).await?;
            // A refused pair granted again later and now stored or queued is a holder, not a
            // refusal still open: repair must not take it away.
            let stored_now = stored::holders_among(&self.db, id, &users).await?;
            rejected.extend(chunk.iter().zip(held).map(|(row, held)| {
                RejectedEntry {
                    still_in_redis: held.as_deref() == Some(row.idempotency_key.as_str())
                        && !stored_now.contains(&row.user_id)
                        && !queued_holders
                            .contains(&(row.user_id.as_str(), row.idempotency_key.as_str())),
                    user: row.user_id.clone(),
                    key: row.idempotency_key.clone(),
                    seq: row.seq,
                    reason: row.reason.clone(),
                }
            }));
        }

        let mut missing_in_redis = Vec::new();
        if redis.is_some() {
            let mut after: Option<String> = None;
            loop {
                let page = store::holders_after(&self.db, id, after.as_deref()).await?;
                let Some((last, _)) = page.last() else { break };
                after = Some(last.clone());
                let users: Vec<&str> = page.iter().map(|(user, _)| user.as_str()).collect();
                let held = redis_keys_of(&mut con, &keys, true, &users).await?;
                missing_in_redis.extend(page.into_iter().zip(held).filter_map(
                    |((user, key), redis_key)| {
                        (redis_key.as_deref() != Some(key.as_str())).then_some(MissingInRedis {
                            user,
                            key,
                            redis_key,
                        })
                    },
                ));
            }
        }

        // Numbers Redis had given when it was read, or PostgreSQL had seen before the outbox read.
        let last_seq = counts
            .last_seq
            .max(redis.as_ref().map_or(0, |r| r.last_seq));
        let queued_seqs: Vec<i32> = queued.iter().map(|entry| entry.seq).collect();
        let lost_acks = LostAcks {
            new: stored::unaccounted_seqs(&self.db, id, last_seq, &queued_seqs).await?,
            recorded: counts.recorded_lost,
        };

        let mut drift = Vec::new();
        if i64::from(counts.redeemed) != counts.rows {
            drift.push(Drift::RedeemedCounter {
                counter: counts.redeemed,
                rows: counts.rows,
            });
        }
        if let Some(state) = &redis {
            let expected = (state.total - state.holders).max(0);
            if state.remaining != expected {
                drift.push(Drift::RedisRemaining {
                    remaining: state.remaining,
                    expected,
                });
            }
            if state.total != i64::from(counts.total) {
                drift.push(Drift::RedisTotal {
                    redis: state.total,
                    postgres: counts.total,
                });
            }
        }

        Ok(Some(CampaignReport {
            id,
            name: counts.name,
            total: counts.total,
            postgres: PostgresState {
                redeemed: counts.redeemed,
                rows: counts.rows,
                last_seq: counts.last_seq,
            },
            redis,
            queued: queued.len(),
            lost_from_outbox,
            missing_in_redis,
            rejected,
            lost_acks,
            drift,
            repaired: None,
        }))
    }
}

/// The campaign's counters and holder count, read in one transaction; `None` if not loaded.
async fn redis_state(
    con: &mut ConnectionManager,
    keys: &CampaignKeys,
) -> redis::RedisResult<Option<RedisState>> {
    type Counters = (Option<i64>, Option<i64>, Option<i64>);
    let ((total, remaining, last_seq), holders): (Counters, i64) = redis::pipe()
        .atomic()
        .cmd("HMGET")
        .arg(&keys.campaign)
        .arg(&["total", "remaining", "seq"])
        .cmd("HLEN")
        .arg(&keys.users)
        .query_async(con)
        .await?;
    Ok(match (total, remaining) {
        (Some(total), Some(remaining)) => Some(RedisState {
            total,
            remaining,
            holders,
            last_seq: last_seq.unwrap_or(0),
        }),
        _ => None,
    })
}

/// The key Redis holds for each of `users` (all `None` when the campaign is not loaded).
async fn redis_keys_of(
    con: &mut ConnectionManager,
    keys: &CampaignKeys,
    loaded: bool,
    users: &[&str],
) -> redis::RedisResult<Vec<Option<String>>> {
    if !loaded || users.is_empty() {
        return Ok(vec![None; users.len()]);
    }
    redis::cmd("HMGET")
        .arg(&keys.users)
        .arg(users)
        .query_async(con)
        .await
}
