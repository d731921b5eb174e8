//! Loading a campaign into Redis from PostgreSQL and the outbox when Redis does not hold it:
//! once per process at a time, with unknown ids remembered as absent for a while, so that
//! neither a crowd on one cold campaign nor a flood of random ids hammers PostgreSQL.
//!
//! Hydration holds no pooled connection: it speaks to Redis on the shared multiplexed one, and
//! reads the outbox through scans shared by every campaign of a shard that is cold at once.

use std::{collections::HashSet, sync::Arc, time::Duration};

use crate::redis::Connection;
use metrics::counter;
use sqlx::PgPool;

use super::{GatewayError, LOAD_ATTEMPTS, answered::Answered, scans::OutboxScans};
use crate::{
    domain::{CampaignId, Holder},
    redis::{
        keys::Shards,
        scripts::{self, Hydration},
    },
    store,
    telemetry::metrics::HYDRATIONS,
};

/// Whether PostgreSQL knows a campaign, as the last lookup found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Presence {
    Loaded,
    Absent,
}

pub struct Hydrator {
    redis: Connection,
    db: PgPool,
    shards: Shards,
    /// Single-flight hydration per campaign, and unknown ids remembered as absent.
    lookups: moka::future::Cache<CampaignId, Presence>,
    scans: OutboxScans,
    /// The highest voucher number this process answered per campaign.
    pub answered: Answered,
}

impl Hydrator {
    pub fn new(redis: Connection, db: PgPool, shards: Shards, absent_ttl: Duration) -> Self {
        let lookups = moka::future::Cache::builder()
            .max_capacity(100_000)
            .time_to_live(absent_ttl)
            .build();
        Self {
            scans: OutboxScans::new(redis.clone(), shards.clone()),
            redis,
            db,
            shards,
            lookups,
            answered: Answered::default(),
        }
    }

    /// `ensure_loaded` on the heap: hydration's state is many times the size of a redeem's, and
    /// inline it would make every request's future that large, moved into place on each request.
    pub async fn load(&self, id: CampaignId) -> Result<(), GatewayError> {
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
        // An unknown id costs one primary-key lookup, whatever the outbox holds: campaigns are
        // never deleted, so one known now is known for the rest of the hydration.
        if !store::campaign_exists(&self.db, id).await? {
            return Ok(Presence::Absent);
        }
        let keys = self.shards.campaign(id);
        let mut con = self.redis.clone();
        for _ in 0..LOAD_ATTEMPTS {
            // The outbox must be read before PostgreSQL: an entry the writer deletes meanwhile
            // was committed before it was deleted, so the PostgreSQL read that follows sees it.
            let queued = self.scans.queued(id).await?;
            let Some(campaign) = store::select_campaign(&self.db, id).await? else {
                return Ok(Presence::Absent);
            };
            let last_seq = [campaign.last_seq, self.answered.highest(id)]
                .into_iter()
                .chain(queued.iter().map(|entry| i64::from(entry.seq)))
                .max()
                .unwrap_or(0);
            let queued: Vec<Holder> = queued.into_iter().map(|entry| entry.holder).collect();
            let queued_users: HashSet<&str> =
                queued.iter().map(|holder| holder.user.as_str()).collect();
            let mut distinct = queued_users.len();
            for chunk in queued.chunks(store::HOLDERS_CHUNK as usize) {
                if scripts::hydrate_users(&mut con, &keys, chunk).await? == Hydration::AlreadyLoaded
                {
                    return Ok(Presence::Loaded);
                }
            }
            // PostgreSQL's holders load last, so where they disagree with the outbox they win.
            let mut pages = store::HolderPages::new(&self.db, id);
            while let Some(page) = pages.next().await? {
                distinct += page
                    .iter()
                    .filter(|holder| !queued_users.contains(holder.user.as_str()))
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
                campaign.window(),
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
