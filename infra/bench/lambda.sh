#!/usr/bin/env bash
# Lambda figures of issue 7: each function's arm64 zip (cargo-lambda, as deployed) and its init
# time — process start to its first `GET /runtime/invocation/next` — under the minimal Runtime
# API emulator (infra/aws/runtime_emulator.py), from host x86_64 release builds (the arm64
# binaries cannot run here). Baseline in the same run: `lambda-hello`, a bare lambda_runtime
# function (tests/src/bin/lambda-hello.rs), so the table shows what Sluice's own set-up adds.
# Usage: infra/bench/lambda.sh [RUNS=20]      (cold: ~15 min on 2 cores; prints Markdown)
set -euo pipefail
cd "$(dirname "$0")/../.."
RUNS=${1:-20}
LAMBDA_VENV=${SLUICE_LAMBDA_VENV:-.venv-lambda}
if [ ! -x "$LAMBDA_VENV/bin/cargo-lambda" ]; then
    python3 -m venv "$LAMBDA_VENV"
    "$LAMBDA_VENV/bin/pip" install --quiet --disable-pip-version-check cargo-lambda
fi
export PATH="$PWD/$LAMBDA_VENV/bin:$PATH"
functions=(ingest processor aggregator)
echo "== arm64 zips (cargo lambda build --release --arm64 --output-format zip)" >&2
cargo lambda build --release --arm64 --output-format zip --quiet \
    -p sluice-ingest -p sluice-processor -p sluice-aggregator >&2
echo "== host release builds for the init times" >&2
# Two commands: with `--bin`, cargo builds only the named binary of every package given.
cargo build --release --quiet -p sluice-ingest -p sluice-processor -p sluice-aggregator >&2
cargo build --release --quiet -p sluice-tests --bin lambda-hello >&2

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 - "$work/sqs-poison.json" <<'PY'
import json, sys
record = {"messageId": "m-1", "receiptHandle": "r-1", "body": "not a message of ours",
          "attributes": {}, "messageAttributes": {}, "md5OfBody": "", "eventSource": "aws:sqs",
          "eventSourceARN": "arn:aws:sqs:us-east-1:000000000000:q", "awsRegion": "us-east-1"}
json.dump({"Records": [record]}, open(sys.argv[1], "w"))
PY
# What each function reads at start-up; nothing is contacted during init.
q=http://127.0.0.1:1/000000000000
export AWS_REGION=us-east-1 AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench \
    AWS_ENDPOINT_URL=http://127.0.0.1:1 SLUICE_LOG=warn SLUICE_ADMIN_KEY=sk-bench-admin \
    SLUICE_KEYS_TABLE=keys SLUICE_CACHE_TABLE=cache SLUICE_JOBS_TABLE=jobs \
    SLUICE_LIMITS_TABLE=limits SLUICE_METRICS_TABLE=metrics SLUICE_JOBS_QUEUE_URL=$q/jobs \
    SLUICE_JOBS_DLQ_URL=$q/jobs-dlq SLUICE_USAGE_QUEUE_URL=$q/usage

init() { # binary event -> "median (min–max) | first"
    python3 infra/aws/runtime_emulator.py "$1" "$2" "$RUNS" | python3 -c '
import re, sys
text = sys.stdin.read()
init = re.search(r"init median ([\d.]+) ms \(min ([\d.]+), max ([\d.]+)\)", text)
first = re.search(r"first invocation median ([\d.]+) ms", text)
if not init or not first:
    sys.exit("runtime_emulator.py output not understood:\n" + text)
print(f"{init[1]} ms ({init[2]}–{init[3]}) | {first[1]} ms")'
}

echo
echo "| function | zip | unzipped bootstrap | init median (min–max), $RUNS runs | first invocation median |"
echo "| --- | ---: | ---: | ---: | ---: |"
for f in "${functions[@]}"; do
    zip=target/lambda/$f/bootstrap.zip
    unzipped=$(python3 -c 'import sys, zipfile; print(sum(i.file_size for i in zipfile.ZipFile(sys.argv[1]).infolist()))' "$zip")
    case $f in
        ingest) event=functions/ingest/tests/fixtures/apigw-v2-health.json ;;
        *) event=$work/sqs-poison.json ;;
    esac
    printf '| %s | %s B (%.2f MiB) | %s B | %s |\n' "$f" "$(stat -c %s "$zip")" \
        "$(echo "$(stat -c %s "$zip") / 1048576" | bc -l)" "$unzipped" \
        "$(init "target/release/$f" "$event")"
done
printf '| baseline: bare lambda_runtime | – | – | %s |\n' "$(init target/release/lambda-hello "$work/sqs-poison.json")"
