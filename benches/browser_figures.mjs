#!/usr/bin/env node
// The browser side's figures (issue 19): asset sizes, the widget's time to a usable launcher, a
// customer's send -> AI answer on screen, and the agent console's frame -> rendered time with 50
// open chats and a queue of 500. Node 20, no npm packages: headless Chromium is driven over the
// DevTools protocol with Node's built-in WebSocket (run with --experimental-websocket), and the
// customers of the console figure are switchboard.v1 WebSocket clients from this process.
//
//   node --experimental-websocket benches/browser_figures.mjs \
//     --base http://127.0.0.1:4001 --secret <agents.jwt_secret> [--runs 5] [--out figures.json] \
//     [--only sizes,widget,console] [--chromium /usr/bin/chromium]
//
// The server must run with agents.max_capacity >= 50 and a Django that answers the AI calls (the
// load tool's `switchboard-load fake-django`). Only loopback traffic; every wait is bounded.

import { spawn } from "node:child_process";
import { createHmac } from "node:crypto";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import http from "node:http";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { gunzipSync } from "node:zlib";

if (typeof globalThis.WebSocket !== "function") {
  console.error("needs Node's WebSocket: run with node --experimental-websocket (Node 20) or Node >= 22");
  process.exit(2);
}

// --------------------------------------------------------------------------------------------
// Arguments

const args = Object.fromEntries(
  process.argv.slice(2).reduce((acc, a, i, all) => {
    if (a.startsWith("--")) acc.push([a.slice(2), all[i + 1] && !all[i + 1].startsWith("--") ? all[i + 1] : "1"]);
    return acc;
  }, []),
);
const BASE = args.base ?? "http://127.0.0.1:4001";
const WS_BASE = BASE.replace(/^http/, "ws");
const SECRET = args.secret ?? process.env.SWITCHBOARD__AGENTS__JWT_SECRET ?? "";
const RUNS = Number(args.runs ?? 5);
const ONLY = new Set((args.only ?? "sizes,widget,console").split(","));
const CHROMIUM = args.chromium ?? "/usr/bin/chromium";
const OUT = args.out ?? null;
const CHATS = Number(args["console-chats"] ?? 50);
const QUEUE = Number(args["console-queue"] ?? 500);
if (!/^http:\/\/(127\.0\.0\.1|localhost|\[::1\]):\d+$/.test(BASE)) {
  console.error("--base must be a loopback http://host:port");
  process.exit(2);
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const log = (...a) => console.error(`[${new Date().toISOString().slice(11, 23)}]`, ...a);

function withTimeout(promise, ms, what) {
  let timer;
  return Promise.race([
    promise,
    new Promise((_, reject) => (timer = setTimeout(() => reject(new Error(`timeout: ${what} (${ms} ms)`)), ms))),
  ]).finally(() => clearTimeout(timer));
}

function quantile(sorted, q) {
  if (!sorted.length) return NaN;
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1));
  return sorted[i];
}
function summary(values) {
  const s = values.filter((v) => Number.isFinite(v)).sort((a, b) => a - b);
  return {
    n: s.length,
    min: s[0],
    p50: quantile(s, 0.5),
    p95: quantile(s, 0.95),
    p99: quantile(s, 0.99),
    max: s[s.length - 1],
  };
}
const r1 = (v) => (Number.isFinite(v) ? Math.round(v * 10) / 10 : v);
function fmt(sm) {
  return `n=${sm.n} min ${r1(sm.min)} p50 ${r1(sm.p50)} p95 ${r1(sm.p95)} max ${r1(sm.max)}`;
}

// --------------------------------------------------------------------------------------------
// HTTP (figure 1)

function get(path, headers = {}) {
  return new Promise((resolve, reject) => {
    const req = http.get(BASE + path, { headers }, (res) => {
      const chunks = [];
      res.on("data", (c) => chunks.push(c));
      res.on("end", () => resolve({ status: res.statusCode, headers: res.headers, body: Buffer.concat(chunks) }));
    });
    req.setTimeout(10000, () => req.destroy(new Error(`timeout GET ${path}`)));
    req.on("error", reject);
  });
}

