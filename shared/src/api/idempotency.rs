//! `Idempotency-Key` on every POST route that runs something: `/v1/chat/completions`,
//! `/v1/embeddings` (answered now, or as a job with `Prefer: respond-async`), `/v1/messages`
//! and `/v1/jobs`. The same key and request within 24 h get the stored response again — no
//! second provider call, no second charge, no second job; the same key with a different
//! request is a 422; while the first is still running, a duplicate gets 409.
//!
//! A key is 1 to 255 printable ASCII characters (0x20–0x7E) with no space at either end, used
//! byte for byte (a Structured Field string's quotes, if sent, are part of it). Anything else —
//! blank, a tab, non-ASCII bytes, too long, or the header twice — is a 400
//! `invalid_idempotency_key`, never silently ignored: a client that sent a key relies on it.
//!
//! Keys are scoped by tenant. A request's fingerprint is a SHA-256 of what it asks for, with
//! the body in canonical JSON so key order and whitespace do not make it "different": the
//! route and body for an answer now; for a job, the endpoint, body and callback URL, and a
//! marker, so one key cannot be both (the two `POST /v1/jobs` and `Prefer` forms of the same
//! job are the same request). Responses worth retrying (429, 5xx) are not kept: the claim is
//! released instead.
//!
//! Streams: the key is held until the stream ends, so a duplicate meanwhile gets 409. A stream
//! that ran to its end is not replayed (its events are not kept); the key then answers 422
//! `idempotency_stream_not_replayable`, so a retry never runs, and bills, the request twice.
//! A stream that broke off (provider cut, client gone) releases the key, like a 5xx.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use sha2::{Digest, Sha256};

use super::error::ApiError;
use crate::clock::Clock;
use crate::gateway::cache::canonical_json;
use crate::gateway::stream::EventBytes;
use crate::providers::Endpoint;
use crate::store::{IdempotencyBegin, IdempotencyStore, SharedStore, StoredResponse};

/// How long a finished response is kept for replays.
pub const KEEP_MS: u64 = 24 * 3600 * 1000;
/// How long a claim may stay unfinished before another attempt may take it over.
pub const LEASE_MS: u64 = 10 * 60 * 1000;
/// The longest key, in bytes (as Stripe's).
pub const MAX_KEY_BYTES: usize = 255;

/// The header's name.
const HEADER: &str = "idempotency-key";
/// The end of every complete OpenAI-format stream the gateway produces.
const DONE: &[u8] = b"data: [DONE]\n\n";

/// An idempotent request in flight.
pub struct Claim {
    key: String,
    fingerprint: [u8; 32],
}

/// What to do with a request that carries an `Idempotency-Key`.
pub enum Begin {
    /// Run it, then [`respond`] (or [`guard_stream`] for a stream).
    Run(Claim),
    /// Answer with the stored response ([`replayed`]).
    Replay(StoredResponse),
}

/// What a key is bound to.
pub enum Request<'a> {
    /// A request answered now: the route (`chat/completions`, `embeddings`, `messages`) and
    /// the body.
    Call {
        /// The route, without `/v1/`.
        route: &'a str,
        /// The body as sent.
        body: &'a [u8],
    },
    /// An async job: what it runs and where its result goes.
    Job {
        /// The API the job calls.
        endpoint: Endpoint,
        /// Its request body.
        body: &'a [u8],
        /// Its callback URL.
        callback_url: Option<&'a str>,
        /// Its completion window in seconds (`completion_window`), if any.
        completion_window_s: Option<u64>,
    },
}

impl Request<'_> {
    fn fingerprint(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        let body = match self {
            Self::Call { route, body } => {
                h.update(route.as_bytes());
                body
            }
            Self::Job { endpoint, body, .. } => {
                // No route is called `job`: a job never matches an answer-now request.
                h.update(b"job");
                h.update([0]);
                h.update(endpoint.path().as_bytes());
                body
            }
        };
        h.update([0]);
        match serde_json::from_slice::<serde_json::Value>(body) {
            Ok(v) => h.update(canonical_json(&v)),
            Err(_) => h.update(body),
        }
        if let Self::Job { callback_url, .. } = self {
            // Length-prefixed, so that no URL can pass for "none" or for another URL.
            let url = callback_url.unwrap_or_default();
            h.update([u8::from(callback_url.is_some())]);
            h.update((url.len() as u64).to_be_bytes());
            h.update(url.as_bytes());
        }
        if let Self::Job {
            completion_window_s: Some(window),
            ..
        } = self
        {
            // Only present windows are hashed, so fingerprints of jobs without one are unchanged.
            h.update(b"\0window");
            h.update(window.to_be_bytes());
        }
        h.finalize().into()
    }
}

