//! The REST client: one org, one [`TokenProvider`], an API version. Every call goes through
//! [`SalesforceClient::send`]: bearer token, `Sforce-Limit-Info` parsing, one refresh-and-replay
//! on 401 and `Retry-After` by the shared rules of `xmbridge_auth::retry`, then classification of
//! any error.

use crate::error::{SalesforceError, SfError};
use crate::oauth::TokenProvider;
use reqwest::Method;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use std::collections::HashMap;
use std::sync::Arc;
use xmbridge_auth::RefreshOnce;

/// The API version a new client calls.
const DEFAULT_API_VERSION: &str = "60.0";

/// `Sforce-Limit-Info: api-usage=used/max`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ApiUsage {
    /// API calls the org has made in the last 24 hours.
    pub used: u64,
    /// The org's 24-hour API call allowance.
    pub max: u64,
}

impl ApiUsage {
    /// Reads a `Sforce-Limit-Info` header value; `None` when it holds no well-formed `api-usage`.
    pub fn parse(header: &str) -> Option<ApiUsage> {
        let part = header
            .split(';')
            .map(str::trim)
            .find_map(|p| p.strip_prefix("api-usage="))?;
        let (used, max) = part.split_once('/')?;
        Some(ApiUsage {
            used: used.trim().parse().ok()?,
            max: max.trim().parse().ok()?,
        })
    }
}

/// One field as the linked user sees it (describe reflects field-level security).
#[derive(Clone, Debug, Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FieldDescribe {
    /// The field's API name (`Email`, `Account__c`).
    pub name: String,
    #[serde(default)]
    /// The field's label in the org's language.
    pub label: String,
    #[serde(rename = "type")]
    /// Salesforce's field type (`string`, `reference`, `picklist`, …).
    pub field_type: String,
    #[serde(default)]
    /// Maximum length of a text field (0 for other types).
    pub length: u64,
    /// The linked user may set it on create.
    pub createable: bool,
    /// The linked user may change it on update.
    pub updateable: bool,
    /// The field may be left empty.
    pub nillable: bool,
    #[serde(default)]
    /// Salesforce fills it on create when it is not sent.
    pub defaulted_on_create: bool,
    #[serde(default)]
    /// The field is an external id (an upsert key).
    pub external_id: bool,
    #[serde(default)]
    /// The field can identify a record in a query or upsert.
    pub id_lookup: bool,
    #[serde(default)]
    /// The objects a `reference` field may point to.
    pub reference_to: Vec<String>,
    #[serde(default)]
    /// The relationship name of a `reference` field (`Account` for `AccountId`).
    pub relationship_name: Option<String>,
    #[serde(default)]
    /// The picklist's entries as Salesforce sends them (see [`FieldDescribe::picklist`]).
    pub picklist_values: Vec<Value>,
}

impl FieldDescribe {
    /// Must be sent on create.
    pub fn required_on_create(&self) -> bool {
        self.createable && !self.nillable && !self.defaulted_on_create
    }
    /// Usable as an upsert key.
    pub fn is_upsert_key(&self) -> bool {
        self.external_id || self.name == "Id"
    }
    /// The values of the picklist's entries (empty for other field types).
    pub fn picklist(&self) -> Vec<String> {
        self.picklist_values
            .iter()
            .filter_map(|v| v.get("value").and_then(Value::as_str).map(str::to_string))
            .collect()
    }
}

/// An object as the linked user sees it: its permissions and visible fields.
#[derive(Clone, Debug, Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectDescribe {
    /// The object's API name (`Contact`, `Survey_Response__c`).
    pub name: String,
    #[serde(default)]
    /// The object's label in the org's language.
    pub label: String,
    /// The linked user may create records of it.
    pub createable: bool,
    /// The linked user may update its records.
    pub updateable: bool,
    /// The linked user may delete its records.
    pub deletable: bool,
    #[serde(default)]
    /// The linked user may query it with SOQL.
    pub queryable: bool,
    /// The fields the linked user can see.
    pub fields: Vec<FieldDescribe>,
    #[serde(default)]
    /// The object's record types (the Master included), each with whether the linked user's
    /// profile may use it.
    pub record_type_infos: Vec<RecordTypeInfo>,
}

