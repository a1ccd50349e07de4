// The agent console: one page where a human agent signs in, sets their availability, watches the
// queue and answers many chats at once over `/ws/agent` (docs/protocol.md, "Agents"). The wire is
// `AgentClient`'s business (../API.md); this file keeps the page in step with its events.
//
// Rendering is incremental on purpose: an agent may hold dozens of chats and see a long queue, so a
// new message appends one element, older history is prepended as one fragment, queue rows are
// keyed by session and reused, and one timer updates every waiting time.

import { AgentClient } from "../switchboard.js";

// Every word the page shows. index.html refers to these keys with data-text.
const STRINGS = {
  title: "Switchboard console",
  titleUnread: (n) => `(${n}) Switchboard console`,
  skipToChats: "Skip to chats",
  signInTitle: "Sign in",
  signInHint:
    "Open the console from the admin site, or paste an agent token to try it.",
  tokenLabel: "Agent token",
  signIn: "Sign in",
  signOut: "Sign out",
  tokenMissing: "Paste a token first.",
  tokenMalformed: "This is not a token (expected three dot-separated parts).",
  tokenExpired: "This token has expired. Get a new one from the admin site.",
  tokenExpiresAt: (time) => `token valid until ${time}`,
  tokenExpiresSoon: (time) => `token expires at ${time}: open the console again from the admin site`,
  signedInAs: (name) => `Signed in as ${name}`,
  availability: "Availability",
  presenceLabel: "Presence",
  presence_online: "Online",
  presence_away: "Away",
  presence_offline: "Offline",
  capacityLabel: "Capacity (chats at once)",
  autoAssignLabel: "Assign chats to me automatically",
  loadLabel: "Chats held:",
  load: (load, capacity) => `${load} / ${capacity}`,
  agentsTitle: "Agents",
  you: "you",
  agentLoad: (load, capacity) => `${load}/${capacity}`,
  queueTitle: "Queue",
  queueTotal: (n) => `(${n})`,
  queueMore: (shown, total) => `Showing the ${shown} longest waiting of ${total}.`,
  queueEmpty: "Nobody is waiting.",
  claim: "Claim",
  claiming: "Claiming…",
  claimLabel: (customer) => `Claim the chat with ${customer}`,
  anonymous: "Visitor",
  noReason: "no reason given",
  chatsTitle: "Chats",
  chatsEmpty: "No chat open. Claim one from the queue, or wait for one to be assigned.",
  tabLabel: (customer, n) => `${customer}, ${n} unread`,
  loadOlder: "Load older messages",
  loadingOlder: "Loading…",
  leave: "Leave",
  leaveHint: "Give the chat back (to the AI or the queue, as the server is set up)",
  closeChat: "Close chat",
  closeHint: "End the chat for the customer",
  dismiss: "Dismiss",
  createTicket: "Create ticket",
  ticketSubject: "Subject",
  ticketDescription: "Description",
  ticketPriority: "Priority",
  priority_low: "Low",
  priority_normal: "Normal",
  priority_high: "High",
  priority_urgent: "Urgent",
  ticketSubmit: "Create",
  cancel: "Cancel",
  ticketCreatedFlash: "Ticket created.",
  replyLabel: (customer) => `Reply to ${customer}`,
  replyHint: "Enter sends, Shift+Enter starts a new line.",
  send: "Send",
  typing: (customer) => `${customer} is typing…`,
  author_ai: "AI",
  author_system: "System",
  author_agent: "Agent",
  sending: "sending…",
  resending: "waiting to send again…",
  notConnected: "Not connected: try again once the console is back online.",
  notSent: (why) => `not sent: ${why}`,
  note_queued: (reason) => `Waiting for an agent${reason ? `: ${reason}` : ""}`,
  note_joined: (name) => `${name} joined`,
  note_left: (name) => `${name} left`,
  note_ticket: (id) => `Ticket ${id} created`,
  note_action: (summary) => `AI proposed: ${summary}`,
  note_closed: (reason) => `Chat closed (${reason})`,
  closeReason: {
    customer_closed: "by the customer",
    agent_closed: "by an agent",
    idle_timeout: "idle",
    server_shutdown: "server shutdown",
  },
  chatEnded: "This chat has ended.",
  chatGone: "This chat is no longer yours.",
  chatRequeued: (customer) => `The chat with ${customer} went back to the queue.`,
  newChat: (customer) => `New chat with ${customer}`,
  announceMessage: (author, text) => `${author}: ${text}`,
  status_idle: "Not connected",
  status_connecting: "Connecting…",
  status_open: "Connected",
  status_reconnecting: (seconds, attempt) =>
    seconds > 0
      ? `Connection lost; retrying in ${seconds} s (attempt ${attempt})`
      : `Reconnecting (attempt ${attempt})…`,
  status_closed: "Disconnected",
  status_replaced: "This console was opened in another window; reload to use it here.",
  status_unreachable: "Cannot reach the server, or the token was refused; still trying.",
  // What the agent is told about a refused frame; other codes show the server's own message.
  errors: {
    already_claimed: "Another agent took this chat first.",
    at_capacity: "You hold as many chats as your capacity allows.",
    unknown_session: "This chat has ended.",
    not_joined: "This chat is no longer yours.",
    session_closed: "This chat has ended.",
    ticket_failed: "The ticket could not be created just now; try again.",
    ticket_limit: "This chat has opened too many tickets in the last hour.",
    rate_limited: "Too fast: slow down a little.",
    server_busy: "The server is busy; try again shortly.",
  },
  durationSeconds: (s) => `${s} s`,
  durationMinutes: (m, s) => `${m}:${String(s).padStart(2, "0")}`,
  durationHours: (h, m) => `${h} h ${String(m).padStart(2, "0")} min`,
};

