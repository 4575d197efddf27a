//! A real headless browser for UI tests: Debian's `chromium` driven through `chromedriver` over
//! W3C WebDriver HTTP, on a free loopback port, with the one rule on `XMBRIDGE_TEST_BROWSER`.
//!
//! `XMBRIDGE_TEST_BROWSER` set (scripts/test sets it, after installing `chromium` and
//! `chromium-driver` when it can): a test that cannot find or start chromedriver fails with the
//! reason. Unset and no chromedriver: the test prints a `SKIPPED:` line and returns. Each
//! [`Browser`] is its own chromedriver process with its own throw-away profile, ended when the
//! value is dropped (also when the test panics).
//!
//! Every call panics with what it was doing and what the page showed: a panic is how a test
//! reports a failure. A wait that times out saves a screenshot (`failed-<what>.png`) next to the
//! others, in [`screenshot_dir`].

use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{Value, json};

const VAR: &str = "XMBRIDGE_TEST_BROWSER";
/// How the key of an element reference in WebDriver answers begins. The standard names
/// `element-6066-11e4-a23a-00665d6a2b1e`; Debian's chromedriver 156 answers with another
/// suffix, so only the common beginning is relied on.
const ELEMENT: &str = "element-6066-11e4-";

/// The element reference in one WebDriver answer value.
fn element_id(v: &Value) -> Option<String> {
    v.as_object()?
        .iter()
        .find(|(k, _)| k.starts_with(ELEMENT))
        .and_then(|(_, id)| id.as_str())
        .map(str::to_string)
}
/// How long the `wait_*` calls wait unless told otherwise (generous: the whole suite may be
/// running on two busy cores).
pub const WAIT: Duration = Duration::from_secs(30);

/// Keys for [`Browser::press`] (WebDriver's code points).
pub mod keys {
    /// Tab.
    pub const TAB: &str = "\u{E004}";
    /// Enter.
    pub const ENTER: &str = "\u{E007}";
    /// Space.
    pub const SPACE: &str = "\u{E00D}";
    /// Shift (held for the next key in the same [`super::Browser::press`] call).
    pub const SHIFT: &str = "\u{E008}";
}

fn required() -> bool {
    std::env::var_os(VAR).is_some_and(|v| !v.is_empty())
}

fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// chromedriver's path (`XMBRIDGE_CHROMEDRIVER`, else `chromedriver` on `PATH`, else
/// `/usr/bin/chromedriver`); `None` after a skip line when it is missing and
/// `XMBRIDGE_TEST_BROWSER` is unset. Missing while `XMBRIDGE_TEST_BROWSER` is set: panics.
pub fn chromedriver() -> Option<PathBuf> {
    let found = std::env::var_os("XMBRIDGE_CHROMEDRIVER")
        .map(PathBuf::from)
        .filter(|p| p.is_file())
        .or_else(|| on_path("chromedriver"))
        .or_else(|| Some(PathBuf::from("/usr/bin/chromedriver")).filter(|p| p.is_file()));
    if found.is_some() {
        return found;
    }
    if required() {
        panic!(
            "{VAR} is set and chromedriver was not found (XMBRIDGE_CHROMEDRIVER, PATH, \
             /usr/bin/chromedriver): install Debian's `chromium` and `chromium-driver` \
             (scripts/test does when run as root with apt-get)"
        );
    }
    crate::skipped(&format!(
        "needs a headless browser; install `chromium` and `chromium-driver` and set {VAR}=1 \
         (scripts/test does)"
    ));
    None
}

/// The browser binary chromedriver starts: `XMBRIDGE_CHROMIUM`, else `/usr/bin/chromium` when
/// present, else chromedriver's own choice.
fn chromium() -> Option<PathBuf> {
    std::env::var_os("XMBRIDGE_CHROMIUM")
        .map(PathBuf::from)
        .or_else(|| Some(PathBuf::from("/usr/bin/chromium")))
        .filter(|p| p.is_file())
}

/// Where screenshots go: `$CARGO_TARGET_DIR/ui-screenshots` when that variable is set, else
/// `target/ui-screenshots` in the workspace.
pub fn screenshot_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(t) if !t.is_empty() => PathBuf::from(t).join("ui-screenshots"),
        _ => Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../target/ui-screenshots")
            .components()
            .collect(),
    }
}

