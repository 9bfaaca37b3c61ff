# Sourced by scripts that need a throwaway `sluice serve` (built-in mock provider, SQLite):
#   source infra/lib/mock-serve.sh; start_mock_serve BIN TENANT
# sets $work (a scratch directory, removed on exit), $server_pid, $url, $SLUICE_ADMIN_KEY and
# $key (a key of TENANT); the server's stdout/stderr are in $work/serve.out / serve.err. The
# server is stopped on exit.
work=$(mktemp -d)
server_pid=
cleanup() {
    if [ -n "$server_pid" ]; then
        kill "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

start_mock_serve() {
    local bin=$1 tenant=$2
    # A private copy: builds by others sharing target/ may replace the binary during the run.
    cp "$bin" "$work/sluice"
    unset SLUICE_CONFIG SLUICE_LISTEN SLUICE_DB SLUICE_LOG_FILE SLUICE_STORE SLUICE_QUEUE \
        SLUICE_TABLE_PREFIX SLUICE_JOBS_QUEUE_URL SLUICE_URL SLUICE_KEY
    export SLUICE_ADMIN_KEY="sk-sluice-admin-$tenant-$$"
    # The files exist before the server starts: the background shell opens its redirections
    # only after the fork, and reading a missing file below would end the script (set -e).
    : >"$work/serve.out"
    : >"$work/serve.err"
    SLUICE_LOG=warn "$work/sluice" serve --listen 127.0.0.1:0 --db "$work/serve.db" \
        >"$work/serve.out" 2>"$work/serve.err" &
    server_pid=$!
    url=
    for _ in $(seq 200); do
        url=$(sed -n 's/^Sluice listening on //p' "$work/serve.err")
        [ -n "$url" ] && break
        kill -0 "$server_pid" 2>/dev/null || break
        sleep 0.1
    done
    if [ -z "$url" ]; then
        echo "sluice serve did not start:"
        cat "$work/serve.err"
        exit 1
    fi
    key=$(curl -sf "$url/admin/keys" -H "Authorization: Bearer $SLUICE_ADMIN_KEY" \
        -H 'Content-Type: application/json' -d "{\"tenant\":\"$tenant\"}" |
        python3 -c 'import json, sys; print(json.load(sys.stdin)["key"])')
}
