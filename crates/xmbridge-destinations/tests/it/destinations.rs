//! One behavioural suite run against SQLite (a temp file) and a real PostgreSQL (its own
//! database per test, dropped by a guard even when the test fails). The PostgreSQL server comes
//! from `XMBRIDGE_TEST_PG` (the test kit's rule: set → required, unset → skipped).

use crate::common::{col, stat, upserts};
use serde_json::json;
use xmbridge_destinations::{
    ColumnType, Commit, CommitStats, Compat, DestError, DestErrorKind, Destination,
    DestinationSettings, Fence, MarkUnseenDeleted, PgEnv, TableBatch, TableSpec, Value, iso_millis,
    quote_ident,
};
// Realistic specs: the tables the sync writes (the destinations themselves know no catalog).
use xmbridge_sync::catalog;
use xmbridge_test_kit::pg::TestDb;

/// Opens a destination by URL for a leased run of `scope` with fencing token `token`.
async fn open_fenced(
    url: &str,
    scope: &str,
    token: i64,
) -> Result<Box<dyn Destination>, DestError> {
    let settings = DestinationSettings::from_parts(url, None)?;
    let fence = Fence {
        scope: scope.to_string(),
        token,
    };
    xmbridge_destinations::open(&settings, SCHEMA, Compat::Xmbridge, Some(fence)).await
}

/// Opens a destination by URL (no password).
async fn open(url: &str, schema: &str, compat: Compat) -> Result<Box<dyn Destination>, DestError> {
    let settings = DestinationSettings::from_parts(url, None)?;
    xmbridge_destinations::open(&settings, schema, compat, None).await
}

const SCHEMA: &str = "qualtrics";
const T0: i64 = 1_700_000_000_000;

enum Raw {
    Sqlite(rusqlite::Connection),
    Pg(tokio_postgres::Client),
}

struct H {
    dest: Box<dyn Destination>,
    raw: Raw,
    url: String,
    compat: Compat,
    _dir: Option<tempfile::TempDir>,
    _db: Option<TestDb>,
}

async fn sqlite(compat: Compat) -> H {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dest.db");
    let url = format!("sqlite:{}", path.display());
    let dest = open(&url, SCHEMA, compat).await.unwrap();
    let raw = rusqlite::Connection::open(&path).unwrap();
    raw.set_db_config(rusqlite::config::DbConfig::SQLITE_DBCONFIG_DQS_DML, false)
        .unwrap();
    H {
        dest,
        raw: Raw::Sqlite(raw),
        url,
        compat,
        _dir: Some(dir),
        _db: None,
    }
}

/// `None` when `XMBRIDGE_TEST_PG` is unset (the test is skipped).
async fn postgres(compat: Compat) -> Option<H> {
    let db = TestDb::create("xmb_dest").await?;
    let url = db.url().to_string();
    let dest = open(&url, SCHEMA, compat).await.unwrap();
    let raw = db.client().await;
    Some(H {
        dest,
        raw: Raw::Pg(raw),
        url,
        compat,
        _dir: None,
        _db: Some(db),
    })
}

/// What [`H::close`] leaves in place of the destination.
struct Closed;

impl Destination for Closed {
    fn ensure_tables<'a>(
        &'a mut self,
        _: &'a [TableSpec],
    ) -> xmbridge_destinations::BoxFuture<'a, Result<xmbridge_destinations::Ensured, DestError>>
    {
        panic!("the destination was closed")
    }
    fn cursor<'a>(
        &'a mut self,
        _: &'a str,
    ) -> xmbridge_destinations::BoxFuture<'a, Result<Option<serde_json::Value>, DestError>> {
        panic!("the destination was closed")
    }
    fn commit(
        &mut self,
        _: Commit,
    ) -> xmbridge_destinations::BoxFuture<'_, Result<CommitStats, DestError>> {
        panic!("the destination was closed")
    }
    fn describe(&self) -> String {
        "closed".into()
    }
}

impl H {
    /// Closes the destination (and so releases its lock), keeping the raw connection.
    fn close(&mut self) {
        self.dest = Box::new(Closed);
    }

    /// The quoted physical name of a table.
    fn t(&self, name: &str) -> String {
        match self.raw {
            Raw::Sqlite(_) => quote_ident(&format!("{SCHEMA}_{name}")),
            Raw::Pg(_) => format!("{}.{}", quote_ident(SCHEMA), quote_ident(name)),
        }
    }

    /// The physical name as error messages show it.
    fn shown(&self, name: &str) -> String {
        match self.raw {
            Raw::Sqlite(_) => format!("{SCHEMA}_{name}"),
            Raw::Pg(_) => format!("{SCHEMA}.{name}"),
        }
    }

    fn is_pg(&self) -> bool {
        matches!(self.raw, Raw::Pg(_))
    }

    fn p(&self, rest: &str) -> String {
        format!("{}{rest}", self.compat.prefix())
    }

    async fn exec(&self, sql: &str) {
        match &self.raw {
            Raw::Sqlite(c) => c.execute_batch(sql).unwrap(),
            Raw::Pg(c) => c.batch_execute(sql).await.unwrap(),
        }
    }

    /// Runs a query whose columns are all text (use [`H::txt`]).
    async fn rows(&self, sql: &str) -> Vec<Vec<Option<String>>> {
        match &self.raw {
            Raw::Sqlite(c) => {
                let mut st = c.prepare(sql).unwrap();
                let n = st.column_count();
                st.query_map([], |r| {
                    (0..n)
                        .map(|i| r.get::<_, Option<String>>(i))
                        .collect::<Result<Vec<_>, _>>()
                })
                .unwrap()
                .collect::<Result<Vec<_>, _>>()
                .unwrap()
            }
            Raw::Pg(c) => c
                .query(sql, &[])
                .await
                .unwrap()
                .iter()
                .map(|r| {
                    (0..r.len())
                        .map(|i| r.get::<_, Option<String>>(i))
                        .collect()
                })
                .collect(),
        }
    }

    async fn count(&self, table: &str, where_: &str) -> i64 {
        let sql = format!(
            "SELECT CAST(count(*) AS TEXT) FROM {} WHERE {where_}",
            self.t(table)
        );
        self.rows(&sql).await[0][0]
            .as_ref()
            .unwrap()
            .parse()
            .unwrap()
    }

    /// A column as text; booleans as `true`/`false`, timestamps as ISO millis.
    fn txt(&self, col: &str, ty: ColumnType) -> String {
        let q = quote_ident(col);
        match (&self.raw, ty) {
            (Raw::Pg(_), ColumnType::Timestamp) => {
                format!("to_char({q} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')")
            }
            (Raw::Pg(_), ColumnType::Float) => format!("CAST({q} AS TEXT)"),
            (Raw::Sqlite(_), ColumnType::Bool) => {
                format!("CASE {q} WHEN 1 THEN 'true' WHEN 0 THEN 'false' END")
            }
            _ => format!("CAST({q} AS TEXT)"),
        }
    }

    /// One commit, made durable (as a sync does before it ends), so the raw connection can
    /// read and alter the tables in between.
    async fn commit(&mut self, c: Commit) -> Result<CommitStats, DestError> {
        let mut stats = self.dest.commit(c).await?;
        stats.add(self.dest.flush().await?);
        Ok(stats)
    }
}

/// A soft table `item (id, survey_id, name, n)`.
fn item_spec() -> TableSpec {
    TableSpec {
        name: "item".into(),
        columns: vec![
            col("id", ColumnType::Text),
            col("survey_id", ColumnType::Text),
            col("name", ColumnType::Text),
            col("n", ColumnType::Int),
        ],
        primary_key: vec!["id".into()],
        soft_delete: true,
        filter_columns: vec![],
        key_implies: None,
    }
}

fn item(id: &str, survey: &str, name: &str, n: i64) -> Vec<Value> {
    vec![
        Value::Text(id.into()),
        Value::Text(survey.into()),
        Value::Text(name.into()),
        Value::Int(n),
    ]
}

fn commit_of(at: i64, batches: Vec<TableBatch>) -> Commit {
    Commit {
        synced_at_ms: at,
        batches,
        ..Default::default()
    }
}

// ---------------------------------------------------------------- cases

async fn create_catalog(mut h: H) {
    let specs = catalog::tables();
    h.dest.ensure_tables(&specs).await.unwrap();
    // Idempotent.
    h.dest.ensure_tables(&specs).await.unwrap();
    for spec in &specs {
        assert_eq!(h.count(&spec.name, "1=1").await, 0, "{}", spec.name);
    }
    let synced = h.p("_synced");
    let deleted = h.p("_deleted");
    let id = h.p("_id");
    for (t, cols) in [
        (
            "survey",
            vec![synced.as_str(), deleted.as_str(), "survey_name"],
        ),
        (
            "question_response",
            vec![id.as_str(), synced.as_str(), "value"],
        ),
    ] {
        let list = cols
            .iter()
            .map(|c| quote_ident(c))
            .collect::<Vec<_>>()
            .join(", ");
        h.rows(&format!("SELECT {list} FROM {} WHERE 1=0", h.t(t)))
            .await;
    }
    // Response-like tables have no deleted column.
    let sql = format!(
        "SELECT {} FROM {} WHERE 1=0",
        quote_ident(&deleted),
        h.t("survey_response")
    );
    let res = match &h.raw {
        Raw::Sqlite(c) => c.prepare(&sql).err().map(|e| e.to_string()),
        Raw::Pg(c) => c.query(&sql, &[]).await.err().map(|e| e.to_string()),
    };
    assert!(
        res.is_some(),
        "survey_response must not have a deleted column"
    );

    // question_response keyed by <p>_id.
    let spec = catalog::table("question_response").unwrap();
    let mut row = vec![Value::Null; spec.columns.len()];
    row[0] = Value::Text("R_1:h1".into());
    row[1] = Value::Text("R_1".into());
    let s = h
        .commit(commit_of(
            T0,
            vec![upserts("question_response", vec![row.clone()])],
        ))
        .await
        .unwrap();
    assert_eq!(stat(&s, "question_response"), (1, 0, 0));
    row[10] = Value::Text("v".into());
    let s = h
        .commit(commit_of(T0, vec![upserts("question_response", vec![row])]))
        .await
        .unwrap();
    assert_eq!(stat(&s, "question_response"), (0, 1, 0));
    let d = h.dest.describe();
    assert!(d.contains(SCHEMA), "{d}");
}

async fn upsert_counts(mut h: H) {
    h.dest.ensure_tables(&[item_spec()]).await.unwrap();
    let s = h
        .commit(commit_of(
            T0,
            vec![upserts(
                "item",
                vec![item("a", "s1", "A", 1), item("b", "s1", "B", 2)],
            )],
        ))
        .await
        .unwrap();
    assert_eq!(s.tables, vec![("item".to_string(), 2, 0, 0)]);
    let s = h
        .commit(commit_of(
            T0 + 1,
            vec![upserts(
                "item",
                vec![item("a", "s1", "A2", 10), item("c", "s1", "C", 3)],
            )],
        ))
        .await
        .unwrap();
    assert_eq!(stat(&s, "item"), (1, 1, 0));
    assert_eq!(h.count("item", "1=1").await, 3);
    let sql = format!(
        "SELECT name, {}, {} FROM {} ORDER BY id",
        h.txt("n", ColumnType::Int),
        h.txt(&h.p("_synced"), ColumnType::Timestamp),
        h.t("item")
    );
    let rows = h.rows(&sql).await;
    let s = |x: &str| Some(x.to_string());
    assert_eq!(rows[0], vec![s("A2"), s("10"), s(&iso_millis(T0 + 1))]);
    assert_eq!(rows[1], vec![s("B"), s("2"), s(&iso_millis(T0))]);
    // A key repeated inside one batch: the last row wins.
    let s = h
        .commit(commit_of(
            T0 + 2,
            vec![upserts(
                "item",
                vec![item("d", "s1", "first", 1), item("d", "s1", "last", 2)],
            )],
        ))
        .await
        .unwrap();
    let (ins, upd, _) = stat(&s, "item");
    assert_eq!(ins + upd, if h.is_pg() { 1 } else { 2 });
    assert_eq!(ins, 1);
    let rows = h
        .rows(&format!("SELECT name FROM {} WHERE id = 'd'", h.t("item")))
        .await;
    assert_eq!(rows, vec![vec![Some("last".to_string())]]);
}

