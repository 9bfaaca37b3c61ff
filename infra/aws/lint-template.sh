#!/usr/bin/env bash
# Lint the SAM template offline: cfn-lint, the timeout checks (infra/aws/check-timeouts.py),
# then `sam validate --lint`.
# Exits non-zero on any finding (error or warning) from either tool.
#
# Usage: infra/aws/lint-template.sh [template]   (from any directory; default template.yaml)
set -euo pipefail

cd "$(dirname "$0")/../.."

template="${1:-template.yaml}"
venv="$(infra/aws/sam-venv.sh)"

# Offline and credential-free: sam validate only needs a region, and some versions want
# credentials to exist; these dummies are never sent anywhere. No telemetry, no update checks.
export AWS_DEFAULT_REGION="${AWS_DEFAULT_REGION:-us-east-1}"
export AWS_REGION="${AWS_REGION:-$AWS_DEFAULT_REGION}"
export AWS_ACCESS_KEY_ID="${AWS_ACCESS_KEY_ID:-testing}"
export AWS_SECRET_ACCESS_KEY="${AWS_SECRET_ACCESS_KEY:-testing}"
export SAM_CLI_TELEMETRY=0
export SAM_CLI_DISABLE_VERSION_CHECK=1 # harmless if this sam version ignores it

status=0

# --include-checks I: informational rules too (e.g. I3011, explicit DeletionPolicy on
# stateful resources), so every finding fails the lint, not only errors and warnings.
echo "== cfn-lint --include-checks I $template"
if "$venv/bin/cfn-lint" --include-checks I -- "$template"; then
  echo "cfn-lint: no findings"
else
  status=1
fi

echo "== timeouts agree (infra/aws/check-timeouts.py $template)"
if ! "$venv/bin/python" infra/aws/check-timeouts.py "$template"; then
  status=1
fi

echo "== sam validate --lint --template $template"
if ! "$venv/bin/sam" validate --lint --template "$template"; then
  status=1
fi

exit "$status"
