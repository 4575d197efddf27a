//! What `workflow test` needs from live systems: a stored response turned into the event a
//! workflow would get, and the Salesforce describes its mapping is checked against.

use std::sync::Arc;

use serde_json::Value;
use xmbridge_auth::SecretString;
use xmbridge_salesforce::{ClientCredentials, SalesforceClient, TokenProvider};
use xmbridge_workflows::definition::Step;
use xmbridge_workflows::mapping::{SalesforceSchema, TargetSchema};
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

/// One describe source for every Salesforce step of a workflow under test (none: the
/// preflight checks without describes).
pub struct SalesforceDescribes(pub Option<Box<dyn TargetSchema>>);

impl Describers for SalesforceDescribes {
    fn schema_for(&self, step: &Step) -> Option<&dyn TargetSchema> {
        match (&self.0, step.system) {
            (Some(s), xmbridge_actions::System::Salesforce) => Some(s.as_ref()),
            _ => None,
        }
    }
}

/// Live describes as each Salesforce step's own linked account (the owner's, resolved by the
/// rule a delivery follows), so permissions are checked for the user a delivery runs as. A step
/// whose account cannot be used (none linked, not granted, token expired) is a problem.
pub struct AccountDescribes {
    by_step: std::collections::HashMap<String, std::result::Result<SalesforceSchema, String>>,
}

impl AccountDescribes {
    /// The describes for the Salesforce steps of `workflow`.
    pub fn for_workflow(
        vault: &Arc<xmbridge_vault::Vault>,
        store: Arc<xmbridge_workflows::store::SqliteStore>,
        workflow: &xmbridge_workflows::definition::Workflow,
        registry: &xmbridge_actions::Registry,
    ) -> AccountDescribes {
        use xmbridge_workflows::accounts::Accounts;
        let accounts = Accounts::new(store, vault.clone());
        let mut by_step = std::collections::HashMap::new();
        for step in &workflow.steps {
            if step.system != xmbridge_actions::System::Salesforce {
                continue;
            }
            let schema = accounts
                .resolve(
                    &workflow.owner,
                    crate::systems::SALESFORCE.system.as_str(),
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
                    ctx.get::<xmbridge_actions::salesforce::SalesforceConnection>()
                        .map(|c| SalesforceSchema {
                            client: c.client.clone(),
                        })
                        .ok_or_else(|| format!("no Salesforce client for account {}", row.name))
                });
            by_step.insert(step.name.clone(), schema);
        }
        AccountDescribes { by_step }
    }
}

impl Describers for AccountDescribes {
    fn schema_for(&self, step: &Step) -> Option<&dyn TargetSchema> {
        match self.by_step.get(&step.name) {
            Some(Ok(s)) => Some(s),
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
