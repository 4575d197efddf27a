//! Each Qualtrics connection's sync set-up: where it syncs to (destination URL and schema),
//! which tables, how often ([`Every`]) and whether the schedule is paused. Kept in the table
//! `svc_sync_config` of the state store; a destination password is never in that table: it is
//! split off the URL and sealed in the vault as [`SecretField::DestinationPassword`].

use std::fmt;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use secrecy::{ExposeSecret as _, SecretString};
use serde::{Deserialize, Serialize};
use xmbridge_destinations::{DestinationSettings, Password, PasswordSource, PgEnv};
use xmbridge_state::db::{DbError, Row, StateDb, StateLocation};
use xmbridge_state::vals;
use xmbridge_vault::{Provider, SecretField, Vault, VaultError};

use crate::error::{ErrorKind, Result, ServiceError};
use crate::users::now_ms;

/// This module's tables in the state store, as versioned migrations (`xmbridge_state`).
pub static COMPONENT: xmbridge_state::Component = xmbridge_state::Component {
    name: "service_sync_config",
    migrations: &[xmbridge_state::Migration {
        version: 1,
        name: "sync configuration per connection",
        sqlite: SCHEMA_V1,
        postgres: "
CREATE TABLE IF NOT EXISTS svc_sync_config (
    connection TEXT PRIMARY KEY NOT NULL,
    destination TEXT NOT NULL,
    schema_name TEXT NOT NULL,
    tables TEXT,
    every TEXT,
    paused BIGINT NOT NULL DEFAULT 0,
    updated_at BIGINT NOT NULL
);
",
    }],
    tables: &["svc_sync_config"],
};

const SCHEMA_V1: &str = "
CREATE TABLE IF NOT EXISTS svc_sync_config (
    connection TEXT PRIMARY KEY NOT NULL,
    destination TEXT NOT NULL,
    schema_name TEXT NOT NULL,
    tables TEXT,
    every TEXT,
    paused INTEGER NOT NULL DEFAULT 0,
    updated_at INTEGER NOT NULL
);
";

/// The schema (PostgreSQL) or table prefix (SQLite) when none is given, as `xmbridge sync`.
pub const DEFAULT_SCHEMA: &str = "qualtrics";

/// The sync frequencies a schedule may have (Fivetran's), with their length in minutes.
pub const EVERY_CHOICES: [(&str, u64); 10] = [
    ("5m", 5),
    ("15m", 15),
    ("30m", 30),
    ("1h", 60),
    ("2h", 120),
    ("3h", 180),
    ("6h", 360),
    ("8h", 480),
    ("12h", 720),
    ("24h", 1440),
];

/// How often a connection syncs: one of [`EVERY_CHOICES`] (5m 15m 30m 1h 2h 3h 6h 8h 12h 24h).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Every(Duration);

impl Every {
    /// Parses one of the allowed values (`Invalid`, listing them, otherwise).
    pub fn parse(text: &str) -> Result<Every> {
        let t = text.trim();
        EVERY_CHOICES
            .iter()
            .find(|(name, _)| *name == t)
            .map(|(_, mins)| Every(Duration::from_secs(mins * 60)))
            .ok_or_else(|| {
                ServiceError::refused(
                    ErrorKind::Invalid,
                    "invalid_schedule",
                    format!(
                        "invalid schedule {:?}: a sync can run every {}",
                        t.chars().take(40).collect::<String>(),
                        Every::allowed()
                    ),
                    Some(format!("use one of {}", Every::allowed())),
                )
            })
    }

    /// The allowed values, space separated.
    pub fn allowed() -> String {
        EVERY_CHOICES
            .iter()
            .map(|(n, _)| *n)
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// The interval.
    pub fn duration(self) -> Duration {
        self.0
    }

    /// The text it was parsed from (`"15m"`, `"1h"` …).
    pub fn as_str(self) -> &'static str {
        let mins = self.0.as_secs() / 60;
        EVERY_CHOICES
            .iter()
            .find(|(_, m)| *m == mins)
            .map(|(n, _)| *n)
            // Every value is built by `parse` from the table, so this is never reached.
            .unwrap_or("24h")
    }
}

