//! The alert rules of `deploy/prometheus/alerts.yml` on a real Prometheus server (Debian's
//! package, on a free port) scraping a real gateway. promtool's unit tests of every rule run in
//! `scripts/test`; this shows the rules work on what the gateway really exports.

use std::{
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use redis::AsyncCommands;
use serde_json::Value;

use crate::helpers::{RedisServer, TestApp, free_port, http, private_redis_config, scrape};

/// A Prometheus server scraping `target` every second, evaluating the repository's rules every
/// second; stopped on drop.
struct Prometheus {
    url: String,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(target: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let rules =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/prometheus/alerts.yml");
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - {}\n\
             scrape_configs:\n  - job_name: voucher-gateway\n    static_configs:\n      - targets: ['{target}']\n",
            rules.display()
        );
        std::fs::write(dir.path().join("prometheus.yml"), config).unwrap();
        let port = free_port();
        let child = Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.path().join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus is installed (scripts/services installs it)");
        Self {
            url: format!("http://127.0.0.1:{port}"),
            child,
            _dir: dir,
        }
    }

    /// The state of each active alert named `name` ("pending" or "firing").
    async fn alert_states(&self, client: &reqwest::Client, name: &str) -> Vec<String> {
        let Ok(response) = client
            .get(format!("{}/api/v1/alerts", self.url))
            .send()
            .await
        else {
            return Vec::new();
        };
        let alerts: Value = response.json().await.unwrap_or(Value::Null);
        alerts["data"]["alerts"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|alert| alert["labels"]["alertname"] == name)
            .map(|alert| alert["state"].as_str().unwrap_or("").to_owned())
            .collect()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn a_real_prometheus_fires_the_outbox_lag_alert_when_the_writers_are_stopped() {
    let redis = RedisServer::start();
    let mut config = private_redis_config(&redis, false);
    config.ops_listen = Some(format!("127.0.0.1:{}", free_port()).parse().unwrap());
    let app = TestApp::spawn_with(config).await;
    let id = app.create_campaign(10).await;
    // The writers are stopped: a redemption acknowledged two minutes ago is still queued.
    let queued_ms = time::OffsetDateTime::now_utc().unix_timestamp() * 1000 - 120_000;
    let mut con = app.redis.clone();
    let _: String = con
        .xadd(
            &app.keys(id).outbox,
            format!("{queued_ms}-0"),
            &[("r", format!("{id}\nlate-user\nk\n1"))],
        )
        .await
        .unwrap();

    let ops = app.ops_address.clone().unwrap();
    let prometheus = Prometheus::start(ops.trim_start_matches("http://"));
    let client = http();
    let started = Instant::now();
    let mut seen_pending = false;
    loop {
        let states = prometheus
            .alert_states(&client, "VoucherGatewayOutboxLagHigh")
            .await;
        seen_pending |= states.iter().any(|state| state == "pending");
        if states.iter().any(|state| state == "firing") {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "the outbox-lag alert did not fire: {states:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(seen_pending, "pending for its 30 s first");
    assert!(
        prometheus
            .alert_states(&client, "VoucherGatewayDown")
            .await
            .is_empty(),
        "the gateway is up"
    );
    eprintln!(
        "a real Prometheus: VoucherGatewayOutboxLagHigh firing {:?} after it started scraping",
        started.elapsed()
    );
}

#[tokio::test]
async fn every_metric_the_grafana_dashboard_queries_is_exported() {
    let dashboard: Value = serde_json::from_slice(
        &std::fs::read(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("deploy/grafana/voucher-gateway.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let mut names: Vec<String> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|panel| panel["targets"].as_array().unwrap().iter())
        .flat_map(|target| {
            let expr = target["expr"].as_str().unwrap().to_owned();
            let mut found = Vec::new();
            let mut rest = expr.as_str();
            while let Some(at) = rest.find("vg_") {
                let name: String = rest[at..]
                    .chars()
                    .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                    .collect();
                rest = &rest[at + name.len()..];
                found.push(name);
            }
            found
        })
        .collect();
    names.sort();
    names.dedup();
    assert!(names.len() >= 10, "{names:?}");

    // Traffic that records every kind of series: redeems waiting for PostgreSQL (--ack
    // postgres), a problem answer, and a hydration.
    let mut config = crate::helpers::test_config_on(crate::helpers::Topology::Single);
    config.ack.mode = crate::helpers::Acked::Postgres;
    let app = TestApp::spawn_with(config).await;
    let id = app.create_campaign(10).await;
    for n in 0..3 {
        assert_eq!(
            app.redeem(id, format!("u{n}"), "k").await.outcome(),
            "REDEEMED"
        );
    }
    let unknown = voucher_gateway::domain::CampaignId::new_random();
    assert_eq!(app.redeem(unknown, "u", "k").await.status, 404);
    let exported = scrape(&app.address).await;
    for name in &names {
        assert!(
            exported.lines().any(|line| line.starts_with(name.as_str())),
            "the dashboard queries {name}, which /metrics does not export"
        );
    }
}
