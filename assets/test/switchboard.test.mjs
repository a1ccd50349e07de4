// Unit tests of switchboard.js against an in-memory WebSocket and a hand-driven clock.
// Run: node --test assets/test/

import { test } from "node:test";
import assert from "node:assert/strict";
import { SwitchboardClient, AgentClient, PROTOCOL, parseRetryAfter } from "../switchboard.js";

// A WebSocket the test plays the server of: it records what the client sends and lets the test
// open, answer and close it.
function fakeSockets() {
  const sockets = [];
  class FakeWebSocket {
    constructor(url, protocol) {
      this.url = url;
      this.protocol = protocol;
      this.readyState = 0;
      this.sent = [];
      sockets.push(this);
    }
    send(data) {
      if (this.readyState !== 1) throw new Error("not open");
      this.sent.push(JSON.parse(data));
    }
    close(code = 1000) {
      this.closedByClient = code;
      this.readyState = 3;
    }
    // --- the server's side ---
    open() {
      this.readyState = 1;
      this.onopen?.({});
    }
    deliver(frame) {
      this.onmessage?.({ data: JSON.stringify(frame) });
    }
    drop(code = 1006, extra = {}) {
      this.readyState = 3;
      this.onclose?.({ code, ...extra });
    }
    types() {
      return this.sent.map((f) => f.type);
    }
  }
  return { FakeWebSocket, sockets, last: () => sockets[sockets.length - 1] };
}

// Timers that fire only when the test advances the clock.
function fakeClock() {
  let now = 1_700_000_000_000;
  let nextId = 1;
  const timers = new Map();
  return {
    now: () => now,
    setTimeout: (fn, ms) => {
      const id = nextId++;
      timers.set(id, { fn, at: now + ms });
      return id;
    },
    clearTimeout: (id) => timers.delete(id),
    advance(ms) {
      const end = now + ms;
      for (;;) {
        const due = [...timers.entries()].filter(([, t]) => t.at <= end).sort((a, b) => a[1].at - b[1].at)[0];
        if (!due) break;
        timers.delete(due[0]);
        now = due[1].at;
        due[1].fn();
      }
      now = end;
    },
    pending: () => [...timers.values()].map((t) => t.at - now),
  };
}

function memoryStorage() {
  const map = new Map();
  return {
    getItem: (k) => (map.has(k) ? map.get(k) : null),
    setItem: (k, v) => map.set(k, String(v)),
    removeItem: (k) => map.delete(k),
    map,
  };
}

function setup(opts = {}) {
  const ws = fakeSockets();
  const clock = opts.clock ?? fakeClock();
  const storage = opts.storage ?? memoryStorage();
  const Client = opts.Client ?? SwitchboardClient;
  const client = new Client({
    url: opts.url ?? "ws://chat.test/ws/chat",
    WebSocket: ws.FakeWebSocket,
    storage,
    random: opts.random ?? (() => 0.5),
    now: clock.now,
    setTimeout: clock.setTimeout,
    clearTimeout: clock.clearTimeout,
    backoff: { baseMs: 100, maxMs: 1000 },
    pingIntervalMs: opts.pingIntervalMs ?? 0,
    typingDebounceMs: 1000,
    ...opts.extra,
  });
  const events = [];
  for (const name of ["status", "started", "resumed", "message", "ack", "pending", "typing", "action", "ticket", "queued", "position", "agent_joined", "agent_left", "presence", "roster", "closed", "error", "failed", "ready", "assigned", "event", "released", "queue"]) {
    client.on(name, (value) => events.push([name, value]));
  }
  const of = (name) => events.filter(([n]) => n === name).map(([, v]) => v);
  return { ...ws, clock, storage, client, events, of };
}

// Connects and starts a session "S" (token "T") on the first socket.
function started(t, seq = 0) {
  t.client.connect();
  const s = t.last();
  s.open();
  s.deliver({ type: "session.started", session_id: "S", resume_token: "T", seq });
  return s;
}

