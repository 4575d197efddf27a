//! Progress reporting: a small trait the engine calls as streams start, load rows and finish.
//!
//! The CLI draws progress bars (indicatif) or writes log lines through it; this module only
//! defines the trait, a no-op implementation and a `tracing` one with structured fields. Stream
//! names are `surveys`, `responses`, `responses:{survey_id}` (one per survey being exported),
//! `directories`, `transaction_batches`, `distributions`, `users`, `libraries`.

use parking_lot_free::Counters;

/// Receives progress events. Called from the engine's task only (never concurrently for the
/// same stream), but must be `Sync` because the engine holds it across awaits.
pub trait Progress: Send + Sync {
    /// A stream begins; `total` is how many units it expects, when known.
    fn stream_started(&self, stream: &str, total: Option<u64>);
    /// `n` more units are committed (surveys read, responses loaded, rows written).
    fn advanced(&self, stream: &str, n: u64);
    /// The stream is done (also after a failure).
    fn stream_finished(&self, stream: &str);
}

/// Reports nothing.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoProgress;

impl Progress for NoProgress {
    fn stream_started(&self, _: &str, _: Option<u64>) {}
    fn advanced(&self, _: &str, _: u64) {}
    fn stream_finished(&self, _: &str) {}
}

/// Logs through `tracing` (target `xmbridge_sync::progress`) with structured fields `stream`,
/// `total`, `done`, `elapsed_ms`, `per_s`. At INFO a stream gets one line when it starts, one
/// when it finishes and, while it runs, at most one `progress` line per [`LOG_EVERY`]; the
/// per-survey streams (`responses:{survey_id}`) and every commit are DEBUG.
#[derive(Debug, Default)]
pub struct LogProgress {
    counters: Counters,
}

/// How often a running stream logs its progress at INFO.
pub const LOG_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

impl LogProgress {
    /// A logger with zeroed counters.
    pub fn new() -> Self {
        Self::default()
    }
}

/// A per-survey stream (`responses:SV_…`), detail of its group's stream.
fn is_detail(stream: &str) -> bool {
    stream.contains(':')
}

impl Progress for LogProgress {
    fn stream_started(&self, stream: &str, total: Option<u64>) {
        self.counters.start(stream);
        if is_detail(stream) {
            tracing::debug!(target: "xmbridge_sync::progress", stream, total, "stream started");
        } else {
            tracing::info!(target: "xmbridge_sync::progress", stream, total, "stream started");
        }
    }

    fn advanced(&self, stream: &str, n: u64) {
        let (done, elapsed, due) = self.counters.add(stream, n, LOG_EVERY);
        let per_s = rate(done, elapsed);
        if due && !is_detail(stream) {
            tracing::info!(target: "xmbridge_sync::progress", stream, done, per_s, "progress");
        } else {
            tracing::debug!(target: "xmbridge_sync::progress", stream, n, done, per_s, "progress");
        }
    }

    fn stream_finished(&self, stream: &str) {
        let (done, elapsed) = self.counters.finish(stream);
        let elapsed_ms = elapsed.as_millis() as u64;
        let per_s = rate(done, elapsed);
        if is_detail(stream) {
            tracing::debug!(target: "xmbridge_sync::progress", stream, done, elapsed_ms, per_s, "stream finished");
        } else {
            tracing::info!(target: "xmbridge_sync::progress", stream, done, elapsed_ms, per_s, "stream finished");
        }
    }
}

fn rate(done: u64, elapsed: std::time::Duration) -> u64 {
    let s = elapsed.as_secs_f64();
    if s > 0.0 { (done as f64 / s) as u64 } else { 0 }
}

/// Per-stream counters behind a std mutex (no extra dependency).
mod parking_lot_free {
    use std::collections::HashMap;
    use std::sync::Mutex;
    use std::time::{Duration, Instant};

    /// Per stream: units done, when it started, when it last logged at INFO.
    #[derive(Debug, Default)]
    pub struct Counters(Mutex<HashMap<String, (u64, Instant, Instant)>>);

    impl Counters {
        fn with<T>(&self, f: impl FnOnce(&mut HashMap<String, (u64, Instant, Instant)>) -> T) -> T {
            let mut g = self.0.lock().unwrap_or_else(|e| e.into_inner());
            f(&mut g)
        }

        pub fn start(&self, stream: &str) {
            let now = Instant::now();
            self.with(|m| m.insert(stream.to_string(), (0, now, now)));
        }

        /// Adds `n`; returns the count, the time since the start, and whether `every` has
        /// passed since the last INFO line (which this call then is).
        pub fn add(&self, stream: &str, n: u64, every: Duration) -> (u64, Duration, bool) {
            self.with(|m| {
                let now = Instant::now();
                let e = m.entry(stream.to_string()).or_insert((0, now, now));
                e.0 += n;
                let due = now.duration_since(e.2) >= every;
                if due {
                    e.2 = now;
                }
                (e.0, e.1.elapsed(), due)
            })
        }

        pub fn finish(&self, stream: &str) -> (u64, Duration) {
            self.with(|m| {
                m.remove(stream)
                    .map(|(n, t, _)| (n, t.elapsed()))
                    .unwrap_or_default()
            })
        }
    }
}
