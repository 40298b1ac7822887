//! What hoist does to one host: pull a release's image by digest and prove what arrived, keep
//! the serving container as `NAME-r<release>`, start the new one, undo, read back, prune.
//!
//! Every function is one forward action or its undo, so that the deployment engine can journal
//! each step and a rollback is the same moves in reverse:
//! `pull` → `keep_current` (undo: `restore_kept`) → `start` (undo: `remove`) → `read_back`.
//!
//! Invariant: a container is addressed by its exact name only after checking that the engine
//! resolved that name, not an ID prefix. Docker resolves `cafe` to the container whose ID
//! starts with `cafe` when no container is named `cafe`; removing or renaming by such a guess
//! would touch a stranger's container.
//!
//! Errors say what happened on "the host's Docker engine"; a `Docker` handle does not know its
//! own URL, so callers add the host's name with `.context(..)`.

use std::collections::{BTreeSet, HashMap};

use anyhow::{Context, anyhow, bail};
use bollard::Docker;
use bollard::errors::Error as DockerError;
use bollard::models::{
    ContainerCreateBody, ContainerInspectResponse, ContainerStateStatusEnum, ContainerSummary,
    HostConfig, NetworkCreateRequest, PortBinding, PortMap, RestartPolicy, RestartPolicyNameEnum,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, CreateImageOptionsBuilder, InspectNetworkOptions,
    ListContainersOptionsBuilder, RemoveContainerOptionsBuilder, RemoveImageOptionsBuilder,
    RenameContainerOptionsBuilder, StopContainerOptionsBuilder,
};
use futures_util::StreamExt;
use serde::Serialize;

use crate::config::RegistryConfig;
use crate::image;
use crate::pipeline::ContainerSpec;

/// Label naming the app on every container hoist creates.
pub const APP_LABEL: &str = "hoist.app";
/// Label naming the release number on every container hoist creates.
pub const RELEASE_LABEL: &str = "hoist.release";
/// Label naming the commit SHA on every container hoist creates.
pub const COMMIT_LABEL: &str = "hoist.commit";
/// Label naming the manifest digest (`sha256:…`) on every container hoist creates.
pub const DIGEST_LABEL: &str = "hoist.digest";

/// What to run on a host: one release of one app. Its `Debug` names the secrets, never their
/// values.
#[derive(Clone, Copy)]
pub struct Target<'a> {
    /// The app, for the `hoist.app` label.
    pub app: &'a str,
    /// The release number, for the label and the kept name `NAME-r<release>` later.
    pub release: i64,
    /// The commit SHA the release was built from, for the label.
    pub commit: &'a str,
    /// The image by digest, `repo@sha256:…`: never a tag, so every host runs the same bytes.
    pub image: &'a str,
    /// The manifest digest `sha256:…`, for the label.
    pub digest: &'a str,
    /// The container, already rendered for this host (`${host}` and friends filled).
    pub container: &'a ContainerSpec,
    /// The values of `container.secrets`, resolved now: set as env vars, never as labels.
    pub secrets: &'a [(String, String)],
}

impl std::fmt::Debug for Target<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.secrets.iter().map(|(n, _)| n.as_str()).collect();
        f.debug_struct("Target")
            .field("app", &self.app)
            .field("release", &self.release)
            .field("commit", &self.commit)
            .field("image", &self.image)
            .field("digest", &self.digest)
            .field("container", &self.container)
            .field("secrets", &names)
            .finish()
    }
}

/// What runs as a container name now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Current {
    /// Container ID.
    pub id: String,
    /// The `hoist.app` label; None for a container hoist did not create.
    pub app: Option<String>,
    /// Its process runs (a restarting or paused container does not count).
    pub running: bool,
    /// The `hoist.release` label; None for a container hoist did not create.
    pub release: Option<i64>,
    /// The `hoist.digest` label.
    pub digest: Option<String>,
    /// The local image ID (config digest) the container was created from.
    pub image_id: String,
    /// The exit code of its last run, when it is not running.
    pub exit_code: Option<i64>,
}

/// What a host was read back to run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReadBack {
    /// The manifest digest `sha256:…` of the container's image in the asked repository, from
    /// the engine's RepoDigests; None when the image has no digest in that repository.
    pub digest: Option<String>,
    /// The container's process runs.
    pub running: bool,
    /// Container ID.
    pub container_id: String,
    /// Local image ID (config digest) of the container's image.
    pub image_id: String,
}

/// Engine facts for `hoist hosts`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HostInfo {
    /// Docker Engine version, like "20.10.24".
    pub version: String,
    /// The engine's newest API version, like "1.41".
    pub api_version: String,
    /// Containers labelled `hoist.app`, serving and kept, sorted by name.
    pub containers: Vec<HostContainer>,
}

/// One container hoist created, as `hoist hosts` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HostContainer {
    /// Container name without Docker's leading `/`.
    pub name: String,
    /// The `hoist.app` label.
    pub app: String,
    /// The `hoist.release` label.
    pub release: Option<i64>,
    /// The `hoist.digest` label.
    pub digest: Option<String>,
    /// Docker's state: running, exited, restarting, …
    pub state: String,
}

/// The name a kept earlier release gets: `NAME-r<release>` (for a replica `NAME-<i>`,
/// `NAME-<i>-r<release>`).
pub fn kept_name(name: &str, release: i64) -> String {
    format!("{name}-r{release}")
}

