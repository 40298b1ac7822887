//! Reading a payload: the pruned parse that keeps only the fields a forge's `PAYLOAD` names,
//! and the typed field readers every forge's module uses, whose errors name the field by its
//! path (`push.changes[0].new.type`) and say what was found instead.
//!
//! The parse is tuned for intake: a delivery is mostly fields hoist never reads (file lists,
//! links, avatars), so they are checked as a full parse checks them but never allocated.

use std::borrow::Cow;

use serde_json::Value;

use super::ForgeError::Malformed;
use super::{ForgeError, RefKind};

/// What `before` holds when a ref is created and `after` when it is deleted.
pub(super) const ZERO_SHA: &str = "0000000000000000000000000000000000000000";

/// the rest is checked exactly as a full parse checks it (UTF-8, escapes, number range, nesting
/// depth) but never allocated. On any error the body is parsed again in full, so the message is
/// the one a full parse gives.
pub(super) fn parse(json: &[u8], shape: &'static Shape) -> Result<Value, ForgeError> {
    let mut de = serde_json::Deserializer::from_slice(json);
    let pruned = serde::de::DeserializeSeed::deserialize(shape, &mut de).and_then(|v| {
        de.end()?;
        Ok(v)
    });
    if let Ok(payload) = pruned {
        return Ok(payload);
    }
    serde_json::from_slice(json).map_err(|e| {
        Malformed(format!(
            "the body is not valid JSON ({e}); hoist expects the forge's push payload as \
             application/json, or form-encoded with a `payload` field"
        ))
    })
}

/// The repository name a payload carries at `object.field`, read before anything is verified,
/// with bounded work: one pass over the body that keeps nothing but that string (no tree, so a
/// 25 MB array costs no memory; nesting is bounded by serde_json's depth limit), and that stops
/// at once when the body is not an object. Duplicated keys: the last one counts, as in
/// [`parse`], so the name verified is the name the verified payload carries.
pub(super) fn scan_repository(
    json: &[u8],
    object: &'static str,
    field: &'static str,
) -> Result<Scanned, ForgeError> {
    let mut de = serde_json::Deserializer::from_slice(json);
    let scanned = serde::Deserializer::deserialize_any(&mut de, TopLevel { object, field })
        .and_then(|v| {
            de.end()?;
            Ok(v)
        });
    scanned.map_err(|e| match e.classify() {
        serde_json::error::Category::Data => Malformed(
            "the body is JSON but not an object; hoist expects the forge's push payload".into(),
        ),
        _ => Malformed(format!(
            "the body is not valid JSON ({e}); hoist expects the forge's push payload as \
             application/json, or form-encoded with a `payload` field"
        )),
    })
}

/// What [`scan_repository`] found at the repository's field.
#[derive(Debug, PartialEq)]
pub(super) enum Scanned {
    /// A string, as sent; the caller checks it is a repository name.
    Name(String),
    /// Absent or null (or its object is not an object).
    Missing,
    /// Another type, named as [`type_name`] names it.
    WrongType(&'static str),
}

/// The top-level object: finds `object`, skips everything else without keeping it.
struct TopLevel {
    object: &'static str,
    field: &'static str,
}

impl<'de> serde::de::Visitor<'de> for TopLevel {
    type Value = Scanned;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Scanned, A::Error> {
        let mut found = Scanned::Missing;
        while let Some(key) = map.next_key::<Key<'de>>()? {
            if key.0 == self.object {
                found = map.next_value_seed(Holder { field: self.field })?;
            } else {
                map.next_value::<Skip>()?;
            }
        }
        Ok(found)
    }
}

/// The object holding the name (`repository`, `project`); any other type holds none.
struct Holder {
    field: &'static str,
}

