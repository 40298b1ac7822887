//! Forge webhooks: verify a push delivery and normalize it into [`PushEvent`]s.
//!
//! One route per forge (`/hooks/github`, `/hooks/gitea`, ...), and the route alone decides how a
//! delivery is read: Gitea and Forgejo also send GitHub's headers, and Bitbucket reuses GitHub's
//! `X-Hub-Signature` name for a different hash, so guessing the forge from headers would let one
//! forge's header stand in for another's signature.
//!
//! [`receive`] works in a fixed order: decode the body, read the event header, find the
//! repository, look up its secret, verify, normalize. The repository comes before verification
//! because secrets are per repository; nothing from the body is trusted before the signature
//! (or GitLab's token) matched, except the name used to pick the secret.
//!
//! The per-forge header names, signature schemes and payload quirks are documented, with
//! sources, in `tests/fixtures/webhooks/SOURCES.md`; the tests below run every fixture there.
//!
//! Invariant: this module does no I/O. It never stores, fetches or logs; the HTTP handler does.

use std::borrow::Cow;

use axum::http::HeaderMap;
use hmac::{Hmac, KeyInit, Mac};
use serde_json::Value;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

type HmacSha256 = Hmac<Sha256>;

/// What `before` holds when a ref is created and `after` when it is deleted.
const ZERO_SHA: &str = "0000000000000000000000000000000000000000";

/// Delivery ids are stored and shown; a forge's own ids are UUIDs (36 chars), so this only stops
/// abuse.
const MAX_DELIVERY_ID: usize = 200;

/// Event names are echoed in the 200 answer; real ones are short ("Tag Push Hook").
const MAX_EVENT_NAME: usize = 100;

/// Repository names are echoed in the 404 answer and used as config keys.
const MAX_REPO_NAME: usize = 512;

/// A git forge hoist accepts webhooks from; each has its own route `/hooks/<name>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Forge {
    Github,
    Gitea,
    Forgejo,
    Gitlab,
    Bitbucket,
}

impl Forge {
    /// Every forge, in the order the docs list them (the router mounts one route per entry).
    pub const ALL: [Forge; 5] = [
        Forge::Github,
        Forge::Gitea,
        Forge::Forgejo,
        Forge::Gitlab,
        Forge::Bitbucket,
    ];

    /// The lowercase name used in routes, config and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Forge::Github => "github",
            Forge::Gitea => "gitea",
            Forge::Forgejo => "forgejo",
            Forge::Gitlab => "gitlab",
            Forge::Bitbucket => "bitbucket",
        }
    }

    /// Parses a route segment or config value. Exact lowercase only, like the serde form, so a
    /// name accepted here is accepted everywhere.
    pub fn from_name(s: &str) -> Option<Forge> {
        Forge::ALL.into_iter().find(|f| f.as_str() == s)
    }

    /// The header carrying the event name; on each route only the forge's own one counts.
    fn event_header(self) -> &'static str {
        match self {
            Forge::Github => "X-GitHub-Event",
            Forge::Gitea => "X-Gitea-Event",
            Forge::Forgejo => "X-Forgejo-Event",
            Forge::Gitlab => "X-Gitlab-Event",
            Forge::Bitbucket => "X-Event-Key",
        }
    }

    /// Delivery id headers, most specific first. GitLab's `Idempotency-Key` survives "Resend
    /// Request" while `X-Gitlab-Event-UUID` is shared by recursive hooks, so it comes first.
    fn delivery_headers(self) -> &'static [&'static str] {
        match self {
            Forge::Github => &["X-GitHub-Delivery"],
            Forge::Gitea => &["X-Gitea-Delivery"],
            Forge::Forgejo => &["X-Forgejo-Delivery"],
            Forge::Gitlab => &["Idempotency-Key", "X-Gitlab-Event-UUID"],
            Forge::Bitbucket => &["X-Request-UUID"],
        }
    }

    /// The header hoist checks on this route.
    fn signature_header(self) -> &'static str {
        match self {
            Forge::Github => "X-Hub-Signature-256",
            Forge::Gitea => "X-Gitea-Signature",
            Forge::Forgejo => "X-Forgejo-Signature",
            Forge::Gitlab => "X-Gitlab-Token",
            // Same name as GitHub's legacy SHA-1 header, but Bitbucket Cloud puts SHA-256 in it.
            Forge::Bitbucket => "X-Hub-Signature",
        }
    }

    /// The event name of a push, as [`push_headers`] sends it.
    fn push_event(self) -> &'static str {
        match self {
            Forge::Github | Forge::Gitea | Forge::Forgejo => "push",
            Forge::Gitlab => "Push Hook",
            Forge::Bitbucket => "repo:push",
        }
    }

    /// Where the forge's settings page calls the secret, for messages that say what to fix.
    fn secret_hint(self) -> &'static str {
        match self {
            Forge::Github | Forge::Gitea | Forge::Forgejo => {
                "the webhook's Secret in the repository's Settings → Webhooks"
            }
            Forge::Gitlab => "the webhook's Secret token in the project's Settings → Webhooks",
            Forge::Bitbucket => {
                "the webhook's Secret in the repository's Repository settings → Webhooks"
            }
        }
    }
}

impl std::fmt::Display for Forge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether a ref is a branch (`refs/heads/`) or a tag (`refs/tags/`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RefKind {
    Branch,
    Tag,
}

impl RefKind {
    /// The word used in "branch deletion" / "tag creation".
    fn noun(self) -> &'static str {
        match self {
            RefKind::Branch => "branch",
            RefKind::Tag => "tag",
        }
    }
}

/// One ref update, normalized across forges.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PushEvent {
    /// The route the delivery came in on.
    pub forge: Forge,
    /// The forge's delivery id, or `sha256:<hex>` of the body when the forge sent none, so an
    /// identical re-send deduplicates. Shared by every event of one Bitbucket delivery.
    pub delivery_id: String,
    /// "owner/name" as the forge sends it; the key for the secret and the `[[repo]]` entry.
    pub repo: String,
    /// Full ref, "refs/heads/main" / "refs/tags/v1".
    pub git_ref: String,
    /// Branch or tag, from the ref prefix.
    pub kind: RefKind,
    /// Branch or tag name without the `refs/heads/` or `refs/tags/` prefix ("feature/x").
    pub name: String,
    /// 40 lowercase hex; zeros when the ref was created.
    pub before: String,
    /// 40 lowercase hex; the commit (or, for an annotated tag, the tag object) to build.
    pub after: String,
    /// The ref did not exist before this push.
    pub created: bool,
    /// Always false in [`Received::Push`] (deletions are ignored); kept so stored events say so.
    pub deleted: bool,
    /// A non-fast-forward update, when the forge reports it (GitHub, Bitbucket).
    pub forced: bool,
    /// Head commit message, when the payload carries the head commit.
    pub message: Option<String>,
    /// Head commit author name.
    pub author: Option<String>,
    /// Who pushed: login when the forge sends one, else display name.
    pub pusher: Option<String>,
}

/// What a verified delivery asks of hoist.
#[derive(Debug, Clone, PartialEq)]
pub enum Received {
    /// Ref updates that may start runs (never deletions).
    Push(Vec<PushEvent>),
    /// Verified, but nothing to do: ping, a branch/tag deletion, another event kind. `what` is a
    /// short phrase for the 200 answer, e.g. "ping", "branch deletion", "event 'issues'".
    Ignored { repo: Option<String>, what: String },
}

