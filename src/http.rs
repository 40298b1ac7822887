//! The HTTP server under the API, with the limits that keep a hostile or broken client from
//! taking the agent down: a deadline to send a request's head, a deadline between pieces of its
//! body, and a cap on open connections.
//!
//! Without them a thousand idle sockets used up the agent's file descriptors, and then git,
//! SQLite and Docker calls failed in the middle of a deploy. At the cap, a new connection
//! closes the oldest one that has not sent a whole request head yet (those are the idle and
//! slow ones; a client that got an answer is never cut off for a newcomer), so that a flood of
//! slow sockets neither exhausts descriptors nor keeps a forge's delivery waiting for minutes.
//! Only when every open connection has sent a head does a newcomer wait for a slot.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tower_http::timeout::RequestBodyTimeout;

/// How long a client has to send a request's line and headers, counted from the moment the
/// connection is ready for a request (so an idle keep-alive connection is closed after it too).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a request body may go without sending anything before the request fails.
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// At most this many connections are open at once, whatever the fd limit allows.
pub const MAX_CONNECTIONS: usize = 512;

/// The connection cap: [`MAX_CONNECTIONS`], or half the process's open-file limit when that is
/// lower, so git, SQLite and Docker calls always keep descriptors of their own.
pub fn connection_limit() -> usize {
    open_files_limit().map_or(MAX_CONNECTIONS, |n| MAX_CONNECTIONS.min(n / 2).max(16))
}

/// The soft `Max open files` limit of this process (Linux), from `/proc/self/limits`.
fn open_files_limit() -> Option<usize> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// Open connections that have not sent a whole request head yet, oldest first: the ones a
/// newcomer may close when the cap is reached.
#[derive(Default)]
struct Fresh {
    /// The next connection's number (accept order).
    next: u64,
    /// Each fresh connection's number and the token that closes it.
    open: BTreeMap<u64, CancellationToken>,
}

impl Fresh {
    fn add(&mut self) -> (u64, CancellationToken) {
        let (id, token) = (self.next, CancellationToken::new());
        self.next += 1;
        self.open.insert(id, token.clone());
        (id, token)
    }
}

/// Serve `app` on `listener` until `shutdown`, then let open requests finish.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let slots = Arc::new(Semaphore::new(connection_limit()));
    let fresh = Arc::new(Mutex::new(Fresh::default()));
    let graceful = GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    // Outside the router: a layer inside it would have to keep axum's body type.
    let service = TowerToHyperService::new(RequestBodyTimeout::new(app, BODY_READ_TIMEOUT));
    loop {
        let (stream, _peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of descriptors, or a connection reset before accept: not fatal; wait
                    // a moment so that a full fd table is not spun on.
                    tracing::warn!("cannot accept a connection: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => break,
        };
        let slot = match slots.clone().try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => {
                let oldest = lock(&fresh).open.pop_first();
                if let Some((_, close)) = oldest {
                    close.cancel();
                }
                tokio::select! {
                    slot = slots.clone().acquire_owned() => slot.context("the connection cap closed")?,
                    _ = shutdown.cancelled() => break,
                }
            }
        };
        let _ = stream.set_nodelay(true);
        let (id, close) = lock(&fresh).add();
        let marks = fresh.clone();
        let service = service.clone();
        let seen = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
            // A whole head arrived: this client is served, never closed for a newcomer.
            lock(&marks).open.remove(&id);
            hyper::service::Service::call(&service, req)
        });
        let conn = graceful.watch(http.serve_connection(TokioIo::new(stream), seen));
        let forget = fresh.clone();
        tokio::spawn(async move {
            tokio::select! {
                // Head timeouts, resets and clients that go away all end here; none concerns
                // the agent beyond a debug line.
                ended = conn => if let Err(e) = ended {
                    tracing::debug!("connection ended: {e}");
                },
                _ = close.cancelled() => tracing::debug!("connection closed for a newer one"),
            }
            lock(&forget).open.remove(&id);
            drop(slot);
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// The fresh set; a panic elsewhere cannot leave it inconsistent (each operation is one call).
fn lock(fresh: &Mutex<Fresh>) -> std::sync::MutexGuard<'_, Fresh> {
    fresh.lock().unwrap_or_else(|e| e.into_inner())
}
