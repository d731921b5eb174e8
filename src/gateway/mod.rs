//! The gateway's operations, independent of HTTP: create a campaign, redeem, read a summary,
//! each hydrating the campaign's Redis state from PostgreSQL first when Redis does not hold it.

mod answered;
mod hydration;
mod listings;
mod persistence;
mod replication;
mod scans;

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use crate::redis::Connection;
use metrics::histogram;
use serde::Serialize;
use sqlx::PgPool;

use crate::{
    domain::{
        CampaignId, CampaignName, Fate, Holder, IdempotencyKey, Outcome, RejectReason, Timestamp,
        Total, UserId, Window,
    },
    redis::{
        keys::Shards,
        scripts::{self, Decision},
        state,
    },
    store,
    telemetry::metrics::REDEEM_SCRIPT_DURATION,
};
use hydration::Hydrator;
pub use listings::{CampaignsAfter, Lookup};
pub use persistence::Persistence;
pub use replication::Replication;

/// How often an operation hydrates and retries before giving up on a campaign that keeps
/// vanishing from Redis (a Redis being flushed over and over).
const LOAD_ATTEMPTS: usize = 3;

/// A campaign's counters, as the API returns them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    #[schema(value_type = uuid::Uuid)]
    pub id: CampaignId,
    pub name: String,
    pub total: i64,
    pub redeemed: i64,
    pub remaining: i64,
    /// When redeems open; `null`: from the campaign's creation.
    pub starts_at: Option<Timestamp>,
    /// When redeems end; `null`: when the vouchers run out.
    pub ends_at: Option<Timestamp>,
}

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("campaign not found")]
    NotFound,
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("PostgreSQL: {0}")]
    Database(#[from] sqlx::Error),
    #[error("campaign {0} did not stay loaded in Redis")]
    Unstable(CampaignId),
    /// The error of a hydration that other requests waited on too.
    #[error(transparent)]
    Shared(Arc<GatewayError>),
    /// The decision is made but not yet as durable as `--ack` promises.
    #[error("the decision is not durable yet")]
    NotDurable,
}

/// What a REDEEMED waits for (`--ack`).
pub enum Durability {
    /// Nothing: Redis's decision is the answer.
    Redis,
    Replica(Replication),
    Postgres(Persistence),
}

pub struct Gateway {
    /// One multiplexed connection for every request.
    redis: Connection,
    db: PgPool,
    shards: Shards,
    hydrator: Hydrator,
    durability: Durability,
}

impl Gateway {
    pub fn new(
        redis: Connection,
        db: PgPool,
        shards: Shards,
        absent_ttl: Duration,
        durability: Durability,
    ) -> Self {
        let hydrator = Hydrator::new(redis.clone(), db.clone(), shards.clone(), absent_ttl);
        Self {
            redis,
            db,
            shards,
            hydrator,
            durability,
        }
    }

    pub fn shards(&self) -> &Shards {
        &self.shards
    }

    /// Creates a campaign: PostgreSQL first (the record), then its Redis state. If Redis fails
    /// after the commit, the campaign still exists and hydrates on first touch.
    pub async fn create_campaign(
        &self,
        name: CampaignName,
        total: Total,
        window: Window,
    ) -> Result<Summary, GatewayError> {
        let id = CampaignId::new_random();
        let row = store::insert_campaign(&self.db, id, &name, total, window).await?;
        let keys = self.shards.campaign(id);
        let mut con = self.redis.clone();
        let loaded = scripts::hydrate_commit(&mut con, &keys, row.total, &row.name, 0, 0, window);
        if let Err(error) = loaded.await {
            tracing::warn!(%id, %error, "campaign stored but not loaded into Redis; it loads on first use");
        }
        Ok(Summary {
            id,
            name: row.name,
            total: row.total.into(),
            redeemed: 0,
            remaining: row.total.into(),
            starts_at: window.starts_at,
            ends_at: window.ends_at,
        })
    }

