//! A temporary installation driving the real `xmbridge` binary: its own `XMBRIDGE_HOME`, working
//! directory and (optionally) user and master key, and nothing inherited from the developer's
//! `XMBRIDGE_*` environment.

use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;
use xmbridge_sim::SimHandle;

/// One independent installation in a temporary directory.
///
/// Layout: `home/` is `XMBRIDGE_HOME`; commands run in the working directory (the temporary
/// directory itself unless [`Install::in_dir`] names a subdirectory), where [`Install::file`]
/// writes.
pub struct Install {
    /// The temporary directory (removed when the installation is dropped).
    pub dir: tempfile::TempDir,
    bin: PathBuf,
    work_dir: PathBuf,
    user: Option<String>,
    /// `XMBRIDGE_MASTER_KEY` of every command (removed when `None`).
    pub master_key: Option<String>,
    /// More environment for every command ([`Install::set_env`]).
    env: Vec<(String, String)>,
}

impl Install {
    /// An installation running `bin` (integration tests pass `env!("CARGO_BIN_EXE_xmbridge")`).
    pub fn new(bin: impl Into<PathBuf>) -> Install {
        let dir = tempfile::tempdir().expect("a temporary directory");
        Install {
            work_dir: dir.path().to_path_buf(),
            dir,
            bin: bin.into(),
            user: None,
            master_key: None,
            env: Vec::new(),
        }
    }

    /// Sets `key=value` in the environment of every command from now on.
    pub fn set_env(&mut self, key: &str, value: &str) {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.to_string(), value.to_string()));
    }

    /// Runs every command as `XMBRIDGE_USER=user`.
    pub fn user(mut self, user: &str) -> Install {
        self.user = Some(user.to_string());
        self
    }

    /// Runs every command in the subdirectory `name` (created) instead of the root.
    pub fn in_dir(mut self, name: &str) -> Install {
        self.work_dir = self.path(name);
        std::fs::create_dir_all(&self.work_dir).expect("the working directory");
        self
    }

    /// `name` under the installation's root.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `XMBRIDGE_HOME`.
    pub fn home(&self) -> PathBuf {
        self.path("home")
    }

    /// The directory commands run in.
    pub fn work_dir(&self) -> &Path {
        &self.work_dir
    }

    /// Writes `content` to `name` in the working directory (creating parents); returns its path.
    pub fn file(&self, name: &str, content: &str) -> PathBuf {
        let p = self.work_dir.join(name);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).expect("the file's directory");
        }
        std::fs::write(&p, content).expect("the file is written");
        p
    }

    /// Writes a workflow file into `XMBRIDGE_HOME/workflows`.
    pub fn write_workflow(&self, file: &str, text: &str) {
        let dir = self.home().join("workflows");
        std::fs::create_dir_all(&dir).expect("the workflows directory");
        std::fs::write(dir.join(file), text).expect("the workflow is written");
    }

    /// The command `xmbridge args…` of this installation, stdin closed.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.bin);
        c.args(args)
            .current_dir(&self.work_dir)
            .stdin(Stdio::null());
        // Whatever the developer's shell holds must not leak into a test (AWS_* could point a
        // Delta destination at a real bucket).
        for (key, _) in std::env::vars_os() {
            let key_text = key.to_string_lossy();
            if key_text.starts_with("XMBRIDGE_") || key_text.starts_with("AWS_") {
                c.env_remove(&key);
            }
        }
        for (key, value) in &self.env {
            c.env(key, value);
        }
        c.env_remove("RUST_LOG").env("XMBRIDGE_HOME", self.home());
        if let Some(user) = &self.user {
            c.env("XMBRIDGE_USER", user);
        }
        if let Some(key) = &self.master_key {
            c.env("XMBRIDGE_MASTER_KEY", key);
        }
        c
    }

    /// Runs `xmbridge args…` on a blocking thread so in-process simulators keep serving.
    pub async fn run(&self, args: &[&str]) -> Run {
        let mut c = self.cmd(args);
        let out = tokio::task::spawn_blocking(move || c.output())
            .await
            .expect("the command's thread")
            .expect("the binary starts");
        Run(out)
    }

    /// Runs `xmbridge args…`, asserts success and returns stdout.
    pub async fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args).await;
        assert!(
            out.status.success(),
            "{args:?} ({})\nstdout:\n{}\nstderr:\n{}",
            out.status,
            out.stdout(),
            out.stderr()
        );
        out.stdout()
    }

    /// Runs `xmbridge args…`, asserts failure and returns the exit code and stderr.
    pub async fn fails(&self, args: &[&str]) -> (i32, String) {
        let out = self.run(args).await;
        assert!(!out.status.success(), "{args:?} should fail");
        (out.code(), out.stderr())
    }

    /// Runs `xmbridge args…`, asserts success and parses stdout as JSON.
    pub async fn json(&self, args: &[&str]) -> Value {
        let out = self.ok(args).await;
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}):\n{out}"))
    }

    /// Adds a token connection named `name` to the Qualtrics simulator.
    pub async fn connect(&self, h: &SimHandle, name: &str) {
        self.connect_with(h, name, &[]).await;
    }

    /// [`Install::connect`] with more arguments (`--state URL`, say).
    pub async fn connect_with(&self, h: &SimHandle, name: &str, extra: &[&str]) {
        let tf = self.path(&format!("{name}.token"));
        std::fs::write(&tf, h.sim.cfg.admin_token()).expect("the token file is written");
        let tf = tf.to_str().expect("a UTF-8 temporary path");
        let mut args = vec![
            "connection",
            "add",
            "qualtrics",
            name,
            "--no-test",
            "--url",
            &h.base_url,
            "--api-token-file",
            tf,
        ];
        args.extend_from_slice(extra);
        self.ok(&args).await;
    }
}