test("connect offers the subprotocol and starts a session, with the token when given", () => {
  const t = setup({ extra: { token: "jwt" } });
  t.client.connect();
  assert.equal(t.client.state, "connecting");
  const s = t.last();
  assert.equal(s.protocol, PROTOCOL);
  s.open();
  assert.deepEqual(s.sent, [{ type: "session.start", token: "jwt" }]);
  s.deliver({ type: "session.started", session_id: "S", resume_token: "T", seq: 0, agents_online: true });
  assert.equal(t.client.state, "open");
  assert.equal(t.client.sessionId, "S");
  assert.deepEqual(t.of("presence"), [{ agents_online: true }]);
});

test("after a drop the client resumes with the highest seq seen", () => {
  const t = setup();
  const s = started(t);
  s.deliver({ type: "message", seq: 1, from: "ai", text: "Hello" });
  s.deliver({ type: "message", seq: 2, from: "ai", text: "How can I help?" });
  s.drop(1006);
  assert.equal(t.client.state, "reconnecting");
  t.clock.advance(1000);
  const s2 = t.last();
  assert.notEqual(s2, s);
  s2.open();
  assert.deepEqual(s2.sent, [{ type: "session.resume", session_id: "S", resume_token: "T", last_seq: 2 }]);
  s2.deliver({ type: "session.resumed", session_id: "S", seq: 2 });
  assert.equal(t.client.state, "open");
  assert.equal(t.of("resumed").length, 1);
});

test("frames with a seq at or below the highest seen are not emitted again", () => {
  const t = setup();
  const s = started(t);
  s.deliver({ type: "message", seq: 1, from: "ai", text: "one" });
  s.deliver({ type: "action.proposed", seq: 2, action_id: "A", action: { kind: "handoff" }, summary: "?" });
  s.drop(1001);
  t.clock.advance(1000);
  const s2 = t.last();
  s2.open();
  s2.deliver({ type: "session.resumed", session_id: "S", seq: 3 });
  // A replay overlapping what was seen: only seq 3 is new.
  s2.deliver({ type: "message", seq: 1, from: "ai", text: "one" });
  s2.deliver({ type: "action.proposed", seq: 2, action_id: "A", action: { kind: "handoff" }, summary: "?" });
  s2.deliver({ type: "ticket.created", seq: 3, ticket_id: "K" });
  s2.deliver({ type: "ticket.created", seq: 3, ticket_id: "K" });
  assert.deepEqual(t.of("message").map((m) => m.seq), [1]);
  assert.equal(t.of("action").length, 1);
  assert.deepEqual(t.of("ticket").map((f) => f.ticket_id), ["K"]);
  assert.equal(t.client.lastSeq, 3);
});

test("a message sent offline waits in the outbox and is sent once the session starts", () => {
  const t = setup();
  const id = t.client.send("hello");
  assert.deepEqual(t.client.pending.map((p) => p.clientId), [id]);
  const s = started(t);
  assert.deepEqual(s.sent.slice(1), [{ type: "message.send", client_id: id, text: "hello" }]);
  s.deliver({ type: "message.ack", client_id: id, seq: 1 });
  assert.deepEqual(t.client.pending, []);
  assert.deepEqual(t.of("ack"), [{ clientId: id, seq: 1, text: "hello" }]);
  assert.equal(t.client.lastSeq, 1);
});

test("an unacknowledged message is resent with the same client_id after a reconnect, and cleared on ack", () => {
  const t = setup();
  const s = started(t);
  const id = t.client.send("my invoice");
  assert.equal(s.sent.at(-1).client_id, id);
  s.drop(1006);
  assert.equal(t.client.pending.length, 1);
  t.clock.advance(1000);
  const s2 = t.last();
  s2.open();
  s2.deliver({ type: "session.resumed", session_id: "S", seq: 0 });
  assert.deepEqual(s2.sent.at(-1), { type: "message.send", client_id: id, text: "my invoice" });
  s2.deliver({ type: "message.ack", client_id: id, seq: 1 });
  assert.deepEqual(t.client.pending, []);
  assert.equal(t.storage.getItem("switchboard.outbox"), "[]");
  // Another drop: nothing left to resend.
  s2.drop(1006);
  t.clock.advance(1000);
  t.last().open();
  t.last().deliver({ type: "session.resumed", session_id: "S", seq: 1 });
  assert.deepEqual(t.last().types(), ["session.resume"]);
});

