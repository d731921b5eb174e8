//! Building and running the service: connect, migrate, check the environment, bind, then serve
//! HTTP and run the outbox writers (`VG_WRITER_CONSUMERS` supervised loops per shard) until
//! shutdown, draining both in order. Turns the configuration into each part's settings.

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use anyhow::{Context, bail};
use tokio::{
    net::TcpListener,
    runtime::{self, Runtime},
    time::Instant,
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    config::{AckMode, DatabaseConfig, RedisConfig, ServeConfig},
    gateway::{Durability, Gateway, Persistence, Replication},
    health::Probe,
    http::{
        self, HttpSettings,
        serve::{self, EdgeSettings},
    },
    redis::{self as vg_redis, keys::Shards},
    store,
    supervise::{self, Liveness},
    telemetry,
    writer::{Writer, WriterSettings},
};

/// The async runtime: a single-threaded one for one thread, else one worker per thread.
pub fn runtime(threads: u16) -> std::io::Result<Runtime> {
    let mut builder = if threads <= 1 {
        runtime::Builder::new_current_thread()
    } else {
        let mut builder = runtime::Builder::new_multi_thread();
        builder.worker_threads(threads.into());
        builder
    };
    builder.enable_all().build()
}

pub struct App {
    listener: TcpListener,
    /// The operator's endpoints' own listener, with `VG_OPS_LISTEN`.
    ops_listener: Option<TcpListener>,
    edge: EdgeSettings,
    gateway: Arc<Gateway>,
    probe: Arc<Probe>,
    /// Every writer loop, `VG_WRITER_CONSUMERS` per shard.
    writers: Vec<Arc<Writer>>,
    liveness: Arc<Liveness>,
    config: ServeConfig,
}

/// The most connections open at once by default, whatever the open-file limit.
const DEFAULT_MAX_CONNECTIONS: u64 = 65_536;

/// Connections the operator's own listener takes at once.
const OPS_CONNECTIONS: usize = 256;

/// The HTTP layer's settings.
pub fn http_settings(config: &ServeConfig) -> HttpSettings {
    HttpSettings {
        admin_token: config.admin_token.clone(),
        api_token: config.api_token.clone(),
        concurrency_limit: config.concurrency_limit as usize,
        request_timeout: config.request_timeout,
        body_read_timeout: config.body_read_timeout,
    }
}

/// The HTTP edge's limits. Raises the open-file limit first: the default connection cap follows
/// it.
fn edge_settings(config: &ServeConfig) -> EdgeSettings {
    let files = match serve::raise_file_limit() {
        Ok((soft, hard)) => {
            tracing::info!(soft, hard, "open-file limit");
            soft
        }
        Err(error) => {
            tracing::warn!(%error, "cannot read or raise the open-file limit; assuming 1024");
            1024
        }
    };
    // Room for the pools, the listeners and the log, whatever the connections take; and a
    // bound on the memory slow clients can hold (a head's buffer each) where the file limit
    // is in the millions.
    let reserve = 1024;
    let room = files.saturating_sub(reserve).max(64);
    let max_connections = match config.max_connections {
        None => room.min(DEFAULT_MAX_CONNECTIONS),
        Some(max) if u64::from(max) > room => {
            tracing::warn!(
                max,
                room,
                "VG_MAX_CONNECTIONS is over what the open-file limit leaves; using the latter"
            );
            room
        }
        Some(max) => max.into(),
    } as usize;
    tracing::info!(max_connections, "connection cap");
    EdgeSettings {
        backlog: config.listen_backlog,
        max_connections,
        header_read_timeout: config.header_read_timeout,
        idle_timeout: config.idle_timeout,
        max_head_bytes: config.max_request_head_bytes as usize,
    }
}

/// The writers' settings.
pub fn writer_settings(config: &ServeConfig) -> WriterSettings {
    WriterSettings {
        batch_size: config.writer.writer_batch_size.into(),
        flush_interval: config.writer_flush_interval(),
        claim_idle: config.writer.claim_idle_timeout,
        // A blocked read must end well within the connection's reply timeout.
        block: (config.redis.redis_timeout / 2).min(Duration::from_millis(500)),
        publish_fates: config.ack.mode == AckMode::Postgres,
    }
}

/// The name the writers of this instance read under: `VG_INSTANCE_ID`, else the host name and
/// the port this process listens on, stable across restarts on one host.
fn instance_id(config: &ServeConfig, listening: SocketAddr) -> String {
    config.instance_id.clone().unwrap_or_else(|| {
        let host = gethostname::gethostname();
        format!("{}:{}", host.to_string_lossy(), listening.port())
    })
}

