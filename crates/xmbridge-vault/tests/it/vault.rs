//! End-to-end tests of the vault on real files: homes, key files, wrong keys, damaged stores,
//! tampered and swapped ciphertexts, concurrency, and that no secret reaches the disk or Debug.

use std::path::Path;
use std::sync::Arc;

use rusqlite::params;
use serde_json::json;
use xmbridge_auth::RefreshTokenSink;
use xmbridge_vault::{
    ExposeSecret, Home, KeySource, MasterKey, Provider, SecretField, SecretString, Vault,
    VaultError,
};

fn home() -> (tempfile::TempDir, Home) {
    let tmp = tempfile::tempdir().unwrap();
    let home = Home::at(tmp.path().join("xmb")).unwrap();
    (tmp, home)
}

fn open(home: &Home) -> Vault {
    Vault::open_home(home, MasterKey::load(home, None).unwrap()).unwrap()
}

fn secret(s: &str) -> SecretString {
    SecretString::from(s)
}

fn reveal(v: &Vault, conn: &str, f: SecretField) -> Option<String> {
    v.get_secret(conn, f)
        .unwrap()
        .map(|s| s.expose_secret().to_string())
}

/// Raw SQL on the store, bypassing the vault (as an attacker or a disk fault would).
fn raw(home: &Home) -> rusqlite::Connection {
    rusqlite::Connection::open(home.state_db()).unwrap()
}

#[test]
fn connections_round_trip() {
    let (_t, home) = home();
    let v = open(&home);
    let settings = json!({"datacenter": "ca1", "auth": "token", "default_directory": "POOL_1"});
    let added = v
        .add_connection("prod", Provider::Qualtrics, settings.clone())
        .unwrap();
    v.add_connection("a.sandbox-1", Provider::Salesforce, json!({}))
        .unwrap();
    assert_eq!(v.get_connection("prod").unwrap(), added);
    let names: Vec<_> = v
        .list_connections()
        .unwrap()
        .into_iter()
        .map(|c| c.name)
        .collect();
    assert_eq!(names, ["a.sandbox-1", "prod"]);

    let updated = v
        .update_settings("prod", json!({"datacenter": "fra1"}))
        .unwrap();
    assert_eq!(updated.settings, json!({"datacenter": "fra1"}));
    assert_eq!(updated.created_at, added.created_at);
    assert!(updated.updated_at >= added.updated_at);

    // Survives reopening with the same key file.
    drop(v);
    let v = open(&home);
    assert_eq!(
        v.get_connection("prod").unwrap().settings["datacenter"],
        "fra1"
    );

    v.remove_connection("a.sandbox-1").unwrap();
    assert_eq!(v.list_connections().unwrap().len(), 1);
}

#[test]
fn connection_errors_name_the_problem_and_fix() {
    let (_t, home) = home();
    let v = open(&home);
    v.add_connection("prod", Provider::Qualtrics, json!({}))
        .unwrap();

    let dup = v
        .add_connection("prod", Provider::Qualtrics, json!({}))
        .unwrap_err();
    assert!(matches!(dup, VaultError::DuplicateConnection { .. }));
    assert!(
        dup.to_string().contains("xmbridge connection remove prod"),
        "{dup}"
    );

    let bad = v
        .add_connection("has space", Provider::Qualtrics, json!({}))
        .unwrap_err();
    assert!(matches!(bad, VaultError::InvalidName { .. }), "{bad}");

    for err in [
        v.get_connection("nope").unwrap_err(),
        v.update_settings("nope", json!({})).unwrap_err(),
        v.remove_connection("nope").unwrap_err(),
        v.set_secret("nope", SecretField::ApiToken, &secret("x"))
            .unwrap_err(),
        v.get_secret("nope", SecretField::ApiToken).unwrap_err(),
        v.list_secrets("nope").unwrap_err(),
    ] {
        assert!(
            matches!(err, VaultError::ConnectionNotFound { .. }),
            "{err}"
        );
        let msg = err.to_string();
        assert!(
            msg.contains("'nope'") && msg.contains("xmbridge connection list"),
            "{msg}"
        );
    }

    let leak = v
        .add_connection("x", Provider::Qualtrics, json!({"client_secret": "s3cr3t"}))
        .unwrap_err();
    assert!(matches!(leak, VaultError::InvalidSettings { .. }));
    assert!(!leak.to_string().contains("s3cr3t"));
}

