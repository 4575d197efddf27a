//! The destination side of `xmbridge sync` end to end, through the real binary against the
//! simulator over loopback: SQLite paths that would lose the data, one sync at a time per
//! destination (also after a `kill -9`), the PostgreSQL password sources (a throwaway
//! PostgreSQL cluster of the test's own that really asks for a SCRAM password), and TLS to
//! PostgreSQL (an in-test TLS-terminating proxy in front of the real server, with certificates
//! minted by rcgen, and the real server's own TLS).

use crate::support;

use std::io::BufRead;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use support::Install;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use xmbridge_sim::{SimConfig, SimHandle};
use xmbridge_test_kit::pg::{TestDb, connect as pg_client};

async fn sim(export_delay_ms: u64) -> SimHandle {
    xmbridge_test_kit::sim::qualtrics(SimConfig {
        surveys: 1,
        responses: 5,
        contacts: 3,
        export_delay_ms,
        ..SimConfig::default()
    })
    .await
}

/// An installation whose syncs see only the PostgreSQL environment a test gives them: HOME is
/// a directory of the test's own (so no real ~/.pgpass is read) and libpq's variables are unset.
struct Env {
    inst: Install,
    vars: Vec<(String, String)>,
}

impl Env {
    fn new() -> Env {
        let inst = support::install();
        std::fs::create_dir_all(inst.path("userhome")).unwrap();
        Env {
            inst,
            vars: Vec::new(),
        }
    }
    fn path(&self, name: &str) -> PathBuf {
        self.inst.path(name)
    }
    fn user_home(&self) -> PathBuf {
        self.path("userhome")
    }
    fn cmd(&self, args: &[&str], extra: &[(&str, &str)]) -> Command {
        let mut c = self.inst.cmd(args);
        for v in [
            "PGPASSWORD",
            "PGPASSFILE",
            "PGSSLMODE",
            "PGSSLROOTCERT",
            "PGUSER",
            "PGHOST",
        ] {
            c.env_remove(v);
        }
        c.env("HOME", self.user_home());
        for (k, v) in &self.vars {
            c.env(k, v);
        }
        for (k, v) in extra {
            c.env(k, v);
        }
        c
    }
    async fn run(&self, args: &[&str], extra: &[(&str, &str)]) -> Output {
        let mut c = self.cmd(args, extra);
        tokio::task::spawn_blocking(move || c.output().unwrap())
            .await
            .unwrap()
    }
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}
fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}
fn all(o: &Output) -> String {
    format!("{}{}", stdout(o), stderr(o))
}

#[track_caller]
fn assert_ok(o: &Output, what: &str) {
    assert!(
        o.status.success(),
        "{what}: {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        stdout(o),
        stderr(o)
    );
}

#[track_caller]
fn assert_fails(o: &Output, code: i32, what: &str) -> String {
    assert_eq!(
        o.status.code(),
        Some(code),
        "{what}\nstdout:\n{}\nstderr:\n{}",
        stdout(o),
        stderr(o)
    );
    stderr(o)
}

