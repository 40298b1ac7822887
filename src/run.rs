//! One run, end to end: fetch the exact commit, read its `.hoist.yml`, decide whether it runs
//! for this ref (the one place triggers are matched), check it out into a fresh workspace, and
//! run its steps as the step graph allows (`schedule`: file order, or `needs`), recording each
//! step's state and its masked log as it goes; when a deploy step of an `atomic` pipeline
//! fails, the release train takes every app the run switched back to what it ran before.
//!
//! The queue's dispatcher calls [`execute`] for each claimed run; this module depends on the
//! queue, never the other way round.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use tokio_util::sync::CancellationToken;

use crate::checkout::Workspaces;
use crate::deploy::deployment::{Deployer, Plan, StartError};
use crate::forge::RefKind;
use crate::image;
use crate::pipeline::{self, Action, Pipeline, Vars};
use crate::queue::Queue;
use crate::runner::{self, Outcome, StepContext};
use crate::schedule::{self, Ended, Schedule, State};
use crate::services;
use crate::store::{
    DeploymentKind, DeploymentStatus, NewRelease, Park, Release, Run, Status, StepKind,
};

/// Longest a deploy step waits for another deployment of its app to finish.
const DEPLOY_WAIT: Duration = Duration::from_secs(600);

/// How a run ended: its status and the reason a person reads.
struct Verdict {
    status: Status,
    reason: Option<String>,
}

impl Verdict {
    fn new(status: Status, reason: impl Into<String>) -> Verdict {
        Verdict {
            status,
            reason: Some(reason.into()),
        }
    }
}

/// Execute `run` to its end and record it; returns the final status.
pub async fn execute(q: Arc<Queue>, run: Run, cancel: CancellationToken) -> Status {
    let id = run.id;
    tracing::info!(
        run = id,
        repo = run.repo,
        git_ref = run.git_ref,
        commit = run.commit,
        "run started"
    );
    let verdict = match execute_run(&q, &run, &cancel).await {
        Ok(v) => v,
        Err(e) => Verdict::new(Status::Failed, format!("{e:#}")),
    };
    if verdict.status == Status::Waiting {
        if cancel.is_cancelled() {
            // Cancelled while it parked: the store has it waiting, so end it there.
            let why = q.cancel_reason(id).unwrap_or_else(|| "cancelled".into());
            if let Err(e) = q.store.cancel_run(id, why).await {
                tracing::error!(run = id, "cannot cancel the waiting run: {e:#}");
            }
            return Status::Cancelled;
        }
        tracing::info!(
            run = id,
            reason = verdict.reason.as_deref().unwrap_or(""),
            "run waits for approval; it holds no runner slot"
        );
        return Status::Waiting;
    }
    if q.shutdown.is_cancelled() {
        // The agent is stopping: leave the run `running`, so that the next start re-queues it.
        tracing::info!(
            run = id,
            "run interrupted by shutdown; it is re-queued at the next start"
        );
        return Status::Interrupted;
    }
    let verdict = if cancel.is_cancelled() && verdict.status != Status::Success {
        Verdict::new(
            Status::Cancelled,
            q.cancel_reason(id).unwrap_or_else(|| "cancelled".into()),
        )
    } else {
        verdict
    };
    if let Err(e) = q
        .store
        .finish_run(id, verdict.status, verdict.reason.clone())
        .await
    {
        tracing::error!(run = id, "cannot record the end of the run: {e:#}");
    }
    tracing::info!(
        run = id,
        status = %verdict.status,
        reason = verdict.reason.as_deref().unwrap_or(""),
        "run ended"
    );
    verdict.status
}

async fn execute_run(
    q: &Arc<Queue>,
    run: &Run,
    cancel: &CancellationToken,
) -> anyhow::Result<Verdict> {
    let repo = q
        .config
        .repo(&run.repo)
        .with_context(|| format!("repository {} is no longer in hoist.toml", run.repo))?;
    let started = Instant::now();
    let (commit, text) = q
        .mirrors
        .fetch_pipeline(repo, &run.git_ref, &run.commit)
        .await?;
    // An annotated tag's push names the tag object: the run is of the commit it tags, and
    // says so in the store (releases, statuses and `${commit}` all name that commit).
    let peeled;
    let run = if commit != run.commit {
        tracing::info!(
            run = run.id,
            tag = run.commit,
            commit,
            "annotated tag peeled to its commit"
        );
        q.store.set_run_commit(run.id, commit.clone()).await?;
        peeled = Run {
            commit,
            ..run.clone()
        };
        &peeled
    } else {
        run
    };
    let fetched = Instant::now();
    // A run queued again after an approval goes on from what its steps recorded.
    let stored = q
        .store
        .run(run.id)
        .await?
        .map(|(_, steps)| steps)
        .unwrap_or_default();
    let resume = stored.iter().any(|s| s.status != Status::Queued);
    let pipeline = match plan(q, run, text, resume).await? {
        Ok(p) => p,
        Err(verdict) => return Ok(verdict),
    };
    let planned = Instant::now();
    let workspaces = Workspaces::new(
        &q.config.data_dir.join("workspaces"),
        q.config.runner.keep_workspaces,
    )?;
    let dir = {
        let (ws, id) = (workspaces.clone(), run.id);
        tokio::task::spawn_blocking(move || ws.create(id)).await??
    };
    let workspace = q
        .mirrors
        .checkout(repo, &run.git_ref, &run.commit, dir)
        .await?;
    // hoist's own work before the first step, phase by phase (`scripts/soak` reads these).
    tracing::info!(
        run = run.id,
        fetch_ms = ms(fetched - started),
        plan_ms = ms(planned - fetched),
        checkout_ms = ms(planned.elapsed()),
        "run prepared"
    );
    let verdict = match start_services(q, run, &pipeline, cancel).await {
        Ok(Ok(services)) => {
            let network = services.as_ref().map(|s| s.running.network().to_string());
            let verdict = run_steps(
                q, run, &pipeline, &workspace, cancel, &stored, resume, network,
            )
            .await;
            if let Some(services) = services {
                services.stop().await;
            }
            verdict
        }
        Ok(Err(verdict)) => Ok(verdict),
        Err(e) => Err(e),
    };
    let failed = verdict.as_ref().map_or(true, |v| {
        !matches!(v.status, Status::Success | Status::Waiting)
    });
    let id = run.id;
    let cleanup = tokio::task::spawn_blocking(move || workspaces.finish(id, failed)).await?;
    if let Err(e) = cleanup {
        tracing::warn!(run = id, "cannot clean the workspace: {e:#}");
    }
    verdict
}