impl fmt::Display for Every {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Every {
    type Err = ServiceError;
    fn from_str(s: &str) -> Result<Every> {
        Every::parse(s)
    }
}

impl Serialize for Every {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Every {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Every, D::Error> {
        let text = String::deserialize(d)?;
        Every::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// A connection's sync set-up. Holds no secret: the URL never carries a password.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SyncConfig {
    /// The destination URL (`sqlite:PATH`, `postgres://USER@HOST:PORT/DB`), without password.
    pub destination: String,
    /// Whether a destination password is sealed in the vault.
    pub has_password: bool,
    /// The PostgreSQL schema, or the SQLite table prefix (default `qualtrics`).
    pub schema: String,
    /// The tables to sync (`None`: all).
    pub tables: Option<Vec<String>>,
    /// How often the schedule syncs (`None`: no schedule, only "sync now").
    pub every: Option<Every>,
    /// The schedule is paused ("sync now" still works).
    pub paused: bool,
}

/// A change to a connection's sync set-up; `None` fields stay as they are.
#[derive(Debug, Default)]
pub struct ConfigChange {
    /// A new destination URL. A password in it is split off and sealed; a different URL without
    /// one drops the stored password (it belonged to the old destination).
    pub destination: Option<String>,
    /// The destination password (PostgreSQL only), sealed in the vault.
    pub password: Option<SecretString>,
    /// A new schema.
    pub schema: Option<String>,
    /// `Some(None)`: all tables; `Some(Some(list))`: these tables.
    pub tables: Option<Option<Vec<String>>>,
    /// `Some(None)`: no schedule; `Some(Some(every))`: this schedule.
    pub every: Option<Option<Every>>,
    /// Pause or resume the schedule.
    pub paused: Option<bool>,
}

/// The sync set-ups of one state store. Cheap to clone.
#[derive(Clone)]
pub struct SyncConfigs {
    inner: Arc<Inner>,
}

struct Inner {
    db: StateDb,
    vault: Arc<Vault>,
}

impl fmt::Debug for SyncConfigs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SyncConfigs")
            .field("store", self.inner.db.store())
            .finish()
    }
}

fn invalid(code: &'static str, message: impl Into<String>, fix: impl Into<String>) -> ServiceError {
    ServiceError::refused(ErrorKind::Invalid, code, message, Some(fix.into()))
}

fn is_postgres(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

/// Where the connection's name is unknown to the vault.
fn vault_error(connection: &str, e: VaultError) -> ServiceError {
    match e {
        VaultError::ConnectionNotFound { .. } => ServiceError::refused(
            ErrorKind::NotFound,
            "connection_not_found",
            format!("no connection named '{connection}'"),
            Some(
                "`xmbridge connection list` shows the names; add one with `xmbridge connection add`"
                    .into(),
            ),
        ),
        other => ServiceError::Vault(other),
    }
}

/// Checks a destination URL (already without password) the way the destinations open it: a
/// known scheme, a SQLite path and its options, a Delta directory and its options, a PostgreSQL
/// URL with a host and no password.
fn check_destination(url: &str) -> Result<()> {
    const FIX: &str = "give a destination like sqlite:/var/lib/xmbridge/acme.db or \
                       postgres://loader@db.example.com:5432/warehouse";
    if url.is_empty() {
        return Err(invalid(
            "invalid_destination",
            "the destination is empty",
            FIX,
        ));
    }
    if let Some(path) = xmbridge_destinations::sqlite::path_of_url(url) {
        if path.trim().is_empty() {
            return Err(invalid(
                "invalid_destination",
                format!("the SQLite destination {url:?} names no file"),
                "name the database file after sqlite:, e.g. sqlite:/var/lib/xmbridge/acme.db",
            ));
        }
        xmbridge_destinations::sqlite::SqliteOptions::from_url(url).map_err(|e| {
            invalid(
                "invalid_destination",
                e.to_string(),
                "the only SQLite option is ?max_size_mb=N",
            )
        })?;
        return Ok(());
    }
    if let Some(path) = xmbridge_destinations::delta::path_of_url(url) {
        if path.trim().is_empty() {
            return Err(invalid(
                "invalid_destination",
                format!("the Delta destination {url:?} names no directory"),
                "name the directory after delta:, e.g. delta:/var/lib/xmbridge/lake",
            ));
        }
        if let Some((scheme, _)) = path.split_once("://")
            && !xmbridge_destinations::delta_place::OBJECT_STORE_SCHEMES.contains(&scheme)
        {
            return Err(invalid(
                "invalid_destination",
                format!(
                    "the Delta destination names the object store scheme {scheme}://, which this build does not write"
                ),
                "write to a local directory (delta:/path) or to S3 (delta:s3://bucket/prefix)",
            ));
        }
        if path.contains("://")
            && url::Url::parse(path)
                .is_ok_and(|u| !u.username().is_empty() || u.password().is_some())
        {
            return Err(invalid(
                "invalid_destination",
                "the Delta destination's S3 URL carries a user or a password".to_string(),
                "give S3 credentials in the server's environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY), never in the URL",
            ));
        }
        xmbridge_destinations::delta::DeltaOptions::from_url(url).map_err(|e| {
            invalid(
                "invalid_destination",
                e.to_string(),
                "the Delta options are ?target_file_mb=N and (on S3) ?lease_secs=N",
            )
        })?;
        return Ok(());
    }
    if is_postgres(url) {
        let parsed = url::Url::parse(url).map_err(|e| {
            invalid(
                "invalid_destination",
                format!("invalid PostgreSQL URL {}: {e}", redact(url)),
                "write it as postgres://USER@HOST:PORT/DATABASE",
            )
        })?;
        // A Unix socket is named by `?host=/path` (libpq's form), not in the authority.
        let socket = parsed
            .query_pairs()
            .any(|(k, v)| k == "host" && !v.is_empty());
        if parsed.host_str().is_none_or(str::is_empty) && !socket {
            return Err(invalid(
                "invalid_destination",
                format!("the PostgreSQL URL {} names no host", redact(url)),
                "write it as postgres://USER@HOST:PORT/DATABASE",
            ));
        }
        // The stored form must be accepted as such (no password left in it).
        DestinationSettings::from_parts(url, None)
            .map_err(|e| invalid("invalid_destination", e.to_string(), FIX))?;
        return Ok(());
    }
    Err(invalid(
        "invalid_destination",
        format!(
            "unknown destination {}: expected one of {}",
            redact(url),
            xmbridge_destinations::KNOWN_DESTINATIONS
        ),
        FIX,
    ))
}

/// A URL for messages: its user info (which might hold a password) cut to the user name.
fn redact(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let (auth, tail) = match rest.find(['/', '?']) {
                Some(i) => rest.split_at(i),
                None => (rest, ""),
            };
            match auth.rsplit_once('@') {
                Some((creds, host)) => {
                    let user = creds.split(':').next().unwrap_or("");
                    let tail = tail.split('?').next().unwrap_or("");
                    format!("{scheme}://{user}@{host}{tail}")
                }
                None => format!("{scheme}://{auth}{}", tail.split('?').next().unwrap_or("")),
            }
        }
        None => url.chars().take(200).collect(),
    }
}

