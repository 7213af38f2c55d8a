//! Load run: starts the all-in-one system on a fresh embedded store and posts
//! referral messages over HTTP from concurrent clients, then prints accepted
//! referrals per second and latency percentiles.
//!
//! `cargo run --release --example load -- [REFERRALS] [CONCURRENCY]`
//! (defaults 5000 and 32). The same run with every option (fixed rate,
//! end-to-end latency, JSON report, `--url`) is `mskflow load --help`.

use clap::Parser as _;

#[derive(Debug, clap::Parser)]
struct Cli {
    /// Referrals to post.
    #[arg(default_value_t = 5000)]
    referrals: u64,
    /// Concurrent HTTP clients.
    #[arg(default_value_t = 32)]
    concurrency: usize,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let args = mskflow::load::LoadArgs {
        url: Vec::new(),
        token: None,
        hs256_secret_file: None,
        ods: None,
        referrals: Some(cli.referrals),
        concurrency: cli.concurrency,
        rate: None,
        duration: 10.0,
        end_to_end: false,
        replay: false,
        rss_pid: None,
        seed: 1,
        json: None,
        sample_every: 0.0,
        questionnaires: false,
    };
    print!("{}", mskflow::load::command(&args).await?);
    Ok(())
}
