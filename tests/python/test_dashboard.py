"""The live dashboard (`GET /dashboard`) in headless Chromium, against a real `sluice serve`:
after known traffic (cache misses and hits on two models, one 429 from a key with `rpm = 1`),
the page's totals, per-group table and charts show exactly that traffic. A screenshot is
kept as a test artifact: target/test-artifacts/dashboard.png (under $CARGO_TARGET_DIR if set).

Chromium is required, not optional: infra/test.sh installs Debian's `chromium`; without it
these tests fail."""

import json
import os
import shutil
import struct
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from html.parser import HTMLParser
from pathlib import Path

import pytest

CHROMIUM = os.environ.get("CHROMIUM_BIN", "chromium")
REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = (REPO / os.environ.get("CARGO_TARGET_DIR", "target")) / "test-artifacts"
TENANT = "dash"
CHARTS = ["rps", "p50", "p95", "p99", "error_rate", "cache_hit_rate", "cost_per_request", "spend"]


def _call(url, key, body=None):
    """(status, JSON answer) of a GET, or of a POST when `body` is given."""
    request = urllib.request.Request(
        url,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def _chat(base, key, model, prompt):
    body = {"model": model, "messages": [{"role": "user", "content": prompt}]}
    return _call(f"{base}/v1/chat/completions", key, body)[0]


@pytest.fixture(scope="module")
def traffic(sluice_admin):
    """Sends the traffic the page must show, waits until the metrics rollup has it, and
    returns the server and the key the page is opened with (it has a budget)."""
    base, admin = sluice_admin["url"], sluice_admin["admin_key"]
    status, created = _call(
        f"{base}/admin/keys", admin, {"tenant": TENANT, "budget_usd": 1, "period": "day"}
    )
    assert status == 201, created
    key = created["key"]
    status, created = _call(f"{base}/admin/keys", admin, {"tenant": TENANT, "rpm": 1})
    assert status == 201, created
    tiny = created["key"]

    # gpt-4o-mini: 4 misses, 2 hits, then 1 miss and one 429 from the rpm=1 key: 8 requests.
    for prompt in ["one", "two", "three", "four"]:
        assert _chat(base, key, "gpt-4o-mini", prompt) == 200
    for prompt in ["one", "two"]:
        assert _chat(base, key, "gpt-4o-mini", prompt) == 200
    assert _chat(base, tiny, "gpt-4o-mini", "five") == 200
    assert _chat(base, tiny, "gpt-4o-mini", "six") == 429
    # gpt-4o: 2 misses (another model, so another cache key).
    for prompt in ["one", "two"]:
        assert _chat(base, key, "gpt-4o", prompt) == 200

    deadline = time.time() + 15
    while True:
        status, metrics = _call(f"{base}/v1/metrics?group_by=model", key)
        if status == 200 and metrics["totals"]["requests"] >= 10:
            break
        assert time.time() < deadline, f"the rollup did not show the traffic: {status} {metrics}"
        time.sleep(0.25)
    assert metrics["totals"]["requests"] == 10, metrics
    return {"url": base, "key": key, "admin_key": admin, "log": sluice_admin["log"]}


def _chromium(url, *args):
    """Runs headless Chromium on `url` for 12 s of virtual time (two refreshes or more);
    returns its stdout."""
    exe = shutil.which(CHROMIUM)
    if exe is None:
        pytest.fail(f"{CHROMIUM} is not installed (infra/test.sh installs Debian's chromium)")
    with tempfile.TemporaryDirectory(prefix="sluice-chromium-") as profile:
        done = subprocess.run(
            [exe, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--disable-background-networking", f"--user-data-dir={profile}",
             "--virtual-time-budget=12000", *args, url],
            capture_output=True, timeout=120,
        )
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-2000:]
    return done.stdout.decode()


class Dom(HTMLParser):
    """The rendered page as attribute dicts: by id, chart series, group rows, budget levels."""

    def __init__(self, html):
        super().__init__()
        self.body, self.by_id, self.series, self.rows, self.levels = {}, {}, {}, {}, {}
        self._chart = self._row = None
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "body":
            self.body = a
        if "id" in a:
            self.by_id[a["id"]] = a
        if tag == "svg" and "data-chart" in a:
            self._chart = a["data-chart"]
            self.series.setdefault(self._chart, {})
        if tag == "path" and "data-series" in a:
            self.series[self._chart][a["data-series"]] = a
        if tag == "tr" and "data-group" in a:
            self._row = self.rows.setdefault(a["data-group"], {})
        if tag == "td" and "data-col" in a and self._row is not None:
            self._row[a["data-col"]] = float(a["data-value"])
        if tag == "g" and "data-level" in a:
            self.levels[a["data-level"]] = a

    def total(self, name):
        return float(self.by_id[f"total-{name}"]["data-value"])


