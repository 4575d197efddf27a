//! `xmbridge demo` end to end: the real binary, its in-process simulator and the SQLite file.

use std::process::Command;

#[test]
fn demo_syncs_the_simulated_brand_into_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("demo.db");
    let out = Command::new(env!("CARGO_BIN_EXE_xmbridge"))
        .args(["demo", "--surveys", "3", "--responses", "200", "--database"])
        .arg(&db)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("connected as"), "{stdout}");
    // 3 × 200 seeded responses, less the few still in progress (not recorded, so not exported).
    let summary = stdout
        .lines()
        .find_map(|l| l.strip_prefix("summary: 3 surveys, "))
        .unwrap_or_else(|| panic!("no summary line in {stdout}"));
    let responses: u64 = summary.split(' ').next().unwrap().parse().unwrap();
    assert!((500..600).contains(&responses), "{summary}");
    assert!(
        stdout.contains("xmbridge simulate"),
        "names what to try next"
    );
    assert!(stdout.contains("Net Promoter Score per survey"), "{stdout}");
    // The file holds what the summary says.
    let c = rusqlite::Connection::open(&db).unwrap();
    let n: i64 = c
        .query_row("SELECT COUNT(*) FROM qualtrics_survey_response", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(n as u64, responses);
    let answers: i64 = c
        .query_row(
            "SELECT COUNT(*) FROM qualtrics_question_response",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(answers as u64 > responses * 10, "{answers}");
}
