//! The one engine for rollouts and rollbacks: a deployment moves an app's hosts from release A
//! to release B; a rollback is a deployment whose B is older.
//!
//! A saga: every step is journaled in the store, and every host action has its undo beside it
//! (`switch`: `+ keep A` / `− restore A`, `+ start B` / `− remove B`, `+ record B` / `− record A`):
//! - pull B by digest on every host in parallel, verified (touches nothing that serves, so it
//!   has nothing to undo);
//! - per host, in batches of `rollout.max_parallel`: `before_host` hook → keep A's container
//!   (stop, rename `NAME-r<A>`) → start B as `NAME` → health → `after_host` hook → read back
//!   the running image's digest and compare it to B's → record it;
//! - bake: every host keeps being checked; then `after_deploy`.
//!
//! A is stopped before B starts because both publish the same host ports; the drain hook is
//! what keeps traffic away from the host meanwhile (see `agent/hooks/`).
//!
//! Any failure with `auto_rollback` reverts every host whose journal state says it may have
//! stopped serving A ([`HostState::touched`]) to what it ran before (its own A, recorded in the
//! journal), taking the switch's undos newest first: remove B, serve A again (its kept
//! container, or A afresh from its release record if that was pruned), then prove A the way B
//! was proved: health, `after_host`, read back, record. "Rolled back" means every touched host
//! was read back running A's digest. A restarted agent resolves a deployment it left running
//! the same way, from the journal ([`Deployer::recover`]).

mod abort;
mod hooks;
mod switch;

use std::collections::{BTreeMap, BTreeSet};
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bollard::Docker;
use futures_util::FutureExt;
use tokio_util::sync::CancellationToken;

use super::{health, host};
use crate::config::Config;
use crate::pipeline::{DeploySpec, Vars};
use crate::runner::{LogSink, Masker};
use crate::store::{
    Deployment, DeploymentHost, DeploymentKind, DeploymentStatus, HostState, HostUpdate, Lease,
    LeaseLost, NewDeployment, Release, Settled, Store, TakeOver,
};

pub use abort::{AbortError, abort};
pub use switch::render_container;

/// How long a lease lives without renewal; renewed every third of it.
pub const LEASE_TTL: Duration = Duration::from_secs(30);

/// What to deploy and why.
#[derive(Debug, Clone)]
pub struct Plan {
    pub to: Release,
    /// B's deploy spec (for a rollback, the target release's recorded spec: its old settings).
    pub spec: DeploySpec,
    pub kind: DeploymentKind,
    pub run: Option<i64>,
    pub requested_by: String,
    /// Where hooks run (a checkout of B's commit); None skips hooks, saying so in the journal.
    pub hooks_dir: Option<PathBuf>,
    /// Placeholder values (commit, branch, …); `host` and `release` are set per host here.
    pub vars: Vars,
    /// Every host at once, each from its kept `NAME-r<B>` container where it has one (B
    /// afresh by digest where it was pruned): one health pass per host, no batches, no bake.
    pub now: bool,
    /// Only these of the spec's hosts (a rollback that leaves out a host that is down); None:
    /// all. `${hosts.*}` still renders over the spec's whole list.
    pub hosts: Option<Vec<String>>,
}

impl Plan {
    /// Limit the plan to `hosts`, each one the spec names; an error names the ones it does not.
    pub fn only_hosts(&mut self, hosts: &[String]) -> anyhow::Result<()> {
        let all = &self.spec.hosts;
        let unknown: Vec<&str> = hosts
            .iter()
            .filter(|h| !all.contains(h))
            .map(String::as_str)
            .collect();
        if !unknown.is_empty() {
            bail!(
                "app {} has no host {}; release {} runs on {}",
                self.to.app,
                unknown.join(", "),
                self.to.number,
                all.join(", ")
            );
        }
        if hosts.is_empty() {
            bail!(
                "no host named; name one or more of {}, or leave `hosts` out for all",
                all.join(", ")
            );
        }
        self.hosts = Some(hosts.to_vec());
        Ok(())
    }

    /// Hosts switched at once: every host for `now`, else `rollout.max_parallel`.
    fn per_batch(&self, hosts: usize) -> usize {
        if self.now {
            hosts.max(1)
        } else {
            self.spec.rollout.max_parallel.max(1) as usize
        }
    }
}

/// Everything the engine needs besides the plan.
#[derive(Clone)]
pub struct Deployer {
    pub store: Store,
    pub config: Arc<Config>,
    /// Set when the agent stops: the deployment stops acting and is resolved at the next start.
    pub shutdown: CancellationToken,
}

impl Deployer {
    pub fn new(store: Store, config: Arc<Config>, shutdown: CancellationToken) -> Deployer {
        Deployer {
            store,
            config,
            shutdown,
        }
    }
}

/// How a deployment ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    pub deployment: i64,
    pub status: DeploymentStatus,
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
    /// B's `container.secrets` with their values, resolved when the deployment started (a
    /// rollback gets the current values); never written anywhere.
    secrets: Vec<(String, String)>,
    /// Masks every `[secrets]` value in the deployment's log lines, journal and reasons.
    masker: Masker,
    /// Old containers being drained and stopped off the critical path, one task per host
    /// switched; the deployment ends (and a revert starts) only once they are done.
    stops: std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// The deployment's abort switch, held while this agent carries it; None for one a
    /// restart's recovery resolves (that only reverts or verifies, and is not aborted).
    carried: Option<abort::Carried>,
}

impl Started {
    pub fn id(&self) -> i64 {
        self.lease.deployment
    }

