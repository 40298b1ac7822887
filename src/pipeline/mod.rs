//! `.hoist.yml`: the pipeline an application's repository declares, parsed strictly.
//!
//! The file comes from whoever can push to the repository, so it is treated as hostile input:
//! it is size-capped before parsing, parsed with tight serde-saphyr budgets (alias bombs, deep
//! nesting), and every key is known (`deny_unknown_fields` on a private raw shape). The raw
//! shape keeps each value's line and column so validation can report *all* the problems at
//! once, each at its place, the way `hoist validate` prints them.
//!
//! Values that come from a push (branch, tag, commit) reach a pipeline in two ways only:
//! placeholders like `${branch}` filled by [`Vars::render`] in declarative fields (image tags,
//! env values, hook argv), and `HOIST_*` environment variables from [`Vars::env`] for
//! `commands` and `shell`. Neither ever splices a value into shell text.
//!
//! # Layout
//! - this file: the model ([`Pipeline`], [`Step`], [`Action`] and the specs), [`parse`] and
//!   the [`Problem`]s it reports;
//! - `prescan`: the size cap and the pass over parser events that refuses alias bombs and deep
//!   nesting before anything is deserialized;
//! - `raw`: the file as written, with places, and the serde-saphyr budgets;
//! - `validate`: raw to model, every rule a problem at its place;
//! - `triggers`: `on.branches` / `on.tags` matching and `[skip ci]`;
//! - `vars`: placeholders, the `HOIST_*` environment, image tags.

mod prescan;
mod raw;
#[cfg(test)]
mod testing;
mod triggers;
mod validate;
mod vars;

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use crate::config::is_var_key;
pub use triggers::skip_ci;
pub use vars::{Fleet, FleetHost, RenderError, TagError, Vars, sanitize_tag};

/// Where the pipeline lives, at the root of the application's repository.
pub const FILE_NAME: &str = ".hoist.yml";

/// Parse and validate a `.hoist.yml`. On failure, every problem found, each at its place
/// (1-based line and column; 0:0 only when the parser gives no location), sorted by place.
/// A YAML or type error stops parsing, so it comes alone; validation problems come together.
pub fn parse(text: &str) -> Result<Pipeline, Vec<Problem>> {
    prescan::prescan(text).map_err(|p| vec![p])?;
    let raw = raw::read(text).map_err(|p| vec![p])?;
    validate::pipeline(raw)
}

/// A parsed and validated `.hoist.yml`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Pipeline {
    /// The application: releases and deployments are per app. `[a-z0-9][a-z0-9_.-]*`, so it
    /// can appear in container names and labels.
    pub app: String,
    /// Which pushes start a run (default: every branch, no tags).
    pub on: Triggers,
    /// Environment for every step; values may hold placeholders.
    pub env: BTreeMap<String, String>,
    /// The release train: when a deploy step fails, every app this run switched is rolled
    /// back to what it ran before, newest first (default false: the other apps stay).
    #[serde(default)]
    pub atomic: bool,
    /// Containers beside the steps for the whole run (`services:`), on the run's own network.
    #[serde(default)]
    pub services: Vec<Service>,
    /// At least one; names unique. Without any `needs`, they run in file order and the first
    /// failing step fails the run; with `needs`, they form the graph [`Pipeline::needs`] gives.
    pub steps: Vec<Step>,
}

impl Pipeline {
    /// Whether any step lists `needs`: then the steps form a graph instead of a file-order chain.
    pub fn is_graph(&self) -> bool {
        self.steps.iter().any(|s| !s.needs.is_empty())
    }

    /// For each step, the indices of the steps it waits for: the previous step in file order,
    /// or its `needs` in a graph. Validation made sure every name exists and there is no cycle.
    pub fn needs(&self) -> Vec<Vec<usize>> {
        if !self.is_graph() {
            return (0..self.steps.len())
                .map(|i| i.checked_sub(1).into_iter().collect())
                .collect();
        }
        let index: BTreeMap<&str, usize> = self
            .steps
            .iter()
            .enumerate()
            .map(|(i, s)| (s.name.as_str(), i))
            .collect();
        self.steps
            .iter()
            .map(|s| {
                s.needs
                    .iter()
                    .filter_map(|n| index.get(n.as_str()).copied())
                    .collect()
            })
            .collect()
    }

