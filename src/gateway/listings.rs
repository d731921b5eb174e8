//! What the people running a sale read around the redeem: the campaigns, a campaign's stored
//! redemptions, and one user's redemption. Lists come from PostgreSQL; a lookup agrees with the
//! redeem decision, so it starts from Redis.

use std::collections::HashMap;

use futures_util::future::join_all;
use time::OffsetDateTime;
use uuid::Uuid;

use super::{Gateway, GatewayError, LOAD_ATTEMPTS, Summary};
use crate::{
    domain::{CampaignId, Timestamp, UserId},
    redis::{outbox, state},
    store::{self, listings::StoredRedemption},
};

/// Where a page of campaigns ends: the last one's creation and id.
pub type CampaignsAfter = (OffsetDateTime, Uuid);

/// One user's redemption of a campaign.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lookup {
    pub user: String,
    pub key: String,
    /// The voucher number; `None` for a holder whose entry is neither stored nor queued (one
    /// restored into Redis by reconcile, whose number PostgreSQL gives when it stores it).
    pub seq: Option<i64>,
    /// Whether PostgreSQL holds it yet.
    pub stored: bool,
}

impl Gateway {
    /// Up to `limit` campaigns created before `after`, newest first, and where the next page
    /// starts; the counters are Redis's where it holds the campaign, else PostgreSQL's.
    pub async fn campaigns(
        &self,
        after: Option<CampaignsAfter>,
        limit: usize,
    ) -> Result<(Vec<Summary>, Option<CampaignsAfter>), GatewayError> {
        let mut rows = store::listings::campaigns(&self.db, after, limit as i64 + 1).await?;
        let next = (rows.len() > limit)
            .then(|| rows.get(limit - 1).map(|row| (row.created_at, row.id)))
            .flatten();
        rows.truncate(limit);
        let counters = join_all(rows.iter().map(|row| {
            let keys = self.shards.campaign(row.id.into());
            let mut con = self.redis.clone();
            async move { state::counters(&mut con, &keys).await }
        }))
        .await;
        let items = rows
            .into_iter()
            .zip(counters)
            .map(|(row, counters)| {
                let stored = || Summary {
                    id: row.id.into(),
                    name: row.name.clone(),
                    total: row.total.into(),
                    redeemed: row.redeemed.into(),
                    remaining: i64::from(row.total - row.redeemed),
                    starts_at: row.starts_at.map(Timestamp::from),
                    ends_at: row.ends_at.map(Timestamp::from),
                };
                match counters {
                    Ok(Some(counters)) => Summary {
                        redeemed: counters.total - counters.remaining,
                        remaining: counters.remaining,
                        starts_at: counters.window.starts_at,
                        ends_at: counters.window.ends_at,
                        ..stored()
                    },
                    // Not loaded, or Redis unreachable: what PostgreSQL holds.
                    _ => stored(),
                }
            })
            .collect();
        Ok((items, next))
    }

    /// When each of the sold-out `campaigns`' last voucher was granted, as PostgreSQL stored
    /// it; one whose last voucher is not stored yet is left out.
    pub async fn sold_out_at(
        &self,
        campaigns: &[CampaignId],
    ) -> Result<HashMap<CampaignId, Timestamp>, GatewayError> {
        let last = store::listings::last_redeemed_at(&self.db, campaigns).await?;
        Ok(last
            .into_iter()
            .map(|(id, at)| (CampaignId::from(id), Timestamp::from(at)))
            .collect())
    }

    /// Up to `limit` of a campaign's stored redemptions numbered above `after`, and the number
    /// the next page starts after.
    pub async fn redemptions(
        &self,
        id: CampaignId,
        after: i32,
        limit: usize,
    ) -> Result<(Vec<StoredRedemption>, Option<i32>), GatewayError> {
        if !store::campaign_exists(&self.db, id).await? {
            return Err(GatewayError::NotFound);
        }
        let mut rows = store::listings::redemptions(&self.db, id, after, limit as i64 + 1).await?;
        let next = (rows.len() > limit)
            .then(|| rows.get(limit - 1).map(|row| row.seq))
            .flatten();
        rows.truncate(limit);
        Ok((rows, next))
    }

    /// The user's redemption: Redis's holder (the decision's truth), numbered from PostgreSQL
    /// when stored, else from the outbox. `NotFound` when the campaign is unknown or the user
    /// holds nothing (`Ok(None)`).
    pub async fn redemption_of(
        &self,
        id: CampaignId,
        user: &UserId,
    ) -> Result<Option<Lookup>, GatewayError> {
        let keys = self.shards.campaign(id);
        let mut con = self.redis.clone();
        for _ in 0..LOAD_ATTEMPTS {
            let Some(held) = state::holder(&mut con, &keys, user).await? else {
                self.hydrator.load(id).await?;
                continue;
            };
            let Some(key) = held else {
                return Ok(None);
            };
            // The outbox before PostgreSQL: an entry stored meanwhile is in PostgreSQL then.
            let queued = outbox::queued_entries_of(&mut con, &keys.outbox, id).await?;
            let queued = queued
                .into_iter()
                .find(|entry| entry.holder.user == *user && entry.holder.key.as_str() == key);
            let stored = store::listings::redemption_of(&self.db, id, user.as_str())
                .await?
                .filter(|row| row.idempotency_key == key);
            return Ok(Some(Lookup {
                user: user.as_str().to_owned(),
                seq: stored
                    .as_ref()
                    .map(|row| i64::from(row.seq))
                    .or(queued.map(|entry| i64::from(entry.seq))),
                stored: stored.is_some(),
                key,
            }));
        }
        Err(GatewayError::Unstable(id))
    }
}
