//! Deployments: the journal of moving an app's hosts from release A to release B, the per-app
//! lease that lets only one deployment act at a time, and what each host was last verified
//! to run.
//!
//! Kinds, statuses and host states are enums ([`DeploymentKind`], [`DeploymentStatus`],
//! [`HostState`]) stored as the same text the API shows; the journal's step names are free text.
//!
//! The lease carries a fencing token. Every journal write names the token it holds and fails
//! when the lease has moved on, so a stale holder (a paused or partitioned agent) cannot act.

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;

use super::outbox::Reporting;
use super::{Store, now_millis, rfc3339};

super::text_enum! {
    /// Which way a deployment moves an app: both run through the same engine.
    pub enum DeploymentKind ("deployment kind") {
        /// To a new release, from a run's deploy step.
        Rollout = "rollout",
        /// Back to an earlier release, asked for by a person.
        Rollback = "rollback",
        /// Back to the current release on a drifted host, started by the drift watch
        /// (`rollout.repair`).
        Repair = "repair",
    }
}

super::text_enum! {
    /// Where a deployment is.
    pub enum DeploymentStatus ("deployment status") {
        /// Acting, or interrupted and awaiting recovery at the next start.
        Running = "running",
        /// Every host runs B, verified by read-back.
        Succeeded = "succeeded",
        /// Something failed and every touched host was verified back on A.
        RolledBack = "rolled_back",
        /// A person (or the cancelled run) stopped it, and every touched host was verified
        /// back on A; the reason names who.
        Aborted = "aborted",
        /// Something failed and the hosts could not all be verified on one release: a person must look.
        Failed = "failed",
    }
}

super::text_enum! {
    /// Where one host of a deployment is, as its journal row says. Each forward state is
    /// written when the step it names is done (`Switching` before the host is touched).
    pub enum HostState ("host state") {
        /// Not acted on yet.
        Pending = "pending",
        /// B's image is on the host, verified by digest; nothing that serves was touched.
        Pulled = "pulled",
        /// About to stop A and start B: from here on the host may no longer serve A.
        Switching = "switching",
        /// B's container was started.
        Started = "started",
        /// B passed its health check.
        Healthy = "healthy",
        /// B was read back running its digest.
        Verified = "verified",
        /// Being put back on A.
        Reverting = "reverting",
        /// Verified back on A (or, when it ran nothing before, running nothing).
        Reverted = "reverted",
        /// The revert failed; a person must look.
        Failed = "failed",
    }
}

impl HostState {
    /// The host may have stopped serving A: a revert owes it the undos of its switch. A
    /// pending or merely pulled host serves A untouched; a reverted one is back on it.
    pub fn touched(self) -> bool {
        match self {
            Self::Pending | Self::Pulled | Self::Reverted => false,
            Self::Switching
            | Self::Started
            | Self::Healthy
            | Self::Verified
            | Self::Reverting
            | Self::Failed => true,
        }
    }
}

#[derive(Debug, Clone)]
pub struct NewDeployment {
    pub app: String,
    pub kind: DeploymentKind,
    pub from_release: Option<i64>,
    pub to_release: i64,
    pub run: Option<i64>,
    pub requested_by: String,
    /// Host names in batch order: (host, batch number).
    pub hosts: Vec<(String, i64)>,
}

/// The lease is held by another deployment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    pub deployment: i64,
    pub expires_in_ms: i64,
}

/// A journal write was refused: the deployment no longer holds its app's lease (another
/// deployment, or a restarted agent, took it over). Callers tell it from a store that cannot
/// write, which is worth waiting out.
#[derive(Debug, thiserror::Error)]
#[error(
    "deployment {deployment} lost its lease on app {app} (another deployment or agent took over); it stops acting"
)]
pub struct LeaseLost {
    pub deployment: i64,
    pub app: String,
}

/// What start-up recovery may do with a deployment a crash left `running`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TakeOver {
    /// Nothing acted on the app since: recovery holds the lease and resolves the journal.
    Taken(Lease),
    /// Deployment `by` acted on the app since (or holds its lease now): what it verified
    /// stands, and the stale deployment was recorded `failed` without touching a host.
    Superseded { by: i64 },
}

