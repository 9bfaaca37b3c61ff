//! OpenAI and every OpenAI-compatible server (Azure OpenAI, vLLM, Ollama, …).
//!
//! The body is forwarded as the client sent it (every field preserved, only `model` replaced),
//! except for OpenAI's reasoning models (o1, o3, o4-mini, codex-mini, gpt-5…), which refuse
//! parameters the other chat models take (see [`Reasoning`]): there `max_tokens` — which the
//! gateway itself sets when it reserves an output ceiling, and which `/v1/messages` always
//! sets — is sent as `max_completion_tokens`, parameters at their default value are left out,
//! and any other value of a refused parameter is a 400 naming it, before any call. The
//! answer is checked for shape but returned byte for byte.

use std::borrow::Cow;

use bytes::Bytes;
use futures_util::StreamExt;
use serde::de::{IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::HttpClient;
use super::http::{self, PostUrl, error_message, stream_error};
use super::{
    Endpoint, ProviderApi, ProviderError, UpstreamRequest, UpstreamResponse, headroom_from,
};

/// An OpenAI-compatible API at a base URL such as `https://api.openai.com/v1`.
#[derive(Debug, Clone)]
pub struct OpenAi {
    base_url: String,
    chat_completions: PostUrl,
    embeddings: PostUrl,
}

impl OpenAi {
    /// A provider at `base_url` (with or without a trailing slash).
    pub fn new(base_url: &str) -> Self {
        let base_url = base_url.trim_end_matches('/').to_owned();
        let url = |endpoint: Endpoint| PostUrl::new(format!("{base_url}/{}", endpoint.path()));
        Self {
            chat_completions: url(Endpoint::ChatCompletions),
            embeddings: url(Endpoint::Embeddings),
            base_url,
        }
    }

    /// The base URL, without a trailing slash.
    pub(super) fn base_url(&self) -> &str {
        &self.base_url
    }

    fn url(&self, endpoint: Endpoint) -> &PostUrl {
        match endpoint {
            Endpoint::ChatCompletions => &self.chat_completions,
            Endpoint::Embeddings => &self.embeddings,
        }
    }
}

impl ProviderApi for OpenAi {
    async fn call(
        &self,
        client: &HttpClient,
        request: UpstreamRequest<'_>,
    ) -> Result<UpstreamResponse, ProviderError> {
        let post = self
            .url(request.endpoint)
            .post(client)
            .bearer_auth(request.api_key);
        let body = match request.endpoint {
            Endpoint::ChatCompletions => for_model(request.body)?,
            Endpoint::Embeddings => Cow::Borrowed(request.body),
        };
        if request.stream {
            // Ask for the usage chunk so the stream can be metered; the gateway hides it from
            // clients that did not ask for it themselves.
            let mut body = body.into_owned();
            body.insert(
                "stream_options".into(),
                serde_json::json!({"include_usage": true}),
            );
            let (events, headers) =
                http::send_for_events(post.json(&body), request.timeout).await?;
            let chunks = events.map(|e| {
                let e = e?;
                match stream_error(&e.data) {
                    Some(error) => Err(error),
                    None => Ok(e.data),
                }
            });
            return Ok(UpstreamResponse::Stream {
                chunks: http::boxed(chunks),
                headroom: headroom_from(&headers, request.now_ms),
            });
        }
        let (body, headers) = http::send_for_body(post.json(&body), request.timeout).await?;
        let usage = validate(request.endpoint, &body)?;
        Ok(UpstreamResponse::Complete {
            body,
            usage,
            headroom: headroom_from(&headers, request.now_ms),
        })
    }
}

/// What one of OpenAI's reasoning models refuses, by family. Sources: the API reference
/// (`max_tokens`: "not compatible with o-series models"; `stop`: "Not supported with latest
/// reasoning models o3 and o4-mini"), OpenAI's answers to such requests (400
/// `unsupported_parameter`: "'max_tokens' is not supported with this model. Use
/// 'max_completion_tokens' instead", "'stop' is not supported with this model" from o4-mini and
/// gpt-5-mini; `unsupported_value`: "'temperature' does not support 0.7 with this model. Only the
/// default (1) value is supported"), and LiteLLM's o-series and gpt-5 parameter maps
/// (`o_series_transformation.py`, `gpt_5_transformation.py`): `temperature`, `top_p`,
/// `logprobs`, `top_logprobs`, `presence_penalty`, `frequency_penalty` and `logit_bias` are
/// refused by the o-series and gpt-5; gpt-5.1 and later accept sampling parameters when
/// `reasoning_effort` is `none`, so those are theirs to judge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reasoning {
    /// Only the default `temperature`/`top_p` (1), no `logprobs`/`top_logprobs`.
    pub fixed_sampling: bool,
    /// No `stop` sequences (o3, o4-mini, codex-mini, gpt-5).
    pub refuses_stop: bool,
}

