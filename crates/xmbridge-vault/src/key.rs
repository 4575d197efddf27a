//! The master key: 32 random bytes from `XMBRIDGE_MASTER_KEY` (base64) or from the key file
//! `master.key` in the installation (base64 text, mode 0600, created on first use). It owns
//! loading, creating and identifying the key; sealing lives in `seal.rs`.

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};

use base64::Engine;
use secrecy::zeroize::Zeroizing;
use secrecy::{ExposeSecret, ExposeSecretMut, SecretBox};
use sha2::{Digest, Sha256};

use crate::{Home, VaultError};

/// The environment variable holding a base64 master key.
pub const MASTER_KEY_ENV: &str = "XMBRIDGE_MASTER_KEY";

/// Length of a master key in bytes.
pub const MASTER_KEY_LEN: usize = 32;

/// A short public fingerprint of a master key: the first 8 bytes of SHA-256 over a domain tag and
/// the key. Stored next to sealed values so a wrong key is recognised before any decryption.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyId([u8; 8]);

impl KeyId {
    fn of(key: &[u8; MASTER_KEY_LEN]) -> KeyId {
        let mut h = Sha256::new();
        h.update(b"xmbridge-vault key id v1\0");
        h.update(key);
        let digest = h.finalize();
        let mut id = [0u8; 8];
        id.copy_from_slice(&digest[..8]);
        KeyId(id)
    }

    /// The id as 16 lowercase hex digits.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({})", self.to_hex())
    }
}

/// Where a [`MasterKey`] came from, so the CLI can tell the user (e.g. "created a new key file —
/// back it up").
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// From `XMBRIDGE_MASTER_KEY`.
    Environment,
    /// Read from an existing key file.
    KeyFile(PathBuf),
    /// A new key, just written to this key file.
    NewKeyFile(PathBuf),
    /// Given directly (bytes or base64 passed by the caller) or generated in memory.
    Provided,
}

/// The 32-byte master key. Zeroized on drop; `Debug` shows only its [`KeyId`] and source.
pub struct MasterKey {
    bytes: SecretBox<[u8; MASTER_KEY_LEN]>,
    id: KeyId,
    source: KeySource,
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MasterKey")
            .field("id", &self.id)
            .field("source", &self.source)
            .field("bytes", &"[REDACTED]")
            .finish()
    }
}

impl MasterKey {
    /// The key from `XMBRIDGE_MASTER_KEY` if set (and non-empty), else from `home`'s key file,
    /// created on first use.
    pub fn from_env(home: &Home) -> Result<MasterKey, VaultError> {
        let env = std::env::var(MASTER_KEY_ENV).ok().map(Zeroizing::new);
        MasterKey::load(home, env.as_ref().map(|s| s.as_str()))
    }

    /// Like [`MasterKey::from_env`] with the variable's value passed in (`None` or empty: unset).
    pub fn load(home: &Home, env_value: Option<&str>) -> Result<MasterKey, VaultError> {
        match env_value.filter(|v| !v.trim().is_empty()) {
            Some(v) => {
                let mut key = MasterKey::from_base64(v).map_err(|reason| {
                    VaultError::InvalidMasterKeyEnv {
                        reason: reason.to_string(),
                    }
                })?;
                key.source = KeySource::Environment;
                Ok(key)
            }
            None => {
                let key_file = home.master_key_file();
                // A damaged (empty) store is reported before a key file is created for it.
                crate::vault::refuse_empty_store(&home.state_db())?;
                // A missing key file next to a store that has data means the key was lost or
                // moved: creating a new one would only lead to WrongMasterKey later and leave
                // a useless key file behind.
                if !key_file.exists() && store_has_data(&home.state_db()) {
                    return Err(VaultError::KeyFileMissing {
                        path: key_file,
                        store: home.state_db(),
                    });
                }
                MasterKey::load_or_create_file(&key_file)
            }
        }
    }

    /// Reads the key file at `path`, or creates it (mode 0600, a fresh random key) if missing.
    /// A key file other users can access is refused.
    pub fn load_or_create_file(path: &Path) -> Result<MasterKey, VaultError> {
        match read_key_file(path) {
            Err(VaultError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                let key = MasterKey::generate()?;
                match write_new_key_file(path, &key) {
                    Ok(()) => Ok(MasterKey {
                        source: KeySource::NewKeyFile(path.to_path_buf()),
                        ..key
                    }),
                    // Another process created it first: use theirs, so both agree on one key.
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => read_key_file(path),
                    Err(e) => Err(VaultError::io("create the master key file", path, e)),
                }
            }
            other => other,
        }
    }

    /// A fresh random key from the operating system's random source.
    pub fn generate() -> Result<MasterKey, VaultError> {
        let mut bytes = SecretBox::<[u8; MASTER_KEY_LEN]>::default();
        getrandom_fill(bytes.expose_secret_mut())?;
        Ok(MasterKey::from_secret_box(bytes, KeySource::Provided))
    }

    /// A key from its raw bytes.
    pub fn from_bytes(bytes: [u8; MASTER_KEY_LEN]) -> MasterKey {
        let bytes = Zeroizing::new(bytes);
        let boxed =
            SecretBox::<[u8; MASTER_KEY_LEN]>::init_with_mut(|b| b.copy_from_slice(&*bytes));
        MasterKey::from_secret_box(boxed, KeySource::Provided)
    }