/// What a REDEEMED waits for, with the connections it needs.
async fn durability(
    config: &ServeConfig,
    redis: &vg_redis::Redis,
    shards: &Shards,
    db: &sqlx::PgPool,
) -> anyhow::Result<Durability> {
    let ack = &config.ack;
    tracing::info!(mode = ack.mode.as_str(), "redeems are acknowledged");
    Ok(match ack.mode {
        AckMode::Redis => Durability::Redis,
        AckMode::Replica => {
            // WAIT blocks its connection for up to the timeout.
            let con = redis.connect_blocking(ack.timeout).await?;
            Durability::Replica(Replication::start(con, shards, ack.replicas, ack.timeout))
        }
        AckMode::Postgres => Durability::Postgres(
            Persistence::start(redis, shards, db.clone(), ack.timeout)
                .await
                .context("cannot subscribe to the writers' fates")?,
        ),
    })
}

/// Where Redis is, from its settings.
pub fn open_redis(config: &RedisConfig) -> anyhow::Result<vg_redis::Redis> {
    let ca = config
        .redis_ca_file
        .as_ref()
        .map(|file| {
            std::fs::read(file)
                .with_context(|| format!("cannot read VG_REDIS_CA_FILE {}", file.display()))
        })
        .transpose()?;
    vg_redis::Redis::open(
        config.redis_url.expose(),
        config.redis_cluster,
        config.redis_timeout,
        ca,
    )
}

/// Connects to PostgreSQL, creating the database if needed, and migrates it (unless told not
/// to); returns the pool and the shard count recorded in the database.
pub async fn prepare_database(
    config: &DatabaseConfig,
    migrate: bool,
) -> anyhow::Result<(sqlx::PgPool, Shards)> {
    let url = &config.database_url;
    if migrate {
        store::create_database_if_missing(url.expose())
            .await
            .with_context(|| format!("cannot create the database at {url}"))?;
    }
    let db = store::connect(url.expose(), config.db_pool_size, config.db_timeout)
        .await
        .with_context(|| format!("cannot connect to PostgreSQL at {url}"))?;
    if migrate {
        store::migrate(&db).await.context("migrations failed")?;
    } else {
        let pending = store::pending_migrations(&db)
            .await
            .context("cannot read the applied migrations")?;
        if !pending.is_empty() {
            bail!("the database lacks migrations {pending:?}; run `voucher-gateway migrate` first");
        }
    }
    let recorded = store::recorded_shards(&db, config.shards)
        .await
        .context("cannot read the recorded shard count; run `voucher-gateway migrate`")?;
    if recorded != config.shards {
        bail!(
            "this database was set up with {recorded} shards but VG_SHARDS is {}; \
             the shard count cannot change",
            config.shards
        );
    }
    Ok((db, Shards::new(recorded)))
}

