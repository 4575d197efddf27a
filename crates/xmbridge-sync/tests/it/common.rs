//! Test doubles shared by the sync tests: an in-memory [`Destination`] that implements the
//! contract faithfully (atomic commits, cursors committed with rows, deletes before upserts,
//! soft-delete marks, value-type checks), and a simulator + client pair.

#![allow(dead_code)]

use parking_lot_shim::Mutex;
use serde_json::Value as Json;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use xmbridge_destinations::{
    BoxFuture, ColumnType, Commit, CommitStats, DestError, Destination, Ensured, TableBatch,
    TableSpec, Value,
};
use xmbridge_qualtrics::{Auth, BaseUrl, Client, RetryPolicy};
use xmbridge_sim::{SimConfig, SimHandle};

mod parking_lot_shim {
    #[derive(Default)]
    pub struct Mutex<T>(std::sync::Mutex<T>);
    impl<T> Mutex<T> {
        pub fn new(t: T) -> Self {
            Mutex(std::sync::Mutex::new(t))
        }
        pub fn lock(&self) -> std::sync::MutexGuard<'_, T> {
            self.0.lock().unwrap_or_else(|e| e.into_inner())
        }
    }
}

#[derive(Clone, Debug)]
pub struct MemRow {
    pub cells: Vec<Value>,
    pub synced: i64,
    pub deleted: bool,
}

#[derive(Clone, Debug, Default)]
pub struct MemState {
    pub specs: HashMap<String, TableSpec>,
    /// table → primary key (debug-rendered) → row
    pub tables: HashMap<String, BTreeMap<String, MemRow>>,
    pub cursors: HashMap<String, Json>,
    pub commits: usize,
    /// Refuse every commit after this many (simulates a crash mid-sync).
    pub fail_after: Option<usize>,
    /// What [`Destination::append_commit_rows`] answers.
    pub append_commit_rows: Option<usize>,
    /// Each commit's upserts (all tables), and whether they were all first-load appends.
    pub commit_sizes: Vec<(bool, usize)>,
}

impl MemState {
    pub fn col(&self, table: &str, col: &str) -> usize {
        self.specs[table]
            .columns
            .iter()
            .position(|c| c.name == col)
            .unwrap_or_else(|| panic!("{table}.{col}"))
    }

    /// Live (not soft-deleted) rows of a table.
    pub fn rows(&self, table: &str) -> Vec<&MemRow> {
        self.tables
            .get(table)
            .map(|t| t.values().filter(|r| !r.deleted).collect())
            .unwrap_or_default()
    }

    pub fn count(&self, table: &str) -> usize {
        self.rows(table).len()
    }

    pub fn text(&self, table: &str, row: &MemRow, col: &str) -> Option<String> {
        match &row.cells[self.col(table, col)] {
            Value::Text(s) => Some(s.to_string()),
            Value::Null => None,
            other => Some(format!("{other:?}")),
        }
    }

    /// Live rows whose `col` is `val`.
    pub fn rows_where(&self, table: &str, col: &str, val: &str) -> Vec<&MemRow> {
        let i = self.col(table, col);
        self.rows(table)
            .into_iter()
            .filter(|r| r.cells[i] == Value::Text(val.into()))
            .collect()
    }

    pub fn keys(&self, table: &str) -> Vec<String> {
        self.tables
            .get(table)
            .map(|t| t.keys().cloned().collect())
            .unwrap_or_default()
    }
}

#[derive(Clone, Default)]
pub struct MemDest(pub Arc<Mutex<MemState>>);

impl MemDest {
    pub fn state(&self) -> MemState {
        self.0.lock().clone()
    }
    pub fn with<T>(&self, f: impl FnOnce(&mut MemState) -> T) -> T {
        f(&mut self.0.lock())
    }
}

fn fits(ty: ColumnType, v: &Value) -> bool {
    matches!(
        (ty, v),
        (_, Value::Null)
            | (ColumnType::Text, Value::Text(_))
            | (ColumnType::Timestamp, Value::Timestamp(_))
            | (ColumnType::Bool, Value::Bool(_))
            | (ColumnType::Int | ColumnType::BigInt, Value::Int(_))
            | (ColumnType::Float, Value::Float(_))
            | (ColumnType::Json, Value::Json(_))
    )
}

