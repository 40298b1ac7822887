//! Fleets on the lab (issue 9): secrets in containers, per-host values, ownership of container
//! names, and health that fails fast. Real binary, real build engine, registry and hosts.
//!
//! Every test uses apps, container names, registry repositories and host ports of its own, so
//! that they run beside each other and beside the other test binaries.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::lab::{self, HOSTS, address, docker_lenient, free_port};
use common::{Agent, GitRepo, api, api_post, push_github, run_log, token_toml, wait_for};
use serde_json::{Value, json};

/// A fresh name for this test: `PREFIX-<8 hex>`, usable as app, container and repository name.
fn unique(prefix: &str) -> String {
    format!("{prefix}-{:08x}", rand::random::<u32>())
}

/// The test app: busybox httpd serving the hash of `$DB_PASSWORD` (`/secret`), the raw value
/// (`/raw`, so that a hook can print it and be masked), `$NODE_ID` (`/id`), `$PEERS` (`/peers`)
/// and `/health`, unless `$BROKEN` is set, when `/health` answers 404.
const START_SH: &str = r#"#!/bin/sh
mkdir -p /www
printf '%s' "$DB_PASSWORD" | sha256sum | cut -d' ' -f1 > /www/secret
printf '%s' "$DB_PASSWORD" > /www/raw
echo "$NODE_ID" > /www/id
echo "$PEERS" > /www/peers
echo "$ADDRS" > /www/addrs
[ -n "$BROKEN" ] || echo ok > /www/health
httpd -f -p 8080 -h /www &
pid=$!
trap 'kill "$pid"; exit 0' TERM INT
wait "$pid"
"#;

const DOCKERFILE: &str =
    "FROM lab/busybox:1\nARG V=1\nENV V=$V\nCOPY start.sh /start.sh\nCMD [\"/start.sh\"]\n";

/// One repository of the agent's config.
struct RepoConf<'a> {
    name: &'a str,
    repo: &'a GitRepo,
    secrets: &'a [&'a str],
}

/// The agent's config: the lab's builder, registry and three hosts (with `vars`), the
/// repositories, and `[secrets] DB_PASSWORD` from the environment.
fn config(dir: &Path, repos: &[RepoConf], vars: &dyn Fn(&str) -> String) -> String {
    let mut c = format!(
        "listen = \"127.0.0.1:0\"\ndata_dir = {:?}\n[builder]\ndocker = {:?}\n[runner]\npoll_interval = \"0s\"\n\
         [[registry]]\nhost = {:?}\ninsecure = true\n{}",
        dir.join("data"),
        lab::builder_url(),
        lab::REGISTRY,
        token_toml()
    );
    for r in repos {
        c.push_str(&format!(
            "[[repo]]\nname = {:?}\nurl = {:?}\nforge = \"github\"\nsecret = \"env:E2E_HOOK_SECRET\"\nhosts = {HOSTS:?}\nsecrets = {:?}\ntrusted = true\n",
            r.name, r.repo.bare, r.secrets
        ));
    }
    for h in HOSTS {
        c.push_str(&format!(
            "[host.{h}]\ndocker = {:?}\naddress = {:?}\nvars = {{ {} }}\n",
            lab::socket(h),
            address(h),
            vars(h)
        ));
    }
    c.push_str("[secrets]\nDB_PASSWORD = \"env:FLEET_DB_PASSWORD\"\n");
    c
}

/// A repository holding the test app and `pipeline` as its `.hoist.yml`.
fn app_repo(dir: &Path, pipeline: &str) -> GitRepo {
    std::fs::create_dir_all(dir).unwrap();
    let repo = GitRepo::new(dir);
    std::fs::write(repo.work.join(".hoist.yml"), pipeline).unwrap();
    std::fs::write(repo.work.join("Dockerfile"), DOCKERFILE).unwrap();
    let start = repo.work.join("start.sh");
    std::fs::write(&start, START_SH).unwrap();
    std::process::Command::new("chmod")
        .arg("+x")
        .arg(&start)
        .status()
        .unwrap();
    repo
}

