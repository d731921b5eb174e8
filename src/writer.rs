//! The outbox writer: loops per shard stream move redemptions from Redis into PostgreSQL. Each
//! step takes, first what fits: the entries its consumer still holds from before (a previous
//! process of this instance, or a connection lost mid-read), entries a dead consumer left pending
//! past the claim timeout, or new ones. It stores them in one transaction, retrying what may pass
//! and isolating entries PostgreSQL refuses for good, then acknowledges them. An entry that can
//! never be stored goes to the shard's dead-letter stream instead. Entries stay pending until
//! committed or dead-lettered, so a crash at any point loses nothing.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context;
use metrics::{counter, histogram};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::{
    backoff::Backoff,
    domain::{Fate, OutboxEntry},
    redis::{
        Connection, fates,
        keys::ShardKeys,
        marker,
        outbox::{self, Entries, Malformed},
        scripts,
    },
    store::{self, BatchSummary},
    telemetry::metrics::{
        WRITER_BATCH_SIZE, WRITER_CLAIMED, WRITER_COMMIT_DURATION, WRITER_DEAD_LETTERED,
        WRITER_ERRORS, WRITER_REJECTED, WRITER_ROWS,
    },
};

/// A consumer silent for this many claim timeouts, holding nothing, belongs to a stopped writer.
const PRUNE_AFTER_CLAIM_IDLES: u32 = 10;

#[derive(Debug, Clone)]
pub struct WriterSettings {
    /// Most entries per batch (one PostgreSQL transaction).
    pub batch_size: usize,
    /// How long a partial batch waits for more entries before it is written.
    pub flush_interval: Duration,
    /// How long an entry stays pending with a consumer that does not touch it before another
    /// claims it. A live writer touches what it holds while it stores it.
    pub claim_idle: Duration,
    /// How long one read waits for new entries when the stream is empty.
    pub block: Duration,
    /// Publish what PostgreSQL made of each batch on the shard's channel, for the gateways that
    /// answer only once a redemption is stored (`--ack postgres`).
    pub publish_fates: bool,
}

pub struct Writer {
    /// A connection of this writer's own: its reads block.
    redis: Connection,
    db: PgPool,
    shard: ShardKeys,
    /// Stable across restarts of the same instance, so that a new process finds what the old
    /// one held under this name.
    consumer: String,
    settings: WriterSettings,
    claim: Mutex<ClaimScan>,
    /// Shared by the writers of one outbox in this process: one collects a batch while the
    /// others store theirs. Reading at once, every writer woke on one of the first entries and
    /// topped up at the same moment, so each flush interval's entries made one large batch and
    /// several of a few entries, each paying for a transaction.
    read_turn: Arc<tokio::sync::Mutex<()>>,
    /// Set at start and after every failed step: the consumer may hold entries it never stored
    /// (delivered to it by an earlier process, or in a reply lost with its connection), so it
    /// reads its own pending entries again before anything else.
    recovering: AtomicBool,
}

/// When the last claim scan ran, and where the next one starts: XAUTOCLAIM looks at a bounded
/// number of entries per call, so each call continues where the last one stopped.
struct ClaimScan {
    last: Option<Instant>,
    from: String,
}

impl Writer {
    /// A writer of one shard, reading as `consumer` (unique among live writers of the shard).
    pub fn new(
        redis: Connection,
        db: PgPool,
        shard: ShardKeys,
        consumer: String,
        settings: WriterSettings,
    ) -> Self {
        Self {
            redis,
            db,
            shard,
            consumer,
            settings,
            claim: Mutex::new(ClaimScan {
                last: None,
                from: "0-0".to_owned(),
            }),
            read_turn: Arc::default(),
            recovering: AtomicBool::new(true),
        }
    }

    /// This writer takes turns reading with `other` (a writer of the same outbox).
    pub fn taking_turns_with(mut self, other: &Writer) -> Self {
        self.read_turn = other.read_turn.clone();
        self
    }

    pub fn shard(&self) -> u16 {
        self.shard.shard
    }

