#!/usr/bin/env bash
# One-command benchmark of issues 7 and 18: a fake upstream called directly, through a bare
# reverse proxy (the floor: tests/src/bin/bare-proxy.rs, hyper with a pooled client, no auth,
# no parsing), and through `sluice serve` (release build, SQLite store, cache on, key auth),
# side by side in one run:
#   direct, direct stream                     the fake upstream alone
#   proxy                                     the bare proxy (every Sluice target is a ratio to it)
#   no-cache                                  Sluice, the model's cache off, a key without limits
#   full-miss                                 Sluice, distinct prompts, cache on, a key with rpm,
#                                             tpm and a day budget, usage events on
#   miss, hit, rate-limited key, stream       Sluice
# at concurrency 1, 16, 64 and 256 (wrk, closed model), then 256 in flight against a fake
# upstream that waits 50 ms and 1,024 against one that waits 500 ms (bare proxy and Sluice),
# then a soak of the miss path that samples the gateway's RSS every 10 s. For every row: RPS, p50/p90/p99/max, errors, the
# gateway's CPU time per request (utime+stime from /proc over the row) and its peak RSS in the
# row (VmHWM, reset before each row). infra/bench/report.py then writes the Markdown table and
# PNG charts (docs/bench/*.png) into BENCHMARKS.md between the `bench:run` markers.
#
# Usage: infra/bench/run.sh [--secs 10] [--soak 600] [--conc "1 16 64 256"] [--profile release]
#                           [--no-write]
# Needs wrk and python3 (installs matplotlib into target/bench/venv for the charts). About
# 5 min plus the soak; nothing else should run on the machine meanwhile.
set -euo pipefail
cd "$(dirname "$0")/../.."
SECS=10
SOAK=600
CONCS="1 16 64 256"
PROFILE=release
WRITE=1
while [ $# -gt 0 ]; do
    case $1 in
        --secs) SECS=$2; shift 2 ;;
        --soak) SOAK=$2; shift 2 ;;
        --conc) CONCS=$2; shift 2 ;;
        --profile) PROFILE=$2; shift 2 ;;
        --no-write) WRITE=0; shift ;;
        *) echo "unknown option $1 (see the header of $0)"; exit 2 ;;
    esac
done
if ! command -v wrk >/dev/null; then
    if [ "$(id -u)" = 0 ]; then apt-get install -y -q wrk >/dev/null; else
        echo "needs wrk: sudo apt-get install -y wrk"; exit 1; fi
fi

echo "== building ($PROFILE)"
cargo build --profile "$PROFILE" --quiet -p sluice-cli -p sluice-tests --bin sluice --bin fake-upstream \
    --bin bare-proxy
bin_dir=target/$PROFILE
[ "$PROFILE" = dev ] && bin_dir=target/debug

stamp=$(date -u +%Y%m%dT%H%M%SZ)
work=target/bench/$stamp
mkdir -p "$work"
rows=$work/rows.jsonl
# Private copies: another build must not swap the binaries under the run.
cp "$bin_dir/sluice" "$bin_dir/fake-upstream" "$bin_dir/bare-proxy" "$work/"

pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT

# 1,024 connections in, as many out, and the upstream's: raise the open-file limit.
ulimit -n "$(ulimit -Hn)"
UP=127.0.0.1:19991
SLOW=127.0.0.1:19992
SLOWER=127.0.0.1:19993
GW=127.0.0.1:18088
PROXY=127.0.0.1:18089
PROXY_SLOW=127.0.0.1:18090
PROXY_SLOWER=127.0.0.1:18091
"$work/fake-upstream" $UP >"$work/upstream.log" 2>&1 & up_pid=$!; pids+=("$up_pid")
"$work/fake-upstream" $SLOW 50 >"$work/slow-upstream.log" 2>&1 & slow_pid=$!; pids+=("$slow_pid")
"$work/fake-upstream" $SLOWER 500 >"$work/slower-upstream.log" 2>&1 & slower_pid=$!; pids+=("$slower_pid")
"$work/bare-proxy" $PROXY $UP 2>"$work/proxy.log" & proxy_pid=$!; pids+=("$proxy_pid")
"$work/bare-proxy" $PROXY_SLOW $SLOW 2>"$work/proxy-slow.log" & proxy_slow_pid=$!; pids+=("$proxy_slow_pid")
"$work/bare-proxy" $PROXY_SLOWER $SLOWER 2>"$work/proxy-slower.log" & proxy_slower_pid=$!
pids+=("$proxy_slower_pid")

