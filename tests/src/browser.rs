//! Headless Chromium driven through chromedriver (both from Debian's
//! packages), for the end-to-end tests of the real page.
//!
//! Every browser opened through [`Browsers`] is closed when the scenario
//! ends, pass or fail; on failure each one's screenshot and console log are
//! saved under `target/e2e/` first.

use std::net::TcpListener;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fantoccini::wd::{Capabilities, WebDriverCompatibleCommand};
use fantoccini::{Client, ClientBuilder, Locator};
use futures_util::FutureExt;
use hyper_util::client::legacy::connect::HttpConnector;

use crate::{RemoveOnDrop, fresh_temp_path};

/// How long a page may take to show something a test waits for.
pub const UI_TIMEOUT: Duration = Duration::from_secs(15);
/// How often a wait polls the page.
const POLL: Duration = Duration::from_millis(50);
/// How long chromedriver may take to start.
const DRIVER_START: Duration = Duration::from_secs(20);

/// Chromium's flags for running headless as root on our machines, without
/// any background network traffic.
const CHROMIUM_FLAGS: &[&str] = &[
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1100,760",
];

fn chromium_path() -> String {
    std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".to_owned())
}

fn chromedriver_path() -> String {
    std::env::var("CHROMEDRIVER").unwrap_or_else(|_| "/usr/bin/chromedriver".to_owned())
}

/// Where failure screenshots and logs go.
pub fn artifacts_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    target.join("e2e")
}

/// A running chromedriver, killed when dropped.
#[derive(Debug)]
pub struct Driver {
    child: Child,
    pub url: String,
    /// The temporary directory of chromedriver and its browsers (their
    /// profiles, and Chromium's own scratch files through `TMPDIR`), removed
    /// with the driver.
    tmp: RemoveOnDrop,
}

