//! The providers' Batch APIs on the wire: OpenAI's Files + Batches
//! (<https://platform.openai.com/docs/api-reference/batch>) and Anthropic's Message Batches
//! (<https://docs.anthropic.com/en/api/creating-message-batches>). Submit a batch of requests,
//! poll it, read its results back as OpenAI-format answers, cancel it.
//!
//! Each request of a batch is prepared exactly as the synchronous call would send it (the
//! same translation to Anthropic's Messages API, the same reasoning-model rules for OpenAI),
//! and each answer is read exactly as a synchronous answer is (`validate`, `from_message`).
//! Provider keys are taken out of every error message, as for synchronous calls.

use std::time::Duration;

use bytes::Bytes;
use serde_json::{Map, Value, json};

use super::HttpClient;
use super::anthropic::{API_KEY, API_VERSION, VERSION_HEADER, from_message, to_messages_request};
use super::client::RequestBuilder;
use super::http::{error_message, send_for_body};
use super::{Endpoint, Provider, ProviderError, Usage};

/// A provider's batch API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchApi {
    /// OpenAI Files + Batches at this base URL (`…/v1`).
    OpenAi(String),
    /// Anthropic Message Batches at this base URL (`…/v1`).
    Anthropic(String),
}

/// Where an upstream batch is.
#[derive(Debug)]
pub enum Polled {
    /// Not ended yet (validating, in progress, finalizing, cancelling).
    Running,
    /// The batch as a whole failed (OpenAI `failed`, e.g. its input did not validate): none
    /// of its requests ran.
    Failed(String),
    /// Ended: the outcome of every request the results name, by `custom_id`.
    Ended(Vec<(String, LineOutcome)>),
}

/// What became of one request of a batch.
#[derive(Debug)]
pub enum LineOutcome {
    /// Answered: the OpenAI-format answer and its usage.
    Answered {
        /// The answer, as a synchronous call would have returned it.
        body: Bytes,
        /// Tokens, as the provider reported them.
        usage: Option<Usage>,
    },
    /// Refused by the provider as the request's own fault (a 4xx on its line).
    Refused(ProviderError),
    /// Not run or failed on the provider's side (expired, cancelled, a 5xx): worth an
    /// ordinary call.
    NotRun(String),
}

impl BatchApi {
    /// The batch API of a provider, if it has one Sluice speaks.
    pub fn of(provider: &Provider) -> Option<Self> {
        match provider {
            Provider::OpenAi(p) => Some(Self::OpenAi(p.base_url().to_owned())),
            Provider::Anthropic(p) => Some(Self::Anthropic(p.base_url().to_owned())),
            Provider::Gemini(_) | Provider::Mock(_) => None,
        }
    }

    /// Whether the batch API serves this endpoint (Anthropic has no embeddings).
    pub fn serves(&self, endpoint: Endpoint) -> bool {
        match self {
            Self::OpenAi(_) => true,
            Self::Anthropic(_) => endpoint == Endpoint::ChatCompletions,
        }
    }

    /// The body of one request as this provider's batch takes it (`model` already set to the
    /// upstream model): what the synchronous call would send.
    pub fn request_body(
        &self,
        endpoint: Endpoint,
        body: &Map<String, Value>,
    ) -> Result<Value, ProviderError> {
        match self {
            Self::OpenAi(_) if endpoint == Endpoint::ChatCompletions => {
                let lowered = super::extensions::lower(body, super::extensions::Target::OpenAi)?;
                let body = lowered.as_ref().unwrap_or(body);
                let plain = super::gemini::without_signatures(body);
                let body = plain.as_ref().unwrap_or(body);
                Ok(Value::Object(super::openai::for_model(body)?.into_owned()))
            }
            Self::OpenAi(_) => Ok(Value::Object(body.clone())),
            Self::Anthropic(_) => serde_json::to_value(to_messages_request(body, false)?)
                .map_err(|e| ProviderError::Malformed(e.to_string())),
        }
    }

