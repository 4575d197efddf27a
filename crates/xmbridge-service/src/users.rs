//! The installation's users and roles, their API tokens and browser sessions, and the audit log,
//! in the tables `svc_users`, `svc_tokens`, `svc_sessions` and `svc_audit` of the state store
//! (`$XMBRIDGE_HOME/state.db`).
//!
//! What is stored, and how:
//! - a password only as an argon2id PHC string (`$argon2id$v=19$m=…`), with a random 16-byte salt;
//! - an API token (`xmb_` + 32 random bytes in hex, shown once) only as its SHA-256 in hex, with
//!   its expiry, revocation and last use;
//! - a session cookie (32 random bytes in hex) only as its SHA-256 in hex, with its CSRF token
//!   and expiry;
//! - the audit log: who (actor and how: session, token id, operator CLI), what, on what, when and
//!   from where; never a secret.
//!
//! A wrong password and an unknown user get the same answer after the same work (one argon2
//! verification), so the answer does not tell which names exist.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use argon2::{Argon2, PasswordHasher as _, PasswordVerifier as _};
use chrono::{DateTime, TimeZone as _, Utc};
use parking_lot::Mutex;
use rusqlite::{Connection, ErrorCode, OpenFlags, OptionalExtension as _, params};
use secrecy::{ExposeSecret as _, SecretString};
use serde::{Deserialize, Serialize};
use sha2::Digest as _;

use crate::error::{ErrorKind, Result, ServiceError};

/// The shortest password accepted.
pub const MIN_PASSWORD_CHARS: usize = 12;
/// The longest password accepted (argon2 hashes any length; a limit keeps a request cheap).
pub const MAX_PASSWORD_BYTES: usize = 1024;
/// What every API token starts with, so a leaked one is recognisable (secret scanners).
pub const TOKEN_PREFIX: &str = "xmb_";

/// How long a writer waits for another connection's lock (as the vault and workflow store do).
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// This module's tables in the state store, as versioned migrations (`xmbridge_state`).
pub static COMPONENT: xmbridge_state::Component = xmbridge_state::Component {
    name: "service_users",
    migrations: &[xmbridge_state::Migration {
        version: 1,
        name: "users, API tokens, sessions, audit",
        sqlite: SCHEMA_V1,
    }],
};

const SCHEMA_V1: &str = "
CREATE TABLE IF NOT EXISTS svc_users (
    name TEXT PRIMARY KEY NOT NULL,
    role TEXT NOT NULL,
    password_hash TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    password_changed_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS svc_tokens (
    id TEXT PRIMARY KEY NOT NULL,
    user TEXT NOT NULL REFERENCES svc_users(name) ON DELETE CASCADE,
    hash TEXT NOT NULL UNIQUE,
    created_at INTEGER NOT NULL,
    expires_at INTEGER,
    revoked_at INTEGER,
    last_used_at INTEGER
);
CREATE INDEX IF NOT EXISTS svc_tokens_user ON svc_tokens(user);
CREATE TABLE IF NOT EXISTS svc_sessions (
    hash TEXT PRIMARY KEY NOT NULL,
    user TEXT NOT NULL REFERENCES svc_users(name) ON DELETE CASCADE,
    csrf_token TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS svc_sessions_user ON svc_sessions(user);
CREATE TABLE IF NOT EXISTS svc_audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at INTEGER NOT NULL,
    actor TEXT NOT NULL,
    via TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    detail TEXT NOT NULL,
    address TEXT
);
";

/// A user's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// The brand administrator: connections, schedules, brand accounts and their grants, users,
    /// every workflow.
    Admin,
    /// Their own linked accounts, the workflows they own, read access to syncs and workflows.
    Member,
}

impl Role {
    /// `"admin"` or `"member"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Member => "member",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = ServiceError;
    fn from_str(s: &str) -> Result<Role> {
        match s {
            "admin" => Ok(Role::Admin),
            "member" => Ok(Role::Member),
            other => Err(ServiceError::refused(
                ErrorKind::Invalid,
                "invalid_role",
                format!(
                    "unknown role {:?}",
                    other.chars().take(40).collect::<String>()
                ),
                Some("a role is admin or member".into()),
            )),
        }
    }
}

/// A user (never their password).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct User {
    /// The name they sign in with, `[A-Za-z0-9_.-]{1,64}`.
    pub name: String,
    /// Their role.
    pub role: Role,
    /// When they were added.
    pub created_at: DateTime<Utc>,
}

/// An API token's record (never the token).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TokenInfo {
    /// Its id, shown in lists and the audit log, used to revoke it.
    pub id: String,
    /// The user it acts as.
    pub user: String,
    /// When it was made.
    pub created_at: DateTime<Utc>,
    /// When it stops working, if ever.
    pub expires_at: Option<DateTime<Utc>>,
    /// Whether it was revoked.
    pub revoked: bool,
    /// When it was last used to authenticate.
    pub last_used_at: Option<DateTime<Utc>>,
}

