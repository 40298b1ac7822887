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

mod support;

use support::{env_or, loadavg, rss_kib};

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::HashMap;
use std::path::Path;
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

/// Where one 3-step run's time went, in ms, from its beginning (hoist: the 202; the script: its
/// start) to its end (hoist: the SSE `event: end`; the script: its exit), split at the builder's
/// container events. The parts add up to the total.
#[derive(Clone, Copy)]
struct Phases {
    /// Before the first step container's `create`.
    before: f64,
    /// `create` → `start`, summed over the steps.
    starting: f64,
    /// `start` → `die`: the commands themselves, summed.
    running: f64,
    /// `die` → `destroy`: noticing the exit and removing the container, summed.
    removing: f64,
    /// A step's `destroy` → the next step's `create`, summed.
    between: f64,
    /// The last `destroy` → the end.
    after: f64,
    total: f64,
}

/// One row of the breakdown table: what the part is, and how to read it from [`Phases`].
type Part = (&'static str, fn(&Phases) -> f64);

/// The rows of the breakdown table.
const PHASES: [Part; 7] = [
    (
        "before the first `create` (hoist: claim, fetch, checkout, store writes, engine version/ping, image inspect; script: bash, git clone + checkout, CLI start)",
        |p| p.before,
    ),
    (
        "`create` → `start` (attach; the engine starts it), 3 steps",
        |p| p.starting,
    ),
    ("`start` → `die` (the commands run), 3 steps", |p| {
        p.running
    }),
    (
        "`die` → `destroy` (exit noticed, container removed), 3 steps",
        |p| p.removing,
    ),
    (
        "`destroy` → next `create` (hoist: step end/start writes, image inspect; script: next CLI), 2 gaps",
        |p| p.between,
    ),
    (
        "last `destroy` → end (hoist: step and run end writes, SSE `event: end`; script: CLI exit, rm workspace)",
        |p| p.after,
    ),
    ("total", |p| p.total),
];

/// What one run (hoist's or the script's) measured.
#[derive(Clone, Copy)]
struct Run {
    /// Beginning → the first step container's `create`, ms.
    create: f64,
    /// Beginning → the first step container's `start`, ms.
    start: f64,
    phases: Phases,
}

fn main() {
    let pushes: usize = env_or("BENCH_PUSHES", 10);
    let reps: usize = env_or("BENCH_REPS", 5);
    let began = Instant::now();
    let deadline = began + BENCH_LIMIT;
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
    let load_before = loadavg();

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
    for (label, key) in [
        (hoist::runner::RUN_LABEL, hoist::runner::STEP_LABEL),
        (BENCH_LABEL, BENCH_LABEL),
    ] {
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
    let idle_rss = rss_kib(&pid.to_string(), "VmRSS");
    let client = reqwest::Client::new();
    // Each push is a new commit whose step names carry `k`.
    let new_commit = |k: &str| repo.commit("main", k, &[(".hoist.yml", &pipeline(&tag, k))]);
    let hoist_side = |commit: &str, k: &str| {
        let run = rt.block_on(hoist_run(
            &client,
            &agent,
            commit,
            &format!("{tag}-{k}"),
            &events,
        ));
        report("hoist", k, &run);
        run
    };

    // The first push after start also creates the mirror and connects to the engine the first time.
    let cold = hoist_side(&new_commit("cold"), "cold");
    let mut first = Vec::new();
    for i in 0..pushes {
        check(deadline);
        let k = format!("p{i}");
        first.push(hoist_side(&new_commit(&k), &k));
    }

    let script_side = |commit: &str, k: &str| {
        let run = rt.block_on(script_run(
            dir.path(),
            &repo,
            commit,
            &builder_url,
            &tag,
            k,
            &events,
        ));
        report("script", k, &run);
        run
    };
    // Pairs on the same commit: hoist's run of it, then the script's, alternating who goes first.
    let mut hoist_runs = Vec::new();
    let mut script_runs = Vec::new();
    for i in 0..reps {
        check(deadline);
        let k = format!("r{i}");
        let commit = new_commit(&k);
        if i % 2 == 0 {
            hoist_runs.push(hoist_side(&commit, &k));
            script_runs.push(script_side(&commit, &k));
        } else {
            script_runs.push(script_side(&commit, &k));
            hoist_runs.push(hoist_side(&commit, &k));
        }
    }

    let after_rss = rss_kib(&pid.to_string(), "VmRSS");
    let peak_rss = rss_kib(&pid.to_string(), "VmHWM");
    drop(agent);
    let load_after = loadavg();

    let of = |v: &[Run], f: &dyn Fn(&Run) -> f64| v.iter().map(f).collect::<Vec<f64>>();
    let total = |r: &Run| r.phases.total;
    let (h50, s50) = (
        p50(&of(&hoist_runs, &total)),
        p50(&of(&script_runs, &total)),
    );
    let first_start = of(&first, &|r| r.start);
    println!(
        "runs benchmark: {pushes} pushes (after 1 cold), {reps} interleaved pairs; pipeline of 3 container \
         steps ({IMAGE}, `echo step N` + `true`); one run at a time; builder {builder_url}; \
         {} cores, loadavg {load_before} before, {load_after} after",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "reproduce: scripts/bench-runs  (BENCH_PUSHES={pushes} BENCH_REPS={reps}; needs `scripts/lab up`)"
    );
    println!();
    println!("| measure | n | p50 ms | max ms |");
    println!("|---|---|---|---|");
    let row = |name: &str, v: &[f64]| {
        println!("| {name} | {} | {:.1} | {:.1} |", v.len(), p50(v), max(v));
    };
    row(
        "hoist: 202 → first step container `start` (engine event)",
        &first_start,
    );
    row(
        "· 202 → its `create` (hoist's own work)",
        &of(&first, &|r| r.create),
    );
    row(
        "· `create` → `start` (attach, then the engine starts it)",
        &of(&first, &|r| r.start - r.create),
    );
    row(
        "hoist: first push after start (cold), 202 → first `start`",
        &[cold.start],
    );
    row(
        "bash + docker CLI: script start → first container `start` (clone, `docker run`)",
        &of(&script_runs, &|r| r.start),
    );
    row(
        "hoist: 3-step run, 202 → SSE `event: end` (success)",
        &of(&hoist_runs, &total),
    );
    row(
        "bash + docker CLI: clone + 3 × `docker run --rm`",
        &of(&script_runs, &total),
    );
    println!(
        "| hoist overhead on the 3-step run: p50 difference (ratio) | {reps} | {:+.1} ({:.2}×) | |",
        h50 - s50,
        h50 / s50
    );
    println!(
        "| agent RSS KiB: idle VmRSS / after VmRSS / peak VmHWM | | {idle_rss} / {after_rss} / {peak_rss} | |"
    );
    println!();
    println!(
        "Where the 3-step run's time goes (p50 of each part, ms; split at the builder's container events):"
    );
    println!();
    println!("| part | hoist | bash + docker CLI |");
    println!("|---|---|---|");
    for (name, part) in PHASES {
        let part = |r: &Run| part(&r.phases);
        println!(
            "| {name} | {:.1} | {:.1} |",
            p50(&of(&hoist_runs, &part)),
            p50(&of(&script_runs, &part))
        );
    }
    println!();
    println!(
        "summary: the first step container starts {:.0} ms (p50, max {:.0}) after the 202; a 3-step run \
         takes {h50:.0} ms in hoist vs {s50:.0} ms as a bash script with the docker CLI ({:+.0} ms, {:.2}×); \
         agent RSS {:.1} MiB idle, {:.1} MiB peak",
        p50(&first_start),
        max(&first_start),
        h50 - s50,
        h50 / s50,
        idle_rss as f64 / 1024.0,
        peak_rss as f64 / 1024.0
    );
}

/// One line per run on stderr, to see the spread behind the table.
fn report(who: &str, k: &str, r: &Run) {
    let p = &r.phases;
    eprintln!(
        "{who:>6} {k:>4}: create {:7.1}  start {:7.1}  total {:7.1}  | before {:6.1} starting {:6.1} running {:6.1} removing {:6.1} between {:6.1} after {:6.1}",
        r.create, r.start, p.total, p.before, p.starting, p.running, p.removing, p.between, p.after
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

/// Push `commit` (whose steps are named `{steps}-1..3`), follow the run to its end.
async fn hoist_run(
    client: &reqwest::Client,
    agent: &Agent,
    commit: &str,
    steps: &str,
    events: &Events,
) -> Run {
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

    timeline(events, steps, accepted, ended).await
}

/// Split a run from `t0` to `end` (ns since the epoch) at the events of its step containers,
/// keyed `{prefix}-1` to `{prefix}-3`.
async fn timeline(events: &Events, prefix: &str, t0: i64, end: i64) -> Run {
    let mut steps = Vec::new();
    for n in 1..=3 {
        let key = format!("{prefix}-{n}");
        let mut at = [0i64; 4];
        for (i, action) in ["create", "start", "die", "destroy"]
            .into_iter()
            .enumerate()
        {
            at[i] = wait_event(events, action, &key).await;
        }
        steps.push(at);
    }
    let ms = |ns: i64| ns as f64 / 1e6;
    let sum = |f: fn(&[i64; 4]) -> i64| ms(steps.iter().map(f).sum());
    Run {
        create: ms(steps[0][0] - t0),
        start: ms(steps[0][1] - t0),
        phases: Phases {
            before: ms(steps[0][0] - t0),
            starting: sum(|s| s[1] - s[0]),
            running: sum(|s| s[2] - s[1]),
            removing: sum(|s| s[3] - s[2]),
            between: ms(steps.windows(2).map(|w| w[1][0] - w[0][3]).sum()),
            after: ms(end - steps[2][3]),
            total: ms(end - t0),
        },
    }
}

/// The same three steps as a bash script with the docker CLI, after a clone of `commit`.
async fn script_run(
    dir: &Path,
    repo: &GitRepo,
    commit: &str,
    builder_url: &str,
    tag: &str,
    k: &str,
    events: &Events,
) -> Run {
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
    let key = format!("{tag}-{k}-sh");
    let mut command = tokio::process::Command::new("bash");
    command
        .args(["-c", &script])
        .env("BENCH_DIR", dir)
        .env("BENCH_REPO", &repo.bare)
        .env("BENCH_COMMIT", commit)
        .env("BENCH_BUILDER", builder_url)
        .env("BENCH_KEY", &key)
        .kill_on_drop(true);
    let began = now_nanos();
    let out = tokio::time::timeout(RUN_LIMIT, command.output())
        .await
        .unwrap_or_else(|_| panic!("the shell baseline did not end within {RUN_LIMIT:?}"))
        .unwrap();
    let ended = now_nanos();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("step 3"),
        "the shell baseline failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    timeline(events, &key, began, ended).await
}

/// Follow the builder's container events that carry `label`, keyed by the label `key`.
async fn collect(docker: Docker, label: &str, key: &str, since: String, events: Events) {
    let filters = HashMap::from([
        ("type", vec!["container"]),
        ("event", vec!["create", "start", "die", "destroy"]),
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
