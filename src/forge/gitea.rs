//! Gitea and Forgejo. Forgejo is a fork of Gitea and sends the same payloads under its own
//! header names (`X-Forgejo-*`, decided by the route in `mod.rs`), and both send GitHub's push
//! payload, which [`super::github::push`] reads: without `created`, `deleted` and `forced`
//! (derived from the zero SHAs instead), and in older Gitea without `head_commit`.
//!
//! What they add is a `create` and a `delete` event beside the `push` for the same ref; hoist
//! answers them and builds nothing, since the `push` carries everything.

use serde_json::Value;

/// "tag creation" / "branch deletion" for Gitea's create and delete events.
pub(super) fn create_delete_what(payload: &Value, event: &str) -> String {
    let action = if event == "create" {
        "creation"
    } else {
        "deletion"
    };
    match payload.get("ref_type").and_then(Value::as_str) {
        Some(kind @ ("branch" | "tag")) => format!("{kind} {action}"),
        _ => format!("event '{event}'"),
    }
}
