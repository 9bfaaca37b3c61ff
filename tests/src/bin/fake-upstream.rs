//! A standalone fake provider (OpenAI, Anthropic and Gemini formats, and both batch APIs) for
//! benchmarks and manual testing:
//! `fake-upstream [ADDR] [DELAY_MS] [FAULT]` (default 127.0.0.1:9999, no delay, no fault)
//! serves until killed. With a delay every answer waits that long first, like a provider's
//! think time. FAULT breaks every answer: `cut-off` (half the body, then the connection is
//! dropped) or `truncated` (half the body, delivered as if whole).

use std::time::Duration;

use sluice_tests::Behaviour;

const USAGE: &str = "usage: fake-upstream [ADDR] [DELAY_MS] [cut-off|truncated]";

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:9999".to_owned());
    let delay_ms = match args.next().map(|d| d.parse::<u64>()) {
        None => 0,
        Some(Ok(ms)) => ms,
        Some(Err(_)) => {
            eprintln!("{USAGE}");
            std::process::exit(2);
        }
    };
    let fault = match args.next().as_deref() {
        None => None,
        Some("cut-off") => Some(Behaviour::CutOff),
        Some("truncated") => Some(Behaviour::Truncated),
        Some(_) => {
            eprintln!("{USAGE}");
            std::process::exit(2);
        }
    };
    let upstream = sluice_tests::FakeUpstream::start_for_load(&addr).await;
    if let Some(fault) = &fault {
        upstream.set(fault.clone());
    } else if delay_ms > 0 {
        upstream.set(Behaviour::Slow(Duration::from_millis(delay_ms)));
    }
    eprintln!(
        "fake upstream listening on {} (delay {delay_ms} ms, fault {fault:?})",
        upstream.base_url
    );
    std::future::pending::<()>().await;
}