/// One record type of an object, as the describe shows it to the linked user.
#[derive(Clone, Debug, Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RecordTypeInfo {
    /// The record type's id (`012…`).
    pub record_type_id: String,
    /// Its API name (`Detractor`; `Master` for the master record type).
    #[serde(default)]
    pub developer_name: String,
    /// Its label.
    #[serde(default)]
    pub name: String,
    /// It may be used at all.
    #[serde(default)]
    pub active: bool,
    /// The linked user's profile may use it.
    #[serde(default)]
    pub available: bool,
    /// The user's default for new records.
    #[serde(default)]
    pub default_record_type_mapping: bool,
    /// The master record type (records without a specific one).
    #[serde(default)]
    pub master: bool,
}

impl ObjectDescribe {
    /// The field named `name`, compared ignoring ASCII case.
    pub fn field(&self, name: &str) -> Option<&FieldDescribe> {
        self.fields
            .iter()
            .find(|f| f.name.eq_ignore_ascii_case(name))
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
/// What an upsert by external id did.
pub enum UpsertOutcome {
    /// A new record was created; the new record's id.
    Created(String),
    /// The id is absent for API versions ≤ 45.0 (204, no body).
    Updated(Option<String>),
}

/// One record's result in a Collections call.
#[derive(Clone, Debug, Deserialize, serde::Serialize)]
pub struct RecordResult {
    #[serde(default)]
    /// The record's id, when Salesforce returns one.
    pub id: Option<String>,
    /// Whether this record's operation succeeded.
    pub success: bool,
    #[serde(default)]
    /// On upsert: true when the record was created, false when updated.
    pub created: Option<bool>,
    #[serde(default)]
    /// Why the record failed (empty on success).
    pub errors: Vec<SfError>,
}

struct Answer {
    status: u16,
    body: Vec<u8>,
}

/// A Salesforce REST client for one org and one linked user.
pub struct SalesforceClient {
    http: reqwest::Client,
    tokens: Arc<TokenProvider>,
    version: String,
    describes: parking_lot::Mutex<HashMap<String, Arc<ObjectDescribe>>>,
    usage: parking_lot::Mutex<Option<ApiUsage>>,
}

impl std::fmt::Debug for SalesforceClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SalesforceClient")
            .field("version", &self.version)
            .field("tokens", &self.tokens)
            .finish()
    }
}

fn network(e: reqwest::Error) -> SalesforceError {
    let e = e.without_url();
    SalesforceError::Transient {
        status: None,
        message: format!("network error: {e}"),
        source: Some(Box::new(e)),
    }
}

fn protocol(what: &str, e: serde_json::Error) -> SalesforceError {
    SalesforceError::protocol_from(format!("{what}: {e}"), e)
}

