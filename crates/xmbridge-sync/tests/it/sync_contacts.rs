//! Directory contacts follow what changed: a sync where nothing changed lists the contacts and
//! reads none of them on its own; each kind of change upstream is found and gives the rows a
//! from-scratch sync gives; what only the per-contact read shows catches up at the refresh.

use crate::common;

use common::{MemDest, MemState, sim};
use futures_util::TryStreamExt;
use reqwest::Method;
use serde_json::{Value as Json, json};
use std::collections::BTreeMap;
use std::time::Duration;
use xmbridge_destinations::Value;
use xmbridge_qualtrics::{Client, RetryMode};
use xmbridge_sim::SimConfig;
use xmbridge_sync::{NoProgress, SyncOptions, SyncSummary, sync};

const T0: i64 = 1_780_000_000_000;
const DAY_MS: i64 = 86_400_000;
const CONTACT_TABLES: [&str; 3] = [
    "directory_contact",
    "contact_mailing_list_membership",
    "contact_transaction",
];

fn opts(at: i64) -> SyncOptions {
    SyncOptions {
        tables: Some(CONTACT_TABLES.iter().map(|t| t.to_string()).collect()),
        synced_at_ms: Some(at),
        ..Default::default()
    }
}

async fn run(client: &Client, dest: &mut MemDest, at: i64) -> SyncSummary {
    sync(client, dest, &opts(at), &NoProgress).await.unwrap()
}

/// Live rows of a table by key, without the sync time.
fn rows(st: &MemState, table: &str) -> BTreeMap<String, Vec<Value>> {
    st.tables
        .get(table)
        .into_iter()
        .flatten()
        .filter(|(_, r)| !r.deleted)
        .map(|(k, r)| (k.clone(), r.cells.clone()))
        .collect()
}

/// What a sync from scratch writes now.
async fn from_scratch(client: &Client) -> MemState {
    let mut fresh = MemDest::default();
    run(client, &mut fresh, T0).await;
    fresh.state()
}

async fn call(client: &Client, method: Method, segs: &[&str], body: Option<Json>) -> Json {
    client
        .call(
            method,
            client.url(segs),
            body.as_ref(),
            RetryMode::NotIdempotent,
        )
        .await
        .unwrap()
        .result
        .unwrap_or(Json::Null)
}

fn directories_calls(s: &SyncSummary) -> u64 {
    s.api_calls_by_stream
        .iter()
        .find(|(n, _)| n == "directories")
        .map(|(_, c)| *c)
        .unwrap()
}

