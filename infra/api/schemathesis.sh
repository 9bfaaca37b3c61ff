#!/usr/bin/env bash
# The OpenAPI contract check (issue 8): schemathesis sends generated requests, valid and
# invalid, to a real `sluice serve` (built-in mock provider, SQLite) using the document the
# server itself serves at /openapi.json, and fails on any 5xx, any status, content type or body
# the document does not allow, or a server that is no longer alive at the end.
#
# Two runs: every route but /admin with a tenant key, then /admin and /v1/metrics with the
# admin key (the stateful phase then also creates and revokes keys). Bounded: at most
# $SLUICE_ST_EXAMPLES (default 25) cases per operation and phase, a fixed seed
# ($SLUICE_ST_SEED, default 1) so a failure reproduces. About 40 s on 2 cores.
# Usage: infra/api/schemathesis.sh [SLUICE_BIN=target/debug/sluice]   (needs curl, python3)
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=${1:-target/debug/sluice}
EXAMPLES=${SLUICE_ST_EXAMPLES:-25}
SEED=${SLUICE_ST_SEED:-1}
VENV=$(realpath -m "${SLUICE_ST_VENV:-.venv-schemathesis}")
started=$(date +%s)

if ! "$VENV/bin/st" --version 2>/dev/null | grep -q "$(sed -n 's/^schemathesis==//p' infra/api/requirements.txt)"; then
    [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check -r infra/api/requirements.txt
fi

source infra/lib/mock-serve.sh
start_mock_serve "$BIN" schemathesis
echo "sluice serve (mock provider, SQLite) at $url; document at $url/openapi.json"

# One run: name, key, then filters. Prints schemathesis' summary; keeps its exit status.
status=0
run() {
    local name=$1 auth=$2
    shift 2
    echo "== schemathesis: $name"
    # From the scratch directory: schemathesis keeps a cache in ./.schemathesis.
    # One worker: with two, hypothesis parses lambdas' source on two threads at once, and
    # CPython 3.11's ast.parse is not thread-safe ("SystemError: AST constructor recursion
    # depth mismatch", python/cpython#106905); a clean-clone CI run failed on it. One worker
    # takes ~17 s for both runs.
    if (cd "$work" && "$VENV/bin/st" run "$url/openapi.json" "$@" \
        --header "Authorization: Bearer $auth" \
        --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance \
        --max-examples "$EXAMPLES" --seed "$SEED" --workers 1 --request-timeout 10 \
        >"$work/$name.log" 2>&1); then
        sed -n '/^Test cases:/,/^ *[0-9]* generated/p' "$work/$name.log"
    else
        status=1
        # The failures and the summary (schemathesis prints a curl line to reproduce each).
        sed -n '/^=* \(FAILURES\|ERRORS\) =*$/,$p' "$work/$name.log" | grep . || cat "$work/$name.log"
    fi
}
run tenant-key "$key" --exclude-path-regex '^/admin'
run admin-key "$SLUICE_ADMIN_KEY" --include-path-regex '^/(admin|v1/metrics)'

# Still alive and answering, and nothing panicked on the way.
if ! kill -0 "$server_pid" 2>/dev/null || ! curl -sf "$url/health" >/dev/null; then
    echo "sluice serve is no longer alive after the run:"
    tail -20 "$work/serve.err"
    status=1
fi
if grep -n 'panicked' "$work/serve.err" "$work/serve.out"; then
    status=1
fi
[ "$status" = 0 ] && echo "schemathesis: no 5xx, no answer outside the document, server alive ($(( $(date +%s) - started ))s)"
exit "$status"
