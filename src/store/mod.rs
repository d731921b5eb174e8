//! PostgreSQL, the system of record: connecting, migrating, and the typed queries of each table.
//! The gateway, the writer and reconcile call these functions; no SQL lives anywhere else.

/// A struct read from a query's row, whose fields are named as the query's columns: it implements
/// `FromRow`. sqlx's derive would bring its macro crate, which builds a second PostgreSQL driver
/// for the compiler to run.
macro_rules! row {
    (
        $(#[$meta:meta])*
        pub struct $row:ident { $($(#[$field_meta:meta])* pub $field:ident: $type:ty),+ $(,)? }
    ) => {
        $(#[$meta])*
        pub struct $row { $($(#[$field_meta])* pub $field: $type),+ }

        impl<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow> for $row {
            fn from_row(row: &'r sqlx::postgres::PgRow) -> Result<Self, sqlx::Error> {
                use sqlx::Row;
                Ok(Self {
                    $($field: row.try_get(stringify!($field))?),+
                })
            }
        }
    };
}

mod campaigns;
pub mod listings;
mod migrations;
pub mod reconcile;
mod redemptions;

use std::time::Duration;

use sqlx::{
    PgPool, Postgres,
    migrate::MigrateDatabase,
    postgres::{PgConnectOptions, PgPoolOptions},
};

pub use campaigns::{
    CampaignRow, HOLDERS_CHUNK, HolderPages, campaign_exists, close_campaign, insert_campaign,
    select_campaign,
};
pub use migrations::{migrate, pending_migrations};
pub use redemptions::{BatchSummary, fates, store_batch};

use time::OffsetDateTime;

use crate::domain::{Holder, Timestamp, Window};

/// Whether PostgreSQL refused for good what it was given, rather than failing for now: an error
/// that only the entries' own values can cause. Such an error follows the entries, so retrying
/// them is pointless. Everything else is retried: a lost or refused connection, a timeout, a
/// serialization failure or deadlock, too many connections, a server shutting down, and errors
/// of the environment that every entry would meet (a missing table, a `NOT NULL` column or a
/// check a migration added): dead-lettering every entry for those would empty the outbox.
pub fn refuses_for_good(error: &sqlx::Error) -> bool {
    let sqlx::Error::Database(db) = error else {
        return false;
    };
    match db.code().as_deref() {
        // character_not_in_repertoire (a NUL byte), untranslatable_character,
        // numeric_value_out_of_range, invalid_datetime_format, datetime_field_overflow,
        // invalid_text_representation.
        Some("22021" | "22P05" | "22003" | "22007" | "22008" | "22P02") => true,
        // check_violation, of the voucher number's own check only.
        Some("23514") => db.constraint() == Some("redemptions_seq_positive"),
        _ => false,
    }
}

/// A sale window as stored (the table's check keeps the end after the start).
fn window(starts_at: Option<OffsetDateTime>, ends_at: Option<OffsetDateTime>) -> Window {
    Window {
        starts_at: starts_at.map(Timestamp::from),
        ends_at: ends_at.map(Timestamp::from),
    }
}

/// A holder as stored; a row that breaks the domain's rules was written by someone else.
fn holder(user: &str, key: &str) -> Result<Holder, sqlx::Error> {
    Holder::parse(user, key).map_err(|error| sqlx::Error::Decode(Box::new(error)))
}

/// Connects a pool. `statement_timeout` bounds every query on the server side too.
pub async fn connect(
    url: &str,
    max_connections: u32,
    timeout: Duration,
) -> Result<PgPool, sqlx::Error> {
    let options: PgConnectOptions = url.parse()?;
    let statement_timeout = timeout.as_millis().to_string();
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(timeout)
        .connect_with(options.options([("statement_timeout", statement_timeout.as_str())]))
        .await
}

/// Creates the database named in `url` when it is missing (a fresh machine).
pub async fn create_database_if_missing(url: &str) -> Result<(), sqlx::Error> {
    if !Postgres::database_exists(url).await? {
        Postgres::create_database(url).await.or_else(|error| {
            // Another process may have created it between the two calls.
            match &error {
                // 42P04 duplicate_database, or 23505 when both raced inside the catalog.
                sqlx::Error::Database(db)
                    if matches!(db.code().as_deref(), Some("42P04" | "23505")) =>
                {
                    Ok(())
                }
                _ => Err(error),
            }
        })?;
    }
    Ok(())
}

/// Records the shard count on first use and returns the one recorded: every gateway must use it.
pub async fn recorded_shards(pool: &PgPool, configured: u16) -> Result<u16, sqlx::Error> {
    sqlx::query(
        "insert into gateway_settings (name, value) values ('shards', $1) on conflict do nothing",
    )
    .bind(configured.to_string())
    .execute(pool)
    .await?;
    let value = setting(pool, "shards").await?.unwrap_or_default();
    value.parse().map_err(|_| {
        sqlx::Error::Protocol(format!("gateway_settings.shards is not a number: {value}"))
    })
}

/// One value of `gateway_settings`.
pub async fn setting(pool: &PgPool, name: &str) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar("select value from gateway_settings where name = $1")
        .bind(name)
        .fetch_optional(pool)
        .await
}

/// Sets one value of `gateway_settings`.
pub async fn record_setting(pool: &PgPool, name: &str, value: &str) -> Result<(), sqlx::Error> {
    sqlx::query(
        "insert into gateway_settings (name, value) values ($1, $2)
         on conflict (name) do update set value = excluded.value",
    )
    .bind(name)
    .bind(value)
    .execute(pool)
    .await?;
    Ok(())
}
