//! The destinations' common behaviour, checked through the [`Destination`] interface alone —
//! rows are read back with [`Destination::rows`], never with SQL — so every case runs on SQLite,
//! PostgreSQL and Delta Lake (on a local directory and on a local S3 server) alike. (`destinations.rs` holds the SQL destinations' own cases,
//! which look at indexes, locks and sessions.)

use crate::common::{col, stat, upserts};
use serde_json::json;
use xmbridge_destinations::delta::{DeltaDestination, DeltaOptions, S3Settings};
use xmbridge_destinations::{
    ColumnType, Commit, CommitStats, Compat, Destination, DestinationSettings, MarkUnseenDeleted,
    TableBatch, TableSpec, Value,
};
use xmbridge_test_kit::pg::TestDb;
use xmbridge_test_kit::s3::S3Server;

const T0: i64 = 1_700_000_000_000;

/// One destination under test and what keeps it alive.
struct D {
    dest: Box<dyn Destination>,
    url: String,
    /// A Delta destination on the local S3 server: opened with its settings, not by URL.
    s3: Option<(S3Server, S3Settings)>,
    _dir: Option<tempfile::TempDir>,
    _db: Option<TestDb>,
}

async fn open_url(url: &str) -> Box<dyn Destination> {
    let settings = DestinationSettings::from_parts(url, None).unwrap();
    xmbridge_destinations::open(&settings, "qualtrics", Compat::Xmbridge, None)
        .await
        .unwrap()
}

impl D {
    async fn sqlite() -> D {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite:{}", dir.path().join("d.db").display());
        D {
            dest: open_url(&url).await,
            url,
            s3: None,
            _dir: Some(dir),
            _db: None,
        }
    }

    async fn postgres() -> Option<D> {
        let db = TestDb::create("xmb_iface").await?;
        let url = db.url().to_string();
        Some(D {
            dest: open_url(&url).await,
            url,
            s3: None,
            _dir: None,
            _db: Some(db),
        })
    }

    /// Delta on a local S3 server (its own, with one bucket); `None` (after a skip line)
    /// without the Delta readers' environment, which holds the server.
    async fn delta_s3() -> Option<D> {
        let py = xmbridge_test_kit::lake::readers()?;
        let server = S3Server::start(&py);
        server.create_bucket("xmbridge-lake");
        let settings = S3Settings(server.settings());
        let url = "s3://xmbridge-lake/lake".to_string();
        Some(D {
            dest: open_s3(&url, &settings).await,
            url,
            s3: Some((server, settings)),
            _dir: None,
            _db: None,
        })
    }

    async fn delta() -> D {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("delta:{}", dir.path().join("lake").display());
        D {
            dest: open_url(&url).await,
            url,
            s3: None,
            _dir: Some(dir),
            _db: None,
        }
    }

    /// Closes the destination (its lock too) and opens it again, as the next run would.
    async fn reopen(&mut self, specs: &[TableSpec]) {
        // A failed commit's error was seen already; closing only gives the lock up.
        let _ = self.dest.close().await;
        self.dest = Box::new(Closed);
        self.dest = match &self.s3 {
            Some((_, settings)) => open_s3(&self.url, settings).await,
            None => open_url(&self.url).await,
        };
        self.dest.ensure_tables(specs).await.unwrap();
    }

    async fn rows(&mut self, table: &str) -> Vec<Vec<Value>> {
        self.dest.rows(table).await.unwrap()
    }
}

async fn open_s3(url: &str, settings: &S3Settings) -> Box<dyn Destination> {
    let opts = DeltaOptions {
        s3: settings.clone(),
        ..DeltaOptions::default()
    };
    Box::new(
        DeltaDestination::open(url, "qualtrics", Compat::Xmbridge, opts)
            .await
            .unwrap(),
    )
}

/// What [`D::reopen`] leaves for a moment in place of the destination.
struct Closed;

