//! End-to-end deployments on the lab: three hosts (network namespaces with their own dockerd)
//! behind nginx, the real registry, the real build engine, the real binary.
//!
//! The demo app's pipeline publishes on ports the engines pick and names a balancer: each test
//! runs an nginx of its own that hoist keeps in step (`[balancer.e2e]`). One test keeps the
//! other way, fixed ports and the nginx drain hooks on the lab's nginx, since hooks stay the way
//! to drive other balancers. The tests share the app name `web` and the hosts' port 8080, so
//! they take turns (`HOSTS` lock).

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::lab::{self, HOSTS as HOST_NAMES, address, docker_lenient};
use common::nginx::Nginx;
use common::{
    Agent, GitRepo, api, api_post, hoist_client, push_github, run_log, token_toml, wait_for,
};
use serde_json::{Value, json};

static HOSTS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Remove every container hoist made on the lab hosts (leftovers of earlier runs or the demo).
fn clean_hosts() {
    for h in HOST_NAMES {
        let ids = docker_lenient(h, &["ps", "-aq", "--filter", "label=hoist.app=web"]);
        for id in ids.split_whitespace() {
            docker_lenient(h, &["rm", "-f", id]);
        }
    }
}

/// The pipeline: the demo app's (engine-picked ports, a balancer in front), with the test's own
/// balancer `e2e` and its own repository.
fn pipeline(extra_args: &str) -> String {
    demo_pipeline(extra_args).replace("        name: lab\n", "        name: e2e\n")
}

/// The demo app's pipeline as the teams hoist replaces drove other balancers: fixed ports, and
/// this checkout's nginx drain hooks (on the lab's nginx) instead of `balancer:`.
fn pipeline_with_hooks(extra_args: &str) -> String {
    let hooks = concat!(env!("CARGO_MANIFEST_DIR"), "/agent/hooks");
    let text = demo_pipeline(extra_args).replace("ports: [\"8080\"]", "ports: [\"8080:8080\"]");
    let balancer = text
        .find("      balancer:")
        .expect("the demo app's deploy step ends with `balancer:`");
    format!(
        "{}      hooks:\n        before_host: [\"{hooks}/nginx-drain\"]\n        after_host: [\"{hooks}/nginx-undrain\"]\n",
        &text[..balancer]
    )
}

/// examples/demo-app/.hoist.yml with the test's registry repository and build args.
fn demo_pipeline(extra_args: &str) -> String {
    std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/demo-app/.hoist.yml"
    ))
    .unwrap()
    .replace(
        &format!("{}/acme/web", lab::REGISTRY),
        &format!("{}/hoist-e2e/web", lab::REGISTRY),
    )
    .replace(
        "args: { VERSION: \"${commit_short}\" }",
        &format!("args: {{ VERSION: \"${{commit_short}}\"{extra_args} }}"),
    )
}

/// A repository holding the demo app.
fn app_repo(dir: &Path) -> GitRepo {
    let repo = GitRepo::new(dir);
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/demo-app");
    let out = Command::new("cp")
        .arg("-r")
        .arg(format!("{}/.", src.display()))
        .arg(&repo.work)
        .status()
        .unwrap();
    assert!(out.success());
    repo
}

/// The demo app's `container.secrets: [DATABASE_URL]`, from a file of the test's own.
fn database_url(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("database-url");
    if !path.exists() {
        std::fs::write(&path, "postgres://e2e:e2e-database-pw@db/web").unwrap();
    }
    path
}

/// Where `page` of host `h`'s container `web` answers: the host port its engine published
/// 8080 on (picked by the engine, or fixed), read with the docker CLI.
fn host_url(h: &str, page: &str) -> String {
    let published = docker_lenient(h, &["port", "web", "8080/tcp"]);
    let port = published
        .lines()
        .find_map(|l| l.strip_prefix("0.0.0.0:"))
        .unwrap_or_else(|| panic!("{h}: web publishes no 8080: {published:?}"));
    format!("http://{}:{port}/{page}", address(h))
}

