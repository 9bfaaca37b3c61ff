//! Google Gemini's format, from its public API reference: `GenerateContentResponse` bodies
//! (candidates, `model`-role content parts, `finishReason`, `usageMetadata`, `modelVersion`,
//! `responseId`), `streamGenerateContent` as SSE events (`?alt=sse`) or a JSON array,
//! `batchEmbedContents`, and `google.rpc.Status` error bodies
//! (`{"error":{"code":400,"message":…,"status":"INVALID_ARGUMENT"}}`) with `RetryInfo`.
//!
//! The fake refuses what the real API refuses, each rule with its source next to it
//! ([`invalid_generation`], [`invalid_schema`], [`invalid_embedding`]): roles, the order of
//! function-call and function-response turns, the `Schema` subset (`parameters`,
//! `responseSchema`) against the JSON Schema fields (`parametersJsonSchema`,
//! `responseJsonSchema`), function names, `generationConfig` ranges, Gemini 3's thought
//! signatures, and the 100-request embedding batch.
//!
//! What it answers, deterministically:
//! - text `fake answer #n`, or a call of the first declared function with
//!   `{"query": <the last user text>}`, or `tool said: <result>` after a function response;
//! - on thinking models (`gemini-2.5…`, `gemini-3…`) a `thoughtSignature` on the function
//!   call, or on the last text part, as Gemini 3 does (the signature names the function, so
//!   a signature replayed on the wrong call is refused);
//! - `usageMetadata`: 10 text prompt tokens and 5 candidate tokens; each `inlineData` audio
//!   part adds its base64 length as `AUDIO` prompt tokens; on thinking models, 7
//!   `thoughtsTokenCount`, and the system instruction counts one token per byte and is all
//!   reported as `cachedContentTokenCount` (Gemini 2.5+ caches repeated prefixes implicitly,
//!   and a gateway's system prompt is the prefix that repeats);
//! - embeddings whose full-size vectors (no `outputDimensionality`, or the model's full size)
//!   are unit length, and whose reduced ones are the full vector's prefix, not unit length —
//!   Google normalizes only gemini-embedding-001's 3,072-dimension output.
//!
//! One check is the fake's own: an API key in the query string (`?key=…`, which the real API
//! accepts) is refused, because Sluice must send it only in the `x-goog-api-key` header.

use axum::body::Body;
use axum::http::{StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde_json::{Map, Value, json};

use super::Behaviour;

/// The canonical `google.rpc.Code` name Google's APIs use for an HTTP status.
fn status_name(status: u16) -> &'static str {
    match status {
        400 => "INVALID_ARGUMENT",
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        409 => "ABORTED",
        429 => "RESOURCE_EXHAUSTED",
        500 => "INTERNAL",
        503 => "UNAVAILABLE",
        504 => "DEADLINE_EXCEEDED",
        _ => "UNKNOWN",
    }
}

/// Google's message for each status, prefixed so tests can tell it came from the fake.
fn status_message(status: u16) -> String {
    let reason = match status {
        400 => "Request contains an invalid argument.",
        401 => "Request had invalid authentication credentials.",
        403 => "Method doesn't allow unregistered callers.",
        404 => "models/unknown is not found for API version v1beta.",
        429 => "Resource has been exhausted (e.g. check quota).",
        500 => "An internal error has occurred.",
        503 => "The model is overloaded. Please try again later.",
        _ => "Unknown error.",
    };
    format!("fake gemini error {status}: {reason}")
}

