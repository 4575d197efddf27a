//! The brand's PKI and the mutual-TLS listener.
//!
//! With `cfg.mtls` on, the simulated brand behaves like a Qualtrics brand that requires client
//! certificates: every route (API, `/oauth2`, `/_sim`) sits behind a TLS listener that demands a
//! certificate chained to the brand CA; a connection without one never reaches the router.
//! [`BrandPki::generate`] mints the CA, the server certificate, a client identity (its key also as
//! encrypted PKCS#8 with a pass phrase derived from the seed) and negative-test material;
//! [`BrandPki::write_client_bundle`] writes what a client needs; [`serve_tls`] is the accept loop.
//! This module owns only TLS; it must not look at requests (the router does that).
//!
//! Keys come from OS randomness (rcgen), so certificates differ between runs even with the same
//! seed; the pass phrase and the PBES2 salt/IV are seeded.

use super::SharedSim;
use crate::SimError;
use crate::config::SimConfig;
use crate::rng::Rng;
use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, date_time_ymd,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tower::ServiceExt as _;

const TAG_PASS: u64 = 0x7151_0001;
const TAG_PBES2: u64 = 0x7151_0002;
const TAG_SERIAL: u64 = 0x7151_0003;
/// PBKDF2 rounds of the encrypted client key (OpenSSL 3's `pkcs8 -topk8 -v2` default).
const PBKDF2_ROUNDS: u32 = 2048;

/// Everything the brand's mutual TLS needs, in PEM (and DER for the server side).
pub struct BrandPki {
    /// The brand's CA certificate, PEM: clients trust the server with it and their certificates chain to it.
    pub ca_pem: String,
    ca_der: CertificateDer<'static>,
    server_der: CertificateDer<'static>,
    server_key_der: Vec<u8>,
    /// The valid client certificate (v3, clientAuth), signed by the brand CA.
    pub client_pem: String,
    /// Its key as plain PKCS#8 PEM (`PRIVATE KEY`).
    pub client_key_pem: String,
    /// The same key as `ENCRYPTED PRIVATE KEY` (PBES2 / PBKDF2-HMAC-SHA256 / AES-256-CBC).
    pub client_key_encrypted_pem: String,
    /// Pass phrase of [`Self::client_key_encrypted_pem`], derived from the seed.
    pub passphrase: String,
    /// Signed by the brand CA but expired (notAfter 2001-01-01).
    pub expired_pem: String,
    pub(crate) expired_key_pem: String,
    /// Valid, but signed by a different CA.
    pub foreign_pem: String,
    pub(crate) foreign_key_pem: String,
    /// A key that does not belong to [`Self::client_pem`].
    pub mismatched_key_pem: String,
}

impl std::fmt::Debug for BrandPki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Keys and the pass phrase stay out of logs.
        f.debug_struct("BrandPki").finish_non_exhaustive()
    }
}

fn tls_err(what: &str) -> impl FnOnce(rcgen::Error) -> SimError + '_ {
    move |e| SimError::Tls(format!("{what}: {e}"))
}

fn ca_params(cn: String, serial: u64) -> CertificateParams {
    let mut p = CertificateParams::default();
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.distinguished_name.push(DnType::CommonName, cn);
    p.distinguished_name
        .push(DnType::OrganizationName, "xmbridge simulator");
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p.serial_number = Some(serial.into());
    p.not_before = date_time_ymd(2000, 1, 1);
    p.not_after = date_time_ymd(2099, 12, 31);
    p
}

fn client_params(cn: String, serial: u64) -> CertificateParams {
    let mut p = CertificateParams::default();
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.distinguished_name.push(DnType::CommonName, cn);
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    p.use_authority_key_identifier_extension = true;
    p.serial_number = Some(serial.into());
    p.not_before = date_time_ymd(2000, 1, 1);
    p.not_after = date_time_ymd(2099, 12, 31);
    p
}

/// `der` (plain PKCS#8) encrypted with PBES2 / PBKDF2-HMAC-SHA256 / AES-256-CBC, as PEM.
pub fn encrypt_pkcs8_pem(der: &[u8], passphrase: &str, seed: u64) -> Result<String, SimError> {
    use pkcs8::der::pem::LineEnding;
    let mut r = Rng::derive(seed, &[TAG_PBES2]);
    let salt: Vec<u8> = (0..16).map(|_| r.next_u64() as u8).collect();
    let mut iv = [0u8; 16];
    for b in &mut iv {
        *b = r.next_u64() as u8;
    }
    let params =
        pkcs8::pkcs5::pbes2::Parameters::generate_pbkdf2_sha256_aes256cbc(PBKDF2_ROUNDS, &salt, iv)
            .map_err(|e| SimError::Tls(format!("PBES2 parameters: {e}")))?;
    let info = pkcs8::PrivateKeyInfoRef::try_from(der)
        .map_err(|e| SimError::Tls(format!("client key is not PKCS#8: {e}")))?;
    let doc = info
        .encrypt_with_params(params, passphrase)
        .map_err(|e| SimError::Tls(format!("encrypting the client key: {e}")))?;
    let pem = doc
        .to_pem("ENCRYPTED PRIVATE KEY", LineEnding::LF)
        .map_err(|e| SimError::Tls(format!("encoding the encrypted key: {e}")))?;
    Ok(pem.to_string())
}

