//! What an operator relies on: health and readiness, metrics, request ids, tokens, overload
//! protection, timeouts, and a graceful shutdown that loses nothing.

use std::{
    collections::HashSet,
    time::{Duration, Instant},
};

use redis::AsyncCommands;
use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio::process::Command;
use voucher_gateway::{health::Probe, redis::keys::Shards, supervise::Liveness};

use crate::{
    helpers::{
        RedisServer, TestApp, command_calls, database_url, free_port, http, lock_campaigns, metric,
        private_redis_config, redis_url, reset_command_stats, scrape, test_config,
    },
    load::Load,
    process::{GatewayProcess, create_campaign, private_database, signal},
};

async fn get_json(app: &TestApp, path: &str) -> (StatusCode, Value) {
    let response = app.client.get(app.url(path)).send().await.unwrap();
    let status = response.status();
    (status, response.json().await.unwrap())
}

/// The problem's `code`, after checking it is a problem+json body with `status`.
async fn problem_code(response: reqwest::Response, status: StatusCode) -> String {
    assert_eq!(response.status(), status);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    let body: Value = response.json().await.unwrap();
    body["code"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn health_and_ready_answer_and_every_response_carries_a_request_id() {
    let app = TestApp::spawn().await;
    let (status, body) = get_json(&app, "/health").await;
    assert_eq!((status, body), (StatusCode::OK, json!({"status": "ok"})));
    let (status, body) = get_json(&app, "/ready").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body,
        json!({"status": "ready", "checks": {"redis": "ok", "postgres": "ok", "migrations": "ok", "writers": "ok", "outbox": "ok"}})
    );

    let sent = app
        .client
        .get(app.url("/campaigns/not-a-uuid"))
        .header("x-request-id", "trace-me-42")
        .send()
        .await
        .unwrap();
    assert_eq!(sent.headers()["x-request-id"], "trace-me-42");
    // Absent, or unfit for a log line: a new UUID.
    for sent in [None, Some("with spaces"), Some(&*"x".repeat(129))] {
        let mut request = app.client.get(app.url("/nowhere"));
        if let Some(sent) = sent {
            request = request.header("x-request-id", sent);
        }
        let response = request.send().await.unwrap();
        let id = response.headers()["x-request-id"].to_str().unwrap();
        assert!(uuid::Uuid::try_parse(id).is_ok(), "{sent:?} -> {id}");
    }
}

/// Past the second one reading of the checks serves every probe.
const READING_SHARED: Duration = Duration::from_millis(1_100);

#[tokio::test]
async fn ready_names_what_is_wrong() {
    let mut redis = RedisServer::start();
    let database = private_database().await;
    let mut config = private_redis_config(&redis, false);
    config.database.database_url = database.clone().into();
    config.ready_max_outbox_lag = Duration::from_millis(200);
    let app = TestApp::spawn_with(config).await;
    // A flood of probes shares one reading a second: 16 outbox scripts each, not per probe.
    let mut con = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    reset_command_stats(&mut con).await;
    let probes = futures::future::join_all((0..200).map(|_| get_json(&app, "/ready"))).await;
    assert!(probes.iter().all(|(status, _)| *status == StatusCode::OK));
    let scripts = command_calls(&mut con, "evalsha").await;
    assert!(scripts <= 16 * 3, "{scripts} outbox scripts for 200 probes");

    // No writer runs: a redemption waits in the outbox until it is older than the bound.
    let id = app.create_campaign(10).await;
    assert_eq!(app.redeem(id, "u", "k").await.status, StatusCode::OK);
    tokio::time::sleep(READING_SHARED).await;
    let (status, body) = get_json(&app, "/ready").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["status"], "unavailable");
    assert_eq!(body["checks"]["redis"], "ok");
    let outbox = body["checks"]["outbox"].as_str().unwrap();
    assert!(outbox.contains("oldest unwritten redemption"), "{outbox}");

    let db = PgPool::connect(&database).await.unwrap();
    sqlx::query("delete from _sqlx_migrations where version = 3")
        .execute(&db)
        .await
        .unwrap();
    tokio::time::sleep(READING_SHARED).await;
    let (_, body) = get_json(&app, "/ready").await;
    assert_eq!(body["checks"]["postgres"], "ok");
    let migrations = body["checks"]["migrations"].as_str().unwrap();
    assert!(migrations.starts_with("not applied: [3]"), "{migrations}");

    redis.kill();
    tokio::time::sleep(READING_SHARED).await;
    let (status, body) = get_json(&app, "/ready").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let redis_check = body["checks"]["redis"].as_str().unwrap();
    assert!(redis_check.starts_with("unreachable"), "{redis_check}");
    assert_eq!(body["checks"]["outbox"], "unknown: Redis is unreachable");
    // Liveness does not depend on the servers.
    assert_eq!(get_json(&app, "/health").await.0, StatusCode::OK);
}

