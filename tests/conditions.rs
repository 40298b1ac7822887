//! Conditions (issue 15): a step's `when` (branch and tag globs) and manual gates, through the
//! real binary, the real build engine and registry, and the lab's three hosts. A deploy step
//! that `when` filters out, or that waits for approval, must leave the hosts as they were: the
//! tests read the hosts back with the docker CLI, independently of hoist, and through
//! `/api/v1/apps/APP/hosts`.
//!
//! Names (the repository `acme/conditions`, apps and containers `c15-*`, published ports from
//! `free_port`) are this file's own, so that other files' tests can run beside these.

mod common;

use std::path::Path;

use common::lab::{self, Clean, HOSTS, OnHost, on_host};
use common::{
    Agent, GitRepo, api, api_post, hoist_client, push_github, push_github_ref, release, run_log,
    step, token_toml,
};
use serde_json::{Value, json};

const REPO: &str = "acme/conditions";

/// An agent whose one repository is `repo`, with the lab's builder, registry and hosts, and a
/// single runner slot (so that a waiting run that held one would block every other run).
fn agent(dir: &Path, repo: &GitRepo) -> Agent {
    let config = format!(
        "listen = \"127.0.0.1:0\"\ndata_dir = {:?}\n[builder]\ndocker = {:?}\n\
         [runner]\npoll_interval = \"0s\"\nmax_parallel = 1\n\
         [[repo]]\nname = {REPO:?}\nurl = {:?}\nforge = \"github\"\nsecret = \"env:E2E_HOOK_SECRET\"\nhosts = {HOSTS:?}\ntrusted = true\n\
         [[registry]]\nhost = {:?}\ninsecure = true\n{}{}",
        dir.join("data"),
        lab::builder_url(),
        repo.bare,
        lab::REGISTRY,
        token_toml(),
        lab::hosts_toml()
    );
    Agent::launch(dir, &config)
}

/// The app's image: busybox httpd serving `/www` (with `/healthz`), stopped cleanly by TERM.
const DOCKERFILE: &str =
    "FROM lab/busybox:1\nCOPY www /www\nCOPY start.sh /start.sh\nCMD [\"sh\", \"/start.sh\"]\n";
const START: &str = "httpd -f -p 8080 -h /www &\npid=$!\n\
trap 'kill \"$pid\"; exit 0' TERM INT\nwait \"$pid\"\n";

/// The pipeline of `app`: a test step, the image's build, its deploy `ship` to the three hosts
/// (container `app`, published on `port`) under `when` (YAML flow text), and a step after it.
/// `on` is the pipeline's own `on:` line(s), or empty.
fn pipeline(app: &str, port: u16, on: &str, when: &str) -> String {
    format!(
        "app: {app}\n{on}steps:\n\
         \x20 - name: test\n    shell: [\"true\"]\n\
         \x20 - name: build\n    build:\n      context: .\n      \
         repository: {registry}/hoist-e2e/{app}\n      tags: [\"${{commit_short}}\"]\n\
         \x20 - name: ship\n    when: {when}\n    deploy:\n      image: build\n      \
         hosts: [h1, h2, h3]\n      container:\n        name: {app}\n        \
         ports: [\"{port}:8080\"]\n      health:\n        http: {{ port: 8080, path: /healthz }}\n        \
         interval: 200ms\n        timeout: 1s\n        healthy_for: 400ms\n        deadline: 10s\n      \
         rollout:\n        max_parallel: 3\n        bake: 0s\n        keep: 3\n\
         \x20 - name: after\n    shell: [\"true\"]\n",
        registry = lab::REGISTRY
    )
}

/// Every file of a commit: the pipeline, the image, and a version page that makes each
/// commit's image (so its digest) its own.
fn files<'a>(pipeline: &'a str, version: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        (".hoist.yml", pipeline),
        ("Dockerfile", DOCKERFILE),
        ("start.sh", START),
        ("www/healthz", "ok\n"),
        ("www/version", version),
    ]
}

