//! Parsing and validating client requests: read what the gateway needs, keep everything else.
//!
//! The body stays a JSON map so every field (tools, response_format, seed, logprobs, fields
//! OpenAI adds next year) reaches the provider untouched; only the fields the gateway acts on
//! are checked, and they are checked before anything costs money.
//!
//! Every dimension of work a request can ask for is bounded here, before any work is done
//! (see [`bounds`]): the body's size is bounded by `server.max_body_bytes` and its nesting by
//! the JSON parser (128 levels), the rest by these limits, for every provider, `mock`
//! included.

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
    /// An array (or a count summed over several) is longer than Sluice accepts
    #[error("Invalid `{field}`: at most {max} {what} per request, got {got}.")]
    TooMany {
        /// Path of the field.
        field: String,
        /// What is counted, e.g. `items` or `token ids`.
        what: &'static str,
        /// The most accepted.
        max: usize,
        /// How many the request has.
        got: usize,
    },
    /// An input whose token count cannot be bounded before the provider answers, under a
    /// limit that depends on it
    #[error(
        "`{field}` cannot be priced before the provider answers (audio and files have no \
         token bound), so it is refused for keys and tenants with a spending cap or a \
         tokens-per-minute limit."
    )]
    Unbounded {
        /// Path of the input.
        field: String,
    },
}

impl InvalidRequest {
    /// The request field the error is about, for OpenAI's `param`.
    pub fn param(&self) -> Option<String> {
        match self {
            Self::Missing(f) => Some((*f).to_owned()),
            Self::Invalid { field, .. }
            | Self::TooMany { field, .. }
            | Self::Unbounded { field } => Some(field.clone()),
            Self::NotJson(_) | Self::NotObject => None,
        }
    }
}

