//! Images: build on the build engine, push to a registry, and verify the push independently.
//!
//! # The chain of custody
//! A release is deployed by digest, and the digest is only worth something if it is known to
//! name exactly what was built. This module produces the first links of the chain:
//!
//! 1. [`build`] returns the **image ID**: the sha256 of the image's config, as the engine
//!    computed it.
//! 2. [`push`] returns the **manifest digest the engine reported** for the push
//!    (`TAG: digest: sha256:… size: N`).
//! 3. [`verify`] does not trust the engine: it fetches the manifest of the tag back from the
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

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bollard::Docker;
use bollard::auth::DockerCredentials;
use bollard::body_full;
use bollard::errors::Error as DockerError;
use bollard::query_parameters::{
    BuildImageOptionsBuilder, PushImageOptionsBuilder, TagImageOptionsBuilder,
};
use futures_util::StreamExt;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::{DigestError, OciDistributionError};
use oci_client::manifest::{
    IMAGE_MANIFEST_LIST_MEDIA_TYPE, IMAGE_MANIFEST_MEDIA_TYPE, OCI_IMAGE_INDEX_MEDIA_TYPE,
    OCI_IMAGE_MEDIA_TYPE,
};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use sha2::{Digest as _, Sha256};
use tokio_util::sync::CancellationToken;

use crate::config::RegistryConfig;
use crate::runner::LogSink;

/// How many times a registry that is down or answers 5xx is tried before giving up.
pub const ATTEMPTS: u32 = 4;
/// The wait after the first failed attempt; doubled after each further one (0.5 + 1 + 2 s),
/// so a registry that stays down is reported within a few seconds, while a registry that is
/// restarting (a second or two) is ridden out.
pub const FIRST_BACKOFF: Duration = Duration::from_millis(500);

/// How long [`verify`] waits for a TCP connection to the registry. A blackholed registry
/// would otherwise hold each attempt for the OS's connect timeout (minutes).
const REGISTRY_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long [`verify`] waits for the registry's answer once connected; a manifest is a few KiB.
const REGISTRY_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// The manifest types [`verify`] accepts, OCI and Docker alike. All four must be offered: a
/// registry that finds none of the pushed manifest's type in `Accept` may convert it (to
/// schema 1) or refuse, and a converted manifest has other bytes and so another digest.
const MANIFEST_TYPES: &[&str] = &[
    OCI_IMAGE_MEDIA_TYPE,
    OCI_IMAGE_INDEX_MEDIA_TYPE,
    IMAGE_MANIFEST_MEDIA_TYPE,
    IMAGE_MANIFEST_LIST_MEDIA_TYPE,
];

/// What to build, already resolved and rendered by the caller.
pub struct BuildRequest {
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

/// What [`verify`] established about a pushed tag.
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
// Build

/// Builds the image on the engine and returns its ID (`sha256:…`).
///
/// The context is tarred here honouring `.dockerignore` with Docker's semantics (see
/// `Ignore`); build output streams into `log` line by line; a failing instruction fails with
/// the builder's own message ("The command '/bin/sh -c exit 7' returned a non-zero code: 7");
/// `cancel` stops waiting and drops the connection, which makes the engine abort the build.
pub async fn build(
    docker: &Docker,
    req: &BuildRequest,
    log: &LogSink,
    cancel: &CancellationToken,
) -> anyhow::Result<String> {
    let tags = req
        .tags
        .iter()
        .map(|t| repository_and_tag(t))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let dockerfile = normalize_dockerfile(&req.dockerfile)?;

    let context = req.context.clone();
    let df = dockerfile.clone();
    // Walking and reading a large context is blocking file I/O: keep it off the runtime.
    let packed = tokio::task::spawn_blocking(move || pack_context(&context, &df))
        .await
        .context("packing the build context panicked")??;
    say(
        log,
        format!(
            "Sending build context to the engine: {} files, {}",
            packed.files,
            human_size(packed.tar.len() as u64)
        ),
    );
    if cancel.is_cancelled() {
        bail!("the image build was cancelled");
    }

    let args: HashMap<&str, &str> = req
        .args
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let labels: HashMap<&str, &str> = req
        .labels
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let mut options = BuildImageOptionsBuilder::default()
        .dockerfile(&dockerfile)
        .buildargs(&args)
        .labels(&labels)
        // Intermediate containers go away even when a step fails: a failing pipeline must
        // not leave litter on the builder.
        .rm(true)
        .forcerm(true);
    if let Some(first) = req.tags.first() {
        options = options.t(first);
    }

    let mut stream = docker.build_image(options.build(), None, Some(body_full(packed.tar.into())));
    let mut image_id = None;
    loop {
        let item = tokio::select! {
            biased;
            // Dropping the stream closes the connection; the engine cancels the build and
            // kills the container of the running step.
            _ = cancel.cancelled() => {
                say(log, "Build cancelled".to_string());
                bail!("the image build was cancelled");
            }
            item = stream.next() => item,
        };
        let info = match item {
            None => break,
            Some(Ok(info)) => info,
            Some(Err(DockerError::DockerStreamError { error })) => {
                say(log, error.clone());
                bail!("the image build failed: {error}");
            }
            Some(Err(e)) => bail!("the image build failed: {}", engine_message(&e)),
        };
        if let Some(text) = info.stream {
            send(log, text);
        }
        if let Some(status) = info.status {
            // Pull progress of FROM images: one line per state, not one per progress tick.
            if info
                .progress_detail
                .as_ref()
                .is_none_or(|p| p.current.is_none())
            {
                let line = match info.id {
                    Some(id) => format!("{id}: {status}"),
                    None => status,
                };
                say(log, line);
            }
        }
        if let Some(id) = info.aux.and_then(|aux| aux.id) {
            image_id = Some(id);
        }
    }

    let image_id = match image_id {
        Some(id) => id,
        // Engines that do not send the aux record: the first tag names the image just built.
        None => match req.tags.first() {
            Some(first) => docker
                .inspect_image(first)
                .await
                .map_err(|e| {
                    anyhow::anyhow!(
                        "cannot inspect the built image {first}: {}",
                        engine_message(&e)
                    )
                })?
                .id
                .with_context(|| format!("the engine reports no ID for the built image {first}"))?,
            None => bail!("the build engine did not report the ID of the image it built"),
        },
    };

    for (repo, tag) in tags.iter().skip(1) {
        docker
            .tag_image(
                &image_id,
                Some(
                    TagImageOptionsBuilder::default()
                        .repo(repo)
                        .tag(tag)
                        .build(),
                ),
            )
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "cannot tag {image_id} as {repo}:{tag}: {}",
                    engine_message(&e)
                )
            })?;
    }
    say(log, format!("Built image {image_id}"));
    Ok(image_id)
}

