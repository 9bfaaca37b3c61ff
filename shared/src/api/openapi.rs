//! The OpenAPI 3.1 description of the HTTP API, served at `GET /openapi.json`.
//!
//! It is built by `utoipa` from the `#[utoipa::path]` attribute on each handler and from the
//! `ToSchema` types the handlers answer with (keys, jobs, models, errors). The routes are
//! listed once, in `api::routes` (`utoipa-axum`), which gives both the router and this
//! document its paths. Two kinds of body
//! have no Rust type to derive from, and are described here instead:
//!
//! - request bodies the gateway keeps as a JSON map, so that fields it does not know reach the
//!   provider unchanged (chat, embeddings, messages): the schemas state what
//!   `gateway::request` and `api::messages` check, and allow every other field;
//! - answers that are a provider's JSON passed through, or built as JSON values (usage,
//!   metrics): the schemas state the fields Sluice produces or relies on.
//!
//! Either way the document is checked against the running server: `infra/api/schemathesis.sh`
//! (run by `infra/test.sh`) sends generated requests to `sluice serve` and fails on any answer
//! whose status, content type or body the document does not allow.
//!
//! Statuses every route of a kind can answer are added in one place, [`CommonErrors`]: 401 and
//! 503 on every route that takes a key (a missing key; the key store down), 400, 408 and 413
//! on every route with a body (unreadable; not arrived in time; over `server.max_body_bytes`).

use std::collections::BTreeMap;
use std::sync::LazyLock;

use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::Value;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder};
use utoipa::{IntoParams, Modify, OpenApi, ToSchema};

use super::access_log::Outcome;
use super::error::{ApiError, ErrorResponse};
use super::messages::AnthropicError;
use super::openai::finish;
use crate::keys::BudgetPeriod;

/// What the document says besides its routes: title, shared schemas, key schemes, tags.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Sluice",
        description = "AI API gateway: OpenAI- and Anthropic-compatible routes, async jobs, \
                       usage and limits, and the admin API. Keys are sent as \
                       `Authorization: Bearer sk-sluice-…` or `x-api-key`."
    ),
    components(schemas(ErrorResponse, AnthropicError)),
    modifiers(&KeySchemes),
    security(("bearer" = []), ("api_key" = [])),
    tags(
        (name = "openai", description = "OpenAI-compatible routes"),
        (name = "anthropic", description = "Anthropic's Messages API"),
        (name = "jobs", description = "Async jobs"),
        (name = "usage", description = "Limits, spend and usage metrics"),
        (name = "admin", description = "Gateway keys and tenants (admin key)"),
        (name = "meta", description = "Liveness, this document, the dashboard, Prometheus"),
    )
)]
struct ApiBase;

/// The document: every route of [`super::router`], as [`super::routes`] lists them with
/// their operations, over [`ApiBase`], with [`CommonErrors`] added to every operation.
pub struct ApiDoc;

impl OpenApi for ApiDoc {
    fn openapi() -> utoipa::openapi::OpenApi {
        let mut document = ApiBase::openapi();
        document.merge(super::routes(super::Surface::All).into_openapi());
        CommonErrors.modify(&mut document);
        document
    }
}

/// The document as JSON, built once.
static DOCUMENT: LazyLock<Result<String, String>> =
    LazyLock::new(|| ApiDoc::openapi().to_json().map_err(|e| e.to_string()));

/// `GET /openapi.json`: this document.
#[utoipa::path(get, path = "/openapi.json", tag = "meta", security(()),
    responses((status = 200, description = "The OpenAPI 3.1 document of this API.",
        content_type = "application/json", body = Object)))]
pub async fn openapi_json() -> Response {
    match &*DOCUMENT {
        Ok(json) => ([(header::CONTENT_TYPE, "application/json")], json.clone()).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "the OpenAPI document could not be serialized");
            finish(Err(ApiError::unavailable()), Outcome::default())
        }
    }
}

