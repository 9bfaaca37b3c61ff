//! `sluice serve --store dynamodb --queue sqs` against moto: two server processes share keys,
//! cache and the job queue, as a fleet of containers would (and as the Lambdas do).

// Tests may cast freely (the workspace denies lossy casts in the code they test).
#![allow(
    clippy::cast_possible_wrap,
    clippy::cast_sign_loss,
    clippy::cast_possible_truncation
)]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::types::AttributeValue;
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_sluice");

struct Served {
    child: Child,
    url: String,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn aws_args(prefix: &str) -> Vec<String> {
    [
        "--store",
        "dynamodb",
        "--table-prefix",
        prefix,
        "--create-aws-resources",
    ]
    .map(str::to_owned)
    .to_vec()
}

fn serve(prefix: &str) -> Served {
    let mut child = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--queue", "sqs"])
        .args(aws_args(prefix))
        .env("SLUICE_ADMIN_KEY", "sk-sluice-admin-aws")
        .env_remove("SLUICE_CONFIG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(url) = line.strip_prefix("Sluice listening on ") {
                let _ = tx.send(url.to_owned());
            }
        }
    });
    let url = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("sluice serve --store dynamodb did not start");
    Served { child, url }
}

#[tokio::test]
async fn two_servers_share_keys_cache_and_jobs_through_dynamodb_and_sqs() {
    // Refuses to run against anything but moto on 127.0.0.1.
    let _ = sluice_tests::aws::sdk_config().await;
    let prefix = sluice_tests::aws::unique_prefix();
    let out = Command::new(BIN)
        .args(["keys", "create", "--tenant", "fleet"])
        .args(aws_args(&prefix))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let key = String::from_utf8(out.stdout).unwrap().trim().to_owned();

    let a = serve(&prefix);
    let b = serve(&prefix);
    let http = reqwest::Client::new();
    let chat =
        json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "shared state"}]});
    let r = http
        .post(format!("{}/v1/chat/completions", a.url))
        .bearer_auth(&key)
        .json(&chat)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-sluice-cache"], "miss");
    let answered: Value = r.json().await.unwrap();
    let r = http
        .post(format!("{}/v1/chat/completions", b.url))
        .bearer_auth(&key)
        .json(&chat)
        .send()
        .await
        .unwrap();
    // A writes its entry right after its answer: B finds it (a hit) or, a moment earlier, A's
    // in-flight marker, and waits for the entry (coalesced). A's answer either way.
    let cache = r.headers()["x-sluice-cache"].to_str().unwrap().to_owned();
    assert!(
        cache == "hit" || cache == "coalesced",
        "B must see A's cache entry: {cache}"
    );
    assert_eq!(r.json::<Value>().await.unwrap(), answered);

    // A key created through A's admin API works on B.
    let created: Value = http
        .post(format!("{}/admin/keys", a.url))
        .bearer_auth("sk-sluice-admin-aws")
        .json(&json!({"tenant": "fleet-2"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let r = http
        .get(format!("{}/v1/models", b.url))
        .bearer_auth(created["key"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // A job accepted by A (queued on SQS) can be read from B once a worker ran it.
    let r = http
        .post(format!("{}/v1/chat/completions", a.url))
        .bearer_auth(&key)
        .header("prefer", "respond-async")
        .json(
            &json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "via SQS"}]}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let id = r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let started = Instant::now();
    loop {
        let job: Value = http
            .get(format!("{}/v1/jobs/{id}", b.url))
            .bearer_auth(&key)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if job["status"] == "succeeded" {
            assert_eq!(
                job["result"]["choices"][0]["message"]["content"],
                "Mock response to: via SQS"
            );
            break;
        }
        assert_ne!(job["status"], "failed", "{job}");
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "job never finished: {job}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn two_servers_sharing_dynamodb_hold_one_rate_limit() {
    let _ = sluice_tests::aws::sdk_config().await;
    let prefix = sluice_tests::aws::unique_prefix();
    let out = Command::new(BIN)
        .args(["keys", "create", "--tenant", "t1", "--rpm", "10"])
        .args(aws_args(&prefix))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let key = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let a = serve(&prefix);
    let b = serve(&prefix);
    let http = reqwest::Client::new();
    let sends = (0..50).map(|i| {
        let http = http.clone();
        let url = format!("{}/v1/chat/completions", if i % 2 == 0 { &a.url } else { &b.url });
        let key = key.clone();
        async move {
            http.post(url)
                .bearer_auth(key)
                .json(&json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": format!("p{i}")}]}))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    });
    let statuses = futures_util::future::join_all(sends).await;
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        10,
        "{statuses:?}"
    );
    assert_eq!(statuses.iter().filter(|s| **s == 429).count(), 40);
}

/// Every string in a DynamoDB attribute, however nested (binary as lossy UTF-8).
fn strings_of(value: &AttributeValue, out: &mut Vec<String>) {
    match value {
        AttributeValue::S(s) | AttributeValue::N(s) => out.push(s.clone()),
        AttributeValue::B(b) => out.push(String::from_utf8_lossy(b.as_ref()).into_owned()),
        AttributeValue::Ss(v) | AttributeValue::Ns(v) => out.extend(v.iter().cloned()),
        AttributeValue::Bs(v) => out.extend(
            v.iter()
                .map(|b| String::from_utf8_lossy(b.as_ref()).into_owned()),
        ),
        AttributeValue::L(v) => v.iter().for_each(|a| strings_of(a, out)),
        AttributeValue::M(m) => m.iter().for_each(|(k, a)| {
            out.push(k.clone());
            strings_of(a, out)
        }),
        _ => {}
    }
}

#[tokio::test]
async fn keys_are_stored_only_as_hashes_in_dynamodb() {
    let sdk = sluice_tests::aws::sdk_config().await;
    let prefix = sluice_tests::aws::unique_prefix();
    let mut keys = Vec::new();
    for tenant in ["cli-1", "cli-2"] {
        let out = Command::new(BIN)
            .args(["keys", "create", "--tenant", tenant, "--rpm", "60"])
            .args(aws_args(&prefix))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        keys.push(String::from_utf8(out.stdout).unwrap().trim().to_owned());
    }
    let served = serve(&prefix);
    let http = reqwest::Client::new();
    for tenant in ["api-1", "api-2"] {
        let created: Value = http
            .post(format!("{}/admin/keys", served.url))
            .bearer_auth("sk-sluice-admin-aws")
            .json(&json!({"tenant": tenant, "budget_usd": 1.0, "period": "day"}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        keys.push(created["key"].as_str().unwrap().to_owned());
    }
    // Each key used once: lookups, counters, cache entries and usage are written too.
    for key in &keys {
        let r = http
            .post(format!("{}/v1/chat/completions", served.url))
            .bearer_auth(key)
            .json(&json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    drop(served);

    // Scan every table of this prefix, item by item, for each key and any 8-character piece
    // of its secret part (longer than the 4-character hint key lists keep).
    let dynamo = aws_sdk_dynamodb::Client::new(&sdk);
    // Every page: a moto server that other tests share holds more than one page of tables.
    let mut tables: Vec<String> = Vec::new();
    let mut pages = dynamo.list_tables().into_paginator().items().send();
    while let Some(name) = pages.next().await {
        let name = name.unwrap();
        if name.starts_with(&format!("{prefix}-")) {
            tables.push(name);
        }
    }
    assert!(tables.iter().any(|t| t.ends_with("-keys")), "{tables:?}");
    let (mut items, mut values) = (0, 0);
    let mut hashes_seen = 0;
    for table in &tables {
        let mut start = None;
        loop {
            let page = dynamo
                .scan()
                .table_name(table)
                .set_exclusive_start_key(start)
                .send()
                .await
                .unwrap();
            for item in page.items() {
                items += 1;
                let mut strings = Vec::new();
                for (name, value) in item {
                    strings.push(name.clone());
                    strings_of(value, &mut strings);
                }
                values += strings.len();
                let text = strings.join("\n");
                for key in &keys {
                    let secret: Vec<char> = key["sk-sluice-".len()..].chars().collect();
                    assert!(!text.contains(key.as_str()), "{table} holds a whole key");
                    for w in secret.windows(8) {
                        let piece: String = w.iter().collect();
                        assert!(!text.contains(&piece), "{table} holds `{piece}` of a key");
                    }
                    if text.contains(&sluice::keys::KeyHash::of(key).to_hex()) {
                        hashes_seen += 1;
                    }
                }
            }
            start = page.last_evaluated_key().cloned();
            if start.is_none() {
                break;
            }
        }
    }
    assert!(hashes_seen >= keys.len(), "not every key's hash was found");
    println!(
        "security: keys as hashes (DynamoDB on moto): {} keys (2 via `sluice keys create`, 2 via \
         POST /admin/keys), {} tables / {items} items / {values} names and values scanned for \
         each key and its 33 8-char pieces: none found",
        keys.len(),
        tables.len()
    );
}