impl Reasoning {
    /// The rules for an upstream model name, `None` for a model that takes every chat
    /// parameter (gpt-4o, gpt-4.1, gpt-5-chat-latest, and any name OpenAI does not use).
    pub fn of(model: &str) -> Option<Self> {
        let family = |prefix: &str| {
            model == prefix
                || model
                    .strip_prefix(prefix)
                    .is_some_and(|rest| rest.starts_with('-'))
        };
        if family("gpt-5-chat") {
            return None;
        }
        if family("o1") {
            return Some(Self {
                fixed_sampling: true,
                refuses_stop: false,
            });
        }
        if family("o3") || family("o4-mini") || family("codex-mini") || family("gpt-5") {
            return Some(Self {
                fixed_sampling: true,
                refuses_stop: true,
            });
        }
        // gpt-5.1, gpt-5.2, … (and their -mini, -codex, dated snapshots).
        if model
            .strip_prefix("gpt-5.")
            .is_some_and(|rest| rest.chars().next().is_some_and(|c| c.is_ascii_digit()))
        {
            return Some(Self {
                fixed_sampling: false,
                refuses_stop: true,
            });
        }
        None
    }
}

/// The chat parameters reasoning models treat differently; everything else in `extra`.
#[derive(Debug, Default, Serialize, Deserialize)]
struct ChatParams {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    max_tokens: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    max_completion_tokens: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    temperature: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    top_p: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    presence_penalty: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    frequency_penalty: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    logprobs: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    top_logprobs: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    logit_bias: Option<Map<String, Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    stop: Option<Stop>,
    #[serde(flatten)]
    extra: Map<String, Value>,
}

/// `stop`: one sequence or several.
#[derive(Debug, Serialize, Deserialize)]
#[serde(untagged)]
enum Stop {
    One(String),
    Many(Vec<String>),
}

impl Stop {
    fn is_empty(&self) -> bool {
        match self {
            Self::One(s) => s.is_empty(),
            Self::Many(v) => v.is_empty(),
        }
    }
}

/// The body as the upstream model accepts it: unchanged for most models; for a reasoning
/// model, `max_tokens` renamed, defaults left out, refused parameters refused.
pub(super) fn for_model(
    body: &Map<String, Value>,
) -> Result<Cow<'_, Map<String, Value>>, ProviderError> {
    let model = body.get("model").and_then(Value::as_str).unwrap_or("");
    let Some(rules) = Reasoning::of(model) else {
        return Ok(Cow::Borrowed(body));
    };
    let model = model.to_owned();
    let params: ChatParams = serde_path_to_error::deserialize(Value::Object(body.clone()))
        .map_err(|e| ProviderError::Unsupported {
            param: e.path().to_string(),
            message: format!("Invalid value for `{}`: {}", e.path(), e.inner()),
        })?;
    let params = for_reasoning(params, rules, &model)?;
    match serde_json::to_value(params) {
        Ok(Value::Object(map)) => Ok(Cow::Owned(map)),
        _ => Err(ProviderError::Unsupported {
            param: "model".into(),
            message: "The request could not be prepared for this model.".into(),
        }),
    }
}

