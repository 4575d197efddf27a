//! The inbound endpoint of a webhook-triggered workflow as its caller is given it: the public
//! base URL checked, the URL with the workflow's secret token, and whether plain http would
//! carry that secret across a network.

use url::{Host, Url};
use xmbridge_auth::SecretString;
use xmbridge_workflows::definition::Workflow;

use crate::{Result, RuntimeError};

/// The public base URL (`public_url`) the caller of workflow `workflow`'s hook reaches the
/// receiver at; refused when the workflow has no inbound endpoint or the URL is not http(s).
pub fn public_base(workflow: &Workflow, public_url: &str) -> Result<Url> {
    if workflow.trigger.hook_auth().is_none() {
        return Err(RuntimeError::usage(format!(
            "workflow \"{}\" is started by {}; it has no inbound endpoint",
            workflow.name, workflow.trigger
        )));
    }
    Url::parse(public_url)
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
        .ok_or_else(|| {
            RuntimeError::usage(format!(
                "--public-url {public_url}: write the http(s) URL the caller reaches the receiver at, e.g. https://hooks.example.org"
            ))
        })
}

/// The URL the caller posts to, with the workflow's `secret` where its trigger carries it.
pub fn endpoint_url(public: &Url, workflow: &Workflow, secret: &SecretString) -> Result<String> {
    xmbridge_workflows::hooks::endpoint_url(
        public.as_str(),
        &workflow.trigger,
        &workflow.name,
        secret,
    )
    .ok_or_else(|| RuntimeError::unusable(format!("workflow {} has no endpoint", workflow.name)))
}

/// Whether `public` is plain http to another machine: the secret would cross the network
/// unencrypted.
pub fn exposes_secret(public: &Url) -> bool {
    let loopback = match public.host() {
        Some(Host::Ipv4(ip)) => ip.is_loopback(),
        Some(Host::Ipv6(ip)) => ip.is_loopback(),
        Some(Host::Domain(d)) => d == "localhost",
        None => false,
    };
    public.scheme() == "http" && !loopback
}
