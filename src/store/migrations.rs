//! The schema's migrations, embedded in the binary so that it migrates without its source tree.
//! They are listed here rather than found by sqlx's `migrate!`, whose macro crate would build a
//! second PostgreSQL driver for the compiler to run; a test checks the list against `migrations/`.

use std::borrow::Cow;

use futures_util::future::BoxFuture;
use sqlx::{
    PgPool,
    error::BoxDynError,
    migrate::{MigrateError, Migration, MigrationSource, MigrationType, Migrator},
};

/// A migration's file name without `.sql`, and its SQL.
macro_rules! embed {
    ($($name:literal),+ $(,)?) => {
        [$(($name, include_str!(concat!("../../migrations/", $name, ".sql")))),+]
    };
}

const MIGRATIONS: [(&str, &str); 5] = embed![
    "0001_campaigns",
    "0002_lost_redemptions",
    "0003_redemptions_without_fk_trigger",
    "0004_sale_windows",
    "0005_campaigns_newest_first",
];

/// The embedded migrations, read as sqlx reads a directory: `VERSION_DESCRIPTION.sql`, run in a
/// transaction unless the file starts with `-- no-transaction`.
#[derive(Debug)]
struct Embedded;

impl<'s> MigrationSource<'s> for Embedded {
    fn resolve(self) -> BoxFuture<'s, Result<Vec<Migration>, BoxDynError>> {
        Box::pin(async { Ok(MIGRATIONS.iter().map(migration).collect()) })
    }
}

fn migration(&(name, sql): &(&'static str, &'static str)) -> Migration {
    let (version, description) = name.split_once('_').expect("VERSION_DESCRIPTION");
    Migration::new(
        version.parse().expect("a numeric version"),
        Cow::Owned(description.replace('_', " ")),
        MigrationType::Simple,
        Cow::Borrowed(sql),
        sql.starts_with("-- no-transaction"),
    )
}

/// Applies pending migrations (concurrent gateways serialise on sqlx's advisory lock).
pub async fn migrate(pool: &PgPool) -> Result<(), MigrateError> {
    Migrator::new(Embedded).await?.run(pool).await
}

/// The versions of the migrations this build has that the database has not applied.
pub async fn pending_migrations(pool: &PgPool) -> Result<Vec<i64>, sqlx::Error> {
    let applied: Vec<i64> =
        sqlx::query_scalar("select version from _sqlx_migrations where success")
            .fetch_all(pool)
            .await
            .or_else(|error| match &error {
                // 42P01 undefined_table: nothing was ever migrated.
                sqlx::Error::Database(db) if db.code().as_deref() == Some("42P01") => {
                    Ok(Vec::new())
                }
                _ => Err(error),
            })?;
    Ok(MIGRATIONS
        .iter()
        .map(|embedded| migration(embedded).version)
        .filter(|version| !applied.contains(version))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_file_of_the_migrations_directory_is_embedded_in_order() {
        let directory = concat!(env!("CARGO_MANIFEST_DIR"), "/migrations");
        let mut files: Vec<String> = std::fs::read_dir(directory)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().into_string().unwrap())
            .collect();
        files.sort();
        let embedded: Vec<String> = MIGRATIONS
            .iter()
            .map(|(name, _)| format!("{name}.sql"))
            .collect();
        assert_eq!(embedded, files);
        let versions: Vec<i64> = MIGRATIONS.iter().map(|m| migration(m).version).collect();
        assert_eq!(versions, [1, 2, 3, 4, 5]);
        assert_eq!(migration(&MIGRATIONS[0]).description, "campaigns");
    }
}
