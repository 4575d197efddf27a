//! Who is calling and whether they may: the session cookie (with its CSRF token on
//! state-changing requests) or a bearer API token, the same-origin rule, the role a route needs,
//! the login rate limits, and the `/session` and `/me` routes.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Extension;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use parking_lot::Mutex;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::{Value, json};

use super::error::{ApiError, ApiResult, Json};
use super::{Api, Need};
use crate::users::{AuditEntry, Role, User, Via};

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "xmbridge_session";
/// The header a state-changing request made with the session cookie carries the CSRF token in.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// How long a session lasts.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 60 * 60);

/// The signed-in caller of a request, put in the request's extensions by the guard.
#[derive(Clone, Debug)]
pub struct Caller {
    /// The user.
    pub user: User,
    /// The API token's id when the request came with a bearer token (else a session).
    pub token: Option<String>,
    /// The client's address, for the audit log and rate limits.
    pub address: Option<String>,
}

impl Caller {
    /// Whether the caller is an admin.
    pub fn is_admin(&self) -> bool {
        self.user.role == Role::Admin
    }

    /// How the caller authenticated, for the audit log.
    pub fn via(&self) -> Via {
        match &self.token {
            Some(id) => Via::Token(id.clone()),
            None => Via::Session,
        }
    }

    /// An audit entry for an action of this caller (`detail` must hold no secret).
    pub fn entry(&self, action: &str, target: &str, detail: Value) -> AuditEntry {
        AuditEntry {
            actor: self.user.name.clone(),
            via: self.via(),
            action: action.to_string(),
            target: target.to_string(),
            detail,
            address: self.address.clone(),
        }
    }

    /// Refuses unless the caller is an admin, naming `rule`.
    pub fn require_admin(&self, what: &str, rule: &str) -> ApiResult<()> {
        if self.is_admin() {
            Ok(())
        } else {
            Err(ApiError::forbidden(
                &format!("only an admin may {what}"),
                rule,
                "ask an admin to do it, or to make you an admin",
            ))
        }
    }
}

/// Whether a method changes state (and so needs the CSRF token with a cookie session).
fn changes_state(m: &Method) -> bool {
    !matches!(*m, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// The client's address: the peer, or behind a proxy the last `X-Forwarded-For` hop (the one
/// the proxy added; earlier hops are whatever the client claimed).
pub fn client_address(
    req_headers: &HeaderMap,
    peer: Option<SocketAddr>,
    behind_proxy: bool,
) -> Option<String> {
    if behind_proxy
        && let Some(last) = req_headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .rfind(|s| !s.is_empty())
    {
        return Some(last.to_string());
    }
    peer.map(|p| p.ip().to_string())
}

/// The origins this server's own pages have: the public URL's and the one the `Host` header
/// names (a browser sets `Host` itself, so a page elsewhere cannot fake it).
fn own_origins(api: &Api, headers: &HeaderMap) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(u) = url::Url::parse(&api.app.public_url) {
        out.push(u.origin().ascii_serialization());
    }
    let host = if api.app.behind_proxy {
        headers
            .get("x-forwarded-host")
            .or_else(|| headers.get(header::HOST))
    } else {
        headers.get(header::HOST)
    };
    if let Some(h) = host.and_then(|h| h.to_str().ok()) {
        out.push(format!("http://{h}"));
        out.push(format!("https://{h}"));
    }
    out
}

/// Refuses a state-changing request whose `Origin` is another site's.
fn check_origin(api: &Api, method: &Method, headers: &HeaderMap) -> ApiResult<()> {
    if !changes_state(method) {
        return Ok(());
    }
    let Some(origin) = headers.get(header::ORIGIN) else {
        // Scripts and command-line clients send none; browsers always do on such requests.
        return Ok(());
    };
    let origin = origin.to_str().unwrap_or("").trim_end_matches('/');
    if own_origins(api, headers).iter().any(|o| o == origin) {
        return Ok(());
    }
    Err(ApiError::forbidden(
        &format!("a request from another origin ({origin}) may not change anything here"),
        "state-changing requests come only from this server's own pages",
        "use the web UI served by this server, or a script with an API token and no Origin header",
    ))
}

/// The value of the session cookie, if the request carries one.
pub fn session_cookie(headers: &HeaderMap) -> Option<SecretString> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == SESSION_COOKIE)
        .map(|(_, v)| SecretString::from(v.to_string()))
        .filter(|v| !v.expose_secret().is_empty())
}