async function figureSizes() {
  const files = ["/widget.js", "/switchboard.js"];
  const runs = [];
  for (let run = 0; run < RUNS; run++) {
    const row = {};
    for (const f of files) {
      const raw = await get(f);
      const gz = await get(f, { "Accept-Encoding": "gzip" });
      if (raw.status !== 200 || gz.status !== 200) throw new Error(`${f}: ${raw.status}/${gz.status}`);
      const gzipped = gz.headers["content-encoding"] === "gzip";
      if (gzipped && !gunzipSync(gz.body).equals(raw.body)) throw new Error(`${f}: gzip body differs from raw`);
      row[f] = { raw: raw.body.length, gzip: gz.body.length, gzipped, etag: raw.headers.etag, cacheControl: raw.headers["cache-control"] };
    }
    runs.push(row);
  }
  const out = {};
  for (const f of files) {
    out[f] = { raw: summary(runs.map((r) => r[f].raw)), gzip: summary(runs.map((r) => r[f].gzip)), gzipped: runs[0][f].gzipped, cacheControl: runs[0][f].cacheControl };
  }
  out.total = { raw: summary(runs.map((r) => r["/widget.js"].raw + r["/switchboard.js"].raw)), gzip: summary(runs.map((r) => r["/widget.js"].gzip + r["/switchboard.js"].gzip)) };
  return out;
}

// --------------------------------------------------------------------------------------------
// A minimal DevTools protocol client (flattened sessions over the browser's WebSocket)

class CDP {
  constructor(ws) {
    this.ws = ws;
    this.nextId = 1;
    this.waiting = new Map();
    this.listeners = [];
    ws.addEventListener("message", (ev) => {
      const msg = JSON.parse(ev.data);
      if (msg.id != null) {
        const w = this.waiting.get(msg.id);
        if (!w) return;
        this.waiting.delete(msg.id);
        clearTimeout(w.timer);
        if (msg.error) w.reject(new Error(`${w.method}: ${msg.error.message} ${msg.error.data ?? ""}`));
        else w.resolve(msg.result);
      } else {
        for (const l of this.listeners) l(msg);
      }
    });
    ws.addEventListener("close", () => {
      for (const w of this.waiting.values()) w.reject(new Error("DevTools socket closed"));
      this.waiting.clear();
    });
  }
  static async connect(url) {
    const ws = new WebSocket(url);
    await withTimeout(new Promise((resolve, reject) => {
      ws.addEventListener("open", resolve, { once: true });
      ws.addEventListener("error", () => reject(new Error("DevTools connect failed")), { once: true });
    }), 10000, "DevTools connect");
    return new CDP(ws);
  }
  send(method, params = {}, sessionId, timeoutMs = 60000) {
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiting.delete(id);
        reject(new Error(`timeout: ${method}`));
      }, timeoutMs);
      this.waiting.set(id, { resolve, reject, timer, method });
      this.ws.send(JSON.stringify({ id, method, params, ...(sessionId ? { sessionId } : {}) }));
    });
  }
  waitEvent(method, sessionId, timeoutMs = 30000) {
    return withTimeout(new Promise((resolve) => {
      const l = (msg) => {
        if (msg.method === method && (!sessionId || msg.sessionId === sessionId)) {
          this.listeners = this.listeners.filter((x) => x !== l);
          resolve(msg.params);
        }
      };
      this.listeners.push(l);
    }), timeoutMs, method);
  }
  close() {
    try {
      this.ws.close();
    } catch {}
  }
}

async function launchChromium() {
  const profile = mkdtempSync(join(tmpdir(), "sb-fig-chrome-"));
  const child = spawn(CHROMIUM, [
    "--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--remote-debugging-port=0", `--user-data-dir=${profile}`, "--window-size=1280,900", "about:blank",
  ], { stdio: ["ignore", "ignore", "pipe"], detached: true });
  const url = await withTimeout(new Promise((resolve, reject) => {
    let buf = "";
    child.stderr.on("data", (d) => {
      buf += d;
      const m = buf.match(/DevTools listening on (ws:\/\/\S+)/);
      if (m) resolve(m[1]);
    });
    child.on("exit", (code) => reject(new Error(`chromium exited ${code}: ${buf.slice(-500)}`)));
  }), 30000, "chromium start");
  child.stderr.resume();
  const cdp = await CDP.connect(url);
  const version = await cdp.send("Browser.getVersion");
  return {
    cdp,
    version: version.product,
    async close() {
      cdp.close();
      try {
        process.kill(-child.pid, "SIGTERM");
      } catch {}
      await withTimeout(new Promise((r) => (child.exitCode != null ? r() : child.on("exit", r))), 10000, "chromium exit").catch(() => {
        try {
          process.kill(-child.pid, "SIGKILL");
        } catch {}
      });
      rmSync(profile, { recursive: true, force: true });
    },
  };
}

