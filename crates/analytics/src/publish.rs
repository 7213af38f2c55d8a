//! Publishing the analysts' stream live.
//!
//! [`run`] follows the event log with the durable, checkpointed consumer
//! [`CONSUMER`] (`analyst-stream`), turns every pathway event into an
//! [`AnalystEvent`] and hands each batch to a [`Sink`]: the Kafka topic
//! `mskflow.analytics.v1` in production, or a JSON Lines file
//! ([`JsonlSink`]) on the embedded default.
//!
//! # Delivery: at least once
//!
//! A batch is published first and the consumer's checkpoint moves past it
//! only after the sink has said every event of it is durable (Kafka:
//! acknowledged with `acks=all`; file: written and fsynced). A failed
//! publish is logged, backed off and retried with the same batch until it
//! passes or the publisher is stopped; nothing is skipped. A stop or crash
//! between publishing and committing publishes that batch again on the
//! next start, so the stream may hold an event more than once: consumers
//! de-duplicate on `event_id`.
//!
//! # Patient attributes across restarts
//!
//! Patient attributes (pseudonym, age band, IMD decile, ...) come from the
//! referral's `ReferralReceived` event, which the publisher keeps in a
//! [`PatientIndex`] in memory. After a restart the subscription resumes
//! from its checkpoint, past that event; when an event names a referral the
//! index does not know, the publisher reads the stream `referral-{id}` and
//! records its `ReferralReceived` first ([`recall_patient`]).
//!
//! Nothing here logs an identifier: logs carry counts, event types and
//! error categories only.

use std::collections::HashSet;
use std::fmt;
use std::future::Future;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use mskflow_eventlog::{Envelope, EventLog, StartFrom, Subscription};
use serde_json::Value;
use tracing::Instrument as _;
use uuid::Uuid;

use crate::{AnalystEvent, Context, Error, ImdLookup, PatientIndex, to_analyst_event};

/// The durable consumer name of the publisher.
pub const CONSUMER: &str = "analyst-stream";

/// Most events read and published at once.
pub const BATCH: usize = 500;

/// Counter of analyst events the sink has made durable.
pub const PUBLISHED_METRIC: &str = "mskflow_analyst_events_published_total";

/// Environment variable holding the pseudonymisation secret, when no
/// secret file is given (`mskflow export`, the gateway).
pub const SECRET_ENV: &str = "MSKFLOW_ANALYTICS_SECRET";

/// Errors of a [`Sink`]. None crosses HTTP or gRPC: the publisher logs
/// them at WARN, backs off and publishes the same batch again.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The file could not be created, written or synced.
    #[error("analysts' stream file {path}: {source}")]
    File {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// An event could not be encoded (a bug, not a data problem).
    #[error("encoding an analyst event: {0}")]
    Encode(String),
    /// The brokers did not acknowledge every record in time, or refused one.
    #[error("analysts' topic {topic}: {reason}")]
    Unavailable { topic: String, reason: String },
}

/// Where the analysts' stream goes.
#[async_trait]
pub trait Sink: Send + Sync + fmt::Debug {
    /// Publish `events` in order. Returns `Ok` only when every one of them
    /// is durable on the sink; on `Err` some may have been published (they
    /// are published again: consumers de-duplicate on `event_id`).
    async fn publish(&self, events: &[AnalystEvent]) -> Result<(), SinkError>;
}

/// Appends one JSON object per line to a file, fsynced after each batch.
///
/// The file and its parent directory are created when missing; an existing
/// file is appended to. If a crash cut a line short, the next batch starts
/// on a new line, so the torn line stays on its own (readers skip a line
/// that does not parse; its events are published again).
#[derive(Debug)]
pub struct JsonlSink {
    path: PathBuf,
    write: tokio::sync::Mutex<()>,
}

impl JsonlSink {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            write: tokio::sync::Mutex::new(()),
        }
    }

    /// The file written to.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The text of a batch: one JSON line per event.
