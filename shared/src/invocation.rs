//! A Lambda invocation's two rules for the work done inside it (ARCHITECTURE, "Lambda's
//! rules"): every deadline inside it comes from the invocation's own deadline, and nothing the
//! invocation owes runs after it ends, because Lambda freezes the execution environment once
//! the response is sent (a task spawned "for later" stalls until the next invocation, or is
//! lost with the environment).
//!
//! An [`Invocation`] is carried as a tokio task-local while its work runs, the way a tracing
//! span is: code deep in the pipeline asks [`deadline_within`] for its deadline and hands work
//! that follows the answer to [`after_response`], without every function in between passing
//! it along. Outside an invocation (`sluice serve`) both behave as before: deadlines come from
//! config alone and work after the response is spawned, so the server's hot path waits for
//! nothing new.
//!
//! - The ingest function wraps its router in [`settle_before_answering`]: a buffered answer is
//!   returned, and a streamed one ends, only after the request's owed work is done and its
//!   usage events are sent.
//! - The processor and housekeeper functions run each event inside [`Invocation::run`] and
//!   then [`Invocation::settle`].
//! - Start-up checks that the configured timeouts agree with the function's: [`check_timeouts`].

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::Stream;
use tracing::Instrument;

use crate::metrics::UsageSink;

/// Held back from an invocation's deadline for what must still happen after the work it
/// bounds: settling the reservation, writing the cache entry and the job result, and sending
/// the usage events (each a store or queue call of tens of milliseconds, retried on failure
/// for up to about a second).
pub const DEADLINE_MARGIN: Duration = Duration::from_secs(2);

/// API Gateway's integration timeout for the buffered ingest function: HTTP APIs allow at
/// most 30 s and REST APIs 29 s; Sluice stays under the lower.
pub const API_GATEWAY_LIMIT: Duration = Duration::from_secs(29);

tokio::task_local! {
    static CURRENT: Arc<Invocation>;
}

/// One Lambda invocation: its deadline, and the work it owes before it may end.
#[derive(Debug)]
pub struct Invocation {
    /// The invocation's deadline minus [`DEADLINE_MARGIN`].
    deadline: Option<Instant>,
    /// Work handed to [`after_response`] while this invocation ran.
    owed: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl Invocation {
    /// An invocation that must end by `deadline_ms` (Unix milliseconds, as the Lambda
    /// runtime's `Context::deadline`), or by nothing known. A deadline already past when the
    /// invocation starts is not one Lambda gives: it is an emulator's placeholder
    /// (`cargo lambda watch` sends 600000, ten minutes after 1970), and is ignored.
    pub fn new(deadline_ms: Option<u64>) -> Arc<Self> {
        let deadline = deadline_ms.and_then(|ms| {
            let end = UNIX_EPOCH + Duration::from_millis(ms);
            match end.duration_since(SystemTime::now()) {
                Ok(left) => Some(Instant::now() + left.saturating_sub(DEADLINE_MARGIN)),
                Err(_) => {
                    static WARNED: std::sync::Once = std::sync::Once::new();
                    WARNED.call_once(|| {
                        tracing::warn!(
                            deadline_ms = ms,
                            "the invocation's deadline had passed when it started; ignored \
                             (a local emulator's placeholder?)"
                        );
                    });
                    None
                }
            }
        });
        Arc::new(Self {
            deadline,
            owed: Mutex::new(Vec::new()),
        })
    }

    /// The invocation the current task runs in, if any.
    pub fn current() -> Option<Arc<Self>> {
        CURRENT.try_with(Arc::clone).ok()
    }

    /// By when the work inside must be done: the invocation's deadline minus the margin.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// Runs `work` inside this invocation.
    pub async fn run<F: Future>(self: &Arc<Self>, work: F) -> F::Output {
        CURRENT.scope(Arc::clone(self), work).await
    }

    /// Runs `f` inside this invocation (for polling a response body, which the Lambda runtime
    /// does from its own task).
    pub fn enter<R>(self: &Arc<Self>, f: impl FnOnce() -> R) -> R {
        CURRENT.sync_scope(Arc::clone(self), f)
    }

    /// Waits until every piece of owed work is done, including work added while waiting.
    pub async fn settle(&self) {
        loop {
            let owed = std::mem::take(&mut *self.owed.lock().unwrap_or_else(|p| p.into_inner()));
            if owed.is_empty() {
                return;
            }
            for task in owed {
                if let Err(e) = task.await {
                    tracing::error!(error = %e, "work owed by an invocation failed");
                }
            }
        }
    }
}

/// Runs one event's `work` as an invocation ending at `deadline_ms` (the Lambda context's
/// deadline), then waits for what it owes and sends its usage events: when this returns,
/// nothing of the invocation is left to run (the processor and housekeeper functions).
pub async fn complete<F: Future>(deadline_ms: u64, usage: &dyn UsageSink, work: F) -> F::Output {
    let invocation = Invocation::new(Some(deadline_ms));
    let output = invocation.run(work).await;
    invocation.settle().await;
    usage.flush().await;
    output
}

/// Runs `work`, which follows a request's answer (settling a stream, giving back a claim):
/// inside an invocation it is awaited before the invocation ends; elsewhere it is spawned and
/// nobody waits. Needs a tokio runtime; without one the work is dropped (as at shutdown).
pub fn after_response<F>(work: F)
where
    F: Future<Output = ()> + Send + 'static,
{
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    match Invocation::current() {
        Some(invocation) => {
            let task =
                runtime.spawn(CURRENT.scope(Arc::clone(&invocation), work.in_current_span()));
            invocation
                .owed
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(task);
        }
        None => {
            runtime.spawn(work.in_current_span());
        }
    }
}

/// The deadline of work starting now that may take up to `timeout`, held to the current
/// invocation's deadline (minus the margin) when there is one.
pub fn deadline_within(timeout: Duration) -> Instant {
    let wanted = Instant::now() + timeout;
    match Invocation::current().and_then(|i| i.deadline) {
        Some(deadline) => wanted.min(deadline),
        None => wanted,
    }
}

/// Time left before the current invocation's deadline (minus the margin); `None` outside an
/// invocation.
pub fn time_left() -> Option<Duration> {
    Invocation::current()
        .and_then(|i| i.deadline)
        .map(|d| d.saturating_duration_since(Instant::now()))
}

/// How a Lambda function's answer leaves it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Returned whole (API Gateway HTTP API integrations).
    Buffered,
    /// Streamed as it is produced (a function URL with `InvokeMode: RESPONSE_STREAM`).
    Streamed,
}

