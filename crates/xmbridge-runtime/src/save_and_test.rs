//! "Save & Test" of a stored Qualtrics connection: who it is, its data center, its token, which
//! tables it can sync; what was learned is remembered for later runs. Each step is reported
//! as soon as it is known, so a caller shows everything found before a failure.

use std::sync::Arc;
use std::time::SystemTime;

use xmbridge_qualtrics::WhoAmI;
use xmbridge_qualtrics::capabilities::{self, Access, Capabilities};
use xmbridge_vault::Vault;

use crate::connection::{self, AuthMode, Connected, Learned};
use crate::{Result, RuntimeError};

/// One step of the test, reported as soon as it is known.
#[derive(Debug)]
#[non_exhaustive]
pub enum TestStep<'a> {
    /// The test starts with the connection's way of authenticating.
    Auth(AuthMode),
    /// Who the connection authenticated as, and where its account lives.
    Identity {
        /// The data center, when found.
        datacenter: Option<&'a str>,
        /// The base URL the client talks to.
        base_url: &'a str,
        /// The authenticated user.
        me: &'a WhoAmI,
    },
    /// Where the client's tokens come from and when the current one expires.
    Token {
        /// The token source, described.
        source: String,
        /// When the token expires (none: it does not).
        expires_at: Option<SystemTime>,
    },
    /// What the connection can read.
    Capabilities(&'a Capabilities),
}

/// The outcome of a test that reached the end.
#[derive(Clone, Copy, Debug)]
pub struct Tested {
    /// Whether the account can sync (it reads surveys and responses).
    pub can_sync: bool,
    /// Table groups skipped for lack of access.
    pub skipped: usize,
}

/// Tests the stored connection `name`, reporting each step to `report`, and remembers the
/// data center, host, directory and brand it learned.
pub async fn test_connection(
    vault: &Arc<Vault>,
    name: &str,
    mut report: impl FnMut(TestStep<'_>),
) -> Result<Tested> {
    let Connected {
        client,
        settings,
        source,
    } = connection::connect(vault, name)?;
    report(TestStep::Auth(settings.auth));
    let me = client
        .whoami()
        .await
        .map_err(|source| RuntimeError::Connection {
            message: format!("connection '{name}' cannot authenticate"),
            source,
        })?;
    let datacenter = client
        .discover_data_center()
        .await
        .ok()
        .map(|d| d.id().to_string())
        .or(me.datacenter.clone());
    report(TestStep::Identity {
        datacenter: datacenter.as_deref(),
        base_url: client.base().as_str(),
        me: &me,
    });
    report(TestStep::Token {
        source: source.describe(),
        expires_at: source.expires_at(),
    });
    let caps = capabilities::probe(&client, settings.directory.as_deref()).await?;
    report(TestStep::Capabilities(&caps));
    // Remember what was learned, so later runs skip the discovery (discovery may also have
    // moved a vanity host to the data center's own host: keep it).
    connection::remember(
        vault,
        name,
        Learned {
            base_url: client.base().as_str().to_string(),
            datacenter,
            directory: caps.directory.clone(),
            brand_id: me.brand_id.clone(),
        },
    )?;
    Ok(Tested {
        can_sync: caps.can_sync(),
        skipped: caps
            .groups
            .iter()
            .filter(|g| g.access != Access::Ok)
            .count(),
    })
}