test("an own message replayed on resume acknowledges it and is emitted once", () => {
  const t = setup();
  const s = started(t);
  const id = t.client.send("lost ack");
  s.drop(1006);
  t.clock.advance(1000);
  const s2 = t.last();
  s2.open();
  s2.deliver({ type: "session.resumed", session_id: "S", seq: 1 });
  s2.deliver({ type: "message", seq: 1, from: "customer", client_id: id, text: "lost ack" });
  assert.deepEqual(t.client.pending, []);
  assert.deepEqual(t.of("ack"), [{ clientId: id, seq: 1, text: "lost ack" }]);
  // The resent copy's ack (the server applies a client_id once) changes nothing.
  s2.deliver({ type: "message.ack", client_id: id, seq: 1 });
  assert.equal(t.of("ack").length, 1);
  assert.equal(t.of("message").length, 1);
});

test("storage survives a new client instance (a page reload): resume with the stored seq and outbox", () => {
  const storage = memoryStorage();
  const t = setup({ storage });
  const s = started(t);
  s.deliver({ type: "message", seq: 1, from: "ai", text: "Hi" });
  const id = t.client.send("unsent");
  const t2 = setup({ storage });
  assert.equal(t2.client.sessionId, "S");
  assert.equal(t2.client.lastSeq, 1);
  assert.deepEqual(t2.client.pending.map((p) => p.clientId), [id]);
  t2.client.connect();
  const s2 = t2.last();
  s2.open();
  assert.deepEqual(s2.sent, [{ type: "session.resume", session_id: "S", resume_token: "T", last_seq: 1 }]);
  s2.deliver({ type: "session.resumed", session_id: "S", seq: 2 });
  assert.deepEqual(s2.sent.at(-1), { type: "message.send", client_id: id, text: "unsent" });
});

test("4003 and 4010 forget the session and start a new one, sending the outbox in it", () => {
  for (const code of [4003, 4010]) {
    const t = setup();
    const s = started(t);
    s.deliver({ type: "message", seq: 1, from: "ai", text: "Hi" });
    s.drop(1006);
    const id = t.client.send("still here");
    t.clock.advance(1000);
    t.last().open();
    assert.equal(t.last().sent[0].type, "session.resume");
    t.last().deliver({ type: "error", code: "resume_refused", message: "…" });
    t.last().drop(code);
    assert.equal(t.client.sessionId, null, `code ${code}`);
    t.clock.advance(1000);
    const s3 = t.last();
    s3.open();
    assert.deepEqual(s3.sent, [{ type: "session.start" }]);
    s3.deliver({ type: "session.started", session_id: "S2", resume_token: "T2", seq: 0 });
    assert.deepEqual(s3.sent.at(-1), { type: "message.send", client_id: id, text: "still here" });
    assert.equal(t.client.lastSeq, 0);
  }
});

test("1008 before the session began starts again; after it (the frame rate) resumes", () => {
  const t = setup();
  t.client.connect();
  t.last().open();
  t.last().drop(1008);
  t.clock.advance(1000);
  t.last().open();
  assert.deepEqual(t.last().sent, [{ type: "session.start" }]);
  t.last().deliver({ type: "session.started", session_id: "S", resume_token: "T", seq: 0 });
  t.last().drop(1008);
  t.clock.advance(1000);
  t.last().open();
  assert.equal(t.last().sent[0].type, "session.resume");
});

test("a refused token (unauthorized, 1008) is not retried until connect() is called again", () => {
  const t = setup({ extra: { token: "bad" } });
  t.client.connect();
  t.last().open();
  t.last().deliver({ type: "error", code: "unauthorized", message: "bad token" });
  t.last().drop(1008);
  assert.equal(t.client.state, "closed");
  assert.deepEqual(t.clock.pending(), []);
  t.client.token = "good";
  t.client.connect();
  t.last().open();
  assert.deepEqual(t.last().sent, [{ type: "session.start", token: "good" }]);
});

