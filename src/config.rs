//! Every setting, each a command-line flag with a matching environment variable.

use std::{net::SocketAddr, time::Duration};

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::{domain::CampaignId, http::HttpSettings, writer::WriterSettings};

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
    Serve(ServeConfig),
    /// Create the database if missing and apply pending migrations, then exit.
    Migrate(DatabaseConfig),
    /// Compare Redis with PostgreSQL and the outbox, report every difference, optionally repair.
    /// Exits 0 when in sync, 1 when differences remain, 2 on error.
    Reconcile(ReconcileConfig),
}

#[derive(Debug, Clone, Parser)]
pub struct ReconcileConfig {
    /// A campaign to check (repeatable); all campaigns when omitted.
    #[arg(long = "campaign", value_name = "ID", value_parser = parse_campaign_id)]
    pub campaigns: Vec<CampaignId>,
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

fn parse_campaign_id(value: &str) -> Result<CampaignId, String> {
    CampaignId::parse(value).map_err(|error| error.to_string())
}

#[derive(Debug, Clone, Parser)]
pub struct ServeConfig {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, env = "VG_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
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
    #[arg(long, env = "VG_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Bearer token that redeems require, when set.
    #[arg(long, env = "VG_API_TOKEN", hide_env_values = true)]
    pub api_token: Option<String>,
    /// Campaign API requests in flight at once; beyond it requests are refused at once with
    /// 503 and Retry-After instead of queueing.
    #[arg(long, env = "VG_CONCURRENCY_LIMIT", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..))]
    pub concurrency_limit: u32,
    /// Longest a campaign API request may take (body read included) before it is answered 503.
    /// Must be shorter than the shutdown timeout, whose rest is the writers' time to drain.
    #[arg(long, env = "VG_REQUEST_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub request_timeout: Duration,
    /// `GET /ready` fails when the oldest redemption not yet written to PostgreSQL is older.
    #[arg(long, env = "VG_READY_MAX_OUTBOX_LAG", default_value = "30s", value_parser = humantime::parse_duration)]
    pub ready_max_outbox_lag: Duration,
    /// Threads that serve requests and run the writers. With one, the default, everything runs on
    /// a single thread: the Redis commands of requests that arrive together go out in one write,
    /// and no thread has to wake another. Where the gateway shares its cores with Redis and
    /// PostgreSQL, one thread costs the least CPU per redeem; raise it on a host with cores to
    /// spare for the gateway alone.
    #[arg(long, env = "VG_WORKER_THREADS", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub worker_threads: u16,
    #[command(flatten)]
    pub database: DatabaseConfig,
    #[command(flatten)]
    pub redis: RedisConfig,
    #[command(flatten)]
    pub writer: WriterConfig,
}

#[derive(Debug, Clone, Args)]
pub struct DatabaseConfig {
    /// PostgreSQL URL; the database is created if it does not exist.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/voucher_gateway"
    )]
    pub database_url: String,
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
    /// Redis URL (redis:// or rediss://).
    #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    pub redis_url: String,
    /// Connections in the pool for the writers and hydration (the redeem path shares one
    /// multiplexed connection). Needs one per writer loop (shards x consumers) plus headroom.
    #[arg(long, env = "VG_REDIS_POOL_SIZE", default_value_t = 64)]
    pub redis_pool_size: usize,
    /// Longest wait for a Redis connection or reply; past it a redeem answers 503.
    #[arg(long, env = "VG_REDIS_TIMEOUT", default_value = "2s", value_parser = humantime::parse_duration)]
    pub redis_timeout: Duration,
}

#[derive(Debug, Clone, Args)]
pub struct WriterConfig {
    /// Most outbox entries per PostgreSQL transaction.
    #[arg(long, env = "VG_WRITER_BATCH_SIZE", default_value_t = 1000, value_parser = clap::value_parser!(u16).range(1..=5000))]
    pub writer_batch_size: u16,
    /// How long a partial batch waits for more entries before it is written.
    #[arg(long, env = "VG_WRITER_FLUSH_INTERVAL", default_value = "50ms", value_parser = humantime::parse_duration)]
    pub writer_flush_interval: Duration,
    /// How long an outbox entry may stay pending with one writer before another claims it.
    #[arg(long, env = "VG_CLAIM_IDLE_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
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
    /// Refuses settings that contradict each other.
    pub fn check(&self) -> anyhow::Result<()> {
        if self.request_timeout >= self.shutdown_timeout {
            anyhow::bail!(
                "VG_REQUEST_TIMEOUT ({:?}) must be shorter than VG_SHUTDOWN_TIMEOUT ({:?}): at \
                 shutdown, requests in flight finish first and the writers drain in the time left",
                self.request_timeout,
                self.shutdown_timeout
            );
        }
        Ok(())
    }

    pub fn http_settings(&self) -> HttpSettings {
        HttpSettings {
            admin_token: self.admin_token.clone(),
            api_token: self.api_token.clone(),
            concurrency_limit: self.concurrency_limit as usize,
            request_timeout: self.request_timeout,
        }
    }

    pub fn writer_settings(&self) -> WriterSettings {
        WriterSettings {
            batch_size: self.writer.writer_batch_size.into(),
            flush_interval: self.writer.writer_flush_interval,
            claim_idle: self.writer.claim_idle_timeout,
            // A blocked read must end well within the connection's reply timeout.
            block: (self.redis.redis_timeout / 2).min(Duration::from_millis(500)),
        }
    }
}

/// The URL without its password, for log lines and error messages.
pub fn redacted(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redacted("redis://:secret@host:6379"),
            "redis://:***@host:6379"
        );
        assert_eq!(redacted("postgres://u@h/db"), "postgres://u@h/db");
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
    fn defaults_parse() {
        let config = ServeConfig::try_parse_from(["serve"]).unwrap();
        assert_eq!(config.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(
            config.writer_settings().flush_interval,
            Duration::from_millis(50)
        );
    }
}
