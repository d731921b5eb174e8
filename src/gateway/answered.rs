//! The highest voucher number this process has given (its redeem script returned it), per
//! campaign, for the campaigns it served recently. If Redis loses its data, hydration restarts numbering above it, so the
//! acknowledged numbers that never reached PostgreSQL stay visible as gaps for reconcile.
//!
//! Bounded: two generations of at most `GENERATION` campaigns each. When the current one is
//! full it becomes the previous one and the old previous one is dropped, so a campaign that is
//! still being redeemed stays (it is written to the current generation again), and one untouched
//! for two generations is forgotten. Forgetting only weakens the count of lost acknowledgements
//! after a Redis data loss (reconcile's count becomes a lower bound), never a decision.

use std::{collections::HashMap, mem, sync::Mutex};

use crate::domain::CampaignId;

/// Campaigns per generation: with two, at most twice this many are remembered (a few MiB).
const GENERATION: usize = 50_000;

#[derive(Debug, Default)]
pub struct Answered {
    generations: Mutex<Generations>,
}

#[derive(Debug, Default)]
struct Generations {
    current: HashMap<CampaignId, i64>,
    previous: HashMap<CampaignId, i64>,
}

impl Answered {
    /// Records that this process answered voucher number `seq` of the campaign.
    pub fn record(&self, id: CampaignId, seq: i64) {
        let mut generations = self.generations.lock().expect("never poisoned");
        if let Some(highest) = generations.current.get_mut(&id) {
            *highest = (*highest).max(seq);
            return;
        }
        let earlier = generations.previous.get(&id).copied().unwrap_or(0);
        if generations.current.len() >= GENERATION {
            generations.previous = mem::take(&mut generations.current);
        }
        generations.current.insert(id, earlier.max(seq));
    }

    /// The highest number this process answered for the campaign, 0 if none it remembers.
    pub fn highest(&self, id: CampaignId) -> i64 {
        let generations = self.generations.lock().expect("never poisoned");
        let current = generations.current.get(&id).copied().unwrap_or(0);
        let previous = generations.previous.get(&id).copied().unwrap_or(0);
        current.max(previous)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_highest_number_is_kept() {
        let answered = Answered::default();
        let id = CampaignId::new_random();
        answered.record(id, 5);
        answered.record(id, 3);
        assert_eq!(answered.highest(id), 5);
        assert_eq!(answered.highest(CampaignId::new_random()), 0);
    }

    #[test]
    fn a_campaign_in_use_survives_generations_and_an_idle_one_is_forgotten() {
        let answered = Answered::default();
        let (busy, idle) = (CampaignId::new_random(), CampaignId::new_random());
        answered.record(idle, 7);
        answered.record(busy, 9);
        for round in 0..3 {
            for _ in 0..GENERATION {
                answered.record(CampaignId::new_random(), 1);
            }
            answered.record(busy, 10 + round);
        }
        assert_eq!(answered.highest(busy), 12);
        assert_eq!(answered.highest(idle), 0);
        let generations = answered.generations.lock().unwrap();
        assert!(generations.current.len() + generations.previous.len() <= 2 * GENERATION);
    }
}
