//! The outbox streams: the writers' stream commands (group, reads, claims, touches), decoding
//! what `redeem.lua` wrote, and finding campaigns' entries still queued (read by a writer but not
//! committed, or not read yet).
//!
//! Replies are decoded from redis-rs's raw `Value`, taken apart in place: the generic stream
//! reply types copy every field into a map of their own, which cost a writer most of its time.

use std::{
    collections::{HashMap, HashSet},
    time::Duration,
};

use redis::{RedisResult, Value, aio::ConnectionLike};
use time::OffsetDateTime;

use super::keys::{ShardKeys, WRITER_GROUP};
use crate::domain::{CampaignId, Holder, IdempotencyKey, OutboxEntry, UserId};

/// Entries per XRANGE page when scanning a stream.
const PAGE: usize = 1_000;

/// The entry's one field (see `redeem.lua`), and what separates the parts of its value. User ids
/// and idempotency keys cannot hold a control character, so a newline cannot occur in a part.
const FIELD: &[u8] = b"r";
const SEPARATOR: char = '\n';

/// A list of stream entries as XRANGE, XREADGROUP and XAUTOCLAIM return it.
#[derive(Debug, Default)]
pub struct Entries {
    /// The entries decoded, in stream order.
    pub entries: Vec<OutboxEntry>,
    /// Entries `redeem.lua` did not write: they can never be stored (the writer moves them to
    /// the shard's dead-letter stream).
    pub malformed: Vec<Malformed>,
    /// Ids a consumer's own pending list still held after their entries left the stream.
    pub deleted: Vec<String>,
    /// The id of the last entry in the reply, whatever it held: where the next page starts.
    pub last_id: Option<String>,
}

/// An entry that cannot be decoded, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Malformed {
    pub id: String,
    pub reason: String,
}

impl Entries {
    /// Decodes `[[id, [field, value, ...]], ...]`.
    pub fn decode(reply: Value) -> RedisResult<Self> {
        Self::decode_where(reply, |_| true)
    }

    /// `decode`, passing over (before decoding them) the entries whose fields `keep` refuses.
    fn decode_where(reply: Value, keep: impl Fn(&Value) -> bool) -> RedisResult<Self> {
        let mut decoded = Entries::default();
        for entry in array(reply)? {
            // Redis before 7.0 lists a deleted entry that XAUTOCLAIM found as nil.
            if entry == Value::Nil {
                continue;
            }
            let mut parts = array(entry)?.into_iter();
            let id = string(parts.next())?;
            match parts.next() {
                // A consumer's own pending entry that was deleted from the stream.
                None | Some(Value::Nil) => decoded.deleted.push(id.clone()),
                Some(fields) if !keep(&fields) => {}
                Some(fields) => match parse_entry(&id, fields) {
                    Ok(entry) => decoded.entries.push(entry),
                    Err(reason) => decoded.malformed.push(Malformed {
                        id: id.clone(),
                        reason: reason.to_owned(),
                    }),
                },
            }
            decoded.last_id = Some(id);
        }
        Ok(decoded)
    }

    /// Adds the entries of a later reply.
    pub fn append(&mut self, later: Entries) {
        self.entries.extend(later.entries);
        self.malformed.extend(later.malformed);
        self.deleted.extend(later.deleted);
        if later.last_id.is_some() {
            self.last_id = later.last_id;
        }
    }

    /// Whether the reply listed nothing at all.
    pub fn is_empty(&self) -> bool {
        self.last_id.is_none()
    }

    /// How many entries the reply listed, whatever they held.
    pub fn listed(&self) -> usize {
        self.entries.len() + self.malformed.len() + self.deleted.len()
    }

    /// Decodes an XREADGROUP reply for one stream: nil when nothing came, else
    /// `[[stream, entries]]` (RESP2) or `{stream: entries}` (RESP3).
    fn decode_read(reply: Value) -> RedisResult<Self> {
        let entries = match reply {
            Value::Nil => None,
            Value::Map(streams) => streams.into_iter().next().map(|(_, entries)| entries),
            other => match array(other)?.into_iter().next() {
                Some(stream) => Some(array(stream)?.into_iter().nth(1).unwrap_or(Value::Nil)),
                None => None,
            },
        };
        entries.map_or_else(|| Ok(Entries::default()), Entries::decode)
    }

