//! OpenAI embeddings → Gemini `batchEmbedContents`, and the vectors back as OpenAI's list.
//!
//! - Gemini takes at most 100 requests per batch ("at most 100 requests can be in one
//!   batch"; OpenAI takes 2,048 inputs), so inputs go in batches of [`BATCH`], a few at a
//!   time, and the vectors are joined in order.
//! - OpenAI's vectors are unit length; Gemini's are only at gemini-embedding-001's full 3,072
//!   dimensions ("The 3072 dimension embedding is normalized… For other dimensions… you need
//!   to normalize the embeddings", ai.google.dev/gemini-api/docs/embeddings). Every vector is
//!   normalized, so cosine similarity and dot product agree as OpenAI clients expect.
//! - `BatchEmbedContentsResponse` has no usage on the Gemini API (only `embeddings`;
//!   Vertex AI's `metadata` is not on it) and `countTokens` would be a second call per
//!   request with its own quota, so usage is estimated at four characters a token, Google's
//!   own rule of thumb.

use base64::Engine as _;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::bad_request;
use super::response::no_error_object;
use super::wire::{
    BatchEmbedContentsRequest, BatchEmbedContentsResponse, Content, EmbedContentRequest, Part,
};
use crate::providers::{ProviderError, Usage};
use crate::tokens;

/// The most requests Gemini takes in one `batchEmbedContents`.
pub(super) const BATCH: usize = 100;

/// How many batches of one request are in flight at once.
pub(super) const CONCURRENT_BATCHES: usize = 4;

/// The OpenAI embedding fields; another one would be left out, so it is refused.
const FIELDS: &[&str] = &["model", "input", "dimensions", "encoding_format", "user"];

/// The texts to embed; token arrays cannot be sent to Gemini, nor fields it has no use for.
pub(super) fn embedding_inputs(body: &Map<String, Value>) -> Result<Vec<String>, ProviderError> {
    if let Some(field) = body
        .iter()
        .find(|(k, v)| !FIELDS.contains(&k.as_str()) && !v.is_null())
        .map(|(k, _)| k)
    {
        return Err(bad_request(format!(
            "{field}: cannot be sent to Gemini (its API has no equivalent)"
        )));
    }
    match body.get("encoding_format").and_then(Value::as_str) {
        None | Some("float" | "base64") => {}
        Some(other) => {
            return Err(bad_request(format!(
                "encoding_format `{other}` is not float or base64"
            )));
        }
    }
    let refuse =
        || bad_request("Gemini embeds text only: `input` must be a string or an array of strings");
    match body.get("input") {
        Some(Value::String(s)) => Ok(vec![s.clone()]),
        Some(Value::Array(items)) if !items.is_empty() => items
            .iter()
            .map(|i| i.as_str().map(str::to_owned).ok_or_else(refuse))
            .collect(),
        _ => Err(refuse()),
    }
}

/// A `batchEmbedContents` request: one `EmbedContentRequest` per text.
pub(super) fn batch_embed_request(
    model: &str,
    inputs: &[String],
    dimensions: Option<u64>,
) -> BatchEmbedContentsRequest {
    let requests = inputs
        .iter()
        .map(|text| EmbedContentRequest {
            model: format!("models/{model}"),
            content: Content {
                role: None,
                parts: vec![Part::text(text.as_str())],
            },
            output_dimensionality: dimensions,
        })
        .collect();
    BatchEmbedContentsRequest { requests }
}

/// The vectors of a `batchEmbedContents` answer, one per input.
pub(super) fn embedding_vectors(
    body: &[u8],
    expected: usize,
) -> Result<Vec<Vec<f64>>, ProviderError> {
    let malformed = |what: String| ProviderError::Malformed(what);
    let answer: Value =
        serde_json::from_slice(body).map_err(|_| malformed("body is not JSON".into()))?;
    no_error_object(&answer)?;
    let answer = BatchEmbedContentsResponse::deserialize(&answer)
        .map_err(|e| malformed(format!("not a BatchEmbedContentsResponse: {e}")))?;
    if answer.embeddings.len() != expected {
        return Err(malformed(format!(
            "{} embeddings for {expected} inputs",
            answer.embeddings.len()
        )));
    }
    Ok(answer.embeddings.into_iter().map(|e| e.values).collect())
}

/// `values` scaled to unit length (a zero vector stays as it is).
pub(super) fn normalized(mut values: Vec<f64>) -> Vec<f64> {
    let norm = values.iter().map(|v| v * v).sum::<f64>().sqrt();
    if norm > 0.0 && norm.is_finite() {
        values.iter_mut().for_each(|v| *v /= norm);
    }
    values
}

