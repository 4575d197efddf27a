//! Where a sync writes: [`DestinationSettings`], a destination URL that never holds a password,
//! and the PostgreSQL password kept apart from it as a secret.
//!
//! The password of a `postgres://` destination comes from, first match wins:
//! 1. `--password-file FILE` (the caller passes the path; the first line is the password),
//! 2. a password inside the URL (`postgres://user:PASSWORD@…` or `?password=`) — still accepted,
//!    with a warning, since other local users can read a process's arguments in `ps`,
//! 3. `PGPASSWORD`,
//! 4. the password file `PGPASSFILE`, else `~/.pgpass` (libpq's format and rules, see
//!    the `pgpass` module),
//! 5. none: the server must not ask for one (trust or peer authentication).
//!
//! A password in the URL together with `--password-file` is refused rather than guessed at.
//! `PGSSLMODE` / `PGSSLROOTCERT` fill in `sslmode` / `sslrootcert` when the URL has none (the
//! URL wins, as in libpq); they are written into the settings' URL, so the settings alone say
//! how to connect.
//!
//! This is also the shape a connection's stored destination will take: the URL in the state
//! store, the password sealed in the vault ([`DestinationSettings::from_parts`]).
//!
//! It owns reading the password sources; it must not connect.

use std::fmt;
use std::path::{Path, PathBuf};

use percent_encoding::{NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};
use secrecy::{ExposeSecret, SecretString};

use crate::DestError;
use crate::pgpass::{self, PgpassTarget};
use crate::pgtls::{RootCerts, SslMode};

/// A destination URL (without password) and, for PostgreSQL, its password.
#[derive(Clone, Debug)]
pub struct DestinationSettings {
    url: String,
    password: Option<Password>,
}

/// A PostgreSQL password and where it came from (the source is named in messages, the secret
/// never).
#[derive(Clone, Debug)]
pub struct Password {
    secret: SecretString,
    source: PasswordSource,
}

impl Password {
    /// A password and where it came from.
    pub fn new(secret: SecretString, source: PasswordSource) -> Password {
        Password { secret, source }
    }
    /// The password itself; only the connect code exposes it.
    pub fn secret(&self) -> &SecretString {
        &self.secret
    }
    /// Where the password came from, for messages.
    pub fn source(&self) -> &PasswordSource {
        &self.source
    }
}

/// Where a password came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PasswordSource {
    /// `--password-file FILE`.
    PasswordFile(PathBuf),
    /// The destination URL (deprecated: visible in `ps`).
    Url,
    /// The `PGPASSWORD` environment variable.
    Env,
    /// A line of a pgpass file.
    Pgpass {
        /// The password file.
        file: PathBuf,
        /// The matching line, 1-based.
        line: usize,
    },
    /// Unsealed from the vault with a connection's stored destination.
    Vault,
}

impl fmt::Display for PasswordSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PasswordSource::PasswordFile(p) => write!(f, "--password-file {}", p.display()),
            PasswordSource::Url => f.write_str("the destination URL"),
            PasswordSource::Env => f.write_str("PGPASSWORD"),
            PasswordSource::Pgpass { file, line } => {
                write!(f, "password file {} line {line}", file.display())
            }
            PasswordSource::Vault => f.write_str("the vault"),
        }
    }
}

/// What libpq reads from the environment, read once by [`PgEnv::from_process`] (tests build
/// their own).
#[derive(Clone, Debug, Default)]
pub struct PgEnv {
    /// `PGPASSWORD` (empty counts as unset, as in libpq).
    pub password: Option<SecretString>,
    /// `PGPASSFILE`, else `$HOME/.pgpass`.
    pub passfile: Option<PathBuf>,
    /// `PGSSLMODE`.
    pub sslmode: Option<String>,
    /// `PGSSLROOTCERT`.
    pub sslrootcert: Option<String>,
    /// The user name a URL without one connects as (`USER`, else `LOGNAME`), for pgpass.
    pub os_user: Option<String>,
}