/// Wait (at most 300 s: builds and rollouts) until run `id` is in one of the states `done`.
async fn wait_status(agent: &Agent, id: i64, done: &[&str]) -> Value {
    common::wait_for(agent, &format!("/runs/{id}"), &done.join("|"), 300, |r| {
        done.contains(&r["status"].as_str().unwrap_or(""))
    })
    .await
}

/// The id of the (one) run a push answer queued.
fn run_id(answer: &Value) -> i64 {
    answer["runs"][0]
        .as_i64()
        .unwrap_or_else(|| panic!("the push queued no run: {answer:#}"))
}

/// Push `commit` on `branch` and wait until its run ended.
async fn push_and_end(agent: &Agent, branch: &str, commit: &str, message: &str) -> Value {
    let id = run_id(&push_github(agent, REPO, branch, commit, message).await);
    wait_status(agent, id, &["success", "failed", "cancelled", "skipped"]).await
}

/// What every lab host runs as container `app`, read with the docker CLI.
fn hosts_now(app: &str) -> Vec<OnHost> {
    HOSTS.iter().map(|h| on_host(h, app)).collect()
}

/// Every host runs release `number` of `app`: read back with the docker CLI (the manifest
/// digest among its image's repo digests, and its `hoist.release` label), and the API's hosts
/// view agrees (the digest it reads back is the one it expects). What the hosts run.
async fn assert_on(agent: &Agent, app: &str, number: i64) -> Vec<OnHost> {
    let digest = release(agent, app, number).await["manifest_digest"]
        .as_str()
        .unwrap()
        .to_string();
    let seen = hosts_now(app);
    for (h, s) in HOSTS.iter().zip(&seen) {
        assert!(
            s.running && s.digests.contains(&digest) && s.release == number.to_string(),
            "{h} should run release {number} of {app} ({digest}): {s:?}"
        );
    }
    let shown = api(agent, &format!("/apps/{app}/hosts")).await;
    for h in HOSTS {
        let row = shown
            .as_array()
            .and_then(|rows| rows.iter().find(|r| r["host"] == h))
            .unwrap_or_else(|| panic!("/apps/{app}/hosts has no {h}: {shown:#}"));
        assert_eq!(
            (&row["release"], &row["digest_read_back"], &row["container"]),
            (&json!(number), &json!(digest), &json!("running")),
            "{h} in /apps/{app}/hosts: {shown:#}"
        );
    }
    seen
}

/// No host has a container of `app`, and the API knows of none.
async fn assert_nowhere(agent: &Agent, app: &str) {
    for (h, s) in HOSTS.iter().zip(hosts_now(app)) {
        assert!(s.id.is_empty(), "{h} should run no {app}: {s:?}");
    }
    let shown = api(agent, &format!("/apps/{app}/hosts")).await;
    assert_eq!(shown, json!([]), "/apps/{app}/hosts");
}

/// The releases `app`'s deployments rolled out, newest first.
async fn deployed_releases(agent: &Agent, app: &str) -> Vec<i64> {
    let list = api(agent, &format!("/apps/{app}/deployments")).await;
    list.as_array()
        .map(|l| l.iter().filter_map(|d| d["to_release"].as_i64()).collect())
        .unwrap_or_default()
}

