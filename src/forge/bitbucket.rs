//! Bitbucket Cloud's `repo:push` payload: one delivery lists several ref changes, each with the
//! ref's `old` and `new` state; `new: null` is a deletion.
//!
//! Field by field, with sources: `tests/fixtures/webhooks/SOURCES.md`.

use serde_json::Value;

use super::payload::{
    AUTHOR, Shape, ZERO_SHA, commit_text, first_str, git_ref, opt_bool, opt_str, req_str, sha,
    shown, type_name,
};
use super::{Forge, ForgeError, ForgeError::Malformed, Received, RefKind, Update, ignored};

/// One entry of `push.changes`.
const CHANGE: Shape = Shape::Object(&[
    (
        "new",
        Shape::Object(&[
            ("type", Shape::Leaf),
            ("name", Shape::Leaf),
            (
                "target",
                Shape::Object(&[
                    ("hash", Shape::Leaf),
                    ("message", Shape::Leaf),
                    ("author", AUTHOR),
                ]),
            ),
        ]),
    ),
    (
        "old",
        Shape::Object(&[
            ("type", Shape::Leaf),
            ("target", Shape::Object(&[("hash", Shape::Leaf)])),
        ]),
    ),
    ("created", Shape::Leaf),
    ("forced", Shape::Leaf),
]);

/// Every field read from a Bitbucket delivery.
pub(super) const PAYLOAD: Shape = Shape::Object(&[
    ("repository", Shape::Object(&[("full_name", Shape::Leaf)])),
    (
        "actor",
        Shape::Object(&[
            ("username", Shape::Leaf),
            ("nickname", Shape::Leaf),
            ("display_name", Shape::Leaf),
        ]),
    ),
    ("push", Shape::Object(&[("changes", Shape::Array(&CHANGE))])),
]);

/// What one entry of `push.changes` did to its ref.
enum Change {
    Updated(Update),
    /// Bitbucket sends no `new` state for a deleted ref, only the `old` one's type.
    Deleted(RefKind),
}

/// All ref updates of one delivery as one push; deletions only are answered and ignored.
pub(super) fn push(p: &Value, delivery_id: &str, repo: &str) -> Result<Received, ForgeError> {
    let changes = changes(p)?;
    // Bitbucket removed `username` from user objects for privacy; newer payloads have `nickname`.
    let pusher = first_str(
        p,
        &[
            &["actor", "username"],
            &["actor", "nickname"],
            &["actor", "display_name"],
        ],
    )?;
    let mut events = Vec::new();
    let mut deleted = Vec::new();
    for (i, change) in changes.iter().enumerate() {
        match read_change(change, i, &pusher)? {
            Change::Updated(update) => {
                events.push(update.into_event(Forge::Bitbucket, delivery_id, repo));
            }
            Change::Deleted(kind) => deleted.push(kind),
        }
    }
    if !events.is_empty() {
        return Ok(Received::Push(events));
    }
    let what = match deleted.as_slice() {
        [] => "push without changes".to_string(),
        [one] => format!("{} deletion", one.noun()),
        _ => "ref deletions".to_string(),
    };
    Ok(ignored(repo, what))
}

/// `push.changes`, which must be an array.
fn changes(p: &Value) -> Result<&[Value], ForgeError> {
    match p.get("push").and_then(|push| push.get("changes")) {
        Some(Value::Array(changes)) => Ok(changes),
        None | Some(Value::Null) => Err(Malformed("field `push.changes` is missing".into())),
        Some(other) => Err(Malformed(format!(
            "field `push.changes` should be an array, found {}",
            type_name(other)
        ))),
    }
}

/// Entry `i` of `push.changes`, pushed by `pusher`.
fn read_change(change: &Value, i: usize, pusher: &Option<String>) -> Result<Change, ForgeError> {
    let at = format!("push.changes[{i}].");
    if !change.is_object() {
        return Err(Malformed(format!(
            "field `push.changes[{i}]` should be an object, found {}",
            type_name(change)
        )));
    }
    let new = match change.get("new") {
        None | Some(Value::Null) => {
            let kind = opt_str(change, &at, &["old", "type"])?.unwrap_or("ref");
            let kind = if kind == "tag" {
                RefKind::Tag
            } else {
                RefKind::Branch
            };
            return Ok(Change::Deleted(kind));
        }
        Some(new) => new,
    };
    let prefix = match req_str(change, &at, &["new", "type"])? {
        "branch" => "refs/heads/",
        "tag" => "refs/tags/",
        other => {
            return Err(Malformed(format!(
                "field `{at}new.type` should be \"branch\" or \"tag\", found {}",
                shown(other)
            )));
        }
    };
    let ref_name = req_str(change, &at, &["new", "name"])?;
    let built = Value::String(format!("{prefix}{ref_name}"));
    let (git_ref, kind, name) = git_ref(&built, &format!("{at}new.name"), &[])?;
    let after = sha(change, &at, &["new", "target", "hash"])?;
    let before = match change.get("old").filter(|o| !o.is_null()) {
        Some(_) => sha(change, &at, &["old", "target", "hash"])?,
        None => ZERO_SHA.to_string(),
    };
    let created = opt_bool(change, &at, &["created"])?.unwrap_or(before == ZERO_SHA);
    let forced = opt_bool(change, &at, &["forced"])?.unwrap_or(false);
    let (message, author) = head_text(new, &at)?;
    Ok(Change::Updated(Update {
        git_ref,
        kind,
        name,
        before,
        after,
        created,
        deleted: false,
        forced,
        message,
        author,
        pusher: pusher.clone(),
    }))
}

/// The message and author name of the commit a change's `new` state points at; `at` is the
/// change's path.
fn head_text(new: &Value, at: &str) -> Result<(Option<String>, Option<String>), ForgeError> {
    let target_at = format!("{at}new.target");
    let (message, mut author) = commit_text(new.get("target").unwrap_or(&Value::Null), &target_at)?;
    // Bitbucket's author is {raw: "Name <email>", user: {...}}: take the git name from `raw`
    // like the other forges' author.name, the account's display name only without it.
    if let Some(raw) = &author {
        let name = raw.split(" <").next().unwrap_or(raw).trim();
        author = (!name.is_empty()).then(|| name.to_string());
    }
    if author.is_none() {
        author = opt_str(
            new,
            &format!("{at}new."),
            &["target", "author", "user", "display_name"],
        )?
        .filter(|s| !s.is_empty())
        .map(str::to_string);
    }
    Ok((message, author))
}
