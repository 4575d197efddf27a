//! `xmbridge demo` end to end: the real binary against its in-process simulator.

use std::process::Command;

#[test]
fn demo_exports_every_survey() {
    let out = Command::new(env!("CARGO_BIN_EXE_xmbridge"))
        .args(["demo", "--surveys", "3", "--responses", "200"])
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
}
