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
