//! The providers' batch APIs, as strict as their references:
//!
//! - OpenAI Files + Batches ([Batch]: <https://platform.openai.com/docs/api-reference/batch>,
//!   [Files]: <https://platform.openai.com/docs/api-reference/files>, [Guide]:
//!   <https://platform.openai.com/docs/guides/batch>): `POST /v1/files` (multipart,
//!   `purpose=batch`, a JSONL file of `{custom_id, method, url, body}` lines), `POST
//!   /v1/batches`, `GET /v1/batches/{id}`, `POST /v1/batches/{id}/cancel`, `GET
//!   /v1/files/{id}/content` (output and error files).
//! - Anthropic Message Batches ([Create]:
//!   <https://docs.anthropic.com/en/api/creating-message-batches>, [Retrieve]:
//!   <https://docs.anthropic.com/en/api/retrieving-message-batches>, [Results]:
//!   <https://docs.anthropic.com/en/api/retrieving-message-batch-results>, [Cancel]:
//!   <https://docs.anthropic.com/en/api/canceling-message-batches>): `POST
//!   /v1/messages/batches`, `GET /v1/messages/batches/{id}`, `GET …/{id}/results`, `POST
//!   …/{id}/cancel`.
//!
//! Each request of a batch is answered by the same code as a synchronous call
//! (`openai::answer`, `anthropic::answer`), so a request the provider would refuse fails on
//! its own line (a partial failure) while the others succeed. A batch ends once
//! [`super::FakeUpstream::set_batch_delay`] has passed since it was created (polling is
//! exercised), as [`BatchFate`] says: completed, failed, or expired with nothing done.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::{Behaviour, Recorded, Shared};

/// OpenAI: "The file can contain up to 50,000 requests, and can be up to 200 MB in size"
/// ([Batch], `input_file_id`).
pub const OPENAI_MAX_REQUESTS: usize = 50_000;
/// OpenAI's batch input file size limit ([Batch]).
pub const OPENAI_MAX_FILE_BYTES: usize = 200 * 1024 * 1024;
/// Anthropic: "up to 100,000 Message requests or 256 MB in size, whichever is reached first"
/// ([Create]).
pub const ANTHROPIC_MAX_REQUESTS: usize = 100_000;
/// Anthropic's batch size limit ([Create]).
pub const ANTHROPIC_MAX_BYTES: usize = 256 * 1024 * 1024;

/// How the next batches end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BatchFate {
    /// Every request is run (each succeeds or fails on its own).
    #[default]
    Complete,
    /// The whole batch fails: OpenAI `status: failed` with an `errors` list; Anthropic (which
    /// has no failed state) ends with every request `errored` (`api_error`).
    Fail,
    /// The completion window passes with nothing done: OpenAI `status: expired` with every
    /// request in the error file as `batch_expired`; Anthropic ends with every result
    /// `expired`.
    Expire,
}

#[derive(Default)]
pub(super) struct Batches {
    pub(super) delay: Duration,
    pub(super) fate: BatchFate,
    seq: usize,
    files: HashMap<String, StoredFile>,
    openai: HashMap<String, OpenAiBatch>,
    anthropic: HashMap<String, AnthropicBatch>,
}

struct StoredFile {
    purpose: String,
    bytes: Bytes,
}

/// A part of a multipart body: field name, file name, content.
type Part = (String, Option<String>, Vec<u8>);

struct OpenAiBatch {
    object: Value,
    created: Instant,
    fate: BatchFate,
    lines: Vec<Value>,
    /// Line problems found while validating ([Guide]: a batch whose input fails validation
    /// goes to `failed` with the problems in `errors`).
    problems: Vec<Value>,
    done: bool,
}

struct AnthropicBatch {
    object: Value,
    created: Instant,
    fate: BatchFate,
    requests: Vec<Value>,
    results: Option<String>,
}

fn now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn next_id(b: &mut Batches, prefix: &str) -> String {
    b.seq += 1;
    format!("{prefix}{:024}", b.seq)
}

