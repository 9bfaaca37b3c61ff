//! Anthropic's Messages API wire format as types, after Anthropic's reference
//! (docs.anthropic.com/en/api/messages, …/messages-streaming): the request
//! ([`MessagesRequest`], its turns and content blocks), the answer ([`Message`]), the stream
//! events ([`StreamEvent`]), `usage` ([`AnthropicUsage`]) and the one mapping between
//! Anthropic's `stop_reason` and OpenAI's `finish_reason`.
//!
//! Both directions use these types: the Anthropic provider builds requests and reads answers
//! and events with them, and the `/v1/messages` ingress (`crate::api::messages`) reads
//! requests and writes answers and events with them. What Sluice does not read is kept in
//! `extra` (or, for a block type Sluice has no variant for, the whole block as
//! [`Block::Other`]) and passed through untouched. Answers and events are read leniently: a
//! field of an unexpected type reads as absent, as the hand-written reader did.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

use crate::providers::Usage;

// ---- Requests -------------------------------------------------------------------------------

/// A Messages API request body (`POST /v1/messages`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct MessagesRequest {
    /// The model.
    #[serde(
        default,
        deserialize_with = "lenient",
        skip_serializing_if = "Option::is_none"
    )]
    pub model: Option<String>,
    /// Output ceiling (required by Anthropic).
    #[serde(
        default,
        deserialize_with = "lenient",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_tokens: Option<u64>,
    /// Alternating user and assistant turns (one that is not an object reads as a turn
    /// with neither role nor content).
    #[serde(default, deserialize_with = "lenient_items")]
    pub messages: Option<Vec<Turn>>,
    /// The system prompt: a string, or text blocks.
    #[serde(
        default,
        deserialize_with = "lenient",
        skip_serializing_if = "Option::is_none"
    )]
    pub system: Option<Content>,
    /// Sampling temperature, 0 to 1, as the client wrote it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<Value>,
    /// Nucleus sampling.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<Value>,
    /// Top-k sampling.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_k: Option<Value>,
    /// Stop sequences.
    #[serde(
        default,
        deserialize_with = "lenient",
        skip_serializing_if = "Option::is_none"
    )]
    pub stop_sequences: Option<Vec<Value>>,
    /// `{"user_id": …}`.
    #[serde(
        default,
        deserialize_with = "lenient",
        skip_serializing_if = "Option::is_none"
    )]
    pub metadata: Option<Metadata>,
    /// Tool definitions (one that is not an object reads as a tool with no fields).
    #[serde(
        default,
        deserialize_with = "lenient_items_or_none",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub tools: Vec<Tool>,
    /// How tools may be used.
    #[serde(
        default,
        deserialize_with = "lenient",
        skip_serializing_if = "Option::is_none"
    )]
    pub tool_choice: Option<ToolChoice>,
    /// Extended thinking, passed as written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thinking: Option<Value>,
    /// Effort and structured output, passed as written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_config: Option<Value>,
    /// Automatic caching: a breakpoint on the last cacheable block.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_control: Option<Value>,
    /// Server-sent events.
    #[serde(
        default,
        deserialize_with = "lenient",
        skip_serializing_if = "is_false"
    )]
    pub stream: Option<bool>,
    /// Anything else, untouched.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

fn is_false(stream: &Option<bool>) -> bool {
    *stream != Some(true)
}

/// One turn of a Messages request.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Turn {
    /// `user` or `assistant`.
    #[serde(default, deserialize_with = "lenient")]
    pub role: Option<String>,
    /// A string, or content blocks.
    #[serde(default, deserialize_with = "lenient")]
    pub content: Option<Content>,
}

/// A turn's (or the system prompt's) content: a string, or blocks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Content {
    /// Plain text.
    Text(String),
    /// Content blocks.
    Blocks(Vec<Block>),
}

/// `metadata`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Metadata {
    /// An opaque id of the end user.
    #[serde(
        default,
        deserialize_with = "lenient",
        skip_serializing_if = "Option::is_none"
    )]
    pub user_id: Option<String>,
    /// Anything else, untouched.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// A tool definition. Client tools have no `type` (or `custom`); server tools (web search,