db=$work/sluice.db
key=$("$work/sluice" keys create --tenant bench --db "$db" 2>/dev/null)
limited=$("$work/sluice" keys create --tenant limited --rpm 60 --db "$db" 2>/dev/null)
# Every limit a key can have, none of them reached by the run: the checks and the counters'
# writes are the cost.
full=$("$work/sluice" keys create --tenant full --rpm 100000000 --tpm 2000000000 \
    --budget-usd 1000000 --period day --db "$db" 2>/dev/null)
BENCH_UPSTREAM=$UP BENCH_SLOW_UPSTREAM=$SLOW BENCH_SLOWER_UPSTREAM=$SLOWER SLUICE_LOG=warn \
    "$work/sluice" serve --listen $GW --db "$db" --config infra/bench/sluice.bench.toml \
    >"$work/gateway.log" 2>&1 & gw_pid=$!; pids+=("$gw_pid")
for _ in $(seq 100); do curl -sf "http://$GW/health" >/dev/null && break; sleep 0.1; done
curl -sf "http://$GW/health" >/dev/null || { echo "gateway did not start"; cat "$work/gateway.log"; exit 1; }

ticks=$(getconf CLK_TCK)
cpu_s() { awk -v t="$ticks" '{printf "%.3f", ($14 + $15) / t}' "/proc/$1/stat"; }
kb() { awk -v f="$2:" '$1 == f {print $2}' "/proc/$1/status"; }

# row NAME VIA CONC URL BODY MODEL STREAM KEY [SECS]: one wrk run, one JSON line in $rows.
# The "gateway" measured (CPU, RSS) is Sluice, or the bare proxy given as PID=.
row() {
    local name=$1 via=$2 conc=$3 url=$4 body=$5 model=$6 stream=$7 auth=$8 secs=${9:-$SECS}
    local threads=$(( conc < 2 ? 1 : 2 ))
    local gw_pid=${PID:-$gw_pid}
    echo 5 >"/proc/$gw_pid/clear_refs" # resets VmHWM: the peak is this row's
    local gw0 up0 out
    gw0=$(cpu_s "$gw_pid"); up0=$(cpu_s "$up_pid"); slow0=$(cpu_s "$slow_pid")
    slower0=$(cpu_s "$slower_pid")
    out=$(RUN="$stamp-$name-$conc" BODY=$body MODEL=$model STREAM=$stream KEY=$auth \
        wrk -t$threads -c"$conc" -d"${secs}s" --timeout 10s -s infra/bench/request.lua "$url" |
        sed -n 's/^WRK_JSON //p')
    python3 - "$rows" "$name" "$via" "$conc" "$out" "$gw0" "$(cpu_s "$gw_pid")" \
        "$(echo "$up0 $(cpu_s "$up_pid") $slow0 $(cpu_s "$slow_pid") $slower0 $(cpu_s "$slower_pid")" |
            awk '{print $2-$1+$4-$3+$6-$5}')" \
        "$(kb "$gw_pid" VmHWM)" "$(kb "$gw_pid" VmRSS)" <<'PY'
import json, sys
rows, name, via, conc, out, gw0, gw1, up_cpu, hwm, rss = sys.argv[1:]
r = json.loads(out)
r.update(name=name, via=via, concurrency=int(conc), gateway_cpu_s=float(gw1) - float(gw0),
         upstream_cpu_s=float(up_cpu), gateway_peak_rss_kb=int(hwm), gateway_rss_kb=int(rss))
with open(rows, "a") as f:
    f.write(json.dumps(r) + "\n")
rps = r["requests"] / (r["duration_us"] / 1e6)
cpu = r["gateway_cpu_s"] / max(r["requests"], 1) * 1e6
e = r["errors"]
failed = e["connect"] + e["read"] + e["write"] + e["timeout"]
print(f"{name:>14} c={conc:<4} {rps:9.0f} req/s  p50 {r['p50_us'] / 1000:7.3f} ms  "
      f"p99 {r['p99_us'] / 1000:7.3f} ms  gw cpu {cpu:6.1f} us/req  "
      f"gw peak {r['gateway_peak_rss_kb'] / 1024:5.1f} MB  non-2xx {e['non_2xx']}  errors {failed}")