    /// What in the pipeline runs on the agent's own machine, so that only a repository with
    /// `trusted = true` may run it: each shell step ("step NAME (shell)") and each deploy
    /// hook ("step NAME (hooks.after_deploy)"), in file order.
    pub fn runs_on_agent(&self) -> Vec<String> {
        let mut found = Vec::new();
        for s in &self.steps {
            match &s.action {
                Action::Shell { .. } => found.push(format!("step {} (shell)", s.name)),
                Action::Deploy(d) => {
                    for (which, argv) in [
                        ("before_host", &d.hooks.before_host),
                        ("after_host", &d.hooks.after_host),
                        ("after_deploy", &d.hooks.after_deploy),
                    ] {
                        if argv.is_some() {
                            found.push(format!("step {} (hooks.{which})", s.name));
                        }
                    }
                }
                Action::Container { .. } | Action::Build(_) => {}
            }
        }
        found
    }

    /// The app a deploy step deploys: the app of its `image` build step.
    pub fn app_of(&self, deploy: &DeploySpec) -> &str {
        self.steps
            .iter()
            .find_map(|s| match &s.action {
                Action::Build(b) if s.name == deploy.image => Some(b.app.as_str()),
                _ => None,
            })
            .unwrap_or(&self.app)
    }
}

/// Which refs start a run. Patterns are globs: `*` stays within one `/`-separated segment,
/// `**` crosses segments (as in GitHub Actions), `?` is one character, `[a-z]` a class;
/// a leading `!` excludes.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Triggers {
    /// Branch patterns; `None` means every branch.
    pub branches: Option<Vec<String>>,
    /// Tag patterns; `None` means no tag.
    pub tags: Option<Vec<String>>,
}

/// A step's `when:`: which pushes run it (branch and tag globs as in `on`, `!` excludes) and
/// whether it waits for approval. Unlike `on`, naming either list limits both kinds of ref:
/// `when: {tags: ["v*"]}` runs on those tags and on no branch.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct When {
    /// Branch patterns; `None`: every branch when `tags` is `None` too, else no branch.
    #[serde(default)]
    pub branches: Option<Vec<String>>,
    /// Tag patterns; `None`: every tag when `branches` is `None` too, else no tag.
    #[serde(default)]
    pub tags: Option<Vec<String>>,
    /// The step waits as `waiting` until someone approves it (API, CLI, page).
    #[serde(default)]
    pub manual: bool,
}

/// One container of `services:`, started before the first step and removed after the run.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Service {
    /// Steps reach it by this name (its alias on the run's network); `[a-z0-9][a-z0-9-]*`.
    pub name: String,
    /// The image, on the builder.
    pub image: String,
    /// argv instead of the image's own command.
    #[serde(default)]
    pub command: Option<Vec<String>>,
    /// Its environment; values may hold placeholders.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Steps start once this answers.
    #[serde(default)]
    pub ready: Option<Ready>,
}

/// A service's `ready:`: a tcp port that must accept a connection before `deadline`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Ready {
    /// The container port.
    pub tcp: u16,
    /// Longest to wait (default 60s).
    #[serde(with = "duration_text")]
    pub deadline: Duration,
}

/// One step of the pipeline.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Step {
    /// Unique within the pipeline, `[A-Za-z0-9_.-]+`; shown in logs and named by `deploy.image`.
    pub name: String,
    /// Steps that must succeed before this one starts (`needs:`); any makes the pipeline a graph.
    #[serde(default)]
    pub needs: Vec<String>,
    /// Which pushes run this step (`when:`), and whether it waits for a person's go.
    #[serde(default)]
    pub when: When,
    /// Environment for this step, over the pipeline's; values may hold placeholders.
    pub env: BTreeMap<String, String>,
    /// Names of agent secrets exposed as env vars (masked in every log).
    pub secrets: Vec<String>,
    /// Longest the step may run; `None` leaves it to the runner's default.
    #[serde(with = "opt_duration_text")]
    pub timeout: Option<Duration>,
    /// What the step does.
    pub action: Action,
}

