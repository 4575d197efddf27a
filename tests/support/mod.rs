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
            "{args:?}\nstdout:\n{stdout}\nstderr:\n{}",
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
