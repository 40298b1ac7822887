//! The operator's page (issue 12) in headless Chromium, driven over WebDriver (chromedriver,
//! through `fantoccini`), against the real agent, build engine, registry and the lab's three
//! hosts; and `/metrics`, parsed as Prometheus text.
//!
//! One test walks it all with one agent and one browser: the token is typed in; a run's page
//! follows a running run live to its end; a deployment's page shows every host; a rollback
//! started from the app page (pick, confirm) opens the new deployment's page, which ends with
//! every host verified (read back with the docker CLI too); a run is cancelled from its page
//! and a rollout aborted from its deployment's page, every host back on the release before. On every page, at 1280×800 and at
//! 390×844, no two visible pieces of text overlap and nothing but a log scrolls sideways.
//!
//! `HOIST_PAGE_SCREENSHOTS=DIR` keeps a screenshot of each page at each size there.
//!
//! Names (repository `acme/page`, app and container `pageapp`, its port from `free_port`) are
//! this file's own. A browser or driver that cannot start fails the test with the reason.

mod common;

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::lab::{self, Clean, HOSTS, on_host};
use common::{Agent, GitRepo, TOKEN, api, push_github, release, token_toml, wait_until};
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};

const REPO: &str = "acme/page";
const APP: &str = "pageapp";
const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

fn agent(dir: &Path, repo: &GitRepo) -> Agent {
    let config = format!(
        "listen = \"127.0.0.1:0\"\ndata_dir = {:?}\n[builder]\ndocker = {:?}\n\
         [runner]\npoll_interval = \"0s\"\nmax_parallel = 1\n\
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

const DOCKERFILE: &str =
    "FROM lab/busybox:1\nCOPY www /www\nCOPY start.sh /start.sh\nCMD [\"sh\", \"/start.sh\"]\n";
const START: &str = "httpd -f -p 8080 -h /www &\npid=$!\n\
trap 'kill \"$pid\"; exit 0' TERM INT\nwait \"$pid\"\n";
/// The slow step: coloured lines, one a second, so that the page sees it running.
const SLOW: &str = "i=1\nwhile [ $i -le 8 ]; do\n  printf '\\033[32mpage line %s\\033[0m\\n' $i\n  \
                    i=$((i + 1))\n  sleep 1\ndone\necho 'page: all lines written'\n";

/// The pipeline of every commit here, its hosts published on `port`; each host must stay
/// healthy for `healthy_for` before the next one switches.
fn pipeline(port: u16, healthy_for: &str) -> String {
    format!(
        "app: {APP}\nsteps:\n\
         \x20 - name: slow\n    image: lab/busybox:1\n    commands: [\"sh slow.sh\"]\n\
         \x20 - name: build\n    build:\n      context: .\n      \
         repository: {registry}/hoist-e2e/{APP}\n      tags: [\"${{commit_short}}\"]\n\
         \x20 - name: ship\n    deploy:\n      image: build\n      \
         hosts: [h1, h2, h3]\n      container:\n        name: {APP}\n        \
         ports: [\"{port}:8080\"]\n      health:\n        http: {{ port: 8080, path: /healthz }}\n        \
         interval: 200ms\n        timeout: 1s\n        healthy_for: {healthy_for}\n        deadline: 20s\n      \
         rollout:\n        max_parallel: 1\n        bake: 0s\n        keep: 3\n",
        registry = lab::REGISTRY
    )
}

fn files<'a>(pipeline: &'a str, version: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        (".hoist.yml", pipeline),
        ("Dockerfile", DOCKERFILE),
        ("start.sh", START),
        ("slow.sh", SLOW),
        ("www/healthz", "ok\n"),
        ("www/version", version),
    ]
}

/// chromedriver on a port of its own, in a process group of its own that the Chromium it
/// starts joins: dropped (also when the test fails), the whole group is killed, so that no
/// browser outlives the test.
struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.0.id())])
            .status();
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Start chromedriver and a headless Chromium session with a new, empty profile. The flags
/// keep Chromium off every network but loopback (no sync, updates, QUIC or first-run calls).
async fn browser(dir: &Path) -> (Driver, Client) {
    for bin in [CHROMIUM, CHROMEDRIVER] {
        assert!(
            Path::new(bin).exists(),
            "{bin} is missing: install the Debian packages chromium and chromium-driver (scripts/test does)"
        );
    }
    let port = lab::free_port();
    let child = Command::new(CHROMEDRIVER)
        .arg(format!("--port={port}"))
        .process_group(0)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {CHROMEDRIVER}: {e}"));
    let driver = Driver(child);
    let profile = dir.join("chromium-profile");
    std::fs::create_dir_all(&profile).unwrap();
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": CHROMIUM,
            "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage",
                format!("--user-data-dir={}", profile.display()),
            ],
        }),
    );
    let url = format!("http://127.0.0.1:{port}");
    // chromedriver listens within a second or two; the session starts Chromium.
    let client = wait_until("chromedriver to start a Chromium session", 60, || {
        let caps = caps.clone();
        let url = url.clone();
        async move {
            ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
                .capabilities(caps)
                .connect(&url)
                .await
                .map_err(|e| format!("{e}"))
        }
    })
    .await;
    (driver, client)
}

