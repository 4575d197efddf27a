//! The process's memory allocator, mimalloc, and how soon it gives freed memory back.
//!
//! mimalloc 3 keeps memory a thread freed committed for `purge_delay` (1,000 ms by default) so
//! that the next allocation finds it ready, without a page fault. Which way to lean depends on
//! the destination (`xmbridge_destinations::memory`), so [`tune`] registers [`set_mode`] to
//! follow it:
//!
//! - **Fast** (no Delta Lake destination open: PostgreSQL, SQLite, and everything that is not
//!   a sync): a purge delay of 1,000 ms, and a runtime worker gives its free memory back when
//!   it goes idle at most every 2 s. Rows are freed and allocated in a steady stream, and
//!   keeping the freed pages took 12–15 % off a PostgreSQL first load's client CPU (minor page
//!   faults about 1,000,000 → 285,000 at 50,000 responses) and about 6 % off SQLite's, for
//!   about 10–50 MB more peak memory; docs/bench.md ("The allocator follows the destination").
//! - **Lean** (while a Delta Lake destination is open): 30 ms, and an idle worker gives its
//!   free memory back at most every 100 ms. A Delta merge frees and allocates whole files'
//!   batches in bursts faster than 1,000 ms, so the freed memory stayed resident beside the
//!   new: an incremental sync peaked at 285–313 MB while its heap never held more than 54 MB
//!   (heaptrack); 30 ms was the lowest delay whose CPU cost stayed small (docs/bench.md, "Delta
//!   Lake: merges by group, and the allocator's purge delay").
//!
//! `MIMALLOC_PURGE_DELAY` in the environment still sets the delay for both.

use std::cell::Cell;
use std::ffi::{c_int, c_long};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use xmbridge_destinations::memory::{self, MemoryMode};

// glibc's allocator spent about 30 % of a sync's CPU in malloc/free (rows are built on the
// parser thread and freed on the writer's): mimalloc is measured faster (docs/bench.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` in mimalloc 3's `mi_option_t` (include/mimalloc.h); the test below
/// fails if the linked mimalloc numbers its options otherwise.
const MI_OPTION_PURGE_DELAY: c_int = 15;

/// The purge delay in [`MemoryMode::Fast`], in milliseconds (mimalloc 3's own default, set
/// explicitly so that another mimalloc version does not change it).
pub const FAST_PURGE_DELAY_MS: c_long = 1_000;

/// The purge delay in [`MemoryMode::Lean`], in milliseconds.
pub const LEAN_PURGE_DELAY_MS: c_long = 30;

/// The environment variable with which mimalloc reads the delay itself; when it is set, [`tune`]
/// leaves the delay as it says.
pub const PURGE_DELAY_ENV: &str = "MIMALLOC_PURGE_DELAY";

unsafe extern "C" {
    #[cfg(test)]
    fn mi_option_get(option: c_int) -> c_long;
    fn mi_option_set(option: c_int, value: c_long);
    fn mi_collect(force: bool);
}

/// How often, at most, one runtime worker thread gives its free memory back when it goes idle,
/// in [`MemoryMode::Lean`].
pub const LEAN_IDLE_COLLECT_EVERY: Duration = Duration::from_millis(100);

/// The same in [`MemoryMode::Fast`]: rarely enough that the pages given back cost little in a
/// sync (a 50,000-response PostgreSQL first load: 280,000–295,000 minor faults with it, 260,000
/// with no collect at all). A worker whose last park came sooner than this after a collect
/// keeps its free memory until it next wakes; how much an idle `serve` keeps was not measured.
pub const FAST_IDLE_COLLECT_EVERY: Duration = Duration::from_secs(2);

/// Whether [`MemoryMode::Lean`] is on.
static LEAN: AtomicBool = AtomicBool::new(false);

