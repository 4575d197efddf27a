//! The serving processes of an installation, its **nodes** (table `svc_nodes` in the state
//! store): each `xmbridge serve` registers when it starts, records a heartbeat with the syncs it
//! is running every few seconds, and marks itself stopped when it stops. `xmbridge cluster
//! status` and `GET /api/v1/cluster` read them.
//!
//! A node that has not recorded a heartbeat for three of its own intervals is reported
//! `not_responding` (killed, frozen, or cut off from the state store); one that stopped cleanly
//! is `stopped`. Stopped and unresponsive nodes are forgotten a week after their last heartbeat.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use xmbridge_state::db::{StateDb, StateLocation};
use xmbridge_state::vals;

use crate::error::{Result, ServiceError};
use crate::users::{from_ms, now_ms};

/// This module's tables in the state store, as versioned migrations (`xmbridge_state`).
pub static COMPONENT: xmbridge_state::Component = xmbridge_state::Component {
    name: "service_nodes",
    migrations: &[xmbridge_state::Migration {
        version: 1,
        name: "serving processes and their heartbeats",
        sqlite: SCHEMA_V1,
        postgres: "
CREATE TABLE IF NOT EXISTS svc_nodes (
    node_id            TEXT PRIMARY KEY NOT NULL,
    host               TEXT NOT NULL,
    pid                BIGINT NOT NULL,
    version            TEXT NOT NULL,
    url                TEXT NOT NULL,
    started_at         BIGINT NOT NULL,
    heartbeat_at       BIGINT NOT NULL,
    heartbeat_every_ms BIGINT NOT NULL,
    stopped_at         BIGINT,
    running            TEXT NOT NULL DEFAULT '[]'
);
",
    }],
    tables: &["svc_nodes"],
};

const SCHEMA_V1: &str = "
CREATE TABLE IF NOT EXISTS svc_nodes (
    node_id            TEXT PRIMARY KEY NOT NULL,
    host               TEXT NOT NULL,
    pid                INTEGER NOT NULL,
    version            TEXT NOT NULL,
    url                TEXT NOT NULL,
    started_at         INTEGER NOT NULL,
    heartbeat_at       INTEGER NOT NULL,
    heartbeat_every_ms INTEGER NOT NULL,
    stopped_at         INTEGER,
    running            TEXT NOT NULL DEFAULT '[]'
);
";

/// How often a node records that it is alive, unless `serve --heartbeat-every` says otherwise.
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(5);

/// Heartbeats a node may miss before it is reported `not_responding`.
const MISSED_HEARTBEATS: i64 = 3;

/// How long stopped or unresponsive nodes are kept, after their last heartbeat.
const FORGET_AFTER_MS: i64 = 7 * 24 * 3600 * 1000;

/// What a node says about itself when it starts.
#[derive(Clone, Debug)]
pub struct NodeStart {
    /// A new random id per process start.
    pub id: String,
    /// The machine's host name.
    pub host: String,
    /// The process id.
    pub pid: u32,
    /// The xmbridge version.
    pub version: String,
    /// The URL it serves at.
    pub url: String,
    /// How often it records a heartbeat.
    pub heartbeat_every: Duration,
}

/// A sync run a node is executing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunningSync {
    /// The connection.
    pub connection: String,
    /// The run's id (`GET /api/v1/syncs/{id}`).
    pub run: i64,
}

/// Whether a node is there.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeState {
    /// Its last heartbeat is recent.
    Alive,
    /// It missed three heartbeats without stopping: killed, frozen or cut off.
    NotResponding,
    /// It stopped cleanly.
    Stopped,
}

impl NodeState {
    /// The name as printed and answered.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::Alive => "alive",
            NodeState::NotResponding => "not_responding",
            NodeState::Stopped => "stopped",
        }
    }
}

/// One node as `cluster status` and the API show it.
#[derive(Clone, Debug, Serialize)]
pub struct Node {
    /// Its id.
    pub id: String,
    /// Its machine.
    pub host: String,
    /// Its process id on that machine.
    pub pid: u32,
    /// Its xmbridge version.
    pub version: String,
    /// Where it serves.
    pub url: String,
    /// Alive, not responding or stopped.
    pub state: NodeState,
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// Its last heartbeat.
    pub last_heartbeat: DateTime<Utc>,
    /// Seconds since its last heartbeat (when it was read).
    pub heartbeat_age_s: f64,
    /// How often it records a heartbeat, in seconds.
    pub heartbeat_every_s: f64,
    /// When it stopped, if it did.
    pub stopped_at: Option<DateTime<Utc>>,
    /// The syncs it was running at its last heartbeat.
    pub running: Vec<RunningSync>,
}

/// The nodes table; cheap to clone.
#[derive(Clone)]
pub struct Nodes {
    db: Arc<StateDb>,
}

impl Nodes {
    /// Opens the nodes of the state store at `path`, bringing its table to this build's version.
    pub fn open(path: &Path) -> Result<Nodes> {
        Nodes::open_at(&StateLocation::File(path.to_path_buf()))
    }

    /// The same on any state store, SQLite or PostgreSQL.
    pub fn open_at(at: &StateLocation) -> Result<Nodes> {
        let db = StateDb::open(at, &COMPONENT).map_err(ServiceError::state(format!(
            "open the nodes in {}",
            at.store()
        )))?;
        Ok(Nodes { db: Arc::new(db) })
    }