impl Destination for Closed {
    fn ensure_tables<'a>(
        &'a mut self,
        _: &'a [TableSpec],
    ) -> xmbridge_destinations::BoxFuture<
        'a,
        Result<xmbridge_destinations::Ensured, xmbridge_destinations::DestError>,
    > {
        unreachable!("closed")
    }
    fn cursor<'a>(
        &'a mut self,
        _: &'a str,
    ) -> xmbridge_destinations::BoxFuture<
        'a,
        Result<Option<serde_json::Value>, xmbridge_destinations::DestError>,
    > {
        unreachable!("closed")
    }
    fn commit(
        &mut self,
        _: Commit,
    ) -> xmbridge_destinations::BoxFuture<'_, Result<CommitStats, xmbridge_destinations::DestError>>
    {
        unreachable!("closed")
    }
    fn describe(&self) -> String {
        "closed".into()
    }
}

/// `item (id, survey_id, name, n)`, soft delete, filtered by survey.
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
        filter_columns: vec!["survey_id".into()],
        key_implies: None,
    }
}

fn item(id: &str, survey: &str, name: &str, n: i64) -> Vec<Value> {
    vec![t(id), t(survey), t(name), Value::Int(n)]
}

/// `answer (<p>_id, response_id, value)`, replaced per response.
fn answer_spec() -> TableSpec {
    TableSpec {
        name: "answer".into(),
        columns: vec![
            col("<p>_id", ColumnType::Text),
            col("response_id", ColumnType::Text),
            col("value", ColumnType::Text),
        ],
        primary_key: vec!["<p>_id".into()],
        soft_delete: false,
        filter_columns: vec!["response_id".into()],
        // As `question_response`'s: each key below is `<response_id>:…`. Delta then merges by
        // group (locally and on S3), PostgreSQL finds a group's rows through the key's range,
        // SQLite ignores it.
        key_implies: Some("response_id".into()),
    }
}

fn t(s: &str) -> Value {
    Value::Text(s.into())
}

fn ts(ms: i64) -> Value {
    Value::Timestamp(ms)
}

fn commit(at: i64, batches: Vec<TableBatch>) -> Commit {
    Commit {
        synced_at_ms: at,
        batches,
        ..Default::default()
    }
}

/// A stored row of `item`: its cells, `<p>_synced`, `<p>_deleted`.
fn stored_item(
    id: &str,
    survey: &str,
    name: &str,
    n: i64,
    synced: i64,
    deleted: bool,
) -> Vec<Value> {
    let mut r = item(id, survey, name, n);
    r.push(ts(synced));
    r.push(Value::Bool(deleted));
    r
}