/// A `google.rpc.Status` error body; with a wait, a `QuotaFailure` and a `RetryInfo` detail
/// as a real 429 carries them.
fn error_body(status: u16, message: &str, retry_after: Option<u64>) -> Value {
    let mut error = json!({"code": status, "message": message, "status": status_name(status)});
    if let Some(seconds) = retry_after {
        error["details"] = json!([
            {"@type": "type.googleapis.com/google.rpc.QuotaFailure",
             "violations": [{"quotaMetric": "generativelanguage.googleapis.com/generate_content_free_tier_requests",
                             "quotaId": "GenerateRequestsPerMinutePerProjectPerModel-FreeTier"}]},
            {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": format!("{seconds}s")}
        ]);
    }
    json!({ "error": error })
}

fn error(status: u16, message: &str, retry_after: Option<u64>) -> Response {
    (
        StatusCode::from_u16(status).unwrap(),
        axum::Json(error_body(status, message, retry_after)),
    )
        .into_response()
}

/// Answers one Gemini request (`Slow` has already waited).
pub(super) fn answer(behaviour: &Behaviour, n: usize, uri: &Uri, body: &Value) -> Response {
    match *behaviour {
        // `EchoKey` is answered before the format is chosen.
        Behaviour::Ok
        | Behaviour::Slow(_)
        | Behaviour::EchoKey(_)
        | Behaviour::CutOff
        | Behaviour::Truncated
        | Behaviour::Drip(_) => {}
        Behaviour::Status(status, retry_after) => {
            return error(status, &status_message(status), retry_after);
        }
        Behaviour::Garbage => {
            return (
                [(header::CONTENT_TYPE, "application/json")],
                "<html>oops</html>",
            )
                .into_response();
        }
        Behaviour::ErrorIn200 => {
            return axum::Json(error_body(500, &status_message(500), None)).into_response();
        }
    }
    let query = uri.query().unwrap_or("");
    if query.split('&').any(|p| p.starts_with("key=")) {
        return error(400, "the fake refuses API keys in the URL", None);
    }
    let Some((model, method)) = uri
        .path()
        .strip_prefix("/v1beta/models/")
        .and_then(|rest| rest.split_once(':'))
    else {
        return error(404, "no such method", None);
    };
    let checked = match method {
        "batchEmbedContents" => invalid_embedding(model, body),
        _ => invalid_generation(model, body),
    };
    if let Some(message) = checked {
        return error(400, &message, None);
    }
    match method {
        "generateContent" => axum::Json(generated(n, model, body)).into_response(),
        "streamGenerateContent" => streamed(n, model, body, query.contains("alt=sse")),
        "batchEmbedContents" => axum::Json(embeddings(model, body)).into_response(),
        other => error(
            404,
            &format!("Method {other} is not found for models/{model}."),
            None,
        ),
    }
}

// ---- the rules ------------------------------------------------------------------------------

/// Gemini 3 models: strict thought-signature validation.
fn is_gemini_3(model: &str) -> bool {
    model.starts_with("gemini-3")
}

/// Models that think, return thought signatures and cache implicitly (2.5 and later).
fn is_thinking(model: &str) -> bool {
    model.starts_with("gemini-2.5") || is_gemini_3(model)
}

/// What the real API refuses in a `GenerateContentRequest` before generating anything.
fn invalid_generation(model: &str, body: &Value) -> Option<String> {
    let Some(contents) = body["contents"].as_array().filter(|c| !c.is_empty()) else {
        return Some("* GenerateContentRequest.contents: contents is not specified".into());
    };
    for (i, content) in contents.iter().enumerate() {
        // `Content.role`: "Must be either 'user' or 'model'" (ai.google.dev/api/caching#Content).
        let role = content["role"].as_str().unwrap_or("");
        if role != "user" && role != "model" {
            return Some(format!(
                "* GenerateContentRequest.contents[{i}].role: Please use a valid role: user, model."
            ));
        }
        let Some(parts) = content["parts"].as_array().filter(|p| !p.is_empty()) else {
            return Some(format!(
                "* GenerateContentRequest.contents[{i}].parts: contents.parts must not be empty."
            ));
        };
        for (j, part) in parts.iter().enumerate() {
            if let Some(message) = invalid_part(part, &format!("contents[{i}].parts[{j}]")) {
                return Some(message);
            }
        }
    }
    invalid_turn_order(contents)
        .or_else(|| {
            is_gemini_3(model)
                .then(|| missing_signature(contents))
                .flatten()
        })
        .or_else(|| invalid_tools(body))
        .or_else(|| invalid_generation_config(&body["generationConfig"]))
}

/// A `Part` carries one kind of data, and a `thoughtSignature` (a `bytes` field: base64 in
/// JSON, `Part.thought_signature` in ai.google.dev/api/caching#Part) that this fake issued,
/// on the part it was issued for.
fn invalid_part(part: &Value, at: &str) -> Option<String> {
    let signature = part.get("thoughtSignature")?;
    let decoded = signature
        .as_str()
        .and_then(|s| base64::engine::general_purpose::STANDARD.decode(s).ok())
        .map(|b| String::from_utf8_lossy(&b).into_owned());
    let Some(decoded) = decoded else {
        return Some(format!(
            "Invalid value at '{at}.thought_signature' (TYPE_BYTES), Base64 decoding failed"
        ));
    };
    let expected = match part["functionCall"]["name"].as_str() {
        Some(name) => format!("{SIGNATURE_PREFIX}{name}:"),
        None => format!("{SIGNATURE_PREFIX}text:"),
    };
    // Signatures are opaque and bound to the part they came with; one moved to another part
    // fails Google's validation too ("Thought signature is not valid").
    (!decoded.starts_with(&expected))
        .then(|| format!("Unable to submit request because Thought signature is not valid ({at})."))
}

/// Function calling turns, as Gemini enforces them (the messages are Google's own, e.g.
/// google-gemini/gemini-cli#11814, #17208, langchain-ai/langchain#27799): function calls are
/// `model` turns that follow a user turn or a function response turn; function responses
/// are `user` turns right after the function call turn, one response per call.
fn invalid_turn_order(contents: &[Value]) -> Option<String> {
    let count = |content: &Value, kind: &str| {
        content["parts"].as_array().map_or(0, |parts| {
            parts.iter().filter(|p| p.get(kind).is_some()).count()
        })
    };
    for (i, content) in contents.iter().enumerate() {
        let previous = i.checked_sub(1).map(|p| &contents[p]);
        let calls = count(content, "functionCall");
        let responses = count(content, "functionResponse");
        if calls > 0 && (content["role"] != "model" || previous.is_none_or(|p| p["role"] != "user"))
        {
            return Some(
                "Please ensure that function call turn comes immediately after a user turn or after a function response turn."
                    .into(),
            );
        }
        if responses > 0 {
            let previous_calls = previous
                .filter(|p| p["role"] == "model")
                .map_or(0, |p| count(p, "functionCall"));
            if content["role"] != "user" || previous_calls == 0 {
                return Some(
                    "Please ensure that function response turn comes immediately after a function call turn."
                        .into(),
                );
            }
            if responses != previous_calls {
                return Some(
                    "Please ensure that the number of function response parts is equal to the number of function call parts of the function call turn."
                        .into(),
                );
            }
        }
    }
    None
}

/// Gemini 3's rule (ai.google.dev/gemini-api/docs/thought-signatures, "Validation"): in the
/// current turn — everything after the last `user` content with standard content, not a
/// function response — the first `functionCall` part of each model step must carry the
/// `thoughtSignature` it came with. Earlier turns are not validated.
fn missing_signature(contents: &[Value]) -> Option<String> {
    let standard = |c: &Value| {
        c["role"] == "user"
            && c["parts"]
                .as_array()
                .is_some_and(|parts| parts.iter().any(|p| p.get("functionResponse").is_none()))
    };
    let start = contents.iter().rposition(standard).map_or(0, |i| i + 1);
    for (i, content) in contents.iter().enumerate().skip(start) {
        let parts = content["parts"].as_array().map_or(&[][..], Vec::as_slice);
        let first_call = parts
            .iter()
            .enumerate()
            .find(|(_, p)| p.get("functionCall").is_some());
        if let Some((j, part)) = first_call
            && part.get("thoughtSignature").is_none()
        {
            let name = part["functionCall"]["name"].as_str().unwrap_or("");
            return Some(format!(
                "Function call is missing a thought_signature in functionCall parts. This is required for tools to work correctly, and missing thought_signature may lead to degraded model performance. Additional data, function call `default_api:{name}` , position {}. Please refer to https://ai.google.dev/gemini-api/docs/thought-signatures for more details.",
                i * 100 + j + 1
            ));
        }
    }
    None
}

/// `FunctionDeclaration.name`: "Must be a-z, A-Z, 0-9, or contain underscores, colons, dots,
/// and dashes, with a maximum length of 64" (the Gemini API v1beta reference; Vertex AI's
/// has no colons and wants a letter or an underscore first).
fn valid_function_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | ':' | '.' | '-'))
}

