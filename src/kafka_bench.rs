//! `mskflow kafka-bench`: the brokers' own ceiling for mskflow's traffic
//! (`mskflow_eventlog_kafka::bench`), and that ceiling in referrals per
//! second: after load runs, the topic set says how many records mskflow
//! wrote per referral and how large they are.

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::Context as _;
use mskflow_eventlog_kafka::bench::{self, BenchOptions, BenchReport, SizeMix, TopicProfile};
use serde::Serialize;

/// Options of `mskflow kafka-bench`.
#[derive(Debug, Clone, clap::Args)]
pub struct KafkaBenchArgs {
    #[command(flatten)]
    pub store: mskflow_store::StoreArgs,
    /// Records to produce and read back.
    #[arg(long, default_value_t = 20_000)]
    pub records: u64,
    /// Records sent and not yet acknowledged, at most.
    #[arg(long, default_value_t = 1_000)]
    pub in_flight: usize,
    /// Record sizes, `BYTES:WEIGHT,...`. Default: the topic set's own mix
    /// when --referrals is given, otherwise 9400:1,800:7.
    #[arg(long)]
    pub sizes: Option<String>,
    /// Referrals the topic set holds (every load run against it so far):
    /// profile the topics (records and their mean size per topic), take
    /// their size mix, and convert the ceiling into referrals per second.
    #[arg(long)]
    pub referrals: Option<u64>,
    /// Write the report as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// What `kafka-bench` measured.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The topic set after the load runs (with --referrals).
    pub profile: Vec<TopicProfile>,
    pub referrals: Option<u64>,
    /// Records mskflow wrote per referral, every topic of the set.
    pub records_per_referral: Option<f64>,
    pub ceiling: BenchReport,
    /// The ceiling's records/s over records per referral.
    pub ceiling_referrals_per_sec: Option<f64>,
}

/// Records per referral of a profile.
pub fn records_per_referral(profile: &[TopicProfile], referrals: u64) -> Option<f64> {
    let records: u64 = profile.iter().map(|t| t.records).sum();
    (referrals > 0 && records > 0).then(|| records as f64 / referrals as f64)
}

impl Report {
    /// The report as text.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if !self.profile.is_empty() {
            let _ = writeln!(out, "topic set after the load runs:");
            for t in &self.profile {
                let _ = writeln!(
                    out,
                    "  {:<44} {:>9} records  mean {:>7.0} B",
                    t.topic, t.records, t.mean_bytes
                );
            }
        }
        if let (Some(n), Some(r)) = (self.referrals, self.records_per_referral) {
            let _ = writeln!(
                out,
                "records per referral:  {r:.2} ({} records over {n} referrals)",
                self.profile.iter().map(|t| t.records).sum::<u64>()
            );
        }
        out.push_str(&self.ceiling.render());
        if let Some(c) = self.ceiling_referrals_per_sec {
            let _ = writeln!(out, "ceiling referrals/s:   {c:.0}");
        }
        out
    }
}

/// Run the bench and return its report.
pub async fn run(args: &KafkaBenchArgs) -> anyhow::Result<Report> {
    let options = args
        .store
        .kafka("mskflow-kafka-bench")?
        .context("kafka-bench needs --kafka-brokers (or MSKFLOW_KAFKA_BROKERS)")?;
    let profile = match args.referrals {
        Some(_) => bench::profile_topics(&options)
            .await
            .context("profiling the topic set")?,
        None => Vec::new(),
    };
    let sizes = match &args.sizes {
        Some(s) => SizeMix::parse(s).map_err(anyhow::Error::msg)?,
        None => SizeMix::of_profile(&profile).unwrap_or_default(),
    };
    let records_per_referral = args
        .referrals
        .and_then(|n| records_per_referral(&profile, n));
    let ceiling = bench::run(
        &options,
        &BenchOptions {
            records: args.records,
            in_flight: args.in_flight,
            sizes,
            // The same producer linger and consumer fetch wait as the
            // event log's clients.
            linger: options.linger,
            fetch_wait: options.fetch_wait,
        },
    )
    .await
    .context("measuring the broker ceiling")?;
    anyhow::ensure!(
        ceiling.consumed == ceiling.records,
        "only {} of {} records were read back",
        ceiling.consumed,
        ceiling.records
    );
    let ceiling_referrals_per_sec = records_per_referral.map(|r| ceiling.records_per_sec / r);
    Ok(Report {
        profile,
        referrals: args.referrals,
        records_per_referral,
        ceiling,
        ceiling_referrals_per_sec,
    })
}

/// `mskflow kafka-bench`: run, print, and write the JSON report if asked.
pub async fn command(args: &KafkaBenchArgs) -> anyhow::Result<String> {
    let report = run(args).await?;
    if let Some(path) = &args.json {
        crate::load::write_json_report(path, &report)?;
    }
    Ok(report.render())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "test assertions")]
mod tests {
    use super::*;

    #[test]
    fn records_per_referral_counts_every_topic() {
        let t = |records| TopicProfile {
            topic: "t".to_owned(),
            records,
            mean_bytes: 100.0,
            sampled: 1,
        };
        assert_eq!(records_per_referral(&[t(30), t(10)], 8), Some(5.0));
        assert_eq!(records_per_referral(&[t(30)], 0), None);
        assert_eq!(records_per_referral(&[t(0)], 8), None);
    }
}
