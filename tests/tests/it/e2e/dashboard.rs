//! `GET /dashboard`: one self-contained page, no key needed, nothing loaded from elsewhere, a
//! strict Content-Security-Policy. (That it draws real traffic is checked in headless
//! Chromium: tests/python/test_dashboard.py.)

use base64::Engine as _;
use sha2::{Digest, Sha256};
use sluice_tests::TestGateway;

use crate::e2e::header;

/// The text inside the page's `<tag>…</tag>`.
fn block<'a>(page: &'a str, tag: &str) -> &'a str {
    let (_, rest) = page.split_once(&format!("<{tag}>")).unwrap();
    rest.split_once(&format!("</{tag}>")).unwrap().0
}

fn hash_source(text: &str) -> String {
    let digest = Sha256::digest(text.as_bytes());
    format!(
        "'sha256-{}'",
        base64::engine::general_purpose::STANDARD.encode(digest)
    )
}

#[tokio::test]
async fn the_page_is_self_contained_under_a_strict_policy() {
    let gw = TestGateway::start_builtin().await;
    let r = gw
        .http
        .get(format!("{}/dashboard", gw.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "content-type"), "text/html; charset=utf-8");
    assert_eq!(header(&r, "cache-control"), "no-store");
    assert_eq!(header(&r, "x-content-type-options"), "nosniff");
    let csp = header(&r, "content-security-policy").to_owned();
    let page = r.text().await.unwrap();
    assert!(page.starts_with("<!doctype html>"));

    let directives: Vec<&str> = csp.split(';').map(str::trim).collect();
    for expected in [
        "default-src 'none'".to_owned(),
        format!("script-src {}", hash_source(block(&page, "script"))),
        format!("style-src {}", hash_source(block(&page, "style"))),
        "connect-src 'self'".to_owned(),
        "frame-ancestors 'none'".to_owned(),
    ] {
        assert!(
            directives.contains(&expected.as_str()),
            "{expected} in {csp}"
        );
    }
    assert!(!csp.contains('*') && !csp.contains("http"), "{csp}");

    // Nothing external: no URL of any scheme, no external script or style.
    let lower = page.to_lowercase();
    for needle in ["http://", "https://", "//cdn", "src=", "@import", "url("] {
        assert!(!lower.contains(needle), "the page contains {needle:?}");
    }
    // What the headless test reads: a chart per metric and the headline totals.
    for id in ["rps", "p50", "p95", "p99", "error_rate", "cache_hit_rate"] {
        assert!(page.contains(&format!("{{id: \"{id}\"")), "chart {id}");
    }
    assert!(page.contains("data-chart=\"budget\""));
}

#[tokio::test]
async fn the_page_needs_no_key_and_only_answers_get() {
    let gw = TestGateway::start_builtin().await;
    let url = format!("{}/dashboard", gw.url);
    let r = gw
        .http
        .get(&url)
        .bearer_auth("sk-sluice-nope")
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        200,
        "the page is public; the data behind it is not"
    );
    let r = gw.http.post(&url).send().await.unwrap();
    assert_eq!(r.status(), 405);
}
