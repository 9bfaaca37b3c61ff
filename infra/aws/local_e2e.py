"""End to end through the local serverless topology (infra/aws/local.sh), loopback only.

Starts two fake providers (the project's `fake-upstream`: one instant, one taking 3 s), then
infra/aws/local.sh with a config that points the functions at them, and drives the topology
over HTTP through the ingest functions' function-URL endpoints (API Gateway payload 2.0).
The provider key and the admin key are secrets on moto: the functions get only their ARNs
and read them at start-up, as on AWS (the public ingest functions and the processor the
provider key, the admin function the admin key).


  0. keys are minted through AdminFunction (its function URL has AuthType AWS_IAM, not
     enforced locally); both public ingest functions answer /admin/* with 404
     `admin_not_served`, even with the admin key, and mint nothing
  1. a chat completion (cache miss), the same again (cache hit), one through the OpenAI SDK;
     no key is 401
  2. 202 jobs that the SQS event-source emulator hands to the processor in one batch (the
     template's BatchSize 10 / 1 s window), each read back by id
  3. usage events: ingest and processor -> UsageQueue -> aggregator -> GET /v1/metrics
  4. a key with rpm = 3 used through IngestFunction and IngestStreamFunction, two ingest
     processes (two watches): the second process refuses what the first used up
  5. streaming: SSE chunks, usage and [DONE] from IngestStreamFunction (RESPONSE_STREAM), and
     the same request buffered whole through IngestFunction
  6. kill -9 of the processor process while its batch of slow jobs is in flight: the
     messages come back after the visibility timeout, a new environment runs each job again,
     every job succeeds once, and the key's ledger is billed once per job
  7. a message that names no job is reported failed (ReportBatchItemFailures) at every
     receive and moto moves it to the dead-letter queue after maxReceiveCount (5)

Every check prints what it measured. Usage: python infra/aws/local_e2e.py (the test venv's
python; env SLUICE_VENV / SLUICE_LAMBDA_VENV / SLUICE_SAM_VENV as for local.sh,
FAKE_UPSTREAM_BIN for the fake, built if missing). Exit status 0 when every check held.
"""
from __future__ import annotations

import concurrent.futures
import functools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import boto3
import requests
from openai import OpenAI

ROOT = Path(__file__).resolve().parents[2]
# Every queue's visibility timeout and every function's timeout, for this run (the template's
# 360 s and 28-300 s are too long for a test). The functions refuse to start unless the
# visibility timeout is at least 6 x the processor's timeout and jobs.lease_s lies between them.
VISIBILITY_S = 30
FUNCTION_TIMEOUT_S = 5
HTTP_TIMEOUT_S = 30  # no call may wait forever on a function that did not start
DEADLINE_S = 900  # the whole run, start-up included
SLOW_MS = 3000
COST_NANO = 20_000  # the fake bills 10 prompt + 5 completion tokens; $1 and $2 per million
started = time.monotonic()


def say(check: str, measured: str) -> None:
    print(f"  ok  {check}: {measured}  [{time.monotonic() - started:5.1f} s]", flush=True)