    /// Who aborted the deployment, once someone did.
    fn aborted_by(&self) -> Option<String> {
        self.carried.as_ref().and_then(|c| c.abort.by())
    }

    /// After `drain`, stop the old containers `names` on host `h` (renamed to their kept names
    /// when B started beside them), in the background; journaled as the host's `stopped old`.
    fn stop_later(&self, d: &Deployer, h: &str, names: Vec<String>, drain: Duration) {
        let (store, lease, app) = (
            d.store.clone(),
            self.lease.clone(),
            self.plan.to.app.clone(),
        );
        let (h, docker) = (h.to_string(), self.engines[h].clone());
        let task = tokio::spawn(async move {
            tokio::time::sleep(drain).await;
            let t = Instant::now();
            let mut errors = Vec::new();
            for n in &names {
                if let Err(e) = host::stop(&docker, n, &app).await {
                    errors.push(format!("{n}: {e:#}"));
                }
            }
            let detail = if errors.is_empty() {
                format!(
                    "{} in {:?} after a {drain:?} drain",
                    names.join(", "),
                    t.elapsed()
                )
            } else {
                format!("could not stop {}", errors.join("; "))
            };
            let step = "stopped old".to_string();
            let u = HostUpdate::default();
            if let Err(e) = store.host_step(lease, h, step, Some(detail), u).await {
                tracing::warn!("cannot journal the old containers' stop: {e:#}");
            }
        });
        // A std Mutex: pushed and drained without an await under it.
        self.stops
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(task);
    }