/// Why a key is refused, in words for the client.
fn key_problem(key: &[u8]) -> Option<&'static str> {
    if key.iter().all(|b| *b == b' ' || *b == b'\t') {
        Some("`Idempotency-Key` must not be blank.")
    } else if key.len() > MAX_KEY_BYTES {
        Some("`Idempotency-Key` must be at most 255 characters.")
    } else if !key.iter().all(|b| (0x20..=0x7e).contains(b)) {
        Some("`Idempotency-Key` must be printable ASCII (0x20-0x7E): no tabs, no other bytes.")
    } else if key.first() == Some(&b' ') || key.last() == Some(&b' ') {
        Some("`Idempotency-Key` must not start or end with a space.")
    } else {
        None
    }
}

fn invalid_key(message: &'static str) -> ApiError {
    let mut e = ApiError::new(
        StatusCode::BAD_REQUEST,
        "invalid_request_error",
        "invalid_idempotency_key",
        message,
    );
    e.param = Some("Idempotency-Key".into());
    e
}

/// The client's `Idempotency-Key`: `None` without one, a 400 when it is not a valid key (or
/// is sent more than once).
pub fn header_key(headers: &HeaderMap) -> Result<Option<&str>, ApiError> {
    let mut values = headers.get_all(HEADER).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(invalid_key(
            "Send `Idempotency-Key` once, not several times.",
        ));
    }
    if let Some(problem) = key_problem(value.as_bytes()) {
        return Err(invalid_key(problem));
    }
    // Printable ASCII is UTF-8.
    value
        .to_str()
        .map(Some)
        .map_err(|_| invalid_key("`Idempotency-Key` must be printable ASCII."))
}

fn conflict(status: StatusCode, code: &'static str, message: &str) -> ApiError {
    ApiError::new(status, "invalid_request_error", code, message)
}

/// Claims the key for this request, or finds its earlier outcome.
pub async fn begin(
    store: &dyn IdempotencyStore,
    tenant: &str,
    key: &str,
    request: Request<'_>,
    now_ms: u64,
) -> Result<Begin, ApiError> {
    if let Some(problem) = key_problem(key.as_bytes()) {
        return Err(invalid_key(problem));
    }
    let scoped = format!("{tenant}#{}", hex::encode(Sha256::digest(key.as_bytes())));
    let fingerprint = request.fingerprint();
    match store
        .idempotency_begin(&scoped, &fingerprint, now_ms, LEASE_MS)
        .await?
    {
        IdempotencyBegin::Started => Ok(Begin::Run(Claim {
            key: scoped,
            fingerprint,
        })),
        IdempotencyBegin::Replay(stored) => Ok(Begin::Replay(stored)),
        IdempotencyBegin::Mismatch => Err(conflict(
            StatusCode::UNPROCESSABLE_ENTITY,
            "idempotency_key_reused",
            "This Idempotency-Key was already used with a different request.",
        )),
        IdempotencyBegin::InProgress => Err(conflict(
            StatusCode::CONFLICT,
            "idempotency_key_in_use",
            "A request with this Idempotency-Key is still being processed.",
        )),
    }
}

/// Keeps the response for replays, or releases the claim if the outcome is worth retrying.
pub async fn finish(
    store: &dyn IdempotencyStore,
    claim: Claim,
    status: StatusCode,
    body: Option<Bytes>,
    now_ms: u64,
) {
    let keep = status != StatusCode::TOO_MANY_REQUESTS && !status.is_server_error();
    let stored = body.filter(|_| keep).map(|body| StoredResponse {
        status: status.as_u16(),
        body,
    });
    keep_or_release(store, &claim, stored.as_ref(), now_ms).await;
}

/// Records `stored` under the claim, or releases it when there is nothing to keep.
async fn keep_or_release(
    store: &dyn IdempotencyStore,
    claim: &Claim,
    stored: Option<&StoredResponse>,
    now_ms: u64,
) {
    // Both writes can be repeated safely. Given up, the key would stay claimed for its lease
    // (a retry of the request is refused as in progress, then runs again).
    let result = crate::store::retrying("recording an idempotent response", |_| async {
        match stored {
            Some(stored) => {
                store
                    .idempotency_finish(&claim.key, &claim.fingerprint, stored, now_ms + KEEP_MS)
                    .await
            }
            None => store.idempotency_release(&claim.key).await,
        }
    })
    .await;
    if let Err(e) = result {
        tracing::warn!(error = %e, "could not record an idempotent response");
    }
}