const TOKEN_KEY = "switchboard.console.token";
const PREFS_KEY = "switchboard.console.prefs";
// A typing indicator whose "stopped" frame was lost (typing is the first thing dropped) goes away
// by itself after this long.
const TYPING_STALE_MS = 8000;
// Within this distance of the bottom, a transcript follows new messages; further up, the agent is
// reading older ones and is left where they are.
const STICK_PX = 48;
const NOTICE_MS = 8000;
// Errors after which AgentClient sends a message again by itself (the rest are final).
const RETRIED = new Set(["rate_limited", "server_busy"]);
// Errors about the connection itself, which AgentClient answers by itself (a fresh agent.start).
const HANDLED_BY_CLIENT = new Set(["resume_refused", "invalid_seq"]);
const EXPIRY_WARN_S = 5 * 60;
const EXP_LEEWAY_S = 60;
const TITLE_DELAY_MS = 250;

// ---------------------------------------------------------------------------------------------
// Small helpers

const $ = (hook, root = document) => root.querySelector(`[data-sb="${hook}"]`);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k === "sb") node.dataset.sb = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : v);
  }
  node.append(...children);
  return node;
}

function fill(root) {
  for (const node of root.querySelectorAll("[data-text]")) {
    const s = STRINGS[node.dataset.text];
    if (typeof s === "string") node.textContent = s;
  }
}

const timeFormat = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit" });
const dateTimeFormat = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "short" });

function clock(iso) {
  const d = iso ? new Date(iso) : new Date();
  return Number.isNaN(d.getTime()) ? "" : timeFormat.format(d);
}

function duration(ms) {
  const s = Math.max(0, Math.floor(ms / 1000));
  if (s < 60) return STRINGS.durationSeconds(s);
  if (s < 3600) return STRINGS.durationMinutes(Math.floor(s / 60), s % 60);
  return STRINGS.durationHours(Math.floor(s / 3600), Math.floor((s % 3600) / 60));
}

// The claims of a JWT, read without checking it (the server checks it): the console uses them to
// refuse an expired or mangled paste at once and to keep one agent's resume state apart from
// another's.
function claimsOf(token) {
  const parts = token.split(".");
  if (parts.length !== 3) return null;
  try {
    const b64 = parts[1].replace(/-/g, "+").replace(/_/g, "/");
    const json = decodeURIComponent(
      Array.from(atob(b64), (c) => "%" + c.charCodeAt(0).toString(16).padStart(2, "0")).join(""),
    );
    const claims = JSON.parse(json);
    return claims && typeof claims === "object" ? claims : null;
  } catch {
    return null;
  }
}

