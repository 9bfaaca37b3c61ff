//! OpenAI chat request → Anthropic Messages request ([`to_messages_request`]): the OpenAI
//! body is read field by field (every field translated, left out for a stated reason, or
//! refused with a 400 naming it) and the answer is built from the types in [`super::wire`].

use base64::Engine as _;
use serde_json::{Map, Value, json};

use super::wire::{
    Block, Content, ContentBlock, MessagesRequest, Metadata, Source, Tool, ToolChoice, Turn,
};
use super::{DEFAULT_MAX_TOKENS, EFFORT_BUDGETS, NATIVE_PARTS, rejected};
use crate::providers::ProviderError;

/// Builds the Messages API body from an OpenAI chat request.
pub fn to_messages_request(
    body: &Map<String, Value>,
    stream: bool,
) -> Result<MessagesRequest, ProviderError> {
    if body.get("n").and_then(Value::as_u64).is_some_and(|n| n > 1) {
        return Err(rejected("Anthropic returns one choice; `n` must be 1"));
    }
    refuse_unmappable(body)?;
    let mut system = Vec::new();
    let mut turns: Vec<(&'static str, Vec<Block>)> = Vec::new();
    for (i, message) in body
        .get("messages")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let role = message.get("role").and_then(Value::as_str).unwrap_or("");
        let (role, mut blocks) = match role {
            "system" | "developer" => {
                let mut blocks = content_blocks(message.get("content"), i, Place::System)?;
                mark_last(message, &mut blocks);
                system.extend(blocks);
                continue;
            }
            "user" => (
                "user",
                content_blocks(message.get("content"), i, Place::User)?,
            ),
            "assistant" => ("assistant", assistant_blocks(message, i)?),
            "tool" => ("user", vec![tool_result_block(message, i)?]),
            other => return Err(rejected(&format!("unsupported message role `{other}`"))),
        };
        mark_last(message, &mut blocks);
        match turns.last_mut() {
            // One turn per role change, as Anthropic's examples have them: merge neighbours.
            Some((last, content)) if *last == role => content.extend(blocks),
            _ => turns.push((role, blocks)),
        }
    }
    let explicit_max = body
        .get("max_completion_tokens")
        .or_else(|| body.get("max_tokens"))
        .and_then(Value::as_u64);
    let (thinking, budget) = thinking(body, explicit_max)?;
    let (temperature, top_p) = sampling(body)?;
    let stop_sequences = match body.get("stop") {
        Some(Value::String(s)) => Some(vec![Value::String(s.clone())]),
        Some(Value::Array(items)) if !items.is_empty() => Some(items.clone()),
        _ => None,
    };
    let messages = turns
        .into_iter()
        .map(|(role, blocks)| Turn {
            role: Some(role.to_owned()),
            content: Some(Content::Blocks(blocks)),
        })
        .collect();
    Ok(MessagesRequest {
        model: body.get("model").and_then(Value::as_str).map(str::to_owned),
        // With a thinking budget and no ceiling from the client, the budget comes on top of
        // the default answer length (Anthropic counts thinking in `max_tokens`).
        max_tokens: Some(explicit_max.unwrap_or(DEFAULT_MAX_TOKENS.saturating_add(budget))),
        messages: Some(messages),
        system: (!system.is_empty()).then_some(Content::Blocks(system)),
        temperature,
        top_p,
        top_k: present(body, "top_k").cloned(),
        stop_sequences,
        metadata: body
            .get("user")
            .and_then(Value::as_str)
            .map(|user| Metadata {
                user_id: Some(user.to_owned()),
                extra: Map::new(),
            }),
        tools: tools(body)?,
        tool_choice: tool_choice(body),
        thinking,
        output_config: present(body, "output_config").cloned(),
        cache_control: present(body, "cache_control").cloned(),
        stream: stream.then_some(true),
        extra: Map::new(),
    })
}

