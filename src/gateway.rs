//! The gateway's operations, independent of HTTP: create a campaign, redeem, read a summary, and
//! hydrate a campaign's Redis state from PostgreSQL when Redis does not hold it.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use metrics::{counter, histogram};
use redis::aio::ConnectionManager;
use serde::Serialize;
use sqlx::PgPool;

use crate::{
    domain::{CampaignId, CampaignName, IdempotencyKey, Outcome, Total, UserId},
    redis::{
        keys::Shards,
        outbox,
        scripts::{self, Decision, Hydration},
    },
    store,
    telemetry::metrics::{HYDRATIONS, REDEEM_SCRIPT_DURATION},
};

/// How often an operation hydrates and retries before giving up on a campaign that keeps
/// vanishing from Redis (a Redis being flushed over and over).
const LOAD_ATTEMPTS: usize = 3;

/// A campaign's counters, as the API returns them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Summary {
    #[schema(value_type = uuid::Uuid)]
    pub id: CampaignId,
    pub name: String,
    pub total: i64,
    pub redeemed: i64,
    pub remaining: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("campaign not found")]
    NotFound,
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("Redis pool: {0}")]
    RedisPool(#[from] deadpool_redis::PoolError),
    #[error("PostgreSQL: {0}")]
    Database(#[from] sqlx::Error),
    #[error("campaign {0} did not stay loaded in Redis")]
    Unstable(CampaignId),
    /// The error of a hydration that other requests waited on too.
    #[error(transparent)]
    Shared(Arc<GatewayError>),
}

impl GatewayError {
    /// The error itself, seen through any sharing.
    pub fn root(&self) -> &GatewayError {
        match self {
            GatewayError::Shared(shared) => shared.root(),
            other => other,
        }
    }
}

/// Whether PostgreSQL knows a campaign, as the last lookup found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Presence {
    Loaded,
    Absent,
}

pub struct Gateway {
    /// The hot path: one multiplexed connection for every request.
    redis: ConnectionManager,
    /// For hydration, which reads the outbox page by page.
    pool: deadpool_redis::Pool,
    db: PgPool,
    shards: Shards,
    /// Single-flight hydration per campaign, and unknown ids remembered as absent for a while,
    /// so neither a crowd on one cold campaign nor a flood of random ids hammers PostgreSQL.
    lookups: moka::future::Cache<CampaignId, Presence>,
    /// The highest voucher number this process has answered per campaign. If Redis loses its
    /// data, hydration restarts numbering above it, so the acknowledged numbers that never
    /// reached PostgreSQL remain visible as gaps for reconcile to count.
    answered: Mutex<HashMap<CampaignId, i64>>,
}

impl Gateway {
    pub fn new(
        redis: ConnectionManager,
        pool: deadpool_redis::Pool,
        db: PgPool,
        shards: Shards,
        absent_ttl: Duration,
    ) -> Self {
        let lookups = moka::future::Cache::builder()
            .max_capacity(100_000)
            .time_to_live(absent_ttl)
            .build();
        Self {
            redis,
            pool,
            db,
            shards,
            lookups,
            answered: Mutex::default(),
        }
    }

    pub fn shards(&self) -> Shards {
        self.shards
    }

    /// Creates a campaign: PostgreSQL first (the record), then its Redis state. If Redis fails
    /// after the commit, the campaign still exists and hydrates on first touch.
    pub async fn create_campaign(
        &self,
        name: CampaignName,
        total: Total,
    ) -> Result<Summary, GatewayError> {
        let id = CampaignId::new_random();
        let row = store::insert_campaign(&self.db, id, &name, total).await?;
        let keys = self.shards.campaign(id);
        let mut con = self.redis.clone();
        if let Err(error) =
            scripts::hydrate_commit(&mut con, &keys, row.total, &row.name, 0, 0).await
        {
            tracing::warn!(%id, %error, "campaign stored but not loaded into Redis; it loads on first use");
        }
        Ok(Summary {
            id,
            name: row.name,
            total: row.total.into(),
            redeemed: 0,
            remaining: row.total.into(),
        })
    }

    /// Decides one redeem in Redis, hydrating the campaign first if Redis does not hold it.
    pub async fn redeem(
        &self,
        id: CampaignId,
        user: &UserId,
        key: &IdempotencyKey,
    ) -> Result<Outcome, GatewayError> {
        let keys = self.shards.campaign(id);
        let mut con = self.redis.clone();
        for _ in 0..LOAD_ATTEMPTS {
            let started = Instant::now();
            let decision = scripts::redeem(&mut con, &keys, id, user, key).await;
            histogram!(REDEEM_SCRIPT_DURATION).record(started.elapsed().as_secs_f64());
            match decision? {
                Decision::NotLoaded => self.load(id).await?,
                Decision::Redeemed { seq } => {
                    self.record_answered(id, seq);
                    return Ok(Outcome::Redeemed { replayed: false });
                }
                Decision::Replayed => return Ok(Outcome::Redeemed { replayed: true }),
                Decision::AlreadyRedeemed => return Ok(Outcome::AlreadyRedeemed),
                Decision::SoldOut => return Ok(Outcome::SoldOut),
            }
        }
        Err(GatewayError::Unstable(id))
    }

