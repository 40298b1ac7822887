//! No gap on any host (issue 10): engine-picked ports, replicas, start-before-stop, and an nginx
//! hoist keeps in step. Real binary, build engine, registry and hosts; each test runs an nginx
//! of its own, on the agent's machine (a free loopback port, its own directory) or in a
//! container on a lab host (`lab/nginx:1`, a published port; hoist writes through the
//! engine's archive API and tests and reloads by exec), whose `include` is the file hoist
//! owns, and a bounded load client against it that counts every failed request and every
//! retry nginx made (from its access log): both must be 0.
//!
//! Every test uses its own app, container name, registry repository and nginx, so that they
//! run beside each other and beside other test binaries on the same lab hosts.

mod common;

use std::time::Duration;

use common::lab::{self, address, docker_lenient};
use common::nginx::{Load, Nginx, Place};
use common::{Agent, GitRepo, api, api_post, push_github, run_log, token_toml, wait_for};
use serde_json::{Value, json};

fn unique(prefix: &str) -> String {
    format!("{prefix}-{:08x}", rand::random::<u32>())
}

/// The app: busybox httpd serving `$V` (the commit) at `/` and `/health`, unless the image
/// holds `/app/broken` (then `/health` is 404). With `/app/ignore-term` the shell, PID 1,
/// ignores SIGTERM, as a Node service without an init does: a stop takes the whole timeout.
const START_SH: &str = r#"#!/bin/sh
mkdir -p /www
echo "$V" > /www/index.html
[ -e /app/broken ] || echo ok > /www/health
if [ -e /app/ignore-term ]; then
  trap '' TERM
  httpd -f -p 8080 -h /www &
  pid=$!
  while :; do wait "$pid"; done
fi
httpd -f -p 8080 -h /www &
pid=$!
trap 'kill "$pid"; exit 0' TERM INT
wait "$pid"
"#;

const DOCKERFILE: &str =
    "FROM lab/busybox:1\nARG V=1\nENV V=$V\nCOPY . /app\nCMD [\"/app/start.sh\"]\n";

/// One app of one test: its repository, nginx and agent.
struct Setup {
    app: String,
    repo: GitRepo,
    nginx: Nginx,
    dir: tempfile::TempDir,
    _clean: lab::Clean,
}

/// The pipeline: engine-picked port 8080, `replicas`, health every 200 ms for 1 s, the
/// balancer in front.
fn pipeline(app: &str, hosts: &[&str], replicas: u32, extra_container: &str) -> String {
    format!(
        "app: {app}\nsteps:\n  - name: image\n    build:\n      repository: {}/hoist-balancer/{app}\n      args: {{ V: \"${{commit_short}}\" }}\n\
         \x20 - name: deploy\n    deploy:\n      image: image\n      hosts: {hosts:?}\n      container:\n        name: {app}\n        replicas: {replicas}\n        ports: [\"8080\"]\n{extra_container}\
         \x20     health:\n        http: {{ port: 8080, path: /health }}\n        interval: 200ms\n        healthy_for: 1s\n        deadline: 20s\n        fail_after: 3\n\
         \x20     balancer: {{ name: edge, port: 8080, check: /health, drain: 500ms }}\n\
         \x20     rollout: {{ max_parallel: 1, bake: 0s, keep: 3 }}\n",
        lab::REGISTRY
    )
}

impl Setup {
    fn new(prefix: &str, hosts: &[&str], replicas: u32, extra_container: &str) -> Setup {
        Setup::with_nginx(prefix, hosts, replicas, extra_container, None)
    }

    /// With `nginx_on`, the test's nginx runs in a container on that lab host.
    fn with_nginx(
        prefix: &str,
        hosts: &[&str],
        replicas: u32,
        extra_container: &str,
        nginx_on: Option<&'static str>,
    ) -> Setup {
        let app = unique(prefix);
        let dir = tempfile::tempdir().unwrap();
        let repo_dir = dir.path().join("repo");
        std::fs::create_dir_all(&repo_dir).unwrap();
        let repo = GitRepo::new(&repo_dir);
        std::fs::write(
            repo.work.join(".hoist.yml"),
            pipeline(&app, hosts, replicas, extra_container),
        )
        .unwrap();
        std::fs::write(repo.work.join("Dockerfile"), DOCKERFILE).unwrap();
        let start = repo.work.join("start.sh");
        std::fs::write(&start, START_SH).unwrap();
        std::process::Command::new("chmod")
            .arg("+x")
            .arg(&start)
            .status()
            .unwrap();
        let nginx = match nginx_on {
            None => Nginx::start(dir.path(), &app),
            Some(host) => {
                Nginx::start_in_container(dir.path(), host, &format!("{app}-nginx"), &app)
            }
        };
        Setup {
            _clean: lab::Clean(app.clone()),
            app,
            repo,
            nginx,
            dir,
        }
    }