/// Equal, in time that does not depend on where they differ.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// The guard every route passes: the origin rule, then (unless the route is public) the
/// caller from a bearer token or the session cookie (with its CSRF token on a state change),
/// then the role the route needs. The caller goes into the request's extensions.
pub(crate) async fn guard(
    State((api, need)): State<(Arc<Api>, Need)>,
    mut req: Request,
    next: Next,
) -> Response {
    match admit(&api, need, &mut req).await {
        Ok(()) => next.run(req).await,
        Err(e) => e.into_response(),
    }
}

async fn admit(api: &Arc<Api>, need: Need, req: &mut Request) -> ApiResult<()> {
    let method = req.method().clone();
    check_origin(api, &method, req.headers())?;
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    let address = client_address(req.headers(), peer, api.app.behind_proxy);
    req.extensions_mut().insert(ClientAddress(address.clone()));
    if let Need::Public = need {
        return Ok(());
    }
    let caller = if let Some(auth) = req.headers().get(header::AUTHORIZATION) {
        let bearer = auth
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .ok_or_else(|| {
                ApiError::unauthenticated("the Authorization header must be `Bearer <api token>`")
            })?
            .to_string();
        let users = api.app.users.clone();
        let (user, info) = tokio::task::spawn_blocking(move || users.authenticate_token(&bearer))
            .await
            .map_err(|e| ApiError::internal("checking the API token", &e))?
            .map_err(|_| {
                ApiError::unauthenticated("the API token is unknown, revoked or expired")
            })?;
        Caller {
            user,
            token: Some(info.id),
            address,
        }
    } else if let Some(cookie) = session_cookie(req.headers()) {
        let session = api.app.users.session(cookie.expose_secret()).map_err(|_| {
            ApiError::unauthenticated("the session is unknown or expired; sign in again")
        })?;
        if changes_state(&method) {
            let sent = req
                .headers()
                .get(CSRF_HEADER)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            if sent.is_empty() || !same(sent, &session.csrf_token) {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "csrf",
                    "a state-changing request made with the session cookie needs the session's CSRF token in the X-CSRF-Token header (rule: cookie requests carry the CSRF token)",
                    Some("send the csrf_token that POST /api/v1/session returned in the X-CSRF-Token header".into()),
                ));
            }
        }
        Caller {
            user: session.user,
            token: None,
            address,
        }
    } else {
        return Err(ApiError::unauthenticated("not signed in"));
    };
    if let Need::Admin { what, rule } = need {
        caller.require_admin(what, rule)?;
    }
    req.extensions_mut().insert(caller);
    Ok(())
}

/// The client's address as the guard found it (also on public routes).
#[derive(Clone, Debug)]
pub struct ClientAddress(pub Option<String>);

/// Login attempts per user name and per client address, in memory: after too many failures in
/// the window, further attempts are refused (429) until the oldest failure leaves the window.
pub struct LoginLimiter {
    failures: Mutex<HashMap<String, VecDeque<Instant>>>,
    per_user: usize,
    per_address: usize,
    window: Duration,
}

/// Keys kept at most; beyond this, expired ones are dropped first (memory stays bounded even
/// when an attacker sprays user names).
const MAX_KEYS: usize = 10_000;

impl Default for LoginLimiter {
    fn default() -> Self {
        LoginLimiter::new(5, 20, Duration::from_secs(15 * 60))
    }
}

