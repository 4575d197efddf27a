//! Inbound hooks: each hook workflow's secret, its endpoint URL, what protects it, and the
//! Qualtrics event subscriptions behind `qualtrics-response` triggers.
//!
//! It owns the per-workflow secret sealed in the vault under the connection `hook.{workflow}`
//! (the Qualtrics subscription's shared key, the Salesforce endpoint token, the ServiceNow shared
//! secret — one 256-bit random value, created when the workflow is added or first run), the
//! description of a hook's protection that `workflow add|test|endpoint` print, and
//! [`reconcile_subscriptions`], which keeps exactly one subscription per running workflow and
//! removes the ones this installation made that nothing uses any more. It must not answer calls
//! (that is `xmbridge-server`) or hold the secret anywhere but the vault.

use std::collections::HashSet;

use serde_json::{Map, Value, json};
use xmbridge_actions::{ActionContext, ActionError, ActionRequest, Registry, System};
use xmbridge_vault::{ExposeSecret, SecretField, SecretString, Vault, VaultError};

use crate::accounts::Accounts;
use crate::definition::{HookAuth, Trigger, Workflow};
use crate::store::{Store, StoreError, SubscriptionRecord, now_ms};

/// Vault connections holding hook secrets are named `hook.{workflow}`.
pub const HOOK_CONNECTION_PREFIX: &str = "hook.";

/// The query parameter of a Salesforce endpoint URL that carries the token.
pub const TOKEN_PARAM: &str = "token";

fn connection_name(workflow: &str) -> String {
    format!("{HOOK_CONNECTION_PREFIX}{workflow}")
}

/// The workflow's hook secret, if one was made.
pub fn secret(vault: &Vault, workflow: &str) -> Result<Option<SecretString>, VaultError> {
    let conn = connection_name(workflow);
    if vault.get_connection(&conn).is_err() {
        return Ok(None);
    }
    vault.get_secret(&conn, SecretField::SharedKey)
}

/// The workflow's hook secret, made (and sealed) if there is none yet; `true` when it is new.
pub fn ensure_secret(vault: &Vault, workflow: &str) -> Result<(SecretString, bool), VaultError> {
    if let Some(s) = secret(vault, workflow)? {
        return Ok((s, false));
    }
    let conn = connection_name(workflow);
    let key = xmbridge_vault::random_secret()?;
    if vault.get_connection(&conn).is_err() {
        vault.add_connection(
            &conn,
            System::Qualtrics,
            json!({"kind": "workflow-hook", "workflow": workflow}),
        )?;
    }
    vault.set_secret(&conn, SecretField::SharedKey, &key)?;
    Ok((key, true))
}

/// Forgets the workflow's hook secret (its endpoint stops accepting anything).
pub fn remove_secret(vault: &Vault, workflow: &str) -> Result<bool, VaultError> {
    let conn = connection_name(workflow);
    if vault.get_connection(&conn).is_err() {
        return Ok(false);
    }
    vault.remove_connection(&conn)?;
    Ok(true)
}

/// The URL the calling system posts to, `public_base` being how it reaches the receiver
/// (`https://hooks.example.org`). Only a Salesforce URL holds the secret; treat it as one.
pub fn endpoint_url(
    public_base: &str,
    trigger: &Trigger,
    workflow: &str,
    secret: &SecretString,
) -> Option<String> {
    let path = trigger.hook_path(workflow)?;
    let base = public_base.trim_end_matches('/');
    Some(match trigger {
        Trigger::SalesforceOutbound { .. } => {
            let token: String =
                url::form_urlencoded::byte_serialize(secret.expose_secret().as_bytes()).collect();
            format!("{base}{path}?{TOKEN_PARAM}={token}")
        }
        _ => format!("{base}{path}"),
    })
}

