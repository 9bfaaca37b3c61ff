#!/usr/bin/env bash
# Memory per request in flight: one gateway, CONNS connections against an upstream that waits
# DELAY_MS, RSS at idle and in the middle of the load (and the biggest mappings then).
#   infra/bench/inflight.sh BIN CONNS DELAY_MS [SECS]     MODEL=gpt-nocache for the cache off
# The bare proxy's figure for the same load is run.sh's proxy-500ms row.
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=$1; C=$2; DELAY_MS=$3; SECS=${4:-8}; MODEL=${MODEL:-gpt-test}
UP=127.0.0.1:19993; GW=127.0.0.1:18093
ulimit -n "$(ulimit -Hn)"
. infra/bench/gateway.sh
rss() { awk "/$1/{print \$2}" /proc/$gw/status; }
idle=$(rss VmRSS)
RUN=inf$RANDOM BODY=miss MODEL=$MODEL STREAM=0 KEY=$key wrk -t2 -c"$C" -d"${SECS}"s --timeout 10s -s infra/bench/request.lua http://$GW/v1/chat/completions | grep -E "^Requests/sec" & load=$!
sleep $((SECS / 2))
mid=$(rss VmRSS)
echo "idle ${idle} kB, mid-load ${mid} kB: $(( (mid - idle) / C )) kB per request in flight; threads $(ls /proc/$gw/task | wc -l)"
awk '/^[0-9a-f]+-[0-9a-f]+ /{name=($6 == "" ? "[anon]" : $6)} /^Rss:/{if ($2 > 1024) print "  " $2 " kB " name}' /proc/$gw/smaps | sort -rn | head -6
wait $load
echo "peak $(rss VmHWM) kB"
