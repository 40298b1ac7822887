//! The deployment's hooks (`before_host`, `after_host`, `after_deploy`): argv lists from the
//! pipeline, run on the agent in a checkout of the release's commit, never through a shell.
//!
//! **Invariant:** a hook runs only for a repository with `trusted = true` (a run checks it
//! before its first step; a rollback to a release built while the repository was trusted is
//! checked here), and with a clean environment: the `HOIST_*` values and `PATH`, `HOME`,
//! `LANG`, never the agent's own variables (webhook secrets, registry passwords, `[secrets]`
//! read with `env:`). Its output reaches the log through the deployment's masker.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};

use super::{Deployer, Started};
use crate::pipeline::Vars;

/// Longest a hook may run; a drain that hangs must not hold the deployment forever.
const HOOK_TIMEOUT: Duration = Duration::from_secs(120);

impl Deployer {
    /// Run the hook `which` (argv with placeholders from `vars`) in the plan's hooks
    /// directory, its output going to the log. Without a directory it is skipped, saying so.
    pub(super) async fn hook(
        &self,
        s: &Started,
        which: &str,
        argv: &[String],
        vars: &Vars,
        say: &impl Fn(String),
    ) -> anyhow::Result<()> {
        let Some(dir) = &s.plan.hooks_dir else {
            say(format!("  {which}: skipped (no checkout to run it in)"));
            return Ok(());
        };
        let repo = &s.plan.to.repo;
        if !self.config.repo(repo).is_some_and(|r| r.trusted) {
            bail!(
                "{which} hook {argv:?} refused: repository {repo} is not trusted, and hooks run \
                 on the agent's own machine; set `trusted = true` in its [[repo]] entry in \
                 hoist.toml, or deploy a release whose pipeline has no hooks"
            );
        }
        let argv: Vec<String> = argv
            .iter()
            .map(|a| vars.render(a))
            .collect::<Result<_, _>>()
            .map_err(|e| anyhow!("{which}: {e}"))?;
        let Some((prog, args)) = argv.split_first() else {
            return Ok(());
        };
        // A relative path with a slash names a script in the checkout; a bare name is looked
        // up on PATH.
        let mut cmd =
            tokio::process::Command::new(if prog.contains('/') && !prog.starts_with('/') {
                dir.join(prog)
            } else {
                PathBuf::from(prog)
            });
        cmd.args(args).current_dir(dir).env_clear();
        for name in crate::runner::KEPT_ENV {
            if let Some(value) = std::env::var_os(name) {
                cmd.env(name, value);
            }
        }
        cmd.envs(vars.env()).kill_on_drop(true);
        if let Some(conf) = vars.host.as_ref().and_then(|h| self.config.hosts.get(h)) {
            cmd.env("HOIST_HOST_ADDRESS", &conf.address);
        }
        let out = tokio::time::timeout(HOOK_TIMEOUT, cmd.output())
            .await
            .map_err(|_| {
                anyhow!(
                    "{which} hook {argv:?} did not finish within {}s",
                    HOOK_TIMEOUT.as_secs()
                )
            })?
            .with_context(|| format!("{which} hook {argv:?} could not start"))?;
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        for line in text.lines() {
            say(format!("  {which}: {line}"));
        }
        if !out.status.success() {
            bail!("{which} hook {argv:?} failed with {}", out.status);
        }
        Ok(())
    }
}
