//! Anthropic's Messages API format, from its public reference: `message` objects with content
//! blocks, the named SSE events of a stream, `{"type":"error","error":{…}}` bodies, and the
//! checks the real API makes on a request, each citing where Anthropic documents it.
//!
//! References, as cited below:
//! - [API]: the Messages API reference, <https://platform.claude.com/docs/en/api/messages>, as
//!   the official `anthropic` Python SDK 2.14 carries it in its types
//!   (`types/message_create_params.py` and the block and source types it names).
//! - [Errors]: the API's own 400 messages, quoted in public issue trackers where the docs are
//!   silent (cited with the tracker).
//! - [Caching]: <https://platform.claude.com/docs/en/build-with-claude/prompt-caching>.
//! - [Thinking]: <https://platform.claude.com/docs/en/build-with-claude/extended-thinking>.
//! - [Tools]: <https://platform.claude.com/docs/en/agents-and-tools/tool-use/handle-tool-calls>.
//! - [Migration]: <https://platform.claude.com/docs/en/about-claude/models/migration-guide>.
//!
//! Answers are deterministic: `fake answer #N` with 10 uncached input and 5 output tokens;
//! given tools, a call of the first one with `{"query": <the user's words>}` (or `{}` when
//! its schema has no properties); given a tool result, `tool said: <result>`; with thinking
//! on, a thinking block first, signed so that a changed block is refused when sent back;
//! and prompt-cache usage by a fixed rule (see [`cache_usage`]).

use std::collections::HashSet;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Mutex;

use axum::body::Body;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::Behaviour;

fn error(status: u16, kind: &str, message: &str) -> Response {
    let body = json!({"type": "error", "error": {"type": kind, "message": message}});
    (
        StatusCode::from_u16(status).unwrap(),
        [("request-id", "req_fake")],
        axum::Json(body),
    )
        .into_response()
}

fn error_kind(status: u16) -> &'static str {
    match status {
        400 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        529 => "overloaded_error",
        _ => "api_error",
    }
}

/// Models that refuse `temperature` and `top_p` together: the Claude 4.5 family ([Migration],
/// "Migrating to Claude 4.5": "Use only temperature OR top_p, not both", Sonnet 4.5 and
/// Haiku 4.5), Opus 4.1 (open-webui/pipelines#546, "Claude 4.1 rejects requests that specify
/// both"), and the 4.6 models (iOfficeAI/AionUi#912 quotes the 400 for Sonnet 4.6).
const ONE_SAMPLER: &[&str] = &[
    "claude-sonnet-4-5",
    "claude-haiku-4-5",
    "claude-opus-4-1",
    "claude-opus-4-5",
    "claude-sonnet-4-6",
    "claude-opus-4-6",
];

/// Models that take no sampling parameter and no thinking budget at all: Opus 4.7 and later
/// ([Migration], "Migrating to Claude Opus 4.7": `temperature`, `top_p`, `top_k` and
/// `thinking.budget_tokens` are 400s; Comfy-Org/ComfyUI#13923 quotes "`temperature` is
/// deprecated for this model"). The SDK 2.14 types no longer have the three parameters.
const NO_SAMPLING: &[&str] = &[
    "claude-opus-4-7",
    "claude-opus-4-8",
    "claude-opus-5",
    "claude-sonnet-5",
    "claude-haiku-5",
];

fn family(model: &str, list: &[&str]) -> bool {
    list.iter().any(|prefix| model.starts_with(prefix))
}

