//! A receiver for job callbacks on 127.0.0.1:0 that records every request it is sent, on any
//! path and with any method (so a test can also show that something was *not* reached).

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::response::IntoResponse;

/// One callback received.
#[derive(Debug, Clone)]
pub struct Received {
    /// Request method.
    pub method: Method,
    /// Request path and query.
    pub uri: Uri,
    /// Request headers.
    pub headers: HeaderMap,
    /// The raw body (what the signature covers).
    pub body: Bytes,
}

/// A running receiver; dropping it stops the server.
pub struct CallbackReceiver {
    /// URL to give as `callback_url`.
    pub url: String,
    received: Arc<Mutex<Vec<Received>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for CallbackReceiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What the receiver answers and what it has seen.
struct Shared {
    received: Arc<Mutex<Vec<Received>>>,
    status: StatusCode,
    headers: Vec<(HeaderName, HeaderValue)>,
}

impl CallbackReceiver {
    /// Starts on a free port, answering 200 `ok`.
    pub async fn start() -> Self {
        Self::start_answering(200, &[]).await
    }

    /// Starts on a free port, answering every request with `status` and these headers, e.g.
    /// `302` with a `location` elsewhere.
    pub async fn start_answering(status: u16, headers: &[(&str, &str)]) -> Self {
        let received = Arc::new(Mutex::new(Vec::new()));
        let shared = Arc::new(Shared {
            received: Arc::clone(&received),
            status: StatusCode::from_u16(status).unwrap(),
            headers: headers
                .iter()
                .map(|(k, v)| {
                    (
                        HeaderName::from_bytes(k.as_bytes()).unwrap(),
                        HeaderValue::from_str(v).unwrap(),
                    )
                })
                .collect(),
        });
        let app = Router::new().fallback(
            |State(s): State<Arc<Shared>>,
             method: Method,
             uri: Uri,
             headers: HeaderMap,
             body: Bytes| async move {
                s.received.lock().unwrap().push(Received {
                    method,
                    uri,
                    headers,
                    body,
                });
                let mut response = (s.status, "ok").into_response();
                for (k, v) in &s.headers {
                    response.headers_mut().insert(k.clone(), v.clone());
                }
                response
            },
        );
        let app = app.with_state(shared);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self {
            url: format!("http://{addr}/hook"),
            received,
            task,
        }
    }

    /// Every request received so far.
    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// Waits up to 10 s for `n` callbacks and returns them.
    pub async fn wait_for(&self, n: usize) -> Vec<Received> {
        for _ in 0..200 {
            let got = self.received();
            if got.len() >= n {
                return got;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        panic!("expected {n} callbacks, got {}", self.received().len());
    }
}
