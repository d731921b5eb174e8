//! Many clients at once through HTTP: every voucher counted exactly.

use std::collections::HashSet;

use futures::future::join_all;
use rstest::rstest;

use crate::helpers::{
    Acked, Answer, TestApp,
    Topology::{self, Cluster, Single},
    stored,
};

fn count(answers: &[Answer], outcome: &str) -> usize {
    answers.iter().filter(|a| a.outcome() == outcome).count()
}

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_users_racing_for_a_hundred_vouchers(
    #[values(Single, Cluster)] topology: Topology,
    #[values(Acked::Redis, Acked::Replica, Acked::Postgres)] ack: Acked,
) {
    let app = TestApp::spawn_acked(topology, ack).await;
    let id = app.create_campaign(100).await;

    let answers = join_all((0..1_000).map(|n| app.redeem(id, format!("user-{n}"), "k"))).await;

    assert!(answers.iter().all(|a| a.status == 200));
    assert_eq!(count(&answers, "REDEEMED"), 100);
    assert_eq!(count(&answers, "SOLD_OUT"), 900);
    let summary = app.summary(id).await;
    assert_eq!(
        (summary["redeemed"].as_i64(), summary["remaining"].as_i64()),
        (Some(100), Some(0))
    );
    app.wait_persisted(id, 100).await;
    let winners: HashSet<String> = answers
        .iter()
        .zip(0..)
        .filter(|(a, _)| a.outcome() == "REDEEMED")
        .map(|(_, n)| format!("user-{n}"))
        .collect();
    let rows = stored(&app.db, id).await;
    assert_eq!(
        rows.iter()
            .map(|(user, _, _)| user.clone())
            .collect::<HashSet<_>>(),
        winners
    );
    assert_eq!(
        rows.iter().map(|(_, _, seq)| *seq).collect::<Vec<_>>(),
        (1..=100).collect::<Vec<_>>()
    );
}

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_user_with_a_hundred_keys_gets_one_voucher(
    #[values(Single, Cluster)] topology: Topology,
    #[values(Acked::Redis, Acked::Replica, Acked::Postgres)] ack: Acked,
) {
    let app = TestApp::spawn_acked(topology, ack).await;
    let id = app.create_campaign(10).await;

    let answers = join_all((0..100).map(|n| app.redeem(id, "greedy", format!("key-{n}")))).await;

    assert_eq!(count(&answers, "REDEEMED"), 1);
    assert_eq!(count(&answers, "ALREADY_REDEEMED"), 99);
    assert_eq!(app.summary(id).await["redeemed"], 1);
    app.wait_persisted(id, 1).await;
}

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_request_sent_a_hundred_times_takes_one_voucher(
    #[values(Single, Cluster)] topology: Topology,
    #[values(Acked::Redis, Acked::Replica, Acked::Postgres)] ack: Acked,
) {
    let app = TestApp::spawn_acked(topology, ack).await;
    let id = app.create_campaign(10).await;

    let answers = join_all((0..100).map(|_| app.redeem(id, "retrier", "same-key"))).await;

    assert!(
        answers
            .iter()
            .all(|a| a.status == 200 && a.body == r#"{"status":"REDEEMED"}"#)
    );
    assert_eq!(
        answers.iter().filter(|a| !a.replayed).count(),
        1,
        "exactly one first answer"
    );
    assert_eq!(app.summary(id).await["redeemed"], 1);
    app.wait_persisted(id, 1).await;
    assert_eq!(
        stored(&app.db, id).await,
        [("retrier".into(), "same-key".into(), 1)]
    );
}

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn campaigns_hammered_at_once_do_not_interfere(
    #[values(Single, Cluster)] topology: Topology,
    #[values(Acked::Redis, Acked::Replica, Acked::Postgres)] ack: Acked,
) {
    let app = TestApp::spawn_acked(topology, ack).await;
    let totals = [5_i64, 20, 50, 200];
    let ids = join_all(totals.iter().map(|total| app.create_campaign(*total))).await;

    // The same 150 users go after every campaign at the same time.
    let requests = ids
        .iter()
        .flat_map(|id| (0..150).map(move |n| (*id, format!("user-{n}"))));
    let answers = join_all(requests.map(|(id, user)| {
        let app = &app;
        async move { (id, app.redeem(id, user, "k").await) }
    }))
    .await;

    for (id, total) in ids.iter().zip(totals) {
        let mine: Vec<Answer> = answers
            .iter()
            .filter(|(i, _)| i == id)
            .map(|(_, a)| a.clone())
            .collect();
        let granted = total.min(150) as usize;
        assert_eq!(count(&mine, "REDEEMED"), granted, "campaign of {total}");
        assert_eq!(
            count(&mine, "SOLD_OUT"),
            150 - granted,
            "campaign of {total}"
        );
        let summary = app.summary(*id).await;
        assert_eq!(summary["redeemed"].as_i64(), Some(granted as i64));
        assert_eq!(summary["remaining"].as_i64(), Some(total - granted as i64));
        app.wait_persisted(*id, granted as i64).await;
    }
}
