//! [`ServiceNowClient`]: one instance, one account; Table API, properties and import sets.

use crate::auth::{Auth, Source, grant_name, token_source};
use crate::error::Error;
use crate::fields::query_fields;
use futures_util::Stream;
use reqwest::header::HeaderMap;
use reqwest::{Method, StatusCode};
use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::fmt;
use std::time::Duration;
use tokio::sync::Mutex;
use xmbridge_auth::{AuthError, RefreshOnce};

/// One record as the Table API returns it (values are strings, references objects).
pub type Record = Map<String, Value>;

/// `sysparm_display_value`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DisplayValue {
    #[default]
    /// Raw stored values (`false`): sys_ids, codes (the default).
    Value,
    /// Display values (`true`): labels and reference display names.
    Display,
    /// Both (`all`): each field is a `{value, display_value}` object.
    All,
}

/// What to list.
#[derive(Clone, Debug)]
pub struct ListOptions {
    /// Encoded query (`active=true^caller_id.email=pat@example.com`); field names are checked.
    pub query: Option<String>,
    /// Columns to return (default: all); checked like the query's fields.
    pub fields: Vec<String>,
    /// Rows per request (`sysparm_limit`).
    pub page_size: usize,
    /// Stop after this many rows.
    pub max_rows: Option<usize>,
    /// Whether fields come back as stored values, display values or both.
    pub display_value: DisplayValue,
    /// Return references as plain sys_ids.
    pub exclude_reference_link: bool,
}

impl Default for ListOptions {
    fn default() -> Self {
        ListOptions {
            query: None,
            fields: Vec::new(),
            page_size: 100,
            max_rows: None,
            display_value: DisplayValue::Value,
            exclude_reference_link: false,
        }
    }
}

/// One transform outcome of an import-set row.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ImportResult {
    /// The import set record the row was loaded into.
    pub import_set: String,
    /// The staging table the row was written to (`u_…` import table).
    pub staging_table: String,
    /// One entry per transform map run: the target table, record and status.
    pub result: Vec<Value>,
}

/// A ServiceNow instance client. Cheap to share (`Arc`); tokens are refreshed under a lock.
pub struct ServiceNowClient {
    base: String,
    http: reqwest::Client,
    auth: Auth,
    /// The credentials of `auth` on the shared stack of `xmbridge-auth`.
    source: Source,
    /// table → its fields (with the referenced table of reference fields).
    dictionary: Mutex<HashMap<String, HashMap<String, Option<String>>>>,
}

impl fmt::Debug for ServiceNowClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceNowClient")
            .field("base", &self.base)
            .field("auth", &self.auth)
            .finish_non_exhaustive()
    }
}

fn rate_limited(h: &HeaderMap) -> Error {
    Error::RateLimited {
        retry_after: xmbridge_auth::retry::retry_after(h),
        rule: h
            .get("x-ratelimit-rule")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
    }
}

#[derive(Deserialize)]
struct Envelope {
    error: Option<ErrorBody>,
}

#[derive(Deserialize)]
struct ErrorBody {
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    detail: Option<String>,
}

async fn classify(resp: reqwest::Response, what: &str) -> Error {
    let status = resp.status();
    if status == StatusCode::TOO_MANY_REQUESTS {
        return rate_limited(resp.headers());
    }
    let body = resp.bytes().await.unwrap_or_default();
    classify_body(status, &body, what)
}

/// An error answer (not 429) as an [`Error`]. The instance's message and detail are bounded, so
/// a huge answer cannot flood errors, logs and stored errors.
fn classify_body(status: StatusCode, body: &[u8], what: &str) -> Error {
    let (message, detail) = match serde_json::from_slice::<Envelope>(body) {
        Ok(Envelope { error: Some(e) }) => (
            e.message
                .as_deref()
                .map_or_else(|| status.to_string(), xmbridge_auth::upstream_text),
            e.detail.as_deref().map(xmbridge_auth::upstream_text),
        ),
        _ => (status.to_string(), None),
    };
    if xmbridge_auth::StatusClass::of(status.as_u16()).is_server_error() {
        return Error::Transient {
            status: Some(status.as_u16()),
            message,
            source: None,
        };
    }
    if status == StatusCode::NOT_FOUND {
        return Error::NotFound {
            what: what.to_string(),
            message: detail.unwrap_or(message),
        };
    }
    Error::Permanent {
        status: status.as_u16(),
        message,
        detail,
    }
}

fn transport(e: reqwest::Error) -> Error {
    let e = e.without_url();
    Error::Transient {
        status: None,
        message: e.to_string(),
        source: Some(Box::new(e)),
    }
}