/// Checks that the Dockerfile path stays inside the context, and gives it as Docker expects
/// it in the context tar (relative, `/`-separated, no `./`).
fn normalize_dockerfile(dockerfile: &str) -> anyhow::Result<String> {
    let p = Path::new(dockerfile);
    if p.is_absolute() {
        bail!("dockerfile {dockerfile:?} must be relative to the build context");
    }
    let mut parts = Vec::new();
    for c in p.components() {
        match c {
            std::path::Component::Normal(s) => parts.push(s.to_string_lossy().into_owned()),
            std::path::Component::CurDir => {}
            _ => bail!("dockerfile {dockerfile:?} must stay inside the build context (no '..')"),
        }
    }
    if parts.is_empty() {
        bail!("dockerfile {dockerfile:?} names no file");
    }
    Ok(parts.join("/"))
}

/// The build context as a tar, and how many files went in.
struct Packed {
    tar: Vec<u8>,
    files: usize,
}

/// Tars `context`, leaving out what `.dockerignore` excludes. The Dockerfile and
/// `.dockerignore` are always sent, as the docker CLI does: the engine needs the Dockerfile,
/// and removes both itself afterwards if `.dockerignore` names them.
///
/// Entries are written in sorted order with owner 0:0 (as the docker CLI sends them), so the
/// same checkout gives the same context.
fn pack_context(context: &Path, dockerfile: &str) -> anyhow::Result<Packed> {
    let meta = std::fs::metadata(context)
        .with_context(|| format!("build context {} cannot be read", context.display()))?;
    if !meta.is_dir() {
        bail!("build context {} is not a directory", context.display());
    }
    let df_path = context.join(dockerfile);
    if !df_path.is_file() {
        bail!(
            "the Dockerfile {dockerfile} does not exist in the build context {}",
            context.display()
        );
    }
    let ignore_file = context.join(".dockerignore");
    let ignore_text = match std::fs::read_to_string(&ignore_file) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", ignore_file.display())),
    };
    let mut ignore =
        Ignore::parse(&ignore_text).with_context(|| format!("{}", ignore_file.display()))?;
    ignore.always_send(dockerfile);
    ignore.always_send(".dockerignore");

    let mut builder = tar::Builder::new(Vec::new());
    let mut files = 0;
    walk(context, "", &ignore, &mut builder, &mut files)?;
    let tar = builder
        .into_inner()
        .context("cannot finish the build context tar")?;
    Ok(Packed { tar, files })
}

