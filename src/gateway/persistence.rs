//! `--ack postgres`: a REDEEMED is answered only once PostgreSQL holds the redemption's row. The
//! request waits for its entry's fate. The writers publish each committed batch's fates on their
//! shard's channel, so the answer comes from whichever instance's writer stored it (group commit
//! through the writers' batches); a sweep looks up in PostgreSQL what a waiter missed (a message
//! lost with a connection, a writer that stopped between its commit and its message).
//!
//! A redeem is expected before its script runs: its entry may be stored, and its message
//! published, before the script's reply is even read.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use metrics::histogram;
use sqlx::PgPool;
use tokio::sync::oneshot;
use tokio_util::sync::{CancellationToken, DropGuard};

use super::GatewayError;
use crate::{
    domain::{CampaignId, Fate, Holder},
    redis::{Redis, Subscription, fates, keys::Shards},
    store,
    telemetry::metrics::ACK_WAIT_DURATION,
};

/// How long a waiter waits for its message before the sweep first looks its row up; each later
/// look waits twice as long as the one before, up to `SWEEP_AT_MOST`.
const SWEEP_AFTER: Duration = Duration::from_millis(50);
const SWEEP_AT_MOST: Duration = Duration::from_millis(400);

/// Most redemptions one sweep looks up.
const SWEEP_CHUNK: usize = 1_000;

/// How often the subscription's connections are pinged (see `Subscription::keep_alive`).
const KEEP_ALIVE: Duration = Duration::from_secs(1);

pub struct Persistence {
    waiters: Arc<Waiters>,
    db: PgPool,
    timeout: Duration,
    /// Stops the listener and the sweep with the gateway.
    _stop: DropGuard,
}

/// The redeems waiting for their rows, by redemption (`fates::identity`).
#[derive(Default)]
struct Waiters {
    by_identity: Mutex<HashMap<String, Vec<Waiter>>>,
    next_id: AtomicU64,
}

struct Waiter {
    id: u64,
    campaign: CampaignId,
    holder: Holder,
    /// The voucher number of a new grant: an older refusal of the same key is not its fate.
    seq: Option<i64>,
    /// When the sweep looks it up next, and how long it waited for that.
    due: Instant,
    backoff: Duration,
    answer: oneshot::Sender<Fate>,
}

/// A redeem expected to wait for its fate; it stops waiting when dropped.
pub struct Expected {
    waiters: Arc<Waiters>,
    identity: String,
    id: u64,
    campaign: CampaignId,
    holder: Holder,
    /// Answered as soon as a message or the sweep finds the fate, maybe before `wait`.
    answered: oneshot::Receiver<Fate>,
}

impl Persistence {
    /// Subscribes to every shard's fates and starts the sweep.
    pub async fn start(
        redis: &Redis,
        shards: &Shards,
        db: PgPool,
        timeout: Duration,
    ) -> anyhow::Result<Self> {
        let channels: Vec<String> = shards.all().map(|shard| shard.fates).collect();
        let subscription = redis.subscribe(&channels).await?;
        let waiters = Arc::new(Waiters::default());
        let stop = CancellationToken::new();
        tokio::spawn(
            stop.clone()
                .run_until_cancelled_owned(listen(subscription, waiters.clone())),
        );
        let sweeping = waiters.clone();
        let sweep_db = db.clone();
        tokio::spawn(stop.clone().run_until_cancelled_owned(async move {
            let mut every = tokio::time::interval(SWEEP_AFTER);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                every.tick().await;
                if let Err(error) = sweeping.sweep(&sweep_db).await {
                    tracing::debug!(%error, "looking up waiting redemptions failed");
                }
            }
        }));
        Ok(Self {
            waiters,
            db,
            timeout,
            _stop: stop.drop_guard(),
        })
    }

    /// Expects the fate of a redeem about to be decided.
    pub fn expect(&self, campaign: CampaignId, holder: &Holder) -> Expected {
        let identity = fates::identity(campaign, holder);
        let (answer, answered) = oneshot::channel();
        let id = self.waiters.next_id.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        let waiter = Waiter {
            id,
            campaign,
            holder: holder.clone(),
            seq: None,
            due: now + SWEEP_AFTER,
            backoff: SWEEP_AFTER,
            answer,
        };
        let mut waiters = self.waiters.by_identity.lock().expect("never poisoned");
        waiters.entry(identity.clone()).or_default().push(waiter);
        Expected {
            waiters: self.waiters.clone(),
            identity,
            id,
            campaign,
            holder: holder.clone(),
            answered,
        }
    }

    /// What PostgreSQL made of a redemption Redis granted (`seq`, a new grant's voucher number)
    /// or replayed (`None`: its row may be stored already, so it is looked up first), waiting
    /// for up to the acknowledgement timeout.
    pub async fn wait(
        &self,
        mut expected: Expected,
        seq: Option<i64>,
    ) -> Result<Fate, GatewayError> {
        let started = Instant::now();
        let waited = async {
            match seq {
                Some(seq) => expected.set_seq(seq),
                None => {
                    let looked_up = [(expected.campaign, &expected.holder, None)];
                    match store::fates(&self.db, &looked_up).await {
                        Ok(found) => {
                            if let Some((_, fate)) = found.into_iter().next() {
                                return Some(fate);
                            }
                        }
                        // Its message may still come, or the sweep find it.
                        Err(error) => tracing::debug!(%error, "looking up a replay's row failed"),
                    }
                }
            }
            (&mut expected.answered).await.ok()
        };
        let fate = tokio::time::timeout(self.timeout, waited).await;
        histogram!(ACK_WAIT_DURATION, "mode" => "postgres").record(started.elapsed().as_secs_f64());
        match fate {
            Ok(Some(fate)) => Ok(fate),
            Ok(None) | Err(_) => Err(GatewayError::NotDurable),
        }
    }
}

