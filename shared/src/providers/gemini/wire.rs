//! Gemini's wire format as types, after Google's reference (ai.google.dev/api/generate-content,
//! ai.google.dev/api/caching, ai.google.dev/api/embeddings): what requests and answers share
//! (`Content`, `Part`), the answer (`GenerateContentResponse`, its candidates and
//! `usageMetadata`; a stream event is one too), the request (`GenerateContentRequest` and its
//! generation, tool and tool-choice settings) and the embedding calls
//! (`BatchEmbedContentsRequest` and its answer). The translations live beside this file:
//! `request`, `response`, `stream` and `embeddings`.
//!
//! Every field is optional on the way in, as the reference marks them, so a field Gemini
//! leaves out is never an error; a field of the wrong type is (the answer is malformed).
//! What Sluice does not read is kept in `extra` and passed through untouched.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// `Content`: a turn's role (`user` or `model`; none in `systemInstruction`) and its parts.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(super) struct Content {
    /// `user` or `model`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// The parts, in order.
    #[serde(default)]
    pub parts: Vec<Part>,
}

/// `Part`: one piece of a turn. The reference makes the data fields a oneof; `thought` and
/// `thoughtSignature` may come with any of them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Part {
    /// Text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// Bytes sent inline (images, audio, PDFs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inline_data: Option<Blob>,
    /// Data by URI.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_data: Option<FileData>,
    /// A call the model asks for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub function_call: Option<FunctionCall>,
    /// A call's result.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub function_response: Option<FunctionResponse>,
    /// Whether the part is a thought summary, not answer text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thought: Option<bool>,
    /// Opaque (base64) state of the model's reasoning, to be sent back with the part it came
    /// with (ai.google.dev/gemini-api/docs/thought-signatures).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thought_signature: Option<String>,
    /// Anything else, untouched.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl Part {
    /// A text part.
    pub fn text(text: impl Into<String>) -> Self {
        Self {
            text: Some(text.into()),
            ..Self::default()
        }
    }
}

/// `Blob`: inline bytes, base64.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Blob {
    /// The IANA media type, e.g. `image/png`, `audio/wav`, `application/pdf`.
    pub mime_type: String,
    /// Base64 bytes.
    pub data: String,
}

/// `FileData`: data by URI.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct FileData {
    /// The media type, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mime_type: Option<String>,
    /// Where the data is.
    pub file_uri: String,
}

/// `FunctionCall`: the function's name and its arguments as an object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(super) struct FunctionCall {
    /// An id Gemini may give the call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The function.
    #[serde(default)]
    pub name: String,
    /// The arguments (a JSON object).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args: Option<Value>,
}

/// `FunctionResponse`: a function's result, an object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(super) struct FunctionResponse {
    /// The function that was called.
    pub name: String,
    /// Its result.
    pub response: Value,
}
/// `GenerateContentResponse`: one answer, or one event of a stream.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct GenerateContentResponse {
    /// The candidates (none when the prompt was blocked).
    #[serde(default)]
    pub candidates: Option<Vec<Candidate>>,
    /// Why the prompt was blocked, if it was.
    #[serde(default)]
    pub prompt_feedback: Option<PromptFeedback>,
    /// Tokens used (so far, in a stream).
    #[serde(default)]
    pub usage_metadata: Option<UsageMetadata>,
    /// The model that answered.
    #[serde(default)]
    pub model_version: Option<String>,
    /// The answer's id.
    #[serde(default)]
    pub response_id: Option<String>,
}

/// `Candidate`: one generated answer.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Candidate {
    /// What it says (none when blocked).
    #[serde(default)]
    pub content: Option<Content>,
    /// Why it stopped.
    #[serde(default)]
    pub finish_reason: Option<String>,
    /// Its position among the candidates.
    #[serde(default)]
    pub index: Option<u64>,
}

impl Candidate {
    /// The candidate's parts (none when it has no content).
    pub fn parts(&self) -> &[Part] {
        self.content.as_ref().map_or(&[], |c| c.parts.as_slice())
    }
}

/// `PromptFeedback`: why the prompt was refused.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct PromptFeedback {
    /// The reason, e.g. `SAFETY`.
    #[serde(default)]
    pub block_reason: Option<String>,
}

