//! One host's part of a deployment, as saga actions: each forward action beside its undo.
//!
//! | forward (+), switching A → B               | undo (−), reverting to A                     |
//! |--------------------------------------------|----------------------------------------------|
//! | pull B by digest, verified                 | nothing: what serves is untouched            |
//! | keep A: stop `NAME`, rename it `NAME-r<A>` | restore A: its kept container, or A afresh   |
//! | start B as `NAME`                          | remove B: whatever serves as `NAME` unless A |
//! | prove B: health, `after_host`, read back   | prove A: the same checks against A's release |
//! | record B as what the host runs             | record A (or nothing) instead                |
//!
//! The journal is written before the host is touched (`switching`) and after each step, so a
//! host's [`HostState`] bounds what it may have been through. Every undo looks at the engine
//! and does nothing where its action never happened; a revert therefore gives every touched
//! host every undo, newest first, and a revert that was itself interrupted is simply redone.

use anyhow::{Context, anyhow, bail};
use bollard::Docker;
use tokio_util::sync::CancellationToken;

use super::{Deployer, Failure, Started, release_text};
use crate::config::Config;
use crate::config::RegistryConfig;
use crate::deploy::health::{self, HealthReport, Unhealthy};
use crate::deploy::{balancer, host};
use crate::image;
use crate::pipeline::{
    BalancerSpec, ContainerSpec, DeploySpec, Fleet, FleetHost, HealthSpec, Vars,
};
use crate::store::{HostState, HostUpdate, Release};

impl Deployer {
    /// Pull B by digest on every host, in parallel, before anything is stopped; journal each
    /// pull in host order. `lost` (an abort, a lost lease) stops the pulls where they are:
    /// nothing that serves was touched yet.
    pub(super) async fn pull_all(
        &self,
        s: &Started,
        say: &impl Fn(String),
        lost: &CancellationToken,
    ) -> Result<(), Failure> {
        let b = &s.plan.to;
        let hosts = s
            .hosts
            .iter()
            .map(|h| OnHost::new(self, s, h))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let pulls = tokio::select! {
            p = futures_util::future::join_all(hosts.iter().map(OnHost::pull_b)) => p,
            _ = lost.cancelled() => return Err(Failure::general("stopped while pulling")),
        };
        for (on, pulled) in hosts.iter().zip(pulls) {
            let h = on.host;
            let id = pulled.map_err(|e| {
                Failure::on(
                    h,
                    format!("pull failed before anything on the host was stopped: {e:#}"),
                )
            })?;
            let expected = HostUpdate {
                expected: Some(b.manifest_digest.clone()),
                ..Default::default()
            };
            let detail = format!("{} (image {id})", b.image());
            on.journal(HostState::Pulled, detail, expected).await?;
            say(format!("  {h}: pulled {} and verified", b.manifest_digest));
        }
        Ok(())
    }

