//! Images: build on the build engine, push to a registry, and verify the push independently.
//!
//! # The chain of custody
//! A release is deployed by digest, and the digest is only worth something if it is known to
//! name exactly what was built. This module produces the first links of the chain:
//!
//! 1. [`build()`] returns the **image ID**: the sha256 of the image's config, as the engine
//!    computed it.
//! 2. [`push()`] returns the **manifest digest the engine reported** for the push
//!    (`TAG: digest: sha256:… size: N`).
//! 3. [`verify()`] does not trust the engine: it fetches the manifest of the tag back from the
//!    registry with a different client (oci-client), hashes the exact bytes it received, and
//!    requires `sha256(bytes)` = the registry's `Docker-Content-Digest` = the engine's digest,
//!    and the manifest's config digest = the image ID. Only then is the release "verified", and
//!    only `repository@digest` (never the tag) is handed on to the deploy.
//!
//! A tag is mutable: someone (or something) may push over it between our push and our check.
//! Verification fetches by tag on purpose, so that exactly that race is caught: the error
//! names both digests and nothing from the run deploys.
//!
//! # Failures
//! A registry that is down or answers 5xx is retried a bounded number of times with backoff
//! ([`ATTEMPTS`], [`FIRST_BACKOFF`]); refused credentials fail at once (retrying cannot fix them
//! and may lock the account); anything else fails at once with the engine's or registry's own
//! message.
//!
//! **Invariant:** nothing here decides what to deploy; it only produces and checks digests.
//!
//! # Layout
//! - `build`: tars the context and builds it on the engine, streaming the engine's output.
//! - `dockerignore`: which files of the context are left out, by Docker's rules.
//! - `push`: pushes a tag from the engine to its registry and reads back the engine's digest.
//! - `verify`: fetches the manifest with oci-client and checks it against the build and push.
//! - `retry`: how a registry failure is sorted, and the bounded retries with backoff that
//!   push and verify share.
//!
//! This file holds the public types and the parsing of image references.

mod build;
pub mod dockerignore;
mod push;
mod retry;
mod verify;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::bail;
use bollard::auth::DockerCredentials;
use bollard::errors::Error as DockerError;

use crate::config::RegistryConfig;
use crate::runner::LogSink;

pub use build::build;
pub use push::push;
pub use retry::{ATTEMPTS, FIRST_BACKOFF};
pub use verify::verify;

/// What to build, already resolved and rendered by the caller.
pub struct BuildRequest {
    /// The checkout the context must stay inside, symlinks followed.
    pub checkout: PathBuf,
    /// The directory sent as the build context (inside the checkout).
    pub context: PathBuf,
    /// The Dockerfile, relative to the context; always sent, even if `.dockerignore` names it.
    pub dockerfile: String,
    /// Build args (`ARG` values), already rendered.
    pub args: BTreeMap<String, String>,
    /// Labels put on the image (OCI revision, source, created; `hoist.run`, `hoist.app`), so
    /// that an image found on any host can be traced back to its commit and run.
    pub labels: BTreeMap<String, String>,
    /// Full references (`host[:port]/path:tag`) the image is tagged with; the first one is
    /// given to the build itself, the others are added afterwards.
    pub tags: Vec<String>,
}

/// What [`verify()`] established about a pushed tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// `sha256:…` of the manifest bytes the registry serves; the digest releases deploy by.
    pub manifest_digest: String,
    /// The manifest's config digest: equal to the image ID the engine built.
    pub config_digest: String,
    /// Length of the manifest in bytes (what `docker push` prints as `size: N`).
    pub size: u64,
}

// ---------------------------------------------------------------------------------------------
// References