/// `tools[].functionDeclarations[]`: a valid name, and parameters as either a `Schema`
/// (`parameters`) or JSON Schema (`parametersJsonSchema`) — "This field is mutually exclusive
/// with parameters" (`FunctionDeclaration.parametersJsonSchema`).
fn invalid_tools(body: &Value) -> Option<String> {
    let tools = body["tools"].as_array().map_or(&[][..], Vec::as_slice);
    for (t, tool) in tools.iter().enumerate() {
        let declarations = tool["functionDeclarations"]
            .as_array()
            .map_or(&[][..], Vec::as_slice);
        for (d, declaration) in declarations.iter().enumerate() {
            let at = format!("tools[{t}].function_declarations[{d}]");
            let name = declaration["name"].as_str().unwrap_or("");
            if !valid_function_name(name) {
                return Some(format!(
                    "* GenerateContentRequest.{at}.name: Invalid function name. Must be alphameric (a-z, A-Z, 0-9), underscores (_), dots (.), colons (:) or dashes (-), with a maximum length of 64."
                ));
            }
            let schema = declaration.get("parameters");
            let json_schema = declaration.get("parametersJsonSchema");
            if schema.is_some() && json_schema.is_some() {
                return Some(format!(
                    "* GenerateContentRequest.{at}: parameters and parameters_json_schema are mutually exclusive."
                ));
            }
            if let Some(schema) = schema
                && let Some(message) = invalid_schema(schema, &format!("{at}.parameters"))
            {
                return Some(message);
            }
            // "The schema must describe an object where the properties are the parameters".
            if let Some(s) = json_schema
                && (!s.is_object() || s.get("type").is_some_and(|t| t != "object"))
            {
                return Some(format!(
                    "* GenerateContentRequest.{at}.parameters_json_schema: must describe an object."
                ));
            }
        }
    }
    None
}

/// The fields of Gemini's `Schema`, "a select subset of an OpenAPI 3.0 schema object"
/// (ai.google.dev/api/caching#Schema). Anything else — `additionalProperties`, `$schema`,
/// `$ref`, `$defs`, `const`, `oneOf`, `allOf` — is an unknown field of the proto and refused.
const SCHEMA_FIELDS: &[&str] = &[
    "type",
    "format",
    "title",
    "description",
    "nullable",
    "enum",
    "maxItems",
    "minItems",
    "properties",
    "required",
    "minProperties",
    "maxProperties",
    "minLength",
    "maxLength",
    "pattern",
    "example",
    "anyOf",
    "propertyOrdering",
    "default",
    "items",
    "minimum",
    "maximum",
];

/// `Schema.type` is one enum value (`Type`: STRING, NUMBER, INTEGER, BOOLEAN, ARRAY, OBJECT,
/// NULL); the REST examples write them in lower case, which the API accepts.
const SCHEMA_TYPES: &[&str] = &[
    "TYPE_UNSPECIFIED",
    "STRING",
    "NUMBER",
    "INTEGER",
    "BOOLEAN",
    "ARRAY",
    "OBJECT",
    "NULL",
];

/// What Gemini refuses in a `Schema` (the message is the proto parser's).
fn invalid_schema(schema: &Value, at: &str) -> Option<String> {
    let Some(fields) = schema.as_object() else {
        return Some(format!(
            "Invalid JSON payload received. Unknown value at '{at}': a Schema must be an object."
        ));
    };
    if let Some(unknown) = fields.keys().find(|k| !SCHEMA_FIELDS.contains(&k.as_str())) {
        return Some(format!(
            "Invalid JSON payload received. Unknown name \"{unknown}\" at '{at}': Cannot find field."
        ));
    }
    match fields.get("type") {
        None => {}
        Some(Value::Array(_)) => {
            return Some(format!(
                "Invalid JSON payload received. Proto field is not repeating, cannot start list at '{at}.type'."
            ));
        }
        Some(Value::String(t)) if SCHEMA_TYPES.contains(&t.to_ascii_uppercase().as_str()) => {}
        Some(other) => {
            return Some(format!(
                "Invalid value at '{at}.type' (type.googleapis.com/google.ai.generativelanguage.v1beta.Type), {other}"
            ));
        }
    }
    // `Schema.enum` is `string[]`.
    if let Some(values) = fields.get("enum")
        && !values
            .as_array()
            .is_some_and(|v| v.iter().all(Value::is_string))
    {
        return Some(format!(
            "Invalid value at '{at}.enum' (TYPE_STRING): enum values must be strings"
        ));
    }
    let is_object = fields
        .get("type")
        .and_then(Value::as_str)
        .is_some_and(|t| t.eq_ignore_ascii_case("object"));
    let properties = fields.get("properties").and_then(Value::as_object);
    if is_object && properties.is_none_or(Map::is_empty) {
        return Some(format!(
            "* GenerateContentRequest.{at}.properties: should be non-empty for OBJECT type"
        ));
    }
    for (name, property) in properties.into_iter().flatten() {
        if let Some(message) = invalid_schema(property, &format!("{at}.properties[{name}]")) {
            return Some(message);
        }
    }
    if let Some(items) = fields.get("items")
        && let Some(message) = invalid_schema(items, &format!("{at}.items"))
    {
        return Some(message);
    }
    for (k, variant) in fields
        .get("anyOf")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        if let Some(message) = invalid_schema(variant, &format!("{at}.any_of[{k}]")) {
            return Some(message);
        }
    }
    None
}