fn openai_error(status: u16, code: &str, param: Option<&str>, message: &str) -> Response {
    (
        StatusCode::from_u16(status).unwrap(),
        axum::Json(
            json!({"error": {"message": message, "type": "invalid_request_error",
            "param": param, "code": code}}),
        ),
    )
        .into_response()
}

fn anthropic_error(status: u16, kind: &str, message: &str) -> Response {
    (
        StatusCode::from_u16(status).unwrap(),
        axum::Json(json!({"type": "error", "error": {"type": kind, "message": message}})),
    )
        .into_response()
}

fn record(shared: &Shared, path: &str, headers: &HeaderMap, body: Value) {
    shared
        .calls
        .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    if shared.record {
        shared.requests.lock().unwrap().push(Recorded {
            path: path.to_owned(),
            headers: headers.clone(),
            body,
        });
    }
}

fn bearer(headers: &HeaderMap) -> bool {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("Bearer ") && v.len() > 7)
}

fn anthropic_auth(headers: &HeaderMap) -> Option<Response> {
    if headers.get("x-api-key").is_none() {
        return Some(anthropic_error(
            401,
            "authentication_error",
            "x-api-key header is required",
        ));
    }
    if headers.get("anthropic-version").is_none() {
        return Some(anthropic_error(
            400,
            "invalid_request_error",
            "anthropic-version: header is required",
        ));
    }
    None
}

/// The parts of a `multipart/form-data` body: (name, filename, content).
fn multipart(headers: &HeaderMap, body: &[u8]) -> Option<Vec<Part>> {
    let ct = headers.get(header::CONTENT_TYPE)?.to_str().ok()?;
    if !ct.starts_with("multipart/form-data") {
        return None;
    }
    let boundary = ct.split("boundary=").nth(1)?.trim_matches('"');
    let delimiter = format!("--{boundary}");
    let text = body;
    let mut parts = Vec::new();
    let positions: Vec<usize> = find_all(text, delimiter.as_bytes());
    for pair in positions.windows(2) {
        let part = &text[pair[0] + delimiter.len()..pair[1]];
        let part = part.strip_prefix(b"\r\n")?;
        let split = find_all(part, b"\r\n\r\n").first().copied()?;
        let head = std::str::from_utf8(&part[..split]).ok()?;
        let mut content = part[split + 4..].to_vec();
        if content.ends_with(b"\r\n") {
            content.truncate(content.len() - 2);
        }
        let disposition = head
            .lines()
            .find(|l| l.to_ascii_lowercase().starts_with("content-disposition"))?;
        let field = |key: &str| {
            disposition
                .split(';')
                .map(str::trim)
                .find_map(|p| p.strip_prefix(&format!("{key}=")))
                .map(|v| v.trim_matches('"').to_owned())
        };
        parts.push((field("name")?, field("filename"), content));
    }
    // The closing delimiter ends with `--`.
    let last = *positions.last()?;
    text[last + delimiter.len()..]
        .starts_with(b"--")
        .then_some(parts)
}

fn find_all(haystack: &[u8], needle: &[u8]) -> Vec<usize> {
    if needle.is_empty() || haystack.len() < needle.len() {
        return Vec::new();
    }
    (0..=haystack.len() - needle.len())
        .filter(|&i| &haystack[i..i + needle.len()] == needle)
        .collect()
}

