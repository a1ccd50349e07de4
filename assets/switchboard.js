// Switchboard's browser client for the `switchboard.v1` chat protocol (docs/protocol.md), the
// module the customer widget and the agent console build on (API in assets/API.md).
//
// It owns one WebSocket at a time and keeps it up: it starts or resumes the session, reconnects
// with jittered exponential backoff according to the close code, and persists what a page reload
// must not lose (session id, resume token, highest seq, unacknowledged messages) in a Storage.
// Every numbered frame is emitted once, in seq order, however often the connection drops: the
// server replays everything after the `last_seq` we resume from, and anything at or below the
// highest seq already seen is a replay we have emitted before.
//
// No runtime dependencies: it runs in browsers and in Node 20 with an injected WebSocket.

export const PROTOCOL = "switchboard.v1";

const WS_OPEN = 1;

// Customer frames that belong to the session's history (they carry a `seq`), and the event each
// one is emitted as.
const CHAT_NUMBERED = {
  message: "message",
  "action.proposed": "action",
  "ticket.created": "ticket",
  "session.queued": "queued",
  "agent.joined": "agent_joined",
  "agent.left": "agent_left",
  "session.closed": "closed",
};

// An agent's own numbered stream (kept by the server for `agent.resume`).
const AGENT_NUMBERED = {
  "session.assigned": "assigned",
  "session.event": "event",
  "session.released": "released",
};

// Errors answering a `message.send` that a later identical send can cure: the message stays in the
// outbox and is sent again after a pause. Any other error for a client_id is final for that message.
const RETRYABLE = new Set(["rate_limited", "server_busy"]);

// What a close code asks of the client (the table in docs/protocol.md, "Close codes").
//   done: the session ended; stop: someone else holds the session (or the token must be renewed);
//   start: the session is gone, start a new one; resume: reconnect and resume with backoff.
function customerPolicy(code, { ended, sessionLive, reseq, unauthorized }) {
  if (ended || code === 1000) return "done";
  // A refused token would be refused again: wait for the page to give a new one (connect()).
  if (code === 4009 || (code === 1008 && unauthorized)) return "stop";
  // `invalid_seq` is followed by 4003 but the session is untouched: resume from a seq it has.
  if (code === 4003 && reseq != null) return "resume";
  if (code === 4003 || code === 4010) return "start";
  // 1008 before the session began means a bad token or a silent first frame: start over. After
  // it, it means the frame rate was exceeded, and the session survives: resume, slower.
  if (code === 1008) return sessionLive ? "resume" : "start";
  return "resume"; // 1001, 1006, 1011, 1012 (a restart), 1013 (with backoff), 4000, 4008, and anything unexpected
}

function agentPolicy(code) {
  if (code === 1000 || code === 4009 || code === 4011) return "stop";
  if (code === 4003 || code === 4010) return "start";
  return "resume";
}

// Retry-After is seconds or an HTTP date; anything else is ignored.
export function parseRetryAfter(value, now = Date.now()) {
  if (value == null) return 0;
  const text = String(Array.isArray(value) ? value[0] : value).trim();
  if (/^\d+$/.test(text)) return Number(text) * 1000;
  const at = Date.parse(text);
  return Number.isNaN(at) ? 0 : Math.max(0, at - now);
}

function defaultStorage() {
  // Reading sessionStorage throws in sandboxed frames and with storage disabled: memory only then.
  try {
    return globalThis.sessionStorage ?? null;
  } catch {
    return null;
  }
}

class Emitter {
  #handlers = new Map();

