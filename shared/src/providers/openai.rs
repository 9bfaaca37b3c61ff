//! OpenAI and every OpenAI-compatible server (Azure OpenAI, vLLM, Ollama, …).
//!
//! The body is forwarded as the client sent it (every field preserved, only `model` replaced);
//! the answer is checked for shape but returned byte for byte.

use bytes::Bytes;
use futures_util::StreamExt;
use serde_json::Value;

use super::http::{self, error_message, stream_error};
use super::{
    Endpoint, ProviderApi, ProviderError, UpstreamRequest, UpstreamResponse, usage_from_openai,
};

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
        client: &reqwest::Client,
        request: UpstreamRequest<'_>,
    ) -> Result<UpstreamResponse, ProviderError> {
        let post = client
            .post(self.url(request.endpoint))
            .bearer_auth(request.api_key);
        if request.stream {
            // Ask for the usage chunk so the stream can be metered; the gateway hides it from
            // clients that did not ask for it themselves.
            let mut body = request.body.clone();
            body.insert(
                "stream_options".into(),
                serde_json::json!({"include_usage": true}),
            );
            let (events, headroom) =
                http::send_for_events(post.json(&body), request.timeout).await?;
            let chunks = events.map(|e| {
                let e = e?;
                match stream_error(&e.data) {
                    Some(error) => Err(error),
                    None => Ok(e.data),
                }
            });
            return Ok(UpstreamResponse::Stream {
                chunks: http::boxed(chunks),
                headroom,
            });
        }
        let (body, headroom) =
            http::send_for_body(post.json(request.body), request.timeout).await?;
        let usage = validate(request.endpoint, &body)?;
        Ok(UpstreamResponse::Complete {
            body,
            usage,
            headroom,
        })
    }
}

/// Checks that a 200 body is the JSON the endpoint promises, and reads its usage.
fn validate(endpoint: Endpoint, body: &Bytes) -> Result<Option<super::Usage>, ProviderError> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|_| ProviderError::Malformed("body is not JSON".into()))?;
    if v.get("error").is_some_and(|e| !e.is_null()) {
        return Err(ProviderError::Malformed(
            error_message(&v).unwrap_or_else(|| "error object in a 200 answer".into()),
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
