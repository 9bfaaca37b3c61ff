//! Parsing and validating client requests: read what the gateway needs, keep everything else.
//!
//! The body stays a JSON map so every field (tools, response_format, seed, logprobs, fields
//! OpenAI adds next year) reaches the provider untouched; only the fields the gateway acts on
//! are checked, and they are checked before anything costs money.

use serde_json::{Map, Value};

use crate::providers::Endpoint;

/// A client request that failed validation. The doc comment of each variant is its meaning;
/// the message is shown to the client.
#[derive(Debug, Clone, thiserror::Error)]
pub enum InvalidRequest {
    /// Body is not parseable JSON
    #[error("We could not parse the JSON body of your request: {0}")]
    NotJson(String),
    /// Body is JSON but not an object
    #[error("The request body must be a JSON object.")]
    NotObject,
    /// A required field is absent
    #[error("You must provide a `{0}` parameter.")]
    Missing(&'static str),
    /// A field has the wrong JSON type or an out-of-range value
    #[error("Invalid value for `{field}`: expected {expected}.")]
    Invalid {
        /// Path of the field, e.g. `messages[2].role`.
        field: String,
        /// What would have been accepted.
        expected: &'static str,
    },
}

impl InvalidRequest {
    /// The request field the error is about, for OpenAI's `param`.
    pub fn param(&self) -> Option<String> {
        match self {
            Self::Missing(f) => Some((*f).to_owned()),
            Self::Invalid { field, .. } => Some(field.clone()),
            Self::NotJson(_) | Self::NotObject => None,
        }
    }
}

/// A validated request, ready to route.
#[derive(Debug, Clone)]
pub struct ParsedRequest {
    /// Which endpoint it came in on.
    pub endpoint: Endpoint,
    /// The model name the client asked for.
    pub model: String,
    /// Whether the client asked for a stream.
    pub stream: bool,
    /// The full body, every field preserved.
    pub body: Map<String, Value>,
}

const ROLES: &[&str] = &[
    "system",
    "developer",
    "user",
    "assistant",
    "tool",
    "function",
];

fn invalid(field: impl Into<String>, expected: &'static str) -> InvalidRequest {
    InvalidRequest::Invalid {
        field: field.into(),
        expected,
    }
}

/// Parses and validates a body for `endpoint`.
pub fn parse(endpoint: Endpoint, bytes: &[u8]) -> Result<ParsedRequest, InvalidRequest> {
    let value: Value =
        serde_json::from_slice(bytes).map_err(|e| InvalidRequest::NotJson(e.to_string()))?;
    let Value::Object(body) = value else {
        return Err(InvalidRequest::NotObject);
    };
    let model = match body.get("model") {
        None | Some(Value::Null) => return Err(InvalidRequest::Missing("model")),
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        Some(_) => return Err(invalid("model", "a non-empty string")),
    };
    let stream = match body.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(invalid("stream", "a boolean")),
    };
    match endpoint {
        Endpoint::ChatCompletions => check_chat(&body)?,
        Endpoint::Embeddings => {
            if stream {
                return Err(invalid("stream", "false or absent for embeddings"));
            }
            check_embeddings(&body)?;
        }
    }
    Ok(ParsedRequest {
        endpoint,
        model,
        stream,
        body,
    })
}

fn check_chat(body: &Map<String, Value>) -> Result<(), InvalidRequest> {
    let messages = match body.get("messages") {
        None | Some(Value::Null) => return Err(InvalidRequest::Missing("messages")),
        Some(Value::Array(m)) if !m.is_empty() => m,
        Some(_) => return Err(invalid("messages", "a non-empty array of messages")),
    };
    for (i, m) in messages.iter().enumerate() {
        let Some(m) = m.as_object() else {
            return Err(invalid(format!("messages[{i}]"), "an object"));
        };
        match m.get("role").and_then(Value::as_str) {
            Some(r) if ROLES.contains(&r) => {}
            _ => {
                return Err(invalid(
                    format!("messages[{i}].role"),
                    "one of system, developer, user, assistant, tool, function",
                ));
            }
        }
        match m.get("content") {
            None | Some(Value::Null | Value::String(_) | Value::Array(_)) => {}
            Some(_) => {
                return Err(invalid(
                    format!("messages[{i}].content"),
                    "a string, an array of content parts, or null",
                ));
            }
        }
    }
    for field in ["max_tokens", "max_completion_tokens", "n"] {
        match body.get(field) {
            None | Some(Value::Null) => {}
            Some(v) if v.as_u64().is_some_and(|n| n >= 1) => {}
            Some(_) => return Err(invalid(field, "a positive integer")),
        }
    }
    for field in [
        "temperature",
        "top_p",
        "presence_penalty",
        "frequency_penalty",
    ] {
        match body.get(field) {
            None | Some(Value::Null | Value::Number(_)) => {}
            Some(_) => return Err(invalid(field, "a number")),
        }
    }
    for field in ["tools", "functions"] {
        match body.get(field) {
            None | Some(Value::Null | Value::Array(_)) => {}
            Some(_) => return Err(invalid(field, "an array")),
        }
    }
    match body.get("stream_options") {
        None | Some(Value::Null | Value::Object(_)) => Ok(()),
        Some(_) => Err(invalid("stream_options", "an object")),
    }
}

