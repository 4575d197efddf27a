//! Simulators of the external APIs xmbridge talks to.
//!
//! xmbridge cannot reach Qualtrics, Salesforce or ServiceNow from a test machine, so this crate
//! serves faithful, seeded, deterministic copies of their public APIs on loopback: the Qualtrics
//! REST API v3 with its OAuth server and mutual TLS ([`qualtrics`]), a Salesforce org's OAuth
//! server and REST API ([`salesforce`]), and a ServiceNow instance ([`servicenow`]). It owns the
//! simulated data and the fault switches; it must not depend on xmbridge's client, sync or workflow
//! crates, so that the simulator stays an independent referee of what the real APIs do. Users run
//! it with `xmbridge simulate`; tests start it in-process with [`server::start_qualtrics`].

#![recursion_limit = "256"]

pub mod clock;
pub mod config;
pub mod normalize;
pub mod qualtrics;
pub mod rng;
pub mod salesforce;
pub mod server;
pub mod servicenow;

pub use config::SimConfig;
pub use server::{SalesforceHandle, start_salesforce};
pub use server::{SimHandle, start_qualtrics};
pub use server::{SnHandle, start_servicenow};

/// Why a simulator could not start.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("the simulator only listens on loopback addresses; {0} is not one (use 127.0.0.1:0)")]
    /// The listen address is not a loopback address.
    NotLoopback(std::net::SocketAddr),
    #[error("cannot listen on {0}: {1}")]
    /// The listen address could not be bound.
    Bind(std::net::SocketAddr, #[source] std::io::Error),
    #[error("cannot set up the brand's TLS certificates: {0}")]
    /// The brand's mutual-TLS certificates could not be generated or loaded; the text says why.
    Tls(String),
    #[error("cannot write {path}: {source}")]
    /// A file (such as the brand's CA certificate) could not be written.
    Write {
        /// The file that could not be written.
        path: std::path::PathBuf,
        #[source]
        /// Why it could not be written.
        source: std::io::Error,
    },
}
