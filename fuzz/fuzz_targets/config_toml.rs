//! Any text as a config file: a config or an error naming the file.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice::config::Config;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let lookup = |var: &str| (var == "SET").then(|| "value".to_owned());
    if let Err(e) = Config::parse(text, "fuzz.toml", &lookup) {
        assert!(e.to_string().starts_with("fuzz.toml"));
    }
});