/// The serving names of `replicas` containers: `NAME` alone, or `NAME-1` … `NAME-N`.
pub fn replica_names(name: &str, replicas: u32) -> Vec<String> {
    match replicas {
        0 | 1 => vec![name.to_string()],
        n => (1..=n).map(|i| format!("{name}-{i}")).collect(),
    }
}

/// What a container's name says it is, for the container name `name` of a deploy step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    /// `NAME` or `NAME-<i>`: serves.
    Serving,
    /// `NAME-r<N>` or `NAME-<i>-r<N>`: a kept release N.
    Kept(i64),
}

/// `cname` read as one of `name`'s containers; None when it is not one.
pub fn slot_of(name: &str, cname: &str) -> Option<Slot> {
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if cname == name {
        return Some(Slot::Serving);
    }
    let rest = cname.strip_prefix(name)?.strip_prefix('-')?;
    if digits(rest) {
        return Some(Slot::Serving);
    }
    let kept = |r: &str| r.strip_prefix('r').filter(|n| digits(n))?.parse().ok();
    if let Some(n) = kept(rest) {
        return Some(Slot::Kept(n));
    }
    let (i, r) = rest.split_once('-')?;
    if digits(i) {
        return kept(r).map(Slot::Kept);
    }
    None
}

/// One container of a deploy step's `name` on a host, serving or kept.
#[derive(Debug, Clone)]
pub struct Member {
    /// Its name without Docker's `/`.
    pub name: String,
    /// Serving or kept.
    pub slot: Slot,
    /// The `hoist.app` label.
    pub app: Option<String>,
    /// The `hoist.release` label.
    pub release: Option<i64>,
    /// Docker's state is `running`.
    pub running: bool,
    /// Container ID.
    pub id: String,
}

