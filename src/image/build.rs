//! Building an image on the build engine: the context directory is tarred here, leaving out
//! what `.dockerignore` excludes ([`Ignore`]), sent to the engine with the build's options, and
//! the engine's output streamed into the run's log line by line.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use bollard::Docker;
use bollard::body_full;
use bollard::errors::Error as DockerError;
use bollard::models::BuildInfo;
use bollard::query_parameters::{
    BuildImageOptions, BuildImageOptionsBuilder, TagImageOptionsBuilder,
};
use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;

use super::dockerignore::Ignore;
use super::{BuildRequest, engine_message, repository_and_tag, say, send};
use crate::runner::LogSink;

/// What a cancelled build fails with, whether it was cancelled before or during the build.
const CANCELLED: &str = "the image build was cancelled";

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

    let packed = pack_off_the_runtime(req.context.clone(), dockerfile.clone()).await?;
    say(
        log,
        format!(
            "Sending build context to the engine: {} files, {}",
            packed.files,
            human_size(packed.tar.len() as u64)
        ),
    )
    .await;
    if cancel.is_cancelled() {
        bail!(CANCELLED);
    }

    let options = build_options(req, &dockerfile);
    let image_id = match stream_build(docker, options, packed.tar, log, cancel).await? {
        Some(id) => id,
        // Engines that do not send the aux record: the first tag names the image just built.
        None => id_of_first_tag(docker, &req.tags).await?,
    };
    add_tags(docker, &image_id, tags.iter().skip(1)).await?;
    say(log, format!("Built image {image_id}")).await;
    Ok(image_id)
}

/// Packs the context on a blocking thread: walking and reading a large context is blocking
/// file I/O, which must stay off the runtime.
async fn pack_off_the_runtime(context: PathBuf, dockerfile: String) -> anyhow::Result<Packed> {
    tokio::task::spawn_blocking(move || pack_context(&context, &dockerfile))
        .await
        .context("packing the build context panicked")?
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
    tar: Vec<u8>,
    log: &LogSink,
    cancel: &CancellationToken,
) -> anyhow::Result<Option<String>> {
    let mut stream = docker.build_image(options, None, Some(body_full(tar.into())));
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

/// The build context as a tar, and how many files went in.
struct Packed {
    /// The tar sent to the engine as the build's body.
    tar: Vec<u8>,
    /// How many files (and links) went in, for the log line that reports the context's size.
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
    let ignore = Ignore::load(context, dockerfile)?;

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
}
