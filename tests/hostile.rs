//! Hostile requests against the real agent: floods of idle and slow connections.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{Agent, SECRET, api_request, github_push, post, sha, signed_headers};
use hoist::forge::Forge;
use reqwest::Method;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A request head sent one byte every half second: about 20 s to send, twice the agent's head
/// deadline.
const SLOW_HEAD: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: hoist.test\r\n\r\n";

/// Hold `stream` open (sending `head` byte by byte when given) until the agent closes it;
/// returns how long that took, or None when it was still open after `limit`.
async fn held_until_closed(
    mut stream: TcpStream,
    head: Option<&'static [u8]>,
    limit: Duration,
) -> Option<Duration> {
    let start = Instant::now();
    let (mut read, mut write) = stream.split();
    let drip = async {
        for b in head.unwrap_or_default() {
            if write.write_all(&[*b]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        std::future::pending::<()>().await
    };
    let closed = async {
        let mut buf = [0u8; 512];
        // A 408 answer or nothing, then EOF or a reset: either way the agent let go.
        loop {
            match read.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::select! {
        _ = closed => Some(start.elapsed()),
        _ = drip => None,
        _ = tokio::time::sleep(limit) => None,
    }
}

/// 1500 connections (half idle, half sending a head byte by byte) do not keep a signed delivery
/// or an API call from being answered at once, and the agent closes every one of them within
/// its head deadline (10 s) plus a margin, instead of holding them (and their descriptors)
/// forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_slow_connections_neither_block_nor_stay() {
    const CONNECTIONS: usize = 1500;
    const CLOSED_WITHIN: Duration = Duration::from_secs(25);
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(dir.path(), "");
    let addr = agent.url.strip_prefix("http://").unwrap().to_string();

    let opened = Instant::now();
    let mut held = Vec::new();
    for i in 0..CONNECTIONS {
        let stream = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(&addr))
            .await
            .unwrap_or_else(|_| panic!("connection {i} not accepted within 5 s"))
            .unwrap_or_else(|e| panic!("connection {i}: {e}"));
        let head = (i % 2 == 1).then_some(SLOW_HEAD);
        held.push(tokio::spawn(held_until_closed(stream, head, CLOSED_WITHIN)));
    }
    eprintln!("{CONNECTIONS} connections opened in {:?}", opened.elapsed());

    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let t = Instant::now();
    let body = github_push("acme/web", "refs/heads/main", &sha(1));
    let headers = signed_headers(Forge::Github, "hostile-1", SECRET, &body);
    let r = post(
        &client,
        &format!("{}/hooks/github", agent.url),
        &headers,
        body,
    )
    .send()
    .await
    .expect("the signed delivery was not answered within 5 s");
    assert_eq!(r.status(), 202, "{:?}", r.text().await);
    let delivered = t.elapsed();
    let t = Instant::now();
    let r = api_request(&agent, Method::GET, "/deliveries")
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .expect("the API call was not answered within 5 s");
    assert_eq!(r.status(), 200);
    let listed: serde_json::Value = r.json().await.unwrap();
    assert_eq!(listed.as_array().map(Vec::len), Some(1), "{listed}");
    let api = t.elapsed();
    eprintln!("delivery answered in {delivered:?}, API call in {api:?}");

    let mut open = 0;
    let mut slowest = Duration::ZERO;
    for h in held {
        match h.await.unwrap() {
            Some(after) => slowest = slowest.max(after),
            None => open += 1,
        }
    }
    eprintln!("the slowest connection was closed after {slowest:?}");
    assert_eq!(
        open, 0,
        "{open} of {CONNECTIONS} idle or slow connections were still open after {CLOSED_WITHIN:?}"
    );
}

/// A `kB` line of the agent's `/proc/PID/status` (`VmRSS`, `VmHWM`), in bytes.
fn status_bytes(agent: &Agent, key: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", agent.child.id())).unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with(key))
        .unwrap_or_else(|| panic!("no {key} in {status}"));
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

/// One `GET /healthz` on a new connection; how long until the whole answer was read.
fn probe_healthz(addr: &str) -> Duration {
    use std::io::{Read, Write};
    let t = Instant::now();
    let mut c = std::net::TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.write_all(b"GET /healthz HTTP/1.1\r\nHost: hoist.test\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    c.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    t.elapsed()
}

/// Eight unsigned 25 MB bodies at once (garbage, deep arrays, a top-level array, an object
/// around a huge array) cost the agent less than 100 MB above idle at its peak, are refused,
/// and `/healthz` answers within 100 ms (more than when quiet) all along: nothing is parsed
/// before the signature.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsigned_25_mb_bodies_cost_neither_memory_nor_latency() {
    const SIZE: usize = 25_000_000;
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(dir.path(), "");
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let addr = agent.url.strip_prefix("http://").unwrap().to_string();
    let quiet = (0..50).map(|_| probe_healthz(&addr)).max().unwrap();
    let idle = status_bytes(&agent, "VmRSS:");

    let garbage: Vec<u8> = (0..SIZE).map(|i| (i * 7919 % 251) as u8).collect();
    let deep = "[".repeat(SIZE).into_bytes();
    let mut flat = b"[".to_vec();
    flat.extend(std::iter::repeat_n(b"0,".as_slice(), SIZE / 2 - 1).flatten());
    flat.extend_from_slice(b"0]");
    let mut wrapped = br#"{"commits":[[{"id":"x","message":"m"}"#.to_vec();
    wrapped.extend(
        std::iter::repeat_n(br#",{"id":"x","message":"m"}"#.as_slice(), SIZE / 26).flatten(),
    );
    wrapped.extend_from_slice(br#"]],"repository":{"full_name":"acme/web"}}"#);
    let bodies = [garbage, deep, flat, wrapped];

    // The probe runs on its own thread, off the test's runtime that sends the bodies, like a
    // load balancer's health check: a new connection per probe.
    let stop = Arc::new(AtomicBool::new(false));
    let probe = {
        let (addr, stop) = (addr.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut slowest = Duration::ZERO;
            let mut probes = 0u32;
            while !stop.load(Ordering::Relaxed) && probes < 5000 {
                slowest = slowest.max(probe_healthz(&addr));
                probes += 1;
                std::thread::sleep(Duration::from_millis(10));
            }
            (probes, slowest)
        })
    };
    let started = Instant::now();
    let sends = (0..8).map(|i| {
        let body = bodies[i % bodies.len()].clone();
        let (client, url) = (client.clone(), format!("{}/hooks/github", agent.url));
        tokio::spawn(async move {
            let r = client
                .post(url)
                .header("X-GitHub-Event", "push")
                .header("X-GitHub-Delivery", format!("hostile-big-{i}"))
                .header("Content-Type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap();
            (i, r.status().as_u16(), r.text().await.unwrap_or_default())
        })
    });
    for send in sends.collect::<Vec<_>>() {
        let (i, status, text) = send.await.unwrap();
        assert!(status == 400 || status == 401, "body {i}: {status} {text}");
    }
    let took = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let (probes, slowest) = probe.join().unwrap();
    let peak = status_bytes(&agent, "VmHWM:");
    let above = peak.saturating_sub(idle);
    eprintln!(
        "8 x 25 MB refused in {took:?}; idle RSS {} MB, peak {} MB ({} MB above); \
         /healthz: {probes} probes, slowest {slowest:?} (before: {quiet:?} at worst)",
        idle >> 20,
        peak >> 20,
        above >> 20
    );
    assert!(above < 100 << 20, "peak RSS {} MB above idle", above >> 20);
    // 100 ms, plus the worst the same probe took on a quiet agent: on a loaded machine (the
    // tests run under `nice` beside builds) that is the scheduler's noise, not the agent's.
    assert!(
        slowest < Duration::from_millis(100) + quiet,
        "/healthz took {slowest:?} while the bodies were checked ({quiet:?} before)"
    );
}