fn jsonl(events: &[AnalystEvent]) -> Result<Vec<u8>, SinkError> {
    let mut out = Vec::new();
    for e in events {
        serde_json::to_writer(&mut out, e)
            .map_err(|e| SinkError::Encode(mskflow_eventlog::json_error_reason(&e)))?;
        out.push(b'\n');
    }
    Ok(out)
}

fn append_synced(path: &Path, text: &[u8]) -> std::io::Result<()> {
    use std::io::{Read as _, Seek as _, SeekFrom};
    let mut created = false;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
        && !dir.exists()
    {
        std::fs::create_dir_all(dir)?;
        created = true;
    }
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .read(true)
        .open(path)?;
    let len = file.metadata()?.len();
    if len == 0 {
        created = true;
    } else {
        let mut last = [0u8; 1];
        file.seek(SeekFrom::Start(len - 1))?;
        file.read_exact(&mut last)?;
        if last[0] != b'\n' {
            file.write_all(b"\n")?;
        }
    }
    file.write_all(text)?;
    file.sync_all()?;
    if created && let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        // Make the new file's directory entry durable too.
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[async_trait]
impl Sink for JsonlSink {
    async fn publish(&self, events: &[AnalystEvent]) -> Result<(), SinkError> {
        if events.is_empty() {
            return Ok(());
        }
        let text = jsonl(events)?;
        let _serialised = self.write.lock().await;
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || append_synced(&path, &text))
            .await
            .map_err(|e| SinkError::File {
                path: self.path.clone(),
                source: std::io::Error::other(e),
            })?
            .map_err(|source| SinkError::File {
                path: self.path.clone(),
                source,
            })
    }
}

/// Make sure `patients` knows the referral an event belongs to.
///
/// A `ReferralReceived` event is recorded from itself. For any other event
/// naming a `referral_id` the index does not know (the publisher restarted
/// past that referral's `ReferralReceived`), the stream `referral-{id}` is
/// read and its `ReferralReceived` recorded. Returns whether the referral
/// is known afterwards (`true` also for events of no referral).
pub async fn recall_patient(
    log: &dyn EventLog,
    patients: &mut PatientIndex,
    envelope: &Envelope,
    ctx: &Context,
) -> Result<bool, mskflow_eventlog::Error> {
    if patients.observe(envelope, ctx) {
        return Ok(true);
    }
    let Some(referral_id) = envelope
        .payload
        .get("referral_id")
        .and_then(Value::as_str)
        .and_then(|s| Uuid::parse_str(s).ok())
    else {
        return Ok(true);
    };
    if patients.get(&referral_id).is_some() {
        return Ok(true);
    }
    let stream = log
        .read_stream(&format!("referral-{referral_id}"), 1)
        .await?;
    Ok(stream.iter().any(|e| patients.observe(e, ctx)) && patients.get(&referral_id).is_some())
}

