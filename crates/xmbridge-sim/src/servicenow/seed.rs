//! The seeded instance: fixed accounts (admin, the integration user, an agent, a requester),
//! generated callers, customer contacts, incidents and system properties. Same seed → same data.

use super::oauth::{Credentials, OAuthClient, SnUser};
use super::{Db, Record, SnConfig, acl, admin, import, ratelimit, rules, schema};
use crate::clock::{MS_PER_DAY, sql};
use crate::rng::Rng;
use serde_json::{Value, json};
use std::collections::BTreeMap;

const FIRST: &[&str] = &[
    "Abel", "Beth", "Carla", "Dmitri", "Elif", "Farah", "Goran", "Hana", "Ivo", "Jules", "Kemal",
    "Lena", "Mateo", "Nia", "Oskar", "Priya", "Quinn", "Rosa", "Sven", "Tara",
];
const LAST: &[&str] = &[
    "Tuter", "Anglin", "Moreno", "Ivanov", "Kaya", "Haddad", "Novak", "Sato", "Petrov", "Laurent",
    "Demir", "Berg", "Ruiz", "Okafor", "Lind", "Rao", "Fox", "Silva", "Holm", "Byrne",
];
const SUBJECTS: &[&str] = &[
    "Email not syncing on laptop",
    "VPN drops every hour",
    "Printer on floor 3 jams",
    "Cannot reset password",
    "Slow network in the warehouse",
    "Database report times out",
    "New hire needs software",
    "Monitor flickers",
];
const CATEGORIES: &[&str] = &["inquiry", "software", "hardware", "network", "database"];

/// The fixed accounts: (user_name, first, last, roles, web service access only).
pub const ACCOUNTS: &[(&str, &str, &str, &[&str], bool)] = &[
    ("admin", "System", "Administrator", &["admin"], false),
    (
        "xmbridge.integration",
        "xmbridge",
        "Integration",
        &["itil", "import_set_loader", "sn_qualtrics_spoke.user"],
        true,
    ),
    ("abel.tuter", "Abel", "Tuter", &["itil"], false),
    ("beth.anglin", "Beth", "Anglin", &[], false),
];

/// The integration user, who client_credentials calls run as.
pub const INTEGRATION_USER: &str = "xmbridge.integration";

fn row(v: Value) -> Record {
    match v {
        Value::Object(m) => m,
        _ => Record::new(),
    }
}

fn sys(id: &str, created_ms: i64) -> Value {
    json!({
        "sys_id": id, "sys_created_on": sql(created_ms), "sys_created_by": "system",
        "sys_updated_on": sql(created_ms), "sys_updated_by": "system", "sys_mod_count": "0",
    })
}

fn merge(mut a: Value, b: Value) -> Record {
    if let (Some(a), Value::Object(b)) = (a.as_object_mut(), b) {
        a.extend(b);
    }
    row(a)
}

/// Priority from urgency and impact (ServiceNow's default matrix: 1+1 → 1 … 3+3 → 5).
pub fn priority(urgency: &str, impact: &str) -> String {
    let u = urgency.parse::<u8>().unwrap_or(3).clamp(1, 3);
    let i = impact.parse::<u8>().unwrap_or(3).clamp(1, 3);
    (u + i - 1).to_string()
}

pub(crate) fn incident_number(n: u64) -> String {
    format!("INC{n:07}")
}

