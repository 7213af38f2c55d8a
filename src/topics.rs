//! `mskflow topics create|check|list`: the Kafka topic set as code.

use std::fmt::Write as _;

use anyhow::Context as _;

/// What to do with the topic set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Create,
    Check,
    List,
}

/// Run `action` against the brokers named in `store`; returns the report.
pub async fn run(action: Action, store: &mskflow_store::StoreArgs) -> anyhow::Result<String> {
    let mut args = store.clone();
    if action == Action::List && args.kafka_brokers.is_none() {
        args.kafka_brokers = Some("(none)".to_owned());
    }
    let options = args
        .kafka("mskflow-topics")?
        .context("no brokers: pass --kafka-brokers or set MSKFLOW_KAFKA_BROKERS")?;
    let mut out = String::new();
    match action {
        Action::List => {
            for spec in options.topics.specs() {
                let config = spec
                    .config
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(",");
                writeln!(out, "{spec} [{config}]")?;
            }
        }
        Action::Create => {
            let created = mskflow_eventlog_kafka::create_topics(&options)
                .await
                .with_context(|| format!("creating topics on {}", options.brokers))?;
            for name in &created {
                writeln!(out, "created {name}")?;
            }
            let problems = mskflow_eventlog_kafka::topic_problems(&options).await?;
            for p in &problems {
                writeln!(out, "problem: {p}")?;
            }
            writeln!(
                out,
                "{} created, {} already present, {} problems",
                created.len(),
                options.topics.specs().len() - created.len(),
                problems.len()
            )?;
            if !problems.is_empty() {
                anyhow::bail!("{out}");
            }
        }
        Action::Check => {
            let problems = mskflow_eventlog_kafka::topic_problems(&options)
                .await
                .with_context(|| format!("reading topics from {}", options.brokers))?;
            if problems.is_empty() {
                writeln!(
                    out,
                    "topic set ok: {} topics on {}",
                    options.topics.specs().len(),
                    options.brokers
                )?;
            } else {
                for p in &problems {
                    writeln!(out, "problem: {p}")?;
                }
                anyhow::bail!("{out}topic set differs from the configuration");
            }
        }
    }
    Ok(out)
}
