//! The browser side end to end, in headless Chromium driven over WebDriver (`support::webdriver`):
//! a customer on the demo page chats with the AI through the widget, confirms an action the AI
//! proposed, asks for a person and talks with an agent who claimed the chat in the console (a
//! second browser); and, through a TCP proxy that can cut every connection and refuse new ones,
//! the widget reconnects by itself, loses no message, shows none twice, and delivers once a
//! message written while it was offline.
//!
//! Needs `chromium` and `chromium-driver` (Debian); without them the tests fail saying so.
//! `SWITCHBOARD_SCREENSHOTS=1` writes the widget's and the console's screenshots to
//! docs/screenshots/.

mod support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use jsonwebtoken::{encode, EncodingKey, Header};
use serde_json::{json, Value};
use support::fake_django::{Behavior, ChatEndpoint, FakeDjango};
use support::webdriver::{Browser, Driver, Element};
use support::*;
use tokio::task::AbortHandle;

const SECRET: &str = "browser-agents-secret-0123456789";

fn app(django: &FakeDjango) -> TestApp {
    // Chats wait in the queue until an agent claims them, as in the console's manual mode.
    spawn_app(&format!(
        "{}\n[agents]\njwt_secret = \"{SECRET}\"\nauto_assign = false\n",
        django
            .config("flush_ms = 20\nretry_base_ms = 5\nretry_max_ms = 50\ndrain_timeout_ms = 200")
    ))
}

fn agent_token(sub: &str, name: &str) -> String {
    let exp = chrono::Utc::now().timestamp() + 3600;
    encode(
        &Header::default(),
        &json!({"sub": sub, "name": name, "role": "agent", "exp": exp}),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("agent token")
}

/// `text` as a JavaScript string literal.
fn js(text: &str) -> String {
    serde_json::to_string(text).expect("a JSON string")
}

/// Writes a screenshot under docs/screenshots/ when `SWITCHBOARD_SCREENSHOTS=1` (so that ordinary
/// runs, CI's included, leave the tree as it was).
async fn save_screenshot(browser: &Browser, name: &str) {
    if std::env::var("SWITCHBOARD_SCREENSHOTS").as_deref() != Ok("1") {
        return;
    }
    let png = browser.screenshot().await;
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/screenshots");
    std::fs::create_dir_all(&dir).expect("docs/screenshots");
    std::fs::write(dir.join(name), png).expect("screenshot written");
}

// --- the customer's widget ------------------------------------------------------------------------

/// The widget's shadow root, in JavaScript.
const ROOT: &str = "document.querySelector('switchboard-widget')?.shadowRoot";

/// A customer's browser on a page embedding the widget.
struct Widget {
    browser: Browser,
}

impl Widget {
    /// Opens `url` in a new browser and the chat panel in it.
    async fn open(driver: &Driver, url: &str) -> Widget {
        let browser = driver.browser().await;
        browser.goto(url).await;
        let w = Widget { browser };
        w.browser
            .wait_for(
                "the widget's launcher",
                &format!("window.SwitchboardWidget && {ROOT}?.querySelector('[data-sb=launcher]')"),
            )
            .await;
        // The client is made once switchboard.js has loaded; before that the launcher only opens
        // the panel.
        w.browser
            .wait_for("the widget's client", "window.SwitchboardWidget.client")
            .await;
        let launcher = w.el("launcher").await;
        w.browser.click(&launcher).await;
        w.browser
            .wait_for(
                "the chat panel to open",
                &format!("!{ROOT}.querySelector('.panel').hidden"),
            )
            .await;
        w
    }

    /// The first element with `data-sb=hook` in the widget.
    async fn el(&self, hook: &str) -> Element {
        self.browser
            .element(&format!(
                "return {ROOT}.querySelector('[data-sb=\"{hook}\"]')"
            ))
            .await
    }

    /// Types `text` and presses the send button.
    async fn say(&self, text: &str) {
        let input = self.el("input").await;
        self.browser.type_text(&input, text).await;
        let send = self.el("send").await;
        self.browser.click(&send).await;
    }

    /// Waits for a message from `from` whose text is `text`.
    async fn wait_message(&self, from: &str, text: &str) {
        self.browser
            .wait_for(
                &format!("a message from {from}: {text}"),
                &format!(
                    "[...{ROOT}.querySelectorAll('[data-sb=message][data-from={from}]')]\
                     .some(m => m.querySelector('.text').textContent === {})",
                    js(text)
                ),
            )
            .await;
    }

    /// Every message on screen, in order, as (from, text).
    async fn transcript(&self) -> Vec<(String, String)> {
        let v = self
            .browser
            .execute(
                &format!(
                    "return [...{ROOT}.querySelectorAll('[data-sb=message]')]\
                     .map(m => [m.dataset.from, m.querySelector('.text').textContent]);"
                ),
                vec![],
            )
            .await;
        serde_json::from_value(v).expect("the transcript as pairs")
    }

    /// Whether the customer's message `text` is still marked as not yet acknowledged.
    fn pending_js(text: &str) -> String {
        format!(
            "[...{ROOT}.querySelectorAll('[data-sb=message][data-from=customer]')]\
             .filter(m => m.querySelector('.text').textContent === {})\
             .some(m => m.querySelector('[data-sb=pending]'))",
            js(text)
        )
    }

    /// Records every text the connection status line shows from now on (in `window.statusSeen`):
    /// a reconnect can be over before the page is next looked at.
    async fn record_status(&self) {
        self.browser
            .execute(
                &format!(
                    "const status = {ROOT}.querySelector('[data-sb=status]');\
                     window.statusSeen = [];\
                     new MutationObserver(records => {{\
                       for (const r of records) for (const n of r.addedNodes) window.statusSeen.push(n.textContent);\
                     }}).observe(status, {{childList: true}});"
                ),
                vec![],
            )
            .await;
    }

    /// Waits until the status line has shown that the connection is being re-established.
    async fn wait_reconnecting(&self) {
        self.browser
            .wait_for(
                "the status line to say it is reconnecting",
                "window.statusSeen.some(t => t.includes('Reconnecting'))",
            )
            .await;
    }

    /// Waits until the session is live again and the status line has gone.
    async fn wait_connected(&self) {
        self.browser
            .wait_for(
                "the widget to be connected again",
                &format!(
                    "window.SwitchboardWidget.client.state === 'open' \
                     && {ROOT}.querySelector('[data-sb=status]').hidden"
                ),
            )
            .await;
    }
}

fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
    items
        .iter()
        .map(|(f, t)| (f.to_string(), t.to_string()))
        .collect()
}

