//! Comparing one campaign's Redis state with PostgreSQL and its queued outbox entries, one
//! function per kind of difference.
//!
//! Reads run in an order that makes the comparison exact while redeems and writers keep running:
//! Redis first, then the outbox, then PostgreSQL. A holder Redis has is either still queued when
//! the outbox is read, or was committed before its entry was deleted, and so is seen by the
//! PostgreSQL read that follows. Every side is read in bounded chunks: memory grows with the
//! differences found, not with the number of redemptions.

use std::collections::HashSet;

use crate::redis::Connection;
use serde::Serialize;
use sqlx::PgPool;

use crate::{
    domain::{CampaignId, Holder, IdempotencyKey, OutboxEntry, Timestamp, Window},
    redis::{
        keys::{CampaignKeys, Shards},
        outbox,
        state::{self, CampaignState},
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
    pub redis: Option<CampaignState>,
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
pub struct MissingInRedis {
    /// The holder PostgreSQL has.
    #[serde(flatten)]
    pub holder: Holder,
    /// The key Redis holds instead, if any.
    pub redis_key: Option<IdempotencyKey>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RejectedEntry {
    #[serde(flatten)]
    pub holder: Holder,
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
    /// Redis's sale window differs from PostgreSQL's (a close cut short between the two).
    Window {
        redis_starts_at: Option<Timestamp>,
        redis_ends_at: Option<Timestamp>,
        postgres_starts_at: Option<Timestamp>,
        postgres_ends_at: Option<Timestamp>,
    },
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
    pub redis: Connection,
    pub db: PgPool,
    pub shards: Shards,
}

/// What the queued outbox entries of a campaign say, for the comparisons that need them.
struct Queued<'a> {
    holders: HashSet<&'a Holder>,
    seqs: Vec<i32>,
}

impl Sides {
    /// Compares one campaign; `None` if PostgreSQL does not know it.
    pub async fn compare(&self, id: CampaignId) -> anyhow::Result<Option<CampaignReport>> {
        let keys = self.shards.campaign(id);
        let mut con = self.redis.clone();
        let Some(counts) = stored::stored_counts(&self.db, id).await? else {
            return Ok(None);
        };
        let redis = state::campaign_state(&mut con, &keys).await?;
        let redis_only = match redis {
            Some(_) => self.redis_only_holders(id, &keys).await?,
            None => Vec::new(),
        };
        let entries: Vec<OutboxEntry> =
            outbox::queued_entries_of(&mut con, &keys.outbox, id).await?;
        let queued = Queued {
            holders: entries.iter().map(|entry| &entry.holder).collect(),
            seqs: entries.iter().map(|entry| entry.seq).collect(),
        };
        let rejected = stored::rejected(&self.db, id).await?;
        let lost_from_outbox = self
            .lost_from_outbox(id, redis_only, &queued, &rejected)
            .await?;
        let rejected = self
            .open_refusals(id, &keys, redis.is_some(), rejected, &queued)
            .await?;
        let missing_in_redis = match redis {
            Some(_) => self.missing_in_redis(id, &keys).await?,
            None => Vec::new(),
        };
        // Numbers Redis had given when it was read, or PostgreSQL had seen before the outbox read.
        let last_seq = counts
            .last_seq
            .max(redis.as_ref().map_or(0, |r| r.last_seq));
        let lost_acks = LostAcks {
            new: stored::unaccounted_seqs(&self.db, id, last_seq, &queued.seqs).await?,
            recorded: counts.recorded_lost,
        };
        Ok(Some(CampaignReport {
            id,
            name: counts.name.clone(),
            total: counts.total,
            postgres: PostgresState {
                redeemed: counts.redeemed,
                rows: counts.rows,
                last_seq: counts.last_seq,
            },
            drift: drift(&counts, redis.as_ref()),
            redis,
            queued: entries.len(),
            lost_from_outbox,
            missing_in_redis,
            rejected,
            lost_acks,
            repaired: None,
        }))
    }

    /// Holders Redis has that PostgreSQL did not hold when they were read; some are merely on
    /// their way.
    async fn redis_only_holders(
        &self,
        id: CampaignId,
        keys: &CampaignKeys,
    ) -> anyhow::Result<Vec<Holder>> {
        let mut con = self.redis.clone();
        let (mut found, mut seen) = (Vec::new(), HashSet::new());
        let mut cursor = 0;
        loop {
            let (next, chunk) =
                state::scan_holders(&mut con, keys, cursor, HOLDERS_CHUNK as usize).await?;
            let known = stored::holders_among(&self.db, id, chunk.iter().map(|h| &h.user)).await?;
            // HSCAN may return a field twice: each holder is kept once.
            found.extend(chunk.into_iter().filter(|holder| {
                !known.contains(holder.user.as_str()) && seen.insert(holder.user.clone())
            }));
            cursor = next;
            if cursor == 0 {
                return Ok(found);
            }
        }
    }

    /// Of the holders only Redis had, those that are still not in PostgreSQL, not queued, and
    /// not refused.
    async fn lost_from_outbox(
        &self,
        id: CampaignId,
        redis_only: Vec<Holder>,
        queued: &Queued<'_>,
        rejected: &[stored::Rejected],
    ) -> anyhow::Result<Vec<Holder>> {
        let refused: HashSet<&Holder> = rejected.iter().map(|r| &r.holder).collect();
        let mut lost = Vec::new();
        for chunk in redis_only.chunks(HOLDERS_CHUNK as usize) {
            let stored_now =
                stored::holders_among(&self.db, id, chunk.iter().map(|h| &h.user)).await?;
            lost.extend(
                chunk
                    .iter()
                    .filter(|holder| {
                        !stored_now.contains(holder.user.as_str())
                            && !queued.holders.contains(holder)
                            && !refused.contains(holder)
                    })
                    .cloned(),
            );
        }
        Ok(lost)
    }

    /// The refused entries, each marked with whether Redis still grants it.
    async fn open_refusals(
        &self,
        id: CampaignId,
        keys: &CampaignKeys,
        loaded: bool,
        rejected: Vec<stored::Rejected>,
        queued: &Queued<'_>,
    ) -> anyhow::Result<Vec<RejectedEntry>> {
        let mut con = self.redis.clone();
        let mut entries = Vec::with_capacity(rejected.len());
        for chunk in rejected.chunks(HOLDERS_CHUNK as usize) {
            let users: Vec<_> = chunk.iter().map(|r| &r.holder.user).collect();
            let held = if loaded {
                state::keys_of(&mut con, keys, &users).await?
            } else {
                vec![None; users.len()]
            };
            // A refused pair granted again later and now stored or queued is a holder, not a
            // refusal still open: repair must not take it away.
            let stored_now = stored::holders_among(&self.db, id, users.into_iter()).await?;
            entries.extend(chunk.iter().zip(held).map(|(row, held)| RejectedEntry {
                still_in_redis: held.as_ref() == Some(&row.holder.key)
                    && !stored_now.contains(row.holder.user.as_str())
                    && !queued.holders.contains(&row.holder),
                holder: row.holder.clone(),
                seq: row.seq,
                reason: row.reason.clone(),
            }));
        }
        Ok(entries)
    }

    /// Holders PostgreSQL has that Redis lacks or holds under another key.
    async fn missing_in_redis(
        &self,
        id: CampaignId,
        keys: &CampaignKeys,
    ) -> anyhow::Result<Vec<MissingInRedis>> {
        let mut con = self.redis.clone();
        let mut missing = Vec::new();
        let mut pages = store::HolderPages::new(&self.db, id);
        while let Some(page) = pages.next().await? {
            let users: Vec<_> = page.iter().map(|holder| &holder.user).collect();
            let held = state::keys_of(&mut con, keys, &users).await?;
            missing.extend(
                page.into_iter()
                    .zip(held)
                    .filter(|(holder, redis_key)| redis_key.as_ref() != Some(&holder.key))
                    .map(|(holder, redis_key)| MissingInRedis { holder, redis_key }),
            );
        }
        Ok(missing)
    }
}

impl CampaignReport {
    /// The window both sides should hold: the earlier end of the two (an ENDED answer from
    /// either must stay the answer), PostgreSQL's start, moved to the end when after it.
    pub fn agreed_window(&self) -> Option<Window> {
        let redis = self.redis.as_ref()?.window();
        let postgres = self.drift.iter().find_map(|drift| match drift {
            Drift::Window {
                postgres_starts_at,
                postgres_ends_at,
                ..
            } => Some(Window {
                starts_at: *postgres_starts_at,
                ends_at: *postgres_ends_at,
            }),
            _ => None,
        });
        let Some(postgres) = postgres else {
            return Some(redis);
        };
        let ends_at = match (redis.ends_at, postgres.ends_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let starts_at = match (postgres.starts_at, ends_at) {
            (Some(starts), Some(ends)) => Some(starts.min(ends)),
            (starts, _) => starts,
        };
        Some(Window { starts_at, ends_at })
    }
}

/// The counters that disagree with the holders they count.
fn drift(counts: &stored::StoredCounts, redis: Option<&CampaignState>) -> Vec<Drift> {
    let mut drift = Vec::new();
    if i64::from(counts.redeemed) != counts.rows {
        drift.push(Drift::RedeemedCounter {
            counter: counts.redeemed,
            rows: counts.rows,
        });
    }
    if let Some(state) = redis {
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
        let (redis, postgres) = (state.window(), counts.window());
        if redis != postgres {
            drift.push(Drift::Window {
                redis_starts_at: redis.starts_at,
                redis_ends_at: redis.ends_at,
                postgres_starts_at: postgres.starts_at,
                postgres_ends_at: postgres.ends_at,
            });
        }
    }
    drift
}
