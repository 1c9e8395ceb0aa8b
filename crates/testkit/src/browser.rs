//! A headless Chromium, driven through a `chromedriver` the test starts on
//! a free port.

use std::net::TcpListener;
use std::process::Stdio;
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};

pub struct Browser {
    pub client: Client,
    _driver: tokio::process::Child,
    _profile: tempfile::TempDir,
}

const CHROMIUM: &str = "/usr/bin/chromium";

impl Browser {
    /// Starts chromedriver and a headless Chromium. Without them the test
    /// fails and says how to install them, unless
    /// `EDGECACHE_SKIP_BROWSER_TESTS=1` asks to skip: then it returns
    /// `None` and says so. CI installs both and never skips.
    pub async fn start() -> Option<Browser> {
        let installed = std::process::Command::new("chromedriver")
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|status| status.success())
            && std::path::Path::new(CHROMIUM).exists();
        if !installed {
            super::skip_or_fail(
                "chromium or chromedriver",
                "Install them (Debian: `apt-get install chromium chromium-driver`)",
                "EDGECACHE_SKIP_BROWSER_TESTS",
            );
            return None;
        }
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free port")
            .port();
        let driver = tokio::process::Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start chromedriver");
        let profile = tempfile::tempdir().expect("a profile directory");
        let mut capabilities = serde_json::Map::new();
        capabilities.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({
                "binary": CHROMIUM,
                // Without the networking flags, Chromium reaches for Google's
                // services at start, which a closed network refuses.
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    "--disable-quic", "--no-first-run", "--window-size=1280,900",
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            }),
        );
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let url = format!("http://127.0.0.1:{port}");
        let mut last_error = String::new();
        for _ in 0..100 {
            match ClientBuilder::new(connector.clone())
                .capabilities(capabilities.clone())
                .connect(&url)
                .await
            {
                Ok(client) => {
                    return Some(Browser {
                        client,
                        _driver: driver,
                        _profile: profile,
                    });
                }
                Err(error) => last_error = error.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("chromedriver did not start a session: {last_error}");
    }

    /// Waits for an element, up to 20 s.
    pub async fn find(&self, css: &str) -> fantoccini::elements::Element {
        self.client
            .wait()
            .at_most(Duration::from_secs(20))
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|error| panic!("no element {css}: {error}"))
    }

    /// Clicks the first element matching `css`, once it is there.
    pub async fn click(&self, css: &str) {
        self.find(css)
            .await
            .click()
            .await
            .unwrap_or_else(|error| panic!("clicking {css}: {error}"));
    }

    /// Types `text` into the first element matching `css`.
    pub async fn type_into(&self, css: &str, text: &str) {
        self.find(css)
            .await
            .send_keys(text)
            .await
            .unwrap_or_else(|error| panic!("typing into {css}: {error}"));
    }

    /// Waits until `script` (a function body) returns true, up to 20 s.
    pub async fn until(&self, what: &str, script: &str) {
        for _ in 0..200 {
            let value = self.client.execute(script, Vec::new()).await.expect("script runs");
            if value.as_bool() == Some(true) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let text = self.text("body").await;
        panic!("timed out waiting for {what}; the page reads:\n{text}");
    }

    /// The visible text of the first element matching `css`.
    pub async fn text(&self, css: &str) -> String {
        self.find(css).await.text().await.expect("element text")
    }

    /// Saves a screenshot of the page as `{name}.png` in the directory
    /// `EDGECACHE_SCREENSHOTS` names, when it names one.
    pub async fn screenshot(&self, name: &str) {
        let Some(directory) = std::env::var_os("EDGECACHE_SCREENSHOTS") else {
            return;
        };
        let png = self.client.screenshot().await.expect("screenshot");
        let path = std::path::Path::new(&directory).join(format!("{name}.png"));
        std::fs::write(&path, png).unwrap_or_else(|error| panic!("writing {}: {error}", path.display()));
    }
}
