"""Starts `sluice serve` (the binary named by $SLUICE_BIN) on a free port with a fresh
database and creates a gateway key through the admin API: once with the built-in mock
provider (`sluice`), and once in front of the fake provider ($FAKE_UPSTREAM_BIN), which
speaks OpenAI's, Anthropic's and Gemini's wire formats (`providers`). `sluice_admin` is one
more built-in server per test module, for tests that create their own keys and count
every request the server saw. `broken_providers` puts Sluice in front of fake providers
that break every answer half-way."""

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


def _wait_for(url: str, proc: subprocess.Popen, log_name: str) -> None:
    deadline = time.time() + 20
    while True:
        try:
            urllib.request.urlopen(url, timeout=1).read()
            return
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"{proc.args[0]} did not start; see {log_name}")
            time.sleep(0.05)


def _serve(extra_args, tmp):
    """Runs `sluice serve` with `extra_args`; returns (process, base URL, gateway key)."""
    binary = os.environ.get("SLUICE_BIN", "target/debug/sluice")
    port = _free_port()
    env = dict(os.environ, SLUICE_ADMIN_KEY=ADMIN_KEY)
    env.pop("SLUICE_CONFIG", None)
    log = open(os.path.join(tmp, "serve.log"), "wb")
    proc = subprocess.Popen(
        [binary, "serve", "--listen", f"127.0.0.1:{port}", "--db", os.path.join(tmp, "s.db")]
        + extra_args,
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    base = f"http://127.0.0.1:{port}"
    _wait_for(f"{base}/health", proc, log.name)
    request = urllib.request.Request(
        f"{base}/admin/keys",
        data=json.dumps({"tenant": "pytest"}).encode(),
        headers={"Authorization": f"Bearer {ADMIN_KEY}", "Content-Type": "application/json"},
        method="POST",
    )
    key = json.loads(urllib.request.urlopen(request).read())["key"]
    return proc, base, key


@pytest.fixture(scope="session")
def sluice():
    tmp = tempfile.mkdtemp(prefix="sluice-pytest-")
    proc, base, key = _serve([], tmp)
    yield {"base_url": f"{base}/v1", "key": key}
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture(scope="module")
def sluice_admin():
    """A fresh `sluice serve` on the built-in mock provider that only this module talks to:
    its URL, the admin key and the path of its log."""
    tmp = tempfile.mkdtemp(prefix="sluice-pytest-admin-")
    proc, base, _ = _serve([], tmp)
    yield {"url": base, "admin_key": ADMIN_KEY, "log": os.path.join(tmp, "serve.log")}
    proc.terminate()
    proc.wait(timeout=10)


PROVIDERS_CONFIG = """
[routing]
backoff_base_ms = 10

[[providers]]
name = "openai"
kind = "openai"
base_url = "{url}/v1"
api_keys = ["sk-upstream"]

[[providers]]
name = "anthropic"
kind = "anthropic"
base_url = "{url}/v1"
api_keys = ["ak-upstream"]

[[providers]]
name = "gemini"
kind = "gemini"
base_url = "{url}/v1beta"
api_keys = ["gk-upstream"]

[[models]]
name = "gpt"
deployments = [{{ provider = "openai", model = "gpt-4o-mini" }}]

[[models]]
name = "claude"
deployments = [{{ provider = "anthropic", model = "claude-sonnet-4-5" }}]

[[models]]
name = "gemini"
deployments = [{{ provider = "gemini", model = "gemini-2.0-flash" }}]

[[models]]
name = "gemini3"
deployments = [{{ provider = "gemini", model = "gemini-3-pro-preview" }}]
"""


def _fake_upstream(tmp, name, *args):
    """Starts the fake provider ($FAKE_UPSTREAM_BIN) with `args` after its address; returns
    (process, base URL)."""
    fake_bin = os.environ.get("FAKE_UPSTREAM_BIN", "target/debug/fake-upstream")
    fake_port = _free_port()
    fake_log = open(os.path.join(tmp, f"{name}.log"), "wb")
    fake = subprocess.Popen(
        [fake_bin, f"127.0.0.1:{fake_port}", *args], stdout=fake_log, stderr=subprocess.STDOUT
    )
    deadline = time.time() + 20
    while True:
        try:
            socket.create_connection(("127.0.0.1", fake_port), timeout=1).close()
            return fake, f"http://127.0.0.1:{fake_port}"
        except OSError:
            if fake.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"fake upstream did not start; see {fake_log.name}")
            time.sleep(0.05)


@pytest.fixture(scope="session")
def providers():
    """Sluice with models `gpt`, `claude` and `gemini`, each on the fake provider's routes
    for that wire format, and `gemini3` (Gemini 3: thought signatures required)."""
    tmp = tempfile.mkdtemp(prefix="sluice-pytest-providers-")
    fake, url = _fake_upstream(tmp, "fake")
    config = os.path.join(tmp, "sluice.toml")
    with open(config, "w") as f:
        f.write(PROVIDERS_CONFIG.format(url=url))
    proc, base, key = _serve(["--config", config], tmp)
    yield {"base_url": base, "key": key}
    proc.terminate()
    proc.wait(timeout=10)
    fake.terminate()
    fake.wait(timeout=10)


BROKEN_CONFIG = """
[[providers]]
name = "cut-openai"
kind = "openai"
base_url = "{cut}/v1"
api_keys = ["sk-upstream"]

[[providers]]
name = "cut-anthropic"
kind = "anthropic"
base_url = "{cut}/v1"
api_keys = ["ak-upstream"]

[[providers]]
name = "truncated"
kind = "openai"
base_url = "{truncated}/v1"
api_keys = ["sk-upstream"]

[[models]]
name = "cut"
deployments = [{{ provider = "cut-openai", model = "gpt-4o-mini" }}]

[[models]]
name = "cut-claude"
deployments = [{{ provider = "cut-anthropic", model = "claude-sonnet-4-5" }}]

[[models]]
name = "truncated"
deployments = [{{ provider = "truncated", model = "gpt-4o-mini" }}]
"""


@pytest.fixture(scope="session")
def broken_providers():
    """Sluice in front of providers that break every answer half-way: `cut` and
    `cut-claude` drop the connection mid-body (OpenAI and Anthropic wire formats),
    `truncated` ends the body early as if it were whole."""
    tmp = tempfile.mkdtemp(prefix="sluice-pytest-broken-")
    cut, cut_url = _fake_upstream(tmp, "cut", "0", "cut-off")
    truncated, truncated_url = _fake_upstream(tmp, "truncated", "0", "truncated")
    config = os.path.join(tmp, "sluice.toml")
    with open(config, "w") as f:
        f.write(BROKEN_CONFIG.format(cut=cut_url, truncated=truncated_url))
    proc, base, key = _serve(["--config", config], tmp)
    yield {"base_url": base, "key": key}
    proc.terminate()
    proc.wait(timeout=10)
    for fake in (cut, truncated):
        fake.terminate()
        fake.wait(timeout=10)
