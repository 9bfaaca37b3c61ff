//! The gateway and the processor over DynamoDB and SQS on moto: the same behaviour as the
//! local backend, through the real SDK wire protocol.

use std::sync::Arc;
use std::time::Duration;

use aws_lambda_events::event::sqs::SqsEvent;
use serde_json::{Value, json};
use sluice::clock::ManualClock;
use sluice::config::Config;
use sluice::deps::Deps;
use sluice::jobs::processor::Disposition;
use sluice::queue::JobQueue;
use sluice::queue::sqs::SqsQueue;
use sluice_tests::{FakeUpstream, TestGateway, aws, fake_config_with_jobs};

async fn aws_gateway(base_url: &str, workers: usize, queue: SqsQueue) -> TestGateway {
    let config =
        Config::parse(&fake_config_with_jobs(base_url, workers), "test", &|_| None).unwrap();
    let clock = ManualClock::new(1_800_000_000_000);
    let deps = Deps {
        store: Arc::new(aws::dynamo_store().await),
        queue: Arc::new(queue),
        http: sluice::gateway::http_client().unwrap(),
        clock: Arc::new(clock.clone()),
    };
    TestGateway::start_deps(&config, deps, clock).await
}

async fn wait_job(gw: &TestGateway, key: &str, id: &str) -> Value {
    for _ in 0..200 {
        let job: Value = gw
            .http
            .get(format!("{}/v1/jobs/{id}", gw.url))
            .bearer_auth(key)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if job["status"] == "succeeded" || job["status"] == "failed" {
            return job;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("job {id} did not finish");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_cache_and_async_jobs_work_over_dynamodb_and_sqs() {
    let up = FakeUpstream::start().await;
    let queue = aws::sqs_queue(Duration::from_secs(30), 3).await;
    let gw = aws_gateway(&up.base_url, 1, queue).await;
    let key = gw.create_key("t1").await;
    let other = gw.create_key("t2").await;

    let r = gw.chat(&key, "gpt-test", "over dynamodb").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-sluice-cache"], "miss");
    let r = gw.chat(&key, "gpt-test", "over dynamodb").await;
    assert_eq!(r.headers()["x-sluice-cache"], "hit");
    let r = gw.chat(&other, "gpt-test", "over dynamodb").await;
    assert_eq!(
        r.headers()["x-sluice-cache"],
        "miss",
        "tenants never share entries"
    );
    assert_eq!(up.calls(), 2);

    let r = gw
        .http
        .post(format!("{}/v1/chat/completions", gw.url))
        .bearer_auth(&key)
        .header("prefer", "respond-async")
        .json(&json!({"model": "gpt-test", "messages": [{"role": "user", "content": "queued on SQS"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let id = r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let job = wait_job(&gw, &key, &id).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["result"]["object"], "chat.completion");
    let r = gw
        .http
        .get(format!("{}/v1/jobs/{id}", gw.url))
        .bearer_auth(&other)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404, "another tenant must not see the job");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sqs_message_delivered_twice_calls_the_provider_once() {
    let up = FakeUpstream::start().await;
    up.set(sluice_tests::Behaviour::Slow(Duration::from_millis(300)));
    let queue = aws::sqs_queue(Duration::from_secs(30), 3).await;
    let gw = aws_gateway(&up.base_url, 0, queue).await;
    let key = gw.create_key("t1").await;
    let r = gw
        .post(
            "/v1/jobs",
            &key,
            &json!({"endpoint": "/v1/chat/completions",
                    "request": {"model": "gpt-test", "messages": [{"role": "user", "content": "once"}]}}),
        )
        .await;
    assert_eq!(r.status(), 202);
    let id = r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut delivered = Vec::new();
    for _ in 0..5 {
        delivered.extend(
            gw.deps
                .queue
                .receive(10, Duration::from_secs(1))
                .await
                .unwrap(),
        );
        if !delivered.is_empty() {
            break;
        }
    }
    assert_eq!(delivered.len(), 1);
    let body = delivered[0].body.clone();
    let p = &gw.services.processor;
    let (a, b) = tokio::join!(
        p.process(std::slice::from_ref(&body)),
        p.process(std::slice::from_ref(&body))
    );
    let mut outcomes = vec![a[0], b[0]];
    outcomes.sort_by_key(|d| *d == Disposition::Retry);
    assert_eq!(outcomes, [Disposition::Done, Disposition::Retry]);
    assert_eq!(
        p.process(std::slice::from_ref(&body)).await,
        [Disposition::Done]
    );
    assert_eq!(up.calls(), 1);
    assert_eq!(wait_job(&gw, &key, &id).await["attempts"], 1);
}

/// Turns received SQS messages into the event the processor Lambda gets.
fn sqs_event(deliveries: &[sluice::queue::Delivery]) -> SqsEvent {
    let records: Vec<Value> = deliveries
        .iter()
        .map(|d| {
            json!({
                "messageId": d.message_id, "receiptHandle": d.receipt, "body": d.body,
                "attributes": {"ApproximateReceiveCount": d.receive_count.to_string()},
                "messageAttributes": {}, "eventSource": "aws:sqs", "awsRegion": "us-east-1",
                "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:jobs"
            })
        })
        .collect();
    serde_json::from_value(json!({ "Records": records })).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_that_keeps_failing_lands_in_the_dead_letter_queue() {
    let up = FakeUpstream::start().await;
    // maxReceiveCount 2, visibility 1 s: like the template's redrive policy, only shorter.
    let queue = aws::sqs_queue(Duration::from_secs(1), 2).await;
    let sqs: Arc<dyn JobQueue> = Arc::new(queue.clone());
    let gw = aws_gateway(&up.base_url, 0, queue).await;
    let key = gw.create_key("t1").await;
    let r = gw
        .post(
            "/v1/jobs",
            &key,
            &json!({"endpoint": "/v1/embeddings", "request": {"model": "embed-test", "input": "fine"}}),
        )
        .await;
    let id = r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    sqs.send("this is not a job message").await.unwrap();

    // Play the Lambda event source: receive a batch, invoke the handler, delete what it did
    // not report as failed. The poison message is reported every time.
    let mut poison_failures = 0;
    for _ in 0..20 {
        let got = sqs.receive(10, Duration::from_secs(1)).await.unwrap();
        if got.is_empty() {
            if sqs.dead_letter_count().await.unwrap() == 1 {
                break;
            }
            continue;
        }
        let response =
            sluice_processor::handle_batch(&gw.services.processor, sqs_event(&got)).await;
        let failed: Vec<&str> = response
            .batch_item_failures
            .iter()
            .map(|f| f.item_identifier.as_str())
            .collect();
        for d in &got {
            if failed.contains(&d.message_id.as_str()) {
                assert_eq!(
                    d.body, "this is not a job message",
                    "only the poison message fails"
                );
                poison_failures += 1;
            } else {
                sqs.delete(&d.receipt).await.unwrap();
            }
        }
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
    assert_eq!(
        poison_failures, 2,
        "reported once per delivery, up to maxReceiveCount"
    );
    assert_eq!(sqs.dead_letter_count().await.unwrap(), 1);
    assert_eq!(wait_job(&gw, &key, &id).await["status"], "succeeded");
}
