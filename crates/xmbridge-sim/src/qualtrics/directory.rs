//! XM Directory of the simulated brand (docs/design/qualtrics-api.md §9.1–9.4): directories,
//! directory contacts (list, CRUD, search, history, transactions), mailing lists and their members,
//! contact transactions, transaction batches, samples and frequency rules.
//!
//! It owns the seeded directory data (derived from `cfg.seed` under its own tag, so the same seed
//! always gives byte-identical answers) and everything the API changes afterwards. It must not
//! touch surveys, responses or distributions; distributions read mailing lists through
//! [`DirectoryState::mailing_lists`] / [`DirectoryState::mailing_list_members`] and may record
//! contact history through [`DirectoryState::record_email_history`] /
//! [`DirectoryState::record_response_history`]. Choices the contract left open are written down
//! in `docs/simulator/directory.md`.

use super::SharedSim;
use super::account::User;
use super::auth::Caller;
use super::envelope::{self, ApiError, ApiResult};
use super::paging;
use crate::clock::{MS_PER_DAY, iso, parse_iso, parse_sql, sql};
use crate::config::SimConfig;
use crate::rng::Rng;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::routing::get;
use axum::{Extension, Router};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use parking_lot::RwLock;
use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;

/// Rng tag of this module: every seeded directory value derives from `[TAG, part, …]`.
const TAG: u64 = 0xD1EC_7041;
/// Rng part for ids handed out at run time (creates through the API).
const PART_NEW_ID: u64 = 0xFFFF;
/// Contact search never pages past this many hits (docs/design/qualtrics-api.md §4, pagination).
pub const SEARCH_LIMIT: usize = 10_000;
/// Largest `pageSize` of every XM Directory list.
const MAX_PAGE: usize = 100;
/// Most transactions one `POST /transactions` call may carry.
const MAX_TRANSACTIONS_PER_CALL: usize = 1_000;
/// History entries kept per contact and kind (bounded memory).
const MAX_HISTORY: usize = 1_000;
/// Nesting depth of search filter groups.
const MAX_FILTER_DEPTH: usize = 8;

// ---------------------------------------------------------------------------------------------
// State
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Debug)]
struct Dedup {
    email: bool,
    first_name: bool,
    last_name: bool,
    ext_ref: bool,
    phone: bool,
}

#[derive(Clone, Debug)]
struct Contact {
    id: String,
    first_name: String,
    last_name: String,
    email: String,
    phone: String,
    ext_ref: String,
    language: String,
    embedded: Map<String, Value>,
    unsubscribed: bool,
    unsubscribe_ms: Option<i64>,
    write_blanks: bool,
    creation_ms: i64,
    modified_ms: i64,
}

#[derive(Clone, Debug)]
struct Membership {
    lookup_id: String,
    unsubscribed: bool,
    unsubscribe_ms: Option<i64>,
}

#[derive(Clone, Debug)]
struct MailingList {
    id: String,
    name: String,
    owner_id: String,
    prioritize_list_metadata: bool,
    creation_ms: i64,
    modified_ms: i64,
    /// Keyed by contact id (the listing order).
    members: BTreeMap<String, Membership>,
}

#[derive(Clone, Debug)]
struct Transaction {
    id: String,
    contact_id: String,
    mailing_list_id: Option<String>,
    date_ms: i64,
    data: Map<String, Value>,
}

#[derive(Clone, Debug)]
struct Batch {
    id: String,
    creation_ms: i64,
    /// `(transaction id, date added to the batch)` in the order added.
    members: Vec<(String, i64)>,
}

#[derive(Clone, Debug)]
struct Sample {
    id: String,
    name: String,
    description: String,
    category: String,
    creator_id: String,
    owner_id: String,
    parent_group_id: Option<String>,
    frozen: bool,
    hidden: bool,
    creation_logic: Value,
    creation_ms: i64,
    modified_ms: i64,
}

#[derive(Clone, Debug)]
struct FrequencyRule {
    id: String,
    name: String,
    always_send: bool,
    days_between: i64,
    email_type: String,
    num_messages: i64,
    period: String,
    target_type: String,
    targets: Vec<String>,
}

/// One e-mail a contact was sent (for `…/history?type=email`).
#[derive(Clone, Debug)]
pub struct EmailHistoryEntry {
    /// The distribution that sent the e-mail (`EMD_…`).
    pub distribution_id: String,
    /// The survey the e-mail invited to; `None` for a message without a survey link.
    pub survey_id: Option<String>,
    /// The mailing list the e-mail went through; `None` when sent to the contact directly.
    pub mailing_list_id: Option<String>,
    /// `Invite`, `Reminder`, `ThankYou` …
    pub email_type: String,
    /// `Sent`, `Opened`, `Bounced`, `Failed` …
    pub status: String,
    /// When it happened, simulated epoch milliseconds.
    pub date_ms: i64,
}

/// One survey response of a contact (for `…/history?type=response`).
#[derive(Clone, Debug)]
pub struct ResponseHistoryEntry {
    /// The response id (`R_…`).
    pub response_id: String,
    /// The survey answered (`SV_…`).
    pub survey_id: String,
    /// The distribution the response came through; `None` for an anonymous link.
    pub distribution_id: Option<String>,
    /// Whether the response was completed.
    pub finished: bool,
    /// When it was recorded, simulated epoch milliseconds.
    pub date_ms: i64,
}

#[derive(Clone, Debug)]
struct Directory {
    id: String,
    name: String,
    is_default: bool,
    dedup: Dedup,
    /// Keyed by contact id: the listing order and the keyset of the new pagination scheme.
    contacts: BTreeMap<String, Contact>,
    lists: Vec<MailingList>,
    transactions: BTreeMap<String, Transaction>,
    batches: Vec<Batch>,
    samples: Vec<Sample>,
    rules: Vec<FrequencyRule>,
    email_history: HashMap<String, Vec<EmailHistoryEntry>>,
    response_history: HashMap<String, Vec<ResponseHistoryEntry>>,
}

#[derive(Debug)]
struct DirData {
    dirs: Vec<Directory>,
    /// Counter behind ids handed out at run time (deterministic for a given call sequence).
    next_id: u64,
}

/// The brand's XM Directory: seeded at start, changed by the API.
#[derive(Debug)]
pub struct DirectoryState {
    seed: u64,
    data: RwLock<DirData>,
    /// How deep a contact search pages ([`SEARCH_LIMIT`] unless a test lowers it).
    search_limit: std::sync::atomic::AtomicUsize,
}

/// A member of a mailing list, as distributions need it (history rows, links).
#[derive(Clone, Debug)]
pub struct ListMember {
    /// The contact id (`CID_…`).
    pub contact_id: String,
    /// `CGC_…`
    pub contact_lookup_id: String,
    /// Given name, for piped text and history rows.
    pub first_name: String,
    /// Family name, for piped text and history rows.
    pub last_name: String,
    /// Where invitations go.
    pub email: String,
    /// External data reference (`extRef`): the contact's id in the customer's own system.
    pub ext_ref: String,
}

impl DirData {
    fn dir(&self, id: &str) -> Result<&Directory, ApiError> {
        self.dirs
            .iter()
            .find(|d| d.id == id)
            .ok_or_else(|| ApiError::not_found(format!("Directory '{id}' was not found.")))
    }

    fn dir_mut(&mut self, id: &str) -> Result<&mut Directory, ApiError> {
        self.dirs
            .iter_mut()
            .find(|d| d.id == id)
            .ok_or_else(|| ApiError::not_found(format!("Directory '{id}' was not found.")))
    }

    fn new_id(&mut self, seed: u64, prefix: &str) -> String {
        self.next_id += 1;
        let mut r = Rng::derive(seed, &[TAG, PART_NEW_ID, self.next_id]);
        format!("{prefix}{}", r.alnum(15))
    }
}

/// Reads one deduplication field of a contact.
type Getter = fn(&Contact) -> &str;

impl Directory {
    fn contact(&self, id: &str) -> Result<&Contact, ApiError> {
        self.contacts.get(id).ok_or_else(|| {
            ApiError::not_found(format!(
                "Contact '{id}' was not found in directory '{}'.",
                self.id
            ))
        })
    }

    fn contact_mut(&mut self, id: &str) -> Result<&mut Contact, ApiError> {
        let dir_id = self.id.clone();
        self.contacts.get_mut(id).ok_or_else(|| {
            ApiError::not_found(format!(
                "Contact '{id}' was not found in directory '{dir_id}'."
            ))
        })
    }

    fn list(&self, id: &str) -> Result<&MailingList, ApiError> {
        self.lists.iter().find(|l| l.id == id).ok_or_else(|| {
            ApiError::not_found(format!(
                "Mailing list '{id}' was not found in directory '{}'.",
                self.id
            ))
        })
    }

    fn list_mut(&mut self, id: &str) -> Result<&mut MailingList, ApiError> {
        let dir_id = self.id.clone();
        self.lists.iter_mut().find(|l| l.id == id).ok_or_else(|| {
            ApiError::not_found(format!(
                "Mailing list '{id}' was not found in directory '{dir_id}'."
            ))
        })
    }

    fn transaction(&self, id: &str) -> Result<&Transaction, ApiError> {
        self.transactions.get(id).ok_or_else(|| {
            ApiError::not_found(format!(
                "Transaction '{id}' was not found in directory '{}'.",
                self.id
            ))
        })
    }

    fn batch(&self, id: &str) -> Result<&Batch, ApiError> {
        self.batches.iter().find(|b| b.id == id).ok_or_else(|| {
            ApiError::not_found(format!(
                "Transaction batch '{id}' was not found in directory '{}'.",
                self.id
            ))
        })
    }

    /// The existing contact the directory's deduplication criteria match, if any. Every enabled
    /// criterion must be present in `input` and equal (e-mail ignoring case); with no criterion
    /// enabled nothing is ever a duplicate.
    fn find_duplicate(&self, input: &ContactInput) -> Option<String> {
        let d = &self.dedup;
        let mut wanted: Vec<(Getter, String, bool)> = Vec::new();
        let fields: [(bool, &Option<String>, Getter, bool); 5] = [
            (d.email, &input.email, |c| &c.email, true),
            (d.first_name, &input.first_name, |c| &c.first_name, false),
            (d.last_name, &input.last_name, |c| &c.last_name, false),
            (d.ext_ref, &input.ext_ref, |c| &c.ext_ref, false),
            (d.phone, &input.phone, |c| &c.phone, false),
        ];
        for (enabled, value, get, fold) in fields {
            if !enabled {
                continue;
            }
            let v = value.as_deref().map(str::trim).unwrap_or("");
            if v.is_empty() {
                return None;
            }
            wanted.push((get, v.to_string(), fold));
        }
        if wanted.is_empty() {
            return None;
        }
        self.contacts
            .values()
            .find(|c| {
                wanted.iter().all(|(get, v, fold)| {
                    let have = get(c).trim();
                    if *fold {
                        have.eq_ignore_ascii_case(v)
                    } else {
                        have == v
                    }
                })
            })
            .map(|c| c.id.clone())
    }

