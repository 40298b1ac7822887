//! Soak: many one-step runs through one agent, to see whether hoist's own work per run, its
//! memory and its data dir stay flat.
//!
//! One repository served over `git://` by `git daemon` on 127.0.0.1 (fetch by commit id
//! allowed, as GitHub and Gitea do), seven branches, and for each of SOAK_RUNS pushes (default
//! 2000): a commit, a signed GitHub webhook, and the run followed to its end over SSE. The
//! step is `lab/busybox:1` running `true` on the lab's build engine (SOAK_STEP=shell: `true` on
//! the agent's machine, for long soaks). Runs go one at a time.
//!
//! Per run it reads, from the API, the queue wait (202 → run started), hoist's own work before
//! the first step (run started → step started), the step, and the end (step finished → run
//! finished); from the agent's `run prepared` log line, the fetch, plan and checkout phases.
//! Every 100 runs it samples the agent's RSS (anonymous and file-backed), the data dir's size
//! and the mirror's pack count. It prints the first and the last 100 runs side by side, and
//! checks the goals of issue 17 (it does not fail on them: it prints them).
//!
//! Run: `scripts/soak [RUNS]`. Bounded: SOAK_RUNS runs, a minute per run at most, and
//! SOAK_LIMIT_S (default 2 h) for the whole soak. Loopback and the lab's builder only.
//! SOAK_KEEP (default 500) is the agent's `[runner] keep_runs`. SOAK_BIN runs another build of
//! hoist instead (an older commit's, for a before/after; its config must accept keep_runs,
//! so pass SOAK_KEEP=0 to leave the key out).

mod support;

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, UNIX_EPOCH};

use hoist::forge::Forge;
use serde_json::Value;
use support::{env_or, loadavg, rss_kib};

use common::{GitRepo, SECRET, TOKEN, builder, github_push, post, signed_headers};

const BRANCHES: [&str; 7] = ["main", "dev", "f1", "f2", "f3", "f4", "f5"];
const RUN_LIMIT: Duration = Duration::from_secs(60);
const WINDOW: usize = 100;

/// What one run measured, in ms.
#[derive(Clone, Copy, Default)]
struct Sample {
    queue: f64,
    own: f64,
    fetch: f64,
    plan: f64,
    checkout: f64,
    step: f64,
    end: f64,
}

