//! The audit file's writer: a queue the request path appends lines to, a
//! thread that writes them, and the state the dispatcher checks before
//! serving a request.
//!
//! Vault's rule for audit devices: a request is not served unless its line
//! can be written. So:
//! - a line is never dropped because the writer is behind: before being
//!   served, a request waits (up to [`ADMIT_WAIT`]) while `capacity` lines
//!   are waiting to be written ([`Writer::admit`]); lines of requests already
//!   in flight are always taken;
//! - a failed write (ENOSPC, EIO, a read-only file system) makes the trail
//!   *unavailable*: the lines stay queued, the writer retries every
//!   `retry` (or at once on reopen), and the state clears with the first
//!   write that succeeds. While unavailable, `required` makes
//!   [`Writer::admit`] refuse new requests (503 `audit_unavailable`);
//! - a write that got part of its bytes out before failing resumes at the
//!   first byte not written, so the file never holds a torn line;
//! - lines are written in batches: the writer lingers up to [`LINGER`]
//!   after the first line of a batch (a wake-up per line was the agent's
//!   largest per-request cost);
//! - lines are dropped (and counted) only past [`MAX_HELD`], a memory bound
//!   that admission keeps far away: at most `capacity` lines plus one per
//!   request in flight (the HTTP/2 sessions bound those) are ever held.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use crate::metrics::AuditStats;

/// Lines held before new ones are dropped (and counted): a memory bound
/// for the case no admission control prevents (every request in flight
/// finishing while the file cannot be written).
pub(super) const MAX_HELD: usize = 65_536;

/// How long a request waits for the queue to have room before it is
/// refused (`required`) or served anyway (not required).
pub(super) const ADMIT_WAIT: Duration = Duration::from_secs(5);

/// Lines (or bytes) written in one `write` call at most.
const BATCH_LINES: usize = 512;
const BATCH_BYTES: usize = 256 * 1024;

/// How long the writer, woken by a line, waits for more before writing
/// them together (fewer as the queue fills: see [`Writer::wake_at`]).
/// Waking a thread for every line cost the agent ~12 % of its CPU per
/// small request (a futex wake and a context switch each; perf, issue 17);
/// a line still reaches the file well within a second of its request.
const LINGER: Duration = Duration::from_millis(10);

/// Where the lines go: the audit file, or a stand-in in unit tests.
pub(super) trait Sink: Send + 'static {
    /// Writes some of `buf`, like [`std::io::Write::write`].
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize>;
    /// Opens the file again (SIGHUP, logrotate).
    fn reopen(&mut self) -> std::io::Result<()>;
    /// For log lines.
    fn name(&self) -> String;
}

/// The audit file, appended to.
pub(super) struct FileSink {
    path: std::path::PathBuf,
    file: std::fs::File,
}

impl FileSink {
    /// Opens `path` for appending (created with mode 0600 if missing).
    pub(super) fn open(path: &std::path::Path) -> std::io::Result<Self> {
        Ok(Self {
            path: path.to_owned(),
            file: open(path)?,
        })
    }
}

fn open(path: &std::path::Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)
}

impl Sink for FileSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        std::io::Write::write(&mut self.file, buf)
    }

    fn reopen(&mut self) -> std::io::Result<()> {
        self.file = open(&self.path)?;
        Ok(())
    }

    fn name(&self) -> String {
        self.path.display().to_string()
    }
}

#[derive(Default)]
struct Queue {
    lines: VecDeque<String>,
    reopen: bool,
    /// The [`Writer`] is gone: the thread ends once the queue is written
    /// (or at the next failure).
    closed: bool,
}

/// State shared by the request path and the writer thread.
struct Shared {
    queue: Mutex<Queue>,
    /// Wakes the writer: a line, a reopen.
    work: Condvar,
    /// Wakes requests waiting for room, and `flush`.
    room: tokio::sync::Notify,
    /// Lines queued or being written, not yet written whole.
    pending: AtomicUsize,
    available: AtomicBool,
    dropped: AtomicU64,
    write_errors: AtomicU64,
    refused: AtomicU64,
}

/// Why a request is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Unavailable {
    /// The last write failed.
    #[error("the audit trail cannot be written")]
    WriteFailing,
    /// Lines are waiting beyond the queue's capacity.
    #[error("the audit trail is behind")]
    Behind,
}

/// The request path's handle on the writer.
pub(super) struct Writer {
    shared: Arc<Shared>,
    capacity: usize,
    /// Queued lines at which the writer stops lingering: a batch's worth,
    /// or half the capacity so that requests never wait on the linger.
    wake_at: usize,
    /// Refuse requests while lines cannot be written.
    required: bool,
}

