//! A value computed at most once per interval and shared by every caller meanwhile: what the
//! operator's endpoints report, so that a flood of them costs the servers nothing more.

use std::{future::Future, time::Duration};

use tokio::{sync::Mutex, time::Instant};

pub struct Memo<T> {
    every: Duration,
    last: Mutex<Option<(Instant, T)>>,
}

impl<T: Clone> Memo<T> {
    pub fn new(every: Duration) -> Self {
        Self {
            every,
            last: Mutex::new(None),
        }
    }

    /// The value computed less than `every` ago, else `compute`'s. Callers that arrive while it
    /// runs wait for it rather than computing again.
    pub async fn get(&self, compute: impl Future<Output = T>) -> T {
        let mut last = self.last.lock().await;
        if let Some((at, value)) = &*last
            && at.elapsed() < self.every
        {
            return value.clone();
        }
        let value = compute.await;
        *last = Some((Instant::now(), value.clone()));
        value
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_value_is_computed_once_per_interval_however_many_ask() {
        let memo = Memo::new(Duration::from_secs(1));
        let computed = AtomicU32::new(0);
        let compute = || async {
            tokio::time::sleep(Duration::from_millis(10)).await;
            computed.fetch_add(1, Ordering::Relaxed)
        };
        let values = futures::future::join_all((0..50).map(|_| memo.get(compute()))).await;
        assert!(values.iter().all(|value| *value == 0));
        tokio::time::advance(Duration::from_millis(500)).await;
        assert_eq!(memo.get(compute()).await, 0);
        tokio::time::advance(Duration::from_millis(600)).await;
        assert_eq!(memo.get(compute()).await, 1);
    }
}
