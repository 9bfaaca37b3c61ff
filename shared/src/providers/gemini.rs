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

use std::collections::{HashMap, HashSet};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream;
use serde_json::{Map, Value, json};

use super::http::{self, error_message, stream_error};
use super::{
    ChunkStream, Endpoint, ProviderApi, ProviderError, UpstreamRequest, UpstreamResponse, Usage,
    sse,
};
use crate::tokens;

/// The Gemini API at a base URL such as `https://generativelanguage.googleapis.com/v1beta`.
#[derive(Debug, Clone)]
pub struct Gemini {
    base_url: String,
}

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
    fn post(
        &self,
        client: &reqwest::Client,
        request: &UpstreamRequest<'_>,
        method: &str,
        body: &Value,
    ) -> Result<reqwest::RequestBuilder, ProviderError> {
        let model = upstream_model(request.body)?;
        Ok(client
            .post(self.url(model, method))
            .header("x-goog-api-key", request.api_key)
            .json(body))
    }

    async fn generate(
        &self,
        client: &reqwest::Client,
        request: UpstreamRequest<'_>,
    ) -> Result<UpstreamResponse, ProviderError> {
        let body = generate_request(request.body)?;
        let post = self.post(client, &request, "generateContent", &body)?;
        let (answer, headroom) = http::send_for_body(post, request.timeout).await?;
        let answer: Value = serde_json::from_slice(&answer)
            .map_err(|_| ProviderError::Malformed("body is not JSON".into()))?;
        let (completion, usage) = completion(&answer, request_model(request.body))?;
        Ok(UpstreamResponse::Complete {
            body: Bytes::from(completion.to_string()),
            usage,
            headroom,
        })
    }

    async fn stream(
        &self,
        client: &reqwest::Client,
        request: UpstreamRequest<'_>,
    ) -> Result<UpstreamResponse, ProviderError> {
        let body = generate_request(request.body)?;
        let post = self.post(client, &request, "streamGenerateContent?alt=sse", &body)?;
        let (events, headroom) = http::send_for_events(post, request.timeout).await?;
        let translator = ChunkTranslator::new(request_model(request.body));
        Ok(UpstreamResponse::Stream {
            chunks: chunk_stream(events, translator),
            headroom,
        })
    }

    async fn embed(
        &self,
        client: &reqwest::Client,
        request: UpstreamRequest<'_>,
    ) -> Result<UpstreamResponse, ProviderError> {
        let inputs = embedding_inputs(request.body)?;
        let model = upstream_model(request.body)?;
        let dimensions = request.body.get("dimensions").and_then(Value::as_u64);
        let body = batch_embed_request(model, &inputs, dimensions);
        let post = self.post(client, &request, "batchEmbedContents", &body)?;
        let (answer, headroom) = http::send_for_body(post, request.timeout).await?;
        let vectors = embedding_vectors(&answer, inputs.len())?;
        let base64 = request.body.get("encoding_format").and_then(Value::as_str) == Some("base64");
        let (list, usage) = embedding_list(request_model(request.body), &inputs, &vectors, base64);
        Ok(UpstreamResponse::Complete {
            body: Bytes::from(list.to_string()),
            usage: Some(usage),
            headroom,
        })
    }
}

