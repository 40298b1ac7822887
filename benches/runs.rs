//! Runs benchmark, in one run, against the lab's build engine:
//!
//! 1. delivery → first step container start: for N pushes (each a new commit), the time from
//!    the 202 to the moment the builder's engine reports the first step's container `start`
//!    (Docker events, `timeNano`), split into 202 → `create` (hoist's own work) and
//!    `create` → `start` (the engine, and hoist's attach);
//! 2. a 3-step pipeline (`lab/busybox:1`, each `echo step N` and `true`) run by hoist, from the
//!    202 to the SSE log stream's `event: end` (`success`), against the same three steps done by
//!    a bash script with the docker CLI after a `git clone` of the same commit; M pairs,
//!    interleaved;
//! 3. the agent's idle and peak RSS (VmRSS, VmHWM).
//!
//! Run: `scripts/bench-runs` (or `cargo bench --bench runs`). Bounded: BENCH_PUSHES (10) and
//! BENCH_REPS (5), one run at a time, a time limit per run and for the whole benchmark;
//! 127.0.0.1 and the lab's builder only. Needs the lab: `scripts/lab up`.

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bollard::Docker;
use bollard::query_parameters::EventsOptionsBuilder;
use futures_util::StreamExt;
use hoist::forge::Forge;
use serde_json::Value;

use common::{Agent, GitRepo, SECRET, TOKEN, builder, github_push, post, signed_headers};

const IMAGE: &str = "lab/busybox:1";
/// Longest one run (hoist's or the script's) may take.
const RUN_LIMIT: Duration = Duration::from_secs(60);
/// Longest the whole benchmark may take.
const BENCH_LIMIT: Duration = Duration::from_secs(300);
/// The label the script's containers carry, so that their events can be told apart.
const BENCH_LABEL: &str = "hoist.bench";

/// One container event from the builder: the action, the container's key label, when.
struct Ev {
    action: String,
    key: String,
    nanos: i64,
}

type Events = Arc<Mutex<Vec<Ev>>>;

/// What one hoist run measured, in ms from the 202.
struct HoistRun {
    create: f64,
    start: f64,
    end: f64,
    /// From the last step container's `destroy` to the SSE `event: end`.
    tail: f64,
}

