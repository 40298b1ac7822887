//! GitLab's push and tag push payloads (one shape; the event header tells them apart, and
//! hoist reads the kind from the ref instead).
//!
//! Field by field, with sources: `tests/fixtures/webhooks/SOURCES.md`.

use serde_json::Value;

use super::payload::{COMMIT, Shape, ZERO_SHA, first_str, git_ref, head_in_commits, opt_str, sha};
use super::{ForgeError, Update};

/// Every field read from a GitLab delivery.
pub(super) const PAYLOAD: Shape = Shape::Object(&[
    ("ref", Shape::Leaf),
    ("before", Shape::Leaf),
    ("after", Shape::Leaf),
    ("checkout_sha", Shape::Leaf),
    ("user_username", Shape::Leaf),
    ("user_name", Shape::Leaf),
    (
        "project",
        Shape::Object(&[("path_with_namespace", Shape::Leaf)]),
    ),
    ("commits", Shape::Array(&COMMIT)),
]);

/// GitLab: `checkout_sha` is null when a ref is removed; there is no `forced` field.
pub(super) fn push(p: &Value) -> Result<Update, ForgeError> {
    let (git_ref, kind, name) = git_ref(p, "", &["ref"])?;
    let before = sha(p, "", &["before"])?;
    let after = sha(p, "", &["after"])?;
    let deleted = opt_str(p, "", &["checkout_sha"])?.is_none() || after == ZERO_SHA;
    let (message, author) = head_in_commits(p, &after)?;
    let pusher = first_str(p, &[&["user_username"], &["user_name"]])?;
    Ok(Update {
        git_ref,
        kind,
        name,
        created: before == ZERO_SHA,
        before,
        after,
        deleted,
        forced: false,
        message,
        author,
        pusher,
    })
}
