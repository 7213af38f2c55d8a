//! What the read models' tests share (feature `testing`): a seeded
//! generator for caseloads and a count of the log's events by type.

use std::collections::BTreeSet;

use mskflow_eventlog::{EventLog, StartFrom};

/// A small seeded generator (xorshift64*): the same seed gives the same
/// caseload on every run.
#[derive(Debug, Clone)]
pub struct Rng(pub u64);

impl Rng {
    #[allow(
        clippy::should_implement_trait,
        reason = "an endless generator, not an iterator the tests chain"
    )]
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % n.max(1) as u64).unwrap_or(0)
    }

    /// True `percent` times in a hundred.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

/// How many events the log holds, and of which types.
pub async fn log_events(
    log: &dyn EventLog,
) -> Result<(u64, BTreeSet<String>), mskflow_eventlog::Error> {
    let mut sub = log.subscribe("test-count", StartFrom::Beginning).await?;
    let (mut count, mut types) = (0, BTreeSet::new());
    loop {
        let batch = sub.poll_batch(1024).await?;
        if batch.is_empty() {
            return Ok((count, types));
        }
        count += batch.len() as u64;
        types.extend(batch.into_iter().map(|e| e.event_type));
    }
}
