//! The authorization-code flow of `xmbridge connection authorize NAME`: build the authorize URL
//! (random `state`, PKCE S256), listen on 127.0.0.1 for the browser's redirect, answer the
//! browser with a small page, check `state`, exchange the code. It owns the loopback listener
//! (a minimal HTTP/1.1 reader: one GET line is all a redirect needs); it must not store tokens —
//! the caller saves the returned refresh token.

use crate::error::AuthError;
use crate::oauth::{OAuthClient, TokenResponse};
use secrecy::{ExposeSecret, SecretString};
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use url::Url;

/// Settings of one authorize run.
#[derive(Clone, Debug)]
pub struct AuthorizeOptions {
    /// Space-separated scopes (`None`: the client's defaults).
    pub scope: Option<String>,
    /// Port on 127.0.0.1 for the redirect; 0 picks a free one. Providers that register exact
    /// redirect URIs need a fixed port.
    pub port: u16,
    /// Path of the redirect URI.
    pub callback_path: String,
    /// How long to wait for the browser.
    pub timeout: Duration,
    /// Send a PKCE S256 challenge (harmless where unsupported).
    pub pkce: bool,
    /// More query parameters for the authorize URL (e.g. Qualtrics' `organization`).
    pub extra_params: Vec<(String, String)>,
}

impl Default for AuthorizeOptions {
    fn default() -> Self {
        AuthorizeOptions {
            scope: None,
            port: 0,
            callback_path: "/callback".into(),
            timeout: Duration::from_secs(300),
            pkce: true,
            extra_params: Vec::new(),
        }
    }
}

/// What the redirect carried.
struct Callback {
    params: BTreeMap<String, String>,
}

/// A started authorize run: the listener is bound, the URL is ready. Show [`AuthorizeFlow::url`]
/// to the user, then [`AuthorizeFlow::finish`].
pub struct AuthorizeFlow<'a> {
    oauth: &'a OAuthClient,
    url: Url,
    redirect_uri: String,
    state: String,
    verifier: Option<SecretString>,
    timeout: Duration,
    rx: mpsc::Receiver<Callback>,
    accept_task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for AuthorizeFlow<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthorizeFlow")
            .field("redirect_uri", &self.redirect_uri)
            .finish_non_exhaustive()
    }
}

impl Drop for AuthorizeFlow<'_> {
    fn drop(&mut self) {
        self.accept_task.abort();
    }
}

