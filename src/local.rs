//! `hoist run`: a pipeline's test steps on a local checkout, with the agent's runner, no server.
//! Build and deploy steps are the agent's business and are skipped here, saying so. Steps run
//! as the agent runs them (`schedule`: file order, or as `needs` allows), and the pipeline's
//! `services:` start first on the given engine, as the agent starts them (`services`), and are
//! removed at the end, also after Ctrl-C.

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::forge::RefKind;
use crate::pipeline::{self, Action, Vars};
use crate::runner::{self, StepContext};
use crate::schedule::{self, Ended, Schedule, State};
use crate::services;

/// What the local checkout stands for, for `when`: `hoist run --branch B` or `--tag T`
/// (default: the checkout's current branch).
#[derive(Debug, Clone, Default)]
pub struct Stands {
    pub branch: Option<String>,
    pub tag: Option<String>,
}

pub async fn run(
    pipeline_file: Option<PathBuf>,
    docker_url: String,
    dir: PathBuf,
    stands: Stands,
) -> anyhow::Result<ExitCode> {
    let dir = dir
        .canonicalize()
        .with_context(|| format!("cannot open the checkout {}", dir.display()))?;
    let file = pipeline_file.unwrap_or_else(|| dir.join(pipeline::FILE_NAME));
    let text = std::fs::read_to_string(&file)
        .with_context(|| format!("cannot read {}", file.display()))?;
    let p = match pipeline::parse(&text) {
        Ok(p) => p,
        Err(problems) => {
            eprint!(
                "{}",
                pipeline::format_problems(&file.display().to_string(), &problems)
            );
            return Ok(ExitCode::from(1));
        }
    };
    let mut vars = local_vars(&dir, &p.app);
    let (kind, name) = match (&stands.tag, &stands.branch) {
        (Some(t), _) => {
            vars.tag = t.clone();
            vars.branch.clear();
            vars.git_ref = format!("refs/tags/{t}");
            (RefKind::Tag, t.clone())
        }
        (None, Some(b)) => {
            vars.branch = b.clone();
            vars.git_ref = format!("refs/heads/{b}");
            (RefKind::Branch, b.clone())
        }
        (None, None) => (RefKind::Branch, vars.branch.clone()),
    };
    let cancel = CancellationToken::new();
    {
        let c = cancel.clone();
        tokio::spawn(async move {
            let _ = tokio::signal::ctrl_c().await;
            c.cancel();
        });
    }
    let docker = tokio::sync::OnceCell::new();
    let services = if p.services.is_empty() {
        None
    } else {
        let d = docker
            .get_or_try_init(|| crate::engine::connect(&docker_url, None))
            .await?;
        match local_services(&p, &vars, d, &cancel).await? {
            Ok(s) => Some(s),
            Err(why) => {
                println!("── services failed: {why}");
                return Ok(ExitCode::from(1));
            }
        }
    };
    let network = services.as_ref().map(|(s, _)| s.network().to_string());
    if let Some(network) = &network {
        println!("── services started on network {network}");
    }
    let failed = std::sync::Mutex::new(Vec::new());
    let mut schedule = Schedule::of(&p, MAX_PARALLEL_STEPS);
    for (i, step) in p.steps.iter().enumerate() {
        if let Some(why) = step.when.skips(kind, &name) {
            for (k, why) in schedule.skip(i, &why) {
                println!("── step {} skipped: {why}", p.steps[k].name);
            }
        }
    }
    let (p, vars, dir, docker, docker_url, failed, cancel, network) = (
        &p,
        &vars,
        &dir,
        &docker,
        &docker_url,
        &failed,
        &cancel,
        &network,
    );
    let end = schedule::walk(
        schedule,
        cancel,
        |i| async move {
            let step = &p.steps[i];
            let ctx = Local {
                dir,
                docker,
                docker_url,
                cancel,
                network: network.as_deref(),
            };
            match local_step(p, step, vars, &ctx).await {
                Ok(true) => Ended::of(true),
                Ok(false) => {
                    failed.lock().unwrap_or_else(|e| e.into_inner()).push(i);
                    Ended::of(false)
                }
                Err(e) => {
                    println!("── step {} failed: {e:#}", step.name);
                    failed.lock().unwrap_or_else(|e| e.into_inner()).push(i);
                    Ended::of(false)
                }
            }
        },
        |i, why| async move {
            println!("── step {} skipped: {why}", p.steps[i].name);
        },
        |_| async {},
    )
    .await;
    if let Some((services, printers)) = services {
        services.stop().await;
        for printer in printers {
            let _ = printer.await;
        }
    }
    let unfinished = (0..p.steps.len()).any(|i| matches!(end.state(i), State::Waiting));
    if !failed.lock().unwrap_or_else(|e| e.into_inner()).is_empty() || unfinished {
        return Ok(ExitCode::from(1));
    }
    println!("── all steps passed");
    Ok(ExitCode::SUCCESS)
}

