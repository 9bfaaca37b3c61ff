//! What every HTTP provider shares: sending with a deadline, turning error statuses into
//! [`ProviderError`]s with the provider's own message, and reading `Retry-After`.
//!
//! OpenAI, Anthropic and Gemini all put a human-readable message at `error.message` in their
//! error bodies, so one reader serves all three.

use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use hyper::body::Incoming;
use hyper::header::{HeaderMap, RETRY_AFTER};
use hyper::{Response, Uri};
use serde_json::Value;

use super::client::{self, HttpClient, IntoUri, RequestBuilder};
use super::{ChunkStream, ProviderError, sse};

/// A provider URL parsed once, when the provider is built (every provider call posts to
/// it). A URL that does not parse (config validation refuses those) is kept as the string, so
/// the call fails as it did before: at send time, as [`ProviderError::Connect`].
#[derive(Debug, Clone)]
pub(super) struct PostUrl(Result<Uri, String>);

impl PostUrl {
    pub(super) fn new(url: String) -> Self {
        Self(url.as_str().into_uri().map_err(|_| url))
    }

    /// A `POST` to this URL.
    pub(super) fn post<'a>(&self, client: &'a HttpClient) -> RequestBuilder<'a> {
        match &self.0 {
            Ok(url) => client.post(url),
            Err(unparsed) => client.post(unparsed.as_str()),
        }
    }
}

/// Longest provider error message kept (they are logged and may be shown to clients).
const MAX_ERROR_MESSAGE: usize = 500;

/// Sends a request and reads the whole 2xx body before `timeout`; with the answer's headers
/// (for [`super::headroom_from`]).
pub(super) async fn send_for_body(
    request: RequestBuilder<'_>,
    timeout: Duration,
) -> Result<(Bytes, HeaderMap), ProviderError> {
    tokio::time::timeout(timeout, async {
        let mut response = check_status(request.send().await?, timeout).await?;
        // Taken, not copied: the body is all that is read from the response after this.
        let headers = std::mem::take(response.headers_mut());
        Ok::<_, ProviderError>((client::bytes(response).await?, headers))
    })
    .await
    .map_err(|_| ProviderError::Timeout)?
}

/// Sends a request whose 2xx answer is an event stream; waits for the headers only (and
/// returns them).
pub(super) async fn send_for_events(
    request: RequestBuilder<'_>,
    timeout: Duration,
) -> Result<(sse::EventStream, HeaderMap), ProviderError> {
    let response = tokio::time::timeout(timeout, request.send())
        .await
        .map_err(|_| ProviderError::Timeout)??;
    let mut response = check_status(response, timeout).await?;
    let headers = std::mem::take(response.headers_mut());
    let events = sse::json_events(client::byte_stream(response));
    Ok((events, headers))
}

/// Passes 2xx answers on; turns the rest into [`ProviderError::Status`] with the provider's message.
async fn check_status(
    response: Response<Incoming>,
    timeout: Duration,
) -> Result<Response<Incoming>, ProviderError> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let header_retry = retry_after(response.headers());
    let body = tokio::time::timeout(timeout, client::bytes(response))
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or_default();
    let parsed: Option<Value> = serde_json::from_slice(&body).ok();
    Err(ProviderError::Status {
        status: status.as_u16(),
        message: parsed.as_ref().and_then(error_message),
        retry_after: header_retry.or_else(|| parsed.as_ref().and_then(google_retry_delay)),
    })
}

/// `Retry-After` in seconds (the HTTP-date form is not used by these providers).
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let v = headers.get(RETRY_AFTER)?.to_str().ok()?;
    seconds(v.trim())
}

fn seconds(s: &str) -> Option<Duration> {
    s.parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s >= 0.0 && *s <= 86_400.0)
        .map(Duration::from_secs_f64)
}

/// Google APIs put the wait in the body: `error.details[].retryDelay = "30s"` of a
/// `google.rpc.RetryInfo`.
fn google_retry_delay(body: &Value) -> Option<Duration> {
    body.get("error")?
        .get("details")?
        .as_array()?
        .iter()
        .find_map(|d| {
            d.get("retryDelay")?
                .as_str()?
                .strip_suffix('s')
                .and_then(seconds)
        })
}

/// `error.message` from an error body, shortened.
pub(super) fn error_message(body: &Value) -> Option<String> {
    let msg = body.get("error")?.get("message")?.as_str()?;
    Some(msg.chars().take(MAX_ERROR_MESSAGE).collect())
}

