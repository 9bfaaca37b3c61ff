//! Any JSON as a cached completion replayed as a stream, and as chunks to fold.
#![no_main]

use futures_util::StreamExt;
use libfuzzer_sys::fuzz_target;
use sluice::gateway::stream::{Assembler, replay};

fuzz_target!(|data: &[u8]| {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    let events: Vec<_> = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime")
        .block_on(replay(&value, true).collect());
    assert!(!events.is_empty());
    let mut assembler = Assembler::default();
    assembler.add(&value);
    let _ = (
        assembler.completion(),
        assembler.usage(),
        assembler.completion_estimate(),
    );
});