/// A run's services, started, and the pumps that store their logs.
struct RunServices {
    running: services::Running,
    pumps: Vec<tokio::task::JoinHandle<()>>,
}

impl RunServices {
    /// Removes the services and their network; returns once their logs are stored.
    async fn stop(self) {
        self.running.stop().await;
        for pump in self.pumps {
            let _ = pump.await;
        }
    }
}

/// Where a service's log goes in the run's log: below the steps' indices, -1 for the first
/// service, -2 for the second, so that `hoist logs` prints them first, each under its own
/// `── service NAME` line.
pub fn service_log_index(service: usize) -> i64 {
    -(service as i64) - 1
}

/// Starts the pipeline's services for this run (nothing without `services:`), with their
/// logs in the run's; the verdict of a run that ends here because one could not start.
async fn start_services(
    q: &Queue,
    run: &Run,
    pipeline: &Pipeline,
    cancel: &CancellationToken,
) -> anyhow::Result<Result<Option<RunServices>, Verdict>> {
    if pipeline.services.is_empty() {
        return Ok(Ok(None));
    }
    let docker = match q.builder().await {
        Ok(d) => d,
        Err(e) => {
            return Ok(Err(Verdict::new(
                Status::Failed,
                format!("services cannot start: {e:#}"),
            )));
        }
    };
    let vars = vars_of(run, &pipeline.app);
    let mut starts = Vec::new();
    let mut pumps = Vec::new();
    let mut first_log = None;
    for (k, spec) in pipeline.services.iter().enumerate() {
        let mut env = Vec::new();
        for (name, value) in &spec.env {
            match vars.render(value) {
                Ok(v) => env.push((name.clone(), v)),
                Err(e) => {
                    return Ok(Err(Verdict::new(
                        Status::Failed,
                        format!("service {}: env {name}: {e}", spec.name),
                    )));
                }
            }
        }
        let (log, pump) = step_log(q, run, service_log_index(k));
        first_log.get_or_insert_with(|| log.clone());
        pumps.push(pump);
        starts.push(services::Start {
            spec: spec.clone(),
            env,
            log,
        });
    }
    // Every secret the repository may use: a service can print any value a step hands it.
    let secrets = run_secrets(q, run);
    let setup = services::Setup {
        network: services::network_name(&q.agent_id, &run.id.to_string()),
        labels: HashMap::from([
            (runner::AGENT_LABEL.to_string(), q.agent_id.clone()),
            (runner::RUN_LABEL.to_string(), run.id.to_string()),
        ]),
        secrets,
        cancel: cancel.clone(),
    };
    let started = services::start(&docker, setup, starts).await;
    let verdict = match started {
        Ok(running) => {
            return Ok(Ok(Some(RunServices { running, pumps })));
        }
        Err(services::StartError::Cancelled) => Verdict::new(Status::Cancelled, "cancelled"),
        Err(services::StartError::Failed(why)) => {
            if let Some(log) = &first_log {
                log.note(format!("── services failed: {why}"));
            }
            Verdict::new(Status::Failed, why)
        }
    };
    drop(first_log);
    for pump in pumps {
        let _ = pump.await;
    }
    Ok(Err(verdict))
}

/// The log of one step (or service, by [`service_log_index`]) of `run`: masked with every
/// secret the run may use, capped at `[runner] max_log_size`.
fn step_log(q: &Queue, run: &Run, index: i64) -> (runner::LogSink, tokio::task::JoinHandle<()>) {
    let policy = crate::logs::LogPolicy {
        max_bytes: q.config.runner.max_log_size,
        secrets: run_secrets(q, run),
    };
    crate::logs::pump(q.store.clone(), q.logs.clone(), run.id, index, policy)
}