/// code execution, …) name theirs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Tool {
    /// `custom`, a server tool's type, or none.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<Value>,
    /// The tool's name.
    #[serde(default)]
    pub name: Value,
    /// What it does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<Value>,
    /// Its input as JSON Schema.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_schema: Option<Value>,
    /// A cache breakpoint on the tool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_control: Option<Value>,
    /// Anything else, untouched.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `tool_choice`: `auto`, `any`, `tool` (with its name) or `none`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ToolChoice {
    /// `auto`, `any`, `tool` or `none`.
    #[serde(rename = "type", default, deserialize_with = "lenient")]
    pub kind: Option<String>,
    /// The tool, for `tool`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<Value>,
    /// At most one tool call per answer.
    #[serde(
        default,
        deserialize_with = "lenient",
        skip_serializing_if = "Option::is_none"
    )]
    pub disable_parallel_tool_use: Option<bool>,
    /// Anything else, untouched.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl ToolChoice {
    /// A choice of this type.
    pub fn of(kind: &str) -> Self {
        Self {
            kind: Some(kind.to_owned()),
            ..Self::default()
        }
    }
}

// ---- Content blocks -------------------------------------------------------------------------

/// A content block: one Sluice reads, or any other, kept whole.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Block {
    /// A block of a type Sluice reads, its fields of the documented types.
    Known(ContentBlock),
    /// Anything else (`search_result`, server tool blocks, blocks added later, or a known
    /// type with a field of the wrong type), as it came.
    Other(Value),
}

impl Block {
    /// The block's `type`.
    pub fn kind(&self) -> Option<&str> {
        match self {
            Self::Known(block) => Some(block.kind()),
            Self::Other(value) => value.get("type").and_then(Value::as_str),
        }
    }

    /// The block as JSON, as it will be sent.
    pub fn to_value(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }

    /// Sets the block's `cache_control` unless it has one.
    pub fn mark_cache(&mut self, cc: &Value) {
        let slot = match self {
            Self::Known(
                ContentBlock::Text { cache_control, .. }
                | ContentBlock::Image { cache_control, .. }
                | ContentBlock::Document { cache_control, .. }
                | ContentBlock::ToolUse { cache_control, .. }
                | ContentBlock::ToolResult { cache_control, .. },
            ) => cache_control,
            Self::Known(
                ContentBlock::Thinking { extra, .. } | ContentBlock::RedactedThinking { extra, .. },
            ) => {
                extra.entry("cache_control").or_insert_with(|| cc.clone());
                return;
            }
            Self::Other(Value::Object(block)) => {
                block.entry("cache_control").or_insert_with(|| cc.clone());
                return;
            }
            Self::Other(_) => return,
        };
        slot.get_or_insert_with(|| cc.clone());
    }
}

impl From<ContentBlock> for Block {
    fn from(block: ContentBlock) -> Self {
        Self::Known(block)
    }
}

/// The content blocks Sluice reads and writes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ContentBlock {
    /// Text.
    Text {
        /// The text.
        #[serde(default)]
        text: String,
        /// A cache breakpoint.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cache_control: Option<Value>,
        /// Anything else (`citations`), untouched.
        #[serde(flatten)]
        extra: Map<String, Value>,
    },
    /// An image.
    Image {
        /// Where its bytes are.
        source: Source,
        /// A cache breakpoint.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cache_control: Option<Value>,
        /// Anything else, untouched.
        #[serde(flatten)]
        extra: Map<String, Value>,
    },
    /// A document (PDF or plain text).
    Document {
        /// Where its content is.
        source: Source,
        /// Its title.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        title: Option<Value>,
        /// What it is about.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        context: Option<Value>,
        /// Citation settings.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        citations: Option<Value>,
        /// A cache breakpoint.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cache_control: Option<Value>,
        /// Anything else, untouched.
        #[serde(flatten)]
        extra: Map<String, Value>,
    },
    /// A call the model makes.
    ToolUse {
        /// The call's id.
        #[serde(default)]
        id: Value,
        /// The tool.
        #[serde(default)]
        name: Value,
        /// Its input, an object.
        #[serde(default)]
        input: Option<Value>,
        /// A cache breakpoint.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cache_control: Option<Value>,
        /// Anything else, untouched.
        #[serde(flatten)]
        extra: Map<String, Value>,
    },
    /// A call's result, in a user turn.
    ToolResult {
        /// The call it answers.
        #[serde(default)]
        tool_use_id: Value,
        /// Text, or blocks.
        #[serde(
            default,
            deserialize_with = "lenient",
            skip_serializing_if = "Option::is_none"
        )]
        content: Option<Content>,
        /// Whether the call failed.
        #[serde(
            default,
            deserialize_with = "lenient",
            skip_serializing_if = "Option::is_none"
        )]
        is_error: Option<bool>,
        /// A cache breakpoint.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cache_control: Option<Value>,
        /// Anything else, untouched.
        #[serde(flatten)]
        extra: Map<String, Value>,
    },
    /// The model's reasoning, signed (sent back unmodified).
    Thinking {
        /// The reasoning.
        #[serde(default)]
        thinking: String,
        /// Its signature.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        signature: Option<String>,
        /// Anything else, untouched.
        #[serde(flatten)]
        extra: Map<String, Value>,
    },
    /// Reasoning the safety systems encrypted.
    RedactedThinking {
        /// The encrypted reasoning.
        #[serde(default)]
        data: Value,
        /// Anything else, untouched.
        #[serde(flatten)]
        extra: Map<String, Value>,
    },
}

