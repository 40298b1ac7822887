//! GitHub's push payload, which Gitea and Forgejo send in the same shape (see `gitea.rs` for
//! what they leave out and what they add).
//!
//! Field by field, with sources: `tests/fixtures/webhooks/SOURCES.md`.

use serde_json::Value;

use super::payload::{
    COMMIT, Shape, ZERO_SHA, commit_text, first_str, git_ref, head_in_commits, opt_bool, sha,
};
use super::{ForgeError, Update};

/// Every field read from a GitHub, Gitea or Forgejo delivery.
pub(super) const PAYLOAD: Shape = Shape::Object(&[
    ("ref", Shape::Leaf),
    // Gitea's and Forgejo's create and delete events.
    ("ref_type", Shape::Leaf),
    ("before", Shape::Leaf),
    ("after", Shape::Leaf),
    ("created", Shape::Leaf),
    ("deleted", Shape::Leaf),
    ("forced", Shape::Leaf),
    ("repository", Shape::Object(&[("full_name", Shape::Leaf)])),
    ("head_commit", COMMIT),
    ("commits", Shape::Array(&COMMIT)),
    (
        "pusher",
        Shape::Object(&[
            ("login", Shape::Leaf),
            ("username", Shape::Leaf),
            ("name", Shape::Leaf),
        ]),
    ),
]);

/// GitHub, Gitea and Forgejo share the push payload shape. Gitea has no created/deleted/forced
/// fields (derived from the zero SHAs instead) and older Gitea no `head_commit` (found in
/// `commits` by id instead).
pub(super) fn push(p: &Value) -> Result<Update, ForgeError> {
    let (git_ref, kind, name) = git_ref(p, "", &["ref"])?;
    let before = sha(p, "", &["before"])?;
    let after = sha(p, "", &["after"])?;
    let deleted = opt_bool(p, "", &["deleted"])?.unwrap_or(false) || after == ZERO_SHA;
    let created = opt_bool(p, "", &["created"])?.unwrap_or(before == ZERO_SHA);
    let forced = opt_bool(p, "", &["forced"])?.unwrap_or(false);
    let (message, author) = match p.get("head_commit").filter(|h| !h.is_null()) {
        Some(head) => commit_text(head, "head_commit")?,
        None => head_in_commits(p, &after)?,
    };
    // GitHub's pusher has only `name` (the login); Gitea's has `login`, `username`, `full_name`.
    let pusher = first_str(
        p,
        &[
            &["pusher", "login"],
            &["pusher", "username"],
            &["pusher", "name"],
        ],
    )?;
    Ok(Update {
        git_ref,
        kind,
        name,
        before,
        after,
        created,
        deleted,
        forced,
        message,
        author,
        pusher,
    })
}
