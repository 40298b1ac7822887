//! Intake benchmark: accepted deliveries per second and p50/p99 latency with durable acks,
//! against the same server's `/healthz` under the same load (the ceiling), in one run.
//!
//! Run: `scripts/bench-intake` (or `cargo bench --bench intake`). Bounded: a fixed count of
//! requests per phase, all to 127.0.0.1, with a time limit per phase.

mod support;

use support::{env_or, rss_kib};

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hoist::forge::{self, Forge};

const SECRET: &str = "bench-secret";

/// A signed delivery: its headers and body.
type Delivery = (Vec<(&'static str, String)>, Vec<u8>);

fn main() {
    let count: usize = env_or("BENCH_COUNT", 5000);
    let concurrency: usize = env_or("BENCH_CONCURRENCY", 64);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("hoist.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:0\"\ndata_dir = {:?}\n[runner]\npoll_interval = \"0s\"\n\
             [[repo]]\nname = \"acme/web\"\nurl = \"/nonexistent\"\nforge = \"github\"\nsecret = \"env:BENCH_SECRET\"\n",
            dir.path().join("data")
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_hoist"))
        .args(["serve", "--config"])
        .arg(&config)
        .env("BENCH_SECRET", SECRET)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .expect("start hoist");
    let pid = child.id();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = line
        .trim()
        .strip_prefix("hoist listening on ")
        .expect("listening line")
        .to_string();
    let idle_rss = rss_kib(&pid.to_string(), "VmRSS");

    let template = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/webhooks/github/go-scm-push.json"
    ))
    .unwrap();
    let template: serde_json::Value = serde_json::from_slice(&template).unwrap();
    // Bodies are signed before the clock starts: the benchmark measures hoist, not the client's HMAC.
    let deliveries: Vec<Delivery> = (0..count)
        .map(|i| {
            let mut v = template.clone();
            v["repository"]["full_name"] = "acme/web".into();
            v["after"] = format!("{:040x}", i + 1).into();
            let body = serde_json::to_vec(&v).unwrap();
            let mut h = forge::push_headers(Forge::Github, &format!("bench-{i}"));
            let (k, s) = forge::sign(Forge::Github, SECRET.as_bytes(), &body);
            h.push((k, s));
            h.push(("Content-Type", "application/json".into()));
            (h, body)
        })
        .collect();

    let rt = tokio::runtime::Runtime::new().unwrap();
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .build()
        .unwrap();
    // Warm the connection pool and the server.
    rt.block_on(load(
        &client,
        &url,
        concurrency,
        (0..200).map(|_| None).collect(),
        202,
    ));
    let health = rt.block_on(load(
        &client,
        &url,
        concurrency,
        (0..count).map(|_| None).collect(),
        200,
    ));
    let hooks = rt.block_on(load(
        &client,
        &url,
        concurrency,
        deliveries.into_iter().map(Some).collect(),
        202,
    ));
    let peak_rss = rss_kib(&pid.to_string(), "VmHWM");
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let _ = child.wait();

    let ratio = hooks.per_sec / health.per_sec;
    println!(
        "intake benchmark: {count} requests per phase, {concurrency} concurrent, 127.0.0.1, {} cores",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!("| phase | req/s | p50 ms | p99 ms | errors |");
    println!("|---|---|---|---|---|");
    for (name, r) in [
        ("GET /healthz (ceiling)", &health),
        ("POST /hooks/github, durable 202", &hooks),
    ] {
        println!(
            "| {name} | {:.0} | {:.2} | {:.2} | {} |",
            r.per_sec, r.p50_ms, r.p99_ms, r.errors
        );
    }
    println!("ratio deliveries/healthz: {ratio:.2} (goal >= 0.5)");
    println!("agent RSS: idle {} KiB, peak {} KiB", idle_rss, peak_rss);
    assert_eq!(hooks.errors, 0, "some deliveries were not accepted");
}

struct Outcome {
    per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
    errors: usize,
}

/// Send every request (None: GET /healthz; Some: a signed delivery) with `concurrency` in flight.
async fn load(
    client: &reqwest::Client,
    url: &str,
    concurrency: usize,
    requests: Vec<Option<Delivery>>,
    expect: u16,
) -> Outcome {
    let queue = Arc::new(std::sync::Mutex::new(requests));
    let start = Instant::now();
    let limit = Duration::from_secs(120);
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let (client, url, queue) = (client.clone(), url.to_string(), queue.clone());
        workers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut errors = 0;
            loop {
                let next = queue.lock().unwrap().pop();
                let Some(req) = next else { break };
                if start.elapsed() > limit {
                    errors += 1;
                    continue;
                }
                let t = Instant::now();
                let r = match req {
                    None => client.get(format!("{url}/healthz")).send().await,
                    Some((headers, body)) => {
                        let mut b = client.post(format!("{url}/hooks/github")).body(body);
                        for (k, v) in headers {
                            b = b.header(k, v);
                        }
                        b.send().await
                    }
                };
                let ok = match r {
                    Ok(r) => {
                        let status = r.status().as_u16();
                        let _ = r.bytes().await;
                        status == expect || (expect == 202 && status == 200)
                    }
                    Err(_) => false,
                };
                latencies.push(t.elapsed());
                if !ok {
                    errors += 1;
                }
            }
            (latencies, errors)
        }));
    }
    let mut all = Vec::new();
    let mut errors = 0;
    for w in workers {
        let (l, e) = w.await.unwrap();
        all.extend(l);
        errors += e;
    }
    let elapsed = start.elapsed().as_secs_f64();
    all.sort();
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    Outcome {
        per_sec: all.len() as f64 / elapsed,
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
        errors,
    }
}
