//! Every setting, each a command-line flag with a matching environment variable. A leaf: it
//! imports nothing of the crate; `app` turns these settings into each part's own.

use std::{fmt, net::SocketAddr, str::FromStr, time::Duration};

use clap::{Args, Parser, Subcommand, ValueEnum};
use secrecy::{ExposeSecret, SecretString};
use uuid::Uuid;

#[derive(Debug, Parser)]
#[command(
    name = "voucher-gateway",
    version,
    about = "Flash-sale voucher redemption gateway"
)]
pub struct Cli {
    /// Log line format.
    #[arg(long, env = "VG_LOG_FORMAT", value_enum, default_value_t = LogFormat::Human, global = true)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Human,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the HTTP API and run the outbox writers.
    Serve(Box<ServeConfig>),
    /// Create the database if missing and apply pending migrations, then exit.
    Migrate(DatabaseConfig),
    /// Compare Redis with PostgreSQL and the outbox, report every difference, optionally repair.
    /// Exits 0 when in sync, 1 when differences remain, 2 on error.
    Reconcile(ReconcileConfig),
}

#[derive(Debug, Clone, Parser)]
pub struct ReconcileConfig {
    /// A campaign to check (repeatable); all campaigns when omitted.
    #[arg(long = "campaign", value_name = "ID")]
    pub campaigns: Vec<Uuid>,
    /// Make Redis and PostgreSQL agree: PostgreSQL wins where it holds a redemption; what only
    /// Redis holds is written through the outbox writer's transaction. Safe under live traffic.
    #[arg(long)]
    pub repair: bool,
    /// Output format.
    #[arg(long, value_enum, default_value_t = ReportFormat::Table)]
    pub format: ReportFormat,
    #[command(flatten)]
    pub database: DatabaseConfig,
    #[command(flatten)]
    pub redis: RedisConfig,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ReportFormat {
    Table,
    Json,
}

#[derive(Debug, Clone, Parser)]
pub struct ServeConfig {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, env = "VG_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// This instance's name among the gateways sharing one Redis: its writers' consumer names
    /// derive from it, so that a restarted instance stores at once what it held when it stopped.
    /// Must be stable across restarts and unique among live gateways. Default: the host name and
    /// the listen port (`host:8080`).
    #[arg(long, env = "VG_INSTANCE_ID", value_parser = instance_id)]
    pub instance_id: Option<String>,
    /// Do not apply pending migrations at start.
    #[arg(long, env = "VG_NO_MIGRATE")]
    pub no_migrate: bool,
    /// How long an unknown campaign id is remembered as absent.
    #[arg(long, env = "VG_ABSENT_TTL", default_value = "5s", value_parser = humantime::parse_duration)]
    pub absent_ttl: Duration,
    /// After SIGTERM or SIGINT, the longest wait for requests in flight, then for the writers
    /// to store what is queued; past it the process exits anyway (entries stay queued).
    #[arg(long, env = "VG_SHUTDOWN_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub shutdown_timeout: Duration,
    /// Bearer token that `POST /campaigns` requires. Unset (or empty), anyone can create
    /// campaigns, and `serve` says so loudly at start. Prefer the variable to the flag: flags
    /// show in process lists.
    #[arg(long, env = "VG_ADMIN_TOKEN", hide_env_values = true, value_parser = secret)]
    pub admin_token: Option<SecretString>,
    /// Bearer token that redeems require, when set.
    #[arg(long, env = "VG_API_TOKEN", hide_env_values = true, value_parser = secret)]
    pub api_token: Option<SecretString>,
    /// Campaign API requests in flight at once; beyond it requests are refused at once with
    /// 503 and Retry-After instead of queueing.
    #[arg(long, env = "VG_CONCURRENCY_LIMIT", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..))]
    pub concurrency_limit: u32,
    /// Longest a campaign API request may take, once its body is read, before it is answered
    /// 503. Must be shorter than the shutdown timeout, whose rest is the writers' time to drain.
    #[arg(long, env = "VG_REQUEST_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub request_timeout: Duration,
    /// Longest a campaign API request's body may take to arrive, before it is answered 408. The
    /// body is read before the request takes a place under the concurrency limit.
    #[arg(long, env = "VG_BODY_READ_TIMEOUT", default_value = "2s", value_parser = humantime::parse_duration)]
    pub body_read_timeout: Duration,
    /// `GET /ready` fails when the oldest redemption not yet written to PostgreSQL is older.
    #[arg(long, env = "VG_READY_MAX_OUTBOX_LAG", default_value = "30s", value_parser = humantime::parse_duration)]
    pub ready_max_outbox_lag: Duration,
    /// Serve the operator's endpoints (`/health`, `/ready`, `/metrics`, `/openapi.json`) on this
    /// address only, such as one inside a cluster's network, instead of on `--listen`.
    #[arg(long, env = "VG_OPS_LISTEN")]
    pub ops_listen: Option<SocketAddr>,
    /// Connections the kernel queues for the server to accept (capped by `net.core.somaxconn`):
    /// a flash sale's clients connect in the same instant.
    #[arg(long, env = "VG_LISTEN_BACKLOG", default_value_t = 4096, value_parser = clap::value_parser!(u32).range(1..))]
    pub listen_backlog: u32,
    /// Most connections open at once; past it, a new connection is closed as soon as accepted.
    /// Default: the open-file limit (raised to its hard limit at start) less 1,024.
    #[arg(long, env = "VG_MAX_CONNECTIONS", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: Option<u32>,
    /// Longest wait for a request's head: from the connection's start, or from the first byte
    /// of a later request on the connection. Past it the connection is closed.
    #[arg(long, env = "VG_HEADER_READ_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub header_read_timeout: Duration,
    /// Longest a keep-alive connection may wait between a response and its next request.
    #[arg(long, env = "VG_IDLE_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration)]
    pub idle_timeout: Duration,
    /// Largest request head (request line and headers) in bytes; past it the answer is 431.
    #[arg(long, env = "VG_MAX_REQUEST_HEAD_BYTES", default_value_t = 65_536, value_parser = clap::value_parser!(u32).range(1024..=1_048_576))]
    pub max_request_head_bytes: u32,
    /// Threads that serve requests and run the writers. With one, the default, everything runs on
    /// a single thread: the Redis commands of requests that arrive together go out in one write,
    /// and no thread has to wake another. Where the gateway shares its cores with Redis and
    /// PostgreSQL, one thread costs the least CPU per redeem; raise it on a host with cores to
    /// spare for the gateway alone.
    #[arg(long, env = "VG_WORKER_THREADS", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub worker_threads: u16,
    #[command(flatten)]
    pub ack: AckConfig,
    #[command(flatten)]
    pub database: DatabaseConfig,
    #[command(flatten)]
    pub redis: RedisConfig,
    #[command(flatten)]
    pub writer: WriterConfig,
}

/// What a REDEEMED answer promises: the operator's choice of durability against its price.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AckMode {
    /// Answered once Redis decided: durable as Redis's own persistence is.
    Redis,
    /// Answered once `VG_ACK_REPLICAS` replicas of the campaign's master received the decision.
    Replica,
    /// Answered once the redemption's row is committed in PostgreSQL.
    Postgres,
}