/// A session just opened: the cookie value is shown to the browser once; only its hash is kept.
#[derive(Debug)]
pub struct NewSession {
    /// The cookie value (32 random bytes, hex). Its `Debug` is redacted.
    pub cookie: SecretString,
    /// The CSRF token the browser sends in `X-CSRF-Token` with state-changing requests.
    pub csrf_token: String,
    /// When the session ends.
    pub expires_at: DateTime<Utc>,
}

/// A live session found by its cookie.
#[derive(Debug, Clone)]
pub struct Session {
    /// Who is signed in.
    pub user: User,
    /// The session's CSRF token.
    pub csrf_token: String,
    /// When the session ends.
    pub expires_at: DateTime<Utc>,
}

/// How an audited change was made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Via {
    /// A browser session.
    Session,
    /// An API token (its id).
    Token(String),
    /// The local command line: the installation's operator, who holds the master key.
    Cli,
    /// The local command line acting on a user's behalf (`--as USER`).
    CliOnBehalfOf(String),
}

impl Via {
    /// The stored text: `session`, `token:ID`, `cli`, `cli-as:USER`.
    pub fn to_text(&self) -> String {
        match self {
            Via::Session => "session".into(),
            Via::Token(id) => format!("token:{id}"),
            Via::Cli => "cli".into(),
            Via::CliOnBehalfOf(user) => format!("cli-as:{user}"),
        }
    }
}

impl fmt::Display for Via {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_text())
    }
}

/// An audit entry to record. Never put a secret in `detail`.
#[derive(Debug, Clone)]
pub struct AuditEntry {
    /// Who did it (a user name, or the operator's name for the CLI).
    pub actor: String,
    /// How.
    pub via: Via,
    /// What, e.g. `user.add`, `token.revoke`, `connection.set`.
    pub action: String,
    /// On what, e.g. the user or connection name.
    pub target: String,
    /// Details (no secrets): the role given, the fields changed …
    pub detail: serde_json::Value,
    /// The client address, for HTTP requests.
    pub address: Option<String>,
}

impl AuditEntry {
    /// An entry made on the local command line (`via` is [`Via::Cli`], or
    /// [`Via::CliOnBehalfOf`] when `on_behalf_of` is given), no address.
    pub fn cli(
        actor: impl Into<String>,
        on_behalf_of: Option<&str>,
        action: impl Into<String>,
        target: impl Into<String>,
        detail: serde_json::Value,
    ) -> AuditEntry {
        AuditEntry {
            actor: actor.into(),
            via: match on_behalf_of {
                Some(u) => Via::CliOnBehalfOf(u.to_string()),
                None => Via::Cli,
            },
            action: action.into(),
            target: target.into(),
            detail,
            address: None,
        }
    }
}

/// A recorded audit entry.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AuditRecord {
    /// Its id (increasing).
    pub id: i64,
    /// When.
    pub at: DateTime<Utc>,
    /// Who.
    pub actor: String,
    /// How ([`Via::to_text`]).
    pub via: String,
    /// What.
    pub action: String,
    /// On what.
    pub target: String,
    /// Details.
    pub detail: serde_json::Value,
    /// From where.
    pub address: Option<String>,
}

/// The users, tokens, sessions and audit log of one state store. Cheap to clone.
#[derive(Clone)]
pub struct Users {
    inner: Arc<Inner>,
}

struct Inner {
    conn: Mutex<Connection>,
    path: PathBuf,
}

impl fmt::Debug for Users {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Users")
            .field("path", &self.inner.path)
            .finish()
    }
}

/// Opens the state store at `path` the way the vault and workflow store do (WAL, busy timeout,
/// foreign keys) and brings `component`'s tables to this build's version.
pub(crate) fn open_db(path: &Path, component: &xmbridge_state::Component) -> Result<Connection> {
    let what = || format!("open the state store {}", path.display());
    let mut conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(ServiceError::store(what()))?;
    conn.busy_timeout(BUSY_TIMEOUT)
        .map_err(ServiceError::store(what()))?;
    let _mode: String = conn
        .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
        .map_err(ServiceError::store(what()))?;
    conn.pragma_update(None, "foreign_keys", "ON")
        .map_err(ServiceError::store(what()))?;
    conn.pragma_update(None, "synchronous", "NORMAL")
        .map_err(ServiceError::store(what()))?;
    xmbridge_state::migrate(&mut conn, path, component)?;
    Ok(conn)
}

/// Now, as unix milliseconds.
pub(crate) fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

/// Unix milliseconds as a time (out-of-range values, never written by this code, become 0).
pub(crate) fn from_ms(ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms)
        .single()
        .unwrap_or(DateTime::UNIX_EPOCH)
}

