//! The marker: a key written once into each shard's slot and recorded in PostgreSQL. A shard
//! that lacks it while PostgreSQL remembers one came back without its data (its Redis restarted
//! without persistence, was flushed or replaced, or a cluster master lost its data alone): the
//! redemptions it acknowledged but had not yet handed to PostgreSQL are lost. That is logged
//! loudly and recorded for reconcile to report.

use redis::AsyncCommands;
use sqlx::PgPool;
use time::{OffsetDateTime, format_description::well_known::Rfc3339};
use uuid::Uuid;

use super::keys::ShardKeys;
use crate::store;

/// The setting in PostgreSQL of when Redis was last found without its data.
pub const LOST_SETTING: &str = "redis_data_lost_at";

/// The setting in PostgreSQL of the marker last seen in a shard.
fn seen_setting(shard: &ShardKeys) -> String {
    format!("redis_marker/{}", shard.shard)
}

/// Checks the shard's marker, writing one where there is none. Returns whether the shard was
/// found without its data.
pub async fn check(
    con: &mut impl AsyncCommands,
    db: &PgPool,
    shard: &ShardKeys,
) -> anyhow::Result<bool> {
    let setting = seen_setting(shard);
    let seen = store::setting(db, &setting).await?;
    let current: Option<String> = con.get(&shard.marker).await?;
    if let Some(current) = current {
        if seen.as_deref() == Some(current.as_str()) {
            return Ok(false);
        }
        store::record_setting(db, &setting, &current).await?;
        // Another marker than the one recorded: a Redis that lost its data, re-marked by a
        // process that stopped before it could report it, or another Redis altogether.
        return match seen {
            Some(_) => report_loss(db, shard).await.map(|()| true),
            None => Ok(false),
        };
    }
    let marker = Uuid::new_v4().to_string();
    let written: bool = redis::cmd("SET")
        .arg(&shard.marker)
        .arg(&marker)
        .arg("NX")
        .query_async::<Option<String>>(con)
        .await?
        .is_some();
    if !written {
        // Another gateway marked it first and does the reporting.
        return Ok(false);
    }
    store::record_setting(db, &setting, &marker).await?;
    if seen.is_none() {
        return Ok(false);
    }
    report_loss(db, shard).await?;
    Ok(true)
}

async fn report_loss(db: &PgPool, shard: &ShardKeys) -> anyhow::Result<()> {
    let now = OffsetDateTime::now_utc().format(&Rfc3339)?;
    store::record_setting(db, LOST_SETTING, &now).await?;
    tracing::error!(
        shard = shard.shard,
        "Redis came back without its data: redemptions it acknowledged but had not handed to \
         PostgreSQL are lost; campaigns reload from PostgreSQL; run `voucher-gateway reconcile`"
    );
    Ok(())
}
