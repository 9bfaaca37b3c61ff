#!/usr/bin/env bash
# `sam build` of template.yaml (BuildMethod rust-cargolambda, arm64), offline. Needs the SAM
# venv (infra/aws/sam-venv.sh), cargo-lambda (.venv-lambda) first on PATH — otherwise SAM
# says "Zig is not installed" — and the aarch64-unknown-linux-gnu Rust target.
# Usage: infra/aws/sam-build.sh   (output in .aws-sam/build; prints each function's size)
set -euo pipefail
cd "$(dirname "$0")/../.."
SAM_VENV=$(infra/aws/sam-venv.sh)
LAMBDA_VENV=${SLUICE_LAMBDA_VENV:-.venv-lambda}
if [ ! -x "$LAMBDA_VENV/bin/cargo-lambda" ]; then
    python3 -m venv "$LAMBDA_VENV"
    "$LAMBDA_VENV/bin/pip" install --quiet --disable-pip-version-check cargo-lambda
fi
export PATH="$PWD/$LAMBDA_VENV/bin:$PWD/$SAM_VENV/bin:$PATH"
export SAM_CLI_TELEMETRY=0 AWS_DEFAULT_REGION=${AWS_DEFAULT_REGION:-us-east-1}
sam build --template template.yaml
for f in .aws-sam/build/*/bootstrap; do
    printf '%s: %s bytes\n' "$f" "$(stat -c %s "$f")"
done