/// A duration as milliseconds, saturating.
fn dur_ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// `n` random bytes from the project's one random source, as lowercase hex.
pub(crate) fn random_hex(n: usize) -> Result<String> {
    let mut buf = vec![0u8; n];
    xmbridge_auth::random_bytes(&mut buf).map_err(|e| ServiceError::Io {
        context: "cannot make a random value".into(),
        source: std::io::Error::other(e),
    })?;
    Ok(hex::encode(buf))
}

fn sha256_hex(text: &str) -> String {
    hex::encode(sha2::Sha256::digest(text.as_bytes()))
}

fn unauthenticated(message: &str) -> ServiceError {
    ServiceError::refused(ErrorKind::Unauthenticated, "unauthenticated", message, None)
}

const WRONG_LOGIN: &str = "wrong user name or password";

fn no_user(name: &str) -> ServiceError {
    ServiceError::refused(
        ErrorKind::NotFound,
        "user_not_found",
        format!("no user named '{name}'"),
        Some("`xmbridge user list` shows the users".into()),
    )
}

/// Checks the user naming rule `[A-Za-z0-9_.-]{1,64}`.
pub fn validate_user_name(name: &str) -> Result<()> {
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
        Some(reason) => Err(ServiceError::refused(
            ErrorKind::Invalid,
            "invalid_name",
            format!(
                "invalid user name {:?}: {reason}",
                name.chars().take(80).collect::<String>()
            ),
            Some("a user name is 1 to 64 letters, digits, '_', '.' or '-' (e.g. lee.admin)".into()),
        )),
    }
}

/// Checks the password rule: at least [`MIN_PASSWORD_CHARS`] characters, at most
/// [`MAX_PASSWORD_BYTES`] bytes. The message never quotes the password.
pub fn validate_password(password: &SecretString) -> Result<()> {
    let p = password.expose_secret();
    let chars = p.chars().count();
    if chars < MIN_PASSWORD_CHARS {
        return Err(ServiceError::refused(
            ErrorKind::Invalid,
            "weak_password",
            format!("the password is too short ({chars} characters)"),
            Some(format!(
                "use at least {MIN_PASSWORD_CHARS} characters; a few random words are easy to type and hard to guess"
            )),
        ));
    }
    if p.len() > MAX_PASSWORD_BYTES {
        return Err(ServiceError::refused(
            ErrorKind::Invalid,
            "invalid_password",
            format!("the password is too long ({} bytes)", p.len()),
            Some(format!("use at most {MAX_PASSWORD_BYTES} bytes")),
        ));
    }
    Ok(())
}

fn hash_error(e: argon2::password_hash::Error) -> ServiceError {
    ServiceError::Io {
        context: "cannot hash the password".into(),
        source: std::io::Error::other(e.to_string()),
    }
}

/// The password as an argon2id PHC string with a fresh random salt (default parameters).
fn hash_password(password: &SecretString) -> Result<String> {
    let mut salt = [0u8; 16];
    xmbridge_auth::random_bytes(&mut salt).map_err(|e| ServiceError::Io {
        context: "cannot make a password salt".into(),
        source: std::io::Error::other(e),
    })?;
    let hash = Argon2::default()
        .hash_password_with_salt(password.expose_secret().as_bytes(), &salt)
        .map_err(hash_error)?;
    Ok(hash.to_string())
}

/// Whether `password` matches the PHC string (a damaged hash never matches).
fn password_matches(password: &SecretString, phc: &str) -> bool {
    Argon2::default()
        .verify_password(password.expose_secret().as_bytes(), phc)
        .is_ok()
}

/// An argon2id PHC string no password is known to match (its output is arbitrary bytes), with
/// the default parameters real hashes get (m=19456, t=2, p=1): verifying against it for an
/// unknown user costs what a wrong password costs.
const DUMMY_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$pKqXvWBeHxG0yq2Ykp6cS1UyxtEJlWsTrSgS+0S4G2A";

type RawUser = (String, String, i64);

impl Users {
    /// Opens the users of the state store at `path` (normally `Home::state_db()`), creating the
    /// `svc_` tables if missing.
    pub fn open(path: &Path) -> Result<Users> {
        let conn = open_db(path, &COMPONENT)?;
        Ok(Users {
            inner: Arc::new(Inner {
                conn: Mutex::new(conn),
                path: path.to_path_buf(),
            }),
        })
    }

    fn user_of(&self, raw: RawUser) -> Result<User> {
        let (name, role, created) = raw;
        let role = role.parse::<Role>().map_err(|_| ServiceError::Io {
            context: format!(
                "the role of user '{name}' in {} is damaged",
                self.inner.path.display()
            ),
            source: std::io::Error::other(format!("unknown role {role:?}")),
        })?;
        Ok(User {
            name,
            role,
            created_at: from_ms(created),
        })
    }