impl ProviderApi for Gemini {
    async fn call(
        &self,
        client: &reqwest::Client,
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
fn bad_request(message: impl Into<String>) -> ProviderError {
    ProviderError::Status {
        status: 400,
        message: Some(message.into()),
        retry_after: None,
    }
}

/// The request's `model` as it was sent (the upstream name), for answers.
fn request_model(body: &Map<String, Value>) -> &str {
    body.get("model").and_then(Value::as_str).unwrap_or("")
}

/// The model for the URL: the upstream name without a leading `models/`.
fn upstream_model(body: &Map<String, Value>) -> Result<&str, ProviderError> {
    let model = request_model(body);
    let model = model.strip_prefix("models/").unwrap_or(model);
    if model.is_empty() {
        return Err(bad_request("no model to send to Gemini"));
    }
    Ok(model)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `chatcmpl-` and Gemini's `responseId`, or a random id when it sent none.
fn completion_id(answer: &Value) -> String {
    match answer.get("responseId").and_then(Value::as_str) {
        Some(id) if !id.is_empty() => format!("chatcmpl-{id}"),
        _ => format!("chatcmpl-{}", hex::encode(rand::random::<[u8; 12]>())),
    }
}

// ---------------------------------------------------------------------------------------
// OpenAI request → GenerateContentRequest
// ---------------------------------------------------------------------------------------

/// Translates an OpenAI chat request into a Gemini `GenerateContentRequest`.
fn generate_request(body: &Map<String, Value>) -> Result<Value, ProviderError> {
    let messages = body
        .get("messages")
        .and_then(Value::as_array)
        .map_or(&[][..], Vec::as_slice);
    let (system, contents) = contents(messages)?;
    let mut out = Map::new();
    out.insert("contents".into(), Value::Array(contents));
    if let Some(text) = system {
        out.insert(
            "systemInstruction".into(),
            json!({"parts": [{"text": text}]}),
        );
    }
    let config = generation_config(body);
    if !config.is_empty() {
        out.insert("generationConfig".into(), Value::Object(config));
    }
    if let Some(tools) = tools(body) {
        out.insert("tools".into(), tools);
    }
    if let Some(config) = tool_config(body.get("tool_choice"))? {
        out.insert("toolConfig".into(), config);
    }
    Ok(Value::Object(out))
}

/// The system instruction (every system and developer message, joined) and the turns.
fn contents(messages: &[Value]) -> Result<(Option<String>, Vec<Value>), ProviderError> {
    let mut system = Vec::new();
    let mut turns: Vec<(&'static str, Vec<Value>)> = Vec::new();
    // Gemini names the function a result is for; OpenAI refers to the call's id.
    let mut call_names: HashMap<String, String> = HashMap::new();
    for (i, message) in messages.iter().enumerate() {
        let role = message.get("role").and_then(Value::as_str).unwrap_or("");
        let (role, parts) = match role {
            "system" | "developer" => {
                system.push(joined_text(message.get("content")));
                continue;
            }
            "user" => ("user", user_parts(message.get("content"), i)?),
            "assistant" => ("model", assistant_parts(message, i, &mut call_names)?),
            "tool" => ("user", vec![tool_result(message, i, &call_names)?]),
            "function" => ("user", vec![function_result(message, i)?]),
            other => {
                return Err(bad_request(format!(
                    "messages[{i}]: role `{other}` cannot be sent to Gemini"
                )));
            }
        };
        push_turn(&mut turns, role, parts);
    }
    let contents = turns
        .into_iter()
        .map(|(role, parts)| json!({"role": role, "parts": parts}))
        .collect();
    let system = system
        .into_iter()
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>();
    Ok(((!system.is_empty()).then(|| system.join("\n\n")), contents))
}

/// Appends a turn, merged into the previous one when the role is the same (Gemini wants
/// turns to alternate). Turns without parts are dropped: Gemini refuses empty ones.
fn push_turn(turns: &mut Vec<(&'static str, Vec<Value>)>, role: &'static str, parts: Vec<Value>) {
    if parts.is_empty() {
        return;
    }
    match turns.last_mut() {
        Some((last, existing)) if *last == role => existing.extend(parts),
        _ => turns.push((role, parts)),
    }
}

/// The text of a content: a string, or the `text` of each part of an array, joined.
fn joined_text(content: Option<&Value>) -> String {
    match content {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

/// A user message's parts: text, images (inline or by URI) and audio.
fn user_parts(content: Option<&Value>, i: usize) -> Result<Vec<Value>, ProviderError> {
    match content {
        Some(Value::String(s)) => Ok(vec![json!({"text": s})]),
        Some(Value::Array(parts)) => parts
            .iter()
            .enumerate()
            .map(|(j, part)| user_part(part, i, j))
            .collect(),
        _ => Ok(Vec::new()),
    }
}

fn user_part(part: &Value, i: usize, j: usize) -> Result<Value, ProviderError> {
    let at = format!("messages[{i}].content[{j}]");
    match part.get("type").and_then(Value::as_str) {
        Some("text") => Ok(json!({"text": part.get("text").and_then(Value::as_str).unwrap_or("")})),
        Some("image_url") => {
            let image = part.get("image_url");
            // `{"url": …}` as OpenAI documents it; a bare string as some clients send.
            let url = image
                .and_then(|i| i.get("url"))
                .or(image)
                .and_then(Value::as_str)
                .ok_or_else(|| bad_request(format!("{at}: image_url has no url")))?;
            if url.starts_with("data:") {
                inline_data(url).ok_or_else(|| {
                    bad_request(format!(
                        "{at}: a data URL must be `data:<type>;base64,<data>`"
                    ))
                })
            } else {
                Ok(json!({"fileData": {"fileUri": url}}))
            }
        }
        Some("input_audio") => {
            let audio = part.get("input_audio");
            let data = audio.and_then(|a| a.get("data")).and_then(Value::as_str);
            let format = audio.and_then(|a| a.get("format")).and_then(Value::as_str);
            match (data, format) {
                (Some(data), Some(format)) => {
                    Ok(json!({"inlineData": {"mimeType": format!("audio/{format}"), "data": data}}))
                }
                _ => Err(bad_request(format!(
                    "{at}: input_audio needs data and format"
                ))),
            }
        }
        other => Err(bad_request(format!(
            "{at}: content part type `{}` cannot be sent to Gemini",
            other.unwrap_or("(none)")
        ))),
    }
}

/// `data:image/png;base64,AAAA` → `inlineData{mimeType, data}`.
fn inline_data(url: &str) -> Option<Value> {
    let (header, data) = url.strip_prefix("data:")?.split_once(',')?;
    let mime = header.strip_suffix(";base64")?;
    if mime.is_empty() || data.is_empty() {
        return None;
    }
    Some(json!({"inlineData": {"mimeType": mime, "data": data}}))
}

/// An assistant message's parts: its text, then a `functionCall` per tool call. Remembers
/// each call's function name by id, for the tool results that follow.
fn assistant_parts(
    message: &Value,
    i: usize,
    call_names: &mut HashMap<String, String>,
) -> Result<Vec<Value>, ProviderError> {
    let mut parts = Vec::new();
    let text = joined_text(message.get("content"));
    if !text.is_empty() {
        parts.push(json!({"text": text}));
    }
    let calls = message
        .get("tool_calls")
        .and_then(Value::as_array)
        .map_or(&[][..], Vec::as_slice);
    for (j, call) in calls.iter().enumerate() {
        let at = format!("messages[{i}].tool_calls[{j}]");
        let function = call.get("function").unwrap_or(&Value::Null);
        let (name, args) = function_call(function, &at)?;
        if let Some(id) = call.get("id").and_then(Value::as_str) {
            call_names.insert(id.to_owned(), name.to_owned());
        }
        parts.push(json!({"functionCall": {"name": name, "args": args}}));
    }
    // The legacy single `function_call`.
    if let Some(function) = message.get("function_call").filter(|f| !f.is_null()) {
        let (name, args) = function_call(function, &format!("messages[{i}].function_call"))?;
        parts.push(json!({"functionCall": {"name": name, "args": args}}));
    }
    Ok(parts)
}

/// A function's name and its `arguments` (a JSON string) parsed into the object Gemini wants.
fn function_call<'a>(function: &'a Value, at: &str) -> Result<(&'a str, Value), ProviderError> {
    let name = function
        .get("name")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| bad_request(format!("{at}: the function has no name")))?;
    let arguments = function
        .get("arguments")
        .and_then(Value::as_str)
        .unwrap_or("");
    if arguments.trim().is_empty() {
        return Ok((name, json!({})));
    }
    match serde_json::from_str::<Value>(arguments) {
        Ok(args @ Value::Object(_)) => Ok((name, args)),
        _ => Err(bad_request(format!(
            "{at}: function.arguments must be a JSON object"
        ))),
    }
}

/// A `tool` message as a `functionResponse`, named after the call it answers.
fn tool_result(
    message: &Value,
    i: usize,
    call_names: &HashMap<String, String>,
) -> Result<Value, ProviderError> {
    let id = message
        .get("tool_call_id")
        .and_then(Value::as_str)
        .unwrap_or("");
    let name = call_names.get(id).ok_or_else(|| {
        bad_request(format!(
            "messages[{i}]: tool_call_id `{id}` matches no earlier assistant tool call"
        ))
    })?;
    Ok(function_response(name, message.get("content")))
}

/// A legacy `function` message (it names its function itself).
fn function_result(message: &Value, i: usize) -> Result<Value, ProviderError> {
    let name = message
        .get("name")
        .and_then(Value::as_str)
        .ok_or_else(|| bad_request(format!("messages[{i}]: a function message needs a name")))?;
    Ok(function_response(name, message.get("content")))
}

/// `functionResponse{name, response}`: the content if it is a JSON object, else
/// `{"content": text}` (Gemini wants an object).
fn function_response(name: &str, content: Option<&Value>) -> Value {
    let text = joined_text(content);
    let response = match serde_json::from_str::<Value>(&text) {
        Ok(object @ Value::Object(_)) => object,
        _ => json!({ "content": text }),
    };
    json!({"functionResponse": {"name": name, "response": response}})
}

/// `generationConfig` from OpenAI's sampling fields.
fn generation_config(body: &Map<String, Value>) -> Map<String, Value> {
    let present = |field: &str| body.get(field).filter(|v| !v.is_null());
    let mut config = Map::new();
    let renamed = [
        ("temperature", "temperature"),
        ("top_p", "topP"),
        ("n", "candidateCount"),
        ("presence_penalty", "presencePenalty"),
        ("frequency_penalty", "frequencyPenalty"),
        ("seed", "seed"),
    ];
    for (from, to) in renamed {
        if let Some(v) = present(from) {
            config.insert(to.into(), v.clone());
        }
    }
    if let Some(max) = present("max_completion_tokens").or_else(|| present("max_tokens")) {
        config.insert("maxOutputTokens".into(), max.clone());
    }
    match present("stop") {
        Some(Value::String(s)) => {
            config.insert("stopSequences".into(), json!([s]));
        }
        Some(stops @ Value::Array(_)) => {
            config.insert("stopSequences".into(), stops.clone());
        }
        _ => {}
    }
    let format = present("response_format");
    match format.and_then(|f| f.get("type")).and_then(Value::as_str) {
        Some("json_object") => {
            config.insert("responseMimeType".into(), json!("application/json"));
        }
        Some("json_schema") => {
            config.insert("responseMimeType".into(), json!("application/json"));
            let schema = format
                .and_then(|f| f.get("json_schema"))
                .and_then(|s| s.get("schema"));
            if let Some(schema) = schema {
                config.insert("responseSchema".into(), schema.clone());
            }
        }
        _ => {}
    }
    config
}

/// `tools: [{functionDeclarations: […]}]` from OpenAI's function tools (and the legacy
/// `functions`); `None` when there are none.
fn tools(body: &Map<String, Value>) -> Option<Value> {
    let listed = |field: &str| {
        body.get(field)
            .and_then(Value::as_array)
            .map_or(&[][..], Vec::as_slice)
    };
    let functions = listed("tools")
        .iter()
        .filter(|t| t.get("type").and_then(Value::as_str) == Some("function"))
        .filter_map(|t| t.get("function"))
        .chain(listed("functions"));
    let declarations: Vec<Value> = functions.filter_map(declaration).collect();
    (!declarations.is_empty()).then(|| json!([{ "functionDeclarations": declarations }]))
}

/// One `FunctionDeclaration`. Parameters without properties are left out: Gemini refuses an
/// `OBJECT` schema with empty `properties`.
fn declaration(function: &Value) -> Option<Value> {
    let mut out = Map::new();
    out.insert("name".into(), function.get("name")?.clone());
    if let Some(d) = function.get("description").filter(|d| !d.is_null()) {
        out.insert("description".into(), d.clone());
    }
    let parameters = function.get("parameters").filter(|p| {
        p.get("properties")
            .and_then(Value::as_object)
            .is_some_and(|props| !props.is_empty())
    });
    if let Some(p) = parameters {
        out.insert("parameters".into(), p.clone());
    }
    Some(Value::Object(out))
}

/// `toolConfig.functionCallingConfig` from `tool_choice`.
fn tool_config(choice: Option<&Value>) -> Result<Option<Value>, ProviderError> {
    let config = match choice {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(mode)) => match mode.as_str() {
            "none" => json!({"mode": "NONE"}),
            "auto" => json!({"mode": "AUTO"}),
            "required" => json!({"mode": "ANY"}),
            other => return Err(bad_request(format!("tool_choice `{other}` is not known"))),
        },
        Some(named) => {
            let name = named
                .get("function")
                .and_then(|f| f.get("name"))
                .and_then(Value::as_str)
                .ok_or_else(|| bad_request("tool_choice must name a function"))?;
            json!({"mode": "ANY", "allowedFunctionNames": [name]})
        }
    };
    Ok(Some(json!({ "functionCallingConfig": config })))
}

// ---------------------------------------------------------------------------------------
// GenerateContentResponse → chat.completion
// ---------------------------------------------------------------------------------------

/// OpenAI's `finish_reason` for a Gemini `finishReason`; any function call means `tool_calls`.
fn finish_reason(reason: Option<&str>, called: bool) -> &'static str {
    if called {
        return "tool_calls";
    }
    match reason {
        Some("MAX_TOKENS") => "length",
        Some(
            "SAFETY" | "RECITATION" | "BLOCKLIST" | "PROHIBITED_CONTENT" | "SPII" | "IMAGE_SAFETY",
        ) => "content_filter",
        _ => "stop",
    }
}

/// Hands out `call_0`, `call_1`, … for function calls Gemini gave no id.
#[derive(Debug, Default)]
struct CallIds(u64);

impl CallIds {
    fn id_for(&mut self, call: &Value) -> String {
        if let Some(id) = call
            .get("id")
            .and_then(Value::as_str)
            .filter(|id| !id.is_empty())
        {
            return id.to_owned();
        }
        let id = format!("call_{}", self.0);
        self.0 += 1;
        id
    }
}

/// A candidate's parts.
fn parts(candidate: &Value) -> &[Value] {
    candidate
        .get("content")
        .and_then(|c| c.get("parts"))
        .and_then(Value::as_array)
        .map_or(&[][..], Vec::as_slice)
}

/// The candidate's text parts joined (thought summaries left out); `None` if it has none.
fn candidate_text(parts: &[Value]) -> Option<String> {
    let texts: Vec<&str> = parts
        .iter()
        .filter(|p| p.get("thought").and_then(Value::as_bool) != Some(true))
        .filter_map(|p| p.get("text").and_then(Value::as_str))
        .collect();
    (!texts.is_empty()).then(|| texts.concat())
}

/// OpenAI tool calls (without stream indexes) from the `functionCall` parts.
fn tool_calls(parts: &[Value], ids: &mut CallIds) -> Vec<Value> {
    parts
        .iter()
        .filter_map(|p| p.get("functionCall"))
        .map(|call| {
            let args = call.get("args").cloned().unwrap_or_else(|| json!({}));
            json!({
                "id": ids.id_for(call),
                "type": "function",
                "function": {
                    "name": call.get("name").and_then(Value::as_str).unwrap_or(""),
                    "arguments": args.to_string(),
                },
            })
        })
        .collect()
}

/// The candidate's `index`, or its position.
fn candidate_index(candidate: &Value, position: usize) -> u64 {
    candidate
        .get("index")
        .and_then(Value::as_u64)
        .unwrap_or(position as u64)
}

/// Why the prompt was refused, if it was (then there are no candidates).
fn block_reason(answer: &Value) -> Option<&str> {
    answer
        .get("promptFeedback")
        .and_then(|f| f.get("blockReason"))
        .and_then(Value::as_str)
}

/// Usage from `usageMetadata`: thinking tokens are billed as output, so they count as
/// completion tokens.
fn usage(metadata: &Value) -> Usage {
    let count = |field: &str| metadata.get(field).and_then(Value::as_u64).unwrap_or(0);
    Usage::plain(
        count("promptTokenCount"),
        count("candidatesTokenCount").saturating_add(count("thoughtsTokenCount")),
    )
}

/// OpenAI's `usage` object for `usageMetadata`.
fn usage_json(metadata: &Value) -> Value {
    let u = usage(metadata);
    let total = metadata
        .get("totalTokenCount")
        .and_then(Value::as_u64)
        .unwrap_or(u.total());
    let mut out = json!({
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": total,
    });
    if let Some(cached) = metadata
        .get("cachedContentTokenCount")
        .and_then(Value::as_u64)
    {
        out["prompt_tokens_details"] = json!({ "cached_tokens": cached });
    }
    if let Some(thoughts) = metadata.get("thoughtsTokenCount").and_then(Value::as_u64) {
        out["completion_tokens_details"] = json!({ "reasoning_tokens": thoughts });
    }
    out
}

/// Refuses a 200 answer that carries an `error` object instead of a result.
fn no_error_object(answer: &Value) -> Result<(), ProviderError> {
    if answer.get("error").is_some_and(|e| !e.is_null()) {
        return Err(ProviderError::Malformed(
            error_message(answer).unwrap_or_else(|| "error object in a 200 answer".into()),
        ));
    }
    Ok(())
}

/// Refuses 200 answers that are not a `GenerateContentResponse`.
fn check_answer(answer: &Value) -> Result<(), ProviderError> {
    no_error_object(answer)?;
    if answer.get("candidates").is_none() && answer.get("promptFeedback").is_none() {
        return Err(ProviderError::Malformed(
            "neither `candidates` nor `promptFeedback` in the answer".into(),
        ));
    }
    Ok(())
}

/// One OpenAI choice for one candidate.
fn choice(candidate: &Value, position: usize, ids: &mut CallIds) -> Value {
    let parts = parts(candidate);
    let calls = tool_calls(parts, ids);
    let reason = candidate.get("finishReason").and_then(Value::as_str);
    let mut message = json!({
        "role": "assistant",
        "content": candidate_text(parts),
        "refusal": null,
    });
    if !calls.is_empty() {
        message["tool_calls"] = json!(calls);
    }
    json!({
        "index": candidate_index(candidate, position),
        "message": message,
        "logprobs": null,
        "finish_reason": finish_reason(reason, !calls.is_empty()),
    })
}

/// A `GenerateContentResponse` as a `chat.completion`, with its usage.
fn completion(answer: &Value, model: &str) -> Result<(Value, Option<Usage>), ProviderError> {
    check_answer(answer)?;
    let candidates = answer
        .get("candidates")
        .and_then(Value::as_array)
        .map_or(&[][..], Vec::as_slice);
    let mut ids = CallIds::default();
    let mut choices: Vec<Value> = candidates
        .iter()
        .enumerate()
        .map(|(i, c)| choice(c, i, &mut ids))
        .collect();
    if choices.is_empty() {
        if block_reason(answer).is_none() {
            return Err(ProviderError::Malformed(
                "an answer without candidates".into(),
            ));
        }
        choices.push(json!({
            "index": 0,
            "message": {"role": "assistant", "content": null, "refusal": null},
            "logprobs": null,
            "finish_reason": "content_filter",
        }));
    }
    let metadata = answer.get("usageMetadata");
    let mut out = json!({
        "id": completion_id(answer),
        "object": "chat.completion",
        "created": unix_now(),
        "model": answer.get("modelVersion").and_then(Value::as_str).unwrap_or(model),
        "choices": choices,
    });
    if let Some(m) = metadata {
        out["usage"] = usage_json(m);
    }
    Ok((out, metadata.map(usage)))
}

// ---------------------------------------------------------------------------------------
// streamGenerateContent events → chat.completion.chunk
// ---------------------------------------------------------------------------------------

/// Turns streamed `GenerateContentResponse`s into OpenAI chunks, remembering what one
/// answer needs across events: its id and model, which choices have started, how many tool
/// calls each has made, and the latest usage.
#[derive(Debug)]
struct ChunkTranslator {
    id: Option<String>,
    model: String,
    created: u64,
    started: HashSet<u64>,
    calls: HashMap<u64, u64>,
    ids: CallIds,
    usage: Option<Value>,
}

impl ChunkTranslator {
    fn new(model: &str) -> Self {
        Self {
            id: None,
            model: model.to_owned(),
            created: unix_now(),
            started: HashSet::new(),
            calls: HashMap::new(),
            ids: CallIds::default(),
            usage: None,
        }
    }

    /// The chunks for one event, or the error it reports.
    fn event(&mut self, data: &Value) -> Result<Vec<Value>, ProviderError> {
        if let Some(error) = stream_error(data) {
            return Err(error);
        }
        if self.id.is_none() {
            self.id = Some(completion_id(data));
            if let Some(version) = data.get("modelVersion").and_then(Value::as_str) {
                self.model = version.to_owned();
            }
        }
        if let Some(metadata) = data.get("usageMetadata").filter(|m| !m.is_null()) {
            self.usage = Some(metadata.clone());
        }
        let candidates = data
            .get("candidates")
            .and_then(Value::as_array)
            .map_or(&[][..], Vec::as_slice);
        if candidates.is_empty() && block_reason(data).is_some() {
            let mut chunks = self.start(0).into_iter().collect::<Vec<_>>();
            chunks.push(self.chunk(0, json!({}), json!("content_filter")));
            return Ok(chunks);
        }
        let mut chunks = Vec::new();
        for (position, candidate) in candidates.iter().enumerate() {
            chunks.extend(self.candidate(candidate, candidate_index(candidate, position)));
        }
        Ok(chunks)
    }

    /// A delta with the role alone, if this choice has not started yet.
    fn start(&mut self, index: u64) -> Option<Value> {
        self.started
            .insert(index)
            .then(|| self.chunk(index, json!({"role": "assistant"}), Value::Null))
    }

    /// The chunks of one candidate in one event: its text and calls, then its finish.
    fn candidate(&mut self, candidate: &Value, index: u64) -> Vec<Value> {
        let parts = parts(candidate);
        let mut delta = Map::new();
        if self.started.insert(index) {
            delta.insert("role".into(), json!("assistant"));
        }
        if let Some(text) = candidate_text(parts) {
            delta.insert("content".into(), json!(text));
        }
        let calls = tool_calls(parts, &mut self.ids);
        if !calls.is_empty() {
            let made = self.calls.entry(index).or_insert(0);
            let indexed: Vec<Value> = calls
                .into_iter()
                .map(|mut call| {
                    call["index"] = json!(*made);
                    *made += 1;
                    call
                })
                .collect();
            delta.insert("tool_calls".into(), json!(indexed));
        }
        let mut chunks = Vec::new();
        if !delta.is_empty() {
            chunks.push(self.chunk(index, Value::Object(delta), Value::Null));
        }
        let reason = candidate
            .get("finishReason")
            .and_then(Value::as_str)
            .filter(|r| *r != "FINISH_REASON_UNSPECIFIED");
        if let Some(reason) = reason {
            let called = self.calls.get(&index).is_some_and(|n| *n > 0);
            let finish = finish_reason(Some(reason), called);
            chunks.push(self.chunk(index, json!({}), json!(finish)));
        }
        chunks
    }

    /// The closing chunk with the usage, if Gemini reported any.
    fn finish(&self) -> Option<Value> {
        let usage = self.usage.as_ref()?;
        let mut chunk = self.head();
        chunk["choices"] = json!([]);
        chunk["usage"] = usage_json(usage);
        Some(chunk)
    }

    fn head(&self) -> Value {
        json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
        })
    }

    fn chunk(&self, index: u64, delta: Value, finish: Value) -> Value {
        let mut chunk = self.head();
        chunk["choices"] =
            json!([{"index": index, "delta": delta, "logprobs": null, "finish_reason": finish}]);
        chunk
    }
}

/// The chunks of a whole stream: each event translated, then the usage chunk. Ends after
/// the first error.
fn chunk_stream(events: sse::EventStream, translator: ChunkTranslator) -> ChunkStream {
    let state = (events, translator, false);
    let batches = stream::unfold(state, |(mut events, mut translator, ended)| async move {
        if ended {
            return None;
        }
        let (batch, ended) = match events.next().await {
            Some(Ok(event)) => match translator.event(&event.data) {
                Ok(chunks) => (chunks.into_iter().map(Ok).collect(), false),
                Err(error) => (vec![Err(error)], true),
            },
            Some(Err(error)) => (vec![Err(error)], true),
            None => (translator.finish().into_iter().map(Ok).collect(), true),
        };
        Some((batch, (events, translator, ended)))
    });
    http::boxed(batches.flat_map(stream::iter))
}

// ---------------------------------------------------------------------------------------
// Embeddings
// ---------------------------------------------------------------------------------------

/// The texts to embed; token arrays cannot be sent to Gemini.
fn embedding_inputs(body: &Map<String, Value>) -> Result<Vec<String>, ProviderError> {
    let refuse =
        || bad_request("Gemini embeds text only: `input` must be a string or an array of strings");
    match body.get("input") {
        Some(Value::String(s)) => Ok(vec![s.clone()]),
        Some(Value::Array(items)) if !items.is_empty() => items
            .iter()
            .map(|i| i.as_str().map(str::to_owned).ok_or_else(refuse))
            .collect(),
        _ => Err(refuse()),
    }
}

/// A `batchEmbedContents` request: one `EmbedContentRequest` per text.
fn batch_embed_request(model: &str, inputs: &[String], dimensions: Option<u64>) -> Value {
    let requests: Vec<Value> = inputs
        .iter()
        .map(|text| {
            let mut r = json!({
                "model": format!("models/{model}"),
                "content": {"parts": [{"text": text}]},
            });
            if let Some(d) = dimensions {
                r["outputDimensionality"] = json!(d);
            }
            r
        })
        .collect();
    json!({ "requests": requests })
}

/// The vectors of a `batchEmbedContents` answer, one per input.
fn embedding_vectors(body: &[u8], expected: usize) -> Result<Vec<Vec<f64>>, ProviderError> {
    let malformed = |what: &str| ProviderError::Malformed(what.to_owned());
    let answer: Value = serde_json::from_slice(body).map_err(|_| malformed("body is not JSON"))?;
    no_error_object(&answer)?;
    let embeddings = answer
        .get("embeddings")
        .and_then(Value::as_array)
        .ok_or_else(|| malformed("no `embeddings` array"))?;
    if embeddings.len() != expected {
        return Err(ProviderError::Malformed(format!(
            "{} embeddings for {expected} inputs",
            embeddings.len()
        )));
    }
    embeddings
        .iter()
        .map(|e| {
            e.get("values")
                .and_then(Value::as_array)
                .and_then(|values| values.iter().map(Value::as_f64).collect::<Option<Vec<_>>>())
                .ok_or_else(|| malformed("an embedding without numeric `values`"))
        })
        .collect()
}

/// Little-endian `f32`s in base64, as OpenAI sends `encoding_format: "base64"`.
// f64 → f32 is the point: OpenAI's base64 vectors are little-endian `f32`s.
#[allow(clippy::cast_possible_truncation)]
fn base64_vector(values: &[f64]) -> String {
    let bytes: Vec<u8> = values
        .iter()
        .flat_map(|v| (*v as f32).to_le_bytes())
        .collect();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// OpenAI's embedding list, with usage estimated (Gemini reports none).
fn embedding_list(
    model: &str,
    inputs: &[String],
    vectors: &[Vec<f64>],
    base64: bool,
) -> (Value, Usage) {
    let data: Vec<Value> = vectors
        .iter()
        .enumerate()
        .map(|(index, values)| {
            let embedding = if base64 {
                json!(base64_vector(values))
            } else {
                json!(values)
            };
            json!({"object": "embedding", "index": index, "embedding": embedding})
        })
        .collect();
    let prompt_tokens: u64 = inputs.iter().map(|t| tokens::estimate_text(t)).sum();
    let list = json!({
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    });
    let usage = Usage::plain(prompt_tokens, 0);
    (list, usage)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::gateway::stream::Assembler;

    fn object(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            other => panic!("not an object: {other}"),
        }
    }

    fn status_400(e: ProviderError) -> String {
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
        };
        let built = gemini
            .post(
                &reqwest::Client::new(),
                &request,
                "streamGenerateContent?alt=sse",
                &json!({}),
            )
            .unwrap()
            .build()
            .unwrap();
        assert_eq!(
            built.url().as_str(),
            "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.0-flash:streamGenerateContent?alt=sse"
        );
        assert_eq!(built.headers()["x-goog-api-key"], "AIza-secret");
        assert!(built.headers().get("authorization").is_none());
    }

