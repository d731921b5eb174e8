//! The harness: the real app on port 0 against real Redis and PostgreSQL, and private servers for
//! fault tests.

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::OnceLock,
    time::{Duration, Instant},
};

use clap::Parser;
use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use voucher_gateway::{
    app::{self, App},
    config::ServeConfig,
    domain::CampaignId,
    redis::{
        Connection,
        keys::{CampaignKeys, Shards},
    },
};

/// What the app under test acknowledges redeems after.
pub use voucher_gateway::config::AckMode as Acked;

pub fn database_url() -> String {
    std::env::var("TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/voucher_gateway_test".into())
}

pub fn redis_url() -> String {
    std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/1".into())
}

/// What the shared Redis is: one server, or a Redis Cluster of 3 masters and 3 replicas. The
/// tests of the contract run on both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Topology {
    Single,
    Cluster,
}

impl Topology {
    /// The shared Redis's URL: the one server's, or the cluster's seeds.
    pub fn redis_url(self) -> String {
        match self {
            Topology::Single => redis_url(),
            Topology::Cluster => cluster_url(),
        }
    }

    /// The command-line flags that select this topology, for the gateway's processes.
    pub fn flags(self) -> &'static [&'static str] {
        match self {
            Topology::Single => &[],
            Topology::Cluster => &["--redis-cluster"],
        }
    }
}

/// The shared cluster's seeds: `TEST_REDIS_CLUSTER_URL`, else the cluster `scripts/redis-cluster`
/// keeps in `target/test-cluster` (started on first use, left running for the next run).
fn cluster_url() -> String {
    static URL: OnceLock<String> = OnceLock::new();
    URL.get_or_init(|| {
        std::env::var("TEST_REDIS_CLUSTER_URL").unwrap_or_else(|_| {
            let root = Path::new(env!("CARGO_MANIFEST_DIR"));
            let up = Command::new(root.join("scripts/redis-cluster"))
                .arg("up")
                .arg(root.join("target/test-cluster"))
                .stderr(Stdio::inherit())
                .output()
                .expect("scripts/redis-cluster runs");
            assert!(up.status.success(), "the test cluster did not start");
            String::from_utf8(up.stdout).unwrap().trim().to_owned()
        })
    })
    .clone()
}

/// Test settings: small pools and short Redis timeouts.
pub fn test_config() -> ServeConfig {
    test_config_on(Topology::Single)
}

/// Test settings on the shared Redis of `topology`.
pub fn test_config_on(topology: Topology) -> ServeConfig {
    let mut config = ServeConfig::try_parse_from(["serve", "--listen", "127.0.0.1:0"]).unwrap();
    config.database.database_url = database_url().into();
    config.database.db_pool_size = 8;
    config.redis.redis_url = topology.redis_url().into();
    config.redis.redis_cluster = topology == Topology::Cluster;
    config.redis.redis_timeout = Duration::from_secs(1);
    config
}

/// Test settings against a private Redis; with `writer` off, every redemption stays in the outbox.
pub fn private_redis_config(redis: &RedisServer, writer: bool) -> ServeConfig {
    let mut config = test_config();
    config.redis.redis_url = redis.url().into();
    config.writer.no_writer = !writer;
    config
}

pub struct TestApp {
    pub address: String,
    /// The operator's endpoints' own address, with `VG_OPS_LISTEN`.
    pub ops_address: Option<String>,
    pub client: reqwest::Client,
    pub db: PgPool,
    /// A connection of the test's own to the app's Redis.
    pub redis: Connection,
    /// Private Redis servers the app uses, stopped with it.
    servers: Vec<RedisServer>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

/// One redeem's answer, as a client sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: StatusCode,
    pub replayed: bool,
    pub body: String,
}

impl Answer {
    pub fn outcome(&self) -> String {
        let body: Value = serde_json::from_str(&self.body).unwrap_or(Value::Null);
        body["status"].as_str().unwrap_or("").to_owned()
    }
}

impl TestApp {
    pub async fn spawn() -> Self {
        Self::spawn_with(test_config()).await
    }

    pub async fn spawn_on(topology: Topology) -> Self {
        Self::spawn_with(test_config_on(topology)).await
    }

