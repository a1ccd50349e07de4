//! A small WebDriver client for the end-to-end browser tests: [`Driver::start`] runs Debian's
//! `chromedriver` on a port it picks itself (killed when the `Driver` drops), [`Driver::browser`]
//! opens a headless Chromium with a fresh profile of its own, and [`Browser`] speaks the W3C
//! WebDriver protocol over HTTP with `awc`: navigate, run JavaScript (`execute/sync`, which reaches
//! into shadow roots where WebDriver's element lookups cannot), click and type with real input
//! events, wait for a condition in the page, and take screenshots.
//!
//! Missing browser packages fail the test with the command that installs them: a suite that
//! skipped itself on a machine without Chromium would pass without testing anything.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine as _;
use serde_json::{json, Value};

use super::WAIT;

/// The key under which an element reference travels is `element-6066-11e4-a52f-4d65726d4944` in
/// W3C WebDriver; chromedriver uses another of the same family for elements in a shadow root.
const ELEMENT_KEY_PREFIX: &str = "element-6066-11e4-";
const INSTALL: &str = "apt-get install -y chromium chromium-driver";

/// Finds `name` on `PATH`.
fn on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join(name))
                .find(|p| p.is_file())
        })
        .or_else(|| Some(Path::new("/usr/bin").join(name)).filter(|p| p.is_file()))
}

fn http() -> awc::Client {
    // Starting a browser takes a few seconds on a busy machine; a single command never takes WAIT.
    awc::Client::builder().timeout(WAIT).finish()
}

/// A running `chromedriver`, killed on drop (after the browsers it opened, which close on their own
/// drop: declare the `Driver` first).
pub struct Driver {
    child: Child,
    base: String,
    chromium: PathBuf,
}

