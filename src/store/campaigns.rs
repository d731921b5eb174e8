//! The campaigns table, and a campaign's holders read page by page.

use sqlx::PgPool;
use time::OffsetDateTime;

use crate::domain::{CampaignId, CampaignName, Holder, Timestamp, Total, Window};

row! {
    /// A campaign as hydration needs it from PostgreSQL.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct CampaignRow {
        pub name: String,
        pub total: i32,
        /// The highest voucher number PostgreSQL has seen, stored or refused.
        pub last_seq: i64,
        pub starts_at: Option<OffsetDateTime>,
        pub ends_at: Option<OffsetDateTime>,
    }
}

impl CampaignRow {
    pub fn window(&self) -> Window {
        super::window(self.starts_at, self.ends_at)
    }
}

/// The highest voucher number PostgreSQL has seen for campaign `$1`, stored or refused.
pub(super) const LAST_SEQ: &str = "greatest(
        (select max(seq) from redemptions where campaign_id = $1),
        (select max(seq) from rejected_redemptions where campaign_id = $1),
        0
    )::bigint";

/// How many holders one page holds, when reading or loading them.
pub const HOLDERS_CHUNK: i64 = 1_000;

pub async fn insert_campaign(
    pool: &PgPool,
    id: CampaignId,
    name: &CampaignName,
    total: Total,
    window: Window,
) -> Result<CampaignRow, sqlx::Error> {
    sqlx::query_as(
        "insert into campaigns (id, name, total, starts_at, ends_at) values ($1, $2, $3, $4, $5)
         returning name, total, 0::bigint as last_seq, starts_at, ends_at",
    )
    .bind(id.as_uuid())
    .bind(name.as_str())
    .bind(total.get())
    .bind(window.starts_at.map(|at| at.datetime()))
    .bind(window.ends_at.map(|at| at.datetime()))
    .fetch_one(pool)
    .await
}

/// Ends a campaign's window at `at` unless it ended before; a start after it moves to it (the
/// window is then empty). Returns whether PostgreSQL knows the campaign.
pub async fn close_campaign(
    pool: &PgPool,
    id: CampaignId,
    at: Timestamp,
) -> Result<bool, sqlx::Error> {
    let closed = sqlx::query(
        "update campaigns
         set ends_at = least(ends_at, $2),
             starts_at = case when starts_at > $2 then $2 else starts_at end
         where id = $1",
    )
    .bind(id.as_uuid())
    .bind(at.datetime())
    .execute(pool)
    .await?;
    Ok(closed.rows_affected() == 1)
}

/// Whether PostgreSQL knows the campaign: one primary-key lookup.
pub async fn campaign_exists(pool: &PgPool, id: CampaignId) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("select exists (select 1 from campaigns where id = $1)")
        .bind(id.as_uuid())
        .fetch_one(pool)
        .await
}

pub async fn select_campaign(
    pool: &PgPool,
    id: CampaignId,
) -> Result<Option<CampaignRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "select name, total, {LAST_SEQ} as last_seq, starts_at, ends_at from campaigns where id = $1"
    ))
    .bind(id.as_uuid())
    .fetch_optional(pool)
    .await
}

/// A campaign's holders in PostgreSQL, page by page in user order: keyset paging on the primary
/// key, so a million holders are never in memory at once.
pub struct HolderPages<'a> {
    db: &'a PgPool,
    id: CampaignId,
    after: Option<String>,
    done: bool,
}

impl<'a> HolderPages<'a> {
    pub fn new(db: &'a PgPool, id: CampaignId) -> Self {
        Self {
            db,
            id,
            after: None,
            done: false,
        }
    }

    /// The next page of up to `HOLDERS_CHUNK` holders; `None` after the last.
    pub async fn next(&mut self) -> Result<Option<Vec<Holder>>, sqlx::Error> {
        if self.done {
            return Ok(None);
        }
        let rows: Vec<(String, String)> = sqlx::query_as(
            "select user_id, idempotency_key from redemptions
             where campaign_id = $1 and ($2::text is null or user_id > $2)
             order by user_id limit $3",
        )
        .bind(self.id.as_uuid())
        .bind(self.after.as_deref())
        .bind(HOLDERS_CHUNK)
        .fetch_all(self.db)
        .await?;
        self.done = rows.len() < HOLDERS_CHUNK as usize;
        let Some((last, _)) = rows.last() else {
            return Ok(None);
        };
        self.after = Some(last.clone());
        rows.iter()
            .map(|(user, key)| super::holder(user, key))
            .collect::<Result<_, _>>()
            .map(Some)
    }
}
