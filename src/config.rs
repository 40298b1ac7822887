//! `hoist.toml`: the agent's configuration, parsed strictly.
//!
//! Unknown keys and bad values are errors naming the key and its line. Secrets are never
//! written in the file: they are `env:NAME` or `file:PATH` references, resolved once at start,
//! and a missing one stops the agent with its name.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::forge::Forge;

/// The agent's whole configuration, after validation and secret resolution.
#[derive(Debug, Clone)]
pub struct Config {
    /// Address the HTTP server binds.
    pub listen: SocketAddr,
    /// Root of everything hoist writes: the database, workspaces, logs.
    pub data_dir: PathBuf,
    /// The engine that runs steps and builds images.
    pub builder: BuilderConfig,
    /// Limits of the run queue.
    pub runner: RunnerConfig,
    /// Repositories whose webhooks hoist accepts.
    pub repos: Vec<RepoConfig>,
    /// Registries hoist pushes to and verifies against.
    pub registries: Vec<RegistryConfig>,
    /// Docker engines hoist may deploy to, by name.
    pub hosts: BTreeMap<String, HostConfig>,
    /// Values pipelines may ask for by name (already resolved).
    pub secrets: BTreeMap<String, Secret>,
    /// API tokens, by the SHA-256 of the token.
    pub tokens: Vec<TokenConfig>,
    /// Load balancers hoist keeps in step with what runs, by name (`[balancer.NAME]`).
    pub balancers: BTreeMap<String, BalancerConfig>,
    /// Where people reach the web page, without a trailing `/`: the links in commit statuses
    /// and notifications start with it (default `http://` and `listen`).
    pub public_url: String,
    /// Chat webhooks (`[[notify]]`) and the events each one is sent.
    pub notify: Vec<NotifyConfig>,
}

/// `[[notify]]`: a webhook that receives a JSON POST per subscribed event.
#[derive(Debug, Clone)]
pub struct NotifyConfig {
    /// Where to POST. A chat webhook's URL carries its own credential, so it is a secret
    /// (`env:` or `file:`), never written in the file.
    pub url: Secret,
    /// The events this webhook is sent, in the order written.
    pub events: Vec<Event>,
}

/// What a `[[notify]]` can subscribe to; `events` names them by these strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Event {
    /// A run ended failed, timed out or interrupted.
    RunFailed,
    /// A run ended successful.
    RunSucceeded,
    /// Every host of a deployment was verified on its release.
    DeploymentSucceeded,
    /// A deployment failed and every touched host was verified back on the release before.
    DeploymentRolledBack,
    /// A deployment failed and its hosts could not all be verified on one release.
    DeploymentFailed,
    /// A host stopped running what hoist left on it (reported by the drift watch).
    HostDrifted,
}

impl Event {
    /// Every event, in the order the docs list them.
    pub const ALL: [Event; 6] = [
        Event::RunFailed,
        Event::RunSucceeded,
        Event::DeploymentSucceeded,
        Event::DeploymentRolledBack,
        Event::DeploymentFailed,
        Event::HostDrifted,
    ];

    /// The name `events` and the JSON `event` field use.
    pub fn as_str(self) -> &'static str {
        match self {
            Event::RunFailed => "run.failed",
            Event::RunSucceeded => "run.succeeded",
            Event::DeploymentSucceeded => "deployment.succeeded",
            Event::DeploymentRolledBack => "deployment.rolled_back",
            Event::DeploymentFailed => "deployment.failed",
            Event::HostDrifted => "host.drifted",
        }
    }

    pub fn from_name(name: &str) -> Option<Event> {
        Event::ALL.into_iter().find(|e| e.as_str() == name)
    }
}

/// `[balancer.NAME]`: an nginx whose file hoist owns, either on the agent's machine or in a
/// container on a host.
#[derive(Debug, Clone, PartialEq)]
pub struct BalancerConfig {
    /// The file hoist owns: one `upstream` block per app that uses the balancer. On the agent's
    /// machine, or inside `container` when `place` is a container.
    pub config: PathBuf,
    /// Run before every reload; a failing test puts the previous file back (default `nginx -t`).
    pub test: Vec<String>,
    /// Makes nginx read the file again (default `nginx -s reload`).
    pub reload: Vec<String>,
    /// Where hoist reaches the balancer for `balancer.check` (none: no check).
    pub url: Option<String>,
    /// Where the file is and where `test` and `reload` run.
    pub place: BalancerPlace,
}

/// Where a balancer's nginx runs.
#[derive(Debug, Clone, PartialEq)]
pub enum BalancerPlace {
    /// On the agent's machine: the file is written there, `test` and `reload` run there.
    Agent,
    /// In a container on a configured host: the file goes through the engine's archive API,
    /// `test` and `reload` run by exec.
    Container {
        /// The host's name (`[host.NAME]`).
        host: String,
        /// The container's name on that host.
        container: String,
    },
}

/// `[balancer.NAME]` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBalancer {
    kind: Spanned<String>,
    config: Spanned<PathBuf>,
    test: Option<Vec<String>>,
    reload: Option<Vec<String>>,
    url: Option<Spanned<String>>,
    host: Option<Spanned<String>>,
    container: Option<Spanned<String>>,
}

/// `[builder]`: where steps run and images are built.
#[derive(Debug, Clone)]
pub struct BuilderConfig {
    /// Docker endpoint of the build engine (`unix://…`, `tcp://…`; default
    /// `unix:///var/run/docker.sock`).
    pub docker: String,
}

/// `[A-Za-z0-9_-]+`: a key of `[host.X] vars` that a placeholder (`${host.KEY}`) can name.
/// Here, not in `pipeline`, because the config checks its keys and the pipeline depends on the
/// config, never the other way round.
pub fn is_var_key(key: &str) -> bool {
    !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// `[runner]`: limits of the run queue.
#[derive(Debug, Clone)]
pub struct RunnerConfig {
    /// Runs executed at once (default 2).
    pub max_parallel: u32,
    /// How often every repo's heads are listed to find pushes whose webhook never came
    /// (default 60s; 0s disables).
    pub poll_interval: Duration,
    /// What finished runs (their rows, steps and logs) and deliveries are kept.
    pub retention: Retention,
    /// Failed runs' workspaces kept for debugging, newest first (default 5).
    pub keep_workspaces: usize,
    /// Steps of one run at once, where `needs:` lets them run side by side (default 4).
    pub max_parallel_steps: u32,
    /// Most bytes of output stored per step (and per service) of a run (`max_log_size`,
    /// default 8 MiB): past it a marker line is stored, the step goes on and the rest of its
    /// output is dropped, as GitLab's runner does with its `output_limit`. A step printing
    /// forever fills neither memory nor disk.
    pub max_log_size: u64,
    /// How often the drift watch reads back every app's hosts (default 30s; 0s disables).
    pub watch_interval: Duration,
}

/// How many finished runs, and for how long, the store keeps per repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// The newest this many finished runs of each repository are kept (default 1000).
    pub keep_runs: u32,
    /// Finished runs older than this are pruned whatever their number (default 90 days;
    /// None: no age limit).
    pub keep_for: Option<Duration>,
}

