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
/// `total`, `done`, `elapsed_ms`, `per_s`: one line per start and finish, and one per commit.
#[derive(Debug, Default)]
pub struct LogProgress {
    counters: Counters,
}

impl LogProgress {
    /// A logger with zeroed counters.
    pub fn new() -> Self {
        Self::default()
    }
}

impl Progress for LogProgress {
    fn stream_started(&self, stream: &str, total: Option<u64>) {
        self.counters.start(stream);
        tracing::info!(target: "xmbridge_sync::progress", stream, total, "stream started");
    }

    fn advanced(&self, stream: &str, n: u64) {
        let (done, elapsed) = self.counters.add(stream, n);
        let per_s = rate(done, elapsed);
        tracing::info!(target: "xmbridge_sync::progress", stream, n, done, per_s, "progress");
    }

    fn stream_finished(&self, stream: &str) {
        let (done, elapsed) = self.counters.finish(stream);
        let elapsed_ms = elapsed.as_millis() as u64;
        let per_s = rate(done, elapsed);
        tracing::info!(target: "xmbridge_sync::progress", stream, done, elapsed_ms, per_s, "stream finished");
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

    #[derive(Debug, Default)]
    pub struct Counters(Mutex<HashMap<String, (u64, Instant)>>);

    impl Counters {
        fn with<T>(&self, f: impl FnOnce(&mut HashMap<String, (u64, Instant)>) -> T) -> T {
            let mut g = self.0.lock().unwrap_or_else(|e| e.into_inner());
            f(&mut g)
        }

        pub fn start(&self, stream: &str) {
            self.with(|m| m.insert(stream.to_string(), (0, Instant::now())));
        }

        pub fn add(&self, stream: &str, n: u64) -> (u64, Duration) {
            self.with(|m| {
                let e = m
                    .entry(stream.to_string())
                    .or_insert_with(|| (0, Instant::now()));
                e.0 += n;
                (e.0, e.1.elapsed())
            })
        }

        pub fn finish(&self, stream: &str) -> (u64, Duration) {
            self.with(|m| {
                m.remove(stream)
                    .map(|(n, t)| (n, t.elapsed()))
                    .unwrap_or_default()
            })
        }
    }
}
