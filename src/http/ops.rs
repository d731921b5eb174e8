//! The operator's endpoints: liveness, readiness and metrics. They bypass the concurrency limit
//! and the tokens, so an overloaded gateway still tells its orchestrator what is going on.

use std::sync::Arc;

use axum::{
    Json,
    extract::State,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};
use metrics_exporter_prometheus::PrometheusHandle;

use crate::{
    health::{Probe, Readiness},
    telemetry::metrics,
};

#[derive(Clone)]
pub struct Ops {
    pub probe: Arc<Probe>,
    pub metrics: PrometheusHandle,
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

/// Prometheus metrics. The outbox figures are measured when scraped; the rest accumulates.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain", body = String)))]
pub async fn metrics(State(ops): State<Ops>) -> Response {
    let stats = ops.probe.outbox_stats().await;
    if let Err(error) = &stats {
        tracing::warn!(
            error = format!("{error:#}"),
            "cannot read the outbox figures"
        );
    }
    for shard in 0..ops.probe.shards().count() {
        let shard_stats = stats.as_ref().ok().map(|all| &all[usize::from(shard)]);
        metrics::record_outbox(shard, shard_stats);
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        ops.metrics.render(),
    )
        .into_response()
}
