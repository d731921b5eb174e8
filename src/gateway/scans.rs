//! Shared scans of a shard's outbox for hydration. A campaign that hydrates must fold in its
//! entries still in the outbox, and finding them means reading the whole shard stream: with many
//! campaigns of one shard cold at once (Redis came back empty under load) and a backlog queued,
//! one read per campaign would be quadratic. Instead the campaigns waiting on a shard are found
//! together: whoever takes the shard's turn reads the stream once for every campaign registered
//! before it started, and hands each its entries; campaigns that arrive meanwhile wait for the
//! next turn.
//!
//! Why a scan that started after a campaign registered finds all its entries: the campaign was
//! found missing from Redis before it registered, and from then on `redeem.lua` adds no entry for
//! it, so its entries all lie in the stream when the scan begins, and a scan pages forward to the
//! stream's end. An entry deleted before the scan reaches it was committed to PostgreSQL first,
//! which hydration reads after the scan.

use std::{
    collections::{HashMap, HashSet},
    sync::Mutex,
};

use redis::{RedisResult, aio::ConnectionManager};
use tokio::sync::oneshot;

use crate::{
    domain::{CampaignId, OutboxEntry},
    redis::{keys::Shards, outbox},
};

type Waiters = HashMap<CampaignId, Vec<oneshot::Sender<Vec<OutboxEntry>>>>;

pub struct OutboxScans {
    shards: Vec<ShardScans>,
}

#[derive(Default)]
struct ShardScans {
    /// Campaigns that need the next scan, each with the hydrations waiting for it.
    waiting: Mutex<Waiters>,
    /// Held by the one hydration that scans for all the others.
    turn: tokio::sync::Mutex<()>,
}

impl OutboxScans {
    pub fn new(shards: Shards) -> Self {
        Self {
            shards: (0..shards.count()).map(|_| ShardScans::default()).collect(),
        }
    }

    /// The campaign's entries in `outbox` (its shard's), in stream order, from a scan that began
    /// after this call. Cancel-safe: if the hydration scanning for others is dropped or fails,
    /// each of them scans again.
    pub async fn queued(
        &self,
        con: &mut ConnectionManager,
        shard: u16,
        outbox: &str,
        id: CampaignId,
    ) -> RedisResult<Vec<OutboxEntry>> {
        let scans = &self.shards[usize::from(shard)];
        loop {
            let (sender, mut receiver) = oneshot::channel();
            lock(&scans.waiting).entry(id).or_default().push(sender);
            let _turn = scans.turn.lock().await;
            match receiver.try_recv() {
                Ok(entries) => return Ok(entries),
                Err(oneshot::error::TryRecvError::Closed) => continue,
                Err(oneshot::error::TryRecvError::Empty) => {}
            }
            // Everyone registered so far, this call included, is served by this scan.
            let waiting = std::mem::take(&mut *lock(&scans.waiting));
            let campaigns: HashSet<CampaignId> = waiting.keys().copied().collect();
            let mut found = outbox::queued_entries(con, outbox, &campaigns).await?;
            for (campaign, senders) in waiting {
                let entries = found.remove(&campaign).unwrap_or_default();
                for sender in senders {
                    // A waiter that gave up (its request timed out) no longer listens.
                    let _ = sender.send(entries.clone());
                }
            }
            if let Ok(entries) = receiver.try_recv() {
                return Ok(entries);
            }
        }
    }
}

fn lock(waiting: &Mutex<Waiters>) -> std::sync::MutexGuard<'_, Waiters> {
    waiting.lock().expect("never poisoned")
}
