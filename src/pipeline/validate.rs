//! From the raw shape to the model: every rule of a `.hoist.yml` that serde cannot express
//! (names, references between steps, port and repository grammars, placeholders, durations),
//! each broken rule reported at its place. Validation goes on after a problem, with a
//! placeholder value, so that `hoist validate` shows every problem at once.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use serde_saphyr::Location;

use super::raw::{
    RawBalancerUse, RawBuild, RawContainer, RawDeploy, RawHealth, RawHooks, RawPipeline, RawReady,
    RawRollout, RawService, RawStep, RawWhen, S,
};
use super::triggers::build_glob;
use super::{
    Action, BalancerSpec, BuildSpec, ContainerSpec, DeploySpec, HealthCheck, HealthSpec, HooksSpec,
    Pipeline, Problem, Ready, RolloutSpec, Service, StatusRange, Step, Triggers, Vars, When,
    is_var_key,
};

/// The pipeline, or every problem found in it sorted by place (problems at one place keep the
/// order they were found in).
pub(super) fn pipeline(raw: S<RawPipeline>) -> Result<Pipeline, Vec<Problem>> {
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
            branches: on
                .value
                .branches
                .map(|p| patterns(problems, p, "on.branches")),
            tags: on.value.tags.map(|p| patterns(problems, p, "on.tags")),
        },
    };
    let env = check_env(problems, &raw.env, "env");

    let atomic = raw.atomic.is_some_and(|a| a.value);
    let services = raw
        .services
        .map(|list| convert_services(problems, list.value))
        .unwrap_or_default();

    let mut steps = Vec::new();
    match raw.steps {
        None => problems.at(root, "missing `steps`: list at least one step"),
        Some(list) if list.value.is_empty() => {
            problems.at(list.referenced, "`steps` is empty: list at least one step")
        }
        Some(list) => {
            let mut places = Vec::new();
            let mut names = BTreeSet::new();
            for step in list.value {
                let (place, step) = convert_step(step, problems, &app);
                // A step without a name was reported already; one problem is enough.
                if !step.name.is_empty() && !names.insert(step.name.clone()) {
                    problems.at(
                        place.name,
                        format!(
                            "step name {:?} is used twice; give each step its own name",
                            step.name
                        ),
                    );
                }
                if let Some(at) = place.when {
                    check_when_can_match(problems, &on, &step, at);
                }
                steps.push(step);
                places.push(place);
            }
            check_references(problems, &steps, &places);
        }
    }
    Pipeline {
        app,
        on,
        env,
        atomic,
        services,
        steps,
    }
}

/// A step's `when:`: its patterns checked like `on`'s.
fn convert_when(problems: &mut Problems, raw: RawWhen) -> When {
    When {
        branches: raw.branches.map(|p| patterns(problems, p, "when.branches")),
        tags: raw.tags.map(|p| patterns(problems, p, "when.tags")),
        manual: raw.manual.is_some_and(|m| m.value),
    }
}

/// A `when` that no push starting a run can satisfy is a mistake: the step would always be
/// skipped. Where `on` lists plain names (no glob), each is tried against the `when`.
fn check_when_can_match(problems: &mut Problems, on: &Triggers, step: &Step, at: Location) {
    use crate::forge::RefKind;
    let when = &step.when;
    if when.branches.is_none() && when.tags.is_none() {
        return;
    }
    let possible =
        |kind: RefKind, on_list: Option<&Vec<String>>, when_list: &Option<Vec<String>>| {
            let Some(when_list) = when_list else {
                return false;
            };
            if !when_list.iter().any(|p| !p.starts_with('!')) {
                return false;
            }
            match on_list {
                // `on` lets every branch through (its default for branches).
                None => kind == RefKind::Branch,
                Some(on_list) if on_list.iter().all(|p| is_plain_name(p)) => {
                    on_list.iter().any(|name| when.skips(kind, name).is_none())
                }
                Some(on_list) => !on_list.is_empty(),
            }
        };
    let branch = possible(RefKind::Branch, on.branches.as_ref(), &when.branches);
    let tag = possible(RefKind::Tag, on.tags.as_ref(), &when.tags);
    if !branch && !tag {
        problems.at(
            at,
            format!(
                "the `when` of step {:?} can never match a push that `on` lets start a run, so \
                 the step would always be skipped; widen `when` or `on`",
                step.name
            ),
        );
    }
}

/// A pattern without glob syntax or exclusion: it names exactly one ref.
fn is_plain_name(p: &str) -> bool {
    !p.is_empty() && !p.contains(['*', '?', '[', ']', '{', '}', '\\', '!'])
}

/// `services:`: names that a step can resolve on the run's network, once each; an image; the
/// optional argv, env and readiness.
fn convert_services(problems: &mut Problems, list: Vec<S<RawService>>) -> Vec<Service> {
    let mut names = BTreeSet::new();
    let mut out = Vec::new();
    for raw in list {
        let at = raw.referenced;
        let raw = raw.value;
        let name = match raw.name {
            None => {
                problems.at(at, "a service needs a `name`: steps reach it by that name");
                String::new()
            }
            Some(n) => {
                if !is_service_name(&n.value) {
                    problems.at(
                        n.referenced,
                        format!(
                            "service name {:?} is not a valid host name: lowercase letters, \
                             digits and `-`, starting with a letter or digit, at most 63 characters",
                            n.value
                        ),
                    );
                } else if !names.insert(n.value.clone()) {
                    problems.at(
                        n.referenced,
                        format!("service name {:?} is used twice", n.value),
                    );
                }
                n.value
            }
        };
        let image = match raw.image {
            Some(i) if !i.value.trim().is_empty() => i.value,
            Some(i) => {
                problems.at(i.referenced, "`image` of a service is empty");
                String::new()
            }
            None => {
                problems.at(at, format!("service {name:?} needs an `image`"));
                String::new()
            }
        };
        let command = raw
            .command
            .as_ref()
            .map(|c| argv(problems, c, "services.command"));
        let env = check_env(problems, &raw.env, "services.env");
        let ready = raw.ready.map(|r| convert_ready(problems, r));
        out.push(Service {
            name,
            image,
            command,
            env,
            ready,
        });
    }
    out
}

fn convert_ready(problems: &mut Problems, raw: S<RawReady>) -> Ready {
    let RawReady { tcp, deadline } = raw.value;
    let tcp = match tcp {
        Some(p) if p.value > 0 => p.value,
        Some(p) => {
            problems.at(p.referenced, "`ready.tcp` must be a port from 1 to 65535");
            1
        }
        None => {
            problems.at(
                raw.referenced,
                "`ready` needs `tcp`: the container port that answers once the service is up",
            );
            1
        }
    };
    let deadline = duration_or(
        problems,
        &deadline,
        "ready.deadline",
        Duration::from_secs(60),
    );
    Ready { tcp, deadline }
}

fn is_service_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
}