#[tokio::test]
async fn a_feature_branch_is_tested_and_built_but_only_main_deploys() {
    const APP: &str = "c15-when";
    let _clean = Clean::new(APP);
    let dir = tempfile::tempdir().unwrap();
    let repo = GitRepo::new(dir.path());
    let agent = agent(dir.path(), &repo);
    let yml = pipeline(APP, lab::free_port(), "", "{branches: [main]}");

    // 1. main: release 1 on every host.
    let c1 = repo.commit("main", "main one", &files(&yml, "main one\n"));
    let run = push_and_end(&agent, "main", &c1, "main one").await;
    assert_eq!(run["status"], "success", "{run:#}");
    let before = assert_on(&agent, APP, 1).await;

    // 2. feature/x: the tests run and the image is built (release 2), the deploy step and the
    // step after it (file order) are skipped, and no host changes.
    let c2 = repo.commit("feature/x", "feature", &files(&yml, "feature\n"));
    let run = push_and_end(&agent, "feature/x", &c2, "feature").await;
    assert_eq!(run["status"], "success", "{run:#}");
    assert_eq!(step(&run, "test")["status"], "success");
    assert_eq!(step(&run, "build")["status"], "success");
    assert_eq!(step(&run, "ship")["status"], "skipped");
    assert_eq!(
        step(&run, "ship")["reason"],
        "when: branch \"feature/x\" does not match when.branches"
    );
    assert_eq!(step(&run, "after")["status"], "skipped");
    assert_eq!(release(&agent, APP, 2).await["commit"], c2.as_str());
    assert_eq!(
        hosts_now(APP),
        before,
        "a skipped deploy step must change no host"
    );
    assert_on(&agent, APP, 1).await;
    assert_eq!(deployed_releases(&agent, APP).await, [1]);

    // 3. main again: release 3 on every host.
    let c3 = repo.commit("main", "main two", &files(&yml, "main two\n"));
    let run = push_and_end(&agent, "main", &c3, "main two").await;
    assert_eq!(run["status"], "success", "{run:#}");
    assert_eq!(step(&run, "ship")["status"], "success", "{run:#}");
    assert_eq!(step(&run, "after")["status"], "success", "{run:#}");
    assert_on(&agent, APP, 3).await;
    assert_eq!(deployed_releases(&agent, APP).await, [3, 1]);
}

#[tokio::test]
async fn a_release_tag_deploys_and_a_branch_does_not() {
    const APP: &str = "c15-tag";
    let _clean = Clean::new(APP);
    let dir = tempfile::tempdir().unwrap();
    let repo = GitRepo::new(dir.path());
    let agent = agent(dir.path(), &repo);
    let yml = pipeline(
        APP,
        lab::free_port(),
        "on: {tags: [\"v*\"]}\n",
        "{tags: [\"v*\"]}",
    );

    // 1. Tag v1.2.0: release 1 on every host.
    let c1 = repo.commit("main", "release", &files(&yml, "v1.2.0\n"));
    repo.tag("v1.2.0", &c1);
    let answer = push_github_ref(&agent, REPO, "refs/tags/v1.2.0", &c1, "v1.2.0").await;
    let run = wait_status(&agent, run_id(&answer), &["success", "failed"]).await;
    assert_eq!(run["status"], "success", "{run:#}");
    assert_eq!(
        (&run["kind"], &run["name"]),
        (&json!("tag"), &json!("v1.2.0"))
    );
    assert_eq!(step(&run, "ship")["status"], "success", "{run:#}");
    let before = assert_on(&agent, APP, 1).await;

    // 2. A branch: built (release 2), not deployed; the hosts are as they were.
    let c2 = repo.commit("main", "after the release", &files(&yml, "main\n"));
    let run = push_and_end(&agent, "main", &c2, "after the release").await;
    assert_eq!(run["status"], "success", "{run:#}");
    assert_eq!(step(&run, "build")["status"], "success");
    assert_eq!(step(&run, "ship")["status"], "skipped");
    assert_eq!(
        step(&run, "ship")["reason"],
        "when: the step runs on no branch (no when.branches)"
    );
    assert_eq!(release(&agent, APP, 2).await["commit"], c2.as_str());
    assert_eq!(hosts_now(APP), before, "a branch must change no host");
    assert_on(&agent, APP, 1).await;
    assert_eq!(deployed_releases(&agent, APP).await, [1]);
}

/// A pipeline of shell steps only, for the run that shows a waiting run holds no slot.
const SHELL: &str = "app: c15-other\nsteps:\n  - name: test\n    shell: [\"true\"]\n";