impl Driver {
    /// Starts `chromedriver --port=0` and waits for the line in which it names its port.
    pub async fn start() -> Driver {
        let missing = |what: &str| -> ! {
            panic!("{what} not found: the browser tests need Chromium and its driver; install them with `{INSTALL}`")
        };
        let driver = on_path("chromedriver").unwrap_or_else(|| missing("chromedriver"));
        let chromium = on_path("chromium").unwrap_or_else(|| missing("chromium"));
        let mut child = Command::new(&driver)
            .arg("--port=0")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "starting {}: {e} (install with `{INSTALL}`)",
                    driver.display()
                )
            });
        let stdout = child.stdout.take().expect("chromedriver stdout");
        let (port_tx, port_rx) = tokio::sync::oneshot::channel();
        // Reads until EOF, so chromedriver never blocks on a full pipe.
        std::thread::spawn(move || {
            let mut port_tx = Some(port_tx);
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let port = line
                    .strip_prefix("ChromeDriver was started successfully on port ")
                    .and_then(|rest| rest.trim_end_matches('.').parse::<u16>().ok());
                if let Some(port) = port {
                    if let Some(tx) = port_tx.take() {
                        let _ = tx.send(port);
                    }
                }
            }
        });
        // Owned from here on, so that a chromedriver that never names its port is killed too.
        let mut driver = Driver {
            child,
            base: String::new(),
            chromium,
        };
        let port = tokio::time::timeout(WAIT, port_rx)
            .await
            .expect("chromedriver started in time")
            .expect("chromedriver named its port");
        driver.base = format!("http://127.0.0.1:{port}");
        driver
    }

    /// A new headless Chromium with its own empty profile (its own storage, cookies and cache).
    pub async fn browser(&self) -> Browser {
        let profile = tempfile::tempdir().expect("browser profile dir");
        let args = [
            "--headless=new",
            "--no-sandbox",
            "--disable-dev-shm-usage",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--window-size=1280,860",
            &format!("--user-data-dir={}", profile.path().display()),
        ];
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": self.chromium, "args": args},
        }}});
        let value = command(
            &http(),
            "POST",
            &format!("{}/session", self.base),
            Some(caps),
        )
        .await;
        let id = value["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("new session: {value}"));
        Browser {
            session: format!("{}/session/{id}", self.base),
            http: http(),
            _profile: profile,
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One WebDriver command; returns its `value`, panicking with WebDriver's error otherwise.
async fn command(http: &awc::Client, method: &str, url: &str, body: Option<Value>) -> Value {
    let method = awc::http::Method::from_bytes(method.as_bytes()).expect("method");
    let req = http.request(method, url);
    let mut resp = match body {
        Some(b) => req.send_json(&b).await,
        None => req.send().await,
    }
    .unwrap_or_else(|e| panic!("WebDriver {url}: {e}"));
    let bytes = resp
        .body()
        .limit(64 * 1024 * 1024)
        .await
        .unwrap_or_else(|e| panic!("WebDriver {url} body: {e}"));
    let reply: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    assert!(
        resp.status().is_success(),
        "WebDriver {url} answered {}: {}",
        resp.status(),
        reply["value"]
    );
    reply["value"].clone()
}

/// An element found in the page (light DOM or a shadow root).
#[derive(Debug, Clone)]
pub struct Element(String);

/// One browser window in a WebDriver session.
pub struct Browser {
    session: String,
    http: awc::Client,
    _profile: tempfile::TempDir,
}

impl Browser {
    async fn cmd(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        command(&self.http, method, &format!("{}{path}", self.session), body).await
    }

    pub async fn goto(&self, url: &str) {
        self.cmd("POST", "/url", Some(json!({ "url": url }))).await;
    }

    /// Runs `script` (a function body: `return …`) in the page with `args` as `arguments`.
    pub async fn execute(&self, script: &str, args: Vec<Value>) -> Value {
        self.cmd(
            "POST",
            "/execute/sync",
            Some(json!({"script": script, "args": args})),
        )
        .await
    }

    /// The element `script` returns (it may come from a shadow root); panics if it returns none.
    pub async fn element(&self, script: &str) -> Element {
        let v = self.execute(script, vec![]).await;
        let id = v.as_object().and_then(|o| {
            o.iter()
                .find(|(k, _)| k.starts_with(ELEMENT_KEY_PREFIX))
                .and_then(|(_, id)| id.as_str())
        });
        match id {
            Some(id) => Element(id.to_string()),
            None => panic!("no element from `{script}`: {v}"),
        }
    }

    /// Clicks `el` as a user would (scrolled into view, real pointer events).
    pub async fn click(&self, el: &Element) {
        self.cmd("POST", &format!("/element/{}/click", el.0), Some(json!({})))
            .await;
    }

    /// Types `text` into `el` as key events.
    pub async fn type_text(&self, el: &Element, text: &str) {
        self.cmd(
            "POST",
            &format!("/element/{}/value", el.0),
            Some(json!({ "text": text })),
        )
        .await;
    }

    /// Waits until `condition` (a JavaScript expression) is truthy in the page and returns its value.
    ///
    /// This is how these tests wait for an event: what a browser test waits on (a frame arrived, a
    /// socket reconnected) lands in the DOM, and WebDriver offers no way to be told when the page
    /// changes, so the page is asked again every 50 ms until it shows the event, for at most
    /// [`WAIT`]. Never a fixed sleep: it returns as soon as the page shows it.
    pub async fn wait_for(&self, what: &str, condition: &str) -> Value {
        let script = format!("return ({condition}) || null;");
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let v = self.execute(&script, vec![]).await;
            if !v.is_null() && v != json!(false) {
                return v;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting in the browser for: {what} (`{condition}`)"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A PNG of the window.
    pub async fn screenshot(&self) -> Vec<u8> {
        let v = self.cmd("GET", "/screenshot", None).await;
        base64::engine::general_purpose::STANDARD
            .decode(v.as_str().expect("base64 screenshot"))
            .expect("screenshot is base64")
    }
}

impl Drop for Browser {
    /// Ends the session, which closes Chromium: a browser outlives a killed chromedriver, so this
    /// runs also when a test fails. Blocking (a drop cannot await), and short: chromedriver is local.
    fn drop(&mut self) {
        let Some((host, path)) = self
            .session
            .strip_prefix("http://")
            .and_then(|rest| rest.split_once('/'))
        else {
            return;
        };
        let Ok(mut conn) = std::net::TcpStream::connect(host) else {
            return;
        };
        let _ = conn.set_read_timeout(Some(WAIT));
        let request = format!(
            "DELETE /{path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        if conn.write_all(request.as_bytes()).is_err() {
            return;
        }
        // The answer comes once the browser is gone; chromedriver keeps the connection open after
        // it, so read exactly the answer (headers, then Content-Length bytes).
        let mut answer = Vec::new();
        let mut chunk = [0u8; 4096];
        while let Ok(n @ 1..) = conn.read(&mut chunk) {
            answer.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&answer);
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let length = head
                    .lines()
                    .find_map(|l| {
                        let (name, value) = l.split_once(':')?;
                        name.eq_ignore_ascii_case("content-length")
                            .then(|| value.trim().parse::<usize>().ok())?
                    })
                    .unwrap_or(0);
                if body.len() >= length {
                    return;
                }
            }
        }
    }
}
