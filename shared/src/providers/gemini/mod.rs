//! Google Gemini's `generateContent` API, translated to and from OpenAI's format.
//!
//! - Chat: `POST {base}/models/{model}:generateContent`, streamed as
//!   `:streamGenerateContent?alt=sse` (every event is a whole `GenerateContentResponse`).
//! - Embeddings: `POST {base}/models/{model}:batchEmbedContents`, one request per input.
//! - The key goes in the `x-goog-api-key` header, never in the URL (URLs end up in logs).
//!
//! OpenAI messages become Gemini `contents` (`assistant` is `model`; tool results are
//! `functionResponse` parts of a `user` turn; consecutive turns of one role are merged), and
//! system messages become `systemInstruction`. Answers become `chat.completion` objects, or
//! `chat.completion.chunk` objects followed by one usage chunk when streamed.
//!
//! Gemini sends no rate-limit headers; the wait of a 429 is read from its body's `RetryInfo`
//! by the shared HTTP helpers.
//!
//! Layout: this file is the client (URLs, authentication, the three calls); `request`
//! translates OpenAI requests, `response` and `stream` translate answers and stream events,
//! `embeddings` the embedding calls.

mod call_id;
mod embeddings;
#[cfg(test)]
mod fuzz;
mod request;
mod response;
mod stream;
mod wire;

use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use serde_json::{Map, Value};

use super::HttpClient;
use super::client::RequestBuilder;
use super::http;
use super::{
    Endpoint, Headroom, ProviderApi, ProviderError, UpstreamRequest, UpstreamResponse,
    headroom_from,
};
pub(crate) use call_id::without_signatures;

use embeddings::{batch_embed_request, embedding_inputs, embedding_list, embedding_vectors};
use request::generate_request;
use response::completion;
use stream::{ChunkTranslator, chunk_stream};

/// The Gemini API at a base URL such as `https://generativelanguage.googleapis.com/v1beta`.
#[derive(Debug, Clone)]
pub struct Gemini {
    base_url: String,
}

/// The header Gemini reads the key from (never the URL's `?key=`, which logs and proxies see).
const API_KEY: hyper::header::HeaderName = hyper::header::HeaderName::from_static("x-goog-api-key");

impl Gemini {
    /// A provider at `base_url` (with or without a trailing slash).
    pub fn new(base_url: &str) -> Self {
        Self {
            base_url: base_url.trim_end_matches('/').to_owned(),
        }
    }

    /// `{base}/models/{model}:{method}`; `method` may carry a query (`…?alt=sse`).
    fn url(&self, model: &str, method: &str) -> String {
        format!("{}/models/{model}:{method}", self.base_url)
    }

    /// A POST of `body` to one of the model's methods, authenticated by header.
    fn post<'a>(
        &self,
        client: &'a HttpClient,
        request: &UpstreamRequest<'_>,
        method: &str,
        body: &impl serde::Serialize,
    ) -> Result<RequestBuilder<'a>, ProviderError> {
        let model = upstream_model(request.body)?;
        Ok(client
            .post(self.url(model, method))
            .header(API_KEY, request.api_key)
            .json(body))
    }

    async fn generate(
        &self,
        client: &HttpClient,
        request: UpstreamRequest<'_>,
    ) -> Result<UpstreamResponse, ProviderError> {
        let body = generate_request(request.body)?;
        let post = self.post(client, &request, "generateContent", &body)?;
        let (answer, headers) = http::send_for_body(post, request.timeout).await?;
        let answer: Value = serde_json::from_slice(&answer)
            .map_err(|_| ProviderError::Malformed("body is not JSON".into()))?;
        let created_s = request.now_ms / 1000;
        let (completion, usage) = completion(&answer, request_model(request.body), created_s)?;
        Ok(UpstreamResponse::Complete {
            body: Bytes::from(completion.to_string()),
            usage,
            headroom: headroom_from(&headers, request.now_ms),
        })
    }

    async fn stream(
        &self,
        client: &HttpClient,
        request: UpstreamRequest<'_>,
    ) -> Result<UpstreamResponse, ProviderError> {
        let body = generate_request(request.body)?;
        let post = self.post(client, &request, "streamGenerateContent?alt=sse", &body)?;
        let (events, headers) = http::send_for_events(post, request.timeout).await?;
        let translator = ChunkTranslator::new(request_model(request.body), request.now_ms / 1000);
        Ok(UpstreamResponse::Stream {
            chunks: chunk_stream(events, translator),
            headroom: headroom_from(&headers, request.now_ms),
        })
    }

    /// Embeddings in batches of at most [`embeddings::BATCH`], a few in flight at once,
    /// joined in order.
    async fn embed(
        &self,
        client: &HttpClient,
        request: UpstreamRequest<'_>,
    ) -> Result<UpstreamResponse, ProviderError> {
        let inputs = embedding_inputs(request.body)?;
        let model = upstream_model(request.body)?;
        let dimensions = request.body.get("dimensions").and_then(Value::as_u64);
        let mut calls = Vec::new();
        for batch in inputs.chunks(embeddings::BATCH) {
            let body = batch_embed_request(model, batch, dimensions);
            let post = self.post(client, &request, "batchEmbedContents", &body)?;
            calls.push(embed_batch(
                post,
                request.timeout,
                batch.len(),
                request.now_ms,
            ));
        }
        let answers: Vec<_> = futures_util::stream::iter(calls)
            .buffered(embeddings::CONCURRENT_BATCHES)
            .try_collect()
            .await?;
        let headroom = answers.first().map(|(_, h)| *h).unwrap_or_default();
        let vectors = answers.into_iter().flat_map(|(v, _)| v).collect();
        let base64 = request.body.get("encoding_format").and_then(Value::as_str) == Some("base64");
        let (list, usage) = embedding_list(request_model(request.body), &inputs, vectors, base64);
        Ok(UpstreamResponse::Complete {
            body: Bytes::from(list.to_string()),
            usage: Some(usage),
            headroom,
        })
    }
}