/// Lambda's limit on a buffered (synchronous) invocation's response payload: 6 MB. Function
/// URLs in `RESPONSE_STREAM` mode allow 200 MB.
pub const BUFFERED_RESPONSE_LIMIT: usize = 6 * 1024 * 1024;

/// An upper bound of the payload the Lambda runtime posts for this answer through
/// `lambda_http` (the API Gateway v2 response JSON): the body as a JSON string when
/// `lambda_http` sends it as text (no `content-encoding`, a textual `content-type` or none),
/// else base64; every header twice (`headers` and `multiValueHeaders`); and the envelope.
pub fn buffered_payload_bytes(headers: &axum::http::HeaderMap, body: &[u8]) -> usize {
    let escaped = |bytes: &[u8]| -> usize {
        bytes
            .iter()
            .map(|&b| match b {
                b'"' | b'\\' | b'\n' | b'\r' | b'\t' | 0x08 | 0x0c => 2,
                0..=0x1f => 6,
                _ => 1,
            })
            .sum()
    };
    let content_type = headers
        .get(axum::http::header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap_or_default());
    let textual = |ct: &str| {
        let mime = ct.split(';').next().unwrap_or_default().trim();
        [
            "text",
            "application/json",
            "application/javascript",
            "application/xml",
            "application/yaml",
        ]
        .iter()
        .any(|p| ct.starts_with(p))
            || ["+xml", "+yaml", "+json"].iter().any(|s| mime.ends_with(s))
            || headers
                .get("x-lambda-http-content-encoding")
                .is_some_and(|v| v == "text")
    };
    let as_text = !headers.contains_key(axum::http::header::CONTENT_ENCODING)
        && content_type.is_none_or(textual);
    let body = if as_text {
        // Decoded as UTF-8 with replacement characters, as `lambda_http` does.
        escaped(String::from_utf8_lossy(body).as_bytes())
    } else {
        body.len().div_ceil(3) * 4
    };
    let headers: usize = headers
        .iter()
        .map(|(name, value)| {
            2 * (escaped(name.as_str().as_bytes()) + escaped(value.as_bytes()) + 8)
        })
        .sum();
    const ENVELOPE: usize = 512;
    body + headers + ENVELOPE
}

/// What [`settle_before_answering`] needs.
#[derive(Clone)]
struct Settling {
    usage: Arc<dyn UsageSink>,
    delivery: Delivery,
    deadline_of: fn(&Request) -> Option<u64>,
}

