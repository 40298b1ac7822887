//! End-to-end runs: real bare git repositories as remotes, signed deliveries carrying real
//! commit ids, the real binary, and the lab's real build engine running the steps.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::lab;
use common::{
    Agent, GitRepo, api, api_post, api_request, push_github, run_log, token_toml, wait_for,
};
use reqwest::Method;
use serde_json::Value;

const DB_URL: &str = "postgres://app:s3cr3t-pa55word@db/app";

/// An agent whose one repo, acme/app, is the bare repository `repo`.
fn agent(dir: &Path, repo: &GitRepo, poll: &str) -> Agent {
    let config = format!(
        "listen = \"127.0.0.1:0\"\ndata_dir = {:?}\n\n[builder]\ndocker = {:?}\n\n[runner]\npoll_interval = {poll:?}\n\n\
         [[repo]]\nname = \"acme/app\"\nurl = {:?}\nforge = \"github\"\nsecret = \"env:E2E_HOOK_SECRET\"\nsecrets = [\"DATABASE_URL\"]\ntrusted = true\n\n\
         [secrets]\nDATABASE_URL = \"file:{}\"\n\n{}",
        dir.join("data"),
        lab::builder_url(),
        repo.bare,
        dir.join("db-url").display(),
        token_toml(),
    );
    std::fs::write(dir.join("db-url"), DB_URL).unwrap();
    Agent::launch(dir, &config)
}

/// Send the signed push a forge would send for `commit` on `branch`; returns the queued run ids.
async fn push(agent: &Agent, branch: &str, commit: &str, message: &str) -> Vec<i64> {
    let answer = push_github(agent, "acme/app", branch, commit, message).await;
    answer["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_i64().unwrap())
        .collect()
}

/// Wait (bounded) until run `id` satisfies `done`; returns the run with its steps.
async fn wait_run(agent: &Agent, id: i64, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    wait_for(agent, &format!("/runs/{id}"), what, 60, done).await
}

async fn wait_end(agent: &Agent, id: i64) -> Value {
    wait_run(agent, id, "finished", |r| {
        !["queued", "running"].contains(&r["status"].as_str().unwrap_or(""))
    })
    .await
}

const PASSING: &str = "app: app\nsteps:\n  - name: test\n    image: lab/busybox:1\n    commands:\n      - cat hello.txt\n      - echo \"branch=$HOIST_BRANCH commit=$HOIST_COMMIT_SHORT\"\n  - name: on-agent\n    shell: [\"test -f hello.txt\", \"echo agent-side ok\"]\n";

#[tokio::test]
async fn a_passing_pipeline_runs_its_steps_on_the_pushed_commit() {
    let dir = tempfile::tempdir().unwrap();
    let repo = GitRepo::new(dir.path());
    let commit = repo.commit(
        "main",
        "first",
        &[
            (".hoist.yml", PASSING),
            ("hello.txt", "hello from the commit\n"),
        ],
    );
    // A later commit on the branch: the run must still build exactly the pushed one.
    repo.commit("main", "second", &[("hello.txt", "a later commit\n")]);
    let agent = agent(dir.path(), &repo, "0s");
    let runs = push(&agent, "main", &commit, "first").await;
    assert_eq!(runs.len(), 1);
    let run = wait_end(&agent, runs[0]).await;
    assert_eq!(run["status"], "success", "{run:#}");
    assert_eq!(run["commit"], commit.as_str());
    assert_eq!(run["steps"][0]["status"], "success");
    assert_eq!(run["steps"][1]["status"], "success");
    let log = run_log(&agent, runs[0]).await;
    assert!(log.contains("hello from the commit"), "{log}");
    assert!(!log.contains("a later commit"), "{log}");
    assert!(
        log.contains(&format!("branch=main commit={}", &commit[..7])),
        "{log}"
    );
    assert!(log.contains("agent-side ok"), "{log}");
    let deliveries = api(&agent, "/deliveries").await;
    assert_eq!(deliveries[0]["status"], "run");

    // Live logs over SSE of an ended run: every chunk, then the end event.
    let sse = api_request(&agent, Method::GET, &format!("/runs/{}/logs", runs[0]))
        .header("Accept", "text/event-stream")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        sse.contains("hello from the commit") && sse.contains("event: end"),
        "{sse}"
    );

    // `[skip ci]` starts nothing; a commit without .hoist.yml is "no pipeline".
    let skipped = repo.commit("main", "docs [skip ci]", &[("README", "x")]);
    assert!(
        push(&agent, "main", &skipped, "docs [skip ci]")
            .await
            .is_empty()
    );
    let bare = repo.commit("nopipe", "no pipeline here", &[(".hoist.yml", "")]);
    std::fs::remove_file(repo.work.join(".hoist.yml")).unwrap();
    let bare2 = repo.commit("nopipe", "really none", &[]);
    let _ = bare;
    let r = push(&agent, "nopipe", &bare2, "really none").await;
    let run = wait_end(&agent, r[0]).await;
    assert_eq!(run["status"], "skipped", "{run:#}");
    let deliveries = api(&agent, "/deliveries").await;
    assert_eq!(deliveries[0]["status"], "no pipeline", "{deliveries:#}");
}

