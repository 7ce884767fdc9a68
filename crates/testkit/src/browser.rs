//! A real headless Chromium driven through WebDriver (Debian's `chromium`
//! and `chromium-driver`), for tests of the web pages: load a page, run a
//! line of JavaScript to look at it, click, save a screenshot to look at.
//!
//! The WebDriver protocol is plain JSON over HTTP, spoken here with the test
//! kit's HTTP client; no WebDriver library is needed for these few commands.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{Value, json};
use tempfile::TempDir;

use crate::{ChildProcess, free_port};

/// A Chromium session: headless, phone-sized, its own empty profile.
pub struct Browser {
    driver: ChildProcess,
    address: SocketAddr,
    session: String,
    http: reqwest::Client,
    _profile: TempDir,
}

impl Browser {
    /// Starts chromedriver and a Chromium session 412 px wide (a phone).
    /// Panics with chromedriver's log if either cannot start.
    pub async fn start() -> Browser {
        let profile = tempfile::tempdir().expect("temp dir");
        let address: SocketAddr = format!("127.0.0.1:{}", free_port())
            .parse()
            .expect("address");
        let mut command = Command::new("chromedriver");
        command.arg(format!("--port={}", address.port()));
        let driver = ChildProcess::spawn(
            "chromedriver",
            &mut command,
            &profile.path().join("chromedriver.log"),
        );
        let http = crate::http()
            .timeout(Duration::from_secs(30))
            .build()
            .expect("client");
        let deadline = Instant::now() + Duration::from_secs(20);
        while tokio::net::TcpStream::connect(address).await.is_err() {
            assert!(
                Instant::now() < deadline,
                "chromedriver never listened: {}",
                driver.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // As the machine's probe runs it: no sandbox as root, no network
        // traffic of its own, a fresh profile.
        let args = [
            "--headless".to_owned(),
            "--no-sandbox".to_owned(),
            "--disable-gpu".to_owned(),
            "--disable-quic".to_owned(),
            "--no-first-run".to_owned(),
            "--disable-background-networking".to_owned(),
            "--disable-component-update".to_owned(),
            "--disable-sync".to_owned(),
            "--autoplay-policy=no-user-gesture-required".to_owned(),
            "--window-size=412,915".to_owned(),
            format!(
                "--user-data-dir={}",
                profile.path().join("chrome").display()
            ),
        ];
        let capabilities = json!({
            "capabilities": { "alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": { "binary": "/usr/bin/chromium", "args": args },
            }}
        });
        let response = http
            .post(format!("http://{address}/session"))
            .json_body(&capabilities)
            .send()
            .await
            .expect("WebDriver new session");
        let body: Value = read_json(response).await;
        let session = body["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no Chromium session: {body}\n{}", driver.log_tail()))
            .to_owned();
        Browser {
            driver,
            address,
            session,
            http,
            _profile: profile,
        }
    }

    async fn command(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let url = format!("http://{}/session/{}{path}", self.address, self.session);
        let mut request = self.http.request(method, url);
        if let Some(body) = body {
            request = request.json_body(&body);
        }
        let response = request.send().await.expect("WebDriver command");
        read_json(response).await
    }

    /// Opens `url` and waits for it to load.
    pub async fn goto(&self, url: &str) {
        let answer = self
            .command(reqwest::Method::POST, "/url", Some(json!({ "url": url })))
            .await;
        assert!(answer["value"].is_null(), "navigating to {url}: {answer}");
    }

    /// The address the browser shows now (after any redirect).
    pub async fn current_url(&self) -> String {
        let answer = self.command(reqwest::Method::GET, "/url", None).await;
        answer["value"].as_str().unwrap_or_default().to_owned()
    }

    /// Runs `script` (a function body; `return` gives the result) in the page.
    pub async fn run(&self, script: &str) -> Value {
        let answer = self
            .command(
                reqwest::Method::POST,
                "/execute/sync",
                Some(json!({ "script": script, "args": [] })),
            )
            .await;
        answer["value"].clone()
    }

    /// The text of an open `alert()`, if a script opened one.
    pub async fn alert_text(&self) -> Option<String> {
        let answer = self
            .command(reqwest::Method::GET, "/alert/text", None)
            .await;
        answer["value"].as_str().map(str::to_owned)
    }

    /// Accepts an open `confirm()` or `alert()`, as a user clicking OK.
    pub async fn accept_alert(&self) {
        let answer = self
            .command(reqwest::Method::POST, "/alert/accept", Some(json!({})))
            .await;
        assert!(answer["value"].is_null(), "accepting the dialog: {answer}");
    }

    /// Resizes the window, e.g. to a desktop's width for a screenshot.
    pub async fn resize(&self, width: u32, height: u32) {
        let rect = json!({ "width": width, "height": height });
        let answer = self
            .command(reqwest::Method::POST, "/window/rect", Some(rect))
            .await;
        assert!(answer["value"].is_object(), "resizing the window: {answer}");
    }

    /// Saves a PNG of the window to `path` (creating its folder).
    pub async fn screenshot(&self, path: &Path) {
        let answer = self
            .command(reqwest::Method::GET, "/screenshot", None)
            .await;
        let encoded = answer["value"].as_str().expect("a screenshot");
        let png = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .expect("base64 PNG");
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).expect("screenshot folder");
        }
        std::fs::write(path, png).expect("write screenshot");
    }

    /// Chromedriver's log, for failure messages.
    pub fn log_tail(&self) -> String {
        self.driver.log_tail()
    }
}

impl Drop for Browser {
    /// Ends the session, which closes Chromium, before chromedriver is killed
    /// (a killed chromedriver would leave Chromium running). Blocking and
    /// bounded: a drop cannot wait on the runtime.
    fn drop(&mut self) {
        let request = format!(
            "DELETE /session/{} HTTP/1.1\r\nHost: {}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.session, self.address
        );
        if let Ok(mut stream) = TcpStream::connect_timeout(&self.address, Duration::from_secs(2)) {
            let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
            let _ = stream.write_all(request.as_bytes());
            let _ = stream.read(&mut [0u8; 1024]);
        }
    }
}

/// The JSON body of a WebDriver answer.
async fn read_json(response: reqwest::Response) -> Value {
    let text = response.text().await.expect("WebDriver answer");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("WebDriver answered {text:?}: {e}"))
}

/// JSON bodies without reqwest's `json` feature.
trait JsonBody {
    fn json_body(self, body: &Value) -> Self;
}

impl JsonBody for reqwest::RequestBuilder {
    fn json_body(self, body: &Value) -> Self {
        self.header("content-type", "application/json")
            .body(body.to_string())
    }
}
