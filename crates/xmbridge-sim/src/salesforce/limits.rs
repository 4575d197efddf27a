//! The daily API request allowance (`Sforce-Limit-Info`, 403 `REQUEST_LIMIT_EXCEEDED`) and the
//! fault switches (5xx storms, forced limit errors, 429 throttling, row locks, slowness).

use serde::{Deserialize, Serialize};

const DAY_MS: i64 = 86_400_000;

#[derive(Clone, Debug, Serialize)]
/// The org's daily API request allowance and how much of it is used.
pub struct LimitState {
    /// Calls allowed per window.
    pub max: u64,
    /// Calls counted in the current window.
    pub used: u64,
    /// Start of the current 24-hour window (a simplification of Salesforce's rolling window).
    pub window_start_ms: i64,
}

impl LimitState {
    pub(crate) fn new(max: u64, now: i64) -> Self {
        LimitState {
            max,
            used: 0,
            window_start_ms: now,
        }
    }

    /// Counts one call; false when the allowance is used up (the call is refused, not counted).
    pub fn take(&mut self, now: i64) -> bool {
        if now - self.window_start_ms >= DAY_MS {
            self.window_start_ms = now;
            self.used = 0;
        }
        if self.used >= self.max {
            return false;
        }
        self.used += 1;
        true
    }

    /// The `Sforce-Limit-Info` header value, `api-usage=USED/MAX`.
    pub fn header(&self) -> String {
        format!("api-usage={}/{}", self.used, self.max)
    }
}

/// Fault switches; counters count down one per REST call they hit.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    /// The next N REST calls answer 503 `SERVER_UNAVAILABLE`.
    pub server_error_storm: u32,
    /// The next N REST calls answer 403 `REQUEST_LIMIT_EXCEEDED` (as if over the allowance).
    pub limit_exceeded: u32,
    /// The next N REST calls answer 429 with `Retry-After: retry_after_secs`.
    pub throttle_429: u32,
    /// Seconds sent in `Retry-After` with a forced 429.
    pub retry_after_secs: u64,
    /// The next N writes answer 400 `UNABLE_TO_LOCK_ROW`.
    pub unable_to_lock_row: u32,
    /// Every REST call waits this long first.
    pub slow_ms: u64,
}

/// Takes one from a fault counter; true if the fault fires.
pub fn fire(counter: &mut u32) -> bool {
    if *counter > 0 {
        *counter -= 1;
        true
    } else {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allowance_runs_out_and_resets_after_a_day() {
        let mut l = LimitState::new(2, 0);
        assert!(l.take(1) && l.take(2));
        assert!(!l.take(3));
        assert_eq!(l.header(), "api-usage=2/2");
        assert!(l.take(DAY_MS + 5));
        assert_eq!(l.used, 1);
    }
}
