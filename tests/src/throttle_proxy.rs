//! DynamoDB throttling on the wire: an HTTP proxy on 127.0.0.1 between the AWS SDK and moto
//! that answers chosen operations (by their `X-Amz-Target`, e.g. `TransactWriteItems`) with
//! DynamoDB's own throttling errors, and forwards everything else unchanged.
//!
//! The SDK sees exactly what DynamoDB sends when a table or account is over its throughput:
//! HTTP 400, `x-amzn-errortype` and a JSON body whose `__type` names
//! `ProvisionedThroughputExceededException` or `ThrottlingException`. So its own retry policy
//! (standard mode: 3 attempts with jittered backoff for throttling errors) runs for real, and
//! what is left after it reaches the store adapter as it would on AWS.
//!
//! It also tallies what it forwards, for tests that count calls (SQS's JSON protocol names
//! its operations the same way, `AmazonSQS.SendMessageBatch`): calls per operation, the
//! items a `Query` or `Scan` read (`Count`, `ScannedCount` of each answer), and the body
//! sizes of every `SendMessageBatch` entry.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};

/// Which throttling error to answer with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Throttle {
    /// A table's (or index's) provisioned throughput is exceeded.
    ProvisionedThroughputExceeded,
    /// The account's request rate is exceeded (or a control-plane limit).
    Throttling,
}

impl Throttle {
    fn error(self) -> (&'static str, &'static str) {
        match self {
            Throttle::ProvisionedThroughputExceeded => (
                "com.amazonaws.dynamodb.v20120810#ProvisionedThroughputExceededException",
                "The level of configured provisioned throughput for the table was exceeded. \
                 Consider increasing your provisioning level with the UpdateTable API.",
            ),
            Throttle::Throttling => (
                "com.amazon.coral.availability#ThrottlingException",
                "Rate of requests exceeds the allowed throughput.",
            ),
        }
    }
}

#[derive(Default)]
struct Shared {
    upstream: String,
    client: reqwest::Client,
    /// Operation → (error, calls left to throttle).
    rules: Mutex<HashMap<String, (Throttle, usize)>>,
    /// Operation → calls throttled so far.
    throttled: Mutex<HashMap<String, usize>>,
    forwarded: AtomicUsize,
    tally: Mutex<Tally>,
}

/// What the proxy has forwarded so far.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tally {
    /// Operation → calls forwarded.
    pub calls: HashMap<String, u64>,
    /// Items returned by `Query` and `Scan` answers (`Count`).
    pub items_returned: u64,
    /// Items read by `Query` and `Scan` answers before filters (`ScannedCount`).
    pub items_scanned: u64,
    /// Each `SendMessageBatch`'s entries' body sizes, in bytes.
    pub batches: Vec<Vec<usize>>,
    /// Items written by `TransactWriteItems` calls (each costs two write units per KB).
    pub transact_items: u64,
    /// `GetItem` calls asking for a strongly consistent read (twice the read units).
    pub strong_reads: u64,
}

impl Tally {
    /// Calls of `operation` (e.g. `GetItem`).
    pub fn of(&self, operation: &str) -> u64 {
        self.calls.get(operation).copied().unwrap_or(0)
    }

    /// All calls.
    pub fn total(&self) -> u64 {
        self.calls.values().sum()
    }

    /// What happened between `before` and this tally (`batches` keeps only the new ones).
    pub fn since(&self, before: &Tally) -> Tally {
        let mut calls = self.calls.clone();
        for (op, n) in &before.calls {
            if let Some(c) = calls.get_mut(op) {
                *c -= n;
            }
        }
        calls.retain(|_, n| *n > 0);
        Tally {
            calls,
            items_returned: self.items_returned - before.items_returned,
            items_scanned: self.items_scanned - before.items_scanned,
            batches: self.batches[before.batches.len()..].to_vec(),
            transact_items: self.transact_items - before.transact_items,
            strong_reads: self.strong_reads - before.strong_reads,
        }
    }
}

impl std::fmt::Display for Tally {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut ops: Vec<_> = self.calls.iter().collect();
        ops.sort();
        let ops: Vec<String> = ops.iter().map(|(op, n)| format!("{op} {n}")).collect();
        write!(f, "{}", ops.join(", "))
    }
}