#[test]
fn secrets_round_trip_and_are_removed_with_their_connection() {
    let (_t, home) = home();
    let v = open(&home);
    v.add_connection("prod", Provider::Qualtrics, json!({}))
        .unwrap();
    assert_eq!(reveal(&v, "prod", SecretField::ApiToken), None);
    for (i, f) in SecretField::ALL.into_iter().enumerate() {
        v.set_secret("prod", f, &secret(&format!("value-{i}-ünïcødé")))
            .unwrap();
    }
    let pem = "-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIB\n-----END ENCRYPTED PRIVATE KEY-----\n";
    v.set_secret("prod", SecretField::PrivateKey, &secret(pem))
        .unwrap();
    v.set_secret("prod", SecretField::ApiToken, &secret(""))
        .unwrap();

    drop(v);
    let v = open(&home);
    assert_eq!(
        reveal(&v, "prod", SecretField::ApiToken).as_deref(),
        Some("")
    );
    assert_eq!(
        reveal(&v, "prod", SecretField::PrivateKey).as_deref(),
        Some(pem)
    );
    assert_eq!(
        reveal(&v, "prod", SecretField::Passphrase).as_deref(),
        Some("value-4-ünïcødé")
    );
    let listed: Vec<_> = v
        .list_secrets("prod")
        .unwrap()
        .into_iter()
        .map(|s| s.field)
        .collect();
    assert_eq!(listed, SecretField::ALL);

    assert!(v.remove_secret("prod", SecretField::AccessToken).unwrap());
    assert!(!v.remove_secret("prod", SecretField::AccessToken).unwrap());
    assert_eq!(reveal(&v, "prod", SecretField::AccessToken), None);

    v.remove_connection("prod").unwrap();
    let left: i64 = raw(&home)
        .query_row("SELECT count(*) FROM connection_secrets", [], |r| r.get(0))
        .unwrap();
    assert_eq!(left, 0);
    // A new connection of the same name starts without secrets.
    v.add_connection("prod", Provider::Qualtrics, json!({}))
        .unwrap();
    assert_eq!(reveal(&v, "prod", SecretField::RefreshToken), None);
}

