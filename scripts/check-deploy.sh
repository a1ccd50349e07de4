#!/usr/bin/env bash
# Checks the operator files in deploy/: the Prometheus alert rules load (promtool check rules) and
# pass their unit tests (promtool test rules), the Grafana dashboard is valid JSON, and every metric
# either of them queries is one Switchboard exports (src/metrics.rs), under its real type's names and
# with labels the code gives it. The cluster's HAProxy configuration passes `haproxy -c` (when
# haproxy is installed) and its compose file holds what the cluster needs (`docker compose config`
# too when compose is installed). Installs Debian's `prometheus` package for promtool when missing.
set -euo pipefail
cd "$(dirname "$0")/.."

# promtool comes with Debian's prometheus package, PyYAML (to read the rules below) with python3-yaml.
needed=()
command -v promtool >/dev/null 2>&1 || needed+=(prometheus)
python3 -c 'import yaml' 2>/dev/null || needed+=(python3-yaml)
if [ ${#needed[@]} -gt 0 ]; then
    echo "check-deploy: installing ${needed[*]}" >&2
    as_root=()
    if [ "$(id -u)" -ne 0 ]; then
        as_root=(sudo)
    fi
    # Keep the package's maintainer scripts from starting a Prometheus server on this machine: only
    # promtool is wanted. An existing policy-rc.d (container images often have one) is left alone.
    policy=/usr/sbin/policy-rc.d
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' | "${as_root[@]}" tee "$policy" >/dev/null
        "${as_root[@]}" chmod +x "$policy"
        trap '"${as_root[@]}" rm -f "$policy"' EXIT
    fi
    "${as_root[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${as_root[@]}" apt-get install -y -qq --no-install-recommends \
        "${needed[@]}" >/dev/null
    # Where a service manager started the server anyway, stop it.
    if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet prometheus 2>/dev/null; then
        "${as_root[@]}" systemctl stop prometheus
        "${as_root[@]}" systemctl disable --quiet prometheus || true
    elif [ -x /etc/init.d/prometheus ] && /etc/init.d/prometheus status >/dev/null 2>&1; then
        "${as_root[@]}" /etc/init.d/prometheus stop >/dev/null
    fi
fi

echo "check-deploy: promtool check rules"
promtool check rules deploy/prometheus/alerts.yml
echo "check-deploy: promtool test rules"
promtool test rules deploy/prometheus/alerts_test.yml

echo "check-deploy: dashboard JSON"
python3 -m json.tool deploy/grafana/switchboard.json >/dev/null

echo "check-deploy: metric names and labels"
python3 - <<'PY'
"""Every metric the rules, their tests and the dashboard query must exist in src/metrics.rs."""
import glob
import json
import re
import sys

import yaml

metrics_rs = open("src/metrics.rs").read()
# CONST -> name, and name -> type from its describe_*! call.
consts = dict(re.findall(r'pub const ([A-Z_]+): &str = "([a-z0-9_]+)";', metrics_rs))
types = {}
for kind, const in re.findall(r"describe_(counter|gauge|histogram)!\(\s*([A-Z_]+)", metrics_rs):
    types[consts[const]] = kind
missing_type = sorted(set(consts.values()) - set(types))
if missing_type:
    sys.exit(f"src/metrics.rs registers without describing: {missing_type}")
# metrics-process's gauges, as src/metrics.rs names them in its docs.
for name in re.findall(r"`(process_[a-z_]+)`", metrics_rs):
    types[name] = "gauge"

# Labels each metric is given: the `"label" =>` pairs of every counter!/gauge!/histogram! call in
# src/ (its first argument `m::CONST`, or `CONST` inside src/metrics.rs).
labels = {name: set() for name in types}
for path in glob.glob("src/**/*.rs", recursive=True):
    text = open(path).read()
    for call in re.finditer(r"\b(?:counter|gauge|histogram)!\(", text):
        depth, end = 1, call.end()
        while depth and end < len(text):
            depth += {"(": 1, ")": -1}.get(text[end], 0)
            end += 1
        args = text[call.end():end - 1]
        first = re.match(r"\s*(?:m::)?([A-Z][A-Z_]+)\s*[,)]?", args)
        if first and first.group(1) in consts:
            labels[consts[first.group(1)]].update(re.findall(r'"([a-z_]+)"\s*=>', args))
# Added by Prometheus at scrape time, or the histogram's own.
scrape_labels = {"job", "instance"}

def series_names():
    """Yields (where, metric name) for every series name a histogram suffix aside."""
    for name, kind in types.items():
        if kind == "histogram":
            for suffix in ("_bucket", "_sum", "_count"):
                yield name + suffix, name, kind
        else:
            yield name, name, kind

known = {series: (base, kind) for series, base, kind in series_names()}
known["up"] = ("up", "gauge")  # Prometheus's own, per scrape target.
labels["up"] = set()

name_re = re.compile(r"\b((?:switchboard|process)_[a-z0-9_]+|up)\b(\{[^}]*\})?")
problems = []

def check(where, expr):
    for name, selector in name_re.findall(expr):
        if name == "up" and not selector:
            continue  # the word, not the metric
        if name not in known:
            problems.append(f"{where}: `{name}` is not a metric Switchboard exports")
            continue
        base, kind = known[name]
        allowed = labels[base] | scrape_labels | ({"le"} if name.endswith("_bucket") else set())
        for label in re.findall(r"([a-z_]+)\s*(?:=~|!~|!=|=)", selector or ""):
            if label not in allowed:
                problems.append(f"{where}: `{name}` has no label `{label}` (it has {sorted(labels[base])})")
    for fn, name in re.findall(r"\b(rate|increase|irate)\((switchboard_[a-z0-9_]+)", expr):
        if name in known and known[name][1] == "gauge":
            problems.append(f"{where}: {fn}() of the gauge `{name}`")
    for name in re.findall(r"\b(switchboard_[a-z0-9_]+)\b", expr):
        if name in types and types[name] == "histogram":
            problems.append(f"{where}: the histogram `{name}` is queried without _bucket/_sum/_count")

used = 0
rules = yaml.safe_load(open("deploy/prometheus/alerts.yml"))
for group in rules["groups"]:
    for rule in group["rules"]:
        used += 1
        check(f"alerts.yml {rule.get('alert') or rule.get('record')}", rule["expr"])
tests = yaml.safe_load(open("deploy/prometheus/alerts_test.yml"))
for case in tests["tests"]:
    for series in case.get("input_series", []):
        check("alerts_test.yml input series", series["series"])

def walk(node, where):
    global used
    if isinstance(node, dict):
        title = node.get("title", where)
        if isinstance(node.get("expr"), str):
            used += 1
            check(f"switchboard.json panel {title!r}", node["expr"])
        if isinstance(node.get("query"), str) and "label_values" in node["query"]:
            check(f"switchboard.json variable {node.get('name')!r}", node["query"])
        for value in node.values():
            walk(value, title)
    elif isinstance(node, list):
        for value in node:
            walk(value, where)

walk(json.load(open("deploy/grafana/switchboard.json")), "dashboard")
if problems:
    print("\n".join(problems), file=sys.stderr)
    sys.exit(1)
print(f"check-deploy: {used} expressions use only metrics and labels Switchboard exports")
PY
# The cluster: HAProxy's configuration and the compose file that runs it with three nodes.
if command -v haproxy >/dev/null 2>&1; then
    echo "check-deploy: haproxy -c deploy/haproxy.cfg"
    # The node host names need not resolve here (init-addr ... none): its warnings about them are
    # expected, so its output is shown only when the check fails.
    if ! out=$(haproxy -c -f deploy/haproxy.cfg 2>&1); then
        echo "$out" >&2
        exit 1
    fi
else
    echo "check-deploy: haproxy is not installed (apt-get install haproxy); deploy/haproxy.cfg not checked" >&2
fi

echo "check-deploy: deploy/docker-compose.cluster.yml"
# Placeholders for the secrets compose insists on; nothing is started.
secrets=(POSTGRES_PASSWORD=check SWITCHBOARD_API_KEY=check SWITCHBOARD_METRICS_TOKEN=check)
if docker compose version >/dev/null 2>&1; then
    env "${secrets[@]}" docker compose -f deploy/docker-compose.cluster.yml config -q
elif command -v docker-compose >/dev/null 2>&1; then
    env "${secrets[@]}" docker-compose -f deploy/docker-compose.cluster.yml config -q
fi
# Without compose (or with it): what the cluster needs of the file, and that it agrees with
# deploy/haproxy.cfg.
python3 - <<'PY'
import os
import re
import sys

import yaml

path = "deploy/docker-compose.cluster.yml"
doc = yaml.safe_load(open(path))  # resolves the `<<:` merges as compose does
problems = []
services = doc.get("services") or {}
volumes = set((doc.get("volumes") or {}).keys())

cfg = open("deploy/haproxy.cfg").read()
servers = re.findall(r"^\s*server\s+(\S+)\s+(\S+):(\d+)", cfg, re.M)
nodes = sorted({host for _, host, _ in servers})
if not nodes:
    problems.append("deploy/haproxy.cfg has no servers")

for name in nodes + ["nats", "postgres", "haproxy"]:
    if name not in services:
        problems.append(f"{path}: no service `{name}` (deploy/haproxy.cfg needs it)")
for name, service in services.items():
    if not service.get("image"):
        problems.append(f"{path}: service `{name}` has no image")
    if not isinstance(service.get("healthcheck", {}).get("test"), list):
        problems.append(f"{path}: service `{name}` has no healthcheck")
    for mount in service.get("volumes", []):
        source = mount.split(":")[0]
        if source.startswith((".", "/")):
            if not os.path.exists(os.path.join("deploy", source)):
                problems.append(f"{path}: `{name}` mounts {source}, which does not exist")
        elif source not in volumes:
            problems.append(f"{path}: `{name}` uses the volume `{source}`, not declared")
for name in nodes:
    env = (services.get(name) or {}).get("environment") or {}
    if env.get("SWITCHBOARD__CLUSTER__NODE_ID") != name:
        problems.append(f"{path}: `{name}` has not SWITCHBOARD__CLUSTER__NODE_ID={name}")
    for key in ("SWITCHBOARD__CLUSTER__NATS_URL", "SWITCHBOARD__STORAGE__POSTGRES_URL"):
        if not env.get(key):
            problems.append(f"{path}: `{name}` has no {key}")
mounted = [v for v in services.get("haproxy", {}).get("volumes", []) if "haproxy.cfg" in v]
if not mounted:
    problems.append(f"{path}: haproxy does not mount deploy/haproxy.cfg")
if problems:
    print("\n".join(problems), file=sys.stderr)
    sys.exit(1)
print(f"check-deploy: {len(services)} services, nodes {', '.join(nodes)} as deploy/haproxy.cfg names them")
PY

echo "check-deploy: ok"
