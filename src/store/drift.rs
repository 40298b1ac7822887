//! Drift: the hosts that no longer run what hoist left there, as the drift watch
//! (`crate::deploy::drift`) last found them, and the `host.drifted` notification owed for
//! each change, written in the same transaction as the change.
//!
//! A row exists only while a host drifts, so "no row" is "as hoist left it (or never
//! checked)". The watch writes every host's finding every tick; only a change (a drift
//! appears, its reason changes, or it clears) writes anything, so a host that stays drifted
//! is notified once, not once per tick.

use rusqlite::{OptionalExtension, params};
use serde::Serialize;

use super::{Store, now_millis, rfc3339};

/// One drifted host of an app.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Drift {
    /// The app whose serving containers drifted.
    pub app: String,
    /// The host, as named in hoist.toml.
    pub host: String,
    /// The release hoist left on the host (what a repair brings back); None: it ran nothing.
    pub release: Option<i64>,
    /// Why: "missing", "stopped", "restarting", "unhealthy: …", "another digest sha256:…",
    /// "engine unreachable: …".
    pub reason: String,
    /// Since when the host drifts with this reason.
    pub since: String,
}

/// What a finding changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DriftChange {
    /// Same as before: nothing written, nothing notified.
    Unchanged,
    /// The host drifts now and did not before.
    Appeared,
    /// The host still drifts, for another reason.
    Changed,
    /// The host runs what hoist left there again.
    Cleared,
}

impl Store {
    /// Record what the drift watch found on `host` for `app` (`reason` None: as hoist left
    /// it). A change writes the `host.drifted` notifications owed in the same transaction.
    pub async fn set_drift(
        &self,
        app: String,
        host: String,
        release: Option<i64>,
        reason: Option<String>,
    ) -> anyhow::Result<DriftChange> {
        let now = now_millis();
        let rep = self.reporting();
        let change = self
            .write(move |c| {
                let before: Option<String> = c
                    .prepare_cached("SELECT reason FROM host_drift WHERE app = ?1 AND host = ?2")?
                    .query_row(params![app, host], |r| r.get(0))
                    .optional()?;
                let change = match (&before, &reason) {
                    (None, None) => return Ok(DriftChange::Unchanged),
                    (Some(b), Some(r)) if b == r => return Ok(DriftChange::Unchanged),
                    (None, Some(_)) => DriftChange::Appeared,
                    (Some(_), Some(_)) => DriftChange::Changed,
                    (Some(_), None) => DriftChange::Cleared,
                };
                match &reason {
                    Some(r) => c.execute(
                        "INSERT INTO host_drift (app, host, release, reason, since) VALUES (?1, ?2, ?3, ?4, ?5)
                         ON CONFLICT (app, host) DO UPDATE SET release = excluded.release,
                             reason = excluded.reason, since = excluded.since",
                        params![app, host, release, r, now],
                    )?,
                    None => c.execute(
                        "DELETE FROM host_drift WHERE app = ?1 AND host = ?2",
                        params![app, host],
                    )?,
                };
                super::outbox::host_drifted(
                    c,
                    rep.as_deref(),
                    &app,
                    &host,
                    release,
                    reason.as_deref(),
                    before.as_deref(),
                    now,
                )?;
                Ok(change)
            })
            .await?;
        if change != DriftChange::Unchanged {
            self.wake_outbox();
        }
        Ok(change)
    }

    /// The drifted hosts of `app` (None: of every app), by app and host.
    pub async fn drifts(&self, app: Option<String>) -> anyhow::Result<Vec<Drift>> {
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT app, host, release, reason, since FROM host_drift
                 WHERE ?1 IS NULL OR app = ?1 ORDER BY app, host",
            )?;
            let rows = stmt.query_map([app], |r| {
                Ok(Drift {
                    app: r.get(0)?,
                    host: r.get(1)?,
                    release: r.get(2)?,
                    reason: r.get(3)?,
                    since: rfc3339(r.get(4)?),
                })
            })?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    #[tokio::test]
    async fn only_a_change_is_written_and_a_drift_survives_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let set = |reason: Option<&str>| {
            store.set_drift("web".into(), "h1".into(), Some(3), reason.map(String::from))
        };
        assert_eq!(set(None).await.unwrap(), DriftChange::Unchanged);
        assert_eq!(set(Some("stopped")).await.unwrap(), DriftChange::Appeared);
        assert_eq!(set(Some("stopped")).await.unwrap(), DriftChange::Unchanged);
        assert_eq!(set(Some("missing")).await.unwrap(), DriftChange::Changed);
        let found = store.drifts(Some("web".into())).await.unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(
            (found[0].reason.as_str(), found[0].release),
            ("missing", Some(3))
        );
        assert!(store.drifts(Some("api".into())).await.unwrap().is_empty());
        store.shutdown();
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.drifts(None).await.unwrap().len(), 1);
        let cleared = store.set_drift("web".into(), "h1".into(), Some(3), None);
        assert_eq!(cleared.await.unwrap(), DriftChange::Cleared);
        assert!(store.drifts(None).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn each_change_owes_one_notification_and_a_repeat_owes_none() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.set_reporting(super::super::Reporting {
            public_url: "https://hoist.example.com".into(),
            statuses: Default::default(),
            notify: vec![
                vec![crate::config::Event::RunFailed],
                vec![crate::config::Event::HostDrifted],
            ],
            mask: Box::new(|t| t.replace("hunter2", "***")),
        });
        let set = |reason: Option<&str>| {
            store.set_drift("web".into(), "h2".into(), Some(4), reason.map(String::from))
        };
        set(Some("unhealthy: body said hunter2")).await.unwrap();
        set(Some("unhealthy: body said hunter2")).await.unwrap();
        set(None).await.unwrap();
        set(None).await.unwrap();
        let rows = store.outbox(50, None, None).await.unwrap();
        let sent: Vec<(&str, &str, &Value)> = rows
            .iter()
            .rev()
            .map(|r| (r.target.as_str(), r.event.as_str(), &r.payload))
            .collect();
        assert_eq!(sent.len(), 2, "{rows:#?}");
        for (target, event, _) in &sent {
            assert_eq!((*target, *event), ("notify #2", "host.drifted"));
        }
        let (drifted, cleared) = (sent[0].2, sent[1].2);
        assert_eq!(drifted["reason"], "unhealthy: body said ***");
        assert_eq!(
            (drifted["host"].as_str(), drifted["release"].as_i64()),
            (Some("h2"), Some(4))
        );
        assert_eq!(drifted["cleared"], false);
        let text = drifted["text"].as_str().unwrap();
        assert!(
            text.contains("web on h2 drifted from release 4") && !text.contains("hunter2"),
            "{text}"
        );
        assert!(cleared["reason"].is_null());
        assert_eq!(cleared["cleared"], true);
        assert!(
            cleared["text"]
                .as_str()
                .unwrap()
                .contains("runs release 4 again"),
            "{cleared:#}"
        );
    }
}
