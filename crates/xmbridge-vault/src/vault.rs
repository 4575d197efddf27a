//! The vault proper: named connections (non-secret settings as JSON) and their sealed secrets in
//! the SQLite state store. It owns the tables `vault_meta`, `connections` and
//! `connection_secrets`; other components share the same file with their own tables and must not
//! touch these.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use rusqlite::{Connection, ErrorCode, OpenFlags};
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;
use xmbridge_state::StoreRef;
use xmbridge_state::db::{DbError, ErrorKind as DbErrorKind, Row, StateDb, StateLocation, Val};
use xmbridge_state::vals;

use crate::seal::{self, Sealer};
use crate::{Home, KeyId, MasterKey, VaultError};

/// The vault schema version this code writes and understands.
pub const SCHEMA_VERSION: i64 = 1;

/// The vault's tables in the state store, as versioned migrations (`xmbridge_state`).
/// `vault_meta`'s `schema_version` is the sealing format's version, checked by `init`.
pub static COMPONENT: xmbridge_state::Component = xmbridge_state::Component {
    name: "vault",
    migrations: &[xmbridge_state::Migration {
        version: 1,
        name: "connections and sealed secrets",
        sqlite: "CREATE TABLE IF NOT EXISTS vault_meta (
                     key   TEXT PRIMARY KEY,
                     value BLOB NOT NULL
                 );
                 CREATE TABLE IF NOT EXISTS connections (
                     name       TEXT PRIMARY KEY,
                     provider   TEXT NOT NULL,
                     settings   TEXT NOT NULL,
                     created_at TEXT NOT NULL,
                     updated_at TEXT NOT NULL
                 );
                 CREATE TABLE IF NOT EXISTS connection_secrets (
                     connection TEXT NOT NULL REFERENCES connections(name) ON DELETE CASCADE,
                     field      TEXT NOT NULL,
                     key_id     TEXT NOT NULL,
                     nonce      BLOB NOT NULL,
                     ciphertext BLOB NOT NULL,
                     updated_at TEXT NOT NULL,
                     PRIMARY KEY (connection, field)
                 );",
        postgres: "CREATE TABLE IF NOT EXISTS vault_meta (
                       key   TEXT PRIMARY KEY,
                       value BYTEA NOT NULL
                   );
                   CREATE TABLE IF NOT EXISTS connections (
                       name       TEXT PRIMARY KEY,
                       provider   TEXT NOT NULL,
                       settings   TEXT NOT NULL,
                       created_at TEXT NOT NULL,
                       updated_at TEXT NOT NULL
                   );
                   CREATE TABLE IF NOT EXISTS connection_secrets (
                       connection TEXT NOT NULL REFERENCES connections(name) ON DELETE CASCADE,
                       field      TEXT NOT NULL,
                       key_id     TEXT NOT NULL,
                       nonce      BYTEA NOT NULL,
                       ciphertext BYTEA NOT NULL,
                       updated_at TEXT NOT NULL,
                       PRIMARY KEY (connection, field)
                   );",
    }],
    tables: &["vault_meta", "connections", "connection_secrets"],
};

/// How long a writer waits for another process's lock before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// Which kind of account a connection is for: the one list of external systems, under the name
/// the vault has always used.
pub use xmbridge_auth::System as Provider;

/// A secret a connection may hold. The stored names (`as_str`) never change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SecretField {
    /// Qualtrics `X-API-TOKEN`.
    ApiToken,
    /// OAuth client secret.
    ClientSecret,
    /// OAuth refresh token (rotated by the provider; saved through [`VaultRefreshTokenSink`]).
    RefreshToken,
    /// PEM private key of a mutual-TLS client certificate (possibly encrypted PKCS#8).
    PrivateKey,
    /// Pass phrase of the private key.
    Passphrase,
    /// A cached OAuth access token.
    AccessToken,
    /// The shared key (or secret header value) that signs a webhook sent to xmbridge.
    SharedKey,
    /// A user's password (ServiceNow Basic auth accounts).
    Password,
    /// The password of a connection's stored sync destination (its URL is kept without it).
    DestinationPassword,
}

impl SecretField {
    /// Every field, in a stable order.
    pub const ALL: [SecretField; 9] = [
        SecretField::ApiToken,
        SecretField::ClientSecret,
        SecretField::RefreshToken,
        SecretField::PrivateKey,
        SecretField::Passphrase,
        SecretField::AccessToken,
        SecretField::SharedKey,
        SecretField::Password,
        SecretField::DestinationPassword,
    ];

