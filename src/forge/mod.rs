//! Forge webhooks: verify a push delivery and normalize it into [`PushEvent`]s.
//!
//! One route per forge (`/hooks/github`, `/hooks/gitea`, ...), and the route alone decides how a
//! delivery is read: Gitea and Forgejo also send GitHub's headers, and Bitbucket reuses GitHub's
//! `X-Hub-Signature` name for a different hash, so guessing the forge from headers would let one
//! forge's header stand in for another's signature.
//!
//! [`receive`] works in a fixed order: decode the body, read the event header, find the
//! repository, look up its secret, verify, parse, normalize. The repository comes before
//! verification because secrets are per repository; it is found by a scan that keeps nothing
//! else (no tree: an unsigned 25 MB array costs one pass and no memory). Nothing from the body
//! is parsed or trusted before the signature (or GitLab's token) matched, except the name used
//! to pick the secret.
//!
//! The per-forge header names, signature schemes and payload quirks are documented, with
//! sources, in `tests/fixtures/webhooks/SOURCES.md`; the tests run every fixture there.
//!
//! # Layout
//! - this file: the model ([`Forge`], [`PushEvent`], [`Received`], [`ForgeError`]) and
//!   [`receive`] with the steps that read headers (body decoding, event, repository, delivery id).
//! - `signature`: each forge's signature scheme and [`sign`].
//! - `payload`: the pruned parse and the typed field readers the forge modules share.
//! - `github`, `gitea` (Gitea and Forgejo), `gitlab`, `bitbucket`: each forge's payloads, the
//!   fields read from them (`PAYLOAD`) and how they become ref updates.
//! - `status`: the other direction, commit statuses: each forge's request (route, auth header,
//!   body) for marking a commit, built as data for the outbox to send.
//! - `testkit` (tests only): the deliveries every module's tests send, and the fixture table.
//!
//! Invariant: this module does no I/O. It never stores, fetches or logs; the HTTP handler does.

mod bitbucket;
mod gitea;
mod github;
mod gitlab;
mod payload;
mod signature;
pub mod status;
#[cfg(test)]
mod testkit;

use std::borrow::Cow;

use axum::http::HeaderMap;
use serde_json::Value;
use sha2::{Digest, Sha256};

use payload::{Shape, shown};
pub use signature::sign;

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

    /// The fields [`receive`] reads from this forge's deliveries.
    fn payload(self) -> &'static Shape {
        match self {
            Forge::Github | Forge::Gitea | Forge::Forgejo => &github::PAYLOAD,
            Forge::Gitlab => &gitlab::PAYLOAD,
            Forge::Bitbucket => &bitbucket::PAYLOAD,
        }
    }

    /// Where a payload names its repository: (object, field).
    fn repo_field(self) -> (&'static str, &'static str) {
        match self {
            Forge::Gitlab => ("project", "path_with_namespace"),
            _ => ("repository", "full_name"),
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

use ForgeError::Malformed;

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
    let event = event_name(forge, headers)?;
    // Before the signature, only the repository's name is read, by a scan that builds no tree:
    // an unsigned body costs one pass and no memory, whatever its size or shape.
    let (object, field) = forge.repo_field();
    let scanned = payload::scan_repository(&decoded.json, object, field)?;
    let repo = repo_name(forge, scanned, &event)?;
    let secret = secret_for(&repo).ok_or_else(|| ForgeError::UnknownRepo(repo.clone()))?;
    signature::verify(forge, headers, decoded.signed(), &secret, &repo)?;
    let payload = payload::parse(&decoded.json, forge.payload())?;
    let delivery_id = delivery_id(forge, headers, body)?;
    let push = |p: &Value| -> Result<Received, ForgeError> {
        let update = match forge {
            Forge::Github | Forge::Gitea | Forge::Forgejo => github::push(p)?,
            Forge::Gitlab => gitlab::push(p)?,
            Forge::Bitbucket => return bitbucket::push(p, &delivery_id, &repo),
        };
        Ok(update.into_received(forge, &delivery_id, &repo))
    };
    match (forge, event.as_str()) {
        (Forge::Github, "ping") => Ok(ignored(&repo, "ping".into())),
        (Forge::Github | Forge::Gitea | Forge::Forgejo, "push") => push(&payload),
        // Gitea sends a `push` for the same ref as well; these add nothing to build.
        (Forge::Gitea | Forge::Forgejo, "create" | "delete") => {
            Ok(ignored(&repo, gitea::create_delete_what(&payload, &event)))
        }
        (Forge::Gitlab, "Push Hook" | "Tag Push Hook") => push(&payload),
        (Forge::Bitbucket, "repo:push") => push(&payload),
        (_, other) => Ok(ignored(&repo, format!("event '{other}'"))),
    }
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

/// The event name from the route's own event header, trimmed.
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

/// The repository the payload names, which picks the secret; read before verification, so
/// it is checked as a name and nothing else.
fn repo_name(forge: Forge, scanned: payload::Scanned, event: &str) -> Result<String, ForgeError> {
    let (object, field) = forge.repo_field();
    let path = format!("{object}.{field}");
    let repo = match scanned {
        payload::Scanned::Name(repo) => repo,
        payload::Scanned::WrongType(found) => {
            return Err(Malformed(format!(
                "field `{path}` should be a string, found {found}"
            )));
        }
        payload::Scanned::Missing if forge == Forge::Github && event == "ping" => {
            return Err(Malformed(
                "this ping carries no repository, so it comes from an organization or GitHub App \
                 webhook; hoist's secrets are per repository, so it can only verify repository \
                 webhooks (add the webhook in the repository's Settings → Webhooks)"
                    .into(),
            ));
        }
        payload::Scanned::Missing => {
            return Err(Malformed(format!(
                "field `{path}` is missing: hoist needs the repository to pick the secret that \
                 verifies the delivery (event '{event}')"
            )));
        }
    };
    if repo.is_empty() || repo.len() > MAX_REPO_NAME || repo.chars().any(char::is_control) {
        return Err(Malformed(format!(
            "field `{path}` is not a repository name: {}",
            shown(&repo)
        )));
    }
    Ok(repo)
}

/// The route's own delivery id header, or a digest of the body when there is none.
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

/// A verified delivery of `repo` with nothing to build.
fn ignored(repo: &str, what: String) -> Received {
    Received::Ignored {
        repo: Some(repo.to_string()),
        what,
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

#[cfg(test)]
mod tests {
    //! A delivery through [`receive`] end to end: every fixture, body decoding, event
    //! dispatch, delivery ids and names. Signatures are tested in `signature`, payload shapes
    //! in `payload`.

    use super::testkit::{Delivery, FIXTURES, SECRET, check, expected, fixture, render};
    use super::*;

    #[test]
    fn fixtures() {
        for &(forge, file, event, expect) in FIXTURES {
            check(Delivery::fixture(forge, file, event), expect);
        }
    }

    /// A fixture added to the folder without a case in [`FIXTURES`] fails, so none goes
    /// untested.
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

    fn form(json: &[u8]) -> Vec<u8> {
        form_urlencoded::Serializer::new(String::new())
            .append_pair(
                "payload",
                std::str::from_utf8(json).expect("fixture is UTF-8"),
            )
            .finish()
            .into_bytes()
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