/// `fresh` batches (a survey's first load) are inserted directly; a key that exists after all
/// still upserts, with nothing doubled and the same counts a merge gives.
async fn fresh_batches(mut h: H) {
    h.dest.ensure_tables(&[item_spec()]).await.unwrap();
    let fresh = |rows| TableBatch {
        fresh: true,
        ..upserts("item", rows)
    };
    let s = h
        .commit(commit_of(
            T0,
            vec![fresh(vec![
                item("a", "s1", "A", 1),
                item("b", "s1", "B", 2),
            ])],
        ))
        .await
        .unwrap();
    assert_eq!(stat(&s, "item"), (2, 0, 0));
    // Wrongly marked fresh: "a" exists. The destination must upsert anyway.
    let s = h
        .commit(commit_of(
            T0 + 1,
            vec![fresh(vec![
                item("a", "s1", "A2", 10),
                item("c", "s1", "C", 3),
            ])],
        ))
        .await
        .unwrap();
    assert_eq!(stat(&s, "item"), (1, 1, 0));
    assert_eq!(h.count("item", "1=1").await, 3);
    let sql = format!(
        "SELECT name, {} FROM {} ORDER BY id",
        h.txt(&h.p("_synced"), ColumnType::Timestamp),
        h.t("item")
    );
    let rows = h.rows(&sql).await;
    let s = |x: &str| Some(x.to_string());
    assert_eq!(rows[0], vec![s("A2"), s(&iso_millis(T0 + 1))]);
    assert_eq!(rows[1], vec![s("B"), s(&iso_millis(T0))]);
    assert_eq!(rows[2], vec![s("C"), s(&iso_millis(T0 + 1))]);
}

async fn delete_where(mut h: H) {
    h.dest.ensure_tables(&[item_spec()]).await.unwrap();
    h.commit(commit_of(
        T0,
        vec![upserts(
            "item",
            vec![
                item("a", "s1", "A", 1),
                item("b", "s2", "B", 2),
                item("c", "s3", "C", 3),
            ],
        )],
    ))
    .await
    .unwrap();
    // Deletes run before the batch's upserts (a rewritten response).
    let s = h
        .commit(commit_of(
            T0 + 1,
            vec![TableBatch {
                table: "item".into(),
                upserts: vec![item("a2", "s1", "A2", 1)],
                fresh: false,
                delete_where: vec![(
                    "survey_id".into(),
                    vec![
                        Value::Text("s1".into()),
                        Value::Text("s3".into()),
                        Value::Null,
                    ],
                )],
            }],
        ))
        .await
        .unwrap();
    assert_eq!(stat(&s, "item"), (1, 0, 2));
    let rows = h
        .rows(&format!("SELECT id FROM {} ORDER BY id", h.t("item")))
        .await;
    let ids: Vec<_> = rows.into_iter().map(|r| r[0].clone().unwrap()).collect();
    assert_eq!(ids, ["a2", "b"]);
}

/// A batch that replaces whole groups (`delete_where` + its upserts: a rewritten response's
/// answers) on a table without soft delete keeps the rows that stay the same as they are, its
/// `<p>_synced` included: only changed rows are written, rows the batch no longer holds deleted.
async fn replace_keeps_unchanged_rows(mut h: H) {
    let spec = TableSpec {
        soft_delete: false,
        ..item_spec()
    };
    h.dest.ensure_tables(&[spec]).await.unwrap();
    h.commit(commit_of(
        T0,
        vec![upserts(
            "item",
            vec![
                item("a", "s1", "A", 1),
                item("b", "s1", "B", 2),
                item("c", "s2", "C", 3),
            ],
        )],
    ))
    .await
    .unwrap();
    let replace = |rows: Vec<Vec<Value>>| TableBatch {
        table: "item".into(),
        upserts: rows,
        fresh: false,
        delete_where: vec![("survey_id".into(), vec![Value::Text("s1".into())])],
    };
    // a unchanged, b changed, d new.
    let s = h
        .commit(commit_of(
            T0 + 1,
            vec![replace(vec![
                item("a", "s1", "A", 1),
                item("b", "s1", "B2", 2),
                item("d", "s1", "D", 4),
            ])],
        ))
        .await
        .unwrap();
    assert_eq!(stat(&s, "item"), (1, 1, 0), "inserted, updated, deleted");
    let sql = format!(
        "SELECT id, name, {} FROM {} ORDER BY id",
        h.txt(&h.p("_synced"), ColumnType::Timestamp),
        h.t("item")
    );
    let got = |rows: Vec<Vec<Option<String>>>| -> Vec<(String, String, String)> {
        rows.into_iter()
            .map(|r| {
                let mut r = r.into_iter().map(Option::unwrap_or_default);
                let mut next = || r.next().unwrap_or_default();
                (next(), next(), next())
            })
            .collect()
    };
    let t = |id: &str, name: &str, at: i64| (id.to_string(), name.to_string(), iso_millis(at));
    assert_eq!(
        got(h.rows(&sql).await),
        vec![
            t("a", "A", T0),
            t("b", "B2", T0 + 1),
            t("c", "C", T0),
            t("d", "D", T0 + 1),
        ]
    );
    // The group shrinks to a: b and d go, c (another group) stays.
    let s = h
        .commit(commit_of(
            T0 + 2,
            vec![replace(vec![item("a", "s1", "A", 1)])],
        ))
        .await
        .unwrap();
    assert_eq!(stat(&s, "item"), (0, 0, 2), "inserted, updated, deleted");
    assert_eq!(
        got(h.rows(&sql).await),
        vec![t("a", "A", T0), t("c", "C", T0)]
    );
    // A value set to NULL is a change too.
    let s = h
        .commit(commit_of(
            T0 + 3,
            vec![replace(vec![vec![
                Value::Text("a".into()),
                Value::Text("s1".into()),
                Value::Null,
                Value::Int(1),
            ]])],
        ))
        .await
        .unwrap();
    assert_eq!(stat(&s, "item"), (0, 1, 0), "inserted, updated, deleted");
    assert_eq!(
        got(h.rows(&sql).await),
        vec![t("a", "", T0 + 3), t("c", "C", T0)]
    );
    // A batch that repeats a key ends with its last row, here the one equal to the table's
    // (PostgreSQL leaves out unchanged rows before its merge only when no key repeats).
    let a_null = vec![
        Value::Text("a".into()),
        Value::Text("s1".into()),
        Value::Null,
        Value::Int(1),
    ];
    h.commit(commit_of(
        T0 + 4,
        vec![replace(vec![item("a", "s1", "X", 1), a_null])],
    ))
    .await
    .unwrap();
    let name = format!("SELECT name FROM {} WHERE id = 'a'", h.t("item"));
    assert_eq!(h.rows(&name).await, vec![vec![None]]);
    // Groups with no rows yet (new responses) go straight in; one of their keys that exists
    // after all (c, in group s2) is merged, not doubled or lost.
    let groups = |ids: &[&str]| ids.iter().map(|g| Value::Text((*g).into())).collect();
    let s = h
        .commit(commit_of(
            T0 + 4,
            vec![TableBatch {
                table: "item".into(),
                upserts: vec![item("e", "s3", "E", 5), item("f", "s4", "F", 6)],
                fresh: false,
                delete_where: vec![("survey_id".into(), groups(&["s3", "s4"]))],
            }],
        ))
        .await
        .unwrap();
    assert_eq!(stat(&s, "item"), (2, 0, 0), "inserted, updated, deleted");
    let s = h
        .commit(commit_of(
            T0 + 5,
            vec![TableBatch {
                table: "item".into(),
                upserts: vec![item("g", "s5", "G", 7), item("c", "s5", "C", 3)],
                fresh: false,
                delete_where: vec![("survey_id".into(), groups(&["s5"]))],
            }],
        ))
        .await
        .unwrap();
    assert_eq!(stat(&s, "item"), (1, 1, 0), "inserted, updated, deleted");
    let rows = h
        .rows(&format!(
            "SELECT id, survey_id FROM {} ORDER BY id",
            h.t("item")
        ))
        .await;
    let pairs: Vec<(String, String)> = rows
        .into_iter()
        .map(|r| (r[0].clone().unwrap(), r[1].clone().unwrap()))
        .collect();
    let p = |a: &str, b: &str| (a.to_string(), b.to_string());
    assert_eq!(
        pairs,
        vec![
            p("a", "s1"),
            p("c", "s5"),
            p("e", "s3"),
            p("f", "s4"),
            p("g", "s5")
        ]
    );
}

/// `answer (id, response_id, a, b)`, all text: the shape of `question_response`, whose groups
/// PostgreSQL compares by digest before staging them.
fn answer_spec() -> TableSpec {
    TableSpec {
        name: "answer".into(),
        columns: vec![
            col("id", ColumnType::Text),
            col("response_id", ColumnType::Text),
            col("a", ColumnType::Text),
            col("b", ColumnType::Text),
        ],
        primary_key: vec!["id".into()],
        soft_delete: false,
        filter_columns: vec![],
        key_implies: None,
    }
}

fn answer(id: &str, response: &str, a: Option<&str>, b: Option<&str>) -> Vec<Value> {
    let text = |v: Option<&str>| v.map_or(Value::Null, |v| Value::Text(v.into()));
    vec![
        Value::Text(id.into()),
        Value::Text(response.into()),
        text(a),
        text(b),
    ]
}

/// Replacing groups of an all-text table: a group equal to the table's changes nothing, and
/// values that would read alike if they were simply joined (`xvy|z` and `x|yvz`, NULL and `""`
/// and `"n"`, in another key order) are told apart, and values the server quotes (`,`, `"`,
/// `\\`, white space) compare equal when equal.
async fn replace_text_groups(mut h: H) {
    h.dest.ensure_tables(&[answer_spec()]).await.unwrap();
    let first = vec![
        answer("r1:1", "r1", Some("ab"), Some("c")),
        answer("r1:2", "r1", None, Some("")),
        answer("r2:1", "r2", Some("x"), None),
        answer("r3:1", "r3", Some("n"), Some("v1:")),
        answer("r5:1", "r5", Some("xvy"), Some("z")),
        answer("r6:1", "r6", Some("a,b"), Some("(\"\\ \t)")),
    ];
    h.commit(commit_of(T0, vec![upserts("answer", first)]))
        .await
        .unwrap();
    let groups = |ids: &[&str]| ids.iter().map(|g| Value::Text((*g).into())).collect();
    let replace = |rows: Vec<Vec<Value>>, ids: &[&str]| TableBatch {
        table: "answer".into(),
        upserts: rows,
        fresh: false,
        delete_where: vec![("response_id".into(), groups(ids))],
    };
    let sql = format!(
        "SELECT id, a, b, {} FROM {} ORDER BY id",
        h.txt(&h.p("_synced"), ColumnType::Timestamp),
        h.t("answer")
    );
    let before = h.rows(&sql).await;
    // r1 again as it is, in another order; r2 and r3 with values that join to the same text.
    let s = h
        .commit(commit_of(
            T0 + 1,
            vec![replace(
                vec![
                    answer("r1:2", "r1", None, Some("")),
                    answer("r1:1", "r1", Some("ab"), Some("c")),
                    answer("r2:1", "r2", None, Some("x")),
                    answer("r3:1", "r3", Some("n"), Some("v1:")),
                    answer("r4:1", "r4", Some(""), None),
                    answer("r5:1", "r5", Some("x"), Some("yvz")),
                    answer("r6:1", "r6", Some("a,b"), Some("(\"\\ \t)")),
                ],
                &["r1", "r2", "r3", "r4", "r5", "r6"],
            )],
        ))
        .await
        .unwrap();
    assert_eq!(stat(&s, "answer"), (1, 2, 0), "inserted, updated, deleted");
    let after = h.rows(&sql).await;
    let row = |id: &str, a: Option<&str>, b: Option<&str>, at: i64| {
        vec![
            Some(id.to_string()),
            a.map(str::to_string),
            b.map(str::to_string),
            Some(iso_millis(at)),
        ]
    };
    assert_eq!(
        after,
        vec![
            before[0].clone(),
            before[1].clone(),
            row("r2:1", None, Some("x"), T0 + 1),
            before[3].clone(),
            row("r4:1", Some(""), None, T0 + 1),
            row("r5:1", Some("x"), Some("yvz"), T0 + 1),
            before[5].clone(),
        ]
    );
    // Subtle changes: "ab","c" → "a","bc"; "" → NULL; a group gone.
    let s = h
        .commit(commit_of(
            T0 + 2,
            vec![replace(
                vec![
                    answer("r1:1", "r1", Some("a"), Some("bc")),
                    answer("r1:2", "r1", None, None),
                ],
                &["r1", "r2"],
            )],
        ))
        .await
        .unwrap();
    assert_eq!(stat(&s, "answer"), (0, 2, 1), "inserted, updated, deleted");
    // A batch that repeats a key ends with its last row, here the table's (the destinations
    // count the rows in between differently, so only the outcome is compared).
    h.commit(commit_of(
        T0 + 3,
        vec![replace(
            vec![
                answer("r3:1", "r3", Some("changed"), None),
                answer("r3:1", "r3", Some("n"), Some("v1:")),
            ],
            &["r3"],
        )],
    ))
    .await
    .unwrap();
    let mut end = h.rows(&sql).await;
    // r3's `<p>_synced`: SQLite wrote the rows in between.
    assert_eq!(end[2][..3], before[3][..3]);
    end.remove(2);
    assert_eq!(
        end,
        vec![
            row("r1:1", Some("a"), Some("bc"), T0 + 2),
            row("r1:2", None, None, T0 + 2),
            row("r4:1", Some(""), None, T0 + 1),
            row("r5:1", Some("x"), Some("yvz"), T0 + 1),
            before[5].clone(),
        ]
    );
}

