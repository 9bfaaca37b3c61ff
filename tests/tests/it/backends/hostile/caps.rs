//! Spending caps on DynamoDB (moto): generated requests of every provider kind, all at once
//! on one key, against a provider that bills the most each allows. Each answer is billed no
//! more than it reserved, the cap holds, and the ledger equals what the answers were billed,
//! as on SQLite (`e2e/hostile/caps`).

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use proptest::strategy::{Strategy, ValueTree};
use serde_json::{Value, json};
use sluice::clock::ManualClock;
use sluice::config::Config;
use sluice::deps::Deps;
use sluice::gateway::Caller;
use sluice::keys::{BudgetPeriod, KeyLimits};
use sluice::providers::Endpoint;
use sluice_tests::requests::{chat_request, config, runner};
use sluice_tests::{FakeUpstream, TestGateway, aws};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_requests_at_once_never_overspend_a_cap_on_dynamodb() {
    let up = FakeUpstream::start_for_load("127.0.0.1:0").await;
    up.bill_max(true);
    let config = Config::parse(&config(&up), "test", &|_| None).unwrap();
    let clock = ManualClock::new(1_800_000_000_000);
    let deps = Deps::new(
        Arc::new(aws::dynamo_store().await),
        Arc::new(aws::sqs_queue(Duration::from_secs(30), 3).await),
        sluice::providers::HttpClient::new().unwrap(),
        Arc::new(clock.clone()),
    );
    let gw = TestGateway::start_deps(&config, deps, clock).await;
    let mut runner = runner(1);
    let models = ["m-openai", "m-anthropic", "m-gemini", "m-mock"];
    let bodies: Vec<Value> = (0..60)
        .map(|i| {
            let mut body = chat_request().new_tree(&mut runner).unwrap().current();
            body.insert("model".into(), models[i % 4].into());
            body.remove("stream");
            Value::Object(body)
        })
        .collect();
    let created = gw
        .admin_create(json!({"tenant": "hostile", "budget_usd": 0.2, "period": "day"}))
        .await;
    let key = created["key"].as_str().unwrap().to_owned();
    let caller = Caller {
        key_id: created["id"].as_str().unwrap().to_owned(),
        tenant: "hostile".into(),
        limits: KeyLimits {
            budget_usd: Some(0.2),
            budget_period: Some(BudgetPeriod::Day),
            ..KeyLimits::default()
        },
    };
    let answers = join_all(
        bodies
            .iter()
            .map(|b| gw.post("/v1/chat/completions", &key, b)),
    )
    .await;
    let mut billed = 0u64;
    let mut ok = 0;
    let mut statuses = Vec::new();
    for (r, body) in answers.into_iter().zip(&bodies) {
        let status = r.status().as_u16();
        statuses.push(status);
        if status == 200 {
            ok += 1;
            let usd = r.headers()["x-sluice-cost-usd"]
                .to_str()
                .unwrap()
                .to_owned();
            let (whole, frac) = usd.split_once('.').unwrap();
            let cost = whole.parse::<u64>().unwrap() * 1_000_000_000 + frac.parse::<u64>().unwrap();
            let worst = gw
                .services
                .gateway
                .worst_case(
                    &caller,
                    Endpoint::ChatCompletions,
                    body.to_string().as_bytes(),
                )
                .unwrap();
            assert!(
                cost <= worst.cost_nano_usd,
                "billed {cost} > reserved {worst:?}: {body}"
            );
            billed += cost;
        } else {
            assert!(matches!(status, 400 | 422 | 429), "{status}");
        }
    }
    let usage: Value = gw.usage(&key).await;
    let budget = &usage["limits"]["key"]["budget"];
    let spent = (budget["spent_usd"].as_f64().unwrap() * 1e9).round() as u64;
    assert!(ok > 0, "nothing was answered: {statuses:?}");
    assert!(
        statuses.contains(&429),
        "the cap was never reached, so it was not tested: {statuses:?}"
    );
    assert_eq!(budget["reserved_usd"], 0.0, "every reservation settled");
    assert_eq!(spent, billed, "the ledger is what the answers were billed");
    assert!(spent <= 200_000_000, "spent {spent} over the 0.2 USD cap");
}
