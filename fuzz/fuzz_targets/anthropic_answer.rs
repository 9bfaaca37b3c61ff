//! Any JSON as an Anthropic Messages answer, and as an OpenAI request to translate for it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice::providers::anthropic;

fuzz_target!(|data: &[u8]| {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    let _ = anthropic::from_message(&value, "m", 0);
    if let Some(body) = value.as_object() {
        let _ = anthropic::to_messages_request(body, true);
    }
});
