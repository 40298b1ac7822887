//! Building an image on the build engine: the context directory is tarred here, leaving out
//! what `.dockerignore` excludes ([`Ignore`]), streamed to the engine with the build's options
//! as it is written, and the engine's output streamed into the run's log line by line.
//!
//! **Invariant:** nothing outside the checkout is sent. The context directory, the Dockerfile
//! and `.dockerignore` are resolved (symlinks followed, by `canonicalize`) and refused when they
//! lead out of the checkout; inside the context every symlink is sent as a link, never
//! followed, so a committed `ctx -> /var/lib/hoist` cannot ship the agent's database to the
//! builder. The context is never held whole in memory, and is refused past
//! [`MAX_CONTEXT_BYTES`].

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use bollard::Docker;
use bollard::body_try_stream;
use bollard::errors::Error as DockerError;
use bollard::models::BuildInfo;
use bollard::query_parameters::{
    BuildImageOptions, BuildImageOptionsBuilder, TagImageOptionsBuilder,
};
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

use super::dockerignore::Ignore;
use super::{BuildRequest, engine_message, repository_and_tag, say, send};
use crate::runner::LogSink;

/// What a cancelled build fails with, whether it was cancelled before or during the build.
const CANCELLED: &str = "the image build was cancelled";

/// Largest build context sent to the engine (the tar's size). A context is the sources an
/// image is built from; one this big has build outputs, data or `.git` in it, and a push to a
/// branch must not be able to fill the builder's disk or hold the agent's uplink for long.
pub const MAX_CONTEXT_BYTES: u64 = 1 << 30;

/// The tar goes to the engine in chunks of about this size, a few at a time: the context is
/// never held whole in memory, however large.
const CHUNK_BYTES: usize = 256 * 1024;
/// Chunks written ahead of what the engine has read.
const CHUNKS_AHEAD: usize = 4;

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
    let (checkout, context) = (req.checkout.clone(), req.context.clone());
    let df = dockerfile.clone();
    let prepared = tokio::task::spawn_blocking(move || prepare(&checkout, &context, &df))
        .await
        .context("checking the build context panicked")??;
    if cancel.is_cancelled() {
        bail!(CANCELLED);
    }

    // Packing runs on a blocking thread (walking and reading files is blocking I/O) and hands
    // the tar over in chunks as it goes; the engine reads them as the body of the build.
    let (tx, rx) = mpsc::channel(CHUNKS_AHEAD);
    let packer = tokio::task::spawn_blocking(move || {
        let writer = ChunkWriter::new(tx.clone(), MAX_CONTEXT_BYTES);
        pack_context(&prepared, writer)
            .map(|(packed, _)| packed)
            .inspect_err(|e| {
                // The engine learns of it as a failed body, and stops the build.
                let _ = tx.blocking_send(Err(io::Error::other(format!("{e:#}"))));
            })
    });
    let options = build_options(req, &dockerfile);
    let built = stream_build(docker, options, rx, log, cancel).await;
    let packed = packer.await.context("packing the build context panicked")?;
    let image_id = match (built, packed) {
        // Why packing stopped (too big, unreadable) says more than the engine's view of it,
        // unless packing stopped only because the build had already ended.
        (Err(e), Err(p)) if stopped_reading(&p) => return Err(e),
        (_, Err(p)) => return Err(p),
        (Err(e), Ok(_)) => return Err(e),
        (Ok(id), Ok(packed)) => {
            say(
                log,
                format!(
                    "Sent the build context: {} files, {}",
                    packed.files,
                    human_size(packed.bytes)
                ),
            )
            .await;
            match id {
                Some(id) => id,
                // Engines that do not send the aux record: the first tag names the image just built.
                None => id_of_first_tag(docker, &req.tags).await?,
            }
        }
    };
    add_tags(docker, &image_id, tags.iter().skip(1)).await?;
    say(log, format!("Built image {image_id}")).await;
    Ok(image_id)
}