/// The two ways to send a key: `Authorization: Bearer …` and `x-api-key: …`.
struct KeySchemes;

impl Modify for KeySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("sk-sluice-…")
                    .description(Some("A gateway key, or the admin key on `/admin` routes."))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "metrics_token",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "`server.metrics_token`, on `/metrics` when the server sets one.",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "api_key",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "x-api-key",
                "The same key, as the Anthropic SDKs send it.",
            ))),
        );
    }
}

/// Adds the statuses that follow from how the router is built rather than from one handler:
/// 401 and 503 where a key is checked, 400, 408 and 413 where a body is read. Errors on
/// `/v1/messages` are in Anthropic's shape.
struct CommonErrors;

impl Modify for CommonErrors {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for (path, item) in openapi.paths.paths.iter_mut() {
            let schema = if path == "/v1/messages" {
                "AnthropicError"
            } else {
                "ErrorResponse"
            };
            for operation in [&mut item.get, &mut item.post, &mut item.delete]
                .into_iter()
                .flatten()
            {
                let keyed = operation
                    .security
                    .as_ref()
                    .is_none_or(|s| !s.iter().all(is_empty_requirement));
                let mut add = |status: &str, description: &str| {
                    operation
                        .responses
                        .responses
                        .entry(status.to_owned())
                        .or_insert_with(|| error_response(description, schema));
                };
                // `/metrics`: open, or a configured token; no store behind it.
                let optional = operation
                    .security
                    .as_ref()
                    .is_some_and(|s| s.iter().any(is_empty_requirement));
                if keyed {
                    add("401", "No key, or an unknown or revoked key.");
                }
                if keyed && !optional {
                    add("503", "A store the request needs is down; retry.");
                }
                if operation.request_body.is_some() {
                    add(
                        "400",
                        "The body is malformed or a field is invalid (`param`).",
                    );
                    add("413", "The body is over `server.max_body_bytes`.");
                    add(
                        "408",
                        "The body did not arrive within `server.body_read_timeout_s` \
                         (`sluice serve`); the connection is closed.",
                    );
                }
            }
        }
    }
}

fn is_empty_requirement(r: &utoipa::openapi::security::SecurityRequirement) -> bool {
    serde_json::to_value(r).is_ok_and(|v| v.as_object().is_some_and(|o| o.is_empty()))
}

fn error_response(description: &str, schema: &str) -> RefOr<utoipa::openapi::Response> {
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/json",
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name(schema)))
                .build(),
        )
        .build()
        .into()
}

// ---- Headers -------------------------------------------------------------------------------

/// Request headers of `POST /v1/chat/completions` and `POST /v1/embeddings`.
#[derive(IntoParams)]
#[into_params(parameter_in = Header)]
pub struct ProxyHeaders {
    /// `no-cache` (do not answer from the cache), `no-store` (do not keep the answer),
    /// `max-age=N` (accept only entries at most N s old; keep this answer N s). Other
    /// directives are ignored.
    #[param(rename = "Cache-Control")]
    pub cache_control: Option<String>,
    /// Seconds for the whole request, retries and fallbacks included: above 0, at most 3600.
    #[param(rename = "x-sluice-timeout")]
    pub timeout: Option<String>,
    /// 1 to 255 printable ASCII characters, no space at either end (else 400
    /// `invalid_idempotency_key`). The same key and request within 24 h get the stored answer
    /// (or, with `Prefer: respond-async`, the same `202` and job) again; the same key with
    /// another body is 422, a duplicate while the first runs is 409. A stream that ran to
    /// its end is not replayed: its key then answers 422 `idempotency_stream_not_replayable`.
    #[param(
        rename = "Idempotency-Key",
        max_length = 255,
        pattern = "^[!-~]([ -~]*[!-~])?$"
    )]
    pub idempotency_key: Option<String>,
    /// `respond-async` (RFC 7240): accept as a job and answer 202.
    #[param(rename = "Prefer", example = "respond-async")]
    pub prefer: Option<String>,
    /// With `Prefer: respond-async`: where to POST the finished job.
    #[param(rename = "x-sluice-callback-url")]
    pub callback_url: Option<String>,
}

