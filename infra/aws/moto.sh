#!/usr/bin/env bash
# Starts moto's server (DynamoDB + SQS stand-in) on 127.0.0.1 in the background and prints the
# environment to point the AWS SDK at it:
#   eval "$(infra/aws/moto.sh)"        # then: cargo test --workspace --test it -- backends::, sluice serve --store dynamodb ...
# Usage: infra/aws/moto.sh [port]      (default: a free port). Needs .venv with moto[server]
# (./infra/test.sh creates it). Stop it with: kill "$SLUICE_MOTO_PID"
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV=${SLUICE_VENV:-.venv}
PORT=${1:-$("$VENV/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')}
LOG=${SLUICE_MOTO_LOG:-/tmp/sluice-moto-$PORT.log}
# One request at a time: see moto_serialized.py for why (transactions under concurrency).
"$VENV/bin/python" infra/aws/moto_serialized.py "$PORT" >"$LOG" 2>&1 &
PID=$!
for _ in $(seq 100); do
    if curl -sf "http://127.0.0.1:$PORT/moto-api/" >/dev/null 2>&1; then
        cat <<ENV
export AWS_ENDPOINT_URL=http://127.0.0.1:$PORT
export AWS_ACCESS_KEY_ID=testing
export AWS_SECRET_ACCESS_KEY=testing
export AWS_REGION=us-east-1
export AWS_DEFAULT_REGION=us-east-1
export SLUICE_MOTO_PID=$PID
ENV
        exit 0
    fi
    sleep 0.1
done
echo "moto_server did not start; see $LOG" >&2
kill "$PID" 2>/dev/null || true
exit 1
