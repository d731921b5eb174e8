//! The writers' news for `--ack postgres`: after each commit, a writer publishes on its shard's
//! channel what PostgreSQL made of every entry of the batch, so that whichever gateway answers a
//! redeem learns when its row is stored, whatever instance's writer stored it. A message is a
//! run of four lines per entry: campaign, user, key, fate (user ids and keys hold no newline).
//! Messages are best effort: a waiter that misses one finds its row in PostgreSQL.

use redis::{RedisResult, aio::ConnectionLike};
use uuid::fmt::Hyphenated;

use super::Connection;
use crate::domain::{CampaignId, Fate, Holder, OutboxEntry};

const SEPARATOR: char = '\n';

/// A redemption's name in the messages: campaign, user and key, one per line.
pub fn identity(campaign: CampaignId, holder: &Holder) -> String {
    let mut id = [0; Hyphenated::LENGTH];
    [
        campaign.encode(&mut id),
        "\n",
        holder.user.as_str(),
        "\n",
        holder.key.as_str(),
    ]
    .concat()
}

/// The message for a committed batch.
pub fn encode<'a>(fates: impl IntoIterator<Item = (&'a OutboxEntry, Fate)>) -> String {
    let mut message = String::new();
    for (entry, fate) in fates {
        message.push_str(&identity(entry.campaign, &entry.holder));
        message.push(SEPARATOR);
        message.push_str(fate.as_str());
        message.push(SEPARATOR);
    }
    message
}

/// The (identity, fate) pairs of a message; a part that does not decode ends it.
pub fn decode(message: &str) -> Vec<(String, Fate)> {
    let mut lines = message.split_terminator(SEPARATOR);
    let mut fates = Vec::new();
    while let (Some(campaign), Some(user), Some(key), Some(fate)) =
        (lines.next(), lines.next(), lines.next(), lines.next())
    {
        let Some(fate) = Fate::parse(fate) else {
            break;
        };
        fates.push(([campaign, "\n", user, "\n", key].concat(), fate));
    }
    fates
}

/// Publishes a message on a shard's channel: sharded (SPUBLISH, served by the channel's slot's
/// master and replicas) on a cluster, plain on one server.
pub async fn publish(con: &mut Connection, channel: &str, message: &str) -> RedisResult<()> {
    let command = match con {
        Connection::Server(_) => "PUBLISH",
        Connection::Cluster(_) => "SPUBLISH",
    };
    let mut cmd = redis::cmd(command);
    cmd.arg(channel).arg(message);
    con.req_packed_command(&cmd).await.map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::RejectReason;

    #[test]
    fn a_message_names_each_entry_with_its_fate() {
        let entry = |user: &str| OutboxEntry {
            id: "1-1".into(),
            campaign: CampaignId::new_random(),
            holder: Holder::parse(user, "key 1").unwrap(),
            seq: 1,
            at: time::OffsetDateTime::UNIX_EPOCH,
        };
        let (stored, refused) = (entry("ann"), entry("bob, \"b\""));
        let message = encode([
            (&stored, Fate::Stored),
            (&refused, Fate::Refused(RejectReason::SoldOut)),
        ]);
        assert_eq!(
            decode(&message),
            [
                (identity(stored.campaign, &stored.holder), Fate::Stored),
                (
                    identity(refused.campaign, &refused.holder),
                    Fate::Refused(RejectReason::SoldOut)
                ),
            ]
        );
        assert_eq!(decode("a\nb\nc\nlost\n"), []);
        assert_eq!(decode("a\nb"), []);
    }
}
