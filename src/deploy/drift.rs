//! The drift watch: every `[runner] watch_interval`, read back every app's hosts and compare
//! them with what hoist left there (the release each host was last verified running, from
//! `app_hosts`, with that release's container settings).
//!
//! A host drifts when one of its serving containers (`NAME`, or `NAME-1` … `NAME-N`) is
//! missing, stopped, restarting, running another digest than the release, or unhealthy by
//! the release's own health check (three failed checks in a row, `health.interval` apart); an engine that cannot be reached is drift too, with the
//! connection's error as the reason, and never stops the watch. The finding goes to the store
//! (`Store::set_drift`), which writes a `host.drifted` notification only when it changed.
//!
//! The watch is a timer that reads and reports; it acts only through the deploy engine. With
//! `rollout.repair: true` in the release's deploy spec, a drifted host is brought back by a
//! deployment of kind `repair` limited to that host: the same journal, lease, health checks
//! and read-back as any rollout. The next tick then finds the host as hoist left it and clears
//! the drift. A repair is tried once per distinct finding (a host, a reason) while this agent
//! runs: a repair that fails is not retried every tick; a new reason, a restart or a deploy
//! tries again. An app whose lease a deployment holds is skipped: its hosts are changing on
//! purpose.
//!
//! Invariant: the watch never stops, renames or starts a container itself.

use std::collections::BTreeSet;
use std::sync::Arc;

use anyhow::Context;
use bollard::Docker;

use super::{deployment::Deployer, health, host};
use crate::config::HostConfig;
use crate::pipeline::DeploySpec;
use crate::queue::Queue;
use crate::store::{AppHost, DeploymentKind, DriftChange, Release};

/// Who a repair deployment says asked for it.
pub const REPAIRED_BY: &str = "drift watch";

/// Watch until shutdown (not at all when `watch_interval` is 0s).
pub async fn watch_forever(q: Arc<Queue>) {
    let every = q.config.runner.watch_interval;
    if every.is_zero() {
        return;
    }
    // (app, host, reason) a repair was started for: one try per finding.
    let mut tried = BTreeSet::new();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = q.shutdown.cancelled() => return,
        }
        let apps = match q.store.apps().await {
            Ok(apps) => apps,
            Err(e) => {
                tracing::warn!("drift watch: cannot list the apps: {e:#}");
                continue;
            }
        };
        for app in apps {
            if let Err(e) = watch_app(&q, &app.app, &mut tried).await {
                tracing::warn!(app = app.app, "drift watch: {e:#}");
            }
        }
    }
}

/// One look at one app's hosts: record each host's finding, and start the repairs owed.
async fn watch_app(
    q: &Arc<Queue>,
    app: &str,
    tried: &mut BTreeSet<(String, String, String)>,
) -> anyhow::Result<()> {
    if q.store.lease_holder(app.to_string()).await?.is_some() {
        return Ok(());
    }
    let hosts = q.store.app_hosts(app.to_string()).await?;
    let mut releases: Vec<Option<Release>> = Vec::new();
    for h in &hosts {
        releases.push(match h.release {
            Some(n) => q.store.release(app.to_string(), n).await?,
            None => None,
        });
    }
    let looks = hosts
        .iter()
        .zip(&releases)
        .map(|(h, r)| look(q.config.hosts.get(&h.host), h, r.as_ref()));
    let found = futures_util::future::join_all(looks).await;
    // A deployment that began while we looked may have changed these hosts on purpose.
    if q.store.lease_holder(app.to_string()).await?.is_some() {
        return Ok(());
    }
    let masker =
        crate::runner::Masker::new(q.config.secrets.values().map(|v| v.expose().to_string()));
    // One repair at a time per app (it holds the app's lease); the others wait for a tick.
    let mut repairing = false;
    for ((h, release), finding) in hosts.iter().zip(&releases).zip(found) {
        let reason = finding.map(|r| masker.mask_text(&r));
        let change = q
            .store
            .set_drift(app.to_string(), h.host.clone(), h.release, reason.clone())
            .await?;
        match change {
            DriftChange::Appeared | DriftChange::Changed => {
                tracing::warn!(app, host = h.host, reason, "host drifted")
            }
            DriftChange::Cleared => tracing::info!(app, host = h.host, "drift cleared"),
            DriftChange::Unchanged => {}
        }
        let Some(reason) = reason else {
            tried.retain(|(a, host, _)| !(a == app && *host == h.host));
            continue;
        };
        let repair = release
            .as_ref()
            .and_then(|r| r.deploy.as_ref())
            .is_some_and(|d| d.rollout.repair);
        // An engine that cannot be reached cannot be repaired; it is tried once it answers.
        if !repair || repairing || reason.starts_with(UNREACHABLE) {
            continue;
        }
        if tried.insert((app.to_string(), h.host.clone(), reason.clone())) {
            repairing = true;
            if let Err(e) = repair_host(q, app, h, &reason).await {
                tracing::warn!(app, host = h.host, "drift watch: cannot repair: {e:#}");
            }
        }
    }
    Ok(())
}