/// The values of every `[secrets]` entry the run's repository may use: what its logs mask,
/// whichever step asked for which.
fn run_secrets(q: &Queue, run: &Run) -> Vec<String> {
    q.config
        .repo(&run.repo)
        .map(|r| {
            r.secrets
                .iter()
                .filter_map(|n| q.config.secrets.get(n).map(|v| v.expose().to_string()))
                .collect()
        })
        .unwrap_or_default()
}

/// A duration in milliseconds, for log fields.
fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Decide what the run does with the commit's pipeline file (`None`: it has none): the
/// pipeline to run, its steps recorded, or the verdict of a run that ends here (no pipeline,
/// an invalid one, or one whose triggers do not match the ref). The delivery says which.
async fn plan(
    q: &Queue,
    run: &Run,
    text: Option<String>,
    resume: bool,
) -> anyhow::Result<Result<Pipeline, Verdict>> {
    let Some(text) = text else {
        if let Some(d) = run.delivery {
            q.store
                .set_delivery_status(
                    d,
                    "no pipeline".into(),
                    Some(format!("no {} in {}", pipeline::FILE_NAME, run.commit)),
                )
                .await?;
        }
        return Ok(Err(Verdict::new(
            Status::Skipped,
            format!("no pipeline: the commit has no {}", pipeline::FILE_NAME),
        )));
    };
    let pipeline = match pipeline::parse(&text) {
        Ok(p) => p,
        Err(problems) => {
            return Ok(Err(Verdict::new(
                Status::Failed,
                format!(
                    "the pipeline file is not valid:\n{}",
                    pipeline::format_problems(pipeline::FILE_NAME, &problems)
                ),
            )));
        }
    };
    if !pipeline.on.matches(run.kind, &run.name) {
        let (noun, key) = if run.kind == RefKind::Tag {
            ("tag", "tags")
        } else {
            ("branch", "branches")
        };
        let why = format!(
            "{noun} {:?} does not match on.{key} of the pipeline",
            run.name
        );
        if let Some(d) = run.delivery {
            q.store
                .set_delivery_status(d, "not matched".into(), Some(why.clone()))
                .await?;
        }
        return Ok(Err(Verdict::new(Status::Skipped, why)));
    }
    if let Err(e) = allowed_secrets(&q.config, &run.repo, &pipeline) {
        return Ok(Err(Verdict::new(Status::Failed, format!("{e:#}"))));
    }
    let trusted = q.config.repo(&run.repo).is_some_and(|r| r.trusted);
    if let Err(why) = trust(&run.repo, trusted, &pipeline) {
        return Ok(Err(Verdict::new(Status::Failed, why)));
    }
    if resume {
        return Ok(Ok(pipeline));
    }
    let steps = pipeline
        .steps
        .iter()
        .map(|s| (s.name.clone(), kind_of(&s.action)))
        .collect();
    q.store
        .plan_run(run.id, pipeline.app.clone(), steps)
        .await?;
    if let Some(d) = run.delivery {
        q.store
            .set_delivery_status(d, "run".into(), Some(format!("run {}", run.id)))
            .await?;
    }
    Ok(Ok(pipeline))
}

/// Every secret the pipeline names (steps' `secrets`, containers' `container.secrets`) is
/// allowed by the repository's `[[repo]] secrets` and configured: checked before any step
/// runs, so that nothing changes on a run that could not finish.
fn allowed_secrets(
    config: &crate::config::Config,
    repo: &str,
    pipeline: &Pipeline,
) -> anyhow::Result<()> {
    for step in &pipeline.steps {
        config.secret_values(repo, &step.secrets, &format!("step {}", step.name))?;
        if let Action::Deploy(d) = &step.action {
            let what = format!("step {} (container.secrets)", step.name);
            config.secret_values(repo, &d.container.secrets, &what)?;
        }
    }
    Ok(())
}

/// Shell steps and deploy hooks run on the agent's own machine, beside its database, its
/// mirrors and its secrets: only a repository whose `[[repo]]` entry says `trusted = true` may
/// use them. Checked before any step runs; the error names what asked and the key to set.
pub fn trust(repo: &str, trusted: bool, pipeline: &Pipeline) -> Result<(), String> {
    let on_agent = pipeline.runs_on_agent();
    if trusted || on_agent.is_empty() {
        return Ok(());
    }
    Err(format!(
        "repository {repo} is not trusted, and its pipeline would run commands on the agent's \
         own machine: {}. Set `trusted = true` in its [[repo]] entry in hoist.toml only if \
         everyone who can push a branch to it may run commands there; otherwise use container \
         steps (`image:` with `commands:`), which run on the builder",
        on_agent.join(", ")
    ))
}

fn kind_of(a: &Action) -> StepKind {
    match a {
        Action::Container { .. } => StepKind::Container,
        Action::Shell { .. } => StepKind::Shell,
        Action::Build(_) => StepKind::Build,
        Action::Deploy(_) => StepKind::Deploy,
    }
}

/// The placeholder values of a run.
pub fn vars_of(run: &Run, app: &str) -> Vars {
    Vars {
        commit: run.commit.clone(),
        branch: if run.kind == RefKind::Branch {
            run.name.clone()
        } else {
            String::new()
        },
        tag: if run.kind == RefKind::Tag {
            run.name.clone()
        } else {
            String::new()
        },
        git_ref: run.git_ref.clone(),
        app: app.to_string(),
        repo: run.repo.clone(),
        host: None,
        release: None,
        run: Some(run.id),
        fleet: None,
    }
}