    /// The stable stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            SecretField::ApiToken => "api_token",
            SecretField::ClientSecret => "client_secret",
            SecretField::RefreshToken => "refresh_token",
            SecretField::PrivateKey => "private_key",
            SecretField::Passphrase => "passphrase",
            SecretField::AccessToken => "access_token",
            SecretField::SharedKey => "shared_key",
            SecretField::Password => "password",
            SecretField::DestinationPassword => "destination_password",
        }
    }

    /// Words for people ("API token", "client secret" …).
    pub fn label(self) -> &'static str {
        match self {
            SecretField::ApiToken => "API token",
            SecretField::ClientSecret => "client secret",
            SecretField::RefreshToken => "refresh token",
            SecretField::PrivateKey => "private key",
            SecretField::Passphrase => "pass phrase",
            SecretField::AccessToken => "access token",
            SecretField::SharedKey => "webhook shared key",
            SecretField::Password => "password",
            SecretField::DestinationPassword => "destination password",
        }
    }
}

impl fmt::Display for SecretField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SecretField {
    type Err = VaultError;
    fn from_str(s: &str) -> Result<SecretField, VaultError> {
        SecretField::ALL
            .into_iter()
            .find(|f| f.as_str() == s)
            .ok_or_else(|| VaultError::UnknownSecretField {
                field: s.to_string(),
            })
    }
}

/// A stored connection without its secrets.
#[derive(Debug, Clone, PartialEq)]
pub struct ConnectionRecord {
    /// Unique name, `[A-Za-z0-9_.-]{1,64}`.
    pub name: String,
    /// The provider the account belongs to.
    pub provider: Provider,
    /// Non-secret settings (base URL, data center, auth mode, client id, certificate PEM,
    /// default directory, scopes …), always a JSON object.
    pub settings: Value,
    /// When it was added (millisecond precision).
    pub created_at: DateTime<Utc>,
    /// When its settings last changed (secret writes do not count).
    pub updated_at: DateTime<Utc>,
}

/// That a secret is set, and when it was last written (never its value).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretInfo {
    /// Which secret.
    pub field: SecretField,
    /// When it was last written.
    pub updated_at: DateTime<Utc>,
}

/// Checks the connection naming rule `[A-Za-z0-9_.-]{1,64}`.
pub fn validate_connection_name(name: &str) -> Result<(), VaultError> {
    let reason = if name.is_empty() {
        Some("it is empty".to_string())
    } else if name.len() > 64 {
        Some(format!("it is {} characters long", name.chars().count()))
    } else {
        name.chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
            .map(|c| format!("it contains {c:?}"))
    };
    match reason {
        None => Ok(()),
        Some(reason) => Err(VaultError::InvalidName {
            // A name this long is not worth echoing whole.
            name: name.chars().take(80).collect(),
            reason,
        }),
    }
}

/// Settings keys that would put a secret in the clear; such values go to `set_secret`.
const FORBIDDEN_SETTING_KEYS: &[&str] = &[
    "api_token",
    "apiToken",
    "client_secret",
    "clientSecret",
    "refresh_token",
    "refreshToken",
    "access_token",
    "accessToken",
    "private_key",
    "privateKey",
    "passphrase",
    "password",
    "secret",
];

fn validate_settings(settings: &Value) -> Result<(), VaultError> {
    let Some(obj) = settings.as_object() else {
        return Err(VaultError::InvalidSettings {
            reason: "they must be a JSON object".into(),
        });
    };
    for (k, v) in obj {
        if FORBIDDEN_SETTING_KEYS.contains(&k.as_str()) {
            return Err(VaultError::InvalidSettings {
                reason: format!(
                    "'{k}' looks like a secret and would be stored in the clear; store it with set_secret instead"
                ),
            });
        }
        if v.as_str().is_some_and(|s| s.contains("PRIVATE KEY-----")) {
            return Err(VaultError::InvalidSettings {
                reason: format!(
                    "'{k}' holds a private key, which would be stored in the clear; store it with set_secret(PrivateKey) instead"
                ),
            });
        }
    }
    Ok(())
}

/// Connections and sealed secrets in one state store (SQLite or PostgreSQL). `Send + Sync`:
/// share it with `Arc`; calls are serialized on one connection, and several `Vault`s (threads
/// or processes) may open the same store.
pub struct Vault {
    db: StateDb,
    sealer: Sealer,
    at: StateLocation,
    tightened: Vec<(PathBuf, u32)>,
    /// The schema migrations of the vault's tables this process applied while opening.
    migrated: Vec<xmbridge_state::Applied>,
}

impl fmt::Debug for Vault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Vault")
            .field("store", self.db.store())
            .field("key_id", &self.sealer.key_id())
            .finish()
    }
}

