//! Anthropic's Messages API wire format as types.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

use crate::providers::Usage;

/// A Messages API request body.
#[derive(Debug, Clone, Serialize)]
pub struct MessagesRequest {
    /// The upstream model.
    pub model: Value,
    /// Output ceiling (required by Anthropic).
    pub max_tokens: u64,
    /// Alternating user and assistant turns.
    pub messages: Vec<Turn>,
    /// System prompt blocks.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub system: Vec<Value>,
    /// Sampling temperature, 0 to 1.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub temperature: Option<Value>,
    /// Nucleus sampling.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_p: Option<Value>,
    /// Top-k sampling (an Anthropic extension on the OpenAI side).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_k: Option<Value>,
    /// Stop sequences.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stop_sequences: Option<Vec<Value>>,
    /// `{"user_id": …}` from OpenAI's `user`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Value>,
    /// Tool definitions.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tools: Vec<Value>,
    /// Tool choice.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_choice: Option<Value>,
    /// Extended thinking.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub thinking: Option<Value>,
    /// Effort and structured output (an Anthropic extension on the OpenAI side).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output_config: Option<Value>,
    /// Automatic caching: a breakpoint on the last cacheable block.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache_control: Option<Value>,
    /// Server-sent events.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub stream: bool,
}

/// One turn of a Messages request.
#[derive(Debug, Clone, Serialize)]
pub struct Turn {
    /// `user` or `assistant`.
    pub role: &'static str,
    /// Content blocks.
    pub content: Vec<Value>,
}

/// Anthropic's `usage` object, in answers, `message_start` and `message_delta` (whose counts
/// are cumulative). Every count is optional and read leniently: a provider's odd value is
/// a missing count, not a failed answer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AnthropicUsage {
    /// Input tokens neither read from nor written to the prompt cache.
    #[serde(
        default,
        deserialize_with = "lenient",
        skip_serializing_if = "Option::is_none"
    )]
    pub input_tokens: Option<u64>,
    /// Input tokens written to the prompt cache (both TTLs).
    #[serde(
        default,
        deserialize_with = "lenient",
        skip_serializing_if = "Option::is_none"
    )]
    pub cache_creation_input_tokens: Option<u64>,
    /// Input tokens read from the prompt cache.
    #[serde(
        default,
        deserialize_with = "lenient",
        skip_serializing_if = "Option::is_none"
    )]
    pub cache_read_input_tokens: Option<u64>,
    /// The cache writes by TTL.
    #[serde(
        default,
        deserialize_with = "lenient",
        skip_serializing_if = "Option::is_none"
    )]
    pub cache_creation: Option<CacheCreation>,
    /// Output tokens, thinking included.
    #[serde(
        default,
        deserialize_with = "lenient",
        skip_serializing_if = "Option::is_none"
    )]
    pub output_tokens: Option<u64>,
    /// Of the output, thinking.
    #[serde(
        default,
        deserialize_with = "lenient",
        skip_serializing_if = "Option::is_none"
    )]
    pub output_tokens_details: Option<OutputTokensDetails>,
}

/// `usage.cache_creation`: cache writes by TTL.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheCreation {
    /// Written for 5 minutes.
    #[serde(default, deserialize_with = "lenient_count")]
    pub ephemeral_5m_input_tokens: u64,
    /// Written for 1 hour.
    #[serde(default, deserialize_with = "lenient_count")]
    pub ephemeral_1h_input_tokens: u64,
}

/// `usage.output_tokens_details`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputTokensDetails {
    /// Output tokens spent thinking.
    #[serde(default, deserialize_with = "lenient_count")]
    pub thinking_tokens: u64,
}

/// A value of the expected type, or `None` for anything else.
fn lenient<'de, D: Deserializer<'de>, T: DeserializeOwned>(d: D) -> Result<Option<T>, D::Error> {
    Ok(Option::<Value>::deserialize(d)?.and_then(|v| serde_json::from_value(v).ok()))
}

/// A count, or 0 for anything else.
fn lenient_count<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    Ok(lenient::<D, u64>(d)?.unwrap_or(0))
}

impl AnthropicUsage {
    /// Reads a `usage` value; `None` if it is not an object.
    pub fn read(value: &Value) -> Option<Self> {
        value
            .is_object()
            .then(|| serde_json::from_value(value.clone()).ok())
            .flatten()
    }

    /// The fields `later` has, over these: `message_delta` counts are cumulative totals that
    /// replace `message_start`'s, and a count it omits keeps its earlier value.
    pub(super) fn merge(&mut self, later: Self) {
        let Self {
            input_tokens,
            cache_creation_input_tokens,
            cache_read_input_tokens,
            cache_creation,
            output_tokens,
            output_tokens_details,
        } = later;
        self.input_tokens = input_tokens.or(self.input_tokens);
        self.cache_creation_input_tokens =
            cache_creation_input_tokens.or(self.cache_creation_input_tokens);
        self.cache_read_input_tokens = cache_read_input_tokens.or(self.cache_read_input_tokens);
        self.cache_creation = cache_creation.or(self.cache_creation);
        self.output_tokens = output_tokens.or(self.output_tokens);
        self.output_tokens_details = output_tokens_details.or(self.output_tokens_details);
    }

    /// Sluice's usage: every input token in `prompt_tokens` (Anthropic's `input_tokens`
    /// counts only the uncached ones), cache reads and writes by TTL as its parts. Writes
    /// with no TTL breakdown are 5-minute ones (the default TTL). Saturating: a broken
    /// upstream may send `u64::MAX`.
    pub fn to_usage(&self) -> Usage {
        let read = self.cache_read_input_tokens.unwrap_or(0);
        let (five_min, one_hour) = self
            .cache_creation
            .map_or((self.cache_creation_input_tokens.unwrap_or(0), 0), |c| {
                (c.ephemeral_5m_input_tokens, c.ephemeral_1h_input_tokens)
            });
        let parts = five_min.saturating_add(one_hour);
        // A total above its parts (an inconsistent answer) is billed as 5-minute writes, the
        // default TTL, so no written token goes unbilled.
        let written = self.cache_creation_input_tokens.unwrap_or(parts).max(parts);
        let output = self.output_tokens.unwrap_or(0);
        Usage {
            prompt_tokens: self
                .input_tokens
                .unwrap_or(0)
                .saturating_add(read)
                .saturating_add(written),
            completion_tokens: output,
            cached_tokens: read,
            cache_write_tokens: five_min.saturating_add(written.saturating_sub(parts)),
            cache_write_1h_tokens: one_hour,
            reasoning_tokens: self
                .output_tokens_details
                .map_or(0, |d| d.thinking_tokens.min(output)),
            ..Usage::default()
        }
    }

    /// Anthropic's usage for Sluice's, every field present: `input_tokens` is what was
    /// neither read from nor written to the cache.
    pub fn from_usage(usage: &Usage) -> Self {
        let written = usage
            .cache_write_tokens
            .saturating_add(usage.cache_write_1h_tokens);
        Self {
            input_tokens: Some(
                usage
                    .prompt_tokens
                    .saturating_sub(usage.cached_tokens)
                    .saturating_sub(written),
            ),
            cache_creation_input_tokens: Some(written),
            cache_read_input_tokens: Some(usage.cached_tokens),
            cache_creation: Some(CacheCreation {
                ephemeral_5m_input_tokens: usage.cache_write_tokens,
                ephemeral_1h_input_tokens: usage.cache_write_1h_tokens,
            }),
            output_tokens: Some(usage.completion_tokens),
            output_tokens_details: None,
        }
    }
}
