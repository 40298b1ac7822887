//! Run logs while they are written: the pump that stores a step's output in chunks, and the
//! live channels that SSE followers subscribe to.
//!
//! The pump is the one way into a run's stored log: it masks every secret the run may use
//! (whatever wrote the bytes: a step, a service, the engine's build, a hook, hoist itself),
//! and stores at most `[runner] max_log_size` of each step's output, then a marker line; the
//! step goes on (GitLab's runner does the same with its `output_limit`). The sink into it
//! (`runner::LogSink`) is bounded, so a step that prints faster than the store writes waits
//! instead of filling memory.
//!
//! The store holds every chunk; the channels exist only while a run runs, so a follower reads
//! the store first and then the channel (see `api::runs`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::broadcast;

use crate::runner::{LogMsg, LogSink, Masker};
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

/// Bytes of hoist's own notes stored per step, beyond `max_log_size`: a step's notes are a
/// handful of lines, but a deployment relays its hooks' output as notes, and a hook may print
/// without end.
const NOTE_ROOM: u64 = 1024 * 1024;

/// What every stored log of a run obeys.
#[derive(Clone)]
pub struct LogPolicy {
    /// Most output bytes stored per step (`[runner] max_log_size`).
    pub max_bytes: u64,
    /// Every secret value the run may use (the repository's allowed `[secrets]`): masked in
    /// every byte stored, whatever wrote it.
    pub secrets: Vec<String>,
}

/// A sink for one step's output, and the task that masks it, caps it at `policy.max_bytes`,
/// stores it in chunks and streams it live. The task ends when every clone of the sink is
/// dropped, after storing what is left.
pub fn pump(
    store: Store,
    live: Arc<LiveLogs>,
    run: i64,
    step: i64,
    policy: LogPolicy,
) -> (LogSink, tokio::task::JoinHandle<()>) {
    let (tx, mut rx) = LogSink::channel();
    let task = tokio::spawn(async move {
        let mut log = StepLog::new(policy);
        loop {
            let more = if log.buf.is_empty() {
                rx.recv().await
            } else {
                match tokio::time::timeout(LOG_FLUSH, rx.recv()).await {
                    Ok(m) => m,
                    Err(_) => {
                        flush(&store, &live, run, step, &mut log.buf).await;
                        continue;
                    }
                }
            };
            match more {
                Some(msg) => {
                    log.take(msg);
                    if log.buf.len() >= LOG_CHUNK {
                        flush(&store, &live, run, step, &mut log.buf).await;
                    }
                }
                None => {
                    log.finish();
                    flush(&store, &live, run, step, &mut log.buf).await;
                    return;
                }
            }
        }
    });
    (tx, task)
}

/// One step's log on its way to the store: masked, counted, cut.
struct StepLog {
    /// Masks the run's secrets, also across messages.
    masker: Masker,
    /// Output bytes may still be stored (`max_bytes` minus what was).
    room: u64,
    /// The cap, for the marker line.
    max_bytes: u64,
    /// Set once the cap was reached and the marker written: output is dropped from then on.
    cut: bool,
    /// Note bytes that may still be stored ([`NOTE_ROOM`] minus what was); past it, notes are
    /// dropped after a marker of their own.
    note_room: u64,
    /// Not yet stored.
    buf: Vec<u8>,
}

impl StepLog {
    fn new(policy: LogPolicy) -> StepLog {
        StepLog {
            masker: Masker::new(policy.secrets),
            room: policy.max_bytes,
            max_bytes: policy.max_bytes,
            cut: false,
            note_room: NOTE_ROOM,
            buf: Vec::new(),
        }
    }

    fn take(&mut self, msg: LogMsg) {
        match msg {
            LogMsg::Output(bytes, _permit) => {
                if !self.cut {
                    let masked = self.masker.push(&bytes);
                    self.keep(masked);
                }
            }
            LogMsg::Note(bytes) => {
                // What the masker held back belongs before the note.
                let held = self.masker.finish();
                self.keep(held);
                let line = self.masker.mask_text(&String::from_utf8_lossy(&bytes));
                let len = line.len() as u64;
                if len <= self.note_room {
                    self.note_room -= len;
                    self.buf.extend_from_slice(line.as_bytes());
                } else if self.note_room > 0 {
                    self.note_room = 0;
                    self.buf.extend_from_slice(
                        "── hoist: this step's own lines (deployment progress, hook output) passed 1 MiB; further ones are not kept\n"
                            .as_bytes(),
                    );
                }
            }
        }
    }

    fn finish(&mut self) {
        let held = self.masker.finish();
        self.keep(held);
    }