/// A repository hoist accepts pushes for. Its `Debug` shows the URL redacted (it may carry a
/// token) and the secrets as `***`.
#[derive(Clone)]
pub struct RepoConfig {
    /// `owner/name` as the forge sends it.
    pub name: String,
    /// Where hoist fetches from; never a URL taken from a payload.
    pub url: String,
    /// Which forge's webhook route and signature scheme this repo uses.
    pub forge: Forge,
    /// The webhook secret (resolved).
    pub secret: Secret,
    /// Hosts this repository may deploy to.
    pub hosts: Vec<String>,
    /// Names of `[secrets]` this repository's pipelines may use, in steps and containers
    /// (default: none).
    pub secrets: Vec<String>,
    /// A newer push to a branch cancels its older queued or running run.
    pub cancel_superseded: bool,
    /// `trusted`: the repository may use shell steps and deploy hooks, which run on the
    /// agent's own machine (default false: anyone who can push a branch could otherwise run
    /// code beside the agent's database and secrets).
    pub trusted: bool,
    /// The token hoist reports commit statuses with (resolved); None: no statuses.
    pub status_token: Option<Secret>,
    /// The forge's API base, without a trailing `/` (`api`; default: the forge's public one,
    /// [`crate::forge::status::default_api`]).
    pub api: String,
}

impl fmt::Debug for RepoConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RepoConfig")
            .field("name", &self.name)
            .field("url", &crate::redact::url(&self.url))
            .field("forge", &self.forge)
            .field("secret", &self.secret)
            .field("hosts", &self.hosts)
            .field("secrets", &self.secrets)
            .field("cancel_superseded", &self.cancel_superseded)
            .field("status_token", &self.status_token)
            .field("api", &self.api)
            .finish()
    }
}

/// Credentials and transport for one registry.
#[derive(Debug, Clone)]
pub struct RegistryConfig {
    /// `registry.example.com` or `127.0.0.1:5000`.
    pub host: String,
    /// Plain HTTP (lab and loopback registries only).
    pub insecure: bool,
    pub username: Option<Secret>,
    pub password: Option<Secret>,
}

/// One Docker engine hoist may deploy to.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostConfig {
    /// `unix://…`, `tcp://ADDR:PORT` (with `tls`), or `ssh://user@addr`.
    pub docker: String,
    /// Where health checks reach the host's published ports.
    pub address: String,
    /// Client certificate, key and CA for `tcp://` engines.
    pub tls: Option<TlsConfig>,
    /// Per-host values for `${host.KEY}` and `${hosts.KEY}` in deploy fields (default none).
    #[serde(default)]
    pub vars: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// An API token, stored only as its hash.
#[derive(Debug, Clone)]
pub struct TokenConfig {
    pub name: String,
    /// The 32 bytes of SHA-256 of the token.
    pub sha256: [u8; 32],
}

/// The shortest `[secrets]` value accepted: every log masks each of them, and masking a
/// shorter one (`on`, `1`) would hide ordinary text and show where the value occurs.
pub const MIN_SECRET_CHARS: usize = 4;

/// A resolved secret value. Its `Debug` and `Display` never show the value.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }
    /// The value itself: only for signing, verifying and passing to steps.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// The file as written, before validation. Spans are kept where a later check must name a line.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default = "default_listen")]
    listen: Spanned<String>,
    #[serde(default = "default_data_dir")]
    data_dir: PathBuf,
    #[serde(default)]
    builder: RawBuilder,
    #[serde(default)]
    runner: RawRunner,
    #[serde(default)]
    repo: Vec<RawRepo>,
    #[serde(default)]
    registry: Vec<RawRegistry>,
    #[serde(default)]
    host: BTreeMap<String, Spanned<HostConfig>>,
    #[serde(default)]
    secrets: BTreeMap<String, Spanned<String>>,
    #[serde(default)]
    token: Vec<RawToken>,
    #[serde(default)]
    balancer: BTreeMap<String, Spanned<RawBalancer>>,
    public_url: Option<Spanned<String>>,
    #[serde(default)]
    notify: Vec<RawNotify>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNotify {
    url: Spanned<String>,
    events: Spanned<Vec<String>>,
}

/// `[builder]` as written: the endpoint keeps its place for the error that refuses it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBuilder {
    #[serde(default = "default_docker")]
    docker: Spanned<String>,
}

impl Default for RawBuilder {
    fn default() -> Self {
        RawBuilder {
            docker: default_docker(),
        }
    }
}

/// `[runner]` as written: `max_parallel` keeps its place for the error that refuses it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRunner {
    #[serde(default = "default_max_parallel")]
    max_parallel: Spanned<u32>,
    /// Text until `runner()` parses it, so a bad value's error can name the key.
    #[serde(default)]
    poll_interval: Option<Spanned<String>>,
    #[serde(default = "default_keep_runs")]
    keep_runs: Spanned<u32>,
    /// Text until `runner()` parses it, so a bad value's error can name the key.
    #[serde(default)]
    keep_runs_for: Option<Spanned<String>>,
    #[serde(default = "default_keep_workspaces")]
    keep_workspaces: usize,
    #[serde(default = "default_max_parallel_steps")]
    max_parallel_steps: Spanned<u32>,
    /// Text until `runner()` parses it, so a bad value's error can name the key.
    #[serde(default)]
    max_log_size: Option<Spanned<String>>,
    watch_interval: Option<Spanned<String>>,
}

impl Default for RawRunner {
    fn default() -> Self {
        RawRunner {
            max_parallel: default_max_parallel(),
            poll_interval: None,
            keep_runs: default_keep_runs(),
            keep_runs_for: None,
            keep_workspaces: default_keep_workspaces(),
            max_parallel_steps: default_max_parallel_steps(),
            max_log_size: None,
            watch_interval: None,
        }
    }
}

/// `max_log_size` when absent: GitLab's runner keeps 4 MiB of a job's log by default; a
/// little more room here, since a run's steps each have their own.
pub const DEFAULT_MAX_LOG_SIZE: u64 = 8 * 1024 * 1024;
/// The smallest `max_log_size`: room for a few lines and the marker.
const MIN_MAX_LOG_SIZE: u64 = 1024;
/// The largest `max_log_size`: a log is read back whole by people and pages.
const MAX_MAX_LOG_SIZE: u64 = 1024 * 1024 * 1024;

/// A size with a binary unit (`512KiB`, `8MiB`, `1GiB`, or bare bytes: `4096`, `4096B`).
fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let digits = t.len() - t.trim_start_matches(|c: char| c.is_ascii_digit()).len();
    let (number, unit) = t.split_at(digits);
    let scale: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1024,
        "MiB" => 1024 * 1024,
        "GiB" => 1024 * 1024 * 1024,
        _ => 0,
    };
    let value = number
        .parse::<u64>()
        .ok()
        .filter(|_| scale > 0)
        .and_then(|n| n.checked_mul(scale))
        .ok_or_else(|| {
            format!("{text:?} is not a size; write a whole number with B, KiB, MiB or GiB, e.g. \"8MiB\"")
        })?;
    if !(MIN_MAX_LOG_SIZE..=MAX_MAX_LOG_SIZE).contains(&value) {
        return Err(format!(
            "{text:?} is out of range; write between 1KiB and 1GiB"
        ));
    }
    Ok(value)
}

fn default_keep_runs() -> Spanned<u32> {
    Spanned::new(0..0, 1000)
}

/// Runs' age bound may be long (an audit trail), but not so long that `now - age` overflows.
const MAX_KEEP_RUNS_FOR: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

fn default_keep_runs_for() -> Duration {
    Duration::from_secs(90 * 24 * 3600)
}

