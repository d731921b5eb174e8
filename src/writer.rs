//! The outbox writer: one loop per shard stream moves redemptions from Redis into PostgreSQL.
//! Each step claims entries a dead consumer left pending, or reads new ones, stores them in one
//! transaction (retrying PostgreSQL with backoff, never dropping), then acknowledges and deletes
//! them. Entries stay pending until committed, so a crash at any point loses nothing.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::Context;
use metrics::{counter, histogram};
use redis::{
    AsyncCommands, Value,
    streams::{StreamAutoClaimOptions, StreamRangeReply, StreamReadOptions},
};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::{
    redis::{
        keys::WRITER_GROUP,
        marker,
        outbox::{self, Entries},
        scripts,
    },
    store::{self, BatchSummary, OutboxEntry},
    telemetry::metrics::{
        WRITER_BATCH_SIZE, WRITER_CLAIMED, WRITER_COMMIT_DURATION, WRITER_ERRORS, WRITER_REJECTED,
        WRITER_ROWS,
    },
};

/// The first and the longest pause between retries after an error.
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// A consumer silent for this many claim timeouts, holding nothing, belongs to a stopped writer.
const PRUNE_AFTER_CLAIM_IDLES: u32 = 10;

#[derive(Debug, Clone)]
pub struct WriterSettings {
    /// Most entries per batch (one PostgreSQL transaction).
    pub batch_size: usize,
    /// How long a partial batch waits for more entries before it is written.
    pub flush_interval: Duration,
    /// How long an entry stays pending with a consumer before another claims it.
    pub claim_idle: Duration,
    /// How long one read waits for new entries when the stream is empty.
    pub block: Duration,
}

pub struct Writer {
    redis: deadpool_redis::Pool,
    db: PgPool,
    consumer: String,
    settings: WriterSettings,
    last_claim: Mutex<Option<Instant>>,
    /// Where the next claim scan of the pending list starts: XAUTOCLAIM looks at a bounded
    /// number of entries per call, so each call continues where the last one stopped.
    claim_from: Mutex<String>,
    /// Shared by the writers of one outbox in this process: one collects a batch while the
    /// others store theirs. Reading at once, every writer woke on one of the first entries and
    /// topped up at the same moment, so each flush interval's entries made one large batch and
    /// several of a few entries, each paying for a transaction.
    read_turn: Arc<tokio::sync::Mutex<()>>,
}

impl Writer {
    /// A writer with a consumer name of its own, unique to this process.
    pub fn new(redis: deadpool_redis::Pool, db: PgPool, settings: WriterSettings) -> Self {
        let consumer = format!(
            "writer-{}-{}",
            std::process::id(),
            &Uuid::new_v4().simple().to_string()[..8]
        );
        Self {
            redis,
            db,
            consumer,
            settings,
            last_claim: Mutex::new(None),
            claim_from: Mutex::new("0-0".to_owned()),
            read_turn: Arc::default(),
        }
    }

    /// This writer takes turns reading with `other` (a writer of the same outbox).
    pub fn taking_turns_with(mut self, other: &Writer) -> Self {
        self.read_turn = other.read_turn.clone();
        self
    }

    /// Runs steps on one outbox until `cancel`; then commits the batch in hand and drains what
    /// is queued before returning.
    pub async fn run(&self, outbox: String, cancel: CancellationToken) {
        let mut backoff = Backoff::default();
        let mut group_ready = false;
        while !cancel.is_cancelled() {
            let result = async {
                if !group_ready {
                    self.ensure_group(&outbox).await?;
                    group_ready = true;
                }
                self.step(&outbox, &cancel).await
            }
            .await;
            match result {
                Ok(_) => backoff = Backoff::default(),
                Err(error) => {
                    counter!(WRITER_ERRORS).increment(1);
                    // The stream and its group vanish with a Redis that restarted empty.
                    group_ready = false;
                    tracing::warn!(%outbox, error = format!("{error:#}"), "writer step failed; retrying");
                    tokio::select! {
                        () = cancel.cancelled() => break,
                        () = tokio::time::sleep(backoff.next()) => {}
                    }
                }
            }
        }
        if let Err(error) = self.drain(&outbox, &cancel).await {
            tracing::warn!(%outbox, error = format!("{error:#}"), "draining the outbox at shutdown failed; the rest stays queued");
        }
    }