test("4009 (the session moved to another connection) stays quiet and keeps the session", () => {
  const t = setup();
  const s = started(t);
  s.drop(4009);
  assert.equal(t.client.state, "closed");
  assert.equal(t.sockets.length, 1);
  assert.deepEqual(t.clock.pending(), []);
  assert.equal(t.client.sessionId, "S");
  assert.deepEqual(t.of("status").at(-1), { state: "closed", attempt: 0, retryInMs: 0, code: 4009 });
});

test("session.closed then 1000 ends it: no reconnect, storage and outbox cleared", () => {
  const t = setup();
  const s = started(t);
  s.deliver({ type: "session.closed", seq: 1, reason: "agent_closed" });
  assert.deepEqual(t.of("closed"), [{ type: "session.closed", seq: 1, reason: "agent_closed" }]);
  s.drop(1000);
  assert.equal(t.client.state, "closed");
  assert.equal(t.storage.getItem("switchboard.session"), null);
  assert.deepEqual(t.clock.pending(), []);
});

test("1013 (at capacity) retries later with backoff; 1001, 1011, 4000 and 4008 resume", () => {
  const t = setup();
  t.client.connect();
  t.last().open();
  t.last().deliver({ type: "error", code: "server_busy", message: "…" });
  t.last().drop(1013);
  assert.equal(t.client.state, "reconnecting");
  assert.equal(t.sockets.length, 1);
  t.clock.advance(1000);
  t.last().open();
  assert.deepEqual(t.last().sent, [{ type: "session.start" }]);
  t.last().deliver({ type: "session.started", session_id: "S", resume_token: "T", seq: 0 });
  for (const code of [1001, 1011, 4000, 4008]) {
    t.last().drop(code);
    assert.equal(t.client.state, "reconnecting", `code ${code}`);
    t.clock.advance(1000);
    t.last().open();
    assert.equal(t.last().sent[0].type, "session.resume", `code ${code}`);
    t.last().deliver({ type: "session.resumed", session_id: "S", seq: 0 });
  }
});

test("backoff grows with full jitter within its bounds and resets after a successful open", () => {
  const randoms = [0.999, 0, 0.5, 0.999, 0.999, 0.999, 0.999, 0.999];
  let i = 0;
  const t = setup({ random: () => randoms[i++ % randoms.length] });
  t.client.connect();
  const delays = [];
  for (let n = 0; n < 7; n++) {
    t.last().drop(1006);
    const st = t.of("status").at(-1);
    delays.push(st.retryInMs);
    assert.equal(st.attempt, n + 1);
    t.clock.advance(st.retryInMs);
  }
  // random(0, min(1000, 100 * 2^attempt))
  assert.deepEqual(delays, [99, 0, 200, 799, 999, 999, 999]);
  for (const d of delays) assert.ok(d >= 0 && d <= 1000);
  t.last().open();
  t.last().deliver({ type: "session.started", session_id: "S", resume_token: "T", seq: 0 });
  assert.equal(t.client.attempt, 0);
  i = 0;
  t.last().drop(1006);
  assert.equal(t.of("status").at(-1).retryInMs, 99); // back to the first window
});

test("a Retry-After exposed by the WebSocket implementation is a floor under the jitter", () => {
  const t = setup({ random: () => 0 });
  t.client.connect();
  t.last().drop(1006, { retryAfterMs: 5000 });
  assert.equal(t.of("status").at(-1).retryInMs, 5000);
  t.clock.advance(4999);
  assert.equal(t.sockets.length, 1);
  t.clock.advance(1);
  assert.equal(t.sockets.length, 2);
});

