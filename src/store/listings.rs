//! The listings: campaigns newest first and a campaign's redemptions in voucher-number order,
//! both by keyset (never OFFSET, so a page deep in a million rows costs what the first does),
//! and one user's stored redemption.

use sqlx::PgPool;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::domain::CampaignId;

row! {
    /// A campaign as PostgreSQL lists it.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct ListedCampaign {
        pub id: Uuid,
        pub name: String,
        pub total: i32,
        /// Redemptions stored (Redis may have answered more).
        pub redeemed: i32,
        pub created_at: OffsetDateTime,
        pub starts_at: Option<OffsetDateTime>,
        pub ends_at: Option<OffsetDateTime>,
    }
}

/// Up to `limit` campaigns created before `after` (a listed campaign's creation and id), newest
/// first.
pub async fn campaigns(
    pool: &PgPool,
    after: Option<(OffsetDateTime, Uuid)>,
    limit: i64,
) -> Result<Vec<ListedCampaign>, sqlx::Error> {
    sqlx::query_as(
        "select id, name, total, redeemed, created_at, starts_at, ends_at from campaigns
         where $1::timestamptz is null or (created_at, id) < ($1, $2)
         order by created_at desc, id desc limit $3",
    )
    .bind(after.map(|(at, _)| at))
    .bind(after.map(|(_, id)| id))
    .bind(limit)
    .fetch_all(pool)
    .await
}

row! {
    /// A stored redemption.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct StoredRedemption {
        pub user_id: String,
        pub idempotency_key: String,
        pub seq: i32,
        pub redeemed_at: OffsetDateTime,
    }
}

/// Up to `limit` of a campaign's stored redemptions numbered above `after`, in number order.
pub async fn redemptions(
    pool: &PgPool,
    campaign: CampaignId,
    after: i32,
    limit: i64,
) -> Result<Vec<StoredRedemption>, sqlx::Error> {
    sqlx::query_as(
        "select user_id, idempotency_key, seq, redeemed_at from redemptions
         where campaign_id = $1 and seq > $2 order by seq limit $3",
    )
    .bind(campaign.as_uuid())
    .bind(after)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// The user's stored redemption of a campaign.
pub async fn redemption_of(
    pool: &PgPool,
    campaign: CampaignId,
    user: &str,
) -> Result<Option<StoredRedemption>, sqlx::Error> {
    sqlx::query_as(
        "select user_id, idempotency_key, seq, redeemed_at from redemptions
         where campaign_id = $1 and user_id = $2",
    )
    .bind(campaign.as_uuid())
    .bind(user)
    .fetch_optional(pool)
    .await
}

/// When each of `campaigns`' last stored voucher was granted; a campaign without one is left
/// out. One round trip, one index lookup per campaign.
pub async fn last_redeemed_at(
    pool: &PgPool,
    campaigns: &[CampaignId],
) -> Result<Vec<(Uuid, OffsetDateTime)>, sqlx::Error> {
    let ids: Vec<Uuid> = campaigns.iter().map(CampaignId::as_uuid).collect();
    sqlx::query_as(
        "select campaign.id, last.redeemed_at
         from unnest($1::uuid[]) as campaign (id)
         cross join lateral (
             select redeemed_at from redemptions
             where campaign_id = campaign.id order by seq desc limit 1
         ) as last",
    )
    .bind(ids)
    .fetch_all(pool)
    .await
}