/// Checks a schema name: what both destinations store faithfully.
fn check_schema(schema: &str) -> Result<()> {
    let ok = !schema.is_empty()
        && schema.len() <= 63
        && schema
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(invalid(
            "invalid_schema",
            format!(
                "invalid schema {:?}",
                schema.chars().take(80).collect::<String>()
            ),
            "a schema is 1 to 63 letters, digits or '_' (default: qualtrics)",
        ))
    }
}

/// Checks table names against the sync's catalog; returns them without duplicates, in order.
fn check_tables(tables: &[String]) -> Result<Vec<String>> {
    let known: Vec<String> = xmbridge_sync::catalog::tables()
        .into_iter()
        .map(|t| t.name.to_string())
        .collect();
    if tables.is_empty() {
        return Err(invalid(
            "invalid_tables",
            "the table list is empty",
            format!(
                "name at least one table, or leave the selection out to sync all: {}",
                known.join(", ")
            ),
        ));
    }
    let mut out: Vec<String> = Vec::new();
    for t in tables {
        let t = t.trim();
        if let Some(why) = xmbridge_qualtrics::capabilities::not_synced(t) {
            return Err(invalid(
                "table_not_synced",
                format!("table {t:?} cannot be selected"),
                why,
            ));
        }
        if !known.iter().any(|k| k == t) {
            return Err(invalid(
                "unknown_table",
                format!("unknown table {:?}", t.chars().take(80).collect::<String>()),
                format!("tables are: {}", known.join(", ")),
            ));
        }
        if !out.iter().any(|o| o == t) {
            out.push(t.to_string());
        }
    }
    Ok(out)
}

