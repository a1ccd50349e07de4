#!/usr/bin/env bash
# WebSocket conformance: runs the Autobahn TestSuite's fuzzing client (sections 1–10; 12–13 need
# permessage-deflate, which is not offered) against examples/ws_echo.rs, an echo server on
# switchboard::transport, and fails unless every case is OK or INFORMATIONAL (also for the closing
# behaviour): FAILED, NON-STRICT, UNIMPLEMENTED, WRONG CODE or UNCLEAN fail the run.
#
#   scripts/autobahn.sh                    # all of 1.* – 10.*
#   AUTOBAHN_CASES='["6.*","7.*"]' scripts/autobahn.sh
#   AUTOBAHN_RELEASE=1 scripts/autobahn.sh # release build of the echo server (slow to build)
#
# The suite needs Python 2.7: it is installed once with pyenv's 2.7 interpreter into
# $AUTOBAHN_HOME (default ~/.cache/switchboard-autobahn) and reused. Reports go to
# target/autobahn/reports (index.html to read them).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

home="${AUTOBAHN_HOME:-$HOME/.cache/switchboard-autobahn}"
version=25.10.1
cases="${AUTOBAHN_CASES:-[\"1.*\", \"2.*\", \"3.*\", \"4.*\", \"5.*\", \"6.*\", \"7.*\", \"8.*\", \"9.*\", \"10.*\"]}"
out="$root/target/autobahn"
started=$(date +%s)

py27=$(pyenv versions --bare 2>/dev/null | grep -E '^2\.7(\.|$)' | tail -n 1 || true)
if [ -z "$py27" ]; then
    echo "autobahn: no Python 2.7 in pyenv (pyenv install 2.7.18)" >&2
    exit 2
fi
export PYENV_VERSION="$py27" PYTHONUSERBASE="$home"
if ! pyenv exec python -c "import autobahntestsuite" 2>/dev/null \
    || [ ! -x "$home/bin/wstest" ]; then
    echo "autobahn: installing autobahntestsuite $version with Python $py27 into $home"
    mkdir -p "$home"
    pyenv exec pip install --quiet --user --no-warn-script-location \
        "autobahntestsuite==$version"
fi

profile=debug
build=(cargo build --example ws_echo)
if [ "${AUTOBAHN_RELEASE:-0}" = 1 ]; then
    profile=release
    build+=(--release)
fi
"${build[@]}"

rm -rf "$out"
mkdir -p "$out"
server_log="$out/server.log"
"$root/target/$profile/examples/ws_echo" 127.0.0.1:0 >"$server_log" 2>&1 &
server=$!
trap 'kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true' EXIT
addr=
for _ in $(seq 1 100); do
    addr=$(sed -n 's/^listening on //p' "$server_log")
    [ -n "$addr" ] && break
    kill -0 "$server" 2>/dev/null || { cat "$server_log" >&2; exit 1; }
    sleep 0.1
done
if [ -z "$addr" ]; then
    echo "autobahn: the echo server did not start" >&2
    exit 1
fi

sed -e "s|@OUTDIR@|$out/reports|" -e "s|@URL@|ws://$addr|" -e "s|@CASES@|$cases|" \
    scripts/autobahn-fuzzingclient.json >"$out/spec.json"
(cd "$out" && pyenv exec python "$home/bin/wstest" -m fuzzingclient -s "$out/spec.json") \
    >"$out/wstest.log" 2>&1 || {
    tail -n 30 "$out/wstest.log" >&2
    echo "autobahn: wstest failed (log: $out/wstest.log)" >&2
    exit 1
}

python3 - "$out/reports/index.json" "$(( $(date +%s) - started ))" <<'PY'
import json, sys

index = json.load(open(sys.argv[1]))
elapsed = sys.argv[2]
results = next(iter(index.values()))
counts, bad = {}, []
ok = {"OK", "INFORMATIONAL"}
for case, r in sorted(results.items(), key=lambda kv: [int(p) for p in kv[0].split(".")]):
    behavior, close = r["behavior"], r.get("behaviorClose", "OK")
    counts[behavior] = counts.get(behavior, 0) + 1
    if behavior not in ok or close not in ok:
        bad.append(f"{case}: {behavior} (close: {close})")
summary = ", ".join(f"{n} {b.lower()}" for b, n in sorted(counts.items()))
for line in bad:
    print("autobahn:", line, file=sys.stderr)
print(f"autobahn: {len(results)} cases: {summary}; {len(bad)} not ok; {elapsed} s")
sys.exit(1 if bad or not results else 0)
PY
