//! What `workflow test` needs from live systems: a stored response turned into the event a
//! workflow would get, and the describes its mappings are checked against — Salesforce's own,
//! and for ServiceNow one built from the table's dictionary, the user's roles and the ACLs.

use std::sync::Arc;

use futures_util::future::BoxFuture;
use serde_json::Value;
use xmbridge_auth::SecretString;
use xmbridge_salesforce::{ClientCredentials, SalesforceClient, TokenProvider};
use xmbridge_servicenow::{Access, ServiceNowClient};
use xmbridge_workflows::definition::Step;
use xmbridge_workflows::mapping::{
    AccessNote, FieldDescribe, ObjectDescribe, SalesforceSchema, SchemaError, TargetSchema,
};
use xmbridge_workflows::preflight::Describers;

use crate::connection::Connected;
use crate::{Result, RuntimeError};

/// The event of response `response_id` of survey `survey_id`, fetched through the connection
/// `name`, as a Qualtrics-triggered workflow would get it.
pub async fn response_event(
    connected: &Connected,
    name: &str,
    survey_id: &str,
    response_id: &str,
) -> Result<Value> {
    let client = &connected.client;
    let response: Value = client
        .get(client.url(&["surveys", survey_id, "responses", response_id]))
        .await
        .map_err(|source| RuntimeError::Connection {
            message: format!(
                "cannot fetch response {response_id} of survey {survey_id} through connection '{name}'"
            ),
            source,
        })?;
    let survey: Value = client
        .get(client.url(&["surveys", survey_id]))
        .await
        .map_err(|source| RuntimeError::Connection {
            message: format!("cannot fetch survey {survey_id} through connection '{name}'"),
            source,
        })?;
    // The builder live events use, so the test shows exactly what a delivery will see.
    Ok(crate::workflow::enriched_event(
        &Value::Object(Default::default()),
        survey_id,
        response_id,
        response,
        survey["name"].as_str().map(str::to_string),
    ))
}

/// Live describes through a server-to-server (client credentials) Salesforce app.
pub fn salesforce_schema(
    token_url: &str,
    client_id: String,
    client_secret: SecretString,
) -> SalesforceSchema {
    let creds = ClientCredentials {
        token_url: token_url.to_string(),
        client_id,
        client_secret,
    };
    let http = reqwest::Client::new();
    let tokens = TokenProvider::client_credentials(http.clone(), creds);
    SalesforceSchema {
        client: Arc::new(SalesforceClient::new(http, Arc::new(tokens))),
    }
}

/// One describe source given for every Salesforce step of a workflow under test (a file, or a
/// server-to-server app); the other steps are still checked live as their linked accounts.
pub struct SalesforceDescribes {
    /// Answers for the Salesforce steps.
    pub salesforce: Box<dyn TargetSchema>,
    /// Answers for the rest.
    pub others: AccountDescribes,
}

impl Describers for SalesforceDescribes {
    fn schema_for(&self, step: &Step) -> Option<&dyn TargetSchema> {
        match step.system {
            xmbridge_actions::System::Salesforce => Some(self.salesforce.as_ref()),
            _ => self.others.schema_for(step),
        }
    }

    fn account_problem(&self, step: &Step) -> Option<String> {
        match step.system {
            // The given describe stands in for the account.
            xmbridge_actions::System::Salesforce => None,
            _ => self.others.account_problem(step),
        }
    }
}

/// What a ServiceNow user may do to a table, read without writing: the table must exist and be
/// readable (a delivery looks a record up by its correlation field before it creates one); its
/// fields come from the dictionary; create and edit access from the user's roles and the
/// table's ACLs. Where the instance does not let the user read its roles or the ACLs, or no ACL
/// names the table itself (it may inherit one from a parent table, which is not followed), that
/// access is "not checked" with the reason.
pub struct ServiceNowSchema {
    /// A client signed in as the step's linked account.
    pub client: Arc<ServiceNowClient>,
}