/// Publish the analysts' stream from `log` to `sink` until `shutdown`
/// resolves (see the module documentation for the guarantees).
///
/// Errors reading the log or publishing are logged at WARN and retried
/// with backoff (up to 5 s between attempts); the checkpoint only moves
/// once a batch is durable on the sink.
pub async fn run(
    log: Arc<dyn EventLog>,
    sink: Arc<dyn Sink>,
    ctx: Context,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let mut patients = PatientIndex::new();
    let mut backoff = Backoff::default();
    'subscribe: loop {
        let mut sub: Box<dyn Subscription> = tokio::select! {
            () = &mut shutdown => return,
            opened = log.subscribe(CONSUMER, StartFrom::Checkpoint) => match opened {
                Ok(sub) => sub,
                Err(e) => {
                    tracing::warn!(error = %e, "analysts' stream cannot subscribe to the event log; retrying");
                    if backoff.wait(&mut shutdown).await {
                        return;
                    }
                    continue 'subscribe;
                }
            }
        };
        tracing::info!(consumer = CONSUMER, "analysts' stream publishing");
        backoff.reset();
        loop {
            let batch = tokio::select! {
                () = &mut shutdown => return,
                batch = sub.next_batch(BATCH) => batch,
            };
            let batch = match batch {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(error = %e, "analysts' stream cannot read the event log; retrying");
                    if backoff.wait(&mut shutdown).await {
                        return;
                    }
                    // Start again from the checkpoint: nothing uncommitted
                    // is lost.
                    continue 'subscribe;
                }
            };
            let span = tracing::info_span!("analyst_stream.batch", events = batch.len());
            let events = match translate(log.as_ref(), &mut patients, &batch, &ctx)
                .instrument(span.clone())
                .await
            {
                Ok(events) => events,
                Err(e) => {
                    tracing::warn!(error = %e, "analysts' stream cannot read a referral's stream; retrying");
                    if backoff.wait(&mut shutdown).await {
                        return;
                    }
                    continue 'subscribe;
                }
            };
            // The same batch until it is durable, or the publisher stops.
            loop {
                let published = tokio::select! {
                    () = &mut shutdown => return,
                    published = sink.publish(&events).instrument(span.clone()) => published,
                };
                match published {
                    Ok(()) => break,
                    Err(e) => {
                        tracing::warn!(
                            error = %e,
                            events = events.len(),
                            "analysts' stream could not publish a batch; retrying the same batch"
                        );
                        if backoff.wait(&mut shutdown).await {
                            return;
                        }
                    }
                }
            }
            metrics::counter!(PUBLISHED_METRIC).increment(events.len() as u64);
            tracing::debug!(parent: &span, published = events.len(), "analyst events published");
            if let Err(e) = sub.commit().await {
                // Not fatal: the batch is published; a restart publishes it
                // again and consumers de-duplicate.
                tracing::warn!(error = %e, "analysts' stream could not commit its checkpoint");
                if backoff.wait(&mut shutdown).await {
                    return;
                }
                continue 'subscribe;
            }
            backoff.reset();
        }
    }
}

/// The analyst events of a batch, recalling patients the index lacks.
async fn translate(
    log: &dyn EventLog,
    patients: &mut PatientIndex,
    batch: &[Envelope],
    ctx: &Context,
) -> Result<Vec<AnalystEvent>, mskflow_eventlog::Error> {
    let mut events = Vec::with_capacity(batch.len());
    let mut seen = HashSet::new();
    for envelope in batch {
        if !crate::is_exported(&envelope.event_type) {
            continue;
        }
        if !recall_patient(log, patients, envelope, ctx).await? {
            tracing::debug!(
                event_type = %envelope.event_type,
                "no ReferralReceived found for an event's referral; published without patient attributes"
            );
        }
        // A re-delivered event within one batch is published once.
        if !seen.insert(envelope.event_id) {
            continue;
        }
        if let Some(e) = to_analyst_event(envelope, patients, ctx) {
            events.push(e);
        }
    }
    Ok(events)
}

#[derive(Debug)]
struct Backoff(Duration);

impl Default for Backoff {
    fn default() -> Self {
        Self(Duration::from_millis(200))
    }
}

impl Backoff {
    fn reset(&mut self) {
        *self = Self::default();
    }

    /// Sleep for the current delay and double it; `true` if `shutdown`
    /// resolved meanwhile.
    async fn wait(&mut self, shutdown: &mut (impl Future<Output = ()> + Unpin)) -> bool {
        let delay = self.0;
        self.0 = (self.0 * 2).min(Duration::from_secs(5));
        tokio::select! {
            () = shutdown => true,
            () = tokio::time::sleep(delay) => false,
        }
    }
}