impl AckMode {
    pub fn as_str(self) -> &'static str {
        match self {
            AckMode::Redis => "redis",
            AckMode::Replica => "replica",
            AckMode::Postgres => "postgres",
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct AckConfig {
    /// When a redeem is answered: `redis` (decided in Redis), `replica` (and received by
    /// replicas) or `postgres` (and committed in PostgreSQL). Every gateway sharing one Redis
    /// should run the same mode.
    #[arg(long = "ack", env = "VG_ACK", value_enum, default_value_t = AckMode::Redis)]
    pub mode: AckMode,
    /// Longest a redeem waits for its durability in `replica` and `postgres` modes; past it the
    /// answer is 503 `not_durable` and a retry with the same key answers once it is durable.
    /// Shorter than `VG_REQUEST_TIMEOUT`.
    #[arg(long = "ack-timeout", env = "VG_ACK_TIMEOUT", default_value = "1s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// Replicas that must have received a redeem's decision before it is answered (`replica`).
    #[arg(long = "ack-replicas", env = "VG_ACK_REPLICAS", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub replicas: u16,
}

#[derive(Debug, Clone, Args)]
pub struct DatabaseConfig {
    /// PostgreSQL URL; the database is created if it does not exist.
    #[arg(
        long,
        env = "DATABASE_URL",
        hide_env_values = true,
        default_value = "postgres://postgres@127.0.0.1:5432/voucher_gateway"
    )]
    pub database_url: SecretUrl,
    /// Most PostgreSQL connections per process.
    #[arg(long, env = "VG_DB_POOL_SIZE", default_value_t = 16)]
    pub db_pool_size: u32,
    /// Longest wait for a PostgreSQL connection, and the server-side statement timeout.
    #[arg(long, env = "VG_DB_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub db_timeout: Duration,
    /// Outbox shards. Recorded in the database on first use; a gateway configured otherwise
    /// refuses to start.
    #[arg(long, env = "VG_SHARDS", default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub shards: u16,
}