/// What a step does: exactly one of `image:` (+ `commands:`), `shell:`, `build:`, `deploy:`.
// A pipeline holds a handful of steps: boxing `Deploy` would save nothing worth the noise in
// every match and literal of the runner and the deployer.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Commands run with `sh -e` in a container of `image` on the builder, checkout at
    /// `/workspace`.
    Container {
        /// The image to run the commands in.
        image: String,
        /// Run in order; the first failing command fails the step. Never empty.
        commands: Vec<String>,
    },
    /// Commands run with `sh -e` on the agent's own machine, in the checkout. Never empty.
    Shell {
        /// Run in order; the first failing command fails the step.
        commands: Vec<String>,
    },
    /// Build an image from the checkout and push it.
    Build(BuildSpec),
    /// Roll a built image out across hosts.
    Deploy(DeploySpec),
}

/// `build:`: an image built from the checkout, pushed and verified by digest.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BuildSpec {
    /// The app whose next release this build makes (`build.app`; default the top-level
    /// `app`). One build step per app in a pipeline.
    pub app: String,
    /// Build context, relative to the checkout (default `.`); never leaves it.
    pub context: String,
    /// Dockerfile, relative to the context (default `Dockerfile`).
    pub dockerfile: String,
    /// Where the image is pushed, without a tag (`127.0.0.1:5000/acme/web`).
    pub repository: String,
    /// Tags to push; placeholders allowed; rendered then passed through [`sanitize_tag`].
    /// Default `["${commit}"]`. Tags are for people: deploys go by digest.
    pub tags: Vec<String>,
    /// `--build-arg`s; values may hold placeholders.
    pub args: BTreeMap<String, String>,
}

/// `deploy:`: a verified rolling deployment of a build step's image.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DeploySpec {
    /// The name of an earlier build step whose image is deployed.
    pub image: String,
    /// Host names from the agent's config, in rollout order.
    pub hosts: Vec<String>,
    /// The container run on each host.
    pub container: ContainerSpec,
    /// How a started container proves it is healthy.
    pub health: HealthSpec,
    /// Batching, rollback and retention.
    pub rollout: RolloutSpec,
    /// Commands run on the agent around the rollout.
    pub hooks: HooksSpec,
    /// A `[balancer.NAME]` of the agent that hoist keeps in step with this app's containers.
    #[serde(default)]
    pub balancer: Option<BalancerSpec>,
}

/// `deploy.balancer:`: which balancer sends traffic to the app, and how.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BalancerSpec {
    /// The `[balancer.NAME]` in the agent's config.
    pub name: String,
    /// The `upstream` block's name (None: the app's name).
    #[serde(default)]
    pub upstream: Option<String>,
    /// The container port the balancer sends traffic to (its published host port is listed).
    pub port: u16,
    /// Asked through the balancer's `url` after each switch; must answer 2xx (none: no check).
    #[serde(default)]
    pub check: Option<String>,
    /// After the old containers leave the balancer, before they are stopped (default 1s).
    #[serde(with = "duration_text")]
    pub drain: Duration,
}

