//! Who is calling: API tokens and OAuth bearer tokens, data-center checks, permissions, scopes.

use super::account::User;
use super::envelope::ApiError;
use super::{SharedSim, hosts};
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::collections::HashMap;

/// An OAuth access token the simulator issued.
#[derive(Clone, Debug)]
pub struct AccessToken {
    /// Index of the user the token acts as, in `Sim::users`.
    pub user_idx: usize,
    /// The OAuth client the token was issued to.
    pub client_id: String,
    /// The scopes granted; routes check them.
    pub scopes: Vec<String>,
    /// The data center that issued it; the token only works there.
    pub dc: String,
    /// Expiry, simulated epoch milliseconds.
    pub expires_ms: i64,
}

#[derive(Default, Debug)]
/// The access tokens currently issued by the OAuth server.
pub struct TokenStore {
    /// Live access tokens, keyed by the bearer token string.
    pub access: HashMap<String, AccessToken>,
}

/// The data center the request was addressed to (`None`: the brand's own, e.g. plain loopback).
#[derive(Clone, Debug)]
pub struct RequestedDc(pub Option<String>);

/// The authenticated caller of an API route.
#[derive(Clone, Debug)]
pub struct Caller {
    /// Index of the caller in `Sim::users`.
    pub user_idx: usize,
    /// The caller as they were when the request arrived.
    pub user: User,
    /// `None` when authenticated by API token (the user's full rights); OAuth scopes otherwise.
    pub scopes: Option<Vec<String>>,
}

impl Caller {
    /// 403 naming the scope unless the token grants it. `manage:all` grants everything and
    /// `manage:<resource>` grants `read:`/`write:` of the same resource.
    pub fn require_scope(&self, scope: &str) -> Result<(), ApiError> {
        let Some(scopes) = &self.scopes else {
            return Ok(());
        };
        let resource = scope.split_once(':').map(|(_, r)| r).unwrap_or(scope);
        let granted = scopes
            .iter()
            .any(|s| s == scope || s == "manage:all" || *s == format!("manage:{resource}"));
        if granted {
            Ok(())
        } else {
            Err(ApiError::new(
                axum::http::StatusCode::FORBIDDEN,
                "AUTH_SCOPE",
                format!(
                    "Insufficient scope: this call needs the OAuth scope '{scope}'; the token has '{}'.",
                    scopes.join(" ")
                ),
            ))
        }
    }

    pub(crate) fn require_brand_admin(&self) -> Result<(), ApiError> {
        if self.user.permissions.brand_admin {
            Ok(())
        } else {
            Err(ApiError::forbidden(
                "This call requires a brand administrator.",
            ))
        }
    }

    /// XM Directory "Manage Directories" (transaction batches and their transactions).
    pub fn require_manage_directories(&self) -> Result<(), ApiError> {
        if self.user.permissions.manage_directories {
            Ok(())
        } else {
            Err(ApiError::forbidden(
                "You do not have the XM Directory permission 'Manage Directories'. A brand administrator can grant it under Admin > Users > permissions > Contacts.",
            ))
        }
    }
}

fn header<'a>(req: &'a Request, name: &str) -> Option<&'a str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}

/// Authenticates `/API/v3` calls and puts a [`Caller`] into the request extensions.
pub async fn require_caller(
    State(sim): State<SharedSim>,
    mut req: Request,
    next: Next,
) -> Response {
    match authenticate(&sim, &req) {
        Ok(caller) => {
            req.extensions_mut().insert(caller);
            next.run(req).await
        }
        Err(e) => e.into_response(),
    }
}

fn authenticate(sim: &SharedSim, req: &Request) -> Result<Caller, ApiError> {
    let users = sim.users.read();
    let (user_idx, scopes) = if let Some(token) = header(req, "x-api-token") {
        let idx = users
            .iter()
            .position(|u| !token.is_empty() && u.api_token == token)
            .ok_or_else(|| {
                ApiError::unauthorized(
                    "Invalid API token. Check the token under Account Settings > Qualtrics IDs; generating a new token invalidates the old one.",
                )
            })?;
        (idx, None)
    } else if let Some(auth) = header(req, "authorization") {
        let token = auth
            .strip_prefix("Bearer ")
            .or_else(|| auth.strip_prefix("bearer "))
            .ok_or_else(|| {
                ApiError::unauthorized("Authorization header must be 'Bearer <access token>'.")
            })?;
        let store = sim.tokens.lock();
        let t = store
            .access
            .get(token)
            .ok_or_else(|| ApiError::unauthorized("Invalid or revoked OAuth access token."))?;
        if t.expires_ms <= sim.clock.now_ms() {
            return Err(ApiError::unauthorized(
                "OAuth access token expired. Request a new one from /oauth2/token.",
            ));
        }
        let requested = req
            .extensions()
            .get::<RequestedDc>()
            .and_then(|d| d.0.clone())
            .unwrap_or_else(|| sim.home_dc());
        if requested != t.dc {
            return Err(ApiError::unauthorized(format!(
                "This OAuth token was issued by data center '{}' and is not valid on '{requested}'. Use {}.qualtrics.com.",
                t.dc, t.dc
            )));
        }
        (t.user_idx, Some(t.scopes.clone()))
    } else {
        return Err(ApiError::unauthorized(
            "Missing credentials: send the X-API-TOKEN header or 'Authorization: Bearer <token>'.",
        ));
    };
    let user = users
        .get(user_idx)
        .cloned()
        .ok_or_else(|| ApiError::unauthorized("The user behind this token no longer exists."))?;
    if user.account_status != "active" {
        return Err(ApiError::unauthorized(format!(
            "User account is {}.",
            user.account_status
        )));
    }
    if !user.permissions.api_access {
        return Err(ApiError::forbidden(
            "This user does not have the 'Access API' permission. A brand administrator can grant it under Admin > Users > permissions.",
        ));
    }
    Ok(Caller {
        user_idx,
        user,
        scopes,
    })
}

/// The data center named by the request's `Host` header (`None` = the brand's own).
pub fn requested_dc(req: &Request) -> Option<String> {
    header(req, "host").and_then(hosts::dc_of_host)
}