/// The pipeline of app `app`: build into its own repository, deploy `container` (YAML
/// mapping body, indented 8) with `health` to `hosts`; `extra_steps` before the build.
fn pipeline(app: &str, hosts: &[&str], container: &str, health: &str, extra: &str) -> String {
    format!(
        "app: {app}\nsteps:\n{extra}  - name: image\n    build:\n      repository: {}/hoist-fleet/{app}\n      args: {{ V: \"${{commit_short}}\" }}\n\
         \x20 - name: deploy\n    deploy:\n      image: image\n      hosts: {hosts:?}\n      container:\n{container}      health:\n{health}\
         \x20     rollout: {{ max_parallel: 3, bake: 0s, keep: 2 }}\n",
        lab::REGISTRY
    )
}

/// Remove every container of `name` (serving and kept) from every lab host.
struct Cleanup(Vec<String>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for h in HOSTS {
            for name in &self.0 {
                let ids = docker_lenient(h, &["ps", "-aq", "--filter", &format!("name={name}")]);
                for id in ids.split_whitespace() {
                    docker_lenient(h, &["rm", "-f", id]);
                }
            }
        }
    }
}

async fn push(agent: &Agent, repo: &str, commit: &str) -> i64 {
    push_github(agent, repo, "main", commit, "deploy").await["runs"][0]
        .as_i64()
        .unwrap()
}

async fn run_end(agent: &Agent, run: i64) -> Value {
    wait_for(agent, &format!("/runs/{run}"), "finished", 240, |r| {
        !["queued", "running"].contains(&r["status"].as_str().unwrap_or(""))
    })
    .await
}

/// GET `http://ADDR:port/path` on lab host `h`, trimmed.
async fn page(h: &str, port: u16, path: &str) -> String {
    let url = format!("http://{}:{port}{path}", address(h));
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .get(&url)
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"))
        .text()
        .await
        .unwrap()
        .trim()
        .to_string()
}

fn sha256_hex(s: &str) -> String {
    hex::encode(<sha2::Sha256 as sha2::Digest>::digest(s.as_bytes()))
}

/// Every file under `dir` (the data dir: database, WAL, workspaces, hooks' checkouts).
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                todo.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// Fails naming where `needle` was found: any file of the data dir, the agent's log.
fn assert_nowhere_on_disk(needle: &str, data: &Path, log: &Path) {
    for f in files(data).into_iter().chain([log.to_path_buf()]) {
        let bytes = std::fs::read(&f).unwrap_or_default();
        assert!(
            !bytes.windows(needle.len()).any(|w| w == needle.as_bytes()),
            "the secret is in {}",
            f.display()
        );
    }
}

/// Every API answer about the app and its runs, as text.
async fn api_answers(agent: &Agent, app: &str) -> String {
    let mut all = String::new();
    let mut paths = vec![
        "/runs".to_string(),
        "/apps".into(),
        format!("/apps/{app}/releases"),
        format!("/apps/{app}/hosts"),
        format!("/apps/{app}/deployments"),
        "/hosts".into(),
        "/deliveries".into(),
    ];
    for r in api(agent, "/runs").await.as_array().unwrap() {
        let id = r["id"].as_i64().unwrap();
        paths.push(format!("/runs/{id}"));
        paths.push(format!("/runs/{id}/logs"));
    }
    for d in api(agent, &format!("/apps/{app}/deployments"))
        .await
        .as_array()
        .unwrap()
    {
        paths.push(format!("/deployments/{}", d["id"]));
    }
    for p in paths {
        all.push_str(&api(agent, &p).await.to_string());
    }
    all
}