/// Request headers of `POST /v1/messages`.
#[derive(IntoParams)]
#[into_params(parameter_in = Header)]
pub struct MessagesHeaders {
    /// As on `/v1/chat/completions`.
    #[param(rename = "Cache-Control")]
    pub cache_control: Option<String>,
    /// Seconds for the whole request: above 0, at most 3600.
    #[param(rename = "x-sluice-timeout")]
    pub timeout: Option<String>,
    /// As on `/v1/chat/completions`.
    #[param(
        rename = "Idempotency-Key",
        max_length = 255,
        pattern = "^[!-~]([ -~]*[!-~])?$"
    )]
    pub idempotency_key: Option<String>,
}

/// Request headers of `POST /v1/jobs`.
#[derive(IntoParams)]
#[into_params(parameter_in = Header)]
pub struct JobHeaders {
    /// The same key and job (endpoint, request, callback URL) within 24 h get the first `202`
    /// and job again (`idempotent-replayed: true`), not a second job; the same key with
    /// another job is 422, a duplicate while the first is being accepted is 409.
    #[param(
        rename = "Idempotency-Key",
        max_length = 255,
        pattern = "^[!-~]([ -~]*[!-~])?$"
    )]
    pub idempotency_key: Option<String>,
    /// Applied when the job runs, as on `/v1/chat/completions`.
    #[param(rename = "Cache-Control")]
    pub cache_control: Option<String>,
}

// ---- OpenAI request bodies -----------------------------------------------------------------

/// OpenAI's chat request. Sluice checks the fields listed here and forwards every field,
/// listed or not (tools, `response_format`, `seed`, …), to the provider unchanged.
#[derive(Serialize, ToSchema)]
#[schema(example = json!({"model": "gpt-4o-mini",
                          "messages": [{"role": "user", "content": "Hello, Sluice"}]}))]
pub struct ChatCompletionRequest {
    /// A public model name or alias (see `GET /v1/models`).
    #[schema(min_length = 1, example = "gpt-4o-mini")]
    pub model: String,
    /// The conversation.
    #[schema(min_items = 1, max_items = 2048)]
    pub messages: Vec<ChatMessage>,
    /// Answer as server-sent events.
    pub stream: Option<bool>,
    /// E.g. `{"include_usage": true}`.
    #[schema(value_type = Option<Object>)]
    pub stream_options: Option<Value>,
    /// Most tokens to generate.
    #[schema(minimum = 1)]
    pub max_tokens: Option<u64>,
    /// Most tokens to generate (newer name).
    #[schema(minimum = 1)]
    pub max_completion_tokens: Option<u64>,
    /// How many answers.
    #[schema(minimum = 1, maximum = 128)]
    pub n: Option<u64>,
    /// Sampling temperature.
    pub temperature: Option<f64>,
    /// Nucleus sampling.
    pub top_p: Option<f64>,
    /// Presence penalty.
    pub presence_penalty: Option<f64>,
    /// Frequency penalty.
    pub frequency_penalty: Option<f64>,
    /// Tools the model may call.
    #[schema(value_type = Option<Vec<Object>>, max_items = 128)]
    pub tools: Option<Vec<Value>>,
    /// Functions the model may call (older form of `tools`).
    #[schema(value_type = Option<Vec<Object>>, max_items = 128)]
    pub functions: Option<Vec<Value>>,
}

/// One message of a chat request; other fields (`name`, `tool_calls`, …) are forwarded.
#[derive(Serialize, ToSchema)]
pub struct ChatMessage {
    /// Who speaks.
    pub role: ChatRole,
    /// A string, an array of content parts, or null.
    pub content: Option<MessageContent>,
}

