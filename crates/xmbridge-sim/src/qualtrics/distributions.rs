//! (to be written)
use super::SharedSim;
use super::account::User;
use crate::config::SimConfig;
use axum::Router;

#[derive(Debug, Default)]
pub struct DistributionState;

pub fn routes() -> Router<SharedSim> {
    Router::new()
}
impl DistributionState {
    pub fn new(
        _cfg: &SimConfig,
        _users: &[User],
        _surveys: &[super::survey::Survey],
        _directory: &super::directory::DirectoryState,
    ) -> Self {
        Self::default()
    }
}
