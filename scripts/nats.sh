#!/usr/bin/env bash
# A throwaway NATS server for tests and local clusters, from Debian's `nats-server` package (2.9).
#
#   scripts/nats.sh start DIR PORT [OPTION...]
#                                    start nats-server on 127.0.0.1:PORT with JetStream on and its
#                                    store in DIR/js (kept across a stop and start: a restarted
#                                    server finds its streams again), its pid in DIR/nats.pid and
#                                    its log in DIR/nats.log; wait until the port answers, print
#                                    its URL. Further options go to nats-server as they are (e.g.
#                                    -c FILE for users by NKey, --tls... for TLS)
#   scripts/nats.sh stop DIR         stop it (SIGTERM, SIGKILL if it has not exited after 10 s) and
#                                    leave DIR to its owner
set -euo pipefail

usage() { echo "usage: $0 start DIR PORT | stop DIR" >&2; exit 2; }

cmd=${1:-}
dir=${2:-}
[ -n "$cmd" ] && [ -n "$dir" ] || usage

# The pid in DIR/nats.pid when that process still runs, else nothing.
running_pid() {
    local pid
    pid=$(cat "$dir/nats.pid" 2>/dev/null || true)
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
        echo "$pid"
    fi
}

case "$cmd" in
start)
    port=${3:-}
    [ -n "$port" ] || usage
    shift 3
    bin=$(command -v nats-server || true)
    if [ -z "$bin" ]; then
        echo "nats.sh: nats-server is not installed (apt-get install nats-server)" >&2
        exit 1
    fi
    mkdir -p "$dir/js"
    if [ -n "$(running_pid)" ]; then
        echo "nats.sh: a server started from $dir still runs (pid $(running_pid))" >&2
        exit 1
    fi
    # In the background, its output in the log: the server outlives this script, whose caller may
    # be reading the script's own output to its end.
    "$bin" -a 127.0.0.1 -p "$port" -js -sd "$dir/js" -P "$dir/nats.pid" "$@" \
        >>"$dir/nats.log" 2>&1 </dev/null &
    pid=$!
    # Ready once the port answers with the server's INFO line. JetStream reads its store back
    # before the client port opens, so a restarted server is ready for streams when it answers.
    for _ in $(seq 1 300); do
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "nats.sh: nats-server exited at start; its log ($dir/nats.log) ends:" >&2
            tail -n 20 "$dir/nats.log" >&2
            exit 1
        fi
        if (exec 3<>"/dev/tcp/127.0.0.1/$port" && head -c 4 <&3 | grep -q '^INFO') 2>/dev/null; then
            # -P is written by the server at start; written here too, `stop` never races it.
            echo "$pid" >"$dir/nats.pid"
            echo "nats://127.0.0.1:$port"
            exit 0
        fi
        sleep 0.1
    done
    echo "nats.sh: nats-server did not answer on 127.0.0.1:$port within 30 s" >&2
    kill "$pid" 2>/dev/null || true
    exit 1
    ;;
stop)
    pid=$(running_pid)
    [ -n "$pid" ] || exit 0
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do
        kill -0 "$pid" 2>/dev/null || { rm -f "$dir/nats.pid"; exit 0; }
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    rm -f "$dir/nats.pid"
    ;;
*)
    usage
    ;;
esac