impl<'de> serde::de::DeserializeSeed<'de> for Holder {
    type Value = Scanned;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Scanned, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for Holder {
    type Value = Scanned;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any valid JSON value")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Scanned, A::Error> {
        let mut found = Scanned::Missing;
        while let Some(key) = map.next_key::<Key<'de>>()? {
            if key.0 == self.field {
                found = map.next_value::<Name>()?.0;
            } else {
                map.next_value::<Skip>()?;
            }
        }
        Ok(found)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, seq: A) -> Result<Scanned, A::Error> {
        serde::de::Visitor::visit_seq(Skip, seq).map(|_| Scanned::Missing)
    }

    fn visit_bool<E>(self, _: bool) -> Result<Scanned, E> {
        Ok(Scanned::Missing)
    }

    fn visit_i64<E>(self, _: i64) -> Result<Scanned, E> {
        Ok(Scanned::Missing)
    }

    fn visit_u64<E>(self, _: u64) -> Result<Scanned, E> {
        Ok(Scanned::Missing)
    }

    fn visit_f64<E>(self, _: f64) -> Result<Scanned, E> {
        Ok(Scanned::Missing)
    }

    fn visit_str<E>(self, _: &str) -> Result<Scanned, E> {
        Ok(Scanned::Missing)
    }

    fn visit_unit<E>(self) -> Result<Scanned, E> {
        Ok(Scanned::Missing)
    }

    fn visit_none<E>(self) -> Result<Scanned, E> {
        Ok(Scanned::Missing)
    }
}

/// The name's value: a string, null, or (kept as its type's name only) anything else.
struct Name(Scanned);

impl<'de> serde::Deserialize<'de> for Name {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Name;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("any valid JSON value")
            }
            fn visit_str<E>(self, s: &str) -> Result<Name, E> {
                Ok(Name(Scanned::Name(s.to_string())))
            }
            fn visit_unit<E>(self) -> Result<Name, E> {
                Ok(Name(Scanned::Missing))
            }
            fn visit_none<E>(self) -> Result<Name, E> {
                Ok(Name(Scanned::Missing))
            }
            fn visit_bool<E>(self, _: bool) -> Result<Name, E> {
                Ok(Name(Scanned::WrongType("a boolean")))
            }
            fn visit_i64<E>(self, _: i64) -> Result<Name, E> {
                Ok(Name(Scanned::WrongType("a number")))
            }
            fn visit_u64<E>(self, _: u64) -> Result<Name, E> {
                Ok(Name(Scanned::WrongType("a number")))
            }
            fn visit_f64<E>(self, _: f64) -> Result<Name, E> {
                Ok(Name(Scanned::WrongType("a number")))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, seq: A) -> Result<Name, A::Error> {
                serde::de::Visitor::visit_seq(Skip, seq)?;
                Ok(Name(Scanned::WrongType("an array")))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Name, A::Error> {
                serde::de::Visitor::visit_map(Skip, map)?;
                Ok(Name(Scanned::WrongType("an object")))
            }
        }
        d.deserialize_any(V)
    }
}

/// Which parts of a payload hoist reads. Where the JSON has another type than the shape
/// expects, the value is kept whole, so type errors name what was sent.
pub(super) enum Shape {
    /// Kept whole.
    Leaf,
    /// An object keeping only these fields.
    Object(&'static [(&'static str, Shape)]),
    /// An array of elements of this shape.
    Array(&'static Shape),
}

/// A commit author: git's `name`, Bitbucket's `raw` (`"Name <email>"`) and account.
pub(super) const AUTHOR: Shape = Shape::Object(&[
    ("raw", Shape::Leaf),
    ("name", Shape::Leaf),
    ("user", Shape::Object(&[("display_name", Shape::Leaf)])),
]);

/// A commit as GitHub, Gitea, Forgejo and GitLab list it; read by [`commit_text`].
pub(super) const COMMIT: Shape = Shape::Object(&[
    ("id", Shape::Leaf),
    ("message", Shape::Leaf),
    ("author", AUTHOR),
]);

impl<'de> serde::de::DeserializeSeed<'de> for &'static Shape {
    type Value = Value;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        match self {
            Shape::Leaf => serde::Deserialize::deserialize(d),
            _ => d.deserialize_any(self),
        }
    }
}

