//! Executing one pipeline step: `commands` in a container on the build engine, or `shell`
//! commands on the agent's own machine.
//!
//! Both executors share one contract: the commands run under `sh -e` (the first failing
//! command fails the step), each command is echoed as `+ COMMAND` before it runs, stdout and
//! stderr stream into the step's log as they arrive, every secret value is masked in every
//! byte of that log, and a timeout or a cancelled run kills everything the step started.
//!
//! **Invariant:** values that come from outside the repository (branch names, commit messages,
//! secrets) reach a step only as environment variables, never as part of the script text, so a
//! branch named `x;$(rm -rf ~)` is data, not code.
//!
//! **Invariant:** every container a step creates carries the step's labels (`hoist.agent`,
//! `hoist.run`, `hoist.step`) and is removed before the step returns; one left by a crash is
//! found by its labels and removed by [`remove_leftovers`], which only ever touches what the
//! calling agent's own id labels: agents sharing a builder never remove each other's work.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bollard::Docker;
use bollard::errors::Error as DockerError;
use bollard::models::{ContainerCreateBody, HostConfig, Mount, MountType};
use bollard::query_parameters::{
    AttachContainerOptionsBuilder, CreateImageOptionsBuilder, KillContainerOptionsBuilder,
    ListContainersOptionsBuilder, ListNetworksOptionsBuilder, RemoveContainerOptionsBuilder,
    StartContainerOptions,
};
use futures_util::StreamExt;
use tokio::io::AsyncReadExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Label carrying the run's id on every container and network a run creates on the builder.
pub const RUN_LABEL: &str = "hoist.run";
/// Label carrying the id of the agent that created a container or network on the builder; what
/// [`remove_leftovers`] looks for. Run ids are only unique within one agent's store, so two
/// agents sharing a builder both have a run 1: this label keeps their leftovers apart.
pub const AGENT_LABEL: &str = "hoist.agent";
/// Label carrying a service's name on its container (see `services`).
pub const SERVICE_LABEL: &str = "hoist.service";
/// Label carrying the step's name on every step container, for a person reading `docker ps`.
pub const STEP_LABEL: &str = "hoist.step";

/// Where the checkout is mounted in a step container, and its working directory.
const CONTAINER_WORKSPACE: &str = "/workspace";

/// After the step's process ended (or was killed), how long its remaining output may take to
/// arrive before the log is closed without it. Output still in flight is a few pipe buffers.
const DRAIN_DEADLINE: Duration = Duration::from_secs(5);

/// Secret values shorter than this are not masked: masking every `a` or `on` would make logs
/// unreadable and protects nothing.
const MIN_SECRET_LEN: usize = crate::config::MIN_SECRET_CHARS;

/// Reads of a shell step's pipes (8 KiB each) waiting for the log: past them the step's
/// writes block until the log catches up.
const PIPE_DEPTH: usize = 16;

/// The only variables of the agent's own environment that shell steps and deploy hooks
/// see: enough to find programs and a home; never the agent's secrets.
pub const KEPT_ENV: [&str; 3] = ["PATH", "HOME", "LANG"];

/// What replaces a secret value in the log.
const MASK: &[u8] = b"***";

/// Bytes of output a [`LogSink`] holds before its writers wait (a few chunks of the store's).
pub const SINK_BYTES: usize = 1024 * 1024;

/// What goes into a step's log. No `Debug`: output is not masked yet.
pub enum LogMsg {
    /// Output of what the step runs (its commands, the engine's build or push, a service):
    /// counted against `max_log_size`. The permit is its share of [`SINK_BYTES`], given back
    /// when the message is dropped (once its reader has taken the bytes).
    Output(Vec<u8>, OwnedSemaphorePermit),
    /// hoist's own line about the step (started, approved, a deployment's progress and its
    /// hooks' output, ended and why): kept past `max_log_size`, so that a cut log still says
    /// how the step ended, up to `logs::NOTE_ROOM` of their own. Not counted against
    /// [`SINK_BYTES`]: they come from code that cannot wait (a deployment's progress).
    Note(Vec<u8>),
}

impl LogMsg {
    /// The bytes, whichever kind.
    pub fn into_bytes(self) -> Vec<u8> {
        match self {
            LogMsg::Output(b, _) | LogMsg::Note(b) => b,
        }
    }
}

/// Where a step's log goes, in order. Output is bounded by bytes: a writer waits while
/// [`SINK_BYTES`] of its output are not yet taken by the reader, so a step printing faster
/// than the store writes is slowed down (its pipe fills, and the process blocks on its
/// writes) instead of filling memory. Notes never wait, so code that cannot wait may log.
#[derive(Clone)]
pub struct LogSink {
    /// To the pump (or a printer, or a tracing logger).
    tx: mpsc::UnboundedSender<LogMsg>,
    /// Output bytes that may still be in flight.
    room: Arc<Semaphore>,
}

