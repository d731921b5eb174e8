//! `GET /dashboard`, a live page of the sale served from the binary (one HTML file, its script
//! and style inline: no build step), and `GET /dashboard/data`, the one JSON document it polls
//! at most once a second. The document is computed at most once a second whatever the number of
//! open pages, so watching costs the gateway one small read a second.

use std::{sync::Arc, time::Duration};

use axum::{
    body::Bytes,
    extract::State,
    http::header,
    response::{Html, IntoResponse, Response},
};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Serialize;
use serde_json::json;

use super::error::ApiError;
use crate::{
    domain::Timestamp,
    gateway::{Gateway, Summary},
    health::Probe,
    memo::Memo,
    telemetry::metrics::HTTP_REQUESTS,
};

/// The campaigns the page shows: the newest.
const LIVE_CAMPAIGNS: usize = 20;

#[derive(Clone)]
pub struct Dashboard {
    gateway: Arc<Gateway>,
    probe: Arc<Probe>,
    metrics: PrometheusHandle,
    data: Arc<Memo<Result<Bytes, String>>>,
}

impl Dashboard {
    pub fn new(gateway: Arc<Gateway>, probe: Arc<Probe>, metrics: PrometheusHandle) -> Self {
        Self {
            gateway,
            probe,
            metrics,
            data: Arc::new(Memo::new(Duration::from_secs(1))),
        }
    }
}

/// The live page.
pub async fn page() -> Html<&'static str> {
    Html(include_str!("page.html"))
}

/// What the page shows, as of now (at most a second old).
pub async fn data(State(dashboard): State<Dashboard>) -> Result<Response, ApiError> {
    let data = dashboard
        .data
        .get(collect(&dashboard))
        .await
        .map_err(|error| {
            tracing::warn!(%error, "cannot read the dashboard's figures");
            ApiError::RedisUnavailable
        })?;
    Ok(([(header::CONTENT_TYPE, "application/json")], data).into_response())
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Campaign {
    #[serde(flatten)]
    summary: Summary,
    /// When a sold-out campaign's last voucher was granted.
    sold_out_at: Option<Timestamp>,
}

async fn collect(dashboard: &Dashboard) -> Result<Bytes, String> {
    let (summaries, _) = dashboard
        .gateway
        .campaigns(None, LIVE_CAMPAIGNS)
        .await
        .map_err(|error| error.to_string())?;
    let sold_out: Vec<_> = summaries
        .iter()
        .filter(|summary| summary.remaining == 0)
        .map(|summary| summary.id)
        .collect();
    let sold_out_at = dashboard
        .gateway
        .sold_out_at(&sold_out)
        .await
        .map_err(|error| error.to_string())?;
    let campaigns: Vec<_> = summaries
        .into_iter()
        .map(|summary| Campaign {
            sold_out_at: sold_out_at.get(&summary.id).copied(),
            summary,
        })
        .collect();
    let stats = dashboard.probe.outbox_stats().await?;
    let shards: Vec<_> = stats
        .iter()
        .enumerate()
        .map(|(shard, stats)| {
            json!({
                "shard": shard,
                "length": stats.length,
                "pending": stats.pending,
                "lagSeconds": stats.lag.map(|lag| lag.as_secs_f64()),
                "written": stats.written,
            })
        })
        .collect();
    let document = json!({
        "at": Timestamp::from(time::OffsetDateTime::now_utc()),
        "campaigns": campaigns,
        "shards": shards,
        "answers": answers(&dashboard.metrics.render()),
    });
    Ok(Bytes::from(
        serde_json::to_vec(&document).expect("the document serializes"),
    ))
}

/// The answers given since the process started, by status and outcome, from the metrics.
fn answers(rendered: &str) -> Vec<serde_json::Value> {
    let mut counts: std::collections::BTreeMap<(String, String), f64> = Default::default();
    for line in rendered.lines() {
        let Some(rest) = line
            .strip_prefix(HTTP_REQUESTS)
            .and_then(|r| r.strip_prefix('{'))
        else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once("} ") else {
            continue;
        };
        let label = |name: &str| {
            let start = labels.find(&format!("{name}=\""))? + name.len() + 2;
            let end = labels[start..].find('"')? + start;
            Some(labels[start..end].to_owned())
        };
        if let (Some(status), Some(outcome), Ok(value)) = (
            label("status"),
            label("outcome"),
            value.trim().parse::<f64>(),
        ) {
            *counts.entry((status, outcome)).or_default() += value;
        }
    }
    counts
        .into_iter()
        .map(|((status, outcome), count)| json!({"status": status, "outcome": outcome, "count": count}))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_summed_by_status_and_outcome_across_routes() {
        let rendered = "\
# TYPE vg_http_requests_total counter
vg_http_requests_total{route=\"/campaigns/{id}/redeem\",method=\"POST\",status=\"200\",outcome=\"redeemed\"} 5
vg_http_requests_total{route=\"/campaigns/{id}/close\",method=\"POST\",status=\"200\",outcome=\"redeemed\"} 1
vg_http_requests_total{route=\"/campaigns\",method=\"POST\",status=\"422\",outcome=\"invalid_field\"} 2
vg_http_request_duration_seconds_count{route=\"/campaigns\"} 7
";
        assert_eq!(
            answers(rendered),
            [
                json!({"status": "200", "outcome": "redeemed", "count": 6.0}),
                json!({"status": "422", "outcome": "invalid_field", "count": 2.0}),
            ]
        );
    }
}
