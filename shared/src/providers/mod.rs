//! Upstream providers: one trait, one closed enum built from config.
//!
//! The gateway hands a provider an OpenAI-format request body (already validated, with the
//! upstream model name and the provider's own key) and gets back an OpenAI-format answer plus
//! the usage it reported. Translation to and from other wire formats lives in each provider.

pub mod mock;
pub mod openai;
pub mod sse;

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::BoxStream;
use serde_json::{Map, Value};

use crate::config::{ProviderConfig, ProviderKind};

/// Which OpenAI endpoint a request is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// `POST /v1/chat/completions`
    ChatCompletions,
    /// `POST /v1/embeddings`
    Embeddings,
}

impl Endpoint {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ChatCompletions => "chat.completions",
            Self::Embeddings => "embeddings",
        }
    }

    /// Parses the stored name, or the API path (`/v1/chat/completions`, `/v1/embeddings`).
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim_start_matches("/v1/") {
            "chat.completions" | "chat/completions" => Some(Self::ChatCompletions),
            "embeddings" => Some(Self::Embeddings),
            _ => None,
        }
    }

    /// The path below the API's base URL.
    pub fn path(self) -> &'static str {
        match self {
            Self::ChatCompletions => "chat/completions",
            Self::Embeddings => "embeddings",
        }
    }
}

/// One call to send upstream.
#[derive(Debug)]
pub struct UpstreamRequest<'a> {
    /// What kind of call.
    pub endpoint: Endpoint,
    /// The request body in OpenAI format, `model` already set to the upstream model name.
    pub body: &'a Map<String, Value>,
    /// The provider API key to authenticate with (never the gateway key).
    pub api_key: &'a str,
    /// Whether the client asked for a server-sent-event stream.
    pub stream: bool,
    /// Deadline for the whole answer, or for the first byte of a stream.
    pub timeout: Duration,
}

/// Tokens a call used, as the provider reported (or as estimated when it did not).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Prompt (input) tokens.
    pub prompt_tokens: u64,
    /// Completion (output) tokens.
    pub completion_tokens: u64,
}

/// A streamed answer: OpenAI `chat.completion.chunk` objects as they arrive (every provider
/// translates its own events into these). The stream ends after the last chunk; a chunk with
/// empty `choices` and a `usage` object reports the tokens used.
pub type ChunkStream = BoxStream<'static, Result<Value, ProviderError>>;

/// A successful upstream answer.
pub enum UpstreamResponse {
    /// A complete JSON body in OpenAI format and the usage read from it.
    Complete {
        /// The body to return to the client.
        body: Bytes,
        /// Usage reported by the provider, if any.
        usage: Option<Usage>,
    },
    /// A stream of OpenAI-format chunks.
    Stream(ChunkStream),
}

/// Why an upstream call did not produce a usable answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ProviderError {
    /// No answer (or no first byte) before the deadline.
    #[error("upstream timed out")]
    Timeout,
    /// Connection refused, reset or otherwise broken.
    #[error("upstream connection failed: {0}")]
    Connect(String),
    /// The provider answered with an error status.
    #[error("upstream answered HTTP {status}")]
    Status {
        /// HTTP status from the provider.
        status: u16,
        /// The provider's own error message, if its body had one.
        message: Option<String>,
        /// The provider's `Retry-After`, if any.
        retry_after: Option<Duration>,
    },
    /// A 2xx answer that is not what the API promises (not JSON, missing fields, an error object).
    #[error("upstream answer is malformed: {0}")]
    Malformed(String),
}

/// What every provider can do.
pub trait ProviderApi {
    /// Sends one request and returns the OpenAI-format answer.
    fn call(
        &self,
        http: &reqwest::Client,
        request: UpstreamRequest<'_>,
    ) -> impl Future<Output = Result<UpstreamResponse, ProviderError>> + Send;
}

/// A configured provider.
#[derive(Debug, Clone)]
pub enum Provider {
    /// OpenAI or any OpenAI-compatible server.
    OpenAi(openai::OpenAi),
    /// The built-in offline provider.
    Mock(mock::Mock),
}

impl Provider {
    /// Builds a provider from its (validated) config.
    pub fn from_config(config: &ProviderConfig) -> Self {
        match config.kind {
            ProviderKind::Openai => Self::OpenAi(openai::OpenAi::new(
                config.base_url.as_deref().unwrap_or(""),
            )),
            ProviderKind::Mock => Self::Mock(mock::Mock),
        }
    }
}

impl ProviderApi for Provider {
    async fn call(
        &self,
        http: &reqwest::Client,
        request: UpstreamRequest<'_>,
    ) -> Result<UpstreamResponse, ProviderError> {
        match self {
            Self::OpenAi(p) => p.call(http, request).await,
            Self::Mock(p) => p.call(http, request).await,
        }
    }
}

/// Reads `usage` from an OpenAI-format response body.
pub fn usage_from_openai(body: &Value) -> Option<Usage> {
    let usage = body.get("usage")?;
    let prompt_tokens = usage.get("prompt_tokens")?.as_u64()?;
    let completion_tokens = usage
        .get("completion_tokens")
        .and_then(Value::as_u64)
        .unwrap_or(0);
    Some(Usage {
        prompt_tokens,
        completion_tokens,
    })
}