/// The container that serves on each host.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ContainerSpec {
    /// Exactly the name of the serving container (`docker logs web`); kept earlier releases
    /// become `NAME-r<release>`.
    pub name: String,
    /// Containers per host (default 1): `NAME`, or `NAME-1` … `NAME-N` when more than one.
    #[serde(default = "one")]
    pub replicas: u32,
    /// Published ports: `HOST:CONTAINER` or `IP:HOST:CONTAINER` (fixed), or `CONTAINER` (the
    /// engine picks the host port), optionally `/tcp` or `/udp`.
    pub ports: Vec<String>,
    /// Container environment; values may hold placeholders (`${host}` gives per-host values).
    pub env: BTreeMap<String, String>,
    /// Arguments after the image (the command); placeholders allowed.
    pub args: Vec<String>,
    /// Volumes, as `docker run -v` takes them.
    pub volumes: Vec<String>,
    /// Names of agent `[secrets]` given to the container as env vars, resolved at deploy time
    /// (a rollback gets the current value): only names are stored, never values.
    #[serde(default)]
    pub secrets: Vec<String>,
    /// A user-defined Docker network the container joins (created on the host when missing),
    /// so that containers on one host reach each other by name.
    #[serde(default)]
    pub network: Option<String>,
    /// Memory limit in bytes (`memory: 512m` in the file).
    #[serde(default)]
    pub memory: Option<u64>,
    /// CPU limit in CPUs (`cpus: "1.5"`).
    #[serde(default)]
    pub cpus: Option<f64>,
    /// Signal that stops the container (`SIGTERM` by default, the image's own when set there).
    #[serde(default)]
    pub stop_signal: Option<String>,
    /// Grace period between the stop signal and SIGKILL (engine default 10s).
    #[serde(default, with = "opt_duration_text")]
    pub stop_timeout: Option<Duration>,
    /// The user the process runs as (`user: "1000:1000"`).
    #[serde(default)]
    pub user: Option<String>,
    /// The process's working directory.
    #[serde(default)]
    pub working_dir: Option<String>,
    /// Overrides the image's entrypoint; placeholders allowed.
    #[serde(default)]
    pub entrypoint: Option<Vec<String>>,
    /// The container's hostname; placeholders allowed (`${host}`).
    #[serde(default)]
    pub hostname: Option<String>,
    /// Extra labels; `hoist.*` is hoist's own and refused.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

fn one() -> u32 {
    1
}

impl ContainerSpec {
    /// Whether every published port is engine-picked: then the new release's containers can
    /// start beside the old ones (no fixed host port is held twice).
    pub fn ports_allow_overlap(&self) -> bool {
        self.ports.iter().all(|p| !is_fixed_port(p))
    }
}

/// `HOST:CONTAINER` (fixed) rather than `CONTAINER` (engine-picked); the suffix does not count.
pub fn is_fixed_port(spec: &str) -> bool {
    let mapping = spec.rsplit_once('/').map_or(spec, |(m, _)| m);
    mapping.contains(':')
}

/// Health checking of a freshly started container.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct HealthSpec {
    /// The probe.
    pub check: HealthCheck,
    /// Time between probes (default 1s).
    #[serde(with = "duration_text")]
    pub interval: Duration,
    /// Longest one probe may take (default 2s).
    #[serde(with = "duration_text")]
    pub timeout: Duration,
    /// Must stay healthy this long to count (default 5s).
    #[serde(with = "duration_text")]
    pub healthy_for: Duration,
    /// Not healthy by then: the host failed (default 60s).
    #[serde(with = "duration_text")]
    pub deadline: Duration,
    /// Failing checks before this do not count (default 0s); passing ones do.
    #[serde(default, with = "duration_text")]
    pub start_period: Duration,
    /// N > 0: N failing checks in a row after `start_period` fail the host at once, without
    /// waiting for the deadline (default 0: only the deadline fails it).
    #[serde(default)]
    pub fail_after: u32,
}

/// The probe of a [`HealthSpec`]. YAML: exactly one of `http: {port, path}`, `tcp: PORT`,
/// `command: [...]`, `docker: true`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum HealthCheck {
    /// GET `path` on the container's `port`; an answer in `status` is healthy.
    Http {
        /// Container port.
        port: u16,
        /// Request path, starting with `/` (default `/`).
        path: String,
        /// The `Host` header to send (default: the host's address and port).
        #[serde(default)]
        host: Option<String>,
        /// The statuses that count as healthy (default 200-399).
        #[serde(default)]
        status: StatusRange,
    },
    /// A TCP connection to this container port is accepted.
    Tcp(u16),
    /// This argv, run in the container, exits 0.
    Command(Vec<String>),
    /// The image's own `HEALTHCHECK` reports healthy.
    Docker,
}

/// An inclusive range of HTTP statuses, written "200-399" or "204".
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct StatusRange {
    /// Lowest status that counts.
    pub from: u16,
    /// Highest status that counts.
    pub to: u16,
}