    /// Adds a user. The name must follow `[A-Za-z0-9_.-]{1,64}` and the password be at least 12
    /// characters (`Invalid`); an existing name is a `Conflict`.
    pub fn add(&self, name: &str, role: Role, password: &SecretString) -> Result<User> {
        validate_user_name(name)?;
        validate_password(password)?;
        let hash = hash_password(password)?;
        let now = now_ms();
        let conn = self.inner.conn.lock();
        let res = conn.execute(
            "INSERT INTO svc_users (name, role, password_hash, created_at, password_changed_at)
             VALUES (?1, ?2, ?3, ?4, ?4)",
            params![name, role.as_str(), hash, now],
        );
        match res {
            Ok(_) => Ok(User {
                name: name.to_string(),
                role,
                created_at: from_ms(now),
            }),
            Err(e) if e.sqlite_error_code() == Some(ErrorCode::ConstraintViolation) => {
                Err(ServiceError::refused(
                    ErrorKind::Conflict,
                    "user_exists",
                    format!("a user named '{name}' already exists"),
                    Some(format!(
                        "pick another name, or change their password with `xmbridge user passwd {name}`"
                    )),
                ))
            }
            Err(e) => Err(ServiceError::store("add a user")(e)),
        }
    }

    /// Every user, ordered by name.
    pub fn list(&self) -> Result<Vec<User>> {
        let raws: Vec<RawUser> = {
            let conn = self.inner.conn.lock();
            let mut stmt = conn
                .prepare_cached("SELECT name, role, created_at FROM svc_users ORDER BY name")
                .map_err(ServiceError::store("list users"))?;
            stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .and_then(|rows| rows.collect::<std::result::Result<Vec<_>, _>>())
                .map_err(ServiceError::store("list users"))?
        };
        raws.into_iter().map(|r| self.user_of(r)).collect()
    }

