//! The `.hoist.yml` as written: serde shapes that know every key (`deny_unknown_fields`) and
//! keep each value's line and column, so that [`super::validate`] can report every problem at
//! its place. Reading goes through serde-saphyr with budgets sized for pipelines, and its errors
//! become one [`Problem`] in our words.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_saphyr::{MessageFormatter, Spanned};

use super::Problem;
use super::prescan::{MAX_DEPTH, MAX_FILE_BYTES, TOO_DEEP, TOO_LARGE, TOO_MANY_ALIASES};

/// A value with the place it was written at.
pub(super) type S<T> = Spanned<T>;

/// The whole file.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPipeline {
    pub(super) app: Option<S<String>>,
    pub(super) on: Option<S<RawTriggers>>,
    #[serde(default)]
    pub(super) env: BTreeMap<String, S<String>>,
    pub(super) steps: Option<S<Vec<S<RawStep>>>>,
    pub(super) atomic: Option<S<bool>>,
    pub(super) services: Option<S<Vec<S<RawService>>>>,
}

/// A step's `when:`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawWhen {
    pub(super) branches: Option<Vec<S<String>>>,
    pub(super) tags: Option<Vec<S<String>>>,
    pub(super) manual: Option<S<bool>>,
}

/// One entry of `services:`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawService {
    pub(super) name: Option<S<String>>,
    pub(super) image: Option<S<String>>,
    pub(super) command: Option<S<Vec<S<String>>>>,
    #[serde(default)]
    pub(super) env: BTreeMap<String, S<String>>,
    pub(super) ready: Option<S<RawReady>>,
}

/// A service's `ready:`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawReady {
    pub(super) tcp: Option<S<u16>>,
    pub(super) deadline: Option<S<String>>,
}

/// `on:`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTriggers {
    pub(super) branches: Option<Vec<S<String>>>,
    pub(super) tags: Option<Vec<S<String>>>,
}

/// One entry of `steps:`; which action it has is a validation rule, with a better message
/// than serde's.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStep {
    pub(super) name: Option<S<String>>,
    #[serde(default)]
    pub(super) env: BTreeMap<String, S<String>>,
    #[serde(default)]
    pub(super) secrets: Vec<S<String>>,
    pub(super) timeout: Option<S<String>>,
    pub(super) image: Option<S<String>>,
    pub(super) commands: Option<S<CommandList>>,
    pub(super) shell: Option<S<CommandList>>,
    pub(super) build: Option<S<RawBuild>>,
    pub(super) deploy: Option<S<RawDeploy>>,
    pub(super) needs: Option<S<Vec<S<String>>>>,
    pub(super) when: Option<S<RawWhen>>,
}

/// `commands:` and `shell:` take a list, or one string: `shell: make check`, or a `|` block
/// that reads as one script (it runs under `sh -e` all the same).
pub(super) struct CommandList(pub(super) Vec<String>);

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

/// `build:`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBuild {
    pub(super) app: Option<S<String>>,
    pub(super) context: Option<S<String>>,
    pub(super) dockerfile: Option<S<String>>,
    pub(super) repository: Option<S<String>>,
    pub(super) tags: Option<S<Vec<S<String>>>>,
    #[serde(default)]
    pub(super) args: BTreeMap<String, S<String>>,
}

/// `deploy:`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDeploy {
    pub(super) image: Option<S<String>>,
    pub(super) hosts: Option<S<Vec<S<String>>>>,
    pub(super) container: Option<S<RawContainer>>,
    pub(super) health: Option<S<RawHealth>>,
    pub(super) rollout: Option<RawRollout>,
    pub(super) hooks: Option<RawHooks>,
    pub(super) balancer: Option<S<RawBalancerUse>>,
}

/// `deploy.balancer:`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBalancerUse {
    pub(super) name: Option<S<String>>,
    pub(super) upstream: Option<S<String>>,
    pub(super) port: Option<S<i64>>,
    pub(super) check: Option<S<String>>,
    pub(super) drain: Option<S<String>>,
}

