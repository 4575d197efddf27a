//! The seeded brand: users, their tokens and permissions.

use crate::config::SimConfig;
use crate::rng::Rng;

/// What a user may do, as Qualtrics' permission matrix decides it.
#[derive(Clone, Debug)]
pub struct Permissions {
    /// "Access API": without it every API call answers 403.
    pub api_access: bool,
    /// XM Directory "Manage Directories": needed for transaction batches.
    pub manage_directories: bool,
    /// Brand administrator: calls that need one (such as managing event subscriptions) answer 403 without it.
    pub brand_admin: bool,
}

#[derive(Clone, Debug)]
/// A user of the simulated brand, seeded at start or created through the users API.
pub struct User {
    /// The user id, `UR_…`.
    pub id: String,
    /// The login name, unique in the brand.
    pub username: String,
    /// Given name, as the users API shows it.
    pub first_name: String,
    /// Family name, as the users API shows it.
    pub last_name: String,
    /// Contact e-mail address.
    pub email: String,
    /// `UT_BRANDADMIN`, `UT_PARTICIPANT` …
    pub user_type: String,
    /// The user's API token (`X-API-TOKEN`); derived from the seed, or the configured one for the brand administrator.
    pub api_token: String,
    /// What the user may do; checked on every API call.
    pub permissions: Permissions,
    /// The division the user belongs to (`DV_…`); `None` outside any division.
    pub division_id: Option<String>,
    /// `active`, or another status that makes every call of the user fail.
    pub account_status: String,
    /// Interface language code, e.g. `EN`.
    pub language: String,
    /// IANA time zone name, e.g. `Europe/Berlin`.
    pub time_zone: String,
    pub(crate) creation_ms: i64,
    pub(crate) last_login_ms: i64,
    pub(crate) password_last_changed_ms: i64,
    pub(crate) password_expiration_ms: Option<i64>,
    pub(crate) account_expiration_ms: Option<i64>,
    /// Opted out of Qualtrics product e-mails.
    pub unsubscribed: bool,
}

/// The users every simulated brand has. Index 0 is the brand administrator.
pub fn seed_users(cfg: &SimConfig) -> Vec<User> {
    // (first, last, role key, user type, api, manage directories, admin)
    let roster: [(&str, &str, &str, &str, bool, bool, bool); 5] = [
        ("Ana", "Ruiz", "admin", "UT_BRANDADMIN", true, true, true),
        (
            "Ben",
            "Okafor",
            "analyst",
            "UT_4H1x9kMzb3e0bQ2",
            true,
            true,
            false,
        ),
        (
            "Chloé",
            "Martin",
            "viewer",
            "UT_4H1x9kMzb3e0bQ2",
            true,
            false,
            false,
        ),
        (
            "Dev",
            "Patel",
            "noapi",
            "UT_PARTICIPANT",
            false,
            false,
            false,
        ),
        (
            "Eun-ji",
            "Kim",
            "researcher",
            "UT_4H1x9kMzb3e0bQ2",
            true,
            true,
            false,
        ),
    ];
    roster
        .iter()
        .enumerate()
        .map(|(i, (first, last, role, ut, api, md, admin))| {
            let mut r = Rng::derive(cfg.seed, &[0x05E5, i as u64]);
            let id = format!("UR_{}", r.alnum(15));
            let api_token = if i == 0 {
                cfg.admin_token()
            } else {
                r.alnum(40)
            };
            let username = format!("{role}@{}.test", cfg.brand_id);
            User {
                id,
                email: username.clone(),
                username,
                first_name: first.to_string(),
                last_name: last.to_string(),
                user_type: ut.to_string(),
                api_token,
                permissions: Permissions {
                    api_access: *api,
                    manage_directories: *md,
                    brand_admin: *admin,
                },
                division_id: if i == 0 {
                    None
                } else {
                    Some(format!("DV_{}", Rng::derive(cfg.seed, &[0xD1]).alnum(15)))
                },
                account_status: "active".into(),
                language: ["EN", "EN", "FR", "EN", "KO"][i].into(),
                time_zone: [
                    "Europe/Madrid",
                    "Africa/Lagos",
                    "Europe/Paris",
                    "Asia/Kolkata",
                    "Asia/Seoul",
                ][i]
                    .into(),
                creation_ms: cfg.history_start_ms()
                    - (400 + 30 * i as i64) * crate::clock::MS_PER_DAY,
                last_login_ms: cfg.start_ms - (i as i64 + 1) * 3_600_000,
                password_last_changed_ms: cfg.start_ms
                    - (20 + 17 * i as i64) * crate::clock::MS_PER_DAY,
                // Brand policy: passwords expire 180 days after a change; the admin's never does.
                password_expiration_ms: (i != 0)
                    .then(|| cfg.start_ms + (160 - 17 * i as i64) * crate::clock::MS_PER_DAY),
                account_expiration_ms: (i == 3)
                    .then(|| cfg.start_ms + 90 * crate::clock::MS_PER_DAY),
                unsubscribed: i == 4,
            }
        })
        .collect()
}
