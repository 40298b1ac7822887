//! Image benchmark: build + push of the same small context, hoist against the docker CLI, on the
//! lab's build engine and registry, interleaved.
//!
//! - hoist: `image::build` + `image::push` + `image::verify`, in this process: the code the
//!   agent runs for a `build` step (one engine connection, reused as the agent does);
//! - the docker CLI: `docker -H … build --build-arg N=… -t REF CONTEXT && docker -H … push REF`,
//!   run by bash: what teams did by hand (no verification).
//!
//! Every build gets its own build arg `N`, so the `RUN` step writes a new file and every build
//! makes a new image; every image gets its own tag under `10.203.0.1:5000/hoist-bench/image`.
//! One warm-up pair first (not counted): it pushes the shared base and `COPY` layers once.
//! Each side's output is timestamped as it arrives, which splits a run into phases (context
//! sending, the engine's build, build end → push start, the engine's push, push end, verify).
//! The images built are removed from the builder at the end, also when a run fails.
//!
//! Run: `scripts/bench-image` (or `cargo bench --bench image`). Bounded: BENCH_REPS (5) pairs,
//! a time limit per operation and for the whole benchmark; the lab's builder (unix socket) and
//! registry (10.203.0.1:5000) only. Needs the lab: `scripts/lab up`.

mod support;

use support::{env_or, loadavg, rss_kib};

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bollard::Docker;
use bollard::query_parameters::RemoveImageOptionsBuilder;
use hoist::config::RegistryConfig;
use hoist::image::{self, BuildRequest};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio_util::sync::CancellationToken;

const BUILDER: &str = "unix:///var/lib/hoist-lab/hb/docker.sock";
const REGISTRY: &str = "10.203.0.1:5000";
const REPOSITORY: &str = "10.203.0.1:5000/hoist-bench/image";
const BASE: &str = "lab/busybox:1";
/// Longest one build, push or verify (or one CLI run) may take.
const OP_LIMIT: Duration = Duration::from_secs(120);
/// Longest the whole benchmark may take (checked before each pair).
const BENCH_LIMIT: Duration = Duration::from_secs(300);

const DOCKERFILE: &str =
    "FROM lab/busybox:1\nARG N\nCOPY . /app\nRUN echo \"$N\" > /app/iteration\n";
const DOCKERIGNORE: &str = "# build litter never goes to the engine\nlogs\n*.tmp\n";

/// Output lines (hoist: log chunks) with the time they arrived, since the run's start.
type Lines = Vec<(Duration, String)>;

/// One run of one side, ms.
#[derive(Clone, Default)]
struct Run {
    /// Start → end (hoist: build + push + verify; CLI: the bash command).
    total: f64,
    /// hoist only: `image::build`, `image::push`, `image::verify`.
    build: f64,
    push: f64,
    verify: f64,
    /// Phases from the output's timestamps; they add up to `total`.
    phases: [f64; PHASES.len()],
}

/// Where a run's time goes, split at these output lines (see [`phases`]).
const PHASES: [&str; 6] = [
    "start → `Step 1/4` (pack + send the context; CLI: process start, version ping)",
    "`Step 1/4` → `Successfully built` (the engine's build)",
    "`Successfully built` → `The push refers to` (build end, tag, push request; CLI: 2nd process)",
    "`The push refers to` → `TAG: digest:` (the engine's push)",
    "`TAG: digest:` → push end (stream end; CLI: process exits)",
    "verify (hoist: fetch the manifest back, compare digests)",
];