impl Default for StatusRange {
    /// 2xx and 3xx: the service answered and did not say it is broken.
    fn default() -> Self {
        StatusRange { from: 200, to: 399 }
    }
}

impl StatusRange {
    /// Whether `status` is in the range.
    pub fn contains(&self, status: u16) -> bool {
        (self.from..=self.to).contains(&status)
    }
}

impl std::fmt::Display for StatusRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.from == self.to {
            write!(f, "{}", self.from)
        } else {
            write!(f, "{}-{}", self.from, self.to)
        }
    }
}

/// How a deployment moves through the hosts.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RolloutSpec {
    /// Hosts switched at once (default 1).
    pub max_parallel: u32,
    /// Roll every touched host back when one fails (default true).
    pub auto_rollback: bool,
    /// After the last batch, every host keeps being checked this long (default 0s).
    #[serde(with = "duration_text")]
    pub bake: Duration,
    /// Previous releases kept (stopped) on each host for instant rollback (default 5).
    pub keep: u32,
    /// A host the drift watch finds drifted is brought back to the current release by a
    /// `repair` deployment limited to it (default false: reported only). Absent from specs
    /// stored before it existed, which read as false.
    #[serde(default)]
    pub repair: bool,
}

/// Argv lists run directly (never through a shell) on the agent, in the checkout.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct HooksSpec {
    /// Before a host is switched (`${host}` names it), e.g. drain it from a load balancer.
    pub before_host: Option<Vec<String>>,
    /// After a host is switched and healthy.
    pub after_host: Option<Vec<String>>,
    /// After every host is switched and the bake passed.
    pub after_deploy: Option<Vec<String>>,
}

/// Durations are stored as humantime text ("1m 30s") so a stored release reads well.
mod duration_text {
    use serde::{Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        crate::config::duration::deserialize(d)
    }
}

/// [`duration_text`] for an optional duration (a step's `timeout`).
mod opt_duration_text {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_some(&humantime::format_duration(*d).to_string()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|s| crate::config::duration::parse(&s).map_err(serde::de::Error::custom))
            .transpose()
    }
}

/// A problem at a place in the file.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    /// 1-based; 0 only when the YAML parser gave no location.
    pub line: usize,
    /// 1-based; 0 only when the YAML parser gave no location.
    pub column: usize,
    /// What is wrong and what to do about it.
    pub message: String,
}