/// Whose organization a Salesforce hook accepts, besides the endpoint token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OrgCheck {
    /// `organization_id` in the trigger.
    Pinned(String),
    /// The org of the owner's linked Salesforce account.
    Linked {
        /// The linked account's name.
        account: String,
        /// Its organization id (`00D…`).
        org_id: String,
    },
    /// Not checked, and why (the token alone authenticates).
    NotChecked(String),
}

impl OrgCheck {
    /// The org id to require, if any.
    pub fn org_id(&self) -> Option<&str> {
        match self {
            OrgCheck::Pinned(o) | OrgCheck::Linked { org_id: o, .. } => Some(o),
            OrgCheck::NotChecked(_) => None,
        }
    }
}

/// What a workflow's inbound endpoint demands of a caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Protection {
    /// How the caller authenticates (shared-key HMAC, endpoint token or shared secret).
    pub auth: HookAuth,
    /// Salesforce hooks only.
    pub org: Option<OrgCheck>,
}

impl Protection {
    /// One line for people, e.g. `endpoint-token (secret token in the endpoint URL (?token=…));
    /// OrganizationId must be 00D… (pinned in the trigger)`.
    pub fn describe(&self) -> String {
        let mut s = format!("{} ({})", self.auth.word(), self.auth.describe());
        match &self.org {
            Some(OrgCheck::Pinned(o)) => {
                s.push_str(&format!(
                    "; OrganizationId must be {o} (organization_id of the trigger)"
                ))
            }
            Some(OrgCheck::Linked { account, org_id }) => s.push_str(&format!(
                "; OrganizationId must be {org_id} (the org of the owner's linked account {account})"
            )),
            Some(OrgCheck::NotChecked(why)) => {
                s.push_str(&format!("; OrganizationId not checked: {why}"))
            }
            None => {}
        }
        s
    }

    /// The same for `--json` output: `auth`, `description` and `organization` (`null` when not
    /// a Salesforce hook).
    pub fn to_json(&self) -> Value {
        let org = match &self.org {
            Some(OrgCheck::Pinned(o)) => json!({"checked": true, "org_id": o, "from": "trigger"}),
            Some(OrgCheck::Linked { account, org_id }) => {
                json!({"checked": true, "org_id": org_id, "from": "linked account", "account": account})
            }
            Some(OrgCheck::NotChecked(why)) => json!({"checked": false, "why": why}),
            None => Value::Null,
        };
        json!({"auth": self.auth.word(), "description": self.auth.describe(), "organization": org})
    }
}

/// The protection of `workflow`'s hook (`None` for triggers without one). The org of a Salesforce
/// hook comes from the trigger's `organization_id`, else from the owner's linked account.
pub fn protection(workflow: &Workflow, accounts: Option<&Accounts>) -> Option<Protection> {
    let auth = workflow.trigger.hook_auth()?;
    let org = match &workflow.trigger {
        Trigger::SalesforceOutbound {
            organization_id: Some(o),
            ..
        } => Some(OrgCheck::Pinned(o.clone())),
        Trigger::SalesforceOutbound { .. } => Some(match accounts {
            None => OrgCheck::NotChecked("the linked accounts could not be read".into()),
            Some(a) => match a.resolve(&workflow.owner, System::Salesforce.as_str(), None) {
                Ok(row) => match row.org_id {
                    Some(org_id) => OrgCheck::Linked {
                        account: row.name,
                        org_id,
                    },
                    None => OrgCheck::NotChecked(format!(
                        "the organization of {}'s account {} is not known yet (it is learnt when the account signs in)",
                        workflow.owner, row.name
                    )),
                },
                Err(_) => OrgCheck::NotChecked(format!(
                    "no organization_id in the trigger and {} has no single linked Salesforce account; add organization_id = \"00D…\" to the trigger to accept only your org",
                    workflow.owner
                )),
            },
        }),
        _ => None,
    };
    Some(Protection { auth, org })
}