/// A build step: build on the builder, push every tag, verify each independently, and record
/// the verified image as the app's next release.
async fn build_step(
    q: &Arc<Queue>,
    run: &Run,
    pipeline: &Pipeline,
    step: &pipeline::Step,
    spec: &pipeline::BuildSpec,
    ctx: &StepContext,
    docker: &bollard::Docker,
) -> anyhow::Result<Release> {
    let vars = vars_of(run, &spec.app);
    let references = image_references(spec, &vars)?;
    let args = spec
        .args
        .iter()
        .map(|(k, v)| Ok((k.clone(), vars.render(v).map_err(anyhow::Error::msg)?)))
        .collect::<anyhow::Result<_>>()?;
    let request = image::BuildRequest {
        checkout: ctx.workspace.clone(),
        context: ctx.workspace.join(&spec.context),
        dockerfile: spec.dockerfile.clone(),
        args,
        labels: image_labels(q, run, &spec.app),
        tags: references.clone(),
    };
    let image_id = image::build(docker, &request, &ctx.log, &ctx.cancel).await?;
    let verified = push_and_verify(q, docker, &references, &image_id, ctx).await?;
    let deploy = pipeline.steps.iter().find_map(|s| match &s.action {
        Action::Deploy(d) if d.image == step.name => Some(d.clone()),
        _ => None,
    });
    let release = q
        .store
        .create_release(NewRelease {
            app: spec.app.clone(),
            repo: run.repo.clone(),
            commit: run.commit.clone(),
            run: run.id,
            step: step.name.clone(),
            repository: spec.repository.clone(),
            manifest_digest: verified.manifest_digest,
            config_digest: verified.config_digest,
            tags: references,
            deploy,
        })
        .await?;
    ctx.log.note(format!(
        "release {} of {}: commit {} → image {} → {}",
        release.number,
        release.app,
        release.commit,
        release.config_digest,
        release.image()
    ));
    Ok(release)
}

/// `repository:tag` for each of the step's tags, placeholders filled and sanitized, without repeats.
fn image_references(spec: &pipeline::BuildSpec, vars: &Vars) -> anyhow::Result<Vec<String>> {
    let mut references = Vec::new();
    for t in &spec.tags {
        let tag = pipeline::sanitize_tag(&vars.render(t).map_err(anyhow::Error::msg)?)
            .map_err(anyhow::Error::msg)?;
        let reference = format!("{}:{tag}", spec.repository);
        if !references.contains(&reference) {
            references.push(reference);
        }
    }
    Ok(references)
}

/// The OCI labels every image hoist builds carries: where it came from and which run made it.
fn image_labels(q: &Queue, run: &Run, app: &str) -> BTreeMap<String, String> {
    let source = q
        .config
        .repo(&run.repo)
        .map(|r| crate::redact::url(&r.url))
        .unwrap_or_default();
    BTreeMap::from([
        (
            "org.opencontainers.image.revision".to_string(),
            run.commit.clone(),
        ),
        ("org.opencontainers.image.source".to_string(), source),
        (
            "org.opencontainers.image.created".to_string(),
            crate::store::rfc3339(crate::store::now_millis()),
        ),
        ("hoist.run".to_string(), run.id.to_string()),
        ("hoist.app".to_string(), app.to_string()),
    ])
}

/// Push every reference and verify each with the independent registry client; every tag of
/// one image must name the same manifest.
async fn push_and_verify(
    q: &Queue,
    docker: &bollard::Docker,
    references: &[String],
    image_id: &str,
    ctx: &StepContext,
) -> anyhow::Result<image::Verified> {
    let mut verified: Option<image::Verified> = None;
    for reference in references {
        let registry = image::registry_for(&q.config.registries, reference);
        let engine_digest = image::push(docker, reference, registry, &ctx.log).await?;
        let v = image::verify(reference, registry, &engine_digest, image_id).await?;
        ctx.log.note(format!(
            "verified {reference}: manifest {} (sha256 of the registry's bytes), config {}",
            v.manifest_digest, v.config_digest
        ));
        if let Some(first) = &verified
            && first.manifest_digest != v.manifest_digest
        {
            bail!(
                "the tags of one image have different digests in the registry: {} and {}",
                first.manifest_digest,
                v.manifest_digest
            );
        }
        verified = Some(v);
    }
    verified.context("the build step has no tags to push")
}

/// A deploy step: roll the release its build step made out across the hosts, waiting for
/// another deployment of the app to finish first. On success, what it switched (for the
/// release train).
async fn deploy_step(
    q: &Arc<Queue>,
    run: &Run,
    step: &pipeline::Step,
    spec: &pipeline::DeploySpec,
    release: &Release,
    ctx: &StepContext,
) -> anyhow::Result<Switched> {
    let deployer = Deployer::new(q.store.clone(), q.config.clone(), q.shutdown.clone());
    let plan = Plan {
        to: release.clone(),
        spec: spec.clone(),
        kind: DeploymentKind::Rollout,
        run: Some(run.id),
        requested_by: format!("run {}", run.id),
        hooks_dir: Some(ctx.workspace.clone()),
        vars: vars_of(run, &release.app),
        now: false,
        hosts: None,
    };
    let verdict = deploy(
        &deployer,
        plan,
        &ctx.log,
        &ctx.cancel,
        Some((q.as_ref(), run)),
    )
    .await?;
    let from = q
        .store
        .deployment(verdict.deployment)
        .await?
        .and_then(|(d, _, _)| d.from_release);
    Ok(Switched {
        app: release.app.clone(),
        step: step.name.clone(),
        from,
        to: release.number,
    })
}

