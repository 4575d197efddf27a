//! The PostgreSQL password file (`~/.pgpass`, or the file `PGPASSFILE` names), read the way
//! libpq reads it, so a file that works for `psql` works here.
//!
//! Format: one entry per line, `hostname:port:database:username:password`. Each of the first
//! four fields is a literal or `*` (matches anything; only as the whole field). `\:` and `\\`
//! stand for `:` and `\` in any field. Lines that are empty or start with `#` are skipped; the
//! first matching line wins. The host of a Unix-socket connection is matched as `localhost`.
//! A file that others can access (any group or other permission bit) or that is not a plain file
//! is ignored with a warning, as libpq does; a missing file is silently no file.
//!
//! It owns no connection; it must not print (warnings are returned to the caller).

use std::path::Path;

use secrecy::SecretString;

/// What a connection is matched against.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PgpassTarget {
    pub host: String,
    pub port: String,
    pub database: String,
    pub user: String,
}

/// The outcome of looking a connection up in a password file.
#[derive(Debug)]
pub enum Lookup {
    /// The password of the first matching line (1-based line number, for messages).
    Found { password: SecretString, line: usize },
    /// No line matches, or there is no file.
    NotFound,
    /// The file was not read; the warning says why and what to do.
    Ignored { warning: String },
}

/// Looks `target` up in the password file at `path`.
pub fn lookup(path: &Path, target: &PgpassTarget) -> Lookup {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Lookup::NotFound,
        Err(e) => {
            return Lookup::Ignored {
                warning: format!("password file {} cannot be read: {e}", path.display()),
            };
        }
    };
    if !meta.is_file() {
        return Lookup::Ignored {
            warning: format!("password file {} is not a plain file", path.display()),
        };
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode();
        if mode & 0o077 != 0 {
            return Lookup::Ignored {
                warning: format!(
                    "password file {} has group or world access (mode {:04o}), so it is ignored \
                     as libpq ignores it; permissions should be u=rw (0600) or less: \
                     chmod 600 {}",
                    path.display(),
                    mode & 0o7777,
                    path.display()
                ),
            };
        }
    }
    let text = match std::fs::read(path) {
        Ok(t) => t,
        Err(e) => {
            return Lookup::Ignored {
                warning: format!("password file {} cannot be read: {e}", path.display()),
            };
        }
    };
    match find(&text, target) {
        Some((password, line)) => match String::from_utf8(password) {
            Ok(p) => Lookup::Found {
                password: SecretString::from(p),
                line,
            },
            Err(_) => Lookup::Ignored {
                warning: format!(
                    "password file {} line {line} matches but its password is not valid UTF-8",
                    path.display()
                ),
            },
        },
        None => Lookup::NotFound,
    }
}

/// The password (unescaped) and 1-based line number of the first line of `text` matching
/// `target`.
pub fn find(text: &[u8], target: &PgpassTarget) -> Option<(Vec<u8>, usize)> {
    for (i, raw) in text.split(|&b| b == b'\n').enumerate() {
        let line = trim_line_end(raw);
        if line.is_empty() || line[0] == b'#' {
            continue;
        }
        let mut rest = line;
        let mut matched = true;
        for wanted in [&target.host, &target.port, &target.database, &target.user] {
            match match_field(rest, wanted.as_bytes()) {
                Some(after) => rest = after,
                None => {
                    matched = false;
                    break;
                }
            }
        }
        if matched {
            return Some((unescape_password(rest), i + 1));
        }
    }
    None
}

fn trim_line_end(mut line: &[u8]) -> &[u8] {
    while let [head @ .., b'\r' | b'\n'] = line {
        line = head;
    }
    line
}

/// libpq's `pwdfMatchesString`: when the field at the start of `field_and_rest` is `*` or equals
/// `wanted` (after unescaping), the text after its `:`.
fn match_field<'a>(field_and_rest: &'a [u8], wanted: &[u8]) -> Option<&'a [u8]> {
    if let [b'*', b':', rest @ ..] = field_and_rest {
        return Some(rest);
    }
    let mut i = 0;
    let mut j = 0;
    while i < field_and_rest.len() {
        let mut c = field_and_rest[i];
        let mut escaped = false;
        if c == b'\\' {
            i += 1;
            c = *field_and_rest.get(i)?;
            escaped = true;
        }
        if c == b':' && !escaped && j == wanted.len() {
            return Some(&field_and_rest[i + 1..]);
        }
        // As in libpq, an unescaped `:` before the wanted value is used up is compared like
        // any other character.
        if wanted.get(j) != Some(&c) {
            return None;
        }
        i += 1;
        j += 1;
    }
    // A line without the password field matches nothing.
    None
}

