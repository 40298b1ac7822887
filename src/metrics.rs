//! What `/metrics` exports, in Prometheus conventions, encoded by `prometheus-client` (the
//! Prometheus project's own Rust client): counters end in `_total`, durations are histograms
//! in seconds, and a scrape gets the OpenMetrics text the client library writes.
//!
//! Two kinds of numbers live here. Events (deliveries, finished runs, steps and deployments,
//! intake latency) are counted where they happen: the intake in `api`, the ends of runs, steps
//! and deployments in the store's writes that record them (`finish_run`, `finish_step`,
//! `finish_deployment`, `cancel_run`), whichever worker or request ends them. A queued run
//! superseded by a newer push, or one found interrupted at a restart, is not counted. Levels
//! (queue depth and age, outbox rows, drifted hosts) are read from the store at each scrape, because the
//! database is the truth for them and they survive a restart.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels of a finished run or step.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// The run's or step's final status (`success`, `failed`, `cancelled`, …).
    pub outcome: String,
}

/// Labels of a finished deployment.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeploymentLabels {
    /// `rollout`, `rollback` or `repair`: a rollback that fails often says more than a rollout.
    pub kind: String,
    /// The deployment's final status (`succeeded`, `rolled_back`, `aborted`, `failed`).
    pub verdict: String,
}

/// Labels of the outbox's rows.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    /// `pending` (owed), `delivered`, `abandoned`.
    pub state: String,
}

/// A histogram family whose buckets suit the durations it measures.
type Durations<L> = Family<L, Histogram, fn() -> Histogram>;

/// Every metric the agent exports, registered once; cheap to share behind an `Arc`.
pub struct Metrics {
    /// The registry the encoder walks; every field below is registered in it.
    registry: Registry,
    /// New deliveries stored (`hoist_deliveries_accepted_total`).
    pub deliveries_accepted: Counter,
    /// Deliveries already stored, answered again.
    pub deliveries_duplicate: Counter,
    /// Verified deliveries that start nothing (pings, deletions, other events).
    pub deliveries_ignored: Counter,
    /// Deliveries refused (signature, body, size, unknown repository).
    pub deliveries_rejected: Counter,
    /// From a webhook request reaching the handler to its answer: the forge's wait.
    pub intake_seconds: Histogram,
    /// Runs that ended, by outcome.
    pub runs_finished: Family<OutcomeLabels, Counter>,
    /// How long runs took from their start (or creation, when they never started) to their end.
    pub run_seconds: Durations<OutcomeLabels>,
    /// Steps that ended on their own (steps a run's end skips or cancels are not counted).
    pub steps_finished: Family<OutcomeLabels, Counter>,
    /// How long those steps took.
    pub step_seconds: Durations<OutcomeLabels>,
    /// Deployments that ended, by kind and verdict.
    pub deployments_finished: Family<DeploymentLabels, Counter>,
    /// How long deployments took from their creation to their verdict.
    pub deployment_seconds: Durations<DeploymentLabels>,
    /// Runs waiting for a runner, read from the store at each scrape.
    pub queue_depth: Gauge,
    /// Age of the oldest queued run in seconds (0 when none waits), read at each scrape.
    pub queue_oldest_seconds: Gauge<f64, AtomicU64>,
    /// Outbox rows by state, read at each scrape; `pending` is the backlog owed to forges and chats.
    pub outbox_rows: Family<StateLabels, Gauge>,
    /// Hosts the drift watch last found not running what hoist left there (every app's),
    /// read at each scrape.
    pub hosts_drifted: Gauge,
}

/// Buckets for whole runs, steps and deployments: 0.5 s to about 2.3 hours.
fn long_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.5, 2.0, 15))
}