    /// Decodes an XAUTOCLAIM reply, `[next start, entries, deleted ids]`: the entries, and where
    /// the next scan of the pending list starts.
    fn decode_claim(reply: Value) -> RedisResult<(String, Self)> {
        let mut parts = array(reply)?.into_iter();
        let next = string(parts.next())?;
        let entries = Entries::decode(parts.next().unwrap_or(Value::Array(Vec::new())))?;
        Ok((next, entries))
    }
}

/// The value of an entry's one field: `campaign\nuser\nkey\nseq`; the time is the id's.
fn parse_entry(id: &str, fields: Value) -> Result<OutboxEntry, &'static str> {
    let Value::Array(fields) = fields else {
        return Err("not a list of fields");
    };
    let [Value::BulkString(field), Value::BulkString(value)] = &fields[..] else {
        return Err("not one field");
    };
    if field != FIELD {
        return Err("not the field r");
    }
    let value = std::str::from_utf8(value).map_err(|_| "not UTF-8")?;
    let mut parts = value.split(SEPARATOR);
    let mut part = || parts.next().ok_or("fewer than four parts");
    let (campaign, user, key, seq) = (part()?, part()?, part()?, part()?);
    if parts.next().is_some() {
        return Err("more than four parts");
    }
    let (at_ms, _) = parse_id(id).ok_or("not a stream entry id")?;
    Ok(OutboxEntry {
        id: id.to_owned(),
        campaign: CampaignId::parse(campaign).map_err(|_| "the campaign is not a UUID")?,
        holder: Holder {
            user: UserId::parse(user).map_err(|_| "the user id breaks its rule")?,
            key: IdempotencyKey::parse(key).map_err(|_| "the key breaks its rule")?,
        },
        seq: seq
            .parse()
            .map_err(|_| "the voucher number is not an integer")?,
        at: OffsetDateTime::from_unix_timestamp_nanos(i128::from(at_ms) * 1_000_000)
            .map_err(|_| "the id's time is out of range")?,
    })
}

/// The campaign an entry's fields name, read from its value's first part alone.
fn campaign_of(fields: &Value) -> Option<CampaignId> {
    let Value::Array(fields) = fields else {
        return None;
    };
    let [_, Value::BulkString(value)] = &fields[..] else {
        return None;
    };
    let campaign = value.get(..uuid::fmt::Hyphenated::LENGTH)?;
    CampaignId::parse(std::str::from_utf8(campaign).ok()?).ok()
}

fn array(value: Value) -> RedisResult<Vec<Value>> {
    match value {
        Value::Array(items) => Ok(items),
        other => Err(super::unexpected_reply(
            "a stream command",
            format!("{other:?}"),
        )),
    }
}

fn string(value: Option<Value>) -> RedisResult<String> {
    match value {
        Some(Value::BulkString(bytes)) => String::from_utf8(bytes)
            .map_err(|error| super::unexpected_reply("a stream command", format!("{error}"))),
        Some(Value::SimpleString(text)) => Ok(text),
        other => Err(super::unexpected_reply(
            "a stream command",
            format!("{other:?}"),
        )),
    }
}

/// A stream entry id (`<ms>-<seq>`) as a pair that orders like the stream.
pub fn parse_id(id: &str) -> Option<(u64, u64)> {
    let (ms, seq) = id.split_once('-')?;
    Some((ms.parse().ok()?, seq.parse().ok()?))
}

/// Creates the writers' consumer group (reading from the stream's start, creating the stream)
/// unless it exists.
pub async fn create_group(con: &mut impl ConnectionLike, outbox: &str) -> RedisResult<()> {
    let created: RedisResult<()> = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(outbox)
        .arg(WRITER_GROUP)
        .arg("0")
        .arg("MKSTREAM")
        .query_async(con)
        .await;
    match created {
        Err(error) if error.code() == Some("BUSYGROUP") => Ok(()),
        other => other,
    }
}