impl ContentBlock {
    /// The block's `type`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Text { .. } => "text",
            Self::Image { .. } => "image",
            Self::Document { .. } => "document",
            Self::ToolUse { .. } => "tool_use",
            Self::ToolResult { .. } => "tool_result",
            Self::Thinking { .. } => "thinking",
            Self::RedactedThinking { .. } => "redacted_thinking",
        }
    }

    /// A text block.
    pub fn text(text: impl Into<String>) -> Self {
        Self::Text {
            text: text.into(),
            cache_control: None,
            extra: Map::new(),
        }
    }
}

/// An image's or document's `source`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Source {
    /// Base64 bytes of a media type.
    Base64 {
        /// E.g. `image/png`, `application/pdf`.
        media_type: String,
        /// The bytes, base64.
        data: String,
    },
    /// Plain text (documents).
    Text {
        /// `text/plain`.
        media_type: String,
        /// The text.
        data: String,
    },
    /// A URL Anthropic fetches.
    Url {
        /// The URL.
        url: String,
    },
}

// ---- Answers and stream events --------------------------------------------------------------

/// A Messages API answer (`"type": "message"`), also the `message` of `message_start`.
/// Read leniently: every field is optional and a field of another type reads as absent.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Message {
    /// `msg_…`.
    #[serde(default, deserialize_with = "lenient")]
    pub id: Option<String>,
    /// `message`.
    #[serde(rename = "type", default, deserialize_with = "lenient")]
    pub kind: Option<String>,
    /// `assistant`.
    #[serde(default, deserialize_with = "lenient")]
    pub role: Option<String>,
    /// The model that answered.
    #[serde(default, deserialize_with = "lenient")]
    pub model: Option<String>,
    /// The answer's blocks.
    #[serde(default, deserialize_with = "lenient")]
    pub content: Option<Vec<Block>>,
    /// Why it stopped (null in `message_start`).
    #[serde(default, deserialize_with = "lenient")]
    pub stop_reason: Option<String>,
    /// The stop sequence that ended it.
    #[serde(default, deserialize_with = "lenient")]
    pub stop_sequence: Option<String>,
    /// Tokens used.
    #[serde(default, deserialize_with = "lenient_usage")]
    pub usage: Option<AnthropicUsage>,
}

/// One event of a Messages stream, by its `type` (the SSE event name when the data has
/// none). Read leniently, as [`Message`] is.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum StreamEvent {
    /// The answer begins: its id, model and the prompt's usage.
    MessageStart {
        /// The message so far (no content).
        #[serde(default, deserialize_with = "lenient_or_default")]
        message: Message,
    },
    /// A content block begins.
    ContentBlockStart {
        /// Its index in the answer.
        #[serde(default, deserialize_with = "lenient_or_default")]
        index: u64,
        /// The block, empty but for a tool's id and name or a redacted block's data.
        #[serde(default, deserialize_with = "lenient")]
        content_block: Option<Block>,
    },
    /// A piece of a content block.
    ContentBlockDelta {
        /// The block's index.
        #[serde(default, deserialize_with = "lenient_or_default")]
        index: u64,
        /// The piece.
        #[serde(default, deserialize_with = "lenient_or_default")]
        delta: Delta,
    },
    /// A content block ends.
    ContentBlockStop {
        /// The block's index.
        #[serde(default, deserialize_with = "lenient_or_default")]
        index: u64,
    },
    /// The answer's stop reason and cumulative usage.
    MessageDelta {
        /// The stop reason and sequence.
        #[serde(default, deserialize_with = "lenient_or_default")]
        delta: MessageDeltaBody,
        /// Cumulative counts.
        #[serde(default, deserialize_with = "lenient_usage")]
        usage: Option<AnthropicUsage>,
    },
    /// The answer ends.
    MessageStop,
    /// A keep-alive.
    Ping,
    /// An error mid-stream.
    Error {
        /// What went wrong.
        #[serde(default)]
        error: Value,
    },
    /// An event type added later.
    #[serde(other)]
    Unknown,
}