/// The engine's build options: the Dockerfile, build args, labels, and the first tag.
fn build_options(req: &BuildRequest, dockerfile: &str) -> BuildImageOptions {
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
        .dockerfile(dockerfile)
        .buildargs(&args)
        .labels(&labels)
        // Intermediate containers go away even when a step fails: a failing pipeline must
        // not leave litter on the builder.
        .rm(true)
        .forcerm(true);
    if let Some(first) = req.tags.first() {
        options = options.t(first);
    }
    options.build()
}

/// Sends the context to the engine and relays its output to `log` until the build ends;
/// returns the image ID if the engine reported one.
async fn stream_build(
    docker: &Docker,
    options: BuildImageOptions,
    tar: mpsc::Receiver<io::Result<Bytes>>,
    log: &LogSink,
    cancel: &CancellationToken,
) -> anyhow::Result<Option<String>> {
    let body = body_try_stream(ReceiverStream::new(tar));
    let mut stream = docker.build_image(options, None, Some(body));
    let mut image_id = None;
    loop {
        let item = tokio::select! {
            biased;
            // Dropping the stream closes the connection; the engine cancels the build and
            // kills the container of the running step.
            _ = cancel.cancelled() => {
                say(log, "Build cancelled".to_string()).await;
                bail!(CANCELLED);
            }
            item = stream.next() => item,
        };
        let info = match item {
            None => return Ok(image_id),
            Some(Ok(info)) => info,
            Some(Err(DockerError::DockerStreamError { error })) => {
                say(log, error.clone()).await;
                bail!("the image build failed: {error}");
            }
            Some(Err(e)) => bail!("the image build failed: {}", engine_message(&e)),
        };
        if let Some(id) = relay(log, info).await {
            image_id = Some(id);
        }
    }
}

/// Writes one record of the engine's build output to `log`; returns the image ID if the
/// record carries it.
async fn relay(log: &LogSink, info: BuildInfo) -> Option<String> {
    if let Some(text) = info.stream {
        send(log, text).await;
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
            say(log, line).await;
        }
    }
    info.aux.and_then(|aux| aux.id)
}

/// The ID of the image the first of `tags` names, asked of the engine.
async fn id_of_first_tag(docker: &Docker, tags: &[String]) -> anyhow::Result<String> {
    let Some(first) = tags.first() else {
        bail!("the build engine did not report the ID of the image it built");
    };
    docker
        .inspect_image(first)
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot inspect the built image {first}: {}",
                engine_message(&e)
            )
        })?
        .id
        .with_context(|| format!("the engine reports no ID for the built image {first}"))
}

