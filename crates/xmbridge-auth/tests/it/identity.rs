//! Mutual-TLS identities: client credentials over mTLS against the simulator with the written
//! bundle (encrypted key + pass phrase, plain key), and every bad input with its own error:
//! wrong or missing pass phrase, mismatched key, expired certificate, foreign CA (handshake),
//! untrusted server, X.509 v1, traditional and PBES1 encryption, garbage PEM.

use crate::common;

use common::{assert_debug_clean, assert_no_secret};
use std::path::{Path, PathBuf};
use xmbridge_auth::{
    AuthError, ClientCredentialsSource, ClientIdentity, OAuthClient, OAuthProvider, Roots,
    SecretString, TokenSource,
};
use xmbridge_sim::SimConfig;

fn read(dir: &Path, name: &str) -> Vec<u8> {
    std::fs::read(dir.join(name)).unwrap()
}

fn fixture(name: &str) -> Vec<u8> {
    let p: PathBuf = [env!("CARGO_MANIFEST_DIR"), "tests", "fixtures", name]
        .iter()
        .collect();
    std::fs::read(p).unwrap()
}

struct Mtls {
    t: common::T,
    dir: tempfile::TempDir,
    pass: SecretString,
    pass_text: String,
}

impl Mtls {
    fn d(&self) -> &Path {
        self.dir.path()
    }

    fn roots(&self) -> Roots {
        Roots::Only(read(self.d(), "ca.pem"))
    }

    fn oauth_with(&self, id: &ClientIdentity) -> OAuthClient {
        let http = id.http_client(&self.roots()).unwrap();
        self.t
            .oauth("Brand admin", "acme-mtls")
            .with_http_client(http)
    }

    fn secrets(&self) -> Vec<String> {
        let mut s = self.t.secrets();
        s.push(self.pass_text.trim().to_string());
        s
    }
}