test("the `ws` package's unexpected-response gives Retry-After and aborts the handshake", () => {
  const t = setup({ random: () => 0 });
  const listeners = {};
  const Base = t.FakeWebSocket;
  class WithOn extends Base {
    on(name, fn) {
      listeners[name] = fn;
    }
    terminate() {
      this.drop(1006);
    }
  }
  t.client.WebSocket = WithOn;
  t.client.connect();
  listeners["unexpected-response"]({}, { statusCode: 503, headers: { "retry-after": "3" }, resume() {} });
  assert.equal(t.client.state, "reconnecting");
  assert.equal(t.of("status").at(-1).retryInMs, 3000);
  assert.equal(parseRetryAfter("Wed, 21 Oct 2015 07:28:30 GMT", Date.parse("Wed, 21 Oct 2015 07:28:00 GMT")), 30000);
  assert.equal(parseRetryAfter("soon"), 0);
});

test("errors naming a message: rate_limited resends it later, invalid_frame gives it up", () => {
  const t = setup();
  const s = started(t);
  const a = t.client.send("too fast");
  const b = t.client.send("x".repeat(5));
  s.deliver({ type: "error", code: "rate_limited", message: "…", client_id: a });
  s.deliver({ type: "error", code: "invalid_frame", message: "bad", client_id: b });
  assert.deepEqual(t.client.pending.map((p) => p.clientId), [a]);
  assert.deepEqual(t.of("failed").map((f) => [f.clientId, f.code]), [[b, "invalid_frame"]]);
  const before = s.sent.length;
  t.clock.advance(3000);
  assert.deepEqual(s.sent.slice(before), [{ type: "message.send", client_id: a, text: "too fast" }]);
});

test("typing is debounced: true once on the first keystroke, false after a quiet spell", () => {
  const t = setup();
  const s = started(t);
  t.client.typing();
  t.clock.advance(500);
  t.client.typing();
  t.clock.advance(500);
  t.client.typing();
  const typing = () => s.sent.filter((f) => f.type === "typing").map((f) => f.active);
  assert.deepEqual(typing(), [true]);
  t.clock.advance(999);
  assert.deepEqual(typing(), [true]);
  t.clock.advance(1);
  assert.deepEqual(typing(), [true, false]);
  // Sending a message ends the typing at once.
  t.client.typing();
  t.client.send("done");
  assert.deepEqual(typing(), [true, false, true, false]);
  t.clock.advance(5000);
  assert.deepEqual(typing(), [true, false, true, false]);
});

test("app pings go out on the interval while open; a connection with no answer is dropped and resumed", () => {
  const t = setup({ pingIntervalMs: 20000 });
  const s = started(t);
  const pings = () => s.sent.filter((f) => f.type === "ping").length;
  t.clock.advance(19999);
  assert.equal(pings(), 0);
  t.clock.advance(1);
  assert.equal(pings(), 1);
  s.deliver({ type: "pong" });
  t.clock.advance(20000);
  assert.equal(pings(), 2);
  // No pong this time: the next tick gives the socket up and reconnects.
  t.clock.advance(20000);
  assert.equal(pings(), 2);
  assert.equal(s.closedByClient, 1000);
  assert.equal(t.client.state, "reconnecting");
  t.clock.advance(1000);
  t.last().open();
  assert.equal(t.last().sent[0].type, "session.resume");
});

test("no pings while not open", () => {
  const t = setup({ pingIntervalMs: 1000 });
  const s = started(t);
  s.drop(4009);
  t.clock.advance(10000);
  assert.equal(s.sent.filter((f) => f.type === "ping").length, 0);
});