    fn find(&self, name: &str) -> Result<Option<User>> {
        let raw: Option<RawUser> = {
            let conn = self.inner.conn.lock();
            conn.query_row(
                "SELECT name, role, created_at FROM svc_users WHERE name = ?1",
                [name],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()
            .map_err(ServiceError::store("read a user"))?
        };
        raw.map(|r| self.user_of(r)).transpose()
    }

    /// One user by name (`NotFound`).
    pub fn get(&self, name: &str) -> Result<User> {
        self.find(name)?.ok_or_else(|| no_user(name))
    }

    /// How many users there are.
    pub fn count(&self) -> Result<usize> {
        let conn = self.inner.conn.lock();
        let n: i64 = conn
            .query_row("SELECT COUNT(*) FROM svc_users", [], |r| r.get(0))
            .map_err(ServiceError::store("count users"))?;
        Ok(usize::try_from(n).unwrap_or(0))
    }

    /// Removes a user, their tokens and their sessions. The last admin cannot be removed
    /// (`Conflict`): nobody could manage the installation through the server any more.
    pub fn remove(&self, name: &str) -> Result<()> {
        let mut conn = self.inner.conn.lock();
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(ServiceError::store("remove a user"))?;
        let role: Option<String> = tx
            .query_row("SELECT role FROM svc_users WHERE name = ?1", [name], |r| {
                r.get(0)
            })
            .optional()
            .map_err(ServiceError::store("remove a user"))?;
        let Some(role) = role else {
            return Err(no_user(name));
        };
        if role == Role::Admin.as_str() {
            let admins: i64 = tx
                .query_row(
                    "SELECT COUNT(*) FROM svc_users WHERE role = 'admin'",
                    [],
                    |r| r.get(0),
                )
                .map_err(ServiceError::store("remove a user"))?;
            if admins <= 1 {
                return Err(ServiceError::refused(
                    ErrorKind::Conflict,
                    "last_admin",
                    format!("'{name}' is the last admin and cannot be removed"),
                    Some("add another admin first (`xmbridge user add NAME --role admin`)".into()),
                ));
            }
        }
        // Tokens and sessions go with the user (ON DELETE CASCADE; deleted explicitly too, so
        // nothing depends on the foreign-key pragma).
        for sql in [
            "DELETE FROM svc_tokens WHERE user = ?1",
            "DELETE FROM svc_sessions WHERE user = ?1",
            "DELETE FROM svc_users WHERE name = ?1",
        ] {
            tx.execute(sql, [name])
                .map_err(ServiceError::store("remove a user"))?;
        }
        tx.commit().map_err(ServiceError::store("remove a user"))
    }

    /// Sets a user's password (same rule as [`Users::add`]) and ends their sessions.
    pub fn set_password(&self, name: &str, password: &SecretString) -> Result<()> {
        validate_password(password)?;
        let hash = hash_password(password)?;
        let mut conn = self.inner.conn.lock();
        let tx = conn
            .transaction()
            .map_err(ServiceError::store("set a password"))?;
        let n = tx
            .execute(
                "UPDATE svc_users SET password_hash = ?2, password_changed_at = ?3 WHERE name = ?1",
                params![name, hash, now_ms()],
            )
            .map_err(ServiceError::store("set a password"))?;
        if n == 0 {
            return Err(no_user(name));
        }
        tx.execute("DELETE FROM svc_sessions WHERE user = ?1", [name])
            .map_err(ServiceError::store("set a password"))?;
        tx.commit().map_err(ServiceError::store("set a password"))
    }

    /// The user if the password is theirs. An unknown user and a wrong password both give
    /// `Unauthenticated` "wrong user name or password", after one argon2 verification each.
    pub fn verify_password(&self, name: &str, password: &SecretString) -> Result<User> {
        let row: Option<(RawUser, String)> = {
            let conn = self.inner.conn.lock();
            conn.query_row(
                "SELECT name, role, created_at, password_hash FROM svc_users WHERE name = ?1",
                [name],
                |r| Ok(((r.get(0)?, r.get(1)?, r.get(2)?), r.get(3)?)),
            )
            .optional()
            .map_err(ServiceError::store("read a user"))?
        };
        // The lock is released before hashing: a verification takes tens of milliseconds.
        match row {
            Some((raw, phc)) if password_matches(password, &phc) => self.user_of(raw),
            Some(_) => Err(unauthenticated(WRONG_LOGIN)),
            None => {
                let _ = password_matches(password, DUMMY_HASH);
                Err(unauthenticated(WRONG_LOGIN))
            }
        }
    }

    /// Makes an API token for `user`, valid for `expires` (or until revoked). The secret
    /// (`xmb_` + 64 hex digits) is returned once; only its SHA-256 is kept.
    pub fn create_token(
        &self,
        user: &str,
        expires: Option<Duration>,
    ) -> Result<(TokenInfo, SecretString)> {
        self.get(user)?;
        let secret = format!("{TOKEN_PREFIX}{}", random_hex(32)?);
        let id = random_hex(8)?;
        let now = now_ms();
        let expires_at = expires.map(|d| now.saturating_add(dur_ms(d)));
        {
            let conn = self.inner.conn.lock();
            conn.execute(
                "INSERT INTO svc_tokens (id, user, hash, created_at, expires_at)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![id, user, sha256_hex(&secret), now, expires_at],
            )
            .map_err(ServiceError::store("create a token"))?;
        }
        Ok((
            TokenInfo {
                id,
                user: user.to_string(),
                created_at: from_ms(now),
                expires_at: expires_at.map(from_ms),
                revoked: false,
                last_used_at: None,
            },
            SecretString::from(secret),
        ))
    }

    /// A user's tokens (revoked and expired ones too), newest first.
    pub fn list_tokens(&self, user: &str) -> Result<Vec<TokenInfo>> {
        self.get(user)?;
        let conn = self.inner.conn.lock();
        let mut stmt = conn
            .prepare_cached(
                "SELECT id, user, created_at, expires_at, revoked_at, last_used_at
                 FROM svc_tokens WHERE user = ?1 ORDER BY created_at DESC, id",
            )
            .map_err(ServiceError::store("list tokens"))?;
        stmt.query_map([user], token_row)
            .and_then(|rows| rows.collect::<std::result::Result<Vec<_>, _>>())
            .map_err(ServiceError::store("list tokens"))
    }

    /// One token's record (`NotFound`).
    pub fn token(&self, id: &str) -> Result<TokenInfo> {
        let conn = self.inner.conn.lock();
        conn.query_row(
            "SELECT id, user, created_at, expires_at, revoked_at, last_used_at
             FROM svc_tokens WHERE id = ?1",
            [id],
            token_row,
        )
        .optional()
        .map_err(ServiceError::store("read a token"))?
        .ok_or_else(|| no_token(id))
    }

    /// Revokes a token by id (`NotFound`); revoking a revoked token changes nothing.
    pub fn revoke_token(&self, id: &str) -> Result<()> {
        let conn = self.inner.conn.lock();
        let n = conn
            .execute(
                "UPDATE svc_tokens SET revoked_at = COALESCE(revoked_at, ?2) WHERE id = ?1",
                params![id, now_ms()],
            )
            .map_err(ServiceError::store("revoke a token"))?;
        if n == 0 {
            return Err(no_token(id));
        }
        Ok(())
    }

    /// The user and token a `Bearer` value stands for, recording its use. Unknown, revoked and
    /// expired tokens are `Unauthenticated`.
    pub fn authenticate_token(&self, bearer: &str) -> Result<(User, TokenInfo)> {
        let bearer = bearer.trim();
        if !bearer.starts_with(TOKEN_PREFIX) {
            return Err(unauthenticated("not an xmbridge API token"));
        }
        let now = now_ms();
        let info = {
            let conn = self.inner.conn.lock();
            let info = conn
                .query_row(
                    "SELECT id, user, created_at, expires_at, revoked_at, last_used_at
                     FROM svc_tokens WHERE hash = ?1",
                    [sha256_hex(bearer)],
                    token_row,
                )
                .optional()
                .map_err(ServiceError::store("read a token"))?;
            let Some(mut info) = info else {
                return Err(unauthenticated("unknown API token"));
            };
            if info.revoked {
                return Err(unauthenticated("this API token was revoked"));
            }
            if info.expires_at.is_some_and(|e| e.timestamp_millis() <= now) {
                return Err(unauthenticated("this API token has expired"));
            }
            conn.execute(
                "UPDATE svc_tokens SET last_used_at = ?2 WHERE id = ?1",
                params![info.id, now],
            )
            .map_err(ServiceError::store("record a token's use"))?;
            info.last_used_at = Some(from_ms(now));
            info
        };
        let user = self
            .find(&info.user)?
            .ok_or_else(|| unauthenticated("unknown API token"))?;
        Ok((user, info))
    }

    /// Opens a session for `user` lasting `ttl`: a random cookie (kept only as its SHA-256) and
    /// a CSRF token.
    pub fn create_session(&self, user: &str, ttl: Duration) -> Result<NewSession> {
        self.get(user)?;
        let cookie = random_hex(32)?;
        let csrf_token = random_hex(32)?;
        let now = now_ms();
        let expires = now.saturating_add(dur_ms(ttl));
        {
            let conn = self.inner.conn.lock();
            // Expired sessions are dropped here, so the table does not grow without bound.
            conn.execute("DELETE FROM svc_sessions WHERE expires_at <= ?1", [now])
                .map_err(ServiceError::store("open a session"))?;
            conn.execute(
                "INSERT INTO svc_sessions (hash, user, csrf_token, created_at, expires_at)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![sha256_hex(&cookie), user, csrf_token, now, expires],
            )
            .map_err(ServiceError::store("open a session"))?;
        }
        Ok(NewSession {
            cookie: SecretString::from(cookie),
            csrf_token,
            expires_at: from_ms(expires),
        })
    }

    /// The live session of a cookie value; unknown and expired ones are `Unauthenticated`.
    pub fn session(&self, cookie: &str) -> Result<Session> {
        let row: Option<(String, String, i64)> = {
            let conn = self.inner.conn.lock();
            conn.query_row(
                "SELECT user, csrf_token, expires_at FROM svc_sessions WHERE hash = ?1",
                [sha256_hex(cookie)],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()
            .map_err(ServiceError::store("read a session"))?
        };
        let Some((user, csrf_token, expires)) = row else {
            return Err(unauthenticated("not signed in (no such session)"));
        };
        if expires <= now_ms() {
            return Err(unauthenticated("the session has expired: sign in again"));
        }
        let user = self
            .find(&user)?
            .ok_or_else(|| unauthenticated("not signed in (no such session)"))?;
        Ok(Session {
            user,
            csrf_token,
            expires_at: from_ms(expires),
        })
    }

    /// Ends the session of a cookie value (an unknown one is already ended).
    pub fn end_session(&self, cookie: &str) -> Result<()> {
        let conn = self.inner.conn.lock();
        conn.execute(
            "DELETE FROM svc_sessions WHERE hash = ?1",
            [sha256_hex(cookie)],
        )
        .map_err(ServiceError::store("end a session"))?;
        Ok(())
    }

    /// Appends an entry to the audit log.
    pub fn record(&self, entry: AuditEntry) -> Result<()> {
        let conn = self.inner.conn.lock();
        conn.execute(
            "INSERT INTO svc_audit (at, actor, via, action, target, detail, address)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                now_ms(),
                entry.actor,
                entry.via.to_text(),
                entry.action,
                entry.target,
                entry.detail.to_string(),
                entry.address
            ],
        )
        .map_err(ServiceError::store("write the audit log"))?;
        Ok(())
    }

    /// The last `limit` audit entries, newest first.
    pub fn audit(&self, limit: usize) -> Result<Vec<AuditRecord>> {
        let conn = self.inner.conn.lock();
        let mut stmt = conn
            .prepare_cached(
                "SELECT id, at, actor, via, action, target, detail, address
                 FROM svc_audit ORDER BY id DESC LIMIT ?1",
            )
            .map_err(ServiceError::store("read the audit log"))?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        stmt.query_map([limit], |r| {
            let detail: String = r.get(6)?;
            Ok(AuditRecord {
                id: r.get(0)?,
                at: from_ms(r.get(1)?),
                actor: r.get(2)?,
                via: r.get(3)?,
                action: r.get(4)?,
                target: r.get(5)?,
                // Written by `record` as JSON; anything else is shown as the text it is.
                detail: serde_json::from_str(&detail).unwrap_or(serde_json::Value::String(detail)),
                address: r.get(7)?,
            })
        })
        .and_then(|rows| rows.collect::<std::result::Result<Vec<_>, _>>())
        .map_err(ServiceError::store("read the audit log"))
    }
}

fn no_token(id: &str) -> ServiceError {
    ServiceError::refused(
        ErrorKind::NotFound,
        "token_not_found",
        format!(
            "no API token with id '{}'",
            id.chars().take(40).collect::<String>()
        ),
        Some("`xmbridge user tokens NAME` lists a user's token ids".into()),
    )
}

fn token_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<TokenInfo> {
    Ok(TokenInfo {
        id: r.get(0)?,
        user: r.get(1)?,
        created_at: from_ms(r.get(2)?),
        expires_at: r.get::<_, Option<i64>>(3)?.map(from_ms),
        revoked: r.get::<_, Option<i64>>(4)?.is_some(),
        last_used_at: r.get::<_, Option<i64>>(5)?.map(from_ms),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn users() -> (tempfile::TempDir, Users) {
        let dir = tempfile::tempdir().unwrap();
        let u = Users::open(&dir.path().join("state.db")).unwrap();
        (dir, u)
    }

    fn pw(s: &str) -> SecretString {
        SecretString::from(s)
    }

    #[test]
    fn wrong_password_and_unknown_user_get_the_same_answer() {
        let (_d, u) = users();
        u.add("lee", Role::Admin, &pw("correct horse battery"))
            .unwrap();
        let ok = u
            .verify_password("lee", &pw("correct horse battery"))
            .unwrap();
        assert_eq!(ok.name, "lee");
        assert_eq!(ok.role, Role::Admin);
        let wrong = u
            .verify_password("lee", &pw("wrong horse battery"))
            .unwrap_err();
        let unknown = u
            .verify_password("nobody", &pw("correct horse battery"))
            .unwrap_err();
        assert_eq!(wrong.to_string(), unknown.to_string());
        assert_eq!(wrong.to_string(), WRONG_LOGIN);
        assert_eq!(wrong.kind(), ErrorKind::Unauthenticated);
        assert_eq!(unknown.kind(), ErrorKind::Unauthenticated);
    }

    #[test]
    fn passwords_are_stored_as_argon2id_phc_strings() {
        let (d, u) = users();
        u.add("lee", Role::Member, &pw("a long enough secret"))
            .unwrap();
        let conn = Connection::open(d.path().join("state.db")).unwrap();
        let h: String = conn
            .query_row("SELECT password_hash FROM svc_users", [], |r| r.get(0))
            .unwrap();
        assert!(h.starts_with("$argon2id$v=19$"), "{h}");
        assert!(!h.contains("a long enough secret"));
        // Two users with the same password get different salts.
        u.add("sam", Role::Member, &pw("a long enough secret"))
            .unwrap();
        let hs: Vec<String> = conn
            .prepare("SELECT password_hash FROM svc_users")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<std::result::Result<_, _>>()
            .unwrap();
        assert_ne!(hs[0], hs[1]);
        // The dummy hash of unknown users parses and has the parameters real hashes get, so
        // verifying against it costs the same.
        let params = |h: &str| h.split('$').nth(3).unwrap().to_string();
        assert_eq!(params(DUMMY_HASH), params(&h));
        assert!(DUMMY_HASH.parse::<argon2::PasswordHash>().is_ok());
    }

    #[test]
    fn names_passwords_and_duplicates_are_checked() {
        let (_d, u) = users();
        let e = u.add("lee", Role::Admin, &pw("short")).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Invalid);
        assert!(e.to_string().contains("too short"), "{e}");
        assert!(e.fix().unwrap().contains("12"), "{:?}", e.fix());
        let e = u
            .add("a b", Role::Admin, &pw("long enough password"))
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Invalid);
        u.add("lee", Role::Admin, &pw("long enough password"))
            .unwrap();
        let e = u
            .add("lee", Role::Member, &pw("long enough password"))
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Conflict);
        assert_eq!(u.count().unwrap(), 1);
        assert_eq!(u.get("nope").unwrap_err().kind(), ErrorKind::NotFound);
        assert!("owner".parse::<Role>().is_err());
        assert_eq!("member".parse::<Role>().unwrap(), Role::Member);
        assert_eq!(serde_json::to_value(Role::Admin).unwrap(), "admin");
    }

