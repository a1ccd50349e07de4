//! Test support: start the real server on an ephemeral port, talk to it over real sockets, scrape
//! its metrics, and run a fake Django (see `fake_django`) and throwaway PostgreSQL, NATS and HAProxy
//! servers from Debian's packages (`postgres`, `nats`, `haproxy`).
#![allow(dead_code)]

pub mod binary;
pub mod fake_django;
pub mod haproxy;
pub mod nats;
pub mod postgres;
pub mod webdriver;
pub mod ws;

use std::future::Future;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::time::Duration;

use awc::http::header::HeaderMap;
use serde_json::Value;
use switchboard::config::Settings;
use switchboard::RunError;

/// How long any single wait in a test may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(20);

pub struct TestApp {
    /// The REST listener.
    pub addr: SocketAddr,
    /// The chat listener.
    pub chat_addr: SocketAddr,
    pub data_dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    shutdown: Option<futures_channel::oneshot::Sender<()>>,
    done: Option<futures_channel::oneshot::Receiver<Result<(), RunError>>>,
}

/// Starts the whole tree with the embedded defaults plus `overrides` (TOML), a fresh data dir and the
/// fault-injection routes on.
pub fn spawn_app(overrides: &str) -> TestApp {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut app = spawn_app_in(tmp.path(), overrides);
    app._tmp = Some(tmp);
    app
}

/// Like [`spawn_app`] on an existing data dir (to restart "the process" on the same disk).
pub fn spawn_app_in(dir: &Path, overrides: &str) -> TestApp {
    let mut settings = Settings::from_toml(overrides).expect("test settings");
    settings.storage.data_dir = dir.to_path_buf();
    settings.testing.fault_injection = true;
    settings.log.level = std::env::var("TEST_LOG").unwrap_or_else(|_| "warn".into());
    switchboard::telemetry::init_subscriber(&settings.log);
    let listeners = switchboard::Listeners {
        api: TcpListener::bind("127.0.0.1:0").expect("bind api"),
        chat: TcpListener::bind("127.0.0.1:0").expect("bind chat"),
    };
    let addr = listeners.api.local_addr().expect("local addr");
    let chat_addr = listeners.chat.local_addr().expect("chat local addr");
    let (stop_tx, stop_rx) = futures_channel::oneshot::channel::<()>();
    let (done_tx, done_rx) = futures_channel::oneshot::channel();
    std::thread::spawn(move || {
        let result = actix::System::new().block_on(switchboard::run(listeners, settings, async {
            let _ = stop_rx.await;
        }));
        let _ = done_tx.send(result);
    });
    TestApp {
        addr,
        chat_addr,
        data_dir: dir.to_path_buf(),
        _tmp: None,
        shutdown: Some(stop_tx),
        done: Some(done_rx),
    }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// A URL on the chat listener.
    pub fn chat_url(&self, path: &str) -> String {
        format!("http://{}{}", self.chat_addr, path)
    }

    /// Graceful stop (as on SIGTERM); returns what `run` returned.
    pub async fn stop(mut self) -> Result<(), RunError> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.wait_exit().await
    }

    /// Starts a graceful stop (as on SIGTERM) without waiting for it; [`TestApp::wait_exit`] waits.
    pub fn begin_stop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }

    /// Waits for `run` to return on its own (e.g. after an escalation).
    pub async fn wait_exit(&mut self) -> Result<(), RunError> {
        let done = self.done.take().expect("not yet stopped");
        tokio::time::timeout(WAIT, done)
            .await
            .expect("server stopped in time")
            .expect("server thread reported")
    }

    /// Keeps the data dir alive past `stop` (for restarts on the same disk).
    pub fn take_tempdir(&mut self) -> Option<tempfile::TempDir> {
        self._tmp.take()
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// A response read whole.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Value,
    pub text: String,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    }

    pub fn error_code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }
}

pub fn client() -> awc::Client {
    awc::Client::builder()
        .timeout(Duration::from_secs(30))
        .finish()
}

