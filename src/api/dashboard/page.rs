//! `GET /dashboard`: the page, assembled once from the files beside this one, with a
//! Content-Security-Policy that allows exactly its inline style and script (by hash).

use std::sync::LazyLock;

use axum::http::{HeaderValue, header};
use axum::response::IntoResponse;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use sha2::{Digest, Sha256};

const HTML: &str = include_str!("page.html");
const CSS: &str = include_str!("page.css");
const JS: &str = include_str!("page.js");

/// The page with its style and script inlined, and the CSP that names their hashes.
struct Page {
    html: String,
    csp: HeaderValue,
}

/// Built on first request: hashing at run time keeps the CSP right whenever the files change,
/// with no build step.
static PAGE: LazyLock<Page> = LazyLock::new(|| {
    let html = HTML.replacen("/*STYLE*/", CSS, 1).replacen("/*SCRIPT*/", JS, 1);
    let hash = |s: &str| format!("'sha256-{}'", STANDARD.encode(Sha256::digest(s.as_bytes())));
    // Nothing loads from elsewhere: no CDN (the page must work on a closed network) and no
    // inline code but ours, so an escaping bug in the page still can't run injected script.
    let csp = format!(
        "default-src 'none'; script-src {}; style-src {}; connect-src 'self'; img-src 'self'; \
         base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        hash(JS),
        hash(CSS),
    );
    Page { html, csp: HeaderValue::from_str(&csp).expect("a CSP is a valid header") }
});

/// Serves the page. It needs no token: it holds no data, and asks for one to call the API.
pub(super) async fn page() -> impl IntoResponse {
    let page = &*PAGE;
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8")),
            (header::CONTENT_SECURITY_POLICY, page.csp.clone()),
            (header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")),
            (header::REFERRER_POLICY, HeaderValue::from_static("no-referrer")),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        page.html.clone(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_inlines_its_style_and_script_once() {
        let page = &*PAGE;
        assert!(!page.html.contains("/*STYLE*/") && !page.html.contains("/*SCRIPT*/"));
        assert_eq!(page.html.matches("<script>").count(), 1);
        assert_eq!(page.html.matches("<style>").count(), 1);
        assert!(page.html.contains(&format!("<script>{JS}</script>")));
        assert!(page.html.contains(&format!("<style>{CSS}</style>")));
    }
}