#[tokio::test]
async fn contacts_are_read_on_their_own_only_when_something_shows_they_changed() {
    let (_h, client) = sim(SimConfig {
        surveys: 1,
        responses: 1,
        contacts: 450,
        ..Default::default()
    })
    .await;
    let dirs: Vec<Json> = call(&client, Method::GET, &["directories"], None).await["elements"]
        .as_array()
        .unwrap()
        .clone();
    let mut dest = MemDest::default();

    // First load: every contact is read.
    let first = run(&client, &mut dest, T0).await;
    assert!(first.contacts_listed >= 450, "{}", first.contacts_listed);
    assert_eq!(first.contacts_read, first.contacts_listed);

    // Nothing changed: list pages, one search and the mailing lists per directory, plus the
    // Tier 2 lists; no contact read on its own.
    let idle = run(&client, &mut dest, T0).await;
    assert_eq!(idle.contacts_listed, first.contacts_listed);
    assert_eq!(idle.contacts_read, 0, "{idle}");
    let pages: u64 = dirs
        .iter()
        .map(|d| d["contactCount"].as_u64().unwrap().div_ceil(100).max(1))
        .sum();
    let per_directory = 5; // mailing lists, search, samples, frequency rules, + 1 spare
    let budget = 1 + pages + per_directory * dirs.len() as u64;
    assert!(
        directories_calls(&idle) <= budget,
        "{} calls for {} contacts in {} directories (budget {budget}): {idle}",
        directories_calls(&idle),
        idle.contacts_listed,
        dirs.len()
    );
    for t in CONTACT_TABLES {
        assert_eq!(
            rows(&dest.state(), t),
            rows(&from_scratch(&client).await, t),
            "{t}"
        );
    }

    // One change of each kind in the biggest directory.
    let d = dirs
        .iter()
        .max_by_key(|d| d["contactCount"].as_u64())
        .unwrap()["directoryId"]
        .as_str()
        .unwrap()
        .to_string();
    let st = dest.state();
    let cids: Vec<String> = st
        .rows_where("directory_contact", "directory_id", &d)
        .iter()
        .map(|r| st.text("directory_contact", r, "id").unwrap())
        .collect();
    let member = st.rows("contact_mailing_list_membership")[0].clone();
    let (ml, leaver) = (
        st.text(
            "contact_mailing_list_membership",
            &member,
            "mailing_list_id",
        )
        .unwrap(),
        st.text("contact_mailing_list_membership", &member, "contact_id")
            .unwrap(),
    );
    let others: Vec<&String> = cids.iter().filter(|c| **c != leaver).collect();
    let (renamed, edited, deleted, buyer) = (others[0], others[1], others[2], others[3]);
    // In the list element (fingerprint).
    call(
        &client,
        Method::PUT,
        &["directories", &d, "contacts", renamed],
        Some(json!({"firstName": "Renamed"})),
    )
    .await;
    // Not in the list element: only lastModified moves (search).
    call(
        &client,
        Method::PUT,
        &["directories", &d, "contacts", edited],
        Some(json!({"embeddedData": {"tier": "platinum"}})),
    )
    .await;
    // Leaves a mailing list, nothing else (the list's count and date move).
    call(
        &client,
        Method::DELETE,
        &["directories", &d, "mailinglists", &ml, "contacts", &leaver],
        None,
    )
    .await;
    call(
        &client,
        Method::DELETE,
        &["directories", &d, "contacts", deleted],
        None,
    )
    .await;
    let created = call(
        &client,
        Method::POST,
        &["directories", &d, "contacts"],
        Some(json!({"firstName": "New", "lastName": "Person", "email": "new.person@example.test"})),
    )
    .await["id"]
        .as_str()
        .unwrap()
        .to_string();
    // A transaction only the per-contact read shows: it waits for the refresh.
    let tx = call(
        &client,
        Method::POST,
        &["directories", &d, "transactions"],
        Some(json!({"t1": {"contactId": buyer, "mailingListId": ml,
            "transactionDate": "2026-01-05 14:30:00", "data": {"orderId": "A-9"}}})),
    )
    .await["createdTransactions"]["t1"]["id"]
        .as_str()
        .unwrap()
        .to_string();

    // Same run time: no contact's periodic refresh can fall between the two runs.
    let next = run(&client, &mut dest, T0).await;
    assert_eq!(next.contacts_listed, first.contacts_listed);
    // renamed, edited, the leaver, the new one; the deleted one is gone without a read.
    assert_eq!(next.contacts_read, 4, "{next}");
    let now = dest.state();
    let fresh = from_scratch(&client).await;
    for t in ["directory_contact", "contact_mailing_list_membership"] {
        assert_eq!(rows(&now, t), rows(&fresh, t), "{t}");
    }
    assert!(
        !now.keys("directory_contact")
            .iter()
            .any(|k| k.contains(deleted.as_str()))
    );
    assert!(
        now.keys("directory_contact")
            .iter()
            .any(|k| k.contains(&created))
    );
    let mut lagging = rows(&fresh, "contact_transaction");
    let held = rows(&now, "contact_transaction");
    let missing: Vec<String> = lagging
        .keys()
        .filter(|k| !held.contains_key(*k))
        .cloned()
        .collect();
    assert_eq!(missing.len(), 1, "{missing:?}");
    assert!(missing[0].contains(&tx));
    lagging.remove(&missing[0]);
    assert_eq!(held, lagging);

    // Past the refresh interval every contact has been read once more.
    let quiet = run(&client, &mut dest, T0).await;
    assert_eq!(quiet.contacts_read, 0, "{quiet}");
    let refreshed = run(&client, &mut dest, T0 + 8 * DAY_MS).await;
    assert_eq!(refreshed.contacts_read, refreshed.contacts_listed);
    for t in CONTACT_TABLES {
        assert_eq!(rows(&dest.state(), t), rows(&fresh, t), "{t}");
    }
}