/// Adds the entries of `dir` (`rel` inside the context, "" for the root) to the tar.
fn walk(
    dir: &Path,
    rel: &str,
    ignore: &Ignore,
    tar: &mut tar::Builder<Vec<u8>>,
    files: &mut usize,
) -> anyhow::Result<()> {
    let mut entries = std::fs::read_dir(dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .collect::<io::Result<Vec<_>>>()
        .with_context(|| format!("cannot list {}", dir.display()))?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        let rel = if rel.is_empty() {
            name
        } else {
            format!("{rel}/{name}")
        };
        let meta = std::fs::symlink_metadata(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let excluded = ignore.excludes(&rel);
        if meta.is_dir() {
            if !excluded {
                append_entry(tar, &rel, &path, &meta)?;
                walk(&path, &rel, ignore, tar, files)?;
            } else if ignore.may_include_under(&rel) {
                // An exception (`!dir/keep`) may bring back something below an excluded
                // directory: look inside, without sending the directory entry itself.
                walk(&path, &rel, ignore, tar, files)?;
            }
        } else if !excluded && (meta.is_file() || meta.file_type().is_symlink()) {
            append_entry(tar, &rel, &path, &meta)?;
            *files += 1;
        }
        // Sockets, fifos and devices are not build inputs; the docker CLI skips them too.
    }
    Ok(())
}

fn append_entry(
    tar: &mut tar::Builder<Vec<u8>>,
    rel: &str,
    path: &Path,
    meta: &std::fs::Metadata,
) -> anyhow::Result<()> {
    let mut header = tar::Header::new_gnu();
    header.set_metadata_in_mode(meta, tar::HeaderMode::Complete);
    // The CLI sends every entry as root's: the builder's COPY then owns files by root unless
    // told otherwise, whoever checked out the repository on the agent.
    header.set_uid(0);
    header.set_gid(0);
    let result = if meta.is_dir() {
        header.set_size(0);
        tar.append_data(&mut header, format!("{rel}/"), io::empty())
    } else if meta.file_type().is_symlink() {
        let target = std::fs::read_link(path)
            .with_context(|| format!("cannot read the link {}", path.display()))?;
        header.set_size(0);
        tar.append_link(&mut header, rel, target)
    } else {
        let file =
            std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
        tar.append_data(&mut header, rel, file)
    };
    result.with_context(|| format!("cannot add {} to the build context", path.display()))
}

// ---------------------------------------------------------------------------------------------
// .dockerignore

/// `.dockerignore` with Docker's semantics (moby's `patternmatcher`, as the docker CLI applies
/// it), which differ from `.gitignore`: a pattern is anchored at the context root (`foo`
/// is only `./foo`, never `a/foo`), `*` and `?` never cross a `/`, `**` crosses any number of
/// directories, a pattern matching a directory excludes everything below it, and the last
/// matching pattern wins, so `!pattern` re-includes. That is why the `ignore` crate (gitignore
/// rules) is not used here.
struct Ignore {
    patterns: Vec<Pattern>,
}

struct Pattern {
    /// `!pattern`: a match re-includes.
    exception: bool,
    /// The cleaned pattern text, without `!`.
    text: String,
    tokens: Vec<Token>,
    /// How many path components the pattern has: a path whose first that-many components
    /// match is below a matching directory.
    depth: usize,
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Literal(char),
    /// `?`: one character other than `/`.
    One,
    /// `*`: any run of characters other than `/`.
    Star,
    /// `**` (with a following `/` swallowed) not at the end: nothing, or anything ending in `/`.
    AnyDirs,
    /// `**` at the end: anything.
    Rest,
    /// `[…]` / `[^…]`.
    Class {
        negated: bool,
        ranges: Vec<(char, char)>,
    },
}

impl Ignore {
    /// Parses `.dockerignore` text: `#` comments (only at the very start of a line), blank
    /// lines skipped, surrounding whitespace trimmed, each pattern cleaned like a path and
    /// made relative (a leading `/` means the context root).
    fn parse(text: &str) -> anyhow::Result<Ignore> {
        let mut patterns = Vec::new();
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        for (n, line) in text.lines().enumerate() {
            if line.starts_with('#') {
                continue;
            }
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            let (exception, body) = match line.strip_prefix('!') {
                Some(rest) => (true, rest.trim()),
                None => (false, line),
            };
            if body.is_empty() {
                bail!("line {}: \"!\" alone is not a pattern", n + 1);
            }
            let mut cleaned = clean_path(body);
            if cleaned.len() > 1 && cleaned.starts_with('/') {
                cleaned.remove(0);
            }
            let tokens = compile(&cleaned).with_context(|| format!("line {}: {line:?}", n + 1))?;
            patterns.push(Pattern {
                exception,
                depth: cleaned.split('/').count(),
                text: cleaned,
                tokens,
            });
        }
        Ok(Ignore { patterns })
    }

    /// Adds a final exception for `rel`, so that it is sent whatever the patterns say.
    fn always_send(&mut self, rel: &str) {
        let text = rel.to_string();
        let tokens = text.chars().map(Token::Literal).collect();
        self.patterns.push(Pattern {
            exception: true,
            depth: text.split('/').count(),
            text,
            tokens,
        });
    }

    /// Whether `rel` (a `/`-separated path relative to the context) is left out: the last
    /// pattern matching it, or one of its parent directories, decides.
    fn excludes(&self, rel: &str) -> bool {
        let parents: Vec<&str> = match rel.rfind('/') {
            Some(i) => rel[..i].split('/').collect(),
            None => Vec::new(),
        };
        let mut excluded = false;
        for p in &self.patterns {
            let mut matched = glob_match(&p.tokens, &rel.chars().collect::<Vec<_>>());
            if !matched && !parents.is_empty() && p.depth <= parents.len() {
                let prefix = parents[..p.depth].join("/");
                matched = glob_match(&p.tokens, &prefix.chars().collect::<Vec<_>>());
            }
            if matched {
                excluded = !p.exception;
            }
        }
        excluded
    }

    /// Whether some exception could match a path below the excluded directory `dir`, so the
    /// walk must look inside it. Compared component by component; a `**` could match anything.
    fn may_include_under(&self, dir: &str) -> bool {
        let dir_parts: Vec<&str> = dir.split('/').collect();
        self.patterns.iter().filter(|p| p.exception).any(|p| {
            let parts: Vec<&str> = p.text.split('/').collect();
            for (i, d) in dir_parts.iter().enumerate() {
                let Some(part) = parts.get(i) else {
                    return false;
                };
                if part.contains("**") {
                    return true;
                }
                let Ok(tokens) = compile(part) else {
                    return false;
                };
                if !glob_match(&tokens, &d.chars().collect::<Vec<_>>()) {
                    return false;
                }
            }
            parts.len() > dir_parts.len()
        })
    }
}

/// Go's `filepath.Clean` on a `/`-separated path: no empty or `.` components, `..` resolved
/// lexically, no trailing `/`; "" becomes ".".
fn clean_path(p: &str) -> String {
    let rooted = p.starts_with('/');
    let mut out: Vec<&str> = Vec::new();
    for part in p.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if out.last().is_some_and(|l| *l != "..") {
                    out.pop();
                } else if !rooted {
                    out.push("..");
                }
            }
            other => out.push(other),
        }
    }
    let joined = out.join("/");
    match (rooted, joined.is_empty()) {
        (true, _) => format!("/{joined}"),
        (false, true) => ".".to_string(),
        (false, false) => joined,
    }
}