/// `keys`: distinct values of a text column, filtered by equal columns (the sync's reconcile).
async fn keys(mut h: H) {
    h.dest.ensure_tables(&[item_spec()]).await.unwrap();
    h.commit(commit_of(
        T0,
        vec![upserts(
            "item",
            vec![
                item("a", "s1", "A", 1),
                item("b", "s2", "B", 2),
                item("c", "s1", "it's; DROP", 1),
            ],
        )],
    ))
    .await
    .unwrap();
    let sorted = |mut v: Vec<String>| {
        v.sort();
        v
    };
    let f = [("survey_id".to_string(), Value::Text("s1".into()))];
    let k = h.dest.keys("item", "id", &f).await.unwrap();
    assert_eq!(sorted(k), ["a", "c"]);
    let k = h.dest.keys("item", "survey_id", &[]).await.unwrap();
    assert_eq!(sorted(k), ["s1", "s2"]);
    let f2 = [
        ("survey_id".to_string(), Value::Text("s1".into())),
        ("n".to_string(), Value::Int(1)),
        ("name".to_string(), Value::Text("it's; DROP".into())),
    ];
    assert_eq!(h.dest.keys("item", "id", &f2).await.unwrap(), ["c"]);
    let none = [("survey_id".to_string(), Value::Text("nope".into()))];
    assert!(h.dest.keys("item", "id", &none).await.unwrap().is_empty());
    assert!(
        h.dest.keys("item", "n", &[]).await.is_err(),
        "text columns only"
    );
    assert!(h.dest.keys("item", "nope", &[]).await.is_err());
    assert!(h.dest.keys("other", "id", &[]).await.is_err());
}

async fn mark_unseen_with_scope(mut h: H) {
    h.dest.ensure_tables(&[item_spec()]).await.unwrap();
    h.commit(commit_of(
        T0,
        vec![upserts(
            "item",
            vec![
                item("a", "s1", "A", 1),
                item("b", "s1", "B", 2),
                item("c", "s2", "C", 3),
            ],
        )],
    ))
    .await
    .unwrap();
    let mut c = commit_of(
        T0 + 1000,
        vec![upserts("item", vec![item("a", "s1", "A", 1)])],
    );
    c.mark_unseen_deleted = vec![MarkUnseenDeleted {
        table: "item".into(),
        scope: vec![("survey_id".into(), Value::Text("s1".into()))],
    }];
    let s = h.commit(c).await.unwrap();
    assert_eq!(stat(&s, "item"), (0, 1, 1));
    let del = h.p("_deleted");
    let sql = format!(
        "SELECT id, {} FROM {} ORDER BY id",
        h.txt(&del, ColumnType::Bool),
        h.t("item")
    );
    let got: Vec<(String, String)> = h
        .rows(&sql)
        .await
        .into_iter()
        .map(|r| (r[0].clone().unwrap(), r[1].clone().unwrap()))
        .collect();
    let want = |v: &[(&str, &str)]| -> Vec<(String, String)> {
        v.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    };
    assert_eq!(got, want(&[("a", "false"), ("b", "true"), ("c", "false")]));
    // Marking again changes nothing; a row seen again is undeleted.
    let mut c = commit_of(
        T0 + 2000,
        vec![upserts("item", vec![item("b", "s1", "B", 2)])],
    );
    c.mark_unseen_deleted = vec![MarkUnseenDeleted {
        table: "item".into(),
        scope: vec![],
    }];
    let s = h.commit(c).await.unwrap();
    // a and c were not seen in this full read: both marked; b is back.
    assert_eq!(stat(&s, "item"), (0, 1, 2));
    let got: Vec<(String, String)> = h
        .rows(&sql)
        .await
        .into_iter()
        .map(|r| (r[0].clone().unwrap(), r[1].clone().unwrap()))
        .collect();
    assert_eq!(got, want(&[("a", "true"), ("b", "false"), ("c", "true")]));
}

async fn cursor_round_trip_and_atomicity(mut h: H) {
    let other = TableSpec {
        name: "other".into(),
        columns: vec![col("id", ColumnType::Text), col("gone", ColumnType::Text)],
        primary_key: vec!["id".into()],
        soft_delete: false,
        filter_columns: vec![],
        key_implies: None,
    };
    h.dest
        .ensure_tables(&[item_spec(), other.clone()])
        .await
        .unwrap();
    assert_eq!(h.dest.cursor("responses").await.unwrap(), None);
    let cur1 = json!({"token": "abc'; DROP TABLE x; --", "n": 1, "ü": [1, 2]});
    let mut c = commit_of(T0, vec![upserts("item", vec![item("a", "s1", "A", 1)])]);
    c.cursors = vec![("responses".into(), cur1.clone())];
    h.commit(c).await.unwrap();
    assert_eq!(
        h.dest.cursor("responses").await.unwrap(),
        Some(cur1.clone())
    );
    let mut c = commit_of(T0 + 1, vec![]);
    c.cursors = vec![
        ("responses".into(), json!({"token": "def"})),
        ("users".into(), json!(5)),
    ];
    h.commit(c).await.unwrap();
    assert_eq!(
        h.dest.cursor("responses").await.unwrap(),
        Some(json!({"token": "def"}))
    );
    assert_eq!(h.dest.cursor("users").await.unwrap(), Some(json!(5)));

    // A column dropped by hand after ensure_tables: the commit fails as a whole.
    h.exec(&format!(
        "ALTER TABLE {} DROP COLUMN \"gone\"",
        h.t("other")
    ))
    .await;
    let mut c = commit_of(
        T0 + 2,
        vec![
            upserts(
                "item",
                vec![item("a", "s1", "CHANGED", 9), item("z", "s1", "Z", 1)],
            ),
            upserts(
                "other",
                vec![vec![Value::Text("o".into()), Value::Text("x".into())]],
            ),
        ],
    );
    c.cursors = vec![("responses".into(), json!({"token": "never"}))];
    let err = h.commit(c).await.unwrap_err();
    match &err {
        DestError::MissingColumn { table, column } => {
            assert_eq!(table, &h.shown("other"));
            assert_eq!(column, "gone");
        }
        other => panic!("expected MissingColumn, got {other:?}"),
    }
    let msg = err.to_string();
    assert!(
        msg.contains("gone") && msg.contains(&h.shown("other")),
        "{msg}"
    );
    assert_eq!(
        h.dest.cursor("responses").await.unwrap(),
        Some(json!({"token": "def"}))
    );
    assert_eq!(h.count("item", "1=1").await, 1);
    assert_eq!(h.count("item", "name = 'A'").await, 1);
    // A delete on the dropped column is an error too, never a comparison with a constant.
    let err = h
        .commit(Commit {
            synced_at_ms: T0 + 2,
            batches: vec![TableBatch {
                table: "other".into(),
                upserts: vec![],
                fresh: false,
                delete_where: vec![("gone".into(), vec![Value::Text("gone".into())])],
            }],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(
        matches!(&err, DestError::MissingColumn { column, .. } if column == "gone"),
        "{err:?}"
    );
    // ensure_tables re-adds the column; the same commit then applies.
    h.dest
        .ensure_tables(&[item_spec(), other.clone()])
        .await
        .unwrap();
    let mut c = commit_of(
        T0 + 3,
        vec![upserts(
            "other",
            vec![vec![Value::Text("o".into()), Value::Text("x".into())]],
        )],
    );
    c.cursors = vec![("responses".into(), json!({"token": "ghi"}))];
    h.commit(c).await.unwrap();
    assert_eq!(h.count("other", "gone = 'x'").await, 1);
    assert_eq!(
        h.dest.cursor("responses").await.unwrap(),
        Some(json!({"token": "ghi"}))
    );
    // Cursors survive a reopen.
    drop(h.dest);
    let mut dest = open(&h.url, SCHEMA, h.compat).await.unwrap();
    assert_eq!(
        dest.cursor("responses").await.unwrap(),
        Some(json!({"token": "ghi"}))
    );
}

async fn schema_evolution(mut h: H) {
    let mut spec = catalog::table("distribution").unwrap();
    h.dest
        .ensure_tables(std::slice::from_ref(&spec))
        .await
        .unwrap();
    let mut row = vec![Value::Null; spec.columns.len()];
    row[0] = Value::Text("EMD_1".into());
    h.commit(commit_of(
        T0,
        vec![upserts("distribution", vec![row.clone()])],
    ))
    .await
    .unwrap();
    // The API starts returning a new stats field.
    assert!(spec.add_column(&catalog::stats_column("clicked"), ColumnType::Int));
    h.dest
        .ensure_tables(std::slice::from_ref(&spec))
        .await
        .unwrap();
    row.push(Value::Int(7));
    row[0] = Value::Text("EMD_2".into());
    let s = h
        .commit(commit_of(T0 + 1, vec![upserts("distribution", vec![row])]))
        .await
        .unwrap();
    assert_eq!(stat(&s, "distribution"), (1, 0, 0));
    assert_eq!(h.count("distribution", "stats_clicked = 7").await, 1);
    assert_eq!(h.count("distribution", "stats_clicked IS NULL").await, 1);
    // Rows of the old width are refused with a clear error.
    let err = h
        .commit(commit_of(
            T0 + 2,
            vec![upserts("distribution", vec![vec![Value::Text("x".into())]])],
        ))
        .await
        .unwrap_err();
    assert!(matches!(err, DestError::RowShape { .. }), "{err:?}");
}

async fn type_conflict(mut h: H) {
    h.dest.ensure_tables(&[item_spec()]).await.unwrap();
    h.commit(commit_of(
        T0,
        vec![upserts("item", vec![item("a", "s1", "A", 1)])],
    ))
    .await
    .unwrap();
    let t = h.t("item");
    if h.is_pg() {
        h.exec(&format!("ALTER TABLE {t} ALTER COLUMN n TYPE text"))
            .await;
    } else {
        h.exec(&format!(
            "ALTER TABLE {t} DROP COLUMN n; ALTER TABLE {t} ADD COLUMN n TEXT"
        ))
        .await;
    }
    let err = h.dest.ensure_tables(&[item_spec()]).await.unwrap_err();
    match &err {
        DestError::TypeConflict {
            table,
            column,
            found,
            expected,
            fix,
        } => {
            assert_eq!(table, &h.shown("item"));
            assert_eq!(column, "n");
            if h.is_pg() {
                assert_eq!((found.as_str(), expected.as_str()), ("text", "integer"));
            } else {
                assert_eq!((found.as_str(), expected.as_str()), ("TEXT", "INTEGER"));
            }
            assert!(fix.contains("ALTER TABLE"), "{fix}");
        }
        other => panic!("expected TypeConflict, got {other:?}"),
    }
    let msg = err.to_string();
    assert!(msg.contains("\"n\"") && msg.contains("fix:"), "{msg}");
    // A fresh connection reports the same (after the first let go of the destination's lock).
    drop(h.dest);
    let mut dest = open(&h.url, SCHEMA, h.compat).await.unwrap();
    let err = dest.ensure_tables(&[item_spec()]).await.unwrap_err();
    assert!(matches!(err, DestError::TypeConflict { .. }), "{err:?}");
}

async fn dropped_table(mut h: H) {
    h.dest.ensure_tables(&[item_spec()]).await.unwrap();
    h.exec(&format!("DROP TABLE {}", h.t("item"))).await;
    let mut c = commit_of(T0, vec![upserts("item", vec![item("a", "s1", "A", 1)])]);
    c.cursors = vec![("s".into(), json!(1))];
    let err = h.commit(c).await.unwrap_err();
    assert!(
        matches!(&err, DestError::MissingTable { table } if *table == h.shown("item")),
        "{err:?}"
    );
    assert_eq!(h.dest.cursor("s").await.unwrap(), None);
    // Unprepared tables and bad rows are refused before anything is written.
    let err = h
        .commit(commit_of(T0, vec![upserts("nope", vec![vec![]])]))
        .await
        .unwrap_err();
    assert!(matches!(err, DestError::UnknownTable { .. }), "{err:?}");
    h.dest.ensure_tables(&[item_spec()]).await.unwrap();
    let mut bad = item("a", "s1", "A", 1);
    bad[3] = Value::Text("not a number".into());
    let err = h
        .commit(commit_of(T0, vec![upserts("item", vec![bad])]))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, DestError::ValueType { column, .. } if column == "n"),
        "{err:?}"
    );
    let mut bad = item("a", "s1", "A", 1);
    bad[0] = Value::Null;
    let err = h
        .commit(commit_of(T0, vec![upserts("item", vec![bad])]))
        .await
        .unwrap_err();
    assert!(matches!(err, DestError::NullKey { .. }), "{err:?}");
    assert_eq!(h.count("item", "1=1").await, 0);
}

