//! A disk that fills up: a tmpfs of a chosen size mounted over a test's directory, so a
//! destination meets the kernel's own "No space left on device" (ENOSPC) part way through a
//! write, and can then be given more room without losing what it holds.
//!
//! Mounting needs root (CAP_SYS_ADMIN). The rule on `XMBRIDGE_TEST_TMPFS`: set and not empty →
//! required (a test that cannot mount fails); unset or empty → the test prints a `SKIPPED:` line
//! and returns. scripts/test sets it when it runs as root.

use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;

const VAR: &str = "XMBRIDGE_TEST_TMPFS";

/// A mounted tmpfs; unmounted when dropped (declare it after the directory's owner, so it is
/// dropped first).
pub struct SmallDisk {
    dir: PathBuf,
}

/// Whether this run may mount; prints the skip line when not.
pub fn available() -> bool {
    if std::env::var_os(VAR).is_some_and(|v| !v.is_empty()) {
        return true;
    }
    crate::skipped(&format!(
        "mounts a small tmpfs to fill it; run it as root with {VAR}=1 (scripts/test sets it as root)"
    ));
    false
}

fn mount(args: &[&str]) {
    let out = Command::new("mount")
        .args(args)
        .output()
        .expect("run mount(8)");
    assert!(
        out.status.success(),
        "mount {args:?} failed: {}; the full-disk tests need root (CAP_SYS_ADMIN) — unset {VAR} to skip them",
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

impl SmallDisk {
    /// Mounts a tmpfs of `bytes` (rounded up to whole pages by the kernel) over `dir`, which
    /// is created if missing and must be empty.
    pub fn mount(dir: &Path, bytes: u64) -> SmallDisk {
        std::fs::create_dir_all(dir).expect("create the mount point");
        mount(&[
            "-t",
            "tmpfs",
            "-o",
            &format!("size={bytes},mode=0700"),
            "xmbridge-test-disk",
            &dir.to_string_lossy(),
        ]);
        SmallDisk {
            dir: dir.to_path_buf(),
        }
    }

    /// Gives the disk `bytes` in all, keeping what it holds.
    pub fn resize(&self, bytes: u64) {
        mount(&[
            "-o",
            &format!("remount,size={bytes}"),
            &self.dir.to_string_lossy(),
        ]);
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        // Lazy: a file still open somewhere must not leave the mount behind.
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}

/// Bytes the files under `dir` take on disk (allocated blocks, not lengths), counted the way a
/// tmpfs charges them.
pub fn used_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).expect("read a directory").flatten() {
            let Ok(m) = e.metadata() else { continue };
            if m.is_dir() {
                todo.push(e.path());
            } else {
                total += m.blocks() * 512;
            }
        }
    }
    total
}