// A page in its own browser context (its own cache, cookies and storage: a first visit).
async function newPage(cdp, initScript) {
  const { browserContextId } = await cdp.send("Target.createBrowserContext", { disposeOnDetach: true });
  const { targetId } = await cdp.send("Target.createTarget", { url: "about:blank", browserContextId });
  const { sessionId } = await cdp.send("Target.attachToTarget", { targetId, flatten: true });
  await cdp.send("Page.enable", {}, sessionId);
  await cdp.send("Runtime.enable", {}, sessionId);
  if (initScript) await cdp.send("Page.addScriptToEvaluateOnNewDocument", { source: initScript }, sessionId);
  const page = {
    sessionId,
    async evaluate(expression, timeoutMs = 30000) {
      const r = await cdp.send("Runtime.evaluate", { expression, awaitPromise: true, returnByValue: true, timeout: timeoutMs }, sessionId, timeoutMs + 5000);
      if (r.exceptionDetails) {
        const d = r.exceptionDetails;
        throw new Error(`page: ${d.exception?.description ?? d.text}`);
      }
      return r.result.value;
    },
    async navigate(url) {
      const loaded = cdp.waitEvent("Page.loadEventFired", sessionId, 30000);
      const r = await cdp.send("Page.navigate", { url }, sessionId);
      if (r.errorText) throw new Error(`navigate ${url}: ${r.errorText}`);
      await loaded;
    },
    async close() {
      await cdp.send("Target.closeTarget", { targetId }).catch(() => {});
      await cdp.send("Target.disposeBrowserContext", { browserContextId }).catch(() => {});
    },
  };
  return page;
}

// --------------------------------------------------------------------------------------------
// Figures 2 and 3: the widget on /demo/

// Installed before the demo page's own scripts. It notes when the widget's host element (with the
// launcher already in its shadow root: the widget fills the shadow root before attaching the host)
// enters the document, clicks the launcher at once (a new chat connects only when the panel is
// opened, so that a page view costs the server nothing), and notes when `SwitchboardWidget.ready`
// resolves and when the client's state becomes "open".
const WIDGET_INIT = `(() => {
  const m = (window.__sbBench = { widgetSetAt: null, launcherAt: null, clickedAt: null, readyAt: null, openAt: null, stateAtReady: null, states: [], longTasks: [] });
  try {
    new PerformanceObserver((list) => { for (const e of list.getEntries()) m.longTasks.push([Math.round(e.startTime), Math.round(e.duration)]); })
      .observe({ type: "longtask", buffered: true });
  } catch {}
  const obs = new MutationObserver(() => {
    const host = document.querySelector("switchboard-widget");
    const launcher = host && host.shadowRoot && host.shadowRoot.querySelector('[data-sb="launcher"]');
    if (!launcher) return;
    m.launcherAt = performance.now();
    obs.disconnect();
    launcher.click();
    m.clickedAt = performance.now();
  });
  obs.observe(document, { childList: true, subtree: true });
  let widget;
  Object.defineProperty(window, "SwitchboardWidget", {
    configurable: true,
    get() { return widget; },
    set(v) {
      widget = v;
      m.widgetSetAt = performance.now();
      v.ready.then((c) => {
        m.readyAt = performance.now();
        m.stateAtReady = c.state;
        const onStatus = (s) => {
          m.states.push([s.state, Math.round(performance.now() * 10) / 10]);
          if (s.state === "open" && m.openAt == null) m.openAt = performance.now();
        };
        c.on("status", onStatus);
        if (c.state === "open" && m.openAt == null) m.openAt = performance.now();
      });
    },
  });
})();`;

const WIDGET_WAIT_OPEN = `new Promise((resolve, reject) => {
  const t0 = Date.now();
  (function poll() {
    const m = window.__sbBench;
    if (m && m.openAt != null) {
      const nav = performance.getEntriesByType("navigation")[0];
      const res = {};
      for (const e of performance.getEntriesByType("resource")) {
        const name = new URL(e.name).pathname;
        if (name === "/widget.js" || name === "/switchboard.js") res[name] = { start: e.startTime, end: e.responseEnd, transfer: e.transferSize, encoded: e.encodedBodySize, decoded: e.decodedBodySize };
      }
      const fcp = performance.getEntriesByName("first-contentful-paint")[0];
      // docs/browser.md's test-hook note names this selector for the widget's host element.
      const docHook = !!document.querySelector("[data-switchboard-widget]");
      resolve({ ...m, docHook, fcp: fcp ? fcp.startTime : null, nav: { responseEnd: nav.responseEnd, domContentLoaded: nav.domContentLoadedEventEnd, load: nav.loadEventEnd }, res });
    } else if (Date.now() - t0 > 15000) reject(new Error("widget never connected: " + JSON.stringify(m)));
    else setTimeout(poll, 5);
  })();
})`;