/// Builds the same `Value` as a full parse for anything but an object or array of the expected
/// kind, which it prunes.
impl<'de> serde::de::Visitor<'de> for &'static Shape {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any valid JSON value")
    }

    fn visit_bool<E>(self, b: bool) -> Result<Value, E> {
        Ok(Value::Bool(b))
    }

    fn visit_i64<E>(self, n: i64) -> Result<Value, E> {
        Ok(Value::Number(n.into()))
    }

    fn visit_u64<E>(self, n: u64) -> Result<Value, E> {
        Ok(Value::Number(n.into()))
    }

    fn visit_f64<E>(self, n: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(n).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, s: &str) -> Result<Value, E> {
        Ok(Value::String(s.to_string()))
    }

    fn visit_string<E>(self, s: String) -> Result<Value, E> {
        Ok(Value::String(s))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        match self {
            Shape::Array(item) => {
                while let Some(v) = seq.next_element_seed(*item)? {
                    items.push(v);
                }
            }
            _ => {
                while let Some(v) = seq.next_element()? {
                    items.push(v);
                }
            }
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = serde_json::Map::new();
        let Shape::Object(fields) = self else {
            while let Some(key) = map.next_key::<String>()? {
                out.insert(key, map.next_value()?);
            }
            return Ok(Value::Object(out));
        };
        while let Some(key) = map.next_key::<Key<'de>>()? {
            match fields.iter().find(|(name, _)| *name == &*key.0) {
                Some((_, shape)) => {
                    let value = map.next_value_seed(shape)?;
                    out.insert(key.0.into_owned(), value);
                }
                None => {
                    map.next_value::<Skip>()?;
                }
            }
        }
        Ok(Value::Object(out))
    }
}

/// An object key, borrowed from the body when it has no escapes.
struct Key<'de>(Cow<'de, str>);

impl<'de> serde::Deserialize<'de> for Key<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string key")
            }
            fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(s)))
            }
            fn visit_str<E>(self, s: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(s.to_string())))
            }
            fn visit_string<E>(self, s: String) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(s)))
            }
        }
        d.deserialize_str(V)
    }
}

/// A value hoist doesn't read: parsed and checked like any other (unlike `IgnoredAny`, which
/// lets invalid UTF-8, lone surrogates and out-of-range numbers through), but never stored.
struct Skip;

impl<'de> serde::Deserialize<'de> for Skip {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(Skip)
    }
}

impl<'de> serde::de::Visitor<'de> for Skip {
    type Value = Skip;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any valid JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<Skip, E> {
        Ok(Skip)
    }

    fn visit_i64<E>(self, _: i64) -> Result<Skip, E> {
        Ok(Skip)
    }

    fn visit_u64<E>(self, _: u64) -> Result<Skip, E> {
        Ok(Skip)
    }

    fn visit_f64<E>(self, _: f64) -> Result<Skip, E> {
        Ok(Skip)
    }

    fn visit_str<E>(self, _: &str) -> Result<Skip, E> {
        Ok(Skip)
    }

    fn visit_unit<E>(self) -> Result<Skip, E> {
        Ok(Skip)
    }

    fn visit_none<E>(self) -> Result<Skip, E> {
        Ok(Skip)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Skip, A::Error> {
        while seq.next_element::<Skip>()?.is_some() {}
        Ok(Skip)
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Skip, A::Error> {
        while map.next_entry::<Skip, Skip>()?.is_some() {}
        Ok(Skip)
    }
}

/// The head commit's message and author, for forges that only list `commits` (GitLab, older
/// Gitea). None when the head is not listed (a tag on an old commit, a capped list).
pub(super) fn head_in_commits(
    p: &Value,
    after: &str,
) -> Result<(Option<String>, Option<String>), ForgeError> {
    let commits = match p.get("commits") {
        None | Some(Value::Null) => return Ok((None, None)),
        Some(Value::Array(commits)) => commits,
        Some(other) => {
            return Err(Malformed(format!(
                "field `commits` should be an array, found {}",
                type_name(other)
            )));
        }
    };
    for (i, commit) in commits.iter().enumerate() {
        let id = opt_str(commit, &format!("commits[{i}]."), &["id"])?;
        if id.is_some_and(|id| id.eq_ignore_ascii_case(after)) {
            return commit_text(commit, &format!("commits[{i}]"));
        }
    }
    Ok((None, None))
}

/// `message` and `author.name` of a commit object; `at` names it in errors. For Bitbucket the
/// author is under `author.raw`.
pub(super) fn commit_text(
    commit: &Value,
    at: &str,
) -> Result<(Option<String>, Option<String>), ForgeError> {
    if !commit.is_object() {
        return Err(Malformed(format!(
            "field `{at}` should be an object, found {}",
            type_name(commit)
        )));
    }
    let at = format!("{at}.");
    let message = opt_str(commit, &at, &["message"])?;
    let author = match commit.get("author").and_then(|a| a.get("raw")) {
        Some(_) => opt_str(commit, &at, &["author", "raw"])?,
        None => opt_str(commit, &at, &["author", "name"])?,
    };
    let owned = |s: Option<&str>| s.filter(|s| !s.is_empty()).map(str::to_string);
    Ok((owned(message), owned(author)))
}

fn field<'v>(v: &'v Value, path: &[&str]) -> Option<&'v Value> {
    path.iter().try_fold(v, |v, key| v.get(key))
}