/// Where a step and its references to other steps are written, for the rules that need every
/// step at once (`needs`, `deploy.image`, one build per app).
struct Places {
    /// The step's name (the step itself when it has none).
    name: Location,
    /// Each entry of `needs`, in the order of [`Step::needs`].
    needs: Vec<Location>,
    /// `deploy.image`, on a deploy step that has one.
    image: Option<Location>,
    /// `build.app`, or `build:` itself when the app is the default, on a build step.
    build: Option<Location>,
    /// `when:`, on a step that has one.
    when: Option<Location>,
}

/// The rules between steps: every need names another existing step, once; the needs make no
/// cycle; a deploy's `image` is a build step that runs before it (earlier in file order, or
/// one it needs, directly or through its needs, in a graph); each app has one build step.
fn check_references(problems: &mut Problems, steps: &[Step], places: &[Places]) {
    let mut index: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, s) in steps.iter().enumerate() {
        index.entry(s.name.as_str()).or_insert(i);
    }
    // The edges that name a real other step: what the cycle and reachability checks walk.
    let mut edges: Vec<Vec<(usize, Location)>> = vec![Vec::new(); steps.len()];
    for (i, s) in steps.iter().enumerate() {
        let mut seen = BTreeSet::new();
        for (need, &loc) in s.needs.iter().zip(&places[i].needs) {
            if *need == s.name {
                problems.at(
                    loc,
                    format!("step {need:?} needs itself; remove it from `needs`"),
                );
            } else if !seen.insert(need.as_str()) {
                problems.at(loc, format!("step {need:?} is listed twice in `needs`"));
            } else {
                match index.get(need.as_str()) {
                    Some(&j) => edges[i].push((j, loc)),
                    None => problems.at(
                        loc,
                        format!("`needs` names step {need:?}, which does not exist"),
                    ),
                }
            }
        }
    }
    check_cycles(problems, steps, &edges);
    let graph = steps.iter().any(|s| !s.needs.is_empty());
    let mut builds: BTreeMap<&str, &str> = BTreeMap::new();
    for (i, s) in steps.iter().enumerate() {
        match &s.action {
            Action::Deploy(d) => {
                if let Some(loc) = places[i].image {
                    deploy_image(problems, steps, &index, &edges, graph, i, &d.image, loc);
                }
            }
            Action::Build(b) if !b.app.is_empty() => {
                if let (Some(first), Some(loc)) = (builds.get(b.app.as_str()), places[i].build) {
                    problems.at(
                        loc,
                        format!(
                            "app {:?} is built by step {first:?} already; each app has one build \
                             step (set `build.app` to build another app)",
                            b.app
                        ),
                    );
                } else {
                    builds.insert(&b.app, &s.name);
                }
            }
            _ => {}
        }
    }
}

/// `deploy.image` of step `at`: a build step that runs before it.
#[allow(clippy::too_many_arguments)]
fn deploy_image(
    problems: &mut Problems,
    steps: &[Step],
    index: &BTreeMap<&str, usize>,
    edges: &[Vec<(usize, Location)>],
    graph: bool,
    at: usize,
    image: &str,
    loc: Location,
) {
    let wrong = match index.get(image) {
        None if graph => "does not exist; name a `build` step this one needs".to_string(),
        None => "does not exist; name an earlier `build` step".to_string(),
        Some(&j) if !matches!(steps[j].action, Action::Build(_)) => {
            "is not a `build` step".to_string()
        }
        Some(&j) if graph && !reaches(edges, at, j) => {
            format!("this step does not need; add {image:?} to its `needs` (or to a step it needs)")
        }
        Some(&j) if !graph && j > at => {
            "comes later; move the build step before this one".to_string()
        }
        Some(_) => return,
    };
    problems.at(
        loc,
        format!("`deploy.image` names step {image:?}, which {wrong}"),
    );
}

/// Whether step `from` waits for step `to`, directly or through its needs.
fn reaches(edges: &[Vec<(usize, Location)>], from: usize, to: usize) -> bool {
    let mut seen = vec![false; edges.len()];
    let mut stack = vec![from];
    while let Some(i) = stack.pop() {
        for &(j, _) in &edges[i] {
            if j == to {
                return true;
            }
            if !seen[j] {
                seen[j] = true;
                stack.push(j);
            }
        }
    }
    false
}

/// Every cycle of `needs`, reported at the need that closes it. A depth-first walk with an
/// explicit stack (a hostile file may hold thousands of steps): an edge back to a step on the
/// current path closes a cycle.
fn check_cycles(problems: &mut Problems, steps: &[Step], edges: &[Vec<(usize, Location)>]) {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        OnPath,
        Done,
    }
    let mut mark = vec![Mark::New; steps.len()];
    for root in 0..steps.len() {
        if mark[root] != Mark::New {
            continue;
        }
        // (step, next edge to look at)
        let mut path: Vec<(usize, usize)> = vec![(root, 0)];
        mark[root] = Mark::OnPath;
        while let Some(&mut (i, ref mut next)) = path.last_mut() {
            let Some(&(j, loc)) = edges[i].get(*next) else {
                mark[i] = Mark::Done;
                path.pop();
                continue;
            };
            *next += 1;
            match mark[j] {
                Mark::New => {
                    mark[j] = Mark::OnPath;
                    path.push((j, 0));
                }
                Mark::OnPath => {
                    let start = path.iter().position(|&(k, _)| k == j).unwrap_or(0);
                    let cycle: Vec<&str> = path[start..]
                        .iter()
                        .map(|&(k, _)| steps[k].name.as_str())
                        .chain(std::iter::once(steps[j].name.as_str()))
                        .collect();
                    problems.at(
                        loc,
                        format!(
                            "`needs` makes a cycle: {} (each needs the next); no step of it \
                             could ever start",
                            cycle.join(" → ")
                        ),
                    );
                }
                Mark::Done => {}
            }
        }
    }
}

fn patterns(problems: &mut Problems, list: Vec<S<String>>, key: &str) -> Vec<String> {
    let mut any_include = false;
    for p in &list {
        let glob = p.value.strip_prefix('!').unwrap_or(&p.value);
        any_include |= !p.value.starts_with('!');
        if glob.is_empty() {
            problems.at(p.referenced, format!("empty pattern in `{key}`"));
        } else if let Err(e) = build_glob(glob) {
            problems.at(
                p.referenced,
                format!("`{key}` pattern {:?} is not a glob: {}", p.value, e.kind()),
            );
        }
    }
    if !any_include && let Some(first) = list.first() {
        // Like GitHub Actions: only exclusions would match nothing, which is never meant.
        problems.at(
            first.referenced,
            format!("`{key}` only excludes; add \"**\" to include every other one"),
        );
    }
    strings(&list)
}