    fn store(&self, doing: &str) -> impl FnOnce(xmbridge_state::db::DbError) -> ServiceError {
        ServiceError::state(format!("{doing} in {}", self.db.store()))
    }

    /// Records a starting node (and forgets nodes gone for over a week).
    pub fn register(&self, node: &NodeStart) -> Result<()> {
        let now = now_ms();
        let every = i64::try_from(node.heartbeat_every.as_millis()).unwrap_or(i64::MAX);
        self.db
            .exec(
                "DELETE FROM svc_nodes WHERE heartbeat_at < ?1 AND node_id <> ?2",
                &vals![now - FORGET_AFTER_MS, &node.id],
            )
            .map_err(self.store("forget old nodes"))?;
        self.db
            .exec(
                "INSERT INTO svc_nodes (node_id, host, pid, version, url, started_at, heartbeat_at, heartbeat_every_ms) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6, ?7)",
                &vals![&node.id, &node.host, node.pid, &node.version, &node.url, now, every],
            )
            .map_err(self.store("register this node"))?;
        Ok(())
    }

    /// Records that node `id` is alive and runs `running`.
    pub fn heartbeat(&self, id: &str, running: &[RunningSync]) -> Result<()> {
        let running = serde_json::to_string(running).unwrap_or_else(|_| "[]".into());
        self.db
            .exec(
                "UPDATE svc_nodes SET heartbeat_at = ?2, running = ?3 WHERE node_id = ?1",
                &vals![id, now_ms(), running],
            )
            .map_err(self.store("record this node's heartbeat"))?;
        Ok(())
    }

    /// Records that node `id` stopped cleanly.
    pub fn stopped(&self, id: &str) -> Result<()> {
        self.db
            .exec(
                "UPDATE svc_nodes SET stopped_at = ?2, heartbeat_at = ?2, running = '[]' WHERE node_id = ?1",
                &vals![id, now_ms()],
            )
            .map_err(self.store("record that this node stopped"))?;
        Ok(())
    }

    /// Every known node, the most recently started first.
    pub fn list(&self) -> Result<Vec<Node>> {
        let now = now_ms();
        let rows = self
            .db
            .query(
                "SELECT node_id, host, pid, version, url, started_at, heartbeat_at, heartbeat_every_ms, stopped_at, running \
                 FROM svc_nodes ORDER BY started_at DESC, node_id",
                &[],
            )
            .map_err(self.store("read the nodes"))?;
        let mut nodes = Vec::new();
        for r in rows {
            let read = || -> std::result::Result<_, xmbridge_state::db::DbError> {
                Ok((
                    r.get::<String>(0)?,
                    r.get::<String>(1)?,
                    r.get::<i64>(2)?,
                    r.get::<String>(3)?,
                    r.get::<String>(4)?,
                    r.get::<i64>(5)?,
                    r.get::<i64>(6)?,
                    r.get::<i64>(7)?,
                    r.get::<Option<i64>>(8)?,
                    r.get::<String>(9)?,
                ))
            };
            let (id, host, pid, version, url, started, beat, every, stopped, running) =
                read().map_err(self.store("read the nodes"))?;
            let state = match stopped {
                Some(_) => NodeState::Stopped,
                None if now - beat > MISSED_HEARTBEATS * every => NodeState::NotResponding,
                None => NodeState::Alive,
            };
            nodes.push(Node {
                id,
                host,
                pid: u32::try_from(pid).unwrap_or_default(),
                version,
                url,
                state,
                started_at: from_ms(started),
                last_heartbeat: from_ms(beat),
                heartbeat_age_s: (now - beat).max(0) as f64 / 1000.0,
                heartbeat_every_s: every as f64 / 1000.0,
                stopped_at: stopped.map(from_ms),
                // A value this build cannot read shows as running nothing, not as an error.
                running: serde_json::from_str(&running).unwrap_or_default(),
            });
        }
        Ok(nodes)
    }
}

/// This machine's host name (`/proc/sys/kernel/hostname`, then `HOSTNAME`, else `unknown`).
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok().filter(|h| !h.is_empty()))
        .unwrap_or_else(|| "unknown".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn start(id: &str, every: Duration) -> NodeStart {
        NodeStart {
            id: id.into(),
            host: "h".into(),
            pid: 42,
            version: "0.1.0".into(),
            url: "http://127.0.0.1:1".into(),
            heartbeat_every: every,
        }
    }

    #[test]
    fn a_node_is_alive_then_not_responding_or_stopped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let nodes = Nodes::open(&dir.path().join("state.db")).expect("open");
        nodes
            .register(&start("a", Duration::from_millis(10)))
            .expect("a");
        nodes
            .register(&start("b", Duration::from_secs(60)))
            .expect("b");
        let running = vec![RunningSync {
            connection: "acme".into(),
            run: 7,
        }];
        nodes.heartbeat("b", &running).expect("beat");
        std::thread::sleep(Duration::from_millis(50));
        let by_id = |id: &str| {
            nodes
                .list()
                .expect("list")
                .into_iter()
                .find(|n| n.id == id)
                .expect("listed")
        };
        assert_eq!(by_id("a").state, NodeState::NotResponding);
        let b = by_id("b");
        assert_eq!(b.state, NodeState::Alive);
        assert_eq!(b.running, running);
        nodes.stopped("b").expect("stop");
        let b = by_id("b");
        assert_eq!(b.state, NodeState::Stopped);
        assert!(b.running.is_empty());
    }
}
