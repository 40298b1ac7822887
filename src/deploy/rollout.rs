//! The one engine for rollouts and rollbacks: a deployment moves an app's hosts from release A
//! to release B; a rollback is a deployment whose B is older.
//!
//! Every step is journaled in the store before and after it acts, each with its undo:
//! - pull B by digest on every host in parallel, verified (touches nothing that serves);
//! - per host, in batches of `rollout.max_parallel`: `before_host` hook → keep A's container
//!   (stop, rename `NAME-r<A>`) → start B as `NAME` → health → `after_host` hook → read back
//!   the running image's digest and compare it to B's;
//! - bake: every host keeps being checked; then `after_deploy`.
//!
//! A is stopped before B starts because both publish the same host ports; the drain hook is
//! what keeps traffic away from the host meanwhile (see `agent/hooks/`).
//!
//! Any failure with `auto_rollback` reverts every touched host to what it ran before (its own
//! A, recorded in the journal): remove B, restart A's kept container (or start A afresh from
//! its release record if it was pruned), health-check it, and read it back. "Rolled back"
//! means every touched host was read back running A's digest.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use bollard::Docker;
use tokio_util::sync::CancellationToken;

use super::{health, host};
use crate::config::Config;
use crate::pipeline::{ContainerSpec, DeploySpec, Vars};
use crate::runner::LogSink;
use crate::store::{HostUpdate, Lease, NewDeployment, Release, Store, deployment_status};

/// How long a lease lives without renewal; renewed every third of it.
pub const LEASE_TTL: Duration = Duration::from_secs(30);

/// What to deploy and why.
#[derive(Debug, Clone)]
pub struct Plan {
    pub to: Release,
    /// B's deploy spec (for a rollback, the target release's recorded spec: its old settings).
    pub spec: DeploySpec,
    /// "rollout" or "rollback".
    pub kind: &'static str,
    pub run: Option<i64>,
    pub requested_by: String,
    /// Where hooks run (a checkout of B's commit); None skips hooks, saying so in the journal.
    pub hooks_dir: Option<PathBuf>,
    /// Placeholder values (commit, branch, …); `host` and `release` are set per host here.
    pub vars: Vars,
}

/// Everything the engine needs besides the plan.
#[derive(Clone)]
pub struct Deployer {
    pub store: Store,
    pub config: Arc<Config>,
    /// Set when the agent stops: the deployment stops acting and is resolved at the next start.
    pub shutdown: CancellationToken,
}

/// How a deployment ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    pub deployment: i64,
    pub status: &'static str,
    pub reason: Option<String>,
    pub failing_host: Option<String>,
}

/// A deployment that holds its lease and may act.
pub struct Started {
    lease: Lease,
    plan: Plan,
    hosts: Vec<String>,
    /// Release each host ran before (read from its container's label).
    before: BTreeMap<String, Option<i64>>,
    engines: BTreeMap<String, Docker>,
}

impl Started {
    pub fn id(&self) -> i64 {
        self.lease.deployment
    }
}

/// Why a deployment could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Another deployment holds the app.
    #[error(
        "app {app} is being deployed by deployment {deployment}; wait for it (GET /api/v1/deployments/{deployment})"
    )]
    Busy { app: String, deployment: i64 },
    #[error("{0:#}")]
    Other(#[from] anyhow::Error),
}