fn main() {
    let reps: usize = env_or("BENCH_REPS", 5);
    let began = Instant::now();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let docker = rt.block_on(preflight());
    let rss_before = rss_kib("self", "VmRSS");

    let dir = tempfile::tempdir().unwrap();
    let context = dir.path().join("context");
    let files = write_context(&context);
    let run_id = format!(
        "{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            % 100_000
    );
    let registry = RegistryConfig {
        host: REGISTRY.to_string(),
        insecure: true,
        username: None,
        password: None,
    };
    // Every tag built, hoist's and the CLI's, so that they go from the builder at the end.
    let built: Arc<Mutex<Vec<String>>> = Arc::default();

    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let hoist_side = |k: &str| {
            let reference = format!("{REPOSITORY}:{run_id}-h{k}");
            built.lock().unwrap().push(reference.clone());
            let run = rt.block_on(hoist_run(
                &docker,
                &context,
                &reference,
                &format!("h{k}-{run_id}"),
                &registry,
            ));
            report("hoist", k, &run);
            run
        };
        let cli_side = |k: &str| {
            let reference = format!("{REPOSITORY}:{run_id}-c{k}");
            built.lock().unwrap().push(reference.clone());
            let run = rt.block_on(cli_run(&context, &reference, &format!("c{k}-{run_id}")));
            report("cli", k, &run);
            run
        };
        // Warm-up: the first push of the base and COPY layers to this repository, both sides.
        hoist_side("w");
        cli_side("w");
        let (mut hoist_runs, mut cli_runs) = (Vec::new(), Vec::new());
        for i in 0..reps {
            assert!(
                began.elapsed() < BENCH_LIMIT,
                "the benchmark ran over its limit of {BENCH_LIMIT:?}"
            );
            let k = i.to_string();
            // Alternate who goes first, so that neither always follows the other's work.
            if i % 2 == 0 {
                hoist_runs.push(hoist_side(&k));
                cli_runs.push(cli_side(&k));
            } else {
                cli_runs.push(cli_side(&k));
                hoist_runs.push(hoist_side(&k));
            }
        }
        (hoist_runs, cli_runs)
    }));
    let peak_rss = rss_kib("self", "VmHWM");
    let removed = rt.block_on(cleanup(&docker, &built.lock().unwrap()));
    let (hoist_runs, cli_runs) = match outcome {
        Ok(runs) => runs,
        Err(panic) => std::panic::resume_unwind(panic),
    };

    let of = |v: &[Run], f: fn(&Run) -> f64| v.iter().map(f).collect::<Vec<f64>>();
    let (h_total, c_total) = (of(&hoist_runs, |r| r.total), of(&cli_runs, |r| r.total));
    let h_no_verify = of(&hoist_runs, |r| r.build + r.push);
    let ratio = p50(&h_total) / p50(&c_total);
    println!(
        "image benchmark: {reps} interleaved pairs (after 1 warm-up pair); context: Dockerfile \
         (`FROM {BASE}`, `ARG N`, `COPY . /app`, `RUN echo \"$N\" > /app/iteration`), \
         .dockerignore, {files} files; builder {BUILDER} (classic builder, as the CLI without \
         buildx); registry {REGISTRY} (plain HTTP); {} cores, loadavg {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        loadavg()
    );
    println!(
        "reproduce: scripts/bench-image  (BENCH_REPS={reps}; needs `scripts/lab up`); \
         CLI side: docker -H {BUILDER} build --build-arg N=… -t {REPOSITORY}:TAG CONTEXT \
         && docker -H {BUILDER} push {REPOSITORY}:TAG"
    );
    println!();
    println!("| measure | n | p50 ms | min ms |");
    println!("|---|---|---|---|");
    let row = |name: &str, v: &[f64]| {
        println!("| {name} | {} | {:.1} | {:.1} |", v.len(), p50(v), min(v));
    };
    row("hoist: build + push + verify", &h_total);
    row("docker CLI: build && push", &c_total);
    row("· hoist: build + push (without verify)", &h_no_verify);
    row("· hoist: `image::build`", &of(&hoist_runs, |r| r.build));
    row("· hoist: `image::push`", &of(&hoist_runs, |r| r.push));
    row(
        "· hoist: `image::verify` alone",
        &of(&hoist_runs, |r| r.verify),
    );
    println!();
    println!(
        "ratio hoist/CLI: p50 {ratio:.3}, min {:.3} (goal <= 1.05); without verify: p50 {:.3}",
        min(&h_total) / min(&c_total),
        p50(&h_no_verify) / p50(&c_total)
    );
    println!(
        "process RSS: {:.1} MiB before the runs, peak {:.1} MiB (VmHWM)",
        rss_before as f64 / 1024.0,
        peak_rss as f64 / 1024.0
    );
    println!();
    println!("where the time goes, p50 of each phase (ms):");
    println!();
    println!("| phase | hoist | CLI |");
    println!("|---|---|---|");
    for (i, name) in PHASES.iter().enumerate() {
        // The CLI verifies nothing: no figure rather than a 0.
        let cli = if i == PHASES.len() - 1 {
            "–".to_string()
        } else {
            format!("{:.1}", p50(&of_phase(&cli_runs, i)))
        };
        println!("| {name} | {:.1} | {cli} |", p50(&of_phase(&hoist_runs, i)));
    }
    println!();
    println!("removed from the builder: {removed} images");
}