    /// Removes a contact with its memberships, transactions (and their batch entries) and history.
    fn remove_contact(&mut self, id: &str) -> bool {
        if self.contacts.remove(id).is_none() {
            return false;
        }
        for l in &mut self.lists {
            l.members.remove(id);
        }
        let gone: Vec<String> = self
            .transactions
            .values()
            .filter(|t| t.contact_id == id)
            .map(|t| t.id.clone())
            .collect();
        for t in &gone {
            self.transactions.remove(t);
        }
        for b in &mut self.batches {
            b.members.retain(|(t, _)| !gone.contains(t));
        }
        self.email_history.remove(id);
        self.response_history.remove(id);
        true
    }
}

// ---------------------------------------------------------------------------------------------
// Seeding
// ---------------------------------------------------------------------------------------------

const FIRST_NAMES: &[&str] = &[
    "Ana",
    "José",
    "Zoë",
    "Siobhán",
    "Björn",
    "Chloé",
    "Łukasz",
    "Mei",
    "Aarav",
    "Fatima",
    "Noah",
    "Olivia",
    "Kwame",
    "Yuki",
    "Søren",
    "Renée",
    "Ngozi",
    "Liam",
    "Amélie",
    "Dmitri",
    "Emma",
    "Hiroshi",
    "Priya",
    "Mateo",
    "Seán",
    "Ayşe",
    "François",
    "Jürgen",
    "Maëlle",
    "Tomás",
];
const LAST_NAMES: &[&str] = &[
    "O'Brien",
    "D'Angelo",
    "Müller",
    "García",
    "Nguyễn",
    "Kowalski",
    "Smith",
    "Østergaard",
    "Ó Súilleabháin",
    "Dubois",
    "Tanaka",
    "Okafor",
    "Patel",
    "Johansson",
    "Fernández",
    "Li",
    "O'Neil",
    "Schäfer",
    "Rossi",
    "Kim",
    "MacDonald",
    "Ivanova",
    "N'Diaye",
    "Al-Sayed",
    "Yılmaz",
];
const DOMAINS: &[&str] = &[
    "example.com",
    "mail.example.org",
    "acme.test",
    "globex.test",
    "initech.test",
];
const LANGUAGES: &[&str] = &["EN", "EN", "EN", "FR", "DE", "ES", "JA", "PT-BR", "KO"];
const TIERS: &[&str] = &["gold", "silver", "bronze"];
const REGIONS: &[&str] = &["EMEA", "AMER", "APAC"];
const STORES: &[&str] = &["Lehi", "Dublin", "Sydney", "Seattle", "Berlin", "Tōkyō"];
const CHANNELS: &[&str] = &["web", "store", "phone", "app"];

/// ASCII form of a name for e-mail local parts (`Ó Súilleabháin` → `osuilleabhain`).
fn ascii_fold(s: &str) -> String {
    let mut out = String::new();
    for ch in s.chars() {
        let mapped: &str = match ch {
            'á' | 'à' | 'â' | 'ä' | 'ã' | 'å' | 'Á' | 'À' | 'Â' | 'Ä' => "a",
            'é' | 'è' | 'ê' | 'ë' | 'É' | 'ễ' => "e",
            'í' | 'ì' | 'î' | 'ï' | 'ı' | 'Í' | 'İ' => "i",
            'ó' | 'ò' | 'ô' | 'ö' | 'õ' | 'Ó' | 'Ö' | 'ō' => "o",
            'ú' | 'ù' | 'û' | 'ü' | 'Ú' | 'Ü' => "u",
            'ç' | 'Ç' => "c",
            'ñ' => "n",
            'ş' | 'Ş' => "s",
            'ø' | 'Ø' => "o",
            'ł' | 'Ł' => "l",
            'ß' => "ss",
            'ğ' => "g",
            c if c.is_ascii_alphanumeric() => {
                out.push(c.to_ascii_lowercase());
                continue;
            }
            _ => "",
        };
        out.push_str(mapped);
    }
    out
}

fn seed_contact(seed: u64, dir_idx: u64, i: usize, cfg: &SimConfig) -> Contact {
    let mut r = Rng::derive(seed, &[TAG, 1, dir_idx, i as u64]);
    let id = format!("CID_{}", r.alnum(15));
    let first = r.pick(FIRST_NAMES).to_string();
    let last = r.pick(LAST_NAMES).to_string();
    let domain = r.pick(DOMAINS);
    let email = format!(
        "{}.{}{}@{domain}",
        ascii_fold(&first),
        ascii_fold(&last),
        i + 1
    );
    let phone = if r.chance(0.1) {
        String::new()
    } else {
        match r.below(3) {
            0 => format!("+1555{:07}", r.below(10_000_000)),
            1 => format!("+4930{:08}", r.below(100_000_000)),
            _ => format!("+33{:09}", r.below(1_000_000_000)),
        }
    };
    let ext_ref = if r.chance(0.15) {
        String::new()
    } else {
        format!("crm-{}", 10_000 + i as u64 + dir_idx * 100_000)
    };
    let language = r.pick(LANGUAGES).to_string();
    let history = cfg.history_start_ms();
    let creation_ms = r.range(history, cfg.start_ms - MS_PER_DAY);
    let modified_ms = r.range(creation_ms, cfg.start_ms - 1000);
    let unsubscribed = r.chance(0.06);
    let unsubscribe_ms = unsubscribed.then(|| r.range(creation_ms, modified_ms));
    let mut embedded = Map::new();
    embedded.insert("tier".into(), Value::String(r.pick(TIERS).to_string()));
    embedded.insert("region".into(), Value::String(r.pick(REGIONS).to_string()));
    embedded.insert(
        "customerSince".into(),
        Value::String(r.range(2012, 2026).to_string()),
    );
    if r.chance(0.3) {
        embedded.insert(
            "favouriteStore".into(),
            Value::String(r.pick(STORES).to_string()),
        );
    }
    Contact {
        id,
        first_name: first,
        last_name: last,
        email,
        phone,
        ext_ref,
        language,
        embedded,
        unsubscribed,
        unsubscribe_ms,
        write_blanks: r.chance(0.1),
        creation_ms,
        modified_ms,
    }
}

/// Seeds one mailing list with about `share` of `contacts` (at least `min` when there are enough).
#[allow(clippy::too_many_arguments)]
fn seed_list(
    seed: u64,
    dir_idx: u64,
    list_idx: u64,
    name: &str,
    owner_id: &str,
    contacts: &BTreeMap<String, Contact>,
    share: f64,
    cfg: &SimConfig,
) -> MailingList {
    let mut r = Rng::derive(seed, &[TAG, 2, dir_idx, list_idx]);
    let id = format!("CG_{}", r.alnum(15));
    let creation_ms = r.range(cfg.history_start_ms(), cfg.start_ms - 30 * MS_PER_DAY);
    let modified_ms = r.range(creation_ms, cfg.start_ms - MS_PER_DAY);
    let mut members = BTreeMap::new();
    for c in contacts.values() {
        if r.chance(share) {
            let unsubscribed = r.chance(0.05);
            let lookup_id = format!("CGC_{}", r.alnum(15));
            let unsubscribe_ms = unsubscribed.then(|| r.range(creation_ms, modified_ms));
            members.insert(
                c.id.clone(),
                Membership {
                    lookup_id,
                    unsubscribed,
                    unsubscribe_ms,
                },
            );
        }
    }
    MailingList {
        id,
        name: name.to_string(),
        owner_id: owner_id.to_string(),
        prioritize_list_metadata: false,
        creation_ms,
        modified_ms,
        members,
    }
}

fn seed_transactions(seed: u64, dir_idx: u64, dir: &mut Directory, count: usize, cfg: &SimConfig) {
    let pairs: Vec<(String, String)> = dir
        .lists
        .iter()
        .flat_map(|l| l.members.keys().map(move |c| (c.clone(), l.id.clone())))
        .collect();
    if pairs.is_empty() {
        return;
    }
    for i in 0..count {
        let mut r = Rng::derive(seed, &[TAG, 3, dir_idx, i as u64]);
        let id = format!("CTR_{}", r.alnum(15));
        let (contact_id, list_id) = r.pick(&pairs).clone();
        let date_ms = r.range(cfg.history_start_ms(), cfg.start_ms - MS_PER_DAY) / 1000 * 1000;
        let mut data = Map::new();
        data.insert(
            "orderId".into(),
            Value::String(format!("A-{}", 1000 + i as u64 * 7 + dir_idx)),
        );
        data.insert(
            "amount".into(),
            Value::String(format!("{}.{:02}", r.range(5, 900), r.below(100))),
        );
        data.insert("store".into(), Value::String(r.pick(STORES).to_string()));
        data.insert(
            "channel".into(),
            Value::String(r.pick(CHANNELS).to_string()),
        );
        dir.transactions.insert(
            id.clone(),
            Transaction {
                id,
                contact_id,
                mailing_list_id: Some(list_id),
                date_ms,
                data,
            },
        );
    }
}

fn seed_batches(seed: u64, dir_idx: u64, dir: &mut Directory, count: usize, cfg: &SimConfig) {
    let tx: Vec<(String, i64)> = dir
        .transactions
        .values()
        .map(|t| (t.id.clone(), t.date_ms))
        .collect();
    for b in 0..count {
        let mut r = Rng::derive(seed, &[TAG, 4, dir_idx, b as u64]);
        let id = format!("BT_{}", r.alnum(15));
        let creation_ms = r.range(cfg.history_start_ms(), cfg.start_ms - 60 * MS_PER_DAY);
        // Every transaction goes to at most one seeded batch; the last share stays unbatched.
        let members = tx
            .iter()
            .enumerate()
            .filter(|(i, _)| i % (count + 1) == b)
            .map(|(_, (t, date))| {
                let added = (*date).max(creation_ms) + r.range(60_000, 3 * MS_PER_DAY);
                (t.clone(), added / 1000 * 1000)
            })
            .collect();
        dir.batches.push(Batch {
            id,
            creation_ms: creation_ms / 1000 * 1000,
            members,
        });
    }
}

fn seed_samples(seed: u64, dir: &mut Directory, users: &[User], cfg: &SimConfig) {
    let owner = |i: usize| {
        users
            .get(i)
            .or_else(|| users.first())
            .map(|u| u.id.clone())
            .unwrap_or_default()
    };
    let source = dir.lists.first().map(|l| l.id.clone());
    let specs = [
        (
            "Gold customers, random 50",
            "A random draw of gold-tier customers for the quarterly panel.",
            "Panels",
            json!({"type": "random", "size": 50,
                   "source": {"mailingListId": source},
                   "conditions": [{"field": "embeddedData.tier", "operator": "eq", "value": "gold"}]}),
            false,
            false,
        ),
        (
            "EMEA holdout",
            "Frozen holdout group of EMEA contacts excluded from campaigns.",
            "Holdouts",
            json!({"type": "filter", "size": null,
                   "source": {"directory": true},
                   "conditions": [{"field": "embeddedData.region", "operator": "eq", "value": "EMEA"}]}),
            true,
            true,
        ),
    ];
    for (i, (name, description, category, logic, frozen, hidden)) in specs.into_iter().enumerate() {
        let mut r = Rng::derive(seed, &[TAG, 5, i as u64]);
        let id = format!("SMP_{}", r.alnum(15));
        let creation_ms = r.range(cfg.history_start_ms(), cfg.start_ms - 10 * MS_PER_DAY);
        let modified_ms = r.range(creation_ms, cfg.start_ms - MS_PER_DAY);
        dir.samples.push(Sample {
            id,
            name: name.into(),
            description: description.into(),
            category: category.into(),
            creator_id: owner(i),
            owner_id: owner(i + 1),
            parent_group_id: if i == 0 { source.clone() } else { None },
            frozen,
            hidden,
            creation_logic: logic,
            creation_ms,
            modified_ms,
        });
    }
}