impl PgEnv {
    /// Reads the libpq variables of this process's environment.
    pub fn from_process() -> PgEnv {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let passfile = std::env::var_os("PGPASSFILE")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .or_else(|| {
                std::env::var_os("HOME")
                    .filter(|v| !v.is_empty())
                    .map(|h| PathBuf::from(h).join(".pgpass"))
            });
        PgEnv {
            password: var("PGPASSWORD").map(SecretString::from),
            passfile,
            sslmode: var("PGSSLMODE"),
            sslrootcert: var("PGSSLROOTCERT"),
            os_user: var("USER").or_else(|| var("LOGNAME")),
        }
    }
}

/// The settings and the warnings to show the user (a password in the URL, an ignored pgpass
/// file).
#[derive(Debug)]
pub struct ResolvedSettings {
    /// The resolved settings, ready to connect with.
    pub settings: DestinationSettings,
    /// Warnings to print before connecting, one sentence each.
    pub warnings: Vec<String>,
}

impl DestinationSettings {
    /// Settings from what a user gave: the `--destination` URL, `--password-file`, and the
    /// environment (see the module doc for the order).
    pub fn resolve(
        url: &str,
        password_file: Option<&Path>,
        env: &PgEnv,
    ) -> Result<ResolvedSettings, DestError> {
        if !is_postgres_url(url) {
            if let Some(path) = password_file {
                return Err(DestError::Settings(format!(
                    "--password-file {} applies to PostgreSQL destinations only (postgres://…); \
                     {} needs no password",
                    path.display(),
                    crate::names::redact_url(url)
                )));
            }
            return Ok(ResolvedSettings {
                settings: DestinationSettings {
                    url: url.to_string(),
                    password: None,
                },
                warnings: Vec::new(),
            });
        }
        let mut warnings = Vec::new();
        let (without_password, in_url) = take_password(url);
        let url = with_env_tls_defaults(&without_password, env)?;
        let password = match (password_file, in_url) {
            (Some(path), Some(_)) => {
                return Err(DestError::Settings(format!(
                    "the destination URL holds a password and --password-file {} gives one too: \
                     remove the password from the URL",
                    path.display()
                )));
            }
            (Some(path), None) => Some(Password::new(
                read_password_file(path)?,
                PasswordSource::PasswordFile(path.to_path_buf()),
            )),
            (None, Some(secret)) => {
                warnings.push(
                    "the destination URL holds a password, which other local users can read in \
                     `ps` while the sync runs; put it in a file only you can read and pass \
                     --password-file FILE, or set PGPASSWORD, or add a line \
                     HOST:PORT:DATABASE:USER:PASSWORD to ~/.pgpass (chmod 600), and remove it \
                     from the URL"
                        .to_string(),
                );
                Some(Password::new(secret, PasswordSource::Url))
            }
            (None, None) => match &env.password {
                Some(p) => Some(Password::new(p.clone(), PasswordSource::Env)),
                None => match &env.passfile {
                    Some(file) => {
                        let target = pgpass_target(&url, env)?;
                        match pgpass::lookup(file, &target) {
                            pgpass::Lookup::Found { password, line } => Some(Password::new(
                                password,
                                PasswordSource::Pgpass {
                                    file: file.clone(),
                                    line,
                                },
                            )),
                            pgpass::Lookup::NotFound => None,
                            pgpass::Lookup::Ignored { warning } => {
                                warnings.push(warning);
                                None
                            }
                        }
                    }
                    None => None,
                },
            },
        };
        Ok(ResolvedSettings {
            settings: DestinationSettings { url, password },
            warnings,
        })
    }

    /// Settings from a URL kept without password and a password kept apart (a connection's
    /// stored destination: the password unsealed from the vault). A URL holding a password is
    /// refused: it would be stored in the clear.
    pub fn from_parts(url: &str, password: Option<Password>) -> Result<Self, DestError> {
        if is_postgres_url(url) && take_password(url).1.is_some() {
            return Err(DestError::Settings(
                "a stored destination URL must not hold a password: keep it apart".into(),
            ));
        }
        Ok(DestinationSettings {
            url: url.to_string(),
            password,
        })
    }

