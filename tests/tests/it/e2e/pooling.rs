//! One pooled HTTP client per process: sequential requests reuse keep-alive connections.

use serde_json::json;
use sluice_tests::{FakeUpstream, TestGateway, fake_config};

#[tokio::test]
async fn two_hundred_sequential_requests_use_a_handful_of_connections() {
    let up = FakeUpstream::start().await;
    let gw = TestGateway::start(&fake_config(&up.base_url)).await;
    let key = gw.create_key("t1").await;
    for i in 0..200 {
        // Distinct prompts so that every request is a cache miss and reaches the upstream.
        let r = gw
            .post(
                "/v1/chat/completions",
                &key,
                &json!({"model": "gpt-test", "messages": [{"role": "user", "content": format!("n{i}")}]}),
            )
            .await;
        assert_eq!(r.status(), 200);
    }
    assert_eq!(up.calls(), 200);
    assert!(
        up.connections() <= 4,
        "200 requests opened {} upstream connections",
        up.connections()
    );
}