impl LogSink {
    /// A sink and the receiving end, for whoever reads it.
    pub fn channel() -> (LogSink, mpsc::UnboundedReceiver<LogMsg>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let room = Arc::new(Semaphore::new(SINK_BYTES));
        (LogSink { tx, room }, rx)
    }

    /// Output of what the step runs; waits for room. False once nobody reads the log any more
    /// (the step may still go on; its output is dropped).
    pub async fn send(&self, bytes: Vec<u8>) -> bool {
        if bytes.is_empty() {
            return true;
        }
        // A chunk larger than the whole budget takes all of it.
        let share = bytes.len().min(SINK_BYTES) as u32;
        let Ok(permit) = self.room.clone().acquire_many_owned(share).await else {
            return false;
        };
        self.tx.send(LogMsg::Output(bytes, permit)).is_ok()
    }

    /// One of hoist's own lines (a newline is added when missing).
    pub fn note(&self, line: impl Into<String>) {
        let mut line = line.into();
        if !line.ends_with('\n') {
            line.push('\n');
        }
        let _ = self.tx.send(LogMsg::Note(line.into_bytes()));
    }
}

/// Everything a step needs besides its commands.
#[derive(Clone)]
pub struct StepContext {
    /// The checkout: mounted at `/workspace` for container steps, the working directory of shell steps.
    pub workspace: PathBuf,
    /// `HOIST_*` variables and the step's `env`; passed as environment variables only.
    pub env: Vec<(String, String)>,
    /// Name and value of each secret the step asked for: set as environment variables and
    /// masked in every log byte.
    pub secrets: Vec<(String, String)>,
    /// The step's `timeout:`; `None` lets it run until it ends or the run is cancelled.
    pub timeout: Option<Duration>,
    /// Cancelled when the run is cancelled (by a person, or superseded by a newer push).
    pub cancel: CancellationToken,
    /// Receives the step's masked output.
    pub log: LogSink,
    /// Put on every container the step creates ([`AGENT_LABEL`], [`RUN_LABEL`], [`STEP_LABEL`])
    /// so that containers orphaned by a crash can be found and removed.
    pub labels: HashMap<String, String>,
    /// The run's own Docker network, when it has services: a container step joins it, so that
    /// it reaches each service by name. Shell steps run on the agent's machine and cannot.
    pub network: Option<String>,
}

/// How a step ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Every command exited with 0.
    Success,
    /// A command exited with a non-zero status, which ended the script (`sh -e`).
    Failed { exit_code: i64, reason: String },
    /// The step ran longer than its timeout and was killed.
    TimedOut { after: Duration },
    /// The run was cancelled while the step ran; the step was killed.
    Cancelled,
    /// The step could not be run at all (missing image, engine error, bad workspace).
    Error { reason: String },
    /// The step decided not to act, and why (a deploy step whose release is outdated by a
    /// newer commit's already deployed).
    Skipped { reason: String },
}

impl Outcome {
    /// A sentence a person can act on: "command exited with 3", "timed out after 2s", "cancelled".
    pub fn reason(&self) -> String {
        match self {
            Outcome::Success => "succeeded".to_string(),
            Outcome::Failed { reason, .. } => reason.clone(),
            Outcome::TimedOut { after } => {
                format!("timed out after {}", humantime::format_duration(*after))
            }
            Outcome::Cancelled => "cancelled".to_string(),
            Outcome::Error { reason } | Outcome::Skipped { reason } => reason.clone(),
        }
    }

    /// Whether the step succeeded.
    pub fn is_success(&self) -> bool {
        matches!(self, Outcome::Success)
    }

    fn failed(exit_code: i64) -> Outcome {
        Outcome::Failed {
            exit_code,
            reason: format!("command exited with {exit_code}"),
        }
    }
}

/// Runs `commands` with `sh -e` in a fresh container of `image` on the build engine, with the
/// workspace mounted at `/workspace`. The container is removed before this returns.
pub async fn run_container(
    docker: &Docker,
    image: &str,
    commands: &[String],
    ctx: &StepContext,
) -> Outcome {
    let mut out = Output::new(ctx);
    let outcome = container_step(docker, image, commands, ctx, &mut out).await;
    out.finish(&outcome).await;
    outcome
}

/// Runs `commands` with `sh -e` as a child process on the agent's machine, in the workspace,
/// with a cleared environment (only `PATH`, `HOME`, `LANG` are kept) plus the step's variables.
/// The shell gets its own process group, and the whole group is killed when the step ends.
pub async fn run_shell(commands: &[String], ctx: &StepContext) -> Outcome {
    let mut out = Output::new(ctx);
    let outcome = shell_step(commands, ctx, &mut out).await;
    out.finish(&outcome).await;
    outcome
}

