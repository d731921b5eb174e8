//! The operator's endpoints: liveness, readiness and metrics. They bypass the concurrency limit
//! and the tokens, so an overloaded gateway still tells its orchestrator what is going on. What
//! they compute is computed at most once a second, and they answer at most 1,000 requests a
//! second in all (the rest wait their turn), so a flood of them costs the gateway little and
//! its clients nothing: orchestrators and scrapers ask a few times a second. `/health`, which
//! computes nothing, is never paced: a liveness probe must not wait behind a flood.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
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
use tokio::{sync::Semaphore, time::Instant};

use super::error::{ApiError, Problem};
use crate::{
    health::{Probe, Readiness},
    memo::Memo,
    telemetry::metrics,
};

/// How the operator's endpoints but `/health` are paced: `AT_ONCE` requests at a time, each
/// holding its turn at least `HOLD` (so at most 1,000 a second in all), up to `WAITING` more
/// waiting for a turn in order; past that, 503 `overloaded` at once. A flood from many
/// connections then waits rather than spinning the gateway, and a request that gives up leaves
/// the queue.
const AT_ONCE: usize = 4;
const HOLD: Duration = Duration::from_millis(4);
const WAITING: usize = 256;

#[derive(Clone)]
pub struct Pace {
    turns: Arc<Semaphore>,
    waiting: Arc<AtomicUsize>,
}

impl Default for Pace {
    fn default() -> Self {
        Self {
            turns: Arc::new(Semaphore::new(AT_ONCE)),
            waiting: Arc::default(),
        }
    }
}

pub async fn paced(State(pace): State<Pace>, request: Request, next: Next) -> Response {
    let Some(waiting) = Waiting::enter(&pace.waiting) else {
        return ApiError::Overloaded.into_response();
    };
    let _turn = pace
        .turns
        .acquire()
        .await
        .expect("the turns are never closed");
    drop(waiting);
    let started = Instant::now();
    let response = next.run(request).await;
    tokio::time::sleep_until(started + HOLD).await;
    response
}

/// A request counted among those waiting for a turn, until it gets one or gives up.
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn enter(waiting: &'a AtomicUsize) -> Option<Self> {
        if waiting.fetch_add(1, Ordering::Relaxed) >= WAITING {
            waiting.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        Some(Self(waiting))
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
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
        (status = 503, description = "A check fails; its value says why (or overloaded: 256 operator requests wait already)",
            content((Readiness = "application/json"), (Problem = "application/problem+json"))),
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
    responses(
        (status = 200, description = "Prometheus text format", content_type = "text/plain", body = String),
        (status = 503, description = "overloaded: 256 operator requests wait already", content_type = "application/problem+json", body = Problem),
    ))]
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
