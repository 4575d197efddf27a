//! The Salesforce extension's account rules over a real store and vault.

use std::sync::Arc;

use serde_json::json;
use xmbridge_vault::{ExposeSecret, MasterKey, SecretField, SecretString, Vault};
use xmbridge_workflows::accounts::{Access, AccountError, Accounts, LinkRequest};
use xmbridge_workflows::store::{AccountKind, Store, WorkflowStore};

fn setup() -> (tempfile::TempDir, Arc<WorkflowStore>, Accounts) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("state.db");
    let vault = Arc::new(Vault::open(&path, MasterKey::from_bytes([7; 32])).expect("vault opens"));
    let store = Arc::new(WorkflowStore::open(&path).expect("state store opens"));
    let accounts = Accounts::new(store.clone(), vault);
    (dir, store, accounts)
}

fn oauth(name: &str, user: &str, brand: bool) -> LinkRequest {
    LinkRequest {
        name: name.into(),
        system: "salesforce".into(),
        user: user.into(),
        brand,
        kind: AccountKind::OAuth,
        settings: json!({"login_url": "http://127.0.0.1:1", "client_id": "cid"}),
        client_secret: Some(SecretString::from("client-secret-value")),
        refresh_token: Some(SecretString::from("refresh-token-value")),
        org_id: Some("00Dxx0000000001EAA".into()),
    }
}

#[test]
fn a_user_links_at_most_five_salesforce_accounts() {
    let (_d, _s, accounts) = setup();
    for i in 0..5 {
        accounts
            .link(oauth(&format!("sf-{i}"), "pat", false))
            .unwrap();
    }
    let err = accounts.link(oauth("sf-5", "pat", false)).unwrap_err();
    assert!(matches!(err, AccountError::Limit { .. }));
    assert_eq!(
        err.to_string(),
        "user pat already has 5 linked Salesforce accounts (the limit); unlink one with `xmbridge account unlink NAME`"
    );
    // The refused link left nothing behind; another user and brand accounts are not limited.
    assert!(accounts.vault().get_connection("sf-5").is_err());
    accounts.link(oauth("sf-sam", "sam", false)).unwrap();
    accounts.link(oauth("sf-brand", "pat", true)).unwrap();
    // Unlinking one makes room.
    accounts.unlink("sf-0", "pat").unwrap();
    accounts.link(oauth("sf-5", "pat", false)).unwrap();
}

#[test]
fn secrets_are_sealed_in_the_vault_not_the_store() {
    let (dir, _s, accounts) = setup();
    let row = accounts.link(oauth("sf-prod", "pat", false)).unwrap();
    assert!(!format!("{row:?}").contains("refresh-token-value"));
    let t = accounts
        .vault()
        .get_secret("sf-prod", SecretField::RefreshToken)
        .unwrap()
        .unwrap();
    assert_eq!(t.expose_secret(), "refresh-token-value");
    let raw = std::fs::read(dir.path().join("state.db")).unwrap();
    let needle = b"refresh-token-value";
    assert!(!raw.windows(needle.len()).any(|w| w == needle));
}

#[test]
fn a_brand_account_is_shared_with_chosen_users_only() {
    let (_d, _s, accounts) = setup();
    accounts.link(oauth("sf-brand", "admin", true)).unwrap();
    accounts.link(oauth("sf-pat", "pat", false)).unwrap();
    // Only the owner shares, and only brand accounts.
    let err = accounts
        .share("sf-brand", "pat", &["pat".into()])
        .unwrap_err();
    assert!(err.to_string().contains("only admin can share it"), "{err}");
    let err = accounts
        .share("sf-pat", "pat", &["sam".into()])
        .unwrap_err();
    assert!(matches!(err, AccountError::NotShareable { .. }), "{err}");
    accounts
        .share("sf-brand", "admin", &["pat".into(), "kim".into()])
        .unwrap();
    let pat: Vec<_> = accounts
        .visible_to("pat")
        .unwrap()
        .into_iter()
        .map(|(a, how)| (a.name, how))
        .collect();
    assert_eq!(
        pat,
        vec![
            ("sf-brand".to_string(), Access::Granted),
            ("sf-pat".to_string(), Access::Owned)
        ]
    );
    assert!(accounts.visible_to("sam").unwrap().is_empty());
}

#[test]
fn a_workflow_runs_only_with_accounts_its_owner_owns_or_was_granted() {
    let (_d, _s, accounts) = setup();
    accounts.link(oauth("sf-pat", "pat", false)).unwrap();
    accounts.link(oauth("sf-sam", "sam", false)).unwrap();
    accounts.link(oauth("sf-brand", "admin", true)).unwrap();
    assert_eq!(
        accounts.resolve("pat", "salesforce", None).unwrap().name,
        "sf-pat"
    );
    let err = accounts
        .resolve("pat", "salesforce", Some("sf-sam"))
        .unwrap_err();
    // A private account cannot be shared: the fix names what can work instead.
    let msg = err.to_string();
    assert!(
        msg.starts_with("workflow owner pat may not use account sf-sam: it is sam's private account, which cannot be shared; link an account as pat"),
        "{msg}"
    );
    assert!(!msg.contains("account share"), "{msg}");
    assert!(
        msg.contains("xmbridge workflow transfer WORKFLOW --to sam"),
        "{msg}"
    );
    // A brand account not shared with the user: an admin shares it.
    let msg = accounts
        .resolve("pat", "salesforce", Some("sf-brand"))
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("ask an admin to run `xmbridge account share sf-brand --with pat`"),
        "{msg}"
    );
    accounts
        .share("sf-brand", "admin", &["pat".into()])
        .unwrap();
    assert_eq!(
        accounts
            .resolve("pat", "salesforce", Some("sf-brand"))
            .unwrap()
            .name,
        "sf-brand"
    );
    // Two usable accounts and no name: ambiguous, says which.
    let err = accounts.resolve("pat", "salesforce", None).unwrap_err();
    assert!(err.to_string().contains("sf-brand, sf-pat"), "{err}");
    let err = accounts.resolve("kim", "servicenow", None).unwrap_err();
    assert!(err.to_string().contains("--servicenow"), "{err}");
}

#[test]
fn reauthorizing_resumes_the_workflows_the_refused_token_paused() {
    let (_d, store, accounts) = setup();
    accounts.link(oauth("sf-prod", "pat", false)).unwrap();
    store.set_token_ok("sf-prod", false).unwrap();
    store
        .set_paused("wf-a", "account token expired", "fix", Some("sf-prod"))
        .unwrap();
    store
        .set_paused("wf-b", "paused by pat", "fix", None)
        .unwrap();
    let err = accounts.reauthorize("sf-prod", "sam", None).unwrap_err();
    assert!(matches!(err, AccountError::NotOwner { .. }));
    let resumed = accounts
        .reauthorize("sf-prod", "pat", Some(&SecretString::from("new-refresh")))
        .unwrap();
    assert_eq!(resumed, vec!["wf-a"]);
    assert!(!store.workflow_state("wf-a").unwrap().paused);
    assert!(store.workflow_state("wf-b").unwrap().paused);
    assert!(store.get_account("sf-prod").unwrap().token_ok);
    let t = accounts
        .vault()
        .get_secret("sf-prod", SecretField::RefreshToken)
        .unwrap()
        .unwrap();
    assert_eq!(t.expose_secret(), "new-refresh");
}
