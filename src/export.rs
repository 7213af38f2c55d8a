//! `mskflow export`: the analysts' stream, written to files.
//!
//! Reads the whole embedded log and writes every pathway event as a
//! pseudonymised [`AnalystEvent`](mskflow_analytics::AnalystEvent) to
//! `analyst-events.jsonl` (one per line) and `analyst-events.csv` (flat
//! columns, `data` as a JSON string). See `mskflow-analytics` for what is
//! kept and what is dropped.
//!
//! Next to them, `views/` holds every built-in aggregate view
//! (`mskflow_analytics::views`) as CSV, without a split (`waits.csv`) and
//! with each split (`waits-by-imd_decile.csv`, ...).
//!
//! With `--parquet` the stream is also written as `analyst-events.parquet`
//! and every view as `views/*.parquet` (typed columns, Snappy; see
//! `mskflow_analytics::parquet_file`).

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use mskflow_analytics::views::{Split, View, ViewOptions, Views};
use mskflow_analytics::{Context, ImdLookup, PatientIndex, Pseudonymiser};
use mskflow_eventlog::{EventLog as _, StartFrom};

use crate::Config;
use crate::ops::open_store;

/// Environment variable holding the pseudonymisation secret (when no
/// `--secret-file` is given).
pub use mskflow_analytics::SECRET_ENV;

/// The JSON Lines output file.
pub const JSONL_FILE: &str = "analyst-events.jsonl";
/// The CSV output file.
pub const CSV_FILE: &str = "analyst-events.csv";
/// The Parquet output file (`--parquet`).
pub const PARQUET_FILE: &str = "analyst-events.parquet";
/// The directory of the aggregate views' CSV files.
pub const VIEWS_DIR: &str = "views";

/// The file name of a view's CSV: `waits.csv`, `waits-by-imd_decile.csv`.
pub fn view_file_name(view: View, split: Split) -> String {
    view_file_stem(view, split) + ".csv"
}

fn view_file_stem(view: View, split: Split) -> String {
    match split {
        Split::None => view.code().to_owned(),
        _ => format!("{}-by-{}", view.code(), split.code()),
    }
}

/// Write every view, unsplit and with each split, to `dir` as CSV (and as
/// Parquet when `parquet`); returns how many files were written.
fn write_views(views: &Views, dir: &Path, parquet: bool) -> anyhow::Result<usize> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut written = 0;
    for view in View::ALL {
        for split in Split::ALL {
            let table = views.table(*view, *split);
            let path = dir.join(view_file_name(*view, *split));
            std::fs::write(&path, table.to_csv())
                .with_context(|| format!("writing {}", path.display()))?;
            written += 1;
            if parquet {
                let path = dir.join(view_file_stem(*view, *split) + ".parquet");
                mskflow_analytics::parquet_file::write_table(&path, &table)?;
                written += 1;
            }
        }
    }
    Ok(written)
}

const BATCH: usize = 1000;

/// What to export and how.
#[derive(Debug, Clone)]
pub struct ExportOptions {
    /// Directory to write the files to (created if missing).
    pub out: PathBuf,
    /// File holding the pseudonymisation secret; otherwise [`SECRET_ENV`].
    pub secret_file: Option<PathBuf>,
    /// Postcode to IMD decile lookup (CSV); otherwise the illustrative file.
    pub imd_lookup: Option<PathBuf>,
    /// Also write the stream and the views as Parquet.
    pub parquet: bool,
}

/// The secret: the file's content (a trailing newline is not part of it), or
/// the environment variable. Refuses to go on without one.
fn secret(options: &ExportOptions) -> anyhow::Result<Vec<u8>> {
    mskflow_analytics::publish::load_secret(options.secret_file.as_deref())?.ok_or_else(|| {
        anyhow::anyhow!(
            "a pseudonymisation secret is required: pass --secret-file PATH or set {SECRET_ENV} \
             (keep it secret and the same between exports, so pseudonyms stay stable)"
        )
    })
}