impl Vault {
    /// Opens (creating if missing) the state store of `home`.
    pub fn open_home(home: &Home, key: MasterKey) -> Result<Vault, VaultError> {
        Vault::open(home.state_db(), key)
    }

    /// Opens (creating if missing, mode 0600) the state store at `path` with `key`.
    ///
    /// A new store records the key's id and a sealed key-check value; an existing one must have
    /// been created with the same key ([`VaultError::WrongMasterKey`] otherwise). A file that is
    /// not an SQLite database is [`VaultError::Corrupted`], an empty one
    /// [`VaultError::EmptyStore`]. A store file other users may write is refused
    /// ([`VaultError::StoreTooOpen`]); one they may only read is restricted to 0600 and listed
    /// in [`Vault::tightened`].
    pub fn open(path: impl AsRef<Path>, key: MasterKey) -> Result<Vault, VaultError> {
        let path = path.as_ref().to_path_buf();
        let mut migrated = match std::fs::metadata(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => create_store(&path, &key)?,
            Err(e) => return Err(VaultError::io("read", &path, e)),
            Ok(_) => {
                refuse_empty_store(&path)?;
                Vec::new()
            }
        };
        let tightened = restrict_store_files(&path)?;
        let db = |e: rusqlite::Error| db_error(&path, e);
        // No CREATE: the file exists now; were it removed meanwhile, SQLite would make a new one
        // with the umask's mode instead of failing.
        let conn = Connection::open_with_flags(
            &path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(db)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(db)?;
        wal_mode(&conn).map_err(db)?;
        conn.pragma_update(None, "foreign_keys", "ON").map_err(db)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(db)?;
        let mut vault = Vault {
            db: StateDb::from_sqlite(conn, &path),
            sealer: Sealer::new(&key),
            at: StateLocation::File(path),
            tightened,
            migrated: Vec::new(),
        };
        migrated.extend(vault.init()?);
        vault.migrated = migrated;
        Ok(vault)
    }

    /// Opens the vault in any state store: the SQLite file as [`Vault::open`] does, or a
    /// PostgreSQL database, whose first opener records the key's id and key check (every later
    /// process must bring the same key: [`VaultError::WrongMasterKey`]).
    pub fn open_at(at: &StateLocation, key: MasterKey) -> Result<Vault, VaultError> {
        match at {
            StateLocation::File(path) => Vault::open(path, key),
            StateLocation::Postgres(worker) => {
                let mut vault = Vault {
                    db: StateDb::on_postgres(worker),
                    sealer: Sealer::new(&key),
                    at: at.clone(),
                    tightened: Vec::new(),
                    migrated: Vec::new(),
                };
                vault.migrated = vault.init()?;
                Ok(vault)
            }
        }
    }

    /// The schema migrations of the vault's tables ([`COMPONENT`]) this process applied while
    /// opening: all of them when it created the store, the missing ones of an older store, none
    /// otherwise (another process may have applied them meanwhile).
    pub fn migrations_applied(&self) -> &[xmbridge_state::Applied] {
        &self.migrated
    }

    /// State store files (`state.db`, `-wal`, `-shm`) that other users could read when this
    /// vault opened them, with their mode then; they are 0600 now. The caller tells the user.
    pub fn tightened(&self) -> &[(PathBuf, u32)] {
        &self.tightened
    }

    /// Where the state store is: the other components open their tables there.
    pub fn location(&self) -> &StateLocation {
        &self.at
    }

    /// The state store, for messages.
    pub fn store(&self) -> &StoreRef {
        self.db.store()
    }

    /// The id of the master key this vault seals with.
    pub fn key_id(&self) -> KeyId {
        self.sealer.key_id()
    }

    fn db(&self, e: DbError) -> VaultError {
        match e {
            DbError::Sqlite(e) => match &self.at {
                StateLocation::File(path) => db_error(path, e),
                StateLocation::Postgres(_) => VaultError::State {
                    store: self.store().clone(),
                    source: DbError::Sqlite(e),
                },
            },
            DbError::Migrate(m) => VaultError::Migrate(m),
            DbError::Type { .. } => self.corrupted(format!("a stored value ({e})")),
            other => VaultError::State {
                store: self.store().clone(),
                source: other,
            },
        }
    }

    /// Creates the tables and key check on first use; checks schema version and key otherwise.
    /// Returns the migrations it applied.
    fn init(&self) -> Result<Vec<xmbridge_state::Applied>, VaultError> {
        let migrated = self.db.migrate(&COMPONENT).map_err(|e| self.db(e))?;
        let ours = self.sealer.key_id();
        let sealed = self
            .sealer
            .seal(seal::KEY_CHECK_PLAINTEXT, &seal::key_check_aad(ours))?;
        let mut new_check = sealed.nonce;
        new_check.extend_from_slice(&sealed.ciphertext);
        // Two processes initialising a fresh store must not both write a key check.
        let found = self
            .db
            .tx(move |tx| {
                tx.lock_store()?;
                let mut meta = |k: &str| -> Result<Option<Val>, DbError> {
                    Ok(
                        match tx
                            .query_opt("SELECT value FROM vault_meta WHERE key = ?1", &vals![k])?
                        {
                            Some(r) => Some(r.get::<Option<Val>>(0)?.unwrap_or(Val::Null)),
                            None => None,
                        },
                    )
                };
                let found = (meta("schema_version")?, meta("key_id")?, meta("key_check")?);
                if let (None, None, None) = found {
                    let put = "INSERT INTO vault_meta (key, value) VALUES (?1, ?2)";
                    tx.exec(
                        put,
                        &vals!["schema_version", SCHEMA_VERSION.to_string().into_bytes()],
                    )?;
                    tx.exec(put, &vals!["key_id", ours.to_hex().into_bytes()])?;
                    tx.exec(put, &vals!["key_check", new_check])?;
                }
                Ok::<_, DbError>(found)
            })
            .map_err(|e| self.db(e))?;
        let blob = |k: &str, v: Val| match v {
            Val::Blob(b) => Ok(b),
            _ => Err(self.corrupted(format!(
                "the vault metadata '{k}' (table vault_meta: not a blob)"
            ))),
        };
        match found {
            (None, None, None) => {}
            (Some(version), Some(key_id), Some(check)) => {
                let version = blob("schema_version", version)?;
                let key_id = blob("key_id", key_id)?;
                let check = blob("key_check", check)?;
                let version = std::str::from_utf8(&version)
                    .ok()
                    .and_then(|v| v.parse::<i64>().ok())
                    .ok_or_else(|| self.corrupted("the vault schema version"))?;
                if version > SCHEMA_VERSION {
                    return Err(VaultError::SchemaTooNew {
                        store: self.store().clone(),
                        found: version,
                        supported: SCHEMA_VERSION,
                    });
                }
                let store_key_id = String::from_utf8_lossy(&key_id).into_owned();
                if store_key_id != ours.to_hex() {
                    return Err(VaultError::WrongMasterKey {
                        store: self.store().clone(),
                        store_key_id,
                        given_key_id: ours.to_hex(),
                    });
                }
                let opened = (check.len() > seal::NONCE_LEN)
                    .then(|| {
                        let (nonce, ct) = check.split_at(seal::NONCE_LEN);
                        self.sealer.open(nonce, ct, &seal::key_check_aad(ours))
                    })
                    .flatten();
                if opened.as_deref().map(Vec::as_slice) != Some(seal::KEY_CHECK_PLAINTEXT) {
                    return Err(self.corrupted("the master key check value"));
                }
            }
            _ => return Err(self.corrupted("the vault metadata (table vault_meta)")),
        }
        Ok(migrated)
    }

    fn corrupted(&self, what: impl Into<String>) -> VaultError {
        VaultError::Corrupted {
            what: what.into(),
            store: self.store().clone(),
        }
    }

    /// A value of `connection` read without a type, as text; any other SQL type is
    /// [`VaultError::DamagedValue`] naming the connection and the part.
    fn text(&self, v: Val, connection: &str, part: &str) -> Result<String, VaultError> {
        match v {
            Val::Text(t) => Ok(t),
            other => Err(self.damaged(&other, "text", connection, part)),
        }
    }

    /// Like [`Vault::text`] for blobs (nonces and ciphertexts).
    fn blob(&self, v: Val, connection: &str, part: &str) -> Result<Vec<u8>, VaultError> {
        match v {
            Val::Blob(b) => Ok(b),
            other => Err(self.damaged(&other, "a blob", connection, part)),
        }
    }

    fn damaged(
        &self,
        found: &Val,
        expected: &'static str,
        connection: &str,
        part: &str,
    ) -> VaultError {
        VaultError::DamagedValue {
            connection: connection.to_string(),
            part: part.to_string(),
            found: sql_type(found),
            expected,
            store: self.store().clone(),
        }
    }

    /// Adds a connection. Fails on a bad name, a duplicate name or settings that are not a JSON
    /// object or that carry a secret.
    pub fn add_connection(
        &self,
        name: &str,
        provider: Provider,
        settings: Value,
    ) -> Result<ConnectionRecord, VaultError> {
        validate_connection_name(name)?;
        validate_settings(&settings)?;
        let now = now();
        let res = self.db.exec(
            "INSERT INTO connections (name, provider, settings, created_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?4)",
            &vals![name, provider.as_str(), settings.to_string(), ts(now)],
        );
        match res {
            Ok(_) => {}
            Err(e) if e.kind() == DbErrorKind::Unique => {
                return Err(VaultError::DuplicateConnection {
                    name: name.to_string(),
                });
            }
            Err(e) => return Err(self.db(e)),
        }
        Ok(ConnectionRecord {
            name: name.to_string(),
            provider,
            settings,
            created_at: now,
            updated_at: now,
        })
    }

    /// One connection by name.
    pub fn get_connection(&self, name: &str) -> Result<ConnectionRecord, VaultError> {
        let row = self
            .db
            .query_opt(
                "SELECT name, provider, settings, created_at, updated_at
                 FROM connections WHERE name = ?1",
                &vals![name],
            )
            .map_err(|e| self.db(e))?;
        match row {
            Some(r) => self.record(raw_record(r)),
            None => Err(not_found(name)),
        }
    }

    /// Every connection, ordered by name.
    pub fn list_connections(&self) -> Result<Vec<ConnectionRecord>, VaultError> {
        self.db
            .query(
                "SELECT name, provider, settings, created_at, updated_at
                 FROM connections ORDER BY name",
                &[],
            )
            .map_err(|e| self.db(e))?
            .into_iter()
            .map(|r| self.record(raw_record(r)))
            .collect()
    }

    /// Replaces a connection's settings; returns the updated record.
    pub fn update_settings(
        &self,
        name: &str,
        settings: Value,
    ) -> Result<ConnectionRecord, VaultError> {
        validate_settings(&settings)?;
        let n = self
            .db
            .exec(
                "UPDATE connections SET settings = ?2, updated_at = ?3 WHERE name = ?1",
                &vals![name, settings.to_string(), ts(now())],
            )
            .map_err(|e| self.db(e))?;
        if n == 0 {
            return Err(not_found(name));
        }
        self.get_connection(name)
    }

    /// Removes a connection and all its secrets, in one transaction.
    pub fn remove_connection(&self, name: &str) -> Result<(), VaultError> {
        let owned = name.to_string();
        let n = self
            .db
            .tx(move |tx| {
                tx.exec(
                    "DELETE FROM connection_secrets WHERE connection = ?1",
                    &vals![&owned],
                )?;
                let n = tx.exec("DELETE FROM connections WHERE name = ?1", &vals![&owned])?;
                Ok::<_, DbError>(n)
            })
            .map_err(|e| self.db(e))?;
        if n == 0 {
            return Err(not_found(name));
        }
        Ok(())
    }

    /// Seals and saves a secret, replacing any previous value atomically: a concurrent reader
    /// sees the old or the new value, never neither.
    pub fn set_secret(
        &self,
        connection: &str,
        field: SecretField,
        value: &SecretString,
    ) -> Result<(), VaultError> {
        let key_id = self.sealer.key_id();
        let sealed = self.sealer.seal(
            value.expose_secret().as_bytes(),
            &seal::secret_aad(connection, field.as_str(), key_id),
        )?;
        // One statement: it fails on the foreign key when the connection is missing, and an
        // upsert is a single atomic write.
        let res = self.db.exec(
            "INSERT INTO connection_secrets (connection, field, key_id, nonce, ciphertext, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT (connection, field) DO UPDATE SET
                 key_id = excluded.key_id, nonce = excluded.nonce,
                 ciphertext = excluded.ciphertext, updated_at = excluded.updated_at",
            &vals![
                connection,
                field.as_str(),
                key_id.to_hex(),
                sealed.nonce,
                sealed.ciphertext,
                ts(now())
            ],
        );
        match res {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == DbErrorKind::ForeignKey => Err(not_found(connection)),
            Err(e) => Err(self.db(e)),
        }
    }

    /// The secret, if set. A value that fails authentication (tampered, moved from another
    /// row, sealed under another key) is [`VaultError::Corrupted`], never garbage.
    pub fn get_secret(
        &self,
        connection: &str,
        field: SecretField,
    ) -> Result<Option<SecretString>, VaultError> {
        let row = self
            .db
            .query_opt(
                "SELECT key_id, nonce, ciphertext FROM connection_secrets
                 WHERE connection = ?1 AND field = ?2",
                &vals![connection, field.as_str()],
            )
            .map_err(|e| self.db(e))?;
        let Some(row) = row else {
            // Distinguish "no such connection" from "not set".
            self.get_connection(connection)?;
            return Ok(None);
        };
        let [row_key_id, nonce, ciphertext] = row.into_array::<3>();
        let part = |p: &str| format!("{p} of the sealed {}", field.label());
        let row_key_id = self.text(row_key_id, connection, &part("key id"))?;
        let nonce = self.blob(nonce, connection, &part("nonce"))?;
        let ciphertext = self.blob(ciphertext, connection, &part("ciphertext"))?;
        let what = || format!("the sealed {} of connection '{connection}'", field.label());
        let key_id = self.sealer.key_id();
        if row_key_id != key_id.to_hex() {
            return Err(self.corrupted(format!("{} (sealed under another key)", what())));
        }
        let plain = self
            .sealer
            .open(
                &nonce,
                &ciphertext,
                &seal::secret_aad(connection, field.as_str(), key_id),
            )
            .ok_or_else(|| self.corrupted(what()))?;
        let text = std::str::from_utf8(&plain).map_err(|_| self.corrupted(what()))?;
        Ok(Some(SecretString::from(text)))
    }

    /// Deletes one secret; `true` if it was set.
    pub fn remove_secret(&self, connection: &str, field: SecretField) -> Result<bool, VaultError> {
        let n = self
            .db
            .exec(
                "DELETE FROM connection_secrets WHERE connection = ?1 AND field = ?2",
                &vals![connection, field.as_str()],
            )
            .map_err(|e| self.db(e))?;
        if n == 0 {
            self.get_connection(connection)?;
        }
        Ok(n > 0)
    }

    /// Which secrets a connection has (names and times only), in [`SecretField::ALL`] order.
    /// Unknown field names written by a newer xmbridge are skipped.
    pub fn list_secrets(&self, connection: &str) -> Result<Vec<SecretInfo>, VaultError> {
        self.get_connection(connection)?;
        let rows = self
            .db
            .query(
                "SELECT field, updated_at FROM connection_secrets WHERE connection = ?1",
                &vals![connection],
            )
            .map_err(|e| self.db(e))?;
        let mut out = Vec::new();
        for row in rows {
            let [field, at] = row.into_array::<2>();
            let field = self.text(field, connection, "name of a secret")?;
            let Ok(field) = field.parse::<SecretField>() else {
                continue;
            };
            let at = self.text(at, connection, &format!("time of the {}", field.label()))?;
            let updated_at = parse_ts(&at).ok_or_else(|| {
                self.corrupted(format!(
                    "the time of the {} of '{connection}'",
                    field.label()
                ))
            })?;
            out.push(SecretInfo { field, updated_at });
        }
        out.sort_by_key(|s| s.field);
        Ok(out)
    }

    /// A [`xmbridge_auth::RefreshTokenSink`] that saves rotated refresh tokens of `connection`.
    pub fn refresh_token_sink(self: &Arc<Self>, connection: &str) -> VaultRefreshTokenSink {
        VaultRefreshTokenSink {
            vault: Arc::clone(self),
            connection: connection.to_string(),
        }
    }

    fn record(&self, raw: RawRecord) -> Result<ConnectionRecord, VaultError> {
        let name = match raw.name {
            Val::Text(t) => t,
            other => {
                let shown = match &other {
                    Val::Blob(b) => String::from_utf8_lossy(b).chars().take(80).collect(),
                    Val::Int(i) => i.to_string(),
                    _ => "?".to_string(),
                };
                return Err(self.damaged(&other, "text", &shown, "name"));
            }
        };
        let what = |part: &str| format!("the {part} of connection '{name}'");
        let provider = self
            .text(raw.provider, &name, "provider")?
            .parse::<Provider>()
            .map_err(|_| self.corrupted(what("provider")))?;
        let settings: Value = serde_json::from_str(&self.text(raw.settings, &name, "settings")?)
            .ok()
            .filter(Value::is_object)
            .ok_or_else(|| self.corrupted(what("settings")))?;
        let created_at = parse_ts(&self.text(raw.created_at, &name, "creation time")?)
            .ok_or_else(|| self.corrupted(what("creation time")))?;
        let updated_at = parse_ts(&self.text(raw.updated_at, &name, "update time")?)
            .ok_or_else(|| self.corrupted(what("update time")))?;
        Ok(ConnectionRecord {
            name,
            provider,
            settings,
            created_at,
            updated_at,
        })
    }
}

/// Saves rotated refresh tokens into one connection's [`SecretField::RefreshToken`], atomically.
/// It blocks on SQLite briefly; from async code that is acceptable for this rare write.
#[derive(Debug, Clone)]
pub struct VaultRefreshTokenSink {
    vault: Arc<Vault>,
    connection: String,
}

impl VaultRefreshTokenSink {
    /// A sink for `connection` in `vault`.
    pub fn new(vault: Arc<Vault>, connection: impl Into<String>) -> Self {
        VaultRefreshTokenSink {
            vault,
            connection: connection.into(),
        }
    }
}

impl xmbridge_auth::RefreshTokenSink for VaultRefreshTokenSink {
    fn save(&self, refresh_token: &SecretString) -> Result<(), xmbridge_auth::SinkError> {
        self.vault
            .set_secret(&self.connection, SecretField::RefreshToken, refresh_token)
            .map_err(Into::into)
    }
}

/// A `connections` row as stored, types unchecked (see [`Vault::text`]).
struct RawRecord {
    name: Val,
    provider: Val,
    settings: Val,
    created_at: Val,
    updated_at: Val,
}

fn raw_record(r: Row) -> RawRecord {
    let [name, provider, settings, created_at, updated_at] = r.into_array::<5>();
    RawRecord {
        name,
        provider,
        settings,
        created_at,
        updated_at,
    }
}

fn not_found(name: &str) -> VaultError {
    VaultError::ConnectionNotFound {
        name: name.to_string(),
    }
}

/// A SQLite error of the file at `path` as the vault reports it.
fn db_error(path: &Path, e: rusqlite::Error) -> VaultError {
    let store = StoreRef::File(path.to_path_buf());
    if let rusqlite::Error::InvalidColumnType(..) | rusqlite::Error::FromSqlConversionFailure(..) =
        e
    {
        // A value of the wrong type: damage, not a disk or lock problem.
        return VaultError::Corrupted {
            what: format!("a stored value ({e})"),
            store,
        };
    }
    match e.sqlite_error_code() {
        Some(ErrorCode::NotADatabase) | Some(ErrorCode::DatabaseCorrupt) => VaultError::Corrupted {
            what: "the file itself (it is not a valid SQLite database)".into(),
            store,
        },
        _ => VaultError::Database {
            path: path.to_path_buf(),
            source: e,
        },
    }
}

fn sql_type(v: &Val) -> &'static str {
    match v {
        Val::Blob(_) => "a blob",
        other => other.kind(),
    }
}