/// Converts one step; also returns where it and its references are written.
fn convert_step(step: S<RawStep>, problems: &mut Problems, app: &str) -> (Places, Step) {
    let at = step.referenced;
    let mut raw = step.value;
    let (name, name_loc) = step_name(problems, raw.name.take(), at);
    let env = check_env(problems, &raw.env, "env");
    check_secrets(problems, &raw.secrets);
    let timeout = step_timeout(problems, raw.timeout.as_ref());
    let secrets = strings(&raw.secrets);
    let mut places = Places {
        name: name_loc,
        needs: Vec::new(),
        image: None,
        build: None,
        when: None,
    };
    let when = match raw.when.take() {
        None => When::default(),
        Some(w) => {
            places.when = Some(w.referenced);
            convert_when(problems, w.value)
        }
    };
    let needs = match raw.needs.take() {
        None => Vec::new(),
        Some(n) => {
            places.needs = n.value.iter().map(|v| v.referenced).collect();
            strings(&n.value)
        }
    };
    let action = step_action(problems, raw, at, &name, app, &mut places);
    (
        places,
        Step {
            name,
            needs,
            when,
            env,
            secrets,
            timeout,
            action,
        },
    )
}

/// The step's name and where it stands (the step itself when it has none).
fn step_name(problems: &mut Problems, name: Option<S<String>>, at: Location) -> (String, Location) {
    match name {
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
    }
}