impl BrandPki {
    /// Mints the brand CA, the server certificate and the client material.
    pub fn generate(cfg: &SimConfig) -> Result<Self, SimError> {
        let brand = &cfg.brand_id;
        let mut serials = Rng::derive(cfg.seed, &[TAG_SERIAL]);
        // Positive serials of 63 bits (DER INTEGER without a sign problem).
        let mut serial = move || serials.next_u64() >> 1;

        let ca_key = KeyPair::generate().map_err(tls_err("CA key"))?;
        let ca_p = ca_params(format!("{brand} Qualtrics brand CA"), serial());
        let ca_cert = ca_p
            .self_signed(&ca_key)
            .map_err(tls_err("CA certificate"))?;
        let ca = Issuer::new(ca_p, ca_key);

        let server_key = KeyPair::generate().map_err(tls_err("server key"))?;
        let mut sp = CertificateParams::new(vec![
            "127.0.0.1".to_string(),
            "::1".to_string(),
            "localhost".to_string(),
            "*.localhost".to_string(),
            "*.qualtrics.com".to_string(),
        ])
        .map_err(tls_err("server names"))?;
        sp.distinguished_name = rcgen::DistinguishedName::new();
        sp.distinguished_name
            .push(DnType::CommonName, format!("{brand}.qualtrics.com"));
        sp.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        sp.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        sp.use_authority_key_identifier_extension = true;
        sp.serial_number = Some(serial().into());
        sp.not_before = date_time_ymd(2000, 1, 1);
        sp.not_after = date_time_ymd(2099, 12, 31);
        let server_cert = sp
            .signed_by(&server_key, &ca)
            .map_err(tls_err("server certificate"))?;

        let client_key = KeyPair::generate().map_err(tls_err("client key"))?;
        let client_cert = client_params(format!("{brand} API client"), serial())
            .signed_by(&client_key, &ca)
            .map_err(tls_err("client certificate"))?;

        let expired_key = KeyPair::generate().map_err(tls_err("expired client key"))?;
        let mut ep = client_params(format!("{brand} expired API client"), serial());
        ep.not_after = date_time_ymd(2001, 1, 1);
        let expired_cert = ep
            .signed_by(&expired_key, &ca)
            .map_err(tls_err("expired client certificate"))?;

        let foreign_ca_key = KeyPair::generate().map_err(tls_err("foreign CA key"))?;
        let foreign_ca = Issuer::new(
            ca_params("Some other brand CA".into(), serial()),
            foreign_ca_key,
        );
        let foreign_key = KeyPair::generate().map_err(tls_err("foreign client key"))?;
        let foreign_cert = client_params(format!("{brand} foreign API client"), serial())
            .signed_by(&foreign_key, &foreign_ca)
            .map_err(tls_err("foreign client certificate"))?;

        let mismatched = KeyPair::generate().map_err(tls_err("mismatched key"))?;

        let passphrase = Rng::derive(cfg.seed, &[TAG_PASS]).alnum(24);
        let client_key_encrypted_pem =
            encrypt_pkcs8_pem(&client_key.serialize_der(), &passphrase, cfg.seed)?;

        Ok(BrandPki {
            ca_pem: ca_cert.pem(),
            ca_der: ca_cert.der().clone(),
            server_der: server_cert.der().clone(),
            server_key_der: server_key.serialize_der(),
            client_pem: client_cert.pem(),
            client_key_pem: client_key.serialize_pem(),
            client_key_encrypted_pem,
            passphrase,
            expired_pem: expired_cert.pem(),
            expired_key_pem: expired_key.serialize_pem(),
            foreign_pem: foreign_cert.pem(),
            foreign_key_pem: foreign_key.serialize_pem(),
            mismatched_key_pem: mismatched.serialize_pem(),
        })
    }

    /// Writes the client bundle into `dir` (created if missing); key files get mode 0600.
    /// Returns the paths written.
    pub fn write_client_bundle(&self, dir: &Path) -> Result<Vec<PathBuf>, SimError> {
        std::fs::create_dir_all(dir).map_err(|source| SimError::Write {
            path: dir.to_path_buf(),
            source,
        })?;
        let files: [(&str, &str, bool); 11] = [
            ("ca.pem", &self.ca_pem, false),
            ("client.pem", &self.client_pem, false),
            ("client.key", &self.client_key_encrypted_pem, true),
            ("client-plain.key", &self.client_key_pem, true),
            ("passphrase.txt", &self.passphrase, true),
            ("expired-client.pem", &self.expired_pem, false),
            ("expired-client.key", &self.expired_key_pem, true),
            ("foreign-client.pem", &self.foreign_pem, false),
            ("foreign-client.key", &self.foreign_key_pem, true),
            ("mismatched.key", &self.mismatched_key_pem, true),
            ("README.txt", BUNDLE_README, false),
        ];
        let mut written = Vec::with_capacity(files.len());
        for (name, content, secret) in files {
            let path = dir.join(name);
            write_file(&path, content.as_bytes(), secret).map_err(|source| SimError::Write {
                path: path.clone(),
                source,
            })?;
            written.push(path);
        }
        Ok(written)
    }