/// Make the page's viewport exactly `w`×`h`: the window is resized, and grown by its frame
/// (if any) once the page has seen the resize, which it does asynchronously.
async fn viewport(c: &Client, w: u32, h: u32) {
    let inner = || async {
        let v = c
            .execute("return [window.innerWidth, window.innerHeight];", vec![])
            .await
            .unwrap();
        (v[0].as_u64().unwrap() as u32, v[1].as_u64().unwrap() as u32)
    };
    let (mut ow, mut oh) = (w, h);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        c.set_window_size(ow, oh).await.unwrap();
        let mut seen = inner().await;
        for _ in 0..20 {
            if seen == (w, h) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            seen = inner().await;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the viewport stays {seen:?} with the window at {ow}x{oh}, not {w}x{h}"
        );
        ow = (ow + w).saturating_sub(seen.0).max(w);
        oh = (oh + h).saturating_sub(seen.1).max(h);
    }
}

/// In the page: every visible piece of text (each text node's line boxes, so a parent's box
/// never counts as covering its children), and the pairs of them that overlap by more than a
/// pixel; the document's and every element's sideways overflow, except inside logs and code.
const LAYOUT_JS: &str = r##"
const boxes = [];
const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
for (let n; (n = walker.nextNode());) {
  if (!n.textContent.trim()) continue;
  const p = n.parentElement;
  if (!p || p.closest("script, style, option, noscript, [hidden]")) continue;
  const st = getComputedStyle(p);
  if (st.visibility === "hidden" || st.display === "none") continue;
  // What a scrolling ancestor (a log) clips away is not drawn: only the visible part counts.
  let clip = { x: -1e9, y: -1e9, r: 1e9, b: 1e9 };
  for (let a = p; a && a !== document.body; a = a.parentElement) {
    const s = getComputedStyle(a);
    if (s.overflowX === "visible" && s.overflowY === "visible") continue;
    const c = a.getBoundingClientRect();
    clip = { x: Math.max(clip.x, c.left), y: Math.max(clip.y, c.top), r: Math.min(clip.r, c.right), b: Math.min(clip.b, c.bottom) };
  }
  const r = document.createRange();
  r.selectNodeContents(n);
  for (const b of r.getClientRects()) {
    const box = { t: n.textContent.trim().slice(0, 40), x: Math.max(b.left, clip.x), y: Math.max(b.top, clip.y),
      r: Math.min(b.right, clip.r), b: Math.min(b.bottom, clip.b) };
    if (box.r - box.x < 1 || box.b - box.y < 1) continue;
    boxes.push(box);
  }
}
const overlaps = [];
for (let i = 0; i < boxes.length; i++) for (let j = i + 1; j < boxes.length; j++) {
  const a = boxes[i], b = boxes[j];
  const w = Math.min(a.r, b.r) - Math.max(a.x, b.x), h = Math.min(a.b, b.b) - Math.max(a.y, b.y);
  if (w > 1 && h > 1) overlaps.push(`${JSON.stringify(a.t)} over ${JSON.stringify(b.t)}`);
}
const wide = [];
for (const e of document.querySelectorAll("body *")) {
  if (e.closest("pre, code, .log")) continue;
  if (e.scrollWidth > e.clientWidth + 1 && e.clientWidth > 0 && getComputedStyle(e).overflowX !== "visible")
    wide.push(e.tagName + (e.id ? "#" + e.id : "") + "." + e.className);
  const r = e.getBoundingClientRect();
  if (r.width > 0 && r.right > window.innerWidth + 1) wide.push(e.tagName + (e.id ? "#" + e.id : "") + " ends at " + Math.round(r.right));
}
return { texts: boxes.length, overlaps: overlaps.slice(0, 20), wide: wide.slice(0, 20),
  doc: document.documentElement.scrollWidth, inner: window.innerWidth };
