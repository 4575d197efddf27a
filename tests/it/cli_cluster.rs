//! Several `xmbridge serve` processes on one PostgreSQL state store under faults: nodes killed
//! (`SIGKILL`, then restarted) and frozen past their lease (`SIGSTOP` … `SIGCONT`) at seeded
//! random moments, while connections sync on short schedules and webhook events stream in to
//! whichever node is up.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use xmbridge_sim::SimConfig;
use xmbridge_test_kit::Rng;
use xmbridge_test_kit::pg::TestDb;
use xmbridge_test_kit::serve::{Served, start_server};

use crate::cli_workflow_run::{contacts_by_ext_ref, servicenow_contact_workflow};
use crate::support::{self, Install};

const NODES: usize = 3;
const CONNECTIONS: usize = 3;
const EVENTS: usize = 200;
/// `--every 5m` under `--schedule-scale 60`.
const SLOT: Duration = Duration::from_secs(5);
/// How long the faults go on.
const CHAOS: Duration = Duration::from_secs(60);

/// Every table of a destination's `qualtrics` schema (its bookkeeping tables left out), each
/// row as JSON without the sync-time column, sorted.
async fn rows(url: &str) -> BTreeMap<String, Vec<String>> {
    let c = xmbridge_test_kit::pg::connect(url).await;
    let tables = c
        .query(
            "SELECT table_name::text FROM information_schema.tables \
             WHERE table_schema = 'qualtrics' AND table_name NOT LIKE '\\_%' ORDER BY 1",
            &[],
        )
        .await
        .unwrap();
    let mut out = BTreeMap::new();
    for t in tables {
        let name: String = t.get(0);
        let rows = c
            .query(
                &format!(
                    "SELECT (to_jsonb(r) - '_xmbridge_synced')::text FROM qualtrics.\"{name}\" r ORDER BY 1"
                ),
                &[],
            )
            .await
            .unwrap();
        out.insert(name, rows.iter().map(|r| r.get(0)).collect());
    }
    out
}

/// Cursor rows of a destination written without a lease (every writer here is a server's run,
/// which holds one), or by a run after a later run of its connection had claimed the
/// destination: a cursor whose writer's token is below the fence's and whose write began after
/// the claim. Each check reads one snapshot; none may ever find anything.
async fn late_writes(c: &tokio_postgres::Client) -> Vec<String> {
    // Each statement reads one snapshot of the tables it joins.
    let checks = [
        "SELECT s.stream || ' written without a lease at ' || s.updated_at \
         FROM qualtrics._xmbridge_state s WHERE s.fence IS NULL",
        "SELECT s.stream || ' written by token ' || s.fence || ' at ' || s.updated_at \
                || ' after token ' || f.token || ' claimed at ' || f.claimed_at \
         FROM qualtrics._xmbridge_state s, qualtrics._xmbridge_fence f \
         WHERE s.fence < f.token AND s.updated_at > f.claimed_at",
    ];
    let mut found = Vec::new();
    for sql in checks {
        match c.query(sql, &[]).await {
            Ok(rows) => found.extend(rows.iter().map(|r| r.get::<_, String>(0))),
            // Before the first run created the table.
            Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) => {}
            Err(e) => panic!("reading the destination: {e}"),
        }
    }
    found
}

/// A run as the checks read it: id, trigger, status, queued at (ms), error message.
type RunRow = (i64, String, String, i64, String);

/// The nodes' base URLs; `None` while a node is down or frozen (no webhook goes there then).
type Up = Arc<Mutex<Vec<Option<String>>>>;

