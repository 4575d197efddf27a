//! Settings of one simulated Qualtrics brand.

use crate::clock::MS_PER_DAY;

/// Everything that shapes a simulated account. Same settings and seed → same account, byte for byte.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Seed of everything generated (ids, surveys, responses, contacts); the same seed gives the same account.
    pub seed: u64,
    /// Number of surveys in the account.
    pub surveys: usize,
    /// Responses per survey (generated on demand from the seed, never held in memory).
    pub responses: u64,
    /// Questions per survey at least; every survey also carries one question of each kind.
    pub questions: usize,
    /// XM Directory contacts in the default directory.
    pub contacts: usize,
    /// The brand administrator's API token (40 characters in real Qualtrics; any non-empty string
    /// is accepted here so users can pick a memorable one).
    pub api_token: String,
    /// The brand (organization) id, e.g. `acme`: the `brandId` of every user and the host prefix of brand URLs.
    pub brand_id: String,
    /// The data center the brand lives in, e.g. `fra1`.
    pub datacenter: String,
    /// Lifetime of OAuth access tokens in seconds (Qualtrics: 3600).
    pub token_ttl_secs: u64,
    /// Brand-wide request limit per minute (leaky bucket); 0 disables it.
    pub rate_limit_per_min: u32,
    /// How long an export takes to complete, in milliseconds of real time (progress polls see
    /// `inProgress` until then).
    pub export_delay_ms: u64,
    /// Serve with TLS and require client certificates signed by the brand CA.
    pub mtls: bool,
    /// The instant the account is generated at (simulated "now" at start), epoch ms.
    pub start_ms: i64,
    /// Faults switched on from the start (also settable at run time through `/_sim/faults`).
    pub faults: crate::qualtrics::faults::FaultSettings,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            seed: 7,
            surveys: 5,
            responses: 1000,
            questions: 12,
            contacts: 200,
            api_token: String::new(),
            brand_id: "simbrand".into(),
            datacenter: "fra1".into(),
            token_ttl_secs: 3600,
            rate_limit_per_min: 3000,
            export_delay_ms: 200,
            mtls: false,
            // 2026-11-01T00:00:00Z: a fixed start so dates do not depend on the wall clock.
            start_ms: 1_793_491_200_000,
            faults: Default::default(),
        }
    }
}

impl SimConfig {
    /// The brand administrator's token: the configured one, or one derived from the seed.
    pub fn admin_token(&self) -> String {
        if self.api_token.is_empty() {
            let mut r = crate::rng::Rng::derive(self.seed, &[0xA11]);
            r.alnum(40)
        } else {
            self.api_token.clone()
        }
    }

    /// Seeded data is spread over the year before the start instant.
    pub fn history_start_ms(&self) -> i64 {
        self.start_ms - 365 * MS_PER_DAY
    }
}