"##;

/// Open `hash` at both sizes and check the layout once `ready` (a CSS selector) shows.
async fn check_layout(c: &Client, base: &str, hash: &str, ready: &str) {
    for (w, h) in [(1280, 800), (390, 844)] {
        viewport(c, w, h).await;
        c.goto(&format!("{base}/{hash}")).await.unwrap();
        c.wait()
            .at_most(Duration::from_secs(30))
            .for_element(Locator::Css(ready))
            .await
            .unwrap_or_else(|e| panic!("{hash} at {w}x{h}: no {ready}: {e}"));
        // One more refresh round so that every section has drawn what it fetched.
        wait_until(&format!("{hash} at {w}x{h} to settle"), 20, || async {
            let r = c.execute("return document.querySelectorAll('.error:not(:empty)').length === 0 && !document.body.innerText.includes('loading');", vec![]).await;
            match r {
                Ok(Value::Bool(true)) => Ok(()),
                other => Err(format!("{other:?}")),
            }
        })
        .await;
        if let Ok(keep) = std::env::var("HOIST_PAGE_SCREENSHOTS") {
            let name = hash.trim_start_matches("#/").replace('/', "-");
            let png = c.screenshot().await.unwrap();
            std::fs::write(Path::new(&keep).join(format!("{name}-{w}x{h}.png")), png).unwrap();
        }
        // Outside logs (whose text is the run's own), no value the page failed to render.
        let page = c
            .execute(
                "const b = document.body.cloneNode(true); b.querySelectorAll('pre, script, style, noscript').forEach(p => p.remove()); return b.textContent;",
                vec![],
            )
            .await
            .unwrap()
            .as_str()
            .unwrap_or_default()
            .to_string();
        for junk in ["[object", "undefined", "NaN", "null"] {
            assert!(
                !page.contains(junk),
                "{hash} at {w}x{h} shows {junk:?}: {page}"
            );
        }
        let out = c.execute(LAYOUT_JS, vec![]).await.unwrap();
        assert!(
            out["texts"].as_u64().unwrap() > 10,
            "{hash} at {w}x{h}: almost no text: {out}"
        );
        assert_eq!(
            out["overlaps"],
            json!([]),
            "{hash} at {w}x{h}: text overlaps: {out}"
        );
        assert_eq!(
            out["wide"],
            json!([]),
            "{hash} at {w}x{h}: scrolls sideways: {out}"
        );
        assert!(
            out["doc"].as_u64() <= out["inner"].as_u64(),
            "{hash} at {w}x{h}: the document is wider than the window: {out}"
        );
    }
}

/// The page's text.
async fn text(c: &Client) -> String {
    c.execute("return document.body.innerText;", vec![])
        .await
        .unwrap()
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// What `<body data-status>` says (the status the run or deployment page last drew).
async fn shown_status(c: &Client) -> String {
    c.execute("return document.body.dataset.status || '';", vec![])
        .await
        .unwrap()
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// `/metrics`, parsed by a Prometheus text-format parser.
async fn metrics(agent: &Agent) -> prometheus_parse::Scrape {
    let text = reqwest::get(format!("{}/metrics", agent.url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string())))
        .unwrap_or_else(|e| panic!("/metrics does not parse: {e}\n{text}"))
}

/// The value of the sample `name` whose labels include `labels` (0 when absent).
fn sample(s: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    s.samples
        .iter()
        .filter(|x| x.metric == name)
        .filter(|x| labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v)))
        .map(|x| match x.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => 0.0,
        })
        .sum()
}

async fn wait_run(agent: &Agent, id: i64) -> Value {
    common::wait_for(agent, &format!("/runs/{id}"), "ended", 400, |r| {
        !matches!(
            r["status"].as_str().unwrap_or(""),
            "queued" | "running" | "waiting"
        )
    })
    .await
}