fn seed_rules(seed: u64, dir: &mut Directory) {
    let list_ids: Vec<String> = dir.lists.iter().take(2).map(|l| l.id.clone()).collect();
    let mut r = Rng::derive(seed, &[TAG, 6, 0]);
    dir.rules.push(FrequencyRule {
        id: format!("FR_{}", r.alnum(15)),
        name: "At most 2 invitations a month".into(),
        always_send: false,
        days_between: 14,
        email_type: "Invite".into(),
        num_messages: 2,
        period: "Month".into(),
        target_type: "MailingList".into(),
        targets: list_ids,
    });
    let mut r = Rng::derive(seed, &[TAG, 6, 1]);
    dir.rules.push(FrequencyRule {
        id: format!("FR_{}", r.alnum(15)),
        name: "Directory-wide weekly cap".into(),
        always_send: true,
        days_between: 7,
        email_type: "All".into(),
        num_messages: 1,
        period: "Week".into(),
        target_type: "Directory".into(),
        targets: vec![dir.id.clone()],
    });
}

fn seed_directory(
    cfg: &SimConfig,
    users: &[User],
    dir_idx: u64,
    name: &str,
    is_default: bool,
    dedup: Dedup,
    n_contacts: usize,
) -> Directory {
    let seed = cfg.seed;
    let mut r = Rng::derive(seed, &[TAG, 0, dir_idx]);
    let id = format!("POOL_{}", r.alnum(15));
    let contacts: BTreeMap<String, Contact> = (0..n_contacts)
        .map(|i| seed_contact(seed, dir_idx, i, cfg))
        .map(|c| (c.id.clone(), c))
        .collect();
    let owner = |i: usize| {
        users
            .get(i)
            .or_else(|| users.first())
            .map(|u| u.id.clone())
            .unwrap_or_default()
    };
    let list_specs: &[(&str, usize, f64)] = if is_default {
        &[
            ("Customers – all regions", 0, 0.45),
            ("Q1 panel", 1, 0.2),
            ("VIP & partners' contacts", 4, 0.08),
        ]
    } else {
        &[("Partner newsletter", 1, 0.4)]
    };
    let lists = list_specs
        .iter()
        .enumerate()
        .map(|(i, (n, o, share))| {
            seed_list(
                seed,
                dir_idx,
                i as u64,
                n,
                &owner(*o),
                &contacts,
                *share,
                cfg,
            )
        })
        .collect();
    let mut dir = Directory {
        id,
        name: name.to_string(),
        is_default,
        dedup,
        contacts,
        lists,
        transactions: BTreeMap::new(),
        batches: Vec::new(),
        samples: Vec::new(),
        rules: Vec::new(),
        email_history: HashMap::new(),
        response_history: HashMap::new(),
    };
    if is_default {
        let count = (n_contacts / 5).clamp(8, 500);
        seed_transactions(seed, dir_idx, &mut dir, count, cfg);
        seed_batches(seed, dir_idx, &mut dir, 3, cfg);
        seed_samples(seed, &mut dir, users, cfg);
        seed_rules(seed, &mut dir);
    } else {
        seed_transactions(seed, dir_idx, &mut dir, 4, cfg);
    }
    dir
}

impl DirectoryState {
    pub(crate) fn new(cfg: &SimConfig, users: &[User]) -> Self {
        let default = seed_directory(
            cfg,
            users,
            0,
            "XM Directory",
            true,
            Dedup {
                email: true,
                first_name: false,
                last_name: false,
                ext_ref: false,
                phone: false,
            },
            cfg.contacts,
        );
        let partners = seed_directory(
            cfg,
            users,
            1,
            "Partner Panel",
            false,
            Dedup {
                email: false,
                first_name: true,
                last_name: true,
                ext_ref: true,
                phone: false,
            },
            25,
        );
        DirectoryState {
            seed: cfg.seed,
            data: RwLock::new(DirData {
                dirs: vec![default, partners],
                next_id: 0,
            }),
            search_limit: SEARCH_LIMIT.into(),
        }
    }

    /// Lowers (or restores) the depth a contact search pages to before its 400, so a test can
    /// meet the limit without 10,000 contacts. Real Qualtrics: [`SEARCH_LIMIT`].
    pub fn set_search_limit(&self, limit: usize) {
        self.search_limit
            .store(limit, std::sync::atomic::Ordering::Relaxed);
    }

    /// The `POOL_…` id of the brand's default directory.
    pub fn default_directory_id(&self) -> String {
        let data = self.data.read();
        data.dirs
            .iter()
            .find(|d| d.is_default)
            .map(|d| d.id.clone())
            .unwrap_or_default()
    }

    /// Every mailing list as `(directory id, mailing list id)`, in a stable order.
    pub fn mailing_lists(&self) -> Vec<(String, String)> {
        let data = self.data.read();
        data.dirs
            .iter()
            .flat_map(|d| d.lists.iter().map(|l| (d.id.clone(), l.id.clone())))
            .collect()
    }

    /// The members of one mailing list, in a stable order (empty if unknown).
    pub fn mailing_list_members(&self, mailing_list_id: &str) -> Vec<ListMember> {
        let data = self.data.read();
        for d in &data.dirs {
            if let Some(l) = d.lists.iter().find(|l| l.id == mailing_list_id) {
                return l
                    .members
                    .iter()
                    .filter_map(|(cid, m)| {
                        d.contacts.get(cid).map(|c| ListMember {
                            contact_id: c.id.clone(),
                            contact_lookup_id: m.lookup_id.clone(),
                            first_name: c.first_name.clone(),
                            last_name: c.last_name.clone(),
                            email: c.email.clone(),
                            ext_ref: c.ext_ref.clone(),
                        })
                    })
                    .collect();
            }
        }
        Vec::new()
    }

    /// Adds an e-mail to a contact's history (distributions call this when they "send").
    /// Unknown directory or contact: ignored.
    pub fn record_email_history(
        &self,
        directory_id: &str,
        contact_id: &str,
        entry: EmailHistoryEntry,
    ) {
        let mut data = self.data.write();
        if let Some(d) = data.dirs.iter_mut().find(|d| d.id == directory_id)
            && d.contacts.contains_key(contact_id)
        {
            let h = d.email_history.entry(contact_id.to_string()).or_default();
            if h.len() >= MAX_HISTORY {
                h.remove(0);
            }
            h.push(entry);
        }
    }

