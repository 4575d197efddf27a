//! Connections and their sealed secrets in the state store.
//!
//! It owns the installation directory ([`Home`]: `XMBRIDGE_HOME`, default `~/.xmbridge`), the
//! [`MasterKey`] (from `XMBRIDGE_MASTER_KEY` or a 0600 key file created on first use), and the
//! [`Vault`]: named connections with non-secret JSON settings, and their secrets — API tokens,
//! OAuth client secrets and refresh tokens, private keys and pass phrases — sealed with
//! XChaCha20-Poly1305 under the master key, bound to connection, field and key id. A wrong master
//! key is [`VaultError::WrongMasterKey`] and a damaged value [`VaultError::Corrupted`] (or
//! [`VaultError::DamagedValue`], naming the connection), never garbage; an empty state store is
//! [`VaultError::EmptyStore`], never a new installation. A home or state store others can write
//! is refused; a store others can read is restricted to the owner. Secrets are [`SecretString`]s
//! and never appear in errors, logs or `Debug` output.
//!
//! It must not talk to any external API (that is `xmbridge-auth` and the clients) and must not
//! hold sync cursors, workflow state or destination data (other components own their own tables
//! in the same state store).
//!
//! ```no_run
//! use xmbridge_vault::{Home, MasterKey, Provider, SecretField, SecretString, Vault};
//! # fn main() -> Result<(), xmbridge_vault::VaultError> {
//! let home = Home::from_env()?;
//! let vault = Vault::open_home(&home, MasterKey::from_env(&home)?)?;
//! vault.add_connection("prod", Provider::Qualtrics, serde_json::json!({"datacenter": "ca1"}))?;
//! vault.set_secret("prod", SecretField::ApiToken, &SecretString::from("…"))?;
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

mod error;
mod home;
mod key;
mod random;
mod seal;
mod vault;

pub use error::VaultError;
pub use home::{HOME_ENV, Home};
pub use key::{KeyId, KeySource, MASTER_KEY_ENV, MASTER_KEY_LEN, MasterKey};
pub use random::random_secret;
pub use secrecy::{ExposeSecret, SecretString};
pub use vault::{
    COMPONENT, ConnectionRecord, Provider, SCHEMA_VERSION, SecretField, SecretInfo, Vault,
    VaultRefreshTokenSink, validate_connection_name,
};