/// Compiles a cleaned pattern the way moby turns it into a regular expression.
fn compile(pattern: &str) -> anyhow::Result<Vec<Token>> {
    let chars: Vec<char> = pattern.chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        i += 1;
        match c {
            '*' if chars.get(i) == Some(&'*') => {
                i += 1;
                if chars.get(i) == Some(&'/') {
                    i += 1;
                }
                tokens.push(if i >= chars.len() {
                    Token::Rest
                } else {
                    Token::AnyDirs
                });
            }
            '*' => tokens.push(Token::Star),
            '?' => tokens.push(Token::One),
            '\\' => match chars.get(i) {
                Some(&next) => {
                    i += 1;
                    tokens.push(Token::Literal(next));
                }
                None => tokens.push(Token::Literal('\\')),
            },
            '[' => {
                let negated = chars.get(i) == Some(&'^');
                if negated {
                    i += 1;
                }
                let mut ranges = Vec::new();
                let mut closed = false;
                let mut first = true;
                while i < chars.len() {
                    let mut lo = chars[i];
                    i += 1;
                    if lo == ']' && !first {
                        closed = true;
                        break;
                    }
                    first = false;
                    if lo == '\\' {
                        let Some(&escaped) = chars.get(i) else { break };
                        lo = escaped;
                        i += 1;
                    }
                    let mut hi = lo;
                    if chars.get(i) == Some(&'-') && chars.get(i + 1).is_some_and(|c| *c != ']') {
                        hi = chars[i + 1];
                        i += 2;
                        if hi == '\\' {
                            let Some(&escaped) = chars.get(i) else { break };
                            hi = escaped;
                            i += 1;
                        }
                        if hi < lo {
                            bail!("invalid character range {lo}-{hi}");
                        }
                    }
                    ranges.push((lo, hi));
                }
                if !closed {
                    bail!("unterminated character class '['");
                }
                tokens.push(Token::Class { negated, ranges });
            }
            other => tokens.push(Token::Literal(other)),
        }
    }
    Ok(tokens)
}

/// Whether the whole of `s` matches `tokens` (backtracking; patterns and paths are short).
fn glob_match(tokens: &[Token], s: &[char]) -> bool {
    let Some((first, rest)) = tokens.split_first() else {
        return s.is_empty();
    };
    match first {
        Token::Literal(c) => s.first() == Some(c) && glob_match(rest, &s[1..]),
        Token::One => s.first().is_some_and(|c| *c != '/') && glob_match(rest, &s[1..]),
        Token::Class { negated, ranges } => {
            s.first()
                .is_some_and(|c| ranges.iter().any(|(lo, hi)| (lo..=hi).contains(&c)) != *negated)
                && glob_match(rest, &s[1..])
        }
        Token::Star => {
            let run = s.iter().take_while(|c| **c != '/').count();
            (0..=run).any(|k| glob_match(rest, &s[k..]))
        }
        Token::AnyDirs => {
            glob_match(rest, s)
                || s.iter()
                    .enumerate()
                    .filter(|(_, c)| **c == '/')
                    .any(|(i, _)| glob_match(rest, &s[i + 1..]))
        }
        Token::Rest => (0..=s.len()).any(|k| glob_match(rest, &s[k..])),
    }
}

// ---------------------------------------------------------------------------------------------
// Push