type RawConfig = (String, String, Option<String>, Option<String>, bool);

/// Columns `from`…`from + 4` as a [`RawConfig`].
fn raw_config(r: &Row, from: usize) -> std::result::Result<RawConfig, DbError> {
    Ok((
        r.get(from)?,
        r.get(from + 1)?,
        r.get(from + 2)?,
        r.get(from + 3)?,
        r.get(from + 4)?,
    ))
}

impl SyncConfigs {
    /// Opens the sync set-ups of the state store at `path` (the vault's file), creating
    /// `svc_sync_config` if missing.
    pub fn open(path: &Path, vault: Arc<Vault>) -> Result<SyncConfigs> {
        SyncConfigs::open_at(&StateLocation::File(path.to_path_buf()), vault)
    }

    /// The same on any state store, SQLite or PostgreSQL.
    pub fn open_at(at: &StateLocation, vault: Arc<Vault>) -> Result<SyncConfigs> {
        let db = StateDb::open(at, &COMPONENT).map_err(ServiceError::state(format!(
            "open the sync configurations in {}",
            at.store()
        )))?;
        Ok(SyncConfigs {
            inner: Arc::new(Inner { db, vault }),
        })
    }

    fn has_password(&self, connection: &str) -> Result<bool> {
        match self.inner.vault.list_secrets(connection) {
            Ok(list) => Ok(list
                .iter()
                .any(|s| s.field == SecretField::DestinationPassword)),
            // A config left behind by a removed connection has no password any more.
            Err(VaultError::ConnectionNotFound { .. }) => Ok(false),
            Err(e) => Err(ServiceError::Vault(e)),
        }
    }

    fn config_of(&self, connection: &str, raw: RawConfig) -> Result<SyncConfig> {
        let (destination, schema, tables, every, paused) = raw;
        let damaged = |what: &str, detail: String| ServiceError::Io {
            context: format!(
                "the {what} of connection '{connection}' in {} is damaged; set it again with `xmbridge connection set {connection}`",
                self.inner.db.store()
            ),
            source: std::io::Error::other(detail),
        };
        let tables = tables
            .map(|t| serde_json::from_str::<Vec<String>>(&t))
            .transpose()
            .map_err(|e| damaged("table selection", e.to_string()))?;
        let every = every
            .map(|e| Every::parse(&e))
            .transpose()
            .map_err(|e| damaged("schedule", e.to_string()))?;
        Ok(SyncConfig {
            has_password: self.has_password(connection)?,
            destination,
            schema,
            tables,
            every,
            paused,
        })
    }