/// Splits `host[:port]/path:tag` into (registry host, repository path, tag).
///
/// The registry host is required (hoist never guesses Docker Hub): the first component must
/// contain a `.` or a `:`, or be `localhost`. A reference by digest is refused: hoist pushes
/// and verifies tags, and deploys the digest it verified, rendered by [`digest_reference`].
pub fn parse_reference(r: &str) -> anyhow::Result<(String, String, String)> {
    let bad = |why: &str| {
        anyhow::anyhow!(
            "image reference {r:?} {why}: write it as host[:port]/path:tag, e.g. 127.0.0.1:5000/acme/web:abc1234"
        )
    };
    if r.is_empty() || r.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad("is empty or contains whitespace"));
    }
    if r.contains('@') {
        return Err(bad("names a digest"));
    }
    let (host, rest) = r
        .split_once('/')
        .ok_or_else(|| bad("names no registry host"))?;
    if !(host.contains('.') || host.contains(':') || host == "localhost") {
        return Err(bad("names no registry host"));
    }
    if host.starts_with(':') || host.ends_with(':') || host.matches(':').count() > 1 {
        return Err(bad("has a malformed registry host"));
    }
    // The tag is after the last ':' of the part after the host; a ':' before a '/' would be
    // part of a path, which the checks below refuse.
    let (path, tag) = match rest.rsplit_once(':') {
        Some((path, tag)) if !tag.contains('/') => (path, tag),
        _ => return Err(bad("has no tag")),
    };
    if !valid_tag(tag) {
        return Err(bad(
            "has an invalid tag (letters, digits, '_', '.', '-'; at most 128; not starting with '.' or '-')",
        ));
    }
    if path.is_empty() || !path.split('/').all(valid_path_component) {
        return Err(bad(
            "has an invalid repository path (lowercase letters, digits and single '.', '_', '-' between them)",
        ));
    }
    Ok((host.to_string(), path.to_string(), tag.to_string()))
}

/// Renders `host/path@digest` for a `host/path:tag` reference: what deploys use, never the tag.
pub fn digest_reference(reference: &str, digest: &str) -> anyhow::Result<String> {
    let (host, path, _tag) = parse_reference(reference)?;
    if !is_sha256_digest(digest) {
        bail!("{digest:?} is not a sha256 digest (sha256: and 64 lowercase hex digits)");
    }
    Ok(format!("{host}/{path}@{digest}"))
}

