//! `--ack postgres`: a REDEEMED is answered only once PostgreSQL holds the redemption's row. The
//! request waits for its entry's fate. The writers publish each committed batch's fates on their
//! shard's channel, so the answer comes from whichever instance's writer stored it (group commit
//! through the writers' batches); a sweep looks up in PostgreSQL what a waiter missed (a message
//! lost with a connection, a writer that stopped between its commit and its message).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use metrics::histogram;
use sqlx::PgPool;
use tokio::sync::oneshot;
use tokio_util::sync::{CancellationToken, DropGuard};

use super::GatewayError;
use crate::{
    domain::{CampaignId, Fate, Holder},
    redis::{Redis, fates, keys::Shards},
    store,
    telemetry::metrics::ACK_WAIT_DURATION,
};

/// How long a waiter waits for its message before the sweep looks its row up, and how often the
/// sweep runs.
const SWEEP_AFTER: Duration = Duration::from_millis(50);

/// Most redemptions one sweep query looks up.
const SWEEP_CHUNK: usize = 1_000;

pub struct Persistence {
    waiters: Arc<Waiters>,
    db: PgPool,
    timeout: Duration,
    /// Stops the listener and the sweep with the gateway.
    _stop: DropGuard,
}

/// The redeems waiting for their rows, by redemption (`fates::identity`).
#[derive(Default)]
struct Waiters(Mutex<HashMap<String, Vec<Waiter>>>);

struct Waiter {
    since: Instant,
    campaign: CampaignId,
    holder: Holder,
    answer: oneshot::Sender<Fate>,
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
        let mut subscription = redis.subscribe(&channels).await?;
        let waiters = Arc::new(Waiters::default());
        let stop = CancellationToken::new();
        let listening = waiters.clone();
        tokio::spawn(stop.clone().run_until_cancelled_owned(async move {
            while let Some(message) = subscription.next().await {
                for (identity, fate) in fates::decode(&String::from_utf8_lossy(&message)) {
                    listening.resolve(&identity, fate);
                }
            }
            tracing::error!("the subscription to the writers' fates ended; waiting redeems are answered by the sweep");
        }));
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

    /// What PostgreSQL made of a redemption Redis granted, waiting for up to the acknowledgement
    /// timeout. `look_now`: its row may be stored already (a replay), so look it up first.
    pub async fn wait(
        &self,
        campaign: CampaignId,
        holder: Holder,
        look_now: bool,
    ) -> Result<Fate, GatewayError> {
        let started = Instant::now();
        let identity = fates::identity(campaign, &holder);
        let (answer, answered) = oneshot::channel();
        let looked_up = look_now.then(|| (campaign, holder.clone()));
        self.waiters.add(
            identity,
            Waiter {
                since: started,
                campaign,
                holder,
                answer,
            },
        );
        let waited = async {
            if let Some((campaign, holder)) = looked_up {
                let found = store::fates(&self.db, &[(campaign, &holder)]).await?;
                if let Some((_, fate)) = found.into_iter().next() {
                    return Ok(Some(fate));
                }
            }
            Ok::<_, GatewayError>(answered.await.ok())
        };
        let fate = tokio::time::timeout(self.timeout, waited).await;
        histogram!(ACK_WAIT_DURATION, "mode" => "postgres").record(started.elapsed().as_secs_f64());
        match fate {
            Ok(Ok(Some(fate))) => Ok(fate),
            Ok(Err(error)) => Err(error),
            Ok(Ok(None)) | Err(_) => Err(GatewayError::NotDurable),
        }
    }
}

impl Waiters {
    fn add(&self, identity: String, waiter: Waiter) {
        let mut waiters = self.0.lock().expect("never poisoned");
        waiters.entry(identity).or_default().push(waiter);
    }

    /// Answers every waiter of a redemption.
    fn resolve(&self, identity: &str, fate: Fate) {
        let resolved = self.0.lock().expect("never poisoned").remove(identity);
        for waiter in resolved.into_iter().flatten() {
            let _ = waiter.answer.send(fate);
        }
    }

    /// Forgets the waiters that gave up, and looks up in PostgreSQL those that have waited
    /// longer than `SWEEP_AFTER`.
    async fn sweep(&self, db: &PgPool) -> Result<(), sqlx::Error> {
        let due: Vec<(String, CampaignId, Holder)> = {
            let mut waiters = self.0.lock().expect("never poisoned");
            waiters.retain(|_, list| {
                list.retain(|waiter| !waiter.answer.is_closed());
                !list.is_empty()
            });
            waiters
                .iter()
                .filter_map(|(identity, list)| {
                    let first = list.iter().find(|w| w.since.elapsed() >= SWEEP_AFTER)?;
                    Some((identity.clone(), first.campaign, first.holder.clone()))
                })
                .collect()
        };
        for chunk in due.chunks(SWEEP_CHUNK) {
            let redemptions: Vec<(CampaignId, &Holder)> =
                chunk.iter().map(|(_, c, h)| (*c, h)).collect();
            for (i, fate) in store::fates(db, &redemptions).await? {
                self.resolve(&chunk[i].0, fate);
            }
        }
        Ok(())
    }
}