fn main() {
    let pushes: usize = env_or("BENCH_PUSHES", 10);
    let reps: usize = env_or("BENCH_REPS", 5);
    let began = Instant::now();
    let builder_url = builder(); // fails with "start the lab with `scripts/lab up`" when down
    let rt = tokio::runtime::Runtime::new().unwrap();
    let docker = rt
        .block_on(hoist::engine::connect(&builder_url, None))
        .unwrap();
    let image_ok = rt.block_on(docker.inspect_image(IMAGE)).is_ok();
    assert!(
        image_ok,
        "image {IMAGE} is not on the builder {builder_url}; `scripts/lab up` restores it"
    );

    let dir = tempfile::tempdir().unwrap();
    let repo = GitRepo::new(dir.path());
    // Unique to this benchmark: its step names (the `hoist.step` label) and the script's labels,
    // so that other runs on the same builder never count.
    let tag = format!("bench{}x{}", std::process::id(), now_nanos() % 1_000_000);
    repo.commit(
        "main",
        "initial",
        &[(".hoist.yml", &pipeline(&tag, "init"))],
    );

    // Subscribe to the builder's events before any push; `since` replays anything that comes
    // before the stream is open.
    let events: Events = Arc::default();
    let since = format!("{:.3}", now_nanos() as f64 / 1e9 - 1.0);
    for label in [hoist::runner::RUN_LABEL, BENCH_LABEL] {
        let key = if label == BENCH_LABEL {
            BENCH_LABEL
        } else {
            hoist::runner::STEP_LABEL
        };
        rt.spawn(collect(
            docker.clone(),
            label,
            key,
            since.clone(),
            events.clone(),
        ));
    }

    let agent = launch(dir.path(), &repo, &builder_url);
    let pid = agent.child.id();
    std::thread::sleep(Duration::from_millis(500));
    let idle_rss = rss_kib(pid, "VmRSS");
    let client = reqwest::Client::new();
    let deadline = began + BENCH_LIMIT;

    // The first push after start also creates the mirror and the workspaces directory.
    let cold = rt.block_on(hoist_run(&client, &agent, &repo, &tag, "cold", &events));

    let mut first = Vec::new();
    for i in 0..pushes {
        check(deadline);
        let k = format!("p{i}");
        first.push(rt.block_on(hoist_run(&client, &agent, &repo, &tag, &k, &events)));
    }

    let mut hoist_runs = Vec::new();
    let mut script_runs = Vec::new();
    let mut script_first = Vec::new();
    for i in 0..reps {
        check(deadline);
        let k = format!("r{i}");
        // The same commit for both sides; who goes first alternates.
        let commit = repo.commit("main", &k, &[(".hoist.yml", &pipeline(&tag, &k))]);
        let hoist_side = || {
            rt.block_on(hoist_push(
                &client,
                &agent,
                &commit,
                &format!("{tag}-{k}"),
                &events,
            ))
        };
        let script_side = || script_run(dir.path(), &repo, &commit, &builder_url, &tag, &k);
        let (h, (total, start)) = if i % 2 == 0 {
            let h = hoist_side();
            (h, script_side())
        } else {
            let s = script_side();
            (hoist_side(), s)
        };
        hoist_runs.push(h);
        let start = rt.block_on(wait_event(&events, "start", &format!("{tag}-{k}-sh-1"))) - start;
        script_runs.push(total);
        script_first.push(start as f64 / 1e6);
    }

    let after_rss = rss_kib(pid, "VmRSS");
    let peak_rss = rss_kib(pid, "VmHWM");
    drop(agent);

    let ms = |v: &[HoistRun], f: fn(&HoistRun) -> f64| v.iter().map(f).collect::<Vec<f64>>();
    let h_total = ms(&hoist_runs, |r| r.end);
    let (h50, s50) = (p50(&h_total), p50(&script_runs));
    println!(
        "runs benchmark: {pushes} pushes (after 1 cold), {reps} interleaved pairs of a 3-step pipeline \
         ({IMAGE}, `echo step N` + `true`), one run at a time, builder {builder_url}, {} cores",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!("reproduce: scripts/bench-runs  (BENCH_PUSHES={pushes} BENCH_REPS={reps})");
    println!();
    println!("| measure | n | p50 ms | max ms |");
    println!("|---|---|---|---|");
    let row = |name: &str, v: &[f64]| {
        println!("| {name} | {} | {:.1} | {:.1} |", v.len(), p50(v), max(v));
    };
    row(
        "hoist: 202 → first step container `start` (engine event)",
        &ms(&first, |r| r.start),
    );
    row(
        "  of which 202 → container `create` (queue, fetch, checkout, store, engine ping)",
        &ms(&first, |r| r.create),
    );
    row(
        "  of which `create` → `start` (attach, engine start)",
        &ms(&first, |r| r.start - r.create),
    );
    row(
        "hoist: first push after start (cold mirror), 202 → first `start`",
        &[cold.start],
    );
    row(
        "bash + docker CLI: script start → first container `start` (clone, `docker run`)",
        &script_first,
    );
    row(
        "hoist: 3-step run, 202 → SSE `event: end` (success)",
        &h_total,
    );
    row(
        "  of which last container `destroy` → SSE `event: end`",
        &ms(&hoist_runs, |r| r.tail),
    );
    row(
        "bash + docker CLI: clone + 3 × `docker run --rm`",
        &script_runs,
    );
    println!(
        "| hoist overhead: p50 difference (ratio) | {reps} | {:+.1} ({:.2}×) | |",
        h50 - s50,
        h50 / s50
    );
    println!(
        "| agent RSS: idle VmRSS / after VmRSS / peak VmHWM (KiB) | | {idle_rss} / {after_rss} / {peak_rss} | |"
    );
    println!();
    println!(
        "summary: first step container starts {:.0} ms (p50) after the 202, max {:.0}; a 3-step run \
         takes {h50:.0} ms in hoist vs {s50:.0} ms as a shell script ({:+.0} ms, {:.2}×); RSS idle {:.1} MiB, peak {:.1} MiB",
        p50(&ms(&first, |r| r.start)),
        max(&ms(&first, |r| r.start)),
        h50 - s50,
        h50 / s50,
        idle_rss as f64 / 1024.0,
        peak_rss as f64 / 1024.0
    );
}

/// The pipeline of commit `k`: three container steps whose names carry the benchmark's tag.
fn pipeline(tag: &str, k: &str) -> String {
    let mut y = String::from("app: bench\nsteps:\n");
    for n in 1..=3 {
        y.push_str(&format!(
            "  - name: {tag}-{k}-{n}\n    image: {IMAGE}\n    commands: [\"echo step {n}\", \"true\"]\n"
        ));
    }
    y
}

fn launch(dir: &Path, repo: &GitRepo, builder_url: &str) -> Agent {
    let token_hash = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(TOKEN.as_bytes()));
    let config = format!(
        "listen = \"127.0.0.1:0\"\ndata_dir = {:?}\n\n[builder]\ndocker = {builder_url:?}\n\n\
         [runner]\npoll_interval = \"0s\"\n\n\
         [[repo]]\nname = \"acme/app\"\nurl = {:?}\nforge = \"github\"\nsecret = \"env:E2E_HOOK_SECRET\"\n\n\
         [[token]]\nname = \"bench\"\nsha256 = \"{token_hash}\"\n",
        dir.join("data"),
        repo.bare,
    );
    Agent::launch(dir, &config)
}

