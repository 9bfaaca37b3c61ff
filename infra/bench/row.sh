#!/usr/bin/env bash
# One benchmark row against one `sluice` binary, for A/B pairs outside `ab.sh` (which runs
# c=64 only): gateway CPU per request, RPS, latency percentiles, peak RSS.
#   infra/bench/row.sh BIN MODEL BODY KEY CONNS SECS
#     MODEL  gpt-test (cache on) or gpt-nocache; BODY miss (distinct prompts) or same;
#     KEY    plain (no limits) or full (rpm, tpm and a day budget)
#   TMPBASE=/dev/shm puts the database on tmpfs (to tell disk stalls from work).
# Needs wrk and target/release/fake-upstream; nothing else should run on the machine.
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=$1; MODEL=$2; BODY=$3; KIND=$4; C=$5; SECS=$6
UP=127.0.0.1:19995; GW=127.0.0.1:18095
. infra/bench/gateway.sh
[ "$KIND" = full ] && key=$full
RUN=warm$RANDOM BODY=miss MODEL=gpt-test STREAM=0 KEY=$key wrk -t2 -c16 -d2s -s infra/bench/request.lua http://$GW/v1/chat/completions >/dev/null
ticks=$(getconf CLK_TCK)
cpu_s() { awk -v t="$ticks" '{printf "%.3f", ($14 + $15) / t}' "/proc/$1/stat"; }
threads=2; [ "$C" -lt 2 ] && threads=1
c0=$(cpu_s $gw)
out=$(RUN=row$RANDOM BODY=$BODY MODEL=$MODEL STREAM=0 KEY=$key wrk -t$threads -c$C -d${SECS}s -s infra/bench/request.lua http://$GW/v1/chat/completions | sed -n 's/^WRK_JSON //p')
c1=$(cpu_s $gw)
python3 -c "
import json,sys
r=json.loads(sys.argv[1]); n=r['requests']; c=float(sys.argv[3])-float(sys.argv[2])
print(f'rps {n/(r[\"duration_us\"]/1e6):7.0f} cpu {c/n*1e6:6.1f} us/req p50 {r[\"p50_us\"]/1000:.2f} p90 {r[\"p90_us\"]/1000:.2f} p99 {r[\"p99_us\"]/1000:.2f} max {r[\"max_us\"]/1000:.1f} ms non-2xx {r[\"errors\"][\"non_2xx\"]} peak rss {int(sys.argv[4])/1024:.1f} MB')" \
  "$out" "$c0" "$c1" "$(awk '/VmHWM/{print $2}' /proc/$gw/status)"
