//! `xmbridge workflow run` and `xmbridge account` end to end: the real binary, the Qualtrics
//! simulator over loopback, the state store in a temporary XMBRIDGE_HOME — including the kill
//! loop: 1,000 events, the runner killed with SIGKILL 20 times at seeded random moments, every
//! event delivered exactly once.

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use xmbridge_sim::{SimConfig, SimHandle, start_qualtrics};
use xmbridge_workflows::store::{EventSource, EventState, NewEvent, SqliteStore, Store};

const BIN: &str = env!("CARGO_BIN_EXE_xmbridge");

struct Install {
    dir: tempfile::TempDir,
}

impl Install {
    fn new() -> Install {
        Install {
            dir: tempfile::tempdir().unwrap(),
        }
    }
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
    fn home(&self) -> PathBuf {
        self.path("home")
    }
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.args(args)
            .current_dir(self.dir.path())
            .env("XMBRIDGE_HOME", self.home())
            .env("XMBRIDGE_USER", "pat")
            .env_remove("XMBRIDGE_MASTER_KEY")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null());
        c
    }
    async fn run(&self, args: &[&str]) -> Output {
        let mut c = self.cmd(args);
        tokio::task::spawn_blocking(move || c.output().unwrap())
            .await
            .unwrap()
    }
    async fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args).await;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{args:?}\nstdout:\n{stdout}\nstderr:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    }
    async fn fails(&self, args: &[&str]) -> (i32, String) {
        let out = self.run(args).await;
        assert!(!out.status.success(), "{args:?} should fail");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
    async fn connect(&self, h: &SimHandle, name: &str) {
        let tf = self.path(&format!("{name}.token"));
        std::fs::write(&tf, h.sim.cfg.admin_token()).unwrap();
        self.ok(&[
            "connection",
            "add",
            "qualtrics",
            name,
            "--url",
            &h.base_url,
            "--api-token-file",
            tf.to_str().unwrap(),
        ])
        .await;
    }
    fn write_workflow(&self, file: &str, text: &str) {
        let dir = self.home().join("workflows");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(file), text).unwrap();
    }
    fn store(&self) -> SqliteStore {
        SqliteStore::open(self.home().join("state.db")).unwrap()
    }
}

async fn sim() -> SimHandle {
    let cfg = SimConfig {
        seed: 5,
        contacts: 0,
        rate_limit_per_min: 0,
        ..SimConfig::default()
    };
    start_qualtrics(cfg, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap()
}

/// Every contact of `dir` through the API: extRef → count.
async fn contacts_by_ext_ref(h: &SimHandle, dir: &str) -> std::collections::HashMap<String, u32> {
    let http = reqwest::Client::new();
    let mut url = format!("{}/directories/{dir}/contacts?pageSize=100", h.api_url());
    let mut out = std::collections::HashMap::new();
    loop {
        let body: Value = http
            .get(&url)
            .header("X-API-TOKEN", h.sim.cfg.admin_token())
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        for c in body["result"]["elements"].as_array().unwrap() {
            if let Some(r) = c["extRef"].as_str() {
                *out.entry(r.to_string()).or_default() += 1;
            }
        }
        match body["result"]["nextPage"].as_str() {
            Some(next) if !next.is_empty() => url = next.to_string(),
            _ => return out,
        }
    }
}

fn kill_workflow(dir: &str) -> String {
    format!(
        r#"[[workflow]]
name = "kill-loop"
owner = "pat"

[workflow.trigger]
type = "servicenow"
table = "incident"

[[workflow.step]]
name = "contact"
action = "create-contact"
[workflow.step.inputs]
directory_id = "'{dir}'"
email = "record.email"
extRef = "record.sys_id"
"#
    )
}

/// A seeded xorshift for the kill moments.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_kills_during_delivery_of_a_thousand_events_deliver_each_once() {
    const EVENTS: usize = 1000;
    const KILLS: usize = 20;
    let inst = Install::new();
    let h = sim().await;
    inst.connect(&h, "q").await;
    let dir = h.sim.directory.default_directory_id();
    inst.write_workflow("kill-loop.toml", &kill_workflow(&dir));
    {
        // What the receiver does for each ServiceNow call (tested in xmbridge-server).
        let store = inst.store();
        for n in 0..EVENTS {
            let e = NewEvent {
                workflow: "kill-loop".into(),
                source: EventSource::ServiceNow,
                dedupe_key: format!("kill-{n:04}@1"),
                payload: json!({"table": "incident", "record": {
                    "sys_id": format!("kill-{n:04}"), "email": format!("k{n}@example.com")}}),
            };
            store.enqueue(&e, 0).unwrap();
        }
    }
    let mut rng = Rng(20261130);
    let mut kills = 0;
    let started = Instant::now();
    for _ in 0..KILLS {
        let mut child = inst
            .cmd(&[
                "workflow",
                "run",
                "--once",
                "--workers",
                "4",
                "--lease-secs",
                "1",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        tokio::time::sleep(Duration::from_millis(rng.range(150, 700))).await;
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap(); // SIGKILL
            kills += 1;
        }
        child.wait().unwrap();
    }
    let done_before_final = inst
        .store()
        .status("kill-loop")
        .unwrap()
        .counts
        .get(&EventState::Done)
        .copied()
        .unwrap_or(0);
    // Let the killed runs' leases run out, then finish.
    let mut status = inst.store().status("kill-loop").unwrap();
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(1100)).await;
        inst.ok(&["workflow", "run", "--once", "--workers", "4", "--lease-secs", "1"])
            .await;
        status = inst.store().status("kill-loop").unwrap();
        if status.counts.get(&EventState::Done) == Some(&(EVENTS as u64)) {
            break;
        }
    }
    eprintln!(
        "{kills} kills; {done_before_final} events done before the final run; {:?} in all",
        started.elapsed()
    );
    assert_eq!(
        status.counts.get(&EventState::Done),
        Some(&(EVENTS as u64)),
        "{status:?}"
    );
    assert!(kills >= KILLS / 2, "only {kills} kills landed during delivery");
    assert!(
        done_before_final < EVENTS as u64,
        "the kills must happen during delivery"
    );
    let seen = contacts_by_ext_ref(&h, &dir).await;
    let ours: Vec<_> = seen.iter().filter(|(k, _)| k.starts_with("kill-")).collect();
    assert_eq!(ours.len(), EVENTS, "every event reached the target");
    let dupes: Vec<_> = ours.iter().filter(|(_, n)| **n > 1).collect();
    assert!(dupes.is_empty(), "duplicated: {dupes:?}");
}