impl ServiceNowSchema {
    async fn build(&self, table: &str) -> std::result::Result<ObjectDescribe, SchemaError> {
        use xmbridge_servicenow::{Error, ListOptions};
        let unavailable = |e: Error| SchemaError::Unavailable {
            object: table.to_string(),
            reason: e.to_string(),
        };
        let probe = self
            .client
            .list_all(
                table,
                ListOptions {
                    fields: vec!["sys_id".into()],
                    page_size: 1,
                    max_rows: Some(1),
                    ..Default::default()
                },
            )
            .await;
        match probe {
            Ok(_) => {}
            Err(Error::Permanent { status: 400, .. } | Error::UnknownField { .. }) => {
                return Err(SchemaError::UnknownObject {
                    object: table.to_string(),
                });
            }
            Err(e @ Error::Permanent { status: 403, .. }) => {
                return Err(SchemaError::Refused {
                    object: table.to_string(),
                    message: format!(
                        "the linked ServiceNow user may not read {table} ({e}); a delivery looks a record up before it writes one, so give the user a role the table's read ACL accepts"
                    ),
                });
            }
            Err(e) => return Err(unavailable(e)),
        }
        let dictionary = self.client.fields(table).await.map_err(unavailable)?;
        let roles = self.client.my_roles().await;
        let mut create_note = AccessNote::default();
        let mut edit_note = AccessNote::default();
        let (mut createable, mut updateable) = (true, true);
        // The ACLs and roles field access is decided by; `None`: every field counts as writable
        // (an admin, or access that could not be read and is reported as not checked).
        let mut decided_by: Option<(Vec<xmbridge_servicenow::AccessControl>, Vec<String>)> = None;
        match roles {
            Err(e) => {
                let why = |access: &str| {
                    format!(
                        "{access} access to {table}: the linked ServiceNow user cannot read its own roles (sys_user_has_role): {e}"
                    )
                };
                create_note.unknown = Some(why("create"));
                edit_note.unknown = Some(why("edit"));
            }
            Ok(roles) if roles.iter().any(|r| r == "admin") => {}
            Ok(roles) => match self.client.access_controls(table).await {
                Err(e) => {
                    let held = if roles.is_empty() {
                        "none".to_string()
                    } else {
                        roles.join(", ")
                    };
                    let why = |access: &str| {
                        format!(
                            "{access} access to {table}: the linked ServiceNow user cannot read the ACLs ({e}); to have it checked, let one of the user's roles ({held}) read sys_security_acl and sys_security_acl_role (base instances allow security_admin only)"
                        )
                    };
                    create_note.unknown = Some(why("create"));
                    edit_note.unknown = Some(why("edit"));
                }
                Ok(acls) => {
                    for (op, label, flag, note) in [
                        ("create", "create", &mut createable, &mut create_note),
                        ("write", "edit", &mut updateable, &mut edit_note),
                    ] {
                        match xmbridge_servicenow::decide(&acls, &roles, table, op) {
                            Access::Granted => {}
                            Access::Denied { roles: needed } => {
                                *flag = false;
                                note.how_to_get = Some(if needed.is_empty() {
                                    format!("no role passes the {op} ACL on {table}")
                                } else {
                                    format!("a role its {op} ACL accepts: {}", needed.join(", "))
                                });
                            }
                            Access::NoRule => {
                                note.unknown = Some(format!(
                                    "{label} access to {table}: no {op} ACL names {table} itself; it may inherit one from a parent table or the `*` rules, which this check does not follow"
                                ));
                            }
                        }
                    }
                    decided_by = Some((acls, roles));
                }
            },
        }
        // A field ACL (`table.field`, else `table.*`) decides; without one the table's does.
        let field_access = |field: &str, op: &str| {
            decided_by.as_ref().is_none_or(|(acls, roles)| {
                [format!("{table}.{field}"), format!("{table}.*")]
                    .iter()
                    .map(|name| xmbridge_servicenow::decide(acls, roles, name, op))
                    .find(|a| *a != Access::NoRule)
                    .is_none_or(|a| a == Access::Granted)
            })
        };
        let mut fields: Vec<FieldDescribe> = dictionary
            .keys()
            .map(|name| FieldDescribe {
                name: name.clone(),
                // Every value travels as text; ServiceNow converts it.
                type_: "string".into(),
                createable: !name.starts_with("sys_") && field_access(name, "create"),
                updateable: !name.starts_with("sys_") && field_access(name, "write"),
                nillable: true,
                defaulted_on_create: true,
                ..Default::default()
            })
            .collect();
        fields.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(ObjectDescribe {
            name: table.to_string(),
            createable,
            updateable,
            fields,
            create_note,
            edit_note,
            record_types: Vec::new(),
        })
    }
}