/// `FILE:LINE:COL: message` lines, as `hoist validate` prints them.
pub fn format_problems(file: &str, problems: &[Problem]) -> String {
    let mut out = String::new();
    for p in problems {
        // Messages quote the file's own text; control characters in it must not reach a
        // terminal as escape sequences or fake extra lines.
        let mut message = String::with_capacity(p.message.len());
        for c in p.message.chars() {
            if c.is_control() {
                message.extend(c.escape_default());
            } else {
                message.push(c);
            }
        }
        out.push_str(&format!("{file}:{}:{}: {message}\n", p.line, p.column));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::testing::{map, strs, with_deploy};
    use std::collections::BTreeMap;
    use std::time::Duration;

    const SPEC_EXAMPLE: &str = r#"
app: web                                 # releases and deployments are per app
on:
  branches: [main, "release/*"]          # globs; "!pattern" excludes; default: every branch
  tags: ["v*"]                           # default: no tags
env: { RUST_LOG: info }
steps:
  - name: test
    image: lab/busybox:1                 # a container on the builder, checkout at /workspace
    commands: [ "./run-tests.sh" ]       # run with `sh -e`; first failing command fails the step
    secrets: [DATABASE_URL]              # exposed as env vars, masked in every log
    timeout: 10m
  - name: test-on-agent
    shell: [ "make check" ]              # the shell executor: on the agent's own machine
  - name: image
    build:
      context: .
      dockerfile: Dockerfile
      repository: 127.0.0.1:5000/acme/web
      tags: ["${commit_short}", "${branch}"]
      args: { PROFILE: release }
  - name: deploy
    deploy:
      image: image                       # the build step whose image to deploy
      hosts: [web1, web2, web3]
      container:
        name: web
        ports: ["8080:8080"]
        env: { NODE_ID: "${host}" }       # per-host values, e.g. a fixed, distinct cluster id
        args: []
        volumes: []
      health:
        http: { port: 8080, path: /healthz }   # or tcp: 8080, or command: [...], or docker: true
        interval: 1s
        timeout: 2s
        healthy_for: 5s                  # must stay healthy this long to count
        deadline: 60s                    # not healthy by then: failed
      rollout:
        max_parallel: 1                  # hosts switched at once
        auto_rollback: true
        bake: 30s                        # after the last batch, every host keeps being checked
        keep: 5                          # previous releases kept on each host for instant rollback
        repair: false                    # true: a drifted host is brought back to the current release, journaled
      hooks:
        before_host: [ "scripts/drain", "${host}" ]    # argv, run on the agent in the checkout
        after_host:  [ "scripts/undrain", "${host}" ]
        after_deploy: [ "scripts/notify" ]
"#;

    #[test]
    fn spec_example_parses_into_the_expected_pipeline() {
        let secs = Duration::from_secs;
        let expected = Pipeline {
            app: "web".into(),
            on: Triggers {
                branches: Some(strs(&["main", "release/*"])),
                tags: Some(strs(&["v*"])),
            },
            env: map(&[("RUST_LOG", "info")]),
            atomic: false,
            services: vec![],
            steps: vec![
                Step {
                    name: "test".into(),
                    needs: vec![],
                    when: When::default(),
                    env: BTreeMap::new(),
                    secrets: strs(&["DATABASE_URL"]),
                    timeout: Some(secs(600)),
                    action: Action::Container {
                        image: "lab/busybox:1".into(),
                        commands: strs(&["./run-tests.sh"]),
                    },
                },
                Step {
                    name: "test-on-agent".into(),
                    needs: vec![],
                    when: When::default(),
                    env: BTreeMap::new(),
                    secrets: vec![],
                    timeout: None,
                    action: Action::Shell {
                        commands: strs(&["make check"]),
                    },
                },
                Step {
                    name: "image".into(),
                    needs: vec![],
                    when: When::default(),
                    env: BTreeMap::new(),
                    secrets: vec![],
                    timeout: None,
                    action: Action::Build(BuildSpec {
                        app: "web".into(),
                        context: ".".into(),
                        dockerfile: "Dockerfile".into(),
                        repository: "127.0.0.1:5000/acme/web".into(),
                        tags: strs(&["${commit_short}", "${branch}"]),
                        args: map(&[("PROFILE", "release")]),
                    }),
                },
                Step {
                    name: "deploy".into(),
                    needs: vec![],
                    when: When::default(),
                    env: BTreeMap::new(),
                    secrets: vec![],
                    timeout: None,
                    action: Action::Deploy(DeploySpec {
                        image: "image".into(),
                        hosts: strs(&["web1", "web2", "web3"]),
                        container: ContainerSpec {
                            name: "web".into(),
                            replicas: 1,
                            ports: strs(&["8080:8080"]),
                            env: map(&[("NODE_ID", "${host}")]),
                            args: vec![],
                            volumes: vec![],
                            ..ContainerSpec::default()
                        },
                        health: HealthSpec {
                            check: HealthCheck::Http {
                                port: 8080,
                                path: "/healthz".into(),
                                host: None,
                                status: StatusRange::default(),
                            },
                            interval: secs(1),
                            timeout: secs(2),
                            healthy_for: secs(5),
                            deadline: secs(60),
                            start_period: Duration::ZERO,
                            fail_after: 0,
                        },
                        rollout: RolloutSpec {
                            max_parallel: 1,
                            auto_rollback: true,
                            bake: secs(30),
                            keep: 5,
                            repair: false,
                        },
                        hooks: HooksSpec {
                            before_host: Some(strs(&["scripts/drain", "${host}"])),
                            after_host: Some(strs(&["scripts/undrain", "${host}"])),
                            after_deploy: Some(strs(&["scripts/notify"])),
                        },
                        balancer: None,
                    }),
                },
            ],
        };
        assert_eq!(parse(SPEC_EXAMPLE), Ok(expected));
    }

    #[test]
    fn a_release_stores_its_deploy_spec_as_json_and_reads_it_back() {
        let pipeline = parse(SPEC_EXAMPLE).unwrap();
        let json = serde_json::to_string(&pipeline).unwrap();
        assert!(json.contains(r#""bake":"30s""#), "{json}");
        let back: Pipeline = serde_json::from_str(&json).unwrap();
        assert_eq!(back, pipeline);
        let Action::Deploy(deploy) = &pipeline.steps[3].action else {
            panic!("step 3 deploys")
        };
        let json = serde_json::to_string(deploy).unwrap();
        assert_eq!(serde_json::from_str::<DeploySpec>(&json).unwrap(), *deploy);
        for check in [
            HealthCheck::Tcp(80),
            HealthCheck::Command(strs(&["true"])),
            HealthCheck::Docker,
        ] {
            let json = serde_json::to_string(&check).unwrap();
            assert_eq!(serde_json::from_str::<HealthCheck>(&json).unwrap(), check);
        }
    }

    #[test]
    fn defaults() {
        let p = parse("app: web\nsteps:\n  - name: i\n    build: {repository: r/a}\n").unwrap();
        assert_eq!(
            p.on,
            Triggers {
                branches: None,
                tags: None
            }
        );
        assert!(p.env.is_empty());
        let Action::Build(b) = &p.steps[0].action else {
            panic!("a build step")
        };
        assert_eq!(
            (b.context.as_str(), b.dockerfile.as_str()),
            (".", "Dockerfile")
        );
        assert_eq!(b.tags, strs(&["${commit}"]));

        let p = parse(&with_deploy("")).unwrap();
        let Action::Deploy(d) = &p.steps[1].action else {
            panic!("a deploy step")
        };
        assert_eq!(d.health.check, HealthCheck::Tcp(8080));
        let secs = Duration::from_secs;
        assert_eq!(
            (
                d.health.interval,
                d.health.timeout,
                d.health.healthy_for,
                d.health.deadline
            ),
            (secs(1), secs(2), secs(5), secs(60))
        );
        assert_eq!(
            d.rollout,
            RolloutSpec {
                max_parallel: 1,
                auto_rollback: true,
                bake: Duration::ZERO,
                keep: 5,
                repair: false,
            }
        );
        assert_eq!(d.hooks, HooksSpec::default());
        assert_eq!(d.container.ports, Vec::<String>::new());

        // One string is one command: `shell: make check`, or a `|` script.
        let p = parse("app: web\nsteps:\n  - {name: a, shell: make check}\n  - name: b\n    image: x\n    commands: |\n      make\n      make test\n").unwrap();
        assert_eq!(
            p.steps[0].action,
            Action::Shell {
                commands: strs(&["make check"])
            }
        );
        assert_eq!(
            p.steps[1].action,
            Action::Container {
                image: "x".into(),
                commands: strs(&["make\nmake test\n"])
            }
        );

        let p = parse(&with_deploy("").replace("{tcp: 8080}", "{http: {port: 80}}")).unwrap();
        let Action::Deploy(d) = &p.steps[1].action else {
            panic!("a deploy step")
        };
        assert_eq!(
            d.health.check,
            HealthCheck::Http {
                port: 80,
                path: "/".into(),
                host: None,
                status: StatusRange::default(),
            }
        );
    }

    #[test]
    fn every_example_pipeline_parses() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "yml") {
                let text = std::fs::read_to_string(&path).unwrap();
                if let Err(p) = parse(&text) {
                    panic!("{}", format_problems(&path.display().to_string(), &p));
                }
                seen += 1;
            }
        }
        assert!(
            seen >= 2,
            "pipelines/minimal.yml and pipelines/full.yml at least"
        );
    }

    #[test]
    fn problems_print_without_control_characters() {
        let out = format_problems(
            "f.yml",
            &[Problem {
                line: 2,
                column: 3,
                message: "bad \u{1b}[31m\nx".into(),
            }],
        );
        assert_eq!(out, "f.yml:2:3: bad \\u{1b}[31m\\nx\n");
    }
}