/// The agent, with the test's nginx as `[balancer.e2e]`.
fn agent(dir: &Path, repo: &GitRepo, nginx: &Nginx) -> Agent {
    let mut config = format!(
        "listen = \"127.0.0.1:0\"\ndata_dir = {:?}\n[builder]\ndocker = {:?}\n[runner]\npoll_interval = \"0s\"\n\
         [[repo]]\nname = \"acme/web\"\nurl = {:?}\nforge = \"github\"\nsecret = \"env:E2E_HOOK_SECRET\"\nhosts = {HOST_NAMES:?}\nsecrets = [\"DATABASE_URL\"]\ntrusted = true\n\
         [secrets]\nDATABASE_URL = \"file:{}\"\n\
         [[registry]]\nhost = {:?}\ninsecure = true\n{}",
        dir.join("data"),
        lab::builder_url(),
        repo.bare,
        database_url(dir).display(),
        lab::REGISTRY,
        token_toml()
    );
    for h in HOST_NAMES {
        config.push_str(&format!(
            "[host.{h}]\ndocker = {:?}\naddress = {:?}\n",
            lab::socket(h),
            address(h)
        ));
    }
    config.push_str(&nginx.toml("e2e", None));
    Agent::launch(dir, &config)
}

/// Clean hosts, the demo app in a new repository (with `pipeline`), its nginx, an agent, and
/// its release 1 rolled out.
async fn first_release(dir: &Path, pipeline: fn(&str) -> String) -> (Agent, GitRepo, Value, Nginx) {
    clean_hosts();
    let repo = app_repo(dir);
    std::fs::write(repo.work.join(".hoist.yml"), pipeline("")).unwrap();
    let c1 = repo.commit("main", "v1", &[]);
    let nginx = Nginx::start(dir, "web");
    let agent = agent(dir, &repo, &nginx);
    let run = run_end(&agent, push(&agent, &c1).await).await;
    assert_eq!(run["status"], "success", "{run:#}");
    // The demo app's DATABASE_URL came from [secrets]: each host serves its hash, and the
    // peer list of the step's hosts.
    let want = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(
        std::fs::read(database_url(dir)).unwrap(),
    ));
    let peers = HOST_NAMES.map(address).join(",");
    for h in HOST_NAMES {
        let url = |page: &str| host_url(h, page);
        let db = reqwest::get(url("db")).await.unwrap().text().await.unwrap();
        assert_eq!(db.trim(), want, "{h}");
        let seen = reqwest::get(url("peers"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert_eq!(seen.trim(), peers, "{h}");
    }
    let rel1 = api(&agent, "/apps/web/releases").await[0].clone();
    (agent, repo, rel1, nginx)
}

async fn push(agent: &Agent, commit: &str) -> i64 {
    push_github(agent, "acme/web", "main", commit, "deploy").await["runs"][0]
        .as_i64()
        .unwrap()
}

async fn run_end(agent: &Agent, run: i64) -> Value {
    wait_for(agent, &format!("/runs/{run}"), "finished", 180, |r| {
        !["queued", "running"].contains(&r["status"].as_str().unwrap_or(""))
    })
    .await
}

/// The latest deployment of the app.
async fn last_deployment(agent: &Agent) -> Value {
    let list = api(agent, "/apps/web/deployments").await;
    let id = list[0]["id"].as_i64().expect("a deployment");
    api(agent, &format!("/deployments/{id}")).await
}

/// The repo digests (JSON) of the image host `h`'s container `web` runs, read with the docker
/// CLI, independently of hoist.
fn web_image_digests(h: &str) -> String {
    let image = docker_lenient(h, &["inspect", "web", "--format", "{{.Image}}"]);
    docker_lenient(
        h,
        &[
            "image",
            "inspect",
            &image,
            "--format",
            "{{json .RepoDigests}}",
        ],
    )
}

/// Read back, with the docker CLI (independently of hoist), what each host runs as `web`:
/// the repo digest of the running container's image, and its node page.
fn host_digests(release_digest: &str) -> Vec<(String, bool, String)> {
    HOST_NAMES
        .iter()
        .map(|h| {
            let running =
                docker_lenient(h, &["inspect", "web", "--format", "{{.State.Running}}"]) == "true";
            let digests = web_image_digests(h);
            (
                h.to_string(),
                running && digests.contains(release_digest),
                digests,
            )
        })
        .collect()
}

fn assert_hosts_on(release: &Value) {
    let digest = release["manifest_digest"].as_str().unwrap();
    for (h, ok, seen) in host_digests(digest) {
        assert!(ok, "{h} does not run {digest}: {seen}");
    }
}

/// Load through nginx (`url`) until stopped (bounded: at most 90 s and 200 000 requests).
///
/// It behaves like a browser: a new connection per request, and a GET whose connection was
/// closed before any response arrived is sent once more (HTTP lets a client retry an
/// idempotent request then). That happens when a drain hook reloads nginx: a reload closes
/// connections its old workers accepted but had not read yet. Those retries are counted and
/// reported; a failed request is one nginx answered with an error, or one that failed again.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    retried: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<Vec<String>>,
}