#[derive(Debug, Clone, Args)]
pub struct RedisConfig {
    /// Redis URL (redis:// or rediss://); with `--redis-cluster`, one or more seed nodes of the
    /// cluster separated by commas.
    #[arg(
        long,
        env = "REDIS_URL",
        hide_env_values = true,
        default_value = "redis://127.0.0.1:6379"
    )]
    pub redis_url: SecretUrl,
    /// Redis is a Redis Cluster: keys go to the masters of their slots, and follow them through
    /// resharding and failover.
    #[arg(long, env = "VG_REDIS_CLUSTER")]
    pub redis_cluster: bool,
    /// PEM file of the certificate authorities to trust for `rediss://`, instead of the
    /// system's (a private CA).
    #[arg(long, env = "VG_REDIS_CA_FILE")]
    pub redis_ca_file: Option<std::path::PathBuf>,
    /// Longest wait for a Redis connection or reply; past it a redeem answers 503.
    #[arg(long, env = "VG_REDIS_TIMEOUT", default_value = "2s", value_parser = humantime::parse_duration)]
    pub redis_timeout: Duration,
}

#[derive(Debug, Clone, Args)]
pub struct WriterConfig {
    /// Most outbox entries per PostgreSQL transaction.
    #[arg(long, env = "VG_WRITER_BATCH_SIZE", default_value_t = 1000, value_parser = clap::value_parser!(u16).range(1..=5000))]
    pub writer_batch_size: u16,
    /// How long a partial batch waits for more entries before it is written. Default: 50ms, and
    /// 1ms with `--ack postgres`, where every redeem's answer waits for its batch.
    #[arg(long, env = "VG_WRITER_FLUSH_INTERVAL", value_parser = humantime::parse_duration)]
    pub writer_flush_interval: Option<Duration>,
    /// How long an outbox entry may stay pending, untouched, with a writer before another
    /// claims it: how soon the entries of a gateway that stopped for good are stored by another.
    /// A live writer touches the entries it is storing, however long PostgreSQL takes.
    #[arg(long, env = "VG_CLAIM_IDLE_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub claim_idle_timeout: Duration,
    /// Writer loops per shard. They take turns reading: while one collects a batch, the others
    /// insert, commit and acknowledge theirs.
    #[arg(long, env = "VG_WRITER_CONSUMERS", default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=16))]
    pub writer_consumers: u16,
    /// Do not run outbox writers in this process (another process writes).
    #[arg(long, env = "VG_NO_WRITER")]
    pub no_writer: bool,
}

impl ServeConfig {
    /// The writers' flush interval: the one set, else the acknowledgement mode's default.
    pub fn writer_flush_interval(&self) -> Duration {
        self.writer
            .writer_flush_interval
            .unwrap_or(match self.ack.mode {
                AckMode::Postgres => Duration::from_millis(1),
                AckMode::Redis | AckMode::Replica => Duration::from_millis(50),
            })
    }

