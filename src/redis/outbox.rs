//! Reading outbox stream entries: decoding what `redeem.lua` wrote, and finding one campaign's
//! entries still queued (read by a writer but not committed, or not read yet).
//!
//! Replies are decoded from redis-rs's raw `Value`, taken apart in place: the generic stream
//! reply types copy every field into a map of their own, which cost a writer most of its time.

use redis::{AsyncCommands, RedisResult, Value};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::{domain::CampaignId, store::OutboxEntry};

/// Entries per XRANGE page when scanning a stream.
const PAGE: usize = 1_000;

/// The entry's one field (see `redeem.lua`), and what separates the parts of its value. User ids
/// and idempotency keys cannot hold a control character, so a newline cannot occur in a part.
const FIELD: &[u8] = b"r";
const SEPARATOR: char = '\n';

/// A list of stream entries as XRANGE, XREADGROUP and XAUTOCLAIM return it.
#[derive(Debug, Default)]
pub struct Entries {
    /// The entries decoded, in stream order. A malformed one (not written by `redeem.lua`) is
    /// logged and skipped, which leaves it pending: storing it is impossible and retrying it
    /// pointless.
    pub entries: Vec<OutboxEntry>,
    /// The id of the last entry in the reply, malformed or not: where the next page starts.
    pub last_id: Option<String>,
}

impl Entries {
    /// Decodes `[[id, [field, value, ...]], ...]`.
    pub fn decode(reply: Value) -> RedisResult<Self> {
        let mut decoded = Entries::default();
        for entry in array(reply)? {
            // Redis before 7.0 lists a deleted entry that XAUTOCLAIM found as nil.
            if entry == Value::Nil {
                continue;
            }
            let mut parts = array(entry)?.into_iter();
            let id = string(parts.next())?;
            match parts.next().and_then(|fields| parse_entry(&id, fields)) {
                Some(entry) => decoded.entries.push(entry),
                None => tracing::error!(%id, "malformed outbox entry left pending"),
            }
            decoded.last_id = Some(id);
        }
        Ok(decoded)
    }

    /// Adds the entries of a later reply.
    pub fn append(&mut self, later: Entries) {
        self.entries.extend(later.entries);
        if later.last_id.is_some() {
            self.last_id = later.last_id;
        }
    }

    /// Decodes an XREADGROUP reply for one stream: nil when nothing came, else
    /// `[[stream, entries]]` (RESP2) or `{stream: entries}` (RESP3).
    pub fn decode_read(reply: Value) -> RedisResult<Self> {
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
    pub fn decode_claim(reply: Value) -> RedisResult<(String, Self)> {
        let mut parts = array(reply)?.into_iter();
        let next = string(parts.next())?;
        let entries = Entries::decode(parts.next().unwrap_or(Value::Array(Vec::new())))?;
        Ok((next, entries))
    }
}

/// The value of an entry's one field: `campaign\nuser\nkey\nseq`; the time is the id's.
fn parse_entry(id: &str, fields: Value) -> Option<OutboxEntry> {
    let Value::Array(fields) = fields else {
        return None;
    };
    let [Value::BulkString(field), Value::BulkString(value)] = &fields[..] else {
        return None;
    };
    if field != FIELD {
        return None;
    }
    let mut parts = std::str::from_utf8(value).ok()?.split(SEPARATOR);
    let (campaign, user, key, seq) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let (at_ms, _) = parse_id(id)?;
    Some(OutboxEntry {
        id: id.to_owned(),
        campaign: Uuid::try_parse(campaign).ok()?,
        user: user.to_owned(),
        key: key.to_owned(),
        seq: seq.parse().ok()?,
        at: OffsetDateTime::from_unix_timestamp_nanos(i128::from(at_ms) * 1_000_000).ok()?,
    })
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

/// Every entry of `campaign` still in `outbox`, in stream order, read page by page.
pub async fn queued_entries(
    con: &mut impl AsyncCommands,
    outbox: &str,
    campaign: CampaignId,
) -> RedisResult<Vec<OutboxEntry>> {
    let campaign = campaign.as_uuid();
    let mut queued = Vec::new();
    let mut start = "-".to_owned();
    loop {
        let page = Entries::decode(con.xrange_count(outbox, &start, "+", PAGE).await?)?;
        let Some(last) = page.last_id else { break };
        start = format!("({last}");
        queued.extend(
            page.entries
                .into_iter()
                .filter(|entry| entry.campaign == campaign),
        );
    }
    Ok(queued)
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
    fn entries_decode_and_malformed_ones_are_skipped_but_paged_past() {
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
            Value::Nil,
        ]);
        let decoded = Entries::decode(reply).unwrap();
        assert_eq!(decoded.last_id.as_deref(), Some("1700000000125-0"));
        let [only] = &decoded.entries[..] else {
            panic!("one entry expected: {:?}", decoded.entries)
        };
        assert_eq!(
            (
                only.id.as_str(),
                only.campaign.to_string(),
                only.user.as_str(),
                only.key.as_str(),
                only.seq
            ),
            ("1700000000123-0", campaign.to_owned(), "user 1", "key", 7)
        );
        assert_eq!(only.at.unix_timestamp_nanos(), 1_700_000_000_123_000_000);
    }

    #[test]
    fn no_user_id_or_key_can_hold_the_separator() {
        let with = format!("a{SEPARATOR}b");
        assert!(crate::domain::UserId::parse(&with).is_err());
        assert!(crate::domain::IdempotencyKey::parse(&with).is_err());
    }

    #[test]
    fn read_and_claim_replies_decode() {
        let value = "0b6c6f1e-6a3c-4c49-9a59-2f9d1c1b7e7a\nu\nk\n1";
        assert!(Entries::decode_read(Value::Nil).unwrap().entries.is_empty());
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
