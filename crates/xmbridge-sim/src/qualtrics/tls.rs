//! (to be written) The brand PKI for mutual TLS.
use crate::config::SimConfig;

#[derive(Debug)]
pub struct BrandPki;

impl BrandPki {
    pub fn generate(_cfg: &SimConfig) -> Result<Self, crate::SimError> {
        Ok(BrandPki)
    }
}

impl BrandPki {
    pub fn acceptor(&self) -> Result<tokio_rustls::TlsAcceptor, crate::SimError> {
        Err(crate::SimError::Tls("mutual TLS is not built yet".into()))
    }
}

pub async fn serve_tls(
    _listener: tokio::net::TcpListener,
    _acceptor: tokio_rustls::TlsAcceptor,
    _app: axum::Router,
    _shutdown: tokio::sync::oneshot::Receiver<()>,
) {
}

pub fn admin_routes() -> axum::Router<super::SharedSim> {
    axum::Router::new()
}