impl Deployer {
    /// Check the plan, connect every host, read what each runs, and take the app's lease.
    /// Nothing on any host has changed when this returns.
    pub async fn start(&self, plan: Plan) -> Result<Started, StartError> {
        let app = plan.to.app.clone();
        let repo = self.config.repo(&plan.to.repo);
        let mut hosts = Vec::new();
        for h in &plan.spec.hosts {
            if !self.config.hosts.contains_key(h) {
                return Err(
                    anyhow!("deploy host {h:?} has no [host.{h}] entry in hoist.toml").into(),
                );
            }
            if !repo.is_some_and(|r| r.hosts.contains(h)) {
                return Err(anyhow!(
                    "repository {} may not deploy to host {h}; add it to hosts of its [[repo]] entry in hoist.toml",
                    plan.to.repo
                )
                .into());
            }
            hosts.push(h.clone());
        }
        let name = plan.spec.container.name.clone();
        let mut engines = BTreeMap::new();
        let mut before = BTreeMap::new();
        let connects = hosts.iter().map(|h| {
            let conf = self.config.hosts[h].clone();
            let (h, name) = (h.clone(), name.clone());
            async move {
                let docker = crate::engine::connect(&conf.docker, conf.tls.as_ref())
                    .await
                    .with_context(|| format!("host {h} is unreachable; nothing was changed"))?;
                let current = host::current(&docker, &name)
                    .await
                    .with_context(|| format!("host {h}"))?;
                anyhow::Ok((h, docker, current.and_then(|c| c.release)))
            }
        });
        for r in futures_util::future::join_all(connects).await {
            let (h, docker, release) = r?;
            engines.insert(h.clone(), docker);
            before.insert(h, release);
        }
        let per_batch = plan.spec.rollout.max_parallel.max(1) as usize;
        let batches = hosts
            .iter()
            .enumerate()
            .map(|(i, h)| (h.clone(), (i / per_batch) as i64 + 1))
            .collect();
        let from = self
            .store
            .app_hosts(app.clone())
            .await?
            .iter()
            .filter_map(|h| h.release)
            .max();
        let lease = match self
            .store
            .begin_deployment(
                NewDeployment {
                    app: app.clone(),
                    kind: plan.kind,
                    from_release: from,
                    to_release: plan.to.number,
                    run: plan.run,
                    requested_by: plan.requested_by.clone(),
                    hosts: batches,
                },
                LEASE_TTL.as_millis() as i64,
            )
            .await?
        {
            Ok(lease) => lease,
            Err(held) => {
                return Err(StartError::Busy {
                    app,
                    deployment: held.deployment,
                });
            }
        };
        Ok(Started {
            lease,
            plan,
            hosts,
            before,
            engines,
        })
    }

