//! Business rules that call out: "when a record of table T is written so that condition C
//! becomes true, POST the record as JSON to URL" (loopback only). This is how a ServiceNow event
//! (an incident closed) reaches xmbridge in tests. Each call and its outcome is recorded.

use super::schema::TableDef;
use super::table::{Display, Render, render};
use super::{Db, Record, SharedSn, query};
use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
/// Which writes a business rule runs on.
pub enum On {
    /// Inserts only.
    Insert,
    /// Updates only.
    Update,
    #[default]
    /// Inserts and updates.
    Both,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
/// A business rule that POSTs a record to a URL when a write makes it match a condition.
pub struct BusinessRule {
    #[serde(default)]
    /// The rule's sys_id (generated when not given).
    pub sys_id: String,
    #[serde(default)]
    /// The rule's name.
    pub name: String,
    /// The table the rule watches.
    pub table: String,
    /// Encoded query the record must match after the write (and not before it, on update).
    pub condition: String,
    /// Loopback URL the record is POSTed to.
    pub url: String,
    #[serde(default)]
    /// Which writes trigger the rule.
    pub on: On,
    /// Comma list of fields (dot-walks allowed, e.g. `caller_id.email`); default all.
    #[serde(default)]
    pub fields: Option<String>,
    /// Call after answering the client ("async" rule) instead of before ("after" rule).
    #[serde(default)]
    pub asynchronous: bool,
    /// Extra request headers, as a rule script's `RESTMessageV2.setRequestHeader` sets them
    /// (e.g. `X-Xmbridge-Secret`). Never listed back: they may hold a secret.
    #[serde(default, skip_serializing)]
    pub headers: std::collections::BTreeMap<String, String>,
}

/// One outbound call and how it went.
#[derive(Clone, Debug, Serialize)]
pub struct Delivery {
    /// The sys_id of the rule that made the call.
    pub rule: String,
    pub(crate) rule_name: String,
    /// The table of the record sent.
    pub table: String,
    /// The sys_id of the record sent.
    pub sys_id: String,
    /// The URL called.
    pub url: String,
    /// The JSON body sent.
    pub body: Value,
    /// HTTP status of the receiver's answer; `None` when the call failed.
    pub status: Option<u16>,
    /// Why the call failed; `None` when it got an answer.
    pub error: Option<String>,
    /// When the call was made (simulated time, as text).
    pub at: String,
}

#[derive(Debug, Default)]
/// The instance's business rules and their outbound calls.
pub struct RuleState {
    /// The rules, in creation order.
    pub rules: Vec<BusinessRule>,
    /// Every call made, oldest first.
    pub deliveries: Vec<Delivery>,
}

/// An outbound call to make once the database lock is released.
#[derive(Debug)]
pub struct Job {
    rule: BusinessRule,
    sys_id: String,
    body: Value,
}

/// Checks that a rule's URL is an http(s) URL on a loopback address.
pub fn check_url(u: &str) -> Result<(), String> {
    let url = url::Url::parse(u).map_err(|e| format!("url '{u}': {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("url '{u}': only http and https"));
    }
    let loopback = match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => d == "localhost",
        None => false,
    };
    if loopback {
        Ok(())
    } else {
        Err(format!(
            "url '{u}': the simulator only calls loopback addresses (127.0.0.1, ::1, localhost)"
        ))
    }
}

/// The rules a write of `after` (previously `before`, `None` on insert) triggers.
pub fn triggered(
    sim: &SharedSn,
    db: &Db,
    t: &'static TableDef,
    before: Option<&Record>,
    after: &Record,
) -> Vec<Job> {
    let lookup = |tb: &str, id: &str| super::table::find(db, tb, id);
    let mut jobs = Vec::new();
    for rule in db.rules.rules.iter().filter(|r| r.table == t.name) {
        let on_ok = matches!(
            (rule.on, before.is_some()),
            (On::Both, _) | (On::Insert, false) | (On::Update, true)
        );
        if !on_ok {
            continue;
        }
        let q = query::parse(t, &rule.condition);
        let now = q.matches(after, &lookup);
        let was = before.is_some_and(|b| q.matches(b, &lookup));
        if now && !was {
            let opts = Render {
                fields: rule
                    .fields
                    .as_ref()
                    .map(|f| f.split(',').map(|s| s.trim().to_string()).collect()),
                display: Display::Value,
                exclude_link: false,
            };
            jobs.push(Job {
                rule: rule.clone(),
                sys_id: after
                    .get("sys_id")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string(),
                body: render(db, &sim.base(), t, after, &opts),
            });
        }
    }
    jobs
}

async fn send(sim: SharedSn, job: Job) {
    let mut req = sim
        .http
        .post(&job.rule.url)
        .header("x-sn-table", &job.rule.table)
        .header("x-sn-business-rule", &job.rule.sys_id);
    for (k, v) in &job.rule.headers {
        req = req.header(k.as_str(), v.as_str());
    }
    let result = req.json(&job.body).send().await;
    let (status, error) = match result {
        Ok(r) => (Some(r.status().as_u16()), None),
        Err(e) => (None, Some(e.to_string())),
    };
    let at = sim.now_sql();
    sim.db.lock().rules.deliveries.push(Delivery {
        rule: job.rule.sys_id.clone(),
        rule_name: job.rule.name.clone(),
        table: job.rule.table.clone(),
        sys_id: job.sys_id,
        url: job.rule.url.clone(),
        body: job.body,
        status,
        error,
        at,
    });
}

/// Makes the calls: "after" rules before the client gets its answer, "async" ones in the background.
pub async fn dispatch(sim: &SharedSn, jobs: Vec<Job>) {
    for job in jobs {
        if job.rule.asynchronous {
            tokio::spawn(send(sim.clone(), job));
        } else {
            send(sim.clone(), job).await;
        }
    }
}