// The same origin's /ws/agent. `?ws=` overrides it, but only for a page served from this machine
// (development: the page and the server on different ports); elsewhere a crafted link could send
// the agent's token to another host.
function agentUrl() {
  const override = new URLSearchParams(location.search).get("ws");
  const loopback = ["localhost", "127.0.0.1", "[::1]", "::1"].includes(location.hostname);
  if (override && loopback && /^wss?:\/\//.test(override)) return override;
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${location.host}/ws/agent`;
}

// The client keeps its resume state (the agent stream's last seq) in this; keys are scoped by agent
// so that a second agent signing in in the same tab does not resume the first one's stream.
function scopedStorage(base, prefix) {
  return {
    getItem: (k) => base.getItem(prefix + k),
    setItem: (k, v) => base.setItem(prefix + k, v),
    removeItem: (k) => base.removeItem(prefix + k),
    clear() {
      for (let i = base.length - 1; i >= 0; i--) {
        const k = base.key(i);
        if (k && k.startsWith(prefix)) base.removeItem(k);
      }
    },
    get length() {
      let n = 0;
      for (let i = 0; i < base.length; i++) if (base.key(i)?.startsWith(prefix)) n++;
      return n;
    },
    key(i) {
      const keys = [];
      for (let j = 0; j < base.length; j++) {
        const k = base.key(j);
        if (k?.startsWith(prefix)) keys.push(k.slice(prefix.length));
      }
      return keys[i] ?? null;
    },
  };
}

function readPrefs() {
  try {
    return JSON.parse(sessionStorage.getItem(PREFS_KEY)) || {};
  } catch {
    return {};
  }
}

function savePrefs(prefs) {
  sessionStorage.setItem(PREFS_KEY, JSON.stringify(prefs));
}

// ---------------------------------------------------------------------------------------------
// Page state

const ui = {};
const state = {
  client: null,
  token: null,
  me: null, // {agentId, name, presence, capacity, autoAssign, expiresAt}
  everReady: false,
  agents: new Map(), // agent_id -> {view, row}
  queue: new Map(), // session_id -> {row, customer, reason, timeEl, claim, since, shown, key}
  chats: new Map(), // session_id -> Chat
  selected: null,
  pending: new Map(), // client_id -> {chat, item}
  unreadTotal: 0,
  titleTimer: 0,
  wantSelect: null, // the session just claimed from the queue: shown when it arrives
  noticeTimer: 0,
  expiryTimer: 0,
};

// ---------------------------------------------------------------------------------------------
// Sign in and out

function boot() {
  fill(document);
  for (const id of [
    "sign-in-form", "token", "token-error", "workspace", "sign-in-panel", "whoami", "agent-name",
    "expiry", "status", "sign-out", "notice", "presence", "capacity", "auto-assign", "load",
    "agents", "queue", "queue-total", "queue-more", "queue-empty", "chat-tabs", "chat-panes",
    "chats-empty", "announcer",
  ]) {
    ui[id] = $(id);
  }

  ui["sign-in-form"].addEventListener("submit", (e) => {
    e.preventDefault();
    signIn(ui.token.value.trim());
  });
  ui["sign-out"].addEventListener("click", signOut);
  ui.presence.addEventListener("change", () => changePresence({ presence: ui.presence.value }));
  ui.capacity.addEventListener("change", () => {
    const n = Math.floor(Number(ui.capacity.value));
    if (Number.isFinite(n) && n >= 1) changePresence({ capacity: n });
  });
  ui["auto-assign"].addEventListener("change", () =>
    changePresence({ auto_assign: ui["auto-assign"].checked }),
  );
  ui.queue.addEventListener("click", onQueueClick);
  ui["chat-tabs"].addEventListener("click", onTabClick);

  setInterval(tickWaiting, 1000);
  renderStatus({ state: "idle" });

  // The admin site may send a fresh token to a console already open in this tab: only the
  // fragment changes then, and the page is not reloaded.
  addEventListener("hashchange", () => {
    const token = tokenFromHash();
    if (token) replaceToken(token);
  });
  const token = tokenFromHash() ?? sessionStorage.getItem(TOKEN_KEY);
  if (token) signIn(token);
  else ui.token.focus();
}

// A token in the fragment (from the admin site) wins over a stored one, and leaves the address
// bar at once so that it is not bookmarked, shared or kept in history.
function tokenFromHash() {
  const token = new URLSearchParams(location.hash.slice(1)).get("token");
  if (token) history.replaceState(null, "", location.pathname + location.search);
  return token || null;
}

// A fresh token for the agent already signed in reconnects and resumes (the chats stay, nothing
// is requeued); another agent's token signs the first one out.
function replaceToken(token) {
  const current = state.token && claimsOf(state.token);
  const next = claimsOf(token);
  if (state.client && current && next && current.sub === next.sub && !tokenProblem(token)) {
    stopClient();
    signIn(token);
    return;
  }
  if (state.client) signOut();
  signIn(token);
}

function tokenProblem(token) {
  if (!token) return STRINGS.tokenMissing;
  const claims = claimsOf(token);
  if (!claims) return STRINGS.tokenMalformed;
  // The server allows a minute of clock skew; so does this check, so a slow clock here does not
  // turn away a token the server would take.
  const expired = typeof claims.exp === "number" && (claims.exp + EXP_LEEWAY_S) * 1000 <= Date.now();
  if (expired) return STRINGS.tokenExpired;
  return null;
}

function signIn(token) {
  const problem = tokenProblem(token);
  if (problem) {
    showSignIn(problem);
    return;
  }
  const claims = claimsOf(token);
  sessionStorage.setItem(TOKEN_KEY, token);
  state.token = token;
  state.everReady = false;
  ui.token.value = "";
  ui["token-error"].hidden = true;

  const client = new AgentClient({
    url: agentUrl(),
    token,
    storage: scopedStorage(sessionStorage, `switchboard.console.${claims.sub ?? "agent"}.`),
  });
  state.client = client;
  // A client signed out of (or replaced) may still report its last words: only the current one
  // drives the page.
  const on = (event, handler) =>
    client.on(event, (payload) => {
      if (state.client === client) handler(payload);
    });
  on("status", renderStatus);
  on("ready", onReady);
  on("queue", onQueue);
  on("presence", (f) => upsertAgent(f.agent));
  on("roster", (f) => replaceAgents(f.agents));
  on("assigned", onAssigned);
  on("event", onEvent);
  on("released", onReleased);
  on("typing", onTyping);
  on("ack", onAck);
  on("ticket", onTicket);
  on("history", onHistory);
  on("error", onError);

  const prefs = readPrefs();
  const start = {};
  if (prefs.presence) start.presence = prefs.presence;
  if (prefs.capacity) start.capacity = prefs.capacity;
  if (typeof prefs.auto_assign === "boolean") start.auto_assign = prefs.auto_assign;
  document.body.classList.replace("signed-out", "signed-in");
  ui["sign-in-panel"].hidden = true;
  ui.workspace.hidden = false;
  ui["sign-out"].hidden = false;
  client.connect(start);
}

// Going offline first hands the chats back to the queue at once, rather than after the server's
// grace for a dropped agent.
function signOut() {
  const client = state.client;
  state.client = null;
  if (client) {
    try {
      if (client.state === "open") client.setPresence({ presence: "offline" });
    } finally {
      client.disconnect();
    }
  }
  const claims = state.token && claimsOf(state.token);
  if (claims) scopedStorage(sessionStorage, `switchboard.console.${claims.sub ?? "agent"}.`).clear();
  sessionStorage.removeItem(TOKEN_KEY);
  sessionStorage.removeItem(PREFS_KEY);
  resetWorkspace();
  showSignIn(null);
  renderStatus({ state: "idle" });
}

function stopClient() {
  const client = state.client;
  state.client = null;
  client?.disconnect();
}

function resetWorkspace() {
  state.client = null;
  state.token = null;
  state.me = null;
  clearTimeout(state.expiryTimer);
  for (const chat of state.chats.values()) {
    clearTimeout(chat.typingTimer);
    transcriptResize.unobserve(chat.transcript);
  }
  state.chats.clear();
  state.unreadTotal = 0;
  clearTimeout(state.titleTimer);
  state.titleTimer = 0;
  document.title = STRINGS.title;
  state.pending.clear();
  state.agents.clear();
  state.queue.clear();
  state.selected = null;
  ui["chat-tabs"].replaceChildren();
  ui["chat-panes"].replaceChildren();
  ui.agents.replaceChildren();
  ui.queue.replaceChildren();
  ui["queue-total"].textContent = "";
  ui["queue-more"].hidden = true;
  ui["queue-empty"].hidden = false;
  ui["chats-empty"].hidden = false;
  ui.whoami.hidden = true;
}

function showSignIn(message) {
  document.body.classList.replace("signed-in", "signed-out");
  ui.workspace.hidden = true;
  ui["sign-out"].hidden = true;
  ui["sign-in-panel"].hidden = false;
  ui["token-error"].hidden = !message;
  ui["token-error"].textContent = message || "";
  ui.token.setAttribute("aria-invalid", message ? "true" : "false");
  ui.token.focus();
}

// The token can no longer be used (expired, or refused): back to the sign-in form, chats left to
// the server's grace (they come back if the agent returns in time with a fresh token).
function tokenEnded(message) {
  stopClient();
  sessionStorage.removeItem(TOKEN_KEY);
  resetWorkspace();
  showSignIn(message);
  renderStatus({ state: "idle" });
}

// ---------------------------------------------------------------------------------------------
// Connection status, notices, announcements

function renderStatus(s) {
  let text;
  switch (s.state) {
    case "connecting":
      text = STRINGS.status_connecting;
      break;
    case "open":
      text = STRINGS.status_open;
      break;
    case "reconnecting":
      text = STRINGS.status_reconnecting(Math.ceil((s.retryInMs || 0) / 1000), s.attempt ?? 1);
      // A browser cannot see why a handshake failed (a refused token looks like a network error):
      // a console that never got in says both may be the cause.
      if (!state.everReady && (s.attempt ?? 0) >= 2) text = STRINGS.status_unreachable;
      break;
    case "closed":
      text = s.code === 4009 ? STRINGS.status_replaced : STRINGS.status_closed;
      if (s.code === 4011) {
        tokenEnded(STRINGS.tokenExpired);
        return;
      }
      break;
    default:
      text = STRINGS.status_idle;
  }
  ui.status.textContent = text;
  ui.status.dataset.state = s.state || "idle";
}

function notice(text) {
  ui.notice.textContent = text;
  ui.notice.hidden = false;
  clearTimeout(state.noticeTimer);
  state.noticeTimer = setTimeout(() => {
    ui.notice.hidden = true;
  }, NOTICE_MS);
}

function announce(text) {
  // One node per announcement, the oldest dropped: screen readers read additions, and the region
  // never grows.
  ui.announcer.append(el("p", { text }));
  while (ui.announcer.childElementCount > 3) ui.announcer.firstElementChild.remove();
}

// ---------------------------------------------------------------------------------------------
// The agent: ready, presence, other agents

function onReady(f) {
  state.everReady = true;
  state.me = {
    agentId: f.agent_id,
    name: f.name,
    presence: f.presence,
    capacity: f.capacity,
    autoAssign: f.auto_assign,
    expiresAt: f.token_expires_at,
  };
  ui.whoami.hidden = false;
  ui["agent-name"].textContent = STRINGS.signedInAs(f.name);
  renderExpiry();
  ui.presence.value = f.presence;
  ui.capacity.value = String(f.capacity);
  ui["auto-assign"].checked = !!f.auto_assign;
  savePrefs({ presence: f.presence, capacity: f.capacity, auto_assign: f.auto_assign });

  // Agents and the queue describe the present: replace them wholesale.
  replaceAgents(f.agents);
  // `agent.ready` carries no total; the next `queue.updated` does.
  onQueue({ waiting: f.queue || [], total: (f.queue || []).length });

  // The chats held: ours already on screen stay; one the server has but this page does not (the
  // page was reloaded) is joined again, which sends its history; one on screen the server no
  // longer gives us was lost while away.
  const held = new Set(f.sessions || []);
  for (const chat of [...state.chats.values()]) {
    if (!held.has(chat.id) && !chat.ended) endChat(chat, STRINGS.chatGone);
  }
  // The client reports `ready` just before it counts itself open (and frames can be sent): join
  // right after.
  const client = state.client;
  queueMicrotask(() => {
    for (const id of held) if (!state.chats.has(id) && state.client === client) client.join(id);
  });
  // Requests the last connection took to its grave get no answer: make them possible again.
  for (const chat of state.chats.values()) {
    chat.loadOlder.disabled = false;
    chat.loadOlder.textContent = STRINGS.loadOlder;
    const submit = chat.ticketForm.querySelector('button[type="submit"]');
    if (submit) submit.disabled = false;
    showTyping(chat, false);
  }
  for (const id of state.queue.keys()) resetClaim(id);
  state.wantSelect = null;
  renderLoad();
}

function renderExpiry() {
  clearTimeout(state.expiryTimer);
  const at = state.me?.expiresAt;
  if (!at) {
    ui.expiry.textContent = "";
    return;
  }
  const when = dateTimeFormat.format(new Date(at * 1000));
  const left = at - Date.now() / 1000;
  const soon = left <= EXPIRY_WARN_S;
  ui.expiry.textContent = soon ? STRINGS.tokenExpiresSoon(when) : STRINGS.tokenExpiresAt(when);
  ui.expiry.classList.toggle("warn", soon);
  if (!soon) {
    // Wake once, when the warning is due, rather than polling.
    state.expiryTimer = setTimeout(renderExpiry, Math.min((left - EXPIRY_WARN_S) * 1000 + 500, 2 ** 31 - 1));
  }
}

function changePresence(change) {
  if (!state.client) return;
  // Kept for the next sign-on even when it cannot be sent now.
  if (!state.client.setPresence(change)) notice(STRINGS.notConnected);
  savePrefs({ ...readPrefs(), ...change });
  if (state.me) {
    if (change.presence) state.me.presence = change.presence;
    if (change.capacity) state.me.capacity = change.capacity;
    if ("auto_assign" in change) state.me.autoAssign = change.auto_assign;
  }
  renderLoad();
}

// Every agent online, in full (agent.ready, agent.roster): whoever is not in it is gone.
function replaceAgents(views) {
  for (const { row } of state.agents.values()) row.remove();
  state.agents.clear();
  for (const a of views || []) upsertAgent(a);
}

function upsertAgent(view) {
  if (!view) return;
  let entry = state.agents.get(view.agent_id);
  if (!entry) {
    const row = el(
      "li",
      { class: "agent" },
      el("span", { class: "dot", "aria-hidden": "true" }),
      el("span", { class: "name" }),
      el("span", { class: "presence" }),
      el("span", { class: "agent-load" }),
    );
    entry = { view, row };
    state.agents.set(view.agent_id, entry);
    ui.agents.append(row);
  }
  entry.view = view;
  const mine = state.me && view.agent_id === state.me.agentId;
  const [, name, presence, load] = entry.row.children;
  entry.row.dataset.presence = view.presence;
  entry.row.classList.toggle("mine", !!mine);
  name.textContent = mine ? `${view.name} (${STRINGS.you})` : view.name;
  presence.textContent = STRINGS[`presence_${view.presence}`] ?? view.presence;
  load.textContent = STRINGS.agentLoad(view.load, view.capacity);
  if (mine) {
    state.me.presence = view.presence;
    state.me.capacity = view.capacity;
    if (document.activeElement !== ui.presence) ui.presence.value = view.presence;
    if (document.activeElement !== ui.capacity) ui.capacity.value = String(view.capacity);
    renderLoad(view.load);
  }
}

function renderLoad(serverLoad) {
  const held = [...state.chats.values()].filter((c) => !c.ended).length;
  const load = serverLoad ?? held;
  ui.load.textContent = STRINGS.load(load, state.me?.capacity ?? "–");
}

// ---------------------------------------------------------------------------------------------
// The queue: keyed rows, reordered in place, one timer for every waiting time

function onQueue(f) {
  const waiting = f.waiting || [];
  const seen = new Set();
  let cursor = ui.queue.firstElementChild;
  for (const w of waiting) {
    seen.add(w.session_id);
    const entry = state.queue.get(w.session_id) ?? createQueueRow(w);
    updateQueueRow(entry, w);
    if (entry.row === cursor) cursor = cursor.nextElementSibling;
    else ui.queue.insertBefore(entry.row, cursor);
  }
  for (const [id, entry] of state.queue) {
    if (!seen.has(id)) {
      entry.row.remove();
      state.queue.delete(id);
    }
  }
  const total = f.total ?? waiting.length;
  ui["queue-total"].textContent = STRINGS.queueTotal(total);
  ui["queue-empty"].hidden = total > 0;
  ui["queue-more"].hidden = total <= waiting.length;
  ui["queue-more"].textContent = STRINGS.queueMore(waiting.length, total);
  tickWaiting();
}

function createQueueRow(w) {
  const customer = el("span", { class: "customer" });
  const reason = el("span", { class: "reason" });
  const timeEl = el("time", { class: "waiting" });
  const claim = el("button", { type: "button", class: "claim", sb: "claim", text: STRINGS.claim });
  const row = el(
    "li",
    { class: "queue-item", sb: "queue-item", "data-session-id": w.session_id },
    el("div", { class: "who" }, customer, timeEl),
    reason,
    claim,
  );
  const entry = { row, customer, reason, timeEl, claim, since: 0, shown: "", key: "" };
  state.queue.set(w.session_id, entry);
  return entry;
}

function updateQueueRow(entry, w) {
  // Only what changed is written: a snapshot every 100 ms must not touch 50 unchanged rows.
  const key = `${w.customer}\u0000${w.reason}\u0000${w.waiting_since}\u0000${w.position}`;
  if (entry.key === key) return;
  entry.key = key;
  const name = w.customer || STRINGS.anonymous;
  entry.customer.textContent = name;
  entry.reason.textContent = w.reason || STRINGS.noReason;
  entry.since = Date.parse(w.waiting_since) || Date.now();
  entry.timeEl.dateTime = w.waiting_since || "";
  entry.claim.setAttribute("aria-label", STRINGS.claimLabel(name));
  entry.row.dataset.position = String(w.position ?? "");
}

function tickWaiting() {
  const now = Date.now();
  for (const entry of state.queue.values()) {
    const text = duration(now - entry.since);
    if (text !== entry.shown) {
      entry.shown = text;
      entry.timeEl.textContent = text;
    }
  }
}

function onQueueClick(e) {
  const button = e.target.closest('[data-sb="claim"]');
  if (!button || !state.client) return;
  const id = button.closest('[data-sb="queue-item"]').dataset.sessionId;
  button.disabled = true;
  button.textContent = STRINGS.claiming;
  state.wantSelect = id;
  if (!state.client.join(id)) {
    state.wantSelect = null;
    resetClaim(id);
    notice(STRINGS.notConnected);
  }
}

function resetClaim(sessionId) {
  const entry = state.queue.get(sessionId);
  if (!entry) return;
  entry.claim.disabled = false;
  entry.claim.textContent = STRINGS.claim;
}

// ---------------------------------------------------------------------------------------------
// Chats: one pane each, built once; transcripts only ever grow at either end

// A transcript that shrinks (the typing line or a notice appears, the window gets smaller) would
// hide its newest lines: one observer for all of them keeps a following transcript at its end.
const transcriptChats = new WeakMap();
const transcriptResize = new ResizeObserver((entries) => {
  for (const entry of entries) {
    const chat = transcriptChats.get(entry.target);
    if (chat?.stick && !chat.pane.hidden) scrollSoon(chat);
  }
});

function customerName(chat) {
  return chat.customer || STRINGS.anonymous;
}

function createChat(f) {
  const id = f.session_id;
  const chat = {
    id,
    customer: f.customer,
    firstSeq: Infinity,
    lastSeq: 0,
    hasMore: !!f.has_more,
    unread: 0,
    ended: false,
    closingByMe: false,
    typingTimer: 0,
    stick: true,
    scrollPending: false,
  };
  const uid = `chat-${state.chats.size}-${Math.random().toString(36).slice(2, 8)}`;
  const name = customerName(chat);

  // The tab: the customer's name and how many of their messages came while it was not on screen.
  chat.unreadEl = el("span", { class: "unread", sb: "unread", "aria-hidden": "true", hidden: true });
  chat.tabButton = el(
    "button",
    { type: "button", class: "tab", "aria-controls": uid },
    el("span", { class: "tab-name", text: name }),
    chat.unreadEl,
  );
  chat.tab = el("li", { sb: "chat-tab", "data-session-id": id }, chat.tabButton);

  // The pane.
  chat.loadOlder = el("button", {
    type: "button",
    class: "load-older quiet",
    sb: "load-older",
    text: STRINGS.loadOlder,
    onclick: () => fetchOlder(chat),
  });
  chat.loadOlder.hidden = !chat.hasMore;
  chat.list = el("ol", { class: "messages", "aria-label": name });
  chat.transcript = el("div", { class: "transcript", tabindex: "0" }, chat.loadOlder, chat.list);
  chat.transcript.addEventListener(
    "scroll",
    () => {
      const t = chat.transcript;
      chat.stick = t.scrollHeight - t.scrollTop - t.clientHeight < STICK_PX;
    },
    { passive: true },
  );
  transcriptChats.set(chat.transcript, chat);
  transcriptResize.observe(chat.transcript);
  chat.typingEl = el("p", { class: "typing", text: STRINGS.typing(name), hidden: true });
  chat.noteEl = el("p", { class: "chat-notice", role: "status" });

  const inputId = `${uid}-input`;
  const hintId = `${uid}-hint`;
  chat.input = el("textarea", {
    id: inputId,
    sb: "input",
    rows: "2",
    "aria-describedby": hintId,
    onkeydown: (e) => {
      if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
        e.preventDefault();
        sendMessage(chat);
      }
    },
    oninput: () => {
      if (!chat.ended && chat.input.value) state.client?.typing(id);
    },
  });
  chat.send = el("button", { type: "submit", sb: "send", text: STRINGS.send });
  chat.composer = el(
    "form",
    {
      class: "composer",
      onsubmit: (e) => {
        e.preventDefault();
        sendMessage(chat);
      },
    },
    el("label", { for: inputId, text: STRINGS.replyLabel(name) }),
    el("div", { class: "compose-row" }, chat.input, chat.send),
    el("p", { id: hintId, class: "hint", text: STRINGS.replyHint }),
  );

  chat.ticketButton = el("button", {
    type: "button",
    class: "quiet",
    "aria-expanded": "false",
    text: STRINGS.createTicket,
    onclick: () => toggleTicketForm(chat),
  });
  chat.leave = el("button", {
    type: "button",
    class: "quiet",
    sb: "leave",
    title: STRINGS.leaveHint,
    text: STRINGS.leave,
    onclick: () => {
      if (!state.client?.leave(id)) chat.noteEl.textContent = STRINGS.notConnected;
    },
  });
  chat.close = el("button", {
    type: "button",
    class: "danger",
    sb: "close-chat",
    title: STRINGS.closeHint,
    text: STRINGS.closeChat,
    onclick: () => {
      chat.closingByMe = !!state.client?.closeChat(id);
      if (!chat.closingByMe) chat.noteEl.textContent = STRINGS.notConnected;
    },
  });
  chat.dismiss = el("button", {
    type: "button",
    sb: "dismiss",
    text: STRINGS.dismiss,
    hidden: true,
    onclick: () => removeChat(chat),
  });
  chat.ticketForm = buildTicketForm(chat, uid);

  const titleId = `${uid}-title`;
  chat.pane = el(
    "section",
    { class: "chat", sb: "chat", "data-session-id": id, id: uid, "aria-labelledby": titleId, hidden: true },
    el(
      "header",
      { class: "chat-head" },
      el("h3", { id: titleId, text: name }),
      el("div", { class: "actions" }, chat.ticketButton, chat.leave, chat.close, chat.dismiss),
    ),
    chat.ticketForm,
    chat.transcript,
    chat.typingEl,
    chat.noteEl,
    chat.composer,
  );

  state.chats.set(id, chat);
  ui["chat-tabs"].append(chat.tab);
  ui["chat-panes"].append(chat.pane);
  ui["chats-empty"].hidden = true;
  return chat;
}

function buildTicketForm(chat, uid) {
  const subject = el("input", { id: `${uid}-subject`, type: "text", maxlength: "200", required: true });
  const description = el("textarea", { id: `${uid}-description`, rows: "3" });
  const priority = el(
    "select",
    { id: `${uid}-priority` },
    ...["low", "normal", "high", "urgent"].map((p) =>
      el("option", { value: p, text: STRINGS[`priority_${p}`], selected: p === "normal" }),
    ),
  );
  const form = el(
    "form",
    {
      class: "ticket-form",
      sb: "ticket-form",
      hidden: true,
      onsubmit: (e) => {
        e.preventDefault();
        const s = subject.value.trim();
        if (!s) {
          subject.focus();
          return;
        }
        if (state.client?.createTicket(chat.id, s, description.value.trim() || undefined, priority.value)) {
          form.querySelector('button[type="submit"]').disabled = true;
        } else {
          chat.noteEl.textContent = STRINGS.notConnected;
        }
      },
    },
    el("div", { class: "field" }, el("label", { for: subject.id, text: STRINGS.ticketSubject }), subject),
    el(
      "div",
      { class: "field" },
      el("label", { for: description.id, text: STRINGS.ticketDescription }),
      description,
    ),
    el("div", { class: "field" }, el("label", { for: priority.id, text: STRINGS.ticketPriority }), priority),
    el(
      "div",
      { class: "actions" },
      el("button", { type: "submit", text: STRINGS.ticketSubmit }),
      el("button", {
        type: "button",
        class: "quiet",
        text: STRINGS.cancel,
        onclick: () => toggleTicketForm(chat, false),
      }),
    ),
  );
  return form;
}

function toggleTicketForm(chat, open = chat.ticketForm.hidden) {
  chat.ticketForm.hidden = !open;
  chat.ticketButton.setAttribute("aria-expanded", String(open));
  if (open) {
    chat.ticketForm.querySelector('button[type="submit"]').disabled = false;
    chat.ticketForm.querySelector("input").focus();
  } else {
    chat.ticketForm.reset();
    chat.ticketButton.focus();
  }
}

function selectChat(id) {
  const next = state.chats.get(id);
  if (!next) return;
  const prev = state.chats.get(state.selected);
  if (prev && prev !== next) {
    prev.pane.hidden = true;
    prev.tabButton.removeAttribute("aria-current");
  }
  state.selected = id;
  next.pane.hidden = false;
  next.tabButton.setAttribute("aria-current", "true");
  setUnread(next, 0);
  if (next.stick) scrollToEnd(next);
}

function onTabClick(e) {
  const tab = e.target.closest('[data-sb="chat-tab"]');
  if (!tab) return;
  selectChat(tab.dataset.sessionId);
  state.chats.get(tab.dataset.sessionId)?.input.focus();
}

// The tab's badge, and the page title's total so an agent in another browser tab sees it too.
function setUnread(chat, n) {
  if (chat.unread === n) return;
  state.unreadTotal += n - chat.unread;
  chat.unread = n;
  renderUnread(chat);
  // Writing the title costs far more than a badge: a burst of messages across many chats writes
  // it once. A timer rather than an animation frame, which a background tab never gets.
  if (!state.titleTimer) {
    state.titleTimer = setTimeout(() => {
      state.titleTimer = 0;
      document.title = state.unreadTotal > 0 ? STRINGS.titleUnread(state.unreadTotal) : STRINGS.title;
    }, TITLE_DELAY_MS);
  }
}

function renderUnread(chat) {
  chat.unreadEl.hidden = chat.unread === 0;
  chat.unreadEl.textContent = chat.unread ? String(chat.unread) : "";
  // The badge is a bare number: the tab's name says what it counts.
  if (chat.unread) {
    chat.tabButton.setAttribute("aria-label", STRINGS.tabLabel(customerName(chat), chat.unread));
  } else {
    chat.tabButton.removeAttribute("aria-label");
  }
}

function scrollToEnd(chat) {
  chat.transcript.scrollTop = chat.transcript.scrollHeight;
}

// Reading scrollHeight forces a layout: frames arriving in a burst scroll once, before the next
// paint.
function scrollSoon(chat) {
  if (chat.scrollPending) return;
  chat.scrollPending = true;
  requestAnimationFrame(() => {
    chat.scrollPending = false;
    if (chat.stick && !chat.pane.hidden && chat.pane.isConnected) scrollToEnd(chat);
  });
}

// One transcript entry for a frame of the chat, or null for frames that are not shown.
function renderFrame(chat, frame) {
  const seq = frame.seq != null ? String(frame.seq) : undefined;
  if (frame.type === "message") {
    const from = ["customer", "ai", "agent", "system"].includes(frame.from) ? frame.from : "system";
    let author;
    if (from === "customer") author = customerName(chat);
    else if (from === "agent") author = frame.name || STRINGS.author_agent;
    else author = STRINGS[`author_${from}`];
    const mine = from === "agent" && state.me && frame.name === state.me.name;
    return el(
      "li",
      {
        class: `message from-${from}${mine ? " mine" : ""}`,
        sb: "message",
        "data-from": from,
        "data-seq": seq,
      },
      el(
        "p",
        { class: "meta" },
        el("span", { class: "author", text: author }),
        " ",
        el("time", { datetime: frame.at, text: clock(frame.at) }),
      ),
      el("p", { class: "text", text: frame.text ?? "" }),
    );
  }
  let text;
  switch (frame.type) {
    case "session.queued":
      text = STRINGS.note_queued(frame.reason);
      break;
    case "agent.joined":
      text = STRINGS.note_joined(frame.name);
      break;
    case "agent.left":
      text = STRINGS.note_left(frame.name);
      break;
    case "ticket.created":
      text = STRINGS.note_ticket(frame.ticket_id);
      break;
    case "action.proposed":
      text = STRINGS.note_action(frame.summary ?? "");
      break;
    case "session.closed":
      text = STRINGS.note_closed(STRINGS.closeReason[frame.reason] ?? frame.reason);
      break;
    default:
      return null;
  }
  const kind = frame.type.replace(".", "-");
  return el("li", { class: `note note-${kind}`, sb: "note", "data-seq": seq }, el("p", { text }));
}

// Appends the frames after the last one shown (history on assignment, then live events).
// Returns the entries it added.
function appendFrames(chat, frames, live) {
  const stick = chat.stick;
  const added = [];
  for (const frame of frames) {
    const seq = frame.seq;
    if (typeof seq === "number") {
      if (seq <= chat.lastSeq) continue;
      chat.lastSeq = seq;
      if (seq < chat.firstSeq) chat.firstSeq = seq;
    }
    // The agent's own message: the entry shown when it was sent becomes the real one, moved to
    // its place in the chat's order.
    const own =
      frame.type === "message" && frame.from === "agent" && frame.client_id && state.pending.get(frame.client_id);
    if (own && own.chat === chat) {
      state.pending.delete(frame.client_id);
      own.item.classList.remove("pending");
      own.item.dataset.seq = String(seq);
      own.item.querySelector(".state")?.remove();
      chat.list.append(own.item);
      continue;
    }
    const item = renderFrame(chat, frame);
    if (!item) continue;
    chat.list.append(item);
    added.push({ frame, item });
    if (frame.type === "session.closed") markClosed(chat);
  }
  if (live) {
    for (const { frame } of added) {
      if (frame.type !== "message" || frame.from === "agent") continue;
      if (state.selected === chat.id) {
        const author = frame.from === "customer" ? customerName(chat) : STRINGS[`author_${frame.from}`];
        announce(STRINGS.announceMessage(author, frame.text ?? ""));
      } else if (frame.from === "customer") {
        setUnread(chat, chat.unread + 1);
      }
    }
    // A message ends the customer's typing, whether or not its "stopped" frame arrives.
    if (added.some(({ frame }) => frame.type === "message" && frame.from === "customer")) {
      showTyping(chat, false);
    }
  }
  if (stick && !chat.pane.hidden) scrollSoon(chat);
}

// Older frames go on top in one insertion, and the view stays on the message the agent was reading.
function prependFrames(chat, frames) {
  const fragment = document.createDocumentFragment();
  let first = chat.firstSeq;
  for (const frame of frames) {
    if (typeof frame.seq === "number") {
      if (frame.seq >= chat.firstSeq) continue;
      first = Math.min(first, frame.seq);
    }
    const item = renderFrame(chat, frame);
    if (item) fragment.append(item);
  }
  chat.firstSeq = first;
  const t = chat.transcript;
  const fromBottom = t.scrollHeight - t.scrollTop;
  chat.list.prepend(fragment);
  t.scrollTop = t.scrollHeight - fromBottom;
}

function fetchOlder(chat) {
  if (!state.client || !Number.isFinite(chat.firstSeq)) return;
  if (!state.client.fetchHistory(chat.id, chat.firstSeq)) {
    chat.noteEl.textContent = STRINGS.notConnected;
    return;
  }
  chat.loadOlder.disabled = true;
  chat.loadOlder.textContent = STRINGS.loadingOlder;
}

function onAssigned(f) {
  let chat = state.chats.get(f.session_id);
  const fresh = !chat || chat.ended;
  if (chat && chat.ended) removeChat(chat);
  if (fresh) chat = createChat(f);
  // Assigned again (joined once more after a reload): only what is newer than the page has.
  appendFrames(chat, f.history || [], false);
  if (fresh) {
    chat.hasMore = !!f.has_more;
    chat.loadOlder.hidden = !chat.hasMore;
    announce(STRINGS.newChat(customerName(chat)));
  }
  const claimed = state.wantSelect === f.session_id;
  if (claimed) state.wantSelect = null;
  if (claimed || !state.selected) selectChat(f.session_id);
  renderLoad();
}

function onEvent(f) {
  const chat = state.chats.get(f.session_id);
  if (!chat || !f.event) return;
  appendFrames(chat, [f.event], true);
}

function onHistory(f) {
  const chat = state.chats.get(f.session_id);
  if (!chat) return;
  prependFrames(chat, f.frames || []);
  chat.hasMore = !!f.has_more;
  chat.loadOlder.disabled = false;
  chat.loadOlder.textContent = STRINGS.loadOlder;
  chat.loadOlder.hidden = !chat.hasMore;
}

function onReleased(f) {
  const chat = state.chats.get(f.session_id);
  if (!chat) return;
  if (f.reason === "closed" && !chat.closingByMe) {
    // The customer (or a timeout) ended it: keep it until the agent has read the last words.
    endChat(chat, STRINGS.chatEnded);
    return;
  }
  if (f.reason === "requeued") notice(STRINGS.chatRequeued(customerName(chat)));
  removeChat(chat);
}

function markClosed(chat) {
  chat.input.disabled = true;
  chat.send.disabled = true;
  showTyping(chat, false);
}

function endChat(chat, why) {
  chat.ended = true;
  markClosed(chat);
  chat.composer.hidden = true;
  chat.leave.hidden = true;
  chat.close.hidden = true;
  chat.ticketButton.hidden = true;
  chat.ticketForm.hidden = true;
  chat.dismiss.hidden = false;
  chat.noteEl.textContent = why;
  chat.pane.classList.add("ended");
  chat.tab.classList.add("ended");
  renderLoad();
}

function removeChat(chat) {
  clearTimeout(chat.typingTimer);
  setUnread(chat, 0);
  const tabs = [...state.chats.keys()];
  const at = tabs.indexOf(chat.id);
  state.chats.delete(chat.id);
  for (const [cid, p] of state.pending) if (p.chat === chat) state.pending.delete(cid);
  const hadFocus = chat.pane.contains(document.activeElement) || chat.tab.contains(document.activeElement);
  transcriptResize.unobserve(chat.transcript);
  chat.tab.remove();
  chat.pane.remove();
  if (state.selected === chat.id) {
    state.selected = null;
    const rest = [...state.chats.keys()];
    const next = rest[Math.min(at, rest.length - 1)];
    if (next) selectChat(next);
  }
  // Focus would fall to the page's start with the removed pane: keep it among the chats.
  if (hadFocus) {
    const shown = state.chats.get(state.selected);
    if (shown) shown.tabButton.focus();
    else document.getElementById("chats").focus();
  }
  ui["chats-empty"].hidden = state.chats.size > 0;
  renderLoad();
}

function sendMessage(chat) {
  const text = chat.input.value.trim();
  if (!text || chat.ended || !state.client) return;
  const clientId = state.client.send(chat.id, text);
  chat.input.value = "";
  const item = el(
    "li",
    {
      class: "message from-agent mine pending",
      sb: "message",
      "data-from": "agent",
      "data-client-id": clientId,
    },
    el(
      "p",
      { class: "meta" },
      el("span", { class: "author", text: state.me?.name || STRINGS.author_agent }),
      " ",
      el("time", { text: clock() }),
      " ",
      el("span", { class: "state", text: STRINGS.sending }),
    ),
    el("p", { class: "text", text }),
  );
  chat.list.append(item);
  if (clientId != null) state.pending.set(clientId, { chat, item });
  scrollToEnd(chat);
  chat.stick = true;
}

function onAck(a) {
  const clientId = a.client_id ?? a.clientId;
  const p = state.pending.get(clientId);
  if (!p) return;
  // Taken by the server; the chat's own copy (session.event) settles its place.
  p.item.classList.add("acked");
  p.item.querySelector(".state")?.remove();
  if (a.seq != null) p.item.dataset.seq = String(a.seq);
}

function showTyping(chat, active) {
  clearTimeout(chat.typingTimer);
  chat.typingEl.hidden = !active;
  if (active) chat.typingTimer = setTimeout(() => showTyping(chat, false), TYPING_STALE_MS);
}

function onTyping(f) {
  const chat = state.chats.get(f.session_id);
  if (chat && !chat.ended) showTyping(chat, !!f.active);
}

function onTicket(f) {
  const chat = state.chats.get(f.session_id);
  if (!chat) return;
  toggleTicketForm(chat, false);
  chat.noteEl.textContent = STRINGS.ticketCreatedFlash;
}

function onError(f) {
  if (f.code === "token_expired") {
    tokenEnded(STRINGS.tokenExpired);
    return;
  }
  if (HANDLED_BY_CLIENT.has(f.code)) return;
  const text = STRINGS.errors[f.code] ?? f.message ?? f.code;
  const clientId = f.client_id ?? f.clientId;
  const p = clientId != null && state.pending.get(clientId);
  if (p && RETRIED.has(f.code)) {
    // The client keeps the message and sends it again by itself.
    const s = p.item.querySelector(".state");
    if (s) s.textContent = STRINGS.resending;
    return;
  }
  if (p) {
    state.pending.delete(clientId);
    p.item.classList.replace("pending", "failed");
    const s = p.item.querySelector(".state");
    if (s) s.textContent = STRINGS.notSent(text);
    return;
  }
  if (f.session_id) {
    resetClaim(f.session_id);
    if (state.wantSelect === f.session_id) state.wantSelect = null;
    const chat = state.chats.get(f.session_id);
    if (chat) {
      chat.noteEl.textContent = text;
      const submit = chat.ticketForm.querySelector('button[type="submit"]');
      if (submit) submit.disabled = false;
      return;
    }
  }
  notice(text);
}

boot();
