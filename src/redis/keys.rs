//! Every Redis key name, built in one place. Each key carries its campaign's shard as a hash tag
//! (`{vg:N}`), so a script's keys share one Redis Cluster slot with that shard's outbox stream.

use uuid::fmt::Hyphenated;

use crate::domain::CampaignId;

/// The consumer group of the outbox writers.
pub const WRITER_GROUP: &str = "writers";

/// How campaigns map to shards. The shard count is fixed for the life of a database: changing it
/// would move campaigns to other keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shards(u16);

impl Shards {
    pub fn new(count: u16) -> Self {
        assert!(count > 0, "the shard count is validated at configuration");
        Self(count)
    }

    pub fn count(&self) -> u16 {
        self.0
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
        (hash % u64::from(self.0)) as u16
    }

    /// The keys of one campaign, built on every request: by concatenation, which costs a fraction
    /// of `format!`.
    pub fn campaign(&self, id: CampaignId) -> CampaignKeys {
        let shard = self.of(id);
        let tag = tag(shard);
        let mut buffer = [0; Hyphenated::LENGTH];
        let id = id.encode(&mut buffer);
        CampaignKeys {
            campaign: [&tag, ":c:", id].concat(),
            users: [&tag, ":u:", id].concat(),
            outbox: outbox(shard),
        }
    }

    /// Every shard's outbox stream, in shard order.
    pub fn outboxes(&self) -> impl Iterator<Item = String> {
        (0..self.0).map(outbox)
    }

    /// Every shard's keys, in shard order.
    pub fn all(&self) -> impl Iterator<Item = ShardKeys> {
        (0..self.0).map(ShardKeys::of)
    }
}

/// The outbox stream of one shard.
pub fn outbox(shard: u16) -> String {
    tag(shard) + ":outbox"
}

/// The streams of one shard, which its writers work on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardKeys {
    pub shard: u16,
    /// stream: the redemptions on their way to PostgreSQL
    pub outbox: String,
    /// stream: the outbox entries that can never be stored, with why
    pub dead_letters: String,
}

impl ShardKeys {
    pub fn of(shard: u16) -> Self {
        Self {
            shard,
            outbox: outbox(shard),
            dead_letters: tag(shard) + ":dead",
        }
    }
}

/// The hash tag of a shard's keys, `{vg:N}`.
fn tag(shard: u16) -> String {
    ["{vg:", &shard.to_string(), "}"].concat()
}

/// The keys one campaign's scripts touch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CampaignKeys {
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
        let tag = format!("{{vg:{}}}", shards.of(id));
        let keys = shards.campaign(id);
        assert_eq!(keys.campaign, format!("{tag}:c:{id}"));
        assert_eq!(keys.users, format!("{tag}:u:{id}"));
        assert_eq!(keys.outbox, format!("{tag}:outbox"));
        let shard = ShardKeys::of(shards.of(id));
        assert_eq!(shard.outbox, keys.outbox);
        assert_eq!(shard.dead_letters, format!("{tag}:dead"));
    }

    #[test]
    fn the_shard_of_an_id_never_changes() {
        // Pinned values: a change here would strand every existing campaign's keys.
        let shard = |id: &str| Shards::new(16).of(CampaignId::parse(id).unwrap());
        assert_eq!(shard("6f9619ff-8b86-d011-b42d-00c04fc964ff"), 0);
        assert_eq!(shard("00000000-0000-0000-0000-000000000001"), 2);
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