/// OpenAI request fields that change the answer and that the Messages API has no way to
/// express: a clear 400 naming the field, never a silently different answer. A field at its
/// default (`response_format: {"type": "text"}`, `logprobs: false`, a penalty of 0, an empty
/// `logit_bias`) asks for nothing and passes. Hints that cannot change what the model says
/// (`seed`, `prediction`, `service_tier`, `store`, `parallel_tool_calls` without tools) are
/// left out, as the README's Anthropic section lists.
fn refuse_unmappable(body: &Map<String, Value>) -> Result<(), ProviderError> {
    let refuse = |param: &str, why: &str| ProviderError::Unsupported {
        param: param.to_owned(),
        message: format!(
            "`{param}` cannot be sent to Anthropic: {why}. Remove it, or use a model served \
             by another provider."
        ),
    };
    let set = |field: &str| present(body, field);
    if let Some(format) = set("response_format")
        && format.get("type").and_then(Value::as_str) != Some("text")
    {
        return Err(refuse(
            "response_format",
            "the Messages API has no JSON mode or JSON Schema output format",
        ));
    }
    if set("logprobs").is_some_and(|v| v != &Value::Bool(false)) || set("top_logprobs").is_some() {
        let param = if set("top_logprobs").is_some() {
            "top_logprobs"
        } else {
            "logprobs"
        };
        return Err(refuse(
            param,
            "the Messages API returns no log probabilities",
        ));
    }
    for penalty in ["presence_penalty", "frequency_penalty"] {
        if set(penalty)
            .and_then(Value::as_f64)
            .is_some_and(|p| p != 0.0)
        {
            return Err(refuse(
                penalty,
                "the Messages API has no repetition penalties",
            ));
        }
    }
    if set("logit_bias")
        .and_then(Value::as_object)
        .is_some_and(|b| !b.is_empty())
    {
        return Err(refuse(
            "logit_bias",
            "the Messages API takes no token biases",
        ));
    }
    for legacy in ["functions", "function_call"] {
        if set(legacy).is_some() {
            return Err(refuse(legacy, "send the functions as `tools` instead"));
        }
    }
    if set("modalities")
        .and_then(Value::as_array)
        .is_some_and(|m| m.iter().any(|v| v.as_str().is_some_and(|v| v != "text")))
        || set("audio").is_some()
    {
        return Err(refuse("modalities", "Anthropic answers in text only"));
    }
    if set("web_search_options").is_some() {
        return Err(refuse(
            "web_search_options",
            "Anthropic's web search is a server tool, not this option",
        ));
    }
    Ok(())
}

fn present<'a>(body: &'a Map<String, Value>, field: &str) -> Option<&'a Value> {
    body.get(field).filter(|v| !v.is_null())
}

/// `temperature` and `top_p`. Anthropic's temperature runs from 0 to 1 (OpenAI's to 2, and
/// no value above 1 means the same there: refused, not clamped). Anthropic has always asked
/// for one sampler or the other, and its models since Claude 4.5 refuse both ("`temperature`
/// and `top_p` cannot both be specified for this model"): a sampler at its default (1, both)
/// is left out, since omitting it means the same; two real ones are refused.
fn sampling(body: &Map<String, Value>) -> Result<(Option<Value>, Option<Value>), ProviderError> {
    let temperature = present(body, "temperature");
    if let Some(t) = temperature
        && !t.as_f64().is_some_and(|t| (0.0..=1.0).contains(&t))
    {
        return Err(rejected(&format!(
            "`temperature` must be from 0 to 1 for Anthropic models, got {t}; OpenAI's range \
             above 1 has no equivalent"
        )));
    }
    let at_default = |v: Option<&Value>| v.and_then(Value::as_f64) == Some(1.0);
    let temperature = temperature.filter(|_| !at_default(temperature)).cloned();
    let top_p = present(body, "top_p")
        .filter(|v| !at_default(Some(v)))
        .cloned();
    if temperature.is_some() && top_p.is_some() {
        return Err(rejected(
            "`temperature` and `top_p` cannot both be set for Anthropic models: use one",
        ));
    }
    Ok((temperature, top_p))
}

