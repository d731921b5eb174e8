//! Scaling out: three gateways on the Redis Cluster behind a real HAProxy (round robin), under
//! the k6 stress suite on a campaign that sells out during the run. k6 checks every answer and
//! the campaign's invariants; this test then holds PostgreSQL, Redis and reconcile to exact counts.

use std::{
    path::Path,
    process::{Child, Command, Stdio},
    time::Duration,
};

use serde_json::Value;

use crate::{
    helpers::{Topology, database_url, free_port, http, wait_persisted},
    process::{GatewayProcess, create_campaign, reconcile},
};

/// HAProxy in front of `backends` (ports), round robin, on a free port; stopped on drop.
struct HaProxy {
    url: String,
    _dir: tempfile::TempDir,
    child: Child,
}

impl HaProxy {
    async fn start(backends: &[u16]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let servers: String = backends
            .iter()
            .enumerate()
            .map(|(n, backend)| format!("    server gateway{n} 127.0.0.1:{backend}\n"))
            .collect();
        let config = format!(
            "global\n    maxconn 4096\n\
             defaults\n    mode http\n    timeout connect 2s\n    timeout client 30s\n    \
             timeout server 30s\n    option http-keep-alive\n\
             frontend public\n    bind 127.0.0.1:{port}\n    default_backend gateways\n\
             backend gateways\n    balance roundrobin\n{servers}"
        );
        let file = dir.path().join("haproxy.cfg");
        std::fs::write(&file, config).unwrap();
        let child = Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&file)
            .stdout(Stdio::null())
            .spawn()
            .expect("haproxy is installed (scripts/services)");
        let url = format!("http://127.0.0.1:{port}");
        let client = http();
        for _ in 0..100 {
            if client.get(format!("{url}/health")).send().await.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Self {
            url,
            _dir: dir,
            child,
        }
    }
}

impl Drop for HaProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
#[ignore = "a load test: scripts/test runs it on its own, after the others"]
async fn three_gateways_behind_haproxy_under_the_k6_stress_count_exactly() {
    let redis = Topology::Cluster.redis_url();
    let mut gateways = Vec::new();
    for _ in 0..3 {
        let settings = [("VG_REDIS_CLUSTER", "true")];
        gateways.push(GatewayProcess::start(&database_url(), &redis, &settings).await);
    }
    let ports: Vec<u16> = gateways.iter().map(|gateway| gateway.port).collect();
    let haproxy = HaProxy::start(&ports).await;
    let total = 5_000;
    let id = create_campaign(&haproxy.url, total).await;

    let id_text = id.to_string();
    let (summary, _) = run_k6(
        "stress",
        &[
            ("BASE_URL", haproxy.url.as_str()),
            ("CAMPAIGN_ID", id_text.as_str()),
            ("SCALE", "0.5"),
        ],
    );
    let invariants = &summary["invariants"];
    assert_eq!(invariants["ok"], true, "{summary:#}");
    assert_eq!(
        invariants["soldOut"], true,
        "the campaign sold out: {summary:#}"
    );
    assert_eq!(invariants["seen"], total, "k6 saw every voucher once");
    assert_eq!(summary["failed_rate"], 0.0);
    assert_eq!(summary["checks_rate"], 1.0);

    let db = sqlx::PgPool::connect(&database_url()).await.unwrap();
    wait_persisted(&db, id, total).await;
    let found = reconcile(
        &database_url(),
        &redis,
        &["--campaign", &id.to_string(), "--redis-cluster"],
    )
    .await;
    assert_eq!(found.code, 0, "{:#} {}", found.report, found.stderr);
    // Round robin: every gateway served its share.
    let mut served = Vec::new();
    for gateway in &gateways {
        served.push(gateway.metric("vg_http_requests_total", &[]).await);
    }
    let requests = summary["requests"].as_f64().unwrap();
    for share in &served {
        assert!(*share > requests / 4.0, "{served:?} of {requests}");
    }
    eprintln!(
        "three gateways on the cluster behind HAProxy, k6 stress: {requests} requests at {:.0}/s, \
         p99 {:.1} ms (debug builds), every check passed; {total} vouchers, sold out, each \
         REDEEMED once as k6 saw and in PostgreSQL; requests per gateway {served:?}",
        summary["rps"].as_f64().unwrap(),
        summary["p99_ms"].as_f64().unwrap(),
    );
}

#[tokio::test]
#[ignore = "a load test: scripts/test runs it on its own, after the others"]
async fn the_k6_flashsale_opens_on_the_second_and_its_winners_list_is_what_k6_was_told() {
    let gateway = GatewayProcess::start(&database_url(), &Topology::Single.redis_url(), &[]).await;
    let url = format!("http://127.0.0.1:{}", gateway.port);
    let (summary, printed) = run_k6(
        "flashsale",
        &[
            ("BASE_URL", url.as_str()),
            ("TOTAL", "1000"),
            ("OPEN_IN", "3"),
        ],
    );
    assert_eq!(summary["invariants"]["ok"], true, "{summary:#}");
    assert_eq!(summary["invariants"]["seen"], 1000, "{summary:#}");
    let winners = &summary["winners"];
    assert_eq!(winners["ok"], true, "{summary:#}");
    assert_eq!(winners["listed"], 1000);
    assert_eq!(winners["redeemedBeforeOpening"], 0);
    assert!(
        winners["early409"].as_f64().unwrap() >= 200.0,
        "{summary:#}"
    );
    eprintln!("{printed}");
}

/// Runs the k6 suite `k6/<suite>.ts` with `env`; fails the test when k6 does. Returns the suite's
/// JSON summary and what k6 printed.
fn run_k6(suite: &str, env: &[(&str, &str)]) -> (Value, String) {
    let summaries = tempfile::tempdir().unwrap();
    let k6 = Command::new("k6")
        .args(["run", "-q", &format!("k6/{suite}.ts")])
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")))
        .envs(env.iter().copied())
        // A correctness test on debug builds: latency is the benchmark's business.
        .env("P99_MS", "10000")
        .env("SUMMARY_DIR", summaries.path())
        .output()
        .expect("k6 is installed (scripts/test installs it)");
    let printed = String::from_utf8_lossy(&k6.stdout).into_owned();
    assert!(
        k6.status.success(),
        "k6 failed: {printed}{}",
        String::from_utf8_lossy(&k6.stderr)
    );
    let file = summaries.path().join(format!("{suite}.json"));
    let summary = serde_json::from_slice(&std::fs::read(file).unwrap()).unwrap();
    (summary, printed)
}