fn valid_tag(tag: &str) -> bool {
    let mut chars = tag.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric() || c == '_')
        && tag.len() <= 128
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// One path component of a repository name as the distribution spec allows it:
/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`.
fn valid_path_component(c: &str) -> bool {
    let bytes = c.as_bytes();
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if bytes.is_empty() || !alnum(bytes[0]) || !alnum(bytes[bytes.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if alnum(b) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && !alnum(bytes[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|b| b == b'-');
        if !ok {
            return false;
        }
    }
    true
}

fn is_sha256_digest(d: &str) -> bool {
    d.strip_prefix("sha256:").is_some_and(|hex| {
        hex.len() == 64
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// The repository part (`host/path`) of a reference and its tag.
fn repository_and_tag(reference: &str) -> anyhow::Result<(String, String)> {
    let (host, path, tag) = parse_reference(reference)?;
    Ok((format!("{host}/{path}"), tag))
}

// ---------------------------------------------------------------------------------------------
// Registry entries and credentials, for the build engine's pushes and the hosts' pulls alike

/// The registry host of an image reference, by tag (`host/path:tag`) or by digest
/// (`host/path@sha256:…`): its first component, when that names a host (hoist never guesses
/// Docker Hub, see [`parse_reference`]).
pub fn registry_host(reference: &str) -> Option<&str> {
    let (host, _) = reference.split_once('/')?;
    (host.contains('.') || host.contains(':') || host == "localhost").then_some(host)
}

/// The `[[registry]]` entry whose `host` is the reference's registry host.
pub fn registry_for<'a>(
    registries: &'a [RegistryConfig],
    reference: &str,
) -> Option<&'a RegistryConfig> {
    let host = registry_host(reference)?;
    registries.iter().find(|r| r.host == host)
}

/// The registry entry's login as a Docker engine takes it (push and create-image); None when
/// there is no entry or it has no username and password, and the engine goes anonymously.
/// The engine does the registry's token exchange (bearer challenges) from these itself.
pub fn engine_credentials(registry: Option<&RegistryConfig>) -> Option<DockerCredentials> {
    let r = registry?;
    let (username, password) = login(r)?;
    Some(DockerCredentials {
        username: Some(username.to_string()),
        password: Some(password.to_string()),
        serveraddress: Some(r.host.clone()),
        ..Default::default()
    })
}

/// Whether an engine's or registry's message says the credentials were refused or are missing
/// (401, denied, unauthorized, "no basic auth credentials").
pub fn refused_credentials(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    [
        "unauthorized",
        "authentication required",
        "denied",
        "no basic auth credentials",
        "incorrect username or password",
    ]
    .iter()
    .any(|s| m.contains(s))
        || has_status_401(&m)
}

/// "401" as a status of its own, not digits inside a word: a pull's message names the
/// manifest by digest, and 64 hex digits hold "401" often enough to matter.
fn has_status_401(m: &str) -> bool {
    m.match_indices("401").any(|(i, _)| {
        let alnum = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
        !alnum(m[..i].chars().next_back()) && !alnum(m[i + 3..].chars().next())
    })
}

/// What to tell a person whose registry refused hoist: which `[[registry]]` entry to fix, or
/// that one is missing. `message` is the engine's or registry's own words (never credentials:
/// neither the engine nor oci-client repeats a password).
pub fn refusal(host: &str, registry: Option<&RegistryConfig>, message: &str) -> String {
    match registry {
        Some(r) if login(r).is_some() => format!(
            "the registry {host} refused the credentials of its [[registry]] entry (host = {host:?}): \
             fix that entry's username and password in the agent's config ({message})"
        ),
        Some(_) => format!(
            "the registry {host} requires credentials: its [[registry]] entry (host = {host:?}) has \
             none; add username and password to it in the agent's config ({message})"
        ),
        None => format!(
            "the registry {host} requires credentials: add a [[registry]] entry with host = {host:?}, \
             username and password to the agent's config ({message})"
        ),
    }
}

// ---------------------------------------------------------------------------------------------
// Shared helpers

/// The username and password of a registry's entry, when it has both; without them push and
/// verify go to the registry anonymously.
fn login(r: &RegistryConfig) -> Option<(&str, &str)> {
    Some((r.username.as_ref()?.expose(), r.password.as_ref()?.expose()))
}

/// The engine's own message, without bollard's wrapping ("Docker responded with status code …").
pub fn engine_message(e: &DockerError) -> String {
    match e {
        DockerError::DockerResponseServerError { message, .. } => message.clone(),
        DockerError::DockerStreamError { error } => error.clone(),
        other => error_chain(other),
    }
}

/// An error and its causes, `: `-joined.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let _ = write!(text, ": {s}");
        source = s.source();
    }
    text
}

/// Sends text to the log as it came (build output carries its own newlines); waits while
/// the log's sink is full, which holds the engine's stream back.
async fn send(log: &LogSink, text: String) {
    // A closed log means nobody is listening any more (the run ended); the work goes on.
    log.send(text.into_bytes()).await;
}

/// Sends one line to the log, newline-terminated.
async fn say(log: &LogSink, mut line: String) {
    if !line.ends_with('\n') {
        line.push('\n');
    }
    send(log, line).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references() {
        assert_eq!(
            parse_reference("10.203.0.1:5000/acme/web:abc1234").unwrap(),
            (
                "10.203.0.1:5000".into(),
                "acme/web".into(),
                "abc1234".into()
            )
        );
        assert_eq!(
            parse_reference("registry.example.com/a/b/c:v1.2_3-x").unwrap(),
            (
                "registry.example.com".into(),
                "a/b/c".into(),
                "v1.2_3-x".into()
            )
        );
        assert_eq!(
            parse_reference("localhost/web:1").unwrap(),
            ("localhost".into(), "web".into(), "1".into())
        );
        for bad in [
            "acme/web:1",
            "web:1",
            "10.203.0.1:5000/acme/web",
            "10.203.0.1:5000/Acme/web:1",
            "10.203.0.1:5000/acme/web:.x",
            "10.203.0.1:5000/acme/web@sha256:00",
            "10.203.0.1:5000/acme//web:1",
            "10.203.0.1:5000/acme/web:1 ",
            "",
        ] {
            assert!(parse_reference(bad).is_err(), "{bad}");
        }
        let d = format!("sha256:{}", "ab".repeat(32));
        assert_eq!(
            digest_reference("10.203.0.1:5000/acme/web:abc", &d).unwrap(),
            format!("10.203.0.1:5000/acme/web@{d}")
        );
        assert!(digest_reference("10.203.0.1:5000/acme/web:abc", "sha256:xyz").is_err());
    }

    fn entry(host: &str, login: Option<(&str, &str)>) -> RegistryConfig {
        RegistryConfig {
            host: host.into(),
            insecure: true,
            username: login.map(|(u, _)| crate::config::Secret::new(u)),
            password: login.map(|(_, p)| crate::config::Secret::new(p)),
        }
    }

    #[test]
    fn a_reference_finds_its_registry_entry_by_host_by_tag_or_by_digest() {
        let d = format!("sha256:{}", "a".repeat(64));
        let registries = [
            entry("10.203.0.1:5000", None),
            entry("10.203.0.1:5001", Some(("ci", "pw"))),
        ];
        let by_digest = format!("10.203.0.1:5001/acme/web@{d}");
        assert_eq!(registry_host(&by_digest), Some("10.203.0.1:5001"));
        assert_eq!(
            registry_for(&registries, &by_digest).map(|r| r.host.as_str()),
            Some("10.203.0.1:5001")
        );
        assert_eq!(
            registry_for(&registries, "10.203.0.1:5000/acme/web:abc").map(|r| r.host.as_str()),
            Some("10.203.0.1:5000")
        );
        // Another port is another registry; a path without a host is no registry at all.
        assert!(registry_for(&registries, "10.203.0.1:5002/acme/web:abc").is_none());
        assert_eq!(registry_host("acme/web:abc"), None);
        assert_eq!(registry_host("localhost/web:abc"), Some("localhost"));
    }

    #[test]
    fn engine_credentials_come_from_an_entry_with_a_login_only() {
        let with = entry("r.example", Some(("ci", "pw")));
        let creds = engine_credentials(Some(&with)).unwrap();
        assert_eq!(creds.username.as_deref(), Some("ci"));
        assert_eq!(creds.password.as_deref(), Some("pw"));
        assert_eq!(creds.serveraddress.as_deref(), Some("r.example"));
        assert!(engine_credentials(Some(&entry("r.example", None))).is_none());
        assert!(engine_credentials(None).is_none());
    }

    #[test]
    fn refusals_name_the_entry_to_fix_and_never_the_password() {
        let with = entry("r.example:5001", Some(("ci", "s3cret-pw")));
        let msg = "unauthorized: authentication required";
        assert!(refused_credentials(msg));
        assert!(refused_credentials(
            "Head \"http://r/v2/x/manifests/y\": no basic auth credentials"
        ));
        assert!(!refused_credentials("manifest unknown"));
        assert!(refused_credentials("unexpected http status: 401"));
        assert!(!refused_credentials(
            "Head \"http://r/v2/x/manifests/sha256:9a401f\": connection refused"
        ));
        let wrong = refusal("r.example:5001", Some(&with), msg);
        assert!(
            wrong.contains(
                "refused the credentials of its [[registry]] entry (host = \"r.example:5001\")"
            ),
            "{wrong}"
        );
        assert!(!wrong.contains("s3cret-pw"), "{wrong}");
        let missing = refusal("r.example:5001", None, msg);
        assert!(
            missing.contains(
                "add a [[registry]] entry with host = \"r.example:5001\", username and password"
            ),
            "{missing}"
        );
        let no_login = refusal("r.example:5001", Some(&entry("r.example:5001", None)), msg);
        assert!(
            no_login.contains("has none; add username and password"),
            "{no_login}"
        );
    }
}