    /// Creates the consumer group (reading from the stream's start) if it does not exist, after
    /// checking whether Redis came back without its data (the stream and group vanish with it).
    pub async fn ensure_group(&self, outbox: &str) -> anyhow::Result<()> {
        let mut con = self.redis.get().await?;
        marker::check(&mut con, &self.db).await?;
        let created: redis::RedisResult<()> =
            con.xgroup_create_mkstream(outbox, WRITER_GROUP, "0").await;
        match created {
            Err(error) if error.code() == Some("BUSYGROUP") => Ok(()),
            other => Ok(other?),
        }
    }

    /// One batch: claimed stale entries when a claim is due and finds some, else new ones;
    /// stored and acknowledged.
    /// Returns how many entries it handled.
    pub async fn step(&self, outbox: &str, cancel: &CancellationToken) -> anyhow::Result<usize> {
        let mut entries = if self.claim_due() {
            self.claim(outbox).await?
        } else {
            Vec::new()
        };
        if entries.is_empty() {
            entries = self.read(outbox).await?.entries;
        }
        self.write(outbox, &entries, cancel).await?;
        Ok(entries.len())
    }

    /// At shutdown, once no request is served any more: writes what is queued up to the
    /// stream's current end, so every redemption this process acknowledged is in PostgreSQL
    /// before it exits. Entries added later (by other gateways) are left to their writers.
    async fn drain(&self, outbox: &str, cancel: &CancellationToken) -> anyhow::Result<()> {
        let end: StreamRangeReply = self
            .redis
            .get()
            .await?
            .xrevrange_count(outbox, "+", "-", 1)
            .await?;
        let Some(end) = end
            .ids
            .first()
            .and_then(|entry| outbox::parse_id(&entry.id))
        else {
            return Ok(());
        };
        loop {
            let read = self.read(outbox).await?;
            let Some(last) = read.last_id.as_deref().and_then(outbox::parse_id) else {
                return Ok(());
            };
            self.write(outbox, &read.entries, cancel).await?;
            if last >= end {
                return Ok(());
            }
        }
    }