/// Why a delivery was refused; each variant is one HTTP status.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ForgeError {
    /// 401: missing/bad signature or token. Message says which header was expected and what to
    /// check (the secret in hoist.toml vs the forge's webhook settings). Never includes the
    /// secret or the expected signature.
    #[error("{0}")]
    Unauthorized(String),
    /// 400: the body or headers can't be understood; says what was expected.
    #[error("{0}")]
    Malformed(String),
    /// 404: repository not in the config. Carries the repo name.
    #[error(
        "repository {0} is not configured in hoist.toml; add a [[repo]] entry with name = \"{0}\""
    )]
    UnknownRepo(String),
}

use ForgeError::{Malformed, Unauthorized};

/// Verify and normalize one delivery. `secret_for(repo)` returns the configured secret of that
/// repository for THIS forge, or None when the repo is unknown (→ UnknownRepo). The route
/// decides the forge, never a header another forge also sends.
///
/// A delivery without a repository (a GitHub organization or App hook's `ping`, for instance)
/// is Malformed: secrets are per repository, so there is no secret to verify it with, and
/// answering 200 to an unverified request would claim a check that never happened.
pub fn receive(
    forge: Forge,
    headers: &HeaderMap,
    body: &[u8],
    secret_for: impl Fn(&str) -> Option<Vec<u8>>,
) -> Result<Received, ForgeError> {
    let decoded = decode_body(forge, headers, body)?;
    let payload = parse_payload(&decoded.json)?;
    if !payload.is_object() {
        return Err(Malformed(
            "the body is JSON but not an object; hoist expects the forge's push payload".into(),
        ));
    }
    let event = event_name(forge, headers)?;
    let repo = repo_name(forge, &payload, &event)?;
    let secret = secret_for(&repo).ok_or_else(|| ForgeError::UnknownRepo(repo.clone()))?;
    verify(forge, headers, decoded.signed(), &secret, &repo)?;
    let delivery_id = delivery_id(forge, headers, body)?;
    let push = |p: &Value| -> Result<Received, ForgeError> {
        let update = match forge {
            Forge::Github | Forge::Gitea | Forge::Forgejo => github_like_push(p)?,
            Forge::Gitlab => gitlab_push(p)?,
            Forge::Bitbucket => return bitbucket_push(p, forge, &delivery_id, &repo),
        };
        Ok(update.into_received(forge, &delivery_id, &repo))
    };
    match (forge, event.as_str()) {
        (Forge::Github, "ping") => Ok(ignored(&repo, "ping".into())),
        (Forge::Github | Forge::Gitea | Forge::Forgejo, "push") => push(&payload),
        // Gitea sends a `push` for the same ref as well; these add nothing to build.
        (Forge::Gitea | Forge::Forgejo, "create" | "delete") => {
            Ok(ignored(&repo, create_delete_what(&payload, &event)))
        }
        (Forge::Gitlab, "Push Hook" | "Tag Push Hook") => push(&payload),
        (Forge::Bitbucket, "repo:push") => push(&payload),
        (_, other) => Ok(ignored(&repo, format!("event '{other}'"))),
    }
}

/// Compute the signature header a forge would send (used by tests, benchmarks and the demo to
/// sign deliveries). Returns (header name, header value). GitLab sends the secret itself.
pub fn sign(forge: Forge, secret: &[u8], body: &[u8]) -> (&'static str, String) {
    let value = match forge {
        Forge::Github | Forge::Bitbucket => format!("sha256={}", hmac_sha256_hex(secret, body)),
        Forge::Gitea | Forge::Forgejo => hmac_sha256_hex(secret, body),
        Forge::Gitlab => String::from_utf8_lossy(secret).into_owned(),
    };
    (forge.signature_header(), value)
}

/// The headers (event name header, delivery id header) a forge sends for a push, so callers can
/// build a realistic delivery. GitLab's tag pushes say "Tag Push Hook" instead; [`receive`]
/// accepts either for any ref.
pub fn push_headers(forge: Forge, delivery_id: &str) -> Vec<(&'static str, String)> {
    // X-Gitlab-Event-UUID rather than Idempotency-Key: every GitLab since 14.8 sends it, while
    // Idempotency-Key is 17.4+.
    let delivery = match forge {
        Forge::Github => "X-GitHub-Delivery",
        Forge::Gitea => "X-Gitea-Delivery",
        Forge::Forgejo => "X-Forgejo-Delivery",
        Forge::Gitlab => "X-Gitlab-Event-UUID",
        Forge::Bitbucket => "X-Request-UUID",
    };
    vec![
        (forge.event_header(), forge.push_event().to_string()),
        (delivery, delivery_id.to_string()),
    ]
}

/// Parses the payload into a `Value` that holds only the fields hoist reads (see [`PAYLOAD`]):
/// the rest is checked exactly as a full parse checks it (UTF-8, escapes, number range, nesting
/// depth) but never allocated. On any error the body is parsed again in full, so the message is
/// the one a full parse gives.
fn parse_payload(json: &[u8]) -> Result<Value, ForgeError> {
    let mut de = serde_json::Deserializer::from_slice(json);
    let pruned = serde::de::DeserializeSeed::deserialize(&PAYLOAD, &mut de).and_then(|v| {
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

/// Which parts of a payload [`receive`] reads. Where the JSON has another type than the shape
/// expects, the value is kept whole, so type errors name what was sent.
enum Shape {
    /// Kept whole.
    Leaf,
    /// An object keeping only these fields.
    Object(&'static [(&'static str, Shape)]),
    /// An array of elements of this shape.
    Array(&'static Shape),
}

const AUTHOR: Shape = Shape::Object(&[
    ("raw", Shape::Leaf),
    ("name", Shape::Leaf),
    ("user", Shape::Object(&[("display_name", Shape::Leaf)])),
]);

const COMMIT: Shape = Shape::Object(&[
    ("id", Shape::Leaf),
    ("message", Shape::Leaf),
    ("author", AUTHOR),
]);

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

/// Every field any forge's push, ping, create or delete payload is read for.
const PAYLOAD: Shape = Shape::Object(&[
    ("ref", Shape::Leaf),
    ("ref_type", Shape::Leaf),
    ("before", Shape::Leaf),
    ("after", Shape::Leaf),
    ("created", Shape::Leaf),
    ("deleted", Shape::Leaf),
    ("forced", Shape::Leaf),
    ("checkout_sha", Shape::Leaf),
    ("user_username", Shape::Leaf),
    ("user_name", Shape::Leaf),
    ("repository", Shape::Object(&[("full_name", Shape::Leaf)])),
    (
        "project",
        Shape::Object(&[("path_with_namespace", Shape::Leaf)]),
    ),
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

/// A request body split into the JSON to read and the bytes the signature covers.
struct Decoded<'a> {
    /// The payload JSON: the body itself, or the `payload` field of a form-encoded body.
    json: Cow<'a, [u8]>,
    /// The request body as received.
    raw: &'a [u8],
    /// Whether the signature covers `json` rather than `raw` (Gitea and Forgejo, form-encoded).
    signs_json: bool,
}

impl Decoded<'_> {
    fn signed(&self) -> &[u8] {
        if self.signs_json {
            &self.json
        } else {
            self.raw
        }
    }
}

/// Form-encoded deliveries carry the JSON in a `payload` field. GitHub (and, by the same
/// convention, Bitbucket) signs the request body as sent; Gitea and Forgejo sign the JSON text
/// before encoding it (services/webhook/deliver.go). Anything else is read as JSON, whatever its
/// Content-Type says.
fn decode_body<'a>(
    forge: Forge,
    headers: &HeaderMap,
    body: &'a [u8],
) -> Result<Decoded<'a>, ForgeError> {
    let content_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mime = content_type.split(';').next().unwrap_or("").trim();
    if !mime.eq_ignore_ascii_case("application/x-www-form-urlencoded") {
        return Ok(Decoded {
            json: Cow::Borrowed(body),
            raw: body,
            signs_json: false,
        });
    }
    let payload = form_urlencoded::parse(body)
        .find(|(k, _)| k == "payload")
        .map(|(_, v)| v.into_owned())
        .ok_or_else(|| {
            Malformed(
                "the form-encoded body has no `payload` field; set the webhook's content type to \
                 application/json"
                    .into(),
            )
        })?;
    Ok(Decoded {
        json: Cow::Owned(payload.into_bytes()),
        raw: body,
        signs_json: matches!(forge, Forge::Gitea | Forge::Forgejo),
    })
}