/// The role of a chat message.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ChatRole {
    /// Instructions.
    System,
    /// Instructions (newer name).
    Developer,
    /// The user.
    User,
    /// The model.
    Assistant,
    /// A tool's answer.
    Tool,
    /// A function's answer (older form).
    Function,
}

/// Message content: text, or content parts.
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
pub enum MessageContent {
    /// Plain text.
    Text(String),
    /// Content parts (`{"type": "text", …}`, `{"type": "image_url", …}`, …).
    #[schema(value_type = Vec<Object>)]
    Parts(Vec<Value>),
}

/// OpenAI's embeddings request. Other fields (`encoding_format`, `user`, …) are forwarded.
#[derive(Serialize, ToSchema)]
#[schema(example = json!({"model": "text-embedding-3-small", "input": "Hello, Sluice"}))]
pub struct EmbeddingRequest {
    /// A public model name or alias.
    #[schema(min_length = 1, example = "text-embedding-3-small")]
    pub model: String,
    /// What to embed.
    pub input: EmbeddingInput,
    /// Length of each vector.
    #[schema(minimum = 1, maximum = 3072)]
    pub dimensions: Option<u64>,
    /// Must be false or absent: embeddings do not stream.
    pub stream: Option<bool>,
}

/// Embedding input: a string, strings, token ids, or arrays of token ids (arrays non-empty).
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
pub enum EmbeddingInput {
    /// One text.
    Text(String),
    /// Several texts.
    Texts(Vec<String>),
    /// One text as token ids.
    Tokens(Vec<u64>),
    /// Several texts as token ids.
    TokenArrays(Vec<Vec<u64>>),
}

// ---- OpenAI answers ------------------------------------------------------------------------

/// A `chat.completion`, as the provider answered it (or translated into OpenAI's shape).
#[derive(Serialize, ToSchema)]
pub struct ChatCompletion {
    /// `chatcmpl-…`.
    pub id: String,
    /// `chat.completion`.
    pub object: String,
    /// Unix seconds.
    pub created: Option<u64>,
    /// The upstream model that answered.
    pub model: Option<String>,
    /// The answers (`message`, `finish_reason`, …).
    #[schema(value_type = Vec<Object>)]
    pub choices: Vec<Value>,
    /// Token counts.
    #[schema(value_type = Option<Object>)]
    pub usage: Option<Value>,
}

/// OpenAI's embeddings answer.
#[derive(Serialize, ToSchema)]
pub struct EmbeddingList {
    /// `list`.
    pub object: String,
    /// One entry per input (`object`, `index`, `embedding`).
    #[schema(value_type = Vec<Object>)]
    pub data: Vec<Value>,
    /// The upstream model that answered.
    pub model: Option<String>,
    /// Token counts.
    #[schema(value_type = Option<Object>)]
    pub usage: Option<Value>,
}

/// One event of a `text/event-stream` answer. On `/v1/chat/completions` each `data` is a
/// `chat.completion.chunk` and the last is `[DONE]`; on `/v1/messages` events are named
/// (`message_start`, `content_block_delta`, …, `message_stop`, or `error`).
#[derive(Serialize, ToSchema)]
pub struct ServerSentEvent {
    /// The event name (`message` when unnamed).
    pub event: Option<String>,
    /// The payload: JSON, or `[DONE]`.
    pub data: String,
    /// Never set by Sluice.
    pub id: Option<String>,
    /// Never set by Sluice.
    pub retry: Option<u64>,
}

// ---- Anthropic -----------------------------------------------------------------------------

/// Anthropic's Messages request, its main fields. The README (Providers) lists what else is
/// translated, passed through or refused.
#[derive(Serialize, ToSchema)]
#[schema(example = json!({"model": "gpt-4o-mini", "max_tokens": 64,
                          "messages": [{"role": "user", "content": "Hello, Sluice"}]}))]
