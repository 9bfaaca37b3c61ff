//! Coalescing of identical misses, observed from outside: calls counted at the fake upstream,
//! `x-sluice-cache`, `x-sluice-cost-usd` and the key's ledger. Two gateways over one SQLite
//! file stand for two processes (`cli/tests/it/coalesce.rs` runs two real `sluice serve`
//! processes; `tests/tests/it/backends/aws_e2e.rs` two instances over DynamoDB on moto).

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use serde_json::{Value, json};
use sluice::clock::ManualClock;
use sluice::config::Config;
use sluice::deps::Deps;
use sluice_tests::{
    Behaviour, FakeUpstream, FaultyStore, Op, TestGateway, fake_config, fake_config_with,
};

use crate::e2e::{header, json, nanos};

/// What one request of a burst got.
#[derive(Debug)]
struct Got {
    status: u16,
    cache: String,
    cost: Option<u64>,
    body: Value,
}

fn chat(prompt: &str) -> Value {
    json!({"model": "gpt-test", "messages": [{"role": "user", "content": prompt}]})
}

async fn send(gw: &TestGateway, key: &str, body: &Value, cache_control: Option<&str>) -> Got {
    let mut req = gw
        .http
        .post(format!("{}/v1/chat/completions", gw.url))
        .bearer_auth(key)
        .json(body);
    if let Some(cc) = cache_control {
        req = req.header("cache-control", cc);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let cache = r
        .headers()
        .get("x-sluice-cache")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let cost = r
        .headers()
        .get("x-sluice-cost-usd")
        .map(|v| nanos(v.to_str().unwrap()));
    Got {
        status,
        cache,
        cost,
        body: json(r).await,
    }
}

/// `n` copies of one request at once, spread over `gateways` in turn, each with its key.
async fn burst(
    gateways: &[(&TestGateway, &str)],
    n: usize,
    body: &Value,
    cache_control: Option<&str>,
) -> Vec<Got> {
    join_all((0..n).map(|i| {
        let (gw, key) = gateways[i % gateways.len()];
        send(gw, key, body, cache_control)
    }))
    .await
}

fn count(got: &[Got], cache: &str) -> usize {
    got.iter().filter(|g| g.cache == cache).count()
}

/// The key's ledger after a burst `got` that one provider call answered: every request counted
/// against its requests per minute, the leader's cost spent, nothing left reserved.
async fn assert_paid_once(gw: &TestGateway, key: &str, got: &[Got]) {
    let leader = got.iter().find(|g| g.cache == "miss").unwrap();
    let usage = gw.usage(key).await;
    let limits = &usage["limits"]["key"];
    assert_eq!(limits["rpm"]["used"], got.len(), "{usage}");
    let spent = (limits["budget"]["spent_usd"].as_f64().unwrap() * 1e9).round() as u64;
    assert_eq!(spent, leader.cost.unwrap(), "{usage}");
    assert_eq!(limits["budget"]["reserved_usd"], 0.0, "{usage}");
}

/// A config whose provider answers slowly enough for a burst to arrive while it works.
async fn slow_upstream() -> FakeUpstream {
    let up = FakeUpstream::start().await;
    up.set(Behaviour::Slow(Duration::from_millis(300)));
    up
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_identical_requests_make_one_upstream_call_and_pay_once() {
    let up = slow_upstream().await;
    let gw = TestGateway::start(&fake_config(&up.base_url)).await;
    let key = gw
        .admin_create(json!({"tenant": "t1", "rpm": 1000, "budget_usd": 1.0, "period": "day"}))
        .await["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let got = burst(&[(&gw, &key)], 50, &chat("popular prompt"), None).await;
    assert_eq!(up.calls(), 1, "{got:?}");
    assert!(got.iter().all(|g| g.status == 200), "{got:?}");
    assert_eq!(count(&got, "miss"), 1, "{got:?}");
    assert_eq!(count(&got, "coalesced"), 49, "{got:?}");
    // Every follower got the leader's answer, at no cost.
    let leader = got.iter().find(|g| g.cache == "miss").unwrap();
    assert!(leader.cost.unwrap() > 0);
    for g in &got {
        assert_eq!(g.body, leader.body);
        if g.cache == "coalesced" {
            assert_eq!(g.cost, Some(0));
        }
    }
    // The ledger holds one call; followers count as requests (like hits), reserve nothing.
    assert_paid_once(&gw, &key, &got).await;
    assert_eq!(
        gw.services.gateway.coalesced_flights(),
        0,
        "no flight left behind"
    );
    // Later, an ordinary hit.
    let again = send(&gw, &key, &chat("popular prompt"), None).await;
    assert_eq!(again.cache, "hit");
    assert_eq!(up.calls(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_cache_opts_out_and_every_request_goes_upstream() {
    let up = slow_upstream().await;
    let gw = TestGateway::start(&fake_config(&up.base_url)).await;
    let key = gw.create_key("t1").await;
    let got = burst(&[(&gw, &key)], 50, &chat("fresh please"), Some("no-cache")).await;
    assert!(got.iter().all(|g| g.status == 200), "{got:?}");
    assert_eq!(count(&got, "bypass"), 50, "{got:?}");
    assert_eq!(up.calls(), 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_tenants_never_share_an_answer_in_flight() {
    let up = slow_upstream().await;
    let gw = TestGateway::start(&fake_config(&up.base_url)).await;
    let a = gw.create_key("tenant-a").await;
    let b = gw.create_key("tenant-b").await;
    let got = burst(&[(&gw, &a), (&gw, &b)], 50, &chat("same words"), None).await;
    assert_eq!(up.calls(), 2, "{got:?}");
    assert!(got.iter().all(|g| g.status == 200), "{got:?}");
    // Per tenant (even indexes are tenant a's): one leader, the rest its followers.
    for parity in [0, 1] {
        let theirs: Vec<&Got> = got.iter().skip(parity).step_by(2).collect();
        assert_eq!(theirs.iter().filter(|g| g.cache == "miss").count(), 1);
        assert_eq!(theirs.iter().filter(|g| g.cache == "coalesced").count(), 24);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_leader_fails_one_follower_takes_over_and_the_rest_get_its_answer() {
    let up = slow_upstream().await;
    let gw = TestGateway::start(&fake_config(&up.base_url)).await;
    let key = gw.create_key("t1").await;
    // The first call fails (after its delay, while the burst waits for it).
    up.fail_next(1, Behaviour::Status(500, None));
    let slow_failure = tokio::spawn({
        let (gw_url, key) = (gw.url.clone(), key.clone());
        async move {
            reqwest::Client::new()
                .post(format!("{gw_url}/v1/chat/completions"))
                .bearer_auth(key)
                .json(&chat("flaky"))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let got = burst(&[(&gw, &key)], 49, &chat("flaky"), None).await;
    // The leader's own call failed, as it would have without coalescing: its error is its own.
    assert_eq!(slow_failure.await.unwrap(), 502);
    assert_eq!(up.calls(), 2, "{got:?}");
    assert!(got.iter().all(|g| g.status == 200), "{got:?}");
    assert_eq!(count(&got, "miss"), 1, "{got:?}");
    assert_eq!(count(&got, "coalesced"), 48, "{got:?}");
    assert_eq!(gw.services.gateway.coalesced_flights(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_waits_no_longer_than_coalesce_wait_s_then_calls_itself() {
    let up = FakeUpstream::start().await;
    up.set(Behaviour::Slow(Duration::from_millis(700)));
    let gw = TestGateway::start(&fake_config_with(
        &up.base_url,
        "[cache]\ncoalesce_wait_s = 0.1",
    ))
    .await;
    let key = gw.create_key("t1").await;
    let started = std::time::Instant::now();
    let got = burst(&[(&gw, &key)], 10, &chat("slow answer"), None).await;
    assert!(got.iter().all(|g| g.status == 200), "{got:?}");
    // Each follower gave up after 0.1 s, long before the leader's 0.7 s answer.
    assert_eq!(up.calls(), 10, "{got:?}");
    assert_eq!(count(&got, "miss"), 10, "{got:?}");
    assert!(started.elapsed() < Duration::from_millis(1400));
}

/// `x-sluice-timeout` is the whole request's deadline, waiting included: a follower with a
/// short one does not wait out `coalesce_wait_s` for a slow leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_followers_own_timeout_bounds_its_wait() {
    let up = FakeUpstream::start().await;
    up.set(Behaviour::Slow(Duration::from_millis(800)));
    let gw = TestGateway::start(&fake_config(&up.base_url)).await;
    let key = gw.create_key("t1").await;
    let leader = tokio::spawn({
        let (url, key) = (gw.url.clone(), key.clone());
        async move {
            let r = reqwest::Client::new()
                .post(format!("{url}/v1/chat/completions"))
                .bearer_auth(key)
                .json(&chat("in a hurry"))
                .send()
                .await
                .unwrap();
            r.status().as_u16()
        }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let started = std::time::Instant::now();
    let r = gw
        .http
        .post(format!("{}/v1/chat/completions", gw.url))
        .bearer_auth(&key)
        .header("x-sluice-timeout", "0.3")
        .json(&chat("in a hurry"))
        .send()
        .await
        .unwrap();
    let waited = started.elapsed();
    // Its deadline passed while it waited: the provider's timeout answer, at its deadline.
    assert_eq!(r.status(), 504);
    assert!(waited < Duration::from_millis(700), "{waited:?}");
    assert_eq!(leader.await.unwrap(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coalescing_off_sends_every_identical_miss_upstream() {
    let up = slow_upstream().await;
    let gw = TestGateway::start(&fake_config_with(
        &up.base_url,
        "[cache]\ncoalesce_wait_s = 0",
    ))
    .await;
    let key = gw.create_key("t1").await;
    let got = burst(&[(&gw, &key)], 20, &chat("no single flight"), None).await;
    assert_eq!(up.calls(), 20);
    assert_eq!(count(&got, "miss"), 20, "{got:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_are_not_coalesced() {
    let up = slow_upstream().await;
    let gw = TestGateway::start(&fake_config(&up.base_url)).await;
    let key = gw.create_key("t1").await;
    let body = json!({"model": "gpt-test", "stream": true,
                      "messages": [{"role": "user", "content": "stream me"}]});
    let statuses = join_all((0..5).map(|_| async {
        let r = gw.post("/v1/chat/completions", &key, &body).await;
        (r.status().as_u16(), header(&r, "x-sluice-cache").to_owned())
    }))
    .await;
    assert!(
        statuses.iter().all(|(s, c)| *s == 200 && c == "miss"),
        "{statuses:?}"
    );
    assert_eq!(up.calls(), 5);
}

/// Two processes over one SQLite file: the first request takes the store's in-flight marker;
/// the other process's requests poll for its answer instead of calling.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_over_one_sqlite_file_make_one_upstream_call() {
    let up = slow_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("shared.db");
    let config = fake_config(&up.base_url);
    let a = TestGateway::start_with_db(&config, db.to_str().unwrap()).await;
    let b = TestGateway::start_with_db(&config, db.to_str().unwrap()).await;
    let key = a.create_key("t1").await;
    let got = burst(
        &[(&a, &key), (&b, &key)],
        50,
        &chat("across processes"),
        None,
    )
    .await;
    assert_eq!(up.calls(), 1, "{got:?}");
    assert!(got.iter().all(|g| g.status == 200), "{got:?}");
    assert_eq!(count(&got, "miss"), 1, "{got:?}");
    assert_eq!(count(&got, "coalesced"), 49, "{got:?}");
}

/// The same with a key with limits: the marker rides in the admit write, so the other
/// process's first request is refused the marker with its reservation (nothing of it kept)
/// and follows. One call, one reservation settled, every request counted once per minute.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_with_a_limited_key_make_one_call_and_reserve_once() {
    let up = slow_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("shared.db");
    let config = fake_config(&up.base_url);
    let a = TestGateway::start_with_db(&config, db.to_str().unwrap()).await;
    let b = TestGateway::start_with_db(&config, db.to_str().unwrap()).await;
    let key = a
        .admin_create(
            json!({"tenant": "t1", "rpm": 1000, "tpm": 1000000, "budget_usd": 1.0,
                             "period": "day"}),
        )
        .await["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let got = burst(
        &[(&a, &key), (&b, &key)],
        50,
        &chat("limited, across processes"),
        None,
    )
    .await;
    assert_eq!(up.calls(), 1, "{got:?}");
    assert!(got.iter().all(|g| g.status == 200), "{got:?}");
    assert_eq!(count(&got, "miss"), 1, "{got:?}");
    assert_eq!(count(&got, "coalesced"), 49, "{got:?}");
    assert_paid_once(&b, &key, &got).await;
    for gw in [&a, &b] {
        assert_eq!(gw.services.gateway.coalesced_flights(), 0);
    }
}

/// `sluice serve` sends a buffered answer before its cache entry is written (on Lambda the
/// invocation waits for the write). While the write is on its way, the same process answers
/// the request again from memory, and another process over the same file follows the
/// leader's in-flight marker until the entry lands: no second provider call either way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_goes_out_before_its_cache_entry_is_written_and_nothing_calls_again_meanwhile() {
    let up = FakeUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("shared.db");
    let db = db.to_str().unwrap();
    let text = fake_config(&up.base_url);
    let config = Config::parse(&text, "test", &|_| None).unwrap();
    let clock = ManualClock::new(1_800_000_000_000);
    let mut deps = Deps::sqlite(db, &config, Arc::new(clock.clone())).unwrap();
    let faulty = FaultyStore::wrap(Arc::clone(&deps.store));
    deps.store = faulty.clone();
    let a = TestGateway::start_deps(&config, deps.with_local_metrics(&config.metrics), clock).await;
    let b = TestGateway::start_with_db(&text, db).await;
    let key = a.create_key("t1").await;
    let body = chat("written after the answer");

    faulty.hold(Op::CachePut);
    let first = tokio::time::timeout(Duration::from_secs(5), send(&a, &key, &body, None))
        .await
        .expect("answered while its cache entry waits to be written");
    assert_eq!((first.status, first.cache.as_str()), (200, "miss"));
    let again = send(&a, &key, &body, None).await;
    assert_eq!(again.cache, "hit", "the same process answers from memory");
    assert_eq!(again.body, first.body);
    let other = tokio::spawn({
        let key = key.clone();
        let body = body.clone();
        async move { send(&b, &key, &body, None).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !other.is_finished(),
        "the other process waits for the entry"
    );
    assert_eq!(up.calls(), 1);

    faulty.release(Op::CachePut);
    let other = tokio::time::timeout(Duration::from_secs(5), other)
        .await
        .expect("served once the entry lands")
        .unwrap();
    assert_eq!((other.status, other.cache.as_str()), (200, "coalesced"));
    assert_eq!(other.body, first.body);
    assert_eq!(up.calls(), 1, "one provider call in all");
    assert_eq!(faulty.calls(Op::CachePut), 1);
}

/// The leader's process stalls past its marker's lease: the other process's waiting requests
/// take over (one calls, the rest get its answer) instead of waiting for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_past_its_lease_is_taken_over_by_another_process() {
    let up = FakeUpstream::start().await;
    up.set(Behaviour::Slow(Duration::from_millis(800)));
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("shared.db");
    let config = fake_config(&up.base_url);
    let a = TestGateway::start_with_db(&config, db.to_str().unwrap()).await;
    let b = TestGateway::start_with_db(&config, db.to_str().unwrap()).await;
    let key = a.create_key("t1").await;
    let leader = tokio::spawn({
        let (url, key) = (a.url.clone(), key.clone());
        async move {
            reqwest::Client::new()
                .post(format!("{url}/v1/chat/completions"))
                .bearer_auth(key)
                .json(&chat("stalled"))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let followers = tokio::spawn({
        let (url, key) = (b.url.clone(), key.clone());
        async move {
            let b = reqwest::Client::new();
            join_all((0..10).map(|_| {
                b.post(format!("{url}/v1/chat/completions"))
                    .bearer_auth(&key)
                    .json(&chat("stalled"))
                    .send()
            }))
            .await
            .into_iter()
            .map(|r| {
                let r = r.unwrap();
                (r.status().as_u16(), header(&r, "x-sluice-cache").to_owned())
            })
            .collect::<Vec<_>>()
        }
    });
    // B's requests are polling A's marker; then, to B, A's lease (10 s, renewed every 3 s
    // by A's clock, which stands still) runs out, as if A's process had died.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(up.calls(), 1);
    b.clock.advance_ms(11_000);
    let got = followers.await.unwrap();
    assert_eq!(leader.await.unwrap(), 200);
    assert_eq!(up.calls(), 2, "{got:?}");
    assert!(got.iter().all(|(s, _)| *s == 200), "{got:?}");
    assert_eq!(
        got.iter().filter(|(_, c)| c == "miss").count(),
        1,
        "{got:?}"
    );
    assert_eq!(
        got.iter().filter(|(_, c)| c == "coalesced").count(),
        9,
        "{got:?}"
    );
}

/// The figures of BENCHMARKS.md's coalescing section: a burst of N identical requests, with
/// and without coalescing, in one process and in two over one SQLite file, against a provider
/// that takes 500 ms: upstream calls, what was billed, and the burst's latency. Run with
/// `cargo test --workspace --test it -- e2e::coalesce::burst_cost --nocapture` for the table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn burst_cost_with_and_without_coalescing() {
    const N: usize = 100;
    let up = FakeUpstream::start().await;
    up.set(Behaviour::Slow(Duration::from_millis(500)));
    println!(
        "| N = {N} identical requests at once | processes | upstream calls | billed (USD) | latency p50 | p95 | max |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: |");
    for (label, extra) in [
        (
            "coalescing off (`coalesce_wait_s = 0`)",
            "[cache]\ncoalesce_wait_s = 0",
        ),
        ("coalescing on (default)", ""),
    ] {
        for processes in [1, 2] {
            let dir = tempfile::tempdir().unwrap();
            let db = dir.path().join("bench.db");
            let config = fake_config_with(&up.base_url, extra);
            let mut gateways = Vec::new();
            for _ in 0..processes {
                gateways.push(TestGateway::start_with_db(&config, db.to_str().unwrap()).await);
            }
            let key = gateways[0].create_key("t1").await;
            let calls_before = up.calls();
            let prompt = format!("burst {label} {processes}");
            let timed = join_all((0..N).map(|i| {
                let gw = &gateways[i % processes];
                let (key, prompt) = (&key, &prompt);
                async move {
                    let started = std::time::Instant::now();
                    let got = send(gw, key, &chat(prompt), None).await;
                    (got, started.elapsed())
                }
            }))
            .await;
            let calls = up.calls() - calls_before;
            let billed: u64 = timed.iter().map(|(g, _)| g.cost.unwrap_or(0)).sum();
            assert!(timed.iter().all(|(g, _)| g.status == 200));
            let one_call = timed
                .iter()
                .find_map(|(g, _)| g.cost.filter(|c| *c > 0))
                .unwrap();
            if extra.is_empty() {
                assert_eq!((calls, billed), (1, one_call), "{label}, {processes}");
            } else {
                assert_eq!(
                    (calls, billed),
                    (N, N as u64 * one_call),
                    "{label}, {processes}"
                );
            }
            let mut latencies: Vec<Duration> = timed.iter().map(|(_, d)| *d).collect();
            latencies.sort();
            let ms = |d: Duration| d.as_millis();
            println!(
                "| {label} | {processes} | {calls} | {:.9} | {} ms | {} ms | {} ms |",
                billed as f64 / 1e9,
                ms(latencies[N / 2]),
                ms(latencies[N * 95 / 100]),
                ms(latencies[N - 1]),
            );
        }
    }
}