/// The most a request may ask for, checked before any work. OpenAI's published limits where
/// it has them (so a request that works against OpenAI works through Sluice), Sluice's own
/// otherwise.
pub mod bounds {
    /// `messages` per chat request (Sluice's own; context windows end well before).
    pub const MESSAGES: usize = 2048;
    /// Content parts in one message (Sluice's own).
    pub const CONTENT_PARTS: usize = 1024;
    /// Images per request (OpenAI: "up to 500 individual image inputs per request").
    pub const IMAGES: usize = 500;
    /// Choices per chat request, `n` (OpenAI's maximum).
    pub const N: u64 = 128;
    /// `tools` (and legacy `functions`) per request (OpenAI's maximum).
    pub const TOOLS: usize = 128;
    /// `stop` sequences (OpenAI: "up to 4 sequences").
    pub const STOP: usize = 4;
    /// `logit_bias` entries (OpenAI's maximum).
    pub const LOGIT_BIAS: usize = 300;
    /// `top_logprobs` (OpenAI: 0 to 20).
    pub const TOP_LOGPROBS: u64 = 20;
    /// `metadata` pairs (OpenAI: 16).
    pub const METADATA: usize = 16;
    /// Inputs per embeddings request (OpenAI: "no more than 2,048 inputs").
    pub const EMBEDDING_INPUTS: usize = 2048;
    /// Token ids in one token-id input (OpenAI: 8,192 tokens per input).
    pub const TOKENS_PER_INPUT: usize = 8192;
    /// Token ids summed over all inputs (OpenAI: 300,000 tokens per request).
    pub const EMBEDDING_TOKENS: usize = 300_000;
    /// Largest token id (the largest vocabulary of OpenAI's tokenizers, o200k, is 200,019;
    /// a larger id cannot be valid, and bounding it keeps ids small numbers).
    pub const TOKEN_ID: u64 = (1 << 20) - 1;
    /// `dimensions` of an embedding (text-embedding-3-large's and gemini-embedding-001's 3,072).
    pub const DIMENSIONS: u64 = 3072;
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
    at_most("messages", "messages", messages.len(), bounds::MESSAGES)?;
    let mut images = 0;
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
            None | Some(Value::Null | Value::String(_)) => {}
            Some(Value::Array(parts)) => {
                let field = || format!("messages[{i}].content");
                at_most(field(), "content parts", parts.len(), bounds::CONTENT_PARTS)?;
                // `image` is Anthropic's own block, carried through from `/v1/messages`.
                images += parts
                    .iter()
                    .filter(|p| {
                        matches!(
                            p.get("type").and_then(Value::as_str),
                            Some("image_url" | "image")
                        )
                    })
                    .count();
            }
            Some(_) => {
                return Err(invalid(
                    format!("messages[{i}].content"),
                    "a string, an array of content parts, or null",
                ));
            }
        }
    }
    at_most("messages", "images", images, bounds::IMAGES)?;
    for field in ["max_tokens", "max_completion_tokens"] {
        match body.get(field) {
            None | Some(Value::Null) => {}
            Some(v) if v.as_u64().is_some_and(|n| n >= 1) => {}
            Some(_) => return Err(invalid(field, "a positive integer")),
        }
    }
    match body.get("n") {
        None | Some(Value::Null) => {}
        Some(v) if v.as_u64().is_some_and(|n| (1..=bounds::N).contains(&n)) => {}
        Some(_) => return Err(invalid("n", "an integer from 1 to 128")),
    }
    match body.get("top_logprobs") {
        None | Some(Value::Null) => {}
        Some(v) if v.as_u64().is_some_and(|n| n <= bounds::TOP_LOGPROBS) => {}
        Some(_) => return Err(invalid("top_logprobs", "an integer from 0 to 20")),
    }
    match body.get("stop") {
        None | Some(Value::Null | Value::String(_)) => {}
        Some(Value::Array(stops)) => at_most("stop", "sequences", stops.len(), bounds::STOP)?,
        Some(_) => return Err(invalid("stop", "a string or an array of strings")),
    }
    for (field, max) in [
        ("logit_bias", bounds::LOGIT_BIAS),
        ("metadata", bounds::METADATA),
    ] {
        match body.get(field) {
            None | Some(Value::Null) => {}
            Some(Value::Object(map)) => at_most(field, "entries", map.len(), max)?,
            Some(_) => return Err(invalid(field, "an object")),
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
            None | Some(Value::Null) => {}
            Some(Value::Array(tools)) => at_most(field, "items", tools.len(), bounds::TOOLS)?,
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
    if let Some(Value::Array(items)) = body.get("input") {
        // A flat token-id array is one input; an array of strings or of id arrays is many.
        let flat = items.iter().all(Value::is_u64);
        let (inputs, ids): (usize, Vec<&Vec<Value>>) = if flat {
            (1, vec![items])
        } else {
            (
                items.len(),
                items.iter().filter_map(Value::as_array).collect(),
            )
        };
        at_most("input", "inputs", inputs, bounds::EMBEDDING_INPUTS)?;
        let mut total = 0;
        for (i, input) in ids.iter().enumerate() {
            let field = || {
                if flat {
                    "input".to_owned()
                } else {
                    format!("input[{i}]")
                }
            };
            at_most(field(), "token ids", input.len(), bounds::TOKENS_PER_INPUT)?;
            if input
                .iter()
                .any(|id| id.as_u64().is_none_or(|id| id > bounds::TOKEN_ID))
            {
                return Err(invalid(field(), "token ids from 0 to 1048575"));
            }
            total += input.len();
        }
        at_most("input", "token ids", total, bounds::EMBEDDING_TOKENS)?;
    }
    match body.get("dimensions") {
        None | Some(Value::Null) => Ok(()),
        Some(v)
            if v.as_u64()
                .is_some_and(|n| (1..=bounds::DIMENSIONS).contains(&n)) =>
        {
            Ok(())
        }
        Some(_) => Err(invalid("dimensions", "an integer from 1 to 3072")),
    }
}

/// Refuses an array (or a sum of lengths) longer than `max`.
fn at_most(
    field: impl Into<String>,
    what: &'static str,
    got: usize,
    max: usize,
) -> Result<(), InvalidRequest> {
    if got <= max {
        return Ok(());
    }
    Err(InvalidRequest::TooMany {
        field: field.into(),
        what,
        max,
        got,
    })
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