impl<'a> AuthorizeFlow<'a> {
    /// Binds `127.0.0.1:{port}` and builds the authorize URL.
    pub async fn start(oauth: &'a OAuthClient, opts: AuthorizeOptions) -> Result<Self, AuthError> {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, opts.port));
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| AuthError::Listener {
                addr: addr.to_string(),
                detail: e.to_string(),
            })?;
        let port = listener
            .local_addr()
            .map_err(|e| AuthError::Listener {
                addr: addr.to_string(),
                detail: e.to_string(),
            })?
            .port();
        let path = if opts.callback_path.starts_with('/') {
            opts.callback_path.clone()
        } else {
            format!("/{}", opts.callback_path)
        };
        let redirect_uri = format!("http://127.0.0.1:{port}{path}");
        let state = crate::random_token(24)?.expose_secret().to_string();
        let verifier = if opts.pkce {
            Some(crate::random_token(32)?)
        } else {
            None
        };
        let challenge = verifier
            .as_ref()
            .map(|v| crate::pkce_challenge(v.expose_secret()));
        let url = oauth.authorize_url(
            &redirect_uri,
            opts.scope.as_deref(),
            &state,
            challenge.as_deref(),
            &opts.extra_params,
        )?;
        let (tx, rx) = mpsc::channel(4);
        let accept_task = tokio::spawn(accept_loop(listener, path, state.clone(), tx));
        Ok(AuthorizeFlow {
            oauth,
            url,
            redirect_uri,
            state,
            verifier,
            timeout: opts.timeout,
            rx,
            accept_task,
        })
    }

    /// The URL to open in a browser.
    pub fn url(&self) -> &Url {
        &self.url
    }

    /// `http://127.0.0.1:PORT/callback`
    pub fn redirect_uri(&self) -> &str {
        &self.redirect_uri
    }

    /// Waits for the redirect, checks it and exchanges the code.
    pub async fn finish(self) -> Result<TokenResponse, AuthError> {
        self.finish_or_pasted(std::future::pending()).await
    }

    /// Like [`Self::finish`], but also takes the redirect as the user pastes it (for a browser
    /// on another machine, whose redirect to 127.0.0.1 cannot arrive here): whichever comes
    /// first. `pasted` yields the address the browser was sent to (its `state` is checked like
    /// the listener's), or the bare `code` from it (then only PKCE binds it to this request),
    /// or `None` when there is no input (the listener is still waited for).
    pub async fn finish_or_pasted(
        mut self,
        pasted: impl std::future::Future<Output = Option<String>>,
    ) -> Result<TokenResponse, AuthError> {
        let secs = self.timeout.as_secs();
        let from_listener = async {
            match tokio::time::timeout(self.timeout, self.rx.recv()).await {
                Ok(Some(cb)) => Ok(cb.params),
                Ok(None) => Err(AuthError::Listener {
                    addr: self.redirect_uri.clone(),
                    detail: "the listener stopped".into(),
                }),
                Err(_) => Err(AuthError::AuthorizeTimeout { secs }),
            }
        };
        let from_paste = async {
            match pasted.await {
                Some(text) => pasted_params(&text, &self.state),
                None => std::future::pending().await,
            }
        };
        let p = tokio::select! {
            p = from_listener => p?,
            p = from_paste => p?,
        };
        self.accept_task.abort();
        // The state is checked before anything else, errors included: an answer to another
        // request must not be acted on.
        if p.get("state").map(String::as_str) != Some(self.state.as_str()) {
            return Err(AuthError::StateMismatch);
        }
        if let Some(error) = p.get("error") {
            let detail = p
                .get("error_description")
                .cloned()
                .unwrap_or_else(|| "no description".into());
            return Err(if error == "access_denied" {
                AuthError::AccessDenied { detail }
            } else if error == "invalid_scope" {
                AuthError::InvalidScope {
                    provider: self.oauth.provider().name.clone(),
                    scope: self
                        .url
                        .query_pairs()
                        .find(|(k, _)| k == "scope")
                        .map(|(_, v)| v.into_owned())
                        .unwrap_or_else(|| "(the client's default scopes)".into()),
                    detail,
                }
            } else {
                AuthError::AuthorizeFailed {
                    error: error.clone(),
                    detail,
                }
            });
        }
        let Some(code) = p.get("code").filter(|c| !c.is_empty()) else {
            return Err(AuthError::AuthorizeFailed {
                error: "invalid_request".into(),
                detail: "the redirect carried neither a code nor an error".into(),
            });
        };
        let code = SecretString::from(code.clone());
        drop(p);
        self.oauth
            .authorization_code(&code, &self.redirect_uri, self.verifier.as_ref())
            .await
    }
}

/// The redirect's parameters from what a user pasted: the whole address (its query), the query
/// alone, or a bare code (to which this request's own `state` is added: nothing else can be
/// checked, and PKCE still ties the code to this request).
fn pasted_params(text: &str, state: &str) -> Result<BTreeMap<String, String>, AuthError> {
    let text = text.trim();
    let query = if let Ok(url) = Url::parse(text) {
        url.query().unwrap_or_default().to_string()
    } else if text.contains('=') {
        text.trim_start_matches('?').to_string()
    } else if !text.is_empty() && !text.contains(char::is_whitespace) {
        let mut p = BTreeMap::new();
        p.insert("code".to_string(), text.to_string());
        p.insert("state".to_string(), state.to_string());
        return Ok(p);
    } else {
        return Err(AuthError::AuthorizeFailed {
            error: "invalid_request".into(),
            detail: "nothing was pasted: paste the whole address the browser was sent to (it starts with http://127.0.0.1), or the code in it".into(),
        });
    };
    Ok(url::form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect())
}

/// Runs the whole flow: start, hand the URL to `on_url` (the CLI prints it), wait, exchange.
pub async fn authorize(
    oauth: &OAuthClient,
    opts: AuthorizeOptions,
    on_url: impl FnOnce(&Url),
) -> Result<TokenResponse, AuthError> {
    let flow = AuthorizeFlow::start(oauth, opts).await?;
    on_url(flow.url());
    flow.finish().await
}

