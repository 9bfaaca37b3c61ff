//! OpenAI chat request → Gemini `GenerateContentRequest`.

use std::collections::HashMap;

use serde_json::{Map, Value, json};

use super::bad_request;
use crate::providers::ProviderError;

/// Translates an OpenAI chat request into a Gemini `GenerateContentRequest`.
pub(super) fn generate_request(body: &Map<String, Value>) -> Result<Value, ProviderError> {
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

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::tests::{object, status_400};
    use super::*;

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
}