/// Why one workflow's subscription could not be put in order (reported as
/// [`SubscriptionChange::Failed`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum HookError {
    /// Deleting a stale subscription or creating the new one failed at Qualtrics.
    #[error(transparent)]
    Action(#[from] ActionError),
    /// Reading or writing the subscription records failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A subscription a running workflow needs.
pub struct WantedSubscription {
    /// The running `qualtrics-response` workflow.
    pub workflow: String,
    /// `surveyengine.completedResponse.{SV}`
    pub topic: String,
    /// The workflow's public hook URL Qualtrics posts events to.
    pub url: String,
    /// The workflow's hook secret, which Qualtrics signs each event with.
    pub shared_key: SecretString,
}

/// What [`reconcile_subscriptions`] did, one entry per subscription touched or seen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SubscriptionChange {
    /// Already registered as wanted: left as it is.
    Kept {
        /// The workflow it serves.
        workflow: String,
        /// The Qualtrics subscription id.
        id: String,
    },
    /// Registered now.
    Created {
        /// The workflow it serves.
        workflow: String,
        /// The new Qualtrics subscription id.
        id: String,
        /// The event topic (`surveyengine.completedResponse.{SV}`).
        topic: String,
        /// The hook URL events are posted to.
        url: String,
    },
    /// One at our URL that this installation had no record of (made by an earlier version):
    /// replaced, because its shared key cannot be read back.
    Replaced {
        /// The workflow it serves.
        workflow: String,
        /// The id of the subscription deleted.
        old: String,
        /// The id of the one registered in its place.
        id: String,
    },
    /// One this installation made that no running workflow needs any more: deleted upstream.
    Removed {
        /// The workflow it was made for.
        workflow: String,
        /// The deleted Qualtrics subscription id.
        id: String,
        /// Its event topic.
        topic: String,
        /// The hook URL it posted to.
        url: String,
    },
    /// Gone upstream (removed by hand): forgotten.
    Vanished {
        /// The workflow it was made for.
        workflow: String,
        /// The Qualtrics subscription id that no longer exists.
        id: String,
    },
    /// Subscriptions to the workflow's path at other addresses that this installation has no
    /// record of: left alone (another installation may own them).
    Foreign {
        /// The workflow whose path they point at.
        workflow: String,
        /// Their Qualtrics subscription ids.
        ids: Vec<String>,
    },
    /// Listing, creating or deleting at Qualtrics, or recording, failed for this workflow's
    /// subscription.
    Failed {
        /// The workflow concerned.
        workflow: String,
        /// What went wrong, for the operator.
        error: String,
    },
}

impl std::fmt::Display for SubscriptionChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SubscriptionChange::Kept { workflow, id } => {
                write!(
                    f,
                    "workflow {workflow}: Qualtrics event subscription {id} in place"
                )
            }
            SubscriptionChange::Created {
                workflow,
                id,
                topic,
                url,
            } => write!(
                f,
                "workflow {workflow}: registered the Qualtrics event subscription {id} ({topic} → {url})"
            ),
            SubscriptionChange::Replaced { workflow, old, id } => write!(
                f,
                "workflow {workflow}: replaced the Qualtrics event subscription {old} (made by an earlier version; its shared key cannot be read back) with {id}"
            ),
            SubscriptionChange::Removed {
                workflow,
                id,
                topic,
                url,
            } => write!(
                f,
                "workflow {workflow}: removed the Qualtrics event subscription {id} ({topic} → {url}), which nothing uses any more"
            ),
            SubscriptionChange::Vanished { workflow, id } => write!(
                f,
                "workflow {workflow}: the Qualtrics event subscription {id} was removed outside xmbridge; forgotten"
            ),
            SubscriptionChange::Foreign { workflow, ids } => write!(
                f,
                "workflow {workflow}: {} other subscription(s) post to its path at other addresses ({}) and were not made by this installation; left alone — remove leftovers with `xmbridge action delete-subscription --input subscription_id=ID`",
                ids.len(),
                ids.join(", ")
            ),
            SubscriptionChange::Failed { workflow, error } => write!(
                f,
                "workflow {workflow}: could not put its Qualtrics event subscription in order ({error}); its events will not arrive until it is"
            ),
        }
    }
}