fn default_keep_workspaces() -> usize {
    5
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRepo {
    name: Spanned<String>,
    url: Spanned<String>,
    forge: Spanned<String>,
    secret: Spanned<String>,
    #[serde(default = "no_hosts")]
    hosts: Spanned<Vec<String>>,
    #[serde(default = "no_hosts")]
    secrets: Spanned<Vec<String>>,
    #[serde(default = "default_true")]
    cancel_superseded: bool,
    #[serde(default)]
    trusted: bool,
    status_token: Option<Spanned<String>>,
    api: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRegistry {
    host: Spanned<String>,
    #[serde(default)]
    insecure: bool,
    username: Option<Spanned<String>>,
    password: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawToken {
    name: String,
    sha256: Spanned<String>,
}

// Defaults are never reported, so the empty span of a defaulted value is never shown.
fn default_listen() -> Spanned<String> {
    Spanned::new(0..0, "127.0.0.1:8080".to_string())
}
fn default_data_dir() -> PathBuf {
    PathBuf::from("/var/lib/hoist")
}
fn default_docker() -> Spanned<String> {
    Spanned::new(0..0, "unix:///var/run/docker.sock".to_string())
}
fn default_max_parallel() -> Spanned<u32> {
    Spanned::new(0..0, 2)
}
fn default_max_parallel_steps() -> Spanned<u32> {
    Spanned::new(0..0, 4)
}
fn default_watch_interval() -> Duration {
    Duration::from_secs(30)
}

fn default_poll_interval() -> Duration {
    Duration::from_secs(60)
}
fn no_hosts() -> Spanned<Vec<String>> {
    Spanned::new(0..0, Vec::new())
}
fn default_true() -> bool {
    true
}

/// A config error that names the file, line and column, like a compiler.
#[derive(Debug, thiserror::Error)]
#[error("{file}:{line}:{column}: {message}")]
pub struct ConfigError {
    pub file: String,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

/// Where secrets come from; the agent uses the process environment and the file system.
pub trait SecretSource {
    fn env(&self, name: &str) -> Option<String>;
    fn file(&self, path: &Path) -> std::io::Result<String>;
}

/// The real environment and file system.
pub struct System;

impl SecretSource for System {
    fn env(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
    fn file(&self, path: &Path) -> std::io::Result<String> {
        std::fs::read_to_string(path)
    }
}

impl Config {
    /// Read, parse, validate and resolve secrets.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.display().to_string(),
            line: 0,
            column: 0,
            message: format!(
                "cannot read the config file: {e}; pass --config FILE or set HOIST_CONFIG"
            ),
        })?;
        Config::parse(&path.display().to_string(), &text, &System)
    }

    /// Parse the text of a config file named `file` (for messages). Checks run in the order
    /// of the file's sections and stop at the first error.
    pub fn parse(file: &str, text: &str, source: &dyn SecretSource) -> Result<Config, ConfigError> {
        let doc = Doc { file, text };
        let raw: RawConfig = toml::from_str(text)
            .map_err(|e| doc.at(e.span().unwrap_or(0..0), e.message().trim()))?;
        let listen = doc.listen(&raw.listen)?;
        let runner = doc.runner(raw.runner)?;
        let builder = doc.builder(raw.builder)?;
        let hosts = doc.hosts(raw.host)?;
        let secret_names: Vec<&str> = raw.secrets.keys().map(String::as_str).collect();
        let repos = doc.repos(raw.repo, &hosts, &secret_names, source)?;
        let registries = doc.registries(raw.registry, source)?;
        let secrets = doc.secrets(raw.secrets, source)?;
        let tokens = doc.tokens(raw.token)?;
        let balancers = doc.balancers(raw.balancer, &hosts)?;
        let public_url = doc.public_url(raw.public_url.as_ref(), listen)?;
        let notify = doc.notify(raw.notify, source)?;
        Ok(Config {
            public_url,
            notify,
            listen,
            data_dir: raw.data_dir,
            builder,
            runner,
            repos,
            registries,
            hosts,
            secrets,
            tokens,
            balancers,
        })
    }

    /// The configured repository of this name, whatever its forge.
    pub fn repo(&self, name: &str) -> Option<&RepoConfig> {
        self.repos.iter().find(|r| r.name == name)
    }

    /// The values of the secrets `names` for a pipeline of repository `repo`, each allowed by
    /// its `[[repo]] secrets`; `what` says who asks ("step test", "container web"). The error
    /// names the list to extend.
    pub fn secret_values(
        &self,
        repo: &str,
        names: &[String],
        what: &str,
    ) -> anyhow::Result<Vec<(String, String)>> {
        let allowed = self.repo(repo).map(|r| r.secrets.as_slice()).unwrap_or(&[]);
        let mut values = Vec::new();
        for name in names {
            if !allowed.contains(name) {
                anyhow::bail!(
                    "{what} asks for secret {name}, which repository {repo} may not use; add \
                     \"{name}\" to secrets of its [[repo]] entry in hoist.toml"
                );
            }
            let value = self.secrets.get(name).ok_or_else(|| {
                anyhow::anyhow!("secret {name} is not in [secrets] of hoist.toml; add it there")
            })?;
            values.push((name.clone(), value.expose().to_string()));
        }
        Ok(values)
    }
}

/// The file being parsed: its name and text, to turn a span into `FILE:LINE:COL`.
struct Doc<'a> {
    file: &'a str,
    text: &'a str,
}

impl Doc<'_> {
    fn at(&self, span: Range<usize>, message: impl fmt::Display) -> ConfigError {
        let (line, column) = line_col(self.text, span.start);
        ConfigError {
            file: self.file.to_string(),
            line,
            column,
            message: message.to_string(),
        }
    }

    fn listen(&self, listen: &Spanned<String>) -> Result<SocketAddr, ConfigError> {
        listen.get_ref().parse().map_err(|_| {
            self.at(
                listen.span(),
                format!(
                    "listen = {:?} is not an address; write it as \"127.0.0.1:8080\"",
                    listen.get_ref()
                ),
            )
        })
    }

    /// The duration `key` = `value` (at most `max`), or `default` when the key is absent.
    fn duration(
        &self,
        key: &str,
        value: Option<&Spanned<String>>,
        max: Duration,
        default: Duration,
    ) -> Result<Duration, ConfigError> {
        match value {
            None => Ok(default),
            Some(v) => duration::parse_at_most(v.get_ref(), max)
                .map_err(|e| self.at(v.span(), format!("{key}: {e}"))),
        }
    }

    fn runner(&self, runner: RawRunner) -> Result<RunnerConfig, ConfigError> {
        if *runner.max_parallel.get_ref() == 0 {
            return Err(self.at(
                runner.max_parallel.span(),
                "runner.max_parallel must be at least 1",
            ));
        }
        if *runner.keep_runs.get_ref() == 0 {
            return Err(self.at(
                runner.keep_runs.span(),
                "runner.keep_runs must be at least 1 (the runs kept per repository; use keep_runs_for to bound their age)",
            ));
        }
        if *runner.max_parallel_steps.get_ref() == 0 {
            return Err(self.at(
                runner.max_parallel_steps.span(),
                "runner.max_parallel_steps must be at least 1",
            ));
        }
        let poll_interval = self.duration(
            "runner.poll_interval",
            runner.poll_interval.as_ref(),
            duration::MAX,
            default_poll_interval(),
        )?;
        let watch_interval = self.duration(
            "runner.watch_interval",
            runner.watch_interval.as_ref(),
            duration::MAX,
            default_watch_interval(),
        )?;
        let keep_runs_for = self.duration(
            "runner.keep_runs_for",
            runner.keep_runs_for.as_ref(),
            MAX_KEEP_RUNS_FOR,
            default_keep_runs_for(),
        )?;
        let max_log_size = match &runner.max_log_size {
            None => DEFAULT_MAX_LOG_SIZE,
            Some(v) => parse_size(v.get_ref())
                .map_err(|e| self.at(v.span(), format!("runner.max_log_size: {e}")))?,
        };
        Ok(RunnerConfig {
            max_log_size,
            max_parallel: runner.max_parallel.into_inner(),
            poll_interval,
            retention: Retention {
                keep_runs: runner.keep_runs.into_inner(),
                keep_for: Some(keep_runs_for).filter(|d| !d.is_zero()),
            },
            keep_workspaces: runner.keep_workspaces,
            max_parallel_steps: runner.max_parallel_steps.into_inner(),
            watch_interval,
        })
    }

    fn builder(&self, builder: RawBuilder) -> Result<BuilderConfig, ConfigError> {
        check_docker_url("builder.docker", builder.docker.get_ref())
            .map_err(|e| self.at(builder.docker.span(), e))?;
        Ok(BuilderConfig {
            docker: builder.docker.into_inner(),
        })
    }

    fn balancers(
        &self,
        raw: BTreeMap<String, Spanned<RawBalancer>>,
        hosts: &BTreeMap<String, HostConfig>,
    ) -> Result<BTreeMap<String, BalancerConfig>, ConfigError> {
        let mut out = BTreeMap::new();
        for (name, b) in raw {
            let span = b.span();
            let b = b.into_inner();
            if b.kind.get_ref() != "nginx" {
                return Err(self.at(
                    b.kind.span(),
                    format!(
                        "balancer.{name}.kind {:?} is not a kind hoist drives; write kind = \"nginx\" \
                         (other balancers: drive them with deploy hooks)",
                        b.kind.get_ref()
                    ),
                ));
            }
            if !b.config.get_ref().is_absolute() {
                return Err(self.at(
                    b.config.span(),
                    format!(
                        "balancer.{name}.config must be an absolute path (the file hoist owns, \
                         like /etc/nginx/conf.d/hoist.conf)"
                    ),
                ));
            }
            let place = match (b.host, b.container) {
                (None, None) => BalancerPlace::Agent,
                (Some(h), Some(c)) => {
                    if !hosts.contains_key(h.get_ref()) {
                        return Err(self.at(
                            h.span(),
                            format!(
                                "balancer.{name}.host {:?} is not a [host.NAME] of this file; add it or name another",
                                h.get_ref()
                            ),
                        ));
                    }
                    BalancerPlace::Container {
                        host: h.into_inner(),
                        container: c.into_inner(),
                    }
                }
                (Some(_), None) | (None, Some(_)) => {
                    return Err(self.at(
                        span,
                        format!(
                            "balancer.{name}: `host` and `container` go together (nginx in a \
                             container on a host); give both, or neither for nginx on the agent's machine"
                        ),
                    ));
                }
            };
            let argv = |v: Option<Vec<String>>, key: &str, default: &[&str]| match v {
                None => Ok(default.iter().map(|s| s.to_string()).collect()),
                Some(v) if v.is_empty() || v[0].trim().is_empty() => Err(self.at(
                    span.clone(),
                    format!("balancer.{name}.{key} is empty: give an argv, like {default:?}"),
                )),
                Some(v) => Ok(v),
            };
            let test = argv(b.test, "test", &["nginx", "-t"])?;
            let reload = argv(b.reload, "reload", &["nginx", "-s", "reload"])?;
            if let Some(url) = &b.url {
                let u = url.get_ref();
                if !(u.starts_with("http://") || u.starts_with("https://")) {
                    return Err(self.at(
                        url.span(),
                        format!("balancer.{name}.url {u:?} is not an http:// or https:// URL"),
                    ));
                }
            }
            out.insert(
                name,
                BalancerConfig {
                    config: b.config.into_inner(),
                    test,
                    reload,
                    url: b
                        .url
                        .map(|u| u.into_inner().trim_end_matches('/').to_string()),
                    place,
                },
            );
        }
        Ok(out)
    }

    fn hosts(
        &self,
        raw: BTreeMap<String, Spanned<HostConfig>>,
    ) -> Result<BTreeMap<String, HostConfig>, ConfigError> {
        let mut hosts = BTreeMap::new();
        for (name, host) in raw {
            let span = host.span();
            let host = host.into_inner();
            check_docker_url(&format!("host.{name}.docker"), &host.docker)
                .map_err(|e| self.at(span.clone(), e))?;
            if host.docker.starts_with("tcp://") && host.tls.is_none() {
                return Err(self.at(
                    span,
                    format!(
                        "host.{name}: a tcp:// engine needs tls = {{ ca = …, cert = …, key = … }}; hoist does not talk to an unauthenticated remote engine"
                    ),
                ));
            }
            if host.address.trim().is_empty() {
                return Err(self.at(
                    span,
                    format!("host.{name}.address is empty; give the address health checks reach"),
                ));
            }
            if let Some(key) = host
                .vars
                .keys()
                .find(|k| !is_var_key(k) || ["name", "address"].contains(&k.as_str()))
            {
                return Err(self.at(
                    span,
                    format!(
                        "host.{name}.vars: key {key:?} cannot be a placeholder: use letters, \
                         digits, `_` and `-`, and not `name` or `address` (${{host.address}} is the \
                         host's own address)"
                    ),
                ));
            }
            hosts.insert(name, host);
        }
        Ok(hosts)
    }

    fn repos(
        &self,
        raw: Vec<RawRepo>,
        hosts: &BTreeMap<String, HostConfig>,
        secrets: &[&str],
        source: &dyn SecretSource,
    ) -> Result<Vec<RepoConfig>, ConfigError> {
        let mut repos: Vec<RepoConfig> = Vec::new();
        for r in raw {
            let repo = self.repo(r, &repos, hosts, secrets, source)?;
            repos.push(repo);
        }
        Ok(repos)
    }

    /// One `[[repo]]`, named once among the `earlier` ones.
    fn repo(
        &self,
        r: RawRepo,
        earlier: &[RepoConfig],
        hosts: &BTreeMap<String, HostConfig>,
        secrets: &[&str],
        source: &dyn SecretSource,
    ) -> Result<RepoConfig, ConfigError> {
        let name = r.name.get_ref().clone();
        if !valid_repo_name(&name) {
            return Err(self.at(
                r.name.span(),
                format!("repo name {name:?} must be owner/name, as the forge sends it"),
            ));
        }
        if earlier.iter().any(|x| x.name == name) {
            return Err(self.at(r.name.span(), format!("repo {name} is configured twice")));
        }
        let forge = Forge::from_name(r.forge.get_ref()).ok_or_else(|| {
            self.at(
                r.forge.span(),
                format!(
                    "forge = {:?} is not one of github, gitea, forgejo, gitlab, bitbucket",
                    r.forge.get_ref()
                ),
            )
        })?;
        if r.url.get_ref().trim().is_empty() {
            return Err(self.at(
                r.url.span(),
                format!("repo {name}: url is empty; hoist fetches commits from it"),
            ));
        }
        let secret = self.secret(&r.secret, &format!("repo {name} secret"), source)?;
        if secret.expose().is_empty() {
            return Err(self.at(
                r.secret.span(),
                format!(
                    "repo {name}: the webhook secret is empty; an unsigned webhook would start builds"
                ),
            ));
        }
        if let Some(h) = r.hosts.get_ref().iter().find(|h| !hosts.contains_key(*h)) {
            return Err(self.at(
                r.hosts.span(),
                format!("repo {name}: host {h:?} has no [host.{h}] entry"),
            ));
        }
        if let Some(n) = r
            .secrets
            .get_ref()
            .iter()
            .find(|n| !secrets.contains(&n.as_str()))
        {
            return Err(self.at(
                r.secrets.span(),
                format!("repo {name}: secret {n:?} is not in [secrets]; add {n} = \"env:…\" there"),
            ));
        }
        let status_token = self.optional_secret(
            &r.status_token,
            &format!("repo {name} status_token"),
            source,
        )?;
        if let (Some(t), Some(raw)) = (&status_token, &r.status_token)
            && t.expose().trim().is_empty()
        {
            return Err(self.at(
                raw.span(),
                format!("repo {name}: status_token is empty; give the forge token statuses are posted with, or remove the key"),
            ));
        }
        let api = match &r.api {
            None => crate::forge::status::default_api(forge).to_string(),
            Some(api) => {
                let url = api.get_ref().trim_end_matches('/');
                if !is_http_url(url) {
                    return Err(self.at(
                        api.span(),
                        format!(
                            "repo {name}: api = {:?} is not an http:// or https:// URL; write the forge's API base, like {:?}",
                            api.get_ref(),
                            crate::forge::status::default_api(forge)
                        ),
                    ));
                }
                url.to_string()
            }
        };
        Ok(RepoConfig {
            name,
            url: r.url.into_inner(),
            forge,
            secret,
            hosts: r.hosts.into_inner(),
            secrets: r.secrets.into_inner(),
            cancel_superseded: r.cancel_superseded,
            trusted: r.trusted,
            status_token,
            api,
        })
    }

    /// `public_url`, checked, without its trailing `/`; `http://LISTEN` when absent.
    fn public_url(
        &self,
        raw: Option<&Spanned<String>>,
        listen: SocketAddr,
    ) -> Result<String, ConfigError> {
        let Some(raw) = raw else {
            return Ok(format!("http://{listen}"));
        };
        let url = raw.get_ref().trim_end_matches('/');
        if !is_http_url(url) {
            return Err(self.at(
                raw.span(),
                format!(
                    "public_url = {:?} is not an http:// or https:// URL; write where people reach \
                     the web page, like \"https://hoist.example.com\"",
                    raw.get_ref()
                ),
            ));
        }
        Ok(url.to_string())
    }

    /// Every `[[notify]]`: a secret URL (checked without showing it) and known events.
    fn notify(
        &self,
        raw: Vec<RawNotify>,
        source: &dyn SecretSource,
    ) -> Result<Vec<NotifyConfig>, ConfigError> {
        let mut out = Vec::new();
        for (i, n) in raw.into_iter().enumerate() {
            let what = format!("notify #{} url", i + 1);
            let url = self.secret(&n.url, &what, source)?;
            if !is_http_url(url.expose()) {
                // The value is a secret: the message names where it came from, not what it is.
                return Err(self.at(
                    n.url.span(),
                    format!(
                        "{what}: the value of {} is not an http:// or https:// URL",
                        n.url.get_ref()
                    ),
                ));
            }
            let mut events = Vec::new();
            for name in n.events.get_ref() {
                let Some(e) = Event::from_name(name) else {
                    let known: Vec<&str> = Event::ALL.iter().map(|e| e.as_str()).collect();
                    return Err(self.at(
                        n.events.span(),
                        format!(
                            "notify #{}: event {name:?} is not one hoist sends; use some of {}",
                            i + 1,
                            known.join(", ")
                        ),
                    ));
                };
                if !events.contains(&e) {
                    events.push(e);
                }
            }
            if events.is_empty() {
                return Err(self.at(
                    n.events.span(),
                    format!(
                        "notify #{}: events is empty; name what to send, like [\"run.failed\", \"deployment.rolled_back\"]",
                        i + 1
                    ),
                ));
            }
            out.push(NotifyConfig { url, events });
        }
        Ok(out)
    }

    fn registries(
        &self,
        raw: Vec<RawRegistry>,
        source: &dyn SecretSource,
    ) -> Result<Vec<RegistryConfig>, ConfigError> {
        let mut registries = Vec::new();
        for g in raw {
            let host = g.host.get_ref().clone();
            let username =
                self.optional_secret(&g.username, &format!("registry {host} username"), source)?;
            let password =
                self.optional_secret(&g.password, &format!("registry {host} password"), source)?;
            if username.is_some() != password.is_some() {
                return Err(self.at(
                    g.host.span(),
                    format!("registry {host}: give both username and password, or neither"),
                ));
            }
            registries.push(RegistryConfig {
                host,
                insecure: g.insecure,
                username,
                password,
            });
        }
        Ok(registries)
    }

    fn secrets(
        &self,
        raw: BTreeMap<String, Spanned<String>>,
        source: &dyn SecretSource,
    ) -> Result<BTreeMap<String, Secret>, ConfigError> {
        raw.into_iter()
            .map(|(name, value)| {
                let secret = self.secret(&value, &format!("secret {name}"), source)?;
                let chars = secret.expose().chars().count();
                if chars < MIN_SECRET_CHARS {
                    return Err(self.at(
                        value.span(),
                        format!(
                            "secret {name} is {chars} character(s) long: a value shorter than {MIN_SECRET_CHARS} \
                             cannot be masked in logs without hiding ordinary text; give {name} a longer value, \
                             or pass it as a step's `env:` if it is not secret"
                        ),
                    ));
                }
                Ok((name, secret))
            })
            .collect()
    }

    fn tokens(&self, raw: Vec<RawToken>) -> Result<Vec<TokenConfig>, ConfigError> {
        raw.into_iter()
            .map(|t| {
                let hash = t.sha256.get_ref();
                let bytes = hex::decode(hash)
                    .ok()
                    .and_then(|b| <[u8; 32]>::try_from(b).ok());
                let Some(sha256) =
                    bytes.filter(|_| hash.chars().all(|c| !c.is_ascii_uppercase()))
                else {
                    return Err(self.at(
                        t.sha256.span(),
                        format!(
                            "token {}: sha256 must be 64 lowercase hex digits, as printed by `hoist token create`",
                            t.name
                        ),
                    ));
                };
                Ok(TokenConfig {
                    name: t.name,
                    sha256,
                })
            })
            .collect()
    }

    /// A secret reference resolved, or an error at the reference.
    fn secret(
        &self,
        value: &Spanned<String>,
        what: &str,
        source: &dyn SecretSource,
    ) -> Result<Secret, ConfigError> {
        resolve(value.get_ref(), what, source).map_err(|e| self.at(value.span(), e))
    }

    fn optional_secret(
        &self,
        value: &Option<Spanned<String>>,
        what: &str,
        source: &dyn SecretSource,
    ) -> Result<Option<Secret>, ConfigError> {
        value
            .as_ref()
            .map(|v| self.secret(v, what, source))
            .transpose()
    }
}