/// Anthropic's `thinking` (passed through), or one made from `reasoning_effort` (see
/// [`EFFORT_BUDGETS`]), with its budget. A budget needs `max_tokens` above it.
fn thinking(
    body: &Map<String, Value>,
    explicit_max: Option<u64>,
) -> Result<(Option<Value>, u64), ProviderError> {
    let effort = present(body, "reasoning_effort");
    let Some(effort) = effort else {
        return Ok((present(body, "thinking").cloned(), 0));
    };
    if present(body, "thinking").is_some() {
        return Err(rejected(
            "`reasoning_effort` and `thinking` cannot both be set: use one",
        ));
    }
    let name = effort.as_str().unwrap_or_default();
    if name == "none" {
        return Ok((None, 0));
    }
    let Some(&(_, budget)) = EFFORT_BUDGETS.iter().find(|(e, _)| *e == name) else {
        return Err(rejected(&format!(
            "`reasoning_effort` {effort} has no Anthropic thinking budget; use none, minimal, \
             low, medium, high or xhigh"
        )));
    };
    if explicit_max.is_some_and(|max| max <= budget) {
        return Err(rejected(&format!(
            "`reasoning_effort` {effort} is a thinking budget of {budget} tokens, which \
             Anthropic counts in `max_tokens`: set `max_tokens` above {budget}"
        )));
    }
    Ok((
        Some(json!({"type": "enabled", "budget_tokens": budget})),
        budget,
    ))
}

/// OpenAI function tools as Anthropic tools (`cache_control` on the tool kept).
fn tools(body: &Map<String, Value>) -> Result<Vec<Tool>, ProviderError> {
    let mut out = Vec::new();
    for (i, t) in body
        .get("tools")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let Some(f) = t.get("function").filter(|_| t["type"] == "function") else {
            return Err(rejected(&format!(
                "tools[{i}]: only function tools can be sent to Anthropic"
            )));
        };
        out.push(Tool {
            kind: None,
            name: f.get("name").cloned().unwrap_or(Value::Null),
            description: f.get("description").cloned(),
            input_schema: Some(
                f.get("parameters")
                    .cloned()
                    .unwrap_or_else(|| json!({"type": "object"})),
            ),
            cache_control: t.get("cache_control").cloned(),
            extra: Map::new(),
        });
    }
    Ok(out)
}

/// OpenAI's `tool_choice` and `parallel_tool_calls` as Anthropic's `tool_choice`.
fn tool_choice(body: &Map<String, Value>) -> Option<ToolChoice> {
    let mut choice = match body.get("tool_choice") {
        Some(Value::String(s)) if s == "none" => ToolChoice::of("none"),
        Some(Value::String(s)) if s == "required" => ToolChoice::of("any"),
        Some(Value::Object(o)) => {
            let name = o.get("function")?.get("name")?;
            ToolChoice {
                name: Some(name.clone()),
                ..ToolChoice::of("tool")
            }
        }
        _ if body.get("parallel_tool_calls") == Some(&Value::Bool(false)) => ToolChoice::of("auto"),
        _ => return None,
    };
    if body.get("parallel_tool_calls") == Some(&Value::Bool(false))
        && choice.kind.as_deref() != Some("none")
    {
        choice.disable_parallel_tool_use = Some(true);
    }
    Some(choice)
}

/// Where content parts are going: what Anthropic accepts differs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    /// `system`: text only.
    System,
    /// A user turn.
    User,
    /// An assistant turn: text (and refusals, which are text the model said).
    Assistant,
    /// Inside a `tool_result`: text, images, documents, search results.
    ToolResult,
}

/// A message-level `cache_control` (LiteLLM's form) marks the message's last block, unless
/// that block has its own.
fn mark_last(message: &Value, blocks: &mut [Block]) {
    if let (Some(cc), Some(last)) = (message.get("cache_control"), blocks.last_mut()) {
        last.mark_cache(cc);
    }
}

/// A message's content as blocks: a string is one text block (none if empty: Anthropic
/// refuses empty text), an array is one block per part.
fn content_blocks(
    content: Option<&Value>,
    i: usize,
    place: Place,
) -> Result<Vec<Block>, ProviderError> {
    match content {
        Some(Value::String(s)) if s.is_empty() => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(vec![ContentBlock::text(s.as_str()).into()]),
        Some(Value::Array(parts)) => {
            let mut blocks = Vec::with_capacity(parts.len());
            for (j, part) in parts.iter().enumerate() {
                if let Some(block) =
                    part_block(part, &format!("messages[{i}].content[{j}]"), place)?
                {
                    blocks.push(block);
                }
            }
            Ok(blocks)
        }
        _ => Ok(Vec::new()),
    }
}

