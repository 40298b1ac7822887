//! Security items 4, 8, 9 and 10 of issue 13, through the real binary, the lab's build engine,
//! registry and host h1: a step printing forever is cut at `max_log_size` and the agent's
//! memory stays bounded; an older push never deploys over a newer one; a token in a
//! repository URL shows nowhere; every secret a run may use is masked in every log, and a
//! secret too short to mask is refused at start.
//!
//! Names (repositories `acme/seca-*`, app and container `secaapp`, ports from `free_port`)
//! are this file's own, so that other files' tests can run beside these.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::lab::{self, Clean};
use common::{
    Agent, GitRepo, SECRET, TOKEN, api, api_request, push_github, release, run_log, step,
    token_toml,
};
use reqwest::Method;
use serde_json::Value;

/// An agent with one repository `repo` at `url`, the lab's builder, registry and hosts, and
/// `runner` / `secrets` lines of its own.
fn agent_for(dir: &Path, repo: &str, url: &str, runner: &str, repo_extra: &str) -> String {
    format!(
        "listen = \"127.0.0.1:0\"\ndata_dir = {:?}\n[builder]\ndocker = {:?}\n\
         [runner]\npoll_interval = \"0s\"\n{runner}\n\
         [[repo]]\nname = {repo:?}\nurl = {url:?}\nforge = \"github\"\nsecret = \"env:E2E_HOOK_SECRET\"\nhosts = [\"h1\"]\n{repo_extra}\n\
         [[registry]]\nhost = {:?}\ninsecure = true\n{}{}",
        dir.join("data"),
        lab::builder_url(),
        lab::REGISTRY,
        token_toml(),
        lab::hosts_toml()
    )
}

/// Wait (at most `secs`) until run `id` has ended; the run.
async fn ended(agent: &Agent, id: i64, secs: u64) -> Value {
    common::wait_for(agent, &format!("/runs/{id}"), "ended", secs, |r| {
        ["success", "failed", "cancelled", "timed_out", "skipped"]
            .contains(&r["status"].as_str().unwrap_or(""))
    })
    .await
}

fn run_id(answer: &Value) -> i64 {
    answer["runs"][0]
        .as_i64()
        .unwrap_or_else(|| panic!("the push queued no run: {answer:#}"))
}

/// The agent's peak resident memory so far, in KiB (`VmHWM` of /proc/PID/status).
fn peak_rss_kib(agent: &Agent) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", agent.child.id())).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmHWM in {status}"))
}

/// A run's log chunks as the API pages them: `?after=` each page's last `seq`, `limit` each.
async fn all_chunks(agent: &Agent, run: i64, limit: u32) -> Vec<Value> {
    let mut all: Vec<Value> = Vec::new();
    for _ in 0..10_000 {
        let after = all.last().map_or(0, |c| c["seq"].as_i64().unwrap());
        let page = api(
            agent,
            &format!("/runs/{run}/logs?after={after}&limit={limit}"),
        )
        .await;
        let page = page.as_array().unwrap().clone();
        assert!(
            page.len() <= limit as usize,
            "a page holds at most limit chunks"
        );
        if page.is_empty() {
            return all;
        }
        all.extend(page);
    }
    panic!("the log of run {run} did not end within 10 000 pages");
}

