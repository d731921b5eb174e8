//! Repairing one campaign: PostgreSQL wins where it holds a redemption; what only Redis holds is
//! written through the outbox writer's own transaction (so PostgreSQL's constraints decide it);
//! then Redis is set to agree in one atomic script. Running it again changes nothing.

use std::collections::HashSet;

use time::OffsetDateTime;

use super::compare::{CampaignReport, Drift, RepairSummary, Sides};
use crate::{
    domain::{CampaignId, OutboxEntry},
    redis::scripts::{self, RedisRepair},
    store::{self, reconcile as stored},
};

impl Sides {
    /// Repairs a campaign whose report shows differences; returns the report afterwards.
    pub async fn repair(&self, found: CampaignReport) -> anyhow::Result<CampaignReport> {
        let id = found.id;
        let mut summary = RepairSummary::default();
        let mut report = found;

        if !report.lost_from_outbox.is_empty() {
            (summary.written_to_postgres, summary.refused_by_postgres) =
                self.write_lost_holders(&report).await?;
            report = self.fresh(id).await?;
        }

        let window = report.agreed_window();
        let window_drifted = report
            .drift
            .iter()
            .any(|d| matches!(d, Drift::Window { .. }));
        if let Some(ends) = window
            .and_then(|window| window.ends_at)
            .filter(|_| window_drifted)
        {
            // Redis ended earlier (a close cut short before PostgreSQL): PostgreSQL follows.
            store::close_campaign(&self.db, id, ends).await?;
        }
        if let Some(window) = window {
            let corrected: HashSet<_> = report
                .missing_in_redis
                .iter()
                .map(|m| &m.holder.user)
                .collect();
            let repair = RedisRepair {
                total: report.total,
                last_seq: report.postgres.last_seq,
                window,
                set: report
                    .missing_in_redis
                    .iter()
                    .map(|m| m.holder.clone())
                    .collect(),
                // A refused user whose PostgreSQL row has another key is corrected by `set`.
                remove: report
                    .rejected
                    .iter()
                    .filter(|r| r.still_in_redis && !corrected.contains(&r.holder.user))
                    .map(|r| r.holder.clone())
                    .collect(),
            };
            let keys = self.shards.campaign(id);
            let mut con = self.redis.clone();
            if scripts::repair(&mut con, &keys, &repair).await?.is_some() {
                summary.set_in_redis = repair.set.len();
                summary.removed_from_redis = repair.remove.len();
            }
        }

        if report
            .drift
            .iter()
            .any(|d| matches!(d, Drift::RedeemedCounter { .. }))
        {
            stored::recount_redeemed(&self.db, id).await?;
            summary.redeemed_recounted = true;
        }
        if !report.lost_acks.new.is_empty() {
            stored::record_lost(&self.db, id, &report.lost_acks.new).await?;
            summary.lost_recorded = report.lost_acks.new.len();
        }

        let mut after = self.fresh(id).await?;
        after.repaired = Some(summary);
        Ok(after)
    }

    /// Stores the holders only Redis has, numbered from Redis's own counter so that no number is
    /// given twice; PostgreSQL refuses them when it has no room. Returns (inserted, refused).
    async fn write_lost_holders(&self, report: &CampaignReport) -> anyhow::Result<(u64, u64)> {
        let keys = self.shards.campaign(report.id);
        let mut con = self.redis.clone();
        let count = report.lost_from_outbox.len();
        let Some(last) = scripts::reserve_seqs(&mut con, &keys, count).await? else {
            // Unloaded meanwhile: hydration will load exactly what PostgreSQL holds.
            return Ok((0, 0));
        };
        let now = OffsetDateTime::now_utc();
        let entries: Vec<OutboxEntry> = report
            .lost_from_outbox
            .iter()
            .zip(last - count as i64 + 1..)
            .map(|(holder, seq)| {
                Ok(OutboxEntry {
                    id: String::new(),
                    campaign: report.id,
                    holder: holder.clone(),
                    seq: i32::try_from(seq)?,
                    at: now,
                })
            })
            .collect::<anyhow::Result<_>>()?;
        let (mut inserted, mut refused) = (0, 0);
        for batch in entries.chunks(store::HOLDERS_CHUNK as usize) {
            let stored = store::store_batch(&self.db, batch).await?;
            inserted += stored.inserted;
            refused += stored.rejected.len() as u64;
        }
        Ok((inserted, refused))
    }

    async fn fresh(&self, id: CampaignId) -> anyhow::Result<CampaignReport> {
        self.compare(id)
            .await?
            .ok_or_else(|| anyhow::anyhow!("campaign {id} vanished from PostgreSQL"))
    }
}