/// Why a secret reference gave no value.
#[derive(Debug, thiserror::Error)]
enum SecretError {
    #[error("{what}: environment variable {name} is not set; export it before starting hoist")]
    NotSet { what: String, name: String },
    #[error("{what}: cannot read {path}: {error}")]
    Unreadable {
        what: String,
        path: String,
        error: std::io::Error,
    },
    #[error(
        "{what}: a literal secret is refused; write \"env:NAME\" or \"file:PATH\" so the value stays out of the config file"
    )]
    Literal { what: String },
}

/// Resolve `env:NAME` or `file:PATH`. A literal is refused: secrets do not live in config files.
fn resolve(value: &str, what: &str, source: &dyn SecretSource) -> Result<Secret, SecretError> {
    let what = what.to_string();
    if let Some(name) = value.strip_prefix("env:") {
        return source
            .env(name)
            .map(Secret)
            .ok_or_else(|| SecretError::NotSet {
                what,
                name: name.to_string(),
            });
    }
    if let Some(path) = value.strip_prefix("file:") {
        return source
            .file(Path::new(path))
            .map(|s| Secret(s.trim_end_matches(['\n', '\r']).to_string()))
            .map_err(|error| SecretError::Unreadable {
                what,
                path: path.to_string(),
                error,
            });
    }
    Err(SecretError::Literal { what })
}

