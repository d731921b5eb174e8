//! Client load for fault tests, and the checks on its recorded history. Each client redeems as new
//! users, replays its own earlier requests, and tries second keys for users it holds, at a steady
//! pace; it retries a request that got no decision (503, connection refused, timeout) with the
//! same key, as a real client would, possibly on another gateway. Every attempt and answer is
//! recorded.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use rand::{Rng, SeedableRng, rngs::StdRng};
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use voucher_gateway::domain::CampaignId;

use crate::helpers::stored;

/// The pause between one client's requests: a steady load of up to 200 requests a second per
/// client, so that the backlog a fault leaves grows with the fault's length, not with how fast
/// this machine happens to be today.
const PACE: Duration = Duration::from_millis(5);

/// What one client did for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    New,
    Replay,
    SecondKey,
}

/// One attempt and what came back.
#[derive(Debug, Clone)]
pub struct Record {
    pub user: String,
    pub key: String,
    pub kind: Kind,
    /// The `status` of a 200 answer; `None` when there was no decision.
    pub decision: Option<String>,
    pub body: String,
    /// The `Retry-After` header of a 503.
    pub retry_after: Option<String>,
    /// Which phase of the test the attempt was made in.
    pub phase: usize,
    /// When the answer came.
    pub at: Instant,
}

pub struct Load {
    stop: CancellationToken,
    phase: Arc<AtomicUsize>,
    acked: Arc<AtomicUsize>,
    /// The users told REDEEMED so far.
    acked_users: Arc<Mutex<Vec<String>>>,
    id: CampaignId,
    clients: Vec<tokio::task::JoinHandle<Vec<Record>>>,
}

impl Load {
    /// Starts `clients` clients on campaign `id`, spreading requests over `gateways` (base URLs).
    pub fn start(gateways: Vec<String>, id: CampaignId, clients: usize) -> Self {
        let stop = CancellationToken::new();
        let phase = Arc::new(AtomicUsize::new(0));
        let acked = Arc::new(AtomicUsize::new(0));
        let acked_users = Arc::new(Mutex::new(Vec::new()));
        let gateways = Arc::new(gateways);
        let run = format!("{:08x}", rand::random::<u32>());
        let clients = (0..clients)
            .map(|n| {
                let client = Client {
                    http: reqwest::Client::builder()
                        .timeout(Duration::from_secs(3))
                        .build()
                        .unwrap(),
                    gateways: gateways.clone(),
                    id,
                    name: format!("{run}-{n}"),
                    phase: phase.clone(),
                    acked: acked.clone(),
                    acked_users: acked_users.clone(),
                    stop: stop.clone(),
                };
                tokio::spawn(client.run())
            })
            .collect();
        Self {
            stop,
            phase,
            acked,
            acked_users,
            id,
            clients,
        }
    }