/// Little-endian `f32`s in base64, as OpenAI sends `encoding_format: "base64"`.
// f64 → f32 is the point: OpenAI's base64 vectors are little-endian `f32`s.
#[allow(clippy::cast_possible_truncation)]
pub(super) fn base64_vector(values: &[f64]) -> String {
    let bytes: Vec<u8> = values
        .iter()
        .flat_map(|v| (*v as f32).to_le_bytes())
        .collect();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// OpenAI's embedding list of unit vectors, with usage estimated (Gemini reports none).
pub(super) fn embedding_list(
    model: &str,
    inputs: &[String],
    vectors: Vec<Vec<f64>>,
    base64: bool,
) -> (Value, Usage) {
    let data: Vec<Value> = vectors
        .into_iter()
        .map(normalized)
        .enumerate()
        .map(|(index, values)| {
            let embedding = if base64 {
                json!(base64_vector(&values))
            } else {
                json!(values)
            };
            json!({"object": "embedding", "index": index, "embedding": embedding})
        })
        .collect();
    let prompt_tokens: u64 = inputs.iter().map(|t| tokens::estimate_text(t)).sum();
    let list = json!({
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    });
    let usage = Usage::plain(prompt_tokens, 0);
    (list, usage)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::tests::{object, status_400};
    use super::*;

    #[test]
    fn embeddings_are_batched_and_answered_as_an_openai_list() {
        let body = object(
            json!({"model": "text-embedding-004", "input": ["hello", "world!"], "dimensions": 3}),
        );
        let inputs = embedding_inputs(&body).unwrap();
        assert_eq!(
            serde_json::to_value(batch_embed_request("text-embedding-004", &inputs, Some(3)))
                .unwrap(),
            json!({"requests": [
                {"model": "models/text-embedding-004", "content": {"parts": [{"text": "hello"}]}, "outputDimensionality": 3},
                {"model": "models/text-embedding-004", "content": {"parts": [{"text": "world!"}]}, "outputDimensionality": 3}
            ]})
        );
        // Reduced-dimension vectors as Gemini returns them: not unit length.
        let answer =
            br#"{"embeddings": [{"values": [3.0, 0.0, -4.0]}, {"values": [0.0, 0.125, 0.0]}]}"#;
        let vectors = embedding_vectors(answer, 2).unwrap();
        let (list, usage) = embedding_list("text-embedding-004", &inputs, vectors.clone(), false);
        assert_eq!(list["object"], "list");
        assert_eq!(list["model"], "text-embedding-004");
        assert_eq!(
            list["data"],
            json!([{"object": "embedding", "index": 0, "embedding": [0.6, 0.0, -0.8]},
                   {"object": "embedding", "index": 1, "embedding": [0.0, 1.0, 0.0]}])
        );
        assert_eq!(usage.prompt_tokens, 2 + 2);
        assert_eq!(list["usage"]["prompt_tokens"], 4);

        let (list, _) = embedding_list("text-embedding-004", &inputs, vectors, true);
        let encoded = list["data"][0]["embedding"].as_str().unwrap();
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .unwrap();
        let floats: Vec<f32> = bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        assert_eq!(floats, [0.6, 0.0, -0.8]);
        assert_eq!(normalized(vec![0.0, 0.0]), [0.0, 0.0]);
    }

    #[test]
    fn token_inputs_and_bad_embedding_answers_are_refused() {
        let tokens = object(json!({"model": "e", "input": [1, 2, 3]}));
        assert!(status_400(embedding_inputs(&tokens).unwrap_err()).contains("text only"));
        let unknown = object(json!({"model": "e", "input": "x", "task_type": "RETRIEVAL_QUERY"}));
        assert!(status_400(embedding_inputs(&unknown).unwrap_err()).contains("task_type"));
        let format = object(json!({"model": "e", "input": "x", "encoding_format": "int8"}));
        assert!(status_400(embedding_inputs(&format).unwrap_err()).contains("int8"));
        assert!(matches!(
            embedding_vectors(br#"{"embeddings": [{"values": [1.0]}]}"#, 2),
            Err(ProviderError::Malformed(_))
        ));
        assert!(matches!(
            embedding_vectors(b"<html>", 1),
            Err(ProviderError::Malformed(_))
        ));
        assert!(matches!(
            embedding_vectors(br#"{"error": {"code": 500, "message": "boom"}}"#, 1),
            Err(ProviderError::Malformed(m)) if m == "boom"
        ));
    }
}
