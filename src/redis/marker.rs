//! The marker: a key written once into a Redis dataset and recorded in PostgreSQL. A Redis that
//! lacks it while PostgreSQL remembers one came back without its data (restarted without
//! persistence, flushed, or replaced): the redemptions it acknowledged but had not yet handed to
//! PostgreSQL are lost. That is logged loudly and recorded for reconcile to report.

use redis::AsyncCommands;
use sqlx::PgPool;
use time::{OffsetDateTime, format_description::well_known::Rfc3339};
use uuid::Uuid;

use crate::store;

const MARKER: &str = "vg:marker";
/// Settings in PostgreSQL: the marker last seen, and when Redis was last found without its data.
pub const SEEN_SETTING: &str = "redis_marker";
pub const LOST_SETTING: &str = "redis_data_lost_at";

/// Checks the marker, writing one into a Redis that has none. Returns whether Redis was found
/// without its data.
pub async fn check(con: &mut impl AsyncCommands, db: &PgPool) -> anyhow::Result<bool> {
    let seen = store::setting(db, SEEN_SETTING).await?;
    let current: Option<String> = con.get(MARKER).await?;
    if let Some(current) = current {
        if seen.as_deref() == Some(current.as_str()) {
            return Ok(false);
        }
        store::record_setting(db, SEEN_SETTING, &current).await?;
        // Another marker than the one recorded: a Redis that lost its data, re-marked by a
        // process that stopped before it could report it, or another Redis altogether.
        return match seen {
            Some(_) => report_loss(db).await.map(|()| true),
            None => Ok(false),
        };
    }
    let marker = Uuid::new_v4().to_string();
    let written: bool = redis::cmd("SET")
        .arg(MARKER)
        .arg(&marker)
        .arg("NX")
        .query_async::<Option<String>>(con)
        .await?
        .is_some();
    if !written {
        // Another gateway marked it first and does the reporting.
        return Ok(false);
    }
    store::record_setting(db, SEEN_SETTING, &marker).await?;
    if seen.is_none() {
        return Ok(false);
    }
    report_loss(db).await?;
    Ok(true)
}

async fn report_loss(db: &PgPool) -> anyhow::Result<()> {
    let now = OffsetDateTime::now_utc().format(&Rfc3339)?;
    store::record_setting(db, LOST_SETTING, &now).await?;
    tracing::error!(
        "Redis came back without its data: redemptions it acknowledged but had not handed to \
         PostgreSQL are lost; campaigns reload from PostgreSQL; run `voucher-gateway reconcile`"
    );
    Ok(())
}