    /// Submits the requests (`custom_id`, prepared body) as one batch; returns its id.
    pub async fn submit(
        &self,
        http: &HttpClient,
        key: &str,
        endpoint: Endpoint,
        requests: &[(String, Value)],
        timeout: Duration,
    ) -> Result<String, ProviderError> {
        let result = match self {
            Self::OpenAi(base) => {
                let url = format!("/v1/{}", endpoint.path());
                let mut jsonl = String::new();
                for (id, body) in requests {
                    jsonl.push_str(
                        &json!({"custom_id": id, "method": "POST", "url": url, "body": body})
                            .to_string(),
                    );
                    jsonl.push('\n');
                }
                let (content_type, form) = multipart_form("batch", "sluice-batch.jsonl", &jsonl);
                let upload = http
                    .post(format!("{base}/files"))
                    .bearer_auth(key)
                    .header(hyper::header::CONTENT_TYPE, &content_type)
                    .body(form);
                let file = json_of(send_for_body(upload, timeout).await?.0)?;
                let file_id = str_field(&file, "id")?;
                let create = http
                    .post(format!("{base}/batches"))
                    .bearer_auth(key)
                    .json(&json!({"input_file_id": file_id, "endpoint": url,
                        "completion_window": "24h"}));
                let batch = json_of(send_for_body(create, timeout).await?.0)?;
                str_field(&batch, "id")
            }
            Self::Anthropic(base) => {
                let requests: Vec<Value> = requests
                    .iter()
                    .map(|(id, params)| json!({"custom_id": id, "params": params}))
                    .collect();
                let create = anthropic(http.post(format!("{base}/messages/batches")), key)
                    .json(&json!({ "requests": requests }));
                let batch = json_of(send_for_body(create, timeout).await?.0)?;
                str_field(&batch, "id")
            }
        };
        result.map_err(|e| e.without_secret(key))
    }

    /// Where the batch is; once ended, every request's outcome (Anthropic's translated as
    /// `answers` says).
    pub async fn poll(
        &self,
        http: &HttpClient,
        key: &str,
        id: &str,
        answers: Answers<'_>,
        endpoint: Endpoint,
        timeout: Duration,
    ) -> Result<Polled, ProviderError> {
        let result = match self {
            Self::OpenAi(base) => poll_openai(http, base, key, id, endpoint, timeout).await,
            Self::Anthropic(base) => poll_anthropic(http, base, key, id, answers, timeout).await,
        };
        result.map_err(|e| e.without_secret(key))
    }

    /// Asks the provider to cancel the batch (its unfinished requests are not run).
    pub async fn cancel(
        &self,
        http: &HttpClient,
        key: &str,
        id: &str,
        timeout: Duration,
    ) -> Result<(), ProviderError> {
        let request = match self {
            Self::OpenAi(base) => http
                .post(format!("{base}/batches/{id}/cancel"))
                .bearer_auth(key),
            Self::Anthropic(base) => anthropic(
                http.post(format!("{base}/messages/batches/{id}/cancel")),
                key,
            ),
        };
        send_for_body(request, timeout)
            .await
            .map(|_| ())
            .map_err(|e| e.without_secret(key))
    }
}

/// How a batch's answers are translated to OpenAI's format (Anthropic's).
#[derive(Debug, Clone, Copy)]
pub struct Answers<'a> {
    /// The upstream model the batch ran.
    pub model: &'a str,
    /// Their `created` time, in Unix seconds (the gateway's clock).
    pub created_s: u64,
}

fn anthropic<'a>(request: RequestBuilder<'a>, key: &str) -> RequestBuilder<'a> {
    request
        .header(API_KEY, key)
        .header(VERSION_HEADER, API_VERSION)
}

fn json_of(bytes: Bytes) -> Result<Value, ProviderError> {
    serde_json::from_slice(&bytes).map_err(|_| ProviderError::Malformed("body is not JSON".into()))
}