/// Answers the waiters of each fate the writers publish, pinging the subscription's connections
/// so that one that dropped comes back.
async fn listen(mut subscription: Subscription, waiters: Arc<Waiters>) {
    let mut keep_alive = tokio::time::interval(KEEP_ALIVE);
    loop {
        tokio::select! {
            message = subscription.next() => {
                let Some(message) = message else { break };
                for (identity, fate) in fates::decode(&String::from_utf8_lossy(&message)) {
                    waiters.resolve(&identity, fate);
                }
            }
            _ = keep_alive.tick() => {
                if let Err(error) = subscription.keep_alive().await {
                    tracing::warn!(%error, "the subscription to the writers' fates cannot reach Redis; waiting redeems are answered by the sweep");
                }
            }
        }
    }
    tracing::error!(
        "the subscription to the writers' fates ended; waiting redeems are answered by the sweep"
    );
}

impl Expected {
    /// Records a new grant's voucher number for the sweep (a no-op once answered).
    fn set_seq(&self, seq: i64) {
        let mut waiters = self.waiters.by_identity.lock().expect("never poisoned");
        let waiter = waiters
            .get_mut(&self.identity)
            .and_then(|list| list.iter_mut().find(|waiter| waiter.id == self.id));
        if let Some(waiter) = waiter {
            waiter.seq = Some(seq);
        }
    }
}

impl Drop for Expected {
    fn drop(&mut self) {
        let mut waiters = self.waiters.by_identity.lock().expect("never poisoned");
        if let Some(list) = waiters.get_mut(&self.identity) {
            list.retain(|waiter| waiter.id != self.id);
            if list.is_empty() {
                waiters.remove(&self.identity);
            }
        }
    }
}

impl Waiters {
    /// Answers every waiter of a redemption.
    fn resolve(&self, identity: &str, fate: Fate) {
        let resolved = self
            .by_identity
            .lock()
            .expect("never poisoned")
            .remove(identity);
        for waiter in resolved.into_iter().flatten() {
            let _ = waiter.answer.send(fate);
        }
    }

    /// Looks up in PostgreSQL the waiters that are due, each less often the longer it waits.
    async fn sweep(&self, db: &PgPool) -> Result<(), sqlx::Error> {
        let now = Instant::now();
        let due: Vec<(String, CampaignId, Holder, Option<i64>)> = {
            let mut waiters = self.by_identity.lock().expect("never poisoned");
            waiters
                .iter_mut()
                .filter_map(|(identity, list)| {
                    let waiter = list.iter_mut().find(|waiter| waiter.due <= now)?;
                    waiter.backoff = (waiter.backoff * 2).min(SWEEP_AT_MOST);
                    waiter.due = now + waiter.backoff;
                    Some((
                        identity.clone(),
                        waiter.campaign,
                        waiter.holder.clone(),
                        waiter.seq,
                    ))
                })
                .take(SWEEP_CHUNK)
                .collect()
        };
        if due.is_empty() {
            return Ok(());
        }
        let redemptions: Vec<(CampaignId, &Holder, Option<i64>)> = due
            .iter()
            .map(|(_, campaign, holder, seq)| (*campaign, holder, *seq))
            .collect();
        for (i, fate) in store::fates(db, &redemptions).await? {
            self.resolve(&due[i].0, fate);
        }
        Ok(())
    }
}