    /// The URL, without any password.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The password to connect with, or `None` when the server needs none (trust, peer, certificates).
    pub fn password(&self) -> Option<&Password> {
        self.password.as_ref()
    }

    /// The same server and password with another database (PostgreSQL; query kept).
    pub fn with_database(&self, db: &str) -> DestinationSettings {
        DestinationSettings {
            url: url_with_database(&self.url, db),
            password: self.password.clone(),
        }
    }
}

pub(crate) fn is_postgres_url(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

/// The first line of a password file (line end trimmed).
fn read_password_file(path: &Path) -> Result<SecretString, DestError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        DestError::Settings(format!(
            "cannot read --password-file {}: {e}; it must be a file holding the PostgreSQL \
             password",
            path.display()
        ))
    })?;
    let first = text.lines().next().unwrap_or("");
    if first.is_empty() {
        return Err(DestError::Settings(format!(
            "--password-file {} is empty; its first line must be the PostgreSQL password",
            path.display()
        )));
    }
    Ok(SecretString::from(first.to_string()))
}

/// Splits `scheme://creds@rest` the way tokio-postgres reads it: the credentials end at the
/// first `@`.
fn split_credentials(url: &str) -> Option<(&str, &str, &str)> {
    let (scheme, rest) = url.split_once("://")?;
    let (creds, after) = rest.split_once('@')?;
    Some((scheme, creds, after))
}

/// The URL without its password (user info or `password=` parameter), and the password.
fn take_password(url: &str) -> (String, Option<SecretString>) {
    let mut password = None;
    let mut out = url.to_string();
    if let Some((scheme, creds, after)) = split_credentials(url)
        && let Some((user, pw)) = creds.split_once(':')
    {
        password = Some(SecretString::from(
            percent_decode_str(pw).decode_utf8_lossy().into_owned(),
        ));
        out = format!("{scheme}://{user}@{after}");
    }
    let (base, params) = split_query(&out);
    if params.iter().any(|(k, _)| decode(k) == "password") {
        let mut kept = Vec::new();
        for (k, v) in params {
            if decode(&k) == "password" {
                password = Some(SecretString::from(
                    percent_decode_str(&v).decode_utf8_lossy().into_owned(),
                ));
            } else {
                kept.push((k, v));
            }
        }
        out = join_query(&base, &kept);
    }
    (out, password)
}

/// The URL before `?`, and its `key=value` parameters as written. The `?` is searched after the
/// credentials, as tokio-postgres does.
fn split_query(url: &str) -> (String, Vec<(String, String)>) {
    let creds_end = split_credentials(url)
        .map(|(scheme, creds, _)| scheme.len() + 3 + creds.len() + 1)
        .unwrap_or(0);
    let Some(q) = url[creds_end..].find('?').map(|i| i + creds_end) else {
        return (url.to_string(), Vec::new());
    };
    let params = url[q + 1..]
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (k.to_string(), v.to_string())
        })
        .collect();
    (url[..q].to_string(), params)
}

fn join_query(base: &str, params: &[(String, String)]) -> String {
    if params.is_empty() {
        return base.to_string();
    }
    let q: Vec<String> = params.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!("{base}?{}", q.join("&"))
}

fn decode(s: &str) -> String {
    percent_decode_str(s).decode_utf8_lossy().into_owned()
}

/// `PGSSLMODE` / `PGSSLROOTCERT` added as parameters when the URL has none.
fn with_env_tls_defaults(url: &str, env: &PgEnv) -> Result<String, DestError> {
    let (base, mut params) = split_query(url);
    let mut changed = false;
    for (key, var, value) in [
        ("sslmode", "PGSSLMODE", &env.sslmode),
        ("sslrootcert", "PGSSLROOTCERT", &env.sslrootcert),
    ] {
        if let Some(v) = value
            && !params.iter().any(|(k, _)| decode(k) == key)
        {
            if key == "sslmode" && SslMode::parse(v).is_none() {
                return Err(DestError::Settings(format!(
                    "{var}={v:?} is not an sslmode: expected one of {}",
                    SslMode::CHOICES
                )));
            }
            params.push((
                key.to_string(),
                utf8_percent_encode(v, NON_ALPHANUMERIC).to_string(),
            ));
            changed = true;
        }
    }
    Ok(if changed {
        join_query(&base, &params)
    } else {
        url.to_string()
    })
}

