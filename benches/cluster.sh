#!/usr/bin/env bash
# A local cluster for the figures in BENCHMARKS.md ("A cluster of nodes"): a throwaway PostgreSQL
# and NATS (scripts/postgres.sh, scripts/nats.sh), a fake Django (switchboard-load fake-django),
# and NODES release-built nodes on 127.0.0.1, each with its own ports and data dir.
#
#   benches/cluster.sh up [NODES] [HANDOFF_RATE]   # prints each node's chat and api address, pid
#   benches/cluster.sh down
#
# Node i (from 1) serves chat on 127.0.0.1:1410i and REST on 127.0.0.1:1400i; agents sign in with
# the secret in $DIR/agent-secret. Everything lives under $DIR (default /tmp/sb-cluster).
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${DIR:-/tmp/sb-cluster}
BIN=${BIN:-target/release}
cmd=${1:-}

down() {
    for pid in "$DIR"/*.pid; do
        [ -e "$pid" ] || continue
        kill "$(cat "$pid")" 2>/dev/null || true
        rm -f "$pid"
    done
    scripts/nats.sh stop "$DIR/nats" >/dev/null 2>&1 || true
    scripts/postgres.sh stop "$DIR/pg" >/dev/null 2>&1 || true
}

case "$cmd" in
up)
    nodes=${2:-3}
    handoff=${3:-0}
    down
    rm -rf "$DIR" && mkdir -p "$DIR"
    pg_url=$(scripts/postgres.sh start "$DIR/pg" 15432 | tail -1)
    scripts/nats.sh start "$DIR/nats" 14222 >/dev/null
    "$BIN/switchboard-load" fake-django --listen 127.0.0.1:14999 --handoff-rate "$handoff" \
        >"$DIR/django.log" 2>&1 &
    echo $! >"$DIR/django.pid"
    secret=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
    echo "$secret" >"$DIR/agent-secret"
    for i in $(seq 1 "$nodes"); do
        mkdir -p "$DIR/node$i"
        SWITCHBOARD__CLUSTER__NODE_ID="node$i" \
        SWITCHBOARD__CLUSTER__NATS_URL="nats://127.0.0.1:14222" \
        SWITCHBOARD__STORAGE__POSTGRES_URL="$pg_url" \
        SWITCHBOARD__STORAGE__DATA_DIR="$DIR/node$i" \
        SWITCHBOARD__API__BIND="127.0.0.1:1400$i" \
        SWITCHBOARD__CHAT__BIND="127.0.0.1:1410$i" \
        SWITCHBOARD__DJANGO__BASE_URL="http://127.0.0.1:14999" \
        SWITCHBOARD__AGENTS__JWT_SECRET="$secret" \
        SWITCHBOARD__AGENTS__MAX_CAPACITY=10000 \
        SWITCHBOARD__SESSIONS__ADMISSION_PER_SEC=100000 \
        SWITCHBOARD__SESSIONS__ADMISSION_BURST=100000 \
        SWITCHBOARD__LOG__LEVEL="warn,switchboard=info,switchboard::chat=warn,switchboard::http=warn" \
            "$BIN/switchboard" >"$DIR/node$i.log" 2>&1 &
        echo $! >"$DIR/node$i.pid"
    done
    for i in $(seq 1 "$nodes"); do
        for _ in $(seq 1 200); do
            if curl -fs "http://127.0.0.1:1400$i/readyz" >/dev/null 2>&1; then break; fi
            sleep 0.1
        done
        echo "node$i chat=127.0.0.1:1410$i api=127.0.0.1:1400$i pid=$(cat "$DIR/node$i.pid")"
    done
    ;;
down) down ;;
*)
    echo "usage: $0 up [NODES] [HANDOFF_RATE] | down" >&2
    exit 2
    ;;
esac