/// Wraps a router for a Lambda function: each request runs as an [`Invocation`] whose
/// deadline `deadline_of` reads from the request (the Lambda context the runtime adapter put
/// in its extensions), and the invocation ends only once what the request owes is done —
/// work handed to [`after_response`], then the usage events, sent with `usage.flush()`.
/// A buffered answer is read whole and held until then; a streamed one is sent as it comes
/// and its end is held until then (a stream's settlement and cache write happen before its
/// final event: see `gateway::stream`).
pub fn settle_before_answering(
    router: axum::Router,
    usage: Arc<dyn UsageSink>,
    delivery: Delivery,
    deadline_of: fn(&Request) -> Option<u64>,
) -> axum::Router {
    let settling = Settling {
        usage,
        delivery,
        deadline_of,
    };
    router.layer(axum::middleware::from_fn_with_state(
        settling,
        settle_request,
    ))
}

async fn settle_request(
    State(settling): State<Settling>,
    request: Request,
    next: Next,
) -> Response {
    let invocation = Invocation::new((settling.deadline_of)(&request));
    let response = invocation.run(next.run(request)).await;
    let (parts, body) = response.into_parts();
    match settling.delivery {
        Delivery::Buffered => {
            // Read inside the invocation: a stream's end (its settlement) happens here.
            let read = invocation.run(axum::body::to_bytes(body, usize::MAX)).await;
            invocation.settle().await;
            settling.usage.flush().await;
            match read {
                Ok(bytes) => {
                    let size = buffered_payload_bytes(&parts.headers, &bytes);
                    if size <= BUFFERED_RESPONSE_LIMIT {
                        return Response::from_parts(parts, Body::from(bytes));
                    }
                    // Lambda would refuse this payload and API Gateway would answer an opaque
                    // 502; the client gets a reason and what to do instead.
                    tracing::warn!(
                        size,
                        limit = BUFFERED_RESPONSE_LIMIT,
                        status = parts.status.as_u16(),
                        "answer too large for a buffered Lambda response; refused with 413"
                    );
                    let mut refused = crate::api::error::ApiError::response_too_large(
                        size,
                        BUFFERED_RESPONSE_LIMIT,
                    )
                    .into_response();
                    if let Some(id) = parts.headers.get("x-request-id") {
                        refused
                            .headers_mut()
                            .insert(crate::api::headers::X_REQUEST_ID, id.clone());
                    }
                    refused
                }
                Err(e) => {
                    tracing::error!(error = %e, "could not read the response body");
                    crate::api::error::ApiError::unreadable_body().into_response()
                }
            }
        }
        Delivery::Streamed => {
            let body = Body::from_stream(Held {
                inner: Some(body.into_data_stream()),
                invocation,
                usage: settling.usage,
                settling: None,
            });
            Response::from_parts(parts, body)
        }
    }
}

/// A streamed body that, at its end, waits for the request's owed work and its usage events
/// before it lets the Lambda runtime close the response (which ends the invocation).
struct Held {
    inner: Option<axum::body::BodyDataStream>,
    invocation: Arc<Invocation>,
    usage: Arc<dyn UsageSink>,
    settling: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
}

impl Stream for Held {
    type Item = Result<Bytes, axum::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if let Some(inner) = this.inner.as_mut() {
            let invocation = Arc::clone(&this.invocation);
            match invocation.enter(|| Pin::new(inner).poll_next(cx)) {
                Poll::Ready(None) => {
                    // Dropped inside the invocation, so what the drop hands over is owed too.
                    let inner = this.inner.take();
                    invocation.enter(|| drop(inner));
                    let usage = Arc::clone(&this.usage);
                    this.settling = Some(Box::pin(async move {
                        invocation.settle().await;
                        usage.flush().await;
                    }));
                }
                other => return other,
            }
        }
        match this.settling.as_mut() {
            Some(settling) => match settling.as_mut().poll(cx) {
                Poll::Ready(()) => {
                    this.settling = None;
                    Poll::Ready(None)
                }
                Poll::Pending => Poll::Pending,
            },
            None => Poll::Ready(None),
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        // The client went away mid-stream: what the stream's drop hands over (settling what
        // was used) still runs; the runtime ends the invocation without waiting for it.
        let inner = self.inner.take();
        self.invocation.enter(|| drop(inner));
    }
}