  on(event, handler) {
    if (!this.#handlers.has(event)) this.#handlers.set(event, new Set());
    this.#handlers.get(event).add(handler);
    return this;
  }

  off(event, handler) {
    this.#handlers.get(event)?.delete(handler);
    return this;
  }

  emit(event, value) {
    for (const handler of [...(this.#handlers.get(event) ?? [])]) {
      // One faulty handler must not break the connection's bookkeeping or other handlers.
      try {
        handler(value);
      } catch (err) {
        queueMicrotask(() => {
          throw err;
        });
      }
    }
  }
}

// The connection machinery shared by customers and agents: socket lifecycle, backoff, app pings,
// the persisted outbox. Subclasses say what to send first, how to read frames and what close
// codes mean.
class Link extends Emitter {
  constructor(opts, storageKey) {
    super();
    if (!opts || !opts.url) throw new TypeError("`url` is required");
    this.url = opts.url;
    this.token = opts.token;
    this.storage = opts.storage === undefined ? defaultStorage() : opts.storage;
    this.storageKey = opts.storageKey ?? storageKey;
    this.WebSocket = opts.WebSocket ?? globalThis.WebSocket;
    this.backoff = { baseMs: 500, maxMs: 30000, ...opts.backoff };
    this.pingIntervalMs = opts.pingIntervalMs ?? 20000;
    this.typingDebounceMs = opts.typingDebounceMs ?? 1500;
    this.random = opts.random ?? Math.random;
    this.now = opts.now ?? Date.now;
    // Wrapped: window.setTimeout throws "Illegal invocation" when called as a method of another object.
    const st = opts.setTimeout ?? ((fn, ms) => setTimeout(fn, ms));
    const ct = opts.clearTimeout ?? ((id) => clearTimeout(id));
    this._setTimeout = st;
    this._clearTimeout = ct;

    this.state = "idle";
    this.attempt = 0;
    this.lastSeq = 0;
    this.pending = this._load("outbox") ?? [];
    this._ws = null;
    this._wanted = false;
    this._reconnectTimer = null;
    this._pingTimer = null;
    this._awaitingPong = false;
    this._retryAfterMs = 0;
    this._retryTimers = new Map();
    this._counter = 0;
  }

  // --- storage --------------------------------------------------------------------------------

  _load(name) {
    if (!this.storage) return null;
    try {
      const raw = this.storage.getItem(`${this.storageKey}.${name}`);
      return raw == null ? null : JSON.parse(raw);
    } catch {
      return null; // unreadable or corrupt: start afresh rather than fail
    }
  }

  _save(name, value) {
    if (!this.storage) return;
    try {
      if (value == null) this.storage.removeItem(`${this.storageKey}.${name}`);
      else this.storage.setItem(`${this.storageKey}.${name}`, JSON.stringify(value));
    } catch {
      // Quota exceeded or storage disabled: the live connection still works, a reload loses more.
    }
  }

  // --- connection -----------------------------------------------------------------------------

  _connect() {
    if (this._wanted && this.state !== "idle" && this.state !== "closed") return;
    this._wanted = true;
    this.attempt = 0;
    this._open();
  }

  _socketUrl() {
    return this.url;
  }

  _open() {
    this._clearReconnect();
    this._sessionLive = false;
    this._retryAfterMs = 0;
    this._setState(this.attempt > 0 ? "reconnecting" : "connecting");
    let ws;
    try {
      ws = new this.WebSocket(this._socketUrl(), PROTOCOL);
    } catch {
      this._lost(1006, 0);
      return;
    }
    this._ws = ws;
    ws.onopen = () => {
      if (ws === this._ws) this._sendFrame(this._hello());
    };
    ws.onmessage = (ev) => {
      if (ws !== this._ws) return;
      this._awaitingPong = false;
      let frame;
      try {
        frame = JSON.parse(ev.data);
      } catch {
        return;
      }
      if (!frame || typeof frame.type !== "string") return;
      this.emit("frame", frame);
      this._onFrame(frame);
    };
    ws.onerror = () => {}; // a close event always follows
    ws.onclose = (ev) => {
      if (ws !== this._ws) return;
      this._ws = null;
      const retryAfter = ev?.retryAfterMs ?? ws.retryAfterMs ?? this._retryAfterMs;
      this._lost(ev?.code ?? 1006, retryAfter || 0);
    };
    // A browser hides a refused handshake's HTTP status and headers (the socket just closes with
    // 1006), so a 503's Retry-After can only be honoured where the implementation exposes it:
    // the `ws` package's `unexpected-response` event, or a `retryAfterMs` set on the socket or
    // its close event by a wrapper. Elsewhere the backoff alone spaces the retries.
    if (typeof ws.on === "function") {
      ws.on("unexpected-response", (_req, res) => {
        this._retryAfterMs = parseRetryAfter(res?.headers?.["retry-after"], this.now());
        res?.resume?.();
        ws.terminate?.(); // with a listener attached `ws` leaves the aborting to us
      });
    }
  }

  // The session (or agent) is live on this connection: reset the backoff, start pinging, flush.
  _ready() {
    this._sessionLive = true;
    this.attempt = 0;
    this._setState("open");
    this._startPing();
    for (const item of this.pending) this._sendFrame(this._messageFrame(item));
  }

  _lost(code, retryAfterMs) {
    this._stopPing();
    this._stopTyping(false);
    if (!this._wanted) {
      if (this.state !== "closed") this._setState("idle", { code });
      return;
    }
    const policy = this._policy(code);
    if (policy === "done" || policy === "stop") {
      this._wanted = false;
      if (policy === "done") this._forget(true);
      this._setState("closed", { code });
      return;
    }
    if (policy === "start") this._forget(false);
    const cap = Math.min(this.backoff.maxMs, this.backoff.baseMs * 2 ** this.attempt);
    // Full jitter spreads a crowd of clients dropped at once (a restart) over the whole window;
    // Retry-After is a floor that the jitter is added to, so they do not return together either.
    const delay = Math.floor(retryAfterMs + this.random() * cap);
    this.attempt += 1;
    this._setState("reconnecting", { retryInMs: delay, code });
    this._reconnectTimer = this._setTimeout(() => {
      this._reconnectTimer = null;
      if (this._wanted) this._open();
    }, delay);
  }

  _clearReconnect() {
    if (this._reconnectTimer != null) this._clearTimeout(this._reconnectTimer);
    this._reconnectTimer = null;
  }

  _setState(state, extra = {}) {
    const changed = state !== this.state;
    this.state = state;
    // "reconnecting" is reported again for every scheduled retry, so a UI can show the countdown.
    if (changed || extra.retryInMs != null) {
      this.emit("status", { state, attempt: this.attempt, retryInMs: extra.retryInMs ?? 0, code: extra.code ?? null });
    }
  }

  _sendFrame(frame) {
    const ws = this._ws;
    if (!ws || ws.readyState !== WS_OPEN) return false;
    try {
      ws.send(JSON.stringify(frame));
      return true;
    } catch {
      return false;
    }
  }

  // Frames that only make sense on a live session are dropped when there is none: they are
  // actions of the moment (typing, confirming, a ticket request), not messages to keep.
  _sendLive(frame) {
    return this.state === "open" && this._sendFrame(frame);
  }

  _drop() {
    const ws = this._ws;
    this._ws = null;
    if (ws) {
      ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
      try {
        ws.close(1000);
      } catch {
        // already closing
      }
    }
  }

  disconnect() {
    this._wanted = false;
    this._clearReconnect();
    this._stopPing();
    this._stopTyping(true);
    this._drop();
    this._setState("idle");
  }

  // --- app pings ------------------------------------------------------------------------------

  // Browsers answer the server's WebSocket pings but cannot see them, and some proxies drop
  // sockets that carry no data: an app ping keeps the path busy, and a pong that never comes
  // (nothing at all received for a whole interval) means the connection is dead though not closed.
  _startPing() {
    this._stopPing();
    if (!(this.pingIntervalMs > 0)) return;
    this._awaitingPong = false;
    const tick = () => {
      this._pingTimer = null;
      if (this.state !== "open" || !this._ws) return;
      if (this._awaitingPong) {
        this._drop();
        this._lost(4000, 0);
        return;
      }
      this._awaitingPong = this._sendFrame({ type: "ping" });
      this._pingTimer = this._setTimeout(tick, this.pingIntervalMs);
    };
    this._pingTimer = this._setTimeout(tick, this.pingIntervalMs);
  }

  _stopPing() {
    if (this._pingTimer != null) this._clearTimeout(this._pingTimer);
    this._pingTimer = null;
  }

  // --- outbox ---------------------------------------------------------------------------------

  _newClientId(prefix) {
    this._counter += 1;
    const rand = Math.floor(this.random() * 0x100000000).toString(36);
    return `${prefix}-${this.now().toString(36)}-${this._counter.toString(36)}-${rand}`;
  }

  _enqueue(item) {
    this.pending = [...this.pending, item];
    this._save("outbox", this.pending);
    this.emit("pending", this.pending);
    if (this.state === "open") this._sendFrame(this._messageFrame(item));
  }

  _acked(clientId) {
    const item = this.pending.find((p) => p.clientId === clientId);
    if (!item) return null;
    this._removePending(clientId);
    return item;
  }

  _removePending(clientId) {
    const timer = this._retryTimers.get(clientId);
    if (timer != null) this._clearTimeout(timer);
    this._retryTimers.delete(clientId);
    this.pending = this.pending.filter((p) => p.clientId !== clientId);
    this._save("outbox", this.pending);
    this.emit("pending", this.pending);
  }

  // An error naming a message: try again later (rate, capacity) or give the message up.
  _messageError(frame) {
    const item = this.pending.find((p) => p.clientId === frame.client_id);
    if (!item) return;
    if (RETRYABLE.has(frame.code)) {
      if (this._retryTimers.has(item.clientId)) return;
      const delay = Math.floor(1000 + this.random() * 2000);
      this._retryTimers.set(
        item.clientId,
        this._setTimeout(() => {
          this._retryTimers.delete(item.clientId);
          if (this.state === "open" && this.pending.includes(item)) this._sendFrame(this._messageFrame(item));
        }, delay),
      );
      return;
    }
    this._removePending(item.clientId);
    this.emit("failed", { ...item, code: frame.code, message: frame.message });
  }

  // --- typing ---------------------------------------------------------------------------------

  // One debounce per conversation key: typing true on the first keystroke, false after a quiet
  // spell, so a keystroke costs a frame only when the state changes.
  _typing(key, frameFor) {
    if (this.state !== "open") return;
    this._typingState ??= new Map();
    let entry = this._typingState.get(key);
    if (!entry) {
      entry = { timer: null, frameFor };
      this._typingState.set(key, entry);
      this._sendFrame(frameFor(true));
    }
    if (entry.timer != null) this._clearTimeout(entry.timer);
    entry.timer = this._setTimeout(() => this._typingDone(key, true), this.typingDebounceMs);
  }

  _typingDone(key, tell) {
    const entry = this._typingState?.get(key);
    if (!entry) return;
    if (entry.timer != null) this._clearTimeout(entry.timer);
    this._typingState.delete(key);
    if (tell) this._sendLive(entry.frameFor(false));
  }

  _stopTyping(tell) {
    for (const key of [...(this._typingState?.keys() ?? [])]) this._typingDone(key, tell);
  }

  // Numbered frames: emitted once, in order. Returns false for a replay already emitted.
  _advance(seq) {
    if (typeof seq !== "number") return true;
    if (seq <= this.lastSeq) return false;
    this.lastSeq = seq;
    this._persistSeq();
    return true;
  }
}

// A customer's chat session on /ws/chat.
export class SwitchboardClient extends Link {
  constructor(opts) {
    super(opts, "switchboard");
    const saved = this._load("session");
    this.sessionId = saved?.sessionId ?? null;
    this.resumeToken = saved?.resumeToken ?? null;
    this.lastSeq = saved?.lastSeq ?? 0;
    this._ended = false;
    this._reseq = null;
  }

  connect() {
    this._ended = false;
    this._unauthorized = false;
    this._connect();
  }

  send(text) {
    const clientId = this._newClientId("m");
    this._typingDone("chat", true);
    this._enqueue({ clientId, text: String(text), at: this.now() });
    return clientId;
  }

  typing() {
    this._typing("chat", (active) => ({ type: "typing", active }));
  }

  confirm(actionId, accept) {
    return this._sendLive({ type: "action.confirm", action_id: actionId, accept: Boolean(accept) });
  }

  requestHuman(reason) {
    const frame = { type: "handoff.request" };
    if (reason) frame.reason = String(reason).slice(0, 500);
    return this._sendLive(frame);
  }

  createTicket(subject, description) {
    const frame = { type: "ticket.create", subject: String(subject).slice(0, 200) };
    if (description) frame.description = String(description);
    return this._sendLive(frame);
  }

  close() {
    const wasOpen = this.state === "open";
    this._sendLive({ type: "session.close" });
    this._wanted = false;
    this._clearReconnect();
    this._stopPing();
    this._stopTyping(false);
    this._forget(true);
    // The server answers session.closed and closes with 1000; an open socket is left to it so the
    // session.close frame is not cut off, but nothing it says now is reported.
    if (wasOpen) this._ws = null;
    else this._drop();
    this._setState("closed");
  }

  _hello() {
    if (this.sessionId) {
      return { type: "session.resume", session_id: this.sessionId, resume_token: this.resumeToken, last_seq: this.lastSeq };
    }
    const frame = { type: "session.start" };
    if (this.token) frame.token = this.token;
    return frame;
  }

  _messageFrame(item) {
    return { type: "message.send", client_id: item.clientId, text: item.text };
  }

  _policy(code) {
    const reseq = this._reseq;
    return customerPolicy(code, {
      ended: this._ended,
      sessionLive: this._sessionLive,
      reseq,
      unauthorized: this._unauthorized,
    });
  }

  _persistSeq() {
    this._save("session", { sessionId: this.sessionId, resumeToken: this.resumeToken, lastSeq: this.lastSeq });
  }

  // The session is gone (ended: the outbox goes with it) or refused (its unsent messages are sent
  // in the next one).
  _forget(ended) {
    this.sessionId = null;
    this.resumeToken = null;
    this.lastSeq = 0;
    this._reseq = null;
    this._save("session", null);
    if (ended && this.pending.length) {
      for (const timer of this._retryTimers.values()) this._clearTimeout(timer);
      this._retryTimers.clear();
      this.pending = [];
      this._save("outbox", null);
      this.emit("pending", this.pending);
    }
  }

  _onFrame(f) {
    switch (f.type) {
      case "session.started":
        this.sessionId = f.session_id;
        this.resumeToken = f.resume_token;
        this.lastSeq = f.seq ?? 0;
        this._persistSeq();
        this.emit("started", f);
        if (typeof f.agents_online === "boolean") this.emit("presence", { agents_online: f.agents_online });
        this._ready();
        return;
      case "session.resumed":
        if (typeof f.seq === "number" && f.seq < this.lastSeq) {
          // We hold a seq the server never sent (it answers invalid_seq and closes with 4003);
          // its newest seq is one we can resume from.
          this._reseq = f.seq;
          return;
        }
        this._reseq = null;
        this.emit("resumed", f);
        this._ready();
        return;
      case "message.ack": {
        const item = this._acked(f.client_id);
        this._advance(f.seq);
        if (item) this.emit("ack", { clientId: item.clientId, seq: f.seq, text: item.text });
        return;
      }
      case "typing":
        this.emit("typing", { from: f.from, active: Boolean(f.active) });
        return;
      case "queue.position":
        this.emit("position", f);
        return;
      case "presence":
        this.emit("presence", { agents_online: Boolean(f.agents_online) });
        return;
      case "error":
        if (f.code === "invalid_seq" && this._reseq != null) return;
        if (f.code === "unauthorized") this._unauthorized = true;
        if (f.client_id) this._messageError(f);
        this.emit("error", f);
        return;
      case "pong":
        return;
      default: {
        const event = CHAT_NUMBERED[f.type];
        if (!event) return;
        if (!this._advance(f.seq)) return;
        if (f.type === "message" && f.from === "customer" && f.client_id) {
          // Our own message, replayed on a resume because its ack was lost with the connection.
          const item = this._acked(f.client_id);
          if (item) this.emit("ack", { clientId: item.clientId, seq: f.seq, text: item.text });
        }
        if (f.type === "session.closed") {
          this._ended = true; // whatever close code follows, do not come back
          this._forget(true);
        }
        this.emit(event, f);
      }
    }
  }

  _lost(code, retryAfterMs) {
    if (code === 4003 && this._reseq != null) {
      // invalid_seq: resume from the newest seq the server named; the session is untouched.
      this.lastSeq = this._reseq;
      this._persistSeq();
    }
    super._lost(code, retryAfterMs);
    this._reseq = null;
  }
}

// A human agent on /ws/agent: one connection carries every chat the agent holds.
export class AgentClient extends Link {
  constructor(opts) {
    super(opts, "switchboard-agent");
    const saved = this._load("agent");
    this.lastSeq = saved?.lastSeq ?? 0;
    this._started = Boolean(saved?.started);
    this._startOpts = {};
  }

  connect(opts) {
    if (opts !== undefined) this._startOpts = opts;
    this._connect();
  }

  // A fresh token, for the next handshake and (when connected) the current connection.
  setToken(token) {
    this.token = token;
    return this._sendLive({ type: "auth.refresh", token });
  }

  setPresence(opts = {}) {
    return this._sendLive({ type: "presence.set", ...defined(opts) });
  }

  join(sessionId) {
    return this._sendLive({ type: "session.join", session_id: sessionId });
  }

  leave(sessionId) {
    return this._sendLive({ type: "session.leave", session_id: sessionId });
  }

  closeChat(sessionId) {
    return this._sendLive({ type: "session.close", session_id: sessionId });
  }

  send(sessionId, text) {
    const clientId = this._newClientId("a");
    this._typingDone(sessionId, true);
    this._enqueue({ sessionId, clientId, text: String(text), at: this.now() });
    return clientId;
  }

  typing(sessionId) {
    this._typing(sessionId, (active) => ({ type: "typing", session_id: sessionId, active }));
  }

  createTicket(sessionId, subject, description, priority) {
    return this._sendLive({ type: "ticket.create", session_id: sessionId, subject, ...defined({ description, priority }) });
  }

  fetchHistory(sessionId, beforeSeq) {
    return this._sendLive({ type: "history.fetch", session_id: sessionId, before_seq: beforeSeq });
  }

  // Browsers cannot set headers on a WebSocket handshake; the server takes the token as a query
  // parameter instead.
  _socketUrl() {
    if (!this.token) return this.url;
    const sep = this.url.includes("?") ? "&" : "?";
    return `${this.url}${sep}access_token=${encodeURIComponent(this.token)}`;
  }

  _hello() {
    if (this._started) return { type: "agent.resume", last_seq: this.lastSeq };
    return { type: "agent.start", ...defined(this._startOpts) };
  }

  _messageFrame(item) {
    return { type: "message.send", session_id: item.sessionId, client_id: item.clientId, text: item.text };
  }

  _policy(code) {
    return agentPolicy(code);
  }

  _persistSeq() {
    this._save("agent", { started: this._started, lastSeq: this.lastSeq });
  }

  _forget() {
    this._started = false;
    this.lastSeq = 0;
    this._save("agent", null);
  }

  _onFrame(f) {
    switch (f.type) {
      case "agent.ready":
        if (!this._started) this.lastSeq = f.seq ?? 0;
        this._started = true;
        this._persistSeq();
        this.emit("ready", f);
        this._ready();
        return;
      case "message.ack": {
        const item = this._acked(f.client_id);
        this.emit("ack", { sessionId: f.session_id, clientId: f.client_id, seq: f.seq, text: item?.text });
        return;
      }
      case "queue.updated":
        return this.emit("queue", f);
      case "agent.presence":
        return this.emit("presence", f);
      case "agent.roster":
        return this.emit("roster", f);
      case "session.typing":
        return this.emit("typing", f);
      case "ticket.created":
        return this.emit("ticket", f);
      case "session.history":
        return this.emit("history", f);
      case "error":
        if (f.client_id) this._messageError(f);
        return this.emit("error", f);
      case "pong":
        return;
      default: {
        const event = AGENT_NUMBERED[f.type];
        if (event && this._advance(f.seq)) this.emit(event, f);
      }
    }
  }
}

function defined(obj) {
  return Object.fromEntries(Object.entries(obj).filter(([, v]) => v !== undefined));
}