impl Writer {
    /// Starts the writer thread on `sink`.
    pub(super) fn spawn(
        sink: impl Sink,
        capacity: usize,
        retry: Duration,
        required: bool,
    ) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            work: Condvar::new(),
            room: tokio::sync::Notify::new(),
            pending: AtomicUsize::new(0),
            available: AtomicBool::new(true),
            dropped: AtomicU64::new(0),
            write_errors: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        });
        let thread_shared = shared.clone();
        let wake_at = BATCH_LINES.min(capacity / 2).max(1);
        std::thread::Builder::new()
            .name("tether-audit".into())
            .spawn(move || write_loop(&thread_shared, sink, retry, wake_at))?;
        Ok(Self {
            shared,
            capacity,
            wake_at,
            required,
        })
    }

    /// Waits (bounded) until the queue has room for the line of a request
    /// about to be served. `Err` when the request must be refused: the
    /// trail is unavailable (or still behind after [`ADMIT_WAIT`]) and
    /// `required`.
    pub(super) async fn admit(&self) -> Result<(), Unavailable> {
        let shared = &self.shared;
        let outcome = tokio::time::timeout(ADMIT_WAIT, async {
            loop {
                let room = shared.room.notified();
                tokio::pin!(room);
                room.as_mut().enable();
                // Waiting for a failing file helps no one: refused at once
                // (required) or served at once (not).
                if !shared.available.load(Ordering::Acquire) {
                    return Err(Unavailable::WriteFailing);
                }
                if shared.pending.load(Ordering::Acquire) < self.capacity {
                    return Ok(());
                }
                room.await;
            }
        })
        .await
        .unwrap_or(Err(Unavailable::Behind));
        match outcome {
            Err(why) if self.required => {
                shared.refused.fetch_add(1, Ordering::Relaxed);
                Err(why)
            }
            // Not required: served anyway, the line is held (or dropped
            // past MAX_HELD, counted).
            _ => Ok(()),
        }
    }

    /// Whether requests are being refused now.
    pub(super) fn refusing(&self) -> bool {
        self.required && !self.shared.available.load(Ordering::Acquire)
    }

    /// Queues one line (with its newline). Never blocks. The writer is
    /// woken by the first line of a batch (it may be asleep) and when
    /// `wake_at` lines wait (it may be lingering); the lines between
    /// cost no wake-up.
    pub(super) fn push(&self, line: String) {
        let mut queue = self.shared.queue.lock().unwrap_or_else(|p| p.into_inner());
        if self.shared.pending.load(Ordering::Acquire) >= MAX_HELD {
            self.shared.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.shared.pending.fetch_add(1, Ordering::AcqRel);
        queue.lines.push_back(line);
        let wake = queue.lines.len() == 1 || queue.lines.len() == self.wake_at;
        drop(queue);
        if wake {
            self.shared.work.notify_one();
        }
    }

    /// Has the file opened again before the next write.
    pub(super) fn reopen(&self) {
        let mut queue = self.shared.queue.lock().unwrap_or_else(|p| p.into_inner());
        queue.reopen = true;
        drop(queue);
        self.shared.work.notify_one();
    }

    /// Waits until every queued line is written, at most `limit`; the
    /// number of lines still unwritten.
    pub(super) async fn flush(&self, limit: Duration) -> usize {
        let shared = &self.shared;
        let _ = tokio::time::timeout(limit, async {
            loop {
                let room = shared.room.notified();
                tokio::pin!(room);
                room.as_mut().enable();
                if shared.pending.load(Ordering::Acquire) == 0 {
                    return;
                }
                room.await;
            }
        })
        .await;
        shared.pending.load(Ordering::Acquire)
    }

    /// Counters for `/metrics`.
    pub(super) fn stats(&self) -> AuditStats {
        let s = &self.shared;
        AuditStats {
            dropped: s.dropped.load(Ordering::Relaxed),
            write_errors: s.write_errors.load(Ordering::Relaxed),
            refused: s.refused.load(Ordering::Relaxed),
            queued: s.pending.load(Ordering::Relaxed) as u64,
            available: s.available.load(Ordering::Acquire),
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        let mut queue = self.shared.queue.lock().unwrap_or_else(|p| p.into_inner());
        queue.closed = true;
        drop(queue);
        self.shared.work.notify_one();
    }
}

/// The writer thread: takes a batch of lines (after lingering up to
/// [`LINGER`] for `wake_at` of them), writes it whole (resuming after a
/// partial write), and on failure keeps it and retries.
fn write_loop(shared: &Shared, mut sink: impl Sink, retry: Duration, wake_at: usize) {
    // Bytes taken from the queue and not yet written, and how many lines
    // they hold.
    let mut batch: Vec<u8> = Vec::new();
    let mut lines_in_batch = 0usize;
    loop {
        let reopen = {
            let mut queue = shared.queue.lock().unwrap_or_else(|p| p.into_inner());
            while batch.is_empty() && queue.lines.is_empty() && !queue.reopen {
                if queue.closed {
                    return;
                }
                queue = shared.work.wait(queue).unwrap_or_else(|p| p.into_inner());
            }
            if batch.is_empty() && !queue.reopen && !queue.closed {
                queue = shared
                    .work
                    .wait_timeout_while(queue, LINGER, |q| {
                        q.lines.len() < wake_at && !q.closed && !q.reopen
                    })
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
            }
            if batch.is_empty() {
                while lines_in_batch < BATCH_LINES
                    && batch.len() < BATCH_BYTES
                    && let Some(line) = queue.lines.pop_front()
                {
                    batch.extend_from_slice(line.as_bytes());
                    lines_in_batch += 1;
                }
            }
            std::mem::take(&mut queue.reopen)
        };
        if reopen {
            match sink.reopen() {
                Ok(()) => tracing::info!(file = %sink.name(), "audit file reopened"),
                Err(e) => tracing::error!(file = %sink.name(), error = %e,
                    "cannot reopen the audit file; still writing to the old one"),
            }
        }
        if batch.is_empty() {
            continue;
        }
        match write_some(&mut sink, &mut batch) {
            Ok(()) => {
                shared.pending.fetch_sub(lines_in_batch, Ordering::AcqRel);
                lines_in_batch = 0;
                if !shared.available.swap(true, Ordering::AcqRel) {
                    tracing::info!(file = %sink.name(),
                        "audit file writable again: requests are served again");
                }
                shared.room.notify_waiters();
            }
            Err(e) => {
                shared.write_errors.fetch_add(1, Ordering::Relaxed);
                if shared.available.swap(false, Ordering::AcqRel) {
                    tracing::error!(file = %sink.name(), error = %e,
                        queued = shared.pending.load(Ordering::Relaxed),
                        "audit file cannot be written: lines are kept and retried; with [audit] required, requests are refused (503 audit_unavailable) until a write succeeds");
                }
                // Wake waiting requests so that they see the state.
                shared.room.notify_waiters();
                let queue = shared.queue.lock().unwrap_or_else(|p| p.into_inner());
                if queue.closed {
                    return;
                }
                // A reopen (SIGHUP) retries at once.
                let _ = shared
                    .work
                    .wait_timeout_while(queue, retry, |q| !q.reopen)
                    .unwrap_or_else(|p| p.into_inner());
            }
        }
    }
}

/// Writes all of `batch`, removing what was written; on error, what was
/// written is removed and the rest stays for the retry.
fn write_some(sink: &mut impl Sink, batch: &mut Vec<u8>) -> std::io::Result<()> {
    let mut written = 0;
    let result = loop {
        if written == batch.len() {
            break Ok(());
        }
        match sink.write(&batch[written..]) {
            Ok(0) => break Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => written += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => break Err(e),
        }
    };
    batch.drain(..written);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sink whose behaviour the test steers: it may block, fail, or
    /// write only part of a buffer.
    #[derive(Clone, Default)]
    struct Steered(Arc<Mutex<SteeredState>>);

    #[derive(Default)]
    struct SteeredState {
        written: Vec<u8>,
        /// Bytes that may still be written before writes fail (ENOSPC).
        room: Option<usize>,
        /// Writes wait while set.
        stalled: bool,
        /// `write` calls that wrote something.
        writes: usize,
    }

    impl Sink for Steered {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            loop {
                let mut s = self.0.lock().unwrap();
                if s.stalled {
                    drop(s);
                    std::thread::sleep(Duration::from_millis(2));
                    continue;
                }
                let n = match s.room {
                    Some(0) => return Err(std::io::Error::other("No space left on device")),
                    Some(room) => room.min(buf.len()),
                    None => buf.len(),
                };
                if let Some(room) = &mut s.room {
                    *room -= n;
                }
                s.written.extend_from_slice(&buf[..n]);
                s.writes += 1;
                return Ok(n);
            }
        }

        fn reopen(&mut self) -> std::io::Result<()> {
            Ok(())
        }

        fn name(&self) -> String {
            "steered".into()
        }
    }

    impl Steered {
        fn lines(&self) -> Vec<String> {
            let s = self.0.lock().unwrap();
            String::from_utf8(s.written.clone())
                .unwrap()
                .lines()
                .map(str::to_owned)
                .collect()
        }

        fn set(&self, f: impl FnOnce(&mut SteeredState)) {
            f(&mut self.0.lock().unwrap());
        }
    }

    async fn wait_for(what: &str, mut check: impl FnMut() -> bool) {
        for _ in 0..1000 {
            if check() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("{what}: not within 5 s");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_burst_larger_than_the_queue_loses_no_line() {
        let sink = Steered::default();
        sink.set(|s| s.stalled = true);
        let writer =
            Arc::new(Writer::spawn(sink.clone(), 8, Duration::from_millis(10), true).unwrap());
        let mut requests = Vec::new();
        for i in 0..200 {
            let writer = writer.clone();
            requests.push(tokio::spawn(async move {
                writer.admit().await?;
                writer.push(format!("line {i}\n"));
                Ok::<_, Unavailable>(())
            }));
        }
        // The writer is stalled: requests past the capacity wait.
        wait_for("the queue filled", || writer.stats().queued >= 8).await;
        sink.set(|s| s.stalled = false);
        for r in requests {
            r.await.unwrap().unwrap();
        }
        assert_eq!(writer.flush(Duration::from_secs(5)).await, 0);
        let lines = sink.lines();
        assert_eq!(lines.len(), 200, "every request has its line");
        assert_eq!(writer.stats().dropped, 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn lines_arriving_together_are_written_together() {
        let sink = Steered::default();
        let writer = Writer::spawn(sink.clone(), 8192, Duration::from_millis(10), true).unwrap();
        // Lines a millisecond or so apart (a steady trickle of requests):
        // a writer woken per line writes each alone; a lingering one at
        // most once per LINGER (bounded by the time the trickle took, so
        // a slow machine cannot make this fail).
        let start = std::time::Instant::now();
        for i in 0..50 {
            writer.admit().await.unwrap();
            writer.push(format!("line {i}\n"));
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert_eq!(writer.flush(Duration::from_secs(5)).await, 0);
        let lingers = start.elapsed().as_millis() / LINGER.as_millis();
        assert_eq!(sink.lines().len(), 50);
        let writes = sink.0.lock().unwrap().writes;
        assert!(
            writes as u128 <= lingers + 2,
            "{writes} writes for 50 lines in {lingers} lingers"
        );
        // A lone line is not held back beyond the linger.
        writer.push("last\n".into());
        wait_for("the lone line written", || sink.lines().len() == 51).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_disk_refuses_requests_keeps_lines_and_recovers() {
        let sink = Steered::default();
        // Room for a line and a half: the second write is torn by ENOSPC.
        sink.set(|s| s.room = Some(12));
        let writer = Writer::spawn(sink.clone(), 100, Duration::from_millis(10), true).unwrap();
        writer.admit().await.unwrap();
        writer.push("line-0001\n".into());
        wait_for("first line written", || sink.lines().len() == 1).await;
        writer.push("line-0002\n".into());
        wait_for("the trail unavailable", || !writer.stats().available).await;
        assert!(writer.refusing());
        assert_eq!(writer.admit().await, Err(Unavailable::WriteFailing));
        // A request already in flight still gets its line queued.
        writer.push("line-0003\n".into());
        assert_eq!(writer.stats().refused, 1);

        sink.set(|s| s.room = None);
        wait_for("writable again", || writer.stats().available).await;
        assert_eq!(writer.flush(Duration::from_secs(5)).await, 0);
        assert_eq!(sink.lines(), ["line-0001", "line-0002", "line-0003"]);
        writer.admit().await.unwrap();
        assert!(writer.stats().write_errors >= 1);
    }

    #[tokio::test]
    async fn not_required_serves_while_the_file_fails() {
        let sink = Steered::default();
        sink.set(|s| s.room = Some(0));
        // A queue smaller than the lines held meanwhile.
        let writer = Writer::spawn(sink.clone(), 4, Duration::from_millis(10), false).unwrap();
        writer.push("a\n".into());
        wait_for("the trail unavailable", || !writer.stats().available).await;
        assert!(!writer.refusing());
        // Served at once, not after a wait for a file that fails.
        for i in 0..20 {
            tokio::time::timeout(Duration::from_secs(1), writer.admit())
                .await
                .expect("no wait")
                .unwrap();
            writer.push(format!("b{i}\n"));
        }
        assert_eq!(writer.stats().refused, 0);
        sink.set(|s| s.room = None);
        assert_eq!(writer.flush(Duration::from_secs(5)).await, 0);
        assert_eq!(sink.lines().len(), 21);
    }
}