    /// Adds a response to a contact's history. Unknown directory or contact: ignored.
    pub fn record_response_history(
        &self,
        directory_id: &str,
        contact_id: &str,
        entry: ResponseHistoryEntry,
    ) {
        let mut data = self.data.write();
        if let Some(d) = data.dirs.iter_mut().find(|d| d.id == directory_id)
            && d.contacts.contains_key(contact_id)
        {
            let h = d
                .response_history
                .entry(contact_id.to_string())
                .or_default();
            if h.len() >= MAX_HISTORY {
                h.remove(0);
            }
            h.push(entry);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// JSON projections
// ---------------------------------------------------------------------------------------------

fn opt_str(s: &str) -> Value {
    if s.is_empty() {
        Value::Null
    } else {
        Value::String(s.to_string())
    }
}

fn email_domain(email: &str) -> Value {
    email
        .rsplit_once('@')
        .map(|(_, d)| Value::String(d.to_ascii_lowercase()))
        .unwrap_or(Value::Null)
}

fn directory_json(d: &Directory) -> Value {
    json!({
        "directoryId": d.id,
        "name": d.name,
        "contactCount": d.contacts.len(),
        "isDefault": d.is_default,
        "deduplicationCriteria": {
            "email": d.dedup.email,
            "firstName": d.dedup.first_name,
            "lastName": d.dedup.last_name,
            "externalDataReference": d.dedup.ext_ref,
            "phone": d.dedup.phone,
        },
    })
}

fn contact_brief(c: &Contact) -> Value {
    json!({
        "contactId": c.id,
        "firstName": c.first_name,
        "lastName": c.last_name,
        "email": c.email,
        "phone": opt_str(&c.phone),
        "extRef": opt_str(&c.ext_ref),
        "language": c.language,
        "unsubscribed": c.unsubscribed,
    })
}

fn contact_full(d: &Directory, c: &Contact) -> Value {
    let mut membership = Map::new();
    for l in &d.lists {
        if let Some(m) = l.members.get(&c.id) {
            membership.insert(
                l.id.clone(),
                json!({
                    "contactLookupId": m.lookup_id,
                    "name": l.name,
                    "ownerId": l.owner_id,
                    "unsubscribed": m.unsubscribed,
                    "unsubscribeDate": m.unsubscribe_ms,
                }),
            );
        }
    }
    json!({
        "contactId": c.id,
        "creationDate": c.creation_ms,
        "lastModified": c.modified_ms,
        "firstName": c.first_name,
        "lastName": c.last_name,
        "email": c.email,
        "emailDomain": email_domain(&c.email),
        "phone": opt_str(&c.phone),
        "language": c.language,
        "extRef": opt_str(&c.ext_ref),
        "writeBlanks": c.write_blanks,
        "embeddedData": c.embedded,
        "transactionData": [],
        "stats": contact_stats(d, &c.id),
        "skipped": false,
        "directoryUnsubscribed": c.unsubscribed,
        "directoryUnsubscribeDate": c.unsubscribe_ms,
        "mailingListMembership": membership,
    })
}

fn contact_stats(d: &Directory, id: &str) -> Value {
    let sent = d.email_history.get(id).map(Vec::len).unwrap_or(0);
    let responses = d.response_history.get(id).map(Vec::len).unwrap_or(0);
    if sent == 0 && responses == 0 {
        json!({})
    } else {
        json!({"sent": sent, "responses": responses})
    }
}

fn contact_search_hit(d: &Directory, c: &Contact, include_embedded: bool) -> Value {
    let mut v = json!({
        "id": c.id,
        "creationDate": c.creation_ms,
        "lastModified": c.modified_ms,
        "firstName": c.first_name,
        "lastName": c.last_name,
        "email": c.email,
        "phoneNumber": opt_str(&c.phone),
        "externalDataReference": opt_str(&c.ext_ref),
        "language": c.language,
        "unsubscribed": c.unsubscribed,
        "unsubscribeDate": c.unsubscribe_ms,
        "stats": contact_stats(d, &c.id),
    });
    if include_embedded && let Some(o) = v.as_object_mut() {
        o.insert("embeddedData".into(), Value::Object(c.embedded.clone()));
    }
    if let Some(o) = v.as_object_mut() {
        let segments: Vec<Value> = d
            .lists
            .iter()
            .filter(|l| l.members.contains_key(&c.id))
            .map(|l| Value::String(l.id.clone()))
            .collect();
        o.insert("segmentMembership".into(), Value::Array(segments));
    }
    v
}

fn list_json(l: &MailingList, include_count: bool) -> Value {
    let mut v = json!({
        "mailingListId": l.id,
        "name": l.name,
        "ownerId": l.owner_id,
    });
    if let Some(o) = v.as_object_mut() {
        if include_count {
            o.insert("contactCount".into(), json!(l.members.len()));
        }
        o.insert("creationDate".into(), json!(l.creation_ms));
        o.insert("lastModifiedDate".into(), json!(l.modified_ms));
        o.insert(
            "prioritizeListMetadata".into(),
            json!(l.prioritize_list_metadata),
        );
    }
    v
}

fn email_history_json(contact_id: &str, e: &EmailHistoryEntry) -> Value {
    json!({
        "contactId": contact_id,
        "distributionId": e.distribution_id,
        "surveyId": e.survey_id,
        "mailingListId": e.mailing_list_id,
        "emailType": e.email_type,
        "status": e.status,
        "date": iso(e.date_ms),
    })
}

fn response_history_json(contact_id: &str, e: &ResponseHistoryEntry) -> Value {
    json!({
        "contactId": contact_id,
        "responseId": e.response_id,
        "surveyId": e.survey_id,
        "distributionId": e.distribution_id,
        "finished": e.finished,
        "date": iso(e.date_ms),
    })
}

fn list_member_json(d: &Directory, c: &Contact, m: &Membership, include_embedded: bool) -> Value {
    let mut v = json!({
        "contactId": c.id,
        "contactLookupId": m.lookup_id,
        "firstName": c.first_name,
        "lastName": c.last_name,
        "email": c.email,
        "phone": opt_str(&c.phone),
        "extRef": opt_str(&c.ext_ref),
        "language": c.language,
        "unsubscribed": c.unsubscribed,
        "mailingListUnsubscribed": m.unsubscribed,
    });
    if let Some(o) = v.as_object_mut() {
        if include_embedded {
            o.insert("embeddedData".into(), Value::Object(c.embedded.clone()));
        }
        let responses: Vec<Value> = d
            .response_history
            .get(&c.id)
            .map(|h| h.iter().map(|e| response_history_json(&c.id, e)).collect())
            .unwrap_or_default();
        let emails: Vec<Value> = d
            .email_history
            .get(&c.id)
            .map(|h| h.iter().map(|e| email_history_json(&c.id, e)).collect())
            .unwrap_or_default();
        o.insert("responseHistory".into(), Value::Array(responses));
        o.insert("emailHistory".into(), Value::Array(emails));
    }
    v
}

fn transaction_json(t: &Transaction) -> Value {
    json!({
        "transactionId": t.id,
        "contactId": t.contact_id,
        "mailingListId": t.mailing_list_id,
        "transactionDate": sql(t.date_ms),
        "data": t.data,
    })
}

fn batch_json(b: &Batch) -> Value {
    json!({"batchId": b.id, "creationDate": iso(b.creation_ms)})
}

fn sample_json(s: &Sample) -> Value {
    json!({
        "sampleId": s.id,
        "name": s.name,
        "description": s.description,
        "category": s.category,
        "creatorId": s.creator_id,
        "ownerId": s.owner_id,
        "parentGroupId": s.parent_group_id,
        "frozen": s.frozen,
        "hidden": s.hidden,
        "creationLogic": s.creation_logic,
        "creationDate": s.creation_ms,
        "lastModifiedDate": s.modified_ms,
    })
}

fn rule_json(r: &FrequencyRule) -> Value {
    json!({
        "ruleId": r.id,
        "name": r.name,
        "alwaysSend": r.always_send,
        "daysBetween": r.days_between,
        "emailType": r.email_type,
        "numMessages": r.num_messages,
        "period": r.period,
        "targetType": r.target_type,
        "targets": r.targets.iter().map(|t| json!({"targetId": t})).collect::<Vec<_>>(),
    })
}

// ---------------------------------------------------------------------------------------------
// Request parsing
// ---------------------------------------------------------------------------------------------

type Q = Query<BTreeMap<String, String>>;

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn field_error(field: &str, msg: impl std::fmt::Display) -> ApiError {
    ApiError::bad_request(format!("Invalid value for field '{field}': {msg}."))
}

/// The request body as a JSON object (400 naming the problem otherwise).
fn parse_object(body: &Bytes) -> Result<Map<String, Value>, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request(
            "The request body is empty; a JSON object is required.",
        ));
    }
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("The request body is not valid JSON: {e}.")))?;
    match v {
        Value::Object(o) => Ok(o),
        other => Err(ApiError::bad_request(format!(
            "The request body must be a JSON object, not {}.",
            type_name(&other)
        ))),
    }
}

fn reject_unknown(
    obj: &Map<String, Value>,
    allowed: &[&str],
    prefix: &str,
) -> Result<(), ApiError> {
    match obj.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(k) => Err(ApiError::bad_request(format!(
            "Unknown field '{prefix}{k}'. Allowed fields: {}.",
            allowed.join(", ")
        ))),
        None => Ok(()),
    }
}

fn get_str(obj: &Map<String, Value>, field: &str) -> Result<Option<String>, ApiError> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(v) => Err(field_error(
            field,
            format!("expected a string, got {}", type_name(v)),
        )),
    }
}

fn get_bool(obj: &Map<String, Value>, field: &str) -> Result<Option<bool>, ApiError> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(v) => Err(field_error(
            field,
            format!("expected a boolean, got {}", type_name(v)),
        )),
    }
}

/// A string-valued map (embedded data, transaction data). Numbers and booleans are stored as
/// their text, as Qualtrics stores every embedded value as text.
fn string_map(v: &Value, field: &str) -> Result<Map<String, Value>, ApiError> {
    let Value::Object(o) = v else {
        return Err(field_error(
            field,
            format!("expected an object, got {}", type_name(v)),
        ));
    };
    let mut out = Map::new();
    for (k, val) in o {
        let s = match val {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            Value::Null => String::new(),
            other => {
                return Err(field_error(
                    &format!("{field}.{k}"),
                    format!("expected a string, got {}", type_name(other)),
                ));
            }
        };
        out.insert(k.clone(), Value::String(s));
    }
    Ok(out)
}

fn string_list(obj: &Map<String, Value>, field: &str) -> Result<Option<Vec<String>>, ApiError> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(a)) => a
            .iter()
            .enumerate()
            .map(|(i, v)| match v {
                Value::String(s) => Ok(s.clone()),
                other => Err(field_error(
                    &format!("{field}[{i}]"),
                    format!("expected a string, got {}", type_name(other)),
                )),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some),
        Some(v) => Err(field_error(
            field,
            format!("expected an array of strings, got {}", type_name(v)),
        )),
    }
}

fn bool_param(q: &BTreeMap<String, String>, key: &str) -> Result<bool, ApiError> {
    match q.get(key).map(String::as_str) {
        None | Some("false") => Ok(false),
        Some("true") => Ok(true),
        Some(other) => Err(ApiError::bad_request(format!(
            "Invalid value for parameter '{key}': '{other}' (expected true or false)."
        ))),
    }
}

const CONTACT_FIELDS: &[&str] = &[
    "firstName",
    "lastName",
    "email",
    "phone",
    "extRef",
    "embeddedData",
    "language",
    "unsubscribed",
    "writeBlanks",
];

#[derive(Default, Debug)]
struct ContactInput {
    first_name: Option<String>,
    last_name: Option<String>,
    email: Option<String>,
    phone: Option<String>,
    ext_ref: Option<String>,
    language: Option<String>,
    embedded: Option<Map<String, Value>>,
    unsubscribed: Option<bool>,
    write_blanks: Option<bool>,
}

fn parse_contact(obj: &Map<String, Value>) -> Result<ContactInput, ApiError> {
    reject_unknown(obj, CONTACT_FIELDS, "")?;
    let email = get_str(obj, "email")?;
    if let Some(e) = &email {
        let e = e.trim();
        let valid = e.is_empty()
            || match e.split_once('@') {
                Some((local, domain)) => {
                    !local.is_empty()
                        && !domain.contains('@')
                        && domain.contains('.')
                        && !domain.starts_with('.')
                        && !domain.ends_with('.')
                        && !e.contains(char::is_whitespace)
                }
                None => false,
            };
        if !valid {
            return Err(field_error(
                "email",
                format!("'{e}' is not an e-mail address"),
            ));
        }
    }
    let embedded = match obj.get("embeddedData") {
        None | Some(Value::Null) => None,
        Some(v) => Some(string_map(v, "embeddedData")?),
    };
    Ok(ContactInput {
        first_name: get_str(obj, "firstName")?,
        last_name: get_str(obj, "lastName")?,
        email: email.map(|e| e.trim().to_string()),
        phone: get_str(obj, "phone")?,
        ext_ref: get_str(obj, "extRef")?,
        language: get_str(obj, "language")?,
        embedded,
        unsubscribed: get_bool(obj, "unsubscribed")?,
        write_blanks: get_bool(obj, "writeBlanks")?,
    })
}

/// Applies a partial update. Empty strings only blank a field when `writeBlanks` is on (from the
/// body, else the contact's own flag); embedded data keys merge into the existing ones.
fn apply_contact(c: &mut Contact, input: &ContactInput, now: i64) {
    let blanks = input.write_blanks.unwrap_or(c.write_blanks);
    let set = |dst: &mut String, v: &Option<String>| {
        if let Some(v) = v
            && (!v.is_empty() || blanks)
        {
            *dst = v.clone();
        }
    };
    set(&mut c.first_name, &input.first_name);
    set(&mut c.last_name, &input.last_name);
    set(&mut c.email, &input.email);
    set(&mut c.phone, &input.phone);
    set(&mut c.ext_ref, &input.ext_ref);
    set(&mut c.language, &input.language);
    if let Some(e) = &input.embedded {
        for (k, v) in e {
            if v.as_str().is_some_and(|s| !s.is_empty()) || blanks {
                c.embedded.insert(k.clone(), v.clone());
            }
        }
    }
    if let Some(u) = input.unsubscribed
        && u != c.unsubscribed
    {
        c.unsubscribed = u;
        c.unsubscribe_ms = u.then_some(now);
    }
    if let Some(w) = input.write_blanks {
        c.write_blanks = w;
    }
    c.modified_ms = now;
}

