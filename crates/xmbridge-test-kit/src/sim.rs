//! The simulators, started in-process on an ephemeral loopback port.

use std::net::{Ipv4Addr, SocketAddr};

use xmbridge_sim::salesforce::SalesforceConfig;
use xmbridge_sim::servicenow::SnConfig;
use xmbridge_sim::{SalesforceHandle, SimConfig, SimHandle, SnHandle};

/// An ephemeral port on loopback: tests never listen anywhere else.
pub fn loopback() -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, 0))
}

/// The Qualtrics simulator (plain HTTP, or mutual TLS when `cfg` asks for it).
pub async fn qualtrics(cfg: SimConfig) -> SimHandle {
    xmbridge_sim::start_qualtrics(cfg, loopback())
        .await
        .expect("the Qualtrics simulator starts")
}

/// The Salesforce simulator.
pub async fn salesforce(cfg: SalesforceConfig) -> SalesforceHandle {
    xmbridge_sim::start_salesforce(cfg, loopback())
        .await
        .expect("the Salesforce simulator starts")
}

/// The ServiceNow simulator.
pub async fn servicenow(cfg: SnConfig) -> SnHandle {
    xmbridge_sim::start_servicenow(cfg, loopback())
        .await
        .expect("the ServiceNow simulator starts")
}