    /// Runs steps until `cancel`; then drains what is queued before returning.
    pub async fn run(&self, cancel: CancellationToken) {
        // Started again after a panic, it may hold what the panic left pending.
        self.recovering.store(true, Ordering::Relaxed);
        let mut backoff = Backoff::default();
        let mut group_ready = false;
        while !cancel.is_cancelled() {
            let result = async {
                if !group_ready {
                    self.ensure_group().await?;
                    group_ready = true;
                }
                self.step(&cancel).await
            }
            .await;
            match result {
                Ok(_) => backoff = Backoff::default(),
                Err(error) => {
                    counter!(WRITER_ERRORS).increment(1);
                    // The stream and its group vanish with a Redis that restarted empty.
                    group_ready = false;
                    self.recovering.store(true, Ordering::Relaxed);
                    tracing::warn!(outbox = %self.shard.outbox, error = format!("{error:#}"), "writer step failed; retrying");
                    tokio::select! {
                        () = cancel.cancelled() => break,
                        () = tokio::time::sleep(backoff.pause()) => {}
                    }
                }
            }
        }
        if let Err(error) = self.drain(&cancel).await {
            tracing::warn!(outbox = %self.shard.outbox, error = format!("{error:#}"), "draining the outbox at shutdown failed; the rest stays queued");
        }
    }

    /// Creates the consumer group (reading from the stream's start) if it does not exist, after
    /// checking whether Redis came back without its data (the stream and group vanish with it).
    pub async fn ensure_group(&self) -> anyhow::Result<()> {
        let mut con = self.redis.clone();
        marker::check(&mut con, &self.db, &self.shard).await?;
        outbox::create_group(&mut con, &self.shard.outbox).await?;
        Ok(())
    }

    /// One batch: this consumer's own pending entries while it recovers, else stale entries of
    /// other consumers when a claim is due and finds some, else new ones; stored and
    /// acknowledged. Returns how many entries it handled.
    pub async fn step(&self, cancel: &CancellationToken) -> anyhow::Result<usize> {
        let mut entries = Entries::default();
        if self.recovering.load(Ordering::Relaxed) {
            entries = self.read_own().await?;
            if entries.is_empty() {
                self.recovering.store(false, Ordering::Relaxed);
            }
        }
        if entries.is_empty() && self.claim_due() {
            entries = self.claim().await?;
        }
        if entries.is_empty() {
            entries = self.read().await?;
        }
        let handled = entries.listed();
        self.handle(entries, cancel).await?;
        Ok(handled)
    }

    /// At shutdown, once no request is served any more: writes what is queued up to the
    /// stream's current end, so every redemption this process acknowledged is in PostgreSQL
    /// before it exits. Entries added later (by other gateways) are left to their writers.
    async fn drain(&self, cancel: &CancellationToken) -> anyhow::Result<()> {
        // First what it holds itself: a batch cut short, or entries of a reply that was lost.
        while self.recovering.load(Ordering::Relaxed) {
            let own = self.read_own().await?;
            if own.is_empty() {
                self.recovering.store(false, Ordering::Relaxed);
            }
            self.handle(own, cancel).await?;
        }
        let mut con = self.redis.clone();
        let end = outbox::last_id(&mut con, &self.shard.outbox).await?;
        let Some(end) = end.as_deref().and_then(outbox::parse_id) else {
            return Ok(());
        };
        loop {
            let read = self.read().await?;
            let Some(last) = read.last_id.as_deref().and_then(outbox::parse_id) else {
                return Ok(());
            };
            self.handle(read, cancel).await?;
            if last >= end {
                return Ok(());
            }
        }
    }

    /// Up to a batch of the entries this consumer holds and has not acknowledged.
    async fn read_own(&self) -> anyhow::Result<Entries> {
        let mut con = self.redis.clone();
        let own = outbox::read_own_pending(
            &mut con,
            &self.shard.outbox,
            &self.consumer,
            self.settings.batch_size,
        )
        .await?;
        if !own.is_empty() {
            tracing::info!(outbox = %self.shard.outbox, consumer = %self.consumer, count = own.entries.len(), "storing entries this consumer held before");
        }
        Ok(own)
    }

    /// Reads new entries for this consumer, in its turn: waits up to `block` for the first,
    /// then up to `flush_interval` for the batch to fill.
    pub async fn read(&self) -> anyhow::Result<Entries> {
        let _turn = self.read_turn.lock().await;
        let mut con = self.redis.clone();
        let (outbox, batch) = (&self.shard.outbox, self.settings.batch_size);
        let block = Some(self.settings.block);
        let mut read = outbox::read_new(&mut con, outbox, &self.consumer, batch, block).await?;
        let count = read.entries.len();
        if count > 0 && count < batch && !self.settings.flush_interval.is_zero() {
            tokio::time::sleep(self.settings.flush_interval).await;
            // The entries in hand are pending already: store them even if topping up fails.
            match outbox::read_new(&mut con, outbox, &self.consumer, batch - count, None).await {
                Ok(more) => read.append(more),
                Err(error) => {
                    // Redis may have delivered entries in a reply that was lost.
                    self.recovering.store(true, Ordering::Relaxed);
                    tracing::warn!(%outbox, %error, "topping up a batch failed");
                }
            }
        }
        Ok(read)
    }

