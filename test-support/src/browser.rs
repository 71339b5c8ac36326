//! A real browser for the dashboard tests: Debian's `chromium`, headless, driven over WebDriver by
//! `chromedriver` (both installed by `scripts/test.sh`), through `fantoccini`. Each [`WebBrowser`] has its
//! own driver process on a free loopback port and its own empty profile, so two are two people.
//!
//! Chromium starts with the flags this machine needs (no sandbox as root, no GPU, no background network,
//! which a closed network refuses). Console messages are collected with ChromeDriver's log endpoint, and
//! [`WebBrowser::assert_clean`] fails on any console error or failed request.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use fantoccini::wd::WebDriverCompatibleCommand;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};
use tokio::process::{Child, Command};

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";

pub struct WebBrowser {
    pub client: Client,
    driver: Child,
    _profile: tempfile::TempDir,
    /// Where screenshots go (`target/screenshots`, a CI artifact).
    pub artifacts: PathBuf,
}

/// ChromeDriver's `POST /session/{id}/se/log` (the browser console since the last call).
#[derive(Debug)]
struct BrowserLog;

impl WebDriverCompatibleCommand for BrowserLog {
    fn endpoint(
        &self,
        base_url: &url::Url,
        session_id: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base_url.join(&format!("session/{}/se/log", session_id.unwrap_or("")))
    }

    fn method_and_body(&self, _: &url::Url) -> (axum::http::Method, Option<String>) {
        (
            axum::http::Method::POST,
            Some(json!({"type": "browser"}).to_string()),
        )
    }
}

fn binaries() -> Option<(String, String)> {
    let driver = std::env::var("CHROMEDRIVER").unwrap_or_else(|_| CHROMEDRIVER.into());
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| CHROMIUM.into());
    if std::path::Path::new(&driver).exists() && std::path::Path::new(&chromium).exists() {
        Some((driver, chromium))
    } else {
        None
    }
}