/// Applies a reasoning family's rules (see [`Reasoning`]).
fn for_reasoning(
    mut p: ChatParams,
    rules: Reasoning,
    model: &str,
) -> Result<ChatParams, ProviderError> {
    let refuse = |param: &str, why: &str| ProviderError::Unsupported {
        param: param.to_owned(),
        message: format!(
            "`{param}` is not supported by {model}: {why} (OpenAI reasoning models refuse it). \
             Remove it, or use a model that takes it."
        ),
    };
    // The same limit under the name reasoning models take: both bound the tokens generated,
    // reasoning included. Given both, the tighter one is what the client asked for.
    if let Some(max) = p.max_tokens.take() {
        p.max_completion_tokens = Some(p.max_completion_tokens.map_or(max, |c| c.min(max)));
    }
    // A parameter at its default asks for nothing: leaving it out keeps the meaning.
    let at_default =
        |param: &str, value: &mut Option<f64>, default: f64, refused: bool| match *value {
            Some(v) if v == default => {
                *value = None;
                Ok(())
            }
            Some(v) if refused => Err(refuse(
                param,
                &format!("only the default ({default}) is accepted, got {v}"),
            )),
            _ => Ok(()),
        };
    at_default("temperature", &mut p.temperature, 1.0, rules.fixed_sampling)?;
    at_default("top_p", &mut p.top_p, 1.0, rules.fixed_sampling)?;
    at_default("presence_penalty", &mut p.presence_penalty, 0.0, true)?;
    at_default("frequency_penalty", &mut p.frequency_penalty, 0.0, true)?;
    if rules.fixed_sampling {
        match p.logprobs {
            Some(true) => return Err(refuse("logprobs", "no log probabilities are returned")),
            Some(false) => p.logprobs = None,
            None => {}
        }
        if p.top_logprobs.is_some() {
            return Err(refuse("top_logprobs", "no log probabilities are returned"));
        }
    }
    match &p.logit_bias {
        Some(bias) if bias.is_empty() => p.logit_bias = None,
        Some(_) => return Err(refuse("logit_bias", "token biases are not applied")),
        None => {}
    }
    if rules.refuses_stop {
        match &p.stop {
            Some(stop) if stop.is_empty() => p.stop = None,
            Some(_) => return Err(refuse("stop", "stop sequences are not applied")),
            None => {}
        }
    }
    Ok(p)
}

/// Checks that a 200 body is the JSON the endpoint promises, and reads its usage.
pub(super) fn validate(
    endpoint: Endpoint,
    body: &Bytes,
) -> Result<Option<super::Usage>, ProviderError> {
    let not_json = || ProviderError::Malformed("body is not JSON".into());
    // Read as `Checked`: the answer's content is skipped, not built into a `Value` (that was
    // 4.5% of the proxying path's CPU). A struct also reads from a JSON array: only an object
    // is an answer.
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(not_json());
    }
    let checked: Checked = serde_json::from_slice(body).map_err(|_| not_json())?;
    if checked.error.is_some() {
        let whole: Value = serde_json::from_slice(body).map_err(|_| not_json())?;
        return Err(ProviderError::Malformed(
            error_message(&whole).unwrap_or_else(|| "error object in a 200 answer".into()),
        ));
    }
    let (list, listed) = match endpoint {
        Endpoint::ChatCompletions => ("choices", checked.choices),
        Endpoint::Embeddings => ("data", checked.data),
    };
    if !listed.is_some_and(|Skimmed(IsArray(is))| is) {
        return Err(ProviderError::Malformed(format!("no `{list}` array")));
    }
    Ok(checked.usage.and_then(|Skimmed(read)| read.usage()))
}

/// What [`validate`] reads of a 200 answer; every other field is skipped unread.
#[derive(Deserialize)]
struct Checked {
    /// An error object (`null` reads as none).
    #[serde(default)]
    error: Option<IgnoredAny>,
    #[serde(default)]
    choices: Option<Skimmed<IsArray>>,
    #[serde(default)]
    data: Option<Skimmed<IsArray>>,
    #[serde(default)]
    usage: Option<Skimmed<UsageRead>>,
}