/// `POST /v1/files` ([Files]: `file` and `purpose` are required; `purpose` is one of
/// `assistants`, `batch`, `fine-tune`, `vision`, `user_data`, `evals`; for `batch` the file
/// must be `.jsonl`, at most 200 MB).
pub(super) async fn upload(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(parts) = multipart(&headers, &body) else {
        record(&shared, "/v1/files", &headers, Value::Null);
        return openai_error(
            400,
            "invalid_request",
            None,
            "Expected a multipart/form-data body.",
        );
    };
    let purpose = parts
        .iter()
        .find(|p| p.0 == "purpose")
        .map(|p| String::from_utf8_lossy(&p.2).into_owned());
    let file = parts.iter().find(|p| p.0 == "file");
    record(
        &shared,
        "/v1/files",
        &headers,
        json!({"purpose": purpose, "filename": file.and_then(|f| f.1.clone()),
            "bytes": file.map(|f| f.2.len())}),
    );
    if !bearer(&headers) {
        return openai_error(
            401,
            "invalid_api_key",
            None,
            "Missing bearer authentication.",
        );
    }
    let Some(purpose) = purpose else {
        return openai_error(
            400,
            "missing_required_parameter",
            Some("purpose"),
            "Missing required parameter: 'purpose'.",
        );
    };
    if ![
        "assistants",
        "batch",
        "fine-tune",
        "vision",
        "user_data",
        "evals",
    ]
    .contains(&purpose.as_str())
    {
        return openai_error(
            400,
            "invalid_value",
            Some("purpose"),
            &format!("Invalid value for 'purpose': '{purpose}'."),
        );
    }
    let Some((_, Some(filename), content)) = file.cloned() else {
        return openai_error(
            400,
            "missing_required_parameter",
            Some("file"),
            "Missing required parameter: 'file' (a file part with a filename).",
        );
    };
    if purpose == "batch" && !filename.ends_with(".jsonl") {
        return openai_error(
            400,
            "invalid_file_format",
            Some("file"),
            "Batch input files must be JSONL (.jsonl).",
        );
    }
    if purpose == "batch" && content.len() > OPENAI_MAX_FILE_BYTES {
        return openai_error(
            400,
            "file_too_large",
            Some("file"),
            "Batch input files can be up to 200 MB.",
        );
    }
    let mut b = shared.batches.lock().unwrap();
    let id = next_id(&mut b, "file-");
    let object = json!({"id": id, "object": "file", "bytes": content.len(),
        "created_at": now_s(), "filename": filename, "purpose": purpose});
    b.files.insert(
        id,
        StoredFile {
            purpose,
            bytes: Bytes::from(content),
        },
    );
    axum::Json(object).into_response()
}

/// `GET /v1/files/{id}/content`: the file's bytes.
pub(super) async fn file_content(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    record(
        &shared,
        &format!("/v1/files/{id}/content"),
        &headers,
        Value::Null,
    );
    if !bearer(&headers) {
        return openai_error(
            401,
            "invalid_api_key",
            None,
            "Missing bearer authentication.",
        );
    }
    let b = shared.batches.lock().unwrap();
    match b.files.get(&id) {
        Some(f) => (
            [(header::CONTENT_TYPE, "application/octet-stream")],
            f.bytes.clone(),
        )
            .into_response(),
        None => openai_error(
            404,
            "not_found",
            None,
            &format!("No such File object: {id}"),
        ),
    }
}

/// Endpoints a batch may call ([Batch], `endpoint`).
const BATCH_ENDPOINTS: &[&str] = &[
    "/v1/responses",
    "/v1/chat/completions",
    "/v1/embeddings",
    "/v1/completions",
];