test("frames of the moment map to events; close() ends the session and clears storage", () => {
  const t = setup();
  const s = started(t);
  s.deliver({ type: "typing", from: "ai", active: true });
  s.deliver({ type: "session.queued", seq: 1, reason: "r" });
  s.deliver({ type: "queue.position", position: 2, agents_online: true });
  s.deliver({ type: "agent.joined", seq: 2, name: "Grace" });
  s.deliver({ type: "agent.left", seq: 3, name: "Grace" });
  s.deliver({ type: "presence", agents_online: false });
  assert.deepEqual(t.of("typing"), [{ from: "ai", active: true }]);
  assert.equal(t.of("queued").length, 1);
  assert.equal(t.of("position")[0].position, 2);
  assert.equal(t.of("agent_joined")[0].name, "Grace");
  assert.equal(t.of("agent_left")[0].name, "Grace");
  assert.deepEqual(t.of("presence").at(-1), { agents_online: false });
  t.client.confirm("A", true);
  t.client.requestHuman("please");
  t.client.createTicket("Wrong invoice", "INV-1");
  assert.deepEqual(s.sent.slice(-3), [
    { type: "action.confirm", action_id: "A", accept: true },
    { type: "handoff.request", reason: "please" },
    { type: "ticket.create", subject: "Wrong invoice", description: "INV-1" },
  ]);
  t.client.close();
  assert.deepEqual(s.sent.at(-1), { type: "session.close" });
  assert.equal(t.client.state, "closed");
  assert.equal(t.storage.getItem("switchboard.session"), null);
  s.drop(1000);
  assert.deepEqual(t.clock.pending(), []);
});

test("disconnect() drops the socket without ending the session and does not reconnect", () => {
  const t = setup();
  const s = started(t);
  t.client.disconnect();
  assert.equal(s.closedByClient, 1000);
  assert.equal(t.client.state, "idle");
  assert.deepEqual(t.clock.pending(), []);
  assert.equal(t.client.sessionId, "S");
  assert.ok(!s.sent.some((f) => f.type === "session.close"));
});

test("invalid_seq: resume again from the newest seq the server named, not a new session", () => {
  const storage = memoryStorage();
  storage.setItem("switchboard.session", JSON.stringify({ sessionId: "S", resumeToken: "T", lastSeq: 9 }));
  const t = setup({ storage });
  t.client.connect();
  t.last().open();
  t.last().deliver({ type: "session.resumed", session_id: "S", seq: 4 });
  t.last().deliver({ type: "error", code: "invalid_seq", message: "newest is 4" });
  t.last().drop(4003);
  assert.equal(t.of("resumed").length, 0);
  t.clock.advance(1000);
  t.last().open();
  assert.deepEqual(t.last().sent, [{ type: "session.resume", session_id: "S", resume_token: "T", last_seq: 4 }]);
});

test("agent connect sends agent.start with the token as access_token, then agent.resume with last_seq", () => {
  const t = setup({ Client: AgentClient, url: "ws://chat.test/ws/agent", extra: { token: "a b" } });
  t.client.connect({ presence: "online", capacity: 2 });
  const s = t.last();
  assert.equal(s.url, "ws://chat.test/ws/agent?access_token=a%20b");
  s.open();
  assert.deepEqual(s.sent, [{ type: "agent.start", presence: "online", capacity: 2 }]);
  s.deliver({ type: "agent.ready", agent_id: "a-7", seq: 0, queue: [], sessions: [] });
  assert.equal(t.client.state, "open");
  s.deliver({ type: "session.assigned", seq: 1, session_id: "S", history: [] });
  s.deliver({ type: "session.event", seq: 2, session_id: "S", event: { type: "message", seq: 3 } });
  s.drop(1006);
  t.clock.advance(1000);
  const s2 = t.last();
  s2.open();
  assert.deepEqual(s2.sent, [{ type: "agent.resume", last_seq: 2 }]);
  s2.deliver({ type: "agent.ready", agent_id: "a-7", seq: 3 });
  s2.deliver({ type: "session.event", seq: 2, session_id: "S", event: {} });
  s2.deliver({ type: "session.released", seq: 3, session_id: "S", reason: "left" });
  assert.deepEqual(t.of("event").map((f) => f.seq), [2]);
  assert.deepEqual(t.of("released").map((f) => f.seq), [3]);
});

test("agent: presence and the roster (every agent online, in full) are emitted as they come", () => {
  const t = setup({ Client: AgentClient, url: "ws://chat.test/ws/agent", extra: { token: "t" } });
  t.client.connect({});
  const s = t.last();
  s.open();
  s.deliver({ type: "agent.ready", agent_id: "a-7", seq: 0, queue: [], sessions: [] });
  const ann = { agent_id: "ann", name: "Ann", presence: "online", load: 0, capacity: 3 };
  s.deliver({ type: "agent.presence", agent: ann });
  s.deliver({ type: "agent.roster", agents: [] });
  assert.deepEqual(t.of("presence"), [{ type: "agent.presence", agent: ann }]);
  assert.deepEqual(t.of("roster"), [{ type: "agent.roster", agents: [] }]);
});