    /// Wait for every pending stop of old containers.
    async fn stops_done(&self) {
        let tasks: Vec<_> =
            std::mem::take(&mut *self.stops.lock().unwrap_or_else(|e| e.into_inner()));
        for t in tasks {
            let _ = t.await;
        }
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
    /// The deployment would break a rule (a secret the repository may not use, a per-host
    /// key a host lacks, a container of another app): asking again cannot help.
    #[error("{0:#}")]
    Refused(anyhow::Error),
    #[error("{0:#}")]
    Other(#[from] anyhow::Error),
}

/// Why the forward path stopped.
#[derive(Debug)]
struct Failure {
    /// The host at fault; None when no one host is (a journal write, the agent stopping,
    /// `after_deploy`).
    host: Option<String>,
    reason: String,
}

impl Failure {
    fn on(host: &str, reason: String) -> Failure {
        Failure {
            host: Some(host.to_string()),
            reason,
        }
    }

    fn general(reason: impl Into<String>) -> Failure {
        Failure {
            host: None,
            reason: reason.into(),
        }
    }
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Failure {
        Failure::general(format!("{e:#}"))
    }
}

impl Deployer {
    /// Check the plan, connect every host, read what each runs, and take the app's lease.
    /// Nothing on any host has changed when this returns.
    pub async fn start(&self, plan: Plan) -> Result<Started, StartError> {
        let dir = plan.hooks_dir.clone();
        let started = self.begin(plan).await;
        if started.is_err() {
            self.remove_own_checkout(dir.as_deref());
        }
        started
    }

    /// A checkout the deployer made for a rollback's hooks (under `data_dir/hooks`) is the
    /// plan's own: removed once its deployment ends or is refused. A run's workspace, where a
    /// deploy step's hooks run, is left to the run.
    fn remove_own_checkout(&self, dir: Option<&std::path::Path>) {
        let Some(dir) = dir else { return };
        if !dir.starts_with(self.config.data_dir.join(super::HOOKS_DIR)) {
            return;
        }
        if let Err(e) = std::fs::remove_dir_all(dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!("cannot remove the hooks checkout {}: {e}", dir.display());
        }
    }

    /// [`Deployer::start`], before its refusal is cleaned up after.
    async fn begin(&self, plan: Plan) -> Result<Started, StartError> {
        let app = plan.to.app.clone();
        let hosts = self.allowed_hosts(&plan)?;
        let what = format!("container {}", plan.spec.container.name);
        let refused = |e: anyhow::Error| StartError::Refused(e.context("nothing was changed"));
        let secrets = self
            .config
            .secret_values(&plan.to.repo, &plan.spec.container.secrets, &what)
            .map_err(refused)?;
        self.prerender(&plan).map_err(refused)?;
        if let Some(b) = &plan.spec.balancer
            && !self.config.balancers.contains_key(&b.name)
        {
            return Err(refused(anyhow::anyhow!(
                "the deploy step names balancer {0}, which hoist.toml does not configure; add [balancer.{0}] there",
                b.name
            )));
        }
        let name = &plan.spec.container.name;
        let (engines, before) = self.connect(&hosts, name).await?;
        let owners = hosts.iter().map(|h| {
            let (engines, app) = (&engines, &app);
            async move {
                host::check_owner(&engines[h], name, app)
                    .await
                    .with_context(|| format!("host {h}"))
            }
        });
        for owned in futures_util::future::join_all(owners).await {
            owned.map_err(refused)?;
        }
        let per_batch = plan.per_batch(hosts.len());
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
        let new = NewDeployment {
            app: app.clone(),
            kind: plan.kind,
            from_release: from,
            to_release: plan.to.number,
            run: plan.run,
            requested_by: plan.requested_by.clone(),
            hosts: batches,
        };
        let lease = self
            .store
            .begin_deployment(new, LEASE_TTL.as_millis() as i64)
            .await?
            .map_err(|held| StartError::Busy {
                app,
                deployment: held.deployment,
            })?;
        let carried = Some(abort::Carried::new(&self.store, lease.deployment));
        Ok(Started {
            lease,
            plan,
            hosts,
            before,
            engines,
            secrets,
            masker: self.masker(),
            stops: Default::default(),
            carried,
        })
    }

    /// A masker for every `[secrets]` value: whichever release a deployment touches (B, or
    /// A in a revert), none of them reaches its log.
    fn masker(&self) -> Masker {
        Masker::new(self.config.secrets.values().map(|v| v.expose().to_string()))
    }

    /// Render every per-host field for every host before anything changes: a placeholder
    /// naming a key some host lacks fails here, naming the host and the key.
    fn prerender(&self, plan: &Plan) -> anyhow::Result<()> {
        let spec = &plan.spec;
        for h in &spec.hosts {
            let vars = switch::vars_for(&self.config, &plan.vars, &spec.hosts, h, plan.to.number);
            render_container(&spec.container, &vars)
                .with_context(|| format!("container {} for host {h}", spec.container.name))?;
            for (which, argv) in [
                ("before_host", &spec.hooks.before_host),
                ("after_host", &spec.hooks.after_host),
            ] {
                for a in argv.iter().flatten() {
                    vars.render(a)
                        .map_err(|e| anyhow::anyhow!("{which} hook for host {h}: {e}"))?;
                }
            }
        }
        let vars = switch::vars_after_deploy(&self.config, &plan.vars, &spec.hosts, plan.to.number);
        for a in spec.hooks.after_deploy.iter().flatten() {
            vars.render(a)
                .map_err(|e| anyhow::anyhow!("after_deploy hook: {e}"))?;
        }
        Ok(())
    }

    /// The plan's hosts (the spec's, or the ones it is limited to), each configured and
    /// allowed for the repository.
    fn allowed_hosts(&self, plan: &Plan) -> anyhow::Result<Vec<String>> {
        let repo = self.config.repo(&plan.to.repo);
        for h in &plan.spec.hosts {
            if !self.config.hosts.contains_key(h) {
                bail!("deploy host {h:?} has no [host.{h}] entry in hoist.toml");
            }
            if !repo.is_some_and(|r| r.hosts.contains(h)) {
                bail!(
                    "repository {} may not deploy to host {h}; add it to hosts of its [[repo]] entry in hoist.toml",
                    plan.to.repo
                );
            }
        }
        Ok(match &plan.hosts {
            Some(only) => plan
                .spec
                .hosts
                .iter()
                .filter(|h| only.contains(h))
                .cloned()
                .collect(),
            None => plan.spec.hosts.clone(),
        })
    }

    /// Connect every host in parallel and read the release each serves as `name`.
    async fn connect(
        &self,
        hosts: &[String],
        name: &str,
    ) -> anyhow::Result<(BTreeMap<String, Docker>, BTreeMap<String, Option<i64>>)> {
        let connects = hosts.iter().map(|h| {
            let conf = self.config.hosts[h].clone();
            async move {
                let docker = crate::engine::connect(&conf.docker, conf.tls.as_ref())
                    .await
                    .with_context(|| format!("host {h} is unreachable; nothing was changed"))?;
                // What serves as `NAME` or `NAME-<i>` (a running one first): A's release.
                let mut serving: Vec<_> = host::members(&docker, name)
                    .await
                    .with_context(|| format!("host {h}"))?
                    .into_iter()
                    .filter(|m| m.slot == host::Slot::Serving)
                    .collect();
                serving.sort_by_key(|m| !m.running);
                let release = serving.first().and_then(|m| m.release);
                anyhow::Ok((h.clone(), docker, release))
            }
        });
        let mut engines = BTreeMap::new();
        let mut before = BTreeMap::new();
        for r in futures_util::future::join_all(connects).await {
            let (h, docker, release) = r?;
            engines.insert(h.clone(), docker);
            before.insert(h, release);
        }
        Ok((engines, before))
    }

    /// [`Deployer::run`], aborting the deployment if `cancel` fires first: the run whose
    /// deploy step this is was cancelled.
    pub async fn run_for(&self, s: Started, log: &LogSink, cancel: &CancellationToken) -> Verdict {
        let link = s.carried.as_ref().map(|c| {
            let (abort, cancel) = (c.abort.clone(), cancel.clone());
            let by = format!("{} (the run was cancelled)", s.plan.requested_by);
            tokio::spawn(async move {
                cancel.cancelled().await;
                abort.abort(&by);
            })
        });
        let verdict = self.run(s, log).await;
        if let Some(l) = link {
            l.abort();
        }
        verdict
    }

    /// Carry a started deployment to its verdict, logging progress to `log`.
    pub async fn run(&self, s: Started, log: &LogSink) -> Verdict {
        // Renew the lease while we act; losing it stops us (a stale holder must not act). An
        // abort stops us the same way: the token every wait selects on is the abort's child.
        let lost = match &s.carried {
            Some(c) => c.abort.token().child_token(),
            None => CancellationToken::new(),
        };
        // Aborted when dropped, so that even an unwinding panic stops the renewals: a renewer
        // left behind would keep the app locked for as long as the agent lives.
        let _renewer = AbortOnDrop(tokio::spawn(renew_lease(
            self.store.clone(),
            s.lease.clone(),
            lost.clone(),
            self.shutdown.clone(),
        )));
        let masker = &s.masker;
        let say = |m: String| {
            log.note(masker.mask_text(&m));
        };
        let verdict = match AssertUnwindSafe(self.drive(&s, &say, &lost))
            .catch_unwind()
            .await
        {
            Ok(verdict) => verdict,
            Err(panic) => {
                // Give the lease back with a verdict, so the app can be deployed again at once.
                let why = format!(
                    "hoist failed inside the deployment ({}); hosts are left as they are; this \
                     is a bug in hoist, please report it with the agent's log",
                    crate::queue::panic_text(&*panic)
                );
                say(format!("deployment {}: {why}", s.id()));
                self.finish(&s, DeploymentStatus::Failed, Some(why), None)
                    .await
            }
        };
        self.remove_own_checkout(s.plan.hooks_dir.as_deref());
        verdict
    }

    /// Forward, then the verdict: succeeded; or, on a failure, reverted (with `auto_rollback`),
    /// left as is (without), or left running for the next holder when the agent stops.
    async fn drive(&self, s: &Started, say: &impl Fn(String), lost: &CancellationToken) -> Verdict {
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
        let Failure { host, reason } = match self.forward(s, say, lost).await {
            Ok(()) => return self.succeeded(s, say).await,
            Err(f) => f,
        };
        if !self.shutdown.is_cancelled()
            && let Some(by) = s.aborted_by()
        {
            return self.aborted(s, &by, say).await;
        }
        say(format!(
            "deployment {d}: failed{}: {reason}",
            host.as_deref()
                .map(|h| format!(" on {h}"))
                .unwrap_or_default()
        ));
        if self.shutdown.is_cancelled() {
            // Resolved by whoever holds the lease next (the restarted agent's recovery).
            return self.left_running(s, reason, host);
        }
        if lost.is_cancelled()
            && let Some(v) = self.settle_lost(s, &reason, say).await
        {
            return v;
        }
        if !s.plan.spec.rollout.auto_rollback {
            say(format!(
                "deployment {d}: auto_rollback is off; hosts are left as they are"
            ));
            return self
                .finish(s, DeploymentStatus::Failed, Some(reason), host)
                .await;
        }
        match self.revert(s, say).await {
            Ok(()) => {
                say(format!(
                    "deployment {d}: rolled back; every touched host verified on its previous release"
                ));
                self.finish(s, DeploymentStatus::RolledBack, Some(reason), host)
                    .await
            }
            Err(e) => {
                let why = format!("{reason}; and the rollback failed too: {e:#}");
                say(format!("deployment {d}: {why}"));
                self.finish(s, DeploymentStatus::Failed, Some(why), host)
                    .await
            }
        }
    }

    /// Someone aborted the deployment: every touched host goes back on what it ran before,
    /// verified by read-back, whatever `auto_rollback` says.
    async fn aborted(&self, s: &Started, by: &str, say: &impl Fn(String)) -> Verdict {
        let d = s.id();
        say(format!(
            "deployment {d}: aborted by {by}; reverting every touched host"
        ));
        let reason = format!("aborted by {by}");
        // When the forward path stopped: what the abort's promptness is measured against.
        if let Err(e) = self
            .store
            .deployment_event(s.lease.clone(), "aborted".into(), Some(format!("by {by}")))
            .await
        {
            tracing::error!("cannot journal the abort of deployment {d}: {e:#}");
        }
        match self.revert(s, say).await {
            Ok(()) => {
                say(format!(
                    "deployment {d}: aborted; every touched host verified on its previous release"
                ));
                self.finish(s, DeploymentStatus::Aborted, Some(reason), None)
                    .await
            }
            Err(e) => {
                let why = format!("{reason}; and the revert failed: {e:#}");
                say(format!("deployment {d}: {why}"));
                self.finish(s, DeploymentStatus::Failed, Some(why), None)
                    .await
            }
        }
    }

    /// Record success, then prune what retention no longer keeps.
    async fn succeeded(&self, s: &Started, say: &impl Fn(String)) -> Verdict {
        let v = self
            .finish(s, DeploymentStatus::Succeeded, None, None)
            .await;
        say(format!(
            "deployment {}: succeeded; every host verified on release {} ({})",
            s.id(),
            s.plan.to.number,
            s.plan.to.manifest_digest
        ));
        self.prune(s, say).await;
        v
    }

    /// Record the verdict and give the lease back. A store that cannot write (disk full, I/O
    /// error) is waited out, so that the verdict lands as soon as it can: a deployment left
    /// `running` would be "recovered" at some later start, over whatever came after it.
    async fn finish(
        &self,
        s: &Started,
        status: DeploymentStatus,
        reason: Option<String>,
        failing_host: Option<String>,
    ) -> Verdict {
        let reason = reason.map(|r| s.masker.mask_text(&r));
        let mut wait = Duration::from_millis(250);
        loop {
            let e = match self
                .store
                .finish_deployment(
                    s.lease.clone(),
                    status,
                    reason.clone(),
                    failing_host.clone(),
                )
                .await
            {
                Ok(()) => break,
                Err(e) => e,
            };
            if e.downcast_ref::<LeaseLost>().is_some() {
                let why = reason.clone().unwrap_or_else(|| status.to_string());
                return self
                    .settle_lost(s, &why, &|_| {})
                    .await
                    .unwrap_or_else(|| self.left_running(s, why, failing_host));
            }
            tracing::error!(
                "cannot record the end of deployment {} (retrying in {wait:?}): {e:#}",
                s.id()
            );
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.shutdown.cancelled() => return self.left_running(s, reason.unwrap_or_default(), failing_host),
            }
            wait = (wait * 2).min(Duration::from_secs(10));
        }
        Verdict {
            deployment: s.lease.deployment,
            status,
            reason,
            failing_host,
        }
    }

    /// The verdict of a deployment the agent's shutdown cut off: still `running` in the
    /// journal, resolved by the next start's recovery.
    fn left_running(&self, s: &Started, reason: String, failing_host: Option<String>) -> Verdict {
        Verdict {
            deployment: s.id(),
            status: DeploymentStatus::Running,
            reason: Some(reason),
            failing_host,
        }
    }

    /// The lease renewals failed. `None` when the lease turns out to be still ours (the store
    /// could not write for a while): the deployment goes on to its verdict. Otherwise another
    /// deployment holds it, and this one is recorded `failed` at once, touching no host: what
    /// the new holder does stands. A store that cannot write is waited out.
    async fn settle_lost(
        &self,
        s: &Started,
        reason: &str,
        say: &impl Fn(String),
    ) -> Option<Verdict> {
        let d = s.id();
        let mut wait = Duration::from_millis(250);
        loop {
            match self
                .store
                .settle_lost(s.lease.clone(), s.masker.mask_text(reason))
                .await
            {
                Ok(Settled::StillHeld) => {
                    say(format!(
                        "deployment {d}: the store is writable again and the lease still ours"
                    ));
                    return None;
                }
                Ok(Settled::Abandoned { by }) => {
                    let by = by
                        .map(|b| format!(" to deployment {b}"))
                        .unwrap_or_default();
                    say(format!(
                        "deployment {d}: lost its lease{by}; recorded failed, hosts left to the new holder"
                    ));
                    return Some(Verdict {
                        deployment: d,
                        status: DeploymentStatus::Failed,
                        reason: Some(format!("{reason}; it lost its lease{by}")),
                        failing_host: None,
                    });
                }
                Err(e) => tracing::error!(
                    "deployment {d}: cannot tell whether the lease is still ours (retrying in {wait:?}): {e:#}"
                ),
            }
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.shutdown.cancelled() => return Some(self.left_running(s, reason.into(), None)),
            }
            wait = (wait * 2).min(Duration::from_secs(10));
        }
    }

