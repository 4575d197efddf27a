//! The test harness shared by the workflow end-to-end tests: one temporary install
//! (`XMBRIDGE_HOME`, working directory, user `pat`) driving the real binary.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use serde_json::Value;
use xmbridge_sim::SimHandle;
use xmbridge_workflows::store::SqliteStore;

pub const BIN: &str = env!("CARGO_BIN_EXE_xmbridge");

/// A temporary installation: its own home, working directory and user.
pub struct Install {
    pub dir: tempfile::TempDir,
}

impl Install {
    pub fn new() -> Install {
        Install {
            dir: tempfile::tempdir().unwrap(),
        }
    }
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
    pub fn home(&self) -> PathBuf {
        self.path("home")
    }
    pub fn cmd(&self, args: &[&str]) -> Command {
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
    pub async fn run(&self, args: &[&str]) -> Output {
        let mut c = self.cmd(args);
        tokio::task::spawn_blocking(move || c.output().unwrap())
            .await
            .unwrap()
    }
    pub async fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args).await;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{args:?} ({})\nstdout:\n{stdout}\nstderr:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    }
    pub async fn fails(&self, args: &[&str]) -> (i32, String) {
        let out = self.run(args).await;
        assert!(!out.status.success(), "{args:?} should fail");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
    pub async fn json(&self, args: &[&str]) -> Value {
        let out = self.ok(args).await;
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: {e}\n{out}"))
    }
    pub async fn connect(&self, h: &SimHandle, name: &str) {
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
    pub fn write_workflow(&self, file: &str, text: &str) {
        let dir = self.home().join("workflows");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(file), text).unwrap();
    }
    pub fn store(&self) -> SqliteStore {
        SqliteStore::open(self.home().join("state.db")).unwrap()
    }
}

/// A child process killed when dropped, so a failing test leaves no runner behind.
pub struct Runner(pub std::process::Child);

impl Runner {
    pub fn kill(&mut self) -> std::io::Result<()> {
        self.0.kill()
    }
    pub fn wait(&mut self) -> std::io::Result<std::process::ExitStatus> {
        self.0.wait()
    }
}

impl Drop for Runner {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `workflow run` on an ephemeral port; returns the child and the receiver's URL.
pub fn start_runner(inst: &Install, extra: &[&str]) -> (Runner, String) {
    use std::io::BufRead;
    let mut args = vec![
        "workflow",
        "run",
        "--listen",
        "127.0.0.1:0",
        "--workers",
        "2",
    ];
    args.extend_from_slice(extra);
    let mut child = inst
        .cmd(&args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = std::io::BufReader::new(stdout).lines();
    let url = loop {
        let line = lines
            .next()
            .expect("workflow run ended before listening")
            .unwrap();
        if let Some(u) = line.strip_prefix("receiving webhooks on ") {
            break u.to_string();
        }
    };
    // Keep draining so the child never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines.by_ref() {});
    (Runner(child), url)
}