/// Tags the built image with each further (repository, tag).
async fn add_tags(
    docker: &Docker,
    image_id: &str,
    tags: impl Iterator<Item = &(String, String)>,
) -> anyhow::Result<()> {
    for (repo, tag) in tags {
        docker
            .tag_image(
                image_id,
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
    Ok(())
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

/// A build context checked before anything is sent: resolved, inside the checkout, with its
/// Dockerfile and `.dockerignore` rules.
struct Prepared {
    /// The context directory, resolved (no symlinks, absolute), inside the checkout.
    context: PathBuf,
    /// Its `.dockerignore` rules, with the Dockerfile and `.dockerignore` always sent.
    ignore: Ignore,
}

/// Resolves the context directory and checks that it, the Dockerfile and `.dockerignore`
/// stay inside the checkout once symlinks are followed: a repository may commit
/// `ctx -> /var/lib/hoist` or `Dockerfile -> ../../etc/x`, and the path's text cannot tell.
fn prepare(checkout: &Path, context: &Path, dockerfile: &str) -> anyhow::Result<Prepared> {
    let root = checkout
        .canonicalize()
        .with_context(|| format!("the checkout {} cannot be read", checkout.display()))?;
    let shown = |p: &Path| {
        p.strip_prefix(checkout)
            .map(|r| r.display().to_string())
            .unwrap_or_else(|_| p.display().to_string())
    };
    let resolved = context.canonicalize().with_context(|| {
        format!(
            "the build context {} cannot be read (does the directory exist in the commit?)",
            shown(context)
        )
    })?;
    if !resolved.starts_with(&root) {
        bail!(
            "the build context {} leads out of the checkout (to {}) through a symlink; hoist \
             sends only what the repository holds: name a directory inside it as `context`",
            shown(context),
            resolved.display()
        );
    }
    if !resolved.is_dir() {
        bail!("the build context {} is not a directory", shown(context));
    }
    let inside_context = |rel: &str, what: &str| -> anyhow::Result<bool> {
        let path = resolved.join(rel);
        match path.canonicalize() {
            Ok(target) if target.starts_with(&resolved) => Ok(true),
            Ok(target) => bail!(
                "the {what} {rel} of the build context leads out of the context (to {}) \
                 through a symlink; commit the file itself inside the context",
                target.display()
            ),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e).with_context(|| format!("cannot read the {what} {rel}")),
        }
    };
    if !inside_context(dockerfile, "Dockerfile")? || !resolved.join(dockerfile).is_file() {
        bail!(
            "the Dockerfile {dockerfile} does not exist in the build context {}",
            shown(context)
        );
    }
    // Checked before `Ignore::load` reads it: read through a symlink it could be any file.
    inside_context(".dockerignore", ".dockerignore")?;
    let ignore = Ignore::load(&resolved, dockerfile)?;
    Ok(Prepared {
        context: resolved,
        ignore,
    })
}

/// How much of the build context went to the engine.
#[derive(Debug)]
struct Packed {
    /// How many files (and links) went in, for the log line that reports the context's size.
    files: usize,
    /// The tar's size in bytes.
    bytes: u64,
}

/// The tar's bytes, handed to the engine's request body in chunks from a blocking thread;
/// refuses to write past `limit` bytes.
struct ChunkWriter {
    /// Where the chunks go: the build request's body.
    tx: mpsc::Sender<io::Result<Bytes>>,
    /// Bytes not yet sent.
    buf: Vec<u8>,
    /// Bytes written so far.
    written: u64,
    /// [`MAX_CONTEXT_BYTES`], or less in tests.
    limit: u64,
}

/// Why a [`ChunkWriter`] refused a write: the context passed the limit.
#[derive(Debug, thiserror::Error)]
#[error("the build context is over the limit of {}", human_size(*.0))]
struct TooBig(u64);

impl ChunkWriter {
    fn new(tx: mpsc::Sender<io::Result<Bytes>>, limit: u64) -> ChunkWriter {
        ChunkWriter {
            tx,
            buf: Vec::with_capacity(CHUNK_BYTES),
            written: 0,
            limit,
        }
    }

    /// Sends what is buffered; an error once the engine stopped reading.
    fn send(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK_BYTES));
        self.tx.blocking_send(Ok(Bytes::from(chunk))).map_err(|_| {
            io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the engine stopped reading the build context",
            )
        })
    }
}

impl io::Write for ChunkWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.written + data.len() as u64 > self.limit {
            return Err(io::Error::other(TooBig(self.limit)));
        }
        self.written += data.len() as u64;
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK_BYTES {
            self.send()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send()
    }
}

/// Whether packing stopped only because the engine no longer read the context (the build
/// had ended or was cancelled), rather than for a reason of its own.
fn stopped_reading(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<io::Error>()
            .is_some_and(|e| e.kind() == io::ErrorKind::BrokenPipe)
    })
}