fn result_of(v: Value) -> Result<Value, Error> {
    match v {
        Value::Object(mut m) => m
            .remove("result")
            .ok_or_else(|| Error::decode("no `result` in the reply")),
        _ => Err(Error::decode("the reply is not a JSON object")),
    }
}

fn next_link(h: &HeaderMap) -> Option<String> {
    let raw = h.get(reqwest::header::LINK)?.to_str().ok()?;
    raw.split(',').find_map(|part| {
        let (url, params) = part.split_once(';')?;
        params
            .split(';')
            .any(|p| p.trim().replace(' ', "") == "rel=\"next\"")
            .then(|| {
                url.trim()
                    .trim_start_matches('<')
                    .trim_end_matches('>')
                    .to_string()
            })
    })
}

impl ServiceNowClient {
    /// A client for the instance at `base_url` (`https://acme.service-now.com`, or a
    /// simulator's `http://127.0.0.1:PORT`).
    pub fn new(base_url: &str, auth: Auth) -> Result<ServiceNowClient, Error> {
        let url = url::Url::parse(base_url)
            .map_err(|e| Error::config_from(format!("instance URL '{base_url}': {e}"), e))?;
        // Before any network use: a Basic password or OAuth secret only travels over https
        // (plain http to loopback simulators only), to a valid host name.
        xmbridge_auth::check_credential_url("ServiceNow instance URL", &url)
            .map_err(|e| Error::config_from(e.to_string(), e))?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| Error::config_from(format!("HTTP client: {e}"), e))?;
        let base = base_url.trim_end_matches('/').to_string();
        let source = token_source(&auth, &base, &http, None)
            .map_err(|e| Error::config_from(e.to_string(), e))?;
        Ok(ServiceNowClient {
            base,
            http,
            auth,
            source,
            dictionary: Mutex::new(HashMap::new()),
        })
    }

    /// Refreshes the access token when it has less than `margin` left (default 60 s); a margin
    /// longer than the token's life refreshes before every call.
    pub fn with_refresh_margin(mut self, margin: Duration) -> Self {
        match token_source(&self.auth, &self.base, &self.http, Some(margin)) {
            Ok(source) => self.source = source,
            // The same settings built a source in `new`; keep that one.
            Err(e) => {
                tracing::warn!(target: "xmbridge_servicenow", "refresh margin not applied: {e}")
            }
        }
        self
    }

    /// The instance's base URL (`https://INSTANCE.service-now.com`), without a trailing `/`.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// The current refresh token (to store it after a password grant); `None` for Basic and
    /// client credentials.
    pub async fn refresh_token(&self) -> Option<SecretString> {
        self.source.refresh_token()
    }

    /// A token-source failure as this client's error: a refused grant means re-authorize.
    fn auth_error(&self, e: AuthError) -> Error {
        match e {
            AuthError::AccountTokenExpired { detail, .. } => Error::AuthExpired {
                instance: self.base.clone(),
                reason: format!("the {} was refused ({detail})", grant_name(&self.auth)),
            },
            AuthError::Server {
                status: 429,
                retry_after,
                ..
            } => Error::RateLimited {
                retry_after,
                rule: None,
            },
            AuthError::Server { status, .. } => Error::Transient {
                status: Some(status),
                message: "the token endpoint failed".into(),
                source: None,
            },
            AuthError::Network { detail, .. } => Error::Transient {
                status: None,
                message: format!("token call failed: {detail}"),
                source: None,
            },
            e @ AuthError::TlsHandshake { .. } => Error::Transient {
                status: None,
                message: e.to_string(),
                source: Some(Box::new(e)),
            },
            AuthError::BadResponse { detail, .. } => {
                Error::decode(format!("token reply: {detail}"))
            }
            other => Error::config_from(other.to_string(), other),
        }
    }

    /// Sends a request; a 401 on OAuth refreshes the token and replays once.
    async fn send(
        &self,
        method: Method,
        url: &str,
        query: &[(String, String)],
        body: Option<&Value>,
        what: &str,
    ) -> Result<reqwest::Response, Error> {
        let build = || {
            let mut rb = self
                .http
                .request(method.clone(), url)
                .header(reqwest::header::ACCEPT, "application/json")
                .query(query);
            if let Some(b) = body {
                rb = rb.json(b);
            }
            rb
        };
        let tokens = self.source.tokens();
        let mut refresh = RefreshOnce::new();
        loop {
            let header = tokens
                .authorization()
                .await
                .map_err(|e| self.auth_error(e))?;
            let resp = build()
                .header(header.name.clone(), header.value.clone())
                .send()
                .await
                .map_err(transport)?;
            if resp.status() == StatusCode::UNAUTHORIZED {
                if refresh.retry_after_401(tokens, &header) {
                    tracing::debug!(target: "xmbridge_servicenow", "access token refused; refreshing once");
                    continue;
                }
                return Err(Error::AuthExpired {
                    instance: self.base.clone(),
                    reason: match self.auth {
                        Auth::Basic { .. } => "the user name or password was refused (HTTP 401; on instances that block Basic auth for interactive users, the user needs \"web service access only\")".into(),
                        _ => "a freshly issued access token was refused (HTTP 401)".into(),
                    },
                });
            }
            if resp.status().is_success() {
                return Ok(resp);
            }
            return Err(classify(resp, what).await);
        }
    }

    fn table_url(&self, table: &str, sys_id: Option<&str>) -> String {
        match sys_id {
            Some(id) => format!("{}/api/now/table/{table}/{id}", self.base),
            None => format!("{}/api/now/table/{table}", self.base),
        }
    }

    /// The table's fields and, for references, the referenced table: from `sys_dictionary`
    /// when readable, else from one record's keys.
    pub async fn fields(&self, table: &str) -> Result<HashMap<String, Option<String>>, Error> {
        if let Some(f) = self.dictionary.lock().await.get(table) {
            return Ok(f.clone());
        }
        let q = vec![
            ("sysparm_query".to_string(), format!("name={table}")),
            (
                "sysparm_fields".to_string(),
                "element,internal_type,reference".to_string(),
            ),
            ("sysparm_limit".to_string(), "10000".to_string()),
        ];
        let from_dictionary = match self
            .send(
                Method::GET,
                &self.table_url("sys_dictionary", None),
                &q,
                None,
                "sys_dictionary",
            )
            .await
        {
            Ok(resp) => {
                let v: Value = resp.json().await.map_err(|e| {
                    let e = e.without_url();
                    Error::decode_from(e.to_string(), e)
                })?;
                let rows = result_of(v)?;
                let map: HashMap<String, Option<String>> = rows
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|r| {
                        let element = r.get("element")?.as_str()?.to_string();
                        let reference = r
                            .get("reference")
                            .and_then(|v| {
                                v.as_str()
                                    .or_else(|| v.get("value").and_then(Value::as_str))
                            })
                            .filter(|s| !s.is_empty())
                            .map(str::to_string);
                        Some((element, reference))
                    })
                    .collect();
                Some(map).filter(|m| !m.is_empty())
            }
            Err(Error::Permanent { .. } | Error::NotFound { .. }) => None,
            Err(e) => return Err(e),
        };
        let map = match from_dictionary {
            Some(m) => m,
            None => {
                let q = vec![("sysparm_limit".to_string(), "1".to_string())];
                let resp = self
                    .send(Method::GET, &self.table_url(table, None), &q, None, table)
                    .await?;
                let v: Value = resp.json().await.map_err(|e| {
                    let e = e.without_url();
                    Error::decode_from(e.to_string(), e)
                })?;
                let rows = result_of(v)?;
                let first = rows
                    .as_array()
                    .and_then(|a| a.first())
                    .and_then(Value::as_object);
                let Some(first) = first else {
                    return Err(Error::Permanent {
                        status: 400,
                        message: format!(
                            "cannot check field names of {table}: sys_dictionary is not readable and the table has no rows"
                        ),
                        detail: None,
                    });
                };
                first.keys().map(|k| (k.clone(), None)).collect()
            }
        };
        self.dictionary
            .lock()
            .await
            .insert(table.to_string(), map.clone());
        Ok(map)
    }

    /// Checks that every field (dot-walks through references included) exists.
    pub async fn check_fields(&self, table: &str, names: &[String]) -> Result<(), Error> {
        for name in names {
            let mut current = table.to_string();
            let mut parts = name.split('.').peekable();
            while let Some(part) = parts.next() {
                let fields = self.fields(&current).await?;
                let Some(reference) = fields.get(part) else {
                    let mut known: Vec<&String> = fields.keys().collect();
                    known.sort();
                    let known: Vec<&str> = known.iter().map(|s| s.as_str()).collect();
                    return Err(Error::UnknownField {
                        table: current,
                        field: part.to_string(),
                        known: known.join(", "),
                    });
                };
                match (parts.peek(), reference) {
                    (Some(_), Some(target)) => current = target.clone(),
                    // Cannot walk further without the dictionary: the first step was checked.
                    (Some(_), None) => break,
                    (None, _) => {}
                }
            }
        }
        Ok(())
    }

    /// Lists records, page by page, following the `Link` header's `next`. Field names in the
    /// query and field list are checked first: a typo is an [`Error::UnknownField`], never a
    /// query that matches every row.
    pub fn list<'a>(
        &'a self,
        table: &'a str,
        opts: ListOptions,
    ) -> impl Stream<Item = Result<Record, Error>> + 'a {
        enum State {
            Start,
            Next(String),
            Done,
        }
        struct S {
            state: State,
            buffer: std::collections::VecDeque<Record>,
            yielded: usize,
        }
        let first_query = {
            let mut q = vec![(
                "sysparm_limit".to_string(),
                opts.page_size.max(1).to_string(),
            )];
            if let Some(query) = &opts.query {
                q.push(("sysparm_query".into(), query.clone()));
            }
            if !opts.fields.is_empty() {
                q.push(("sysparm_fields".into(), opts.fields.join(",")));
            }
            match opts.display_value {
                DisplayValue::Value => {}
                DisplayValue::Display => q.push(("sysparm_display_value".into(), "true".into())),
                DisplayValue::All => q.push(("sysparm_display_value".into(), "all".into())),
            }
            if opts.exclude_reference_link {
                q.push(("sysparm_exclude_reference_link".into(), "true".into()));
            }
            q
        };
        let init = S {
            state: State::Start,
            buffer: Default::default(),
            yielded: 0,
        };
        futures_util::stream::try_unfold(init, move |mut s| {
            let opts = opts.clone();
            let first_query = first_query.clone();
            async move {
                loop {
                    if opts.max_rows.is_some_and(|m| s.yielded >= m) {
                        return Ok(None);
                    }
                    if let Some(r) = s.buffer.pop_front() {
                        s.yielded += 1;
                        return Ok(Some((r, s)));
                    }
                    let (url, query) = match std::mem::replace(&mut s.state, State::Done) {
                        State::Done => return Ok(None),
                        State::Start => {
                            let mut names = opts.fields.clone();
                            if let Some(q) = &opts.query {
                                names.extend(query_fields(q));
                            }
                            self.check_fields(table, &names).await?;
                            (self.table_url(table, None), first_query.clone())
                        }
                        State::Next(url) => {
                            // Only follow links to the same instance.
                            if !url.starts_with(&format!("{}/", self.base)) {
                                return Err(Error::decode(format!(
                                    "Link next points elsewhere: {url}"
                                )));
                            }
                            (url, Vec::new())
                        }
                    };
                    let resp = match self.send(Method::GET, &url, &query, None, table).await {
                        Ok(r) => r,
                        // v1 answers 404 to an empty page.
                        Err(Error::NotFound { .. }) if url.contains("/api/now/v1/") => {
                            return Ok(None);
                        }
                        Err(e) => return Err(e),
                    };
                    if let Some(next) = next_link(resp.headers()) {
                        s.state = State::Next(next);
                    }
                    let v: Value = resp.json().await.map_err(|e| {
                        let e = e.without_url();
                        Error::decode_from(e.to_string(), e)
                    })?;
                    match result_of(v)? {
                        Value::Array(rows) => {
                            s.buffer.extend(rows.into_iter().filter_map(|r| match r {
                                Value::Object(m) => Some(m),
                                _ => None,
                            }))
                        }
                        _ => return Err(Error::decode("`result` is not a list")),
                    }
                }
            }
        })
    }

    /// Every row [`list`](Self::list) yields, collected.
    pub async fn list_all(&self, table: &str, opts: ListOptions) -> Result<Vec<Record>, Error> {
        use futures_util::TryStreamExt;
        self.list(table, opts).try_collect().await
    }

    async fn record(resp: reqwest::Response) -> Result<Record, Error> {
        let v: Value = resp.json().await.map_err(|e| {
            let e = e.without_url();
            Error::decode_from(e.to_string(), e)
        })?;
        match result_of(v)? {
            Value::Object(m) => Ok(m),
            _ => Err(Error::decode("`result` is not a record")),
        }
    }

    /// One record by sys_id.
    pub async fn get(&self, table: &str, sys_id: &str, fields: &[String]) -> Result<Record, Error> {
        let mut q = Vec::new();
        if !fields.is_empty() {
            q.push(("sysparm_fields".to_string(), fields.join(",")));
        }
        let what = format!("{table} record {sys_id}");
        let resp = self
            .send(
                Method::GET,
                &self.table_url(table, Some(sys_id)),
                &q,
                None,
                &what,
            )
            .await?;
        Self::record(resp).await
    }

    /// Inserts one record (201); returns it as stored (unknown fields were ignored: compare).
    pub async fn create(&self, table: &str, fields: &Record) -> Result<Record, Error> {
        let body = Value::Object(fields.clone());
        let resp = self
            .send(
                Method::POST,
                &self.table_url(table, None),
                &[],
                Some(&body),
                table,
            )
            .await?;
        Self::record(resp).await
    }

    /// Updates the given fields of one record (PATCH).
    pub async fn update(
        &self,
        table: &str,
        sys_id: &str,
        fields: &Record,
    ) -> Result<Record, Error> {
        let body = Value::Object(fields.clone());
        let what = format!("{table} record {sys_id}");
        let resp = self
            .send(
                Method::PATCH,
                &self.table_url(table, Some(sys_id)),
                &[],
                Some(&body),
                &what,
            )
            .await?;
        Self::record(resp).await
    }

    /// Deletes one record (204).
    pub async fn delete(&self, table: &str, sys_id: &str) -> Result<(), Error> {
        let what = format!("{table} record {sys_id}");
        self.send(
            Method::DELETE,
            &self.table_url(table, Some(sys_id)),
            &[],
            None,
            &what,
        )
        .await?;
        Ok(())
    }

    /// The value of a system property (`sys_properties`), `None` when it does not exist.
    pub async fn get_property(&self, name: &str) -> Result<Option<String>, Error> {
        let q = vec![
            ("sysparm_query".to_string(), format!("name={name}")),
            ("sysparm_fields".to_string(), "name,value".to_string()),
            ("sysparm_limit".to_string(), "1".to_string()),
        ];
        let resp = match self
            .send(
                Method::GET,
                &self.table_url("sys_properties", None),
                &q,
                None,
                "sys_properties",
            )
            .await
        {
            Ok(r) => r,
            Err(Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        let v: Value = resp.json().await.map_err(|e| {
            let e = e.without_url();
            Error::decode_from(e.to_string(), e)
        })?;
        Ok(result_of(v)?
            .as_array()
            .and_then(|a| a.first())
            .and_then(|r| r.get("value"))
            .and_then(Value::as_str)
            .map(str::to_string))
    }

    /// Inserts one import-set row; the instance transforms it synchronously (coalescing into
    /// its target table). Values are sent as strings, as the API requires.
    pub async fn import(&self, staging_table: &str, row: &Record) -> Result<ImportResult, Error> {
        let flat: Map<String, Value> = row
            .iter()
            .map(|(k, v)| {
                let s = match v {
                    Value::String(s) => s.clone(),
                    Value::Null => String::new(),
                    other => other.to_string(),
                };
                (k.clone(), Value::String(s))
            })
            .collect();
        let url = format!("{}/api/now/import/{staging_table}", self.base);
        let resp = self
            .send(
                Method::POST,
                &url,
                &[],
                Some(&Value::Object(flat)),
                staging_table,
            )
            .await?;
        resp.json().await.map_err(|e| {
            let e = e.without_url();
            Error::decode_from(format!("import reply: {e}"), e)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic() -> Auth {
        Auth::Basic {
            username: "u".into(),
            password: SecretString::from("p"),
        }
    }

    #[test]
    fn plain_http_only_to_loopback() {
        // Refused in the constructor: no request is ever built for these.
        for bad in [
            "http://acme.service-now.com",
            "http://10.0.0.5:8080",
            "ftp://acme.service-now.com",
        ] {
            let e = ServiceNowClient::new(bad, basic()).unwrap_err();
            assert!(matches!(e, Error::Config { .. }), "{bad}: {e:?}");
            assert!(e.to_string().contains("https://"), "{e}");
        }
        let long = format!("https://{}.service-now.com", "a".repeat(3000));
        let e = ServiceNowClient::new(&long, basic())
            .unwrap_err()
            .to_string();
        assert!(e.contains("at most 63"), "{e}");
        for ok in [
            "https://acme.service-now.com",
            "http://127.0.0.1:9",
            "http://localhost:9/",
        ] {
            ServiceNowClient::new(ok, basic()).unwrap();
        }
    }

    #[test]
    fn huge_error_answers_are_cut() {
        let big = "d".repeat(5_000_000);
        let body = serde_json::json!({"error": {"message": big, "detail": big}}).to_string();
        for status in [400u16, 404, 503] {
            let e = classify_body(
                StatusCode::from_u16(status).unwrap(),
                body.as_bytes(),
                "record",
            );
            let text = e.to_string();
            assert!(
                text.len() < 3 * xmbridge_auth::UPSTREAM_TEXT_LIMIT,
                "{status}: {}",
                text.len()
            );
            assert!(text.contains("bytes more)"), "{status}");
        }
    }
}
