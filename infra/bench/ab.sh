#!/usr/bin/env bash
# A/B of two `sluice` binaries (e.g. two release builds of one commit, one with a change):
# gateway CPU per request, RPS and peak RSS on the no-cache, miss, full-miss and hit paths at
# concurrency 64, alternating A B A B so drift in the machine's load falls on both.
#   infra/bench/ab.sh A_BIN B_BIN        (SECS=5 ROUNDS=2 by default; needs wrk and
#                                         target/release/fake-upstream)
# Each run of a binary starts it on its own SQLite file with infra/bench/sluice.bench.toml.
set -euo pipefail
cd "$(dirname "$0")/../.."
A=$1; B=$2; SECS=${SECS:-5}; ROUNDS=${ROUNDS:-2}
work=$(mktemp -d)
UP=127.0.0.1:19981; SLOW=127.0.0.1:19982; SLOWER=127.0.0.1:19983; GW=127.0.0.1:18078
target/release/fake-upstream $UP >/dev/null 2>&1 & up=$!
trap 'kill $up $gw 2>/dev/null || true' EXIT
gw=
ticks=$(getconf CLK_TCK)
cpu_s() { awk -v t="$ticks" '{printf "%.3f", ($14 + $15) / t}' "/proc/$1/stat"; }
for round in $(seq $ROUNDS); do
 for which in A B; do
  bin=$A; [ $which = B ] && bin=$B
  db=$work/$which-$round.db
  key=$($bin keys create --tenant bench --db "$db" 2>/dev/null)
  full=$($bin keys create --tenant full --rpm 100000000 --tpm 2000000000 --budget-usd 1000000 --period day --db "$db" 2>/dev/null)
  BENCH_UPSTREAM=$UP BENCH_SLOW_UPSTREAM=$SLOW BENCH_SLOWER_UPSTREAM=$SLOWER SLUICE_LOG=warn \
    $bin serve --listen $GW --db "$db" --config infra/bench/sluice.bench.toml >/dev/null 2>&1 & gw=$!
  for _ in $(seq 100); do curl -sf "http://$GW/health" >/dev/null && break; sleep 0.1; done
  RUN=warm$which$round BODY=miss MODEL=gpt-test STREAM=0 KEY=$key wrk -t2 -c16 -d2s -s infra/bench/request.lua http://$GW/v1/chat/completions >/dev/null
  for spec in "no-cache gpt-nocache miss $key" "miss gpt-test miss $key" "full-miss gpt-test miss $full" "hit gpt-test same $key"; do
    set -- $spec
    c0=$(cpu_s $gw)
    out=$(RUN=ab$which$round$1 BODY=$3 MODEL=$2 STREAM=0 KEY=$4 wrk -t2 -c64 -d${SECS}s -s infra/bench/request.lua http://$GW/v1/chat/completions | sed -n 's/^WRK_JSON //p')
    c1=$(cpu_s $gw)
    python3 -c "
import json,sys
r=json.loads(sys.argv[1]); n=r['requests']; c=float(sys.argv[3])-float(sys.argv[2])
print(f'$which r$round {sys.argv[4]:>10} rps {n/(r[\"duration_us\"]/1e6):8.0f} cpu {c/n*1e6:7.1f} us/req rss $(awk '/VmHWM/{print $2}' /proc/$gw/status) kB')" "$out" $c0 $c1 $1
  done
  kill $gw; wait $gw 2>/dev/null || true
 done
done
