//! Prometheus metrics of `xmbridge serve` (`GET /metrics`, text exposition format 0.0.4).
//!
//! Two sources: counters this process adds to as syncs run ([`Metrics`]: rows written per
//! table, Qualtrics API calls and 429s per connection — they start at zero with the process, as
//! Prometheus counters may), and state read from the store at scrape time ([`Snapshot`]: sync
//! runs by status, outbox events by state and the delivery latency histogram of the delivered
//! events the outbox holds).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use parking_lot::Mutex;
use xmbridge_workflows::store::OutboxStats;

/// Upper bounds of the delivery latency histogram, in milliseconds (0.1 s to 1 h: a webhook is
/// delivered in well under a second, retries after a failing target take minutes).
pub const LATENCY_BOUNDS_MS: &[i64] = &[
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 30_000, 60_000, 300_000, 900_000, 3_600_000,
];

/// The run statuses, always all exported (a status with no run shows 0, not nothing).
const RUN_STATUSES: [&str; 5] = ["queued", "running", "succeeded", "failed", "cancelled"];

/// The outbox states, always all exported.
const EVENT_STATES: [&str; 5] = ["pending", "running", "done", "skipped", "dead"];

/// Counters of this process. Shared (`Arc`) by the scheduler, which adds, and `/metrics`.
#[derive(Debug, Default)]
pub struct Metrics {
    inner: Mutex<Counters>,
}

#[derive(Debug, Default)]
struct Counters {
    /// (table, operation) → rows.
    rows: BTreeMap<(String, &'static str), u64>,
    /// connection → (API calls, of which throttled).
    calls: BTreeMap<String, (u64, u64)>,
}

/// What is read from the state store at scrape time.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// Sync runs by status (`Runs::counts_by_status`).
    pub runs_by_status: BTreeMap<String, u64>,
    /// The outbox (`WorkflowStore::outbox_stats` over [`LATENCY_BOUNDS_MS`]).
    pub outbox: OutboxStats,
    /// The serving process, so each node's series can be told apart (`xmbridge_node_info`).
    pub node: Option<NodeLabels>,
}

/// What `xmbridge_node_info` says about the serving process.
#[derive(Clone, Debug, Default)]
pub struct NodeLabels {
    /// Its node id, as `xmbridge cluster status` lists it.
    pub id: String,
    /// Its machine.
    pub host: String,
    /// Its xmbridge version.
    pub version: String,
}

impl Metrics {
    /// Zeroed counters.
    pub fn new() -> Metrics {
        Metrics::default()
    }

    /// Rows a destination commit wrote: `(table, inserted, updated, deleted)` each.
    pub fn add_rows<'a>(&self, tables: impl IntoIterator<Item = (&'a str, u64, u64, u64)>) {
        let mut c = self.inner.lock();
        for (table, ins, upd, del) in tables {
            for (op, n) in [("inserted", ins), ("updated", upd), ("deleted", del)] {
                if n > 0 {
                    *c.rows.entry((table.to_string(), op)).or_default() += n;
                }
            }
        }
    }

    /// Qualtrics calls a sync of `connection` made, and how many of them were answered 429.
    pub fn add_calls(&self, connection: &str, calls: u64, throttled: u64) {
        let mut c = self.inner.lock();
        let e = c.calls.entry(connection.to_string()).or_default();
        e.0 += calls;
        e.1 += throttled;
    }

    /// The exposition text.
    pub fn render(&self, snap: &Snapshot) -> String {
        let mut out = String::new();
        if let Some(node) = &snap.node {
            family(
                &mut out,
                "xmbridge_node_info",
                "gauge",
                "The serving process (node) these metrics are from: its id as `xmbridge cluster status` lists it, host and version; always 1.",
            );
            let _ = writeln!(
                out,
                "xmbridge_node_info{{node=\"{}\",host=\"{}\",version=\"{}\"}} 1",
                label(&node.id),
                label(&node.host),
                label(&node.version)
            );
        }
        family(
            &mut out,
            "xmbridge_brand_rate_limit_share",
            "gauge",
            "How many live servers each Qualtrics brand's rate limit is divided among: this one paces every brand at its limit divided by this.",
        );
        let _ = writeln!(
            out,
            "xmbridge_brand_rate_limit_share {}",
            xmbridge_runtime::connection::brand_limit_share()
        );
        let c = self.inner.lock();
        family(
            &mut out,
            "xmbridge_sync_runs",
            "gauge",
            "Sync runs in the history, by status.",
        );
        for status in RUN_STATUSES {
            let n = snap.runs_by_status.get(status).copied().unwrap_or(0);
            let _ = writeln!(out, "xmbridge_sync_runs{{status=\"{status}\"}} {n}");
        }
        for (status, n) in &snap.runs_by_status {
            if !RUN_STATUSES.contains(&status.as_str()) {
                let _ = writeln!(
                    out,
                    "xmbridge_sync_runs{{status=\"{}\"}} {n}",
                    label(status)
                );
            }
        }
        family(
            &mut out,
            "xmbridge_sync_rows_written_total",
            "counter",
            "Rows syncs wrote into destinations since the server started, by table and operation.",
        );
        for ((table, op), n) in &c.rows {
            let _ = writeln!(
                out,
                "xmbridge_sync_rows_written_total{{table=\"{}\",operation=\"{op}\"}} {n}",
                label(table)
            );
        }
        family(
            &mut out,
            "xmbridge_qualtrics_api_calls_total",
            "counter",
            "HTTP requests syncs made to Qualtrics since the server started (retries included), by connection.",
        );
        for (conn, (calls, _)) in &c.calls {
            let _ = writeln!(
                out,
                "xmbridge_qualtrics_api_calls_total{{connection=\"{}\"}} {calls}",
                label(conn)
            );
        }
        family(
            &mut out,
            "xmbridge_qualtrics_throttled_total",
            "counter",
            "Qualtrics answers 429 (too many requests) to syncs since the server started, by connection.",
        );
        for (conn, (_, throttled)) in &c.calls {
            let _ = writeln!(
                out,
                "xmbridge_qualtrics_throttled_total{{connection=\"{}\"}} {throttled}",
                label(conn)
            );
        }
        drop(c);
        family(
            &mut out,
            "xmbridge_outbox_events",
            "gauge",
            "Workflow events in the outbox, by state.",
        );
        for state in EVENT_STATES {
            let n = snap.outbox.by_state.get(state).copied().unwrap_or(0);
            let _ = writeln!(out, "xmbridge_outbox_events{{state=\"{state}\"}} {n}");
        }
        family(
            &mut out,
            "xmbridge_delivery_latency_seconds",
            "histogram",
            "Time from an event's arrival in the outbox to its delivery, for the delivered events the outbox holds.",
        );
        for (bound, n) in LATENCY_BOUNDS_MS.iter().zip(
            snap.outbox
                .latency_buckets
                .iter()
                .copied()
                .chain(std::iter::repeat(0)),
        ) {
            let _ = writeln!(
                out,
                "xmbridge_delivery_latency_seconds_bucket{{le=\"{}\"}} {n}",
                seconds(*bound as u64)
            );
        }
        let _ = writeln!(
            out,
            "xmbridge_delivery_latency_seconds_bucket{{le=\"+Inf\"}} {}",
            snap.outbox.delivered
        );
        let _ = writeln!(
            out,
            "xmbridge_delivery_latency_seconds_sum {}",
            seconds(snap.outbox.latency_sum_ms)
        );
        let _ = writeln!(
            out,
            "xmbridge_delivery_latency_seconds_count {}",
            snap.outbox.delivered
        );
        out
    }
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// Milliseconds as seconds, without float noise (`1500` → `1.5`).
fn seconds(ms: u64) -> String {
    match ms % 1000 {
        0 => (ms / 1000).to_string(),
        rest => format!(
            "{}.{}",
            ms / 1000,
            format!("{rest:03}").trim_end_matches('0')
        ),
    }
}

