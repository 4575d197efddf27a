//! The harness xmbridge's integration tests share, so each piece exists once.
//!
//! Owns: a temporary installation driving the real binary ([`cli`]), the simulators started
//! in-process on loopback ([`sim`]), `xmbridge serve` as a child process ([`serve`]), PostgreSQL
//! test databases with the one rule on `XMBRIDGE_TEST_PG` ([`pg`]), shapes recorded from the real
//! API that the simulator is held to ([`recorded`]), Delta tables read back by independent
//! readers with the same rule on `XMBRIDGE_TEST_DELTA_PYTHON` ([`lake`]) and a local S3 server from
//! the same environment ([`s3`]), a small tmpfs that fills up with the rule on
//! `XMBRIDGE_TEST_TMPFS` ([`disk`]), and a headless Chromium
//! driven over WebDriver with the same rule on `XMBRIDGE_TEST_BROWSER` ([`browser`]). Must not:
//! be a dependency of any production crate (it is a dev-dependency only and never published), or
//! depend on the client, sync or workflow crates (their tests use it; what needs them stays in
//! those tests).

pub mod browser;
pub mod cli;
pub mod disk;
pub mod lake;
pub mod pg;
pub mod recorded;
pub mod s3;
pub mod serve;
pub mod sim;

/// Prints `SKIPPED: <this test> <reason>` straight to the process's stderr (the test harness
/// would swallow `eprintln!`): how every kit here says that a test returned without running
/// because its environment variable is unset.
pub fn skipped(reason: &str) {
    use std::io::Write as _;
    let current = std::thread::current();
    let test = current.name().unwrap_or("this test");
    let _ = writeln!(std::io::stderr(), "SKIPPED: {test} {reason}");
}

/// A seeded xorshift: fault tests pick their moments and victims from it, so a failing run can
/// be repeated with the same seed.
pub struct Rng(pub u64);

impl Rng {
    /// The next 64 random bits.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A number in `lo..hi` (`hi` > `lo`).
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo)
    }
}
