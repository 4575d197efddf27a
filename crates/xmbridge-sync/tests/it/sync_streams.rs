//! Directories, transaction batches, distributions, users and libraries, and the permission
//! rules: a user without "Manage Directories" gets every table but the two batch tables.

use crate::common;

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

/// Every element of a paged list, through the client (the test's own count of the simulator).
async fn count(
    client: &xmbridge_qualtrics::Client,
    segs: &[&str],
    query: &[(&str, &str)],
) -> Vec<serde_json::Value> {
    use futures_util::TryStreamExt;
    let mut url = client.url(segs);
    for (k, v) in query {
        url.query_pairs_mut().append_pair(k, v);
    }
    client
        .paginate::<serde_json::Value>(url)
        .try_collect()
        .await
        .unwrap()
}

fn ids(v: &[serde_json::Value], key: &str) -> Vec<String> {
    v.iter()
        .filter_map(|x| x.get(key).and_then(|s| s.as_str()).map(str::to_string))
        .collect()
}

#[tokio::test]
async fn tier2_directory_and_sms_tables_match_the_simulator() {
    let (h, client) = sim(cfg()).await;
    let mut dest = MemDest::default();
    let o = SyncOptions {
        tables: Some(vec![
            "contact_transaction".into(),
            "sms_distribution".into(),
        ]),
        ..Default::default()
    };
    let s = sync(&client, &mut dest, &o, &NoProgress).await.unwrap();
    assert!(s.skipped.is_empty(), "{:?}", s.skipped);
    let (mut tx, mut samples, mut rules, mut targets) = (0, 0, 0, 0);
    for d in ids(&count(&client, &["directories"], &[]).await, "directoryId") {
        let contacts = count(
            &client,
            &["directories", &d, "contacts"],
            &[("useNewPaginationScheme", "true")],
        )
        .await;
        for c in ids(&contacts, "contactId") {
            tx += count(
                &client,
                &["directories", &d, "contacts", &c, "transactions"],
                &[],
            )
            .await
            .len();
        }
        samples += count(&client, &["directories", &d, "samples"], &[])
            .await
            .len();
        let r = count(&client, &["directories", &d, "frequencyrules"], &[]).await;
        rules += r.len();
        targets += r
            .iter()
            .map(|x| x["targets"].as_array().map_or(0, Vec::len))
            .sum::<usize>();
    }
    let (mut sms, mut sms_rows) = (0, 0);
    for sv in &h.sim.surveys {
        let list = count(&client, &["distributions", "sms"], &[("surveyId", &sv.id)]).await;
        sms += list.len();
        for id in ids(&list, "id") {
            sms_rows += count(&client, &["distributions", "sms", &id, "history"], &[])
                .await
                .len();
        }
    }
    assert!(tx > 0 && samples > 0 && rules > 0 && targets > 0 && sms > 0 && sms_rows > 0);
    let st = dest.state();
    assert_eq!(st.count("contact_transaction"), tx);
    assert_eq!(st.count("directory_sample"), samples);
    assert_eq!(st.count("frequency_rule"), rules);
    assert_eq!(st.count("frequency_rule_target"), targets);
    assert_eq!(st.count("sms_distribution"), sms);
    assert_eq!(st.count("sms_distribution_contact"), sms_rows);
    let r = &st.rows("directory_sample")[0];
    assert!(st.text("directory_sample", r, "name").is_some());

    // A second run replaces, never doubles.
    sync(&client, &mut dest, &o, &NoProgress).await.unwrap();
    let st2 = dest.state();
    for t in [
        "contact_transaction",
        "directory_sample",
        "frequency_rule",
        "frequency_rule_target",
        "sms_distribution",
        "sms_distribution_contact",
    ] {
        assert_eq!(st2.count(t), st.count(t), "{t}");
    }
}

/// Save & Test probes the table groups of `xmbridge_qualtrics::capabilities`; the sync runs its
/// streams from the same list. Every table a full sync writes must belong to exactly one group,
/// or Save & Test would not report on it; every group's table must be in the catalog.
#[tokio::test]
async fn save_and_test_covers_every_table_the_sync_writes() {
    use xmbridge_qualtrics::capabilities::TABLE_GROUPS;
    let groups_of = |t: &str| {
        TABLE_GROUPS
            .iter()
            .filter(|g| g.tables.contains(&t))
            .count()
    };

    let (_h, client) = sim(cfg()).await;
    let mut dest = MemDest::default();
    let s = sync(&client, &mut dest, &SyncOptions::default(), &NoProgress)
        .await
        .unwrap();
    let st = dest.state();
    let written: Vec<&String> = st.tables.keys().chain(s.tables.keys()).collect();
    assert!(written.iter().any(|t| *t == "survey_version_publish_event"));
    for t in written {
        assert_eq!(groups_of(t), 1, "{t} is written by the sync");
    }
    for group in TABLE_GROUPS {
        for t in group.tables {
            assert!(
                xmbridge_sync::catalog::table(t).is_some(),
                "{t} of {} is in the catalog",
                group.name
            );
        }
    }
}