/// What [`remove_leftovers`] removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Removed {
    pub containers: usize,
    pub networks: usize,
}

/// Removes the containers (step and service containers) and then the networks that carry
/// `agent`'s [`AGENT_LABEL`], left by a crash or a failed cleanup: all of them (`run` is
/// `None`, at start, when this agent runs nothing yet), or those of one run. Another agent's
/// are never touched, whatever their run ids.
pub async fn remove_leftovers(
    docker: &Docker,
    agent: &str,
    run: Option<i64>,
) -> anyhow::Result<Removed> {
    let mut labels = vec![format!("{AGENT_LABEL}={agent}")];
    if let Some(run) = run {
        labels.push(format!("{RUN_LABEL}={run}"));
    }
    let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
    // Several `label` filters must all match.
    let filters = HashMap::from([("label", labels.clone())]);
    let options = ListContainersOptionsBuilder::default()
        .all(true)
        .filters(&filters)
        .build();
    let containers = docker
        .list_containers(Some(options))
        .await
        .with_context(|| format!("listing containers labelled {}", labels.join(", ")))?;
    let mut removed = Removed::default();
    for id in containers.into_iter().filter_map(|c| c.id) {
        match force_remove(docker, &id).await {
            Ok(()) => removed.containers += 1,
            // Removed meanwhile, by its own step or another cleanup.
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(e).with_context(|| format!("removing container {id}")),
        }
    }
    let options = ListNetworksOptionsBuilder::default()
        .filters(&filters)
        .build();
    let networks = docker
        .list_networks(Some(options))
        .await
        .with_context(|| format!("listing networks labelled {}", labels.join(", ")))?;
    for network in networks {
        let Some(id) = network.id else { continue };
        match docker.remove_network(&id).await {
            Ok(()) => removed.networks += 1,
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(e).with_context(|| format!("removing network {id}")),
        }
    }
    Ok(removed)
}

/// Whether the engine answered 404: the thing is gone already.
pub(crate) fn is_not_found(e: &DockerError) -> bool {
    matches!(
        e,
        DockerError::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}

/// The script both executors run: each command preceded by a line echoing it.
///
/// The commands are trusted repository content; nothing else is ever put in here.
fn script(commands: &[String]) -> String {
    // One stream: stdout and stderr travel through separate pipes (and, from a container,
    // separately copied streams), so without this an error message can reach the log before
    // the output that preceded it.
    let mut script = String::from("exec 2>&1\n");
    for command in commands {
        script.push_str("printf '+ %s\\n' ");
        script.push_str(&single_quote(command));
        script.push('\n');
        script.push_str(command);
        script.push('\n');
    }
    script
}

/// Quotes `s` for `sh` so that it is one word, taken literally.
fn single_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The step's log as it is written: output through the masker into the sink.
struct Output<'a> {
    masker: Masker,
    log: &'a LogSink,
}