def wait_for(what: str, probe, timeout_s: float, every_s: float = 0.2):
    deadline = time.monotonic() + timeout_s
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(every_s)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def children(pid: int, exe: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                ppid = int(f.read().decode().rsplit(")", 1)[1].split()[1])
            if ppid == pid and os.path.basename(os.readlink(f"/proc/{entry}/exe")) == exe:
                found.append(int(entry))
        except (OSError, ValueError, IndexError):
            continue
    return found


class Topology:
    def __init__(self, state: dict):
        self.state = state
        self.ingest = state["functions"]["IngestFunction"]["url"]
        self.stream = state["functions"]["IngestStreamFunction"]["url"]
        self.admin = state["functions"]["AdminFunction"]["url"]
        assert state["functions"]["AdminFunction"]["url_auth"] == "AWS_IAM", state["functions"]
        self.http = requests.Session()
        self.http.request = functools.partial(self.http.request, timeout=HTTP_TIMEOUT_S)

    def events(self) -> list[dict]:
        with open(self.state["events"], encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]

    def batches_with(self, job_ids: list[str]) -> list[dict]:
        """The processor invocations whose records carry these jobs' messages."""
        return [e for e in self.events() if e["event"] == "invoke"
                and e["mapping"] == "ProcessorFunctionJobs"
                and any(j in b for b in e["bodies"] for j in job_ids)]

    def admin_key(self, body: dict) -> str:
        r = self.http.post(self.admin + "admin/keys", json=body,
                           headers={"Authorization": f"Bearer {self.state['admin_key']}"})
        assert r.status_code == 201, r.text
        return r.json()["key"]

    def chat(self, base: str, key: str, content: str, model: str = "e2e", **kw):
        headers = {"Authorization": f"Bearer {key}", **kw.pop("headers", {})}
        body = {"model": model, "max_tokens": 20,
                "messages": [{"role": "user", "content": content}], **kw}
        return self.http.post(base + "v1/chat/completions", json=body, headers=headers,
                              stream=bool(kw.get("stream")))

    def job(self, key: str, job_id: str) -> dict:
        r = self.http.get(self.ingest + f"v1/jobs/{job_id}",
                          headers={"Authorization": f"Bearer {key}"})
        assert r.status_code == 200, r.text
        return r.json()

    def ledger(self, key: str) -> tuple[int, int]:
        """The key's (spent, reserved) in nano-USD."""
        r = self.http.get(self.ingest + "v1/usage", headers={"Authorization": f"Bearer {key}"})
        budget = r.json()["limits"]["key"]["budget"]
        return round(budget["spent_usd"] * 1e9), round(budget["reserved_usd"] * 1e9)

    def submit_jobs(self, key: str, model: str, prompts: list[str]) -> list[str]:
        def one(prompt):
            r = self.chat(self.ingest, key, prompt, model, headers={"Prefer": "respond-async"})
            assert r.status_code == 202, r.text
            return r.json()["id"]

        with concurrent.futures.ThreadPoolExecutor(len(prompts)) as pool:
            return list(pool.map(one, prompts))


# The provider key comes from the providers secret on moto (--provider-keys), which the public
# ingest functions and the processor read by ARN at start-up; the admin function and the
# housekeeper, which may not read it, start without.
PROVIDER_KEYS = json.dumps({"E2E_PROVIDER_KEY": "sk-provider-e2e"})


def config(fast: int, slow: int) -> str:
    return f"""
[server]
upstream_timeout_s = 20

[[providers]]
name = "fake"
kind = "openai"
base_url = "http://127.0.0.1:{fast}/v1"
api_keys = ["${{E2E_PROVIDER_KEY}}"]

[[providers]]
name = "slow"
kind = "openai"
base_url = "http://127.0.0.1:{slow}/v1"
api_keys = ["${{E2E_PROVIDER_KEY}}"]

[[models]]
name = "e2e"
deployments = [{{ provider = "fake", model = "gpt-4o-mini" }}]
price = {{ input_per_mtok = 1.0, output_per_mtok = 2.0 }}

# Every job calls the provider: a job run twice would be paid twice.
[[models]]
name = "e2e-slow"
deployments = [{{ provider = "slow", model = "gpt-4o-mini" }}]
price = {{ input_per_mtok = 1.0, output_per_mtok = 2.0 }}
cache_ttl_s = 0

[limits]
# The reservation of a run cut off by the kill is given back soon after; it must outlive
# the longest invocation (the functions check this at start-up).
reservation_ttl_s = {FUNCTION_TIMEOUT_S + 1}

[jobs]
visibility_timeout_s = {VISIBILITY_S}
# At least the processor's timeout, and shorter than the visibility timeout, so the message
# redelivered after the kill can claim the job again.
lease_s = {FUNCTION_TIMEOUT_S}

[metrics]
flush_every_ms = 300
"""


def checks(top: Topology, sqs) -> None:
    state = top.state
    # 0. secrets by ARN: each function gets only the ARNs of the secrets its role may read
    # (local.sh refuses to start a function whose environment holds a secret value).
    arns = {name: sorted(fn["secret_arns"]) for name, fn in state["functions"].items()}
    provider, admin_key = ["SLUICE_PROVIDER_SECRET_ARN"], ["SLUICE_ADMIN_KEY_SECRET_ARN"]
    assert arns == {"IngestFunction": provider, "IngestStreamFunction": provider,
                    "ProcessorFunction": provider, "AdminFunction": admin_key,
                    "AggregatorFunction": [], "HousekeeperFunction": []}, arns
    assert all(v.startswith("arn:aws:secretsmanager:")
               for fn in state["functions"].values() for v in fn["secret_arns"].values())
    say("secrets by ARN", ", ".join(f"{n}: {len(a)}" for n, a in arns.items())
        + " secret ARNs, no secret value in any environment")
    jobs_queue = state["resources"]["JobsQueue"]["QueueUrl"]
    dlq = state["resources"]["JobsDeadLetterQueue"]["QueueUrl"]
    poison = sqs.send_message(QueueUrl=jobs_queue, MessageBody="not a job message")["MessageId"]
    key = top.admin_key({"tenant": "e2e", "budget_usd": 100, "period": "day"})
    limited = top.admin_key({"tenant": "e2e-rpm", "rpm": 3})
    run = uuid.uuid4().hex[:8]

    # 0. the admin API only on the admin function
    admin = {"Authorization": f"Bearer {state['admin_key']}"}
    listed = top.http.get(top.admin + "admin/keys", headers=admin)
    assert listed.status_code == 200, listed.text
    before = len(listed.json()["data"])
    for base in (top.ingest, top.stream):
        for method, path in (("POST", "admin/keys"), ("GET", "admin/keys"),
                             ("GET", "admin/usage?tenant=e2e")):
            r = top.http.request(method, base + path, headers=admin,
                                 json={"tenant": "intruder"} if method == "POST" else None)
            assert r.status_code == 404, (base, path, r.status_code, r.text)
            assert r.json()["error"]["code"] == "admin_not_served", r.text
    refused = top.http.post(top.admin + "v1/chat/completions", headers={
        "Authorization": f"Bearer {key}"}, json={"model": "e2e", "messages": []})
    assert refused.status_code == 404, refused.text
    after = top.http.get(top.admin + "admin/keys", headers=admin).json()["data"]
    assert len(after) == before and all(k["tenant"] != "intruder" for k in after), after
    say("admin API only behind the admin function",
        f"keys minted via AdminFunction; 6 admin calls to the public functions: 404 "
        f"admin_not_served; {len(after)} keys, none minted by them")

    # 1. cache miss, hit, the OpenAI SDK, no key
    r = top.chat(top.ingest, "", "hello")
    assert r.status_code == 401, r.status_code
    t0 = time.monotonic()
    first = top.chat(top.ingest, key, f"hello {run}")
    miss_ms = (time.monotonic() - t0) * 1000
    t0 = time.monotonic()
    second = top.chat(top.ingest, key, f"hello {run}")
    hit_ms = (time.monotonic() - t0) * 1000
    assert first.status_code == 200 and second.status_code == 200, (first.text, second.text)
    assert first.headers["x-sluice-cache"] == "miss", first.headers
    assert second.headers["x-sluice-cache"] == "hit", second.headers
    assert second.json()["choices"] == first.json()["choices"]
    sdk = OpenAI(base_url=top.ingest + "v1", api_key=key, timeout=HTTP_TIMEOUT_S, max_retries=0)
    answer = sdk.chat.completions.create(
        model="e2e", max_tokens=20, messages=[{"role": "user", "content": f"sdk {run}"}])
    assert answer.choices[0].message.content and answer.usage.total_tokens == 15
    say("HTTP API -> IngestFunction", f"401 without key; miss {miss_ms:.0f} ms "
        f"(cost ${first.headers['x-sluice-cost-usd']}), hit {hit_ms:.0f} ms (cost "
        f"${second.headers['x-sluice-cost-usd']}); OpenAI SDK answer, {answer.usage.total_tokens} tokens")

    # 2. jobs: 202, one SQS batch to the processor, results by id
    t0 = time.monotonic()
    ids = top.submit_jobs(key, "e2e", [f"job {run} {i}" for i in range(3)])
    done = wait_for("3 jobs to succeed", lambda: (
        js if all(j["status"] == "succeeded" for j in js) else None
    ) if (js := [top.job(key, i) for i in ids]) else None, 30)
    took = time.monotonic() - t0
    assert all(j["result"]["choices"][0]["message"]["content"] for j in done)
    batches = top.batches_with(ids)
    assert len(batches) == 1, f"the 3 jobs did not arrive as one batch: {batches}"
    mapping = state["mappings"]["ProcessorFunctionJobs"]
    say("202 jobs -> JobsQueue -> ProcessorFunction", f"3 jobs succeeded {took:.1f} s after "
        f"submission, delivered in one batch of {batches[0]['records']} records (batch size "
        f"{mapping['batch_size']}, window {mapping['window_s']:g} s); results read by id")

    # 3. usage -> aggregator -> /v1/metrics: miss, hit, SDK call, 3 jobs
    def metrics():
        r = top.http.get(top.ingest + "v1/metrics", headers={"Authorization": f"Bearer {key}"})
        totals = r.json()["totals"]
        return totals if totals["requests"] >= 6 and totals["cache_hits"] >= 1 else None

    t0 = time.monotonic()
    totals = wait_for("usage in /v1/metrics", metrics, 30, 0.5)
    aggregated = [e for e in top.events() if e["event"] == "invoked"
                  and e["mapping"] == "AggregatorFunctionUsage"]
    say("usage -> UsageQueue -> AggregatorFunction -> GET /v1/metrics",
        f"{totals['requests']} requests, {totals['cache_hits']} cache hit, "
        f"{totals['tokens_in']}+{totals['tokens_out']} tokens, ${totals['cost_usd']:.6f}, "
        f"p50 {totals['p50_ms']} ms; visible {time.monotonic() - t0:.1f} s after the jobs, "
        f"{len(aggregated)} aggregator invocations ({sum(e['records'] for e in aggregated)} messages)")

    # 4. rate limit across two ingest processes
    statuses_a = [top.chat(top.ingest, limited, f"rpm {run} a{i}").status_code for i in range(3)]
    refused_b = [top.chat(top.stream, limited, f"rpm {run} b{i}") for i in range(3)]
    last_a = top.chat(top.ingest, limited, f"rpm {run} a3")
    assert statuses_a == [200, 200, 200], statuses_a
    assert [r.status_code for r in refused_b] == [429] * 3, [r.text for r in refused_b]
    assert last_a.status_code == 429, last_a.text
    pids = {name: children(state["functions"][name]["watch_pid"], "ingest")
            for name in ("IngestFunction", "IngestStreamFunction")}
    assert all(len(p) == 1 for p in pids.values()) and pids["IngestFunction"] != pids["IngestStreamFunction"], pids
    say("rpm = 3 across two ingest processes",
        f"IngestFunction (pid {pids['IngestFunction'][0]}) admitted 3/3; IngestStreamFunction "
        f"(pid {pids['IngestStreamFunction'][0]}) refused 3/3 with 429 (Retry-After "
        f"{refused_b[0].headers.get('retry-after')} s); IngestFunction's 4th: 429")

    # 5. streaming (function URL, RESPONSE_STREAM) and the buffered SSE body
    def stream(base):
        r = top.chat(base, key, f"stream {run}", stream=True,
                     stream_options={"include_usage": True})
        t0 = time.monotonic()
        first_at, lines = None, []
        for line in r.iter_lines():
            if line and first_at is None:
                first_at = time.monotonic() - t0
            lines.append(line.decode())
        return r, lines

    r, lines = stream(top.stream)
    assert r.headers["content-type"].startswith("text/event-stream"), r.headers
    chunks = [json.loads(x[6:]) for x in lines if x.startswith("data: {")]
    assert chunks and all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert any(c.get("usage") for c in chunks) and [x for x in lines if x][-1] == "data: [DONE]"
    plain = top.chat(top.stream, key, f"hello {run}")
    assert plain.status_code == 200 and plain.json()["object"] == "chat.completion"
    buffered, blines = stream(top.ingest)
    assert buffered.headers["content-type"].startswith("text/event-stream")
    assert [x for x in blines if x][-1] == "data: [DONE]"
    say("streaming", f"IngestStreamFunction: {len(chunks)} SSE chunks with usage and [DONE], JSON "
        "answers too; IngestFunction (buffered, as API Gateway returns it): the whole SSE body")

    # 6. kill -9 the processor mid-batch
    before = top.ledger(key)
    ids = top.submit_jobs(key, "e2e-slow", [f"slow {run} {i}" for i in range(3)])
    wait_for("the slow jobs to be claimed", lambda: all(
        top.job(key, i)["status"] == "running" for i in ids), 20, 0.1)
    time.sleep(1.0)  # well into the provider calls (3 s each)
    watch_pid = state["functions"]["ProcessorFunction"]["watch_pid"]
    [victim] = children(watch_pid, "processor")
    [in_flight] = top.batches_with(ids)
    job_messages = {m for m, b in zip(in_flight["message_ids"], in_flight["bodies"])
                    if any(j in b for j in ids)}
    assert len(job_messages) == 3 and not any(
        e["event"] == "invoked" and e["t"] > in_flight["t"] for e in top.events()
        if e.get("mapping") == "ProcessorFunctionJobs"), in_flight
    os.kill(victim, signal.SIGKILL)
    killed_at = time.time()
    say("kill -9", f"processor pid {victim} killed {(killed_at - in_flight['t']) * 1000:.0f} ms "
        f"into its invocation with a batch of {in_flight['records']} records (the 3 slow jobs "
        f"claimed, their {SLOW_MS} ms provider calls under way)")
    finals = wait_for("the slow jobs to finish", lambda: (
        js if all(j["status"] in ("succeeded", "failed") for j in js) else None
    ) if (js := [top.job(key, i) for i in ids]) else None, 60, 0.25)
    back_after = time.time() - killed_at
    assert all(j["status"] == "succeeded" for j in finals), finals
    attempts = [j["attempts"] for j in finals]
    costs = [round(j["cost_usd"] * 1e9) for j in finals]
    assert costs == [COST_NANO] * 3, costs
    # The killed run's reservation is given back once it is older than reservation_ttl_s, by
    # the housekeeper's next scheduled run (rate(1 minute) in the template).
    spent = wait_for("the ledger to settle", lambda: (
        led if (led := top.ledger(key))[1] == before[1] else None), 75, 0.5)
    settled_after = time.time() - killed_at
    # The housekeeper gives holds back first in its pass, and the topology logs its `scheduled`
    # event only once the invocation has returned: the ledger can settle before the event is
    # written. The processor has a schedule too (the provider Batch API pass), answering no
    # report.
    released = wait_for("the housekeeper's report of the released hold", lambda: [
        e for e in top.events() if e["event"] == "scheduled" and e["t"] > killed_at
        and e.get("function") == "HousekeeperFunction"
        and (e.get("response") or {}).get("holds_released", 0) > 0], FUNCTION_TIMEOUT_S + 5, 0.2)
    billed = spent[0] - before[0]
    assert billed == sum(costs), f"billed {billed} nano-USD for jobs costing {sum(costs)}"
    evs = [e for e in top.events() if e["t"] >= in_flight["t"]]
    failed = [e for e in evs if e["event"] == "invoke_failed"]
    resets = [e for e in evs if e["event"] == "environment_reset"]
    again = [(e["t"], n) for e in evs if e["event"] == "invoke" and e["t"] > killed_at
             for m, n in zip(e["message_ids"], e["receive_counts"]) if m in job_messages]
    assert failed and resets and len(again) == 3, (failed, resets, again)
    say("no job lost, none billed twice",
        f"the batch's invocation failed ({failed[0]['error'][:45]}…) and nothing was deleted; "
        f"environment reset; the 3 job messages redelivered {again[0][0] - killed_at:.1f} s "
        f"after the kill (visibility {VISIBILITY_S} s; receive counts {[n for _, n in again]}); "
        f"all succeeded {back_after:.1f} s after the kill, attempts {attempts}; ledger "
        f"+{billed} nano-USD = 3 x {COST_NANO}, reserved back to {spent[1] - before[1]} "
        f"{settled_after:.0f} s after the kill (the housekeeper released "
        f"{released[0]['response']['holds_released']} expired holds)")

    # 7. the poison message: reported failed each time, then the dead-letter queue
    def dead_letter():
        got = sqs.receive_message(QueueUrl=dlq, WaitTimeSeconds=1,
                                  MessageSystemAttributeNames=["All"]).get("Messages", [])
        return got[0] if got and got[0]["MessageId"] == poison else None

    wait_for("the poison message in the DLQ", dead_letter, 6 * VISIBILITY_S + 20, 0.5)
    deliveries = [e for e in top.events() if e["event"] == "invoke" and poison in e["message_ids"]]
    reported = [e for e in top.events() if e["event"] == "invoked"
                and poison in e.get("left_for_retry", [])]
    assert len(deliveries) == 5, deliveries
    counts = [e["receive_counts"][e["message_ids"].index(poison)] for e in deliveries]
    cut = len(deliveries) - len(reported)
    say("ReportBatchItemFailures + redrive", f"a message naming no job: delivered "
        f"{len(deliveries)}x (receive counts {counts}), listed in batchItemFailures and left "
        f"on the queue {len(reported)}x{f' (+{cut} in the killed batch)' if cut else ''}, "
        "then moved to JobsDeadLetterQueue (maxReceiveCount 5)")


def main() -> int:
    def out_of_time(_signum, _frame):
        raise TimeoutError(f"the local end-to-end run took longer than {DEADLINE_S} s")

    def terminated(signum, _frame):
        raise SystemExit(128 + signum)  # through the finally below: the topology is stopped

    signal.signal(signal.SIGALRM, out_of_time)
    signal.signal(signal.SIGTERM, terminated)
    signal.alarm(DEADLINE_S)
    fake = os.environ.get("FAKE_UPSTREAM_BIN") or str(ROOT / "target/debug/fake-upstream")
    if not Path(fake).exists():
        subprocess.run(["cargo", "build", "--workspace", "--bin", "fake-upstream"], cwd=ROOT, check=True)
    work = Path(tempfile.mkdtemp(prefix="sluice-local-e2e-"))
    procs: list[subprocess.Popen] = []
    topology = None
    ok = False
    try:
        fast, slow = free_port(), free_port()
        for port, delay in ((fast, 0), (slow, SLOW_MS)):
            procs.append(subprocess.Popen([fake, f"127.0.0.1:{port}", str(delay)],
                                          stderr=subprocess.DEVNULL))
        (work / "sluice.toml").write_text(config(fast, slow))
        state_file = work / "state.json"
        log = open(work / "local.log", "wb")
        topology = subprocess.Popen(
            [str(ROOT / "infra/aws/local.sh"), "--port", "0", "--quiet", "--no-reload", "--config",
             str(work / "sluice.toml"), "--visibility-timeout", str(VISIBILITY_S),
             "--function-timeout", str(FUNCTION_TIMEOUT_S), "--provider-keys", PROVIDER_KEYS,
             "--log-dir", str(work / "logs"), "--state-file", str(state_file)],
            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        wait_for("infra/aws/local.sh to be up", lambda: state_file.exists()
                 or topology.poll() is not None, 600, 0.25)
        if topology.poll() is not None:
            raise AssertionError("infra/aws/local.sh exited")
        state = json.loads(state_file.read_text())
        say("topology up", f"moto, {len(state['resources'])} tables/queues from template.yaml, "
            f"{len(state['functions'])} functions under cargo lambda watch, "
            f"{len(state['mappings'])} SQS mappings, {len(state['schedules'])} schedules")
        sqs = boto3.client("sqs", endpoint_url=state["endpoint"], region_name="us-east-1",
                           aws_access_key_id="testing", aws_secret_access_key="testing")
        checks(Topology(state), sqs)
        print(f"local topology end to end: all checks passed in {time.monotonic() - started:.0f} s")
        ok = True
        return 0
    except BaseException:
        print("\n--- local.sh output", file=sys.stderr)
        print((work / "local.log").read_text(errors="replace")[-4000:], file=sys.stderr)
        for f in sorted((work / "logs").glob("*")) if (work / "logs").exists() else []:
            print(f"--- {f.name} (last lines)", file=sys.stderr)
            print("\n".join(f.read_text(errors="replace").splitlines()[-25:]), file=sys.stderr)
        raise
    finally:
        if topology is not None and topology.poll() is None:
            os.killpg(topology.pid, signal.SIGTERM)
            try:
                topology.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(topology.pid, signal.SIGKILL)
        for p in procs:
            p.kill()
            p.wait()
        if ok:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"logs kept in {work}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