/// One `batchEmbedContents` call: its vectors and the room the answer reported.
async fn embed_batch(
    post: RequestBuilder<'_>,
    timeout: std::time::Duration,
    inputs: usize,
    now_ms: u64,
) -> Result<(Vec<Vec<f64>>, Headroom), ProviderError> {
    let (answer, headers) = http::send_for_body(post, timeout).await?;
    Ok((
        embedding_vectors(&answer, inputs)?,
        headroom_from(&headers, now_ms),
    ))
}

impl ProviderApi for Gemini {
    async fn call(
        &self,
        client: &HttpClient,
        request: UpstreamRequest<'_>,
    ) -> Result<UpstreamResponse, ProviderError> {
        match request.endpoint {
            Endpoint::Embeddings => self.embed(client, request).await,
            Endpoint::ChatCompletions if request.stream => self.stream(client, request).await,
            Endpoint::ChatCompletions => self.generate(client, request).await,
        }
    }
}

/// A request Gemini would refuse anyway, refused before it is sent: the client gets a 400
/// with the reason, and no other deployment is tried.
pub(super) fn bad_request(message: impl Into<String>) -> ProviderError {
    ProviderError::Status {
        status: 400,
        message: Some(message.into()),
        retry_after: None,
    }
}

/// The request's `model` as it was sent (the upstream name), for answers.
pub(super) fn request_model(body: &Map<String, Value>) -> &str {
    body.get("model").and_then(Value::as_str).unwrap_or("")
}

/// The model for the URL: the upstream name without a leading `models/`.
pub(super) fn upstream_model(body: &Map<String, Value>) -> Result<&str, ProviderError> {
    let model = request_model(body);
    let model = model.strip_prefix("models/").unwrap_or(model);
    if model.is_empty() {
        return Err(bad_request("no model to send to Gemini"));
    }
    Ok(model)
}

/// `chatcmpl-` and Gemini's `responseId`, or a random id when it sent none.
pub(super) fn completion_id(response_id: Option<&str>) -> String {
    match response_id {
        Some(id) if !id.is_empty() => format!("chatcmpl-{id}"),
        _ => format!("chatcmpl-{}", hex::encode(rand::random::<[u8; 12]>())),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::json;

    use super::*;

    /// A JSON object literal as the map a request body is.
    pub(super) fn object(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            other => panic!("not an object: {other}"),
        }
    }

    /// The message of a 400, or a panic.
    pub(super) fn status_400(e: ProviderError) -> String {
        match e {
            ProviderError::Status {
                status: 400,
                message: Some(m),
                retry_after: None,
            } => m,
            other => panic!("expected a 400, got {other:?}"),
        }
    }

    #[test]
    fn the_key_goes_in_a_header_and_never_in_the_url() {
        let gemini = Gemini::new("https://generativelanguage.googleapis.com/v1beta/");
        let body = object(json!({"model": "models/gemini-2.0-flash", "messages": []}));
        let request = UpstreamRequest {
            endpoint: Endpoint::ChatCompletions,
            body: &body,
            api_key: "AIza-secret",
            stream: true,
            timeout: Duration::from_secs(1),
            now_ms: 0,
        };
        let built = gemini
            .post(
                &HttpClient::new().unwrap(),
                &request,
                "streamGenerateContent?alt=sse",
                &json!({}),
            )
            .unwrap()
            .into_request()
            .unwrap();
        assert_eq!(
            built.uri().to_string(),
            "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.0-flash:streamGenerateContent?alt=sse"
        );
        assert_eq!(built.headers()["x-goog-api-key"], "AIza-secret");
        assert!(built.headers().get("authorization").is_none());
    }
}