impl Default for Metrics {
    fn default() -> Metrics {
        let mut registry = Registry::default();
        let m = Metrics {
            deliveries_accepted: Counter::default(),
            deliveries_duplicate: Counter::default(),
            deliveries_ignored: Counter::default(),
            deliveries_rejected: Counter::default(),
            // 0.5 ms to about 4 s: webhooks are answered in milliseconds.
            intake_seconds: Histogram::new(exponential_buckets(0.0005, 2.0, 14)),
            runs_finished: Family::default(),
            run_seconds: Family::new_with_constructor(long_buckets),
            steps_finished: Family::default(),
            step_seconds: Family::new_with_constructor(long_buckets),
            deployments_finished: Family::default(),
            deployment_seconds: Family::new_with_constructor(long_buckets),
            queue_depth: Gauge::default(),
            queue_oldest_seconds: Gauge::default(),
            outbox_rows: Family::default(),
            hosts_drifted: Gauge::default(),
            registry: Registry::default(),
        };
        let r = &mut registry;
        r.register(
            "hoist_deliveries_accepted",
            "new deliveries stored",
            m.deliveries_accepted.clone(),
        );
        r.register(
            "hoist_deliveries_duplicate",
            "deliveries already stored (answered again)",
            m.deliveries_duplicate.clone(),
        );
        r.register(
            "hoist_deliveries_ignored",
            "verified deliveries that start nothing",
            m.deliveries_ignored.clone(),
        );
        r.register(
            "hoist_deliveries_rejected",
            "deliveries refused (signature, body, size, repo)",
            m.deliveries_rejected.clone(),
        );
        r.register(
            "hoist_intake_seconds",
            "time from a webhook request reaching the agent to its answer",
            m.intake_seconds.clone(),
        );
        r.register(
            "hoist_runs_finished",
            "runs that ended, by outcome",
            m.runs_finished.clone(),
        );
        r.register(
            "hoist_run_duration_seconds",
            "how long runs took, by outcome",
            m.run_seconds.clone(),
        );
        r.register(
            "hoist_steps_finished",
            "steps that ended, by outcome",
            m.steps_finished.clone(),
        );
        r.register(
            "hoist_step_duration_seconds",
            "how long steps took, by outcome",
            m.step_seconds.clone(),
        );
        r.register(
            "hoist_deployments_finished",
            "deployments that ended, by kind and verdict",
            m.deployments_finished.clone(),
        );
        r.register(
            "hoist_deployment_duration_seconds",
            "how long deployments took, by kind and verdict",
            m.deployment_seconds.clone(),
        );
        r.register(
            "hoist_queue_depth",
            "runs queued, waiting for a runner",
            m.queue_depth.clone(),
        );
        r.register(
            "hoist_queue_oldest_age_seconds",
            "age of the oldest queued run (0: none waits)",
            m.queue_oldest_seconds.clone(),
        );
        r.register(
            "hoist_outbox_rows",
            "commit statuses and notifications in the outbox, by state (pending: owed)",
            m.outbox_rows.clone(),
        );
        r.register(
            "hoist_hosts_drifted",
            "hosts not running what hoist left there, as the drift watch last found",
            m.hosts_drifted.clone(),
        );
        Metrics { registry, ..m }
    }
}

impl Metrics {
    /// Count a run that ended with `outcome` after `millis`.
    pub fn run_finished(&self, outcome: &str, millis: i64) {
        let labels = OutcomeLabels {
            outcome: outcome.to_string(),
        };
        self.runs_finished.get_or_create(&labels).inc();
        self.run_seconds
            .get_or_create(&labels)
            .observe(seconds(millis));
    }

    /// Count a step that ended with `outcome` after `millis`.
    pub fn step_finished(&self, outcome: &str, millis: i64) {
        let labels = OutcomeLabels {
            outcome: outcome.to_string(),
        };
        self.steps_finished.get_or_create(&labels).inc();
        self.step_seconds
            .get_or_create(&labels)
            .observe(seconds(millis));
    }

    /// Count a deployment of `kind` that ended with `verdict` after `millis`.
    pub fn deployment_finished(&self, kind: &str, verdict: &str, millis: i64) {
        let labels = DeploymentLabels {
            kind: kind.to_string(),
            verdict: verdict.to_string(),
        };
        self.deployments_finished.get_or_create(&labels).inc();
        self.deployment_seconds
            .get_or_create(&labels)
            .observe(seconds(millis));
    }

    /// The exposition text of every metric as it stands.
    pub fn encode(&self) -> anyhow::Result<String> {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

/// Milliseconds as seconds; a clock that stepped back counts as zero.
fn seconds(millis: i64) -> f64 {
    millis.max(0) as f64 / 1000.0
}

/// The content type of [`Metrics::encode`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_keep_their_names_and_durations_are_histograms() {
        let m = Metrics::default();
        m.deliveries_accepted.inc();
        m.run_finished("success", 1500);
        m.deployment_finished("rollback", "succeeded", 2000);
        let text = m.encode().unwrap();
        assert!(text.contains("hoist_deliveries_accepted_total 1"), "{text}");
        assert!(
            text.contains("hoist_runs_finished_total{outcome=\"success\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("hoist_run_duration_seconds_sum{outcome=\"success\"} 1.5"),
            "{text}"
        );
        assert!(
            text.contains(
                "hoist_deployments_finished_total{kind=\"rollback\",verdict=\"succeeded\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains("# TYPE hoist_intake_seconds histogram"),
            "{text}"
        );
        m.outbox_rows
            .get_or_create(&StateLabels {
                state: "pending".into(),
            })
            .set(0);
        let text = m.encode().unwrap();
        assert!(
            text.contains("hoist_outbox_rows{state=\"pending\"} 0\n"),
            "{text}"
        );
    }
}
