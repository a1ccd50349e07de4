// Switchboard's customer chat widget. A host page embeds it with one tag:
//
//   <script src="https://chat.example.com/widget.js" async></script>
//
// Options are the tag's data- attributes: data-position ("right" | "left"), data-title,
// data-color (accent colour), data-token (the signed-in customer's JWT, from the host page),
// data-url (the chat WebSocket; default ws(s)://<this script's host>/ws/chat) and data-lang (a key
// of STRINGS; default "en").
//
// It loads switchboard.js from beside itself, so no bundler is involved, and draws a launcher and
// a chat panel inside a shadow root: the host page's CSS cannot reach in, and ours cannot leak out.
// It is a classic script with no globals but window.SwitchboardWidget, needs no eval, no inline
// script and no inline style attribute, so it runs under a strict Content-Security-Policy (see
// adoptStyles for style-src).
(() => {
  "use strict";

  // Every string a customer can see, so a translation is one more entry here.
  const STRINGS = {
    en: {
      title: "Support",
      launcher: "Chat with us",
      launcherUnread: "Chat with us ({count} new)",
      closePanel: "Close chat",
      online: "We're online",
      offline: "No one is online right now",
      you: "You",
      ai: "Assistant",
      agent: "Support agent",
      system: "Notice",
      empty: "Hi! How can we help you today?",
      inputLabel: "Your message",
      placeholder: "Write a message…",
      send: "Send",
      handoff: "Talk to a person",
      handoffWaiting: "Waiting for a person…",
      handoffWithAgent: "You're talking to {name}",
      ticketOffer: "Open a ticket",
      accept: "Yes, go ahead",
      decline: "No, thanks",
      accepted: "You accepted.",
      declined: "You declined.",
      pending: "Sending…",
      failed: "Not delivered",
      ticketCreated: "Ticket {id} was opened for you.",
      ticketSubject: "Help with: {text}",
      ticketSubjectDefault: "Help requested from the chat",
      queued: "We're finding a person to help you.",
      queuePosition: "You are number {position} in line.",
      queueNext: "You are next in line.",
      agentJoined: "{name} joined the chat.",
      agentLeft: "{name} left the chat.",
      typingAi: "The assistant is writing…",
      typingAgent: "{name} is writing…",
      connecting: "Connecting…",
      reconnecting: "Connection lost. Reconnecting…",
      reconnectingIn: "Connection lost. Reconnecting in {seconds} s…",
      busy: "We're very busy right now. Trying again shortly…",
      elsewhere: "This chat is open in another window.",
      resumeHere: "Continue here",
      signInFailed: "We couldn't sign you in to the chat. Please reload the page.",
      unavailable: "The chat is unavailable right now. Please try again later.",
      ended: "This chat has ended.",
      newChat: "Start a new chat",
      newSession: "A new chat has started.",
      ticketFailed: "We couldn't open a ticket just now. Please try again.",
      ticketLimit: "This chat has opened several tickets already. Please try again later.",
    },
  };

  const MAX_ITEMS = 200; // items kept for a reload; older ones scroll away for good
  const MAX_CHARS = 4000; // sessions.max_message_chars

  // document.currentScript is null when the script runs async from some loaders (and inside
  // modules), so fall back to finding our own tag by its file name.
  const script = document.currentScript ?? document.querySelector('script[src$="widget.js"]');
  if (!script || window.SwitchboardWidget) return; // no tag to read, or loaded twice: keep the first

  const scriptSrc = script.src || location.href;
  const data = script.dataset;
  const strings = { ...STRINGS.en, ...STRINGS[data.lang] };
  const options = {
    position: data.position === "left" ? "left" : "right",
    title: data.title || strings.title,
    color: data.color && globalThis.CSS?.supports?.("color", data.color) ? data.color : "#2557d6",
    token: data.token || undefined,
    url: data.url || defaultUrl(scriptSrc),
  };

  function defaultUrl(src) {
    const u = new URL("/ws/chat", src);
    u.protocol = u.protocol === "https:" ? "wss:" : "ws:";
    return u.href;
  }

  function t(key, vars = {}) {
    return strings[key].replace(/\{(\w+)\}/g, (_, name) => String(vars[name] ?? ""));
  }

  // --- the widget's own memory (what is on screen, for a reload) --------------------------------

  const STATE_KEY = "switchboard.widget";
  const store = (() => {
    try {
      return window.sessionStorage;
    } catch {
      return null;
    }
  })();

  function loadState() {
    try {
      const saved = JSON.parse(store?.getItem(STATE_KEY) ?? "null");
      if (saved && Array.isArray(saved.items)) return saved;
    } catch {
      // corrupt: start with an empty transcript
    }
    return null;
  }

  const state = loadState() ?? { items: [], answered: {}, open: false, tokenTag: null };
  state.answered ??= {};

  function saveState() {
    if (state.items.length > MAX_ITEMS) state.items = state.items.slice(-MAX_ITEMS);
    try {
      store?.setItem(STATE_KEY, JSON.stringify(state));
    } catch {
      // quota or disabled storage: the chat goes on, a reload shows less of it
    }
  }

  // --- DOM helpers ------------------------------------------------------------------------------

  function h(tag, attrs = {}, ...children) {
    const el = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs)) {
      if (value == null || value === false) continue;
      if (key === "class") el.className = value;
      else if (key === "text") el.textContent = value;
      else if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
      else el.setAttribute(key, value === true ? "" : String(value));
    }
    for (const child of children) if (child != null && child !== false) el.append(child);
    return el;
  }

  function icon(d) {
    const ns = "http://www.w3.org/2000/svg";
    const svg = document.createElementNS(ns, "svg");
    svg.setAttribute("viewBox", "0 0 24 24");
    svg.setAttribute("aria-hidden", "true");
    svg.setAttribute("focusable", "false");
    const path = document.createElementNS(ns, "path");
    path.setAttribute("d", d);
    svg.append(path);
    return svg;
  }

  const ICON_CHAT = "M4 4h16a2 2 0 0 1 2 2v10a2 2 0 0 1-2 2H9l-5 4v-4a2 2 0 0 1-2-2V6a2 2 0 0 1 2-2z";
  const ICON_CLOSE = "M6 6l12 12M18 6L6 18";
  const ICON_SEND = "M3 20l18-8L3 4v6l12 2-12 2z";

  const CSS = `
:host { all: initial; }
.sb { --accent: ${options.color}; position: fixed; bottom: 20px; right: 20px; z-index: 2147483000;
  font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
  color: #1c1e21; -webkit-font-smoothing: antialiased; }
.sb.left { right: auto; left: 20px; }
[hidden] { display: none !important; }
button { font: inherit; cursor: pointer; }
button:disabled { cursor: default; opacity: .6; }
:focus-visible { outline: 3px solid var(--accent); outline-offset: 2px; }
svg { width: 22px; height: 22px; fill: currentColor; stroke: currentColor; stroke-width: 0; }
.launcher { position: relative; width: 56px; height: 56px; border: 0; border-radius: 50%; background: var(--accent);
  color: #fff; display: grid; place-items: center; box-shadow: 0 4px 14px rgba(0,0,0,.25); }
.launcher svg { width: 26px; height: 26px; }
.badge { position: absolute; top: -4px; right: -4px; min-width: 20px; height: 20px; padding: 0 5px; box-sizing: border-box;
  border-radius: 10px; background: #d93025; color: #fff; font-size: 12px; line-height: 20px; text-align: center; }
.panel { position: absolute; bottom: 72px; right: 0; width: min(380px, calc(100vw - 40px));
  height: min(580px, calc(100vh - 112px)); display: flex; flex-direction: column; background: #fff;
  border-radius: 14px; overflow: hidden; box-shadow: 0 10px 40px rgba(0,0,0,.28); }
.left .panel { right: auto; left: 0; }
header { display: flex; align-items: center; gap: 8px; padding: 12px 12px 12px 16px; background: var(--accent); color: #fff; }
header .titles { flex: 1; min-width: 0; }
header h2 { margin: 0; font-size: 16px; font-weight: 600; overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
.presence { font-size: 12.5px; opacity: .9; }
.presence::before { content: ""; display: inline-block; width: 8px; height: 8px; margin-right: 6px; border-radius: 50%; background: #9aa0a6; }
.presence.on::before { background: #34c759; }
.icon-btn { border: 0; background: transparent; color: inherit; width: 36px; height: 36px; border-radius: 8px; display: grid; place-items: center; }
.icon-btn:hover { background: rgba(255,255,255,.18); }
.icon-btn svg { stroke-width: 2.2; fill: none; }
.status { padding: 6px 16px; background: #fff4ce; color: #5c4500; font-size: 13px; display: flex; gap: 8px; align-items: center; }
.log { flex: 1; overflow-y: auto; padding: 14px 12px; display: flex; flex-direction: column; gap: 10px; background: #f6f7f9; overscroll-behavior: contain; }
.empty { color: #5f6368; text-align: center; margin: auto 0; }
.msg { max-width: 85%; padding: 8px 12px; border-radius: 14px; background: #fff; border: 1px solid #e3e5e8; word-wrap: break-word; overflow-wrap: anywhere; }
.msg .meta { font-size: 12px; color: #5f6368; margin-bottom: 2px; display: flex; gap: 8px; }
.msg .who { font-weight: 600; }
.msg .text { white-space: pre-wrap; }
.msg[data-from="customer"] { align-self: flex-end; background: var(--accent); border-color: var(--accent); color: #fff; }
.msg[data-from="customer"] .meta { color: rgba(255,255,255,.85); }
.msg[data-from="agent"] { border-color: #b7d3c2; background: #eef8f1; }
.msg[data-from="system"] { align-self: center; max-width: 95%; background: #fff8e5; border-color: #f1dca5; font-size: 14px; }
.msg.failed { background: #fce8e6; border-color: #d93025; color: #a50e0e; }
.flag { font-size: 12px; opacity: .85; margin-top: 2px; }
.note { align-self: center; text-align: center; font-size: 13px; color: #5f6368; padding: 2px 8px; }
.card { align-self: stretch; background: #fff; border: 1px solid #c9d3f5; border-radius: 12px; padding: 10px 12px; }
.row { display: flex; flex-wrap: wrap; gap: 8px; margin-top: 8px; }
.btn { border: 1px solid var(--accent); background: #fff; color: var(--accent); border-radius: 999px; padding: 5px 12px; font-size: 14px; }
.btn.primary { background: var(--accent); color: #fff; }
.typing { padding: 2px 16px 4px; font-size: 13px; color: #5f6368; background: #f6f7f9; font-style: italic; }
.queue { padding: 6px 16px; font-size: 13px; background: #eef2fd; color: #1f3a8a; }
.bar { display: flex; flex-wrap: wrap; gap: 8px; padding: 8px 12px 0; background: #fff; border-top: 1px solid #e3e5e8; }
form { display: flex; gap: 8px; align-items: flex-end; padding: 8px 12px 12px; background: #fff; }
textarea { flex: 1; min-width: 0; resize: none; box-sizing: border-box; min-height: 40px; max-height: 120px; padding: 9px 12px;
  font: inherit; color: inherit; border: 1px solid #c4c7cc; border-radius: 20px; background: #fff; field-sizing: content; }
textarea:focus { border-color: var(--accent); outline: none; box-shadow: 0 0 0 2px color-mix(in srgb, var(--accent) 30%, transparent); }
.send { flex: none; width: 40px; height: 40px; border: 0; border-radius: 50%; background: var(--accent); color: #fff; display: grid; place-items: center; }
.sr { position: absolute; width: 1px; height: 1px; overflow: hidden; clip: rect(0 0 0 0); white-space: nowrap; }
@media (max-width: 480px) {
  .sb { bottom: 12px; right: 12px; }
  .sb.left { left: 12px; }
  .sb.opened { inset: 0; }
  .sb.opened .launcher { display: none; }
  .sb.opened .panel { position: fixed; inset: 0; width: auto; height: auto; border-radius: 0; }
}
@media (prefers-reduced-motion: no-preference) { .panel { animation: sb-in .16s ease-out; } }
@keyframes sb-in { from { opacity: 0; transform: translateY(8px); } }
`;

  // A constructed stylesheet is not subject to CSP style-src (only <style> elements and style
  // attributes are), so a page with a strict policy still styles the widget where
  // adoptedStyleSheets exists; elsewhere a <style> element is the only way.
  function adoptStyles(root) {
    try {
      const sheet = new CSSStyleSheet();
      sheet.replaceSync(CSS);
      root.adoptedStyleSheets = [sheet];
    } catch {
      root.append(h("style", { text: CSS }));
    }
  }

  // --- the interface ----------------------------------------------------------------------------

  let client = null;
  let unread = 0;
  let queued = false;
  let agentName = null;
  let ended = false;
  let statusNote = null; // the connection's state, when it needs saying
  const ownEls = new Map(); // clientId -> message element, to mark it sent
  const typingFrom = new Map(); // "ai" | "agent" -> name
  const typingExpiry = new Map();

  const launcher = h("button", {
    class: "launcher",
    type: "button",
    "data-sb": "launcher",
    "aria-expanded": "false",
    "aria-controls": "sb-panel",
    "aria-label": t("launcher"),
    onclick: () => (panel.hidden ? open() : close()),
  }, icon(ICON_CHAT));
  const badge = h("span", { class: "badge", "aria-hidden": "true", hidden: true });
  launcher.append(badge);

  const presenceEl = h("div", { class: "presence", "data-sb": "presence", hidden: true });
  const statusEl = h("div", { class: "status", "data-sb": "status", role: "status", hidden: true });
  const log = h("div", { class: "log", role: "log", "aria-live": "polite", "aria-relevant": "additions", tabindex: "0", "aria-label": options.title });
  const emptyEl = h("p", { class: "empty", text: t("empty") });
  const typingEl = h("div", { class: "typing", "aria-hidden": "true", hidden: true });
  const queueEl = h("div", { class: "queue", "data-sb": "queue-position", role: "status", hidden: true });
  const handoffBtn = h("button", { class: "btn", type: "button", "data-sb": "handoff", text: t("handoff"), onclick: () => requestHuman() });
  const newChatBtn = h("button", { class: "btn primary", type: "button", "data-sb": "new-chat", text: t("newChat"), hidden: true, onclick: () => newChat() });
  const bar = h("div", { class: "bar" }, handoffBtn, newChatBtn);
  const input = h("textarea", {
    "data-sb": "input",
    rows: "1",
    maxlength: String(MAX_CHARS),
    placeholder: t("placeholder"),
    "aria-label": t("inputLabel"),
    onkeydown: (e) => {
      if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
        e.preventDefault();
        submit();
      }
    },
    oninput: () => client?.typing(),
  });
  const sendBtn = h("button", { class: "send", type: "submit", "data-sb": "send", "aria-label": t("send") }, icon(ICON_SEND));
  const form = h("form", { onsubmit: (e) => (e.preventDefault(), submit()) }, input, sendBtn);
  const panel = h("div", {
    class: "panel",
    id: "sb-panel",
    role: "dialog",
    "aria-label": options.title,
    hidden: true,
    onkeydown: (e) => {
      if (e.key === "Escape") {
        e.stopPropagation();
        close();
      }
    },
  },
  h("header", {},
    h("div", { class: "titles" }, h("h2", { text: options.title }), presenceEl),
    h("button", { class: "icon-btn", type: "button", "data-sb": "close", "aria-label": t("closePanel"), onclick: () => close() }, icon(ICON_CLOSE))),
  statusEl, log, typingEl, queueEl, bar, form);
  const root = h("div", { class: `sb ${options.position}` }, panel, launcher);
  log.append(emptyEl);

  function open() {
    panel.hidden = false;
    root.classList.add("opened");
    launcher.setAttribute("aria-expanded", "true");
    unread = 0;
    renderBadge();
    state.open = true;
    saveState();
    if (client && (client.state === "idle" || (client.state === "closed" && !ended && !statusNote))) client.connect();
    (ended ? newChatBtn : input).focus();
    log.scrollTop = log.scrollHeight;
  }

  function close() {
    const hadFocus = root.getRootNode().activeElement != null && panel.contains(root.getRootNode().activeElement);
    panel.hidden = true;
    root.classList.remove("opened");
    launcher.setAttribute("aria-expanded", "false");
    state.open = false;
    saveState();
    if (hadFocus) launcher.focus();
  }

  function renderBadge() {
    badge.hidden = unread === 0;
    badge.textContent = unread > 9 ? "9+" : String(unread);
    launcher.setAttribute("aria-label", unread ? t("launcherUnread", { count: unread }) : t("launcher"));
  }

  function clean(text) {
    // The protocol refuses control characters other than newline and tab.
    return text.replace(/[\u0000-\u0008\u000b-\u001f\u007f-\u009f]/g, "").trim().slice(0, MAX_CHARS);
  }

  function submit() {
    const text = clean(input.value);
    if (!text || !client || ended) return;
    const clientId = client.send(text);
    input.value = "";
    addItem({ type: "own", clientId, text, at: Date.now() });
    input.focus();
  }

  // Returns whether the request went out; offline it did not, and the button stays usable.
  function requestHuman() {
    if (!client) return false;
    if (client.state === "idle") client.connect();
    if (!client.requestHuman()) return false;
    handoffBtn.disabled = true; // until the chat is queued (or it is refused and says so)
    return true;
  }

  function createTicket(button) {
    const lastOwn = [...state.items].reverse().find((i) => i.type === "own" || (i.type === "message" && i.from === "customer"));
    const line = lastOwn?.text.split("\n")[0].trim();
    const subject = line ? t("ticketSubject", { text: line.length > 120 ? `${line.slice(0, 119)}…` : line }) : t("ticketSubjectDefault");
    if (client?.createTicket(subject)) button.disabled = true;
  }

  function newChat() {
    state.items = [];
    state.answered = {};
    saveState();
    for (const el of [...log.children]) if (el !== emptyEl) el.remove();
    emptyEl.hidden = false;
    ownEls.clear();
    ended = false;
    queued = false;
    agentName = null;
    renderControls();
    client.connect();
    input.focus();
  }

  function renderControls() {
    input.disabled = ended;
    sendBtn.disabled = ended;
    newChatBtn.hidden = !ended;
    handoffBtn.hidden = ended;
    handoffBtn.disabled = queued || agentName != null;
    handoffBtn.textContent = agentName != null ? t("handoffWithAgent", { name: agentName }) : queued ? t("handoffWaiting") : t("handoff");
    if (!queued) queueEl.hidden = true;
    // Offers of a person in older failure messages mean nothing once one is on the way.
    for (const b of log.querySelectorAll('[data-offer="handoff.request"]')) b.disabled ||= queued || agentName != null || ended;
  }

  function renderTyping() {
    const names = [...typingFrom.entries()].map(([from, name]) => (from === "ai" ? t("typingAi") : t("typingAgent", { name: name || t("agent") })));
    typingEl.hidden = names.length === 0;
    typingEl.textContent = names.join(" ");
  }

  function setStatus(text, withResume) {
    statusNote = text;
    statusEl.hidden = !text;
    statusEl.replaceChildren(text ?? "");
    if (withResume) statusEl.append(h("button", { class: "btn", type: "button", text: t("resumeHere"), onclick: () => client.connect() }));
  }

  function onStatus({ state: s, retryInMs, code }) {
    if (s === "open" || s === "idle") setStatus(null);
    else if (s === "connecting") setStatus(t("connecting"));
    else if (s === "reconnecting") {
      if (code === 1013) setStatus(t("busy"));
      else if (retryInMs >= 2000) setStatus(t("reconnectingIn", { seconds: Math.round(retryInMs / 1000) }));
      else setStatus(t("reconnecting"));
    } else if (s === "closed") {
      if (code === 4009) setStatus(t("elsewhere"), true);
      else if (code === 1008) setStatus(t("signInFailed"));
      else setStatus(null);
    }
  }

  // One formatter, made while the page is idle: the first locale-aware time format loads the
  // locale's data (tens of milliseconds), which would otherwise delay the first message drawn.
  let timeFormat = null;
  const formatter = () =>
    (timeFormat ??= new Intl.DateTimeFormat([], { hour: "2-digit", minute: "2-digit" }));
  (globalThis.requestIdleCallback ?? ((f) => setTimeout(f, 0)))(() => formatter());

  function time(at) {
    const d = new Date(at);
    if (Number.isNaN(d.getTime())) return null;
    return h("time", { datetime: d.toISOString(), text: formatter().format(d) });
  }

  function messageEl(from, who, text, at) {
    return h("div", { class: "msg", "data-sb": "message", "data-from": from },
      h("div", { class: "meta" }, h("span", { class: "who", text: who }), at ? time(at) : null),
      h("div", { class: "text", text }));
  }

  // One transcript item to its element. Items are frames as they came (or the customer's own
  // message as sent), so the same code draws the live chat and the one restored after a reload.
  function render(item) {
    switch (item.type) {
      case "own": {
        const el = messageEl("customer", t("you"), item.text, item.at);
        ownEls.set(item.clientId, el);
        if (item.failed) markFailed(el);
        else if (client?.pending.some((p) => p.clientId === item.clientId)) {
          el.append(h("div", { class: "flag", "data-sb": "pending", text: t("pending") }));
        }
        return el;
      }
      case "message": {
        if (item.from === "customer") return messageEl("customer", t("you"), item.text, item.at);
        const who = item.from === "agent" ? item.name || t("agent") : item.from === "ai" ? t("ai") : t("system");
        const el = messageEl(item.from === "agent" || item.from === "ai" ? item.from : "system", who, item.text, item.at);
        if (Array.isArray(item.offers) && item.offers.length) {
          const row = h("div", { class: "row" });
          for (const offer of item.offers) {
            if (offer === "handoff.request") {
              row.append(h("button", { class: "btn", type: "button", "data-sb": "offer", "data-offer": offer, text: t("handoff"), onclick: (e) => { if (requestHuman()) e.currentTarget.disabled = true; } }));
            } else if (offer === "ticket.create") {
              row.append(h("button", { class: "btn", type: "button", "data-sb": "offer", "data-offer": offer, text: t("ticketOffer"), onclick: (e) => createTicket(e.currentTarget) }));
            }
          }
          el.append(row);
        }
        return el;
      }
      case "action.proposed": {
        const answered = state.answered[item.action_id];
        const result = h("div", { class: "flag", text: answered == null ? "" : answered ? t("accepted") : t("declined") });
        const choose = (accept) => {
          if (!client?.confirm(item.action_id, accept)) return; // offline: the card stays answerable
          state.answered[item.action_id] = accept;
          saveState();
          yes.disabled = no.disabled = true;
          result.textContent = accept ? t("accepted") : t("declined");
        };
        const yes = h("button", { class: "btn primary", type: "button", "data-sb": "confirm-accept", text: t("accept"), disabled: answered != null, onclick: () => choose(true) });
        const no = h("button", { class: "btn", type: "button", "data-sb": "confirm-decline", text: t("decline"), disabled: answered != null, onclick: () => choose(false) });
        return h("div", { class: "card", "data-sb": "action" }, h("div", { class: "text", text: item.summary }), h("div", { class: "row" }, yes, no), result);
      }
      case "ticket.created":
        return h("div", { class: "note", "data-sb": "ticket", "data-ticket-id": item.ticket_id, text: t("ticketCreated", { id: `#${String(item.ticket_id).slice(0, 8)}` }) });
      case "session.queued":
        return h("div", { class: "note", "data-sb": "queued", text: t("queued") });
      case "agent.joined":
        return h("div", { class: "note", "data-sb": "agent-joined", text: t("agentJoined", { name: item.name || t("agent") }) });
      case "agent.left":
        return h("div", { class: "note", "data-sb": "agent-left", text: t("agentLeft", { name: item.name || t("agent") }) });
      case "session.closed":
        return h("div", { class: "note", "data-sb": "ended", text: t("ended") });
      case "note":
        return h("div", { class: "note", text: item.text });
      default:
        return null;
    }
  }

  function markFailed(el) {
    el.classList.add("failed");
    el.querySelector('[data-sb="pending"]')?.remove();
    el.append(h("div", { class: "flag", text: t("failed") }));
  }

  // Tracks who holds the chat from the transcript, live and when replaying a saved one.
  function follow(item) {
    if (item.type === "session.queued") queued = true;
    else if (item.type === "agent.joined") (queued = false), (agentName = item.name || t("agent"));
    else if (item.type === "agent.left") agentName = null;
    else if (item.type === "session.closed") (ended = true), (queued = false), (agentName = null);
  }

  function addItem(item, { persist = true } = {}) {
    const el = render(item);
    if (!el) return;
    follow(item);
    const atBottom = log.scrollHeight - log.scrollTop - log.clientHeight < 40;
    emptyEl.hidden = true;
    log.append(el);
    if (atBottom || item.type === "own") log.scrollTop = log.scrollHeight;
    if (persist) {
      state.items.push(item);
      saveState();
    }
    renderControls();
    if (panel.hidden && item.type !== "own") {
      unread += 1;
      renderBadge();
    }
  }

  function wire(c) {
    c.on("status", onStatus);
    let hadSession = Boolean(c.sessionId);
    c.on("started", () => {
      // Items still on screen belong to a session the server no longer has (resume refused).
      if (hadSession && state.items.length) addItem({ type: "note", text: t("newSession") });
      hadSession = true;
      queued = false;
      agentName = null;
      renderControls();
    });
    c.on("message", (f) => {
      if (f.from === "customer" && f.client_id && ownEls.has(f.client_id)) return;
      typingFrom.delete(f.from);
      renderTyping();
      addItem(f);
    });
    c.on("ack", ({ clientId }) => ownEls.get(clientId)?.querySelector('[data-sb="pending"]')?.remove());
    c.on("failed", ({ clientId }) => {
      const el = ownEls.get(clientId);
      if (el) markFailed(el);
      const item = state.items.find((i) => i.clientId === clientId);
      if (item) (item.failed = true), saveState();
    });
    c.on("typing", ({ from, active }) => {
      if (from !== "ai" && from !== "agent") return;
      clearTimeout(typingExpiry.get(from));
      if (active) {
        typingFrom.set(from, agentName);
        // The "stopped" update is dropped first under load and never comes from a writer whose
        // connection died: an indicator nobody refreshes goes away by itself.
        typingExpiry.set(from, setTimeout(() => (typingFrom.delete(from), renderTyping()), 30000));
      } else typingFrom.delete(from);
      renderTyping();
    });
    c.on("agent_left", () => (typingFrom.delete("agent"), renderTyping()));
    for (const [event, type] of [["action", "action.proposed"], ["ticket", "ticket.created"], ["queued", "session.queued"], ["agent_joined", "agent.joined"], ["agent_left", "agent.left"]]) {
      c.on(event, (f) => addItem({ ...f, type }));
    }
    c.on("closed", (f) => {
      typingFrom.clear();
      renderTyping();
      addItem(f);
    });
    c.on("position", ({ position, agents_online: online }) => {
      queueEl.hidden = !queued && !(position > 0);
      // When no one is online the server says so in a system message; the line keeps to the place.
      queueEl.textContent = position === 1 ? t("queueNext") : t("queuePosition", { position });
      if (online != null) showPresence(online);
    });
    c.on("presence", ({ agents_online: online }) => showPresence(online));
    c.on("error", (f) => {
      if (f.code === "ticket_failed") addItem({ type: "note", text: t("ticketFailed") });
      else if (f.code === "ticket_limit") addItem({ type: "note", text: t("ticketLimit") });
      if (f.code === "ticket_failed" || f.code === "ticket_limit") {
        for (const b of log.querySelectorAll('[data-offer="ticket.create"]')) b.disabled = false;
      }
      renderControls();
    });
  }

  function showPresence(online) {
    presenceEl.hidden = false;
    presenceEl.classList.toggle("on", online);
    presenceEl.textContent = online ? t("online") : t("offline");
  }

  // --- start ------------------------------------------------------------------------------------

  let readyResolve;
  const ready = new Promise((resolve) => (readyResolve = resolve));
  window.SwitchboardWidget = Object.freeze({
    open,
    close,
    get client() {
      return client;
    },
    ready, // resolves with the client once switchboard.js is loaded
  });

  function mount() {
    const host = document.createElement("switchboard-widget");
    host.setAttribute("data-switchboard-widget", "");
    const shadow = host.attachShadow({ mode: "open" });
    adoptStyles(shadow);
    shadow.append(root);
    document.body.append(host);
  }

  async function start() {
    mount();
    // A session kept for another signed-in customer (or an anonymous one) must not be resumed
    // under this customer's name: the token's signature tells the two apart without storing it.
    const tokenTag = options.token ? options.token.slice(-16) : null;
    if (state.tokenTag !== tokenTag) {
      try {
        for (const k of ["switchboard.session", "switchboard.outbox"]) store?.removeItem(k);
      } catch {
        // storage unavailable: nothing was kept either
      }
      state.items = [];
      state.answered = {};
      state.tokenTag = tokenTag;
      saveState();
    }
    let mod;
    try {
      mod = await import(new URL("switchboard.js", scriptSrc).href);
    } catch {
      setStatus(t("unavailable"));
      return;
    }
    client = new mod.SwitchboardClient({ url: options.url, token: options.token, storageKey: "switchboard" });
    wire(client);
    for (const item of state.items) addItem(item, { persist: false });
    unread = 0;
    renderBadge();
    renderControls();
    // A chat in progress carries on at once (the agent may be writing); a new one waits for the
    // customer to open the panel, so a page view costs the server nothing.
    if (client.sessionId || client.pending.length) client.connect();
    if (state.open) open();
    readyResolve(client);
  }

  if (document.body) start();
  else document.addEventListener("DOMContentLoaded", start, { once: true });
})();
