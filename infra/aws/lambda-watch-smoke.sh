#!/usr/bin/env bash
# Runs the ingest function under `cargo lambda watch` against DynamoDB and SQS on moto and
# drives it with curl through the function-URL emulation:
#   curl http://127.0.0.1:$PORT/lambda-url/ingest/v1/chat/completions
# Usage: infra/aws/lambda-watch-smoke.sh   (installs cargo-lambda into .venv-lambda if needed)
set -euo pipefail
cd "$(dirname "$0")/../.."
LAMBDA_VENV=${SLUICE_LAMBDA_VENV:-.venv-lambda}
if [ ! -x "$LAMBDA_VENV/bin/cargo-lambda" ]; then
    python3 -m venv "$LAMBDA_VENV"
    "$LAMBDA_VENV/bin/pip" install --quiet --disable-pip-version-check cargo-lambda
fi
export PATH="$PWD/$LAMBDA_VENV/bin:$PATH"
work=$(mktemp -d)
cleanup() {
    [ -n "${WATCH_PID:-}" ] && kill -- -"$WATCH_PID" 2>/dev/null || true
    [ -n "${SLUICE_MOTO_PID:-}" ] && kill "$SLUICE_MOTO_PID" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

eval "$(infra/aws/moto.sh)"
cargo build --quiet -p sluice-cli
eval "$(target/debug/sluice aws init --prefix watch)"
KEY=$(target/debug/sluice keys create --tenant watch --store dynamodb --table-prefix watch 2>/dev/null)
PORT=$("${SLUICE_VENV:-.venv}/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')

BASE="http://127.0.0.1:$PORT/lambda-url/ingest"
# Starts ingest under watch in a response mode (SLUICE_LAMBDA_RESPONSE: buffered | stream).
start_watch() {
    # Its own process group, so cleanup stops the function processes watch starts too.
    setsid cargo lambda watch -p sluice-ingest --invoke-address 127.0.0.1 --invoke-port "$PORT" \
        --env-var "SLUICE_ADMIN_KEY=sk-sluice-admin-watch,SLUICE_LOG=warn,SLUICE_LAMBDA_RESPONSE=$1" \
        >"$work/watch-$1.log" 2>&1 &
    WATCH_PID=$!
    for _ in $(seq 600); do
        curl -sf "$BASE/health" >/dev/null 2>&1 && break
        sleep 0.5
    done
    curl -sf "$BASE/health" >/dev/null || { echo "ingest never answered; log:"; cat "$work/watch-$1.log"; exit 1; }
}
start_watch buffered

chat() {
    curl -s -D "$work/headers" "$BASE/v1/chat/completions" \
        -H "Authorization: Bearer $KEY" -H "Content-Type: application/json" "$@" \
        -d '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hello from cargo lambda watch"}]}'
}
answer=$(chat)
echo "$answer" | grep -q '"Mock response to: hello from cargo lambda watch"' \
    || { echo "unexpected answer: $answer"; exit 1; }
grep -qi '^x-sluice-cache: miss' "$work/headers" || { echo "first call was not a miss"; exit 1; }
chat >/dev/null
grep -qi '^x-sluice-cache: hit' "$work/headers" || { echo "second call was not a cache hit"; exit 1; }
accepted=$(chat -H "Prefer: respond-async")
echo "$accepted" | grep -q '"status":"queued"' || { echo "async not accepted: $accepted"; exit 1; }
status=$(curl -s -o /dev/null -w '%{http_code}' "$BASE/v1/chat/completions" -d '{}')
[ "$status" = 401 ] || { echo "no key must be 401, got $status"; exit 1; }
echo "cargo lambda watch smoke (buffered): ok (miss, hit, 202 job queued on SQS, 401 without key)"

# The same binary in streaming mode, as the function URL with RESPONSE_STREAM runs it.
kill -- -"$WATCH_PID" 2>/dev/null || true
wait "$WATCH_PID" 2>/dev/null || true
for _ in $(seq 100); do
    curl -sf "$BASE/health" >/dev/null 2>&1 || break
    sleep 0.1
done
start_watch stream
curl -sN -D "$work/stream-headers" "$BASE/v1/chat/completions" \
    -H "Authorization: Bearer $KEY" -H "Content-Type: application/json" \
    -d '{"model":"gpt-4o-mini","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"stream from cargo lambda watch"}]}' \
    >"$work/stream"
grep -qi '^content-type: text/event-stream' "$work/stream-headers" \
    || { echo "streamed answer is not an event stream:"; cat "$work/stream-headers"; exit 1; }
grep -q '"object":"chat.completion.chunk"' "$work/stream" || { echo "no chunks:"; cat "$work/stream"; exit 1; }
grep -q '"completion_tokens"' "$work/stream" || { echo "no usage chunk:"; cat "$work/stream"; exit 1; }
[ "$(tail -n 2 "$work/stream" | head -n 1)" = "data: [DONE]" ] \
    || { echo "stream does not end with [DONE]:"; cat "$work/stream"; exit 1; }
answer=$(chat)
echo "$answer" | grep -q '"Mock response to: hello from cargo lambda watch"' \
    || { echo "unexpected buffered answer in stream mode: $answer"; exit 1; }
echo "cargo lambda watch smoke (stream): ok (SSE chunks with usage and [DONE], JSON answers too)"