fn str_field(v: &Value, field: &str) -> Result<String, ProviderError> {
    v.get(field)
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| ProviderError::Malformed(format!("no `{field}`")))
}

/// A `multipart/form-data` body with a `purpose` field and one file part (RFC 7578). The
/// boundary is random, so no file content can contain it by chance.
fn multipart_form(purpose: &str, filename: &str, content: &str) -> (String, Vec<u8>) {
    let boundary = crate::keys::random_id("sluice-", 32);
    let mut body = Vec::with_capacity(content.len() + 512);
    body.extend_from_slice(
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\n{purpose}\r\n\
             --{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{filename}\"\r\n\
             Content-Type: application/jsonl\r\n\r\n"
        )
        .as_bytes(),
    );
    body.extend_from_slice(content.as_bytes());
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

async fn poll_openai(
    http: &HttpClient,
    base: &str,
    key: &str,
    id: &str,
    endpoint: Endpoint,
    timeout: Duration,
) -> Result<Polled, ProviderError> {
    let get = http.get(format!("{base}/batches/{id}")).bearer_auth(key);
    let batch = json_of(send_for_body(get, timeout).await?.0)?;
    let status = batch.get("status").and_then(Value::as_str).unwrap_or("");
    match status {
        "validating" | "in_progress" | "finalizing" | "cancelling" => return Ok(Polled::Running),
        "failed" => {
            let reason = batch["errors"]["data"][0]["message"]
                .as_str()
                .unwrap_or("the batch failed")
                .chars()
                .take(500)
                .collect();
            return Ok(Polled::Failed(reason));
        }
        "completed" | "expired" | "cancelled" => {}
        other => {
            return Err(ProviderError::Malformed(format!(
                "unknown batch status `{}`",
                other.chars().take(40).collect::<String>()
            )));
        }
    }
    let mut outcomes = Vec::new();
    for file in ["output_file_id", "error_file_id"] {
        let Some(file_id) = batch.get(file).and_then(Value::as_str) else {
            continue;
        };
        let get = http
            .get(format!("{base}/files/{file_id}/content"))
            .bearer_auth(key);
        let content = send_for_body(get, timeout).await?.0;
        for line in content.split(|b| *b == b'\n') {
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let Ok(line) = serde_json::from_slice::<Value>(line) else {
                return Err(ProviderError::Malformed("output line is not JSON".into()));
            };
            let Some(custom_id) = line.get("custom_id").and_then(Value::as_str) else {
                continue;
            };
            outcomes.push((custom_id.to_owned(), openai_line(&line, endpoint)));
        }
    }
    Ok(Polled::Ended(outcomes))
}

/// One line of an OpenAI output or error file ([Batch], "The request output object":
/// `response` `{status_code, request_id, body}` or `error` `{code, message}`).
fn openai_line(line: &Value, endpoint: Endpoint) -> LineOutcome {
    let response = line.get("response").filter(|r| !r.is_null());
    let Some(response) = response else {
        let code = line["error"]["code"].as_str().unwrap_or("error");
        return LineOutcome::NotRun(format!("batch request not run: {code}"));
    };
    let status = response
        .get("status_code")
        .and_then(Value::as_u64)
        .and_then(|s| u16::try_from(s).ok())
        .unwrap_or(0);
    let body = response.get("body").cloned().unwrap_or(Value::Null);
    if (200..300).contains(&status) {
        let bytes = Bytes::from(body.to_string());
        return match super::openai::validate(endpoint, &bytes) {
            Ok(usage) => LineOutcome::Answered { body: bytes, usage },
            Err(e) => LineOutcome::NotRun(e.to_string()),
        };
    }
    let error = ProviderError::Status {
        status,
        message: error_message(&body),
        retry_after: None,
    };
    if error.rejects_request() {
        LineOutcome::Refused(error)
    } else {
        LineOutcome::NotRun(error.to_string())
    }
}

async fn poll_anthropic(
    http: &HttpClient,
    base: &str,
    key: &str,
    id: &str,
    answers: Answers<'_>,
    timeout: Duration,
) -> Result<Polled, ProviderError> {
    let get = anthropic(http.get(format!("{base}/messages/batches/{id}")), key);
    let batch = json_of(send_for_body(get, timeout).await?.0)?;
    match batch.get("processing_status").and_then(Value::as_str) {
        Some("in_progress" | "canceling") => return Ok(Polled::Running),
        Some("ended") => {}
        _ => return Err(ProviderError::Malformed("unknown processing_status".into())),
    }
    // The results are read from our own base URL, not `results_url`: the key goes only where
    // the operator pointed it.
    let get = anthropic(
        http.get(format!("{base}/messages/batches/{id}/results")),
        key,
    );
    let content = send_for_body(get, timeout).await?.0;
    let mut outcomes = Vec::new();
    for line in content.split(|b| *b == b'\n') {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let Ok(line) = serde_json::from_slice::<Value>(line) else {
            return Err(ProviderError::Malformed("results line is not JSON".into()));
        };
        let Some(custom_id) = line.get("custom_id").and_then(Value::as_str) else {
            continue;
        };
        let result = &line["result"];
        let outcome = match result["type"].as_str() {
            Some("succeeded") => {
                match from_message(&result["message"], answers.model, answers.created_s) {
                    Ok((completion, usage)) => LineOutcome::Answered {
                        body: Bytes::from(completion.to_string()),
                        usage,
                    },
                    Err(e) => LineOutcome::NotRun(e.to_string()),
                }
            }
            // [Results]: `errored` carries the error the request would have had; an
            // `invalid_request_error` is the request's own fault, anything else is not.
            Some("errored") if result["error"]["error"]["type"] == "invalid_request_error" => {
                LineOutcome::Refused(ProviderError::Status {
                    status: 400,
                    message: error_message(&result["error"]),
                    retry_after: None,
                })
            }
            Some(other) => LineOutcome::NotRun(format!(
                "batch request {}",
                other.chars().take(40).collect::<String>()
            )),
            None => LineOutcome::NotRun("batch result without a type".into()),
        };
        outcomes.push((custom_id.to_owned(), outcome));
    }
    Ok(Polled::Ended(outcomes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_lines_map_to_outcomes() {
        let ok = json!({"custom_id": "a", "response": {"status_code": 200, "request_id": "r",
            "body": {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2}}}});
        assert!(matches!(
            openai_line(&ok, Endpoint::ChatCompletions),
            LineOutcome::Answered { usage: Some(u), .. } if u.prompt_tokens == 3
        ));
        let refused = json!({"custom_id": "b", "response": {"status_code": 400,
            "body": {"error": {"message": "bad temperature"}}}});
        assert!(matches!(
            openai_line(&refused, Endpoint::ChatCompletions),
            LineOutcome::Refused(ProviderError::Status { status: 400, .. })
        ));
        let expired = json!({"custom_id": "c", "response": null,
            "error": {"code": "batch_expired", "message": "…"}});
        assert!(matches!(
            openai_line(&expired, Endpoint::ChatCompletions),
            LineOutcome::NotRun(_)
        ));
        let server = json!({"custom_id": "d", "response": {"status_code": 500, "body": {}}});
        assert!(matches!(
            openai_line(&server, Endpoint::ChatCompletions),
            LineOutcome::NotRun(_)
        ));
    }

    #[test]
    fn the_form_carries_purpose_and_file() {
        let (ct, body) = multipart_form("batch", "x.jsonl", "{\"a\":1}\n");
        let boundary = ct.split("boundary=").nth(1).unwrap();
        let text = String::from_utf8(body).unwrap();
        assert!(text.starts_with(&format!("--{boundary}\r\n")));
        assert!(text.contains("name=\"purpose\"\r\n\r\nbatch\r\n"));
        assert!(text.contains("filename=\"x.jsonl\""));
        assert!(text.ends_with(&format!("--{boundary}--\r\n")));
    }
}