/// Why a run's deploy step left the app alone: its release was built from a commit that a
/// release already deployed (or being deployed) from the same branch descends from. The
/// step's reason; it starts with `outdated`.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Outdated(String);

/// SPEC: a deploy step never replaces a release built from a newer commit of the same branch
/// (a forge redelivering an older push, or pushes whose runs finished out of order). Newer
/// means a descendant in git's history, not a later timestamp; a force-push that dropped the
/// deployed commit makes nothing newer. Compared against what the app's hosts run and what
/// a deployment in flight moves them to. Rollbacks never come here: they are explicit.
async fn outdated(q: &Queue, run: &Run, to: &Release) -> anyhow::Result<Option<Outdated>> {
    if run.kind != crate::forge::RefKind::Branch {
        return Ok(None);
    }
    let Some(repo) = q.config.repo(&run.repo) else {
        return Ok(None);
    };
    let mut candidates: Vec<i64> = q
        .store
        .app_hosts(to.app.clone())
        .await?
        .iter()
        .filter_map(|h| h.release)
        .collect();
    candidates.extend(
        q.store
            .running_deployments()
            .await?
            .iter()
            .filter(|d| d.app == to.app)
            .map(|d| d.to_release),
    );
    candidates.sort_unstable();
    candidates.dedup();
    for number in candidates.into_iter().rev() {
        if number == to.number {
            continue;
        }
        let Some(other) = q.store.release(to.app.clone(), number).await? else {
            continue;
        };
        if other.repo != run.repo || other.commit == run.commit {
            continue;
        }
        let same_branch = q
            .store
            .run(other.run)
            .await?
            .is_some_and(|(r, _)| r.git_ref == run.git_ref);
        if same_branch
            && q.mirrors
                .descends_from(repo, &other.commit, &run.commit)
                .await?
        {
            return Ok(Some(Outdated(format!(
                "outdated: release {number} of {} was built from commit {}, newer on {} than this run's {}; \
                 it stays (roll back explicitly to deploy an older release)",
                to.app, other.commit, run.name, run.commit
            ))));
        }
    }
    Ok(None)
}

/// Start `plan` once no other deployment holds its app (waiting at most [`DEPLOY_WAIT`]) and
/// carry it to its verdict; an error unless it succeeded. With `rollout_of` (a run's deploy
/// step), before each try the [`outdated`] rule may end it with an [`Outdated`] error.
async fn deploy(
    deployer: &Deployer,
    plan: Plan,
    log: &runner::LogSink,
    cancel: &CancellationToken,
    rollout_of: Option<(&Queue, &Run)>,
) -> anyhow::Result<crate::deploy::deployment::Verdict> {
    let deadline = std::time::Instant::now() + DEPLOY_WAIT;
    let started = loop {
        // Checked again after each wait: the deployment waited for may be the newer one.
        if let Some((q, run)) = rollout_of
            && let Some(why) = outdated(q, run, &plan.to).await?
        {
            return Err(why.into());
        }
        match deployer.start(plan.clone()).await {
            Ok(s) => break s,
            Err(StartError::Busy { app, deployment }) if std::time::Instant::now() < deadline => {
                log.note(format!(
                    "waiting: app {app} is being deployed by deployment {deployment}"
                ));
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                    _ = cancel.cancelled() => bail!("cancelled while waiting for another deployment"),
                }
            }
            Err(e) => return Err(e.into()),
        }
    };
    // Cancelling the run aborts the deployment: it stops and reverts what it touched.
    let verdict = deployer.run_for(started, log, cancel).await;
    if verdict.status == DeploymentStatus::Succeeded {
        return Ok(verdict);
    }
    Err(anyhow!(
        "deployment {} {}{}: {}",
        verdict.deployment,
        verdict.status.as_str().replace('_', " "),
        verdict
            .failing_host
            .map(|h| format!(" (failing host {h})"))
            .unwrap_or_default(),
        verdict.reason.unwrap_or_default()
    ))
}

/// An app a deploy step of this run moved, and from which release.
#[derive(Debug, Clone)]
struct Switched {
    app: String,
    /// The deploy step that moved it.
    step: String,
    /// What its hosts ran before (the newest release on any of them); None: nothing of it.
    from: Option<i64>,
    to: i64,
}