    /// The forward path: pull, switch batch by batch, bake, `after_deploy`.
    async fn forward(
        &self,
        s: &Started,
        say: &impl Fn(String),
        lost: &CancellationToken,
    ) -> Result<(), Failure> {
        self.pull_all(s, say, lost).await?;
        let per_batch = s.plan.per_batch(s.hosts.len());
        for batch in s.hosts.chunks(per_batch) {
            let switches = batch.iter().map(|h| self.switch_host(s, h, say, lost));
            for r in futures_util::future::join_all(switches).await {
                r?;
            }
        }
        // The rollout's own time ends here; old containers may still be stopping.
        self.store
            .deployment_event(
                s.lease.clone(),
                "switched".into(),
                Some("every host".into()),
            )
            .await?;
        self.bake(s, say, lost).await?;
        if let Some(argv) = &s.plan.spec.hooks.after_deploy {
            let spec = &s.plan.spec;
            let vars = switch::vars_after_deploy(
                &self.config,
                &s.plan.vars,
                &spec.hosts,
                s.plan.to.number,
            );
            self.hook(s, "after_deploy", argv, &vars, say)
                .await
                .map_err(|e| Failure::general(format!("{e:#}")))?;
        }
        s.stops_done().await;
        Ok(())
    }

    /// Bake: every host keeps being checked for `rollout.bake`.
    async fn bake(
        &self,
        s: &Started,
        say: &impl Fn(String),
        lost: &CancellationToken,
    ) -> Result<(), Failure> {
        let bake = s.plan.spec.rollout.bake;
        if bake.is_zero() || s.plan.now {
            return Ok(());
        }
        let shown = humantime::format_duration(bake);
        say(format!("  bake: checking every host for {shown}"));
        self.store
            .deployment_event(s.lease.clone(), "bake".into(), Some(format!("for {shown}")))
            .await?;
        let end = Instant::now() + bake;
        let spec = &s.plan.spec;
        let names = host::replica_names(&spec.container.name, spec.container.replicas);
        // A restart during the bake is a crash; one before it (a kept container's earlier
        // life) is not.
        let mut restarts = BTreeMap::new();
        for h in &s.hosts {
            for n in &names {
                let count = health::restart_count(&s.engines[h], n).await;
                restarts.insert((h.as_str(), n.as_str()), count);
            }
        }
        while Instant::now() < end {
            for h in &s.hosts {
                let addr = &self.config.hosts[h].address;
                for n in &names {
                    let before = restarts[&(h.as_str(), n.as_str())];
                    health::check_since(&s.engines[h], n, addr, &spec.health, before)
                        .await
                        .map_err(|why| {
                            Failure::on(h, format!("{n} unhealthy during bake: {why}"))
                        })?;
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(s.plan.spec.health.interval) => {}
                _ = self.shutdown.cancelled() => return Err(Failure::general("the agent is stopping")),
                _ = lost.cancelled() => return Err(Failure::general("the lease was lost")),
            }
        }
        Ok(())
    }

    /// Put every touched host back on what it ran before, and prove it by read-back. The
    /// journal, not memory, says which hosts are touched: recovery after a crash walks it too.
    async fn revert(&self, s: &Started, say: &impl Fn(String)) -> anyhow::Result<()> {
        // Nothing may stop an old container once the revert has made it serve again.
        s.stops_done().await;
        let (_, journal, _) = self
            .store
            .deployment(s.lease.deployment)
            .await?
            .context("the deployment vanished from the store")?;
        let touched: Vec<_> = journal.into_iter().filter(|h| h.state.touched()).collect();
        let reverts = touched
            .iter()
            .map(|h| self.revert_host(s, &h.host, h.from_release, say));
        let mut errors = Vec::new();
        for (h, r) in touched
            .iter()
            .zip(futures_util::future::join_all(reverts).await)
        {
            if let Err(e) = r {
                errors.push(format!("{}: {e:#}", h.host));
                self.journal_revert_failed(s, &h.host, &e).await;
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            bail!(errors.join("; "))
        }
    }

    /// Best effort: the revert's error already goes into the verdict.
    async fn journal_revert_failed(&self, s: &Started, h: &str, e: &anyhow::Error) {
        let why = s.masker.mask_text(&format!("{e:#}"));
        let u = HostUpdate {
            state: Some(HostState::Failed),
            reason: Some(why.clone()),
            ..Default::default()
        };
        let _ = self
            .store
            .host_step(
                s.lease.clone(),
                h.to_string(),
                "revert failed".into(),
                Some(why),
                u,
            )
            .await;
    }

    /// Retention: keep B and the last `keep` good releases on every host; never a rollback target.
    async fn prune(&self, s: &Started, say: &impl Fn(String)) {
        let keep_n = s.plan.spec.rollout.keep as usize;
        let good = self
            .store
            .good_releases(s.plan.to.app.clone())
            .await
            .unwrap_or_default();
        let keep = retained(
            s.plan.to.number,
            keep_n,
            &good,
            s.before.values().flatten().copied(),
        );
        for h in &s.hosts {
            let name = &s.plan.spec.container.name;
            match host::prune(&s.engines[h], name, &s.plan.to.app, &keep).await {
                Ok(removed) if !removed.is_empty() => {
                    say(format!("  {h}: pruned {}", removed.join(", ")))
                }
                Ok(_) => {}
                Err(e) => say(format!("  {h}: could not prune old releases: {e:#}")),
            }
        }
    }

    /// At start: resolve the deployments a crash left running (`interrupted`, listed before
    /// the agent served anything, so that none this agent begins since is among them). If B
    /// had completed (every host verified on B), verify again and call it succeeded;
    /// otherwise revert every touched host. A deployment that a later one superseded is
    /// recorded failed and its hosts are left alone.
    pub async fn recover(
        &self,
        log: &LogSink,
        interrupted: Vec<Deployment>,
    ) -> anyhow::Result<Vec<Verdict>> {
        let masker = self.masker();
        let say = |m: String| {
            log.note(masker.mask_text(&m));
        };
        let mut out = Vec::new();
        for d in interrupted {
            let verdict = match self.reopen(&d).await {
                Ok(Some((started, journal))) => self.resolve(&started, &journal, &say).await,
                Ok(None) => continue,
                Err(e) => {
                    tracing::error!("cannot resolve interrupted deployment {}: {e:#}", d.id);
                    continue;
                }
            };
            tracing::warn!(
                deployment = d.id,
                status = verdict.status.as_str(),
                "interrupted deployment resolved"
            );
            out.push(verdict);
        }
        // The agent may have died between writing a balancer's file and reloading it, or
        // with a file that no longer matches what runs: every balancer is made true again.
        for (name, r) in super::balancer::reconcile_all(&self.store, &self.config).await {
            match r {
                Ok(o) => {
                    tracing::info!(balancer = %name, outcome = ?o, "balancer reconciled at start")
                }
                Err(e) => {
                    tracing::error!(balancer = %name, "balancer not reconciled at start: {e:#}")
                }
            }
        }
        Ok(out)
    }

    /// Take over an interrupted deployment's lease and rebuild what it acted with from the
    /// store: B's release and recorded spec, the journal's hosts, and fresh connections
    /// (an unreachable host is left out; its revert then fails, naming it). `None` when a
    /// later deployment superseded it (then recorded failed, hosts untouched).
    async fn reopen(
        &self,
        d: &Deployment,
    ) -> anyhow::Result<Option<(Started, Vec<DeploymentHost>)>> {
        let lease = match self
            .store
            .take_over_lease(d.app.clone(), d.id, LEASE_TTL.as_millis() as i64)
            .await?
        {
            TakeOver::Taken(lease) => lease,
            TakeOver::Superseded { by } => {
                tracing::warn!(
                    deployment = d.id,
                    "interrupted deployment superseded by deployment {by}: recorded failed, hosts left as {by} left them"
                );
                return Ok(None);
            }
        };
        let release = self
            .store
            .release(d.app.clone(), d.to_release)
            .await?
            .context("release missing")?;
        let spec = release
            .deploy
            .clone()
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
        let what = format!("container {}", spec.container.name);
        // Recovery only reverts (or verifies); a revert resolves A's own secrets.
        let secrets = self
            .config
            .secret_values(&release.repo, &spec.container.secrets, &what)
            .unwrap_or_default();
        let started = Started {
            secrets,
            masker: self.masker(),
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
                kind: d.kind,
                run: d.run,
                requested_by: d.requested_by.clone(),
                hooks_dir: None,
                now: false,
                hosts: None,
            },
            hosts: hosts.iter().map(|h| h.host.clone()).collect(),
            before: hosts
                .iter()
                .map(|h| (h.host.clone(), h.from_release))
                .collect(),
            engines,
            stops: Default::default(),
            carried: None,
        };
        Ok(Some((started, hosts)))
    }

    /// The verdict on a reopened deployment: succeeded if every host was verified on B and
    /// still runs it, else rolled back (or failed, when the revert fails).
    async fn resolve(
        &self,
        s: &Started,
        journal: &[DeploymentHost],
        say: &impl Fn(String),
    ) -> Verdict {
        let completed = journal.iter().all(|h| h.state == HostState::Verified);
        if completed && self.verify_all(s).await.is_ok() {
            // The agent may have died between writing the balancer's file and reloading it:
            // reload before the old containers it may still send to are stopped.
            if let Some(b) = &s.plan.spec.balancer {
                if let Err(e) =
                    super::balancer::reconcile(&self.store, &self.config, &b.name, true).await
                {
                    tracing::error!("recovery: balancer {}: {e:#}", b.name);
                }
                tokio::time::sleep(b.drain).await;
            }
            self.stop_stray_kept(s).await;
            say(format!(
                "deployment {}: had completed before the restart; verified again",
                s.id()
            ));
            let why = "completed before an agent restart; verified again at start";
            return self
                .finish(s, DeploymentStatus::Succeeded, Some(why.into()), None)
                .await;
        }
        let reason = "interrupted by an agent restart".to_string();
        match self.revert(s, say).await {
            Ok(()) => {
                self.stop_stray_kept(s).await;
                self.finish(s, DeploymentStatus::RolledBack, Some(reason), None)
                    .await
            }
            Err(e) => {
                let why = format!("{reason}; the rollback failed: {e:#}");
                self.finish(s, DeploymentStatus::Failed, Some(why), None)
                    .await
            }
        }
    }

    /// Old containers a restart left running under their kept names (the agent died before
    /// their stop, which runs off the critical path): stopped now, as the switch would have.
    async fn stop_stray_kept(&self, s: &Started) {
        let app = &s.plan.to.app;
        for h in &s.hosts {
            let Some(docker) = s.engines.get(h) else {
                continue;
            };
            let Ok(members) = host::members(docker, &s.plan.spec.container.name).await else {
                continue;
            };
            for m in members {
                if matches!(m.slot, host::Slot::Kept(_))
                    && m.running
                    && m.app.as_ref() == Some(app)
                    && let Err(e) = host::stop(docker, &m.name, app).await
                {
                    tracing::warn!("recovery: cannot stop {} on {h}: {e:#}", m.name);
                }
            }
        }
    }

    /// Every host reads back running B.
    async fn verify_all(&self, s: &Started) -> anyhow::Result<()> {
        let c = &s.plan.spec.container;
        for h in &s.hosts {
            let docker = s.engines.get(h).context("host unreachable")?;
            for n in host::replica_names(&c.name, c.replicas) {
                let rb = host::read_back(docker, &n, &s.plan.to.repository).await?;
                if rb.digest.as_deref() != Some(s.plan.to.manifest_digest.as_str()) || !rb.running {
                    bail!("{h} does not run {} as {n}", s.plan.to.manifest_digest);
                }
            }
        }
        Ok(())
    }
}

/// What retention keeps on the hosts after a deployment to release `to`: `to`, what the hosts
/// ran `before`, and the `keep` newest good releases older than `to`, chosen by release number
/// as the default rollback target is ([`super::older_good`]): the target is never pruned.
fn retained(
    to: i64,
    keep: usize,
    good: &[i64],
    before: impl IntoIterator<Item = i64>,
) -> BTreeSet<i64> {
    let mut kept: BTreeSet<i64> = super::older_good(good, to).into_iter().take(keep).collect();
    kept.insert(to);
    kept.extend(before);
    kept
}

/// Renew `lease` every third of its life until `stop`; a failed renewal cancels `lost`.
/// A task aborted when its handle is dropped (on return or while a panic unwinds).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn renew_lease(store: Store, lease: Lease, lost: CancellationToken, stop: CancellationToken) {
    let mut renewed = Instant::now();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(LEASE_TTL / 3) => {}
            _ = stop.cancelled() => return,
        }
        match store
            .renew_lease(lease.clone(), LEASE_TTL.as_millis() as i64)
            .await
        {
            Ok(()) => renewed = Instant::now(),
            Err(e) if e.downcast_ref::<LeaseLost>().is_some() => {
                tracing::error!("{e:#}");
                lost.cancel();
                return;
            }
            // The store cannot write (disk full, I/O error): keep trying. Past two thirds of
            // the lease's life another deployment may take it, so stop acting; the deployment
            // then asks the store, once it writes again, whether the lease is still its own.
            Err(e) => {
                tracing::error!(
                    "deployment {}: cannot renew its lease: {e:#}",
                    lease.deployment
                );
                if renewed.elapsed() >= LEASE_TTL * 2 / 3 {
                    lost.cancel();
                }
            }
        }
    }
}