/// Steps run at once where `needs:` allows, as the agent's default `max_parallel_steps`.
const MAX_PARALLEL_STEPS: usize = 4;

/// Starts the pipeline's services on `docker`, each one's output printed line by line under
/// its name (`db | …`); the reason when one cannot start (what started is removed already).
async fn local_services(
    p: &pipeline::Pipeline,
    vars: &Vars,
    docker: &bollard::Docker,
    cancel: &CancellationToken,
) -> anyhow::Result<Result<(services::Running, Vec<tokio::task::JoinHandle<()>>), String>> {
    let mut starts = Vec::new();
    let mut printers = Vec::new();
    for spec in &p.services {
        let env = spec
            .env
            .iter()
            .map(|(k, v)| {
                let v = vars
                    .render(v)
                    .map_err(|e| anyhow::anyhow!("service {}: env {k}: {e}", spec.name))?;
                Ok((k.clone(), v))
            })
            .collect::<anyhow::Result<_>>()?;
        let (log, printer) = printer(Some(format!("{} | ", spec.name)));
        printers.push(printer);
        starts.push(services::Start {
            spec: spec.clone(),
            env,
            log,
        });
    }
    // The secrets the steps take from this environment are masked in the services' output too.
    let secrets = p
        .steps
        .iter()
        .flat_map(|s| &s.secrets)
        .filter_map(|n| std::env::var(n).ok())
        .collect();
    let owner = owner();
    let setup = services::Setup {
        network: services::network_name(&owner, "local"),
        labels: HashMap::from([(runner::AGENT_LABEL.to_string(), owner)]),
        secrets,
        cancel: cancel.clone(),
    };
    let started = services::start(docker, setup, starts).await;
    match started {
        Ok(running) => Ok(Ok((running, printers))),
        Err(e) => {
            for printer in printers {
                let _ = printer.await;
            }
            Ok(Err(e.to_string()))
        }
    }
}

/// What `hoist run` puts in the `hoist.agent` label of everything it creates on the engine.
/// No agent here: the process id keeps its network and containers apart from any other
/// `hoist run` and from every agent's (whose ids are hex digits only).
fn owner() -> String {
    format!("local-{}", std::process::id())
}

/// Where one local step runs.
struct Local<'a> {
    dir: &'a std::path::Path,
    docker: &'a tokio::sync::OnceCell<bollard::Docker>,
    docker_url: &'a str,
    cancel: &'a CancellationToken,
    /// The services' network, which container steps join.
    network: Option<&'a str>,
}

