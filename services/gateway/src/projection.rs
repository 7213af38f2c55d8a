//! Keeps the [`Views`] up to date by following the event log.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use mskflow_eventlog::{Envelope, EventLog, StartFrom, Subscription};
use tokio::sync::watch;
use uuid::Uuid;

use crate::views::{ReferralView, Views};

/// The consumer name of the gateway's views.
pub const CONSUMER: &str = "gateway-views";
const BATCH: usize = 512;

/// The live views, shared by the HTTP workers.
#[derive(Debug)]
pub struct ViewStore {
    views: RwLock<Views>,
    applied: watch::Sender<u64>,
    ready: AtomicBool,
    skipped: AtomicU64,
    /// Events stored but not yet applied, as of the last batch.
    lag: AtomicU64,
    /// When the referral gauges were last refreshed.
    gauges_at: std::sync::Mutex<Option<std::time::Instant>>,
}

impl Default for ViewStore {
    fn default() -> Self {
        Self {
            views: RwLock::new(Views::default()),
            applied: watch::channel(0).0,
            ready: AtomicBool::new(false),
            skipped: AtomicU64::new(0),
            lag: AtomicU64::new(0),
            gauges_at: std::sync::Mutex::new(None),
        }
    }
}

impl ViewStore {
    /// True at most once a second (and on the first batch).
    fn gauges_due(&self) -> bool {
        let Ok(mut at) = self.gauges_at.lock() else {
            return false;
        };
        let now = std::time::Instant::now();
        if at.is_some_and(|t| now.duration_since(t) < std::time::Duration::from_secs(1)) {
            return false;
        }
        *at = Some(now);
        true
    }

    /// Apply a batch of events and wake everyone waiting for a version.
    pub fn apply_batch(&self, batch: &[Envelope]) {
        {
            let mut views = match self.views.write() {
                Ok(v) => v,
                Err(poisoned) => poisoned.into_inner(),
            };
            for envelope in batch {
                // Each event continues the trace of the request that wrote it.
                let span = tracing::info_span!(
                    "consume",
                    otel.name = %format!("{CONSUMER} {}", envelope.event_type),
                    otel.kind = "consumer",
                    consumer = CONSUMER,
                    event_type = %envelope.event_type,
                    position = envelope.position,
                );
                mskflow_telemetry::set_remote_parent(
                    &span,
                    envelope.traceparent.as_deref(),
                    envelope.tracestate.as_deref(),
                );
                let _entered = span.enter();
                if let Err(e) = views.apply(envelope) {
                    self.skipped.fetch_add(1, Ordering::Relaxed);
                    metrics::counter!("mskflow_projection_skipped_events_total", "consumer" => CONSUMER).increment(1);
                    tracing::error!(error = %e, position = envelope.position, "event skipped by the gateway views");
                }
            }
            // The gauges scan every referral: refresh them at most once a
            // second, not on every batch (the write lock is held here).
            if self.gauges_due() {
                for (status, count) in views.count_by_status() {
                    metrics::gauge!("mskflow_referrals", "status" => status.code())
                        .set(count as f64);
                }
                let (fcp, rehab) = views.waiting_lists();
                metrics::gauge!("mskflow_waiting_list", "list" => "fcp-assessment").set(fcp as f64);
                metrics::gauge!("mskflow_waiting_list", "list" => "rehabilitation")
                    .set(rehab as f64);
            }
        }
        self.applied.send_modify(|n| *n += batch.len() as u64);
    }

    /// Run `f` on the current views.
    pub fn read<R>(&self, f: impl FnOnce(&Views) -> R) -> R {
        let views = match self.views.read() {
            Ok(v) => v,
            Err(poisoned) => poisoned.into_inner(),
        };
        f(&views)
    }

    /// Wait until referral `id` is at `version` or later, for at most `timeout`.
    pub async fn wait_for(
        &self,
        id: Uuid,
        version: u64,
        timeout: Duration,
    ) -> Option<ReferralView> {
        let mut rx = self.applied.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(view) =
                self.read(|v| v.referral(&id).filter(|r| r.version >= version).cloned())
            {
                return Some(view);
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => continue,
                _ => return None,
            }
        }
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Events stored but not yet applied to the views.
    pub fn lag(&self) -> u64 {
        self.lag.load(Ordering::Relaxed)
    }

    /// Events that could not be applied (logged as errors).
    pub fn skipped(&self) -> u64 {
        self.skipped.load(Ordering::Relaxed)
    }
}

/// Replay the log from the beginning into `store`, returning the subscription
/// positioned at the head, ready to follow.
pub async fn catch_up(
    log: &Arc<dyn EventLog>,
    store: &ViewStore,
) -> Result<Box<dyn Subscription>, mskflow_eventlog::Error> {
    // The views live in memory, so every start replays from the beginning;
    // events of types the views never fold are left out by the log.
    let types = Views::event_types();
    let mut sub = log
        .subscribe_types(CONSUMER, StartFrom::Beginning, &types)
        .await?;
    loop {
        let batch = sub.poll_batch(BATCH).await?;
        if batch.is_empty() {
            break;
        }
        store.apply_batch(&batch);
    }
    store.ready.store(true, Ordering::Release);
    Ok(sub)
}

/// Follow the log until `shutdown` resolves.
pub async fn follow(
    mut sub: Box<dyn Subscription>,
    store: Arc<ViewStore>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let mut backoff = Duration::from_millis(100);
    loop {
        tokio::select! {
            () = &mut shutdown => return,
            batch = sub.next_batch(BATCH) => match batch {
                // Read past events left out by type: nothing to apply.
                Ok(batch) if batch.is_empty() => {
                    backoff = Duration::from_millis(100);
                    store.ready.store(true, Ordering::Release);
                }
                Ok(batch) => {
                    backoff = Duration::from_millis(100);
                    store.ready.store(true, Ordering::Release);
                    store.apply_batch(&batch);
                    if let Ok(lag) = sub.lag().await {
                        store.lag.store(lag, Ordering::Relaxed);
                    }
                }
                Err(e) => {
                    store.ready.store(false, Ordering::Release);
                    tracing::error!(error = %e, "gateway views cannot read the event log; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
}