    fn config(&self, reload: Option<Vec<String>>) -> String {
        let mut c = format!(
            "listen = \"127.0.0.1:0\"\ndata_dir = {:?}\n[builder]\ndocker = {:?}\n[runner]\npoll_interval = \"0s\"\n\
             [[registry]]\nhost = {:?}\ninsecure = true\n{}\
             [[repo]]\nname = \"acme/{}\"\nurl = {:?}\nforge = \"github\"\nsecret = \"env:E2E_HOOK_SECRET\"\nhosts = {:?}\n",
            self.dir.path().join("data"),
            lab::builder_url(),
            lab::REGISTRY,
            token_toml(),
            self.app,
            self.repo.bare,
            lab::ALL_HOSTS,
        );
        for h in lab::ALL_HOSTS {
            c.push_str(&format!(
                "[host.{h}]\ndocker = {:?}\naddress = {:?}\n",
                lab::socket(h),
                address(h)
            ));
        }
        c.push_str(&self.nginx.toml("edge", reload));
        c
    }

    fn agent(&self) -> Agent {
        let path = self.dir.path().join("hoist.toml");
        std::fs::write(&path, self.config(None)).unwrap();
        Agent::launch(self.dir.path(), "")
    }

    fn repo_name(&self) -> String {
        format!("acme/{}", self.app)
    }

    /// Commit (with `files`) and push; the run's end.
    async fn push(&self, agent: &Agent, message: &str, files: &[(&str, &str)]) -> (Value, String) {
        let c = self.repo.commit("main", message, files);
        let run = push_github(agent, &self.repo_name(), "main", &c, message).await["runs"][0]
            .as_i64()
            .unwrap();
        let r = wait_for(agent, &format!("/runs/{run}"), "finished", 240, |r| {
            !["queued", "running"].contains(&r["status"].as_str().unwrap_or(""))
        })
        .await;
        (r, c[..7].to_string())
    }

    /// What nginx answers at `/` now.
    async fn serves(&self) -> String {
        reqwest::Client::builder()
            .no_proxy()
            .build()
            .unwrap()
            .get(self.nginx.url())
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
            .trim()
            .to_string()
    }

    /// The file lists exactly the app's running serving containers, by the host ports the
    /// engines report; returns the `ADDR:PORT`s.
    fn assert_file_matches_engines(&self, hosts: &[&str]) -> Vec<String> {
        let text = self.nginx.hoist_text();
        let mut listed: Vec<String> = text
            .lines()
            .filter_map(|l| l.trim().strip_prefix("server "))
            .map(|l| l.split(';').next().unwrap().to_string())
            .collect();
        listed.sort();
        let mut running = Vec::new();
        for h in hosts {
            let out = docker_lenient(
                h,
                &[
                    "ps",
                    "--filter",
                    &format!("label=hoist.app={}", self.app),
                    "--format",
                    "{{.Names}} {{.Ports}}",
                ],
            );
            for line in out.lines() {
                let (name, ports) = line.split_once(' ').unwrap_or((line, ""));
                // Serving names only: NAME or NAME-<i>; kept ones may still be draining.
                let serving = name == self.app
                    || name
                        .strip_prefix(&format!("{}-", self.app))
                        .is_some_and(|i| i.bytes().all(|b| b.is_ascii_digit()));
                if !serving {
                    continue;
                }
                // "0.0.0.0:49153->8080/tcp, :::49153->8080/tcp"
                let port = ports
                    .split(", ")
                    .find_map(|p| p.strip_prefix("0.0.0.0:"))
                    .and_then(|p| p.split("->").next())
                    .unwrap_or_else(|| panic!("no published port in {line:?}"));
                running.push(format!("{}:{port}", address(h)));
            }
        }
        running.sort();
        assert_eq!(listed, running, "the balancer's file:\n{text}");
        listed
    }
}