#[tokio::test]
async fn refreshes_spread_over_the_interval_and_zero_reads_every_contact_every_run() {
    let (_h, client) = sim(SimConfig {
        surveys: 1,
        responses: 1,
        contacts: 400,
        ..Default::default()
    })
    .await;
    let mut dest = MemDest::default();
    let first = run(&client, &mut dest, T0).await;
    // Day by day over a week, each contact is read once, and no day reads most of them.
    let mut total = 0;
    for day in 1..=7 {
        let s = run(&client, &mut dest, T0 + day * DAY_MS).await;
        assert!(
            s.contacts_read < first.contacts_listed / 3,
            "day {day}: {} of {}",
            s.contacts_read,
            s.contacts_listed
        );
        total += s.contacts_read;
    }
    assert_eq!(total, first.contacts_listed);

    let every_run = SyncOptions {
        refresh_every: Duration::ZERO,
        ..opts(T0 + 7 * DAY_MS)
    };
    let s = sync(&client, &mut dest, &every_run, &NoProgress)
        .await
        .unwrap();
    assert_eq!(s.contacts_read, s.contacts_listed);
}

#[tokio::test]
async fn more_edits_than_a_search_can_page_through_read_every_contact() {
    let (h, client) = sim(SimConfig {
        surveys: 1,
        responses: 1,
        contacts: 250,
        ..Default::default()
    })
    .await;
    let mut dest = MemDest::default();
    run(&client, &mut dest, T0).await;
    // The search refuses to page past 100 hits, as it does past 10,000.
    h.sim.directory.set_search_limit(100);
    let d = h.sim.directory.default_directory_id();
    let mut url = client.url(&["directories", &d, "contacts"]);
    url.query_pairs_mut()
        .append_pair("useNewPaginationScheme", "true");
    let listed: Vec<Json> = client.paginate(url).try_collect().await.unwrap();
    for c in listed.iter().take(150) {
        call(
            &client,
            Method::PUT,
            &[
                "directories",
                &d,
                "contacts",
                c["contactId"].as_str().unwrap(),
            ],
            Some(json!({"embeddedData": {"seen": "yes"}})),
        )
        .await;
    }
    let s = run(&client, &mut dest, T0).await;
    assert_eq!(s.contacts_read, 250, "{s}");
    for t in CONTACT_TABLES {
        assert_eq!(
            rows(&dest.state(), t),
            rows(&from_scratch(&client).await, t),
            "{t}"
        );
    }
}

fn calls_of(s: &SyncSummary, stream: &str) -> u64 {
    s.api_calls_by_stream
        .iter()
        .find(|(n, _)| n == stream)
        .map(|(_, c)| *c)
        .unwrap()
}

/// The keys whose live rows differ between two destinations, per table (empty: the same rows).
fn differences(a: &MemState, b: &MemState, tables: &[&str]) -> Vec<String> {
    let mut out = Vec::new();
    for t in tables {
        let (x, y) = (rows(a, t), rows(b, t));
        for k in x.keys().chain(y.keys()) {
            if x.get(k) != y.get(k) {
                out.push(format!("{t} {k}: {:?} vs {:?}", x.get(k), y.get(k)));
            }
        }
    }
    out
}