fn enc(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

impl SalesforceClient {
    /// A client calling the API version `60.0` with `http`, authenticated by `tokens`.
    pub fn new(http: reqwest::Client, tokens: Arc<TokenProvider>) -> Self {
        SalesforceClient {
            http,
            tokens,
            version: DEFAULT_API_VERSION.to_string(),
            describes: parking_lot::Mutex::new(HashMap::new()),
            usage: parking_lot::Mutex::new(None),
        }
    }

    /// Uses API version `60.0` style (`v` prefix optional). Upsert updates answer 204 ≤ 45.0.
    pub fn with_version(mut self, version: &str) -> Self {
        self.version = version.trim_start_matches('v').to_string();
        self
    }

    /// The API version the client calls (without the `v`).
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The last `Sforce-Limit-Info` seen.
    pub fn api_usage(&self) -> Option<ApiUsage> {
        *self.usage.lock()
    }

    /// Sends one request to `path` (relative to the instance URL, e.g.
    /// `/services/data/v60.0/sobjects/Contact`); refreshes once and replays on 401.
    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        extra: &[(&str, String)],
    ) -> Result<Answer, SalesforceError> {
        let mut session = self.tokens.current().await?;
        let mut refresh = RefreshOnce::new();
        loop {
            let url = format!("{}{}", session.instance_url.trim_end_matches('/'), path);
            let mut req = self
                .http
                .request(method.clone(), &url)
                .header(session.header.name.clone(), session.header.value.clone())
                .header("Accept", "application/json");
            for (k, v) in extra {
                req = req.header(*k, v);
            }
            if let Some(b) = body {
                req = req.json(b);
            }
            let resp = req.send().await.map_err(network)?;
            let status = resp.status().as_u16();
            let usage = resp
                .headers()
                .get("Sforce-Limit-Info")
                .and_then(|v| v.to_str().ok())
                .and_then(ApiUsage::parse);
            if usage.is_some() {
                *self.usage.lock() = usage;
            }
            let retry_after = xmbridge_auth::retry::retry_after(resp.headers());
            let bytes = resp.bytes().await.map_err(network)?.to_vec();
            if status == 401 {
                if !refresh.retry_after_401(self.tokens.tokens()?, &session.header) {
                    return Err(SalesforceError::TokenExpired {
                        description: "the session was refused again right after a refresh".into(),
                    });
                }
                session = self.tokens.current().await?;
                continue;
            }
            if status == 300 {
                let ids = match serde_json::from_slice::<Value>(&bytes) {
                    Ok(Value::Array(items)) => items
                        .iter()
                        .filter_map(|v| {
                            v.as_str()
                                .map(|s| s.rsplit('/').next().unwrap_or(s).to_string())
                                .or_else(|| v.get("Id").and_then(Value::as_str).map(str::to_string))
                        })
                        .collect(),
                    _ => Vec::new(),
                };
                return Err(SalesforceError::MultipleMatches { ids });
            }
            if status >= 400 {
                return Err(SalesforceError::from_rest(
                    status,
                    retry_after,
                    usage,
                    &bytes,
                ));
            }
            return Ok(Answer {
                status,
                body: bytes,
            });
        }
    }

    fn data(&self, rest: &str) -> String {
        format!("/services/data/v{}{rest}", self.version)
    }

    fn json(a: &Answer, what: &str) -> Result<Value, SalesforceError> {
        serde_json::from_slice(&a.body).map_err(|e| protocol(what, e))
    }

    /// `GET /limits`: the org's API limits as the linked user sees them. The cheapest call that
    /// needs a valid token and the "API Enabled" permission, so it proves an account works.
    pub async fn limits(&self) -> Result<Value, SalesforceError> {
        let a = self
            .send(Method::GET, &self.data("/limits"), None, &[])
            .await?;
        Self::json(&a, "limits")
    }

    /// The object as the linked user sees it; cached per object until [`Self::forget_describe`].
    pub async fn describe(&self, object: &str) -> Result<Arc<ObjectDescribe>, SalesforceError> {
        if let Some(d) = self.describes.lock().get(object) {
            return Ok(d.clone());
        }
        let a = self
            .send(
                Method::GET,
                &self.data(&format!("/sobjects/{}/describe", enc(object))),
                None,
                &[],
            )
            .await?;
        let d: ObjectDescribe =
            serde_json::from_slice(&a.body).map_err(|e| protocol("describe", e))?;
        let d = Arc::new(d);
        self.describes.lock().insert(object.to_string(), d.clone());
        Ok(d)
    }

    /// Drops a cached describe (after a schema-related error).
    pub fn forget_describe(&self, object: &str) {
        self.describes.lock().remove(object);
    }

    /// Creates a record; returns its id.
    pub async fn create(
        &self,
        object: &str,
        fields: &Map<String, Value>,
    ) -> Result<String, SalesforceError> {
        let body = Value::Object(fields.clone());
        let a = self
            .send(
                Method::POST,
                &self.data(&format!("/sobjects/{}", enc(object))),
                Some(&body),
                &[],
            )
            .await?;
        let v = Self::json(&a, "create")?;
        v.get("id")
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| SalesforceError::protocol(format!("create answered without an id: {v}")))
    }

    /// Reads one record of `object` by id: `fields`, or every field when empty.
    pub async fn get(
        &self,
        object: &str,
        id: &str,
        fields: &[&str],
    ) -> Result<Value, SalesforceError> {
        let mut path = self.data(&format!("/sobjects/{}/{}", enc(object), enc(id)));
        if !fields.is_empty() {
            path.push_str(&format!("?fields={}", enc(&fields.join(","))));
        }
        let a = self.send(Method::GET, &path, None, &[]).await?;
        Self::json(&a, "read")
    }

    /// Changes the given fields of one record of `object`.
    pub async fn update(
        &self,
        object: &str,
        id: &str,
        fields: &Map<String, Value>,
    ) -> Result<(), SalesforceError> {
        let body = Value::Object(fields.clone());
        self.send(
            Method::PATCH,
            &self.data(&format!("/sobjects/{}/{}", enc(object), enc(id))),
            Some(&body),
            &[],
        )
        .await?;
        Ok(())
    }

    /// Upsert by external id: created or updated; several matches → `MultipleMatches`.
    pub async fn upsert(
        &self,
        object: &str,
        external_id_field: &str,
        external_id: &str,
        fields: &Map<String, Value>,
    ) -> Result<UpsertOutcome, SalesforceError> {
        let body = Value::Object(fields.clone());
        let a = self
            .send(
                Method::PATCH,
                &self.data(&format!(
                    "/sobjects/{}/{}/{}",
                    enc(object),
                    enc(external_id_field),
                    enc(external_id)
                )),
                Some(&body),
                &[],
            )
            .await?;
        match a.status {
            201 => {
                let v = Self::json(&a, "upsert")?;
                let id = v.get("id").and_then(Value::as_str).unwrap_or_default();
                Ok(UpsertOutcome::Created(id.to_string()))
            }
            204 => Ok(UpsertOutcome::Updated(None)),
            _ => {
                let v = Self::json(&a, "upsert")?;
                let id = v.get("id").and_then(Value::as_str).map(str::to_string);
                if v.get("created").and_then(Value::as_bool) == Some(true) {
                    Ok(UpsertOutcome::Created(id.unwrap_or_default()))
                } else {
                    Ok(UpsertOutcome::Updated(id))
                }
            }
        }
    }

    /// Deletes one record of `object` by id.
    pub async fn delete(&self, object: &str, id: &str) -> Result<(), SalesforceError> {
        self.send(
            Method::DELETE,
            &self.data(&format!("/sobjects/{}/{}", enc(object), enc(id))),
            None,
            &[],
        )
        .await?;
        Ok(())
    }

    /// Starts a SOQL query; pages come from [`QueryPager::next_page`].
    pub fn query(&self, soql: &str) -> QueryPager<'_> {
        QueryPager {
            client: self,
            next: Some(self.data(&format!("/query?q={}", enc(soql)))),
            batch_size: None,
            total_size: None,
        }
    }

    /// Every record of a query, following `nextRecordsUrl` to the end.
    pub async fn query_all(&self, soql: &str) -> Result<Vec<Value>, SalesforceError> {
        let mut pager = self.query(soql);
        let mut out = Vec::new();
        while let Some(page) = pager.next_page().await? {
            out.extend(page);
        }
        Ok(out)
    }

    async fn collection(
        &self,
        method: Method,
        path: String,
        records: Vec<Value>,
        all_or_none: bool,
    ) -> Result<Vec<RecordResult>, SalesforceError> {
        if records.len() > 200 {
            return Err(SalesforceError::Permanent {
                status: 400,
                errors: vec![SfError {
                    error_code: "EXCEEDED_ID_LIMIT".into(),
                    message: format!(
                        "{} records given; sObject Collections take at most 200 per call",
                        records.len()
                    ),
                    fields: Vec::new(),
                }],
            });
        }
        let body = json!({"allOrNone": all_or_none, "records": records});
        let a = self.send(method, &path, Some(&body), &[]).await?;
        serde_json::from_slice(&a.body).map_err(|e| protocol("collections", e))
    }

    /// Creates up to 200 records (each with `attributes.type`); one result per record.
    pub async fn collection_create(
        &self,
        records: Vec<Value>,
        all_or_none: bool,
    ) -> Result<Vec<RecordResult>, SalesforceError> {
        self.collection(
            Method::POST,
            self.data("/composite/sobjects"),
            records,
            all_or_none,
        )
        .await
    }

    /// Upserts up to 200 records of one object by an external id field.
    pub async fn collection_upsert(
        &self,
        object: &str,
        external_id_field: &str,
        records: Vec<Value>,
        all_or_none: bool,
    ) -> Result<Vec<RecordResult>, SalesforceError> {
        let records = records
            .into_iter()
            .map(|mut r| {
                if r.get("attributes").is_none()
                    && let Some(m) = r.as_object_mut()
                {
                    m.insert("attributes".into(), json!({"type": object}));
                }
                r
            })
            .collect();
        self.collection(
            Method::PATCH,
            self.data(&format!(
                "/composite/sobjects/{}/{}",
                enc(object),
                enc(external_id_field)
            )),
            records,
            all_or_none,
        )
        .await
    }
}

