#!/usr/bin/env python3
"""Repeat the live-chat attacks behind the hardening of issue 18 against one Switchboard binary.

Python 3.11 standard library only. The script starts the server itself (chat and API listeners on
free loopback ports, a fresh temporary data directory, every other setting at its default), runs
one attack and prints one JSON line of results (with the binary's commit) on stdout.

    taskset -c 1 python3 scripts/chat-attacks.py --binary target/release/switchboard \
        --attack preflood --attackers 2 --label new

The server is started under `taskset -c SERVER_CPU` (default 0); run the script itself under
`taskset -c 1` so that the two do not share a core.

Attacks
  preflood  A probe session measures the round trip of `{"type":"ping"}` -> reply every 10 ms,
            before, during and after N attacker sockets that upgrade and, without session.start,
            flood WebSocket ping frames and `{"type":"ping"}` text frames for 2 s (each attacker
            is its own process, reading and discarding what the server sends, non-blocking).
  history   20 anonymous sessions each send `message.send` with a ~4,000-character text (unique
            client_ids), one outstanding per session, for 10 s; server VmRSS before and after.
  tickets   One session sends 40 messages of ~4,000 characters, then 40 `ticket.create` frames in
            0.3 s; disk growth of the data directory (du -sb) and tickets created vs refused.
"""

import argparse
import base64
import json
import os
import select
import socket
import struct
import subprocess
import sys
import tempfile
import time

OP_CONT, OP_TEXT, OP_BIN, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
HOST = "127.0.0.1"


# --------------------------------------------------------------------------------------------
# A minimal WebSocket client (RFC 6455): masked client frames, unmasked server frames.
# --------------------------------------------------------------------------------------------

def mask_payload(payload: bytes, key: bytes) -> bytes:
    n = len(payload)
    if n == 0:
        return b""
    k = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(k, "big")).to_bytes(n, "big")