    /// Reads a campaign's counters from Redis, hydrating it first if needed.
    pub async fn summary(&self, id: CampaignId) -> Result<Summary, GatewayError> {
        let keys = self.shards.campaign(id);
        let mut con = self.redis.clone();
        for _ in 0..LOAD_ATTEMPTS {
            let (total, remaining, name): (Option<i64>, Option<i64>, Option<String>) =
                redis::cmd("HMGET")
                    .arg(&keys.campaign)
                    .arg(&["total", "remaining", "name"])
                    .query_async(&mut con)
                    .await?;
            match (total, remaining, name) {
                (Some(total), Some(remaining), Some(name)) => {
                    return Ok(Summary {
                        id,
                        name,
                        total,
                        redeemed: total - remaining,
                        remaining,
                    });
                }
                _ => self.load(id).await?,
            }
        }
        Err(GatewayError::Unstable(id))
    }

    fn record_answered(&self, id: CampaignId, seq: i64) {
        let mut answered = self.answered.lock().expect("never poisoned");
        let highest = answered.entry(id).or_default();
        *highest = (*highest).max(seq);
    }

    fn highest_answered(&self, id: CampaignId) -> i64 {
        let answered = self.answered.lock().expect("never poisoned");
        answered.get(&id).copied().unwrap_or(0)
    }

    /// `ensure_loaded` on the heap: hydration's state is many times the size of a redeem's, and
    /// inline it would make every request's future that large, moved into place on each request.
    async fn load(&self, id: CampaignId) -> Result<(), GatewayError> {
        Box::pin(self.ensure_loaded(id)).await
    }

    /// Hydrates a campaign once per process at a time; `NotFound` if PostgreSQL does not know it.
    async fn ensure_loaded(&self, id: CampaignId) -> Result<(), GatewayError> {
        let hydrate = async {
            let presence = self.hydrate(id).await;
            let result = match &presence {
                Ok(Presence::Loaded) => "loaded",
                Ok(Presence::Absent) => "absent",
                Err(_) => "failed",
            };
            counter!(HYDRATIONS, "result" => result).increment(1);
            presence
        };
        let presence = self
            .lookups
            .try_get_with(id, hydrate)
            .await
            .map_err(|error| Arc::try_unwrap(error).unwrap_or_else(GatewayError::Shared))?;
        match presence {
            Presence::Loaded => {
                // Only absence is remembered: a campaign that vanishes again must hydrate again.
                self.lookups.invalidate(&id).await;
                Ok(())
            }
            Presence::Absent => Err(GatewayError::NotFound),
        }
    }

    /// Loads a campaign into Redis from its outbox entries and PostgreSQL. Safe to run in many
    /// gateways at once: `hydrate.lua` lets the first commit win and the rest write nothing after.
    async fn hydrate(&self, id: CampaignId) -> Result<Presence, GatewayError> {
        let keys = self.shards.campaign(id);
        let mut con = self.pool.get().await?;
        for _ in 0..LOAD_ATTEMPTS {
            // The outbox must be read before PostgreSQL: an entry the writer deletes meanwhile
            // was committed before it was deleted, so the PostgreSQL read that follows sees it.
            let queued = outbox::queued_entries(&mut con, &keys.outbox, id).await?;
            let Some(campaign) = store::select_campaign(&self.db, id).await? else {
                return Ok(Presence::Absent);
            };
            let last_seq = [campaign.last_seq, self.highest_answered(id)]
                .into_iter()
                .chain(queued.iter().map(|entry| i64::from(entry.seq)))
                .max()
                .unwrap_or(0);
            let queued: Vec<(String, String)> = queued
                .into_iter()
                .map(|entry| (entry.user, entry.key))
                .collect();
            let queued_users: HashSet<&str> =
                queued.iter().map(|(user, _)| user.as_str()).collect();
            let mut distinct = queued_users.len();
            for chunk in queued.chunks(store::HOLDERS_CHUNK as usize) {
                if scripts::hydrate_users(&mut con, &keys, chunk).await? == Hydration::AlreadyLoaded
                {
                    return Ok(Presence::Loaded);
                }
            }
            // PostgreSQL's holders load last, so where they disagree with the outbox they win.
            let mut after: Option<String> = None;
            loop {
                let page = store::holders_after(&self.db, id, after.as_deref()).await?;
                let Some((last, _)) = page.last() else { break };
                after = Some(last.clone());
                distinct += page
                    .iter()
                    .filter(|(user, _)| !queued_users.contains(user.as_str()))
                    .count();
                if scripts::hydrate_users(&mut con, &keys, &page).await? == Hydration::AlreadyLoaded
                {
                    return Ok(Presence::Loaded);
                }
            }
            let commit = scripts::hydrate_commit(
                &mut con,
                &keys,
                campaign.total,
                &campaign.name,
                distinct,
                last_seq,
            );
            match commit.await? {
                Hydration::Written => {
                    tracing::info!(%id, holders = distinct, last_seq, "campaign hydrated from PostgreSQL");
                    return Ok(Presence::Loaded);
                }
                Hydration::AlreadyLoaded => return Ok(Presence::Loaded),
                Hydration::HoldersLost => continue,
            }
        }
        Err(GatewayError::Unstable(id))
    }
}