def _open(traffic, fragment="", key=None):
    key = key or traffic["key"]
    return Dom(_chromium(f"{traffic['url']}/dashboard#key={key}{fragment}", "--dump-dom"))


def test_the_charts_show_the_traffic_per_model(traffic):
    dom = _open(traffic)
    assert dom.body.get("data-state") == "ok", dom.by_id.get("status")
    assert int(dom.body["data-refreshes"]) >= 2, "the page refreshes itself"

    assert dom.total("requests") == 10
    assert dom.total("errors") == 1
    assert dom.total("cache-hits") == 2
    assert dom.total("error-rate") == pytest.approx(0.1, abs=1e-3)
    assert dom.total("cache-hit-rate") == pytest.approx(0.2, abs=1e-3)
    assert dom.total("cost") > 0 and dom.total("cost-per-request") > 0
    assert dom.total("p99") >= dom.total("p50") > 0

    mini, big = dom.rows["gpt-4o-mini"], dom.rows["gpt-4o"]
    assert (mini["requests"], mini["errors"], mini["cache_hits"]) == (8, 1, 2)
    assert (big["requests"], big["errors"], big["cache_hits"]) == (2, 0, 0)
    assert mini["cost_usd"] > 0 and big["cost_usd"] > 0

    for chart in CHARTS:
        assert set(dom.series[chart]) == {"gpt-4o-mini", "gpt-4o"}, chart
        for path in dom.series[chart].values():
            assert int(path["data-points"]) >= 1, (chart, path)

    def line(chart, group):
        return float(dom.series[chart][group]["data-max"])

    for group in ["gpt-4o-mini", "gpt-4o"]:
        for chart in ["rps", "p50", "p99", "cost_per_request", "spend"]:
            assert line(chart, group) > 0, (chart, group)
    assert line("error_rate", "gpt-4o-mini") > 0 and line("error_rate", "gpt-4o") == 0
    assert line("cache_hit_rate", "gpt-4o-mini") > 0 and line("cache_hit_rate", "gpt-4o") == 0

    budget = dom.levels["key"]
    assert float(budget["data-cap"]) == 1
    assert 0 < float(budget["data-spent"]) < 1

    # The key travelled in the fragment only: the server never saw it in a URL or header line.
    assert traffic["key"] not in Path(traffic["log"]).read_text()


def test_grouping_by_provider(traffic):
    dom = _open(traffic, "&group_by=provider&window=900")
    assert dom.body.get("data-state") == "ok", dom.by_id.get("status")
    # Requests no provider answered (the 2 cache hits, the 429) are filed under `none`.
    assert set(dom.series["rps"]) == {"mock", "none"}
    mock, none = dom.rows["mock"], dom.rows["none"]
    assert (mock["requests"], mock["errors"], mock["cache_hits"]) == (7, 0, 0)
    assert (none["requests"], none["errors"], none["cache_hits"]) == (3, 1, 2)
    assert dom.total("requests") == 10


def test_the_admin_key_sees_every_tenant(traffic):
    dom = _open(traffic, "&group_by=tenant", key=traffic["admin_key"])
    assert dom.body.get("data-state") == "ok", dom.by_id.get("status")
    assert "hidden" not in dom.by_id["tenant-field"], "the admin can pick a tenant"
    # Only tenant `dash` sent traffic (the fixture's own `pytest` key sent none).
    assert set(dom.series["rps"]) == {TENANT}
    assert dom.rows[TENANT]["requests"] == 10
    assert traffic["admin_key"] not in Path(traffic["log"]).read_text()


def test_screenshot_is_kept_as_an_artifact(traffic):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    png = ARTIFACTS / "dashboard.png"
    png.unlink(missing_ok=True)
    _chromium(
        f"{traffic['url']}/dashboard#key={traffic['key']}",
        f"--screenshot={png}",
        "--window-size=1280,1600",
    )
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    assert (width, height) == (1280, 1600)
    # A blank or unstyled page compresses to a few KB; eight charts do not.
    assert len(data) > 40_000, len(data)
    print(f"dashboard screenshot: {png}")