#[tokio::test]
async fn the_page_follows_runs_and_deployments_and_rolls_back() {
    lab::check_registry();
    let _clean = Clean::new(APP);
    let dir = tempfile::tempdir().unwrap();
    let repo = GitRepo::new(dir.path());
    let agent = agent(dir.path(), &repo);
    let (_driver, c) = browser(dir.path()).await;
    let base = agent.url.clone();
    let before = metrics(&agent).await;
    assert_eq!(
        sample(&before, "hoist_runs_finished_total", &[]),
        0.0,
        "a new agent has finished no run"
    );

    // The token is typed in.
    viewport(&c, 1280, 800).await;
    c.goto(&format!("{base}/")).await.unwrap();
    let input = c
        .wait()
        .at_most(Duration::from_secs(20))
        .for_element(Locator::Css("#token"))
        .await
        .unwrap();
    input.send_keys(TOKEN).await.unwrap();
    c.find(Locator::Css("#login-form button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    c.wait()
        .at_most(Duration::from_secs(20))
        .for_element(Locator::Css("#runs-table"))
        .await
        .unwrap();

    // Release 1: its run's page, opened while it runs, follows it live to its end.
    let port = lab::free_port();
    let yml = pipeline(port, "400ms");
    let c1 = repo.commit("main", "one", &files(&yml, "one\n"));
    let answer = push_github(&agent, REPO, "main", &c1, "one").await;
    let run1 = answer["runs"][0].as_i64().expect("a run");
    c.goto(&format!("{base}/#/runs/{run1}")).await.unwrap();
    wait_until(
        "the run page to show the run running with a line of its log",
        120,
        || async {
            let status = shown_status(&c).await;
            let page = text(&c).await;
            if status == "running" && page.contains("page line 1") {
                Ok(())
            } else {
                Err(format!("status {status:?}: {page:.600}"))
            }
        },
    )
    .await;
    let run_now = api(&agent, &format!("/runs/{run1}")).await;
    assert_eq!(
        run_now["status"], "running",
        "the page saw it live: {run_now:#}"
    );
    // The lines are coloured (ANSI green rendered as a class, the escapes gone), in the slow
    // step's own log, each stamped with the time it was stored; the step shows how long so far.
    let seen = wait_until("the slow step's coloured, stamped lines and its duration so far", 30, || async {
        let seen = c
            .execute(
                "const pre = document.querySelector('[data-step=slow] pre.log');
                 return { green: [...pre.querySelectorAll('.fg2')].map(e => e.textContent).join('|'),
                          stamps: pre.querySelectorAll('.ts').length, text: pre.textContent,
                          duration: document.querySelector('[data-step=slow] .duration').textContent };",
                vec![],
            )
            .await
            .map_err(|e| e.to_string())?;
        if seen["duration"].as_str().unwrap_or("").ends_with("so far")
            && seen["stamps"].as_u64().unwrap_or(0) >= 1
        {
            Ok(seen)
        } else {
            Err(seen.to_string())
        }
    })
    .await;
    assert!(
        seen["green"].as_str().unwrap_or("").contains("page line 1"),
        "{seen}"
    );
    assert!(seen["stamps"].as_u64().unwrap_or(0) >= 1, "{seen}");
    assert!(!seen["text"].as_str().unwrap().contains('\u{1b}'), "{seen}");
    wait_until(
        "the run page to show the run's end without a reload",
        400,
        || async {
            let status = shown_status(&c).await;
            let page = text(&c).await;
            let complete = c
                .execute("return document.body.dataset.log === 'complete';", vec![])
                .await
                .unwrap();
            if status == "success"
                && complete == Value::Bool(true)
                && page.contains("page: all lines written")
                && page.contains("Image ID")
            {
                Ok(())
            } else {
                Err(format!("status {status:?}: {page:.1500}"))
            }
        },
    )
    .await;
    assert_eq!(wait_run(&agent, run1).await["status"], "success");
    let page = text(&c).await;
    assert!(
        !page.contains("so far"),
        "an ended run's durations are final: {page}"
    );
    let r1 = release(&agent, APP, 1).await;
    assert!(
        page.contains(r1["manifest_digest"].as_str().unwrap()),
        "the chain of custody names the manifest digest: {page}"
    );

    // The deployment's page shows every host, verified.
    let deps = api(&agent, &format!("/apps/{APP}/deployments")).await;
    let dep1 = deps[0]["id"].as_i64().unwrap();
    c.goto(&format!("{base}/#/deployments/{dep1}"))
        .await
        .unwrap();
    wait_until("the deployment page to show every host verified", 30, || async {
        let hosts = c
            .execute("return [...document.querySelectorAll('#deployment-hosts tbody tr')].map(r => r.innerText);", vec![])
            .await
            .unwrap();
        let rows: Vec<String> = serde_json::from_value(hosts.clone()).unwrap_or_default();
        let all = HOSTS
            .iter()
            .all(|h| rows.iter().any(|r| r.contains(h) && r.contains("verified")));
        if all && shown_status(&c).await == "succeeded" { Ok(()) } else { Err(format!("{hosts}")) }
    })
    .await;

    // Release 2, then a rollback to release 1 from the app page: pick, confirm.
    let c2 = repo.commit("main", "two", &files(&yml, "two\n"));
    let answer = push_github(&agent, REPO, "main", &c2, "two").await;
    let run2 = answer["runs"][0].as_i64().expect("a run");
    assert_eq!(wait_run(&agent, run2).await["status"], "success");
    c.goto(&format!("{base}/#/apps/{APP}")).await.unwrap();
    c.wait()
        .at_most(Duration::from_secs(20))
        .for_element(Locator::Css("#rollback-to option[value='1']"))
        .await
        .map(|_| ())
        .unwrap_or_else(|e| panic!("the picker never offered release 1: {e}"));
    c.find(Locator::Css("#rollback-to"))
        .await
        .unwrap()
        .select_by_value("1")
        .await
        .unwrap();
    c.find(Locator::Css("#rollback"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    c.wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Css("#rollback-yes"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let dep = wait_until("the rollback to open its deployment's page", 20, || async {
        let url = c.current_url().await.map_err(|e| e.to_string())?;
        url.fragment()
            .and_then(|f| f.strip_prefix("/deployments/"))
            .and_then(|id| id.parse::<i64>().ok())
            .ok_or(format!("at {url}"))
    })
    .await;
    assert!(dep > dep1);
    wait_until("the rollback's page to end with every host verified", 300, || async {
        let status = shown_status(&c).await;
        let hosts = c
            .execute("return [...document.querySelectorAll('#deployment-hosts tbody tr')].map(r => r.innerText);", vec![])
            .await
            .unwrap();
        let rows: Vec<String> = serde_json::from_value(hosts.clone()).unwrap_or_default();
        let all = HOSTS
            .iter()
            .all(|h| rows.iter().any(|r| r.contains(h) && r.contains("verified")));
        if status == "succeeded" && all { Ok(()) } else { Err(format!("{status}: {hosts}")) }
    })
    .await;
    let d = api(&agent, &format!("/deployments/{dep}")).await;
    assert_eq!(
        (&d["kind"], &d["to_release"], &d["status"]),
        (&json!("rollback"), &json!(1), &json!("succeeded")),
        "{d:#}"
    );
    // Read back independently of hoist: every host runs release 1's digest.
    let digest = r1["manifest_digest"].as_str().unwrap();
    for h in HOSTS {
        let s = on_host(h, APP);
        assert!(s.running && s.digests.contains(digest), "{h}: {s:?}");
    }

    // A run cancelled from its page while it runs.
    let c3 = repo.commit("main", "three", &files(&yml, "three\n"));
    let answer = push_github(&agent, REPO, "main", &c3, "three").await;
    let run3 = answer["runs"][0].as_i64().expect("a run");
    c.goto(&format!("{base}/#/runs/{run3}")).await.unwrap();
    wait_until("run 3's page to show it running", 120, || async {
        let status = shown_status(&c).await;
        let page = text(&c).await;
        if status == "running" && page.contains("page line 1") {
            Ok(())
        } else {
            Err(format!("status {status:?}: {page:.600}"))
        }
    })
    .await;
    c.wait()
        .at_most(Duration::from_secs(20))
        .for_element(Locator::Css(".controls:not([hidden]) #cancel"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_until("the cancelled run's page to say so", 60, || async {
        let status = shown_status(&c).await;
        if status == "cancelled" {
            Ok(())
        } else {
            Err(status)
        }
    })
    .await;
    let r3 = wait_run(&agent, run3).await;
    assert_eq!(r3["status"], "cancelled", "{r3:#}");
    assert!(
        !text(&c).await.contains("Cancel run"),
        "an ended run offers no cancel"
    );

    // A rollout aborted from its deployment's page while it runs: every host it touched is
    // put back on release 1 (each host must stay healthy 6 s, so there is time to press).
    let slow_yml = pipeline(port, "6s");
    let c4 = repo.commit("main", "four", &files(&slow_yml, "four\n"));
    let answer = push_github(&agent, REPO, "main", &c4, "four").await;
    let run4 = answer["runs"][0].as_i64().expect("a run");
    let dep4 = wait_until("run 4's rollout to start", 180, || async {
        let deps = api(&agent, &format!("/apps/{APP}/deployments")).await;
        match deps.as_array().and_then(|l| l.first()) {
            Some(d) if d["run"] == json!(run4) && d["status"] == "running" => {
                Ok(d["id"].as_i64().unwrap())
            }
            _ => Err(format!("{deps:#}")),
        }
    })
    .await;
    c.goto(&format!("{base}/#/deployments/{dep4}"))
        .await
        .unwrap();
    c.wait()
        .at_most(Duration::from_secs(20))
        .for_element(Locator::Css(".controls:not([hidden]) #abort"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_until("the aborted deployment's page to say so", 120, || async {
        let status = shown_status(&c).await;
        if status == "aborted" {
            Ok(())
        } else {
            Err(status)
        }
    })
    .await;
    let d4 = api(&agent, &format!("/deployments/{dep4}")).await;
    assert_eq!(d4["status"], "aborted", "{d4:#}");
    for h in HOSTS {
        let s = on_host(h, APP);
        assert!(
            s.running && s.digests.contains(digest),
            "{h} should be back on release 1: {s:?}"
        );
    }
    assert!(
        !text(&c).await.contains("Abort deployment"),
        "an ended deployment offers no abort"
    );
    wait_run(&agent, run4).await;

    // Layout: every page, both sizes.
    check_layout(&c, &base, "#/", "#runs-table tbody tr a").await;
    check_layout(&c, &base, &format!("#/runs/{run1}"), "#chain .card").await;
    check_layout(
        &c,
        &base,
        &format!("#/deployments/{dep}"),
        "#deployment-hosts tbody tr .host",
    )
    .await;
    check_layout(
        &c,
        &base,
        &format!("#/apps/{APP}"),
        "#app-hosts tbody tr .host",
    )
    .await;

    // Links lead from page to page, and the back button goes to the page before.
    c.goto(&format!("{base}/#/deployments/{dep1}"))
        .await
        .unwrap();
    c.wait()
        .at_most(Duration::from_secs(20))
        .for_element(Locator::Css(&format!("#view a[href='#/runs/{run1}']")))
        .await
        .map(|_| ())
        .unwrap_or_else(|e| panic!("the deployment's page links no run {run1}: {e}"));
    let to_app = c
        .wait()
        .at_most(Duration::from_secs(20))
        .for_element(Locator::Css(&format!("#view a[href='#/apps/{APP}']")))
        .await
        .unwrap();
    to_app.click().await.unwrap();
    c.wait()
        .at_most(Duration::from_secs(20))
        .for_element(Locator::Css("#app-hosts"))
        .await
        .unwrap();
    c.back().await.unwrap();
    wait_until("back to the deployment's page", 10, || async {
        let url = c.current_url().await.map_err(|e| e.to_string())?;
        let page = text(&c).await;
        if url.fragment() == Some(&format!("/deployments/{dep1}"))
            && page.contains(&format!("Deployment {dep1}"))
        {
            Ok(())
        } else {
            Err(format!("at {url}: {page:.300}"))
        }
    })
    .await;

    // /metrics moved with what happened: two runs succeeded, their six steps and the aborted
    // run's slow and build steps too, one run was cancelled, two rollouts and one rollback
    // succeeded and one rollout was aborted, four deliveries were stored, nothing waits.
    let after = metrics(&agent).await;
    assert_eq!(
        sample(
            &after,
            "hoist_runs_finished_total",
            &[("outcome", "success")]
        ),
        2.0
    );
    assert_eq!(
        sample(
            &after,
            "hoist_run_duration_seconds_count",
            &[("outcome", "success")]
        ),
        2.0
    );
    assert_eq!(
        sample(
            &after,
            "hoist_steps_finished_total",
            &[("outcome", "success")]
        ),
        8.0
    );
    assert_eq!(
        sample(
            &after,
            "hoist_deployments_finished_total",
            &[("kind", "rollout"), ("verdict", "succeeded")]
        ),
        2.0
    );
    assert_eq!(
        sample(
            &after,
            "hoist_deployments_finished_total",
            &[("kind", "rollback"), ("verdict", "succeeded")]
        ),
        1.0
    );
    assert_eq!(
        sample(
            &after,
            "hoist_runs_finished_total",
            &[("outcome", "cancelled")]
        ),
        1.0
    );
    assert_eq!(
        sample(
            &after,
            "hoist_deployments_finished_total",
            &[("kind", "rollout"), ("verdict", "aborted")]
        ),
        1.0
    );
    assert_eq!(sample(&after, "hoist_deliveries_accepted_total", &[]), 4.0);
    assert_eq!(sample(&after, "hoist_queue_depth", &[]), 0.0);
    assert!(sample(&after, "hoist_intake_seconds_count", &[]) >= 2.0);
    let _ = c.close().await;
}
