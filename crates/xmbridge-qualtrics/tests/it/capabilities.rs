//! "Save & Test" against the simulator: table groups by permission.

use xmbridge_qualtrics::capabilities::{Access, probe};
use xmbridge_qualtrics::{Auth, BaseUrl, Client};
use xmbridge_sim::SimConfig;

fn client(base: &str, token: &str) -> Client {
    Client::builder(BaseUrl::parse(base).unwrap(), Auth::api_token(token))
        .build()
        .unwrap()
}

fn access<'a>(c: &'a xmbridge_qualtrics::capabilities::Capabilities, group: &str) -> &'a Access {
    &c.groups
        .iter()
        .find(|g| g.group.name == group)
        .unwrap()
        .access
}

#[tokio::test]
async fn brand_admin_can_sync_everything_and_the_default_directory_is_found() {
    let h = xmbridge_test_kit::sim::qualtrics(SimConfig {
        surveys: 2,
        responses: 5,
        ..Default::default()
    })
    .await;
    let caps = probe(&client(&h.base_url, &h.sim.cfg.admin_token()), None)
        .await
        .unwrap();
    assert!(caps.can_sync());
    assert!(
        caps.groups.iter().all(|g| g.access == Access::Ok),
        "{caps:?}"
    );
    assert_eq!(caps.groups.len(), 7);
    assert!(caps.directory_discovered);
    assert_eq!(
        caps.directory.as_deref(),
        Some(h.sim.directory.default_directory_id().as_str())
    );
}

#[tokio::test]
async fn without_manage_directories_batches_are_skipped_and_the_rest_syncs() {
    let h = xmbridge_test_kit::sim::qualtrics(SimConfig {
        surveys: 2,
        responses: 5,
        ..Default::default()
    })
    .await;
    let viewer = h.sim.users.read()[2].api_token.clone();
    let caps = probe(&client(&h.base_url, &viewer), None).await.unwrap();
    assert!(caps.can_sync(), "{caps:?}");
    match access(&caps, "transaction batches") {
        Access::Skipped(why) => {
            assert!(why.contains("Manage Directories"), "{why}");
            assert!(
                why.contains("Admin → Users → permissions → Contacts"),
                "{why}"
            );
        }
        other => panic!("{other:?}"),
    }
    // Not a brand administrator either.
    assert!(matches!(access(&caps, "users"), Access::Skipped(_)));
    assert_eq!(access(&caps, "responses"), &Access::Ok);
    assert_eq!(access(&caps, "directories and contacts"), &Access::Ok);
}