fn event_name(forge: Forge, headers: &HeaderMap) -> Result<String, ForgeError> {
    let name = forge.event_header();
    // Event names are ASCII whatever the forge; anything else is not a forge's delivery.
    let event = match headers.get(name).map(|v| v.to_str()) {
        None => "",
        Some(Ok(event)) => event.trim(),
        Some(Err(_)) => {
            return Err(Malformed(format!(
                "the {name} header is not printable ASCII"
            )));
        }
    };
    if event.is_empty() {
        return Err(Malformed(format!(
            "missing {name} header: /hooks/{forge} only accepts {forge} webhook deliveries; \
             check that the webhook points at the route of the forge that sends it"
        )));
    }
    if event.len() > MAX_EVENT_NAME {
        return Err(Malformed(format!(
            "the {name} header is longer than {MAX_EVENT_NAME} characters"
        )));
    }
    Ok(event.to_string())
}

fn repo_name(forge: Forge, payload: &Value, event: &str) -> Result<String, ForgeError> {
    let path: &[&str] = match forge {
        Forge::Gitlab => &["project", "path_with_namespace"],
        _ => &["repository", "full_name"],
    };
    let repo = match opt_str(payload, "", path)? {
        Some(repo) => repo,
        None if forge == Forge::Github && event == "ping" => {
            return Err(Malformed(
                "this ping carries no repository, so it comes from an organization or GitHub App \
                 webhook; hoist's secrets are per repository, so it can only verify repository \
                 webhooks (add the webhook in the repository's Settings → Webhooks)"
                    .into(),
            ));
        }
        None => {
            return Err(Malformed(format!(
                "field `{}` is missing: hoist needs the repository to pick the secret that \
                 verifies the delivery (event '{event}')",
                path.join(".")
            )));
        }
    };
    if repo.is_empty() || repo.len() > MAX_REPO_NAME || repo.chars().any(char::is_control) {
        return Err(Malformed(format!(
            "field `{}` is not a repository name: {}",
            path.join("."),
            shown(repo)
        )));
    }
    Ok(repo.to_string())
}

fn verify(
    forge: Forge,
    headers: &HeaderMap,
    signed: &[u8],
    secret: &[u8],
    repo: &str,
) -> Result<(), ForgeError> {
    let name = forge.signature_header();
    let fix = format!(
        "{} must equal the secret of the [[repo]] entry {repo} in hoist.toml",
        forge.secret_hint()
    );
    // An empty secret would make every signature computable by anyone.
    if secret.is_empty() {
        return Err(Unauthorized(format!(
            "repository {repo} has an empty secret in hoist.toml, and hoist refuses unsigned \
             deliveries; set a secret there and the same in {}",
            forge.secret_hint()
        )));
    }
    let value = headers.get(name).map(|v| v.as_bytes()).unwrap_or_default();
    if value.is_empty() {
        return Err(Unauthorized(missing_signature(forge, headers, &fix)));
    }
    if forge == Forge::Gitlab {
        // A plain token, no HMAC. Compared as bytes (a token may be non-ASCII) and in constant
        // time, so it can't be guessed byte by byte from response times.
        return if bool::from(value.ct_eq(secret)) {
            Ok(())
        } else {
            Err(Unauthorized(format!("{name} does not match: {fix}")))
        };
    }
    let prefix = match forge {
        Forge::Github | Forge::Bitbucket => "sha256=",
        Forge::Gitea | Forge::Forgejo | Forge::Gitlab => "",
    };
    if forge == Forge::Bitbucket && value.starts_with(b"sha1=") {
        return Err(Unauthorized(format!(
            "{name} carries a SHA-1 signature, but Bitbucket Cloud signs with sha256=...; hoist \
             accepts only SHA-256 (if this is a GitHub webhook, point it at /hooks/github)"
        )));
    }
    let tag = value
        .strip_prefix(prefix.as_bytes())
        .filter(|hex| hex.len() == 64)
        .and_then(|hex| hex::decode(hex).ok())
        .ok_or_else(|| Unauthorized(format!("{name} should be `{prefix}<64 hex digits>`")))?;
    let mut mac = HmacSha256::new_from_slice(secret)
        .map_err(|_| Unauthorized(format!("the secret of {repo} can't key HMAC-SHA256")))?;
    mac.update(signed);
    // verify_slice compares in constant time.
    mac.verify_slice(&tag).map_err(|_| {
        Unauthorized(format!(
            "{name} does not match the body: {fix} (and nothing between the forge and hoist may \
             rewrite the body)"
        ))
    })
}

/// The 401 message for a missing signature, naming the other forge's header when it is there:
/// that usually means the webhook points at the wrong route.
fn missing_signature(forge: Forge, headers: &HeaderMap, fix: &str) -> String {
    let name = forge.signature_header();
    let has = |h: &str| headers.get(h).is_some_and(|v| !v.is_empty());
    match forge {
        Forge::Github if has("X-Hub-Signature") => format!(
            "only the legacy SHA-1 X-Hub-Signature header was sent; hoist accepts only \
             {name} (HMAC-SHA256): set a secret on the webhook (GitHub sends SHA-256 whenever a \
             secret is set; a GitHub Enterprise Server too old to send it needs an upgrade); \
             {fix}"
        ),
        // Checked first: a Gitea delivery also carries X-Hub-Signature-256.
        Forge::Forgejo if has("X-Gitea-Signature") => format!(
            "missing {name}: this delivery has X-Gitea-Signature but not {name}, so it comes \
             from Gitea (or a Forgejo too old to send X-Forgejo-*); point the webhook at \
             /hooks/gitea and set forge = \"gitea\" for this repository in hoist.toml"
        ),
        Forge::Gitea | Forge::Forgejo if has("X-Hub-Signature-256") => format!(
            "missing {name}: /hooks/{forge} checks only {forge}'s own signature header, not the \
             X-Hub-Signature-256 this delivery carries (if it comes from GitHub, point it at \
             /hooks/github); {fix}"
        ),
        Forge::Gitlab => format!("missing {name} header: {fix}"),
        _ => format!(
            "missing {name} header: the forge sends it only when the webhook has a secret; {fix}"
        ),
    }
}

