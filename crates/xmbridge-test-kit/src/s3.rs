//! A local S3 server for the Delta-on-S3 tests: moto's server (the PyPI package
//! `moto[server]`, installed by scripts/test into the Delta readers' virtual environment), one
//! per test on a free loopback port, with `tests/tools/s3.py` (boto3) to make buckets, list
//! keys and copy a table prefix to a local directory for the readers of [`crate::lake`].
//!
//! The same rule as [`crate::lake`]: the server comes from the directory of
//! `XMBRIDGE_TEST_DELTA_PYTHON`; when that is set, a missing server fails the test.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The credentials the tests use (moto accepts any; nothing real).
pub const ACCESS_KEY: &str = "xmbridge-test";
/// See [`ACCESS_KEY`].
pub const SECRET_KEY: &str = "xmbridge-test-secret";

/// A running moto S3 server; killed when dropped.
pub struct S3Server {
    child: Child,
    port: u16,
    python: PathBuf,
    _dir: tempfile::TempDir,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

impl S3Server {
    /// Starts the server beside the readers' `python` and waits until it answers.
    pub fn start(python: &Path) -> S3Server {
        let server = python.with_file_name("moto_server");
        assert!(
            server.is_file(),
            "{} is missing: run scripts/test (it installs moto[server] beside the Delta readers)",
            server.display()
        );
        let dir = tempfile::tempdir().expect("a directory for the S3 server's log");
        let log = std::fs::File::create("/tmp/moto-test.log").expect("the server's log");
        let port = free_port();
        let child = Command::new(&server)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("the log"))
            .stderr(log)
            .spawn()
            .expect("moto_server starts");
        let s = S3Server {
            child,
            port,
            python: python.to_path_buf(),
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "the S3 server on 127.0.0.1:{port} did not start in 30 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        s
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The environment an `xmbridge` process needs to write to this server.
    pub fn env(&self) -> Vec<(String, String)> {
        [
            ("AWS_ENDPOINT_URL", self.endpoint()),
            ("AWS_ALLOW_HTTP", "true".into()),
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY.into()),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY.into()),
            ("AWS_REGION", "us-east-1".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// The same as object_store settings, for a destination opened in the test's own process.
    pub fn settings(&self) -> Vec<(String, String)> {
        self.env()
            .into_iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v))
            .collect()
    }

    fn tool(&self, args: &[&str]) -> String {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/tools/s3.py");
        let out = Command::new(&self.python)
            .arg(&script)
            .args(args)
            .output()
            .expect("run tests/tools/s3.py");
        assert!(
            out.status.success(),
            "s3.py {args:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Makes a bucket.
    pub fn create_bucket(&self, bucket: &str) {
        self.tool(&["mkbucket", &self.endpoint(), bucket]);
    }

    /// The keys under `prefix/` in `bucket`, sorted.
    pub fn keys(&self, bucket: &str, prefix: &str) -> Vec<String> {
        self.tool(&["keys", &self.endpoint(), bucket, prefix])
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// Deletes the object `key`.
    pub fn delete(&self, bucket: &str, key: &str) {
        self.tool(&["delete", &self.endpoint(), bucket, key]);
    }

    /// Copies every object under `prefix/` in `bucket` into `dest` (a fresh directory).
    pub fn mirror(&self, bucket: &str, prefix: &str, dest: &Path) {
        if dest.exists() {
            std::fs::remove_dir_all(dest).expect("the old copy is removed");
        }
        std::fs::create_dir_all(dest).expect("the copy's directory");
        self.tool(&[
            "mirror",
            &self.endpoint(),
            bucket,
            prefix,
            &dest.display().to_string(),
        ]);
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