/// Writes a file with the given mode.
fn write_mode(path: &Path, text: &str, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

// ------------------------------------------------------------------ SQLite paths (item 7)

/// An empty SQLite path used to sync into SQLite's anonymous temporary database and exit 0,
/// throwing the data away. Every spelling of "no file" is refused before anything is synced.
#[tokio::test]
async fn sqlite_destinations_without_a_file_are_refused() {
    let h = sim(0).await;
    let e = Env::new();
    e.inst.connect(&h, "acme").await;
    for dest in [
        "sqlite:",
        "sqlite://",
        "sqlite:?max_size_mb=5",
        "sqlite://?max_size_mb=5",
        "sqlite:   ",
        "sqlite::memory:",
    ] {
        let out = e.run(&["sync", "acme", "--destination", dest], &[]).await;
        let err = assert_fails(&out, 2, dest);
        assert!(err.contains("sqlite:PATH"), "{dest}: {err}");
        assert!(
            err.contains("thrown away") || err.contains("throw it away"),
            "{dest}: {err}"
        );
        assert!(
            !stdout(&out).contains("survey_response"),
            "{dest}: nothing is synced"
        );
    }
    // A real path still works.
    let db = e.path("q.db");
    let out = e
        .run(
            &[
                "sync",
                "acme",
                "--destination",
                &format!("sqlite:{}", db.display()),
            ],
            &[],
        )
        .await;
    assert_ok(&out, "sqlite with a path");
}

// ------------------------------------------------------------------ PostgreSQL helpers

/// The `XMBRIDGE_TEST_PG` server: only asked for once the test has its database (the kit skipped
/// the test otherwise).
fn test_pg() -> String {
    xmbridge_test_kit::pg::server_url().expect("XMBRIDGE_TEST_PG names the test server")
}

/// A database of the test's own on the `XMBRIDGE_TEST_PG` server (dropped with it).
struct PgDb {
    name: String,
    admin: String,
    _db: TestDb,
}

impl PgDb {
    /// `None` when `XMBRIDGE_TEST_PG` is unset (the test is skipped).
    async fn create(tag: &str) -> Option<PgDb> {
        let db = TestDb::create(&format!("xmb_cli_dest_{tag}")).await?;
        Some(PgDb {
            name: db.name().to_string(),
            admin: db.server_url().to_string(),
            _db: db,
        })
    }
    /// The database's URL on the same server (or on `host_port`, e.g. a proxy), with `query`.
    fn url_via(&self, host_port: &str, query: &str) -> String {
        let cfg: tokio_postgres::Config = self.admin.parse().unwrap();
        let user = cfg.get_user().unwrap_or("postgres");
        let q = if query.is_empty() {
            String::new()
        } else {
            format!("?{query}")
        };
        format!("postgres://{user}@{host_port}/{}{q}", self.name)
    }
    fn url(&self, query: &str) -> String {
        self.url_via(&upstream().to_string(), query)
    }
    /// Advisory locks granted in this database: (pid, ssl of that session).
    async fn advisory_locks(&self) -> Vec<(i32, Option<bool>)> {
        let c = pg_client(&self.admin).await;
        c.query(
            "SELECT l.pid, s.ssl FROM pg_locks l LEFT JOIN pg_stat_ssl s ON s.pid = l.pid \
             WHERE l.locktype = 'advisory' AND l.granted \
               AND l.database = (SELECT oid FROM pg_database WHERE datname = $1)",
            &[&self.name],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
    }
}

/// The test server's address (loopback only).
fn upstream() -> SocketAddr {
    let cfg: tokio_postgres::Config = test_pg().parse().unwrap();
    let host = match cfg.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        _ => "127.0.0.1".into(),
    };
    let port = cfg.get_ports().first().copied().unwrap_or(5432);
    let ip: std::net::IpAddr = if host == "localhost" {
        "127.0.0.1".parse().unwrap()
    } else {
        host.parse()
            .expect("XMBRIDGE_TEST_PG must name a loopback address")
    };
    assert!(ip.is_loopback(), "tests only talk to loopback");
    SocketAddr::new(ip, port)
}

// ------------------------------------------------------------------ one sync at a time (item 11)

/// A sync running in the background: started, and known to hold the destination (it printed
/// "syncing connection … into …", which it does only after opening — and locking — the
/// destination). Killed when dropped.
struct Running(Child);

impl Running {
    fn start(e: &Env, args: &[&str]) -> Running {
        let mut child = e
            .cmd(args, &[])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let mut lines = std::io::BufReader::new(out).lines();
        loop {
            match lines.next() {
                Some(Ok(l)) if l.starts_with("syncing connection") => break,
                Some(Ok(_)) => {}
                _ => {
                    let _ = child.kill();
                    let mut err = String::new();
                    if let Some(mut s) = child.stderr.take() {
                        use std::io::Read;
                        let _ = s.read_to_string(&mut err);
                    }
                    panic!("the first sync ended before it opened the destination: {err}");
                }
            }
        }
        std::thread::spawn(move || for _ in lines.by_ref() {});
        if let Some(err) = child.stderr.take() {
            std::thread::spawn(move || for _ in std::io::BufReader::new(err).lines() {});
        }
        Running(child)
    }
    /// SIGKILL, and reaped.
    fn kill9(&mut self) {
        self.0.kill().unwrap();
        self.0.wait().unwrap();
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs a command that must end by itself (a second sync must stop at once, not wait for the
/// first); killed after a minute so a regression fails instead of hanging.
async fn run_bounded(e: &Env, args: &[&str]) -> Output {
    let mut child = e
        .cmd(args, &[])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if child.try_wait().unwrap().is_some() {
            return tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
                .await
                .unwrap();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "{args:?} was still running after a minute (it should have stopped because \
                 another sync holds the destination)\nstderr:\n{}",
                stderr(&out)
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Two syncs into one destination: the second stops at once with exit 75 and says why; a
/// `kill -9` of the first leaves nothing locked, and the next sync completes.
async fn one_sync_at_a_time(dest: &str, pg: Option<&PgDb>) {
    // "slow": exports never finish while the test runs, so its sync holds the destination.
    let slow = sim(600_000).await;
    let fast = sim(0).await;
    let e = Env::new();
    e.inst.connect(&slow, "slow").await;
    e.inst.connect(&fast, "fast").await;

    let mut first = Running::start(&e, &["sync", "slow", "--destination", dest]);
    if let Some(db) = pg {
        let locks = db.advisory_locks().await;
        assert_eq!(
            locks.len(),
            1,
            "the running sync holds one advisory lock: {locks:?}"
        );
    }

    let second = run_bounded(&e, &["sync", "fast", "--destination", dest]).await;
    let err = assert_fails(&second, 75, "the second sync into a busy destination");
    assert!(
        err.contains("another sync is writing this destination"),
        "{err}"
    );
    assert!(err.contains("wait for it to finish or stop it"), "{err}");
    if pg.is_some() {
        assert!(err.contains("held by PostgreSQL session"), "{err}");
    } else {
        assert!(err.contains("-xmbridge.lock"), "{err}");
    }
    assert!(!err.contains("database is locked"), "{err}");
    assert!(!err.contains("pg_namespace"), "{err}");

    first.kill9();
    if let Some(db) = pg {
        // The server ends the killed client's session (and its lock) once it sees the socket
        // closed; wait for that, boundedly.
        let deadline = Instant::now() + Duration::from_secs(30);
        while !db.advisory_locks().await.is_empty() {
            assert!(
                Instant::now() < deadline,
                "the killed sync's lock is still held after 30 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let third = run_bounded(&e, &["sync", "fast", "--destination", dest]).await;
    assert_ok(&third, "a sync after the first was killed");
    assert!(
        stdout(&third).contains("survey_response"),
        "{}",
        stdout(&third)
    );
}

#[tokio::test]
async fn sqlite_one_sync_at_a_time_and_a_killed_sync_leaves_no_lock() {
    let e = tempfile::tempdir().unwrap();
    let dest = format!("sqlite:{}", e.path().join("q.db").display());
    one_sync_at_a_time(&dest, None).await;
}

#[tokio::test]
async fn postgres_one_sync_at_a_time_and_a_killed_sync_leaves_no_lock() {
    let Some(db) = PgDb::create("busy").await else {
        return;
    };
    one_sync_at_a_time(&db.url("sslmode=disable"), Some(&db)).await;

    // The lock is per schema: a sync into another schema of the same database is not blocked.
    let slow = sim(600_000).await;
    let e = Env::new();
    e.inst.connect(&slow, "slow").await;
    let dest = db.url("sslmode=disable");
    let _a = Running::start(&e, &["sync", "slow", "--destination", &dest]);
    let _b = Running::start(
        &e,
        &["sync", "slow", "--destination", &dest, "--schema", "other"],
    );
    assert_eq!(db.advisory_locks().await.len(), 2);
    drop((_a, _b));
}

// ------------------------------------------------------------------ TLS (item 6)

/// A CA and a server certificate it signed.
struct Pki {
    ca_pem: String,
    cert_der: rustls::pki_types::CertificateDer<'static>,
    key_der: Vec<u8>,
}

fn mint(names: &[&str]) -> Pki {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, KeyUsagePurpose};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::default();
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "xmbridge test CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().unwrap();
    let mut p =
        CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
    p.distinguished_name
        .push(rcgen::DnType::CommonName, names[0]);
    let cert = p.signed_by(&key, &issuer).unwrap();
    Pki {
        ca_pem: ca_cert.pem(),
        cert_der: cert.der().clone(),
        key_der: key.serialize_der(),
    }
}

/// What a [`proxy`] does with a client's SSLRequest.
#[derive(Clone)]
enum Front {
    /// Answers `S` and terminates TLS with this configuration.
    Tls(tokio_rustls::TlsAcceptor),
    /// Answers `N`, like a server with TLS off.
    NoTls,
    /// Answers `S`, then sends bytes that are not TLS and closes: a broken TLS server.
    BrokenTls,
}

/// A PostgreSQL front on 127.0.0.1:0 in front of the real server: the SSLRequest is answered as
/// [`Front`] says, then the plain protocol is piped to the real server. Counts completed TLS
/// handshakes and plain connections.
struct Proxy {
    addr: SocketAddr,
    handshakes: Arc<AtomicUsize>,
    plain: Arc<AtomicUsize>,
}

const SSL_REQUEST: u32 = 80_877_103;

fn tls_front(p: &Pki) -> Front {
    Front::Tls({
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(p.key_der.clone().into());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![p.cert_der.clone()], key)
            .unwrap();
        tokio_rustls::TlsAcceptor::from(Arc::new(config))
    })
}

async fn proxy(front: Front) -> Proxy {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let handshakes = Arc::new(AtomicUsize::new(0));
    let plain = Arc::new(AtomicUsize::new(0));
    let (h, p) = (handshakes.clone(), plain.clone());
    tokio::spawn(async move {
        loop {
            let Ok((client, _)) = listener.accept().await else {
                return;
            };
            let (front, h, p) = (front.clone(), h.clone(), p.clone());
            tokio::spawn(async move {
                let _ = pipe(client, front, h, p).await;
            });
        }
    });
    Proxy {
        addr,
        handshakes,
        plain,
    }
}

async fn pipe(
    mut client: tokio::net::TcpStream,
    front: Front,
    handshakes: Arc<AtomicUsize>,
    plain: Arc<AtomicUsize>,
) -> std::io::Result<()> {
    let mut head = [0u8; 8];
    client.read_exact(&mut head).await?;
    let mut server = tokio::net::TcpStream::connect(upstream()).await?;
    let is_ssl_request = head[..4] == 8u32.to_be_bytes() && head[4..] == SSL_REQUEST.to_be_bytes();
    if !is_ssl_request {
        // sslmode=disable: the startup message itself; pass it on.
        plain.fetch_add(1, Ordering::SeqCst);
        server.write_all(&head).await?;
        tokio::io::copy_bidirectional(&mut client, &mut server).await?;
        return Ok(());
    }
    match front {
        Front::Tls(acceptor) => {
            client.write_all(b"S").await?;
            let mut tls = acceptor.accept(client).await?;
            handshakes.fetch_add(1, Ordering::SeqCst);
            tokio::io::copy_bidirectional(&mut tls, &mut server).await?;
        }
        Front::NoTls => {
            client.write_all(b"N").await?;
            plain.fetch_add(1, Ordering::SeqCst);
            tokio::io::copy_bidirectional(&mut client, &mut server).await?;
        }
        Front::BrokenTls => {
            client.write_all(b"S").await?;
            let mut hello = [0u8; 5];
            client.read_exact(&mut hello).await?;
            client
                .write_all(b"HTTP/1.1 400 this is not TLS\r\n\r\n")
                .await?;
        }
    }
    Ok(())
}

/// verify-full, verify-ca, require, prefer and disable against a TLS front with certificates of
/// the test's own; a server without TLS; unreadable CA files.
#[tokio::test]
async fn postgres_tls_modes_check_what_libpq_checks() {
    let Some(db) = PgDb::create("tls").await else {
        return;
    };
    let h = sim(0).await;
    let e = Env::new();
    e.inst.connect(&h, "acme").await;

    let good = mint(&["127.0.0.1", "localhost"]);
    let other = mint(&["127.0.0.1", "localhost"]);
    let only_localhost = mint(&["localhost"]);
    let ca = e.path("ca.pem");
    std::fs::write(&ca, &good.ca_pem).unwrap();
    let wrong_ca = e.path("wrong-ca.pem");
    std::fs::write(&wrong_ca, &other.ca_pem).unwrap();
    let localhost_ca = e.path("localhost-ca.pem");
    std::fs::write(&localhost_ca, &only_localhost.ca_pem).unwrap();

    let front = proxy(tls_front(&good)).await;
    let named_front = proxy(tls_front(&only_localhost)).await;
    let no_tls = proxy(Front::NoTls).await;
    let broken = proxy(Front::BrokenTls).await;
    let via = |p: &Proxy, q: String| db.url_via(&p.addr.to_string(), &q);
    let sync = |dest: String| {
        let e = &e;
        async move { e.run(&["sync", "acme", "--destination", &dest], &[]).await }
    };

    // verify-full with the CA that signed the certificate: synced, over TLS.
    let before = front.handshakes.load(Ordering::SeqCst);
    let out = sync(via(
        &front,
        format!("sslmode=verify-full&sslrootcert={}", ca.display()),
    ))
    .await;
    assert_ok(&out, "verify-full with the right CA");
    assert!(front.handshakes.load(Ordering::SeqCst) > before);
    assert_eq!(front.plain.load(Ordering::SeqCst), 0);

    // Another CA: refused, naming the file and what to do.
    let out = sync(via(
        &front,
        format!("sslmode=verify-full&sslrootcert={}", wrong_ca.display()),
    ))
    .await;
    let err = assert_fails(&out, 1, "verify-full with a wrong CA");
    assert!(err.contains("sslmode=verify-full"), "{err}");
    assert!(
        err.contains("not signed by a CA in sslrootcert file"),
        "{err}"
    );
    assert!(err.contains(&wrong_ca.display().to_string()), "{err}");
    // verify-ca checks the chain too.
    let out = sync(via(
        &front,
        format!("sslmode=verify-ca&sslrootcert={}", wrong_ca.display()),
    ))
    .await;
    assert_fails(&out, 1, "verify-ca with a wrong CA");

    // A certificate for "localhost" only, reached as 127.0.0.1: verify-full refuses the name,
    // verify-ca (chain only) accepts it.
    let out = sync(via(
        &named_front,
        format!("sslmode=verify-full&sslrootcert={}", localhost_ca.display()),
    ))
    .await;
    let err = assert_fails(&out, 1, "verify-full with a host name mismatch");
    assert!(err.contains("not valid for name \"127.0.0.1\""), "{err}");
    assert!(err.contains("localhost"), "{err}");
    assert!(err.contains("verify-ca"), "{err}");
    let out = sync(via(
        &named_front,
        format!("sslmode=verify-ca&sslrootcert={}", localhost_ca.display()),
    ))
    .await;
    assert_ok(&out, "verify-ca ignores the host name");

    // require: encrypted, nothing checked (the certificate's CA is unknown to the client).
    let before = front.handshakes.load(Ordering::SeqCst);
    assert_ok(
        &sync(via(&front, "sslmode=require".into())).await,
        "require",
    );
    assert!(front.handshakes.load(Ordering::SeqCst) > before);
    // The default (prefer) uses TLS when offered.
    let before = front.handshakes.load(Ordering::SeqCst);
    assert_ok(&sync(via(&front, String::new())).await, "default sslmode");
    assert!(front.handshakes.load(Ordering::SeqCst) > before);
    // disable: no TLS at all.
    let (hs, pl) = (
        front.handshakes.load(Ordering::SeqCst),
        front.plain.load(Ordering::SeqCst),
    );
    assert_ok(
        &sync(via(&front, "sslmode=disable".into())).await,
        "disable",
    );
    assert_eq!(front.handshakes.load(Ordering::SeqCst), hs);
    assert!(front.plain.load(Ordering::SeqCst) > pl);
    // PGSSLMODE / PGSSLROOTCERT stand in for URL parameters.
    let out = e
        .run(
            &["sync", "acme", "--destination", &via(&front, String::new())],
            &[
                ("PGSSLMODE", "verify-full"),
                ("PGSSLROOTCERT", wrong_ca.to_str().unwrap()),
            ],
        )
        .await;
    assert_fails(&out, 1, "PGSSLMODE=verify-full with a wrong PGSSLROOTCERT");

    // A server without TLS: require refuses it, prefer goes on without.
    let out = sync(via(&no_tls, "sslmode=require".into())).await;
    let err = assert_fails(&out, 1, "require against a server without TLS");
    assert!(
        err.contains("the server does not support TLS but sslmode=require"),
        "{err}"
    );
    let out = sync(via(&no_tls, "sslmode=verify-full".into())).await;
    assert_fails(&out, 1, "verify-full against a server without TLS");
    assert_ok(
        &sync(via(&no_tls, "sslmode=prefer".into())).await,
        "prefer without TLS",
    );
    // A server whose TLS is broken: require fails naming TLS, prefer retries without (libpq).
    let out = sync(via(&broken, "sslmode=require".into())).await;
    let err = assert_fails(&out, 1, "require against a broken TLS server");
    assert!(
        err.contains("TLS handshake failed (sslmode=require)"),
        "{err}"
    );
    let out = sync(via(&broken, "sslmode=prefer".into())).await;
    assert_ok(&out, "prefer against a broken TLS server");
    assert!(
        stderr(&out).contains("sslmode=prefer connects without TLS"),
        "{}",
        stderr(&out)
    );
    assert!(broken.plain.load(Ordering::SeqCst) > 0);

    // Bad TLS settings are usage errors that name the file or the value, before any network.
    let missing = e.path("missing-ca.pem");
    let out = sync(via(
        &front,
        format!("sslmode=verify-full&sslrootcert={}", missing.display()),
    ))
    .await;
    let err = assert_fails(&out, 2, "a CA file that does not exist");
    assert!(err.contains("cannot read sslrootcert file"), "{err}");
    assert!(err.contains(&missing.display().to_string()), "{err}");
    let out = sync(via(&front, "sslmode=verify_full".into())).await;
    let err = assert_fails(&out, 2, "an unknown sslmode");
    assert!(err.contains("verify-full"), "{err}");
}

/// sslmode=require to the real server encrypts the session the sync writes with (seen by the
/// server in pg_stat_ssl), and sslmode=disable does not. Skipped, saying so, when the server
/// has TLS off.
#[tokio::test]
async fn postgres_require_encrypts_the_sync_session() {
    let Some(server) = xmbridge_test_kit::pg::server_url() else {
        return;
    };
    let admin = pg_client(&server).await;
    let ssl: String = admin.query_one("SHOW ssl", &[]).await.unwrap().get(0);
    if ssl != "on" {
        println!(
            "SKIPPED postgres_require_encrypts_the_sync_session: the PostgreSQL server at {} has \
             ssl = {ssl}, so there is no TLS session to observe (the TLS proxy test covers the \
             client side)",
            upstream()
        );
        eprintln!("SKIPPED: the test server has ssl = {ssl}");
        return;
    }
    let Some(db) = PgDb::create("ssl").await else {
        return;
    };
    let slow = sim(600_000).await;
    let e = Env::new();
    e.inst.connect(&slow, "slow").await;
    for (mode, encrypted) in [("require", true), ("disable", false)] {
        let running = Running::start(
            &e,
            &[
                "sync",
                "slow",
                "--destination",
                &db.url(&format!("sslmode={mode}")),
            ],
        );
        let locks = db.advisory_locks().await;
        assert_eq!(locks.len(), 1, "{locks:?}");
        assert_eq!(locks[0].1, Some(encrypted), "sslmode={mode}: {locks:?}");
        drop(running);
        let deadline = Instant::now() + Duration::from_secs(30);
        while !db.advisory_locks().await.is_empty() {
            assert!(Instant::now() < deadline, "lock still held");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

// ------------------------------------------------------------------ passwords (item 6)

/// A throwaway PostgreSQL cluster of the test's own (initdb in a temp dir, on a free loopback
/// port) whose pg_hba.conf asks every connection for a SCRAM-SHA-256 password: the shared test
/// server trusts 127.0.0.1, so it would never prove a password was sent. Stopped when dropped.
struct ScramServer {
    dir: tempfile::TempDir,
    bindir: PathBuf,
    as_postgres: bool,
    port: u16,
}

/// The PostgreSQL server binaries (initdb, pg_ctl), if installed.
fn pg_bindir() -> Option<PathBuf> {
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output()
        && out.status.success()
    {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if dir.join("initdb").exists() {
            return Some(dir);
        }
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|d| d.ok().map(|d| d.path().join("bin")))
        .filter(|b| b.join("initdb").exists())
        .collect();
    found.sort();
    found.pop()
}

const SUPERUSER_PW: &str = "super-Secret-1";

impl ScramServer {
    fn run(&self, tool: &str, args: &[&str]) -> Output {
        let exe = self.bindir.join(tool);
        let mut c = if self.as_postgres {
            // PostgreSQL refuses to run as root.
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(exe);
            c
        } else {
            Command::new(exe)
        };
        c.args(args).stdin(Stdio::null()).output().unwrap()
    }

    fn start() -> Option<ScramServer> {
        let Some(bindir) = pg_bindir() else {
            println!(
                "SKIPPED: no PostgreSQL server binaries (initdb) are installed, so no server that \
                 asks for a password can be started; the password sources are still covered by \
                 the unit tests of xmbridge_destinations::settings and ::pgpass"
            );
            return None;
        };
        // As root, the server runs as the postgres user.
        let uid = Command::new("id").arg("-u").output().unwrap();
        let as_postgres = String::from_utf8_lossy(&uid.stdout).trim() == "0";
        let dir = tempfile::tempdir().unwrap();
        if as_postgres {
            let ids = |flag: &str| -> u32 {
                let o = Command::new("id")
                    .args([flag, "postgres"])
                    .output()
                    .unwrap();
                assert!(o.status.success(), "running as root needs a postgres user");
                String::from_utf8_lossy(&o.stdout).trim().parse().unwrap()
            };
            std::os::unix::fs::chown(dir.path(), Some(ids("-u")), Some(ids("-g"))).unwrap();
        }
        let pwfile = dir.path().join("pw");
        std::fs::write(&pwfile, SUPERUSER_PW).unwrap();
        if as_postgres {
            let o = Command::new("chown")
                .args(["postgres"])
                .arg(&pwfile)
                .output()
                .unwrap();
            assert!(o.status.success());
        }
        let mut server = ScramServer {
            dir,
            bindir,
            as_postgres,
            port: 0,
        };
        let data = server.dir.path().join("data");
        let out = server.run(
            "initdb",
            &[
                "-D",
                data.to_str().unwrap(),
                "-A",
                "scram-sha-256",
                "-U",
                "postgres",
                &format!("--pwfile={}", pwfile.display()),
                "-N",
            ],
        );
        assert!(out.status.success(), "initdb failed: {}", all(&out));
        for _ in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let opts = format!(
                "-p {port} -k {} -c listen_addresses=127.0.0.1 -c ssl=off -c fsync=off -c shared_buffers=16MB",
                server.dir.path().display()
            );
            let log = server.dir.path().join("log");
            let out = server.run(
                "pg_ctl",
                &[
                    "-D",
                    data.to_str().unwrap(),
                    "-o",
                    &opts,
                    "-l",
                    log.to_str().unwrap(),
                    "-w",
                    "start",
                ],
            );
            if out.status.success() {
                server.port = port;
                return Some(server);
            }
        }
        panic!(
            "the throwaway PostgreSQL cluster did not start: {}",
            std::fs::read_to_string(server.dir.path().join("log")).unwrap_or_default()
        );
    }

    fn url(&self, user: &str, db: &str) -> String {
        format!(
            "postgres://{user}@127.0.0.1:{}/{db}?sslmode=disable",
            self.port
        )
    }
}

impl Drop for ScramServer {
    fn drop(&mut self) {
        let data = self.dir.path().join("data");
        let _ = self.run(
            "pg_ctl",
            &["-D", data.to_str().unwrap(), "-m", "immediate", "stop"],
        );
    }
}

/// A password with every character pgpass and URLs must escape.
const LOADER_PW: &str = r"pa:ss\wo@rd#1";

/// Each password source really authenticates against a server that asks for SCRAM, in the
/// documented order; a wrong or missing password is a clear error naming its source; a pgpass
/// file others can read is ignored with a warning; a password in the URL works with a warning;
/// the password never appears in any output.
#[tokio::test]
async fn postgres_password_sources_authenticate_in_order() {
    let Some(server) = ScramServer::start() else {
        return;
    };
    let admin = {
        let (c, conn) = tokio_postgres::connect(
            &format!(
                "postgres://postgres:{SUPERUSER_PW}@127.0.0.1:{}/postgres?sslmode=disable",
                server.port
            ),
            tokio_postgres::NoTls,
        )
        .await
        .unwrap();
        tokio::spawn(conn);
        c
    };
    admin
        .batch_execute(&format!(
            "CREATE ROLE loader LOGIN CREATEDB PASSWORD '{}'",
            LOADER_PW.replace('\'', "''")
        ))
        .await
        .unwrap();
    admin
        .batch_execute("CREATE DATABASE warehouse OWNER loader")
        .await
        .unwrap();

    let h = sim(0).await;
    let e = Env::new();
    e.inst.connect(&h, "acme").await;
    let dest = server.url("loader", "warehouse");
    let right = e.path("right-pw");
    write_mode(&right, &format!("{LOADER_PW}\n"), 0o600);
    let wrong = e.path("wrong-pw");
    write_mode(&wrong, "not-it\n", 0o600);
    let pgpass_line = |pw: &str| {
        format!(
            "# comment\n127.0.0.1:{}:warehouse:loader:{}\n",
            server.port,
            pw.replace('\\', "\\\\").replace(':', "\\:")
        )
    };
    let pgpass = e.path("pgpass");
    write_mode(&pgpass, &pgpass_line(LOADER_PW), 0o600);
    let wrong_pgpass = e.path("wrong-pgpass");
    write_mode(&wrong_pgpass, &pgpass_line("not-it"), 0o600);
    let pgpass_env = pgpass.to_str().unwrap();
    let wrong_pgpass_env = wrong_pgpass.to_str().unwrap();

    let mut outputs = Vec::new();
    let sync = |file: Option<&Path>, url: &str, env: &[(&str, &str)]| {
        let mut args = vec![
            "sync".to_string(),
            "acme".into(),
            "--destination".into(),
            url.to_string(),
        ];
        if let Some(f) = file {
            args.push("--password-file".into());
            args.push(f.display().to_string());
        }
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let e = &e;
        async move {
            let argv: Vec<&str> = args.iter().map(String::as_str).collect();
            let env: Vec<(&str, &str)> =
                env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            e.run(&argv, &env).await
        }
    };

    // No password at all: the server asks, the message says how to give one.
    let out = sync(None, &dest, &[]).await;
    let err = assert_fails(&out, 1, "no password");
    assert!(
        err.contains("the server asks for a password and none was given"),
        "{err}"
    );
    assert!(
        err.contains("--password-file") && err.contains("PGPASSWORD"),
        "{err}"
    );
    outputs.push(out);

    // 1. --password-file, over a wrong PGPASSWORD and a wrong pgpass.
    let out = sync(
        Some(&right),
        &dest,
        &[("PGPASSWORD", "not-it"), ("PGPASSFILE", wrong_pgpass_env)],
    )
    .await;
    assert_ok(&out, "--password-file");
    assert!(!stderr(&out).contains("warning:"), "{}", stderr(&out));
    outputs.push(out);
    // A wrong file: the error says where the password came from.
    let out = sync(Some(&wrong), &dest, &[("PGPASSWORD", LOADER_PW)]).await;
    let err = assert_fails(&out, 1, "a wrong --password-file");
    assert!(err.contains("password authentication failed"), "{err}");
    assert!(
        err.contains(&format!(
            "the password came from --password-file {}",
            wrong.display()
        )),
        "{err}"
    );
    outputs.push(out);
    // A missing file is a usage error naming it.
    let missing = e.path("no-such-pw");
    let out = sync(Some(&missing), &dest, &[]).await;
    let err = assert_fails(&out, 2, "a missing --password-file");
    assert!(err.contains("cannot read --password-file"), "{err}");
    assert!(err.contains(&missing.display().to_string()), "{err}");
    outputs.push(out);

    // 2. The URL's password (percent-encoded) works, with a warning saying what to use.
    let encoded: String = LOADER_PW
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    let in_url = dest.replace("loader@", &format!("loader:{encoded}@"));
    let out = sync(None, &in_url, &[("PGPASSWORD", "not-it")]).await;
    assert_ok(&out, "a password in the URL");
    let warn = stderr(&out);
    assert!(
        warn.contains("warning: the destination URL holds a password"),
        "{warn}"
    );
    assert!(
        warn.contains("`ps`") && warn.contains("--password-file"),
        "{warn}"
    );
    assert!(!stdout(&out).contains(&encoded), "{}", stdout(&out));
    outputs.push(out);

    // 3. PGPASSWORD, over a wrong pgpass.
    let out = sync(
        None,
        &dest,
        &[("PGPASSWORD", LOADER_PW), ("PGPASSFILE", wrong_pgpass_env)],
    )
    .await;
    assert_ok(&out, "PGPASSWORD");
    outputs.push(out);
    let out = sync(None, &dest, &[("PGPASSWORD", "not-it")]).await;
    let err = assert_fails(&out, 1, "a wrong PGPASSWORD");
    assert!(err.contains("the password came from PGPASSWORD"), "{err}");
    outputs.push(out);

    // 4. pgpass: PGPASSFILE, then ~/.pgpass.
    let out = sync(None, &dest, &[("PGPASSFILE", pgpass_env)]).await;
    assert_ok(&out, "PGPASSFILE");
    outputs.push(out);
    let home_pgpass = e.user_home().join(".pgpass");
    write_mode(&home_pgpass, &pgpass_line(LOADER_PW), 0o600);
    let out = sync(None, &dest, &[]).await;
    assert_ok(&out, "~/.pgpass");
    outputs.push(out);
    let out = sync(None, &dest, &[("PGPASSFILE", wrong_pgpass_env)]).await;
    let err = assert_fails(&out, 1, "a wrong pgpass line");
    assert!(
        err.contains(&format!("password file {} line 2", wrong_pgpass.display())),
        "{err}"
    );
    outputs.push(out);
    // Readable by others: ignored with libpq's warning, so no password is sent.
    write_mode(&home_pgpass, &pgpass_line(LOADER_PW), 0o644);
    let out = sync(None, &dest, &[]).await;
    let err = assert_fails(&out, 1, "a group-readable ~/.pgpass");
    assert!(err.contains("group or world access"), "{err}");
    assert!(err.contains("chmod 600"), "{err}");
    assert!(
        err.contains("the server asks for a password and none was given"),
        "{err}"
    );
    outputs.push(out);

    // `bench sync` takes the same flag and passes the file, not the password, to its child.
    let bench = e
        .run(
            &[
                "bench",
                "sync",
                "--destination",
                "postgres",
                "--responses",
                "20",
                "--questions",
                "2",
                "--postgres",
                &server.url("loader", "postgres"),
                "--password-file",
                right.to_str().unwrap(),
                "--json",
            ],
            &[],
        )
        .await;
    assert_ok(&bench, "bench sync with --password-file");
    outputs.push(bench);

    for out in &outputs {
        let text = all(out);
        assert!(!text.contains(LOADER_PW), "the password leaked: {text}");
        assert!(!text.contains(&encoded), "the password leaked: {text}");
    }
}

/// A destination URL that cannot work is bad configuration: exit 2 (as the README promises),
/// not 1, and nothing is synced.
#[tokio::test]
async fn an_unknown_destination_scheme_or_option_exits_2() {
    let h = sim(0).await;
    let e = Env::new();
    e.inst.connect(&h, "acme").await;
    let db = e.path("q.db");
    for (dest, says) in [
        (
            "mysql://root@127.0.0.1/test".to_string(),
            "unknown destination",
        ),
        (format!("sqlite:{}?max_size=5", db.display()), "max_size"),
    ] {
        let out = e.run(&["sync", "acme", "--destination", &dest], &[]).await;
        let err = assert_fails(&out, 2, &dest);
        assert!(err.contains(says), "{dest}: {err}");
        assert!(!err.contains("--help"), "{dest}: {err}");
    }
    assert!(!db.exists(), "nothing was created");
}

/// `ticket` used to be in the catalog, filled by no stream, and `--tables ticket` said "unknown
/// table". It is refused with the reason; no table `ticket` is created by a full sync.
#[tokio::test]
async fn the_ticket_table_is_refused_with_the_reason_and_never_created() {
    let h = sim(0).await;
    let e = Env::new();
    e.inst.connect(&h, "acme").await;
    let db = e.path("q.db");
    let url = format!("sqlite:{}", db.display());
    let out = e
        .run(
            &["sync", "acme", "--destination", &url, "--tables", "ticket"],
            &[],
        )
        .await;
    let err = assert_fails(&out, 2, "--tables ticket");
    assert!(err.contains("table \"ticket\" cannot be selected"), "{err}");
    assert!(err.contains("describes no ticket export"), "{err}");
    assert!(!err.contains("unknown table"), "{err}");
    let out = e.run(&["sync", "acme", "--destination", &url], &[]).await;
    assert_ok(&out, "a full sync");
    let conn = rusqlite::Connection::open(&db).unwrap();
    let tickets: i64 = conn
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE name LIKE '%ticket%'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(tickets, 0, "no always-empty ticket table");
}
