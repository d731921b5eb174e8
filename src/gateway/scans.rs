//! Shared scans of a shard's outbox for hydration. A campaign that hydrates must fold in its
//! entries still in the outbox, and finding them means reading the whole shard stream: with many
//! campaigns of one shard cold at once (Redis came back empty under load) and a backlog queued,
//! one read per campaign would be quadratic. Instead the campaigns waiting on a shard are found
//! together: one scan at a time per shard reads the stream for every campaign registered before
//! it started, and hands each its entries; campaigns that arrive meanwhile wait for the next one,
//! which starts as soon as it ends. The scans run in a task of their own, which ends when no
//! campaign waits: a request that gives up (its timeout) does not waste the scan for the others.
//!
//! Why a scan that starts after a campaign registered finds all its entries, and may stop at the
//! stream's newest entry as it was then: the campaign was found missing from Redis before it
//! registered, and `redeem.lua` adds no entry for a campaign it does not hold, so its entries
//! were all in the stream when the scan began. (If another gateway loads the campaign meanwhile,
//! `hydrate.lua` writes nothing after that load, so what this scan finds is not used; this
//! assumes the campaign is not lost a second time before this hydration commits.) An entry that
//! left the stream before the scan reached it was either committed to PostgreSQL first, which
//! hydration reads after the scan, or dead-lettered: never a redemption PostgreSQL holds.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
};

use crate::redis::Connection;
use redis::RedisResult;
use tokio::sync::oneshot;

use crate::{
    domain::{CampaignId, OutboxEntry},
    redis::{keys::Shards, outbox},
};

type Found = RedisResult<Vec<OutboxEntry>>;
type Waiters = HashMap<CampaignId, Vec<oneshot::Sender<Found>>>;

pub struct OutboxScans {
    redis: Connection,
    shards: Shards,
    per_shard: Vec<Arc<ShardScans>>,
}

struct ShardScans {
    outbox: String,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Campaigns that need the next scan, each with the hydrations waiting for it.
    waiting: Waiters,
    /// Whether the shard's scan task runs.
    scanning: bool,
}

impl OutboxScans {
    pub fn new(redis: Connection, shards: Shards) -> Self {
        let per_shard = shards
            .outboxes()
            .map(|outbox| {
                Arc::new(ShardScans {
                    outbox,
                    state: Mutex::default(),
                })
            })
            .collect();
        Self {
            redis,
            shards,
            per_shard,
        }
    }

    /// The campaign's entries in its shard's outbox, in stream order, from a scan that began
    /// after this call.
    pub async fn queued(&self, id: CampaignId) -> Found {
        let shard = &self.per_shard[usize::from(self.shards.of(id))];
        let (sender, receiver) = oneshot::channel();
        let start = {
            let mut state = shard.lock();
            state.waiting.entry(id).or_default().push(sender);
            !std::mem::replace(&mut state.scanning, true)
        };
        if start {
            tokio::spawn(scan_while_waited(shard.clone(), self.redis.clone()));
        }
        receiver.await.unwrap_or_else(|_| {
            Err(crate::redis::unexpected_reply(
                "an outbox scan",
                "no answer: its task ended",
            ))
        })
    }
}

impl ShardScans {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("never poisoned")
    }
}

/// Scans the shard's outbox for the campaigns waiting, again and again, until none waits.
async fn scan_while_waited(shard: Arc<ShardScans>, mut con: Connection) {
    let mut running = Running(Some(shard.clone()));
    loop {
        let waiting = {
            let mut state = shard.lock();
            if state.waiting.is_empty() {
                state.scanning = false;
                running.0 = None;
                return;
            }
            std::mem::take(&mut state.waiting)
        };
        let campaigns: HashSet<CampaignId> = waiting.keys().copied().collect();
        let mut found = outbox::queued_entries(&mut con, &shard.outbox, &campaigns).await;
        for (campaign, senders) in waiting {
            let entries = match &mut found {
                Ok(found) => Ok(found.remove(&campaign).unwrap_or_default()),
                Err(error) => Err(error.clone()),
            };
            for sender in senders {
                // A hydration that gave up (its request timed out) no longer listens.
                let _ = sender.send(entries.clone());
            }
        }
    }
}

/// While the scan task runs; should it panic, the next hydration of the shard starts a new one.
struct Running(Option<Arc<ShardScans>>);

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(shard) = self.0.take() {
            let mut state = shard.lock();
            state.scanning = false;
            // Those waiting get no answer, and fail: their retry registers again.
            state.waiting.clear();
        }
    }
}