    /// A connection's sync set-up, if it has one.
    pub fn get(&self, connection: &str) -> Result<Option<SyncConfig>> {
        let failed = || ServiceError::state("read a sync configuration");
        let raw: Option<RawConfig> = self
            .inner
            .db
            .query_opt(
                "SELECT destination, schema_name, tables, every, paused
                 FROM svc_sync_config WHERE connection = ?1",
                &vals![connection],
            )
            .map_err(failed())?
            .map(|r| raw_config(&r, 0))
            .transpose()
            .map_err(failed())?;
        raw.map(|r| self.config_of(connection, r)).transpose()
    }

    /// Every connection's sync set-up, ordered by connection name.
    pub fn list(&self) -> Result<Vec<(String, SyncConfig)>> {
        let failed = || ServiceError::state("list sync configurations");
        let raws: Vec<(String, RawConfig)> = self
            .inner
            .db
            .query(
                "SELECT connection, destination, schema_name, tables, every, paused
                 FROM svc_sync_config ORDER BY connection",
                &[],
            )
            .map_err(failed())?
            .iter()
            .map(|r| Ok((r.get(0)?, raw_config(r, 1)?)))
            .collect::<std::result::Result<_, DbError>>()
            .map_err(failed())?;
        raws.into_iter()
            .map(|(name, raw)| Ok((name.clone(), self.config_of(&name, raw)?)))
            .collect()
    }