pub struct MessagesRequest {
    /// A public model name or alias (any provider).
    #[schema(example = "gpt-4o-mini")]
    pub model: String,
    /// Most tokens to generate.
    #[schema(minimum = 1)]
    pub max_tokens: u64,
    /// The conversation.
    pub messages: Vec<AnthropicMessage>,
    /// A system prompt: a string or text blocks.
    pub system: Option<MessageContent>,
    /// Answer as Anthropic's named server-sent events.
    pub stream: Option<bool>,
}

/// One turn of a Messages request.
#[derive(Serialize, ToSchema)]
pub struct AnthropicMessage {
    /// `user` or `assistant`.
    pub role: AnthropicRole,
    /// A string or content blocks (`text`, `image`, `tool_use`, `tool_result`).
    pub content: MessageContent,
}

/// Who speaks in a Messages request.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum AnthropicRole {
    /// The user.
    User,
    /// The model.
    Assistant,
}

/// A Messages API `message`.
#[derive(Serialize, ToSchema)]
pub struct Message {
    /// `msg_…`.
    pub id: String,
    /// `message`.
    #[serde(rename = "type")]
    pub kind: String,
    /// `assistant`.
    pub role: String,
    /// The model name the client asked for.
    pub model: String,
    /// Content blocks (`thinking`, `redacted_thinking`, `text`, `tool_use`).
    #[schema(value_type = Vec<Object>)]
    pub content: Vec<Value>,
    /// `end_turn`, `stop_sequence`, `max_tokens`, `tool_use` or `refusal`.
    pub stop_reason: String,
    /// The stop sequence that ended the answer, or null.
    #[schema(required = true, value_type = Option<String>)]
    pub stop_sequence: Option<Value>,
    /// Anthropic's usage: `input_tokens` (neither read from nor written to the prompt cache),
    /// `cache_creation_input_tokens`, `cache_read_input_tokens`, `cache_creation`
    /// (`ephemeral_5m_input_tokens`, `ephemeral_1h_input_tokens`), `output_tokens`.
    #[schema(value_type = Object)]
    pub usage: Value,
}

// ---- Usage and metrics ---------------------------------------------------------------------

/// A key's (or, on `/admin/usage`, a tenant's) limits and where it stands.
#[derive(Serialize, ToSchema)]
pub struct UsageReport {
    /// `usage`.
    pub object: String,
    /// The calling key (absent on `/admin/usage`).
    pub key_id: Option<String>,
    /// The tenant.
    pub tenant: String,
    /// Per level that has a limit: `key` and `tenant` on `/v1/usage`; `tenant` and `gateway`
    /// (the gateway-wide budget) on `/admin/usage`.
    pub limits: BTreeMap<String, LevelUsage>,
}

/// Where one level stands against its limits (only those it has).
#[derive(Serialize, ToSchema)]
pub struct LevelUsage {
    /// Requests per minute.
    pub rpm: Option<RateUsage>,
    /// Tokens per minute.
    pub tpm: Option<RateUsage>,
    /// The spending cap.
    pub budget: Option<BudgetUsage>,
}

/// A rate limit over the sliding window.
#[derive(Serialize, ToSchema)]
pub struct RateUsage {
    /// The limit.
    pub limit: u32,
    /// Used in the window (estimate).
    pub used: i64,
    /// Left in the window.
    #[schema(minimum = 0)]
    pub remaining: i64,
    /// The window, seconds.
    pub window_s: u64,
}

/// A spending cap in the current period.
#[derive(Serialize, ToSchema)]
pub struct BudgetUsage {
    /// `day` or `month` (UTC).
    pub period: BudgetPeriod,
    /// E.g. `2026-11-28` or `2026-11`.
    pub period_id: String,
    /// The cap.
    pub cap_usd: f64,
    /// Settled spend.
    pub spent_usd: f64,
    /// Reserved by requests still running.
    pub reserved_usd: f64,
    /// Left to reserve.
    pub remaining_usd: f64,
    /// When the period ends, Unix seconds.
    pub resets_at: u64,
}