impl TargetSchema for ServiceNowSchema {
    fn describe<'a>(
        &'a self,
        object: &'a str,
    ) -> BoxFuture<'a, std::result::Result<ObjectDescribe, SchemaError>> {
        Box::pin(self.build(object))
    }
}

/// Live describes as each Salesforce or ServiceNow step's own linked account (the owner's,
/// resolved by the rule a delivery follows), so permissions are checked for the user a delivery
/// runs as. A step whose account cannot be used (none linked, not granted, token expired) is a
/// problem.
pub struct AccountDescribes {
    by_step: std::collections::HashMap<String, std::result::Result<Box<dyn TargetSchema>, String>>,
}

impl AccountDescribes {
    /// The describes for the Salesforce and ServiceNow steps of `workflow`.
    pub fn for_workflow(
        vault: &Arc<xmbridge_vault::Vault>,
        store: Arc<xmbridge_workflows::store::WorkflowStore>,
        workflow: &xmbridge_workflows::definition::Workflow,
        registry: &xmbridge_actions::Registry,
    ) -> AccountDescribes {
        use xmbridge_workflows::accounts::Accounts;
        let accounts = Accounts::new(store, vault.clone());
        let mut by_step = std::collections::HashMap::new();
        for step in &workflow.steps {
            let Some(external) = crate::systems::external(step.system) else {
                continue;
            };
            let schema = accounts
                .resolve(
                    &workflow.owner,
                    external.system.as_str(),
                    step.account.as_deref(),
                )
                .map_err(|e| e.to_string())
                .and_then(|row| {
                    if row.token_ok {
                        Ok(row)
                    } else {
                        Err(format!(
                            "account {} of {} has an expired token: re-authorize with `{}`",
                            row.name,
                            row.owner,
                            Accounts::reauthorize_command(&row)
                        ))
                    }
                })
                .and_then(|row| {
                    let spec = registry
                        .get(&step.action)
                        .map(|a| a.spec())
                        .ok_or_else(|| format!("unknown action {}", step.action))?;
                    let ctx = crate::systems::account_context(vault, &row, spec)
                        .map_err(|e| e.to_string())?;
                    let schema: Option<Box<dyn TargetSchema>> = match step.system {
                        xmbridge_actions::System::Salesforce => ctx
                            .get::<xmbridge_actions::salesforce::SalesforceConnection>()
                            .map(|c| {
                                Box::new(SalesforceSchema {
                                    client: c.client.clone(),
                                }) as Box<dyn TargetSchema>
                            }),
                        _ => ctx.get::<Arc<ServiceNowClient>>().map(|c| {
                            Box::new(ServiceNowSchema { client: c.clone() })
                                as Box<dyn TargetSchema>
                        }),
                    };
                    schema.ok_or_else(|| {
                        format!("no {} client for account {}", step.system.title(), row.name)
                    })
                });
            by_step.insert(step.name.clone(), schema);
        }
        AccountDescribes { by_step }
    }
}

impl Describers for AccountDescribes {
    fn schema_for(&self, step: &Step) -> Option<&dyn TargetSchema> {
        match self.by_step.get(&step.name) {
            Some(Ok(s)) => Some(s.as_ref()),
            _ => None,
        }
    }

    fn account_problem(&self, step: &Step) -> Option<String> {
        match self.by_step.get(&step.name) {
            Some(Err(e)) => Some(e.clone()),
            _ => None,
        }
    }
}