/// Up to `count` entries never delivered to any writer, for `consumer`; with `block`, waits that
/// long for the first when there is none.
pub async fn read_new(
    con: &mut impl ConnectionLike,
    outbox: &str,
    consumer: &str,
    count: usize,
    block: Option<Duration>,
) -> RedisResult<Entries> {
    let mut command = redis::cmd("XREADGROUP");
    command
        .arg("GROUP")
        .arg(WRITER_GROUP)
        .arg(consumer)
        .arg("COUNT")
        .arg(count);
    if let Some(block) = block {
        command.arg("BLOCK").arg(block.as_millis().max(1) as u64);
    }
    let reply = command
        .arg("STREAMS")
        .arg(outbox)
        .arg(">")
        .query_async(con)
        .await?;
    Entries::decode_read(reply)
}

/// Up to `count` of the entries delivered to `consumer` and not acknowledged yet, oldest first:
/// what it held when its process died or its connection dropped.
pub async fn read_own_pending(
    con: &mut impl ConnectionLike,
    outbox: &str,
    consumer: &str,
    count: usize,
) -> RedisResult<Entries> {
    let reply = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg(WRITER_GROUP)
        .arg(consumer)
        .arg("COUNT")
        .arg(count)
        .arg("STREAMS")
        .arg(outbox)
        .arg("0")
        .query_async(con)
        .await?;
    Entries::decode_read(reply)
}

/// Takes over up to `count` entries pending with other consumers for at least `idle`, scanning
/// the pending list from `from`; returns where the next scan starts, and the entries.
pub async fn claim_idle(
    con: &mut impl ConnectionLike,
    outbox: &str,
    consumer: &str,
    idle: Duration,
    from: &str,
    count: usize,
) -> RedisResult<(String, Entries)> {
    let reply = redis::cmd("XAUTOCLAIM")
        .arg(outbox)
        .arg(WRITER_GROUP)
        .arg(consumer)
        .arg(idle.as_millis() as u64)
        .arg(from)
        .arg("COUNT")
        .arg(count)
        .query_async(con)
        .await?;
    Entries::decode_claim(reply)
}

/// Marks entries `consumer` holds as just delivered, so that no other writer claims them while
/// it is still storing them (a long PostgreSQL outage).
pub async fn touch(
    con: &mut impl ConnectionLike,
    outbox: &str,
    consumer: &str,
    ids: &[&str],
) -> RedisResult<()> {
    redis::cmd("XCLAIM")
        .arg(outbox)
        .arg(WRITER_GROUP)
        .arg(consumer)
        .arg(0)
        .arg(ids)
        .arg("JUSTID")
        .query_async::<Value>(con)
        .await
        .map(drop)
}

/// The id of the stream's newest entry, `None` when it is empty.
pub async fn last_id(con: &mut impl ConnectionLike, outbox: &str) -> RedisResult<Option<String>> {
    let reply = redis::cmd("XREVRANGE")
        .arg(outbox)
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(1)
        .query_async(con)
        .await?;
    Ok(Entries::decode(reply)?.last_id)
}

/// Every entry of the `campaigns` still in `outbox`, per campaign in stream order, read page by
/// page in one pass over the stream, up to its newest entry when the pass began.
pub async fn queued_entries(
    con: &mut impl ConnectionLike,
    outbox: &str,
    campaigns: &HashSet<CampaignId>,
) -> RedisResult<HashMap<CampaignId, Vec<OutboxEntry>>> {
    let mut queued: HashMap<CampaignId, Vec<OutboxEntry>> = HashMap::new();
    let Some(end) = last_id(con, outbox).await? else {
        return Ok(queued);
    };
    let mut start = "-".to_owned();
    // Only the entries of these campaigns are decoded: a backlog's others cost their id only.
    let wanted = |fields: &Value| campaign_of(fields).is_some_and(|id| campaigns.contains(&id));
    loop {
        let page = array(range_page(con, outbox, &start, &end).await?)?;
        let listed = page.len();
        let page = Entries::decode_where(Value::Array(page), wanted)?;
        for entry in page.entries {
            queued.entry(entry.campaign).or_default().push(entry);
        }
        match page.last_id {
            Some(last) if listed == PAGE && last != end => start = format!("({last}"),
            _ => return Ok(queued),
        }
    }
}