/// How messages name the type of a value that has the wrong one.
pub(super) fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A string field that may be absent or null. `at` prefixes the path in messages.
pub(super) fn opt_str<'v>(
    v: &'v Value,
    at: &str,
    path: &[&str],
) -> Result<Option<&'v str>, ForgeError> {
    match field(v, path) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(Malformed(format!(
            "field `{at}{}` should be a string, found {}",
            path.join("."),
            type_name(other)
        ))),
    }
}

/// A string field that must be there.
pub(super) fn req_str<'v>(v: &'v Value, at: &str, path: &[&str]) -> Result<&'v str, ForgeError> {
    opt_str(v, at, path)?
        .ok_or_else(|| Malformed(format!("field `{at}{}` is missing", path.join("."))))
}

/// A boolean field that may be absent or null.
pub(super) fn opt_bool(v: &Value, at: &str, path: &[&str]) -> Result<Option<bool>, ForgeError> {
    match field(v, path) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(other) => Err(Malformed(format!(
            "field `{at}{}` should be a boolean, found {}",
            path.join("."),
            type_name(other)
        ))),
    }
}

/// The first non-empty string among several candidate fields.
pub(super) fn first_str(v: &Value, paths: &[&[&str]]) -> Result<Option<String>, ForgeError> {
    for path in paths {
        if let Some(s) = opt_str(v, "", path)?.filter(|s| !s.is_empty()) {
            return Ok(Some(s.to_string()));
        }
    }
    Ok(None)
}

/// A 40-hex commit id, lowercased so the same commit compares equal across forges.
pub(super) fn sha(v: &Value, at: &str, path: &[&str]) -> Result<String, ForgeError> {
    let s = req_str(v, at, path)?;
    if s.len() == 40 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(s.to_ascii_lowercase())
    } else {
        Err(Malformed(format!(
            "field `{at}{}` should be a 40-hex commit id, found {}",
            path.join("."),
            shown(s)
        )))
    }
}

/// A full ref, split into kind and short name. The ref later reaches `git fetch`, so beyond the
/// prefix it must be a name git itself would accept (the rules of git-check-ref-format).
/// With an empty `path`, `v` is the ref itself and `at` names it.
pub(super) fn git_ref(
    v: &Value,
    at: &str,
    path: &[&str],
) -> Result<(String, RefKind, String), ForgeError> {
    let label = if path.is_empty() {
        at.to_string()
    } else {
        format!("{at}{}", path.join("."))
    };
    let r = match field(v, path) {
        Some(Value::String(s)) => s.as_str(),
        Some(Value::Null) | None => return Err(Malformed(format!("field `{label}` is missing"))),
        Some(other) => {
            return Err(Malformed(format!(
                "field `{label}` should be a string, found {}",
                type_name(other)
            )));
        }
    };
    let (kind, name) = if let Some(name) = r.strip_prefix("refs/heads/") {
        (RefKind::Branch, name)
    } else if let Some(name) = r.strip_prefix("refs/tags/") {
        (RefKind::Tag, name)
    } else {
        return Err(Malformed(format!(
            "field `{label}` should be a full ref starting with refs/heads/ or refs/tags/, found {}",
            shown(r)
        )));
    };
    if !valid_ref_name(name) {
        return Err(Malformed(format!(
            "field `{label}` is not a valid git ref name: {}",
            shown(r)
        )));
    }
    Ok((r.to_string(), kind, name.to_string()))
}