/// [`authorize`] for a browser elsewhere: `on_url` gets the URL and the redirect URI, then the
/// redirect is taken from the listener or from `pasted`, whichever comes first
/// ([`AuthorizeFlow::finish_or_pasted`]).
pub async fn authorize_with_paste<F: std::future::Future<Output = Option<String>>>(
    oauth: &OAuthClient,
    opts: AuthorizeOptions,
    on_url: impl FnOnce(&Url, &str) -> F,
) -> Result<TokenResponse, AuthError> {
    let flow = AuthorizeFlow::start(oauth, opts).await?;
    let pasted = on_url(flow.url(), flow.redirect_uri());
    flow.finish_or_pasted(pasted).await
}

/// Accepts browser connections until one hits the callback path with `code` or `error`.
async fn accept_loop(
    listener: TcpListener,
    path: String,
    state: String,
    tx: mpsc::Sender<Callback>,
) {
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(_) => {
                // Out of file descriptors or similar: do not spin.
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // Browsers open spare connections that never send anything: serve each on its own.
        let (path, state, tx) = (path.clone(), state.clone(), tx.clone());
        tokio::spawn(async move {
            let _ = tokio::time::timeout(
                Duration::from_secs(10),
                serve_one(stream, &path, &state, &tx),
            )
            .await;
        });
    }
}

async fn serve_one(
    mut stream: TcpStream,
    path: &str,
    state: &str,
    tx: &mpsc::Sender<Callback>,
) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(2048);
    let mut chunk = [0u8; 2048];
    // Only the request line matters; stop at the end of the headers or at 16 KiB.
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 16 * 1024 {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let head = String::from_utf8_lossy(&buf);
    let line = head.lines().next().unwrap_or("");
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let parsed = Url::parse("http://127.0.0.1").and_then(|b| b.join(target));
    let (status, title, body, cb) = match parsed {
        Ok(u) if method == "GET" && u.path() == path => {
            let params: BTreeMap<String, String> = u.query_pairs().into_owned().collect();
            page_for(
                &params,
                state,
                params.contains_key("code") || params.contains_key("error"),
            )
            .map_or(
                (
                    "400 Bad Request",
                    "Not an authorization answer",
                    "This address only receives the provider's redirect.".to_string(),
                    None,
                ),
                |(s, t, b)| (s, t, b, Some(Callback { params })),
            )
        }
        _ => (
            "404 Not Found",
            "Not found",
            "This address only receives the provider's redirect.".to_string(),
            None,
        ),
    };
    let html = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>xmbridge: {title}</title></head>\
<body style=\"font-family:sans-serif;max-width:40em;margin:3em auto\"><h1>{title}</h1><p>{body}</p></body></html>"
    );
    let resp = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n{html}",
        html.len()
    );
    stream.write_all(resp.as_bytes()).await?;
    stream.shutdown().await?;
    if let Some(cb) = cb {
        let _ = tx.send(cb).await;
    }
    Ok(())
}

/// Status, title and text of the page the browser sees; `None` if this is not an answer.
fn page_for(
    p: &BTreeMap<String, String>,
    state: &str,
    is_answer: bool,
) -> Option<(&'static str, &'static str, String)> {
    if !is_answer {
        return None;
    }
    if p.get("state").map(String::as_str) != Some(state) {
        return Some((
            "400 Bad Request",
            "Authorization not accepted",
            "This answer does not belong to the running <code>xmbridge connection authorize</code> (state mismatch). Nothing was done; run the command again and use the URL it prints.".into(),
        ));
    }
    if let Some(e) = p.get("error") {
        let d = p.get("error_description").map(String::as_str).unwrap_or("");
        return Some((
            "200 OK",
            "Authorization failed",
            format!(
                "The provider answered <code>{}</code>: {}. You can close this window; the terminal says what to do next.",
                html_escape(e),
                html_escape(d)
            ),
        ));
    }
    Some((
        "200 OK",
        "Authorization received",
        "xmbridge received the authorization. You can close this window and return to the terminal.".into(),
    ))
}

fn html_escape(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '<' => "&lt;".to_string(),
            '>' => "&gt;".to_string(),
            '&' => "&amp;".to_string(),
            '"' => "&quot;".to_string(),
            '\'' => "&#39;".to_string(),
            c => c.to_string(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_html() {
        assert_eq!(html_escape("<b>&\"'"), "&lt;b&gt;&amp;&quot;&#39;");
    }
}