async fn deployment(agent: &Agent, id: &Value) -> Value {
    wait_for(agent, &format!("/deployments/{id}"), "finished", 180, |d| {
        d["status"] != "running"
    })
    .await
}

async fn latest_deployment(agent: &Agent, app: &str) -> Value {
    let list = api(agent, &format!("/apps/{app}/deployments")).await;
    let id = list[0]["id"].clone();
    deployment(agent, &id).await
}

async fn rollback(agent: &Agent, app: &str, to: i64) -> Value {
    let answer = api_post(
        agent,
        &format!("/apps/{app}/rollback"),
        Some(json!({"to": to})),
    )
    .await;
    assert_eq!(answer.status(), 202);
    let id = answer.json::<Value>().await.unwrap()["deployment"].clone();
    deployment(agent, &id).await
}

fn assert_no_gap(load: (u64, Vec<String>), retries: Vec<String>, what: &str) {
    let (n, failures) = load;
    assert!(n > 20, "{what}: only {n} requests were made");
    assert!(
        failures.is_empty(),
        "{what}: {} of {n} requests failed: {failures:?}",
        failures.len()
    );
    assert!(
        retries.is_empty(),
        "{what}: nginx retried {} requests: {retries:?}",
        retries.len()
    );
}

/// Rollout, automatic rollback, manual rollback, under load, with no failed request and no
/// retry; the file always lists exactly what runs.
async fn three_switches(s: &Setup, hosts: &[&str], replicas: u32) {
    let agent = s.agent();
    let (r, c1) = s.push(&agent, "v1", &[]).await;
    assert_eq!(
        r["status"],
        "success",
        "{r:#}\n{}",
        run_log(&agent, r["id"].as_i64().unwrap()).await
    );
    assert_eq!(s.serves().await, c1);
    assert_eq!(
        s.assert_file_matches_engines(hosts).len(),
        hosts.len() * replicas as usize
    );

    // Replica names and engine-picked ports, as /apps/{app}/hosts shows them.
    let shown = api(&agent, &format!("/apps/{}/hosts", s.app)).await;
    for row in shown.as_array().unwrap() {
        let names: Vec<&str> = row["replicas"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["name"].as_str().unwrap())
            .collect();
        let want: Vec<String> = if replicas == 1 {
            vec![s.app.clone()]
        } else {
            (1..=replicas).map(|i| format!("{}-{i}", s.app)).collect()
        };
        assert_eq!(names, want, "{row:#}");
        for rep in row["replicas"].as_array().unwrap() {
            let at = rep["ports"]["8080/tcp"].as_str().unwrap();
            assert!(
                at.starts_with(&address(row["host"].as_str().unwrap())),
                "{rep:#}"
            );
            assert_eq!(rep["health"], "healthy", "{rep:#}");
        }
    }

    // Rollout to v2 under load.
    s.nginx.truncate_log();
    let load = Load::start(s.nginx.url());
    load.wait_some().await;
    let (r, c2) = s.push(&agent, "v2", &[("v2", "2")]).await;
    assert_eq!(r["status"], "success", "{r:#}");
    assert_no_gap(load.finish().await, s.nginx.retries(), "rollout");
    assert_eq!(s.serves().await, c2);
    s.assert_file_matches_engines(hosts);

    // A broken release: its health fails on the first host; every touched host is rolled
    // back; under load, nothing is lost.
    s.nginx.truncate_log();
    let load = Load::start(s.nginx.url());
    load.wait_some().await;
    let (r, _) = s.push(&agent, "v3 broken", &[("broken", "1")]).await;
    assert_eq!(r["status"], "failed", "{r:#}");
    let d = latest_deployment(&agent, &s.app).await;
    assert_eq!(d["status"], "rolled_back", "{d:#}");
    assert_no_gap(load.finish().await, s.nginx.retries(), "automatic rollback");
    assert_eq!(s.serves().await, c2);
    s.assert_file_matches_engines(hosts);

    // A manual rollback to release 1 under load.
    s.nginx.truncate_log();
    let load = Load::start(s.nginx.url());
    load.wait_some().await;
    let d = rollback(&agent, &s.app, 1).await;
    assert_eq!(d["status"], "succeeded", "{d:#}");
    assert_no_gap(load.finish().await, s.nginx.retries(), "manual rollback");
    assert_eq!(s.serves().await, c1);
    s.assert_file_matches_engines(hosts);
}

