//! Steady over many runs: retention keeps the newest runs (with their logs and deliveries),
//! keeps the newest failed workspaces, and the store shrinks after pruning. Against the real
//! binary and the lab's build engine.

mod common;

use std::path::Path;

use common::lab;
use common::{Agent, GitRepo, api, push_github, run_log, token_toml, wait_until};
use serde_json::Value;

const RUNS: u32 = 12;
const KEEP_RUNS: usize = 4;
const KEEP_WORKSPACES: usize = 2;

fn agent(dir: &Path, repo: &GitRepo) -> Agent {
    let config = format!(
        "listen = \"127.0.0.1:0\"\ndata_dir = {:?}\n\n[builder]\ndocker = {:?}\n\n\
         [runner]\npoll_interval = \"0s\"\nkeep_runs = {KEEP_RUNS}\nkeep_workspaces = {KEEP_WORKSPACES}\n\n\
         [[repo]]\nname = \"acme/app\"\nurl = {:?}\nforge = \"github\"\nsecret = \"env:E2E_HOOK_SECRET\"\n\
         cancel_superseded = false\n\n{}",
        dir.join("data"),
        lab::builder_url(),
        repo.bare,
        token_toml(),
    );
    Agent::launch(dir, &config)
}

fn ids(v: &Value) -> Vec<i64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_i64().unwrap())
        .collect()
}

#[tokio::test]
async fn retention_keeps_the_newest_runs_and_failed_workspaces() {
    let dir = tempfile::tempdir().unwrap();
    let repo = GitRepo::new(dir.path());
    let pipeline = "app: app\nsteps:\n  - name: test\n    image: lab/busybox:1\n    commands: [\"echo run $(cat n)\", \"test $(cat n) -le 8\"]\n";
    let agent = agent(dir.path(), &repo);
    let mut runs = Vec::new();
    for n in 1..=RUNS {
        let commit = repo.commit(
            "main",
            &format!("change {n}"),
            &[(".hoist.yml", pipeline), ("n", &n.to_string())],
        );
        let answer = push_github(&agent, "acme/app", "main", &commit, "change").await;
        runs.push(answer["runs"][0].as_i64().unwrap());
    }

    // Every run ends (runs 9..12 fail their test), and the janitor prunes all but the newest
    // KEEP_RUNS: their rows, steps, logs and deliveries.
    let kept = runs[runs.len() - KEEP_RUNS..].to_vec();
    let mut newest_first = kept.clone();
    newest_first.reverse();
    wait_until("retention to leave the newest runs", 60, || async {
        let listed = ids(&api(&agent, "/runs").await);
        if listed == newest_first {
            Ok(())
        } else {
            Err(format!("runs listed: {listed:?}, want {newest_first:?}"))
        }
    })
    .await;
    for &id in &runs[..runs.len() - KEEP_RUNS] {
        let r = common::api_request(&agent, reqwest::Method::GET, &format!("/runs/{id}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404, "run {id} was pruned");
    }
    let deliveries = api(&agent, "/deliveries").await;
    assert_eq!(deliveries.as_array().unwrap().len(), KEEP_RUNS);
    let last = *kept.last().unwrap();
    assert!(run_log(&agent, last).await.contains(&format!("run {RUNS}")));

    // Only the newest KEEP_WORKSPACES failed runs' workspaces stay; passing ones never do.
    let mut workspaces: Vec<String> = std::fs::read_dir(dir.path().join("data/workspaces"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| !n.ends_with(".failed"))
        .collect();
    workspaces.sort();
    let want: Vec<String> = runs[runs.len() - KEEP_WORKSPACES..]
        .iter()
        .map(|id| format!("run-{id}"))
        .collect();
    assert_eq!(workspaces, want);
}