    #[test]
    fn a_conversation_becomes_contents_with_a_system_instruction() {
        let body = object(json!({
            "model": "gemini-2.0-flash",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "developer", "content": [{"type": "text", "text": "Answer in English."}]},
                {"role": "user", "content": "Hi"},
                {"role": "user", "content": [
                    {"type": "text", "text": "What is this?"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
                    {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}}
                ]},
                {"role": "assistant", "content": "A cat."}
            ],
            "temperature": 0.3, "top_p": 0.9, "max_tokens": 100, "stop": "END", "n": 2,
            "presence_penalty": 0.5, "frequency_penalty": 0.25, "seed": 7,
            "response_format": {"type": "json_object"}
        }));
        let request = generate_request(&body).unwrap();
        assert_eq!(
            request["systemInstruction"],
            json!({"parts": [{"text": "Be brief.\n\nAnswer in English."}]})
        );
        assert_eq!(
            request["contents"],
            json!([
                {"role": "user", "parts": [
                    {"text": "Hi"},
                    {"text": "What is this?"},
                    {"inlineData": {"mimeType": "image/png", "data": "iVBORw0KGgo="}},
                    {"fileData": {"fileUri": "https://example.com/cat.jpg"}}
                ]},
                {"role": "model", "parts": [{"text": "A cat."}]}
            ])
        );
        assert_eq!(
            request["generationConfig"],
            json!({"temperature": 0.3, "topP": 0.9, "maxOutputTokens": 100,
                   "stopSequences": ["END"], "candidateCount": 2, "presencePenalty": 0.5,
                   "frequencyPenalty": 0.25, "seed": 7, "responseMimeType": "application/json"})
        );
        assert!(request.get("tools").is_none());
        assert!(request.get("toolConfig").is_none());
    }

    #[test]
    fn max_completion_tokens_wins_and_json_schema_becomes_a_response_schema() {
        let schema = json!({"type": "object", "properties": {"a": {"type": "string"}}});
        let body = object(json!({
            "model": "m", "messages": [{"role": "user", "content": "x"}],
            "max_tokens": 10, "max_completion_tokens": 20, "stop": ["a", "b"],
            "response_format": {"type": "json_schema", "json_schema": {"name": "s", "schema": schema}}
        }));
        let config = &generate_request(&body).unwrap()["generationConfig"];
        assert_eq!(config["maxOutputTokens"], 20);
        assert_eq!(config["stopSequences"], json!(["a", "b"]));
        assert_eq!(config["responseMimeType"], "application/json");
        assert_eq!(config["responseSchema"], schema);
        let plain = object(json!({"model": "m", "messages": [{"role": "user", "content": "x"}]}));
        assert!(
            generate_request(&plain)
                .unwrap()
                .get("generationConfig")
                .is_none()
        );
    }

    #[test]
    fn tool_calls_and_results_become_function_calls_and_responses() {
        let body = object(json!({
            "model": "gemini-2.0-flash",
            "messages": [
                {"role": "user", "content": "Weather in Oslo and Bergen?"},
                {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "call_a", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Oslo\"}"}},
                    {"id": "call_b", "type": "function", "function": {"name": "get_time", "arguments": ""}}
                ]},
                {"role": "tool", "tool_call_id": "call_a", "content": "{\"temp\":3}"},
                {"role": "tool", "tool_call_id": "call_b", "content": "noon"}
            ],
            "tools": [
                {"type": "function", "function": {"name": "get_weather", "description": "Weather now",
                    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}},
                {"type": "function", "function": {"name": "get_time",
                    "parameters": {"type": "object", "properties": {}}}}
            ],
            "tool_choice": {"type": "function", "function": {"name": "get_weather"}}
        }));
        let request = generate_request(&body).unwrap();
        assert_eq!(
            request["contents"],
            json!([
                {"role": "user", "parts": [{"text": "Weather in Oslo and Bergen?"}]},
                {"role": "model", "parts": [
                    {"functionCall": {"name": "get_weather", "args": {"city": "Oslo"}}},
                    {"functionCall": {"name": "get_time", "args": {}}}
                ]},
                {"role": "user", "parts": [
                    {"functionResponse": {"name": "get_weather", "response": {"temp": 3}}},
                    {"functionResponse": {"name": "get_time", "response": {"content": "noon"}}}
                ]}
            ])
        );
        assert_eq!(
            request["tools"],
            json!([{"functionDeclarations": [
                {"name": "get_weather", "description": "Weather now",
                 "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}},
                {"name": "get_time"}
            ]}])
        );
        assert_eq!(
            request["toolConfig"],
            json!({"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["get_weather"]}})
        );
    }

    #[test]
    fn tool_choice_modes() {
        for (choice, mode) in [("none", "NONE"), ("auto", "AUTO"), ("required", "ANY")] {
            let config = tool_config(Some(&json!(choice))).unwrap().unwrap();
            assert_eq!(config["functionCallingConfig"], json!({ "mode": mode }));
        }
        assert!(tool_config(None).unwrap().is_none());
        assert!(tool_config(Some(&json!("sometimes"))).is_err());
    }

    #[test]
    fn untranslatable_requests_are_refused_with_a_400() {
        let bad_args = object(json!({"model": "m", "messages": [
            {"role": "user", "content": "x"},
            {"role": "assistant", "tool_calls": [{"id": "c", "type": "function",
                "function": {"name": "f", "arguments": "{not json"}}]}
        ]}));
        assert!(status_400(generate_request(&bad_args).unwrap_err()).contains("arguments"));
        let orphan = object(json!({"model": "m", "messages": [
            {"role": "user", "content": "x"},
            {"role": "tool", "tool_call_id": "nowhere", "content": "1"}
        ]}));
        assert!(status_400(generate_request(&orphan).unwrap_err()).contains("nowhere"));
        let bad_image = object(
            json!({"model": "m", "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "data:image/png,rawbytes"}}]}]}),
        );
        assert!(status_400(generate_request(&bad_image).unwrap_err()).contains("data URL"));
    }

    /// The `generateContent` response example of Google's API reference.
    fn text_answer() -> Value {
        json!({
            "candidates": [{
                "content": {"parts": [{"text": "In a realm of "}, {"text": "silicon dreams..."}], "role": "model"},
                "finishReason": "STOP",
                "index": 0,
                "safetyRatings": [
                    {"category": "HARM_CATEGORY_SEXUALLY_EXPLICIT", "probability": "NEGLIGIBLE"},
                    {"category": "HARM_CATEGORY_HATE_SPEECH", "probability": "NEGLIGIBLE"}
                ]
            }],
            "usageMetadata": {"promptTokenCount": 8, "candidatesTokenCount": 398, "totalTokenCount": 406,
                "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 8}]},
            "modelVersion": "gemini-2.0-flash",
            "responseId": "mZQIaLa1Bq6Y1MkPy5vHsQk"
        })
    }

    #[test]
    fn a_text_answer_becomes_a_chat_completion() {
        let (c, usage) = completion(&text_answer(), "requested").unwrap();
        assert_eq!(c["id"], "chatcmpl-mZQIaLa1Bq6Y1MkPy5vHsQk");
        assert_eq!(c["object"], "chat.completion");
        assert_eq!(c["model"], "gemini-2.0-flash");
        assert!(c["created"].as_u64().unwrap() > 1_700_000_000);
        assert_eq!(
            c["choices"],
            json!([{"index": 0, "logprobs": null, "finish_reason": "stop",
                    "message": {"role": "assistant", "content": "In a realm of silicon dreams...", "refusal": null}}])
        );
        assert_eq!(
            c["usage"],
            json!({"prompt_tokens": 8, "completion_tokens": 398, "total_tokens": 406})
        );
        assert_eq!(usage, Some(Usage::plain(8, 398)));
    }

    #[test]
    fn thinking_tokens_count_as_completion_and_thoughts_are_not_content() {
        let answer = json!({
            "candidates": [{"content": {"role": "model", "parts": [
                {"text": "Let me think", "thought": true}, {"text": "42"}]}, "finishReason": "MAX_TOKENS"}],
            "usageMetadata": {"promptTokenCount": 5, "candidatesTokenCount": 1, "thoughtsTokenCount": 30, "totalTokenCount": 36}
        });
        let (c, usage) = completion(&answer, "gemini-2.5-flash").unwrap();
        assert_eq!(c["model"], "gemini-2.5-flash");
        assert!(c["id"].as_str().unwrap().starts_with("chatcmpl-"));
        assert_eq!(c["choices"][0]["message"]["content"], "42");
        assert_eq!(c["choices"][0]["finish_reason"], "length");
        assert_eq!(c["usage"]["completion_tokens"], 31);
        assert_eq!(
            c["usage"]["completion_tokens_details"]["reasoning_tokens"],
            30
        );
        assert_eq!(usage.unwrap().completion_tokens, 31);
    }

    /// The function-calling example of Google's guide, plus a call that carries an id.
    #[test]
    fn function_calls_become_tool_calls() {
        let answer = json!({
            "candidates": [{
                "content": {"role": "model", "parts": [
                    {"functionCall": {"name": "find_theaters", "args": {"location": "Mountain View, CA", "movie": "Barbie"}}},
                    {"functionCall": {"id": "fc-7", "name": "get_showtimes", "args": {"theater": "AMC"}}}
                ]},
                "finishReason": "STOP",
                "index": 0
            }],
            "usageMetadata": {"promptTokenCount": 50, "candidatesTokenCount": 20, "totalTokenCount": 70},
            "modelVersion": "gemini-2.0-flash"
        });
        let (c, _) = completion(&answer, "m").unwrap();
        let choice = &c["choices"][0];
        assert_eq!(choice["finish_reason"], "tool_calls");
        assert_eq!(choice["message"]["content"], Value::Null);
        let calls = choice["message"]["tool_calls"].as_array().unwrap();
        assert_eq!(calls[0]["id"], "call_0");
        assert_eq!(calls[0]["type"], "function");
        assert_eq!(calls[0]["function"]["name"], "find_theaters");
        let args: Value =
            serde_json::from_str(calls[0]["function"]["arguments"].as_str().unwrap()).unwrap();
        assert_eq!(
            args,
            json!({"location": "Mountain View, CA", "movie": "Barbie"})
        );
        assert_eq!(calls[1]["id"], "fc-7");
        assert_eq!(calls[1]["function"]["arguments"], "{\"theater\":\"AMC\"}");
    }

    #[test]
    fn safety_blocks_are_content_filtered() {
        let blocked_prompt = json!({
            "promptFeedback": {"blockReason": "SAFETY", "safetyRatings": [
                {"category": "HARM_CATEGORY_DANGEROUS_CONTENT", "probability": "HIGH"}]},
            "usageMetadata": {"promptTokenCount": 12, "totalTokenCount": 12}
        });
        let (c, usage) = completion(&blocked_prompt, "m").unwrap();
        assert_eq!(
            c["choices"],
            json!([{"index": 0, "message": {"role": "assistant", "content": null, "refusal": null},
                    "logprobs": null, "finish_reason": "content_filter"}])
        );
        assert_eq!(usage.unwrap().prompt_tokens, 12);
        let blocked_answer = json!({"candidates": [{"finishReason": "SAFETY", "index": 0,
            "safetyRatings": [{"category": "HARM_CATEGORY_HARASSMENT", "probability": "MEDIUM", "blocked": true}]}]});
        let (c, usage) = completion(&blocked_answer, "m").unwrap();
        assert_eq!(c["choices"][0]["finish_reason"], "content_filter");
        assert_eq!(c["choices"][0]["message"]["content"], Value::Null);
        assert!(usage.is_none());
        for (reason, expected) in [
            ("RECITATION", "content_filter"),
            ("PROHIBITED_CONTENT", "content_filter"),
            ("SPII", "content_filter"),
            ("BLOCKLIST", "content_filter"),
            ("IMAGE_SAFETY", "content_filter"),
            ("OTHER", "stop"),
            ("MALFORMED_FUNCTION_CALL", "stop"),
        ] {
            assert_eq!(finish_reason(Some(reason), false), expected, "{reason}");
        }
    }

    #[test]
    fn error_and_shapeless_answers_are_malformed() {
        let error = json!({"error": {"code": 500, "message": "An internal error has occurred.", "status": "INTERNAL"}});
        match completion(&error, "m") {
            Err(ProviderError::Malformed(m)) => assert_eq!(m, "An internal error has occurred."),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            completion(&json!({"usageMetadata": {}}), "m"),
            Err(ProviderError::Malformed(_))
        ));
        assert!(matches!(
            completion(&json!({"candidates": []}), "m"),
            Err(ProviderError::Malformed(_))
        ));
    }

    /// Feeds SSE text (as `streamGenerateContent?alt=sse` sends it) through the translator.
    async fn translate_stream(sse_text: &'static str) -> Vec<Result<Value, ProviderError>> {
        let bytes = stream::iter([Ok(Bytes::from_static(sse_text.as_bytes()))]);
        let events = sse::json_events(bytes);
        chunk_stream(events, ChunkTranslator::new("requested"))
            .collect()
            .await
    }

    #[tokio::test]
    async fn streamed_text_becomes_chunks_and_a_usage_chunk() {
        let chunks = translate_stream(concat!(
            "data: {\"candidates\": [{\"content\": {\"parts\": [{\"text\": \"The\"}],\"role\": \"model\"},\"index\": 0}],",
            "\"usageMetadata\": {\"promptTokenCount\": 8,\"totalTokenCount\": 8},\"modelVersion\": \"gemini-2.0-flash\",\"responseId\": \"r1\"}\r\n\r\n",
            "data: {\"candidates\": [{\"content\": {\"parts\": [{\"text\": \" sky is blue\"}],\"role\": \"model\"},\"finishReason\": \"STOP\",\"index\": 0}],",
            "\"usageMetadata\": {\"promptTokenCount\": 8,\"candidatesTokenCount\": 5,\"totalTokenCount\": 13},\"modelVersion\": \"gemini-2.0-flash\",\"responseId\": \"r1\"}\r\n\r\n"
        ))
        .await;
        let chunks: Vec<Value> = chunks.into_iter().map(Result::unwrap).collect();
        assert_eq!(chunks.len(), 4, "{chunks:?}");
        assert!(chunks.iter().all(|c| c["object"] == "chat.completion.chunk"
            && c["id"] == "chatcmpl-r1"
            && c["model"] == "gemini-2.0-flash"));
        assert_eq!(
            chunks[0]["choices"][0]["delta"],
            json!({"role": "assistant", "content": "The"})
        );
        assert_eq!(
            chunks[1]["choices"][0]["delta"],
            json!({"content": " sky is blue"})
        );
        assert_eq!(chunks[2]["choices"][0]["finish_reason"], "stop");
        assert_eq!(chunks[3]["choices"], json!([]));
        assert_eq!(
            chunks[3]["usage"],
            json!({"prompt_tokens": 8, "completion_tokens": 5, "total_tokens": 13})
        );
        let mut assembler = Assembler::default();
        chunks.iter().for_each(|c| assembler.add(c));
        let done = assembler.completion();
        assert_eq!(done["choices"][0]["message"]["content"], "The sky is blue");
        assert_eq!(done["choices"][0]["finish_reason"], "stop");
        assert_eq!(assembler.usage(), Some(Usage::plain(8, 5)));
    }

    #[tokio::test]
    async fn streamed_function_calls_are_indexed_tool_call_deltas() {
        let chunks = translate_stream(concat!(
            "data: {\"candidates\": [{\"content\": {\"role\": \"model\", \"parts\": [",
            "{\"functionCall\": {\"name\": \"get_weather\", \"args\": {\"city\": \"Oslo\"}}}]}, \"index\": 0}]}\n\n",
            "data: {\"candidates\": [{\"content\": {\"role\": \"model\", \"parts\": [",
            "{\"functionCall\": {\"name\": \"get_weather\", \"args\": {\"city\": \"Bergen\"}}}]}, \"finishReason\": \"STOP\", \"index\": 0}],",
            "\"usageMetadata\": {\"promptTokenCount\": 20, \"candidatesTokenCount\": 10, \"totalTokenCount\": 30}}\n\n"
        ))
        .await;
        let chunks: Vec<Value> = chunks.into_iter().map(Result::unwrap).collect();
        let first = &chunks[0]["choices"][0]["delta"];
        assert_eq!(first["role"], "assistant");
        assert_eq!(
            first["tool_calls"],
            json!([{"index": 0, "id": "call_0", "type": "function",
                    "function": {"name": "get_weather", "arguments": "{\"city\":\"Oslo\"}"}}])
        );
        assert_eq!(
            chunks[1]["choices"][0]["delta"]["tool_calls"][0]["index"],
            1
        );
        assert_eq!(
            chunks[1]["choices"][0]["delta"]["tool_calls"][0]["id"],
            "call_1"
        );
        let mut assembler = Assembler::default();
        chunks.iter().for_each(|c| assembler.add(c));
        let done = assembler.completion();
        assert_eq!(done["choices"][0]["finish_reason"], "tool_calls");
        let calls = done["choices"][0]["message"]["tool_calls"]
            .as_array()
            .unwrap();
        assert_eq!(calls.len(), 2);
        assert_eq!(calls[1]["function"]["arguments"], "{\"city\":\"Bergen\"}");
        assert_eq!(assembler.usage().unwrap().prompt_tokens, 20);
    }

    #[tokio::test]
    async fn an_error_event_ends_the_stream_with_an_error() {
        let chunks = translate_stream(concat!(
            "data: {\"candidates\": [{\"content\": {\"parts\": [{\"text\": \"Hi\"}], \"role\": \"model\"}}]}\n\n",
            "data: {\"error\": {\"code\": 503, \"message\": \"The model is overloaded.\", \"status\": \"UNAVAILABLE\"}}\n\n",
            "data: {\"candidates\": [{\"content\": {\"parts\": [{\"text\": \"never\"}], \"role\": \"model\"}}]}\n\n"
        ))
        .await;
        assert_eq!(chunks.len(), 2);
        assert_eq!(
            chunks[0].as_ref().unwrap()["choices"][0]["delta"]["content"],
            "Hi"
        );
        // Google's `error.code` keeps its meaning: a 503 is retryable as such.
        assert!(matches!(
            &chunks[1],
            Err(ProviderError::Status { status: 503, message: Some(m), .. })
                if m == "The model is overloaded."
        ));
    }

    #[tokio::test]
    async fn a_blocked_streamed_prompt_is_content_filtered() {
        let chunks = translate_stream(
            "data: {\"promptFeedback\": {\"blockReason\": \"PROHIBITED_CONTENT\"}, \"usageMetadata\": {\"promptTokenCount\": 4, \"totalTokenCount\": 4}}\n\n",
        )
        .await;
        let chunks: Vec<Value> = chunks.into_iter().map(Result::unwrap).collect();
        assert_eq!(chunks.len(), 3);
        assert_eq!(
            chunks[0]["choices"][0]["delta"],
            json!({"role": "assistant"})
        );
        assert_eq!(chunks[1]["choices"][0]["finish_reason"], "content_filter");
        assert_eq!(chunks[2]["usage"]["prompt_tokens"], 4);
    }

    #[test]
    fn embeddings_are_batched_and_answered_as_an_openai_list() {
        let body = object(
            json!({"model": "text-embedding-004", "input": ["hello", "world!"], "dimensions": 3}),
        );
        let inputs = embedding_inputs(&body).unwrap();
        assert_eq!(
            batch_embed_request("text-embedding-004", &inputs, Some(3)),
            json!({"requests": [
                {"model": "models/text-embedding-004", "content": {"parts": [{"text": "hello"}]}, "outputDimensionality": 3},
                {"model": "models/text-embedding-004", "content": {"parts": [{"text": "world!"}]}, "outputDimensionality": 3}
            ]})
        );
        let answer =
            br#"{"embeddings": [{"values": [0.25, -0.5, 1.0]}, {"values": [0.0, 0.125, -1.0]}]}"#;
        let vectors = embedding_vectors(answer, 2).unwrap();
        let (list, usage) = embedding_list("text-embedding-004", &inputs, &vectors, false);
        assert_eq!(list["object"], "list");
        assert_eq!(list["model"], "text-embedding-004");
        assert_eq!(
            list["data"][1],
            json!({"object": "embedding", "index": 1, "embedding": [0.0, 0.125, -1.0]})
        );
        assert_eq!(usage.prompt_tokens, 2 + 2);
        assert_eq!(list["usage"]["prompt_tokens"], 4);

        let (list, _) = embedding_list("text-embedding-004", &inputs, &vectors, true);
        let encoded = list["data"][0]["embedding"].as_str().unwrap();
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .unwrap();
        let floats: Vec<f32> = bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        assert_eq!(floats, [0.25, -0.5, 1.0]);
    }

    #[test]
    fn token_inputs_and_bad_embedding_answers_are_refused() {
        let tokens = object(json!({"model": "e", "input": [1, 2, 3]}));
        assert!(status_400(embedding_inputs(&tokens).unwrap_err()).contains("text only"));
        assert!(matches!(
            embedding_vectors(br#"{"embeddings": [{"values": [1.0]}]}"#, 2),
            Err(ProviderError::Malformed(_))
        ));
        assert!(matches!(
            embedding_vectors(b"<html>", 1),
            Err(ProviderError::Malformed(_))
        ));
        assert!(matches!(
            embedding_vectors(br#"{"error": {"code": 500, "message": "boom"}}"#, 1),
            Err(ProviderError::Malformed(m)) if m == "boom"
        ));
    }
}

/// Property tests: any answer, event, embedding list or request is translated or refused
/// without panicking, and a stream reads the same however the network cuts it.
#[cfg(test)]
mod fuzz {
    use proptest::prelude::*;

    use super::*;
    use crate::fuzzing::{
        self, assemble, block_on, cuts, event_stream, json_value, mutated, split, sse_text, text,
    };

    fn valid_answer() -> Value {
        json!({"candidates": [{"index": 0, "finishReason": "STOP", "content": {"role": "model", "parts": [
                {"text": "Hi"}, {"text": "hmm", "thought": true}, {"functionCall": {"id": "c", "name": "f", "args": {"a": 1}}}]}}],
            "promptFeedback": {"blockReason": "SAFETY"}, "modelVersion": "gemini-2.0", "responseId": "r1",
            "usageMetadata": {"promptTokenCount": 3, "candidatesTokenCount": 4, "thoughtsTokenCount": 5, "totalTokenCount": 12, "cachedContentTokenCount": 1}})
    }

    fn valid_request() -> Value {
        json!({"model": "models/gemini-2.0-flash", "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "Hi"}, {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]},
            {"role": "assistant", "content": "ok", "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{\"a\":1}"}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "{\"r\":2}"}],
            "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
            "tool_choice": "required", "stop": "x", "max_tokens": 10, "temperature": 0.5, "n": 2, "seed": 1,
            "response_format": {"type": "json_schema", "json_schema": {"schema": {"type": "object"}}},
            "input": ["a", "b"], "dimensions": 8})
    }

    /// A Gemini stream: whole `GenerateContentResponse`s with text, a function call, the
    /// finish and usage. Returns the SSE bytes and the text.
    fn valid_stream() -> impl Strategy<Value = (Vec<u8>, String)> {
        (proptest::collection::vec(text(), 1..6), any::<bool>(), any::<u64>(), any::<u64>()).prop_map(
            |(pieces, call, prompt, output)| {
                let mut events: Vec<(Option<&str>, Value)> = pieces
                    .iter()
                    .map(|p| (None, json!({"candidates": [{"content": {"role": "model", "parts": [{"text": p}]}, "index": 0}],
                        "modelVersion": "gemini-2.0", "responseId": "r1"})))
                    .collect();
                if call {
                    events.push((None, json!({"candidates": [{"content": {"parts": [{"functionCall": {"name": "f", "args": {"x": 1}}}]}}]})));
                }
                events.push((None, json!({"candidates": [{"content": {"parts": []}, "finishReason": "STOP"}],
                    "usageMetadata": {"promptTokenCount": prompt, "candidatesTokenCount": output, "thoughtsTokenCount": output}})));
                (sse_text(&events), pieces.concat())
            },
        )
    }

    fn read(chunks: Vec<Bytes>) -> Result<Value, Vec<String>> {
        let chunks = block_on(
            chunk_stream(event_stream(chunks), ChunkTranslator::new("m")).collect::<Vec<_>>(),
        );
        assemble(chunks)
    }

    /// `candidatesTokenCount + thoughtsTokenCount` (and the total) overflowed on counts near
    /// `u64::MAX`: a panic in a debug build. Found by
    /// `fuzz_a_stream_reads_the_same_however_it_is_cut`.
    #[test]
    fn regression_huge_token_counts_saturate() {
        let metadata = json!({"promptTokenCount": 1, "candidatesTokenCount": u64::MAX, "thoughtsTokenCount": 2});
        assert_eq!(usage(&metadata).completion_tokens, u64::MAX);
        assert_eq!(usage_json(&metadata)["total_tokens"], u64::MAX);
    }

    proptest! {
        #![proptest_config(fuzzing::config(fuzzing::CASES))]

        #[test]
        fn fuzz_any_answer(answer in prop_oneof![json_value(), mutated(valid_answer())]) {
            match completion(&answer, "m") {
                Ok((out, usage)) => {
                    prop_assert!(out["choices"].as_array().is_some_and(|c| !c.is_empty()));
                    prop_assert_eq!(usage.is_some(), out.get("usage").is_some());
                }
                Err(e) => prop_assert!(matches!(e, ProviderError::Malformed(_))),
            }
        }

        #[test]
        fn fuzz_any_events(events in proptest::collection::vec(prop_oneof![json_value(), mutated(valid_answer())], 0..8)) {
            let mut translator = ChunkTranslator::new("m");
            for data in &events {
                if let Ok(chunks) = translator.event(data) {
                    for chunk in chunks {
                        prop_assert!(chunk["choices"].is_array());
                    }
                }
            }
            let _ = translator.finish();
        }

        #[test]
        fn fuzz_any_embedding_answer(
            body in prop_oneof![
                proptest::collection::vec(any::<u8>(), 0..128),
                mutated(json!({"embeddings": [{"values": [0.1, -2, 3e10]}, {"values": []}]})).prop_map(|v| v.to_string().into_bytes()),
            ],
            expected in 0usize..4,
        ) {
            match embedding_vectors(&body, expected) {
                Ok(vectors) => {
                    prop_assert_eq!(vectors.len(), expected);
                    for v in &vectors {
                        let _ = base64_vector(v);
                    }
                }
                Err(e) => prop_assert!(matches!(e, ProviderError::Malformed(_))),
            }
        }

        #[test]
        fn fuzz_any_request(body in prop_oneof![json_value(), mutated(valid_request())]) {
            let map = body.as_object().cloned().unwrap_or_default();
            match generate_request(&map) {
                Ok(out) => prop_assert!(out["contents"].is_array()),
                Err(e) => prop_assert!(matches!(e, ProviderError::Status { status: 400, .. }), "{:?}", e),
            }
            if let Ok(inputs) = embedding_inputs(&map) {
                prop_assert!(!inputs.is_empty());
            }
            let _ = upstream_model(&map);
        }

        #[test]
        fn fuzz_a_stream_reads_the_same_however_it_is_cut((bytes, text) in valid_stream(), at in cuts(16)) {
            let whole = read(vec![Bytes::from(bytes.clone())]);
            let done = whole.clone().unwrap();
            prop_assert_eq!(done["choices"][0]["message"]["content"].as_str(), Some(text.as_str()));
            // Ids Gemini does not give are random; compare the rest.
            let without_id = |v: Result<Value, Vec<String>>| v.map(|mut v| { v["id"] = Value::Null; v });
            prop_assert_eq!(without_id(read(split(&bytes, &at))), without_id(whole));
        }

        #[test]
        fn fuzz_any_stream_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512), at in cuts(6)) {
            let _ = read(split(&bytes, &at));
        }
    }
}
