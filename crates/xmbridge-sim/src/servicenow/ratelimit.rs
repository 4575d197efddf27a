//! Inbound REST rate-limit rules (`sys_rate_limit_rules`): requests per user per hour, for one
//! user, a role, or everyone. A user rule beats role rules, which beat all-user rules; among the
//! caller's role rules the lowest limit wins. Unlike ServiceNow (counts committed every 30 s),
//! counts apply immediately, so tests are exact.

use super::envelope::Caller;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

const HOUR_MS: i64 = 3_600_000;

#[derive(Clone, Debug, Serialize, Deserialize)]
/// A rate-limit rule: how many requests per hour a user or role may make.
pub struct Rule {
    #[serde(default)]
    /// The rule's sys_id (generated when not given).
    pub sys_id: String,
    #[serde(default)]
    /// The rule's name, sent in `X-RateLimit-Rule`.
    pub name: String,
    /// Applies to this user only.
    #[serde(default)]
    pub user: Option<String>,
    /// Applies to users with this role.
    #[serde(default)]
    pub role: Option<String>,
    /// Requests per hour.
    pub limit: u32,
}

#[derive(Debug, Default)]
/// The instance's rate-limit rules and the hourly counts per caller.
pub struct RateLimits {
    /// The rules; none means no limit.
    pub rules: Vec<Rule>,
    counts: HashMap<(String, i64), u32>,
}

/// The rule that applied to one request and what it says.
#[derive(Clone, Debug)]
pub struct Verdict {
    /// Requests allowed per hour.
    pub limit: u32,
    /// The rule that applied (its sys_id).
    pub rule: String,
    /// Unix seconds of the next hourly reset.
    pub reset: i64,
    /// Seconds until the reset, for `Retry-After`.
    pub retry_after: i64,
    /// The request is over the limit (answered 429).
    pub exceeded: bool,
}

impl Verdict {
    /// The rate-limit response headers (`X-RateLimit-*`, plus `Retry-After` when exceeded).
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        let mut h = vec![
            ("x-ratelimit-limit", self.limit.to_string()),
            ("x-ratelimit-reset", self.reset.to_string()),
            ("x-ratelimit-rule", self.rule.clone()),
        ];
        if self.exceeded {
            h.push(("retry-after", self.retry_after.to_string()));
        }
        h
    }
}

impl RateLimits {
    fn rule_for(&self, caller: &Caller) -> Option<&Rule> {
        self.rules
            .iter()
            .find(|r| r.user.as_deref() == Some(caller.user_name.as_str()))
            .or_else(|| {
                self.rules
                    .iter()
                    .filter(|r| r.user.is_none())
                    .filter(|r| {
                        r.role
                            .as_deref()
                            .is_some_and(|role| caller.roles.iter().any(|c| c == role))
                    })
                    .min_by_key(|r| r.limit)
            })
            .or_else(|| {
                self.rules
                    .iter()
                    .find(|r| r.user.is_none() && r.role.is_none())
            })
    }

    /// Counts one request of `caller`; `None` when no rule applies.
    pub fn count(&mut self, caller: &Caller, now_ms: i64) -> Option<Verdict> {
        let rule = self.rule_for(caller)?.clone();
        let hour = now_ms.div_euclid(HOUR_MS);
        let n = self
            .counts
            .entry((caller.user_name.clone(), hour))
            .or_insert(0);
        let exceeded = *n >= rule.limit;
        if !exceeded {
            *n += 1;
        }
        let reset_ms = (hour + 1) * HOUR_MS;
        Some(Verdict {
            limit: rule.limit,
            rule: rule.sys_id,
            reset: reset_ms / 1000,
            retry_after: ((reset_ms - now_ms + 999) / 1000).max(1),
            exceeded,
        })
    }

    /// Removes every rule and count.
    pub fn clear(&mut self) {
        self.rules.clear();
        self.counts.clear();
    }
}