/// A function's timeouts as deployed, checked at start-up against the config (see the
/// timeout table in `docs/aws.md`).
#[derive(Debug, Clone, Copy)]
pub struct FunctionTimeouts {
    /// The function's own timeout (`SLUICE_FUNCTION_TIMEOUT_S`, set beside `Timeout` in the
    /// template).
    pub function: Duration,
    /// For the processor: the jobs queue's visibility timeout, as SQS reports it.
    pub queue_visibility: Option<Duration>,
}

/// Which function is starting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The ingest function behind API Gateway (buffered answers).
    IngestBuffered,
    /// The ingest function behind a function URL (streamed answers).
    IngestStreamed,
    /// The job processor.
    Processor,
}

/// The function timeout from `SLUICE_FUNCTION_TIMEOUT_S`, if set; a value that is not whole
/// seconds from 1 to 900 (Lambda's range) is an error naming the variable.
pub fn function_timeout_from_env() -> Result<Option<Duration>, String> {
    match std::env::var("SLUICE_FUNCTION_TIMEOUT_S") {
        Ok(v) if !v.trim().is_empty() => parse_function_timeout(&v).map(Some),
        _ => Ok(None),
    }
}

fn parse_function_timeout(v: &str) -> Result<Duration, String> {
    v.trim()
        .parse::<u64>()
        .ok()
        .filter(|s| (1..=900).contains(s))
        .map(Duration::from_secs)
        .ok_or_else(|| {
            format!("SLUICE_FUNCTION_TIMEOUT_S must be whole seconds from 1 to 900, not `{v}`")
        })
}

