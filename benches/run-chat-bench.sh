#!/usr/bin/env bash
# One chat benchmark run against switchboard and against the plain-tokio baseline
# (benches/baseline_echo.rs), the same workload for both, servers pinned to one core and the load
# tool (with its workers and the fake Django) to the other. Prints each run's summary, then
# switchboard ÷ baseline for memory per session and for the round-trip percentiles.
#
#   benches/run-chat-bench.sh                          # 10,000 sessions, 1 msg/s each, 60 s
#   SESSIONS=19000 MSG_RATE=0 DURATION=10 benches/run-chat-bench.sh   # idle: memory per session
#
# Settings (environment): SESSIONS, RAMP_RATE, MSG_RATE, DURATION, SERVER_CPUS (0),
# CLIENT_CPUS (1), OUT (a directory for the JSON reports; default target/chat-bench), EXTRA (more
# arguments for both `switchboard-load chat` runs, e.g. `--sources 16`; not --storm: the baseline
# keeps no history to replay).
set -euo pipefail
cd "$(dirname "$0")/.."

SESSIONS="${SESSIONS:-10000}"
RAMP_RATE="${RAMP_RATE:-1000}"
MSG_RATE="${MSG_RATE:-1}"
DURATION="${DURATION:-60}"
SERVER_CPUS="${SERVER_CPUS:-0}"
CLIENT_CPUS="${CLIENT_CPUS:-1}"
OUT="${OUT:-target/chat-bench}"
EXTRA="${EXTRA:-}"
mkdir -p "$OUT"

cargo build --release --bins
load=target/release/switchboard-load
baseline=$(cargo bench --bench baseline_echo --no-run 2>&1 |
    sed -n 's/^ *Executable .*(\(.*baseline_echo-[^)]*\))$/\1/p' | tail -1)
[ -x "$baseline" ] || { echo "could not find the baseline_echo bench binary" >&2; exit 1; }

workload=(--sessions "$SESSIONS" --ramp-rate "$RAMP_RATE" --msg-rate "$MSG_RATE" --duration "$DURATION")

echo "== switchboard (server on CPU $SERVER_CPUS, load tool and fake Django on CPU $CLIENT_CPUS)"
# shellcheck disable=SC2086
taskset -c "$CLIENT_CPUS" "$load" chat "${workload[@]}" --label switchboard \
    --spawn-fake-django --server-cpus "$SERVER_CPUS" --report "$OUT/switchboard.json" $EXTRA

echo "== baseline (plain tokio, one task per connection)"
coproc BASE { exec taskset -c "$SERVER_CPUS" "$baseline" serve; }
# bash forgets BASE_PID once the coprocess ends: keep it.
base_pid=$BASE_PID
trap 'kill "$base_pid" 2>/dev/null || true' EXIT
read -r line <&"${BASE[0]}"
addr="${line#listening }"
# shellcheck disable=SC2086
taskset -c "$CLIENT_CPUS" "$load" chat "${workload[@]}" --label baseline \
    --chat-addr "$addr" --server-pid "$base_pid" --report "$OUT/baseline.json" $EXTRA
kill "$base_pid"

"$load" compare "$OUT/switchboard.json" "$OUT/baseline.json"
