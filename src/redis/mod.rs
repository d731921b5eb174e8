//! Redis, and the only place that speaks to it: the hot path's one multiplexed connection, the
//! pool for the writers' blocking reads, the key layout, the scripts, the outbox streams, and the
//! reads of a campaign's state. Every command, key and hash field lives here.

pub mod keys;
pub mod marker;
pub mod outbox;
pub mod scripts;
pub mod state;

use std::time::Duration;

use anyhow::{Context, bail};
use redis::{
    AsyncConnectionConfig, Client,
    aio::{ConnectionManager, ConnectionManagerConfig},
};

/// Opens the shared connection: one multiplexed, auto-pipelined connection for every request and
/// every short command, reconnecting by itself after a Redis restart. A pool on the redeem path
/// would halve throughput. Errors never name the URL: it may hold a password.
pub async fn connect_manager(url: &str, timeout: Duration) -> anyhow::Result<ConnectionManager> {
    let client = Client::open(url).context("invalid Redis URL")?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout))
        .set_number_of_retries(2)
        .set_max_delay(timeout);
    Ok(client.get_connection_manager_with_config(config).await?)
}

/// Builds the pool for the writers' blocking reads and their other commands. Connections open
/// lazily.
pub fn connect_pool(
    url: &str,
    size: usize,
    timeout: Duration,
) -> anyhow::Result<deadpool_redis::Pool> {
    let connection = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout));
    let manager =
        deadpool_redis::Manager::new_with_config(url, connection).context("invalid Redis URL")?;
    deadpool_redis::Pool::builder(manager)
        .max_size(size)
        .wait_timeout(Some(timeout))
        .create_timeout(Some(timeout))
        .recycle_timeout(Some(timeout))
        .runtime(deadpool_redis::Runtime::Tokio1)
        .build()
        .context("cannot build the Redis pool")
}

/// Refuses a Redis that may evict keys: an evicted campaign or outbox would lose vouchers.
pub async fn check_no_eviction(con: &mut ConnectionManager) -> anyhow::Result<()> {
    let reply: redis::RedisResult<Vec<String>> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("maxmemory-policy")
        .query_async(con)
        .await;
    match reply {
        Ok(pair) => match pair.get(1).map(String::as_str) {
            Some("noeviction") | None => Ok(()),
            Some(policy) => bail!(
                "Redis runs with maxmemory-policy {policy}: it could evict campaign state or the \
                 outbox; set maxmemory-policy noeviction"
            ),
        },
        // Managed Redis services often disable CONFIG; the operator must vouch for the policy.
        Err(error) => {
            tracing::warn!(%error, "cannot read Redis maxmemory-policy; it must be noeviction");
            Ok(())
        }
    }
}

/// The error for a reply of a shape `source` never gives: a bug or a foreign writer, not an
/// outage.
pub(crate) fn unexpected_reply(source: &str, reply: impl std::fmt::Display) -> redis::RedisError {
    redis::RedisError::from((
        redis::ErrorKind::Client,
        "unexpected reply",
        format!("{source} returned {reply}"),
    ))
}