/// A running proxy. Dropping it stops it.
pub struct ThrottleProxy {
    /// Its address, as an SDK `endpoint_url`.
    pub url: String,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ThrottleProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ThrottleProxy {
    /// Starts in front of the DynamoDB endpoint `upstream` (moto's URL).
    pub async fn start(upstream: &str) -> Self {
        let shared = Arc::new(Shared {
            upstream: upstream.trim_end_matches('/').to_owned(),
            client: reqwest::Client::new(),
            ..Shared::default()
        });
        let app = Router::new()
            .fallback(forward)
            .with_state(Arc::clone(&shared));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self {
            url: format!("http://{addr}"),
            shared,
            task,
        }
    }

    /// The next `times` calls of `operation` (e.g. `"UpdateItem"`) are throttled.
    pub fn throttle(&self, operation: &str, error: Throttle, times: usize) {
        self.shared
            .rules
            .lock()
            .unwrap()
            .insert(operation.to_owned(), (error, times));
    }

    /// No more throttling.
    pub fn clear(&self) {
        self.shared.rules.lock().unwrap().clear();
    }

    /// Calls of `operation` throttled so far.
    pub fn throttled(&self, operation: &str) -> usize {
        self.shared
            .throttled
            .lock()
            .unwrap()
            .get(operation)
            .copied()
            .unwrap_or(0)
    }

    /// Calls throttled so far, all operations.
    pub fn throttled_total(&self) -> usize {
        self.shared.throttled.lock().unwrap().values().sum()
    }

    /// What was forwarded so far.
    pub fn tally(&self) -> Tally {
        self.shared.tally.lock().unwrap().clone()
    }

    /// Calls passed on to moto so far.
    pub fn forwarded(&self) -> usize {
        self.shared.forwarded.load(Ordering::SeqCst)
    }
}

async fn forward(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let operation = headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .and_then(|t| t.rsplit('.').next())
        .unwrap_or("")
        .to_owned();
    let throttle = {
        let mut rules = shared.rules.lock().unwrap();
        match rules.get_mut(&operation) {
            Some((error, left)) if *left > 0 => {
                *left -= 1;
                Some(*error)
            }
            _ => None,
        }
    };
    if let Some(error) = throttle {
        *shared
            .throttled
            .lock()
            .unwrap()
            .entry(operation)
            .or_default() += 1;
        let (kind, message) = error.error();
        let short = kind.rsplit('#').next().unwrap_or(kind);
        return (
            StatusCode::BAD_REQUEST,
            [
                ("content-type", "application/x-amz-json-1.0"),
                ("x-amzn-errortype", short),
            ],
            serde_json::json!({"__type": kind, "message": message}).to_string(),
        )
            .into_response();
    }
    shared.forwarded.fetch_add(1, Ordering::SeqCst);
    {
        let mut tally = shared.tally.lock().unwrap();
        *tally.calls.entry(operation.clone()).or_default() += 1;
        if operation == "SendMessageBatch" {
            let sizes = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| {
                    v["Entries"].as_array().map(|entries| {
                        entries
                            .iter()
                            .map(|e| e["MessageBody"].as_str().map_or(0, str::len))
                            .collect()
                    })
                })
                .unwrap_or_default();
            tally.batches.push(sizes);
        }
        if operation == "GetItem"
            && serde_json::from_slice::<serde_json::Value>(&body)
                .is_ok_and(|v| v["ConsistentRead"] == serde_json::Value::Bool(true))
        {
            tally.strong_reads += 1;
        }
        if operation == "TransactWriteItems" {
            tally.transact_items += serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v["TransactItems"].as_array().map(|a| a.len() as u64))
                .unwrap_or(0);
        }
    }
    let mut request = shared.client.request(
        method,
        format!(
            "{}{}",
            shared.upstream,
            uri.path_and_query().map_or("/", |p| p.as_str())
        ),
    );
    for (name, value) in &headers {
        if name != "host" && name != "content-length" {
            request = request.header(name, value);
        }
    }
    let answer = match request.body(body).send().await {
        Ok(a) => a,
        Err(e) => return (StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
    };
    let status = answer.status();
    let mut out = HeaderMap::new();
    for (name, value) in answer.headers() {
        if name != "content-length" && name != "transfer-encoding" && name != "connection" {
            out.append(name.clone(), value.clone());
        }
    }
    let bytes = answer.bytes().await.unwrap_or_default();
    if (operation == "Query" || operation == "Scan")
        && let Ok(v) = serde_json::from_slice::<serde_json::Value>(&bytes)
    {
        let mut tally = shared.tally.lock().unwrap();
        tally.items_returned += v["Count"].as_u64().unwrap_or(0);
        tally.items_scanned += v["ScannedCount"].as_u64().unwrap_or(0);
    }
    (status, out, bytes).into_response()
}
