//! Directories, transaction batches, distributions, users and libraries, and the permission
//! rules: a user without "Manage Directories" gets every table but the two batch tables.

mod common;

use common::{MemDest, client, sim};
use xmbridge_sim::SimConfig;
use xmbridge_sync::{LogProgress, NoProgress, SyncOptions, sync};

fn cfg() -> SimConfig {
    SimConfig {
        surveys: 2,
        responses: 10,
        contacts: 40,
        ..Default::default()
    }
}

#[tokio::test]
async fn every_stream_fills_its_tables() {
    let (h, client) = sim(cfg()).await;
    let mut dest = MemDest::default();
    let s = sync(
        &client,
        &mut dest,
        &SyncOptions::default(),
        &LogProgress::new(),
    )
    .await
    .unwrap();
    assert!(s.skipped.is_empty(), "{:?}", s.skipped);
    let st = dest.state();
    assert_eq!(st.count("directory"), 2);
    assert_eq!(st.count("directory_contact"), 40 + 25);
    assert!(st.count("directory_mailing_list") >= 4);
    assert!(st.count("contact_mailing_list_membership") > 10);
    assert_eq!(st.count("transaction_batch"), 3);
    assert!(st.count("batch_transaction_membership") > 0);
    assert!(
        st.count("distribution") >= 2 * 4,
        "{}",
        st.count("distribution")
    );
    assert!(st.count("distribution_contact") > 0);
    assert!(
        st.specs["distribution"]
            .columns
            .iter()
            .any(|c| c.name == "stats_sent")
    );
    assert_eq!(st.count("user"), h.sim.users.read().len());
    assert!(st.count("library") >= 2);
    assert!(st.count("library_message") >= 130);
    for (t, c) in &s.tables {
        assert_eq!(
            c.inserted as usize,
            st.count(t),
            "{t}: summary counts every insert"
        );
    }
    let text = s.to_string();
    assert!(
        text.contains("directory_contact") && text.contains("API calls"),
        "{text}"
    );

    // Full streams are stable: a second run changes no live row count and marks nothing deleted.
    let s2 = sync(&client, &mut dest, &SyncOptions::default(), &NoProgress)
        .await
        .unwrap();
    let st2 = dest.state();
    for t in st.tables.keys() {
        assert_eq!(st2.count(t), st.count(t), "{t}");
    }
    for t in [
        "directory",
        "user",
        "distribution",
        "directory_mailing_list",
        "survey",
    ] {
        assert_eq!(s2.table(t).deleted, 0, "{t}");
    }
}

#[tokio::test]
async fn viewer_without_manage_directories_skips_only_the_batch_tables() {
    let (h, _) = sim(cfg()).await;
    let token = h.sim.users.read()[2].api_token.clone();
    let viewer = client(&h, &token);
    let mut dest = MemDest::default();
    let s = sync(&viewer, &mut dest, &SyncOptions::default(), &NoProgress)
        .await
        .unwrap();
    let skipped: Vec<&str> = s.skipped.iter().map(|k| k.table.as_str()).collect();
    assert!(skipped.contains(&"transaction_batch"), "{skipped:?}");
    assert!(
        skipped.contains(&"batch_transaction_membership"),
        "{skipped:?}"
    );
    for k in &s.skipped {
        if k.table.contains("batch") {
            assert!(k.reason.contains("Manage Directories"), "{}", k.reason);
        }
    }
    assert!(!s.tables.contains_key("transaction_batch"));
    let st = dest.state();
    assert!(st.count("survey_response") > 0);
    assert_eq!(st.count("directory_contact"), 40 + 25);
    assert_eq!(st.count("transaction_batch"), 0);
    assert!(s.to_string().contains("skipped transaction_batch"));
}

#[tokio::test]
async fn unknown_table_is_refused_and_a_destination_failure_names_the_table() {
    let (_h, client) = sim(cfg()).await;
    let mut dest = MemDest::default();
    let bad = SyncOptions {
        tables: Some(vec!["responses".into()]),
        ..Default::default()
    };
    let e = sync(&client, &mut dest, &bad, &NoProgress)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("unknown table \"responses\""), "{e}");

    // The destination refuses commits after the definitions: the error names the response table
    // and a survey; definitions stay committed; the next run resumes and completes.
    let only = SyncOptions {
        tables: Some(vec!["survey_response".into()]),
        ..Default::default()
    };
    dest.with(|st| st.fail_after = Some(2));
    let e = sync(&client, &mut dest, &only, &NoProgress)
        .await
        .unwrap_err();
    assert_eq!(e.table(), Some("survey_response"), "{e}");
    assert!(e.survey().is_some_and(|s| s.starts_with("SV_")), "{e}");
    assert_eq!(dest.state().count("survey"), 2);
    dest.with(|st| st.fail_after = None);
    let s = sync(&client, &mut dest, &only, &NoProgress).await.unwrap();
    assert_eq!(s.surveys_exported, 2);
    assert!(dest.state().count("survey_response") > 0);
}