fn now() -> DateTime<Utc> {
    // Stored with millisecond precision; truncate here so the returned record equals a re-read.
    let t = Utc::now();
    DateTime::from_timestamp_millis(t.timestamp_millis()).unwrap_or(t)
}

fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn parse_ts(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// Refuses a state store that exists but is empty: only a crash, a full disk or a bad copy
/// leaves one (a new store is never visible before it is complete, see [`create_store`]).
pub(crate) fn refuse_empty_store(path: &Path) -> Result<(), VaultError> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() && m.len() == 0 => Err(VaultError::EmptyStore {
            path: path.to_path_buf(),
        }),
        _ => Ok(()),
    }
}

/// Distinguishes the temporary files of several creators in one process.
static CREATE_SEQ: AtomicU64 = AtomicU64::new(0);

/// Switches the store to WAL mode (a no-op once it is). The first switch needs the file to
/// itself: when two processes open a new store at once, both hold a read lock and want the
/// exclusive one, and SQLite answers one of them "database is locked" at once instead of
/// waiting (its busy timeout does not apply to such a deadlock; seen as 1 run in 150 of
/// `racing_first_use_agrees_on_one_key_file`). That one drops its lock, waits a moment and
/// tries again, until the busy timeout.
fn wal_mode(conn: &Connection) -> Result<(), rusqlite::Error> {
    let started = std::time::Instant::now();
    loop {
        // journal_mode answers with a row; pragma_update would reject that.
        match conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get::<_, String>(0)) {
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::DatabaseBusy
                    && started.elapsed() < BUSY_TIMEOUT =>
            {
                std::thread::sleep(Duration::from_millis(5));
            }
            other => return other.map(|_| ()),
        }
    }
}