#[test]
fn wrong_master_key_is_a_clear_error() {
    let (_t, home) = home();
    let key = MasterKey::generate().unwrap();
    let env = key.to_base64();
    let v = Vault::open_home(
        &home,
        MasterKey::load(&home, Some(env.expose_secret())).unwrap(),
    )
    .unwrap();
    v.add_connection("prod", Provider::Qualtrics, json!({}))
        .unwrap();
    v.set_secret("prod", SecretField::ApiToken, &secret("tok"))
        .unwrap();
    drop(v);

    // Forgetting the env var: no key file is invented, the error says what to set.
    let err = MasterKey::load(&home, None).unwrap_err();
    assert!(matches!(err, VaultError::KeyFileMissing { .. }), "{err}");

    // Another key (env or file) is refused.
    let other_env = MasterKey::generate().unwrap().to_base64();
    let other = MasterKey::load(&home, Some(other_env.expose_secret())).unwrap();
    let err = Vault::open_home(&home, other).unwrap_err();
    assert!(matches!(err, VaultError::WrongMasterKey { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("the master key does not match this state store")
            && msg.contains("XMBRIDGE_MASTER_KEY")
            && msg.contains("XMBRIDGE_HOME"),
        "{msg}"
    );
    assert!(!msg.contains(env.expose_secret()));

    // The right key still works.
    let v = Vault::open_home(
        &home,
        MasterKey::load(&home, Some(env.expose_secret())).unwrap(),
    )
    .unwrap();
    assert_eq!(
        reveal(&v, "prod", SecretField::ApiToken).as_deref(),
        Some("tok")
    );
}

#[test]
fn a_file_that_is_not_a_database_is_corrupted() {
    let (_t, home) = home();
    std::fs::write(home.state_db(), vec![0x42u8; 8192]).unwrap();
    let err = Vault::open_home(&home, MasterKey::generate().unwrap()).unwrap_err();
    match &err {
        VaultError::Corrupted { store, .. } => {
            assert_eq!(store, &xmbridge_state::StoreRef::File(home.state_db()))
        }
        other => panic!("expected Corrupted, got {other:?}"),
    }
    let msg = err.to_string();
    assert!(
        msg.contains("backup") && msg.contains("move it away"),
        "{msg}"
    );
}

#[test]
fn a_damaged_key_check_or_missing_meta_is_corrupted() {
    let (_t, home) = home();
    drop(open(&home));
    raw(&home)
        .execute(
            "UPDATE vault_meta SET value = zeroblob(60) WHERE key = 'key_check'",
            [],
        )
        .unwrap();
    let err = Vault::open_home(&home, MasterKey::load(&home, None).unwrap()).unwrap_err();
    assert!(matches!(err, VaultError::Corrupted { .. }), "{err}");

    raw(&home)
        .execute("DELETE FROM vault_meta WHERE key = 'key_check'", [])
        .unwrap();
    let err = Vault::open_home(&home, MasterKey::load(&home, None).unwrap()).unwrap_err();
    assert!(matches!(err, VaultError::Corrupted { .. }), "{err}");
}

#[test]
fn newer_schema_is_refused() {
    let (_t, home) = home();
    drop(open(&home));
    raw(&home)
        .execute(
            "UPDATE vault_meta SET value = CAST('99' AS BLOB) WHERE key = 'schema_version'",
            [],
        )
        .unwrap();
    let err = Vault::open_home(&home, MasterKey::load(&home, None).unwrap()).unwrap_err();
    assert!(
        matches!(err, VaultError::SchemaTooNew { found: 99, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("upgrade xmbridge"));
}

#[test]
fn tampered_ciphertext_is_corrupted_not_garbage() {
    let (_t, home) = home();
    let v = open(&home);
    v.add_connection("prod", Provider::Qualtrics, json!({}))
        .unwrap();
    v.set_secret(
        "prod",
        SecretField::ClientSecret,
        &secret("client-secret-value"),
    )
    .unwrap();
    let db = raw(&home);
    let mut ct: Vec<u8> = db
        .query_row(
            "SELECT ciphertext FROM connection_secrets WHERE connection='prod'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    ct[3] ^= 0x01;
    db.execute(
        "UPDATE connection_secrets SET ciphertext = ?1 WHERE connection='prod'",
        params![ct],
    )
    .unwrap();
    let err = v.get_secret("prod", SecretField::ClientSecret).unwrap_err();
    assert!(matches!(err, VaultError::Corrupted { .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("client secret of connection 'prod'"), "{msg}");
    assert!(!msg.contains("client-secret-value"));

    // A flipped nonce byte, or a row claiming another key id, is caught as well.
    v.set_secret("prod", SecretField::ClientSecret, &secret("again"))
        .unwrap();
    db.execute(
        "UPDATE connection_secrets SET nonce = zeroblob(24) WHERE connection='prod'",
        [],
    )
    .unwrap();
    assert!(matches!(
        v.get_secret("prod", SecretField::ClientSecret),
        Err(VaultError::Corrupted { .. })
    ));
    v.set_secret("prod", SecretField::ClientSecret, &secret("again"))
        .unwrap();
    db.execute(
        "UPDATE connection_secrets SET key_id = '0000000000000000' WHERE connection='prod'",
        [],
    )
    .unwrap();
    assert!(matches!(
        v.get_secret("prod", SecretField::ClientSecret),
        Err(VaultError::Corrupted { .. })
    ));
    // Setting it again repairs it.
    v.set_secret("prod", SecretField::ClientSecret, &secret("fixed"))
        .unwrap();
    assert_eq!(
        reveal(&v, "prod", SecretField::ClientSecret).as_deref(),
        Some("fixed")
    );
}

#[test]
fn swapped_ciphertexts_are_corrupted() {
    let (_t, home) = home();
    let v = open(&home);
    for name in ["a", "b"] {
        v.add_connection(name, Provider::Qualtrics, json!({}))
            .unwrap();
        v.set_secret(
            name,
            SecretField::ApiToken,
            &secret(&format!("token-of-{name}")),
        )
        .unwrap();
    }
    v.set_secret("a", SecretField::ClientSecret, &secret("cs-of-a"))
        .unwrap();
    let db = raw(&home);
    // Copy a's api_token into b's row: same field, other connection.
    db.execute(
        "UPDATE connection_secrets SET
             nonce = (SELECT nonce FROM connection_secrets WHERE connection='a' AND field='api_token'),
             ciphertext = (SELECT ciphertext FROM connection_secrets WHERE connection='a' AND field='api_token')
         WHERE connection='b' AND field='api_token'",
        [],
    )
    .unwrap();
    let err = v.get_secret("b", SecretField::ApiToken).unwrap_err();
    assert!(matches!(err, VaultError::Corrupted { .. }), "{err}");
    // Copy a's client_secret into a's api_token: same connection, other field.
    db.execute(
        "UPDATE connection_secrets SET
             nonce = (SELECT nonce FROM connection_secrets WHERE connection='a' AND field='client_secret'),
             ciphertext = (SELECT ciphertext FROM connection_secrets WHERE connection='a' AND field='client_secret')
         WHERE connection='a' AND field='api_token'",
        [],
    )
    .unwrap();
    let err = v.get_secret("a", SecretField::ApiToken).unwrap_err();
    assert!(matches!(err, VaultError::Corrupted { .. }), "{err}");
    assert_eq!(
        reveal(&v, "a", SecretField::ClientSecret).as_deref(),
        Some("cs-of-a")
    );
}

#[cfg(unix)]
#[test]
fn key_file_is_created_0600_reused_and_refused_when_open() {
    use std::os::unix::fs::PermissionsExt;
    let (_t, home) = home();
    let first = MasterKey::load(&home, None).unwrap();
    assert_eq!(
        first.source(),
        &KeySource::NewKeyFile(home.master_key_file())
    );
    let mode = std::fs::metadata(home.master_key_file())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    // The file holds the key as base64, usable as XMBRIDGE_MASTER_KEY.
    let text = std::fs::read_to_string(home.master_key_file()).unwrap();
    assert_eq!(MasterKey::from_base64(&text).unwrap().id(), first.id());

    let second = MasterKey::load(&home, None).unwrap();
    assert_eq!(second.source(), &KeySource::KeyFile(home.master_key_file()));
    assert_eq!(second.id(), first.id());
    // An empty env var counts as unset.
    assert_eq!(MasterKey::load(&home, Some("")).unwrap().id(), first.id());

    // The state store and its WAL are private as well.
    let v = Vault::open_home(&home, second).unwrap();
    v.add_connection("c", Provider::Qualtrics, json!({}))
        .unwrap();
    for p in [home.state_db(), wal(&home.state_db())] {
        let mode = std::fs::metadata(&p).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "{} has mode {mode:o}", p.display());
    }

    std::fs::set_permissions(
        home.master_key_file(),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let err = MasterKey::load(&home, None).unwrap_err();
    assert!(
        matches!(err, VaultError::KeyFileTooOpen { mode: 0o644, .. }),
        "{err}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains(&format!("chmod 600 {}", home.master_key_file().display())),
        "{msg}"
    );
    assert!(!msg.contains(text.trim()));
}

#[test]
fn damaged_key_file_is_a_clear_error() {
    let (_t, home) = home();
    drop(MasterKey::load(&home, None).unwrap());
    // Truncate it (keeping its private mode).
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(home.master_key_file())
        .unwrap();
    f.set_len(10).unwrap();
    let err = MasterKey::load(&home, None).unwrap_err();
    assert!(matches!(err, VaultError::InvalidKeyFile { .. }), "{err}");
    assert!(err.to_string().contains("XMBRIDGE_MASTER_KEY"));
}

#[test]
fn bad_env_key_is_refused_with_how_to_generate_one() {
    let (_t, home) = home();
    for bad in ["hunter2", "c2hvcnQ=", "!!!!not-base64-at-all!!!!"] {
        let err = MasterKey::load(&home, Some(bad)).unwrap_err();
        assert!(
            matches!(err, VaultError::InvalidMasterKeyEnv { .. }),
            "{err}"
        );
        let msg = err.to_string();
        assert!(msg.contains("head -c 32 /dev/urandom | base64"), "{msg}");
        assert!(!msg.contains(bad), "{msg}");
    }
    // No key file was created as a side effect.
    assert!(!home.master_key_file().exists());
    let good = MasterKey::generate().unwrap().to_base64();
    let k = MasterKey::load(&home, Some(good.expose_secret())).unwrap();
    assert_eq!(k.source(), &KeySource::Environment);
}

#[test]
fn two_homes_side_by_side() {
    let (_t1, h1) = home();
    let (_t2, h2) = home();
    let v1 = open(&h1);
    let v2 = open(&h2);
    assert_ne!(v1.key_id(), v2.key_id());
    v1.add_connection("same", Provider::Qualtrics, json!({"n": 1}))
        .unwrap();
    v2.add_connection("same", Provider::Qualtrics, json!({"n": 2}))
        .unwrap();
    v1.set_secret("same", SecretField::ApiToken, &secret("one"))
        .unwrap();
    v2.set_secret("same", SecretField::ApiToken, &secret("two"))
        .unwrap();
    assert_eq!(
        reveal(&v1, "same", SecretField::ApiToken).as_deref(),
        Some("one")
    );
    assert_eq!(
        reveal(&v2, "same", SecretField::ApiToken).as_deref(),
        Some("two")
    );
    assert_eq!(v2.get_connection("same").unwrap().settings["n"], 2);
    // Each home's key opens only its own store.
    let err = Vault::open_home(&h1, MasterKey::load(&h2, None).unwrap()).unwrap_err();
    assert!(matches!(err, VaultError::WrongMasterKey { .. }));
}

#[test]
fn concurrent_set_secret_from_threads_and_processes_like_vaults() {
    let (_t, home) = home();
    let shared = Arc::new(open(&home));
    shared
        .add_connection("prod", Provider::Qualtrics, json!({}))
        .unwrap();
    shared
        .set_secret("prod", SecretField::RefreshToken, &secret("initial"))
        .unwrap();

    const WRITERS: usize = 4;
    const WRITES: usize = 40;
    let mut handles = Vec::new();
    for w in 0..WRITERS {
        // Half share one Vault, half open their own (as separate processes would).
        let v = if w % 2 == 0 {
            Arc::clone(&shared)
        } else {
            Arc::new(open(&home))
        };
        handles.push(std::thread::spawn(move || {
            for i in 0..WRITES {
                v.set_secret(
                    "prod",
                    SecretField::RefreshToken,
                    &secret(&format!("rt-{w}-{i}")),
                )
                .unwrap();
            }
        }));
    }
    // A reader on its own connection never sees the value missing or damaged.
    let reader = {
        let home = home.clone();
        std::thread::spawn(move || {
            let v = open(&home);
            for _ in 0..200 {
                let got = reveal(&v, "prod", SecretField::RefreshToken).expect("never absent");
                assert!(got == "initial" || got.starts_with("rt-"), "{got}");
            }
        })
    };
    for h in handles {
        h.join().unwrap();
    }
    reader.join().unwrap();
    let last = reveal(&shared, "prod", SecretField::RefreshToken).unwrap();
    assert!(last.ends_with(&format!("-{}", WRITES - 1)), "{last}");
}

#[test]
fn refresh_token_sink_saves_into_the_connection() {
    let (_t, home) = home();
    let v = Arc::new(open(&home));
    v.add_connection("prod", Provider::Qualtrics, json!({}))
        .unwrap();
    let sink = v.refresh_token_sink("prod");
    let dyn_sink: &dyn RefreshTokenSink = &sink;
    dyn_sink.save(&secret("rotated-1")).unwrap();
    dyn_sink.save(&secret("rotated-2")).unwrap();
    assert_eq!(
        reveal(&v, "prod", SecretField::RefreshToken).as_deref(),
        Some("rotated-2")
    );

    let missing = xmbridge_vault::VaultRefreshTokenSink::new(Arc::clone(&v), "gone");
    let err = missing.save(&secret("rotated-3")).unwrap_err().to_string();
    assert!(
        err.contains("'gone'") && !err.contains("rotated-3"),
        "{err}"
    );
    assert!(!format!("{sink:?}").contains("rotated"));
}

fn wal(db: &Path) -> std::path::PathBuf {
    let mut s = db.as_os_str().to_owned();
    s.push("-wal");
    s.into()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn no_secret_in_clear_text_on_disk_or_in_debug() {
    let (_t, home) = home();
    let key = MasterKey::load(&home, None).unwrap();
    let key_b64 = key.to_base64().expose_secret().to_string();
    let v = Vault::open_home(&home, key).unwrap();
    let secrets = [
        (SecretField::ApiToken, "QAPITOKEN-aaaaaaaaaaaaaaaaaaaaaaaa"),
        (
            SecretField::ClientSecret,
            "CLIENTSECRET-bbbbbbbbbbbbbbbbbbbb",
        ),
        (
            SecretField::RefreshToken,
            "REFRESHTOKEN-cccccccccccccccccccc",
        ),
        (
            SecretField::PrivateKey,
            "-----BEGIN PRIVATE KEY-----\nPRIVKEYdddddddddddddddd\n-----END PRIVATE KEY-----",
        ),
        (SecretField::Passphrase, "PASSPHRASE-eeeeeeeeeeeeeeeeeeeeee"),
        (SecretField::AccessToken, "ACCESSTOKEN-ffffffffffffffffffff"),
    ];
    v.add_connection(
        "prod",
        Provider::Qualtrics,
        json!({"datacenter": "ca1", "client_id": "visible-client-id"}),
    )
    .unwrap();
    for (f, s) in secrets {
        v.set_secret("prod", f, &secret(s)).unwrap();
    }
    // Rotate a few times so old and new pages exist in the WAL.
    for i in 0..5 {
        v.set_secret(
            "prod",
            SecretField::RefreshToken,
            &secret(&format!("ROTATED-{i}-gggggggggggg")),
        )
        .unwrap();
    }

    let debug_dump = format!(
        "{v:?} {:?} {:?} {:?} {:?} {:?}",
        v.get_connection("prod").unwrap(),
        v.list_secrets("prod").unwrap(),
        v.get_secret("prod", SecretField::ApiToken).unwrap(),
        MasterKey::load(&home, None).unwrap(),
        home,
    );
    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    for p in [home.state_db(), wal(&home.state_db())] {
        files.push((p.display().to_string(), std::fs::read(&p).unwrap()));
    }
    // The setting that is not secret is found, proving the scan looks in the right place.
    assert!(files.iter().any(|(_, b)| contains(b, b"visible-client-id")));
    let mut needles: Vec<String> = secrets.iter().map(|(_, s)| s.to_string()).collect();
    needles.extend((0..5).map(|i| format!("ROTATED-{i}-gggggggggggg")));
    needles.extend(["PRIVKEYdddddddddddddddd".into(), key_b64.clone()]);
    for needle in &needles {
        for (name, bytes) in &files {
            assert!(
                !contains(bytes, needle.as_bytes()),
                "{needle:?} found in {name}"
            );
        }
        assert!(
            !debug_dump.contains(needle.as_str()),
            "{needle:?} in Debug: {debug_dump}"
        );
    }
    // The raw key bytes are not in the store either.
    let raw_key = base64_decode(&key_b64);
    for (name, bytes) in &files {
        assert!(!contains(bytes, &raw_key), "raw master key found in {name}");
    }
    drop(v);
    // After a checkpoint (close) the main file still holds none of them.
    let bytes = std::fs::read(home.state_db()).unwrap();
    for needle in &needles {
        assert!(
            !contains(&bytes, needle.as_bytes()),
            "{needle:?} after checkpoint"
        );
    }
}

fn base64_decode(s: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.decode(s).unwrap()
}

#[test]
fn errors_debug_never_show_secrets() {
    // Every error variant the vault can produce from user input, formatted both ways.
    let (_t, home) = home();
    let bad_key = "definitely-not-a-key-SECRETISH";
    let e1 = MasterKey::load(&home, Some(bad_key)).unwrap_err();
    assert!(!format!("{e1} {e1:?}").contains(bad_key));
    let v = open(&home);
    let e2 = v
        .add_connection(
            "x",
            Provider::Qualtrics,
            json!({"password": "pw-SECRETISH"}),
        )
        .unwrap_err();
    assert!(!format!("{e2} {e2:?}").contains("pw-SECRETISH"));
}

#[test]
fn racing_first_use_agrees_on_one_key_file() {
    let (_t, home) = home();
    let ids: Vec<_> = (0..6)
        .map(|_| {
            let home = home.clone();
            std::thread::spawn(move || {
                let key = MasterKey::load(&home, None).unwrap();
                let id = key.id();
                // Opening a fresh store concurrently must also agree.
                Vault::open_home(&home, key).unwrap();
                id
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|h| h.join().unwrap())
        .collect();
    assert!(ids.windows(2).all(|w| w[0] == w[1]), "{ids:?}");
    let leftovers: Vec<_> = std::fs::read_dir(home.root())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn a_lost_key_file_is_not_silently_replaced() {
    let (_t, home) = home();
    let v = open(&home);
    v.add_connection("prod", Provider::Qualtrics, json!({}))
        .unwrap();
    drop(v);
    std::fs::remove_file(home.master_key_file()).unwrap();
    let err = MasterKey::load(&home, None).unwrap_err();
    assert!(matches!(err, VaultError::KeyFileMissing { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("backup") && msg.contains("XMBRIDGE_MASTER_KEY"),
        "{msg}"
    );
    assert!(
        !home.master_key_file().exists(),
        "no new key file was written"
    );
}

#[test]
fn an_empty_store_is_damaged_not_a_new_installation() {
    let (_t, home) = home();
    std::fs::write(home.state_db(), b"").unwrap();
    // Neither a key file is made for it nor is it read as empty.
    let err = MasterKey::load(&home, None).unwrap_err();
    assert!(matches!(err, VaultError::EmptyStore { .. }), "{err}");
    assert!(!home.master_key_file().exists());
    let err = Vault::open_home(&home, MasterKey::generate().unwrap()).unwrap_err();
    assert!(matches!(err, VaultError::EmptyStore { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("backup") && msg.contains(&format!("rm {}", home.state_db().display())),
        "{msg}"
    );
    assert_eq!(std::fs::metadata(home.state_db()).unwrap().len(), 0);
}

#[test]
fn a_value_of_the_wrong_sql_type_names_the_connection_and_field() {
    let (_t, home) = home();
    let v = open(&home);
    v.add_connection("prod", Provider::Qualtrics, json!({}))
        .unwrap();
    v.set_secret("prod", SecretField::ApiToken, &secret("tok"))
        .unwrap();
    v.add_connection("other", Provider::Qualtrics, json!({}))
        .unwrap();
    raw(&home)
        .execute(
            "UPDATE connection_secrets SET ciphertext = 42 WHERE connection = 'prod'",
            [],
        )
        .unwrap();
    let err = v.get_secret("prod", SecretField::ApiToken).unwrap_err();
    match &err {
        VaultError::DamagedValue {
            connection,
            part,
            found,
            ..
        } => {
            assert_eq!(connection, "prod");
            assert!(part.contains("API token"), "{part}");
            assert_eq!(*found, "an integer");
        }
        other => panic!("expected DamagedValue, got {other:?}"),
    }
    let msg = err.to_string();
    assert!(!msg.contains("disk space"), "{msg}");
    assert!(msg.contains("xmbridge connection remove prod"), "{msg}");

    raw(&home)
        .execute(
            "UPDATE connections SET settings = X'7B7D' WHERE name = 'other'",
            [],
        )
        .unwrap();
    let err = v.list_connections().unwrap_err();
    assert!(
        matches!(&err, VaultError::DamagedValue { connection, part, .. } if connection == "other" && part == "settings"),
        "{err:?}"
    );
    let err = v.get_connection("other").unwrap_err().to_string();
    assert!(
        err.contains("settings of connection 'other'") && err.contains("a blob"),
        "{err}"
    );
}

#[cfg(unix)]
#[test]
fn store_files_others_can_read_are_restricted_and_writable_ones_refused() {
    use std::os::unix::fs::PermissionsExt;
    let (_t, home) = home();
    let v = open(&home);
    v.add_connection("c", Provider::Qualtrics, json!({}))
        .unwrap();
    drop(v);
    let set = |mode| {
        std::fs::set_permissions(home.state_db(), std::fs::Permissions::from_mode(mode)).unwrap()
    };
    let mode = || {
        std::fs::metadata(home.state_db())
            .unwrap()
            .permissions()
            .mode()
            & 0o7777
    };

    set(0o644);
    let v = open(&home);
    assert_eq!(v.tightened(), &[(home.state_db(), 0o644)]);
    assert_eq!(mode(), 0o600);
    assert_eq!(v.list_connections().unwrap().len(), 1);
    drop(v);
    assert!(open(&home).tightened().is_empty());

    for bad in [0o666, 0o620, 0o602] {
        set(bad);
        let err = Vault::open_home(&home, MasterKey::load(&home, None).unwrap()).unwrap_err();
        assert!(
            matches!(err, VaultError::StoreTooOpen { mode, .. } if mode == bad),
            "{bad:o}: {err}"
        );
        assert!(err.to_string().contains("chmod 600"), "{err}");
        assert_eq!(mode(), bad, "a refused store is left as it is");
    }
}

#[cfg(unix)]
#[test]
fn a_new_store_appears_complete_and_private() {
    use std::os::unix::fs::PermissionsExt;
    let (_t, home) = home();
    let v = open(&home);
    v.add_connection("c", Provider::Qualtrics, json!({}))
        .unwrap();
    let mut seen = 0;
    for entry in std::fs::read_dir(home.root()).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().to_string_lossy().into_owned();
        assert!(!name.ends_with(".tmp"), "left behind: {name}");
        if name.starts_with("state.db") {
            seen += 1;
            let mode = entry.metadata().unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0, "{name} has mode {mode:o}");
        }
    }
    assert!(seen >= 2, "state.db and its WAL");
}
