use sqlx::{FromRow, PgPool};
use uuid::Uuid;

use crate::domain::{CampaignId, CampaignName, Total};

/// A campaign as PostgreSQL holds it.
#[derive(Debug, Clone, PartialEq, Eq, FromRow)]
pub struct CampaignRow {
    pub id: Uuid,
    pub name: String,
    pub total: i32,
    pub redeemed: i32,
    /// The highest voucher number PostgreSQL has seen, stored or refused.
    pub last_seq: i64,
}

/// The highest voucher number PostgreSQL has seen for campaign `$1`, stored or refused.
pub(super) const LAST_SEQ: &str = "greatest(
        (select max(seq) from redemptions where campaign_id = $1),
        (select max(seq) from rejected_redemptions where campaign_id = $1),
        0
    )::bigint";

/// How many holders one hydration step reads and loads.
pub const HOLDERS_CHUNK: i64 = 1_000;

pub async fn insert_campaign(
    pool: &PgPool,
    id: CampaignId,
    name: &CampaignName,
    total: Total,
) -> Result<CampaignRow, sqlx::Error> {
    sqlx::query_as(
        "insert into campaigns (id, name, total) values ($1, $2, $3)
         returning id, name, total, redeemed, 0::bigint as last_seq",
    )
    .bind(id.as_uuid())
    .bind(name.as_str())
    .bind(total.get())
    .fetch_one(pool)
    .await
}

pub async fn select_campaign(
    pool: &PgPool,
    id: CampaignId,
) -> Result<Option<CampaignRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "select id, name, total, redeemed, {LAST_SEQ} as last_seq from campaigns where id = $1"
    ))
    .bind(id.as_uuid())
    .fetch_optional(pool)
    .await
}

/// One page of a campaign's holders (userId, idempotencyKey) in user order, after `after_user`;
/// keyset paging on the primary key, so a million holders never load at once.
pub async fn holders_after(
    pool: &PgPool,
    id: CampaignId,
    after_user: Option<&str>,
) -> Result<Vec<(String, String)>, sqlx::Error> {
    sqlx::query_as(
        "select user_id, idempotency_key from redemptions
         where campaign_id = $1 and ($2::text is null or user_id > $2)
         order by user_id limit $3",
    )
    .bind(id.as_uuid())
    .bind(after_user)
    .bind(HOLDERS_CHUNK)
    .fetch_all(pool)
    .await
}