    /// Switch host `h` from A to B and prove it: the forward actions in order, each journaled.
    ///
    /// Where ports allow (engine-picked, none fixed), B starts beside A: A's containers are
    /// renamed to their kept names but go on serving until B is proved and in the balancer;
    /// then they leave it, and are stopped after `drain` off the critical path ([`Started`]'s
    /// pending stops, awaited before the deployment ends). With fixed ports A stops first.
    pub(super) async fn switch_host(
        &self,
        s: &Started,
        h: &str,
        say: &impl Fn(String),
        lost: &CancellationToken,
    ) -> Result<(), Failure> {
        if self.shutdown.is_cancelled() || lost.is_cancelled() {
            return Err(Failure::general("the agent is stopping"));
        }
        let on = OnHost::new(self, s, h)?;
        let b = &s.plan.to;
        let spec = &s.plan.spec;
        let hooks = &spec.hooks;
        let fail = |e: anyhow::Error| Failure::on(h, format!("{e:#}"));
        let vars = vars_for(&self.config, &s.plan.vars, &spec.hosts, h, b.number);
        let before = s.before.get(h).copied().flatten();
        let from = HostUpdate {
            from_release: Some(before),
            ..Default::default()
        };
        let detail = format!("from release {}", release_text(before));
        on.journal(HostState::Switching, detail, from).await?;
        if let Some(argv) = &hooks.before_host {
            self.hook(s, "before_host", argv, &vars, say)
                .await
                .map_err(fail)?;
        }
        let container = render_container(&spec.container, &vars).map_err(fail)?;
        let overlap = spec.container.ports_allow_overlap();
        let old = on.keep_a(overlap).await.map_err(fail)?;
        let (names, how) = if s.plan.now {
            on.start_kept_b(&container).await.map_err(fail)?
        } else {
            (on.start_b(&container).await.map_err(fail)?, "")
        };
        let detail = format!("{}{how} as {}", b.image(), on.describe(&names).await);
        on.journal(HostState::Started, detail, HostUpdate::default())
            .await?;
        let report = on
            .healthy(&names, &spec.health, lost)
            .await
            .map_err(|why| Failure::on(h, format!("unhealthy: {why}")))?;
        let healthy = HostUpdate {
            health: Some("healthy".into()),
            ..Default::default()
        };
        let detail = format!("{} checks in {:?}", report.checks, report.took);
        on.journal(HostState::Healthy, detail, healthy).await?;
        if let Some(argv) = &hooks.after_host {
            self.hook(s, "after_host", argv, &vars, say)
                .await
                .map_err(fail)?;
        }
        let got = on.prove(b, &names).await.map_err(fail)?;
        let read_back = HostUpdate {
            read_back: Some(got.clone()),
            ..Default::default()
        };
        on.journal(HostState::Verified, format!("runs {got}"), read_back)
            .await?;
        on.record(Some(b.number), Some(got.clone())).await?;
        if let Some(bal) = &spec.balancer {
            on.join_balancer(bal).await.map_err(fail)?;
        }
        if !old.is_empty() {
            let drain = spec
                .balancer
                .as_ref()
                .map_or(std::time::Duration::ZERO, |b| b.drain);
            s.stop_later(self, h, old, drain);
        }
        say(format!(
            "  {h}: release {} healthy and verified ({got})",
            b.number
        ));
        Ok(())
    }

