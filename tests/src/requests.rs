//! Requests as careless and hostile clients send them, generated (proptest), and a config
//! that serves them from every provider kind: for the hostile-client suites on both backends
//! (`e2e/hostile`, `backends/hostile`).

use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestRunner};
use serde_json::{Map, Value, json};

use crate::FakeUpstream;

/// Chat models `m-openai`, `m-anthropic`, `m-gemini`, `m-mock` and embedding models
/// `e-openai`, `e-gemini`, `e-mock`, one per provider kind of the fake `up` (and the mock),
/// all priced (USD per million tokens, in and out) and uncached.
pub fn config(up: &FakeUpstream) -> String {
    format!(
        r#"
[routing]
attempts_per_deployment = 1

[[providers]]
name = "openai"
kind = "openai"
base_url = "{base}"
api_keys = ["sk-provider-test"]

[[providers]]
name = "anthropic"
kind = "anthropic"
base_url = "{base}"
api_keys = ["sk-ant-test"]

[[providers]]
name = "gemini"
kind = "gemini"
base_url = "{gemini}"
api_keys = ["AIza-test"]

[[providers]]
name = "mock"
kind = "mock"

[[models]]
name = "m-openai"
deployments = [{{ provider = "openai", model = "gpt-4o-mini" }}]
price = {{ input_per_mtok = 1.0, output_per_mtok = 4.0 }}
cache_ttl_s = 0

[[models]]
name = "m-anthropic"
deployments = [{{ provider = "anthropic", model = "claude-haiku-4-5" }}]
price = {{ input_per_mtok = 1.0, output_per_mtok = 5.0 }}
cache_ttl_s = 0

[[models]]
name = "m-gemini"
deployments = [{{ provider = "gemini", model = "gemini-2.5-flash" }}]
price = {{ input_per_mtok = 0.3, output_per_mtok = 2.5 }}
cache_ttl_s = 0

[[models]]
name = "m-mock"
deployments = [{{ provider = "mock", model = "gpt-4o-mini" }}]
price = {{ input_per_mtok = 1.0, output_per_mtok = 4.0 }}
cache_ttl_s = 0

[[models]]
name = "e-openai"
deployments = [{{ provider = "openai", model = "text-embedding-3-small" }}]
price = {{ input_per_mtok = 0.02, output_per_mtok = 0.0 }}
cache_ttl_s = 0

[[models]]
name = "e-gemini"
deployments = [{{ provider = "gemini", model = "gemini-embedding-001" }}]
price = {{ input_per_mtok = 0.15, output_per_mtok = 0.0 }}
cache_ttl_s = 0

[[models]]
name = "e-mock"
deployments = [{{ provider = "mock", model = "text-embedding-3-small" }}]
price = {{ input_per_mtok = 0.02, output_per_mtok = 0.0 }}
cache_ttl_s = 0
"#,
        base = up.base_url,
        gemini = up.gemini_url,
    )
}

pub fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z ]{0,40}",
        // Any Unicode: multi-byte characters are where byte and character counts differ.
        "\\PC{0,40}",
        "[a-z]{200,600}",
    ]
}

pub fn json_schema() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(json!({"type": "string"})),
        (0..1000i64).prop_map(|m| json!({"type": "integer", "maximum": m})),
        text().prop_map(|d| json!({"type": "boolean", "description": d})),
    ];
    leaf.prop_recursive(4, 24, 4, |inner| {
        prop::collection::btree_map("[a-z_]{1,12}", inner, 1..4).prop_map(|props| {
            let required: Vec<&String> = props.keys().collect();
            json!({"type": "object", "properties": props, "required": required,
                   "additionalProperties": false})
        })
    })
}

pub fn image_part() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just("https://example.com/cat.png".to_owned()),
        "[A-Za-z0-9+/]{0,2000}".prop_map(|b64| format!("data:image/png;base64,{b64}")),
    ]
    .prop_map(|url| json!({"type": "image_url", "image_url": {"url": url, "detail": "high"}}))
}

pub fn content() -> impl Strategy<Value = Value> {
    prop_oneof![
        3 => text().prop_map(Value::String),
        1 => prop::collection::vec(
            prop_oneof![
                3 => text().prop_map(|t| json!({"type": "text", "text": t})),
                1 => image_part(),
            ],
            1..4,
        )
        .prop_map(Value::Array),
    ]
}

pub fn message() -> impl Strategy<Value = Value> {
    (
        prop_oneof![Just("user"), Just("assistant"), Just("system")],
        content(),
    )
        .prop_map(|(role, content)| match (role, &content) {
            // Only user messages carry images.
            ("user", _) | (_, Value::String(_)) => json!({"role": role, "content": content}),
            _ => json!({"role": role, "content": "plain"}),
        })
}

pub fn tool() -> impl Strategy<Value = Value> {
    ("[a-z_]{1,20}", text(), json_schema()).prop_map(|(name, description, schema)| {
        json!({"type": "function", "function": {"name": name, "description": description,
            "parameters": {"type": "object", "properties": {"arg": schema}}}})
    })
}

pub fn output_limit() -> impl Strategy<Value = Option<u64>> {
    prop_oneof![
        2 => Just(None),
        4 => (1u64..3000).prop_map(Some),
        1 => Just(Some(u64::from(u32::MAX))),
        1 => Just(Some(u64::MAX)),
    ]
}