/// `ensure_tables` says which tables it had to create: all on a first call, none on the next,
/// then only the one dropped by hand (the sync reloads that table's stream).
async fn ensure_reports_created_tables(mut h: H) {
    let other = TableSpec {
        name: "other".into(),
        columns: vec![col("id", ColumnType::Text)],
        primary_key: vec!["id".into()],
        soft_delete: false,
        filter_columns: vec![],
        key_implies: None,
    };
    let specs = [item_spec(), other];
    let mut first = h.dest.ensure_tables(&specs).await.unwrap().created;
    first.sort();
    assert_eq!(first, ["item", "other"]);
    assert!(
        h.dest
            .ensure_tables(&specs)
            .await
            .unwrap()
            .created
            .is_empty()
    );
    h.exec(&format!("DROP TABLE {}", h.t("other"))).await;
    // A fresh session (the next run, once this one let go of the destination's lock) sees the
    // same.
    drop(h.dest);
    let mut dest = open(&h.url, SCHEMA, h.compat).await.unwrap();
    assert_eq!(dest.ensure_tables(&specs).await.unwrap().created, ["other"]);
}

/// A cursor that is not JSON is an error naming the stream and the cursor table. Only SQLite can
/// hold one: PostgreSQL's jsonb column refuses it when it is written.
async fn unreadable_cursor(mut h: H) {
    h.dest.ensure_tables(&[item_spec()]).await.unwrap();
    let mut c = commit_of(T0, vec![]);
    c.cursors = vec![("responses:SV_1".into(), json!({"continuationToken": "t"}))];
    h.commit(c).await.unwrap();
    let state = h.shown(&h.p("_state"));
    let state_q = h.t(&h.p("_state"));
    let edit = format!(
        "UPDATE {state_q} SET \"cursor\" = '{{\"continuationToken\": ' WHERE \"stream\" = 'responses:SV_1'"
    );
    match &h.raw {
        Raw::Pg(c) => {
            let err = c.batch_execute(&edit).await.unwrap_err();
            let msg = err.as_db_error().map(|d| d.message().to_string());
            assert!(
                msg.as_deref().is_some_and(|m| m.contains("json")),
                "{err:?}"
            );
            assert_eq!(
                h.dest.cursor("responses:SV_1").await.unwrap(),
                Some(json!({"continuationToken": "t"}))
            );
        }
        Raw::Sqlite(c) => {
            c.execute_batch(&edit).unwrap();
            let err = h.dest.cursor("responses:SV_1").await.unwrap_err();
            match &err {
                DestError::UnreadableCursor { stream, table, .. } => {
                    assert_eq!(
                        (stream.as_str(), table.as_str()),
                        ("responses:SV_1", state.as_str())
                    );
                }
                other => panic!("expected UnreadableCursor, got {other:?}"),
            }
            let msg = err.to_string();
            assert!(
                msg.contains("not valid JSON") && msg.contains("--full"),
                "{msg}"
            );
            // Other cursors still read, and a commit writes a fresh one over it.
            assert_eq!(h.dest.cursor("users").await.unwrap(), None);
            let mut c = commit_of(T0, vec![]);
            c.cursors = vec![("responses:SV_1".into(), json!({"continuationToken": null}))];
            h.commit(c).await.unwrap();
            assert_eq!(
                h.dest.cursor("responses:SV_1").await.unwrap(),
                Some(json!({"continuationToken": null}))
            );
        }
    }
}

async fn hostile_identifiers(mut h: H) {
    let table = "we\"ird; DROP TABLE x; --select";
    let c1 = "\"; DELETE FROM x; --";
    let c2 = "select";
    let c3 = "naïve ✓ from";
    let spec = TableSpec {
        name: table.into(),
        columns: vec![
            col(c2, ColumnType::Text),
            col(c1, ColumnType::Text),
            col(c3, ColumnType::Int),
        ],
        primary_key: vec![c2.into()],
        soft_delete: true,
        filter_columns: vec![],
        key_implies: None,
    };
    h.dest
        .ensure_tables(std::slice::from_ref(&spec))
        .await
        .unwrap();
    let row = |k: &str, v: &str, n: i64| {
        vec![Value::Text(k.into()), Value::Text(v.into()), Value::Int(n)]
    };
    let s = h
        .commit(commit_of(
            T0,
            vec![upserts(table, vec![row("k1", "v1", 1), row("k2", "v2", 2)])],
        ))
        .await
        .unwrap();
    assert_eq!(stat(&s, table), (2, 0, 0));
    let s = h
        .commit(Commit {
            synced_at_ms: T0 + 1,
            batches: vec![TableBatch {
                table: table.into(),
                upserts: vec![row("k1", "v1b", 3)],
                fresh: false,
                delete_where: vec![(c1.into(), vec![Value::Text("v2".into())])],
            }],
            mark_unseen_deleted: vec![MarkUnseenDeleted {
                table: table.into(),
                scope: vec![(c3.into(), Value::Int(99))],
            }],
            cursors: vec![(table.into(), json!(table))],
            concurrent: false,
        })
        .await
        .unwrap();
    assert_eq!(stat(&s, table), (0, 1, 1));
    let sql = format!(
        "SELECT {}, {}, {} FROM {}",
        quote_ident(c2),
        quote_ident(c1),
        h.txt(c3, ColumnType::Int),
        h.t(table)
    );
    let rows = h.rows(&sql).await;
    let s = |x: &str| Some(x.to_string());
    assert_eq!(rows, vec![vec![s("k1"), s("v1b"), s("3")]]);
    assert_eq!(h.dest.cursor(table).await.unwrap(), Some(json!(table)));
    // Evolution with a hostile column name too.
    let mut spec2 = spec.clone();
    spec2.add_column("it's \"quoted\"; --", ColumnType::Json);
    h.dest.ensure_tables(&[spec2]).await.unwrap();
    // Names PostgreSQL would truncate or nobody can store are refused clearly.
    let mut bad = spec.clone();
    bad.add_column("nul\0byte", ColumnType::Text);
    let err = h.dest.ensure_tables(&[bad]).await.unwrap_err();
    assert!(matches!(err, DestError::InvalidName { .. }), "{err:?}");
}