/// An error event inside an otherwise successful stream (all three providers send one as
/// `{"error": {...}}` or `{"type": "error", "error": {...}}`). Rate limits and overloads
/// keep their meaning, so they are retried and reported as such: Anthropic names them in
/// `error.type`, Google gives the HTTP code in `error.code`.
pub(super) fn stream_error(data: &Value) -> Option<ProviderError> {
    let error = data.get("error").filter(|e| !e.is_null())?;
    let message = error_message(data).unwrap_or_else(|| "error event in the stream".into());
    let status = match error.get("type").and_then(Value::as_str) {
        Some("rate_limit_error") => Some(429),
        Some("overloaded_error") => Some(529),
        Some("api_error") => Some(500),
        _ => error
            .get("code")
            .and_then(Value::as_u64)
            .filter(|c| matches!(c, 408 | 429 | 500..=599))
            .and_then(|c| u16::try_from(c).ok()),
    };
    Some(match status {
        Some(status) => ProviderError::Status {
            status,
            message: Some(message),
            retry_after: google_retry_delay(data),
        },
        None => ProviderError::Malformed(message),
    })
}

/// Boxes a chunk stream (a shorthand for providers).
pub(super) fn boxed<S>(s: S) -> ChunkStream
where
    S: futures_util::Stream<Item = Result<Value, ProviderError>> + Send + 'static,
{
    s.boxed()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[tokio::test]
    async fn a_url_is_parsed_once_and_one_that_does_not_parse_fails_at_send_as_before() {
        let parsed = PostUrl::new("http://127.0.0.1:9/v1/chat/completions".into());
        assert_eq!(
            parsed.0.as_ref().map(Uri::to_string).ok().as_deref(),
            Some("http://127.0.0.1:9/v1/chat/completions")
        );

        let client = HttpClient::new().unwrap();
        let unparsed = PostUrl::new("not a url/chat/completions".into());
        let error = send_for_body(unparsed.post(&client), Duration::from_secs(1))
            .await
            .unwrap_err();
        assert!(matches!(error, ProviderError::Connect(_)), "{error:?}");
    }

    #[test]
    fn google_retry_info_is_read_from_the_body() {
        let body = json!({"error": {"code": 429, "message": "quota", "status": "RESOURCE_EXHAUSTED",
            "details": [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "7s"}]}});
        assert_eq!(google_retry_delay(&body), Some(Duration::from_secs(7)));
        assert_eq!(error_message(&body).as_deref(), Some("quota"));
        assert_eq!(
            google_retry_delay(&json!({"error": {"message": "x"}})),
            None
        );
    }

    #[test]
    fn anthropic_overload_in_a_stream_is_retryable() {
        let e = stream_error(&json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}))
            .unwrap();
        assert!(e.is_retryable());
        assert!(stream_error(&json!({"type": "ping"})).is_none());
        let google =
            json!({"error": {"code": 429, "message": "quota", "status": "RESOURCE_EXHAUSTED"}});
        assert!(matches!(
            stream_error(&google),
            Some(ProviderError::Status { status: 429, .. })
        ));
        let openai = json!({"error": {"message": "boom", "type": "server_error"}});
        assert!(matches!(
            stream_error(&openai),
            Some(ProviderError::Malformed(_))
        ));
    }
}

/// Property tests: error bodies, error events and retry hints of any shape are read without
/// panicking, and what is read stays within bounds.
#[cfg(test)]
mod fuzz {
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;
    use crate::fuzzing::{self, json_value, mutated};

    fn valid_error() -> Value {
        json!({"type": "error", "error": {"type": "rate_limit_error", "code": 429, "message": "slow down", "status": "RESOURCE_EXHAUSTED",
            "details": [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "7s"}]}})
    }

    proptest! {
        #![proptest_config(fuzzing::config(fuzzing::CASES))]

        #[test]
        fn fuzz_any_error_body(body in prop_oneof![json_value(), mutated(valid_error())]) {
            if let Some(message) = error_message(&body) {
                prop_assert!(message.chars().count() <= MAX_ERROR_MESSAGE);
            }
            if let Some(wait) = google_retry_delay(&body) {
                prop_assert!(wait <= Duration::from_secs(86_400));
            }
            match stream_error(&body) {
                Some(ProviderError::Status { status, .. }) => prop_assert!(matches!(status, 408 | 429 | 500..=599)),
                Some(ProviderError::Malformed(_)) | None => {}
                Some(other) => prop_assert!(false, "unexpected {:?}", other),
            }
        }

        #[test]
        fn fuzz_any_retry_after(value in prop_oneof![any::<String>(), "[0-9.eE+-]{0,12}", "[0-9]{1,30}s?"]) {
            if let Some(wait) = seconds(&value) {
                prop_assert!(wait <= Duration::from_secs(86_400));
            }
            let mut headers = HeaderMap::new();
            if let Ok(v) = value.parse() {
                headers.insert(RETRY_AFTER, v);
            }
            let _ = retry_after(&headers);
        }
    }
}