    /// Refuses settings that contradict each other.
    pub fn check(&self) -> anyhow::Result<()> {
        let waits = self.ack.mode != AckMode::Redis;
        if waits
            && (self.ack.timeout < Duration::from_millis(1)
                || self.ack.timeout >= self.request_timeout)
        {
            anyhow::bail!(
                "VG_ACK_TIMEOUT ({:?}) must be at least 1ms and shorter than VG_REQUEST_TIMEOUT \
                 ({:?}): a request waiting for its durability must still be answered in time",
                self.ack.timeout,
                self.request_timeout
            );
        }
        if self.request_timeout >= self.shutdown_timeout {
            anyhow::bail!(
                "VG_REQUEST_TIMEOUT ({:?}) must be shorter than VG_SHUTDOWN_TIMEOUT ({:?}): at \
                 shutdown, requests in flight finish first and the writers drain in the time left",
                self.request_timeout,
                self.shutdown_timeout
            );
        }
        if self.body_read_timeout + self.request_timeout >= self.shutdown_timeout {
            anyhow::bail!(
                "VG_BODY_READ_TIMEOUT ({:?}) and VG_REQUEST_TIMEOUT ({:?}) together must be \
                 shorter than VG_SHUTDOWN_TIMEOUT ({:?}): a request may take both",
                self.body_read_timeout,
                self.request_timeout,
                self.shutdown_timeout
            );
        }
        for (name, timeout) in [
            ("VG_HEADER_READ_TIMEOUT", self.header_read_timeout),
            ("VG_IDLE_TIMEOUT", self.idle_timeout),
            ("VG_BODY_READ_TIMEOUT", self.body_read_timeout),
        ] {
            if timeout.is_zero() {
                anyhow::bail!("{name} must be longer than zero");
            }
        }
        let writer = &self.writer;
        if writer.claim_idle_timeout < self.redis.redis_timeout * 2 {
            anyhow::bail!(
                "VG_CLAIM_IDLE_TIMEOUT ({:?}) must be at least twice VG_REDIS_TIMEOUT ({:?}): a \
                 writer touching the entries it stores could be too slow to keep them",
                writer.claim_idle_timeout,
                self.redis.redis_timeout
            );
        }
        if self.writer_flush_interval() * 2 > writer.claim_idle_timeout {
            anyhow::bail!(
                "VG_WRITER_FLUSH_INTERVAL ({:?}) must be at most half of VG_CLAIM_IDLE_TIMEOUT \
                 ({:?}): a batch filling up would be claimed by another writer",
                self.writer_flush_interval(),
                writer.claim_idle_timeout
            );
        }
        Ok(())
    }
}

/// 1 to 100 visible ASCII characters: it names Redis consumers and appears in logs.
fn instance_id(value: &str) -> Result<String, String> {
    if (1..=100).contains(&value.len()) && value.bytes().all(|byte| byte.is_ascii_graphic()) {
        Ok(value.to_owned())
    } else {
        Err("must be 1 to 100 visible ASCII characters".into())
    }
}

fn secret(value: &str) -> Result<SecretString, std::convert::Infallible> {
    Ok(value.into())
}

/// A URL that may carry a password: printed (`Display`, `Debug`) with the password masked, so
/// that no log line or error message can show it; `expose` gives the URL to connect with.
#[derive(Clone)]
pub struct SecretUrl(SecretString);

