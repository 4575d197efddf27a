//! The one error type of the vault. Every message names the problem and the fix; none ever
//! contains a secret, a master key or a sealed value (only names, paths and key ids, which are a
//! hash prefix and reveal nothing about the key).

use std::path::PathBuf;

use xmbridge_state::StoreRef;

/// How to make a new master key, quoted in several messages.
pub(crate) const GENERATE_KEY_HINT: &str = "generate one with `head -c 32 /dev/urandom | base64`";

/// Why the vault could not do what was asked.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VaultError {
    /// Neither `XMBRIDGE_HOME` nor `HOME` is set, so there is nowhere to keep state.
    #[error(
        "cannot find a home for xmbridge: neither XMBRIDGE_HOME nor HOME is set; set XMBRIDGE_HOME to a directory where xmbridge may keep its state store and key file"
    )]
    NoHome,

    /// A file or directory of the installation could not be read or written.
    #[error(
        "cannot {action} {path}: {source}; check that the path exists, is the right kind of file and that this user may read and write it (or point XMBRIDGE_HOME elsewhere)"
    )]
    Io {
        /// What was being done, e.g. "create the directory".
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// What the operating system said.
        #[source]
        source: std::io::Error,
    },

    /// `XMBRIDGE_MASTER_KEY` is set but is not base64 of 32 bytes. The reason never quotes the value.
    #[error(
        "XMBRIDGE_MASTER_KEY is not a valid master key ({reason}): it must be the base64 encoding of exactly 32 random bytes; {GENERATE_KEY_HINT}, or unset it to use the key file in XMBRIDGE_HOME"
    )]
    InvalidMasterKeyEnv {
        /// What is wrong with it (never the value).
        reason: String,
    },

    /// The key file exists but does not hold base64 of 32 bytes.
    #[error(
        "the master key file {path} is damaged ({reason}): restore it from your backup, or set XMBRIDGE_MASTER_KEY to the key this installation was created with"
    )]
    InvalidKeyFile {
        /// The key file.
        path: PathBuf,
        /// What is wrong with it (never the content).
        reason: String,
    },

    /// No key file and no `XMBRIDGE_MASTER_KEY`, but the state store already holds data sealed
    /// under some key; a new key would not open it, so none is created.
    #[error(
        "the master key file {path} is missing, but the state store {store} already exists and was sealed with a master key; restore the key file from your backup (mode 0600), or set XMBRIDGE_MASTER_KEY to that key; to start over instead, move the state store away"
    )]
    KeyFileMissing {
        /// Where the key file should be.
        path: PathBuf,
        /// The existing state store.
        store: PathBuf,
    },

    /// The key file can be read or written by other users; it is refused, not used.
    #[error(
        "the master key file {path} is accessible by other users (mode {mode:04o}); restrict it with `chmod 600 {path}` and run again"
    )]
    KeyFileTooOpen {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },

    /// The installation directory can be written by other users, who could replace the state
    /// store or the key file; it is refused, not used (as OpenSSH refuses such a home).
    #[error(
        "the xmbridge home directory {path} is writable by other users (mode {mode:04o}): they could replace the state store or the master key file; restrict it with `chmod 700 {path}` and run again"
    )]
    HomeTooOpen {
        /// The directory.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },

    /// A state store file can be written by other users, who could have changed connection
    /// settings (where credentials are sent); it is refused, not used.
    #[error(
        "the state store file {path} is writable by other users (mode {mode:04o}): they could have changed where credentials are sent; check it (or restore it from a backup), restrict it with `chmod 600 {path}` and run again"
    )]
    StoreTooOpen {
        /// The file (`state.db`, or its `-wal` / `-shm`).
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },

    /// The state store exists but is empty (0 bytes): truncated by a crash, a full disk or a
    /// bad copy. Reading it as a new installation would silently lose every connection.
    #[error(
        "the state store {path} is empty (0 bytes), so it is damaged (a crash, a full disk or an incomplete copy): restore it from your backup; or, to start a new installation without any connections, remove it (`rm {path}`) and run again"
    )]
    EmptyStore {
        /// The state store.
        path: PathBuf,
    },

    /// A value in the state store has the wrong SQL type (edited by hand or by another program).
    #[error(
        "the {part} of connection '{connection}' in the state store {store} is damaged (stored as {found} where {expected} belongs): set it again with `xmbridge connection remove {connection}` and `xmbridge connection add ...` (a linked account: `xmbridge account unlink {connection}` and `xmbridge account link ...`), or restore the state store from a backup"
    )]
    DamagedValue {
        /// The connection it belongs to.
        connection: String,
        /// Which value, for people ("sealed API token", "settings" …).
        part: String,
        /// The SQL type found.
        found: &'static str,
        /// The SQL type expected.
        expected: &'static str,
        /// The state store.
        store: StoreRef,
    },

    /// The operating system's random source failed (needed for keys and nonces).
    #[error(
        "the operating system's random number generator failed; xmbridge cannot seal secrets without it — check /dev/urandom or getrandom(2) availability"
    )]
    RandomSource(#[from] xmbridge_auth::RandomError),

    /// The state store was sealed under a different master key.
    #[error(
        "the master key does not match this state store ({store}: created with key id {store_key_id}, the given key has id {given_key_id}); set XMBRIDGE_MASTER_KEY to the key it was created with, or {}", store.elsewhere()
    )]
    WrongMasterKey {
        /// The state store.
        store: StoreRef,
        /// Id of the key the store was created with.
        store_key_id: String,
        /// Id of the key that was given.
        given_key_id: String,
    },

    /// The file is not an SQLite database, or a sealed value in it fails authentication.
    #[error(
        "{what} in the state store {store} is damaged or was tampered with: restore the file from a backup, or set the affected secret again (`xmbridge connection remove NAME` and `xmbridge connection add ...`); if the whole file is damaged, move it away and xmbridge starts an empty state store"
    )]
    Corrupted {
        /// Which part is damaged, for people.
        what: String,
        /// The state store.
        store: StoreRef,
    },

    /// The state store was written by a newer xmbridge.
    #[error(
        "the state store {store} has vault schema version {found}, but this xmbridge understands up to {supported}; upgrade xmbridge, or {}", store.elsewhere()
    )]
    SchemaTooNew {
        /// The state store.
        store: StoreRef,
        /// The version in the store.
        found: i64,
        /// The newest version this build understands.
        supported: i64,
    },

    /// The vault's tables could not be brought to this build's version, or are at a newer one.
    #[error(transparent)]
    Migrate(Box<xmbridge_state::MigrateError>),

    /// Any other SQLite failure (locked for too long, disk full, read-only file …).
    #[error(
        "the state store {path} could not be used: {source}; check free disk space and file permissions, and that no other program holds it locked"
    )]
    Database {
        /// The state store.
        path: PathBuf,
        /// SQLite's error.
        #[source]
        source: rusqlite::Error,
    },

    /// A state store reached through `xmbridge_state::db` failed (PostgreSQL unreachable, the
    /// connection lost, a statement refused).
    #[error("the state store {store} could not be used: {source}")]
    State {
        /// The state store.
        store: StoreRef,
        /// The database's error.
        #[source]
        source: xmbridge_state::db::DbError,
    },

    /// A connection name breaks the naming rule.
    #[error(
        "'{name}' is not a valid connection name ({reason}): use 1 to 64 characters from A-Z, a-z, 0-9, '_', '.' and '-'"
    )]
    InvalidName {
        /// The refused name (cut to 80 characters).
        name: String,
        /// Which part of the rule it breaks.
        reason: String,
    },

    /// `add_connection` with a name already taken.
    #[error(
        "a connection named '{name}' already exists: choose another name, or remove the old one first with `xmbridge connection remove {name}`"
    )]
    DuplicateConnection {
        /// The name already taken.
        name: String,
    },

    /// The named connection does not exist.
    #[error(
        "no connection named '{name}': run `xmbridge connection list` to see the names, or add it with `xmbridge connection add`"
    )]
    ConnectionNotFound {
        /// The name asked for.
        name: String,
    },

    /// The secret field name is not one xmbridge knows.
    #[error(
        "unknown secret field '{field}': expected one of api_token, client_secret, refresh_token, private_key, passphrase, access_token"
    )]
    UnknownSecretField {
        /// The name given.
        field: String,
    },

    /// Connection settings are not a JSON object, or try to carry a secret in the clear.
    #[error("invalid connection settings: {reason}")]
    InvalidSettings {
        /// What is wrong (names keys, never values).
        reason: String,
    },
}

impl VaultError {
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        VaultError::Io {
            action,
            path: path.into(),
            source,
        }
    }
}

impl From<xmbridge_state::MigrateError> for VaultError {
    fn from(e: xmbridge_state::MigrateError) -> Self {
        VaultError::Migrate(Box::new(e))
    }
}
