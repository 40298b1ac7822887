//! Fleets (issue 9, items 1–3): several apps in one repository, each with its own releases, deployed in the order
//! its step graph (`needs`) allows, on the lab's three hosts; the release train of `atomic`
//! pipelines; steps that overlap when nothing orders them. The real binary, the real build
//! engine, registry and hosts.
//!
//! Names (apps `g9-*`, containers, published ports from `free_port`) are this file's own, so
//! that the tests of other files can run beside these.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::lab::{self, HOSTS, docker_lenient, on_host};
use common::{
    Agent, GitRepo, api, api_post, hoist_client, push_github, release, run_log, step, token_toml,
};
use serde_json::Value;

/// The four services, in the order the pipeline lists their deploy steps: auth first, the
/// others need it.
const SERVICES: [&str; 4] = ["auth", "user", "chat", "file"];
const REPO: &str = "acme/fleet";

fn app(service: &str) -> String {
    format!("g9-{service}")
}

/// One image for every service: busybox httpd serving its name and version, and `/healthz`
/// unless the build made it `BROKEN`.
const DOCKERFILE: &str = "FROM lab/busybox:1\nARG SERVICE\nARG VERSION=dev\nARG BROKEN=\n\
ENV SERVICE=$SERVICE VERSION=$VERSION BROKEN=$BROKEN\nCOPY www /www\nCOPY start.sh /start.sh\n\
CMD [\"sh\", \"/start.sh\"]\n";
const START: &str = "echo \"$SERVICE $VERSION\" > /www/version\n\
if test -z \"$BROKEN\"; then echo ok > /www/healthz; fi\n\
httpd -f -p 8080 -h /www &\npid=$!\ntrap 'kill \"$pid\"; exit 0' TERM INT\nwait \"$pid\"\n";

/// The four-service pipeline: the four builds need nothing (they run at once), auth's deploy
/// needs its build, and user's, chat's and file's deploys need auth's deploy and their own
/// build. `broken` names a service whose health check fails.
fn fleet_pipeline(ports: &[u16; 4], broken: Option<&str>, atomic: bool) -> String {
    let mut p = format!(
        "app: {}\natomic: {atomic}\non:\n  branches: [main]\nsteps:\n",
        app("auth")
    );
    for s in SERVICES {
        let flag = if broken == Some(s) { "yes" } else { "" };
        p.push_str(&format!(
            "  - name: build-{s}\n    build:\n      app: {app}\n      context: .\n      \
             repository: {registry}/hoist-e2e/{app}\n      tags: [\"${{commit_short}}\"]\n      \
             args: {{ SERVICE: {s}, VERSION: \"${{commit_short}}\", BROKEN: \"{flag}\" }}\n",
            app = app(s),
            registry = lab::REGISTRY
        ));
    }
    for (i, s) in SERVICES.iter().enumerate() {
        let needs = if *s == "auth" {
            "[build-auth]".to_string()
        } else {
            format!("[auth, build-{s}]")
        };
        p.push_str(&format!(
            "  - name: {s}\n    needs: {needs}\n    deploy:\n      image: build-{s}\n      \
             hosts: [h1, h2, h3]\n      container:\n        name: {app}\n        \
             ports: [\"{port}:8080\"]\n      health:\n        http: {{ port: 8080, path: /healthz }}\n        \
             interval: 200ms\n        timeout: 1s\n        healthy_for: 400ms\n        deadline: 3s\n      \
             rollout:\n        max_parallel: 3\n        bake: 0s\n        keep: 3\n",
            app = app(s),
            port = ports[i]
        ));
    }
    p
}