async fn start_mtls() -> Mtls {
    let cfg = SimConfig {
        mtls: true,
        ..Default::default()
    };
    let h = xmbridge_test_kit::sim::qualtrics(cfg).await;
    let dir = tempfile::tempdir().unwrap();
    h.sim
        .pki
        .as_ref()
        .unwrap()
        .write_client_bundle(dir.path())
        .unwrap();
    let pass_text = String::from_utf8(read(dir.path(), "passphrase.txt")).unwrap();
    let pass = SecretString::from(pass_text.clone());
    let id = ClientIdentity::load(
        &read(dir.path(), "client.pem"),
        &read(dir.path(), "client.key"),
        Some(&pass),
    )
    .unwrap();
    let admin = id
        .http_client(&Roots::Only(read(dir.path(), "ca.pem")))
        .unwrap();
    // Even /_sim sits behind mutual TLS: admin calls use the bundle's identity.
    let creds = admin
        .get(format!("{}/_sim/credentials", h.base_url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    Mtls {
        t: common::T {
            h,
            http: admin,
            creds,
        },
        dir,
        pass,
        pass_text,
    }
}

#[tokio::test]
async fn client_credentials_over_mtls_with_encrypted_and_plain_keys() {
    let m = start_mtls().await;
    assert!(m.t.h.base_url.starts_with("https://"));
    let d = m.d();

    let id = ClientIdentity::load(
        &read(d, "client.pem"),
        &read(d, "client.key"),
        Some(&m.pass),
    )
    .unwrap();
    assert!(id.not_after() > std::time::SystemTime::now());
    assert_debug_clean(&id, &m.secrets());
    let src = ClientCredentialsSource::new(m.oauth_with(&id), None);
    let h = src.authorization().await.unwrap();
    let (st, me) = m.t.whoami(&h).await;
    assert_eq!(st, 200, "{me}");
    assert_eq!(me["result"]["userName"], "admin@simbrand.test");

    // The unencrypted key works too, and a pass phrase given for it is ignored.
    for pass in [None, Some(&m.pass)] {
        let id = ClientIdentity::load(&read(d, "client.pem"), &read(d, "client-plain.key"), pass)
            .unwrap();
        let src = ClientCredentialsSource::new(m.oauth_with(&id), Some("read:surveys".into()));
        let h = src.authorization().await.unwrap();
        assert_eq!(m.t.whoami(&h).await.0, 200);
    }

    // from_pem gives the bare reqwest identity.
    let raw = ClientIdentity::from_pem(
        &read(d, "client.pem"),
        &read(d, "client.key"),
        Some(&m.pass),
    )
    .unwrap();
    let c = xmbridge_auth::http_client_builder(None, &m.roots())
        .unwrap()
        .identity(raw)
        .build()
        .unwrap();
    assert_eq!(
        c.get(format!("{}/_sim/mtls", m.t.h.base_url))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

#[tokio::test]
async fn bad_pass_phrases() {
    let m = start_mtls().await;
    let d = m.d();
    let (cert, key) = (read(d, "client.pem"), read(d, "client.key"));

    let e = ClientIdentity::load(&cert, &key, Some(&SecretString::from("not it"))).unwrap_err();
    assert!(matches!(e, AuthError::PassphraseWrong), "{e:?}");
    assert!(e.to_string().contains("pass phrase is wrong"), "{e}");
    assert_no_secret(&e, &m.secrets());

    let e = ClientIdentity::load(&cert, &key, None).unwrap_err();
    assert!(matches!(e, AuthError::PassphraseRequired), "{e:?}");
    assert!(e.to_string().contains("no pass phrase was given"), "{e}");

    // A pass phrase file's trailing newline is forgiven.
    let nl = SecretString::from(format!("{}\n", m.pass_text.trim_end()));
    assert!(ClientIdentity::load(&cert, &key, Some(&nl)).is_ok());
    let crlf = SecretString::from(format!("{}\r\n", m.pass_text.trim_end()));
    assert!(ClientIdentity::load(&cert, &key, Some(&crlf)).is_ok());
}

#[tokio::test]
async fn mismatched_key_and_expired_certificate() {
    let m = start_mtls().await;
    let d = m.d();
    let e =
        ClientIdentity::load(&read(d, "client.pem"), &read(d, "mismatched.key"), None).unwrap_err();
    assert!(matches!(e, AuthError::KeyMismatch), "{e:?}");
    assert!(
        e.to_string().contains("does not match the certificate"),
        "{e}"
    );

    let e = ClientIdentity::load(
        &read(d, "expired-client.pem"),
        &read(d, "expired-client.key"),
        None,
    )
    .unwrap_err();
    match &e {
        AuthError::CertificateExpired { not_after } => {
            assert!(not_after.starts_with("2001-01-01"), "{not_after}")
        }
        other => panic!("{other:?}"),
    }
    assert!(e.to_string().contains("expired on 2001-01-01"), "{e}");

    // Swapped files.
    let e = ClientIdentity::load(&read(d, "client-plain.key"), &read(d, "client.pem"), None)
        .unwrap_err();
    assert!(matches!(e, AuthError::NoCertificate { .. }), "{e:?}");
    assert!(e.to_string().contains("swapped"), "{e}");
}

#[tokio::test]
async fn foreign_ca_and_untrusted_server_fail_at_the_handshake() {
    let m = start_mtls().await;
    let d = m.d();
    // A valid certificate from another CA loads fine, but the server refuses it.
    let id = ClientIdentity::load(
        &read(d, "foreign-client.pem"),
        &read(d, "foreign-client.key"),
        None,
    )
    .unwrap();
    let oauth = m.oauth_with(&id);
    let e = oauth.client_credentials(None).await.unwrap_err();
    assert!(matches!(e, AuthError::TlsHandshake { .. }), "{e:?}");
    assert!(e.to_string().contains("UnknownCA"), "{e}");
    assert!(
        e.to_string().contains("refused the client certificate"),
        "{e}"
    );
    assert!(!e.is_retryable());
    assert_no_secret(&e, &m.secrets());
    eprintln!("foreign CA: {e}");

    // No certificate at all.
    let anon = xmbridge_auth::http_client_builder(None, &m.roots())
        .unwrap()
        .build()
        .unwrap();
    let e =
        m.t.oauth("Brand admin", "acme")
            .with_http_client(anon)
            .client_credentials(None)
            .await
            .unwrap_err();
    assert!(matches!(e, AuthError::TlsHandshake { .. }), "{e:?}");

    // The server's certificate is not trusted by the system store.
    let good = ClientIdentity::load(
        &read(d, "client.pem"),
        &read(d, "client.key"),
        Some(&m.pass),
    )
    .unwrap();
    let sys = good.http_client(&Roots::System).unwrap();
    let e =
        m.t.oauth("Brand admin", "acme")
            .with_http_client(sys)
            .client_credentials(None)
            .await
            .unwrap_err();
    assert!(matches!(e, AuthError::TlsHandshake { .. }), "{e:?}");
    assert!(e.to_string().contains("not trusted"), "{e}");
    eprintln!("untrusted server: {e}");
}

#[test]
fn v1_certificate_traditional_and_pbes1_keys() {
    let pass = SecretString::from("fixture");
    let e = ClientIdentity::load(&fixture("v1-cert.pem"), &fixture("plain.key"), None).unwrap_err();
    assert!(
        matches!(e, AuthError::CertificateNotV3 { version: 1 }),
        "{e:?}"
    );
    assert!(e.to_string().contains("must be v3"), "{e}");

    // The key-format errors come before any key/certificate comparison: any v3 certificate
    // will do.
    let v3 = xmbridge_sim::qualtrics::tls::BrandPki::generate(&SimConfig {
        mtls: true,
        ..Default::default()
    })
    .unwrap();
    let cert = v3.client_pem.as_bytes();

    let e =
        ClientIdentity::load(cert, &fixture("traditional-encrypted.key"), Some(&pass)).unwrap_err();
    assert!(matches!(e, AuthError::TraditionalEncryptedKey), "{e:?}");
    assert!(
        e.to_string()
            .contains("openssl pkcs8 -topk8 -v2 aes-256-cbc"),
        "{e}"
    );

    for f in ["pbes1-md5-des.key", "pbe-sha1-3des.key"] {
        let e = ClientIdentity::load(cert, &fixture(f), Some(&pass)).unwrap_err();
        assert!(
            matches!(e, AuthError::UnsupportedKeyEncryption { .. }),
            "{f}: {e:?}"
        );
        assert!(
            e.to_string()
                .contains("openssl pkcs8 -topk8 -v2 aes-256-cbc"),
            "{e}"
        );
    }
    let e = ClientIdentity::load(cert, &fixture("pbes1-md5-des.key"), None).unwrap_err();
    assert!(e.to_string().contains("PBES1"), "{e}");

    // The fixture key is fine but belongs to another certificate.
    let e = ClientIdentity::load(cert, &fixture("plain.key"), None).unwrap_err();
    assert!(matches!(e, AuthError::KeyMismatch), "{e:?}");
}

#[test]
fn every_wrong_pass_phrase_says_so() {
    // With CBC about 1 in 256 wrong pass phrases still yields valid padding (then non-DER
    // bytes); those must read "wrong pass phrase" too, not some decoding error.
    let key = fixture("pbes2-aes256.key");
    let v3 = xmbridge_sim::qualtrics::tls::BrandPki::generate(&SimConfig {
        mtls: true,
        ..Default::default()
    })
    .unwrap();
    for i in 0..800 {
        let pass = SecretString::from(format!("wrong-{i}"));
        let e = ClientIdentity::load(v3.client_pem.as_bytes(), &key, Some(&pass)).unwrap_err();
        assert!(matches!(e, AuthError::PassphraseWrong), "{i}: {e:?}");
    }
    // The right one decrypts (and then the key does not match this certificate).
    let e = ClientIdentity::load(
        v3.client_pem.as_bytes(),
        &key,
        Some(&SecretString::from("fixture")),
    )
    .unwrap_err();
    assert!(matches!(e, AuthError::KeyMismatch), "{e:?}");
}

#[test]
fn garbage_pem_is_refused_clearly() {
    let key = fixture("plain.key");
    for (input, needle) in [
        (b"hello world".to_vec(), "no '-----BEGIN"),
        (vec![0x30, 0x82, 0x01, 0xff, 0x00], "binary DER"),
        (
            b"-----BEGIN CERTIFICATE-----\nnot base64!!\n-----END CERTIFICATE-----\n".to_vec(),
            "not valid base64",
        ),
        (
            b"-----BEGIN CERTIFICATE-----\nAAAA\n".to_vec(),
            "no END line",
        ),
        (
            b"-----BEGIN CERTIFICATE-----\nMAA=\n-----END CERTIFICATE-----\n".to_vec(),
            "not a valid X.509 certificate",
        ),
    ] {
        let e = ClientIdentity::load(&input, &key, None).unwrap_err();
        assert!(e.to_string().contains(needle), "{needle}: {e}");
    }
    let v3 = xmbridge_sim::qualtrics::tls::BrandPki::generate(&SimConfig {
        mtls: true,
        ..Default::default()
    })
    .unwrap();
    let e = ClientIdentity::load(v3.client_pem.as_bytes(), b"nothing here", None).unwrap_err();
    assert!(
        matches!(
            e,
            AuthError::PemUnreadable {
                what: "key file",
                ..
            }
        ),
        "{e:?}"
    );
    let e = ClientIdentity::load(v3.client_pem.as_bytes(), v3.ca_pem.as_bytes(), None).unwrap_err();
    assert!(matches!(e, AuthError::NoPrivateKey { .. }), "{e:?}");
    let e = xmbridge_auth::http_client_builder(None, &Roots::Only(b"junk".to_vec())).unwrap_err();
    assert!(e.to_string().contains("CA certificate file"), "{e}");
    // A CERTIFICATE block whose content is not a certificate is refused as well.
    let fake = "-----BEGIN CERTIFICATE-----\nZ2FyYmFnZQ==\n-----END CERTIFICATE-----\n";
    let e = xmbridge_auth::check_ca_certificates(fake.as_bytes()).unwrap_err();
    assert!(e.to_string().contains("not a valid X.509"), "{e}");
    let e = xmbridge_auth::check_ca_certificates(v3.client_key_pem.as_bytes()).unwrap_err();
    assert!(
        e.to_string().contains("no '-----BEGIN CERTIFICATE-----'"),
        "{e}"
    );
    assert_eq!(
        xmbridge_auth::check_ca_certificates(v3.ca_pem.as_bytes()).unwrap(),
        1
    );
}

#[test]
fn provider_refuses_plain_http_off_loopback() {
    let e = OAuthProvider::qualtrics(&"http://fra1.qualtrics.com".parse().unwrap()).unwrap_err();
    assert!(e.to_string().contains("only sent over https"), "{e}");
}
