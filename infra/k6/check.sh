#!/usr/bin/env bash
# infra/k6/sluice.js under real k6 against a running Sluice, a few seconds in each model: the
# closed model (8 VUs, plain answers, half the prompts repeated, the body from a file given by
# a path relative to where k6 starts) and the open model (constant-arrival-rate, 50/s, streams,
# 30% repeated). Fails when k6 fails (a script error, or a threshold: the answer_ok check rate,
# http_req_failed), when any request failed or any answer was not whole, when none was
# answered, when a stream was not timed, or when repeated prompts got no cache hit; never on
# timing (no latency threshold is passed; the figures are printed for the log only).
# Usage: infra/k6/check.sh URL KEY   (k6 on PATH, or K6=path/to/k6; python3)
set -euo pipefail
URL=$1 KEY=$2
K6=${K6:-k6}
# k6 runs from a scratch directory below: a path to it is made absolute first.
case $K6 in */*) K6=$(cd "$(dirname "$K6")" && pwd)/$(basename "$K6") ;; esac
cd "$(dirname "$0")/../.."
script=$PWD/infra/k6/sluice.js
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$K6" version

# A body file with a system message and the prompt's place marked, as `loadtest --body` takes.
cat >"$work/body.json" <<'EOF'
{"model": "gpt-4o-mini", "max_tokens": 64,
 "messages": [{"role": "system", "content": "Answer in one line."},
              {"role": "user", "content": "k6 check: {{prompt}}"}]}
EOF

# name, whether the answers are streams, then k6 -e options.
run() {
    local name=$1 stream=$2
    shift 2
    local rc=0
    (cd "$work" && "$K6" run --no-color --summary-export "$work/$name.json" \
        -e URL="$URL" -e KEY="$KEY" "$@" "$script") >"$work/$name.out" 2>&1 || rc=$?
    python3 - "$name" "$stream" "$work/$name.json" "$rc" <<'EOF' || { tail -80 "$work/$name.out"; exit 1; }
import json, sys
name, stream, path, rc = sys.argv[1], sys.argv[2] == "stream", sys.argv[3], int(sys.argv[4])
try:
    m = json.load(open(path))["metrics"]
except (OSError, ValueError):
    sys.exit(f"k6 {name} FAILED: k6 exited {rc} without a summary (exit 99: a threshold failed)")
reqs = m["http_reqs"]["count"]
ok, bad = m["checks"]["passes"], m["checks"]["fails"]
failed = m["http_req_failed"]["passes"]  # a Rate: its "passes" are the failed requests
hits = m.get("sluice_cache_hits", {}).get("passes", 0)
dur = m["http_req_duration"]
timed = m.get("sluice_ttfb", {}).get("count", 0)
dropped = m.get("dropped_iterations", {}).get("count", 0)
print(f"k6 {name}: {reqs} requests, {ok} answers ok, {bad} not, {failed} failed, "
      f"{dropped} dropped, {m['http_reqs']['rate']:.0f} req/s, med {dur['med']:.1f} ms, "
      f"p99 {dur['p(99)']:.1f} ms, cache hits {hits}"
      + (f", ttfb med {m['sluice_ttfb']['med']:.1f} ms" if timed else ""))
problems = []
if rc != 0:
    problems.append(f"k6 exited {rc} (99: a threshold failed)")
if bad or failed:
    problems.append(f"{bad} answers not whole, {failed} requests failed")
if ok == 0 or ok != reqs:
    problems.append(f"{ok} answers checked of {reqs} requests")
if hits == 0:
    problems.append("repeated prompts got no cache hit")
if stream and timed != ok:
    problems.append(f"{timed} streams timed of {ok} answers")
if problems:
    sys.exit(f"k6 {name} FAILED: " + "; ".join(problems))
EOF
}

run closed plain -e VUS=8 -e DURATION=4s -e REPEAT=0.5 -e BODY=body.json
run open-stream stream -e RATE=50 -e DURATION=4s -e REPEAT=0.3 -e STREAM=1
echo "k6 check passed"