/// The pseudonymisation secret: the content of `file` (a trailing newline
/// is not part of it), or else the [`SECRET_ENV`] environment variable.
/// `None` when neither gives a non-empty secret.
pub fn load_secret(file: Option<&Path>) -> Result<Option<Vec<u8>>, Error> {
    let raw = match file {
        Some(path) => std::fs::read(path).map_err(|source| Error::File {
            what: "the pseudonymisation secret file",
            path: path.to_path_buf(),
            source,
        })?,
        None => std::env::var(SECRET_ENV)
            .map(String::into_bytes)
            .unwrap_or_default(),
    };
    let trimmed = raw.trim_ascii_end();
    Ok((!trimmed.is_empty()).then(|| trimmed.to_vec()))
}

/// The secret kept in `path`, made (32 random bytes, written as 64 hex
/// digits, readable by the owner only) if the file does not exist yet, so
/// pseudonyms stay the same from one run to the next.
pub fn load_or_create_secret(path: &Path) -> Result<Vec<u8>, Error> {
    let file_error = |source| Error::File {
        what: "the pseudonymisation secret file",
        path: path.to_path_buf(),
        source,
    };
    if !path.exists() {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(file_error)?;
        }
        let mut bytes = Vec::with_capacity(32);
        bytes.extend_from_slice(Uuid::new_v4().as_bytes());
        bytes.extend_from_slice(Uuid::new_v4().as_bytes());
        let mut hex = String::with_capacity(65);
        for b in &bytes {
            hex.push(char::from(crate::HEX[usize::from(b >> 4)]));
            hex.push(char::from(crate::HEX[usize::from(b & 0x0f)]));
        }
        hex.push('\n');
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt as _;
            options.mode(0o600);
        }
        match options.open(path) {
            Ok(mut f) => {
                f.write_all(hex.as_bytes())
                    .and_then(|()| f.sync_all())
                    .map_err(file_error)?;
                tracing::info!(path = %path.display(), "pseudonymisation secret created");
            }
            // Another process made it first: use theirs.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(file_error(e)),
        }
    }
    load_secret(Some(path))?.ok_or(Error::SecretTooShort)
}

/// The postcode to IMD decile lookup in `path` (CSV), or the illustrative
/// one shipped with the crate (with a WARN) when `None`.
pub fn load_imd(path: Option<&Path>) -> Result<ImdLookup, Error> {
    match path {
        Some(p) => {
            let text = std::fs::read_to_string(p).map_err(|source| Error::File {
                what: "the IMD lookup",
                path: p.to_path_buf(),
                source,
            })?;
            ImdLookup::from_csv(&text)
        }
        None => {
            tracing::warn!(
                "no IMD lookup configured: using the ILLUSTRATIVE postcode to IMD decile file \
                 shipped with mskflow (made-up deciles); load the official English Indices of \
                 Deprivation lookup for real analysis"
            );
            ImdLookup::example()
        }
    }
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    reason = "test fixtures are built from literals known to be valid"
)]
mod tests {
    use chrono::{NaiveDate, Utc};
    use mskflow_eventlog::{ExpectedVersion, Metadata, new_event};
    use mskflow_eventlog_sqlite::SqliteEventLog;
    use mskflow_events::intake::{
        self as i, IntakeEvent, PatientDetails, ReferralDetails, Requester, Sender,
    };
    use mskflow_events::types::{FcpPriority, Pathway, ReceivedVia, RequestPriority, Sex};
    use mskflow_events::{NhsNumber, OdsCode};

    use super::*;
    use crate::{Pseudonymiser, is_exported};

    type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

    const NHS: &str = "9434765919";
    const FAMILY: &str = "Quixleyfamily";
    const POSTCODE: &str = "LS1 5HD";

    fn ctx() -> Context {
        Context {
            pseudonymiser: Pseudonymiser::new(b"a test secret of at least 16 bytes").unwrap(),
            imd: ImdLookup::example().unwrap(),
        }
    }