    /// Put host `h` back on release `to`, what it ran before (None: nothing), and prove it:
    /// the undos newest first, then A checked the way B was. Where ports allow, A serves again
    /// before B leaves (B is set aside running, A restored, proved, put in the balancer, and
    /// only then B is removed).
    pub(super) async fn revert_host(
        &self,
        s: &Started,
        h: &str,
        to: Option<i64>,
        say: &impl Fn(String),
    ) -> anyhow::Result<()> {
        let on = OnHost::new(self, s, h)?;
        let hooks = &s.plan.spec.hooks;
        let detail = format!("to release {}", release_text(to));
        on.journal(HostState::Reverting, detail, HostUpdate::default())
            .await?;
        // A's release record: its image and the container settings it was deployed with.
        let a = match to {
            Some(n) => Some(
                self.store
                    .release(s.plan.to.app.clone(), n)
                    .await?
                    .with_context(|| {
                        format!("release {n} of {} is not in the store", s.plan.to.app)
                    })?,
            ),
            None => None,
        };
        // A's container is rendered over A's own hosts, as when A was deployed.
        let fleet = a
            .as_ref()
            .and_then(|a| a.deploy.as_ref())
            .map_or(&s.plan.spec.hosts, |spec| &spec.hosts);
        let vars = vars_for(&self.config, &s.plan.vars, fleet, h, to.unwrap_or(0));
        if let Some(argv) = &hooks.before_host {
            self.hook(s, "before_host", argv, &vars, say).await?;
        }
        let a_spec = a.as_ref().and_then(|a| a.deploy.as_ref());
        // Both releases' ports must allow two containers at once for B to serve on meanwhile.
        let overlap = s.plan.spec.container.ports_allow_overlap()
            && a_spec.is_some_and(|sp| sp.container.ports_allow_overlap());
        let aside = on.set_aside_b(to, overlap).await?;
        let Some(a) = a else {
            on.remove_all(&aside).await?;
            return on.reverted_to_nothing(say).await;
        };
        let a_spec = a
            .deploy
            .as_ref()
            .with_context(|| format!("release {} has no recorded deploy spec", a.number))?;
        // A afresh gets its secrets' current values, never stored ones.
        let what = format!("container {}", a_spec.container.name);
        let secrets = self
            .config
            .secret_values(&a.repo, &a_spec.container.secrets, &what)?;
        let names = on.restore_a(&a, a_spec, &vars, &secrets).await?;
        let health = on
            .healthy(&names, &a_spec.health, &CancellationToken::new())
            .await
            .map_err(|why| anyhow!("release {} is not healthy again: {why}", a.number))?;
        if let Some(argv) = &hooks.after_host {
            self.hook(s, "after_host", argv, &vars, say).await?;
        }
        let got = on.prove(&a, &names).await?;
        on.record(Some(a.number), Some(got.clone())).await?;
        if let Some(bal) = a_spec.balancer.as_ref().or(s.plan.spec.balancer.as_ref()) {
            on.join_balancer(bal).await?;
            if !aside.is_empty() {
                tokio::time::sleep(bal.drain).await;
            }
        }
        on.remove_all(&aside).await?;
        let read_back = HostUpdate {
            read_back: Some(got.clone()),
            ..Default::default()
        };
        // The revert's own health time, to the millisecond: what an abort's revert is held to.
        let took = std::time::Duration::from_millis(health.took.as_millis() as u64);
        let detail = format!(
            "runs release {} ({got}); healthy in {}, {} checks",
            a.number,
            humantime::format_duration(took),
            health.checks
        );
        on.journal(HostState::Reverted, detail, read_back).await?;
        say(format!(
            "  {h}: back on release {} and verified ({got})",
            a.number
        ));
        Ok(())
    }
}

/// One host of a started deployment: its engine and address, and the journal it writes to.
struct OnHost<'a> {
    d: &'a Deployer,
    s: &'a Started,
    host: &'a str,
    docker: &'a Docker,
    /// The host's address from the config, which health probes go to.
    address: &'a str,
    /// The container name `NAME` of the step: A's and B's replicas serve as `NAME` or
    /// `NAME-<i>`, kept ones are `NAME[-<i>]-r<release>`.
    name: &'a str,
    /// The app: every action on the host refuses a container labelled with another.
    app: &'a str,
}

impl<'a> OnHost<'a> {
    fn new(d: &'a Deployer, s: &'a Started, host: &'a str) -> anyhow::Result<OnHost<'a>> {
        Ok(OnHost {
            d,
            s,
            host,
            docker: s.engines.get(host).context("no connection to the host")?,
            address: &d.config.hosts[host].address,
            name: &s.plan.spec.container.name,
            app: &s.plan.to.app,
        })
    }

    /// The `[[registry]]` entry a release's image is pulled with (matched by registry host).
    fn registry(&self, release: &Release) -> Option<&'a RegistryConfig> {
        image::registry_for(&self.d.config.registries, &release.image())
    }

    // pull B -----------------------------------------------------------------------------

    /// (+) Pull B by digest and verify what arrived, and make sure its network exists; returns
    /// the local image ID. (−) Nothing: what serves is untouched, and retention prunes the
    /// image later (a network is left: other containers may use it).
    async fn pull_b(&self) -> anyhow::Result<String> {
        let b = &self.s.plan.to;
        let id = host::pull(
            self.docker,
            &b.image(),
            &b.manifest_digest,
            self.registry(b),
        )
        .await?;
        // The network too, before anything serving is stopped (B's start would make it anyway).
        if let Some(network) = &self.s.plan.spec.container.network {
            host::ensure_network(self.docker, network).await?;
        }
        Ok(id)
    }