/// Tars the prepared context into `out`, leaving out what `.dockerignore` excludes. The
/// Dockerfile and `.dockerignore` are always sent, as the docker CLI does: the engine needs
/// the Dockerfile, and removes both itself afterwards if `.dockerignore` names them.
///
/// Entries are written in sorted order with owner 0:0 (as the docker CLI sends them), so the
/// same checkout gives the same context. Symlinks are sent as links, never followed.
fn pack_context<W: io::Write>(prepared: &Prepared, out: W) -> anyhow::Result<(Packed, W)> {
    let mut builder = tar::Builder::new(Counting {
        inner: out,
        bytes: 0,
    });
    builder.follow_symlinks(false);
    let mut files = 0;
    let walked = walk(
        &prepared.context,
        "",
        &prepared.ignore,
        &mut builder,
        &mut files,
    );
    if let Err(e) = walked {
        return Err(too_big_advice(e));
    }
    let mut counting = builder
        .into_inner()
        .map_err(|e| too_big_advice(anyhow::Error::new(e)))?;
    counting
        .inner
        .flush()
        .context("cannot send the build context to the engine")?;
    let packed = Packed {
        files,
        bytes: counting.bytes,
    };
    Ok((packed, counting.inner))
}

/// Says how to shrink the context when `e` is the size limit, naming the path being added.
fn too_big_advice(e: anyhow::Error) -> anyhow::Error {
    let Some(limit) = e.chain().find_map(|c| {
        c.downcast_ref::<io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|inner| inner.downcast_ref::<TooBig>())
            .map(|t| t.0)
    }) else {
        return e;
    };
    anyhow::anyhow!(
        "the build context is over {} ({e:#}); leave out what the image does not need (build \
         outputs, data files, .git) with a .dockerignore at the context's root, or build from a \
         smaller directory (`context:`)",
        human_size(limit)
    )
}

/// A writer that counts what passes through it.
struct Counting<W> {
    /// Where the bytes go.
    inner: W,
    /// How many went.
    bytes: u64,
}