test("agent: resume refused (4003) signs on afresh; 4011 waits for a new token", () => {
  const t = setup({ Client: AgentClient, url: "ws://chat.test/ws/agent?x=1", extra: { token: "old" } });
  t.client.connect({ auto_assign: false });
  t.last().open();
  t.last().deliver({ type: "agent.ready", seq: 5 });
  t.last().drop(1006);
  t.clock.advance(1000);
  t.last().open();
  assert.deepEqual(t.last().sent, [{ type: "agent.resume", last_seq: 5 }]);
  t.last().deliver({ type: "error", code: "resume_refused" });
  t.last().drop(4003);
  t.clock.advance(1000);
  t.last().open();
  assert.deepEqual(t.last().sent, [{ type: "agent.start", auto_assign: false }]);
  t.last().deliver({ type: "agent.ready", seq: 0 });
  t.last().drop(4011);
  assert.equal(t.client.state, "closed");
  t.client.setToken("new");
  t.client.connect();
  assert.equal(t.last().url, "ws://chat.test/ws/agent?x=1&access_token=new");
  t.last().open();
  assert.deepEqual(t.last().sent, [{ type: "agent.resume", last_seq: 0 }]);
});

test("agent messages, typing and requests carry the session id; the outbox is resent after a reconnect", () => {
  const t = setup({ Client: AgentClient, url: "ws://chat.test/ws/agent", extra: { token: "t" } });
  t.client.connect();
  const s = t.last();
  s.open();
  s.deliver({ type: "agent.ready", seq: 0 });
  t.client.join("S");
  t.client.typing("S");
  const id = t.client.send("S", "Hi, I'm Grace.");
  t.client.createTicket("S", "Refund", undefined, "high");
  t.client.fetchHistory("S", 10);
  t.client.setPresence({ presence: "away" });
  t.client.leave("S");
  t.client.closeChat("S");
  assert.deepEqual(s.sent.slice(1), [
    { type: "session.join", session_id: "S" },
    { type: "typing", session_id: "S", active: true },
    { type: "typing", session_id: "S", active: false },
    { type: "message.send", session_id: "S", client_id: id, text: "Hi, I'm Grace." },
    { type: "ticket.create", session_id: "S", subject: "Refund", priority: "high" },
    { type: "history.fetch", session_id: "S", before_seq: 10 },
    { type: "presence.set", presence: "away" },
    { type: "session.leave", session_id: "S" },
    { type: "session.close", session_id: "S" },
  ]);
  s.drop(1006);
  t.clock.advance(1000);
  t.last().open();
  t.last().deliver({ type: "agent.ready", seq: 0 });
  assert.deepEqual(t.last().sent.at(-1), { type: "message.send", session_id: "S", client_id: id, text: "Hi, I'm Grace." });
  t.last().deliver({ type: "message.ack", session_id: "S", client_id: id, seq: 4 });
  assert.deepEqual(t.client.pending, []);
  assert.deepEqual(t.of("ack").at(-1), { sessionId: "S", clientId: id, seq: 4, text: "Hi, I'm Grace." });
});

test("storage: null keeps everything in memory; corrupt stored values are ignored", () => {
  const ws = fakeSockets();
  const c = new SwitchboardClient({ url: "ws://x/ws/chat", storage: null, WebSocket: ws.FakeWebSocket });
  c.send("hi");
  assert.equal(c.pending.length, 1);
  const storage = memoryStorage();
  storage.setItem("switchboard.session", "{not json");
  storage.setItem("switchboard.outbox", "also not json");
  const t = setup({ storage });
  assert.equal(t.client.sessionId, null);
  assert.deepEqual(t.client.pending, []);
});