    // keep A -----------------------------------------------------------------------------

    /// (+) Keep A's serving containers under their kept names `NAME[-<i>]-r<A>`. With
    /// `overlap` they go on running (B starts beside them); returns those, to stop later.
    /// Without, each is stopped first: A and B publish the same fixed host ports.
    async fn keep_a(&self, overlap: bool) -> anyhow::Result<Vec<String>> {
        let mut running = Vec::new();
        for m in host::members(self.docker, self.name).await? {
            if m.slot != host::Slot::Serving {
                continue;
            }
            let kept = host::keep_current(self.docker, &m.name, self.app, overlap)
                .await
                .with_context(|| format!("cannot keep the running container {}", m.name))?;
            if let (true, true, Some(k)) = (overlap, m.running, kept) {
                running.push(k);
            }
        }
        Ok(running)
    }

    /// (−) Serve A again on each of its replica names: its kept container (with its old
    /// settings, still running after a gapless switch), or A afresh by digest from its release
    /// record when that is gone. Nothing to do for a replica that A still serves as. Returns
    /// A's serving names.
    async fn restore_a(
        &self,
        a: &Release,
        a_spec: &DeploySpec,
        vars: &Vars,
        secrets: &[(String, String)],
    ) -> anyhow::Result<Vec<String>> {
        let names = host::replica_names(self.name, a_spec.container.replicas);
        for name in &names {
            let serving = host::current(self.docker, name).await?.is_some_and(|c| {
                c.running && c.release == Some(a.number) && c.app.as_deref() == Some(self.app)
            });
            if serving {
                continue;
            }
            // A kept A made with a secret's earlier value gives way to A afresh with today's.
            let kept = host::kept_name(name, a.number);
            if !host::env_has(self.docker, &kept, secrets).await? {
                host::remove(self.docker, &kept, self.app).await?;
            }
            if host::restore_kept(self.docker, name, self.app, a.number).await? {
                continue;
            }
            host::pull(
                self.docker,
                &a.image(),
                &a.manifest_digest,
                self.registry(a),
            )
            .await?;
            let mut container = render_container(&a_spec.container, vars)?;
            container.name = name.clone();
            self.start(a, &container, secrets).await?;
        }
        Ok(names)
    }

    // start B ----------------------------------------------------------------------------

    /// (+) Start B's replicas as `NAME` (or `NAME-1` … `NAME-N`); returns their names.
    async fn start_b(&self, container: &ContainerSpec) -> anyhow::Result<Vec<String>> {
        let b = &self.s.plan.to;
        let names = host::replica_names(self.name, container.replicas);
        for name in &names {
            let mut one = container.clone();
            one.name = name.clone();
            self.start(b, &one, &self.s.secrets)
                .await
                .with_context(|| format!("cannot start release {} as {name}", b.number))?;
        }
        Ok(names)
    }

    /// (+) For an instant rollback: start B from its kept containers `NAME[-<i>]-r<B>` (made
    /// when B last served here, with the settings it ran with), B afresh by digest for a
    /// replica whose kept container was pruned or holds a secret's earlier value. Returns the
    /// names and, for the journal, where B came from.
    async fn start_kept_b(
        &self,
        container: &ContainerSpec,
    ) -> anyhow::Result<(Vec<String>, &'static str)> {
        let b = &self.s.plan.to;
        let names = host::replica_names(self.name, container.replicas);
        let mut fresh = 0;
        for name in &names {
            let kept = host::kept_name(name, b.number);
            if !host::env_has(self.docker, &kept, &self.s.secrets).await? {
                host::remove(self.docker, &kept, self.app).await?;
            }
            if host::restore_kept(self.docker, name, self.app, b.number).await? {
                continue;
            }
            fresh += 1;
            let mut one = container.clone();
            one.name = name.clone();
            self.start(b, &one, &self.s.secrets)
                .await
                .with_context(|| format!("cannot start release {} as {name}", b.number))?;
        }
        let how = match fresh {
            0 => " (its kept container)",
            n if n == names.len() => " (afresh: no kept container)",
            _ => " (kept containers, some afresh)",
        };
        Ok((names, how))
    }