    pub async fn spawn_with(config: ServeConfig) -> Self {
        let database_url = config.database.database_url.expose().to_owned();
        let redis = app::open_redis(&config.redis).unwrap();
        let app = App::build(config).await.expect("the app builds");
        let address = format!("http://{}", app.local_addr());
        let ops_address = app.ops_addr().map(|address| format!("http://{address}"));
        let stop = CancellationToken::new();
        let task = tokio::spawn(app.run(stop.clone().cancelled_owned()));
        let db = PgPool::connect(&database_url).await.unwrap();
        let redis = redis.connect().await.unwrap();
        Self {
            address,
            ops_address,
            client: http(),
            db,
            redis,
            servers: Vec::new(),
            stop,
            task,
        }
    }

    /// An app on the shared Redis of `topology` acknowledging redeems as `ack` says; on one
    /// server, `replica` runs on a private server with a replica of its own.
    pub async fn spawn_acked(topology: Topology, ack: Acked) -> Self {
        let mut config = test_config_on(topology);
        config.ack.mode = ack;
        // A 503 would turn these tests' exact counts into retries, so durability gets longer
        // than it can take here: every test app on a shared server writes for the same outbox,
        // and one that ends while holding a batch leaves it to be claimed by another after
        // `VG_CLAIM_IDLE_TIMEOUT` (5 s, then checked every 1.25 s).
        config.ack.timeout = Duration::from_secs(10);
        config.request_timeout = Duration::from_secs(15);
        config.shutdown_timeout = Duration::from_secs(20);
        let mut servers = Vec::new();
        if topology == Topology::Single && ack == Acked::Replica {
            let primary = RedisServer::start();
            servers.push(RedisServer::start_replica_of(&primary));
            config.redis.redis_url = primary.url().into();
            servers.push(primary);
        }
        let mut app = Self::spawn_with(config).await;
        app.servers = servers;
        app
    }

    /// Stops the app gracefully and returns what `run` returned.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.stop.cancel();
        self.task.await.unwrap()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.address)
    }

    pub fn keys(&self, id: CampaignId) -> CampaignKeys {
        Shards::new(16).campaign(id)
    }

    pub async fn create_campaign(&self, total: i64) -> CampaignId {
        let response = self
            .client
            .post(self.url("/campaigns"))
            .json(&json!({"name": "Test campaign", "total": total}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::CREATED);
        let body: Value = response.json().await.unwrap();
        CampaignId::parse(body["id"].as_str().unwrap()).unwrap()
    }

    pub async fn redeem(
        &self,
        id: CampaignId,
        user: impl Into<String>,
        key: impl Into<String>,
    ) -> Answer {
        let response = self.post_redeem(id, &user.into(), &key.into()).await;
        Answer {
            status: response.status(),
            replayed: response.headers().get("idempotent-replayed").is_some(),
            body: response.text().await.unwrap(),
        }
    }

    /// `GET /campaigns/{id}` as it comes, for tests of error answers; any id text.
    pub async fn get_campaign(&self, id: impl std::fmt::Display) -> reqwest::Response {
        self.client
            .get(self.url(&format!("/campaigns/{id}")))
            .send()
            .await
            .unwrap()
    }

    /// `POST /campaigns/{id}/redeem` as it comes, for tests of error answers; any id text.
    pub async fn post_redeem(
        &self,
        id: impl std::fmt::Display,
        user: &str,
        key: &str,
    ) -> reqwest::Response {
        self.client
            .post(self.url(&format!("/campaigns/{id}/redeem")))
            .json(&json!({"userId": user, "idempotencyKey": key}))
            .send()
            .await
            .unwrap()
    }

    /// The JSON body of `GET path`, whatever its status.
    pub async fn get_json(&self, path: &str) -> Value {
        let response = self.client.get(self.url(path)).send().await.unwrap();
        response.json().await.unwrap()
    }

    pub async fn summary(&self, id: CampaignId) -> Value {
        let response = self.get_campaign(id).await;
        assert_eq!(response.status(), StatusCode::OK);
        response.json().await.unwrap()
    }

    /// Waits until PostgreSQL holds `count` redemptions of the campaign.
    pub async fn wait_persisted(&self, id: CampaignId, count: i64) {
        wait_persisted(&self.db, id, count).await
    }
}