/// A deploy step's container keys reach the container; the secret reaches it as an env var
/// (the service reports its hash) and appears in no log, API answer, file of the data dir or
/// label; it is masked in the test step's log and the hook's output; a rollback to an older
/// release gets the secret's current value.
#[tokio::test(flavor = "multi_thread")]
async fn a_secret_reaches_the_container_and_nothing_else() {
    let app = unique("fsecret");
    let _clean = Cleanup(vec![app.clone()]);
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let container = format!(
        "        name: {app}\n        ports: [\"{port}:8080\"]\n        secrets: [DB_PASSWORD]\n"
    );
    let health = "        http: { port: 8080, path: /health }\n        interval: 200ms\n        healthy_for: 400ms\n        deadline: 30s\n";
    let test_step = "  - name: test\n    image: lab/busybox:1\n    secrets: [DB_PASSWORD]\n    commands: [\"echo \\\"the password is $DB_PASSWORD\\\"\"]\n";
    let hooks = format!(
        "      hooks:\n        after_host: [\"curl\", \"-s\", \"http://${{host.address}}:{port}/raw\"]\n"
    );
    let text = pipeline(&app, &["h1"], &container, health, test_step) + &hooks;
    let repo = app_repo(dir.path(), &text);
    let c1 = repo.commit("main", "v1", &[]);
    let stranger = app_repo(
        &dir.path().join("other"),
        &text.replace(&app, &unique("fnosecret")),
    );
    let n1 = stranger.commit("main", "n1", &[]);
    let conf = config(
        dir.path(),
        &[
            RepoConf {
                name: "acme/fsecret",
                repo: &repo,
                secrets: &["DB_PASSWORD"],
            },
            RepoConf {
                name: "acme/fnosecret",
                repo: &stranger,
                secrets: &[],
            },
        ],
        &|_| String::new(),
    );
    let first = format!("first-{:016x}", rand::random::<u64>());
    let log = dir.path().join("agent.log");
    let mut agent = Agent::launch_logged(
        dir.path(),
        &conf,
        &[("FLEET_DB_PASSWORD", first.clone())],
        &log,
    );

    let run = push(&agent, "acme/fsecret", &c1).await;
    let r = run_end(&agent, run).await;
    let text = run_log(&agent, run).await;
    assert_eq!(r["status"], "success", "{r:#}\n{text}");
    assert_eq!(page("h1", port, "/secret").await, sha256_hex(&first));
    assert!(text.contains("the password is ***"), "{text}");
    assert!(text.contains("after_host: ***"), "{text}");
    let labels = docker_lenient(
        "h1",
        &["inspect", &app, "--format", "{{json .Config.Labels}}"],
    );
    assert!(
        labels.contains("hoist.app") && !labels.contains(&first),
        "{labels}"
    );
    let answers = api_answers(&agent, &app).await;
    assert!(!answers.contains(&first), "an API answer holds the secret");
    assert!(answers.contains("DB_PASSWORD"), "the spec names the secret");

    // The value changes (the agent restarts with another one); a new release gets it, and so
    // does a rollback to release 1, whose record holds the name only.
    agent.terminate();
    let second = format!("second-{:016x}", rand::random::<u64>());
    let agent = Agent::launch_logged(
        dir.path(),
        &conf,
        &[("FLEET_DB_PASSWORD", second.clone())],
        &log,
    );
    let c2 = repo.commit("main", "v2", &[]);
    let r = run_end(&agent, push(&agent, "acme/fsecret", &c2).await).await;
    assert_eq!(r["status"], "success", "{r:#}");
    assert_eq!(page("h1", port, "/secret").await, sha256_hex(&second));
    let answer = api_post(
        &agent,
        &format!("/apps/{app}/rollback"),
        Some(json!({"to": 1})),
    )
    .await;
    assert_eq!(answer.status(), 202);
    let id = answer.json::<Value>().await.unwrap()["deployment"].clone();
    let d = wait_for(
        &agent,
        &format!("/deployments/{id}"),
        "finished",
        120,
        |d| d["status"] != "running",
    )
    .await;
    assert_eq!(d["status"], "succeeded", "{d:#}");
    assert_eq!(page("h1", port, "/secret").await, sha256_hex(&second));

    let answers = api_answers(&agent, &app).await;
    for value in [&first, &second] {
        assert!(
            !answers.contains(value.as_str()),
            "an API answer holds a secret"
        );
        assert_nowhere_on_disk(value, &dir.path().join("data"), &log);
    }
    // A repository whose [[repo]] secrets does not list the name: refused before any step
    // runs, saying which list to extend.
    let r = run_end(&agent, push(&agent, "acme/fnosecret", &n1).await).await;
    assert_eq!(r["status"], "failed", "{r:#}");
    let reason = r["reason"].as_str().unwrap();
    assert!(
        reason.contains("asks for secret DB_PASSWORD, which repository acme/fnosecret may not use; add \"DB_PASSWORD\" to secrets of its [[repo]] entry"),
        "{reason}"
    );
    let steps = api(&agent, &format!("/runs/{}", r["id"])).await["steps"].clone();
    assert!(
        steps.as_array().is_none_or(|s| s
            .iter()
            .all(|s| s["status"] != "success" && s["status"] != "running")),
        "{steps:#}"
    );
}