impl LoginLimiter {
    /// At most `per_user` failed attempts per user name and `per_address` per client address in
    /// `window`.
    pub fn new(per_user: usize, per_address: usize, window: Duration) -> LoginLimiter {
        LoginLimiter {
            failures: Mutex::new(HashMap::new()),
            per_user,
            per_address,
            window,
        }
    }

    fn keys(user: &str, address: Option<&str>) -> (String, Option<String>) {
        (format!("u:{user}"), address.map(|a| format!("a:{a}")))
    }

    /// `Err(seconds to wait)` when `user` or `address` used up its attempts.
    pub fn check(&self, user: &str, address: Option<&str>) -> Result<(), u64> {
        let now = Instant::now();
        let mut map = self.failures.lock();
        let (u, a) = LoginLimiter::keys(user, address);
        let mut wait = 0u64;
        for (key, limit) in [(Some(u), self.per_user), (a, self.per_address)] {
            let Some(key) = key else { continue };
            if let Some(q) = map.get_mut(&key) {
                while q
                    .front()
                    .is_some_and(|t| now.duration_since(*t) >= self.window)
                {
                    q.pop_front();
                }
                if q.len() >= limit
                    && let Some(oldest) = q.front()
                {
                    let left = self.window.saturating_sub(now.duration_since(*oldest));
                    wait = wait.max(left.as_secs().max(1));
                }
            }
        }
        if wait > 0 { Err(wait) } else { Ok(()) }
    }

    /// Counts a failed attempt.
    pub fn fail(&self, user: &str, address: Option<&str>) {
        let now = Instant::now();
        let mut map = self.failures.lock();
        if map.len() >= MAX_KEYS {
            let window = self.window;
            map.retain(|_, q| q.back().is_some_and(|t| now.duration_since(*t) < window));
        }
        let (u, a) = LoginLimiter::keys(user, address);
        for key in [Some(u), a].into_iter().flatten() {
            map.entry(key).or_default().push_back(now);
        }
    }

    /// A successful login clears the user name's failures (not the address's).
    pub fn succeed(&self, user: &str) {
        self.failures.lock().remove(&format!("u:{user}"));
    }
}

/// `POST /api/v1/session`'s body.
#[derive(Deserialize)]
pub(crate) struct Login {
    user: String,
    password: String,
}

fn cookie_header(api: &Api, value: &str, max_age: u64) -> ApiResult<HeaderValue> {
    let secure = if api.app.tls || api.app.behind_proxy {
        "; Secure"
    } else {
        ""
    };
    HeaderValue::from_str(&format!(
        "{SESSION_COOKIE}={value}; HttpOnly; SameSite=Strict; Path=/; Max-Age={max_age}{secure}"
    ))
    .map_err(|e| ApiError::internal("writing the session cookie", &e))
}

/// `POST /api/v1/session`: sign in.
pub(crate) async fn login(
    State(api): State<Arc<Api>>,
    Extension(ClientAddress(address)): Extension<ClientAddress>,
    Json(body): Json<Login>,
) -> ApiResult<Response> {
    let Login { user, password } = body;
    let password = SecretString::from(password);
    if let Err(secs) = api.limiter.check(&user, address.as_deref()) {
        let mut e = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_attempts",
            "too many failed sign-in attempts for this user or from this address",
            Some(format!("wait {secs} s and try again")),
        );
        e.retry_after = Some(secs);
        return Err(e);
    }
    let users = api.app.users.clone();
    let name = user.clone();
    let verified = tokio::task::spawn_blocking(move || users.verify_password(&name, &password))
        .await
        .map_err(|e| ApiError::internal("checking the password", &e))?;
    let who = match verified {
        Ok(u) => u,
        Err(_) => {
            api.limiter.fail(&user, address.as_deref());
            tracing::warn!(
                address = address.as_deref().unwrap_or("-"),
                "api: failed sign-in"
            );
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthenticated",
                "wrong user name or password",
                Some("check both and try again".into()),
            ));
        }
    };
    api.limiter.succeed(&user);
    let session = api.app.users.create_session(&who.name, SESSION_TTL)?;
    let caller = Caller {
        user: who.clone(),
        token: None,
        address,
    };
    api.audit(caller.entry("session.create", &who.name, json!({})));
    let cookie = cookie_header(&api, session.cookie.expose_secret(), SESSION_TTL.as_secs())?;
    let mut resp = (
        StatusCode::CREATED,
        axum::Json(json!({
            "csrf_token": session.csrf_token,
            "user": who,
            "expires_at": session.expires_at,
        })),
    )
        .into_response();
    resp.headers_mut().insert(header::SET_COOKIE, cookie);
    Ok(resp)
}