    /// A key from base64 text (standard or URL-safe alphabet, padding optional, surrounding
    /// whitespace ignored). The error reason never quotes the text.
    pub fn from_base64(text: &str) -> Result<MasterKey, &'static str> {
        let text = text.trim();
        let engines = [
            &base64::engine::general_purpose::STANDARD,
            &base64::engine::general_purpose::STANDARD_NO_PAD,
            &base64::engine::general_purpose::URL_SAFE,
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
        ];
        let decoded = engines
            .iter()
            .find_map(|e| e.decode(text).ok().map(Zeroizing::new))
            .ok_or("it is not valid base64")?;
        if decoded.len() != MASTER_KEY_LEN {
            return Err(if decoded.len() < MASTER_KEY_LEN {
                "it decodes to fewer than 32 bytes"
            } else {
                "it decodes to more than 32 bytes"
            });
        }
        let boxed =
            SecretBox::<[u8; MASTER_KEY_LEN]>::init_with_mut(|b| b.copy_from_slice(&decoded));
        Ok(MasterKey::from_secret_box(boxed, KeySource::Provided))
    }

    fn from_secret_box(bytes: SecretBox<[u8; MASTER_KEY_LEN]>, source: KeySource) -> MasterKey {
        let id = KeyId::of(bytes.expose_secret());
        MasterKey { bytes, id, source }
    }

    /// The key's public fingerprint.
    pub fn id(&self) -> KeyId {
        self.id
    }

    /// Where the key came from.
    pub fn source(&self) -> &KeySource {
        &self.source
    }

    /// The key as base64, e.g. to print once for a backup or to set `XMBRIDGE_MASTER_KEY`.
    pub fn to_base64(&self) -> secrecy::SecretString {
        base64::engine::general_purpose::STANDARD
            .encode(self.bytes.expose_secret())
            .into()
    }

    pub(crate) fn bytes(&self) -> &[u8; MASTER_KEY_LEN] {
        self.bytes.expose_secret()
    }
}

fn getrandom_fill(buf: &mut [u8; MASTER_KEY_LEN]) -> Result<(), VaultError> {
    Ok(xmbridge_auth::random_bytes(buf)?)
}

fn store_has_data(db: &Path) -> bool {
    let mut wal = db.as_os_str().to_owned();
    wal.push("-wal");
    [db.to_path_buf(), PathBuf::from(wal)]
        .iter()
        .any(|p| std::fs::metadata(p).is_ok_and(|m| m.len() > 0))
}

fn read_key_file(path: &Path) -> Result<MasterKey, VaultError> {
    let meta = std::fs::metadata(path).map_err(|e| VaultError::io("read", path, e))?;
    check_private(path, &meta)?;
    let text = Zeroizing::new(
        std::fs::read_to_string(path)
            .map_err(|e| VaultError::io("read the master key file", path, e))?,
    );
    let mut key = MasterKey::from_base64(&text).map_err(|reason| VaultError::InvalidKeyFile {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    })?;
    key.source = KeySource::KeyFile(path.to_path_buf());
    Ok(key)
}

#[cfg(unix)]
fn check_private(path: &Path, meta: &std::fs::Metadata) -> Result<(), VaultError> {
    use std::os::unix::fs::PermissionsExt;
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(VaultError::KeyFileTooOpen {
            path: path.to_path_buf(),
            mode,
        });
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_private(_path: &Path, _meta: &std::fs::Metadata) -> Result<(), VaultError> {
    Ok(())
}

/// Writes the key to a private temporary file, then links it into place, so another process
/// never sees a half-written key file and an existing one is never replaced.
fn write_new_key_file(path: &Path, key: &MasterKey) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".master.key.{}.{}.tmp",
        std::process::id(),
        key.id.to_hex()
    ));
    let result = (|| {
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f = opts.open(&tmp)?;
        let mut text = Zeroizing::new(key.to_base64().expose_secret().to_owned());
        text.push('\n');
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::hard_link(&tmp, path)
    })();
    let _ = std::fs::remove_file(&tmp);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    const K: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

    #[test]
    fn base64_forms_and_key_id() {
        let a = MasterKey::from_base64(K).unwrap();
        let b = MasterKey::from_base64(&format!("  {}\n", K.trim_end_matches('='))).unwrap();
        let mut raw = [0u8; 32];
        for (i, b) in raw.iter_mut().enumerate() {
            *b = i as u8;
        }
        let c = MasterKey::from_bytes(raw);
        assert_eq!(a.id(), b.id());
        assert_eq!(a.id(), c.id());
        assert_eq!(a.id().to_hex().len(), 16);
        assert_eq!(a.to_base64().expose_secret(), K);
        assert_ne!(a.id(), MasterKey::generate().unwrap().id());
    }

    #[test]
    fn bad_base64_never_quotes_the_value() {
        for bad in ["not base64 !!!", "c2hvcnQ=", &format!("{K}{K}")] {
            let home = Home::at(tempfile::tempdir().unwrap().path().join("h")).unwrap();
            let err = MasterKey::load(&home, Some(bad)).unwrap_err();
            let msg = err.to_string();
            assert!(matches!(err, VaultError::InvalidMasterKeyEnv { .. }));
            assert!(msg.contains("head -c 32 /dev/urandom | base64"), "{msg}");
            assert!(!msg.contains(bad.trim()), "{msg}");
        }
    }

    #[test]
    fn debug_is_redacted() {
        let k = MasterKey::from_base64(K).unwrap();
        let dbg = format!("{k:?}");
        assert!(dbg.contains("REDACTED"), "{dbg}");
        assert!(!dbg.contains(K) && !dbg.contains("[0, 1, 2"), "{dbg}");
    }
}
