//! End-to-end tests of the response export flow (docs/design/qualtrics-api.md §6.1–6.5) over real
//! HTTP.

use serde_json::{Value, json};
use std::io::Read;
use xmbridge_sim::qualtrics::responses::{Selection, for_each_response};
use xmbridge_sim::{SimConfig, SimHandle};

const DAY_MS: i64 = 86_400_000;

fn cfg() -> SimConfig {
    SimConfig {
        surveys: 2,
        responses: 150,
        export_delay_ms: 0,
        ..SimConfig::default()
    }
}

async fn start(cfg: SimConfig) -> SimHandle {
    xmbridge_test_kit::sim::qualtrics(cfg).await
}

struct Api {
    h: SimHandle,
    http: reqwest::Client,
    token: String,
}

impl Api {
    async fn new(cfg: SimConfig) -> Api {
        let token = cfg.admin_token();
        Api {
            h: start(cfg).await,
            http: reqwest::Client::new(),
            token,
        }
    }

    fn sid(&self, i: usize) -> String {
        self.h.sim.surveys[i].id.clone()
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        let r = self
            .http
            .get(format!("{}{path}", self.h.api_url()))
            .header("X-API-TOKEN", &self.token)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    async fn send(&self, method: reqwest::Method, path: &str, body: &Value) -> (u16, Value) {
        let r = self
            .http
            .request(method, format!("{}{path}", self.h.api_url()))
            .header("X-API-TOKEN", &self.token)
            .json(body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    async fn start_export(&self, sid: &str, body: Value) -> (u16, Value) {
        self.send(
            reqwest::Method::POST,
            &format!("/surveys/{sid}/export-responses"),
            &body,
        )
        .await
    }

    /// Polls until the job leaves `inProgress`; returns the final `result`.
    async fn wait(&self, sid: &str, pid: &str) -> Value {
        for _ in 0..500 {
            let (st, v) = self
                .get(&format!("/surveys/{sid}/export-responses/{pid}"))
                .await;
            assert_eq!(st, 200, "{v}");
            let r = v["result"].clone();
            if r["status"] != "inProgress" {
                return r;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        panic!("export {pid} never finished");
    }

    async fn download(&self, sid: &str, fid: &str) -> reqwest::Response {
        self.http
            .get(format!(
                "{}/surveys/{sid}/export-responses/{fid}/file",
                self.h.api_url()
            ))
            .header("X-API-TOKEN", &self.token)
            .send()
            .await
            .unwrap()
    }

    /// Runs an export to completion; returns (final result, downloaded bytes, content type).
    async fn export(&self, sid: &str, body: Value) -> (Value, Vec<u8>, String) {
        let (st, v) = self.start_export(sid, body).await;
        assert_eq!(st, 200, "{v}");
        let pid = v["result"]["progressId"].as_str().unwrap().to_string();
        let r = self.wait(sid, &pid).await;
        assert_eq!(r["status"], "complete", "{r}");
        let resp = self.download(sid, r["fileId"].as_str().unwrap()).await;
        assert_eq!(resp.status().as_u16(), 200);
        let ct = resp.headers()["content-type"].to_str().unwrap().to_string();
        let len: usize = resp.headers()["content-length"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        let bytes = resp.bytes().await.unwrap().to_vec();
        assert_eq!(bytes.len(), len);
        (r, bytes, ct)
    }

    /// The single entry of a zipped export: (name, content).
    async fn export_unzipped(&self, sid: &str, body: Value) -> (Value, String, String) {
        let (r, bytes, ct) = self.export(sid, body).await;
        assert_eq!(ct, "application/zip");
        let (name, text) = unzip_one(&bytes);
        (r, name, text)
    }

    /// `responses` of a JSON export.
    async fn json_responses(&self, sid: &str, mut body: Value) -> (Value, Vec<Value>) {
        body["format"] = json!("json");
        let (r, _, text) = self.export_unzipped(sid, body).await;
        let v: Value = serde_json::from_str(&text).unwrap();
        (r, v["responses"].as_array().unwrap().clone())
    }

    fn expected(&self, survey: usize, sel: &Selection) -> Vec<String> {
        let sim = &self.h.sim;
        let s = &sim.surveys[survey];
        let snap = sim.responses.snapshot(&s.id);
        let mut ids = Vec::new();
        for_each_response::<()>(sim, s, &snap, sel, |r| {
            ids.push(r.id.clone());
            Ok(())
        })
        .unwrap();
        ids
    }
}

fn unzip_one(bytes: &[u8]) -> (String, String) {
    let mut z = zip::ZipArchive::new(std::io::Cursor::new(bytes)).unwrap();
    assert_eq!(z.len(), 1, "an export zip holds exactly one file");
    let mut f = z.by_index(0).unwrap();
    let mut s = String::new();
    f.read_to_string(&mut s).unwrap();
    (f.name().unwrap().to_string(), s)
}

fn ids(rs: &[Value]) -> Vec<String> {
    rs.iter()
        .map(|r| r["responseId"].as_str().unwrap().to_string())
        .collect()
}

/// RFC 4180 parser (quoted cells may hold commas, quotes and newlines).
fn parse_csv(text: &str) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    let mut row = Vec::new();
    let mut cell = String::new();
    let mut chars = text.chars().peekable();
    let mut quoted = false;
    while let Some(c) = chars.next() {
        if quoted {
            if c == '"' {
                if chars.peek() == Some(&'"') {
                    cell.push('"');
                    chars.next();
                } else {
                    quoted = false;
                }
            } else {
                cell.push(c);
            }
            continue;
        }
        match c {
            '"' => quoted = true,
            ',' => row.push(std::mem::take(&mut cell)),
            '\r' => {}
            '\n' => {
                row.push(std::mem::take(&mut cell));
                rows.push(std::mem::take(&mut row));
            }
            c => cell.push(c),
        }
    }
    if !cell.is_empty() || !row.is_empty() {
        row.push(cell);
        rows.push(row);
    }
    rows
}

fn col(rows: &[Vec<String>], name: &str) -> usize {
    rows[0]
        .iter()
        .position(|c| c == name)
        .unwrap_or_else(|| panic!("no column {name} in {:?}", rows[0]))
}

#[tokio::test]
async fn json_and_ndjson_exports_hold_every_selected_response() {
    let api = Api::new(cfg()).await;
    let sid = api.sid(0);
    let expected = api.expected(0, &Selection::default());
    assert!(expected.len() > 100);

    let (st, v) = api.start_export(&sid, json!({"format": "json"})).await;
    assert_eq!(st, 200);
    let r = &v["result"];
    assert!(r["progressId"].as_str().unwrap().starts_with("ES_"));
    assert_eq!(r["percentComplete"], json!(0.0));
    assert_eq!(r["status"], "inProgress");
    assert_eq!(v["meta"]["httpStatus"], "200 - OK");

    let (res, name, text) = api.export_unzipped(&sid, json!({"format": "json"})).await;
    assert_eq!(res["percentComplete"], json!(100.0));
    assert!(res.get("continuationToken").is_none());
    assert_eq!(name, format!("{}.json", api.h.sim.surveys[0].name));
    let v: Value = serde_json::from_str(&text).unwrap();
    let rs = v["responses"].as_array().unwrap();
    assert_eq!(ids(rs), expected);
    assert!(rs[0]["values"]["recordedDate"].is_string());
    assert!(rs[0]["labels"].is_object());

    let (_, name, text) = api.export_unzipped(&sid, json!({"format": "ndjson"})).await;
    assert!(name.ends_with(".ndjson"));
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(ids(&lines), expected);
}

#[tokio::test]
async fn csv_and_tsv_have_three_header_rows() {
    let api = Api::new(cfg()).await;
    let sid = api.sid(0);
    let expected = api.expected(0, &Selection::default());

    let (_, name, text) = api.export_unzipped(&sid, json!({"format": "csv"})).await;
    assert!(name.ends_with(".csv"));
    let rows = parse_csv(&text);
    assert_eq!(rows.len(), 3 + expected.len());
    assert_eq!(
        &rows[0][..9],
        [
            "StartDate",
            "EndDate",
            "Status",
            "IPAddress",
            "Progress",
            "Duration (in seconds)",
            "Finished",
            "RecordedDate",
            "ResponseId"
        ]
    );
    assert!(rows[0].iter().any(|c| c == "Q1"));
    assert_eq!(rows[1][0], "Start Date");
    assert_eq!(rows[2][0], r#"{"ImportId":"startDate"}"#);
    let width = rows[0].len();
    assert!(rows.iter().all(|r| r.len() == width));
    let rid = col(&rows, "ResponseId");
    let got: Vec<&str> = rows[3..].iter().map(|r| r[rid].as_str()).collect();
    assert_eq!(got, expected);
    // Dates as `YYYY-MM-DD HH:MM:SS`, Finished as 1/0.
    let d = &rows[3][col(&rows, "RecordedDate")];
    assert_eq!(d.len(), 19, "{d}");
    assert_eq!(&d[10..11], " ");
    assert_eq!(rows[3][col(&rows, "Finished")], "1");

    let (_, name, text) = api.export_unzipped(&sid, json!({"format": "tsv"})).await;
    assert!(name.ends_with(".tsv"));
    let lines: Vec<&str> = text.split("\r\n").filter(|l| !l.is_empty()).collect();
    assert_eq!(lines.len(), 3 + expected.len());
    assert!(lines[0].starts_with("StartDate\tEndDate\t"));
    assert!(lines.iter().all(|l| l.split('\t').count() == width));
}

#[tokio::test]
async fn csv_options_labels_label_columns_time_zone_and_restrictions() {
    let api = Api::new(cfg()).await;
    let sid = api.sid(0);
    let (_, _, plain) = api.export_unzipped(&sid, json!({"format": "csv"})).await;
    let plain = parse_csv(&plain);
    let q1 = col(&plain, "Q1");

    let (_, _, labels) = api
        .export_unzipped(&sid, json!({"format": "csv", "useLabels": true}))
        .await;
    let labels = parse_csv(&labels);
    let answered = (3..plain.len())
        .find(|&i| !plain[i][q1].is_empty())
        .unwrap();
    assert!(plain[answered][q1].parse::<i64>().is_ok());
    assert!(labels[answered][q1].parse::<i64>().is_err());

    let (_, _, both) = api
        .export_unzipped(&sid, json!({"format": "csv", "includeLabelColumns": true}))
        .await;
    let both = parse_csv(&both);
    let ql = col(&both, "Q1_label");
    assert_eq!(both[answered][ql], labels[answered][q1]);
    assert_eq!(both[answered][col(&both, "Q1")], plain[answered][q1]);

    // America/Chicago is 5 or 6 hours behind UTC.
    let (_, _, tz) = api
        .export_unzipped(
            &sid,
            json!({"format": "csv", "timeZone": "America/Chicago"}),
        )
        .await;
    let tz = parse_csv(&tz);
    let rd = col(&plain, "RecordedDate");
    let parse = |s: &str| {
        chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S")
            .unwrap()
            .and_utc()
            .timestamp()
    };
    let diff = parse(&plain[3][rd]) - parse(&tz[3][rd]);
    assert!(diff == 5 * 3600 || diff == 6 * 3600, "{diff}");

    // Restrictions: one question, no embedded data, two metadata fields.
    let qid = api.h.sim.surveys[0].questions[0].qid.clone();
    let (_, _, r) = api
        .export_unzipped(
            &sid,
            json!({"format": "csv", "questionIds": [qid], "embeddedDataIds": [],
                   "surveyMetadataIds": ["recordedDate", "externalReference"]}),
        )
        .await;
    let r = parse_csv(&r);
    assert_eq!(&r[0][..2], ["RecordedDate", "ExternalReference"]);
    assert!(r[0].iter().all(|c| !c.starts_with("Q2") && c != "segment"));
    assert!(r[0].iter().any(|c| c.starts_with("Q1")));

    // JSON: the same restriction drops fields from values.
    let (_, rs) = api
        .json_responses(
            &sid,
            json!({"questionIds": [qid], "surveyMetadataIds": ["externalDataReference"]}),
        )
        .await;
    for rec in &rs {
        for k in rec["values"].as_object().unwrap().keys() {
            assert!(
                k.contains(&qid)
                    || k == "externalDataReference"
                    || api.h.sim.surveys[0].embedded.iter().any(|e| e.name == *k),
                "unexpected key {k}"
            );
        }
    }
}

#[tokio::test]
async fn compress_false_serves_the_raw_file() {
    let api = Api::new(cfg()).await;
    let sid = api.sid(1);
    let expected = api.expected(1, &Selection::default());
    let (_, bytes, ct) = api
        .export(&sid, json!({"format": "json", "compress": false}))
        .await;
    assert_eq!(ct, "application/json");
    let v: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(ids(v["responses"].as_array().unwrap()), expected);

    let (st, v) = api
        .start_export(&sid, json!({"format": "csv", "compress": false}))
        .await;
    assert_eq!(st, 200);
    let r = api
        .wait(&sid, v["result"]["progressId"].as_str().unwrap())
        .await;
    let resp = api.download(&sid, r["fileId"].as_str().unwrap()).await;
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/csv")
    );
    let cd = resp.headers()["content-disposition"].to_str().unwrap();
    assert!(cd.starts_with("attachment; filename=\""), "{cd}");
    assert!(cd.contains(".csv"), "{cd}");
    let rows = parse_csv(&resp.text().await.unwrap());
    assert_eq!(rows.len(), 3 + expected.len());
}

#[tokio::test]
async fn invalid_requests_get_400_with_clear_messages() {
    let api = Api::new(cfg()).await;
    let sid = api.sid(0);
    let other = api.sid(1);
    // A valid token for the other survey.
    let (_, v) = api
        .start_export(&other, json!({"format": "json", "allowContinuation": true}))
        .await;
    let r = api
        .wait(&other, v["result"]["progressId"].as_str().unwrap())
        .await;
    let other_token = r["continuationToken"].as_str().unwrap().to_string();

    let cases: Vec<(Value, &str)> = vec![
        (json!({}), "Missing required parameter 'format'"),
        (json!({"format": "pdf"}), "expected one of csv"),
        (json!({"format": "spss"}), "not supported by the simulator"),
        (json!({"format": "xml"}), "not supported by the simulator"),
        (json!({"Format": "json"}), "case-sensitive"),
        (
            json!({"format": "json", "bogus": 1}),
            "Unknown parameter 'bogus'",
        ),
        (json!({"format": 1}), "'format': expected a string"),
        (
            json!({"format": "csv", "compress": "yes"}),
            "'compress': expected a boolean",
        ),
        (
            json!({"format": "csv", "limit": "10"}),
            "'limit': expected an integer",
        ),
        (json!({"format": "csv", "limit": 0}), "positive integer"),
        (
            json!({"format": "csv", "questionIds": "QID1"}),
            "expected an array of strings",
        ),
        (
            json!({"format": "csv", "questionIds": [1]}),
            "non-string element",
        ),
        (
            json!({"format": "csv", "seenUnansweredRecode": "x"}),
            "expected an integer",
        ),
        (
            json!({"format": "csv", "startDate": "2025-01-01"}),
            "ISO-8601",
        ),
        (
            json!({"format": "csv", "startDate": "2025-01-01T00:00:00"}),
            "ISO-8601",
        ),
        (
            json!({"format": "csv", "startDate": "2025-02-01T00:00:00Z", "endDate": "2025-01-01T00:00:00Z"}),
            "before 'endDate'",
        ),
        (
            json!({"format": "csv", "startDate": "2025-01-01T00:00:00Z", "endDate": "2025-01-01T00:00:00Z"}),
            "before 'endDate'",
        ),
        (
            json!({"format": "json", "useLabels": false}),
            "cannot be used with format 'json'",
        ),
        (
            json!({"format": "ndjson", "breakoutSets": true}),
            "'breakoutSets'",
        ),
        (json!({"format": "json", "timeZone": "UTC"}), "'timeZone'"),
        (
            json!({"format": "json", "newlineReplacement": " "}),
            "'newlineReplacement'",
        ),
        (
            json!({"format": "json", "includeDisplayOrder": true}),
            "'includeDisplayOrder'",
        ),
        (
            json!({"format": "json", "formatDecimalAsComma": true}),
            "'formatDecimalAsComma'",
        ),
        (
            json!({"format": "json", "seenUnansweredRecode": 0}),
            "'seenUnansweredRecode'",
        ),
        (
            json!({"format": "json", "multiselectSeenUnansweredRecode": 0}),
            "'multiselectSeenUnansweredRecode'",
        ),
        (
            json!({"format": "csv", "useLabels": true, "includeLabelColumns": true}),
            "'includeLabelColumns' cannot be used together with 'useLabels'",
        ),
        (
            json!({"format": "json", "allowContinuation": true, "continuationToken": other_token}),
            "'allowContinuation' cannot be used together with 'continuationToken'",
        ),
        (
            json!({"format": "json", "allowContinuation": true, "filterId": "x"}),
            "'filterId' cannot be used together with 'allowContinuation'",
        ),
        (
            json!({"format": "json", "sortByLastModifiedDate": true, "filterId": "x"}),
            "'filterId' cannot be used together with 'sortByLastModifiedDate'",
        ),
        (
            json!({"format": "json", "filterId": "nope"}),
            "filter 'nope' does not exist",
        ),
        (
            json!({"format": "json", "continuationToken": "garbage"}),
            "token is unknown",
        ),
        (
            json!({"format": "json", "continuationToken": other_token}),
            "issued for survey",
        ),
        (
            json!({"format": "json", "questionIds": ["QID999"]}),
            "'QID999' is not a question",
        ),
        (
            json!({"format": "json", "embeddedDataIds": ["nosuch"]}),
            "'nosuch' is not an embedded data field",
        ),
        (
            json!({"format": "json", "surveyMetadataIds": ["shoeSize"]}),
            "'surveyMetadataIds': 'shoeSize'",
        ),
        (
            json!({"format": "csv", "timeZone": "Mars/Olympus"}),
            "'timeZone'",
        ),
        (json!([1, 2]), "must be a JSON object"),
    ];
    for (body, needle) in cases {
        let (st, v) = api.start_export(&sid, body.clone()).await;
        assert_eq!(st, 400, "{body} → {v}");
        assert_eq!(v["meta"]["httpStatus"], "400 - Bad Request");
        let msg = v["meta"]["error"]["errorMessage"].as_str().unwrap();
        assert!(msg.contains(needle), "{body}: '{msg}' lacks '{needle}'");
        assert!(v.get("result").is_none());
    }
    // Malformed JSON.
    let r = api
        .http
        .post(format!(
            "{}/surveys/{sid}/export-responses",
            api.h.api_url()
        ))
        .header("X-API-TOKEN", &api.token)
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    // Accepted spellings: both metadata names for the external reference.
    for m in ["externalReference", "externalDataReference"] {
        let (st, v) = api
            .start_export(&sid, json!({"format": "json", "surveyMetadataIds": [m]}))
            .await;
        assert_eq!(st, 200, "{v}");
    }
}

#[tokio::test]
async fn unknown_things_are_404() {
    let api = Api::new(cfg()).await;
    let sid = api.sid(0);
    let (st, v) = api
        .start_export("SV_doesnotexist123", json!({"format": "json"}))
        .await;
    assert_eq!(st, 404);
    assert_eq!(v["meta"]["httpStatus"], "404 - Not Found");
    let (st, _) = api
        .get(&format!("/surveys/{sid}/export-responses/ES_nope"))
        .await;
    assert_eq!(st, 404);
    let r = api.download(&sid, "no-such-file").await;
    assert_eq!(r.status().as_u16(), 404);
    let (st, _) = api.get("/surveys/SV_doesnotexist123/filters").await;
    assert_eq!(st, 404);

    // A progress id and a file id belong to their survey only.
    let (_, v) = api.start_export(&sid, json!({"format": "json"})).await;
    let pid = v["result"]["progressId"].as_str().unwrap().to_string();
    let r = api.wait(&sid, &pid).await;
    let other = api.sid(1);
    let (st, _) = api
        .get(&format!("/surveys/{other}/export-responses/{pid}"))
        .await;
    assert_eq!(st, 404);
    let resp = api.download(&other, r["fileId"].as_str().unwrap()).await;
    assert_eq!(resp.status().as_u16(), 404);
}

#[tokio::test]
async fn continuation_returns_exactly_the_changes() {
    let api = Api::new(cfg()).await;
    let sid = api.sid(0);
    let full = api.expected(0, &Selection::default());
    let (r, rs) = api
        .json_responses(&sid, json!({"allowContinuation": true}))
        .await;
    assert_eq!(rs.len(), full.len());
    let token = r["continuationToken"].as_str().unwrap().to_string();

    // One created, one updated, one deleted.
    let (st, v) = api
        .send(
            reqwest::Method::POST,
            &format!("/surveys/{sid}/responses"),
            &json!({"values": {"QID1": 1}}),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    let created = v["result"]["responseId"].as_str().unwrap().to_string();
    let updated = full[10].clone();
    let (st, v) = api
        .send(
            reqwest::Method::PUT,
            &format!("/responses/{updated}"),
            &json!({"surveyId": sid, "embeddedData": {"segment": "9"}}),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    let deleted = full[20].clone();
    let (st, _) = api
        .send(
            reqwest::Method::DELETE,
            &format!("/surveys/{sid}/responses/{deleted}"),
            &json!({}),
        )
        .await;
    assert_eq!(st, 200);

    let (r2, rs) = api
        .json_responses(&sid, json!({"continuationToken": token}))
        .await;
    let mut got = ids(&rs);
    got.sort();
    let mut want = vec![created.clone(), updated.clone()];
    want.sort();
    assert_eq!(got, want);
    let upd = rs.iter().find(|r| r["responseId"] == updated).unwrap();
    assert_eq!(upd["values"]["segment"], "9");
    let token2 = r2["continuationToken"].as_str().unwrap().to_string();
    assert_ne!(token2, token);

    let (r3, rs) = api
        .json_responses(&sid, json!({"continuationToken": token2}))
        .await;
    assert!(rs.is_empty());
    assert!(r3["continuationToken"].is_string());

    // A full export no longer contains the deleted response.
    let (_, rs) = api.json_responses(&sid, json!({})).await;
    let all = ids(&rs);
    assert!(!all.contains(&deleted));
    assert!(all.contains(&created));

    // Tokens expire after one week of simulated time.
    api.h.sim.clock.advance(8 * DAY_MS);
    let (st, v) = api
        .start_export(&sid, json!({"format": "json", "continuationToken": token}))
        .await;
    assert_eq!(st, 400);
    assert!(
        v["meta"]["error"]["errorMessage"]
            .as_str()
            .unwrap()
            .contains("expired")
    );
}

#[tokio::test]
async fn files_expire_after_a_week() {
    let api = Api::new(cfg()).await;
    let sid = api.sid(0);
    let (_, v) = api.start_export(&sid, json!({"format": "csv"})).await;
    let pid = v["result"]["progressId"].as_str().unwrap().to_string();
    let r = api.wait(&sid, &pid).await;
    let fid = r["fileId"].as_str().unwrap().to_string();
    assert_eq!(api.download(&sid, &fid).await.status().as_u16(), 200);
    api.h.sim.clock.advance(6 * DAY_MS);
    assert_eq!(api.download(&sid, &fid).await.status().as_u16(), 200);
    assert_eq!(api.h.sim.exports.file_count(), 1);
    api.h.sim.clock.advance(2 * DAY_MS);
    let resp = api.download(&sid, &fid).await;
    assert_eq!(resp.status().as_u16(), 404);
    let v: Value = resp.json().await.unwrap();
    assert!(
        v["meta"]["error"]["errorMessage"]
            .as_str()
            .unwrap()
            .contains("expire")
    );
    assert_eq!(
        api.h.sim.exports.file_count(),
        0,
        "expired temp file removed"
    );
}

#[tokio::test]
async fn same_seed_gives_identical_files() {
    let a = Api::new(cfg()).await;
    let b = Api::new(cfg()).await;
    for body in [
        json!({"format": "csv"}),
        json!({"format": "json"}),
        json!({"format": "tsv", "compress": false}),
    ] {
        let (ra, ba, _) = a.export(&a.sid(0), body.clone()).await;
        let (rb, bb, _) = b.export(&b.sid(0), body.clone()).await;
        assert_eq!(ra["fileId"], rb["fileId"]);
        assert!(ba == bb, "{body}: files differ");
    }
}

#[tokio::test]
async fn date_windows_in_progress_and_limit() {
    let api = Api::new(cfg()).await;
    let sid = api.sid(0);
    let (_, all) = api.json_responses(&sid, json!({})).await;
    let recorded = |i: usize| {
        all[i]["values"]["recordedDate"]
            .as_str()
            .unwrap()
            .to_string()
    };
    // start inclusive, end exclusive.
    let (_, win) = api
        .json_responses(
            &sid,
            json!({"startDate": recorded(10), "endDate": recorded(20)}),
        )
        .await;
    assert_eq!(ids(&win), ids(&all[10..20]));
    // Offsets other than Z mean the same instant.
    let start = chrono::DateTime::parse_from_rfc3339(&recorded(10)).unwrap();
    let start_cet = start
        .with_timezone(&chrono::FixedOffset::east_opt(3600).unwrap())
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, false);
    let (_, win2) = api
        .json_responses(&sid, json!({"startDate": start_cet}))
        .await;
    assert_eq!(ids(&win2), ids(&all[10..]));

    let (_, ip) = api
        .json_responses(&sid, json!({"exportResponsesInProgress": true}))
        .await;
    let expected = api.expected(
        0,
        &Selection {
            in_progress_only: true,
            ..Selection::default()
        },
    );
    assert!(!ip.is_empty());
    assert_eq!(ids(&ip), expected);
    assert!(ip.iter().all(|r| r["values"]["finished"] == 0));
    assert!(all.iter().all(|r| r["values"]["finished"] == 1));

    let (_, lim) = api.json_responses(&sid, json!({"limit": 7})).await;
    assert_eq!(ids(&lim), ids(&all[..7]));
}

#[tokio::test]
async fn filters_list_and_restrict() {
    let api = Api::new(cfg()).await;
    let sid = api.sid(0);
    let (st, v) = api.get(&format!("/surveys/{sid}/filters")).await;
    assert_eq!(st, 200);
    let els = v["result"]["elements"].as_array().unwrap();
    assert!(!els.is_empty());
    for f in els {
        assert!(f["filterId"].is_string() && f["filterName"].is_string());
        assert!(f["creationDate"].as_str().unwrap().ends_with('Z'));
    }
    let email = els
        .iter()
        .find(|f| f["filterName"].as_str().unwrap().contains("email"))
        .unwrap();
    let (_, rs) = api
        .json_responses(&sid, json!({"filterId": email["filterId"], "limit": 5}))
        .await;
    assert_eq!(rs.len(), 5);
    assert!(
        rs.iter()
            .all(|r| r["values"]["distributionChannel"] == "email" && r["values"]["finished"] == 1)
    );
}

#[tokio::test]
async fn progress_stays_in_progress_until_the_delay_passed() {
    let api = Api::new(SimConfig {
        export_delay_ms: 400,
        ..cfg()
    })
    .await;
    let sid = api.sid(0);
    let (_, v) = api.start_export(&sid, json!({"format": "json"})).await;
    let pid = v["result"]["progressId"].as_str().unwrap().to_string();
    let (_, v) = api
        .get(&format!("/surveys/{sid}/export-responses/{pid}"))
        .await;
    assert_eq!(v["result"]["status"], "inProgress");
    assert!(v["result"].get("fileId").is_none());
    let pct = v["result"]["percentComplete"].as_f64().unwrap();
    assert!((0.0..=100.0).contains(&pct));
    let r = api.wait(&sid, &pid).await;
    assert_eq!(r["status"], "complete");
    assert!(r["fileId"].is_string());
}

/// Exports 1,000,000 responses and prints the elapsed time (run in release mode and watch RSS):
/// `cargo test --release -p xmbridge-sim --test it -- --ignored --nocapture export::million`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn million_response_export() {
    let api = Api::new(SimConfig {
        surveys: 1,
        responses: 1_000_000,
        export_delay_ms: 0,
        ..SimConfig::default()
    })
    .await;
    let sid = api.sid(0);
    for format in ["json", "csv"] {
        let t = std::time::Instant::now();
        let (st, v) = api.start_export(&sid, json!({"format": format})).await;
        assert_eq!(st, 200);
        let pid = v["result"]["progressId"].as_str().unwrap().to_string();
        let r = loop {
            let (_, v) = api
                .get(&format!("/surveys/{sid}/export-responses/{pid}"))
                .await;
            if v["result"]["status"] != "inProgress" {
                break v["result"].clone();
            }
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        };
        assert_eq!(r["status"], "complete", "{r}");
        let written = t.elapsed();
        let mut resp = api.download(&sid, r["fileId"].as_str().unwrap()).await;
        let mut n = 0usize;
        while let Some(chunk) = resp.chunk().await.unwrap() {
            n += chunk.len();
        }
        println!(
            "{format}: 1,000,000 responses written in {:.1}s ({:.0} responses/s), zip {} MB, downloaded in {:.1}s",
            written.as_secs_f64(),
            1e6 / written.as_secs_f64(),
            n / 1_000_000,
            t.elapsed().as_secs_f64() - written.as_secs_f64()
        );
    }
}

#[tokio::test]
async fn fault_switches_fail_jobs_and_truncate_files() {
    use xmbridge_sim::qualtrics::faults::FaultSettings;
    let api = Api::new(cfg()).await;
    let sid = api.sid(0);
    api.h.sim.faults.set(FaultSettings {
        fail_exports: true,
        ..FaultSettings::default()
    });
    let (st, v) = api.start_export(&sid, json!({"format": "json"})).await;
    assert_eq!(st, 200);
    let r = api
        .wait(&sid, v["result"]["progressId"].as_str().unwrap())
        .await;
    assert_eq!(r["status"], "failed");
    assert!(r.get("fileId").is_none());
    assert!(r["error"]["errorCode"].is_string() && r["error"]["errorMessage"].is_string());

    api.h.sim.faults.set(FaultSettings::default());
    let (_, full, _) = api.export(&sid, json!({"format": "json"})).await;
    api.h.sim.faults.set(FaultSettings {
        truncate_zip: true,
        ..FaultSettings::default()
    });
    let (_, cut, _) = api.export(&sid, json!({"format": "json"})).await;
    assert_eq!(cut.len(), full.len() / 2);
    assert!(zip::ZipArchive::new(std::io::Cursor::new(&cut)).is_err());
}