/// Creates a directory contact, or updates and returns the duplicate the directory's
/// deduplication criteria find. Returns the contact id.
fn upsert_contact(
    data: &mut DirData,
    seed: u64,
    dir_id: &str,
    input: &ContactInput,
    now: i64,
) -> Result<String, ApiError> {
    let dup = data.dir(dir_id)?.find_duplicate(input);
    if let Some(id) = dup {
        let d = data.dir_mut(dir_id)?;
        let c = d.contact_mut(&id)?;
        apply_contact(c, input, now);
        return Ok(id);
    }
    let id = data.new_id(seed, "CID_");
    let mut c = Contact {
        id: id.clone(),
        first_name: String::new(),
        last_name: String::new(),
        email: String::new(),
        phone: String::new(),
        ext_ref: String::new(),
        language: "EN".into(),
        embedded: Map::new(),
        unsubscribed: false,
        unsubscribe_ms: None,
        write_blanks: false,
        creation_ms: now,
        modified_ms: now,
    };
    apply_contact(&mut c, input, now);
    data.dir_mut(dir_id)?.contacts.insert(id.clone(), c);
    Ok(id)
}

// ---------------------------------------------------------------------------------------------
// Paging helpers
// ---------------------------------------------------------------------------------------------

fn page_size(q: &BTreeMap<String, String>) -> Result<usize, ApiError> {
    let n = match q.get("pageSize") {
        None => MAX_PAGE,
        Some(v) => v.parse::<usize>().map_err(|_| {
            ApiError::bad_request(format!(
                "Invalid value for parameter 'pageSize': '{v}' is not a non-negative integer."
            ))
        })?,
    };
    if n == 0 || n > MAX_PAGE {
        return Err(ApiError::bad_request(format!(
            "Invalid value for parameter 'pageSize': must be between 1 and {MAX_PAGE}."
        )));
    }
    Ok(n)
}