#[tokio::test]
async fn users_and_distribution_histories_are_read_again_only_when_their_list_shows_a_change() {
    let (h, client) = sim(SimConfig {
        surveys: 2,
        responses: 5,
        contacts: 30,
        ..Default::default()
    })
    .await;
    let tables = [
        "user",
        "distribution",
        "distribution_contact",
        "sms_distribution",
        "sms_distribution_contact",
    ];
    let o = |at| SyncOptions {
        tables: Some(tables.iter().map(|t| t.to_string()).collect()),
        synced_at_ms: Some(at),
        ..Default::default()
    };
    let mut dest = MemDest::default();
    let first = sync(&client, &mut dest, &o(T0), &NoProgress).await.unwrap();
    let users = h.sim.users.read().len() as u64;
    assert!(calls_of(&first, "users") > users, "{first}");
    assert!(dest.state().count("distribution_contact") > 0);
    assert!(dest.state().count("sms_distribution_contact") > 0);

    // Nothing changed: one list page of users; the survey list (the survey stream did not run)
    // and per survey its e-mail and SMS distribution lists, no history.
    // (Each run at its own time: soft deletes mark the rows a run did not write.)
    let idle = sync(&client, &mut dest, &o(T0 + 1000), &NoProgress)
        .await
        .unwrap();
    assert_eq!(calls_of(&idle, "users"), 1, "{idle}");
    assert_eq!(calls_of(&idle, "distributions"), 1 + 2 * 2, "{idle}");

    // A user renamed and one deleted: one detail read; the deleted one is marked deleted.
    let ids: Vec<String> = h.sim.users.read().iter().map(|u| u.id.clone()).collect();
    let admin = ids[0].clone();
    let (renamed, removed) = (&ids[1], &ids[2]);
    call(
        &client,
        Method::PUT,
        &["users", renamed],
        Some(json!({"firstName": "Renamed"})),
    )
    .await;
    call(&client, Method::DELETE, &["users", removed], None).await;
    let next = sync(&client, &mut dest, &o(T0 + 2000), &NoProgress)
        .await
        .unwrap();
    assert_eq!(calls_of(&next, "users"), 2, "{next}");
    let st = dest.state();
    let mut fresh = MemDest::default();
    sync(&client, &mut fresh, &o(T0), &NoProgress)
        .await
        .unwrap();
    assert_eq!(
        differences(&st, &fresh.state(), &tables),
        Vec::<String>::new()
    );
    let gone = st.tables["user"]
        .values()
        .find(|r| st.text("user", r, "id").as_deref() == Some(removed.as_str()))
        .unwrap();
    assert!(gone.deleted, "the removed user is marked deleted");
    assert!(admin.starts_with("UR_"));

    // Past the refresh interval every user and history is read again, with the same result.
    let later = sync(&client, &mut dest, &o(T0 + 8 * DAY_MS), &NoProgress)
        .await
        .unwrap();
    assert!(calls_of(&later, "distributions") > 1 + 2 * 2, "{later}");
    assert_eq!(calls_of(&later, "users"), 1 + users - 1);
    assert_eq!(
        differences(&dest.state(), &fresh.state(), &tables),
        Vec::<String>::new()
    );
}

/// A large directory is read in several commits (here 50 contacts each), so memory stays flat;
/// a run cut short between them leaves nothing the next run does not finish to the same rows.
#[tokio::test]
async fn contacts_commit_in_chunks_and_a_run_cut_between_them_is_finished_by_the_next() {
    let (_h, client) = sim(SimConfig {
        surveys: 1,
        responses: 1,
        contacts: 420,
        ..Default::default()
    })
    .await;
    let chunked = |at| SyncOptions {
        commit_every: 50,
        ..opts(at)
    };
    let fresh = from_scratch(&client).await;
    let mut dest = MemDest::default();
    // Refuse every commit after the fourth: the first load stops between chunks.
    dest.with(|st| st.fail_after = Some(4));
    assert!(
        sync(&client, &mut dest, &chunked(T0), &NoProgress)
            .await
            .is_err()
    );
    assert!(
        dest.state().count("directory_contact") > 0,
        "some chunks were committed"
    );
    assert!(
        dest.state().count("directory_contact") < 445,
        "not all of them"
    );
    dest.with(|st| st.fail_after = None);
    let s = sync(&client, &mut dest, &chunked(T0), &NoProgress)
        .await
        .unwrap();
    assert_eq!(
        s.contacts_read, s.contacts_listed,
        "no cursor yet: all read again"
    );
    let commits = dest.state().commits;
    for t in CONTACT_TABLES {
        assert_eq!(rows(&dest.state(), t), rows(&fresh, t), "{t}");
    }
    // And an idle run after it reads nothing.
    let idle = sync(&client, &mut dest, &chunked(T0), &NoProgress)
        .await
        .unwrap();
    assert_eq!(idle.contacts_read, 0);
    assert!(commits >= 420 / 50, "{commits} commits");

    // A --full run cut short after its first chunk (which deleted the directory's rows), then a
    // plain run: the old cursor must not make it skip the contacts not written yet.
    let done = dest.state().commits;
    dest.with(|st| st.fail_after = Some(done + 2));
    let full = SyncOptions {
        full: true,
        ..chunked(T0)
    };
    assert!(sync(&client, &mut dest, &full, &NoProgress).await.is_err());
    assert!(dest.state().count("directory_contact") < 445);
    dest.with(|st| st.fail_after = None);
    sync(&client, &mut dest, &chunked(T0), &NoProgress)
        .await
        .unwrap();
    for t in CONTACT_TABLES {
        assert_eq!(rows(&dest.state(), t), rows(&fresh, t), "{t}");
    }
}