/// Item 4: `yes` (60 MB of output) in a step, with `max_log_size = "64KiB"`: the step's stored
/// log stops at the cap with a marker line, the step and the run go on and succeed, the
/// agent's peak memory stays far below the output's size, and the log pages by `?after=`, as
/// JSON and as SSE.
#[tokio::test(flavor = "multi_thread")]
async fn a_step_printing_forever_is_cut_at_max_log_size() {
    let tmp = tempfile::tempdir().unwrap();
    let git = GitRepo::new(tmp.path());
    let pipeline = "app: secalog\nsteps:\n\
        \x20 - name: flood\n    image: lab/busybox:1\n    commands: [\"yes seca-flood-line | head -c 60000000\"]\n\
        \x20 - name: after\n    image: lab/busybox:1\n    commands: [\"echo after-the-flood\"]\n";
    let commit = git.commit("main", "flood", &[(".hoist.yml", pipeline)]);
    let config = agent_for(
        tmp.path(),
        "acme/seca-log",
        git.bare.to_str().unwrap(),
        "max_log_size = \"64KiB\"",
        "",
    );
    let agent = Agent::launch(tmp.path(), &config);
    let idle = peak_rss_kib(&agent);
    let started = Instant::now();
    let id = run_id(&push_github(&agent, "acme/seca-log", "main", &commit, "flood").await);
    let run = ended(&agent, id, 300).await;
    let took = started.elapsed();
    assert_eq!(run["status"], "success", "{run:#}");
    assert_eq!(step(&run, "flood")["status"], "success", "{run:#}");
    assert_eq!(step(&run, "after")["status"], "success", "{run:#}");

    let chunks = all_chunks(&agent, id, 3).await;
    let flood: Vec<&Value> = chunks.iter().filter(|c| c["step"] == 0).collect();
    let stored: usize = flood
        .iter()
        .map(|c| c["data"].as_str().unwrap().len())
        .sum();
    let text: String = flood.iter().map(|c| c["data"].as_str().unwrap()).collect();
    assert!(
        stored <= 64 * 1024 + 1024,
        "step flood stored {stored} bytes with max_log_size 64KiB"
    );
    assert!(
        text.contains("seca-flood-line\n") && text.contains("max_log_size"),
        "the stored log starts with the output and ends with the marker: {}",
        &text[text.len().saturating_sub(400)..]
    );
    let whole = run_log(&agent, id).await;
    assert!(
        whole.contains("after-the-flood"),
        "the next step ran and logged"
    );
    let peak = peak_rss_kib(&agent);
    println!(
        "60 MB of output: run took {took:?}, stored {stored} bytes, agent peak RSS {idle} KiB idle -> {peak} KiB"
    );
    assert!(
        peak < idle + 60 * 1024,
        "the agent's peak RSS grew from {idle} KiB to {peak} KiB for 60 MB of output"
    );

    // SSE from an offset: the chunks after the third, then the end.
    let third = chunks[2]["seq"].as_i64().unwrap();
    let sse = api_request(
        &agent,
        Method::GET,
        &format!("/runs/{id}/logs?after={third}"),
    )
    .header("accept", "text/event-stream")
    .timeout(Duration::from_secs(30))
    .send()
    .await
    .unwrap()
    .text()
    .await
    .unwrap();
    let ids: Vec<i64> = sse
        .lines()
        .filter_map(|l| l.strip_prefix("id:"))
        .map(|v| v.trim().parse().unwrap())
        .collect();
    let want: Vec<i64> = chunks[3..]
        .iter()
        .map(|c| c["seq"].as_i64().unwrap())
        .collect();
    assert_eq!(
        ids, want,
        "SSE after {third} sends every later chunk once, in order"
    );
    assert!(sse.contains("event: end"), "{sse}");
    let bad = api_request(&agent, Method::GET, &format!("/runs/{id}/logs?after=x"))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
}

const DOCKERFILE: &str =
    "FROM lab/busybox:1\nCOPY www /www\nCOPY start.sh /start.sh\nCMD [\"sh\", \"/start.sh\"]\n";
const START: &str = "httpd -f -p 8080 -h /www &\npid=$!\n\
trap 'kill \"$pid\"; exit 0' TERM INT\nwait \"$pid\"\n";