fn delivery_id(forge: Forge, headers: &HeaderMap, body: &[u8]) -> Result<String, ForgeError> {
    for &name in forge.delivery_headers() {
        let Some(id) = headers.get(name) else {
            continue;
        };
        if id.is_empty() {
            continue;
        }
        let printable = id.as_bytes().iter().all(|b| (0x20..0x7f).contains(b));
        if !printable || id.len() > MAX_DELIVERY_ID {
            return Err(Malformed(format!(
                "the {name} header should be at most {MAX_DELIVERY_ID} printable ASCII characters"
            )));
        }
        return Ok(String::from_utf8_lossy(id.as_bytes()).into_owned());
    }
    // No id: derive one from the bytes, so a forge re-sending the same body is recognized.
    Ok(format!("sha256:{}", hex::encode(Sha256::digest(body))))
}

fn ignored(repo: &str, what: String) -> Received {
    Received::Ignored {
        repo: Some(repo.to_string()),
        what,
    }
}

/// "tag creation" / "branch deletion" for Gitea's create and delete events.
fn create_delete_what(payload: &Value, event: &str) -> String {
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

/// One ref update as read from a payload, before the delivery's context is attached.
struct Update {
    git_ref: String,
    kind: RefKind,
    name: String,
    before: String,
    after: String,
    created: bool,
    deleted: bool,
    forced: bool,
    message: Option<String>,
    author: Option<String>,
    pusher: Option<String>,
}

impl Update {
    fn into_event(self, forge: Forge, delivery_id: &str, repo: &str) -> PushEvent {
        PushEvent {
            forge,
            delivery_id: delivery_id.to_string(),
            repo: repo.to_string(),
            git_ref: self.git_ref,
            kind: self.kind,
            name: self.name,
            before: self.before,
            after: self.after,
            created: self.created,
            deleted: self.deleted,
            forced: self.forced,
            message: self.message,
            author: self.author,
            pusher: self.pusher,
        }
    }

    fn into_received(self, forge: Forge, delivery_id: &str, repo: &str) -> Received {
        if self.deleted {
            ignored(repo, format!("{} deletion", self.kind.noun()))
        } else {
            Received::Push(vec![self.into_event(forge, delivery_id, repo)])
        }
    }
}

/// GitHub, Gitea and Forgejo share the push payload shape. Gitea has no created/deleted/forced
/// fields (derived from the zero SHAs instead) and older Gitea no `head_commit` (found in
/// `commits` by id instead).
fn github_like_push(p: &Value) -> Result<Update, ForgeError> {
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

/// GitLab: `checkout_sha` is null when a ref is removed; there is no `forced` field.
fn gitlab_push(p: &Value) -> Result<Update, ForgeError> {
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

/// Bitbucket Cloud: one delivery lists several ref changes; `new: null` is a deletion.
fn bitbucket_push(
    p: &Value,
    forge: Forge,
    delivery_id: &str,
    repo: &str,
) -> Result<Received, ForgeError> {
    let changes = match p.get("push").and_then(|push| push.get("changes")) {
        Some(Value::Array(changes)) => changes,
        None | Some(Value::Null) => {
            return Err(Malformed("field `push.changes` is missing".into()));
        }
        Some(other) => {
            return Err(Malformed(format!(
                "field `push.changes` should be an array, found {}",
                type_name(other)
            )));
        }
    };
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
                deleted.push(if kind == "tag" { "tag" } else { "branch" });
                continue;
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
        let target_at = format!("{at}new.target");
        let (message, mut author) =
            commit_text(new.get("target").unwrap_or(&Value::Null), &target_at)?;
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
        events.push(
            Update {
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
            }
            .into_event(forge, delivery_id, repo),
        );
    }
    if !events.is_empty() {
        return Ok(Received::Push(events));
    }
    let what = match deleted.as_slice() {
        [] => "push without changes".to_string(),
        [one] => format!("{one} deletion"),
        _ => "ref deletions".to_string(),
    };
    Ok(ignored(repo, what))
}

/// The head commit's message and author, for forges that only list `commits` (GitLab, older
/// Gitea). None when the head is not listed (a tag on an old commit, a capped list).
fn head_in_commits(p: &Value, after: &str) -> Result<(Option<String>, Option<String>), ForgeError> {
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
fn commit_text(commit: &Value, at: &str) -> Result<(Option<String>, Option<String>), ForgeError> {
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

fn type_name(v: &Value) -> &'static str {
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
fn opt_str<'v>(v: &'v Value, at: &str, path: &[&str]) -> Result<Option<&'v str>, ForgeError> {
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

fn req_str<'v>(v: &'v Value, at: &str, path: &[&str]) -> Result<&'v str, ForgeError> {
    opt_str(v, at, path)?
        .ok_or_else(|| Malformed(format!("field `{at}{}` is missing", path.join("."))))
}

fn opt_bool(v: &Value, at: &str, path: &[&str]) -> Result<Option<bool>, ForgeError> {
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
fn first_str(v: &Value, paths: &[&[&str]]) -> Result<Option<String>, ForgeError> {
    for path in paths {
        if let Some(s) = opt_str(v, "", path)?.filter(|s| !s.is_empty()) {
            return Ok(Some(s.to_string()));
        }
    }
    Ok(None)
}

/// A 40-hex commit id, lowercased so the same commit compares equal across forges.
fn sha(v: &Value, at: &str, path: &[&str]) -> Result<String, ForgeError> {
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
fn git_ref(v: &Value, at: &str, path: &[&str]) -> Result<(String, RefKind, String), ForgeError> {
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
fn shown(s: &str) -> String {
    const MAX: usize = 80;
    if s.chars().count() <= MAX {
        format!("{s:?}")
    } else {
        let cut: String = s.chars().take(MAX).collect();
        format!("{cut:?}…")
    }
}

fn hmac_sha256_hex(key: &[u8], data: &[u8]) -> String {
    // HMAC takes keys of any length, so this never fails; an empty string never verifies.
    match HmacSha256::new_from_slice(key) {
        Ok(mut mac) => {
            mac.update(data);
            hex::encode(mac.finalize().into_bytes())
        }
        Err(_) => String::new(),
    }
}

#[cfg(test)]
mod tests {
    //! Every case is a delivery built like the forge builds it, run through [`receive`] and
    //! rendered to one string, so a case reads as "this delivery → this answer".

    use super::*;
    use axum::http::{HeaderName, HeaderValue};
    use sha1::Sha1;

    const SECRET: &[u8] = b"s3cret-for-tests";
    const SIGNATURE_HEADERS: [&str; 6] = [
        "X-Hub-Signature-256",
        "X-Hub-Signature",
        "X-Gitea-Signature",
        "X-Gogs-Signature",
        "X-Forgejo-Signature",
        "X-Gitlab-Token",
    ];

    /// A delivery as it reaches the route, plus what hoist.toml says about its repository.
    struct Delivery {
        forge: Forge,
        headers: Vec<(String, Vec<u8>)>,
        body: Vec<u8>,
        /// The repository's secret in hoist.toml; None when the repository is not configured.
        configured: Option<Vec<u8>>,
    }

    impl Delivery {
        /// A delivery signed with [`SECRET`] over `signed`, carrying every header the forge
        /// sends (SOURCES.md), including the other forges' duplicates that must not count.
        fn new(forge: Forge, event: &str, body: &[u8]) -> Delivery {
            let id = format!("{forge}-delivery-1");
            let mut d = Delivery {
                forge,
                headers: Vec::new(),
                body: body.to_vec(),
                configured: Some(SECRET.to_vec()),
            };
            d = d.set("Content-Type", "application/json");
            for (name, value) in push_headers(forge, &id) {
                d = d.set(name, &value);
            }
            d = d.set(forge.event_header(), event);
            let (sig_name, sig) = sign(forge, SECRET, body);
            d = d.set(sig_name, &sig);
            let sha1 = format!("sha1={}", hmac_sha1_hex(SECRET, body));
            let sha256 = format!("sha256={}", hmac_sha256_hex(SECRET, body));
            match forge {
                Forge::Github => {
                    d = d
                        .set("X-Hub-Signature", &sha1)
                        .set("X-GitHub-Hook-ID", "292430182")
                        .set("X-GitHub-Hook-Installation-Target-Type", "repository")
                        .set("User-Agent", "GitHub-Hookshot/044aadd");
                }
                Forge::Gitea | Forge::Forgejo => {
                    let hex = hmac_sha256_hex(SECRET, body);
                    for prefix in ["X-Gitea", "X-Gogs", "X-GitHub", "X-Forgejo"] {
                        if prefix == "X-Forgejo" && forge == Forge::Gitea {
                            continue;
                        }
                        d = d
                            .set(&format!("{prefix}-Event"), event)
                            .set(&format!("{prefix}-Event-Type"), event)
                            .set(&format!("{prefix}-Delivery"), &id);
                    }
                    d = d
                        .set("X-Gitea-Signature", &hex)
                        .set("X-Gogs-Signature", &hex)
                        .set("X-Hub-Signature", &sha1)
                        .set("X-Hub-Signature-256", &sha256);
                    if forge == Forge::Forgejo {
                        d = d.set("X-Forgejo-Signature", &hex);
                    }
                }
                Forge::Gitlab => {
                    d = d
                        .set("Idempotency-Key", &format!("{id}-idem"))
                        .set("X-Gitlab-Instance", "https://gitlab.example.com")
                        .set("X-Gitlab-Webhook-UUID", "hook-uuid-not-a-delivery")
                        .set("User-Agent", "GitLab/17.5.0");
                }
                Forge::Bitbucket => {
                    d = d
                        .set("X-Hook-UUID", "hook-uuid-not-a-delivery")
                        .set("X-Attempt-Number", "1");
                }
            }
            d
        }

        /// Just the headers hoist reads, for tests that run thousands of deliveries.
        fn minimal(forge: Forge, event: &str, body: &[u8]) -> Delivery {
            let (sig_name, sig) = sign(forge, SECRET, body);
            let mut d = Delivery {
                forge,
                headers: Vec::new(),
                body: body.to_vec(),
                configured: Some(SECRET.to_vec()),
            }
            .set(sig_name, &sig);
            for (name, value) in push_headers(forge, "id") {
                d = d.set(name, &value);
            }
            d.set(forge.event_header(), event)
        }

        fn fixture(forge: Forge, file: &str, event: &str) -> Delivery {
            Delivery::new(forge, event, &fixture(file))
        }

        fn set(mut self, name: &str, value: &str) -> Delivery {
            self.headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
            self.headers
                .push((name.to_string(), value.as_bytes().to_vec()));
            self
        }

        fn set_bytes(mut self, name: &str, value: &[u8]) -> Delivery {
            self = self.remove(name);
            self.headers.push((name.to_string(), value.to_vec()));
            self
        }

        fn remove(mut self, name: &str) -> Delivery {
            self.headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
            self
        }

        /// Replaces the body and keeps the headers (and so the old signature).
        fn body(mut self, body: &[u8]) -> Delivery {
            self.body = body.to_vec();
            self
        }

        fn configured(mut self, secret: Option<&[u8]>) -> Delivery {
            self.configured = secret.map(<[u8]>::to_vec);
            self
        }

        fn receive(&self) -> Result<Received, ForgeError> {
            let mut headers = HeaderMap::new();
            for (name, value) in &self.headers {
                let name = HeaderName::from_bytes(name.as_bytes()).expect("test header name");
                let value = HeaderValue::from_bytes(value).expect("test header value");
                headers.append(name, value);
            }
            receive(self.forge, &headers, &self.body, |_repo| {
                self.configured.clone()
            })
        }
    }

    fn fixture(file: &str) -> Vec<u8> {
        let path = format!(
            "{}/tests/fixtures/webhooks/{file}",
            env!("CARGO_MANIFEST_DIR")
        );
        std::fs::read(&path).unwrap_or_else(|e| panic!("reading {path}: {e}"))
    }

    fn hmac_sha1_hex(key: &[u8], data: &[u8]) -> String {
        let mut mac = Hmac::<Sha1>::new_from_slice(key).expect("HMAC takes any key");
        mac.update(data);
        hex::encode(mac.finalize().into_bytes())
    }

    fn form(json: &[u8]) -> Vec<u8> {
        form_urlencoded::Serializer::new(String::new())
            .append_pair(
                "payload",
                std::str::from_utf8(json).expect("fixture is UTF-8"),
            )
            .finish()
            .into_bytes()
    }

    /// One line per pushed ref, `ignored <repo>: <what>`, or `<status> <message>`.
    fn render(result: &Result<Received, ForgeError>) -> String {
        match result {
            Ok(Received::Push(events)) => events
                .iter()
                .map(|e| {
                    let first_line = |s: &Option<String>| {
                        s.as_deref()
                            .map(|s| s.lines().next().unwrap_or("").to_string())
                    };
                    format!(
                        "{} {} {:?}:{} {}..{} created={} deleted={} forced={} msg={:?} \
                         author={:?} pusher={:?}",
                        e.repo,
                        e.git_ref,
                        e.kind,
                        e.name,
                        e.before,
                        e.after,
                        e.created,
                        e.deleted,
                        e.forced,
                        first_line(&e.message),
                        e.author,
                        e.pusher
                    )
                })
                .collect::<Vec<_>>()
                .join("\n"),
            Ok(Received::Ignored { repo, what }) => format!("ignored {repo:?}: {what}"),
            Err(e @ ForgeError::Unauthorized(_)) => format!("401 {e}"),
            Err(e @ ForgeError::Malformed(_)) => format!("400 {e}"),
            Err(e @ ForgeError::UnknownRepo(_)) => format!("404 {e}"),
        }
    }

    /// Runs `d` and compares the rendering with `expect`: exactly for answers, and for errors
    /// by status plus a part of the message (`"401 X-Gitea-Signature"`), so messages can be
    /// reworded without touching every case. Errors must never reveal the secret or signature.
    #[track_caller]
    fn check(d: Delivery, expect: &str) {
        let result = d.receive();
        let actual = render(&result);
        if let Err(e) = &result {
            let msg = e.to_string();
            let configured = d.configured.as_deref().filter(|s| !s.is_empty());
            for secret in [Some(SECRET), configured].into_iter().flatten() {
                let secret = String::from_utf8_lossy(secret);
                assert!(!msg.contains(&*secret), "error reveals the secret: {msg}");
            }
            assert!(
                !msg.contains(&hmac_sha256_hex(SECRET, &d.body)),
                "reveals the signature: {msg}"
            );
        }
        match expect.split_once(' ') {
            Some((status @ ("400" | "401" | "404"), part)) => assert!(
                actual.starts_with(status) && actual.contains(part),
                "\nexpected: {expect}\n  actual: {actual}"
            ),
            _ => assert_eq!(actual, expect, "\nexpected: {expect}\n  actual: {actual}"),
        }
    }

    /// Every fixture file, with the event header its real delivery carries and the answer.
    const FIXTURES: &[(Forge, &str, &str, &str)] = &[
        (
            Forge::Github,
            "github/go-scm-push.json",
            "push",
            "Codertocat/Hello-World refs/heads/master Branch:master a10867b14bb761a232cd80139fbd4c0d33264240..199eddf46df50de8d02e99bf1c5fdb4101338224 created=false deleted=false forced=false msg=Some(\"Update README\") author=Some(\"Codertocat\") pusher=Some(\"Codertocat\")",
        ),
        (
            Forge::Github,
            "github/go-scm-push-branch-delete.json",
            "push",
            "ignored Some(\"bradrydzewski/drone-test-go\"): branch deletion",
        ),
        (
            Forge::Github,
            "github/go-scm-push-tag-create.json",
            "push",
            "bradrydzewski/drone-test-go refs/tags/v0.0.1 Tag:v0.0.1 0000000000000000000000000000000000000000..d2b75aa7797ec26b088fa2dd527e9d2c052fcedd created=true deleted=false forced=false msg=Some(\"Update .drone.yml\") author=Some(\"Brad Rydzewski\") pusher=Some(\"bradrydzewski\")",
        ),
        (
            Forge::Github,
            "github/ping.json",
            "ping",
            "ignored Some(\"Octocoders/Hello-World\"): ping",
        ),
        (
            Forge::Github,
            "github/push-branch-create.json",
            "push",
            "Codertocat/Hello-World refs/heads/master Branch:master 0000000000000000000000000000000000000000..6113728f27ae82c7b1a177c8d03f9e96e0adf246 created=true deleted=false forced=false msg=Some(\"Initial commit\") author=Some(\"Codertocat\") pusher=Some(\"Codertocat\")",
        ),
        (
            Forge::Github,
            "github/push-branch-create-no-username-committer.json",
            "push",
            "Codertocat/Hello-World refs/heads/master Branch:master 0000000000000000000000000000000000000000..6113728f27ae82c7b1a177c8d03f9e96e0adf246 created=true deleted=false forced=false msg=Some(\"Initial commit\") author=Some(\"Codertocat\") pusher=Some(\"Codertocat\")",
        ),
        (
            Forge::Github,
            "github/push-branch-update-legacy-docs.json",
            "push",
            "baxterthehacker/public-repo refs/heads/changes Branch:changes 9049f1265b7d61be4a8904a9a27120d2064dab3b..0d1a26e67d8f5eaf1f6ba5c57fc3c7d91ac0fd1c created=false deleted=false forced=false msg=Some(\"Update README.md\") author=Some(\"baxterthehacker\") pusher=Some(\"baxterthehacker\")",
        ),
        // commits is empty but head_commit is set: the message still comes through.
        (
            Forge::Github,
            "github/push-tag-create-ghes.json",
            "push",
            "Codertocat/Hello-World refs/tags/simple-tag Tag:simple-tag 0000000000000000000000000000000000000000..6113728f27ae82c7b1a177c8d03f9e96e0adf246 created=true deleted=false forced=false msg=Some(\"Adding a .gitignore file\") author=Some(\"Codertocat\") pusher=Some(\"Codertocat\")",
        ),
        (
            Forge::Github,
            "github/push-tag-delete.json",
            "push",
            "ignored Some(\"Codertocat/Hello-World\"): tag deletion",
        ),
        (
            Forge::Gitlab,
            "gitlab/go-scm-push.json",
            "Push Hook",
            "gitlab-org/hello-world refs/heads/master Branch:master 9217710ce8c7e1eae7a5d1c45f6e43e1c769f866..2adc9465c4edfc33834e173fe89436a7cb899a1d created=false deleted=false forced=false msg=Some(\"added readme\") author=Some(\"Sid Sijbrandij\") pusher=Some(\"sytses\")",
        ),
        (
            Forge::Gitlab,
            "gitlab/go-scm-branch-delete.json",
            "Push Hook",
            "ignored Some(\"gitlab-org/hello-world\"): branch deletion",
        ),
        (
            Forge::Gitlab,
            "gitlab/go-scm-tag-push-create.json",
            "Tag Push Hook",
            "gitlab-org/hello-world refs/tags/v1.0.0 Tag:v1.0.0 0000000000000000000000000000000000000000..2adc9465c4edfc33834e173fe89436a7cb899a1d created=true deleted=false forced=false msg=Some(\"added readme\") author=Some(\"Sid Sijbrandij\") pusher=Some(\"sytses\")",
        ),
        (
            Forge::Gitlab,
            "gitlab/go-scm-tag-push-delete.json",
            "Tag Push Hook",
            "ignored Some(\"gitlab-org/hello-world\"): tag deletion",
        ),
        // Two of four commits listed; the head is the second one, not the first.
        (
            Forge::Gitlab,
            "gitlab/push-docs.json",
            "Push Hook",
            "mike/diaspora refs/heads/master Branch:master 95790bf891e76fee5e1747ab589903a6a1f80f22..da1560886d4f094c3e6c9ef40349f7d38b5d27d7 created=false deleted=false forced=false msg=Some(\"fixed readme\") author=Some(\"GitLab dev user\") pusher=Some(\"jsmith\")",
        ),
        // No commits listed, and user_username is null: the pusher falls back to user_name.
        (
            Forge::Gitlab,
            "gitlab/tag-push-docs.json",
            "Tag Push Hook",
            "jsmith/example refs/tags/v1.0.0 Tag:v1.0.0 0000000000000000000000000000000000000000..82b3d5ae55f7080f1e6022629cdb57bfae7cccc7 created=true deleted=false forced=false msg=None author=None pusher=Some(\"John Smith\")",
        ),
        (
            Forge::Gitea,
            "gitea/go-scm-push.json",
            "push",
            "gogits/hello-world refs/heads/master Branch:master 9836a96a253cce25d17988fcf41b8c4205cf779f..4522cbcefc20728a5b72b3a86af35e608622c514 created=false deleted=false forced=false msg=Some(\"Updated readme\") author=Some(\"Unknwon\") pusher=Some(\"unknwon\")",
        ),
        // Carries the deprecated body field "secret"; it plays no part in verification.
        (
            Forge::Gitea,
            "gitea/push-docs.json",
            "push",
            "gitea/webhooks refs/heads/develop Branch:develop 28e1879d029cb852e4844d9c718537df08844e03..bffeb74224043ba2feb48d137756c8a9331c449a created=false deleted=false forced=false msg=Some(\"Webhooks Yay!\") author=Some(\"Gitea\") pusher=Some(\"gitea\")",
        ),
        (
            Forge::Gitea,
            "gitea/go-scm-create-tag.json",
            "create",
            "ignored Some(\"gogits/hello-world\"): tag creation",
        ),
        (
            Forge::Gitea,
            "gitea/go-scm-delete-branch.json",
            "delete",
            "ignored Some(\"gogits/hello-world\"): branch deletion",
        ),
        (
            Forge::Forgejo,
            "forgejo/push-docs.json",
            "push",
            "forgejo/webhooks refs/heads/develop Branch:develop 28e1879d029cb852e4844d9c718537df08844e03..bffeb74224043ba2feb48d137756c8a9331c449a created=false deleted=false forced=false msg=Some(\"Webhooks Yay!\") author=Some(\"Forgejo\") pusher=Some(\"forgejo\")",
        ),
        (
            Forge::Bitbucket,
            "bitbucket/go-scm-push.json",
            "repo:push",
            "brydzewski/foo refs/heads/master Branch:master 40e7580cf11311d84a6e5e97e2cbba6df1675750..141977fedf5cf35aa290ac87d4b5177ac4cd9de1 created=false deleted=false forced=false msg=Some(\"Update README\") author=Some(\"Brad Rydzewski\") pusher=Some(\"brydzewski\")",
        ),
        (
            Forge::Bitbucket,
            "bitbucket/go-scm-push-branch-delete.json",
            "repo:push",
            "ignored Some(\"brydzewski/foo\"): branch deletion",
        ),
        // A tag whose name contains a slash.
        (
            Forge::Bitbucket,
            "bitbucket/go-scm-push-tag-create.json",
            "repo:push",
            "brydzewski/foo refs/tags/feature/x Tag:feature/x 0000000000000000000000000000000000000000..141977fedf5cf35aa290ac87d4b5177ac4cd9de1 created=true deleted=false forced=false msg=Some(\"Update README\") author=Some(\"Brad Rydzewski\") pusher=Some(\"brydzewski\")",
        ),
    ];

    /// The answer [`FIXTURES`] expects for a file.
    fn expected(file: &str) -> &'static str {
        FIXTURES
            .iter()
            .find(|case| case.1 == file)
            .map_or("(no case for this file)", |case| case.3)
    }

    #[test]
    fn fixtures() {
        for &(forge, file, event, expect) in FIXTURES {
            check(Delivery::fixture(forge, file, event), expect);
        }
    }

    /// A fixture added to the folder without a case here fails, so none goes untested.
    #[test]
    fn every_fixture_file_has_a_case() {
        let root = format!("{}/tests/fixtures/webhooks", env!("CARGO_MANIFEST_DIR"));
        let mut on_disk = Vec::new();
        for dir in std::fs::read_dir(&root).expect("fixture folder") {
            let dir = dir.expect("fixture folder entry").path();
            if !dir.is_dir() {
                continue;
            }
            for file in std::fs::read_dir(&dir).expect("forge folder") {
                let file = file.expect("forge folder entry").path();
                let rel = file.strip_prefix(&root).expect("under root");
                on_disk.push(rel.to_string_lossy().replace('\\', "/"));
            }
        }
        on_disk.sort();
        let mut cased: Vec<String> = FIXTURES.iter().map(|c| c.1.to_string()).collect();
        cased.sort();
        assert_eq!(on_disk, cased);
        assert_eq!(on_disk.len(), 23);
    }

    #[test]
    fn github_docs_vector() {
        let (secret, body) = (b"It's a Secret to Everybody", b"Hello, World!");
        let hex = "757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        assert_eq!(hmac_sha256_hex(secret, body), hex);
        assert_eq!(
            sign(Forge::Github, secret, body),
            ("X-Hub-Signature-256", format!("sha256={hex}"))
        );
    }

    #[test]
    fn go_scm_vector() {
        let body = fixture("github/go-scm-push.json");
        assert_eq!(body.len(), 8556);
        let sig = "sha256=e3bfe744d4e2e29ed990bde8acfb8255ca51ef65f99657767989fb6349f32957";
        assert_eq!(sign(Forge::Github, b"topsecret", &body).1, sig);
        // Also pins the SHA-1 helper the realistic deliveries use for the legacy header.
        assert_eq!(
            hmac_sha1_hex(b"topsecret", &body),
            "cf93f9ba3c8d3a789e61f91e1e5c6a360d036e98"
        );
        let d = Delivery::new(Forge::Github, "push", &body)
            .configured(Some(b"topsecret"))
            .set("X-Hub-Signature-256", sig);
        check(d, expected("github/go-scm-push.json"));
    }

    #[test]
    fn form_encoded() {
        let json = fixture("github/go-scm-push.json");
        let form_type = "application/x-www-form-urlencoded";
        // GitHub signs the form body it sends.
        let d = Delivery::new(Forge::Github, "push", &form(&json)).set("Content-Type", form_type);
        check(d, expected("github/go-scm-push.json"));
        let d = Delivery::new(Forge::Github, "push", &json)
            .body(&form(&json))
            .set("Content-Type", form_type);
        check(d, "401 X-Hub-Signature-256 does not match");

        // Gitea signs the JSON text inside the form.
        let json = fixture("gitea/go-scm-push.json");
        let d = Delivery::new(Forge::Gitea, "push", &json)
            .body(&form(&json))
            .set(
                "Content-Type",
                "application/x-www-form-urlencoded; charset=utf-8",
            );
        check(d, expected("gitea/go-scm-push.json"));
        let d = Delivery::new(Forge::Gitea, "push", &form(&json)).set("Content-Type", form_type);
        check(d, "401 X-Gitea-Signature does not match");

        let d = Delivery::new(Forge::Github, "push", b"other=1").set("Content-Type", form_type);
        check(d, "400 no `payload` field");
    }

    #[test]
    fn refusals() {
        let gh = || Delivery::fixture(Forge::Github, "github/go-scm-push.json", "push");
        let gitea = || Delivery::fixture(Forge::Gitea, "gitea/go-scm-push.json", "push");
        let forgejo = || Delivery::fixture(Forge::Forgejo, "forgejo/push-docs.json", "push");
        let gitlab = || Delivery::fixture(Forge::Gitlab, "gitlab/go-scm-push.json", "Push Hook");
        let bb = || Delivery::fixture(Forge::Bitbucket, "bitbucket/go-scm-push.json", "repo:push");
        let all = [gh, gitea, forgejo, gitlab, bb];

        // One byte changed (the commit message) after signing; GitLab signs no body.
        for d in [gh(), gitea(), forgejo(), bb()] {
            let mut body = d.body.clone();
            // Inside a string, so the body stays valid JSON and reaches the signature check.
            let at = body
                .windows(4)
                .position(|w| w.eq_ignore_ascii_case(b"read") || w == b"Yay!")
                .expect("a word to change");
            body[at] ^= 0x20;
            let name = d.forge.signature_header();
            check(
                d.body(&body),
                &format!("401 {name} does not match the body"),
            );
        }
        for d in all.map(|d| d()) {
            let name = d.forge.signature_header();
            check(
                d.configured(Some(b"another secret")),
                &format!("401 {name} does not match"),
            );
        }
        for d in all.map(|d| d()) {
            let name = d.forge.signature_header();
            let mut d = d;
            for header in SIGNATURE_HEADERS {
                d = d.remove(header);
            }
            check(d, &format!("401 missing {name}"));
        }
        for d in all.map(|d| d()) {
            check(d.configured(None), "404 is not configured in hoist.toml");
        }
        for d in all.map(|d| d()) {
            check(d.configured(Some(b"")), "401 has an empty");
        }
        check(
            gh().configured(None),
            "404 repository Codertocat/Hello-World is not configured in hoist.toml; add a \
             [[repo]] entry with name = \"Codertocat/Hello-World\"",
        );

        // Header clashes: only the route's own scheme counts.
        check(
            gh().remove("X-Hub-Signature-256"),
            "401 only the legacy SHA-1 X-Hub-Signature",
        );
        check(
            gitea()
                .remove("X-Gitea-Signature")
                .remove("X-Gogs-Signature"),
            "401 not the X-Hub-Signature-256 this delivery carries",
        );
        check(
            forgejo().remove("X-Forgejo-Signature"),
            "401 has X-Gitea-Signature but not X-Forgejo-Signature",
        );
        let body = fixture("bitbucket/go-scm-push.json");
        let sha1 = format!("sha1={}", hmac_sha1_hex(SECRET, &body));
        check(
            bb().set("X-Hub-Signature", &sha1),
            "401 carries a SHA-1 signature",
        );
        // A correct GitHub-style signature in the wrong header does not help Gitea either.
        let hex = hmac_sha256_hex(SECRET, &fixture("gitea/go-scm-push.json"));
        check(
            gitea().set("X-Gitea-Signature", &format!("sha256={hex}")),
            "401 should be `<64 hex",
        );
        check(
            gh().set("X-Hub-Signature-256", "sha256=xyz"),
            "401 should be `sha256=<64 hex",
        );
        check(
            gh().set("X-Hub-Signature-256", &hex),
            "401 should be `sha256=<64 hex",
        );
        // Gitea sends empty signature headers when the hook has no secret.
        check(
            gitea()
                .set("X-Gitea-Signature", "")
                .set("X-Hub-Signature-256", "sha256="),
            "401 missing X-Gitea-Signature",
        );
        // GitLab's token is compared as bytes, so a non-ASCII secret works.
        let token = "sécret".as_bytes();
        let d = gitlab()
            .configured(Some(token))
            .set_bytes("X-Gitlab-Token", token);
        check(d, expected("gitlab/go-scm-push.json"));
        check(
            gitlab().set("X-Gitlab-Token", "s3cret-for-test"),
            "401 X-Gitlab-Token does not match",
        );
    }

    #[test]
    fn events() {
        let repo_only = br#"{"action":"opened","repository":{"full_name":"acme/web"}}"#;
        check(
            Delivery::new(Forge::Github, "issues", repo_only),
            "ignored Some(\"acme/web\"): event 'issues'",
        );
        check(
            Delivery::new(Forge::Gitea, "issues", repo_only),
            "ignored Some(\"acme/web\"): event 'issues'",
        );
        check(
            Delivery::new(Forge::Bitbucket, "pullrequest:created", repo_only),
            "ignored Some(\"acme/web\"): event 'pullrequest:created'",
        );
        let project = br#"{"object_kind":"note","project":{"path_with_namespace":"g/sub/web"}}"#;
        check(
            Delivery::new(Forge::Gitlab, "Note Hook", project),
            "ignored Some(\"g/sub/web\"): event 'Note Hook'",
        );
        // Only GitHub sends pings; elsewhere the word is just another event.
        check(
            Delivery::new(Forge::Gitea, "ping", repo_only),
            "ignored Some(\"acme/web\"): event 'ping'",
        );
        // An event is only read from the route's own header.
        let gitea = Delivery::fixture(Forge::Gitea, "gitea/go-scm-push.json", "push");
        check(
            gitea.remove("X-Gitea-Event"),
            "400 missing X-Gitea-Event header",
        );
        let gh = Delivery::fixture(Forge::Github, "github/go-scm-push.json", "push");
        check(
            gh.remove("X-GitHub-Event"),
            "400 missing X-GitHub-Event header",
        );
        // A ping from an organization hook has no repository to take the secret from.
        check(
            Delivery::new(
                Forge::Github,
                "ping",
                br#"{"zen":"Keep it logically awesome.","hook_id":1}"#,
            ),
            "400 this ping carries no repository",
        );
        check(
            Delivery::new(Forge::Bitbucket, "repo:push", br#"{"push":{"changes":[]}}"#),
            "400 field `repository.full_name` is missing",
        );
        check(
            Delivery::new(
                Forge::Bitbucket,
                "repo:push",
                br#"{"push":{"changes":[]},"repository":{"full_name":"a/b"}}"#,
            ),
            "ignored Some(\"a/b\"): push without changes",
        );
    }

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
    fn delivery_ids() {
        let one = |d: Delivery| match d.receive() {
            Ok(Received::Push(events)) => events[0].delivery_id.clone(),
            other => render(&other),
        };
        let gh = || Delivery::fixture(Forge::Github, "github/go-scm-push.json", "push");
        let gl = || Delivery::fixture(Forge::Gitlab, "gitlab/go-scm-push.json", "Push Hook");
        let id = "72d3162e-cc78-11e3-81ab-4c9367dc0958";
        assert_eq!(one(gh().set("X-GitHub-Delivery", id)), id);
        // Gitea's route takes X-Gitea-Delivery, not the GitHub duplicate.
        let gitea = Delivery::fixture(Forge::Gitea, "gitea/go-scm-push.json", "push");
        assert_eq!(
            one(gitea.set("X-GitHub-Delivery", "not-this")),
            "gitea-delivery-1"
        );
        let forgejo = Delivery::fixture(Forge::Forgejo, "forgejo/push-docs.json", "push");
        assert_eq!(
            one(forgejo.set("X-Gitea-Delivery", "not-this")),
            "forgejo-delivery-1"
        );
        let bb = Delivery::fixture(Forge::Bitbucket, "bitbucket/go-scm-push.json", "repo:push");
        assert_eq!(one(bb), "bitbucket-delivery-1");
        // GitLab: Idempotency-Key survives a resend, so it wins over the event UUID.
        assert_eq!(one(gl()), "gitlab-delivery-1-idem");
        assert_eq!(one(gl().remove("Idempotency-Key")), "gitlab-delivery-1");
        // None at all: derived from the body, the same for the same bytes.
        let derived = one(gh().remove("X-GitHub-Delivery"));
        let expected = format!(
            "sha256:{}",
            hex::encode(Sha256::digest(fixture("github/go-scm-push.json")))
        );
        assert_eq!(derived, expected);
        assert_eq!(one(gh().set("X-GitHub-Delivery", "")), expected);
        assert_eq!(
            one(gh().set("X-GitHub-Delivery", &"a".repeat(200))),
            "a".repeat(200)
        );
        check(
            gh().set("X-GitHub-Delivery", &"a".repeat(201)),
            "400 X-GitHub-Delivery header",
        );
        check(
            gh().set_bytes("X-GitHub-Delivery", b"id\xff"),
            "400 X-GitHub-Delivery header",
        );
        check(
            gh().set("X-GitHub-Delivery", "id\twith tab"),
            "400 X-GitHub-Delivery header",
        );
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

    #[test]
    fn names() {
        for forge in Forge::ALL {
            assert_eq!(Forge::from_name(forge.as_str()), Some(forge));
            assert_eq!(forge.to_string(), forge.as_str());
            let json = serde_json::to_string(&forge).expect("serialize");
            assert_eq!(json, format!("\"{forge}\""));
            assert_eq!(serde_json::from_str::<Forge>(&json).ok(), Some(forge));
        }
        assert_eq!(Forge::from_name("GitHub"), None);
        assert_eq!(Forge::from_name("gogs"), None);
        assert_eq!(
            push_headers(Forge::Gitlab, "u-1"),
            [
                ("X-Gitlab-Event", "Push Hook".to_string()),
                ("X-Gitlab-Event-UUID", "u-1".to_string())
            ]
        );
        assert_eq!(
            push_headers(Forge::Bitbucket, "u-2"),
            [
                ("X-Event-Key", "repo:push".to_string()),
                ("X-Request-UUID", "u-2".to_string())
            ]
        );
        assert_eq!(
            sign(Forge::Gitlab, SECRET, b"{}"),
            ("X-Gitlab-Token", "s3cret-for-tests".to_string())
        );
        assert_eq!(sign(Forge::Forgejo, SECRET, b"{}").0, "X-Forgejo-Signature");
        assert!(!sign(Forge::Gitea, SECRET, b"{}").1.contains('='));
        assert!(
            sign(Forge::Bitbucket, SECRET, b"{}")
                .1
                .starts_with("sha256=")
        );
    }
}
