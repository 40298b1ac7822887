//! The command line as a person uses it: `hoist validate`, `hoist run`, `hoist runs`,
//! `hoist logs --follow`, and the API's manual run and replay.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{Agent, GitRepo, TOKEN, api, builder, push_github};
use serde_json::{Value, json};

fn hoist(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_hoist"))
        .args(args)
        .output()
        .unwrap()
}

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
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    let bad = dir.path().join("bad.yml");
    std::fs::write(
        &bad,
        "app: web\nsteps:\n  - name: test\n    image: lab/busybox:1\n    comands: [\"true\"]\n",
    )
    .unwrap();
    let out = hoist(&["validate", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
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
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stdout)
        );
    }
    let out = hoist(&["validate", dir.path().join("missing.yml").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn run_executes_a_local_checkout_without_a_server() {
    let docker = builder();
    let dir = tempfile::tempdir().unwrap();
    let repo = GitRepo::new(dir.path());
    let yml = "app: web\nsteps:\n  - name: test\n    image: lab/busybox:1\n    commands: [\"cat hello.txt\", \"echo on $HOIST_BRANCH\"]\n  - name: local\n    shell: [\"echo local step in $(basename $PWD)\"]\n";
    repo.commit(
        "main",
        "local",
        &[(".hoist.yml", yml), ("hello.txt", "hello locally\n")],
    );
    let out = hoist(&["run", "--docker", &docker, repo.work.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
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
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("command exited with 4"));
}

#[tokio::test]
async fn runs_logs_follow_manual_run_and_replay() {
    let dir = tempfile::tempdir().unwrap();
    let repo = GitRepo::new(dir.path());
    let yml = "app: web\nsteps:\n  - name: test\n    image: lab/busybox:1\n    commands: [\"echo one\", \"sleep 1\", \"echo two\"]\n";
    let commit = repo.commit("main", "follow me", &[(".hoist.yml", yml)]);
    let token_hash = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(TOKEN.as_bytes()));
    let config = format!(
        "listen = \"127.0.0.1:0\"\ndata_dir = {:?}\n[builder]\ndocker = {:?}\n[runner]\npoll_interval = \"0s\"\n\
         [[repo]]\nname = \"acme/app\"\nurl = {:?}\nforge = \"github\"\nsecret = \"env:E2E_HOOK_SECRET\"\n\
         [[token]]\nname = \"e2e\"\nsha256 = \"{token_hash}\"\n",
        dir.path().join("data"),
        builder(),
        repo.bare
    );
    let agent = Agent::launch(dir.path(), &config);
    let client = reqwest::Client::new();

    // A manual run of the branch head (no commit given: hoist asks the remote).
    let r = client
        .post(format!("{}/api/v1/repos/acme/app/runs", agent.url))
        .bearer_auth(TOKEN)
        .json(&json!({ "ref": "refs/heads/main" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let run = r.json::<Value>().await.unwrap()["run"].as_i64().unwrap();

    // `hoist logs --follow` prints the output live and exits 0 when the run succeeds.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_hoist"))
        .args([
            "logs",
            "--follow",
            &run.to_string(),
            "--server",
            &agent.url,
            "--token",
            TOKEN,
        ])
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("one") && text.contains("two"), "{text}");
    let detail = api(&agent, &format!("/runs/{run}")).await;
    assert_eq!(detail["commit"], commit.as_str());
    assert_eq!(detail["trigger"], "manual");

    // A delivery, then its replay: a second run of the same commit.
    let answer = push_github(&agent, "acme/app", "main", &commit, "follow me").await;
    let delivery = answer["delivery"].as_i64().unwrap();
    let replay: Value = client
        .post(format!("{}/api/v1/deliveries/{delivery}/replay", agent.url))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let replayed = replay["runs"][0].as_i64().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = hoist(&["runs", "--server", &agent.url, "--token", TOKEN]);
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        assert_eq!(out.status.code(), Some(0));
        let line = text
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("{replayed} ")))
            .unwrap_or("")
            .to_string();
        if line.contains("success") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "replayed run {replayed} did not succeed: {text}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Without a token, client commands say what to do.
    let out = hoist(&["runs", "--server", &agent.url]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("HOIST_TOKEN"));
}