/// Run by each async runtime worker just before it parks (goes idle): gives back to the system
/// what the thread's own mimalloc heap holds free (`mi_collect(true)`), at most once per
/// [`LEAN_IDLE_COLLECT_EVERY`] or [`FAST_IDLE_COLLECT_EVERY`] on each thread, so a worker that
/// parks thousands of times a second pays for it rarely. A forced collect also purges at once
/// what the delay would keep: every 100 ms during a PostgreSQL first load it cost as much
/// client CPU as the short delay itself (docs/bench.md).
///
/// mimalloc gives a thread's free pages back lazily, when that same thread allocates or frees
/// again, and a worker that went idle does neither: after a 1,000,000-response Delta first load
/// 1.1 MB of heap was live (heaptrack) while the process stayed 89–115 MB resident, and the
/// incremental sync after it started from there. With this, and incremental commits built only
/// when there is room to send them (`xmbridge-sync`), that sync peaked at 231–234 MB instead of
/// 278 MB (docs/bench.md, "Delta Lake at 1,000,000 responses: under 250 MB").
pub fn collect_when_idle() {
    thread_local! {
        static LAST: Cell<Option<Instant>> = const { Cell::new(None) };
    }
    let now = Instant::now();
    let due = LAST.with(|last| {
        let every = if LEAN.load(Ordering::Relaxed) {
            LEAN_IDLE_COLLECT_EVERY
        } else {
            FAST_IDLE_COLLECT_EVERY
        };
        let due = last.get().is_none_or(|t| now.duration_since(t) >= every);
        if due {
            last.set(Some(now));
        }
        due
    });
    if due {
        // SAFETY: mimalloc's collect works on the calling thread's own heap (and the abandoned
        // pages it may take over); any thread may call it at any time.
        unsafe { mi_collect(true) }
    }
}

/// Starts in the mode the destinations want (none open yet: [`MemoryMode::Fast`]) and follows
/// it from then on.
pub fn tune() {
    memory::on_memory_mode_change(set_mode);
    set_mode(memory::memory_mode());
}

/// Sets mimalloc's purge delay (unless [`PURGE_DELAY_ENV`] chose one) and how often idle
/// workers give memory back, for `mode`.
pub fn set_mode(mode: MemoryMode) {
    LEAN.store(mode == MemoryMode::Lean, Ordering::Relaxed);
    if std::env::var_os(PURGE_DELAY_ENV).is_none() {
        let delay = match mode {
            MemoryMode::Fast => FAST_PURGE_DELAY_MS,
            MemoryMode::Lean => LEAN_PURGE_DELAY_MS,
        };
        // SAFETY: mimalloc's option setter (linked from libmimalloc-sys) writes one entry of its
        // option table; any thread may call it at any time.
        unsafe { mi_option_set(MI_OPTION_PURGE_DELAY, delay) }
    }
}

/// mimalloc's purge delay now, in milliseconds.
#[cfg(test)]
fn purge_delay_ms() -> c_long {
    // SAFETY: mimalloc's option getter reads one entry of its option table.
    unsafe { mi_option_get(MI_OPTION_PURGE_DELAY) }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One test, so that nothing else in this binary moves the delay between its steps.
    #[test]
    fn the_delay_follows_the_open_destinations() {
        if let Ok(set) = std::env::var(PURGE_DELAY_ENV) {
            // The environment's delay wins in both modes.
            tune();
            set_mode(MemoryMode::Lean);
            assert_eq!(purge_delay_ms().to_string(), set.trim());
            set_mode(MemoryMode::Fast);
            assert_eq!(purge_delay_ms().to_string(), set.trim());
            return;
        }
        // mimalloc 3's default for `purge_delay` is 1,000 ms, which no neighbouring option has:
        // a renumbered option table reads as another value here.
        assert_eq!(
            purge_delay_ms(),
            1_000,
            "not mimalloc 3's purge_delay option"
        );
        tune();
        assert_eq!(purge_delay_ms(), FAST_PURGE_DELAY_MS);
        assert!(!LEAN.load(Ordering::Relaxed));

        // Delta Lake destinations, opened the way a sync opens them, switch to Lean while any
        // of them is open; a SQLite one leaves the mode as it is.
        let dir = tempfile::tempdir().expect("temp dir");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let open = |url: String| {
            let settings = xmbridge_destinations::DestinationSettings::from_parts(&url, None)
                .expect("settings");
            runtime
                .block_on(xmbridge_destinations::open(
                    &settings,
                    "qualtrics",
                    xmbridge_destinations::Compat::Xmbridge,
                    None,
                ))
                .expect("destination opens")
        };
        let sqlite = open(format!("sqlite:{}", dir.path().join("x.db").display()));
        assert_eq!(purge_delay_ms(), FAST_PURGE_DELAY_MS);
        let lake = open(format!("delta:{}", dir.path().join("lake").display()));
        assert_eq!(purge_delay_ms(), LEAN_PURGE_DELAY_MS);
        assert!(LEAN.load(Ordering::Relaxed));
        let second = open(format!("delta:{}", dir.path().join("lake2").display()));
        drop(lake);
        assert_eq!(
            purge_delay_ms(),
            LEAN_PURGE_DELAY_MS,
            "one Delta Lake destination is still open"
        );
        drop(second);
        assert_eq!(purge_delay_ms(), FAST_PURGE_DELAY_MS);
        assert!(!LEAN.load(Ordering::Relaxed));
        drop(sqlite);
    }
}
