//! The queries of `voucher-gateway reconcile`: PostgreSQL's side of a campaign, read in bounded
//! pieces, and the repairs that make PostgreSQL's own counters agree with its rows.

use std::collections::HashSet;

use sqlx::PgPool;
use uuid::Uuid;

use super::campaigns::LAST_SEQ;
use crate::domain::{CampaignId, Holder, UserId, Window};

/// How many campaigns one page of the campaign list holds.
const CAMPAIGN_PAGE: i64 = 500;

row! {
    /// A campaign's counters as PostgreSQL holds them, read in one statement (one snapshot).
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct StoredCounts {
        pub name: String,
        pub total: i32,
        /// `campaigns.redeemed`, the writer's counter.
        pub redeemed: i32,
        /// The rows of `redemptions`.
        pub rows: i64,
        /// The highest voucher number stored or refused.
        pub last_seq: i64,
        /// Voucher numbers already recorded as lost.
        pub recorded_lost: i64,
        pub starts_at: Option<time::OffsetDateTime>,
        pub ends_at: Option<time::OffsetDateTime>,
    }
}

impl StoredCounts {
    pub fn window(&self) -> Window {
        super::window(self.starts_at, self.ends_at)
    }
}

/// One entry PostgreSQL refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    pub holder: Holder,
    pub seq: i32,
    pub reason: String,
}

/// One page of campaign ids in id order, after `after`.
pub async fn campaign_ids_after(
    pool: &PgPool,
    after: Option<CampaignId>,
) -> Result<Vec<CampaignId>, sqlx::Error> {
    let ids: Vec<Uuid> = sqlx::query_scalar(
        "select id from campaigns where ($1::uuid is null or id > $1) order by id limit $2",
    )
    .bind(after.map(|id| id.as_uuid()))
    .bind(CAMPAIGN_PAGE)
    .fetch_all(pool)
    .await?;
    Ok(ids.into_iter().map(CampaignId::from).collect())
}

pub async fn count_campaigns(pool: &PgPool) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("select count(*) from campaigns")
        .fetch_one(pool)
        .await
}

pub async fn stored_counts(
    pool: &PgPool,
    id: CampaignId,
) -> Result<Option<StoredCounts>, sqlx::Error> {
    sqlx::query_as(&format!(
        "select name, total, redeemed,
                (select count(*) from redemptions where campaign_id = $1) as rows,
                {LAST_SEQ} as last_seq,
                (select count(*) from lost_redemptions where campaign_id = $1) as recorded_lost,
                starts_at, ends_at
         from campaigns where id = $1"
    ))
    .bind(id.as_uuid())
    .fetch_optional(pool)
    .await
}

/// Those of `users` who hold a voucher of the campaign in PostgreSQL (their user ids).
pub async fn holders_among<'a>(
    pool: &PgPool,
    id: CampaignId,
    users: impl Iterator<Item = &'a UserId>,
) -> Result<HashSet<String>, sqlx::Error> {
    let users: Vec<&str> = users.map(UserId::as_str).collect();
    let holders: Vec<String> = sqlx::query_scalar(
        "select user_id from redemptions where campaign_id = $1 and user_id = any($2)",
    )
    .bind(id.as_uuid())
    .bind(users)
    .fetch_all(pool)
    .await?;
    Ok(holders.into_iter().collect())
}

/// Every refused entry of a campaign, in the order they were refused.
pub async fn rejected(pool: &PgPool, id: CampaignId) -> Result<Vec<Rejected>, sqlx::Error> {
    let rows: Vec<(String, String, i32, String)> = sqlx::query_as(
        "select user_id, idempotency_key, seq, reason from rejected_redemptions
         where campaign_id = $1 order by rejected_at, user_id",
    )
    .bind(id.as_uuid())
    .fetch_all(pool)
    .await?;
    rows.into_iter()
        .map(|(user, key, seq, reason)| {
            Ok(Rejected {
                holder: super::holder(&user, &key)?,
                seq,
                reason,
            })
        })
        .collect()
}

/// Voucher numbers up to `last_seq` that no redemption, refusal, queued entry (`queued`) or
/// earlier record accounts for: acknowledged, then lost with Redis's data.
pub async fn unaccounted_seqs(
    pool: &PgPool,
    id: CampaignId,
    last_seq: i64,
    queued: &[i32],
) -> Result<Vec<i32>, sqlx::Error> {
    sqlx::query_scalar(
        "select s::int from generate_series(1, $2::int) as s
         where s <> all($3)
           and not exists (select 1 from redemptions where campaign_id = $1 and seq = s)
           and not exists (select 1 from rejected_redemptions where campaign_id = $1 and seq = s)
           and not exists (select 1 from lost_redemptions where campaign_id = $1 and seq = s)
         order by s",
    )
    .bind(id.as_uuid())
    .bind(last_seq)
    .bind(queued)
    .fetch_all(pool)
    .await
}

pub async fn record_lost(pool: &PgPool, id: CampaignId, seqs: &[i32]) -> Result<(), sqlx::Error> {
    sqlx::query(
        "insert into lost_redemptions (campaign_id, seq)
         select $1, s from unnest($2::int[]) as s on conflict do nothing",
    )
    .bind(id.as_uuid())
    .bind(seqs)
    .execute(pool)
    .await?;
    Ok(())
}

/// Sets `campaigns.redeemed` to the campaign's row count. The row lock is taken first, so the
/// count that follows sees every batch a writer committed before it.
pub async fn recount_redeemed(pool: &PgPool, id: CampaignId) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query("select 1 from campaigns where id = $1 for update")
        .bind(id.as_uuid())
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "update campaigns set redeemed = (select count(*) from redemptions where campaign_id = $1)
         where id = $1",
    )
    .bind(id.as_uuid())
    .execute(&mut *tx)
    .await?;
    tx.commit().await
}