PY
}

echo "== machine: $(nproc) cores, $(uname -m), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo "== idle RSS: sluice $(kb "$gw_pid" VmRSS) kB, bare proxy $(kb "$proxy_pid" VmRSS) kB"
python3 -c 'import json,sys; print(json.dumps({"sluice_kb": int(sys.argv[1]), "proxy_kb": int(sys.argv[2])}))' \
    "$(kb "$gw_pid" VmRSS)" "$(kb "$proxy_pid" VmRSS)" >"$work/idle.json"
echo "== $SECS s per row; warm-up"
for k in "$key" "$full"; do
    RUN="$stamp-warm" BODY=miss MODEL=gpt-test STREAM=0 KEY=$k \
        wrk -t2 -c16 -d2s -s infra/bench/request.lua "http://$GW/v1/chat/completions" >/dev/null
done
RUN="$stamp-warm" BODY=miss MODEL=gpt-4o-mini STREAM=0 KEY=sk-bench-upstream \
    wrk -t2 -c16 -d2s -s infra/bench/request.lua "http://$PROXY/v1/chat/completions" >/dev/null
direct=http://$UP/v1/chat/completions
proxied=http://$PROXY/v1/chat/completions
via=http://$GW/v1/chat/completions
for c in $CONCS; do
    row direct direct "$c" "$direct" miss gpt-4o-mini 0 sk-bench-upstream
    row direct-stream direct "$c" "$direct" miss gpt-4o-mini 1 sk-bench-upstream
    PID=$proxy_pid row proxy proxy "$c" "$proxied" miss gpt-4o-mini 0 sk-bench-upstream
    row no-cache sluice "$c" "$via" miss gpt-nocache 0 "$key"
    row full-miss sluice "$c" "$via" miss gpt-test 0 "$full"
    row miss sluice "$c" "$via" miss gpt-test 0 "$key"
    row hit sluice "$c" "$via" same gpt-test 0 "$key"
    row rate-limited sluice "$c" "$via" miss gpt-test 0 "$limited"
    row stream sluice "$c" "$via" miss gpt-test 1 "$key"
done
echo "== 256 in flight, upstream waits 50 ms; 1,024 in flight, upstream waits 500 ms"
row direct-50ms direct 256 "http://$SLOW/v1/chat/completions" miss gpt-4o-mini 0 sk-bench-upstream
PID=$proxy_slow_pid row proxy-50ms proxy 256 "http://$PROXY_SLOW/v1/chat/completions" miss gpt-4o-mini 0 \
    sk-bench-upstream
row miss-50ms sluice 256 "$via" miss gpt-slow 0 "$key"
PID=$proxy_slower_pid row proxy-500ms proxy 1024 "http://$PROXY_SLOWER/v1/chat/completions" miss \
    gpt-4o-mini 0 sk-bench-upstream
row miss-500ms sluice 1024 "$via" miss gpt-slower 0 "$key"

soak=$work/soak.csv
echo "seconds,rss_kb" >"$soak"
if [ "$SOAK" -gt 0 ]; then
    echo "== soak: $SOAK s of cache misses at concurrency 64, RSS every 10 s"
    row soak sluice 64 "$via" miss gpt-test 0 "$key" "$SOAK" &
    soak_pid=$!
    start=$(date +%s)
    while kill -0 "$soak_pid" 2>/dev/null; do
        echo "$(( $(date +%s) - start )),$(kb "$gw_pid" VmRSS)" >>"$soak"
        sleep 10
    done
    wait "$soak_pid"
fi
kill -0 "$gw_pid" || { echo "the gateway died during the run"; tail "$work/gateway.log"; exit 1; }

echo "== report"
if [ ! -x target/bench/venv/bin/python ]; then
    python3 -m venv target/bench/venv
    target/bench/venv/bin/pip install -q "matplotlib==3.10.7"
fi
args=()
[ "$WRITE" = 1 ] && args+=(--write BENCHMARKS.md --charts docs/bench)
target/bench/venv/bin/python infra/bench/report.py "$work" --secs "$SECS" "${args[@]}"
echo "rows: $rows"