fn check_secrets(problems: &mut Problems, secrets: &[S<String>]) {
    for secret in secrets {
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
}

fn step_timeout(problems: &mut Problems, timeout: Option<&S<String>>) -> Option<Duration> {
    let t = timeout?;
    match crate::config::duration::parse(&t.value) {
        Ok(d) if d.is_zero() => {
            problems.at(t.referenced, "`timeout` must be more than 0s");
            None
        }
        Ok(d) => Some(d),
        Err(e) => {
            problems.at(t.referenced, format!("`timeout`: {e}"));
            None
        }
    }
}

const COMMANDS_ALONE: &str = "`commands` belongs with `image`: add `image:` to run them in a \
                              container, or use `shell:` to run them on the agent";

/// The step's one action. A step with none or several gets a placeholder (an empty shell
/// step) and a problem; so does `commands` without `image`.
fn step_action(
    problems: &mut Problems,
    raw: RawStep,
    at: Location,
    name: &str,
    app: &str,
    places: &mut Places,
) -> Action {
    let kinds: Vec<&str> = [
        ("image", raw.image.is_some()),
        ("shell", raw.shell.is_some()),
        ("build", raw.build.is_some()),
        ("deploy", raw.deploy.is_some()),
    ]
    .into_iter()
    .filter_map(|(kind, present)| present.then_some(kind))
    .collect();
    let placeholder = Action::Shell {
        commands: Vec::new(),
    };
    if let (true, Some(c)) = (kinds.is_empty(), &raw.commands) {
        problems.at(c.referenced, COMMANDS_ALONE);
        return placeholder;
    }
    if kinds.len() != 1 {
        let what = if kinds.is_empty() {
            "has none".to_string()
        } else {
            format!("has {}", quoted_list(kinds.iter().copied()))
        };
        problems.at(
            at,
            format!(
                "step {name:?} needs exactly one of `image` (with `commands`), `shell`, `build`, \
                 `deploy`; it {what}"
            ),
        );
        return placeholder;
    }
    if let Some(image) = raw.image {
        return container_action(problems, image, raw.commands);
    }
    if let Some(c) = &raw.commands {
        problems.at(c.referenced, COMMANDS_ALONE);
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
        Action::Build(convert_build(build, problems, app, places))
    } else if let Some(deploy) = raw.deploy {
        Action::Deploy(convert_deploy(deploy, problems, places))
    } else {
        placeholder
    }
}

/// `image:` with its `commands:`.
fn container_action(
    problems: &mut Problems,
    image: S<String>,
    commands: Option<S<super::raw::CommandList>>,
) -> Action {
    if image.value.trim().is_empty() || image.value.contains(char::is_whitespace) {
        problems.at(
            image.referenced,
            format!("`image` {:?} is not an image reference", image.value),
        );
    }
    let commands = match commands {
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
}

fn convert_build(
    build: S<RawBuild>,
    problems: &mut Problems,
    default_app: &str,
    places: &mut Places,
) -> BuildSpec {
    let at = build.referenced;
    let raw = build.value;
    let app = match raw.app {
        None => {
            places.build = Some(at);
            default_app.to_string()
        }
        Some(app) => {
            places.build = Some(app.referenced);
            if !is_app_name(&app.value) {
                problems.at(
                    app.referenced,
                    format!(
                        "build.app {:?} is not a valid name: lowercase letters, digits, `_`, \
                         `.`, `-`, starting with a letter or digit, at most 63 characters",
                        app.value
                    ),
                );
            }
            app.value
        }
    };
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
                problems.at(r.referenced, e.to_string());
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
        app,
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
    places: &mut Places,
) -> DeploySpec {
    let at = deploy.referenced;
    let raw = deploy.value;
    // Where each fixed `HOST:CONTAINER` port was written, for the balancer's check below.
    let fixed_ports: Vec<(Location, String)> = raw
        .container
        .iter()
        .flat_map(|c| c.value.ports.iter())
        .filter(|p| super::is_fixed_port(&p.value))
        .map(|p| (p.referenced, p.value.clone()))
        .collect();
    // Fields are evaluated in the order written, which is the order problems at `at` print in.
    let mut spec = DeploySpec {
        image: deploy_image_name(problems, raw.image, at, places),
        hosts: deploy_hosts(problems, raw.hosts, at),
        container: match raw.container {
            None => {
                problems.at(at, "`deploy` needs `container`, with at least `name`");
                ContainerSpec::default()
            }
            Some(c) => convert_container(c, problems),
        },
        health: {
            if raw.health.is_none() {
                problems.at(
                    at,
                    "`deploy` needs `health`: one of `http: {port, path}`, `tcp: PORT`, \
                     `command: [...]`, `docker: true`",
                );
            }
            convert_health(raw.health, problems)
        },
        rollout: convert_rollout(problems, raw.rollout.unwrap_or_default()),
        hooks: convert_hooks(problems, raw.hooks.unwrap_or_default()),
        balancer: None,
    };
    if raw.balancer.is_some() {
        // A balancer switches a host by starting the new release beside the old one; a fixed
        // host port can be published by only one of them, so the old would have to stop first
        // and the balancer would send to a port nobody listens on meanwhile.
        for (loc, port) in &fixed_ports {
            let container = port.rsplit(':').next().unwrap_or(port);
            problems.at(
                *loc,
                format!(
                    "port {port:?} is fixed, and a `balancer` needs the new release to start \
                     beside the old one, which a fixed host port forbids; write only the \
                     container port (like \"{container}\") and the engine picks a host port \
                     that hoist tells the balancer"
                ),
            );
        }
    }
    spec.balancer = raw
        .balancer
        .map(|b| convert_balancer(problems, b, &spec.container));
    spec
}

/// `deploy.balancer`: a balancer's name, the container port it sends to, and how it is checked.
/// It needs engine-picked ports, so that the new release's containers start beside the old.
fn convert_balancer(
    problems: &mut Problems,
    b: S<RawBalancerUse>,
    container: &ContainerSpec,
) -> BalancerSpec {
    let at = b.referenced;
    let raw = b.value;
    let name = match raw.name {
        Some(n) if is_var_key(&n.value) => n.value,
        Some(n) => {
            problems.at(
                n.referenced,
                format!("balancer name {:?} is not a [balancer.NAME] name", n.value),
            );
            n.value
        }
        None => {
            problems.at(
                at,
                "`balancer` needs `name`: a [balancer.NAME] of the agent's hoist.toml",
            );
            String::new()
        }
    };
    let upstream = raw.upstream.map(|u| {
        let ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.');
        if !is_name(&u.value, |c| c.is_ascii_alphanumeric(), ok) {
            problems.at(
                u.referenced,
                format!(
                    "`upstream` {:?} is not an nginx upstream name: letters, digits, `_`, `-`, `.`",
                    u.value
                ),
            );
        }
        u.value
    });
    let port = match raw.port {
        None => {
            problems.at(
                at,
                "`balancer` needs `port`: the container port it sends traffic to, like 8080",
            );
            0
        }
        Some(p) => match u16::try_from(p.value) {
            Ok(n) if n > 0 => {
                let published = container.ports.iter().any(|spec| {
                    let m = spec.rsplit_once('/').map_or(spec.as_str(), |(m, _)| m);
                    m.rsplit(':').next() == Some(n.to_string().as_str())
                });
                if !published {
                    problems.at(
                        p.referenced,
                        format!(
                            "balancer port {n} is not in `container.ports`; add \"{n}\" there (the \
                             engine picks the host port, hoist tells the balancer)"
                        ),
                    );
                }
                n
            }
            _ => {
                problems.at(p.referenced, "`port` must be a port number, 1 to 65535");
                0
            }
        },
    };
    let check = raw.check.map(|c| {
        if !c.value.starts_with('/') {
            problems.at(
                c.referenced,
                format!("`check` {:?} must be a path starting with /", c.value),
            );
        }
        c.value
    });
    BalancerSpec {
        name,
        upstream,
        port,
        check,
        drain: duration_or(problems, &raw.drain, "drain", Duration::from_secs(1)),
    }
}

/// `deploy.image`: a step's name; whether it is a build step that runs before this one is
/// checked with every step known ([`check_references`]).
fn deploy_image_name(
    problems: &mut Problems,
    image: Option<S<String>>,
    at: Location,
    places: &mut Places,
) -> String {
    let Some(i) = image else {
        problems.at(
            at,
            "`deploy` needs `image`: the name of the build step whose image to deploy",
        );
        return String::new();
    };
    places.image = Some(i.referenced);
    i.value
}

/// `deploy.hosts`: at least one, each named once.
fn deploy_hosts(
    problems: &mut Problems,
    hosts: Option<S<Vec<S<String>>>>,
    at: Location,
) -> Vec<String> {
    let Some(h) = hosts else {
        problems.at(
            at,
            "`deploy` needs `hosts`: the hosts to deploy to, like [web1, web2]",
        );
        return Vec::new();
    };
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

/// `deploy.rollout`; a missing key takes its default (a missing `rollout:` is all defaults).
fn convert_rollout(problems: &mut Problems, r: RawRollout) -> RolloutSpec {
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
        repair: r.repair.unwrap_or(false),
    }
}

fn convert_hooks(problems: &mut Problems, h: RawHooks) -> HooksSpec {
    HooksSpec {
        before_host: h.before_host.map(|v| argv(problems, &v, "before_host")),
        after_host: h.after_host.map(|v| argv(problems, &v, "after_host")),
        after_deploy: h.after_deploy.map(|v| argv(problems, &v, "after_deploy")),
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
            problems.at(port.referenced, e.to_string());
        }
    }
    let replicas = match raw.replicas {
        None => 1,
        Some(r) => match u32::try_from(r.value) {
            Ok(n) if (1..=MAX_REPLICAS).contains(&n) => {
                if let Some(fixed) = raw
                    .ports
                    .iter()
                    .find(|p| n > 1 && super::is_fixed_port(&p.value))
                {
                    problems.at(
                        fixed.referenced,
                        format!(
                            "port {:?} is fixed, and {n} replicas cannot all publish it on one \
                             host; write only the container port (like \"8080\") and the engine \
                             picks a host port for each",
                            fixed.value
                        ),
                    );
                }
                n
            }
            _ => {
                problems.at(
                    r.referenced,
                    format!("`replicas` must be 1 to {MAX_REPLICAS}"),
                );
                1
            }
        },
    };
    let env = check_env(problems, &raw.env, "container.env");
    for arg in &raw.args {
        check_template(problems, arg);
    }
    for volume in &raw.volumes {
        if volume.value.trim().is_empty() {
            problems.at(volume.referenced, "empty volume");
        }
    }
    check_secrets(problems, &raw.secrets);
    let mut seen = BTreeSet::new();
    for secret in &raw.secrets {
        if !seen.insert(secret.value.as_str()) {
            problems.at(
                secret.referenced,
                format!("secret {:?} is listed twice", secret.value),
            );
        } else if env.contains_key(&secret.value) {
            problems.at(
                secret.referenced,
                format!(
                    "secret {:?} is also set in `container.env`; keep one of the two",
                    secret.value
                ),
            );
        }
    }
    let network = raw.network.map(|n| {
        if let Err(why) = check_network(&n.value) {
            problems.at(n.referenced, why);
        }
        n.value
    });
    let memory = raw.memory.and_then(|m| match parse_memory(&m.value.0) {
        Ok(bytes) => Some(bytes),
        Err(why) => {
            problems.at(m.referenced, why);
            None
        }
    });
    let cpus = raw
        .cpus
        .and_then(|c| match c.value.0.trim().parse::<f64>() {
            Ok(n) if n > 0.0 && n <= 1024.0 && n.is_finite() => Some(n),
            _ => {
                problems.at(
                c.referenced,
                format!(
                    "`cpus` {:?} is not a number of CPUs: write a positive decimal like \"1.5\"",
                    c.value.0
                ),
            );
                None
            }
        });
    let stop_signal = raw.stop_signal.map(|sig| {
        if !is_signal(&sig.value) {
            problems.at(
                sig.referenced,
                format!(
                    "`stop_signal` {:?} is not a signal: write its name, like SIGTERM or SIGQUIT, \
                     or its number",
                    sig.value
                ),
            );
        }
        sig.value
    });
    let stop_timeout =
        raw.stop_timeout
            .as_ref()
            .and_then(|t| match crate::config::duration::parse(&t.value) {
                Ok(d) => Some(d),
                Err(e) => {
                    problems.at(t.referenced, format!("`stop_timeout`: {e}"));
                    None
                }
            });
    let user = raw.user.map(|u| {
        if u.value.0.is_empty() || u.value.0.contains(char::is_whitespace) {
            problems.at(
                u.referenced,
                format!(
                    "`user` {:?} is not a user: write a name or UID, optionally `:GROUP`",
                    u.value.0
                ),
            );
        }
        u.value.0
    });
    let working_dir = raw.working_dir.map(|w| {
        if !w.value.starts_with('/') {
            problems.at(
                w.referenced,
                format!("`working_dir` {:?} must be an absolute path", w.value),
            );
        }
        w.value
    });
    let entrypoint = raw.entrypoint.map(|e| argv(problems, &e, "entrypoint"));
    let hostname = raw.hostname.map(|h| {
        check_template(problems, &h);
        h.value
    });
    let mut labels = BTreeMap::new();
    for (key, value) in &raw.labels {
        if key.starts_with("hoist.") || key.is_empty() {
            problems.at(
                value.referenced,
                format!(
                    "label {key:?} is not allowed: `hoist.*` labels are hoist's own (app, \
                     release, commit, digest); name yours otherwise"
                ),
            );
        }
        check_template(problems, value);
        labels.insert(key.clone(), value.value.clone());
    }
    ContainerSpec {
        name,
        replicas,
        ports: strings(&raw.ports),
        env,
        args: strings(&raw.args),
        volumes: strings(&raw.volumes),
        secrets: strings(&raw.secrets),
        network,
        memory,
        cpus,
        stop_signal,
        stop_timeout,
        user,
        working_dir,
        entrypoint,
        hostname,
        labels,
    }
}

/// A user-defined network's name, which containers on it resolve each other by.
fn check_network(name: &str) -> Result<(), String> {
    if ["bridge", "host", "none", "default"].contains(&name) {
        return Err(format!(
            "`network` {name:?} is one of Docker's own networks; name a network of your own \
             (hoist creates it when missing), so that containers on a host reach each other by name"
        ));
    }
    let ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-');
    if name.len() > 64 || !is_name(name, |c| c.is_ascii_alphanumeric(), ok) {
        return Err(format!(
            "`network` {name:?} is not a network name: letters, digits, `_`, `.`, `-`, \
             starting with a letter or digit, at most 64 characters"
        ));
    }
    Ok(())
}

/// Docker's smallest memory limit.
const MIN_MEMORY: u64 = 6 * 1024 * 1024;

/// `512m`, `1.5g`, `1048576` (bytes): a number and an optional unit b, k, m, g, t (powers of
/// 1024, as Docker reads them; `kb`, `mib` and friends too).
fn parse_memory(text: &str) -> Result<u64, String> {
    let usage = || {
        format!(
            "`memory` {text:?} is not a size: write a number and a unit, like \"512m\" or \"1g\""
        )
    };
    let t = text.trim().to_ascii_lowercase();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let number: f64 = number.parse().map_err(|_| usage())?;
    let unit = unit.trim();
    let unit = unit
        .strip_suffix("ib")
        .or_else(|| unit.strip_suffix('b').filter(|u| !u.is_empty()))
        .unwrap_or(unit);
    let scale: u64 = match unit {
        "" | "b" => 1,
        "k" => 1 << 10,
        "m" => 1 << 20,
        "g" => 1 << 30,
        "t" => 1 << 40,
        _ => return Err(usage()),
    };
    let bytes = number * scale as f64;
    if !bytes.is_finite() || bytes > u64::MAX as f64 / 2.0 {
        return Err(usage());
    }
    let bytes = bytes as u64;
    if bytes < MIN_MEMORY {
        return Err(format!(
            "`memory` {text:?} is below Docker's smallest limit, 6m"
        ));
    }
    Ok(bytes)
}

/// `SIGTERM`, `TERM`, `SIGRTMIN+3`, or a number 1 to 64.
fn is_signal(sig: &str) -> bool {
    if sig.bytes().all(|b| b.is_ascii_digit()) {
        return sig.parse::<u8>().is_ok_and(|n| (1..=64).contains(&n));
    }
    let name = sig.strip_prefix("SIG").unwrap_or(sig);
    !name.is_empty()
        && name.starts_with(|c: char| c.is_ascii_uppercase())
        && name
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || matches!(c, '+' | '-'))
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
        start_period: Duration::ZERO,
        fail_after: 0,
    };
    let Some(h) = h else { return spec };
    let at = h.referenced;
    let mut raw = h.value;
    if let Some(check) = health_check(problems, &mut raw, at) {
        spec.check = check;
    }
    health_timings(problems, &raw, at, &mut spec);
    spec
}

