//! Rendering a reconcile report: a table for people, one JSON document for programs.

use std::fmt::{Display, Write};

use super::{
    Report,
    compare::{CampaignReport, Drift, RepairSummary},
};
use crate::domain::Timestamp;

/// How many items of each kind the table names before it only counts.
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
    if !report.dead_letters.is_empty() {
        let letters = report.dead_letters.iter().map(|letter| {
            format!(
                "{} in shard {} ({})",
                letter.entry_id, letter.shard, letter.reason
            )
        });
        let _ = writeln!(
            out,
            "\ndead letters (outbox entries that can never be stored; delete each from its shard's \
             {{vg:N.k}}:dead stream once dealt with): {}{}",
            report.dead_letters.len(),
            examples(letters)
        );
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

/// One campaign's line, then a line per kind of difference it has.
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
    let details = [
        c.redis
            .is_none()
            .then(|| "not loaded in Redis: it loads from PostgreSQL on first use".to_owned()),
        c.repaired.as_ref().map(repaired),
        listed(
            "lost from the outbox (granted in Redis, not in PostgreSQL, not queued)",
            c.lost_from_outbox.iter().map(|h| h.user.as_str()),
        ),
        listed(
            "missing in Redis (PostgreSQL holds them)",
            c.missing_in_redis.iter().map(|m| m.holder.user.as_str()),
        ),
        refused(c),
        lost_acks(c),
    ];
    for line in details.into_iter().flatten() {
        detail(out, &line);
    }
    for drift in &c.drift {
        detail(out, &drift_line(drift));
    }
}

fn repaired(summary: &RepairSummary) -> String {
    format!(
        "repaired: {} written to PostgreSQL ({} refused), {} set and {} removed in Redis, \
         counter recounted: {}, {} lost numbers recorded",
        summary.written_to_postgres,
        summary.refused_by_postgres,
        summary.set_in_redis,
        summary.removed_from_redis,
        if summary.redeemed_recounted {
            "yes"
        } else {
            "no"
        },
        summary.lost_recorded
    )
}

/// "what: n: a, b and 3 more", or nothing when there are none.
fn listed<T: Display>(what: &str, items: impl ExactSizeIterator<Item = T>) -> Option<String> {
    (items.len() > 0).then(|| format!("{what}: {}{}", items.len(), examples(items)))
}

fn refused(c: &CampaignReport) -> Option<String> {
    let open = c.rejected.iter().filter(|r| r.still_in_redis).count();
    listed(
        &format!(
            "refused by PostgreSQL (told REDEEMED, hold nothing; {open} still granted in Redis)"
        ),
        c.rejected.iter().map(|r| {
            format!(
                "{} ({}, voucher {})",
                r.holder.user.as_str(),
                r.reason,
                r.seq
            )
        }),
    )
}

fn lost_acks(c: &CampaignReport) -> Option<String> {
    (!c.lost_acks.new.is_empty() || c.lost_acks.recorded > 0).then(|| {
        format!(
            "acknowledged redemptions lost with Redis's data: {} newly found, {} recorded before",
            c.lost_acks.new.len(),
            c.lost_acks.recorded
        )
    })
}

fn drift_line(drift: &Drift) -> String {
    match drift {
        Drift::RedeemedCounter { counter, rows } => {
            format!("counter drift: campaigns.redeemed is {counter}, rows are {rows}")
        }
        Drift::RedisRemaining {
            remaining,
            expected,
        } => {
            format!("counter drift: Redis remaining is {remaining}, total - holders is {expected}")
        }
        Drift::RedisTotal { redis, postgres } => {
            format!("total differs: Redis {redis}, PostgreSQL {postgres}")
        }
        Drift::Window {
            redis_starts_at,
            redis_ends_at,
            postgres_starts_at,
            postgres_ends_at,
        } => {
            let shown = |at: &Option<Timestamp>| at.map_or("open".to_owned(), |at| at.rfc3339());
            format!(
                "sale window differs: Redis {} to {}, PostgreSQL {} to {}",
                shown(redis_starts_at),
                shown(redis_ends_at),
                shown(postgres_starts_at),
                shown(postgres_ends_at)
            )
        }
    }
}

fn detail(out: &mut String, text: &str) {
    let _ = writeln!(out, "    {text}");
}

/// ": a, b, c and 7 more" for the first few items.
fn examples<T: Display>(items: impl ExactSizeIterator<Item = T>) -> String {
    let count = items.len();
    let shown: Vec<String> = items.take(EXAMPLES).map(|item| item.to_string()).collect();
    let more = count.saturating_sub(EXAMPLES);
    let tail = if more > 0 {
        format!(" and {more} more")
    } else {
        String::new()
    };
    format!(": {}{tail}", shown.join(", "))
}