    /// (−) Take away whatever serves that is not A running (B, a half-started B): with
    /// `overlap` a running one is set aside under its kept name and returned (removed once A
    /// serves again); the rest is removed now. `a` is A's release; None when the host ran
    /// nothing of the app.
    async fn set_aside_b(&self, a: Option<i64>, overlap: bool) -> anyhow::Result<Vec<String>> {
        let mut aside = Vec::new();
        for m in host::members(self.docker, self.name).await? {
            if m.slot != host::Slot::Serving || (m.release == a && m.running && a.is_some()) {
                continue;
            }
            if overlap && m.running && m.release.is_some() {
                if let Some(k) = host::keep_current(self.docker, &m.name, self.app, true).await? {
                    aside.push(k);
                }
            } else {
                host::remove(self.docker, &m.name, self.app).await?;
            }
        }
        Ok(aside)
    }

    /// (−) Remove the containers `names` (B's, set aside).
    async fn remove_all(&self, names: &[String]) -> anyhow::Result<()> {
        for n in names {
            host::remove(self.docker, n, self.app).await?;
        }
        Ok(())
    }

    /// Start `release` as `container.name` with `container` (rendered for this host) and the
    /// values of its secrets.
    async fn start(
        &self,
        release: &Release,
        container: &ContainerSpec,
        secrets: &[(String, String)],
    ) -> anyhow::Result<()> {
        let target = host::Target {
            app: &release.app,
            release: release.number,
            commit: &release.commit,
            image: &release.image(),
            digest: &release.manifest_digest,
            container,
            secrets,
        };
        host::start(self.docker, &target).await?;
        Ok(())
    }

    /// The containers `names` with the host ports the engine published them on, for the
    /// journal: `web-1 (8080/tcp on 10.203.0.11:49153), web-2 (…)`.
    async fn describe(&self, names: &[String]) -> String {
        let mut parts = Vec::new();
        for n in names {
            let ports = host::ports_of(self.docker, n).await.unwrap_or_default();
            if ports.is_empty() {
                parts.push(n.clone());
            } else {
                let p: Vec<String> = ports
                    .iter()
                    .map(|(k, v)| format!("{k} on {}:{v}", self.address))
                    .collect();
                parts.push(format!("{n} ({})", p.join(", ")));
            }
        }
        parts.join(", ")
    }

    // prove ------------------------------------------------------------------------------

    /// Health of the containers `names` (B's replicas on the way forward, A's in the undo),
    /// all at once; the report counts every check and the longest wait.
    async fn healthy(
        &self,
        names: &[String],
        spec: &HealthSpec,
        cancel: &CancellationToken,
    ) -> Result<HealthReport, Unhealthy> {
        let waits = names
            .iter()
            .map(|n| health::wait_healthy(self.docker, n, self.address, spec, cancel));
        let mut report = HealthReport {
            checks: 0,
            took: std::time::Duration::ZERO,
        };
        for (n, r) in names
            .iter()
            .zip(futures_util::future::join_all(waits).await)
        {
            let r = r.map_err(|why| {
                if names.len() > 1 {
                    Unhealthy::new(format!("{n}: {why}"))
                } else {
                    why
                }
            })?;
            report.checks += r.checks;
            report.took = report.took.max(r.took);
        }
        Ok(report)
    }

