//! Any body into the request parser; an accepted one gets a cache key, and its canonical
//! JSON reads back to the same canonical JSON.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice::gateway::{cache, request};
use sluice::providers::Endpoint;

fuzz_target!(|data: &[u8]| {
    for endpoint in [Endpoint::ChatCompletions, Endpoint::Embeddings] {
        if let Ok(parsed) = request::parse(endpoint, data) {
            let _ = cache::cache_key("t", endpoint, &parsed.model, &parsed.body);
            let canonical = cache::canonical_json(&serde_json::Value::Object(parsed.body));
            let reread: serde_json::Value =
                serde_json::from_slice(&canonical).expect("canonical JSON is JSON");
            assert_eq!(cache::canonical_json(&reread), canonical);
        }
    }
});