async fn upserts_deletes_and_soft_deletes(mut d: D) {
    let specs = [item_spec(), answer_spec()];
    d.dest.ensure_tables(&specs).await.unwrap();
    // A first load (fresh batches), then made durable.
    let mut first = commit(
        T0,
        vec![
            TableBatch {
                fresh: true,
                ..upserts(
                    "item",
                    vec![
                        item("a", "S1", "A", 1),
                        item("b", "S1", "B", 2),
                        item("c", "S2", "C", 3),
                    ],
                )
            },
            TableBatch {
                fresh: true,
                ..upserts(
                    "answer",
                    vec![
                        vec![t("R1:a1"), t("R1"), t("x")],
                        vec![t("R1:a2"), t("R1"), t("y")],
                        vec![t("R2:b1"), t("R2"), t("z")],
                    ],
                )
            },
        ],
    );
    first.cursors = vec![("items".into(), json!({"page": 1}))];
    d.dest.commit(first).await.unwrap();
    d.dest.flush().await.unwrap();
    assert_eq!(
        d.rows("item").await,
        vec![
            stored_item("a", "S1", "A", 1, T0, false),
            stored_item("b", "S1", "B", 2, T0, false),
            stored_item("c", "S2", "C", 3, T0, false),
        ]
    );

    // An update, an insert; R1's answers replaced (a2 gone), R2's deleted.
    let s = d
        .dest
        .commit(commit(
            T0 + 10,
            vec![
                upserts(
                    "item",
                    vec![item("b", "S1", "B2", 20), item("d", "S1", "D", 4)],
                ),
                TableBatch {
                    table: "answer".into(),
                    upserts: vec![
                        vec![t("R1:a1"), t("R1"), t("x")],
                        vec![t("R1:a3"), t("R1"), t("w")],
                    ],
                    delete_where: vec![("response_id".into(), vec![t("R1"), t("R2")])],
                    fresh: false,
                },
            ],
        ))
        .await
        .unwrap();
    let s = {
        let mut s = s;
        s.add(d.dest.flush().await.unwrap());
        s
    };
    assert_eq!(stat(&s, "item"), (1, 1, 0));
    assert_eq!(
        stat(&s, "answer"),
        (1, 0, 2),
        "a3 new, a2 and b1 deleted, a1 unchanged"
    );
    assert_eq!(
        d.rows("answer").await,
        vec![
            // Unchanged: kept as it was, with its first sync's time.
            vec![t("R1:a1"), t("R1"), t("x"), ts(T0)],
            vec![t("R1:a3"), t("R1"), t("w"), ts(T0 + 10)],
        ]
    );

    // Soft delete within S1: a and d were not written by this sync.
    let mut mark = commit(
        T0 + 20,
        vec![upserts("item", vec![item("b", "S1", "B2", 20)])],
    );
    mark.mark_unseen_deleted = vec![MarkUnseenDeleted {
        table: "item".into(),
        scope: vec![("survey_id".into(), t("S1"))],
    }];
    let mut s = d.dest.commit(mark).await.unwrap();
    s.add(d.dest.flush().await.unwrap());
    assert_eq!(stat(&s, "item").0, 0);
    assert_eq!(
        d.rows("item").await,
        vec![
            stored_item("a", "S1", "A", 1, T0 + 20, true),
            stored_item("b", "S1", "B2", 20, T0 + 20, false),
            stored_item("c", "S2", "C", 3, T0, false),
            stored_item("d", "S1", "D", 4, T0 + 20, true),
        ]
    );
    // Reopened: the cursor committed with the rows.
    d.reopen(&specs).await;
    assert_eq!(
        d.dest.cursor("items").await.unwrap(),
        Some(json!({"page": 1}))
    );
}

async fn a_failed_commit_applies_nothing(mut d: D) {
    let specs = [item_spec()];
    d.dest.ensure_tables(&specs).await.unwrap();
    let mut c = commit(T0, vec![upserts("item", vec![item("a", "S1", "A", 1)])]);
    c.cursors = vec![("items".into(), json!(1))];
    d.dest.commit(c).await.unwrap();
    d.dest.flush().await.unwrap();
    // The second row has a text where the int goes: neither row, nor the cursor.
    let mut bad = commit(
        T0 + 1,
        vec![upserts(
            "item",
            vec![
                item("b", "S1", "B", 2),
                vec![t("c"), t("S1"), t("C"), t("not a number")],
            ],
        )],
    );
    bad.cursors = vec![("items".into(), json!(2))];
    let err = match d.dest.commit(bad).await {
        Ok(_) => d.dest.flush().await.unwrap_err(),
        Err(e) => e,
    };
    assert!(err.to_string().contains("\"n\""), "{err}");
    d.reopen(&specs).await;
    assert_eq!(
        d.rows("item").await,
        vec![stored_item("a", "S1", "A", 1, T0, false)]
    );
    assert_eq!(d.dest.cursor("items").await.unwrap(), Some(json!(1)));
}

