//! Coalescing of identical misses across instances over DynamoDB on moto: two gateways (two
//! Lambda execution environments) share the tables, and the in-flight marker in the cache
//! table lets one provider call answer both, through the real SDK wire protocol.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use serde_json::json;
use sluice::clock::ManualClock;
use sluice::config::Config;
use sluice::deps::Deps;
use sluice::store::dynamodb::DynamoStore;
use sluice_tests::{Behaviour, FakeUpstream, TestGateway, aws, fake_config};

async fn instance(store: &DynamoStore, base_url: &str) -> TestGateway {
    let config = Config::parse(&fake_config(base_url), "test", &|_| None).unwrap();
    let clock = ManualClock::new(1_800_000_000_000);
    let deps = Deps::new(
        Arc::new(store.clone()),
        Arc::new(aws::sqs_queue(Duration::from_secs(30), 3).await),
        sluice::providers::HttpClient::new().unwrap(),
        Arc::new(clock.clone()),
    );
    TestGateway::start_deps(&config, deps, clock).await
}

/// `n` identical chats spread over the instances in turn: (status, `x-sluice-cache`).
async fn burst(
    instances: &[&TestGateway],
    key: &str,
    n: usize,
    prompt: &str,
) -> Vec<(u16, String)> {
    join_all((0..n).map(|i| async move {
        let r = instances[i % instances.len()]
            .chat(key, "gpt-test", prompt)
            .await;
        let cache = r.headers()["x-sluice-cache"].to_str().unwrap().to_owned();
        (r.status().as_u16(), cache)
    }))
    .await
}

fn count(got: &[(u16, String)], cache: &str) -> usize {
    got.iter().filter(|(_, c)| c == cache).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_identical_requests_over_two_instances_make_one_upstream_call_on_dynamodb() {
    let up = FakeUpstream::start().await;
    up.set(Behaviour::Slow(Duration::from_millis(400)));
    let store = aws::dynamo_store().await;
    let a = instance(&store, &up.base_url).await;
    let b = instance(&store, &up.base_url).await;
    let key = a.create_key("t1").await;
    // Warm each instance's key lookup, so the burst's store calls are its own.
    for gw in [&a, &b] {
        assert_eq!(gw.chat(&key, "gpt-test", "warm-up").await.status(), 200);
    }
    let (calls_before, up_before) = (store.calls(), up.calls());
    let got = burst(&[&a, &b], &key, 50, "popular over dynamodb").await;
    let store_calls = store.calls() - calls_before;
    assert_eq!(up.calls() - up_before, 1, "{got:?}");
    // Each request's cache read (50), the leader's marker and entry (2), the other instance's
    // refused marker (1), and that instance's polls: at most 5 + 2 × 30 s of wait.
    eprintln!(
        "DynamoDB calls for a burst of 50 identical requests over 2 instances: {store_calls}"
    );
    assert!(store_calls <= 50 + 3 + 65, "{store_calls}");
    assert!(got.iter().all(|(s, _)| *s == 200), "{got:?}");
    assert_eq!(count(&got, "miss"), 1, "{got:?}");
    assert_eq!(count(&got, "coalesced"), 49, "{got:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_leader_on_one_instance_is_taken_over_by_the_other_on_dynamodb() {
    let up = FakeUpstream::start().await;
    up.set(Behaviour::Slow(Duration::from_millis(400)));
    let store = aws::dynamo_store().await;
    let a = instance(&store, &up.base_url).await;
    let b = instance(&store, &up.base_url).await;
    let key = a.create_key("t1").await;
    up.fail_next(1, Behaviour::Status(500, None));
    let leader = tokio::spawn({
        let (url, key) = (a.url.clone(), key.clone());
        async move {
            reqwest::Client::new()
                .post(format!("{url}/v1/chat/completions"))
                .bearer_auth(key)
                .json(&json!({"model": "gpt-test", "messages": [{"role": "user", "content": "flaky"}]}))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    // B's requests find A's marker and poll; A's call fails and A ends its marker; one of B's
    // requests takes over and the others get its answer.
    let got = burst(&[&b], &key, 20, "flaky").await;
    assert_eq!(leader.await.unwrap(), 502);
    assert_eq!(up.calls(), 2, "{got:?}");
    assert!(got.iter().all(|(s, _)| *s == 200), "{got:?}");
    assert_eq!(count(&got, "miss"), 1, "{got:?}");
    assert_eq!(count(&got, "coalesced"), 19, "{got:?}");
}