/// One page of a list keyed by contact id. With `useNewPaginationScheme=true` the skipToken is an
/// opaque cursor (base64 of the last contact id served), stable under inserts and deletes;
/// otherwise it is the base64 offset every XM Directory list uses.
fn contact_keyed_page<'a, T: 'a>(
    map: &'a BTreeMap<String, T>,
    mut project: impl FnMut(&'a T) -> Option<Value>,
    path: &str,
    q: &BTreeMap<String, String>,
) -> Result<Value, ApiError> {
    if !bool_param(q, "useNewPaginationScheme")? {
        let total = map.len();
        return paging::skip_token_page(
            total,
            |from, to| {
                map.values()
                    .skip(from)
                    .take(to - from)
                    .filter_map(&mut project)
                    .collect()
            },
            path,
            q,
            MAX_PAGE,
            MAX_PAGE,
        );
    }
    let size = page_size(q)?;
    let after = match q.get("skipToken") {
        Some(t) if !t.is_empty() => Some(
            STANDARD
                .decode(t)
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .filter(|s| s.starts_with("CID_"))
                .ok_or_else(|| ApiError::bad_request(format!("Invalid skipToken: '{t}'.")))?,
        ),
        _ => None,
    };
    let lower = match &after {
        Some(a) => Bound::Excluded(a.clone()),
        None => Bound::Unbounded,
    };
    let mut iter = map.range((lower, Bound::Unbounded));
    let mut elements = Vec::with_capacity(size);
    let mut last = None;
    for (k, v) in iter.by_ref().take(size) {
        if let Some(e) = project(v) {
            elements.push(e);
        }
        last = Some(k.clone());
    }
    let next = match (iter.next(), last) {
        (Some(_), Some(last)) => Value::String(paging::next_url(
            path,
            q,
            "skipToken",
            &STANDARD.encode(last),
        )),
        _ => Value::Null,
    };
    Ok(json!({"elements": elements, "nextPage": next}))
}

fn vec_page(
    items: Vec<Value>,
    path: &str,
    q: &BTreeMap<String, String>,
) -> Result<Value, ApiError> {
    let total = items.len();
    paging::skip_token_page(
        total,
        |from, to| items.into_iter().skip(from).take(to - from).collect(),
        path,
        q,
        MAX_PAGE,
        MAX_PAGE,
    )
}

// ---------------------------------------------------------------------------------------------
// Search filters
// ---------------------------------------------------------------------------------------------

#[derive(Debug)]
enum Filter {
    All(Vec<Filter>),
    Any(Vec<Filter>),
    Leaf {
        field: FilterField,
        cmp: Cmp,
        value: Value,
    },
}

#[derive(Debug)]
enum FilterField {
    ContactId,
    Email,
    FirstName,
    LastName,
    Phone,
    ExtRef,
    Language,
    Unsubscribed,
    Embedded(String),
    CreationDate,
    LastModified,
    MailingList,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Cmp {
    Eq,
    Ne,
    Contains,
    BeginsWith,
    Gt,
    Ge,
    Lt,
    Le,
}

const FILTER_TYPES: &str = "contactId, email, firstName, lastName, phone, extRef, language, unsubscribed, embeddedData, creationDate, lastModified, mailingListId";
const COMPARISONS: &str = "eq, ne, contains, beginsWith, gt, gte, lt, lte";

fn parse_filter(v: &Value, at: &str, depth: usize) -> Result<Filter, ApiError> {
    if depth > MAX_FILTER_DEPTH {
        return Err(field_error(
            at,
            format!("filters nest deeper than {MAX_FILTER_DEPTH} levels"),
        ));
    }
    let Value::Object(o) = v else {
        return Err(field_error(
            at,
            format!("expected an object, got {}", type_name(v)),
        ));
    };
    if o.contains_key("conjunction") || o.contains_key("filters") {
        reject_unknown(o, &["conjunction", "filters"], &format!("{at}."))?;
        let conj = get_str(o, "conjunction")
            .map_err(|_| field_error(&format!("{at}.conjunction"), "expected 'and' or 'or'"))?
            .unwrap_or_else(|| "and".into());
        let Some(Value::Array(items)) = o.get("filters") else {
            return Err(field_error(
                &format!("{at}.filters"),
                "expected an array of filters",
            ));
        };
        let parsed = items
            .iter()
            .enumerate()
            .map(|(i, f)| parse_filter(f, &format!("{at}.filters[{i}]"), depth + 1))
            .collect::<Result<Vec<_>, _>>()?;
        return match conj.to_ascii_lowercase().as_str() {
            "and" => Ok(Filter::All(parsed)),
            "or" => Ok(Filter::Any(parsed)),
            other => Err(field_error(
                &format!("{at}.conjunction"),
                format!("'{other}' (expected 'and' or 'or')"),
            )),
        };
    }
    reject_unknown(
        o,
        &["filterType", "comparison", "value", "key"],
        &format!("{at}."),
    )?;
    let ft = get_str(o, "filterType")
        .map_err(|_| field_error(&format!("{at}.filterType"), "expected a string"))?
        .ok_or_else(|| field_error(&format!("{at}.filterType"), "missing"))?;
    let field = match ft.as_str() {
        "contactId" => FilterField::ContactId,
        "email" => FilterField::Email,
        "firstName" => FilterField::FirstName,
        "lastName" => FilterField::LastName,
        "phone" => FilterField::Phone,
        "extRef" => FilterField::ExtRef,
        "language" => FilterField::Language,
        "unsubscribed" => FilterField::Unsubscribed,
        "creationDate" => FilterField::CreationDate,
        "lastModified" => FilterField::LastModified,
        "mailingListId" => FilterField::MailingList,
        "embeddedData" => {
            let key = get_str(o, "key")
                .map_err(|_| field_error(&format!("{at}.key"), "expected a string"))?
                .filter(|k| !k.is_empty())
                .ok_or_else(|| {
                    field_error(
                        &format!("{at}.key"),
                        "an embeddedData filter needs the embedded data field name in 'key'",
                    )
                })?;
            FilterField::Embedded(key)
        }
        other => {
            return Err(field_error(
                &format!("{at}.filterType"),
                format!("unknown filter type '{other}' (expected one of {FILTER_TYPES})"),
            ));
        }
    };
    let cmp_text = get_str(o, "comparison")
        .map_err(|_| field_error(&format!("{at}.comparison"), "expected a string"))?
        .unwrap_or_else(|| "eq".into());
    let cmp = match cmp_text.as_str() {
        "eq" => Cmp::Eq,
        "ne" => Cmp::Ne,
        "contains" => Cmp::Contains,
        "beginsWith" => Cmp::BeginsWith,
        "gt" => Cmp::Gt,
        "gte" => Cmp::Ge,
        "lt" => Cmp::Lt,
        "lte" => Cmp::Le,
        other => {
            return Err(field_error(
                &format!("{at}.comparison"),
                format!("unknown comparison '{other}' (expected one of {COMPARISONS})"),
            ));
        }
    };
    let value = o.get("value").cloned().unwrap_or(Value::Null);
    let vat = format!("{at}.value");
    let value = match field {
        FilterField::Unsubscribed => {
            if !matches!(cmp, Cmp::Eq | Cmp::Ne) {
                return Err(field_error(
                    &format!("{at}.comparison"),
                    "unsubscribed filters support only eq and ne",
                ));
            }
            match value {
                Value::Bool(_) => value,
                Value::String(s) if s == "true" || s == "false" => Value::Bool(s == "true"),
                other => {
                    return Err(field_error(
                        &vat,
                        format!("expected a boolean, got {}", type_name(&other)),
                    ));
                }
            }
        }
        FilterField::CreationDate | FilterField::LastModified => {
            let ms = match &value {
                Value::Number(n) => n.as_i64(),
                Value::String(s) => parse_iso(s).or_else(|| s.parse::<i64>().ok()),
                _ => None,
            };
            match ms {
                Some(ms) if !matches!(cmp, Cmp::Contains | Cmp::BeginsWith) => json!(ms),
                Some(_) => {
                    return Err(field_error(
                        &format!("{at}.comparison"),
                        "date filters support eq, ne, gt, gte, lt and lte",
                    ));
                }
                None => {
                    return Err(field_error(
                        &vat,
                        "expected epoch milliseconds or an ISO-8601 date-time",
                    ));
                }
            }
        }
        _ => match value {
            Value::String(_) => value,
            Value::Number(n) => Value::String(n.to_string()),
            other => {
                return Err(field_error(
                    &vat,
                    format!("expected a string, got {}", type_name(&other)),
                ));
            }
        },
    };
    Ok(Filter::Leaf { field, cmp, value })
}

fn cmp_text(have: &str, cmp: Cmp, want: &str) -> bool {
    // Case-insensitive, like the search box of the Qualtrics UI.
    let h = have.to_lowercase();
    let w = want.to_lowercase();
    match cmp {
        Cmp::Eq => h == w,
        Cmp::Ne => h != w,
        Cmp::Contains => h.contains(&w),
        Cmp::BeginsWith => h.starts_with(&w),
        Cmp::Gt => h > w,
        Cmp::Ge => h >= w,
        Cmp::Lt => h < w,
        Cmp::Le => h <= w,
    }
}

fn cmp_num(have: i64, cmp: Cmp, want: i64) -> bool {
    match cmp {
        Cmp::Eq => have == want,
        Cmp::Ne => have != want,
        Cmp::Gt => have > want,
        Cmp::Ge => have >= want,
        Cmp::Lt => have < want,
        Cmp::Le => have <= want,
        Cmp::Contains | Cmp::BeginsWith => false,
    }
}

fn matches(f: &Filter, d: &Directory, c: &Contact) -> bool {
    match f {
        Filter::All(fs) => fs.iter().all(|f| matches(f, d, c)),
        Filter::Any(fs) => fs.iter().any(|f| matches(f, d, c)),
        Filter::Leaf { field, cmp, value } => {
            let text = value.as_str().unwrap_or("");
            match field {
                FilterField::ContactId => cmp_text(&c.id, *cmp, text),
                FilterField::Email => cmp_text(&c.email, *cmp, text),
                FilterField::FirstName => cmp_text(&c.first_name, *cmp, text),
                FilterField::LastName => cmp_text(&c.last_name, *cmp, text),
                FilterField::Phone => cmp_text(&c.phone, *cmp, text),
                FilterField::ExtRef => cmp_text(&c.ext_ref, *cmp, text),
                FilterField::Language => cmp_text(&c.language, *cmp, text),
                FilterField::Unsubscribed => {
                    let want = value.as_bool().unwrap_or(false);
                    (c.unsubscribed == want) == (*cmp == Cmp::Eq)
                }
                FilterField::Embedded(k) => {
                    let have = c.embedded.get(k).and_then(Value::as_str);
                    match have {
                        Some(h) => cmp_text(h, *cmp, text),
                        None => *cmp == Cmp::Ne,
                    }
                }
                FilterField::CreationDate => {
                    cmp_num(c.creation_ms, *cmp, value.as_i64().unwrap_or(0))
                }
                FilterField::LastModified => {
                    cmp_num(c.modified_ms, *cmp, value.as_i64().unwrap_or(0))
                }
                FilterField::MailingList => {
                    let member = d
                        .lists
                        .iter()
                        .any(|l| l.id.eq_ignore_ascii_case(text) && l.members.contains_key(&c.id));
                    match cmp {
                        Cmp::Eq => member,
                        Cmp::Ne => !member,
                        _ => false,
                    }
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Handlers
// ---------------------------------------------------------------------------------------------

pub(crate) fn routes() -> Router<SharedSim> {
    Router::new()
        .route("/directories", get(list_directories))
        .route(
            "/directories/{d}/contacts",
            get(list_contacts).post(create_contact),
        )
        .route(
            "/directories/{d}/contacts/search",
            axum::routing::post(search_contacts),
        )
        .route(
            "/directories/{d}/contacts/{c}",
            get(get_contact).put(update_contact).delete(delete_contact),
        )
        .route(
            "/directories/{d}/contacts/{c}/history",
            get(contact_history),
        )
        .route(
            "/directories/{d}/contacts/{c}/transactions",
            get(contact_transactions),
        )
        .route(
            "/directories/{d}/mailinglists",
            get(list_lists).post(create_list),
        )
        .route(
            "/directories/{d}/mailinglists/{ml}",
            get(get_list).put(update_list).delete(delete_list),
        )
        .route(
            "/directories/{d}/mailinglists/{ml}/contacts",
            get(list_members).post(add_member),
        )
        .route(
            "/directories/{d}/mailinglists/{ml}/contacts/{c}",
            get(get_member).put(update_member).delete(delete_member),
        )
        .route(
            "/directories/{d}/transactions",
            axum::routing::post(create_transactions),
        )
        .route("/directories/{d}/transactions/{t}", get(get_transaction))
        .route(
            "/directories/{d}/transactionbatches",
            get(list_batches).post(create_batch),
        )
        .route("/directories/{d}/transactionbatches/{b}", get(get_batch))
        .route(
            "/directories/{d}/transactionbatches/{b}/transactions",
            get(list_batch_transactions).post(add_batch_transactions),
        )
        .route("/directories/{d}/samples", get(list_samples))
        .route("/directories/{d}/samples/{s}", get(get_sample))
        .route("/directories/{d}/frequencyrules", get(list_rules))
        .route("/directories/{d}/frequencyrules/{r}", get(get_rule))
}

type S = State<SharedSim>;
type C = Extension<Caller>;

async fn list_directories(State(sim): S, Extension(caller): C, Query(q): Q) -> ApiResult {
    caller.require_scope("read:directories")?;
    let items: Vec<Value> = sim
        .directory
        .data
        .read()
        .dirs
        .iter()
        .map(directory_json)
        .collect();
    Ok(envelope::ok(vec_page(items, "/API/v3/directories", &q)?))
}

async fn list_contacts(
    State(sim): S,
    Extension(caller): C,
    Path(d): Path<String>,
    Query(q): Q,
) -> ApiResult {
    caller.require_scope("read:directory_contacts")?;
    let data = sim.directory.data.read();
    let dir = data.dir(&d)?;
    let path = format!("/API/v3/directories/{d}/contacts");
    let page = contact_keyed_page(&dir.contacts, |c| Some(contact_brief(c)), &path, &q)?;
    Ok(envelope::ok(page))
}

async fn create_contact(
    State(sim): S,
    Extension(caller): C,
    Path(d): Path<String>,
    body: Bytes,
) -> ApiResult {
    caller.require_scope("write:directory_contacts")?;
    let input = parse_contact(&parse_object(&body)?)?;
    let now = sim.clock.now_ms();
    let seed = sim.directory.seed;
    let mut data = sim.directory.data.write();
    let id = upsert_contact(&mut data, seed, &d, &input, now)?;
    Ok(envelope::ok(json!({"id": id})))
}

async fn get_contact(
    State(sim): S,
    Extension(caller): C,
    Path((d, c)): Path<(String, String)>,
) -> ApiResult {
    caller.require_scope("read:directory_contacts")?;
    let data = sim.directory.data.read();
    let dir = data.dir(&d)?;
    Ok(envelope::ok(contact_full(dir, dir.contact(&c)?)))
}

async fn update_contact(
    State(sim): S,
    Extension(caller): C,
    Path((d, c)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult {
    caller.require_scope("write:directory_contacts")?;
    let input = parse_contact(&parse_object(&body)?)?;
    let now = sim.clock.now_ms();
    let mut data = sim.directory.data.write();
    let contact = data.dir_mut(&d)?.contact_mut(&c)?;
    apply_contact(contact, &input, now);
    Ok(envelope::ok_empty())
}

async fn delete_contact(
    State(sim): S,
    Extension(caller): C,
    Path((d, c)): Path<(String, String)>,
) -> ApiResult {
    caller.require_scope("write:directory_contacts")?;
    let mut data = sim.directory.data.write();
    let dir = data.dir_mut(&d)?;
    dir.contact(&c)?;
    dir.remove_contact(&c);
    Ok(envelope::ok_empty())
}

async fn search_contacts(
    State(sim): S,
    Extension(caller): C,
    Path(d): Path<String>,
    Query(q): Q,
    body: Bytes,
) -> ApiResult {
    caller.require_scope("read:directory_contacts")?;
    let include_embedded = bool_param(&q, "includeEmbedded")?;
    // An empty body searches everything (the UI's "all contacts").
    let filter = if body.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        let obj = parse_object(&body)?;
        reject_unknown(&obj, &["filter"], "")?;
        match obj.get("filter") {
            None | Some(Value::Null) => None,
            Some(f) => Some(parse_filter(f, "filter", 0)?),
        }
    };
    let offset = match q.get("skipToken") {
        Some(t) if !t.is_empty() => paging::decode_skip_token(t)?,
        _ => 0,
    };
    let limit = sim
        .directory
        .search_limit
        .load(std::sync::atomic::Ordering::Relaxed);
    if offset >= limit {
        return Err(ApiError::bad_request(format!(
            "Contact search returns at most {limit} contacts; page {offset} onwards is not available. Use a contact export for larger result sets."
        )));
    }
    let data = sim.directory.data.read();
    let dir = data.dir(&d)?;
    let hits: Vec<&Contact> = dir
        .contacts
        .values()
        .filter(|c| filter.as_ref().is_none_or(|f| matches(f, dir, c)))
        .collect();
    let path = format!("/API/v3/directories/{d}/contacts/search");
    let page = paging::skip_token_page(
        hits.len(),
        |from, to| {
            hits[from..to]
                .iter()
                .map(|c| contact_search_hit(dir, c, include_embedded))
                .collect()
        },
        &path,
        &q,
        MAX_PAGE,
        MAX_PAGE,
    )?;
    Ok(envelope::ok(page))
}

async fn contact_history(
    State(sim): S,
    Extension(caller): C,
    Path((d, c)): Path<(String, String)>,
    Query(q): Q,
) -> ApiResult {
    caller.require_scope("read:directory_contacts")?;
    let data = sim.directory.data.read();
    let dir = data.dir(&d)?;
    dir.contact(&c)?;
    let items: Vec<Value> = match q.get("type").map(String::as_str) {
        Some("email") => dir
            .email_history
            .get(&c)
            .map(|h| h.iter().map(|e| email_history_json(&c, e)).collect())
            .unwrap_or_default(),
        Some("response") => dir
            .response_history
            .get(&c)
            .map(|h| h.iter().map(|e| response_history_json(&c, e)).collect())
            .unwrap_or_default(),
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "Invalid value for parameter 'type': '{other}' (expected email or response)."
            )));
        }
        None => {
            return Err(ApiError::bad_request(
                "Missing parameter 'type' (email or response).",
            ));
        }
    };
    let path = format!("/API/v3/directories/{d}/contacts/{c}/history");
    Ok(envelope::ok(vec_page(items, &path, &q)?))
}

async fn contact_transactions(
    State(sim): S,
    Extension(caller): C,
    Path((d, c)): Path<(String, String)>,
    Query(q): Q,
) -> ApiResult {
    caller.require_scope("read:contact_transactions")?;
    let data = sim.directory.data.read();
    let dir = data.dir(&d)?;
    dir.contact(&c)?;
    let items: Vec<Value> = dir
        .transactions
        .values()
        .filter(|t| t.contact_id == c)
        .map(transaction_json)
        .collect();
    let path = format!("/API/v3/directories/{d}/contacts/{c}/transactions");
    Ok(envelope::ok(vec_page(items, &path, &q)?))
}

async fn list_lists(
    State(sim): S,
    Extension(caller): C,
    Path(d): Path<String>,
    Query(q): Q,
) -> ApiResult {
    caller.require_scope("read:mailing_lists")?;
    let include_count = bool_param(&q, "includeCount")?;
    let data = sim.directory.data.read();
    let items: Vec<Value> = data
        .dir(&d)?
        .lists
        .iter()
        .map(|l| list_json(l, include_count))
        .collect();
    let path = format!("/API/v3/directories/{d}/mailinglists");
    Ok(envelope::ok(vec_page(items, &path, &q)?))
}

const LIST_FIELDS: &[&str] = &["name", "ownerId", "prioritizeListMetadata"];

async fn create_list(
    State(sim): S,
    Extension(caller): C,
    Path(d): Path<String>,
    body: Bytes,
) -> ApiResult {
    caller.require_scope("write:mailing_lists")?;
    let obj = parse_object(&body)?;
    reject_unknown(&obj, LIST_FIELDS, "")?;
    let name = get_str(&obj, "name")?
        .filter(|n| !n.trim().is_empty())
        .ok_or_else(|| field_error("name", "a non-empty name is required"))?;
    let owner = get_str(&obj, "ownerId")?.unwrap_or_else(|| caller.user.id.clone());
    let prioritize = get_bool(&obj, "prioritizeListMetadata")?.unwrap_or(false);
    let now = sim.clock.now_ms();
    let seed = sim.directory.seed;
    let mut data = sim.directory.data.write();
    data.dir(&d)?;
    let id = data.new_id(seed, "CG_");
    data.dir_mut(&d)?.lists.push(MailingList {
        id: id.clone(),
        name,
        owner_id: owner,
        prioritize_list_metadata: prioritize,
        creation_ms: now,
        modified_ms: now,
        members: BTreeMap::new(),
    });
    Ok(envelope::ok(json!({"id": id})))
}

async fn get_list(
    State(sim): S,
    Extension(caller): C,
    Path((d, ml)): Path<(String, String)>,
) -> ApiResult {
    caller.require_scope("read:mailing_lists")?;
    let data = sim.directory.data.read();
    Ok(envelope::ok(list_json(data.dir(&d)?.list(&ml)?, true)))
}

async fn update_list(
    State(sim): S,
    Extension(caller): C,
    Path((d, ml)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult {
    caller.require_scope("write:mailing_lists")?;
    let obj = parse_object(&body)?;
    reject_unknown(&obj, LIST_FIELDS, "")?;
    let name = get_str(&obj, "name")?;
    if name.as_ref().is_some_and(|n| n.trim().is_empty()) {
        return Err(field_error("name", "must not be empty"));
    }
    let owner = get_str(&obj, "ownerId")?;
    let prioritize = get_bool(&obj, "prioritizeListMetadata")?;
    let now = sim.clock.now_ms();
    let mut data = sim.directory.data.write();
    let l = data.dir_mut(&d)?.list_mut(&ml)?;
    if let Some(n) = name {
        l.name = n;
    }
    if let Some(o) = owner {
        l.owner_id = o;
    }
    if let Some(p) = prioritize {
        l.prioritize_list_metadata = p;
    }
    l.modified_ms = now;
    Ok(envelope::ok_empty())
}

async fn delete_list(
    State(sim): S,
    Extension(caller): C,
    Path((d, ml)): Path<(String, String)>,
) -> ApiResult {
    caller.require_scope("write:mailing_lists")?;
    let mut data = sim.directory.data.write();
    let dir = data.dir_mut(&d)?;
    dir.list(&ml)?;
    dir.lists.retain(|l| l.id != ml);
    Ok(envelope::ok_empty())
}

async fn list_members(
    State(sim): S,
    Extension(caller): C,
    Path((d, ml)): Path<(String, String)>,
    Query(q): Q,
) -> ApiResult {
    caller.require_scope("read:mailing_list_contacts")?;
    let include_embedded = bool_param(&q, "includeEmbedded")?;
    let data = sim.directory.data.read();
    let dir = data.dir(&d)?;
    let list = dir.list(&ml)?;
    let path = format!("/API/v3/directories/{d}/mailinglists/{ml}/contacts");
    // Members are keyed by contact id, so both pagination schemes work as for directory contacts.
    let mut keyed: BTreeMap<String, (&Contact, &Membership)> = BTreeMap::new();
    for (cid, m) in &list.members {
        if let Some(c) = dir.contacts.get(cid) {
            keyed.insert(cid.clone(), (c, m));
        }
    }
    let page = contact_keyed_page(
        &keyed,
        |(c, m)| Some(list_member_json(dir, c, m, include_embedded)),
        &path,
        &q,
    )?;
    Ok(envelope::ok(page))
}

async fn add_member(
    State(sim): S,
    Extension(caller): C,
    Path((d, ml)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult {
    caller.require_scope("write:mailing_list_contacts")?;
    let input = parse_contact(&parse_object(&body)?)?;
    let now = sim.clock.now_ms();
    let seed = sim.directory.seed;
    let mut data = sim.directory.data.write();
    data.dir(&d)?.list(&ml)?;
    // `unsubscribed` in this body is the list-level opt-out, not the directory-wide one.
    let list_unsub = input.unsubscribed;
    let dir_input = ContactInput {
        unsubscribed: None,
        ..input
    };
    let cid = upsert_contact(&mut data, seed, &d, &dir_input, now)?;
    let existing = data
        .dir(&d)?
        .list(&ml)?
        .members
        .get(&cid)
        .map(|m| m.lookup_id.clone());
    let lookup = match existing {
        Some(l) => l,
        None => data.new_id(seed, "CGC_"),
    };
    let list = data.dir_mut(&d)?.list_mut(&ml)?;
    let m = list.members.entry(cid.clone()).or_insert(Membership {
        lookup_id: lookup.clone(),
        unsubscribed: false,
        unsubscribe_ms: None,
    });
    if let Some(u) = list_unsub
        && u != m.unsubscribed
    {
        m.unsubscribed = u;
        m.unsubscribe_ms = u.then_some(now);
    }
    list.modified_ms = now;
    Ok(envelope::ok(json!({"id": cid, "contactLookupId": lookup})))
}

async fn get_member(
    State(sim): S,
    Extension(caller): C,
    Path((d, ml, c)): Path<(String, String, String)>,
    Query(q): Q,
) -> ApiResult {
    caller.require_scope("read:mailing_list_contacts")?;
    let include_embedded = !matches!(q.get("includeEmbedded").map(String::as_str), Some("false"));
    let data = sim.directory.data.read();
    let dir = data.dir(&d)?;
    let list = dir.list(&ml)?;
    let m = list.members.get(&c).ok_or_else(|| {
        ApiError::not_found(format!(
            "Contact '{c}' is not a member of mailing list '{ml}'."
        ))
    })?;
    let contact = dir.contact(&c)?;
    Ok(envelope::ok(list_member_json(
        dir,
        contact,
        m,
        include_embedded,
    )))
}

async fn update_member(
    State(sim): S,
    Extension(caller): C,
    Path((d, ml, c)): Path<(String, String, String)>,
    body: Bytes,
) -> ApiResult {
    caller.require_scope("write:mailing_list_contacts")?;
    let input = parse_contact(&parse_object(&body)?)?;
    let now = sim.clock.now_ms();
    let mut data = sim.directory.data.write();
    let dir = data.dir_mut(&d)?;
    let list = dir.list_mut(&ml)?;
    let m = list.members.get_mut(&c).ok_or_else(|| {
        ApiError::not_found(format!(
            "Contact '{c}' is not a member of mailing list '{ml}'."
        ))
    })?;
    if let Some(u) = input.unsubscribed
        && u != m.unsubscribed
    {
        m.unsubscribed = u;
        m.unsubscribe_ms = u.then_some(now);
    }
    list.modified_ms = now;
    let dir_input = ContactInput {
        unsubscribed: None,
        ..input
    };
    let contact = dir.contact_mut(&c)?;
    apply_contact(contact, &dir_input, now);
    Ok(envelope::ok_empty())
}

async fn delete_member(
    State(sim): S,
    Extension(caller): C,
    Path((d, ml, c)): Path<(String, String, String)>,
) -> ApiResult {
    caller.require_scope("write:mailing_list_contacts")?;
    let now = sim.clock.now_ms();
    let mut data = sim.directory.data.write();
    let list = data.dir_mut(&d)?.list_mut(&ml)?;
    if list.members.remove(&c).is_none() {
        return Err(ApiError::not_found(format!(
            "Contact '{c}' is not a member of mailing list '{ml}'."
        )));
    }
    list.modified_ms = now;
    Ok(envelope::ok_empty())
}

const TRANSACTION_FIELDS: &[&str] = &["contactId", "mailingListId", "transactionDate", "data"];

/// Validates one transaction of a `POST /transactions` map; `Err((code, message))` goes to
/// `unprocessedTransactions`.
fn check_transaction(
    dir: &Directory,
    key: &str,
    v: &Value,
    now: i64,
) -> Result<Transaction, (&'static str, String)> {
    let Value::Object(o) = v else {
        return Err((
            "INVALID_TRANSACTION",
            format!(
                "Transaction '{key}' must be a JSON object, not {}.",
                type_name(v)
            ),
        ));
    };
    if let Some(k) = o.keys().find(|k| !TRANSACTION_FIELDS.contains(&k.as_str())) {
        return Err((
            "INVALID_TRANSACTION",
            format!(
                "Transaction '{key}': unknown field '{k}'. Allowed fields: {}.",
                TRANSACTION_FIELDS.join(", ")
            ),
        ));
    }
    let contact_id = match o.get("contactId") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        None | Some(Value::Null) => {
            return Err((
                "MISSING_CONTACT_ID",
                format!("Transaction '{key}': field 'contactId' is required."),
            ));
        }
        Some(other) => {
            return Err((
                "INVALID_CONTACT_ID",
                format!(
                    "Transaction '{key}': field 'contactId' must be a string, not {}.",
                    type_name(other)
                ),
            ));
        }
    };
    if !dir.contacts.contains_key(&contact_id) {
        return Err((
            "CONTACT_NOT_FOUND",
            format!(
                "Transaction '{key}': contact '{contact_id}' was not found in directory '{}'.",
                dir.id
            ),
        ));
    }
    let list_id = match o.get("mailingListId") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => {
            if !dir.lists.iter().any(|l| l.id == *s) {
                return Err((
                    "MAILING_LIST_NOT_FOUND",
                    format!(
                        "Transaction '{key}': mailing list '{s}' was not found in directory '{}'.",
                        dir.id
                    ),
                ));
            }
            Some(s.clone())
        }
        Some(other) => {
            return Err((
                "INVALID_MAILING_LIST_ID",
                format!(
                    "Transaction '{key}': field 'mailingListId' must be a string, not {}.",
                    type_name(other)
                ),
            ));
        }
    };
    let date_ms = match o.get("transactionDate") {
        None | Some(Value::Null) => now / 1000 * 1000,
        Some(Value::String(s)) => parse_sql(s).ok_or_else(|| {
            (
                "INVALID_TRANSACTION_DATE",
                format!(
                    "Transaction '{key}': transactionDate '{s}' is not in the format YYYY-MM-DD HH:MM:SS."
                ),
            )
        })?,
        Some(other) => {
            return Err((
                "INVALID_TRANSACTION_DATE",
                format!(
                    "Transaction '{key}': field 'transactionDate' must be a string, not {}.",
                    type_name(other)
                ),
            ));
        }
    };
    let data = match o.get("data") {
        None | Some(Value::Null) => Map::new(),
        Some(v) => string_map(v, "data").map_err(|e| {
            (
                "INVALID_TRANSACTION_DATA",
                format!("Transaction '{key}': {}", e.message),
            )
        })?,
    };
    // The id is filled in by the caller once the transaction is accepted.
    Ok(Transaction {
        id: String::new(),
        contact_id,
        mailing_list_id: list_id,
        date_ms,
        data,
    })
}

async fn create_transactions(
    State(sim): S,
    Extension(caller): C,
    Path(d): Path<String>,
    body: Bytes,
) -> ApiResult {
    caller.require_scope("write:contact_transactions")?;
    let obj = parse_object(&body)?;
    if obj.is_empty() {
        return Err(ApiError::bad_request(
            "The body must map at least one client key to a transaction.",
        ));
    }
    if obj.len() > MAX_TRANSACTIONS_PER_CALL {
        return Err(ApiError::bad_request(format!(
            "Too many transactions in one call: {} (at most {MAX_TRANSACTIONS_PER_CALL}).",
            obj.len()
        )));
    }
    let now = sim.clock.now_ms();
    let seed = sim.directory.seed;
    let mut data = sim.directory.data.write();
    data.dir(&d)?;
    let mut created = Map::new();
    let mut unprocessed = Map::new();
    for (key, v) in &obj {
        match check_transaction(data.dir(&d)?, key, v, now) {
            Ok(mut tx) => {
                let id = data.new_id(seed, "CTR_");
                tx.id = id.clone();
                data.dir_mut(&d)?.transactions.insert(id.clone(), tx);
                created.insert(key.clone(), json!({"id": id}));
            }
            Err((code, message)) => {
                unprocessed.insert(key.clone(), json!({"error": code, "errorMessage": message}));
            }
        }
    }
    Ok(envelope::ok(json!({
        "createdTransactions": created,
        "unprocessedTransactions": unprocessed,
    })))
}

async fn get_transaction(
    State(sim): S,
    Extension(caller): C,
    Path((d, t)): Path<(String, String)>,
) -> ApiResult {
    caller.require_scope("read:contact_transactions")?;
    let data = sim.directory.data.read();
    Ok(envelope::ok(transaction_json(
        data.dir(&d)?.transaction(&t)?,
    )))
}

async fn list_batches(
    State(sim): S,
    Extension(caller): C,
    Path(d): Path<String>,
    Query(q): Q,
) -> ApiResult {
    caller.require_scope("read:contact_transactions")?;
    caller.require_manage_directories()?;
    let data = sim.directory.data.read();
    let items: Vec<Value> = data.dir(&d)?.batches.iter().map(batch_json).collect();
    let path = format!("/API/v3/directories/{d}/transactionbatches");
    Ok(envelope::ok(vec_page(items, &path, &q)?))
}

/// Checks that every id names a transaction of `dir` (400 naming the first unknown one).
fn check_transaction_ids(dir: &Directory, ids: &[String]) -> Result<(), ApiError> {
    for (i, t) in ids.iter().enumerate() {
        if !dir.transactions.contains_key(t) {
            return Err(field_error(
                &format!("transactionIds[{i}]"),
                format!("transaction '{t}' was not found in directory '{}'", dir.id),
            ));
        }
    }
    Ok(())
}

async fn create_batch(
    State(sim): S,
    Extension(caller): C,
    Path(d): Path<String>,
    body: Bytes,
) -> ApiResult {
    caller.require_scope("write:contact_transactions")?;
    caller.require_manage_directories()?;
    let obj = if body.iter().all(u8::is_ascii_whitespace) {
        Map::new()
    } else {
        parse_object(&body)?
    };
    reject_unknown(&obj, &["transactionIds", "creationDate"], "")?;
    let ids = string_list(&obj, "transactionIds")?.unwrap_or_default();
    let now = sim.clock.now_ms();
    let creation_ms = match get_str(&obj, "creationDate")? {
        None => now,
        Some(s) => parse_iso(&s).ok_or_else(|| {
            field_error(
                "creationDate",
                format!("'{s}' is not an ISO-8601 date-time such as 2025-01-05T14:30:00Z"),
            )
        })?,
    };
    let seed = sim.directory.seed;
    let mut data = sim.directory.data.write();
    check_transaction_ids(data.dir(&d)?, &ids)?;
    let id = data.new_id(seed, "BT_");
    let mut members: Vec<(String, i64)> = Vec::new();
    for t in ids {
        if !members.iter().any(|(m, _)| *m == t) {
            members.push((t, now));
        }
    }
    data.dir_mut(&d)?.batches.push(Batch {
        id: id.clone(),
        creation_ms,
        members,
    });
    Ok(envelope::ok(json!({"id": id})))
}

async fn get_batch(
    State(sim): S,
    Extension(caller): C,
    Path((d, b)): Path<(String, String)>,
) -> ApiResult {
    caller.require_scope("read:contact_transactions")?;
    caller.require_manage_directories()?;
    let data = sim.directory.data.read();
    Ok(envelope::ok(batch_json(data.dir(&d)?.batch(&b)?)))
}

async fn list_batch_transactions(
    State(sim): S,
    Extension(caller): C,
    Path((d, b)): Path<(String, String)>,
    Query(q): Q,
) -> ApiResult {
    caller.require_scope("read:contact_transactions")?;
    caller.require_manage_directories()?;
    let data = sim.directory.data.read();
    let dir = data.dir(&d)?;
    let batch = dir.batch(&b)?;
    let items: Vec<Value> = batch
        .members
        .iter()
        .filter_map(|(t, added)| {
            dir.transactions.get(t).map(|tx| {
                let mut v = transaction_json(tx);
                if let Some(o) = v.as_object_mut() {
                    o.insert("dateAddedToBatch".into(), Value::String(iso(*added)));
                }
                v
            })
        })
        .collect();
    let path = format!("/API/v3/directories/{d}/transactionbatches/{b}/transactions");
    Ok(envelope::ok(vec_page(items, &path, &q)?))
}

async fn add_batch_transactions(
    State(sim): S,
    Extension(caller): C,
    Path((d, b)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult {
    caller.require_scope("write:contact_transactions")?;
    caller.require_manage_directories()?;
    let obj = parse_object(&body)?;
    reject_unknown(&obj, &["transactionIds"], "")?;
    let ids = string_list(&obj, "transactionIds")?
        .filter(|v| !v.is_empty())
        .ok_or_else(|| field_error("transactionIds", "a non-empty array is required"))?;
    let now = sim.clock.now_ms();
    let mut data = sim.directory.data.write();
    let dir = data.dir_mut(&d)?;
    dir.batch(&b)?;
    check_transaction_ids(dir, &ids)?;
    if let Some(batch) = dir.batches.iter_mut().find(|x| x.id == b) {
        for t in ids {
            if !batch.members.iter().any(|(m, _)| *m == t) {
                batch.members.push((t, now));
            }
        }
    }
    Ok(envelope::ok_empty())
}

async fn list_samples(
    State(sim): S,
    Extension(caller): C,
    Path(d): Path<String>,
    Query(q): Q,
) -> ApiResult {
    caller.require_scope("read:samples")?;
    let data = sim.directory.data.read();
    let items: Vec<Value> = data.dir(&d)?.samples.iter().map(sample_json).collect();
    let path = format!("/API/v3/directories/{d}/samples");
    Ok(envelope::ok(vec_page(items, &path, &q)?))
}

async fn get_sample(
    State(sim): S,
    Extension(caller): C,
    Path((d, s)): Path<(String, String)>,
) -> ApiResult {
    caller.require_scope("read:samples")?;
    let data = sim.directory.data.read();
    let dir = data.dir(&d)?;
    let sample = dir.samples.iter().find(|x| x.id == s).ok_or_else(|| {
        ApiError::not_found(format!("Sample '{s}' was not found in directory '{d}'."))
    })?;
    Ok(envelope::ok(sample_json(sample)))
}

async fn list_rules(
    State(sim): S,
    Extension(caller): C,
    Path(d): Path<String>,
    Query(q): Q,
) -> ApiResult {
    caller.require_scope("read:directories")?;
    let data = sim.directory.data.read();
    let items: Vec<Value> = data.dir(&d)?.rules.iter().map(rule_json).collect();
    let path = format!("/API/v3/directories/{d}/frequencyrules");
    Ok(envelope::ok(vec_page(items, &path, &q)?))
}

async fn get_rule(
    State(sim): S,
    Extension(caller): C,
    Path((d, r)): Path<(String, String)>,
) -> ApiResult {
    caller.require_scope("read:directories")?;
    let data = sim.directory.data.read();
    let dir = data.dir(&d)?;
    let rule = dir.rules.iter().find(|x| x.id == r).ok_or_else(|| {
        ApiError::not_found(format!(
            "Frequency rule '{r}' was not found in directory '{d}'."
        ))
    })?;
    Ok(envelope::ok(rule_json(rule)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> DirectoryState {
        let cfg = SimConfig::default();
        let users = super::super::account::seed_users(&cfg);
        DirectoryState::new(&cfg, &users)
    }

    #[test]
    fn seeding_is_deterministic_and_shaped() {
        let a = state();
        let b = state();
        let da = a.data.read();
        let db = b.data.read();
        assert_eq!(da.dirs.len(), 2);
        let dflt = &da.dirs[0];
        assert!(dflt.is_default && dflt.id.starts_with("POOL_") && dflt.id.len() == 20);
        assert_eq!(dflt.contacts.len(), SimConfig::default().contacts);
        assert_eq!(da.dirs[1].contacts.len(), 25);
        assert_eq!(dflt.lists.len(), 3);
        assert_eq!(da.dirs[1].lists.len(), 1);
        assert_eq!(dflt.samples.len(), 2);
        assert_eq!(dflt.rules.len(), 2);
        assert!(dflt.batches.len() >= 2);
        let ja: Vec<Value> = dflt
            .contacts
            .values()
            .map(|c| contact_full(dflt, c))
            .collect();
        let jb: Vec<Value> = db.dirs[0]
            .contacts
            .values()
            .map(|c| contact_full(&db.dirs[0], c))
            .collect();
        assert_eq!(ja, jb);
        assert!(dflt.contacts.values().any(|c| c.last_name.contains('\'')));
        assert!(dflt.contacts.values().any(|c| !c.first_name.is_ascii()));
        assert!(dflt.transactions.values().all(|t| t.id.starts_with("CTR_")));
    }

    #[test]
    fn ascii_fold_makes_mail_safe_names() {
        assert_eq!(ascii_fold("Ó Súilleabháin"), "osuilleabhain");
        assert_eq!(ascii_fold("O'Brien"), "obrien");
        assert_eq!(ascii_fold("Łukasz"), "lukasz");
    }

    #[test]
    fn filters_parse_and_match() {
        let s = state();
        let data = s.data.read();
        let d = &data.dirs[0];
        let c = d.contacts.values().next().cloned().unwrap();
        let f = parse_filter(
            &json!({"conjunction":"and","filters":[
                {"filterType":"email","comparison":"eq","value": c.email.to_uppercase()},
                {"filterType":"lastModified","comparison":"gte","value": c.modified_ms}]}),
            "filter",
            0,
        )
        .unwrap();
        assert!(matches(&f, d, &c));
        let err =
            parse_filter(&json!({"filterType":"bogus","value":"x"}), "filter", 0).unwrap_err();
        assert!(err.message.contains("filter.filterType"));
    }

    #[test]
    fn interface_for_distributions() {
        let s = state();
        assert!(s.default_directory_id().starts_with("POOL_"));
        let lists = s.mailing_lists();
        assert_eq!(lists.len(), 4);
        let members = s.mailing_list_members(&lists[0].1);
        assert!(!members.is_empty());
        assert!(
            members
                .iter()
                .all(|m| m.contact_lookup_id.starts_with("CGC_"))
        );
        assert!(s.mailing_list_members("CG_nope").is_empty());
    }
}