/// A cluster app: three nodes, each with a fixed distinct id from its host's `vars` and the
/// full peer list, the same after a redeploy; the compose-like keys reach the container; a
/// placeholder naming a key one host lacks fails the deployment before anything changes.
#[tokio::test(flavor = "multi_thread")]
async fn a_cluster_gets_fixed_ids_and_the_peer_list() {
    let app = unique("fcluster");
    let net = unique("fnet");
    let _clean = Cleanup(vec![app.clone()]);
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let tag = app.clone();
    let vars = move |h: &str| format!("node_id = \"{tag}-{h}\", peer = \"{}:7000\"", address(h));
    let container = format!(
        "        name: {app}\n        ports: [\"{port}:8080\"]\n        env: {{ NODE_ID: \"${{host.node_id}}\", PEERS: \"${{hosts.peer}}\", ADDRS: \"${{hosts.address}}\" }}\n\
         \x20       network: {net}\n        memory: 64m\n        cpus: \"0.5\"\n        stop_signal: SIGINT\n        stop_timeout: 3s\n"
    );
    let health = "        http: { port: 8080, path: /health, status: \"200-299\" }\n        interval: 200ms\n        healthy_for: 400ms\n        deadline: 30s\n";
    let text = pipeline(&app, &HOSTS, &container, health, "");
    let repo = app_repo(dir.path(), &text);
    let c1 = repo.commit("main", "v1", &[]);
    let conf = config(
        dir.path(),
        &[RepoConf {
            name: "acme/fcluster",
            repo: &repo,
            secrets: &[],
        }],
        &vars,
    );
    let agent = Agent::launch_with_env(
        dir.path(),
        &conf,
        &[("FLEET_DB_PASSWORD", "unused-pw".into())],
    );
    let peers = HOSTS
        .iter()
        .map(|h| format!("{}:7000", address(h)))
        .collect::<Vec<_>>()
        .join(",");
    let addrs = HOSTS.map(address).join(",");

    let mut ids = Vec::new();
    for (n, commit) in [c1, repo.commit("main", "v2", &[])].iter().enumerate() {
        let run = push(&agent, "acme/fcluster", commit).await;
        let r = run_end(&agent, run).await;
        assert_eq!(
            r["status"],
            "success",
            "{r:#}\n{}",
            run_log(&agent, run).await
        );
        let mut these = Vec::new();
        for h in HOSTS {
            assert_eq!(page(h, port, "/peers").await, peers, "{h}");
            assert_eq!(page(h, port, "/addrs").await, addrs, "{h}");
            these.push(page(h, port, "/id").await);
        }
        assert_eq!(these, HOSTS.map(|h| format!("{app}-{h}")), "push {n}");
        ids.push(these);
    }
    assert_eq!(ids[0], ids[1], "the ids are the same after a redeploy");

    let inspect = docker_lenient(
        "h2",
        &[
            "inspect",
            &app,
            "--format",
            "{{.HostConfig.NetworkMode}} {{.HostConfig.Memory}} {{.HostConfig.NanoCpus}} {{.Config.StopSignal}} {{.Config.StopTimeout}}",
        ],
    );
    assert_eq!(inspect, format!("{net} 67108864 500000000 SIGINT 3"));
    // On the network, containers resolve each other by name: a neighbour reaches the app.
    let reply = docker_lenient(
        "h2",
        &[
            "run",
            "--rm",
            "--network",
            &net,
            "lab/busybox:1",
            "wget",
            "-qO-",
            &format!("http://{app}:8080/id"),
        ],
    );
    assert_eq!(reply, format!("{app}-h2"));

    // A key h3 lacks: the deployment fails before anything changes, naming h3 and the key.
    let before: Vec<String> = HOSTS
        .iter()
        .map(|h| docker_lenient(h, &["inspect", &app, "--format", "{{.Id}}"]))
        .collect();
    std::fs::write(
        repo.work.join(".hoist.yml"),
        text.replace("${hosts.peer}", "${hosts.zone}"),
    )
    .unwrap();
    let c3 = repo.commit("main", "v3", &[]);
    let r = run_end(&agent, push(&agent, "acme/fcluster", &c3).await).await;
    assert_eq!(r["status"], "failed", "{r:#}");
    let reason = r["reason"].as_str().unwrap();
    assert!(
        reason.contains("host h1 has no `zone` in its vars")
            && reason.contains("nothing was changed"),
        "{reason}"
    );
    let after: Vec<String> = HOSTS
        .iter()
        .map(|h| docker_lenient(h, &["inspect", &app, "--format", "{{.Id}}"]))
        .collect();
    assert_eq!(before, after);
    for h in HOSTS {
        docker_lenient(h, &["rm", "-f", &app]);
        docker_lenient(h, &["network", "rm", &net]);
    }
}

