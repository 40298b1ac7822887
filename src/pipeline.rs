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

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_saphyr::{Location, MessageFormatter, Spanned};

use crate::forge::RefKind;

/// Where the pipeline lives, at the root of the application's repository.
pub const FILE_NAME: &str = ".hoist.yml";

/// Larger than any sensible pipeline by two orders of magnitude; refused before parsing so a
/// hostile push cannot make the agent hold or scan megabytes of YAML.
const MAX_FILE_BYTES: usize = 1024 * 1024;

/// Deepest nesting accepted; the deepest real path (`steps[].deploy.health.http.port`) is 6.
const MAX_DEPTH: usize = 32;

/// Nodes the document may have with every alias expanded; real pipelines have hundreds.
const MAX_EXPANDED_NODES: u64 = 100_000;

const TOO_MANY_ALIASES: &str = "the pipeline file uses too many aliases (`*name`) or expands \
                                them too far (a YAML \"billion laughs\"?); write the values out \
                                instead";
const TOO_LARGE: &str =
    "the pipeline file is too large (too many values); split long lists or remove repetition";
// The number is MAX_DEPTH's.
const TOO_DEEP: &str = "the pipeline file is nested too deeply (more than 32 levels)";

/// Docker allows 128 characters in a tag.
const MAX_TAG_CHARS: usize = 128;

/// The placeholders [`Vars::render`] knows, in the order error messages list them.
const PLACEHOLDERS: &[&str] = &[
    "commit",
    "commit_short",
    "branch",
    "tag",
    "ref",
    "host",
    "release",
    "app",
];

// ---------------------------------------------------------------------------------------------
// The validated pipeline
// ---------------------------------------------------------------------------------------------

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
    /// Run in order; the first failing step fails the run. At least one; names unique.
    pub steps: Vec<Step>,
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

impl Triggers {
    /// Whether a push of this ref starts a run: the name matches some include pattern and no
    /// exclude pattern.
    pub fn matches(&self, kind: RefKind, name: &str) -> bool {
        match kind {
            RefKind::Branch => self
                .branches
                .as_ref()
                .is_none_or(|patterns| patterns_match(patterns, name)),
            RefKind::Tag => self
                .tags
                .as_ref()
                .is_some_and(|patterns| patterns_match(patterns, name)),
        }
    }
}

/// Compiled on each call rather than cached in [`Triggers`]: a cache would be a private field
/// (breaking struct literals, `PartialEq` and the JSON round trip) and matching runs once per
/// push, where a few microseconds of compiling do not matter. Every pattern was compiled once
/// already at parse time, so a parsed pipeline never hits the error arms.
fn patterns_match(patterns: &[String], name: &str) -> bool {
    let mut included = false;
    for pattern in patterns {
        if let Some(excluded) = pattern.strip_prefix('!') {
            // An exclusion that cannot be compiled (only possible in hand-made JSON) excludes:
            // failing closed starts no run rather than an unwanted one.
            if compile_glob(excluded).is_none_or(|g| g.is_match(name)) {
                return false;
            }
        } else if compile_glob(pattern).is_some_and(|g| g.is_match(name)) {
            included = true;
        }
    }
    included
}

fn compile_glob(pattern: &str) -> Option<globset::GlobMatcher> {
    build_glob(pattern).ok()
}

fn build_glob(pattern: &str) -> Result<globset::GlobMatcher, globset::Error> {
    globset::GlobBuilder::new(pattern)
        // `*` must not cross `/`, like GitHub Actions: `release/*` is not `release/a/b`.
        .literal_separator(true)
        .backslash_escape(true)
        .build()
        .map(|g| g.compile_matcher())
}

/// One step of the pipeline.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Step {
    /// Unique within the pipeline, `[A-Za-z0-9_.-]+`; shown in logs and named by `deploy.image`.
    pub name: String,
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
}

/// The container that serves on each host.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ContainerSpec {
    /// Exactly the name of the serving container (`docker logs web`); kept earlier releases
    /// become `NAME-r<release>`.
    pub name: String,
    /// Published ports: `HOST:CONTAINER` or `IP:HOST:CONTAINER`, optionally `/tcp` or `/udp`.
    pub ports: Vec<String>,
    /// Container environment; values may hold placeholders (`${host}` gives per-host values).
    pub env: BTreeMap<String, String>,
    /// Arguments after the image (the command); placeholders allowed.
    pub args: Vec<String>,
    /// Volumes, as `docker run -v` takes them.
    pub volumes: Vec<String>,
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
}

/// The probe of a [`HealthSpec`]. YAML: exactly one of `http: {port, path}`, `tcp: PORT`,
/// `command: [...]`, `docker: true`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum HealthCheck {
    /// GET `path` on the container's `port`; a 2xx answer is healthy.
    Http {
        /// Container port.
        port: u16,
        /// Request path, starting with `/` (default `/`).
        path: String,
    },
    /// A TCP connection to this container port is accepted.
    Tcp(u16),
    /// This argv, run in the container, exits 0.
    Command(Vec<String>),
    /// The image's own `HEALTHCHECK` reports healthy.
    Docker,
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

// ---------------------------------------------------------------------------------------------
// Problems
// ---------------------------------------------------------------------------------------------

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

/// Problems found so far, in the order found (sorted by place at the end).
#[derive(Default)]
struct Problems(Vec<Problem>);

impl Problems {
    fn at(&mut self, loc: Location, message: impl Into<String>) {
        self.0.push(Problem {
            line: usize::try_from(loc.line()).unwrap_or(usize::MAX),
            column: usize::try_from(loc.column()).unwrap_or(usize::MAX),
            message: message.into(),
        });
    }
}

// ---------------------------------------------------------------------------------------------
// Parsing
// ---------------------------------------------------------------------------------------------