/// "release 4", or "none" when the host ran nothing of the app.
fn release_text(release: Option<i64>) -> String {
    release.map_or("none".into(), |r| r.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::{Action, parse};

    /// A rollback plan of release 2 of `web`, whose deploy step names h1, h2, h3 in batches of one.
    fn plan() -> Plan {
        let p = parse(
            "app: web\nsteps:\n  - name: build\n    build:\n      repository: 10.0.0.1:5000/web\n\
             \x20 - name: ship\n    deploy:\n      image: build\n      hosts: [h1, h2, h3]\n      \
             container:\n        name: web\n      health: { docker: true }\n      rollout: { max_parallel: 1, bake: 5s }\n",
        )
        .unwrap_or_else(|e| panic!("{e:?}"));
        let spec = p
            .steps
            .iter()
            .find_map(|s| match &s.action {
                Action::Deploy(d) => Some(d.clone()),
                _ => None,
            })
            .unwrap();
        Plan {
            to: Release {
                app: "web".into(),
                number: 2,
                repo: "acme/web".into(),
                commit: "c".into(),
                run: 1,
                step: "build".into(),
                repository: "10.0.0.1:5000/web".into(),
                manifest_digest: "sha256:0".into(),
                config_digest: "sha256:1".into(),
                tags: vec![],
                deploy: Some(spec.clone()),
                created_at: String::new(),
            },
            spec,
            kind: DeploymentKind::Rollback,
            run: None,
            requested_by: "e2e".into(),
            hooks_dir: None,
            vars: Vars::default(),
            now: false,
            hosts: None,
        }
    }

    #[test]
    fn a_plan_limited_to_hosts_names_the_unknown_ones_and_now_is_one_batch() {
        let mut p = plan();
        assert_eq!(p.per_batch(3), 1);
        p.now = true;
        assert_eq!(p.per_batch(3), 3);

        let err = p
            .only_hosts(&["h1".into(), "h9".into(), "h8".into()])
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "app web has no host h9, h8; release 2 runs on h1, h2, h3"
        );
        assert_eq!(p.hosts, None);
        let err = p.only_hosts(&[]).unwrap_err().to_string();
        assert!(err.starts_with("no host named"), "{err}");

        p.only_hosts(&["h3".into(), "h1".into()]).unwrap();
        assert_eq!(p.hosts, Some(vec!["h3".to_string(), "h1".to_string()]));
        // ${hosts.*} still renders over the step's whole list.
        assert_eq!(p.spec.hosts, ["h1", "h2", "h3"]);
    }

    /// A deployment that panics (here: a host its plan names vanished from the config, so the
    /// switch's `config.hosts[host]` panics) still ends with a verdict and gives the lease
    /// back, so the app can be deployed again at once.
    #[test]
    fn retention_never_prunes_the_default_rollback_target() {
        // Deploy 10, roll back to 5, deploy 11 with keep: 1. Good releases, newest deployment
        // first: 11, 5, 10, 9, …; the default rollback target from 11 is 10.
        let good = [11, 5, 10, 9, 8];
        let target = super::super::older_good(&good, 11)[0];
        assert_eq!(target, 10);
        let kept = retained(11, 1, &good, [5]);
        assert!(kept.contains(&target), "{kept:?}");
        assert_eq!(kept, BTreeSet::from([5, 10, 11]));
        // keep: 0 keeps only what runs and what ran before.
        assert_eq!(retained(11, 0, &good, [10]), BTreeSet::from([10, 11]));
    }

    #[tokio::test]
    async fn a_panicking_deployment_gives_back_its_lease() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let text = format!("listen = \"127.0.0.1:0\"\ndata_dir = {:?}\n", dir.path());
        let config = Config::parse("hoist.toml", &text, &crate::config::System).unwrap();
        let yaml = "app: web\nsteps:\n  - name: image\n    build:\n      repository: r.example/acme/web\n  \
                    - name: deploy\n    deploy:\n      image: image\n      hosts: [ghost]\n      \
                    container: {name: web}\n      health: {tcp: 8080}\n";
        let pipeline = crate::pipeline::parse(yaml).unwrap();
        let Action::Deploy(spec) = pipeline.steps[1].action.clone() else {
            panic!("not a deploy step")
        };
        let to = Release {
            app: "web".into(),
            number: 1,
            repo: "acme/web".into(),
            commit: "a".repeat(40),
            run: 1,
            step: "deploy".into(),
            repository: "r.example/acme/web".into(),
            manifest_digest: format!("sha256:{}", "1".repeat(64)),
            config_digest: format!("sha256:{}", "2".repeat(64)),
            tags: vec![],
            deploy: Some(spec.clone()),
            created_at: String::new(),
        };
        let new = || NewDeployment {
            app: "web".into(),
            kind: DeploymentKind::Rollout,
            from_release: None,
            to_release: 1,
            run: None,
            requested_by: "test".into(),
            hosts: vec![("ghost".into(), 1)],
        };
        let lease = store
            .begin_deployment(new(), 30_000)
            .await
            .unwrap()
            .unwrap();
        // Connecting is lazy: nothing listens there, and nothing is asked before the panic.
        let docker =
            Docker::connect_with_http("http://127.0.0.1:9", 5, bollard::API_DEFAULT_VERSION)
                .unwrap();
        let deployer = Deployer::new(store.clone(), Arc::new(config), CancellationToken::new());
        let started = Started {
            lease,
            plan: Plan {
                to,
                spec,
                kind: DeploymentKind::Rollout,
                run: None,
                requested_by: "test".into(),
                hooks_dir: None,
                vars: Vars::default(),
                now: false,
                hosts: None,
            },
            hosts: vec!["ghost".into()],
            before: BTreeMap::from([("ghost".to_string(), None)]),
            engines: BTreeMap::from([("ghost".to_string(), docker)]),
            secrets: vec![],
            masker: deployer.masker(),
            stops: Default::default(),
            carried: None,
        };
        let (log, mut lines) = LogSink::channel();
        let verdict = deployer.run(started, &log).await;
        assert_eq!(verdict.status, DeploymentStatus::Failed);
        let reason = verdict.reason.unwrap_or_default();
        assert!(reason.contains("bug in hoist"), "{reason}");
        let mut said = String::new();
        while let Ok(line) = lines.try_recv() {
            said.push_str(&String::from_utf8_lossy(&line.into_bytes()));
        }
        assert!(said.contains("bug in hoist"), "{said}");
        assert!(
            store.begin_deployment(new(), 30_000).await.unwrap().is_ok(),
            "the app is still locked after the panic"
        );
    }
}