/// Finishes an idempotent request whose response is built: keeps a JSON answer (or error) for
/// replays, then sends it. Anything else (a stream not guarded by [`guard_stream`]) releases
/// the key, since it cannot be replayed.
pub async fn respond(
    store: &dyn IdempotencyStore,
    claim: Claim,
    response: Response,
    now_ms: u64,
) -> Response {
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !is_json {
        finish(store, claim, status, None, now_ms).await;
        return response;
    }
    let (parts, body) = response.into_parts();
    let bytes = axum::body::to_bytes(body, usize::MAX)
        .await
        .unwrap_or_default();
    finish(store, claim, status, Some(bytes.clone()), now_ms).await;
    Response::from_parts(parts, Body::from(bytes))
}

/// A stored answer sent again: nothing was called, charged or queued this time. A stored
/// `202` (a job) comes back with its `Location` and `Preference-Applied` again.
pub fn replayed(stored: StoredResponse) -> Response {
    let job_id = (stored.status == 202)
        .then(|| serde_json::from_slice::<serde_json::Value>(&stored.body).ok())
        .flatten()
        .and_then(|v| v["id"].as_str().map(str::to_owned));
    let mut response = Response::new(Body::from(stored.body));
    *response.status_mut() = StatusCode::from_u16(stored.status).unwrap_or(StatusCode::OK);
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert("idempotent-replayed", HeaderValue::from_static("true"));
    headers.insert(
        super::headers::X_SLUICE_COST_USD,
        HeaderValue::from_static("0.000000000"),
    );
    if let Some(id) = job_id {
        super::jobs::add_acceptance_headers(headers, &id);
    }
    response
}

/// The error a finished stream's key answers with from then on.
pub fn stream_not_replayable() -> ApiError {
    conflict(
        StatusCode::UNPROCESSABLE_ENTITY,
        "idempotency_stream_not_replayable",
        "A streamed request with this Idempotency-Key already ran to its end, and streams are \
         not replayed. Send it with a new key to run it again.",
    )
}

/// An error response (in the route's own shape) as it is kept for replays.
pub async fn stored_error(response: Response) -> StoredResponse {
    let status = response.status().as_u16();
    let body = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap_or_default();
    StoredResponse { status, body }
}

/// Convenience for the OpenAI routes: [`stream_not_replayable`] in OpenAI's error shape.
pub async fn openai_stream_refusal() -> StoredResponse {
    stored_error(stream_not_replayable().into_response()).await
}

/// Holds the key while a stream runs and settles it when the stream ends: a stream that
/// reaches `data: [DONE]` keeps the key with `refusal` (see [`stream_not_replayable`]),
/// written before `[DONE]` is passed on, so it is done when the client sees the end (and
/// within a Lambda invocation); one that broke off, or whose client went away, releases it.
pub fn guard_stream(
    events: EventBytes,
    store: SharedStore,
    clock: Arc<dyn Clock>,
    claim: Claim,
    refusal: StoredResponse,
) -> EventBytes {
    let state = StreamState {
        events,
        held: HeldKey {
            store,
            claim: Some(claim),
        },
        clock,
        refusal,
    };
    futures_util::stream::unfold(state, |mut s| async move {
        let item = s.events.next().await;
        let complete = matches!(&item, Some(Ok(b)) if b.ends_with(DONE));
        // Settled at `[DONE]` rather than at the stream's end: a reader (the Anthropic
        // translation) may stop at `[DONE]` without asking for more.
        if (complete || item.is_none())
            && let Some(claim) = s.held.claim.take()
        {
            let kept = complete.then_some(&s.refusal);
            let now = s.clock.now_ms();
            keep_or_release(&*s.held.store, &claim, kept, now).await;
        }
        item.map(|item| (item, s))
    })
    .boxed()
}

struct StreamState {
    events: EventBytes,
    held: HeldKey,
    clock: Arc<dyn Clock>,
    refusal: StoredResponse,
}

/// A stream's claim; released if the stream is dropped before its end (the client left).
struct HeldKey {
    store: SharedStore,
    claim: Option<Claim>,
}

