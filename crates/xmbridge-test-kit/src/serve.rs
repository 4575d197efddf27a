//! `xmbridge serve` as a child process of a test: started with its arguments, its first stdout
//! line (`listening on URL`) read, its output kept, and stopped with SIGTERM or SIGKILL.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::cli::Install;

/// A running `xmbridge serve`.
pub struct Served {
    /// The URL of its first line (`http://127.0.0.1:PORT`, `https://…` with TLS).
    pub url: String,
    child: Child,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
}

/// Starts `xmbridge serve --listen 127.0.0.1:0 args…` in `inst` and waits (up to 60 s) for its
/// first stdout line, which must be exactly `listening on URL`. Panics with the server's output
/// when it ends or says something else first.
pub async fn start_server(inst: &Install, args: &[&str]) -> Served {
    let mut argv = vec!["serve", "--listen", "127.0.0.1:0"];
    argv.extend_from_slice(args);
    start_server_exact(inst, &argv).await
}

/// Like [`start_server`] with the whole command line given (`serve …`, its own `--listen`).
pub async fn start_server_exact(inst: &Install, argv: &[&str]) -> Served {
    let mut child = inst
        .cmd(argv)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("xmbridge serve starts");
    let stdout = child.stdout.take().expect("piped stdout");
    let stderr = child.stderr.take().expect("piped stderr");
    let err_text = Arc::new(Mutex::new(String::new()));
    {
        let err_text = err_text.clone();
        std::thread::spawn(move || {
            let mut r = BufReader::new(stderr);
            let mut buf = [0u8; 4096];
            while let Ok(n) = r.read(&mut buf) {
                if n == 0 {
                    break;
                }
                err_text
                    .lock()
                    .expect("stderr buffer")
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
    }
    let out_text = Arc::new(Mutex::new(String::new()));
    let (tx, rx) = std::sync::mpsc::channel::<Option<String>>();
    {
        let out_text = out_text.clone();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let first = lines.next().and_then(|l| l.ok());
            // Into the buffer before the caller hears of it, so `stdout()` holds it at once.
            if let Some(f) = &first {
                let mut t = out_text.lock().expect("stdout buffer");
                t.push_str(f);
                t.push('\n');
            }
            let _ = tx.send(first);
            // Keep draining so the child never blocks on a full pipe.
            for line in lines.map_while(Result::ok) {
                let mut t = out_text.lock().expect("stdout buffer");
                t.push_str(&line);
                t.push('\n');
            }
        });
    }
    let first = tokio::task::spawn_blocking(move || rx.recv_timeout(Duration::from_secs(60)))
        .await
        .expect("the reader thread");
    let mut served = Served {
        url: String::new(),
        child,
        stdout: out_text,
        stderr: err_text,
    };
    match first {
        Ok(Some(line)) if line.starts_with("listening on ") => {
            served.url = line["listening on ".len()..].to_string();
            served
        }
        other => {
            let _ = served.child.kill();
            let _ = served.child.wait();
            std::thread::sleep(Duration::from_millis(100));
            panic!(
                "xmbridge serve {argv:?} did not start: first line {other:?}\nstderr:\n{}",
                served.stderr()
            );
        }
    }
}

impl Served {
    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `url` + `path`.
    pub fn at(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }

    /// Everything it printed on stdout so far.
    pub fn stdout(&self) -> String {
        self.stdout.lock().expect("stdout buffer").clone()
    }

    /// Waits up to `timeout` for `needle` on stdout (lines after the first come a moment later);
    /// panics with the output otherwise.
    pub async fn wait_stdout(&self, needle: &str, timeout: Duration) -> String {
        let start = Instant::now();
        loop {
            let out = self.stdout();
            if out.contains(needle) {
                return out;
            }
            if start.elapsed() > timeout {
                panic!(
                    "{needle:?} not on stdout within {timeout:?}\nstdout:\n{out}\nstderr:\n{}",
                    self.stderr()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Everything it printed on stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().expect("stderr buffer").clone()
    }

    /// Sends SIGTERM (a graceful stop).
    pub fn terminate(&self) {
        self.signal("TERM");
    }

    /// Sends SIGSTOP: the process freezes where it is, its sockets and locks held, as a
    /// machine that stalls or a long garbage-collection-like pause would.
    pub fn freeze(&self) {
        self.signal("STOP");
    }

    /// Sends SIGCONT: a frozen process goes on from where it stopped.
    pub fn thaw(&self) {
        self.signal("CONT");
    }

    fn signal(&self, name: &str) {
        let status = std::process::Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .expect("kill(1) runs");
        assert!(status.success(), "kill -{name} failed");
    }

    /// Sends SIGKILL (no chance to clean up) and reaps the process.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits up to `timeout` for the process to end; panics (after SIGKILL) if it does not.
    pub async fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("the child's status") {
                // Let the reader threads take the last output.
                tokio::time::sleep(Duration::from_millis(100)).await;
                return status;
            }
            if start.elapsed() > timeout {
                self.kill();
                panic!(
                    "xmbridge serve did not stop within {timeout:?}\nstdout:\n{}\nstderr:\n{}",
                    self.stdout(),
                    self.stderr()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
