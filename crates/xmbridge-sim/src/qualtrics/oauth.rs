//! (to be written) OAuth 2.0 server: /oauth2/token, /oauth2/auth.
use super::SharedSim;
use super::account::User;
use crate::config::SimConfig;
use axum::Router;

#[derive(Debug, Default)]
pub struct OAuthState;

impl OAuthState {
    pub fn new(_cfg: &SimConfig, _users: &[User]) -> Self {
        Self
    }
}

pub fn routes() -> Router<SharedSim> {
    Router::new()
}
