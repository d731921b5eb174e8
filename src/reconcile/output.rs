//! Rendering a reconcile report: a table for people, one JSON document for programs.

use std::fmt::Write;

use super::{CampaignReport, Drift, Report};

/// How many holders of each kind the table names before it only counts.
const EXAMPLES: usize = 5;

pub fn json(report: &Report) -> String {
    serde_json::to_string_pretty(report).expect("a report always serializes")
}

pub fn table(report: &Report) -> String {
    let mut out = String::new();
    if let Some(at) = &report.redis_data_lost_at {
        let _ = writeln!(
            out,
            "Redis was found without its data at {at}: redemptions it had acknowledged but not \
             handed to PostgreSQL were lost then.\n"
        );
    }
    if !report.campaigns.is_empty() {
        let _ = writeln!(
            out,
            "{:<36}  {:>10}  {:>10}  {:>10}  {:>10}  {:>10}  {:>7}  status",
            "campaign", "total", "pg rows", "pg count", "redis hold", "remaining", "queued"
        );
    }
    for campaign in &report.campaigns {
        row(&mut out, campaign);
    }
    for id in &report.unknown {
        let _ = writeln!(out, "{id}  not found in PostgreSQL");
    }
    let differing = report.checked - report.in_sync;
    let _ = writeln!(
        out,
        "\n{} campaigns checked: {} in sync, {} with differences{}",
        report.checked,
        report.in_sync,
        differing,
        if report.repair { " after repair" } else { "" }
    );
    out
}

fn row(out: &mut String, c: &CampaignReport) {
    let (holders, remaining) = match &c.redis {
        Some(redis) => (redis.holders.to_string(), redis.remaining.to_string()),
        None => ("-".into(), "-".into()),
    };
    let status = match c.differences() {
        0 => "in sync".to_owned(),
        n => format!("{n} differences"),
    };
    let _ = writeln!(
        out,
        "{:<36}  {:>10}  {:>10}  {:>10}  {:>10}  {:>10}  {:>7}  {status}",
        c.id.to_string(),
        c.total,
        c.postgres.rows,
        c.postgres.redeemed,
        holders,
        remaining,
        c.queued
    );
    if c.redis.is_none() {
        detail(
            out,
            "not loaded in Redis: it loads from PostgreSQL on first use",
        );
    }
    if let Some(repaired) = &c.repaired {
        detail(
            out,
            &format!(
                "repaired: {} written to PostgreSQL ({} refused), {} set and {} removed in Redis, \
                 counter recounted: {}, {} lost numbers recorded",
                repaired.written_to_postgres,
                repaired.refused_by_postgres,
                repaired.set_in_redis,
                repaired.removed_from_redis,
                if repaired.redeemed_recounted {
                    "yes"
                } else {
                    "no"
                },
                repaired.lost_recorded
            ),
        );
    }
    if !c.lost_from_outbox.is_empty() {
        let names = examples(c.lost_from_outbox.iter().map(|h| &h.user));
        detail(
            out,
            &format!(
                "lost from the outbox (granted in Redis, not in PostgreSQL, not queued): {}{names}",
                c.lost_from_outbox.len()
            ),
        );
    }
    if !c.missing_in_redis.is_empty() {
        let names = examples(c.missing_in_redis.iter().map(|m| &m.user));
        detail(
            out,
            &format!(
                "missing in Redis (PostgreSQL holds them): {}{names}",
                c.missing_in_redis.len()
            ),
        );
    }
    if !c.rejected.is_empty() {
        let open = c.rejected.iter().filter(|r| r.still_in_redis).count();
        let listed: Vec<String> = c
            .rejected
            .iter()
            .take(EXAMPLES)
            .map(|r| format!("{} ({}, voucher {})", r.user, r.reason, r.seq))
            .collect();
        let more = c.rejected.len().saturating_sub(EXAMPLES);
        detail(
            out,
            &format!(
                "refused by PostgreSQL (told REDEEMED, hold nothing): {}, {open} still granted in \
                 Redis: {}{}",
                c.rejected.len(),
                listed.join(", "),
                if more > 0 {
                    format!(" and {more} more")
                } else {
                    String::new()
                }
            ),
        );
    }
    if !c.lost_acks.new.is_empty() || c.lost_acks.recorded > 0 {
        detail(
            out,
            &format!(
                "acknowledged redemptions lost with Redis's data: {} newly found, {} recorded before",
                c.lost_acks.new.len(),
                c.lost_acks.recorded
            ),
        );
    }
    for drift in &c.drift {
        detail(
            out,
            &match drift {
                Drift::RedeemedCounter { counter, rows } => {
                    format!("counter drift: campaigns.redeemed is {counter}, rows are {rows}")
                }
                Drift::RedisRemaining {
                    remaining,
                    expected,
                } => format!(
                    "counter drift: Redis remaining is {remaining}, total - holders is {expected}"
                ),
                Drift::RedisTotal { redis, postgres } => {
                    format!("total differs: Redis {redis}, PostgreSQL {postgres}")
                }
            },
        );
    }
}

fn detail(out: &mut String, text: &str) {
    let _ = writeln!(out, "    {text}");
}

/// ": a, b, c and 7 more" for the first few names.
fn examples<'a>(names: impl ExactSizeIterator<Item = &'a String>) -> String {
    let count = names.len();
    let shown: Vec<&str> = names.take(EXAMPLES).map(String::as_str).collect();
    let more = count.saturating_sub(EXAMPLES);
    let tail = if more > 0 {
        format!(" and {more} more")
    } else {
        String::new()
    };
    format!(": {}{tail}", shown.join(", "))
}
