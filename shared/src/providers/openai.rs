//! OpenAI and every OpenAI-compatible server (Azure OpenAI, vLLM, Ollama, …).
//!
//! The body is forwarded as the client sent it (every field preserved, only `model` replaced);
//! the answer is checked for shape but returned byte for byte.

use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use reqwest::header::{HeaderMap, RETRY_AFTER};
use serde_json::Value;

use super::{
    Endpoint, ProviderApi, ProviderError, UpstreamRequest, UpstreamResponse, headroom_from, now_ms,
    sse, usage_from_openai,
};

/// Longest provider error message kept (they are logged and may be shown to clients).
const MAX_ERROR_MESSAGE: usize = 500;

/// An OpenAI-compatible API at a base URL such as `https://api.openai.com/v1`.
#[derive(Debug, Clone)]
pub struct OpenAi {
    base_url: String,
}

impl OpenAi {
    /// A provider at `base_url` (with or without a trailing slash).
    pub fn new(base_url: &str) -> Self {
        Self {
            base_url: base_url.trim_end_matches('/').to_owned(),
        }
    }

    fn url(&self, endpoint: Endpoint) -> String {
        format!("{}/{}", self.base_url, endpoint.path())
    }
}

impl ProviderApi for OpenAi {
    async fn call(
        &self,
        http: &reqwest::Client,
        request: UpstreamRequest<'_>,
    ) -> Result<UpstreamResponse, ProviderError> {
        if request.stream {
            // Ask for the usage chunk so the stream can be metered; the gateway hides it from
            // clients that did not ask for it themselves.
            let mut body = request.body.clone();
            body.insert(
                "stream_options".into(),
                serde_json::json!({"include_usage": true}),
            );
            let send = http
                .post(self.url(request.endpoint))
                .bearer_auth(request.api_key)
                .json(&body)
                .send();
            let response = tokio::time::timeout(request.timeout, send)
                .await
                .map_err(|_| ProviderError::Timeout)?
                .map_err(transport)?;
            let response = check_status(response, request.timeout).await?;
            let headroom = headroom_from(response.headers(), now_ms());
            let events = sse::json_events(response.bytes_stream().map(|r| r.map_err(transport)));
            let chunks = events
                .map(|e| {
                    let e = e?;
                    if e.data.get("error").is_some_and(|v| !v.is_null()) {
                        return Err(ProviderError::Malformed("error event in the stream".into()));
                    }
                    Ok(e.data)
                })
                .boxed();
            return Ok(UpstreamResponse::Stream { chunks, headroom });
        }
        let send = http
            .post(self.url(request.endpoint))
            .bearer_auth(request.api_key)
            .json(request.body)
            .send();
        let (body, headroom) = tokio::time::timeout(request.timeout, async {
            let response = check_status(send.await.map_err(transport)?, request.timeout).await?;
            let headroom = headroom_from(response.headers(), now_ms());
            Ok::<_, ProviderError>((response.bytes().await.map_err(transport)?, headroom))
        })
        .await
        .map_err(|_| ProviderError::Timeout)??;
        let usage = validate(request.endpoint, &body)?;
        Ok(UpstreamResponse::Complete {
            body,
            usage,
            headroom,
        })
    }
}

/// Maps a transport error; the URL is dropped so nothing internal is carried along.
fn transport(e: reqwest::Error) -> ProviderError {
    if e.is_timeout() {
        ProviderError::Timeout
    } else {
        ProviderError::Connect(e.without_url().to_string())
    }
}

/// Passes 2xx answers on; turns the rest into [`ProviderError::Status`] with the provider's message.
async fn check_status(
    response: reqwest::Response,
    timeout: Duration,
) -> Result<reqwest::Response, ProviderError> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let retry_after = retry_after(response.headers());
    let body = tokio::time::timeout(timeout, response.bytes())
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or_default();
    Err(ProviderError::Status {
        status: status.as_u16(),
        message: error_message(&body),
        retry_after,
    })
}

fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let v = headers.get(RETRY_AFTER)?.to_str().ok()?;
    v.trim()
        .parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(Duration::from_secs_f64)
}

/// `error.message` from an OpenAI-style error body, shortened.
fn error_message(body: &Bytes) -> Option<String> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let msg = v.get("error")?.get("message")?.as_str()?;
    Some(msg.chars().take(MAX_ERROR_MESSAGE).collect())
}

/// Checks that a 200 body is the JSON the endpoint promises, and reads its usage.
fn validate(endpoint: Endpoint, body: &Bytes) -> Result<Option<super::Usage>, ProviderError> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|_| ProviderError::Malformed("body is not JSON".into()))?;
    if v.get("error").is_some_and(|e| !e.is_null()) {
        return Err(ProviderError::Malformed(
            error_message(body).unwrap_or_else(|| "error object in a 200 answer".into()),
        ));
    }
    let list = match endpoint {
        Endpoint::ChatCompletions => "choices",
        Endpoint::Embeddings => "data",
    };
    if !v.get(list).is_some_and(Value::is_array) {
        return Err(ProviderError::Malformed(format!("no `{list}` array")));
    }
    Ok(usage_from_openai(&v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validate_rejects_garbage_and_error_bodies() {
        let chat = Endpoint::ChatCompletions;
        assert!(validate(chat, &Bytes::from_static(b"<html>")).is_err());
        assert!(validate(chat, &Bytes::from_static(b"{\"id\":\"x\"}")).is_err());
        assert!(
            validate(
                chat,
                &Bytes::from_static(br#"{"error":{"message":"boom"},"choices":[]}"#)
            )
            .is_err()
        );
        let ok = validate(
            chat,
            &Bytes::from_static(
                br#"{"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":5}}"#,
            ),
        )
        .unwrap()
        .unwrap();
        assert_eq!((ok.prompt_tokens, ok.completion_tokens), (3, 5));
    }
}
