//! The operator's page at `GET /`: one static HTML file (`web/index.html`) with its CSS and
//! JavaScript inline, no external assets and no build step.
//!
//! Its hash names the page shown: `#/` (recent runs, every app at a glance), `#/runs/ID`,
//! `#/deployments/ID`, `#/apps/APP`; the browser's history moves between them.
//!
//! The page carries no data and needs no token to load. In the browser it asks for an API
//! token once, keeps it in the tab's `sessionStorage` (never in a URL), and reads everything
//! from the JSON API with `Authorization: Bearer`: runs with their steps and logs, apps with
//! releases, hosts and deployments; it approves a step that waits for approval (who approved it
//! and when shows on the step) and rolls back. Every value reaches the DOM as text, never as
//! markup.

use axum::http::{HeaderName, header};
use axum::response::Html;

/// The page, compiled into the binary.
pub const PAGE: &str = include_str!("web/index.html");

/// Only the page's own inline style and script run; `fetch` reaches only this origin
/// (`connect-src` falls back to `default-src 'self'`); a form can never be submitted anywhere
/// (so a token typed into it cannot end up in a URL), and no other site may frame the page.
pub const CSP: &str = "default-src 'self'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; \
                       base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// `GET /`: the page, with its Content-Security-Policy.
pub async fn page() -> ([(HeaderName, &'static str); 4], Html<&'static str>) {
    (
        [
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Html(PAGE),
    )
}