/// Pushes `reference` (`host/path:tag`) from the engine to its registry and returns the
/// manifest digest the engine reported.
///
/// The digest comes from the engine's status line `TAG: digest: sha256:… size: N`; if an
/// engine does not print it, from the image's `RepoDigests` for this repository (only when
/// that is unambiguous). Whether the registry really holds it is [`verify`]'s business.
pub async fn push(
    docker: &Docker,
    reference: &str,
    registry: Option<&RegistryConfig>,
    log: &LogSink,
) -> anyhow::Result<String> {
    let (host, path, tag) = parse_reference(reference)?;
    let repo = format!("{host}/{path}");
    let credentials = registry.and_then(|r| {
        let (user, pass) = (r.username.as_ref()?, r.password.as_ref()?);
        Some(DockerCredentials {
            username: Some(user.expose().to_string()),
            password: Some(pass.expose().to_string()),
            serveraddress: Some(r.host.clone()),
            ..Default::default()
        })
    });
    let attempt = || push_once(docker, &repo, &tag, credentials.clone(), log);
    let digest = with_retries(&host, registry.is_some(), Some(log), attempt).await?;
    say(log, format!("Pushed {reference}: {digest}"));
    Ok(digest)
}

async fn push_once(
    docker: &Docker,
    repo: &str,
    tag: &str,
    credentials: Option<DockerCredentials>,
    log: &LogSink,
) -> Result<String, Failure> {
    let options = PushImageOptionsBuilder::default().tag(tag).build();
    let mut stream = docker.push_image(repo, Some(options), credentials);
    let mut digest = None;
    while let Some(item) = stream.next().await {
        let info = match item {
            Ok(info) => info,
            Err(DockerError::DockerStreamError { error }) => {
                say(log, error.clone());
                if error.contains("server gave HTTP response to HTTPS client") {
                    // Retrying cannot help: the engine's own configuration decides the scheme.
                    let host = repo.split('/').next().unwrap_or(repo);
                    return Err(Failure::Other(format!(
                        "{error}: the build engine treats {host} as an HTTPS registry; start its dockerd with --insecure-registry {host} (lab and loopback registries only)"
                    )));
                }
                return Err(Failure::classify(error));
            }
            Err(DockerError::DockerResponseServerError {
                status_code,
                message,
            }) => {
                // The engine answered before pushing anything: unknown image (404), or its
                // own trouble. Only a registry error inside the message is worth retrying.
                return Err(if status_code == 404 {
                    Failure::Other(message)
                } else {
                    Failure::classify(message)
                });
            }
            Err(e) => {
                return Err(Failure::Other(format!(
                    "the build engine failed the push: {}",
                    engine_message(&e)
                )));
            }
        };
        let Some(status) = info.status else { continue };
        if let Some(d) = digest_in_status(&status, tag) {
            digest = Some(d);
        }
        // PushImageInfo carries no layer id, so per-layer progress ticks ("Pushing" with
        // byte counts) would be noise without saying which layer: only state changes go in.
        if info
            .progress_detail
            .as_ref()
            .is_none_or(|p| p.current.is_none())
        {
            say(log, status);
        }
    }
    if let Some(d) = digest {
        return Ok(d);
    }
    // Fallback: what the engine recorded for this repository after the push.
    let reference = format!("{repo}:{tag}");
    let inspect = docker.inspect_image(&reference).await.map_err(|e| {
        Failure::Other(format!(
            "cannot inspect {reference} after the push: {}",
            engine_message(&e)
        ))
    })?;
    let prefix = format!("{repo}@");
    let found: Vec<String> = inspect
        .repo_digests
        .unwrap_or_default()
        .into_iter()
        .filter_map(|d| d.strip_prefix(&prefix).map(str::to_string))
        .collect();
    match found.as_slice() {
        [one] => Ok(one.clone()),
        _ => Err(Failure::Other(format!(
            "the engine pushed {reference} but reported no digest for it"
        ))),
    }
}

/// The digest in the engine's final push status, `TAG: digest: sha256:… size: N`.
fn digest_in_status(status: &str, tag: &str) -> Option<String> {
    let rest = status.strip_prefix(tag)?.strip_prefix(": digest: ")?;
    let digest = rest.split_whitespace().next()?;
    is_sha256_digest(digest).then(|| digest.to_string())
}

// ---------------------------------------------------------------------------------------------
// Verify

