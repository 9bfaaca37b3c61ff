//! Tool-call ids: unique per answer, and carrying Gemini's thought signatures.
//!
//! Gemini 3 refuses a conversation whose function calls come back without the
//! `thoughtSignature` they were answered with ("Function call is missing a
//! thought_signature"; ai.google.dev/gemini-api/docs/thought-signatures). OpenAI's format
//! has no field for it, and the one thing every client sends back unchanged is the tool
//! call's `id`: the official SDKs rebuild an assistant message from `id`, `type` and
//! `function`, and `/v1/messages` clients send a `tool_use` block's `id`. So the signature
//! rides in the id, `{id}__thought__{signature as base64url}`, and the request translation
//! puts it back on the `functionCall` part. The alphabet stays within `[A-Za-z0-9_-]`, what
//! Anthropic allows in a `tool_use` id. The price is a long id (a signature is hundreds of
//! bytes) that other providers see if a conversation moves to them.
//!
//! Gemini gives calls no id of its own (its `FunctionCall.id` is optional), so ids are made
//! here: `call_` and 24 hex digits of a hash of the answer's `responseId` and the call's
//! position. Unlike a counter they do not repeat across answers (an agent loop keys results
//! by id), and unlike random ids every read of one answer — a stream however the network
//! cut it, a cached replay — gives the same ones.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

/// Between a call's own id and the signature it carries.
const MARK: &str = "__thought__";

/// `id`, carrying `signature` if there is one.
pub(super) fn encode(id: &str, signature: Option<&str>) -> String {
    match signature {
        Some(signature) => format!("{id}{MARK}{}", URL_SAFE_NO_PAD.encode(signature)),
        None => id.to_owned(),
    }
}

/// The thought signature an id carries, if it carries one intact. An id a client changed
/// carries none: the call goes back without a signature, which Gemini before 3 accepts and
/// Gemini 3 refuses with its own message.
pub(super) fn signature(id: &str) -> Option<String> {
    let (_, encoded) = id.split_once(MARK)?;
    let bytes = URL_SAFE_NO_PAD.decode(encoded).ok()?;
    String::from_utf8(bytes).ok()
}

/// The request with the thought signatures taken out of its tool-call ids (assistant
/// `tool_calls[].id`, tool `tool_call_id`), for a provider other than Gemini: a conversation
/// Gemini began may continue elsewhere (another deployment of the model, a fallback), and
/// OpenAI refuses tool-call ids longer than 40 characters. `None` when no id carries one.
pub(crate) fn without_signatures(body: &Map<String, Value>) -> Option<Map<String, Value>> {
    let carries = |id: &Value| id.as_str().is_some_and(|id| id.contains(MARK));
    let messages = body.get("messages")?.as_array()?;
    let any = messages.iter().any(|m| {
        carries(&m["tool_call_id"])
            || m["tool_calls"]
                .as_array()
                .is_some_and(|calls| calls.iter().any(|c| carries(&c["id"])))
    });
    if !any {
        return None;
    }
    let strip = |id: &mut Value| {
        if let Some((own, _)) = id.as_str().and_then(|s| s.split_once(MARK)) {
            *id = Value::String(own.to_owned());
        }
    };
    let mut body = body.clone();
    let messages = body.get_mut("messages")?.as_array_mut()?;
    for message in messages {
        if let Some(id) = message.get_mut("tool_call_id") {
            strip(id);
        }
        let calls = message.get_mut("tool_calls").and_then(Value::as_array_mut);
        for call in calls.into_iter().flatten() {
            if let Some(id) = call.get_mut("id") {
                strip(id);
            }
        }
    }
    Some(body)
}

/// Hands out the ids of one answer's function calls (see the module note).
#[derive(Debug)]
pub(super) struct CallIds {
    seed: String,
    made: u64,
}

impl CallIds {
    /// Ids for the answer with this `responseId` (random ones when it has none).
    pub fn new(response_id: Option<&str>) -> Self {
        let seed = match response_id {
            Some(id) if !id.is_empty() => id.to_owned(),
            _ => hex::encode(rand::random::<[u8; 16]>()),
        };
        Self { seed, made: 0 }
    }

    /// The id of the next call: Gemini's own if it gave one, else a made one; with the
    /// call's signature.
    pub fn next(&mut self, own: Option<&str>, signature: Option<&str>) -> String {
        let id = match own.filter(|id| !id.is_empty()) {
            Some(id) => id.to_owned(),
            None => {
                let digest = Sha256::digest(format!("{}:{}", self.seed, self.made));
                self.made += 1;
                format!("call_{}", &hex::encode(digest)[..24])
            }
        };
        encode(&id, signature)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_survives_the_id_and_only_an_intact_one() {
        let signature = "CiQB0e2Kb+/9xQ==";
        let id = encode("call_0123", Some(signature));
        assert!(id.starts_with("call_0123__thought__"), "{id}");
        assert!(
            id.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'),
            "{id}"
        );
        assert_eq!(self::signature(&id).as_deref(), Some(signature));
        assert_eq!(encode("call_1", None), "call_1");
        assert_eq!(self::signature("call_1"), None);
        assert_eq!(self::signature("call_1__thought__%%%"), None);
    }

    #[test]
    fn other_providers_get_the_ids_without_signatures() {
        let id = encode("call_0123", Some("c2lnbmF0dXJl"));
        let body = serde_json::json!({"model": "gpt-4o", "messages": [
            {"role": "user", "content": "q"},
            {"role": "assistant", "tool_calls": [{"id": id, "type": "function", "function": {"name": "f", "arguments": "{}"}},
                                                 {"id": "call_plain", "type": "function", "function": {"name": "g", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": id, "content": "1"},
            {"role": "tool", "tool_call_id": "call_plain", "content": "2"}]});
        let body = body.as_object().unwrap();
        let stripped = without_signatures(body).unwrap();
        let messages = stripped["messages"].as_array().unwrap();
        assert_eq!(messages[1]["tool_calls"][0]["id"], "call_0123");
        assert_eq!(messages[1]["tool_calls"][1]["id"], "call_plain");
        assert_eq!(messages[2]["tool_call_id"], "call_0123");
        assert_eq!(messages[3]["tool_call_id"], "call_plain");
        assert!(without_signatures(&stripped).is_none());
    }

    #[test]
    fn made_ids_differ_across_answers_and_repeat_within_one() {
        let mut a = CallIds::new(Some("resp-a"));
        let mut b = CallIds::new(Some("resp-b"));
        let (a0, a1, b0) = (a.next(None, None), a.next(None, None), b.next(None, None));
        assert!(a0.starts_with("call_") && a0.len() == 5 + 24, "{a0}");
        assert_ne!(a0, a1);
        assert_ne!(a0, b0);
        assert_eq!(CallIds::new(Some("resp-a")).next(None, None), a0);
        assert_ne!(
            CallIds::new(None).next(None, None),
            CallIds::new(None).next(None, None)
        );
        assert_eq!(a.next(Some("fc-7"), None), "fc-7");
    }
}