    /// Stores masked output while there is room; at the cap, the part that fits and the marker.
    fn keep(&mut self, masked: Vec<u8>) {
        if self.cut || masked.is_empty() {
            return;
        }
        let len = masked.len() as u64;
        if len <= self.room {
            self.room -= len;
            self.buf.extend_from_slice(&masked);
            return;
        }
        self.buf.extend_from_slice(&masked[..self.room as usize]);
        self.room = 0;
        self.cut = true;
        self.buf.extend_from_slice(
            format!(
                "\n── hoist: this log reached {} ([runner] max_log_size): the step goes on, its further output is not kept\n",
                human_size(self.max_bytes)
            )
            .as_bytes(),
        );
    }
}

/// `8 MiB`, `64 KiB`, `1500 B`: sizes as people write them in `max_log_size`.
fn human_size(bytes: u64) -> String {
    const UNITS: [(u64, &str); 3] = [(1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")];
    for (scale, unit) in UNITS {
        if bytes >= scale && bytes.is_multiple_of(scale) {
            return format!("{} {unit}", bytes / scale);
        }
    }
    format!("{bytes} B")
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runner::SINK_BYTES;
    use tokio::sync::Semaphore;

    fn policy(max_bytes: u64, secrets: &[&str]) -> LogPolicy {
        LogPolicy {
            max_bytes,
            secrets: secrets.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn output_past_the_cap_is_dropped_after_a_marker_and_notes_stay() {
        let mut log = StepLog::new(policy(1024, &[]));
        let room = Arc::new(Semaphore::new(100));
        for _ in 0..1000 {
            let permit = room.clone().try_acquire_many_owned(100).unwrap();
            log.take(LogMsg::Output(vec![b'y'; 100], permit));
        }
        log.take(LogMsg::Note(b"-- step flood succeeded\n".to_vec()));
        log.finish();
        let text = String::from_utf8(log.buf).unwrap();
        let (output, rest) = text.split_at(1024);
        assert!(output.bytes().all(|b| b == b'y'), "{output}");
        assert!(
            rest.starts_with("\n── hoist: this log reached 1 KiB ([runner] max_log_size)"),
            "{rest}"
        );
        assert!(rest.ends_with("-- step flood succeeded\n"), "{rest}");
    }

    #[test]
    fn notes_are_bounded_too() {
        let mut log = StepLog::new(policy(1024, &[]));
        for _ in 0..100_000 {
            log.take(LogMsg::Note(
                b"  after_host: a hook that never stops\n".to_vec(),
            ));
        }
        assert!(log.buf.len() as u64 <= NOTE_ROOM + 200, "{}", log.buf.len());
        let text = String::from_utf8(log.buf).unwrap();
        assert!(
            text.ends_with("passed 1 MiB; further ones are not kept\n"),
            "{}",
            &text[text.len() - 200..]
        );
    }

    #[test]
    fn secrets_are_masked_across_messages_and_in_notes() {
        let mut log = StepLog::new(policy(1 << 20, &["hunter-two"]));
        let room = Arc::new(Semaphore::new(100));
        let permit = || room.clone().try_acquire_many_owned(9).unwrap();
        log.take(LogMsg::Output(b"pw=hunter".to_vec(), permit()));
        log.take(LogMsg::Output(b"-two ok\n".to_vec(), permit()));
        log.take(LogMsg::Note(b"failed: hunter-two\n".to_vec()));
        log.finish();
        assert_eq!(
            String::from_utf8(log.buf).unwrap(),
            "pw=*** ok\nfailed: ***\n"
        );
    }

    #[tokio::test]
    async fn a_full_sink_makes_its_writer_wait_and_notes_go_on() {
        let (sink, mut rx) = LogSink::channel();
        for _ in 0..4 {
            assert!(sink.send(vec![b'x'; SINK_BYTES / 4]).await);
        }
        let blocked = tokio::time::timeout(Duration::from_millis(50), sink.send(vec![1])).await;
        assert!(blocked.is_err(), "a full sink must not take more output");
        sink.note("a note never waits");
        let first = rx.recv().await.unwrap();
        assert!(matches!(first, LogMsg::Output(..)));
        drop(first);
        assert!(
            sink.send(vec![1]).await,
            "room again once a chunk was taken"
        );
        // A chunk larger than the whole budget still goes, alone.
        let (sink, mut rx) = LogSink::channel();
        assert!(sink.send(vec![0; 3 * SINK_BYTES]).await);
        assert_eq!(rx.recv().await.unwrap().into_bytes().len(), 3 * SINK_BYTES);
    }
}