/// Two apps with one container name on one host: the second deploy fails naming the owner,
/// and the first app's container and its kept release are untouched.
#[tokio::test(flavor = "multi_thread")]
async fn another_apps_container_is_never_touched() {
    let name = unique("fown");
    let (app_a, app_b) = (format!("{name}-a"), format!("{name}-b"));
    let _clean = Cleanup(vec![name.clone()]);
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let container = format!("        name: {name}\n        ports: [\"{port}:8080\"]\n");
    let health = "        http: { port: 8080, path: /health }\n        interval: 200ms\n        healthy_for: 400ms\n        deadline: 30s\n";
    let repo_a = app_repo(
        &dir.path().join("a"),
        &pipeline(&app_a, &["h2"], &container, health, ""),
    );
    let repo_b = app_repo(
        &dir.path().join("b"),
        &pipeline(&app_b, &["h2"], &container, health, ""),
    );
    let a1 = repo_a.commit("main", "a1", &[]);
    let b1 = repo_b.commit("main", "b1", &[]);
    let conf = config(
        dir.path(),
        &[
            RepoConf {
                name: "acme/fown-a",
                repo: &repo_a,
                secrets: &[],
            },
            RepoConf {
                name: "acme/fown-b",
                repo: &repo_b,
                secrets: &[],
            },
        ],
        &|_| String::new(),
    );
    let agent = Agent::launch_with_env(
        dir.path(),
        &conf,
        &[("FLEET_DB_PASSWORD", "unused-pw".into())],
    );
    for c in [a1, repo_a.commit("main", "a2", &[])] {
        let r = run_end(&agent, push(&agent, "acme/fown-a", &c).await).await;
        assert_eq!(r["status"], "success", "{r:#}");
    }
    let state = || {
        [name.clone(), format!("{name}-r1")].map(|n| {
            docker_lenient(
                "h2",
                &[
                    "inspect",
                    &n,
                    "--format",
                    "{{.Id}} {{.State.Status}} {{.Config.Labels}}",
                ],
            )
        })
    };
    let before = state();
    assert!(
        before[0].contains(" running ") && before[1].contains(" exited "),
        "{before:?}"
    );

    let r = run_end(&agent, push(&agent, "acme/fown-b", &b1).await).await;
    assert_eq!(r["status"], "failed", "{r:#}");
    let reason = r["reason"].as_str().unwrap();
    assert!(
        reason.contains(&format!("belongs to app {app_a}"))
            && reason.contains("nothing was changed"),
        "{reason}"
    );
    assert_eq!(state(), before, "app A's containers are untouched");
    assert_eq!(page("h2", port, "/health").await, "ok");
    // Nothing of B's was journaled on the host: no deployment began.
    let deployments = api(&agent, &format!("/apps/{app_b}/deployments")).await;
    assert_eq!(
        deployments.as_array().map(Vec::len),
        Some(0),
        "{deployments:#}"
    );
}