impl<'a> Output<'a> {
    fn new(ctx: &'a StepContext) -> Output<'a> {
        Output {
            masker: Masker::new(ctx.secrets.iter().map(|(_, value)| value.clone())),
            log: &ctx.log,
        }
    }

    /// Waits while the log's sink is full: the step's output is read no faster than stored.
    async fn write(&mut self, chunk: &[u8]) {
        let masked = self.masker.push(chunk);
        self.send(masked).await;
    }

    /// Flushes what the masker held back and, unless the step succeeded, ends the log with
    /// why, so that a person reading only the log knows what happened.
    async fn finish(&mut self, outcome: &Outcome) {
        let rest = self.masker.finish();
        self.send(rest).await;
        if !outcome.is_success() {
            // Reasons can quote engine errors; masked like output, to be safe. A note: kept
            // also when the output was cut at `max_log_size`.
            let line = self
                .masker
                .mask_text(&format!("hoist: {}", outcome.reason()));
            self.log.note(line);
        }
    }

    async fn send(&self, bytes: Vec<u8>) {
        // A closed sink means nobody reads the log any more; the step still runs to its end.
        self.log.send(bytes).await;
    }
}

/// How the wait for a step's process ended.
enum End<T> {
    /// The process ended by itself.
    Exited(T),
    TimedOut(Duration),
    Cancelled,
}

/// When a step that starts now must have ended; `None` without a timeout.
fn deadline(ctx: &StepContext) -> Option<Instant> {
    ctx.timeout.map(|t| Instant::now() + t)
}

/// Sleeps until the deadline, or forever without one.
pub(crate) async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

async fn container_step(
    docker: &Docker,
    image: &str,
    commands: &[String],
    ctx: &StepContext,
    out: &mut Output<'_>,
) -> Outcome {
    if ctx.cancel.is_cancelled() {
        return Outcome::Cancelled;
    }
    // The timeout covers the whole step, a pull of its image included.
    let deadline = deadline(ctx);
    // The engine resolves a bind source on its own machine: it must be absolute there.
    let workspace = match std::fs::canonicalize(&ctx.workspace) {
        Ok(path) => path,
        Err(e) => {
            return Outcome::Error {
                reason: format!("workspace {} is not usable: {e}", ctx.workspace.display()),
            };
        }
    };
    if let Err(outcome) = ensure_image(docker, image, ctx, deadline).await {
        return outcome;
    }

    let env = ctx
        .env
        .iter()
        .chain(&ctx.secrets)
        .map(|(name, value)| format!("{name}={value}"))
        .collect();
    let body = ContainerCreateBody {
        image: Some(image.to_string()),
        cmd: Some(vec![
            "sh".to_string(),
            "-e".to_string(),
            "-c".to_string(),
            script(commands),
        ]),
        env: Some(env),
        working_dir: Some(CONTAINER_WORKSPACE.to_string()),
        labels: Some(ctx.labels.clone()),
        tty: Some(false),
        attach_stdout: Some(true),
        attach_stderr: Some(true),
        open_stdin: Some(false),
        host_config: Some(HostConfig {
            network_mode: ctx.network.clone(),
            mounts: Some(vec![Mount {
                target: Some(CONTAINER_WORKSPACE.to_string()),
                source: Some(workspace.to_string_lossy().into_owned()),
                typ: Some(MountType::BIND),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    };
    let id = match docker.create_container(None, body).await {
        Ok(created) => created.id,
        Err(e) => {
            return Outcome::Error {
                reason: format!("could not create the step container from {image}: {e}"),
            };
        }
    };
    let guard = ContainerGuard {
        docker: docker.clone(),
        id,
        armed: true,
    };
    let outcome = drive_container(docker, &guard.id, ctx, deadline, out).await;
    guard.remove().await;
    outcome
}

/// Makes sure `image` is on the build engine, pulling it if it is not.
async fn ensure_image(
    docker: &Docker,
    image: &str,
    ctx: &StepContext,
    deadline: Option<Instant>,
) -> Result<(), Outcome> {
    pull_if_missing(docker, image, &ctx.cancel, deadline)
        .await
        .map_err(|e| match e {
            Pull::Cancelled => Outcome::Cancelled,
            Pull::TimedOut => Outcome::TimedOut {
                after: ctx.timeout.unwrap_or_default(),
            },
            Pull::Failed(reason) => Outcome::Error { reason },
        })
}

/// Why [`pull_if_missing`] could not make an image available.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Pull {
    Cancelled,
    /// The deadline passed during the pull.
    TimedOut,
    /// The engine could not look it up or pull it; a sentence naming the image.
    Failed(String),
}

/// Pulls `image` onto the build engine unless it is there already; for steps and services.
pub(crate) async fn pull_if_missing(
    docker: &Docker,
    image: &str,
    cancel: &CancellationToken,
    deadline: Option<Instant>,
) -> Result<(), Pull> {
    match docker.inspect_image(image).await {
        Ok(_) => return Ok(()),
        Err(e) if is_not_found(&e) => {}
        Err(e) => {
            return Err(Pull::Failed(format!(
                "cannot look up image {image} on the build engine: {e}"
            )));
        }
    }
    let mut options = CreateImageOptionsBuilder::default().from_image(image);
    if !has_tag_or_digest(image) {
        // Without a tag the engine would pull every tag of the repository.
        options = options.tag("latest");
    }
    let pull = async {
        let mut progress = docker.create_image(Some(options.build()), None, None);
        while let Some(item) = progress.next().await {
            item?;
        }
        Ok::<_, DockerError>(())
    };
    let pulled = tokio::select! {
        pulled = pull => pulled,
        _ = cancel.cancelled() => return Err(Pull::Cancelled),
        _ = sleep_until(deadline) => return Err(Pull::TimedOut),
    };
    pulled.map_err(|e| {
        Pull::Failed(format!(
            "image {image} is not on the build engine and could not be pulled: {e}"
        ))
    })
}

/// Whether an image reference names a tag or digest (`name:tag`, `name@sha256:…`), as opposed
/// to a bare name, where a `:` can also be a registry's port (`127.0.0.1:5000/app`).
fn has_tag_or_digest(image: &str) -> bool {
    let last = image.rsplit('/').next().unwrap_or(image);
    last.contains(':') || last.contains('@')
}

/// Starts the created container and streams its output until it exits, times out, or the run
/// is cancelled.
async fn drive_container(
    docker: &Docker,
    id: &str,
    ctx: &StepContext,
    deadline: Option<Instant>,
    out: &mut Output<'_>,
) -> Outcome {
    // Attached before the start, so that not a byte of output is missed, without depending on
    // the engine's log driver.
    let attach_options = AttachContainerOptionsBuilder::default()
        .stream(true)
        .stdout(true)
        .stderr(true)
        .build();
    let mut output = match docker.attach_container(id, Some(attach_options)).await {
        Ok(attached) => attached.output,
        Err(e) => {
            return Outcome::Error {
                reason: format!("could not attach to the step container: {e}"),
            };
        }
    };
    if let Err(e) = docker
        .start_container(id, None::<StartContainerOptions>)
        .await
    {
        return Outcome::Error {
            reason: format!("could not start the step container: {e}"),
        };
    }

    let mut wait = docker.wait_container(id, None);
    let exited = wait.next();
    let timed_out = sleep_until(deadline);
    let cancelled = ctx.cancel.cancelled();
    tokio::pin!(exited, timed_out, cancelled);
    let mut output_open = true;
    let end = loop {
        tokio::select! {
            chunk = output.next(), if output_open => match chunk {
                Some(Ok(chunk)) => out.write(&chunk.into_bytes()).await,
                Some(Err(e)) => {
                    tracing::warn!(container = id, error = %e, "step output stream broke");
                    output_open = false;
                }
                None => output_open = false,
            },
            exit = &mut exited => break End::Exited(exit),
            _ = &mut timed_out => break End::TimedOut(ctx.timeout.unwrap_or_default()),
            _ = &mut cancelled => break End::Cancelled,
        }
    };
    if !matches!(end, End::Exited(_)) {
        let kill = KillContainerOptionsBuilder::default()
            .signal("SIGKILL")
            .build();
        if let Err(e) = docker.kill_container(id, Some(kill)).await {
            // It may have ended on its own meanwhile; the forced removal stops it anyway.
            tracing::debug!(container = id, error = %e, "killing the step container");
        }
    }
    if output_open {
        let drained = async {
            while let Some(chunk) = output.next().await {
                match chunk {
                    Ok(chunk) => out.write(&chunk.into_bytes()).await,
                    Err(_) => break,
                }
            }
        };
        if tokio::time::timeout(DRAIN_DEADLINE, drained).await.is_err() {
            tracing::warn!(
                container = id,
                "step output did not end after the container did"
            );
        }
    }
    match end {
        End::Exited(exit) => match exit {
            Some(Ok(response)) if response.status_code == 0 => Outcome::Success,
            Some(Ok(response)) => Outcome::failed(response.status_code),
            // bollard reports a non-zero exit of a waited container as this error.
            Some(Err(DockerError::DockerContainerWaitError { code, .. })) => Outcome::failed(code),
            Some(Err(e)) => Outcome::Error {
                reason: format!("lost track of the step container: {e}"),
            },
            None => Outcome::Error {
                reason: "lost track of the step container: the engine ended the wait without an exit status".to_string(),
            },
        },
        End::TimedOut(after) => Outcome::TimedOut { after },
        End::Cancelled => Outcome::Cancelled,
    }
}

/// Removes the step's container when the step ends, also when its future is dropped midway.
struct ContainerGuard {
    docker: Docker,
    id: String,
    armed: bool,
}

impl ContainerGuard {
    /// Removes the container and waits for the engine to confirm.
    async fn remove(mut self) {
        self.armed = false;
        if let Err(e) = force_remove(&self.docker, &self.id).await {
            tracing::warn!(container = %self.id, error = %e,
                "could not remove the step container; it is removed with the run's other leftovers");
        }
    }
}

impl Drop for ContainerGuard {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let docker = self.docker.clone();
            let id = std::mem::take(&mut self.id);
            runtime.spawn(async move {
                if let Err(e) = force_remove(&docker, &id).await {
                    tracing::warn!(container = %id, error = %e, "could not remove the step container");
                }
            });
        }
    }
}

/// Removes a container, killing it if it runs, with its anonymous volumes.
pub(crate) async fn force_remove(docker: &Docker, id: &str) -> Result<(), DockerError> {
    let options = RemoveContainerOptionsBuilder::default()
        .force(true)
        .v(true)
        .build();
    docker.remove_container(id, Some(options)).await
}

async fn shell_step(commands: &[String], ctx: &StepContext, out: &mut Output<'_>) -> Outcome {
    if ctx.cancel.is_cancelled() {
        return Outcome::Cancelled;
    }
    let mut command = tokio::process::Command::new("sh");
    command
        .arg("-e")
        .arg("-c")
        .arg(script(commands))
        .current_dir(&ctx.workspace)
        .env_clear();
    for name in KEPT_ENV {
        if let Some(value) = std::env::var_os(name) {
            command.env(name, value);
        }
    }
    command
        .envs(ctx.env.iter().chain(&ctx.secrets).map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group, so that the step and everything it started can be killed at once.
        .process_group(0)
        .kill_on_drop(true);
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(e) => {
            return Outcome::Error {
                reason: format!("could not start sh in {}: {e}", ctx.workspace.display()),
            };
        }
    };
    let deadline = deadline(ctx);
    let mut group = ProcessGroup(child.id());

    // stdout and stderr meet in one channel, in the order they are read; bounded, so that a
    // step printing faster than its log is stored blocks on its pipe.
    let (tx, mut output) = mpsc::channel::<Vec<u8>>(PIPE_DEPTH);
    if let Some(stdout) = child.stdout.take() {
        tokio::spawn(pump(stdout, tx.clone()));
    }
    if let Some(stderr) = child.stderr.take() {
        tokio::spawn(pump(stderr, tx.clone()));
    }
    drop(tx);

    let exited = child.wait();
    let timed_out = sleep_until(deadline);
    let cancelled = ctx.cancel.cancelled();
    tokio::pin!(exited, timed_out, cancelled);
    let mut output_open = true;
    let end = loop {
        tokio::select! {
            chunk = output.recv(), if output_open => match chunk {
                Some(chunk) => out.write(&chunk).await,
                None => output_open = false,
            },
            status = &mut exited => break End::Exited(status),
            _ = &mut timed_out => break End::TimedOut(ctx.timeout.unwrap_or_default()),
            _ = &mut cancelled => break End::Cancelled,
        }
    };
    // Also after a normal exit: background processes the step left behind would otherwise
    // outlive it and keep its output open.
    group.kill();
    if !matches!(end, End::Exited(_)) {
        // Reap the shell so that it does not linger as a zombie. Bounded, in case `kill` could
        // not be run: `kill_on_drop` then ends the shell itself.
        let _ = tokio::time::timeout(DRAIN_DEADLINE, exited).await;
    }
    if output_open {
        let drained = async {
            while let Some(chunk) = output.recv().await {
                out.write(&chunk).await;
            }
        };
        if tokio::time::timeout(DRAIN_DEADLINE, drained).await.is_err() {
            tracing::warn!("shell step output did not end after its process group was killed");
        }
    }
    match end {
        End::Exited(Ok(status)) => match status.code() {
            Some(0) => Outcome::Success,
            Some(code) => Outcome::failed(i64::from(code)),
            None => {
                use std::os::unix::process::ExitStatusExt;
                let signal = status.signal().unwrap_or_default();
                Outcome::Failed {
                    exit_code: 128 + i64::from(signal),
                    reason: format!("command was killed by signal {signal}"),
                }
            }
        },
        End::Exited(Err(e)) => Outcome::Error {
            reason: format!("lost track of the shell step: {e}"),
        },
        End::TimedOut(after) => Outcome::TimedOut { after },
        End::Cancelled => Outcome::Cancelled,
    }
}

/// Copies a pipe into the channel until it closes.
async fn pump(mut pipe: impl tokio::io::AsyncRead + Unpin, tx: mpsc::Sender<Vec<u8>>) {
    let mut buf = vec![0u8; 8192];
    loop {
        match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if tx.send(buf[..n].to_vec()).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// The process group of a shell step (its id is the shell's pid); killed on drop as well, so
/// that a dropped step future leaves no processes behind.
struct ProcessGroup(Option<u32>);

impl ProcessGroup {
    /// Sends SIGKILL to every process of the group, once: a second signal, after the group
    /// emptied, could reach an unrelated group that reused the number.
    fn kill(&mut self) {
        let Some(pgid) = self.0.take() else { return };
        // std has no killpg; the `kill` command does it without unsafe code or another crate.
        let status = std::process::Command::new("kill")
            .args(["-KILL", "--", &format!("-{pgid}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if let Err(e) = status {
            tracing::warn!(pgid, error = %e, "could not run `kill` for the shell step's process group");
        }
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Masks secret values in a byte stream, also when a value is split across chunks.
///
/// Every byte covered by an occurrence of any secret is replaced, and each run of covered
/// bytes becomes one `***`, so overlapping or adjacent secrets reveal nothing either. Between
/// chunks at most (longest secret − 1) bytes are held back: only a tail that could still grow
/// into a secret.
pub struct Masker {
    /// The values to mask, at least [`MIN_SECRET_LEN`] bytes each, without duplicates.
    secrets: Vec<Vec<u8>>,
    /// Bytes received but not yet emitted.
    pending: Vec<u8>,
    /// For each pending byte: whether an occurrence of a secret covers it. Kept across chunks,
    /// since a held-back tail can be the end of a secret found earlier.
    covered: Vec<bool>,
    /// Whether the last emitted byte was masked, so that a masked run going on in the next
    /// chunk does not print a second `***`.
    ended_masked: bool,
}

impl std::fmt::Debug for Masker {
    /// How many values, never which.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Masker({} values)", self.secrets.len())
    }
}

impl Masker {
    /// A masker for these values. Multi-line values are also masked line by line, since
    /// commands often print only a line of them.
    pub fn new(secrets: impl IntoIterator<Item = String>) -> Masker {
        let mut values: Vec<Vec<u8>> = Vec::new();
        for secret in secrets {
            let lines: Vec<&str> = if secret.contains('\n') {
                secret.lines().map(str::trim).collect()
            } else {
                Vec::new()
            };
            for value in std::iter::once(secret.as_str()).chain(lines) {
                let value = value.as_bytes();
                if value.len() >= MIN_SECRET_LEN && !values.iter().any(|v| v == value) {
                    values.push(value.to_vec());
                }
            }
        }
        Masker {
            secrets: values,
            pending: Vec::new(),
            covered: Vec::new(),
            ended_masked: false,
        }
    }

    /// Takes the next chunk of the stream; returns what can be shown of the stream so far.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<u8> {
        if self.secrets.is_empty() {
            return chunk.to_vec();
        }
        self.pending.extend_from_slice(chunk);
        self.covered.resize(self.pending.len(), false);
        self.mark();
        let upto = self.hold_from();
        self.emit(upto)
    }

    /// Ends the stream: returns whatever was held back, masked.
    pub fn finish(&mut self) -> Vec<u8> {
        self.emit(self.pending.len())
    }

    /// `text` with every secret masked: for whole messages (a deployment's lines, reasons,
    /// journal details), where nothing is split across chunks.
    pub fn mask_text(&self, text: &str) -> String {
        if self.secrets.is_empty() {
            return text.to_string();
        }
        String::from_utf8_lossy(&self.fresh().mask_all(text.as_bytes())).into_owned()
    }

    /// A masker for the same values, with nothing pending.
    fn fresh(&self) -> Masker {
        Masker {
            secrets: self.secrets.clone(),
            pending: Vec::new(),
            covered: Vec::new(),
            ended_masked: false,
        }
    }

    /// Masks one complete piece of text.
    fn mask_all(mut self, text: &[u8]) -> Vec<u8> {
        let mut masked = self.push(text);
        masked.extend(self.finish());
        masked
    }

    /// Marks the bytes of every occurrence of every secret in the pending bytes.
    fn mark(&mut self) {
        for secret in &self.secrets {
            let first = secret[0];
            let last_start = match self.pending.len().checked_sub(secret.len()) {
                Some(last) => last,
                None => continue,
            };
            for start in 0..=last_start {
                if self.pending[start] == first
                    && self.pending[start..start + secret.len()] == secret[..]
                {
                    self.covered[start..start + secret.len()].fill(true);
                }
            }
        }
    }

    /// The first pending position from which the rest could still become a secret once more
    /// bytes arrive; everything before it is final.
    fn hold_from(&self) -> usize {
        let longest = self.secrets.iter().map(Vec::len).max().unwrap_or(0);
        let len = self.pending.len();
        let start = len.saturating_sub(longest.saturating_sub(1));
        (start..len)
            .find(|&i| {
                let tail = &self.pending[i..];
                self.secrets
                    .iter()
                    .any(|s| s.len() > tail.len() && s.starts_with(tail))
            })
            .unwrap_or(len)
    }

    /// Emits the first `upto` pending bytes, each covered run as one mask.
    fn emit(&mut self, upto: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(upto);
        let mut i = 0;
        while i < upto {
            if self.covered[i] {
                if !(i == 0 && self.ended_masked) {
                    out.extend_from_slice(MASK);
                }
                while i < upto && self.covered[i] {
                    i += 1;
                }
            } else {
                out.push(self.pending[i]);
                i += 1;
            }
        }
        if upto > 0 {
            self.ended_masked = self.covered[upto - 1];
        }
        self.pending.drain(..upto);
        self.covered.drain(..upto);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn masker(secrets: &[&str]) -> Masker {
        Masker::new(secrets.iter().map(|s| s.to_string()))
    }

    /// Feeds `chunks` through a fresh masker and returns the whole output.
    fn masked(secrets: &[&str], chunks: &[&[u8]]) -> String {
        let mut m = masker(secrets);
        let mut out = Vec::new();
        for chunk in chunks {
            out.extend(m.push(chunk));
        }
        out.extend(m.finish());
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn masks_a_whole_value() {
        assert_eq!(masked(&["hunter2"], &[b"pw=hunter2 ok\n"]), "pw=*** ok\n");
    }

    #[test]
    fn masks_a_value_split_at_every_position() {
        let text = b"url=postgres://u:pw@db/x;\n";
        for cut in 0..=text.len() {
            let (a, b) = text.split_at(cut);
            assert_eq!(
                masked(&["postgres://u:pw@db/x"], &[a, b]),
                "url=***;\n",
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn masks_a_value_split_into_single_bytes() {
        let text = b"a secret! secret";
        let chunks: Vec<&[u8]> = text.chunks(1).collect();
        assert_eq!(masked(&["secret"], &chunks), "a ***! ***");
    }

    #[test]
    fn any_two_cuts_give_the_same_output_as_one_chunk() {
        let secrets = ["abcd", "cdef", "abcdefgh", "zzzz"];
        let text = b"xxabcdefyyabcdefghzzzzabcdzz cdefabc";
        let whole = masked(&secrets, &[text]);
        for i in 0..=text.len() {
            for j in i..=text.len() {
                let got = masked(&secrets, &[&text[..i], &text[i..j], &text[j..]]);
                assert_eq!(got, whole, "cuts at {i} and {j}");
            }
        }
    }

    #[test]
    fn overlapping_secrets_reveal_no_part_of_either() {
        // "abcd" and "cdef" overlap in "cd": the union is masked as one run.
        assert_eq!(masked(&["abcd", "cdef"], &[b"[abcdef]"]), "[***]");
        assert_eq!(masked(&["abcd", "cdef"], &[b"[abc", b"def]"]), "[***]");
        // The end of a secret found in one chunk, held back because it may start another.
        assert_eq!(masked(&["abcd", "cdefg"], &[b"xxabcd", b"zz"]), "xx***zz");
    }

    #[test]
    fn a_secret_that_starts_another_is_masked_whole() {
        assert_eq!(masked(&["abcd", "abcdefg"], &[b"-abcd", b"efg-"]), "-***-");
        assert_eq!(masked(&["abcd", "abcdefg"], &[b"-abcd", b"-"]), "-***-");
    }

    #[test]
    fn secrets_at_chunk_edges() {
        assert_eq!(
            masked(&["s3cr3t"], &[b"s3cr3t", b"s3cr3t", b" s3cr3t"]),
            "*** ***"
        );
        assert_eq!(masked(&["s3cr3t"], &[b"x", b"s3cr3t"]), "x***");
        assert_eq!(masked(&["s3cr3t"], &[b"s3cr3t", b"x"]), "***x");
        assert_eq!(masked(&["s3cr3t"], &[b"s3c", b"r3t"]), "***");
    }

    #[test]
    fn holds_back_at_most_longest_minus_one_bytes() {
        let mut m = masker(&["abcdef"]);
        assert_eq!(m.push(b"hello abcde"), b"hello ");
        assert_eq!(m.push(b"X"), b"abcdeX");
        assert_eq!(m.push(b"plain text"), b"plain text");
        assert_eq!(m.push(b"ab"), b"");
        assert_eq!(m.finish(), b"ab");
    }

    #[test]
    fn short_and_empty_values_are_not_masked() {
        assert_eq!(
            masked(&["", "a", "on", "cat"], &[b"a cat on a mat"]),
            "a cat on a mat"
        );
    }

    #[test]
    fn without_secrets_bytes_pass_unchanged() {
        let mut m = masker(&[]);
        assert_eq!(m.push(b"\xff\x00raw"), b"\xff\x00raw");
        assert_eq!(m.finish(), b"");
    }

    #[test]
    fn multi_line_values_are_masked_line_by_line_too() {
        let key = "-----BEGIN KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\n-----END KEY-----";
        let out = masked(&[key], &[b"first line: MIIEvQIBADANBgkqhkiG9w0BAQEFAASC\n"]);
        assert_eq!(out, "first line: ***\n");
    }

    #[test]
    fn script_echoes_each_command_quoted() {
        let commands = vec!["echo 'hi'".to_string(), "exit 3".to_string()];
        assert_eq!(
            script(&commands),
            "exec 2>&1\nprintf '+ %s\\n' 'echo '\\''hi'\\'''\necho 'hi'\nprintf '+ %s\\n' 'exit 3'\nexit 3\n"
        );
    }

    #[test]
    fn reasons_read_as_sentences() {
        assert_eq!(Outcome::failed(3).reason(), "command exited with 3");
        assert_eq!(
            Outcome::TimedOut {
                after: Duration::from_secs(2)
            }
            .reason(),
            "timed out after 2s"
        );
        assert_eq!(Outcome::Cancelled.reason(), "cancelled");
    }

    #[test]
    fn image_references_with_and_without_tags() {
        assert!(has_tag_or_digest("lab/busybox:1"));
        assert!(has_tag_or_digest("127.0.0.1:5000/app@sha256:abc"));
        assert!(!has_tag_or_digest("127.0.0.1:5000/app"));
        assert!(!has_tag_or_digest("busybox"));
    }
}