#[tokio::test]
async fn a_failing_step_fails_the_run_with_its_exit_code_and_stops_there() {
    let dir = tempfile::tempdir().unwrap();
    let repo = GitRepo::new(dir.path());
    let yml = "app: app\nsteps:\n  - name: lint\n    image: lab/busybox:1\n    commands: [\"echo lint ok\"]\n  - name: test\n    image: lab/busybox:1\n    commands: [\"echo before\", \"exit 3\", \"echo never-printed\"]\n  - name: after\n    shell: [\"echo never-run\"]\n";
    let commit = repo.commit("main", "broken", &[(".hoist.yml", yml)]);
    let agent = agent(dir.path(), &repo, "0s");
    let runs = push(&agent, "main", &commit, "broken").await;
    let run = wait_end(&agent, runs[0]).await;
    assert_eq!(run["status"], "failed");
    assert_eq!(run["reason"], "step test command exited with 3", "{run:#}");
    let steps = run["steps"].as_array().unwrap();
    assert_eq!(steps[0]["status"], "success");
    assert_eq!(steps[1]["status"], "failed");
    assert_eq!(steps[1]["exit_code"], 3);
    assert_eq!(steps[2]["status"], "skipped");
    let log = run_log(&agent, runs[0]).await;
    assert!(
        log.contains("before") && !log.contains("never-printed") && !log.contains("never-run"),
        "{log}"
    );
}

/// A build step's `timeout` stops the build: the step ends `timed_out`, and the engine's
/// build container (running the Dockerfile's `RUN sleep`) goes away with it.
#[tokio::test]
async fn a_build_step_honours_its_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let repo = GitRepo::new(dir.path());
    let yml = format!(
        "app: app\nsteps:\n  - name: image\n    timeout: 2s\n    build:\n      context: .\n      \
         repository: {}/hoist-e2e/t13-build-timeout\n",
        lab::REGISTRY
    );
    // A sleep no other test runs, to find its container on the shared builder.
    let dockerfile = "FROM lab/busybox:1\nRUN sleep 1313\n";
    let commit = repo.commit(
        "main",
        "slow build",
        &[(".hoist.yml", &yml), ("Dockerfile", dockerfile)],
    );
    let agent = agent(dir.path(), &repo, "0s");
    let t0 = Instant::now();
    let id = push(&agent, "main", &commit, "slow build").await[0];
    let run = wait_end(&agent, id).await;
    assert_eq!(run["status"], "timed_out", "{run:#}");
    assert_eq!(run["steps"][0]["reason"], "timed out after 2s", "{run:#}");
    assert!(t0.elapsed() < Duration::from_secs(30), "{:?}", t0.elapsed());
    common::wait_until_blocking("the build's `sleep 1313` container to go", 30, || {
        let ps = lab::docker(
            lab::BUILDER,
            &["ps", "--no-trunc", "--format", "{{.Command}}"],
        );
        if ps.contains("sleep 1313") {
            Err(ps)
        } else {
            Ok(())
        }
    });
}