fn imd_lookup(path: Option<&Path>) -> anyhow::Result<ImdLookup> {
    if path.is_none() {
        eprintln!(
            "warning: no --imd-lookup given: using the ILLUSTRATIVE postcode to IMD decile \
             file shipped with mskflow (made-up deciles). Load the official English Indices \
             of Deprivation lookup for real analysis."
        );
    }
    mskflow_analytics::publish::load_imd(path).with_context(|| match path {
        Some(p) => format!("IMD lookup {}", p.display()),
        None => "the illustrative IMD lookup".to_owned(),
    })
}

/// Write the analysts' stream to `options.out`; returns the report to print.
pub async fn export(config: &Config, options: &ExportOptions) -> anyhow::Result<String> {
    let pseudonymiser = Pseudonymiser::new(&secret(options)?)?;
    let ctx = Context {
        pseudonymiser,
        imd: imd_lookup(options.imd_lookup.as_deref())?,
    };
    let store = open_store(config)?;
    std::fs::create_dir_all(&options.out)
        .with_context(|| format!("creating {}", options.out.display()))?;
    let jsonl_path = options.out.join(JSONL_FILE);
    let csv_path = options.out.join(CSV_FILE);
    let mut jsonl = std::io::BufWriter::new(
        std::fs::File::create(&jsonl_path)
            .with_context(|| format!("creating {}", jsonl_path.display()))?,
    );
    let mut csv = std::io::BufWriter::new(
        std::fs::File::create(&csv_path)
            .with_context(|| format!("creating {}", csv_path.display()))?,
    );
    csv.write_all(mskflow_analytics::csv_header().as_bytes())?;
    let parquet_path = options.out.join(PARQUET_FILE);
    let mut parquet = match options.parquet {
        true => Some(mskflow_analytics::parquet_file::EventWriter::create(
            &parquet_path,
        )?),
        false => None,
    };

    let head = store.head().await?;
    let bar = indicatif::ProgressBar::new(head);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} exporting [{bar:40}] {pos}/{len} events ({per_sec}, {eta})",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    let started = std::time::Instant::now();
    let mut sub = store
        .subscribe("mskflow-analytics-export", StartFrom::Beginning)
        .await
        .context("opening an export subscription")?;
    let mut patients = PatientIndex::new();
    let mut views = Views::new(ViewOptions::default());
    let (mut read, mut written) = (0u64, 0u64);
    loop {
        let batch = sub.poll_batch(BATCH).await?;
        if batch.is_empty() {
            break;
        }
        for envelope in &batch {
            read += 1;
            patients.observe(envelope, &ctx);
            views.observe(envelope, &ctx);
            let Some(event) = mskflow_analytics::to_analyst_event(envelope, &patients, &ctx) else {
                continue;
            };
            serde_json::to_writer(&mut jsonl, &event)?;
            jsonl.write_all(b"\n")?;
            csv.write_all(event.to_csv_line().as_bytes())?;
            if let Some(parquet) = &mut parquet {
                parquet.write(&event)?;
            }
            written += 1;
        }
        bar.set_position(batch.last().map_or(0, |e| e.position));
    }
    jsonl.flush()?;
    csv.flush()?;
    let parquet_rows = match parquet {
        Some(parquet) => Some(parquet.finish()?),
        None => None,
    };
    bar.finish_and_clear();
    let views_dir = options.out.join(VIEWS_DIR);
    let view_files = write_views(&views, &views_dir, options.parquet)?;
    tracing::info!(read, written, "analysts' stream exported");

    let mut out = String::new();
    writeln!(
        out,
        "exported {written} analyst events ({} not for analysts) from {read} events of {} referrals in {:.2}s",
        read - written,
        patients.len(),
        started.elapsed().as_secs_f64()
    )?;
    writeln!(out, "  {}", jsonl_path.display())?;
    writeln!(out, "  {}", csv_path.display())?;
    if let Some(rows) = parquet_rows {
        writeln!(out, "  {} ({rows} rows)", parquet_path.display())?;
    }
    writeln!(out, "  {} ({view_files} view files)", views_dir.display())?;
    Ok(out)
}
