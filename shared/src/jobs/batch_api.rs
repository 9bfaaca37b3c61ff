//! Jobs that can wait: a job submitted with a `completion_window` (`"24h"`, the only window
//! OpenAI's Batch API offers) may be packed with others into a provider's Batch API — OpenAI's
//! Files + Batches, Anthropic's Message Batches — which bill half the list price.

/// The one completion window accepted: 24 hours, in seconds. OpenAI's Batch API reference
/// (platform.openai.com/docs/api-reference/batch/create): "`completion_window`: The time
/// frame within which the batch should be processed. Currently only `24h` is supported."
pub const WINDOW_24H_S: u64 = 24 * 3600;

/// Most requests in one OpenAI batch input file (platform.openai.com/docs/guides/batch:
/// "up to 50,000 requests"); Anthropic allows 100,000 per Message Batch.
pub const MAX_REQUESTS: usize = 50_000;

/// Most bytes of one OpenAI batch input file ("up to 200 MB"); Anthropic allows 256 MB.
pub const MAX_BYTES: usize = 200_000_000;

/// Parses a `completion_window`: `Ok(seconds)` for a supported window, `Err(message)` (an
/// OpenAI-style `invalid_value` message) otherwise.
pub fn parse_window(window: &str) -> Result<u64, String> {
    match window {
        "24h" => Ok(WINDOW_24H_S),
        other => Err(format!(
            "Invalid value for 'completion_window': '{}'. Supported values are: '24h'.",
            other.chars().take(32).collect::<String>()
        )),
    }
}

/// The window as clients write it.
pub fn format_window(seconds: u64) -> String {
    if seconds.is_multiple_of(3600) {
        format!("{}h", seconds / 3600)
    } else {
        format!("{seconds}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_24h_is_a_window() {
        assert_eq!(parse_window("24h"), Ok(86_400));
        for bad in ["1h", "24H", "", "86400", "48h", " 24h"] {
            assert!(parse_window(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(format_window(86_400), "24h");
    }
}