/// `^[a-zA-Z0-9_-]+$`, with a length limit.
fn id_like(s: &str, max: usize) -> bool {
    (1..=max).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// The signature the fake gives a thinking block: a hash of its text, so that a block sent
/// back changed (or with another block's signature) is refused, as [Thinking] says the API
/// does ("Thinking blocks must be passed back unmodified"; the SDK's `ThinkingBlockParam`:
/// "a modified block results in a 400 `invalid_request_error`").
pub(super) fn signature(thinking: &str) -> String {
    // FNV-1a: the same in every process (the Python tests restart the fake).
    let hash = thinking.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("fakesig{hash:016x}")
}

/// Checks one `cache_control` ([API] `CacheControlEphemeralParam`: `type` is `ephemeral`,
/// `ttl` `5m` or `1h`), counting it.
fn check_cache_control(v: &Value, at: &str, count: &mut usize) -> Result<(), String> {
    let Some(cc) = v.get("cache_control").filter(|c| !c.is_null()) else {
        return Ok(());
    };
    if cc["type"] != "ephemeral" {
        return Err(format!(
            "{at}.cache_control.type: Input should be 'ephemeral'"
        ));
    }
    if !matches!(
        cc.get("ttl").map(|t| t.as_str()),
        None | Some(Some("5m" | "1h"))
    ) {
        return Err(format!(
            "{at}.cache_control.ttl: Input should be '5m' or '1h'"
        ));
    }
    *count += 1;
    Ok(())
}

/// Checks a content block where `role` may send it.
fn check_block(b: &Value, at: &str, role: &str, cc: &mut usize) -> Result<(), String> {
    check_cache_control(b, at, cc)?;
    let kind = b["type"].as_str().unwrap_or("");
    let source = &b["source"];
    match (kind, role) {
        // [API] `TextBlockParam`; an empty one is refused ("text content blocks must be
        // non-empty", quoted in anthropics/claude-code issues).
        ("text", _) => match b["text"].as_str() {
            Some(t) if !t.trim().is_empty() => Ok(()),
            _ => Err(format!("{at}: text content blocks must be non-empty")),
        },
        // [API] `Base64ImageSourceParam.media_type`: jpeg, png, gif or webp; or a URL or file.
        ("image", "user" | "tool_result") => match source["type"].as_str() {
            Some("base64") => match source["media_type"].as_str() {
                Some("image/jpeg" | "image/png" | "image/gif" | "image/webp") => Ok(()),
                _ => Err(format!(
                    "{at}.source.base64.media_type: Input should be 'image/jpeg', 'image/png', 'image/gif' or 'image/webp'"
                )),
            },
            Some("url") if source["url"].is_string() => Ok(()),
            Some("file") if source["file_id"].is_string() => Ok(()),
            _ => Err(format!(
                "{at}.source: Input tag does not match any of the expected tags"
            )),
        },
        // [API] `DocumentBlockParam.source`: base64 PDF (`Base64PDFSourceParam`), plain text
        // (`PlainTextSourceParam`), content blocks, a URL or a file.
        ("document", "user" | "tool_result") => {
            match (source["type"].as_str(), source["media_type"].as_str()) {
                (Some("base64"), Some("application/pdf")) if source["data"].is_string() => Ok(()),
                (Some("text"), Some("text/plain")) if source["data"].is_string() => Ok(()),
                (Some("content"), _)
                    if source["content"].is_array() || source["content"].is_string() =>
                {
                    Ok(())
                }
                (Some("url"), _) if source["url"].is_string() => Ok(()),
                (Some("file"), _) if source["file_id"].is_string() => Ok(()),
                _ => Err(format!(
                    "{at}.source: a document is a base64 PDF (application/pdf), plain text (text/plain), content, a URL or a file"
                )),
            }
        }
        ("search_result", "user" | "tool_result") => Ok(()),
        // [API] tool ids: "String should match pattern '^[a-zA-Z0-9_-]+$'" (the API's 400,
        // quoted in maximhq/bifrost#5097).
        ("tool_use", "assistant") => {
            if !b["id"].as_str().is_some_and(|id| id_like(id, 256)) {
                return Err(format!(
                    "{at}.tool_use.id: String should match pattern '^[a-zA-Z0-9_-]+$'"
                ));
            }
            if !b["input"].is_object() {
                return Err(format!(
                    "{at}.tool_use.input: Input should be a valid dictionary"
                ));
            }
            Ok(())
        }
        // [Tools]: a tool result's content is a string or text, image, document and
        // search_result blocks; `is_error` a boolean.
        ("tool_result", "user") => {
            if !b["tool_use_id"].as_str().is_some_and(|id| id_like(id, 256)) {
                return Err(format!(
                    "{at}.tool_result.tool_use_id: String should match pattern '^[a-zA-Z0-9_-]+$'"
                ));
            }
            if !matches!(b.get("is_error"), None | Some(Value::Bool(_))) {
                return Err(format!(
                    "{at}.tool_result.is_error: Input should be a valid boolean"
                ));
            }
            match &b["content"] {
                Value::Null | Value::String(_) => Ok(()),
                Value::Array(inner) => inner.iter().enumerate().try_for_each(|(k, block)| {
                    check_block(block, &format!("{at}.content.{k}"), "tool_result", cc)
                }),
                _ => Err(format!(
                    "{at}.tool_result.content: Input should be a string or a list"
                )),
            }
        }
        // [Thinking]: thinking blocks go back unmodified (checked by their signature), and
        // take no cache_control.
        ("thinking", "assistant") => {
            let thinking = b["thinking"].as_str().unwrap_or("");
            if b["signature"].as_str() != Some(signature(thinking).as_str()) {
                return Err(format!("{at}: Invalid `signature` in `thinking` block"));
            }
            Ok(())
        }
        ("redacted_thinking", "assistant") if b["data"].is_string() => Ok(()),
        _ => Err(format!(
            "{at}: Input tag '{kind}' found using 'type' does not match any of the expected tags for a {role} message"
        )),
    }
}

/// What the real API refuses before generating anything, with its message.
fn invalid(body: &Value) -> Result<(), String> {
    let model = body["model"].as_str().ok_or("model: Field required")?;
    // [API] `max_tokens`: required; "Set to `0` to populate the prompt cache without
    // generating a response" (so 0 is valid, negative or fractional is not).
    let max_tokens = body["max_tokens"]
        .as_u64()
        .ok_or("max_tokens: Field required (an integer ≥ 0)")?;
    let mut breakpoints = 0;
    check_cache_control(body, "request", &mut breakpoints)?;
    // [API] `system`: a string or text blocks.
    match &body["system"] {
        Value::Null | Value::String(_) => {}
        Value::Array(blocks) => {
            for (j, b) in blocks.iter().enumerate() {
                if b["type"] != "text" {
                    return Err(format!("system.{j}.type: Input should be 'text'"));
                }
                check_block(b, &format!("system.{j}"), "system", &mut breakpoints)?;
            }
        }
        _ => return Err("system: Input should be a valid string or list".into()),
    }
    // [API] `temperature` "Ranges from 0.0 to 1.0" (the reference before the parameter was
    // retired; still taken by the models in `ONE_SAMPLER`), `top_p` the same, `top_k` a
    // non-negative integer.
    for (field, ok) in [
        (
            "temperature",
            body["temperature"]
                .as_f64()
                .is_some_and(|t| (0.0..=1.0).contains(&t)),
        ),
        (
            "top_p",
            body["top_p"]
                .as_f64()
                .is_some_and(|p| (0.0..=1.0).contains(&p)),
        ),
        ("top_k", body["top_k"].is_u64()),
    ] {
        if !body[field].is_null() && !ok {
            return Err(format!("{field}: Input should be in range"));
        }
    }
    if family(model, NO_SAMPLING)
        && let Some(field) = ["temperature", "top_p", "top_k"]
            .iter()
            .find(|f| !body[**f].is_null())
    {
        return Err(format!("`{field}` is deprecated for this model."));
    }
    if family(model, ONE_SAMPLER) && !body["temperature"].is_null() && !body["top_p"].is_null() {
        return Err("`temperature` and `top_p` cannot both be specified for this model. Please use only one.".into());
    }
    // [API] `OutputConfigParam.effort`: "Valid values are `low`, `medium`, `high`, `xhigh`,
    // or `max`."
    let effort = &body["output_config"]["effort"];
    if !effort.is_null()
        && !matches!(
            effort.as_str(),
            Some("low" | "medium" | "high" | "xhigh" | "max")
        )
    {
        return Err(
            "output_config.effort: Input should be 'low', 'medium', 'high', 'xhigh' or 'max'"
                .into(),
        );
    }
    // [API] `stop_sequences`: strings.
    if !body["stop_sequences"].is_null()
        && !body["stop_sequences"]
            .as_array()
            .is_some_and(|s| s.iter().all(Value::is_string))
    {
        return Err("stop_sequences: Input should be a valid list of strings".into());
    }
    // Tool names: the API's 400 "tools.N.custom.name: String should match pattern
    // '^[a-zA-Z0-9_-]{1,128}$'" (quoted in modelcontextprotocol/modelcontextprotocol#1345;
    // the tool-use docs still say 64, the API takes 128). [API] `input_schema` is a JSON
    // Schema object of type `object`.
    let mut tool_names = HashSet::new();
    for (i, t) in body["tools"].as_array().into_iter().flatten().enumerate() {
        let name = t["name"].as_str().unwrap_or("");
        if !id_like(name, 128) {
            return Err(format!(
                "tools.{i}.custom.name: String should match pattern '^[a-zA-Z0-9_-]{{1,128}}$'"
            ));
        }
        if t["input_schema"]["type"] != "object" {
            return Err(format!(
                "tools.{i}.custom.input_schema.type: Input should be 'object'"
            ));
        }
        check_cache_control(t, &format!("tools.{i}"), &mut breakpoints)?;
        tool_names.insert(name);
    }
    let thinking = &body["thinking"];
    let thinking_on = matches!(thinking["type"].as_str(), Some("enabled" | "adaptive"));
    check_thinking(body, model, max_tokens)?;
    check_messages(body, thinking_on, &mut breakpoints)?;
    // [Caching]: "You can define up to 4 cache breakpoints"; the API's 400 is "A maximum of
    // 4 blocks with cache_control may be provided. Found 5." (Wei-Shaw/sub2api#176).
    if breakpoints > 4 {
        return Err(format!(
            "A maximum of 4 blocks with cache_control may be provided. Found {breakpoints}."
        ));
    }
    Ok(())
}

/// [Thinking]: `budget_tokens` "Must be ≥1024 and less than `max_tokens`" ([API]
/// `ThinkingConfigEnabledParam`); thinking "isn't compatible with temperature or top_k
/// modifications as well as forced tool use", and `top_p` may be 0.95 to 1.
fn check_thinking(body: &Value, model: &str, max_tokens: u64) -> Result<(), String> {
    let thinking = &body["thinking"];
    match thinking["type"].as_str() {
        None if thinking.is_null() => return Ok(()),
        Some("disabled") => return Ok(()),
        Some("adaptive") => {}
        Some("enabled") if family(model, NO_SAMPLING) => {
            return Err("thinking.type.enabled: use `thinking.type.adaptive` for this model (`budget_tokens` is not supported)".into());
        }
        Some("enabled") => {
            let budget = thinking["budget_tokens"].as_u64().unwrap_or(0);
            if budget < 1024 {
                return Err("thinking.enabled.budget_tokens: Input should be greater than or equal to 1024".into());
            }
            if budget >= max_tokens {
                return Err("`max_tokens` must be greater than `thinking.budget_tokens`.".into());
            }
        }
        _ => return Err("thinking: Input tag does not match any of the expected tags: 'enabled', 'adaptive', 'disabled'".into()),
    }
    if body["temperature"].as_f64().is_some_and(|t| t != 1.0) {
        return Err("`temperature` may only be set to 1 when thinking is enabled.".into());
    }
    if !body["top_k"].is_null() {
        return Err("`top_k` must be unset when thinking is enabled.".into());
    }
    if body["top_p"].as_f64().is_some_and(|p| p < 0.95) {
        return Err(
            "`top_p` must be greater than or equal to 0.95 or unset when thinking is enabled."
                .into(),
        );
    }
    if matches!(body["tool_choice"]["type"].as_str(), Some("any" | "tool")) {
        return Err("Thinking may not be enabled when tool_choice forces tool use.".into());
    }
    Ok(())
}

/// The turns: roles, blocks, and how tool results follow tool calls.
fn check_messages(body: &Value, thinking_on: bool, breakpoints: &mut usize) -> Result<(), String> {
    let messages = body["messages"]
        .as_array()
        .ok_or("messages: Field required")?;
    let mut previous_calls: Vec<String> = Vec::new();
    let mut last_assistant_with_tools: Option<usize> = None;
    for (i, m) in messages.iter().enumerate() {
        let role = m["role"].as_str().unwrap_or("");
        // [API] roles are `user` and `assistant` ("Note that if you want to include a system
        // prompt, you can use the top-level `system` parameter"). Consecutive turns of one
        // role are accepted: "Consecutive `user` or `assistant` turns in your request will be
        // combined into a single turn." The first is the user's: "messages: first message
        // must use the \"user\" role" (the API's 400, lobehub/lobehub#1601).
        if role != "user" && role != "assistant" {
            return Err(format!(
                "messages.{i}.role: Input should be 'user' or 'assistant'"
            ));
        }
        if i == 0 && role != "user" {
            return Err("messages: first message must use the \"user\" role".into());
        }
        let blocks: Vec<Value> = match &m["content"] {
            Value::String(s) if !s.is_empty() => vec![json!({"type": "text", "text": s})],
            Value::Array(blocks) if !blocks.is_empty() => blocks.clone(),
            _ => {
                return Err(format!(
                    "messages.{i}: all messages must have non-empty content"
                ));
            }
        };
        for (j, b) in blocks.iter().enumerate() {
            check_block(b, &format!("messages.{i}.content.{j}"), role, breakpoints)?;
        }
        // [Tools]: "Each `tool_use` block must have a corresponding `tool_result` block in
        // the next message", and the results come first in that message ("tool_result
        // blocks must come FIRST in the content array"); a result answers a call of the
        // message before it ("unexpected `tool_use_id` found in `tool_result` blocks").
        let results: Vec<&str> = blocks
            .iter()
            .filter(|b| b["type"] == "tool_result")
            .filter_map(|b| b["tool_use_id"].as_str())
            .collect();
        if role == "user" {
            if let Some(id) = results
                .iter()
                .find(|id| !previous_calls.iter().any(|c| c == *id))
            {
                return Err(format!(
                    "messages.{i}.content: unexpected `tool_use_id` found in `tool_result` blocks: {id}. Each `tool_result` block must have a corresponding `tool_use` block in the previous message."
                ));
            }
            let first_other = blocks.iter().position(|b| b["type"] != "tool_result");
            let last_result = blocks.iter().rposition(|b| b["type"] == "tool_result");
            if let (Some(o), Some(r)) = (first_other, last_result)
                && o < r
            {
                return Err(format!(
                    "messages.{i}.content: tool_result blocks must come first in the content array"
                ));
            }
        }
        let missing: Vec<&String> = previous_calls
            .iter()
            .filter(|c| !results.contains(&c.as_str()))
            .collect();
        if !missing.is_empty() {
            return Err(format!(
                "messages.{}: `tool_use` ids were found without `tool_result` blocks immediately after: {}. Each `tool_use` block must have a corresponding `tool_result` block in the next message.",
                i - 1,
                missing
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        previous_calls = if role == "assistant" {
            blocks
                .iter()
                .filter(|b| b["type"] == "tool_use")
                .filter_map(|b| b["id"].as_str().map(str::to_owned))
                .collect()
        } else {
            Vec::new()
        };
        if role == "assistant" && !previous_calls.is_empty() {
            last_assistant_with_tools = Some(i);
        }
    }
    if let Some(last) = messages.last()
        && last["role"] == "assistant"
        && !previous_calls.is_empty()
    {
        return Err(format!(
            "messages.{}: `tool_use` ids were found without `tool_result` blocks immediately after: {}.",
            messages.len() - 1,
            previous_calls.join(", ")
        ));
    }
    // [Thinking]: with thinking on, the assistant turn of the tool-use cycle in progress
    // starts with its thinking block ("When `thinking` is enabled, a final `assistant`
    // message must start with a thinking block").
    if thinking_on
        && let Some(i) = last_assistant_with_tools
        && i + 2 == messages.len()
    {
        let first = &messages[i]["content"][0]["type"];
        if first != "thinking" && first != "redacted_thinking" {
            return Err(format!(
                "messages.{i}.content.0.type: Expected `thinking` or `redacted_thinking`, but found `{}`. When `thinking` is enabled, a final `assistant` message must start with a thinking block.",
                first.as_str().unwrap_or("")
            ));
        }
    }
    Ok(())
}

/// The last user turn's text, and its tool result if it carries one.
fn last_user(body: &Value) -> (String, Option<String>) {
    let Some(last) = body["messages"].as_array().and_then(|m| m.last()) else {
        return (String::new(), None);
    };
    match &last["content"] {
        Value::String(s) => (s.clone(), None),
        Value::Array(blocks) => {
            let text = blocks
                .iter()
                .filter_map(|b| b["text"].as_str())
                .collect::<Vec<_>>()
                .join(" ");
            let result =
                blocks
                    .iter()
                    .find(|b| b["type"] == "tool_result")
                    .map(|b| match &b["content"] {
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    });
            (text, result)
        }
        _ => (String::new(), None),
    }
}

/// Tokens each cached segment of the prompt counts for.
pub const CACHE_SEGMENT_TOKENS: u64 = 1000;

/// Prompt-cache usage by a fixed rule in the spirit of [Caching] ("the system checks for a
/// cache hit at each breakpoint", longest prefix first): the prompt is read in Anthropic's
/// order (tools, system, messages), each `cache_control` ends a segment of
/// [`CACHE_SEGMENT_TOKENS`], and a top-level `cache_control` marks the last block. The
/// segments up to the last breakpoint seen before (by the hash of the prefix, per model) are
/// read; the later ones are written, at their breakpoint's TTL, and remembered. (The real
/// API also skips prefixes below a minimum length; the fake caches any.) Returns `(read,
/// written 5m, written 1h)`.
fn cache_usage(body: &Value, seen: &Mutex<HashSet<u64>>) -> (u64, u64, u64) {
    let mut items: Vec<Value> = Vec::new();
    items.extend(body["tools"].as_array().into_iter().flatten().cloned());
    match &body["system"] {
        Value::String(s) => items.push(json!(s)),
        Value::Array(blocks) => items.extend(blocks.iter().cloned()),
        _ => {}
    }
    for m in body["messages"].as_array().into_iter().flatten() {
        match &m["content"] {
            Value::Array(blocks) => items.extend(
                blocks
                    .iter()
                    .map(|b| json!({"role": m["role"], "block": b})),
            ),
            other => items.push(json!({"role": m["role"], "block": other})),
        }
    }
    let ttl = |cc: &Value| if cc["ttl"] == "1h" { 1 } else { 0 };
    let mut breaks: Vec<(usize, u8)> = items
        .iter()
        .enumerate()
        .filter_map(|(i, item)| {
            let cc = item
                .get("cache_control")
                .or_else(|| item["block"].get("cache_control"))?;
            Some((i, ttl(cc)))
        })
        .collect();
    if let Some(cc) = body.get("cache_control").filter(|c| !c.is_null())
        && !items.is_empty()
    {
        breaks.push((items.len() - 1, ttl(cc)));
        breaks.sort_unstable();
        breaks.dedup_by_key(|(i, _)| *i);
    }
    // A breakpoint's key: the prefix up to it, its markers left out (they are not content).
    let key = |end: usize| {
        let mut h = DefaultHasher::new();
        body["model"].to_string().hash(&mut h);
        for item in &items[..=end] {
            let text = item.to_string();
            strip_cache_control(&text).hash(&mut h);
        }
        h.finish()
    };
    let keys: Vec<u64> = breaks.iter().map(|(i, _)| key(*i)).collect();
    let mut seen = seen.lock().unwrap();
    let hit = keys.iter().rposition(|k| seen.contains(k));
    let read = hit.map_or(0, |h| (h as u64 + 1) * CACHE_SEGMENT_TOKENS);
    let (mut five, mut hour) = (0, 0);
    for (n, ((_, ttl), k)) in breaks.iter().zip(&keys).enumerate() {
        if hit.is_some_and(|h| n <= h) {
            continue;
        }
        if *ttl == 1 {
            hour += CACHE_SEGMENT_TOKENS;
        } else {
            five += CACHE_SEGMENT_TOKENS;
        }
        seen.insert(*k);
    }
    (read, five, hour)
}

/// JSON text without its `"cache_control":{…}` members.
fn strip_cache_control(json: &str) -> String {
    let mut v: Value = serde_json::from_str(json).unwrap();
    fn strip(v: &mut Value) {
        match v {
            Value::Object(map) => {
                map.remove("cache_control");
                map.values_mut().for_each(strip);
            }
            Value::Array(items) => items.iter_mut().for_each(strip),
            _ => {}
        }
    }
    strip(&mut v);
    v.to_string()
}

/// Answers one Messages API request (`Slow` has already waited). `cache` is this fake's
/// prompt cache (see [`cache_usage`]).
pub(super) fn answer(
    behaviour: &Behaviour,
    n: usize,
    body: &Value,
    cache: &Mutex<HashSet<u64>>,
) -> Response {
    match *behaviour {
        // `EchoKey` is answered before the format is chosen.
        Behaviour::Ok
        | Behaviour::Slow(_)
        | Behaviour::EchoKey(_)
        | Behaviour::CutOff
        | Behaviour::Truncated
        | Behaviour::Drip(_) => {}
        Behaviour::Status(status, retry_after) => {
            let mut r = error(
                status,
                error_kind(status),
                &format!("fake upstream error {status}"),
            );
            if let Some(s) = retry_after {
                r.headers_mut()
                    .insert(header::RETRY_AFTER, s.to_string().parse().unwrap());
            }
            return r;
        }
        Behaviour::Garbage => {
            return (
                [(header::CONTENT_TYPE, "application/json")],
                "<html>oops</html>",
            )
                .into_response();
        }
        Behaviour::ErrorIn200 => {
            return axum::Json(
                json!({"type": "error", "error": {"type": "api_error", "message": "fake error in 200"}}),
            )
            .into_response();
        }
    }
    if let Err(reason) = invalid(body) {
        return error(400, "invalid_request_error", &reason);
    }
    let model = body["model"].as_str().unwrap_or("unknown").to_owned();
    let (user_text, tool_result) = last_user(body);
    let tool = body["tools"][0]
        .as_object()
        .filter(|_| tool_result.is_none() && body["tool_choice"]["type"] != "none");
    let mut content = Vec::new();
    if matches!(
        body["thinking"]["type"].as_str(),
        Some("enabled" | "adaptive")
    ) {
        let thinking = format!("The user said: {user_text}");
        content.push(
            json!({"type": "thinking", "signature": signature(&thinking), "thinking": thinking}),
        );
    }
    let mut stop_sequence = Value::Null;
    let stop_reason = match (tool, tool_result) {
        (Some(tool), _) => {
            // A tool whose schema declares no properties takes no input.
            let input = if tool["input_schema"]["properties"]
                .as_object()
                .is_some_and(|p| p.is_empty())
            {
                json!({})
            } else {
                json!({"query": user_text})
            };
            content.push(json!({"type": "tool_use", "id": format!("toolu_fake{n}"), "name": tool["name"], "input": input}));
            "tool_use"
        }
        (None, result) => {
            let mut text = match result {
                Some(result) => format!("tool said: {result}"),
                None => format!("fake answer #{n}"),
            };
            // The model stops before a stop sequence it would write ([API] `stop_sequences`).
            let first = body["stop_sequences"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .filter_map(|s| text.find(s).map(|at| (at, s)))
                .min();
            if let Some((at, sequence)) = first {
                text.truncate(at);
                stop_sequence = json!(sequence);
            }
            content.push(json!({"type": "text", "text": text}));
            if stop_sequence.is_null() {
                "end_turn"
            } else {
                "stop_sequence"
            }
        }
    };
    let (read, five, hour) = cache_usage(body, cache);
    let usage = json!({"input_tokens": 10, "output_tokens": 5,
        "cache_creation_input_tokens": five + hour, "cache_read_input_tokens": read,
        "cache_creation": {"ephemeral_5m_input_tokens": five, "ephemeral_1h_input_tokens": hour}});
    let id = format!("msg_fake{n}");
    if body["stream"] == json!(true) {
        return stream(&id, &model, &content, stop_reason, &stop_sequence, usage);
    }
    axum::Json(json!({
        "id": id, "type": "message", "role": "assistant", "model": model,
        "content": content, "stop_reason": stop_reason, "stop_sequence": stop_sequence,
        "usage": usage,
    }))
    .into_response()
}

/// The event sequence of a streamed message ([API] streaming): text, thinking and tool input
/// arrive in two pieces each (a tool without input in one empty piece, as Anthropic sends
/// `{}`), a thinking block's signature in its own delta; usage in `message_start` (input
/// side) and `message_delta` (output).
fn stream(
    id: &str,
    model: &str,
    content: &[Value],
    stop_reason: &str,
    stop_sequence: &Value,
    usage: Value,
) -> Response {
    let mut start_usage = usage;
    start_usage["output_tokens"] = json!(1);
    let mut events = vec![(
        "message_start",
        json!({"type": "message_start", "message": {"id": id, "type": "message", "role": "assistant",
            "content": [], "model": model, "stop_reason": null, "stop_sequence": null,
            "usage": start_usage}}),
    )];
    for (index, block) in content.iter().enumerate() {
        let (start, pieces): (Value, Vec<Value>) = match block["type"].as_str() {
            Some("tool_use") => {
                let input = block["input"].to_string();
                let pieces = if input == "{}" {
                    vec![json!({"type": "input_json_delta", "partial_json": ""})]
                } else {
                    let (a, b) = super::halves(&input);
                    [a, b]
                        .iter()
                        .map(|p| json!({"type": "input_json_delta", "partial_json": p}))
                        .collect()
                };
                (
                    json!({"type": "tool_use", "id": block["id"], "name": block["name"], "input": {}}),
                    pieces,
                )
            }
            Some("thinking") => {
                let (a, b) = super::halves(block["thinking"].as_str().unwrap());
                (
                    json!({"type": "thinking", "thinking": "", "signature": ""}),
                    vec![
                        json!({"type": "thinking_delta", "thinking": a}),
                        json!({"type": "thinking_delta", "thinking": b}),
                        json!({"type": "signature_delta", "signature": block["signature"]}),
                    ],
                )
            }
            _ => {
                let text = block["text"].as_str().unwrap();
                let cut = text.find(' ').unwrap_or(text.len());
                let (a, b) = text.split_at(cut);
                (
                    json!({"type": "text", "text": ""}),
                    [a, b]
                        .iter()
                        .filter(|p| !p.is_empty())
                        .map(|p| json!({"type": "text_delta", "text": p}))
                        .collect(),
                )
            }
        };
        events.push((
            "content_block_start",
            json!({"type": "content_block_start", "index": index, "content_block": start}),
        ));
        events.push(("ping", json!({"type": "ping"})));
        for delta in pieces {
            events.push((
                "content_block_delta",
                json!({"type": "content_block_delta", "index": index, "delta": delta}),
            ));
        }
        events.push((
            "content_block_stop",
            json!({"type": "content_block_stop", "index": index}),
        ));
    }
    events.push((
        "message_delta",
        json!({"type": "message_delta", "delta": {"stop_reason": stop_reason, "stop_sequence": stop_sequence},
               "usage": {"output_tokens": 5}}),
    ));
    events.push(("message_stop", json!({"type": "message_stop"})));
    let sse: String = events
        .iter()
        .map(|(name, data)| format!("event: {name}\ndata: {data}\n\n"))
        .collect();
    (
        [(header::CONTENT_TYPE, "text/event-stream")],
        Body::from(sse),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(extra: Value) -> Value {
        let mut body = json!({"model": "claude-sonnet-4-5", "max_tokens": 100,
            "messages": [{"role": "user", "content": "hi"}]});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        body
    }

    /// Every rule refuses what it is about (and a valid request passes), so a test that
    /// passes against this fake would pass against Anthropic.
    #[test]
    fn each_rule_refuses_what_anthropic_refuses() {
        assert_eq!(invalid(&with(json!({}))), Ok(()));
        assert_eq!(
            invalid(&with(json!({"max_tokens": 0}))),
            Ok(()),
            "cache pre-warming"
        );
        let cc = json!({"type": "ephemeral"});
        let use_then = |result: Value| {
            json!({"messages": [
                {"role": "user", "content": "go"},
                {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "f", "input": {}}]},
                {"role": "user", "content": result}]})
        };
        let cases = [
            (json!({"max_tokens": null}), "max_tokens"),
            (json!({"max_tokens": -1}), "max_tokens"),
            (json!({"temperature": 1.5}), "temperature"),
            (json!({"top_k": -1}), "top_k"),
            (
                json!({"temperature": 0.5, "top_p": 0.9}),
                "cannot both be specified",
            ),
            (
                json!({"model": "claude-opus-4-7", "temperature": 0.5}),
                "deprecated",
            ),
            (
                json!({"model": "claude-opus-4-7", "thinking": {"type": "enabled", "budget_tokens": 2000}}),
                "adaptive",
            ),
            (json!({"stop_sequences": [1]}), "stop_sequences"),
            (json!({"output_config": {"effort": "extreme"}}), "effort"),
            (
                json!({"messages": [{"role": "assistant", "content": "hi"}]}),
                "first message",
            ),
            (
                json!({"messages": [{"role": "system", "content": "hi"}]}),
                "role",
            ),
            (
                json!({"messages": [{"role": "user", "content": ""}]}),
                "non-empty",
            ),
            (
                json!({"tools": [{"name": "a.b", "input_schema": {"type": "object"}}]}),
                "custom.name",
            ),
            (
                json!({"tools": [{"name": &"x".repeat(129), "input_schema": {"type": "object"}}]}),
                "custom.name",
            ),
            (
                json!({"tools": [{"name": "f", "input_schema": {"type": "string"}}]}),
                "input_schema",
            ),
            (
                json!({"messages": [{"role": "user", "content": "go"},
                {"role": "assistant", "content": [{"type": "tool_use", "id": "call.1", "name": "f", "input": {}}]}]}),
                "tool_use.id",
            ),
            (use_then(json!("no result")), "without `tool_result`"),
            (
                use_then(json!([{"type": "tool_result", "tool_use_id": "toolu_2"}])),
                "unexpected `tool_use_id`",
            ),
            (
                use_then(
                    json!([{"type": "text", "text": "x"}, {"type": "tool_result", "tool_use_id": "toolu_1"}]),
                ),
                "must come first",
            ),
            (
                json!({"system": [{"type": "text", "text": "a", "cache_control": cc}, {"type": "text", "text": "b", "cache_control": cc},
                {"type": "text", "text": "c", "cache_control": cc}, {"type": "text", "text": "d", "cache_control": cc}],
                "cache_control": cc}),
                "A maximum of 4 blocks",
            ),
            (
                json!({"system": [{"type": "text", "text": "a", "cache_control": {"type": "ephemeral", "ttl": "2h"}}]}),
                "ttl",
            ),
            (
                json!({"thinking": {"type": "enabled", "budget_tokens": 1000}}),
                "1024",
            ),
            (
                json!({"thinking": {"type": "enabled", "budget_tokens": 2000}}),
                "greater than `thinking.budget_tokens`",
            ),
            (
                json!({"max_tokens": 4000, "thinking": {"type": "enabled", "budget_tokens": 2000}, "temperature": 0.5}),
                "only be set to 1",
            ),
            (
                json!({"max_tokens": 4000, "thinking": {"type": "adaptive"}, "top_k": 5}),
                "top_k",
            ),
            (
                json!({"max_tokens": 4000, "thinking": {"type": "adaptive"}, "tool_choice": {"type": "any"}}),
                "forces tool use",
            ),
            (
                json!({"messages": [{"role": "user", "content": [{"type": "image", "source": {"type": "base64", "media_type": "image/bmp", "data": "x"}}]}]}),
                "media_type",
            ),
            (
                json!({"messages": [{"role": "user", "content": [{"type": "document", "source": {"type": "base64", "media_type": "text/csv", "data": "x"}}]}]}),
                "document",
            ),
            (
                json!({"messages": [{"role": "user", "content": [{"type": "input_audio"}]}]}),
                "does not match",
            ),
            (
                json!({"messages": [{"role": "user", "content": "go"},
                {"role": "assistant", "content": [{"type": "thinking", "thinking": "x", "signature": "forged"}]}]}),
                "signature",
            ),
        ];
        for (extra, why) in cases {
            let body = with(extra.clone());
            match invalid(&body) {
                Err(m) => assert!(m.contains(why), "{extra}: {m}"),
                Ok(()) => panic!("accepted: {extra}"),
            }
        }
        // With thinking on, the tool-use turn in progress starts with its thinking block.
        let thought = "x";
        let turn = |first: Value| {
            with(
                json!({"max_tokens": 4000, "thinking": {"type": "enabled", "budget_tokens": 2000}, "messages": [
                {"role": "user", "content": "go"},
                {"role": "assistant", "content": [first, {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {}}]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1"}]}]}),
            )
        };
        let signed =
            json!({"type": "thinking", "thinking": thought, "signature": signature(thought)});
        assert_eq!(invalid(&turn(signed)), Ok(()));
        let unthought = turn(json!({"type": "text", "text": "calling"}));
        assert!(
            invalid(&unthought)
                .unwrap_err()
                .contains("must start with a thinking block")
        );
    }

    #[test]
    fn cache_breakpoints_write_once_then_read() {
        let cache = Mutex::new(HashSet::new());
        let cc = json!({"type": "ephemeral"});
        let ask = |question: &str, marks: bool| {
            let mut body = with(json!({"system": [{"type": "text", "text": "rules"}],
                "messages": [{"role": "user", "content": question}]}));
            if marks {
                body["system"][0]["cache_control"] = json!({"type": "ephemeral", "ttl": "1h"});
                body["cache_control"] = cc.clone();
            }
            body
        };
        assert_eq!(cache_usage(&ask("a", false), &cache), (0, 0, 0));
        // The system block (1 hour) and the last block (5 minutes) are written...
        assert_eq!(cache_usage(&ask("a", true), &cache), (0, 1000, 1000));
        // ...and read back; a new question reads the system prefix and writes its own.
        assert_eq!(cache_usage(&ask("a", true), &cache), (2000, 0, 0));
        assert_eq!(cache_usage(&ask("b", true), &cache), (1000, 1000, 0));
    }
}
