//! PostgreSQL test databases and the one rule on `XMBRIDGE_TEST_PG`.
//!
//! `XMBRIDGE_TEST_PG` set (scripts/test and CI always set it): PostgreSQL is required, and a test
//! that cannot reach it fails with the reason. Unset: the test prints a `SKIPPED:` line and
//! returns. Each test gets a database of its own, created here and dropped when the handle is
//! dropped (also when the test panics), so tests may share a process and a server.

use std::sync::atomic::{AtomicUsize, Ordering};

const VAR: &str = "XMBRIDGE_TEST_PG";
const EXAMPLE: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// The server's URL from `XMBRIDGE_TEST_PG`, or `None` after a skip line naming the variable.
pub fn server_url() -> Option<String> {
    match std::env::var(VAR) {
        Ok(url) if !url.trim().is_empty() => Some(url),
        _ => {
            crate::skipped(&format!(
                "needs PostgreSQL; set {VAR}={EXAMPLE} (scripts/test does)"
            ));
            None
        }
    }
}

/// A client on `url`; a server that `XMBRIDGE_TEST_PG` names but that does not answer fails the
/// test with the reason.
pub async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| {
            panic!("PostgreSQL at {url} ({VAR}) is required and did not answer: {e}")
        });
    tokio::spawn(conn);
    client
}

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// A database of the test's own on the `XMBRIDGE_TEST_PG` server, dropped with this value.
pub struct TestDb {
    server: String,
    name: String,
    url: String,
}

impl TestDb {
    /// Creates `<prefix>_<pid>_<n>`; `None` (after the skip line) when `XMBRIDGE_TEST_PG` is unset.
    pub async fn create(prefix: &str) -> Option<TestDb> {
        assert!(
            prefix
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
            "database prefix {prefix:?}: lowercase letters, digits and '_' only"
        );
        let server = server_url()?;
        let name = format!(
            "{prefix}_{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let url = match server.rsplit_once('/') {
            Some((head, _)) if head.contains("://") => format!("{head}/{name}"),
            _ => panic!("{VAR} must end with a database name, e.g. {EXAMPLE}"),
        };
        let admin = connect(&server).await;
        // One statement per call: several in one would run as a transaction, which PostgreSQL
        // refuses for CREATE and DROP DATABASE.
        for sql in [
            format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
            format!("CREATE DATABASE {name}"),
        ] {
            admin
                .batch_execute(&sql)
                .await
                .unwrap_or_else(|e| panic!("{sql} on {server}: {e}"));
        }
        Some(TestDb { server, name, url })
    }

    /// The connection URL of this database.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The database's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The server's URL (`XMBRIDGE_TEST_PG`), for administrative connections.
    pub fn server_url(&self) -> &str {
        &self.server
    }

    /// A new client on this database.
    pub async fn client(&self) -> tokio_postgres::Client {
        connect(&self.url).await
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let server = self.server.clone();
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        // Drop may run inside the test's runtime, where blocking on a future is not allowed: a
        // thread of its own with a runtime of its own does the work.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                if let Ok((c, conn)) = tokio_postgres::connect(&server, tokio_postgres::NoTls).await
                {
                    tokio::spawn(conn);
                    let _ = c.batch_execute(&sql).await;
                }
            });
        })
        .join();
    }
}