/// Fetches the manifest of `reference` back from the registry, independently of the engine,
/// and checks it against what the engine built and pushed (see the module docs).
///
/// Uses oci-client's `pull_manifest_raw`: it returns the exact bytes received and the
/// registry's `Docker-Content-Digest`, which it has already checked against the sha256 of
/// those bytes (a registry serving bytes that do not hash to its own header is an error, which
/// is reported here as such). When a registry sends no header at all, oci-client returns the
/// sha256 of the bytes instead; the decisive comparison (bytes against the engine's digest)
/// holds either way, so no hand-made HTTP request is needed.
///
/// Plain HTTP only when the registry's entry says `insecure`, or when there is no entry and the
/// registry is on loopback.
pub async fn verify(
    reference: &str,
    registry: Option<&RegistryConfig>,
    engine_digest: &str,
    image_id: &str,
) -> anyhow::Result<Verified> {
    let (host, path, tag) = parse_reference(reference)?;
    let insecure = match registry {
        Some(r) => r.insecure,
        None => is_loopback(&host),
    };
    let config = ClientConfig {
        // oci-client compares the exception list with the reference's registry exactly,
        // port included ("10.203.0.1:5000"); a bare host would silently mean HTTPS.
        protocol: if insecure {
            ClientProtocol::HttpsExcept(vec![host.clone()])
        } else {
            ClientProtocol::Https
        },
        connect_timeout: Some(REGISTRY_CONNECT_TIMEOUT),
        read_timeout: Some(REGISTRY_READ_TIMEOUT),
        // An index is reported, not resolved to "this machine's platform": the engine pushed
        // one image, and that is what must be there.
        platform_resolver: None,
        ..Default::default()
    };
    // `Client::new` would fall back to a default (HTTPS-only) client on a config error.
    let client = Client::try_from(config).context("cannot set up the registry client")?;
    let auth = match registry {
        Some(RegistryConfig {
            username: Some(u),
            password: Some(p),
            ..
        }) => RegistryAuth::Basic(u.expose().to_string(), p.expose().to_string()),
        _ => RegistryAuth::Anonymous,
    };
    let oci_ref = Reference::with_tag(host.clone(), path, tag);

    let attempt = || async {
        client
            .pull_manifest_raw(&oci_ref, &auth, MANIFEST_TYPES)
            .await
            .map_err(|e| Failure::from_oci(e, reference, &host))
    };
    let (bytes, header_digest) = with_retries(&host, registry.is_some(), None, attempt).await?;

    let computed = format!("sha256:{}", hex::encode(Sha256::digest(&bytes)));
    if header_digest != computed {
        bail!(
            "the registry {host} says the manifest of {reference} is {header_digest} but serves bytes hashing to {computed}; nothing from this run deploys"
        );
    }
    if computed != engine_digest {
        bail!(
            "the registry holds {computed} for {reference} but the engine pushed {engine_digest}; nothing from this run deploys"
        );
    }
    let manifest: serde_json::Value = serde_json::from_slice(&bytes)
        .with_context(|| format!("the manifest {computed} of {reference} is not JSON"))?;
    if manifest.get("manifests").is_some() {
        bail!(
            "the registry holds an image index {computed} for {reference}, not the single image the engine built ({image_id}); nothing from this run deploys"
        );
    }
    let config_digest = manifest
        .pointer("/config/digest")
        .and_then(|d| d.as_str())
        .with_context(|| format!("the manifest {computed} of {reference} names no config"))?
        .to_string();
    if config_digest != image_id {
        bail!(
            "the manifest {computed} of {reference} names the image {config_digest} but the engine built {image_id}; nothing from this run deploys"
        );
    }
    Ok(Verified {
        manifest_digest: computed,
        config_digest,
        size: bytes.len() as u64,
    })
}

/// `127.0.0.1[:port]`, `localhost[:port]`, `[::1][:port]`: a registry only this machine reaches.
fn is_loopback(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(rest),
        None => host.rsplit_once(':').map_or(host, |(h, _)| h),
    };
    name == "localhost"
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

// ---------------------------------------------------------------------------------------------
// Failures and retries

/// How a registry operation failed, which decides whether to try again.
#[derive(Debug, Clone, PartialEq)]
enum Failure {
    /// 401, denied, unauthorized: the credentials (or their absence) were refused.
    Credentials(String),
    /// Could not connect, timed out, or 5xx: the registry is down or struggling.
    Unavailable(String),
    /// Anything else (unknown image, unknown manifest, a digest that does not verify): final.
    Other(String),
}

impl Failure {
    /// Sorts an engine's error message, which is all the engine gives about the registry.
    fn classify(message: String) -> Failure {
        let m = message.to_ascii_lowercase();
        let refused = [
            "unauthorized",
            "authentication required",
            "denied",
            "no basic auth credentials",
            "incorrect username or password",
            "401",
        ];
        let unavailable = [
            "connection refused",
            "no route to host",
            "network is unreachable",
            "i/o timeout",
            "timeout exceeded",
            "tls handshake timeout",
            "connection reset",
            "eof",
            "unexpected http status: 5",
            "500 internal server error",
            "502 bad gateway",
            "503 service unavailable",
            "504 gateway timeout",
        ];
        if refused.iter().any(|s| m.contains(s)) {
            Failure::Credentials(message)
        } else if unavailable.iter().any(|s| m.contains(s)) {
            Failure::Unavailable(message)
        } else {
            Failure::Other(message)
        }
    }

    fn from_oci(e: OciDistributionError, reference: &str, host: &str) -> Failure {
        let chain = error_chain(&e);
        // rustls meeting a plain-HTTP answer: a config mistake, not an outage; say which.
        if chain.contains("InvalidContentType") || chain.contains("corrupt message") {
            return Failure::Other(format!(
                "the registry {host} answers plain HTTP, not HTTPS: if that is intended (lab or loopback only), set insecure = true in its [[registry]] entry ({chain})"
            ));
        }
        match e {
            OciDistributionError::UnauthorizedError { .. }
            | OciDistributionError::AuthenticationFailure(_) => Failure::Credentials(e.to_string()),
            OciDistributionError::ServerError { code, .. } if code >= 500 => {
                Failure::Unavailable(e.to_string())
            }
            OciDistributionError::ServerError {
                code: 401 | 403, ..
            } => Failure::Credentials(e.to_string()),
            OciDistributionError::RequestError(ref r)
                if r.is_connect() || r.is_timeout() || r.is_request() || r.is_body() =>
            {
                // reqwest's own Display stops at "error sending request"; the cause says why.
                Failure::Unavailable(chain)
            }
            OciDistributionError::RegistryError { ref envelope, .. } => {
                let codes: Vec<String> = envelope
                    .errors
                    .iter()
                    .map(|e| format!("{:?}", e.code))
                    .collect();
                let text = format!("{chain} ({})", codes.join(", "));
                if codes.iter().any(|c| c == "Unauthorized" || c == "Denied") {
                    Failure::Credentials(text)
                } else if codes
                    .iter()
                    .any(|c| c == "ManifestUnknown" || c == "NameUnknown")
                {
                    Failure::Other(format!(
                        "the registry has no manifest for {reference}: {text}"
                    ))
                } else {
                    Failure::Other(text)
                }
            }
            OciDistributionError::DigestError(DigestError::VerificationError {
                expected,
                actual,
            }) => Failure::Other(format!(
                "the registry says the manifest of {reference} is {expected} but serves bytes hashing to {actual}; nothing from this run deploys"
            )),
            _ => Failure::Other(chain),
        }
    }
}

