#!/usr/bin/env bash
# A call-graph profile of one path under load: `perf record --call-graph dwarf` of the gateway
# for SECS seconds while wrk drives c=64 (the figures of BENCHMARKS.md's profiles).
#   cargo build --profile profiling --locked -p sluice-cli --bin sluice
#   infra/bench/profile.sh target/profiling/sluice OUT.data MODEL BODY KEY [SECS]
#     (MODEL, BODY, KEY as in row.sh), then e.g.
#   perf report -i OUT.data --children --sort sym --stdio -g none
#   perf report -i OUT.data --no-children --sort comm --stdio -g none   (by thread)
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=$1; OUT=$2; MODEL=$3; BODY=$4; KIND=$5; SECS=${6:-6}
UP=127.0.0.1:19991; GW=127.0.0.1:18091
. infra/bench/gateway.sh
[ "$KIND" = full ] && key=$full
RUN=warm$RANDOM BODY=miss MODEL=gpt-test STREAM=0 KEY=$key wrk -t2 -c16 -d2s -s infra/bench/request.lua http://$GW/v1/chat/completions >/dev/null
RUN=prof$RANDOM BODY=$BODY MODEL=$MODEL STREAM=0 KEY=$key wrk -t2 -c64 -d$((SECS + 2))s -s infra/bench/request.lua http://$GW/v1/chat/completions | grep -E "^Requests/sec" & load=$!
sleep 1
perf record -F 1999 --call-graph dwarf,16384 -o "$OUT" -p $gw -- sleep "$SECS" >/dev/null 2>&1
wait $load