/// The problems of an input file for a batch to `endpoint` ([Guide], "Preparing your batch
/// file": each line has a `custom_id` unique in the file, `method` POST, the batch's `url`,
/// a `body`; one model per file; at most 50,000 lines).
fn validate_lines(content: &[u8], endpoint: &str) -> (Vec<Value>, Vec<Value>) {
    let mut lines = Vec::new();
    let mut problems = Vec::new();
    let mut seen = HashSet::new();
    let mut model: Option<String> = None;
    let problem = |code: &str, line: usize, message: String| json!({"code": code, "line": line, "message": message, "param": null});
    let text = String::from_utf8_lossy(content);
    for (i, raw) in text.lines().enumerate() {
        let n = i + 1;
        if raw.trim().is_empty() {
            continue;
        }
        let Ok(line) = serde_json::from_str::<Value>(raw) else {
            problems.push(problem(
                "invalid_json_line",
                n,
                "This line is not parseable as valid JSON.".into(),
            ));
            continue;
        };
        let Some(custom_id) = line["custom_id"].as_str() else {
            problems.push(problem(
                "missing_required_parameter",
                n,
                "Missing 'custom_id'.".into(),
            ));
            continue;
        };
        if !seen.insert(custom_id.to_owned()) {
            problems.push(problem(
                "duplicate_custom_id",
                n,
                format!("The custom_id '{custom_id}' is duplicated."),
            ));
        }
        if line["method"] != "POST" {
            problems.push(problem(
                "invalid_method",
                n,
                "Only the POST method is supported.".into(),
            ));
        }
        if line["url"] != endpoint {
            problems.push(problem(
                "mismatched_endpoint",
                n,
                format!("The url must match the batch's endpoint ({endpoint})."),
            ));
        }
        if !line["body"].is_object() {
            problems.push(problem(
                "missing_required_parameter",
                n,
                "Missing 'body'.".into(),
            ));
            continue;
        }
        let this = line["body"]["model"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        match &model {
            None => model = Some(this),
            Some(m) if *m != this => problems.push(problem(
                "mismatched_model",
                n,
                "All requests in a batch must use the same model.".into(),
            )),
            Some(_) => {}
        }
        lines.push(line);
    }
    if lines.is_empty() && problems.is_empty() {
        problems.push(problem(
            "empty_file",
            0,
            "The input file has no requests.".into(),
        ));
    }
    if lines.len() > OPENAI_MAX_REQUESTS {
        problems.push(problem(
            "too_many_requests",
            0,
            format!("A batch can have at most {OPENAI_MAX_REQUESTS} requests."),
        ));
    }
    (lines, problems)
}

/// `POST /v1/batches` ([Batch]: `input_file_id`, `endpoint` and `completion_window` are
/// required; "Currently only `24h` is supported"; the file must have been uploaded with
/// purpose `batch`).
pub(super) async fn create_openai(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    record(&shared, "/v1/batches", &headers, body.clone());
    if !bearer(&headers) {
        return openai_error(
            401,
            "invalid_api_key",
            None,
            "Missing bearer authentication.",
        );
    }
    for field in ["input_file_id", "endpoint", "completion_window"] {
        if !body[field].is_string() {
            return openai_error(
                400,
                "missing_required_parameter",
                Some(field),
                &format!("Missing required parameter: '{field}'."),
            );
        }
    }
    let endpoint = body["endpoint"].as_str().unwrap();
    if !BATCH_ENDPOINTS.contains(&endpoint) {
        return openai_error(
            400,
            "invalid_value",
            Some("endpoint"),
            &format!("Invalid value: '{endpoint}'. Supported values are: {BATCH_ENDPOINTS:?}."),
        );
    }
    if body["completion_window"] != "24h" {
        return openai_error(
            400,
            "invalid_value",
            Some("completion_window"),
            "Invalid value for 'completion_window'. Supported values are: '24h'.",
        );
    }
    let file_id = body["input_file_id"].as_str().unwrap();
    let mut b = shared.batches.lock().unwrap();
    let Some(file) = b.files.get(file_id) else {
        return openai_error(
            400,
            "invalid_value",
            Some("input_file_id"),
            &format!("No such File object: {file_id}"),
        );
    };
    if file.purpose != "batch" {
        return openai_error(
            400,
            "invalid_value",
            Some("input_file_id"),
            "The input file must have been uploaded with purpose 'batch'.",
        );
    }
    let (lines, problems) = validate_lines(&file.bytes, endpoint);
    let id = next_id(&mut b, "batch_");
    let created = now_s();
    let object = json!({
        "id": id, "object": "batch", "endpoint": endpoint, "errors": null,
        "input_file_id": file_id, "completion_window": "24h", "status": "validating",
        "output_file_id": null, "error_file_id": null, "created_at": created,
        "in_progress_at": null, "expires_at": created + 86_400, "finalizing_at": null,
        "completed_at": null, "failed_at": null, "expired_at": null, "cancelling_at": null,
        "cancelled_at": null,
        "request_counts": {"total": 0, "completed": 0, "failed": 0},
        "metadata": body.get("metadata").cloned().unwrap_or(Value::Null),
    });
    let fate = b.fate;
    b.openai.insert(
        id,
        OpenAiBatch {
            object: object.clone(),
            created: Instant::now(),
            fate,
            lines,
            problems,
            done: false,
        },
    );
    axum::Json(object).into_response()
}

/// One request of a batch, answered as the synchronous API would: (status, body).
async fn run_line(shared: &Shared, n: usize, path: &str, body: &Value) -> (u16, Value) {
    let response = if path == "/v1/messages" {
        super::anthropic::answer(&Behaviour::Ok, n, body, &shared.anthropic_cache)
    } else {
        super::openai::answer(&Behaviour::Ok, n, path, body, 0)
    };
    let status = response.status().as_u16();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

/// Moves an OpenAI batch on: `validating → in_progress`, then, once the delay has passed,
/// to its end (`completed`, `failed` or `expired`) with its output and error files.
async fn advance_openai(shared: &Shared, id: &str) -> Option<Value> {
    let (lines, fate, problems, ready, status) = {
        let b = shared.batches.lock().unwrap();
        let batch = b.openai.get(id)?;
        if batch.done {
            return Some(batch.object.clone());
        }
        (
            batch.lines.clone(),
            batch.fate,
            batch.problems.clone(),
            batch.created.elapsed() >= b.delay,
            batch.object["status"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        )
    };
    let now = now_s();
    if !problems.is_empty() {
        let mut b = shared.batches.lock().unwrap();
        let batch = b.openai.get_mut(id)?;
        batch.object["status"] = json!("failed");
        batch.object["failed_at"] = json!(now);
        batch.object["errors"] = json!({"object": "list", "data": problems});
        batch.done = true;
        return Some(batch.object.clone());
    }
    if status == "cancelling" {
        let mut b = shared.batches.lock().unwrap();
        let batch = b.openai.get_mut(id)?;
        batch.object["status"] = json!("cancelled");
        batch.object["cancelled_at"] = json!(now);
        batch.object["request_counts"] = json!({"total": lines.len(), "completed": 0, "failed": 0});
        batch.done = true;
        return Some(batch.object.clone());
    }
    if !ready {
        let mut b = shared.batches.lock().unwrap();
        let batch = b.openai.get_mut(id)?;
        batch.object["status"] = json!("in_progress");
        if batch.object["in_progress_at"].is_null() {
            batch.object["in_progress_at"] = json!(now);
        }
        batch.object["request_counts"]["total"] = json!(lines.len());
        return Some(batch.object.clone());
    }
    let mut output = String::new();
    let mut errors = String::new();
    let (mut completed, mut failed) = (0, 0);
    match fate {
        BatchFate::Fail => {
            let mut b = shared.batches.lock().unwrap();
            let batch = b.openai.get_mut(id)?;
            batch.object["status"] = json!("failed");
            batch.object["failed_at"] = json!(now);
            batch.object["errors"] = json!({"object": "list", "data": [{"code": "token_limit_exceeded",
                "line": null, "param": null,
                "message": "Enqueued token limit reached for this model. Try again later."}]});
            batch.done = true;
            return Some(batch.object.clone());
        }
        BatchFate::Expire => {
            // [Batch], "Batch expiration": requests not run "will be written to the error
            // file" with code `batch_expired`.
            for (i, line) in lines.iter().enumerate() {
                failed += 1;
                errors.push_str(&format!("{}\n", json!({"id": format!("batch_req_{id}_{i}"),
                    "custom_id": line["custom_id"], "response": null,
                    "error": {"code": "batch_expired",
                        "message": "This request could not be executed before the completion window expired."}})));
            }
        }
        BatchFate::Complete => {
            for (i, line) in lines.iter().enumerate() {
                let url = line["url"].as_str().unwrap_or_default();
                let (status, body) = run_line(shared, i + 1, url, &line["body"]).await;
                let out = json!({"id": format!("batch_req_{id}_{i}"), "custom_id": line["custom_id"],
                    "response": {"status_code": status, "request_id": format!("req_{id}_{i}"), "body": body},
                    "error": null});
                if status == 200 {
                    completed += 1;
                    output.push_str(&format!("{out}\n"));
                } else {
                    failed += 1;
                    errors.push_str(&format!("{out}\n"));
                }
            }
        }
    }
    let mut b = shared.batches.lock().unwrap();
    let file = |b: &mut Batches, content: String| -> Option<String> {
        if content.is_empty() {
            return None;
        }
        let fid = next_id(b, "file-");
        b.files.insert(
            fid.clone(),
            StoredFile {
                purpose: "batch_output".into(),
                bytes: Bytes::from(content),
            },
        );
        Some(fid)
    };
    let output_id = file(&mut b, output);
    let error_id = file(&mut b, errors);
    let batch = b.openai.get_mut(id)?;
    let expired = fate == BatchFate::Expire;
    batch.object["status"] = json!(if expired { "expired" } else { "completed" });
    batch.object[if expired {
        "expired_at"
    } else {
        "completed_at"
    }] = json!(now);
    batch.object["finalizing_at"] = json!(now);
    batch.object["output_file_id"] = json!(output_id);
    batch.object["error_file_id"] = json!(error_id);
    batch.object["request_counts"] =
        json!({"total": lines.len(), "completed": completed, "failed": failed});
    batch.done = true;
    Some(batch.object.clone())
}

/// `GET /v1/batches/{id}`.
pub(super) async fn get_openai(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    record(&shared, &format!("/v1/batches/{id}"), &headers, Value::Null);
    if !bearer(&headers) {
        return openai_error(
            401,
            "invalid_api_key",
            None,
            "Missing bearer authentication.",
        );
    }
    match advance_openai(&shared, &id).await {
        Some(object) => axum::Json(object).into_response(),
        None => openai_error(
            404,
            "not_found",
            None,
            &format!("No batch found with id '{id}'."),
        ),
    }
}

/// `POST /v1/batches/{id}/cancel` ([Batch]: "The batch will be in status `cancelling` for up
/// to 10 minutes, before changing to `cancelled`"; only a batch not yet ended can be).
pub(super) async fn cancel_openai(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    record(
        &shared,
        &format!("/v1/batches/{id}/cancel"),
        &headers,
        Value::Null,
    );
    if !bearer(&headers) {
        return openai_error(
            401,
            "invalid_api_key",
            None,
            "Missing bearer authentication.",
        );
    }
    let mut b = shared.batches.lock().unwrap();
    let Some(batch) = b.openai.get_mut(&id) else {
        return openai_error(
            404,
            "not_found",
            None,
            &format!("No batch found with id '{id}'."),
        );
    };
    if batch.done {
        let status = batch.object["status"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        return openai_error(
            409,
            "invalid_state",
            None,
            &format!("Cannot cancel a batch with status '{status}'."),
        );
    }
    batch.object["status"] = json!("cancelling");
    batch.object["cancelling_at"] = json!(now_s());
    axum::Json(batch.object.clone()).into_response()
}

/// `custom_id` as Anthropic requires it ([Create]: 1 to 64 characters of `[a-zA-Z0-9_-]`).
fn valid_custom_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-')
}

/// `POST /v1/messages/batches` ([Create]: `requests` is a non-empty list of `{custom_id,
/// params}`, each `custom_id` unique in the batch; at most 100,000 requests or 256 MB).
pub(super) async fn create_anthropic(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    raw: Bytes,
) -> Response {
    let body: Value = serde_json::from_slice(&raw).unwrap_or(Value::Null);
    record(&shared, "/v1/messages/batches", &headers, body.clone());
    if let Some(refusal) = anthropic_auth(&headers) {
        return refusal;
    }
    if raw.len() > ANTHROPIC_MAX_BYTES {
        return anthropic_error(413, "request_too_large", "Batch exceeds 256 MB.");
    }
    let Some(requests) = body["requests"].as_array() else {
        return anthropic_error(400, "invalid_request_error", "requests: Field required");
    };
    if requests.is_empty() {
        return anthropic_error(
            400,
            "invalid_request_error",
            "requests: List should have at least 1 item after validation, not 0",
        );
    }
    if requests.len() > ANTHROPIC_MAX_REQUESTS {
        return anthropic_error(
            400,
            "invalid_request_error",
            "requests: List should have at most 100000 items",
        );
    }
    let mut seen = HashSet::new();
    for (i, r) in requests.iter().enumerate() {
        let Some(id) = r["custom_id"].as_str() else {
            return anthropic_error(
                400,
                "invalid_request_error",
                &format!("requests.{i}.custom_id: Field required"),
            );
        };
        if !valid_custom_id(id) {
            return anthropic_error(
                400,
                "invalid_request_error",
                &format!(
                    "requests.{i}.custom_id: String should match pattern '^[a-zA-Z0-9_-]{{1,64}}$'"
                ),
            );
        }
        if !seen.insert(id) {
            return anthropic_error(
                400,
                "invalid_request_error",
                &format!("Duplicate custom_id '{id}': each request's custom_id must be unique."),
            );
        }
        if !r["params"].is_object() {
            return anthropic_error(
                400,
                "invalid_request_error",
                &format!("requests.{i}.params: Field required"),
            );
        }
        if r["params"]["stream"] == json!(true) {
            return anthropic_error(
                400,
                "invalid_request_error",
                &format!("requests.{i}.params.stream: streaming is not supported in batches"),
            );
        }
    }
    let mut b = shared.batches.lock().unwrap();
    let id = next_id(&mut b, "msgbatch_");
    let created = now_s();
    let object = json!({
        "id": id, "type": "message_batch", "processing_status": "in_progress",
        "request_counts": {"processing": requests.len(), "succeeded": 0, "errored": 0,
            "canceled": 0, "expired": 0},
        "ended_at": null, "created_at": created, "expires_at": created + 86_400,
        "cancel_initiated_at": null, "archived_at": null, "results_url": null,
    });
    let fate = b.fate;
    b.anthropic.insert(
        id,
        AnthropicBatch {
            object: object.clone(),
            created: Instant::now(),
            fate,
            requests: requests.clone(),
            results: None,
        },
    );
    axum::Json(object).into_response()
}

/// Ends an Anthropic batch once its delay has passed (at once when canceling).
async fn advance_anthropic(shared: &Shared, id: &str, base: &str) -> Option<Value> {
    let (requests, fate, ready, canceling) = {
        let b = shared.batches.lock().unwrap();
        let batch = b.anthropic.get(id)?;
        if batch.results.is_some() {
            return Some(batch.object.clone());
        }
        (
            batch.requests.clone(),
            batch.fate,
            batch.created.elapsed() >= b.delay,
            batch.object["processing_status"] == "canceling",
        )
    };
    if !ready && !canceling {
        return Some(
            shared
                .batches
                .lock()
                .unwrap()
                .anthropic
                .get(id)?
                .object
                .clone(),
        );
    }
    let mut results = String::new();
    let mut counts = HashMap::<&str, usize>::new();
    for (i, r) in requests.iter().enumerate() {
        let result = if canceling {
            json!({"type": "canceled"})
        } else {
            match fate {
                BatchFate::Expire => json!({"type": "expired"}),
                BatchFate::Fail => json!({"type": "errored", "error": {"type": "error",
                    "error": {"type": "api_error", "message": "Internal server error"}}}),
                BatchFate::Complete => {
                    let (status, body) =
                        run_line(shared, i + 1, "/v1/messages", &r["params"]).await;
                    if status == 200 {
                        json!({"type": "succeeded", "message": body})
                    } else {
                        json!({"type": "errored", "error": body})
                    }
                }
            }
        };
        let kind = match result["type"].as_str().unwrap() {
            "succeeded" => "succeeded",
            "errored" => "errored",
            "canceled" => "canceled",
            _ => "expired",
        };
        *counts.entry(kind).or_default() += 1;
        results.push_str(&format!(
            "{}\n",
            json!({"custom_id": r["custom_id"], "result": result})
        ));
    }
    let mut b = shared.batches.lock().unwrap();
    let batch = b.anthropic.get_mut(id)?;
    batch.object["processing_status"] = json!("ended");
    batch.object["ended_at"] = json!(now_s());
    batch.object["results_url"] = json!(format!("{base}/v1/messages/batches/{id}/results"));
    batch.object["request_counts"] = json!({"processing": 0,
        "succeeded": counts.get("succeeded").copied().unwrap_or(0),
        "errored": counts.get("errored").copied().unwrap_or(0),
        "canceled": counts.get("canceled").copied().unwrap_or(0),
        "expired": counts.get("expired").copied().unwrap_or(0)});
    batch.results = Some(results);
    Some(batch.object.clone())
}

fn base_of(headers: &HeaderMap) -> String {
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("127.0.0.1");
    format!("http://{host}")
}

/// `GET /v1/messages/batches/{id}` ([Retrieve]).
pub(super) async fn get_anthropic(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    record(
        &shared,
        &format!("/v1/messages/batches/{id}"),
        &headers,
        Value::Null,
    );
    if let Some(refusal) = anthropic_auth(&headers) {
        return refusal;
    }
    match advance_anthropic(&shared, &id, &base_of(&headers)).await {
        Some(object) => axum::Json(object).into_response(),
        None => anthropic_error(404, "not_found_error", "Message batch not found."),
    }
}

/// `GET /v1/messages/batches/{id}/results` ([Results]: JSONL, one `{custom_id, result}` per
/// request, in no particular order; available once `processing_status` is `ended`).
pub(super) async fn results_anthropic(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    record(
        &shared,
        &format!("/v1/messages/batches/{id}/results"),
        &headers,
        Value::Null,
    );
    if let Some(refusal) = anthropic_auth(&headers) {
        return refusal;
    }
    let b = shared.batches.lock().unwrap();
    match b.anthropic.get(&id) {
        None => anthropic_error(404, "not_found_error", "Message batch not found."),
        Some(batch) => match &batch.results {
            // Results are not available before the batch has ended ([Results]).
            None => anthropic_error(
                400,
                "invalid_request_error",
                "Batch results are not available until processing has ended.",
            ),
            // In no particular order, as the reference warns: reversed here, so a client
            // that matches by position instead of `custom_id` fails.
            Some(results) => {
                let mut lines: Vec<&str> = results.lines().collect();
                lines.reverse();
                (
                    [(header::CONTENT_TYPE, "application/x-jsonl")],
                    lines.join("\n") + "\n",
                )
                    .into_response()
            }
        },
    }
}

/// `POST /v1/messages/batches/{id}/cancel` ([Cancel]: `processing_status` becomes
/// `canceling`; requests not yet run end `canceled`).
pub(super) async fn cancel_anthropic(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    record(
        &shared,
        &format!("/v1/messages/batches/{id}/cancel"),
        &headers,
        Value::Null,
    );
    if let Some(refusal) = anthropic_auth(&headers) {
        return refusal;
    }
    let mut b = shared.batches.lock().unwrap();
    let Some(batch) = b.anthropic.get_mut(&id) else {
        return anthropic_error(404, "not_found_error", "Message batch not found.");
    };
    if batch.results.is_none() {
        batch.object["processing_status"] = json!("canceling");
        batch.object["cancel_initiated_at"] = json!(now_s());
    }
    axum::Json(batch.object.clone()).into_response()
}
