#!/usr/bin/env python3
"""A node of a cluster killed under its customers: how long until every one of them resumed on
another node, and whether any acknowledged message was lost (BENCHMARKS.md, "A cluster of nodes").

    benches/cluster.sh up 3
    pip install websockets
    benches/cluster_kill.py --sessions 2000 --on 127.0.0.1:14101 --pid $(cat /tmp/sb-cluster/node1.pid) \
        --resume-on 127.0.0.1:14102,127.0.0.1:14103

Each customer starts a session on the node to kill, sends a message and waits for its ack. Then the
node is killed (SIGKILL: nothing flushed, no client told), and every customer resumes at once on the
other nodes (spread round robin, as a load balancer would), waiting for `session.resumed` and the
replay of its acknowledged message at the seq it was acked with.
"""

import argparse
import asyncio
import json
import os
import signal
import statistics
import time

import websockets


async def open_one(addr, i, opened):
    ws = await websockets.connect(f"ws://{addr}/ws/chat", max_size=None, open_timeout=60, compression=None, subprotocols=["switchboard.v1"])
    await ws.send(json.dumps({"type": "session.start"}))
    started = None
    while started is None:
        f = json.loads(await ws.recv())
        if f["type"] == "session.started":
            started = f
    await ws.send(json.dumps({"type": "message.send", "client_id": f"k{i}", "text": f"before {i}"}))
    while True:
        f = json.loads(await ws.recv())
        if f["type"] == "message.ack":
            opened.append((started, f["seq"], ws))
            return


async def resume_one(addr, started, acked_seq, t0):
    for _ in range(50):
        try:
            ws = await websockets.connect(f"ws://{addr}/ws/chat", max_size=None, open_timeout=30, compression=None, subprotocols=["switchboard.v1"])
            break
        except (OSError, websockets.exceptions.InvalidStatus):
            await asyncio.sleep(0.05)
    else:
        return None, False
    await ws.send(json.dumps({
        "type": "session.resume", "session_id": started["session_id"],
        "resume_token": started["resume_token"], "last_seq": 0,
    }))
    found = False
    resumed_at = None
    async with ws:
        while True:
            f = json.loads(await asyncio.wait_for(ws.recv(), 30))
            if f["type"] == "session.resumed":
                resumed_at = time.monotonic() - t0
                if f["seq"] < acked_seq:
                    return resumed_at, False
            elif f["type"] == "error":
                return None, False
            elif f.get("seq") == acked_seq:
                found = f.get("text") is not None
                return resumed_at, found


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sessions", type=int, default=1000)
    ap.add_argument("--on", required=True, help="chat address of the node to kill")
    ap.add_argument("--pid", type=int, required=True, help="its pid")
    ap.add_argument("--resume-on", required=True, help="chat addresses of the others, comma-separated")
    args = ap.parse_args()
    others = args.resume_on.split(",")

    opened = []
    sem = asyncio.Semaphore(200)

    async def guarded(i):
        async with sem:
            await open_one(args.on, i, opened)

    await asyncio.gather(*(guarded(i) for i in range(args.sessions)))
    print(f"{len(opened)} sessions open on {args.on}, each with an acknowledged message")

    os.kill(args.pid, signal.SIGKILL)
    t0 = time.monotonic()
    for _, _, ws in opened:
        ws.transport.abort()
    results = await asyncio.gather(*(
        resume_one(others[i % len(others)], started, seq, t0)
        for i, (started, seq, _) in enumerate(opened)
    ))
    done = [r for r, ok in results if r is not None]
    lost = sum(1 for r, ok in results if not ok)
    print(json.dumps({
        "sessions": len(opened),
        "resumed": len(done),
        "acknowledged_lost": lost,
        "all_resumed_s": round(max(done), 3) if done else None,
        "resume_p50_ms": round(statistics.median(done) * 1000, 1) if done else None,
        "resume_p99_ms": round(sorted(done)[int(len(done) * 0.99) - 1] * 1000, 1) if done else None,
    }))


asyncio.run(main())