/// Commit a new pipeline as `k` and run it through hoist.
async fn hoist_run(
    client: &reqwest::Client,
    agent: &Agent,
    repo: &GitRepo,
    tag: &str,
    k: &str,
    events: &Events,
) -> HoistRun {
    let commit = repo.commit("main", k, &[(".hoist.yml", &pipeline(tag, k))]);
    hoist_push(client, agent, &commit, &format!("{tag}-{k}"), events).await
}

/// Push `commit` (whose steps are named `{steps}-1..3`), follow the run to its end.
async fn hoist_push(
    client: &reqwest::Client,
    agent: &Agent,
    commit: &str,
    steps: &str,
    events: &Events,
) -> HoistRun {
    // Signed before the clock starts.
    let body = github_push("acme/app", "refs/heads/main", commit);
    let headers = signed_headers(Forge::Github, &format!("d-{steps}"), SECRET, &body);
    let r = post(
        client,
        &format!("{}/hooks/github", agent.url),
        &headers,
        body,
    )
    .send()
    .await
    .unwrap();
    let accepted = now_nanos();
    assert_eq!(r.status(), 202, "delivery not accepted");
    let v: Value = r.json().await.unwrap();
    let run = v["runs"][0].as_i64().expect("the delivery queued a run");

    let mut sse = client
        .get(format!("{}/api/v1/runs/{run}/logs", agent.url))
        .bearer_auth(TOKEN)
        .header("Accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    let mut text = String::new();
    let read = async {
        while let Some(chunk) = sse.chunk().await.unwrap() {
            text.push_str(&String::from_utf8_lossy(&chunk));
            if let Some(at) = text.find("event: end")
                && text[at..].contains("\n\n")
            {
                return;
            }
        }
        panic!("run {run}: the log stream closed without `event: end`: {text}");
    };
    tokio::time::timeout(RUN_LIMIT, read)
        .await
        .unwrap_or_else(|_| panic!("run {run} did not end within {RUN_LIMIT:?}"));
    let ended = now_nanos();
    let end = &text[text.find("event: end").unwrap()..];
    assert!(
        end.contains("\"success\"") && text.contains("step 3"),
        "run {run} did not succeed: {text}"
    );

    let create = wait_event(events, "create", &format!("{steps}-1")).await;
    let start = wait_event(events, "start", &format!("{steps}-1")).await;
    let destroy = wait_event(events, "destroy", &format!("{steps}-3")).await;
    let ms = |n: i64| (n - accepted) as f64 / 1e6;
    HoistRun {
        create: ms(create),
        start: ms(start),
        end: ms(ended),
        tail: (ended - destroy) as f64 / 1e6,
    }
}

/// The same three steps as a bash script with the docker CLI, after a clone of `commit`.
/// Returns its wall time in ms and when it began (ns since the epoch).
fn script_run(
    dir: &Path,
    repo: &GitRepo,
    commit: &str,
    builder_url: &str,
    tag: &str,
    k: &str,
) -> (f64, i64) {
    let script = format!(
        r#"set -euo pipefail
ws=$(mktemp -d "$BENCH_DIR/script-ws.XXXXXX")
trap 'rm -rf "$ws"' EXIT
git clone -q --no-checkout "$BENCH_REPO" "$ws"
git -C "$ws" checkout -q "$BENCH_COMMIT"
for n in 1 2 3; do
  docker -H "$BENCH_BUILDER" run --rm --label "{BENCH_LABEL}=$BENCH_KEY-$n" \
    -v "$ws:/workspace" -w /workspace {IMAGE} sh -e -c "echo step $n
true"
done
"#
    );
    let began = now_nanos();
    let t = Instant::now();
    let out = Command::new("bash")
        .args(["-c", &script])
        .env("BENCH_DIR", dir)
        .env("BENCH_REPO", &repo.bare)
        .env("BENCH_COMMIT", commit)
        .env("BENCH_BUILDER", builder_url)
        .env("BENCH_KEY", format!("{tag}-{k}-sh"))
        .output()
        .unwrap();
    let wall = t.elapsed().as_secs_f64() * 1000.0;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("step 3"),
        "the shell baseline failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        wall < RUN_LIMIT.as_secs_f64() * 1000.0,
        "the script took {wall} ms"
    );
    (wall, began)
}

