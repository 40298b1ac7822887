//! Deployments: moving an app's hosts from one release to another (rollouts and rollbacks are
//! one engine, `deployment`), what one host does (`host`), and how health is judged (`health`).

pub mod balancer;
pub mod deployment;
pub mod drift;
pub mod health;
pub mod host;

use anyhow::{Context, bail};
use serde::Serialize;

use crate::checkout::Mirrors;
use crate::config::Config;
use crate::pipeline::Vars;
use crate::store::{DeploymentKind, Release, Store};
use deployment::{Deployer, Plan};

/// Carry a started deployment (a rollback asked for over the API, a repair) to its verdict,
/// its progress going to the agent's log; for a task of its own.
pub async fn run_logged(deployer: Deployer, started: deployment::Started) {
    let id = started.id();
    let (tx, mut rx) = crate::runner::LogSink::channel();
    let logger = tokio::spawn(async move {
        while let Some(line) = rx.recv().await {
            let line = line.into_bytes();
            tracing::info!(
                deployment = id,
                "{}",
                String::from_utf8_lossy(&line).trim_end()
            );
        }
    });
    deployer.run(started, &tx).await;
    drop(tx);
    let _ = logger.await;
}

/// Under `data_dir`: the checkouts a rollback's hooks run in, one per plan, removed when its
/// deployment ends or is refused.
pub const HOOKS_DIR: &str = "hooks";

/// The good releases (some deployment verified them) older than release `current`, newest
/// first: the first is the default rollback target, and retention keeps the first `keep`.
pub fn older_good(good: &[i64], current: i64) -> Vec<i64> {
    let mut older: Vec<i64> = good.iter().copied().filter(|&r| r < current).collect();
    older.sort_unstable_by(|a, b| b.cmp(a));
    older.dedup();
    older
}

/// The plan of a manual rollback of `app` to release `to`, by default the newest good
/// release older than the current one. Its container settings and health checks are the
/// ones that release was deployed with; hooks run in a checkout of its commit.
pub async fn rollback_plan(
    d: &Deployer,
    mirrors: &Mirrors,
    app: &str,
    to: Option<i64>,
    who: &str,
) -> anyhow::Result<Plan> {
    let good = d.store.good_releases(app.to_string()).await?;
    let current = good.first().copied();
    let target = match to {
        Some(n) => n,
        None => {
            let cur = current.with_context(|| {
                format!("app {app} has never been deployed; there is nothing to roll back")
            })?;
            older_good(&good, cur).first().copied().with_context(|| {
                format!(
                    "app {app} has no good release older than release {cur}; name one with --to"
                )
            })?
        }
    };
    let release = d
        .store
        .release(app.to_string(), target)
        .await?
        .with_context(|| {
            format!("app {app} has no release {target}; `hoist releases {app}` lists them")
        })?;
    let Some(spec) = release.deploy.clone() else {
        bail!(
            "release {target} of {app} was built by a pipeline without a deploy step; it cannot be deployed"
        )
    };
    let hooks_dir = hooks_checkout(d, mirrors, &release).await;
    Ok(Plan {
        vars: Vars {
            commit: release.commit.clone(),
            app: app.to_string(),
            repo: release.repo.clone(),
            ..Vars::default()
        },
        to: release,
        spec,
        kind: DeploymentKind::Rollback,
        run: None,
        requested_by: who.to_string(),
        hooks_dir,
        now: false,
        hosts: None,
    })
}