/// What git-check-ref-format accepts after the `refs/heads/` or `refs/tags/` prefix.
fn valid_ref_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 1024
        && !name
            .chars()
            .any(|c| c.is_control() || matches!(c, ' ' | '~' | '^' | ':' | '?' | '*' | '[' | '\\'))
        && !name.contains("..")
        && !name.contains("@{")
        && name != "@"
        && !name.ends_with('.')
        && !name.ends_with(".lock")
        && name
            .split('/')
            .all(|part| !part.is_empty() && !part.starts_with('.'))
}

/// A value from the payload quoted for a message, cut short so a huge field stays readable.
pub(super) fn shown(s: &str) -> String {
    const MAX: usize = 80;
    if s.chars().count() <= MAX {
        format!("{s:?}")
    } else {
        let cut: String = s.chars().take(MAX).collect();
        format!("{cut:?}…")
    }
}

#[cfg(test)]
mod tests {
    //! Payloads of the wrong shape: each field hoist reads, wrong in each way, answers with an
    //! error naming it, and no body, however broken, panics.

    use super::super::Forge;
    use super::super::testkit::{Delivery, FIXTURES, check, expected, fixture};
    use super::*;

    /// Edits one field of a fixture (by JSON pointer) and signs the result.
    fn edited(forge: Forge, file: &str, event: &str, pointer: &str, value: Value) -> Delivery {
        let mut json: Value = serde_json::from_slice(&fixture(file)).expect("fixture JSON");
        *json.pointer_mut(pointer).expect("pointer into fixture") = value;
        Delivery::new(forge, event, &serde_json::to_vec(&json).expect("JSON"))
    }