    fn received(referral_id: Uuid) -> IntakeEvent {
        IntakeEvent::ReferralReceived(i::ReferralReceived {
            referral_id,
            request_id: Uuid::new_v4(),
            referral: ReferralDetails {
                received_via: ReceivedVia::ProcessMessage,
                sender: Sender {
                    ods_code: Some(OdsCode::parse("B86001").unwrap()),
                    endpoint: None,
                    message_id: None,
                    software: None,
                },
                service_request_identifier: None,
                patient: PatientDetails {
                    nhs_number: Some(NhsNumber::parse(NHS).unwrap()),
                    family: Some(FAMILY.to_owned()),
                    given: vec!["Zebedeegiven".to_owned()],
                    birth_date: NaiveDate::from_ymd_opt(1961, 7, 23),
                    sex: Some(Sex::Female),
                    postcode: Some(POSTCODE.to_owned()),
                    ethnicity: None,
                },
                requester: Some(Requester {
                    display: None,
                    ods_code: Some(OdsCode::parse("B86002").unwrap()),
                }),
                reason: Vec::new(),
                body_site: Vec::new(),
                requested_priority: RequestPriority::Routine,
                red_flags: Vec::new(),
                start_back: None,
                note: Some(format!("SENTINEL note about {FAMILY}")),
                authored_on: None,
                fhir_json: "{}".to_owned(),
            },
        })
    }

    fn triaged(referral_id: Uuid) -> IntakeEvent {
        IntakeEvent::ReferralTriaged(i::ReferralTriaged {
            referral_id,
            rule_set_version: "1".to_owned(),
            rule_id: "default".to_owned(),
            priority: FcpPriority::Routine,
            pathway: Pathway::Knee,
            start_back: None,
            reasons: vec![format!("SENTINEL reason for {FAMILY}")],
        })
    }

    async fn append(log: &SqliteEventLog, referral_id: Uuid, events: &[IntakeEvent]) -> TestResult {
        let new = events
            .iter()
            .map(|e| new_event(e, 1, Utc::now()))
            .collect::<Result<Vec<_>, _>>()?;
        log.append(
            &format!("referral-{referral_id}"),
            ExpectedVersion::Any,
            new,
            &Metadata::default(),
        )
        .await?;
        Ok(())
    }

    fn open(dir: &Path) -> Result<SqliteEventLog, mskflow_eventlog_sqlite::Error> {
        SqliteEventLog::open(mskflow_eventlog_sqlite::Options {
            path: dir.join("events.db"),
            ..Default::default()
        })
    }

    #[tokio::test]
    async fn an_unknown_referral_is_recalled_from_its_stream() -> TestResult {
        let dir = tempfile::tempdir()?;
        let log = open(dir.path())?;
        let id = Uuid::new_v4();
        append(&log, id, &[received(id), triaged(id)]).await?;
        let stream = log.read_stream(&format!("referral-{id}"), 1).await?;
        let triage = stream
            .iter()
            .find(|e| e.event_type == "ReferralTriaged")
            .unwrap();

        // A fresh index (a restart past ReferralReceived) knows nothing.
        let mut patients = PatientIndex::new();
        let ctx = ctx();
        let before = to_analyst_event(triage, &patients, &ctx).unwrap();
        assert_eq!(before.patient_pseudonym, None);

        assert!(recall_patient(&log, &mut patients, triage, &ctx).await?);
        let after = to_analyst_event(triage, &patients, &ctx).unwrap();
        let expected = ctx.pseudonymiser.pseudonym(&NhsNumber::parse(NHS).unwrap());
        assert_eq!(after.patient_pseudonym.as_deref(), Some(expected.as_str()));
        assert_eq!(after.age_band.as_deref(), Some("65-74"));
        assert_eq!(after.imd_decile, ctx.imd.decile(POSTCODE));
        assert!(after.imd_decile.is_some());
        assert_eq!(after.referral_key, Some(id));

        // A referral with no stream stays unknown.
        let orphan = Uuid::new_v4();
        let mut lone = triage.clone();
        lone.payload["referral_id"] = Value::String(orphan.to_string());
        assert!(!recall_patient(&log, &mut patients, &lone, &ctx).await?);
        assert!(patients.get(&orphan).is_none());
        log.close().await;
        Ok(())
    }