#[tokio::test]
async fn pause_resume_replay_and_status_from_the_command_line() {
    let inst = Install::new();
    let h = sim().await;
    inst.connect(&h, "q").await;
    let dir = h.sim.directory.default_directory_id();
    inst.write_workflow("kill-loop.toml", &kill_workflow(&dir));
    {
        let store = inst.store();
        for n in 0..3 {
            let e = NewEvent {
                workflow: "kill-loop".into(),
                source: EventSource::ServiceNow,
                dedupe_key: format!("p-{n}@1"),
                // Event 2 has neither email nor extRef: the action refuses it (dead letter).
                payload: if n == 2 {
                    json!({"table": "incident", "record": {"sys_id": null}})
                } else {
                    json!({"table": "incident", "record": {"sys_id": format!("p-{n}"), "email": format!("p{n}@example.com")}})
                },
            };
            store.enqueue(&e, 0).unwrap();
        }
    }
    inst.ok(&["workflow", "pause", "kill-loop", "--reason", "testing"])
        .await;
    let out = inst.ok(&["workflow", "run", "--once"]).await;
    assert!(out.contains("delivered 0 event(s)"), "{out}");
    let st = inst.ok(&["workflow", "status", "kill-loop"]).await;
    assert!(st.contains("PAUSED: testing"), "{st}");
    inst.ok(&["workflow", "resume", "kill-loop"]).await;
    let out = inst.ok(&["workflow", "run", "--once"]).await;
    assert!(out.contains("delivered 2 event(s)") && out.contains("1 dead"), "{out}");
    let st: Value =
        serde_json::from_str(&inst.ok(&["workflow", "status", "kill-loop", "--json"]).await)
            .unwrap();
    assert_eq!(st["counts"]["done"], 2);
    assert_eq!(st["counts"]["dead"], 1);
    let id = st["dead"][0]["id"].as_str().unwrap().to_string();
    assert!(
        st["dead"][0]["last_error"].as_str().unwrap().contains("contact"),
        "{st}"
    );
    let (code, err) = inst.fails(&["workflow", "replay", "kill-loop"]).await;
    assert_eq!(code, 2, "{err}");
    let out = inst
        .ok(&["workflow", "replay", "kill-loop", "--event", &id])
        .await;
    assert!(out.contains("1 dead event(s)"), "{out}");
    assert_eq!(
        inst.store().get_event(&id).unwrap().state,
        EventState::Pending
    );
}
