//! The process's memory allocator, mimalloc, and how soon it gives freed memory back.
//!
//! mimalloc 3 keeps memory a thread freed committed for `purge_delay` (1,000 ms by default) so
//! that the next allocation finds it ready. A sync frees in bursts — a commit's rows, a Parquet
//! writer's buffers — and allocates the next burst before the delay is over, so the freed memory
//! stays resident beside the new: a Delta incremental sync peaked at 285–313 MB resident while
//! its heap never held more than 54 MB (heaptrack). [`tune`] shortens the delay to 30 ms: the
//! lowest setting measured whose cost in CPU stayed small (0 ms cost a PostgreSQL first load 30 %
//! more client CPU, 30 ms 10 %); docs/bench.md ("Delta Lake: merges by group, and the allocator's
//! purge delay") has the figures for each setting. [`collect_when_idle`] gives back what a
//! runtime worker's heap holds free when the worker goes idle, which the delay alone does not.

use std::cell::Cell;
use std::ffi::{c_int, c_long};
use std::time::{Duration, Instant};

// glibc's allocator spent about 30 % of a sync's CPU in malloc/free (rows are built on the
// parser thread and freed on the writer's): mimalloc is measured faster (docs/bench.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` in mimalloc 3's `mi_option_t` (include/mimalloc.h); the test below
/// fails if the linked mimalloc numbers its options otherwise.
const MI_OPTION_PURGE_DELAY: c_int = 15;

/// The purge delay xmbridge runs with, in milliseconds.
pub const PURGE_DELAY_MS: c_long = 30;

/// The environment variable with which mimalloc reads the delay itself; when it is set, [`tune`]
/// leaves the delay as it says.
pub const PURGE_DELAY_ENV: &str = "MIMALLOC_PURGE_DELAY";

unsafe extern "C" {
    #[cfg(test)]
    fn mi_option_get(option: c_int) -> c_long;
    fn mi_option_set(option: c_int, value: c_long);
    fn mi_collect(force: bool);
}

/// How often, at most, one runtime worker thread gives its free memory back when it goes idle.
pub const IDLE_COLLECT_EVERY: Duration = Duration::from_millis(100);

/// Run by each async runtime worker just before it parks (goes idle): gives back to the system
/// what the thread's own mimalloc heap holds free (`mi_collect(true)`), at most once per
/// [`IDLE_COLLECT_EVERY`] on each thread, so a worker that parks thousands of times a second
/// pays for it ten times.
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
        let due = last
            .get()
            .is_none_or(|t| now.duration_since(t) >= IDLE_COLLECT_EVERY);
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

/// Sets mimalloc's purge delay to [`PURGE_DELAY_MS`] unless [`PURGE_DELAY_ENV`] chose one.
pub fn tune() {
    if std::env::var_os(PURGE_DELAY_ENV).is_none() {
        // SAFETY: mimalloc's option setter (linked from libmimalloc-sys) writes one entry of its
        // option table; any thread may call it at any time.
        unsafe { mi_option_set(MI_OPTION_PURGE_DELAY, PURGE_DELAY_MS) }
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

    #[test]
    fn the_purge_delay_option_is_mimallocs_and_tune_sets_it() {
        // mimalloc 3's default for `purge_delay` is 1,000 ms, which no neighbouring option has:
        // a renumbered option table reads as another value here.
        match std::env::var(PURGE_DELAY_ENV) {
            Ok(set) => assert_eq!(purge_delay_ms().to_string(), set.trim()),
            Err(_) => {
                assert_eq!(
                    purge_delay_ms(),
                    1_000,
                    "not mimalloc 3's purge_delay option"
                );
                tune();
                assert_eq!(purge_delay_ms(), PURGE_DELAY_MS);
            }
        }
    }
}