async fn run_action(
    registry: &Registry,
    ctx: &ActionContext,
    name: &str,
    inputs: Map<String, Value>,
) -> Result<Value, ActionError> {
    registry
        .find(name)?
        .run(
            ctx,
            ActionRequest {
                inputs,
                delivery_key: None,
            },
        )
        .await
}

fn has_topic(sub: &Value, topic: &str) -> bool {
    sub["topics"]
        .as_str()
        .is_some_and(|t| t.split(',').any(|t| t.trim() == topic))
}

/// Makes the Qualtrics event subscriptions match `wanted` (through `connection`): keeps the ones
/// recorded for the same workflow, topic and URL; creates the missing ones; deletes the ones
/// this installation recorded that are no longer wanted (an old listen or public URL, a removed
/// workflow, another connection). Subscriptions it never made are not deleted.
pub async fn reconcile_subscriptions(
    store: &dyn Store,
    registry: &Registry,
    connection: &str,
    context_for: &(dyn Fn(&str) -> Result<ActionContext, ActionError> + Sync),
    wanted: &[WantedSubscription],
) -> Vec<SubscriptionChange> {
    let mut changes = Vec::new();
    let all_failed = |changes: &mut Vec<SubscriptionChange>, error: String| {
        for w in wanted {
            changes.push(SubscriptionChange::Failed {
                workflow: w.workflow.clone(),
                error: error.clone(),
            });
        }
    };
    let (ctx, upstream) = match context_for(connection) {
        Ok(ctx) => {
            match run_action(registry, &ctx, "look-up-subscriptions-stream", Map::new()).await {
                Ok(list) => (ctx, list.as_array().cloned().unwrap_or_default()),
                Err(e) => {
                    all_failed(&mut changes, e.to_string());
                    return changes;
                }
            }
        }
        Err(e) => {
            all_failed(&mut changes, e.to_string());
            return changes;
        }
    };
    let records = match store.subscriptions() {
        Ok(r) => r,
        Err(e) => {
            all_failed(&mut changes, e.to_string());
            return changes;
        }
    };
    let upstream_ids: HashSet<&str> = upstream.iter().filter_map(|s| s["id"].as_str()).collect();
    let recorded_ids: HashSet<String> = records.iter().map(|r| r.subscription_id.clone()).collect();
    let mut satisfied: HashSet<usize> = HashSet::new();

    for rec in &records {
        let want = wanted
            .iter()
            .position(|w| w.workflow == rec.workflow && w.topic == rec.topic && w.url == rec.url);
        let here = rec.connection == connection;
        if here && !upstream_ids.contains(rec.subscription_id.as_str()) {
            if let Err(e) = store.forget_subscription(&rec.subscription_id) {
                changes.push(SubscriptionChange::Failed {
                    workflow: rec.workflow.clone(),
                    error: e.to_string(),
                });
                continue;
            }
            changes.push(SubscriptionChange::Vanished {
                workflow: rec.workflow.clone(),
                id: rec.subscription_id.clone(),
            });
            continue;
        }
        if let Some(i) = want.filter(|i| here && !satisfied.contains(i)) {
            satisfied.insert(i);
            changes.push(SubscriptionChange::Kept {
                workflow: rec.workflow.clone(),
                id: rec.subscription_id.clone(),
            });
            continue;
        }
        // Not wanted any more: delete it through the connection it was made with.
        let deleted = match if here {
            Ok(ctx.clone())
        } else {
            context_for(&rec.connection)
        } {
            Ok(c) => {
                let mut inputs = Map::new();
                inputs.insert("subscription_id".into(), json!(rec.subscription_id));
                run_action(registry, &c, "delete-subscription", inputs)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }
            Err(e) => Err(e.to_string()),
        };
        let forgotten = deleted.and_then(|()| {
            store
                .forget_subscription(&rec.subscription_id)
                .map_err(|e| e.to_string())
        });
        changes.push(match forgotten {
            Ok(()) => SubscriptionChange::Removed {
                workflow: rec.workflow.clone(),
                id: rec.subscription_id.clone(),
                topic: rec.topic.clone(),
                url: rec.url.clone(),
            },
            Err(error) => SubscriptionChange::Failed {
                workflow: rec.workflow.clone(),
                error: format!(
                    "could not remove the unused subscription {}: {error}",
                    rec.subscription_id
                ),
            },
        });
    }

    for (i, w) in wanted.iter().enumerate() {
        if satisfied.contains(&i) {
            continue;
        }
        let path = w
            .url
            .find("/hooks/")
            .map(|at| &w.url[at..])
            .unwrap_or(&w.url);
        let unrecorded = |s: &&Value| {
            s["id"]
                .as_str()
                .is_some_and(|id| !recorded_ids.contains(id))
                && has_topic(s, &w.topic)
        };
        // At our exact URL: ours from before this installation kept records.
        let stale: Vec<String> = upstream
            .iter()
            .filter(unrecorded)
            .filter(|s| s["publicationUrl"].as_str() == Some(w.url.as_str()))
            .filter_map(|s| s["id"].as_str().map(str::to_string))
            .collect();
        let foreign: Vec<String> = upstream
            .iter()
            .filter(unrecorded)
            .filter(|s| {
                s["publicationUrl"]
                    .as_str()
                    .is_some_and(|u| u != w.url && u.ends_with(path))
            })
            .filter_map(|s| s["id"].as_str().map(str::to_string))
            .collect();
        let mut removed_stale = Ok(());
        for old in &stale {
            let mut inputs = Map::new();
            inputs.insert("subscription_id".into(), json!(old));
            if let Err(e) = run_action(registry, &ctx, "delete-subscription", inputs).await {
                removed_stale = Err(e);
                break;
            }
        }
        let created = match removed_stale {
            Err(e) => Err(HookError::from(e)),
            Ok(()) => {
                let mut inputs = Map::new();
                inputs.insert("topics".into(), json!(w.topic));
                inputs.insert("publication_url".into(), json!(w.url));
                inputs.insert("shared_key".into(), json!(w.shared_key.expose_secret()));
                match run_action(registry, &ctx, "create-subscription", inputs).await {
                    Err(e) => Err(e.into()),
                    Ok(out) => {
                        let id = out["subscriptionId"]
                            .as_str()
                            .unwrap_or_default()
                            .to_string();
                        store
                            .record_subscription(&SubscriptionRecord {
                                subscription_id: id.clone(),
                                workflow: w.workflow.clone(),
                                connection: connection.to_string(),
                                topic: w.topic.clone(),
                                url: w.url.clone(),
                                created_at: now_ms(),
                            })
                            .map(|()| id)
                            .map_err(HookError::from)
                    }
                }
            }
        };
        match created {
            Ok(id) => changes.push(match stale.first() {
                Some(old) => SubscriptionChange::Replaced {
                    workflow: w.workflow.clone(),
                    old: old.clone(),
                    id,
                },
                None => SubscriptionChange::Created {
                    workflow: w.workflow.clone(),
                    id,
                    topic: w.topic.clone(),
                    url: w.url.clone(),
                },
            }),
            Err(e) => changes.push(SubscriptionChange::Failed {
                workflow: w.workflow.clone(),
                error: e.to_string(),
            }),
        }
        if !foreign.is_empty() {
            changes.push(SubscriptionChange::Foreign {
                workflow: w.workflow.clone(),
                ids: foreign,
            });
        }
    }
    changes
}