    /// Carry a started deployment to its verdict, logging progress to `log`.
    pub async fn run(&self, s: Started, log: &LogSink) -> Verdict {
        let lease = s.lease.clone();
        // Renew the lease while we act; losing it stops us (a stale holder must not act).
        let lost = CancellationToken::new();
        let renewer = {
            let (store, lease, lost, stop) = (
                self.store.clone(),
                lease.clone(),
                lost.clone(),
                self.shutdown.clone(),
            );
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = tokio::time::sleep(LEASE_TTL / 3) => {}
                        _ = stop.cancelled() => return,
                    }
                    if let Err(e) = store
                        .renew_lease(lease.clone(), LEASE_TTL.as_millis() as i64)
                        .await
                    {
                        tracing::error!("{e:#}");
                        lost.cancel();
                        return;
                    }
                }
            })
        };
        let verdict = self.drive(&s, log, &lost).await;
        renewer.abort();
        verdict
    }

    async fn drive(&self, s: &Started, log: &LogSink, lost: &CancellationToken) -> Verdict {
        let say = |m: String| {
            let _ = log.send(format!("{m}\n").into_bytes());
        };
        let d = s.lease.deployment;
        let b = &s.plan.to;
        say(format!(
            "deployment {d}: {} {} to release {} ({}) on {}",
            s.plan.kind,
            b.app,
            b.number,
            b.image(),
            s.hosts.join(", ")
        ));
        let forward = self.forward(s, &say, lost).await;
        let (failing_host, reason) = match forward {
            Ok(()) => {
                let v = self
                    .finish(s, deployment_status::SUCCEEDED, None, None)
                    .await;
                say(format!(
                    "deployment {d}: succeeded; every host verified on release {} ({})",
                    b.number, b.manifest_digest
                ));
                self.prune(s, &say).await;
                return v;
            }
            Err((host, reason)) => (host, reason),
        };
        say(format!(
            "deployment {d}: failed{}: {reason}",
            failing_host
                .as_deref()
                .map(|h| format!(" on {h}"))
                .unwrap_or_default()
        ));
        if self.shutdown.is_cancelled() || lost.is_cancelled() {
            // Resolved by whoever holds the lease next (the restarted agent's recovery).
            return Verdict {
                deployment: d,
                status: deployment_status::RUNNING,
                reason: Some(reason),
                failing_host,
            };
        }
        if !s.plan.spec.rollout.auto_rollback {
            say(format!(
                "deployment {d}: auto_rollback is off; hosts are left as they are"
            ));
            return self
                .finish(s, deployment_status::FAILED, Some(reason), failing_host)
                .await;
        }
        match self.revert(s, &say).await {
            Ok(()) => {
                say(format!(
                    "deployment {d}: rolled back; every touched host verified on its previous release"
                ));
                self.finish(
                    s,
                    deployment_status::ROLLED_BACK,
                    Some(reason),
                    failing_host,
                )
                .await
            }
            Err(e) => {
                let why = format!("{reason}; and the rollback failed too: {e:#}");
                say(format!("deployment {d}: {why}"));
                self.finish(s, deployment_status::FAILED, Some(why), failing_host)
                    .await
            }
        }
    }

    async fn finish(
        &self,
        s: &Started,
        status: &'static str,
        reason: Option<String>,
        failing_host: Option<String>,
    ) -> Verdict {
        if let Err(e) = self
            .store
            .finish_deployment(
                s.lease.clone(),
                status,
                reason.clone(),
                failing_host.clone(),
            )
            .await
        {
            tracing::error!(
                "cannot record the end of deployment {}: {e:#}",
                s.lease.deployment
            );
        }
        Verdict {
            deployment: s.lease.deployment,
            status,
            reason,
            failing_host,
        }
    }

    fn vars_for(&self, s: &Started, h: &str, release: i64) -> Vars {
        let mut v = s.plan.vars.clone();
        v.host = Some(h.to_string());
        v.release = Some(release as u64);
        v
    }

    /// The forward path; Err carries the failing host (if one) and the reason.
    async fn forward(
        &self,
        s: &Started,
        say: &impl Fn(String),
        lost: &CancellationToken,
    ) -> Result<(), (Option<String>, String)> {
        let b = &s.plan.to;
        let step = |host: Option<&str>, step: &str, detail: String, u: HostUpdate| {
            let (store, lease) = (self.store.clone(), s.lease.clone());
            let (host, step) = (host.map(str::to_string), step.to_string());
            async move {
                match host {
                    Some(h) => store.host_step(lease, h, step, Some(detail), u).await,
                    None => store.deployment_event(lease, step, Some(detail)).await,
                }
                .map_err(|e| (None, format!("{e:#}")))
            }
        };

        // 1. Pull B by digest everywhere, in parallel, before anything is stopped.
        let pulls = s.hosts.iter().map(|h| {
            let docker = s.engines[h].clone();
            let (image, digest, h) = (b.image(), b.manifest_digest.clone(), h.clone());
            async move { (h.clone(), host::pull(&docker, &image, &digest).await) }
        });
        for (h, r) in futures_util::future::join_all(pulls).await {
            match r {
                Ok(id) => {
                    step(
                        Some(&h),
                        "pulled",
                        format!("{} (image {id})", b.image()),
                        HostUpdate {
                            state: Some("pulled"),
                            expected: Some(b.manifest_digest.clone()),
                            ..Default::default()
                        },
                    )
                    .await?;
                    say(format!("  {h}: pulled {} and verified", b.manifest_digest));
                }
                Err(e) => return Err((Some(h), format!("pull failed: {e:#}"))),
            }
        }

        // 2. Switch host by host, batch by batch.
        let per_batch = s.plan.spec.rollout.max_parallel.max(1) as usize;
        for batch in s.hosts.chunks(per_batch) {
            let switches = batch.iter().map(|h| self.switch_host(s, h, say, lost));
            for r in futures_util::future::join_all(switches).await {
                r?;
            }
        }

        // 3. Bake: every host keeps being checked.
        let bake = s.plan.spec.rollout.bake;
        if !bake.is_zero() {
            say(format!(
                "  bake: checking every host for {}",
                humantime::format_duration(bake)
            ));
            step(
                None,
                "bake",
                format!("for {}", humantime::format_duration(bake)),
                HostUpdate::default(),
            )
            .await?;
            let end = Instant::now() + bake;
            while Instant::now() < end {
                for h in &s.hosts {
                    let addr = &self.config.hosts[h].address;
                    if let Err(why) = health::check_once(
                        &s.engines[h],
                        &s.plan.spec.container.name,
                        addr,
                        &s.plan.spec.health,
                    )
                    .await
                    {
                        return Err((Some(h.clone()), format!("unhealthy during bake: {why}")));
                    }
                }
                tokio::select! {
                    _ = tokio::time::sleep(s.plan.spec.health.interval) => {}
                    _ = self.shutdown.cancelled() => return Err((None, "the agent is stopping".into())),
                    _ = lost.cancelled() => return Err((None, "the lease was lost".into())),
                }
            }
        }

        // 4. after_deploy.
        if let Some(argv) = &s.plan.spec.hooks.after_deploy {
            let vars = {
                let mut v = s.plan.vars.clone();
                v.release = Some(b.number as u64);
                v
            };
            self.hook(s, "after_deploy", argv, &vars, say)
                .await
                .map_err(|e| (None, e))?;
        }
        Ok(())
    }

    async fn switch_host(
        &self,
        s: &Started,
        h: &str,
        say: &impl Fn(String),
        lost: &CancellationToken,
    ) -> Result<(), (Option<String>, String)> {
        let b = &s.plan.to;
        let fail = |why: String| (Some(h.to_string()), why);
        let docker = &s.engines[h];
        let address = &self.config.hosts[h].address;
        let vars = self.vars_for(s, h, b.number);
        let journal = |st: &'static str, detail: String, mut u: HostUpdate| {
            u.state = Some(st);
            let (store, lease, host) = (self.store.clone(), s.lease.clone(), h.to_string());
            async move {
                store
                    .host_step(lease, host, st.to_string(), Some(detail), u)
                    .await
                    .map_err(|e| (None, format!("{e:#}")))
            }
        };
        if self.shutdown.is_cancelled() || lost.is_cancelled() {
            return Err((None, "the agent is stopping".into()));
        }
        let before = s.before.get(h).copied().flatten();
        journal(
            "switching",
            format!(
                "from release {}",
                before.map_or("none".into(), |r| r.to_string())
            ),
            HostUpdate {
                from_release: Some(before),
                ..Default::default()
            },
        )
        .await?;
        if let Some(argv) = &s.plan.spec.hooks.before_host {
            self.hook(s, "before_host", argv, &vars, say)
                .await
                .map_err(fail)?;
        }
        let container = render_container(&s.plan.spec.container, &vars).map_err(fail)?;
        host::keep_current(docker, &container.name)
            .await
            .map_err(|e| fail(format!("cannot stop the running container: {e:#}")))?;
        let target = host::Target {
            app: &b.app,
            release: b.number,
            commit: &b.commit,
            image: &b.image(),
            digest: &b.manifest_digest,
            container: &container,
        };
        host::start(docker, &target)
            .await
            .map_err(|e| fail(format!("cannot start release {}: {e:#}", b.number)))?;
        journal(
            "started",
            format!("{} as {}", b.image(), container.name),
            HostUpdate::default(),
        )
        .await?;
        let report =
            health::wait_healthy(docker, &container.name, address, &s.plan.spec.health, lost)
                .await
                .map_err(|why| fail(format!("unhealthy: {why}")))?;
        journal(
            "healthy",
            format!("{} checks in {:?}", report.checks, report.took),
            HostUpdate {
                health: Some("healthy".into()),
                ..Default::default()
            },
        )
        .await?;
        if let Some(argv) = &s.plan.spec.hooks.after_host {
            self.hook(s, "after_host", argv, &vars, say)
                .await
                .map_err(fail)?;
        }
        let rb = host::read_back(docker, &container.name, &b.repository)
            .await
            .map_err(|e| fail(format!("read-back failed: {e:#}")))?;
        let got = rb.digest.clone().unwrap_or_default();
        if got != b.manifest_digest || !rb.running {
            return Err(fail(format!(
                "read-back mismatch: the host runs {} (running: {}) but release {} is {}",
                if got.is_empty() {
                    "an image without a registry digest"
                } else {
                    &got
                },
                rb.running,
                b.number,
                b.manifest_digest
            )));
        }
        journal(
            "verified",
            format!("runs {got}"),
            HostUpdate {
                read_back: Some(got.clone()),
                ..Default::default()
            },
        )
        .await?;
        self.store
            .set_app_host(
                s.lease.clone(),
                h.to_string(),
                Some(b.number),
                Some(got.clone()),
            )
            .await
            .map_err(|e| (None, format!("{e:#}")))?;
        say(format!(
            "  {h}: release {} healthy and verified ({got})",
            b.number
        ));
        Ok(())
    }

    /// Put every touched host back on what it ran before, and prove it by read-back.
    async fn revert(&self, s: &Started, say: &impl Fn(String)) -> anyhow::Result<()> {
        let (_, journal, _) = self
            .store
            .deployment(s.lease.deployment)
            .await?
            .context("the deployment vanished from the store")?;
        let touched: Vec<_> = journal
            .into_iter()
            .filter(|h| {
                [
                    "switching",
                    "started",
                    "healthy",
                    "verified",
                    "reverting",
                    "failed",
                ]
                .contains(&h.state.as_str())
            })
            .collect();
        let mut errors = Vec::new();
        let reverts = touched
            .iter()
            .map(|h| self.revert_host(s, &h.host, h.from_release, say));
        for (h, r) in touched
            .iter()
            .zip(futures_util::future::join_all(reverts).await)
        {
            if let Err(e) = r {
                errors.push(format!("{}: {e:#}", h.host));
                let _ = self
                    .store
                    .host_step(
                        s.lease.clone(),
                        h.host.clone(),
                        "revert failed".into(),
                        Some(format!("{e:#}")),
                        HostUpdate {
                            state: Some("failed"),
                            reason: Some(format!("{e:#}")),
                            ..Default::default()
                        },
                    )
                    .await;
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            bail!(errors.join("; "))
        }
    }

    async fn revert_host(
        &self,
        s: &Started,
        h: &str,
        to: Option<i64>,
        say: &impl Fn(String),
    ) -> anyhow::Result<()> {
        let docker = s.engines.get(h).context("no connection to the host")?;
        let address = &self.config.hosts[h].address;
        let b = &s.plan.to;
        let name = &s.plan.spec.container.name;
        self.store
            .host_step(
                s.lease.clone(),
                h.to_string(),
                "reverting".into(),
                Some(format!(
                    "to release {}",
                    to.map_or("none".into(), |r| r.to_string())
                )),
                HostUpdate {
                    state: Some("reverting"),
                    ..Default::default()
                },
            )
            .await?;
        // A's release record: its image and the container settings it was deployed with.
        let a = match to {
            Some(n) => Some(
                self.store
                    .release(b.app.clone(), n)
                    .await?
                    .with_context(|| format!("release {n} of {} is not in the store", b.app))?,
            ),
            None => None,
        };
        let a_spec: Option<DeploySpec> = a
            .as_ref()
            .and_then(|r| r.deploy.clone())
            .and_then(|v| serde_json::from_value(v).ok());
        let vars = self.vars_for(s, h, to.unwrap_or(0));
        if let Some(argv) = &s.plan.spec.hooks.before_host {
            self.hook(s, "before_host", argv, &vars, say)
                .await
                .map_err(|e| anyhow!(e))?;
        }
        // Remove whatever serves as NAME unless it already is A (B, or a half-started B).
        if let Some(cur) = host::current(docker, name).await?
            && (cur.release != to || !cur.running)
        {
            host::remove(docker, name).await?;
        }
        let Some(a) = a else {
            // The host ran nothing of this app before: reverting means running nothing.
            self.store
                .set_app_host(s.lease.clone(), h.to_string(), None, None)
                .await?;
            self.store
                .host_step(
                    s.lease.clone(),
                    h.to_string(),
                    "reverted".into(),
                    Some("no earlier release; the container was removed".into()),
                    HostUpdate {
                        state: Some("reverted"),
                        ..Default::default()
                    },
                )
                .await?;
            say(format!(
                "  {h}: reverted (no earlier release: nothing runs)"
            ));
            return Ok(());
        };
        let a_spec =
            a_spec.with_context(|| format!("release {} has no recorded deploy spec", a.number))?;
        let serving = host::current(docker, name)
            .await?
            .is_some_and(|c| c.running && c.release == Some(a.number));
        if !serving && !host::restore_kept(docker, name, a.number).await? {
            // A's kept container is gone (pruned, or never kept): start A afresh by digest.
            host::pull(docker, &a.image(), &a.manifest_digest).await?;
            let container = render_container(&a_spec.container, &vars).map_err(|e| anyhow!(e))?;
            host::start(
                docker,
                &host::Target {
                    app: &a.app,
                    release: a.number,
                    commit: &a.commit,
                    image: &a.image(),
                    digest: &a.manifest_digest,
                    container: &container,
                },
            )
            .await?;
        }
        health::wait_healthy(
            docker,
            name,
            address,
            &a_spec.health,
            &CancellationToken::new(),
        )
        .await
        .map_err(|why| anyhow!("release {} is not healthy again: {why}", a.number))?;
        if let Some(argv) = &s.plan.spec.hooks.after_host {
            self.hook(s, "after_host", argv, &vars, say)
                .await
                .map_err(|e| anyhow!(e))?;
        }
        let rb = host::read_back(docker, name, &a.repository).await?;
        let got = rb.digest.unwrap_or_default();
        if got != a.manifest_digest || !rb.running {
            bail!(
                "read-back after the rollback: the host runs {got:?} (running: {}), expected {}",
                rb.running,
                a.manifest_digest
            );
        }
        self.store
            .set_app_host(
                s.lease.clone(),
                h.to_string(),
                Some(a.number),
                Some(got.clone()),
            )
            .await?;
        self.store
            .host_step(
                s.lease.clone(),
                h.to_string(),
                "reverted".into(),
                Some(format!("runs release {} ({got})", a.number)),
                HostUpdate {
                    state: Some("reverted"),
                    read_back: Some(got.clone()),
                    ..Default::default()
                },
            )
            .await?;
        say(format!(
            "  {h}: back on release {} and verified ({got})",
            a.number
        ));
        Ok(())
    }

    /// Run a hook's argv directly (never through a shell) in the hooks directory.
    async fn hook(
        &self,
        s: &Started,
        which: &str,
        argv: &[String],
        vars: &Vars,
        say: &impl Fn(String),
    ) -> Result<(), String> {
        let Some(dir) = &s.plan.hooks_dir else {
            say(format!("  {which}: skipped (no checkout to run it in)"));
            return Ok(());
        };
        let argv: Vec<String> = argv
            .iter()
            .map(|a| vars.render(a))
            .collect::<Result<_, _>>()
            .map_err(|e| format!("{which}: {e}"))?;
        let Some((prog, args)) = argv.split_first() else {
            return Ok(());
        };
        let mut cmd =
            tokio::process::Command::new(if prog.contains('/') && !prog.starts_with('/') {
                dir.join(prog)
            } else {
                PathBuf::from(prog)
            });
        cmd.args(args)
            .current_dir(dir)
            .envs(vars.env())
            .kill_on_drop(true);
        if let Some(conf) = vars.host.as_ref().and_then(|h| self.config.hosts.get(h)) {
            cmd.env("HOIST_HOST_ADDRESS", &conf.address);
        }
        let out = tokio::time::timeout(Duration::from_secs(120), cmd.output())
            .await
            .map_err(|_| format!("{which} hook {argv:?} did not finish within 120s"))?
            .map_err(|e| format!("{which} hook {argv:?} could not start: {e}"))?;
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        for line in text.lines() {
            say(format!("  {which}: {line}"));
        }
        if !out.status.success() {
            return Err(format!("{which} hook {argv:?} failed with {}", out.status));
        }
        Ok(())
    }

    /// Retention: keep B and the last `keep` good releases on every host; never a rollback target.
    async fn prune(&self, s: &Started, say: &impl Fn(String)) {
        let keep_n = s.plan.spec.rollout.keep as usize;
        let good = self
            .store
            .good_releases(s.plan.to.app.clone())
            .await
            .unwrap_or_default();
        let mut keep: BTreeSet<i64> = good.into_iter().take(keep_n + 1).collect();
        keep.insert(s.plan.to.number);
        keep.extend(s.before.values().flatten());
        for h in &s.hosts {
            match host::prune(&s.engines[h], &s.plan.spec.container.name, &keep).await {
                Ok(removed) if !removed.is_empty() => {
                    say(format!("  {h}: pruned {}", removed.join(", ")))
                }
                Ok(_) => {}
                Err(e) => say(format!("  {h}: could not prune old releases: {e:#}")),
            }
        }
    }

    /// At start: resolve deployments a crash left running. If B had completed (every host
    /// verified on B), verify again and call it succeeded; otherwise revert every touched host.
    pub async fn recover(&self, log: &LogSink) -> anyhow::Result<Vec<Verdict>> {
        let mut out = Vec::new();
        for d in self.store.running_deployments().await? {
            let lease = self
                .store
                .take_over_lease(d.app.clone(), d.id, LEASE_TTL.as_millis() as i64)
                .await?;
            let release = self
                .store
                .release(d.app.clone(), d.to_release)
                .await?
                .context("release missing")?;
            let spec: DeploySpec =
                serde_json::from_value(release.deploy.clone().unwrap_or_default())
                    .with_context(|| format!("release {} has no deploy spec", release.number))?;
            let (_, hosts, _) = self
                .store
                .deployment(d.id)
                .await?
                .context("deployment missing")?;
            let mut engines = BTreeMap::new();
            for h in &hosts {
                if let Some(conf) = self.config.hosts.get(&h.host) {
                    match crate::engine::connect(&conf.docker, conf.tls.as_ref()).await {
                        Ok(e) => {
                            engines.insert(h.host.clone(), e);
                        }
                        Err(e) => tracing::warn!("recovery: host {} unreachable: {e:#}", h.host),
                    }
                }
            }
            let before = hosts
                .iter()
                .map(|h| (h.host.clone(), h.from_release))
                .collect();
            let started = Started {
                lease,
                plan: Plan {
                    vars: Vars {
                        commit: release.commit.clone(),
                        app: release.app.clone(),
                        repo: release.repo.clone(),
                        ..Vars::default()
                    },
                    to: release,
                    spec,
                    kind: "rollout",
                    run: d.run,
                    requested_by: d.requested_by.clone(),
                    hooks_dir: None,
                },
                hosts: hosts.iter().map(|h| h.host.clone()).collect(),
                before,
                engines,
            };
            let say = |m: String| {
                let _ = log.send(format!("{m}\n").into_bytes());
            };
            let completed = hosts.iter().all(|h| h.state == "verified");
            let verdict = if completed && self.verify_all(&started).await.is_ok() {
                say(format!(
                    "deployment {}: had completed before the restart; verified again",
                    d.id
                ));
                self.finish(
                    &started,
                    deployment_status::SUCCEEDED,
                    Some("completed before an agent restart; verified again at start".into()),
                    None,
                )
                .await
            } else {
                let reason = "interrupted by an agent restart".to_string();
                match self.revert(&started, &say).await {
                    Ok(()) => {
                        self.finish(&started, deployment_status::ROLLED_BACK, Some(reason), None)
                            .await
                    }
                    Err(e) => {
                        self.finish(
                            &started,
                            deployment_status::FAILED,
                            Some(format!("{reason}; the rollback failed: {e:#}")),
                            None,
                        )
                        .await
                    }
                }
            };
            tracing::warn!(
                deployment = d.id,
                status = verdict.status,
                "interrupted deployment resolved"
            );
            out.push(verdict);
        }
        Ok(out)
    }

    async fn verify_all(&self, s: &Started) -> anyhow::Result<()> {
        for h in &s.hosts {
            let docker = s.engines.get(h).context("host unreachable")?;
            let rb =
                host::read_back(docker, &s.plan.spec.container.name, &s.plan.to.repository).await?;
            if rb.digest.as_deref() != Some(s.plan.to.manifest_digest.as_str()) || !rb.running {
                bail!("{h} does not run {}", s.plan.to.manifest_digest);
            }
        }
        Ok(())
    }
}

/// Fill placeholders in the declarative container fields for one host.
pub fn render_container(c: &ContainerSpec, vars: &Vars) -> Result<ContainerSpec, String> {
    let r = |s: &String| vars.render(s).map_err(|e| e.to_string());
    Ok(ContainerSpec {
        name: c.name.clone(),
        ports: c.ports.iter().map(r).collect::<Result<_, _>>()?,
        env: c
            .env
            .iter()
            .map(|(k, v)| Ok((k.clone(), r(v)?)))
            .collect::<Result<_, String>>()?,
        args: c.args.iter().map(r).collect::<Result<_, _>>()?,
        volumes: c.volumes.iter().map(r).collect::<Result<_, _>>()?,
    })
}