impl SecretUrl {
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

impl From<String> for SecretUrl {
    fn from(value: String) -> Self {
        Self(value.into())
    }
}

impl FromStr for SecretUrl {
    type Err = std::convert::Infallible;
    fn from_str(value: &str) -> Result<Self, Self::Err> {
        Ok(Self(value.into()))
    }
}

impl fmt::Display for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match url::Url::parse(self.expose()) {
            Ok(mut parsed) => {
                if parsed.password().is_some() {
                    let _ = parsed.set_password(Some("***"));
                }
                // libpq and sqlx also take the password as a query parameter.
                if parsed.query_pairs().any(|(name, _)| name == "password") {
                    let masked: Vec<(String, String)> = parsed
                        .query_pairs()
                        .map(|(name, value)| {
                            let value = if name == "password" {
                                "***".into()
                            } else {
                                value
                            };
                            (name.into_owned(), value.into_owned())
                        })
                        .collect();
                    parsed.query_pairs_mut().clear().extend_pairs(masked);
                }
                parsed.fmt(f)
            }
            // Unparsable, it may hold anything: show only the scheme.
            Err(_) => match self.expose().split_once("://") {
                Some((scheme, _)) => write!(f, "{scheme}://***"),
                None => f.write_str("***"),
            },
        }
    }
}

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{self}\"")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        let shown = |url: &str| SecretUrl::from_str(url).unwrap().to_string();
        assert_eq!(shown("redis://:secret@host:6379"), "redis://:***@host:6379");
        assert_eq!(shown("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(shown("postgres://u:secret@h:notaport/db"), "postgres://***");
        assert_eq!(
            shown("postgres://u@h/db?password=secret&sslmode=require"),
            "postgres://u@h/db?password=***&sslmode=require"
        );
    }

    #[test]
    fn no_secret_reaches_a_debug_print() {
        let config = ServeConfig::try_parse_from([
            "serve",
            "--admin-token",
            "admin-s3cret",
            "--api-token",
            "api-s3cret",
            "--database-url",
            "postgres://u:pg-s3cret@h/db",
            "--redis-url",
            "redis://:redis-s3cret@h:6379",
        ])
        .unwrap();
        let printed = format!("{config:?}");
        assert!(!printed.contains("s3cret"), "{printed}");
        assert!(printed.contains("postgres://u:***@h/db"), "{printed}");
        assert_eq!(
            config.database.database_url.expose(),
            "postgres://u:pg-s3cret@h/db"
        );
    }

    #[test]
    fn a_request_timeout_must_leave_the_writers_time_at_shutdown() {
        assert!(
            ServeConfig::try_parse_from(["serve"])
                .unwrap()
                .check()
                .is_ok()
        );
        let config = ServeConfig::try_parse_from([
            "serve",
            "--request-timeout",
            "10s",
            "--shutdown-timeout",
            "10s",
        ])
        .unwrap();
        assert!(config.check().is_err());
    }

    #[test]
    fn a_flush_interval_must_leave_the_claim_timeout_room() {
        let config = |flush: &str| {
            ServeConfig::try_parse_from(["serve", "--writer-flush-interval", flush])
                .unwrap()
                .check()
        };
        assert!(config("2500ms").is_ok());
        assert!(config("3s").is_err());
    }

    #[test]
    fn a_claim_timeout_must_outlast_two_redis_timeouts() {
        let config = |claim: &str| {
            ServeConfig::try_parse_from([
                "serve",
                "--claim-idle-timeout",
                claim,
                "--redis-timeout",
                "2s",
            ])
            .unwrap()
            .check()
        };
        assert!(config("4s").is_ok());
        assert!(config("3s").is_err());
        assert!(config("0s").is_err());
    }

    #[test]
    fn an_instance_id_is_visible_ascii() {
        let parse = |id: &str| ServeConfig::try_parse_from(["serve", "--instance-id", id]);
        assert_eq!(
            parse("host-1:8080").unwrap().instance_id.as_deref(),
            Some("host-1:8080")
        );
        assert!(parse("").is_err());
        assert!(parse("with space").is_err());
    }

    #[test]
    fn defaults_parse() {
        let config = ServeConfig::try_parse_from(["serve"]).unwrap();
        assert_eq!(config.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(config.writer_flush_interval(), Duration::from_millis(50));
        assert_eq!(config.ack.mode, AckMode::Redis);
    }

    #[test]
    fn postgres_acknowledgements_flush_batches_sooner_unless_told() {
        let parse = |args: &[&str]| {
            ServeConfig::try_parse_from([&["serve", "--ack", "postgres"], args].concat()).unwrap()
        };
        assert_eq!(parse(&[]).writer_flush_interval(), Duration::from_millis(1));
        let set = parse(&["--writer-flush-interval", "20ms"]);
        assert_eq!(set.writer_flush_interval(), Duration::from_millis(20));
    }

    #[test]
    fn an_ack_timeout_must_end_within_the_request_timeout() {
        let config = |mode: &str, ack: &str| {
            ServeConfig::try_parse_from([
                "serve",
                "--ack",
                mode,
                "--ack-timeout",
                ack,
                "--request-timeout",
                "2s",
            ])
            .unwrap()
            .check()
        };
        assert!(config("postgres", "1500ms").is_ok());
        assert!(config("replica", "2s").is_err());
        assert!(config("postgres", "0s").is_err());
        assert!(
            config("redis", "2s").is_ok(),
            "redis mode waits for nothing"
        );
    }
}
