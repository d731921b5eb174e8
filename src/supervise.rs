//! Supervised background loops. A loop that panics or returns while the process runs is logged at
//! error level, counted, and started again after a backoff; nothing else of the process is
//! affected. `Liveness` counts the writer loops running per shard, for `/ready`.

use std::{
    any::Any,
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    },
    time::{Duration, Instant},
};

use metrics::counter;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{backoff::Backoff, telemetry::metrics::TASK_RESTARTS};

/// A loop that ran this long before it failed starts its backoff over.
const STEADY: Duration = Duration::from_secs(60);

/// Runs the loop `start` makes on `tasks` until `cancel`, starting a new one after a backoff
/// whenever it panics or returns before then. `kind` labels the restarts metric; `name` (such as
/// the loop's shard) goes into the log line.
pub fn supervise<F, Fut>(
    tasks: &TaskTracker,
    kind: &'static str,
    name: String,
    cancel: CancellationToken,
    start: F,
) where
    F: Fn() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    tasks.spawn(async move {
        let mut backoff = Backoff::default();
        loop {
            let started = Instant::now();
            // A task of its own, so that a panic ends only it and comes back as an error here.
            let ended = tokio::spawn(start()).await;
            let how = match ended {
                Ok(()) if cancel.is_cancelled() => return,
                Ok(()) => "returned".to_owned(),
                Err(error) if error.is_panic() => {
                    format!("panicked: {}", panic_message(error.into_panic()))
                }
                Err(error) => format!("ended: {error}"),
            };
            if cancel.is_cancelled() {
                tracing::error!(task = kind, %name, "a background loop {how} while stopping");
                return;
            }
            counter!(TASK_RESTARTS, "task" => kind).increment(1);
            if started.elapsed() >= STEADY {
                backoff = Backoff::default();
            }
            let pause = backoff.pause();
            tracing::error!(
                task = kind,
                %name,
                restart_in_ms = pause.as_millis() as u64,
                "a background loop {how}; starting it again"
            );
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(pause) => {}
            }
        }
    });
}

fn panic_message(payload: Box<dyn Any + Send>) -> String {
    match payload.downcast::<String>() {
        Ok(message) => *message,
        Err(payload) => payload.downcast_ref::<&str>().map_or_else(
            || "(no message)".to_owned(),
            |message| (*message).to_owned(),
        ),
    }
}

/// How many writer loops of this process run per shard.
#[derive(Debug)]
pub struct Liveness {
    per_shard: Vec<AtomicU32>,
}

impl Liveness {
    pub fn new(shards: u16) -> Arc<Self> {
        Arc::new(Self {
            per_shard: (0..shards).map(|_| AtomicU32::new(0)).collect(),
        })
    }

    /// Counts a loop of `shard` as running until the guard is dropped (by its end or its panic).
    pub fn enter(self: &Arc<Self>, shard: u16) -> Alive {
        self.per_shard[usize::from(shard)].fetch_add(1, Ordering::Relaxed);
        Alive {
            liveness: self.clone(),
            shard,
        }
    }

    /// The shards no loop of this process runs for now, in shard order.
    pub fn without_writer(&self) -> Vec<u16> {
        (0..)
            .zip(&self.per_shard)
            .filter(|(_, live)| live.load(Ordering::Relaxed) == 0)
            .map(|(shard, _)| shard)
            .collect()
    }
}

/// A running loop, counted by its `Liveness` while it lives.
#[derive(Debug)]
pub struct Alive {
    liveness: Arc<Liveness>,
    shard: u16,
}

impl Drop for Alive {
    fn drop(&mut self) {
        self.liveness.per_shard[usize::from(self.shard)].fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shard_is_live_while_a_guard_of_it_lives() {
        let liveness = Liveness::new(3);
        assert_eq!(liveness.without_writer(), [0, 1, 2]);
        let first = liveness.enter(1);
        let second = liveness.enter(1);
        assert_eq!(liveness.without_writer(), [0, 2]);
        drop(first);
        assert_eq!(liveness.without_writer(), [0, 2]);
        drop(second);
        assert_eq!(liveness.without_writer(), [0, 1, 2]);
    }

    #[tokio::test]
    async fn a_loop_that_panics_or_returns_is_started_again_until_cancelled() {
        let tasks = TaskTracker::new();
        let cancel = CancellationToken::new();
        let starts = Arc::new(AtomicU32::new(0));
        let counted = starts.clone();
        let stop = cancel.clone();
        supervise(&tasks, "test", "flaky".into(), cancel.clone(), move || {
            let (counted, stop) = (counted.clone(), stop.clone());
            async move {
                match counted.fetch_add(1, Ordering::Relaxed) {
                    0 => panic!("the first run fails"),
                    1 => {}
                    _ => stop.cancelled().await,
                }
            }
        });
        tasks.close();
        let deadline = Instant::now() + Duration::from_secs(5);
        while starts.load(Ordering::Relaxed) < 3 {
            assert!(Instant::now() < deadline, "not started again");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        cancel.cancel();
        tokio::time::timeout(Duration::from_secs(5), tasks.wait())
            .await
            .expect("the supervisor ends when cancelled");
        assert_eq!(starts.load(Ordering::Relaxed), 3);
    }
}
