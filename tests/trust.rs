//! Trust (issue 13 item 5): shell steps and deploy hooks run on the agent's own machine, so
//! only a repository with `trusted = true` may use them, and even then with a clean
//! environment (never the agent's own variables) and masked output. Through the real binary,
//! the lab's build engine, registry and host h1.
//!
//! Names (repositories `acme/trust-*`, app and container `t13-trust`, a port from
//! `free_port`) are this file's own, so that other files' tests can run beside these.

mod common;

use std::path::Path;

use common::lab::{self, Clean};
use common::{Agent, GitRepo, push_github, run_log, step, token_toml};
use serde_json::Value;

/// Set in the agent's own environment: what a step or hook must never see.
const CANARY: &str = "agent-canary-9f3c1e7b";
/// A `[secrets]` value the trusted repository may use: masked wherever it shows.
const TOKEN: &str = "trust-token-5d82a4c0";

/// An agent with two repositories: `acme/trust-no` (default: not trusted) and
/// `acme/trust-yes` (`trusted = true`), each the bare repository of the same name under `dir`.
fn agent(dir: &Path, untrusted: &GitRepo, trusted: &GitRepo) -> Agent {
    let config = format!(
        "listen = \"127.0.0.1:0\"\ndata_dir = {:?}\n[builder]\ndocker = {:?}\n\
         [runner]\npoll_interval = \"0s\"\n\
         [[repo]]\nname = \"acme/trust-no\"\nurl = {:?}\nforge = \"github\"\nsecret = \"env:E2E_HOOK_SECRET\"\nhosts = [\"h1\"]\nsecrets = [\"TRUST_TOKEN\"]\n\
         [[repo]]\nname = \"acme/trust-yes\"\nurl = {:?}\nforge = \"github\"\nsecret = \"env:E2E_HOOK_SECRET\"\nhosts = [\"h1\"]\nsecrets = [\"TRUST_TOKEN\"]\ntrusted = true\n\
         [[registry]]\nhost = {:?}\ninsecure = true\n\
         [secrets]\nTRUST_TOKEN = \"env:T13_TRUST_TOKEN\"\n{}{}",
        dir.join("data"),
        lab::builder_url(),
        untrusted.bare,
        trusted.bare,
        lab::REGISTRY,
        token_toml(),
        lab::hosts_toml()
    );
    Agent::launch_with_env(
        dir,
        &config,
        &[
            ("T13_AGENT_CANARY", CANARY.to_string()),
            ("T13_TRUST_TOKEN", TOKEN.to_string()),
        ],
    )
}

/// The app's image: busybox httpd serving `/www` (with `/healthz`), stopped cleanly by TERM.
const DOCKERFILE: &str =
    "FROM lab/busybox:1\nCOPY www /www\nCOPY start.sh /start.sh\nCMD [\"sh\", \"/start.sh\"]\n";
const START: &str = "httpd -f -p 8080 -h /www &\npid=$!\n\
trap 'kill \"$pid\"; exit 0' TERM INT\nwait \"$pid\"\n";

/// A pipeline with a shell step that prints its environment (asking for the secret), the
/// image's build, and its deploy to h1 whose hooks print theirs and a committed file holding
/// the secret's value.
fn pipeline(app: &str, port: u16) -> String {
    format!(
        "app: {app}\nsteps:\n\
         \x20 - name: on-agent\n    secrets: [TRUST_TOKEN]\n    shell: [\"env | sort\"]\n\
         \x20 - name: build\n    build:\n      context: .\n      \
         repository: {registry}/hoist-e2e/{app}\n      tags: [\"${{commit_short}}\"]\n\
         \x20 - name: ship\n    deploy:\n      image: build\n      hosts: [h1]\n      \
         container:\n        name: {app}\n        ports: [\"{port}:8080\"]\n      \
         health:\n        http: {{ port: 8080, path: /healthz }}\n        interval: 200ms\n        \
         timeout: 1s\n        healthy_for: 400ms\n        deadline: 20s\n      \
         rollout:\n        bake: 0s\n        keep: 1\n      \
         hooks:\n        after_host: [\"env\"]\n        after_deploy: [\"cat\", \"leaked.txt\"]\n",
        registry = lab::REGISTRY
    )
}

/// Every file of the app's commit.
fn files(pipeline: &str) -> Vec<(&str, &str)> {
    vec![
        (".hoist.yml", pipeline),
        ("Dockerfile", DOCKERFILE),
        ("start.sh", START),
        ("www/healthz", "ok\n"),
        // A hook that learns a secret some other way still only shows it masked.
        ("leaked.txt", TOKEN),
    ]
}