/// A `content_block_delta`'s `delta`, by its `type`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Delta {
    /// Text.
    TextDelta {
        /// The text.
        #[serde(default, deserialize_with = "lenient_or_default")]
        text: String,
    },
    /// A piece of a tool call's input JSON.
    InputJsonDelta {
        /// The piece.
        #[serde(default, deserialize_with = "lenient_or_default")]
        partial_json: String,
    },
    /// Reasoning text.
    ThinkingDelta {
        /// The text.
        #[serde(default, deserialize_with = "lenient_or_default")]
        thinking: String,
    },
    /// A thinking block's signature.
    SignatureDelta {
        /// The signature.
        #[serde(default, deserialize_with = "lenient_or_default")]
        signature: String,
    },
    /// A delta type added later.
    #[default]
    #[serde(other)]
    Unknown,
}

/// `message_delta`'s `delta`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MessageDeltaBody {
    /// Why the answer stopped.
    #[serde(default, deserialize_with = "lenient")]
    pub stop_reason: Option<String>,
    /// The stop sequence that ended it.
    #[serde(default, deserialize_with = "lenient")]
    pub stop_sequence: Option<String>,
}

// ---- Errors -------------------------------------------------------------------------------

/// The body of an error answer on `/v1/messages`: Anthropic's error shape.
#[derive(Debug, Serialize, ToSchema)]
pub struct AnthropicError<'a> {
    /// Always `error`.
    #[serde(rename = "type")]
    #[schema(pattern = "^error$")]
    pub kind: &'a str,
    /// What went wrong.
    #[schema(inline)]
    pub error: AnthropicErrorBody<'a>,
}

/// Anthropic's error object.
#[derive(Debug, Serialize, ToSchema)]
pub struct AnthropicErrorBody<'a> {
    /// Anthropic's class of error, from the status: `invalid_request_error`,
    /// `authentication_error`, `permission_error`, `not_found_error`, `request_too_large`,
    /// `rate_limit_error`, `timeout_error`, `api_error`, ...
    #[serde(rename = "type")]
    pub kind: &'a str,
    /// A sentence for humans.
    pub message: &'a str,
}

// ---- Stop reasons ---------------------------------------------------------------------------

/// Anthropic's `stop_reason` as OpenAI's `finish_reason`.
pub fn finish_reason(stop_reason: &str) -> &'static str {
    match stop_reason {
        "max_tokens" | "model_context_window_exceeded" => "length",
        "tool_use" => "tool_calls",
        "refusal" => "content_filter",
        _ => "stop",
    }
}

/// OpenAI's `finish_reason` as Anthropic's `stop_reason` (the inverse of [`finish_reason`]);
/// `stop_sequence` says whether a stop sequence ended the answer (kept on the OpenAI choice
/// by the Anthropic provider).
pub fn stop_reason(finish_reason: &str, stop_sequence: bool) -> &'static str {
    match finish_reason {
        "stop" if stop_sequence => "stop_sequence",
        "length" => "max_tokens",
        "tool_calls" | "function_call" => "tool_use",
        "content_filter" => "refusal",
        _ => "end_turn",
    }
}

// ---- Usage ----------------------------------------------------------------------------------

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

/// An array's items, each of the expected type or its default; `None` for anything but an
/// array.
fn lenient_items<'de, D: Deserializer<'de>, T: DeserializeOwned + Default>(
    d: D,
) -> Result<Option<Vec<T>>, D::Error> {
    Ok(match Option::<Value>::deserialize(d)? {
        Some(Value::Array(items)) => Some(
            items
                .into_iter()
                .map(|item| serde_json::from_value(item).unwrap_or_default())
                .collect(),
        ),
        _ => None,
    })
}

/// [`lenient_items`], none for anything but an array.
fn lenient_items_or_none<'de, D: Deserializer<'de>, T: DeserializeOwned + Default>(
    d: D,
) -> Result<Vec<T>, D::Error> {
    Ok(lenient_items(d)?.unwrap_or_default())
}