impl<W: io::Write> io::Write for Counting<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(data)?;
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Adds the entries of `dir` (`rel` inside the context, "" for the root) to the tar.
fn walk<W: io::Write>(
    dir: &Path,
    rel: &str,
    ignore: &Ignore,
    tar: &mut tar::Builder<W>,
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
        // Never followed: a symlink is sent as a link, whatever it points at.
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

fn append_entry<W: io::Write>(
    tar: &mut tar::Builder<W>,
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
        // At most the size measured: a file that grows meanwhile is cut there, so the entry's
        // header stays true and the tar well-formed.
        let file =
            std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
        tar.append_data(&mut header, rel, io::Read::take(file, meta.len()))
    };
    result.with_context(|| format!("cannot add {rel} to the build context"))
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
    use std::os::unix::fs::symlink;

    /// The names in the tar of the context `root/context` (in checkout `root`), in order, with
    /// each symlink's target.
    fn packed(root: &Path, context: &str, dockerfile: &str) -> anyhow::Result<Vec<String>> {
        let prepared = prepare(root, &root.join(context), dockerfile)?;
        let (_, tar) = pack_context(&prepared, Vec::new())?;
        let mut archive = tar::Archive::new(tar.as_slice());
        Ok(archive
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let name = e.path().unwrap().to_string_lossy().into_owned();
                match e.link_name().unwrap() {
                    Some(target) => format!("{name} -> {}", target.display()),
                    None => name,
                }
            })
            .collect())
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
        let names = packed(root, ".", "build/Dockerfile").unwrap();
        assert_eq!(names, [".dockerignore", "app", "build/Dockerfile"]);
    }

    /// A checkout (`repo/`) beside a directory it must never send (`outside/`, the agent's
    /// data dir in real life).
    fn checkout_beside_secrets() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let outside = dir.path().join("outside");
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("hoist.db"), "the agent's database").unwrap();
        std::fs::write(outside.join("Dockerfile"), "FROM scratch\nCOPY . /\n").unwrap();
        std::fs::write(outside.join("ignore"), "nothing\n").unwrap();
        let repo = dir.path().join("repo");
        std::fs::create_dir_all(&repo).unwrap();
        std::fs::write(repo.join("Dockerfile"), "FROM scratch\n").unwrap();
        (dir, repo)
    }

    #[test]
    fn a_context_that_leads_out_of_the_checkout_is_refused() {
        let (dir, repo) = checkout_beside_secrets();
        symlink(dir.path().join("outside"), repo.join("ctx")).unwrap();
        symlink("../../outside", {
            std::fs::create_dir_all(repo.join("sub")).unwrap();
            repo.join("sub/up")
        })
        .unwrap();
        for context in ["ctx", "sub/up"] {
            let e = format!("{:#}", packed(&repo, context, "Dockerfile").unwrap_err());
            assert!(
                e.contains(&format!(
                    "the build context {context} leads out of the checkout"
                )),
                "{e}"
            );
        }
        // A symlink that stays inside is fine.
        std::fs::create_dir_all(repo.join("real")).unwrap();
        std::fs::write(repo.join("real/Dockerfile"), "FROM scratch\n").unwrap();
        symlink("real", repo.join("alias")).unwrap();
        assert_eq!(
            packed(&repo, "alias", "Dockerfile").unwrap(),
            ["Dockerfile"]
        );
    }

    #[test]
    fn a_dockerfile_or_dockerignore_that_leads_out_is_refused() {
        let (dir, repo) = checkout_beside_secrets();
        symlink(
            dir.path().join("outside/Dockerfile"),
            repo.join("Dockerfile.out"),
        )
        .unwrap();
        let e = format!("{:#}", packed(&repo, ".", "Dockerfile.out").unwrap_err());
        assert!(
            e.contains("the Dockerfile Dockerfile.out of the build context leads out"),
            "{e}"
        );

        symlink(
            dir.path().join("outside/ignore"),
            repo.join(".dockerignore"),
        )
        .unwrap();
        let e = format!("{:#}", packed(&repo, ".", "Dockerfile").unwrap_err());
        assert!(
            e.contains("the .dockerignore .dockerignore of the build context leads out"),
            "{e}"
        );
    }

    #[test]
    fn symlinks_inside_the_context_are_sent_as_links_never_followed() {
        let (dir, repo) = checkout_beside_secrets();
        let outside = dir.path().join("outside");
        symlink(&outside, repo.join("data")).unwrap();
        symlink(outside.join("hoist.db"), repo.join("db")).unwrap();
        symlink("../../outside", repo.join("up")).unwrap();
        let names = packed(&repo, ".", "Dockerfile").unwrap();
        assert_eq!(
            names,
            [
                "Dockerfile".to_string(),
                format!("data -> {}", outside.display()),
                format!("db -> {}", outside.join("hoist.db").display()),
                "up -> ../../outside".to_string(),
            ]
        );
    }

    #[test]
    fn a_context_over_the_limit_fails_naming_the_limit_and_dockerignore() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::write(root.join("Dockerfile"), "FROM scratch\n").unwrap();
        std::fs::write(root.join("big.bin"), vec![7u8; 64 * 1024]).unwrap();
        let prepared = prepare(root, root, "Dockerfile").unwrap();
        let (tx, mut rx) = mpsc::channel(1024);
        let Err(e) = pack_context(&prepared, ChunkWriter::new(tx, 16 * 1024)) else {
            panic!("a 64 KiB context went through a 16 KiB limit");
        };
        let e = format!("{e:#}");
        assert!(e.contains("the build context is over 16.0 KiB"), "{e}");
        assert!(e.contains("big.bin") && e.contains(".dockerignore"), "{e}");
        // What was sent stayed under the limit.
        let mut sent = 0;
        while let Ok(Ok(chunk)) = rx.try_recv() {
            sent += chunk.len();
        }
        assert!(sent <= 16 * 1024, "{sent}");

        // Under the limit it goes through whole, in chunks.
        let (tx, mut rx) = mpsc::channel(1024);
        let (p, _) = pack_context(&prepared, ChunkWriter::new(tx, MAX_CONTEXT_BYTES)).unwrap();
        let mut sent = 0;
        while let Ok(Ok(chunk)) = rx.try_recv() {
            sent += chunk.len() as u64;
        }
        assert_eq!((p.files, sent), (2, p.bytes));
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
}