    /// (+) Read back that each of `names` runs `release`'s digest; returns it. The same check
    /// proves B on the way forward and A in the undo.
    async fn prove(&self, release: &Release, names: &[String]) -> anyhow::Result<String> {
        for name in names {
            let rb = host::read_back(self.docker, name, &release.repository)
                .await
                .context("read-back failed")?;
            let got = rb.digest.unwrap_or_default();
            if got != release.manifest_digest || !rb.running {
                bail!(
                    "read-back mismatch: {name} on the host runs {} (running: {}) but release {} is {}",
                    if got.is_empty() {
                        "an image without a registry digest"
                    } else {
                        &got
                    },
                    rb.running,
                    release.number,
                    release.manifest_digest
                );
            }
        }
        Ok(release.manifest_digest.clone())
    }

    /// The balancer learns what the host runs now (the store's record, read back from the
    /// engines), then `check` is asked through it. Journaled as the host's `balanced` step.
    async fn join_balancer(&self, bal: &BalancerSpec) -> anyhow::Result<()> {
        let outcome = balancer::reconcile(&self.d.store, &self.d.config, &bal.name, false).await?;
        if let Some(path) = &bal.check {
            balancer::check(&self.d.config, &bal.name, path).await?;
        }
        let detail = match outcome {
            balancer::Outcome::Unchanged => format!("balancer {}: file unchanged", bal.name),
            balancer::Outcome::Reloaded { servers } => {
                format!(
                    "balancer {}: {servers} servers, tested and reloaded",
                    bal.name
                )
            }
        };
        self.d
            .store
            .host_step(
                self.s.lease.clone(),
                self.host.to_string(),
                "balanced".into(),
                Some(detail),
                HostUpdate::default(),
            )
            .await
    }

    // record -----------------------------------------------------------------------------

    /// (+) Record B as what the host was verified to run; (−) record A instead (or nothing).
    async fn record(&self, release: Option<i64>, digest: Option<String>) -> anyhow::Result<()> {
        self.d
            .store
            .set_app_host(self.s.lease.clone(), self.host.to_string(), release, digest)
            .await
    }

    /// (−) The whole undo for a host that ran nothing of the app before: with B removed, nothing
    /// runs, and that is recorded.
    async fn reverted_to_nothing(&self, say: &impl Fn(String)) -> anyhow::Result<()> {
        self.record(None, None).await?;
        let detail = "no earlier release; the container was removed".to_string();
        self.journal(HostState::Reverted, detail, HostUpdate::default())
            .await?;
        say(format!(
            "  {}: reverted (no earlier release: nothing runs)",
            self.host
        ));
        Ok(())
    }

    /// Journal that the host reached `state`: the step is named after the state.
    async fn journal(&self, state: HostState, detail: String, u: HostUpdate) -> anyhow::Result<()> {
        let detail = self.s.masker.mask_text(&detail);
        let u = HostUpdate {
            state: Some(state),
            ..u
        };
        self.d
            .store
            .host_step(
                self.s.lease.clone(),
                self.host.to_string(),
                state.as_str().to_string(),
                Some(detail),
                u,
            )
            .await
    }
}

/// The placeholder values for host `h` and `release`: `base` (commit, branch, …) with the
/// host, and the deploy step's `hosts` (in its order) for `${host.*}` and `${hosts.*}`.
pub(super) fn vars_for(
    config: &Config,
    base: &Vars,
    hosts: &[String],
    h: &str,
    release: i64,
) -> Vars {
    let one = |name: &str| {
        let conf = config.hosts.get(name);
        FleetHost {
            name: name.to_string(),
            address: conf.map(|c| c.address.clone()).unwrap_or_default(),
            vars: conf.map(|c| c.vars.clone()).unwrap_or_default(),
        }
    };
    let mut v = base.clone();
    v.host = Some(h.to_string());
    v.release = Some(release as u64);
    v.fleet = Some(Fleet {
        this: Some(one(h)),
        all: hosts.iter().map(|n| one(n)).collect(),
    });
    v
}

