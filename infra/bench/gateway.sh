# Sourced by row.sh, profile.sh and inflight.sh: starts a fake upstream at $UP (answering after
# ${DELAY_MS:-0} ms) and `$BIN serve` at $GW on a fresh SQLite file with sluice.bench.toml
# (every provider pointed at that upstream), and sets $key (no limits) and $full (rpm, tpm and a
# day budget). Both processes are stopped, and the work dir removed, on exit.
work=$(mktemp -d "${TMPBASE:-/tmp}/sluice-bench.XXXX")
target/release/fake-upstream "$UP" ${DELAY_MS:+"$DELAY_MS"} >/dev/null 2>&1 & up=$!
gw=
# Waits for both to exit, so a next row started at once can bind the same ports (a fake
# upstream that cannot bind aborts, and the row would measure Sluice's 502s).
trap 'kill $up $gw 2>/dev/null || true; wait $up $gw 2>/dev/null || true; rm -rf "$work"' EXIT
db=$work/bench.db
key=$($BIN keys create --tenant bench --db "$db" 2>/dev/null)
full=$($BIN keys create --tenant full --rpm 100000000 --tpm 2000000000 --budget-usd 1000000 --period day --db "$db" 2>/dev/null)
BENCH_UPSTREAM=$UP BENCH_SLOW_UPSTREAM=$UP BENCH_SLOWER_UPSTREAM=$UP SLUICE_LOG=warn \
  $BIN serve --listen "$GW" --db "$db" --config infra/bench/sluice.bench.toml >/dev/null 2>&1 & gw=$!
for _ in $(seq 100); do curl -sf "http://$GW/health" >/dev/null && break; sleep 0.1; done