/// Waits until PostgreSQL holds `count` redemptions of the campaign (and `redeemed` agrees).
pub async fn wait_persisted(db: &PgPool, id: CampaignId, count: i64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (rows, redeemed): (i64, i32) = sqlx::query_as(
            "select (select count(*) from redemptions where campaign_id = $1), redeemed
             from campaigns where id = $1",
        )
        .bind(id.as_uuid())
        .fetch_one(db)
        .await
        .unwrap_or((-1, -1));
        if rows == count && i64::from(redeemed) == count {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "PostgreSQL holds {rows} rows (redeemed {redeemed}), expected {count}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The campaign's stored redemptions: (user, key, seq), by seq.
pub async fn stored(db: &PgPool, id: CampaignId) -> Vec<(String, String, i32)> {
    sqlx::query_as(
        "select user_id, idempotency_key, seq from redemptions where campaign_id = $1 order by seq",
    )
    .bind(id.as_uuid())
    .fetch_all(db)
    .await
    .unwrap()
}

/// The value of the series of `name` with all of `labels`, summed; 0 when there is none.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| line.rsplit_once(' '))
        .filter(|(series, _)| {
            let (series_name, series_labels) = series.split_once('{').unwrap_or((series, ""));
            series_name == name
                && labels
                    .iter()
                    .all(|(key, value)| series_labels.contains(&format!("{key}=\"{value}\"")))
        })
        .map(|(_, value)| value.parse::<f64>().unwrap())
        .sum()
}

/// Appends outbox entries as `redeem.lua` writes them: (campaign, user, voucher number), key `k`.
pub async fn queue_entries(
    con: &mut impl redis::aio::ConnectionLike,
    entries: impl IntoIterator<Item = (CampaignId, String, usize)>,
) {
    let shards = Shards::new(16);
    // A pipeline per outbox: on a cluster, each goes to its shard's master.
    let mut pipes: std::collections::BTreeMap<String, redis::Pipeline> = Default::default();
    for (campaign, user, seq) in entries {
        let outbox = shards.campaign(campaign).outbox;
        let entry = format!("{campaign}\n{user}\nk\n{seq}");
        pipes
            .entry(outbox.clone())
            .or_default()
            .cmd("XADD")
            .arg(outbox)
            .arg("*")
            .arg("r")
            .arg(entry)
            .ignore();
    }
    for pipe in pipes.values() {
        let () = pipe.query_async(con).await.unwrap();
    }
}

/// Takes an exclusive lock on the campaigns table of `database`: every query of it waits until
/// the transaction ends.
pub async fn lock_campaigns(database: &str) -> sqlx::Transaction<'static, sqlx::Postgres> {
    let db = PgPool::connect(database).await.unwrap();
    let mut lock = db.begin().await.unwrap();
    sqlx::query("lock table campaigns in access exclusive mode")
        .execute(&mut *lock)
        .await
        .unwrap();
    lock
}

/// Zeroes Redis's command statistics.
pub async fn reset_command_stats(con: &mut impl redis::aio::ConnectionLike) {
    let _: () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async(con)
        .await
        .unwrap();
}

/// How many times Redis ran `command` (lowercase, as `INFO commandstats` names it) since its
/// statistics were last zeroed.
pub async fn command_calls(con: &mut impl redis::aio::ConnectionLike, command: &str) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(con)
        .await
        .unwrap();
    let prefix = format!("cmdstat_{command}:calls=");
    info.lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .and_then(|rest| rest.split(',').next())
        .map_or(0, |calls| calls.parse().unwrap())
}

/// A port nobody listens on right now.
/// An HTTP client whose every request fails after a minute: a test that would wait forever for
/// an answer fails instead, and says where.
pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