/// An agent whose one repository is `repo`, allowed on the three lab hosts.
fn agent(dir: &Path, repo: &GitRepo, extra_runner: &str) -> Agent {
    let config = format!(
        "listen = \"127.0.0.1:0\"\ndata_dir = {:?}\n[builder]\ndocker = {:?}\n[runner]\npoll_interval = \"0s\"\n{extra_runner}\
         [[repo]]\nname = {REPO:?}\nurl = {:?}\nforge = \"github\"\nsecret = \"env:E2E_HOOK_SECRET\"\nhosts = {HOSTS:?}\n\
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

/// Push `files` as a commit on main, as GitHub would; the run once it ended, with its log.
async fn push_and_wait(
    agent: &Agent,
    repo: &GitRepo,
    message: &str,
    files: &[(&str, &str)],
) -> Value {
    let commit = repo.commit("main", message, files);
    let answer = push_github(agent, REPO, "main", &commit, message).await;
    let id = answer["runs"][0].as_i64().expect("a run");
    let mut run = common::wait_for(agent, &format!("/runs/{id}"), "finished", 300, |r| {
        !["queued", "running"].contains(&r["status"].as_str().unwrap_or(""))
    })
    .await;
    run["log"] = run_log(agent, id).await.into();
    run
}

/// Remove every container of the four apps from the lab hosts.
fn clean_hosts() {
    for h in HOSTS {
        for s in SERVICES {
            let label = format!("label=hoist.app={}", app(s));
            let ids = docker_lenient(h, &["ps", "-aq", "--filter", &label]);
            for id in ids.split_whitespace() {
                docker_lenient(h, &["rm", "-f", id]);
            }
        }
    }
}

/// Milliseconds since the epoch of an RFC 3339 time the API gave.
fn millis(v: &Value) -> u128 {
    let text = v.as_str().unwrap_or_else(|| panic!("a time, not {v}"));
    humantime::parse_rfc3339(text)
        .unwrap()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis()
}

/// Every host runs release `number` of `service`'s app: read back by digest.
async fn assert_on(agent: &Agent, service: &str, number: i64) {
    let app = app(service);
    let digest = release(agent, &app, number).await["manifest_digest"]
        .as_str()
        .unwrap()
        .to_string();
    for h in HOSTS {
        let seen = on_host(h, &app);
        assert!(
            seen.running && seen.digests.contains(&digest),
            "{h} should run release {number} of {app} ({digest}); it runs {seen:?}"
        );
    }
}

/// The newest deployment of `app`, with its hosts.
async fn last_deployment(agent: &Agent, app: &str) -> Value {
    let list = api(agent, &format!("/apps/{app}/deployments")).await;
    let id = list[0]["id"].as_i64().expect("a deployment");
    api(agent, &format!("/deployments/{id}")).await
}

/// Whether two steps ran at the same time, from their recorded start and end.
fn overlap(a: &Value, b: &Value) -> bool {
    millis(&a["started_at"]) < millis(&b["finished_at"])
        && millis(&b["started_at"]) < millis(&a["finished_at"])
}

#[tokio::test]
async fn four_services_deploy_as_their_graph_allows_and_roll_back_per_app() {
    let started = Instant::now();
    clean_hosts();
    let dir = tempfile::tempdir().unwrap();
    let repo = GitRepo::new(dir.path());
    let ports = [
        lab::free_port(),
        lab::free_port(),
        lab::free_port(),
        lab::free_port(),
    ];
    let agent = agent(dir.path(), &repo, "");
    let base = [
        ("Dockerfile", DOCKERFILE),
        ("start.sh", START),
        ("www/index.html", "fleet\n"),
    ];

    // 1. Every service deploys: auth first, then the others, each on every host by digest.
    let good = fleet_pipeline(&ports, None, false);
    let mut files = base.to_vec();
    files.push((".hoist.yml", &good));
    let run = push_and_wait(&agent, &repo, "v1", &files).await;
    assert_eq!(run["status"], "success", "{run:#}");
    for s in SERVICES {
        assert_on(&agent, s, 1).await;
    }
    let mut deployments = Vec::new();
    for s in SERVICES {
        deployments.push(last_deployment(&agent, &app(s)).await);
    }
    let auth_done = millis(&deployments[0]["finished_at"]);
    for (s, d) in SERVICES.iter().zip(&deployments).skip(1) {
        assert!(
            millis(&d["created_at"]) >= auth_done,
            "{s} was deployed before auth's deployment ended: {d:#}\n{:#}",
            deployments[0]
        );
    }
    let show: Vec<String> = SERVICES
        .iter()
        .zip(&deployments)
        .map(|(s, d)| {
            format!(
                "{s} {}..{}",
                millis(&d["created_at"]) - millis(&deployments[0]["created_at"]),
                millis(&d["finished_at"]) - millis(&deployments[0]["created_at"])
            )
        })
        .collect();
    eprintln!("deployments (ms after auth's start): {}", show.join(", "));
    // The four builds need nothing: they ran side by side.
    assert!(
        overlap(step(&run, "build-auth"), step(&run, "build-user"))
            || overlap(step(&run, "build-auth"), step(&run, "build-chat")),
        "independent builds should overlap in time: {:#}",
        run["steps"]
    );
    // Each app has its own release sequence.
    for s in SERVICES {
        let releases = api(&agent, &format!("/apps/{}/releases", app(s))).await;
        assert_eq!(releases.as_array().unwrap().len(), 1, "{releases:#}");
        assert_eq!(releases[0]["step"], format!("build-{s}"));
    }

    // 2. chat broken, not atomic: only chat is rolled back; the others stay on release 2.
    let broken = fleet_pipeline(&ports, Some("chat"), false);
    let run = push_and_wait(&agent, &repo, "v2 chat broken", &[(".hoist.yml", &broken)]).await;
    assert_eq!(run["status"], "failed", "{run:#}");
    assert_eq!(step(&run, "chat")["status"], "failed", "{run:#}");
    let chat = last_deployment(&agent, &app("chat")).await;
    assert_eq!(chat["status"], "rolled_back", "{chat:#}");
    assert_on(&agent, "chat", 1).await;
    for s in ["auth", "user", "file"] {
        assert_on(&agent, s, 2).await;
    }

    // 3. chat broken, atomic: every app the run switched is back on what it ran before.
    let train = fleet_pipeline(&ports, Some("chat"), true);
    let run = push_and_wait(
        &agent,
        &repo,
        "v3 chat broken, atomic",
        &[(".hoist.yml", &train)],
    )
    .await;
    assert_eq!(run["status"], "failed", "{run:#}");
    let reason = run["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("release train") && reason.contains("g9-chat"),
        "{reason}"
    );
    for s in ["auth", "user", "file"] {
        if step(&run, s)["status"] == "success" {
            assert!(
                reason.contains(&format!("{} to release 2", app(s))),
                "{s} was switched, so the reason names it: {reason}"
            );
            let d = last_deployment(&agent, &app(s)).await;
            assert_eq!(
                (
                    d["kind"].as_str(),
                    d["status"].as_str(),
                    d["to_release"].as_i64()
                ),
                (Some("rollback"), Some("succeeded"), Some(2)),
                "{d:#}"
            );
        }
        assert_on(&agent, s, 2).await;
    }
    assert_on(&agent, "chat", 1).await;
    eprintln!("release train: {reason}");

    // 4. `hoist rollback g9-user` moves user's containers only.
    let before: Vec<(String, String)> = ["auth", "chat", "file"]
        .iter()
        .flat_map(|s| HOSTS.iter().map(move |h| (h.to_string(), app(s))))
        .collect();
    let ids_before: Vec<String> = before.iter().map(|(h, a)| on_host(h, a).id).collect();
    let out = hoist_client(&agent, &["rollback", &app("user")]);
    assert_eq!(out.code, Some(0), "{}\n{}", out.stdout, out.stderr);
    assert_on(&agent, "user", 1).await;
    let ids_after: Vec<String> = before.iter().map(|(h, a)| on_host(h, a).id).collect();
    assert_eq!(ids_before, ids_after, "only user's containers may change");
    for s in ["auth", "file"] {
        assert_on(&agent, s, 2).await;
    }
    assert_on(&agent, "chat", 1).await;
    clean_hosts();
    eprintln!("fleet test took {:?}", started.elapsed());
}

#[tokio::test]
async fn independent_steps_overlap_and_a_failure_skips_only_its_dependants() {
    let dir = tempfile::tempdir().unwrap();
    let repo = GitRepo::new(dir.path());
    let agent = agent(dir.path(), &repo, "max_parallel_steps = 3\n");
    let pipeline = "app: g9-graph\nsteps:\n\
        \x20 - {name: a, image: lab/busybox:1, commands: [\"sleep 2\", \"echo a-done\"]}\n\
        \x20 - {name: b, image: lab/busybox:1, commands: [\"sleep 2\", \"echo b-done\"]}\n\
        \x20 - {name: broken, image: lab/busybox:1, commands: [\"exit 3\"]}\n\
        \x20 - {name: after-broken, needs: [broken], image: lab/busybox:1, commands: [\"echo never\"]}\n\
        \x20 - {name: later, needs: [after-broken], image: lab/busybox:1, commands: [\"echo never\"]}\n\
        \x20 - {name: last, needs: [a, b], image: lab/busybox:1, commands: [\"echo last-done\"]}\n";
    let run = push_and_wait(&agent, &repo, "graph", &[(".hoist.yml", pipeline)]).await;
    assert_eq!(run["status"], "failed", "{run:#}");
    let (a, b) = (step(&run, "a"), step(&run, "b"));
    assert_eq!(
        (&a["status"], &b["status"]),
        (&"success".into(), &"success".into())
    );
    assert!(
        overlap(a, b),
        "a and b need nothing and should overlap: {a:#} {b:#}"
    );
    assert_eq!(step(&run, "broken")["status"], "failed");
    assert_eq!(step(&run, "after-broken")["status"], "skipped");
    assert_eq!(
        step(&run, "after-broken")["reason"],
        "needs step broken, which failed"
    );
    assert_eq!(
        step(&run, "later")["reason"],
        "needs step after-broken, which was skipped"
    );
    // A failing step without dependants: the independent steps still finished.
    let last = step(&run, "last");
    assert_eq!(last["status"], "success", "{run:#}");
    assert!(
        millis(&last["started_at"]) >= millis(&a["finished_at"]).max(millis(&b["finished_at"]))
    );
    // Each step's log stays its own.
    let chunks = api(&agent, &format!("/runs/{}/logs", run["id"])).await;
    let index = |name: &str| step(&run, name)["index"].as_i64().unwrap();
    let of = |i: i64| -> String {
        chunks
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["step"] == i)
            .map(|c| c["data"].as_str().unwrap())
            .collect()
    };
    assert!(of(index("a")).contains("a-done") && !of(index("a")).contains("b-done"));
    assert!(of(index("b")).contains("b-done") && !of(index("b")).contains("a-done"));
    // `hoist logs` prints each step's log in one piece.
    let out = hoist_client(&agent, &["logs", &run["id"].to_string()]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let at = |needle: &str| {
        out.stdout
            .find(needle)
            .unwrap_or_else(|| panic!("{needle:?} missing:\n{}", out.stdout))
    };
    assert!(
        at("── step a ") < at("a-done")
            && at("a-done") < at("── step b ")
            && at("── step b ") < at("b-done"),
        "{}",
        out.stdout
    );

    // Cancel stops every running step.
    let slow = "app: g9-graph\nsteps:\n\
        \x20 - {name: one, image: lab/busybox:1, commands: [\"sleep 60\"]}\n\
        \x20 - {name: two, image: lab/busybox:1, commands: [\"sleep 60\"]}\n\
        \x20 - {name: three, needs: [one, two], image: lab/busybox:1, commands: [\"echo never\"]}\n";
    let commit = repo.commit("main", "slow", &[(".hoist.yml", slow)]);
    let id = push_github(&agent, REPO, "main", &commit, "slow").await["runs"][0]
        .as_i64()
        .unwrap();
    common::wait_for(
        &agent,
        &format!("/runs/{id}"),
        "two steps running",
        60,
        |r| {
            r["steps"]
                .as_array()
                .is_some_and(|s| s.iter().filter(|s| s["status"] == "running").count() == 2)
        },
    )
    .await;
    // Both containers exist before the cancel (the steps are really running).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let asked = Instant::now();
    let r = api_post(&agent, &format!("/runs/{id}/cancel"), None).await;
    assert!(r.status().is_success(), "{}", r.status());
    let run = common::wait_for(&agent, &format!("/runs/{id}"), "cancelled", 30, |r| {
        r["status"] == "cancelled"
    })
    .await;
    assert!(
        asked.elapsed() < Duration::from_secs(20),
        "{:?}",
        asked.elapsed()
    );
    for s in ["one", "two"] {
        assert_eq!(step(&run, s)["status"], "cancelled", "{run:#}");
    }
    assert_eq!(step(&run, "three")["status"], "skipped", "{run:#}");
}

#[test]
fn hoist_run_honours_needs_and_validate_names_the_apps() {
    let docker = lab::builder_url();
    let dir = tempfile::tempdir().unwrap();
    let repo = GitRepo::new(dir.path());
    // `slow` and `quick` need nothing: `quick` ends while `slow` still runs; `after` waits for both.
    let yml = "app: g9-local\nsteps:\n\
        \x20 - {name: slow, image: lab/busybox:1, commands: [\"sleep 2\", \"echo slow-done\"]}\n\
        \x20 - {name: quick, image: lab/busybox:1, commands: [\"echo quick-done\"]}\n\
        \x20 - {name: after, needs: [slow, quick], image: lab/busybox:1, commands: [\"echo after-done\"]}\n\
        \x20 - {name: broken, needs: [quick], image: lab/busybox:1, commands: [\"exit 5\"]}\n\
        \x20 - {name: never, needs: [broken], image: lab/busybox:1, commands: [\"echo never-runs\"]}\n";
    repo.commit("main", "local graph", &[(".hoist.yml", yml)]);
    let out = common::hoist(&["run", "--docker", &docker, repo.work.to_str().unwrap()]);
    let text = &out.stdout;
    assert_eq!(out.code, Some(1), "{text}\n{}", out.stderr);
    let at = |needle: &str| {
        text.find(needle)
            .unwrap_or_else(|| panic!("{needle:?} missing:\n{text}"))
    };
    assert!(at("quick | quick-done") < at("slow | slow-done"), "{text}");
    assert!(at("slow | slow-done") < at("after | after-done"), "{text}");
    assert!(
        text.contains("── step never skipped: needs step broken, which failed"),
        "{text}"
    );
    assert!(!text.contains("never-runs"), "{text}");

    let fleet = dir.path().join("fleet.yml");
    std::fs::write(
        &fleet,
        fleet_pipeline(&[18001, 18002, 18003, 18004], None, true),
    )
    .unwrap();
    let out = common::hoist(&["validate", fleet.to_str().unwrap()]);
    assert_eq!(out.code, Some(0), "{}", out.stdout);
    assert!(
        out.stdout
            .contains("ok (apps g9-auth, g9-user, g9-chat, g9-file, 8 steps as their needs allow)"),
        "{}",
        out.stdout
    );
}