fn key_of(spec: &TableSpec, cells: &[Value]) -> Result<String, DestError> {
    let mut parts = Vec::new();
    for k in &spec.primary_key {
        let i = spec
            .columns
            .iter()
            .position(|c| &c.name == k)
            .ok_or_else(|| DestError::MissingColumn {
                table: spec.name.clone(),
                column: k.clone(),
            })?;
        if cells[i] == Value::Null {
            return Err(DestError::NullKey {
                table: spec.name.clone(),
                column: k.clone(),
            });
        }
        parts.push(format!("{:?}", cells[i]));
    }
    Ok(parts.join("|"))
}

fn apply(st: &mut MemState, c: Commit) -> Result<CommitStats, DestError> {
    let mut stats: BTreeMap<String, (u64, u64, u64)> = BTreeMap::new();
    for b in c.batches {
        let spec = st
            .specs
            .get(&b.table)
            .cloned()
            .ok_or_else(|| DestError::UnknownTable {
                table: b.table.clone(),
            })?;
        let table = st.tables.entry(b.table.clone()).or_default();
        let e = stats.entry(b.table.clone()).or_default();
        // Deletes first: they clear a rewritten response's old rows before its new ones land.
        for (col, vals) in &b.delete_where {
            let i = spec
                .columns
                .iter()
                .position(|c| &c.name == col)
                .ok_or_else(|| DestError::MissingColumn {
                    table: b.table.clone(),
                    column: col.clone(),
                })?;
            let before = table.len();
            table.retain(|_, r| !vals.contains(&r.cells[i]));
            e.2 += (before - table.len()) as u64;
        }
        for row in b.upserts {
            if row.len() != spec.columns.len() {
                return Err(DestError::RowShape {
                    table: b.table.clone(),
                    expected: spec.columns.len(),
                    found: row.len(),
                });
            }
            for (v, col) in row.iter().zip(&spec.columns) {
                if !fits(col.ty, v) {
                    return Err(DestError::ValueType {
                        table: b.table.clone(),
                        column: col.name.clone(),
                        expected: col.ty.short(),
                        found: v.kind(),
                    });
                }
            }
            let key = key_of(&spec, &row)?;
            let new = MemRow {
                cells: row,
                synced: c.synced_at_ms,
                deleted: false,
            };
            if table.insert(key, new).is_some() {
                e.1 += 1;
            } else {
                e.0 += 1;
            }
        }
    }
    for m in c.mark_unseen_deleted {
        let spec = st
            .specs
            .get(&m.table)
            .cloned()
            .ok_or_else(|| DestError::UnknownTable {
                table: m.table.clone(),
            })?;
        if !spec.soft_delete {
            return Err(DestError::NotSoftDelete {
                table: m.table.clone(),
            });
        }
        let scope: Vec<(usize, Value)> = m
            .scope
            .iter()
            .map(|(c, v)| {
                (
                    spec.columns.iter().position(|x| &x.name == c).unwrap(),
                    v.clone(),
                )
            })
            .collect();
        let e = stats.entry(m.table.clone()).or_default();
        for r in st.tables.entry(m.table.clone()).or_default().values_mut() {
            if !r.deleted
                && r.synced < c.synced_at_ms
                && scope.iter().all(|(i, v)| &r.cells[*i] == v)
            {
                r.deleted = true;
                e.2 += 1;
            }
        }
    }
    for (s, v) in c.cursors {
        st.cursors.insert(s, v);
    }
    st.commits += 1;
    Ok(CommitStats {
        tables: stats
            .into_iter()
            .map(|(t, (i, u, d))| (t, i, u, d))
            .collect(),
    })
}

impl Destination for MemDest {
    fn append_commit_rows(&self) -> Option<usize> {
        self.0.lock().append_commit_rows
    }