/// The fields of `GenerationConfig` (ai.google.dev/api/generate-content#generationconfig);
/// an OpenAI name sent by mistake is an unknown field.
const GENERATION_CONFIG_FIELDS: &[&str] = &[
    "stopSequences",
    "responseMimeType",
    "responseSchema",
    "responseJsonSchema",
    "responseModalities",
    "candidateCount",
    "maxOutputTokens",
    "temperature",
    "topP",
    "topK",
    "seed",
    "presencePenalty",
    "frequencyPenalty",
    "responseLogprobs",
    "logprobs",
    "enableEnhancedCivicAnswers",
    "speechConfig",
    "thinkingConfig",
    "imageConfig",
    "mediaResolution",
];

/// `generationConfig`'s ranges and combinations.
fn invalid_generation_config(config: &Value) -> Option<String> {
    let fields = config.as_object()?;
    let at = "generation_config";
    if let Some(unknown) = fields
        .keys()
        .find(|k| !GENERATION_CONFIG_FIELDS.contains(&k.as_str()))
    {
        return Some(format!(
            "Invalid JSON payload received. Unknown name \"{unknown}\" at '{at}': Cannot find field."
        ));
    }
    // Integer fields are `int32` in the proto: a larger number does not parse.
    for field in [
        "candidateCount",
        "maxOutputTokens",
        "seed",
        "topK",
        "logprobs",
    ] {
        if let Some(v) = fields.get(field)
            && v.as_i64().and_then(|v| i32::try_from(v).ok()).is_none()
        {
            return Some(format!("Invalid value at '{at}.{field}' (TYPE_INT32), {v}"));
        }
    }
    let number = |field: &str| fields.get(field).and_then(Value::as_f64);
    let int = |field: &str| fields.get(field).and_then(Value::as_i64);
    // `candidateCount`: "This value must be between [1, 8], inclusive" (google.ai.
    // generativelanguage.GenerationConfig).
    if let Some(n) = int("candidateCount")
        && !(1..=8).contains(&n)
    {
        return Some(format!(
            "* GenerateContentRequest.{at}.candidate_count: must be in the range [1, 8]."
        ));
    }
    // `temperature`: "Values can range from [0.0, 2.0]".
    if let Some(t) = number("temperature")
        && !(0.0..=2.0).contains(&t)
    {
        return Some(format!(
            "* GenerateContentRequest.{at}.temperature: temperature must be in the range [0.0, 2.0]."
        ));
    }
    // `topP`: a cumulative probability (Vertex AI's parameter reference: 0.0–1.0).
    if let Some(p) = number("topP")
        && !(0.0..=1.0).contains(&p)
    {
        return Some(format!(
            "* GenerateContentRequest.{at}.top_p: top_p must be in the range [0.0, 1.0]."
        ));
    }
    if int("maxOutputTokens").is_some_and(|m| m < 1) {
        return Some(format!(
            "* GenerateContentRequest.{at}.max_output_tokens: max_output_tokens must be positive."
        ));
    }
    // `stopSequences`: "The set of character sequences (up to 5)".
    if fields
        .get("stopSequences")
        .and_then(Value::as_array)
        .is_some_and(|s| s.len() > 5)
    {
        return Some(format!(
            "* GenerateContentRequest.{at}.stop_sequences: at most 5 stop sequences are allowed."
        ));
    }
    // `responseJsonSchema`: "If set, responseSchema must be omitted, but responseMimeType is
    // required"; `responseSchema`: "a compatible responseMimeType must also be set".
    let schema = fields.get("responseSchema");
    let json_schema = fields.get("responseJsonSchema");
    if schema.is_some() && json_schema.is_some() {
        return Some(format!(
            "* GenerateContentRequest.{at}: response_schema and response_json_schema are mutually exclusive."
        ));
    }
    if (schema.is_some() || json_schema.is_some())
        && fields.get("responseMimeType").and_then(Value::as_str) != Some("application/json")
    {
        return Some(format!(
            "* GenerateContentRequest.{at}.response_mime_type: a response schema needs response_mime_type application/json."
        ));
    }
    if let Some(message) = schema.and_then(|s| invalid_schema(s, &format!("{at}.response_schema")))
    {
        return Some(message);
    }
    // Thinking: `thinkingLevel` (Gemini 3) and `thinkingBudget` (2.5) "cannot both be set"
    // (ai.google.dev/gemini-api/docs/thinking).
    let thinking = &fields.get("thinkingConfig").cloned().unwrap_or(Value::Null);
    if thinking.get("thinkingLevel").is_some() && thinking.get("thinkingBudget").is_some() {
        return Some(format!(
            "* GenerateContentRequest.{at}.thinking_config: thinking_level and thinking_budget cannot both be set."
        ));
    }
    None
}