/// Up to `PAGE` entries of `stream` from `start` (`-`, or `(<id>` for those after an id) to
/// `end` (an id, or `+`).
async fn range_page(
    con: &mut impl ConnectionLike,
    stream: &str,
    start: &str,
    end: &str,
) -> RedisResult<Value> {
    redis::cmd("XRANGE")
        .arg(stream)
        .arg(start)
        .arg(end)
        .arg("COUNT")
        .arg(PAGE)
        .query_async(con)
        .await
}

/// The entries of one campaign still in `outbox`, in stream order.
pub async fn queued_entries_of(
    con: &mut impl ConnectionLike,
    outbox: &str,
    campaign: CampaignId,
) -> RedisResult<Vec<OutboxEntry>> {
    let mut queued = queued_entries(con, outbox, &HashSet::from([campaign])).await?;
    Ok(queued.remove(&campaign).unwrap_or_default())
}

/// One entry of a shard's dead-letter stream (see `dead_letter.lua`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DeadLetter {
    pub shard: u16,
    /// The outbox entry's id.
    pub entry_id: String,
    pub reason: String,
    /// The outbox entry's own fields, as text (bytes that are not UTF-8 replaced).
    pub fields: Vec<(String, String)>,
}

/// Every entry of the shard's dead-letter stream, oldest first.
pub async fn dead_letters(
    con: &mut impl ConnectionLike,
    shard: &ShardKeys,
) -> RedisResult<Vec<DeadLetter>> {
    let mut letters = Vec::new();
    let mut start = "-".to_owned();
    loop {
        let page = array(range_page(con, &shard.dead_letters, &start, "+").await?)?;
        let full = page.len() == PAGE;
        for entry in page {
            let mut parts = array(entry)?.into_iter();
            start = format!("({}", string(parts.next())?);
            let mut letter = DeadLetter {
                shard: shard.shard,
                entry_id: String::new(),
                reason: String::new(),
                fields: Vec::new(),
            };
            let fields = array(parts.next().unwrap_or(Value::Array(Vec::new())))?;
            let mut texts = fields.into_iter().map(|field| match field {
                Value::BulkString(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
                other => format!("{other:?}"),
            });
            while let (Some(name), Some(value)) = (texts.next(), texts.next()) {
                match name.as_str() {
                    "id" => letter.entry_id = value,
                    "reason" => letter.reason = value,
                    own => letter
                        .fields
                        .push((own.strip_prefix("f:").unwrap_or(own).to_owned(), value)),
                }
            }
            letters.push(letter);
        }
        if !full {
            return Ok(letters);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &str, field: &str, value: &str) -> Value {
        Value::Array(vec![
            Value::BulkString(id.into()),
            Value::Array(vec![
                Value::BulkString(field.into()),
                Value::BulkString(value.into()),
            ]),
        ])
    }

    #[test]
    fn entry_ids_order_like_the_stream() {
        assert_eq!(parse_id("1700000000000-12"), Some((1_700_000_000_000, 12)));
        assert!(parse_id("9-10") > parse_id("9-9"));
        assert!(parse_id("10-0") > parse_id("9-99"));
        assert_eq!(parse_id("nonsense"), None);
    }

    #[test]
    fn entries_decode_and_malformed_ones_are_named_with_why() {
        let campaign = "0b6c6f1e-6a3c-4c49-9a59-2f9d1c1b7e7a";
        let reply = Value::Array(vec![
            entry(
                "1700000000123-0",
                "r",
                &format!("{campaign}\nuser 1\nkey\n7"),
            ),
            entry(
                "1700000000124-0",
                "r",
                &format!("{campaign}\nuser\nkey\n8\nextra"),
            ),
            entry("1700000000125-0", "campaign", campaign),
            entry(
                "1700000000126-0",
                "r",
                &format!("{campaign}\nnul\u{0}user\nkey\n9"),
            ),
            Value::Nil,
            Value::Array(vec![
                Value::BulkString(b"1700000000127-0".to_vec()),
                Value::Nil,
            ]),
        ]);
        let decoded = Entries::decode(reply).unwrap();
        assert_eq!(decoded.last_id.as_deref(), Some("1700000000127-0"));
        let [only] = &decoded.entries[..] else {
            panic!("one entry expected: {:?}", decoded.entries)
        };
        assert_eq!(
            (
                only.id.as_str(),
                only.campaign.to_string(),
                only.holder.user.as_str(),
                only.holder.key.as_str(),
                only.seq
            ),
            ("1700000000123-0", campaign.to_owned(), "user 1", "key", 7)
        );
        assert_eq!(only.at.unix_timestamp_nanos(), 1_700_000_000_123_000_000);
        let malformed: Vec<(&str, &str)> = decoded
            .malformed
            .iter()
            .map(|m| (m.id.as_str(), m.reason.as_str()))
            .collect();
        assert_eq!(
            malformed,
            [
                ("1700000000124-0", "more than four parts"),
                ("1700000000125-0", "not the field r"),
                ("1700000000126-0", "the user id breaks its rule"),
            ]
        );
        assert_eq!(decoded.deleted, ["1700000000127-0"]);
    }

    #[test]
    fn only_the_wanted_campaigns_entries_are_decoded() {
        let (wanted, other) = (CampaignId::new_random(), CampaignId::new_random());
        let reply = Value::Array(vec![
            entry("1-0", "r", &format!("{wanted}\nu\nk\n1")),
            entry("2-0", "r", &format!("{other}\nu\nk\n2")),
            entry("3-0", "r", "garbage"),
        ]);
        let keep = |fields: &Value| campaign_of(fields) == Some(wanted);
        let decoded = Entries::decode_where(reply, keep).unwrap();
        let ids: Vec<&str> = decoded.entries.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(ids, ["1-0"]);
        assert!(decoded.malformed.is_empty());
        assert_eq!(decoded.last_id.as_deref(), Some("3-0"));
    }

    #[test]
    fn no_user_id_or_key_can_hold_the_separator() {
        let with = format!("a{SEPARATOR}b");
        assert!(UserId::parse(&with).is_err());
        assert!(IdempotencyKey::parse(&with).is_err());
    }

    #[test]
    fn read_and_claim_replies_decode() {
        let value = "0b6c6f1e-6a3c-4c49-9a59-2f9d1c1b7e7a\nu\nk\n1";
        assert!(Entries::decode_read(Value::Nil).unwrap().is_empty());
        let read = Value::Array(vec![Value::Array(vec![
            Value::BulkString(b"{vg:0}:outbox".to_vec()),
            Value::Array(vec![entry("5-0", "r", value)]),
        ])]);
        assert_eq!(Entries::decode_read(read).unwrap().entries.len(), 1);
        let resp3 = Value::Map(vec![(
            Value::BulkString(b"{vg:0}:outbox".to_vec()),
            Value::Array(vec![entry("5-0", "r", value)]),
        )]);
        assert_eq!(Entries::decode_read(resp3).unwrap().entries.len(), 1);
        let claim = Value::Array(vec![
            Value::BulkString(b"7-0".to_vec()),
            Value::Array(vec![entry("6-0", "r", value)]),
            Value::Array(vec![]),
        ]);
        let (next, claimed) = Entries::decode_claim(claim).unwrap();
        assert_eq!((next.as_str(), claimed.entries.len()), ("7-0", 1));
        assert!(Entries::decode(Value::Int(1)).is_err());
    }
}