    /// Whether a claim is due: every quarter `claim_idle`, since a claim scans the pending list,
    /// which holds the other consumers' batches in flight.
    fn claim_due(&self) -> bool {
        let mut claim = self.claim.lock().expect("never poisoned");
        let due = claim
            .last
            .is_none_or(|at| at.elapsed() >= self.settings.claim_idle / 4);
        if due {
            claim.last = Some(Instant::now());
        }
        due
    }

    /// Takes over entries that another consumer has held untouched for longer than `claim_idle`
    /// (its process died), then removes consumers that have been silent for much longer and hold
    /// nothing.
    pub async fn claim(&self) -> anyhow::Result<Entries> {
        let mut con = self.redis.clone();
        let from = self.claim.lock().expect("never poisoned").from.clone();
        let (next, claimed) = outbox::claim_idle(
            &mut con,
            &self.shard.outbox,
            &self.consumer,
            self.settings.claim_idle,
            &from,
            self.settings.batch_size,
        )
        .await?;
        self.claim.lock().expect("never poisoned").from = next;
        let count = claimed.entries.len() + claimed.malformed.len();
        if count > 0 {
            counter!(WRITER_CLAIMED).increment(count as u64);
            tracing::info!(outbox = %self.shard.outbox, count, "claimed entries of a stopped consumer");
        }
        // A live consumer reads at least every `block`; one silent for this long is gone.
        let gone = self.settings.claim_idle * PRUNE_AFTER_CLAIM_IDLES;
        let outbox = &self.shard.outbox;
        match scripts::prune_consumers(&mut con, outbox, gone, &self.consumer).await {
            Ok(0) => {}
            Ok(pruned) => tracing::info!(%outbox, pruned, "removed consumers of stopped writers"),
            // The entries just claimed are this consumer's now: store them regardless.
            Err(error) => tracing::warn!(%outbox, %error, "removing stopped consumers failed"),
        }
        Ok(claimed)
    }

    /// Dead-letters what cannot be decoded, acknowledges ids whose entries left the stream, and
    /// writes the rest.
    async fn handle(&self, read: Entries, cancel: &CancellationToken) -> anyhow::Result<()> {
        if !read.malformed.is_empty() {
            self.dead_letter(&read.malformed, "malformed").await?;
        }
        if !read.deleted.is_empty() {
            let ids: Vec<&str> = read.deleted.iter().map(String::as_str).collect();
            self.ack(&ids).await?;
        }
        self.write(&read.entries, cancel).await
    }