def encode_frame(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    head = bytearray([(0x80 if fin else 0) | opcode])
    n = len(payload)
    if n < 126:
        head.append(0x80 | n)
    elif n < 65536:
        head.append(0x80 | 126)
        head += struct.pack("!H", n)
    else:
        head.append(0x80 | 127)
        head += struct.pack("!Q", n)
    key = os.urandom(4)
    return bytes(head) + key + mask_payload(payload, key)


def text_frame(obj) -> bytes:
    return encode_frame(OP_TEXT, json.dumps(obj, separators=(",", ":")).encode())


class FrameParser:
    """Incremental parser of server frames; returns complete (opcode, payload) frames."""

    def __init__(self):
        self.buf = bytearray()
        self.frag_op = None
        self.frag = bytearray()

    def feed(self, data: bytes):
        self.buf += data
        out = []
        while True:
            b = self.buf
            if len(b) < 2:
                break
            fin = b[0] & 0x80
            op = b[0] & 0x0F
            masked = b[1] & 0x80
            n = b[1] & 0x7F
            i = 2
            if n == 126:
                if len(b) < 4:
                    break
                n = struct.unpack_from("!H", b, 2)[0]
                i = 4
            elif n == 127:
                if len(b) < 10:
                    break
                n = struct.unpack_from("!Q", b, 2)[0]
                i = 10
            key = None
            if masked:
                if len(b) < i + 4:
                    break
                key = bytes(b[i:i + 4])
                i += 4
            if len(b) < i + n:
                break
            payload = bytes(b[i:i + n])
            del b[:i + n]
            if key:
                payload = mask_payload(payload, key)
            if op >= 0x8:
                out.append((op, payload))
            elif op == OP_CONT:
                self.frag += payload
                if fin:
                    out.append((self.frag_op, bytes(self.frag)))
                    self.frag_op, self.frag = None, bytearray()
            elif fin:
                out.append((op, payload))
            else:
                self.frag_op, self.frag = op, bytearray(payload)
        return out


def close_code_of(payload: bytes):
    return struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None


class WsClient:
    def __init__(self, port: int, timeout: float = 5.0, path: str = "/ws/chat"):
        self.sock = socket.create_connection((HOST, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.parser = FrameParser()
        self.pending = []  # parsed frames not yet consumed
        self.closed_code = None  # close code from the server, or "eof"/"reset"
        key = base64.b64encode(os.urandom(16)).decode()
        req = (
            f"GET {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            f"Sec-WebSocket-Protocol: switchboard.v1\r\n\r\n"
        )
        self.sock.sendall(req.encode())
        data = b""
        deadline = time.monotonic() + timeout
        while b"\r\n\r\n" not in data:
            if time.monotonic() > deadline:
                raise TimeoutError("handshake timed out")
            chunk = self.sock.recv(4096)
            if not chunk:
                raise ConnectionError("closed during handshake")
            data += chunk
        head, rest = data.split(b"\r\n\r\n", 1)
        status = head.split(b"\r\n", 1)[0].decode(errors="replace")
        if " 101 " not in status + " ":
            raise ConnectionError(f"handshake refused: {status}")
        if rest:
            self.pending += self.parser.feed(rest)

    def send_obj(self, obj):
        self.sock.sendall(text_frame(obj))

    def fileno(self):
        return self.sock.fileno()

    def read_available(self):
        """Reads what the socket has (call when select says readable); returns parsed frames.
        Answers server pings with pongs; records a close."""
        try:
            data = self.sock.recv(262144)
        except (ConnectionResetError, BrokenPipeError):
            self.closed_code = self.closed_code or "reset"
            return []
        except (BlockingIOError, socket.timeout):
            return []
        if not data:
            self.closed_code = self.closed_code or "eof"
            return []
        frames = self.parser.feed(data)
        for op, payload in frames:
            if op == OP_PING:
                try:
                    self.sock.sendall(encode_frame(OP_PONG, payload))
                except OSError:
                    pass
            elif op == OP_CLOSE and self.closed_code is None:
                self.closed_code = close_code_of(payload)
        return frames

    def next_json(self, timeout: float):
        """The next text frame as JSON (other frames skipped), or None on timeout/close."""
        deadline = time.monotonic() + timeout
        while True:
            while self.pending:
                op, payload = self.pending.pop(0)
                if op == OP_TEXT:
                    return json.loads(payload)
                if op == OP_CLOSE and self.closed_code is None:
                    self.closed_code = close_code_of(payload)
            if self.closed_code is not None:
                return None
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            r, _, _ = select.select([self.sock], [], [], left)
            if r:
                self.pending += self.read_available()

    def close(self):
        try:
            self.sock.sendall(encode_frame(OP_CLOSE, struct.pack("!H", 1000)))
        except OSError:
            pass
        try:
            self.sock.close()
        except OSError:
            pass


def start_session(port: int):
    c = WsClient(port)
    c.send_obj({"type": "session.start"})
    while True:
        f = c.next_json(5.0)
        if f is None:
            raise RuntimeError(f"no session.started (closed {c.closed_code})")
        if f.get("type") == "session.started":
            return c, f


# --------------------------------------------------------------------------------------------
# The server under test.
# --------------------------------------------------------------------------------------------

def free_port() -> int:
    s = socket.socket()
    s.bind((HOST, 0))
    port = s.getsockname()[1]
    s.close()
    return port


def binary_version(binary: str):
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(binary))))
    info = {"binary": os.path.abspath(binary)}
    try:
        info["commit"] = subprocess.run(
            ["git", "-C", repo, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", repo, "status", "--porcelain", "-uno"], capture_output=True, text=True,
            timeout=10,
        ).stdout.strip()
        info["tracked_changes"] = bool(dirty)
    except (OSError, subprocess.SubprocessError):
        info["commit"] = None
    try:
        info["version"] = subprocess.run(
            [binary, "--version"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        info["version"] = None
    return info


class Server:
    def __init__(self, binary: str, cpu):
        self.data_dir = tempfile.mkdtemp(prefix="sb-attack-data-")
        self.log_path = os.path.join(tempfile.gettempdir(), os.path.basename(self.data_dir) + ".log")
        self.chat_port = free_port()
        self.api_port = free_port()
        env = dict(os.environ)
        env.update({
            "SWITCHBOARD__CHAT__BIND": f"{HOST}:{self.chat_port}",
            "SWITCHBOARD__API__BIND": f"{HOST}:{self.api_port}",
            "SWITCHBOARD__STORAGE__DATA_DIR": self.data_dir,
        })
        cmd = [binary]
        if cpu is not None:
            cmd = ["taskset", "-c", str(cpu)] + cmd
        self.log = open(self.log_path, "wb")
        # taskset execs the binary: the child's pid is the server's.
        self.proc = subprocess.Popen(cmd, env=env, stdout=self.log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)
        self.pid = self.proc.pid
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited at start ({self.proc.returncode}); log {self.log_path}")
            if self.healthy():
                return
            time.sleep(0.1)
        raise RuntimeError("server did not answer /healthz within 30 s")

    def healthy(self, timeout=1.0) -> bool:
        try:
            with socket.create_connection((HOST, self.chat_port), timeout=timeout) as s:
                s.settimeout(timeout)
                s.sendall(f"GET /healthz HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode())
                return s.recv(64).startswith(b"HTTP/1.1 200")
        except OSError:
            return False

    def rss_kib(self):
        return self._status_kib("VmRSS")

    def hwm_kib(self):
        return self._status_kib("VmHWM")

    def _status_kib(self, key):
        try:
            with open(f"/proc/{self.pid}/status") as f:
                for line in f:
                    if line.startswith(key + ":"):
                        return int(line.split()[1])
        except OSError:
            return None
        return None

    def disk_bytes(self) -> int:
        out = subprocess.run(["du", "-sb", self.data_dir], capture_output=True, text=True, timeout=30)
        return int(out.stdout.split()[0])

    def files(self):
        return {name: os.path.getsize(os.path.join(self.data_dir, name))
                for name in sorted(os.listdir(self.data_dir))}

    def stop(self):
        """SIGTERM, then SIGKILL after 20 s; returns what happened."""
        res = {"alive_before_stop": self.proc.poll() is None}
        if not res["alive_before_stop"]:
            res["exit_code"] = self.proc.returncode
        else:
            t0 = time.monotonic()
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
                res["exit_code"] = self.proc.returncode
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
                res["exit_code"] = "killed after 20 s"
            res["stop_s"] = round(time.monotonic() - t0, 2)
        self.log.close()
        res["log_bytes"] = os.path.getsize(self.log_path)
        res["log"] = self.log_path
        for line in open(self.log_path, "rb").read().decode(errors="replace").splitlines():
            if '"level":"ERROR"' in line or "panicked" in line:
                res.setdefault("log_errors", []).append(line[:300])
                if len(res["log_errors"]) >= 5:
                    break
        subprocess.run(["rm", "-rf", self.data_dir], timeout=60)
        return res


# --------------------------------------------------------------------------------------------
# Helpers.
# --------------------------------------------------------------------------------------------

def pct(values, p):
    if not values:
        return None
    s = sorted(values)
    k = min(len(s) - 1, max(0, int(round(p / 100 * (len(s) - 1)))))
    return s[k]


def summary_ms(values):
    return {
        "n": len(values),
        "p50_ms": round(pct(values, 50) * 1000, 3) if values else None,
        "p99_ms": round(pct(values, 99) * 1000, 3) if values else None,
        "max_ms": round(max(values) * 1000, 3) if values else None,
    }


def big_text(tag: str, n: int = 4000) -> str:
    base = f"[{tag}] " + "The quick brown fox jumps over the lazy dog; invoice INV-1009 is wrong. "
    return (base * (n // len(base) + 1))[:n]


# --------------------------------------------------------------------------------------------
# preflood
# --------------------------------------------------------------------------------------------

def attacker_main(args):
    """One flooding attacker (a child process): upgrade, wait for start_at, flood for flood_s."""
    os.nice(10)  # leave the probe (same core) the CPU when it wakes up
    res = {"ws_pongs": 0, "app_pongs": 0, "errors": {}, "other_frames": 0, "frames_sent": 0,
           "close_code": None, "closed_at_s": None}
    try:
        c = WsClient(args.port)
    except Exception as e:  # noqa: BLE001 - reported, not raised
        res["handshake_error"] = str(e)
        print(json.dumps(res), flush=True)
        return
    unit = encode_frame(OP_PING, b"atk!") + text_frame({"type": "ping"})
    chunk = unit * 256
    c.sock.setblocking(False)
    pending = b""
    sent_bytes = 0
    while time.time() < args.start_at:
        time.sleep(0.001)
    t0 = time.monotonic()
    end = t0 + args.flood_s
    drain_end = end + 0.5

    def consume(frames):
        for op, payload in frames:
            if op == OP_PONG:
                res["ws_pongs"] += 1
            elif op == OP_TEXT:
                try:
                    f = json.loads(payload)
                except ValueError:
                    res["other_frames"] += 1
                    continue
                if f.get("type") == "pong":
                    res["app_pongs"] += 1
                elif f.get("type") == "error":
                    code = f.get("code")
                    res["errors"][code] = res["errors"].get(code, 0) + 1
                else:
                    res["other_frames"] += 1
            elif op == OP_CLOSE:
                res["close_code"] = close_code_of(payload)
                res["closed_at_s"] = round(time.monotonic() - t0, 3)

    while True:
        now = time.monotonic()
        if now >= drain_end or c.closed_code is not None:
            break
        flooding = now < end
        wset = [c.sock] if flooding else []
        r, w, _ = select.select([c.sock], wset, [], 0.05)
        if r:
            consume(c.read_available())
            if c.closed_code is not None and res["closed_at_s"] is None:
                res["close_code"] = c.closed_code
                res["closed_at_s"] = round(time.monotonic() - t0, 3)
        if w and flooding:
            if not pending:
                pending = chunk
            try:
                n = c.sock.send(pending)
                sent_bytes += n
                pending = pending[n:]
            except BlockingIOError:
                pass
            except (BrokenPipeError, ConnectionResetError):
                c.closed_code = c.closed_code or "reset"
                res["close_code"] = res["close_code"] or "reset"
                res["closed_at_s"] = res["closed_at_s"] or round(time.monotonic() - t0, 3)
    res["frames_sent"] = 2 * (sent_bytes // len(unit))
    res["bytes_sent"] = sent_bytes
    c.sock.close()
    print(json.dumps(res), flush=True)


def attack_preflood(server: Server, args):
    probe, _ = start_session(server.chat_port)
    probe.sock.settimeout(None)
    interval = 0.010
    baseline_s, flood_s, after_s = 1.0, 2.0, 1.0
    samples = []  # (send time, rtt or None, reply kind)
    attackers = []

    def one_ping():
        t = time.monotonic()
        probe.send_obj({"type": "ping"})
        while True:
            f = probe.next_json(2.0)
            if f is None:
                return t, None, "timeout" if probe.closed_code is None else f"closed {probe.closed_code}"
            kind = f.get("type")
            if kind == "pong":
                return t, time.monotonic() - t, "pong"
            if kind == "error":
                return t, time.monotonic() - t, f"error {f.get('code')}"
            # other server frames (presence, ...) are not an answer

    start_wall = time.time()
    t_start = time.monotonic()
    flood_at = t_start + baseline_s  # monotonic
    launched = False
    tick = t_start
    while True:
        now = time.monotonic()
        if not launched and now >= flood_at - 0.6:
            # the attackers upgrade ~0.6 s ahead and start flooding together at flood_at
            start_at = start_wall + (flood_at - t_start)
            for _ in range(args.attackers):
                attackers.append(subprocess.Popen(
                    [sys.executable, os.path.abspath(__file__), "--role", "attacker",
                     "--port", str(server.chat_port), "--start-at", repr(start_at),
                     "--flood-s", str(flood_s)],
                    stdout=subprocess.PIPE, text=True))
            launched = True
        if now >= flood_at + flood_s + after_s:
            break
        if probe.closed_code is not None:
            break
        samples.append(one_ping())
        tick += interval
        delay = tick - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        else:
            tick = time.monotonic()
    att_results = []
    for p in attackers:
        try:
            out, _ = p.communicate(timeout=30)
            att_results.append(json.loads(out.strip().splitlines()[-1]))
        except (subprocess.TimeoutExpired, ValueError, IndexError) as e:
            p.kill()
            att_results.append({"error": f"attacker failed: {e}"})

    def phase(lo, hi):
        sel = [s for s in samples if lo <= s[0] < hi]
        rtts = [s[1] for s in sel if s[1] is not None]
        kinds = {}
        for s in sel:
            kinds[s[2]] = kinds.get(s[2], 0) + 1
        out = summary_ms(rtts)
        out["replies"] = kinds
        return out

    res = {
        "probe_before": phase(t_start, flood_at),
        "probe_during": phase(flood_at, flood_at + flood_s),
        "probe_after": phase(flood_at + flood_s, flood_at + flood_s + after_s),
        "probe_closed": probe.closed_code,
        "attackers": att_results,
        "attacker_ws_pongs": sum(a.get("ws_pongs", 0) for a in att_results),
        "attacker_app_pongs": sum(a.get("app_pongs", 0) for a in att_results),
        "attacker_frames_sent": sum(a.get("frames_sent", 0) for a in att_results),
        "attacker_close": [(a.get("close_code"), a.get("closed_at_s")) for a in att_results],
        "server_rss_kib_end": server.rss_kib(),
    }
    probe.close()
    return res


# --------------------------------------------------------------------------------------------
# history
# --------------------------------------------------------------------------------------------

def attack_history(server: Server, args):
    n_sessions, duration = 20, 10.0
    time.sleep(1.0)
    rss_before = server.rss_kib()
    clients = []
    for i in range(n_sessions):
        c, _ = start_session(server.chat_port)
        c.sock.settimeout(5.0)
        clients.append(c)
    rss_sessions = server.rss_kib()
    state = {c.fileno(): {"c": c, "i": i, "seq": 0, "outstanding": None, "acked": 0, "sent": 0}
             for i, c in enumerate(clients)}
    errors = {}
    closes = {}
    rss_peak = rss_sessions or 0
    texts = [big_text(f"s{i}") for i in range(n_sessions)]

    def send_next(st):
        st["seq"] += 1
        cid = f"s{st['i']}-m{st['seq']}"
        frame = {"type": "message.send", "client_id": cid, "text": texts[st["i"]]}
        st["c"].send_obj(frame)
        st["outstanding"] = cid
        st["sent"] += 1

    t0 = time.monotonic()
    end = t0 + duration
    last_rss = t0
    for st in state.values():
        send_next(st)
    while True:
        now = time.monotonic()
        if now >= end:
            break
        if now - last_rss >= 0.5:
            r = server.rss_kib() or 0
            rss_peak = max(rss_peak, r)
            last_rss = now
        live = [st["c"].sock for st in state.values() if st["c"].closed_code is None]
        if not live:
            break
        r, _, _ = select.select(live, [], [], min(0.1, max(0.0, end - now)))
        for sock in r:
            st = state[sock.fileno()]
            c = st["c"]
            for op, payload in c.read_available():
                if op != OP_TEXT:
                    continue
                f = json.loads(payload)
                kind = f.get("type")
                if kind == "message.ack" and f.get("client_id") == st["outstanding"]:
                    st["acked"] += 1
                    st["outstanding"] = None
                elif kind == "error" and st["outstanding"] is not None and f.get("client_id") in (
                        st["outstanding"], None):
                    # one frame outstanding per session, answers in order (the old binary's
                    # rate_limited error names no client_id)
                    errors[f.get("code")] = errors.get(f.get("code"), 0) + 1
                    st["outstanding"] = None  # rate_limited / server_busy: keep going
                elif kind == "error":
                    errors[f.get("code")] = errors.get(f.get("code"), 0) + 1
            if c.closed_code is not None:
                closes[str(c.closed_code)] = closes.get(str(c.closed_code), 0) + 1
                continue
            if st["outstanding"] is None and time.monotonic() < end:
                try:
                    send_next(st)
                except OSError as e:
                    c.closed_code = c.closed_code or f"send {type(e).__name__}"
                    closes[str(c.closed_code)] = closes.get(str(c.closed_code), 0) + 1
    elapsed = time.monotonic() - t0
    # drain for 1 s (acks of the last frames, server messages) with the sessions still open
    drain_end = time.monotonic() + 1.0
    while time.monotonic() < drain_end:
        live = [st["c"].sock for st in state.values() if st["c"].closed_code is None]
        if not live:
            break
        r, _, _ = select.select(live, [], [], 0.1)
        for sock in r:
            state[sock.fileno()]["c"].read_available()
    rss_after = server.rss_kib()
    hwm = server.hwm_kib()
    acked = [st["acked"] for st in state.values()]
    res = {
        "sessions": n_sessions,
        "text_chars": 4000,
        "frame_bytes": len(text_frame({"type": "message.send", "client_id": "s19-m99999",
                                        "text": texts[19]})),
        "duration_s": round(elapsed, 2),
        "messages_sent": sum(st["sent"] for st in state.values()),
        "messages_acked": sum(acked),
        "acked_per_session_min_max": [min(acked), max(acked)],
        "errors": errors,
        "closes": closes,
        "rss_before_mib": round(rss_before / 1024, 1),
        "rss_sessions_open_mib": round(rss_sessions / 1024, 1),
        "rss_peak_sampled_mib": round(rss_peak / 1024, 1),
        "rss_after_mib": round(rss_after / 1024, 1) if rss_after else None,
        "rss_growth_mib": round((rss_after - rss_before) / 1024, 1) if rss_after else None,
        "vmhwm_mib": round(hwm / 1024, 1) if hwm else None,
    }
    for c in clients:
        c.close()
    return res


# --------------------------------------------------------------------------------------------
# tickets
# --------------------------------------------------------------------------------------------

def attack_tickets(server: Server, args):
    n_msgs, n_tickets, burst_s = 40, 40, 0.3
    time.sleep(1.0)
    du_before = server.disk_bytes()
    files_before = server.files()
    c, _ = start_session(server.chat_port)
    c.sock.settimeout(5.0)
    text = big_text("t")
    acked, msg_errors, retries = 0, {}, 0
    t0 = time.monotonic()
    deadline = t0 + 20.0
    for i in range(n_msgs):
        cid = f"t-m{i}"
        while time.monotonic() < deadline:
            c.send_obj({"type": "message.send", "client_id": cid, "text": text})
            answer = None
            while answer is None and time.monotonic() < deadline:
                f = c.next_json(5.0)
                if f is None:
                    break
                if (f.get("type") == "message.ack" and f.get("client_id") == cid) or (
                        f.get("type") == "error" and f.get("client_id") in (cid, None)):
                    answer = f
            if answer is None:
                break
            if answer["type"] == "message.ack":
                acked += 1
                break
            code = answer.get("code")
            msg_errors[code] = msg_errors.get(code, 0) + 1
            if code not in ("rate_limited", "server_busy"):
                break
            retries += 1
            time.sleep(0.06)  # the same client_id again: rate-limited frames were dropped
        if c.closed_code is not None:
            break
    msgs_s = time.monotonic() - t0
    # let the frame bucket refill (burst 40 at 20/s) so that the rate limit is not what refuses tickets
    time.sleep(2.1)
    du_after_msgs = server.disk_bytes()
    t1 = time.monotonic()
    for i in range(n_tickets):
        target = t1 + i * (burst_s / n_tickets)
        d = target - time.monotonic()
        if d > 0:
            time.sleep(d)
        try:
            c.send_obj({"type": "ticket.create", "subject": f"Attack ticket {i}",
                        "description": "created by scripts/chat-attacks.py"})
        except OSError:
            break
    sent_s = time.monotonic() - t1
    created, refused = 0, {}
    other = {}
    end = time.monotonic() + 15.0
    while created + sum(refused.values()) < n_tickets and time.monotonic() < end:
        f = c.next_json(max(0.0, end - time.monotonic()))
        if f is None:
            break
        kind = f.get("type")
        if kind == "ticket.created":
            created += 1
        elif kind == "error":
            refused[f.get("code")] = refused.get(f.get("code"), 0) + 1
        else:
            other[kind] = other.get(kind, 0) + 1
    answered_s = time.monotonic() - t1
    time.sleep(1.0)
    du_after = server.disk_bytes()
    res = {
        "messages_acked": acked,
        "message_errors": msg_errors,
        "message_retries": retries,
        "messages_s": round(msgs_s, 2),
        "ticket_frames_sent_in_s": round(sent_s, 3),
        "tickets_created": created,
        "tickets_refused": refused,
        "answers_within_s": round(answered_s, 2),
        "other_frames": other,
        "closed": c.closed_code,
        "du_before_bytes": du_before,
        "du_after_messages_bytes": du_after_msgs,
        "du_after_bytes": du_after,
        "disk_growth_mib": round((du_after - du_before) / 2**20, 2),
        "files_before": files_before,
        "files_after": server.files(),
        "server_rss_mib_end": round((server.rss_kib() or 0) / 1024, 1),
    }
    c.close()
    return res


# --------------------------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--binary", help="the switchboard release binary")
    ap.add_argument("--attack", choices=["preflood", "history", "tickets"])
    ap.add_argument("--attackers", type=int, default=1, help="preflood: attacker sockets (processes)")
    ap.add_argument("--label", default="", help="a name for the binary in the output (old/new)")
    ap.add_argument("--server-cpu", default="0", help="taskset CPU list for the server; '' for none")
    # internal: one preflood attacker
    ap.add_argument("--role", default="main", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--start-at", type=float, help=argparse.SUPPRESS)
    ap.add_argument("--flood-s", type=float, default=2.0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.role == "attacker":
        attacker_main(args)
        return
    if not args.binary or not args.attack:
        ap.error("--binary and --attack are required")
    out = {"attack": args.attack, "label": args.label,
           "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
           "script_cpus": sorted(os.sched_getaffinity(0)), "server_cpus": args.server_cpu}
    if args.attack == "preflood":
        out["attackers_n"] = args.attackers
    out.update(binary_version(args.binary))
    server = Server(args.binary, args.server_cpu or None)
    out["server_pid"] = server.pid
    try:
        fn = {"preflood": attack_preflood, "history": attack_history, "tickets": attack_tickets}
        out["result"] = fn[args.attack](server, args)
    except Exception as e:  # noqa: BLE001 - the run is reported with its error
        out["error"] = f"{type(e).__name__}: {e}"
    out["server_healthy_after"] = server.healthy(timeout=2.0)
    out["server"] = server.stop()
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