/// `UsageMetadata` (ai.google.dev/api/generate-content#UsageMetadata). `promptTokenCount`
/// includes the cached content; `totalTokenCount` is prompt + candidates + tool-use prompt +
/// thoughts, so `candidatesTokenCount` leaves the thoughts out.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct UsageMetadata {
    /// The prompt, cached content included.
    #[serde(default)]
    pub prompt_token_count: Option<u64>,
    /// Of the prompt, read from the cache.
    #[serde(default)]
    pub cached_content_token_count: Option<u64>,
    /// The answer's candidates, thoughts excluded.
    #[serde(default)]
    pub candidates_token_count: Option<u64>,
    /// Results of built-in tools fed back to the model: input, outside `promptTokenCount`.
    #[serde(default)]
    pub tool_use_prompt_token_count: Option<u64>,
    /// Thinking, billed as output.
    #[serde(default)]
    pub thoughts_token_count: Option<u64>,
    /// The whole request.
    #[serde(default)]
    pub total_token_count: Option<u64>,
    /// The prompt by modality.
    #[serde(default)]
    pub prompt_tokens_details: Option<Vec<ModalityTokenCount>>,
    /// The cached content by modality.
    #[serde(default)]
    pub cache_tokens_details: Option<Vec<ModalityTokenCount>>,
}

/// `ModalityTokenCount`: tokens of one modality (`TEXT`, `IMAGE`, `AUDIO`, `VIDEO`,
/// `DOCUMENT`).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct ModalityTokenCount {
    /// The modality.
    #[serde(default)]
    pub modality: Option<String>,
    /// Its tokens.
    #[serde(default)]
    pub token_count: Option<u64>,
}

// ---- Requests -------------------------------------------------------------------------------

/// `GenerateContentRequest` (ai.google.dev/api/generate-content).
#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct GenerateContentRequest {
    /// The conversation.
    pub contents: Vec<Content>,
    /// System and developer messages.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub system_instruction: Option<Content>,
    /// Function declarations.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tools: Vec<Tool>,
    /// How functions may be called.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_config: Option<ToolConfig>,
    /// Sampling, limits, output format, thinking.
    #[serde(skip_serializing_if = "GenerationConfig::is_empty")]
    pub generation_config: GenerationConfig,
}

/// `GenerationConfig`. Numbers the client chose are passed as written.
#[derive(Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct GenerationConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub temperature: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_p: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_k: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub candidate_count: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub presence_penalty: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub frequency_penalty: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seed: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_output_tokens: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stop_sequences: Option<Vec<Value>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response_mime_type: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response_json_schema: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub thinking_config: Option<ThinkingConfig>,
}

impl GenerationConfig {
    fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// `ThinkingConfig`: a level on Gemini 3, a token budget on 2.5.
#[derive(Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct ThinkingConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub thinking_level: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub thinking_budget: Option<u64>,
}

/// `Tool` with function declarations.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Tool {
    pub function_declarations: Vec<FunctionDeclaration>,
}

/// `FunctionDeclaration`, its parameters as JSON Schema.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct FunctionDeclaration {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parameters_json_schema: Option<Value>,
}

/// `ToolConfig`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct ToolConfig {
    pub function_calling_config: FunctionCallingConfig,
}

/// `FunctionCallingConfig`: `AUTO`, `ANY` (possibly of some functions) or `NONE`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct FunctionCallingConfig {
    pub mode: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allowed_function_names: Option<Vec<String>>,
}

// ---- Embeddings -----------------------------------------------------------------------------

/// `BatchEmbedContentsRequest`.
#[derive(Debug, Serialize)]
pub(super) struct BatchEmbedContentsRequest {
    pub requests: Vec<EmbedContentRequest>,
}

/// `EmbedContentRequest`: one text; its `model` must be the URL's.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct EmbedContentRequest {
    pub model: String,
    pub content: Content,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output_dimensionality: Option<u64>,
}

/// `BatchEmbedContentsResponse`.
#[derive(Debug, Deserialize)]
pub(super) struct BatchEmbedContentsResponse {
    pub embeddings: Vec<ContentEmbedding>,
}

/// `ContentEmbedding`.
#[derive(Debug, Deserialize)]
pub(super) struct ContentEmbedding {
    pub values: Vec<f64>,
}
