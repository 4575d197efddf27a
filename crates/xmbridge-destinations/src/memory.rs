//! Which way the process's allocator should lean while destinations are open: speed or resident
//! memory.
//!
//! An allocator that keeps freed memory a while (mimalloc's purge delay) hands it out again
//! without page faults; one that gives it back at once keeps the process small but pays a page
//! fault for every page it touches again. Into PostgreSQL and SQLite, rows are freed and
//! allocated in a steady stream: keeping freed memory took 12–15 % off a PostgreSQL first load's
//! client CPU and 6 % off SQLite's. A Delta merge frees and allocates whole files' batches in
//! bursts, where kept memory stacked up to 285–313 MB resident (docs/bench.md: "The allocator
//! follows the destination" and "Delta Lake: merges by group, and the allocator's purge
//! delay"). So the choice follows the destinations: [`MemoryMode::Lean`] while any Delta Lake
//! destination is open, [`MemoryMode::Fast`] otherwise.
//!
//! This crate does not own the allocator (the binary does); it only says which mode is wanted,
//! through the hook the binary registers with [`on_memory_mode_change`]. Without a hook (the
//! library's own tests) nothing happens.

use std::sync::{Mutex, OnceLock};

/// How the allocator should treat freed memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemoryMode {
    /// Keep freed memory for reuse: fewer page faults, a larger resident set.
    Fast,
    /// Give freed memory back soon: more page faults, a smaller resident set.
    Lean,
}

static HOOK: OnceLock<fn(MemoryMode)> = OnceLock::new();

/// Open destinations that want [`MemoryMode::Lean`]; the hook is called under this lock, so
/// its calls come in the order of the count's changes.
static LEAN_HOLDERS: Mutex<usize> = Mutex::new(0);

/// Registers the function that switches the allocator; called with [`MemoryMode::Lean`] when
/// the first destination that wants it opens and with [`MemoryMode::Fast`] when the last one
/// closes. Only the first registration counts (one allocator per process).
pub fn on_memory_mode_change(hook: fn(MemoryMode)) {
    let _ = HOOK.set(hook);
}

/// The mode wanted now.
pub fn memory_mode() -> MemoryMode {
    let holders = LEAN_HOLDERS.lock().unwrap_or_else(|e| e.into_inner());
    if *holders > 0 {
        MemoryMode::Lean
    } else {
        MemoryMode::Fast
    }
}

/// Held by a destination that wants [`MemoryMode::Lean`] for as long as it is open.
#[derive(Debug)]
pub(crate) struct LeanMemory(());

impl LeanMemory {
    pub(crate) fn hold() -> Self {
        let mut holders = LEAN_HOLDERS.lock().unwrap_or_else(|e| e.into_inner());
        *holders += 1;
        if *holders == 1
            && let Some(hook) = HOOK.get()
        {
            hook(MemoryMode::Lean);
        }
        LeanMemory(())
    }
}

impl Drop for LeanMemory {
    fn drop(&mut self) {
        let mut holders = LEAN_HOLDERS.lock().unwrap_or_else(|e| e.into_inner());
        *holders = holders.saturating_sub(1);
        if *holders == 0
            && let Some(hook) = HOOK.get()
        {
            hook(MemoryMode::Fast);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lean_while_any_holder_lives() {
        // No other unit test of this crate holds the mode (the Delta destinations of the
        // integration tests run in a process of their own), so the count is this test's.
        let a = LeanMemory::hold();
        let b = LeanMemory::hold();
        assert_eq!(memory_mode(), MemoryMode::Lean);
        drop(a);
        assert_eq!(memory_mode(), MemoryMode::Lean);
        drop(b);
        assert_eq!(memory_mode(), MemoryMode::Fast);
    }
}
