//! Any bytes as a provider's event stream, delivered whole and cut into pieces at points
//! taken from the input: the same events either way.
#![no_main]

use bytes::Bytes;
use futures_util::StreamExt;
use libfuzzer_sys::fuzz_target;
use sluice::providers::sse;

fn decode(chunks: Vec<Bytes>) -> Vec<Result<(String, serde_json::Value), String>> {
    let stream = futures_util::stream::iter(chunks.into_iter().map(Ok));
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime")
        .block_on(
            sse::json_events(stream)
                .map(|e| e.map(|e| (e.name, e.data)).map_err(|e| e.to_string()))
                .collect(),
        )
}

fuzz_target!(|data: &[u8]| {
    let Some((&seed, bytes)) = data.split_first() else {
        return;
    };
    let step = usize::from(seed).max(1);
    let chunks: Vec<Bytes> = bytes.chunks(step).map(Bytes::copy_from_slice).collect();
    assert_eq!(decode(chunks), decode(vec![Bytes::copy_from_slice(bytes)]));
});
