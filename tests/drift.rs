//! The drift watch (issue 11, item 6): a container stopped by hand, an image replaced by hand
//! (another digest run under the app's container name) and a host whose engine stops
//! answering are each reported within `watch_interval` + 1 s, in `/apps/{app}/hosts`,
//! `/metrics` and one `host.drifted` notification per change; with `rollout.repair: true` the
//! first two are brought back by `repair` deployments, read back here with the docker CLI.
//!
//! Faults are made with bollard on the lab engines, the way a person would with `docker stop`
//! and `docker run`. The engine that stops answering is lab host h4 reached through a unix
//! socket proxy this test owns (`h4p` in hoist.toml): stopping the proxy is the engine going
//! away for hoist, while the shared lab dockerd keeps running for everyone else.
//!
//! Names (the repository `acme/drift`, apps and containers `drift-*`) are this file's own.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use bollard::models::ContainerCreateBody;
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, RemoveContainerOptionsBuilder, RenameContainerOptionsBuilder,
    StopContainerOptionsBuilder,
};
use common::lab::{self, Clean, docker_lenient, on_host};
use common::{Agent, GitRepo, api, push_github, release, token_toml, wait_for};
use serde_json::Value;

const REPO: &str = "acme/drift";

/// How often the agents of this file read back their hosts.
const WATCH: Duration = Duration::from_secs(1);

/// The bound the issue sets: a drift is reported within one interval and a second.
const REPORTED_WITHIN: Duration = Duration::from_secs(2);

/// The app's image: busybox httpd serving `/www` (with `/healthz`), stopped cleanly by TERM.
const DOCKERFILE: &str = "FROM lab/busybox:1\nCOPY www /www\nCMD [\"sh\", \"-c\", \"httpd -f -p 8080 -h /www & pid=$!; trap 'kill $pid; exit 0' TERM INT; wait $pid\"]\n";

/// A chat room's incoming webhook on loopback: every JSON body it got, with when.
#[derive(Clone, Default)]
struct Room {
    /// (when it arrived, the body). A std Mutex: never held across an `.await`.
    got: Arc<Mutex<Vec<(Instant, Value)>>>,
    /// `http://127.0.0.1:PORT/hook`.
    url: String,
}

impl Room {
    async fn open() -> Room {
        let mut room = Room::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        room.url = format!("http://{}/hook", listener.local_addr().unwrap());
        let got = room.got.clone();
        let app = axum::Router::new().fallback(move |body: Bytes| {
            let got = got.clone();
            async move {
                let v = serde_json::from_slice(&body).unwrap_or(Value::Null);
                got.lock().unwrap().push((Instant::now(), v));
                "ok"
            }
        });
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        room
    }

    /// The `host.drifted` messages about `host`, in arrival order.
    fn about(&self, host: &str) -> Vec<(Instant, Value)> {
        self.got
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, v)| v["event"] == "host.drifted" && v["host"] == host)
            .cloned()
            .collect()
    }

    /// The first message about `host` that arrived after `since` with a reason starting
    /// with `reason`.
    fn first_after(&self, host: &str, reason: &str, since: Instant) -> Option<(Instant, Value)> {
        self.about(host).into_iter().find(|(at, v)| {
            *at >= since && v["reason"].as_str().is_some_and(|r| r.starts_with(reason))
        })
    }
}

