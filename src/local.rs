//! `hoist run`: a pipeline's test steps on a local checkout, with the agent's runner, no server.
//! Build and deploy steps are the agent's business and are skipped here, saying so.

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::pipeline::{self, Action, Vars};
use crate::runner::{self, StepContext};

pub async fn run(
    pipeline_file: Option<PathBuf>,
    docker_url: String,
    dir: PathBuf,
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
    let vars = local_vars(&dir, &p.app);
    let cancel = CancellationToken::new();
    {
        let c = cancel.clone();
        tokio::spawn(async move {
            let _ = tokio::signal::ctrl_c().await;
            c.cancel();
        });
    }
    let mut docker = None;
    for step in &p.steps {
        println!("── step {}", step.name);
        let commands = match &step.action {
            Action::Container { commands, .. } | Action::Shell { commands } => commands,
            Action::Build(_) | Action::Deploy(_) => {
                println!(
                    "── step {} skipped: build and deploy steps run on the agent",
                    step.name
                );
                continue;
            }
        };
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
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Vec<u8>>();
        let printer = tokio::spawn(async move {
            let mut out = std::io::stdout();
            while let Some(b) = rx.recv().await {
                let _ = out.write_all(&b);
                let _ = out.flush();
            }
        });
        let ctx = StepContext {
            workspace: dir.clone(),
            env,
            secrets,
            timeout: step.timeout,
            cancel: cancel.clone(),
            log: tx,
            labels: HashMap::from([(runner::STEP_LABEL.to_string(), step.name.clone())]),
        };
        let outcome = match &step.action {
            Action::Container { image, commands } => {
                if docker.is_none() {
                    docker = Some(crate::engine::connect(&docker_url, None).await?);
                }
                let d = docker.as_ref().context("no Docker connection")?;
                runner::run_container(d, image, commands, &ctx).await
            }
            _ => runner::run_shell(commands, &ctx).await,
        };
        drop(ctx);
        let _ = printer.await;
        if !outcome.is_success() {
            println!("── step {} {}", step.name, outcome.reason());
            return Ok(ExitCode::from(1));
        }
    }
    println!("── all steps passed");
    Ok(ExitCode::SUCCESS)
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
