//! OpenAI embeddings → Gemini `batchEmbedContents`, and the vectors back as OpenAI's list.

use base64::Engine as _;
use serde_json::{Map, Value, json};

use super::answer::no_error_object;
use super::bad_request;
use crate::providers::{ProviderError, Usage};
use crate::tokens;

/// The texts to embed; token arrays cannot be sent to Gemini.
pub(super) fn embedding_inputs(body: &Map<String, Value>) -> Result<Vec<String>, ProviderError> {
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
) -> Value {
    let requests: Vec<Value> = inputs
        .iter()
        .map(|text| {
            let mut r = json!({
                "model": format!("models/{model}"),
                "content": {"parts": [{"text": text}]},
            });
            if let Some(d) = dimensions {
                r["outputDimensionality"] = json!(d);
            }
            r
        })
        .collect();
    json!({ "requests": requests })
}

/// The vectors of a `batchEmbedContents` answer, one per input.
pub(super) fn embedding_vectors(
    body: &[u8],
    expected: usize,
) -> Result<Vec<Vec<f64>>, ProviderError> {
    let malformed = |what: &str| ProviderError::Malformed(what.to_owned());
    let answer: Value = serde_json::from_slice(body).map_err(|_| malformed("body is not JSON"))?;
    no_error_object(&answer)?;
    let embeddings = answer
        .get("embeddings")
        .and_then(Value::as_array)
        .ok_or_else(|| malformed("no `embeddings` array"))?;
    if embeddings.len() != expected {
        return Err(ProviderError::Malformed(format!(
            "{} embeddings for {expected} inputs",
            embeddings.len()
        )));
    }
    embeddings
        .iter()
        .map(|e| {
            e.get("values")
                .and_then(Value::as_array)
                .and_then(|values| values.iter().map(Value::as_f64).collect::<Option<Vec<_>>>())
                .ok_or_else(|| malformed("an embedding without numeric `values`"))
        })
        .collect()
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

/// OpenAI's embedding list, with usage estimated (Gemini reports none).
pub(super) fn embedding_list(
    model: &str,
    inputs: &[String],
    vectors: &[Vec<f64>],
    base64: bool,
) -> (Value, Usage) {
    let data: Vec<Value> = vectors
        .iter()
        .enumerate()
        .map(|(index, values)| {
            let embedding = if base64 {
                json!(base64_vector(values))
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
            batch_embed_request("text-embedding-004", &inputs, Some(3)),
            json!({"requests": [
                {"model": "models/text-embedding-004", "content": {"parts": [{"text": "hello"}]}, "outputDimensionality": 3},
                {"model": "models/text-embedding-004", "content": {"parts": [{"text": "world!"}]}, "outputDimensionality": 3}
            ]})
        );
        let answer =
            br#"{"embeddings": [{"values": [0.25, -0.5, 1.0]}, {"values": [0.0, 0.125, -1.0]}]}"#;
        let vectors = embedding_vectors(answer, 2).unwrap();
        let (list, usage) = embedding_list("text-embedding-004", &inputs, &vectors, false);
        assert_eq!(list["object"], "list");
        assert_eq!(list["model"], "text-embedding-004");
        assert_eq!(
            list["data"][1],
            json!({"object": "embedding", "index": 1, "embedding": [0.0, 0.125, -1.0]})
        );
        assert_eq!(usage.prompt_tokens, 2 + 2);
        assert_eq!(list["usage"]["prompt_tokens"], 4);

        let (list, _) = embedding_list("text-embedding-004", &inputs, &vectors, true);
        let encoded = list["data"][0]["embedding"].as_str().unwrap();
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .unwrap();
        let floats: Vec<f32> = bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        assert_eq!(floats, [0.25, -0.5, 1.0]);
    }

    #[test]
    fn token_inputs_and_bad_embedding_answers_are_refused() {
        let tokens = object(json!({"model": "e", "input": [1, 2, 3]}));
        assert!(status_400(embedding_inputs(&tokens).unwrap_err()).contains("text only"));
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
