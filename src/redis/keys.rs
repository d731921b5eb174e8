//! Every Redis key name, built in one place. Each key carries its campaign's shard as a hash tag
//! (`{vg:N.k}`), so a script's keys share one Redis Cluster slot with that shard's outbox stream.
//! The tags are chosen to spread the shards evenly over the slot space: shard N of S sits at the
//! start of the N-th S-th of the 16,384 slots, so a cluster whose masters split the slots evenly
//! (as `redis-cli --cluster create` does) holds shards on every master, as long as it has at
//! most S masters.

use std::sync::Arc;

use uuid::fmt::Hyphenated;

use crate::domain::CampaignId;

/// The consumer group of the outbox writers.
pub const WRITER_GROUP: &str = "writers";

/// Redis Cluster's slot count.
const SLOTS: u16 = 16_384;

/// How campaigns map to shards, and each shard's hash tag. The shard count is fixed for the life
/// of a database: changing it would move campaigns to other keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shards {
    tags: Arc<[String]>,
}

impl Shards {
    pub fn new(count: u16) -> Self {
        assert!(
            (1..=1024).contains(&count),
            "the shard count is validated at configuration"
        );
        Self {
            tags: (0..count).map(|shard| spread_tag(shard, count)).collect(),
        }
    }

    pub fn count(&self) -> u16 {
        self.tags.len() as u16
    }

    /// The campaign's shard: FNV-1a of the id's bytes, so it never depends on the Rust version.
    pub fn of(&self, id: CampaignId) -> u16 {
        let hash = id
            .as_uuid()
            .as_bytes()
            .iter()
            .fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
                (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3)
            });
        (hash % u64::from(self.count())) as u16
    }

    /// The keys of one campaign, built on every request: by concatenation, which costs a fraction
    /// of `format!`.
    pub fn campaign(&self, id: CampaignId) -> CampaignKeys {
        let shard = self.of(id);
        let tag = &self.tags[usize::from(shard)];
        let mut buffer = [0; Hyphenated::LENGTH];
        let id = id.encode(&mut buffer);
        CampaignKeys {
            shard,
            campaign: [tag, ":c:", id].concat(),
            users: [tag, ":u:", id].concat(),
            outbox: [tag, ":outbox"].concat(),
        }
    }

    /// The streams and marker of one shard.
    pub fn shard(&self, shard: u16) -> ShardKeys {
        let tag = &self.tags[usize::from(shard)];
        ShardKeys {
            shard,
            outbox: [tag, ":outbox"].concat(),
            dead_letters: [tag, ":dead"].concat(),
            marker: [tag, ":marker"].concat(),
            fates: [tag, ":fates"].concat(),
            wait: [tag, ":wait"].concat(),
        }
    }

    /// Every shard's keys, in shard order.
    pub fn all(&self) -> impl Iterator<Item = ShardKeys> + '_ {
        (0..self.count()).map(|shard| self.shard(shard))
    }

    /// Every shard's outbox stream, in shard order.
    pub fn outboxes(&self) -> impl Iterator<Item = String> + '_ {
        self.all().map(|keys| keys.outbox)
    }
}

/// The tag of shard `shard` of `count`, `{vg:N.k}`: k is the first number that puts the tag's
/// slot within a few slots of the start of the shard's share of the slot space.
fn spread_tag(shard: u16, count: u16) -> String {
    let share = SLOTS / count;
    let start = u32::from(shard) * u32::from(SLOTS) / u32::from(count);
    let within = (share / 16).max(16).min(share);
    (0_u32..)
        .map(|k| format!("vg:{shard}.{k}"))
        .find(|tag| (start..start + u32::from(within)).contains(&u32::from(slot(tag))))
        .map(|tag| ["{", &tag, "}"].concat())
        .expect("some k lands in every range of slots")
}

/// Redis Cluster's slot of a hash tag's content: CRC16 (XMODEM) modulo 16,384.
pub fn slot(tag: &str) -> u16 {
    let crc = tag.bytes().fold(0_u16, |crc, byte| {
        (0..8).fold(crc ^ (u16::from(byte) << 8), |crc, _| {
            if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            }
        })
    });
    crc % SLOTS
}