#[tokio::test]
async fn ready_names_a_shard_without_a_live_writer_loop() {
    let db = PgPool::connect(&database_url()).await.unwrap();
    let redis =
        voucher_gateway::redis::Redis::open(&redis_url(), false, Duration::from_secs(1), None)
            .unwrap()
            .connect()
            .await
            .unwrap();
    let shards = Shards::new(16);
    let liveness = Liveness::new(16);
    // Every shard's loop runs but shard 3's, which panicked and waits to start again.
    let alive: Vec<_> = (0..16)
        .filter(|s| *s != 3)
        .map(|s| liveness.enter(s))
        .collect();
    let max_lag = Duration::from_secs(30);
    let probe = Probe::new(
        redis.clone(),
        db.clone(),
        shards.clone(),
        max_lag,
        Some(liveness),
    );

    let readiness = probe.readiness().await;
    assert_eq!(readiness.status, "unavailable");
    assert_eq!(
        readiness.checks.writers,
        "no live writer in this process for shards [3]"
    );
    drop(alive);
    let without_writers = Probe::new(redis, db, shards, max_lag, None);
    assert_eq!(without_writers.readiness().await.checks.writers, "off");
}

#[tokio::test]
async fn metrics_count_what_happened() {
    // A process of its own (the recorder is process-wide) on a Redis of its own (no other
    // test's entries reach its writers): every figure is exact.
    let redis = RedisServer::start();
    let gateway = GatewayProcess::start(&database_url(), &redis.url(), &[]).await;
    let client = http();
    let campaign_id = create_campaign(&gateway.url, 3).await;
    let id = campaign_id.to_string();
    let redeem = |user: &str, key: &str| {
        client
            .post(format!("{}/campaigns/{id}/redeem", gateway.url))
            .json(&json!({"userId": user, "idempotencyKey": key}))
            .send()
    };
    for user in ["a", "b", "c", "d", "e"] {
        assert_eq!(redeem(user, user).await.unwrap().status(), StatusCode::OK);
    }
    redeem("a", "a").await.unwrap(); // replay
    redeem("b", "other").await.unwrap(); // already redeemed
    redeem("", "k").await.unwrap(); // 422
    let mut con = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let keys = Shards::new(16).campaign(campaign_id);
    let _: () = con.del(&[&keys.campaign, &keys.users]).await.unwrap();
    let summary = client
        .get(format!("{}/campaigns/{id}", gateway.url))
        .send()
        .await
        .unwrap();
    assert_eq!(summary.status(), StatusCode::OK); // hydrated again

    let deadline = Instant::now() + Duration::from_secs(10);
    let text = loop {
        let text = scrape(&gateway.url).await;
        // Rows are counted at the commit, the outbox emptied at the acknowledgement just after.
        let shard = Shards::new(16).of(campaign_id).to_string();
        let drained = metric(&text, "vg_outbox_length", &[("shard", shard.as_str())]) == 0.0;
        if (metric(&text, "vg_writer_rows_total", &[]) == 3.0 && drained)
            || Instant::now() > deadline
        {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let redeems = |outcome: &str| {
        metric(
            &text,
            "vg_http_requests_total",
            &[
                ("route", "/campaigns/{id}/redeem"),
                ("method", "POST"),
                ("outcome", outcome),
            ],
        )
    };
    assert_eq!(redeems("redeemed"), 3.0);
    assert_eq!(redeems("sold_out"), 2.0);
    assert_eq!(redeems("replayed"), 1.0);
    assert_eq!(redeems("already_redeemed"), 1.0);
    assert_eq!(redeems("invalid_field"), 1.0);
    let created = [("route", "/campaigns"), ("status", "201")];
    assert_eq!(metric(&text, "vg_http_requests_total", &created), 1.0);
    let latency = [("route", "/campaigns/{id}/redeem")];
    assert_eq!(
        metric(&text, "vg_http_request_duration_seconds_count", &latency),
        8.0
    );
    // Seven script calls decided; the 422 never reached Redis.
    assert_eq!(
        metric(&text, "vg_redeem_script_duration_seconds_count", &[]),
        7.0
    );
    let loaded = [("result", "loaded")];
    assert_eq!(metric(&text, "vg_hydrations_total", &loaded), 1.0);
    assert_eq!(metric(&text, "vg_writer_rows_total", &[]), 3.0);
    assert_eq!(metric(&text, "vg_writer_rejected_total", &[]), 0.0);
    assert_eq!(metric(&text, "vg_writer_batch_size_sum", &[]), 3.0);
    assert!(metric(&text, "vg_writer_commit_duration_seconds_count", &[]) >= 1.0);
    let shard = Shards::new(16).of(campaign_id).to_string();
    let this_shard = [("shard", shard.as_str())];
    assert_eq!(metric(&text, "vg_outbox_length", &this_shard), 0.0);
    assert_eq!(metric(&text, "vg_outbox_pending", &this_shard), 0.0);
    assert_eq!(metric(&text, "vg_outbox_lag_seconds", &this_shard), 0.0);
}

/// The id of the campaign a `POST /campaigns` created.
async fn created_id(created: reqwest::Response) -> String {
    assert_eq!(created.status(), StatusCode::CREATED);
    let body: Value = created.json().await.unwrap();
    body["id"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn bearer_tokens_guard_creation_and_redeems() {
    let mut config = test_config();
    config.admin_token = Some("admin-secret".into());
    config.api_token = Some("api-secret".into());
    let app = TestApp::spawn_with(config).await;
    let create = |token: Option<&str>| {
        let mut request = app
            .client
            .post(app.url("/campaigns"))
            .json(&json!({"name": "guarded", "total": 5}));
        if let Some(token) = token {
            request = request.header("authorization", token);
        }
        request.send()
    };
    for refused in [
        None,
        Some("Bearer wrong"),
        Some("Bearer api-secret"),
        Some("admin-secret"),
    ] {
        let response = create(refused).await.unwrap();
        assert_eq!(response.headers()["www-authenticate"], "Bearer");
        assert_eq!(
            problem_code(response, StatusCode::UNAUTHORIZED).await,
            "unauthorized"
        );
    }
    let id = created_id(create(Some("Bearer admin-secret")).await.unwrap()).await;
    // One or more spaces after the scheme, which is case-insensitive (RFC 9110).
    let spaced = create(Some("bearer   admin-secret")).await.unwrap();
    assert_eq!(spaced.status(), StatusCode::CREATED);

    let redeem = |token: &str| {
        app.client
            .post(app.url(&format!("/campaigns/{id}/redeem")))
            .header("authorization", token)
            .json(&json!({"userId": "u1", "idempotencyKey": "k1"}))
            .send()
    };
    let refused = redeem("Bearer admin-secret").await.unwrap();
    assert_eq!(
        problem_code(refused, StatusCode::UNAUTHORIZED).await,
        "unauthorized"
    );
    // The refused redeem changed nothing: the first accepted one is not a replay.
    let accepted = redeem("Bearer api-secret").await.unwrap();
    assert_eq!(accepted.status(), StatusCode::OK);
    assert!(accepted.headers().get("idempotent-replayed").is_none());
    // Reads and the operator's endpoints need no token.
    let summary = app.get_campaign(&id).await;
    assert_eq!(summary.status(), StatusCode::OK);
    assert_eq!(summary.json::<Value>().await.unwrap()["redeemed"], 1);
    for path in ["/health", "/ready", "/metrics"] {
        let response = app.client.get(app.url(path)).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path}");
    }
}

#[tokio::test]
async fn overload_is_refused_at_once_and_slow_requests_time_out() {
    let redis = RedisServer::start();
    let database = private_database().await;
    let mut config = private_redis_config(&redis, true);
    config.database.database_url = database.clone().into();
    config.database.db_timeout = Duration::from_secs(10);
    config.concurrency_limit = 2;
    config.request_timeout = Duration::from_secs(3);
    let app = TestApp::spawn_with(config).await;
    let (id, cold) = (app.create_campaign(10).await, app.create_campaign(10).await);
    // The cold campaign must load from PostgreSQL, which a table lock stalls: two reads of it
    // hold both places.
    let keys = app.keys(cold);
    let mut con = app.redis.clone();
    let _: () = con.del(&[&keys.campaign, &keys.users]).await.unwrap();
    let lock = lock_campaigns(&database).await;
    let stalled: Vec<_> = (0..2)
        .map(|_| {
            tokio::spawn(
                app.client
                    .get(app.url(&format!("/campaigns/{cold}")))
                    .send(),
            )
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;

    let started = Instant::now();
    let refused = app.post_redeem(id, "u1", "k1").await;
    assert!(started.elapsed() < Duration::from_secs(1), "not queued");
    assert_eq!(refused.headers()["retry-after"], "1");
    assert_eq!(
        problem_code(refused, StatusCode::SERVICE_UNAVAILABLE).await,
        "overloaded"
    );
    // The operator's endpoints are outside the limit.
    let health = app.client.get(app.url("/health")).send().await.unwrap();
    assert_eq!(health.status(), StatusCode::OK);

    for answer in futures::future::join_all(stalled).await {
        let answer = answer.unwrap().unwrap();
        assert_eq!(
            problem_code(answer, StatusCode::SERVICE_UNAVAILABLE).await,
            "timeout"
        );
    }
    lock.rollback().await.unwrap();
    // Nothing was decided for the refused request: its retry is the first decision.
    let retried = app.redeem(id, "u1", "k1").await;
    assert_eq!(
        (retried.status, retried.replayed),
        (StatusCode::OK, false),
        "{}",
        retried.body
    );
    assert_eq!(app.summary(id).await["redeemed"], 1);
}

#[tokio::test]
async fn a_stalled_redis_or_postgres_answers_503_within_its_timeout() {
    let redis = RedisServer::start();
    let database = private_database().await;
    let mut config = private_redis_config(&redis, true);
    config.database.database_url = database.clone().into();
    config.redis.redis_timeout = Duration::from_millis(300);
    config.database.db_timeout = Duration::from_millis(300);
    let app = TestApp::spawn_with(config).await;
    let id = app.create_campaign(10).await;

    signal(redis.pid(), "STOP");
    let started = Instant::now();
    let stalled = app.post_redeem(id, "u1", "k1").await;
    let waited = started.elapsed();
    signal(redis.pid(), "CONT");
    assert_eq!(
        problem_code(stalled, StatusCode::SERVICE_UNAVAILABLE).await,
        "redis_unavailable"
    );
    assert!(waited < Duration::from_secs(3), "took {waited:?}");

    // A table lock stalls campaign creation in PostgreSQL.
    let lock = lock_campaigns(&database).await;
    let started = Instant::now();
    let stalled = app
        .client
        .post(app.url("/campaigns"))
        .json(&json!({"name": "stalled", "total": 1}))
        .send()
        .await
        .unwrap();
    let waited = started.elapsed();
    lock.rollback().await.unwrap();
    assert_eq!(
        problem_code(stalled, StatusCode::SERVICE_UNAVAILABLE).await,
        "database_unavailable"
    );
    assert!(waited < Duration::from_secs(3), "took {waited:?}");

    // Both recover by themselves (the Redis connection reconnects first).
    let deadline = Instant::now() + Duration::from_secs(5);
    while app.redeem(id, "u1", "k1").await.status != StatusCode::OK {
        assert!(Instant::now() < deadline, "Redis never recovered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    app.create_campaign(1).await;
}

#[tokio::test]
async fn sigterm_under_load_exits_0_with_every_acknowledged_redemption_stored() {
    // A Redis of its own: no other writer can store what this process leaves behind.
    let redis = RedisServer::start();
    let mut gateway = GatewayProcess::start(
        &database_url(),
        &redis.url(),
        // Small batches and one writer per shard: it lags behind the load, so a backlog is
        // queued when the signal comes, and a part-filled batch waits in its hands.
        &[
            ("VG_WRITER_BATCH_SIZE", "20"),
            ("VG_WRITER_CONSUMERS", "1"),
            ("VG_WRITER_FLUSH_INTERVAL", "100ms"),
            ("VG_SHUTDOWN_TIMEOUT", "10s"),
        ],
    )
    .await;
    let id = create_campaign(&gateway.url, 1_000_000).await;
    let load = Load::start(vec![gateway.url.clone()], id, 16);
    load.wait_acked(500).await;
    let mut con = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let outbox = Shards::new(16).campaign(id).outbox;
    let queued: u64 = con.xlen(&outbox).await.unwrap();
    assert!(
        queued > 0,
        "no backlog to drain: the test would prove nothing"
    );

    let started = Instant::now();
    let status = gateway.terminate(Duration::from_secs(25)).await;
    let stopped = started.elapsed();
    let history = load.stop().await;
    assert!(status.success(), "exit status {status}");

    // Nothing restarted and no other writer ran: what is stored, the exiting process stored.
    let db = PgPool::connect(&database_url()).await.unwrap();
    let audit = history.audit(&db, id, &HashSet::new()).await;
    assert!(audit.lost.is_empty(), "lost {:?}", audit.lost);
    let left: u64 = con.xlen(&outbox).await.unwrap();
    assert_eq!(left, 0, "entries left in the outbox");
    eprintln!(
        "SIGTERM under load: {} acked, all stored ({queued} queued at the signal); exit 0 \
         {stopped:?} after the signal",
        audit.acked.len()
    );
}

#[tokio::test]
async fn every_log_line_of_a_request_names_its_request_id() {
    let mut redis = RedisServer::start();
    let settings = [("VG_REDIS_TIMEOUT", "300ms"), ("VG_LOG_FORMAT", "json")];
    let mut gateway = GatewayProcess::start_logged(&database_url(), &redis.url(), &settings).await;
    let id = create_campaign(&gateway.url, 5).await;
    redis.kill();
    // The failing request logs a warning from inside its handler.
    let answer = http()
        .get(format!("{}/campaigns/{id}", gateway.url))
        .header("x-request-id", "log-me-7")
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::SERVICE_UNAVAILABLE);
    let logs = gateway.terminate_with_logs(Duration::from_secs(20)).await;
    let warned: Vec<Value> = logs
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|line| line["fields"]["message"] == "Redis unavailable")
        .collect();
    assert!(!warned.is_empty(), "no warning logged:\n{logs}");
    for line in warned {
        assert_eq!(line["span"]["id"], "log-me-7", "{line}");
    }
}

#[tokio::test]
async fn no_token_or_password_reaches_a_log_line() {
    let secrets = [
        "admin-s3cret-1",
        "api-s3cret-2",
        "redis-s3cret-3",
        "pg-s3cret-4",
    ];
    let mut redis = RedisServer::start_with_password(secrets[2]);
    // Trust authentication ignores the password, so the URL works as it is.
    let database = database_url().replace("postgres@", &format!("postgres:{}@", secrets[3]));
    let settings = [
        ("VG_ADMIN_TOKEN", secrets[0]),
        ("VG_API_TOKEN", secrets[1]),
        ("RUST_LOG", "debug,voucher_gateway=trace"),
    ];
    let mut gateway = GatewayProcess::start_logged(&database, &redis.url(), &settings).await;
    let client = http();
    let created = client
        .post(format!("{}/campaigns", gateway.url))
        .bearer_auth(secrets[0])
        .json(&json!({"name": "secret", "total": 5}))
        .send()
        .await
        .unwrap();
    let id = created_id(created).await;
    let redeem = |token: &str| {
        client
            .post(format!("{}/campaigns/{id}/redeem", gateway.url))
            .bearer_auth(token)
            .json(&json!({"userId": "u", "idempotencyKey": "k"}))
            .send()
    };
    assert_eq!(redeem(secrets[1]).await.unwrap().status(), StatusCode::OK);
    assert_eq!(
        redeem(secrets[0]).await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );
    // Errors are logged with their causes: none may carry a secret.
    redis.kill();
    assert_eq!(
        redeem(secrets[1]).await.unwrap().status(),
        StatusCode::SERVICE_UNAVAILABLE
    );
    let mut logs = gateway.terminate_with_logs(Duration::from_secs(20)).await;
    // A gateway and a reconcile that cannot reach Redis name the URL in their last words.
    let unreachable = format!("redis://:{}@127.0.0.1:{}", secrets[2], free_port());
    let failed = Command::new(env!("CARGO_BIN_EXE_voucher-gateway"))
        .arg("serve")
        .env("DATABASE_URL", &database)
        .env("REDIS_URL", &unreachable)
        .env("VG_LISTEN", "127.0.0.1:0")
        .env("VG_ADMIN_TOKEN", secrets[0])
        .output()
        .await
        .unwrap();
    assert!(!failed.status.success());
    let reconciled = crate::process::reconcile(&database, &unreachable, &[]).await;
    logs += &String::from_utf8_lossy(&failed.stderr);
    logs += &reconciled.stderr;
    assert!(logs.contains("redis://:***@127.0.0.1"), "{logs}");
    assert!(logs.lines().count() > 20, "too few lines to tell: {logs}");
    for secret in secrets {
        assert!(!logs.contains(secret), "{secret} logged:\n{logs}");
    }
}
