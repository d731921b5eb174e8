//! Reading outbox stream entries: decoding what `redeem.lua` wrote, and finding one campaign's
//! entries still queued (read by a writer but not committed, or not read yet).

use redis::{
    AsyncCommands,
    streams::{StreamId, StreamRangeReply},
};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::{domain::CampaignId, store::OutboxEntry};

/// Entries per XRANGE page when scanning a stream.
const PAGE: usize = 1_000;

/// Decodes entries; a malformed one (not written by redeem.lua) is logged and skipped, which
/// leaves it pending: storing it is impossible and retrying it pointless.
pub fn parse_entries(ids: Vec<StreamId>) -> Vec<OutboxEntry> {
    ids.into_iter()
        .filter_map(|entry| {
            let parsed = parse_entry(&entry);
            if parsed.is_none() {
                tracing::error!(id = %entry.id, "malformed outbox entry left pending");
            }
            parsed
        })
        .collect()
}

fn parse_entry(entry: &StreamId) -> Option<OutboxEntry> {
    let at_ms: i64 = entry.get("at")?;
    Some(OutboxEntry {
        id: entry.id.clone(),
        campaign: Uuid::try_parse(&entry.get::<String>("campaign")?).ok()?,
        user: entry.get("user")?,
        key: entry.get("key")?,
        seq: entry.get("seq")?,
        at: OffsetDateTime::from_unix_timestamp_nanos(i128::from(at_ms) * 1_000_000).ok()?,
    })
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
) -> redis::RedisResult<Vec<OutboxEntry>> {
    let campaign = campaign.as_uuid();
    let mut queued = Vec::new();
    let mut start = "-".to_owned();
    loop {
        let page: StreamRangeReply = con.xrange_count(outbox, &start, "+", PAGE).await?;
        let Some(last) = page.ids.last() else { break };
        start = format!("({}", last.id);
        queued.extend(
            parse_entries(page.ids)
                .into_iter()
                .filter(|entry| entry.campaign == campaign),
        );
    }
    Ok(queued)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_ids_order_like_the_stream() {
        assert_eq!(parse_id("1700000000000-12"), Some((1_700_000_000_000, 12)));
        assert!(parse_id("9-10") > parse_id("9-9"));
        assert!(parse_id("10-0") > parse_id("9-99"));
        assert_eq!(parse_id("nonsense"), None);
    }
}