/// Fails with what to do when the lab's builder, base image or registry is missing.
async fn preflight() -> Docker {
    let down =
        |what: &str, e: String| -> ! { panic!("{what}: {e}; start the lab with `scripts/lab up`") };
    let docker = hoist::engine::connect(BUILDER, None)
        .await
        .unwrap_or_else(|e| down("the lab's build engine does not answer", format!("{e:#}")));
    if let Err(e) = docker.inspect_image(BASE).await {
        down(
            &format!("the base image {BASE} is not on the builder {BUILDER}"),
            e.to_string(),
        );
    }
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(3))
        .build()
        .unwrap();
    match client.get(format!("http://{REGISTRY}/v2/")).send().await {
        Ok(r) if r.status().is_success() => {}
        Ok(r) => down(
            &format!("the lab's registry {REGISTRY} is not healthy"),
            format!("GET /v2/ answered {}", r.status()),
        ),
        Err(e) => down(
            &format!("the lab's registry {REGISTRY} does not answer"),
            e.to_string(),
        ),
    }
    let cli = tokio::process::Command::new("docker")
        .args(["-H", BUILDER, "version", "--format", "{{.Server.Version}}"])
        .output()
        .await;
    if !cli.as_ref().is_ok_and(|o| o.status.success()) {
        down(
            "the docker CLI cannot reach the lab's build engine",
            format!("{cli:?}"),
        );
    }
    docker
}

/// The build context: the Dockerfile, a `.dockerignore`, a few KB of sources, and litter the
/// `.dockerignore` leaves out. Returns how many files the context holds.
fn write_context(root: &Path) -> usize {
    let mut files: Vec<(String, Vec<u8>)> = vec![
        ("Dockerfile".into(), DOCKERFILE.into()),
        (".dockerignore".into(), DOCKERIGNORE.into()),
    ];
    for n in 0..8 {
        let line = format!("// source file {n}: the quick brown fox jumps over the lazy dog\n");
        files.push((format!("src/file{n}.txt"), line.repeat(12).into_bytes()));
    }
    files.push(("README.md".into(), b"# bench app\n".repeat(40)));
    files.push(("logs/build.log".into(), b"not sent\n".repeat(100)));
    files.push(("scratch.tmp".into(), b"not sent\n".repeat(100)));
    for (rel, data) in &files {
        let path = root.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, data).unwrap();
    }
    files.len()
}

/// hoist's side: build, push, verify, with the log's chunks timestamped as they arrive.
async fn hoist_run(
    docker: &Docker,
    context: &Path,
    reference: &str,
    n: &str,
    registry: &RegistryConfig,
) -> Run {
    let (log, mut rx) = hoist::runner::LogSink::channel();
    let t0 = Instant::now();
    let collector = tokio::spawn(async move {
        let mut lines = Lines::new();
        while let Some(chunk) = rx.recv().await {
            let chunk = chunk.into_bytes();
            lines.push((t0.elapsed(), String::from_utf8_lossy(&chunk).into_owned()));
        }
        lines
    });
    let request = BuildRequest {
        checkout: context.to_path_buf(),
        context: context.to_path_buf(),
        dockerfile: "Dockerfile".into(),
        args: BTreeMap::from([("N".to_string(), n.to_string())]),
        labels: BTreeMap::new(),
        tags: vec![reference.to_string()],
    };
    let cancel = CancellationToken::new();
    let image_id = limit(
        "image::build",
        image::build(docker, &request, &log, &cancel),
    )
    .await;
    let built = t0.elapsed();
    let digest = limit(
        "image::push",
        image::push(docker, reference, Some(registry), &log),
    )
    .await;
    let pushed = t0.elapsed();
    let verified = limit(
        "image::verify",
        image::verify(reference, Some(registry), &digest, &image_id),
    )
    .await;
    let end = t0.elapsed();
    assert_eq!(verified.manifest_digest, digest);
    drop(log);
    let lines = collector.await.unwrap();
    Run {
        total: ms(end),
        build: ms(built),
        push: ms(pushed - built),
        verify: ms(end - pushed),
        phases: phases(&lines, "hoist", pushed, end),
    }
}

