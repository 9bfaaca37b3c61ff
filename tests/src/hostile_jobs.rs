//! The jobs part of the hostile-client suite (issue 13) as scenarios over any [`TestGateway`]:
//! `e2e/hostile/jobs.rs` runs them on SQLite in-process, `backends/hostile/jobs.rs` on
//! DynamoDB + SQS (moto). The gateway has no job workers: each scenario plays the queue itself
//! (receive up to ten, process them as one batch, delete what is done), exactly as the
//! processor Lambda and the `sluice serve` workers do, so it controls what shares a batch.
//! Each scenario returns its figures for RELIABILITY.md, "Hostile clients".

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt as _;
use serde_json::{Value, json};
use sluice::clock::{Clock as _, ManualClock};
use sluice::config::Config;
use sluice::deps::Deps;
use sluice::jobs::worker::process_deliveries;
use sluice::queue::Delivery;

use crate::gateway::ADMIN_KEY;
use crate::{
    Behaviour, CallbackReceiver, FakeUpstream, FaultyStore, Op, TestGateway, fake_config_with_jobs,
};

/// [`fake_config_with_jobs`] without workers, plus `embed-short` (an upstream model whose
/// context the fake ends at 64 tokens, so a few hundred characters overflow it — a limit the
/// gateway cannot know) and a daily budget for every tenant the scenarios use, so their spend
/// is on record.
pub fn config(base_url: &str) -> Config {
    let mut toml = fake_config_with_jobs(base_url, 0);
    toml.push_str(
        r#"
[[models]]
name = "embed-short"
deployments = [{ provider = "fake", model = "text-embedding-max-64" }]
price = { input_per_mtok = 0.02, output_per_mtok = 0.0 }
"#,
    );
    for tenant in TENANTS {
        toml.push_str(&format!(
            "\n[[tenants]]\nname = \"{tenant}\"\nbudget_usd = 10.0\nperiod = \"day\"\n"
        ));
    }
    Config::parse(&toml, "hostile jobs config", &|_| None).unwrap()
}

const TENANTS: [&str; 5] = ["revoked", "control", "attacker", "victim-a", "victim-b"];

/// A gateway for the scenarios, and the store wrapper that counts its store calls.
pub struct Hostile {
    /// The gateway (no job workers).
    pub gw: TestGateway,
    /// Its store, counting calls per operation.
    pub store: Arc<FaultyStore>,
}

impl Hostile {
    /// Starts a gateway over `deps` (built from [`config`]) with its store wrapped in a
    /// [`FaultyStore`] that injects nothing and counts every call.
    pub async fn start(config: &Config, mut deps: Deps, clock: ManualClock) -> Self {
        assert_eq!(
            config.jobs.workers, 0,
            "the scenarios play the queue themselves"
        );
        let store = FaultyStore::wrap(Arc::clone(&deps.store));
        deps.store = store.clone();
        Self {
            gw: TestGateway::start_deps(config, deps, clock).await,
            store,
        }
    }