/// A chat completion request as a careless or hostile client sends it.
pub fn chat_request() -> impl Strategy<Value = Map<String, Value>> {
    (
        (
            prop::collection::vec(message(), 1..6),
            prop::collection::vec(tool(), 0..3),
            prop::option::of(json_schema()),
            1u64..=6,
        ),
        (
            output_limit(),
            output_limit(),
            prop::option::of(text()),
            any::<bool>(),
        ),
    )
        .prop_map(
            |(
                (mut messages, tools, format, n),
                (max_tokens, max_completion, prediction, stream),
            )| {
                // The last message is the user's: every provider answers that.
                messages.push(json!({"role": "user", "content": "and now?"}));
                let mut body = Map::new();
                body.insert("messages".into(), Value::Array(messages));
                if !tools.is_empty() {
                    body.insert("tools".into(), Value::Array(tools));
                }
                if let Some(schema) = format {
                    body.insert(
                        "response_format".into(),
                        json!({"type": "json_schema",
                               "json_schema": {"name": "out", "schema": schema}}),
                    );
                }
                if n > 1 {
                    body.insert("n".into(), n.into());
                }
                if let Some(m) = max_tokens {
                    body.insert("max_tokens".into(), m.into());
                }
                if let Some(m) = max_completion {
                    body.insert("max_completion_tokens".into(), m.into());
                }
                if let Some(p) = prediction {
                    body.insert(
                        "prediction".into(),
                        json!({"type": "content", "content": p}),
                    );
                }
                if stream {
                    body.insert("stream".into(), true.into());
                }
                body
            },
        )
}

/// An Anthropic Messages request for `/v1/messages`.
pub fn messages_request() -> impl Strategy<Value = Map<String, Value>> {
    let block = prop_oneof![
        3 => text().prop_map(|t| json!({"type": "text", "text": t})),
        1 => "[A-Za-z0-9+/]{0,400}".prop_map(|d| json!({"type": "image", "source":
            {"type": "base64", "media_type": "image/png", "data": d}})),
    ];
    let turn = prop_oneof![
        text().prop_map(Value::String),
        prop::collection::vec(block, 1..3).prop_map(Value::Array),
    ];
    (
        prop::collection::vec(turn, 1..4),
        prop::option::of(text()),
        prop::collection::vec(("[a-z_]{1,20}", json_schema()), 0..3),
        prop_oneof![
            6 => 1u64..4000,
            1 => Just(u64::from(u32::MAX)),
            1 => Just(u64::MAX)
        ],
        any::<bool>(),
    )
        .prop_map(|(turns, system, tools, max_tokens, stream)| {
            let mut body = Map::new();
            // Alternating turns, the user's first and last.
            let mut messages: Vec<Value> = Vec::new();
            for (i, content) in turns.into_iter().enumerate() {
                if i > 0 {
                    messages.push(json!({"role": "assistant", "content": "ok"}));
                }
                messages.push(json!({"role": "user", "content": content}));
            }
            body.insert("messages".into(), Value::Array(messages));
            body.insert("max_tokens".into(), max_tokens.into());
            if let Some(s) = system {
                body.insert("system".into(), s.into());
            }
            if !tools.is_empty() {
                let tools: Vec<Value> = tools
                    .into_iter()
                    .map(|(name, schema)| {
                        json!({"name": name, "input_schema":
                        {"type": "object", "properties": {"arg": schema}}})
                    })
                    .collect();
                body.insert("tools".into(), Value::Array(tools));
            }
            if stream {
                body.insert("stream".into(), true.into());
            }
            body
        })
}

/// An embeddings request: texts, one token-id list, or several.
pub fn embeddings_request() -> impl Strategy<Value = Map<String, Value>> {
    let input = prop_oneof![
        text().prop_map(Value::String),
        prop::collection::vec(text(), 1..20).prop_map(|v| json!(v)),
        prop::collection::vec(0u64..100_000, 1..500).prop_map(|v| json!(v)),
        prop::collection::vec(prop::collection::vec(0u64..100_000, 1..100), 1..10)
            .prop_map(|v| json!(v)),
    ];
    (input, prop::option::of(1u64..=3072)).prop_map(|(input, dimensions)| {
        let mut body = Map::new();
        body.insert("input".into(), input);
        if let Some(d) = dimensions {
            body.insert("dimensions".into(), d.into());
        }
        body
    })
}

/// A runner with a fixed seed, so the test command explores the same cases on every run
/// (set `PROPTEST_CASES` higher locally to explore more).
pub fn runner(cases: u32) -> TestRunner {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(cases);
    let seed = std::env::var("PROPTEST_SEED")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(13);
    let mut seed_bytes = [0u8; 32];
    seed_bytes[..8].copy_from_slice(&seed.to_le_bytes());
    TestRunner::new_with_rng(
        ProptestConfig {
            cases,
            failure_persistence: None,
            ..ProptestConfig::default()
        },
        proptest::test_runner::TestRng::from_seed(
            proptest::test_runner::RngAlgorithm::ChaCha,
            &seed_bytes,
        ),
    )
}