#[tokio::test]
async fn timeout_cancel_and_superseding_pushes() {
    let dir = tempfile::tempdir().unwrap();
    let repo = GitRepo::new(dir.path());
    let slow = "app: app\nsteps:\n  - name: slow\n    image: lab/busybox:1\n    commands: [\"echo started\", \"sleep 30\"]\n    timeout: 1s\n";
    let c1 = repo.commit("main", "slow", &[(".hoist.yml", slow)]);
    let agent = agent(dir.path(), &repo, "0s");

    // Timeout: killed after 1 s, the run says so.
    let t0 = Instant::now();
    let r1 = push(&agent, "main", &c1, "slow").await[0];
    let run = wait_end(&agent, r1).await;
    assert_eq!(run["status"], "timed_out", "{run:#}");
    assert_eq!(run["steps"][0]["reason"], "timed out after 1s");
    assert!(t0.elapsed() < Duration::from_secs(20));

    // Cancel by API while running.
    let endless = slow.replace("    timeout: 1s\n", "");
    let c2 = repo.commit("feature", "endless", &[(".hoist.yml", &endless)]);
    let r2 = push(&agent, "feature", &c2, "endless").await[0];
    wait_run(&agent, r2, "running its step", |r| {
        r["steps"][0]["status"] == "running"
    })
    .await;
    let t1 = Instant::now();
    let answer: Value = api_post(&agent, &format!("/runs/{r2}/cancel"), None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(answer["status"], "cancelling");
    let run = wait_end(&agent, r2).await;
    assert_eq!(run["status"], "cancelled", "{run:#}");
    assert_eq!(run["reason"], "cancelled by e2e");
    assert!(
        t1.elapsed() < Duration::from_secs(15),
        "cancel took {:?}",
        t1.elapsed()
    );

    // A newer push to the same branch cancels the running run it supersedes.
    let c3 = repo.commit("feature", "endless again", &[("x", "1")]);
    let r3 = push(&agent, "feature", &c3, "endless again").await[0];
    wait_run(&agent, r3, "running its step", |r| {
        r["steps"][0]["status"] == "running"
    })
    .await;
    let quick = "app: app\nsteps:\n  - name: quick\n    image: lab/busybox:1\n    commands: [\"echo quick\"]\n";
    let c4 = repo.commit("feature", "quick", &[(".hoist.yml", quick)]);
    let r4 = push(&agent, "feature", &c4, "quick").await[0];
    let old = wait_end(&agent, r3).await;
    assert_eq!(old["status"], "cancelled");
    assert_eq!(old["reason"], format!("superseded by run {r4}"));
    assert_eq!(wait_end(&agent, r4).await["status"], "success");
}

#[tokio::test]
async fn secrets_are_masked_and_push_data_is_never_shell_text() {
    let dir = tempfile::tempdir().unwrap();
    let repo = GitRepo::new(dir.path());
    // A branch name that a careless CI would execute: it must stay data.
    let branch = "x;$(touch${IFS}/tmp/pwned)".to_string();
    let marker = Path::new("/tmp/pwned");
    let _ = std::fs::remove_file(marker);
    let yml = "app: app\nsteps:\n  - name: secret\n    image: lab/busybox:1\n    secrets: [DATABASE_URL]\n    commands: [\"echo \\\"db=$DATABASE_URL\\\"\", \"echo \\\"branch=$HOIST_BRANCH\\\"\"]\n  - name: on-agent\n    shell: [\"echo \\\"agent branch=$HOIST_BRANCH\\\"\"]\n    secrets: [DATABASE_URL]\n";
    let commit = repo.commit(&branch, "masking", &[(".hoist.yml", yml)]);
    let agent = agent(dir.path(), &repo, "0s");
    let runs = push(&agent, &branch, &commit, "masking").await;
    let run = wait_end(&agent, runs[0]).await;
    assert_eq!(run["status"], "success", "{run:#}");
    let log = run_log(&agent, runs[0]).await;
    assert!(log.contains("db=***"), "{log}");
    assert!(!log.contains("s3cr3t-pa55word"), "the secret leaked: {log}");
    assert!(log.contains(&format!("branch={branch}")), "{log}");
    assert!(log.contains(&format!("agent branch={branch}")), "{log}");
    assert!(!marker.exists(), "the branch name was executed");
}

/// Wait (at most 30 s) until acme/app has a run of `commit`, which only the poller can have
/// queued when no webhook was sent; returns that run.
async fn wait_polled(agent: &Agent, commit: &str) -> Value {
    let of_commit = |runs: &Value| {
        runs.as_array()
            .unwrap()
            .iter()
            .find(|r| r["commit"] == commit)
            .cloned()
    };
    let what = format!("a list with a run of {commit}, queued by the poller");
    let runs = wait_for(agent, "/runs?repo=acme/app", &what, 30, |runs| {
        of_commit(runs).is_some()
    })
    .await;
    of_commit(&runs).unwrap()
}

#[tokio::test]
async fn the_poller_finds_a_push_whose_webhook_never_came() {
    let dir = tempfile::tempdir().unwrap();
    let repo = GitRepo::new(dir.path());
    let yml = "app: app\nsteps:\n  - name: test\n    image: lab/busybox:1\n    commands: [\"echo polled\"]\n";
    let c1 = repo.commit("main", "seen", &[(".hoist.yml", yml)]);
    let agent = agent(dir.path(), &repo, "500ms");
    let r1 = push(&agent, "main", &c1, "seen").await[0];
    assert_eq!(wait_end(&agent, r1).await["status"], "success");
    // This push's webhook is lost.
    let c2 = repo.commit("main", "lost webhook", &[("x", "2")]);
    let found = wait_polled(&agent, &c2).await;
    assert_eq!(found["trigger"], "poll");
    let run = wait_end(&agent, found["id"].as_i64().unwrap()).await;
    assert_eq!(run["status"], "success");
    // Seen once is enough: no second run for the same head. Two more lost webhooks, on another
    // branch, prove that the poller looked at main again since: polls take turns, so the one
    // that finds the second had ended the one that found the first, and that one started
    // after c2's run was already there.
    for (n, message) in [(3, "first probe"), (4, "second probe")] {
        let probe = repo.commit("probe", message, &[("x", &n.to_string())]);
        wait_polled(&agent, &probe).await;
    }
    let runs = api(&agent, "/runs?repo=acme/app").await;
    assert_eq!(
        runs.as_array()
            .unwrap()
            .iter()
            .filter(|r| r["commit"] == c2.as_str())
            .count(),
        1
    );
}

#[tokio::test]
async fn kill_9_mid_run_then_restart_requeues_and_finishes() {
    let dir = tempfile::tempdir().unwrap();
    let repo = GitRepo::new(dir.path());
    // A step name no other test uses: tests run in parallel on one builder, and each agent
    // numbers its runs from 1, so the run label alone may name another test's container.
    let yml = "app: app\nsteps:\n  - name: slow-across-a-kill\n    image: lab/busybox:1\n    commands: [\"sleep 2\", \"echo finished\"]\n";
    let commit = repo.commit("main", "slow", &[(".hoist.yml", yml)]);
    let mut first = agent(dir.path(), &repo, "0s");
    let id = push(&first, "main", &commit, "slow").await[0];
    wait_run(&first, id, "running its step", |r| {
        r["steps"][0]["status"] == "running"
    })
    .await;
    first.kill9();

    let second = agent(dir.path(), &repo, "0s");
    let run = wait_end(&second, id).await;
    assert_eq!(run["status"], "success", "{run:#}");
    assert_eq!(run["attempts"], 2);
    assert!(run_log(&second, id).await.contains("finished"));
    // The killed agent's container was removed, and the second attempt's too.
    let left = lab::docker_lenient(
        lab::BUILDER,
        &[
            "ps",
            "-aq",
            "--filter",
            &format!("label=hoist.run={id}"),
            "--filter",
            "label=hoist.step=slow-across-a-kill",
        ],
    );
    assert_eq!(left, "", "orphaned step containers remain");
}