impl Load {
    fn start(url: &str) -> Load {
        let url = format!("{url}/version");
        let (stop, ok, failed, retried) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicU64::new(0)),
        );
        let (s, o, f, r) = (stop.clone(), ok.clone(), failed.clone(), retried.clone());
        let task = tokio::spawn(async move {
            let client = reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .pool_max_idle_per_host(0)
                .build()
                .unwrap();
            let started = Instant::now();
            let mut errors = Vec::new();
            let mut n = 0u64;
            while !s.load(Ordering::Relaxed)
                && started.elapsed() < Duration::from_secs(90)
                && n < 200_000
            {
                n += 1;
                let mut answer = client.get(&url).send().await;
                if answer
                    .as_ref()
                    .is_err_and(|e| e.is_request() || e.is_connect())
                {
                    r.fetch_add(1, Ordering::Relaxed);
                    answer = client.get(&url).send().await;
                }
                match answer {
                    Ok(resp) if resp.status().is_success() => {
                        o.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(resp) => {
                        f.fetch_add(1, Ordering::Relaxed);
                        errors.push(format!("HTTP {}", resp.status()));
                    }
                    Err(e) => {
                        f.fetch_add(1, Ordering::Relaxed);
                        errors.push(e.to_string());
                    }
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            errors
        });
        Load {
            stop,
            ok,
            failed,
            retried,
            task,
        }
    }

    /// (answered 2xx, failed, retried once after a closed connection, the failures' errors)
    async fn finish(self) -> (u64, u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let errors = self.task.await.unwrap();
        let retried = self.retried.load(Ordering::Relaxed);
        println!(
            "load through nginx: {} ok, {} failed, {retried} retried after nginx closed an unread connection",
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed)
        );
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
            errors,
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_deploy_auto_rollback_manual_rollback_and_the_lock() {
    let _turn = HOSTS.lock().await;
    clean_hosts();
    let dir = tempfile::tempdir().unwrap();
    let repo = app_repo(dir.path());
    std::fs::write(repo.work.join(".hoist.yml"), pipeline("")).unwrap();
    let c1 = repo.commit("main", "v1", &[]);
    let nginx = Nginx::start(dir.path(), "web");
    let agent = agent(dir.path(), &repo, &nginx);

    // A good rollout: test → build → push → verify → three hosts, verified.
    let r1 = push(&agent, &c1).await;
    let run = run_end(&agent, r1).await;
    assert_eq!(
        run["status"],
        "success",
        "{run:#}\n{}",
        run_log(&agent, r1).await
    );
    let releases = api(&agent, "/apps/web/releases").await;
    let rel1 = releases[0].clone();
    assert_eq!(rel1["number"], 1);
    assert_eq!(rel1["commit"], c1.as_str());
    // skopeo, a second opinion on the registry's digest.
    let skopeo = Command::new("skopeo")
        .args([
            "inspect",
            "--tls-verify=false",
            &format!(
                "docker://{}:{}",
                rel1["repository"].as_str().unwrap(),
                &c1[..7]
            ),
        ])
        .output()
        .unwrap();
    let skopeo: Value = serde_json::from_slice(&skopeo.stdout).unwrap();
    assert_eq!(skopeo["Digest"], rel1["manifest_digest"]);
    assert_hosts_on(&rel1);
    // Distinct per-host values.
    for h in HOST_NAMES {
        let node = reqwest::get(host_url(h, "node"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert_eq!(node.trim(), h);
    }
    let d = last_deployment(&agent).await;
    assert_eq!(d["status"], "succeeded");
    assert!(
        d["hosts"]
            .as_array()
            .unwrap()
            .iter()
            .all(|h| h["read_back"] == rel1["manifest_digest"]),
        "{d:#}"
    );

    // Release 2 rolls out under load through nginx: no failed request.
    let load = Load::start(&nginx.url());
    let c2 = repo.commit(
        "main",
        "v2",
        &[("www/index.html", "<h1>hoist demo app v2</h1>")],
    );
    let r2 = push(&agent, &c2).await;
    let run = run_end(&agent, r2).await;
    assert_eq!(
        run["status"],
        "success",
        "{run:#}\n{}",
        run_log(&agent, r2).await
    );
    let (ok, failed, errors) = load.finish().await;
    assert!(ok > 50, "too little load went through: {ok}");
    assert_eq!(failed, 0, "failed requests during the rollout: {errors:?}");
    let rel2 = api(&agent, "/apps/web/releases").await[0].clone();
    assert_eq!(rel2["number"], 2);
    assert_hosts_on(&rel2);

    // Release 3 fails its health check on h2: h1 and h2 go back to release 2, verified; h3 is
    // never touched. Under load, still no failed request.
    let load = Load::start(&nginx.url());
    std::fs::write(repo.work.join(".hoist.yml"), pipeline(", BROKEN_ON: h2")).unwrap();
    let c3 = repo.commit("main", "v3 broken on h2", &[]);
    let r3 = push(&agent, &c3).await;
    let run = run_end(&agent, r3).await;
    let (ok, failed, errors) = load.finish().await;
    assert_eq!(run["status"], "failed");
    assert!(
        run["reason"].as_str().unwrap().contains("rolled back"),
        "{run:#}"
    );
    let d = last_deployment(&agent).await;
    assert_eq!(d["status"], "rolled_back", "{d:#}");
    assert_eq!(d["failing_host"], "h2");
    assert!(d["reason"].as_str().unwrap().contains("unhealthy"), "{d:#}");
    let states: Vec<(String, String)> = d["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            (
                h["host"].as_str().unwrap().to_string(),
                h["state"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        states,
        [
            ("h1".into(), "reverted".into()),
            ("h2".into(), "reverted".into()),
            ("h3".into(), "pulled".into())
        ]
    );
    assert_hosts_on(&rel2);
    assert!(ok > 50, "too little load went through: {ok}");
    assert_eq!(
        failed, 0,
        "failed requests during the automatic rollback: {errors:?}"
    );

    // Manual rollback from the CLI: back to release 1 (the last good one before 2), its settings.
    let out = hoist_client(&agent, &["rollback", "web"]);
    let text = &out.stdout;
    assert_eq!(out.code, Some(0), "{text}{}", out.stderr);
    assert!(text.contains("to release 1: succeeded"), "{text}");
    assert_hosts_on(&rel1);
    let hosts = api(&agent, "/apps/web/hosts").await;
    for h in hosts.as_array().unwrap() {
        assert_eq!(h["release"], 1);
        assert_eq!(h["digest_read_back"], rel1["manifest_digest"]);
        assert_eq!(h["health"], "healthy");
    }

    // The lock: while a deployment holds the app, a second one is refused, naming it.
    let first: Value = api_post(&agent, "/apps/web/rollback", Some(json!({ "to": 2 })))
        .await
        .json()
        .await
        .unwrap();
    let id = first["deployment"].as_i64().expect("a deployment id");
    let second = api_post(&agent, "/apps/web/rollback", Some(json!({ "to": 1 }))).await;
    assert_eq!(second.status(), 409);
    assert!(
        second
            .text()
            .await
            .unwrap()
            .contains(&format!("deployment {id}"))
    );
    wait_for(
        &agent,
        &format!("/deployments/{id}"),
        "succeeded",
        60,
        |d| d["status"] == "succeeded",
    )
    .await;
    assert_hosts_on(&rel2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_that_exits_at_once_is_rolled_back_fast() {
    let _turn = HOSTS.lock().await;
    let dir = tempfile::tempdir().unwrap();
    // With fixed ports and the drain hooks (on the lab's nginx), as before the balancer.
    let (agent, repo, rel1, _nginx) = first_release(dir.path(), pipeline_with_hooks).await;

    // The process does not stay in the foreground: the container exits at once.
    let dockerfile = std::fs::read_to_string(repo.work.join("Dockerfile"))
        .unwrap()
        .replace("CMD [\"/start.sh\"]", "CMD [\"true\"]");
    let c2 = repo.commit("main", "v2 exits", &[("Dockerfile", &dockerfile)]);
    let t = Instant::now();
    let run = run_end(&agent, push(&agent, &c2).await).await;
    assert_eq!(run["status"], "failed");
    let d = last_deployment(&agent).await;
    assert_eq!(d["status"], "rolled_back");
    assert_eq!(d["failing_host"], "h1");
    assert!(d["reason"].as_str().unwrap().contains("exited"), "{d:#}");
    assert!(
        t.elapsed() < Duration::from_secs(60),
        "took {:?}; the deadline is 15 s per host",
        t.elapsed()
    );
    assert_hosts_on(&rel1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_lost_mid_rollout_and_an_agent_killed_mid_rollout() {
    let _turn = HOSTS.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let (mut agent, repo, rel1, nginx) = first_release(dir.path(), pipeline).await;

    // h3's dockerd dies while h1 is being switched: h3 fails, h1 and h2 go back to release 1.
    let c2 = repo.commit("main", "v2", &[("www/index.html", "hoist demo app v2")]);
    let run = push(&agent, &c2).await;
    wait_for(
        &agent,
        "/apps/web/deployments",
        "a second deployment",
        120,
        |l| l.as_array().is_some_and(|a| a.len() >= 2),
    )
    .await;
    let pid = std::fs::read_to_string(lab::pidfile("h3")).unwrap();
    let killed = Command::new("kill")
        .args(["-9", pid.trim()])
        .status()
        .unwrap();
    assert!(killed.success());
    let result = run_end(&agent, run).await;
    assert!(
        lab::up().success(),
        "scripts/lab up could not bring h3 back"
    );
    assert_eq!(result["status"], "failed");
    let d = last_deployment(&agent).await;
    assert_eq!(d["failing_host"], "h3", "{d:#}");
    assert_eq!(d["status"], "rolled_back", "{d:#}");
    for h in &HOST_NAMES[..2] {
        let digests = web_image_digests(h);
        assert!(
            digests.contains(rel1["manifest_digest"].as_str().unwrap()),
            "{h}: {digests}"
        );
    }
    // Bring h3 back on release 1 for what follows (its dockerd restart stopped its containers).
    clean_hosts();
    let out = hoist_client(&agent, &["rollback", "web", "--to", "1"]);
    assert_eq!(out.code, Some(0), "{}", out.stdout);
    assert_hosts_on(&rel1);

    // kill -9 of the agent mid-rollout: on restart the journal is resolved and every host
    // converges on one verified release, with no orphaned container.
    let c3 = repo.commit("main", "v3", &[("www/index.html", "hoist demo app v3")]);
    let run = push(&agent, &c3).await;
    wait_for(
        &agent,
        "/apps/web/deployments",
        "a new deployment",
        120,
        |l| {
            l.as_array()
                .is_some_and(|a| a.first().is_some_and(|d| d["status"] == "running"))
        },
    )
    .await;
    let d = last_deployment(&agent).await;
    wait_for(
        &agent,
        &format!("/deployments/{}", d["id"]),
        "switching a host",
        60,
        |d| {
            d["hosts"]
                .as_array()
                .unwrap()
                .iter()
                .any(|h| h["state"] == "started" || h["state"] == "healthy")
        },
    )
    .await;
    agent.kill9();
    let agent = self::agent(dir.path(), &repo, &nginx);
    let d = wait_for(
        &agent,
        &format!("/deployments/{}", d["id"]),
        "resolved",
        120,
        |d| d["status"] != "running",
    )
    .await;
    assert_eq!(d["status"], "rolled_back", "{d:#}");
    assert_eq!(
        api(&agent, &format!("/runs/{run}")).await["status"],
        "interrupted"
    );
    assert_hosts_on(&rel1);
    for h in HOST_NAMES {
        let names = docker_lenient(
            h,
            &[
                "ps",
                "-a",
                "--filter",
                "label=hoist.app=web",
                "--format",
                "{{.Names}}",
            ],
        );
        for n in names.lines() {
            assert!(
                n == "web" || n.starts_with("web-r"),
                "{h}: unexpected container {n}"
            );
        }
        assert!(
            !names.lines().any(|n| n == "web-r3"),
            "{h}: release 3 left behind: {names}"
        );
    }
    clean_hosts();
}