/// A row of the table: its name and how to read it from a [`Sample`].
type Row = (&'static str, fn(&Sample) -> f64);

/// The state of the agent and its data dir after some runs.
#[derive(Clone, Copy, Default)]
struct Probe {
    runs: usize,
    rss_kib: u64,
    anon_kib: u64,
    file_kib: u64,
    data_kib: u64,
    db_kib: u64,
    packs: usize,
}

fn main() {
    let runs = std::env::args()
        .skip(1)
        .find_map(|a| a.parse::<usize>().ok())
        .unwrap_or_else(|| env_or("SOAK_RUNS", 2000));
    let keep = env_or("SOAK_KEEP", 500);
    let limit = Duration::from_secs(env_or("SOAK_LIMIT_S", 7200) as u64);
    let started = Instant::now();

    let builder_url = builder();
    let dir = tempfile::tempdir().unwrap();
    let repo = GitRepo::new(dir.path());
    common::git(
        &repo.bare,
        &["config", "uploadpack.allowReachableSHA1InWant", "true"],
    );
    let port = common::lab::free_port();
    let mut daemon = git_daemon(dir.path(), port);
    let url = format!("git://127.0.0.1:{port}/remote.git");
    // SOAK_STEP=shell: the step runs `true` on the agent instead of in a container, for soaks
    // of ten thousand runs that should take minutes, not hours.
    let step = match std::env::var("SOAK_STEP").as_deref() {
        Ok("shell") => "shell: [\"true\"]",
        _ => "image: lab/busybox:1\n    commands: [\"true\"]",
    };
    repo.commit(
        "main",
        "pipeline",
        &[(
            ".hoist.yml",
            &format!("app: soak\nsteps:\n  - name: one\n    {step}\n"),
        )],
    );

    let data = dir.path().join("data");
    let log = dir.path().join("agent.log");
    let (mut agent, agent_url) = launch(dir.path(), &data, &url, &builder_url, keep, &log);
    let pid = agent.id().to_string();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let client = reqwest::Client::new();
    let mut log_reader = LogReader::new(&log);

    println!(
        "soak: {runs} one-step runs ({}), one at a time, {} branches, keep_runs = {keep}; load {}",
        step.lines().next().unwrap_or(""),
        BRANCHES.len(),
        loadavg()
    );
    let mut samples = Vec::with_capacity(runs);
    let mut probes = vec![probe(0, &pid, &data)];
    for i in 1..=runs {
        if started.elapsed() >= limit {
            println!(
                "the soak reached its limit of {limit:?} after {} runs; reporting those",
                i - 1
            );
            break;
        }
        let branch = BRANCHES[i % BRANCHES.len()];
        let commit = repo.commit(branch, &format!("run {i}"), &[("n.txt", &i.to_string())]);
        let run = rt.block_on(push_and_follow(
            &client,
            &agent_url,
            branch,
            &commit,
            &format!("soak-{i}"),
        ));
        let mut s = rt.block_on(timings(&client, &agent_url, run));
        let prepared = log_reader.prepared(run);
        s.fetch = prepared.0;
        s.plan = prepared.1;
        s.checkout = prepared.2;
        samples.push(s);
        if i % WINDOW == 0 {
            let p = probe(i, &pid, &data);
            println!(
                "  {i:>6} runs: own {:6.1} ms (fetch {:5.1}, plan {:5.1}, checkout {:5.1}), RSS {:5.1} MiB (anon {:5.1}, file {:5.1}), data {:6.1} MiB (db {:5.1}), packs {}",
                median(&samples[i - WINDOW..], |s| s.own),
                median(&samples[i - WINDOW..], |s| s.fetch),
                median(&samples[i - WINDOW..], |s| s.plan),
                median(&samples[i - WINDOW..], |s| s.checkout),
                mib(p.rss_kib),
                mib(p.anon_kib),
                mib(p.file_kib),
                mib(p.data_kib),
                mib(p.db_kib),
                p.packs,
            );
            probes.push(p);
        }
    }
    let peak = rss_kib(&pid, "VmHWM");
    report(&samples, &probes, peak, keep, started.elapsed());
    let _ = agent.kill();
    let _ = agent.wait();
    let _ = daemon.kill();
    let _ = daemon.wait();
}

fn report(samples: &[Sample], probes: &[Probe], peak_kib: u64, keep: usize, took: Duration) {
    let n = samples.len();
    if n < 2 * WINDOW {
        println!("fewer than {} runs: no first/last comparison", 2 * WINDOW);
        return;
    }
    let first = &samples[..WINDOW];
    let last = &samples[n - WINDOW..];
    let rows: [Row; 7] = [
        ("202 → run started (queue)", |s| s.queue),
        ("run started → step started (hoist's own work)", |s| s.own),
        ("  of which: fetch + read .hoist.yml", |s| s.fetch),
        ("  of which: parse, match, record steps", |s| s.plan),
        ("  of which: checkout into the workspace", |s| s.checkout),
        ("the step (`true`)", |s| s.step),
        ("step finished → run finished", |s| s.end),
    ];
    println!(
        "\n| median of 100 runs, ms | runs 1–100 | runs {}–{n} |",
        n - WINDOW + 1
    );
    println!("|---|---|---|");
    for (name, f) in rows {
        println!(
            "| {name} | {:.1} | {:.1} |",
            median(first, f),
            median(last, f)
        );
    }
    let at = |runs: usize| {
        probes
            .iter()
            .rfind(|p| p.runs <= runs)
            .copied()
            .unwrap_or_default()
    };
    let (p100, p500, end) = (at(100), at(500), *probes.last().unwrap());
    println!("\n| after runs | RSS MiB (anon / file) | data dir MiB (db) | mirror packs |");
    println!("|---|---|---|---|");
    for p in [p100, p500, end] {
        println!(
            "| {} | {:.1} ({:.1} / {:.1}) | {:.1} ({:.1}) | {} |",
            p.runs,
            mib(p.rss_kib),
            mib(p.anon_kib),
            mib(p.file_kib),
            mib(p.data_kib),
            mib(p.db_kib),
            p.packs
        );
    }
    let ratio = median(last, |s| s.own) / median(first, |s| s.own);
    let growth = mib(end.rss_kib) - mib(p500.rss_kib);
    let data_growth = mib(end.data_kib) - mib(at(keep + WINDOW).data_kib);
    println!(
        "\npeak RSS {:.1} MiB; {n} runs in {:.0} s; load {}",
        mib(peak_kib),
        took.as_secs_f64(),
        loadavg()
    );
    println!(
        "goal: own work last/first ≤ 1.2: {ratio:.2} {}",
        if ratio <= 1.2 { "met" } else { "NOT met" }
    );
    if end.runs > 500 {
        println!(
            "goal: RSS growth after run 500 ≤ 2 MiB: {growth:+.1} MiB {}",
            if growth <= 2.0 { "met" } else { "NOT met" }
        );
    }
    if keep > 0 && end.runs > keep + WINDOW {
        println!(
            "data dir after keep_runs ({keep}) + 100 runs → end: {data_growth:+.1} MiB (flat when retention holds)"
        );
    }
}

/// `git daemon` serving every repository under `base` on 127.0.0.1:`port`, ready when it returns.
fn git_daemon(base: &Path, port: u16) -> Child {
    let child = Command::new("git")
        .args([
            "daemon",
            "--reuseaddr",
            "--export-all",
            "--listen=127.0.0.1",
            &format!("--port={port}"),
            &format!("--base-path={}", base.display()),
        ])
        .arg(base)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start git daemon (is git installed?)");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "git daemon did not listen on {port}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

fn launch(
    dir: &Path,
    data: &Path,
    url: &str,
    builder_url: &str,
    keep: usize,
    log: &Path,
) -> (Child, String) {
    let token_hash = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(TOKEN.as_bytes()));
    let config = dir.join("hoist.toml");
    let retention = if keep == 0 {
        String::new()
    } else {
        format!("keep_runs = {keep}\n")
    };
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:0\"\ndata_dir = {data:?}\n\n[builder]\ndocker = {builder_url:?}\n\n\
             [runner]\nmax_parallel = 1\npoll_interval = \"0s\"\n{retention}\n\
             [[repo]]\nname = \"acme/soak\"\nurl = {url:?}\nforge = \"github\"\nsecret = \"env:SOAK_HOOK_SECRET\"\ncancel_superseded = false\ntrusted = true\n\n\
             [[token]]\nname = \"soak\"\nsha256 = \"{token_hash}\"\n"
        ),
    )
    .unwrap();
    // SOAK_BIN: another build of hoist (an older commit's, for a before/after comparison).
    let bin = std::env::var("SOAK_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_hoist").into());
    let mut child = Command::new(bin)
        .args(["--log-format", "json", "serve", "--config"])
        .arg(&config)
        .env("SOAK_HOOK_SECRET", SECRET)
        .env("RUST_LOG", "warn,hoist::run=info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .expect("start hoist");
    let stdout = BufReader::new(child.stdout.take().unwrap());
    for line in stdout.lines().map_while(Result::ok) {
        if let Some(url) = line.strip_prefix("hoist listening on ") {
            return (child, url.to_string());
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("hoist exited before listening; see {}", log.display());
}

/// Push `commit` on `branch` with a signed webhook and follow the run's log to its end.
async fn push_and_follow(
    client: &reqwest::Client,
    agent: &str,
    branch: &str,
    commit: &str,
    delivery: &str,
) -> i64 {
    let body = github_push("acme/soak", &format!("refs/heads/{branch}"), commit);
    let headers = signed_headers(Forge::Github, delivery, SECRET, &body);
    let r = post(client, &format!("{agent}/hooks/github"), &headers, body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202, "delivery {delivery} not accepted");
    let v: Value = r.json().await.unwrap();
    let run = v["runs"][0].as_i64().expect("the delivery queued a run");
    let mut sse = client
        .get(format!("{agent}/api/v1/runs/{run}/logs"))
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
    let end = &text[text.find("event: end").unwrap()..];
    assert!(
        end.contains("\"success\""),
        "run {run} did not succeed: {text}"
    );
    run
}

/// The run's phases from its recorded times.
async fn timings(client: &reqwest::Client, agent: &str, run: i64) -> Sample {
    let v: Value = client
        .get(format!("{agent}/api/v1/runs/{run}"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let t = |v: &Value| -> f64 {
        let text = v
            .as_str()
            .unwrap_or_else(|| panic!("run {run}: no time in {v}"));
        let at = humantime::parse_rfc3339(text).unwrap();
        at.duration_since(UNIX_EPOCH).unwrap().as_secs_f64() * 1000.0
    };
    let step = &v["steps"][0];
    Sample {
        queue: t(&v["started_at"]) - t(&v["created_at"]),
        own: t(&step["started_at"]) - t(&v["started_at"]),
        step: t(&step["finished_at"]) - t(&step["started_at"]),
        end: t(&v["finished_at"]) - t(&step["finished_at"]),
        ..Sample::default()
    }
}

/// Reads the agent's JSON log as it grows, for the `run prepared` lines.
struct LogReader {
    file: BufReader<std::fs::File>,
    seen: HashMap<i64, (f64, f64, f64)>,
    /// A run's line never came: this build does not write it; stop waiting for it.
    absent: bool,
}

impl LogReader {
    fn new(path: &Path) -> LogReader {
        let mut file = std::fs::File::open(path).unwrap();
        file.seek(SeekFrom::Start(0)).unwrap();
        LogReader {
            file: BufReader::new(file),
            seen: HashMap::new(),
            absent: false,
        }
    }

    /// (fetch, plan, checkout) ms of `run`, reading the log until its line appears (NaN
    /// after a second without it: a build of hoist older than the line).
    fn prepared(&mut self, run: i64) -> (f64, f64, f64) {
        let deadline = Instant::now() + Duration::from_secs(1);
        loop {
            if let Some(p) = self.seen.remove(&run) {
                return p;
            }
            let mut line = String::new();
            if self.file.read_line(&mut line).unwrap() == 0 {
                if self.absent || Instant::now() > deadline {
                    self.absent = true;
                    return (f64::NAN, f64::NAN, f64::NAN);
                }
                std::thread::sleep(Duration::from_millis(5));
                continue;
            }
            let Ok(v) = serde_json::from_str::<Value>(&line) else {
                continue;
            };
            let f = &v["fields"];
            if f["message"] == "run prepared" {
                let ms = |k: &str| f[k].as_f64().unwrap_or(f64::NAN);
                let id = f["run"].as_i64().unwrap_or(-1);
                self.seen
                    .insert(id, (ms("fetch_ms"), ms("plan_ms"), ms("checkout_ms")));
            }
        }
    }
}

fn probe(runs: usize, pid: &str, data: &Path) -> Probe {
    Probe {
        runs,
        rss_kib: rss_kib(pid, "VmRSS"),
        anon_kib: rss_kib(pid, "RssAnon"),
        file_kib: rss_kib(pid, "RssFile"),
        data_kib: du_kib(data),
        db_kib: ["hoist.db", "hoist.db-wal", "hoist.db-shm"]
            .iter()
            .map(|f| std::fs::metadata(data.join(f)).map_or(0, |m| m.len()) / 1024)
            .sum(),
        packs: packs(&data.join("repos")),
    }
}

/// The size of every file under `dir`, in KiB.
fn du_kib(dir: &Path) -> u64 {
    let mut total = 0;
    let mut todo: Vec<PathBuf> = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => todo.push(e.path()),
                Ok(m) => total += m.len(),
                Err(_) => {}
            }
        }
    }
    total / 1024
}

/// Pack files in every mirror under `repos`.
fn packs(repos: &Path) -> usize {
    let Ok(mirrors) = std::fs::read_dir(repos) else {
        return 0;
    };
    mirrors
        .flatten()
        .filter_map(|m| std::fs::read_dir(m.path().join("objects/pack")).ok())
        .flat_map(|d| d.flatten())
        .filter(|f| f.path().extension().is_some_and(|x| x == "pack"))
        .count()
}

fn median(samples: &[Sample], f: fn(&Sample) -> f64) -> f64 {
    let mut v: Vec<f64> = samples.iter().map(f).collect();
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}