/// The release train of an `atomic` pipeline whose deploy step `failed` (of app
/// `failed_app`, which its own deployment already rolled back) failed: every app this run
/// switched goes back to what it ran before, newest first, each a rollback deployment that
/// reads back every host. The sentence for the run's reason.
async fn release_train(
    q: &Arc<Queue>,
    run: &Run,
    switched: &[Switched],
    failed_app: &str,
    log: &runner::LogSink,
) -> String {
    let say = |m: String| log.note(format!("── release train: {m}"));
    say(format!(
        "deploy of app {failed_app} failed; rolling back every app this run switched, newest first"
    ));
    let deployer = Deployer::new(q.store.clone(), q.config.clone(), q.shutdown.clone());
    let (mut reverted, mut left) = (Vec::new(), Vec::new());
    let mut done: Vec<&str> = Vec::new();
    for s in switched.iter().rev() {
        // An app two deploy steps moved goes back once, to what it ran before the first.
        if done.contains(&s.app.as_str()) {
            continue;
        }
        done.push(&s.app);
        let first = switched.iter().find(|f| f.app == s.app).unwrap_or(s);
        let Some(from) = first.from else {
            let why = format!(
                "{} had no release before this run and stays on release {}",
                s.app, s.to
            );
            say(why.clone());
            left.push(why);
            continue;
        };
        let who = format!(
            "run {} (atomic: the deploy of {failed_app} failed; step {} had moved {} to release {})",
            run.id, s.step, s.app, s.to
        );
        let back = async {
            let mut plan =
                crate::deploy::rollback_plan(&deployer, &q.mirrors, &s.app, Some(from), &who)
                    .await?;
            plan.run = Some(run.id);
            // A rollback: explicit, exempt from the outdated rule.
            deploy(&deployer, plan, log, &CancellationToken::new(), None).await
        };
        match back.await {
            Ok(v) => {
                say(format!(
                    "{} is back on release {from} (deployment {}), verified on every host",
                    s.app, v.deployment
                ));
                reverted.push(format!("{} to release {from}", s.app));
            }
            Err(e) => {
                let why = format!(
                    "{} could not be rolled back to release {from}: {e:#}",
                    s.app
                );
                say(why.clone());
                left.push(why);
            }
        }
    }
    let mut text = format!("release train (atomic): the deploy of {failed_app} failed");
    if reverted.is_empty() {
        text.push_str("; no other app had been switched");
    } else {
        text.push_str(&format!(
            "; rolled back {}, each verified on every host",
            reverted.join(", ")
        ));
    }
    for l in left {
        text.push_str(&format!("; {l}"));
    }
    text
}