type S<T> = Spanned<T>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPipeline {
    app: Option<S<String>>,
    on: Option<S<RawTriggers>>,
    #[serde(default)]
    env: BTreeMap<String, S<String>>,
    steps: Option<S<Vec<S<RawStep>>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTriggers {
    branches: Option<Vec<S<String>>>,
    tags: Option<Vec<S<String>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStep {
    name: Option<S<String>>,
    #[serde(default)]
    env: BTreeMap<String, S<String>>,
    #[serde(default)]
    secrets: Vec<S<String>>,
    timeout: Option<S<String>>,
    image: Option<S<String>>,
    commands: Option<S<CommandList>>,
    shell: Option<S<CommandList>>,
    build: Option<S<RawBuild>>,
    deploy: Option<S<RawDeploy>>,
}

/// `commands:` and `shell:` take a list, or one string: `shell: make check`, or a `|` block
/// that reads as one script (it runs under `sh -e` all the same).
struct CommandList(Vec<String>);

impl<'de> Deserialize<'de> for CommandList {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = CommandList;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a command or a list of commands")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<CommandList, E> {
                Ok(CommandList(vec![v.to_string()]))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<CommandList, A::Error> {
                let mut commands = Vec::new();
                while let Some(c) = seq.next_element::<String>()? {
                    commands.push(c);
                }
                Ok(CommandList(commands))
            }
        }
        d.deserialize_any(Visitor)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBuild {
    context: Option<S<String>>,
    dockerfile: Option<S<String>>,
    repository: Option<S<String>>,
    tags: Option<S<Vec<S<String>>>>,
    #[serde(default)]
    args: BTreeMap<String, S<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDeploy {
    image: Option<S<String>>,
    hosts: Option<S<Vec<S<String>>>>,
    container: Option<S<RawContainer>>,
    health: Option<S<RawHealth>>,
    rollout: Option<RawRollout>,
    hooks: Option<RawHooks>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawContainer {
    name: Option<S<String>>,
    #[serde(default)]
    ports: Vec<S<String>>,
    #[serde(default)]
    env: BTreeMap<String, S<String>>,
    #[serde(default)]
    args: Vec<S<String>>,
    #[serde(default)]
    volumes: Vec<S<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHealth {
    http: Option<S<RawHttp>>,
    tcp: Option<S<i64>>,
    command: Option<S<Vec<S<String>>>>,
    docker: Option<S<bool>>,
    interval: Option<S<String>>,
    timeout: Option<S<String>>,
    healthy_for: Option<S<String>>,
    deadline: Option<S<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttp {
    port: S<i64>,
    path: Option<S<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRollout {
    max_parallel: Option<S<i64>>,
    auto_rollback: Option<bool>,
    bake: Option<S<String>>,
    keep: Option<S<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHooks {
    before_host: Option<S<Vec<S<String>>>>,
    after_host: Option<S<Vec<S<String>>>>,
    after_deploy: Option<S<Vec<S<String>>>>,
}

/// Budgets sized for pipelines (a big real one is a few hundred nodes, nesting 6 deep) rather
/// than serde-saphyr's permissive defaults. The second line of defence behind [`prescan`]:
/// they bound what deserialization itself may consume, alias replays included.
fn yaml_options() -> serde_saphyr::Options {
    serde_saphyr::options! {
        budget: serde_saphyr::budget! {
            max_events: 100_000,
            max_nodes: 50_000,
            max_aliases: 1_000,
            max_anchors: 1_000,
            max_recorded_anchor_events: 20_000,
            max_recorded_anchor_bytes: MAX_FILE_BYTES,
            max_depth: MAX_DEPTH,
            flow_nesting_limit: MAX_DEPTH,
            max_documents: 1,
            max_total_scalar_bytes: MAX_FILE_BYTES,
            max_merge_keys: 1_000,
            max_inclusion_depth: 0,
        },
        alias_limits: serde_saphyr::alias_limits! {
            max_total_replayed_events: 20_000,
            max_replay_stack_depth: 16,
        },
        // Messages and places are reported by us, one line each.
        with_snippet: false,
    }
}

/// Parse and validate a `.hoist.yml`. On failure, every problem found, each at its place
/// (1-based line and column; 0:0 only when the parser gives no location), sorted by place.
/// A YAML or type error stops parsing, so it comes alone; validation problems come together.
pub fn parse(text: &str) -> Result<Pipeline, Vec<Problem>> {
    if text.len() > MAX_FILE_BYTES {
        // A whole-file problem: its place is the start.
        return Err(vec![Problem {
            line: 1,
            column: 1,
            message: format!(
                "the pipeline file is too large ({} bytes, at most {MAX_FILE_BYTES}); a pipeline \
                 this size is almost certainly not meant as one",
                text.len()
            ),
        }]);
    }
    prescan(text).map_err(|p| vec![p])?;
    let raw: S<RawPipeline> = serde_saphyr::from_str_with_options(text, yaml_options())
        .map_err(|e| vec![yaml_problem(&e)])?;
    let mut problems = Problems::default();
    let pipeline = convert(raw, &mut problems);
    if problems.0.is_empty() {
        Ok(pipeline)
    } else {
        let mut all = problems.0;
        all.sort_by_key(|p| (p.line, p.column));
        Err(all)
    }
}

/// One pass over the parser's events, before deserializing, measuring what the document
/// *would* be with every alias expanded, without expanding anything. serde-saphyr's budgets
/// only act on what deserialization consumes, and it stops at the first unknown key or type
/// error, so a bomb could otherwise be refused for a misleading reason, or at all only by
/// chance of where it sits. This catches it wherever it is, at the alias that tips it over.
/// Syntax errors are left to serde-saphyr, whose messages are better.
fn prescan(text: &str) -> Result<(), Problem> {
    use serde_saphyr::granit_parser::{Event, Parser};

    let place = |span: &serde_saphyr::granit_parser::Span, message: &str| Problem {
        line: span.start.line(),
        column: span.start.col().saturating_add(1),
        message: message.to_string(),
    };
    // Expanded size of each closed anchored node, by anchor id.
    let mut sizes: std::collections::HashMap<usize, u64> = std::collections::HashMap::new();
    // Open collections: their anchor id (0 for none) and the running count when they opened.
    let mut open: Vec<(usize, u64)> = Vec::new();
    let mut expanded: u64 = 0;
    for item in Parser::new_from_str(text) {
        let Ok((event, span)) = item else {
            return Ok(());
        };
        match event {
            Event::Scalar(_, _, anchor, _) => {
                expanded = expanded.saturating_add(1);
                if anchor != 0 {
                    sizes.insert(anchor, 1);
                }
            }
            Event::SequenceStart(_, anchor, _) | Event::MappingStart(_, anchor, _) => {
                open.push((anchor, expanded));
                expanded = expanded.saturating_add(1);
                if open.len() > MAX_DEPTH {
                    return Err(place(&span, TOO_DEEP));
                }
            }
            Event::SequenceEnd | Event::MappingEnd => {
                if let Some((anchor, start)) = open.pop()
                    && anchor != 0
                {
                    sizes.insert(anchor, expanded.saturating_sub(start));
                }
            }
            // An alias of a still-open anchor (a cycle) counts as one; serde-saphyr refuses it.
            Event::Alias(id) => {
                expanded = expanded.saturating_add(sizes.get(&id).copied().unwrap_or(1));
            }
            _ => continue,
        }
        if expanded > MAX_EXPANDED_NODES {
            let message = if matches!(event, Event::Alias(_)) {
                TOO_MANY_ALIASES
            } else {
                TOO_LARGE
            };
            return Err(place(&span, message));
        }
    }
    Ok(())
}

/// One problem from a serde-saphyr error, in our words for the hostile-input cases.
fn yaml_problem(e: &serde_saphyr::Error) -> Problem {
    use serde_saphyr::Error as E;
    use serde_saphyr::budget::BudgetBreach as B;

    // The alias and snippet wrappers carry the original error inside.
    let mut inner = e;
    loop {
        match inner {
            E::WithSnippet { .. } => {
                let unwrapped = inner.without_snippet();
                if std::ptr::eq(unwrapped, inner) {
                    break;
                }
                inner = unwrapped;
            }
            E::AliasError { error, .. } => inner = error,
            _ => break,
        }
    }

    let message = match inner {
        E::Budget { breach, .. } => match breach {
            B::Aliases { .. }
            | B::Anchors { .. }
            | B::AliasAnchorRatio { .. }
            | B::RecordedAnchorEvents { .. }
            | B::RecordedAnchorBytes { .. }
            | B::MergeKeys { .. } => TOO_MANY_ALIASES.to_string(),
            B::Depth { .. } => TOO_DEEP.to_string(),
            B::Documents { .. } => {
                "the pipeline file holds more than one YAML document (`---`); keep one".into()
            }
            _ => TOO_LARGE.to_string(),
        },
        E::AliasReplayLimitExceeded { .. }
        | E::AliasExpansionLimitExceeded { .. }
        | E::AliasReplayStackDepthExceeded { .. }
        | E::AliasReplayCounterOverflow { .. } => TOO_MANY_ALIASES.to_string(),
        E::ExternalMessage { source, .. }
            if matches!(
                &**source,
                serde_saphyr::ExternalMessageSource::Parser(scan)
                    if *scan.kind() == serde_saphyr::granit_parser::ErrorKind::RecursionLimitExceeded
            ) =>
        {
            TOO_DEEP.to_string()
        }
        // serde-saphyr names parser events; say what to write instead.
        E::Unexpected { expected, .. } => match *expected {
            "sequence start" => "expected a list here, like [a, b]".to_string(),
            "mapping start" => "expected a mapping here, like `key: value`".to_string(),
            "string scalar" => "expected a single value here, not a list or a mapping".to_string(),
            other => format!("expected {other}"),
        },
        _ => serde_saphyr::UserMessageFormatter
            .format_message(inner)
            .into_owned(),
    };
    let (line, column) = e
        .location()
        .or_else(|| inner.location())
        .map(|l| {
            (
                usize::try_from(l.line()).unwrap_or(0),
                usize::try_from(l.column()).unwrap_or(0),
            )
        })
        .unwrap_or((0, 0));
    Problem {
        line,
        column,
        message,
    }
}

/// Check a string against `[first][rest]*` given as predicates.
fn is_name(s: &str, first: impl Fn(char) -> bool, rest: impl Fn(char) -> bool) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(first) && chars.all(rest)
}

fn is_app_name(s: &str) -> bool {
    s.len() <= 63
        && is_name(
            s,
            |c| c.is_ascii_lowercase() || c.is_ascii_digit(),
            |c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '.' | '-'),
        )
}

fn is_step_name(s: &str) -> bool {
    let ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-');
    is_name(s, ok, ok)
}

/// Docker's container name grammar `[a-zA-Z0-9][a-zA-Z0-9_.-]+` (two characters at least),
/// with room left for the `-r<release>` suffix of kept releases.
fn is_container_name(s: &str) -> bool {
    s.len() >= 2
        && s.len() <= 100
        && is_name(
            s,
            |c| c.is_ascii_alphanumeric(),
            |c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'),
        )
}

/// `[A-Z_][A-Z0-9_]*`: what a shell can name.
fn is_secret_name(s: &str) -> bool {
    is_name(
        s,
        |c| c.is_ascii_uppercase() || c == '_',
        |c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_',
    )
}

/// `[A-Za-z_][A-Za-z0-9_]*`: keys that survive being an env var or a build arg.
fn is_env_name(s: &str) -> bool {
    is_name(
        s,
        |c| c.is_ascii_alphabetic() || c == '_',
        |c| c.is_ascii_alphanumeric() || c == '_',
    )
}

/// `HOST:CONTAINER` or `IP:HOST:CONTAINER` (IPv6 in brackets), optionally `/tcp` or `/udp`.
fn check_port_mapping(spec: &str) -> Result<(), String> {
    let usage = || {
        format!(
            "port {spec:?} is not HOST:CONTAINER or IP:HOST:CONTAINER (like \"8080:8080\" or \
             \"127.0.0.1:8080:8080\", optionally ending in /tcp or /udp)"
        )
    };
    let mapping = match spec.rsplit_once('/') {
        Some((m, "tcp" | "udp")) => m,
        Some(_) => return Err(usage()),
        None => spec,
    };
    let ports = if let Some(rest) = mapping.strip_prefix('[') {
        let (ip, ports) = rest.split_once("]:").ok_or_else(usage)?;
        ip.parse::<Ipv6Addr>().map_err(|_| usage())?;
        ports
    } else {
        match mapping.split(':').count() {
            2 => mapping,
            3 => {
                let (ip, ports) = mapping.split_once(':').ok_or_else(usage)?;
                ip.parse::<Ipv4Addr>().map_err(|_| usage())?;
                ports
            }
            _ => return Err(usage()),
        }
    };
    let (host, container) = ports.split_once(':').ok_or_else(usage)?;
    for port in [host, container] {
        // Digits only: `u16::from_str` would also take "+80".
        match port.parse::<u16>() {
            Ok(p) if p > 0 && port.bytes().all(|b| b.is_ascii_digit()) => {}
            _ => return Err(usage()),
        }
    }
    Ok(())
}

/// A path inside the checkout: relative, without `..`.
fn is_inside_checkout(path: &str) -> bool {
    !path.is_empty()
        && !path.starts_with('/')
        && !path.starts_with('\\')
        && path.split(['/', '\\']).all(|part| part != "..")
}

/// A repository reference without tag or digest: `[HOST[:PORT]/]path/of/lowercase`.
fn check_repository(repo: &str) -> Result<(), String> {
    if repo.is_empty() {
        return Err(
            "`repository` is empty; write where to push, like \"127.0.0.1:5000/acme/web\"".into(),
        );
    }
    if repo.contains('@') {
        return Err(format!(
            "repository {repo:?} holds a digest; write it without `@…`"
        ));
    }
    let (host, path) = match repo.split_once('/') {
        Some((first, rest)) if first.contains(['.', ':']) || first == "localhost" => {
            (Some(first), rest)
        }
        _ => (None, repo),
    };
    if path.contains(':') {
        return Err(format!(
            "repository {repo:?} holds a tag; write it without `:TAG` and list tags under `tags:`"
        ));
    }
    let path_ok = path.split('/').all(|part| {
        is_name(
            part,
            |c| c.is_ascii_lowercase() || c.is_ascii_digit(),
            |c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-'),
        )
    });
    let host_ok = host.is_none_or(|h| {
        h.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'))
    });
    if path_ok && host_ok {
        Ok(())
    } else {
        Err(format!(
            "repository {repo:?} is not a valid image repository: lowercase letters, digits, \
             `.`, `_`, `-` between `/`, optionally after a registry host"
        ))
    }
}

/// Placeholders are checked by rendering with empty values: only unknown names and broken
/// syntax fail, which is what a user can fix in the file.
fn check_template(problems: &mut Problems, value: &S<String>) {
    if let Err(e) = Vars::default().render(&value.value) {
        problems.at(value.referenced, e);
    }
}

fn check_env(
    problems: &mut Problems,
    env: &BTreeMap<String, S<String>>,
    key: &str,
) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for (name, value) in env {
        if !is_env_name(name) {
            problems.at(
                value.referenced,
                format!(
                    "`{key}` name {name:?} is not a valid variable name ([A-Za-z_][A-Za-z0-9_]*)"
                ),
            );
        }
        check_template(problems, value);
        out.insert(name.clone(), value.value.clone());
    }
    out
}

fn duration_or(
    problems: &mut Problems,
    value: &Option<S<String>>,
    key: &str,
    default: Duration,
) -> Duration {
    match value {
        None => default,
        Some(v) => match crate::config::duration::parse(&v.value) {
            Ok(d) => d,
            Err(e) => {
                problems.at(v.referenced, format!("`{key}`: {e}"));
                default
            }
        },
    }
}

/// An argv list (hooks, health command): non-empty, placeholders known.
fn argv(problems: &mut Problems, value: &S<Vec<S<String>>>, key: &str) -> Vec<String> {
    if value.value.first().is_none_or(|a| a.value.is_empty()) {
        problems.at(
            value.referenced,
            format!(
                "`{key}` needs a program to run, like [\"scripts/notify\"]; remove the key to \
                 run nothing"
            ),
        );
    }
    for arg in &value.value {
        check_template(problems, arg);
    }
    strings(&value.value)
}

fn strings(values: &[S<String>]) -> Vec<String> {
    values.iter().map(|v| v.value.clone()).collect()
}

fn convert(raw: S<RawPipeline>, problems: &mut Problems) -> Pipeline {
    // Missing top-level keys are reported where the document starts.
    let root = raw.referenced;
    let raw = raw.value;
    let app = match raw.app {
        None => {
            problems.at(root, "missing `app`: name the application, like `app: web`");
            String::new()
        }
        Some(app) => {
            if !is_app_name(&app.value) {
                problems.at(
                    app.referenced,
                    format!(
                        "app {:?} is not a valid name: lowercase letters, digits, `_`, `.`, `-`, \
                         starting with a letter or digit, at most 63 characters",
                        app.value
                    ),
                );
            }
            app.value
        }
    };
    let on = match raw.on {
        None => Triggers::default(),
        Some(on) => Triggers {
            branches: on.value.branches.map(|p| patterns(problems, p, "branches")),
            tags: on.value.tags.map(|p| patterns(problems, p, "tags")),
        },
    };
    let env = check_env(problems, &raw.env, "env");

    let mut steps = Vec::new();
    match raw.steps {
        None => problems.at(root, "missing `steps`: list at least one step"),
        Some(list) if list.value.is_empty() => {
            problems.at(list.referenced, "`steps` is empty: list at least one step")
        }
        Some(list) => {
            // Names seen so far, and which of them are build steps, for `deploy.image`.
            let mut seen: BTreeMap<String, bool> = BTreeMap::new();
            let all_names: BTreeSet<String> = list
                .value
                .iter()
                .filter_map(|s| s.value.name.as_ref().map(|n| n.value.clone()))
                .collect();
            for step in list.value {
                let (name_loc, step) = convert_step(step, problems, &seen, &all_names);
                // A step without a name was reported already; one problem is enough.
                if !step.name.is_empty() {
                    if seen.contains_key(&step.name) {
                        problems.at(
                            name_loc,
                            format!(
                                "step name {:?} is used twice; give each step its own name",
                                step.name
                            ),
                        );
                    } else {
                        seen.insert(step.name.clone(), matches!(step.action, Action::Build(_)));
                    }
                }
                steps.push(step);
            }
        }
    }
    Pipeline {
        app,
        on,
        env,
        steps,
    }
}

fn patterns(problems: &mut Problems, list: Vec<S<String>>, key: &str) -> Vec<String> {
    let mut any_include = false;
    for p in &list {
        let glob = p.value.strip_prefix('!').unwrap_or(&p.value);
        any_include |= !p.value.starts_with('!');
        if glob.is_empty() {
            problems.at(p.referenced, format!("empty pattern in `on.{key}`"));
        } else if let Err(e) = build_glob(glob) {
            problems.at(
                p.referenced,
                format!(
                    "`on.{key}` pattern {:?} is not a glob: {}",
                    p.value,
                    e.kind()
                ),
            );
        }
    }
    if !any_include && let Some(first) = list.first() {
        // Like GitHub Actions: only exclusions would match nothing, which is never meant.
        problems.at(
            first.referenced,
            format!("`on.{key}` only excludes; add \"**\" to include every other one"),
        );
    }
    strings(&list)
}

/// Converts one step; also returns where its name is, for the duplicate-name check.
fn convert_step(
    step: S<RawStep>,
    problems: &mut Problems,
    earlier: &BTreeMap<String, bool>,
    all_names: &BTreeSet<String>,
) -> (Location, Step) {
    let at = step.referenced;
    let raw = step.value;
    let (name, name_loc) = match raw.name {
        None => {
            problems.at(at, "step without `name`: give it one, like `name: test`");
            (String::new(), at)
        }
        Some(n) => {
            if !is_step_name(&n.value) {
                problems.at(
                    n.referenced,
                    format!(
                        "step name {:?} may hold only letters, digits, `_`, `.`, `-`",
                        n.value
                    ),
                );
            }
            (n.value, n.referenced)
        }
    };
    let env = check_env(problems, &raw.env, "env");
    for secret in &raw.secrets {
        if !is_secret_name(&secret.value) {
            problems.at(
                secret.referenced,
                format!(
                    "secret {:?} is not a valid variable name: uppercase letters, digits and `_`, \
                     not starting with a digit",
                    secret.value
                ),
            );
        }
    }
    let timeout =
        raw.timeout
            .as_ref()
            .and_then(|t| match crate::config::duration::parse(&t.value) {
                Ok(d) if d.is_zero() => {
                    problems.at(t.referenced, "`timeout` must be more than 0s");
                    None
                }
                Ok(d) => Some(d),
                Err(e) => {
                    problems.at(t.referenced, format!("`timeout`: {e}"));
                    None
                }
            });

    let mut kinds = Vec::new();
    if raw.image.is_some() {
        kinds.push("image");
    }
    if raw.shell.is_some() {
        kinds.push("shell");
    }
    if raw.build.is_some() {
        kinds.push("build");
    }
    if raw.deploy.is_some() {
        kinds.push("deploy");
    }
    let placeholder = Action::Shell {
        commands: Vec::new(),
    };
    let commands_alone = "`commands` belongs with `image`: add `image:` to run them in a \
                          container, or use `shell:` to run them on the agent";
    let action = if let (true, Some(c)) = (kinds.is_empty(), &raw.commands) {
        problems.at(c.referenced, commands_alone);
        placeholder
    } else if kinds.len() != 1 {
        let what = if kinds.is_empty() {
            "has none".to_string()
        } else {
            format!(
                "has {}",
                kinds
                    .iter()
                    .map(|k| format!("`{k}`"))
                    .collect::<Vec<_>>()
                    .join(" and ")
            )
        };
        problems.at(
            at,
            format!(
                "step {name:?} needs exactly one of `image` (with `commands`), `shell`, `build`, \
                 `deploy`; it {what}"
            ),
        );
        placeholder
    } else if let Some(image) = raw.image {
        if image.value.trim().is_empty() || image.value.contains(char::is_whitespace) {
            problems.at(
                image.referenced,
                format!("`image` {:?} is not an image reference", image.value),
            );
        }
        let commands = match raw.commands {
            Some(c) if !c.value.0.is_empty() => c.value.0,
            Some(c) => {
                problems.at(
                    c.referenced,
                    "`commands` is empty: list what to run in the image",
                );
                Vec::new()
            }
            None => {
                problems.at(
                    image.referenced,
                    "`image` needs `commands`: list what to run in it",
                );
                Vec::new()
            }
        };
        Action::Container {
            image: image.value,
            commands,
        }
    } else {
        if let Some(c) = &raw.commands {
            problems.at(c.referenced, commands_alone);
        }
        if let Some(shell) = raw.shell {
            if shell.value.0.is_empty() {
                problems.at(
                    shell.referenced,
                    "`shell` is empty: list the commands to run",
                );
            }
            Action::Shell {
                commands: shell.value.0,
            }
        } else if let Some(build) = raw.build {
            Action::Build(convert_build(build, problems))
        } else if let Some(deploy) = raw.deploy {
            Action::Deploy(convert_deploy(deploy, problems, earlier, all_names))
        } else {
            placeholder
        }
    };
    (
        name_loc,
        Step {
            name,
            env,
            secrets: strings(&raw.secrets),
            timeout,
            action,
        },
    )
}

fn convert_build(build: S<RawBuild>, problems: &mut Problems) -> BuildSpec {
    let at = build.referenced;
    let raw = build.value;
    let path = |problems: &mut Problems, v: Option<S<String>>, key: &str, default: &str| match v {
        None => default.to_string(),
        Some(v) => {
            if !is_inside_checkout(&v.value) {
                problems.at(
                    v.referenced,
                    format!(
                        "`{key}` {:?} must be a relative path inside the checkout, without `..`",
                        v.value
                    ),
                );
            }
            v.value
        }
    };
    let context = path(problems, raw.context, "context", ".");
    let dockerfile = path(problems, raw.dockerfile, "dockerfile", "Dockerfile");
    let repository = match raw.repository {
        None => {
            problems.at(
                at,
                "`build` needs `repository`: where to push, like \"127.0.0.1:5000/acme/web\"",
            );
            String::new()
        }
        Some(r) => {
            if let Err(e) = check_repository(&r.value) {
                problems.at(r.referenced, e);
            }
            r.value
        }
    };
    let tags = match raw.tags {
        None => vec!["${commit}".to_string()],
        Some(tags) => {
            if tags.value.is_empty() {
                problems.at(
                    tags.referenced,
                    "`tags` is empty: list at least one, like [\"${commit_short}\"]",
                );
            }
            for tag in &tags.value {
                check_template(problems, tag);
                // A tag without placeholders is known now: check it now, not at push time.
                if tag.value.is_empty() {
                    problems.at(tag.referenced, "empty tag");
                }
            }
            strings(&tags.value)
        }
    };
    let mut args = BTreeMap::new();
    for (name, value) in &raw.args {
        if !is_env_name(name) {
            problems.at(
                value.referenced,
                format!("build arg {name:?} is not a valid name ([A-Za-z_][A-Za-z0-9_]*)"),
            );
        }
        check_template(problems, value);
        args.insert(name.clone(), value.value.clone());
    }
    BuildSpec {
        context,
        dockerfile,
        repository,
        tags,
        args,
    }
}

fn convert_deploy(
    deploy: S<RawDeploy>,
    problems: &mut Problems,
    earlier: &BTreeMap<String, bool>,
    all_names: &BTreeSet<String>,
) -> DeploySpec {
    let at = deploy.referenced;
    let raw = deploy.value;
    let image = match raw.image {
        None => {
            problems.at(
                at,
                "`deploy` needs `image`: the name of the build step whose image to deploy",
            );
            String::new()
        }
        Some(i) => {
            let name = &i.value;
            match earlier.get(name) {
                Some(true) => {}
                Some(false) => problems.at(
                    i.referenced,
                    format!("`deploy.image` names step {name:?}, which is not a `build` step"),
                ),
                None if all_names.contains(name) => problems.at(
                    i.referenced,
                    format!("`deploy.image` names step {name:?}, which comes later; move the build step before this one"),
                ),
                None => problems.at(
                    i.referenced,
                    format!("`deploy.image` names step {name:?}, which does not exist; name an earlier `build` step"),
                ),
            }
            i.value
        }
    };
    let hosts = match raw.hosts {
        None => {
            problems.at(
                at,
                "`deploy` needs `hosts`: the hosts to deploy to, like [web1, web2]",
            );
            Vec::new()
        }
        Some(h) => {
            if h.value.is_empty() {
                problems.at(
                    h.referenced,
                    "`hosts` is empty: list the hosts to deploy to",
                );
            }
            let mut seen = BTreeSet::new();
            for host in &h.value {
                if host.value.trim().is_empty() {
                    problems.at(host.referenced, "empty host name");
                } else if !seen.insert(host.value.as_str()) {
                    problems.at(
                        host.referenced,
                        format!("host {:?} is listed twice", host.value),
                    );
                }
            }
            strings(&h.value)
        }
    };
    let container = match raw.container {
        None => {
            problems.at(at, "`deploy` needs `container`, with at least `name`");
            ContainerSpec {
                name: String::new(),
                ports: Vec::new(),
                env: BTreeMap::new(),
                args: Vec::new(),
                volumes: Vec::new(),
            }
        }
        Some(c) => convert_container(c, problems),
    };
    let health = match raw.health {
        None => {
            problems.at(
                at,
                "`deploy` needs `health`: one of `http: {port, path}`, `tcp: PORT`, \
                 `command: [...]`, `docker: true`",
            );
            convert_health(None, problems)
        }
        Some(h) => convert_health(Some(h), problems),
    };
    let rollout = match raw.rollout {
        None => RolloutSpec {
            max_parallel: 1,
            auto_rollback: true,
            bake: Duration::ZERO,
            keep: 5,
        },
        Some(r) => {
            let max_parallel = match r.max_parallel {
                None => 1,
                Some(m) => u32::try_from(m.value)
                    .ok()
                    .filter(|&n| n >= 1)
                    .unwrap_or_else(|| {
                        problems.at(m.referenced, "`max_parallel` must be at least 1");
                        1
                    }),
            };
            let keep = match r.keep {
                None => 5,
                Some(k) => u32::try_from(k.value).unwrap_or_else(|_| {
                    problems.at(k.referenced, "`keep` must be 0 or more");
                    5
                }),
            };
            RolloutSpec {
                max_parallel,
                auto_rollback: r.auto_rollback.unwrap_or(true),
                bake: duration_or(problems, &r.bake, "bake", Duration::ZERO),
                keep,
            }
        }
    };
    let hooks = match raw.hooks {
        None => HooksSpec::default(),
        Some(h) => HooksSpec {
            before_host: h.before_host.map(|v| argv(problems, &v, "before_host")),
            after_host: h.after_host.map(|v| argv(problems, &v, "after_host")),
            after_deploy: h.after_deploy.map(|v| argv(problems, &v, "after_deploy")),
        },
    };
    DeploySpec {
        image,
        hosts,
        container,
        health,
        rollout,
        hooks,
    }
}

fn convert_container(c: S<RawContainer>, problems: &mut Problems) -> ContainerSpec {
    let raw = c.value;
    let name = match raw.name {
        None => {
            problems.at(
                c.referenced,
                "`container` needs `name`: what `docker ps` shows, like `name: web`",
            );
            String::new()
        }
        Some(n) => {
            if !is_container_name(&n.value) {
                problems.at(
                    n.referenced,
                    format!(
                        "container name {:?} is not valid: 2 to 100 letters, digits, `_`, `.`, `-`, \
                         starting with a letter or digit",
                        n.value
                    ),
                );
            }
            n.value
        }
    };
    for port in &raw.ports {
        if let Err(e) = check_port_mapping(&port.value) {
            problems.at(port.referenced, e);
        }
    }
    let env = check_env(problems, &raw.env, "container.env");
    for arg in &raw.args {
        check_template(problems, arg);
    }
    for volume in &raw.volumes {
        if volume.value.trim().is_empty() {
            problems.at(volume.referenced, "empty volume");
        }
    }
    ContainerSpec {
        name,
        ports: strings(&raw.ports),
        env,
        args: strings(&raw.args),
        volumes: strings(&raw.volumes),
    }
}

fn port_number(problems: &mut Problems, value: &S<i64>, key: &str) -> u16 {
    u16::try_from(value.value)
        .ok()
        .filter(|&p| p > 0)
        .unwrap_or_else(|| {
            problems.at(
                value.referenced,
                format!("`{key}` must be a port number, 1 to 65535"),
            );
            0
        })
}

fn convert_health(h: Option<S<RawHealth>>, problems: &mut Problems) -> HealthSpec {
    let mut spec = HealthSpec {
        check: HealthCheck::Docker,
        interval: Duration::from_secs(1),
        timeout: Duration::from_secs(2),
        healthy_for: Duration::from_secs(5),
        deadline: Duration::from_secs(60),
    };
    let Some(h) = h else { return spec };
    let at = h.referenced;
    let raw = h.value;

    let mut checks = Vec::new();
    if let Some(http) = raw.http {
        let path = match http.value.path {
            None => "/".to_string(),
            Some(p) => {
                if !p.value.starts_with('/') {
                    problems.at(
                        p.referenced,
                        format!("`http.path` {:?} must start with `/`", p.value),
                    );
                }
                p.value
            }
        };
        let port = port_number(problems, &http.value.port, "http.port");
        checks.push(("http", HealthCheck::Http { port, path }));
    }
    if let Some(tcp) = raw.tcp {
        checks.push(("tcp", HealthCheck::Tcp(port_number(problems, &tcp, "tcp"))));
    }
    if let Some(command) = raw.command {
        checks.push((
            "command",
            HealthCheck::Command(argv(problems, &command, "command")),
        ));
    }
    let docker_false = match raw.docker {
        Some(d) if d.value => {
            checks.push(("docker", HealthCheck::Docker));
            false
        }
        Some(_) => true,
        None => false,
    };
    match checks.len() {
        1 => {
            if let Some((_, check)) = checks.pop() {
                spec.check = check;
            }
        }
        0 => {
            let hint = if docker_false {
                " (`docker: false` is not a check)"
            } else {
                ""
            };
            problems.at(
                at,
                format!(
                    "`health` needs one check: `http: {{port, path}}`, `tcp: PORT`, \
                     `command: [...]` or `docker: true`{hint}"
                ),
            );
        }
        _ => problems.at(
            at,
            format!(
                "`health` has {} checks; keep exactly one",
                checks
                    .iter()
                    .map(|(k, _)| format!("`{k}`"))
                    .collect::<Vec<_>>()
                    .join(" and ")
            ),
        ),
    }

    spec.interval = duration_or(problems, &raw.interval, "interval", spec.interval);
    spec.timeout = duration_or(problems, &raw.timeout, "timeout", spec.timeout);
    spec.healthy_for = duration_or(problems, &raw.healthy_for, "healthy_for", spec.healthy_for);
    spec.deadline = duration_or(problems, &raw.deadline, "deadline", spec.deadline);
    let loc = |v: &Option<S<String>>| v.as_ref().map_or(at, |v| v.referenced);
    if spec.interval.is_zero() {
        problems.at(loc(&raw.interval), "`interval` must be more than 0s");
    }
    if spec.timeout.is_zero() {
        problems.at(loc(&raw.timeout), "`timeout` must be more than 0s");
    }
    if spec.deadline.is_zero() {
        problems.at(loc(&raw.deadline), "`deadline` must be more than 0s");
    } else if spec.healthy_for > spec.deadline {
        problems.at(
            loc(&raw.healthy_for),
            format!(
                "`healthy_for` ({}) is longer than `deadline` ({}): no container could pass; \
                 shorten it or raise `deadline`",
                humantime::format_duration(spec.healthy_for),
                humantime::format_duration(spec.deadline)
            ),
        );
    }
    spec
}

// ---------------------------------------------------------------------------------------------
// Commit messages, placeholders, environment, tags
// ---------------------------------------------------------------------------------------------

/// `[skip ci]` or `[ci skip]` anywhere in the message (case-insensitive): start no run.
pub fn skip_ci(message: &str) -> bool {
    let lower = message.to_ascii_lowercase();
    lower.contains("[skip ci]") || lower.contains("[ci skip]")
}

/// Values a placeholder can take. Missing ones (e.g. `tag` on a branch push) render as "".
#[derive(Debug, Clone, Default)]
pub struct Vars {
    /// Full commit SHA.
    pub commit: String,
    /// Branch name, without `refs/heads/`; empty on a tag push.
    pub branch: String,
    /// Tag name, without `refs/tags/`; empty on a branch push.
    pub tag: String,
    /// The full ref (`refs/heads/main`).
    pub git_ref: String,
    /// The pipeline's `app`.
    pub app: String,
    /// The repository (`acme/web`).
    pub repo: String,
    /// The host being deployed to, during a deployment.
    pub host: Option<String>,
    /// The release being deployed, during a deployment.
    pub release: Option<u64>,
    /// The run's id, when running under the agent.
    pub run: Option<i64>,
}

impl Vars {
    /// Fill `${commit}`, `${commit_short}` (first 7), `${branch}`, `${tag}`, `${ref}`,
    /// `${host}`, `${release}`, `${app}` in a declarative field. `$${` writes a literal `${`.
    /// An unknown or unclosed placeholder is an error naming it. Values are inserted as
    /// data: nothing is ever evaluated.
    pub fn render(&self, template: &str) -> Result<String, String> {
        let mut out = String::with_capacity(template.len());
        let mut rest = template;
        while let Some(dollar) = rest.find('$') {
            out.push_str(&rest[..dollar]);
            let after = &rest[dollar + 1..];
            if let Some(escaped) = after.strip_prefix("${") {
                out.push_str("${");
                rest = escaped;
            } else if let Some(inner) = after.strip_prefix('{') {
                let Some(end) = inner.find('}') else {
                    return Err(format!(
                        "unclosed placeholder in {template:?}: close it with `}}`, or write `$${{` \
                         for a literal `${{`"
                    ));
                };
                let name = &inner[..end];
                let value = self.value(name).ok_or_else(|| {
                    format!(
                        "unknown placeholder `${{{name}}}` in {template:?}; known: {} (write `$${{` \
                         for a literal `${{`)",
                        PLACEHOLDERS
                            .iter()
                            .map(|p| format!("${{{p}}}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                })?;
                out.push_str(&value);
                rest = &inner[end + 1..];
            } else {
                out.push('$');
                rest = after;
            }
        }
        out.push_str(rest);
        Ok(out)
    }

    fn value(&self, name: &str) -> Option<String> {
        Some(match name {
            "commit" => self.commit.clone(),
            "commit_short" => self.commit.chars().take(7).collect(),
            "branch" => self.branch.clone(),
            "tag" => self.tag.clone(),
            "ref" => self.git_ref.clone(),
            "host" => self.host.clone().unwrap_or_default(),
            "release" => self.release.map(|r| r.to_string()).unwrap_or_default(),
            "app" => self.app.clone(),
            _ => return None,
        })
    }

    /// The environment every command and shell step gets: `HOIST_COMMIT`,
    /// `HOIST_COMMIT_SHORT`, `HOIST_BRANCH`, `HOIST_TAG`, `HOIST_REF`, `HOIST_REPO`, `HOIST_APP`,
    /// `HOIST_RUN`, `HOIST_HOST`, `HOIST_RELEASE` (the last three when set), `CI=true`. Passed as
    /// variables, so a branch named `$(rm -rf /)` stays a string.
    pub fn env(&self) -> Vec<(String, String)> {
        let mut env = vec![
            ("HOIST_COMMIT", self.commit.clone()),
            ("HOIST_COMMIT_SHORT", self.commit.chars().take(7).collect()),
            ("HOIST_BRANCH", self.branch.clone()),
            ("HOIST_TAG", self.tag.clone()),
            ("HOIST_REF", self.git_ref.clone()),
            ("HOIST_REPO", self.repo.clone()),
            ("HOIST_APP", self.app.clone()),
        ];
        if let Some(run) = self.run {
            env.push(("HOIST_RUN", run.to_string()));
        }
        if let Some(host) = &self.host {
            env.push(("HOIST_HOST", host.clone()));
        }
        if let Some(release) = self.release {
            env.push(("HOIST_RELEASE", release.to_string()));
        }
        env.push(("CI", "true".to_string()));
        env.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
    }
}

/// Make a rendered tag valid under Docker's grammar `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`,
/// predictably: every other character becomes `-`, a leading `.` or `-` becomes `_`, and the
/// result is cut at 128 characters ("feature/x" → "feature-x"). Empty (e.g. `${tag}` on a
/// branch push) is an error: there is nothing to tag with.
pub fn sanitize_tag(tag: &str) -> Result<String, String> {
    if tag.is_empty() {
        return Err("the image tag is empty (a placeholder with no value on this push?)".into());
    }
    let mut out: String = tag
        .chars()
        .take(MAX_TAG_CHARS)
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
                c
            } else {
                '-'
            }
        })
        .collect();
    if out.starts_with(['.', '-']) {
        out.replace_range(..1, "_");
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parse `yaml`; `expect` is "ok" or the problems as `hoist validate` prints them.
    #[track_caller]
    fn check(yaml: &str, expect: &str) {
        let actual = match parse(yaml) {
            Ok(_) => "ok".to_string(),
            Err(problems) => format_problems(".hoist.yml", &problems),
        };
        let expect: Vec<&str> = expect.trim().lines().map(str::trim).collect();
        let actual_lines: Vec<&str> = actual.trim().lines().collect();
        let shown: String = yaml.chars().take(2000).collect();
        assert_eq!(
            actual_lines, expect,
            "\n--- yaml\n{shown}\n--- got\n{actual}"
        );
    }

    /// A valid pipeline with one deploy step, `deploy_tail` appended under `deploy:`
    /// (indented by 6), so each deploy rule can be checked alone. Deploy keys start on line 12.
    fn with_deploy(deploy_tail: &str) -> String {
        format!(
            "app: web\nsteps:\n  - name: image\n    build:\n      repository: r.example/acme/web\n  \
             - name: deploy\n    deploy:\n      image: image\n      hosts: [web1]\n      \
             container: {{name: web}}\n      health: {{tcp: 8080}}\n{deploy_tail}"
        )
    }

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
      hooks:
        before_host: [ "scripts/drain", "${host}" ]    # argv, run on the agent in the checkout
        after_host:  [ "scripts/undrain", "${host}" ]
        after_deploy: [ "scripts/notify" ]
"#;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn strs(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

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
            steps: vec![
                Step {
                    name: "test".into(),
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
                    env: BTreeMap::new(),
                    secrets: vec![],
                    timeout: None,
                    action: Action::Shell {
                        commands: strs(&["make check"]),
                    },
                },
                Step {
                    name: "image".into(),
                    env: BTreeMap::new(),
                    secrets: vec![],
                    timeout: None,
                    action: Action::Build(BuildSpec {
                        context: ".".into(),
                        dockerfile: "Dockerfile".into(),
                        repository: "127.0.0.1:5000/acme/web".into(),
                        tags: strs(&["${commit_short}", "${branch}"]),
                        args: map(&[("PROFILE", "release")]),
                    }),
                },
                Step {
                    name: "deploy".into(),
                    env: BTreeMap::new(),
                    secrets: vec![],
                    timeout: None,
                    action: Action::Deploy(DeploySpec {
                        image: "image".into(),
                        hosts: strs(&["web1", "web2", "web3"]),
                        container: ContainerSpec {
                            name: "web".into(),
                            ports: strs(&["8080:8080"]),
                            env: map(&[("NODE_ID", "${host}")]),
                            args: vec![],
                            volumes: vec![],
                        },
                        health: HealthSpec {
                            check: HealthCheck::Http {
                                port: 8080,
                                path: "/healthz".into(),
                            },
                            interval: secs(1),
                            timeout: secs(2),
                            healthy_for: secs(5),
                            deadline: secs(60),
                        },
                        rollout: RolloutSpec {
                            max_parallel: 1,
                            auto_rollback: true,
                            bake: secs(30),
                            keep: 5,
                        },
                        hooks: HooksSpec {
                            before_host: Some(strs(&["scripts/drain", "${host}"])),
                            after_host: Some(strs(&["scripts/undrain", "${host}"])),
                            after_deploy: Some(strs(&["scripts/notify"])),
                        },
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
                keep: 5
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
                path: "/".into()
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
    fn yaml_and_unknown_keys() {
        check(
            "",
            "
            .hoist.yml:1:1: missing `app`: name the application, like `app: web`
            .hoist.yml:1:1: missing `steps`: list at least one step",
        );
        check(
            "app: web\nsteps: []\n",
            ".hoist.yml:2:8: `steps` is empty: list at least one step",
        );
        check(
            "app: web\nsteps: [\n",
            ".hoist.yml:2:8: unclosed bracket '['",
        );
        check(
            "app: web\nstep: []\n",
            ".hoist.yml:2:1: unknown field `step`, expected one of app, on, env, steps",
        );
        check(
            "app: web\nsteps:\n  - name: t\n    image: x\n    commands: [a]\n    bogus: 1\n",
            ".hoist.yml:6:5: unknown field `bogus`, expected one of name, env, secrets, timeout, image, commands, shell, build, deploy",
        );
        check(
            &with_deploy("").replace("{tcp: 8080}", "{tcp: 1, retries: 3}"),
            ".hoist.yml:11:24: unknown field `retries`, expected one of http, tcp, command, docker, interval, timeout, healthy_for, deadline",
        );
        check(
            &with_deploy("").replace("[web1]", "web1"),
            ".hoist.yml:9:14: expected a list here, like [a, b]",
        );
        check(
            &with_deploy("").replace("{name: web}", "{name: [web]}"),
            ".hoist.yml:10:25: expected a single value here, not a list or a mapping",
        );
        check(
            &with_deploy("      rollout: {max_paralel: 2}\n"),
            ".hoist.yml:12:17: unknown field `max_paralel`, expected one of max_parallel, auto_rollback, bake, keep",
        );
        check(
            "app: web\napp: api\nsteps: []\n",
            ".hoist.yml:2:1: duplicate mapping key `app` is not allowed here",
        );
        check(
            "app: web\n---\napp: api\n",
            ".hoist.yml:2:1: the pipeline file holds more than one YAML document (`---`); keep one",
        );
        check(
            "app: web\nsteps:\n  - name: t\n    shell: {make: check}\n",
            ".hoist.yml:4:12: invalid type: map, expected a command or a list of commands",
        );
    }

    #[test]
    fn app_and_step_names() {
        check(
            "app: Web_1\nsteps:\n  - {name: t, shell: [a]}\n",
            r#".hoist.yml:1:6: app "Web_1" is not a valid name: lowercase letters, digits, `_`, `.`, `-`, starting with a letter or digit, at most 63 characters"#,
        );
        check(
            "app: web\nsteps:\n  - {name: \"run tests\", shell: [a]}\n",
            r#".hoist.yml:3:12: step name "run tests" may hold only letters, digits, `_`, `.`, `-`"#,
        );
        check(
            "app: web\nsteps:\n  - {name: t, shell: [a]}\n  - {name: t, shell: [b]}\n",
            r#".hoist.yml:4:12: step name "t" is used twice; give each step its own name"#,
        );
        check(
            "app: web\nsteps:\n  - {shell: [a]}\n",
            ".hoist.yml:3:5: step without `name`: give it one, like `name: test`",
        );
        check(
            "app: web.api-2_x\nsteps:\n  - {name: Test_1.a-b, shell: [a]}\n",
            "ok",
        );
    }

    #[test]
    fn exactly_one_action_per_step() {
        check(
            "app: web\nsteps:\n  - name: t\n    secrets: [A]\n",
            r#".hoist.yml:3:5: step "t" needs exactly one of `image` (with `commands`), `shell`, `build`, `deploy`; it has none"#,
        );
        check(
            "app: web\nsteps:\n  - name: t\n    shell: [a]\n    image: x\n    commands: [b]\n",
            r#".hoist.yml:3:5: step "t" needs exactly one of `image` (with `commands`), `shell`, `build`, `deploy`; it has `image` and `shell`"#,
        );
        check(
            "app: web\nsteps:\n  - name: t\n    image: x\n",
            ".hoist.yml:4:12: `image` needs `commands`: list what to run in it",
        );
        check(
            "app: web\nsteps:\n  - name: t\n    image: x\n    commands: []\n",
            ".hoist.yml:5:15: `commands` is empty: list what to run in the image",
        );
        check(
            "app: web\nsteps:\n  - name: t\n    commands: [a]\n",
            ".hoist.yml:4:15: `commands` belongs with `image`: add `image:` to run them in a container, or use `shell:` to run them on the agent",
        );
        check(
            "app: web\nsteps:\n  - name: t\n    shell: [a]\n    commands: [a]\n",
            ".hoist.yml:5:15: `commands` belongs with `image`: add `image:` to run them in a container, or use `shell:` to run them on the agent",
        );
        check(
            "app: web\nsteps:\n  - name: t\n    shell: []\n",
            ".hoist.yml:4:12: `shell` is empty: list the commands to run",
        );
        check(
            "app: web\nsteps:\n  - {shell: [a]}\n  - {shell: [b]}\n",
            r#"
            .hoist.yml:3:5: step without `name`: give it one, like `name: test`
            .hoist.yml:4:5: step without `name`: give it one, like `name: test`"#,
        );
    }

    #[test]
    fn secrets_env_and_timeouts() {
        check(
            "app: web\nsteps:\n  - name: t\n    shell: [a]\n    secrets: [DB_URL, db_url, 1X, A-B]\n",
            r#"
            .hoist.yml:5:23: secret "db_url" is not a valid variable name: uppercase letters, digits and `_`, not starting with a digit
            .hoist.yml:5:31: secret "1X" is not a valid variable name: uppercase letters, digits and `_`, not starting with a digit
            .hoist.yml:5:35: secret "A-B" is not a valid variable name: uppercase letters, digits and `_`, not starting with a digit"#,
        );
        check(
            "app: web\nenv: {\"A B\": x, OK: \"${commit}\"}\nsteps:\n  - {name: t, shell: [a], env: {X: \"${nope}\"}}\n",
            r#"
            .hoist.yml:2:14: `env` name "A B" is not a valid variable name ([A-Za-z_][A-Za-z0-9_]*)
            .hoist.yml:4:36: unknown placeholder `${nope}` in "${nope}"; known: ${commit}, ${commit_short}, ${branch}, ${tag}, ${ref}, ${host}, ${release}, ${app} (write `$${` for a literal `${`)"#,
        );
        check(
            "app: web\nsteps:\n  - {name: t, shell: [a], timeout: 0s}\n",
            ".hoist.yml:3:36: `timeout` must be more than 0s",
        );
        check(
            "app: web\nsteps:\n  - {name: t, shell: [a], timeout: ten minutes}\n",
            r#".hoist.yml:3:36: `timeout`: "ten minutes" is not a duration; write a number with a unit, like "500ms", "10s" or "5m""#,
        );
        check(
            "app: web\nsteps:\n  - {name: t, shell: [a], timeout: 1h 30m}\n",
            "ok",
        );
    }

    #[test]
    fn build_rules() {
        let build = |tail: &str| format!("app: web\nsteps:\n  - name: image\n    build:\n{tail}");
        check(
            &build("      context: .\n"),
            r#".hoist.yml:5:7: `build` needs `repository`: where to push, like "127.0.0.1:5000/acme/web""#,
        );
        check(
            &build("      repository: r.example/acme/web:latest\n"),
            r#".hoist.yml:5:19: repository "r.example/acme/web:latest" holds a tag; write it without `:TAG` and list tags under `tags:`"#,
        );
        check(
            &build("      repository: r.example/Acme/web\n"),
            r#".hoist.yml:5:19: repository "r.example/Acme/web" is not a valid image repository: lowercase letters, digits, `.`, `_`, `-` between `/`, optionally after a registry host"#,
        );
        check(
            &build(
                "      repository: localhost:5000/acme/web\n      context: ../other\n      dockerfile: /etc/passwd\n",
            ),
            r#"
            .hoist.yml:6:16: `context` "../other" must be a relative path inside the checkout, without `..`
            .hoist.yml:7:19: `dockerfile` "/etc/passwd" must be a relative path inside the checkout, without `..`"#,
        );
        check(
            &build("      repository: r/a\n      tags: []\n"),
            r#".hoist.yml:6:13: `tags` is empty: list at least one, like ["${commit_short}"]"#,
        );
        check(
            &build(
                "      repository: r/a\n      tags: [\"${commit_short}\", \"${sha}\"]\n      args: {V: \"${version}\", \"bad-name\": x}\n",
            ),
            r#"
            .hoist.yml:6:33: unknown placeholder `${sha}` in "${sha}"; known: ${commit}, ${commit_short}, ${branch}, ${tag}, ${ref}, ${host}, ${release}, ${app} (write `$${` for a literal `${`)
            .hoist.yml:7:17: unknown placeholder `${version}` in "${version}"; known: ${commit}, ${commit_short}, ${branch}, ${tag}, ${ref}, ${host}, ${release}, ${app} (write `$${` for a literal `${`)
            .hoist.yml:7:43: build arg "bad-name" is not a valid name ([A-Za-z_][A-Za-z0-9_]*)"#,
        );
    }

    #[test]
    fn deploy_image_must_name_an_earlier_build_step() {
        check(
            &with_deploy("").replace("image: image", "image: nope"),
            r#".hoist.yml:8:14: `deploy.image` names step "nope", which does not exist; name an earlier `build` step"#,
        );
        let later = "app: web\nsteps:\n  - name: deploy\n    deploy:\n      image: image\n      hosts: [web1]\n      container: {name: web}\n      health: {docker: true}\n  - name: image\n    build: {repository: r/a}\n";
        check(
            later,
            r#".hoist.yml:5:14: `deploy.image` names step "image", which comes later; move the build step before this one"#,
        );
        let not_build = "app: web\nsteps:\n  - name: image\n    shell: [make]\n  - name: deploy\n    deploy:\n      image: image\n      hosts: [web1]\n      container: {name: web}\n      health: {docker: true}\n";
        check(
            not_build,
            r#".hoist.yml:7:14: `deploy.image` names step "image", which is not a `build` step"#,
        );
        check(
            "app: web\nsteps:\n  - name: deploy\n    deploy: {}\n",
            r#"
            .hoist.yml:4:13: `deploy` needs `image`: the name of the build step whose image to deploy
            .hoist.yml:4:13: `deploy` needs `hosts`: the hosts to deploy to, like [web1, web2]
            .hoist.yml:4:13: `deploy` needs `container`, with at least `name`
            .hoist.yml:4:13: `deploy` needs `health`: one of `http: {port, path}`, `tcp: PORT`, `command: [...]`, `docker: true`"#,
        );
        check(
            &with_deploy("").replace("[web1]", "[web1, web1]"),
            r#".hoist.yml:9:21: host "web1" is listed twice"#,
        );
    }

    #[test]
    fn health_rules() {
        let health = |h: &str| with_deploy("").replace("health: {tcp: 8080}", h);
        check(
            &health("health: {interval: 1s}"),
            ".hoist.yml:11:15: `health` needs one check: `http: {port, path}`, `tcp: PORT`, `command: [...]` or `docker: true`",
        );
        check(
            &health("health: {docker: false}"),
            ".hoist.yml:11:15: `health` needs one check: `http: {port, path}`, `tcp: PORT`, `command: [...]` or `docker: true` (`docker: false` is not a check)",
        );
        check(
            &health("health: {tcp: 80, docker: true}"),
            ".hoist.yml:11:15: `health` has `tcp` and `docker` checks; keep exactly one",
        );
        check(
            &health("health: {tcp: 0}"),
            ".hoist.yml:11:21: `tcp` must be a port number, 1 to 65535",
        );
        check(
            &health("health: {tcp: 70000}"),
            ".hoist.yml:11:21: `tcp` must be a port number, 1 to 65535",
        );
        check(
            &health("health: {http: {port: 80, path: healthz}}"),
            r#".hoist.yml:11:39: `http.path` "healthz" must start with `/`"#,
        );
        check(
            &health("health: {command: []}"),
            r#".hoist.yml:11:25: `command` needs a program to run, like ["scripts/notify"]; remove the key to run nothing"#,
        );
        check(
            &health("health: {command: [curl, -f, localhost], healthy_for: 2m, deadline: 1m}"),
            ".hoist.yml:11:61: `healthy_for` (2m) is longer than `deadline` (1m): no container could pass; shorten it or raise `deadline`",
        );
        check(
            &health("health: {docker: true, interval: 0s, timeout: 0s}"),
            r#"
            .hoist.yml:11:40: `interval` must be more than 0s
            .hoist.yml:11:53: `timeout` must be more than 0s"#,
        );
        check(
            &health("health: {docker: true, deadline: soon}"),
            r#".hoist.yml:11:40: `deadline`: "soon" is not a duration; write a number with a unit, like "500ms", "10s" or "5m""#,
        );
    }

    #[test]
    fn rollout_container_and_hooks() {
        check(
            &with_deploy("      rollout: {max_parallel: 0, bake: 0s, keep: 0}\n"),
            ".hoist.yml:12:31: `max_parallel` must be at least 1",
        );
        check(
            &with_deploy("").replace("{name: web}", "{name: w}"),
            r#".hoist.yml:10:25: container name "w" is not valid: 2 to 100 letters, digits, `_`, `.`, `-`, starting with a letter or digit"#,
        );
        check(
            &with_deploy("").replace("{name: web}", "{name: -web}"),
            r#".hoist.yml:10:25: container name "-web" is not valid: 2 to 100 letters, digits, `_`, `.`, `-`, starting with a letter or digit"#,
        );
        check(
            &with_deploy("").replace("{name: web}", "{ports: [\"80:80\"]}"),
            ".hoist.yml:10:18: `container` needs `name`: what `docker ps` shows, like `name: web`",
        );
        let ports =
            |p: &str| with_deploy("").replace("{name: web}", &format!("{{name: web, ports: {p}}}"));
        check(
            &ports(r#"["8080:8080", "127.0.0.1:8080:8080", "53:53/udp", "[::1]:80:80/tcp"]"#),
            "ok",
        );
        check(
            &ports(r#"["8080", "80:80/sctp", "0:80", "localhost:80:80", "1:2:3:4"]"#),
            r#"
            .hoist.yml:10:38: port "8080" is not HOST:CONTAINER or IP:HOST:CONTAINER (like "8080:8080" or "127.0.0.1:8080:8080", optionally ending in /tcp or /udp)
            .hoist.yml:10:46: port "80:80/sctp" is not HOST:CONTAINER or IP:HOST:CONTAINER (like "8080:8080" or "127.0.0.1:8080:8080", optionally ending in /tcp or /udp)
            .hoist.yml:10:60: port "0:80" is not HOST:CONTAINER or IP:HOST:CONTAINER (like "8080:8080" or "127.0.0.1:8080:8080", optionally ending in /tcp or /udp)
            .hoist.yml:10:68: port "localhost:80:80" is not HOST:CONTAINER or IP:HOST:CONTAINER (like "8080:8080" or "127.0.0.1:8080:8080", optionally ending in /tcp or /udp)
            .hoist.yml:10:87: port "1:2:3:4" is not HOST:CONTAINER or IP:HOST:CONTAINER (like "8080:8080" or "127.0.0.1:8080:8080", optionally ending in /tcp or /udp)"#,
        );
        check(&with_deploy("").replace("{name: web}", "{name: web, env: {ID: \"${host}\", X: \"${hots}\"}, args: [\"--id=${host}\", \"${x\"]}"), r#"
            .hoist.yml:10:54: unknown placeholder `${hots}` in "${hots}"; known: ${commit}, ${commit_short}, ${branch}, ${tag}, ${ref}, ${host}, ${release}, ${app} (write `$${` for a literal `${`)
            .hoist.yml:10:89: unclosed placeholder in "${x": close it with `}`, or write `$${` for a literal `${`"#);
        check(
            &with_deploy(
                "      hooks:\n        before_host: []\n        after_host: [\"scripts/undrain\", \"${hots}\"]\n        after_deploy: [\"notify\", \"$${literal}\"]\n",
            ),
            r#"
            .hoist.yml:13:22: `before_host` needs a program to run, like ["scripts/notify"]; remove the key to run nothing
            .hoist.yml:14:41: unknown placeholder `${hots}` in "${hots}"; known: ${commit}, ${commit_short}, ${branch}, ${tag}, ${ref}, ${host}, ${release}, ${app} (write `$${` for a literal `${`)"#,
        );
    }

    #[test]
    fn trigger_patterns_are_checked() {
        check(
            "app: web\non: {branches: [\"!wip/*\"]}\nsteps:\n  - {name: t, shell: [a]}\n",
            r#".hoist.yml:2:17: `on.branches` only excludes; add "**" to include every other one"#,
        );
        check(
            "app: web\non: {branches: [\"[main\"], tags: [\"\"]}\nsteps:\n  - {name: t, shell: [a]}\n",
            r#"
            .hoist.yml:2:17: `on.branches` pattern "[main" is not a glob: unclosed character class; missing ']'
            .hoist.yml:2:34: empty pattern in `on.tags`"#,
        );
        check(
            "app: web\non: {branches: [], tags: [\"v*\"]}\nsteps:\n  - {name: t, shell: [a]}\n",
            "ok",
        );
    }

    #[test]
    fn triggers_match_like_github_actions() {
        use RefKind::{Branch, Tag};
        let on = Triggers {
            branches: Some(strs(&["main", "release/*", "!release/old", "feature/**"])),
            tags: Some(strs(&["v*"])),
        };
        let cases = [
            (Branch, "main", true),
            (Branch, "mainline", false),
            (Branch, "release/1.2", true),
            (Branch, "release/a/b", false),
            (Branch, "release/old", false),
            (Branch, "feature/a/b", true),
            (Branch, "dev", false),
            (Tag, "v1.0.0", true),
            (Tag, "1.0.0", false),
            (Tag, "main", false),
        ];
        for (kind, name, expect) in cases {
            assert_eq!(on.matches(kind, name), expect, "{kind:?} {name}");
        }
        // Parsed patterns behave the same as hand-built ones.
        let parsed = parse("app: web\non:\n  branches: [main, \"release/*\", \"!release/old\"]\n  tags: [\"v*\"]\nsteps:\n  - {name: t, shell: [a]}\n").unwrap();
        assert!(
            parsed.on.matches(Branch, "release/1.2") && !parsed.on.matches(Branch, "release/old")
        );

        let default = Triggers::default();
        assert!(default.matches(Branch, "main") && default.matches(Branch, "any/thing"));
        assert!(!default.matches(Tag, "v1"));
        let tags_only = Triggers {
            branches: Some(vec![]),
            tags: Some(strs(&["**"])),
        };
        assert!(!tags_only.matches(Branch, "main") && tags_only.matches(Tag, "v1/rc"));
        // An exclusion that cannot compile (hand-made JSON only) fails closed.
        let broken = Triggers {
            branches: Some(strs(&["**", "![x"])),
            tags: None,
        };
        assert!(!broken.matches(Branch, "main"));
    }

    #[test]
    fn skip_ci_markers() {
        assert!(skip_ci("docs: typo [skip ci]"));
        assert!(skip_ci("[CI Skip] bump\n\nbody"));
        assert!(skip_ci("fix\n\nnot worth a run [Skip CI]"));
        assert!(!skip_ci("skip ci"));
        assert!(!skip_ci("[skip-ci]"));
        assert!(!skip_ci(""));
    }

    fn vars() -> Vars {
        Vars {
            commit: "0123456789abcdef0123456789abcdef01234567".into(),
            branch: "feature/x".into(),
            tag: String::new(),
            git_ref: "refs/heads/feature/x".into(),
            app: "web".into(),
            repo: "acme/web".into(),
            host: Some("web1".into()),
            release: Some(42),
            run: Some(7),
        }
    }

    #[test]
    fn render_placeholders() {
        let v = vars();
        assert_eq!(
            v.render(
                "${commit} ${commit_short} ${branch} [${tag}] ${ref} ${host} ${release} ${app}"
            )
            .unwrap(),
            "0123456789abcdef0123456789abcdef01234567 0123456 feature/x [] refs/heads/feature/x web1 42 web"
        );
        assert_eq!(
            v.render("$${x} costs $5, ${app}$").unwrap(),
            "${x} costs $5, web$"
        );
        // Left to right: `$`, then the escape `$${`.
        assert_eq!(v.render("$$${app}").unwrap(), "$${app}");
        assert_eq!(Vars::default().render("${host}-${release}").unwrap(), "-");
        let err = v.render("${repo}").unwrap_err();
        assert!(err.contains("unknown placeholder `${repo}`"), "{err}");
        let err = v.render("a ${commit").unwrap_err();
        assert!(err.starts_with("unclosed placeholder"), "{err}");
        assert!(v.render("${}").is_err());
    }

    #[test]
    fn a_hostile_branch_name_is_data() {
        let evil = "x;$(touch${IFS}/tmp/pwned)";
        let v = Vars {
            branch: evil.into(),
            ..vars()
        };
        assert_eq!(v.render("${branch}").unwrap(), evil);
        assert_eq!(
            v.render("pre-${branch}-post").unwrap(),
            format!("pre-{evil}-post")
        );
        let env = v.env();
        assert!(env.contains(&("HOIST_BRANCH".to_string(), evil.to_string())));
        assert_eq!(
            sanitize_tag(&v.render("${branch}").unwrap()).unwrap(),
            "x---touch--IFS--tmp-pwned-"
        );
    }

    #[test]
    fn sanitize_tags() {
        assert_eq!(sanitize_tag("feature/x").unwrap(), "feature-x");
        assert_eq!(sanitize_tag("v1.2.3").unwrap(), "v1.2.3");
        assert_eq!(sanitize_tag(".hidden").unwrap(), "_hidden");
        assert_eq!(sanitize_tag("-x").unwrap(), "_x");
        assert_eq!(sanitize_tag("/x").unwrap(), "_x");
        assert_eq!(sanitize_tag("é").unwrap(), "_");
        assert_eq!(sanitize_tag(&"a".repeat(300)).unwrap().len(), 128);
        assert_eq!(sanitize_tag(&"é".repeat(300)).unwrap().len(), 128);
        assert!(sanitize_tag("").is_err());
    }

    #[test]
    fn environment_of_steps() {
        let env: BTreeMap<String, String> = vars().env().into_iter().collect();
        let expect = map(&[
            ("HOIST_COMMIT", "0123456789abcdef0123456789abcdef01234567"),
            ("HOIST_COMMIT_SHORT", "0123456"),
            ("HOIST_BRANCH", "feature/x"),
            ("HOIST_TAG", ""),
            ("HOIST_REF", "refs/heads/feature/x"),
            ("HOIST_REPO", "acme/web"),
            ("HOIST_APP", "web"),
            ("HOIST_RUN", "7"),
            ("HOIST_HOST", "web1"),
            ("HOIST_RELEASE", "42"),
            ("CI", "true"),
        ]);
        assert_eq!(env, expect);
        let bare: Vec<String> = Vars::default().env().into_iter().map(|(k, _)| k).collect();
        assert!(
            !bare
                .iter()
                .any(|k| k == "HOIST_RUN" || k == "HOIST_HOST" || k == "HOIST_RELEASE")
        );
    }

    #[test]
    fn billion_laughs_is_refused_quickly() {
        // The classic: ten levels of nine aliases, 9^9 strings if expanded.
        let mut bomb = String::from(
            "app: web\nenv:\n  A0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n",
        );
        for i in 1..10 {
            let refs = vec![format!("*a{}", i - 1); 9].join(", ");
            bomb.push_str(&format!("  A{i}: &a{i} [{refs}]\n"));
        }
        bomb.push_str("steps:\n  - {name: t, shell: [a]}\n");
        let started = std::time::Instant::now();
        let problems = parse(&bomb).unwrap_err();
        assert!(
            started.elapsed() < Duration::from_millis(200),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(problems.len(), 1);
        assert!(
            problems[0].message.contains("too many aliases"),
            "{problems:?}"
        );
        assert!(problems[0].line >= 5, "{problems:?}");

        // Many aliases of one small value, where deserialization would accept every one.
        let flood = format!(
            "app: web\nsteps:\n  - name: t\n    shell: [&x a, {}]\n",
            vec!["*x"; 5000].join(", ")
        );
        let problems = parse(&flood).unwrap_err();
        assert!(
            problems[0].message.contains("too many aliases"),
            "{problems:?}"
        );
        // A few aliases are fine.
        check(
            "app: web\nenv: {A: &v x}\nsteps:\n  - {name: t, shell: [*v, *v]}\n",
            "ok",
        );
    }

    #[test]
    fn deep_nesting_and_huge_files_are_refused() {
        let deep = format!(
            "app: web\nsteps: {}{}\n",
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        let started = std::time::Instant::now();
        check(
            &deep,
            ".hoist.yml:2:40: the pipeline file is nested too deeply (more than 32 levels)",
        );
        assert!(started.elapsed() < Duration::from_millis(200));

        let mut block = String::from("app: web\nsteps:\n");
        for depth in 0..40 {
            block.push_str(&format!("{}- \n", "  ".repeat(depth + 1)));
        }
        check(
            &block,
            ".hoist.yml:34:65: the pipeline file is nested too deeply (more than 32 levels)",
        );

        let huge = format!("app: web\n# {}\n", "x".repeat(MAX_FILE_BYTES));
        check(
            &huge,
            &format!(
                ".hoist.yml:1:1: the pipeline file is too large ({} bytes, at most 1048576); a pipeline this size is almost certainly not meant as one",
                huge.len()
            ),
        );
    }

    #[test]
    fn no_input_panics() {
        // Every truncation of the fullest example: unclosed brackets, half keys, cut scalars.
        let full = include_str!("../pipelines/full.yml");
        // Every 11th cut keeps the test near a second in debug builds.
        for (i, _) in full.char_indices().step_by(11) {
            let _ = parse(&full[..i]);
        }
        for text in [
            "\u{0}",
            "\u{feff}app: web",
            "- a",
            "42",
            "~",
            "&a [*a]",
            "app: !!binary x",
            "? [a]\n: b",
        ] {
            let _ = parse(text);
        }
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