#[tokio::test]
async fn a_manual_deploy_waits_survives_a_restart_and_deploys_once_approved() {
    const APP: &str = "c15-gate";
    let _clean = Clean::new(APP);
    let dir = tempfile::tempdir().unwrap();
    let repo = GitRepo::new(dir.path());
    let mut agent = agent(dir.path(), &repo);
    let yml = pipeline(APP, lab::free_port(), "", "{manual: true}");

    // 1. The run builds, then waits at the deploy step; nothing is deployed.
    let c1 = repo.commit("main", "one", &files(&yml, "one\n"));
    let id = run_id(&push_github(&agent, REPO, "main", &c1, "one").await);
    let run = wait_status(&agent, id, &["waiting"]).await;
    assert_eq!(
        run["reason"], "waiting for approval of step ship",
        "{run:#}"
    );
    assert_eq!(step(&run, "test")["status"], "success");
    assert_eq!(step(&run, "build")["status"], "success");
    assert_eq!(step(&run, "ship")["status"], "waiting");
    assert_eq!(step(&run, "after")["status"], "queued");
    assert_nowhere(&agent, APP).await;

    // A waiting run holds no slot: with max_parallel = 1 another branch's run still runs.
    let other = repo.commit("other", "other", &[(".hoist.yml", SHELL)]);
    let run = push_and_end(&agent, "other", &other, "other").await;
    assert_eq!(run["status"], "success", "{run:#}");

    // 2. A restart (kill -9) keeps it waiting, and still nothing is deployed.
    agent.kill9();
    let agent = self::agent(dir.path(), &repo);
    let run = api(&agent, &format!("/runs/{id}")).await;
    assert_eq!(
        run["status"], "waiting",
        "a restart keeps it waiting: {run:#}"
    );
    assert_nowhere(&agent, APP).await;

    // 3. Approved through the CLI: the release the run built before the restart is deployed.
    let out = hoist_client(&agent, &["approve", &id.to_string(), "ship"]);
    assert_eq!(out.code, Some(0), "{}{}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains("step ship approved by e2e"),
        "{}",
        out.stdout
    );
    let run = wait_status(&agent, id, &["success", "failed"]).await;
    assert_eq!(run["status"], "success", "{run:#}");
    let ship = step(&run, "ship");
    assert_eq!(ship["status"], "success", "{run:#}");
    assert_eq!(ship["approved_by"], "e2e");
    assert!(ship["approved_at"].is_string(), "{ship:#}");
    assert_eq!(step(&run, "after")["status"], "success", "{run:#}");
    let on = assert_on(&agent, APP, 1).await;
    assert!(
        run_log(&agent, id).await.contains("── approved by e2e at "),
        "the step's log says who approved it"
    );
    // Approving twice is refused, naming who did.
    let out = hoist_client(&agent, &["approve", &id.to_string(), "ship"]);
    assert_ne!(out.code, Some(0), "{}", out.stdout);
    assert!(
        out.stderr.contains("approved already, by e2e"),
        "{}",
        out.stderr
    );

    // 4. A second push supersedes a waiting run: it is cancelled, its built release 2 is never
    // deployed.
    let c2 = repo.commit("main", "two", &files(&yml, "two\n"));
    let id2 = run_id(&push_github(&agent, REPO, "main", &c2, "two").await);
    wait_status(&agent, id2, &["waiting"]).await;
    let c3 = repo.commit("main", "three", &files(&yml, "three\n"));
    let id3 = run_id(&push_github(&agent, REPO, "main", &c3, "three").await);
    let run = wait_status(&agent, id2, &["cancelled"]).await;
    assert!(
        run["reason"].as_str().unwrap().starts_with("superseded"),
        "{run:#}"
    );
    assert_eq!(step(&run, "ship")["status"], "cancelled", "{run:#}");
    let r = api_post(&agent, &format!("/runs/{id2}/steps/ship/approve"), None).await;
    assert_eq!(r.status(), 409, "a cancelled run's step cannot be approved");

    // 5. The newest run waits in turn; cancelling it ends the wait. The hosts never moved.
    wait_status(&agent, id3, &["waiting"]).await;
    let r = api_post(&agent, &format!("/runs/{id3}/cancel"), None).await;
    assert!(r.status().is_success(), "{}", r.status());
    let run = wait_status(&agent, id3, &["cancelled"]).await;
    assert_eq!(step(&run, "ship")["status"], "cancelled", "{run:#}");
    assert_eq!(hosts_now(APP), on, "no host changed after the approved run");
    assert_eq!(deployed_releases(&agent, APP).await, [1]);
}