async fn typed_values_round_trip(mut d: D) {
    let spec = TableSpec {
        name: "typed".into(),
        columns: vec![
            col("id", ColumnType::Text),
            col("at", ColumnType::Timestamp),
            col("ok", ColumnType::Bool),
            col("small", ColumnType::Int),
            col("big", ColumnType::BigInt),
            col("x", ColumnType::Float),
            col("doc", ColumnType::Json),
        ],
        primary_key: vec!["id".into()],
        soft_delete: false,
        filter_columns: vec![],
        key_implies: None,
    };
    d.dest
        .ensure_tables(std::slice::from_ref(&spec))
        .await
        .unwrap();
    let rows = vec![
        vec![
            t("1"),
            ts(-86_400_123),
            Value::Bool(true),
            Value::Int(i64::from(i32::MIN)),
            Value::Int(i64::MAX),
            Value::Float(-0.125),
            Value::Json("{\"a\":[1,2]}".into()),
        ],
        vec![
            t("2 — ünïcode ✓"),
            ts(253_402_300_799_999),
            Value::Bool(false),
            Value::Int(0),
            Value::Int(-1),
            Value::Float(1e300),
            Value::Json("[]".into()),
        ],
        vec![
            t(""),
            Value::Null,
            Value::Null,
            Value::Null,
            Value::Null,
            Value::Null,
            Value::Null,
        ],
    ];
    d.dest
        .commit(commit(T0, vec![upserts("typed", rows.clone())]))
        .await
        .unwrap();
    d.dest.flush().await.unwrap();
    let mut expected: Vec<Vec<Value>> = rows
        .into_iter()
        .map(|mut r| {
            r.push(ts(T0));
            r
        })
        .collect();
    // In key order: "" < "1" < "2 …".
    expected.rotate_right(1);
    assert_eq!(same_json(d.rows("typed").await), same_json(expected));
}

async fn schema_evolution_reads_null_for_older_rows(mut d: D) {
    d.dest.ensure_tables(&[item_spec()]).await.unwrap();
    d.dest
        .commit(commit(
            T0,
            vec![upserts("item", vec![item("a", "S1", "A", 1)])],
        ))
        .await
        .unwrap();
    let mut wider = item_spec();
    wider.add_column("extra", ColumnType::BigInt);
    let ensured = d
        .dest
        .ensure_tables(std::slice::from_ref(&wider))
        .await
        .unwrap();
    assert!(ensured.created.is_empty());
    let mut row = item("b", "S1", "B", 2);
    row.push(Value::Int(7));
    d.dest
        .commit(commit(T0, vec![upserts("item", vec![row])]))
        .await
        .unwrap();
    d.dest.flush().await.unwrap();
    let got: Vec<Value> = d
        .rows("item")
        .await
        .into_iter()
        .map(|r| r[4].clone())
        .collect();
    assert_eq!(got, vec![Value::Null, Value::Int(7)]);
}

/// JSON cells in one spelling: PostgreSQL's jsonb writes `{"a": [1, 2]}` for `{"a":[1,2]}`.
fn same_json(rows: Vec<Vec<Value>>) -> Vec<Vec<Value>> {
    rows.into_iter()
        .map(|r| {
            r.into_iter()
                .map(|v| match v {
                    Value::Json(s) => Value::Json(
                        serde_json::from_str::<serde_json::Value>(&s)
                            .unwrap()
                            .to_string()
                            .into(),
                    ),
                    other => other,
                })
                .collect()
        })
        .collect()
}

macro_rules! every {
    ($case:ident) => {
        mod $case {
            #[tokio::test]
            async fn sqlite() {
                super::$case(super::D::sqlite().await).await;
            }
            #[tokio::test]
            async fn postgres() {
                if let Some(d) = super::D::postgres().await {
                    super::$case(d).await;
                }
            }
            #[tokio::test]
            async fn delta() {
                super::$case(super::D::delta().await).await;
            }
            #[tokio::test]
            async fn delta_s3() {
                if let Some(d) = super::D::delta_s3().await {
                    super::$case(d).await;
                }
            }
        }
    };
}

every!(upserts_deletes_and_soft_deletes);
every!(a_failed_commit_applies_nothing);
every!(typed_values_round_trip);
every!(schema_evolution_reads_null_for_older_rows);