    /// Stores entries in one transaction, then acknowledges and deletes them.
    async fn write(
        &self,
        outbox: &str,
        entries: &[OutboxEntry],
        cancel: &CancellationToken,
    ) -> anyhow::Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let started = Instant::now();
        self.store(entries, cancel).await?;
        let stored = started.elapsed();
        self.ack(outbox, entries).await?;
        tracing::debug!(
            %outbox,
            entries = entries.len(),
            store_ms = stored.as_secs_f64() * 1e3,
            ack_ms = (started.elapsed() - stored).as_secs_f64() * 1e3,
            "batch written"
        );
        Ok(())
    }

    /// Reads new entries for this consumer, in its turn: waits up to `block` for the first,
    /// then up to `flush_interval` for the batch to fill.
    pub async fn read(&self, outbox: &str) -> anyhow::Result<Entries> {
        let _turn = self.read_turn.lock().await;
        let mut con = self.redis.get().await?;
        let batch = self.settings.batch_size;
        let options = StreamReadOptions::default()
            .group(WRITER_GROUP, &self.consumer)
            .count(batch)
            .block(self.settings.block.as_millis().max(1) as usize);
        let reply: Value = con.xread_options(&[outbox], &[">"], &options).await?;
        let mut read = Entries::decode_read(reply)?;
        let count = read.entries.len();
        if count > 0 && count < batch && !self.settings.flush_interval.is_zero() {
            tokio::time::sleep(self.settings.flush_interval).await;
            let options = StreamReadOptions::default()
                .group(WRITER_GROUP, &self.consumer)
                .count(batch - count);
            // The entries in hand are pending already: store them even if topping up fails.
            let reply = con.xread_options(&[outbox], &[">"], &options).await;
            match reply.and_then(Entries::decode_read) {
                Ok(more) => read.append(more),
                Err(error) => tracing::warn!(%outbox, %error, "topping up a batch failed"),
            }
        }
        Ok(read)
    }

    /// Whether a claim is due: every half `claim_idle`, since a claim scans the pending list,
    /// which holds the other consumers' batches in flight.
    fn claim_due(&self) -> bool {
        let mut last = self
            .last_claim
            .lock()
            .expect("the claim clock is never poisoned");
        let due = last.is_none_or(|at| at.elapsed() >= self.settings.claim_idle / 2);
        if due {
            *last = Some(Instant::now());
        }
        due
    }

    /// Takes over entries that another consumer has held for longer than `claim_idle`, then
    /// removes consumers that have been silent for much longer and hold nothing.
    pub async fn claim(&self, outbox: &str) -> anyhow::Result<Vec<OutboxEntry>> {
        let mut con = self.redis.get().await?;
        let options = StreamAutoClaimOptions::default().count(self.settings.batch_size);
        let from = self.claim_from.lock().expect("never poisoned").clone();
        let reply: Value = con
            .xautoclaim_options(
                outbox,
                WRITER_GROUP,
                &self.consumer,
                self.settings.claim_idle.as_millis() as u64,
                from,
                options,
            )
            .await?;
        let (next, claimed) = Entries::decode_claim(reply)?;
        *self.claim_from.lock().expect("never poisoned") = next;
        let count = claimed.entries.len();
        if count > 0 {
            counter!(WRITER_CLAIMED).increment(count as u64);
            tracing::info!(%outbox, count, "claimed entries of a stalled consumer");
        }
        // A live consumer reads at least every `block`; one silent for this long is gone.
        let gone = self.settings.claim_idle * PRUNE_AFTER_CLAIM_IDLES;
        let pruned = scripts::prune_consumers(&mut con, outbox, gone, &self.consumer).await?;
        if pruned > 0 {
            tracing::info!(%outbox, pruned, "removed consumers of stopped writers");
        }
        Ok(claimed.entries)
    }

    /// Stores a batch, retrying PostgreSQL errors with backoff until it commits or `cancel`
    /// (then the entries stay pending for a later claim: nothing is dropped).
    async fn store(
        &self,
        entries: &[OutboxEntry],
        cancel: &CancellationToken,
    ) -> anyhow::Result<BatchSummary> {
        let mut backoff = Backoff::default();
        let started = Instant::now();
        loop {
            match store::store_batch(&self.db, entries).await {
                Ok(summary) => {
                    histogram!(WRITER_COMMIT_DURATION).record(started.elapsed().as_secs_f64());
                    histogram!(WRITER_BATCH_SIZE).record(entries.len() as f64);
                    counter!(WRITER_ROWS).increment(summary.inserted);
                    counter!(WRITER_REJECTED).increment(summary.rejected);
                    if summary.rejected > 0 {
                        tracing::error!(
                            rejected = summary.rejected,
                            "PostgreSQL refused redemptions Redis granted; run reconcile"
                        );
                    }
                    return Ok(summary);
                }
                Err(error) => {
                    counter!(WRITER_ERRORS).increment(1);
                    tracing::warn!(%error, entries = entries.len(), "storing a batch failed; retrying");
                    tokio::select! {
                        () = cancel.cancelled() => return Err(error).context("stopped before the batch was stored"),
                        () = tokio::time::sleep(backoff.next()) => {}
                    }
                }
            }
        }
    }

    async fn ack(&self, outbox: &str, entries: &[OutboxEntry]) -> anyhow::Result<()> {
        let ids: Vec<String> = entries.iter().map(|entry| entry.id.clone()).collect();
        let mut con = self.redis.get().await?;
        scripts::ack(&mut con, outbox, &ids).await?;
        Ok(())
    }
}

/// Pauses between retries: doubling from `BACKOFF_MIN` up to `BACKOFF_MAX`.
struct Backoff(Duration);

impl Default for Backoff {
    fn default() -> Self {
        Self(BACKOFF_MIN)
    }
}

impl Backoff {
    fn next(&mut self) -> Duration {
        let pause = self.0;
        self.0 = (self.0 * 2).min(BACKOFF_MAX);
        pause
    }
}
