//! Run logs while they are written: the pump that stores a step's output in chunks, and the
//! live channels that SSE followers subscribe to.
//!
//! The store holds every chunk (masked before it gets here); the channels exist only while a
//! run runs, so a follower reads the store first and then the channel (see `api::runs`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{broadcast, mpsc};

use crate::runner::LogSink;
use crate::store::{LogChunk, Status, Store};

/// Most bytes gathered into one stored log chunk.
const LOG_CHUNK: usize = 64 * 1024;
/// Longest a log line waits before it is stored and streamed.
const LOG_FLUSH: Duration = Duration::from_millis(50);
/// Events a slow follower may fall behind before it re-reads the store.
const CHANNEL_DEPTH: usize = 1024;

/// Something a live-log subscriber receives.
#[derive(Debug, Clone)]
pub enum LogEvent {
    Chunk(LogChunk),
    /// The run ended with this status; no more chunks follow.
    End(Status),
}

/// The live-log channels of the runs running now.
#[derive(Default)]
pub struct LiveLogs {
    /// One channel per running run. A std Mutex: held only for map operations, never across `.await`.
    channels: Mutex<HashMap<i64, broadcast::Sender<LogEvent>>>,
}

impl LiveLogs {
    /// A run starts: followers may subscribe from now on.
    pub fn open(&self, run: i64) {
        let (tx, _) = broadcast::channel(CHANNEL_DEPTH);
        self.lock().insert(run, tx);
    }

    /// A run ended: tell its followers, and drop its channel.
    pub fn close(&self, run: i64, status: Status) {
        if let Some(tx) = self.lock().remove(&run) {
            let _ = tx.send(LogEvent::End(status));
        }
    }

    /// Follow a run's log live. None when the run is not running here (read the store instead).
    pub fn subscribe(&self, run: i64) -> Option<broadcast::Receiver<LogEvent>> {
        self.lock().get(&run).map(|s| s.subscribe())
    }

    /// Send an event to a run's live subscribers (none listening is fine).
    pub fn publish(&self, run: i64, event: LogEvent) {
        if let Some(s) = self.lock().get(&run) {
            let _ = s.send(event);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<i64, broadcast::Sender<LogEvent>>> {
        self.channels.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A sink for one step's output, and the task that stores it in chunks and streams it live.
/// The task ends when every clone of the sink is dropped, after storing what is left.
pub fn pump(
    store: Store,
    live: Arc<LiveLogs>,
    run: i64,
    step: i64,
) -> (LogSink, tokio::task::JoinHandle<()>) {
    let (tx, mut rx) = mpsc::unbounded_channel::<Vec<u8>>();
    let task = tokio::spawn(async move {
        let mut buf: Vec<u8> = Vec::new();
        loop {
            let more = if buf.is_empty() {
                rx.recv().await
            } else {
                match tokio::time::timeout(LOG_FLUSH, rx.recv()).await {
                    Ok(m) => m,
                    Err(_) => {
                        flush(&store, &live, run, step, &mut buf).await;
                        continue;
                    }
                }
            };
            match more {
                Some(bytes) => {
                    buf.extend_from_slice(&bytes);
                    if buf.len() >= LOG_CHUNK {
                        flush(&store, &live, run, step, &mut buf).await;
                    }
                }
                None => {
                    flush(&store, &live, run, step, &mut buf).await;
                    return;
                }
            }
        }
    });
    (tx, task)
}

async fn flush(store: &Store, live: &LiveLogs, run: i64, step: i64, buf: &mut Vec<u8>) {
    if buf.is_empty() {
        return;
    }
    let data = std::mem::take(buf);
    match store.append_logs(vec![(run, step, data)]).await {
        Ok(chunks) => {
            for (_, chunk) in chunks {
                live.publish(run, LogEvent::Chunk(chunk));
            }
        }
        Err(e) => tracing::error!(run, "cannot store log output: {e:#}"),
    }
}