/// The one probe of `health:`, taken out of `raw`; none when there are none or several.
fn health_check(problems: &mut Problems, raw: &mut RawHealth, at: Location) -> Option<HealthCheck> {
    let mut checks = Vec::new();
    if let Some(http) = raw.http.take() {
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
        let host = http.value.host.map(|h| {
            if h.value.is_empty()
                || h.value
                    .contains(|c: char| c.is_whitespace() || c.is_control())
            {
                problems.at(
                    h.referenced,
                    format!(
                        "`http.host` {:?} is not a Host header: write a name, like web.example.com",
                        h.value
                    ),
                );
            }
            h.value
        });
        let status = match http.value.status {
            None => StatusRange::default(),
            Some(st) => parse_status(&st.value.0).unwrap_or_else(|| {
                problems.at(
                    st.referenced,
                    format!(
                        "`http.status` {:?} is not a status or a range of them: write one like \
                         \"200-399\" or \"204\" (100 to 599)",
                        st.value.0
                    ),
                );
                StatusRange::default()
            }),
        };
        checks.push((
            "http",
            HealthCheck::Http {
                port,
                path,
                host,
                status,
            },
        ));
    }
    if let Some(tcp) = raw.tcp.take() {
        checks.push(("tcp", HealthCheck::Tcp(port_number(problems, &tcp, "tcp"))));
    }
    if let Some(command) = raw.command.take() {
        checks.push((
            "command",
            HealthCheck::Command(argv(problems, &command, "command")),
        ));
    }
    let docker_false = match raw.docker.take() {
        Some(d) if d.value => {
            checks.push(("docker", HealthCheck::Docker));
            false
        }
        Some(_) => true,
        None => false,
    };
    match checks.len() {
        1 => return checks.pop().map(|(_, check)| check),
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
                quoted_list(checks.iter().map(|(k, _)| *k))
            ),
        ),
    }
    None
}

/// "200-399" or "204", each 100 to 599, lowest first.
fn parse_status(text: &str) -> Option<StatusRange> {
    let number = |t: &str| {
        let t = t.trim();
        t.bytes()
            .all(|b| b.is_ascii_digit())
            .then(|| t.parse::<u16>().ok())
            .flatten()
            .filter(|n| (100..=599).contains(n))
    };
    let (from, to) = match text.split_once('-') {
        Some((a, b)) => (number(a)?, number(b)?),
        None => {
            let n = number(text)?;
            (n, n)
        }
    };
    (from <= to).then_some(StatusRange { from, to })
}