impl Driver {
    /// Starts chromedriver on a free loopback port.
    pub async fn start() -> Self {
        let port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port();
        let path = chromedriver_path();
        let tmp = fresh_temp_path("driver");
        std::fs::create_dir_all(&tmp).expect("create the browsers' temporary directory");
        let tmp = RemoveOnDrop(tmp);
        let child = Command::new(&path)
            .arg(format!("--port={port}"))
            .env("TMPDIR", &tmp.0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {path} ({e}); install chromium-driver or run `cargo xtask test`"));
        let deadline = Instant::now() + DRIVER_START;
        while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not listen within {DRIVER_START:?}");
            tokio::time::sleep(POLL).await;
        }
        Self { child, url: format!("http://127.0.0.1:{port}"), tmp }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The browsers of one scenario.
#[derive(Debug)]
pub struct Browsers {
    driver: Driver,
    opened: Mutex<Vec<(String, Client)>>,
    scenario: String,
}

/// Chromium's console log: chromedriver's legacy log endpoint, which
/// fantoccini has no method for.
#[derive(Debug)]
struct BrowserLog;

impl WebDriverCompatibleCommand for BrowserLog {
    fn endpoint(&self, base: &url::Url, session: Option<&str>) -> Result<url::Url, url::ParseError> {
        base.join(&format!("session/{}/se/log", session.unwrap_or_default()))
    }

    fn method_and_body(&self, _url: &url::Url) -> (http::Method, Option<String>) {
        (http::Method::POST, Some(r#"{"type":"browser"}"#.to_owned()))
    }
}

/// A Chrome DevTools Protocol command, through chromedriver's endpoint for them.
#[derive(Debug)]
struct Cdp {
    cmd: &'static str,
    params: serde_json::Value,
}

impl WebDriverCompatibleCommand for Cdp {
    fn endpoint(&self, base: &url::Url, session: Option<&str>) -> Result<url::Url, url::ParseError> {
        base.join(&format!("session/{}/goog/cdp/execute", session.unwrap_or_default()))
    }

    fn method_and_body(&self, _url: &url::Url) -> (http::Method, Option<String>) {
        let body = serde_json::json!({ "cmd": self.cmd, "params": self.params });
        (http::Method::POST, Some(body.to_string()))
    }
}

/// Runs `script` in every document `client` loads from now on, before the
/// page's own scripts (and outside the page's Content-Security-Policy).
pub async fn run_before_each_page(client: &Client, script: &str) {
    let cmd = Cdp { cmd: "Page.addScriptToEvaluateOnNewDocument", params: serde_json::json!({ "source": script }) };
    client.issue_cmd(cmd).await.expect("add a script to every new document");
}

/// Chromium's console messages since the last call (CSP violations are among
/// them, load-time ones included).
pub async fn console_messages(client: &Client) -> Vec<String> {
    let log = client.issue_cmd(BrowserLog).await.expect("read the browser's log");
    let entries = log.as_array().cloned().unwrap_or_else(|| panic!("a log is a list: {log}"));
    entries.iter().filter_map(|e| e["message"].as_str().map(str::to_owned)).collect()
}

impl Browsers {
    /// Opens a new headless Chromium with its own profile, labelled for artifacts.
    pub async fn open(&self, label: &str) -> Client {
        static PROFILES: AtomicU64 = AtomicU64::new(0);
        let profile = self.driver.tmp.0.join(format!(
            "profile-{}-{label}-{}",
            self.scenario,
            PROFILES.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&profile);
        let mut args: Vec<String> = CHROMIUM_FLAGS.iter().map(|s| (*s).to_owned()).collect();
        args.push(format!("--user-data-dir={}", profile.display()));
        let caps: Capabilities = serde_json::from_value(serde_json::json!({
            "browserName": "chrome",
            "goog:chromeOptions": { "binary": chromium_path(), "args": args },
            "goog:loggingPrefs": { "browser": "ALL" },
        }))
        .expect("capabilities");
        let client = ClientBuilder::new(HttpConnector::new())
            .capabilities(caps)
            .connect(&self.driver.url)
            .await
            .unwrap_or_else(|e| panic!("cannot start Chromium ({}): {e}", chromium_path()));
        self.opened.lock().expect("lock").push((label.to_owned(), client.clone()));
        client
    }

    #[allow(clippy::print_stderr)] // tells the person reading the failed test where to look
    async fn save_artifacts(&self) {
        let dir = artifacts_dir();
        let _ = std::fs::create_dir_all(&dir);
        let opened = self.opened.lock().expect("lock").clone();
        for (label, client) in opened {
            let stem = dir.join(format!("{}-{label}", self.scenario));
            if let Ok(png) = client.screenshot().await {
                let _ = std::fs::write(stem.with_extension("png"), png);
            }
            if let Ok(log) = client.issue_cmd(BrowserLog).await {
                let _ =
                    std::fs::write(stem.with_extension("log"), serde_json::to_string_pretty(&log).unwrap_or_default());
            }
            eprintln!("e2e: saved {}.png and .log", stem.display());
        }
    }

    async fn close_all(&self) {
        let opened = std::mem::take(&mut *self.opened.lock().expect("lock"));
        for (_, client) in opened {
            let _ = client.close().await;
        }
    }
}

/// One browser test at a time: Chromium instances are heavy on two cores.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Runs a scenario with its own chromedriver, bounded by `limit`; saves
/// artifacts if it fails and always closes every browser.
pub async fn scenario<F, Fut>(name: &str, limit: Duration, body: F)
where
    F: FnOnce(Arc<Browsers>) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let _serial = SERIAL.lock().await;
    let browsers =
        Arc::new(Browsers { driver: Driver::start().await, opened: Mutex::new(Vec::new()), scenario: name.to_owned() });
    let run = tokio::time::timeout(limit, AssertUnwindSafe(body(browsers.clone())).catch_unwind()).await;
    let failure = match run {
        Ok(Ok(())) => None,
        Ok(Err(panic)) => Some(panic),
        Err(_) => {
            Some(Box::new(format!("scenario {name} did not finish within {limit:?}")) as Box<dyn std::any::Any + Send>)
        }
    };
    if failure.is_some() {
        browsers.save_artifacts().await;
    }
    browsers.close_all().await;
    if let Some(panic) = failure {
        std::panic::resume_unwind(panic);
    }
}

/// A page of the chat, with the few actions and waits the tests need.
#[derive(Debug, Clone)]
pub struct Page {
    pub client: Client,
}

impl Page {
    /// Opens `url` in `client`.
    pub async fn open(client: Client, url: &str) -> Self {
        client.goto(url).await.expect("navigate");
        Self { client }
    }

    /// Texts of every element matching `css`.
    pub async fn texts(&self, css: &str) -> Vec<String> {
        let mut out = Vec::new();
        if let Ok(elements) = self.client.find_all(Locator::Css(css)).await {
            for e in elements {
                if let Ok(t) = e.text().await {
                    out.push(t);
                }
            }
        }
        out
    }

    /// Waits until `check` holds for the texts of `css`; panics with what was
    /// there after [`UI_TIMEOUT`].
    pub async fn wait_texts(&self, css: &str, what: &str, check: impl Fn(&[String]) -> bool) -> Vec<String> {
        let deadline = Instant::now() + UI_TIMEOUT;
        loop {
            let texts = self.texts(css).await;
            if check(&texts) {
                return texts;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}; {css} shows {texts:#?}");
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits until some element matching `css` has text containing `needle`.
    pub async fn wait_for_text(&self, css: &str, needle: &str) -> Vec<String> {
        self.wait_texts(css, &format!("{needle:?}"), |t| t.iter().any(|s| s.contains(needle))).await
    }

    /// Types into the element matching `css` (replacing its content).
    pub async fn fill(&self, css: &str, text: &str) {
        let el = self.client.wait().at_most(UI_TIMEOUT).for_element(Locator::Css(css)).await.expect("field present");
        el.clear().await.expect("clear");
        el.send_keys(text).await.expect("type");
    }

    /// Clicks the element matching `css`.
    pub async fn click(&self, css: &str) {
        let el = self.client.wait().at_most(UI_TIMEOUT).for_element(Locator::Css(css)).await.expect("element present");
        el.click().await.expect("click");
    }

    /// Fills the join form with `name` and `room` and submits it.
    pub async fn submit_join(&self, name: &str, room: &str) {
        self.fill("#join-name", name).await;
        self.fill("#join-room", room).await;
        self.click("form.join button[type=submit]").await;
    }

    /// Joins `room` as `name` from the join view.
    pub async fn join(&self, name: &str, room: &str) {
        self.submit_join(name, room).await;
        self.wait_for_text(".status", "Connected").await;
    }

    /// Sends a message from the composer with Enter.
    pub async fn say(&self, text: &str) {
        let el = self
            .client
            .wait()
            .at_most(UI_TIMEOUT)
            .for_element(Locator::Css("#composer-text"))
            .await
            .expect("composer present");
        el.send_keys(text).await.expect("type");
        el.send_keys("\u{E007}").await.expect("press Enter");
    }

    /// Runs JavaScript and returns its result.
    pub async fn js(&self, script: &str) -> serde_json::Value {
        self.client.execute(script, vec![]).await.expect("execute script")
    }
}
