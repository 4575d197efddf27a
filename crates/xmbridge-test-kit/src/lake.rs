//! Reading Delta tables back with readers that share no code with xmbridge:
//! `tests/tools/read_delta.py` runs the Python `deltalake` package and DuckDB's `delta`
//! extension on the same tables, fails when they disagree, and prints the rows as JSON.
//!
//! The rule on `XMBRIDGE_TEST_DELTA_PYTHON` (the python of a virtual environment holding those
//! packages; scripts/test makes one): set and not empty → required (a test that cannot run the
//! readers fails); unset or empty → the test prints a `SKIPPED:` line and returns.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

const VAR: &str = "XMBRIDGE_TEST_DELTA_PYTHON";

/// The readers' python, or `None` after a skip line.
pub fn readers() -> Option<PathBuf> {
    match std::env::var_os(VAR).filter(|v| !v.is_empty()) {
        Some(p) => {
            let p = PathBuf::from(p);
            assert!(
                p.is_file(),
                "{VAR}={} is not a file: run scripts/test (it installs the Delta readers) or point {VAR} at a python with deltalake, duckdb and duckdb-extension-delta",
                p.display()
            );
            Some(p)
        }
        None => {
            crate::skipped(&format!(
                "needs the Python Delta readers; set {VAR} to a python with deltalake, duckdb and duckdb-extension-delta (scripts/test does)"
            ));
            None
        }
    }
}

/// One table as the readers return it.
#[derive(Debug, Clone, PartialEq)]
pub struct LakeTable {
    /// Column names in the table's order.
    pub columns: Vec<String>,
    /// Rows sorted; timestamps as epoch milliseconds.
    pub rows: Vec<Vec<serde_json::Value>>,
}

/// Reads the Delta tables at `dirs` with both readers (they must agree); keyed by the
/// directory's last component.
pub fn read(python: &Path, dirs: &[PathBuf]) -> BTreeMap<String, LakeTable> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/tools/read_delta.py");
    let out = std::process::Command::new(python)
        .arg(&script)
        .args(dirs)
        .output()
        .expect("run tests/tools/read_delta.py");
    assert!(
        out.status.success(),
        "read_delta.py failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let parsed: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&out.stdout).expect("read_delta.py prints JSON");
    parsed
        .into_iter()
        .map(|(dir, t)| {
            let name = Path::new(&dir)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or(dir);
            let columns = t["columns"]
                .as_array()
                .expect("columns")
                .iter()
                .map(|c| c.as_str().expect("column name").to_string())
                .collect();
            let rows = t["rows"]
                .as_array()
                .expect("rows")
                .iter()
                .map(|r| r.as_array().expect("row").clone())
                .collect();
            (name, LakeTable { columns, rows })
        })
        .collect()
}

/// The Delta tables (directories with a `_delta_log`) directly under `schema_dir`.
pub fn tables_under(schema_dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(schema_dir)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.join("_delta_log").is_dir())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}