/// Item 8: Y (child of X on main) is delivered and deployed first, then X's delivery comes (a
/// forge redelivery): X builds, but its deploy step is skipped as outdated and h1 stays on Y.
#[tokio::test(flavor = "multi_thread")]
async fn an_older_push_never_deploys_over_a_newer_one() {
    lab::check_host("h1");
    let _clean = Clean::new("secaapp");
    let tmp = tempfile::tempdir().unwrap();
    let git = GitRepo::new(tmp.path());
    let port = lab::free_port();
    let pipeline = format!(
        "app: secaapp\nsteps:\n\
         \x20 - name: build\n    build:\n      context: .\n      \
         repository: {registry}/hoist-e2e/secaapp\n      tags: [\"${{commit_short}}\"]\n\
         \x20 - name: ship\n    deploy:\n      image: build\n      hosts: [h1]\n      \
         container:\n        name: secaapp\n        ports: [\"{port}:8080\"]\n      \
         health:\n        http: {{ port: 8080, path: /healthz }}\n        interval: 200ms\n        \
         timeout: 1s\n        healthy_for: 400ms\n        deadline: 20s\n      \
         rollout:\n        bake: 0s\n        keep: 2\n",
        registry = lab::REGISTRY
    );
    let files = |version: &'static str| {
        vec![
            (".hoist.yml", pipeline.clone()),
            ("Dockerfile", DOCKERFILE.to_string()),
            ("start.sh", START.to_string()),
            ("www/healthz", "ok\n".to_string()),
            ("www/version", version.to_string()),
        ]
    };
    let commit = |message: &str, version: &'static str| {
        let f = files(version);
        let refs: Vec<(&str, &str)> = f.iter().map(|(p, c)| (*p, c.as_str())).collect();
        git.commit("main", message, &refs)
    };
    let x = commit("x", "x\n");
    let y = commit("y", "y\n");
    let config = agent_for(
        tmp.path(),
        "acme/seca-order",
        git.bare.to_str().unwrap(),
        "",
        "",
    );
    let agent = Agent::launch(tmp.path(), &config);

    let run_y = ended(
        &agent,
        run_id(&push_github(&agent, "acme/seca-order", "main", &y, "y").await),
        300,
    )
    .await;
    assert_eq!(run_y["status"], "success", "{run_y:#}");
    let on_y = lab::on_host("h1", "secaapp");
    assert!(
        on_y.running && on_y.release == "1",
        "h1 runs Y as release 1: {on_y:?}"
    );

    let run_x = ended(
        &agent,
        run_id(&push_github(&agent, "acme/seca-order", "main", &x, "x").await),
        300,
    )
    .await;
    let ship = step(&run_x, "ship");
    assert_eq!(
        ship["status"], "skipped",
        "X's deploy must not run: {run_x:#}"
    );
    let reason = ship["reason"].as_str().unwrap_or("");
    assert!(reason.starts_with("outdated"), "{reason}");
    assert!(
        reason.contains(&y[..12]),
        "the reason names the newer commit: {reason}"
    );
    assert_eq!(step(&run_x, "build")["status"], "success", "{run_x:#}");
    assert_eq!(
        run_x["status"], "success",
        "an outdated push is no failure: {run_x:#}"
    );
    let now = lab::on_host("h1", "secaapp");
    assert_eq!(now, on_y, "h1 still runs Y's container, untouched");
    let y_digest = release(&agent, "secaapp", 1).await["manifest_digest"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(now.digests.contains(&y_digest), "{now:?}");
    let hosts = api(&agent, "/apps/secaapp/hosts").await;
    assert_eq!(hosts[0]["release"], 1, "{hosts:#}");
}

/// Item 9: a token given as the URL's user name (`http://TOKEN@host/…`) shows in no run
/// reason, no run log and no line of the agent's own log when the fetch fails.
#[tokio::test(flavor = "multi_thread")]
async fn a_token_in_the_repository_url_shows_nowhere() {
    let tmp = tempfile::tempdir().unwrap();
    let port = lab::free_port();
    let token = "ghp_secaTOKEN0123456789";
    let url =
        format!("http://{token}@127.0.0.1:{port}/acme/seca-token.git?access_token=qs-seca-4242");
    let config = agent_for(tmp.path(), "acme/seca-token", &url, "", "");
    let log = tmp.path().join("agent.log");
    let agent = Agent::launch_logged(
        tmp.path(),
        &config,
        &[("RUST_LOG", "debug".to_string())],
        &log,
    );
    let id = run_id(&push_github(&agent, "acme/seca-token", "main", &common::sha(7), "t").await);
    let run = ended(&agent, id, 60).await;
    let shown = format!("{run}\n{}", run_log(&agent, id).await);
    assert_eq!(run["status"], "failed", "{run:#}");
    assert!(
        run["reason"]
            .as_str()
            .unwrap_or("")
            .contains("***@127.0.0.1"),
        "the reason names the URL, redacted: {run:#}"
    );
    let agent_log = std::fs::read_to_string(&log).unwrap();
    for secret in [token, "qs-seca-4242"] {
        assert!(!shown.contains(secret), "the API shows {secret}: {shown}");
        assert!(
            !agent_log.contains(secret),
            "the agent's log shows {secret}"
        );
    }
}