/// The CLI's side: `docker build && docker push` in bash, its output timestamped line by line.
async fn cli_run(context: &Path, reference: &str, n: &str) -> Run {
    let script =
        r#"docker -H "$B" build --build-arg N="$N" -t "$REF" "$CTX" && docker -H "$B" push "$REF""#;
    let mut child = tokio::process::Command::new("bash")
        .args(["-c", script])
        .env("B", BUILDER)
        .env("N", n)
        .env("REF", reference)
        .env("CTX", context)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start bash");
    let t0 = Instant::now();
    let lines: Arc<Mutex<Lines>> = Arc::default();
    let out = tokio::spawn(timestamp(child.stdout.take().unwrap(), t0, lines.clone()));
    let err = tokio::spawn(timestamp(child.stderr.take().unwrap(), t0, lines.clone()));
    let status = tokio::time::timeout(OP_LIMIT, child.wait())
        .await
        .unwrap_or_else(|_| panic!("the docker CLI did not finish within {OP_LIMIT:?}"))
        .unwrap();
    let end = t0.elapsed();
    out.await.unwrap();
    err.await.unwrap();
    let mut lines = std::mem::take(&mut *lines.lock().unwrap());
    lines.sort_by_key(|(t, _)| *t);
    let text: String = lines.iter().map(|(_, l)| format!("{l}\n")).collect();
    assert!(
        status.success() && text.contains(": digest: sha256:"),
        "the docker CLI failed ({status}):\n{text}"
    );
    Run {
        total: ms(end),
        phases: phases(&lines, "cli", end, end),
        ..Run::default()
    }
}

async fn timestamp(from: impl AsyncRead + Unpin, t0: Instant, lines: Arc<Mutex<Lines>>) {
    let mut reader = BufReader::new(from).lines();
    while let Ok(Some(line)) = reader.next_line().await {
        lines.lock().unwrap().push((t0.elapsed(), line));
    }
}

/// Splits a run at its output's marker lines; `pushed` is when the push ended (hoist: push
/// returned; CLI: the end), `end` the run's end.
fn phases(lines: &Lines, who: &str, pushed: Duration, end: Duration) -> [f64; PHASES.len()] {
    let at = |marker: &str| {
        lines
            .iter()
            .find(|(_, l)| l.contains(marker))
            .map(|(t, _)| *t)
            .unwrap_or_else(|| panic!("{who}: no output line with {marker:?}"))
    };
    let marks = [
        Duration::ZERO,
        at("Step 1/"),
        at("Successfully built"),
        at("The push refers to repository"),
        at(": digest: sha256:"),
        pushed,
        end,
    ];
    std::array::from_fn(|i| ms(marks[i + 1] - marks[i]))
}

async fn limit<T>(what: &str, f: impl Future<Output = anyhow::Result<T>>) -> T {
    match tokio::time::timeout(OP_LIMIT, f).await {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => panic!("{what} failed: {e:#}"),
        Err(_) => panic!("{what} did not finish within {OP_LIMIT:?}"),
    }
}

/// Removes the images built from the builder (the tag, then the untagged image and its
/// intermediate parents). Returns how many tags went.
async fn cleanup(docker: &Docker, tags: &[String]) -> usize {
    let mut removed = 0;
    for tag in tags {
        let options = RemoveImageOptionsBuilder::default().noprune(false).build();
        match docker.remove_image(tag, Some(options), None).await {
            Ok(_) => removed += 1,
            Err(e) => eprintln!("cleanup: cannot remove {tag}: {e}"),
        }
    }
    removed
}

/// One line per run on stderr, to see the spread behind the table.
fn report(who: &str, k: &str, r: &Run) {
    let p: Vec<String> = r.phases.iter().map(|v| format!("{v:6.1}")).collect();
    let split = if who == "hoist" {
        format!(
            "build {:6.1} push {:5.1} verify {:5.1}",
            r.build, r.push, r.verify
        )
    } else {
        format!("{:36}", "")
    };
    eprintln!(
        "{who:>5} {k:>2}: total {:7.1}  {split}  | phases {}",
        r.total,
        p.join(" ")
    );
}

fn of_phase(v: &[Run], i: usize) -> Vec<f64> {
    v.iter().map(|r| r.phases[i]).collect()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn p50(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    match s.len() {
        0 => 0.0,
        n if n % 2 == 1 => s[n / 2],
        n => (s[n / 2 - 1] + s[n / 2]) / 2.0,
    }
}

fn min(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::INFINITY, f64::min)
}
