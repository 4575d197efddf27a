//! The web UI of `xmbridge serve`: plain HTML, CSS and JavaScript embedded in the binary (no
//! build step, no Node at run time), served at `/` (the page) and `/ui/…` (its assets).
//!
//! The page is a single document; the script draws each view from the `/api/v1` routes only
//! (it has no other way in), so everything the UI can do, a script with a token can do too, and
//! every rule is enforced by the API, not here. Views are addressed by the URL's fragment
//! (`#/connections/NAME`), so links, the back button and bookmarks work without server routes.
//!
//! Every answer carries a strict Content-Security-Policy: scripts and styles only from this
//! origin (no inline script, nothing from elsewhere), no framing. What the API returns is
//! inserted as text, never as HTML.

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

/// One embedded file.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

const INDEX: &[u8] = include_bytes!("assets/index.html");

/// Files under `/ui/`: a fixed list, so no request can name anything else.
const ASSETS: &[Asset] = &[
    Asset {
        name: "app.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("assets/app.js"),
    },
    Asset {
        name: "app.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("assets/app.css"),
    },
    Asset {
        name: "icon.svg",
        content_type: "image/svg+xml",
        body: include_bytes!("assets/icon.svg"),
    },
];

/// `connect-src 'self'`: the script talks to this server's API only. `img-src data:` is for
/// nothing today but keeps a future inline icon from breaking silently; no `unsafe-inline`.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

/// The router of the UI: `GET /` (the page) and `GET /ui/{file}` (its assets). Merge it with
/// the API's router; it holds no state.
pub fn router() -> Router {
    Router::new()
        .route("/", get(index))
        .route("/ui/{file}", get(asset))
}

/// The names of the files served under `/ui/` (for tests and the docs).
pub fn asset_names() -> impl Iterator<Item = &'static str> {
    ASSETS.iter().map(|a| a.name)
}

async fn index() -> Response {
    page(StatusCode::OK, "text/html; charset=utf-8", INDEX)
}

async fn asset(Path(file): Path<String>) -> Response {
    match ASSETS.iter().find(|a| a.name == file) {
        Some(a) => page(StatusCode::OK, a.content_type, a.body),
        None => page(
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            b"no such file in the web UI\n",
        ),
    }
}

fn page(status: StatusCode, content_type: &'static str, body: &'static [u8]) -> Response {
    let mut res = (status, body).into_response();
    let h = res.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    // The assets change with the binary; `no-cache` revalidates instead of serving a stale
    // script after an upgrade (they are small).
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    res
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::ServiceExt;

    async fn get(path: &str) -> Response {
        router()
            .oneshot(
                axum::http::Request::get(path)
                    .body(axum::body::Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn the_page_and_each_asset_are_served_with_their_type_and_policy() {
        let res = get("/").await;
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(
            res.headers()[header::CONTENT_TYPE],
            "text/html; charset=utf-8"
        );
        assert!(
            res.headers()[header::CONTENT_SECURITY_POLICY]
                .to_str()
                .unwrap()
                .contains("script-src 'self'")
        );
        for name in asset_names() {
            let res = get(&format!("/ui/{name}")).await;
            assert_eq!(res.status(), StatusCode::OK, "{name}");
        }
        assert_eq!(
            get("/ui/app.css").await.headers()[header::CONTENT_TYPE],
            "text/css; charset=utf-8"
        );
    }

    #[tokio::test]
    async fn anything_else_under_ui_is_not_found() {
        for path in ["/ui/nope.js", "/ui/..%2fCargo.toml", "/ui/"] {
            assert_eq!(get(path).await.status(), StatusCode::NOT_FOUND, "{path}");
        }
    }

    /// The harness and the page in a real browser, with the UI router alone: `/api/v1/me`
    /// answers 404 here, and the page must say so rather than hang on "Loading…".
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn in_a_browser_the_page_shows_what_the_server_answered() {
        use xmbridge_test_kit::browser::{Browser, WAIT};
        let Some(b) = Browser::start().await else {
            return;
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router()).await });
        b.goto(&format!("http://{addr}/")).await;
        let text = b.wait_text("#main .msg.error", "404", WAIT).await;
        assert!(text.contains("The server answered 404"), "{text}");
        // The stylesheet applied (the policy lets /ui/ assets in): the header is a flex row.
        let display = b
            .execute(
                "return getComputedStyle(document.querySelector('header.top')).display",
                serde_json::json!([]),
            )
            .await;
        assert_eq!(display, "flex");
        b.screenshot("ui-router-alone").await;
    }

    #[test]
    fn the_page_links_only_embedded_assets_and_holds_no_inline_script() {
        let html = std::str::from_utf8(INDEX).unwrap();
        for name in asset_names() {
            if name != "icon.svg" {
                assert!(html.contains(&format!("/ui/{name}")), "{name}");
            }
        }
        // The policy forbids inline script: one would silently not run.
        assert!(!html.contains("<script>"), "inline script in index.html");
        assert!(!html.contains("onclick="), "inline handler in index.html");
    }
}
