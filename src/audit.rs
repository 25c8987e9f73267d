//! The audit trail: one JSON line per request the cloud side sent.
//!
//! Fields: time, request_id, caller key id, route (or `secrets/resolve`),
//! method, the normalised upstream path without query, status, decision
//! (`allowed`, `denied`, or the error code), bytes each way, duration, and
//! the *names* of the secrets used. Never a header value, a query string,
//! a body or a secret value: those may carry credentials.
//!
//! With `[audit] file` the lines go to that file, opened append-only with
//! mode 0600 and reopened on SIGHUP (so logrotate can move it). A writer
//! thread does the I/O; the request path only queues the line. Without a
//! file they go to the log stream under the target `tether::audit`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError, sync_channel};
use std::time::{Instant, SystemTime};

use serde::Serialize;

use crate::metrics::Metrics;

/// Lines queued for the writer before new ones are dropped (and counted).
const QUEUE: usize = 8192;

enum Message {
    Line(String),
    Reopen,
}

/// Where audit lines go. Every record also feeds the request metrics, so
/// the two always count the same requests.
pub struct AuditLog {
    writer: Option<SyncSender<Message>>,
    dropped: AtomicU64,
    metrics: Arc<Metrics>,
}

impl AuditLog {
    /// Lines to the log stream.
    pub fn to_log() -> Self {
        Self {
            writer: None,
            dropped: AtomicU64::new(0),
            metrics: Arc::default(),
        }
    }

    /// Lines appended to `path` (created with mode 0600 if missing).
    pub fn to_file(path: &Path) -> std::io::Result<Self> {
        let mut file = open(path)?;
        let (tx, rx) = sync_channel::<Message>(QUEUE);
        let path: PathBuf = path.to_owned();
        std::thread::Builder::new()
            .name("tether-audit".into())
            .spawn(move || {
                for message in rx {
                    match message {
                        Message::Line(line) => {
                            if let Err(e) = file.write_all(line.as_bytes()) {
                                tracing::error!(file = %path.display(), error = %e, "audit write failed");
                            }
                        }
                        Message::Reopen => match open(&path) {
                            Ok(f) => {
                                file = f;
                                tracing::info!(file = %path.display(), "audit file reopened");
                            }
                            Err(e) => tracing::error!(file = %path.display(), error = %e,
                                "cannot reopen the audit file; still writing to the old one"),
                        },
                    }
                }
            })?;
        Ok(Self {
            writer: Some(tx),
            dropped: AtomicU64::new(0),
            metrics: Arc::default(),
        })
    }

    /// Writes one record.
    pub fn record(&self, record: &AuditRecord) {
        self.metrics.observe(record);
        match &self.writer {
            None => tracing::info!(
                target: "tether::audit",
                request_id = %record.request_id,
                caller_key_id = %record.caller_key_id,
                route = %record.route,
                method = %record.method,
                path = %record.path,
                status = record.status,
                decision = %record.decision,
                bytes_in = record.bytes_in,
                bytes_out = record.bytes_out,
                duration_ms = record.duration_ms,
                secrets = %record.secrets.join(","),
                "request"
            ),
            Some(tx) => {
                let mut line = serde_json::to_string(record).unwrap_or_default();
                line.push('\n');
                if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) =
                    tx.try_send(Message::Line(line))
                {
                    self.dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    /// Reopens the file (after SIGHUP).
    pub fn reopen(&self) {
        if let Some(tx) = &self.writer {
            let _ = tx.try_send(Message::Reopen);
        }
    }

    /// The request metrics this log feeds.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Lines dropped because the writer fell behind.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

fn open(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)
}

/// One audit line.
#[derive(Debug, Clone, Serialize)]
pub struct AuditRecord {
    /// RFC 3339 time the request arrived.
    pub time: String,
    /// The relay's request id.
    pub request_id: String,
    /// The caller's API key id.
    pub caller_key_id: String,
    /// Route name, or `secrets/resolve`.
    pub route: String,
    /// HTTP method.
    pub method: String,
    /// Normalised upstream path, without query.
    pub path: String,
    /// Status answered.
    pub status: u16,
    /// `allowed`, `denied` or an error code.
    pub decision: String,
    /// Request body bytes forwarded upstream.
    pub bytes_in: u64,
    /// Response body bytes sent back.
    pub bytes_out: u64,
    /// From arrival to the end of the response body.
    pub duration_ms: u64,
    /// Names of the secrets used (never values).
    pub secrets: Vec<String>,
    #[serde(skip)]
    started: Option<Instant>,
}

impl AuditRecord {
    /// A record for a request that arrived now.
    pub fn begin(request_id: &str, caller_key_id: &str, method: &str) -> Self {
        Self {
            time: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            request_id: request_id.to_owned(),
            caller_key_id: caller_key_id.to_owned(),
            route: String::new(),
            method: method.to_owned(),
            path: String::new(),
            status: 0,
            decision: String::new(),
            bytes_in: 0,
            bytes_out: 0,
            duration_ms: 0,
            secrets: Vec::new(),
            started: Some(Instant::now()),
        }
    }

    /// Sets status and decision and stamps the duration.
    pub fn finish(&mut self, status: u16, decision: &str) {
        self.status = status;
        self.decision = decision.to_owned();
        self.stamp();
    }

    fn stamp(&mut self) {
        if let Some(started) = self.started {
            self.duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        }
    }
}

/// Byte counters of one request, shared with its body wrappers.
#[derive(Debug, Default)]
pub struct Bytes {
    /// Request body bytes.
    pub inbound: AtomicU64,
    /// Response body bytes.
    pub outbound: AtomicU64,
}

/// Written when dropped, i.e. when the response body ended (or was
/// abandoned): the only point where bytes out and duration are known.
pub struct PendingRecord {
    record: AuditRecord,
    bytes: Arc<Bytes>,
    log: Arc<AuditLog>,
}

impl PendingRecord {
    /// Holds `record` until drop.
    pub fn new(record: AuditRecord, bytes: Arc<Bytes>, log: Arc<AuditLog>) -> Self {
        log.metrics.request_started();
        Self { record, bytes, log }
    }
}

impl Drop for PendingRecord {
    fn drop(&mut self) {
        self.record.bytes_in = self.bytes.inbound.load(Ordering::Relaxed);
        self.record.bytes_out = self.bytes.outbound.load(Ordering::Relaxed);
        self.record.stamp();
        self.log.record(&self.record);
        self.log.metrics.request_ended();
    }
}