/// `deploy.container:`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawContainer {
    pub(super) name: Option<S<String>>,
    pub(super) replicas: Option<S<i64>>,
    #[serde(default)]
    pub(super) ports: Vec<S<String>>,
    #[serde(default)]
    pub(super) env: BTreeMap<String, S<String>>,
    #[serde(default)]
    pub(super) args: Vec<S<String>>,
    #[serde(default)]
    pub(super) volumes: Vec<S<String>>,
    #[serde(default)]
    pub(super) secrets: Vec<S<String>>,
    pub(super) network: Option<S<String>>,
    pub(super) memory: Option<S<Scalar>>,
    pub(super) cpus: Option<S<Scalar>>,
    pub(super) stop_signal: Option<S<String>>,
    pub(super) stop_timeout: Option<S<String>>,
    pub(super) user: Option<S<Scalar>>,
    pub(super) working_dir: Option<S<String>>,
    pub(super) entrypoint: Option<S<Vec<S<String>>>>,
    pub(super) hostname: Option<S<String>>,
    #[serde(default)]
    pub(super) labels: BTreeMap<String, S<String>>,
}

/// A single value written as a string or a number (`cpus: 1.5`, `cpus: "1.5"`, `user: 1000`),
/// kept as its text; what it must look like is a validation rule.
pub(super) struct Scalar(pub(super) String);

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Scalar;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a single value, like \"1.5\" or 512m")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// `deploy.health:`; exactly one check is a validation rule.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHealth {
    pub(super) http: Option<S<RawHttp>>,
    pub(super) tcp: Option<S<i64>>,
    pub(super) command: Option<S<Vec<S<String>>>>,
    pub(super) docker: Option<S<bool>>,
    pub(super) interval: Option<S<String>>,
    pub(super) timeout: Option<S<String>>,
    pub(super) healthy_for: Option<S<String>>,
    pub(super) deadline: Option<S<String>>,
    pub(super) start_period: Option<S<String>>,
    pub(super) fail_after: Option<S<i64>>,
}

/// `health.http:`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHttp {
    pub(super) port: S<i64>,
    pub(super) path: Option<S<String>>,
    pub(super) host: Option<S<String>>,
    pub(super) status: Option<S<Scalar>>,
}

/// `deploy.rollout:`; a missing one is the default of every key.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRollout {
    pub(super) max_parallel: Option<S<i64>>,
    pub(super) auto_rollback: Option<bool>,
    pub(super) bake: Option<S<String>>,
    pub(super) keep: Option<S<i64>>,
    pub(super) repair: Option<bool>,
}

/// `deploy.hooks:`; a missing one is no hooks.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHooks {
    pub(super) before_host: Option<S<Vec<S<String>>>>,
    pub(super) after_host: Option<S<Vec<S<String>>>>,
    pub(super) after_deploy: Option<S<Vec<S<String>>>>,
}

/// Deserialize the whole file into its raw shape; a YAML or type error stops here, alone.
pub(super) fn read(text: &str) -> Result<S<RawPipeline>, Problem> {
    serde_saphyr::from_str_with_options(text, yaml_options()).map_err(|e| yaml_problem(&e))
}

/// Budgets sized for pipelines (a big real one is a few hundred nodes, nesting 6 deep) rather
/// than serde-saphyr's permissive defaults. The second line of defence behind [`super::prescan`]:
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

#[cfg(test)]
mod tests {
    use crate::pipeline::testing::{check, with_deploy};

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
            ".hoist.yml:2:1: unknown field `step`, expected one of app, on, env, steps, atomic, services",
        );
        check(
            "app: web\nsteps:\n  - name: t\n    image: x\n    commands: [a]\n    bogus: 1\n",
            ".hoist.yml:6:5: unknown field `bogus`, expected one of name, env, secrets, timeout, image, commands, shell, build, deploy, needs, when",
        );
        check(
            &with_deploy("").replace("{tcp: 8080}", "{tcp: 1, retries: 3}"),
            ".hoist.yml:11:24: unknown field `retries`, expected one of http, tcp, command, docker, interval, timeout, healthy_for, deadline, start_period, fail_after",
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
            ".hoist.yml:12:17: unknown field `max_paralel`, expected one of max_parallel, auto_rollback, bake, keep, repair",
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
}