/// Why a Docker endpoint (`builder.docker`, `host.NAME.docker`) is refused.
#[derive(Debug, thiserror::Error)]
enum DockerUrlError {
    #[error(
        "{key} = {url:?}: give ssh:// engines as ssh://user@host; put a port in the agent user's ~/.ssh/config (Host alias, HostName, Port) and write ssh://user@alias"
    )]
    SshWithPortOrPath { key: String, url: String },
    #[error("{key} = {url:?} must start with unix://, tcp:// or ssh://")]
    Scheme { key: String, url: String },
}

fn check_docker_url(key: &str, url: &str) -> Result<(), DockerUrlError> {
    // bollard hands `user@host:port` to ssh without its scheme, and ssh then takes
    // `host:port` for a host name: the port has to come from the ssh config instead.
    if let Some(rest) = url.strip_prefix("ssh://")
        && (rest.contains(':') || rest.contains('/'))
    {
        return Err(DockerUrlError::SshWithPortOrPath {
            key: key.to_string(),
            url: url.to_string(),
        });
    }
    if ["unix://", "tcp://", "ssh://"]
        .iter()
        .any(|p| url.starts_with(p) && url.len() > p.len())
    {
        Ok(())
    } else {
        Err(DockerUrlError::Scheme {
            key: key.to_string(),
            url: url.to_string(),
        })
    }
}

