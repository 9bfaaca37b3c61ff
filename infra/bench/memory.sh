#!/usr/bin/env bash
# Memory after the largest accepted requests (issue 13, item 9): `sluice serve` on the
# built-in mock provider answers, three times each, the largest embeddings request the
# request bounds accept (2,048 inputs × 3,072 dimensions: an ~80 MB answer) and a chat
# request at every bound at once (n = 128, 128 tools, 2,048 messages). It prints the
# process's RSS idle, at its peak and after, and fails if RSS stays more than 32 MiB above
# idle afterwards (memory kept, not returned). About 10 s.
# Usage: infra/bench/memory.sh [SLUICE_BIN=target/debug/sluice]   (needs curl, python3)
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=${1:-target/debug/sluice}
source infra/lib/mock-serve.sh
start_mock_serve "$BIN" memory
rss() { awk '/^VmRSS/ {print $2}' "/proc/$server_pid/status"; }
hwm() { awk '/^VmHWM/ {print $2}' "/proc/$server_pid/status"; }
python3 - "$work" <<'PY'
import json, sys
work = sys.argv[1]
json.dump({"model": "text-embedding-3-small", "dimensions": 3072,
           "input": [f"input number {i}" for i in range(2048)]},
          open(f"{work}/embeddings.json", "w"))
tools = [{"type": "function", "function": {"name": f"f{i}", "parameters":
          {"type": "object", "properties": {"q": {"type": "string"}}}}} for i in range(128)]
messages = [{"role": "user" if i % 2 == 0 else "assistant", "content": f"turn {i} " * 20}
            for i in range(2047)] + [{"role": "user", "content": "and?"}]
json.dump({"model": "gpt-4o-mini", "n": 128, "tools": tools, "messages": messages},
          open(f"{work}/chat.json", "w"))
PY
idle=$(rss)
for round in 1 2 3; do
    for req in embeddings:/v1/embeddings chat:/v1/chat/completions; do
        name=${req%%:*} path=${req#*:}
        code=$(curl -s -o "$work/out" -w '%{http_code}' "$url$path" \
            -H "Authorization: Bearer $key" -H 'Content-Type: application/json' \
            -H 'Cache-Control: no-store' --data-binary "@$work/$name.json")
        if [ "$code" != 200 ]; then
            echo "memory: the largest accepted $name request got $code:"; head -c 500 "$work/out"
            exit 1
        fi
        echo "round $round $name: $(stat -c %s "$work/$name.json") B in, $(stat -c %s "$work/out") B out, RSS $(( $(rss) / 1024 )) MiB"
    done
done
sleep 1
after=$(rss)
peak=$(hwm)
echo "RSS idle $(( idle / 1024 )) MiB, peak $(( peak / 1024 )) MiB, after $(( after / 1024 )) MiB"
if [ $(( after - idle )) -gt $(( 32 * 1024 )) ]; then
    echo "memory FAILED: RSS stayed $(( (after - idle) / 1024 )) MiB above idle after the largest requests"
    exit 1
fi