fn check_embeddings(body: &Map<String, Value>) -> Result<(), InvalidRequest> {
    const EXPECTED: &str =
        "a string, an array of strings, an array of token ids, or an array of token-id arrays";
    let ok = match body.get("input") {
        None | Some(Value::Null) => return Err(InvalidRequest::Missing("input")),
        Some(Value::String(_)) => true,
        Some(Value::Array(items)) if !items.is_empty() => {
            items.iter().all(Value::is_string)
                || items.iter().all(Value::is_u64)
                || items.iter().all(|i| {
                    i.as_array()
                        .is_some_and(|t| !t.is_empty() && t.iter().all(Value::is_u64))
                })
        }
        Some(_) => false,
    };
    if !ok {
        return Err(invalid("input", EXPECTED));
    }
    match body.get("dimensions") {
        None | Some(Value::Null) => Ok(()),
        Some(v) if v.as_u64().is_some_and(|n| n >= 1) => Ok(()),
        Some(_) => Err(invalid("dimensions", "a positive integer")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat(s: &str) -> Result<ParsedRequest, InvalidRequest> {
        parse(Endpoint::ChatCompletions, s.as_bytes())
    }

    #[test]
    fn keeps_every_field() {
        let r = chat(r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"seed":7,"future_field":{"a":[1]}}"#).unwrap();
        assert_eq!(r.body["seed"], 7);
        assert_eq!(r.body["future_field"]["a"][0], 1);
        assert!(!r.stream);
    }

    #[test]
    fn names_the_bad_field() {
        let cases = [
            ("{", None),
            ("[]", None),
            (
                r#"{"messages":[{"role":"user","content":"x"}]}"#,
                Some("model"),
            ),
            (r#"{"model":"m"}"#, Some("messages")),
            (r#"{"model":5,"messages":[]}"#, Some("model")),
            (r#"{"model":"m","messages":"hi"}"#, Some("messages")),
            (r#"{"model":"m","messages":[]}"#, Some("messages")),
            (
                r#"{"model":"m","messages":[{"role":"wizard"}]}"#,
                Some("messages[0].role"),
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":3}]}"#,
                Some("messages[0].content"),
            ),
            (
                r#"{"model":"m","messages":[{"role":"user"}],"max_tokens":-1}"#,
                Some("max_tokens"),
            ),
            (
                r#"{"model":"m","messages":[{"role":"user"}],"temperature":"hot"}"#,
                Some("temperature"),
            ),
            (
                r#"{"model":"m","messages":[{"role":"user"}],"stream":"yes"}"#,
                Some("stream"),
            ),
            (
                r#"{"model":"m","messages":[{"role":"user"}],"tools":{}}"#,
                Some("tools"),
            ),
        ];
        for (body, param) in cases {
            let err = chat(body).unwrap_err();
            assert_eq!(err.param().as_deref(), param, "{body}");
        }
    }

    #[test]
    fn embedding_inputs() {
        let ok = [r#""a""#, r#"["a","b"]"#, "[1,2]", "[[1],[2,3]]"];
        for input in ok {
            let body = format!(r#"{{"model":"e","input":{input}}}"#);
            parse(Endpoint::Embeddings, body.as_bytes()).unwrap();
        }
        let bad = ["[]", "5", r#"["a",1]"#, "[[]]", "{}"];
        for input in bad {
            let body = format!(r#"{{"model":"e","input":{input}}}"#);
            let err = parse(Endpoint::Embeddings, body.as_bytes()).unwrap_err();
            assert_eq!(err.param().as_deref(), Some("input"), "{input}");
        }
    }
}