/// How [`Skimmed`] reads any JSON value into `Self`: a type reads the shapes it cares about;
/// every other value is skipped unread and gives the type's `Default`.
trait Skim: Default {
    /// A non-negative integer.
    fn unsigned(_: u64) -> Self {
        Self::default()
    }

    /// An array.
    fn seq<'de, A: SeqAccess<'de>>(mut seq: A) -> Result<Self, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Self::default())
    }

    /// An object.
    fn map<'de, A: MapAccess<'de>>(mut map: A) -> Result<Self, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Self::default())
    }
}

/// Any JSON value, read into `T` by its [`Skim`] rules without building a `Value`.
struct Skimmed<T>(T);

impl<'de, T: Skim> Deserialize<'de> for Skimmed<T> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Shape<T>(std::marker::PhantomData<T>);
        impl<'de, T: Skim> Visitor<'de> for Shape<T> {
            type Value = T;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_u64<E>(self, n: u64) -> Result<T, E> {
                Ok(T::unsigned(n))
            }
            fn visit_i64<E>(self, n: i64) -> Result<T, E> {
                Ok(u64::try_from(n).map_or_else(|_| T::default(), T::unsigned))
            }
            fn visit_f64<E>(self, _: f64) -> Result<T, E> {
                Ok(T::default())
            }
            fn visit_bool<E>(self, _: bool) -> Result<T, E> {
                Ok(T::default())
            }
            fn visit_str<E>(self, _: &str) -> Result<T, E> {
                Ok(T::default())
            }
            fn visit_unit<E>(self) -> Result<T, E> {
                Ok(T::default())
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<T, A::Error> {
                T::seq(seq)
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
                T::map(map)
            }
        }
        deserializer
            .deserialize_any(Shape(std::marker::PhantomData))
            .map(Skimmed)
    }
}

/// Whether a value is an array, read without keeping any of it.
#[derive(Default)]
struct IsArray(bool);

impl Skim for IsArray {
    fn seq<'de, A: SeqAccess<'de>>(mut seq: A) -> Result<Self, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Self(true))
    }
}

/// A count as `Value::as_u64` reads one: an unsigned integer, else nothing.
impl Skim for Option<u64> {
    fn unsigned(n: u64) -> Self {
        Some(n)
    }
}

/// A `usage` value read in place, as [`super::Usage::from_openai`] reads it from a `Value`
/// (pinned by `fuzz_usage_reads_as_from_a_value`): a count is an unsigned integer or nothing;
/// anything else (a float, a string, a negative number) counts as absent; a repeated key's
/// last value wins; a `usage` that is not an object has no counts. Nothing of it is allocated.
#[derive(Default)]
struct UsageRead {
    prompt: Option<u64>,
    completion: Option<u64>,
    prompt_details: Details,
    completion_details: Details,
}

impl UsageRead {
    /// The usage, `None` without `prompt_tokens`.
    fn usage(self) -> Option<super::Usage> {
        Some(super::Usage {
            prompt_tokens: self.prompt?,
            completion_tokens: self.completion.unwrap_or(0),
            cached_tokens: self.prompt_details.cached.unwrap_or(0),
            cache_write_tokens: self.prompt_details.cache_write.unwrap_or(0),
            cache_write_1h_tokens: self.prompt_details.cache_write_1h.unwrap_or(0),
            audio_input_tokens: self.prompt_details.audio.unwrap_or(0),
            reasoning_tokens: self.completion_details.reasoning.unwrap_or(0),
            audio_output_tokens: self.completion_details.audio.unwrap_or(0),
        })
    }
}