    /// Ends a campaign's sale now, by Redis's clock, unless it ended before: Redis first (the
    /// decisions' truth), then PostgreSQL; a retry after a failure writes the same end to both.
    pub async fn close(&self, id: CampaignId) -> Result<Summary, GatewayError> {
        let keys = self.shards.campaign(id);
        let mut con = self.redis.clone();
        for _ in 0..LOAD_ATTEMPTS {
            let Some(ends) = scripts::close(&mut con, &keys).await? else {
                self.hydrator.load(id).await?;
                continue;
            };
            let ends = Timestamp::from_millis(ends)
                .ok_or_else(|| crate::redis::unexpected_reply("close.lua", ends))?;
            if !store::close_campaign(&self.db, id, ends).await? {
                return Err(GatewayError::NotFound);
            }
            return self.summary(id).await;
        }
        Err(GatewayError::Unstable(id))
    }

    /// Decides one redeem in Redis, hydrating the campaign first if Redis does not hold it; a
    /// REDEEMED waits for the durability `--ack` promises.
    pub async fn redeem(
        &self,
        id: CampaignId,
        user: &UserId,
        key: &IdempotencyKey,
    ) -> Result<Outcome, GatewayError> {
        let keys = self.shards.campaign(id);
        let mut con = self.redis.clone();
        for _ in 0..LOAD_ATTEMPTS {
            let expected = match &self.durability {
                Durability::Postgres(persistence) => Some(persistence.expect(
                    id,
                    &Holder {
                        user: user.clone(),
                        key: key.clone(),
                    },
                )),
                Durability::Redis | Durability::Replica(_) => None,
            };
            let decision = match &self.durability {
                Durability::Replica(replication) => replication.redeem(&keys, id, user, key).await,
                Durability::Redis | Durability::Postgres(_) => {
                    let started = Instant::now();
                    let decision = scripts::redeem(&mut con, &keys, id, user, key).await;
                    histogram!(REDEEM_SCRIPT_DURATION).record(started.elapsed().as_secs_f64());
                    decision.map_err(GatewayError::from)
                }
            };
            let seq = match decision? {
                Decision::NotLoaded => {
                    self.hydrator.load(id).await?;
                    continue;
                }
                Decision::Redeemed { seq } => {
                    self.hydrator.answered.record(id, seq);
                    Some(seq)
                }
                Decision::Replayed => None,
                Decision::AlreadyRedeemed => return Ok(Outcome::AlreadyRedeemed),
                Decision::SoldOut => return Ok(Outcome::SoldOut),
                Decision::Ended => return Ok(Outcome::Ended),
                Decision::NotStarted { opens_in } => return Ok(Outcome::NotStarted { opens_in }),
            };
            let replayed = seq.is_none();
            let (Durability::Postgres(persistence), Some(expected)) = (&self.durability, expected)
            else {
                return Ok(Outcome::Redeemed { replayed });
            };
            return match persistence.wait(expected, seq).await? {
                Fate::Stored => Ok(Outcome::Redeemed { replayed }),
                Fate::Refused(RejectReason::UserHoldsOtherKey) => Ok(Outcome::AlreadyRedeemed),
                Fate::Refused(RejectReason::SoldOut) => Ok(Outcome::SoldOut),
                Fate::Refused(
                    reason @ (RejectReason::SeqTaken | RejectReason::UnknownCampaign),
                ) => {
                    tracing::error!(campaign = %id, reason = reason.as_str(), "PostgreSQL refused a grant and holds nothing for the user; run reconcile --repair");
                    Err(GatewayError::NotDurable)
                }
            };
        }
        Err(GatewayError::Unstable(id))
    }

    /// Reads a campaign's counters from Redis, hydrating it first if needed.
    pub async fn summary(&self, id: CampaignId) -> Result<Summary, GatewayError> {
        let keys = self.shards.campaign(id);
        let mut con = self.redis.clone();
        for _ in 0..LOAD_ATTEMPTS {
            match state::counters(&mut con, &keys).await? {
                Some(counters) => {
                    return Ok(Summary {
                        id,
                        name: counters.name,
                        total: counters.total,
                        redeemed: counters.total - counters.remaining,
                        remaining: counters.remaining,
                        starts_at: counters.window.starts_at,
                        ends_at: counters.window.ends_at,
                    });
                }
                None => self.hydrator.load(id).await?,
            }
        }
        Err(GatewayError::Unstable(id))
    }
}
