//! (to be written)
use super::SharedSim;
use super::account::User;
use crate::config::SimConfig;
use axum::Router;

#[derive(Debug, Default)]
pub struct DirectoryState;

pub fn routes() -> Router<SharedSim> {
    Router::new()
}
impl DirectoryState {
    pub fn new(_cfg: &SimConfig, _users: &[User]) -> Self {
        Self::default()
    }
}
