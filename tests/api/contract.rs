use reqwest::StatusCode;
use rstest::rstest;
use serde_json::{Value, json};

use crate::helpers::{
    Acked, TestApp,
    Topology::{self, Cluster, Single},
};

#[rstest]
#[tokio::test]
async fn creating_a_campaign_answers_201_with_location_and_summary(
    #[values(Single, Cluster)] topology: Topology,
    #[values(Acked::Redis, Acked::Replica, Acked::Postgres)] ack: Acked,
) {
    let app = TestApp::spawn_acked(topology, ack).await;

    let response = app
        .client
        .post(app.url("/campaigns"))
        .json(&json!({"name": "  Café 🎫 ", "total": 3}))
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), StatusCode::CREATED);
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    let body: Value = response.json().await.unwrap();
    let id = body["id"].as_str().unwrap();
    assert_eq!(location, format!("/campaigns/{id}"));
    assert_eq!(
        body,
        json!({"id": id, "name": "Café 🎫", "total": 3, "redeemed": 0, "remaining": 3, "startsAt": null, "endsAt": null})
    );
    let fetched: Value = app.get_json(&location).await;
    assert_eq!(fetched, body);
}

#[rstest]
#[tokio::test]
async fn the_three_outcomes_and_the_replay_header(
    #[values(Single, Cluster)] topology: Topology,
    #[values(Acked::Redis, Acked::Replica, Acked::Postgres)] ack: Acked,
) {
    let app = TestApp::spawn_acked(topology, ack).await;
    let id = app.create_campaign(1).await;

    let first = app.redeem(id, "alice", "k1").await;
    let replay = app.redeem(id, "alice", "k1").await;
    let second_key = app.redeem(id, "alice", "k2").await;
    let other_user = app.redeem(id, "bob", "k1").await;

    assert_eq!(
        (first.status, first.body.as_str(), first.replayed),
        (StatusCode::OK, r#"{"status":"REDEEMED"}"#, false)
    );
    assert_eq!(
        (replay.status, replay.body.as_str(), replay.replayed),
        (StatusCode::OK, r#"{"status":"REDEEMED"}"#, true)
    );
    assert_eq!(second_key.body, r#"{"status":"ALREADY_REDEEMED"}"#);
    assert!(!second_key.replayed);
    assert_eq!(other_user.body, r#"{"status":"SOLD_OUT"}"#);
    let summary = app.summary(id).await;
    assert_eq!(
        (summary["redeemed"].as_i64(), summary["remaining"].as_i64()),
        (Some(1), Some(0))
    );
}

#[rstest]
#[tokio::test]
async fn the_idempotency_key_may_come_as_a_header(
    #[values(Single, Cluster)] topology: Topology,
    #[values(Acked::Redis, Acked::Replica, Acked::Postgres)] ack: Acked,
) {
    let app = TestApp::spawn_acked(topology, ack).await;
    let id = app.create_campaign(5).await;
    let redeem = |key_header: &'static str, body: Value| {
        app.client
            .post(app.url(&format!("/campaigns/{id}/redeem")))
            .header("Idempotency-Key", key_header)
            .json(&body)
            .send()
    };

    let first = redeem("h-1", json!({"userId": "carol"})).await.unwrap();
    assert_eq!(first.status(), StatusCode::OK);
    assert!(first.headers().get("idempotent-replayed").is_none());
    // The same key sent in the body, and as a quoted structured-field string, is a replay.
    let same_in_both = redeem("h-1", json!({"userId": "carol", "idempotencyKey": "h-1"}))
        .await
        .unwrap();
    assert_eq!(same_in_both.headers()["idempotent-replayed"], "true");
    let quoted = redeem("\"h-1\"", json!({"userId": "carol"})).await.unwrap();
    assert_eq!(quoted.headers()["idempotent-replayed"], "true");
    assert_eq!(quoted.text().await.unwrap(), r#"{"status":"REDEEMED"}"#);

    let mismatch = redeem("h-1", json!({"userId": "dave", "idempotencyKey": "other"}))
        .await
        .unwrap();
    assert_eq!(mismatch.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let problem: Value = mismatch.json().await.unwrap();
    assert_eq!(problem["code"], "idempotency_key_mismatch");
    assert_eq!(app.summary(id).await["redeemed"], 1);
}

#[rstest]
#[tokio::test]
async fn unicode_user_ids_and_keys_are_accepted(
    #[values(Single, Cluster)] topology: Topology,
    #[values(Acked::Redis, Acked::Replica, Acked::Postgres)] ack: Acked,
) {
    let app = TestApp::spawn_acked(topology, ack).await;
    let id = app.create_campaign(2).await;

    let answer = app.redeem(id, "Zoë 🎫", "clé-✓").await;
    let replay = app.redeem(id, "Zoë 🎫", "clé-✓").await;

    assert_eq!(answer.outcome(), "REDEEMED");
    assert!(replay.replayed);
    app.wait_persisted(id, 1).await;
    let stored = crate::helpers::stored(&app.db, id).await;
    assert_eq!(stored, [("Zoë 🎫".to_owned(), "clé-✓".to_owned(), 1)]);
}

#[rstest]
#[tokio::test]
async fn an_unknown_campaign_is_a_404_problem(
    #[values(Single, Cluster)] topology: Topology,
    #[values(Acked::Redis, Acked::Replica, Acked::Postgres)] ack: Acked,
) {
    let app = TestApp::spawn_acked(topology, ack).await;
    let id = uuid::Uuid::new_v4();

    let summary = app.get_campaign(id).await;
    let redeem = app.post_redeem(id, "u", "k").await;

    for response in [summary, redeem] {
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json"
        );
        let problem: Value = response.json().await.unwrap();
        assert_eq!(problem["code"], "campaign_not_found");
        assert_eq!(problem["status"], 404);
    }
}

#[tokio::test]
async fn an_idempotency_key_header_in_iso_8859_1_is_the_key_it_spells() {
    let app = TestApp::spawn_on(Single).await;
    let id = app.create_campaign(5).await;
    let response = app
        .client
        .post(app.url(&format!("/campaigns/{id}/redeem")))
        .header(
            "idempotency-key",
            reqwest::header::HeaderValue::from_bytes(b"caf\xe9").unwrap(),
        )
        .json(&json!({"userId": "alice"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let replay = app.redeem(id, "alice", "café").await;
    assert_eq!(
        (replay.body.as_str(), replay.replayed),
        (r#"{"status":"REDEEMED"}"#, true)
    );
}
