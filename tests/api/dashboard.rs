//! The live page: served from the binary, its one data document agreeing with the API, and
//! guarded by the admin token when one is set.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::{TestApp, Topology::Single, test_config_on};

#[tokio::test]
async fn the_page_is_served_from_the_binary() {
    let app = TestApp::spawn_on(Single).await;
    let page = app.client.get(app.url("/dashboard")).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    assert!(
        page.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let html = page.text().await.unwrap();
    assert!(html.contains("/dashboard/data") && html.contains("Live campaigns"));
}

#[tokio::test]
async fn its_data_agree_with_the_api() {
    let app = TestApp::spawn_on(Single).await;
    let id = app.create_campaign(3).await;
    for user in ["a", "b", "c"] {
        assert_eq!(app.redeem(id, user, "k").await.outcome(), "REDEEMED");
    }
    assert_eq!(app.redeem(id, "d", "k").await.outcome(), "SOLD_OUT");
    crate::faults::wait_drained_on(&mut app.redis.clone()).await;
    let summary = app.summary(id).await;

    // The document is at most a second old: wait for one that has the sale's end.
    let deadline = Instant::now() + Duration::from_secs(10);
    let (data, campaign) = loop {
        let data: Value = app.get_json("/dashboard/data").await;
        let campaign = data["campaigns"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["id"] == summary["id"])
            .cloned();
        if let Some(campaign) = campaign.filter(|c| c["soldOutAt"].is_string()) {
            break (data, campaign);
        }
        assert!(Instant::now() < deadline, "{data:#}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    for field in [
        "name",
        "total",
        "redeemed",
        "remaining",
        "startsAt",
        "endsAt",
    ] {
        assert_eq!(campaign[field], summary[field], "{field}");
    }
    assert_eq!(data["shards"].as_array().unwrap().len(), 16);
    let sold_out: f64 = data["answers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["outcome"] == "sold_out")
        .map(|a| a["count"].as_f64().unwrap())
        .sum();
    assert!(sold_out >= 1.0, "{data:#}");
}

#[tokio::test]
async fn with_an_admin_token_it_needs_it_as_a_bearer_token_or_a_password() {
    let mut config = test_config_on(Single);
    config.admin_token = Some("admin-secret".into());
    let app = TestApp::spawn_with(config).await;
    for path in ["/dashboard", "/dashboard/data"] {
        let refused = app.client.get(app.url(path)).send().await.unwrap();
        assert_eq!(refused.status(), StatusCode::UNAUTHORIZED, "{path}");
        assert!(
            refused.headers()["www-authenticate"]
                .to_str()
                .unwrap()
                .starts_with("Basic realm="),
            "a browser is asked for the token"
        );
        let get = || app.client.get(app.url(path));
        for (request, expected) in [
            (get().bearer_auth("admin-secret"), StatusCode::OK),
            (
                get().basic_auth("anyone", Some("admin-secret")),
                StatusCode::OK,
            ),
            (
                get().basic_auth("admin-secret", Some("guess")),
                StatusCode::UNAUTHORIZED,
            ),
        ] {
            assert_eq!(request.send().await.unwrap().status(), expected, "{path}");
        }
    }
}

#[tokio::test]
async fn headless_chromium_shows_what_the_api_says_polling_at_most_once_a_second() {
    let app = TestApp::spawn_on(Single).await;
    let id = app.create_campaign(50).await;
    // Traffic while the page is open.
    let traffic = tokio::spawn({
        let (client, url) = (
            app.client.clone(),
            app.url(&format!("/campaigns/{id}/redeem")),
        );
        async move {
            for n in 0..30 {
                let body = serde_json::json!({"userId": format!("u{n}"), "idempotencyKey": "k"});
                client.post(&url).json(&body).send().await.unwrap();
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    });
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let screenshot = root.join("target/dashboard.png");
    let browser = tokio::process::Command::new("node")
        .arg(root.join("tests/browser/dashboard.mjs"))
        .env("BASE_URL", &app.address)
        .env("CAMPAIGN", id.to_string())
        .env("WATCH_MS", "5000")
        .env("SCREENSHOT", &screenshot)
        .output()
        .await
        .expect("node runs (scripts/test installs it, chromium and playwright-core)");
    traffic.await.unwrap();
    assert!(
        browser.status.success(),
        "{}{}",
        String::from_utf8_lossy(&browser.stdout),
        String::from_utf8_lossy(&browser.stderr)
    );
    let seen: Value = serde_json::from_slice(&browser.stdout).unwrap();
    let (shown, summary) = (&seen["shown"], &seen["summary"]);
    assert_eq!(shown["remaining"], summary["remaining"], "{seen:#}");
    assert_eq!(shown["redeemed"], summary["redeemed"], "{seen:#}");
    assert_eq!(summary["redeemed"], 30);
    let seconds = seen["watched"].as_f64().unwrap() / 1000.0;
    let counted = seen["counted"].as_f64().unwrap();
    assert!(
        counted <= seconds.ceil() + 1.0,
        "{counted} data requests in {seconds} s"
    );
    assert!(
        counted >= seconds.floor() - 1.0,
        "it kept polling: {counted} in {seconds} s"
    );
    assert_eq!(seen["phoneOverflow"], false, "readable on a phone's width");
    assert!(screenshot.exists());
    eprintln!("headless Chromium: {seen}");
}