/// Usage rollups as series (`GET /v1/metrics`).
#[derive(Serialize, ToSchema)]
pub struct MetricsSeries {
    /// `metrics`.
    pub object: String,
    /// Start, Unix seconds (a multiple of `step_s`).
    pub from: u64,
    /// End, Unix seconds (exclusive).
    pub to: u64,
    /// `1m` or `1h`.
    pub step: String,
    /// 60 or 3600.
    pub step_s: u64,
    /// `model`, `provider` or `tenant`.
    pub group_by: String,
    /// The tenant shown, or null for all (admin).
    #[schema(required = true)]
    pub tenant: Option<String>,
    /// One series per group.
    pub series: Vec<Series>,
    /// Over the whole window.
    pub totals: Figures,
}

/// One group's points.
#[derive(Serialize, ToSchema)]
pub struct Series {
    /// The model, provider or tenant.
    pub group: String,
    /// One point per step that had traffic.
    pub points: Vec<Point>,
}

/// The figures of one step.
#[derive(Serialize, ToSchema)]
pub struct Point {
    /// Start of the step, Unix seconds.
    pub t: u64,
    /// Requests per second over the step.
    pub rps: f64,
    /// The figures.
    #[serde(flatten)]
    pub figures: Figures,
}

/// Figures of a set of requests.
#[derive(Serialize, ToSchema)]
pub struct Figures {
    /// Requests.
    pub requests: u64,
    /// Requests answered with an error.
    pub errors: u64,
    /// Errors by class.
    pub errors_by_class: ErrorClasses,
    /// Answers from the cache.
    pub cache_hits: u64,
    /// Degraded answers (stale cache, downgrade, message).
    pub fallbacks: u64,
    /// Prompt tokens.
    pub tokens_in: u64,
    /// Completion tokens.
    pub tokens_out: u64,
    /// Spend.
    pub cost_usd: f64,
    /// `errors / requests`.
    pub error_rate: f64,
    /// `cache_hits / requests`.
    pub cache_hit_rate: f64,
    /// `cost_usd / requests`.
    pub cost_per_request_usd: f64,
    /// Median latency, ms (null without requests).
    #[schema(required = true)]
    pub p50_ms: Option<f64>,
    /// 95th percentile latency, ms.
    #[schema(required = true)]
    pub p95_ms: Option<f64>,
    /// 99th percentile latency, ms.
    #[schema(required = true)]
    pub p99_ms: Option<f64>,
}

/// Errors by class.
#[derive(Serialize, ToSchema)]
pub struct ErrorClasses {
    /// 4xx other than 429.
    pub client: u64,
    /// 429.
    pub rate_limited: u64,
    /// Provider failures.
    pub upstream: u64,
    /// Sluice's own 5xx.
    pub server: u64,
}

/// Query parameters of `GET /v1/metrics`.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
pub struct MetricsParams {
    /// Start, Unix seconds (default: `to` minus an hour).
    pub from: Option<u64>,
    /// End, Unix seconds (default: the end of the current step). At most 2 days after
    /// `from` at step `1m`, 31 days at `1h`.
    pub to: Option<u64>,
    /// What a series is per (`tenant`: admin key only).
    #[param(inline)]
    pub group_by: Option<GroupByParam>,
    /// Width of a point.
    #[param(inline)]
    pub step: Option<StepParam>,
    /// One tenant (admin key only).
    pub tenant: Option<String>,
}

/// What a series of `GET /v1/metrics` is per.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum GroupByParam {
    /// Public model name.
    Model,
    /// The deployment's provider.
    Provider,
    /// Tenant (admin key only).
    Tenant,
}