/// Interval, timeout, healthy_for and deadline over the defaults in `spec`, each more than 0s,
/// and a deadline a container can meet; `start_period` and `fail_after`.
fn health_timings(problems: &mut Problems, raw: &RawHealth, at: Location, spec: &mut HealthSpec) {
    spec.start_period = duration_or(problems, &raw.start_period, "start_period", Duration::ZERO);
    if let Some(n) = &raw.fail_after {
        spec.fail_after = u32::try_from(n.value).unwrap_or_else(|_| {
            problems.at(
                n.referenced,
                "`fail_after` must be 0 (off) or a number of failing checks in a row",
            );
            0
        });
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
    if let Some(sp) = &raw.start_period
        && spec.start_period >= spec.deadline
        && !spec.deadline.is_zero()
    {
        problems.at(
            sp.referenced,
            format!(
                "`start_period` ({}) is not shorter than `deadline` ({}): no check would count; \
                 shorten it or raise `deadline`",
                humantime::format_duration(spec.start_period),
                humantime::format_duration(spec.deadline)
            ),
        );
    }
}

/// Placeholders are checked by rendering with empty values: only unknown names and broken
/// syntax fail, which is what a user can fix in the file.
fn check_template(problems: &mut Problems, value: &S<String>) {
    if let Err(e) = Vars::default().render(&value.value) {
        problems.at(value.referenced, e.to_string());
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

/// "`a` and `b`": the keys a message names.
fn quoted_list<'a>(keys: impl IntoIterator<Item = &'a str>) -> String {
    keys.into_iter()
        .map(|k| format!("`{k}`"))
        .collect::<Vec<_>>()
        .join(" and ")
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

/// Containers per host at most.
const MAX_REPLICAS: u32 = 64;

/// `HOST:CONTAINER` or `IP:HOST:CONTAINER` (IPv6 in brackets), or `CONTAINER` alone (the
/// engine picks the host port), optionally `/tcp` or `/udp`.
fn check_port_mapping(spec: &str) -> Result<(), PortMappingError> {
    let usage = || PortMappingError(spec.to_string());
    let mapping = match spec.rsplit_once('/') {
        Some((m, "tcp" | "udp")) => m,
        Some(_) => return Err(usage()),
        None => spec,
    };
    if !mapping.contains(':') {
        return match mapping.parse::<u16>() {
            Ok(p) if p > 0 && mapping.bytes().all(|b| b.is_ascii_digit()) => Ok(()),
            _ => Err(usage()),
        };
    }
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

/// A `ports:` entry that is not a port mapping.
#[derive(Debug, thiserror::Error)]
#[error(
    "port {0:?} is not CONTAINER, HOST:CONTAINER or IP:HOST:CONTAINER (like \"8080\", where the \
     engine picks the host port, \"8080:8080\" or \"127.0.0.1:8080:8080\", optionally ending in \
     /tcp or /udp)"
)]
struct PortMappingError(String);

/// A path inside the checkout: relative, without `..`.
fn is_inside_checkout(path: &str) -> bool {
    !path.is_empty()
        && !path.starts_with('/')
        && !path.starts_with('\\')
        && path.split(['/', '\\']).all(|part| part != "..")
}

/// A repository reference without tag or digest: `[HOST[:PORT]/]path/of/lowercase`.
fn check_repository(repo: &str) -> Result<(), RepositoryError> {
    if repo.is_empty() {
        return Err(RepositoryError::Empty);
    }
    if repo.contains('@') {
        return Err(RepositoryError::Digest(repo.to_string()));
    }
    let (host, path) = match repo.split_once('/') {
        Some((first, rest)) if first.contains(['.', ':']) || first == "localhost" => {
            (Some(first), rest)
        }
        _ => (None, repo),
    };
    if path.contains(':') {
        return Err(RepositoryError::Tag(repo.to_string()));
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
        Err(RepositoryError::Invalid(repo.to_string()))
    }
}

/// Why `build.repository` is not a repository to push to.
#[derive(Debug, thiserror::Error)]
enum RepositoryError {
    #[error("`repository` is empty; write where to push, like \"127.0.0.1:5000/acme/web\"")]
    Empty,
    #[error("repository {0:?} holds a digest; write it without `@…`")]
    Digest(String),
    #[error("repository {0:?} holds a tag; write it without `:TAG` and list tags under `tags:`")]
    Tag(String),
    #[error(
        "repository {0:?} is not a valid image repository: lowercase letters, digits, `.`, `_`, \
         `-` between `/`, optionally after a registry host"
    )]
    Invalid(String),
}

