//! The router as the ingest Lambda runs it (`invocation::settle_before_answering`) next to the
//! router as `sluice serve` runs it: inside an invocation a stream is settled before its final
//! event is written and cut off (and settled) at the invocation's deadline; outside one the
//! final event waits for nothing. The settlement is slowed by two refused writes (retried 50
//! and 100 ms later), so "before" and "after" cannot be confused with a race.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{Value, json};
use sluice::api::{self, AppState};
use sluice::clock::{Clock, ManualClock, SystemClock};
use sluice::config::Config;
use sluice::deps::{Deps, Services};
use sluice::invocation::{self, Delivery};
use sluice::keys::{self, BudgetPeriod, KeyLimits};
use sluice_tests::{Behaviour, FakeUpstream, Fault, FaultyStore, Op, fake_config};

use crate::e2e::nanos;

struct Served {
    url: String,
    key: String,
    faulty: Arc<FaultyStore>,
    http: reqwest::Client,
    /// The same store without the Lambda layer, for reading the ledger.
    reader: String,
}

/// One store behind two servers: `lambda` wraps the router as the ingest function does, with
/// an invocation deadline `deadline_in` from now.
async fn serve(base_url: &str, lambda: bool, deadline_in: Duration) -> Served {
    let config = Config::parse(&fake_config(base_url), "test", &|_| None).unwrap();
    let clock = ManualClock::new(SystemClock.now_ms());
    let mut deps = Deps::sqlite(":memory:", &config, Arc::new(clock)).unwrap();
    let faulty = FaultyStore::wrap(Arc::clone(&deps.store));
    deps.store = faulty.clone();
    let key = keys::generate(
        "t1",
        None,
        KeyLimits {
            budget_usd: Some(5.0),
            budget_period: Some(BudgetPeriod::Day),
            ..KeyLimits::default()
        },
        0,
    )
    .unwrap();
    deps.store.insert_key(&key.record).await.unwrap();
    let services = Services::build(&config, &deps).unwrap();
    let router = api::router(Arc::new(AppState::new(&config, &deps, &services, "admin")));
    let reader = listen(router.clone()).await;
    let router = if lambda {
        let deadline_ms = SystemClock.now_ms() + u64::try_from(deadline_in.as_millis()).unwrap();
        // A function pointer cannot capture: the deadline travels in an extension, as the
        // Lambda context does, put there before the invocation layer reads it.
        invocation::settle_before_answering(
            router,
            Arc::clone(&deps.usage),
            Delivery::Streamed,
            |r| r.extensions().get::<Deadline>().map(|d| d.0),
        )
        .layer(axum::middleware::map_request(
            move |mut r: axum::extract::Request| async move {
                r.extensions_mut().insert(Deadline(deadline_ms));
                r
            },
        ))
    } else {
        router
    };
    Served {
        url: listen(router).await,
        key: key.secret,
        faulty,
        http: reqwest::Client::new(),
        reader,
    }
}

#[derive(Clone, Copy)]
struct Deadline(u64);

async fn listen(router: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    format!("http://{addr}")
}

/// The key's budget now: (spent, reserved) in nano-USD.
async fn ledger(s: &Served) -> (u64, u64) {
    let u: Value = s
        .http
        .get(format!("{}/v1/usage", s.reader))
        .bearer_auth(&s.key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let b = &u["limits"]["key"]["budget"];
    let n = |v: &Value| nanos(&format!("{:.9}", v.as_f64().unwrap()));
    (n(&b["spent_usd"]), n(&b["reserved_usd"]))
}

/// Streams a chat request and returns the ledger read the moment the final event arrived,
/// and that event.
async fn ledger_at_the_final_event(s: &Served, prompt: &str) -> ((u64, u64), String) {
    let r = s
        .http
        .post(format!("{}/v1/chat/completions", s.url))
        .bearer_auth(&s.key)
        .json(
            &json!({"model": "gpt-test", "stream": true, "max_tokens": 50,
                      "messages": [{"role": "user", "content": prompt}]}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut body = r.bytes_stream();
    let mut text = String::new();
    while let Some(chunk) = body.next().await {
        text.push_str(std::str::from_utf8(&chunk.unwrap()).unwrap());
        let last = text.trim_end().lines().last().unwrap_or("").to_owned();
        if last == "data: [DONE]" || last.contains("\"error\"") {
            return (ledger(s).await, last);
        }
    }
    panic!("the stream ended without a final event: {text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inside_an_invocation_a_stream_is_settled_before_its_final_event() {
    let up = FakeUpstream::start().await;
    let lambda = serve(&up.base_url, true, Duration::from_secs(30)).await;
    lambda.faulty.fail(Op::Settle, Fault::Throttled, 0, 2);
    let ((spent, reserved), last) = ledger_at_the_final_event(&lambda, "settled first").await;
    assert_eq!(last, "data: [DONE]");
    assert_eq!(lambda.faulty.injected_into(Op::Settle), 2);
    assert_eq!(reserved, 0, "settled before [DONE] was written");
    assert!(spent > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outside_an_invocation_the_final_event_waits_for_nothing() {
    let up = FakeUpstream::start().await;
    let served = serve(&up.base_url, false, Duration::ZERO).await;
    served.faulty.fail(Op::Settle, Fault::Throttled, 0, 2);
    let ((spent, reserved), last) = ledger_at_the_final_event(&served, "settled after").await;
    assert_eq!(last, "data: [DONE]");
    // `sluice serve`: [DONE] went out while the settlement was still being retried.
    assert!(reserved > 0, "reserved {reserved}, spent {spent}");
    for _ in 0..50 {
        if ledger(&served).await.1 == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the settlement never landed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_still_running_at_the_invocation_deadline_is_cut_off_and_settled() {
    let up = FakeUpstream::start().await;
    up.set(Behaviour::Drip(Duration::from_millis(400)));
    // 2 s are held back from the deadline: the stream has 1.2 s.
    let lambda = serve(&up.base_url, true, Duration::from_millis(3_200)).await;
    let started = std::time::Instant::now();
    let ((spent, reserved), last) = ledger_at_the_final_event(&lambda, "a long answer").await;
    let took = started.elapsed();
    let event: Value = serde_json::from_str(last.strip_prefix("data: ").unwrap()).unwrap();
    assert_eq!(event["error"]["code"], "stream_deadline", "{last}");
    assert!(took < Duration::from_millis(2_500), "{took:?}");
    assert_eq!(reserved, 0, "settled before the error event was written");
    assert!(spent > 0, "what was delivered is billed");
}
