#!/usr/bin/env bash
# Baseline throughput/latency with wrk: the fake upstream called directly, then the same through
# `sluice serve` on a cache miss (every prompt distinct) and a cache hit (one prompt).
# Usage: infra/bench/baseline.sh [seconds=10] [connections=64]
set -euo pipefail
cd "$(dirname "$0")/../.."
SECS=${1:-10}
CONNS=${2:-64}
THREADS=$(( CONNS < 2 ? 1 : 2 ))
command -v wrk >/dev/null || { echo "needs wrk (apt-get install -y wrk)"; exit 1; }
cargo build --release --quiet -p sluice-cli -p sluice-tests --bin sluice --bin fake-upstream
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
UP=127.0.0.1:19999
GW=127.0.0.1:18088
target/release/fake-upstream $UP 2>"$work/up.log" &
sed "s#http://127.0.0.1:9999/v1#http://$UP/v1#" infra/sluice.example.toml > "$work/sluice.toml"
KEY=$(target/release/sluice keys create --tenant bench --db "$work/s.db" 2>/dev/null)
FAKE_KEY=sk-bench SLUICE_LOG=warn target/release/sluice serve --listen $GW --db "$work/s.db" \
    --config "$work/sluice.toml" >"$work/gw.log" 2>&1 &
GW_PID=$!
for _ in $(seq 100); do curl -sf "http://$GW/health" >/dev/null && break; sleep 0.1; done
body='{"model":"gpt-4o-mini","messages":[{"role":"user","content":"direct"}]}'
run() { # name, url, extra args...
    local name=$1 url=$2; shift 2
    echo "### $name"
    wrk -t"$THREADS" -c"$CONNS" -d"${SECS}s" --latency "$@" "$url" | grep -E "Latency|Requests/sec|50%|99%|Non-2xx|Socket errors"
}
echo "machine: $(nproc) cores, $(uname -m); ${SECS}s per run, $CONNS connections, wrk -t$THREADS"
run "direct to fake upstream" "http://$UP/v1/chat/completions" -s infra/bench/direct.lua
run "sluice cache miss" "http://$GW/v1/chat/completions" -s infra/bench/miss.lua -H "Authorization: Bearer $KEY"
run "sluice cache hit" "http://$GW/v1/chat/completions" -s infra/bench/hit.lua -H "Authorization: Bearer $KEY"
echo "gateway peak RSS: $(grep VmHWM /proc/$GW_PID/status | awk '{print $2/1024 " MB"}')"
