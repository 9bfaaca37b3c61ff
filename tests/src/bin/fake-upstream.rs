//! A standalone fake OpenAI-compatible provider for benchmarks and manual testing:
//! `fake-upstream [ADDR]` (default 127.0.0.1:9999) serves until killed.

#[tokio::main]
async fn main() {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9999".to_owned());
    let upstream = sluice_tests::FakeUpstream::start_for_load(&addr).await;
    eprintln!("fake upstream listening on {}", upstream.base_url);
    std::future::pending::<()>().await;
}