    /// Runs the queue until it stays empty; returns how many batches were processed.
    pub async fn drain(&self) -> usize {
        let mut batches = 0;
        let mut idle = 0;
        while idle < 3 {
            let got = self.receive().await;
            if got.is_empty() {
                idle += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            idle = 0;
            batches += 1;
            self.process(&got).await;
        }
        batches
    }

    /// Up to ten messages, as one SQS receive or one `serve` worker round takes them.
    pub async fn receive(&self) -> Vec<Delivery> {
        self.gw
            .deps
            .queue
            .receive(10, Duration::ZERO)
            .await
            .unwrap()
    }

    /// Every queued message, taken off the queue and left unprocessed (until its visibility
    /// timeout): `want` of them, or fewer if no more come within a few tries.
    pub async fn take(&self, want: usize) -> Vec<Delivery> {
        let mut got = Vec::new();
        for _ in 0..50 {
            if got.len() >= want {
                break;
            }
            let more = self.receive().await;
            if more.is_empty() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            got.extend(more);
        }
        got
    }

    /// Processes deliveries as one batch and deletes what is done.
    pub async fn process(&self, deliveries: &[Delivery]) {
        process_deliveries(
            &self.gw.services.processor,
            &*self.gw.deps.queue,
            deliveries,
        )
        .await;
    }

    /// `POST /v1/jobs`; returns the raw response.
    pub async fn submit(&self, key: &str, endpoint: &str, request: &Value) -> reqwest::Response {
        self.gw
            .post(
                "/v1/jobs",
                key,
                &json!({"endpoint": endpoint, "request": request}),
            )
            .await
    }

    /// Submits every job (eight at a time) and returns their ids, in order.
    pub async fn submit_all(&self, jobs: &[(String, &str, Value)]) -> Vec<String> {
        futures_util::stream::iter(jobs)
            .map(|(key, endpoint, request)| async move {
                let r = self.submit(key, endpoint, request).await;
                assert_eq!(r.status(), 202, "submitting {request}");
                r.json::<Value>().await.unwrap()["id"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .buffered(8)
            .collect()
            .await
    }

    /// `GET /v1/jobs/{id}` with a key of the job's tenant.
    pub async fn job(&self, key: &str, id: &str) -> Value {
        let r = self
            .gw
            .http
            .get(format!("{}/v1/jobs/{id}", self.gw.url))
            .bearer_auth(key)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "reading {id}");
        r.json().await.unwrap()
    }

    /// A tenant's budget as the admin sees it: (spent, reserved) in nano-USD.
    pub async fn tenant_spend(&self, tenant: &str) -> (u64, u64) {
        let r = self
            .gw
            .http
            .get(format!("{}/admin/usage?tenant={tenant}", self.gw.url))
            .bearer_auth(ADMIN_KEY)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let usage: Value = r.json().await.unwrap();
        let budget = &usage["limits"]["tenant"]["budget"];
        let nanos = |v: &Value| (v.as_f64().unwrap() * 1e9).round() as u64;
        (nanos(&budget["spent_usd"]), nanos(&budget["reserved_usd"]))
    }

    /// Creates a key and returns (secret, id).
    pub async fn key(&self, tenant: &str) -> (String, String) {
        let created = self.gw.admin_create(json!({ "tenant": tenant })).await;
        (
            created["key"].as_str().unwrap().to_owned(),
            created["id"].as_str().unwrap().to_owned(),
        )
    }

    /// `DELETE /admin/keys/{id}`.
    pub async fn revoke(&self, id: &str) {
        let r = self
            .gw
            .http
            .delete(format!("{}/admin/keys/{id}", self.gw.url))
            .bearer_auth(ADMIN_KEY)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "revoking {id}");
    }
}

fn chat(prompt: &str) -> Value {
    json!({"model": "gpt-test", "messages": [{"role": "user", "content": prompt}]})
}

fn embed(model: &str, input: &str) -> Value {
    json!({"model": model, "input": input})
}

/// Every text input of every request the fake upstream received, with the request's index.
fn upstream_texts(up: &FakeUpstream) -> Vec<(usize, String)> {
    let mut texts = Vec::new();
    for (i, r) in up.requests().iter().enumerate() {
        let mut push = |v: &Value| {
            if let Some(s) = v.as_str() {
                texts.push((i, s.to_owned()));
            }
        };
        match &r.body["input"] {
            Value::Array(items) => items.iter().for_each(&mut push),
            other => push(other),
        }
        for m in r.body["messages"].as_array().into_iter().flatten() {
            push(&m["content"]);
        }
    }
    texts
}

/// What [`revoked_keys_queued_jobs`] measured.
#[derive(Debug)]
pub struct RevocationFigures {
    /// Jobs of the revoked key, queued before the revoke.
    pub revoked_jobs: usize,
    /// Callbacks received (all for the other tenant's jobs).
    pub callbacks: usize,
    /// Jobs of another tenant's key, in the same batches.
    pub control_jobs: usize,
    /// Batches of up to ten messages processed.
    pub batches: usize,
    /// Key reads the processor made.
    pub key_reads: usize,
    /// Upstream calls (all of them the control key's).
    pub upstream_calls: usize,
    /// Spend on record for the revoked key's tenant, nano-USD.
    pub revoked_spend: u64,
}

/// Issue 13, item 5: `n` jobs (chat and embeddings, half each) accepted from a key, which is
/// then revoked with `DELETE /admin/keys/{id}` before any runs; another tenant's jobs share
/// their batches, and six jobs of each key ask for a callback. Every revoked job ends `failed`
/// `key_revoked` (401), unbilled, never sent upstream and never called back; the other
/// tenant's jobs all run (and are called back); the processor reads each distinct key at most
/// once per batch.
pub async fn revoked_keys_queued_jobs(
    h: &Hostile,
    up: &FakeUpstream,
    n: usize,
) -> RevocationFigures {
    let (revoked, revoked_id) = h.key("revoked").await;
    // Same tenant, never revoked: reads the jobs afterwards (a revoked key cannot).
    let (reader, _) = h.key("revoked").await;
    let (control, _) = h.key("control").await;
    let mut jobs = Vec::new();
    let mut owners = Vec::new();
    for i in 0..n {
        let (endpoint, request) = if i % 2 == 0 {
            (
                "/v1/chat/completions",
                chat(&format!("revoked-key prompt {i}")),
            )
        } else {
            (
                "/v1/embeddings",
                embed("embed-test", &format!("revoked-key input {i}")),
            )
        };
        jobs.push((revoked.clone(), endpoint, request));
        owners.push(false);
        if i % 10 == 5 {
            let (endpoint, request) = if i % 20 == 5 {
                ("/v1/chat/completions", chat(&format!("control prompt {i}")))
            } else {
                (
                    "/v1/embeddings",
                    embed("embed-test", &format!("control input {i}")),
                )
            };
            jobs.push((control.clone(), endpoint, request));
            owners.push(true);
        }
    }
    let mut ids = h.submit_all(&jobs).await;
    // A few of each with a callback: the control key's are delivered, the revoked key's not.
    let hook = CallbackReceiver::start().await;
    let mut control_hooked = HashSet::new();
    for (i, key) in [&revoked, &control]
        .into_iter()
        .cycle()
        .take(12)
        .enumerate()
    {
        let is_control = *key == control;
        let spec = json!({"endpoint": "/v1/chat/completions",
            "request": chat(&format!("{} hooked {i}", if is_control { "control" } else { "revoked-key" })),
            "callback_url": hook.url});
        let r = h.gw.post("/v1/jobs", key, &spec).await;
        assert_eq!(r.status(), 202);
        let id = r.json::<Value>().await.unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned();
        if is_control {
            control_hooked.insert(id.clone());
        }
        ids.push(id);
        owners.push(is_control);
    }
    h.revoke(&revoked_id).await;
    let reads_before = h.store.calls(Op::KeyById);
    let batches = h.drain().await;
    let key_reads = h.store.calls(Op::KeyById) - reads_before;

    let mut control_chats = 0;
    for (id, is_control) in ids.iter().zip(&owners) {
        if *is_control {
            let job = h.job(&control, id).await;
            assert_eq!(job["status"], "succeeded", "{job}");
            control_chats += usize::from(job["endpoint"] == "/v1/chat/completions");
            continue;
        }
        let job = h.job(&reader, id).await;
        assert_eq!(job["status"], "failed", "{job}");
        assert_eq!(job["http_status"], 401, "{job}");
        assert_eq!(job["error"]["code"], "key_revoked", "{job}");
        assert_eq!(job["error"]["type"], "invalid_request_error", "{job}");
        assert_eq!(job["usage"]["prompt_tokens"], 0, "{job}");
        assert_eq!(job["cost_usd"], 0.0, "{job}");
        assert_eq!(job["attempts"], 1, "{job}");
        assert!(job.get("result").is_none(), "{job}");
    }
    // Callbacks are sent before a message is deleted: all that will come have come.
    let called_back: HashSet<String> = hook
        .received()
        .iter()
        .map(|r| {
            serde_json::from_slice::<Value>(&r.body).unwrap()["id"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(
        called_back, control_hooked,
        "only the live key's jobs are called back"
    );
    let texts = upstream_texts(up);
    assert!(
        texts.iter().all(|(_, t)| !t.starts_with("revoked-key")),
        "a revoked key's request reached the provider"
    );
    assert!(texts.iter().all(|(_, t)| t.starts_with("control")));
    let control_jobs = owners.iter().filter(|c| **c).count();
    // Every control chat is its own call; control embeddings share a call within a batch.
    assert!(
        up.calls() > control_chats && up.calls() <= control_jobs,
        "{}",
        up.calls()
    );
    let (spent, reserved) = h.tenant_spend("revoked").await;
    assert_eq!(
        (spent, reserved),
        (0, 0),
        "the revoked key's tenant was billed"
    );
    let (control_spent, control_reserved) = h.tenant_spend("control").await;
    assert!(control_spent > 0 && control_reserved == 0);
    // One read per distinct key per batch: at most two per batch, never one per job.
    assert!(
        key_reads >= batches && key_reads <= 2 * batches,
        "{key_reads} key reads for {batches} batches"
    );
    RevocationFigures {
        revoked_jobs: owners.iter().filter(|c| !**c).count(),
        callbacks: called_back.len(),
        control_jobs,
        batches,
        key_reads,
        upstream_calls: up.calls(),
        revoked_spend: spent,
    }
}

/// Issue 13, item 5, the edges: a job already calling the provider when its key is revoked
/// runs to its end and is billed (documented); the revoke is made straight in the store, as
/// another instance's admin API would, so this instance's key cache still lets the revoked
/// key submit a job — which the processor then refuses, as it does the job queued behind the
/// running one. Returns the running job's cost in nano-USD.
pub async fn revoked_while_running(h: &Hostile, up: &FakeUpstream) -> u64 {
    up.set(Behaviour::Slow(Duration::from_millis(400)));
    let (key, key_id) = h.key("revoked").await;
    let (reader, _) = h.key("revoked").await;
    let ids = h
        .submit_all(&[
            (
                key.clone(),
                "/v1/chat/completions",
                chat("running when revoked"),
            ),
            (
                key.clone(),
                "/v1/chat/completions",
                chat("queued when revoked"),
            ),
        ])
        .await;
    let mut delivered = h.take(2).await;
    assert_eq!(delivered.len(), 2);
    delivered.sort_by_key(|d| !d.body.contains(&ids[0]));
    let (running, queued) = delivered.split_at(1);
    let revoke = async {
        while up.calls() == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let now = h.gw.clock.now_ms();
        assert!(h.gw.deps.store.revoke_key(&key_id, now).await.unwrap());
    };
    tokio::join!(h.process(running), revoke);
    let first = h.job(&reader, &ids[0]).await;
    assert_eq!(first["status"], "succeeded", "{first}");
    let cost = (first["cost_usd"].as_f64().unwrap() * 1e9).round() as u64;
    assert!(cost > 0, "{first}");
    assert_eq!(h.tenant_spend("revoked").await, (cost, 0), "billed once");

    // This instance has not heard of the revoke: its key cache still admits the key.
    let r = h
        .submit(&key, "/v1/chat/completions", &chat("sent after the revoke"))
        .await;
    assert_eq!(
        r.status(),
        202,
        "the edge's key cache is expected to be stale here"
    );
    let late: Value = r.json().await.unwrap();
    let mut rest = queued.to_vec();
    rest.extend(h.take(1).await);
    assert_eq!(rest.len(), 2);
    h.process(&rest).await;
    for id in [&ids[1], late["id"].as_str().unwrap()] {
        let job = h.job(&reader, id).await;
        assert_eq!(job["status"], "failed", "{job}");
        assert_eq!(job["error"]["code"], "key_revoked", "{job}");
    }
    assert_eq!(
        up.calls(),
        1,
        "only the job already running reached the provider"
    );
    assert_eq!(h.tenant_spend("revoked").await, (cost, 0));
    up.set(Behaviour::Ok);
    cost
}

/// What [`batches_never_mix_tenants`] measured.
#[derive(Debug)]
pub struct IsolationFigures {
    /// Jobs in the one batch.
    pub jobs: usize,
    /// Upstream calls it took.
    pub upstream_calls: usize,
    /// Jobs that failed (the attacker's two bad ones).
    pub failed: usize,
}

/// Issue 13, item 6: one batch of embedding jobs from three tenants, one of which sends an
/// input over the model's context length (marked with a secret string) and an empty one,
/// next to two good jobs of its own. No upstream call mixes tenants; the victims' jobs and the
/// attacker's good ones succeed; only the two bad jobs fail, each with the provider's reason
/// about its own input (at index 0: it was sent alone); and no other job, stored or called
/// back, contains the secret.
pub async fn batches_never_mix_tenants(h: &Hostile, up: &FakeUpstream) -> IsolationFigures {
    let marker = format!("ATTACKER-SECRET-{}", sluice::keys::random_alnum(12));
    let (attacker, _) = h.key("attacker").await;
    let (victim_a, _) = h.key("victim-a").await;
    let (victim_b, _) = h.key("victim-b").await;
    let long = format!("{marker} {}", "padding ".repeat(60));
    let jobs: Vec<(String, &str, Value)> = [
        (&victim_a, "victim-a doc 1"),
        (&attacker, long.as_str()),
        (&victim_b, "victim-b doc 1"),
        (&attacker, "attacker doc 1"),
        (&victim_a, "victim-a doc 2"),
        (&attacker, ""),
        (&victim_b, "victim-b doc 2"),
        (&attacker, "attacker doc 2"),
    ]
    .iter()
    .map(|(key, input)| {
        (
            (*key).clone(),
            "/v1/embeddings",
            embed("embed-short", input),
        )
    })
    .collect();
    let ids = h.submit_all(&jobs).await;
    let delivered = h.take(jobs.len()).await;
    assert_eq!(delivered.len(), jobs.len(), "all in one batch");
    h.process(&delivered).await;

    // Which tenant sent each input (the empty one is the attacker's).
    let tenant_of = |text: &str| {
        if text.starts_with("victim-a") {
            "victim-a"
        } else if text.starts_with("victim-b") {
            "victim-b"
        } else {
            "attacker"
        }
    };
    let mut tenants_per_call: HashMap<usize, HashSet<&str>> = HashMap::new();
    for (call, text) in upstream_texts(up) {
        tenants_per_call
            .entry(call)
            .or_default()
            .insert(tenant_of(&text));
    }
    for (call, tenants) in &tenants_per_call {
        assert_eq!(
            tenants.len(),
            1,
            "upstream call {call} mixed tenants: {tenants:?}"
        );
    }
    let mut failed = 0;
    for ((key, _, request), id) in jobs.iter().zip(&ids) {
        let job = h.job(key, id).await;
        let input = request["input"].as_str().unwrap();
        let text = job.to_string();
        if input.is_empty() || input.starts_with(&marker) {
            failed += 1;
            assert_eq!(job["status"], "failed", "{job}");
            assert_eq!(job["http_status"], 400, "{job}");
            assert_eq!(job["error"]["code"], "upstream_rejected_request", "{job}");
            let message = job["error"]["message"].as_str().unwrap();
            assert!(message.contains("input[0]"), "sent alone: {message}");
            // The fake quotes the input it refuses: the check below could see a leak.
            assert_eq!(message.contains(&marker), !input.is_empty(), "{message}");
            assert_eq!(job["cost_usd"], 0.0, "{job}");
        } else {
            assert_eq!(job["status"], "succeeded", "{job}");
            assert!(
                !text.contains(&marker),
                "a job holds another's input: {text}"
            );
            assert_eq!(job["result"]["data"].as_array().unwrap().len(), 1, "{job}");
            assert!(job["cost_usd"].as_f64().unwrap() > 0.0, "{job}");
        }
    }
    assert_eq!(failed, 2);
    // victim-a and victim-b one call each; the attacker's batch once, then its four jobs alone.
    assert_eq!(up.calls(), 2 + 1 + 4, "{:?}", tenants_per_call);
    // The refused batched call is billed to no one; the attacker pays for its two good jobs.
    let (attacker_spent, attacker_reserved) = h.tenant_spend("attacker").await;
    assert!(attacker_spent > 0 && attacker_reserved == 0);
    for victim in ["victim-a", "victim-b"] {
        let (spent, reserved) = h.tenant_spend(victim).await;
        assert!(spent > 0 && reserved == 0, "{victim}");
    }
    IsolationFigures {
        jobs: jobs.len(),
        upstream_calls: up.calls(),
        failed,
    }
}

/// The job ids named by a set of queue messages.
fn job_ids(deliveries: &[Delivery]) -> HashSet<String> {
    deliveries
        .iter()
        .map(|d| {
            serde_json::from_str::<Value>(&d.body).unwrap()["job_id"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect()
}

/// Issue 13, item 7, for jobs: `Idempotency-Key` on `POST /v1/jobs` and on `Prefer:
/// respond-async` gives one job per key and request — a repeat, or twenty concurrent
/// duplicates, get the same `202` and job id; another request under the key (body, endpoint
/// or callback URL) is 422; another tenant's same key is its own; invalid keys are 400 and
/// queue nothing. Returns (requests sent, jobs queued).
pub async fn one_job_per_idempotency_key(h: &Hostile) -> (usize, usize) {
    let (key, _) = h.key("control").await;
    let (other_tenant, _) = h.key("victim-a").await;
    let spec = json!({"endpoint": "/v1/embeddings",
        "request": embed("embed-test", "exactly once")});
    let post = |key: &str, idem: &str, body: &Value| {
        h.gw.http
            .post(format!("{}/v1/jobs", h.gw.url))
            .bearer_auth(key)
            .header("idempotency-key", idem)
            .json(body)
            .send()
    };
    let mut sent = 0;
    let first = post(&key, "job-1", &spec).await.unwrap();
    sent += 1;
    assert_eq!(first.status(), 202);
    assert!(first.headers().get("idempotent-replayed").is_none());
    let location = first.headers()["location"].clone();
    let first: Value = first.json().await.unwrap();
    let id = first["id"].as_str().unwrap().to_owned();

    // The same job again, key order and whitespace aside: the first 202, no second job.
    let reordered: Value = serde_json::from_str(
        r#"{"request": {"input": "exactly once", "model": "embed-test"},
            "endpoint": "/v1/embeddings"}"#,
    )
    .unwrap();
    let again = post(&key, "job-1", &reordered).await.unwrap();
    sent += 1;
    assert_eq!(again.status(), 202);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(again.headers()["location"], location);
    assert_eq!(again.headers()["preference-applied"], "respond-async");
    assert_eq!(again.json::<Value>().await.unwrap(), first);
    // The same job through `Prefer: respond-async` is the same request.
    let prefer =
        h.gw.http
            .post(format!("{}/v1/embeddings", h.gw.url))
            .bearer_auth(&key)
            .header("idempotency-key", "job-1")
            .header("prefer", "respond-async")
            .json(&spec["request"])
            .send()
            .await
            .unwrap();
    sent += 1;
    assert_eq!(prefer.status(), 202);
    assert_eq!(prefer.headers()["idempotent-replayed"], "true");
    assert_eq!(prefer.json::<Value>().await.unwrap()["id"], id.as_str());

    // Anything else under the same key is another request: 422, nothing queued.
    let mut other_body = spec.clone();
    other_body["request"]["input"] = json!("something else");
    let mut other_callback = spec.clone();
    other_callback["callback_url"] = json!("https://hooks.example.com/sluice");
    let mut other_endpoint = spec.clone();
    other_endpoint["endpoint"] = json!("/v1/chat/completions");
    other_endpoint["request"] = chat("exactly once");
    for body in [&other_body, &other_callback, &other_endpoint] {
        let r = post(&key, "job-1", body).await.unwrap();
        sent += 1;
        assert_eq!(r.status(), 422, "{body}");
        let error: Value = r.json().await.unwrap();
        assert_eq!(error["error"]["code"], "idempotency_key_reused", "{body}");
    }
    // An answer-now request under a job's key is another request too.
    let sync =
        h.gw.http
            .post(format!("{}/v1/embeddings", h.gw.url))
            .bearer_auth(&key)
            .header("idempotency-key", "job-1")
            .json(&spec["request"])
            .send()
            .await
            .unwrap();
    sent += 1;
    assert_eq!(sync.status(), 422);

    // Another tenant's same key is its own job.
    let theirs = post(&other_tenant, "job-1", &spec).await.unwrap();
    sent += 1;
    assert_eq!(theirs.status(), 202);
    assert!(theirs.headers().get("idempotent-replayed").is_none());
    let theirs: Value = theirs.json().await.unwrap();
    assert_ne!(theirs["id"], id.as_str());

    // Twenty at once under a fresh key: one job; the others see it (202) or wait (409).
    let racing = spec.clone();
    let answers =
        futures_util::future::join_all((0..20).map(|_| post(&key, "job-2", &racing))).await;
    sent += answers.len();
    let mut raced = HashSet::new();
    let mut in_use = 0;
    for r in answers {
        let r = r.unwrap();
        match r.status().as_u16() {
            202 => {
                raced.insert(
                    r.json::<Value>().await.unwrap()["id"]
                        .as_str()
                        .unwrap()
                        .to_owned(),
                );
            }
            409 => {
                in_use += 1;
                let error: Value = r.json().await.unwrap();
                assert_eq!(error["error"]["code"], "idempotency_key_in_use");
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(
        raced.len(),
        1,
        "twenty racing duplicates made {} jobs",
        raced.len()
    );
    assert!(in_use < 20);

    // Invalid keys: 400 on both routes, never a job.
    for bad in ["", "   ", "caf\u{e9}", &"k".repeat(256)] {
        let value = reqwest::header::HeaderValue::from_bytes(bad.as_bytes()).unwrap();
        let r =
            h.gw.http
                .post(format!("{}/v1/jobs", h.gw.url))
                .bearer_auth(&key)
                .header("idempotency-key", value.clone())
                .json(&spec)
                .send()
                .await
                .unwrap();
        let prefer =
            h.gw.http
                .post(format!("{}/v1/embeddings", h.gw.url))
                .bearer_auth(&key)
                .header("idempotency-key", value)
                .header("prefer", "respond-async")
                .json(&spec["request"])
                .send()
                .await
                .unwrap();
        sent += 2;
        for r in [r, prefer] {
            assert_eq!(r.status(), 400, "{bad:?}");
            let error: Value = r.json().await.unwrap();
            assert_eq!(error["error"]["code"], "invalid_idempotency_key", "{bad:?}");
            assert_eq!(error["error"]["param"], "Idempotency-Key", "{bad:?}");
        }
    }

    // What was queued: exactly the three jobs.
    let queued = job_ids(&h.take(10).await);
    let expected: HashSet<String> = [
        id,
        theirs["id"].as_str().unwrap().to_owned(),
        raced.into_iter().next().unwrap(),
    ]
    .into_iter()
    .collect();
    assert_eq!(queued, expected);
    (sent, queued.len())
}
