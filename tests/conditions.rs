//! Conditions (issue 15): a step's `when` and manual gates, through the real binary. Shell
//! steps on a trusted repository keep these tests off the lab's hosts; names (`c15-*`) are
//! this file's own.

mod common;

use std::path::Path;

use common::{Agent, GitRepo, api, hoist_client, push_github, token_toml};
use serde_json::Value;

const REPO: &str = "acme/conditions";

fn agent(dir: &Path, repo: &GitRepo) -> Agent {
    let config = format!(
        "listen = \"127.0.0.1:0\"\ndata_dir = {:?}\n[runner]\npoll_interval = \"0s\"\nmax_parallel = 1\n\
         [[repo]]\nname = {REPO:?}\nurl = {:?}\nforge = \"github\"\nsecret = \"env:E2E_HOOK_SECRET\"\n{}",
        dir.join("data"),
        repo.bare,
        token_toml()
    );
    Agent::launch(dir, &config)
}

async fn wait_status(agent: &Agent, id: i64, done: &[&str]) -> Value {
    common::wait_for(agent, &format!("/runs/{id}"), &done.join("|"), 120, |r| {
        done.contains(&r["status"].as_str().unwrap_or(""))
    })
    .await
}

fn step<'a>(run: &'a Value, name: &str) -> &'a Value {
    run["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no step {name} in {run:#}"))
}

const WHEN: &str = "app: c15-web\nsteps:\n  - name: test\n    shell: [\"true\"]\n  \
- name: ship\n    shell: [\"true\"]\n    when: {branches: [main]}\n  \
- name: after\n    shell: [\"true\"]\n";

#[tokio::test]
async fn a_feature_branch_runs_the_tests_and_skips_the_deploy() {
    let dir = tempfile::tempdir().unwrap();
    let repo = GitRepo::new(dir.path());
    let agent = agent(dir.path(), &repo);
    let commit = repo.commit("feature/x", "feature", &[(".hoist.yml", WHEN)]);
    let id = push_github(&agent, REPO, "feature/x", &commit, "feature").await["runs"][0]
        .as_i64()
        .unwrap();
    let run = wait_status(&agent, id, &["success", "failed"]).await;
    assert_eq!(run["status"], "success", "{run:#}");
    assert_eq!(step(&run, "test")["status"], "success");
    assert_eq!(step(&run, "ship")["status"], "skipped");
    assert_eq!(
        step(&run, "ship")["reason"],
        "when: branch \"feature/x\" does not match when.branches"
    );
    // In file order, the step after a skipped one is skipped too.
    assert_eq!(step(&run, "after")["status"], "skipped");

    let commit = repo.commit("main", "main", &[(".hoist.yml", WHEN)]);
    let id = push_github(&agent, REPO, "main", &commit, "main").await["runs"][0]
        .as_i64()
        .unwrap();
    let run = wait_status(&agent, id, &["success", "failed"]).await;
    assert_eq!(step(&run, "ship")["status"], "success", "{run:#}");
}

const MANUAL: &str = "app: c15-gate\nsteps:\n  - name: test\n    shell: [\"true\"]\n  \
- name: ship\n    shell: [\"true\"]\n    when: {manual: true}\n";

#[tokio::test]
async fn a_manual_step_waits_survives_a_restart_and_goes_once_approved() {
    let dir = tempfile::tempdir().unwrap();
    let repo = GitRepo::new(dir.path());
    let mut agent = agent(dir.path(), &repo);
    let commit = repo.commit("main", "one", &[(".hoist.yml", MANUAL)]);
    let id = push_github(&agent, REPO, "main", &commit, "one").await["runs"][0]
        .as_i64()
        .unwrap();
    let run = wait_status(&agent, id, &["waiting"]).await;
    assert_eq!(step(&run, "test")["status"], "success");
    assert_eq!(step(&run, "ship")["status"], "waiting");

    // A waiting run holds no slot: with max_parallel = 1 another branch's run still runs.
    let other = repo.commit("other", "other", &[(".hoist.yml", WHEN)]);
    let oid = push_github(&agent, REPO, "other", &other, "other").await["runs"][0]
        .as_i64()
        .unwrap();
    wait_status(&agent, oid, &["success"]).await;

    agent.kill9();
    let agent = self::agent(dir.path(), &repo);
    let run = api(&agent, &format!("/runs/{id}")).await;
    assert_eq!(
        run["status"], "waiting",
        "a restart keeps it waiting: {run:#}"
    );

    let out = hoist_client(&agent, &["approve", &id.to_string(), "ship"]);
    assert_eq!(out.code, Some(0), "{}{}", out.stdout, out.stderr);
    let run = wait_status(&agent, id, &["success", "failed"]).await;
    assert_eq!(run["status"], "success", "{run:#}");
    assert_eq!(step(&run, "ship")["approved_by"], "e2e");
    assert!(step(&run, "ship")["approved_at"].is_string());

    // A second push supersedes a waiting run.
    let c2 = repo.commit("main", "two", &[(".hoist.yml", MANUAL)]);
    let id2 = push_github(&agent, REPO, "main", &c2, "two").await["runs"][0]
        .as_i64()
        .unwrap();
    wait_status(&agent, id2, &["waiting"]).await;
    let c3 = repo.commit("main", "three", &[(".hoist.yml", MANUAL)]);
    push_github(&agent, REPO, "main", &c3, "three").await;
    let run = wait_status(&agent, id2, &["cancelled"]).await;
    assert!(
        run["reason"].as_str().unwrap().starts_with("superseded"),
        "{run:#}"
    );
}