/// Posts `EVENTS` ServiceNow records, each to a node that is up, as a business rule would,
/// trying another node when one does not answer. Returns how many posts were retried.
async fn post_events(up: Up, secret: String) -> usize {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let mut retried = 0;
    for n in 0..EVENTS {
        let mut attempt = 0usize;
        loop {
            let urls: Vec<String> = up.lock().unwrap().iter().flatten().cloned().collect();
            if !urls.is_empty() {
                let url = &urls[(n + attempt) % urls.len()];
                let sent = http
                    .post(format!("{url}/hooks/servicenow/chaos"))
                    .header("X-Xmbridge-Secret", &secret)
                    .json(&json!({
                        "sys_id": format!("chaos-{n:04}"),
                        "sys_updated_on": "2026-12-04 10:00:00",
                        "email": format!("c{n}@example.com"),
                    }))
                    .send()
                    .await;
                if sent.is_ok_and(|r| r.status().is_success()) {
                    break;
                }
            }
            attempt += 1;
            retried += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Spread over the minute of faults.
        tokio::time::sleep(Duration::from_millis(280)).await;
    }
    retried
}

/// Three servers share one PostgreSQL state store; three connections sync every 5 s into
/// PostgreSQL destinations; 200 webhook events arrive at whichever node is up. For a minute, a node
/// chosen at random is killed (and restarted) or frozen past its lease (and woken) every few
/// seconds (60 s). Afterwards: every event was delivered exactly once (the simulator holds one contact
/// per record); no slot fired twice; every run that a fault interrupted was taken over and
/// resumed; no destination ever held a cursor written by a run after it lost its lease; and
/// every destination equals a clean single-node sync row for row.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_servers_killed_and_frozen_at_random_lose_nothing_and_double_nothing() {
    let Some(state_db) = TestDb::create("xmb_chaos_state").await else {
        return;
    };
    let mut dests = Vec::new();
    for _ in 0..CONNECTIONS {
        dests.push(TestDb::create("xmb_chaos_dest").await.expect("PostgreSQL"));
    }
    let url = state_db.url().to_string();
    let state = state_db.client().await;
    let mut cfg = SimConfig {
        surveys: 3,
        responses: 250,
        rate_limit_per_min: 0,
        ..SimConfig::default()
    };
    // Slow enough that a sync runs for seconds and faults hit runs mid-way.
    cfg.faults.slow_ms = 80;
    let h = xmbridge_test_kit::sim::qualtrics(cfg).await;
    let dir = h.sim.directory.default_directory_id();

    let installs: Vec<Install> = (0..NODES)
        .map(|_| {
            let i = support::install_sharing_key();
            i.write_workflow("chaos.toml", &servicenow_contact_workflow("chaos", &dir));
            i
        })
        .collect();
    let a = &installs[0];
    for (n, dest) in dests.iter().enumerate() {
        let name = format!("c{n}");
        a.connect_with(&h, &name, &["--state", &url]).await;
        a.ok(&[
            "connection",
            "set",
            &name,
            "--destination",
            dest.url(),
            "--every",
            "5m",
            "--state",
            &url,
        ])
        .await;
    }
    // One shared secret for the ServiceNow hook, in every node's home.
    let secret = a
        .ok(&["workflow", "endpoint", "chaos", "--secret", "--state", &url])
        .await
        .trim()
        .to_string();
    for other in &installs[1..] {
        use std::os::unix::fs::PermissionsExt;
        let hooks = other.home().join("hooks");
        std::fs::create_dir_all(&hooks).unwrap();
        std::fs::set_permissions(&hooks, std::fs::Permissions::from_mode(0o700)).unwrap();
        let file = hooks.join("chaos.secret");
        std::fs::write(&file, format!("{secret}\n")).unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let args = [
        "--state",
        url.as_str(),
        "--qualtrics",
        "c0",
        "--heartbeat-secs",
        "1",
        "--lease-secs",
        "5",
        "--retry-base-ms",
        "100",
        "--grace-secs",
        "10",
        "--schedule-scale",
        "60",
    ];
    let mut servers: Vec<Served> = Vec::new();
    for i in &installs {
        servers.push(start_server(i, &args).await);
    }
    let up: Up = Arc::new(Mutex::new(servers.iter().map(|s| Some(s.at(""))).collect()));
    let poster = tokio::spawn(post_events(up.clone(), secret));

    // Watches every destination for a write after a lost lease, throughout.
    let watching = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let watcher = {
        let urls: Vec<String> = dests.iter().map(|d| d.url().to_string()).collect();
        let watching = watching.clone();
        tokio::spawn(async move {
            let mut clients = Vec::new();
            for u in &urls {
                clients.push(xmbridge_test_kit::pg::connect(u).await);
            }
            let (mut seen, mut looks) = (Vec::new(), 0u64);
            while watching.load(std::sync::atomic::Ordering::SeqCst) {
                for c in &clients {
                    seen.extend(late_writes(c).await);
                }
                looks += 1;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            (seen, looks)
        })
    };

    // The faults: one at a time, each on a node chosen at random.
    let mut rng = Rng(20261204);
    let (mut kills, mut freezes) = (0, 0);
    // What the killed processes logged, and the others at the end.
    let mut logs = String::new();
    let started = Instant::now();
    while started.elapsed() < CHAOS {
        tokio::time::sleep(Duration::from_millis(rng.range(1500, 4000))).await;
        // Mostly a node that is running a sync: that is where a fault can do harm.
        let busy: Vec<usize> = state
            .query(
                "SELECT n.pid FROM svc_sync_runs r JOIN svc_nodes n ON n.node_id = r.node_id \
                 WHERE r.status = 'running'",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .filter_map(|r| {
                let pid: i64 = r.get(0);
                servers.iter().position(|s| i64::from(s.pid()) == pid)
            })
            .collect();
        let victim = if !busy.is_empty() && rng.range(0, 3) > 0 {
            busy[rng.range(0, busy.len() as u64) as usize]
        } else {
            rng.range(0, NODES as u64) as usize
        };
        up.lock().unwrap()[victim] = None;
        if rng.next().is_multiple_of(2) {
            servers[victim].kill();
            logs.push_str(&servers[victim].stderr());
            kills += 1;
            tokio::time::sleep(Duration::from_millis(rng.range(200, 2000))).await;
            servers[victim] = start_server(&installs[victim], &args).await;
        } else {
            servers[victim].freeze();
            freezes += 1;
            // Past three missed heartbeats and the others' next look for stopped nodes.
            tokio::time::sleep(Duration::from_millis(rng.range(4500, 8000))).await;
            servers[victim].thaw();
        }
        up.lock().unwrap()[victim] = Some(servers[victim].at(""));
    }
    let retried = poster.await.unwrap();

    // Every event delivered once the faults are over.
    let start = Instant::now();
    loop {
        let row = state
            .query_one(
                "SELECT COUNT(*) FILTER (WHERE state = 'done'), COUNT(*) FROM wf_events WHERE workflow = 'chaos'",
                &[],
            )
            .await
            .unwrap();
        let (done, all): (i64, i64) = (row.get(0), row.get(1));
        if done == EVENTS as i64 && all == EVENTS as i64 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "{done} of {all} events done\n{}",
            servers
                .iter()
                .map(Served::stderr)
                .collect::<Vec<_>>()
                .join("\n---\n")
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let contacts = contacts_by_ext_ref(&h, &dir).await;
    for n in 0..EVENTS {
        let key = format!("chaos-{n:04}");
        assert_eq!(contacts.get(&key), Some(&1), "contact {key}: {contacts:?}");
    }

    // A run of every connection that began after the last contact was written, and succeeded.
    let settled_at = chrono::Utc::now().timestamp_millis();
    let start = Instant::now();
    loop {
        let done: i64 = state
            .query_one(
                "SELECT COUNT(DISTINCT connection) FROM svc_sync_runs WHERE queued_at > $1 AND status = 'succeeded'",
                &[&settled_at],
            )
            .await
            .unwrap()
            .get(0);
        if done == CONNECTIONS as i64 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "not every connection synced again after the faults"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    for s in servers.iter_mut() {
        s.terminate();
        let status = s.wait(Duration::from_secs(60)).await;
        assert!(status.success(), "{}", s.stderr());
        logs.push_str(&s.stderr());
    }
    watching.store(false, std::sync::atomic::Ordering::SeqCst);
    let (late, looks) = watcher.await.unwrap();

    // The runs: no slot fired twice; every interrupted run was taken over and resumed.
    let runs = state
        .query(
            "SELECT connection, id, trigger, status, queued_at, COALESCE(error_message, '') \
             FROM svc_sync_runs ORDER BY connection, id",
            &[],
        )
        .await
        .unwrap();
    let mut by_connection: BTreeMap<String, Vec<RunRow>> = BTreeMap::new();
    for r in &runs {
        by_connection.entry(r.get(0)).or_default().push((
            r.get(1),
            r.get(2),
            r.get(3),
            r.get(4),
            r.get(5),
        ));
    }
    let mut taken_over = 0;
    let mut all_slots = 0;
    for (connection, runs) in &by_connection {
        let slots: Vec<i64> = runs
            .iter()
            .filter(|r| r.1 == "schedule")
            .map(|r| r.3)
            .collect();
        // A slot is skipped while a run of the connection is queued or running (a resume
        // after a fault, say), so a connection hit often has few: on a loaded machine a run
        // resumed again and again for the whole minute leaves its connection only the first.
        assert!(!slots.is_empty(), "{connection}: {runs:?}");
        all_slots += slots.len();
        for pair in slots.windows(2) {
            assert!(
                pair[1] - pair[0] >= SLOT.as_millis() as i64 * 9 / 10,
                "{connection}: a slot fired twice ({} ms apart): {runs:?}",
                pair[1] - pair[0]
            );
        }
        for (i, run) in runs.iter().enumerate() {
            if run.2 == "failed" {
                assert!(
                    run.4.contains("stopped heartbeating"),
                    "{connection}: run {} failed for another reason: {}",
                    run.0,
                    run.4
                );
                taken_over += 1;
                // A resume, or a run queued already, which continues from the last commit
                // just as well.
                assert!(
                    runs[i + 1..].iter().any(|r| r.2 == "succeeded"),
                    "{connection}: run {} was not resumed: {runs:?}",
                    run.0
                );
            }
        }
    }
    assert!(
        all_slots > by_connection.len(),
        "the schedules fired only {all_slots} slots in all: {by_connection:?}"
    );
    assert!(
        kills >= 2 && freezes >= 2 && taken_over >= 2,
        "too few faults to prove anything: {kills} kills, {freezes} freezes, {taken_over} runs taken over"
    );
    assert!(late.is_empty(), "writes after a lost lease: {late:?}");
    // A woken server's run that still succeeded would have committed after losing its lease.
    let finished_late: Vec<&str> = logs
        .lines()
        .filter(|l| {
            l.contains("sync run was taken over by another server meanwhile")
                && l.contains("status=\"succeeded\"")
        })
        .collect();
    assert!(finished_late.is_empty(), "{finished_late:?}");
    assert!(looks > 50, "the watcher looked {looks} times");

    // Row for row what one node writes from scratch.
    let clean = TestDb::create("xmb_chaos_clean").await.expect("PostgreSQL");
    a.ok(&[
        "sync",
        "c0",
        "--destination",
        clean.url(),
        "--no-triggers",
        "--state",
        &url,
    ])
    .await;
    let reference = rows(clean.url()).await;
    assert!(
        reference["survey_response"].len() >= 600 && reference["directory_contact"].len() >= EVENTS,
        "{:?}",
        reference
            .iter()
            .map(|(t, r)| (t, r.len()))
            .collect::<Vec<_>>()
    );
    for (n, dest) in dests.iter().enumerate() {
        let held = rows(dest.url()).await;
        assert_eq!(
            held.keys().collect::<Vec<_>>(),
            reference.keys().collect::<Vec<_>>()
        );
        for (table, expected) in &reference {
            assert!(
                &held[table] == expected,
                "c{n}: table {table} differs from a clean sync ({} rows, clean {})",
                held[table].len(),
                expected.len()
            );
        }
    }
    eprintln!(
        "chaos: {kills} kills, {freezes} freezes, {taken_over} runs taken over, {} sessions of a lost lease ended, {} woken runs found taken over, {retried} webhook posts retried, {} runs, {looks} looks for late writes",
        logs.matches("ended the destination session of an earlier run")
            .count(),
        logs.matches("sync run was taken over by another server meanwhile")
            .count(),
        runs.len()
    );
}