    /// Waits until PostgreSQL holds every redemption acknowledged so far, and returns how long
    /// after `since` (the service's return after a fault) that was.
    pub async fn durable_after(&self, db: &PgPool, since: Instant) -> Duration {
        let users = self.acked_users.lock().unwrap().clone();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let stored: i64 = sqlx::query_scalar(
                "select count(*) from redemptions where campaign_id = $1 and user_id = any($2)",
            )
            .bind(self.id.as_uuid())
            .bind(&users)
            .fetch_one(db)
            .await
            .unwrap_or(-1);
            if stored == users.len() as i64 {
                return since.elapsed();
            }
            assert!(
                Instant::now() < deadline,
                "{stored} of {} acknowledged redemptions stored",
                users.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// New users told REDEEMED so far.
    pub fn acked(&self) -> usize {
        self.acked.load(Ordering::Relaxed)
    }

    /// Waits until at least `count` new users were told REDEEMED.
    pub async fn wait_acked(&self, count: usize) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while self.acked() < count {
            assert!(
                tokio::time::Instant::now() < deadline,
                "only {} acked",
                self.acked()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Marks the following attempts as made in the next phase.
    pub fn next_phase(&self) {
        self.phase.fetch_add(1, Ordering::Relaxed);
    }

    /// Stops every client and returns the whole history.
    pub async fn stop(self) -> History {
        self.stop.cancel();
        let mut records = Vec::new();
        for client in self.clients {
            records.extend(client.await.unwrap());
        }
        History { records }
    }
}

struct Client {
    http: reqwest::Client,
    gateways: Arc<Vec<String>>,
    id: CampaignId,
    name: String,
    phase: Arc<AtomicUsize>,
    acked: Arc<AtomicUsize>,
    acked_users: Arc<Mutex<Vec<String>>>,
    stop: CancellationToken,
}

impl Client {
    async fn run(self) -> Vec<Record> {
        let mut rng = StdRng::from_os_rng();
        let mut records = Vec::new();
        let mut held: Vec<(String, String)> = Vec::new();
        let mut next_user = 0;
        while !self.stop.is_cancelled() {
            let roll = rng.random_range(0..10);
            let (user, key, kind) = match held.len() {
                n if n > 0 && roll == 8 => {
                    let (user, key) = held[rng.random_range(0..n)].clone();
                    (user, key, Kind::Replay)
                }
                n if n > 0 && roll == 9 => {
                    let (user, _) = held[rng.random_range(0..n)].clone();
                    (user, uuid::Uuid::new_v4().to_string(), Kind::SecondKey)
                }
                _ => {
                    next_user += 1;
                    let user = format!("{}-{next_user}", self.name);
                    (user, uuid::Uuid::new_v4().to_string(), Kind::New)
                }
            };
            let decision = self
                .until_decided(&user, &key, kind, &mut records, &mut rng)
                .await;
            if kind == Kind::New && decision.as_deref() == Some("REDEEMED") {
                self.acked_users.lock().unwrap().push(user.clone());
                self.acked.fetch_add(1, Ordering::Relaxed);
                held.push((user, key));
            }
            tokio::time::sleep(PACE).await;
        }
        records
    }

    /// Sends one request until it gets a decision or the load stops, recording every attempt.
    async fn until_decided(
        &self,
        user: &str,
        key: &str,
        kind: Kind,
        records: &mut Vec<Record>,
        rng: &mut StdRng,
    ) -> Option<String> {
        loop {
            let gateway = &self.gateways[rng.random_range(0..self.gateways.len())];
            let sent = self
                .http
                .post(format!("{gateway}/campaigns/{}/redeem", self.id))
                .json(&json!({"userId": user, "idempotencyKey": key}))
                .send()
                .await;
            let mut retry_after = None;
            let (decision, body) = match sent {
                Ok(response) => {
                    let ok = response.status().is_success();
                    let status = response.status();
                    retry_after = response
                        .headers()
                        .get("retry-after")
                        .map(|value| value.to_str().unwrap().to_owned());
                    let body = response.text().await.unwrap_or_default();
                    assert!(
                        ok || status == reqwest::StatusCode::SERVICE_UNAVAILABLE,
                        "only 200 or 503 may answer a valid redeem: {status} {body}"
                    );
                    let decision = ok.then(|| {
                        let parsed: Value = serde_json::from_str(&body).unwrap();
                        parsed["status"].as_str().unwrap().to_owned()
                    });
                    (decision, body)
                }
                Err(error) => (None, error.to_string()),
            };
            records.push(Record {
                user: user.to_owned(),
                key: key.to_owned(),
                kind,
                decision: decision.clone(),
                body,
                retry_after,
                phase: self.phase.load(Ordering::Relaxed),
                at: Instant::now(),
            });
            if decision.is_some() || self.stop.is_cancelled() {
                return decision;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Everything the clients saw.
pub struct History {
    pub records: Vec<Record>,
}

impl History {
    /// Both histories as one (two loads on the same campaign).
    pub fn merge(mut self, other: History) -> History {
        self.records.extend(other.records);
        self
    }

    /// The longest time without any decision from `since` on: how long a fault at `since` kept
    /// the clients waiting.
    pub fn longest_silence_after(&self, since: Instant) -> Duration {
        let mut times: Vec<Instant> = self
            .decided()
            .map(|r| r.at)
            .filter(|at| *at >= since)
            .collect();
        times.sort();
        let mut last = since;
        let mut longest = Duration::ZERO;
        for at in times {
            longest = longest.max(at - last);
            last = at;
        }
        longest
    }

    /// Answers that were not a decision (a 503 or no answer at all), and the 503s among them
    /// without a `Retry-After`.
    pub fn undecided_and_without_retry_after(&self) -> (usize, usize) {
        let undecided: Vec<&Record> = self
            .records
            .iter()
            .filter(|r| r.decision.is_none())
            .collect();
        let without = undecided
            .iter()
            .filter(|r| r.body.contains("\"status\":503") && r.retry_after.is_none())
            .count();
        (undecided.len(), without)
    }

    /// How long after `since` the first decision came.
    pub fn first_decision_after(&self, since: Instant) -> Duration {
        self.decided()
            .filter(|r| r.at >= since)
            .map(|r| r.at - since)
            .min()
            .expect("a decision after the fault")
    }
}

/// The history held against PostgreSQL.
#[derive(Debug)]
pub struct Audit {
    /// Users told REDEEMED (first key they were told it for).
    pub acked: HashMap<String, String>,
    /// Acknowledged users PostgreSQL does not hold.
    pub lost: Vec<String>,
    /// Attempts that got no decision (503 or no answer).
    pub undecided: usize,
}

impl History {
    /// The decided attempts.
    pub fn decided(&self) -> impl Iterator<Item = &Record> {
        self.records.iter().filter(|r| r.decision.is_some())
    }

    /// Checks the history against what PostgreSQL holds: no user told REDEEMED under two keys
    /// (except `exempt` users, whose grant the failure model allows to be lost), every answer to
    /// the same request identical, every acknowledged redemption stored with its key, once (an
    /// exempt user's with any of their keys).
    pub async fn audit(&self, db: &PgPool, id: CampaignId, exempt: &HashSet<String>) -> Audit {
        let mut acked: HashMap<String, String> = HashMap::new();
        let mut answers: HashMap<(&str, &str), &str> = HashMap::new();
        for record in self.decided() {
            let decision = record.decision.as_deref().unwrap();
            if decision == "REDEEMED" {
                let first = acked
                    .entry(record.user.clone())
                    .or_insert(record.key.clone());
                assert!(
                    *first == record.key || exempt.contains(&record.user),
                    "{} was told REDEEMED under two keys",
                    record.user
                );
            }
            let earlier = answers
                .entry((record.user.as_str(), record.key.as_str()))
                .or_insert(record.body.as_str());
            assert!(
                *earlier == record.body || exempt.contains(&record.user),
                "({}, {}) answered {earlier} then {}",
                record.user,
                record.key,
                record.body
            );
        }

        let rows = stored(db, id).await;
        let holders: HashMap<&str, &str> = rows
            .iter()
            .map(|(user, key, _)| (user.as_str(), key.as_str()))
            .collect();
        assert_eq!(holders.len(), rows.len(), "a user stored twice");
        let seqs: HashSet<i32> = rows.iter().map(|(_, _, seq)| *seq).collect();
        assert_eq!(seqs.len(), rows.len(), "a voucher number stored twice");
        let mut lost = Vec::new();
        for (user, key) in &acked {
            match holders.get(user.as_str()) {
                // An exempt user's first grant was lost, so a later key of theirs may hold.
                Some(_) if exempt.contains(user) => {}
                Some(stored_key) => assert_eq!(
                    stored_key, key,
                    "{user} stored under another key than acknowledged"
                ),
                None => lost.push(user.clone()),
            }
        }
        lost.sort();
        Audit {
            acked,
            lost,
            undecided: self.records.len() - self.decided().count(),
        }
    }
}