/// A value of the expected type, or its default for anything else.
fn lenient_or_default<'de, D: Deserializer<'de>, T: DeserializeOwned + Default>(
    d: D,
) -> Result<T, D::Error> {
    Ok(lenient::<D, T>(d)?.unwrap_or_default())
}

/// A `usage` object, or `None` for anything else (see [`AnthropicUsage::read`]).
fn lenient_usage<'de, D: Deserializer<'de>>(d: D) -> Result<Option<AnthropicUsage>, D::Error> {
    Ok(Option::<Value>::deserialize(d)?.and_then(|v| AnthropicUsage::read(&v)))
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

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// Blocks of every kind come back out as they went in: the fields Sluice reads, and in
    /// `extra` (or whole, for a type it has no variant for) the ones it does not.
    #[test]
    fn blocks_round_trip_with_unknown_fields_untouched() {
        let blocks = json!([
            {"type": "text", "text": "Hi", "citations": [{"type": "char_location"}], "cache_control": {"type": "ephemeral"}},
            {"type": "image", "source": {"type": "url", "url": "https://x/y.png"}},
            {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "notes"}, "title": "N", "future": 1},
            {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {"a": 1}},
            {"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "42"}], "is_error": true},
            {"type": "thinking", "thinking": "Hmm.", "signature": "EqQB"},
            {"type": "redacted_thinking", "data": "EmwK"},
            {"type": "search_result", "source": "https://x", "title": "X", "content": [{"type": "text", "text": "x"}]},
            {"type": "image", "source": {"type": "file", "file_id": "file_1"}}
        ]);
        let read: Vec<Block> = serde_json::from_value(blocks.clone()).unwrap();
        let kinds: Vec<bool> = read.iter().map(|b| matches!(b, Block::Known(_))).collect();
        assert_eq!(
            kinds,
            [true, true, true, true, true, true, true, false, false]
        );
        assert_eq!(serde_json::to_value(&read).unwrap(), blocks);
    }

    #[test]
    fn a_request_keeps_fields_sluice_does_not_read() {
        let request = json!({"model": "claude", "max_tokens": 10, "messages": [{"role": "user", "content": "x"}],
            "service_tier": "auto", "metadata": {"user_id": "u", "tag": 1}});
        let read: MessagesRequest = serde_json::from_value(request.clone()).unwrap();
        assert_eq!(read.extra["service_tier"], "auto");
        assert_eq!(serde_json::to_value(&read).unwrap(), request);
    }

    /// Events are read leniently, as the hand-written reader did: an odd field reads as
    /// absent, an event type added later as `Unknown`.
    #[test]
    fn events_are_read_leniently() {
        let read = |v: Value| serde_json::from_value::<StreamEvent>(v).unwrap();
        assert!(matches!(
            read(json!({"type": "content_block_delta", "index": "x", "delta": {"type": "text_delta", "text": 5}})),
            StreamEvent::ContentBlockDelta { index: 0, delta: Delta::TextDelta { text } } if text.is_empty()
        ));
        assert!(matches!(
            read(
                json!({"type": "content_block_delta", "index": 2, "delta": {"type": "citations_delta"}})
            ),
            StreamEvent::ContentBlockDelta {
                index: 2,
                delta: Delta::Unknown
            }
        ));
        assert!(matches!(
            read(json!({"type": "brand_new_event", "x": 1})),
            StreamEvent::Unknown
        ));
        let StreamEvent::MessageStart { message } = read(
            json!({"type": "message_start", "message": {"id": 7, "model": "claude", "usage": [1]}}),
        ) else {
            panic!("not a message_start");
        };
        assert_eq!(
            (message.id, message.model.as_deref(), message.usage),
            (None, Some("claude"), None)
        );
    }

    /// The one mapping, both ways: every Anthropic stop reason comes back as itself.
    #[test]
    fn stop_reasons_map_both_ways() {
        for reason in [
            "end_turn",
            "max_tokens",
            "tool_use",
            "refusal",
            "stop_sequence",
        ] {
            let finish = finish_reason(reason);
            assert_eq!(stop_reason(finish, reason == "stop_sequence"), reason);
        }
        assert_eq!(finish_reason("model_context_window_exceeded"), "length");
        assert_eq!(finish_reason("pause_turn"), "stop");
    }
}