impl Skim for UsageRead {
    fn map<'de, A: MapAccess<'de>>(mut map: A) -> Result<Self, A::Error> {
        let mut read = Self::default();
        while let Some(key) = map.next_key::<UsageKey>()? {
            match key {
                UsageKey::Prompt => read.prompt = skimmed(&mut map)?,
                UsageKey::Completion => read.completion = skimmed(&mut map)?,
                UsageKey::PromptDetails => read.prompt_details = skimmed(&mut map)?,
                UsageKey::CompletionDetails => read.completion_details = skimmed(&mut map)?,
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(read)
    }
}

/// The counts of a `*_tokens_details` object.
#[derive(Default)]
struct Details {
    cached: Option<u64>,
    cache_write: Option<u64>,
    cache_write_1h: Option<u64>,
    audio: Option<u64>,
    reasoning: Option<u64>,
}

impl Skim for Details {
    fn map<'de, A: MapAccess<'de>>(mut map: A) -> Result<Self, A::Error> {
        let mut read = Self::default();
        while let Some(key) = map.next_key::<UsageKey>()? {
            let slot = match key {
                UsageKey::Cached => &mut read.cached,
                UsageKey::CacheWrite => &mut read.cache_write,
                UsageKey::CacheWrite1h => &mut read.cache_write_1h,
                UsageKey::Audio => &mut read.audio,
                UsageKey::Reasoning => &mut read.reasoning,
                _ => {
                    map.next_value::<IgnoredAny>()?;
                    continue;
                }
            };
            *slot = skimmed(&mut map)?;
        }
        Ok(read)
    }
}

/// The next value of `map`, read by `T`'s [`Skim`] rules.
fn skimmed<'de, T: Skim, A: MapAccess<'de>>(map: &mut A) -> Result<T, A::Error> {
    map.next_value::<Skimmed<T>>().map(|Skimmed(t)| t)
}

/// The keys [`UsageRead`] and [`Details`] read; every other key is skipped.
enum UsageKey {
    Prompt,
    Completion,
    PromptDetails,
    CompletionDetails,
    Cached,
    CacheWrite,
    CacheWrite1h,
    Audio,
    Reasoning,
    Other,
}

impl<'de> Deserialize<'de> for UsageKey {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Name;
        impl Visitor<'_> for Name {
            type Value = UsageKey;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a key")
            }
            fn visit_str<E>(self, key: &str) -> Result<UsageKey, E> {
                Ok(match key {
                    "prompt_tokens" => UsageKey::Prompt,
                    "completion_tokens" => UsageKey::Completion,
                    "prompt_tokens_details" => UsageKey::PromptDetails,
                    "completion_tokens_details" => UsageKey::CompletionDetails,
                    "cached_tokens" => UsageKey::Cached,
                    "cache_write_tokens" => UsageKey::CacheWrite,
                    "cache_write_1h_tokens" => UsageKey::CacheWrite1h,
                    "audio_tokens" => UsageKey::Audio,
                    "reasoning_tokens" => UsageKey::Reasoning,
                    _ => UsageKey::Other,
                })
            }
        }
        deserializer.deserialize_str(Name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn prepared(body: Value) -> Result<Value, ProviderError> {
        let Value::Object(map) = body else {
            unreachable!()
        };
        for_model(&map).map(|b| Value::Object(b.into_owned()))
    }

    fn refused(body: Value) -> String {
        match prepared(body) {
            Err(ProviderError::Unsupported { param, .. }) => param,
            other => panic!("not refused: {other:?}"),
        }
    }

    #[test]
    fn reasoning_families_by_name() {
        for m in [
            "o1",
            "o1-2024-12-17",
            "o3",
            "o3-mini",
            "o3-pro",
            "o4-mini",
            "o4-mini-2025-04-16",
            "codex-mini-latest",
            "gpt-5",
            "gpt-5-mini",
            "gpt-5-nano-2025-08-07",
            "gpt-5.1",
            "gpt-5.2-codex",
        ] {
            assert!(Reasoning::of(m).is_some(), "{m}");
        }
        for m in [
            "gpt-4o",
            "gpt-4o-mini",
            "gpt-4.1",
            "gpt-5-chat-latest",
            "o1x",
            "gpt-50",
            "gpt-5.x",
            "text-embedding-3-small",
            "llama3",
        ] {
            assert_eq!(Reasoning::of(m), None, "{m}");
        }
        assert!(!Reasoning::of("gpt-5.1").unwrap().fixed_sampling);
        assert!(!Reasoning::of("o1").unwrap().refuses_stop);
    }

    #[test]
    fn other_models_get_the_body_untouched() {
        let body = json!({"model": "gpt-4o-mini", "max_tokens": 5, "temperature": 0.2,
            "logprobs": true, "stop": ["x"], "messages": []});
        assert_eq!(prepared(body.clone()).unwrap(), body);
    }

    #[test]
    fn reasoning_models_get_max_completion_tokens() {
        let out = prepared(json!({"model": "o4-mini", "max_tokens": 100,
            "messages": [{"role": "user", "content": "hi"}], "seed": 7}))
        .unwrap();
        assert_eq!(
            out,
            json!({"model": "o4-mini", "max_completion_tokens": 100,
                "messages": [{"role": "user", "content": "hi"}], "seed": 7})
        );
        // Both limits: the tighter one holds.
        for (a, b) in [(100, 50), (50, 100)] {
            let out = prepared(json!({"model": "gpt-5", "max_tokens": a,
                "max_completion_tokens": b}))
            .unwrap();
            assert_eq!(out, json!({"model": "gpt-5", "max_completion_tokens": 50}));
        }
    }

    #[test]
    fn defaults_are_left_out_and_other_values_refused() {
        let out = prepared(json!({"model": "o3", "temperature": 1, "top_p": 1.0,
            "presence_penalty": 0, "frequency_penalty": 0.0, "logprobs": false,
            "logit_bias": {}, "stop": [], "temperature_extra": 3}))
        .unwrap();
        assert_eq!(out, json!({"model": "o3", "temperature_extra": 3}));
        for (field, value) in [
            ("temperature", json!(0.2)),
            ("top_p", json!(0.9)),
            ("presence_penalty", json!(0.5)),
            ("frequency_penalty", json!(-1)),
            ("logprobs", json!(true)),
            ("top_logprobs", json!(0)),
            ("logit_bias", json!({"50256": -100})),
            ("stop", json!("END")),
            ("stop", json!(["a", "b"])),
        ] {
            let mut body = json!({"model": "o4-mini"});
            body[field] = value;
            assert_eq!(refused(body), field);
        }
        // o1 takes stop sequences; gpt-5.1 and later judge sampling by `reasoning_effort`.
        assert!(prepared(json!({"model": "o1", "stop": "END"})).is_ok());
        let out = prepared(json!({"model": "gpt-5.1", "temperature": 0.3, "top_p": 0.5,
            "logprobs": true, "top_logprobs": 2, "reasoning_effort": "none"}))
        .unwrap();
        assert_eq!(out["temperature"], 0.3);
        assert_eq!(out["top_logprobs"], 2);
        assert_eq!(
            refused(json!({"model": "gpt-5.1", "presence_penalty": 1})),
            "presence_penalty"
        );
        assert_eq!(refused(json!({"model": "gpt-5.1", "stop": ["x"]})), "stop");
        // The request's own fault: not retried, not tried elsewhere, its reason passed on.
        let Err(e) = prepared(json!({"model": "o3", "temperature": 0.5})) else {
            unreachable!()
        };
        assert!(!e.is_retryable() && !e.may_work_elsewhere() && e.rejects_request());
        // A malformed value is named too.
        assert_eq!(
            refused(json!({"model": "o3", "logprobs": "yes"})),
            "logprobs"
        );
    }

    #[test]
    fn validate_rejects_garbage_and_error_bodies() {
        let chat = Endpoint::ChatCompletions;
        assert!(validate(chat, &Bytes::from_static(b"<html>")).is_err());
        assert!(validate(chat, &Bytes::from_static(b"{\"id\":\"x\"}")).is_err());
        assert!(
            validate(
                chat,
                &Bytes::from_static(br#"{"error":{"message":"boom"},"choices":[]}"#)
            )
            .is_err()
        );
        let ok = validate(
            chat,
            &Bytes::from_static(
                br#"{"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":5}}"#,
            ),
        )
        .unwrap()
        .unwrap();
        assert_eq!((ok.prompt_tokens, ok.completion_tokens), (3, 5));
    }

    /// The answer is read without building it: the same verdicts as reading it whole would
    /// give, for shapes a struct reader could be fooled by.
    #[test]
    fn validate_reads_the_error_list_and_usage_of_an_object_only() {
        let chat = Endpoint::ChatCompletions;
        let check = |body: &'static str| validate(chat, &Bytes::from_static(body.as_bytes()));
        // A JSON array in the struct's field order is not an answer.
        assert!(check(r#"[null, [], null, {"prompt_tokens": 1}]"#).is_err());
        assert!(check(r#"{"choices": "not a list"}"#).is_err());
        assert!(check(r#"{"choices": {"0": 1}}"#).is_err());
        assert!(check(r#"{"choices": null}"#).is_err());
        assert!(
            check(r#"{"data": []}"#).is_err(),
            "a chat answer needs choices"
        );
        // A null error is no error; the provider's message is kept from a real one.
        let ok = check(
            r#"  {"error": null, "choices": [{"message": {"content": "hi"}}], "usage": null}"#,
        );
        assert_eq!(ok.unwrap(), None);
        match check(r#"{"error": {"message": "boom"}, "choices": []}"#) {
            Err(ProviderError::Malformed(m)) => assert_eq!(m, "boom"),
            other => panic!("{other:?}"),
        }
        let embeddings = validate(
            Endpoint::Embeddings,
            &Bytes::from_static(
                br#"{"data": [{"embedding": [0.1]}], "usage": {"prompt_tokens": 2}}"#,
            ),
        );
        assert_eq!(embeddings.unwrap().map(|u| u.prompt_tokens), Some(2));
    }
}

/// Property tests: any 200 body is checked without panicking, and one that passes has the
/// list the endpoint promises.
#[cfg(test)]
mod fuzz {
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;
    use crate::fuzzing::{
        self, assemble, block_on, cuts, event_stream, json_value, mutated, split, sse_text, text,
    };

    /// A streamed answer as OpenAI sends it: role, text deltas, one tool call in pieces, the
    /// finish, the usage chunk. Returns the SSE bytes, the full text and the full arguments.
    fn valid_stream() -> impl Strategy<Value = (Vec<u8>, String, String)> {
        (
            proptest::collection::vec(text(), 0..6),
            proptest::collection::vec(text(), 0..4),
            0u64..1_000_000,
        )
            .prop_map(|(pieces, args, tokens)| {
                let chunk = |delta: Value, finish: Value| {
                    json!({"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m",
                        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
                };
                let mut events = vec![(None, chunk(json!({"role": "assistant", "content": ""}), Value::Null))];
                for p in &pieces {
                    events.push((None, chunk(json!({"content": p}), Value::Null)));
                }
                for (i, a) in args.iter().enumerate() {
                    let mut call = json!({"index": 0, "function": {"arguments": a}});
                    if i == 0 {
                        call["id"] = json!("call_1");
                        call["function"]["name"] = json!("f");
                    }
                    events.push((None, chunk(json!({"tool_calls": [call]}), Value::Null)));
                }
                events.push((None, chunk(json!({}), json!("stop"))));
                events.push((None, json!({"id": "c1", "object": "chat.completion.chunk", "choices": [],
                    "usage": {"prompt_tokens": tokens, "completion_tokens": tokens}})));
                (sse_text(&events), pieces.concat(), args.concat())
            })
    }

    /// The stream as [`OpenAi::call`] reads it: events, with error events as errors.
    fn read(chunks: Vec<Bytes>) -> Result<Value, Vec<String>> {
        let chunks = block_on(
            event_stream(chunks)
                .map(|e| {
                    let e = e?;
                    match stream_error(&e.data) {
                        Some(error) => Err(error),
                        None => Ok(e.data),
                    }
                })
                .collect::<Vec<_>>(),
        );
        assemble(chunks)
    }

    fn usage_key() -> impl Strategy<Value = &'static str> {
        proptest::sample::select(
            &[
                "prompt_tokens",
                "completion_tokens",
                "total_tokens",
                "cached_tokens",
                "cache_write_tokens",
                "cache_write_1h_tokens",
                "audio_tokens",
                "reasoning_tokens",
                "prompt_tokens_details",
                "other",
            ][..],
        )
    }

    fn count_value() -> impl Strategy<Value = Value> {
        prop_oneof![
            any::<u64>().prop_map(Value::from),
            (0u64..1000).prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            (-10.0f64..1e20).prop_map(|f| json!(f)),
            Just(json!(1.0)),
            json_value(),
        ]
    }

    fn valid_chat() -> Value {
        json!({"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "gpt-4o",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}})
    }

    proptest! {
        #![proptest_config(fuzzing::config(fuzzing::CASES))]

        #[test]
        fn fuzz_any_body_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            for endpoint in [Endpoint::ChatCompletions, Endpoint::Embeddings] {
                if let Err(e) = validate(endpoint, &Bytes::from(bytes.clone())) {
                    prop_assert!(matches!(e, ProviderError::Malformed(_)));
                }
            }
        }

        /// Any `usage` (counts of every JSON type, details objects or not, unknown keys), and
        /// the same object's keys spelled twice: read in place, it is the usage a `Value` gives.
        #[test]
        fn fuzz_usage_reads_as_from_a_value(
            fields in proptest::collection::vec((usage_key(), count_value()), 0..8),
            details in proptest::collection::vec(
                (prop_oneof![Just("prompt_tokens_details"), Just("completion_tokens_details")],
                 proptest::collection::vec((usage_key(), count_value()), 0..5)), 0..3),
            not_an_object in proptest::option::of(json_value()),
        ) {
            let mut members: Vec<String> = fields
                .iter()
                .map(|(k, v)| format!("{}:{v}", json!(k)))
                .collect();
            for (name, inner) in &details {
                let inner: Vec<String> = inner.iter().map(|(k, v)| format!("{}:{v}", json!(k))).collect();
                members.push(format!("\"{name}\":{{{}}}", inner.join(",")));
            }
            let usage = match &not_an_object {
                Some(v) if !v.is_object() => v.to_string(),
                _ => format!("{{{}}}", members.join(",")),
            };
            // Written as text, so a key may repeat (a `Value` keeps the last).
            let text = format!(r#"{{"choices":[],"usage":{usage}}}"#);
            let body: Value = serde_json::from_str(&text).unwrap();
            let read = validate(Endpoint::ChatCompletions, &Bytes::from(text)).unwrap();
            prop_assert_eq!(read, crate::providers::usage_from_openai(&body));
        }

        #[test]
        fn fuzz_any_json_body(body in prop_oneof![json_value(), mutated(valid_chat())]) {
            let bytes = Bytes::from(body.to_string());
            for (endpoint, list) in [(Endpoint::ChatCompletions, "choices"), (Endpoint::Embeddings, "data")] {
                match validate(endpoint, &bytes) {
                    Ok(usage) => {
                        prop_assert!(body[list].is_array());
                        prop_assert_eq!(usage, crate::providers::usage_from_openai(&body));
                    }
                    Err(e) => {
                        prop_assert!(matches!(e, ProviderError::Malformed(_)));
                        // Read without building it, the verdict is the whole `Value`'s.
                        prop_assert!(
                            !(body[list].is_array() && body["error"].is_null()),
                            "refused an answer with its list and no error: {}", body
                        );
                    }
                }
            }
        }

        #[test]
        fn fuzz_a_stream_reads_the_same_however_it_is_cut((bytes, text, args) in valid_stream(), at in cuts(16)) {
            let whole = read(vec![Bytes::from(bytes.clone())]);
            let done = whole.clone().unwrap();
            let message = &done["choices"][0]["message"];
            prop_assert_eq!(message["content"].as_str(), Some(text.as_str()));
            if !args.is_empty() || message.get("tool_calls").is_some() {
                prop_assert_eq!(message["tool_calls"][0]["function"]["arguments"].as_str(), Some(args.as_str()));
            }
            prop_assert_eq!(read(split(&bytes, &at)), whole);
        }

        #[test]
        fn fuzz_any_stream_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512), at in cuts(6)) {
            let _ = read(split(&bytes, &at));
        }
    }
}