/// What one run's steps share, while several may run at once: the builder connection (made
/// when a step first needs it), the releases its build steps made by step name, and the apps
/// its deploy steps switched, in the order they finished (what the release train reverts).
#[derive(Default)]
struct RunState {
    docker: tokio::sync::OnceCell<bollard::Docker>,
    // std Mutexes: no `.await` happens while one is held.
    built: Mutex<HashMap<String, Release>>,
    switched: Mutex<Vec<Switched>>,
    /// Failed steps in the order they failed: (index, status, reason).
    failed: Mutex<Vec<(usize, Status, String)>>,
    /// The run's network when it has services; its container steps join it.
    network: Option<String>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Walk the pipeline's step graph (file order, or `needs`) with [`schedule::walk`], each step
/// through [`one_step`], up to `[runner] max_parallel_steps` at once; then the verdict, after
/// the release train when an `atomic` pipeline's deploy step failed. Steps whose `when` does
/// not match the push are skipped first (and every step that needs them). When nothing can go
/// on before a `when.manual` step is approved, the run parks: the verdict is `Waiting`, and
/// the approval queues it again, to go on from what `stored` (its steps' records) says.
#[allow(clippy::too_many_arguments)]
async fn run_steps(
    q: &Arc<Queue>,
    run: &Run,
    pipeline: &Pipeline,
    workspace: &Path,
    cancel: &CancellationToken,
    stored: &[crate::store::Step],
    resume: bool,
    network: Option<String>,
) -> anyhow::Result<Verdict> {
    let vars = vars_of(run, &pipeline.app);
    let state = RunState {
        network,
        ..RunState::default()
    };
    let mut schedule = Schedule::of(pipeline, q.config.runner.max_parallel_steps as usize);
    for (i, s) in stored.iter().enumerate().take(pipeline.steps.len()) {
        if s.approved_by.is_some() {
            schedule.approve(i);
        }
    }
    if resume {
        restore(q, run, &mut schedule, stored, &state).await?;
    } else {
        for (i, step) in pipeline.steps.iter().enumerate() {
            if let Some(why) = step.when.skips(run.kind, &run.name) {
                for (k, why) in schedule.skip(i, &why) {
                    q.store
                        .finish_step(run.id, k as i64, Status::Skipped, None, Some(why))
                        .await?;
                }
            }
        }
    }
    let (state, vars) = (&state, &vars);
    let start = |i: usize| async move {
        let step = &pipeline.steps[i];
        let (st, reason) = match one_step(q, run, pipeline, i, vars, workspace, cancel, state).await
        {
            Ok(ended) => ended,
            Err(e) => (Status::Failed, format!("{e:#}")),
        };
        // A skipped deploy step (outdated) did its job: it left the newer release in place.
        if st == Status::Success || st == Status::Skipped {
            return Ended::of(true);
        }
        lock(&state.failed).push((i, st, format!("step {} {reason}", step.name)));
        let train = pipeline.atomic && matches!(step.action, Action::Deploy(_));
        Ended {
            succeeded: false,
            halt: train.then(|| {
                format!(
                    "the release train stopped: deploy step {} failed",
                    step.name
                )
            }),
        }
    };
    let skipped = |i: usize, why: String| async move {
        if let Err(e) = q
            .store
            .finish_step(run.id, i as i64, Status::Skipped, None, Some(why))
            .await
        {
            tracing::error!(run = run.id, "cannot record a skipped step: {e:#}");
        }
    };
    let gated = |i: usize| async move {
        let name = &pipeline.steps[i].name;
        if let Err(e) = q.store.gate_step(run.id, i as i64).await {
            tracing::error!(run = run.id, "cannot record a waiting step: {e:#}");
        }
        let (sink, pump) = step_log(q, run, i as i64);
        sink.note(format!(
            "── step {name} waits for approval (manual): `hoist approve {} {name}` or \
             POST /api/v1/runs/{}/steps/{name}/approve",
            run.id, run.id
        ));
        drop(sink);
        let _ = pump.await;
    };
    let end = loop {
        let end = schedule::walk(schedule, cancel, start, skipped, gated).await;
        schedule = end;
        let waiting = schedule.gated();
        if waiting.is_empty() || cancel.is_cancelled() {
            break schedule;
        }
        if !lock(&state.failed).is_empty() {
            // The run has failed already: nothing is left to approve.
            for g in waiting {
                for (k, why) in schedule.skip(g, "not approved before the run failed") {
                    skipped(k, why).await;
                }
            }
            break schedule;
        }
        let names = waiting
            .iter()
            .map(|&i| pipeline.steps[i].name.as_str())
            .collect::<Vec<_>>()
            .join(", ");
        let why = format!("waiting for approval of step {names}");
        match q.store.park_run(run.id, why.clone()).await? {
            Park::Parked => return Ok(Verdict::new(Status::Waiting, why)),
            Park::Approved(steps) => {
                for i in steps {
                    schedule.approve(i as usize);
                }
            }
        }
    };
    let failed = std::mem::take(&mut *lock(&state.failed));
    let unfinished = (0..pipeline.steps.len())
        .any(|i| matches!(end.state(i), State::Waiting | State::Running | State::Gated));
    if cancel.is_cancelled() && (unfinished || !failed.is_empty()) {
        let why = q
            .cancel_reason(run.id)
            .unwrap_or_else(|| "cancelled".into());
        return Ok(Verdict::new(Status::Cancelled, why));
    }
    let Some(&(_, status, _)) = failed.first() else {
        return Ok(Verdict {
            status: Status::Success,
            reason: None,
        });
    };
    let mut reason = failed
        .iter()
        .map(|(_, _, why)| why.as_str())
        .collect::<Vec<_>>()
        .join("; ");
    let failed_deploy = failed
        .iter()
        .find_map(|&(i, _, _)| match &pipeline.steps[i].action {
            Action::Deploy(d) => Some((i, pipeline.app_of(d).to_string())),
            _ => None,
        });
    if let (true, Some((index, app))) = (pipeline.atomic, failed_deploy) {
        let switched = lock(&state.switched).clone();
        // The train's progress goes into the failing deploy step's own log.
        let (sink, pump) = step_log(q, run, index as i64);
        let train = release_train(q, run, &switched, &app, &sink).await;
        drop(sink);
        let _ = pump.await;
        reason = format!("{reason}; {train}");
    }
    Ok(Verdict::new(status, reason))
}

/// A run resumed after an approval: its steps' states as recorded, the releases its build
/// steps made and the apps its deploy steps switched before it waited.
async fn restore(
    q: &Queue,
    run: &Run,
    schedule: &mut Schedule,
    stored: &[crate::store::Step],
    state: &RunState,
) -> anyhow::Result<()> {
    for (i, s) in stored.iter().enumerate() {
        match s.status {
            Status::Success => schedule.restore(i, State::Succeeded),
            Status::Skipped => {
                schedule.restore(i, State::Skipped(s.reason.clone().unwrap_or_default()))
            }
            _ => {}
        }
    }
    for r in q.store.releases_of_run(run.id).await? {
        lock(&state.built).insert(r.step.clone(), r);
    }
    for (app, from, to) in q.store.rollouts_of_run(run.id).await? {
        lock(&state.switched).push(Switched {
            app,
            step: "a step before the approval".into(),
            from,
            to,
        });
    }
    Ok(())
}

/// One step, recorded: started, its log pumped into the store, ended with its status; the
/// status and, unless it succeeded, the reason.
#[allow(clippy::too_many_arguments)]
async fn one_step(
    q: &Arc<Queue>,
    run: &Run,
    pipeline: &Pipeline,
    index: usize,
    vars: &Vars,
    workspace: &Path,
    cancel: &CancellationToken,
    state: &RunState,
) -> anyhow::Result<(Status, String)> {
    let step = &pipeline.steps[index];
    let index = index as i64;
    q.store.start_step(run.id, index).await?;
    let (sink, pump) = step_log(q, run, index);
    sink.note(format!("── step {} ({})", step.name, kind_of(&step.action)));
    if step.when.manual {
        let approval = q
            .store
            .run(run.id)
            .await?
            .and_then(|(_, steps)| steps.into_iter().find(|s| s.index == index))
            .and_then(|s| Some((s.approved_by?, s.approved_at.unwrap_or_default())));
        if let Some((by, at)) = approval {
            sink.note(format!("── approved by {by} at {at}"));
        }
    }
    let outcome =
        match step_context(q, run, pipeline, step, vars, workspace, cancel, &sink).map(|ctx| {
            StepContext {
                network: state.network.clone(),
                ..ctx
            }
        }) {
            Err(e) => Outcome::Error {
                reason: format!("{e:#}"),
            },
            Ok(ctx) => run_step(q, run, pipeline, step, &ctx, state).await,
        };
    if !outcome.is_success() {
        sink.note(format!("── step {} {}", step.name, outcome.reason()));
    }
    drop(sink);
    let _ = pump.await;

    let (st, exit_code) = match &outcome {
        Outcome::Success => (Status::Success, None),
        Outcome::Failed { exit_code, .. } => (Status::Failed, Some(*exit_code)),
        Outcome::TimedOut { .. } => (Status::TimedOut, None),
        Outcome::Cancelled => (Status::Cancelled, None),
        Outcome::Skipped { .. } => (Status::Skipped, None),
        Outcome::Error { .. } => (Status::Failed, None),
    };
    let reason = (!outcome.is_success()).then(|| outcome.reason());
    q.store
        .finish_step(run.id, index, st, exit_code, reason.clone())
        .await?;
    Ok((st, reason.unwrap_or_default()))
}

/// One step, by the executor its kind names.
async fn run_step(
    q: &Arc<Queue>,
    run: &Run,
    pipeline: &Pipeline,
    step: &pipeline::Step,
    ctx: &StepContext,
    state: &RunState,
) -> Outcome {
    let error = |e: anyhow::Error| Outcome::Error {
        reason: format!("{e:#}"),
    };
    match &step.action {
        Action::Shell { commands } => runner::run_shell(commands, ctx).await,
        Action::Container { image, commands } => match state.builder(q).await {
            Ok(d) => runner::run_container(&d, image, commands, ctx).await,
            Err(e) => error(e),
        },
        Action::Build(spec) => {
            // The step's `timeout` cancels the build (and its push) like a cancelled run
            // does: the engine aborts a build whose connection is dropped.
            let cancel = ctx.cancel.child_token();
            let timer = ctx.timeout.map(|after| {
                let cancel = cancel.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(after).await;
                    cancel.cancel();
                })
            });
            let mut ctx_within = ctx.clone();
            ctx_within.cancel = cancel.clone();
            let built = match state.builder(q).await {
                Ok(d) => build_step(q, run, pipeline, step, spec, &ctx_within, &d).await,
                Err(e) => Err(e),
            };
            if let Some(timer) = timer {
                timer.abort();
            }
            match built {
                Ok(release) => {
                    lock(&state.built).insert(step.name.clone(), release);
                    Outcome::Success
                }
                Err(_) if ctx.cancel.is_cancelled() => Outcome::Cancelled,
                Err(_) if cancel.is_cancelled() => Outcome::TimedOut {
                    after: ctx.timeout.unwrap_or_default(),
                },
                Err(e) => error(e),
            }
        }
        Action::Deploy(spec) => {
            let release = lock(&state.built).get(&spec.image).cloned();
            match release {
                None => Outcome::Error {
                    reason: format!("step {} built no release in this run", spec.image),
                },
                Some(release) => match deploy_step(q, run, step, spec, &release, ctx).await {
                    Ok(switched) => {
                        lock(&state.switched).push(switched);
                        Outcome::Success
                    }
                    Err(e) => match e.downcast::<Outdated>() {
                        // `one_step` writes the reason into the step's log.
                        Ok(Outdated(reason)) => Outcome::Skipped { reason },
                        Err(e) => error(e),
                    },
                },
            }
        }
    }
}