/// `batchEmbedContents`: each `EmbedContentRequest` names the model of the URL; at most 100
/// of them ("BatchEmbedContentsRequest.requests: at most 100 requests can be in one batch",
/// Google's message as langchain-ai/langchainjs#4491 and geldata/gel#9032 quote it); an
/// `outputDimensionality` the model supports (gemini-embedding-001: 128 to 3,072 per its
/// model page; text-embedding-004: up to 768).
fn invalid_embedding(model: &str, body: &Value) -> Option<String> {
    let Some(requests) = body["requests"].as_array().filter(|r| !r.is_empty()) else {
        return Some("* BatchEmbedContentsRequest.requests: requests is not specified".into());
    };
    if requests.len() > 100 {
        return Some(
            "* BatchEmbedContentsRequest.requests: at most 100 requests can be in one batch".into(),
        );
    }
    let expected = format!("models/{model}");
    if let Some(i) = requests
        .iter()
        .position(|r| r["model"].as_str() != Some(expected.as_str()))
    {
        return Some(format!(
            "* BatchEmbedContentsRequest.requests[{i}].model: does not match the model in the URL"
        ));
    }
    let (least, most) = dimensions(model);
    for (i, request) in requests.iter().enumerate() {
        if let Some(d) = request.get("outputDimensionality")
            && d.as_u64().is_none_or(|d| d < least || d > most)
        {
            return Some(format!(
                "* BatchEmbedContentsRequest.requests[{i}].output_dimensionality: must be between {least} and {most} for models/{model}."
            ));
        }
    }
    None
}

/// The `outputDimensionality` range of an embedding model; its full size is the maximum.
fn dimensions(model: &str) -> (u64, u64) {
    match model {
        "gemini-embedding-001" => (128, 3072),
        _ => (1, 768),
    }
}

// ---- the answers ----------------------------------------------------------------------------

/// What the fake says: a call to the first declared function when tools are offered and the
/// last turn carries no function result, `tool said: …` when it does, else `fake answer #n`;
/// or, when the last user text is `{"fake_gemini": {"parts": […], "finishReason": …,
/// "usageMetadata": {…}}}`, those parts, finish reason and usage (for tests that need a
/// particular answer).
enum Reply {
    Text(String),
    Call { name: String, args: Value },
    Scripted(Value),
}

fn reply(n: usize, body: &Value) -> Reply {
    if let Ok(script) = serde_json::from_str::<Value>(&last_user_text(body))
        && script.get("fake_gemini").is_some()
    {
        return Reply::Scripted(script["fake_gemini"].clone());
    }
    let last_parts = body["contents"]
        .as_array()
        .and_then(|c| c.last())
        .and_then(|c| c["parts"].as_array())
        .cloned()
        .unwrap_or_default();
    if let Some(result) = last_parts.iter().find_map(|p| p.get("functionResponse")) {
        return Reply::Text(format!("tool said: {}", result["response"]));
    }
    let first_function = body["tools"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t["functionDeclarations"].as_array())
        .flatten()
        .find_map(|f| f["name"].as_str());
    match first_function {
        Some(name) => Reply::Call {
            name: name.to_owned(),
            args: json!({ "query": last_user_text(body) }),
        },
        None => Reply::Text(format!("fake answer #{n}")),
    }
}

/// The text of the last `user` content.
fn last_user_text(body: &Value) -> String {
    body["contents"]
        .as_array()
        .into_iter()
        .flatten()
        .rev()
        .find(|c| c["role"] == "user")
        .and_then(|c| c["parts"].as_array())
        .into_iter()
        .flatten()
        .filter_map(|p| p["text"].as_str())
        .collect::<Vec<_>>()
        .join(" ")
}

/// The start of every signature the fake issues; then the function's name (or `text`).
const SIGNATURE_PREFIX: &str = "fake-thought-signature:";

/// A thought signature for a part: base64 bytes, as the API sends `bytes` fields.
fn signature(for_part: &str, n: usize) -> String {
    base64::engine::general_purpose::STANDARD.encode(format!("{SIGNATURE_PREFIX}{for_part}:{n}"))
}

/// Audio prompt tokens: each `inlineData` audio part counts its base64 length.
fn audio_tokens(body: &Value) -> u64 {
    body["contents"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["parts"].as_array())
        .flatten()
        .filter(|p| {
            p["inlineData"]["mimeType"]
                .as_str()
                .is_some_and(|m| m.starts_with("audio/"))
        })
        .map(|p| p["inlineData"]["data"].as_str().map_or(0, str::len) as u64)
        .sum()
}