/// One OpenAI content part as an Anthropic block (`None`: an empty text part), or a 400
/// naming the part when Anthropic has nothing that means the same.
fn part_block(part: &Value, at: &str, place: Place) -> Result<Option<Block>, ProviderError> {
    let refuse = |why: &str| Err(rejected(&format!("{at}: {why}")));
    let kind = part.get("type").and_then(Value::as_str).unwrap_or("");
    let cache_control = part.get("cache_control").cloned();
    let block = match (kind, place) {
        ("text", _) => {
            let text = part.get("text").and_then(Value::as_str).unwrap_or("");
            if text.is_empty() {
                return Ok(None);
            }
            ContentBlock::Text {
                text: text.to_owned(),
                cache_control,
                extra: Map::new(),
            }
        }
        ("refusal", Place::Assistant) => {
            let text = part.get("refusal").and_then(Value::as_str).unwrap_or("");
            ContentBlock::Text {
                text: text.to_owned(),
                cache_control,
                extra: Map::new(),
            }
        }
        (_, Place::System | Place::Assistant) => {
            return refuse(&format!(
                "a `{kind}` part cannot be sent to Anthropic here (text only)"
            ));
        }
        ("image_url", _) => {
            let image = part.get("image_url");
            let Some(url) = image
                .and_then(|i| i.get("url"))
                .or(image)
                .and_then(Value::as_str)
            else {
                return refuse("image_url has no url");
            };
            ContentBlock::Image {
                source: image_source(url),
                cache_control,
                extra: Map::new(),
            }
        }
        ("file", _) => {
            let (source, title) = file_source(part.get("file").unwrap_or(&Value::Null), at)?;
            ContentBlock::Document {
                source,
                title,
                // A document's `context` and `citations`, from the `/v1/messages` ingress.
                context: part.get("context").cloned(),
                citations: part.get("citations").cloned(),
                cache_control,
                extra: Map::new(),
            }
        }
        ("input_audio", _) => {
            return refuse(
                "Anthropic has no audio input; send the audio to an OpenAI or Gemini model",
            );
        }
        (native, _) if NATIVE_PARTS.contains(&native) => {
            // Anthropic's own block, carried through from the `/v1/messages` ingress.
            return Ok(Some(Block::Other(part.clone())));
        }
        _ => {
            return refuse(&format!(
                "content part type `{kind}` cannot be sent to Anthropic"
            ));
        }
    };
    Ok(Some(block.into()))
}

/// `data:image/png;base64,…` → a base64 source; anything else → a URL source.
fn image_source(url: &str) -> Source {
    if let Some((media_type, data)) = data_url(url) {
        return Source::Base64 {
            media_type: media_type.to_owned(),
            data: data.to_owned(),
        };
    }
    Source::Url {
        url: url.to_owned(),
    }
}

/// `data:<type>;base64,<data>` → (type, data).
fn data_url(url: &str) -> Option<(&str, &str)> {
    url.strip_prefix("data:")?.split_once(";base64,")
}

/// OpenAI's `file` part (`file_data` as a data URL) as a `document`'s source: PDFs as a
/// base64 source, plain text as a text source; and its title, the `filename`.
fn file_source(file: &Value, at: &str) -> Result<(Source, Option<Value>), ProviderError> {
    let refuse = |why: &str| rejected(&format!("{at}: {why}"));
    if file.get("file_id").is_some_and(|id| !id.is_null()) {
        return Err(refuse(
            "a `file_id` names a file stored at OpenAI, which Anthropic cannot read; send \
             the file's content as `file_data`",
        ));
    }
    let Some(data) = file.get("file_data").and_then(Value::as_str) else {
        return Err(refuse("a file part needs `file_data`"));
    };
    let Some((media_type, data)) = data_url(data) else {
        return Err(refuse(
            "`file_data` must be a data URL: `data:application/pdf;base64,…`",
        ));
    };
    let source = match media_type {
        "application/pdf" => Source::Base64 {
            media_type: media_type.to_owned(),
            data: data.to_owned(),
        },
        "text/plain" => {
            let text = base64::engine::general_purpose::STANDARD
                .decode(data)
                .ok()
                .and_then(|bytes| String::from_utf8(bytes).ok())
                .ok_or_else(|| refuse("`file_data` is not base64 of UTF-8 text"))?;
            Source::Text {
                media_type: media_type.to_owned(),
                data: text,
            }
        }
        other => {
            return Err(refuse(&format!(
                "Anthropic reads PDF (application/pdf) and plain-text files, not {other}"
            )));
        }
    };
    let title = file.get("filename").filter(|t| t.is_string()).cloned();
    Ok((source, title))
}