    /// Applies a change and returns the set-up now stored. The connection must exist in the
    /// vault and be a Qualtrics connection (`NotFound` / `Invalid`); a first change needs a
    /// destination. A password in the URL is split off and sealed in the vault, the URL stored
    /// without it; giving one in the URL and in `password` both is refused. The URL is checked
    /// as the destinations would open it, table names against the sync's catalog.
    pub fn apply(&self, connection: &str, change: ConfigChange) -> Result<SyncConfig> {
        let record = self
            .inner
            .vault
            .get_connection(connection)
            .map_err(|e| vault_error(connection, e))?;
        if record.provider != Provider::Qualtrics {
            return Err(invalid(
                "not_qualtrics",
                format!(
                    "'{connection}' is a {} account, not a Qualtrics connection: only Qualtrics connections sync",
                    record.provider.as_str()
                ),
                "name a connection listed by `xmbridge connection list`",
            ));
        }
        let current = self.get(connection)?;

        // The destination and what happens to its password.
        enum PasswordChange {
            Keep,
            Set(SecretString),
            Remove,
        }
        let mut password_change = PasswordChange::Keep;
        let destination = match (&change.destination, &current) {
            (Some(url), _) => {
                let url = url.trim();
                let resolved =
                    DestinationSettings::resolve(url, None, &PgEnv::default()).map_err(|e| {
                        invalid(
                            "invalid_destination",
                            e.to_string(),
                            "write it as sqlite:PATH or postgres://USER@HOST:PORT/DATABASE",
                        )
                    })?;
                let bare = resolved.settings.url().to_string();
                check_destination(&bare)?;
                let in_url = resolved.settings.password().map(|p| p.secret().clone());
                match (in_url, &change.password) {
                    (Some(_), Some(_)) => {
                        return Err(invalid(
                            "invalid_destination",
                            "the destination URL holds a password and a password is given too",
                            "give the password once: remove it from the URL",
                        ));
                    }
                    (Some(p), None) => password_change = PasswordChange::Set(p),
                    (None, _) => {
                        let same = current.as_ref().is_some_and(|c| c.destination == bare);
                        if !same {
                            // The old password belonged to another destination: not sent to
                            // this one.
                            password_change = PasswordChange::Remove;
                        }
                    }
                }
                bare
            }
            (None, Some(c)) => c.destination.clone(),
            (None, None) => {
                return Err(invalid(
                    "missing_destination",
                    format!("connection '{connection}' has no destination yet"),
                    format!(
                        "give one: `xmbridge connection set {connection} --destination sqlite:PATH` (or postgres://USER@HOST:PORT/DB)"
                    ),
                ));
            }
        };
        if let Some(p) = &change.password {
            if !is_postgres(&destination) {
                return Err(invalid(
                    "invalid_destination",
                    format!(
                        "a password applies to PostgreSQL destinations only; {} needs none",
                        redact(&destination)
                    ),
                    "leave the password out",
                ));
            }
            if p.expose_secret().is_empty() {
                return Err(invalid(
                    "invalid_destination",
                    "the destination password is empty",
                    "give the password, or leave it out for trust or certificate authentication",
                ));
            }
            password_change = PasswordChange::Set(p.clone());
        }
        if !is_postgres(&destination) {
            password_change = PasswordChange::Remove;
        }

        let schema = match &change.schema {
            Some(s) => {
                let s = s.trim();
                check_schema(s)?;
                s.to_string()
            }
            None => current
                .as_ref()
                .map(|c| c.schema.clone())
                .unwrap_or_else(|| DEFAULT_SCHEMA.to_string()),
        };
        let tables = match &change.tables {
            Some(Some(list)) => Some(check_tables(list)?),
            Some(None) => None,
            None => current.as_ref().and_then(|c| c.tables.clone()),
        };
        let every = match change.every {
            Some(e) => e,
            None => current.as_ref().and_then(|c| c.every),
        };
        let paused = change
            .paused
            .unwrap_or_else(|| current.as_ref().is_some_and(|c| c.paused));

        // The password first: a row pointing at a destination whose password failed to seal
        // would sync with the wrong credentials.
        match password_change {
            PasswordChange::Keep => {}
            PasswordChange::Set(p) => self
                .inner
                .vault
                .set_secret(connection, SecretField::DestinationPassword, &p)
                .map_err(|e| vault_error(connection, e))?,
            PasswordChange::Remove => {
                self.inner
                    .vault
                    .remove_secret(connection, SecretField::DestinationPassword)
                    .map_err(|e| vault_error(connection, e))?;
            }
        }
        let tables_json = tables
            .as_ref()
            .map(|t| serde_json::to_string(t).unwrap_or_else(|_| "[]".into()));
        self.inner
            .db
            .exec(
                "INSERT INTO svc_sync_config
                     (connection, destination, schema_name, tables, every, paused, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT (connection) DO UPDATE SET
                     destination = excluded.destination, schema_name = excluded.schema_name,
                     tables = excluded.tables, every = excluded.every, paused = excluded.paused,
                     updated_at = excluded.updated_at",
                &vals![
                    connection,
                    &destination,
                    &schema,
                    tables_json,
                    every.map(Every::as_str),
                    paused,
                    now_ms()
                ],
            )
            .map_err(ServiceError::state("save a sync configuration"))?;
        Ok(SyncConfig {
            has_password: self.has_password(connection)?,
            destination,
            schema,
            tables,
            every,
            paused,
        })
    }

    /// Removes a connection's sync set-up and its sealed destination password (nothing to do
    /// when it has none).
    pub fn remove(&self, connection: &str) -> Result<()> {
        self.inner
            .db
            .exec(
                "DELETE FROM svc_sync_config WHERE connection = ?1",
                &vals![connection],
            )
            .map_err(ServiceError::state("remove a sync configuration"))?;
        match self
            .inner
            .vault
            .remove_secret(connection, SecretField::DestinationPassword)
        {
            Ok(_) | Err(VaultError::ConnectionNotFound { .. }) => Ok(()),
            Err(e) => Err(ServiceError::Vault(e)),
        }
    }

    /// The settings a sync of `connection` opens its destination with: the stored URL and the
    /// password unsealed from the vault (source [`PasswordSource::Vault`]).
    pub fn destination_settings(
        &self,
        connection: &str,
        cfg: &SyncConfig,
    ) -> Result<DestinationSettings> {
        let password = self
            .inner
            .vault
            .get_secret(connection, SecretField::DestinationPassword)
            .map_err(|e| vault_error(connection, e))?
            .map(|s| Password::new(s, PasswordSource::Vault));
        DestinationSettings::from_parts(&cfg.destination, password).map_err(|e| {
            invalid(
                "invalid_destination",
                e.to_string(),
                format!("set the destination again with `xmbridge connection set {connection} --destination URL`"),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use xmbridge_vault::MasterKey;

    fn setup() -> (tempfile::TempDir, Arc<Vault>, SyncConfigs) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let vault = Arc::new(Vault::open(&path, MasterKey::generate().unwrap()).unwrap());
        vault
            .add_connection(
                "acme",
                Provider::Qualtrics,
                serde_json::json!({"base_url": "http://127.0.0.1:1"}),
            )
            .unwrap();
        let configs = SyncConfigs::open(&path, Arc::clone(&vault)).unwrap();
        (dir, vault, configs)
    }

    fn dest(url: &str) -> ConfigChange {
        ConfigChange {
            destination: Some(url.into()),
            ..ConfigChange::default()
        }
    }

    #[test]
    fn every_accepts_only_the_fivetran_frequencies() {
        for (text, mins) in EVERY_CHOICES {
            let e: Every = text.parse().unwrap();
            assert_eq!(e.duration(), Duration::from_secs(mins * 60));
            assert_eq!(e.to_string(), text);
            assert_eq!(serde_json::to_value(e).unwrap(), text);
            let back: Every = serde_json::from_value(serde_json::json!(text)).unwrap();
            assert_eq!(back, e);
        }
        for bad in ["10m", "1d", "", "60m", "24", "1H"] {
            let e = Every::parse(bad).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Invalid);
            let text = e.to_string();
            assert!(text.contains("5m 15m 30m 1h 2h 3h 6h 8h 12h 24h"), "{text}");
            assert!(e.fix().unwrap().contains("24h"));
        }
        assert!(serde_json::from_value::<Every>(serde_json::json!("7m")).is_err());
    }

    #[test]
    fn a_password_in_the_url_is_sealed_never_stored_or_shown() {
        let (dir, vault, c) = setup();
        let cfg = c
            .apply(
                "acme",
                ConfigChange {
                    every: Some(Some(Every::parse("15m").unwrap())),
                    ..dest("postgres://loader:Sup3r-s3cret-pw@127.0.0.1:5432/warehouse")
                },
            )
            .unwrap();
        assert_eq!(
            cfg.destination,
            "postgres://loader@127.0.0.1:5432/warehouse"
        );
        assert!(cfg.has_password);
        assert_eq!(cfg.schema, "qualtrics");
        for shown in [
            format!("{cfg:?}"),
            serde_json::to_string(&cfg).unwrap(),
            format!("{:?}", c.get("acme").unwrap()),
            format!("{:?}", c.list().unwrap()),
        ] {
            assert!(!shown.contains("Sup3r-s3cret-pw"), "{shown}");
        }
        let sealed = vault
            .get_secret("acme", SecretField::DestinationPassword)
            .unwrap()
            .unwrap();
        assert_eq!(sealed.expose_secret(), "Sup3r-s3cret-pw");
        let settings = c.destination_settings("acme", &cfg).unwrap();
        assert_eq!(settings.url(), cfg.destination);
        assert_eq!(
            settings.password().unwrap().source(),
            &PasswordSource::Vault
        );
        assert!(!format!("{settings:?}").contains("Sup3r-s3cret-pw"));
        drop(c);
        drop(vault);
        for f in ["state.db", "state.db-wal"] {
            let bytes = std::fs::read(dir.path().join(f)).unwrap_or_default();
            assert!(!String::from_utf8_lossy(&bytes).contains("Sup3r-s3cret-pw"));
        }
    }

    #[test]
    fn changes_keep_what_they_do_not_name() {
        let (_d, vault, c) = setup();
        let e = c.apply("acme", ConfigChange::default()).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Invalid);
        assert!(e.fix().unwrap().contains("--destination"));
        c.apply(
            "acme",
            ConfigChange {
                password: Some(SecretString::from("from-file-pw")),
                tables: Some(Some(vec!["survey".into(), "survey".into()])),
                ..dest("postgres://loader@127.0.0.1/w")
            },
        )
        .unwrap();
        let cfg = c
            .apply(
                "acme",
                ConfigChange {
                    paused: Some(true),
                    schema: Some("xm".into()),
                    ..ConfigChange::default()
                },
            )
            .unwrap();
        assert!(cfg.paused && cfg.has_password);
        assert_eq!(cfg.tables, Some(vec!["survey".to_string()]));
        assert_eq!(cfg.schema, "xm");
        // The same URL keeps the password; another one drops it.
        assert!(
            c.apply("acme", dest("postgres://loader@127.0.0.1/w"))
                .unwrap()
                .has_password
        );
        let cfg = c
            .apply("acme", dest("postgres://loader@127.0.0.2/w"))
            .unwrap();
        assert!(!cfg.has_password);
        assert!(
            vault
                .get_secret("acme", SecretField::DestinationPassword)
                .unwrap()
                .is_none()
        );
        // A password for SQLite is refused; both a URL password and a given one too.
        let e = c
            .apply(
                "acme",
                ConfigChange {
                    password: Some(SecretString::from("x")),
                    ..dest("sqlite:/tmp/x.db")
                },
            )
            .unwrap_err();
        assert!(
            e.to_string().contains("PostgreSQL destinations only"),
            "{e}"
        );
        let e = c
            .apply(
                "acme",
                ConfigChange {
                    password: Some(SecretString::from("pw-one")),
                    ..dest("postgres://u:pw-two@127.0.0.1/w")
                },
            )
            .unwrap_err();
        assert!(!e.to_string().contains("pw-two"));
        c.remove("acme").unwrap();
        assert!(c.get("acme").unwrap().is_none());
        c.remove("acme").unwrap();
    }

    #[test]
    fn bad_destinations_tables_and_connections_are_named() {
        let (_d, vault, c) = setup();
        for (url, says) in [
            ("mysql://h/d", "unknown destination"),
            ("sqlite:", "names no file"),
            ("sqlite:x.db?colour=red", "max_size_mb"),
            ("postgres:///d", "no host"),
            ("", "empty"),
        ] {
            let e = c.apply("acme", dest(url)).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Invalid, "{url}");
            let all = format!("{e} {}", e.fix().unwrap_or(""));
            assert!(all.contains(says), "{url}: {all}");
        }
        let e = c
            .apply(
                "acme",
                ConfigChange {
                    tables: Some(Some(vec!["survey".into(), "surveyz".into()])),
                    ..dest("sqlite:x.db")
                },
            )
            .unwrap_err();
        assert!(e.to_string().contains("surveyz"), "{e}");
        assert!(e.fix().unwrap().contains("survey"));
        let e = c
            .apply(
                "acme",
                ConfigChange {
                    schema: Some("a;drop".into()),
                    ..dest("sqlite:x.db")
                },
            )
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Invalid);
        let e = c.apply("nope", dest("sqlite:x.db")).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NotFound);
        vault
            .add_connection("sf", Provider::Salesforce, serde_json::json!({}))
            .unwrap();
        let e = c.apply("sf", dest("sqlite:x.db")).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Invalid);
        assert!(c.list().unwrap().is_empty());
    }

    #[test]
    fn postgres_urls_with_a_socket_or_options_are_accepted() {
        let (_d, _v, c) = setup();
        for url in [
            "postgres://loader@127.0.0.1:5432/w?sslmode=require",
            "postgresql://loader@[::1]/w",
            "postgres:///w?host=%2Fvar%2Frun%2Fpostgresql&user=loader",
        ] {
            let cfg = c.apply("acme", dest(url)).unwrap();
            assert_eq!(cfg.destination, url);
            assert!(!cfg.has_password);
        }
    }

    #[test]
    fn redaction_keeps_only_the_user() {
        assert_eq!(
            redact("postgres://u:pw@h:5/d?password=x"),
            "postgres://u@h:5/d"
        );
        assert_eq!(redact("mysql://h/d"), "mysql://h/d");
    }
}
