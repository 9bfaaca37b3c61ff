//! OpenAI chat request → Gemini `GenerateContentRequest`.
//!
//! Every field of the OpenAI request is translated, ignored for a stated reason, or refused
//! with a 400 that names it ([`check_fields`]): a request is never answered as if part of it
//! had not been sent. What Gemini documents as its own rules (the `Schema` subset, int32
//! fields, function names) is met here rather than left to a 400 from Google:
//!
//! - tool `parameters` and `response_format` schemas are JSON Schema, which Gemini's `Schema`
//!   (OpenAPI 3.0 subset) refuses in part (`additionalProperties`, `$ref`, `const`, type
//!   arrays…), so they go as `parametersJsonSchema` / `responseJsonSchema`, the fields that
//!   "accept JSON Schema" (ai.google.dev/api/caching#FunctionDeclaration,
//!   ai.google.dev/api/generate-content#generationconfig);
//! - a function call's thought signature comes back from its tool call id ([`call_id`]).

use std::collections::HashMap;

use serde_json::{Map, Value, json};

use super::bad_request;
use super::call_id;
use super::wire::{
    Blob, Content, FileData, FunctionCall, FunctionCallingConfig, FunctionDeclaration,
    FunctionResponse, GenerateContentRequest, GenerationConfig, Part, ThinkingConfig, Tool,
    ToolConfig,
};
use crate::providers::ProviderError;

/// The largest `int32`: Gemini's integer fields (`maxOutputTokens`, `seed`) are 32-bit.
const INT32_MAX: u64 = 2_147_483_647;

/// Translates an OpenAI chat request into a Gemini `GenerateContentRequest`.
pub(super) fn generate_request(
    body: &Map<String, Value>,
) -> Result<GenerateContentRequest, ProviderError> {
    check_fields(body)?;
    let messages = body
        .get("messages")
        .and_then(Value::as_array)
        .map_or(&[][..], Vec::as_slice);
    let (system, contents) = contents(messages)?;
    Ok(GenerateContentRequest {
        contents,
        system_instruction: system.map(|text| Content {
            role: None,
            parts: vec![Part::text(text)],
        }),
        tools: tools(body)?,
        tool_config: tool_config(body.get("tool_choice"), body.get("function_call"))?,
        generation_config: generation_config(body)?,
    })
}

/// Fields translated below.
const TRANSLATED: &[&str] = &[
    "model",
    "messages",
    "temperature",
    "top_p",
    "top_k",
    "n",
    "presence_penalty",
    "frequency_penalty",
    "seed",
    "max_tokens",
    "max_completion_tokens",
    "stop",
    "response_format",
    "tools",
    "functions",
    "tool_choice",
    "function_call",
    "reasoning_effort",
];

/// Fields that change nothing Gemini could do: the stream flags (the gateway's own),
/// OpenAI's account features (`store`, `metadata`, `service_tier`, `prompt_cache_key`), the
/// end-user ids for abuse monitoring, Predicted Outputs (a latency hint that never changes
/// the answer), and `parallel_tool_calls` (Gemini has no switch for it; false only means at
/// most one call, which the answer may still honour).
const IGNORED: &[&str] = &[
    "stream",
    "stream_options",
    "store",
    "metadata",
    "service_tier",
    "prompt_cache_key",
    "user",
    "safety_identifier",
    "prediction",
    "parallel_tool_calls",
];

/// Refuses every field that is neither translated nor ignorable, so no part of a request is
/// silently left out. A field set to its "off" value changes nothing and passes.
fn check_fields(body: &Map<String, Value>) -> Result<(), ProviderError> {
    for (field, value) in body {
        if TRANSLATED.contains(&field.as_str()) || IGNORED.contains(&field.as_str()) {
            continue;
        }
        let off = match (field.as_str(), value) {
            (_, Value::Null) => true,
            ("logprobs", Value::Bool(false)) => true,
            ("top_logprobs", v) => v.as_u64() == Some(0),
            ("logit_bias", Value::Object(bias)) => bias.is_empty(),
            // Text is what Gemini answers with.
            ("modalities", Value::Array(m)) => m.iter().all(|m| m == "text"),
            _ => false,
        };
        if !off {
            return Err(bad_request(format!(
                "{field}: cannot be sent to Gemini (its API has no equivalent)"
            )));
        }
    }
    Ok(())
}