/// A finished command: its [`Output`] and the checks tests make on it.
pub struct Run(pub Output);

impl Deref for Run {
    type Target = Output;
    fn deref(&self) -> &Output {
        &self.0
    }
}

impl Run {
    /// The exit code (-1 when killed by a signal).
    pub fn code(&self) -> i32 {
        self.0.status.code().unwrap_or(-1)
    }
    /// Standard output, lossily decoded.
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.0.stdout).into_owned()
    }
    /// Standard error, lossily decoded.
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.0.stderr).into_owned()
    }
    /// Stdout then stderr.
    pub fn all(&self) -> String {
        format!("{}{}", self.stdout(), self.stderr())
    }
    /// Asserts exit code 0.
    #[track_caller]
    pub fn ok(&self) -> &Self {
        self.expect(0, &[])
    }
    /// Asserts exit code `code` and `needle` in stdout or stderr.
    #[track_caller]
    pub fn fails(&self, code: i32, needle: &str) -> &Self {
        self.expect(code, &[needle])
    }
    /// Asserts exit code `code` and every needle in stdout or stderr.
    #[track_caller]
    pub fn expect(&self, code: i32, needles: &[&str]) -> &Self {
        assert_eq!(
            self.code(),
            code,
            "stdout:\n{}\nstderr:\n{}",
            self.stdout(),
            self.stderr()
        );
        let all = self.all();
        for n in needles {
            assert!(all.contains(n), "expected {n:?} in:\n{all}");
        }
        self
    }
}

/// A child process killed when dropped, so a failing test leaves no runner behind.
pub struct Runner(pub std::process::Child);

impl Runner {
    /// Sends SIGKILL.
    pub fn kill(&mut self) -> std::io::Result<()> {
        self.0.kill()
    }
    /// Waits for the process to exit.
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

/// Starts `workflow run` on an ephemeral loopback port; returns the child and the receiver's URL.
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
        .expect("workflow run starts");
    let stdout = child.stdout.take().expect("piped stdout");
    let runner = Runner(child);
    let mut lines = std::io::BufReader::new(stdout).lines();
    let url = loop {
        let line = lines
            .next()
            .expect("workflow run ended before listening")
            .expect("workflow run's stdout");
        if let Some(u) = line.strip_prefix("receiving webhooks on ") {
            break u.to_string();
        }
    };
    // Keep draining so the child never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines.by_ref() {});
    (runner, url)
}