/// Whether a deployment that saw its lease renewals fail still holds the lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settled {
    /// The lease is still this deployment's: it goes on to its verdict.
    StillHeld,
    /// Another deployment holds the lease (or acted since): this one was recorded `failed`.
    Abandoned { by: Option<i64> },
}

/// A deployment's right to act: the app and the fencing token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub app: String,
    pub deployment: i64,
    pub token: i64,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Deployment {
    pub id: i64,
    pub app: String,
    pub kind: DeploymentKind,
    pub from_release: Option<i64>,
    pub to_release: i64,
    pub run: Option<i64>,
    pub requested_by: String,
    pub status: DeploymentStatus,
    pub reason: Option<String>,
    pub failing_host: Option<String>,
    pub created_at: String,
    pub finished_at: Option<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DeploymentHost {
    pub host: String,
    pub batch: i64,
    pub state: HostState,
    /// What the host ran before this deployment touched it (the undo target).
    pub from_release: Option<i64>,
    pub expected: Option<String>,
    pub read_back: Option<String>,
    pub health: Option<String>,
    pub reason: Option<String>,
    pub updated_at: String,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DeploymentEvent {
    pub seq: i64,
    pub host: Option<String>,
    pub step: String,
    pub detail: Option<String>,
    pub at: String,
}

/// What a host was last verified to run for an app.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct AppHost {
    pub host: String,
    pub release: Option<i64>,
    pub digest: Option<String>,
    pub deployment: Option<i64>,
    pub verified_at: String,
}

/// A change to one host's journal row; None fields are left as they are.
#[derive(Debug, Clone, Default)]
pub struct HostUpdate {
    pub state: Option<HostState>,
    pub from_release: Option<Option<i64>>,
    pub expected: Option<String>,
    pub read_back: Option<String>,
    pub health: Option<String>,
    pub reason: Option<String>,
}

fn check_lease(c: &Connection, lease: &Lease) -> anyhow::Result<()> {
    let token: Option<i64> = c
        .prepare_cached("SELECT token FROM leases WHERE app = ?1 AND deployment = ?2")?
        .query_row(params![lease.app, lease.deployment], |r| r.get(0))
        .optional()?;
    if token != Some(lease.token) {
        return Err(LeaseLost {
            deployment: lease.deployment,
            app: lease.app.clone(),
        }
        .into());
    }
    Ok(())
}

/// Record a deployment that can no longer act as `failed`, in the caller's transaction,
/// unless it already has a verdict. Its hosts are left to whoever acted since.
fn abandon(
    c: &Connection,
    rep: Option<&Reporting>,
    deployment: i64,
    reason: &str,
    now: i64,
) -> anyhow::Result<()> {
    let changed = c.execute(
        "UPDATE deployments SET status = ?2, reason = ?3, finished_at = ?4 WHERE id = ?1 AND status = ?5",
        params![deployment, DeploymentStatus::Failed, reason, now, DeploymentStatus::Running],
    )?;
    if changed == 1 {
        super::outbox::deployment_finished(c, rep, deployment, now)?;
        event(
            c,
            deployment,
            None,
            "end",
            Some(&format!("failed: {reason}")),
            now,
        )?;
    }
    Ok(())
}

/// The newest deployment of `app` begun after `deployment`, if any.
fn later_deployment(c: &Connection, app: &str, deployment: i64) -> anyhow::Result<Option<i64>> {
    Ok(c.query_row(
        "SELECT MAX(id) FROM deployments WHERE app = ?1 AND id > ?2",
        params![app, deployment],
        |r| r.get(0),
    )?)
}

fn event(
    c: &Connection,
    deployment: i64,
    host: Option<&str>,
    step: &str,
    detail: Option<&str>,
    now: i64,
) -> anyhow::Result<()> {
    c.prepare_cached(
        "INSERT INTO deployment_events (deployment, seq, host, step, detail, at)
         VALUES (?1, (SELECT COALESCE(MAX(seq), 0) + 1 FROM deployment_events WHERE deployment = ?1), ?2, ?3, ?4, ?5)",
    )?
    .execute(params![deployment, host, step, detail, now])?;
    Ok(())
}

const DEPLOYMENT_COLUMNS: &str = "id, app, kind, from_release, to_release, run, requested_by, status, reason, failing_host, created_at, finished_at";

fn deployment_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Deployment> {
    Ok(Deployment {
        id: r.get(0)?,
        app: r.get(1)?,
        kind: r.get(2)?,
        from_release: r.get(3)?,
        to_release: r.get(4)?,
        run: r.get(5)?,
        requested_by: r.get(6)?,
        status: r.get(7)?,
        reason: r.get(8)?,
        failing_host: r.get(9)?,
        created_at: rfc3339(r.get(10)?),
        finished_at: r.get::<_, Option<i64>>(11)?.map(rfc3339),
    })
}

impl Store {
    /// Take the app's lease and record a new deployment with its hosts, in one transaction.
    /// `Ok(Err(Held))` when another deployment holds an unexpired lease.
    pub async fn begin_deployment(
        &self,
        d: NewDeployment,
        ttl_ms: i64,
    ) -> anyhow::Result<Result<Lease, Held>> {
        let now = now_millis();
        self.write(move |c| {
            let held: Option<(i64, i64, i64)> = c
                .query_row("SELECT deployment, token, expires_at FROM leases WHERE app = ?1", [&d.app], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                })
                .optional()?;
            if let Some((deployment, _, expires)) = held
                && expires > now
            {
                return Ok(Err(Held {
                    deployment,
                    expires_in_ms: expires - now,
                }));
            }
            c.execute(
                "INSERT INTO deployments (app, kind, from_release, to_release, run, requested_by, status, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![d.app, d.kind, d.from_release, d.to_release, d.run, d.requested_by, DeploymentStatus::Running, now],
            )?;
            let id = c.last_insert_rowid();
            for (host, batch) in &d.hosts {
                c.execute(
                    "INSERT INTO deployment_hosts (deployment, host, batch, state, updated_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![id, host, batch, HostState::Pending, now],
                )?;
            }
            let token = held.map_or(1, |(_, t, _)| t + 1);
            c.execute(
                "INSERT INTO leases (app, deployment, token, expires_at) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (app) DO UPDATE SET deployment = excluded.deployment, token = excluded.token, expires_at = excluded.expires_at",
                params![d.app, id, token, now + ttl_ms],
            )?;
            event(c, id, None, "begin", Some(&format!("{} to release {}", d.kind, d.to_release)), now)?;
            Ok(Ok(Lease {
                app: d.app.clone(),
                deployment: id,
                token,
            }))
        })
        .await
    }

    /// Take over the lease of an interrupted deployment (at start-up recovery), with a new
    /// token, unless the deployment is stale: a later deployment of the app exists, or another
    /// deployment holds an unexpired lease (one this agent began while recovery ran). A stale
    /// deployment is recorded `failed` in the same transaction and no host is touched, so
    /// recovery never undoes what a later deployment verified.
    pub async fn take_over_lease(
        &self,
        app: String,
        deployment: i64,
        ttl_ms: i64,
    ) -> anyhow::Result<TakeOver> {
        let now = now_millis();
        let rep = self.reporting();
        let out = self
            .write(move |c| {
                let held: Option<(i64, i64, i64)> = c
                    .query_row(
                        "SELECT deployment, token, expires_at FROM leases WHERE app = ?1",
                        [&app],
                        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                    )
                    .optional()?;
                let holder = held
                    .filter(|&(d, _, expires)| d != deployment && expires > now)
                    .map(|(d, _, _)| d);
                if let Some(by) = later_deployment(c, &app, deployment)?.or(holder) {
                    let reason = format!(
                        "abandoned: interrupted, and deployment {by} acted on {app} since; \
                         the hosts are left to that deployment's verdict"
                    );
                    abandon(c, rep.as_deref(), deployment, &reason, now)?;
                    return Ok(TakeOver::Superseded { by });
                }
                let token = held.map_or(0, |(_, t, _)| t) + 1;
                c.execute(
                    "INSERT INTO leases (app, deployment, token, expires_at) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (app) DO UPDATE SET deployment = excluded.deployment, token = excluded.token, expires_at = excluded.expires_at",
                    params![app, deployment, token, now + ttl_ms],
                )?;
                event(c, deployment, None, "recover", Some("the agent restarted; resolving the journal"), now)?;
                Ok(TakeOver::Taken(Lease { app, deployment, token }))
            })
            .await;
        self.wake_outbox();
        out
    }

    /// After its lease renewals failed: does the deployment still hold the lease? If not,
    /// it is recorded `failed` with `reason` at once, rather than left `running` for a later
    /// restart to "recover" over whatever the new holder verified.
    pub async fn settle_lost(&self, lease: Lease, reason: String) -> anyhow::Result<Settled> {
        let now = now_millis();
        let rep = self.reporting();
        let out = self
            .write(move |c| {
                let later = later_deployment(c, &lease.app, lease.deployment)?;
                if later.is_none() && check_lease(c, &lease).is_ok() {
                    return Ok(Settled::StillHeld);
                }
                let holder: Option<i64> = c
                    .query_row(
                        "SELECT deployment FROM leases WHERE app = ?1",
                        [&lease.app],
                        |r| r.get(0),
                    )
                    .optional()?;
                let by = later.or(holder.filter(|&d| d != lease.deployment));
                let why = match by {
                    Some(by) => format!(
                        "{reason}; it lost its lease, and deployment {by} acted on {} since",
                        lease.app
                    ),
                    None => format!("{reason}; it lost its lease on {}", lease.app),
                };
                abandon(c, rep.as_deref(), lease.deployment, &why, now)?;
                Ok(Settled::Abandoned { by })
            })
            .await;
        self.wake_outbox();
        out
    }

    /// The deployment holding the app's lease now (unexpired), if any.
    pub async fn lease_holder(&self, app: String) -> anyhow::Result<Option<i64>> {
        let now = now_millis();
        self.read(move |c| {
            Ok(c.prepare_cached(
                "SELECT deployment FROM leases WHERE app = ?1 AND expires_at > ?2",
            )?
            .query_row(params![app, now], |r| r.get(0))
            .optional()?)
        })
        .await
    }

    /// Extend the lease; fails when it was lost.
    pub async fn renew_lease(&self, lease: Lease, ttl_ms: i64) -> anyhow::Result<()> {
        let now = now_millis();
        self.write(move |c| {
            check_lease(c, &lease)?;
            c.execute(
                "UPDATE leases SET expires_at = ?2 WHERE app = ?1",
                params![lease.app, now + ttl_ms],
            )?;
            Ok(())
        })
        .await
    }

    /// Journal a step of one host (fenced by the lease).
    pub async fn host_step(
        &self,
        lease: Lease,
        host: String,
        step: String,
        detail: Option<String>,
        u: HostUpdate,
    ) -> anyhow::Result<()> {
        let now = now_millis();
        self.write(move |c| {
            check_lease(c, &lease)?;
            let d = lease.deployment;
            if let Some(st) = u.state {
                c.execute("UPDATE deployment_hosts SET state = ?3, updated_at = ?4 WHERE deployment = ?1 AND host = ?2", params![d, host, st, now])?;
            }
            if let Some(from) = u.from_release {
                c.execute("UPDATE deployment_hosts SET from_release = ?3 WHERE deployment = ?1 AND host = ?2", params![d, host, from])?;
            }
            for (col, v) in [("expected", &u.expected), ("read_back", &u.read_back), ("health", &u.health), ("reason", &u.reason)] {
                if let Some(v) = v {
                    c.execute(
                        &format!("UPDATE deployment_hosts SET {col} = ?3, updated_at = ?4 WHERE deployment = ?1 AND host = ?2"),
                        params![d, host, v, now],
                    )?;
                }
            }
            event(c, d, Some(&host), &step, detail.as_deref(), now)?;
            Ok(())
        })
        .await
    }

    /// Journal a deployment-wide step (fenced by the lease).
    pub async fn deployment_event(
        &self,
        lease: Lease,
        step: String,
        detail: Option<String>,
    ) -> anyhow::Result<()> {
        let now = now_millis();
        self.write(move |c| {
            check_lease(c, &lease)?;
            event(c, lease.deployment, None, &step, detail.as_deref(), now)
        })
        .await
    }

    /// Record that `host` was verified running `release` (digest read back) for the app.
    pub async fn set_app_host(
        &self,
        lease: Lease,
        host: String,
        release: Option<i64>,
        digest: Option<String>,
    ) -> anyhow::Result<()> {
        let now = now_millis();
        self.write(move |c| {
            check_lease(c, &lease)?;
            c.execute(
                "INSERT INTO app_hosts (app, host, release, digest, deployment, verified_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (app, host) DO UPDATE SET release = excluded.release, digest = excluded.digest,
                     deployment = excluded.deployment, verified_at = excluded.verified_at",
                params![lease.app, host, release, digest, lease.deployment, now],
            )?;
            Ok(())
        })
        .await
    }

    /// End the deployment with its verdict and give the lease back.
    pub async fn finish_deployment(
        &self,
        lease: Lease,
        status: DeploymentStatus,
        reason: Option<String>,
        failing_host: Option<String>,
    ) -> anyhow::Result<()> {
        let now = now_millis();
        let rep = self.reporting();
        let out = self.write(move |c| {
            check_lease(c, &lease)?;
            // Only the first verdict is counted, timed from the deployment's creation.
            let before: Option<(DeploymentStatus, String, i64)> = c
                .query_row(
                    "SELECT status, kind, created_at FROM deployments WHERE id = ?1",
                    [lease.deployment],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .optional()?;
            let took = before
                .filter(|(old, _, _)| *old == DeploymentStatus::Running)
                .map(|(_, kind, created)| (kind, now - created));
            c.execute(
                "UPDATE deployments SET status = ?2, reason = ?3, failing_host = ?4, finished_at = ?5 WHERE id = ?1",
                params![lease.deployment, status, reason, failing_host, now],
            )?;
            super::outbox::deployment_finished(c, rep.as_deref(), lease.deployment, now)?;
            event(c, lease.deployment, None, "end", Some(&format!("{status}{}", reason.as_deref().map(|r| format!(": {r}")).unwrap_or_default())), now)?;
            c.execute("DELETE FROM leases WHERE app = ?1 AND token = ?2", params![lease.app, lease.token])?;
            Ok(took)
        })
        .await;
        self.wake_outbox();
        if let Ok(Some((kind, millis))) = &out {
            self.metrics
                .deployment_finished(kind, status.as_str(), *millis);
        }
        out.map(|_| ())
    }

    pub async fn deployment(
        &self,
        id: i64,
    ) -> anyhow::Result<Option<(Deployment, Vec<DeploymentHost>, Vec<DeploymentEvent>)>> {
        self.read(move |c| {
            let Some(d) = c
                .query_row(&format!("SELECT {DEPLOYMENT_COLUMNS} FROM deployments WHERE id = ?1"), [id], deployment_from_row)
                .optional()?
            else {
                return Ok(None);
            };
            let hosts = c
                .prepare_cached(
                    "SELECT host, batch, state, from_release, expected, read_back, health, reason, updated_at
                     FROM deployment_hosts WHERE deployment = ?1 ORDER BY batch, host",
                )?
                .query_map([id], |r| {
                    Ok(DeploymentHost {
                        host: r.get(0)?,
                        batch: r.get(1)?,
                        state: r.get(2)?,
                        from_release: r.get(3)?,
                        expected: r.get(4)?,
                        read_back: r.get(5)?,
                        health: r.get(6)?,
                        reason: r.get(7)?,
                        updated_at: rfc3339(r.get(8)?),
                    })
                })?
                .collect::<Result<_, _>>()?;
            let events = c
                .prepare_cached("SELECT seq, host, step, detail, at FROM deployment_events WHERE deployment = ?1 ORDER BY seq")?
                .query_map([id], |r| {
                    Ok(DeploymentEvent {
                        seq: r.get(0)?,
                        host: r.get(1)?,
                        step: r.get(2)?,
                        detail: r.get(3)?,
                        at: rfc3339(r.get(4)?),
                    })
                })?
                .collect::<Result<_, _>>()?;
            Ok(Some((d, hosts, events)))
        })
        .await
    }

    /// An app's deployments, newest first.
    pub async fn deployments(&self, app: String, limit: u32) -> anyhow::Result<Vec<Deployment>> {
        self.read(move |c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {DEPLOYMENT_COLUMNS} FROM deployments WHERE app = ?1 ORDER BY id DESC LIMIT ?2"
            ))?;
            Ok(stmt.query_map(params![app, limit], deployment_from_row)?.collect::<Result<_, _>>()?)
        })
        .await
    }

    /// Deployments left running by a crash.
    pub async fn running_deployments(&self) -> anyhow::Result<Vec<Deployment>> {
        self.read(|c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {DEPLOYMENT_COLUMNS} FROM deployments WHERE status = ?1 ORDER BY id"
            ))?;
            Ok(stmt
                .query_map([DeploymentStatus::Running], deployment_from_row)?
                .collect::<Result<_, _>>()?)
        })
        .await
    }

    /// What each host was last verified to run for the app.
    pub async fn app_hosts(&self, app: String) -> anyhow::Result<Vec<AppHost>> {
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT host, release, digest, deployment, verified_at FROM app_hosts WHERE app = ?1 ORDER BY host",
            )?;
            let rows = stmt.query_map([app], |r| {
                Ok(AppHost {
                    host: r.get(0)?,
                    release: r.get(1)?,
                    digest: r.get(2)?,
                    deployment: r.get(3)?,
                    verified_at: rfc3339(r.get(4)?),
                })
            })?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
    }

    /// Releases that succeeded deployments moved the app to, newest deployment first
    /// (deduplicated): the candidates for a rollback, and what retention must keep.
    pub async fn good_releases(&self, app: String) -> anyhow::Result<Vec<i64>> {
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT to_release FROM deployments WHERE app = ?1 AND status = ?2 ORDER BY id DESC",
            )?;
            let all: Vec<i64> = stmt.query_map(params![app, DeploymentStatus::Succeeded], |r| r.get(0))?.collect::<Result<_, _>>()?;
            let mut seen = Vec::new();
            for r in all {
                if !seen.contains(&r) {
                    seen.push(r);
                }
            }
            Ok(seen)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::UnknownText;

    #[test]
    fn states_keep_their_text() {
        use crate::store::tests::round_trips;
        round_trips(DeploymentKind::ALL);
        round_trips(DeploymentStatus::ALL);
        round_trips(HostState::ALL);
        assert_eq!(DeploymentStatus::RolledBack.as_str(), "rolled_back");
        assert_eq!(
            "paused".parse::<HostState>(),
            Err(UnknownText {
                what: "host state",
                text: "paused".into()
            })
        );
    }

    #[tokio::test]
    async fn unknown_text_in_the_store_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let new = NewDeployment {
            app: "web".into(),
            kind: DeploymentKind::Rollback,
            from_release: Some(2),
            to_release: 1,
            run: None,
            requested_by: "test".into(),
            hosts: vec![("h1".into(), 1)],
        };
        let lease = store.begin_deployment(new, 30_000).await.unwrap().unwrap();
        let (d, hosts, _) = store.deployment(lease.deployment).await.unwrap().unwrap();
        assert_eq!(
            (d.kind, d.status, hosts[0].state),
            (
                DeploymentKind::Rollback,
                DeploymentStatus::Running,
                HostState::Pending
            )
        );
        store
            .write(|c| {
                c.execute("UPDATE deployment_hosts SET state = 'paused'", [])?;
                Ok(())
            })
            .await
            .unwrap();
        let err = store.deployment(lease.deployment).await.unwrap_err();
        assert!(
            format!("{err:#}").contains("host state \"paused\""),
            "{err:#}"
        );
    }

    fn new_deployment(to: i64) -> NewDeployment {
        NewDeployment {
            app: "web".into(),
            kind: DeploymentKind::Rollout,
            from_release: Some(to - 1),
            to_release: to,
            run: None,
            requested_by: "test".into(),
            hosts: vec![("h1".into(), 1)],
        }
    }

    #[tokio::test]
    async fn recovery_never_takes_over_a_deployment_a_later_one_superseded() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        // Deployment 1 lost its lease (it expired) without a verdict; deployment 2 took the
        // app and verified its release.
        let d1 = store
            .begin_deployment(new_deployment(2), -1)
            .await
            .unwrap()
            .unwrap();
        let d2 = store
            .begin_deployment(new_deployment(3), 30_000)
            .await
            .unwrap()
            .unwrap();
        store
            .finish_deployment(d2.clone(), DeploymentStatus::Succeeded, None, None)
            .await
            .unwrap();
        let taken = store
            .take_over_lease("web".into(), d1.deployment, 30_000)
            .await
            .unwrap();
        assert_eq!(taken, TakeOver::Superseded { by: d2.deployment });
        let (d, _, events) = store.deployment(d1.deployment).await.unwrap().unwrap();
        assert_eq!(d.status, DeploymentStatus::Failed);
        assert!(
            d.reason
                .as_deref()
                .unwrap_or("")
                .contains("deployment 2 acted on web since"),
            "{:?}",
            d.reason
        );
        assert_eq!(events.last().unwrap().step, "end");
    }

    #[tokio::test]
    async fn recovery_never_steals_a_lease_this_agent_holds() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        // Deployment 1 was interrupted by a crash, and its lease expired; deployment 2 (a
        // rollback asked for while recovery ran) holds a live lease.
        let d1 = store
            .begin_deployment(new_deployment(2), -1)
            .await
            .unwrap()
            .unwrap();
        let live = store
            .begin_deployment(new_deployment(1), 30_000)
            .await
            .unwrap()
            .unwrap();
        let taken = store
            .take_over_lease("web".into(), d1.deployment, 30_000)
            .await
            .unwrap();
        assert_eq!(
            taken,
            TakeOver::Superseded {
                by: live.deployment
            }
        );
        store.renew_lease(live.clone(), 30_000).await.unwrap();
        store
            .finish_deployment(live, DeploymentStatus::Succeeded, None, None)
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn an_interrupted_deployment_alone_is_taken_over_with_a_new_token() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let d1 = store
            .begin_deployment(new_deployment(2), 30_000)
            .await
            .unwrap()
            .unwrap();
        let TakeOver::Taken(lease) = store
            .take_over_lease("web".into(), d1.deployment, 30_000)
            .await
            .unwrap()
        else {
            panic!("the only deployment of the app is recovered");
        };
        assert_eq!(lease.token, d1.token + 1);
        let err = store.renew_lease(d1, 30_000).await.unwrap_err();
        assert!(err.downcast_ref::<LeaseLost>().is_some(), "{err:#}");
    }

    #[tokio::test]
    async fn a_deployment_that_lost_its_lease_is_settled_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let d1 = store
            .begin_deployment(new_deployment(2), 30_000)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            store
                .settle_lost(d1.clone(), "h1 unhealthy".into())
                .await
                .unwrap(),
            Settled::StillHeld
        );
        // Its lease expired while it could not write; deployment 2 took the app.
        store
            .write(|c| {
                c.execute("UPDATE leases SET expires_at = 0", [])?;
                Ok(())
            })
            .await
            .unwrap();
        let d2 = store
            .begin_deployment(new_deployment(3), 30_000)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            store
                .settle_lost(d1.clone(), "h1 unhealthy".into())
                .await
                .unwrap(),
            Settled::Abandoned {
                by: Some(d2.deployment)
            }
        );
        let (d, _, _) = store.deployment(d1.deployment).await.unwrap().unwrap();
        assert_eq!(d.status, DeploymentStatus::Failed);
        assert!(
            d.reason
                .as_deref()
                .unwrap_or("")
                .starts_with("h1 unhealthy; it lost its lease"),
            "{:?}",
            d.reason
        );
        // The holder's lease is untouched.
        store.renew_lease(d2, 30_000).await.unwrap();
    }
}