impl Drop for HeldKey {
    fn drop(&mut self) {
        let Some(claim) = self.claim.take() else {
            return;
        };
        // Not awaited here (drop is synchronous), but owed by the Lambda invocation if there
        // is one; if no runtime is left, the claim's lease lets a retry take the key over
        // after `LEASE_MS`.
        let store = Arc::clone(&self.store);
        crate::invocation::after_response(async move {
            keep_or_release(&*store, &claim, None, 0).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn fingerprint(request: Request<'_>) -> [u8; 32] {
        request.fingerprint()
    }

    fn is_valid_key(key: &[u8]) -> bool {
        key_problem(key).is_none()
    }

    #[test]
    fn documented_examples() {
        for ok in [
            "a",
            "order-42",
            "8e03978e-40d5-43e8-bc93-6894a57f9324",
            "a b",
            "\"sf\"",
        ] {
            assert!(is_valid_key(ok.as_bytes()), "{ok}");
        }
        let long = "k".repeat(MAX_KEY_BYTES);
        assert!(is_valid_key(long.as_bytes()));
        let too_long = "k".repeat(MAX_KEY_BYTES + 1);
        for bad in [
            "",
            " ",
            "  ",
            "\t",
            " a",
            "a ",
            "a\tb",
            "caf\u{e9}",
            too_long.as_str(),
        ] {
            assert!(!is_valid_key(bad.as_bytes()), "{bad:?}");
        }
        assert!(!is_valid_key(b"a\x7f"));
        assert!(!is_valid_key(b"\xff"));
    }

    #[test]
    fn a_key_sent_twice_is_refused() {
        let mut headers = HeaderMap::new();
        headers.append(HEADER, HeaderValue::from_static("a"));
        assert_eq!(header_key(&headers).unwrap(), Some("a"));
        headers.append(HEADER, HeaderValue::from_static("a"));
        assert_eq!(
            header_key(&headers).unwrap_err().code,
            "invalid_idempotency_key"
        );
    }

    #[test]
    fn fingerprints_tell_requests_apart() {
        let body = br#"{"model":"m","input":"x"}"#;
        let reordered = br#"{ "input": "x", "model": "m" }"#;
        let call = |route, body| fingerprint(Request::Call { route, body });
        let job = |endpoint, body, callback_url| {
            fingerprint(Request::Job {
                endpoint,
                body,
                callback_url,
                completion_window_s: None,
            })
        };
        assert_eq!(call("embeddings", body), call("embeddings", reordered));
        // A window makes it another job; no window hashes as before windows existed.
        let waiting = fingerprint(Request::Job {
            endpoint: Endpoint::Embeddings,
            body,
            callback_url: None,
            completion_window_s: Some(86_400),
        });
        assert_ne!(waiting, job(Endpoint::Embeddings, body, None));
        assert_ne!(call("embeddings", body), call("messages", body));
        assert_ne!(
            call("embeddings", body),
            job(Endpoint::Embeddings, body, None)
        );
        assert_eq!(
            job(Endpoint::Embeddings, body, None),
            job(Endpoint::Embeddings, reordered, None)
        );
        assert_ne!(
            job(Endpoint::Embeddings, body, None),
            job(Endpoint::ChatCompletions, body, None)
        );
        assert_ne!(
            job(Endpoint::Embeddings, body, None),
            job(Endpoint::Embeddings, body, Some(""))
        );
        assert_ne!(
            job(Endpoint::Embeddings, body, Some("https://a.example/x")),
            job(Endpoint::Embeddings, body, Some("https://a.example/y"))
        );
    }

    proptest! {
        /// The rule, restated byte by byte: every byte printable ASCII, 1 to 255 of them, no
        /// space at either end. `header_key` agrees with it on every value a header can hold.
        #[test]
        fn the_key_rule_holds_for_any_bytes(key in proptest::collection::vec(any::<u8>(), 0..300)) {
            let expected = !key.is_empty()
                && key.len() <= MAX_KEY_BYTES
                && key.iter().all(|b| (0x20..=0x7e).contains(b))
                && key[0] != b' '
                && key[key.len() - 1] != b' ';
            prop_assert_eq!(is_valid_key(&key), expected);
            if let Ok(value) = HeaderValue::from_bytes(&key) {
                let mut headers = HeaderMap::new();
                headers.insert(HEADER, value);
                match header_key(&headers) {
                    Ok(Some(k)) => {
                        prop_assert!(expected);
                        prop_assert_eq!(k.as_bytes(), &key[..]);
                    }
                    Ok(None) => prop_assert!(false, "a present header was ignored"),
                    Err(e) => {
                        prop_assert!(!expected);
                        prop_assert_eq!(e.code, "invalid_idempotency_key");
                        prop_assert_eq!(e.param.as_deref(), Some("Idempotency-Key"));
                    }
                }
            }
        }
    }
}