/// Follow the builder's container events that carry `label`, keyed by the label `key`.
async fn collect(docker: Docker, label: &str, key: &str, since: String, events: Events) {
    let filters = HashMap::from([
        ("type", vec!["container"]),
        ("event", vec!["create", "start", "destroy"]),
        ("label", vec![label]),
    ]);
    let options = EventsOptionsBuilder::default()
        .since(&since)
        .filters(&filters)
        .build();
    let mut stream = docker.events(Some(options));
    while let Some(e) = stream.next().await {
        let e = match e {
            Ok(e) => e,
            Err(e) => {
                eprintln!("runs benchmark: the builder's event stream broke: {e}");
                return;
            }
        };
        let name = e
            .actor
            .and_then(|a| a.attributes)
            .and_then(|mut a| a.remove(key));
        if let (Some(action), Some(key), Some(nanos)) = (e.action, name, e.time_nano) {
            events.lock().unwrap().push(Ev { action, key, nanos });
        }
    }
}

/// When the builder reported `action` for the container keyed `key` (ns since the epoch).
async fn wait_event(events: &Events, action: &str, key: &str) -> i64 {
    let limit = Instant::now() + Duration::from_secs(10);
    loop {
        let found = events
            .lock()
            .unwrap()
            .iter()
            .find(|e| e.action == action && e.key == key)
            .map(|e| e.nanos);
        if let Some(n) = found {
            return n;
        }
        assert!(
            Instant::now() < limit,
            "the builder reported no `{action}` event for the container {key}"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

fn check(deadline: Instant) {
    assert!(
        Instant::now() < deadline,
        "the benchmark ran longer than {BENCH_LIMIT:?}; lower BENCH_PUSHES or BENCH_REPS"
    );
}

fn now_nanos() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64
}

/// The median (the mean of the two middle values for an even count).
fn p50(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    match s.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => s[n / 2],
        n => (s[n / 2 - 1] + s[n / 2]) / 2.0,
    }
}

fn max(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::NAN, f64::max)
}

fn rss_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}