/// Runs `attempt` up to [`ATTEMPTS`] times while the registry is unavailable, waiting
/// [`FIRST_BACKOFF`], then twice as long each time. Retry notices go to `log` when given.
async fn with_retries<T, F, Fut>(
    host: &str,
    has_entry: bool,
    log: Option<&LogSink>,
    mut attempt: F,
) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Failure>>,
{
    let started = Instant::now();
    let mut delay = FIRST_BACKOFF;
    for n in 1..=ATTEMPTS {
        match attempt().await {
            Ok(value) => return Ok(value),
            Err(Failure::Credentials(msg)) if has_entry => {
                bail!(
                    "the registry {host} refused the credentials of its [[registry]] entry: {msg}"
                )
            }
            Err(Failure::Credentials(msg)) => bail!(
                "the registry {host} requires credentials: add a [[registry]] entry with host = {host:?}, username and password to the agent's config ({msg})"
            ),
            Err(Failure::Other(msg)) => bail!("{msg}"),
            Err(Failure::Unavailable(msg)) if n == ATTEMPTS => bail!(
                "the registry {host} is unavailable: {ATTEMPTS} attempts over {} failed; last error: {msg}",
                humantime::format_duration(Duration::from_millis(
                    started.elapsed().as_millis() as u64
                ))
            ),
            Err(Failure::Unavailable(msg)) => {
                let notice = format!(
                    "registry {host} unavailable (attempt {n} of {ATTEMPTS}): {msg}; retrying in {}",
                    humantime::format_duration(delay)
                );
                tracing::warn!("{notice}");
                if let Some(log) = log {
                    say(log, notice);
                }
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
        }
    }
    unreachable!("the last attempt returns")
}

// ---------------------------------------------------------------------------------------------
// Small helpers

/// The engine's own message, without bollard's wrapping ("Docker responded with status code …").
fn engine_message(e: &DockerError) -> String {
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

/// Sends text to the log as it came (build output carries its own newlines).
fn send(log: &LogSink, text: String) {
    // A closed log means nobody is listening any more (the run ended); the work goes on.
    let _ = log.send(text.into_bytes());
}

/// Sends one line to the log, newline-terminated.
fn say(log: &LogSink, mut line: String) {
    if !line.ends_with('\n') {
        line.push('\n');
    }
    send(log, line);
}

fn human_size(bytes: u64) -> String {
    const KIB: f64 = 1024.0;
    let b = bytes as f64;
    if b < KIB {
        format!("{bytes} B")
    } else if b < KIB * KIB {
        format!("{:.1} KiB", b / KIB)
    } else if b < KIB * KIB * KIB {
        format!("{:.1} MiB", b / KIB / KIB)
    } else {
        format!("{:.1} GiB", b / KIB / KIB / KIB)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each case: `.dockerignore` text, then paths with whether they are sent.
    fn check(ignore: &str, cases: &[(&str, bool)]) {
        let ig = Ignore::parse(ignore).unwrap();
        for (path, sent) in cases {
            assert_eq!(!ig.excludes(path), *sent, "{path} with {ignore:?}");
        }
    }

    #[test]
    fn patterns_are_anchored_at_the_root() {
        check(
            "secret.txt\n",
            &[
                ("secret.txt", false),
                ("a/secret.txt", true),
                ("secret.txt.bak", true),
            ],
        );
        check("/secret.txt\n", &[("secret.txt", false)]);
        check("./a/../secret.txt\n", &[("secret.txt", false)]);
    }

    #[test]
    fn star_stays_in_one_component() {
        check(
            "*.log\n",
            &[("a.log", false), ("logs/a.log", true), ("a.log.txt", true)],
        );
        check("*/*.log\n", &[("logs/a.log", false), ("a/b/c.log", true)]);
        check("?.txt\n", &[("a.txt", false), ("ab.txt", true)]);
    }

    #[test]
    fn double_star_crosses_directories() {
        check(
            "**/*.md\n",
            &[
                ("README.md", false),
                ("docs/a/b.md", false),
                ("docs/a/b.txt", true),
            ],
        );
        check(
            "docs/**/*.md\n",
            &[
                ("docs/x.md", false),
                ("docs/a/b/x.md", false),
                ("x.md", true),
            ],
        );
        check(
            "build/**\n",
            &[("build/a/b", false), ("build", true), ("builder", true)],
        );
    }

    #[test]
    fn a_matching_directory_excludes_everything_below() {
        check(
            "node_modules\n",
            &[
                ("node_modules", false),
                ("node_modules/a/b.js", false),
                ("src/node_modules", true),
            ],
        );
    }

    #[test]
    fn the_last_matching_pattern_wins() {
        check(
            "*.log\n!important.log\n",
            &[("debug.log", false), ("important.log", true)],
        );
        check("*\n!src\n", &[("src/main.rs", true), ("README", false)]);
        check(
            "logs\n!logs/keep\n",
            &[("logs/keep", true), ("logs/other", false)],
        );
        check("!a.txt\na.txt\n", &[("a.txt", false)]);
    }

    #[test]
    fn comments_blank_lines_classes_and_escapes() {
        check(
            "# secret.txt\n\n   \n  spaced.txt  \n[ab].c\n[^x]y\n\\*lit\n",
            &[
                ("# secret.txt", true),
                ("secret.txt", true),
                ("spaced.txt", false),
                ("a.c", false),
                ("c.c", true),
                ("ay", false),
                ("xy", true),
                ("*lit", false),
                ("alit", true),
            ],
        );
        assert!(Ignore::parse("!\n").is_err());
        assert!(Ignore::parse("[abc\n").is_err());
    }

    #[test]
    fn excluded_directories_are_entered_only_for_exceptions_below_them() {
        let ig = Ignore::parse("target\nlogs\n!logs/keep\n!**/x\n").unwrap();
        assert!(ig.may_include_under("logs"));
        assert!(
            ig.may_include_under("target"),
            "!**/x may match below target"
        );
        let ig = Ignore::parse("target\n!README\n").unwrap();
        assert!(!ig.may_include_under("target"));
    }

    #[test]
    fn the_dockerfile_and_dockerignore_are_always_sent() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("build")).unwrap();
        std::fs::write(root.join("build/Dockerfile"), "FROM scratch\n").unwrap();
        std::fs::write(root.join("build/other"), "x").unwrap();
        std::fs::write(root.join(".dockerignore"), "build\n.dockerignore\n").unwrap();
        std::fs::write(root.join("app"), "x").unwrap();
        let packed = pack_context(root, "build/Dockerfile").unwrap();
        let mut archive = tar::Archive::new(packed.tar.as_slice());
        let names: Vec<String> = archive
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, [".dockerignore", "app", "build/Dockerfile"]);
        assert_eq!(packed.files, 3);
    }

    #[test]
    fn dockerfile_must_stay_inside_the_context() {
        assert_eq!(
            normalize_dockerfile("./docker/Dockerfile").unwrap(),
            "docker/Dockerfile"
        );
        assert!(normalize_dockerfile("../Dockerfile").is_err());
        assert!(normalize_dockerfile("/etc/Dockerfile").is_err());
    }

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

    #[test]
    fn push_status_carries_the_digest() {
        let d = format!("sha256:{}", "0f".repeat(32));
        assert_eq!(
            digest_in_status(&format!("abc1234: digest: {d} size: 527"), "abc1234"),
            Some(d.clone())
        );
        assert_eq!(
            digest_in_status(&format!("other: digest: {d} size: 527"), "abc1234"),
            None
        );
        assert_eq!(digest_in_status("Pushed", "abc1234"), None);
    }

    #[test]
    fn engine_errors_are_sorted() {
        let c = |m: &str| Failure::classify(m.to_string());
        assert!(matches!(
            c("unauthorized: authentication required"),
            Failure::Credentials(_)
        ));
        assert!(matches!(
            c("denied: requested access to the resource is denied"),
            Failure::Credentials(_)
        ));
        assert!(matches!(
            c(
                "Get \"https://10.203.0.1:5999/v2/\": dial tcp 10.203.0.1:5999: connect: connection refused"
            ),
            Failure::Unavailable(_)
        ));
        assert!(matches!(
            c("received unexpected HTTP status: 503 Service Unavailable"),
            Failure::Unavailable(_)
        ));
        assert!(matches!(
            c("An image does not exist locally with the tag: x"),
            Failure::Other(_)
        ));
    }

    #[test]
    fn loopback_hosts() {
        assert!(is_loopback("127.0.0.1:5000"));
        assert!(is_loopback("localhost"));
        assert!(is_loopback("[::1]:5000"));
        assert!(!is_loopback("10.203.0.1:5000"));
        assert!(!is_loopback("registry.example.com"));
    }

    #[tokio::test]
    async fn retries_stop_at_once_on_refused_credentials() {
        let mut calls = 0;
        let err = with_retries::<(), _, _>("r.example", true, None, || {
            calls += 1;
            async { Err(Failure::Credentials("401".into())) }
        })
        .await
        .unwrap_err()
        .to_string();
        assert_eq!(calls, 1);
        assert!(
            err.starts_with(
                "the registry r.example refused the credentials of its [[registry]] entry"
            ),
            "{err}"
        );
    }
}
