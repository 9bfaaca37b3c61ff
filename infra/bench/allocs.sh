#!/usr/bin/env bash
# Heap allocations per request on one path: uprobes on the allocation entry points in the
# gateway (`perf stat`) while wrk drives it — glibc's malloc, realloc and calloc (SQLite's C
# code, and all of a glibc build), and for a jemalloc build (`sluice serve` since issue 18's
# seventh step) jemalloc's too; a count, not a timing, so it does not move with the machine's
# load. The bare proxy's figure is the floor (issue 18).
#   infra/bench/allocs.sh BIN MODEL BODY KEY [CONNS]   (MODEL, BODY, KEY as in row.sh)
#   infra/bench/allocs.sh proxy                        (the bare proxy, same request)
#   TURNS=N before either: a conversation of N earlier exchanges (request.lua)
# Needs root (uprobes), perf, wrk, target/release/{fake-upstream,bare-proxy}, and a gateway
# binary with symbols (`cargo build --profile profiling`; release builds are stripped).
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=$1; MODEL=${2:-gpt-nocache}; BODY=${3:-miss}; KIND=${4:-plain}; C=${5:-16}
UP=127.0.0.1:19993; GW=127.0.0.1:18093
libc=$(ldconfig -p | awk '/libc\.so\.6 .*x86-64|libc\.so\.6 .*AArch64/ {print $NF; exit}')
for f in malloc realloc calloc; do
  perf probe -l 2>/dev/null | grep -q "probe_libc:$f " || perf probe -q -x "$libc" --add "$f" >/dev/null
done
events=probe_libc:malloc,probe_libc:realloc,probe_libc:calloc
if [ "$BIN" != proxy ]; then
  if ! nm "$BIN" >/dev/null 2>&1; then
    echo "allocs.sh: $BIN has no symbols (build it with --profile profiling)" >&2; exit 1
  fi
  # jemalloc's entry points (prefixed `_rjem_`) in this binary; tikv-jemallocator calls the
  # `x` forms for over-aligned or zeroed memory.
  perf probe -q -d 'probe_jemalloc:*' >/dev/null 2>&1 || true
  if nm "$BIN" | grep ' T _rjem_malloc$' >/dev/null; then  # (-q would cut nm off: pipefail)
    for f in malloc mallocx calloc realloc rallocx; do
      perf probe -q -x "$BIN" --add "probe_jemalloc:je_$f=_rjem_$f" >/dev/null
      events+=",probe_jemalloc:je_$f"
    done
  fi
fi
if [ "$BIN" = proxy ]; then
  target/release/fake-upstream "$UP" >/dev/null 2>&1 & up=$!
  target/release/bare-proxy "$GW" "$UP" >/dev/null 2>&1 & gw=$!
  trap 'kill $up $gw 2>/dev/null || true; wait $up $gw 2>/dev/null || true' EXIT
  for _ in $(seq 50); do curl -s -o /dev/null "http://$GW/" && break; sleep 0.1; done
  key=none
else
  . infra/bench/gateway.sh
  [ "$KIND" = full ] && key=$full
fi
RUN=warm$RANDOM BODY=miss MODEL=gpt-test STREAM=0 KEY=$key wrk -t2 -c16 -d2s -s infra/bench/request.lua http://$GW/v1/chat/completions >/dev/null
stat=$(mktemp)
perf stat -x, -e "$events" -p "$gw" -o "$stat" -- sleep 4 & ps=$!
out=$(RUN=row$RANDOM BODY=$BODY MODEL=$MODEL STREAM=0 KEY=$key wrk -t2 -c"$C" -d4s -s infra/bench/request.lua http://$GW/v1/chat/completions | sed -n 's/^WRK_JSON //p')
wait $ps
n=$(python3 -c "import json,sys; print(json.loads(sys.argv[1])['requests'])" "$out")
awk -F, -v n="$n" '/probe_/ {sub("probe_", "", $3); printf "%s %.1f  ", $3, $1/n; s+=$1}
  END {printf "allocations per request %.1f (%d requests)\n", s/n, n}' "$stat"
rm -f "$stat"