impl RunState {
    /// The build engine; a failure to connect is each step's own error, tried again by the next.
    async fn builder(&self, q: &Queue) -> anyhow::Result<bollard::Docker> {
        let d = self.docker.get_or_try_init(|| q.builder()).await?;
        Ok(d.clone())
    }
}

#[allow(clippy::too_many_arguments)]
fn step_context(
    q: &Queue,
    run: &Run,
    pipeline: &Pipeline,
    step: &pipeline::Step,
    vars: &Vars,
    workspace: &Path,
    cancel: &CancellationToken,
    log: &runner::LogSink,
) -> anyhow::Result<StepContext> {
    let mut env = vars.env();
    for (k, v) in pipeline.env.iter().chain(step.env.iter()) {
        let v = vars.render(v).map_err(|e| anyhow!("env {k}: {e}"))?;
        env.retain(|(name, _)| name != k);
        env.push((k.clone(), v));
    }
    let secrets =
        q.config
            .secret_values(&run.repo, &step.secrets, &format!("step {}", step.name))?;
    let labels = HashMap::from([
        (runner::AGENT_LABEL.to_string(), q.agent_id.clone()),
        (runner::RUN_LABEL.to_string(), run.id.to_string()),
        (runner::STEP_LABEL.to_string(), step.name.clone()),
    ]);
    Ok(StepContext {
        workspace: workspace.to_path_buf(),
        env,
        secrets,
        timeout: step.timeout,
        cancel: cancel.clone(),
        log: log.clone(),
        labels,
        network: None,
    })
}
