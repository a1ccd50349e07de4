#!/usr/bin/env bash
# A throwaway HAProxy for tests and local clusters, from Debian's `haproxy` package (2.6).
#
#   scripts/haproxy.sh start CFG DIR   check CFG (haproxy -c), run haproxy on it in the background
#                                      (foreground mode, -db) with its pid in DIR/haproxy.pid and its
#                                      output (the `log stdout` lines) in DIR/haproxy.log, and wait
#                                      until every `bind` port of CFG answers
#   scripts/haproxy.sh stop DIR        stop it (SIGTERM: at once, open connections cut; SIGKILL if it
#                                      has not exited after 10 s) and leave DIR to its owner
#
# tests/support/haproxy.rs writes CFG from deploy/haproxy.cfg with ephemeral ports.
set -euo pipefail

usage() { echo "usage: $0 start CFG DIR | stop DIR" >&2; exit 2; }

# The pid in DIR/haproxy.pid when that process still runs, else nothing.
running_pid() {
    local pid
    pid=$(cat "$1/haproxy.pid" 2>/dev/null || true)
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
        echo "$pid"
    fi
}

cmd=${1:-}
case "$cmd" in
start)
    cfg=${2:-}
    dir=${3:-}
    [ -n "$cfg" ] && [ -n "$dir" ] || usage
    if ! command -v haproxy >/dev/null 2>&1; then
        echo "haproxy.sh: haproxy is not installed (apt-get install haproxy)" >&2
        exit 1
    fi
    mkdir -p "$dir"
    if [ -n "$(running_pid "$dir")" ]; then
        echo "haproxy.sh: a haproxy started from $dir still runs (pid $(running_pid "$dir"))" >&2
        exit 1
    fi
    # A configuration error is reported here, with HAProxy's own words, rather than as a process
    # that exits.
    if ! out=$(haproxy -c -f "$cfg" 2>&1); then
        echo "haproxy.sh: $cfg does not pass haproxy -c:" >&2
        echo "$out" >&2
        exit 1
    fi
    # -db: HAProxy stays in the foreground (no daemon, no master process), so its pid is $! and its
    # log lines go to the log file; the script returns, the process runs on.
    haproxy -db -f "$cfg" >>"$dir/haproxy.log" 2>&1 </dev/null &
    pid=$!
    echo "$pid" >"$dir/haproxy.pid"
    # Every `bind ADDR:PORT` of the configuration (an empty address: all interfaces, so loopback).
    mapfile -t binds < <(awk '$1 == "bind" { print $2 }' "$cfg")
    for _ in $(seq 1 300); do
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "haproxy.sh: haproxy exited at start; its log ($dir/haproxy.log) ends:" >&2
            tail -n 20 "$dir/haproxy.log" >&2
            exit 1
        fi
        up=1
        for bind in "${binds[@]}"; do
            host=${bind%:*}
            port=${bind##*:}
            case "$host" in "" | "*" | "0.0.0.0" | "::") host=127.0.0.1 ;; esac
            if ! (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null; then
                up=
                break
            fi
        done
        [ -n "$up" ] && exit 0
        sleep 0.1
    done
    echo "haproxy.sh: haproxy did not answer on ${binds[*]} within 30 s" >&2
    kill "$pid" 2>/dev/null || true
    exit 1
    ;;
stop)
    dir=${2:-}
    [ -n "$dir" ] || usage
    pid=$(running_pid "$dir")
    [ -n "$pid" ] || exit 0
    # SIGTERM, not the soft stop (SIGUSR1): that one waits for every open WebSocket to end, which
    # `timeout tunnel` allows an hour.
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do
        kill -0 "$pid" 2>/dev/null || { rm -f "$dir/haproxy.pid"; exit 0; }
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    rm -f "$dir/haproxy.pid"
    ;;
*)
    usage
    ;;
esac
