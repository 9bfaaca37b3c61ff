#!/usr/bin/env bash
# Smoke load, the regression guard of issue 7: `sluice loadtest` against `sluice serve` on the
# built-in mock provider — 10 s closed model (16 workers, half the prompts repeated), then 5 s
# of streams in the open model (100/s). Fails when any request failed or was lost, when none
# was answered, or when repeated prompts got no cache hit; never on timing (the figures are
# printed for the log only). About 20 s. (The k6 script runs under real k6 in infra/k6/check.sh.)
# Usage: infra/bench/smoke-load.sh [SLUICE_BIN=target/debug/sluice]   (needs curl, python3)
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=${1:-target/debug/sluice}
source infra/lib/mock-serve.sh
start_mock_serve "$BIN" smoke
echo "sluice serve (mock provider) at $url"

# name, whether cache hits are expected, then loadtest options. Prints the figures; fails on
# errors, lost requests, no answers, or (when expected) no cache hit.
load() {
    local name=$1 want_hits=$2
    shift 2
    local rc=0
    "$work/sluice" loadtest --url "$url" --key "$key" --json --fail-on-error "$@" \
        >"$work/$name.json" || rc=$?
    python3 - "$name" "$want_hits" "$work/$name.json" "$rc" <<'EOF'
import json, sys
name, want_hits, path, rc = sys.argv[1], sys.argv[2] == "hits", sys.argv[3], int(sys.argv[4])
try:
    s = json.load(open(path))
except ValueError:
    sys.exit(f"smoke load {name} FAILED: sluice loadtest exited {rc} without a JSON summary")
lat = s["latency_ms"] or {}
print(f"{name}: {s['sent']} sent, {s['ok']} ok, {s['errors']} errors {s['errors_by_status']}, "
      f"{s['lost']} lost, {s['dropped']} dropped, {s['rps']} req/s, p50 {lat.get('p50')} ms, "
      f"p99 {lat.get('p99')} ms, cache hits {s['cache_hits']}"
      + (f", ttfb p50 {s['ttfb_ms']['p50']} ms" if s["ttfb_ms"] else ""))
problems = []
if s["errors"] or s["lost"]:
    problems.append(f"{s['errors']} failed and {s['lost']} lost requests")
if s["ok"] == 0:
    problems.append("no request was answered")
if want_hits and s["cache_hits"] == 0:
    problems.append("repeated prompts got no cache hit")
if rc != 0 and not problems:
    problems.append(f"sluice loadtest exited {rc}")
if problems:
    sys.exit(f"smoke load {name} FAILED: " + "; ".join(problems))
EOF
}

load closed hits --model gpt-4o-mini --concurrency 16 --duration 10s --repeat 0.5
load open-stream hits --model gpt-4o-mini --stream --rate 100 --duration 5s --repeat 0.3

if ! kill -0 "$server_pid" 2>/dev/null; then
    echo "sluice serve died during the smoke load:"
    tail -20 "$work/serve.err"
    exit 1
fi
echo "smoke load passed"