impl App {
    /// Connects everything and binds the listener; nothing is served until `run`.
    pub async fn build(config: ServeConfig) -> anyhow::Result<Self> {
        config.check()?;
        let (db, shards) = prepare_database(&config.database, !config.no_migrate).await?;
        let redis = open_redis(&config.redis)?;
        let mut shared = redis
            .connect()
            .await
            .with_context(|| format!("cannot connect to Redis at {}", config.redis.redis_url))?;
        vg_redis::check_no_eviction(&mut shared).await?;
        for shard in shards.all() {
            vg_redis::marker::check(&mut shared, &db, &shard)
                .await
                .context("cannot check the Redis data marker")?;
        }
        let consumers = if config.writer.no_writer {
            0
        } else {
            config.writer.writer_consumers
        };
        let edge = edge_settings(&config);
        let listener = serve::bind(config.listen, edge.backlog)
            .with_context(|| format!("cannot listen on {}", config.listen))?;
        let ops_listener = config
            .ops_listen
            .map(|address| {
                serve::bind(address, edge.backlog)
                    .with_context(|| format!("cannot listen on {address} (VG_OPS_LISTEN)"))
            })
            .transpose()?;
        let instance = instance_id(&config, listener.local_addr()?);
        let settings = writer_settings(&config);
        let mut writers = Vec::new();
        for shard in shards.all().filter(|_| consumers > 0) {
            let mut first: Option<Writer> = None;
            for n in 0..consumers {
                let con = redis.connect_blocking(settings.block).await?;
                let consumer = format!("{instance}/{n}");
                let writer =
                    Writer::new(con, db.clone(), shard.clone(), consumer, settings.clone());
                match &first {
                    Some(first) => writers.push(Arc::new(writer.taking_turns_with(first))),
                    None => first = Some(writer),
                }
            }
            writers.extend(first.map(Arc::new));
        }
        let liveness = Liveness::new(shards.count());
        let probe = Arc::new(Probe::new(
            shared.clone(),
            db.clone(),
            shards.clone(),
            config.ready_max_outbox_lag,
            (consumers > 0).then(|| liveness.clone()),
        ));
        let durability = durability(&config, &redis, &shards, &db).await?;
        let gateway = Arc::new(Gateway::new(
            shared,
            db,
            shards,
            config.absent_ttl,
            durability,
        ));
        tracing::info!(%instance, "writers read as this instance");
        Ok(Self {
            listener,
            ops_listener,
            edge,
            gateway,
            probe,
            writers,
            liveness,
            config,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// Where the operator's endpoints are served, when on an address of their own.
    pub fn ops_addr(&self) -> Option<SocketAddr> {
        let listener = self.ops_listener.as_ref()?;
        Some(
            listener
                .local_addr()
                .expect("a bound listener has an address"),
        )
    }

    /// Serves until `shutdown` resolves, then stops accepting, finishes requests in flight, and
    /// lets each writer commit the batch it holds, all within the shutdown timeout.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let cancel = CancellationToken::new();
        let tasks = TaskTracker::new();
        let address = self.local_addr();
        for writer in self.writers {
            let shard = writer.shard();
            let (liveness, stop) = (self.liveness.clone(), cancel.clone());
            let name = format!("writer of shard {shard}");
            supervise::supervise(&tasks, "writer", name, cancel.clone(), move || {
                let (writer, stop) = (writer.clone(), stop.clone());
                let alive = liveness.enter(shard);
                async move {
                    let _alive = alive;
                    writer.run(stop).await;
                }
            });
        }
        let metrics = telemetry::metrics::handle();
        let upkeep = tokio::spawn(async move {
            let mut every = tokio::time::interval(telemetry::metrics::UPKEEP_INTERVAL);
            loop {
                every.tick().await;
                metrics.run_upkeep();
            }
        });
        tasks.close();
        tracing::info!(%address, shards = self.gateway.shards().count(), "serving");

        let settings = http_settings(&self.config);
        let routers = http::routers(
            self.gateway,
            self.probe,
            &settings,
            self.ops_listener.is_some(),
        );
        // One deadline from the signal for both: requests in flight, then the writers.
        let timeout = self.config.shutdown_timeout;
        let stopping = CancellationToken::new();
        let ops = routers
            .ops
            .zip(self.ops_listener)
            .map(|(router, listener)| {
                // A few operators and orchestrators, not the public.
                let edge = EdgeSettings {
                    max_connections: OPS_CONNECTIONS.min(self.edge.max_connections),
                    ..self.edge
                };
                serve::serve(listener, router, edge, stopping.clone())
            });
        let public = serve::serve(self.listener, routers.public, self.edge, stopping.clone());
        let server = async {
            tokio::join!(public, async {
                if let Some(ops) = ops {
                    ops.await;
                }
            })
        };
        let signalled = async {
            shutdown.await;
            let deadline = Instant::now() + timeout;
            stopping.cancel();
            deadline
        };
        let mut deadline = None;
        tokio::select! {
            _ = server => {}
            // Past the deadline, in-flight requests are abandoned.
            () = async {
                deadline = Some(signalled.await);
                tokio::time::sleep(timeout).await;
            } => tracing::warn!("requests still in flight at the shutdown deadline"),
        }
        cancel.cancel();
        let deadline = deadline.unwrap_or_else(|| Instant::now() + timeout);
        if tokio::time::timeout_at(deadline, tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                "writers did not finish within the shutdown timeout; their entries stay pending"
            );
        }
        upkeep.abort();
        tracing::info!("stopped");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use tokio::runtime::RuntimeFlavor;

    use super::*;

    #[test]
    fn one_thread_is_a_single_threaded_runtime_more_are_workers() {
        let flavor = |threads| runtime(threads).unwrap().handle().runtime_flavor();
        assert_eq!(flavor(1), RuntimeFlavor::CurrentThread);
        let many = runtime(3).unwrap();
        assert_eq!(many.handle().runtime_flavor(), RuntimeFlavor::MultiThread);
        assert_eq!(many.metrics().num_workers(), 3);
    }
}