    #[test]
    fn shapes() {
        let gh = |pointer: &str, value: Value| {
            edited(
                Forge::Github,
                "github/go-scm-push.json",
                "push",
                pointer,
                value,
            )
        };
        check(
            gh("/after", "xyz".into()),
            "400 field `after` should be a 40-hex commit id",
        );
        check(gh("/before", Value::Null), "400 field `before` is missing");
        check(
            gh("/ref", "master".into()),
            "400 field `ref` should be a full ref",
        );
        check(
            gh("/ref", 7.into()),
            "400 field `ref` should be a string, found a number",
        );
        check(
            gh("/ref", "refs/heads/".into()),
            "400 field `ref` is not a valid git ref name",
        );
        check(
            gh("/ref", "refs/heads/a..b".into()),
            "400 not a valid git ref name",
        );
        check(
            gh("/ref", "refs/heads/x\u{1}".into()),
            "400 not a valid git ref name",
        );
        check(
            gh("/deleted", "yes".into()),
            "400 field `deleted` should be a boolean",
        );
        check(
            gh("/repository", Value::Null),
            "400 field `repository.full_name` is missing",
        );
        check(
            gh("/repository/full_name", "".into()),
            "400 is not a repository name",
        );
        check(
            gh("/head_commit/message", 1.into()),
            "400 field `head_commit.message` should be a string",
        );
        check(
            gh("/head_commit", "x".into()),
            "400 field `head_commit` should be an object, found a string",
        );
        check(
            gh("/commits", Value::Null),
            expected("github/go-scm-push.json"),
        );
        // Upper-case ids are lowercased; forced comes through.
        check(
            gh("/after", "199EDDF46DF50DE8D02E99BF1C5FDB4101338224".into()),
            expected("github/go-scm-push.json"),
        );
        check(
            gh("/forced", true.into()),
            &expected("github/go-scm-push.json").replace("forced=false", "forced=true"),
        );

        let gl = |pointer: &str, value: Value| {
            edited(
                Forge::Gitlab,
                "gitlab/go-scm-push.json",
                "Push Hook",
                pointer,
                value,
            )
        };
        check(
            gl("/commits", "none".into()),
            "400 field `commits` should be an array",
        );
        check(
            gl("/commits/0/id", 5.into()),
            "400 field `commits[0].id` should be a string",
        );
        check(
            gl("/checkout_sha", Value::Null),
            "ignored Some(\"gitlab-org/hello-world\"): branch deletion",
        );

        let bb = |pointer: &str, value: Value| {
            edited(
                Forge::Bitbucket,
                "bitbucket/go-scm-push.json",
                "repo:push",
                pointer,
                value,
            )
        };
        check(
            bb("/push/changes/0/new/type", "named_branch".into()),
            "400 field `push.changes[0].new.type`",
        );
        check(
            bb("/push/changes/0/new/name", "a b".into()),
            "400 field `push.changes[0].new.name` is not a valid",
        );
        check(
            bb("/push/changes/0/new/target/hash", "1".into()),
            "400 field `push.changes[0].new.target.hash`",
        );
        check(
            bb("/push/changes/0", 1.into()),
            "400 field `push.changes[0]` should be an object",
        );
        check(
            bb("/push/changes", Value::Null),
            "400 field `push.changes` is missing",
        );
        // Two changes, one a deletion: only the update is a push.
        let mut json: Value =
            serde_json::from_slice(&fixture("bitbucket/go-scm-push.json")).expect("JSON");
        let deletion: Value =
            serde_json::from_slice(&fixture("bitbucket/go-scm-push-branch-delete.json"))
                .expect("JSON");
        if let (Some(Value::Array(changes)), Some(deleted)) = (
            json.pointer_mut("/push/changes"),
            deletion.pointer("/push/changes/0"),
        ) {
            changes.insert(0, deleted.clone());
        }
        let d = Delivery::new(
            Forge::Bitbucket,
            "repo:push",
            &serde_json::to_vec(&json).expect("JSON"),
        );
        check(d, expected("bitbucket/go-scm-push.json"));
    }