/// A unix socket that forwards every connection to lab host h4's engine, until stopped.
struct Proxy {
    path: PathBuf,
    accept: tokio::task::JoinHandle<()>,
    conns: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl Proxy {
    fn start(dir: &Path) -> Proxy {
        let path = dir.join("h4.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let target = lab::socket("h4")
            .strip_prefix("unix://")
            .unwrap()
            .to_string();
        let conns: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>> = Default::default();
        let held = conns.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let target = target.clone();
                let conn = tokio::spawn(async move {
                    if let Ok(mut out) = tokio::net::UnixStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                    }
                });
                held.lock().unwrap().push(conn);
            }
        });
        Proxy {
            path,
            accept,
            conns,
        }
    }

    /// The engine goes away: no more connections, open ones cut, the socket file gone.
    fn stop(&self) {
        self.accept.abort();
        for c in self.conns.lock().unwrap().drain(..) {
            c.abort();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Removes the container named like the app on a host when dropped: the one this test ran
/// by hand carries no `hoist.app` label, so `Clean` does not see it.
struct ByName(&'static str, &'static str);

impl Drop for ByName {
    fn drop(&mut self) {
        docker_lenient(self.0, &["rm", "-f", self.1]);
    }
}

/// The agent: the lab's builder and registry, `hosts` (lab hosts and `[host.NAME]` tables in
/// `extra_hosts`), a 1 s watch, and one `[[notify]]` for `host.drifted` to `room`.
fn agent(dir: &Path, repo: &GitRepo, hosts: &[&str], extra_hosts: &str, room: &Room) -> Agent {
    let lab_hosts: String = hosts
        .iter()
        .filter(|h| lab::ALL_HOSTS.contains(h))
        .map(|h| {
            format!(
                "[host.{h}]\ndocker = {:?}\naddress = {:?}\n",
                lab::socket(h),
                lab::address(h)
            )
        })
        .collect();
    let config = format!(
        "listen = \"127.0.0.1:0\"\ndata_dir = {:?}\n[builder]\ndocker = {:?}\n\
         [runner]\npoll_interval = \"0s\"\nwatch_interval = \"{}ms\"\n\
         [[repo]]\nname = {REPO:?}\nurl = {:?}\nforge = \"github\"\nsecret = \"env:E2E_HOOK_SECRET\"\nhosts = {hosts:?}\n\
         [[registry]]\nhost = {:?}\ninsecure = true\n\
         [[notify]]\nurl = \"env:DRIFT_ROOM_URL\"\nevents = [\"host.drifted\"]\n{}{lab_hosts}{extra_hosts}",
        dir.join("data"),
        lab::builder_url(),
        WATCH.as_millis(),
        repo.bare,
        lab::REGISTRY,
        token_toml(),
    );
    std::fs::write(dir.join("hoist.toml"), &config).unwrap();
    Agent::launch_with_env(dir, &config, &[("DRIFT_ROOM_URL", room.url.clone())])
}

/// The pipeline of `app` on `hosts`: an engine-picked port, `repair` as given.
fn pipeline(app: &str, hosts: &[&str], repair: bool) -> String {
    format!(
        "app: {app}\nsteps:\n\
         \x20 - name: build\n    build:\n      context: .\n      \
         repository: {registry}/hoist-e2e/{app}\n      tags: [\"${{commit_short}}\"]\n\
         \x20 - name: ship\n    deploy:\n      image: build\n      hosts: {hosts:?}\n      \
         container:\n        name: {app}\n        ports: [\"8080\"]\n      health:\n        \
         http: {{ port: 8080, path: /healthz }}\n        interval: 200ms\n        timeout: 2s\n        \
         healthy_for: 400ms\n        deadline: 30s\n      \
         rollout:\n        max_parallel: 3\n        keep: 3\n        repair: {repair}\n",
        registry = lab::REGISTRY,
    )
}

/// Push releases 1 and 2 of `yml` and wait until both runs deployed; their digests.
async fn two_releases(agent: &Agent, repo: &GitRepo, app: &str, yml: &str) -> (String, String) {
    for version in ["one\n", "two\n"] {
        let files = [
            (".hoist.yml", yml),
            ("Dockerfile", DOCKERFILE),
            ("www/healthz", "ok\n"),
            ("www/version", version),
        ];
        let commit = repo.commit("main", version, &files);
        let answer = push_github(agent, REPO, "main", &commit, version).await;
        let run = answer["runs"][0].as_i64().expect("a run");
        let run = wait_for(agent, &format!("/runs/{run}"), "ended", 300, |r| {
            !["queued", "running", "waiting"].contains(&r["status"].as_str().unwrap_or(""))
        })
        .await;
        assert_eq!(run["status"], "success", "{version}: {run:#}");
    }
    let digest = |n| async move {
        release(agent, app, n).await["manifest_digest"]
            .as_str()
            .unwrap()
            .to_string()
    };
    (digest(1).await, digest(2).await)
}

/// `drift` of each host in `/apps/{app}/hosts`.
async fn drifts(agent: &Agent, app: &str) -> HashMap<String, Value> {
    api(agent, &format!("/apps/{app}/hosts"))
        .await
        .as_array()
        .unwrap()
        .iter()
        .map(|h| (h["host"].as_str().unwrap().to_string(), h["drift"].clone()))
        .collect()
}

/// `hoist_hosts_drifted` in `/metrics`.
async fn drifted_gauge(agent: &Agent) -> i64 {
    let text = reqwest::get(format!("{}/metrics", agent.url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("hoist_hosts_drifted "))
        .unwrap_or_else(|| panic!("no hoist_hosts_drifted in /metrics:\n{text}"))
        .parse()
        .unwrap()
}

/// Stop container `name` on lab host `h` as `docker stop` would; returns when it stopped.
async fn stop_by_hand(h: &str, name: &str) -> Instant {
    let docker = lab::engine(h).await;
    let options = StopContainerOptionsBuilder::default().t(5).build();
    docker.stop_container(name, Some(options)).await.unwrap();
    Instant::now()
}

/// Run `image` under container name `name` on lab host `h` in place of what runs there, as a
/// person would with `docker run --name` and renames: the new one started under a side name,
/// the old one renamed away, the new one renamed in, the old one removed; so that the name is
/// missing for a moment only (the engine takes a while to remove a container's files, and
/// `docker rm -f` first would leave it there, stopped, meanwhile). `labels` are what the
/// person passed with `--label`.
async fn replace_by_hand(
    h: &str,
    name: &str,
    image: &str,
    labels: HashMap<String, String>,
) -> Instant {
    let docker = lab::engine(h).await;
    let side = format!("{name}-by-hand");
    let body = ContainerCreateBody {
        image: Some(image.to_string()),
        labels: Some(labels),
        ..Default::default()
    };
    let options = CreateContainerOptionsBuilder::default().name(&side).build();
    docker.create_container(Some(options), body).await.unwrap();
    docker.start_container(&side, None).await.unwrap();
    let away = format!("{name}-replaced");
    let rename = |to: &str| RenameContainerOptionsBuilder::default().name(to).build();
    docker.rename_container(name, rename(&away)).await.unwrap();
    docker.rename_container(&side, rename(name)).await.unwrap();
    let done = Instant::now();
    let rm = RemoveContainerOptionsBuilder::default().force(true).build();
    docker.remove_container(&away, Some(rm)).await.unwrap();
    done
}

/// The first message about `host` after `since` whose reason starts with `reason`, waited
/// for; how long after `since` it arrived.
async fn reported(room: &Room, host: &str, reason: &str, since: Instant) -> (Duration, Value) {
    let (at, v) = common::wait_until(
        &format!("a host.drifted message about {host} saying {reason:?}"),
        30,
        || async {
            room.first_after(host, reason, since)
                .ok_or_else(|| format!("{:#?}", room.about(host)))
        },
    )
    .await;
    (at.duration_since(since), v)
}

#[tokio::test]
async fn a_stopped_container_a_replaced_image_and_a_gone_engine_are_each_reported_once() {
    const APP: &str = "drift-watch";
    lab::check_host("h4");
    let _clean = Clean::new(APP);
    let _by_hand = ByName("h2", APP);
    docker_lenient("h2", &["rm", "-f", APP]);
    let dir = tempfile::tempdir().unwrap();
    let repo = GitRepo::new(dir.path());
    let room = Room::open().await;
    let proxy = Proxy::start(dir.path());
    let h4p = format!(
        "[host.h4p]\ndocker = \"unix://{}\"\naddress = {:?}\n",
        proxy.path.display(),
        lab::address("h4")
    );
    let hosts = ["h1", "h2", "h4p"];
    let agent = agent(dir.path(), &repo, &hosts, &h4p, &room);
    let (d1, d2) = two_releases(&agent, &repo, APP, &pipeline(APP, &hosts, false)).await;
    for h in ["h1", "h2", "h4"] {
        let s = on_host(h, APP);
        assert!(s.running && s.digests.contains(&d2), "{h}: {s:?}");
    }
    // As hoist left them: no drift, and the watch has had time to look.
    wait_for(
        &agent,
        &format!("/apps/{APP}/hosts"),
        "free of drift",
        10,
        |v| {
            v.as_array().unwrap().len() == 3
                && v.as_array().unwrap().iter().all(|h| h["drift"].is_null())
        },
    )
    .await;
    tokio::time::sleep(WATCH * 2).await;
    assert!(
        room.about("h1").is_empty(),
        "{:#?}",
        room.got.lock().unwrap()
    );
    assert_eq!(drifted_gauge(&agent).await, 0);

    // 1. `docker stop` on h1.
    let stopped = stop_by_hand("h1", APP).await;
    let (took, msg) = reported(&room, "h1", "stopped", stopped).await;
    println!(
        "drift watch: stopped container on h1 reported (notification received) {took:?} after the stop"
    );
    assert!(took <= REPORTED_WITHIN, "reported after {took:?}: {msg:#}");
    assert_eq!(msg["reason"], "stopped", "{msg:#}");
    assert_eq!(msg["app"], APP);
    assert_eq!(msg["release"], 2);
    assert_eq!(msg["digest"], d2.as_str());
    assert!(msg["text"].as_str().unwrap().contains("h1"), "{msg:#}");
    assert_eq!(drifts(&agent, APP).await["h1"], "stopped");

    // 2. Release 1's image run by hand under the app's name on h2: another digest.
    let image = format!("{}/hoist-e2e/{APP}@{d1}", lab::REGISTRY);
    let replaced = replace_by_hand("h2", APP, &image, HashMap::new()).await;
    let (took, msg) = reported(&room, "h2", "another digest", replaced).await;
    println!("drift watch: replaced image on h2 reported {took:?} after the replacement");
    assert!(took <= REPORTED_WITHIN, "reported after {took:?}: {msg:#}");
    assert_eq!(msg["reason"], format!("another digest {d1}"), "{msg:#}");

    // 3. h4's engine goes away for hoist.
    proxy.stop();
    let gone = Instant::now();
    let (took, msg) = reported(&room, "h4p", "engine unreachable", gone).await;
    println!("drift watch: unreachable engine (h4p) reported {took:?} after it went away");
    assert!(took <= REPORTED_WITHIN, "reported after {took:?}: {msg:#}");
    let now = drifts(&agent, APP).await;
    assert!(
        now["h4p"]
            .as_str()
            .unwrap()
            .starts_with("engine unreachable: "),
        "{now:#?}"
    );
    assert_eq!(now["h1"], "stopped", "{now:#?}");
    assert!(
        now["h2"].as_str().unwrap().starts_with("another digest"),
        "{now:#?}"
    );
    assert_eq!(drifted_gauge(&agent).await, 3);

    // The watch goes on with an engine gone: h1 started again by hand clears, and says so.
    let docker = lab::engine("h1").await;
    docker.start_container(APP, None).await.unwrap();
    let restarted = Instant::now();
    let (took, cleared) = common::wait_until("h1's drift to clear", 30, || async {
        room.about("h1")
            .into_iter()
            .find(|(at, v)| *at >= restarted && v["cleared"] == true)
            .map(|(at, v)| (at.duration_since(restarted), v))
            .ok_or_else(|| format!("{:#?}", room.about("h1")))
    })
    .await;
    println!("drift watch: h1 back as hoist left it reported {took:?} after the start");
    assert!(cleared["reason"].is_null(), "{cleared:#}");
    assert!(drifts(&agent, APP).await["h1"].is_null());

    // Once per change, not once per tick: let a few ticks pass with nothing changing.
    tokio::time::sleep(WATCH * 4).await;
    let reasons = |h: &str| -> Vec<String> {
        room.about(h)
            .iter()
            .map(|(_, v)| v["reason"].as_str().unwrap_or("cleared").to_string())
            .collect()
    };
    assert_eq!(reasons("h1"), ["stopped", "cleared"]);
    assert_eq!(reasons("h4p").len(), 1, "{:?}", reasons("h4p"));
    // A tick may have seen the name missing between the two renames: a change too; then the
    // replacement, once.
    let h2 = reasons("h2");
    let (last, earlier) = h2.split_last().unwrap();
    assert_eq!(last, &format!("another digest {d1}"), "{h2:?}");
    assert!(earlier.is_empty() || earlier == ["missing"], "{h2:?}");
    assert_eq!(drifted_gauge(&agent).await, 2);

    // A restart keeps what was found (the store), and sends nothing again for it.
    let mut agent = agent;
    agent.terminate();
    let agent = Agent::launch_with_env(dir.path(), "", &[("DRIFT_ROOM_URL", room.url.clone())]);
    assert!(
        drifts(&agent, APP).await["h2"]
            .as_str()
            .unwrap()
            .starts_with("another digest")
    );
    tokio::time::sleep(WATCH * 3).await;
    assert_eq!(
        reasons("h2"),
        h2,
        "a restart must not notify an unchanged drift again"
    );
}

#[tokio::test]
async fn with_repair_a_stopped_container_and_a_replaced_image_are_repaired_and_verified() {
    const APP: &str = "drift-repair";
    let _clean = Clean::new(APP);
    let dir = tempfile::tempdir().unwrap();
    let repo = GitRepo::new(dir.path());
    let room = Room::open().await;
    let hosts = ["h1", "h2", "h3"];
    let agent = agent(dir.path(), &repo, &hosts, "", &room);
    let (d1, d2) = two_releases(&agent, &repo, APP, &pipeline(APP, &hosts, true)).await;
    let before: HashMap<&str, String> = hosts.iter().map(|h| (*h, on_host(h, APP).id)).collect();

    // `docker stop` on h1; on h2 release 1 run by hand with hoist's labels (as copied from
    // its kept container), so that hoist may replace it.
    let stopped = stop_by_hand("h1", APP).await;
    let labels = HashMap::from([
        ("hoist.app".to_string(), APP.to_string()),
        ("hoist.release".to_string(), "1".to_string()),
        ("hoist.digest".to_string(), d1.clone()),
    ]);
    let image = format!("{}/hoist-e2e/{APP}@{d1}", lab::REGISTRY);
    replace_by_hand("h2", APP, &image, labels).await;
    let (took, _) = reported(&room, "h1", "stopped", stopped).await;
    println!("drift repair: stopped container on h1 reported {took:?} after the stop");
    assert!(took <= REPORTED_WITHIN, "reported after {took:?}");

    // Both come back on release 2 by repair deployments; read back with the docker CLI.
    common::wait_until("h1 and h2 repaired", 120, || async {
        let now: Vec<_> = ["h1", "h2"].iter().map(|h| (*h, on_host(h, APP))).collect();
        if now.iter().all(|(h, s)| {
            s.running && s.digests.contains(&d2) && s.release == "2" && s.id != before[h]
        }) {
            Ok(())
        } else {
            Err(format!("{now:#?}"))
        }
    })
    .await;
    println!(
        "drift repair: h1 and h2 read back on release 2 {:?} after the first fault",
        stopped.elapsed()
    );
    let h3 = on_host("h3", APP);
    assert_eq!(
        h3.id, before["h3"],
        "h3 did not drift and must not be touched"
    );
    let clear = wait_for(
        &agent,
        &format!("/apps/{APP}/hosts"),
        "free of drift",
        30,
        |v| v.as_array().unwrap().iter().all(|h| h["drift"].is_null()),
    )
    .await;
    for h in clear.as_array().unwrap() {
        assert_eq!(h["digest_read_back"], d2.as_str(), "{h:#}");
    }
    assert_eq!(drifted_gauge(&agent).await, 0);

    // Each repair is a deployment of kind `repair`, of one host, verified on release 2.
    let list = api(&agent, &format!("/apps/{APP}/deployments")).await;
    let repairs: Vec<&Value> = list
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["kind"] == "repair")
        .collect();
    assert_eq!(repairs.len(), 2, "{list:#}");
    let mut repaired = Vec::new();
    for d in repairs {
        assert_eq!(d["status"], "succeeded", "{d:#}");
        assert_eq!(d["to_release"], 2, "{d:#}");
        assert!(
            d["requested_by"]
                .as_str()
                .unwrap()
                .starts_with("drift watch"),
            "{d:#}"
        );
        let full = api(&agent, &format!("/deployments/{}", d["id"])).await;
        let hosts = full["hosts"].as_array().unwrap();
        assert_eq!(hosts.len(), 1, "{full:#}");
        assert_eq!(hosts[0]["state"], "verified", "{full:#}");
        assert_eq!(hosts[0]["read_back"], d2.as_str(), "{full:#}");
        repaired.push(hosts[0]["host"].as_str().unwrap().to_string());
    }
    repaired.sort();
    assert_eq!(repaired, ["h1", "h2"]);
    // The room heard of each drift and of its end.
    for h in ["h1", "h2"] {
        let msgs = room.about(h);
        assert!(
            msgs.last().is_some_and(|(_, v)| v["cleared"] == true),
            "{msgs:#?}"
        );
    }
}