/// One request. `body` is sent as JSON; `headers` are added as given.
pub async fn request(
    method: &str,
    url: &str,
    body: Option<&Value>,
    headers: &[(&str, &str)],
) -> Resp {
    let method = awc::http::Method::from_bytes(method.as_bytes()).expect("method");
    let mut req = client().request(method, url);
    for (k, v) in headers {
        req = req.insert_header((*k, *v));
    }
    let mut resp = match body {
        Some(b) => req.send_json(b).await,
        None => req.send().await,
    }
    .expect("request sent");
    let bytes = resp.body().limit(64 * 1024 * 1024).await.expect("body");
    let text = String::from_utf8_lossy(&bytes).to_string();
    Resp {
        status: resp.status().as_u16(),
        headers: resp.headers().clone(),
        body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        text,
    }
}

pub async fn get(url: &str) -> Resp {
    request("GET", url, None, &[]).await
}

pub async fn post(url: &str, body: &Value) -> Resp {
    request("POST", url, Some(body), &[]).await
}

pub async fn patch(url: &str, body: &Value, if_match: Option<&str>) -> Resp {
    match if_match {
        Some(v) => request("PATCH", url, Some(body), &[("If-Match", v)]).await,
        None => request("PATCH", url, Some(body), &[]).await,
    }
}

/// The `id` of a ticket's JSON.
pub fn id_of(t: &Value) -> String {
    t["id"].as_str().unwrap().to_string()
}

/// Creates a ticket and returns its JSON.
pub async fn create_ticket(app: &TestApp, subject: &str) -> Value {
    let resp = post(
        &app.url("/api/v1/tickets"),
        &serde_json::json!({"subject": subject, "requester": "alice@example.com"}),
    )
    .await;
    assert_eq!(resp.status, 201, "create: {}", resp.text);
    resp.body
}

/// The value of one sample in Prometheus text, matched by name and a subset of labels.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (metric_name, label_text) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            (metric_name == name).then_some((label_text.to_string(), value))
        })
        .filter(|(label_text, _)| {
            labels
                .iter()
                .all(|(k, v)| label_text.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|(_, v)| v.parse::<f64>().ok())
        .reduce(|a, b| a + b)
}

pub async fn scrape(app: &TestApp) -> String {
    get(&app.url("/metrics")).await.text
}

/// A script of the repository's `scripts/`.
pub fn script_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("scripts")
        .join(name)
}

/// Runs `scripts/<name>` with `args`; its output trimmed, or a failed test naming why (and the
/// Debian package the script needs).
pub fn run_script(name: &str, args: &[&str], package: &str) -> String {
    let out = std::process::Command::new("bash")
        .arg(script_path(name))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run scripts/{name}: {e}"));
    assert!(
        out.status.success(),
        "scripts/{name} {args:?} failed (is the `{package}` package installed?): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Polls `check` until it holds. A last resort for state with no event to wait on (a gauge, a row
/// on disk); fails the test after [`WAIT`].
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if check().await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the dead-letter table lists `n` entries and returns them.
pub async fn wait_dead_letters(app: &TestApp, n: usize) -> Vec<serde_json::Value> {
    let url = app.url("/api/v1/admin/dead-letters");
    eventually(&format!("{n} dead letters listed"), || {
        let url = url.clone();
        async move {
            get(&url).await.body["items"]
                .as_array()
                .is_some_and(|i| i.len() == n)
        }
    })
    .await;
    get(&url).await.body["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Waits until the metric sample (summed over matching labels) reaches `min`.
pub async fn wait_metric(app: &TestApp, name: &str, labels: &[(&str, &str)], min: f64) {
    let url = app.url("/metrics");
    eventually(&format!("{name} {labels:?} >= {min}"), || {
        let url = url.clone();
        async move { metric(&get(&url).await.text, name, labels).unwrap_or(0.0) >= min }
    })
    .await;
}
