//! Prometheus metrics through the `metrics` facade. The recorder is process-wide (the facade has
//! one global recorder), installed on first use; `GET /metrics` renders it. Every name is defined
//! here, with its help text, so what the code records and what README.md lists stay one list.

use std::{sync::OnceLock, time::Duration};

use metrics::{Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::redis::scripts::OutboxStats;

pub const HTTP_REQUESTS: &str = "vg_http_requests_total";
pub const HTTP_DURATION: &str = "vg_http_request_duration_seconds";
pub const HTTP_CONNECTIONS_OPEN: &str = "vg_http_connections_open";
pub const HTTP_CONNECTIONS_REFUSED: &str = "vg_http_connections_refused_total";
pub const HTTP_CONNECTIONS_CLOSED: &str = "vg_http_connections_closed_total";
pub const REDEEM_SCRIPT_DURATION: &str = "vg_redeem_script_duration_seconds";
pub const ACK_WAIT_DURATION: &str = "vg_ack_wait_seconds";
pub const HYDRATIONS: &str = "vg_hydrations_total";
pub const WRITER_BATCH_SIZE: &str = "vg_writer_batch_size";
pub const WRITER_COMMIT_DURATION: &str = "vg_writer_commit_duration_seconds";
pub const WRITER_ROWS: &str = "vg_writer_rows_total";
pub const WRITER_REJECTED: &str = "vg_writer_rejected_total";
pub const WRITER_CLAIMED: &str = "vg_writer_claimed_total";
pub const WRITER_ERRORS: &str = "vg_writer_errors_total";
pub const WRITER_DEAD_LETTERED: &str = "vg_writer_dead_lettered_total";
pub const TASK_RESTARTS: &str = "vg_task_restarts_total";
pub const OUTBOX_LENGTH: &str = "vg_outbox_length";
pub const OUTBOX_PENDING: &str = "vg_outbox_pending";
pub const OUTBOX_OLDEST_PENDING_AGE: &str = "vg_outbox_oldest_pending_age_seconds";
pub const OUTBOX_LAG: &str = "vg_outbox_lag_seconds";

/// Latency buckets in seconds: a Redis round trip is well under a millisecond, a timeout seconds.
const SECONDS_BUCKETS: &[f64] = &[
    0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
    10.0,
];
const BATCH_BUCKETS: &[f64] = &[1.0, 10.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0];
/// How often histogram samples are folded into their buckets when nobody scrapes.
pub const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// The process's recorder, installed on first call.
pub fn handle() -> PrometheusHandle {
    HANDLE.get_or_init(install).clone()
}

fn install() -> PrometheusHandle {
    let recorder = PrometheusBuilder::new()
        .set_buckets(SECONDS_BUCKETS)
        .and_then(|builder| {
            builder.set_buckets_for_metric(Matcher::Full(WRITER_BATCH_SIZE.into()), BATCH_BUCKETS)
        })
        .expect("the bucket lists are not empty")
        .build_recorder();
    let handle = recorder.handle();
    if metrics::set_global_recorder(recorder).is_err() {
        tracing::warn!("another metrics recorder is installed; /metrics stays empty");
    }
    describe();
    // Counters of faults exist from the start at 0: a series that appears only with the first
    // fault leaves `rate()` and `increase()`, and so the alerts on them, blind to it.
    for name in [WRITER_ROWS, WRITER_REJECTED, WRITER_CLAIMED, WRITER_ERRORS] {
        counter!(name).absolute(0);
    }
    for kind in ["malformed", "refused"] {
        counter!(WRITER_DEAD_LETTERED, "kind" => kind).absolute(0);
    }
    handle
}

fn describe() {
    describe_counter!(
        HTTP_REQUESTS,
        "HTTP requests by route, method, status and outcome (the redeem decision, or the problem code)"
    );
    describe_histogram!(
        HTTP_DURATION,
        Unit::Seconds,
        "HTTP request latency by route and method"
    );
    describe_gauge!(HTTP_CONNECTIONS_OPEN, "HTTP connections open now");
    describe_counter!(
        HTTP_CONNECTIONS_REFUSED,
        "HTTP connections closed as soon as accepted: VG_MAX_CONNECTIONS were open"
    );
    describe_counter!(
        HTTP_CONNECTIONS_CLOSED,
        "HTTP connections the server closed, by reason: header_timeout (a request head not \
         received within VG_HEADER_READ_TIMEOUT) or idle_timeout (no request within \
         VG_IDLE_TIMEOUT)"
    );
    describe_histogram!(
        REDEEM_SCRIPT_DURATION,
        Unit::Seconds,
        "Round trip of one redeem.lua call, from the gateway"
    );
    describe_histogram!(
        ACK_WAIT_DURATION,
        Unit::Seconds,
        "How long a redeem waited for the durability --ack promises, by mode (replica: its group's scripts and WAIT; postgres: from its decision to its row's fate)"
    );
    describe_counter!(
        HYDRATIONS,
        "Campaign loads into Redis by result (loaded, absent, failed)"
    );
    describe_histogram!(
        WRITER_BATCH_SIZE,
        "Outbox entries per committed writer batch"
    );
    describe_histogram!(
        WRITER_COMMIT_DURATION,
        Unit::Seconds,
        "Time to store one batch in PostgreSQL, retries included"
    );
    describe_counter!(WRITER_ROWS, "Redemptions inserted into PostgreSQL");
    describe_counter!(
        WRITER_REJECTED,
        "Outbox entries PostgreSQL refused (see rejected_redemptions; run reconcile)"
    );
    describe_counter!(
        WRITER_CLAIMED,
        "Outbox entries taken over from a stalled writer"
    );
    describe_counter!(
        WRITER_ERRORS,
        "Writer steps or batch stores that failed and were retried"
    );
    describe_counter!(
        WRITER_DEAD_LETTERED,
        "Outbox entries moved to their shard's dead-letter stream, by kind: malformed (not \
         decodable) or refused (PostgreSQL refuses them for good); run reconcile"
    );
    describe_counter!(
        TASK_RESTARTS,
        "Background loops started again after they panicked or returned, by task"
    );
    describe_gauge!(OUTBOX_LENGTH, "Outbox entries not yet written, per shard");
    describe_gauge!(
        OUTBOX_PENDING,
        "Outbox entries read by a writer and not yet acknowledged, per shard"
    );
    describe_gauge!(
        OUTBOX_OLDEST_PENDING_AGE,
        Unit::Seconds,
        "Age of the oldest entry read and not yet acknowledged, per shard (0 when none)"
    );
    describe_gauge!(
        OUTBOX_LAG,
        Unit::Seconds,
        "Age of the oldest entry not yet written, per shard (0 when none)"
    );
}

/// Publishes one shard's outbox figures (measured when scraped, not tracked continuously);
/// `None` when they could not be read: NaN then, rather than the last figures going stale.
pub fn record_outbox(shard: u16, stats: Option<&OutboxStats>) {
    let shard = shard.to_string();
    let seconds = |age: Option<Duration>| age.unwrap_or_default().as_secs_f64();
    let [length, pending, oldest_pending_age, lag] = match stats {
        Some(stats) => [
            stats.length as f64,
            stats.pending as f64,
            seconds(stats.oldest_pending_age),
            seconds(stats.lag),
        ],
        None => [f64::NAN; 4],
    };
    gauge!(OUTBOX_LENGTH, "shard" => shard.clone()).set(length);
    gauge!(OUTBOX_PENDING, "shard" => shard.clone()).set(pending);
    gauge!(OUTBOX_OLDEST_PENDING_AGE, "shard" => shard.clone()).set(oldest_pending_age);
    gauge!(OUTBOX_LAG, "shard" => shard).set(lag);
}
