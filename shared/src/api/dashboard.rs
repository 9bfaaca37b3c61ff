//! `GET /dashboard`: the live dashboard, one self-contained HTML page (`dashboard.html`).
//!
//! The page itself needs no key and holds no data: it runs in the browser, takes the key from
//! the URL fragment (`#key=…`, which browsers never send) or a form field, and reads
//! `/v1/metrics` and `/v1/usage` with it every few seconds. The machine it runs on may be
//! offline, so the page loads nothing else; its Content-Security-Policy allows exactly its
//! own inline script and style (by SHA-256) and requests to this origin.

use std::sync::LazyLock;

use axum::http::header;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use sha2::{Digest, Sha256};

/// The page, compiled into the binary.
const PAGE: &str = include_str!("dashboard.html");

/// The policy for [`PAGE`], computed once from its inline blocks.
static POLICY: LazyLock<String> = LazyLock::new(|| content_security_policy(PAGE));

/// `GET /dashboard`: the page, never cached (it changes with the binary).
#[utoipa::path(get, path = "/dashboard", tag = "meta", security(()),
    responses((status = 200, description = "The dashboard page.", body = String,
        content_type = "text/html; charset=utf-8")))]
pub async fn dashboard() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
            (header::CONTENT_SECURITY_POLICY, POLICY.as_str()),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        PAGE,
    )
        .into_response()
}

/// A policy allowing the page's one `<script>` and one `<style>` block by hash, fetches to
/// this origin, and nothing else (no frames, no forms posted anywhere, no `<base>`).
fn content_security_policy(page: &str) -> String {
    format!(
        "default-src 'none'; script-src {}; style-src {}; connect-src 'self'; img-src 'self'; \
         base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        inline_hash(page, "script"),
        inline_hash(page, "style"),
    )
}

/// `'sha256-…'` of the text inside the page's first `<tag>…</tag>`, as browsers hash it;
/// `'none'` if there is no such block (then nothing inline runs, which fails safe).
fn inline_hash(page: &str, tag: &str) -> String {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let Some(body) = page
        .split_once(&open)
        .and_then(|(_, rest)| rest.split_once(&close))
        .map(|(body, _)| body)
    else {
        return "'none'".into();
    };
    let digest = Sha256::digest(body.as_bytes());
    format!(
        "'sha256-{}'",
        base64::engine::general_purpose::STANDARD.encode(digest)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_allows_the_page_blocks_by_hash() {
        let policy = content_security_policy(PAGE);
        assert!(policy.contains("script-src 'sha256-"), "{policy}");
        assert!(policy.contains("style-src 'sha256-"), "{policy}");
        assert!(!policy.contains("unsafe"), "{policy}");
        // One block of each: a second one would not be covered by the hash.
        assert_eq!(PAGE.matches("<script").count(), 1);
        assert_eq!(PAGE.matches("<style").count(), 1);
    }

    #[test]
    fn hashes_are_of_the_block_text() {
        // base64(SHA-256("alert(1)")), the value a CSP hash source for that script carries.
        assert_eq!(
            inline_hash("<p><script>alert(1)</script>", "script"),
            "'sha256-bhHHL3z2vDgxUt0W3dWQOrprscmda2Y5pLsLg4GF+pI='"
        );
        assert_eq!(inline_hash("<p>", "script"), "'none'");
    }
}