fn free_port() -> u16 {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("a free loopback port");
    l.local_addr().expect("the port's address").port()
}

/// One headless Chromium session.
pub struct Browser {
    http: reqwest::Client,
    /// `http://127.0.0.1:PORT/session/ID`.
    session: String,
    driver: Option<Child>,
    _profile: tempfile::TempDir,
    shots: PathBuf,
}

/// An element found on the page (a WebDriver element reference).
#[derive(Clone, Debug)]
pub struct Element {
    id: String,
    css: String,
}

impl Element {
    /// The CSS selector it was found by (for messages).
    pub fn css(&self) -> &str {
        &self.css
    }
}

/// A WebDriver error answer.
#[derive(Debug)]
struct WdError {
    error: String,
    message: String,
}

impl Browser {
    /// Starts chromedriver on a free loopback port and a headless session 1280×900; `None`
    /// (after the skip line) when chromedriver is missing and `XMBRIDGE_TEST_BROWSER` is unset.
    pub async fn start() -> Option<Browser> {
        let driver_path = chromedriver()?;
        let port = free_port();
        let log = tempfile::NamedTempFile::new().expect("a chromedriver log file");
        let driver = Command::new(&driver_path)
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log.reopen().expect("the log file"))
            .spawn()
            .unwrap_or_else(|e| panic!("{} does not start: {e}", driver_path.display()));
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(60))
            .build()
            .expect("an HTTP client");
        let base = format!("http://127.0.0.1:{port}");
        let profile = tempfile::tempdir().expect("a browser profile directory");
        let mut me = Browser {
            http,
            session: String::new(),
            driver: Some(driver),
            _profile: profile,
            shots: screenshot_dir(),
        };
        // chromedriver answers /status once it listens.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(r) = me.http.get(format!("{base}/status")).send().await
                && r.status().is_success()
            {
                break;
            }
            if let Some(Ok(Some(st))) = me.driver.as_mut().map(Child::try_wait) {
                panic!(
                    "chromedriver exited ({st}) before answering: {}",
                    std::fs::read_to_string(log.path()).unwrap_or_default()
                );
            }
            assert!(
                Instant::now() < deadline,
                "chromedriver did not answer on {base} within 20 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut args = vec![
            "--headless=new".to_string(),
            "--no-sandbox".to_string(),
            "--disable-dev-shm-usage".to_string(),
            "--disable-gpu".to_string(),
            "--no-first-run".to_string(),
            "--no-default-browser-check".to_string(),
            "--window-size=1280,900".to_string(),
            format!("--user-data-dir={}", me._profile.path().display()),
        ];
        // Loopback only, even for Chromium's own background traffic; no crash reporter
        // writing outside the throw-away profile.
        args.push("--disable-background-networking".to_string());
        args.push("--disable-crash-reporter".to_string());
        args.push("--disable-breakpad".to_string());
        let mut opts = json!({ "args": args });
        if let Some(bin) = chromium() {
            opts["binary"] = json!(bin);
        }
        let caps = json!({
            "capabilities": { "alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": opts,
                "unhandledPromptBehavior": "accept",
            }}
        });
        let r = me
            .http
            .post(format!("{base}/session"))
            .json(&caps)
            .send()
            .await
            .expect("chromedriver answers a new session");
        let v: Value = r.json().await.expect("a JSON answer to a new session");
        let Some(id) = v["value"]["sessionId"].as_str() else {
            panic!(
                "chromedriver did not start Chromium: {v}\nchromedriver log:\n{}",
                std::fs::read_to_string(log.path()).unwrap_or_default()
            );
        };
        me.session = format!("{base}/session/{id}");
        std::fs::create_dir_all(&me.shots).expect("the screenshot directory");
        Some(me)
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, WdError> {
        let url = format!("{}{path}", self.session);
        let mut req = self.http.request(method.clone(), &url);
        // WebDriver wants a JSON body on every POST, `{}` when there is nothing to say.
        if method == reqwest::Method::POST {
            req = req.json(&body.unwrap_or_else(|| json!({})));
        }
        let r = req.send().await.map_err(|e| WdError {
            error: "no answer".into(),
            message: format!("{method} {path}: {e}"),
        })?;
        let ok = r.status().is_success();
        let v: Value = r.json().await.map_err(|e| WdError {
            error: "not JSON".into(),
            message: e.to_string(),
        })?;
        if ok {
            Ok(v["value"].clone())
        } else {
            Err(WdError {
                error: v["value"]["error"]
                    .as_str()
                    .unwrap_or("unknown")
                    .to_string(),
                message: v["value"]["message"]
                    .as_str()
                    .unwrap_or_default()
                    .lines()
                    .next()
                    .unwrap_or_default()
                    .to_string(),
            })
        }
    }

    async fn must(
        &self,
        what: &str,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Value {
        match self.call(method, path, body).await {
            Ok(v) => v,
            Err(e) => panic!("{what}: {} ({})", e.message, e.error),
        }
    }

    /// Opens `url`.
    pub async fn goto(&self, url: &str) {
        self.must(
            &format!("open {url}"),
            reqwest::Method::POST,
            "/url",
            Some(json!({ "url": url })),
        )
        .await;
    }

    /// Reloads the page shown (a [`Browser::goto`] to the same address that differs only in its
    /// `#fragment` would not).
    pub async fn refresh(&self) {
        self.must("reload the page", reqwest::Method::POST, "/refresh", None)
            .await;
    }

    /// The address of the page shown.
    pub async fn url(&self) -> String {
        self.must("read the URL", reqwest::Method::GET, "/url", None)
            .await
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// Sets the window's size (e.g. 400 wide for a phone).
    pub async fn resize(&self, width: u32, height: u32) {
        self.must(
            "resize the window",
            reqwest::Method::POST,
            "/window/rect",
            Some(json!({ "width": width, "height": height })),
        )
        .await;
    }

    async fn try_find(&self, css: &str) -> Option<Element> {
        let v = self
            .call(
                reqwest::Method::POST,
                "/element",
                Some(json!({ "using": "css selector", "value": css })),
            )
            .await
            .ok()?;
        element_id(&v).map(|id| Element {
            id,
            css: css.to_string(),
        })
    }

    /// Every element matching `css` now (possibly none).
    pub async fn find_all(&self, css: &str) -> Vec<Element> {
        let v = self
            .must(
                &format!("find {css}"),
                reqwest::Method::POST,
                "/elements",
                Some(json!({ "using": "css selector", "value": css })),
            )
            .await;
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(element_id)
                    .map(|id| Element {
                        id,
                        css: css.to_string(),
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// True when an element matches `css` now.
    pub async fn exists(&self, css: &str) -> bool {
        self.try_find(css).await.is_some()
    }

    /// The first element matching `css`, waiting up to [`WAIT`] for it to appear and be shown.
    pub async fn find(&self, css: &str) -> Element {
        self.wait_for(css, WAIT).await
    }

    /// The first shown element matching `css`, waiting up to `timeout`.
    pub async fn wait_for(&self, css: &str, timeout: Duration) -> Element {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(e) = self.try_find(css).await
                && self.displayed(&e).await
            {
                return e;
            }
            if Instant::now() > deadline {
                self.fail(&format!("no shown element {css} within {timeout:?}"), css)
                    .await;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits up to `timeout` until the text of the first element matching `css` contains
    /// `needle`; returns the whole text.
    pub async fn wait_text(&self, css: &str, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        let mut last = String::new();
        loop {
            if let Some(e) = self.try_find(css).await
                && let Ok(v) = self
                    .call(
                        reqwest::Method::GET,
                        &format!("/element/{}/text", e.id),
                        None,
                    )
                    .await
            {
                last = v.as_str().unwrap_or_default().to_string();
                if last.contains(needle) {
                    return last;
                }
            }
            if Instant::now() > deadline {
                self.fail(
                    &format!(
                        "{css} did not show {needle:?} within {timeout:?}; it showed {last:?}"
                    ),
                    css,
                )
                .await;
            }
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
    }

    /// Waits up to `timeout` until `script` (a function body returning a value) returns a
    /// truthy value; returns it. `what` names the condition in the failure.
    pub async fn wait_until(&self, what: &str, script: &str, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(v) = self
                .call(
                    reqwest::Method::POST,
                    "/execute/sync",
                    Some(json!({ "script": script, "args": [] })),
                )
                .await
            {
                let truthy = match &v {
                    Value::Null => false,
                    Value::Bool(b) => *b,
                    Value::Number(n) => n.as_f64() != Some(0.0),
                    Value::String(s) => !s.is_empty(),
                    _ => true,
                };
                if truthy {
                    return v;
                }
            }
            if Instant::now() > deadline {
                self.fail(&format!("{what}: not true within {timeout:?}"), "wait")
                    .await;
            }
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
    }

    async fn displayed(&self, e: &Element) -> bool {
        self.call(
            reqwest::Method::GET,
            &format!("/element/{}/displayed", e.id),
            None,
        )
        .await
        .ok()
        .and_then(|v| v.as_bool())
        .unwrap_or(false)
    }

    /// Clicks the first shown element matching `css` (waiting for it).
    pub async fn click(&self, css: &str) {
        let e = self.find(css).await;
        self.click_el(&e).await;
    }

    /// Clicks `e`.
    pub async fn click_el(&self, e: &Element) {
        self.must(
            &format!("click {}", e.css),
            reqwest::Method::POST,
            &format!("/element/{}/click", e.id),
            None,
        )
        .await;
    }

    /// Types `text` into the first shown element matching `css` (after clearing it).
    pub async fn fill(&self, css: &str, text: &str) {
        let e = self.find(css).await;
        self.must(
            &format!("clear {css}"),
            reqwest::Method::POST,
            &format!("/element/{}/clear", e.id),
            None,
        )
        .await;
        self.type_el(&e, text).await;
    }

    /// Sends `text` as key strokes to `e` (a file input takes a file's path this way).
    pub async fn type_el(&self, e: &Element, text: &str) {
        self.must(
            &format!("type into {}", e.css),
            reqwest::Method::POST,
            &format!("/element/{}/value", e.id),
            Some(json!({ "text": text })),
        )
        .await;
    }

    /// Chooses the file at `path` in the file input `css` (which may be hidden).
    pub async fn upload(&self, css: &str, path: &Path) {
        let e = self
            .try_find(css)
            .await
            .unwrap_or_else(|| panic!("no file input {css}"));
        let p = path.to_str().expect("a UTF-8 path");
        self.type_el(&e, p).await;
    }

    /// Selects the option with value `value` of the `<select>` matching `css`, as a click would.
    pub async fn select(&self, css: &str, value: &str) {
        self.find(css).await;
        self.click(&format!("{css} option[value=\"{value}\"]"))
            .await;
    }

    /// Types `text` on whatever has the focus, one key stroke per character (the way a person
    /// types into the field they tabbed to).
    pub async fn keyboard(&self, text: &str) {
        let mut actions = Vec::new();
        for c in text.chars() {
            actions.push(json!({ "type": "keyDown", "value": c.to_string() }));
            actions.push(json!({ "type": "keyUp", "value": c.to_string() }));
        }
        self.must(
            "type on the keyboard",
            reqwest::Method::POST,
            "/actions",
            Some(json!({ "actions": [ { "type": "key", "id": "keyboard", "actions": actions } ] })),
        )
        .await;
    }

    /// Presses `keys` together on whatever has the focus (each one key, e.g. [`keys::TAB`];
    /// a modifier is held until the end of the call).
    pub async fn press(&self, keys: &[&str]) {
        let mut actions = Vec::new();
        for k in keys {
            actions.push(json!({ "type": "keyDown", "value": k }));
        }
        for k in keys.iter().rev() {
            actions.push(json!({ "type": "keyUp", "value": k }));
        }
        self.must(
            "press keys",
            reqwest::Method::POST,
            "/actions",
            Some(json!({ "actions": [ { "type": "key", "id": "keyboard", "actions": actions } ] })),
        )
        .await;
        let _ = self.call(reqwest::Method::DELETE, "/actions", None).await;
    }

    /// The visible text of the first element matching `css` (waiting for it).
    pub async fn text(&self, css: &str) -> String {
        let e = self.find(css).await;
        self.text_el(&e).await
    }

    /// The visible text of `e`.
    pub async fn text_el(&self, e: &Element) -> String {
        self.must(
            &format!("read the text of {}", e.css),
            reqwest::Method::GET,
            &format!("/element/{}/text", e.id),
            None,
        )
        .await
        .as_str()
        .unwrap_or_default()
        .to_string()
    }

    /// The DOM property `name` of the first element matching `css` (e.g. `value`).
    pub async fn property(&self, css: &str, name: &str) -> Value {
        let e = self.find(css).await;
        self.must(
            &format!("read {name} of {css}"),
            reqwest::Method::GET,
            &format!("/element/{}/property/{name}", e.id),
            None,
        )
        .await
    }

    /// Runs `script` (a function body; `arguments` holds `args`) in the page; returns its value.
    pub async fn execute(&self, script: &str, args: Value) -> Value {
        self.must(
            "run a script",
            reqwest::Method::POST,
            "/execute/sync",
            Some(json!({ "script": script, "args": args })),
        )
        .await
    }

    /// The whole page's HTML as the browser holds it now.
    pub async fn source(&self) -> String {
        self.must(
            "read the page source",
            reqwest::Method::GET,
            "/source",
            None,
        )
        .await
        .as_str()
        .unwrap_or_default()
        .to_string()
    }

    /// Saves a screenshot of the whole page (not just the window) as `NAME.png` in
    /// [`screenshot_dir`]; returns its path. The window grows to the page's height for the shot
    /// (up to 8000 px) and is put back afterwards.
    pub async fn screenshot(&self, name: &str) -> PathBuf {
        let rect = self
            .must(
                "read the window size",
                reqwest::Method::GET,
                "/window/rect",
                None,
            )
            .await;
        let dims = self
            .execute(
                "return [document.documentElement.scrollHeight, window.outerHeight - window.innerHeight]",
                json!([]),
            )
            .await;
        let (w, h) = (rect["width"].as_u64(), rect["height"].as_u64());
        let page = dims[0].as_u64().unwrap_or(0) + dims[1].as_u64().unwrap_or(0);
        let grow = matches!(h, Some(h) if page > h);
        if let (true, Some(w)) = (grow, w) {
            self.resize(w as u32, page.min(8000) as u32).await;
        }
        let v = self
            .must(
                "take a screenshot",
                reqwest::Method::GET,
                "/screenshot",
                None,
            )
            .await;
        if let (true, Some(w), Some(h)) = (grow, w, h) {
            self.resize(w as u32, h as u32).await;
        }
        let png = base64::engine::general_purpose::STANDARD
            .decode(v.as_str().unwrap_or_default())
            .expect("a base64 PNG");
        let path = self.shots.join(format!("{name}.png"));
        std::fs::write(&path, png).expect("the screenshot is written");
        path
    }

    /// Panics with `msg`, the page's text and a screenshot named after `what`.
    async fn fail(&self, msg: &str, what: &str) -> ! {
        let name: String = what
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .take(60)
            .collect();
        let shot = match self.call(reqwest::Method::GET, "/screenshot", None).await {
            Ok(v) => base64::engine::general_purpose::STANDARD
                .decode(v.as_str().unwrap_or_default())
                .ok()
                .and_then(|png| {
                    let p = self.shots.join(format!("failed-{name}.png"));
                    std::fs::write(&p, png).ok().map(|()| p)
                }),
            Err(_) => None,
        };
        let body = self
            .call(
                reqwest::Method::POST,
                "/execute/sync",
                Some(json!({ "script": "return document.body ? document.body.innerText : ''", "args": [] })),
            )
            .await
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        panic!(
            "{msg}\nscreenshot: {}\npage text:\n{body}",
            shot.map(|p| p.display().to_string())
                .unwrap_or_else(|| "(none)".into())
        );
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Ending the session closes Chromium; then chromedriver goes. Drop may run inside the
        // test's runtime, where blocking on a future is not allowed: a thread of its own does it.
        if !self.session.is_empty() {
            let url = self.session.clone();
            let _ = std::thread::spawn(move || {
                let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                else {
                    return;
                };
                rt.block_on(async move {
                    if let Ok(c) = reqwest::Client::builder()
                        .no_proxy()
                        .timeout(Duration::from_secs(10))
                        .build()
                    {
                        let _ = c.delete(url).send().await;
                    }
                });
            })
            .join();
        }
        if let Some(mut d) = self.driver.take() {
            let _ = d.kill();
            let _ = d.wait();
        }
    }
}
