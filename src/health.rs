//! Readiness: whether this process can do its work now. Redis and PostgreSQL answer, every
//! migration is applied, every shard has a live writer loop here (when this process writes), and
//! the outbox writers keep up (the oldest unwritten entry is younger than a bound). The same
//! outbox figures feed `/metrics`. Both are computed at most once a second and shared by every
//! caller meanwhile, so a flood of probes costs Redis and PostgreSQL nothing more.

use std::{sync::Arc, time::Duration};

use crate::redis::Connection;
use serde::Serialize;
use sqlx::PgPool;

use crate::{
    memo::Memo,
    redis::{
        keys::Shards,
        scripts::{self, OutboxStats},
    },
    store,
    supervise::Liveness,
};

/// Longest wait for any one check: a probe must answer even when a server hangs.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);
/// How long one reading of the checks and of the outbox figures serves every caller.
const SHARED_FOR: Duration = Duration::from_secs(1);

/// Every shard's outbox figures in shard order, or why they could not be read.
pub type OutboxFigures = Result<Arc<Vec<OutboxStats>>, String>;
const OK: &str = "ok";
const OFF: &str = "off";

pub struct Probe {
    redis: Connection,
    db: PgPool,
    shards: Shards,
    max_lag: Duration,
    /// The writer loops of this process; `None` when it runs none.
    writers: Option<Arc<Liveness>>,
    readiness: Memo<Readiness>,
    figures: Memo<OutboxFigures>,
}

/// The answer of `GET /ready`: each check is "ok" or says what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Readiness {
    /// `ready` or `unavailable`.
    pub status: &'static str,
    pub checks: Checks,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Checks {
    pub redis: String,
    pub postgres: String,
    pub migrations: String,
    /// "ok", "off" (this process runs no writers), or the shards without a live writer loop.
    pub writers: String,
    pub outbox: String,
}

impl Readiness {
    pub fn is_ready(&self) -> bool {
        self.status == "ready"
    }
}

impl Probe {
    pub fn new(
        redis: Connection,
        db: PgPool,
        shards: Shards,
        max_lag: Duration,
        writers: Option<Arc<Liveness>>,
    ) -> Self {
        Self {
            redis,
            db,
            shards,
            max_lag,
            writers,
            readiness: Memo::new(SHARED_FOR),
            figures: Memo::new(SHARED_FOR),
        }
    }

    pub fn shards(&self) -> &Shards {
        &self.shards
    }

    /// Every shard's outbox figures, read at most once a second.
    pub async fn outbox_stats(&self) -> OutboxFigures {
        self.figures.get(self.read_outbox_stats()).await
    }

    async fn read_outbox_stats(&self) -> OutboxFigures {
        let stats = futures_util::future::try_join_all(self.shards.outboxes().map(|outbox| {
            let mut con = self.redis.clone();
            async move { scripts::outbox_stats(&mut con, &outbox).await }
        }));
        // On a cluster, a master holding no shard must answer as well.
        let mut con = self.redis.clone();
        let read =
            async { futures_util::try_join!(con.ping_every_master(), stats).map(|(_, all)| all) };
        match tokio::time::timeout(CHECK_TIMEOUT, read).await {
            Ok(Ok(all)) => Ok(Arc::new(all)),
            Ok(Err(error)) => Err(error.to_string()),
            Err(_) => Err(format!("no answer within {CHECK_TIMEOUT:?}")),
        }
    }

    /// Every check, run at most once a second.
    pub async fn readiness(&self) -> Readiness {
        self.readiness.get(self.check()).await
    }

    async fn check(&self) -> Readiness {
        let (outbox, (postgres, migrations)) = tokio::join!(self.outbox_check(), self.db_checks());
        let (redis, outbox) = outbox;
        let writers = self.writers_check();
        let ready = [&redis, &postgres, &migrations, &outbox]
            .iter()
            .all(|check| *check == OK)
            && (writers == OK || writers == OFF);
        let checks = Checks {
            redis,
            postgres,
            migrations,
            writers,
            outbox,
        };
        Readiness {
            status: if ready { "ready" } else { "unavailable" },
            checks,
        }
    }

    fn writers_check(&self) -> String {
        let Some(liveness) = &self.writers else {
            return OFF.to_owned();
        };
        match &liveness.without_writer()[..] {
            [] => OK.to_owned(),
            dead => format!("no live writer in this process for shards {dead:?}"),
        }
    }

    /// (redis, outbox): reading the outbox figures is the Redis check.
    async fn outbox_check(&self) -> (String, String) {
        match self.outbox_stats().await {
            Ok(stats) => {
                let lag = stats.iter().filter_map(|s| s.lag).max().unwrap_or_default();
                let outbox = if lag > self.max_lag {
                    format!(
                        "the oldest unwritten redemption is {:.1} s old (bound {:?})",
                        lag.as_secs_f64(),
                        self.max_lag
                    )
                } else {
                    OK.to_owned()
                };
                (OK.to_owned(), outbox)
            }
            Err(error) => (
                format!("unreachable: {error}"),
                "unknown: Redis is unreachable".to_owned(),
            ),
        }
    }

    /// (postgres, migrations): reading the applied migrations is the PostgreSQL check.
    async fn db_checks(&self) -> (String, String) {
        let pending = tokio::time::timeout(CHECK_TIMEOUT, store::pending_migrations(&self.db))
            .await
            .map_err(|_| format!("no answer within {CHECK_TIMEOUT:?}"))
            .and_then(|read| read.map_err(|error| format!("unreachable: {error}")));
        match pending {
            Ok(pending) if pending.is_empty() => (OK.to_owned(), OK.to_owned()),
            Ok(pending) => (
                OK.to_owned(),
                format!("not applied: {pending:?}; run `voucher-gateway migrate`"),
            ),
            Err(reason) => (reason, "unknown: PostgreSQL is unreachable".to_owned()),
        }
    }
}
