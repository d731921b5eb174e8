//! The gateway as a separate process (so it can be killed for real), the reconcile command, and
//! private databases on the shared PostgreSQL server for tests that read database-wide state.

use std::{
    process::Stdio,
    time::{Duration, Instant},
};

use serde_json::Value;
use sqlx::{Connection, PgConnection};
use tokio::{
    io::AsyncReadExt,
    process::{Child, Command},
    task::JoinHandle,
};

use voucher_gateway::domain::CampaignId;

use crate::helpers::{database_url, free_port, http, scrape};

const BINARY: &str = env!("CARGO_BIN_EXE_voucher-gateway");

/// A `voucher-gateway serve` process on a port of its own.
pub struct GatewayProcess {
    pub url: String,
    pub port: u16,
    env: Vec<(String, String)>,
    /// Whether its log lines (stderr) are kept for the test, rather than shown.
    logged: bool,
    child: Option<Child>,
    /// Reads the kept log lines as they come, so that a full pipe never blocks the gateway.
    logs: Option<JoinHandle<Vec<u8>>>,
}

impl GatewayProcess {
    /// Starts a gateway on `database` and `redis` with extra `VG_*` settings (or `RUST_LOG`),
    /// and waits until it answers.
    pub async fn start(database: &str, redis: &str, settings: &[(&str, &str)]) -> Self {
        Self::start_as(database, redis, settings, false).await
    }

    /// `start`, keeping its log lines for `terminate_with_logs`.
    pub async fn start_logged(database: &str, redis: &str, settings: &[(&str, &str)]) -> Self {
        Self::start_as(database, redis, settings, true).await
    }

    async fn start_as(
        database: &str,
        redis: &str,
        settings: &[(&str, &str)],
        logged: bool,
    ) -> Self {
        let port = free_port();
        let mut env: Vec<(String, String)> = vec![
            ("DATABASE_URL".into(), database.into()),
            ("REDIS_URL".into(), redis.into()),
            ("VG_LISTEN".into(), format!("127.0.0.1:{port}")),
            ("VG_DB_POOL_SIZE".into(), "4".into()),
            ("VG_REDIS_TIMEOUT".into(), "1s".into()),
            ("VG_LOG_FORMAT".into(), "human".into()),
            ("RUST_LOG".into(), "warn".into()),
        ];
        env.extend(settings.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let mut gateway = Self {
            url: format!("http://127.0.0.1:{port}"),
            port,
            env,
            logged,
            child: None,
            logs: None,
        };
        gateway.start_again().await;
        gateway
    }

    /// Starts the process (again) with the same settings and port.
    pub async fn start_again(&mut self) {
        let mut child = Command::new(BINARY)
            .arg("serve")
            .envs(self.env.iter().cloned())
            .stdout(Stdio::null())
            .stderr(if self.logged {
                Stdio::piped()
            } else {
                Stdio::inherit()
            })
            .kill_on_drop(true)
            .spawn()
            .expect("the gateway binary starts");
        self.logs = child.stderr.take().map(|mut stderr| {
            tokio::spawn(async move {
                let mut logged = Vec::new();
                stderr.read_to_end(&mut logged).await.unwrap();
                logged
            })
        });
        self.child = Some(child);
        let probe = http();
        let deadline = Instant::now() + Duration::from_secs(30);
        let url = format!("{}/health", self.url);
        while probe.get(&url).send().await.is_err() {
            assert!(
                Instant::now() < deadline,
                "gateway on {} did not start",
                self.port
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGKILL: no shutdown, no last batch.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().await.unwrap();
        }
    }

    /// SIGTERM, then waits (at most `within`) for the process to exit; returns its status.
    pub async fn terminate(&mut self, within: Duration) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        signal(child.id().expect("running"), "TERM");
        tokio::time::timeout(within, child.wait())
            .await
            .expect("the gateway exits within the deadline")
            .unwrap()
    }

    /// SIGTERM, then waits (at most `within`) for the process to exit; returns what it logged.
    pub async fn terminate_with_logs(&mut self, within: Duration) -> String {
        self.terminate(within).await;
        let logs = self.logs.take().expect("started with start_logged");
        String::from_utf8(logs.await.unwrap()).unwrap()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().and_then(Child::id).expect("running")
    }

    /// The instance name its writers read under, by default: the host name and the port.
    pub fn instance(&self) -> String {
        format!(
            "{}:{}",
            gethostname::gethostname().to_string_lossy(),
            self.port
        )
    }

    /// One series of its `/metrics`, summed over `labels`.
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        crate::helpers::metric(&scrape(&self.url).await, name, labels)
    }
}

/// Creates a campaign of `total` vouchers through the gateway at `gateway` (a base URL).
pub async fn create_campaign(gateway: &str, total: i64) -> CampaignId {
    let response = http()
        .post(format!("{gateway}/campaigns"))
        .json(&serde_json::json!({"name": "test campaign", "total": total}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), reqwest::StatusCode::CREATED);
    let body: Value = response.json().await.unwrap();
    CampaignId::parse(body["id"].as_str().unwrap()).unwrap()
}

/// Sends a signal (`TERM`, `STOP`, `CONT`, ...) to a process.
pub fn signal(pid: u32, name: &str) {
    let sent = std::process::Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(sent.success(), "kill -{name} {pid}");
}

/// What `voucher-gateway reconcile --format json` printed, and its exit code.
pub struct Reconciled {
    pub code: i32,
    pub report: Value,
    pub stderr: String,
}

impl Reconciled {
    /// The report of one campaign.
    pub fn campaign(&self, id: impl std::fmt::Display) -> &Value {
        let id = id.to_string();
        self.report["campaigns"]
            .as_array()
            .and_then(|all| all.iter().find(|c| c["id"] == id.as_str()))
            .unwrap_or_else(|| panic!("campaign {id} not in {:#}", self.report))
    }
}

/// Runs `voucher-gateway reconcile` with `args` against `database` and `redis`.
pub async fn reconcile(database: &str, redis: &str, args: &[&str]) -> Reconciled {
    let output = reconcile_command(database, redis, args)
        .args(["--format", "json"])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8(output.stdout).unwrap();
    Reconciled {
        code: output.status.code().unwrap(),
        report: serde_json::from_str(&stdout).unwrap_or(Value::Null),
        stderr: String::from_utf8(output.stderr).unwrap(),
    }
}

pub fn reconcile_command(database: &str, redis: &str, args: &[&str]) -> Command {
    let mut command = Command::new(BINARY);
    command
        .arg("reconcile")
        .args(args)
        .env("DATABASE_URL", database)
        .env("REDIS_URL", redis)
        .env("VG_REDIS_TIMEOUT", "1s")
        .env("VG_DB_TIMEOUT", "2s")
        .env("RUST_LOG", "warn");
    command
}

/// A new, empty database on the shared server, migrated; for tests that read database-wide
/// state (settings, every campaign).
pub async fn private_database() -> String {
    let name = format!("vg_test_{}", uuid::Uuid::new_v4().simple());
    let shared = database_url();
    let (server, _) = shared.rsplit_once('/').unwrap();
    let url = format!("{server}/{name}");
    let mut admin = PgConnection::connect(&shared).await.unwrap();
    sqlx::query(&format!("create database {name}"))
        .execute(&mut admin)
        .await
        .unwrap();
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    voucher_gateway::store::migrate(&pool).await.unwrap();
    pool.close().await;
    url
}
