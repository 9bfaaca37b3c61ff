"""Starts `sluice serve` (the binary named by $SLUICE_BIN) on a free port with the built-in
mock provider and a fresh database, and creates a gateway key through the admin API."""

import json
import os
import socket
import subprocess
import tempfile
import time
import urllib.request

import pytest

ADMIN_KEY = "sk-sluice-admin-pytest"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def sluice():
    binary = os.environ.get("SLUICE_BIN", "target/debug/sluice")
    port = _free_port()
    tmp = tempfile.mkdtemp(prefix="sluice-pytest-")
    env = dict(os.environ, SLUICE_ADMIN_KEY=ADMIN_KEY)
    env.pop("SLUICE_CONFIG", None)
    log = open(os.path.join(tmp, "serve.log"), "wb")
    proc = subprocess.Popen(
        [binary, "serve", "--listen", f"127.0.0.1:{port}", "--db", os.path.join(tmp, "s.db")],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 20
    while True:
        try:
            urllib.request.urlopen(f"{base}/health", timeout=1).read()
            break
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"sluice serve did not start; see {log.name}")
            time.sleep(0.05)
    request = urllib.request.Request(
        f"{base}/admin/keys",
        data=json.dumps({"tenant": "pytest"}).encode(),
        headers={"Authorization": f"Bearer {ADMIN_KEY}", "Content-Type": "application/json"},
        method="POST",
    )
    key = json.loads(urllib.request.urlopen(request).read())["key"]
    yield {"base_url": f"{base}/v1", "key": key}
    proc.terminate()
    proc.wait(timeout=10)