/// Pages of a SOQL query.
pub struct QueryPager<'a> {
    client: &'a SalesforceClient,
    next: Option<String>,
    batch_size: Option<u32>,
    /// `totalSize` of the query, known after the first page.
    pub total_size: Option<u64>,
}

impl QueryPager<'_> {
    /// Asks for pages of `n` records (`Sforce-Query-Options: batchSize=n`, 200..2000).
    pub fn batch_size(mut self, n: u32) -> Self {
        self.batch_size = Some(n);
        self
    }

    /// The next page of records, or `None` when the query is exhausted.
    pub async fn next_page(&mut self) -> Result<Option<Vec<Value>>, SalesforceError> {
        let Some(path) = self.next.take() else {
            return Ok(None);
        };
        let extra: Vec<(&str, String)> = self
            .batch_size
            .map(|n| vec![("Sforce-Query-Options", format!("batchSize={n}"))])
            .unwrap_or_default();
        let a = self.client.send(Method::GET, &path, None, &extra).await?;
        let v: Value = serde_json::from_slice(&a.body).map_err(|e| protocol("query", e))?;
        self.total_size = v.get("totalSize").and_then(Value::as_u64);
        let done = v.get("done").and_then(Value::as_bool).unwrap_or(true);
        if !done {
            self.next = v
                .get("nextRecordsUrl")
                .and_then(Value::as_str)
                .map(str::to_string);
        }
        let records = match v.get("records") {
            Some(Value::Array(rs)) => rs.clone(),
            _ => Vec::new(),
        };
        Ok(Some(records))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limit_info_parses() {
        assert_eq!(
            ApiUsage::parse("api-usage=18/5000"),
            Some(ApiUsage {
                used: 18,
                max: 5000
            })
        );
        assert_eq!(
            ApiUsage::parse("api-usage=25/5000; api-bursts=1/100"),
            Some(ApiUsage {
                used: 25,
                max: 5000
            })
        );
        assert_eq!(ApiUsage::parse("nonsense"), None);
    }
}
