//! The operator's endpoints: liveness, readiness and metrics. They bypass the concurrency limit
//! and the tokens, so an overloaded gateway still tells its orchestrator what is going on. What
//! they compute is computed at most once a second, and they answer at most `OPS_RATE` requests
//! a second in all (the rest wait their turn), so a flood of them costs the gateway little and
//! its clients nothing: orchestrators and scrapers ask a few times a second.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    Json,
    body::Bytes,
    extract::{Request, State},
    http::{StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::time::Instant;

use crate::{
    health::{Probe, Readiness},
    memo::Memo,
    telemetry::metrics,
};

/// Requests a second the operator's endpoints answer, in all.
const OPS_RATE: u32 = 1_000;

/// Paces the operator's endpoints: each request waits for the next of `OPS_RATE` turns a second.
#[derive(Clone, Default)]
pub struct Pace {
    next: Arc<Mutex<Option<Instant>>>,
}

pub async fn paced(State(pace): State<Pace>, request: Request, next: Next) -> Response {
    let turn = {
        let mut slot = pace.next.lock().expect("never poisoned");
        let now = Instant::now();
        let turn = slot.map_or(now, |next| next.max(now));
        *slot = Some(turn + Duration::from_secs(1) / OPS_RATE);
        turn
    };
    tokio::time::sleep_until(turn).await;
    next.run(request).await
}

#[derive(Clone)]
pub struct Ops {
    pub probe: Arc<Probe>,
    pub metrics: PrometheusHandle,
    /// The last rendering of the metrics.
    pub page: Arc<Memo<Bytes>>,
}

/// Liveness: the process is up and serving HTTP; nothing else is checked.
#[utoipa::path(get, path = "/health", tag = "operations",
    responses((status = 200, description = "Alive", body = Object, example = json!({"status": "ok"}))))]
pub async fn health() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

/// Readiness: Redis and PostgreSQL reachable, migrations applied, outbox lag under its bound.
#[utoipa::path(get, path = "/ready", tag = "operations",
    responses(
        (status = 200, description = "Every check passes", body = Readiness),
        (status = 503, description = "A check fails; its value says why", body = Readiness),
    ))]
pub async fn ready(State(ops): State<Ops>) -> Response {
    let readiness = ops.probe.readiness().await;
    let status = if readiness.is_ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(readiness)).into_response()
}

/// Prometheus metrics. The outbox figures are measured when scraped; the rest accumulates. One
/// rendering serves every scrape within a second.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain", body = String)))]
pub async fn metrics(State(ops): State<Ops>) -> Response {
    let page = ops.page.get(render(&ops)).await;
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        page,
    )
        .into_response()
}

async fn render(ops: &Ops) -> Bytes {
    let stats = ops.probe.outbox_stats().await;
    if let Err(error) = &stats {
        tracing::warn!(%error, "cannot read the outbox figures");
    }
    for shard in 0..ops.probe.shards().count() {
        let shard_stats = stats.as_ref().ok().map(|all| &all[usize::from(shard)]);
        metrics::record_outbox(shard, shard_stats);
    }
    Bytes::from(ops.metrics.render())
}