/// The keys of one shard, which its writers work on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardKeys {
    pub shard: u16,
    /// stream: the redemptions on their way to PostgreSQL
    pub outbox: String,
    /// stream: the outbox entries that can never be stored, with why
    pub dead_letters: String,
    /// string: written once into the shard's dataset; its absence means the shard's master came
    /// back without its data (see `marker`)
    pub marker: String,
    /// channel: what PostgreSQL made of each batch the shard's writers stored (see `fates`)
    pub fates: String,
    /// string: a counter each group of replica-acknowledged redeems increments before its WAIT
    pub wait: String,
}

/// The keys one campaign's scripts touch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CampaignKeys {
    pub shard: u16,
    /// hash: total, remaining, name
    pub campaign: String,
    /// hash: userId -> idempotencyKey
    pub users: String,
    /// stream: the shard's outbox
    pub outbox: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_campaigns_keys_share_its_shard_tag() {
        let id = CampaignId::parse("00000000-0000-0000-0000-000000000001").unwrap();
        let shards = Shards::new(16);
        let keys = shards.campaign(id);
        let shard = shards.shard(shards.of(id));
        let tag = keys.outbox.strip_suffix(":outbox").unwrap();
        assert_eq!(keys.campaign, format!("{tag}:c:{id}"));
        assert_eq!(keys.users, format!("{tag}:u:{id}"));
        assert_eq!(shard.outbox, keys.outbox);
        assert_eq!(shard.dead_letters, format!("{tag}:dead"));
        assert_eq!(shard.marker, format!("{tag}:marker"));
    }

    #[test]
    fn the_shard_of_an_id_and_its_tag_never_change() {
        // Pinned values: a change here would strand every existing campaign's keys.
        let shards = Shards::new(16);
        let shard = |id: &str| shards.of(CampaignId::parse(id).unwrap());
        assert_eq!(shard("6f9619ff-8b86-d011-b42d-00c04fc964ff"), 0);
        assert_eq!(shard("00000000-0000-0000-0000-000000000001"), 2);
        assert_eq!(shards.shard(0).outbox, "{vg:0.61}:outbox");
        assert_eq!(shards.shard(15).outbox, "{vg:15.237}:outbox");
    }

    #[test]
    fn slots_are_redis_clusters() {
        // From `CLUSTER KEYSLOT`.
        assert_eq!(slot("foo"), 12182);
        assert_eq!(slot("123456789"), 12739);
        assert_eq!(slot(""), 0);
    }

    /// The slot ranges `redis-cli --cluster create` gives `masters` masters.
    fn even_split(masters: u16) -> Vec<(u16, u16)> {
        let per_master = f64::from(SLOTS) / f64::from(masters);
        let mut first = 0;
        (0..masters)
            .map(|i| {
                let last = if i == masters - 1 {
                    SLOTS - 1
                } else {
                    ((f64::from(i + 1) * per_master - 1.0).round() as u16).max(first)
                };
                let range = (first, last);
                first = last + 1;
                range
            })
            .collect()
    }

    #[test]
    fn sixteen_shards_spread_over_every_master_of_up_to_sixteen() {
        let shards = Shards::new(16);
        let slots: Vec<u16> = shards
            .all()
            .map(|keys| slot(keys.outbox.split(['{', '}']).nth(1).unwrap()))
            .collect();
        for masters in 1..=16 {
            for (first, last) in even_split(masters) {
                let held = slots.iter().filter(|s| (first..=last).contains(s)).count();
                let fair = usize::from(16 / masters);
                assert!(
                    held >= fair && held <= fair + 1,
                    "{masters} masters: slots {first}-{last} hold {held} shards"
                );
            }
        }
    }

    #[test]
    fn every_shard_count_gets_its_tags() {
        for count in [1, 3, 16, 100, 1024] {
            let shards = Shards::new(count);
            let outboxes: std::collections::HashSet<String> = shards.outboxes().collect();
            assert_eq!(outboxes.len(), usize::from(count));
        }
    }

    #[test]
    fn campaigns_spread_over_all_shards() {
        let shards = Shards::new(16);
        let mut seen = [false; 16];
        for _ in 0..1_000 {
            seen[usize::from(shards.of(CampaignId::new_random()))] = true;
        }
        assert!(seen.iter().all(|s| *s));
    }
}