/// An assistant message as blocks: its thinking blocks (first, unmodified: Anthropic checks
/// their signatures), its text, then one `tool_use` per tool call.
fn assistant_blocks(message: &Value, i: usize) -> Result<Vec<Block>, ProviderError> {
    let mut blocks = Vec::new();
    for (k, block) in message
        .get("thinking_blocks")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let Some(mut block) = block.as_object().cloned().filter(|b| {
            matches!(
                b.get("type").and_then(Value::as_str),
                Some("thinking" | "redacted_thinking")
            )
        }) else {
            return Err(rejected(&format!(
                "messages[{i}].thinking_blocks[{k}]: a thinking block is an object of type \
                 `thinking` or `redacted_thinking`"
            )));
        };
        // Left over from streaming (see `thinking_blocks` chunks).
        block.remove("index");
        // Sent back as it came, whatever its fields: Anthropic checks the signature.
        blocks.push(Block::Other(Value::Object(block)));
    }
    blocks.extend(content_blocks(message.get("content"), i, Place::Assistant)?);
    for call in message
        .get("tool_calls")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let function = call.get("function").unwrap_or(&Value::Null);
        let arguments = function
            .get("arguments")
            .and_then(Value::as_str)
            .unwrap_or("{}");
        let input: Value = if arguments.trim().is_empty() {
            json!({})
        } else {
            serde_json::from_str(arguments)
                .map_err(|_| rejected("a tool call's `arguments` is not JSON"))?
        };
        blocks.push(
            ContentBlock::ToolUse {
                id: tool_id(call.get("id")),
                name: function.get("name").cloned().unwrap_or(Value::Null),
                input: Some(input),
                cache_control: call.get("cache_control").cloned(),
                extra: Map::new(),
            }
            .into(),
        );
    }
    Ok(blocks)
}

/// A tool call id as Anthropic takes it. Anthropic refuses ids outside
/// `^[a-zA-Z0-9_-]+$` (its 400 names `tool_use.id`), and other providers make such ids
/// (`functions.Bash:0`): a conversation begun elsewhere then fails on Claude. Such an id is
/// replaced by one made from its hash, the same on the `tool_use` and its `tool_result`
/// (distinct ids stay distinct); a valid id is sent as it is.
fn tool_id(id: Option<&Value>) -> Value {
    match id {
        Some(Value::String(id)) if !valid_tool_id(id) => {
            let digest = <sha2::Sha256 as sha2::Digest>::digest(id.as_bytes());
            json!(format!("toolu_sluice_{}", hex::encode(&digest[..16])))
        }
        Some(id) => id.clone(),
        None => Value::Null,
    }
}

/// Anthropic's pattern for tool ids, `^[a-zA-Z0-9_-]+$`.
pub fn valid_tool_id(id: &str) -> bool {
    !id.is_empty()
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// A `tool` message as a `tool_result` block: text, or blocks (images, documents) when the
/// result has them; `is_error` kept (an Anthropic extension, see [`crate::providers::extensions`]).
fn tool_result_block(message: &Value, i: usize) -> Result<Block, ProviderError> {
    let content = match message.get("content") {
        Some(Value::String(s)) => Some(Content::Text(s.clone())),
        content @ Some(Value::Array(_)) => Some(Content::Blocks(content_blocks(
            content,
            i,
            Place::ToolResult,
        )?)),
        _ => None,
    };
    Ok(ContentBlock::ToolResult {
        tool_use_id: tool_id(message.get("tool_call_id")),
        content,
        is_error: (message.get("is_error") == Some(&Value::Bool(true))).then_some(true),
        cache_control: None,
        extra: Map::new(),
    }
    .into())
}
