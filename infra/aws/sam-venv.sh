#!/usr/bin/env bash
# Create (idempotently) a Python venv holding the AWS SAM CLI and cfn-lint.
#
# It is its own venv because aws-sam-cli pins an older boto3 than moto (the
# test stand-in) wants. Location: ${SLUICE_SAM_VENV:-.venv-sam}, relative to
# the repo root unless absolute. Prints the venv path on success; pip is quiet.
#
# Usage: infra/aws/sam-venv.sh            (from any directory)
#        SLUICE_SAM_VENV=/tmp/sam infra/aws/sam-venv.sh
set -euo pipefail

cd "$(dirname "$0")/../.."

venv="${SLUICE_SAM_VENV:-.venv-sam}"
python="${PYTHON:-python3}"

# Ready already? Both tools must be importable/runnable from the venv.
if [ -x "$venv/bin/sam" ] && [ -x "$venv/bin/cfn-lint" ] \
    && "$venv/bin/sam" --version >/dev/null 2>&1 \
    && "$venv/bin/cfn-lint" --version >/dev/null 2>&1; then
  echo "$venv"
  exit 0
fi

if [ ! -x "$venv/bin/python" ]; then
  "$python" -m venv "$venv" >&2
fi

export PIP_DISABLE_PIP_VERSION_CHECK=1
"$venv/bin/python" -m pip install --quiet --upgrade pip >&2
"$venv/bin/python" -m pip install --quiet aws-sam-cli cfn-lint >&2

echo "$venv"