/// Push `commit` of `repo` on main and wait (at most 300 s: a build and a rollout) until its
/// run ended.
async fn push_and_end(agent: &Agent, repo: &str, commit: &str) -> Value {
    let answer = push_github(agent, repo, "main", commit, "trust").await;
    let id = answer["runs"][0]
        .as_i64()
        .unwrap_or_else(|| panic!("the push queued no run: {answer:#}"));
    common::wait_for(agent, &format!("/runs/{id}"), "run ended", 300, |r| {
        !["queued", "running"].contains(&r["status"].as_str().unwrap_or(""))
    })
    .await
}

#[tokio::test]
async fn only_a_trusted_repository_runs_shell_steps_and_hooks_and_never_with_the_agents_env() {
    lab::check_registry();
    lab::check_host("h1");
    let app = "t13-trust";
    let _clean = Clean::new(app);
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("no")).unwrap();
    std::fs::create_dir_all(dir.path().join("yes")).unwrap();
    let untrusted = GitRepo::new(&dir.path().join("no"));
    let trusted = GitRepo::new(&dir.path().join("yes"));
    let port = lab::free_port();
    let yml = pipeline(app, port);
    let agent = agent(dir.path(), &untrusted, &trusted);

    // Not trusted: refused before any step, naming what asked and the key to set.
    let commit = untrusted.commit("main", "shell and hooks", &files(&yml));
    let run = push_and_end(&agent, "acme/trust-no", &commit).await;
    assert_eq!(run["status"], "failed", "{run:#}");
    let reason = run["reason"].as_str().unwrap_or_default();
    for expected in [
        "repository acme/trust-no is not trusted",
        "step on-agent (shell)",
        "step ship (hooks.after_host)",
        "step ship (hooks.after_deploy)",
        "`trusted = true` in its [[repo]] entry",
    ] {
        assert!(reason.contains(expected), "{expected:?} in {reason:?}");
    }
    assert!(
        run["steps"].as_array().is_none_or(|s| s
            .iter()
            .all(|s| !["success", "failed"].contains(&s["status"].as_str().unwrap_or("")))),
        "no step may run: {run:#}"
    );
    // A hook alone (no shell step) is refused as well.
    let hooks_only = yml.replace(
        "  - name: on-agent\n    secrets: [TRUST_TOKEN]\n    shell: [\"env | sort\"]\n",
        "",
    );
    let commit = untrusted.commit("main", "hooks only", &files(&hooks_only));
    let run = push_and_end(&agent, "acme/trust-no", &commit).await;
    assert_eq!(run["status"], "failed", "{run:#}");
    let reason = run["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("step ship (hooks.after_host)") && !reason.contains("(shell)"),
        "{reason}"
    );

    // Trusted: both run, each with a clean environment, the secret masked.
    // A message of its own: the same files and message at the same second would be the very
    // commit pushed to acme/trust-no, and the test helper names deliveries by commit.
    let commit = trusted.commit("main", "shell and hooks, trusted", &files(&yml));
    let run = push_and_end(&agent, "acme/trust-yes", &commit).await;
    let log = run_log(&agent, run["id"].as_i64().unwrap()).await;
    assert_eq!(run["status"], "success", "{run:#}\n{log}");
    assert_eq!(step(&run, "on-agent")["status"], "success");
    assert!(
        !log.contains(CANARY),
        "the agent's environment leaked:\n{log}"
    );
    assert!(!log.contains("T13_AGENT_CANARY"), "{log}");
    assert!(!log.contains("E2E_HOOK_SECRET"), "{log}");
    assert!(
        !log.contains(TOKEN),
        "a secret value shows unmasked:\n{log}"
    );
    // The step saw its secret (masked) and the run's values.
    assert!(log.contains("TRUST_TOKEN=***"), "{log}");
    assert!(log.contains(&format!("HOIST_COMMIT={commit}")), "{log}");
    // The hooks ran: after_host printed its environment (the host's values, no secret
    // unless asked for), after_deploy the committed file, masked.
    assert!(log.contains("after_host: HOIST_HOST=h1"), "{log}");
    assert!(log.contains("after_host: HOIST_HOST_ADDRESS="), "{log}");
    assert!(!log.contains("after_host: TRUST_TOKEN"), "{log}");
    assert!(log.contains("after_deploy: ***"), "{log}");
}