/// Creates a new state store: built complete (tables, key id, key check) in a private (0600)
/// temporary file, then linked into place, so no process ever sees an empty or half-made
/// `state.db` — an empty one can then always be refused as damaged. If another process linked
/// its store first, that one is used (and must have been made with the same key).
fn create_store(path: &Path, key: &MasterKey) -> Result<Vec<xmbridge_state::Applied>, VaultError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".state.db.{}.{}.tmp",
        std::process::id(),
        CREATE_SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| {
        create_private_file(&tmp)?;
        let db = |e: rusqlite::Error| db_error(&tmp, e);
        // The default rollback journal: closed, the file is complete on its own.
        let conn = Connection::open_with_flags(
            &tmp,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(db)?;
        let fresh = Vault {
            db: StateDb::from_sqlite(conn, &tmp),
            sealer: Sealer::new(key),
            at: StateLocation::File(tmp.clone()),
            tightened: Vec::new(),
            migrated: Vec::new(),
        };
        let migrated = fresh.init()?;
        drop(fresh);
        std::fs::File::open(&tmp)
            .and_then(|f| f.sync_all())
            .map_err(|e| VaultError::io("write the new state store", &tmp, e))?;
        match std::fs::hard_link(&tmp, path) {
            Ok(()) => Ok(migrated),
            // Another process created it first: its migrations are the ones in the store.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(Vec::new()),
            Err(e) => Err(VaultError::io("create the state store", path, e)),
        }
    })();
    let _ = std::fs::remove_file(&tmp);
    result
}

