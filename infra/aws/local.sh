#!/usr/bin/env bash
# The whole serverless topology of template.yaml on this machine, offline:
#   moto (DynamoDB, SQS, Secrets Manager, SSM) with the template's tables and queues, every
#   function under `cargo lambda watch`, and emulators for the template's event sources (SQS
#   event source mappings, schedules). See infra/aws/local_topology.py for what is emulated how.
#
#   infra/aws/local.sh                                # ports 9000.. ; Ctrl-C stops everything
#   infra/aws/local.sh --config my-sluice.toml        # SLUICE_CONFIG for every function (else the template's config layer)
#   infra/aws/local.sh --port 0 --quiet --state-file /tmp/topology.json   # free ports (tests)
# Other options: --param KEY=VALUE (template parameter), --env KEY=VALUE (every function),
# --admin-key K, --provider-keys '{"OPENAI_API_KEY":"..."}', --visibility-timeout S (every
# queue; the template's 360 s is long for a test), --log-dir DIR, --stack NAME, --no-build.
#
# Needs: the test venv with moto and boto3 (.venv, or SLUICE_VENV), cargo-lambda (.venv-lambda,
# or SLUICE_LAMBDA_VENV; installed if missing) and the SAM venv for samtranslator (.venv-sam, or
# SLUICE_SAM_VENV; infra/aws/sam-venv.sh installs it, ~3 min the first time).
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV=${SLUICE_VENV:-.venv}
LAMBDA_VENV=${SLUICE_LAMBDA_VENV:-.venv-lambda}
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c 'import boto3, moto' 2>/dev/null; then
    echo "local.sh: $VENV needs moto and boto3 (./infra/test.sh creates it, or:" \
        "python3 -m venv $VENV && $VENV/bin/pip install -r tests/python/requirements.txt)" >&2
    exit 1
fi
if [ ! -x "$LAMBDA_VENV/bin/cargo-lambda" ]; then
    python3 -m venv "$LAMBDA_VENV"
    "$LAMBDA_VENV/bin/pip" install --quiet --disable-pip-version-check cargo-lambda
fi
SAM_VENV=$(infra/aws/sam-venv.sh)
export PATH="$(cd "$LAMBDA_VENV/bin" && pwd):$PATH"

work=$(mktemp -d)
cleanup() {
    [ -n "${SLUICE_MOTO_PID:-}" ] && kill "$SLUICE_MOTO_PID" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

# What `sam deploy` would give CloudFormation: the template after the SAM transform.
AWS_DEFAULT_REGION=${AWS_REGION:-us-east-1} "$SAM_VENV/bin/python" infra/aws/sam_transform.py \
    "${SLUICE_TEMPLATE:-template.yaml}" >"$work/template.json"
eval "$(SLUICE_VENV="$VENV" infra/aws/moto.sh)"
"$VENV/bin/python" infra/aws/local_topology.py --template "$work/template.json" "$@" &
topology=$!
# On Ctrl-C or SIGTERM, Python stops the watches; moto goes once it has.
trap 'kill -TERM $topology 2>/dev/null; wait $topology; exit 130' INT
trap 'kill -TERM $topology 2>/dev/null; wait $topology; exit 143' TERM
wait $topology
