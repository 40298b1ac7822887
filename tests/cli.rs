//! The command line as a person uses it: `hoist validate`, `hoist run`, `hoist runs`,
//! `hoist logs --follow`, and the API's manual run and replay.

mod common;

use common::lab;
use common::{
    Agent, GitRepo, api, api_post, hoist, hoist_client, push_github, token_toml, wait_until,
};
use serde_json::{Value, json};

#[test]
fn validate_prints_file_line_col_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.yml");
    std::fs::write(
        &good,
        "app: web\nsteps:\n  - name: test\n    image: lab/busybox:1\n    commands: [\"true\"]\n",
    )
    .unwrap();
    let out = hoist(&["validate", good.to_str().unwrap()]);
    assert_eq!(out.code, Some(0), "{}", out.stdout);

    let bad = dir.path().join("bad.yml");
    std::fs::write(
        &bad,
        "app: web\nsteps:\n  - name: test\n    image: lab/busybox:1\n    comands: [\"true\"]\n",
    )
    .unwrap();
    let out = hoist(&["validate", bad.to_str().unwrap()]);
    assert_eq!(out.code, Some(1));
    let text = &out.stdout;
    let first = text.lines().next().unwrap_or("");
    assert!(
        first.starts_with(&format!("{}:5:5: ", bad.display())),
        "{text}"
    );
    assert!(first.contains("comands"), "{text}");

    // Every example pipeline we ship is valid.
    for entry in std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/pipelines")).unwrap() {
        let path = entry.unwrap().path();
        let out = hoist(&["validate", path.to_str().unwrap()]);
        assert_eq!(out.code, Some(0), "{}: {}", path.display(), out.stdout);
    }
    // Shell steps and hooks are valid, and noted: only a trusted repository may run them.
    let full = concat!(env!("CARGO_MANIFEST_DIR"), "/pipelines/full.yml");
    let out = hoist(&["validate", full]);
    assert!(
        out.stdout.contains("note: step test-on-agent (shell)")
            && out.stdout.contains("(hooks.before_host)")
            && out.stdout.contains("`trusted = true`"),
        "{}",
        out.stdout
    );
    let out = hoist(&["validate", dir.path().join("missing.yml").to_str().unwrap()]);
    assert_eq!(out.code, Some(2));
}

#[test]
fn run_executes_a_local_checkout_without_a_server() {
    let docker = lab::builder_url();
    let dir = tempfile::tempdir().unwrap();
    let repo = GitRepo::new(dir.path());
    let yml = "app: web\nsteps:\n  - name: test\n    image: lab/busybox:1\n    commands: [\"cat hello.txt\", \"echo on $HOIST_BRANCH\"]\n  - name: local\n    shell: [\"echo local step in $(basename $PWD)\"]\n";
    repo.commit(
        "main",
        "local",
        &[(".hoist.yml", yml), ("hello.txt", "hello locally\n")],
    );
    let out = hoist(&["run", "--docker", &docker, repo.work.to_str().unwrap()]);
    let text = &out.stdout;
    assert_eq!(out.code, Some(0), "{text}\n{}", out.stderr);
    assert!(
        text.contains("hello locally")
            && text.contains("on main")
            && text.contains("local step in work"),
        "{text}"
    );

    let failing = dir.path().join("failing.yml");
    std::fs::write(
        &failing,
        "app: web\nsteps:\n  - name: test\n    image: lab/busybox:1\n    commands: [\"exit 4\"]\n",
    )
    .unwrap();
    let out = hoist(&[
        "run",
        "--docker",
        &docker,
        "--pipeline",
        failing.to_str().unwrap(),
        repo.work.to_str().unwrap(),
    ]);
    assert_eq!(out.code, Some(1));
    assert!(out.stdout.contains("command exited with 4"));
}

#[tokio::test]
async fn runs_logs_follow_manual_run_and_replay() {
    let dir = tempfile::tempdir().unwrap();
    let repo = GitRepo::new(dir.path());
    let yml = "app: web\nsteps:\n  - name: test\n    image: lab/busybox:1\n    commands: [\"echo one\", \"sleep 1\", \"echo two\"]\n";
    let commit = repo.commit("main", "follow me", &[(".hoist.yml", yml)]);
    let config = format!(
        "listen = \"127.0.0.1:0\"\ndata_dir = {:?}\n[builder]\ndocker = {:?}\n[runner]\npoll_interval = \"0s\"\n\
         [[repo]]\nname = \"acme/app\"\nurl = {:?}\nforge = \"github\"\nsecret = \"env:E2E_HOOK_SECRET\"\ntrusted = true\n{}",
        dir.path().join("data"),
        lab::builder_url(),
        repo.bare,
        token_toml()
    );
    let agent = Agent::launch(dir.path(), &config);

    // A manual run of the branch head (no commit given: hoist asks the remote).
    let r = api_post(
        &agent,
        "/repos/acme/app/runs",
        Some(json!({ "ref": "refs/heads/main" })),
    )
    .await;
    assert_eq!(r.status(), 202);
    let run = r.json::<Value>().await.unwrap()["run"].as_i64().unwrap();

    // `hoist logs --follow` prints the output live and exits 0 when the run succeeds.
    let out = hoist_client(&agent, &["logs", "--follow", &run.to_string()]);
    let text = &out.stdout;
    assert_eq!(out.code, Some(0), "{text}{}", out.stderr);
    assert!(text.contains("one") && text.contains("two"), "{text}");
    let detail = api(&agent, &format!("/runs/{run}")).await;
    assert_eq!(detail["commit"], commit.as_str());
    assert_eq!(detail["trigger"], "manual");

    // A delivery, then its replay: a second run of the same commit.
    let answer = push_github(&agent, "acme/app", "main", &commit, "follow me").await;
    let delivery = answer["delivery"].as_i64().unwrap();
    let replay: Value = api_post(&agent, &format!("/deliveries/{delivery}/replay"), None)
        .await
        .json()
        .await
        .unwrap();
    let replayed = replay["runs"][0].as_i64().unwrap();
    let what = format!("`hoist runs` to list replayed run {replayed} as a success");
    wait_until(&what, 60, || async {
        let out = hoist_client(&agent, &["runs"]);
        assert_eq!(out.code, Some(0));
        let line = out
            .stdout
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("{replayed} ")))
            .unwrap_or("");
        if line.contains("success") {
            Ok(())
        } else {
            Err(format!(
                "replayed run {replayed} did not succeed: {}",
                out.stdout
            ))
        }
    })
    .await;
    // Without a token, client commands say what to do.
    let out = hoist(&["runs", "--server", &agent.url]);
    assert_eq!(out.code, Some(2));
    assert!(out.stderr.contains("HOIST_TOKEN"));
}