/// A checkout of the release's commit for its hooks (best effort: without one, hooks are
/// skipped and the journal says so). The release was built from this commit, so the mirror
/// has it and no fetch happens; a mirror that lost it fetches the ref the release's run built.
async fn hooks_checkout(
    d: &Deployer,
    mirrors: &Mirrors,
    release: &Release,
) -> Option<std::path::PathBuf> {
    let repo = d.config.repo(&release.repo)?;
    let git_ref = match d.store.run(release.run).await {
        Ok(Some((run, _))) => run.git_ref,
        _ => return None,
    };
    // A directory of this plan's own: a second rollback asked for at the same time (refused
    // with 409 once it finds the lease held) must not replace the first one's checkout.
    static PLANS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let dir = d.config.data_dir.join(HOOKS_DIR).join(format!(
        "{}-r{}-{}-{}",
        release.app,
        release.number,
        std::process::id(),
        PLANS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    mirrors
        .checkout(repo, &git_ref, &release.commit, dir)
        .await
        .map_err(|e| {
            tracing::warn!(
                release = release.number,
                "cannot check out the release's hooks: {e:#}"
            )
        })
        .ok()
}

/// One host as `GET /api/v1/apps/{app}/hosts` shows it.
#[derive(Debug, Serialize)]
pub struct AppHostNow {
    pub host: String,
    pub release: Option<i64>,
    pub digest_expected: Option<String>,
    pub digest_read_back: Option<String>,
    pub container: Option<String>,
    pub health: String,
    /// Each serving container (`NAME`, or `NAME-1` … `NAME-N`) as the engine reports it now.
    pub replicas: Vec<ReplicaNow>,
    /// Why the drift watch last found the host not running what hoist left there ("stopped",
    /// "another digest sha256:…", "engine unreachable: …"); None: as hoist left it.
    pub drift: Option<String>,
}

/// One serving container of an app on a host.
#[derive(Debug, Serialize)]
pub struct ReplicaNow {
    pub name: String,
    pub running: bool,
    pub digest_read_back: Option<String>,
    /// Published container ports (`8080/tcp`) and where they answer (`ADDRESS:HOSTPORT`),
    /// read back from the engine: the port it picked for an engine-picked one.
    pub ports: std::collections::BTreeMap<String, String>,
    pub health: String,
}

pub async fn app_hosts_now(
    store: &Store,
    config: &Config,
    app: &str,
) -> anyhow::Result<Vec<AppHostNow>> {
    let masker =
        crate::runner::Masker::new(config.secrets.values().map(|v| v.expose().to_string()));
    let mut drifts: std::collections::BTreeMap<String, String> = store
        .drifts(Some(app.to_string()))
        .await?
        .into_iter()
        .map(|d| (d.host, d.reason))
        .collect();
    let mut out = Vec::new();
    for h in store.app_hosts(app.to_string()).await? {
        let release = match h.release {
            Some(n) => store.release(app.to_string(), n).await?,
            None => None,
        };
        let spec = release.as_ref().and_then(|r| r.deploy.clone());
        let mut row = AppHostNow {
            host: h.host.clone(),
            release: h.release,
            digest_expected: h.digest.clone(),
            digest_read_back: None,
            container: None,
            health: "unknown".into(),
            replicas: Vec::new(),
            drift: drifts.remove(&h.host),
        };
        if let (Some(conf), Some(spec), Some(rel)) = (config.hosts.get(&h.host), spec, release) {
            match crate::engine::connect(&conf.docker, conf.tls.as_ref()).await {
                Ok(docker) => {
                    let c = &spec.container;
                    for name in host::replica_names(&c.name, c.replicas) {
                        let rb = host::read_back(&docker, &name, &rel.repository).await.ok();
                        let ports = host::ports_of(&docker, &name)
                            .await
                            .unwrap_or_default()
                            .into_iter()
                            .map(|(k, p)| (k, format!("{}:{p}", conf.address)))
                            .collect();
                        let health =
                            match health::check_once(&docker, &name, &conf.address, &spec.health)
                                .await
                            {
                                Ok(()) => "healthy".into(),
                                // The reason can quote the container's log, which can hold a secret.
                                Err(why) => masker.mask_text(&format!("unhealthy: {why}")),
                            };
                        row.replicas.push(ReplicaNow {
                            name,
                            running: rb.as_ref().is_some_and(|r| r.running),
                            digest_read_back: rb.and_then(|r| r.digest),
                            ports,
                            health,
                        });
                    }
                    // The host as a whole: its first replica's digest; running and healthy
                    // only when every replica is.
                    row.digest_read_back = row
                        .replicas
                        .first()
                        .and_then(|r| r.digest_read_back.clone());
                    if row
                        .replicas
                        .iter()
                        .any(|r| r.digest_read_back.is_some() || r.running)
                    {
                        row.container = Some(if row.replicas.iter().all(|r| r.running) {
                            "running".into()
                        } else {
                            "stopped".into()
                        });
                    }
                    row.health = row
                        .replicas
                        .iter()
                        .find(|r| r.health != "healthy")
                        .map_or_else(
                            || "healthy".to_string(),
                            |r| {
                                if row.replicas.len() > 1 {
                                    format!("{}: {}", r.name, r.health)
                                } else {
                                    r.health.clone()
                                }
                            },
                        );
                }
                Err(e) => row.health = format!("unreachable: {e:#}"),
            }
        }
        out.push(row);
    }
    Ok(out)
}

/// Every configured host: reachable or not, and what its engine says.
pub async fn describe_hosts(config: &Config) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    for (name, conf) in &config.hosts {
        let v = match crate::engine::connect(&conf.docker, conf.tls.as_ref()).await {
            Ok(docker) => match host::describe(&docker).await {
                Ok(info) => {
                    serde_json::json!({ "host": name, "address": conf.address, "reachable": true, "engine": info })
                }
                Err(e) => {
                    serde_json::json!({ "host": name, "address": conf.address, "reachable": true, "error": format!("{e:#}") })
                }
            },
            Err(e) => {
                serde_json::json!({ "host": name, "address": conf.address, "reachable": false, "error": format!("{e:#}") })
            }
        };
        out.push(v);
    }
    out
}