    #[test]
    fn the_last_admin_cannot_be_removed() {
        let (_d, u) = users();
        u.add("lee", Role::Admin, &pw("long enough password"))
            .unwrap();
        u.add("sam", Role::Member, &pw("long enough password"))
            .unwrap();
        let e = u.remove("lee").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Conflict);
        assert!(e.fix().unwrap().contains("--role admin"));
        u.remove("sam").unwrap();
        u.add("pat", Role::Admin, &pw("long enough password"))
            .unwrap();
        u.remove("lee").unwrap();
        assert_eq!(u.list().unwrap().len(), 1);
        assert_eq!(u.remove("lee").unwrap_err().kind(), ErrorKind::NotFound);
    }

    #[test]
    fn tokens_expire_are_revoked_and_hashed() {
        let (d, u) = users();
        u.add("lee", Role::Member, &pw("long enough password"))
            .unwrap();
        let (info, secret) = u
            .create_token("lee", Some(Duration::from_secs(3600)))
            .unwrap();
        let s = secret.expose_secret().to_string();
        assert!(s.starts_with("xmb_") && s.len() == 4 + 64, "{s}");
        assert!(!format!("{secret:?}").contains(&s[4..]));
        let (who, used) = u.authenticate_token(&s).unwrap();
        assert_eq!(who.name, "lee");
        assert!(used.last_used_at.is_some());
        assert!(u.list_tokens("lee").unwrap()[0].last_used_at.is_some());
        // Only the hash is stored.
        let bytes = std::fs::read(d.path().join("state.db")).unwrap();
        let wal = std::fs::read(d.path().join("state.db-wal")).unwrap_or_default();
        for b in [&bytes, &wal] {
            assert!(!String::from_utf8_lossy(b).contains(&s[4..]));
        }
        u.revoke_token(&info.id).unwrap();
        let e = u.authenticate_token(&s).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Unauthenticated);
        assert!(e.to_string().contains("revoked"));
        assert!(u.list_tokens("lee").unwrap()[0].revoked);
        assert_eq!(
            u.revoke_token("nope").unwrap_err().kind(),
            ErrorKind::NotFound
        );

        let (_, expired) = u.create_token("lee", Some(Duration::ZERO)).unwrap();
        let e = u.authenticate_token(expired.expose_secret()).unwrap_err();
        assert!(e.to_string().contains("expired"), "{e}");
        let (_, forever) = u.create_token("lee", None).unwrap();
        u.authenticate_token(forever.expose_secret()).unwrap();
        assert!(u.authenticate_token("xmb_00").is_err());
        assert!(u.authenticate_token("Bearer x").is_err());
        // Removing the user removes their tokens.
        u.add("pat", Role::Admin, &pw("long enough password"))
            .unwrap();
        u.remove("lee").unwrap();
        assert!(u.authenticate_token(forever.expose_secret()).is_err());
        assert_eq!(
            u.create_token("lee", None).unwrap_err().kind(),
            ErrorKind::NotFound
        );
    }

    #[test]
    fn sessions_expire_and_end_with_a_new_password() {
        let (_d, u) = users();
        u.add("lee", Role::Member, &pw("long enough password"))
            .unwrap();
        let s = u.create_session("lee", Duration::from_secs(60)).unwrap();
        assert!(!format!("{s:?}").contains(s.cookie.expose_secret()));
        assert_eq!(s.cookie.expose_secret().len(), 64);
        assert_eq!(s.csrf_token.len(), 64);
        let live = u.session(s.cookie.expose_secret()).unwrap();
        assert_eq!(live.user.name, "lee");
        assert_eq!(live.csrf_token, s.csrf_token);
        let gone = u.create_session("lee", Duration::ZERO).unwrap();
        let e = u.session(gone.cookie.expose_secret()).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Unauthenticated);
        assert!(e.to_string().contains("expired"));
        u.set_password("lee", &pw("another long password")).unwrap();
        assert!(u.session(s.cookie.expose_secret()).is_err());
        assert!(
            u.verify_password("lee", &pw("another long password"))
                .is_ok()
        );
        assert!(
            u.verify_password("lee", &pw("long enough password"))
                .is_err()
        );
        let s2 = u.create_session("lee", Duration::from_secs(60)).unwrap();
        u.end_session(s2.cookie.expose_secret()).unwrap();
        assert!(u.session(s2.cookie.expose_secret()).is_err());
        assert!(u.session("not a cookie").is_err());
    }

    #[test]
    fn the_audit_log_is_newest_first() {
        let (_d, u) = users();
        for i in 0..3 {
            u.record(AuditEntry::cli(
                "operator",
                (i == 2).then_some("sam"),
                "user.add",
                format!("u{i}"),
                serde_json::json!({"role": "member"}),
            ))
            .unwrap();
        }
        let log = u.audit(2).unwrap();
        assert_eq!(log.len(), 2);
        assert_eq!(log[0].target, "u2");
        assert_eq!(log[0].via, "cli-as:sam");
        assert_eq!(log[1].target, "u1");
        assert_eq!(log[1].via, "cli");
        assert_eq!(log[1].detail["role"], "member");
        let v = serde_json::to_value(&log[0]).unwrap();
        assert!(v["at"].is_string());
        assert_eq!(Via::Token("ab".into()).to_text(), "token:ab");
    }
}
