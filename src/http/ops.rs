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

use crate::{health::Probe, telemetry::metrics};

#[derive(Clone)]
pub struct Ops {
    pub probe: Arc<Probe>,
    pub metrics: PrometheusHandle,
}

/// The process is up and serving HTTP; nothing else is checked.
pub async fn health() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

/// 200 when every check passes, 503 naming the failing ones otherwise.
pub async fn ready(State(ops): State<Ops>) -> Response {
    let readiness = ops.probe.readiness().await;
    let status = if readiness.is_ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(readiness)).into_response()
}

/// Prometheus text format. The outbox figures are measured now; the rest accumulates.
pub async fn metrics(State(ops): State<Ops>) -> Response {
    match ops.probe.outbox_stats().await {
        Ok(stats) => {
            for (shard, stats) in (0..).zip(&stats) {
                metrics::record_outbox(shard, stats);
            }
        }
        Err(error) => tracing::warn!(
            error = format!("{error:#}"),
            "cannot read the outbox figures"
        ),
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