/// One step on the local checkout; whether it passed. Build and deploy steps count as passed
/// (they are the agent's business), so the steps that need them still run. In a graph, whose
/// steps may run at once, each output line carries its step's name.
async fn local_step(
    p: &pipeline::Pipeline,
    step: &pipeline::Step,
    vars: &Vars,
    local: &Local<'_>,
) -> anyhow::Result<bool> {
    let Local {
        dir,
        docker,
        docker_url,
        cancel,
        network,
    } = *local;
    println!("── step {}", step.name);
    if step.when.manual {
        // Nobody approves here: the agent's gate is the one that counts.
        println!(
            "── step {} skipped: a manual step waits for approval on the agent",
            step.name
        );
        return Ok(true);
    }
    if matches!(step.action, Action::Build(_) | Action::Deploy(_)) {
        println!(
            "── step {} skipped: build and deploy steps run on the agent",
            step.name
        );
        return Ok(true);
    }
    let mut env = vars.env();
    for (k, v) in p.env.iter().chain(step.env.iter()) {
        env.retain(|(n, _)| n != k);
        env.push((
            k.clone(),
            vars.render(v)
                .map_err(|e| anyhow::anyhow!("env {k}: {e}"))?,
        ));
    }
    // Secrets come from the environment of whoever runs this, under the same names.
    let secrets: Vec<(String, String)> = step
        .secrets
        .iter()
        .map(|n| {
            std::env::var(n)
                .map(|v| (n.clone(), v))
                .with_context(|| format!("secret {n}: export {n} to run this step locally"))
        })
        .collect::<anyhow::Result<_>>()?;
    let (tx, printer) = printer(p.is_graph().then(|| format!("{} | ", step.name)));
    let ctx = StepContext {
        workspace: dir.to_path_buf(),
        env,
        secrets,
        timeout: step.timeout,
        cancel: cancel.clone(),
        log: tx,
        labels: HashMap::from([
            (runner::AGENT_LABEL.to_string(), owner()),
            (runner::STEP_LABEL.to_string(), step.name.clone()),
        ]),
        network: network.map(str::to_string),
    };
    let outcome = match &step.action {
        Action::Container { image, commands } => {
            let d = docker
                .get_or_try_init(|| crate::engine::connect(docker_url, None))
                .await?;
            runner::run_container(d, image, commands, &ctx).await
        }
        Action::Shell { commands } => runner::run_shell(commands, &ctx).await,
        Action::Build(_) | Action::Deploy(_) => return Ok(true),
    };
    drop(ctx);
    let _ = printer.await;
    if !outcome.is_success() {
        println!("── step {} {}", step.name, outcome.reason());
    }
    Ok(outcome.is_success())
}

/// A sink whose bytes are printed to stdout as they come, or, with a prefix, line by line
/// each after the prefix (output of several things at once stays readable); and the task
/// printing, which ends once every clone of the sink is dropped.
fn printer(prefix: Option<String>) -> (runner::LogSink, tokio::task::JoinHandle<()>) {
    let (tx, mut rx) = runner::LogSink::channel();
    let printer = tokio::spawn(async move {
        let mut pending = Vec::new();
        while let Some(b) = rx.recv().await {
            let b = b.into_bytes();
            match &prefix {
                None => {
                    let mut out = std::io::stdout().lock();
                    let _ = out.write_all(&b);
                    let _ = out.flush();
                }
                Some(prefix) => {
                    pending.extend_from_slice(&b);
                    while let Some(n) = pending.iter().position(|&c| c == b'\n') {
                        let line: Vec<u8> = pending.drain(..=n).collect();
                        let mut out = std::io::stdout().lock();
                        let _ = out.write_all(prefix.as_bytes());
                        let _ = out.write_all(&line);
                        let _ = out.flush();
                    }
                }
            }
        }
        if let (Some(prefix), false) = (&prefix, pending.is_empty()) {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{prefix}{}", String::from_utf8_lossy(&pending));
        }
    });
    (tx, printer)
}

/// Placeholders from the checkout's git HEAD, when it is a repository.
fn local_vars(dir: &std::path::Path, app: &str) -> Vars {
    let mut v = Vars {
        app: app.to_string(),
        repo: dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        ..Vars::default()
    };
    if let Ok(repo) = git2::Repository::discover(dir)
        && let Ok(head) = repo.head()
    {
        if let Some(oid) = head.target() {
            v.commit = oid.to_string();
        }
        if head.is_branch() {
            v.branch = head.shorthand().unwrap_or("").to_string();
            v.git_ref = head.name().unwrap_or("").to_string();
        }
    }
    v
}