/// An empty file only this user may read and write (whatever the umask).
fn create_private_file(path: &Path) -> Result<(), VaultError> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    opts.open(path)
        .map(drop)
        .map_err(|e| VaultError::io("create the state store", path, e))
}

/// The state store and its `-wal`/`-shm` companions (SQLite gives those the store's mode):
/// refused when others may write them (they could have redirected credentials), restricted to
/// 0600 when others may only read them. Returns the files restricted, with their old mode.
#[cfg(unix)]
fn restrict_store_files(path: &Path) -> Result<Vec<(PathBuf, u32)>, VaultError> {
    use std::os::unix::fs::PermissionsExt;
    let mut tightened = Vec::new();
    for suffix in ["", "-wal", "-shm"] {
        let mut name = path.as_os_str().to_owned();
        name.push(suffix);
        let file = PathBuf::from(name);
        let meta = match std::fs::metadata(&file) {
            Ok(m) if m.is_file() => m,
            // Not a file: SQLite's open reports it.
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(VaultError::io("read", &file, e)),
        };
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o022 != 0 {
            return Err(VaultError::StoreTooOpen { path: file, mode });
        }
        if mode & 0o044 != 0 {
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode & 0o7700))
                .map_err(|e| VaultError::io("restrict the permissions of", &file, e))?;
            tightened.push((file, mode));
        }
    }
    Ok(tightened)
}