impl WebBrowser {
    /// A new headless browser, or `None` (the test is skipped; under CI it fails) when Chromium or
    /// ChromeDriver is not installed.
    pub async fn start() -> Option<WebBrowser> {
        let Some((driver_bin, chromium)) = binaries() else {
            crate::services::missing(
                "Chromium and ChromeDriver (apt-get install chromium chromium-driver)",
                "CHROMEDRIVER",
            );
            return None;
        };
        let port = crate::services::free_port();
        let driver = Command::new(driver_bin)
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("chromedriver starts");
        let profile = tempfile::tempdir().expect("profile directory");
        let caps = json!({
            "browserName": "chrome",
            "goog:loggingPrefs": {"browser": "ALL"},
            "goog:chromeOptions": {
                "binary": chromium,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--disable-quic", "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--disable-default-apps",
                    "--window-size=1280,900",
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            },
        });
        let caps = caps.as_object().cloned().unwrap_or_default();
        let url = format!("http://127.0.0.1:{port}");
        let mut last = None;
        for _ in 0..100 {
            // ChromeDriver listens on loopback over plain HTTP: no TLS connector is needed.
            match ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
                .capabilities(caps.clone())
                .connect(&url)
                .await
            {
                Ok(client) => {
                    let artifacts =
                        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/screenshots");
                    std::fs::create_dir_all(&artifacts).ok();
                    return Some(WebBrowser {
                        client,
                        driver,
                        _profile: profile,
                        artifacts,
                    });
                }
                Err(e) => {
                    last = Some(e.to_string());
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        panic!("chromedriver on port {port} never accepted a session: {last:?}");
    }

    pub async fn goto(&self, url: &str) {
        self.client
            .goto(url)
            .await
            .unwrap_or_else(|e| panic!("open {url}: {e}"));
    }

    /// Waits (up to 15 s) for the element `css`.
    pub async fn find(&self, css: &str) -> fantoccini::elements::Element {
        match self
            .client
            .wait()
            .at_most(Duration::from_secs(15))
            .for_element(Locator::Css(css))
            .await
        {
            Ok(e) => e,
            Err(e) => {
                let shot = self.screenshot("missing-element").await;
                let text = self.client.find(Locator::Css("main")).await.ok();
                let text = match text {
                    Some(m) => m.text().await.unwrap_or_default(),
                    None => String::new(),
                };
                panic!(
                    "no element {css} on {} ({e}); screenshot {}; the page says: {text}",
                    self.path().await,
                    shot.display()
                )
            }
        }
    }

    /// Whether `css` is on the page now.
    pub async fn has(&self, css: &str) -> bool {
        self.client.find(Locator::Css(css)).await.is_ok()
    }

    pub async fn text(&self, css: &str) -> String {
        self.find(css).await.text().await.unwrap_or_default()
    }

    /// Types `text` into the field `css` (cleared first), as a keyboard would.
    pub async fn fill(&self, css: &str, text: &str) {
        let e = self.find(css).await;
        e.clear().await.ok();
        e.send_keys(text)
            .await
            .unwrap_or_else(|err| panic!("type into {css}: {err}"));
    }

    pub async fn click(&self, css: &str) {
        self.find(css)
            .await
            .click()
            .await
            .unwrap_or_else(|e| panic!("click {css}: {e}"));
    }

    /// Clicks `css` (a submit button or link) and waits until the next page has replaced this one, so
    /// that what is read next is the answer, not the page the form was on.
    pub async fn submit(&self, css: &str) {
        self.eval("window.__appstrateOldPage = true; return true")
            .await;
        self.click(css).await;
        self.wait_until(30, &format!("the page after {css}"), || async {
            self.eval(
                "return document.readyState === 'complete' && window.__appstrateOldPage === undefined",
            )
            .await
                == serde_json::Value::Bool(true)
        })
        .await;
    }

    /// The full address of the current page.
    pub async fn url(&self) -> String {
        self.client
            .current_url()
            .await
            .expect("current URL")
            .to_string()
    }

    pub async fn path(&self) -> String {
        let u = self.client.current_url().await.expect("current URL");
        match u.query() {
            Some(q) => format!("{}?{q}", u.path()),
            None => u.path().to_string(),
        }
    }

    /// Waits (up to `secs`) until `check` holds for the page, polling the DOM every 100 ms.
    pub async fn wait_until<F, Fut>(&self, secs: u64, what: &str, mut check: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        while tokio::time::Instant::now() < deadline {
            if check().await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let _ = self.screenshot("timeout").await;
        panic!(
            "timed out after {secs} s waiting for {what} on {}",
            self.path().await
        );
    }

    /// Writes a PNG of the viewport to `target/screenshots/<name>.png` and returns its path.
    pub async fn screenshot(&self, name: &str) -> PathBuf {
        let png = self.client.screenshot().await.expect("screenshot");
        let path = self.artifacts.join(format!("{name}.png"));
        std::fs::write(&path, png).expect("write the screenshot");
        path
    }

    /// The console messages since the last call (level, message).
    pub async fn console(&self) -> Vec<(String, String)> {
        let Ok(v) = self.client.issue_cmd(BrowserLog).await else {
            return Vec::new();
        };
        v.as_array()
            .map(|a| {
                a.iter()
                    .map(|m| {
                        (
                            m["level"].as_str().unwrap_or("").to_string(),
                            m["message"].as_str().unwrap_or("").to_string(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Fails on any console error (script errors, CSP violations, failed requests: Chromium reports
    /// each as a SEVERE console message) since the last check.
    pub async fn assert_clean(&self, page: &str) {
        let severe: Vec<_> = self
            .console()
            .await
            .into_iter()
            .filter(|(level, _)| level == "SEVERE")
            .collect();
        assert!(
            severe.is_empty(),
            "console errors or failed requests on {page}: {severe:?}"
        );
    }

    /// The `Value` a script returns (for reading state the DOM API exposes, e.g. a form's validity).
    pub async fn eval(&self, script: &str) -> Value {
        self.client.execute(script, vec![]).await.expect("script")
    }

    pub async fn close(mut self) {
        let _ = self.client.clone().close().await;
        let _ = self.driver.kill().await;
    }
}
