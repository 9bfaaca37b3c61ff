//! Coalescing of identical misses across real processes: two `sluice serve` over one SQLite
//! file, a burst of identical requests split between them, one call at the provider.

// Test helpers outside #[test] functions fail loudly by design.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use futures_util::future::join_all;
use serde_json::json;
use sluice_tests::{Behaviour, FakeUpstream, fake_config};

use crate::common;

use common::{Served, create_key};

/// 50 identical requests, alternately to each process: (status, `x-sluice-cache`).
async fn split_burst(urls: &[&str], key: &str, n: usize) -> Vec<(u16, String)> {
    let http = reqwest::Client::new();
    join_all((0..n).map(|i| {
        let request = http
            .post(format!("{}/v1/chat/completions", urls[i % urls.len()]))
            .bearer_auth(key)
            .json(&json!({"model": "gpt-test",
                          "messages": [{"role": "user", "content": "one answer for all"}]}));
        async move {
            let r = request.send().await.unwrap();
            let cache = r.headers()["x-sluice-cache"].to_str().unwrap().to_owned();
            (r.status().as_u16(), cache)
        }
    }))
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sluice_serve_processes_over_one_sqlite_file_make_one_upstream_call() {
    let up = FakeUpstream::start().await;
    up.set(Behaviour::Slow(Duration::from_millis(500)));
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("shared.db");
    let config = dir.path().join("sluice.toml");
    std::fs::write(&config, fake_config(&up.base_url)).unwrap();
    let key = create_key(&db, "t1");
    let args = ["--config", config.to_str().unwrap()];
    let a = Served::start(&db, &args, &[]);
    let b = Served::start(&db, &args, &[]);
    let got = split_burst(&[&a.url, &b.url], &key, 50).await;
    assert_eq!(up.calls(), 1, "{got:?}");
    assert!(got.iter().all(|(s, _)| *s == 200), "{got:?}");
    assert_eq!(
        got.iter().filter(|(_, c)| c == "miss").count(),
        1,
        "{got:?}"
    );
    assert_eq!(
        got.iter().filter(|(_, c)| c == "coalesced").count(),
        49,
        "{got:?}"
    );
    // The process without the leader answered all 25 of its requests from the other's call,
    // found by polling the store.
    let mut coalesced: Vec<usize> = (0..2)
        .map(|i| {
            got.iter()
                .skip(i)
                .step_by(2)
                .filter(|(_, c)| c == "coalesced")
                .count()
        })
        .collect();
    coalesced.sort_unstable();
    assert_eq!(coalesced, [24, 25], "{got:?}");
}