/// A label value escaped as the exposition format requires.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_family_is_exported_with_help_and_type() {
        let m = Metrics::new();
        m.add_rows([("survey_response", 3, 1, 0), ("survey", 2, 0, 0)]);
        m.add_rows([("survey_response", 2, 0, 1)]);
        m.add_calls("acme", 10, 2);
        let mut snap = Snapshot::default();
        snap.runs_by_status.insert("succeeded".into(), 4);
        snap.outbox.by_state.insert("dead".into(), 1);
        snap.outbox.latency_buckets = vec![1; LATENCY_BOUNDS_MS.len()];
        snap.outbox.delivered = 2;
        snap.outbox.latency_sum_ms = 1500;
        snap.node = Some(NodeLabels {
            id: "5f0c2a9e81d4b7a3".into(),
            host: "db-01".into(),
            version: "0.1.0".into(),
        });
        let text = m.render(&snap);
        for line in [
            "# TYPE xmbridge_node_info gauge",
            "xmbridge_node_info{node=\"5f0c2a9e81d4b7a3\",host=\"db-01\",version=\"0.1.0\"} 1",
            "# TYPE xmbridge_sync_runs gauge",
            "xmbridge_sync_runs{status=\"succeeded\"} 4",
            "xmbridge_sync_runs{status=\"failed\"} 0",
            "xmbridge_sync_rows_written_total{table=\"survey_response\",operation=\"inserted\"} 5",
            "xmbridge_sync_rows_written_total{table=\"survey_response\",operation=\"deleted\"} 1",
            "xmbridge_qualtrics_api_calls_total{connection=\"acme\"} 10",
            "xmbridge_qualtrics_throttled_total{connection=\"acme\"} 2",
            "xmbridge_outbox_events{state=\"dead\"} 1",
            "xmbridge_outbox_events{state=\"pending\"} 0",
            "# TYPE xmbridge_delivery_latency_seconds histogram",
            "xmbridge_delivery_latency_seconds_bucket{le=\"0.1\"} 1",
            "xmbridge_delivery_latency_seconds_bucket{le=\"+Inf\"} 2",
            "xmbridge_delivery_latency_seconds_sum 1.5",
            "xmbridge_delivery_latency_seconds_count 2",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing in\n{text}");
        }
        assert!(!text.contains("operation=\"updated\"} 0"));
    }

    #[test]
    fn labels_are_escaped_and_seconds_exact() {
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
        assert_eq!(seconds(100), "0.1");
        assert_eq!(seconds(2_500), "2.5");
        assert_eq!(seconds(60_000), "60");
        assert_eq!(seconds(1), "0.001");
    }
}