#[cfg(test)]
mod tests {
    use crate::pipeline::testing::{check, with_deploy};

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
            .hoist.yml:4:36: unknown placeholder `${nope}` in "${nope}"; known: ${commit}, ${commit_short}, ${branch}, ${tag}, ${ref}, ${host}, ${release}, ${app}, ${host.address}, ${host.KEY}, ${hosts.name}, ${hosts.address}, ${hosts.KEY} (write `$${` for a literal `${`)"#,
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
        // u64::MAX seconds parsed, then overflowed `Instant + timeout` at run time: a panic.
        check(
            "app: web\nsteps:\n  - {name: t, shell: [a], timeout: 18446744073709551615s}\n",
            r#".hoist.yml:3:36: `timeout`: "18446744073709551615s" is too long: write at most 30days"#,
        );
        check(
            "app: web\nsteps:\n  - {name: t, shell: [a], timeout: 30days}\n",
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
            .hoist.yml:6:33: unknown placeholder `${sha}` in "${sha}"; known: ${commit}, ${commit_short}, ${branch}, ${tag}, ${ref}, ${host}, ${release}, ${app}, ${host.address}, ${host.KEY}, ${hosts.name}, ${hosts.address}, ${hosts.KEY} (write `$${` for a literal `${`)
            .hoist.yml:7:17: unknown placeholder `${version}` in "${version}"; known: ${commit}, ${commit_short}, ${branch}, ${tag}, ${ref}, ${host}, ${release}, ${app}, ${host.address}, ${host.KEY}, ${hosts.name}, ${hosts.address}, ${hosts.KEY} (write `$${` for a literal `${`)
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

    /// A deploy step of app `app` (container `app`) deploying build step `image`.
    fn deploy_of(name: &str, image: &str, needs: &str) -> String {
        format!(
            "  - name: {name}\n    needs: {needs}\n    deploy:\n      image: {image}\n      \
             hosts: [web1]\n      container: {{name: {name}}}\n      health: {{docker: true}}\n"
        )
    }

    #[test]
    fn needs_name_other_existing_steps_without_cycles() {
        let steps = "app: web\nsteps:\n  - {name: a, shell: [x], needs: [b, nope, a]}\n  - {name: b, shell: [x], needs: [c]}\n  - {name: c, shell: [x], needs: [a, b, b]}\n";
        check(
            steps,
            r#"
            .hoist.yml:3:38: `needs` names step "nope", which does not exist
            .hoist.yml:3:44: step "a" needs itself; remove it from `needs`
            .hoist.yml:5:35: `needs` makes a cycle: a → b → c → a (each needs the next); no step of it could ever start
            .hoist.yml:5:38: `needs` makes a cycle: b → c → b (each needs the next); no step of it could ever start
            .hoist.yml:5:41: step "b" is listed twice in `needs`"#,
        );
        check(
            "app: web\nsteps:\n  - {name: a, shell: [x]}\n  - {name: b, shell: [x], needs: [a]}\n  - {name: c, shell: [x], needs: [a, b]}\n",
            "ok",
        );
    }

    #[test]
    fn a_long_chain_of_needs_is_walked_without_recursion() {
        // 4000 steps, each needing the one before, the first needing the last: one cycle.
        let n = 4000;
        let mut yml = format!(
            "app: web\nsteps:\n  - {{name: s0, shell: x, needs: [s{}]}}\n",
            n - 1
        );
        for i in 1..n {
            yml.push_str(&format!(
                "  - {{name: s{i}, shell: x, needs: [s{}]}}\n",
                i - 1
            ));
        }
        let problems = crate::pipeline::parse(&yml).unwrap_err();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0]
                .message
                .starts_with("`needs` makes a cycle: s0 → s3999 → s3998"),
            "{}",
            &problems[0].message[..80]
        );
    }

    #[test]
    fn a_deploy_in_a_graph_needs_its_build_step() {
        let build = "app: web\nsteps:\n  - name: image\n    build: {repository: r/a}\n  - {name: test, shell: [x]}\n";
        check(
            &format!("{build}{}", deploy_of("deploy", "image", "[test]")),
            r#".hoist.yml:9:14: `deploy.image` names step "image", which this step does not need; add "image" to its `needs` (or to a step it needs)"#,
        );
        // Through another step's needs counts.
        let via = build.replace(
            "{name: test, shell: [x]}",
            "{name: test, shell: [x], needs: [image]}",
        );
        check(
            &format!("{via}{}", deploy_of("deploy", "image", "[test]")),
            "ok",
        );
        // In a graph, file order does not matter; needs do.
        let later = format!(
            "app: web\nsteps:\n{}  - name: image\n    build: {{repository: r/a}}\n",
            deploy_of("deploy", "image", "[image]")
        );
        check(&later, "ok");
        check(
            &format!("{build}{}", deploy_of("deploy", "nope", "[test]")),
            r#".hoist.yml:9:14: `deploy.image` names step "nope", which does not exist; name a `build` step this one needs"#,
        );
    }

    #[test]
    fn each_app_has_one_build_step() {
        let two = "app: web\nsteps:\n  - name: a\n    build: {repository: r/a}\n  - name: b\n    build: {repository: r/b, app: api}\n  - name: c\n    build: {repository: r/c, app: api}\n  - name: d\n    build: {repository: r/d}\n  - name: e\n    build: {repository: r/e, app: Bad!}\n";
        check(
            two,
            r#"
            .hoist.yml:8:35: app "api" is built by step "b" already; each app has one build step (set `build.app` to build another app)
            .hoist.yml:10:12: app "web" is built by step "a" already; each app has one build step (set `build.app` to build another app)
            .hoist.yml:12:35: build.app "Bad!" is not a valid name: lowercase letters, digits, `_`, `.`, `-`, starting with a letter or digit, at most 63 characters"#,
        );
        // A deploy deploys the app of its build step.
        let p = crate::pipeline::parse(&format!(
            "app: web\nsteps:\n  - name: auth-image\n    build: {{repository: r/auth, app: auth}}\n{}",
            deploy_of("auth", "auth-image", "[auth-image]")
        ))
        .unwrap();
        let crate::pipeline::Action::Deploy(d) = &p.steps[1].action else {
            panic!("a deploy step")
        };
        assert_eq!(p.app_of(d), "auth");
        assert!(p.is_graph());
        assert_eq!(p.needs(), vec![vec![], vec![0]]);
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
            &health("health: {docker: true, interval: 99999999days, deadline: 9999999999999s}"),
            r#"
            .hoist.yml:11:40: `interval`: "99999999days" is too long: write at most 30days
            .hoist.yml:11:64: `deadline`: "9999999999999s" is too long: write at most 30days"#,
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
            &ports(r#"["0", "80:80/sctp", "0:80", "localhost:80:80", "1:2:3:4"]"#),
            r#"
            .hoist.yml:10:38: port "0" is not CONTAINER, HOST:CONTAINER or IP:HOST:CONTAINER (like "8080", where the engine picks the host port, "8080:8080" or "127.0.0.1:8080:8080", optionally ending in /tcp or /udp)
            .hoist.yml:10:43: port "80:80/sctp" is not CONTAINER, HOST:CONTAINER or IP:HOST:CONTAINER (like "8080", where the engine picks the host port, "8080:8080" or "127.0.0.1:8080:8080", optionally ending in /tcp or /udp)
            .hoist.yml:10:57: port "0:80" is not CONTAINER, HOST:CONTAINER or IP:HOST:CONTAINER (like "8080", where the engine picks the host port, "8080:8080" or "127.0.0.1:8080:8080", optionally ending in /tcp or /udp)
            .hoist.yml:10:65: port "localhost:80:80" is not CONTAINER, HOST:CONTAINER or IP:HOST:CONTAINER (like "8080", where the engine picks the host port, "8080:8080" or "127.0.0.1:8080:8080", optionally ending in /tcp or /udp)
            .hoist.yml:10:84: port "1:2:3:4" is not CONTAINER, HOST:CONTAINER or IP:HOST:CONTAINER (like "8080", where the engine picks the host port, "8080:8080" or "127.0.0.1:8080:8080", optionally ending in /tcp or /udp)"#,
        );
        check(&ports(r#"["8080", "9090/udp"]"#), "ok");
        let replicated = |r: &str, p: &str| {
            with_deploy("").replace(
                "{name: web}",
                &format!("{{name: web, replicas: {r}, ports: {p}}}"),
            )
        };
        check(&replicated("3", r#"["8080"]"#), "ok");
        check(
            &replicated("2", r#"["8080:8080"]"#),
            r#".hoist.yml:10:51: port "8080:8080" is fixed, and 2 replicas cannot all publish it on one host; write only the container port (like "8080") and the engine picks a host port for each"#,
        );
        check(
            &replicated("0", "[]"),
            ".hoist.yml:10:40: `replicas` must be 1 to 64",
        );
        let balanced = |b: &str| {
            with_deploy(&format!("      balancer: {b}\n"))
                .replace("{name: web}", "{name: web, ports: [\"8080\"]}")
        };
        check(
            &balanced("{name: edge, port: 8080, check: /health, drain: 2s}"),
            "ok",
        );
        check(
            &balanced("{name: edge, port: 9090, check: health, upstream: \"a b\"}"),
            r#"
            .hoist.yml:12:36: balancer port 9090 is not in `container.ports`; add "9090" there (the engine picks the host port, hoist tells the balancer)
            .hoist.yml:12:49: `check` "health" must be a path starting with /
            .hoist.yml:12:67: `upstream` "a b" is not an nginx upstream name: letters, digits, `_`, `-`, `.`"#,
        );
        let fixed = |ports: &str| {
            with_deploy("      balancer: {name: edge, port: 8080}\n")
                .replace("{name: web}", &format!("{{name: web, ports: {ports}}}"))
        };
        check(
            &fixed(r#"["9090", "8080:8080", "127.0.0.1:9091:8080/tcp"]"#),
            r#"
            .hoist.yml:10:46: port "8080:8080" is fixed, and a `balancer` needs the new release to start beside the old one, which a fixed host port forbids; write only the container port (like "8080") and the engine picks a host port that hoist tells the balancer
            .hoist.yml:10:59: port "127.0.0.1:9091:8080/tcp" is fixed, and a `balancer` needs the new release to start beside the old one, which a fixed host port forbids; write only the container port (like "8080/tcp") and the engine picks a host port that hoist tells the balancer"#,
        );
        // Without a balancer, fixed ports keep today's stop-then-start order.
        check(
            &with_deploy("").replace("{name: web}", "{name: web, ports: [\"8080:8080\"]}"),
            "ok",
        );
        check(
            &balanced("{port: 8080, drain: soon}"),
            r#"
            .hoist.yml:12:17: `balancer` needs `name`: a [balancer.NAME] of the agent's hoist.toml
            .hoist.yml:12:37: `drain`: "soon" is not a duration; write a number with a unit, like "500ms", "10s" or "5m""#,
        );
        check(&with_deploy("").replace("{name: web}", "{name: web, env: {ID: \"${host}\", X: \"${hots}\"}, args: [\"--id=${host}\", \"${x\"]}"), r#"
            .hoist.yml:10:54: unknown placeholder `${hots}` in "${hots}"; known: ${commit}, ${commit_short}, ${branch}, ${tag}, ${ref}, ${host}, ${release}, ${app}, ${host.address}, ${host.KEY}, ${hosts.name}, ${hosts.address}, ${hosts.KEY} (write `$${` for a literal `${`)
            .hoist.yml:10:89: unclosed placeholder in "${x": close it with `}`, or write `$${` for a literal `${`"#);
        check(
            &with_deploy(
                "      hooks:\n        before_host: []\n        after_host: [\"scripts/undrain\", \"${hots}\"]\n        after_deploy: [\"notify\", \"$${literal}\"]\n",
            ),
            r#"
            .hoist.yml:13:22: `before_host` needs a program to run, like ["scripts/notify"]; remove the key to run nothing
            .hoist.yml:14:41: unknown placeholder `${hots}` in "${hots}"; known: ${commit}, ${commit_short}, ${branch}, ${tag}, ${ref}, ${host}, ${release}, ${app}, ${host.address}, ${host.KEY}, ${hosts.name}, ${hosts.address}, ${hosts.KEY} (write `$${` for a literal `${`)"#,
        );
    }

    #[test]
    fn container_keys_as_compose_has_them() {
        let c =
            |keys: &str| with_deploy("").replace("{name: web}", &format!("{{name: web, {keys}}}"));
        check(
            &c(
                "network: acme, memory: 512m, cpus: 1.5, stop_signal: SIGQUIT, stop_timeout: 20s, secrets: [DB_PASSWORD], user: 1000, working_dir: /app, entrypoint: [/bin/sh, -c], hostname: \"${host}\", labels: {team: a}",
            ),
            "ok",
        );
        check(
            &c("memory: \"1.5g\", cpus: \"0.25\", stop_signal: \"15\""),
            "ok",
        );
        check(
            &c("network: host, memory: lots, cpus: 0, stop_signal: term, stop_timeout: soon"),
            r#"
            .hoist.yml:10:39: `network` "host" is one of Docker's own networks; name a network of your own (hoist creates it when missing), so that containers on a host reach each other by name
            .hoist.yml:10:53: `memory` "lots" is not a size: write a number and a unit, like "512m" or "1g"
            .hoist.yml:10:65: `cpus` "0" is not a number of CPUs: write a positive decimal like "1.5"
            .hoist.yml:10:81: `stop_signal` "term" is not a signal: write its name, like SIGTERM or SIGQUIT, or its number
            .hoist.yml:10:101: `stop_timeout`: "soon" is not a duration; write a number with a unit, like "500ms", "10s" or "5m""#,
        );
        check(
            &c("memory: 1m, working_dir: app, labels: {hoist.app: x}"),
            r#"
            .hoist.yml:10:38: `memory` "1m" is below Docker's smallest limit, 6m
            .hoist.yml:10:55: `working_dir` "app" must be an absolute path
            .hoist.yml:10:80: label "hoist.app" is not allowed: `hoist.*` labels are hoist's own (app, release, commit, digest); name yours otherwise"#,
        );
        check(
            &c("env: {DB: x}, secrets: [DB, DB, db]"),
            r#"
            .hoist.yml:10:54: secret "DB" is also set in `container.env`; keep one of the two
            .hoist.yml:10:58: secret "DB" is listed twice
            .hoist.yml:10:62: secret "db" is not a valid variable name: uppercase letters, digits and `_`, not starting with a digit"#,
        );
        check(
            &c(
                "env: {ID: \"${host.id}\", PEERS: \"${hosts.peer}\", ALL: \"${hosts.address}\", BAD: \"${hosts.}\"}",
            ),
            r#".hoist.yml:10:108: unknown placeholder `${hosts.}` in "${hosts.}"; known: ${commit}, ${commit_short}, ${branch}, ${tag}, ${ref}, ${host}, ${release}, ${app}, ${host.address}, ${host.KEY}, ${hosts.name}, ${hosts.address}, ${hosts.KEY} (write `$${` for a literal `${`)"#,
        );
    }

    #[test]
    fn health_keys_as_compose_has_them() {
        let health = |h: &str| with_deploy("").replace("health: {tcp: 8080}", h);
        check(
            &health(
                "health: {http: {port: 80, path: /health, host: web.example.com, status: \"200-299\"}, start_period: 2s, fail_after: 2}",
            ),
            "ok",
        );
        check(&health("health: {http: {port: 80, status: 204}}"), "ok");
        check(
            &health(
                "health: {http: {port: 80, host: \"a b\", status: \"399-200\"}, fail_after: -1}",
            ),
            r#"
            .hoist.yml:11:39: `http.host` "a b" is not a Host header: write a name, like web.example.com
            .hoist.yml:11:54: `http.status` "399-200" is not a status or a range of them: write one like "200-399" or "204" (100 to 599)
            .hoist.yml:11:78: `fail_after` must be 0 (off) or a number of failing checks in a row"#,
        );
        check(
            &health("health: {http: {port: 80, status: 700}, start_period: 1m, deadline: 30s}"),
            r#"
            .hoist.yml:11:41: `http.status` "700" is not a status or a range of them: write one like "200-399" or "204" (100 to 599)
            .hoist.yml:11:61: `start_period` (1m) is not shorter than `deadline` (30s): no check would count; shorten it or raise `deadline`"#,
        );
    }
}