/// Turns in the making: a role and its parts.
type Turn = (&'static str, Vec<Part>);

/// The system instruction (every system and developer message, joined) and the turns.
fn contents(messages: &[Value]) -> Result<(Option<String>, Vec<Content>), ProviderError> {
    let mut system = Vec::new();
    let mut turns: Vec<Turn> = Vec::new();
    // Gemini names the function a result is for; OpenAI refers to the call's id.
    let mut call_names: HashMap<String, String> = HashMap::new();
    for (i, message) in messages.iter().enumerate() {
        let role = message.get("role").and_then(Value::as_str).unwrap_or("");
        let (role, parts) = match role {
            "system" | "developer" => {
                system.push(text_only(message.get("content"), i)?);
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
        .map(|(role, parts)| Content {
            role: Some(role.to_owned()),
            parts,
        })
        .collect();
    let system = system
        .into_iter()
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>();
    Ok(((!system.is_empty()).then(|| system.join("\n\n")), contents))
}

/// Appends a turn, merged into the previous one when the role is the same (Gemini wants
/// turns to alternate). Turns without parts are dropped: Gemini refuses empty ones.
fn push_turn(turns: &mut Vec<Turn>, role: &'static str, parts: Vec<Part>) {
    if parts.is_empty() {
        return;
    }
    match turns.last_mut() {
        Some((last, existing)) if *last == role => existing.extend(parts),
        _ => turns.push((role, parts)),
    }
}

/// The text of a content that can only be text (system, developer and tool messages): a
/// string, or text parts joined; any other part is refused, not dropped.
fn text_only(content: Option<&Value>, i: usize) -> Result<String, ProviderError> {
    match content {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Array(parts)) => parts
            .iter()
            .enumerate()
            .map(|(j, part)| match part.get("type").and_then(Value::as_str) {
                Some("text") => Ok(part.get("text").and_then(Value::as_str).unwrap_or("")),
                other => Err(bad_request(format!(
                    "messages[{i}].content[{j}]: a `{}` part cannot be sent to Gemini in this message (text only)",
                    other.unwrap_or("(none)")
                ))),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(|texts| texts.join("\n")),
        _ => Ok(String::new()),
    }
}

/// A user message's parts: text, images (inline or by URI), audio and files.
fn user_parts(content: Option<&Value>, i: usize) -> Result<Vec<Part>, ProviderError> {
    match content {
        Some(Value::String(s)) => Ok(vec![Part::text(s.as_str())]),
        Some(Value::Array(parts)) => parts
            .iter()
            .enumerate()
            .map(|(j, part)| user_part(part, i, j))
            .collect(),
        _ => Ok(Vec::new()),
    }
}

/// An inline-data part.
fn inline(mime_type: impl Into<String>, data: impl Into<String>) -> Part {
    Part {
        inline_data: Some(Blob {
            mime_type: mime_type.into(),
            data: data.into(),
        }),
        ..Part::default()
    }
}

fn user_part(part: &Value, i: usize, j: usize) -> Result<Part, ProviderError> {
    let at = format!("messages[{i}].content[{j}]");
    match part.get("type").and_then(Value::as_str) {
        Some("text") => Ok(Part::text(
            part.get("text").and_then(Value::as_str).unwrap_or(""),
        )),
        Some("image_url") => {
            let image = part.get("image_url");
            // `{"url": …}` as OpenAI documents it; a bare string as some clients send.
            let url = image
                .and_then(|i| i.get("url"))
                .or(image)
                .and_then(Value::as_str)
                .ok_or_else(|| bad_request(format!("{at}: image_url has no url")))?;
            if url.starts_with("data:") {
                let (mime, data) = data_url(url).ok_or_else(|| {
                    bad_request(format!(
                        "{at}: a data URL must be `data:<type>;base64,<data>`"
                    ))
                })?;
                Ok(inline(mime, data))
            } else {
                Ok(Part {
                    file_data: Some(FileData {
                        mime_type: None,
                        file_uri: url.to_owned(),
                    }),
                    ..Part::default()
                })
            }
        }
        // OpenAI's `input_audio` is wav or mp3 (base64); Gemini reads both inline as
        // `audio/wav` and `audio/mp3` (ai.google.dev/gemini-api/docs/audio).
        Some("input_audio") => {
            let audio = part.get("input_audio");
            let data = audio.and_then(|a| a.get("data")).and_then(Value::as_str);
            let format = audio.and_then(|a| a.get("format")).and_then(Value::as_str);
            match (data, format) {
                (Some(data), Some(format @ ("wav" | "mp3"))) => {
                    Ok(inline(format!("audio/{format}"), data))
                }
                (Some(_), Some(other)) => Err(bad_request(format!(
                    "{at}: input_audio format `{other}` is not one of wav, mp3"
                ))),
                _ => Err(bad_request(format!(
                    "{at}: input_audio needs data and format"
                ))),
            }
        }
        // OpenAI's `file` part: base64 `file_data` (a data URL, or bare base64 with a
        // `filename`) goes inline with its type, e.g. `application/pdf`, which Gemini reads
        // as a document (ai.google.dev/gemini-api/docs/document-processing). A `file_id`
        // names a file in OpenAI's storage, which Gemini cannot reach.
        Some("file") => {
            let file = part.get("file").unwrap_or(&Value::Null);
            if file.get("file_id").is_some_and(|id| !id.is_null()) {
                return Err(bad_request(format!(
                    "{at}: file.file_id refers to OpenAI's file storage, which Gemini cannot read; send file_data"
                )));
            }
            let data = file
                .get("file_data")
                .and_then(Value::as_str)
                .ok_or_else(|| bad_request(format!("{at}: file needs file_data")))?;
            if let Some((mime, data)) = data_url(data) {
                return Ok(inline(mime, data));
            }
            let filename = file.get("filename").and_then(Value::as_str).unwrap_or("");
            match mime_of(filename) {
                Some(mime) if !data.starts_with("data:") => Ok(inline(mime, data)),
                _ => Err(bad_request(format!(
                    "{at}: file.file_data must be a `data:<type>;base64,` URL, or base64 with a filename of a known type"
                ))),
            }
        }
        other => Err(bad_request(format!(
            "{at}: content part type `{}` cannot be sent to Gemini",
            other.unwrap_or("(none)")
        ))),
    }
}

/// The media type of a file name Gemini reads as a document.
fn mime_of(filename: &str) -> Option<&'static str> {
    let extension = filename.rsplit_once('.')?.1.to_ascii_lowercase();
    match extension.as_str() {
        "pdf" => Some("application/pdf"),
        "txt" => Some("text/plain"),
        "md" => Some("text/markdown"),
        "csv" => Some("text/csv"),
        "html" | "htm" => Some("text/html"),
        "xml" => Some("text/xml"),
        _ => None,
    }
}

/// `data:image/png;base64,AAAA` → (`image/png`, `AAAA`).
fn data_url(url: &str) -> Option<(&str, &str)> {
    let (header, data) = url.strip_prefix("data:")?.split_once(',')?;
    let mime = header.strip_suffix(";base64")?;
    if mime.is_empty() || data.is_empty() {
        return None;
    }
    Some((mime, data))
}

/// An assistant message's parts: its text (and a refusal, which is what it said), then a
/// `functionCall` per tool call with the thought signature its id carries. Remembers each
/// call's function name by id, for the tool results that follow.
fn assistant_parts(
    message: &Value,
    i: usize,
    call_names: &mut HashMap<String, String>,
) -> Result<Vec<Part>, ProviderError> {
    if message.get("audio").is_some_and(|a| !a.is_null()) {
        return Err(bad_request(format!(
            "messages[{i}].audio: an OpenAI audio answer cannot be sent to Gemini"
        )));
    }
    let mut parts = Vec::new();
    let text = match message.get("content") {
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(j, part)| match part.get("type").and_then(Value::as_str) {
                Some("text") => Ok(part.get("text").and_then(Value::as_str).unwrap_or("")),
                Some("refusal") => Ok(part.get("refusal").and_then(Value::as_str).unwrap_or("")),
                other => Err(bad_request(format!(
                    "messages[{i}].content[{j}]: a `{}` part cannot be sent to Gemini in an assistant message",
                    other.unwrap_or("(none)")
                ))),
            })
            .collect::<Result<Vec<_>, _>>()?
            .join("\n"),
        other => text_only(other, i)?,
    };
    if !text.is_empty() {
        parts.push(Part::text(text));
    }
    if let Some(refusal) = message.get("refusal").and_then(Value::as_str) {
        parts.push(Part::text(refusal));
    }
    let calls = message
        .get("tool_calls")
        .and_then(Value::as_array)
        .map_or(&[][..], Vec::as_slice);
    for (j, call) in calls.iter().enumerate() {
        let at = format!("messages[{i}].tool_calls[{j}]");
        if let Some(kind) = call
            .get("type")
            .and_then(Value::as_str)
            .filter(|t| *t != "function")
        {
            return Err(bad_request(format!(
                "{at}: a `{kind}` tool call cannot be sent to Gemini"
            )));
        }
        let function = call.get("function").unwrap_or(&Value::Null);
        let (name, args) = function_call(function, &at)?;
        let id = call.get("id").and_then(Value::as_str);
        if let Some(id) = id {
            call_names.insert(id.to_owned(), name.to_owned());
        }
        parts.push(Part {
            function_call: Some(FunctionCall {
                id: None,
                name: name.to_owned(),
                args: Some(args),
            }),
            thought_signature: id.and_then(call_id::signature),
            ..Part::default()
        });
    }
    // The legacy single `function_call`.
    if let Some(function) = message.get("function_call").filter(|f| !f.is_null()) {
        let (name, args) = function_call(function, &format!("messages[{i}].function_call"))?;
        parts.push(Part {
            function_call: Some(FunctionCall {
                id: None,
                name: name.to_owned(),
                args: Some(args),
            }),
            ..Part::default()
        });
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
) -> Result<Part, ProviderError> {
    let id = message
        .get("tool_call_id")
        .and_then(Value::as_str)
        .unwrap_or("");
    let name = call_names.get(id).ok_or_else(|| {
        bad_request(format!(
            "messages[{i}]: tool_call_id `{id}` matches no earlier assistant tool call"
        ))
    })?;
    Ok(function_response(
        name,
        text_only(message.get("content"), i)?,
    ))
}

/// A legacy `function` message (it names its function itself).
fn function_result(message: &Value, i: usize) -> Result<Part, ProviderError> {
    let name = message
        .get("name")
        .and_then(Value::as_str)
        .ok_or_else(|| bad_request(format!("messages[{i}]: a function message needs a name")))?;
    Ok(function_response(
        name,
        text_only(message.get("content"), i)?,
    ))
}

/// `functionResponse{name, response}`: the content if it is a JSON object, else
/// `{"content": text}` (Gemini wants an object).
fn function_response(name: &str, text: String) -> Part {
    let response = match serde_json::from_str::<Value>(&text) {
        Ok(object @ Value::Object(_)) => object,
        _ => json!({ "content": text }),
    };
    Part {
        function_response: Some(FunctionResponse {
            name: name.to_owned(),
            response,
        }),
        ..Part::default()
    }
}

/// `generationConfig` from OpenAI's sampling, limit, format and reasoning fields.
fn generation_config(body: &Map<String, Value>) -> Result<GenerationConfig, ProviderError> {
    let present = |field: &str| body.get(field).filter(|v| !v.is_null()).cloned();
    let seed = present("seed");
    // Gemini's seed is an int32; OpenAI's may be any 64-bit integer.
    if seed
        .as_ref()
        .is_some_and(|s| s.as_i64().and_then(|s| i32::try_from(s).ok()).is_none())
    {
        return Err(bad_request(
            "seed: Gemini takes a 32-bit seed (from -2147483648 to 2147483647)",
        ));
    }
    // A ceiling above what the field holds means the same as the largest it holds: no model
    // writes two billion tokens.
    let max_output_tokens = present("max_completion_tokens")
        .or_else(|| present("max_tokens"))
        .and_then(|m| m.as_u64())
        .map(|m| m.min(INT32_MAX));
    let stop_sequences = match present("stop") {
        Some(Value::String(s)) => Some(vec![Value::String(s)]),
        Some(Value::Array(stops)) => Some(stops),
        _ => None,
    };
    let (response_mime_type, response_json_schema) = response_format(body.get("response_format"))?;
    Ok(GenerationConfig {
        temperature: present("temperature"),
        top_p: present("top_p"),
        top_k: present("top_k"),
        candidate_count: present("n"),
        presence_penalty: present("presence_penalty"),
        frequency_penalty: present("frequency_penalty"),
        seed,
        max_output_tokens,
        stop_sequences,
        response_mime_type,
        response_json_schema,
        thinking_config: thinking_config(body)?,
    })
}

/// `responseMimeType` and `responseJsonSchema` from `response_format`.
fn response_format(
    format: Option<&Value>,
) -> Result<(Option<&'static str>, Option<Value>), ProviderError> {
    let Some(format) = format.filter(|f| !f.is_null()) else {
        return Ok((None, None));
    };
    match format.get("type").and_then(Value::as_str) {
        Some("text") => Ok((None, None)),
        Some("json_object") => Ok((Some("application/json"), None)),
        Some("json_schema") => {
            let schema = format
                .get("json_schema")
                .and_then(|s| s.get("schema"))
                .filter(|s| !s.is_null())
                .cloned();
            Ok((Some("application/json"), schema))
        }
        other => Err(bad_request(format!(
            "response_format.type `{}` cannot be sent to Gemini",
            other.unwrap_or("(none)")
        ))),
    }
}

/// `thinkingConfig` from `reasoning_effort`: Gemini 3 takes the level itself
/// (`thinkingLevel`; OpenAI's `none` is its `minimal`); Gemini 2.5 a token budget, with
/// the figures Google's own OpenAI-compatible endpoint uses (low 1,024, medium 8,192, high
/// 24,576; none 0), per ai.google.dev/gemini-api/docs/openai#thinking.
fn thinking_config(body: &Map<String, Value>) -> Result<Option<ThinkingConfig>, ProviderError> {
    let Some(effort) = body.get("reasoning_effort").filter(|e| !e.is_null()) else {
        return Ok(None);
    };
    let effort = effort.as_str().ok_or_else(|| {
        bad_request("reasoning_effort: one of none, minimal, low, medium, high, xhigh")
    })?;
    let model = super::request_model(body);
    let model = model.strip_prefix("models/").unwrap_or(model);
    if model.starts_with("gemini-3") {
        let level = if effort == "none" { "minimal" } else { effort };
        return Ok(Some(ThinkingConfig {
            thinking_level: Some(level.to_owned()),
            thinking_budget: None,
        }));
    }
    let budget = match effort {
        "none" => 0,
        "minimal" | "low" => 1024,
        "medium" => 8192,
        "high" | "xhigh" => 24_576,
        other => {
            return Err(bad_request(format!(
                "reasoning_effort `{other}` is not one of none, minimal, low, medium, high, xhigh"
            )));
        }
    };
    Ok(Some(ThinkingConfig {
        thinking_level: None,
        thinking_budget: Some(budget),
    }))
}

/// `FunctionDeclaration.name`: "Must be a-z, A-Z, 0-9, or contain underscores, colons, dots,
/// and dashes, with a maximum length of 64" (Gemini API reference).
fn valid_function_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | ':' | '.' | '-'))
}

/// `tools: [{functionDeclarations: […]}]` from OpenAI's function tools (and the legacy
/// `functions`); empty when there are none. Other tool types are refused.
fn tools(body: &Map<String, Value>) -> Result<Vec<Tool>, ProviderError> {
    let listed = |field: &str| {
        body.get(field)
            .and_then(Value::as_array)
            .map_or(&[][..], Vec::as_slice)
    };
    let mut declarations = Vec::new();
    for (i, tool) in listed("tools").iter().enumerate() {
        match tool.get("type").and_then(Value::as_str) {
            Some("function") => {}
            other => {
                return Err(bad_request(format!(
                    "tools[{i}]: a `{}` tool cannot be sent to Gemini (function tools only)",
                    other.unwrap_or("(none)")
                )));
            }
        }
        let function = tool.get("function").unwrap_or(&Value::Null);
        declarations.push(declaration(function, &format!("tools[{i}].function"))?);
    }
    for (i, function) in listed("functions").iter().enumerate() {
        declarations.push(declaration(function, &format!("functions[{i}]"))?);
    }
    if declarations.is_empty() {
        return Ok(Vec::new());
    }
    Ok(vec![Tool {
        function_declarations: declarations,
    }])
}

/// One `FunctionDeclaration`, the parameters' JSON Schema as it came. A function without
/// arguments has none ("For function with no parameters, this can be left unset").
fn declaration(function: &Value, at: &str) -> Result<FunctionDeclaration, ProviderError> {
    let name = function
        .get("name")
        .and_then(Value::as_str)
        .ok_or_else(|| bad_request(format!("{at}.name: a function needs a name")))?;
    if !valid_function_name(name) {
        return Err(bad_request(format!(
            "{at}.name: `{name}` is not a Gemini function name (letters, digits, `_`, `:`, `.`, `-`; at most 64)"
        )));
    }
    let parameters = function
        .get("parameters")
        .filter(|p| !takes_no_arguments(p))
        .cloned();
    Ok(FunctionDeclaration {
        name: name.to_owned(),
        description: function
            .get("description")
            .filter(|d| !d.is_null())
            .cloned(),
        parameters_json_schema: parameters,
    })
}

/// Whether a parameters schema describes no arguments at all: an object schema with no
/// properties and nothing else that could admit one.
fn takes_no_arguments(schema: &Value) -> bool {
    let Some(fields) = schema.as_object() else {
        return schema.is_null();
    };
    let no_properties = fields
        .get("properties")
        .is_none_or(|p| p.as_object().is_some_and(Map::is_empty));
    let closed = fields
        .get("additionalProperties")
        .is_none_or(|a| *a == Value::Bool(false));
    let inert = |k: &str| {
        matches!(
            k,
            "type"
                | "properties"
                | "required"
                | "additionalProperties"
                | "$schema"
                | "title"
                | "description"
        )
    };
    no_properties && closed && fields.keys().all(|k| inert(k))
}

/// `toolConfig.functionCallingConfig` from `tool_choice` (or the legacy `function_call`).
fn tool_config(
    choice: Option<&Value>,
    legacy: Option<&Value>,
) -> Result<Option<ToolConfig>, ProviderError> {
    let (choice, field) = match (choice.filter(|c| !c.is_null()), legacy) {
        (Some(choice), _) => (choice, "tool_choice"),
        (None, Some(legacy)) if !legacy.is_null() => (legacy, "function_call"),
        _ => return Ok(None),
    };
    let (mode, allowed) = match choice {
        Value::String(mode) => match mode.as_str() {
            "none" => ("NONE", None),
            "auto" => ("AUTO", None),
            "required" => ("ANY", None),
            other => return Err(bad_request(format!("{field} `{other}` is not known"))),
        },
        named => {
            let name = named
                .get("function")
                .unwrap_or(named)
                .get("name")
                .and_then(Value::as_str)
                .ok_or_else(|| bad_request(format!("{field} must name a function")))?;
            ("ANY", Some(vec![name.to_owned()]))
        }
    };
    Ok(Some(ToolConfig {
        function_calling_config: FunctionCallingConfig {
            mode,
            allowed_function_names: allowed,
        },
    }))
}
#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::tests::{object, status_400};
    use super::*;

    /// The translated request as JSON, as it goes on the wire.
    fn translate(body: &Map<String, Value>) -> Value {
        serde_json::to_value(generate_request(body).unwrap()).unwrap()
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
        let request = translate(&body);
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
    fn max_completion_tokens_wins_and_json_schema_becomes_a_response_json_schema() {
        let schema = json!({"type": "object", "properties": {"a": {"type": "string"}}});
        let body = object(json!({
            "model": "m", "messages": [{"role": "user", "content": "x"}],
            "max_tokens": 10, "max_completion_tokens": 20, "stop": ["a", "b"],
            "response_format": {"type": "json_schema", "json_schema": {"name": "s", "schema": schema}}
        }));
        let config = &translate(&body)["generationConfig"];
        assert_eq!(config["maxOutputTokens"], 20);
        assert_eq!(config["stopSequences"], json!(["a", "b"]));
        assert_eq!(config["responseMimeType"], "application/json");
        assert_eq!(config["responseJsonSchema"], schema);
        assert!(config.get("responseSchema").is_none());
        let plain = object(json!({"model": "m", "messages": [{"role": "user", "content": "x"}]}));
        assert!(translate(&plain).get("generationConfig").is_none());
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
        let request = translate(&body);
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
                 "parametersJsonSchema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}},
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
            let config =
                serde_json::to_value(tool_config(Some(&json!(choice)), None).unwrap()).unwrap();
            assert_eq!(config["functionCallingConfig"], json!({ "mode": mode }));
        }
        assert!(tool_config(None, None).unwrap().is_none());
        assert!(tool_config(Some(&json!("sometimes")), None).is_err());
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

    /// What OpenAI's strict tools, the SDKs' `.parse()` and MCP servers send: JSON Schema that
    /// Gemini's `Schema` refuses. It goes as JSON Schema, unchanged.
    #[test]
    fn json_schema_goes_as_json_schema_unchanged() {
        let schema = json!({
            "$schema": "http://json-schema.org/draft-07/schema#",
            "type": "object",
            "properties": {
                "unit": {"type": ["string", "null"], "enum": ["c", "f", null]},
                "kind": {"const": "weather"},
                "place": {"$ref": "#/$defs/place"}
            },
            "$defs": {"place": {"type": "object", "properties": {"city": {"type": "string"}},
                                "required": ["city"], "additionalProperties": false}},
            "required": ["unit", "kind", "place"],
            "additionalProperties": false
        });
        let body = object(json!({
            "model": "gemini-2.5-flash", "messages": [{"role": "user", "content": "x"}],
            "tools": [{"type": "function", "function": {"name": "get_weather", "strict": true, "parameters": schema}}],
            "response_format": {"type": "json_schema", "json_schema": {"name": "out", "strict": true, "schema": schema}}
        }));
        let request = translate(&body);
        let declaration = &request["tools"][0]["functionDeclarations"][0];
        assert_eq!(declaration["parametersJsonSchema"], schema);
        assert!(declaration.get("parameters").is_none());
        assert_eq!(request["generationConfig"]["responseJsonSchema"], schema);
        // A function of no arguments has none; one taking any arguments keeps its schema.
        for (parameters, kept) in [
            (
                json!({"type": "object", "properties": {}, "additionalProperties": false}),
                false,
            ),
            (json!({"type": "object"}), false),
            (
                json!({"type": "object", "additionalProperties": true}),
                true,
            ),
            (
                json!({"type": "object", "anyOf": [{"required": ["a"]}]}),
                true,
            ),
        ] {
            let body = object(
                json!({"model": "m", "messages": [{"role": "user", "content": "x"}],
                "tools": [{"type": "function", "function": {"name": "f", "parameters": parameters}}]}),
            );
            let declaration = &translate(&body)["tools"][0]["functionDeclarations"][0];
            assert_eq!(
                declaration.get("parametersJsonSchema").is_some(),
                kept,
                "{parameters}"
            );
        }
    }

    #[test]
    fn a_tool_call_id_gives_its_thought_signature_back() {
        let id = call_id::encode("call_abc", Some("CiQB0e2Kb+/9xQ=="));
        let body = object(json!({"model": "gemini-3-pro-preview", "messages": [
            {"role": "user", "content": "Flight AA100 and the weather in Paris?"},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": id, "type": "function", "function": {"name": "check_flight", "arguments": "{\"flight\":\"AA100\"}"}},
                {"id": "call_def", "type": "function", "function": {"name": "check_weather", "arguments": "{\"city\":\"Paris\"}"}}]},
            {"role": "tool", "tool_call_id": id, "content": "on time"},
            {"role": "tool", "tool_call_id": "call_def", "content": "sunny"}
        ]}));
        let contents = &translate(&body)["contents"];
        assert_eq!(
            contents[1],
            json!({"role": "model", "parts": [
                {"functionCall": {"name": "check_flight", "args": {"flight": "AA100"}},
                 "thoughtSignature": "CiQB0e2Kb+/9xQ=="},
                {"functionCall": {"name": "check_weather", "args": {"city": "Paris"}}}]})
        );
        assert_eq!(
            contents[2]["parts"][0]["functionResponse"]["name"],
            "check_flight"
        );
    }

    #[test]
    fn files_audio_and_reasoning_effort_are_translated() {
        let body = object(
            json!({"model": "gemini-2.5-flash", "reasoning_effort": "medium", "messages": [
                {"role": "user", "content": [
                    {"type": "file", "file": {"filename": "a.pdf", "file_data": "data:application/pdf;base64,JVBERi0x"}},
                    {"type": "file", "file": {"filename": "b.pdf", "file_data": "JVBERi0y"}},
                    {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}},
                    {"type": "input_audio", "input_audio": {"data": "SUQz", "format": "mp3"}}
                ]}
            ]}),
        );
        let request = translate(&body);
        assert_eq!(
            request["contents"][0]["parts"],
            json!([
                {"inlineData": {"mimeType": "application/pdf", "data": "JVBERi0x"}},
                {"inlineData": {"mimeType": "application/pdf", "data": "JVBERi0y"}},
                {"inlineData": {"mimeType": "audio/wav", "data": "UklGRg=="}},
                {"inlineData": {"mimeType": "audio/mp3", "data": "SUQz"}}
            ])
        );
        assert_eq!(
            request["generationConfig"]["thinkingConfig"],
            json!({"thinkingBudget": 8192})
        );
        for (effort, budget) in [("none", 0), ("low", 1024), ("high", 24_576)] {
            let body = object(
                json!({"model": "models/gemini-2.5-pro", "reasoning_effort": effort,
                "messages": [{"role": "user", "content": "x"}]}),
            );
            assert_eq!(
                translate(&body)["generationConfig"]["thinkingConfig"],
                json!({ "thinkingBudget": budget })
            );
        }
        for (effort, level) in [("low", "low"), ("high", "high"), ("none", "minimal")] {
            let body = object(
                json!({"model": "gemini-3-flash-preview", "reasoning_effort": effort,
                "messages": [{"role": "user", "content": "x"}]}),
            );
            assert_eq!(
                translate(&body)["generationConfig"]["thinkingConfig"],
                json!({ "thinkingLevel": level })
            );
        }
    }

    #[test]
    fn what_gemini_cannot_take_is_refused_naming_the_field() {
        let user = |content: Value| json!([{"role": "user", "content": content}]);
        let refused = [
            (json!({"logprobs": true}), "logprobs"),
            (json!({"top_logprobs": 3}), "top_logprobs"),
            (json!({"logit_bias": {"50256": -100}}), "logit_bias"),
            (json!({"web_search_options": {}}), "web_search_options"),
            (json!({"modalities": ["text", "audio"]}), "modalities"),
            (
                json!({"audio": {"voice": "alloy", "format": "wav"}}),
                "audio",
            ),
            (json!({"verbosity": "low"}), "verbosity"),
            (json!({"seed": 4_294_967_296_u64}), "seed"),
            (json!({"reasoning_effort": "extreme"}), "reasoning_effort"),
            (
                json!({"response_format": {"type": "grammar"}}),
                "response_format",
            ),
            (
                json!({"tools": [{"type": "custom", "custom": {"name": "x"}}]}),
                "tools[0]",
            ),
            (
                json!({"tools": [{"type": "function", "function": {"name": "a/b"}}]}),
                "tools[0].function.name",
            ),
            (
                json!({"messages": user(json!([{"type": "file", "file": {"file_id": "file-abc"}}]))}),
                "file_id",
            ),
            (
                json!({"messages": user(json!([{"type": "input_audio", "input_audio": {"data": "x", "format": "flac"}}]))}),
                "flac",
            ),
            (
                json!({"messages": [{"role": "system", "content": [{"type": "image_url", "image_url": {"url": "https://x/y.png"}}]},
                                 {"role": "user", "content": "x"}]}),
                "messages[0].content[0]",
            ),
            (
                json!({"messages": [{"role": "user", "content": "x"},
                {"role": "assistant", "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
                {"role": "tool", "tool_call_id": "c", "content": [{"type": "image_url", "image_url": {"url": "https://x/y.png"}}]}]}),
                "messages[2].content[0]",
            ),
        ];
        for (fields, named) in refused {
            let mut body =
                object(json!({"model": "gemini-2.5-flash", "messages": user(json!("x"))}));
            body.extend(object(fields.clone()));
            let message = status_400(generate_request(&body).unwrap_err());
            assert!(message.contains(named), "{fields}: {message}");
        }
        // Off values and fields with nothing to translate pass.
        let body = object(
            json!({"model": "m", "messages": user(json!("x")), "logprobs": false,
            "top_logprobs": 0, "logit_bias": {}, "modalities": ["text"], "user": "u-1", "store": true,
            "metadata": {"a": "b"}, "parallel_tool_calls": false, "stream_options": {"include_usage": true},
            "prediction": {"type": "content", "content": "x"}, "service_tier": "auto"}),
        );
        assert!(generate_request(&body).is_ok());
    }

    #[test]
    fn int32_limits_are_met() {
        let body = object(
            json!({"model": "m", "messages": [{"role": "user", "content": "x"}],
            "max_tokens": u64::MAX, "seed": -7}),
        );
        let config = &translate(&body)["generationConfig"];
        assert_eq!(config["maxOutputTokens"], 2_147_483_647);
        assert_eq!(config["seed"], -7);
    }
}
