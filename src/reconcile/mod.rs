//! `voucher-gateway reconcile`: compares every campaign's Redis state with PostgreSQL and the
//! outbox, classifies each difference, and with `--repair` makes the two agree again.

mod compare;
mod output;
mod repair;

use std::io::IsTerminal;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use crate::{
    app,
    config::{ReconcileConfig, ReportFormat},
    domain::CampaignId,
    redis::{
        marker,
        outbox::{self, DeadLetter},
    },
    store::{self, reconcile as stored},
};
use compare::{CampaignReport, Sides};

/// Everything reconcile found (and repaired).
#[derive(Debug, Serialize)]
pub struct Report {
    pub checked: usize,
    pub in_sync: usize,
    pub repair: bool,
    /// When Redis was last found without its data (acknowledged redemptions were lost then).
    pub redis_data_lost_at: Option<String>,
    /// Campaigns named with `--campaign` that PostgreSQL does not know.
    pub unknown: Vec<CampaignId>,
    pub campaigns: Vec<CampaignReport>,
    /// Outbox entries that could never be stored, of every shard: each needs a person to look at
    /// it (and then delete it from the dead-letter stream).
    pub dead_letters: Vec<DeadLetter>,
}

impl Report {
    pub fn is_in_sync(&self) -> bool {
        self.in_sync == self.checked && self.unknown.is_empty() && self.dead_letters.is_empty()
    }

    /// The report in the requested format.
    pub fn render(&self, format: ReportFormat) -> String {
        match format {
            ReportFormat::Table => output::table(self),
            ReportFormat::Json => output::json(self),
        }
    }
}

/// Runs reconcile over the chosen campaigns (all by default).
pub async fn run(config: &ReconcileConfig) -> anyhow::Result<Report> {
    let (db, shards) = app::prepare_database(&config.database, false).await?;
    let url = &config.redis.redis_url;
    let mut redis = app::open_redis(&config.redis)?
        .connect()
        .await
        .with_context(|| format!("cannot connect to Redis at {url}"))?;
    let redis_data_lost_at = store::setting(&db, marker::LOST_SETTING).await?;
    let mut dead_letters = Vec::new();
    for shard in shards.all() {
        dead_letters.extend(outbox::dead_letters(&mut redis, &shard).await?);
    }
    let sides = Sides { redis, db, shards };
    let campaigns: Vec<CampaignId> = config.campaigns.iter().map(|&id| id.into()).collect();

    let named = !campaigns.is_empty();
    let total = if named {
        campaigns.len() as u64
    } else {
        stored::count_campaigns(&sides.db).await? as u64
    };
    let progress = progress_bar(total);
    let mut report = Report {
        checked: 0,
        in_sync: 0,
        repair: config.repair,
        redis_data_lost_at,
        unknown: Vec::new(),
        campaigns: Vec::new(),
        dead_letters,
    };
    let mut check = async |id: CampaignId| -> anyhow::Result<()> {
        let found = sides
            .compare(id)
            .await
            .with_context(|| format!("campaign {id}"))?;
        progress.inc(1);
        let Some(mut campaign) = found else {
            report.unknown.push(id);
            return Ok(());
        };
        if config.repair && campaign.differences() > 0 {
            campaign = sides
                .repair(campaign)
                .await
                .with_context(|| format!("repairing campaign {id}"))?;
        }
        report.checked += 1;
        if campaign.differences() == 0 {
            report.in_sync += 1;
        }
        // In-sync campaigns with nothing to tell are counted, not listed, unless named.
        let history = !campaign.rejected.is_empty() || campaign.lost_acks.recorded > 0;
        if named || campaign.differences() > 0 || history || campaign.repaired.is_some() {
            report.campaigns.push(campaign);
        }
        Ok(())
    };
    if named {
        for id in &campaigns {
            check(*id).await?;
        }
    } else {
        let mut after = None;
        loop {
            let page = stored::campaign_ids_after(&sides.db, after).await?;
            let Some(last) = page.last() else { break };
            after = Some(*last);
            for id in page {
                check(id).await?;
            }
        }
    }
    progress.finish_and_clear();
    Ok(report)
}

/// A progress bar on stderr for long runs, only when a person is watching.
fn progress_bar(total: u64) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total);
    if let Ok(style) =
        ProgressStyle::with_template("reconcile {bar:40} {pos}/{len} campaigns, {eta} left")
    {
        bar.set_style(style);
    }
    bar
}