pub(crate) fn seed(cfg: &SnConfig) -> Db {
    let seed = cfg.seed;
    let mut db = Db {
        tables: BTreeMap::new(),
        creds: Credentials::default(),
        tokens: Default::default(),
        acl: acl::AclState::defaults(),
        limits: ratelimit::RateLimits::default(),
        faults: admin::Faults::default(),
        rules: rules::RuleState::default(),
        imports: import::ImportState::default(),
        id_counter: 0,
        next_incident: 10_001,
    };
    for t in schema::TABLES {
        if t.name != "sys_dictionary" {
            db.tables.insert(t.name.to_string(), Vec::new());
        }
    }
    let t0 = cfg.start_ms - 90 * MS_PER_DAY;
    let mut users = Vec::new();
    for (i, (name, first, last, roles, ws_only)) in ACCOUNTS.iter().enumerate() {
        let password = Rng::derive(seed, &[0x9A55, i as u64]).alnum(16);
        db.creds.users.push(SnUser {
            user_name: name.to_string(),
            password,
            roles: roles.iter().map(|r| r.to_string()).collect(),
            web_service_access_only: *ws_only,
            active: true,
            locked_out: false,
        });
        users.push((
            name.to_string(),
            first.to_string(),
            last.to_string(),
            *ws_only,
        ));
    }
    let mut r = Rng::derive(seed, &[0x05E6]);
    for i in 0..cfg.users {
        let first = r.pick(FIRST).to_string();
        let last = r.pick(LAST).to_string();
        let user_name = format!("{}.{}{}", first.to_lowercase(), last.to_lowercase(), i + 1);
        users.push((user_name, first, last, false));
    }
    let mut caller_ids = Vec::new();
    for (i, (user_name, first, last, ws_only)) in users.iter().enumerate() {
        let id = db.new_id(seed);
        let email = format!("{user_name}@example.com");
        let rec = merge(
            sys(&id, t0 + i as i64 * 60_000),
            json!({
                "user_name": user_name, "first_name": first, "last_name": last,
                "name": format!("{first} {last}"), "email": email,
                "phone": format!("+1 555 01{:02}", i % 100), "active": "true",
                "locked_out": "false", "web_service_access_only": ws_only.to_string(),
            }),
        );
        if i >= ACCOUNTS.len() {
            caller_ids.push(id);
        }
        db.table_mut("sys_user").push(rec);
    }
    let mut r = Rng::derive(seed, &[0xC0C7]);
    for i in 0..cfg.contacts {
        let id = db.new_id(seed);
        let first = r.pick(FIRST).to_string();
        let last = r.pick(LAST).to_string();
        let rec = merge(
            sys(&id, t0 + i as i64 * 120_000),
            json!({
                "first_name": first, "last_name": last, "name": format!("{first} {last}"),
                "email": format!("{}.{}.c{}@customer.example", first.to_lowercase(), last.to_lowercase(), i + 1),
                "phone": format!("+1 555 02{:02}", i % 100),
                "account": format!("ACME Account {}", i % 5 + 1), "active": "true",
                "u_qualtrics_id": "",
            }),
        );
        db.table_mut("customer_contact").push(rec);
    }
    let mut r = Rng::derive(seed, &[0x1C1D]);
    for i in 0..cfg.incidents {
        let id = db.new_id(seed);
        let number = incident_number(db.next_incident);
        db.next_incident += 1;
        let opened = t0 + i as i64 * 3 * 3_600_000;
        let urgency = (r.below(3) + 1).to_string();
        let impact = (r.below(3) + 1).to_string();
        let state = *r.pick(&["1", "1", "2", "2", "3", "6", "7", "7"]);
        let caller = if caller_ids.is_empty() {
            String::new()
        } else {
            r.pick(&caller_ids).clone()
        };
        let closed = matches!(state, "6" | "7");
        let rec = merge(
            sys(&id, opened),
            json!({
                "number": number, "short_description": r.pick(SUBJECTS),
                "description": "", "caller_id": caller,
                "urgency": urgency, "impact": impact, "priority": priority(&urgency, &impact),
                "category": r.pick(CATEGORIES), "subcategory": "", "state": state,
                "close_code": if closed { "Solved (Permanently)" } else { "" },
                "close_notes": if closed { "Fixed." } else { "" },
                "assignment_group": "Service Desk", "assigned_to": "", "contact_type": "phone",
                "comments": "", "work_notes": "", "correlation_id": "", "correlation_display": "",
                "opened_at": sql(opened),
                "resolved_at": if closed { sql(opened + 3_600_000) } else { String::new() },
                "closed_at": if state == "7" { sql(opened + 7_200_000) } else { String::new() },
                "active": (!closed).to_string(),
            }),
        );
        db.table_mut("incident").push(rec);
    }
    let client_id = Rng::derive(seed, &[0xC11E]).hex(32);
    let client_secret = Rng::derive(seed, &[0x5EC2]).alnum(12);
    db.creds.clients.push(OAuthClient {
        client_id,
        client_secret,
        app_user: Some(INTEGRATION_USER.to_string()),
        access_ttl_secs: cfg.access_ttl_secs,
        refresh_ttl_secs: cfg.refresh_ttl_secs,
    });
    for (name, value, ty, description) in [
        (
            "sn_qualtrics_spoke.qualtrics_directory",
            cfg.directory_id(),
            "string",
            "Default Qualtrics directory (mailing list pool) id used by the spoke's flows",
        ),
        (
            "glide.oauth.inbound.client.credential.grant_type.enabled",
            "false".into(),
            "true|false",
            "Allow the OAuth client_credentials grant",
        ),
        (
            "com.snc.platform.security.oauth.is.active",
            "true".into(),
            "true|false",
            "OAuth is active",
        ),
        (
            "glide.invalid_query.returns_no_rows",
            "false".into(),
            "true|false",
            "An invalid query returns no rows instead of ignoring the invalid part",
        ),
        (
            "instance_name",
            cfg.instance.clone(),
            "string",
            "Instance name",
        ),
    ] {
        let id = db.new_id(seed);
        let rec = merge(
            sys(&id, t0),
            json!({"name": name, "value": value, "type": ty, "description": description}),
        );
        db.table_mut("sys_properties").push(rec);
    }
    acl::rebuild_tables(&mut db);
    db
}

impl Db {
    pub(crate) fn table_mut(&mut self, name: &str) -> &mut Vec<Record> {
        self.tables.entry(name.to_string()).or_default()
    }
}