/// `DELETE /api/v1/session`: sign out.
pub(crate) async fn logout(
    State(api): State<Arc<Api>>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    if caller.token.is_some() {
        return Err(ApiError::invalid(
            "this request came with an API token, not a session; there is no session to end",
            Some("revoke the token with DELETE /api/v1/users/{name}/tokens/{id}".into()),
        ));
    }
    if let Some(cookie) = session_cookie(&headers) {
        api.app.users.end_session(cookie.expose_secret())?;
    }
    api.audit(caller.entry("session.end", &caller.user.name, json!({})));
    let mut resp = StatusCode::NO_CONTENT.into_response();
    resp.headers_mut()
        .insert(header::SET_COOKIE, cookie_header(&api, "", 0)?);
    Ok(resp)
}

/// `GET /api/v1/me`: who is signed in, and how.
pub(crate) async fn me(Extension(caller): Extension<Caller>) -> ApiResult<axum::Json<Value>> {
    Ok(axum::Json(json!({
        "name": caller.user.name,
        "role": caller.user.role,
        "created_at": caller.user.created_at,
        "via": if caller.token.is_some() { "token" } else { "session" },
        "token_id": caller.token,
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limiter_refuses_after_the_per_user_limit_and_names_a_wait() {
        let l = LoginLimiter::new(2, 10, Duration::from_secs(60));
        assert!(l.check("pat", Some("1.2.3.4")).is_ok());
        l.fail("pat", Some("1.2.3.4"));
        assert!(l.check("pat", Some("1.2.3.4")).is_ok());
        l.fail("pat", Some("1.2.3.4"));
        let wait = l
            .check("pat", Some("5.6.7.8"))
            .expect_err("a third attempt is refused");
        assert!((1..=60).contains(&wait));
        // Another user from the same address is not limited yet.
        assert!(l.check("sam", Some("1.2.3.4")).is_ok());
        l.succeed("pat");
        assert!(l.check("pat", Some("1.2.3.4")).is_ok());
    }

    #[test]
    fn the_limiter_refuses_an_address_after_its_limit() {
        let l = LoginLimiter::new(100, 3, Duration::from_secs(60));
        for n in 0..3 {
            l.fail(&format!("user{n}"), Some("9.9.9.9"));
        }
        assert!(l.check("someone-else", Some("9.9.9.9")).is_err());
        assert!(l.check("someone-else", Some("8.8.8.8")).is_ok());
    }

    #[test]
    fn the_cookie_is_found_among_others() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=b; xmbridge_session=abc123; c=d"),
        );
        assert_eq!(
            session_cookie(&h).map(|s| s.expose_secret().to_string()),
            Some("abc123".to_string())
        );
    }

    #[test]
    fn behind_a_proxy_the_last_forwarded_hop_is_the_client() {
        let mut h = HeaderMap::new();
        h.insert(
            "x-forwarded-for",
            HeaderValue::from_static("6.6.6.6, 10.0.0.7"),
        );
        let peer: SocketAddr = "127.0.0.1:5000".parse().expect("an address");
        assert_eq!(
            client_address(&h, Some(peer), true).as_deref(),
            Some("10.0.0.7")
        );
        assert_eq!(
            client_address(&h, Some(peer), false).as_deref(),
            Some("127.0.0.1")
        );
    }
}