/// The system instruction's bytes: on thinking models, prompt tokens read from the cache.
fn cached_tokens(model: &str, body: &Value) -> u64 {
    if !is_thinking(model) {
        return 0;
    }
    body["systemInstruction"]["parts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["text"].as_str())
        .map(|t| t.len() as u64)
        .sum()
}

/// `usageMetadata` by the module note's rule; `finished` adds the candidates' counts.
fn usage(model: &str, body: &Value, finished: bool) -> Value {
    let audio = audio_tokens(body);
    let cached = cached_tokens(model, body);
    let text = 10 + cached;
    let prompt = text + audio;
    let mut details = vec![json!({"modality": "TEXT", "tokenCount": text})];
    if audio > 0 {
        details.push(json!({"modality": "AUDIO", "tokenCount": audio}));
    }
    let mut usage = json!({"promptTokenCount": prompt, "totalTokenCount": prompt,
                           "promptTokensDetails": details});
    if cached > 0 {
        usage["cachedContentTokenCount"] = json!(cached);
        usage["cacheTokensDetails"] = json!([{"modality": "TEXT", "tokenCount": cached}]);
    }
    if finished {
        // `candidatesTokenCount` leaves thoughts out: the total is prompt + candidates +
        // thoughts (`UsageMetadata.totalTokenCount`).
        let thoughts = if is_thinking(model) { 7 } else { 0 };
        usage["candidatesTokenCount"] = json!(5);
        usage["totalTokenCount"] = json!(prompt + 5 + thoughts);
        if thoughts > 0 {
            usage["thoughtsTokenCount"] = json!(thoughts);
        }
    }
    usage
}

/// One `GenerateContentResponse` with `candidateCount` candidates of these parts.
fn response(n: usize, model: &str, body: &Value, parts: &Value, finish: Option<&str>) -> Value {
    let count = body["generationConfig"]["candidateCount"]
        .as_u64()
        .unwrap_or(1);
    let candidates: Vec<Value> = (0..count)
        .map(|index| {
            let mut c = json!({"content": {"role": "model", "parts": parts}, "index": index});
            if let Some(reason) = finish {
                c["finishReason"] = json!(reason);
            }
            c
        })
        .collect();
    json!({
        "candidates": candidates,
        "modelVersion": model,
        "responseId": format!("gfake{n}"),
    })
}

/// The parts of a reply; on thinking models the first function call (or, without one, the
/// last text) carries a thought signature, as Gemini 3 returns them.
fn reply_parts(reply: &Reply, model: &str, n: usize, last: bool) -> Value {
    let mut parts = match reply {
        Reply::Text(text) => json!([{ "text": text }]),
        Reply::Call { name, args } => json!([{"functionCall": {"name": name, "args": args}}]),
        Reply::Scripted(script) => script["parts"].clone(),
    };
    let Some(list) = parts.as_array_mut().filter(|_| is_thinking(model)) else {
        return parts;
    };
    let call = list.iter().position(|p| p.get("functionCall").is_some());
    let signed = match call {
        Some(i) => Some(i),
        None if last => list.len().checked_sub(1),
        None => None,
    };
    if let Some(part) = signed.and_then(|i| list.get_mut(i))
        && part.get("thoughtSignature").is_none()
    {
        let kind = part["functionCall"]["name"]
            .as_str()
            .unwrap_or("text")
            .to_owned();
        part["thoughtSignature"] = json!(signature(&kind, n));
    }
    parts
}

fn generated(n: usize, model: &str, body: &Value) -> Value {
    let reply = reply(n, body);
    let parts = reply_parts(&reply, model, n, true);
    let (finish, usage) = match &reply {
        Reply::Scripted(script) => (
            script["finishReason"].as_str().unwrap_or("STOP").to_owned(),
            script.get("usageMetadata").cloned(),
        ),
        _ => ("STOP".to_owned(), None),
    };
    let mut answer = response(n, model, body, &parts, Some(&finish));
    answer["usageMetadata"] = usage.unwrap_or_else(|| self::usage(model, body, true));
    answer
}

/// The events of a streamed answer: text a word at a time (a function call, or a scripted
/// answer, whole), the finish reason and full usage in the last event, the prompt's usage in
/// the others.
fn stream_events(n: usize, model: &str, body: &Value) -> Vec<Value> {
    let pieces: Vec<Reply> = match reply(n, body) {
        Reply::Text(text) => text
            .split_inclusive(' ')
            .map(|word| Reply::Text(word.to_owned()))
            .collect(),
        Reply::Scripted(_) => return vec![generated(n, model, body)],
        call => vec![call],
    };
    let last = pieces.len().saturating_sub(1);
    pieces
        .iter()
        .enumerate()
        .map(|(i, piece)| {
            let finish = (i == last).then_some("STOP");
            let parts = reply_parts(piece, model, n, i == last);
            let mut event = response(n, model, body, &parts, finish);
            event["usageMetadata"] = usage(model, body, finish.is_some());
            event
        })
        .collect()
}

/// `streamGenerateContent`: SSE with `?alt=sse`, otherwise one JSON array of the responses.
fn streamed(n: usize, model: &str, body: &Value, sse: bool) -> Response {
    let events = stream_events(n, model, body);
    if !sse {
        return axum::Json(Value::Array(events)).into_response();
    }
    let text: String = events
        .iter()
        .map(|e| format!("data: {e}\r\n\r\n"))
        .collect();
    (
        [(header::CONTENT_TYPE, "text/event-stream")],
        Body::from(text),
    )
        .into_response()
}

/// The full-size vector of the `i`th input: `±1/√size`, the sign pattern shifted by `i`
/// (unit length, as Google's full-size vectors are).
fn full_vector(size: u64, i: usize) -> Vec<f64> {
    let scale = 1.0 / (size as f64).sqrt();
    (0..size)
        .map(|k| {
            if (k as usize + i).is_multiple_of(3) {
                -scale
            } else {
                scale
            }
        })
        .collect()
}

/// One `ContentEmbedding` per request: the full vector, or its first `outputDimensionality`
/// values as they are (Matryoshka truncation, not renormalized).
fn embeddings(model: &str, body: &Value) -> Value {
    let (_, full) = dimensions(model);
    let embeddings: Vec<Value> = body["requests"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
        .map(|(i, request)| {
            let size = request["outputDimensionality"].as_u64().unwrap_or(full);
            let mut values = full_vector(full, i);
            values.truncate(usize::try_from(size).unwrap());
            json!({ "values": values })
        })
        .collect();
    json!({ "embeddings": embeddings })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(text: &str) -> Value {
        json!({"role": "user", "parts": [{"text": text}]})
    }

    fn call(name: &str, signed: bool) -> Value {
        let mut part = json!({"functionCall": {"name": name, "args": {}}});
        if signed {
            part["thoughtSignature"] = json!(signature(name, 1));
        }
        json!({"role": "model", "parts": [part]})
    }

    fn result(name: &str) -> Value {
        json!({"role": "user", "parts": [{"functionResponse": {"name": name, "response": {"r": 1}}}]})
    }

    /// The request with these contents and extra fields, checked for `model`.
    fn check(model: &str, contents: Value, extra: Value) -> Option<String> {
        let mut body = json!({ "contents": contents });
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().cloned().unwrap_or_default());
        invalid_generation(model, &body)
    }

    fn refused(model: &str, contents: Value, extra: Value, expected: &str) {
        let message = check(model, contents.clone(), extra.clone())
            .unwrap_or_else(|| panic!("accepted: {contents} {extra}"));
        assert!(message.contains(expected), "{message}");
    }

    #[test]
    fn roles_parts_and_function_turns() {
        let m = "gemini-2.0-flash";
        assert_eq!(check(m, json!([user("hi")]), json!({})), None);
        refused(m, json!([]), json!({}), "contents is not specified");
        refused(
            m,
            json!([{"role": "assistant", "parts": [{"text": "x"}]}]),
            json!({}),
            "valid role",
        );
        refused(
            m,
            json!([{"role": "user", "parts": []}]),
            json!({}),
            "must not be empty",
        );
        let good = json!([
            user("q"),
            call("f", false),
            result("f"),
            call("g", false),
            result("g")
        ]);
        assert_eq!(check(m, good, json!({})), None);
        refused(
            m,
            json!([call("f", false), result("f")]),
            json!({}),
            "function call turn comes immediately after",
        );
        refused(
            m,
            json!([user("q"), result("f")]),
            json!({}),
            "function response turn comes immediately after",
        );
        let two_calls = json!({"role": "model", "parts": [
            {"functionCall": {"name": "f", "args": {}}}, {"functionCall": {"name": "g", "args": {}}}]});
        refused(
            m,
            json!([user("q"), two_calls, result("f")]),
            json!({}),
            "number of function response parts",
        );
    }

    #[test]
    fn gemini_3_wants_the_signature_of_each_step_of_the_current_turn() {
        let g3 = "gemini-3-pro-preview";
        refused(
            g3,
            json!([user("q"), call("f", false), result("f")]),
            json!({}),
            "Function call is missing a thought_signature in functionCall parts",
        );
        assert_eq!(
            check(
                "gemini-2.5-flash",
                json!([user("q"), call("f", false), result("f")]),
                json!({})
            ),
            None
        );
        assert_eq!(
            check(
                g3,
                json!([
                    user("q"),
                    call("f", true),
                    result("f"),
                    call("g", true),
                    result("g")
                ]),
                json!({})
            ),
            None
        );
        refused(
            g3,
            json!([
                user("q"),
                call("f", true),
                result("f"),
                call("g", false),
                result("g")
            ]),
            json!({}),
            "`default_api:g`",
        );
        // Earlier turns are not validated.
        assert_eq!(
            check(
                g3,
                json!([
                    user("q"),
                    call("f", false),
                    result("f"),
                    user("next"),
                    call("g", true),
                    result("g")
                ]),
                json!({})
            ),
            None
        );
        // Only the first call of a step (parallel calls) carries one.
        let parallel = json!({"role": "model", "parts": [
            {"functionCall": {"name": "f", "args": {}}, "thoughtSignature": signature("f", 2)},
            {"functionCall": {"name": "g", "args": {}}}]});
        let results = json!({"role": "user", "parts": [
            {"functionResponse": {"name": "f", "response": {}}}, {"functionResponse": {"name": "g", "response": {}}}]});
        assert_eq!(
            check(g3, json!([user("q"), parallel, results]), json!({})),
            None
        );
        // A signature on another call than its own, or not base64, is not valid.
        let moved = json!({"role": "model", "parts": [{"functionCall": {"name": "g", "args": {}}, "thoughtSignature": signature("f", 1)}]});
        refused(
            g3,
            json!([user("q"), moved, result("g")]),
            json!({}),
            "Thought signature is not valid",
        );
        let garbled = json!({"role": "model", "parts": [{"functionCall": {"name": "g", "args": {}}, "thoughtSignature": "%%"}]});
        refused(
            g3,
            json!([user("q"), garbled, result("g")]),
            json!({}),
            "Base64 decoding failed",
        );
    }

    #[test]
    fn schema_subset_against_json_schema() {
        let m = "gemini-2.5-flash";
        let tool = |declaration: Value| json!({"tools": [{"functionDeclarations": [declaration]}]});
        let ok = json!({"type": "OBJECT", "properties": {"a": {"type": "string", "enum": ["x"], "nullable": true},
            "b": {"type": "array", "items": {"type": "integer"}}}, "required": ["a"]});
        assert_eq!(
            check(
                m,
                json!([user("q")]),
                tool(json!({"name": "f", "parameters": ok}))
            ),
            None
        );
        for (schema, expected) in [
            (
                json!({"type": "object", "properties": {"a": {"type": "string"}}, "additionalProperties": false}),
                "Unknown name \"additionalProperties\"",
            ),
            (
                json!({"type": "object", "properties": {"a": {"$ref": "#/$defs/a"}}}),
                "Unknown name \"$ref\"",
            ),
            (
                json!({"$schema": "x", "type": "object", "properties": {"a": {"type": "string"}}}),
                "Unknown name \"$schema\"",
            ),
            (
                json!({"type": "object", "properties": {"a": {"const": "x"}}}),
                "Unknown name \"const\"",
            ),
            (
                json!({"type": "object", "properties": {"a": {"type": ["string", "null"]}}}),
                "not repeating",
            ),
            (
                json!({"type": "object", "properties": {}}),
                "should be non-empty for OBJECT type",
            ),
            (
                json!({"type": "object", "properties": {"a": {"type": "integer", "enum": [1]}}}),
                "enum values must be strings",
            ),
        ] {
            refused(
                m,
                json!([user("q")]),
                tool(json!({"name": "f", "parameters": schema})),
                expected,
            );
            refused(
                m,
                json!([user("q")]),
                json!({"generationConfig": {"responseMimeType": "application/json", "responseSchema": schema}}),
                expected,
            );
            // The JSON Schema fields take it.
            let schema = json!({"type": "object", "properties": {"a": schema}});
            assert_eq!(
                check(
                    m,
                    json!([user("q")]),
                    tool(json!({"name": "f", "parametersJsonSchema": schema}))
                ),
                None
            );
            assert_eq!(
                check(
                    m,
                    json!([user("q")]),
                    json!({"generationConfig": {"responseMimeType": "application/json", "responseJsonSchema": schema}})
                ),
                None
            );
        }
        refused(
            m,
            json!([user("q")]),
            tool(json!({"name": "f", "parameters": ok, "parametersJsonSchema": ok})),
            "mutually exclusive",
        );
        refused(
            m,
            json!([user("q")]),
            json!({"generationConfig": {"responseMimeType": "application/json",
            "responseSchema": ok, "responseJsonSchema": ok}}),
            "mutually exclusive",
        );
        refused(
            m,
            json!([user("q")]),
            json!({"generationConfig": {"responseJsonSchema": ok}}),
            "response_mime_type",
        );
        refused(
            m,
            json!([user("q")]),
            tool(json!({"name": "f", "parametersJsonSchema": {"type": "string"}})),
            "must describe an object",
        );
        for name in ["", "a/b", "a b", &"x".repeat(65)] {
            refused(
                m,
                json!([user("q")]),
                tool(json!({"name": name})),
                "Invalid function name",
            );
        }
        for name in ["get_weather", "ns:tool.v2-x", "9lives"] {
            assert_eq!(
                check(m, json!([user("q")]), tool(json!({"name": name}))),
                None,
                "{name}"
            );
        }
    }

    #[test]
    fn generation_config_ranges() {
        let m = "gemini-2.5-flash";
        let config = |c: Value| json!({ "generationConfig": c });
        assert_eq!(
            check(
                m,
                json!([user("q")]),
                config(json!({"candidateCount": 8, "temperature": 2.0,
            "topP": 1.0, "maxOutputTokens": 2_147_483_647, "stopSequences": ["a", "b", "c", "d", "e"], "seed": -1}))
            ),
            None
        );
        for (c, expected) in [
            (json!({"candidateCount": 0}), "candidate_count"),
            (json!({"candidateCount": 9}), "candidate_count"),
            (json!({"temperature": 2.5}), "temperature"),
            (json!({"temperature": -0.1}), "temperature"),
            (json!({"topP": 1.5}), "top_p"),
            (json!({"maxOutputTokens": 0}), "max_output_tokens"),
            (json!({"maxOutputTokens": 2_147_483_648_u64}), "TYPE_INT32"),
            (json!({"seed": 4_294_967_296_u64}), "TYPE_INT32"),
            (
                json!({"stopSequences": ["a", "b", "c", "d", "e", "f"]}),
                "stop_sequences",
            ),
            (json!({"max_tokens": 5}), "Unknown name \"max_tokens\""),
            (
                json!({"thinkingConfig": {"thinkingLevel": "low", "thinkingBudget": 10}}),
                "cannot both be set",
            ),
        ] {
            refused(m, json!([user("q")]), config(c), expected);
        }
    }

    #[test]
    fn embedding_batches_and_dimensions() {
        let requests = |n: usize, d: Option<u64>| {
            let mut r = json!({"model": "models/gemini-embedding-001", "content": {"parts": [{"text": "x"}]}});
            if let Some(d) = d {
                r["outputDimensionality"] = json!(d);
            }
            json!({ "requests": vec![r; n] })
        };
        let m = "gemini-embedding-001";
        assert_eq!(invalid_embedding(m, &requests(100, Some(128))), None);
        assert!(
            invalid_embedding(m, &requests(101, None))
                .unwrap()
                .contains("at most 100 requests")
        );
        assert!(
            invalid_embedding(m, &requests(1, Some(127)))
                .unwrap()
                .contains("output_dimensionality")
        );
        assert!(
            invalid_embedding(m, &requests(1, Some(3073)))
                .unwrap()
                .contains("output_dimensionality")
        );
        assert!(
            invalid_embedding("text-embedding-004", &requests(1, None))
                .unwrap()
                .contains("does not match")
        );
        // Full-size vectors are unit length; reduced ones are their prefix, not unit length.
        let norm = |v: &Value| {
            v.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap().powi(2))
                .sum::<f64>()
                .sqrt()
        };
        let full = embeddings(m, &requests(2, None));
        assert_eq!(
            full["embeddings"][1]["values"].as_array().unwrap().len(),
            3072
        );
        assert!((norm(&full["embeddings"][1]["values"]) - 1.0).abs() < 1e-9);
        let reduced = embeddings(m, &requests(2, Some(768)));
        assert_eq!(
            reduced["embeddings"][1]["values"].as_array().unwrap()[..],
            full["embeddings"][1]["values"].as_array().unwrap()[..768]
        );
        assert!((norm(&reduced["embeddings"][1]["values"]) - 0.5).abs() < 1e-9);
    }

    #[test]
    fn usage_by_the_rule() {
        let body = json!({"systemInstruction": {"parts": [{"text": "0123456789"}]}, "contents": [
            {"role": "user", "parts": [{"text": "q"}, {"inlineData": {"mimeType": "audio/wav", "data": "AAAABBBB"}}]}]});
        assert_eq!(
            usage("gemini-2.5-pro", &body, true),
            json!({"promptTokenCount": 28, "candidatesTokenCount": 5, "thoughtsTokenCount": 7, "totalTokenCount": 40,
                   "cachedContentTokenCount": 10, "cacheTokensDetails": [{"modality": "TEXT", "tokenCount": 10}],
                   "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 20}, {"modality": "AUDIO", "tokenCount": 8}]})
        );
        assert_eq!(
            usage("gemini-2.0-flash", &body, true),
            json!({"promptTokenCount": 18, "candidatesTokenCount": 5, "totalTokenCount": 23,
                   "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 10}, {"modality": "AUDIO", "tokenCount": 8}]})
        );
    }
}