// One send: the clock starts just before the click on Send (the text is already in the box) and
// stops when the AI's answer is in the shadow DOM; also noted: the customer's own bubble, the
// server's ack (its "Sending…" flag removed), and the first animation frame after the answer.
const WIDGET_SEND = `new Promise((resolve, reject) => {
  const root = document.querySelector("switchboard-widget").shadowRoot;
  const t = { t0: 0, own: null, ack: null, ai: null, frame: null, text: null };
  const timer = setTimeout(() => { mo.disconnect(); reject(new Error("no AI answer in 10 s: " + JSON.stringify(t))); }, 10000);
  const mo = new MutationObserver((records) => {
    const now = performance.now();
    for (const r of records) {
      for (const n of r.addedNodes) {
        if (n.nodeType !== 1 || n.dataset.sb !== "message") continue;
        if (n.dataset.from === "customer" && t.own == null) t.own = now - t.t0;
        if (n.dataset.from === "ai" && t.ai == null) {
          t.ai = now - t.t0;
          t.text = n.querySelector(".text").textContent;
          requestAnimationFrame(() => {
            t.frame = performance.now() - t.t0;
            mo.disconnect();
            clearTimeout(timer);
            resolve(t);
          });
        }
      }
      for (const n of r.removedNodes) if (n.nodeType === 1 && n.dataset.sb === "pending" && t.ack == null) t.ack = now - t.t0;
    }
  });
  mo.observe(root, { childList: true, subtree: true });
  t.t0 = performance.now();
  root.querySelector('[data-sb="send"]').click();
})`;

async function figureWidget(cdp) {
  const loads = [];
  const sends = [];
  const laterSends = [];
  for (let run = 0; run < RUNS; run++) {
    const page = await newPage(cdp, WIDGET_INIT);
    try {
      await page.navigate(`${BASE}/demo/`);
      const m = await page.evaluate(WIDGET_WAIT_OPEN, 20000);
      loads.push(m);
      log(`widget run ${run + 1}: launcher ${r1(m.launcherAt)} ms, ready ${r1(m.readyAt)} ms, open ${r1(m.openAt)} ms`);
      // Figure 3: five messages in this chat; the first is the figure, the rest a second row.
      for (let i = 0; i < 5; i++) {
        await page.evaluate(`document.querySelector("switchboard-widget").shadowRoot.querySelector('[data-sb="input"]').focus(), true`);
        await cdp.send("Input.insertText", { text: `Hello, run ${run + 1} message ${i + 1}` }, page.sessionId);
        const typed = await page.evaluate(`document.querySelector("switchboard-widget").shadowRoot.querySelector('[data-sb="input"]').value`);
        if (!typed.startsWith("Hello")) throw new Error(`typing did not reach the input: ${JSON.stringify(typed)}`);
        const s = await page.evaluate(WIDGET_SEND, 15000);
        (i === 0 ? sends : laterSends).push(s);
        if (i === 0) log(`  send -> AI ${r1(s.ai)} ms (own ${r1(s.own)}, ack ${r1(s.ack)}, frame ${r1(s.frame)}): ${JSON.stringify(s.text)}`);
        await sleep(300);
      }
    } finally {
      await page.close();
    }
  }
  return {
    load: {
      widgetSet: summary(loads.map((m) => m.widgetSetAt)),
      launcher: summary(loads.map((m) => m.launcherAt)),
      ready: summary(loads.map((m) => m.readyAt)),
      open: summary(loads.map((m) => m.openAt)),
      domContentLoaded: summary(loads.map((m) => m.nav.domContentLoaded)),
      load: summary(loads.map((m) => m.nav.load)),
      widgetJsEnd: summary(loads.map((m) => m.res["/widget.js"]?.end)),
      switchboardJsEnd: summary(loads.map((m) => m.res["/switchboard.js"]?.end)),
      stateAtReady: [...new Set(loads.map((m) => m.stateAtReady))],
      docHookFound: loads.map((m) => m.docHook),
      runs: loads,
    },
    firstSend: {
      own: summary(sends.map((s) => s.own)),
      ack: summary(sends.map((s) => s.ack)),
      ai: summary(sends.map((s) => s.ai)),
      frame: summary(sends.map((s) => s.frame)),
      texts: [...new Set(sends.map((s) => s.text))],
    },
    laterSends: {
      own: summary(laterSends.map((s) => s.own)),
      ack: summary(laterSends.map((s) => s.ack)),
      ai: summary(laterSends.map((s) => s.ai)),
      frame: summary(laterSends.map((s) => s.frame)),
    },
  };
}