/// The password field: up to an unescaped `:` (libpq ignores anything after it), `\x` → `x`.
fn unescape_password(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        let c = field[i];
        if c == b':' {
            break;
        }
        if c == b'\\' && i + 1 < field.len() {
            i += 1;
        }
        out.push(field[i]);
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    fn target(host: &str, port: &str, db: &str, user: &str) -> PgpassTarget {
        PgpassTarget {
            host: host.into(),
            port: port.into(),
            database: db.into(),
            user: user.into(),
        }
    }

    fn pw(text: &str, t: &PgpassTarget) -> Option<(String, usize)> {
        find(text.as_bytes(), t).map(|(p, l)| (String::from_utf8(p).unwrap(), l))
    }

    #[test]
    fn first_matching_line_wins() {
        let t = target("127.0.0.1", "5432", "warehouse", "loader");
        let text = "\
# comment: 127.0.0.1:5432:warehouse:loader:commented
127.0.0.1:5432:other:loader:wrong-db
127.0.0.1:5433:warehouse:loader:wrong-port
localhost:5432:warehouse:loader:wrong-host
127.0.0.1:5432:warehouse:someone:wrong-user

127.0.0.1:5432:warehouse:loader:right
127.0.0.1:5432:warehouse:loader:later
";
        assert_eq!(pw(text, &t), Some(("right".into(), 7)));
    }

    #[test]
    fn wildcards_match_whole_fields_only() {
        let t = target("db.internal", "6543", "warehouse", "loader");
        assert_eq!(pw("*:*:*:*:any\n", &t), Some(("any".into(), 1)));
        assert_eq!(
            pw("db.internal:*:warehouse:*:p\n", &t),
            Some(("p".into(), 1))
        );
        // `*` inside a field is a literal star, as in libpq.
        assert_eq!(pw("db.*:*:*:*:p\n", &t), None);
        assert_eq!(pw("*db.internal:*:*:*:p\n", &t), None);
        // A literal `*` host matches only via the wildcard rule, which also matches this.
        let star = target("*", "5432", "d", "u");
        assert_eq!(pw("*:5432:d:u:p\n", &star), Some(("p".into(), 1)));
    }

    #[test]
    fn escapes_in_fields_and_password() {
        let t = target("h", "5432", "db:with:colons", "us\\er");
        assert_eq!(
            pw("h:5432:db\\:with\\:colons:us\\\\er:pa\\:ss\\\\word\n", &t),
            Some(("pa:ss\\word".into(), 1))
        );
        // libpq compares an unescaped colon like any character while the name is not used up,
        // so this matches too.
        assert_eq!(
            pw("h:5432:db:with:colons:us\\\\er:p\n", &t),
            Some(("p".into(), 1))
        );
        // The password ends at an unescaped colon; anything after it is ignored (libpq).
        let t = target("h", "1", "d", "u");
        assert_eq!(
            pw("h:1:d:u:secret:trailing\n", &t),
            Some(("secret".into(), 1))
        );
    }

    #[test]
    fn partial_and_malformed_lines_do_not_match() {
        let t = target("h", "5432", "d", "u");
        // A field that is a prefix of the wanted value, or the other way round.
        assert_eq!(pw("h:543:d:u:p\n", &t), None);
        assert_eq!(pw("h:54321:d:u:p\n", &t), None);
        // Too few fields.
        assert_eq!(pw("h:5432:d\n", &t), None);
        assert_eq!(pw("h:5432:d:u\n", &t), None);
        // A trailing backslash does not escape the end of the line.
        assert_eq!(pw("h:5432:d:u\\\n", &t), None);
        // An empty password is a match with an empty password (libpq returns it too).
        assert_eq!(pw("h:5432:d:u:\n", &t), Some((String::new(), 1)));
    }

    #[test]
    fn crlf_line_ends_and_no_final_newline() {
        let t = target("h", "5432", "d", "u");
        assert_eq!(
            pw("x:1:d:u:no\r\nh:5432:d:u:yes\r\n", &t),
            Some(("yes".into(), 2))
        );
        assert_eq!(pw("h:5432:d:u:last", &t), Some(("last".into(), 1)));
    }

    #[cfg(unix)]
    #[test]
    fn files_others_can_access_are_ignored_with_a_warning() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pgpass");
        std::fs::write(&path, "*:*:*:*:secret\n").unwrap();
        let t = target("h", "5432", "d", "u");
        for mode in [0o640, 0o604, 0o620, 0o610, 0o644] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            match lookup(&path, &t) {
                Lookup::Ignored { warning } => {
                    assert!(warning.contains("group or world access"), "{warning}");
                    assert!(warning.contains("chmod 600"), "{warning}");
                    assert!(!warning.contains("secret"), "{warning}");
                }
                other => panic!("mode {mode:o}: {other:?}"),
            }
        }
        for mode in [0o600, 0o400] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            match lookup(&path, &t) {
                Lookup::Found { password, line } => {
                    assert_eq!(password.expose_secret(), "secret");
                    assert_eq!(line, 1);
                }
                other => panic!("mode {mode:o}: {other:?}"),
            }
        }
    }

    #[test]
    fn missing_file_is_no_file_and_a_directory_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let t = target("h", "5432", "d", "u");
        assert!(matches!(
            lookup(&dir.path().join("none"), &t),
            Lookup::NotFound
        ));
        match lookup(dir.path(), &t) {
            Lookup::Ignored { warning } => assert!(warning.contains("not a plain file")),
            other => panic!("{other:?}"),
        }
    }
}