#[cfg(not(unix))]
fn restrict_store_files(_path: &Path) -> Result<Vec<(PathBuf, u32)>, VaultError> {
    Ok(Vec::new())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["a", "prod.ca1", "A_b-9", &"x".repeat(64)] {
            validate_connection_name(ok).unwrap();
        }
        for bad in ["", "a b", "ä", "a/b", &"x".repeat(65), "--;drop"] {
            let r = validate_connection_name(bad);
            if bad == "--;drop" {
                assert!(r.is_err());
            } else {
                let msg = r.unwrap_err().to_string();
                assert!(msg.contains("1 to 64 characters"), "{msg}");
            }
        }
    }

    #[test]
    fn field_and_provider_names_are_stable() {
        let names: Vec<_> = SecretField::ALL.iter().map(|f| f.as_str()).collect();
        assert_eq!(
            names,
            [
                "api_token",
                "client_secret",
                "refresh_token",
                "private_key",
                "passphrase",
                "access_token",
                "shared_key",
                "password",
                "destination_password",
            ]
        );
        for f in SecretField::ALL {
            assert_eq!(f.as_str().parse::<SecretField>().unwrap(), f);
        }
        assert!("nope".parse::<SecretField>().is_err());
        assert_eq!(
            "ServiceNow".parse::<Provider>().unwrap(),
            Provider::ServiceNow
        );
        assert!(
            "jira"
                .parse::<Provider>()
                .unwrap_err()
                .to_string()
                .contains("qualtrics")
        );
    }

    #[test]
    fn settings_must_not_carry_secrets() {
        validate_settings(&serde_json::json!({"client_id": "x", "token_url": "https://a"}))
            .unwrap();
        assert!(validate_settings(&serde_json::json!([1])).is_err());
        assert!(validate_settings(&serde_json::json!({"client_secret": "x"})).is_err());
        let pem = "-----BEGIN ENCRYPTED PRIVATE KEY-----\nabc\n-----END ENCRYPTED PRIVATE KEY-----";
        assert!(validate_settings(&serde_json::json!({ "key": pem })).is_err());
        let cert = "-----BEGIN CERTIFICATE-----\nabc\n-----END CERTIFICATE-----";
        validate_settings(&serde_json::json!({ "certificate_pem": cert })).unwrap();
    }
}