/// The `/metrics` text of the gateway at `base` (its base URL).
pub async fn scrape(base: &str) -> String {
    let response = http().get(format!("{base}/metrics")).send().await.unwrap();
    response.text().await.unwrap()
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A private Redis on a free port, in a temporary directory; killed on drop.
pub struct RedisServer {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
    /// The port of the server this one replicates.
    primary: Option<u16>,
    /// `appendonly yes` with `appendfsync always`: every acknowledged write survives a kill.
    aof: bool,
    /// `requirepass`, when set.
    password: Option<String>,
    /// TLS only, with the certificates of this directory (`Certificates`).
    tls: Option<PathBuf>,
}

impl RedisServer {
    /// A server without persistence: a restart comes back empty.
    pub fn start() -> Self {
        Self::start_with(false, None)
    }

    /// A server with AOF `appendfsync always`.
    pub fn start_with_aof() -> Self {
        Self::start_with(true, None)
    }

    /// A server that requires `password`.
    pub fn start_with_password(password: &str) -> Self {
        Self::start_with(false, Some(password.to_owned()))
    }

    /// A server that requires `password` and speaks TLS only, with the certificates of `certs`.
    pub fn start_with_tls(password: &str, certs: &Certificates) -> Self {
        Self::start_as(
            false,
            Some(password.to_owned()),
            Some(certs.dir.path().to_owned()),
        )
    }

    fn start_with(aof: bool, password: Option<String>) -> Self {
        Self::start_as(aof, password, None)
    }

    fn start_as(aof: bool, password: Option<String>, tls: Option<PathBuf>) -> Self {
        let mut server = Self {
            port: free_port(),
            dir: tempfile::tempdir().unwrap(),
            child: None,
            primary: None,
            aof,
            password,
            tls,
        };
        server.restart();
        server
    }

    /// A replica of `primary` (a server without password or TLS), once in sync with it.
    pub fn start_replica_of(primary: &RedisServer) -> Self {
        let mut replica = Self {
            port: free_port(),
            dir: tempfile::tempdir().unwrap(),
            child: None,
            primary: Some(primary.port),
            aof: false,
            password: None,
            tls: None,
        };
        replica.restart();
        wait_until(|| {
            redis_cli(replica.port, &["info", "replication"]).contains("master_link_status:up")
        });
        replica
    }

    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        match &self.password {
            Some(password) => format!("{scheme}://:{password}@127.0.0.1:{}", self.port),
            None => format!("{scheme}://127.0.0.1:{}", self.port),
        }
    }

    /// Starts (again) on the same port and directory; with AOF, reloading what it wrote.
    pub fn restart(&mut self) {
        let mut command = Command::new("redis-server");
        let port = self.port.to_string();
        match &self.tls {
            Some(certs) => command
                .args([
                    "--port",
                    "0",
                    "--tls-port",
                    &port,
                    "--tls-auth-clients",
                    "no",
                ])
                .arg("--tls-cert-file")
                .arg(certs.join("server.crt"))
                .arg("--tls-key-file")
                .arg(certs.join("server.key"))
                .arg("--tls-ca-cert-file")
                .arg(certs.join("ca.crt")),
            None => command.args(["--port", &port]),
        };
        command
            .args(["--bind", "127.0.0.1", "--save", ""])
            .args(if self.aof {
                ["--appendonly", "yes", "--appendfsync", "always"]
            } else {
                ["--appendonly", "no", "--appendfsync", "everysec"]
            })
            .arg("--dir")
            .arg(self.dir.path());
        if let Some(password) = &self.password {
            command.args(["--requirepass", password]);
        }
        if let Some(primary) = self.primary {
            command.args(["--replicaof", "127.0.0.1", &primary.to_string()]);
        }
        let child = command
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server is installed");
        self.child = Some(child);
        wait_until(|| {
            let mut ping = Command::new("redis-cli");
            ping.args(["-p", &self.port.to_string(), "--no-auth-warning"]);
            if let Some(password) = &self.password {
                ping.args(["-a", password]);
            }
            if let Some(certs) = &self.tls {
                ping.arg("--tls").arg("--cacert").arg(certs.join("ca.crt"));
            }
            ping.arg("ping")
                .output()
                .is_ok_and(|out| out.stdout.starts_with(b"PONG"))
        });
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// SIGKILL: no shutdown, no save.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A private PostgreSQL cluster on a free port, owned by the postgres user when run as root
/// (initdb refuses root); stopped on drop.
pub struct PgServer {
    pub port: u16,
    data: PathBuf,
    _root: tempfile::TempDir,
}

impl PgServer {
    pub fn start() -> Self {
        let root = tempfile::Builder::new()
            .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .tempdir()
            .unwrap();
        let data = root.path().join("data");
        std::fs::create_dir(&data).unwrap();
        if is_root() {
            run(Command::new("chown").arg("postgres:postgres").arg(&data));
        }
        run(pg_command("initdb")
            .args(["-A", "trust", "-U", "postgres", "--no-sync", "-D"])
            .arg(&data)
            .stdout(Stdio::null()));
        let server = Self {
            port: free_port(),
            data,
            _root: root,
        };
        server.start_again();
        server
    }

    pub fn url(&self) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/voucher_gateway",
            self.port
        )
    }

    pub fn start_again(&self) {
        let options = format!(
            "-p {} -h 127.0.0.1 -k {} -c fsync=off",
            self.port,
            self.data.display()
        );
        run(pg_command("pg_ctl")
            .args(["-w", "-s", "-l"])
            .arg(self.data.join("server.log"))
            .arg("-D")
            .arg(&self.data)
            .args(["-o", &options, "start"]));
    }

    pub fn stop(&self) {
        run(&mut self.stop_command());
    }

    fn stop_command(&self) -> Command {
        let mut command = pg_command("pg_ctl");
        command
            .args(["-w", "-s", "-m", "fast", "-D"])
            .arg(&self.data)
            .arg("stop");
        command
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let _ = self.stop_command().stderr(Stdio::null()).status();
    }
}

