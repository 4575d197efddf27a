//! Mutual TLS end to end: the written client bundle works, anything else is refused at the handshake.

use pkcs8::der::pem::LineEnding;
use reqwest::{Certificate, Client, Identity};
use std::path::Path;
use xmbridge_sim::{SimConfig, SimHandle};

async fn start() -> (SimHandle, String) {
    let cfg = SimConfig {
        mtls: true,
        ..Default::default()
    };
    let token = cfg.admin_token();
    let h = xmbridge_test_kit::sim::qualtrics(cfg).await;
    assert!(h.base_url.starts_with("https://"));
    (h, token)
}

fn read(dir: &Path, name: &str) -> Vec<u8> {
    std::fs::read(dir.join(name)).unwrap()
}

/// Decrypts an `ENCRYPTED PRIVATE KEY` PEM into a plain `PRIVATE KEY` PEM, as a client would.
fn decrypt_key(pem: &[u8], pass: &str) -> Result<String, pkcs8::Error> {
    let text = std::str::from_utf8(pem).unwrap();
    let (label, doc) = pkcs8::Document::from_pem(text).unwrap();
    assert_eq!(label, "ENCRYPTED PRIVATE KEY");
    let enc = pkcs8::EncryptedPrivateKeyInfoRef::try_from(doc.as_bytes())?;
    let plain = enc.decrypt(pass)?;
    Ok(plain.to_pem("PRIVATE KEY", LineEnding::LF)?.to_string())
}

fn client(ca: &[u8], identity: Option<Vec<u8>>) -> Client {
    let mut b = Client::builder().tls_certs_only([Certificate::from_pem(ca).unwrap()]);
    if let Some(id) = identity {
        b = b.identity(Identity::from_pem(&id).unwrap());
    }
    b.build().unwrap()
}

fn pem_pair(cert: &[u8], key: &[u8]) -> Vec<u8> {
    let mut v = cert.to_vec();
    v.push(b'\n');
    v.extend_from_slice(key);
    v
}

async fn whoami(c: &Client, h: &SimHandle, token: &str) -> reqwest::Result<reqwest::Response> {
    c.get(format!("{}/whoami", h.api_url()))
        .header("X-API-TOKEN", token)
        .send()
        .await
}

#[tokio::test]
async fn bundle_works_and_everything_else_is_refused() {
    let (h, token) = start().await;
    let dir = tempfile::tempdir().unwrap();
    let pki = h.sim.pki.as_ref().unwrap();
    let written = pki.write_client_bundle(dir.path()).unwrap();
    for name in [
        "ca.pem",
        "client.pem",
        "client.key",
        "client-plain.key",
        "passphrase.txt",
        "expired-client.pem",
        "expired-client.key",
        "foreign-client.pem",
        "foreign-client.key",
        "mismatched.key",
    ] {
        assert!(written.contains(&dir.path().join(name)), "{name} missing");
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        for key in [
            "client.key",
            "client-plain.key",
            "passphrase.txt",
            "mismatched.key",
        ] {
            let mode = std::fs::metadata(dir.path().join(key))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{key}");
        }
    }
    let d = dir.path();
    let ca = read(d, "ca.pem");
    let pass = String::from_utf8(read(d, "passphrase.txt")).unwrap();

    // The encrypted key from the bundle, decrypted with the pass phrase → 200.
    let key = decrypt_key(&read(d, "client.key"), pass.trim()).unwrap();
    let good = client(&ca, Some(pem_pair(&read(d, "client.pem"), key.as_bytes())));
    let resp = whoami(&good, &h, &token).await.unwrap();
    assert_eq!(resp.status(), 200);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["meta"]["httpStatus"], "200 - OK");
    assert!(body["result"]["userName"].as_str().is_some());
    // Admin routes sit behind the same listener and work with the certificate.
    let info: serde_json::Value = good
        .get(format!("{}/_sim/mtls", h.base_url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(info["enabled"], true);

    // The plain key works the same.
    let plain = client(
        &ca,
        Some(pem_pair(
            &read(d, "client.pem"),
            &read(d, "client-plain.key"),
        )),
    );
    assert_eq!(whoami(&plain, &h, &token).await.unwrap().status(), 200);

    // No client certificate: the call never reaches the app, not even /_sim.
    let anon = client(&ca, None);
    assert!(whoami(&anon, &h, &token).await.is_err());
    assert!(
        anon.get(format!("{}/_sim/stats", h.base_url))
            .send()
            .await
            .is_err()
    );

    // Expired certificate signed by the brand CA.
    let expired = client(
        &ca,
        Some(pem_pair(
            &read(d, "expired-client.pem"),
            &read(d, "expired-client.key"),
        )),
    );
    assert!(whoami(&expired, &h, &token).await.is_err());

    // Certificate from another CA.
    let foreign = client(
        &ca,
        Some(pem_pair(
            &read(d, "foreign-client.pem"),
            &read(d, "foreign-client.key"),
        )),
    );
    assert!(whoami(&foreign, &h, &token).await.is_err());

    // Wrong pass phrase: pkcs8 refuses to decrypt.
    assert!(decrypt_key(&read(d, "client.key"), "not the pass phrase").is_err());

    // No certificate reached the app: the refused calls were never counted.
    let stats: serde_json::Value = good
        .get(format!("{}/_sim/stats", h.base_url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stats["calls_total"], 2);
    h.stop().await;
}

#[tokio::test]
async fn mismatched_key_cannot_authenticate() {
    let (h, token) = start().await;
    let pki = h.sim.pki.as_ref().unwrap();
    // rustls either refuses the identity at build time or the handshake fails: never a 200.
    let id = pem_pair(pki.client_pem.as_bytes(), pki.mismatched_key_pem.as_bytes());
    let built = Identity::from_pem(&id).and_then(|i| {
        Client::builder()
            .tls_certs_only([Certificate::from_pem(pki.ca_pem.as_bytes()).unwrap()])
            .identity(i)
            .build()
    });
    if let Ok(c) = built {
        assert!(whoami(&c, &h, &token).await.is_err());
    }
    h.stop().await;
}

#[tokio::test]
async fn passphrase_and_pbes2_params_are_seeded() {
    let cfg = SimConfig {
        mtls: true,
        ..Default::default()
    };
    let a = xmbridge_sim::qualtrics::tls::BrandPki::generate(&cfg).unwrap();
    let b = xmbridge_sim::qualtrics::tls::BrandPki::generate(&cfg).unwrap();
    assert_eq!(a.passphrase, b.passphrase);
    assert!(
        a.client_key_encrypted_pem
            .starts_with("-----BEGIN ENCRYPTED PRIVATE KEY-----")
    );
    // Keys are fresh each time (OS randomness); only the seeded parts repeat.
    assert_ne!(a.client_key_pem, b.client_key_pem);
    let plain = decrypt_key(a.client_key_encrypted_pem.as_bytes(), &a.passphrase).unwrap();
    assert_eq!(plain.trim(), a.client_key_pem.trim());
}
