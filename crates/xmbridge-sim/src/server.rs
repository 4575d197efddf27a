//! Serving a simulator on loopback, in-process (tests) or from `xmbridge simulate`.

use crate::SimError;
use crate::config::SimConfig;
use crate::qualtrics::{self, Sim};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::sync::oneshot;

/// A running simulator. Dropping it stops the server.
pub struct SimHandle {
    pub addr: SocketAddr,
    /// `http://127.0.0.1:PORT` (or `https://` with mutual TLS on).
    pub base_url: String,
    pub sim: Arc<Sim>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl SimHandle {
    /// `{base_url}/API/v3`
    pub fn api_url(&self) -> String {
        format!("{}/API/v3", self.base_url)
    }

    /// Stops accepting connections and waits for the server task.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

impl Drop for SimHandle {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// Refuses anything but loopback: the simulators are never a network service.
fn check_loopback(addr: &SocketAddr) -> Result<(), SimError> {
    if addr.ip().is_loopback() {
        Ok(())
    } else {
        Err(SimError::NotLoopback(*addr))
    }
}

/// Starts the Qualtrics simulator on `listen` (use `127.0.0.1:0` for an ephemeral port).
pub async fn start_qualtrics(cfg: SimConfig, listen: SocketAddr) -> Result<SimHandle, SimError> {
    check_loopback(&listen)?;
    let sim = Arc::new(Sim::new(cfg)?);
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| SimError::Bind(listen, e))?;
    let addr = listener
        .local_addr()
        .map_err(|e| SimError::Bind(listen, e))?;
    let (tx, rx) = oneshot::channel::<()>();
    let app = qualtrics::router(sim.clone());
    let scheme = if sim.pki.is_some() { "https" } else { "http" };
    let task = if let Some(pki) = &sim.pki {
        let acceptor = pki.acceptor()?;
        tokio::spawn(qualtrics::tls::serve_tls(listener, acceptor, app, rx))
    } else {
        tokio::spawn(async move {
            let svc = crate::normalize::service(app);
            let _ = axum::serve(listener, svc)
                .with_graceful_shutdown(async {
                    let _ = rx.await;
                })
                .await;
        })
    };
    Ok(SimHandle {
        addr,
        base_url: format!("{scheme}://{addr}"),
        sim,
        shutdown: Some(tx),
        task: Some(task),
    })
}

/// A running Salesforce simulator. Dropping it stops the server.
pub struct SalesforceHandle {
    pub addr: SocketAddr,
    /// `http://127.0.0.1:PORT`: the org's `instance_url` and its login host.
    pub base_url: String,
    pub sim: Arc<crate::salesforce::SfSim>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl SalesforceHandle {
    /// `{base_url}/services/oauth2/token`
    pub fn token_url(&self) -> String {
        format!("{}/services/oauth2/token", self.base_url)
    }

    /// Stops accepting connections and waits for the server task.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

impl Drop for SalesforceHandle {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// Starts the Salesforce simulator on `listen` (use `127.0.0.1:0` for an ephemeral port).
pub async fn start_salesforce(
    cfg: crate::salesforce::SalesforceConfig,
    listen: SocketAddr,
) -> Result<SalesforceHandle, SimError> {
    check_loopback(&listen)?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| SimError::Bind(listen, e))?;
    let addr = listener
        .local_addr()
        .map_err(|e| SimError::Bind(listen, e))?;
    let sim = Arc::new(crate::salesforce::SfSim::new(cfg));
    let base_url = format!("http://{addr}");
    *sim.base_url.lock() = base_url.clone();
    let (tx, rx) = oneshot::channel::<()>();
    let app = crate::salesforce::router(sim.clone());
    let task = tokio::spawn(async move {
        let svc = crate::normalize::service(app);
        let _ = axum::serve(listener, svc)
            .with_graceful_shutdown(async {
                let _ = rx.await;
            })
            .await;
    });
    Ok(SalesforceHandle {
        addr,
        base_url,
        sim,
        shutdown: Some(tx),
        task: Some(task),
    })
}