// --- a proxy between the browser and the chat listener ------------------------------------------

#[derive(Default)]
struct ProxyState {
    refusing: bool,
    connections: Vec<AbortHandle>,
}

/// A TCP proxy on an ephemeral port forwarding to the chat listener, that can cut every connection
/// it carries and refuse (accept and at once close) new ones: the network going away under the
/// browser.
struct Proxy {
    addr: SocketAddr,
    state: Arc<Mutex<ProxyState>>,
    accept: AbortHandle,
}

impl Proxy {
    async fn start(upstream: SocketAddr) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let state = Arc::new(Mutex::new(ProxyState::default()));
        let shared = state.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let mut state = shared.lock().unwrap();
                if state.refusing {
                    drop(inbound);
                    continue;
                }
                let conn = tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                state.connections.retain(|c| !c.is_finished());
                state.connections.push(conn.abort_handle());
            }
        })
        .abort_handle();
        Proxy {
            addr,
            state,
            accept,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Closes every connection the proxy carries.
    fn cut(&self) {
        for c in self.state.lock().unwrap().connections.drain(..) {
            c.abort();
        }
    }

    /// While `refusing`, new connections are closed as soon as they are accepted.
    fn refuse(&self, refusing: bool) {
        self.state.lock().unwrap().refusing = refusing;
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

// --- the tests ------------------------------------------------------------------------------------

#[actix_rt::test]
async fn a_customer_on_the_demo_page_gets_the_ai_answer_in_the_widget() {
    let django = FakeDjango::start();
    let app = app(&django);
    let driver = Driver::start().await;
    let customer = Widget::open(&driver, &app.chat_url("/demo/")).await;
    let title = customer
        .browser
        .execute(
            &format!("return {ROOT}.querySelector('header h2').textContent"),
            vec![],
        )
        .await;
    assert_eq!(title, "Acme support", "the script tag's data-title is used");

    customer.say("Where is my invoice?").await;
    customer
        .wait_message("ai", "You said: Where is my invoice?")
        .await;
    customer
        .browser
        .wait_for(
            "the message to be acknowledged",
            &format!("!({})", Widget::pending_js("Where is my invoice?")),
        )
        .await;
    assert_eq!(
        customer.transcript().await,
        pairs(&[
            ("customer", "Where is my invoice?"),
            ("ai", "You said: Where is my invoice?"),
        ])
    );
    drop(customer);
    app.stop().await.expect("clean stop");
}

#[actix_rt::test]
async fn a_customer_accepts_an_action_the_ai_proposed_and_sees_its_result() {
    let django = FakeDjango::start();
    let app = app(&django);
    django.push_chat(
        ChatEndpoint::AiRespond,
        Behavior::Json(json!({
            "reply": "I can reset your mailbox password.", "confidence": 0.93, "handoff": false,
            "suggested_actions": [],
            "actions": [{"type": "manage_service", "service": "email", "operation": "reset_password",
                         "params": {}, "requires_confirmation": true}],
        })),
    );
    let driver = Driver::start().await;
    let customer = Widget::open(&driver, &app.chat_url("/demo/")).await;
    customer.say("I forgot my mailbox password").await;
    customer
        .wait_message("ai", "I can reset your mailbox password.")
        .await;
    customer
        .browser
        .wait_for(
            "the action's confirmation card",
            &format!("{ROOT}.querySelector('[data-sb=confirm-accept]')"),
        )
        .await;
    assert!(
        django.chat_calls(ChatEndpoint::ManageService).is_empty(),
        "nothing is done before the customer agrees"
    );
    let accept = customer.el("confirm-accept").await;
    customer.browser.click(&accept).await;

    let result = customer
        .browser
        .wait_for(
            "the service's result as a system message",
            &format!(
                "[...{ROOT}.querySelectorAll('[data-sb=message][data-from=system]')]\
                 .map(m => m.querySelector('.text').textContent)\
                 .find(t => t.includes('reset_password done for email'))"
            ),
        )
        .await;
    assert!(result.is_string(), "{result}");
    let calls = django.chat_calls(ChatEndpoint::ManageService);
    assert_eq!(calls.len(), 1, "the action ran once");
    assert_eq!(
        (&calls[0].body["service"], &calls[0].body["operation"]),
        (&json!("email"), &json!("reset_password"))
    );
    let disabled = customer
        .browser
        .execute(
            &format!("return {ROOT}.querySelector('[data-sb=confirm-accept]').disabled"),
            vec![],
        )
        .await;
    assert_eq!(disabled, true, "the card cannot be answered twice");
    drop(customer);
    app.stop().await.expect("clean stop");
}

#[actix_rt::test]
async fn a_customer_asks_for_a_person_and_talks_with_the_agent_who_claimed_the_chat_in_the_console()
{
    let django = FakeDjango::start();
    let app = app(&django);
    let driver = Driver::start().await;
    let customer = Widget::open(&driver, &app.chat_url("/demo/")).await;
    customer.say("My invoice shows the wrong amount").await;
    customer
        .wait_message("ai", "You said: My invoice shows the wrong amount")
        .await;

    let handoff = customer.el("handoff").await;
    customer.browser.click(&handoff).await;
    let position = customer
        .browser
        .wait_for(
            "the place in the queue",
            &format!(
                "(q => !q.hidden && q.textContent)({ROOT}.querySelector('[data-sb=queue-position]'))"
            ),
        )
        .await;
    assert_eq!(position, "You are next in line.");
    let session_id = customer
        .browser
        .execute("return window.SwitchboardWidget.client.sessionId", vec![])
        .await;
    let session_id = session_id.as_str().expect("a session id").to_string();

    // The agent, in a browser of their own.
    let console = driver.browser().await;
    let token = agent_token("agent-grace", "Grace");
    console
        .goto(&app.chat_url(&format!("/console/#token={token}")))
        .await;
    let chat = format!("[data-sb=chat][data-session-id=\"{session_id}\"]");
    let claim = format!(
        "document.querySelector('[data-sb=queue-item][data-session-id=\"{session_id}\"] [data-sb=claim]')"
    );
    console.wait_for("the chat in the queue", &claim).await;
    let claim = console.element(&format!("return {claim}")).await;
    console.click(&claim).await;
    console
        .wait_for(
            "the claimed chat's pane, with the customer's message",
            &format!(
                "(c => c && !c.hidden && [...c.querySelectorAll('[data-sb=message][data-from=customer]')]\
                 .some(m => m.querySelector('.text').textContent === 'My invoice shows the wrong amount'))\
                 (document.querySelector('{chat}'))"
            ),
        )
        .await;
    customer
        .browser
        .wait_for(
            "the agent to join",
            &format!("{ROOT}.querySelector('[data-sb=agent-joined]')"),
        )
        .await;

    // Agent to customer.
    let input = console
        .element(&format!(
            "return document.querySelector('{chat} [data-sb=input]')"
        ))
        .await;
    console
        .type_text(&input, "Hi, I'm Grace. Which invoice is it?")
        .await;
    let send = console
        .element(&format!(
            "return document.querySelector('{chat} [data-sb=send]')"
        ))
        .await;
    console.click(&send).await;
    customer
        .wait_message("agent", "Hi, I'm Grace. Which invoice is it?")
        .await;

    // Customer to agent.
    customer.say("Invoice 2024-117, thank you!").await;
    console
        .wait_for(
            "the customer's answer in the console",
            &format!(
                "[...document.querySelectorAll('{chat} [data-sb=message][data-from=customer]')]\
                 .some(m => m.querySelector('.text').textContent === 'Invoice 2024-117, thank you!')"
            ),
        )
        .await;
    customer
        .browser
        .wait_for(
            "the customer's message to be acknowledged",
            &format!("!({})", Widget::pending_js("Invoice 2024-117, thank you!")),
        )
        .await;

    assert_eq!(
        customer.transcript().await,
        pairs(&[
            ("customer", "My invoice shows the wrong amount"),
            ("ai", "You said: My invoice shows the wrong amount"),
            (
                "system",
                "No agent is online right now. Your chat stays in the queue and the first agent \
                 to come online will answer here."
            ),
            ("agent", "Hi, I'm Grace. Which invoice is it?"),
            ("customer", "Invoice 2024-117, thank you!"),
        ])
    );
    assert_eq!(
        django.chat_calls(ChatEndpoint::AiRespond).len(),
        1,
        "the AI stays silent while a person holds the chat"
    );
    save_screenshot(&customer.browser, "widget.png").await;
    save_screenshot(&console, "console.png").await;
    drop((console, customer));
    app.stop().await.expect("clean stop");
}

#[actix_rt::test]
async fn the_widget_reconnects_by_itself_after_its_connections_are_cut_losing_and_repeating_nothing(
) {
    let django = FakeDjango::start();
    let app = app(&django);
    let proxy = Proxy::start(app.chat_addr).await;
    let driver = Driver::start().await;
    // Through the proxy, so the widget's WebSocket (same host as its script) goes through it too.
    let customer = Widget::open(&driver, &proxy.url("/demo/")).await;
    for text in ["First question", "Second question"] {
        customer.say(text).await;
        customer
            .wait_message("ai", &format!("You said: {text}"))
            .await;
    }

    customer.record_status().await;
    proxy.cut();
    customer.wait_reconnecting().await;
    customer.wait_connected().await;

    // Anything replayed on resume arrives before the answer to a message sent after it.
    customer.say("Third question").await;
    customer
        .wait_message("ai", "You said: Third question")
        .await;
    assert_eq!(
        customer.transcript().await,
        pairs(&[
            ("customer", "First question"),
            ("ai", "You said: First question"),
            ("customer", "Second question"),
            ("ai", "You said: Second question"),
            ("customer", "Third question"),
            ("ai", "You said: Third question"),
        ])
    );
    assert_eq!(django.chat_calls(ChatEndpoint::AiRespond).len(), 3);
    drop(customer);
    app.stop().await.expect("clean stop");
}

#[actix_rt::test]
async fn a_message_written_while_offline_is_delivered_once_after_the_widget_reconnects() {
    let django = FakeDjango::start();
    let app = app(&django);
    let proxy = Proxy::start(app.chat_addr).await;
    let driver = Driver::start().await;
    let customer = Widget::open(&driver, &proxy.url("/demo/")).await;
    customer.say("Before the outage").await;
    customer
        .wait_message("ai", "You said: Before the outage")
        .await;

    customer.record_status().await;
    proxy.refuse(true);
    proxy.cut();
    customer.wait_reconnecting().await;
    customer.say("Written while offline").await;
    customer
        .browser
        .wait_for(
            "the offline message to show as not yet sent",
            &Widget::pending_js("Written while offline"),
        )
        .await;

    proxy.refuse(false);
    customer.wait_connected().await;
    customer
        .browser
        .wait_for(
            "the offline message to be acknowledged",
            &format!("!({})", Widget::pending_js("Written while offline")),
        )
        .await;
    customer
        .wait_message("ai", "You said: Written while offline")
        .await;
    // A duplicate delivery would be answered before this later message is.
    customer.say("After the outage").await;
    customer
        .wait_message("ai", "You said: After the outage")
        .await;

    assert_eq!(
        customer.transcript().await,
        pairs(&[
            ("customer", "Before the outage"),
            ("ai", "You said: Before the outage"),
            ("customer", "Written while offline"),
            ("ai", "You said: Written while offline"),
            ("customer", "After the outage"),
            ("ai", "You said: After the outage"),
        ])
    );
    let asked: Vec<Value> = django
        .chat_calls(ChatEndpoint::AiRespond)
        .into_iter()
        .map(|c| c.body["message"].clone())
        .collect();
    assert_eq!(
        asked,
        [
            "Before the outage",
            "Written while offline",
            "After the outage"
        ],
        "Django saw each message once"
    );
    drop(customer);
    app.stop().await.expect("clean stop");
}
