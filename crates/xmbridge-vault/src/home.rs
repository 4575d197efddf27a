//! Where an installation keeps its files: `XMBRIDGE_HOME` (default `~/.xmbridge`), holding the
//! state store, the master key file and the config file. It only resolves paths, creates the
//! directory (mode 0700) and refuses one other users can write to; it does not read or write any
//! of the files.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use crate::VaultError;

/// The environment variable naming the installation directory.
pub const HOME_ENV: &str = "XMBRIDGE_HOME";

/// One installation directory. Several can be used side by side (tests, scripts), because
/// nothing here reads the process environment except [`Home::from_env`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Home {
    root: PathBuf,
}

impl Home {
    /// Uses `XMBRIDGE_HOME`, else `$HOME/.xmbridge`, creating the directory (mode 0700) if missing.
    pub fn from_env() -> Result<Home, VaultError> {
        Home::resolve(std::env::var_os(HOME_ENV), std::env::var_os("HOME"))
    }

    /// Like [`Home::from_env`] with the two variables passed in: `xmbridge_home` wins; else
    /// `user_home/.xmbridge`. Empty values count as unset.
    pub fn resolve(
        xmbridge_home: Option<OsString>,
        user_home: Option<OsString>,
    ) -> Result<Home, VaultError> {
        let non_empty = |v: Option<OsString>| v.filter(|v| !v.is_empty());
        if let Some(dir) = non_empty(xmbridge_home) {
            return Home::at(dir);
        }
        match non_empty(user_home) {
            Some(home) => Home::at(PathBuf::from(home).join(".xmbridge")),
            None => Err(VaultError::NoHome),
        }
    }

    /// The installation at `dir`, created (mode 0700, parents too) if missing. A relative path
    /// is made absolute against the current directory so later messages show a usable path.
    /// An existing directory that group or others may write to is refused
    /// ([`VaultError::HomeTooOpen`]): they could swap the state store or the key file.
    pub fn at(dir: impl Into<PathBuf>) -> Result<Home, VaultError> {
        let dir: PathBuf = dir.into();
        let root = std::path::absolute(&dir)
            .map_err(|e| VaultError::io("resolve the directory", &dir, e))?;
        match std::fs::metadata(&root) {
            Ok(meta) if meta.is_dir() => check_not_writable_by_others(&root, &meta)?,
            Ok(_) => {
                return Err(VaultError::io(
                    "use as the xmbridge home directory",
                    &root,
                    std::io::Error::new(std::io::ErrorKind::NotADirectory, "it is not a directory"),
                ));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => create_private_dir(&root)?,
            Err(e) => return Err(VaultError::io("read", &root, e)),
        }
        Ok(Home { root })
    }

    /// The installation directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The state store: `state.db`.
    pub fn state_db(&self) -> PathBuf {
        self.root.join("state.db")
    }

    /// The master key file: `master.key` (used when `XMBRIDGE_MASTER_KEY` is unset).
    pub fn master_key_file(&self) -> PathBuf {
        self.root.join("master.key")
    }

    /// The config file: `xmbridge.toml` (never holds secrets).
    pub fn config_file(&self) -> PathBuf {
        self.root.join("xmbridge.toml")
    }
}

#[cfg(unix)]
fn check_not_writable_by_others(path: &Path, meta: &std::fs::Metadata) -> Result<(), VaultError> {
    use std::os::unix::fs::PermissionsExt;
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(VaultError::HomeTooOpen {
            path: path.to_path_buf(),
            mode,
        });
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_not_writable_by_others(_path: &Path, _meta: &std::fs::Metadata) -> Result<(), VaultError> {
    Ok(())
}

#[cfg(unix)]
fn create_private_dir(path: &Path) -> Result<(), VaultError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(|e| VaultError::io("create the directory", path, e))
}

#[cfg(not(unix))]
fn create_private_dir(path: &Path) -> Result<(), VaultError> {
    std::fs::create_dir_all(path).map_err(|e| VaultError::io("create the directory", path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xmbridge_home_wins_over_home() {
        let tmp = tempfile::tempdir().unwrap();
        let a = tmp.path().join("a");
        let home = Home::resolve(Some(a.clone().into()), Some(tmp.path().into())).unwrap();
        assert_eq!(home.root(), a);
        assert_eq!(home.state_db(), a.join("state.db"));
        assert_eq!(home.master_key_file(), a.join("master.key"));
        assert_eq!(home.config_file(), a.join("xmbridge.toml"));
    }

    #[test]
    fn default_is_dot_xmbridge_and_empty_counts_as_unset() {
        let tmp = tempfile::tempdir().unwrap();
        let home = Home::resolve(Some("".into()), Some(tmp.path().into())).unwrap();
        assert_eq!(home.root(), tmp.path().join(".xmbridge"));
        assert!(home.root().is_dir());
    }

    #[test]
    fn no_home_at_all_is_a_clear_error() {
        let err = Home::resolve(None, None).unwrap_err();
        assert!(matches!(err, VaultError::NoHome));
        assert!(err.to_string().contains("set XMBRIDGE_HOME"));
    }

    #[cfg(unix)]
    #[test]
    fn created_with_mode_0700() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let home = Home::at(tmp.path().join("x/y")).unwrap();
        let mode = std::fs::metadata(home.root()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
    }

    #[cfg(unix)]
    #[test]
    fn a_home_others_can_write_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("h");
        std::fs::create_dir(&dir).unwrap();
        for mode in [0o777, 0o770, 0o1777, 0o722] {
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode)).unwrap();
            let err = Home::at(&dir).unwrap_err();
            assert!(
                matches!(err, VaultError::HomeTooOpen { .. }),
                "{mode:o}: {err}"
            );
            assert!(err.to_string().contains("chmod 700"), "{err}");
        }
        // Readable by others is the user's choice (0755 is a common default).
        for mode in [0o700, 0o750, 0o755] {
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode)).unwrap();
            Home::at(&dir).unwrap();
        }
    }

    #[test]
    fn a_file_is_not_a_home() {
        let tmp = tempfile::tempdir().unwrap();
        let f = tmp.path().join("file");
        std::fs::write(&f, b"x").unwrap();
        let err = Home::at(&f).unwrap_err();
        assert!(err.to_string().contains("not a directory"), "{err}");
    }
}