/// Seconds between two RFC 3339 times of the API.
fn between(a: &Value, b: &Value) -> f64 {
    let t = |v: &Value| humantime::parse_rfc3339_weak(v.as_str().unwrap()).unwrap();
    t(b).duration_since(t(a)).unwrap_or_default().as_secs_f64()
}

/// From the container's start (the journal's `started` step) to the deployment's verdict.
async fn time_to_verdict(agent: &Agent, app: &str) -> (f64, Value) {
    let list = api(agent, &format!("/apps/{app}/deployments")).await;
    let d = api(agent, &format!("/deployments/{}", list[0]["id"])).await;
    let started = d["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["step"] == "started")
        .unwrap_or_else(|| panic!("no started step: {d:#}"))["at"]
        .clone();
    (between(&started, &d["finished_at"]), d)
}

/// A release answering 404 on `/health` with `fail_after: 2` gets its verdict within
/// `start_period + 3 × interval`; without `fail_after` only the deadline ends it (both times
/// are printed: `cargo test --test fleet fail_after -- --nocapture`).
#[tokio::test(flavor = "multi_thread")]
async fn fail_after_gives_the_verdict_in_seconds() {
    let app = unique("ffail");
    let _clean = Cleanup(vec![app.clone()]);
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let container = format!(
        "        name: {app}\n        ports: [\"{port}:8080\"]\n        env: {{ BROKEN: \"yes\" }}\n"
    );
    let health = |fail_after: u32, deadline: &str| {
        format!(
            "        http: {{ port: 8080, path: /health }}\n        interval: 1s\n        start_period: 1s\n        fail_after: {fail_after}\n        healthy_for: 1s\n        deadline: {deadline}\n"
        )
    };
    let text = pipeline(&app, &["h3"], &container, &health(2, "60s"), "");
    let repo = app_repo(dir.path(), &text);
    let c1 = repo.commit("main", "v1", &[]);
    let conf = config(
        dir.path(),
        &[RepoConf {
            name: "acme/ffail",
            repo: &repo,
            secrets: &[],
        }],
        &|_| String::new(),
    );
    let agent = Agent::launch_with_env(
        dir.path(),
        &conf,
        &[("FLEET_DB_PASSWORD", "unused-pw".into())],
    );
    let r = run_end(&agent, push(&agent, "acme/ffail", &c1).await).await;
    assert_eq!(r["status"], "failed", "{r:#}");
    let (fast, d) = time_to_verdict(&agent, &app).await;
    assert_eq!(d["status"], "rolled_back", "{d:#}");
    let reason = d["reason"].as_str().unwrap();
    assert!(
        reason.contains("2 failing checks in a row (fail_after: 2)") && reason.contains("404"),
        "{reason}"
    );
    let bound = 1.0 + 3.0 * 1.0;
    assert!(
        fast <= bound,
        "verdict after {fast:.2}s, more than start_period + 3 × interval = {bound}s"
    );

    std::fs::write(
        repo.work.join(".hoist.yml"),
        pipeline(&app, &["h3"], &container, &health(0, "8s"), ""),
    )
    .unwrap();
    let c2 = repo.commit("main", "v2", &[]);
    let r = run_end(&agent, push(&agent, "acme/ffail", &c2).await).await;
    assert_eq!(r["status"], "failed", "{r:#}");
    let (slow, d) = time_to_verdict(&agent, &app).await;
    assert!(
        d["reason"]
            .as_str()
            .unwrap()
            .contains("not healthy within 8s"),
        "{d:#}"
    );
    println!(
        "time from the container's start to the verdict (first failing check at ~0 s): with fail_after: 2 {fast:.2} s; without (deadline 8s) {slow:.2} s"
    );
    assert!(slow > fast);
}