/// An `http://` or `https://` URL with something after the scheme.
fn is_http_url(url: &str) -> bool {
    ["http://", "https://"].iter().any(|scheme| {
        url.strip_prefix(scheme)
            .is_some_and(|rest| !rest.is_empty())
    })
}

fn valid_repo_name(name: &str) -> bool {
    let mut parts = name.split('/');
    let ok = |s: Option<&str>| {
        s.is_some_and(|s| {
            !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        })
    };
    // GitLab allows nested groups (group/sub/project): every segment must be valid.
    ok(parts.next()) && ok(parts.next()) && parts.all(|s| ok(Some(s)))
}

/// 1-based line and column of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before
        .rfind('\n')
        .map_or(before.len(), |i| before.len() - i - 1)
        + 1;
    (line, column)
}

/// Durations are strings with a unit (`500ms`, `10s`, `5m`), bounded: a huge value (`u64::MAX`
/// seconds) would pass and then overflow `Instant + duration` at run time, a panic.
pub mod duration {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    /// The longest duration a key takes unless it names its own bound: longer than any step,
    /// health check or rollout should take, and far from overflowing an `Instant`.
    pub const MAX: Duration = Duration::from_secs(30 * 24 * 3600);

    /// Text that is not a duration, or one over its key's bound; the message says what to write.
    #[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
    pub enum DurationError {
        #[error(
            "{text:?} is not a duration; write a number with a unit, like \"500ms\", \"10s\" or \"5m\""
        )]
        NotADuration {
            /// The text as written.
            text: String,
        },
        #[error("{text:?} is too long: write at most {}", shown(*max))]
        TooLong {
            /// The text as written.
            text: String,
            /// The bound it passed.
            max: Duration,
        },
    }

    /// A bound as people write it: whole days as days (`3650days`, not years of 365.25 days).
    fn shown(max: Duration) -> String {
        let day = 24 * 3600;
        if max.as_secs().is_multiple_of(day) && max.subsec_nanos() == 0 {
            format!("{}days", max.as_secs() / day)
        } else {
            humantime::format_duration(max).to_string()
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        parse(&s).map_err(serde::de::Error::custom)
    }

    /// A duration of at most [`MAX`].
    pub fn parse(s: &str) -> Result<Duration, DurationError> {
        parse_at_most(s, MAX)
    }

    /// A duration of at most `max`.
    pub fn parse_at_most(s: &str, max: Duration) -> Result<Duration, DurationError> {
        let d = humantime::parse_duration(s.trim()).map_err(|_| DurationError::NotADuration {
            text: s.to_string(),
        })?;
        if d > max {
            return Err(DurationError::TooLong {
                text: s.to_string(),
                max,
            });
        }
        Ok(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fake;
    impl SecretSource for Fake {
        fn env(&self, name: &str) -> Option<String> {
            match name {
                "MISSING" => None,
                "CHAT_URL" => Some("https://chat.example.com/hooks/T0/B0/s3cr3t".into()),
                _ => Some(format!("value-of-{name}")),
            }
        }
        fn file(&self, path: &Path) -> std::io::Result<String> {
            if path == Path::new("/secret/hook") {
                Ok("from-file\n".into())
            } else {
                Err(std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "No such file",
                ))
            }
        }
    }

    const GOOD: &str = r#"
listen = "127.0.0.1:9000"
data_dir = "/tmp/hoist"

[runner]
poll_interval = "500ms"

[[repo]]
name = "acme/web"
url = "/srv/git/web.git"
forge = "gitea"
secret = "file:/secret/hook"
hosts = ["web1"]

[[registry]]
host = "127.0.0.1:5000"
insecure = true
username = "env:REG_USER"
password = "env:REG_PASS"

[host.web1]
docker = "unix:///run/docker.sock"
address = "10.0.0.11"

[secrets]
DATABASE_URL = "env:DATABASE_URL"

[[token]]
name = "ops"
sha256 = "2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae"
"#;

    fn check(text: &str, expect: &str) {
        match Config::parse("hoist.toml", text, &Fake) {
            Ok(c) => assert_eq!("ok", expect, "parsed: {c:?}"),
            Err(e) => assert_eq!(e.to_string(), expect),
        }
    }

    #[test]
    fn statuses_and_notifications_are_checked() {
        let c = Config::parse("hoist.toml", GOOD, &Fake).unwrap();
        assert_eq!(c.public_url, "http://127.0.0.1:9000");
        assert!(c.notify.is_empty());
        assert_eq!(c.repos[0].api, "https://gitea.com/api/v1");
        assert!(c.repos[0].status_token.is_none());

        let text = GOOD
            .replace(
                "data_dir = \"/tmp/hoist\"",
                "data_dir = \"/tmp/hoist\"\npublic_url = \"https://hoist.example.com/\"",
            )
            .replace(
                "hosts = [\"web1\"]",
                "hosts = [\"web1\"]\nstatus_token = \"env:WEB_STATUS\"\napi = \"https://git.example.com/api/v1/\"",
            )
            + "\n[[notify]]\nurl = \"env:CHAT_URL\"\nevents = [\"run.failed\", \"deployment.rolled_back\", \"run.failed\"]\n";
        let c = Config::parse("hoist.toml", &text, &Fake).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.public_url, "https://hoist.example.com");
        assert_eq!(c.repos[0].api, "https://git.example.com/api/v1");
        assert_eq!(
            c.repos[0].status_token.as_ref().map(Secret::expose),
            Some("value-of-WEB_STATUS")
        );
        assert_eq!(
            c.notify[0].events,
            [Event::RunFailed, Event::DeploymentRolledBack]
        );
        assert!(!format!("{c:?}").contains("s3cr3t"));

        let notify = |url: &str, events: &str| {
            format!("{GOOD}\n[[notify]]\nurl = {url:?}\nevents = {events}\n")
        };
        let err = |text: &str| {
            Config::parse("hoist.toml", text, &Fake)
                .unwrap_err()
                .to_string()
        };
        let e = err(&notify(
            "https://chat.example.com/hooks/x",
            "[\"run.failed\"]",
        ));
        assert!(
            e.contains("notify #1 url: a literal secret is refused"),
            "{e}"
        );
        let e = err(&notify("env:SOMETHING", "[\"run.failed\"]"));
        assert!(
            e.contains(
                "notify #1 url: the value of env:SOMETHING is not an http:// or https:// URL"
            ),
            "{e}"
        );
        assert!(!e.contains("value-of-SOMETHING"), "{e}");
        let e = err(&notify("env:CHAT_URL", "[\"deployment.rollback\"]"));
        assert!(
            e.contains("event \"deployment.rollback\" is not one hoist sends; use some of run.failed, run.succeeded, deployment.succeeded, deployment.rolled_back, deployment.failed, host.drifted"),
            "{e}"
        );
        let e = err(&notify("env:CHAT_URL", "[]"));
        assert!(e.contains("events is empty"), "{e}");
        let e = err(&GOOD.replace(
            "hosts = [\"web1\"]",
            "hosts = [\"web1\"]\napi = \"git.example.com\"",
        ));
        assert!(
            e.contains(
                "repo acme/web: api = \"git.example.com\" is not an http:// or https:// URL"
            ),
            "{e}"
        );
        let e = err(&GOOD.replace(
            "data_dir = \"/tmp/hoist\"",
            "data_dir = \"/tmp/hoist\"\npublic_url = \"hoist\"",
        ));
        assert!(
            e.starts_with("hoist.toml:4:14: public_url = \"hoist\" is not an http"),
            "{e}"
        );
    }

    #[test]
    fn balancers_are_checked_at_their_place() {
        let with = |b: &str| format!("{GOOD}\n[balancer.edge]\n{b}");
        let c = Config::parse(
            "hoist.toml",
            &with("kind = \"nginx\"\nconfig = \"/etc/nginx/conf.d/hoist.conf\"\nurl = \"http://127.0.0.1:80/\"\n"),
            &Fake,
        )
        .unwrap();
        let b = &c.balancers["edge"];
        assert_eq!(b.test, ["nginx", "-t"]);
        assert_eq!(b.reload, ["nginx", "-s", "reload"]);
        assert_eq!(b.url.as_deref(), Some("http://127.0.0.1:80"));
        assert_eq!(b.place, BalancerPlace::Agent);
        let c = Config::parse(
            "hoist.toml",
            &with("kind = \"nginx\"\nconfig = \"/etc/nginx/conf.d/hoist.conf\"\nhost = \"web1\"\ncontainer = \"nginx\"\n"),
            &Fake,
        )
        .unwrap();
        assert!(
            matches!(&c.balancers["edge"].place, BalancerPlace::Container { host, .. } if host == "web1")
        );
        for (body, want) in [
            (
                "kind = \"haproxy\"\nconfig = \"/x.conf\"\n",
                "balancer.edge.kind \"haproxy\"",
            ),
            (
                "kind = \"nginx\"\nconfig = \"x.conf\"\n",
                "must be an absolute path",
            ),
            (
                "kind = \"nginx\"\nconfig = \"/x.conf\"\nhost = \"web9\"\ncontainer = \"n\"\n",
                "is not a [host.NAME]",
            ),
            (
                "kind = \"nginx\"\nconfig = \"/x.conf\"\ncontainer = \"n\"\n",
                "go together",
            ),
            (
                "kind = \"nginx\"\nconfig = \"/x.conf\"\nreload = []\n",
                "reload is empty",
            ),
            (
                "kind = \"nginx\"\nconfig = \"/x.conf\"\nport = 80\n",
                "unknown field `port`",
            ),
        ] {
            let e = Config::parse("hoist.toml", &with(body), &Fake)
                .unwrap_err()
                .to_string();
            assert!(e.starts_with("hoist.toml:"), "{e}");
            assert!(e.contains(want), "{e}");
        }
    }

    #[test]
    fn good_config_resolves_secrets() {
        let c = Config::parse("hoist.toml", GOOD, &Fake).unwrap();
        assert_eq!(c.listen.port(), 9000);
        assert_eq!(c.runner.poll_interval, Duration::from_millis(500));
        assert_eq!(c.runner.max_parallel, 2);
        assert_eq!(c.repos[0].forge, Forge::Gitea);
        assert_eq!(c.repos[0].secret.expose(), "from-file");
        assert!(c.repos[0].cancel_superseded);
        assert_eq!(
            c.registries[0].username.as_ref().unwrap().expose(),
            "value-of-REG_USER"
        );
        assert_eq!(c.secrets["DATABASE_URL"].expose(), "value-of-DATABASE_URL");
        assert_eq!(c.tokens[0].sha256[0], 0x2c);
        assert!(
            !format!("{c:?}").contains("value-of"),
            "Debug must not show secrets"
        );
        let token_url = GOOD.replace(
            "url = \"/srv/git/web.git\"",
            "url = \"https://glpat-seca-token@git.example.com/web.git\"",
        );
        let c = Config::parse("hoist.toml", &token_url, &Fake).unwrap();
        let shown = format!("{c:?}");
        assert!(
            !shown.contains("glpat-seca-token"),
            "Debug must not show the URL's token: {shown}"
        );
        assert!(
            shown.contains("https://***@git.example.com/web.git"),
            "{shown}"
        );
    }

    #[test]
    fn secrets_too_short_to_mask_are_refused_naming_the_fix() {
        struct Short;
        impl SecretSource for Short {
            fn env(&self, name: &str) -> Option<String> {
                Some(
                    if name == "DATABASE_URL" {
                        "abc"
                    } else {
                        "long-enough"
                    }
                    .into(),
                )
            }
            fn file(&self, _: &Path) -> std::io::Result<String> {
                Ok("from-file".into())
            }
        }
        let e = Config::parse("hoist.toml", GOOD, &Short)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("secret DATABASE_URL is 3 character(s) long")
                && e.contains("give DATABASE_URL a longer value"),
            "{e}"
        );
        assert!(
            e.starts_with("hoist.toml:"),
            "the error names the line: {e}"
        );
    }

    #[test]
    fn errors_name_the_key_and_line() {
        check(
            &GOOD.replace("[runner]", "[runner]\nmax_paralel = 3"),
            "hoist.toml:6:1: unknown field `max_paralel`, expected one of `max_parallel`, `poll_interval`, `keep_runs`, `keep_runs_for`, `keep_workspaces`, `max_parallel_steps`, `max_log_size`, `watch_interval`",
        );
        check(
            &GOOD.replace("\"file:/secret/hook\"", "\"hunter2\""),
            "hoist.toml:12:10: repo acme/web secret: a literal secret is refused; write \"env:NAME\" or \"file:PATH\" so the value stays out of the config file",
        );
        check(
            &GOOD.replace("env:DATABASE_URL", "env:MISSING"),
            "hoist.toml:26:16: secret DATABASE_URL: environment variable MISSING is not set; export it before starting hoist",
        );
        check(
            &GOOD.replace("\"500ms\"", "\"soon\""),
            "hoist.toml:6:17: runner.poll_interval: \"soon\" is not a duration; write a number with a unit, like \"500ms\", \"10s\" or \"5m\"",
        );
        check(
            &GOOD.replace("\"500ms\"", "\"18446744073709551615s\""),
            "hoist.toml:6:17: runner.poll_interval: \"18446744073709551615s\" is too long: write at most 30days",
        );
        check(
            &GOOD.replace("[runner]", "[runner]\nkeep_runs_for = \"20years\""),
            "hoist.toml:6:17: runner.keep_runs_for: \"20years\" is too long: write at most 3650days",
        );
        check(
            &GOOD.replace("\"gitea\"", "\"svn\""),
            "hoist.toml:11:9: forge = \"svn\" is not one of github, gitea, forgejo, gitlab, bitbucket",
        );
        check(
            &GOOD.replace("hosts = [\"web1\"]", "hosts = [\"web9\"]"),
            "hoist.toml:13:9: repo acme/web: host \"web9\" has no [host.web9] entry",
        );
        check(
            &GOOD.replace("sha256 = \"2c", "sha256 = \"zz"),
            "hoist.toml:30:10: token ops: sha256 must be 64 lowercase hex digits, as printed by `hoist token create`",
        );
        check(
            &GOOD.replace("file:/secret/hook", "file:/nope"),
            "hoist.toml:12:10: repo acme/web secret: cannot read /nope: No such file",
        );
    }

    #[test]
    fn the_annotated_example_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("agent/hoist.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        let c = Config::parse("agent/hoist.toml", &text, &Fake).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.repos[0].secrets, ["DATABASE_URL"]);
        assert_eq!(c.hosts["h2"].vars["node_id"], "demo-2");
    }

    #[test]
    fn repo_secrets_and_host_vars() {
        let text = GOOD
            .replace(
                "hosts = [\"web1\"]",
                "hosts = [\"web1\"]\nsecrets = [\"DATABASE_URL\"]",
            )
            .replace(
                "address = \"10.0.0.11\"",
                "address = \"10.0.0.11\"\nvars = { node_id = \"n1\", peer = \"10.0.0.11:7000\" }",
            );
        let c = Config::parse("hoist.toml", &text, &Fake).unwrap();
        assert_eq!(c.repos[0].secrets, ["DATABASE_URL"]);
        assert_eq!(c.hosts["web1"].vars["node_id"], "n1");
        assert_eq!(
            c.secret_values("acme/web", &["DATABASE_URL".into()], "container web")
                .unwrap(),
            [(
                "DATABASE_URL".to_string(),
                "value-of-DATABASE_URL".to_string()
            )]
        );
        // The default is none: a repository that lists no secrets may use none.
        let plain = Config::parse("hoist.toml", GOOD, &Fake).unwrap();
        let err = plain
            .secret_values("acme/web", &["DATABASE_URL".into()], "container web")
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "container web asks for secret DATABASE_URL, which repository acme/web may not use; add \"DATABASE_URL\" to secrets of its [[repo]] entry in hoist.toml"
        );
        check(
            &text.replace(
                "secrets = [\"DATABASE_URL\"]",
                "secrets = [\"DB_PASSWORD\"]",
            ),
            "hoist.toml:14:11: repo acme/web: secret \"DB_PASSWORD\" is not in [secrets]; add DB_PASSWORD = \"env:…\" there",
        );
        check(
            &text.replace("node_id =", "address ="),
            "hoist.toml:22:1: host.web1.vars: key \"address\" cannot be a placeholder: use letters, digits, `_` and `-`, and not `name` or `address` (${host.address} is the host's own address)",
        );
    }

    #[test]
    fn defaults() {
        let c = Config::parse("hoist.toml", "", &Fake).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.runner.poll_interval, Duration::from_secs(60));
        assert_eq!(c.runner.max_parallel_steps, 4);
        assert_eq!(c.runner.watch_interval, Duration::from_secs(30));
        assert_eq!(c.builder.docker, "unix:///var/run/docker.sock");
    }

    #[test]
    fn watch_interval_is_a_duration_and_0s_turns_the_watch_off() {
        let c = Config::parse(
            "hoist.toml",
            &GOOD.replace("[runner]", "[runner]\nwatch_interval = \"0s\""),
            &Fake,
        )
        .unwrap();
        assert!(c.runner.watch_interval.is_zero());
        check(
            &GOOD.replace("[runner]", "[runner]\nwatch_interval = \"often\""),
            "hoist.toml:6:18: runner.watch_interval: \"often\" is not a duration; write a number with a unit, like \"500ms\", \"10s\" or \"5m\"",
        );
    }

    #[test]
    fn runner_max_parallel_names_its_line() {
        check(
            &GOOD.replace("[runner]", "[runner]\nmax_parallel = 0"),
            "hoist.toml:6:16: runner.max_parallel must be at least 1",
        );
        check(
            &GOOD.replace("[runner]", "[runner]\nmax_parallel_steps = 0"),
            "hoist.toml:6:22: runner.max_parallel_steps must be at least 1",
        );
    }

    #[test]
    fn retention_keys_have_defaults_and_bounds() {
        let c = Config::parse("hoist.toml", GOOD, &Fake).unwrap();
        assert_eq!(
            c.runner.retention,
            Retention {
                keep_runs: 1000,
                keep_for: Some(Duration::from_secs(90 * 24 * 3600)),
            }
        );
        assert_eq!(c.runner.keep_workspaces, 5);
        let c = Config::parse(
            "hoist.toml",
            &GOOD.replace(
                "[runner]",
                "[runner]\nkeep_runs = 20\nkeep_runs_for = \"0s\"\nkeep_workspaces = 0",
            ),
            &Fake,
        )
        .unwrap();
        assert_eq!(
            c.runner.retention,
            Retention {
                keep_runs: 20,
                keep_for: None,
            }
        );
        assert_eq!(c.runner.keep_workspaces, 0);
        assert_eq!(c.runner.max_log_size, DEFAULT_MAX_LOG_SIZE);
        for (given, bytes) in [
            ("4096", 4096),
            ("64KiB", 65536),
            ("8MiB", 8 << 20),
            ("1GiB", 1 << 30),
        ] {
            let text = GOOD.replace("[runner]", &format!("[runner]\nmax_log_size = {given:?}"));
            let c = Config::parse("hoist.toml", &text, &Fake).unwrap();
            assert_eq!(c.runner.max_log_size, bytes, "{given}");
        }
        for (given, want) in [
            ("8 mb", "is not a size"),
            ("0", "out of range"),
            ("2GiB", "out of range"),
            ("-1", "is not a size"),
        ] {
            let text = GOOD.replace("[runner]", &format!("[runner]\nmax_log_size = {given:?}"));
            let e = Config::parse("hoist.toml", &text, &Fake)
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("runner.max_log_size") && e.contains(want),
                "{given}: {e}"
            );
        }
        check(
            &GOOD.replace("[runner]", "[runner]\nkeep_runs = 0"),
            "hoist.toml:6:13: runner.keep_runs must be at least 1 (the runs kept per repository; use keep_runs_for to bound their age)",
        );
    }

    #[test]
    fn builder_docker_names_its_line() {
        check(
            &format!("{GOOD}[builder]\ndocker = \"npipe:////./pipe/docker_engine\"\n"),
            "hoist.toml:32:10: builder.docker = \"npipe:////./pipe/docker_engine\" must start with unix://, tcp:// or ssh://",
        );
    }
}