    /// Stores entries (each batch in one transaction), dead-letters those PostgreSQL refuses for
    /// good, then acknowledges and deletes the rest.
    async fn write(
        &self,
        entries: &[OutboxEntry],
        cancel: &CancellationToken,
    ) -> anyhow::Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let started = Instant::now();
        let ids: Vec<&str> = entries.iter().map(|entry| entry.id.as_str()).collect();
        let (refused, fates) = tokio::select! {
            stored = self.store(entries, cancel) => stored?,
            never = self.keep_claimed(&ids) => match never {},
        };
        let stored = started.elapsed();
        if self.settings.publish_fates && !fates.is_empty() {
            let mut con = self.redis.clone();
            let message = fates::encode(fates);
            // Best effort: a waiting redeem that misses it finds its row in PostgreSQL.
            if let Err(error) = fates::publish(&mut con, &self.shard.fates, &message).await {
                tracing::warn!(channel = %self.shard.fates, %error, "publishing a batch's fates failed");
            }
        }
        if !refused.is_empty() {
            self.dead_letter(&refused, "refused").await?;
        }
        let kept: Vec<&str> = ids
            .into_iter()
            .filter(|id| !refused.iter().any(|entry| entry.id == *id))
            .collect();
        if !kept.is_empty() {
            self.ack(&kept).await?;
        }
        tracing::debug!(
            outbox = %self.shard.outbox,
            entries = entries.len(),
            store_ms = stored.as_secs_f64() * 1e3,
            ack_ms = (started.elapsed() - stored).as_secs_f64() * 1e3,
            "batch written"
        );
        Ok(())
    }

    /// Stores entries, splitting a batch PostgreSQL refuses for good in halves until the entries
    /// it refuses stand alone; returns those, with why, and what PostgreSQL made of every other
    /// entry (stored, in stream order, or refused as a redemption).
    async fn store<'a>(
        &self,
        entries: &'a [OutboxEntry],
        cancel: &CancellationToken,
    ) -> anyhow::Result<(Vec<Malformed>, Vec<(&'a OutboxEntry, Fate)>)> {
        let mut refused = Vec::new();
        let mut fates = Vec::new();
        let mut parts = vec![entries];
        while let Some(part) = parts.pop() {
            let error = match self.store_retrying(part, cancel).await? {
                Ok(summary) => {
                    fates.extend(part.iter().map(|entry| (entry, Fate::Stored)));
                    let first = fates.len() - part.len();
                    for (i, reason) in summary.rejected {
                        fates[first + i].1 = Fate::Refused(reason);
                    }
                    continue;
                }
                Err(error) => error,
            };
            match part {
                [entry] => {
                    tracing::error!(id = %entry.id, outbox = %self.shard.outbox, %error, "PostgreSQL refuses this outbox entry for good");
                    refused.push(Malformed {
                        id: entry.id.clone(),
                        reason: format!("PostgreSQL: {error}"),
                    });
                }
                _ => {
                    let (first, second) = part.split_at(part.len() / 2);
                    parts.extend([second, first]);
                }
            }
        }
        Ok((refused, fates))
    }

    /// Stores one batch, retrying what may pass with backoff until it commits or `cancel` (then
    /// the entries stay pending: nothing is dropped). An error PostgreSQL gives for good comes
    /// back as the inner error.
    async fn store_retrying(
        &self,
        entries: &[OutboxEntry],
        cancel: &CancellationToken,
    ) -> anyhow::Result<Result<BatchSummary, sqlx::Error>> {
        let mut backoff = Backoff::default();
        let started = Instant::now();
        loop {
            match store::store_batch(&self.db, entries).await {
                Ok(summary) => {
                    histogram!(WRITER_COMMIT_DURATION).record(started.elapsed().as_secs_f64());
                    histogram!(WRITER_BATCH_SIZE).record(entries.len() as f64);
                    counter!(WRITER_ROWS).increment(summary.inserted);
                    counter!(WRITER_REJECTED).increment(summary.rejected.len() as u64);
                    if !summary.rejected.is_empty() {
                        tracing::error!(
                            rejected = summary.rejected.len(),
                            "PostgreSQL refused redemptions Redis granted; run reconcile"
                        );
                    }
                    return Ok(Ok(summary));
                }
                Err(error) if store::refuses_for_good(&error) => return Ok(Err(error)),
                Err(error) => {
                    counter!(WRITER_ERRORS).increment(1);
                    tracing::warn!(%error, entries = entries.len(), "storing a batch failed; retrying");
                    tokio::select! {
                        () = cancel.cancelled() => return Err(error).context("stopped before the batch was stored"),
                        () = tokio::time::sleep(backoff.pause()) => {}
                    }
                }
            }
        }
    }

    /// Touches the entries in hand every third of `claim_idle` while they are being stored, so
    /// that no other writer claims them however long PostgreSQL takes. Never returns.
    async fn keep_claimed(&self, ids: &[&str]) -> std::convert::Infallible {
        loop {
            tokio::time::sleep(self.settings.claim_idle / 3).await;
            let touched = async {
                let mut con = self.redis.clone();
                outbox::touch(&mut con, &self.shard.outbox, &self.consumer, ids).await?;
                anyhow::Ok(())
            };
            if let Err(error) = touched.await {
                tracing::debug!(
                    error = format!("{error:#}"),
                    "touching the entries in hand failed"
                );
            }
        }
    }

    /// Moves entries that can never be stored to the dead-letter stream, counting them by `kind`.
    async fn dead_letter(&self, entries: &[Malformed], kind: &'static str) -> anyhow::Result<()> {
        let mut con = self.redis.clone();
        let moved = scripts::dead_letter(&mut con, &self.shard, entries).await?;
        counter!(WRITER_DEAD_LETTERED, "kind" => kind).increment(moved);
        for entry in entries {
            tracing::error!(id = %entry.id, reason = %entry.reason, dead_letters = %self.shard.dead_letters, "outbox entry moved to the dead-letter stream");
        }
        Ok(())
    }

    /// Acknowledges and deletes entries; `ids` in stream order.
    async fn ack(&self, ids: &[&str]) -> anyhow::Result<()> {
        let mut con = self.redis.clone();
        scripts::ack(&mut con, &self.shard.outbox, ids).await?;
        Ok(())
    }
}