    /// The TLS acceptor: server certificate for loopback and `*.qualtrics.com`, client
    /// certificates required and verified against the brand CA (expired ones are refused).
    pub fn acceptor(&self) -> Result<tokio_rustls::TlsAcceptor, SimError> {
        // An explicit provider: never depend on which rustls provider features the graph enables.
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(self.ca_der.clone())
            .map_err(|e| SimError::Tls(format!("brand CA: {e}")))?;
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .build()
        .map_err(|e| SimError::Tls(format!("client verifier: {e}")))?;
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.server_key_der.clone()));
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| SimError::Tls(format!("protocol versions: {e}")))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(vec![self.server_der.clone(), self.ca_der.clone()], key)
            .map_err(|e| SimError::Tls(format!("server certificate: {e}")))?;
        // HTTP/1.1 only, like the plain listener: the same wire behaviour with and without TLS.
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
    }
}

const BUNDLE_README: &str = "\
Client material for the xmbridge Qualtrics simulator's mutual TLS (test material only).

ca.pem               brand CA: trust it to verify the simulator's server certificate
client.pem           client certificate signed by the brand CA
client.key           its key, encrypted PKCS#8 (PBES2/PBKDF2-SHA256/AES-256-CBC); pass phrase in passphrase.txt
client-plain.key     the same key unencrypted
expired-client.*     signed by the brand CA but expired: refused
foreign-client.*     signed by another CA: refused
mismatched.key       a key that does not belong to client.pem
";

fn write_file(path: &Path, content: &[u8], secret: bool) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        opts.mode(if secret { 0o600 } else { 0o644 });
    }
    let mut f = opts.open(path)?;
    #[cfg(unix)]
    if secret {
        // `mode` only applies on creation; tighten a file that already existed.
        use std::os::unix::fs::PermissionsExt as _;
        f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    f.write_all(content)?;
    f.sync_all()
}

/// Accepts TCP connections, completes the TLS handshake (a failed one closes just that
/// connection), and serves the router on each until `shutdown` fires; then asks open
/// connections to finish and waits for them a few seconds at most.
pub async fn serve_tls(
    listener: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    app: Router,
    mut shutdown: tokio::sync::oneshot::Receiver<()>,
) {
    let svc = crate::normalize::per_connection(app);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut conns = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            accepted = listener.accept() => {
                let (tcp, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::debug!("mtls: accept failed: {e}");
                        // Avoid a hot loop when out of file descriptors.
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                };
                let acceptor = acceptor.clone();
                let svc = svc.clone();
                let mut stop = stop_rx.clone();
                conns.spawn(async move {
                    let tls = match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            tracing::debug!("mtls: handshake with {peer} failed: {e}");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!("mtls: handshake with {peer} timed out");
                            return;
                        }
                    };
                    let svc = svc.map_request(move |req: axum::http::Request<Incoming>| {
                        let mut req = req.map(Body::new);
                        // Same extension as the plain listener's `into_make_service_with_connect_info`.
                        req.extensions_mut().insert(ConnectInfo(peer));
                        req
                    });
                    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    let conn = builder.serve_connection_with_upgrades(
                        TokioIo::new(tls),
                        TowerToHyperService::new(svc),
                    );
                    tokio::pin!(conn);
                    tokio::select! {
                        r = conn.as_mut() => {
                            if let Err(e) = r {
                                tracing::debug!("mtls: connection with {peer} ended: {e}");
                            }
                        }
                        _ = stop.changed() => {
                            conn.as_mut().graceful_shutdown();
                            let _ = conn.await;
                        }
                    }
                });
            }
        }
    }
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while conns.join_next().await.is_some() {}
    })
    .await;
}

/// `GET /_sim/mtls`: whether mutual TLS is on, and the client material (the simulator is a test
/// tool; reaching this endpoint over mTLS already needs a valid client certificate).
async fn mtls_info(State(sim): State<SharedSim>) -> Response {
    match &sim.pki {
        None => axum::Json(json!({"enabled": false})).into_response(),
        Some(p) => axum::Json(json!({
            "enabled": true,
            "ca_pem": p.ca_pem,
            "client_pem": p.client_pem,
            "client_key_encrypted_pem": p.client_key_encrypted_pem,
            "passphrase": p.passphrase,
        }))
        .into_response(),
    }
}

pub(crate) fn admin_routes() -> Router<SharedSim> {
    Router::new().route("/_sim/mtls", get(mtls_info))
}