/// Checks that a function's timeouts and the config agree; the error says which setting to
/// change and why.
pub fn check_timeouts(
    role: Role,
    timeouts: FunctionTimeouts,
    config: &crate::config::Config,
) -> Result<(), String> {
    let function = timeouts.function;
    let reservation = Duration::from_secs(config.limits.reservation_ttl_s);
    if reservation <= function {
        return Err(format!(
            "limits.reservation_ttl_s ({} s) must be longer than the function timeout ({} s): \
             a reservation released while its request still runs could let spend pass a cap",
            reservation.as_secs(),
            function.as_secs()
        ));
    }
    match role {
        Role::IngestBuffered if function > API_GATEWAY_LIMIT => Err(format!(
            "the buffered ingest function's timeout ({} s) must be at most {} s: API Gateway \
             gives up on the integration then, and the client would get API Gateway's 5xx \
             instead of Sluice's 504",
            function.as_secs(),
            API_GATEWAY_LIMIT.as_secs()
        )),
        Role::IngestBuffered | Role::IngestStreamed => Ok(()),
        Role::Processor => {
            let lease = Duration::from_secs(config.jobs.lease_s);
            if lease < function {
                return Err(format!(
                    "jobs.lease_s ({} s) must be at least the processor's timeout ({} s): a \
                     job still running must never be claimed again by a copy of its message",
                    lease.as_secs(),
                    function.as_secs()
                ));
            }
            let Some(visibility) = timeouts.queue_visibility else {
                return Ok(());
            };
            if visibility < function * 6 {
                return Err(format!(
                    "the jobs queue's visibility timeout ({} s) must be at least 6 x the \
                     processor's timeout ({} s), as AWS advises for SQS event sources: a batch \
                     still running must not be handed to a second invocation",
                    visibility.as_secs(),
                    function.as_secs()
                ));
            }
            if lease >= visibility {
                return Err(format!(
                    "jobs.lease_s ({} s) must be shorter than the jobs queue's visibility \
                     timeout ({} s): a message redelivered after a crash must find the lease \
                     run out, or the job waits for the next delivery",
                    lease.as_secs(),
                    visibility.as_secs()
                ));
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn deadlines_are_held_to_the_invocation_minus_the_margin() {
        let outside = deadline_within(Duration::from_secs(100));
        assert!(outside > Instant::now() + Duration::from_secs(99));
        assert_eq!(time_left(), None);
        let now_ms = crate::clock::Clock::now_ms(&crate::clock::SystemClock);
        let invocation = Invocation::new(Some(now_ms + 10_000));
        invocation
            .run(async {
                let d = deadline_within(Duration::from_secs(100));
                let left = d.saturating_duration_since(Instant::now());
                assert!(left <= Duration::from_secs(8), "{left:?}");
                assert!(left >= Duration::from_millis(7_500), "{left:?}");
                // A shorter timeout wins.
                let d = deadline_within(Duration::from_secs(1));
                assert!(d <= Instant::now() + Duration::from_secs(1));
            })
            .await;
        // Less time left than the margin: no time at all, never a panic.
        let short = Invocation::new(Some(now_ms + 1_000));
        short
            .run(async { assert_eq!(time_left(), Some(Duration::ZERO)) })
            .await;
        // A deadline already past at the start is an emulator's placeholder: ignored.
        let placeholder = Invocation::new(Some(600_000));
        placeholder
            .run(async { assert_eq!(time_left(), None) })
            .await;
    }

    #[tokio::test]
    async fn work_after_the_response_is_awaited_inside_an_invocation() {
        let done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let invocation = Invocation::new(None);
        let counter = Arc::clone(&done);
        invocation
            .run(async move {
                let inner = Arc::clone(&counter);
                after_response(async move {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    // Work handed over by owed work is owed too.
                    after_response(async move {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        inner.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    });
                    counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                });
            })
            .await;
        assert_eq!(done.load(std::sync::atomic::Ordering::SeqCst), 0);
        invocation.settle().await;
        assert_eq!(done.load(std::sync::atomic::Ordering::SeqCst), 2);
    }

    fn config(lease_s: u64, reservation_ttl_s: u64) -> crate::config::Config {
        let mut c = crate::config::Config::builtin();
        c.jobs.lease_s = lease_s;
        c.limits.reservation_ttl_s = reservation_ttl_s;
        c
    }

    #[test]
    fn timeouts_that_disagree_are_refused_with_the_setting_to_change() {
        let t = |function: u64, visibility: Option<u64>| FunctionTimeouts {
            function: Duration::from_secs(function),
            queue_visibility: visibility.map(Duration::from_secs),
        };
        let ok = config(50, 600);
        assert!(check_timeouts(Role::IngestBuffered, t(28, None), &ok).is_ok());
        assert!(check_timeouts(Role::IngestStreamed, t(300, None), &ok).is_ok());
        assert!(check_timeouts(Role::Processor, t(45, Some(360)), &ok).is_ok());
        let e = check_timeouts(Role::Processor, t(60, Some(360)), &ok).unwrap_err();
        assert!(e.contains("at least the processor's timeout"), "{e}");
        let e = check_timeouts(Role::IngestBuffered, t(30, None), &ok).unwrap_err();
        assert!(e.contains("at most 29 s"), "{e}");
        let e = check_timeouts(Role::Processor, t(45, Some(240)), &ok).unwrap_err();
        assert!(e.contains("6 x"), "{e}");
        let e = check_timeouts(Role::Processor, t(10, Some(60)), &config(60, 600)).unwrap_err();
        assert!(e.contains("jobs.lease_s"), "{e}");
        let e = check_timeouts(Role::IngestStreamed, t(300, None), &config(50, 300)).unwrap_err();
        assert!(e.contains("limits.reservation_ttl_s"), "{e}");
    }

    #[test]
    fn the_function_timeout_is_whole_seconds_in_lambdas_range() {
        assert_eq!(parse_function_timeout(" 60 "), Ok(Duration::from_secs(60)));
        for bad in ["0", "901", "1m", "-1", "2.5"] {
            let e = parse_function_timeout(bad).unwrap_err();
            assert!(e.contains("SLUICE_FUNCTION_TIMEOUT_S"), "{e}");
        }
    }

    #[test]
    fn binary_and_compressed_answers_are_counted_as_base64() {
        use axum::http::{HeaderMap, HeaderValue, header};
        let body = vec![0u8; 3_000];
        let with = |pairs: &[(header::HeaderName, &'static str)]| {
            let mut h = HeaderMap::new();
            for (k, v) in pairs {
                h.insert(k.clone(), HeaderValue::from_static(v));
            }
            h
        };
        let octets = with(&[(header::CONTENT_TYPE, "application/octet-stream")]);
        let gzip = with(&[
            (header::CONTENT_TYPE, "application/json"),
            (header::CONTENT_ENCODING, "gzip"),
        ]);
        let json = with(&[(header::CONTENT_TYPE, "application/json")]);
        // 3,000 bytes are 4,000 in base64; as text, each NUL is escaped to `\u0000`.
        assert!(buffered_payload_bytes(&octets, &body) >= 4_000);
        assert!(buffered_payload_bytes(&octets, &body) < 4_000 + 1_024);
        assert!(buffered_payload_bytes(&gzip, &body) < 4_000 + 1_024);
        assert!(buffered_payload_bytes(&json, &body) >= 18_000);
        assert!(buffered_payload_bytes(&with(&[]), b"plain") < 1_024);
    }
}