    fn sample_events(n: usize) -> Vec<AnalystEvent> {
        (0..n)
            .map(|k| AnalystEvent {
                event_id: Uuid::new_v4(),
                event_type: "ReferralTriaged".to_owned(),
                occurred_at: Utc::now(),
                recorded_at: Utc::now(),
                schema_version: 1,
                referral_key: Some(Uuid::new_v4()),
                patient_pseudonym: Some(format!("{k:064x}")),
                age_band: Some("25-34".to_owned()),
                sex: None,
                ethnicity_code: None,
                imd_decile: Some(3),
                practice_ods: None,
                route: Some("self-referral".to_owned()),
                data: serde_json::json!({"priority": "routine"}),
            })
            .collect()
    }

    fn read_lines(path: &Path) -> Vec<AnalystEvent> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    #[tokio::test]
    async fn jsonl_sink_appends_across_reopen_and_heals_a_torn_line() -> TestResult {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("nested/analytics/analyst-events.jsonl");
        let first = sample_events(3);
        JsonlSink::new(&path).publish(&first).await?;
        let text = std::fs::read_to_string(&path)?;
        assert_eq!(text.lines().count(), 3);
        assert!(text.ends_with('\n'));
        assert_eq!(read_lines(&path), first);

        // A crash left half a line; a new sink appends on a fresh line.
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)?
            .write_all(b"{\"event_id\":\"torn")?;
        let second = sample_events(2);
        let sink = JsonlSink::new(&path);
        sink.publish(&second).await?;
        sink.publish(&[]).await?;
        let all = read_lines(&path);
        assert_eq!(all.len(), 5);
        assert_eq!(&all[..3], &first[..]);
        assert_eq!(&all[3..], &second[..]);
        assert_eq!(std::fs::read_to_string(&path)?.lines().count(), 6);
        Ok(())
    }

    #[tokio::test]
    async fn jsonl_sink_reports_a_path_it_cannot_write() -> TestResult {
        let dir = tempfile::tempdir()?;
        let blocker = dir.path().join("file");
        std::fs::write(&blocker, "not a directory")?;
        let sink = JsonlSink::new(blocker.join("analyst-events.jsonl"));
        let err = sink.publish(&sample_events(1)).await.err();
        assert!(matches!(err, Some(SinkError::File { .. })), "{err:?}");
        Ok(())
    }

    /// A sink that fails its first `failures` publishes.
    #[derive(Debug, Default)]
    struct Flaky {
        failures: std::sync::atomic::AtomicUsize,
        inner: Option<JsonlSink>,
    }

    #[async_trait]
    impl Sink for Flaky {
        async fn publish(&self, events: &[AnalystEvent]) -> Result<(), SinkError> {
            use std::sync::atomic::Ordering;
            if self
                .failures
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
            {
                return Err(SinkError::Unavailable {
                    topic: "test".to_owned(),
                    reason: "refused".to_owned(),
                });
            }
            match &self.inner {
                Some(s) => s.publish(events).await,
                None => Ok(()),
            }
        }
    }

    async fn wait_for_lines(path: &Path, n: usize) -> Vec<AnalystEvent> {
        for _ in 0..200 {
            let lines = if path.exists() {
                read_lines(path)
            } else {
                Vec::new()
            };
            let unique: HashSet<Uuid> = lines.iter().map(|e| e.event_id).collect();
            if unique.len() >= n {
                return lines;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if path.exists() {
            read_lines(path)
        } else {
            Vec::new()
        }
    }

    #[tokio::test]
    async fn run_retries_a_failed_batch_and_resumes_from_its_checkpoint() -> TestResult {
        let dir = tempfile::tempdir()?;
        let log = open(dir.path())?;
        let out = dir.path().join("analyst-events.jsonl");
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        append(&log, a, &[received(a), triaged(a)]).await?;

        let shared: Arc<dyn EventLog> = Arc::new(log.clone());
        let sink = Arc::new(Flaky {
            failures: 2.into(),
            inner: Some(JsonlSink::new(&out)),
        });
        let (stop, rx) = tokio::sync::watch::channel(false);
        let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|s| *s).await;
        };
        let task = tokio::spawn(run(shared.clone(), sink, ctx(), stopped(rx.clone())));
        let lines = wait_for_lines(&out, 2).await;
        assert_eq!(
            lines.len(),
            2,
            "both events, once, after two failed attempts"
        );
        let _ = stop.send(true);
        task.await?;

        // Restart: a fresh publisher (empty patient index) resumes after
        // the checkpoint and still knows referral `a`'s patient.
        let first_ids: HashSet<Uuid> = lines.iter().map(|e| e.event_id).collect();
        append(&log, a, &[triaged(a)]).await?;
        append(&log, b, &[received(b)]).await?;
        let (stop, rx) = tokio::sync::watch::channel(false);
        let sink: Arc<dyn Sink> = Arc::new(JsonlSink::new(&out));
        let task = tokio::spawn(run(shared.clone(), sink, ctx(), stopped(rx)));
        let lines = wait_for_lines(&out, 4).await;
        let _ = stop.send(true);
        task.await?;
        // At least once: a stop between publish and commit may repeat an
        // event; the set of event ids is what counts.
        let ids: HashSet<Uuid> = lines.iter().map(|e| e.event_id).collect();
        assert_eq!(ids.len(), 4, "every event published");
        assert!(first_ids.is_subset(&ids));
        let pseudonym = lines[0].patient_pseudonym.clone();
        assert!(pseudonym.is_some());
        let later = lines
            .iter()
            .find(|e| !first_ids.contains(&e.event_id) && e.referral_key == Some(a))
            .unwrap();
        assert_eq!(later.event_type, "ReferralTriaged");
        assert_eq!(later.patient_pseudonym, pseudonym, "recalled after restart");
        assert_eq!(later.age_band.as_deref(), Some("65-74"));
        assert!(lines.iter().any(|e| e.referral_key == Some(b)
            && e.event_type == "ReferralReceived"
            && e.patient_pseudonym == pseudonym));
        for line in std::fs::read_to_string(&out)?.lines() {
            for forbidden in [NHS, FAMILY, "SENTINEL", "1961-07-23", POSTCODE, "LS15HD"] {
                assert!(!line.contains(forbidden), "{forbidden} leaked");
            }
        }
        assert!(lines.iter().all(|e| is_exported(&e.event_type)));
        log.close().await;
        Ok(())
    }

    #[test]
    fn a_created_secret_is_kept_private_and_reused() -> TestResult {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("analytics/secret");
        let first = load_or_create_secret(&path)?;
        assert_eq!(first.len(), 64);
        assert!(first.iter().all(u8::is_ascii_hexdigit));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            assert_eq!(
                std::fs::metadata(&path)?.permissions().mode() & 0o777,
                0o600
            );
        }
        assert_eq!(load_or_create_secret(&path)?, first);
        let other = load_or_create_secret(&dir.path().join("other"))?;
        assert_ne!(other, first);
        assert_eq!(load_secret(Some(&path))?, Some(first));
        std::fs::write(dir.path().join("empty"), "\n")?;
        assert_eq!(load_secret(Some(&dir.path().join("empty")))?, None);
        assert!(load_imd(Some(&dir.path().join("missing.csv"))).is_err());
        assert!(!load_imd(None)?.is_empty());
        Ok(())
    }
}