    fn ensure_tables<'a>(
        &'a mut self,
        specs: &'a [TableSpec],
    ) -> BoxFuture<'a, Result<Ensured, DestError>> {
        Box::pin(async move {
            let mut st = self.0.lock();
            let mut ensured = Ensured::default();
            for s in specs {
                match st.specs.get(&s.name).cloned() {
                    None => {
                        st.specs.insert(s.name.clone(), s.clone());
                        ensured.created.push(s.name.clone());
                    }
                    Some(old) => {
                        for (i, c) in old.columns.iter().enumerate() {
                            if s.columns.get(i).map(|n| (&n.name, n.ty)) != Some((&c.name, c.ty)) {
                                return Err(DestError::TypeConflict {
                                    table: s.name.clone(),
                                    column: c.name.clone(),
                                    found: format!("{:?} at position {i}", c.ty),
                                    expected: "the same type at the same position".into(),
                                    fix: "a test spec changed a column".into(),
                                });
                            }
                        }
                        let add = s.columns.len() - old.columns.len();
                        for r in st.tables.entry(s.name.clone()).or_default().values_mut() {
                            r.cells.extend(std::iter::repeat_n(Value::Null, add));
                        }
                        st.specs.insert(s.name.clone(), s.clone());
                    }
                }
            }
            Ok(ensured)
        })
    }

    fn cursor<'a>(&'a mut self, stream: &'a str) -> BoxFuture<'a, Result<Option<Json>, DestError>> {
        Box::pin(async move { Ok(self.0.lock().cursors.get(stream).cloned()) })
    }

    fn commit(&mut self, commit: Commit) -> BoxFuture<'_, Result<CommitStats, DestError>> {
        Box::pin(async move {
            let mut st = self.0.lock();
            if st.fail_after.is_some_and(|n| st.commits >= n) {
                return Err(DestError::Sql {
                    context: "commit".into(),
                    message: "simulated crash: commit refused".into(),
                });
            }
            let appends = commit.batches.iter().all(TableBatch::appends_only);
            let rows = commit.batches.iter().map(|b| b.upserts.len()).sum();
            st.commit_sizes.push((appends, rows));
            // Atomic: apply to a copy, keep it only if everything applied.
            let mut copy = st.clone();
            let stats = apply(&mut copy, commit)?;
            *st = copy;
            Ok(stats)
        })
    }

    fn describe(&self) -> String {
        "memory".into()
    }

    fn keys<'a>(
        &'a mut self,
        table: &'a str,
        column: &'a str,
        filter: &'a [(String, Value)],
    ) -> BoxFuture<'a, Result<Vec<String>, DestError>> {
        Box::pin(async move {
            let st = self.0.lock();
            let spec = st.specs.get(table).ok_or_else(|| DestError::UnknownTable {
                table: table.to_string(),
            })?;
            let pos = |c: &str| {
                spec.columns
                    .iter()
                    .position(|x| x.name == c)
                    .ok_or_else(|| DestError::MissingColumn {
                        table: table.to_string(),
                        column: c.to_string(),
                    })
            };
            let i = pos(column)?;
            let f: Vec<(usize, &Value)> = filter
                .iter()
                .map(|(c, v)| pos(c).map(|j| (j, v)))
                .collect::<Result<_, _>>()?;
            let mut out = std::collections::BTreeSet::new();
            for r in st
                .tables
                .get(table)
                .map(|t| t.values())
                .into_iter()
                .flatten()
            {
                if f.iter().all(|(j, v)| &r.cells[*j] == *v)
                    && let Value::Text(s) = &r.cells[i]
                {
                    out.insert(s.to_string());
                }
            }
            Ok(out.into_iter().collect())
        })
    }
}

pub async fn sim(cfg: SimConfig) -> (SimHandle, Client) {
    let cfg = SimConfig {
        api_token: "test-token".into(),
        export_delay_ms: 0,
        rate_limit_per_min: 0,
        ..cfg
    };
    let h = xmbridge_test_kit::sim::qualtrics(cfg).await;
    let c = client(&h, "test-token");
    (h, c)
}

pub fn client(h: &SimHandle, token: &str) -> Client {
    Client::builder(BaseUrl::parse(&h.base_url).unwrap(), Auth::api_token(token))
        .retry(RetryPolicy::none())
        .no_rate_limit()
        .build()
        .unwrap()
}
