//! Hostile requests against the real agent: floods of idle and slow connections.

mod common;

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