/// A PostgreSQL server program, run as the postgres user when we are root.
fn pg_command(program: &str) -> Command {
    let bindir = Command::new("pg_config").arg("--bindir").output().unwrap();
    let bin = Path::new(String::from_utf8(bindir.stdout).unwrap().trim()).join(program);
    if is_root() {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--"]).arg(bin);
        command
    } else {
        Command::new(bin)
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| out.stdout.starts_with(b"0\n"))
}

fn run(command: &mut Command) {
    let status = command.status().unwrap();
    assert!(status.success(), "{command:?} failed");
}

pub fn wait_until(mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ready() {
        assert!(Instant::now() < deadline, "server did not come up");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A private Redis Cluster of 3 masters and 3 replicas (`scripts/redis-cluster`) on free ports, in
/// a temporary directory, with a 2 s `cluster-node-timeout`; killed on drop.
pub struct RedisCluster {
    dir: tempfile::TempDir,
    pub url: String,
}

impl RedisCluster {
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// A cluster that requires `password` and speaks TLS only (between its nodes too).
    pub fn start_with_tls(password: &str, certs: &Certificates) -> Self {
        let certs = certs.dir.path().to_str().unwrap();
        Self::start_with(&["--password", password, "--tls", certs])
    }

    fn start_with(options: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let up = Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/redis-cluster"))
            .arg("up")
            .arg(dir.path())
            .args(options)
            .stderr(Stdio::inherit())
            .output()
            .unwrap();
        assert!(up.status.success(), "the cluster did not start");
        let url = String::from_utf8(up.stdout).unwrap().trim().to_owned();
        Self { dir, url }
    }

    /// Settings for a gateway on this cluster.
    pub fn config(&self, writer: bool) -> ServeConfig {
        let mut config = test_config_on(Topology::Cluster);
        config.redis.redis_url = self.url.clone().into();
        config.writer.no_writer = !writer;
        config
    }

    /// A connection of the test's own, following the cluster's slots.
    pub async fn connect(&self) -> Connection {
        voucher_gateway::redis::Redis::open(&self.url, true, Duration::from_secs(1), None)
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    /// SIGKILL of the node on `port`: no shutdown, no save.
    pub fn kill(&self, port: u16) {
        let pid = std::fs::read_to_string(self.dir.path().join(format!("{port}.pid"))).unwrap();
        run(Command::new("kill").args(["-9", pid.trim()]));
    }

    /// Starts a killed node again with its cluster state (`scripts/redis-cluster restart`).
    pub fn restart(&self, port: u16) {
        run(
            Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/redis-cluster"))
                .arg("restart")
                .arg(self.dir.path())
                .arg(port.to_string()),
        );
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        let _ = Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/redis-cluster"))
            .arg("down")
            .arg(self.dir.path())
            .status();
    }
}

/// `redis-cli -p port args...`, its output.
pub fn redis_cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap()
}

/// A private certificate authority and a certificate it signed for 127.0.0.1, made with openssl:
/// `ca.crt`, `server.crt` and `server.key` in a temporary directory.
pub struct Certificates {
    pub dir: tempfile::TempDir,
}

impl Certificates {
    pub fn generate() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let openssl = |args: &[&str]| {
            run(Command::new("openssl")
                .args(args)
                .current_dir(dir.path())
                .stderr(Stdio::null()))
        };
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-subj",
            "/CN=voucher-gateway test CA",
        ]);
        openssl(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ]);
        // rustls checks the name against the subject alternative names only.
        std::fs::write(dir.path().join("san.ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
        openssl(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "1",
            "-out",
            "server.crt",
            "-extfile",
            "san.ext",
        ]);
        Self { dir }
    }

    pub fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.crt")
    }
}