/// Width of a point of `GET /v1/metrics`.
#[derive(Serialize, ToSchema)]
pub enum StepParam {
    /// A minute.
    #[serde(rename = "1m")]
    Minute,
    /// An hour.
    #[serde(rename = "1h")]
    Hour,
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// `(method, path)` of every route the router (every surface's) answers, of the paths in
    /// `paths`: asked with each method, a route answers with its handler, anything else with
    /// the router's fallbacks (`unknown_url`, `method_not_allowed`).
    #[cfg(all(feature = "sqlite", feature = "prometheus"))]
    async fn routed(paths: &BTreeSet<String>) -> BTreeSet<(String, String)> {
        let config = crate::config::Config::builtin();
        let deps = crate::deps::Deps::sqlite(
            ":memory:",
            &config,
            std::sync::Arc::new(crate::clock::SystemClock),
        )
        .unwrap()
        .with_local_metrics(&config.metrics);
        let services = crate::deps::Services::build(&config, &deps).unwrap();
        let state = super::super::AppState::new(&config, &deps, &services, "admin-key");
        let app = super::super::router(std::sync::Arc::new(state));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        let http = reqwest::Client::new();
        let mut routes = BTreeSet::new();
        for path in paths {
            for method in ["get", "post", "delete", "put", "patch"] {
                let r = http
                    .request(
                        method.to_uppercase().parse().unwrap(),
                        format!("{url}{}", path.replace("{id}", "x")),
                    )
                    .send()
                    .await
                    .unwrap();
                let body: Value =
                    serde_json::from_slice(&r.bytes().await.unwrap()).unwrap_or(Value::Null);
                let code = body["error"]["code"].as_str().unwrap_or_default();
                if !matches!(code, "unknown_url" | "method_not_allowed") {
                    routes.insert((method.to_owned(), path.clone()));
                }
            }
        }
        routes
    }

    // The SQLite store behind the router, and Prometheus behind `/metrics`.
    #[cfg(all(feature = "sqlite", feature = "prometheus"))]
    #[tokio::test]
    async fn every_route_of_the_router_is_in_the_document_and_nothing_else() {
        let doc = serde_json::to_value(ApiDoc::openapi()).unwrap();
        assert_eq!(doc["openapi"], "3.1.0");
        let mut documented = BTreeSet::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for method in item.as_object().unwrap().keys() {
                documented.insert((method.clone(), path.clone()));
            }
        }
        let paths = documented.iter().map(|(_, p)| p.clone()).collect();
        let routed = routed(&paths).await;
        assert_eq!(routed.len(), 16, "{routed:?}");
        assert_eq!(documented, routed);
    }

    #[test]
    fn keyed_routes_document_401_and_error_bodies_have_the_right_shape() {
        let doc = serde_json::to_value(ApiDoc::openapi()).unwrap();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                let open = op["security"] == serde_json::json!([{}]);
                let responses = op["responses"].as_object().unwrap();
                assert_eq!(!open, responses.contains_key("401"), "{method} {path}");
                let shape = if path == "/v1/messages" {
                    "#/components/schemas/AnthropicError"
                } else {
                    "#/components/schemas/ErrorResponse"
                };
                for (status, response) in responses {
                    if status.starts_with('4') || status.starts_with('5') {
                        let schema = &response["content"]["application/json"]["schema"];
                        assert_eq!(schema["$ref"], shape, "{method} {path} {status}");
                    }
                }
            }
        }
    }

    #[tokio::test]
    async fn the_error_schema_requires_exactly_what_an_error_serializes_to() {
        let response = ApiError::invalid_request("bad", Some("model")).into_response();
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        let body: Value = serde_json::from_slice(&body).unwrap();
        let doc = serde_json::to_value(ApiDoc::openapi()).unwrap();
        let schema = &doc["components"]["schemas"]["ErrorResponse"]["properties"]["error"];
        let inner = &schema["oneOf"][0];
        let mut required: Vec<&str> = inner["required"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        required.sort_unstable();
        let mut keys: Vec<&str> = body["error"]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        keys.sort_unstable();
        assert_eq!(required, keys);
    }
}
