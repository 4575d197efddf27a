//! Serving a simulator on loopback, in-process (tests) or from `xmbridge simulate`.

use crate::SimError;
use crate::config::SimConfig;
use crate::qualtrics::{self, Sim};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::sync::oneshot;

/// A running simulator of type `S`. Dropping it stops the server.
pub struct Handle<S> {
    /// The address the server listens on (loopback, the port chosen by the OS for port 0).
    pub addr: SocketAddr,
    /// `http://127.0.0.1:PORT` (or `https://` with mutual TLS on): for Salesforce also the org's
    /// `instance_url` and login host, for ServiceNow the instance URL.
    pub base_url: String,
    /// The simulator's state, for tests to inspect and change directly.
    pub sim: Arc<S>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

/// The Qualtrics simulator.
pub type SimHandle = Handle<Sim>;
/// The Salesforce simulator.
pub type SalesforceHandle = Handle<crate::salesforce::SfSim>;
/// The ServiceNow simulator.
pub type SnHandle = Handle<crate::servicenow::SnSim>;

impl<S> Handle<S> {
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

impl<S> Drop for Handle<S> {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

impl SimHandle {
    /// `{base_url}/API/v3`
    pub fn api_url(&self) -> String {
        format!("{}/API/v3", self.base_url)
    }
}

impl SalesforceHandle {
    /// `{base_url}/services/oauth2/token`
    pub fn token_url(&self) -> String {
        format!("{}/services/oauth2/token", self.base_url)
    }
}

/// Binds `listen` (loopback only) and returns the listener and its address.
async fn bind(listen: SocketAddr) -> Result<(tokio::net::TcpListener, SocketAddr), SimError> {
    check_loopback(&listen)?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| SimError::Bind(listen, e))?;
    let addr = listener
        .local_addr()
        .map_err(|e| SimError::Bind(listen, e))?;
    Ok((listener, addr))
}

/// Serves `app` over plain HTTP until the sender side of `rx` fires or is dropped.
fn serve_http(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    rx: oneshot::Receiver<()>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let svc = crate::normalize::service(app);
        let _ = axum::serve(listener, svc)
            .with_graceful_shutdown(async {
                let _ = rx.await;
            })
            .await;
    })
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
    let (listener, addr) = bind(listen).await?;
    let (tx, rx) = oneshot::channel::<()>();
    let app = qualtrics::router(sim.clone());
    let scheme = if sim.pki.is_some() { "https" } else { "http" };
    let task = if let Some(pki) = &sim.pki {
        let acceptor = pki.acceptor()?;
        tokio::spawn(qualtrics::tls::serve_tls(listener, acceptor, app, rx))
    } else {
        serve_http(listener, app, rx)
    };
    Ok(Handle {
        addr,
        base_url: format!("{scheme}://{addr}"),
        sim,
        shutdown: Some(tx),
        task: Some(task),
    })
}

/// Starts the Salesforce simulator on `listen` (use `127.0.0.1:0` for an ephemeral port).
pub async fn start_salesforce(
    cfg: crate::salesforce::SalesforceConfig,
    listen: SocketAddr,
) -> Result<SalesforceHandle, SimError> {
    let (listener, addr) = bind(listen).await?;
    let sim = Arc::new(crate::salesforce::SfSim::new(cfg));
    let base_url = format!("http://{addr}");
    *sim.base_url.lock() = base_url.clone();
    let (tx, rx) = oneshot::channel::<()>();
    let task = serve_http(listener, crate::salesforce::router(sim.clone()), rx);
    Ok(Handle {
        addr,
        base_url,
        sim,
        shutdown: Some(tx),
        task: Some(task),
    })
}

/// Starts the ServiceNow simulator on `listen` (use `127.0.0.1:0` for an ephemeral port).
pub async fn start_servicenow(
    cfg: crate::servicenow::SnConfig,
    listen: SocketAddr,
) -> Result<SnHandle, SimError> {
    let (listener, addr) = bind(listen).await?;
    let sim = Arc::new(crate::servicenow::SnSim::new(cfg));
    let base_url = format!("http://{addr}");
    let _ = sim.base_url.set(base_url.clone());
    let (tx, rx) = oneshot::channel::<()>();
    let task = serve_http(listener, crate::servicenow::router(sim.clone()), rx);
    Ok(Handle {
        addr,
        base_url,
        sim,
        shutdown: Some(tx),
        task: Some(task),
    })
}