async fn values_round_trip(mut h: H) {
    let spec = TableSpec {
        name: "vals".into(),
        columns: vec![
            col("id", ColumnType::Text),
            col("s", ColumnType::Text),
            col("ts", ColumnType::Timestamp),
            col("b", ColumnType::Bool),
            col("i", ColumnType::Int),
            col("l", ColumnType::BigInt),
            col("f", ColumnType::Float),
            col("j", ColumnType::Json),
        ],
        primary_key: vec!["id".into()],
        soft_delete: false,
        filter_columns: vec![],
        key_implies: None,
    };
    h.dest
        .ensure_tables(std::slice::from_ref(&spec))
        .await
        .unwrap();
    let nasty =
        "it's \"quoted\"; DROP TABLE vals; -- ünïcödé 日本語 🎉\nline2\t\\back\\slash %s $1 ?";
    let ts = 1_709_296_496_789;
    let rows = vec![
        vec![
            Value::Text("r1".into()),
            Value::Text(nasty.into()),
            Value::Timestamp(ts),
            Value::Bool(true),
            Value::Int(i32::MIN as i64),
            Value::Int(i64::MAX),
            Value::Float(-1.5e-7),
            Value::Json(r#"{"k":"v'\"; --","n":[1,2.5,null],"u":"ü"}"#.into()),
        ],
        vec![
            Value::Text(nasty.into()),
            Value::Text(String::new().into()),
            Value::Timestamp(0),
            Value::Bool(false),
            Value::Int(i32::MAX as i64),
            Value::Int(i64::MIN),
            Value::Int(3),
            Value::Json("123".into()),
        ],
        vec![
            Value::Text("r3".into()),
            Value::Null,
            Value::Null,
            Value::Null,
            Value::Null,
            Value::Null,
            Value::Null,
            Value::Null,
        ],
    ];
    h.commit(commit_of(T0, vec![upserts("vals", rows)]))
        .await
        .unwrap();
    let sel = format!(
        "SELECT id, s, {}, {}, {}, {}, {} FROM {} ORDER BY {}",
        h.txt("ts", ColumnType::Timestamp),
        h.txt("b", ColumnType::Bool),
        h.txt("i", ColumnType::Int),
        h.txt("l", ColumnType::BigInt),
        h.txt("j", ColumnType::Json),
        h.t("vals"),
        if h.is_pg() { "id COLLATE \"C\"" } else { "id" }
    );
    let got = h.rows(&sel).await;
    let s = |x: &str| Some(x.to_string());
    let j1 = if h.is_pg() {
        // jsonb normalises spacing and key order; compare as JSON below.
        None
    } else {
        s(r#"{"k":"v'\"; --","n":[1,2.5,null],"u":"ü"}"#)
    };
    assert_eq!(got.len(), 3);
    let by_id = |id: &str| {
        got.iter()
            .find(|r| r[0].as_deref() == Some(id))
            .unwrap()
            .clone()
    };
    let r1 = by_id("r1");
    assert_eq!(r1[1], s(nasty));
    assert_eq!(r1[2], s(&iso_millis(ts)));
    assert_eq!(r1[3], s("true"));
    assert_eq!(r1[4], s(&(i32::MIN).to_string()));
    assert_eq!(r1[5], s(&i64::MAX.to_string()));
    let j: serde_json::Value = serde_json::from_str(r1[6].as_deref().unwrap()).unwrap();
    assert_eq!(j, json!({"k": "v'\"; --", "n": [1, 2.5, null], "u": "ü"}));
    if let Some(j1) = j1 {
        assert_eq!(r1[6], Some(j1));
    }
    let r2 = by_id(nasty);
    assert_eq!(r2[1], s(""));
    assert_eq!(r2[2], s("1970-01-01T00:00:00.000Z"));
    assert_eq!(r2[3], s("false"));
    assert_eq!(r2[4], s(&i32::MAX.to_string()));
    assert_eq!(r2[5], s(&i64::MIN.to_string()));
    assert_eq!(r2[6], s("123"));
    let r3 = by_id("r3");
    assert!(r3[1..].iter().all(Option::is_none), "{r3:?}");
    // Floats, exactly.
    match &h.raw {
        Raw::Sqlite(c) => {
            let f: Vec<Option<f64>> = c
                .prepare(&format!("SELECT f FROM {} ORDER BY id", h.t("vals")))
                .unwrap()
                .query_map([], |r| r.get(0))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            assert!(
                f.contains(&Some(-1.5e-7)) && f.contains(&Some(3.0)),
                "{f:?}"
            );
        }
        Raw::Pg(c) => {
            let f: Vec<Option<f64>> = c
                .query(&format!("SELECT f FROM {}", h.t("vals")), &[])
                .await
                .unwrap()
                .iter()
                .map(|r| r.get(0))
                .collect();
            assert!(
                f.contains(&Some(-1.5e-7)) && f.contains(&Some(3.0)),
                "{f:?}"
            );
        }
    }
    // An int out of the 32-bit range is refused for an integer column.
    let mut bad = vec![Value::Null; 8];
    bad[0] = Value::Text("r4".into());
    bad[4] = Value::Int(1 << 40);
    let err = h
        .commit(commit_of(T0, vec![upserts("vals", vec![bad])]))
        .await
        .unwrap_err();
    assert!(matches!(err, DestError::ValueType { .. }), "{err:?}");
}

async fn fivetran_compat(mut h: H) {
    let spec = catalog::table("question_response").unwrap();
    h.dest
        .ensure_tables(std::slice::from_ref(&spec))
        .await
        .unwrap();
    let mut row = vec![Value::Null; spec.columns.len()];
    row[0] = Value::Text("hash".into());
    let mut c = commit_of(T0, vec![upserts("question_response", vec![row])]);
    c.cursors = vec![("x".into(), json!(1))];
    h.commit(c).await.unwrap();
    assert_eq!(
        h.count("question_response", "_fivetran_id = 'hash'").await,
        1
    );
    assert_eq!(
        h.count("question_response", "_fivetran_synced IS NOT NULL")
            .await,
        1
    );
    assert_eq!(h.count("_fivetran_state", "stream = 'x'").await, 1);
}

/// Thousands of rows in one batch: the COPY stream is flushed many times mid-batch.
async fn large_batch(mut h: H) {
    let spec = catalog::table("question_response").unwrap();
    h.dest
        .ensure_tables(std::slice::from_ref(&spec))
        .await
        .unwrap();
    let row = |i: usize, v: &str| -> Vec<Value> {
        let mut r: Vec<Value> = (0..spec.columns.len())
            .map(|c| Value::Text(format!("c{c}-{i}").into()))
            .collect();
        r[0] = Value::Text(format!("c1-{i}:h{i:06}").into());
        r[10] = Value::Text(v.into());
        r
    };
    let s = h
        .commit(commit_of(
            T0,
            vec![upserts(
                "question_response",
                (0..6000).map(|i| row(i, "old")).collect(),
            )],
        ))
        .await
        .unwrap();
    assert_eq!(stat(&s, "question_response"), (6000, 0, 0));
    let s = h
        .commit(commit_of(
            T0 + 1,
            vec![upserts(
                "question_response",
                (3000..9000).map(|i| row(i, "new")).collect(),
            )],
        ))
        .await
        .unwrap();
    assert_eq!(stat(&s, "question_response"), (3000, 3000, 0));
    assert_eq!(h.count("question_response", "value = 'new'").await, 6000);
    assert_eq!(h.count("question_response", "value = 'old'").await, 3000);
}

/// A bad value after megabytes of good rows (PostgreSQL has streamed part of the `COPY` by
/// then): the commit fails naming the column, writes nothing, moves no cursor, and the same
/// destination takes the good rows right after — as a first load and as a merge.
async fn bad_row_after_megabytes(mut h: H) {
    h.dest.ensure_tables(&[item_spec()]).await.unwrap();
    let good: Vec<Vec<Value>> = (0..40_000)
        .map(|i| item(&format!("id-{i:06}"), "s1", &"x".repeat(40), i))
        .collect();
    let mut bad = item("id-bad", "s1", "B", 1);
    bad[3] = Value::Int(1 << 40);
    for (round, fresh) in [(0i64, true), (1, false)] {
        let mut rows = good.clone();
        rows.push(bad.clone());
        let mut batch = upserts("item", rows);
        batch.fresh = fresh;
        let mut c = commit_of(T0 + round, vec![batch]);
        c.cursors = vec![("s".into(), json!(round))];
        let err = h.commit(c).await.unwrap_err();
        assert!(
            matches!(&err, DestError::ValueType { column, .. } if column == "n"),
            "{err:?}"
        );
        let expected = if round == 0 { None } else { Some(json!(0)) };
        assert_eq!(h.dest.cursor("s").await.unwrap(), expected);
        assert_eq!(h.count("item", "1=1").await, 40_000 * round);
        let mut batch = upserts("item", good.clone());
        batch.fresh = fresh;
        let mut c = commit_of(T0 + round, vec![batch]);
        c.cursors = vec![("s".into(), json!(round))];
        h.commit(c).await.unwrap();
        assert_eq!(h.count("item", "1=1").await, 40_000);
        assert_eq!(h.dest.cursor("s").await.unwrap(), Some(json!(round)));
    }
}

/// Every column the sync deletes or filters by has an index (with the tables, idempotent),
/// except on PostgreSQL the column a table's key starts with (`question_response.response_id`),
/// whose rows the key's own index finds.
async fn filter_indexes(mut h: H) {
    let specs = catalog::tables();
    h.dest.ensure_tables(&specs).await.unwrap();
    h.dest.ensure_tables(&specs).await.unwrap();
    let mut checked = 0;
    for spec in &specs {
        for col in spec.indexed_columns() {
            if h.is_pg() && spec.key_implies.as_deref() == Some(col) {
                let found = h
                    .rows(&format!(
                        "SELECT indexname::text FROM pg_indexes WHERE schemaname = '{SCHEMA}' \
                         AND tablename = '{}' AND indexdef LIKE '%({col})%'",
                        spec.name
                    ))
                    .await;
                assert!(found.is_empty(), "{}: {found:?}", spec.name);
                continue;
            }
            let sql = if h.is_pg() {
                format!(
                    "SELECT a.attname::text FROM pg_index i \
                     JOIN pg_class c ON c.oid = i.indrelid \
                     JOIN pg_namespace n ON n.oid = c.relnamespace \
                     JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = i.indkey[0] \
                     WHERE n.nspname = '{SCHEMA}' AND c.relname = '{}' AND a.attname = '{col}'",
                    spec.name
                )
            } else {
                format!(
                    "SELECT ii.name FROM pragma_index_list('{SCHEMA}_{}') il \
                     JOIN pragma_index_info(il.name) ii WHERE ii.seqno = 0 AND ii.name = '{col}'",
                    spec.name
                )
            };
            let found = h.rows(&sql).await;
            assert!(!found.is_empty(), "{}: no index on {col}", spec.name);
            checked += 1;
        }
    }
    assert!(checked >= 25, "only {checked} indexes");
    // The incremental response path: deleting answer rows by response id uses the index.
    let plan: Vec<String> = match &h.raw {
        Raw::Sqlite(c) => {
            let sql = format!(
                "EXPLAIN QUERY PLAN DELETE FROM {} WHERE response_id = 'R_1'",
                h.t("question_response")
            );
            let mut st = c.prepare(&sql).unwrap();
            st.query_map([], |r| r.get::<_, String>(3))
                .unwrap()
                .map(|r| r.unwrap())
                .collect()
        }
        // A response's rows are one range of the bytewise key (`<response_id>:…`).
        Raw::Pg(c) => {
            c.batch_execute("SET enable_seqscan = off").await.unwrap();
            let sql = format!(
                "EXPLAIN (COSTS OFF) DELETE FROM {} WHERE _xmbridge_id >= 'R_1:' AND _xmbridge_id < 'R_1;'",
                h.t("question_response")
            );
            c.query(&sql, &[])
                .await
                .unwrap()
                .iter()
                .map(|r| r.get::<_, String>(0))
                .collect()
        }
    };
    let index = if h.is_pg() {
        "question_response_pkey"
    } else {
        "response_id_idx"
    };
    assert!(plan.iter().any(|l| l.contains(index)), "{plan:?}");
}

/// A first load into an empty table (fresh batches) ends with the same table, key and indexes
/// as row-by-row upserts would give, even when the load repeats a key (the last row wins), and
/// the table merges normally afterwards.
async fn first_load_builds_indexes(mut h: H) {
    let spec = catalog::table("question_response").unwrap();
    h.dest
        .ensure_tables(std::slice::from_ref(&spec))
        .await
        .unwrap();
    let row = |i: usize, v: &str| -> Vec<Value> {
        let mut r: Vec<Value> = (0..spec.columns.len())
            .map(|c| Value::Text(format!("c{c}-{i}").into()))
            .collect();
        r[1] = Value::Text(format!("R_{}", i / 10).into());
        r[0] = Value::Text(format!("R_{}:h{i:06}", i / 10).into());
        r[10] = Value::Text(v.into());
        r
    };
    let fresh = |rows| TableBatch {
        fresh: true,
        ..upserts("question_response", rows)
    };
    // Two commits of one load, no flush in between; the second repeats ten keys.
    for (range, v) in [(0..3000, "first"), (2990..3500, "again")] {
        h.dest
            .commit(commit_of(
                T0,
                vec![fresh(range.map(|i| row(i, v)).collect())],
            ))
            .await
            .unwrap();
    }
    h.dest.flush().await.unwrap();
    assert_eq!(h.count("question_response", "1=1").await, 3500);
    assert_eq!(h.count("question_response", "value = 'again'").await, 510);
    assert_eq!(
        h.count(
            "question_response",
            "value = 'first' AND response_id = 'R_299'"
        )
        .await,
        0,
        "the repeated keys keep their last row"
    );
    // The key is enforced again: a plain upsert of an existing key updates it.
    let s = h
        .commit(commit_of(
            T0 + 1,
            vec![upserts("question_response", vec![row(5, "merged")])],
        ))
        .await
        .unwrap();
    assert_eq!(stat(&s, "question_response"), (0, 1, 0));
    assert_eq!(h.count("question_response", "1=1").await, 3500);
    // And the indexes are back: on SQLite the filter index; PostgreSQL's key serves
    // `response_id` itself (`postgres_groups_found_through_the_key`), so only the key is there.
    let found = if h.is_pg() {
        h.rows(&format!(
            "SELECT indexname::text FROM pg_indexes WHERE schemaname = '{SCHEMA}' \
             AND tablename = 'question_response'"
        ))
        .await
    } else {
        h.rows(&format!(
            "SELECT name FROM pragma_index_list('{SCHEMA}_question_response') WHERE name LIKE '%response_id_idx'"
        ))
        .await
    };
    let expected = if h.is_pg() {
        "question_response_pkey".to_string()
    } else {
        format!("{SCHEMA}_question_response__response_id_idx")
    };
    assert_eq!(found, vec![vec![Some(expected)]], "{found:?}");
    // PostgreSQL: the loaded table has its statistics at once, so the next sync's deletes by
    // response_id are planned on the index rather than as a scan.
    if h.is_pg() {
        // The statistics views may show it a moment later than it happened.
        let mut analyzed = Vec::new();
        for _ in 0..50 {
            analyzed = h
                .rows(&format!(
                    "SELECT relname::text FROM pg_stat_user_tables WHERE schemaname = '{SCHEMA}' \
                     AND relname = 'question_response' AND last_analyze IS NOT NULL"
                ))
                .await;
            if !analyzed.is_empty() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        assert_eq!(analyzed.len(), 1, "{analyzed:?}");
        // Of the columns our statements search by (the key and its group column) where
        // autovacuum analyzes the rest later; of every column where it is off.
        let with_stats = h
            .rows(&format!(
                "SELECT attname::text FROM pg_stats WHERE schemaname = '{SCHEMA}' \
                 AND tablename = 'question_response' ORDER BY 1"
            ))
            .await;
        let with_stats: Vec<String> = with_stats.into_iter().flatten().flatten().collect();
        let autovacuum = h.rows("SELECT current_setting('autovacuum')").await;
        if autovacuum == vec![vec![Some("on".to_string())]] {
            assert_eq!(with_stats, ["_xmbridge_id", "response_id"]);
        } else {
            let every_column = h
                .rows(&format!(
                    "SELECT column_name::text FROM information_schema.columns \
                     WHERE table_schema = '{SCHEMA}' AND table_name = 'question_response' \
                     ORDER BY 1"
                ))
                .await;
            let every_column: Vec<String> = every_column.into_iter().flatten().flatten().collect();
            assert_eq!(with_stats, every_column);
        }
        // The surrogate key compares bytewise (its values share a response-id prefix); the
        // columns queries join on keep the database's collation.
        let collations = h
            .rows(&format!(
                "SELECT column_name::text || '=' || coalesce(collation_name::text, 'default')                  FROM information_schema.columns WHERE table_schema = '{SCHEMA}'                  AND table_name = 'question_response'                  AND column_name IN ('_xmbridge_id', 'response_id') ORDER BY 1"
            ))
            .await;
        let collations: Vec<String> = collations.into_iter().flatten().flatten().collect();
        assert_eq!(
            collations,
            ["_xmbridge_id=C", "response_id=default"],
            "{collations:?}"
        );
    }
}

/// A destination is written by one session at a time: a second open is `Busy`, names the
/// destination and says what to do, and succeeds once the first is closed. On PostgreSQL the
/// lock is per schema.
async fn one_writer(h: H) {
    let err = open(&h.url, SCHEMA, h.compat).await.err().unwrap();
    let msg = err.to_string();
    assert!(matches!(err, DestError::Busy { .. }), "{err:?}");
    assert!(
        msg.contains("another sync is writing this destination"),
        "{msg}"
    );
    // Names the file or the database.
    let name = h.url.rsplit('/').next().unwrap();
    assert!(msg.contains(name), "{msg}");
    if h.is_pg() {
        assert!(msg.contains("held by PostgreSQL session"), "{msg}");
        let mut other = open(&h.url, "other_schema", h.compat).await.unwrap();
        other.ensure_tables(&[item_spec()]).await.unwrap();
    }
    drop(h.dest);
    let mut again = open(&h.url, SCHEMA, h.compat).await.unwrap();
    again.ensure_tables(&[item_spec()]).await.unwrap();
}

/// A leased run claims the destination with its fencing token: a run with a lower token is
/// refused at open (with how to remove a stale claim), and once a later run claimed it, the
/// earlier run's next commit is refused in its own transaction and applies nothing. Another
/// scope and a sync without a lease are not affected.
async fn fencing(mut h: H) {
    let url = h.url.clone();
    h.close();
    let one = |id: &str, n: i64| Commit {
        cursors: vec![("s".into(), json!(n))],
        ..commit_of(T0, vec![upserts("item", vec![item(id, "s1", "x", n)])])
    };
    let writer = async |h: &H| {
        h.rows(&format!(
            "SELECT CAST(\"fence\" AS TEXT) FROM {} WHERE \"stream\" = 's'",
            h.t("_xmbridge_state")
        ))
        .await[0][0]
            .clone()
    };
    let mut first = open_fenced(&url, "prod", 1).await.unwrap();
    first.ensure_tables(&[item_spec()]).await.unwrap();
    first.commit(one("a", 1)).await.unwrap();
    first.flush().await.unwrap();
    drop(first);
    let mut third = open_fenced(&url, "prod", 3).await.unwrap();
    third.ensure_tables(&[item_spec()]).await.unwrap();
    third.commit(one("b", 3)).await.unwrap();
    third.flush().await.unwrap();
    drop(third);

    // Token 2 started before 3 but reaches the destination after it: too late.
    let err = open_fenced(&url, "prod", 2).await.err().unwrap();
    assert_eq!(err.kind(), DestErrorKind::Fenced, "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("lost its lease"), "{msg}");
    assert!(msg.contains("fence token 3"), "{msg}");
    assert!(msg.contains("this run holds 2"), "{msg}");
    assert!(msg.contains(&h.shown("_xmbridge_fence")), "{msg}");
    assert!(msg.contains("DELETE FROM"), "{msg}");

    // A run holding the destination loses it to a later claim (written here by hand: the
    // claim of a run on another node) and applies nothing more.
    let mut fourth = open_fenced(&url, "prod", 4).await.unwrap();
    fourth.ensure_tables(&[item_spec()]).await.unwrap();
    fourth.commit(one("c", 4)).await.unwrap();
    fourth.flush().await.unwrap();
    // Each cursor names the run that wrote it.
    assert_eq!(writer(&h).await.as_deref(), Some("4"));
    h.exec(&format!(
        "UPDATE {} SET \"token\" = 5 WHERE \"scope\" = 'prod'",
        h.t("_xmbridge_fence")
    ))
    .await;
    let err = fourth.commit(one("d", 4)).await.unwrap_err();
    assert_eq!(err.kind(), DestErrorKind::Fenced, "{err:?}");
    assert!(err.to_string().contains("fence token 5"), "{err}");
    assert!(!err.to_string().contains("DELETE FROM"), "{err}");
    fourth.flush().await.unwrap();
    drop(fourth);
    assert_eq!(h.count("item", "id = 'd'").await, 0, "nothing of it landed");
    assert_eq!(h.count("item", "1=1").await, 3);

    // Other scopes have fences of their own; a sync without a lease checks none.
    let mut other = open_fenced(&url, "staging", 1).await.unwrap();
    other.ensure_tables(&[item_spec()]).await.unwrap();
    other.commit(one("e", 1)).await.unwrap();
    other.flush().await.unwrap();
    drop(other);
    let mut cli = open(&url, SCHEMA, Compat::Xmbridge).await.unwrap();
    cli.ensure_tables(&[item_spec()]).await.unwrap();
    cli.commit(one("f", 0)).await.unwrap();
    cli.flush().await.unwrap();
    assert_eq!(h.count("item", "1=1").await, 5);
    assert_eq!(writer(&h).await, None);
}

/// Concurrent commits (a survey's intermediate ones) all land and are each counted once (by
/// `commit`, `settle` or `flush`); a commit without the flag starts only after them, so every
/// row before it is in when it returns and its cursor is the one that stays. PostgreSQL applies
/// them on connections of their own.
async fn concurrent_commits(mut h: H) {
    h.dest.ensure_tables(&[item_spec()]).await.unwrap();
    let mut stats = h
        .dest
        .commit(commit_of(
            T0,
            vec![upserts("item", vec![item("a", "s1", "first", 0)])],
        ))
        .await
        .unwrap();
    let rows = |k: usize| -> Vec<Vec<Value>> {
        (0..2000)
            .map(|i| item(&format!("k{k}-{i:04}"), "s1", "x", i))
            .collect()
    };
    for k in 0..6 {
        let c = Commit {
            synced_at_ms: T0,
            batches: vec![upserts("item", rows(k))],
            cursors: vec![("s".into(), json!({"token": "old"}))],
            concurrent: true,
            ..Default::default()
        };
        stats.add(h.dest.commit(c).await.unwrap());
    }
    let last = Commit {
        synced_at_ms: T0,
        batches: vec![upserts("item", vec![item("z", "s1", "last", 1)])],
        cursors: vec![("s".into(), json!({"token": "new"}))],
        ..Default::default()
    };
    stats.add(h.dest.commit(last).await.unwrap());
    if h.is_pg() {
        // SQLite holds its group open until `flush`; PostgreSQL committed each one.
        assert_eq!(h.count("item", "1=1").await, 12_002);
        let sessions = h
            .rows(
                "SELECT CAST(count(*) AS TEXT) FROM pg_stat_activity \
                 WHERE datname = current_database() AND application_name = 'xmbridge'",
            )
            .await;
        // One or two more for the concurrent commits: a second is opened only when a commit
        // finds the first still busy.
        assert!(
            matches!(sessions[0][0].as_deref(), Some("2" | "3")),
            "connections: {:?}",
            sessions[0][0]
        );
    }
    stats.add(h.dest.settle().await.unwrap());
    stats.add(h.dest.flush().await.unwrap());
    assert_eq!(stat(&stats, "item"), (12_002, 0, 0));
    assert_eq!(
        h.dest.cursor("s").await.unwrap(),
        Some(json!({"token": "new"}))
    );
    assert_eq!(h.count("item", "1=1").await, 12_002);
}

/// A concurrent commit that fails changes nothing, and its failure is reported once: by
/// `commit` where it is applied at once (SQLite), by the next `settle` where it was still being
/// applied (PostgreSQL). Commits after it work.
async fn concurrent_commit_failure(mut h: H) {
    h.dest.ensure_tables(&[item_spec()]).await.unwrap();
    h.commit(commit_of(
        T0,
        vec![upserts("item", vec![item("a", "s1", "first", 0)])],
    ))
    .await
    .unwrap();
    let mut bad = item("b", "s1", "bad", 0);
    bad[3] = Value::Text("not a number".into());
    let failing = Commit {
        synced_at_ms: T0,
        batches: vec![upserts("item", vec![item("c", "s1", "fine", 1), bad])],
        concurrent: true,
        ..Default::default()
    };
    let committed = h.dest.commit(failing).await;
    let settled = h.dest.settle().await;
    let err = if h.is_pg() {
        assert!(committed.is_ok(), "applied on the second connection");
        settled.unwrap_err()
    } else {
        assert!(settled.is_ok());
        committed.unwrap_err()
    };
    assert!(err.to_string().contains(&h.shown("item")), "{err}");
    assert_eq!(h.count("item", "1=1").await, 1, "nothing of it landed");
    let after = Commit {
        synced_at_ms: T0,
        batches: vec![upserts("item", vec![item("d", "s1", "after", 2)])],
        concurrent: true,
        ..Default::default()
    };
    let mut stats = h.dest.commit(after).await.unwrap();
    stats.add(h.dest.flush().await.unwrap());
    assert_eq!(stat(&stats, "item"), (1, 0, 0));
    assert_eq!(h.count("item", "1=1").await, 2);
}

macro_rules! both {
    ($case:ident, $compat:expr) => {
        mod $case {
            use super::*;
            #[tokio::test]
            async fn sqlite() {
                super::$case(super::sqlite($compat).await).await;
            }
            #[tokio::test]
            async fn postgres() {
                if let Some(h) = super::postgres($compat).await {
                    super::$case(h).await;
                }
            }
        }
    };
    ($case:ident) => {
        both!($case, Compat::Xmbridge);
    };
}

both!(create_catalog);
both!(upsert_counts);
both!(fresh_batches);
both!(delete_where);
both!(replace_keeps_unchanged_rows);
both!(replace_text_groups);
both!(keys);
both!(mark_unseen_with_scope);
both!(cursor_round_trip_and_atomicity);
both!(schema_evolution);
both!(type_conflict);
both!(dropped_table);
both!(ensure_reports_created_tables);
both!(unreadable_cursor);
both!(hostile_identifiers);
both!(values_round_trip);
both!(fivetran_compat, Compat::Fivetran);
both!(large_batch);
both!(bad_row_after_megabytes);
both!(filter_indexes);
both!(first_load_builds_indexes);
both!(one_writer);
both!(fencing);
both!(concurrent_commits);
both!(concurrent_commit_failure);
both!(key_made_in_another_order);

/// A table whose key was made in another order than its spec's (`survey_embedded_data` made
/// before its key led with `response_id`: docs/destinations.md, "Indexes") keeps that key and
/// its `response_id` index, and a commit that replaces a response's rows works on it as on a
/// table made now: conflicts are found by the key's columns, not their order.
async fn key_made_in_another_order(mut h: H) {
    let spec = |key: [&str; 3]| TableSpec {
        name: "embedded".into(),
        columns: ["import_id", "key", "response_id", "value"]
            .into_iter()
            .map(|c| col(c, ColumnType::Text))
            .collect(),
        primary_key: key.into_iter().map(str::to_string).collect(),
        soft_delete: false,
        filter_columns: vec!["response_id".into()],
        key_implies: None,
    };
    let row = |k: &str, r: &str, v: &str| -> Vec<Value> {
        [k, k, r, v]
            .into_iter()
            .map(|x| Value::Text(x.into()))
            .collect()
    };
    h.dest
        .ensure_tables(&[spec(["import_id", "key", "response_id"])])
        .await
        .unwrap();
    h.commit(commit_of(
        T0,
        vec![upserts(
            "embedded",
            vec![
                row("a", "R_1", "1"),
                row("b", "R_1", "2"),
                row("a", "R_2", "3"),
            ],
        )],
    ))
    .await
    .unwrap();
    h.close();
    h.dest = open(&h.url, SCHEMA, h.compat).await.unwrap();
    h.dest
        .ensure_tables(&[spec(["response_id", "import_id", "key"])])
        .await
        .unwrap();
    // R_1 rewritten (a changed, b gone, c new), R_2 left alone, R_3 new.
    let mut batch = upserts(
        "embedded",
        vec![
            row("a", "R_1", "9"),
            row("c", "R_1", "4"),
            row("a", "R_3", "5"),
        ],
    );
    batch.delete_where = vec![(
        "response_id".into(),
        vec![Value::Text("R_1".into()), Value::Text("R_3".into())],
    )];
    h.commit(commit_of(T0, vec![batch])).await.unwrap();
    let stored = h
        .rows(&format!(
            "SELECT key, response_id, value FROM {} ORDER BY response_id, key",
            h.t("embedded")
        ))
        .await;
    let expected: Vec<Vec<Option<String>>> = [
        ["a", "R_1", "9"],
        ["c", "R_1", "4"],
        ["a", "R_2", "3"],
        ["a", "R_3", "5"],
    ]
    .iter()
    .map(|r| r.iter().map(|x| Some(x.to_string())).collect())
    .collect();
    assert_eq!(stored, expected);
    let (key_sql, index_sql) = if h.is_pg() {
        (
            format!(
                "SELECT pg_get_constraintdef(oid) FROM pg_constraint \
                 WHERE conrelid = '{SCHEMA}.embedded'::regclass AND contype = 'p'"
            ),
            format!(
                "SELECT indexname::text FROM pg_indexes \
                 WHERE schemaname = '{SCHEMA}' AND indexname = 'embedded__response_id_idx'"
            ),
        )
    } else {
        (
            format!(
                "SELECT group_concat(name, ', ') FROM \
                 (SELECT name FROM pragma_index_info('{SCHEMA}_embedded__pkey') ORDER BY seqno)"
            ),
            format!(
                "SELECT name FROM pragma_index_list('{SCHEMA}_embedded') \
                 WHERE name = '{SCHEMA}_embedded__response_id_idx'"
            ),
        )
    };
    let key = h.rows(&key_sql).await;
    assert!(
        matches!(key[0][0].as_deref(), Some(k) if k.contains("import_id, key, response_id")),
        "the key kept its order: {key:?}"
    );
    assert_eq!(
        h.rows(&index_sql).await.len(),
        1,
        "the response_id index stays"
    );
}

/// A PostgreSQL destination (`None` when `XMBRIDGE_TEST_PG` is unset) with the table `item`
/// made and `rows` committed in it.
async fn postgres_with_items(rows: Vec<Vec<Value>>) -> Option<H> {
    let mut h = postgres(Compat::Xmbridge).await?;
    h.dest.ensure_tables(&[item_spec()]).await.unwrap();
    h.commit(commit_of(T0, vec![upserts("item", rows)]))
        .await
        .unwrap();
    Some(h)
}

/// A session of its own (PostgreSQL) that began a transaction and ran `lock` in it: what that
/// locks stays locked until the session ends its transaction.
async fn session_holding(h: &H, lock: &str) -> tokio_postgres::Client {
    let locker = h._db.as_ref().unwrap().client().await;
    locker
        .batch_execute(&format!("BEGIN; {lock}"))
        .await
        .unwrap();
    locker
}

/// A session of its own holding the lock of `item`'s row `id` (PostgreSQL) until it ends its
/// transaction: a commit that writes the row waits on the server meanwhile.
async fn lock_item(h: &H, id: &str) -> tokio_postgres::Client {
    let lock = format!("SELECT 1 FROM {} WHERE id = '{id}' FOR UPDATE", h.t("item"));
    session_holding(h, &lock).await
}

/// On PostgreSQL two concurrent commits are in flight at once, each on a connection of its own,
/// and the next one waits only for the older of them. Here row locks that other sessions hold
/// keep commits on the server: while the first is held, the second is applied beside it and
/// `commit` returns at once; once the first is let go, the third lands although the second is
/// still held. Until 2026-12-06 the second commit of a pair was applied while the caller
/// waited, so `commit` of a held second one did not return until its lock went.
#[tokio::test]
async fn postgres_a_held_commit_does_not_hold_back_the_next() {
    use std::time::Duration;
    let Some(mut h) = postgres_with_items(vec![
        item("first", "s1", "old", 0),
        item("second", "s1", "old", 0),
    ])
    .await
    else {
        return;
    };
    let (first_lock, second_lock) = (lock_item(&h, "first").await, lock_item(&h, "second").await);
    let concurrent = |rows: Vec<Vec<Value>>| Commit {
        synced_at_ms: T0,
        batches: vec![upserts("item", rows)],
        cursors: vec![("s".into(), json!({"token": "old"}))],
        concurrent: true,
        ..Default::default()
    };
    let soon = Duration::from_secs(20);
    let mut stats = CommitStats::default();
    for held in ["first", "second"] {
        let c = concurrent(vec![item(held, "s1", "new", 1)]);
        let returned = tokio::time::timeout(soon, h.dest.commit(c))
            .await
            .unwrap_or_else(|_| panic!("commit of {held} did not return while it is held"));
        stats.add(returned.unwrap());
    }
    first_lock.batch_execute("ROLLBACK").await.unwrap();
    let third: Vec<Vec<Value>> = (0..500)
        .map(|i| item(&format!("c{i:03}"), "s1", "x", i))
        .collect();
    let returned = tokio::time::timeout(soon, h.dest.commit(concurrent(third)))
        .await
        .expect("the third commit waited for the held second one");
    stats.add(returned.unwrap());
    let started = std::time::Instant::now();
    while h.count("item", "id LIKE 'c%'").await < 500 {
        assert!(started.elapsed() < soon, "the third commit did not land");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(h.count("item", "name = 'new'").await, 1, "only the first");
    assert_eq!(h.count("item", "id = 'second' AND name = 'old'").await, 1);
    second_lock.batch_execute("ROLLBACK").await.unwrap();
    stats.add(h.dest.settle().await.unwrap());
    stats.add(h.dest.flush().await.unwrap());
    assert_eq!(stat(&stats, "item"), (500, 2, 0));
    assert_eq!(h.count("item", "name = 'new'").await, 2);
    assert_eq!(h.count("item", "1=1").await, 502);
}

/// On PostgreSQL, tables that end a first load together build their keys side by side: the
/// largest on the first connection, the others on a second. Here another session holds a lock
/// on the largest table, so its key cannot be built; the two small tables still get their keys
/// and statistics meanwhile, and once the lock goes the flush builds the largest too. Built one
/// after another, largest first, the small tables waited for the lock.
#[tokio::test]
async fn postgres_small_tables_build_beside_the_largest() {
    use std::time::Duration;
    let Some(mut h) = postgres(Compat::Xmbridge).await else {
        return;
    };
    let named = |name: &str| TableSpec {
        name: name.into(),
        ..item_spec()
    };
    let specs = [named("big"), named("small_a"), named("small_b")];
    h.dest.ensure_tables(&specs).await.unwrap();
    let fresh = |table: &str, n: usize| TableBatch {
        fresh: true,
        ..upserts(
            table,
            (0..n)
                .map(|i| item(&format!("{table}-{i:05}"), "s1", "x", i as i64))
                .collect(),
        )
    };
    h.dest
        .commit(commit_of(
            T0,
            vec![
                fresh("big", 20_000),
                fresh("small_a", 10),
                fresh("small_b", 10),
            ],
        ))
        .await
        .unwrap();
    let lock = format!("LOCK TABLE {} IN ACCESS SHARE MODE", h.t("big"));
    let locker = session_holding(&h, &lock).await;
    let keyed = |table: &'static str| {
        format!(
            "SELECT count(*)::text FROM pg_constraint \
             WHERE conrelid = '{SCHEMA}.{table}'::regclass AND contype = 'p'"
        )
    };
    let analyzed = |table: &'static str| {
        format!(
            "SELECT count(*)::text FROM pg_stats WHERE schemaname = '{SCHEMA}' \
             AND tablename = '{table}' AND attname = 'id'"
        )
    };
    // A session of its own: `h` is busy flushing meanwhile.
    let probe = h._db.as_ref().unwrap().client().await;
    let count = |sql: String| {
        let probe = &probe;
        async move {
            probe
                .query_one(&sql, &[])
                .await
                .unwrap()
                .get::<_, String>(0)
        }
    };
    let watch = async {
        let started = std::time::Instant::now();
        let mut seen = false;
        while started.elapsed() < Duration::from_secs(20) {
            let mut done = true;
            for table in ["small_a", "small_b"] {
                done &= count(keyed(table)).await == "1" && count(analyzed(table)).await == "1";
            }
            if done {
                seen = count(keyed("big")).await == "0";
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        locker.batch_execute("ROLLBACK").await.unwrap();
        seen
    };
    let (flushed, built_beside) = tokio::join!(h.dest.flush(), watch);
    flushed.unwrap();
    assert!(
        built_beside,
        "the small tables' keys and statistics were not built while the largest waited"
    );
    for table in ["big", "small_a", "small_b"] {
        assert_eq!(count(keyed(table)).await, "1", "{table} has its key");
        assert_eq!(count(analyzed(table)).await, "1", "{table} was analyzed");
    }
    assert_eq!(h.count("big", "1=1").await, 20_000);
}

/// On PostgreSQL a later run's claim ends the sessions of the earlier run of its scope, which
/// would otherwise keep the schema's lock (a process frozen between commits) or the fence row
/// (frozen inside a commit) until it wakes: the later run opens in seconds, the earlier one
/// cannot write again, and runs of other scopes are left alone.
#[tokio::test]
async fn postgres_a_later_claim_ends_the_earlier_runs_sessions() {
    let Some(mut h) = postgres(Compat::Xmbridge).await else {
        return;
    };
    let url = h.url.clone();
    h.close();
    let one = |id: &str| commit_of(T0, vec![upserts("item", vec![item(id, "s1", "x", 0)])]);
    // Frozen between commits: holds the schema lock.
    let mut frozen = open_fenced(&url, "prod", 1).await.unwrap();
    frozen.ensure_tables(&[item_spec()]).await.unwrap();
    frozen.commit(one("a")).await.unwrap();
    let started = std::time::Instant::now();
    let mut later = open_fenced(&url, "prod", 2).await.unwrap();
    assert!(
        started.elapsed() < std::time::Duration::from_secs(4),
        "opened without waiting out the lock ({:?})",
        started.elapsed()
    );
    later.ensure_tables(&[item_spec()]).await.unwrap();
    later.commit(one("b")).await.unwrap();
    assert!(frozen.commit(one("late")).await.is_err());
    drop(frozen);
    drop(later);

    // Frozen inside a commit: a session named as run 3's holds the fence row in an open
    // transaction (what run 3's commit does first). A session of another scope stays.
    let mut names = Vec::new();
    for (scope, token) in [("prod", 3), ("staging", 1)] {
        let mut probe = open_fenced(&url, scope, token).await.unwrap();
        probe.ensure_tables(&[item_spec()]).await.unwrap();
        let rows = h
            .rows(&format!(
                "SELECT application_name FROM pg_stat_activity WHERE application_name LIKE 'xmbridge fence % {token}' AND datname = current_database()"
            ))
            .await;
        names.push(rows[0][0].clone().unwrap());
    }
    let (run3, other) = (names[0].clone(), names[1].clone());
    let holder = h._db.as_ref().unwrap().client().await;
    holder
        .execute("SELECT set_config('application_name', $1, false)", &[&run3])
        .await
        .unwrap();
    holder
        .batch_execute(
            "BEGIN; SELECT token FROM qualtrics._xmbridge_fence WHERE scope = 'prod' FOR SHARE",
        )
        .await
        .unwrap();
    let bystander = h._db.as_ref().unwrap().client().await;
    bystander
        .execute(
            "SELECT set_config('application_name', $1, false)",
            &[&other],
        )
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let mut fourth = open_fenced(&url, "prod", 4).await.unwrap();
    assert!(
        started.elapsed() < std::time::Duration::from_secs(6),
        "{:?}",
        started.elapsed()
    );
    fourth.ensure_tables(&[item_spec()]).await.unwrap();
    fourth.commit(one("c")).await.unwrap();
    assert!(holder.batch_execute("SELECT 1").await.is_err(), "ended");
    bystander.batch_execute("SELECT 1").await.unwrap();
    assert_eq!(
        h.rows("SELECT CAST(token AS TEXT) FROM qualtrics._xmbridge_fence WHERE scope = 'prod'")
            .await[0][0]
            .as_deref(),
        Some("4")
    );
}

/// PostgreSQL leaves a replaced group that equals the table's alone: not rewritten, not even
/// locked by the merge (its rows' `xmax` stays 0), while a changed group is written: one with a
/// value changed (also NULL to "" and back), one that lost a row, one that gained a row.
#[tokio::test]
async fn postgres_unchanged_groups_are_not_touched() {
    let Some(mut h) = postgres(Compat::Xmbridge).await else {
        return;
    };
    h.dest.ensure_tables(&[answer_spec()]).await.unwrap();
    let rows = |b: &str| {
        vec![
            answer("r1:1", "r1", Some("a"), None),
            answer("r1:2", "r1", Some("b"), Some("")),
            answer(
                "r1:3",
                "r1",
                Some("é (\"q\"), \\ \t\r\n\u{b}\u{c}"),
                Some("ü"),
            ),
            // Each character the server quotes for, alone.
            answer("r1:4", "r1", Some("a b"), Some("a\tb")),
            answer("r1:5", "r1", Some("a\nb"), Some("a\u{b}b")),
            answer("r1:6", "r1", Some("a\u{c}b"), Some("a\rb")),
            answer("r1:7", "r1", Some("a(b"), Some("a)b")),
            answer("r1:8", "r1", Some("a,b"), Some("a\\b")),
            answer("r1:9", "r1", Some("a\"b"), Some("a\u{a0}b")),
            answer("r2:1", "r2", Some(b), None),
            // r3 loses a row, r4 gains one, r5's value goes from NULL to "", r6's back.
            answer("r3:1", "r3", Some("kept"), None),
            answer("r4:1", "r4", Some("kept"), None),
            answer("r5:1", "r5", Some("x"), (b == "new").then_some("")),
            answer("r6:1", "r6", Some("x"), (b == "old").then_some("")),
        ]
    };
    let mut old = rows("old");
    old.push(answer("r3:2", "r3", Some("gone"), None));
    h.commit(commit_of(T0, vec![upserts("answer", old)]))
        .await
        .unwrap();
    let mut new = rows("new");
    new.push(answer("r4:2", "r4", Some("added"), None));
    let sql = format!(
        "SELECT id, xmin::text, xmax::text FROM {} ORDER BY id",
        h.t("answer")
    );
    let before = h.rows(&sql).await;
    let s = h
        .commit(commit_of(
            T0 + 1,
            vec![TableBatch {
                table: "answer".into(),
                upserts: new,
                fresh: false,
                delete_where: vec![(
                    "response_id".into(),
                    ["r1", "r2", "r3", "r4", "r5", "r6"]
                        .map(|g| Value::Text(g.into()))
                        .to_vec(),
                )],
            }],
        ))
        .await
        .unwrap();
    assert_eq!(stat(&s, "answer"), (1, 3, 1), "inserted, updated, deleted");
    let changed = format!(
        "SELECT id, a, b FROM {} WHERE response_id IN ('r3', 'r4', 'r5', 'r6') ORDER BY id",
        h.t("answer")
    );
    let text = |v: &[&str]| v.iter().map(|s| Some(s.to_string())).collect::<Vec<_>>();
    let mut r5 = text(&["r5:1", "x"]);
    r5.push(Some(String::new()));
    assert_eq!(
        h.rows(&changed).await,
        vec![
            [text(&["r3:1", "kept"]), vec![None]].concat(),
            [text(&["r4:1", "kept"]), vec![None]].concat(),
            [text(&["r4:2", "added"]), vec![None]].concat(),
            r5,
            [text(&["r6:1", "x"]), vec![None]].concat(),
        ]
    );
    let after = h.rows(&sql).await;
    assert_eq!(after[..9], before[..9], "r1's rows untouched: {after:?}");
    assert_eq!(after[0][2].as_deref(), Some("0"));
    assert_ne!(after[9][1], before[9][1], "r2's row rewritten");
}

/// `answer` with its key led by its response (`key_implies`, as `question_response`'s
/// `<p>_id`): on PostgreSQL the key compares bytewise and `response_id` gets no index of its
/// own; a group's rows are read, rewritten and deleted through the key's range. The sessions
/// plan with `enable_seqscan = off`, so a lookup the key could not serve would still scan the
/// table and show in `pg_stat_user_tables`. A group value holding `:` is not taken for the
/// prefix of another group's keys, and a key not led by its group is refused. A table made
/// before (a key in the database's collation) keeps its `response_id` index and its old lookups.
#[tokio::test]
async fn postgres_groups_found_through_the_key() {
    let Some(mut h) = postgres(Compat::Xmbridge).await else {
        return;
    };
    let spec = TableSpec {
        key_implies: Some("response_id".into()),
        filter_columns: vec!["response_id".into()],
        ..answer_spec()
    };
    h.dest
        .ensure_tables(std::slice::from_ref(&spec))
        .await
        .unwrap();
    let indexes = |table: &str| {
        format!(
            "SELECT indexname::text FROM pg_indexes WHERE schemaname = '{SCHEMA}' \
             AND tablename = '{table}' ORDER BY 1"
        )
    };
    let one = |s: &str| vec![vec![Some(s.to_string())]];
    assert_eq!(h.rows(&indexes("answer")).await, one("answer_pkey"));
    let collation = h
        .rows(&format!(
            "SELECT collation_name::text FROM information_schema.columns \
             WHERE table_schema = '{SCHEMA}' AND table_name = 'answer' AND column_name = 'id'"
        ))
        .await;
    assert_eq!(collation, one("C"));
    h.commit(commit_of(
        T0,
        vec![upserts(
            "answer",
            vec![
                answer("g:1", "g", Some("a"), None),
                answer("g:2", "g", Some("b"), None),
                answer("g:x:1", "g:x", Some("c"), None),
                answer("h:1", "h", Some("d"), None),
            ],
        )],
    ))
    .await
    .unwrap();

    // Reopened so that its sessions plan without sequential scans.
    let db = h.rows("SELECT current_database()::text").await[0][0]
        .clone()
        .unwrap();
    h.rows(&format!(
        "ALTER DATABASE {} SET enable_seqscan = off",
        quote_ident(&db)
    ))
    .await;
    h.close();
    h.dest = open(&h.url, SCHEMA, Compat::Xmbridge).await.unwrap();
    h.dest
        .ensure_tables(std::slice::from_ref(&spec))
        .await
        .unwrap();
    // A backend reports its table statistics at the end of a transaction at most once a second:
    // a commit of a cursor alone, a second after the last, makes it report what came before.
    let scans = async |h: &mut H| {
        tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
        let mut c = commit_of(T0, vec![]);
        c.cursors = vec![("flush".into(), json!(1))];
        h.commit(c).await.unwrap();
        let row = h
            .rows(&format!(
                "SELECT seq_scan::text, idx_scan::text FROM pg_stat_user_tables \
                 WHERE relid = '{SCHEMA}.answer'::regclass"
            ))
            .await;
        let n = |i: usize| row[0][i].as_deref().unwrap().parse::<i64>().unwrap();
        (n(0), n(1))
    };
    let (seq_before, idx_before) = scans(&mut h).await;

    // Group g rewritten: g:1 changes, g:2 goes; g:x's row (a key that starts with "g:") stays.
    let s = h
        .commit(commit_of(
            T0 + 1,
            vec![TableBatch {
                table: "answer".into(),
                upserts: vec![answer("g:1", "g", Some("a2"), None)],
                fresh: false,
                delete_where: vec![("response_id".into(), vec![Value::Text("g".into())])],
            }],
        ))
        .await
        .unwrap();
    assert_eq!(stat(&s, "answer"), (0, 1, 1), "inserted, updated, deleted");
    // Group g:x deleted outright (as a response gone upstream): g's row stays.
    let s = h
        .commit(commit_of(
            T0 + 2,
            vec![TableBatch {
                table: "answer".into(),
                delete_where: vec![("response_id".into(), vec![Value::Text("g:x".into())])],
                ..Default::default()
            }],
        ))
        .await
        .unwrap();
    assert_eq!(stat(&s, "answer"), (0, 0, 1));
    // Counted before this test's own session reads the table (with a scan).
    let (seq_after, idx_after) = scans(&mut h).await;
    assert_eq!(seq_after, seq_before, "a sequential scan of the table");
    assert!(idx_after > idx_before, "{idx_before} -> {idx_after}");
    let all = format!("SELECT id, a FROM {} ORDER BY id", h.t("answer"));
    let pair = |a: &str, b: &str| vec![Some(a.to_string()), Some(b.to_string())];
    assert_eq!(
        h.rows(&all).await,
        vec![pair("g:1", "a2"), pair("h:1", "d")]
    );

    // A key not led by its group is refused, and nothing of its commit is written.
    let err = h
        .commit(commit_of(
            T0 + 3,
            vec![upserts(
                "answer",
                vec![
                    answer("k:1", "k", Some("e"), None),
                    answer("k1", "k", Some("e"), None),
                ],
            )],
        ))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, DestError::KeyNotLed { key, value, .. } if key == "k1" && value == "k"),
        "{err:?}"
    );
    assert_eq!(err.kind(), DestErrorKind::Usage);
    assert_eq!(h.count("answer", "1=1").await, 2);

    // A table made before: its key in the database's collation.
    h.rows(&format!(
        "CREATE TABLE {SCHEMA}.old_answer (id text PRIMARY KEY, response_id text, a text, b text, \
         _xmbridge_synced timestamptz)"
    ))
    .await;
    let old = TableSpec {
        name: "old_answer".into(),
        ..spec.clone()
    };
    h.dest
        .ensure_tables(std::slice::from_ref(&old))
        .await
        .unwrap();
    assert_eq!(
        h.rows(&indexes("old_answer")).await,
        vec![
            vec![Some("old_answer__response_id_idx".into())],
            vec![Some("old_answer_pkey".into())],
        ]
    );
    for (at, value) in [(T0 + 4, "old"), (T0 + 5, "new")] {
        let s = h
            .commit(commit_of(
                at,
                vec![TableBatch {
                    table: "old_answer".into(),
                    upserts: vec![answer("x1", "x", Some(value), None)],
                    fresh: false,
                    delete_where: vec![("response_id".into(), vec![Value::Text("x".into())])],
                }],
            ))
            .await
            .unwrap();
        let expected = if value == "old" { (1, 0, 0) } else { (0, 1, 0) };
        assert_eq!(stat(&s, "old_answer"), expected);
    }
    assert_eq!(h.count("old_answer", "a = 'new'").await, 1);
}

/// A commit without the concurrent flag starts only once the concurrent commit before it is in,
/// even when that one is held up (here by a row lock another session holds for half a second).
#[tokio::test]
async fn postgres_commit_waits_for_the_concurrent_one() {
    let Some(mut h) = postgres_with_items(vec![item("held", "s1", "before", 0)]).await else {
        return;
    };
    let locker = lock_item(&h, "held").await;
    let held = Commit {
        synced_at_ms: T0,
        batches: vec![upserts(
            "item",
            vec![item("held", "s1", "after", 1), item("x", "s1", "x", 2)],
        )],
        concurrent: true,
        ..Default::default()
    };
    let mut stats = h.dest.commit(held).await.unwrap();
    let released = tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        locker.batch_execute("COMMIT").await.unwrap();
        std::time::Instant::now()
    });
    let last = Commit {
        synced_at_ms: T0,
        batches: vec![upserts("item", vec![item("y", "s1", "y", 3)])],
        cursors: vec![("s".into(), json!("new"))],
        ..Default::default()
    };
    stats.add(h.dest.commit(last).await.unwrap());
    let returned = std::time::Instant::now();
    assert!(
        returned >= released.await.unwrap(),
        "returned before the lock was released"
    );
    assert_eq!(
        h.count("item", "name = 'after' OR id IN ('x', 'y')").await,
        3
    );
    assert_eq!(stat(&stats, "item"), (2, 1, 0));
}

/// A first load killed after its indexes were dropped (the group with the drop committed, the
/// rest not) leaves a table without indexes, perhaps holding a key twice; the next run's
/// `ensure_tables` builds them again, keeping the last row of a repeated key.
#[tokio::test]
async fn sqlite_indexes_come_back_after_a_killed_first_load() {
    let mut h = sqlite(Compat::Xmbridge).await;
    h.dest.ensure_tables(&[item_spec()]).await.unwrap();
    let table = format!("{SCHEMA}_item");
    let key = xmbridge_destinations::sqlite::key_index_name(&table);
    h.exec(&format!("DROP INDEX {}", quote_ident(&key))).await;
    h.exec(&format!(
        "INSERT INTO {t} (id, survey_id, name, n, _xmbridge_synced) VALUES \
         ('a', 's1', 'old', 1, '2026-01-01T00:00:00.000Z'), \
         ('a', 's1', 'new', 2, '2026-01-01T00:00:00.000Z'), \
         ('b', 's1', 'B', 3, '2026-01-01T00:00:00.000Z')",
        t = h.t("item")
    ))
    .await;
    drop(h.dest);
    h.dest = open(&h.url, SCHEMA, Compat::Xmbridge).await.unwrap();
    h.dest.ensure_tables(&[item_spec()]).await.unwrap();
    let rows = h
        .rows(&format!("SELECT id, name FROM {} ORDER BY id", h.t("item")))
        .await;
    let s = |x: &str| Some(x.to_string());
    assert_eq!(rows, vec![vec![s("a"), s("new")], vec![s("b"), s("B")]]);
    let found = h
        .rows(&format!(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND name = '{key}'"
        ))
        .await;
    assert_eq!(found.len(), 1, "the key index is back");
    // Upserts merge on it again.
    let st = h
        .commit(commit_of(
            T0,
            vec![upserts("item", vec![item("a", "s1", "A", 9)])],
        ))
        .await
        .unwrap();
    assert_eq!(stat(&st, "item"), (0, 1, 0));
}

/// SQLite groups commits into one transaction until `flush` (or the group's size or age): a
/// second connection sees nothing of an open group, everything after; a failed commit in the
/// middle takes only itself back. The first commit of a session is durable at once, so a run
/// that is always stopped early still advances.
#[tokio::test]
async fn sqlite_group_commit_is_durable_at_flush_and_keeps_earlier_commits() {
    let mut h = sqlite(Compat::Xmbridge).await;
    h.dest.ensure_tables(&[item_spec()]).await.unwrap();
    h.dest
        .commit(commit_of(
            T0,
            vec![upserts("item", vec![item("a", "s1", "A", 1)])],
        ))
        .await
        .unwrap();
    assert_eq!(
        h.count("item", "1=1").await,
        1,
        "the first commit is durable at once"
    );
    h.dest
        .commit(commit_of(
            T0,
            vec![upserts("item", vec![item("b", "s1", "B", 2)])],
        ))
        .await
        .unwrap();
    assert_eq!(h.count("item", "1=1").await, 1, "not visible before flush");
    // A commit naming an unknown column fails alone; "b" stays and is committed.
    let bad = commit_of(
        T0,
        vec![TableBatch {
            delete_where: vec![("nope".into(), vec![Value::Text("x".into())])],
            ..upserts("item", vec![item("x", "s1", "X", 2)])
        }],
    );
    assert!(h.dest.commit(bad).await.is_err());
    assert_eq!(
        h.count("item", "1=1").await,
        2,
        "the earlier commit is kept"
    );
    h.dest
        .commit(commit_of(
            T0,
            vec![upserts("item", vec![item("c", "s1", "C", 3)])],
        ))
        .await
        .unwrap();
    h.dest.flush().await.unwrap();
    let rows = h
        .rows(&format!("SELECT id FROM {} ORDER BY id", h.t("item")))
        .await;
    let ids: Vec<_> = rows
        .into_iter()
        .map(|r| r[0].clone().unwrap_or_default())
        .collect();
    assert_eq!(ids, vec!["a", "b", "c"]);
}

#[tokio::test]
async fn unreachable_and_unknown_destinations() {
    // A password given in the URL is taken out of it and never shown.
    let settings = DestinationSettings::resolve(
        "postgres://postgres:s3cret@127.0.0.1:1/db",
        None,
        &PgEnv::default(),
    )
    .unwrap()
    .settings;
    assert!(!settings.url().contains("s3cret"));
    let err = xmbridge_destinations::open(&settings, SCHEMA, Compat::Xmbridge, None)
        .await
        .err()
        .unwrap();
    let msg = err.to_string();
    eprintln!("{msg}");
    assert!(matches!(err, DestError::Connect { .. }), "{err:?}");
    assert!(msg.contains("127.0.0.1:1"), "{msg}");
    assert!(!msg.contains("s3cret"), "{msg}");

    let err = open("mysql://h/db", SCHEMA, Compat::Xmbridge)
        .await
        .err()
        .unwrap();
    let msg = err.to_string();
    assert!(
        msg.contains("sqlite:") && msg.contains("postgres://"),
        "{msg}"
    );

    let err = open(
        "sqlite:/nonexistent-dir-xmbridge/x.db",
        SCHEMA,
        Compat::Xmbridge,
    )
    .await
    .err()
    .unwrap();
    let msg = err.to_string();
    eprintln!("{msg}");
    assert!(msg.contains("/nonexistent-dir-xmbridge/x.db"), "{msg}");
}

#[tokio::test]
async fn sqlite_uses_wal_and_iso_text() {
    let h = sqlite(Compat::Xmbridge).await;
    let Raw::Sqlite(c) = &h.raw else {
        unreachable!()
    };
    let mode: String = c
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    assert!(h.dest.describe().starts_with("sqlite:"));
    assert!(h.dest.describe().contains("qualtrics_"));
}
