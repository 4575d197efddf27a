//! Clients send `/surveys/{id}/` as often as `/surveys/{id}`: strip one trailing slash before routing.

use axum::Router;
use axum::extract::Request;
use axum::http::Uri;
use tower::ServiceExt as _;

fn strip_trailing_slash(mut req: Request) -> Request {
    let path = req.uri().path();
    if path.len() > 1 && path.ends_with('/') {
        let trimmed = path.trim_end_matches('/');
        let new = match req.uri().query() {
            Some(q) => format!("{trimmed}?{q}"),
            None => trimmed.to_string(),
        };
        if let Ok(p) = new.parse::<axum::http::uri::PathAndQuery>() {
            let mut parts = req.uri().clone().into_parts();
            parts.path_and_query = Some(p);
            if let Ok(u) = Uri::from_parts(parts) {
                *req.uri_mut() = u;
            }
        }
    }
    req
}

/// The router behind the trailing-slash normalization.
pub type Normalized = tower::util::MapRequest<Router, fn(Request) -> Request>;

/// What `axum::serve` takes: the normalized router, with the peer address available.
pub type NormalizedMakeService =
    axum::extract::connect_info::IntoMakeServiceWithConnectInfo<Normalized, std::net::SocketAddr>;

/// The router wrapped so that trailing slashes are ignored, ready for `axum::serve`.
pub fn service(app: Router) -> NormalizedMakeService {
    let svc = app.map_request(strip_trailing_slash as fn(Request) -> Request);
    axum::ServiceExt::<Request>::into_make_service_with_connect_info::<std::net::SocketAddr>(svc)
}

/// The router wrapped for per-connection serving (TLS path).
pub fn per_connection(app: Router) -> Normalized {
    app.map_request(strip_trailing_slash as fn(Request) -> Request)
}