/// Item 10: a secret the repository allows is masked in every log of its runs: in the step
/// that asked for it, in a later step that only reads a file the first one wrote, and in the
/// image build's output.
#[tokio::test(flavor = "multi_thread")]
async fn every_secret_the_run_may_use_is_masked_in_every_log() {
    let tmp = tempfile::tempdir().unwrap();
    let git = GitRepo::new(tmp.path());
    let value = "seca-s3cret-v4lue";
    let pipeline = format!(
        "app: secamask\nsteps:\n\
         \x20 - name: write\n    image: lab/busybox:1\n    secrets: [SECA_SECRET]\n    \
         commands: [\"echo \\\"$SECA_SECRET\\\" > leak.txt\", \"echo \\\"asked: $SECA_SECRET\\\"\"]\n\
         \x20 - name: read\n    image: lab/busybox:1\n    commands: [\"cat leak.txt\"]\n\
         \x20 - name: build\n    build:\n      context: .\n      \
         repository: {registry}/hoist-e2e/secamask\n      tags: [\"${{commit_short}}\"]\n",
        registry = lab::REGISTRY
    );
    // A nonce in the RUN line: the engine's build cache would otherwise skip the step (and
    // its output) on a second run of this test.
    let nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let dockerfile =
        format!("FROM lab/busybox:1\nCOPY leak.txt /leak.txt\nRUN echo {nonce} && cat /leak.txt\n");
    let commit = git.commit(
        "main",
        "mask",
        &[(".hoist.yml", &pipeline), ("Dockerfile", &dockerfile)],
    );
    let config = agent_for(
        tmp.path(),
        "acme/seca-mask",
        git.bare.to_str().unwrap(),
        "",
        "secrets = [\"SECA_SECRET\"]\n[secrets]\nSECA_SECRET = \"env:SECA_SECRET\"\n",
    );
    let agent = Agent::launch_with_env(tmp.path(), &config, &[("SECA_SECRET", value.to_string())]);
    let id = run_id(&push_github(&agent, "acme/seca-mask", "main", &commit, "mask").await);
    let run = ended(&agent, id, 300).await;
    assert_eq!(run["status"], "success", "{run:#}");
    let chunks = api(&agent, &format!("/runs/{id}/logs")).await;
    let of = |index: i64| -> String {
        chunks
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["step"] == index)
            .map(|c| c["data"].as_str().unwrap())
            .collect()
    };
    let (write, read, build) = (of(0), of(1), of(2));
    assert!(write.contains("asked: ***"), "{write}");
    assert!(
        read.contains("***"),
        "the read step prints the file, masked: {read}"
    );
    assert!(
        build.contains("***"),
        "the build prints the file, masked: {build}"
    );
    for (name, text) in [("write", &write), ("read", &read), ("build", &build)] {
        assert!(
            !text.contains(value),
            "step {name} shows the secret: {text}"
        );
    }
}

/// Item 10: a `[secrets]` value shorter than 4 characters stops `hoist serve` at start, with
/// exit status 2 and a message naming the secret and the fix.
#[test]
fn a_secret_too_short_to_mask_is_refused_at_start() {
    let tmp = tempfile::tempdir().unwrap();
    let config = format!(
        "listen = \"127.0.0.1:0\"\ndata_dir = {:?}\n[secrets]\nSECA_SHORT = \"env:SECA_SHORT\"\n{}",
        tmp.path().join("data"),
        token_toml()
    );
    let path = tmp.path().join("hoist.toml");
    std::fs::write(&path, config).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_hoist"))
        .args(["serve", "--config"])
        .arg(&path)
        .env("SECA_SHORT", "abc")
        .env("E2E_HOOK_SECRET", SECRET)
        .env("HOIST_TOKEN", TOKEN)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("hoist serve started with a 3-character secret");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("secret SECA_SHORT") && stderr.contains("longer value"),
        "{stderr}"
    );
    assert!(!stderr.contains("abc\""), "{stderr}");
}