/// A PostgreSQL URL's TLS choice and the rest of it, for tokio-postgres (which knows neither
/// verify-ca/verify-full nor sslrootcert).
#[derive(Debug)]
pub(crate) struct PgUrl {
    /// The URL without `sslmode` and `sslrootcert`.
    pub rest: String,
    pub sslmode: SslMode,
    pub roots: RootCerts,
}

pub(crate) fn split_tls(url: &str) -> Result<PgUrl, DestError> {
    let (base, params) = split_query(url);
    let mut sslmode = SslMode::default();
    let mut roots = RootCerts::System;
    let mut kept = Vec::new();
    for (k, v) in params {
        let value = decode(&v);
        match decode(&k).as_str() {
            "sslmode" => {
                sslmode = SslMode::parse(&value).ok_or_else(|| {
                    DestError::Settings(format!(
                        "sslmode={value:?} in the destination URL: expected one of {}",
                        SslMode::CHOICES
                    ))
                })?;
            }
            "sslrootcert" => {
                roots = if value == "system" {
                    RootCerts::System
                } else if value.is_empty() {
                    return Err(DestError::Settings(
                        "sslrootcert= in the destination URL is empty: name a PEM file of CA \
                         certificates (or sslrootcert=system)"
                            .into(),
                    ));
                } else {
                    RootCerts::File(PathBuf::from(value))
                };
            }
            _ => kept.push((k, v)),
        }
    }
    Ok(PgUrl {
        rest: join_query(&base, &kept),
        sslmode,
        roots,
    })
}

/// What a pgpass line is matched against: the URL's first host (a Unix socket counts as
/// `localhost`), port (5432), database (default: the user name) and user (default: the OS user).
fn pgpass_target(url: &str, env: &PgEnv) -> Result<PgpassTarget, DestError> {
    let config = parse_config(&split_tls(url)?.rest)?;
    let user = config
        .get_user()
        .map(str::to_string)
        .or_else(|| env.os_user.clone())
        .unwrap_or_default();
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        _ => "localhost".to_string(),
    };
    Ok(PgpassTarget {
        host,
        port: config
            .get_ports()
            .first()
            .copied()
            .unwrap_or(5432)
            .to_string(),
        database: config
            .get_dbname()
            .map(str::to_string)
            .unwrap_or(user.clone()),
        user,
    })
}

/// tokio-postgres's reading of a URL (without sslmode/sslrootcert).
pub(crate) fn parse_config(url: &str) -> Result<tokio_postgres::Config, DestError> {
    url.parse().map_err(|e: tokio_postgres::Error| {
        // tokio-postgres names the bad option only in the error's source.
        let why = match std::error::Error::source(&e) {
            Some(src) => format!("{e}: {src}"),
            None => e.to_string(),
        };
        DestError::Settings(format!(
            "invalid PostgreSQL URL {}: {why} (expected postgres://USER@HOST:PORT/DB, options \
             sslmode, sslrootcert, application_name, connect_timeout, options, …)",
            crate::names::redact_url(url)
        ))
    })
}