/// The placeholder values of `after_deploy`: `base` with `release`, and the step's `hosts`
/// for `${hosts.*}` (no one host: `${host}` and `${host.*}` are "").
pub(super) fn vars_after_deploy(
    config: &Config,
    base: &Vars,
    hosts: &[String],
    release: i64,
) -> Vars {
    let mut v = vars_for(config, base, hosts, "", release);
    v.host = base.host.clone();
    if let Some(f) = v.fleet.as_mut() {
        f.this = None;
    }
    v
}

/// Fill placeholders in the declarative container fields for one host.
pub fn render_container(c: &ContainerSpec, vars: &Vars) -> anyhow::Result<ContainerSpec> {
    let r = |s: &String| vars.render(s).map_err(|e| anyhow!(e));
    let list = |l: &[String]| l.iter().map(r).collect::<anyhow::Result<Vec<_>>>();
    Ok(ContainerSpec {
        name: c.name.clone(),
        ports: list(&c.ports)?,
        env: c
            .env
            .iter()
            .map(|(k, v)| Ok((k.clone(), r(v)?)))
            .collect::<anyhow::Result<_>>()?,
        args: list(&c.args)?,
        volumes: list(&c.volumes)?,
        entrypoint: c.entrypoint.as_deref().map(list).transpose()?,
        hostname: c.hostname.as_ref().map(r).transpose()?,
        labels: c
            .labels
            .iter()
            .map(|(k, v)| Ok((k.clone(), r(v)?)))
            .collect::<anyhow::Result<_>>()?,
        ..c.clone()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SecretSource;
    use std::path::Path;

    struct NoSecrets;
    impl SecretSource for NoSecrets {
        fn env(&self, _: &str) -> Option<String> {
            None
        }
        fn file(&self, _: &Path) -> std::io::Result<String> {
            Err(std::io::ErrorKind::NotFound.into())
        }
    }

    fn config() -> Config {
        let text = "[host.a]\ndocker = \"unix:///a.sock\"\naddress = \"10.0.0.1\"\nvars = { id = \"n-a\", peer = \"10.0.0.1:7000\" }\n\
                    [host.b]\ndocker = \"unix:///b.sock\"\naddress = \"10.0.0.2\"\nvars = { id = \"n-b\" }\n";
        Config::parse("hoist.toml", text, &NoSecrets).unwrap()
    }

    #[test]
    fn per_host_fields_follow_the_steps_host_order_and_name_a_missing_key() {
        let config = config();
        let hosts = vec!["b".to_string(), "a".to_string()];
        let spec = ContainerSpec {
            name: "web".into(),
            env: [
                ("ID".to_string(), "${host.id}".to_string()),
                (
                    "ALL".to_string(),
                    "${hosts.name}@${hosts.address}".to_string(),
                ),
            ]
            .into(),
            args: vec!["--me=${host.address}".into()],
            hostname: Some("${host}-${release}".into()),
            ..ContainerSpec::default()
        };
        let vars = vars_for(&config, &Vars::default(), &hosts, "a", 7);
        let c = render_container(&spec, &vars).unwrap();
        assert_eq!(c.env["ID"], "n-a");
        assert_eq!(c.env["ALL"], "b,a@10.0.0.2,10.0.0.1");
        assert_eq!(c.args, ["--me=10.0.0.1"]);
        assert_eq!(c.hostname.as_deref(), Some("a-7"));

        let peers = ContainerSpec {
            env: [("SEEDS".to_string(), "${hosts.peer}".to_string())].into(),
            ..spec
        };
        let after = vars_after_deploy(&config, &Vars::default(), &hosts, 7);
        assert_eq!(
            after
                .render("${hosts.name} [${host}${host.id}] ${release}")
                .unwrap(),
            "b,a [] 7"
        );
        let err = render_container(&peers, &vars).unwrap_err().to_string();
        assert_eq!(
            err,
            "host b has no `peer` in its vars, which \"${hosts.peer}\" uses; add peer = \"…\" to vars of [host.b] in hoist.toml"
        );
    }
}