// --------------------------------------------------------------------------------------------
// Figure 4: the console with 50 open chats and a queue of 500

function b64url(buf) {
  return Buffer.from(buf).toString("base64").replace(/=+$/, "").replace(/\+/g, "-").replace(/\//g, "_");
}
function agentToken() {
  const header = b64url(JSON.stringify({ alg: "HS256", typ: "JWT" }));
  const payload = b64url(JSON.stringify({ sub: "bench-agent-1", name: "Bench Agent", role: "agent", exp: Math.floor(Date.now() / 1000) + 3600 }));
  const sig = b64url(createHmac("sha256", SECRET).update(`${header}.${payload}`).digest());
  return `${header}.${payload}.${sig}`;
}

// A customer speaking switchboard.v1: session.start, then handoff.request (queued for a person).
class Customer {
  constructor(n) {
    this.n = n;
    this.sessionId = null;
    this.queued = false;
    this.acks = 0;
    this.errors = [];
    this.closed = null;
    this.seq = 0;
  }
  start() {
    return withTimeout(new Promise((resolve, reject) => {
      const ws = (this.ws = new WebSocket(`${WS_BASE}/ws/chat`, "switchboard.v1"));
      ws.addEventListener("open", () => ws.send(JSON.stringify({ type: "session.start" })));
      ws.addEventListener("message", (ev) => {
        const f = JSON.parse(ev.data);
        if (f.type === "session.started") {
          this.sessionId = f.session_id;
          ws.send(JSON.stringify({ type: "handoff.request", reason: `bench customer ${this.n}` }));
        } else if (f.type === "session.queued") {
          this.queued = true;
          resolve();
        } else if (f.type === "message.ack") this.acks++;
        else if (f.type === "error") this.errors.push(f.code);
      });
      ws.addEventListener("close", (ev) => {
        this.closed = ev.code;
        if (!this.queued) reject(new Error(`customer ${this.n} closed ${ev.code}`));
      });
      ws.addEventListener("error", () => {});
    }), 20000, `customer ${this.n} queued`);
  }
  send(text) {
    this.ws.send(JSON.stringify({ type: "message.send", client_id: `b-${this.n}-${++this.seq}`, text }));
  }
  close() {
    try {
      this.ws.send(JSON.stringify({ type: "session.close" }));
    } catch {}
    try {
      this.ws.close();
    } catch {}
  }
}

// Installed before the console's scripts. Every `message` a WebSocket dispatches (the console's
// AgentClient sets `onmessage`; addEventListener is wrapped too) gets its arrival noted, keyed by
// the benchmark id carried in the customer's text ("bench#<id>#"), before the console's handler
// runs; a MutationObserver notes when the transcript entry ([data-sb=message]) for that id enters
// the DOM, whether its chat is the one on screen, and the first animation frame after it.
const CONSOLE_INIT = `(() => {
  const B = (window.__sbBench = { arrivals: {}, dom: {}, frames: 0, longTasks: [] });
  const idOf = (s) => {
    if (typeof s !== "string") return null;
    const i = s.indexOf("bench#");
    if (i < 0) return null;
    const j = s.indexOf("#", i + 6);
    return j < 0 ? null : s.slice(i + 6, j);
  };
  const wrap = (fn) => function (ev) {
    const t0 = performance.now();
    B.frames++;
    const id = idOf(ev.data);
    const r = fn.call(this, ev);
    if (id) B.arrivals[id] = { t0, ts: ev.timeStamp, t1: performance.now() };
    return r;
  };
  const P = WebSocket.prototype;
  const d = Object.getOwnPropertyDescriptor(P, "onmessage");
  Object.defineProperty(P, "onmessage", {
    configurable: true, enumerable: d.enumerable,
    get() { return this.__sbOrig ?? d.get.call(this); },
    set(fn) { this.__sbOrig = fn; d.set.call(this, typeof fn === "function" ? wrap(fn) : fn); },
  });
  const add = P.addEventListener;
  P.addEventListener = function (type, fn, opts) {
    return add.call(this, type, type === "message" && typeof fn === "function" ? wrap(fn) : fn, opts);
  };
  const mo = new MutationObserver((records) => {
    const now = performance.now();
    const batch = [];
    for (const r of records) for (const n of r.addedNodes) {
      if (n.nodeType !== 1 || n.dataset.sb !== "message") continue;
      const id = idOf(n.textContent);
      if (!id || B.dom[id]) continue;
      const pane = n.closest('[data-sb="chat"]');
      batch.push((B.dom[id] = { t: now, visible: !!pane && !pane.hidden, frame: null }));
    }
    if (batch.length) requestAnimationFrame(() => { const t = performance.now(); for (const rec of batch) rec.frame = t; });
  });
  const start = () => mo.observe(document.body, { childList: true, subtree: true });
  if (document.body) start(); else document.addEventListener("DOMContentLoaded", start, { once: true });
  try {
    new PerformanceObserver((list) => { for (const e of list.getEntries()) B.longTasks.push([e.startTime, e.duration]); })
      .observe({ type: "longtask", buffered: true });
  } catch {}
})();`;

const pageWait = (cond, timeoutMs, what) => `new Promise((resolve, reject) => {
  const t0 = Date.now();
  (function poll() {
    let v;
    try { v = (${cond}); } catch (e) { v = null; }
    if (v) resolve(v);
    else if (Date.now() - t0 > ${timeoutMs}) reject(new Error(${JSON.stringify(`timeout: ${what}`)}));
    else setTimeout(poll, 10);
  })();
})`;

async function figureConsole(cdp) {
  if (SECRET.length < 32) throw new Error("--secret (agents.jwt_secret, 32+ bytes) is needed for the console figure");
  const total = CHATS + QUEUE;
  log(`console: starting ${total} customers`);
  const customers = [];
  const t0 = Date.now();
  for (let i = 0; i < total; i += 50) {
    const batch = [];
    for (let j = i; j < Math.min(total, i + 50); j++) {
      const c = new Customer(j);
      customers.push(c);
      batch.push(c.start());
    }
    await Promise.all(batch);
  }
  const setupMs = Date.now() - t0;
  log(`console: ${customers.length} customers queued in ${setupMs} ms`);
  const bySession = new Map(customers.map((c) => [c.sessionId, c]));

  const page = await newPage(cdp, CONSOLE_INIT);
  const result = { setupMs };
  try {
    await cdp.send("Emulation.setDeviceMetricsOverride", { width: 1280, height: 900, deviceScaleFactor: 1, mobile: false }, page.sessionId);
    const navStart = Date.now();
    await page.navigate(`${BASE}/console/#token=${agentToken()}`);
    await page.evaluate(pageWait(`document.querySelector('[data-sb="status"]').dataset.state === "open" && document.querySelectorAll('[data-sb="queue-item"]').length > 0`, 20000, "console signed in"), 25000);
    result.signInMs = Date.now() - navStart;
    // Auto-assignment off (so the queue stays at 500), capacity 50: through the console's controls.
    await page.evaluate(`(() => {
      const a = document.querySelector('[data-sb="auto-assign"]'); a.checked = false; a.dispatchEvent(new Event("change"));
      const c = document.querySelector('[data-sb="capacity"]'); c.value = "${CHATS}"; c.dispatchEvent(new Event("change"));
      return true;
    })()`);
    await sleep(500);
    // Claim from the queue with the Claim buttons until 50 chats are open (the ones auto-assigned
    // before the switch count too).
    const claimMs = [];
    for (let guard = 0; guard < CHATS * 3; guard++) {
      const r = await page.evaluate(`new Promise((resolve, reject) => {
        const chats = () => document.querySelectorAll('[data-sb="chat"]').length;
        const have = chats();
        if (have >= ${CHATS}) return resolve({ done: true, have });
        const b = [...document.querySelectorAll('[data-sb="claim"]')].find((x) => !x.disabled);
        if (!b) return resolve({ done: false, have, none: true });
        const t0 = performance.now();
        const mo = new MutationObserver(() => {
          if (chats() > have) { mo.disconnect(); clearTimeout(timer); resolve({ done: false, have: have + 1, ms: performance.now() - t0 }); }
        });
        mo.observe(document.querySelector('[data-sb="chat-panes"]'), { childList: true });
        const timer = setTimeout(() => { mo.disconnect(); resolve({ done: false, have, timeout: true, notice: document.querySelector('[data-sb="notice"]').textContent }); }, 5000);
        b.click();
      })`, 10000);
      if (r.done) break;
      if (r.ms != null) claimMs.push(r.ms);
      if (r.none || r.timeout) {
        log("claim stalled", JSON.stringify(r));
        await sleep(200);
      }
    }
    const state = await page.evaluate(`({
      chats: [...document.querySelectorAll('[data-sb="chat"]')].map((c) => ({ id: c.dataset.sessionId, visible: !c.hidden })),
      queueRows: document.querySelectorAll('[data-sb="queue-item"]').length,
      queueTotal: document.querySelector('[data-sb="queue-total"]').textContent,
      load: document.querySelector('[data-sb="load"]').textContent,
      nodes: document.getElementsByTagName("*").length,
    })`);
    // The queue as shown right after the last claim and two seconds later (queue.updated comes
    // at most ten times a second while the queue changes).
    await sleep(2000);
    const later = await page.evaluate(`({
      queueRows: document.querySelectorAll('[data-sb="queue-item"]').length,
      queueTotal: document.querySelector('[data-sb="queue-total"]').textContent,
      claimedStillListed: [...document.querySelectorAll('[data-sb="queue-item"]')].filter((r) => document.querySelector('[data-sb="chat"][data-session-id="' + r.dataset.sessionId + '"]')).length,
    })`);
    result.queueLater = later;
    log(`console: queue 2 s after the last claim: ${later.queueTotal} (${later.queueRows} rows, ${later.claimedStillListed} of them chats already open here)`);
    result.claim = summary(claimMs);
    result.state = { chats: state.chats.length, queueRows: state.queueRows, queueTotal: state.queueTotal, load: state.load, nodes: state.nodes };
    log(`console: ${state.chats.length} chats open, queue ${state.queueTotal} (${state.queueRows} rows), load ${state.load}, claims ${fmt(result.claim)}`);
    if (state.chats.length !== CHATS) throw new Error(`wanted ${CHATS} open chats, have ${state.chats.length}`);
    const open = state.chats.map((c) => ({ ...c, customer: bySession.get(c.id) }));
    if (open.some((c) => !c.customer)) throw new Error("an open chat is not one of ours");
    const visible = open.find((c) => c.visible);

    // Rounds: "spread" sends 250 messages round-robin over the 50 chats at 25 a second; "visible"
    // sends 40 to the chat on screen at 10 a second (a customer's limit is 20/s); "burst" sends one
    // message to each of the 50 chats at once, five times, a second apart.
    const sentAt = new Map();
    let counter = 0;
    const sendTo = (c, round) => {
      const id = `${round}-${++counter}`;
      sentAt.set(id, { round, at: performance.timeOrigin + performance.now(), sessionId: c.customer.sessionId });
      c.customer.send(`bench#${id}# How do I change my mailbox password? (${counter})`);
    };
    const rounds = [];
    for (let r = 0; r < RUNS; r++) rounds.push({ name: `spread${r + 1}`, kind: "spread", go: async (name) => { for (let i = 0; i < 250; i++) { sendTo(open[i % open.length], name); await sleep(40); } } });
    for (let r = 0; r < RUNS; r++) rounds.push({ name: `visible${r + 1}`, kind: "visible", go: async (name) => { for (let i = 0; i < 40; i++) { sendTo(visible, name); await sleep(100); } } });
    for (let r = 0; r < RUNS; r++) rounds.push({ name: `burst${r + 1}`, kind: "burst", go: async (name) => { for (let k = 0; k < 5; k++) { for (const c of open) sendTo(c, name); await sleep(1000); } } });
    for (const round of rounds) {
      await round.go(round.name);
      const want = [...sentAt.values()].filter((s) => s.round === round.name).length;
      const seen = await page.evaluate(pageWait(`(() => { const n = Object.keys(window.__sbBench.dom).filter((k) => k.startsWith(${JSON.stringify(round.name + "-")})).length; return n >= ${want} ? n : 0; })()`, 20000, `round ${round.name} rendered`), 25000).catch((e) => {
        log(String(e));
        return -1;
      });
      log(`console round ${round.name}: sent ${want}, rendered ${seen}`);
      await sleep(300);
    }
    const B = await page.evaluate(`(() => { const B = window.__sbBench; return { arrivals: B.arrivals, dom: B.dom, frames: B.frames, longTasks: B.longTasks, timeOrigin: performance.timeOrigin, nodes: document.getElementsByTagName("*").length }; })()`, 30000);
    result.framesSeen = B.frames;
    result.nodesAfter = B.nodes;
    result.longTasks = { count: B.longTasks.length, max: Math.max(0, ...B.longTasks.map((x) => x[1])) };
    const rows = [];
    for (const [id, s] of sentAt) {
      const a = B.arrivals[id];
      const d = B.dom[id];
      rows.push({
        id, round: s.round,
        kind: s.round.replace(/\d+$/, ""),
        visible: d?.visible,
        arrivalToDom: a && d ? d.t - a.t0 : NaN,
        handler: a ? a.t1 - a.t0 : NaN,
        arrivalToFrame: a && d && d.frame != null ? d.frame - a.t0 : NaN,
        sendToDom: d ? B.timeOrigin + d.t - s.at : NaN,
        missing: !a ? "arrival" : !d ? "dom" : null,
      });
    }
    result.missing = rows.filter((r) => r.missing).length;
    // Where a burst's time goes: how far apart its 50 frames reach the page (their handlers'
    // arrival times), against the time the page spends handling them.
    result.burstSpread = [];
    for (const name of [...new Set(rows.filter((r) => r.kind === "burst").map((r) => r.round))]) {
      const ids = rows.filter((r) => r.round === name).map((r) => r.id);
      for (let k = 0; k < ids.length; k += CHATS) {
        const a = ids.slice(k, k + CHATS).map((id) => B.arrivals[id]).filter(Boolean);
        const t0s = a.map((x) => x.t0);
        result.burstSpread.push({ round: name, span: Math.max(...t0s) - Math.min(...t0s), handling: a.reduce((acc, x) => acc + (x.t1 - x.t0), 0) });
      }
    }
    result.burstSpreadSummary = { span: summary(result.burstSpread.map((x) => x.span)), handling: summary(result.burstSpread.map((x) => x.handling)) };
    log(`console burst of ${CHATS}: arrivals in the page spread over ${fmt(result.burstSpreadSummary.span)} ms; handling them took ${fmt(result.burstSpreadSummary.handling)} ms`);
    result.rows = rows;
    const by = (pred) => rows.filter(pred);
    const figure = (sel) => ({
      arrivalToDom: summary(sel.map((r) => r.arrivalToDom)),
      arrivalToFrame: summary(sel.map((r) => r.arrivalToFrame)),
      sendToDom: summary(sel.map((r) => r.sendToDom)),
    });
    result.figures = {};
    for (const kind of ["spread", "visible", "burst"]) {
      const sel = by((r) => r.kind === kind);
      result.figures[kind] = {
        all: figure(sel),
        perRound: [...new Set(sel.map((r) => r.round))].map((name) => ({ name, ...figure(sel.filter((r) => r.round === name)) })),
      };
    }
    result.figures.allVisible = figure(by((r) => r.visible === true));
    result.figures.allHidden = figure(by((r) => r.visible === false));
    result.figures.all = figure(rows);
    for (const [k, v] of Object.entries(result.figures)) if (v.arrivalToDom) log(`console ${k}: arrival->DOM ${fmt(v.arrivalToDom)}`);
    for (const kind of ["spread", "visible", "burst"]) {
      const f = result.figures[kind].all;
      log(`console ${kind}: arrival->DOM ${fmt(f.arrivalToDom)} | arrival->frame ${fmt(f.arrivalToFrame)} | send->DOM ${fmt(f.sendToDom)}`);
    }
    result.customerErrors = [...new Set(customers.flatMap((c) => c.errors))];
    result.customersClosed = customers.filter((c) => c.closed != null).length;
  } finally {
    await page.close();
    for (const c of customers) c.close();
    await sleep(500);
  }
  return result;
}

// --------------------------------------------------------------------------------------------

const results = { base: BASE, runs: RUNS, startedAt: new Date().toISOString(), node: process.version };
if (ONLY.has("sizes")) {
  results.sizes = await figureSizes();
  for (const [f, v] of Object.entries(results.sizes)) log(`${f}: raw ${v.raw.p50} B, gzip ${v.gzip.p50} B`);
}
if (ONLY.has("widget") || ONLY.has("console")) {
  const browser = await launchChromium();
  results.chromium = browser.version;
  try {
    if (ONLY.has("widget")) results.widget = await figureWidget(browser.cdp);
    if (ONLY.has("console")) results.console = await figureConsole(browser.cdp);
  } finally {
    await browser.close();
  }
}
results.finishedAt = new Date().toISOString();
const json = JSON.stringify(results, null, 2);
if (OUT) writeFileSync(OUT, json);
else console.log(json);