/// Every container whose name is one of `name`'s (serving `NAME`, `NAME-<i>`, kept
/// `NAME-r<N>`, `NAME-<i>-r<N>`), whatever app it belongs to, sorted by name.
pub async fn members(docker: &Docker, name: &str) -> anyhow::Result<Vec<Member>> {
    // The name filter is a regular expression matched anywhere; it only narrows the listing.
    let filters = HashMap::from([("name", vec![name.to_string()])]);
    let options = ListContainersOptionsBuilder::default()
        .all(true)
        .filters(&filters)
        .build();
    let listed = docker
        .list_containers(Some(options))
        .await
        .context("the host's Docker engine cannot list containers")?;
    let mut out = Vec::new();
    for c in listed {
        let Some((cname, slot)) = c
            .names
            .iter()
            .flatten()
            .map(|n| n.trim_start_matches('/'))
            .find_map(|n| slot_of(name, n).map(|s| (n.to_string(), s)))
        else {
            continue;
        };
        let labels = c.labels.clone().unwrap_or_default();
        out.push(Member {
            name: cname,
            slot,
            app: labels.get(APP_LABEL).cloned(),
            release: labels.get(RELEASE_LABEL).and_then(|r| r.parse().ok()),
            running: c.state == Some(bollard::models::ContainerSummaryStateEnum::RUNNING),
            id: c.id.unwrap_or_default(),
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// The host port the engine published container port `port`/tcp of `name` on; None when the
/// container is gone or the port is not published.
pub async fn host_port(docker: &Docker, name: &str, port: u16) -> anyhow::Result<Option<u16>> {
    let Some(c) = inspect_named(docker, name).await? else {
        return Ok(None);
    };
    Ok(published_ports(&c).get(&format!("{port}/tcp")).copied())
}

/// Every published `PORT/proto` of a container and the host port it is on.
pub fn published_ports(c: &ContainerInspectResponse) -> std::collections::BTreeMap<String, u16> {
    c.network_settings
        .as_ref()
        .and_then(|n| n.ports.as_ref())
        .map(|ports| {
            ports
                .iter()
                .filter_map(|(k, v)| {
                    let p = v
                        .iter()
                        .flatten()
                        .find_map(|b| b.host_port.as_deref()?.parse().ok())?;
                    Some((k.clone(), p))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The published ports of container `name` (`8080/tcp` → host port), read from the engine.
pub async fn ports_of(
    docker: &Docker,
    name: &str,
) -> anyhow::Result<std::collections::BTreeMap<String, u16>> {
    Ok(inspect_named(docker, name)
        .await?
        .map(|c| published_ports(&c))
        .unwrap_or_default())
}

/// Stop the container `name` of `app` (its stop signal, then up to its stop timeout); no-op
/// when there is none or it does not run.
pub async fn stop(docker: &Docker, name: &str, app: &str) -> anyhow::Result<()> {
    let Some(c) = inspect_named(docker, name).await? else {
        return Ok(());
    };
    owned_by(
        app,
        name,
        c.config.as_ref().and_then(|cfg| cfg.labels.as_ref()),
    )?;
    let stop = StopContainerOptionsBuilder::default().build();
    match docker
        .stop_container(c.id.as_deref().unwrap_or(name), Some(stop))
        .await
    {
        Ok(()) => Ok(()),
        // 304: already stopped; 404: removed meanwhile (a revert).
        Err(DockerError::DockerResponseServerError {
            status_code: 304 | 404,
            ..
        }) => Ok(()),
        Err(e) => Err(anyhow!(e))
            .with_context(|| format!("the host's Docker engine could not stop container {name}")),
    }
}

/// Pull `image` (`repo@sha256:…`) unless it is already present, and verify what arrived: the
/// local image's RepoDigests must contain `repo@digest`. Returns the local image ID.
///
/// `registry` is the `[[registry]]` entry of the image's registry host (see
/// [`image::registry_for`]): its username and password go with the pull, since a host's engine
/// has no credentials of its own for the API (a `docker login` on the host is the CLI's).
/// A refusal is [`PullError::Refused`], which names the entry to fix; nothing retries it.
pub async fn pull(
    docker: &Docker,
    image: &str,
    digest: &str,
    registry: Option<&RegistryConfig>,
) -> anyhow::Result<String> {
    let (repo, named) = image.split_once('@').ok_or_else(|| {
        anyhow!(
            "image {image:?} is not pinned by digest (REPO@sha256:…); hoist deploys by digest only"
        )
    })?;
    if named != digest {
        bail!("image {image} does not carry the release's digest {digest}; refusing to pull it");
    }
    check_digest(digest)?;
    if let Some(id) = verified_local(docker, image, repo, digest).await? {
        return Ok(id);
    }
    let options = CreateImageOptionsBuilder::default()
        .from_image(image)
        .build();
    let credentials = image::engine_credentials(registry);
    let mut progress = docker.create_image(Some(options), None, credentials);
    while let Some(item) = progress.next().await {
        item.map_err(|e| pull_error(&e, image, registry))?;
    }
    match verified_local(docker, image, repo, digest).await? {
        Some(id) => Ok(id),
        None => {
            let found = docker
                .inspect_image(image)
                .await
                .ok()
                .and_then(|i| i.repo_digests)
                .unwrap_or_default();
            bail!(
                "the host's Docker engine pulled {image}, but its image lists RepoDigests {found:?}, \
                 not {repo}@{digest}: what arrived is not provably the release; refusing to run it"
            )
        }
    }
}

/// Why the host's engine could not pull a release.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    /// The registry refused the credentials, or wanted some hoist has none for: retrying
    /// cannot help; the message names the `[[registry]]` entry to fix.
    #[error("{0}")]
    Refused(String),
    /// Anything else the engine reported (registry unreachable, unknown manifest, …).
    #[error(
        "the host's Docker engine could not pull {image}: {message}; is the registry reachable \
         from the host (and listed in its --insecure-registry when it is plain HTTP)?"
    )]
    Engine { image: String, message: String },
}

/// Sorts the engine's pull error: refused credentials name the registry and its entry.
fn pull_error(e: &DockerError, image: &str, registry: Option<&RegistryConfig>) -> PullError {
    let message = image::engine_message(e);
    match image::registry_host(image) {
        Some(host) if image::refused_credentials(&message) => {
            PullError::Refused(image::refusal(host, registry, &message))
        }
        _ => PullError::Engine {
            image: image.to_string(),
            message,
        },
    }
}

/// The local image ID when `image` is present and its RepoDigests list `repo@digest`.
async fn verified_local(
    docker: &Docker,
    image: &str,
    repo: &str,
    digest: &str,
) -> anyhow::Result<Option<String>> {
    let inspect = match docker.inspect_image(image).await {
        Ok(i) => i,
        Err(e) if is_not_found(&e) => return Ok(None),
        Err(e) => bail!("the host's Docker engine cannot look up image {image}: {e}"),
    };
    let proven = inspect
        .repo_digests
        .unwrap_or_default()
        .iter()
        .filter_map(|rd| rd.split_once('@'))
        .any(|(r, d)| d == digest && same_repository(r, repo));
    match (proven, inspect.id) {
        (true, Some(id)) => Ok(Some(id)),
        (true, None) => bail!("the host's Docker engine reports image {image} without an ID"),
        (false, _) => Ok(None),
    }
}

/// What runs as `name` now; None when no container has that name.
pub async fn current(docker: &Docker, name: &str) -> anyhow::Result<Option<Current>> {
    let Some(c) = inspect_named(docker, name).await? else {
        return Ok(None);
    };
    let labels = c
        .config
        .as_ref()
        .and_then(|cfg| cfg.labels.clone())
        .unwrap_or_default();
    let state = c.state.unwrap_or_default();
    let running = is_running(state.status);
    Ok(Some(Current {
        id: c.id.unwrap_or_default(),
        app: labels.get(APP_LABEL).cloned(),
        running,
        release: labels.get(RELEASE_LABEL).and_then(|r| r.parse().ok()),
        digest: labels.get(DIGEST_LABEL).cloned(),
        image_id: c.image.unwrap_or_default(),
        exit_code: if running { None } else { state.exit_code },
    }))
}

/// Docker's word for the state of container `name` ("running", "exited", "restarting",
/// "paused", "created", "dead"); Ok(None) when no container has that name.
pub async fn status(docker: &Docker, name: &str) -> anyhow::Result<Option<String>> {
    Ok(inspect_named(docker, name).await?.map(|c| {
        c.state
            .and_then(|s| s.status)
            .map_or_else(|| "unknown".to_string(), |s| s.to_string())
    }))
}

/// Refuse to act on a container of another app: `labels` are the container's, `name` its
/// name. Ok when it belongs to `app`.
fn owned_by(app: &str, name: &str, labels: Option<&HashMap<String, String>>) -> anyhow::Result<()> {
    let labels = labels.cloned().unwrap_or_default();
    match labels.get(APP_LABEL) {
        Some(owner) if owner == app => Ok(()),
        Some(owner) => bail!(
            "container {name} on the host belongs to app {owner} (label {APP_LABEL}={owner}), \
             not {app}: hoist never stops, renames, prunes or replaces another app's container; \
             give one of the two apps another container.name"
        ),
        None => bail!(
            "container {name} on the host was not started by hoist (it has no {APP_LABEL} \
             label), so hoist will not replace it; remove or rename it (`docker rm -f {name}`) \
             and deploy again"
        ),
    }
}

/// Before anything changes: the container `name` and the kept ones `NAME-r<N>` on the host
/// are `app`'s (or absent). The error names the container and the app that owns it.
pub async fn check_owner(docker: &Docker, name: &str, app: &str) -> anyhow::Result<()> {
    let filters = HashMap::from([("name", vec![name.to_string()])]);
    let options = ListContainersOptionsBuilder::default()
        .all(true)
        .filters(&filters)
        .build();
    let listed = docker
        .list_containers(Some(options))
        .await
        .context("the host's Docker engine cannot list containers")?;
    for c in listed {
        for cname in c.names.iter().flatten().map(|n| n.trim_start_matches('/')) {
            let slot = slot_of(name, cname);
            if slot == Some(Slot::Serving) {
                owned_by(app, cname, c.labels.as_ref())?;
            } else if matches!(slot, Some(Slot::Kept(_)))
                && c.labels.as_ref().is_some_and(|l| l.contains_key(APP_LABEL))
            {
                // A kept name without hoist's labels is nobody's release: prune skips it.
                owned_by(app, cname, c.labels.as_ref())?;
            }
        }
    }
    Ok(())
}

/// Stop `name` (gracefully: its stop signal, then up to its stop timeout) unless `running` is
/// set, and rename it `NAME-r<release>` after its release label, replacing an older container
/// of that kept name. With `running` the kept container goes on serving (a balancer still
/// sends to it) until [`stop`]. Returns the kept name; Ok(None) when no container is named
/// `name`. Refuses a container of another app than `app`.
pub async fn keep_current(
    docker: &Docker,
    name: &str,
    app: &str,
    running: bool,
) -> anyhow::Result<Option<String>> {
    let Some(c) = inspect_named(docker, name).await? else {
        return Ok(None);
    };
    owned_by(
        app,
        name,
        c.config.as_ref().and_then(|cfg| cfg.labels.as_ref()),
    )?;
    let Some(cur) = current(docker, name).await? else {
        return Ok(None);
    };
    let Some(release) = cur.release else {
        bail!(
            "container {name} on the host was not started by hoist (it has no {RELEASE_LABEL} \
             label), so hoist will not replace it; remove or rename it (`docker rm -f {name}`) \
             and deploy again"
        );
    };
    let kept = kept_name(name, release);
    // Without `t`, the engine waits the container's own StopTimeout (`stop_timeout`, default
    // 10 s) after its StopSignal.
    if !running {
        let stop = StopContainerOptionsBuilder::default().build();
        docker
            .stop_container(&cur.id, Some(stop))
            .await
            .with_context(|| format!("the host's Docker engine could not stop container {name}"))?;
    }
    if let Some(old) = inspect_named(docker, &kept).await? {
        owned_by(
            app,
            &kept,
            old.config.as_ref().and_then(|cfg| cfg.labels.as_ref()),
        )?;
        force_remove(docker, old.id.as_deref().unwrap_or(&kept))
            .await
            .with_context(|| {
                format!("could not remove the older kept container {kept} to make room")
            })?;
    }
    rename(docker, &cur.id, &kept)
        .await
        .with_context(|| format!("could not rename the stopped container {name} to {kept}"))?;
    Ok(Some(kept))
}

/// Create and start the target's container as `container.name`. Returns its ID. Fails when a
/// container of that name exists; a container that was created but would not start is
/// removed again.
pub async fn start(docker: &Docker, t: &Target<'_>) -> anyhow::Result<String> {
    let spec = t.container;
    let name = spec.name.as_str();
    let (exposed, bindings) = port_bindings(&spec.ports)?;
    // The user's labels first: hoist's own always win (validation refuses `hoist.*` anyway).
    let mut labels: HashMap<String, String> = spec
        .labels
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    labels.extend([
        (APP_LABEL.to_string(), t.app.to_string()),
        (RELEASE_LABEL.to_string(), t.release.to_string()),
        (COMMIT_LABEL.to_string(), t.commit.to_string()),
        (DIGEST_LABEL.to_string(), t.digest.to_string()),
    ]);
    if let Some(network) = &spec.network {
        ensure_network(docker, network).await?;
    }
    let env = spec
        .env
        .iter()
        .chain(t.secrets.iter().map(|(k, v)| (k, v)))
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    let body = ContainerCreateBody {
        image: Some(t.image.to_string()),
        cmd: (!spec.args.is_empty()).then(|| spec.args.clone()),
        entrypoint: spec.entrypoint.clone(),
        env: Some(env),
        labels: Some(labels),
        user: spec.user.clone(),
        working_dir: spec.working_dir.clone(),
        hostname: spec.hostname.clone(),
        stop_signal: spec.stop_signal.clone(),
        stop_timeout: spec.stop_timeout.map(|d| d.as_secs_f64().ceil() as i64),
        exposed_ports: (!exposed.is_empty()).then_some(exposed),
        host_config: Some(HostConfig {
            port_bindings: (!bindings.is_empty()).then_some(bindings),
            binds: (!spec.volumes.is_empty()).then(|| spec.volumes.clone()),
            network_mode: spec.network.clone(),
            memory: spec.memory.map(|m| m as i64),
            nano_cpus: spec.cpus.map(|c| (c * 1e9).round() as i64),
            restart_policy: Some(RestartPolicy {
                name: Some(RestartPolicyNameEnum::UNLESS_STOPPED),
                maximum_retry_count: None,
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let options = CreateContainerOptionsBuilder::default().name(name).build();
    let id = match docker.create_container(Some(options), body).await {
        Ok(created) => created.id,
        Err(DockerError::DockerResponseServerError {
            status_code: 409, ..
        }) => bail!(
            "a container named {name} already exists on the host; keep or remove it before \
             starting release {} there",
            t.release
        ),
        Err(e) => bail!(
            "the host's Docker engine could not create container {name} from {}: {e}",
            t.image
        ),
    };
    if let Err(e) = docker.start_container(&id, None).await {
        let undo = force_remove(docker, &id).await;
        let mut msg = format!(
            "the host's Docker engine could not start container {name} from {}: {e}",
            t.image
        );
        if let Err(u) = undo {
            msg.push_str(&format!(
                "; removing it again also failed ({u}): remove it by hand with `docker rm -f {name}`"
            ));
        }
        bail!(msg);
    }
    Ok(id)
}

/// The user-defined network `name` exists on the host: created (bridge driver, labelled
/// `hoist.network`) when missing, so that containers on it resolve each other by name. An
/// existing network of that name is used as it is, like compose's external networks.
pub async fn ensure_network(docker: &Docker, name: &str) -> anyhow::Result<()> {
    match docker
        .inspect_network(name, None::<InspectNetworkOptions>)
        .await
    {
        Ok(_) => return Ok(()),
        Err(e) if is_not_found(&e) => {}
        Err(e) => bail!("the host's Docker engine cannot inspect network {name}: {e}"),
    }
    let request = NetworkCreateRequest {
        name: name.to_string(),
        driver: Some("bridge".to_string()),
        labels: Some(HashMap::from([(
            "hoist.network".to_string(),
            "true".to_string(),
        )])),
        ..Default::default()
    };
    match docker.create_network(request).await {
        Ok(_) => Ok(()),
        // Another deployment created it meanwhile.
        Err(e) if is_conflict(&e) => Ok(()),
        Err(e) => bail!("the host's Docker engine could not create network {name}: {e}"),
    }
}

/// Remove the container `name` (killing it if it runs), with its anonymous volumes. No-op
/// when there is none. Refuses a container of another app than `app`.
pub async fn remove(docker: &Docker, name: &str, app: &str) -> anyhow::Result<()> {
    let Some(c) = inspect_named(docker, name).await? else {
        return Ok(());
    };
    owned_by(
        app,
        name,
        c.config.as_ref().and_then(|cfg| cfg.labels.as_ref()),
    )?;
    force_remove(docker, c.id.as_deref().unwrap_or(name))
        .await
        .with_context(|| format!("the host's Docker engine could not remove container {name}"))
}

/// Restore `NAME-r<release>` as `name` and start it: the old container with its old settings.
/// Ok(false) when no such kept container exists. Fails, changing nothing, while a container
/// named `name` exists.
pub async fn restore_kept(
    docker: &Docker,
    name: &str,
    app: &str,
    release: i64,
) -> anyhow::Result<bool> {
    let kept = kept_name(name, release);
    let Some(old) = inspect_named(docker, &kept).await? else {
        return Ok(false);
    };
    owned_by(
        app,
        &kept,
        old.config.as_ref().and_then(|cfg| cfg.labels.as_ref()),
    )?;
    if inspect_named(docker, name).await?.is_some() {
        bail!(
            "cannot restore {kept} as {name}: a container named {name} still exists; remove it first"
        );
    }
    let id = old.id.unwrap_or_else(|| kept.clone());
    rename(docker, &id, name)
        .await
        .with_context(|| format!("could not rename the kept container {kept} back to {name}"))?;
    // A kept container that still runs (not yet stopped after a gapless switch) serves as it is.
    let still_running = is_running(old.state.and_then(|s| s.status));
    if still_running {
        return Ok(true);
    }
    if let Err(e) = docker.start_container(&id, None).await {
        // Put the name back so that a second attempt finds the kept container again.
        let undo = rename(docker, &id, &kept).await;
        let mut msg = format!(
            "the host's Docker engine could not start the restored {name} (release {release}): {e}"
        );
        if let Err(u) = undo {
            msg.push_str(&format!("; renaming it back to {kept} also failed: {u}"));
        }
        bail!(msg);
    }
    Ok(true)
}

/// Whether the container `name` was created with every `NAME=value` of `env` (true when no
/// such container exists): a kept release created with a secret's old value is not restored.
pub async fn env_has(
    docker: &Docker,
    name: &str,
    env: &[(String, String)],
) -> anyhow::Result<bool> {
    let Some(c) = inspect_named(docker, name).await? else {
        return Ok(true);
    };
    let have = c.config.and_then(|cfg| cfg.env).unwrap_or_default();
    Ok(env
        .iter()
        .all(|(k, v)| have.iter().any(|e| *e == format!("{k}={v}"))))
}

/// Read back what the host runs as `name`: the container's image, and that image's manifest
/// digest in `repository` from the engine's RepoDigests.
///
/// When an image has several digests in the repository (pushed again with other manifest
/// bytes), the one the container was created from (`repo@sha256:…` in its config) wins.
pub async fn read_back(docker: &Docker, name: &str, repository: &str) -> anyhow::Result<ReadBack> {
    let Some(c) = inspect_named(docker, name).await? else {
        bail!("no container named {name} on the host");
    };
    let image_id = c.image.clone().ok_or_else(|| {
        anyhow!("the host's Docker engine reports container {name} without an image")
    })?;
    let image = docker.inspect_image(&image_id).await.with_context(|| {
        format!("the host's Docker engine cannot inspect image {image_id} of container {name}")
    })?;
    let candidates: Vec<String> = image
        .repo_digests
        .unwrap_or_default()
        .iter()
        .filter_map(|rd| rd.split_once('@'))
        .filter(|(r, _)| same_repository(r, repository))
        .map(|(_, d)| d.to_string())
        .collect();
    let created_from = c
        .config
        .as_ref()
        .and_then(|cfg| cfg.image.as_deref())
        .and_then(|i| i.split_once('@'))
        .map(|(_, d)| d.to_string());
    let digest = match created_from {
        Some(d) if candidates.contains(&d) => Some(d),
        _ => candidates.into_iter().next(),
    };
    Ok(ReadBack {
        digest,
        running: is_running(c.state.and_then(|s| s.status)),
        container_id: c.id.unwrap_or_default(),
        image_id,
    })
}

/// Retention: remove the kept containers `NAME-r<N>` whose N is not in `keep`, then their
/// images when no other container uses them. Never touches `name` itself, nor a container
/// whose release label disagrees with its name. Returns the removed container names followed
/// by the removed images' references.
pub async fn prune(
    docker: &Docker,
    name: &str,
    app: &str,
    keep: &BTreeSet<i64>,
) -> anyhow::Result<Vec<String>> {
    let mut removed = Vec::new();
    let mut images = Vec::new();
    for (cname, c) in stale_kept(docker, name, app, keep).await? {
        let Some(id) = c.id.as_deref() else { continue };
        force_remove(docker, id).await.with_context(|| {
            format!("the host's Docker engine could not remove kept container {cname}")
        })?;
        removed.push(cname);
        if let Some(image_id) = c.image_id {
            images.push((image_id, c.image.unwrap_or_default()));
        }
    }
    for (image_id, reference) in images {
        if remove_unused_image(docker, &image_id, &reference).await? {
            removed.push(if reference.is_empty() {
                image_id
            } else {
                reference
            });
        }
    }
    Ok(removed)
}

/// The kept containers `NAME-r<N>` of `app` with N not in `keep` and a release label saying
/// N, oldest first, with their names.
async fn stale_kept(
    docker: &Docker,
    name: &str,
    app: &str,
    keep: &BTreeSet<i64>,
) -> anyhow::Result<Vec<(String, ContainerSummary)>> {
    // The name filter is a regular expression matched anywhere; it only narrows the listing.
    // The exact `NAME-r<digits>` match happens here.
    let filters = HashMap::from([("name", vec![name.to_string()])]);
    let options = ListContainersOptionsBuilder::default()
        .all(true)
        .filters(&filters)
        .build();
    let listed = docker
        .list_containers(Some(options))
        .await
        .context("the host's Docker engine cannot list containers")?;
    let mut stale: Vec<(i64, String, ContainerSummary)> = Vec::new();
    for c in listed {
        let Some((cname, release)) = c
            .names
            .iter()
            .flatten()
            .map(|n| n.trim_start_matches('/'))
            .find_map(|n| match slot_of(name, n) {
                Some(Slot::Kept(r)) => Some((n, r)),
                _ => None,
            })
        else {
            continue;
        };
        if keep.contains(&release) {
            continue;
        }
        let labelled = c
            .labels
            .as_ref()
            .and_then(|l| l.get(RELEASE_LABEL))
            .and_then(|r| r.parse::<i64>().ok());
        let owner = c.labels.as_ref().and_then(|l| l.get(APP_LABEL));
        if labelled != Some(release) || owner.map(String::as_str) != Some(app) {
            continue;
        }
        stale.push((release, cname.to_string(), c));
    }
    // Oldest first, whatever order the engine listed them in.
    stale.sort_by_key(|(release, _, _)| *release);
    Ok(stale.into_iter().map(|(_, n, c)| (n, c)).collect())
}

/// Remove the image `image_id` unless a container still uses it; Ok(true) when removed.
async fn remove_unused_image(
    docker: &Docker,
    image_id: &str,
    reference: &str,
) -> anyhow::Result<bool> {
    // By ID and without force: the engine refuses (409) while any container, serving or
    // kept, still uses the image. Removing by reference would instead just untag it, even
    // under a running container, and erase the digest that read-back proves it by.
    let options = RemoveImageOptionsBuilder::default().force(false).build();
    match docker.remove_image(image_id, Some(options), None).await {
        Ok(_) => Ok(true),
        Err(e) if is_not_found(&e) || is_conflict(&e) => {
            tracing::debug!(image = %image_id, error = %e, "image kept: still in use or gone");
            Ok(false)
        }
        Err(e) => Err(anyhow!(e)).with_context(|| {
            format!("the host's Docker engine could not remove image {reference} ({image_id})")
        }),
    }
}

/// Engine version and the containers labelled `hoist.app`.
pub async fn describe(docker: &Docker) -> anyhow::Result<HostInfo> {
    let version = docker
        .version()
        .await
        .context("the host's Docker engine does not answer a version request")?;
    let filters = HashMap::from([("label", vec![APP_LABEL.to_string()])]);
    let options = ListContainersOptionsBuilder::default()
        .all(true)
        .filters(&filters)
        .build();
    let listed = docker
        .list_containers(Some(options))
        .await
        .context("the host's Docker engine cannot list containers")?;
    let mut containers: Vec<HostContainer> = listed
        .into_iter()
        .map(|c| {
            let labels = c.labels.unwrap_or_default();
            HostContainer {
                name: c
                    .names
                    .and_then(|n| n.into_iter().next())
                    .map(|n| n.trim_start_matches('/').to_string())
                    .unwrap_or_default(),
                app: labels.get(APP_LABEL).cloned().unwrap_or_default(),
                release: labels.get(RELEASE_LABEL).and_then(|r| r.parse().ok()),
                digest: labels.get(DIGEST_LABEL).cloned(),
                state: c.state.map(|s| s.to_string()).unwrap_or_default(),
            }
        })
        .collect();
    containers.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(HostInfo {
        version: version.version.unwrap_or_default(),
        api_version: version.api_version.unwrap_or_default(),
        containers,
    })
}

/// Inspect the container named exactly `name`; None when there is none. Docker also resolves
/// a string to the container whose ID starts with it: such an answer counts as none.
async fn inspect_named(
    docker: &Docker,
    name: &str,
) -> anyhow::Result<Option<ContainerInspectResponse>> {
    match docker.inspect_container(name, None).await {
        Ok(c) if c.name.as_deref().map(|n| n.trim_start_matches('/')) == Some(name) => Ok(Some(c)),
        Ok(_) => Ok(None),
        Err(e) if is_not_found(&e) => Ok(None),
        Err(e) => bail!("the host's Docker engine cannot inspect container {name}: {e}"),
    }
}

/// Running in Docker's sense of `docker ps`: a restarting container reports `Running: true`
/// but its process is gone.
fn is_running(status: Option<ContainerStateStatusEnum>) -> bool {
    status == Some(ContainerStateStatusEnum::RUNNING)
}

async fn rename(docker: &Docker, id: &str, to: &str) -> Result<(), DockerError> {
    let options = RenameContainerOptionsBuilder::default().name(to).build();
    docker.rename_container(id, options).await
}

async fn force_remove(docker: &Docker, id: &str) -> Result<(), DockerError> {
    let options = RemoveContainerOptionsBuilder::default()
        .force(true)
        .v(true)
        .build();
    match docker.remove_container(id, Some(options)).await {
        Err(e) if is_not_found(&e) => Ok(()),
        other => other,
    }
}

fn is_not_found(e: &DockerError) -> bool {
    matches!(
        e,
        DockerError::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}

fn is_conflict(e: &DockerError) -> bool {
    matches!(
        e,
        DockerError::DockerResponseServerError {
            status_code: 409,
            ..
        }
    )
}

/// `sha256:` and 64 lowercase hex digits.
fn check_digest(digest: &str) -> anyhow::Result<()> {
    match digest.strip_prefix("sha256:") {
        Some(hex)
            if hex.len() == 64
                && hex
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) =>
        {
            Ok(())
        }
        _ => bail!("{digest:?} is not a manifest digest (sha256: and 64 hex digits)"),
    }
}

/// Whether two repository names mean the same repository. The engine writes Docker Hub
/// repositories in their short form (`nginx`, `acme/web`) in RepoDigests, whatever form the
/// pull used (`docker.io/library/nginx`).
fn same_repository(a: &str, b: &str) -> bool {
    familiar(a) == familiar(b)
}

fn familiar(repo: &str) -> &str {
    let repo = repo
        .strip_prefix("docker.io/")
        .or_else(|| repo.strip_prefix("index.docker.io/"))
        .unwrap_or(repo);
    repo.strip_prefix("library/").unwrap_or(repo)
}

/// `ports` as Docker's exposed ports and port bindings. Each entry is `HOST:CONTAINER`,
/// `IP:HOST:CONTAINER` or `[IPv6]:HOST:CONTAINER`, optionally ending in `/tcp` or `/udp`.
fn port_bindings(ports: &[String]) -> anyhow::Result<(Vec<String>, PortMap)> {
    let mut exposed: Vec<String> = Vec::new();
    let mut map = PortMap::new();
    for spec in ports {
        let usage = || {
            anyhow!(
                "port {spec:?} is not HOST:CONTAINER or IP:HOST:CONTAINER (like \"8080:8080\"), \
                 optionally ending in /tcp or /udp"
            )
        };
        let (mapping, proto) = match spec.rsplit_once('/') {
            Some((m, p @ ("tcp" | "udp"))) => (m, p),
            Some(_) => return Err(usage()),
            None => (spec.as_str(), "tcp"),
        };
        if !mapping.contains(':') {
            // `CONTAINER` alone: the engine picks the host port (an empty HostPort).
            if mapping.is_empty()
                || !mapping.bytes().all(|b| b.is_ascii_digit())
                || mapping.parse::<u16>().is_err()
            {
                return Err(usage());
            }
            let key = format!("{mapping}/{proto}");
            if !exposed.contains(&key) {
                exposed.push(key.clone());
            }
            map.entry(key)
                .or_insert_with(|| Some(Vec::new()))
                .get_or_insert_with(Vec::new)
                .push(PortBinding {
                    host_ip: None,
                    host_port: Some(String::new()),
                });
            continue;
        }
        let (ip, ports) = if let Some(rest) = mapping.strip_prefix('[') {
            let (ip, ports) = rest.split_once("]:").ok_or_else(usage)?;
            (Some(ip), ports)
        } else {
            match mapping.matches(':').count() {
                1 => (None, mapping),
                2 => {
                    let (ip, ports) = mapping.split_once(':').ok_or_else(usage)?;
                    (Some(ip), ports)
                }
                _ => return Err(usage()),
            }
        };
        let (host, container) = ports.split_once(':').ok_or_else(usage)?;
        for p in [host, container] {
            if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) || p.parse::<u16>().is_err() {
                return Err(usage());
            }
        }
        let key = format!("{container}/{proto}");
        if !exposed.contains(&key) {
            exposed.push(key.clone());
        }
        map.entry(key)
            .or_insert_with(|| Some(Vec::new()))
            .get_or_insert_with(Vec::new)
            .push(PortBinding {
                host_ip: ip.map(str::to_string),
                host_port: Some(host.to_string()),
            });
    }
    Ok((exposed, map))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_pull_names_the_registry_entry_and_other_failures_the_engine() {
        let d = format!("sha256:{}", "b".repeat(64));
        let image = format!("10.203.0.1:5001/acme/web@{d}");
        let entry = RegistryConfig {
            host: "10.203.0.1:5001".into(),
            insecure: true,
            username: Some(crate::config::Secret::new("ci")),
            password: Some(crate::config::Secret::new("wrong-pw")),
        };
        let refused = DockerError::DockerResponseServerError {
            status_code: 500,
            message: format!(
                "Head \"http://10.203.0.1:5001/v2/acme/web/manifests/{d}\": no basic auth credentials"
            ),
        };
        let e = pull_error(&refused, &image, Some(&entry));
        assert!(matches!(e, PullError::Refused(_)), "{e}");
        let text = e.to_string();
        assert!(
            text.contains("the registry 10.203.0.1:5001 refused the credentials"),
            "{text}"
        );
        assert!(!text.contains("wrong-pw"), "{text}");
        let without = pull_error(&refused, &image, None).to_string();
        assert!(
            without.contains("add a [[registry]] entry with host = \"10.203.0.1:5001\""),
            "{without}"
        );
        let down = DockerError::DockerResponseServerError {
            status_code: 500,
            message: "dial tcp 10.203.0.1:5001: connect: connection refused".into(),
        };
        assert!(matches!(
            pull_error(&down, &image, Some(&entry)),
            PullError::Engine { .. }
        ));
    }

    #[test]
    fn ports_become_bindings() {
        let (exposed, map) = port_bindings(&[
            "8080:80".to_string(),
            "127.0.0.1:9090:80".to_string(),
            "[::1]:5353:53/udp".to_string(),
        ])
        .unwrap();
        assert_eq!(exposed, ["80/tcp", "53/udp"]);
        let tcp = map["80/tcp"].as_ref().unwrap();
        assert_eq!(tcp.len(), 2);
        assert_eq!(tcp[0].host_ip, None);
        assert_eq!(tcp[0].host_port.as_deref(), Some("8080"));
        assert_eq!(tcp[1].host_ip.as_deref(), Some("127.0.0.1"));
        let udp = map["53/udp"].as_ref().unwrap();
        assert_eq!(udp[0].host_ip.as_deref(), Some("::1"));
        assert_eq!(udp[0].host_port.as_deref(), Some("5353"));
    }

    #[test]
    fn bad_ports_are_refused() {
        for bad in ["a", "a:80", "1:2:3:4", "80:80/sctp", "+80:80", "70000:80"] {
            assert!(port_bindings(&[bad.to_string()]).is_err(), "{bad}");
        }
    }

    #[test]
    fn hub_repositories_compare_in_short_form() {
        assert!(same_repository("nginx", "docker.io/library/nginx"));
        assert!(same_repository("acme/web", "docker.io/acme/web"));
        assert!(same_repository(
            "10.203.0.1:5000/a/b",
            "10.203.0.1:5000/a/b"
        ));
        assert!(!same_repository("10.203.0.1:5000/a/b", "a/b"));
    }

    #[test]
    fn digests_are_checked() {
        assert!(check_digest(&format!("sha256:{}", "a".repeat(64))).is_ok());
        assert!(check_digest("sha256:abc").is_err());
        assert!(check_digest(&format!("sha512:{}", "a".repeat(64))).is_err());
    }

    #[test]
    fn kept_names() {
        assert_eq!(kept_name("web", 7), "web-r7");
        assert_eq!(kept_name("web-2", 7), "web-2-r7");
        assert_eq!(replica_names("web", 1), ["web"]);
        assert_eq!(replica_names("web", 3), ["web-1", "web-2", "web-3"]);
    }

    #[test]
    fn names_say_serving_or_kept() {
        assert_eq!(slot_of("web", "web"), Some(Slot::Serving));
        assert_eq!(slot_of("web", "web-2"), Some(Slot::Serving));
        assert_eq!(slot_of("web", "web-r7"), Some(Slot::Kept(7)));
        assert_eq!(slot_of("web", "web-2-r7"), Some(Slot::Kept(7)));
        for other in [
            "webx", "web-", "web-r", "web-2-r", "web-a-r7", "web-2-x7", "we",
        ] {
            assert_eq!(slot_of("web", other), None, "{other}");
        }
    }

    #[test]
    fn a_container_port_alone_is_engine_picked() {
        let (exposed, map) = port_bindings(&["8080".to_string()]).unwrap();
        assert_eq!(exposed, ["8080/tcp"]);
        assert_eq!(
            map["8080/tcp"].as_ref().unwrap()[0].host_port.as_deref(),
            Some("")
        );
    }
}
