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

/// A member of a mailing list, as distributions need it (history rows, links).
#[derive(Clone, Debug)]
pub struct ListMember {
    pub contact_id: String,
    /// `CGC_…`
    pub contact_lookup_id: String,
    pub first_name: String,
    pub last_name: String,
    pub email: String,
    pub ext_ref: String,
}

impl DirectoryState {
    /// The `POOL_…` id of the brand's default directory.
    pub fn default_directory_id(&self) -> String {
        String::new()
    }

    /// Every mailing list as `(directory id, mailing list id)`, in a stable order.
    pub fn mailing_lists(&self) -> Vec<(String, String)> {
        Vec::new()
    }

    /// The members of one mailing list, in a stable order (empty if unknown).
    pub fn mailing_list_members(&self, _mailing_list_id: &str) -> Vec<ListMember> {
        Vec::new()
    }
}