    #[test]
    fn garbage_never_panics() {
        let mut bodies: Vec<Vec<u8>> = vec![
            b"".to_vec(),
            b"{".to_vec(),
            b"null".to_vec(),
            b"[1,2,3]".to_vec(),
            b"\"just a string\"".to_vec(),
            b"payload=%7B".to_vec(),
            "[".repeat(100_000).into_bytes(),
            "{\"a\":".repeat(100_000).into_bytes(),
        ];
        let full = fixture("bitbucket/go-scm-push.json");
        bodies.extend([1, 100, full.len() / 2, full.len() - 1].map(|n| full[..n].to_vec()));
        // Random bytes from a fixed xorshift seed, so a failure reproduces.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for len in [1, 7, 64, 1000, 65_536] {
            bodies.push(
                (0..len)
                    .map(|_| {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        x as u8
                    })
                    .collect(),
            );
        }
        for forge in Forge::ALL {
            for body in &bodies {
                for content_type in ["application/json", "application/x-www-form-urlencoded"] {
                    // Correctly signed, so decoding is what fails.
                    let d = Delivery::new(forge, forge.push_event(), body)
                        .set("Content-Type", content_type);
                    assert!(
                        d.receive().is_err(),
                        "{forge}: accepted {:?}",
                        String::from_utf8_lossy(&body[..body.len().min(40)])
                    );
                }
            }
        }
    }

    /// Every field hoist reads, in every fixture, replaced by a value of each JSON type: an
    /// answer or an error, never a panic. The fixtures are first cut down to what hoist reads,
    /// which keeps this test at a second in a debug build.
    #[test]
    fn wrong_shapes_never_panic() {
        /// Drops subtrees hoist never looks into; `repository` and `project` keep their name.
        fn prune(v: &mut Value, top: bool) {
            const READ: &[&str] = &[
                "ref",
                "ref_type",
                "before",
                "after",
                "created",
                "deleted",
                "forced",
                "head_commit",
                "commits",
                "pusher",
                "checkout_sha",
                "user_username",
                "user_name",
                "push",
                "actor",
                "repository",
                "project",
            ];
            const UNREAD: &[&str] = &[
                "links",
                "added",
                "removed",
                "modified",
                "parents",
                "committer",
                "summary",
            ];
            match v {
                Value::Object(map) => {
                    map.retain(|k, _| {
                        if top {
                            READ.contains(&k.as_str())
                        } else {
                            !UNREAD.contains(&k.as_str())
                        }
                    });
                    for (k, v) in map.iter_mut() {
                        if top && (k == "repository" || k == "project") {
                            if let Value::Object(repo) = v {
                                repo.retain(|k, _| k == "full_name" || k == "path_with_namespace");
                            }
                        } else {
                            prune(v, false);
                        }
                    }
                }
                Value::Array(items) => items.iter_mut().for_each(|v| prune(v, false)),
                _ => {}
            }
        }
        fn pointers(v: &Value, at: String, out: &mut Vec<String>) {
            let mut visit = |key: String, v: &Value| {
                let p = format!("{at}/{key}");
                out.push(p.clone());
                pointers(v, p, out);
            };
            match v {
                Value::Object(map) => map
                    .iter()
                    .for_each(|(k, v)| visit(k.replace('~', "~0").replace('/', "~1"), v)),
                Value::Array(items) => items
                    .iter()
                    .enumerate()
                    .for_each(|(i, v)| visit(i.to_string(), v)),
                _ => {}
            }
        }
        let replacements = [
            Value::Null,
            Value::from(-1),
            Value::from("refs/heads/"),
            Value::from(vec![Value::Null]),
            serde_json::json!({}),
        ];
        for &(forge, file, event, _) in FIXTURES {
            let mut json: Value = serde_json::from_slice(&fixture(file)).expect("fixture JSON");
            prune(&mut json, true);
            let mut all = Vec::new();
            pointers(&json, String::new(), &mut all);
            for pointer in &all {
                for value in &replacements {
                    let mut json = json.clone();
                    if let Some(field) = json.pointer_mut(pointer) {
                        *field = value.clone();
                    }
                    let body = serde_json::to_vec(&json).expect("JSON");
                    let _ = Delivery::minimal(forge, event, &body).receive();
                }
            }
        }
    }

    /// The scan before the signature reads the repository name and nothing else: the last of
    /// duplicated keys (as the verified parse does), any wrong type by name, a body that is not
    /// an object refused at its first byte, and nesting bounded by serde_json's depth limit.
    #[test]
    fn the_scan_reads_only_the_name() {
        use super::{Scanned, scan_repository};
        let scan = |json: &str| scan_repository(json.as_bytes(), "repository", "full_name");
        assert_eq!(
            scan(r#"{"a":[[1,{"b":"c"}]],"repository":{"x":[1],"full_name":"acme/web"}}"#),
            Ok(Scanned::Name("acme/web".into()))
        );
        assert_eq!(
            scan(r#"{"repository":{"full_name":"a/one"},"repository":{"full_name":"b/two"}}"#),
            Ok(Scanned::Name("b/two".into()))
        );
        assert_eq!(
            scan(r#"{"repository":{"full_name":[1,2]}}"#),
            Ok(Scanned::WrongType("an array"))
        );
        assert_eq!(scan(r#"{"repository":"acme/web"}"#), Ok(Scanned::Missing));
        assert_eq!(
            scan(r#"{"repository":{"full_name":null}}"#),
            Ok(Scanned::Missing)
        );
        // A top-level array is refused before its second byte is looked at: the rest is not JSON.
        assert_eq!(
            scan("[1, this is not json"),
            Err(Malformed(
                "the body is JSON but not an object; hoist expects the forge's push payload".into()
            ))
        );
        let deep = format!(r#"{{"a":{}}}"#, "[".repeat(100_000));
        let err = scan(&deep).unwrap_err().to_string();
        assert!(err.contains("recursion limit"), "{err}");
        let err = scan(r#"{"repository":{"full_name":"acme/web"}} trailing"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("not valid JSON"), "{err}");
    }
}