#[tokio::test(flavor = "multi_thread")]
async fn one_host_two_replicas_switch_with_no_gap() {
    let s = Setup::new("bal1", &["h1"], 2, "");
    three_switches(&s, &["h1"], 2).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn three_hosts_one_replica_each_switch_with_no_gap() {
    let s = Setup::new("bal3", &lab::HOSTS, 1, "");
    three_switches(&s, &lab::HOSTS, 1).await;
}

/// Scaling by a push: replicas 2 → 3 and a fourth host added to the deploy step; nginx gains
/// them with no edit by hand.
#[tokio::test(flavor = "multi_thread")]
async fn more_replicas_and_a_fourth_host_join_the_balancer() {
    lab::check_host("h4");
    let s = Setup::new("balscale", &lab::HOSTS, 2, "");
    let agent = s.agent();
    let (r, _) = s.push(&agent, "v1", &[]).await;
    assert_eq!(r["status"], "success", "{r:#}");
    assert_eq!(s.assert_file_matches_engines(&lab::HOSTS).len(), 6);
    let grown = pipeline(&s.app, &lab::ALL_HOSTS, 3, "");
    s.nginx.truncate_log();
    let load = Load::start(s.nginx.url());
    load.wait_some().await;
    let (r, c2) = s.push(&agent, "scale", &[(".hoist.yml", &grown)]).await;
    assert_eq!(r["status"], "success", "{r:#}");
    assert_no_gap(load.finish().await, s.nginx.retries(), "scale-out");
    assert_eq!(s.serves().await, c2);
    assert_eq!(s.assert_file_matches_engines(&lab::ALL_HOSTS).len(), 12);
}

/// nginx in a container on a lab host (`[balancer.NAME] host, container`): hoist writes its
/// file through the engine's archive API, tests and reloads it by exec; a rollout, an
/// automatic and a manual rollback through it lose no request, and the file in the container
/// always lists exactly what runs.
#[tokio::test(flavor = "multi_thread")]
async fn nginx_in_a_container_on_a_host_is_kept_in_step() {
    lab::check_host("h4");
    let s = Setup::with_nginx("balctr", &["h2", "h3"], 1, "", Some("h4"));
    three_switches(&s, &["h2", "h3"], 1).await;
    // The container's nginx accepts the file hoist left (its own test, by exec).
    let Place::Container { host, name } = &s.nginx.place else {
        unreachable!()
    };
    lab::docker(host, &["exec", name, "nginx", "-t", "-q"]);
}

/// An app that ignores SIGTERM takes its whole 10 s stop timeout to stop; the rollout's time
/// (switching → every host switched, from the journal) does not include it, and the old
/// container is stopped (and kept) before the deployment ends.
#[tokio::test(flavor = "multi_thread")]
async fn a_slow_stop_is_off_the_critical_path() {
    let s = Setup::new("balslow", &["h2"], 1, "        stop_timeout: 10s\n");
    let agent = s.agent();
    let (r, _) = s.push(&agent, "v1", &[("ignore-term", "1")]).await;
    assert_eq!(r["status"], "success", "{r:#}");
    let (r, c2) = s.push(&agent, "v2", &[("v2", "2")]).await;
    assert_eq!(r["status"], "success", "{r:#}");
    assert_eq!(s.serves().await, c2);
    let d = latest_deployment(&agent, &s.app).await;
    let at = |step: &str| -> std::time::SystemTime {
        let e = d["events"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["step"] == step)
            .unwrap_or_else(|| panic!("no {step} in {d:#}"));
        humantime::parse_rfc3339(e["at"].as_str().unwrap()).unwrap()
    };
    let rollout = at("switched").duration_since(at("switching")).unwrap();
    let stopped = at("stopped old").duration_since(at("switching")).unwrap();
    assert!(
        rollout < Duration::from_secs(6),
        "the rollout took {rollout:?}: {d:#}"
    );
    assert!(
        stopped >= Duration::from_secs(10),
        "the old one stopped after {stopped:?}: {d:#}"
    );
    let state = docker_lenient(
        "h2",
        &[
            "inspect",
            "-f",
            "{{.State.Status}}",
            &format!("{}-r1", s.app),
        ],
    );
    assert_eq!(state.trim(), "exited", "release 1 is kept, stopped");
}

/// A `test` that fails (another file of nginx's is broken): the deployment rolls back, the
/// previous file is in place, nginx still serves the old release.
#[tokio::test(flavor = "multi_thread")]
async fn a_failing_test_keeps_the_previous_file_and_rolls_back() {
    let s = Setup::new("baltest", &["h3"], 1, "");
    let agent = s.agent();
    let (r, c1) = s.push(&agent, "v1", &[]).await;
    assert_eq!(r["status"], "success", "{r:#}");
    let before = s.nginx.hoist_text();
    std::fs::write(
        s.nginx.dir().join("conf.d/broken.conf"),
        "this is not nginx;\n",
    )
    .unwrap();
    let (r, _) = s.push(&agent, "v2", &[("v2", "2")]).await;
    assert_eq!(r["status"], "failed", "{r:#}");
    let d = latest_deployment(&agent, &s.app).await;
    assert_eq!(d["status"], "rolled_back", "{d:#}");
    assert!(
        d["reason"]
            .as_str()
            .unwrap()
            .contains("refused the new file"),
        "{d:#}"
    );
    assert_eq!(s.nginx.hoist_text(), before);
    assert_eq!(s.serves().await, c1);
    s.assert_file_matches_engines(&["h3"]);
}

/// kill -9 of the agent after the file is written and before the reload: after the restart
/// the file matches what runs, and nginx serves it.
#[tokio::test(flavor = "multi_thread")]
async fn a_kill_between_write_and_reload_is_made_true_at_restart() {
    let s = Setup::new("balkill", &["h1"], 1, "");
    let agent = s.agent();
    let (r, c1) = s.push(&agent, "v1", &[]).await;
    assert_eq!(r["status"], "success", "{r:#}");
    drop(agent);
    // A reload that says it started and then hangs: the agent is killed in it.
    let marker = s.dir.path().join("reloading");
    let hang = vec![
        "sh".to_string(),
        "-c".into(),
        format!("touch {}; sleep 60", marker.display()),
    ];
    std::fs::write(s.dir.path().join("hoist.toml"), s.config(Some(hang))).unwrap();
    let mut agent = Agent::launch(s.dir.path(), "");
    let c = s.repo.commit("main", "v2", &[("v2", "2")]);
    push_github(&agent, &s.repo_name(), "main", &c, "v2").await;
    common::wait_until("the reload to start", 240, || {
        let m = marker.clone();
        async move { if m.exists() { Ok(()) } else { Err("not yet") } }
    })
    .await;
    let written = s.nginx.hoist_text();
    agent.kill9();
    drop(agent);
    std::fs::write(s.dir.path().join("hoist.toml"), s.config(None)).unwrap();
    let agent = Agent::launch(s.dir.path(), "");
    let d = latest_deployment(&agent, &s.app).await;
    assert_ne!(d["status"], "running", "{d:#}");
    s.assert_file_matches_engines(&["h1"]);
    let now = s.nginx.hoist_text();
    // Resolved either way from the journal (B had been verified: succeeded; else rolled
    // back); nginx serves what the file says, and no old container is left running.
    let want = if d["status"] == "succeeded" {
        &c[..7]
    } else {
        c1.as_str()
    };
    assert!(
        ["succeeded", "rolled_back"].contains(&d["status"].as_str().unwrap()),
        "{d:#}\nwritten before the kill:\n{written}\nnow:\n{now}"
    );
    // nginx's reload is asynchronous: its new workers serve a moment after the command.
    let (s, now) = (&s, &now);
    common::wait_until("nginx to serve what the file says", 10, || async move {
        let got = s.serves().await;
        if got == want {
            Ok(())
        } else {
            Err(format!("{got} (file:\n{now})"))
        }
    })
    .await;
    common::wait_until("only the serving container to run", 15, || async move {
        let running = docker_lenient(
            "h1",
            &[
                "ps",
                "--filter",
                &format!("label=hoist.app={}", s.app),
                "--format",
                "{{.Names}}",
            ],
        );
        if running.trim() == s.app {
            Ok(())
        } else {
            Err(running)
        }
    })
    .await;
}