/// The URL with its database replaced (query parameters kept).
fn url_with_database(url: &str, db: &str) -> String {
    let (main, query) = match url.split_once('?') {
        Some((m, q)) => (m, Some(q)),
        None => (url, None),
    };
    let (scheme, rest) = main.split_once("://").unwrap_or(("postgres", main));
    let authority = rest.split_once('/').map(|(a, _)| a).unwrap_or(rest);
    let mut out = format!("{scheme}://{authority}/{db}");
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

/// The secret of a password, exposed only where it is handed to the server.
pub(crate) fn expose(p: &Password) -> &str {
    p.secret.expose_secret()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> PgEnv {
        PgEnv {
            os_user: Some("osuser".into()),
            ..PgEnv::default()
        }
    }

    fn resolve(url: &str, file: Option<&Path>, env: &PgEnv) -> ResolvedSettings {
        DestinationSettings::resolve(url, file, env).unwrap()
    }

    fn secret_of(r: &ResolvedSettings) -> Option<(&str, PasswordSource)> {
        r.settings
            .password()
            .map(|p| (expose(p), p.source().clone()))
    }

    fn private_file(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        p
    }

    #[test]
    fn passwords_leave_the_url() {
        let (url, pw) = take_password("postgres://loader:s%40cret@db:5433/w?sslmode=require");
        assert_eq!(url, "postgres://loader@db:5433/w?sslmode=require");
        assert_eq!(pw.unwrap().expose_secret(), "s@cret");
        let (url, pw) = take_password("postgres://loader@db/w?password=p%26w&application_name=x");
        assert_eq!(url, "postgres://loader@db/w?application_name=x");
        assert_eq!(pw.unwrap().expose_secret(), "p&w");
        let (url, pw) = take_password("postgresql://loader@db/w");
        assert_eq!(url, "postgresql://loader@db/w");
        assert!(pw.is_none());
    }

    #[test]
    fn precedence_file_then_url_then_env_then_pgpass() {
        let dir = tempfile::tempdir().unwrap();
        let file = private_file(dir.path(), "pw", "from-file\nsecond line ignored\n");
        let pgpass = private_file(dir.path(), "pgpass", "db:5432:w:loader:from-pgpass\n");
        let full = PgEnv {
            password: Some(SecretString::from("from-env")),
            passfile: Some(pgpass.clone()),
            ..env()
        };
        let url = "postgres://loader@db/w";

        let r = resolve(url, Some(&file), &full);
        assert_eq!(
            secret_of(&r),
            Some(("from-file", PasswordSource::PasswordFile(file.clone())))
        );
        assert!(r.warnings.is_empty());

        let r = resolve("postgres://loader:from-url@db/w", None, &full);
        assert_eq!(secret_of(&r), Some(("from-url", PasswordSource::Url)));
        assert_eq!(r.settings.url(), url);
        assert!(r.warnings[0].contains("`ps`"), "{:?}", r.warnings);
        assert!(
            r.warnings[0].contains("--password-file"),
            "{:?}",
            r.warnings
        );
        assert!(!r.warnings[0].contains("from-url"));

        let r = resolve(url, None, &full);
        assert_eq!(secret_of(&r), Some(("from-env", PasswordSource::Env)));

        let no_env = PgEnv {
            password: None,
            ..full.clone()
        };
        let r = resolve(url, None, &no_env);
        assert_eq!(
            secret_of(&r),
            Some((
                "from-pgpass",
                PasswordSource::Pgpass {
                    file: pgpass.clone(),
                    line: 1
                }
            ))
        );

        // No line for another database: no password (trust authentication).
        let r = resolve("postgres://loader@db/other", None, &no_env);
        assert!(secret_of(&r).is_none());
        assert!(r.warnings.is_empty());
    }

    #[test]
    fn pgpass_defaults_follow_libpq() {
        let dir = tempfile::tempdir().unwrap();
        // Database defaults to the user, user to the OS user, port to 5432, a socket to
        // localhost.
        let pgpass = private_file(
            dir.path(),
            "pgpass",
            "localhost:5432:osuser:osuser:socket\nh:5432:loader:loader:dbdefault\nh:5432:osuser:osuser:userdefault\n",
        );
        let e = PgEnv {
            passfile: Some(pgpass),
            ..env()
        };
        let pw = |url: &str| {
            resolve(url, None, &e)
                .settings
                .password()
                .map(|p| expose(p).to_string())
        };
        assert_eq!(pw("postgres://loader@h").as_deref(), Some("dbdefault"));
        assert_eq!(pw("postgres://h").as_deref(), Some("userdefault"));
        assert_eq!(
            pw("postgres://?host=%2Fvar%2Frun%2Fpostgresql").as_deref(),
            Some("socket")
        );
    }

    #[test]
    fn a_password_in_the_url_and_a_password_file_conflict() {
        let dir = tempfile::tempdir().unwrap();
        let file = private_file(dir.path(), "pw", "x\n");
        let e = DestinationSettings::resolve("postgres://u:p@h/d", Some(&file), &env())
            .unwrap_err()
            .to_string();
        assert!(e.contains("remove the password from the URL"), "{e}");
        assert!(!e.contains(":p@"), "{e}");
    }

    #[test]
    fn password_file_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope");
        let e = DestinationSettings::resolve("postgres://u@h/d", Some(&missing), &env())
            .unwrap_err()
            .to_string();
        assert!(e.contains("cannot read --password-file"), "{e}");
        assert!(e.contains(&missing.display().to_string()), "{e}");
        let empty = private_file(dir.path(), "empty", "\n");
        let e = DestinationSettings::resolve("postgres://u@h/d", Some(&empty), &env())
            .unwrap_err()
            .to_string();
        assert!(e.contains("is empty"), "{e}");
        let e = DestinationSettings::resolve("sqlite:x.db", Some(&empty), &env())
            .unwrap_err()
            .to_string();
        assert!(e.contains("PostgreSQL destinations only"), "{e}");
    }

    #[test]
    fn tls_parameters_from_url_win_over_env() {
        let e = PgEnv {
            sslmode: Some("verify-full".into()),
            sslrootcert: Some("/etc/ca dir/root.pem".into()),
            ..env()
        };
        let r = resolve("postgres://u@h/d", None, &e);
        let t = split_tls(r.settings.url()).unwrap();
        assert_eq!(t.sslmode, SslMode::VerifyFull);
        assert_eq!(t.roots, RootCerts::File("/etc/ca dir/root.pem".into()));
        assert_eq!(t.rest, "postgres://u@h/d");

        let r = resolve(
            "postgres://u@h/d?sslmode=disable&application_name=x",
            None,
            &e,
        );
        let t = split_tls(r.settings.url()).unwrap();
        assert_eq!(t.sslmode, SslMode::Disable);
        assert_eq!(t.rest, "postgres://u@h/d?application_name=x");

        let bad = PgEnv {
            sslmode: Some("always".into()),
            ..env()
        };
        let err = DestinationSettings::resolve("postgres://u@h/d", None, &bad)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("PGSSLMODE") && err.contains("verify-full"),
            "{err}"
        );
        let err = split_tls("postgres://u@h/d?sslmode=allow")
            .unwrap_err()
            .to_string();
        assert!(err.contains("expected one of"), "{err}");
        assert_eq!(
            split_tls("postgres://u@h/d").unwrap().sslmode,
            SslMode::Prefer
        );
    }

    #[test]
    fn unknown_url_options_are_named() {
        let e = split_tls("postgres://u@h/d?sslcert=c.pem&sslmode=require")
            .map(|p| parse_config(&p.rest))
            .unwrap()
            .unwrap_err()
            .to_string();
        assert!(e.contains("sslcert"), "{e}");
    }

    #[test]
    fn stored_settings_keep_the_password_apart() {
        assert!(DestinationSettings::from_parts("postgres://u:p@h/d", None).is_err());
        let s = DestinationSettings::from_parts(
            "postgres://u@h/d",
            Some(Password::new(
                SecretString::from("sealed"),
                PasswordSource::Vault,
            )),
        )
        .unwrap();
        let debug = format!("{s:?}");
        assert!(!debug.contains("sealed"), "{debug}");
        assert_eq!(s.with_database("b").url(), "postgres://u@h/b");
        assert_eq!(expose(s.with_database("b").password().unwrap()), "sealed");
    }

    #[test]
    fn database_is_replaced_in_urls() {
        assert_eq!(
            url_with_database("postgres://postgres@127.0.0.1:5432/postgres", "b"),
            "postgres://postgres@127.0.0.1:5432/b"
        );
        assert_eq!(
            url_with_database("postgres://u@h/db?sslmode=disable", "b"),
            "postgres://u@h/b?sslmode=disable"
        );
        assert_eq!(
            url_with_database("postgres://h:5432", "b"),
            "postgres://h:5432/b"
        );
    }
}