/// How the reason of an engine that cannot be reached starts.
const UNREACHABLE: &str = "engine unreachable";

/// What host `h` runs compared with what hoist left there: None when it is as hoist left it
/// (or hoist left nothing, or no release record says what to expect), else why not.
async fn look(conf: Option<&HostConfig>, h: &AppHost, release: Option<&Release>) -> Option<String> {
    let (Some(conf), Some(release)) = (conf, release) else {
        return None;
    };
    let spec = release.deploy.as_ref()?;
    let expected = h.digest.as_deref().unwrap_or(&release.manifest_digest);
    let looked = async {
        let docker = crate::engine::connect(&conf.docker, conf.tls.as_ref()).await?;
        look_at(&docker, &conf.address, spec, release, expected).await
    };
    match tokio::time::timeout(LOOK_DEADLINE, looked).await {
        Ok(Ok(found)) => found,
        Ok(Err(e)) => Some(format!("{UNREACHABLE}: {e:#}")),
        Err(_) => Some(format!(
            "{UNREACHABLE}: no answer within {}s",
            LOOK_DEADLINE.as_secs()
        )),
    }
}

/// How long one look at one host may take: an engine behind a cut network must not hold up
/// the watch of every other app until TCP gives up.
const LOOK_DEADLINE: std::time::Duration = std::time::Duration::from_secs(10);

/// Each serving container of the release on one engine, in replica order; the first that is
/// not as hoist left it gives the reason (prefixed with its name when there are several).
async fn look_at(
    docker: &Docker,
    address: &str,
    spec: &DeploySpec,
    release: &Release,
    expected: &str,
) -> anyhow::Result<Option<String>> {
    let c = &spec.container;
    let names = host::replica_names(&c.name, c.replicas);
    for name in &names {
        let why = match not_running(host::status(docker, name).await?) {
            Some(why) => Some(why),
            None => {
                let got = host::read_back(docker, name, &release.repository).await?;
                match got.digest {
                    Some(d) if d == expected => None,
                    Some(d) => Some(format!("another digest {d}")),
                    // Not an image of the release's repository at all: its local ID says which.
                    None => Some(format!("another digest {}", got.image_id)),
                }
            }
        };
        let why = match why {
            Some(w) => Some(w),
            None => match unhealthy(docker, name, address, spec).await {
                // It stopped while it was being checked: say what it is now.
                Some(u) => Some(not_running(host::status(docker, name).await?).unwrap_or(u)),
                None => None,
            },
        };
        if let Some(w) = why {
            return Ok(Some(if names.len() > 1 {
                format!("{name}: {w}")
            } else {
                w
            }));
        }
    }
    Ok(None)
}

/// Why a container whose engine status is `status` (None: no such container) is not
/// serving; None while it runs.
fn not_running(status: Option<String>) -> Option<String> {
    match status.as_deref() {
        None => Some("missing".to_string()),
        Some("restarting") => Some("restarting".to_string()),
        Some("running") => None,
        Some(_) => Some("stopped".to_string()),
    }
}

/// Health checks a container must fail in a row, `health.interval` apart, to be found
/// unhealthy: one slow answer, or a container someone just started, is not drift.
const UNHEALTHY_AFTER: u32 = 3;

/// Why container `name` is unhealthy by the release's own check, once it failed
/// [`UNHEALTHY_AFTER`] checks in a row; None as soon as one passes.
async fn unhealthy(
    docker: &Docker,
    name: &str,
    address: &str,
    spec: &DeploySpec,
) -> Option<String> {
    let mut last = None;
    for i in 0..UNHEALTHY_AFTER {
        if i > 0 {
            tokio::time::sleep(spec.health.interval).await;
        }
        match health::check_once(docker, name, address, &spec.health).await {
            Ok(()) => return None,
            Err(u) => last = Some(format!("unhealthy: {u}")),
        }
    }
    last
}

/// Start a `repair` deployment of `app`'s current release on host `h` alone, as a job the
/// agent tracks (shutdown waits for it; a restart's recovery resolves it from the journal).
async fn repair_host(q: &Arc<Queue>, app: &str, h: &AppHost, reason: &str) -> anyhow::Result<()> {
    let release = h
        .release
        .context("hoist left nothing on the host; there is nothing to repair")?;
    let deployer = Deployer::new(q.store.clone(), q.config.clone(), q.shutdown.clone());
    let by = format!("{REPAIRED_BY} ({}: {reason})", h.host);
    let mut plan = super::rollback_plan(&deployer, &q.mirrors, app, Some(release), &by).await?;
    plan.kind = DeploymentKind::Repair;
    plan.only_hosts(std::slice::from_ref(&h.host))?;
    let started = deployer.start(plan).await?;
    let id = started.id();
    tracing::warn!(
        app,
        host = h.host,
        deployment = id,
        "repairing a drifted host"
    );
    q.tasks.spawn(super::run_logged(deployer, started));
    Ok(())
}
